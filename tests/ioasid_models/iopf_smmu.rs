//! I/O page faults on the SMMUv3 model through the IOASID layer, as iommufd's fault queue gives
//! them to a VMM (issue 17 item 8): PCIe page requests on the PRI queue (IHI 0070 chapter 8,
//! answered by `CMD_PRI_RESP`) and stalled transactions (§3.12.2, answered by `CMD_RESUME`).
//! Tests are named after the iommufd behaviour they match; `iopf.rs` holds the VT-d ones.

use iommu_engine::ioasid::{
    dispatch_page_faults, DeviceHandle, Error, Incompatibility, IoasidCtx, IoasidFlags, IoasidId,
};
use iommu_engine::iommu::{DeviceHints, Error as IommuError, Iommu, Missing, Pasid};
use iommu_engine::iopf::{
    FaultCookie, FaultError, FaultKind, FaultPerm, PageFault, PageResponse, QueuedFault,
    ResponseCode,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::cmdq::op;
use iommu_engine::sim::smmuv3::priq::{PriOutcome, PriRequest};
use iommu_engine::sim::smmuv3::stall::StallEnd;
use iommu_engine::sim::smmuv3::Injection;
use iommu_engine::sim::walk::Access;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const PA: u64 = 0x7000_0000;

/// The SMMUv3 model with a PRI queue of `2^log2` entries (the unit's too) and 16 PASIDs.
fn pri(log2: u8) -> SmmuSetup {
    let mut s = SmmuSetup::qemu(true).with_ssid_bits(4);
    s.model = s.model.with_pri(true, 19);
    s.unit.priq_log2 = Some(u32::from(log2));
    s
}

fn request(ssid: Option<u32>, addr: u64, group: u16, last: bool) -> PriRequest {
    PriRequest {
        sid: SID_A,
        ssid,
        addr,
        access: Access::WRITE,
        group,
        last,
    }
}

fn empty() -> [QueuedFault; 8] {
    [QueuedFault {
        unit: 0,
        fault: PageFault::EMPTY,
        cookie: FaultCookie(0),
    }; 8]
}

/// A context with SID_A bound and attached to a new IOASID, its fault queue open.
fn attached<'a>(r: &Rig<'a, '_>) -> (IoasidCtx<'a, 'a, Arena>, DeviceHandle, IoasidId) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 1);
    ctx.fault_queue_alloc();
    let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    (ctx, dev, io)
}

#[test]
fn smmu_fault_queue_reports_page_request_and_accepts_response() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (ctx, dev, io) = attached(r);
        assert_eq!(
            r.sm.page_request(request(None, 0x5000, 3, false)),
            PriOutcome::Queued
        );
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!((d.queued, d.refused), (1, 0));
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 0, "group incomplete");
        assert_eq!(
            r.sm.page_request(request(None, 0x6000, 3, true)),
            PriOutcome::Queued
        );
        assert_eq!(
            dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap().queued,
            1
        );
        assert_eq!(ctx.read_faults(&mut out), 2);
        let cookie = out[0].cookie;
        assert_eq!(out[1].cookie, cookie, "one cookie per group");
        assert_eq!((out[0].fault.addr, out[1].fault.addr), (0x5000, 0x6000));
        assert_eq!(out[0].fault.perm, FaultPerm::WRITE);
        assert_eq!(out[0].fault.pasid, None);
        assert_eq!(
            out[1].fault.kind,
            FaultKind::PageRequest {
                group: 3,
                last: true
            }
        );
        // The VMM makes the pages present, then answers: CMD_PRI_RESP Success.
        ctx.map(io, Iova::new(0x5000), PhysAddr::new(PA), 2 * K4, RW)
            .unwrap();
        ctx.respond_fault(cookie, ResponseCode::Success).unwrap();
        let responses = r.sm.pri_responses();
        assert_eq!(responses.len(), 1);
        let g = responses[0];
        assert_eq!((g.sid, g.ssid, g.group, g.code), (SID_A, None, 3, 0));
        assert!(g.expected && !g.automatic);
        // The device asked for both pages again and they translate now.
        let retries = r.sm.pri_retries();
        assert_eq!(retries.len(), 2);
        assert_eq!(retries[0].pa, Some(PA));
        assert_eq!(retries[1].pa, Some(PA + K4));
        assert_eq!(r.sm.outstanding_page_requests(), 0);
        assert_eq!(
            ctx.respond_fault(cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(cookie)))
        );
        assert_eq!(r.sm.pri_responses().len(), 1, "nothing more sent");
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_pasid_page_request_answered_with_its_substream() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 1);
        ctx.fault_queue_alloc();
        let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::PASID).unwrap();
        let p = ctx.alloc_pasid().unwrap();
        ctx.attach_pasid(dev, p, io).unwrap();
        let mut req = request(Some(p.get()), 0x9000, 0x1ff, true);
        req.access = Access::READ;
        assert_eq!(r.sm.page_request(req), PriOutcome::Queued);
        // The same request without PASID is no fault of this context: the RID is not attached.
        assert_eq!(
            r.sm.page_request(request(None, 0x9000, 7, true)),
            PriOutcome::Queued
        );
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!((d.queued, d.refused), (1, 1));
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.pasid, Some(p));
        assert_eq!(out[0].fault.perm, FaultPerm::READ);
        ctx.respond_fault(out[0].cookie, ResponseCode::Invalid)
            .unwrap();
        let got: Vec<_> =
            r.sm.pri_responses()
                .iter()
                .map(|g| (g.ssid, g.group, g.code, g.expected))
                .collect();
        // The refused one was answered InvalidRequest at once; ours with its PASID.
        assert_eq!(got, [(None, 7, 1, true), (Some(p.get()), 0x1ff, 1, true)]);
        assert!(
            r.sm.pri_retries().is_empty(),
            "no retry after InvalidRequest"
        );
        ctx.detach_pasid(dev, p).unwrap();
    })
}

