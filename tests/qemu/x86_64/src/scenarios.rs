//! The x86_64 guest's scenario table. Numbers are the runner's selectors (tests/qemu_scenarios.rs
//! keeps the same numbers and names); add a scenario by writing a function and a row here.

use crate::common_scenarios::{boot_ok, edu_dma_identity, page_alloc};
use iommu_engine::firmware::dmar::Dmar;
use iommu_engine::vtd::SourceId;

use crate::firmware;
use crate::scenario::{Ctx, Fail, Scenario};
use crate::{ensure, print, println};

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
    Scenario {
        id: 5,
        name: "dmar_q35",
        run: dmar_q35,
    },
    Scenario {
        id: 6,
        name: "dmar_q35_root_port",
        run: dmar_q35_root_port,
    },
    Scenario {
        id: 7,
        name: "ivrs_q35",
        run: ivrs_q35,
    },
];

/// The DMAR `tests/data/acpi/` holds for `-device intel-iommu` and edu at 00:04.0.
const Q35_DMAR: &[u8] = include_bytes!("../../../data/acpi/q35-intel-iommu.dmar");
/// The one for `intel-iommu,device-iotlb=on,aw-bits=39`, a root port at 00:06.0 with an edu
/// below it, and edu at 00:04.0.
const Q35_ROOT_PORT_DMAR: &[u8] =
    include_bytes!("../../../data/acpi/q35-root-port-device-iotlb-aw39.dmar");

/// Prints the DMAR in hex (16 bytes a line, `DMAR <offset>: ...`) and checks it is byte for
/// byte the checked-in capture: the capture method (tests/data/acpi/README.md) gives what the
/// guest sees through its RSDP.
fn dmar_dump_matches(capture: &[u8]) -> Result<Dmar<'static>, Fail> {
    let t = firmware::dmar()?;
    let bytes = t.table().bytes();
    for (i, line) in bytes.chunks(16).enumerate() {
        print!("DMAR {:04x}:", i * 16);
        for b in line {
            print!(" {b:02x}");
        }
        println!();
    }
    ensure!(
        bytes == capture,
        "the DMAR ({} bytes) differs from the capture ({} bytes)",
        bytes.len(),
        capture.len()
    );
    Ok(t)
}

/// q35's own DMAR, read through the RSDP: the capture; a scan of the BIOS area finds the RSDP
/// the PVH start info gave; HAW 48; one unit, at the base the guest
/// found (and drives in the VT-d rows), covering edu through an endpoint scope resolving to
/// 00:04.0; a function on bus 0 that nobody listed has no unit.
fn dmar_q35(ctx: &mut Ctx) -> Result<(), Fail> {
    let t = dmar_dump_matches(Q35_DMAR)?;
    // The fallback a boot protocol without an RSDP field needs finds the same RSDP.
    let scanned = firmware::bios_area_rsdp();
    ensure!(
        scanned == Some(firmware::rsdp_address()),
        "BIOS-area scan found {scanned:#x?}, the guest used {:#x}",
        firmware::rsdp_address()
    );
    ensure!(
        t.host_address_width() == 48,
        "HAW {}",
        t.host_address_width()
    );
    ensure!(t.drhds().count() == 1, "{} DRHDs", t.drhds().count());
    let edu = ctx.edu()?;
    let (rid, unit) = firmware::covering_unit(edu.bdf)?;
    ensure!(rid == 0x20, "edu's RID {rid:#x}");
    ensure!(
        unit.register_base.get() == ctx.arch.vtd_base as u64 && ctx.arch.vtd_base != 0,
        "unit at {:#x}, guest uses {:#x}",
        unit.register_base.get(),
        ctx.arch.vtd_base
    );
    let nobody = SourceId::from_bdf(0, 9, 0).map_err(|_| Fail::new(format_args!("bdf")))?;
    ensure!(
        matches!(t.unit_for(0, nobody, &firmware::bridge_buses), Ok(None)),
        "00:09.0 (absent, unlisted) has a unit"
    );
    Ok(())
}

