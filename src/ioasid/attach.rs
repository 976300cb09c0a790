//! Attaching devices and (device, PASID) pairs to IOASIDs; the hardware domains behind them.

use super::ctx::{Ioasid, IoasidCtx, PasidAttachment, State, UnitDomain};
use super::direct::unuse_device_direct_into;
use super::registry::UnitId;
use super::{
    keep_first, refuse_by, refuse_into, refuse_with, Attachment, DeviceHandle, DeviceLabel, Error,
    Incompatibility, IoasidFlags, IoasidId, MAX_DIRECT_REGIONS,
};
use crate::iommu::{self, DeviceId, DomainConfig, DomainHandle, Iommu, Missing, Pasid, Stage};
use crate::mem::{Iova, PageAllocator};
use crate::pgtable::{self, IovaRange, Leaf, Prot};

use super::record::RECORD_IAS;
use core::ops::ControlFlow;

/// Turns a unit's refusal (of a domain or of the attach itself: SMMUv3 refuses a stage-1
/// substream domain on a stream whose stage 2 differs) into the reason an attach is
/// incompatible, when it is one.
fn incompatible(device: DeviceHandle, e: iommu::Error) -> Error {
    match e {
        iommu::Error::Unsupported(m) => Error::Incompatible {
            device,
            reason: Incompatibility::Missing(m),
        },
        e => Error::from(e),
    }
}

