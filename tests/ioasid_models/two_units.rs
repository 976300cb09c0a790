//! One IOASID with devices behind a VT-d unit and an SMMUv3 unit, both able to enforce snoop:
//! maps reach both, an unmap flushes each once, late attaches copy, failures roll back,
//! re-attach and detach are seen by the hardware at once, and tags are invalidated before reuse.

use iommu_engine::ioasid::{DeviceHandle, Error, IoasidCtx, IoasidFlags, IoasidId};
use iommu_engine::iommu::{self, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{self, Prot};
use iommu_engine::sim::smmuv3::op;
use iommu_engine::sim::Arena;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// A context with RID_A (VT-d) and SID_A (SMMUv3) attached to one ENFORCE_SNOOP IOASID.
fn two_unit_ioasid<'a>(
    r: &Rig<'a, '_>,
) -> (
    IoasidCtx<'a, 'a, Arena>,
    IoasidId,
    DeviceHandle,
    DeviceHandle,
) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
    let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.attach(v, io).unwrap();
    ctx.attach(s, io).unwrap();
    (ctx, io, v, s)
}

/// The opcodes of the commands the SMMUv3 model consumed since its counters were cleared.
fn smmu_ops(r: &Rig<'_, '_>) -> Vec<u8> {
    r.sm.command_log().iter().map(|c| c[0] as u8).collect()
}

/// The type codes of the descriptors the VT-d model executed since its counters were cleared.
fn vtd_types(r: &Rig<'_, '_>) -> Vec<u64> {
    r.vm.descriptor_log().iter().map(|d| d[0] & 0xf).collect()
}

#[test]
fn one_map_reaches_both_units_and_one_unmap_flushes_each_once() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io, _, _) = two_unit_ioasid(r);
        ctx.map(
            io,
            Iova::new(0x10_0000),
            PhysAddr::new(0x4000_0000),
            4 * K4,
            RW,
        )
        .unwrap();
        for p in 0..4 {
            let (iova, pa) = (0x10_0000 + p * K4 + 8, 0x4000_0000 + p * K4 + 8);
            assert_eq!(r.vtd_read(RID_A, None, iova), Some((pa, true)));
            assert_eq!(r.smmu_read(SID_A, None, iova), Some((pa, true)));
        }
        r.vm.reset_stats();
        r.sm.reset_stats();
        assert_eq!(ctx.unmap(io, Iova::new(0x10_0000), 4 * K4), Ok(4 * K4));
        // VT-d: one page-selective IOTLB invalidation (AM 2) and one wait descriptor.
        assert_eq!(vtd_types(r), [2, 5]);
        assert_eq!((r.vm.stats().iotlb_page, r.vm.stats().wait), (1, 1));
        // SMMUv3 (RIL): one range TLBI_S2_IPA and one CMD_SYNC.
        assert_eq!(smmu_ops(r), [op::TLBI_S2_IPA, op::CMD_SYNC]);
        assert_eq!(r.sm.stats().syncs, 1);
        for p in 0..4 {
            assert_eq!(r.vtd_read(RID_A, None, 0x10_0000 + p * K4), None);
            assert_eq!(r.smmu_read(SID_A, None, 0x10_0000 + p * K4), None);
        }
        // An unmap of a range that holds nothing still answers, and the record agrees.
        assert_eq!(ctx.unmap(io, Iova::new(0x10_0000), 4 * K4), Ok(0));
        assert_eq!(ctx.translate(io, Iova::new(0x10_0000)), Ok(None));
        r.drain();
    });
}

