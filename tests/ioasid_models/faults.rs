//! Issue 14, IOASID layer: what each error leaves behind. An unmap or a map whose unit fails
//! half-way leaves the record and every domain agreeing, and a retry completes it; dropping a
//! context whose detach fails frees nothing the hardware can reach; an attach refused because
//! the unit cannot express a mapping the IOASID holds names the mapping.

use iommu_engine::ioasid::{
    Error, Incompatibility, IoasidCtx, IoasidFlags, IoasidId, Leaked, UnitId,
};
use iommu_engine::iommu::{DeviceId, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::smmuv3 as smmu;
use iommu_engine::sim::vtd::{self, VtdModelConfig};
use iommu_engine::sim::Arena;
use iommu_engine::vtd::Mode;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

#[test]
fn an_attach_refused_for_an_inexpressible_mapping_is_incompatible_and_names_it() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        // EXEC: the record holds it; a VT-d second stage has no execute permission.
        let exec = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(
            exec,
            Iova::new(0x3000),
            PhysAddr::new(0x7000),
            K4,
            RW | Prot::EXEC,
        )
        .unwrap();
        let live = (r.live(), r.vtd_domains());
        let reason = Incompatibility::Permissions {
            iova: Iova::new(0x3000),
            prot: RW | Prot::EXEC,
        };
        assert_eq!(
            ctx.attach(v, exec),
            Err(Error::Incompatible { device: v, reason })
        );
        assert_eq!(
            (r.live(), r.vtd_domains()),
            live,
            "the refused attach left something"
        );
        assert_eq!(r.vtd_read(RID_A, None, 0x3000), None);
        // A physical address beyond the SMMUv3's 44-bit OAS (VT-d's 48-bit HAW takes it).
        let wide = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(wide, Iova::new(0x5000), PhysAddr::new(1 << 45), K4, RW)
            .unwrap();
        ctx.attach(v, wide).unwrap();
        let live = (r.live(), r.smmu_domains());
        let reason = Incompatibility::OutputAddress {
            iova: Iova::new(0x5000),
            last: PhysAddr::new((1 << 45) + K4 - 1),
            oas: 44,
        };
        assert_eq!(
            ctx.attach(s, wide),
            Err(Error::Incompatible { device: s, reason })
        );
        assert_eq!(
            (r.live(), r.smmu_domains()),
            live,
            "the refused attach left something"
        );
        assert_eq!(r.smmu_read(SID_A, None, 0x5000), None);
        r.drain();
    });
}

/// A context with RID_A (VT-d) and SID_A (SMMUv3) attached, in that order, to one IOASID.
fn two_unit_ioasid<'a>(r: &Rig<'a, '_>) -> (IoasidCtx<'a, 'a, Arena>, IoasidId) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
    let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.attach(v, io).unwrap();
    ctx.attach(s, io).unwrap();
    (ctx, io)
}

/// A completion wait that never completes, on one unit.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// VT-d: wait descriptors stall the invalidation queue.
    Vtd,
    /// SMMUv3: CMD_SYNCs stall the command queue.
    Smmu,
}

impl Stall {
    fn arm(self, r: &Rig<'_, '_>) {
        match self {
            Stall::Vtd => r.vm.inject(vtd::Injection::StallWaits),
            Stall::Smmu => r.sm.inject(smmu::Injection::SyncStall),
        }
    }

    fn unit(self) -> UnitId {
        match self {
            Stall::Vtd => VTD,
            Stall::Smmu => SMMU,
        }
    }

    /// Completions (VT-d wait descriptors, SMMUv3 CMD_SYNCs) on the stalled unit so far.
    fn completions(self, r: &Rig<'_, '_>) -> u64 {
        match self {
            Stall::Vtd => r.completions().0,
            Stall::Smmu => r.completions().1,
        }
    }
}

fn clear(r: &Rig<'_, '_>) {
    r.vm.clear_injections();
    r.sm.clear_injections();
}