/// With a PCIe root port: the capture; HAW 39; an ATSR with ALL_PORTS; the port is a PCI
/// sub-hierarchy scope, and the edu below it -- after the guest moved the port's secondary bus
/// -- resolves to the unit through the bus read back from the port, while a bus outside the
/// port's range does not.
fn dmar_q35_root_port(ctx: &mut Ctx) -> Result<(), Fail> {
    let t = dmar_dump_matches(Q35_ROOT_PORT_DMAR)?;
    ensure!(
        t.host_address_width() == 39,
        "HAW {}",
        t.host_address_width()
    );
    ensure!(t.atsrs().count() == 1, "{} ATSRs", t.atsrs().count());
    let far = crate::edu_behind_root_port()?;
    let (rid, unit) = firmware::covering_unit(far.bdf)?;
    ensure!(
        rid == u16::from(crate::FAR_BUS) << 8,
        "far edu's RID {rid:#06x}, the port's bus is {}",
        crate::FAR_BUS
    );
    ensure!(
        unit.register_base.get() == ctx.arch.vtd_base as u64,
        "another unit"
    );
    let outside =
        SourceId::from_bdf(crate::FAR_BUS + 1, 0, 0).map_err(|_| Fail::new(format_args!("bdf")))?;
    ensure!(
        matches!(t.unit_for(0, outside, &firmware::bridge_buses), Ok(None)),
        "bus {} (outside the port) has a unit",
        crate::FAR_BUS + 1
    );
    Ok(())
}

/// The IVRS `tests/data/acpi/` holds for `-device amd-iommu,pt=off` and edu at 00:04.0.
const Q35_IVRS: &[u8] = include_bytes!("../../../data/acpi/q35-amd-iommu.ivrs");

/// q35's IVRS with `amd-iommu`, read through the RSDP: byte for byte the capture (printed in
/// hex); one unit (types 10h and 11h, 11h used) at the base the guest found and drives in the
/// AMD-Vi rows, whose EFR image is what its EFR register reads; edu named under its own device
/// ID 0x20; an absent function (00:09.0) named by no unit; the device table sized to the
/// highest ID listed (00:1f.3).
fn ivrs_q35(ctx: &mut Ctx) -> Result<(), Fail> {
    let t = firmware::ivrs()?;
    let bytes = t.table().bytes();
    for (i, line) in bytes.chunks(16).enumerate() {
        print!("IVRS {:04x}:", i * 16);
        for b in line {
            print!(" {b:02x}");
        }
        println!();
    }
    ensure!(
        bytes == Q35_IVRS,
        "the IVRS ({} bytes) differs from the capture ({} bytes)",
        bytes.len(),
        Q35_IVRS.len()
    );
    let first_type = t.units().next().map(|u| u.block_type);
    ensure!(first_type == Some(0x11), "unit type {first_type:?}");
    ensure!(t.units().count() == 1, "{} units", t.units().count());
    let edu = ctx.edu()?;
    let (id, unit) = firmware::amdvi_unit(edu.bdf)?;
    ensure!(id == 0x20, "edu's device ID {id:#x}");
    ensure!(
        unit.register_base.get() == ctx.arch.amdvi_base as u64 && ctx.arch.amdvi_base != 0,
        "unit at {:#x}, guest uses {:#x}",
        unit.register_base.get(),
        ctx.arch.amdvi_base
    );
    ensure!(unit.device_ids == 0xfc, "device table for {:#x} IDs", unit.device_ids);
    // SAFETY: the AMD-Vi window at 0xFED8_0000 is identity-mapped uncached (boot.rs); an
    // aligned read of the read-only EFR.
    let efr = unsafe {
        core::ptr::read_volatile(
            (ctx.arch.amdvi_base + iommu_engine::amdvi::regs::EXT_FEATURE) as *const u64,
        )
    };
    println!("EFR register {efr:#x}, IVRS image {:#x?}", unit.efr_image);
    ensure!(unit.efr_image == Some(efr), "EFR image {:#x?}, register {efr:#x}", unit.efr_image);
    ensure!(
        t.unit_for(0, 0x48).is_none(),
        "00:09.0 (absent, unlisted) has a unit"
    );
    Ok(())
}

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