#[test]
fn smmu_detach_answers_outstanding_faults() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (ctx, dev, _io) = attached(r);
        r.sm.page_request(request(None, 0x5000, 1, true));
        dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1, "read, not answered");
        r.sm.page_request(request(None, 0x9000, 2, true));
        dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!(r.sm.outstanding_page_requests(), 2);
        ctx.detach(dev).unwrap();
        // Both groups, read or not, were answered InvalidRequest before the device left.
        let responses = r.sm.pri_responses();
        assert_eq!(responses.len(), 2);
        assert!(
            responses.iter().all(|g| g.code == 1 && g.expected),
            "{responses:?}"
        );
        assert_eq!(r.sm.outstanding_page_requests(), 0);
    })
}

#[test]
fn smmu_pri_queue_overflow_reported_once_drained() {
    // A 4-entry PRI queue.
    with_rig(VtdSetup::scalable(), pri(2), |r| {
        let (ctx, dev, _io) = attached(r);
        for i in 0..4u64 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000 * i, 5, false)),
                PriOutcome::Queued
            );
        }
        // The queue is full: the overflow condition starts; the group's last request is lost
        // and answered Success by the SMMU itself, and so is the next one while it lasts.
        assert_eq!(
            r.sm.page_request(request(None, 0, 5, true)),
            PriOutcome::Overflow
        );
        assert_eq!(
            r.sm.page_request(request(None, 0, 6, false)),
            PriOutcome::Overflow
        );
        let auto = r.sm.pri_responses();
        assert_eq!(auto.len(), 1, "Last = 0 is dropped silently");
        assert!(auto[0].automatic && auto[0].code == 0 && auto[0].group == 5);
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert!(d.unit_overflow);
        assert_eq!(d.queued, 4);
        // Acknowledged with the queue read: requests are queued again, and the group whose
        // last request was lost no longer holds the context's queue.
        assert_eq!(
            r.sm.page_request(request(None, 0, 7, true)),
            PriOutcome::Queued
        );
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert!(!d.unit_overflow);
        assert_eq!((d.queued, d.refused), (1, 0));
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(
            out[0].fault.kind,
            FaultKind::PageRequest {
                group: 7,
                last: true
            }
        );
        ctx.detach(dev).unwrap();
        assert_eq!(
            r.sm.outstanding_page_requests(),
            0,
            "nothing left unanswered"
        );
    })
}

/// The SMMUv3 model with both fault models (`IDR0.STALL_MODEL` = 0b00).
fn stalls() -> SmmuSetup {
    let mut s = SmmuSetup::qemu(true);
    s.model = s.model.with_stall_model(0);
    s
}

fn may_stall() -> DeviceHints {
    DeviceHints {
        stall: true,
        ..DeviceHints::default()
    }
}

/// A context with SID_A (declared able to stall when `stall`) attached to a new IOASID.
fn attached_stall<'a>(
    r: &Rig<'a, '_>,
    stall: bool,
) -> (IoasidCtx<'a, 'a, Arena>, DeviceHandle, IoasidId) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 1);
    ctx.fault_queue_alloc();
    let hints = if stall {
        may_stall()
    } else {
        DeviceHints::default()
    };
    let dev = ctx.bind_with(smmu_dev(SID_A), false, hints).unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    (ctx, dev, io)
}

/// The embedder's event interrupt: the event queue (where stall records arrive), then the
/// fault path.
fn event_interrupt(r: &Rig<'_, '_>, ctx: &IoasidCtx<'_, '_, Arena>) -> (u32, u32) {
    let _ = r.smmu.handle_events(usize::MAX, |_| {});
    let d = dispatch_page_faults(SMMU, r.smmu, &[ctx]).unwrap();
    (d.queued, d.refused)
}

