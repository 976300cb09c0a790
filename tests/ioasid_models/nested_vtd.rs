//! Nested translation on VT-d from the IOASID layer (issue 17, item 1, VT-d half): a child
//! IOASID holding a guest's first stage (iommufd `IOMMU_HWPT_DATA_VTD_S1`) over a NEST_PARENT
//! IOASID's second stage, devices and PASIDs attached to it (PASID entry PGTT = 011b), DMA
//! through both stages on the VT-d model, and the guest's invalidations (iommufd
//! `struct iommu_hwpt_vtd_s1_invalidate`) turned into PASID-based IOTLB and device-TLB
//! invalidations under the child's own domain ID. Named after the iommufd behaviour each
//! matches.

use iommu_engine::ioasid::{Error, IoasidCtx, IoasidFlags, IoasidId};
use iommu_engine::iommu::{
    self, DeviceHints, Missing, Refusal, UserStage1, VtdS1Invalidate, VTD_INV_FLAGS_LEAF,
    VTD_S1_EAFE, VTD_S1_SRE, VTD_S1_WPE,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::sim::vtd::VtdModelConfig;
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::Arena;
use iommu_engine::vtd::Mode;

use crate::guest::*;
use crate::rig::*;

/// First-stage entry bits (x86-64 4-level paging, VT-d §9.7): P, R/W, U/S, A.
const FS_TABLE: u64 = 0x27;
/// A leaf: P, R/W, U/S, A, D.
const FS_LEAF: u64 = 0x67;

/// The guest's 4-level first-stage tables at GPA pages 0-3 (PML4, PDPT, PD, PT) mapping IOVA
/// to its data page 4; pages 4 and 5 are data.
fn guest_vtd_tables(g: &GuestRam<'_>) {
    guest_vtd_tables_to(g, g.gpa(4));
}

/// The same tables at `g`'s pages 0-3, mapping IOVA to guest-physical `data`.
fn guest_vtd_tables_to(g: &GuestRam<'_>, data: u64) {
    let idx = |shift: u32| ((IOVA >> shift) & 0x1ff) * 8;
    g.write(0, idx(39), g.gpa(1) | FS_TABLE);
    g.write(1, idx(30), g.gpa(2) | FS_TABLE);
    g.write(2, idx(21), g.gpa(3) | FS_TABLE);
    g.write(3, idx(12), data | FS_LEAF);
}

/// The guest points IOVA at its data page `n`.
fn guest_leaf(g: &GuestRam<'_>, n: usize) {
    g.write(3, ((IOVA >> 12) & 0x1ff) * 8, g.gpa(n) | FS_LEAF);
}

fn guest_s1(g: &GuestRam<'_>) -> UserStage1 {
    UserStage1::Vtd {
        flags: 0,
        pgtbl_addr: g.gpa(0),
        addr_width: 48,
    }
}

fn inv(addr: u64, npages: u64) -> VtdS1Invalidate {
    VtdS1Invalidate {
        addr,
        npages,
        flags: VTD_INV_FLAGS_LEAF,
        reserved: 0,
    }
}

/// PASID-based IOTLB invalidate descriptors (type 6) in the model's log: (DID, PASID).
fn piotlb(r: &Rig<'_, '_>) -> Vec<(u64, u64)> {
    r.vm.descriptor_log()
        .iter()
        .filter(|d| d[0] & 0xf == 6)
        .map(|d| (d[0] >> 16 & 0xffff, d[0] >> 32 & 0xf_ffff))
        .collect()
}

/// The scalable VT-d rig, a 6-page guest with its first-stage tables (IOVA -> page 4), a
/// context with `pasid_quota` PASIDs, a parent mapping the guest and a child over it holding
/// the guest's first stage; `f` runs, then the context goes and no VT-d domain may be left.
fn with_guest(
    pasid_quota: u32,
    f: impl FnOnce(&Rig<'_, '_>, &GuestRam<'_>, &IoasidCtx<'_, '_, Arena>, IoasidId, IoasidId),
) {
    with_rig(VtdSetup::scalable(), SmmuSetup::qemu(false), |r| {
        let g = GuestRam::new(r.arena, 6);
        let ctx = IoasidCtx::new(r.reg, r.arena, pasid_quota);
        guest_vtd_tables(&g);
        let (parent, child) = parent_and_child(&ctx, &g, guest_s1(&g));
        f(r, &g, &ctx, parent, child);
        drop(ctx);
        assert_eq!(r.vtd_domains(), 0);
    });
}

#[test]
fn hwpt_alloc_nested_over_nest_parent_vtd() {
    with_guest(4, |r, g, ctx, parent, child| {
        assert_eq!(
            ctx.map(child, Iova::new(IOVA), PhysAddr::new(g.pa(4)), K4, RW),
            Err(Error::UserOwned(child))
        );
        assert_eq!(ctx.free(parent), Err(Error::Busy));
        let dev = ctx.bind(vtd_dev(RID_A), false).unwrap();
        ctx.attach(dev, child).unwrap();
        // DMA through both stages: IOVA -> guest first stage -> GPA page 4 -> parent -> PA.
        assert_eq!(
            r.vtd_read(RID_A, None, IOVA + 0x18),
            Some((g.pa(4) + 0x18, false))
        );
        // The parent alone, for a device attached to it.
        let other = ctx.bind(vtd_dev(RID_B), false).unwrap();
        ctx.attach(other, parent).unwrap();
        assert_eq!(r.vtd_read(RID_B, None, g.gpa(4)), Some((g.pa(4), false)));
        // An IOVA the guest did not map faults (first stage); a guest entry pointing at a
        // GPA the parent does not map faults too (second stage): no host memory beyond it.
        assert_eq!(r.vtd_read(RID_A, None, IOVA + 0x20_0000), None);
        g.write(3, ((IOVA >> 12) & 0x1ff) * 8 + 8, 0x7000_0000 | FS_LEAF);
        assert_eq!(r.vtd_read(RID_A, None, IOVA + 0x1000), None);
        r.drain();

        // A PASID of the device attached to the child: the guest's PASID address space.
        let p = ctx.alloc_pasid().unwrap();
        ctx.attach_pasid(dev, p, child).unwrap();
        assert_eq!(
            r.vtd_read(RID_A, Some(p.get()), IOVA),
            Some((g.pa(4), false))
        );
        ctx.detach_pasid(dev, p).unwrap();
        assert_eq!(r.vtd_read(RID_A, Some(p.get()), IOVA), None);

        // Replace: the device moves to the parent and back, its entry rebuilt each time.
        ctx.attach(dev, parent).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, g.gpa(5)), Some((g.pa(5), false)));
        ctx.attach(dev, child).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));
        assert_eq!(r.vtd.audit().map(|a| a.attachments), Ok(2));

        ctx.detach(dev).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, IOVA), None);
        ctx.detach(other).unwrap();
        r.drain();
        ctx.free(child).unwrap();
        ctx.free(parent).unwrap();
    });
}

