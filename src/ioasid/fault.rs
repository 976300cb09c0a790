//! I/O page faults of a context's devices, as iommufd's fault object gives them to a VMM
//! (`IOMMU_FAULT_QUEUE_ALLOC`, `struct iommu_hwpt_pgfault`, `struct iommu_hwpt_page_response`;
//! Linux `drivers/iommu/iommufd/eventq.c`). The queue itself is [`crate::iopf::FaultQueue`].
//!
//! Flow: the embedder's fault thread calls [`dispatch_page_faults`] for a unit whose page
//! request (or stall) interrupt fired; each fault goes to the context whose device (RID, or
//! (device, PASID)) is attached and whose queue is open; the context's owner reads them
//! ([`IoasidCtx::read_faults`]), makes the pages present (maps them) and answers each group
//! ([`IoasidCtx::respond_fault`]), which the unit sends to the device (VT-d page group
//! response, SMMUv3 `CMD_PRI_RESP` / `CMD_RESUME`). Nothing is left unanswered: a fault no
//! context takes (no owner, queue closed or full) is answered Invalid at once, and detaching a
//! device or PASID (or attaching the device, or the PASID, to another IOASID, when the books
//! switch: the unit confirming it or leaving it unsettled) answers its faults with Invalid, as
//! `iommufd_auto_response_faults` does, under the context's write lock: no fault of it is
//! queued once that returns, and an answer to one of its old cookies is refused.

use super::ctx::State;
use super::quarantine::DispatchTicket;
use super::registry::{DeviceLabel, Registry, UnitId};
use super::{Error, IoasidCtx};
use crate::iommu::{Iommu, Pasid};
use crate::iopf::{FaultDrain, FaultError, PageFault, QueuedFault, ResponseCode};
use crate::mem::PageAllocator;

/// Fault records one context's queue holds (partial groups, readable and outstanding ones).
pub const MAX_FAULTS: usize = 64;

/// What [`dispatch_page_faults`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Dispatched {
    /// Faults queued in a context.
    pub queued: u32,
    /// Faults no context took (no owner, queue closed or full), answered Invalid when they
    /// needed an answer.
    pub refused: u32,
    /// Answers to refused faults that the unit did not take (its queue failed): the device may
    /// wait until its own timeout.
    pub unanswered: u32,
    /// Of `refused`: faults raised for an attachment a detach (or a move elsewhere) ended
    /// before they were drained or routed (`quarantine.rs`), answered Invalid.
    pub quarantined: u32,
    /// The unit reported that it lost requests before this drain (its own queue overflowed).
    pub unit_overflow: bool,
}

/// Drains `unit`'s page requests and stall events and routes each to the context among
/// `contexts` that takes it; a fault none takes is answered Invalid. After the unit reports
/// that its own queue overflowed, the contexts' partial groups from it are dropped (their last
/// requests may be lost; the device asks again). Call it from the
/// embedder's thread for the unit's page request (VT-d) or PRI queue / event (SMMUv3)
/// interrupt.
///
/// # Errors
/// [`Error::NoSuchUnit`]; [`Error::Iommu`] when the unit has no page faults enabled.
pub fn dispatch_page_faults<A: PageAllocator>(
    unit_id: UnitId,
    unit: &dyn Iommu,
    contexts: &[&IoasidCtx<'_, '_, A>],
) -> Result<Dispatched, Error> {
    dispatch_page_faults_with(unit_id, unit, contexts.len(), |i| contexts.get(i).copied())
}

/// As [`dispatch_page_faults`], over `n` contexts that `context(i)` gives (`None`: skipped):
/// for callers that hold contexts in something other than a slice (the C ABI).
///
/// # Errors
/// As [`dispatch_page_faults`].
pub fn dispatch_page_faults_with<'c, 'r: 'c, 'a: 'r, A: PageAllocator + 'a>(
    unit_id: UnitId,
    unit: &dyn Iommu,
    n: usize,
    context: impl Fn(usize) -> Option<&'c IoasidCtx<'r, 'a, A>>,
) -> Result<Dispatched, Error> {
    // Every context of the unit shares one registry (`Registry::new`'s contract), which holds
    // the quarantines of what detaches left behind.
    let registry = (0..n).find_map(&context).map(|c| c.registry);
    let ticket = registry.map(|reg| enter_dispatch(reg, unit_id, unit));
    let mut d = Dispatched::default();
    let r = dispatch_rounds(unit_id, unit, n, &context, registry, &mut d);
    if let (Some(reg), Some(ticket)) = (registry, ticket) {
        reg.dispatch_leave(unit_id, ticket);
    }
    let overflow = r?;
    d.unit_overflow = overflow;
    if overflow {
        for c in (0..n).filter_map(&context) {
            c.faults.lock().discard_partial(unit_id.0);
        }
    }
    Ok(d)
}

