//! I/O page faults through the IOASID layer as iommufd's fault queue gives them to a VMM
//! (`IOMMU_FAULT_QUEUE_ALLOC`, read, `struct iommu_hwpt_page_response`; issue 17 item 8): a
//! device's page request on the VT-d model's page request queue, and on the SMMUv3 model's PRI
//! queue or a stalled transaction, reaches the context's queue, and the answer reaches the
//! device, which retries. Tests are named after the iommufd behaviour they match.

use iommu_engine::ioasid::{
    dispatch_page_faults, DeviceHandle, Error, IoasidCtx, IoasidFlags, IoasidId, MAX_FAULTS,
};
use iommu_engine::iommu::{DeviceId, Iommu};
use iommu_engine::iopf::{FaultCookie, FaultError, FaultKind, FaultPerm, ResponseCode};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::vtd::prq::{PageRequest, PageRequestOutcome};
use iommu_engine::sim::vtd::{self, VtdModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::vtd::Mode;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

fn prs() -> VtdSetup {
    VtdSetup {
        model: VtdModelConfig::scalable().with_prs(true),
        mode: Mode::Scalable,
    }
}

fn request(sid: u32, addr: u64, group: u16, last: bool) -> PageRequest {
    PageRequest {
        sid: sid as u16,
        pasid: None,
        addr,
        access: Access::WRITE,
        group,
        last,
    }
}

/// A context with RID_A bound and attached to a new IOASID, its fault queue open.
fn attached<'a>(r: &Rig<'a, '_>) -> (IoasidCtx<'a, 'a, Arena>, DeviceHandle, IoasidId) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    ctx.fault_queue_alloc();
    let dev = ctx.bind(vtd_dev(RID_A), false).unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    (ctx, dev, io)
}

#[test]
fn fault_queue_reports_page_request_and_accepts_response() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, io) = attached(r);
        // Two pages of one group: the group is read once its last request arrived.
        assert_eq!(
            r.vm.page_request(request(RID_A, 0x5000, 3, false)),
            PageRequestOutcome::Queued
        );
        let d = dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        assert_eq!((d.queued, d.refused), (1, 0));
        let mut out = no_faults::<8>();
        assert_eq!(ctx.read_faults(&mut out), 0, "group incomplete");
        assert_eq!(
            r.vm.page_request(request(RID_A, 0x6000, 3, true)),
            PageRequestOutcome::Queued
        );
        assert_eq!(dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap().queued, 1);
        assert_eq!(ctx.read_faults(&mut out), 2);
        let cookie = out[0].cookie;
        assert_eq!(out[1].cookie, cookie, "one cookie per group");
        assert_eq!((out[0].fault.addr, out[1].fault.addr), (0x5000, 0x6000));
        assert_eq!(out[0].fault.perm, FaultPerm::WRITE);
        assert_eq!(
            out[1].fault.kind,
            FaultKind::PageRequest {
                group: 3,
                last: true
            }
        );
        // The VMM makes the pages present, then answers.
        ctx.map(
            io,
            Iova::new(0x5000),
            PhysAddr::new(0x7000_0000),
            2 * K4,
            RW,
        )
        .unwrap();
        ctx.respond_fault(cookie, ResponseCode::Success).unwrap();
        let responses = r.vm.page_responses();
        assert_eq!(responses.len(), 1);
        assert_eq!(
            (responses[0].sid, responses[0].group, responses[0].code),
            (RID_A as u16, 3, 0)
        );
        assert!(responses[0].expected && !responses[0].automatic);
        // The device retried both pages and they translate now.
        let retries = r.vm.page_retries();
        assert_eq!(retries.len(), 2);
        assert!(retries.iter().all(|t| t.result.is_ok()), "{retries:?}");
        assert_eq!(r.vm.outstanding_page_requests(), 0);
        // A second answer to the same group is refused (iommufd: -EINVAL).
        assert_eq!(
            ctx.respond_fault(cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(cookie)))
        );
        assert_eq!(r.vm.page_responses().len(), 1, "nothing more sent");
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn fault_response_to_unknown_cookie_refused() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        let other = IoasidCtx::new(r.reg, r.arena, 0);
        other.fault_queue_alloc();
        r.vm.page_request(request(RID_A, 0x5000, 1, true));
        dispatch_page_faults(VTD, r.vtd, &[&other, &ctx]).unwrap();
        let mut out = no_faults::<8>();
        assert_eq!(
            other.read_faults(&mut out),
            0,
            "not the other context's device"
        );
        assert_eq!(ctx.read_faults(&mut out), 1);
        let cookie = out[0].cookie;
        assert_eq!(
            other.respond_fault(cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOwned(cookie)))
        );
        let unknown = FaultCookie(cookie.0 + 1);
        assert_eq!(
            ctx.respond_fault(unknown, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(unknown)))
        );
        assert!(r.vm.page_responses().is_empty(), "refusals send nothing");
        ctx.respond_fault(cookie, ResponseCode::Invalid).unwrap();
        assert_eq!(r.vm.page_responses()[0].code, 1);
        assert!(r.vm.page_retries().is_empty(), "no retry after Invalid");
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn detach_answers_outstanding_faults() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        r.vm.page_request(request(RID_A, 0x5000, 1, true));
        dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        let mut out = no_faults::<8>();
        assert_eq!(ctx.read_faults(&mut out), 1, "read, not answered");
        r.vm.page_request(request(RID_A, 0x9000, 2, true));
        dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        assert_eq!(r.vm.outstanding_page_requests(), 2);
        ctx.detach(dev).unwrap();
        // Both groups, read or not, were answered Invalid before the device left.
        let responses = r.vm.page_responses();
        assert_eq!(responses.len(), 2);
        assert!(
            responses.iter().all(|g| g.code == 1 && g.expected),
            "{responses:?}"
        );
        assert_eq!(r.vm.outstanding_page_requests(), 0);
        assert_eq!(ctx.read_faults(&mut out), 0);
        assert_eq!(
            ctx.respond_fault(out[0].cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(out[0].cookie)))
        );
    })
}

