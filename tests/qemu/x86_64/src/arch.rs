//! q35 platform layer: port I/O, COM1, PCI configuration mechanism #1, isa-debug-exit, caches.

use core::arch::asm;
use core::fmt;

use crate::scenario::Status;

/// Architecture name printed by the guest.
pub const NAME: &str = "x86_64 (q35, PVH)";
/// Where the runner writes the scenario number (outside the image; see link.ld).
pub const MAILBOX: usize = 0x0100_0000;

const COM1: u16 = 0x3F8;
const DEBUG_EXIT: u16 = 0xF4;
const PCI_ADDR: u16 = 0xCF8;
const PCI_DATA: u16 = 0xCFC;

/// Architecture-specific context for scenarios.
pub struct ArchCtx {
    /// Physical address of the PVH `hvm_start_info` (from %ebx at entry).
    #[allow(dead_code)] // for scenarios that read the memory map
    pub start_info: u64,
    /// VT-d register base, from the ACPI DMAR (`firmware.rs`); 0 on a machine without one.
    pub vtd_base: usize,
    /// AMD-Vi register base, from the ACPI IVRS (`firmware.rs`); 0 on a machine without one.
    pub amdvi_base: usize,
}

fn outb(port: u16, v: u8) {
    // SAFETY: port I/O to the fixed legacy devices this guest owns (COM1); no memory effects.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") v, options(nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as in `outb`.
    unsafe {
        asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

fn outl(port: u16, v: u32) {
    // SAFETY: port I/O to PCI configuration ports / isa-debug-exit; no memory effects.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") v, options(nomem, nostack, preserves_flags))
    }
}

fn inl(port: u16) -> u32 {
    let v: u32;
    // SAFETY: as in `outl`.
    unsafe {
        asm!("in eax, dx", out("eax") v, in("dx") port, options(nomem, nostack, preserves_flags))
    }
    v
}

/// Sets up COM1: 115200 8N1, FIFOs on, no interrupts.
pub fn serial_init() {
    outb(COM1 + 1, 0x00); // IER: no interrupts
    outb(COM1 + 3, 0x80); // LCR: DLAB
    outb(COM1, 0x01); // divisor 1 = 115200
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); // 8N1
    outb(COM1 + 2, 0xC7); // FIFO on, cleared
    outb(COM1 + 4, 0x03); // DTR | RTS
}

fn serial_putb(b: u8) {
    // Bounded wait for THR empty; QEMU's UART is always ready, real ones within microseconds.
    for _ in 0..100_000 {
        if inb(COM1 + 5) & 0x20 != 0 {
            break;
        }
        core::hint::spin_loop();
    }
    outb(COM1, b);
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

/// Exits QEMU through isa-debug-exit (status `(code << 1) | 1`).
pub fn exit(status: Status) -> ! {
    outl(DEBUG_EXIT, status as u32);
    // Only reached without isa-debug-exit: stop here (the runner's timeout reports it).
    loop {
        // SAFETY: halts the CPU with interrupts off; no memory effects.
        unsafe { asm!("cli; hlt", options(nomem, nostack)) }
    }
}

/// Reads the 32-bit configuration register at `off` of bus/dev/fn (mechanism #1).
pub fn pci_read32(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    outl(PCI_ADDR, pci_addr(bus, dev, func, off));
    inl(PCI_DATA)
}

/// Writes the 32-bit configuration register at `off` of bus/dev/fn.
pub fn pci_write32(bus: u8, dev: u8, func: u8, off: u8, v: u32) {
    outl(PCI_ADDR, pci_addr(bus, dev, func, off));
    outl(PCI_DATA, v);
}

fn pci_addr(bus: u8, dev: u8, func: u8, off: u8) -> u32 {
    1 << 31
        | (bus as u32) << 16
        | ((dev & 0x1f) as u32) << 11
        | ((func & 7) as u32) << 8
        | (off & 0xfc) as u32
}

/// Cleans `[va, va + len)` to memory (`CLFLUSH` per 64-byte line, then `MFENCE`). Only needed
/// for a VT-d unit with `ECAP.C = 0`; QEMU's is coherent.
pub fn clean_dcache_range(va: usize, len: usize) {
    let end = va.saturating_add(len);
    let mut line = va & !63;
    while line < end {
        // SAFETY: CLFLUSH of a line of mapped memory the caller owns; it changes no contents.
        unsafe { asm!("clflush [{}]", in(reg) line, options(nostack, preserves_flags)) }
        line += 64;
    }
    // SAFETY: a fence; no memory contents change.
    unsafe { asm!("mfence", options(nostack, preserves_flags)) }
}