#[test]
fn smmu_stalled_transaction_resumes_after_the_map() {
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, io) = attached_stall(r, true);
        let f =
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err();
        let stag = f.stag.expect("the transaction stalls");
        assert_eq!(r.sm.stalled().len(), 1);
        assert_eq!(event_interrupt(r, &ctx), (1, 0));
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        let q = out[0].fault;
        assert_eq!((q.device.0, q.pasid, q.addr), (SID_A, None, 0x5000));
        assert_eq!(q.perm, FaultPerm::WRITE);
        assert_eq!(q.kind, FaultKind::Stall { stag });
        // The VMM maps the page, then answers: CMD_RESUME Retry, and the write goes through.
        ctx.map(io, Iova::new(0x5000), PhysAddr::new(PA), K4, RW)
            .unwrap();
        ctx.respond_fault(out[0].cookie, ResponseCode::Success)
            .unwrap();
        let ends = r.sm.stall_outcomes();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].stalled.stag, stag);
        assert_eq!(ends[0].end, StallEnd::Completed(PA));
        assert!(r.sm.stalled().is_empty());
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_stalled_transaction_aborts_when_told() {
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, true);
        let f =
            r.sm.translate(SID_A, None, 0x7000, Access::READ)
                .unwrap_err();
        assert!(f.stag.is_some());
        event_interrupt(r, &ctx);
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.perm, FaultPerm::READ);
        ctx.respond_fault(out[0].cookie, ResponseCode::Invalid)
            .unwrap();
        let ends = r.sm.stall_outcomes();
        assert_eq!(ends.len(), 1);
        assert_eq!(ends[0].end, StallEnd::Aborted);
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_device_not_declared_able_to_stall_never_stalls() {
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, false);
        let f =
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err();
        assert_eq!(f.stag, None, "terminated, not stalled");
        assert_eq!(event_interrupt(r, &ctx), (0, 0));
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_stall_refused_where_the_unit_cannot_stall() {
    // QEMU's arm-smmuv3: IDR0.STALL_MODEL = 0b01.
    with_rig(VtdSetup::scalable(), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 1);
        let dev = ctx.bind_with(smmu_dev(SID_A), false, may_stall()).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        assert_eq!(
            ctx.attach(dev, io),
            Err(Error::Incompatible {
                device: dev,
                reason: Incompatibility::Missing(Missing::Mode {
                    what: "stalls (IDR0.STALL_MODEL = 0b00)"
                })
            }),
            "a stall on a terminate-only unit"
        );
        assert_eq!(
            dispatch_page_faults(SMMU, r.smmu, &[&ctx]).map(|_| ()),
            Err(Error::Iommu(IommuError::Unsupported(Missing::Mode {
                what: "I/O page faults (SMMUv3 IDR0.PRI, or IDR0.STALL_MODEL = 0b00)"
            })))
        );
    })
}

#[test]
fn smmu_detach_answers_and_terminates_stalls() {
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, true);
        // One stall read by the VMM, one filed by the unit and not yet dispatched.
        r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
            .unwrap_err();
        event_interrupt(r, &ctx);
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        r.sm.translate(SID_A, None, 0x6000, Access::WRITE)
            .unwrap_err();
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        assert_eq!(r.sm.stalled().len(), 2);
        ctx.detach(dev).unwrap();
        // The read one was aborted (CMD_RESUME), the other terminated with the stream
        // (CMD_STALL_TERM once its STE aborts): nothing is left stalled.
        let ends: Vec<_> = r.sm.stall_outcomes().iter().map(|o| o.end).collect();
        assert_eq!(ends, [StallEnd::Aborted, StallEnd::Terminated]);
        assert!(r.sm.stalled().is_empty());
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!(
            (d.queued, d.refused),
            (0, 0),
            "the unit forgot the terminated stall"
        );
    })
}

#[test]
fn smmu_pri_queue_abort_leaves_a_known_state() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (ctx, dev, _io) = attached(r);
        r.sm.page_request(request(None, 0x1000, 1, false));
        // An external abort writing the PRI queue (GERROR.PRIQ_ABT_ERR, §8.2): records may be
        // lost, and while it is active every request is answered Response Failure.
        r.sm.inject(Injection::GlobalError(1 << 3));
        assert_eq!(
            r.sm.page_request(request(None, 0x2000, 1, true)),
            PriOutcome::Failed
        );
        assert_eq!(r.sm.pri_responses()[0].code, 0xf);
        let e = r.smmu.handle_events(16, |_| {});
        assert!(e.gerror.bits() & (1 << 3) != 0, "reported and acknowledged");
        // The next drain reports the loss: the partial group 1 is dropped.
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert!(d.unit_overflow);
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 0);
        assert_eq!(
            r.sm.page_request(request(None, 0x3000, 2, true)),
            PriOutcome::Queued
        );
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!((d.queued, d.unit_overflow), (1, false));
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_pri_response_timeout_leaves_a_known_state() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (ctx, dev, _io) = attached(r);
        r.sm.page_request(request(None, 0x1000, 1, true));
        dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        // The CMD_SYNC behind CMD_PRI_RESP never completes: the answer is an error, and the
        // group is gone from the context (the device waits for its own PRI timeout).
        r.sm.inject(Injection::SyncStall);
        assert!(matches!(
            ctx.respond_fault(out[0].cookie, ResponseCode::Success),
            Err(Error::Iommu(IommuError::Timeout { .. }))
        ));
        assert_eq!(
            ctx.respond_fault(out[0].cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(out[0].cookie)))
        );
        r.sm.clear_injections();
        // The response was queued all the same and reaches the device once the queue runs.
        assert_eq!(r.sm.pri_responses().len(), 1);
        ctx.detach(dev).unwrap();
    })
}

/// What the unit still has filed in its book of stalls (and the PRI queue), read at the
/// unit: what a later `dispatch_page_faults` would hand to the contexts.
fn unit_faults(r: &Rig<'_, '_>) -> usize {
    let mut out = [PageFault::EMPTY; 8];
    r.smmu.drain_page_faults(&mut out).unwrap().reported
}

