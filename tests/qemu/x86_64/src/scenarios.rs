//! The x86_64 guest's scenario table. Numbers are the runner's selectors (tests/qemu_scenarios.rs
//! keeps the same numbers and names); add a scenario by writing a function and a row here.

use crate::common_scenarios::{boot_ok, edu_dma_identity, page_alloc};
use crate::scenario::{Ctx, Fail, Scenario};
use crate::{ensure, println};

/// Every scenario this guest can run.
pub static TABLE: &[Scenario] = &[
    Scenario {
        id: 1,
        name: "boot_ok",
        run: boot_ok,
    },
    Scenario {
        id: 2,
        name: "page_alloc",
        run: page_alloc,
    },
    Scenario {
        id: 3,
        name: "edu_dma_identity",
        run: edu_dma_identity,
    },
    Scenario {
        id: 4,
        name: "vtd_regs",
        run: vtd_regs,
    },
];

/// The VT-d register window answers (mapped uncached): VER, CAP, ECAP, and translation is off.
fn vtd_regs(ctx: &mut Ctx) -> Result<(), Fail> {
    let base = ctx.arch.vtd_base;
    // SAFETY: the VT-d window at 0xFED9_0000 is identity-mapped uncached (boot.rs); these are
    // aligned reads of read-only registers.
    let (ver, cap, ecap, gsts) = unsafe {
        (
            core::ptr::read_volatile(base as *const u32),
            core::ptr::read_volatile((base + 0x08) as *const u64),
            core::ptr::read_volatile((base + 0x10) as *const u64),
            core::ptr::read_volatile((base + 0x1c) as *const u32),
        )
    };
    println!("VT-d VER {ver:#x} CAP {cap:#018x} ECAP {ecap:#018x} GSTS {gsts:#x}");
    ensure!(
        cap != 0 && cap != u64::MAX,
        "no VT-d unit at {base:#x} (CAP {cap:#x})"
    );
    ensure!(
        gsts & (1 << 31) == 0,
        "translation already enabled (GSTS {gsts:#x})"
    );
    Ok(())
}