/// The child's PASID entries carry a domain ID of their own: two guests' first stages over one
/// parent, each on its device's RID_PASID, never serve each other's translations.
#[test]
fn hwpt_alloc_nested_children_do_not_share_a_domain_id() {
    with_rig(VtdSetup::scalable(), SmmuSetup::qemu(false), |r| {
        let g = GuestRam::new(r.arena, 6);
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        guest_vtd_tables(&g);
        let (parent, a) = parent_and_child(&ctx, &g, guest_s1(&g));
        // The second guest's table (its own pages at GPA 0x2000_0000, which the parent maps
        // too): a copy of the first pointing IOVA at page 5.
        let gb = GuestRam::at(r.arena, 4, 0x2000_0000);
        gb.map_into(&ctx, parent);
        guest_vtd_tables_to(&gb, g.gpa(5));
        let b = ctx.alloc_nested(parent, guest_s1(&gb)).unwrap();
        let da = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let db = ctx.bind(vtd_dev(RID_B), false).unwrap();
        ctx.attach(da, a).unwrap();
        ctx.attach(db, b).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));
        assert_eq!(r.vtd_read(RID_B, None, IOVA), Some((g.pa(5), false)));
        // Both cached now: each still reads its own.
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));
        drop(ctx);
        drop(gb);
        assert_eq!(r.vtd_domains(), 0);
    });
}

