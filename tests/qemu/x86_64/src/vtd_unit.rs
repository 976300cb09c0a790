//! TEMPORARY stand-in until `VtdUnit` lands: every operation fails.

use iommu_engine::iommu::{
    Capabilities, DeviceId, DomainConfig, DomainHandle, Error, Iommu, Pasid,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Gather, IovaRange, Leaf, Mapping, Prot};

use crate::scenario::{Ctx, Fail};

pub struct Unit;

const NO: Error = Error::Hardware {
    what: "no VtdUnit yet",
    code: 0,
};

impl Iommu for Unit {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ias: 48,
            oas: 48,
            page_sizes: 0x1000,
            pasid_bits: 0,
            enforce_snoop: false,
            dirty_tracking: false,
            nesting: false,
            coherent_walk: true,
        }
    }
    fn reserved_regions(&self) -> &[IovaRange] {
        &[]
    }
    fn domain_alloc(&self, _: &DomainConfig) -> Result<DomainHandle, Error> {
        Err(NO)
    }
    fn domain_geometry(&self, _: DomainHandle) -> Result<(u32, u64), Error> {
        Err(NO)
    }
    fn domain_free(&self, _: DomainHandle) -> Result<(), Error> {
        Err(NO)
    }
    fn map(&self, _: DomainHandle, _: Iova, _: PhysAddr, _: u64, _: Prot) -> Result<(), Error> {
        Err(NO)
    }
    fn unmap(&self, _: DomainHandle, _: Iova, _: u64, _: &mut Gather) -> Result<u64, Error> {
        Err(NO)
    }
    fn flush(&self, _: DomainHandle, _: &mut Gather) -> Result<(), Error> {
        Err(NO)
    }
    fn query(&self, _: DomainHandle, _: Iova) -> Option<Mapping> {
        None
    }
    fn for_each_mapping(
        &self,
        _: DomainHandle,
        _: Iova,
        _: u64,
        _: &mut dyn FnMut(Leaf),
    ) -> Result<(), Error> {
        Err(NO)
    }
    fn read_and_clear_dirty(
        &self,
        _: DomainHandle,
        _: Iova,
        _: u64,
        _: &mut dyn FnMut(Iova, u32),
        _: &mut Gather,
    ) -> Result<(), Error> {
        Err(NO)
    }
    fn attach(&self, _: DeviceId, _: Option<Pasid>, _: DomainHandle) -> Result<(), Error> {
        Err(NO)
    }
    fn detach(&self, _: DeviceId, _: Option<Pasid>) -> Result<(), Error> {
        Err(NO)
    }
}

pub fn create(_g: &Ctx) -> Result<Unit, Fail> {
    crate::bail!("VtdUnit not merged yet")
}
pub fn destroy(_u: Unit) -> Result<(), Fail> {
    Ok(())
}
pub fn disable(_u: &Unit) -> Result<(), Fail> {
    crate::bail!("no unit")
}
pub fn enable(_u: &Unit) -> Result<(), Fail> {
    crate::bail!("no unit")
}
pub fn translating(_u: &Unit) -> bool {
    false
}

/// The VT-d register window as an `Mmio` (the crate's `RegisterWindow`).
pub fn regs(g: &Ctx) -> Result<iommu_engine::mmio::Mmio, Fail> {
    let Some(base) = core::ptr::NonNull::new(g.arch.vtd_base as *mut u8) else {
        crate::bail!("VT-d base is null");
    };
    // SAFETY: the VT-d window is identity-mapped uncached by boot.rs, 4 KiB long.
    Ok(unsafe { iommu_engine::mmio::Mmio::new(base, 0x1000) })
}
