//! QEMU virt platform layer: PL011, PCIe ECAM, MMU (identity map), semihosting exit, caches.

use core::arch::asm;
use core::fmt;

use crate::scenario::Status;

/// Architecture name printed by the guest.
pub const NAME: &str = "aarch64 (virt, cortex-a57)";
/// Where the runner writes the scenario number (outside the image; see link.ld).
pub const MAILBOX: usize = 0x4100_0000;
/// The SMMUv3 register window on virt (`iommu=smmuv3`).
pub const SMMU_BASE: usize = 0x0905_0000;
/// PL011 UART0.
const UART: usize = 0x0900_0000;
/// PCIe ECAM (virt's high ECAM, 256 buses).
const ECAM: usize = 0x40_1000_0000;
/// virt's 32-bit PCI MMIO window, where this guest assigns BARs.
pub const PCI_MMIO32: core::ops::Range<u64> = 0x1000_0000..0x3eff_0000;
/// RAM: the one 1 GiB block mapped Normal write-back; everything else is Device-nGnRnE.
const RAM_GIB: usize = 1;

/// Architecture-specific context for scenarios.
pub struct ArchCtx {
    /// SMMUv3 register base.
    pub smmu_base: usize,
    /// Exception level at entry (1 expected).
    pub current_el: u8,
}

fn mmio_read32(addr: usize) -> u32 {
    // SAFETY: callers pass aligned addresses of device registers mapped Device-nGnRnE.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn mmio_write32(addr: usize, v: u32) {
    // SAFETY: as in `mmio_read32`.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}

/// Sets up the PL011: 8N1, FIFOs, transmitter and receiver enabled.
pub fn serial_init() {
    mmio_write32(UART + 0x30, 0); // UARTCR: disable while configuring
    mmio_write32(UART + 0x24, 13); // IBRD/FBRD: ~115200 at 24 MHz (QEMU ignores)
    mmio_write32(UART + 0x28, 1);
    mmio_write32(UART + 0x2c, 0x70); // LCR_H: 8 bits, FIFO
    mmio_write32(UART + 0x30, 0x301); // UARTEN | TXE | RXE
}

fn serial_putb(b: u8) {
    // Bounded wait while the transmit FIFO is full (FR.TXFF).
    for _ in 0..100_000 {
        if mmio_read32(UART + 0x18) & (1 << 5) == 0 {
            break;
        }
        core::hint::spin_loop();
    }
    mmio_write32(UART, b as u32);
}

/// The serial console as a `fmt::Write`.
pub struct Serial;

impl fmt::Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                serial_putb(b'\r');
            }
            serial_putb(b);
        }
        Ok(())
    }
}

/// Exits QEMU through semihosting `SYS_EXIT` (AArch64 form: a parameter block holding
/// `ADP_Stopped_ApplicationExit` and the status). The status is `(code << 1) | 1`, the same
/// value isa-debug-exit produces on x86.
pub fn exit(status: Status) -> ! {
    let block: [u64; 2] = [0x20026, status.qemu_exit_status() as u64];
    // SAFETY: the semihosting call reads the two-word block on our stack and ends the process;
    // without -semihosting it traps (reported by the exception handler, which exits again).
    unsafe {
        asm!("hlt #0xf000", in("w0") 0x18u32, in("x1") block.as_ptr(), options(nostack));
    }
    loop {
        // SAFETY: waits for an event; no memory effects.
        unsafe { asm!("wfe", options(nomem, nostack)) }
    }
}

/// The exception level the CPU runs at.
pub fn current_el() -> u8 {
    let el: u64;
    // SAFETY: reads a system register.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack)) };
    ((el >> 2) & 3) as u8
}

#[repr(C, align(4096))]
struct Level1([u64; 512]);

static mut TTBR0_L1: Level1 = Level1([0; 512]);

