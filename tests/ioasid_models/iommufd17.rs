//! iommufd behaviours of issue 17 (items 4-6) on both unit models: page-size policy
//! (`IOMMU_OPTION_HUGE_PAGES`), `IOMMU_IOAS_COPY`, `IOMMU_IOAS_IOVA_RANGES` and per-device
//! capabilities declared at bind. Every claim is read back through a model's translation or
//! the unit's own table.

use iommu_engine::ioasid::{DeviceLabel, Error, IoasidCtx, IoasidFlags, SMALL_PAGE_LOG2};
use iommu_engine::iommu::{DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// The sizes (log2) of the leaves every domain of `unit` holds in `[iova, iova + len)`.
fn leaf_sizes(unit: &dyn Iommu, iova: u64, len: u64) -> Vec<u32> {
    let mut sizes = Vec::new();
    for h in 0..64u16 {
        let _ = unit.for_each_mapping(DomainHandle(h), Iova::new(iova), len, &mut |l| {
            sizes.push(l.size_log2)
        });
    }
    sizes
}

/// Both units, each with one device: (the unit, the device's label, a read through the model).
fn on_both_units(f: impl Fn(&Rig<'_, '_>, &dyn Iommu, DeviceLabel, &dyn Fn(u64) -> Option<u64>)) {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        f(r, r.vtd, vtd_dev(RID_A), &|iova| {
            r.vtd_read(RID_A, None, iova).map(|t| t.0)
        });
        f(r, r.smmu, smmu_dev(SID_A), &|iova| {
            r.smmu_read(SID_A, None, iova).map(|t| t.0)
        });
    });
}

/// iommufd `IOMMU_OPTION_HUGE_PAGES` = 0: a 2 MiB-aligned 2 MiB map writes 512 4 KiB leaves
/// in the unit's domain (one 2 MiB block with the option on), whether the option was set
/// before the attach (the domain is built limited, and the earlier mapping copied in small
/// pages) or on an attached IOASID with nothing mapped; DMA still reaches every page. Changing
/// it once the IOASID has both a domain and a mapping is refused, as iommufd does.
#[test]
fn option_huge_pages_off_maps_only_4k() {
    on_both_units(|_r, unit, label, read| {
        let ctx = IoasidCtx::new(_r.reg, _r.arena, 0);
        let dev = ctx.bind(label, false).unwrap();
        let base = 0x4000_0000;
        let pa = 0x8000_0000;
        // On (the default): one block.
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [21]);
        assert_eq!(ctx.set_huge_pages(io, false), Err(Error::Busy));
        assert_eq!(ctx.max_page_log2(io), Ok(None));
        ctx.unmap(io, Iova::new(base), M2).unwrap();
        // Off on an attached IOASID with nothing mapped: 512 pages.
        ctx.set_huge_pages(io, false).unwrap();
        assert_eq!(ctx.max_page_log2(io), Ok(Some(SMALL_PAGE_LOG2)));
        ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [12; 512]);
        for off in [0, 0x1000, M2 - 0x1000] {
            assert_eq!(read(base + off + 8), Some(pa + off + 8));
        }
        ctx.detach(dev).unwrap();
        // Off before the attach: the mapping made with no domain is copied in 4 KiB pages.
        let late = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(late, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        ctx.set_huge_pages(late, false).unwrap();
        ctx.attach(dev, late).unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [12; 512]);
        assert_eq!(read(base + M2 - 8), Some(pa + M2 - 8));
        // And on again (no mapping yet in a new IOASID): blocks again.
        ctx.detach(dev).unwrap();
        ctx.unmap(late, Iova::new(base), M2).unwrap();
        ctx.attach(dev, late).unwrap();
        ctx.set_huge_pages(late, true).unwrap();
        ctx.map(late, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [21]);
        ctx.detach(dev).unwrap();
    });
}