/// Review finding F1: a page request the device raised before its detach, still in the unit's
/// page request queue when the device is attached in another context, must not reach that
/// context (iommufd drains the hardware queue of the old attachment on detach: VT-d
/// `intel_iommu_drain_pasid_prq`); it is answered Invalid.
#[test]
fn a_fault_raised_before_the_detach_never_reaches_the_next_owner() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (first, dev, _io) = attached(r);
        assert_eq!(
            r.vm.page_request(request(RID_A, 0x5000, 1, true)),
            PageRequestOutcome::Queued
        );
        // Not drained yet: the request waits in the page request queue.
        first.detach(dev).unwrap();
        first.unbind(dev).unwrap();
        let second = IoasidCtx::new(r.reg, r.arena, 0);
        second.fault_queue_alloc();
        let dev2 = second.bind(vtd_dev(RID_A), false).unwrap();
        let io2 = second.alloc(IoasidFlags::empty()).unwrap();
        second.attach(dev2, io2).unwrap();
        let d = dispatch_page_faults(VTD, r.vtd, &[&first, &second]).unwrap();
        let mut out = no_faults::<8>();
        assert_eq!(
            second.read_faults(&mut out),
            0,
            "the first owner's fault reached the second: {:?}",
            out[0]
        );
        assert_eq!((d.queued, d.refused, d.quarantined), (0, 1, 1));
        let responses = r.vm.page_responses();
        assert_eq!(responses.len(), 1);
        assert_eq!((responses[0].group, responses[0].code), (1, 1));
        assert_eq!(
            r.reg.quarantines(),
            0,
            "the drain passed the detach's fence"
        );
        // A request the device raises now is the second owner's.
        r.vm.page_request(request(RID_A, 0x6000, 2, true));
        let d = dispatch_page_faults(VTD, r.vtd, &[&first, &second]).unwrap();
        assert_eq!((d.queued, d.refused), (1, 0));
        assert_eq!(second.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.addr, 0x6000);
        second.detach(dev2).unwrap();
    })
}

