//! Bare-metal QEMU virt guest for iommu-engine's QEMU scenarios (see tests/qemu/README.md).
//!
//! Entry at EL1 (boot.rs) -> `kmain`: MMU on (identity map), PL011, page allocator, find `edu`
//! on the ECAM, assign its BAR0 from the 32-bit PCI window, enable memory decoding and bus
//! mastering, read the scenario number from the mailbox, run it, exit through semihosting.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// `Fail` carries its message inline (no heap): a 200-byte error is the price.
#![allow(clippy::result_large_err)]

mod arch;
mod boot;
mod dma;
mod events;
mod gic;
mod msi_scenarios;
mod scenarios;
mod smmu_env;
mod smmu_scenarios;

#[path = "../../common/alloc.rs"]
#[allow(dead_code)] // shared with the x86_64 guest
mod alloc;
#[path = "../../common/common_scenarios.rs"]
#[allow(dead_code)] // shared with the x86_64 guest
mod common_scenarios;
#[path = "../../common/edu.rs"]
#[allow(dead_code)] // shared with the x86_64 guest
mod edu;
#[path = "../../common/pci.rs"]
#[allow(dead_code)] // shared with the x86_64 guest
mod pci;
#[path = "../../common/scenario.rs"]
#[allow(dead_code)] // shared with the x86_64 guest
mod scenario;

use core::fmt::Write;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};

use alloc::{ArenaMemory, PageArena};
use scenario::{Ctx, Fail, Status};

/// Prints to the PL011.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::arch::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to the PL011.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => {{
        $crate::print!($($arg)*);
        $crate::print!("\n");
    }};
}

static ARENA: ArenaMemory = ArenaMemory::new();
static PAGES: PageArena = PageArena::new(&ARENA);

/// PCI configuration space through virt's ECAM.
pub struct Ecam;

impl pci::ConfigSpace for Ecam {
    fn read32(&self, (b, d, f): pci::Bdf, off: u8) -> u32 {
        arch::pci_read32(b, d, f, off)
    }
    fn write32(&self, (b, d, f): pci::Bdf, off: u8, v: u32) {
        arch::pci_write32(b, d, f, off, v)
    }
}

fn setup_edu() -> Result<edu::Edu, Fail> {
    let Some(bdf) = pci::find(&Ecam, pci::EDU_VENDOR, pci::EDU_DEVICE, (0, 4, 0)) else {
        crate::bail!("edu (1234:11e8) not found on bus 0");
    };
    pci::disable_decode(&Ecam, bdf);
    let size = pci::bar0_size32(&Ecam, bdf)? as u64;
    // The first size-aligned address of the 32-bit window (edu is the only device with a BAR).
    let bar = arch::PCI_MMIO32.start.next_multiple_of(size);
    if bar + size > arch::PCI_MMIO32.end {
        crate::bail!("edu BAR0 of {size:#x} bytes does not fit the PCI window");
    }
    pci::set_bar0_32(&Ecam, bdf, bar as u32);
    let cmd = pci::enable_mem_and_master(&Ecam, bdf);
    match pci::bar0(&Ecam, bdf)? {
        Some(b) if b == bar => {}
        other => crate::bail!("edu BAR0 reads back {other:x?}, wrote {bar:#x}"),
    }
    println!(
        "edu at {:02x}:{:02x}.{} BAR0 {bar:#x} ({size:#x} bytes) command {cmd:#06x}",
        bdf.0, bdf.1, bdf.2
    );
    let Some(base) = NonNull::new(bar as usize as *mut u8) else {
        crate::bail!("edu BAR0 is zero");
    };
    // SAFETY: BAR0 is in the 32-bit PCI window, identity-mapped Device-nGnRnE by
    // `arch::mmu_enable`; decoding is enabled and this guest is the only driver.
    Ok(unsafe { edu::Edu::new(base, bdf) })
}

#[no_mangle]
extern "C" fn kmain(dtb: u64) -> ! {
    arch::mmu_enable();
    arch::serial_init();
    let current_el = arch::current_el();
    println!(
        "iommu-engine qemu guest: {}, EL{current_el}, dtb {dtb:#x}",
        arch::NAME
    );
    // SAFETY: the mailbox is RAM outside the image (link.ld asserts it), written only by QEMU's
    // loader before the CPU started; a volatile read of an aligned u32.
    let selector = unsafe { core::ptr::read_volatile(arch::MAILBOX as *const u32) };
    let mut ctx = Ctx {
        alloc: &PAGES,
        edu: setup_edu(),
        arch: arch::ArchCtx {
            smmu_base: arch::SMMU_BASE,
            current_el,
        },
    };
    if let Err(e) = &ctx.edu {
        println!("note: {e}");
    }
    let status = scenario::run(scenarios::TABLE, selector, &mut ctx);
    arch::exit(status)
}

/// Every exception vector lands here: report it and end the run as an error.
#[no_mangle]
extern "C" fn exception_entry(kind: u64, esr: u64, elr: u64, far: u64) -> ! {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::Relaxed) {
        // A second exception, most likely the semihosting call trapping because QEMU runs
        // without -semihosting: stop quietly (the runner's timeout reports it).
        loop {
            // SAFETY: waits for an event; no memory effects.
            unsafe { core::arch::asm!("wfe", options(nomem, nostack)) }
        }
    }
    let _ = writeln!(
        arch::Serial,
        "FAIL exception: vector {kind} ESR {esr:#x} (EC {:#x}) ELR {elr:#x} FAR {far:#x}",
        esr >> 26
    );
    arch::exit(Status::Error)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(arch::Serial, "FAIL panic: {info}");
    arch::exit(Status::Error)
}
