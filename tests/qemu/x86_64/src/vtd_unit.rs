//! Bringing the crate's [`VtdUnit`] up and down on q35, as a kernel would at boot.
//!
//! The register base and the host address width come from the ACPI DMAR (`firmware.rs`).
//! The mode follows the hardware: scalable when `ECAP.SMTS` says the unit has it (QEMU's
//! `x-scalable-mode=on`), legacy otherwise. Everything else (queued invalidation, domain
//! format, AGAW, large pages) the unit decides from `CAP`/`ECAP`.

use core::ptr::NonNull;

use iommu_engine::mmio::{Mmio, RegisterWindow};
use iommu_engine::vtd::ecap::{Ecap, EcapFlags};
use iommu_engine::vtd::regs::ECAP_REG;
use iommu_engine::vtd::unit::{VtdConfig, VtdUnit};

use crate::alloc::PageArena;
use crate::scenario::{Ctx, Fail};
use crate::{bail, println};

/// The unit type the scenarios use.
pub type Unit = VtdUnit<Mmio, &'static PageArena>;

/// The VT-d register window as an `Mmio` (the crate's `RegisterWindow`).
pub fn regs(g: &Ctx) -> Result<Mmio, Fail> {
    let Some(base) = NonNull::new(g.arch.vtd_base as *mut u8) else {
        bail!("VT-d base is null");
    };
    // SAFETY: the VT-d window is identity-mapped uncached by boot.rs, 4 KiB long, and the unit
    // is the only driver of its command registers.
    Ok(unsafe { Mmio::new(base, 0x1000) })
}

/// Creates the unit (legacy or scalable mode, as `ECAP.SMTS` allows) and enables it.
pub fn create(g: &Ctx) -> Result<Unit, Fail> {
    let regs = regs(g)?;
    let scalable = Ecap(regs.read64(ECAP_REG))
        .flags()
        .contains(EcapFlags::SMTS);
    // The platform's host address width comes from the DMAR, as a kernel passes it on.
    let config = crate::firmware::unit_defaults(g.arch.vtd_base)?.apply(if scalable {
        VtdConfig::scalable()
    } else {
        VtdConfig::legacy()
    });
    let unit = match Unit::new(regs, g.alloc, config) {
        Ok(u) => u,
        Err(e) => bail!("VtdUnit::new ({config:?}): {e}"),
    };
    println!(
        "unit: {:?} mode, HAW {} ({}), MGAW {}, first DID {}",
        unit.info().mode,
        unit.info().haw,
        unit.info().haw_source,
        unit.info().mgaw,
        unit.info().did_base
    );
    enable(&unit)?;
    Ok(unit)
}

/// Turns translation off and releases the unit: every page it took goes back to the allocator.
pub fn destroy(unit: Unit) -> Result<(), Fail> {
    disable(&unit)?;
    match unit.release() {
        Ok(r) => match r.leaked {
            None => Ok(()),
            Some(e) => bail!("VtdUnit::release leaked: {e}"),
        },
        Err((_unit, e)) => bail!("VtdUnit::release: {e}"),
    }
}

/// `VtdUnit::disable`.
pub fn disable(unit: &Unit) -> Result<(), Fail> {
    match unit.disable() {
        Ok(()) => Ok(()),
        Err(e) => bail!("VtdUnit::disable: {e}"),
    }
}

/// `VtdUnit::enable`.
pub fn enable(unit: &Unit) -> Result<(), Fail> {
    match unit.enable() {
        Ok(()) => Ok(()),
        Err(e) => bail!("VtdUnit::enable: {e}"),
    }
}

/// Whether the hardware says translation is on (`GSTS.TES`).
pub fn translating(unit: &Unit) -> bool {
    unit.is_enabled()
}