/// Identity-maps the 39-bit address space with 1 GiB level-1 blocks (4 KiB granule, T0SZ = 25):
/// RAM (0x4000_0000..0x8000_0000) Normal write-back inner-shareable, everything else
/// Device-nGnRnE and execute-never (UART, SMMU, PCI windows, ECAM at 0x40_1000_0000), then turns
/// on the MMU and caches.
pub fn mmu_enable() {
    const VALID_BLOCK: u64 = 0b01;
    const ATTR_DEVICE: u64 = 0 << 2;
    const ATTR_NORMAL: u64 = 1 << 2;
    const SH_INNER: u64 = 3 << 8;
    const AF: u64 = 1 << 10;
    const XN: u64 = 3 << 53; // PXN | UXN
    let table = core::ptr::addr_of_mut!(TTBR0_L1);
    for i in 0..512usize {
        let pa = (i as u64) << 30;
        let desc = if i == RAM_GIB {
            pa | VALID_BLOCK | ATTR_NORMAL | SH_INNER | AF
        } else {
            pa | VALID_BLOCK | ATTR_DEVICE | AF | XN
        };
        // SAFETY: `i < 512`; the table is only written here, before the MMU uses it.
        unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*table).0[i]), desc) };
    }
    let mair: u64 = 0xff << 8; // Attr0 = Device-nGnRnE (0x00), Attr1 = Normal WB RA/WA
    let tcr: u64 = 25 // T0SZ: 39-bit VA
        | 1 << 8 // IRGN0 WB
        | 1 << 10 // ORGN0 WB
        | 3 << 12 // SH0 inner
        | 1 << 23 // EPD1: no TTBR1 walks
        | 2 << 32; // IPS: 40-bit PA
                   // SAFETY: installs an identity map of everything this guest touches (so the next
                   // instruction fetch and every later access translate to the same address) and enables
                   // the MMU and caches; the TLB is invalidated first.
    unsafe {
        asm!(
            "msr mair_el1, {mair}",
            "msr tcr_el1, {tcr}",
            "msr ttbr0_el1, {ttbr}",
            "dsb ish",
            "tlbi vmalle1",
            "dsb ish",
            "isb",
            "mrs {t}, sctlr_el1",
            "orr {t}, {t}, #(1 << 0)",   // M
            "orr {t}, {t}, #(1 << 2)",   // C
            "orr {t}, {t}, #(1 << 12)",  // I
            "bic {t}, {t}, #(1 << 1)",   // A: no alignment checks on Normal memory
            "msr sctlr_el1, {t}",
            "isb",
            mair = in(reg) mair,
            tcr = in(reg) tcr,
            ttbr = in(reg) table as u64,
            t = out(reg) _,
            options(nostack),
        );
    }
}

/// Reads the ECAM dword at `off` of bus/dev/fn.
pub fn pci_read32(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    mmio_read32(ecam_addr(bus, dev, func, off))
}

/// Writes the ECAM dword at `off` of bus/dev/fn.
pub fn pci_write32(bus: u8, dev: u8, func: u8, off: u8, v: u32) {
    mmio_write32(ecam_addr(bus, dev, func, off), v)
}

fn ecam_addr(bus: u8, dev: u8, func: u8, off: u8) -> usize {
    ECAM | (bus as usize) << 20
        | ((dev & 0x1f) as usize) << 15
        | ((func & 7) as usize) << 12
        | (off & 0xfc) as usize
}

/// Cleans `[va, va + len)` to the point of coherency (`DC CVAC` per line, `DSB SY`). Only
/// needed for an SMMU with `IDR0.COHACC = 0`; QEMU's is coherent.
pub fn clean_dcache_range(va: usize, len: usize) {
    let ctr: u64;
    // SAFETY: reads the cache type register.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
    let line = 4usize << ((ctr >> 16) & 0xf);
    let end = va.saturating_add(len);
    let mut p = va & !(line - 1);
    while p < end {
        // SAFETY: cleans one line of memory the caller owns; contents do not change.
        unsafe { asm!("dc cvac, {}", in(reg) p, options(nostack, preserves_flags)) };
        p += line;
    }
    // SAFETY: a barrier.
    unsafe { asm!("dsb sy", options(nostack, preserves_flags)) };
}