/// What the only domain of `unit` maps at `iova`.
fn in_domain(unit: &dyn Iommu, iova: u64) -> Option<u64> {
    let d = (0..64u16)
        .map(DomainHandle)
        .find(|&h| unit.domain_geometry(h).is_ok())?;
    unit.query(d, Iova::new(iova)).map(|m| m.pa.get())
}

/// Whether the record and both units' domains agree at `iova`.
fn agree(r: &Rig<'_, '_>, ctx: &IoasidCtx<'_, '_, Arena>, io: IoasidId, iova: u64) -> bool {
    let record = ctx
        .translate(io, Iova::new(iova))
        .unwrap()
        .map(|m| m.pa.get());
    in_domain(r.vtd, iova) == record && in_domain(r.smmu, iova) == record
}

#[test]
fn an_unmap_whose_flush_fails_unmaps_everywhere_and_a_retry_reissues_the_invalidation() {
    for stall in [Stall::Vtd, Stall::Smmu] {
        with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
            let (ctx, io) = two_unit_ioasid(r);
            // Two pages in one 2 MiB region: unmapping the region unlinks a leaf table in the
            // record and in each domain.
            for p in 0..2 {
                let (iova, pa) = (0x20_0000 + p * K4, 0x5000_0000 + p * K4);
                ctx.map(io, Iova::new(iova), PhysAddr::new(pa), K4, RW)
                    .unwrap();
                assert!(r.vtd_read(RID_A, None, iova).is_some());
                assert!(r.smmu_read(SID_A, None, iova).is_some());
            }
            let live = r.live();
            stall.arm(r);
            let e = ctx.unmap(io, Iova::new(0x20_0000), M2);
            assert!(e.is_err(), "{stall:?}: {e:?}");
            assert!(
                agree(r, &ctx, io, 0x20_0000),
                "{stall:?}: record and domains differ"
            );
            assert!(
                matches!(e, Err(Error::InvalidationPending { unit, .. }) if unit == stall.unit()),
                "{stall:?}: {e:?}"
            );
            ctx.audit(io).unwrap();
            // The table page the stalled unit's unmap unlinked is kept until it confirms; the
            // record's and the other unit's went back.
            assert_eq!(r.live(), live - 2, "{stall:?}");
            clear(r);
            r.drain();
            let before = stall.completions(r);
            // The retry reissues the invalidation before it finds nothing left to unmap.
            assert_eq!(ctx.unmap(io, Iova::new(0x20_0000), M2), Ok(0), "{stall:?}");
            assert!(stall.completions(r) > before, "{stall:?}: nothing reissued");
            assert_eq!(r.live(), live - 3, "{stall:?}");
            for p in 0..2 {
                assert_eq!(r.vtd_read(RID_A, None, 0x20_0000 + p * K4), None);
                assert_eq!(r.smmu_read(SID_A, None, 0x20_0000 + p * K4), None);
            }
            ctx.audit(io).unwrap();
            r.drain();
        });
    }
}

/// A VT-d unit in caching mode: every map is followed by an IOTLB invalidation and a wait.
fn caching_mode() -> VtdSetup {
    VtdSetup {
        model: VtdModelConfig::qemu_default()
            .with_sc(true)
            .with_caching_mode(true),
        mode: Mode::Legacy,
    }
}

#[test]
fn a_map_failing_after_the_unit_wrote_it_is_undone_in_that_unit_too() {
    with_rig(caching_mode(), SmmuSetup::qemu(true), |r| {
        let (ctx, io) = two_unit_ioasid(r);
        // The VT-d unit writes the entries, then its caching-mode invalidation stalls.
        r.vm.inject(vtd::Injection::StallWaits);
        let e = ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW);
        assert!(e.is_err(), "{e:?}");
        assert!(agree(r, &ctx, io, 0x1000), "record and domains differ");
        assert_eq!(
            in_domain(r.vtd, 0x1000),
            None,
            "the failed map stayed in the unit"
        );
        ctx.audit(io).unwrap();
        clear(r);
        r.drain();
        // A retry completes it.
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x5000_0000, true)));
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x5000_0000, true)));
        ctx.audit(io).unwrap();
        r.drain();
    });
}