/// With `ECAP.PDS` the detach's fence first asks the unit to drain the page requests it
/// received (an invalidation wait with `PD`), so requests still in flight are fenced too.
#[test]
fn a_detach_drains_the_page_requests_in_flight_with_pds() {
    let setup = VtdSetup {
        model: VtdModelConfig::scalable().with_prs(true).with_pds(true),
        mode: Mode::Scalable,
    };
    with_rig(setup, SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (first, dev, _io) = attached(r);
        r.vm.page_request(request(RID_A, 0x5000, 1, true));
        let pd_waits = |r: &Rig<'_, '_>| {
            r.vm.descriptor_log()
                .iter()
                .filter(|d| d[0] & 0xf == 0x5 && d[0] & 1 << 7 != 0)
                .count()
        };
        assert_eq!(pd_waits(r), 0);
        first.detach(dev).unwrap();
        assert_eq!(pd_waits(r), 1, "one page-request drain");
        assert_eq!(r.reg.quarantines(), 1);
        first
            .attach(dev, first.alloc(IoasidFlags::empty()).unwrap())
            .unwrap();
        let d = dispatch_page_faults(VTD, r.vtd, &[&first]).unwrap();
        assert_eq!((d.queued, d.quarantined), (0, 1));
        assert_eq!(r.reg.quarantines(), 0);
        first.detach(dev).unwrap();
    })
}

#[test]
fn fault_of_a_device_no_context_attached_is_answered_invalid() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        let closed = IoasidCtx::new(r.reg, r.arena, 0);
        let b = closed.bind(vtd_dev(RID_B), false).unwrap();
        let io = closed.alloc(IoasidFlags::empty()).unwrap();
        closed.attach(b, io).unwrap();
        // RID_B's context never opened its queue; 0x30 is bound nowhere.
        r.vm.page_request(request(RID_B, 0x5000, 1, true));
        r.vm.page_request(request(0x30, 0x5000, 2, true));
        let d = dispatch_page_faults(VTD, r.vtd, &[&ctx, &closed]).unwrap();
        assert_eq!((d.queued, d.refused, d.unanswered), (0, 2, 0));
        let codes: Vec<_> =
            r.vm.page_responses()
                .iter()
                .map(|g| (g.sid, g.code))
                .collect();
        assert_eq!(codes, [(RID_B as u16, 1), (0x30, 1)]);
        closed.detach(b).unwrap();
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn fault_queue_overflow_is_counted_and_answered() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        let n = MAX_FAULTS as u16 + 1;
        for g in 0..n {
            assert_eq!(
                r.vm.page_request(request(RID_A, 0x5000, g, true)),
                PageRequestOutcome::Queued
            );
        }
        let d = dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        assert_eq!((d.queued, d.refused), (MAX_FAULTS as u32, 1));
        assert_eq!(ctx.faults_overflowed(), 1);
        let last = r.vm.page_responses();
        assert_eq!((last.len(), last[0].group, last[0].code), (1, n - 1, 1));
        ctx.detach(dev).unwrap();
        assert_eq!(
            r.vm.page_responses().len(),
            usize::from(n),
            "detach answered the rest"
        );
    })
}

#[test]
fn page_request_queue_overflow_reported_once_drained() {
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        // A 4 KiB queue holds 127 requests (one slot stays empty).
        for i in 0..127u64 {
            assert_eq!(
                r.vm.page_request(request(RID_A, 0x1000 * i, 5, false)),
                PageRequestOutcome::Queued
            );
        }
        assert_eq!(
            r.vm.page_request(request(RID_A, 0, 5, true)),
            PageRequestOutcome::Overflow
        );
        // The unit answered the group's last request itself.
        assert!(r.vm.page_responses()[0].automatic);
        let d = dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        assert!(d.unit_overflow);
        assert_eq!(d.queued + d.refused, 127);
        // PRO was cleared with the queue empty: requests are queued again, and the partial
        // group whose last request was lost no longer holds the context's queue.
        assert_eq!(
            r.vm.page_request(request(RID_A, 0, 6, true)),
            PageRequestOutcome::Queued
        );
        let d = dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap();
        assert!(!d.unit_overflow);
        assert_eq!((d.queued, d.refused), (1, 0));
        let mut out = no_faults::<8>();
        assert_eq!(ctx.read_faults(&mut out), 1);
        ctx.detach(dev).unwrap();
    })
}