#[test]
fn a_late_attach_copies_the_existing_mappings() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        // Before any attach: only the record holds it.
        ctx.map(io, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
            .unwrap();
        ctx.attach(v, io).unwrap();
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x8000), K4, Prot::READ)
            .unwrap();
        assert_eq!(r.smmu_domains(), 0);
        ctx.attach(s, io).unwrap();
        for (iova, pa) in [(0x20_5000, 0x6000_5000), (0x1000, 0x8000)] {
            assert_eq!(r.vtd_read(RID_A, None, iova), Some((pa, true)));
            assert_eq!(r.smmu_read(SID_A, None, iova), Some((pa, true)));
        }
        // The copy kept the page size and the permissions.
        let t = r.sm.translate(
            SID_A,
            None,
            0x20_5000,
            iommu_engine::sim::walk::Access::READ,
        );
        assert_eq!(t.unwrap().page_size_log2, 21);
        let w = iommu_engine::sim::walk::Access::WRITE;
        assert!(r.sm.translate(SID_A, None, 0x1000, w).is_err());
        assert!(r.vm.translate(RID_A as u16, None, 0x1000, w).is_err());
        r.drain();
    });
}

#[test]
fn a_map_refused_by_one_unit_is_rolled_back_on_the_other() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        // The VT-d domain comes first (attached first): it maps, then the SMMUv3 refuses an
        // output address beyond its 44-bit OAS that VT-d's 48-bit HAW takes.
        let (ctx, io, _, _) = two_unit_ioasid(r);
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        let live = r.live();
        let before = r.completions();
        let wide = PhysAddr::new(1 << 45);
        let e = ctx.map(io, Iova::new(0x4000_0000), wide, M2 + K4, RW);
        assert!(matches!(e, Err(Error::PageTable(_))), "{e:?}");
        // The VT-d mapping was undone and flushed (one wait), then the tables the map had built
        // were reclaimed (one more); nothing reached the SMMUv3.
        assert_eq!(r.completions(), (before.0 + 2, before.1));
        assert_eq!(r.vtd_read(RID_A, None, 0x4000_0000), None);
        assert_eq!(r.vtd_read(RID_A, None, 0x4020_0000), None);
        assert_eq!(r.smmu_read(SID_A, None, 0x4000_0000), None);
        assert_eq!(ctx.translate(io, Iova::new(0x4000_0000)), Ok(None));
        // What was there before is untouched; the tables the attempt built are back in the
        // allocator.
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x5000_0000, true)));
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x5000_0000, true)));
        assert_eq!(r.live(), live);
        // And the same range maps once the address fits both.
        ctx.map(
            io,
            Iova::new(0x4000_0000),
            PhysAddr::new(0x6000_0000),
            M2 + K4,
            RW,
        )
        .unwrap();
        assert_eq!(
            r.smmu_read(SID_A, None, 0x4020_0000),
            Some((0x6020_0000, true))
        );
        r.drain();
    });
}

#[test]
fn a_map_failing_for_memory_on_the_second_unit_rolls_back_the_first() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io, _, _) = two_unit_ioasid(r);
        // Each of the record, the VT-d table and the SMMUv3 table needs new table pages for
        // a first mapping in a new 512 GiB region; fail the last allocation of the SMMUv3's
        // (its domain is the last one mapped): count how many a map takes on a twin region,
        // after a first map built what the twins share.
        ctx.map(io, Iova::new(3 << 39), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        let s0 = r.arena.stats().allocs;
        ctx.map(io, Iova::new(1 << 39), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        let per_map = r.arena.stats().allocs - s0;
        assert!(per_map >= 3, "record, VT-d and SMMUv3 tables: {per_map}");
        r.arena
            .set_fail_policy(iommu_engine::sim::arena::FailPolicy::AfterN(per_map - 1));
        let e = ctx.map(io, Iova::new(2 << 39), PhysAddr::new(0x5000_0000), K4, RW);
        r.arena
            .set_fail_policy(iommu_engine::sim::arena::FailPolicy::Never);
        assert!(
            matches!(
                e,
                Err(Error::Iommu(iommu::Error::NoMemory))
                    | Err(Error::PageTable(pgtable::Error::NoMemory))
            ),
            "{e:?}"
        );
        assert_eq!(r.vtd_read(RID_A, None, 2 << 39), None);
        assert_eq!(r.smmu_read(SID_A, None, 2 << 39), None);
        assert_eq!(ctx.translate(io, Iova::new(2 << 39)), Ok(None));
        ctx.map(io, Iova::new(2 << 39), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        assert_eq!(r.vtd_read(RID_A, None, 2 << 39), Some((0x5000_0000, true)));
        r.drain();
    });
}

