//! The aarch64 guest's scenario table. Numbers are the runner's selectors (tests/qemu_scenarios.rs
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
        name: "smmu_regs",
        run: smmu_regs,
    },
    // SMMUv3 scenarios: 200-299 (smmu_scenarios.rs).
    Scenario {
        id: 200,
        name: "smmu_idr",
        run: crate::smmu_scenarios::smmu_idr,
    },
    Scenario {
        id: 201,
        name: "smmu_dma_4k",
        run: crate::smmu_scenarios::smmu_dma_4k,
    },
    Scenario {
        id: 202,
        name: "smmu_dma_2m",
        run: crate::smmu_scenarios::smmu_dma_2m,
    },
    Scenario {
        id: 203,
        name: "smmu_fault_unmapped",
        run: crate::smmu_scenarios::smmu_fault_unmapped,
    },
    Scenario {
        id: 204,
        name: "smmu_fault_readonly",
        run: crate::smmu_scenarios::smmu_fault_readonly,
    },
    Scenario {
        id: 205,
        name: "smmu_unmap_remap",
        run: crate::smmu_scenarios::smmu_unmap_remap,
    },
    Scenario {
        id: 206,
        name: "smmu_range_inval",
        run: crate::smmu_scenarios::smmu_range_inval,
    },
    Scenario {
        id: 207,
        name: "smmu_detach_reattach",
        run: crate::smmu_scenarios::smmu_detach_reattach,
    },
    Scenario {
        id: 208,
        name: "smmu_enforce_snoop",
        run: crate::smmu_scenarios::smmu_enforce_snoop,
    },
    Scenario {
        id: 209,
        name: "smmu_nested",
        run: crate::smmu_scenarios::smmu_nested,
    },
    Scenario {
        id: 210,
        name: "smmu_dma_1g",
        run: crate::smmu_scenarios::smmu_dma_1g,
    },
    Scenario {
        id: 211,
        name: "smmu_two_devices",
        run: crate::smmu_scenarios::smmu_two_devices,
    },
    Scenario {
        id: 212,
        name: "smmu_event_flood",
        run: crate::smmu_scenarios::smmu_event_flood,
    },
    Scenario {
        id: 213,
        name: "smmu_disable_enable",
        run: crate::smmu_scenarios::smmu_disable_enable,
    },
    Scenario {
        id: 214,
        name: "smmu_write_only",
        run: crate::smmu_scenarios::smmu_write_only,
    },
    Scenario {
        id: 215,
        name: "smmu_switch_stages",
        run: crate::smmu_scenarios::smmu_switch_stages,
    },
    Scenario {
        id: 216,
        name: "smmu_ias_edges",
        run: crate::smmu_scenarios::smmu_ias_edges,
    },
    Scenario {
        id: 217,
        name: "smmu_refusals",
        run: crate::smmu_scenarios::smmu_refusals,
    },
    Scenario {
        id: 218,
        name: "smmu_dma_4k_default",
        run: crate::smmu_scenarios::smmu_dma_4k_default,
    },
    Scenario {
        id: 219,
        name: "smmu_bypass_when_disabled",
        run: crate::smmu_scenarios::smmu_bypass_when_disabled,
    },
    Scenario {
        id: 230,
        name: "smmu_nested_user",
        run: crate::smmu_scenarios::smmu_nested_user,
    },
    Scenario {
        id: 221,
        name: "smmu_dma_4k_2lvl",
        run: crate::smmu_scenarios::smmu_dma_4k_2lvl,
    },
    Scenario {
        id: 225,
        name: "smmu_unmap_remap_2lvl",
        run: crate::smmu_scenarios::smmu_unmap_remap_2lvl,
    },
    Scenario {
        id: 227,
        name: "smmu_detach_reattach_2lvl",
        run: crate::smmu_scenarios::smmu_detach_reattach_2lvl,
    },
    Scenario {
        id: 240,
        name: "smmu_granule_16k",
        run: crate::smmu_scenarios::smmu_granule_16k,
    },
    Scenario {
        id: 241,
        name: "smmu_granule_64k",
        run: crate::smmu_scenarios::smmu_granule_64k,
    },
    // MSIs through the SMMU: 250-259 (msi_scenarios.rs).
    Scenario {
        id: 250,
        name: "smmu_msi",
        run: crate::msi_scenarios::smmu_msi,
    },
    Scenario {
        id: 251,
        name: "smmu_msi_64k",
        run: crate::msi_scenarios::smmu_msi_64k,
    },
];

/// The SMMUv3 register window answers (Device memory): IDR0/1/5, the SMMU is disabled and lets
/// transactions bypass (GBPA.ABORT = 0), and we run at EL1.
fn smmu_regs(ctx: &mut Ctx) -> Result<(), Fail> {
    let base = ctx.arch.smmu_base;
    let rd = |off: usize| {
        // SAFETY: the SMMU window is identity-mapped Device-nGnRnE (`arch::mmu_enable`);
        // aligned 32-bit reads of read-only/status registers.
        unsafe { core::ptr::read_volatile((base + off) as *const u32) }
    };
    let (idr0, idr1, idr5, cr0, gbpa) = (rd(0x0), rd(0x4), rd(0x14), rd(0x20), rd(0x44));
    println!(
        "SMMUv3 IDR0 {idr0:#010x} IDR1 {idr1:#010x} IDR5 {idr5:#010x} CR0 {cr0:#x} GBPA {gbpa:#x}"
    );
    ensure!(
        ctx.arch.current_el == 1,
        "running at EL{}, expected EL1",
        ctx.arch.current_el
    );
    ensure!(
        idr0 != 0 && idr0 != u32::MAX,
        "no SMMUv3 at {base:#x} (IDR0 {idr0:#x})"
    );
    ensure!(cr0 & 1 == 0, "SMMU already enabled (CR0 {cr0:#x})");
    ensure!(gbpa & (1 << 20) == 0, "GBPA.ABORT set: bypass would fault");
    Ok(())
}