#[test]
fn smmu_detach_whose_stall_term_fails_reports_it_and_the_retry_terminates() {
    // CMD_STALL_TERM refused (CERROR_ILL: the stall is still held), or its CMD_SYNC never
    // completing (it may or may not have run): either way the stream's stalled transactions
    // are not known to be gone, so detach must say so and its retry send CMD_STALL_TERM again.
    for (injection, held) in [
        (Injection::CommandIllegalOpcode(op::STALL_TERM), 1),
        (Injection::SyncStallAfter(op::STALL_TERM), 0),
    ] {
        with_rig(VtdSetup::scalable(), stalls(), |r| {
            let (ctx, dev, _io) = attached_stall(r, true);
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err();
            let _ = r.smmu.handle_events(usize::MAX, |_| {});
            let fired = r.sm.stats().injections_fired;
            r.sm.inject(injection);
            let e = ctx.detach(dev);
            assert!(
                matches!(
                    e,
                    Err(Error::Iommu(
                        IommuError::CommandError { .. } | IommuError::Timeout { .. }
                    ))
                ),
                "{injection:?}: {e:?}"
            );
            assert_eq!(r.sm.stats().injections_fired, fired + 1, "{injection:?}");
            r.sm.clear_injections();
            assert_eq!(r.sm.stalled().len(), held, "{injection:?}");
            // Documented state: the attachment is gone (its STE aborts), the termination is
            // owed and the filed stall stays in the book until it is sent.
            let terms = r.sm.stats().commands_of(op::STALL_TERM);
            ctx.detach(dev).unwrap();
            assert_eq!(
                r.sm.stats().commands_of(op::STALL_TERM),
                terms + 1,
                "{injection:?}: the retry terminates again"
            );
            assert!(r.sm.stalled().is_empty(), "{injection:?}");
            assert_eq!(
                unit_faults(r),
                0,
                "{injection:?}: forgotten once terminated"
            );
            // Owed nothing more: another detach sends nothing.
            let total = r.sm.stats().total_commands();
            assert_eq!(ctx.detach(dev), Err(Error::NotAttached(dev)));
            assert_eq!(r.sm.stats().total_commands(), total);
        })
    }
}

#[test]
fn smmu_attach_after_a_failed_stall_term_terminates_first() {
    // The stalled transactions of the stream's last owner must not be resumed into the next
    // one's address space: an attach of a stream owing CMD_STALL_TERM sends it first.
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, io) = attached_stall(r, true);
        r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
            .unwrap_err();
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        r.sm.inject(Injection::CommandIllegalOpcode(op::STALL_TERM));
        assert!(ctx.detach(dev).is_err());
        assert_eq!(r.sm.stalled().len(), 1);
        // The unit's own attach (another owner of the stream, not through this context).
        let d = r
            .smmu
            .domain_alloc(&iommu_engine::iommu::DomainConfig::default())
            .unwrap();
        r.smmu
            .attach(iommu_engine::iommu::DeviceId(SID_A), None, d)
            .unwrap();
        assert!(r.sm.stalled().is_empty(), "terminated before the attach");
        assert_eq!(unit_faults(r), 0);
        r.smmu
            .detach(iommu_engine::iommu::DeviceId(SID_A), None)
            .unwrap();
        r.smmu.domain_free(d).unwrap();
        let _ = (io, ctx.detach(dev));
    })
}

#[test]
fn smmu_stall_recorded_before_the_detach_is_not_filed_after_it() {
    // The record of a stall is in the event queue, not yet read, when the detach terminates
    // the stream's stalls: read afterwards, it must not be filed (it names a transaction that
    // is gone, and a later owner of the stream would be handed it).
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, true);
        r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
            .unwrap_err();
        ctx.detach(dev).unwrap();
        let ends: Vec<_> = r.sm.stall_outcomes().iter().map(|o| o.end).collect();
        assert_eq!(ends, [StallEnd::Terminated]);
        let mut seen = 0;
        let _ = r.smmu.handle_events(usize::MAX, |_| seen += 1);
        assert_eq!(seen, 1, "the record is still shown to the event handler");
        assert_eq!(unit_faults(r), 0, "a terminated stall was filed");
        assert_eq!(r.smmu.stalls_aborted(), 0);
    })
}

#[test]
fn smmu_stalls_filed_while_detaching_agree_with_the_unit() {
    // An event interrupt thread drains the event queue while the stream is attached, stalls
    // and detached again, over and over: in every interleaving, what the book holds at the end
    // is what the SMMU still holds stalled (nothing).
    const ROUNDS: usize = if cfg!(miri) { 2 } else { 300 };
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 1);
        let dev = ctx.bind_with(smmu_dev(SID_A), false, may_stall()).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    let _ = r.smmu.handle_events(usize::MAX, |_| {});
                    std::thread::yield_now();
                }
            });
            for _ in 0..ROUNDS {
                ctx.attach(dev, io).unwrap();
                r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                    .unwrap_err();
                ctx.detach(dev).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
        });
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        assert!(r.sm.stalled().is_empty());
        assert_eq!(
            (unit_faults(r), r.smmu.stalls_aborted()),
            (0, 0),
            "stalls of terminated transactions were filed"
        );
    })
}

