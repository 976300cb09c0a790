//! An IOASID behind a unit whose granule is larger than the record's 4 KiB pages (issue 15:
//! SMMUv3 with the embedder's 16 KiB or 64 KiB granule): mappings made before the attach are
//! copied in whole granules (each record leaf alone was refused as misaligned), and
//! `translate` reports the granule the device sees (it reported 12).

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

#[test]
fn translate_reports_the_granule_devices_see() {
    for granule in [14u32, 16] {
        let mut s = SmmuSetup::qemu(true);
        s.unit.granule_log2 = Some(granule);
        with_rig(VtdSetup::legacy(true), s, |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 0);
            let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let info = ctx.device_info(dev).unwrap().capabilities;
            assert_eq!(info.page_sizes.trailing_zeros(), granule);
            let io = ctx.alloc(IoasidFlags::empty()).unwrap();
            let g = 1u64 << granule;
            let rw = Prot::READ | Prot::WRITE;
            ctx.map(io, Iova::new(4 * g), PhysAddr::new(0x6000_0000), 2 * g, rw)
                .unwrap();
            // Nothing attached: the record's own pages.
            let m = ctx
                .translate(io, Iova::new(4 * g + 0x1008))
                .unwrap()
                .unwrap();
            assert_eq!((m.pa.get(), m.size_log2), (0x6000_1008, 12));
            ctx.attach(dev, io).unwrap();
            let m = ctx
                .translate(io, Iova::new(5 * g + 0x1008))
                .unwrap()
                .unwrap();
            assert_eq!(
                (m.pa.get(), m.size_log2),
                (0x6000_0000 + g + 0x1008, granule)
            );
            assert_eq!(
                r.smmu_read(SID_A, None, 5 * g + 0x1008).map(|t| t.0),
                Some(m.pa.get())
            );
            ctx.detach(dev).unwrap();
            // Less than a granule is still refused, naming the mapping.
            let small = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.map(small, Iova::new(g), PhysAddr::new(0x6100_0000), g / 2, rw)
                .unwrap();
            assert_eq!(
                ctx.attach(dev, small),
                Err(Error::Incompatible {
                    device: dev,
                    reason: Incompatibility::Alignment {
                        iova: Iova::new(g),
                        granule_log2: granule
                    }
                })
            );
        });
    }
}

/// A map the 64 KiB-granule unit refuses for its alignment (nothing written)
/// must not be reported as reachable, nor kept in the record where no unmap of the range can
/// ever clear it.
#[test]
fn a_map_refused_for_the_granule_is_not_kept_in_the_record() {
    let mut s = SmmuSetup::qemu(true);
    s.unit.granule_log2 = Some(16);
    with_rig(VtdSetup::legacy(true), s, |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        let rw = Prot::READ | Prot::WRITE;
        let g = 1u64 << 16;
        let e = ctx.map(io, Iova::new(4 * g), PhysAddr::new(0x6000_0000), 0x1000, rw);
        std::eprintln!("map of 4 KiB in a 64 KiB domain: {e:?}");
        let kept = ctx.translate(io, Iova::new(4 * g)).unwrap();
        std::eprintln!("record after the refusal: {kept:?}");
        std::eprintln!("device sees: {:?}", r.smmu_read(SID_A, None, 4 * g));
        let u = ctx.unmap(io, Iova::new(4 * g), 0x1000);
        std::eprintln!("unmap of the range: {u:?}");
        let u2 = ctx.unmap(io, Iova::new(4 * g), 0x1000);
        std::eprintln!("unmap again: {u2:?}");
        assert!(
            !matches!(e, Err(Error::InvalidationPending { .. })),
            "a refusal with nothing written reported as reachable: {e:?}"
        );
        assert_eq!(kept, None, "the refused map's range kept in the record");
    });
}