#[test]
fn reattaching_to_another_ioasid_is_seen_at_once() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let a = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        let b = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.map(a, Iova::new(0x1000), PhysAddr::new(0x1000_0000), K4, RW)
            .unwrap();
        ctx.map(b, Iova::new(0x1000), PhysAddr::new(0x2000_0000), K4, RW)
            .unwrap();
        for d in [v, s] {
            ctx.attach(d, a).unwrap();
        }
        // Warm every cache: context / STE and IOTLB / TLB.
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x1000_0000, true)));
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x1000_0000, true)));
        for d in [v, s] {
            ctx.attach(d, b).unwrap();
        }
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x2000_0000, true)));
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x2000_0000, true)));
        // A's domains had no other user: gone from both units; A can go.
        assert_eq!((r.vtd_domains(), r.smmu_domains()), (1, 1));
        ctx.free(a).unwrap();
        assert_eq!(ctx.free(b), Err(Error::Busy));
    });
}

/// The first live domain handle of a unit.
fn only_domain(unit: &dyn Iommu) -> DomainHandle {
    (0..64u16)
        .map(DomainHandle)
        .find(|&h| unit.domain_geometry(h).is_ok())
        .expect("a domain")
}

/// The VMIDs of the SMMUv3 model's logged commands of opcode `op` (VMID is word 0, 47:32).
fn vmids(r: &Rig<'_, '_>, opcode: u8) -> Vec<u64> {
    r.sm.command_log()
        .iter()
        .filter(|c| c[0] as u8 == opcode)
        .map(|c| c[0] >> 32 & 0xffff)
        .collect()
}

#[test]
fn detach_faults_at_once_and_tags_are_invalidated_before_reuse() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io, v, s) = two_unit_ioasid(r);
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x1000_0000), K4, RW)
            .unwrap();
        let did = r.vtd.domain_id(only_domain(r.vtd)).unwrap();
        assert!(r.vtd_read(RID_A, None, 0x1000).is_some() && r.vtd_cached(RID_A, 0x1000));
        assert!(r.smmu_read(SID_A, None, 0x1000).is_some() && r.smmu_cached(SID_A, 0x1000));
        r.sm.reset_stats();
        ctx.detach(v).unwrap();
        ctx.detach(s).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), None);
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), None);
        assert_eq!((r.vtd_domains(), r.smmu_domains()), (0, 0));
        let freed_vmids = vmids(r, op::TLBI_S12_VMALL);
        assert!(!freed_vmids.is_empty(), "{:x?}", smmu_ops(r));
        ctx.free(io).unwrap();

        // Other devices, a new IOASID: its domains reuse the tags, and the same IOVA must
        // translate to the new page, not to an entry the old domain left in a cache.
        let v2 = ctx.bind(vtd_dev(RID_B), false).unwrap();
        let s2 = ctx.bind(smmu_dev(SID_B), false).unwrap();
        let io2 = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(v2, io2).unwrap();
        ctx.attach(s2, io2).unwrap();
        assert_eq!(r.vtd.domain_id(only_domain(r.vtd)), Some(did), "DID reused");
        ctx.map(io2, Iova::new(0x1000), PhysAddr::new(0x3000_0000), K4, RW)
            .unwrap();
        assert_eq!(r.vtd_read(RID_B, None, 0x1000), Some((0x3000_0000, true)));
        assert_eq!(r.smmu_read(SID_B, None, 0x1000), Some((0x3000_0000, true)));
        r.sm.reset_stats();
        assert_eq!(ctx.unmap(io2, Iova::new(0x1000), K4), Ok(K4));
        assert_eq!(vmids(r, op::TLBI_S2_IPA), [freed_vmids[0]], "VMID reused");
        r.drain();
    });
}