#[test]
fn smmu_unit_refuses_a_response_for_no_outstanding_fault() {
    // At the unit, not only in the IOASID layer: an answer must name a fault the unit handed
    // out and nobody answered (StreamID, SubstreamID, and STAG or PRI group); any other is
    // refused, naming it, and nothing is sent (a CMD_RESUME with a stale STAG may resume the
    // stream's next stalled transaction; a stray CMD_PRI_RESP answers a group in flight).
    let mut s = stalls();
    s.model = s.model.with_pri(true, 19).with_ssid_bits(4);
    s.unit.priq_log2 = Some(7);
    with_rig(VtdSetup::scalable(), s, |r| {
        let (_ctx, _dev, _io) = attached_stall(r, true);
        let dev = iommu_engine::iommu::DeviceId(SID_A);
        let other = iommu_engine::iommu::DeviceId(SID_A + 1);
        let stag =
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err()
                .stag
                .unwrap();
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        r.sm.page_request(request(None, 0x1000, 3, true));
        // The unit's generation (its count of SMMUEN clears: 1 after the rig's enable), which
        // the faults it hands out carry; an answer from another one is refused below.
        let response = |device, pasid, kind| PageResponse {
            device,
            pasid,
            kind,
            code: ResponseCode::Success,
            generation: 1,
        };
        let stall = FaultKind::Stall { stag };
        let group = FaultKind::PageRequest {
            group: 3,
            last: true,
        };
        let sent = |r: &Rig<'_, '_>| {
            let st = r.sm.stats();
            st.commands_of(op::RESUME) + st.commands_of(op::PRI_RESP)
        };
        let before = sent(r);
        // Filed but not yet handed out, then handed out: only the latter may be answered.
        for (device, pasid, kind) in [(dev, None, stall), (dev, None, group)] {
            let e = r.smmu.page_response(&response(device, pasid, kind));
            assert_eq!(
                e,
                Err(IommuError::NotOutstanding {
                    device,
                    pasid,
                    kind
                }),
                "not handed out yet"
            );
        }
        let mut handed = [PageFault::EMPTY; 8];
        assert_eq!(r.smmu.drain_page_faults(&mut handed).unwrap().reported, 2);
        assert_eq!((handed[0].generation, handed[1].generation), (1, 1));
        // The right fault from another generation (before an SMMUEN clear) is not it.
        for kind in [stall, group] {
            let older = PageResponse {
                generation: 0,
                ..response(dev, None, kind)
            };
            assert_eq!(
                r.smmu.page_response(&older),
                Err(IommuError::NotOutstanding {
                    device: dev,
                    pasid: None,
                    kind
                }),
                "an answer of generation 0"
            );
        }
        let pasid = Pasid::new(1);
        for (device, pasid, kind) in [
            (other, None, stall),
            (dev, None, FaultKind::Stall { stag: stag + 1 }),
            (dev, pasid, stall),
            (other, None, group),
            (dev, pasid, group),
            (
                dev,
                None,
                FaultKind::PageRequest {
                    group: 4,
                    last: true,
                },
            ),
        ] {
            assert_eq!(
                r.smmu.page_response(&response(device, pasid, kind)),
                Err(IommuError::NotOutstanding {
                    device,
                    pasid,
                    kind
                }),
                "{device:?} {pasid:?} {kind:?}"
            );
        }
        assert_eq!(sent(r), before, "nothing sent for a refused answer");
        for kind in [stall, group] {
            r.smmu.page_response(&response(dev, None, kind)).unwrap();
            assert_eq!(
                r.smmu.page_response(&response(dev, None, kind)),
                Err(IommuError::NotOutstanding {
                    device: dev,
                    pasid: None,
                    kind
                }),
                "answered twice"
            );
        }
        assert_eq!(sent(r), before + 2);
    })
}

#[test]
fn smmu_pri_device_requiring_a_pasid_gets_it_on_the_smmus_own_answers() {
    // IHI 0070 §8.1: in a PRI queue overflow the SMMU answers a lost Last = 1 request itself;
    // with IDR3.PPS = 0 that answer carries the request's PASID only if the stream's STE.PPAR
    // is 1, which Arm expects to equal the endpoint's "PRG Response PASID Required". A device
    // that requires it and gets an answer without it treats the response as malformed.
    for required in [false, true] {
        let mut s = pri(1);
        s.model = s.model.with_pps(false);
        with_rig(VtdSetup::scalable(), s, |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 1);
            ctx.fault_queue_alloc();
            let hints = DeviceHints {
                pri: true,
                pri_pasid_required: required,
                ..DeviceHints::default()
            };
            let dev = ctx.bind_with(smmu_dev(SID_A), false, hints).unwrap();
            let io = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.attach(dev, io).unwrap();
            // A 2-entry queue: the third request overflows it.
            for addr in [0x1000, 0x2000] {
                assert_eq!(
                    r.sm.page_request(request(Some(1), addr, 1, false)),
                    PriOutcome::Queued
                );
            }
            assert_eq!(
                r.sm.page_request(request(Some(1), 0x3000, 2, true)),
                PriOutcome::Overflow
            );
            let answers = r.sm.pri_responses();
            assert_eq!(answers.len(), 1);
            assert!(answers[0].automatic);
            assert_eq!(
                (answers[0].ssid, answers[0].code),
                (required.then_some(1), 0),
                "PASID required: {required}"
            );
            ctx.detach(dev).unwrap();
        })
    }
}