/// The same refusal with a VT-d (4 KiB) device in the IOASID too (review 19b found, on
/// 13c24d7, the record keeping the 4 KiB range, every unmap of it refused by the 64 KiB unit,
/// and that refusal's put-back mapping the page into the VT-d domain its undo had cleared).
#[test]
fn an_unmap_after_a_granule_refusal_maps_nothing_back() {
    let mut s = SmmuSetup::qemu(true);
    s.unit.granule_log2 = Some(16);
    with_rig(VtdSetup::legacy(true), s, |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        let vdev = ctx.bind(vtd_dev(RID_A), false).unwrap();
        ctx.attach(vdev, io).unwrap();
        let sdev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        ctx.attach(sdev, io).unwrap();
        let rw = Prot::READ | Prot::WRITE;
        let g = 1u64 << 16;
        let e = ctx.map(io, Iova::new(4 * g), PhysAddr::new(0x6000_0000), 0x1000, rw);
        std::eprintln!("map: {e:?}");
        std::eprintln!(
            "vtd device after the map's undo: {:?}",
            r.vtd_read(RID_A, None, 4 * g)
        );
        let u = ctx.unmap(io, Iova::new(4 * g), 0x1000);
        std::eprintln!("unmap of the range: {u:?}");
        let seen = r.vtd_read(RID_A, None, 4 * g);
        std::eprintln!("vtd device after the unmap: {seen:?}");
        let wide = ctx.unmap(io, Iova::new(4 * g), g);
        std::eprintln!(
            "unmap of the enclosing granule: {wide:?}; vtd sees {:?}; record {:?}",
            r.vtd_read(RID_A, None, 4 * g),
            ctx.translate(io, Iova::new(4 * g)).unwrap()
        );
        assert_eq!(
            seen, None,
            "a refused unmap left the page reachable by the VT-d device"
        );
    });
}

/// A device behind a 64 KiB-granule SMMUv3 bound with a 4 KiB direct region (an
/// IORT RMR of one page): its attach's map of the region is refused for the granule with
/// nothing written; the attach must not report the region reachable nor keep it in the record.
#[test]
fn an_attach_whose_direct_region_is_refused_for_the_granule_keeps_nothing() {
    let mut s = SmmuSetup::qemu(true);
    s.unit.granule_log2 = Some(16);
    with_rig(VtdSetup::legacy(true), s, |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let region = rmr_page();
        let dev = ctx
            .bind_with_direct(smmu_dev(SID_A), false, None, &[region])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        let e = ctx.attach(dev, io);
        let kept = ctx.translate(io, Iova::new(0x7f00_0000)).unwrap();
        std::eprintln!("attach: {e:?}; record {kept:?}");
        let u = ctx.unmap(io, Iova::new(0x7f00_0000), 0x1000);
        std::eprintln!("unmap of the region's range: {u:?}");
        assert!(
            !matches!(e, Err(Error::InvalidationPending { .. })),
            "{e:?}"
        );
        assert_eq!(kept, None);
    });
}

/// The IOASID already holds a 64 KiB-granule SMMUv3 domain; a VT-d device bound
/// with a 4 KiB direct region (an RMRR page) attaches: the SMMUv3 domain refuses the region's
/// map for its granule, with nothing written: a plain refusal, the record empty (review 19b
/// found, on 13c24d7, the region kept as a mapping no unmap could clear).
#[test]
fn a_vtd_direct_region_refused_by_a_coarse_domain_keeps_nothing() {
    let mut s = SmmuSetup::qemu(true);
    s.unit.granule_log2 = Some(16);
    with_rig(VtdSetup::legacy(true), s, |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        let sdev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        ctx.attach(sdev, io).unwrap();
        let region = rmr_page();
        let vdev = ctx
            .bind_with_direct(vtd_dev(RID_A), false, None, &[region])
            .unwrap();
        let e = ctx.attach(vdev, io);
        let kept = ctx.translate(io, Iova::new(0x7f00_0000)).unwrap();
        std::eprintln!(
            "attach: {e:?}; record {kept:?}; vtd dev sees {:?}",
            r.vtd_read(RID_A, None, 0x7f00_0000)
        );
        let u = ctx.unmap(io, Iova::new(0x7f00_0000), 0x1000);
        std::eprintln!(
            "unmap of the region's range: {u:?}; vtd dev sees {:?}",
            r.vtd_read(RID_A, None, 0x7f00_0000)
        );
        let again = ctx.attach(vdev, io);
        std::eprintln!("attach retried: {again:?}");
        assert!(
            !matches!(e, Err(Error::InvalidationPending { .. })),
            "{e:?}"
        );
        assert_eq!(kept, None);
    });
}

/// A one-page direct region at 0x7f00_0000 (an RMRR or IORT RMR page).
fn rmr_page() -> iommu_engine::ioasid::DirectRegion {
    let range = iommu_engine::pgtable::IovaRange {
        start: Iova::new(0x7f00_0000),
        end: Iova::new(0x7f00_1000),
    };
    iommu_engine::ioasid::DirectRegion::new(range, false).unwrap()
}