#[test]
fn hwpt_invalidate_vtd_is_needed_and_sufficient() {
    with_guest(4, |r, g, ctx, parent, child| {
        let dev = ctx.bind(vtd_dev(RID_A), false).unwrap();
        // Another device of the context, attached to the parent only: no invalidation of the
        // child's reaches it, and it is not counted among the child's.
        let other = ctx.bind(vtd_dev(RID_B), false).unwrap();
        ctx.attach(other, parent).unwrap();
        ctx.attach(dev, child).unwrap();
        let p = ctx.alloc_pasid().unwrap();
        ctx.attach_pasid(dev, p, child).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));
        assert_eq!(
            r.vtd_read(RID_A, Some(p.get()), IOVA),
            Some((g.pa(4), false))
        );
        // The guest moves IOVA to its page 5: the unit still translates from its IOTLB.
        guest_leaf(g, 5);
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));

        // Refused entries: nothing of the batch issued, the index of the first one reported.
        r.vm.reset_stats();
        let good = inv(IOVA, 1);
        let cases = [
            (inv(IOVA + 0x800, 1), Refusal::Misaligned),
            (inv(0x1000, u64::MAX), Refusal::Misaligned),
            (inv(1 << 48, 1), Refusal::OutOfWidth),
            (inv((1 << 48) - 0x1000, 2), Refusal::OutOfWidth),
            (VtdS1Invalidate { flags: 2, ..good }, Refusal::ReservedBits),
            (
                VtdS1Invalidate {
                    reserved: 1,
                    ..good
                },
                Refusal::ReservedBits,
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(
                ctx.invalidate_user_vtd(child, &[good, good, bad]),
                refused(2, [bad.addr, bad.npages], why)
            );
        }
        assert_eq!(r.vm.descriptor_log().len(), 0);
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));

        // Passed through: one PASID-based IOTLB invalidation per attached PASID (RID_PASID
        // and p), under the child's domain ID (not the parent's), and one wait.
        assert_eq!(ctx.invalidate_user_vtd(child, &[good]), Ok(1));
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(5), false)));
        assert_eq!(
            r.vtd_read(RID_A, Some(p.get()), IOVA),
            Some((g.pa(5), false))
        );
        let log = piotlb(r);
        assert_eq!(log.len(), 2);
        let did = log[0].0;
        assert_eq!(log, [(did, 0), (did, u64::from(p.get()))]);
        assert_eq!(r.vm.stats().piotlb_page, 2);
        assert_eq!(r.vm.stats().wait, 1);
        assert_eq!(r.vm.stats().iotlb_domain + r.vm.stats().iotlb_page, 0);
        // Everything (addr 0, npages u64::MAX): PASID-selective.
        guest_leaf(g, 4);
        r.vm.reset_stats();
        assert_eq!(
            ctx.invalidate_user_vtd(
                child,
                &[VtdS1Invalidate {
                    flags: 0,
                    ..inv(0, u64::MAX)
                }]
            ),
            Ok(1)
        );
        assert_eq!((r.vm.stats().piotlb_pasid, r.vm.stats().wait), (2, 1));
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));

        // Not a child.
        assert_eq!(
            ctx.invalidate_user_vtd(parent, &[good]),
            Err(Error::NotNested(parent))
        );
    });
}

/// A change of the parent's second stage reaches the child's cached nested translations (the
/// parent's flush invalidates the child's domain ID) and the ATS device's TLB whole.
#[test]
fn hwpt_nest_parent_unmap_invalidates_nested_children() {
    with_guest(0, |r, g, ctx, parent, child| {
        let hints = DeviceHints {
            ats: true,
            ..DeviceHints::default()
        };
        let dev = ctx.bind_with(vtd_dev(RID_A), false, hints).unwrap();
        ctx.attach(dev, child).unwrap();
        let ats = |iova| {
            r.vm.ats_translate(RID_A as u16, None, iova, Access::READ)
                .map(|t| t.pa)
        };
        assert_eq!(ats(IOVA), Ok(g.pa(4)));
        assert!(r.vm.atc_holds(RID_A as u16, None, IOVA));
        // The guest moves its page: its invalidation reaches the device's ATC as well (one
        // PASID-based IOTLB and one device-TLB invalidation of the page, one wait).
        guest_leaf(g, 5);
        r.vm.reset_stats();
        assert_eq!(ctx.invalidate_user_vtd(child, &[inv(IOVA, 1)]), Ok(1));
        assert!(!r.vm.atc_holds(RID_A as u16, None, IOVA));
        let st = r.vm.stats();
        assert_eq!((st.piotlb_page, st.device_tlb, st.wait), (1, 1, 1));
        assert_eq!(ats(IOVA), Ok(g.pa(5)));
        guest_leaf(g, 4);
        assert_eq!(ctx.invalidate_user_vtd(child, &[inv(0, u64::MAX)]), Ok(1));
        assert_eq!(ats(IOVA), Ok(g.pa(4)));
        r.vm.reset_stats();
        // The host takes the guest's data page away.
        ctx.unmap(parent, Iova::new(g.gpa(4)), K4).unwrap();
        assert_eq!(r.vtd_read(RID_A, None, IOVA), None);
        assert!(!r.vm.atc_holds(RID_A as u16, None, IOVA));
        // The child's domain-selective IOTLB invalidation and the device's whole TLB.
        assert_eq!(r.vm.stats().device_tlb, 1);
        assert!(r.vm.stats().iotlb_domain >= 1);
        r.drain();
    });
}