#[test]
fn smmu_response_the_unit_could_not_queue_stays_outstanding() {
    // The unit is stuck on a CMD_SYNC and its 8-entry command queue fills: an answer whose
    // CMD_PRI_RESP got into the queue is taken (it reaches the device once the queue runs),
    // but one that found no room was never sent. It was taken all the same: the VMM's retry
    // was refused and the device waited for ever. It stays outstanding, in the context and at
    // the unit, and the retry sends it.
    let mut s = pri(7);
    s.unit.cmdq_log2 = Some(3);
    with_rig(VtdSetup::scalable(), s, |r| {
        let (ctx, dev, _io) = attached(r);
        for g in 1..=6u16 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000 * u64::from(g), g, true)),
                PriOutcome::Queued
            );
        }
        assert_eq!(
            dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap().queued,
            6
        );
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 6);
        r.sm.inject(Injection::SyncStall);
        // Answers 1-4 queue CMD_PRI_RESP and a CMD_SYNC that never completes; answer 5's
        // CMD_PRI_RESP takes the last entry and its CMD_SYNC finds no room: all queued.
        for q in &out[..5] {
            assert!(matches!(
                ctx.respond_fault(q.cookie, ResponseCode::Success),
                Err(Error::Iommu(IommuError::Timeout { .. }))
            ));
        }
        // Answer 6 finds no room for its command: nothing was sent.
        assert_eq!(
            ctx.respond_fault(out[5].cookie, ResponseCode::Success),
            Err(Error::Iommu(IommuError::Timeout {
                what: "command queue space"
            }))
        );
        r.sm.clear_injections();
        // The queued ones reached the device and are answered; the sixth is still owed.
        assert_eq!(r.sm.pri_responses().len(), 5);
        assert_eq!(
            ctx.respond_fault(out[4].cookie, ResponseCode::Success),
            Err(Error::Fault(FaultError::NotOutstanding(out[4].cookie)))
        );
        ctx.respond_fault(out[5].cookie, ResponseCode::Success)
            .expect("the answer that was never queued can be sent again");
        let sent = r.sm.pri_responses();
        assert_eq!(sent.len(), 6);
        assert!(sent.iter().all(|p| p.expected && p.code == 0));
        assert_eq!(r.sm.outstanding_page_requests(), 0);
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_answers_given_up_do_not_hold_the_streams_share() {
    // A fault no context takes is answered Invalid by the dispatch (and a detach answers
    // Invalid what the context still holds); when that answer finds no room in the command
    // queue the caller gives it up. The unit kept its record all the same: each held a place
    // of the stream's share (STREAM_QUOTA, 16) for ever, and once 16 were held every later
    // fault of the device was refused. A given-up answer is forgotten
    // (Iommu::page_response_abandon).
    let mut s = pri(7);
    s.unit.cmdq_log2 = Some(3);
    with_rig(VtdSetup::scalable(), s, |r| {
        let (ctx, dev, _io) = attached(r);
        r.sm.inject(Injection::SyncStall);
        for g in 1..=16u16 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000 * u64::from(g), g, true)),
                PriOutcome::Queued
            );
        }
        // No context: every fault refused, and most answers find no room.
        let d = dispatch_page_faults::<Arena>(SMMU, r.smmu, &[]).unwrap();
        assert_eq!(d.refused, 16);
        assert!(d.unanswered >= 8, "answers given up: {}", d.unanswered);
        r.sm.clear_injections();
        for g in 17..=32u16 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000 * u64::from(g), g, true)),
                PriOutcome::Queued
            );
        }
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!(
            (d.queued, d.refused),
            (16, 0),
            "the stream's share held by answers given up"
        );
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_reenable_forgets_the_stalls_the_unit_ended() {
    // Clearing SMMU_CR0.SMMUEN (disable, and enable, which starts from CR0 = 0) terminates
    // every stalled transaction and frees their STAGs for new stalls (IHI 0070 §3.12.2). The
    // unit's book kept them: stale stalls were handed out after the re-enable, and the VMM's
    // late answer to an old one sent CMD_RESUME with a STAG the SMMU had given to a new stall.
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, io) = attached_stall(r, true);
        let old =
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err()
                .stag
                .unwrap();
        assert_eq!(event_interrupt(r, &ctx), (1, 0));
        let mut out = empty();
        assert_eq!(ctx.read_faults(&mut out), 1);
        let old_cookie = out[0].cookie;
        // A stall filed by the event interrupt and not dispatched yet, and one whose record
        // is still unread when translation goes off.
        r.sm.translate(SID_A, None, 0x6000, Access::WRITE)
            .unwrap_err();
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        r.sm.translate(SID_A, None, 0x8000, Access::WRITE)
            .unwrap_err();
        r.smmu.disable().unwrap();
        assert!(r.sm.stalled().is_empty(), "SMMUEN cleared: all terminated");
        // The event interrupt runs while translation is off.
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        r.smmu.enable().unwrap();
        let new =
            r.sm.translate(SID_A, None, 0x9000, Access::WRITE)
                .unwrap_err()
                .stag
                .unwrap();
        assert_eq!(new, old, "the SMMU gave the new stall an old STAG");
        // Only the new stall is handed out (the unit's book then holds a record of the same
        // stream and STAG again).
        assert_eq!(event_interrupt(r, &ctx), (1, 0));
        // The late answer to the old stall: refused, nothing sent.
        let resumes = r.sm.stats().commands_of(op::RESUME);
        assert!(matches!(
            ctx.respond_fault(old_cookie, ResponseCode::Invalid),
            Err(Error::Iommu(IommuError::NotOutstanding { .. }))
        ));
        assert_eq!(r.sm.stats().commands_of(op::RESUME), resumes);
        assert_eq!(r.sm.stalled().len(), 1, "the new stall is still held");
        // The new stall's own answer resumes it.
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(
            (out[0].fault.addr, out[0].fault.kind),
            (0x9000, FaultKind::Stall { stag: new })
        );
        ctx.map(io, Iova::new(0x9000), PhysAddr::new(PA), K4, RW)
            .unwrap();
        ctx.respond_fault(out[0].cookie, ResponseCode::Success)
            .unwrap();
        assert_eq!(
            r.sm.stall_outcomes().last().map(|o| o.end),
            Some(StallEnd::Completed(PA))
        );
        ctx.detach(dev).unwrap();
    })
}