/// Counts a dispatch of `unit` in; when a detach got no fence from the unit, takes one now:
/// later, so it covers what the detaches before this dispatch entered left (bounded wait; on
/// failure everything of the pair is refused until a later dispatch gets one). Not inlined:
/// its frame then sits beside the drains', not under them (the C ABI's stack bound,
/// `tests/linux_module.rs`).
#[inline(never)]
fn enter_dispatch(reg: &Registry<'_>, unit_id: UnitId, unit: &dyn Iommu) -> DispatchTicket {
    let (ticket, fence_unknown) = reg.dispatch_enter(unit_id);
    if fence_unknown {
        if let Ok(Some(fence)) = unit.page_fault_fence() {
            reg.dispatch_fence(unit_id, fence, ticket);
        }
    }
    ticket
}

/// The drains of one dispatch, each batch routed before the next drain; returns whether the
/// unit reported an overflow. Inlined into its one caller: a frame of its own under the
/// caller's put `ie_registry_dispatch_faults` 48 bytes over the C ABI's stack bound
/// (`tests/linux_module.rs`: 2,096 bytes).
#[inline(always)]
fn dispatch_rounds<'c, 'r: 'c, 'a: 'r, A: PageAllocator + 'a>(
    unit_id: UnitId,
    unit: &dyn Iommu,
    n: usize,
    context: &impl Fn(usize) -> Option<&'c IoasidCtx<'r, 'a, A>>,
    registry: Option<&Registry<'_>>,
    d: &mut Dispatched,
) -> Result<bool, Error> {
    let mut batch = [PageFault::EMPTY; DISPATCH_BATCH];
    let mut overflow = false;
    // Bounded: each round takes a batch; a unit's queue holds at most 2^19 entries, and the
    // rounds stop at the first batch that leaves nothing behind.
    for _ in 0..DISPATCH_ROUNDS {
        let drain = drain_once(unit, &mut batch)?;
        overflow |= drain.overflow;
        for fault in batch.iter().take(drain.reported) {
            route(unit_id, unit, fault, n, context, registry, d);
        }
        // Only now, every fault drained so far routed: a quarantine the drain passed ends.
        if let Some(reg) = registry {
            reg.dispatch_passed(unit_id, drain.reached);
        }
        if !drain.more {
            break;
        }
    }
    Ok(overflow)
}

/// Faults taken from a unit per drain call.
const DISPATCH_BATCH: usize = 8;
/// Most drain calls per dispatch (a call then returns with faults left; call it again).
const DISPATCH_ROUNDS: usize = 256;

/// One drain of `unit` into `batch`. Not inlined: the unit's method is then called straight
/// from the argument, never from a pointer kept across the loop, which the C ABI's stack check
/// (`tests/linux_module.rs`) could only take as reaching every method of every unit.
#[inline(never)]
fn drain_once(unit: &dyn Iommu, batch: &mut [PageFault]) -> Result<FaultDrain, Error> {
    Ok(unit.drain_page_faults(batch)?)
}

/// Queues `fault` in the first context that takes it, or answers it Invalid. Not inlined, as
/// [`drain_once`].
#[inline(never)]
fn route<'c, 'r: 'c, 'a: 'r, A: PageAllocator + 'a>(
    unit_id: UnitId,
    unit: &dyn Iommu,
    fault: &PageFault,
    n: usize,
    context: &impl Fn(usize) -> Option<&'c IoasidCtx<'r, 'a, A>>,
    registry: Option<&Registry<'_>>,
    d: &mut Dispatched,
) {
    // `report_fault` refuses it too; asked first to count it.
    let quarantined = registry.is_some_and(|reg| reg.quarantined(unit_id, fault));
    if !quarantined
        && (0..n)
            .filter_map(context)
            .any(|c| c.report_fault(unit_id, *fault).is_ok())
    {
        d.queued += 1;
        return;
    }
    d.refused += 1;
    d.quarantined += u32::from(quarantined);
    if fault.needs_response() {
        let response = fault.response(ResponseCode::Invalid);
        if unit.page_response(&response).is_err() {
            // Nobody sends it again: the unit must not keep owing it.
            unit.page_response_abandon(&response);
            d.unanswered += 1;
        }
    }
}