/// [`refuse_into`] of [`incompatible`]`(device, e)`, `e` read where the caller holds it. A
/// failure's path, not inlined: the error is built here, not in the caller's frame.
#[cold]
#[inline(never)]
fn refuse_incompatible(r: &mut Result<(), Error>, device: DeviceHandle, e: &iommu::Error) -> bool {
    refuse_into(r, incompatible(device, *e))
}

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Attaches a device to an IOASID. If the device is attached elsewhere, its unit switches it
    /// to the new domain in one step where the hardware allows, and the old attachment ends:
    /// its I/O page faults still queued, read or not, are answered Invalid (as a detach's), also
    /// when the unit leaves the switch unsettled (below).
    ///
    /// The IOASID's hardware domain on the device's unit is reused; if there is none, one is
    /// built with the attributes the IOASID's flags fix, and the IOASID's mappings are copied
    /// into it.
    ///
    /// The device's direct regions ([`DirectRegion`](super::DirectRegion): RMRR, RMR) are
    /// mapped one-to-one in the IOASID, and reserved there, before the unit switches the
    /// device; they are released from its previous IOASID after (see `direct.rs`).
    ///
    /// # Errors
    /// [`Error::Incompatible`] naming what the unit lacks (snoop control, dirty tracking,
    /// nesting, address width, page size), the mapping it cannot take, or the direct region
    /// that collides ([`Incompatibility::DirectRegionCollides`]: with a mapping, a
    /// reservation, a reserved region, another device's region, or the destination range of a
    /// [`IoasidCtx::copy`] into `ioasid` in flight); [`Error::BeyondInputWidth`] for a direct
    /// region of the device reaching beyond the input width of a domain `ioasid` has (the
    /// narrowest is named); [`Error::UserOwned`] for a device with direct regions and a
    /// nested child `ioasid` (it maps nothing of its own); [`Error::Capacity`]
    /// (`"direct regions per IOASID"`): nothing changed. A failure after the direct regions
    /// were mapped unmaps them again; if a unit then does not confirm the invalidation, or
    /// cannot unmap a region it has just mapped, the call reports
    /// [`Error::InvalidationPending`] as a failed map does (another call's `Ok` settles no
    /// leftover mapping), and the device is not attached: a
    /// region whose own map was refused and left mapped stays in the record as a failed map's
    /// range does (an unmap of it lets it go); one taken before it that could not be unmapped
    /// (or whose unmap could not start, the invalidation owed failing again) stays a direct
    /// mapping without users, reserved, which the attach retried takes again.
    ///
    /// [`Error::Iommu`] with a unit fault ([`iommu::Error::is_unit_fault`]: a wait ran out, the
    /// unit reported an error): the unit may have made the device's entry present, so the
    /// attachment is kept, *unsettled* ([`IoasidCtx::attachment`]): the device is attached to
    /// `ioasid` in the books, and both `ioasid` and the IOASID it left keep their domain and the
    /// device's direct regions (the device may reach either). The same attach again settles it
    /// (then the old IOASID is released), or [`IoasidCtx::detach`] tears it down; until then,
    /// attaching the device elsewhere fails with [`Error::Busy`].
    pub fn attach(&self, device: DeviceHandle, ioasid: IoasidId) -> Result<(), Error> {
        // The one `Result` of the attach, which each step puts its errors into: the return
        // value itself, not a copy in the frames over the units' maps and flushes (the
        // kernel-stack bound of the C ABI).
        let mut r = Ok(());
        self.attach_into(device, ioasid, &mut r);
        r
    }

    /// [`IoasidCtx::attach`] with its error in `r`, which the caller passes `Ok`. Inlined in
    /// its callers (attach, the C ABI's attach): `r` is theirs, not a copy in a frame of its
    /// own over the maps and flushes.
    #[inline(always)]
    pub(crate) fn attach_into(
        &self,
        device: DeviceHandle,
        ioasid: IoasidId,
        r: &mut Result<(), Error>,
    ) {
        let mut left = None;
        self.attach_locked(device, ioasid, &mut left, r);
        self.reclaim_after_attach(ioasid, left);
    }

    /// Undone direct mappings may leave empty tables in the IOASID attached to, and those the
    /// device left in the IOASID it `left`: reclaimed like a failed map's. In a frame of its
    /// own, beside the attach.
    #[inline(never)]
    fn reclaim_after_attach(&self, ioasid: IoasidId, left: Option<IoasidId>) {
        for io in [Some(ioasid), left].into_iter().flatten() {
            self.reclaim_if_due(io);
        }
    }

    /// Where a device (`pasid` `None`) or one of its PASIDs is attached in the context's
    /// books, and whether the unit confirmed it.
    ///
    /// # Errors
    /// [`Error::NoSuchDevice`].
    pub fn attachment(
        &self,
        device: DeviceHandle,
        pasid: Option<Pasid>,
    ) -> Result<Option<Attachment>, Error> {
        let st = self.state.read();
        let dev = st.device(device)?;
        Ok(match pasid {
            None => dev.attached.map(|ioasid| Attachment {
                ioasid,
                unsettled: dev.unsettled,
            }),
            Some(p) => st
                .pasid_attachments
                .iter()
                .flatten()
                .find(|a| a.device == device && a.pasid == p)
                .map(|a| Attachment {
                    ioasid: a.ioasid,
                    unsettled: a.unsettled,
                }),
        })
    }

    /// [`IoasidCtx::attach`] under the context's write lock, its error in `r` (passed `Ok`);
    /// sets `left` to the IOASID the device left. Each step runs in a frame of its own, beside
    /// the others, and puts its error into `r` (the kernel-stack bound: ARCHITECTURE.md
    /// "Stack"): this frame holds the lock and a few handles, no `Result` of this layer.
    #[inline(never)]
    fn attach_locked(
        &self,
        device: DeviceHandle,
        ioasid: IoasidId,
        left: &mut Option<IoasidId>,
        r: &mut Result<(), Error>,
    ) {
        let mut st = self.state.write();
        // The refusals are built in `refuse_by`'s frame, not in this one over the steps.
        let Ok(dev) = st.device(device) else {
            refuse_by(r, || Error::NoSuchDevice(device));
            return;
        };
        let (label, old, unsettled) = (dev.label, dev.attached, dev.unsettled);
        let unit = label.unit;
        if let Some(previous) = unsettled {
            // Only the attach the unit did not confirm may complete it.
            if old != Some(ioasid) {
                refuse_by(r, || Error::Busy);
                return;
            }
            let Some((handle, _)) = self.domain_for(&mut st, device, ioasid, unit, r) else {
                return;
            };
            if !self.settle_attach(&mut st, device, handle, r) {
                return;
            }
            if let Some(previous) = previous {
                self.leave_after_attach(&mut st, previous, unit, device);
            }
            *left = previous;
            return;
        }
        if old == Some(ioasid) {
            return;
        }
        if !self.check_direct_into(&st, device, ioasid, r)
            || !self.take_direct_into(&mut st, device, ioasid, r)
        {
            return;
        }
        let Some(built) = self.domain_for(&mut st, device, ioasid, unit, r) else {
            self.give_back_direct(&mut st, ioasid, device, r);
            return;
        };
        let switched = self.switch_device(&mut st, device, ioasid, built, r);
        if !switched && !st.device(device).is_ok_and(|d| d.attached == Some(ioasid)) {
            // Refused (the books do not name `ioasid`): what the attach took is given back,
            // from this frame.
            self.give_back_direct(&mut st, ioasid, device, r);
            return;
        }
        if old.is_some() {
            // Replaced in the books, confirmed or not (a unit fault leaves it unsettled): the
            // faults of the old attachment are answered now, as a detach's (iommufd's
            // replace, `iommufd_auto_response_faults`); none is queued for it any more under
            // the write lock, and a fault reported from now on is the new attachment's (the
            // retry that settles an unsettled one answers nothing).
            self.answer_faults_of(label, None);
            // After the unit's switch: what the old attachment raised and nobody routed yet
            // is no context's either.
            self.quarantine_faults_of(label, None);
        }
        if switched {
            if let Some(old) = old {
                self.leave_after_attach(&mut st, old, unit, device);
            }
            *left = old;
        }
    }

    /// The unit confirms the attach of `device` that it did not confirm before (to `handle`)
    /// (the caller then leaves the IOASID the device was leaving); the error in `r`, `false`.
    /// Not inlined: the `Result` is in this frame, beside the attach's others.
    #[inline(never)]
    fn settle_attach(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        handle: DomainHandle,
        r: &mut Result<(), Error>,
    ) -> bool {
        put_error(self.settle_attach_result(st, device, handle), r).is_some()
    }

    /// [`Self::settle_attach`] returning its error.
    #[inline(always)]
    fn settle_attach_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        handle: DomainHandle,
    ) -> Result<(), Error> {
        let dev = st.device(device)?;
        let label = dev.label;
        self.unit(label.unit)?
            .attach_device(label.id, None, handle, &dev.hints)
            .map_err(|e| incompatible(device, e))?;
        st.device_mut(device)?.unsettled = None;
        Ok(())
    }

    /// The unit switches `device` to `ioasid`'s domain (`handle`, and whether it was just
    /// `created`) and the books follow (the caller then leaves the IOASID the device left).
    /// On a refusal the books do not change (the caller gives back what the attach took).
    /// The error in `r`, `false`. Not inlined: the `Result` is in this frame.
    #[inline(never)]
    fn switch_device(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        built: (DomainHandle, bool),
        r: &mut Result<(), Error>,
    ) -> bool {
        put_error(self.switch_device_result(st, device, ioasid, built), r).is_some()
    }

    /// [`Self::switch_device`] returning its error.
    #[inline(always)]
    fn switch_device_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        (handle, created): (DomainHandle, bool),
    ) -> Result<(), Error> {
        let dev = st.device(device)?;
        let (label, old) = (dev.label, dev.attached);
        if let Err(e) = self
            .unit(label.unit)?
            .attach_device(label.id, None, handle, &dev.hints)
        {
            if e.is_unit_fault() {
                // The entry may be present: the device may reach the new domain (and, through
                // cached entries, the old one). Both stay held until the attachment settles.
                self.add_user(st, ioasid, label.unit);
                let dev = st.device_mut(device)?;
                dev.attached = Some(ioasid);
                dev.unsettled = Some(old);
                return Err(e.into());
            }
            if created {
                self.drop_created_domain(st, ioasid, label.unit);
            }
            return Err(incompatible(device, e));
        }
        self.add_user(st, ioasid, label.unit);
        st.device_mut(device)?.attached = Some(ioasid);
        Ok(())
    }

    /// [`Self::leave`] after an attach, its error dropped (an unmap not confirmed stays owed
    /// by the IOASID). Not inlined: its `Result` is not in the attach's frame.
    #[inline(never)]
    fn leave_after_attach(
        &self,
        st: &mut State<'a, A>,
        ioasid: IoasidId,
        unit: UnitId,
        device: DeviceHandle,
    ) {
        let _ = self.leave(st, ioasid, unit, device);
    }

    /// `device` no longer reaches `ioasid`: its direct regions there may go (an unmap not
    /// confirmed stays owed by the IOASID, settled by its next call), and its domain user.
    fn leave(
        &self,
        st: &mut State<'a, A>,
        ioasid: IoasidId,
        unit: UnitId,
        device: DeviceHandle,
    ) -> Result<(), Error> {
        let dropped = self.drop_device_direct(st, ioasid, device, MAX_DIRECT_REGIONS);
        self.release_domain(st, ioasid, unit);
        dropped
    }

    /// Undoes `take_direct_into` after a failed attach; the error to report is left in `r`:
    /// the attach's, or the invalidation the undo left owed in its place. Not inlined: the
    /// attach's frame stays small above the other steps.
    #[cold]
    #[inline(never)]
    fn give_back_direct(
        &self,
        st: &mut State<'a, A>,
        ioasid: IoasidId,
        device: DeviceHandle,
        r: &mut Result<(), Error>,
    ) {
        if let Err(p @ Error::InvalidationPending { .. }) =
            self.drop_device_direct(st, ioasid, device, MAX_DIRECT_REGIONS)
        {
            *r = Err(p);
        }
    }

    /// Detaches a device: its DMA is blocked, its configuration and TLB entries invalidated.
    ///
    /// # Errors
    /// [`Error::NotAttached`] (and nothing left owed by an earlier detach); unit errors: the
    /// device then stays attached in the context's books, and a retry completes the detach (a
    /// unit that no longer knows the attachment counts as detached).
    ///
    /// Once the unit blocked the device, the device is detached in the books whatever follows;
    /// if unmapping its direct regions (or reclaiming the tables they used) then fails --
    /// [`Error::InvalidationPending`]: unmapped everywhere, but a unit did not confirm the
    /// invalidation, or, if the invalidation the IOASID already owed could not be reissued
    /// first, not unmapped (the region stays as after another error); another error: the
    /// region stays mapped and reserved in the IOASID, without users -- the device records
    /// the IOASID, and `detach` called again settles it
    /// (reissues the invalidation, retries the unmap) and returns `Ok` once nothing is owed.
    /// Any later call on the IOASID (map, unmap, free, ...) settles the invalidation too. No
    /// such IOASID is forgotten: after detaches that left more than two (the device attached
    /// and detached again while the unit kept failing), the retry settles every IOASID of the
    /// context and returns `Ok` only once none owes anything.
    pub fn detach(&self, device: DeviceHandle) -> Result<(), Error> {
        // The one `Result` of the detach, which each step puts its errors into: the return
        // value itself, not a copy in a frame over the unmaps and flushes (the kernel-stack
        // bound of the C ABI).
        let mut r = Ok(());
        self.detach_into(device, &mut r);
        r
    }

    /// [`IoasidCtx::detach`] with its error in `r`, which the caller passes `Ok`. Inlined in
    /// its callers (detach, unbind, the context's drop, the C ABI's detach): `r` is theirs,
    /// not a copy in a frame of its own over the unmaps and flushes.
    #[inline(always)]
    pub(crate) fn detach_into(&self, device: DeviceHandle, r: &mut Result<(), Error>) {
        let touched = {
            let st = self.state.read();
            let dev = match st.device(device) {
                Ok(dev) => dev,
                Err(e) => {
                    *r = Err(e);
                    return;
                }
            };
            let [l0, l1] = dev.left_owing;
            [dev.attached, dev.unsettled.flatten(), l0, l1]
        };
        #[cfg(test)]
        super::tests::copy_pause("detach looked");
        self.detach_locked(device, r);
        self.reclaim_after_detach(device, touched, r);
    }

    /// The end of [`IoasidCtx::detach`]: unmapped direct regions may leave empty tables in
    /// the IOASIDs the device `touched`, reclaimed now. A reclaim whose invalidation is not
    /// confirmed is owed like the unmap's (noted, its error added to `r`), and the retry
    /// settles it. Not inlined: its locals are not in the frame over the detach's unmaps and
    /// flushes (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn reclaim_after_detach(
        &self,
        device: DeviceHandle,
        touched: [Option<IoasidId>; 4],
        r: &mut Result<(), Error>,
    ) {
        for io in touched.into_iter().flatten() {
            let mut reclaimed = Ok(());
            self.reclaim_when_due_into(io, &mut reclaimed);
            if let Err(e @ Error::InvalidationPending { .. }) = reclaimed {
                self.note_reclaim_owed(device, io, e, r);
            }
        }
    }

    /// A detach's reclaim in `io` left invalidation `e` owed: noted in the device's
    /// `left_owing` and kept in `r` (unless an earlier error is there), for the retry to settle.
    /// A failure's path, not inlined.
    #[cold]
    #[inline(never)]
    fn note_reclaim_owed(
        &self,
        device: DeviceHandle,
        io: IoasidId,
        e: Error,
        r: &mut Result<(), Error>,
    ) {
        let mut st = self.state.write();
        if let Ok(d) = st.device_mut(device) {
            // A device attached again (by another thread) settles it at its detach.
            if d.attached.is_none() {
                note_left(d, io);
                keep_first(r, e);
            }
        }
    }

    /// [`IoasidCtx::detach`] under the context's write lock, its error in `result` (passed
    /// `Ok`). Not inlined, nor are the steps that unmap (`settle_left`, `leave_noting`): their
    /// errors go straight into `result`, no `Result` of this layer is in the frames over their
    /// unmaps and flushes (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn detach_locked(&self, device: DeviceHandle, result: &mut Result<(), Error>) {
        let mut st = self.state.write();
        let label = match st.device(device) {
            Ok(dev) => dev.label,
            Err(e) => {
                *result = Err(e);
                return;
            }
        };
        // What an earlier detach left owed is settled first (what still fails stays noted).
        let earlier = self.settle_left(&mut st, device, result);
        let old = match st.device(device) {
            Ok(dev) => dev.attached,
            Err(e) => {
                *result = Err(e);
                return;
            }
        };
        let Some(old) = old else {
            if !earlier {
                *result = Err(Error::NotAttached(device));
            }
            return;
        };
        // Under the write lock no fault of the device is queued any more (`report_fault`
        // holds the read lock): its faults are answered now (iommufd_auto_response_faults),
        // nothing else will; a fault the unit takes from now on is no context's, answered by
        // `dispatch_page_faults` (or ended by the unit's detach). Answered before the write
        // lock, a fault reported in between stayed queued, its cookie answerable after the
        // detach. Before the unit's detach, which ends a stall the VMM read otherwise
        // (SMMUv3 `CMD_STALL_TERM`) rather than answering it, as `detach_pasid` does.
        self.answer_faults_of(label, None);
        if !self.unit_detach_into(label, result) {
            return;
        }
        // The unit no longer translates for it: what it raised before and nobody routed
        // yet (still in the unit's queue, or in a dispatcher's batch) is no context's,
        // whoever the device is attached in next (`quarantine.rs`).
        self.quarantine_faults_of(label, None);
        let dev = match st.device_mut(device) {
            Ok(dev) => dev,
            Err(e) => {
                *result = Err(e);
                return;
            }
        };
        let previous = dev.unsettled.take().flatten();
        dev.attached = None;
        // The device is blocked: its direct regions go with their last user, invalidated
        // before the domain (and its table pages) can be freed; so does what an unsettled
        // attach still held of the IOASID it was leaving. What fails is noted for the retry.
        for io in [Some(old), previous].into_iter().flatten() {
            self.leave_noting(&mut st, io, label.unit, device, result);
        }
    }

    /// Detaches `label` on its unit, as [`unit_detach`] does; on failure its error replaces
    /// what `result` held (what an earlier detach left owed), and `false`. Not inlined (see
    /// `detach_locked`); the error is built in [`detach_refused`].
    #[inline(never)]
    fn unit_detach_into(&self, label: DeviceLabel, result: &mut Result<(), Error>) -> bool {
        let Ok(unit) = self.unit(label.unit) else {
            return detach_refused(result, Error::NoSuchUnit(label.unit));
        };
        match unit.detach(label.id, None) {
            Ok(()) | Err(iommu::Error::NotAttached(_)) => true,
            Err(e) => detach_refused(result, e),
        }
    }

    /// [`Self::leave`] for a detach: what fails is noted in the device's `left_owing` for the
    /// retry, and its error kept in `result` unless an earlier one is. Not inlined (see
    /// `detach_locked`).
    #[inline(never)]
    fn leave_noting(
        &self,
        st: &mut State<'a, A>,
        ioasid: IoasidId,
        unit: UnitId,
        device: DeviceHandle,
        result: &mut Result<(), Error>,
    ) {
        // `leave`, its errors put straight into `result`.
        let failed = match unuse_device_direct_into(st, ioasid, device, MAX_DIRECT_REGIONS, result)
        {
            Some(io) => self.drop_unused_direct_into(io, result),
            None => true,
        };
        self.release_domain(st, ioasid, unit);
        if failed {
            // The device is there: the caller holds the write lock it found it under.
            if let Ok(d) = st.device_mut(device) {
                note_left(d, ioasid);
            }
        }
    }

    /// Settles what an earlier detach of `device` left owed (see [`IoasidCtx::detach`]):
    /// retries the unmap of direct regions left without users and reissues the invalidations
    /// each noted IOASID owes; the first error goes to `result` unless an earlier one is
    /// there. `false` if nothing was noted. Not inlined (see `detach_locked`).
    #[inline(never)]
    fn settle_left(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        result: &mut Result<(), Error>,
    ) -> bool {
        let Ok(dev) = st.device(device) else {
            return false;
        };
        let (left, more) = (dev.left_owing, dev.left_more);
        if left.iter().all(Option::is_none) && !more {
            return false;
        }
        let mut still = [None; 2];
        for (slot, io) in still.iter_mut().zip(left) {
            // An IOASID freed since: its free settled what was owed first.
            let Some(io) = io.filter(|io| st.ioasid(*io).is_ok()) else {
                continue;
            };
            if !self.settle_left_in(st, io, result) {
                *slot = Some(io);
            }
        }
        // More were left than the slots hold: every IOASID of the context is settled, and the
        // note kept until all of them owe nothing.
        let more = more && !self.settle_every_left(st, result);
        if let Ok(d) = st.device_mut(device) {
            d.left_owing = still;
            d.left_more = more;
        }
        true
    }

    /// Settles what a detach may have left owed in `io`: its direct mappings left without
    /// users, then the invalidations it owes; errors into `result` (unless an earlier one is
    /// there). `true` once nothing is left.
    fn settle_left_in(
        &self,
        st: &mut State<'a, A>,
        io: IoasidId,
        result: &mut Result<(), Error>,
    ) -> bool {
        match st.ioasid_mut(io) {
            Ok(i) => !self.drop_unused_direct_into(i, result) && self.settle_into(i, result),
            Err(e) => {
                keep_first(result, e);
                false
            }
        }
    }

    /// [`Self::settle_left_in`] for every IOASID of the context (for a device whose detaches
    /// left more owing than its slots note); `true` if every one settled. Bounded by the
    /// context's IOASID slots; not inlined (see `detach_locked`).
    #[cold]
    #[inline(never)]
    fn settle_every_left(&self, st: &mut State<'a, A>, result: &mut Result<(), Error>) -> bool {
        let mut settled = true;
        for i in 0..st.ioasids.len() {
            let Some(io) = st.ioasids[i].as_mut() else {
                continue;
            };
            settled &= !self.drop_unused_direct_into(io, result) && self.settle_into(io, result);
        }
        settled
    }

    /// Attaches a (device, PASID) pair to an IOASID allocated with [`IoasidFlags::PASID`]. The
    /// PASID must be held by this context.
    ///
    /// A pair attached elsewhere moves: its I/O page faults still queued are answered Invalid
    /// when the books switch (the unit confirming it or not), as [`IoasidCtx::attach`] answers
    /// the RID's.
    ///
    /// # Errors
    /// [`Error::PasidNotOwned`]; [`Error::Incompatible`] (not a PASID IOASID, PASID too wide for
    /// the unit, or as for [`IoasidCtx::attach`]); [`Error::Capacity`]. A unit fault leaves the
    /// pair attached, unsettled, as [`IoasidCtx::attach`] does.
    pub fn attach_pasid(
        &self,
        device: DeviceHandle,
        pasid: Pasid,
        ioasid: IoasidId,
    ) -> Result<(), Error> {
        // The one `Result` of the attach, which each step puts its errors into (as `attach`).
        let mut r = Ok(());
        self.attach_pasid_locked(device, pasid, ioasid, &mut r);
        r
    }

    /// [`IoasidCtx::attach_pasid`] under the context's write lock, its error in `r` (passed
    /// `Ok`). Each step in a frame of its own, beside the others, its error put into `r` (as
    /// `attach_locked`).
    #[inline(never)]
    fn attach_pasid_locked(
        &self,
        device: DeviceHandle,
        pasid: Pasid,
        ioasid: IoasidId,
        r: &mut Result<(), Error>,
    ) {
        let mut st = self.state.write();
        let Some((unit, existing)) = self.check_pasid_attach(&st, device, pasid, ioasid, r) else {
            return;
        };
        let recorded = existing.and_then(|i| st.pasid_attachments.get(i).copied().flatten());
        let old = recorded.map(|a| a.ioasid);
        if let (Some(i), Some(previous)) = (existing, recorded.and_then(|a| a.unsettled)) {
            // Only the attach the unit did not confirm may complete it.
            if old != Some(ioasid) {
                refuse_into(r, Error::Busy);
                return;
            }
            let Some((handle, _)) = self.domain_for(&mut st, device, ioasid, unit, r) else {
                return;
            };
            if !self.settle_pasid_attach(&mut st, device, (pasid, i), handle, r) {
                return;
            }
            if let Some(previous) = previous {
                self.release_domain(&mut st, previous, unit);
            }
            return;
        }
        if old == Some(ioasid) {
            return;
        }
        let Some(slot) = existing.or_else(|| st.pasid_attachments.iter().position(Option::is_none))
        else {
            refuse_into(r, Error::Capacity("PASID attachments"));
            return;
        };
        let Some(built) = self.domain_for(&mut st, device, ioasid, unit, r) else {
            return;
        };
        let switched = self.switch_pasid(&mut st, device, (pasid, slot), (ioasid, old), built, r);
        let Some(old) = old else {
            return;
        };
        let recorded = st.pasid_attachments.get(slot).copied().flatten();
        if !recorded.is_some_and(|a| a.ioasid == ioasid) {
            // Refused: the pair stays where it was, its faults with it.
            return;
        }
        // Moved in the books, confirmed or not: the pair's faults of the old attachment are
        // answered now, as `attach` answers the RID's (and `detach_pasid` the pair's).
        if let Ok(dev) = st.device(device) {
            let label = dev.label;
            self.answer_faults_of(label, Some(pasid));
            self.quarantine_faults_of(label, Some(pasid));
        }
        if switched {
            self.release_domain(&mut st, old, unit);
        }
    }

    /// What [`IoasidCtx::attach_pasid`] checks before anything changes; returns the device's
    /// unit and the slot of the pair's attachment, if it has one; the refusal in `r`, `None`.
    /// Not inlined: its `Result` and locals are in this frame, beside the attach's others.
    #[inline(never)]
    fn check_pasid_attach(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        pasid: Pasid,
        ioasid: IoasidId,
        r: &mut Result<(), Error>,
    ) -> Option<(UnitId, Option<usize>)> {
        put_error(self.pasid_attach_checks(st, device, pasid, ioasid), r)
    }

    /// [`Self::check_pasid_attach`] returning its refusal.
    #[inline(always)]
    fn pasid_attach_checks(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        pasid: Pasid,
        ioasid: IoasidId,
    ) -> Result<(UnitId, Option<usize>), Error> {
        if !st.pasids.contains(&Some(pasid)) {
            return Err(Error::PasidNotOwned(pasid));
        }
        let (label, hints) = st.device(device).map(|d| (d.label, d.hints))?;
        let io = st.ioasid(ioasid)?;
        // A nested child's PASIDs are the guest's first-stage address spaces.
        if !io.flags.contains(IoasidFlags::PASID) && io.nested.is_none() {
            return Err(Error::Incompatible {
                device,
                reason: Incompatibility::NotPasidCapable,
            });
        }
        let bits = pasid_bits(self.unit(label.unit)?);
        if bits == 0 || pasid.get() >> bits != 0 {
            let reason = Incompatibility::Missing(Missing::Pasid { bits });
            return Err(Error::Incompatible { device, reason });
        }
        // The device's own width, declared at bind (a device without PASID on a unit with).
        if let Some(bits) = hints.pasid_bits {
            if bits == 0 || pasid.get().checked_shr(bits).unwrap_or(0) != 0 {
                let reason = Incompatibility::DevicePasid { bits };
                return Err(Error::Incompatible { device, reason });
            }
        }
        let existing = st
            .pasid_attachments
            .iter()
            .position(|a| a.is_some_and(|a| a.device == device && a.pasid == pasid));
        Ok((label.unit, existing))
    }

    /// The unit confirms the attach of (`device`, PASID) -- recorded in slot `i` -- that it
    /// did not confirm before (to `handle`) (the caller then releases the IOASID the pair
    /// was leaving); the error in `r`, `false`. Not inlined: the `Result` is in this frame.
    #[inline(never)]
    fn settle_pasid_attach(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        at: (Pasid, usize),
        handle: DomainHandle,
        r: &mut Result<(), Error>,
    ) -> bool {
        put_error(self.settle_pasid_attach_result(st, device, at, handle), r).is_some()
    }

    /// [`Self::settle_pasid_attach`] returning its error.
    #[inline(always)]
    fn settle_pasid_attach_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        (pasid, i): (Pasid, usize),
        handle: DomainHandle,
    ) -> Result<(), Error> {
        let dev = st.device(device)?;
        let label = dev.label;
        self.unit(label.unit)?
            .attach_device(label.id, Some(pasid), handle, &dev.hints)
            .map_err(|e| incompatible(device, e))?;
        if let Some(a) = st.pasid_attachments.get_mut(i).and_then(Option::as_mut) {
            a.unsettled = None;
        }
        Ok(())
    }

    /// The unit switches (`device`, PASID) to `ioasid`'s domain (`handle`, and whether it was
    /// just `created`), recorded in attachment slot `slot` (the caller then releases the
    /// IOASID it left, `old`); the error in `r`, `false`. Not inlined: the `Result` is in this
    /// frame.
    #[inline(never)]
    fn switch_pasid(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        at: (Pasid, usize),
        (ioasid, old): (IoasidId, Option<IoasidId>),
        built: (DomainHandle, bool),
        r: &mut Result<(), Error>,
    ) -> bool {
        put_error(
            self.switch_pasid_result(st, device, at, ioasid, old, built),
            r,
        )
        .is_some()
    }

    /// [`Self::switch_pasid`] returning its error.
    #[inline(always)]
    fn switch_pasid_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        (pasid, slot): (Pasid, usize),
        ioasid: IoasidId,
        old: Option<IoasidId>,
        (handle, created): (DomainHandle, bool),
    ) -> Result<(), Error> {
        let dev = st.device(device)?;
        let label = dev.label;
        // After a unit fault the entry may be present: the pair stays attached, unsettled,
        // holding both domains (as `attach`).
        let fault =
            match self
                .unit(label.unit)?
                .attach_device(label.id, Some(pasid), handle, &dev.hints)
            {
                Ok(()) => None,
                Err(e) if e.is_unit_fault() => Some(e),
                Err(e) => {
                    if created {
                        self.drop_created_domain(st, ioasid, label.unit);
                    }
                    return Err(incompatible(device, e));
                }
            };
        self.add_user(st, ioasid, label.unit);
        if let Some(a) = st.pasid_attachments.get_mut(slot) {
            *a = Some(PasidAttachment {
                device,
                pasid,
                ioasid,
                unsettled: fault.map(|_| old),
            });
        }
        match fault {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Detaches a (device, PASID) pair.
    ///
    /// # Errors
    /// [`Error::NotAttached`]; unit errors: the pair then stays attached in the context's
    /// books, and a retry completes the detach.
    pub fn detach_pasid(&self, device: DeviceHandle, pasid: Pasid) -> Result<(), Error> {
        let mut st = self.state.write();
        let label = st.device(device)?.label;
        let slot = st
            .pasid_attachments
            .iter()
            .position(|a| a.is_some_and(|a| a.device == device && a.pasid == pasid))
            .ok_or(Error::NotAttached(device))?;
        let a = st.pasid_attachments[slot].ok_or(Error::NotAttached(device))?;
        self.answer_faults_of(label, Some(pasid));
        unit_detach(self.unit(label.unit)?, label.id, Some(pasid))?;
        // As `detach`: the pair's faults not routed yet are no context's.
        self.quarantine_faults_of(label, Some(pasid));
        st.pasid_attachments[slot] = None;
        self.release_domain(&mut st, a.ioasid, label.unit);
        if let Some(Some(previous)) = a.unsettled {
            self.release_domain(&mut st, previous, label.unit);
        }
        Ok(())
    }

    /// The IOASID's domain on `unit_id`, built and filled if it does not exist yet. Returns
    /// whether it was built (it then has no user yet); the error in `r` (passed `Ok`), `None`.
    /// No `Result` of this layer is in this frame over the fill's maps (the kernel-stack bound
    /// of the C ABI).
    ///
    /// A nested child's parent domain is built first (from this frame: not under the
    /// child's), then the child's.
    #[inline(never)]
    fn domain_for(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        unit_id: UnitId,
        r: &mut Result<(), Error>,
    ) -> Option<(DomainHandle, bool)> {
        let Ok(io) = st.ioasid(ioasid) else {
            refuse_into(r, Error::NoSuchIoasid(ioasid));
            return None;
        };
        let (plain, child_slot) = match io.nested {
            None => (ioasid, None),
            Some(n) => {
                if let Some(d) = io.domains.iter().flatten().find(|d| d.unit == unit_id) {
                    return Some((d.handle, false));
                }
                let Some(slot) = io.domains.iter().position(Option::is_none) else {
                    refuse_into(r, Error::Capacity("units per IOASID"));
                    return None;
                };
                (n.parent, Some(slot))
            }
        };
        let (handle, slot, park) = match self.new_domain(st, device, plain, unit_id, r)? {
            NewDomain::Existing(handle) => (handle, None, 0),
            NewDomain::Built { handle, slot, park } => (handle, Some(slot), park),
        };
        if let Some(slot) = slot {
            // Filled by steps beside one another: the record's walk is never under a map.
            let ias = if self.prepare_domain(st, device, plain, (unit_id, handle), r) {
                self.fill_domain(st, device, plain, (unit_id, handle), r)
            } else {
                None
            };
            let Some(ias) = ias else {
                self.discard_domain(st, unit_id, handle, park);
                return None;
            };
            let Ok(io) = st.ioasid_mut(plain) else {
                refuse_into(r, Error::NoSuchIoasid(plain));
                return None;
            };
            io.set_domain(
                slot,
                Some(UnitDomain {
                    unit: unit_id,
                    handle,
                    users: 0,
                    ias,
                }),
            );
        }
        let Some(child_slot) = child_slot else {
            return Some((handle, slot.is_some()));
        };
        let child = self.user_domain_for(st, device, (ioasid, unit_id), child_slot, handle, r);
        if child.is_none() && slot.is_some() {
            self.drop_new_parent(st, plain, unit_id);
        }
        child
    }

    /// A new domain's page-size policy and dirty tracking, as the IOASID fixes them, before
    /// anything is mapped; the refusal in `r`, `false`. Not inlined, and no `Result` of this
    /// layer in its frame over the unit's calls (the kernel-stack bound of the C ABI): a
    /// unit's error is read where the call returned it (`refuse_with`, `refuse_incompatible`).
    #[inline(never)]
    fn prepare_domain(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        (unit_id, handle): (UnitId, DomainHandle),
        r: &mut Result<(), Error>,
    ) -> bool {
        let Ok(unit) = self.unit(unit_id) else {
            return refuse_into(r, Error::NoSuchUnit(unit_id));
        };
        let Ok(io) = st.ioasid(ioasid) else {
            return refuse_into(r, Error::NoSuchIoasid(ioasid));
        };
        // The IOASID's page-size policy before anything is mapped (`page_size.rs`).
        if let Some(max) = io.max_page_log2 {
            if let Err(e) = &unit.set_max_page_log2(handle, Some(max)) {
                return refuse_incompatible(r, device, e);
            }
        }
        // A domain starts tracking; one for an IOASID whose tracking is off is switched off
        // before anything is mapped or attached (nothing to clean or invalidate).
        if io.flags.contains(IoasidFlags::DIRTY_TRACKING) && !io.tracking() {
            if let Err(e) = &unit.set_dirty_tracking(handle, false) {
                return refuse_with(r, e);
            }
        }
        true
    }

    /// Frees a new domain that could not be prepared or filled. Nothing points at it, but
    /// freeing it waits for the invalidation of its tag (a caching-mode map may have cached
    /// entries), which may fail like the fill did: the domain is then parked in `park`, and
    /// freed again later.
    #[inline(never)]
    fn discard_domain(
        &self,
        st: &mut State<'a, A>,
        unit_id: UnitId,
        handle: DomainHandle,
        park: usize,
    ) {
        let freed = self.unit(unit_id).and_then(|u| Ok(u.domain_free(handle)?));
        if freed.is_err() {
            if let Some(p) = st.parked.get_mut(park) {
                *p = Some((unit_id, handle));
            }
        }
    }

    /// Checks that a new domain can hold the IOASID's mappings, and copies them in.
    ///
    /// The record holds 4 KiB pages (and 2 MiB / 1 GiB leaves); a unit with a larger granule
    /// (SMMUv3 16 KiB, 64 KiB) maps whole granules only, so contiguous leaves are gathered into
    /// runs until they make whole granules, and each run is checked and mapped as one. On a
    /// 4 KiB unit every leaf is its own run.
    ///
    /// The runs are collected from the record [`FILL_CHUNK`] at most at a time, into the
    /// state's `fill` (`collect_runs`), and mapped after that walk returned, in IOVA order;
    /// the next walk resumes at the leaf the last one stopped at. The record does not change
    /// meanwhile: the state's write lock is held.
    ///
    /// Returns the domain's input address width, which every mapping of the IOASID is below
    /// (checked run by run: `Missing::AddressWidth` otherwise), for [`UnitDomain::ias`]. The
    /// refusal goes into `r` (passed `Ok`), and `None`: no `Result` of this layer is in this
    /// frame over the maps (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn fill_domain(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        (unit_id, handle): (UnitId, DomainHandle),
        r: &mut Result<(), Error>,
    ) -> Option<u32> {
        let Ok(unit) = self.unit(unit_id) else {
            refuse_into(r, Error::NoSuchUnit(unit_id));
            return None;
        };
        let (ias, page_sizes) = geometry(unit, handle, r)?;
        let granule_log2 = page_sizes.trailing_zeros().min(63);
        st.fill.start();
        loop {
            let more = collect_runs(st, ioasid, granule_log2, r)?;
            for i in 0..st.fill.count {
                let Some(&run) = st.fill.runs.get(i) else {
                    break;
                };
                if !place_run(unit, handle, device, (granule_log2, ias), run, r) {
                    return None;
                }
            }
            if !more {
                return Some(ias);
            }
        }
    }

    /// The first part of [`Self::domain_for`]: the IOASID's domain on `unit_id`, or a new,
    /// empty one with the IOASID's slot it goes to and the parking slot it would take. Not
    /// inlined: its checks' locals are on the stack only while it runs, not under the fill's
    /// maps (and their flushes). The refusal in `r`, `None`.
    #[inline(never)]
    fn new_domain(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        unit_id: UnitId,
        r: &mut Result<(), Error>,
    ) -> Option<NewDomain> {
        put_error(self.new_domain_result(st, device, ioasid, unit_id), r)
    }

    /// [`Self::new_domain`] returning its refusal.
    #[inline(always)]
    fn new_domain_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        unit_id: UnitId,
    ) -> Result<NewDomain, Error> {
        let (slot, cfg) = match self.domain_plan(st, device, ioasid, unit_id)? {
            Ok(handle) => return Ok(NewDomain::Existing(handle)),
            Err(plan) => plan,
        };
        let park = self.park_slot(st)?;
        let handle = self
            .unit(unit_id)?
            .domain_alloc(&cfg)
            .map_err(|e| incompatible(device, e))?;
        Ok(NewDomain::Built { handle, slot, park })
    }

    /// The IOASID's domain on `unit_id` (`Ok`), or the slot and configuration of a new one
    /// (`Err`), after the checks the unit makes before anything is built or written.
    #[inline(never)]
    fn domain_plan(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        unit_id: UnitId,
    ) -> Result<Result<DomainHandle, (usize, DomainConfig)>, Error> {
        let id = st.device(device)?.label.id;
        let io = st.ioasid(ioasid)?;
        let cfg = domain_config(io, id)?;
        // Refusals the unit can give before anything is built or written.
        self.unit(unit_id)?
            .check_device(id, &cfg)
            .map_err(|m| Error::Incompatible {
                device,
                reason: Incompatibility::Missing(m),
            })?;
        if let Some(d) = io.domains.iter().flatten().find(|d| d.unit == unit_id) {
            return Ok(Ok(d.handle));
        }
        let slot = io
            .domains
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Capacity("units per IOASID"))?;
        Ok(Err((slot, cfg)))
    }

    /// The parking slot a new domain would take if it could be neither filled nor freed: a
    /// domain is built only with room to park it. Frees what is parked first.
    #[inline(never)]
    fn park_slot(&self, st: &mut State<'a, A>) -> Result<usize, Error> {
        let parked = self.free_parked(st);
        st.parked
            .iter()
            .position(Option::is_none)
            .ok_or_else(|| parked.err().unwrap_or(Error::Capacity("parked domains")))
    }

    /// The last part of [`domain_for`](Self::domain_for) for a nested child without a domain
    /// on `unit_id`: the child's domain over `parent` (the parent's domain there), for the
    /// IOASID's slot `slot`. The unit holds the parent's domain while the child's exists.
    /// The refusal in `r`, `None`.
    #[inline(never)]
    fn user_domain_for(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        (ioasid, unit_id): (IoasidId, UnitId),
        slot: usize,
        parent: DomainHandle,
        r: &mut Result<(), Error>,
    ) -> Option<(DomainHandle, bool)> {
        put_error(
            self.user_domain_result(st, device, ioasid, unit_id, slot, parent),
            r,
        )
    }

    /// [`Self::user_domain_for`] returning its refusal.
    #[inline(always)]
    fn user_domain_result(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        unit_id: UnitId,
        slot: usize,
        parent: DomainHandle,
    ) -> Result<(DomainHandle, bool), Error> {
        let unit = self.unit(unit_id)?;
        let stage1 = &st
            .ioasid(ioasid)?
            .nested
            .as_ref()
            .ok_or(Error::NoSuchIoasid(ioasid))?
            .stage1;
        let handle = unit
            .domain_alloc_user(parent, stage1)
            .map_err(|e| incompatible(device, e))?;
        st.ioasid_mut(ioasid)?.set_domain(
            slot,
            Some(UnitDomain {
                unit: unit_id,
                handle,
                users: 0,
                // A nested child maps nothing: no width of its own to keep its mappings below.
                ias: 64,
            }),
        );
        Ok((handle, true))
    }

    /// Frees the domain just built on `unit_id` for the nest parent `parent`, without users,
    /// after its child's could not be built (or the parent keeps it until its free).
    #[inline(never)]
    fn drop_new_parent(&self, st: &mut State<'a, A>, parent: IoasidId, unit_id: UnitId) {
        if let Ok(p) = st.ioasid_mut(parent) {
            let at = p
                .domains
                .iter()
                .position(|d| d.is_some_and(|d| d.unit == unit_id));
            if let Some(i) = at {
                let _ = self.free_domain(p, i);
            }
        }
    }

    /// Frees again the domains of failed attaches that a unit would not free (see
    /// `State::parked`).
    ///
    /// # Errors
    /// The first unit error; what failed stays parked.
    pub(super) fn free_parked(&self, st: &mut State<'a, A>) -> Result<(), Error> {
        let mut result = Ok(());
        for p in st.parked.iter_mut() {
            let Some((unit, handle)) = *p else { continue };
            match self.unit(unit).and_then(|u| Ok(u.domain_free(handle)?)) {
                // A handle the unit no longer knows has nothing left to free.
                Ok(()) | Err(Error::Iommu(iommu::Error::InvalidDomain(_))) => *p = None,
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }

    fn add_user(&self, st: &mut State<'a, A>, ioasid: IoasidId, unit_id: UnitId) {
        if let Ok(io) = st.ioasid_mut(ioasid) {
            if let Some(d) = io.domains.iter_mut().flatten().find(|d| d.unit == unit_id) {
                d.users += 1;
            }
        }
    }

    /// Drops one user of the IOASID's domain on `unit_id`; frees the domain with the last one,
    /// once it owes no invalidation. The unit invalidates the domain's tag before it can be
    /// reused. A domain that cannot be freed yet stays recorded, without users, and is freed
    /// with the IOASID (`free_domains`). So does one while the IOASID tracks dirty pages: its
    /// tables hold what its devices wrote until a read takes it (`dirty.rs`).
    pub(super) fn release_domain(&self, st: &mut State<'a, A>, ioasid: IoasidId, unit_id: UnitId) {
        let Ok(io) = st.ioasid_mut(ioasid) else {
            return;
        };
        let tracking = io.tracking();
        let Some(slot) = io
            .domains
            .iter()
            .position(|d| d.is_some_and(|d| d.unit == unit_id))
        else {
            return;
        };
        let Some(d) = io.domains[slot].as_mut() else {
            return;
        };
        d.users = d.users.saturating_sub(1);
        if d.users == 0 && !tracking {
            let _ = self.free_domain(io, slot);
        }
    }

    /// Frees the domain an attach built on `unit_id` for `ioasid` when the unit refused the
    /// attach: it never had a device, so it holds no dirty state to keep (unlike one its last
    /// device left, [`Self::release_domain`]), whatever the IOASID's tracking.
    fn drop_created_domain(&self, st: &mut State<'a, A>, ioasid: IoasidId, unit_id: UnitId) {
        let Ok(io) = st.ioasid_mut(ioasid) else {
            return;
        };
        let slot = io
            .domains
            .iter()
            .position(|d| d.is_some_and(|d| d.unit == unit_id && d.users == 0));
        if let Some(slot) = slot {
            let _ = self.free_domain(io, slot);
        }
    }

    /// Frees the unused domain in slot `slot` after settling what the IOASID's units owe.
    ///
    /// # Errors
    /// [`Error::Busy`] while it has users; [`Error::InvalidationPending`]; unit errors. The
    /// domain then stays recorded.
    pub(super) fn free_domain(&self, io: &mut Ioasid<'a, A>, slot: usize) -> Result<(), Error> {
        let Some(d) = io.domains.get(slot).copied().flatten() else {
            return Ok(());
        };
        if d.users != 0 {
            return Err(Error::Busy);
        }
        // Its table pages owed to the allocator must be confirmed first.
        let settled = self.settle(io);
        if io.pending.owed(slot) {
            return settled;
        }
        self.unit(d.unit)?.domain_free(d.handle)?;
        io.set_domain(slot, None);
        Ok(())
    }
}

/// Detaches on the unit. A unit that no longer knows the attachment (an earlier detach blocked
/// the device, then failed to confirm an invalidation and dropped its books) has nothing left
/// to undo: that completes a retried detach.
fn unit_detach(unit: &dyn Iommu, id: DeviceId, pasid: Option<Pasid>) -> Result<(), Error> {
    match unit.detach(id, pasid) {
        Ok(()) | Err(iommu::Error::NotAttached(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a hardware domain for `io` must be, built for device `id`.
fn domain_config<A: PageAllocator>(
    io: &Ioasid<'_, A>,
    id: DeviceId,
) -> Result<DomainConfig, Error> {
    Ok(DomainConfig {
        min_ias: needed_ias(io)?,
        enforce_snoop: io.flags.contains(IoasidFlags::ENFORCE_SNOOP),
        dirty_tracking: io.flags.contains(IoasidFlags::DIRTY_TRACKING),
        nest_parent: io.flags.contains(IoasidFlags::NEST_PARENT),
        // Privilege levels exist only in first-stage tables; a PASID address space is first
        // stage unless it tracks dirty state, which VT-d does in the second stage only (the
        // unit picks, `pasid` below).
        stage: if io.flags.contains(IoasidFlags::SUPERVISOR)
            || io.flags.contains(IoasidFlags::PASID)
                && !io.flags.contains(IoasidFlags::DIRTY_TRACKING)
        {
            Stage::First
        } else {
            Stage::Any
        },
        pasid: io.flags.contains(IoasidFlags::PASID),
        supervisor: io.flags.contains(IoasidFlags::SUPERVISOR),
        device: Some(id),
        // The unit's granule (the embedder's page size, chosen per unit).
        granule_log2: None,
    })
}

/// Input bits a domain needs for the IOASID's existing mappings (at least 32).
fn needed_ias<A: PageAllocator>(io: &Ioasid<'_, A>) -> Result<u32, Error> {
    let mut end = 0u64;
    io.record
        .for_each_mapping(Iova::ZERO, 1 << RECORD_IAS, |l| {
            end = end.max(l.iova.get() + (1u64 << l.size_log2));
        })?;
    Ok((64 - end.saturating_sub(1).leading_zeros()).max(32))
}

/// A unit's refusal to copy leaf `l` into a new domain: a mapping its format cannot express is
/// a reason the attach is incompatible, named by the mapping; anything else stays what it is.
fn inexpressible(device: DeviceHandle, iova: Iova, e: iommu::Error) -> Error {
    let reason = match e {
        iommu::Error::PageTable(pgtable::Error::UnsupportedProt { prot }) => {
            Incompatibility::Permissions { iova, prot }
        }
        iommu::Error::PageTable(pgtable::Error::PaOutOfRange { last, oas }) => {
            Incompatibility::OutputAddress { iova, last, oas }
        }
        e => return Error::from(e),
    };
    Error::Incompatible { device, reason }
}

/// A run of the record's leaves, contiguous in IOVA and physical address with one `prot`:
/// what one map of the owner may have made, cut into the record's 4 KiB pages.
#[derive(Clone, Copy)]
pub(super) struct Run {
    iova: Iova,
    pa: crate::mem::PhysAddr,
    len: u64,
    prot: Prot,
}

impl Run {
    const EMPTY: Self = Self {
        iova: Iova::ZERO,
        pa: crate::mem::PhysAddr::new(0),
        len: 0,
        prot: Prot::empty(),
    };
}

/// How many runs a fill collects from one walk of the record before it maps them.
pub(super) const FILL_CHUNK: usize = 16;

/// The runs a fill collected from the record and has yet to map (`State::fill`): in the
/// state, not on the stack, where they would be under the maps and their flushes. Used only
/// under the state's write lock, by [`IoasidCtx::fill_domain`].
pub(super) struct FillRuns {
    /// Complete runs (or a last one that makes no whole granule), in IOVA order.
    runs: [Run; FILL_CHUNK],
    count: usize,
    /// The run being gathered: not yet a whole granule.
    pending: Option<Run>,
    /// Where the next walk of the record starts; `None` once it reached the end.
    next: Option<Iova>,
}

impl FillRuns {
    pub(super) const EMPTY: Self = Self {
        runs: [Run::EMPTY; FILL_CHUNK],
        count: 0,
        pending: None,
        next: None,
    };

    /// Ready for a fill from the record's start.
    fn start(&mut self) {
        self.count = 0;
        self.pending = None;
        self.next = Some(Iova::ZERO);
    }

    fn push(&mut self, r: Run) {
        // Room is kept by `collect_runs` (two slots per leaf, one at the end).
        if let Some(slot) = self.runs.get_mut(self.count) {
            *slot = r;
            self.count += 1;
        }
    }

    /// Adds leaf `l` to the run being gathered, or closes that run and starts one with `l`;
    /// a run that makes whole granules of `1 << granule_log2` bytes is complete. At most two
    /// runs complete per leaf.
    fn add(&mut self, l: Leaf, granule_log2: u32) {
        let whole = |r: &Run| r.len & ((1 << granule_log2) - 1) == 0;
        let len = 1u64 << l.size_log2;
        match self.pending.as_mut() {
            Some(r)
                if !whole(r)
                    && r.iova.get() + r.len == l.iova.get()
                    && r.pa.get() + r.len == l.pa.get()
                    && r.prot == l.prot =>
            {
                r.len += len;
            }
            _ => {
                if let Some(r) = self.pending.take() {
                    self.push(r);
                }
                self.pending = Some(Run {
                    iova: l.iova,
                    pa: l.pa,
                    len,
                    prot: l.prot,
                });
            }
        }
        if let Some(r) = self.pending.filter(whole) {
            self.pending = None;
            self.push(r);
        }
    }
}

/// Collects the next runs of the IOASID's record into `st.fill` (at most [`FILL_CHUNK`]),
/// from where the last walk stopped; a run left over at the record's end, which makes no
/// whole granule, is collected too (its map refuses it). Returns whether the record has more;
/// the refusal in `r`, `None`. Not inlined: the record's walk is beside the maps, not under
/// them.
#[inline(never)]
fn collect_runs<A: PageAllocator>(
    st: &mut State<'_, A>,
    ioasid: IoasidId,
    granule_log2: u32,
    r: &mut Result<(), Error>,
) -> Option<bool> {
    let current = st.current_ioasid(ioasid);
    let State { ioasids, fill, .. } = st;
    let Some(io) = ioasids
        .get(usize::from(ioasid.slot()))
        .filter(|_| current)
        .and_then(Option::as_ref)
    else {
        refuse_into(r, Error::NoSuchIoasid(ioasid));
        return None;
    };
    fill.count = 0;
    let Some(from) = fill.next.take() else {
        return Some(false);
    };
    let mut next = None;
    let walked = io
        .record
        .for_each_mapping_until(from, (1 << RECORD_IAS) - from.get(), |l| {
            // A leaf completes two runs at most: it waits for the next walk unless both fit.
            if fill.count + 2 > FILL_CHUNK {
                next = Some(l.iova);
                return ControlFlow::Break(());
            }
            fill.add(l, granule_log2);
            ControlFlow::Continue(())
        });
    if let Err(e) = walked {
        refuse_into(r, e);
        return None;
    }
    fill.next = next;
    if next.is_none() {
        // A run left over does not make a whole granule: refused when placed.
        if let Some(r) = fill.pending.take() {
            fill.push(r);
        }
    }
    Some(next.is_some())
}

/// The IOASID address width and page sizes of `unit`'s domain `handle`; the unit's error in
/// `r`, `None`. Not inlined: the `Result` is in this frame, not in the fill's over its maps.
#[inline(never)]
fn geometry(
    unit: &dyn Iommu,
    handle: DomainHandle,
    r: &mut Result<(), Error>,
) -> Option<(u32, u64)> {
    match unit.domain_geometry(handle) {
        Ok(g) => Some(g),
        Err(e) => {
            refuse_into(r, e);
            None
        }
    }
}

/// The PASID width of `unit`. Not inlined: the 272-byte capability report is on the stack
/// only while it runs, not in the frame of the attach that goes on to fill a domain.
#[inline(never)]
fn pasid_bits(unit: &dyn Iommu) -> u32 {
    unit.capabilities().pasid_bits
}

/// Where [`IoasidCtx::domain_for`] starts from.
enum NewDomain {
    /// The IOASID already has a domain on the unit.
    Existing(DomainHandle),
    /// A new, empty domain, for slot `slot` of the IOASID's domains; `park` is the parking
    /// slot it takes if it can be neither filled nor freed.
    Built {
        handle: DomainHandle,
        slot: usize,
        park: usize,
    },
}

/// Checks one run against the unit and maps it; the refusal in `out`, `false`. No `Result`
/// of this layer is in this frame over the unit's map: the check and the error are built in
/// frames of their own.
fn place_run(
    unit: &dyn Iommu,
    handle: DomainHandle,
    device: DeviceHandle,
    (granule_log2, ias): (u32, u32),
    r: Run,
    out: &mut Result<(), Error>,
) -> bool {
    // The unit's calls are made here, through its vtable (not from a frame the compiler may
    // hand a bare method pointer, which the stack check cannot tell from any other).
    if !check_run(
        unit.reserved_regions(),
        device,
        (granule_log2, ias),
        &r,
        out,
    ) {
        return false;
    }
    match unit.map(handle, r.iova, r.pa, r.len, r.prot) {
        Ok(()) => true,
        Err(e) => run_refused(out, device, r.iova, e),
    }
}

/// Whether a unit with `reserved` regions can take run `r` (none of them, whole granules,
/// within its address width); else the incompatibility in `out`, `false`. Not inlined: its
/// locals are not under the map.
#[inline(never)]
fn check_run(
    reserved: &[IovaRange],
    device: DeviceHandle,
    (granule_log2, ias): (u32, u32),
    r: &Run,
    out: &mut Result<(), Error>,
) -> bool {
    let (start, end) = (r.iova.get(), r.iova.get() + r.len);
    let reason = if let Some(reserved) = reserved
        .iter()
        .find(|reserved| super::overlaps(reserved, start, end))
    {
        Incompatibility::ReservedRegionMapped(*reserved)
    } else if !(r.iova.is_aligned(granule_log2)
        && r.pa.is_aligned(granule_log2)
        && r.len & ((1 << granule_log2) - 1) == 0)
    {
        Incompatibility::Alignment {
            iova: r.iova,
            granule_log2,
        }
    } else if ias < 64 && (end - 1) >> ias != 0 {
        let need = 64 - (end - 1).leading_zeros();
        Incompatibility::Missing(Missing::AddressWidth { need, have: ias })
    } else {
        return true;
    };
    refuse_into(out, Error::Incompatible { device, reason })
}

/// The unit refused to map a run at `iova` with `e`: its error in `out`, `false`. A
/// failure's path, not inlined: the error is built here.
#[cold]
#[inline(never)]
fn run_refused(
    out: &mut Result<(), Error>,
    device: DeviceHandle,
    iova: Iova,
    e: iommu::Error,
) -> bool {
    *out = Err(inexpressible(device, iova, e));
    false
}

/// The end of [`IoasidCtx::unit_detach_into`] when the unit refused: `e` replaces what
/// `result` held; `false`. A failure's path, not inlined: the error is built here.
#[cold]
#[inline(never)]
fn detach_refused(result: &mut Result<(), Error>, e: impl Into<Error>) -> bool {
    *result = Err(e.into());
    false
}

/// `r`'s value, or its error put into `out` (in place of what was there, where a `?`
/// returned) and `None`. Inlined into the step that converts its `Result` for the caller.
#[inline(always)]
fn put_error<T>(r: Result<T, Error>, out: &mut Result<(), Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            *out = Err(e);
            None
        }
    }
}

/// Notes `io` among the IOASIDs a detach of `d` left something owed in: in a free slot of
/// `left_owing` (a detach leaves at most two, the IOASID the device was attached to and the
/// one an unsettled attach was leaving), else in `left_more`, never over another note (an
/// IOASID overwritten there was forgotten: the retry returned `Ok` with its invalidation still
/// owed).
fn note_left(d: &mut super::ctx::Device, io: IoasidId) {
    if d.left_owing.contains(&Some(io)) {
        return;
    }
    match d.left_owing.iter_mut().find(|s| s.is_none()) {
        Some(slot) => *slot = Some(io),
        None => d.left_more = true,
    }
}