#[test]
fn smmu_reenable_drops_the_contexts_partial_groups() {
    // A group whose last request had not come when SMMUEN was cleared never completes: the
    // endpoint's PRI is re-initialised before the re-enable (IHI 0070 §6.3.9.6). The context
    // kept its requests as a partial group, holding their records for ever (the dispatch drops
    // a unit's partial groups only when a drain reports an overflow, and one did only when it
    // dropped requests from the PRI queue, here empty).
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (ctx, dev, _io) = attached(r);
        let mut out = empty();
        // MAX_FAULTS partial records of group 3: the context's queue is full.
        for k in 0..iommu_engine::ioasid::MAX_FAULTS as u64 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000 * (k + 1), 3, false)),
                PriOutcome::Queued
            );
            if k % 32 == 31 {
                let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
                assert_eq!((d.queued, d.refused), (32, 0));
            }
        }
        assert_eq!(ctx.read_faults(&mut out), 0, "partial: nothing readable");
        r.smmu.disable().unwrap();
        r.smmu.enable().unwrap();
        // The PRI interrupt of the re-enabled unit: nothing queued yet.
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert!(d.unit_overflow, "the dead partial group was not reported");
        // The re-initialised device's group 3 finds room, and alone.
        assert_eq!(
            r.sm.page_request(request(None, 0x9000, 3, true)),
            PriOutcome::Queued
        );
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        assert_eq!(
            (d.queued, d.refused),
            (1, 0),
            "the dead partial group held the context's queue"
        );
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.addr, 0x9000);
        ctx.respond_fault(out[0].cookie, ResponseCode::Invalid)
            .unwrap();
        ctx.detach(dev).unwrap();
    })
}

/// Reads every readable fault of `ctx` (they stay outstanding) and returns how many.
fn read_all(ctx: &IoasidCtx<'_, '_, Arena>) -> usize {
    let mut out = [QueuedFault {
        unit: 0,
        fault: PageFault::EMPTY,
        cookie: FaultCookie(0),
    }; 128];
    ctx.read_faults(&mut out)
}

#[test]
fn smmu_context_that_never_answers_does_not_starve_the_others() {
    // A context that never answers its faults held every one of the unit's records of faults
    // awaiting an answer (64): the unit handed out nothing more and left the PRI queue
    // undrained, so every other device's requests waited (then overflowed) and the dispatch
    // went round for nothing. Each stream may hold a share of the records; past it, the unit
    // answers what it cannot hand out itself (Invalid Request) and keeps draining.
    with_rig(VtdSetup::scalable(), pri(8), |r| {
        let (ctx, dev, _io) = attached(r);
        let other = IoasidCtx::new(r.reg, r.arena, 2);
        other.fault_queue_alloc();
        let dev_b = other.bind(smmu_dev(SID_B), false).unwrap();
        let io_b = other.alloc(IoasidFlags::empty()).unwrap();
        other.attach(dev_b, io_b).unwrap();
        let both = [&ctx, &other];
        for g in 0..100u16 {
            assert_eq!(
                r.sm.page_request(request(None, 0x1000, g, true)),
                PriOutcome::Queued
            );
        }
        let d = dispatch_page_faults(SMMU, r.smmu, &both).unwrap();
        let kept = read_all(&ctx);
        assert_eq!(
            kept,
            iommu_engine::smmuv3::page_faults::STREAM_QUOTA,
            "SID_A's share"
        );
        assert_eq!(d.queued as usize, kept);
        // The rest were answered Invalid Request at once: the device is not left waiting.
        let answered = r.sm.pri_responses();
        assert_eq!(answered.len(), 100 - kept);
        assert!(answered
            .iter()
            .all(|p| p.code == 1 && p.expected && !p.automatic));
        // Another device's request is handed to its context at once, again and again.
        for g in 0..100u16 {
            let mut req = request(None, 0x2000, g % 512, true);
            req.sid = SID_B;
            assert_eq!(r.sm.page_request(req), PriOutcome::Queued);
            // SID_A goes on asking too.
            assert_eq!(
                r.sm.page_request(request(None, 0x3000, 100 + g, true)),
                PriOutcome::Queued
            );
            let d = dispatch_page_faults(SMMU, r.smmu, &both).unwrap();
            assert_eq!((d.queued, d.unit_overflow), (1, false), "round {g}");
            let mut out = empty();
            assert_eq!(other.read_faults(&mut out), 1);
            other
                .respond_fault(out[0].cookie, ResponseCode::Success)
                .unwrap();
        }
        assert_eq!(
            read_all(&ctx),
            0,
            "SID_A's context holds its share, no more"
        );
        assert_eq!(r.sm.pri_responses().len(), 100 - kept + 2 * 100);
        ctx.detach(dev).unwrap();
        other.detach(dev_b).unwrap();
    })
}