/// An Invalid answer to `sid`'s group `group`, as a unit is told to send it.
fn answer_to(sid: u32, group: u16) -> iommu_engine::iopf::PageResponse {
    iommu_engine::iopf::PageResponse {
        device: iommu_engine::iommu::DeviceId(sid),
        pasid: None,
        kind: FaultKind::PageRequest { group, last: true },
        code: ResponseCode::Invalid,
        // VT-d has no generations.
        generation: 0,
    }
}

/// Answers of the model's device `sid` to its group `group`.
fn answers(r: &Rig<'_, '_>, sid: u32, group: u16) -> usize {
    r.vm.page_responses()
        .iter()
        .filter(|g| g.sid == sid as u16 && g.group == group)
        .count()
}

/// A page group response the unit could not put on its invalidation queue (no room: waits
/// never complete and the ring filled up; then an earlier batch's queue error met while
/// looking for room) is still owed: the group stays in the context, the retry sends it once
/// there is room, and the device is answered exactly once. One that was queued and whose
/// wait then failed is answered (the device gets it once the queue runs): the retry is
/// `NotOutstanding`.
#[test]
fn vtd_response_the_unit_could_not_queue_stays_outstanding() {
    use iommu_engine::sim::vtd::Injection;
    with_rig(prs(), SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let (ctx, dev, _io) = attached(r);
        for g in [5, 6] {
            assert_eq!(
                r.vm.page_request(request(RID_A, 0x5000 + u64::from(g) * K4, g, true)),
                PageRequestOutcome::Queued
            );
        }
        assert_eq!(dispatch_page_faults(VTD, r.vtd, &[&ctx]).unwrap().queued, 2);
        let mut out = no_faults::<8>();
        assert_eq!(ctx.read_faults(&mut out), 2);
        let (c5, c6) = (out[0].cookie, out[1].cookie);
        assert_eq!(
            out[0].fault.kind,
            FaultKind::PageRequest {
                group: 5,
                last: true
            }
        );

        // Waits never complete: every batch after the first stays in the ring, until none fits.
        r.vm.inject(Injection::StallWaits);
        let mut filled = false;
        for g in 0..512u16 {
            match r.vtd.page_group_response(&answer_to(RID_B, g)) {
                Err(e) if format!("{e:?}").contains("QueueSpace") => {
                    filled = true;
                    break;
                }
                Err(_) => {}
                Ok(()) => panic!("a wait completed while waits are stalled"),
            }
        }
        assert!(filled, "the invalidation queue never filled");

        // No room: the answer never reaches the queue, and stays owed.
        let e = ctx.respond_fault(c5, ResponseCode::Success);
        assert!(matches!(e, Err(Error::Iommu(_))), "{e:?}");
        assert_eq!(answers(r, RID_A, 5), 0);
        let e = ctx.respond_fault(c5, ResponseCode::Success);
        assert!(
            matches!(e, Err(Error::Iommu(_))),
            "the retry of an answer never queued: {e:?}"
        );

        // Room again (the waits complete), but an earlier batch's queue error is met while
        // looking for room: still never queued, still owed.
        r.vm.clear_injections();
        r.vm.leave_queue_errors(1 << 4); // FSTS.IQE
        let e = ctx.respond_fault(c5, ResponseCode::Success);
        assert!(matches!(e, Err(Error::Iommu(_))), "{e:?}");
        assert_eq!(answers(r, RID_A, 5), 0);

        // The retry sends it, once; the device retries its page.
        ctx.respond_fault(c5, ResponseCode::Success)
            .expect("the retry of an answer the unit never queued");
        assert_eq!(answers(r, RID_A, 5), 1, "the group answered exactly once");
        assert_eq!(
            ctx.respond_fault(c5, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(c5)))
        );

        // Queued, and its wait never completes: the answer is taken (the device has it once
        // the queue runs), so the group is gone and the retry sends nothing.
        r.vm.inject(Injection::StallWaits);
        let e = ctx.respond_fault(c6, ResponseCode::Success);
        assert!(matches!(e, Err(Error::Iommu(_))), "{e:?}");
        assert_eq!(
            ctx.respond_fault(c6, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(c6)))
        );
        r.vm.clear_injections();
        assert_eq!(
            answers(r, RID_A, 6),
            1,
            "the queued answer ran once the queue did"
        );
        assert_eq!(answers(r, RID_A, 5), 1);
        assert_eq!(r.vm.outstanding_page_requests(), 0);
        ctx.detach(dev).unwrap();
    })
}

