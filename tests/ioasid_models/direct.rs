//! Direct-mapped reserved regions (issue 16, item 4: RMRR / IORT RMR) on both unit models,
//! each test named after the Linux / iommufd behaviour it matches: the core maps a device's
//! `IOMMU_RESV_DIRECT` regions one-to-one in its domain before the device uses it
//! (`iommu_create_device_direct_mappings`); iommufd reserves them in the IOAS and refuses an
//! attach whose existing mappings collide (`iopt_table_enforce_dev_resv_regions`,
//! `EADDRINUSE`), and releases them when the device leaves.

use iommu_engine::ioasid::{
    DeviceLabel, DirectRegion, Error, Incompatibility, IoasidCtx, IoasidFlags, MAX_DIRECT_REGIONS,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{IovaRange, Prot};
use iommu_engine::sim::walk::Access;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
/// An RMRR-like region: two pages of firmware memory.
const R_START: u64 = 0x7f00_0000;
const R_LEN: u64 = 2 * K4;

fn range(start: u64, len: u64) -> IovaRange {
    IovaRange {
        start: Iova::new(start),
        end: Iova::new(start + len),
    }
}

fn region() -> DirectRegion {
    DirectRegion::new(range(R_START, R_LEN), false).unwrap()
}

/// The device on either unit and what its unit translates for a write at `iova`.
struct Side {
    label: DeviceLabel,
    other: DeviceLabel,
    write: fn(&Rig<'_, '_>, u32, u64) -> Option<u64>,
    id: u32,
    other_id: u32,
}

fn vtd_write(r: &Rig<'_, '_>, rid: u32, iova: u64) -> Option<u64> {
    r.vm.translate(rid as u16, None, iova, Access::WRITE)
        .ok()
        .map(|t| t.pa)
}

fn smmu_write(r: &Rig<'_, '_>, sid: u32, iova: u64) -> Option<u64> {
    r.sm.translate(sid, None, iova, Access::WRITE)
        .ok()
        .map(|t| t.pa)
}

fn sides() -> [Side; 2] {
    [
        Side {
            label: vtd_dev(RID_A),
            other: vtd_dev(RID_B),
            write: vtd_write,
            id: RID_A,
            other_id: RID_B,
        },
        Side {
            label: smmu_dev(SID_A),
            other: smmu_dev(SID_B),
            write: smmu_write,
            id: SID_A,
            other_id: SID_B,
        },
    ]
}

fn each_side(f: impl Fn(&Rig<'_, '_>, &Side)) {
    for side in sides() {
        with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
            f(r, &side)
        });
    }
}

#[test]
fn iommu_create_device_direct_mappings_maps_identity_rw_at_attach() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        // Not attached: nothing mapped yet, the device is blocked.
        assert_eq!(ctx.translate(io, Iova::new(R_START)), Ok(None));
        ctx.attach(dev, io).unwrap();
        for off in [0, K4, R_LEN - 8] {
            assert_eq!((s.write)(r, s.id, R_START + off), Some(R_START + off));
            let m = ctx
                .translate(io, Iova::new(R_START + off))
                .unwrap()
                .unwrap();
            assert_eq!((m.pa.get(), m.prot), (R_START + off, RW));
        }
        assert_eq!((s.write)(r, s.id, R_START + R_LEN), None);
        let held = ctx.direct_mappings(io).unwrap();
        assert_eq!(held[0], Some((region(), 1)));
        assert_eq!(held.iter().flatten().count(), 1);
    });
}