#[test]
fn dropping_a_context_whose_detach_fails_strands_the_device_and_frees_nothing_it_reaches() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        // Two regions: the second is never read before the drop, so reading it afterwards
        // walks the tables in memory rather than a cached translation.
        for iova in [0x1000, 1 << 30] {
            ctx.map(io, Iova::new(iova), PhysAddr::new(0x5000_0000), K4, RW)
                .unwrap();
        }
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x5000_0000, true)));
        r.vm.inject(vtd::Injection::StallWaits);
        drop(ctx);
        // The VT-d detach cleared the context entry but never saw its invalidation complete:
        // caches may still lead to the domain, which stays, tables and all.
        assert_eq!(r.vtd_domains(), 1);
        assert_eq!(in_domain(r.vtd, 1 << 30), Some(0x5000_0000));
        // The device stays claimed: no context can bind it and reach that domain's memory.
        let next = IoasidCtx::new(r.reg, r.arena, 0);
        assert_eq!(next.bind(vtd_dev(RID_A), false), Err(Error::Busy));
        assert!(r.reg.is_stranded(vtd_dev(RID_A)));
        let mut stranded = Vec::new();
        r.reg.stranded(|l| stranded.push(l));
        assert_eq!(stranded, [vtd_dev(RID_A)]);
        assert_eq!(
            r.reg.leaked(),
            Leaked {
                devices: 1,
                domains: 1,
                table_pages: 0
            }
        );
        // The SMMUv3 side was torn down and its device released.
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), None);
        assert_eq!(r.smmu_domains(), 0);
        next.bind(smmu_dev(SID_A), false).unwrap();
        // Recovery: the unit works again, the embedder blocks the device itself, then lets
        // it be bound again.
        clear(r);
        r.drain();
        r.vtd.detach(DeviceId(RID_A), None).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, 1 << 30), None);
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), None);
        assert!(r.reg.release_stranded(vtd_dev(RID_A)));
        next.bind(vtd_dev(RID_A), false).unwrap();
        r.drain();
    });
}

/// Review of issue 14: a map whose rollback could not be confirmed (the unit's own undo already
/// cleared the entries, so the layer's gather is empty; the unit owes the invalidation inside)
/// still leaves the domain owing in the layer: a later map first flushes it, and returns `Ok`
/// only once the unit owes nothing.
#[test]
fn an_unconfirmed_rollback_with_an_empty_gather_is_still_owed() {
    let v = VtdSetup {
        model: VtdModelConfig::qemu_default().with_sc(true).with_rwbf(true),
        mode: Mode::Legacy,
    };
    with_rig(v, SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let d = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(d, io).unwrap();
        r.vm.inject(vtd::Injection::StallWriteBufferFlush);
        r.vm.inject(vtd::Injection::StallWaits);
        let e = ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW);
        assert!(matches!(e, Err(Error::InvalidationPending { .. })), "{e:?}");
        r.vm.clear_injections();
        r.drain();
        ctx.map(io, Iova::new(0x8000), PhysAddr::new(0x6000_0000), K4, RW)
            .unwrap();
        let rep = r.vtd.audit().unwrap();
        assert_eq!(
            rep.owing, 0,
            "a map returned Ok while the unit still owes the undone mapping's invalidation"
        );
    });
}