#[test]
fn smmu_stalls_past_a_streams_share_are_aborted() {
    // The share holds for stalls too: once a stream's context holds STREAM_QUOTA stalls
    // unanswered, its further stalls are aborted by the drain (CMD_RESUME Abort), not handed
    // out, and the transactions are not left held.
    use iommu_engine::smmuv3::page_faults::STREAM_QUOTA;
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, true);
        for k in 0..STREAM_QUOTA as u64 + 4 {
            r.sm.translate(SID_A, None, 0x10_0000 + k * K4, Access::WRITE)
                .unwrap_err();
        }
        assert_eq!(event_interrupt(r, &ctx), (STREAM_QUOTA as u32, 0));
        assert_eq!(r.sm.stalled().len(), STREAM_QUOTA);
        let ends = r.sm.stall_outcomes();
        assert_eq!(ends.len(), 4);
        assert!(ends.iter().all(|o| o.end == StallEnd::Aborted));
        assert_eq!(r.smmu.faults_refused(), 4);
        assert_eq!(read_all(&ctx), STREAM_QUOTA);
        ctx.detach(dev).unwrap();
        assert!(r.sm.stalled().is_empty());
    })
}

/// Review finding F1 on the PRI queue: a page request the device raised before its detach,
/// still in the PRI queue when the device is attached in another context, never reaches that
/// context; it is answered Invalid Request (`CMD_PRI_RESP`), and a request raised after the
/// attach is the second context's.
#[test]
fn smmu_a_page_request_raised_before_the_detach_never_reaches_the_next_owner() {
    with_rig(VtdSetup::scalable(), pri(7), |r| {
        let (first, dev, _io) = attached(r);
        assert_eq!(
            r.sm.page_request(request(None, 0x5000, 3, true)),
            PriOutcome::Queued
        );
        first.detach(dev).unwrap();
        first.unbind(dev).unwrap();
        let second = IoasidCtx::new(r.reg, r.arena, 1);
        second.fault_queue_alloc();
        let dev2 = second.bind(smmu_dev(SID_A), false).unwrap();
        let io2 = second.alloc(IoasidFlags::empty()).unwrap();
        second.attach(dev2, io2).unwrap();
        let d = dispatch_page_faults(SMMU, r.smmu, &[&first, &second]).unwrap();
        let mut out = empty();
        assert_eq!(
            second.read_faults(&mut out),
            0,
            "the first owner's request reached the second: {:?}",
            out[0]
        );
        assert_eq!((d.queued, d.refused, d.quarantined), (0, 1, 1));
        let responses = r.sm.pri_responses();
        assert_eq!(responses.len(), 1);
        assert_eq!((responses[0].group, responses[0].code), (3, 1));
        assert_eq!(r.reg.quarantines(), 0, "the drain passed the fence");
        r.sm.page_request(request(None, 0x6000, 4, true));
        let d = dispatch_page_faults(SMMU, r.smmu, &[&first, &second]).unwrap();
        assert_eq!((d.queued, d.refused), (1, 0));
        assert_eq!(second.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.addr, 0x6000);
        second.detach(dev2).unwrap();
    })
}

/// Review finding F1 for stalls: a transaction that stalled while the device was attached to
/// one IOASID, filed by the event interrupt, is not handed to the context as a fault of the
/// IOASID the device is attached to now (a replace keeps the stream's stalls: only its last
/// attachment leaving terminates them); it is aborted (`CMD_RESUME` Abort).
#[test]
fn smmu_a_stall_from_before_a_replace_never_reaches_the_new_attachment() {
    with_rig(VtdSetup::scalable(), stalls(), |r| {
        let (ctx, dev, _io) = attached_stall(r, true);
        let f =
            r.sm.translate(SID_A, None, 0x5000, Access::WRITE)
                .unwrap_err();
        let stag = f.stag.expect("the transaction stalls");
        let _ = r.smmu.handle_events(usize::MAX, |_| {});
        let io2 = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io2).unwrap();
        let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).unwrap();
        let mut out = empty();
        assert_eq!(
            ctx.read_faults(&mut out),
            0,
            "the old attachment's stall reached the new one: {:?}",
            out[0]
        );
        assert_eq!((d.queued, d.refused, d.quarantined), (0, 1, 1));
        let ends = r.sm.stall_outcomes();
        assert_eq!(ends.len(), 1);
        assert_eq!(
            (ends[0].stalled.stag, ends[0].end),
            (stag, StallEnd::Aborted)
        );
        assert_eq!(r.reg.quarantines(), 0, "the drain passed the fence");
        // A transaction that stalls now is the new attachment's.
        r.sm.translate(SID_A, None, 0x6000, Access::WRITE)
            .unwrap_err();
        assert_eq!(event_interrupt(r, &ctx), (1, 0));
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(out[0].fault.addr, 0x6000);
        ctx.detach(dev).unwrap();
    })
}