#[test]
fn iopt_table_enforce_dev_resv_regions_refuses_a_colliding_mapping_with_eaddrinuse() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        // The user's mapping covers the region's second page.
        let user = (R_START + K4, 0x5000_0000);
        ctx.map(io, Iova::new(user.0), PhysAddr::new(user.1), K4, RW)
            .unwrap();
        let (live, domains) = (r.live(), (r.vtd_domains(), r.smmu_domains()));
        assert_eq!(
            ctx.attach(dev, io),
            Err(Error::Incompatible {
                device: dev,
                reason: Incompatibility::DirectRegionCollides {
                    region: region().range(),
                    with: range(user.0, K4),
                },
            })
        );
        // No effect: not attached, nothing mapped, no domain, no page.
        assert_eq!((s.write)(r, s.id, user.0), None);
        assert_eq!(ctx.translate(io, Iova::new(R_START)), Ok(None));
        assert_eq!(
            ctx.translate(io, Iova::new(user.0))
                .unwrap()
                .unwrap()
                .pa
                .get(),
            user.1
        );
        assert_eq!(ctx.direct_mappings(io).unwrap().iter().flatten().count(), 0);
        assert_eq!(
            (r.live(), (r.vtd_domains(), r.smmu_domains())),
            (live, domains)
        );
        ctx.unmap(io, Iova::new(user.0), K4).unwrap();
        // Once the mapping is gone, the attach succeeds.
        ctx.attach(dev, io).unwrap();
        assert_eq!((s.write)(r, s.id, user.0), Some(user.0));
    });
}

#[test]
fn iopt_reserved_direct_region_refuses_map_and_unmap_while_attached() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        let reserved = Err(Error::Reserved(region().range()));
        let pa = PhysAddr::new(0x5000_0000);
        assert_eq!(
            ctx.map(io, Iova::new(R_START - K4), pa, 2 * K4, RW),
            reserved
        );
        assert_eq!(
            ctx.unmap(io, Iova::new(R_START + K4), K4).map(|_| ()),
            reserved
        );
        // Around it the user maps freely.
        ctx.map(io, Iova::new(R_START - K4), pa, K4, RW).unwrap();
        assert_eq!((s.write)(r, s.id, R_START + K4), Some(R_START + K4));
        // Once the device leaves, the range is the user's again.
        ctx.detach(dev).unwrap();
        assert_eq!(ctx.translate(io, Iova::new(R_START)), Ok(None));
        ctx.map(io, Iova::new(R_START), pa, K4, RW).unwrap();
    });
}

#[test]
fn shared_rmrr_stays_mapped_until_its_last_device_detaches() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let a = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let b = ctx
            .bind_with_direct(s.other, false, None, &[region()])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        // A device without regions shares the IOASID: it sees the direct mapping while it
        // exists (one domain per unit), and must stop seeing it with the last user.
        let plain = if s.label.unit == VTD {
            (
                smmu_dev(SID_C),
                SID_C,
                smmu_write as fn(&Rig<'_, '_>, u32, u64) -> _,
            )
        } else {
            (
                vtd_dev(0x30),
                0x30,
                vtd_write as fn(&Rig<'_, '_>, u32, u64) -> _,
            )
        };
        let c = ctx.bind(plain.0, false).unwrap();
        ctx.attach(a, io).unwrap();
        ctx.attach(b, io).unwrap();
        ctx.attach(c, io).unwrap();
        assert_eq!(ctx.direct_mappings(io).unwrap()[0], Some((region(), 2)));
        ctx.detach(a).unwrap();
        assert_eq!(ctx.direct_mappings(io).unwrap()[0], Some((region(), 1)));
        assert_eq!((s.write)(r, s.other_id, R_START), Some(R_START));
        // Cache the translation: the unmap must invalidate it.
        assert_eq!((plain.2)(r, plain.1, R_START), Some(R_START));
        let before = r.completions();
        ctx.detach(b).unwrap();
        assert_ne!(r.completions(), before, "no invalidation waited for");
        assert_eq!(ctx.direct_mappings(io).unwrap().iter().flatten().count(), 0);
        assert_eq!((plain.2)(r, plain.1, R_START), None);
        assert_eq!(ctx.translate(io, Iova::new(R_START)), Ok(None));
        assert_eq!(ctx.audit(io), Ok(()));
    });
}