/// An attach that builds a domain, fails to fill it (under caching mode the map's invalidation
/// stalls) and then fails to free it (its DID invalidation stalls too) must not lose the
/// domain: it is parked and freed by a later call once the unit answers, or counted as leaked
/// when the context goes; never forgotten while the unit holds it.
#[test]
fn a_domain_whose_fill_and_free_both_fail_is_freed_later() {
    let caching = VtdSetup {
        model: VtdModelConfig::qemu_default().with_caching_mode(true),
        mode: Mode::Legacy,
    };
    for later in ["attach", "drop"] {
        with_rig(caching, SmmuSetup::qemu(true), |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 0);
            let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
            let io = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.map(io, Iova::new(0x3000), PhysAddr::new(0x7000), K4, RW)
                .unwrap();
            r.vm.inject(vtd::Injection::StallWaits);
            let e = ctx.attach(v, io);
            assert!(
                matches!(e, Err(Error::Iommu(_) | Error::InvalidationPending { .. })),
                "{e:?}"
            );
            r.vm.clear_injections();
            assert_eq!(r.vtd_read(RID_A, None, 0x3000), None);
            ctx.audit(io).unwrap();
            r.vtd.audit().unwrap();
            if later == "attach" {
                // The next configuration call frees the parked domain, then attaches.
                ctx.attach(v, io).unwrap();
                assert_eq!(
                    r.vtd_domains(),
                    1,
                    "{later}: the parked domain is still there"
                );
                ctx.detach(v).unwrap();
            }
            drop(ctx);
            r.drain();
            assert_eq!(
                (r.vtd_domains(), r.reg.leaked()),
                (0, Leaked::default()),
                "{later}: a domain was left on the unit"
            );
        });
    }
}

/// An attach whose unit made the device's entry present and then could not confirm it
/// (caching mode: an invalidation queue error in the invalidations that follow the entry's
/// publication) keeps the attachment: the books say attached, unsettled; the device's direct
/// region stays mapped one-to-one and the domain stays; attaching the device elsewhere is
/// refused; a detach then tears it down in order, and the context's drop returns every page.
/// Before, the attach unmapped the region while the entry reached the domain, and forgot the
/// attachment (detach said `NotAttached`).
#[test]
fn an_unconfirmed_attach_keeps_its_domain_and_direct_region_until_detach() {
    let mut v = VtdSetup::scalable();
    v.model = v.model.with_caching_mode(true);
    let region = iommu_engine::pgtable::IovaRange {
        start: Iova::new(0x80_0000),
        end: Iova::new(0x80_2000),
    };
    let mut present = 0;
    for at in 1..=8 {
        with_rig(v, SmmuSetup::qemu(true), |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 0);
            let direct = iommu_engine::ioasid::DirectRegion::new(region, false).unwrap();
            let d = ctx
                .bind_with_direct(vtd_dev(RID_B), false, None, &[direct])
                .unwrap();
            let io = ctx.alloc(IoasidFlags::empty()).unwrap();
            let other = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
                .unwrap();
            r.vm.inject(vtd::Injection::QueueErrorAt(at));
            let e = match ctx.attach(d, io) {
                Err(Error::Iommu(e)) if e.is_unit_fault() => e,
                _ => return,
            };
            let reaches = |iova| {
                r.vm.translate_in_memory(
                    RID_B as u16,
                    None,
                    iova,
                    iommu_engine::sim::walk::Access::READ,
                )
            };
            if reaches(0x1000).is_none() {
                return;
            }
            present += 1;
            let att = ctx.attachment(d, None).unwrap();
            assert_eq!(
                att.map(|a| (a.ioasid, a.unsettled)),
                Some((io, Some(None))),
                "QueueErrorAt({at}), {e:?}: the books forgot an entry the unit made present"
            );
            for iova in [0x80_0000, 0x80_1000] {
                assert_eq!(
                    reaches(iova),
                    Some(iova),
                    "the direct region was given back"
                );
            }
            assert_eq!(ctx.attach(d, other), Err(Error::Busy));
            assert_eq!(ctx.free(io), Err(Error::Busy));
            r.vm.clear_injections();
            r.drain();
            ctx.detach(d).unwrap();
            assert_eq!(reaches(0x1000), None);
            assert_eq!(ctx.attachment(d, None), Ok(None));
            assert!(ctx.direct_mappings(io).unwrap().iter().all(Option::is_none));
            let report = r.vtd.audit().unwrap();
            assert_eq!((report.unsettled, report.owing), (0, 0));
            drop(ctx);
            assert_eq!(r.reg.leaked(), Leaked::default());
            assert_eq!(r.vtd_domains(), 0);
        });
    }
    assert!(present > 0, "no fault left the entry present");
}