impl<A: PageAllocator> IoasidCtx<'_, '_, A> {
    /// Opens the context's fault queue (iommufd `IOMMU_FAULT_QUEUE_ALLOC`): from now on the I/O
    /// page faults of its attached devices are queued here, up to [`MAX_FAULTS`] records.
    /// Opening it again changes nothing.
    pub fn fault_queue_alloc(&self) {
        self.faults.lock().open();
    }

    /// Queues `fault`, which `unit` reported, if it is this context's: its device bound here
    /// and attached (for a fault with a PASID: that PASID attached).
    ///
    /// # Errors
    /// [`Error::Fault`]: [`FaultError::NotRouted`] (not this context's), [`FaultError::NoQueue`],
    /// [`FaultError::QueueFull`] (counted in [`faults_overflowed`](Self::faults_overflowed)).
    /// The caller then answers the fault if it needs it ([`dispatch_page_faults`] does).
    pub fn report_fault(
        &self,
        unit: UnitId,
        fault: PageFault,
    ) -> Result<crate::iopf::FaultCookie, Error> {
        let st = self.state.read();
        let label = DeviceLabel {
            unit,
            id: fault.device,
        };
        let not_routed = Error::Fault(FaultError::NotRouted {
            device: fault.device,
            pasid: fault.pasid,
        });
        // A fault raised for an attachment that is gone is no context's, the one the device
        // is attached in now included (the detach quarantined it before any later attach,
        // which this read lock orders before this check).
        if !self.routes(&st, label, fault.pasid) || self.registry.quarantined(unit, &fault) {
            return Err(not_routed);
        }
        let mut q = self.faults.lock();
        if !q.is_open() {
            return Err(Error::Fault(FaultError::NoQueue));
        }
        q.push(unit.0, fault)
            .map_err(|_| Error::Fault(FaultError::QueueFull))
    }

    /// Whether the faults of `label` (with `pasid`) are this context's: the device bound here
    /// and attached (with a PASID: that PASID attached).
    fn routes(&self, st: &State<'_, A>, label: DeviceLabel, pasid: Option<Pasid>) -> bool {
        let Some(slot) = st
            .devices
            .iter()
            .position(|d| d.as_ref().is_some_and(|d| d.label == label))
        else {
            return false;
        };
        match pasid {
            None => st.devices[slot]
                .as_ref()
                .is_some_and(|d| d.attached.is_some()),
            Some(p) => {
                let handle = st.device_handle_at(slot);
                st.pasid_attachments
                    .iter()
                    .flatten()
                    .any(|a| a.device == handle && a.pasid == p)
            }
        }
    }

    /// Moves up to `out.len()` readable faults, oldest first, into `out` and returns how many
    /// (iommufd: `read()` of the fault queue's file). Every fault of a page request group
    /// carries the group's cookie; answer the group once with it.
    pub fn read_faults(&self, out: &mut [QueuedFault]) -> usize {
        self.faults.lock().read(out)
    }

    /// Faults the queue could not hold since it was opened (each was answered Invalid).
    pub fn faults_overflowed(&self) -> u64 {
        self.faults.lock().overflowed()
    }

