//! Bare-metal q35 guest for iommu-engine's QEMU scenarios (see tests/qemu/README.md).
//!
//! Boot (PVH, 32-bit entry) -> long mode with identity-mapped 2 MiB pages (boot.rs) -> `kmain`:
//! COM1, page allocator, find `edu` at 00:04.0 (SeaBIOS assigned its BAR0), enable memory
//! decoding and bus mastering, read the scenario number from the mailbox, run it, exit through
//! isa-debug-exit.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
// `Fail` carries its message inline (no heap): a 200-byte error is the price.
#![allow(clippy::result_large_err)]

mod amdvi_scenarios;
mod arch;
mod boot;
mod dma_check;
mod firmware;
mod ioasid_env;
mod scenarios;
mod vtd_faults;
mod vtd_scenarios;
mod vtd_unit;

#[path = "../../common/alloc.rs"]
#[allow(dead_code)] // shared with the aarch64 guest
mod alloc;
#[path = "../../common/common_scenarios.rs"]
#[allow(dead_code)] // shared with the aarch64 guest
mod common_scenarios;
#[path = "../../common/edu.rs"]
#[allow(dead_code)] // shared with the aarch64 guest
mod edu;
#[path = "../../common/pci.rs"]
#[allow(dead_code)] // shared with the aarch64 guest
mod pci;
#[path = "../../common/scenario.rs"]
#[allow(dead_code)] // shared with the aarch64 guest
mod scenario;

use core::fmt::Write;
use core::ptr::NonNull;

use alloc::{ArenaMemory, PageArena};
use scenario::{Ctx, Fail, Status};

/// Prints to COM1.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => {{
        let _ = core::fmt::Write::write_fmt(&mut $crate::arch::Serial, format_args!($($arg)*));
    }};
}

/// Prints a line to COM1.
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

struct Cf8;

impl pci::ConfigSpace for Cf8 {
    fn read32(&self, (b, d, f): pci::Bdf, off: u8) -> u32 {
        arch::pci_read32(b, d, f, off)
    }
    fn write32(&self, (b, d, f): pci::Bdf, off: u8, v: u32) {
        arch::pci_write32(b, d, f, off, v)
    }
}

fn setup_edu() -> Result<edu::Edu, Fail> {
    let Some(bdf) = pci::find(&Cf8, pci::EDU_VENDOR, pci::EDU_DEVICE, (0, 4, 0)) else {
        crate::bail!("edu (1234:11e8) not found on bus 0");
    };
    edu_at(bdf)
}

/// A second `edu` at 00:05.0 (scenarios that need two requesters add
/// `-device edu,addr=05.0,...`).
pub fn second_edu() -> Result<edu::Edu, Fail> {
    let bdf = (0, 5, 0);
    let want = u32::from(pci::EDU_DEVICE) << 16 | u32::from(pci::EDU_VENDOR);
    let id = pci::ConfigSpace::read32(&Cf8, bdf, 0);
    if id != want {
        crate::bail!("no second edu at 00:05.0 (id {id:#x})");
    }
    edu_at(bdf)
}

/// The bus the guest gives the PCIe root port at 00:06.0 below it: not the one SeaBIOS chose
/// (1), so that the far `edu`'s requester ID can only come from reading the bridge back.
pub const FAR_BUS: u8 = 5;