#[test]
fn hwpt_alloc_nested_vtd_refuses_bad_guest_fields() {
    let no_srs = VtdSetup {
        model: VtdModelConfig::scalable().with_srs(false),
        mode: Mode::Scalable,
    };
    with_rig(no_srs, SmmuSetup::qemu(false), |r| {
        let g = GuestRam::new(r.arena, 4);
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let parent = parent(&ctx, &g, IoasidFlags::empty());
        let dev = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s1 = |flags, pgtbl_addr, addr_width| UserStage1::Vtd {
            flags,
            pgtbl_addr,
            addr_width,
        };
        let invalid = |what: &'static str, value: u64| {
            move |e: Error| match e {
                Error::Iommu(iommu::Error::InvalidArgument { what: w, value: v }) => {
                    w.contains(what) && v == value
                }
                _ => false,
            }
        };
        // Each refused when a device is attached (the unit checks the guest's fields), and
        // nothing attached after it.
        let attach = |s| {
            let child = ctx.alloc_nested(parent, s).unwrap();
            let e = ctx.attach(dev, child);
            assert_eq!(r.vtd.audit().map(|a| a.attachments), Ok(0));
            ctx.free(child).unwrap();
            e.unwrap_err()
        };
        let gpa = g.gpa(0);
        assert!(invalid("flags", 1 << 3)(attach(s1(1 << 3, gpa, 48))));
        assert!(invalid("addr_width", 39)(attach(s1(0, gpa, 39))));
        assert!(invalid("pgtbl_addr", gpa + 8)(attach(s1(0, gpa + 8, 48))));
        assert!(invalid("pgtbl_addr", 1 << 52)(attach(s1(0, 1 << 52, 48))));
        // 5-level without CAP.FL5LP, SRE without ECAP.SRS.
        let e = attach(s1(0, gpa, 57));
        let want = format!("{:?}", Missing::AddressWidth { need: 57, have: 48 });
        assert!(format!("{e:?}").contains(&want), "{e:?}");
        let e = attach(s1(VTD_S1_SRE, gpa, 48));
        let want = format!("{:?}", Missing::SupervisorRequests);
        assert!(format!("{e:?}").contains(&want), "{e:?}");
        // EAFE without ECAP.EAFS (the model has none).
        let e = attach(s1(VTD_S1_EAFE, gpa, 48));
        assert!(format!("{e:?}").contains("EAFS"), "{e:?}");
        // WPE alone is the guest's to set.
        guest_vtd_tables_at(&g);
        let child = ctx.alloc_nested(parent, s1(VTD_S1_WPE, gpa, 48)).unwrap();
        ctx.attach(dev, child).unwrap();
        ctx.detach(dev).unwrap();
        r.drain();
        drop(ctx);
        assert_eq!(r.vtd_domains(), 0);
    });
}

/// Tables for the 4-page guest of the refusal test (no data page needed).
fn guest_vtd_tables_at(g: &GuestRam<'_>) {
    let idx = |shift: u32| ((IOVA >> shift) & 0x1ff) * 8;
    g.write(0, idx(39), g.gpa(1) | FS_TABLE);
}