#[test]
fn direct_region_copied_into_a_domain_built_later() {
    // The VT-d device brings the region; the SMMUv3 domain built after is filled from the
    // record, the region included (one IOAS, every domain behind it).
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx
            .bind_with_direct(vtd_dev(RID_A), false, None, &[region()])
            .unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        assert_eq!(smmu_write(r, SID_A, R_START + K4), Some(R_START + K4));
        assert_eq!(vtd_write(r, RID_A, R_START + K4), Some(R_START + K4));
        assert_eq!(ctx.audit(io), Ok(()));
    });
}

#[test]
fn replace_moves_the_direct_regions_to_the_new_ioasid() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let (x, y) = (
            ctx.alloc(IoasidFlags::empty()).unwrap(),
            ctx.alloc(IoasidFlags::empty()).unwrap(),
        );
        ctx.attach(dev, x).unwrap();
        ctx.attach(dev, y).unwrap();
        assert_eq!((s.write)(r, s.id, R_START), Some(R_START));
        assert_eq!(ctx.translate(x, Iova::new(R_START)), Ok(None));
        assert_eq!(ctx.direct_mappings(x).unwrap().iter().flatten().count(), 0);
        assert_eq!(ctx.direct_mappings(y).unwrap()[0], Some((region(), 1)));
        // A colliding mapping in the target refuses the replace; the device stays in `y`.
        ctx.map(x, Iova::new(R_START), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        assert!(matches!(
            ctx.attach(dev, x),
            Err(Error::Incompatible {
                reason: Incompatibility::DirectRegionCollides { .. },
                ..
            })
        ));
        assert_eq!((s.write)(r, s.id, R_START), Some(R_START));
    });
}

#[test]
fn overlapping_unequal_direct_regions_of_two_devices_refused() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let wide = DirectRegion::new(range(R_START, 4 * K4), false).unwrap();
        let a = ctx
            .bind_with_direct(s.label, false, None, &[region()])
            .unwrap();
        let b = ctx.bind_with_direct(s.other, false, None, &[wide]).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(a, io).unwrap();
        assert_eq!(
            ctx.attach(b, io),
            Err(Error::Incompatible {
                device: b,
                reason: Incompatibility::DirectRegionCollides {
                    region: wide.range(),
                    with: region().range(),
                },
            })
        );
        assert_eq!((s.write)(r, s.other_id, R_START), None);
    });
}

#[test]
fn bind_refuses_bad_overlapping_and_too_many_direct_regions() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let odd = range(R_START + 8, K4);
        assert_eq!(
            DirectRegion::new(odd, false),
            Err(Error::BadDirectRegion(odd))
        );
        let empty = range(R_START, 0);
        assert_eq!(
            DirectRegion::new(empty, false),
            Err(Error::BadDirectRegion(empty))
        );
        let high = range(1 << 57, K4);
        assert_eq!(
            DirectRegion::new(high, false),
            Err(Error::BadDirectRegion(high))
        );
        let half = DirectRegion::new(range(R_START + K4, K4), true).unwrap();
        assert_eq!(
            ctx.bind_with_direct(vtd_dev(RID_A), false, None, &[region(), half]),
            Err(Error::BadDirectRegion(half.range()))
        );
        let many: Vec<_> = (0..=MAX_DIRECT_REGIONS as u64)
            .map(|i| DirectRegion::new(range(R_START + 2 * i * K4, K4), false).unwrap())
            .collect();
        assert_eq!(
            ctx.bind_with_direct(vtd_dev(RID_A), false, None, &many),
            Err(Error::Capacity("direct regions per device"))
        );
        // Nothing was bound: the device binds.
        let d = ctx
            .bind_with_direct(vtd_dev(RID_A), false, None, &many[..MAX_DIRECT_REGIONS])
            .unwrap();
        assert_eq!(
            ctx.direct_regions(d).unwrap().iter().flatten().count(),
            MAX_DIRECT_REGIONS
        );
    });
}