/// An `edu` behind the PCIe root port at 00:06.0, at function 0 of the port's secondary bus
/// (scenarios that need a requester on another bus add `-device pcie-root-port,id=rp1,...,
/// addr=06.0 -device edu,bus=rp1,addr=00.0,...`). The guest renumbers the port's secondary and
/// subordinate bus to [`FAR_BUS`] first, as an OS may. The port forwards the device's DMA only
/// with its own bus mastering on.
pub fn edu_behind_root_port() -> Result<edu::Edu, Fail> {
    let port = (0, 6, 0);
    let buses = pci::ConfigSpace::read32(&Cf8, port, 0x18);
    if (buses >> 8) as u8 == 0 {
        crate::bail!("no bridge with a secondary bus at 00:06.0");
    }
    let renumbered = (buses & 0xff00_0000) | u32::from(FAR_BUS) << 16 | u32::from(FAR_BUS) << 8;
    pci::ConfigSpace::write32(&Cf8, port, 0x18, renumbered);
    let secondary = (pci::ConfigSpace::read32(&Cf8, port, 0x18) >> 8) as u8;
    let cmd = pci::enable_mem_and_master(&Cf8, port);
    println!(
        "root port 00:06.0: secondary bus {} -> {secondary}, command {cmd:#06x}",
        (buses >> 8) as u8
    );
    let bdf = (secondary, 0, 0);
    let want = u32::from(pci::EDU_DEVICE) << 16 | u32::from(pci::EDU_VENDOR);
    let id = pci::ConfigSpace::read32(&Cf8, bdf, 0);
    if id != want {
        crate::bail!("no edu at {secondary:02x}:00.0 (id {id:#x})");
    }
    edu_at(bdf)
}

/// Enables decoding and bus mastering of the `edu` at `bdf` and maps its BAR0.
fn edu_at(bdf: pci::Bdf) -> Result<edu::Edu, Fail> {
    let bar = match pci::bar0(&Cf8, bdf)? {
        Some(b) if b < 1 << 32 && (1u64 << 31..0xFEC0_0000).contains(&b) => b,
        Some(b) => crate::bail!("edu BAR0 {b:#x} outside the uncached 2-4 GiB window"),
        None => crate::bail!("edu BAR0 not assigned by the firmware"),
    };
    let cmd = pci::enable_mem_and_master(&Cf8, bdf);
    println!(
        "edu at {:02x}:{:02x}.{} BAR0 {bar:#x} command {cmd:#06x}",
        bdf.0, bdf.1, bdf.2
    );
    let Some(base) = NonNull::new(bar as usize as *mut u8) else {
        crate::bail!("edu BAR0 is zero");
    };
    // SAFETY: BAR0 lies in 2-4 GiB, identity-mapped uncached by boot.rs; decoding is enabled and
    // this guest is the only driver.
    Ok(unsafe { edu::Edu::new(base, bdf) })
}

#[no_mangle]
extern "C" fn kmain(start_info: u32) -> ! {
    arch::serial_init();
    println!(
        "iommu-engine qemu guest: {}, start_info {start_info:#x}",
        arch::NAME
    );
    // SAFETY: the mailbox is RAM outside the image (link.ld asserts it), written only by QEMU's
    // loader before the CPU started; a volatile read of an aligned u32.
    let selector = unsafe { core::ptr::read_volatile(arch::MAILBOX as *const u32) };
    let edu = setup_edu();
    // The VT-d unit and edu's requester ID, as the platform's ACPI DMAR describes them.
    let vtd_base = firmware::discover(u64::from(start_info), edu.as_ref().ok().map(|e| e.bdf));
    // The AMD-Vi unit, as the platform's ACPI IVRS describes it.
    let amdvi_base = firmware::discover_amdvi(edu.as_ref().ok().map(|e| e.bdf));
    let mut ctx = Ctx {
        alloc: &PAGES,
        edu,
        arch: arch::ArchCtx {
            start_info: start_info as u64,
            vtd_base,
            amdvi_base,
        },
    };
    if let Err(e) = &ctx.edu {
        println!("note: {e}");
    }
    // VT-d scenarios are numbered 100-199 and live in their own table.
    // AMD-Vi scenarios 300-399.
    let table = if (100..200).contains(&selector) {
        vtd_scenarios::VTD_TABLE
    } else if (300..400).contains(&selector) {
        amdvi_scenarios::AMDVI_TABLE
    } else {
        scenarios::TABLE
    };
    let status = scenario::run(table, selector, &mut ctx);
    arch::exit(status)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let _ = writeln!(arch::Serial, "FAIL panic: {info}");
    arch::exit(Status::Error)
}