/// iommufd `IOMMU_HWPT_SET_DIRTY_TRACKING` on a nest parent: `SSADE` lives in the PASID entry
/// that holds `SSPTPTR`, which for a device behind a nested child is the child's nested entry,
/// so turning tracking off and on must reach it (and its cached translations) too: a guest
/// DMA write through the child is recorded in the parent's second stage only while tracking
/// is on.
#[test]
fn hwpt_set_dirty_tracking_on_nest_parent_reaches_nested_children() {
    let mut v = VtdSetup::scalable();
    // ECAP.SMPWCS (bit 48): snooped page walks, which VT-d dirty tracking needs.
    v.model.ecap |= 1 << 48;
    with_rig(v, SmmuSetup::qemu(false), |r| {
        let g = GuestRam::new(r.arena, 6);
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        guest_vtd_tables(&g);
        let parent = parent(&ctx, &g, IoasidFlags::DIRTY_TRACKING);
        let child = ctx.alloc_nested(parent, guest_s1(&g)).unwrap();
        let dev = ctx.bind(vtd_dev(RID_A), false).unwrap();
        ctx.attach(dev, child).unwrap();
        let write = || {
            r.vm.translate(RID_A as u16, None, IOVA, Access::WRITE)
                .map(|t| t.pa)
        };
        let dirty = || {
            let mut got = Vec::new();
            ctx.read_and_clear_dirty(parent, Iova::new(GUEST_BASE), 6 * K4, &mut |iova, _| {
                got.push(iova.get())
            })
            .unwrap();
            got
        };
        // On from allocation: the guest's write lands in page 4 and is recorded there.
        assert_eq!(dirty(), Vec::<u64>::new());
        assert_eq!(write(), Ok(g.pa(4)));
        assert_eq!(dirty(), [g.gpa(4)]);
        // Off: the same write (its translation cached before) records nothing.
        ctx.set_dirty_tracking(parent, false).unwrap();
        assert_eq!(write(), Ok(g.pa(4)));
        ctx.set_dirty_tracking(parent, true).unwrap();
        assert_eq!(dirty(), Vec::<u64>::new());
        // On again: recorded again, through a translation cached while it was off.
        assert_eq!(write(), Ok(g.pa(4)));
        assert_eq!(dirty(), [g.gpa(4)]);
        ctx.set_dirty_tracking(parent, false).unwrap();
        assert_eq!(write(), Ok(g.pa(4)));
        ctx.set_dirty_tracking(parent, true).unwrap();
        assert_eq!(dirty(), Vec::<u64>::new());
        drop(ctx);
        assert_eq!(r.vtd_domains(), 0);
    });
}

/// What the child does not own stays out of reach: a PASID of another context cannot be
/// attached to it, nor a PASID of a device that has none; a guest's invalidation reaches only
/// the child's own domain ID and PASIDs, never another context's nested child on the same
/// unit (its cached translation survives).
#[test]
fn hwpt_nested_vtd_refuses_foreign_pasid_and_device() {
    with_rig(VtdSetup::scalable(), SmmuSetup::qemu(false), |r| {
        let g = GuestRam::new(r.arena, 6);
        guest_vtd_tables(&g);
        let a = IoasidCtx::new(r.reg, r.arena, 1);
        let b = IoasidCtx::new(r.reg, r.arena, 1);
        let (_, child_a) = parent_and_child(&a, &g, guest_s1(&g));
        let (_, child_b) = parent_and_child(&b, &g, guest_s1(&g));
        let dev_a = a.bind(vtd_dev(RID_A), false).unwrap();
        let dev_b = b.bind(vtd_dev(RID_B), false).unwrap();
        a.attach(dev_a, child_a).unwrap();
        b.attach(dev_b, child_b).unwrap();
        let q = b.alloc_pasid().unwrap();
        assert_eq!(
            a.attach_pasid(dev_a, q, child_a),
            Err(Error::PasidNotOwned(q))
        );
        let no_pasid = DeviceHints {
            pasid_bits: Some(0),
            ..DeviceHints::default()
        };
        let dev_c = a.bind_with(vtd_dev(0x30), false, no_pasid).unwrap();
        let p = a.alloc_pasid().unwrap();
        assert!(matches!(
            a.attach_pasid(dev_c, p, child_a),
            Err(Error::Incompatible { .. })
        ));
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(4), false)));
        assert_eq!(r.vtd_read(RID_B, None, IOVA), Some((g.pa(4), false)));
        // Both guests move IOVA; only a's invalidation passes.
        guest_leaf(&g, 5);
        r.vm.reset_stats();
        assert_eq!(a.invalidate_user_vtd(child_a, &[inv(IOVA, 1)]), Ok(1));
        let log = piotlb(r);
        assert_eq!(log.len(), 1);
        assert_eq!(r.vtd_read(RID_A, None, IOVA), Some((g.pa(5), false)));
        // b's child has its own domain ID: a's invalidation did not reach its cache.
        assert_eq!(r.vtd_read(RID_B, None, IOVA), Some((g.pa(4), false)));
        assert_eq!(b.invalidate_user_vtd(child_b, &[inv(IOVA, 1)]), Ok(1));
        let log_b = piotlb(r);
        assert_eq!(log_b.len(), 2);
        assert_ne!(log_b[1].0, log_b[0].0);
        assert_eq!(r.vtd_read(RID_B, None, IOVA), Some((g.pa(5), false)));
        drop(a);
        drop(b);
        assert_eq!(r.vtd_domains(), 0);
    });
}