/// Review of 2026-12-07 (D3): a context dropped while its unit refused the detach strands the
/// device; the embedder recovers as `Registry::release_stranded` says (the unit works again,
/// `Iommu::detach` on the unit, then release) and a second context binds and attaches the
/// device, its PASID too (the embedder gave the leaked PASID back to the allocator). Page
/// requests the device raised under the dead context's attachments, still in the page request
/// queue, reached the second context, which answered the first owner's address Success: no
/// detach of the layer had quarantined them. `release_stranded` now quarantines every fault of
/// the device up to the unit's fence.
#[test]
fn a_request_from_before_a_stranding_never_reaches_the_device_s_next_owner() {
    let setup = VtdSetup {
        model: VtdModelConfig::scalable().with_prs(true).with_pds(true),
        mode: Mode::Scalable,
    };
    with_rig(setup, SmmuSetup::qemu(true), |r| {
        r.vtd.enable_page_requests(0).unwrap();
        let first = IoasidCtx::new(r.reg, r.arena, 1);
        first.fault_queue_alloc();
        let dev = first.bind(vtd_dev(RID_A), false).unwrap();
        let io = first.alloc(IoasidFlags::empty()).unwrap();
        first.attach(dev, io).unwrap();
        let pio = first.alloc(IoasidFlags::PASID).unwrap();
        let p = first.alloc_pasid().unwrap();
        first.attach_pasid(dev, p, pio).unwrap();
        // The first owner's device asks for pages; nobody has dispatched them yet.
        let with_pasid = PageRequest {
            pasid: Some(p.get()),
            ..request(RID_A, 0x7000, 2, true)
        };
        for req in [request(RID_A, 0x5000, 1, true), with_pasid] {
            assert_eq!(r.vm.page_request(req), PageRequestOutcome::Queued);
        }
        r.vm.inject(vtd::Injection::StallWaits);
        drop(first);
        assert!(r.reg.is_stranded(vtd_dev(RID_A)));
        // Recovery as documented; the PASID the drop leaked is given back too.
        r.vm.clear_injections();
        r.drain();
        r.vtd.detach(DeviceId(RID_A), Some(p)).unwrap();
        r.vtd.detach(DeviceId(RID_A), None).unwrap();
        assert!(r.reg.pasids().free(p));
        assert!(r.reg.release_stranded(vtd_dev(RID_A)));
        let second = IoasidCtx::new(r.reg, r.arena, 1);
        second.fault_queue_alloc();
        let dev2 = second.bind(vtd_dev(RID_A), false).unwrap();
        let io2 = second.alloc(IoasidFlags::empty()).unwrap();
        second.attach(dev2, io2).unwrap();
        let pio2 = second.alloc(IoasidFlags::PASID).unwrap();
        assert_eq!(second.alloc_pasid(), Ok(p), "the same PASID again");
        second.attach_pasid(dev2, p, pio2).unwrap();
        let d = dispatch_page_faults(VTD, r.vtd, &[&second]).unwrap();
        let mut out = no_faults::<8>();
        let n = second.read_faults(&mut out);
        assert_eq!(
            n,
            0,
            "the dead owner's page requests reached the next owner: {:?}",
            &out[..n]
        );
        assert_eq!((d.queued, d.refused, d.quarantined), (0, 2, 2));
        let answered: Vec<_> =
            r.vm.page_responses()
                .iter()
                .map(|g| (g.group, g.code))
                .collect();
        assert_eq!(answered, [(1, 1), (2, 1)], "each answered Invalid, once");
        assert_eq!(
            r.reg.quarantines(),
            0,
            "the drain passed the release's fence"
        );
        second.detach_pasid(dev2, p).unwrap();
        second.detach(dev2).unwrap();
    })
}