    /// Answers the fault group `cookie` names with `code` (iommufd: `write()` of a
    /// `struct iommu_hwpt_page_response`): the unit sends the device a page group response
    /// (VT-d), `CMD_PRI_RESP` or `CMD_RESUME` (SMMUv3). The group leaves the queue even when
    /// the unit fails to send it.
    ///
    /// # Errors
    /// [`Error::Fault`] with [`FaultError::NotOutstanding`] (answered already, not read, or
    /// unknown) or [`FaultError::NotOwned`] (another context's cookie), nothing changed;
    /// [`FaultError::NotRouted`]: the group's device (or PASID) is no longer attached here
    /// (its detach answered it; after an unbind the device may be another context's): nothing
    /// is sent, the group leaves the queue and the unit is told it will not be sent
    /// ([`Iommu::page_response_abandon`](crate::iommu::Iommu::page_response_abandon)). No call
    /// of this crate leaves such a group (each that ends a routing answers the faults under
    /// the write lock this call's read lock excludes): a defence, not a path;
    /// [`Error::Iommu`] if the unit did not take the response: the group stays outstanding
    /// (answer it again) when the unit says it still owes it
    /// ([`Iommu::page_response_owed`](crate::iommu::Iommu::page_response_owed): SMMUv3, whose
    /// command never reached the command queue; VT-d, whose page group response never reached
    /// the invalidation queue), else it is gone from the queue (the device has the answer, or
    /// waits for its own time-out).
    pub fn respond_fault(
        &self,
        cookie: crate::iopf::FaultCookie,
        code: ResponseCode,
    ) -> Result<(), Error> {
        // The queue's lock is held over the unit's call (lock order: the state, the fault
        // queue, then the unit's), so a concurrent answer or detach sees the group either
        // still owed or gone, never in between; the state's read lock keeps the device
        // attached until the answer is sent (a detach answers under the write lock).
        let st = self.state.read();
        let mut faults = self.faults.lock();
        let (unit, response) = faults.outstanding(cookie, code).map_err(Error::Fault)?;
        let label = DeviceLabel {
            unit: UnitId(unit),
            id: response.device,
        };
        if !self.routes(&st, label, response.pasid) {
            let _ = faults.respond(cookie, code);
            // Nobody sends it now: the unit must not keep owing it (an SMMUv3 record would
            // hold a place of the stream's `STREAM_QUOTA` for the unit's life).
            if let Ok(u) = self.unit(label.unit) {
                u.page_response_abandon(&response);
            }
            return Err(Error::Fault(FaultError::NotRouted {
                device: response.device,
                pasid: response.pasid,
            }));
        }
        let unit = match self.unit(UnitId(unit)) {
            Ok(u) => u,
            Err(e) => {
                let _ = faults.respond(cookie, code);
                return Err(e);
            }
        };
        let r = unit.page_response(&response);
        if r.is_ok() || !unit.page_response_owed(&response) {
            let _ = faults.respond(cookie, code);
        }
        Ok(r?)
    }

    /// Quarantines the faults `label` (with `pasid`) raised before now, once its attachment
    /// is gone from the unit (detached, or moved to another domain): those still in the
    /// unit's queue or in a dispatcher's batch go to no context, the next owner's included,
    /// and are answered Invalid (`quarantine.rs`). The unit's fence waits for the unit only
    /// (bounded), never for a dispatcher; without one (the wait failed) the pair's faults are
    /// refused until a dispatch gets one. Not inlined, as [`Self::answer_faults_of`].
    #[inline(never)]
    pub(super) fn quarantine_faults_of(&self, label: DeviceLabel, pasid: Option<Pasid>) {
        let Ok(unit) = self.unit(label.unit) else {
            return;
        };
        match unit.page_fault_fence() {
            Ok(None) => {}
            Ok(Some(fence)) => self.registry.quarantine(label, pasid, Some(fence)),
            Err(_) => self.registry.quarantine(label, pasid, None),
        }
    }

    /// Answers Invalid every fault of `label` (with `pasid`; `None`: the RID's own) the queue
    /// holds, read or not, before the device or PASID is detached. Returns how many groups
    /// were answered; an answer the unit does not take is given up (the device then waits for
    /// its own timeout, and the unit no longer owes it: `Iommu::page_response_abandon`), since
    /// the detach must go on. Not inlined: its lock guard and closures
    /// are not in the frame of the detach that goes on to call the unit (the kernel-stack bound
    /// of the C ABI).
    #[inline(never)]
    pub(super) fn answer_faults_of(&self, label: DeviceLabel, pasid: Option<Pasid>) -> usize {
        let unit = self.unit(label.unit).ok();
        self.faults.lock().answer_matching(
            ResponseCode::Invalid,
            |u, f| u == label.unit.0 && f.device == label.id && f.pasid == pasid,
            |_, response| {
                if let Some(unit) = unit {
                    if unit.page_response(&response).is_err() {
                        unit.page_response_abandon(&response);
                    }
                }
            },
        )
    }
}