#[test]
fn rmr_device_memory_mapped_mmio() {
    each_side(|r, s| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let mmio = DirectRegion::new(range(0x1000_0000, K4), true).unwrap();
        let dev = ctx.bind_with_direct(s.label, false, None, &[mmio]).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        let m = ctx.translate(io, Iova::new(0x1000_0000)).unwrap().unwrap();
        assert_eq!(m.prot, RW | Prot::MMIO);
        assert_eq!((s.write)(r, s.id, 0x1000_0000), Some(0x1000_0000));
    });
}

#[test]
fn rmrr_converts_to_a_normal_memory_direct_region() {
    // An RMRR (VT-d 4.1 section 8.4) with no device scope: base 0x7f00_0000, limit 0x7f00_1fff.
    let mut bytes = [0u8; 24];
    bytes[0] = 1;
    bytes[2] = 24;
    bytes[8..16].copy_from_slice(&R_START.to_le_bytes());
    bytes[16..24].copy_from_slice(&(R_START + R_LEN - 1).to_le_bytes());
    let rmrr = iommu_engine::firmware::dmar::Rmrr::parse(&bytes, 0).unwrap();
    assert_eq!(DirectRegion::from_rmrr(&rmrr), Ok(region()));
    bytes[16..24].copy_from_slice(&(R_START + 0x10).to_le_bytes());
    let bad = iommu_engine::firmware::dmar::Rmrr::parse(&bytes, 0).unwrap();
    assert!(matches!(
        DirectRegion::from_rmrr(&bad),
        Err(Error::BadDirectRegion(_))
    ));
}

/// Linux `iort_iommu_get_resv_regions`: a device behind an SMMUv3 gets the ranges of the IORT
/// RMR nodes naming its StreamID as direct regions, device memory (Device-nGnRE) mapped MMIO,
/// normal memory as memory; here from a constructed IORT, found from the device's requester ID
/// through the root complex's ID mappings.
#[test]
fn iort_rmr_ranges_of_a_stream_are_mapped_one_to_one() {
    use iommu_engine::firmware::iort::build::{Map, TableBuilder};
    use iommu_engine::firmware::iort::Iort;
    let mut b = TableBuilder::new(6);
    let smmu = b.smmu_v3(0x900_0000, 0, [0; 4], 0, &[]);
    let rc = b.root_complex((1, 0, 0), 0, 0, 48, &[Map::range(0, 0x1000, 0, smmu)]);
    // A doorbell page for SID_A alone (Device-nGnRE), and firmware memory for the 16
    // StreamIDs from SID_A (Normal write-back, remapping permitted).
    b.rmr(
        1 << 2,
        &[(0x1000_0000, 0x1_0000)],
        &[Map::range(0, 1, SID_A, smmu)],
    );
    b.rmr(
        1 | 5 << 2,
        &[(R_START, 0x1_0000)],
        &[Map::range(0, 16, SID_A, smmu)],
    );
    let table = b.build();
    let iort = Iort::parse(&table).unwrap();
    let regions: Vec<DirectRegion> = iort
        .reserved_for_device(rc, SID_A)
        .unwrap()
        .map(|r| DirectRegion::from_rmr(&r.unwrap()).unwrap())
        .collect();
    assert_eq!(regions.len(), 2);
    assert_eq!(
        regions
            .iter()
            .map(|d| (d.mmio(), d.relaxable()))
            .collect::<Vec<_>>(),
        [(true, false), (false, true)]
    );
    assert_eq!(iort.reserved_for_device(rc, SID_A + 16).unwrap().count(), 0);
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx
            .bind_with_direct(smmu_dev(SID_A), false, None, &regions)
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        for (base, prot) in [(0x1000_0000, RW | Prot::MMIO), (R_START, RW)] {
            for off in [0, 0xfff8] {
                assert_eq!(smmu_write(r, SID_A, base + off), Some(base + off));
            }
            let m = ctx.translate(io, Iova::new(base)).unwrap().unwrap();
            assert_eq!(m.prot, prot);
        }
        ctx.detach(dev).unwrap();
        assert_eq!(smmu_write(r, SID_A, R_START), None);
    });
}
