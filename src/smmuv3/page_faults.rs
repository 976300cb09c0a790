//! I/O page faults on an SMMUv3: PCIe page requests from the PRI queue (Arm IHI 0070 H.a
//! chapter 8, answered with `CMD_PRI_RESP`, §4.5.2) and stalled transactions (§3.12.2 "Stall
//! model": an event record with `Stall` = 1 and its `STAG`, §7.3, answered with `CMD_RESUME`,
//! §4.7.1, or terminated with the stream by `CMD_STALL_TERM`, §4.7.2), as [`crate::iopf`]
//! faults.
//!
//! Stall records arrive in the event queue, which [`SmmuUnit::handle_events`] drains: it
//! files each one in the unit's book of stalls (`StallBook`) (and still shows it to its handler), from which
//! [`Iommu::drain_page_faults`](crate::iommu::Iommu::drain_page_faults) hands them on with the
//! PRI queue's requests. A stall the book has no room for is aborted at once (`CMD_RESUME`
//! with Abort): a stalled transaction must not wait for an answer nobody will give.
//!
//! When a stream that may stall loses its last attachment, `CMD_STALL_TERM` ends what it
//! still holds (`SmmuUnit::terminate_stalls`); only once its sync completed are its filed
//! stalls forgotten, and the records of its stalls still unread in the event queue fenced off
//! (never filed). Until then the stream owes the termination and its next attach or detach
//! sends it again. Clearing `SMMU_CR0.SMMUEN` (`disable`, and `enable`, which starts from
//! `CR0` = 0) ends every stalled transaction (§3.12.2) and takes the ATS interface down: the
//! unit ignores CMD_PRI_RESP and the endpoints' PRI is re-initialised before it is enabled
//! again (§6.3.9.6), so an old group's index may name a new group. The book forgets every
//! stall and every outstanding page request group, and fences off every record still unread.
//! While translation is off a drain sends no CMD_PRI_RESP and hands out no page request: it
//! drops what the PRI queue holds (`SmmuUnit::faults_discarded`) and reports an overflow.
//! Each clear starts a new generation ([`PageFault::generation`]), which what a drain hands
//! out carries and an answer must match, so a late answer never reaches a new fault that
//! reuses the index or STAG; and the first drain after a clear reports an overflow if a group
//! could have been left partial, so that the caller drops the partial groups that died.
//!
//! Each stream may hold at most [`STREAM_QUOTA`] of the [`MAX_UNANSWERED`] faults awaiting an
//! answer; a fault that needs an answer and finds its stream's share (or the book) full is not
//! handed out but answered by the drain itself (`CMD_PRI_RESP` Invalid Request, `CMD_RESUME`
//! Abort), so that a context that never answers cannot stop the PRI queue from being drained.
//!
//! Lock order (the unit's, outermost first): configuration, event queue, book, PRI queue,
//! command queue. An answer, an abort or a termination holds the book (or the event queue)
//! until its command is in the command queue: a STAG is reused only once its transaction was
//! resumed, terminated, or ended by clearing `SMMUEN` (§3.12.2), each of which happens under
//! the book, so a command queued under the book names the transaction it was meant for.

use core::sync::atomic::Ordering;

use super::cmd::{Command, PriResponse, ResumeAction};
use super::event::{Event, EventFlags};
use super::{SmmuError, SmmuUnit, StreamId, SubstreamId};
use crate::iommu::{DeviceId, Error, Missing, Pasid};
use crate::iopf::{
    FaultDrain, FaultKind, FaultPerm, FaultSequence, PageFault, PageResponse, ResponseCode,
};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;

/// Stalled transactions a unit keeps between [`SmmuUnit::handle_events`] and the next drain.
pub const MAX_STALLS: usize = 32;

/// Faults a unit has handed out (stalls, and page request groups whose last request was
/// drained) and not seen answered. Past it, a drain answers what needs an answer itself.
pub const MAX_UNANSWERED: usize = 64;

/// Of [`MAX_UNANSWERED`], what one stream (device) may hold: a device whose context never
/// answers keeps at most this many, and the others still get theirs (four streams at their
/// share fill the book; then every fault that needs an answer is answered by the drain).
pub const STREAM_QUOTA: usize = 16;

/// Answers a drain sends itself, at most, per call: it takes no more from the queues than it
/// could answer (the rest wait for the next call, which `FaultDrain::more` asks for).
const REFUSED_BATCH: usize = 8;

/// Streams whose stalls were terminated while records of theirs may still wait in the event
/// queue unread: a termination beyond them waits (`Error::Busy`) until `handle_events` read them.
pub const MAX_FENCES: usize = 8;

/// Records of stream `sid` before position `until` of the event queue (`EventQueue::read`)
/// name transactions `CMD_STALL_TERM` has ended: they are shown, never filed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fence {
    sid: StreamId,
    until: u64,
}

/// Stall records waiting to be drained, oldest first (a ring of [`MAX_STALLS`]).
pub(crate) struct StallBook {
    ring: [PageFault; MAX_STALLS],
    head: usize,
    len: usize,
    /// Stalls aborted because the book was full.
    pub(crate) aborted: u64,
    /// Faults a drain answered itself (their stream's share or the book full).
    pub(crate) refused: u64,
    /// Page requests a drain took from the PRI queue while translation was off and dropped.
    discarded: u64,
    fences: [Option<Fence>; MAX_FENCES],
    /// Records of every stream before this position of the event queue are stale: their
    /// transactions ended when `SMMUEN` was cleared.
    fence_all: Option<u64>,
    /// What [`Iommu::page_response`](crate::iommu::Iommu::page_response) may answer.
    unanswered: [Option<Unanswered>; MAX_UNANSWERED],
    /// Clears of `SMMUEN` seen ([`translation_ended`](Self::translation_ended)): given to
    /// what a drain hands out ([`PageFault::generation`]), so that an answer from before a
    /// clear never matches a new fault that reuses its group index or STAG.
    generation: u32,
    /// A request that is not its group's last was handed out in this generation: a context
    /// may hold its group partial.
    partials: bool,
    /// `SMMUEN` was cleared after such a request was handed out, and no drain has reported
    /// it yet: the next one sets `overflow`, so that the caller drops the partial groups of
    /// the ended generation (whose last requests will never come).
    partials_ended: bool,
    /// Event queue records `handle_events` has taken and filed (or seen not to be stalls),
    /// as a position of the event queue (`EventQueue::read`): a stall's sequence is its
    /// record's position plus one ([`PageFault::sequence`]).
    processed: u64,
}

/// A fault handed out and not answered: what an answer must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Unanswered {
    sid: StreamId,
    pasid: Option<Pasid>,
    kind: FaultKind,
    generation: u32,
}

impl Unanswered {
    /// The answer `f` would need, if it needs one (a stall, or the last request of a group).
    fn of(f: &PageFault) -> Option<Self> {
        match f.kind {
            FaultKind::PageRequest { last: false, .. } => None,
            kind => Some(Self {
                sid: StreamId(f.device.0),
                pasid: f.pasid,
                kind,
                generation: f.generation,
            }),
        }
    }

    /// Whether `r` answers it: the same stream and PASID, the same STAG or group, and the
    /// same generation (an answer from before an `SMMUEN` clear names a group or stall that
    /// ended with it, whatever new one now has its index or STAG).
    fn answered_by(&self, r: &PageResponse) -> bool {
        let kind = match (self.kind, r.kind) {
            (FaultKind::Stall { stag: a }, FaultKind::Stall { stag: b }) => a == b,
            (FaultKind::PageRequest { group: a, .. }, FaultKind::PageRequest { group: b, .. }) => {
                a == b
            }
            _ => false,
        };
        kind && self.sid.0 == r.device.0 && self.pasid == r.pasid && self.generation == r.generation
    }
}

impl StallBook {
    /// Unlocked and empty: a constant, so that the unit's construction copies it from
    /// read-only data rather than building it (1.3 KiB) on the stack.
    // Each use is a fresh value written once into a new unit: no lock is shared.
    #[allow(clippy::declare_interior_mutable_const)]
    pub(crate) const EMPTY: crate::sync::Mutex<Self> = crate::sync::Mutex::new(Self::new());

    pub(crate) const fn new() -> Self {
        Self {
            ring: [PageFault::EMPTY; MAX_STALLS],
            head: 0,
            len: 0,
            aborted: 0,
            refused: 0,
            discarded: 0,
            fences: [None; MAX_FENCES],
            fence_all: None,
            unanswered: [None; MAX_UNANSWERED],
            generation: 0,
            partials: false,
            partials_ended: false,
            processed: 0,
        }
    }

    /// How far the stalls' numbering has been handed out: every stall numbered at or below
    /// it was handed out, aborted or forgotten (the oldest filed one is next; with none filed,
    /// every record `handle_events` took).
    fn stalls_reached(&self) -> u64 {
        match self.ring.get(self.head) {
            Some(f) if self.len > 0 => f.sequence.saturating_sub(1),
            _ => self.processed,
        }
    }

    /// `handle_events` took the event queue's records before position `read`.
    pub(crate) fn processed_until(&mut self, read: u64) {
        self.processed = self.processed.max(read);
    }

    /// Notes that `f` is handed out, if it may be, and gives it the book's generation: `true`
    /// for a fault that needs no answer (a page request that is not its group's last), or one
    /// whose stream holds less than [`STREAM_QUOTA`] while the book has room; `false` (nothing
    /// noted) otherwise, and the caller answers it.
    fn hand_out(&mut self, f: &mut PageFault) -> bool {
        f.generation = self.generation;
        let Some(u) = Unanswered::of(f) else {
            self.partials = true;
            return true;
        };
        let held = self.unanswered.iter().flatten().filter(|h| h.sid == u.sid);
        if held.count() >= STREAM_QUOTA {
            return false;
        }
        match self.unanswered.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(u);
                true
            }
            None => false,
        }
    }

    /// Where the record of the fault `r` answers is, if it is outstanding.
    pub(crate) fn outstanding(&self, r: &PageResponse) -> Option<usize> {
        self.unanswered
            .iter()
            .position(|u| u.is_some_and(|u| u.answered_by(r)))
    }

    /// Drops the fences the event queue's reader has passed (`read`: its position).
    fn prune(&mut self, read: u64) {
        for f in self.fences.iter_mut() {
            if f.is_some_and(|f| f.until <= read) {
                *f = None;
            }
        }
        if self.fence_all.is_some_and(|until| until <= read) {
            self.fence_all = None;
        }
    }

    /// Whether a fence for `sid` can be set.
    fn has_fence_room(&self, sid: StreamId) -> bool {
        self.fences.iter().any(|f| f.map_or(true, |f| f.sid == sid))
    }

    /// Records of `sid` before position `until` of the event queue are stale (their
    /// transactions were terminated). Needs [`has_fence_room`](Self::has_fence_room).
    fn fence(&mut self, sid: StreamId, until: u64) {
        if let Some(f) = self
            .fences
            .iter_mut()
            .find(|f| f.is_some_and(|f| f.sid == sid))
        {
            *f = Some(Fence { sid, until });
        } else if let Some(f) = self.fences.iter_mut().find(|f| f.is_none()) {
            *f = Some(Fence { sid, until });
        }
    }

    /// Whether the record of `sid` at position `at` of the event queue is stale.
    fn fenced(&self, sid: StreamId, at: u64) -> bool {
        self.fence_all.is_some_and(|until| at < until)
            || self
                .fences
                .iter()
                .flatten()
                .any(|f| f.sid == sid && at < f.until)
    }

    /// The event queue was (re)programmed empty: no stale record is left in it.
    pub(crate) fn clear_fences(&mut self) {
        self.fences = [None; MAX_FENCES];
        self.fence_all = None;
    }

    /// `SMMUEN` was cleared: every stalled transaction ended (§3.12.2) and its STAG may name
    /// a new stall from now on; the ATS interface went down, so the unit ignores CMD_PRI_RESP
    /// and the endpoints' PRI is re-initialised before it is enabled again (§6.3.9.6), after
    /// which a device may give an old group's index to a new group. Forgets every filed stall
    /// and every outstanding fault, page request groups included, and starts a new generation
    /// (an answer to one of them is then `NotOutstanding`, nothing sent, even once a new
    /// fault with its group index or STAG is handed out), and fences off every record before `until`
    /// (`EventQueue::written` after the clear; `None`: no event queue).
    pub(crate) fn translation_ended(&mut self, until: Option<u64>) {
        self.head = 0;
        self.len = 0;
        self.unanswered = [None; MAX_UNANSWERED];
        // What was handed out before is of an older generation: its answer matches nothing,
        // even once a new fault with the same index or STAG is handed out. (Wrapping takes
        // 2^32 clears while an answer is held.)
        self.generation = self.generation.wrapping_add(1);
        // Their groups' last requests will never come: the next drain reports it.
        self.partials_ended |= self.partials;
        self.partials = false;
        if let Some(until) = until {
            self.fence_all = Some(until);
        }
    }

    /// Files `f`; `false` when the book is full.
    fn push(&mut self, f: PageFault) -> bool {
        if self.len == MAX_STALLS {
            return false;
        }
        if let Some(slot) = self.ring.get_mut((self.head + self.len) % MAX_STALLS) {
            *slot = f;
        }
        self.len += 1;
        true
    }

    fn pop(&mut self) -> Option<PageFault> {
        if self.len == 0 {
            return None;
        }
        let f = self.ring.get(self.head).copied();
        self.head = (self.head + 1) % MAX_STALLS;
        self.len -= 1;
        f
    }
    /// Drops the stalls of `sid` (terminated with their stream by `CMD_STALL_TERM`).
    fn forget(&mut self, sid: StreamId) {
        // Compacted in place (a second book would be 1.3 KiB of stack under detach).
        let mut kept = 0;
        for k in 0..self.len {
            let Some(f) = self.ring.get((self.head + k) % MAX_STALLS).copied() else {
                continue;
            };
            if f.device.0 != sid.0 {
                if let Some(slot) = self.ring.get_mut((self.head + kept) % MAX_STALLS) {
                    *slot = f;
                }
                kept += 1;
            }
        }
        self.len = kept;
        for u in self.unanswered.iter_mut() {
            if u.is_some_and(|u| matches!(u.kind, FaultKind::Stall { .. }) && u.sid == sid) {
                *u = None;
            }
        }
    }
}

/// The fault a stall record describes, or `None` for a record that holds no transaction.
pub fn stall_fault(e: &Event) -> Option<PageFault> {
    let stag = e.stag?;
    let mut perm = FaultPerm::empty();
    if e.flags.contains(EventFlags::RNW) {
        perm |= FaultPerm::READ;
    } else {
        perm |= FaultPerm::WRITE;
    }
    perm.set(FaultPerm::EXEC, e.flags.contains(EventFlags::IND));
    perm.set(FaultPerm::PRIV, e.flags.contains(EventFlags::PNU));
    Some(PageFault {
        device: DeviceId(e.stream_id.0),
        pasid: e.substream_id.and_then(Pasid::new),
        addr: e.input_address.unwrap_or(0),
        perm,
        kind: FaultKind::Stall { stag },
        // Given when the fault is handed out (`drain_page_faults`).
        generation: 0,
        sequence: 0,
    })
}

/// The answer a drain sends itself for `f` when it cannot hand it out: Invalid Request for
/// a page request group's last request (what Linux sends for a fault it cannot queue,
/// `iopf_error_response`; Response Failure would disable the function's PRI for good),
/// Abort for a stall; `None` for what needs no answer.
fn refusal(f: &PageFault) -> Option<Command> {
    let sid = StreamId(f.device.0);
    match f.kind {
        FaultKind::PageRequest { last: false, .. } => None,
        FaultKind::PageRequest { group, .. } => {
            let ssid = f.pasid.and_then(|p| SubstreamId::new(p.get()).ok());
            Command::pri_resp(sid, ssid, group, PriResponse::InvalidRequest).ok()
        }
        FaultKind::Stall { stag } => Some(Command::resume(sid, stag, ResumeAction::Abort)),
    }
}

/// Events taken from the queue per round of [`SmmuUnit::handle_events`]: the stalls of a
/// round that find the book full are aborted at its end, before the event queue's lock is
/// released.
pub(crate) const EVENT_ROUND: usize = 16;

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// Files `e`, the record at position `at` of the event queue (`EventQueue::read`), if it
    /// is a stall record whose transaction was not terminated since; returns the stall to
    /// abort when the book is full. Called with the event queue's lock held from the read of
    /// the record, so a termination ([`terminate_stalls`](Self::terminate_stalls)) comes
    /// wholly before or after it.
    pub(crate) fn file_stall(&self, e: &Event, at: u64) -> Option<(StreamId, u16)> {
        let f = stall_fault(e)?;
        let mut book = self.stalls.lock();
        book.prune(at);
        if book.fenced(e.stream_id, at) {
            return None;
        }
        let f = PageFault {
            sequence: at.wrapping_add(1),
            ..f
        };
        if book.push(f) {
            return None;
        }
        book.aborted = book.aborted.saturating_add(1);
        Some((e.stream_id, e.stag.unwrap_or(0)))
    }

    /// Stalls aborted because the unit's book of unanswered stalls was full.
    pub fn stalls_aborted(&self) -> u64 {
        self.stalls.lock().aborted
    }

    /// Aborts the stalled transaction `(sid, stag)` (a `CMD_RESUME` with Abort and a sync).
    /// Called with the event queue's lock held since its record was read, so no termination
    /// nor `SMMUEN` clear (which take it) has freed the STAG meanwhile.
    pub(crate) fn abort_stall(&self, sid: StreamId, stag: u16) -> Result<(), SmmuError> {
        self.with_cmdq(|q, r| {
            q.submit_and_sync(r, &[Command::resume(sid, stag, ResumeAction::Abort)])
        })
    }

    /// Terminates every transaction of `sid` still stalled (`CMD_STALL_TERM` and a sync) once
    /// its STE terminates new ones, then forgets its filed stalls and fences off the records
    /// of its stalls still unread in the event queue: for a stream that may stall, when its
    /// last attachment leaves (§4.7.2).
    ///
    /// The event queue's lock is held throughout (lock order: event queue, book, PRI queue,
    /// command queue), so no [`handle_events`](Self::handle_events) is between reading a record and
    /// filing it: a record read before is filed before and forgotten here; one still in the
    /// queue (the unit wrote it before the termination completed, so before the `PROD` read
    /// after the sync) is at a position the fence covers and is never filed.
    ///
    /// # Errors
    /// The command's or the sync's error ([`Error::CommandError`], [`Error::Timeout`], ...):
    /// the stalls may still be held, so the book keeps them and nothing is fenced; the caller
    /// owes the termination and sends it again. [`Error::Busy`] (nothing sent) when
    /// [`MAX_FENCES`] other streams are fenced with records still unread: once
    /// `handle_events` has read them, the call succeeds.
    #[inline(never)]
    pub(crate) fn terminate_stalls(&self, sid: StreamId) -> Result<(), Error> {
        let eventq = self.eventq.lock();
        let mut book = self.stalls.lock();
        if let Some(q) = eventq.as_ref() {
            book.prune(q.read());
            if !book.has_fence_room(sid) {
                return Err(Error::Busy);
            }
        }
        self.with_cmdq(|q, r| q.submit_and_sync(r, &[Command::stall_term(sid)]))?;
        book.forget(sid);
        if let Some(q) = eventq.as_ref() {
            let until = q.written(&self.regs);
            if until > q.read() {
                book.fence(sid, until);
            }
        }
        Ok(())
    }

    /// [`Iommu::drain_page_faults`](crate::iommu::Iommu::drain_page_faults): filed stalls
    /// first, then the PRI queue. A fault that needs an answer and finds its stream's share
    /// ([`STREAM_QUOTA`]) or the book full is answered here (Invalid Request, or Abort) rather
    /// than handed out; a call answers at most [`REFUSED_BATCH`] so and then returns with
    /// `more`, so every call makes progress and the PRI queue is drained whoever answers.
    ///
    /// While translation is off ([`disable`](SmmuUnit::disable), a failed `enable`) the PRI
    /// queue's requests are taken and dropped: no CMD_PRI_RESP is sent (the unit would ignore
    /// it, §6.3.9.6) and none is handed out (the endpoint's PRI is re-initialised before the
    /// re-enable and forgets their groups, which `disable` forgot too). After such a call the
    /// requests it took are gone, counted in [`faults_discarded`](SmmuUnit::faults_discarded),
    /// and `overflow` is set, as for requests the unit lost, so that the caller drops the
    /// partial groups it holds (`FaultQueue::discard_partial`); the slots of `out` past
    /// `reported` may have been written. Filed stalls are handed out as ever. The first call
    /// after `SMMUEN` was cleared also sets `overflow` if a request that was not its group's
    /// last had been handed out before, whether or not the PRI queue held anything.
    pub(crate) fn drain_page_faults_impl(
        &self,
        out: &mut [PageFault],
    ) -> Result<FaultDrain, Error> {
        self.usable()?;
        let mut d = FaultDrain::default();
        let mut refused = [Command::plain_sync(); REFUSED_BATCH];
        let mut n_refused = 0;
        // Lock order: book, PRI queue, command queue. The book is held until the answers this
        // call sends are queued (see the module documentation).
        let mut book = self.stalls.lock();
        let mut priq = self.priq.lock();
        if priq.is_none() && !self.features.stall {
            return Err(Error::Unsupported(Missing::Mode {
                what: "I/O page faults (SMMUv3 IDR0.PRI, or IDR0.STALL_MODEL = 0b00)",
            }));
        }
        while d.reported < out.len() && n_refused < REFUSED_BATCH {
            let Some(mut f) = book.pop() else { break };
            if book.hand_out(&mut f) {
                if let Some(slot) = out.get_mut(d.reported) {
                    *slot = f;
                }
                d.reported += 1;
            } else if let (FaultKind::Stall { stag }, Some(slot)) =
                (f.kind, refused.get_mut(n_refused))
            {
                *slot = Command::resume(StreamId(f.device.0), stag, ResumeAction::Abort);
                n_refused += 1;
            }
        }
        d.more = book.len > 0;
        let translating = self.is_enabled();
        if let (Some(pq), false) = (priq.as_mut(), translating) {
            // Translation off (`enable` and `disable` change `enabled` under the book, held
            // here): dropped, not answered. `out` past what was reported serves as scratch.
            let p = pq.drain(&self.regs, out.get_mut(d.reported..).unwrap_or_default());
            book.discarded = book.discarded.saturating_add(p.reported as u64);
            d.more |= p.more;
            d.overflow = p.overflow || p.reported > 0;
        } else if let Some(pq) = priq.as_mut() {
            // No more requests than the refusals left could answer.
            let room = out.len().min(d.reported + REFUSED_BATCH - n_refused);
            let rest = out.get_mut(d.reported..room).unwrap_or_default();
            let p = pq.drain(&self.regs, rest);
            let mut kept = 0;
            for k in 0..p.reported {
                let Some(mut f) = rest.get(k).copied() else {
                    break;
                };
                if book.hand_out(&mut f) {
                    if let Some(slot) = rest.get_mut(kept) {
                        *slot = f;
                    }
                    kept += 1;
                } else if let (Some(cmd), Some(slot)) = (refusal(&f), refused.get_mut(n_refused)) {
                    *slot = cmd;
                    n_refused += 1;
                }
            }
            d.reported += kept;
            d.more |= p.more;
            d.overflow = p.overflow;
        }
        d.reached = FaultSequence {
            page_requests: priq.as_ref().map_or(0, |q| q.consumed()),
            stalls: book.stalls_reached(),
        };
        drop(priq);
        if n_refused > 0 {
            book.refused = book.refused.saturating_add(n_refused as u64);
            // Sent under the book; a failure leaves the devices to their own time-outs
            // (nothing else would answer them), as an abort of an unfiled stall.
            let cmds = refused.get(..n_refused).unwrap_or_default();
            let _ = self.with_cmdq(|q, r| q.submit_and_sync(r, cmds));
            d.more = true;
        }
        if book.partials_ended {
            // Reported once, whether or not this call took anything (the PRI queue may have
            // been empty when SMMUEN was cleared).
            book.partials_ended = false;
            d.overflow = true;
        }
        drop(book);
        if !d.more && self.priq_lost.swap(false, Ordering::AcqRel) {
            d.overflow = true;
        }
        Ok(d)
    }

    /// [`Iommu::page_fault_fence`](crate::iommu::Iommu::page_fault_fence): the PRI queue's
    /// entries consumed plus those before `PROD`, and the event queue's records before its
    /// `PROD` (a stall's sequence is its record's position plus one), read now, after the
    /// detach's `CMD_SYNC` completed (its ATC invalidation's completion comes behind the
    /// device's earlier page requests). Nothing is waited for. `None` when the unit has no
    /// PRI queue and no stall model.
    ///
    /// # Errors
    /// None today (reads only).
    pub(crate) fn page_fault_fence_impl(&self) -> Result<Option<FaultSequence>, Error> {
        // Lock order: event queue, book (not taken), PRI queue.
        let eventq = self.eventq.lock();
        let stalls = match eventq.as_ref() {
            Some(q) if self.features.stall => q.written(&self.regs),
            _ => 0,
        };
        let priq = self.priq.lock();
        if priq.is_none() && !self.features.stall {
            return Ok(None);
        }
        let page_requests = priq.as_ref().map_or(0, |q| q.fence(&self.regs));
        Ok(Some(FaultSequence {
            page_requests,
            stalls,
        }))
    }

    /// Faults the unit answered itself because their stream's share ([`STREAM_QUOTA`]) or
    /// the book ([`MAX_UNANSWERED`]) was full.
    pub fn faults_refused(&self) -> u64 {
        self.stalls.lock().refused
    }

    /// Page requests a drain took from the PRI queue while translation was off and dropped,
    /// unanswered (see [`disable`](SmmuUnit::disable)).
    pub fn faults_discarded(&self) -> u64 {
        self.stalls.lock().discarded
    }

    /// [`Iommu::page_response`](crate::iommu::Iommu::page_response): `CMD_PRI_RESP` for a page
    /// request group (Success, InvalidRequest, ResponseFailure), `CMD_RESUME` for a stall
    /// (Retry for Success, Abort otherwise), then a sync. Only for a fault a drain handed out
    /// and nobody answered ([`Error::NotOutstanding`] otherwise, nothing sent).
    ///
    /// The book is held from the check until the command's sync completed (lock order:
    /// book, command queue), and the fault is answered once it is queued: a termination or an
    /// `SMMUEN` clear (which free STAGs, under the book) comes wholly before (the answer is
    /// `NotOutstanding`, or `PriResponseIgnored`) or after the unit consumed the command
    /// (so a CMD_PRI_RESP is never left in the queue for a unit that ignores it, §4.5).
    ///
    /// # Errors
    /// What is true after each:
    /// - a fault handed out before `SMMUEN` was cleared ([`disable`](SmmuUnit::disable), or
    ///   [`enable`](SmmuUnit::enable), which starts from `CR0` = 0): [`Error::NotOutstanding`],
    ///   nothing sent, as for any fault not outstanding, also once a new fault with the same
    ///   group index or STAG was handed out (the answer carries the fault's
    ///   [`generation`](PageFault::generation), which the clear ended). The clear forgot it:
    ///   the endpoint's PRI is re-initialised before the re-enable (§6.3.9.6) and may reuse
    ///   the group index, and the unit gives the ended stalls' STAGs to new ones (§3.12.2);
    /// - a page request answered while `enabled` is false but the clear of `SMMUEN` was not
    ///   acknowledged (`disable` failed with [`SmmuError::Cr0AckTimeout`]: the unit may
    ///   already ignore CMD_PRI_RESP, §6.3.9.6): [`Error::Hardware`] from
    ///   [`SmmuError::PriResponseIgnored`], nothing queued, the fault still outstanding until
    ///   a `disable` or `enable` completes the clear;
    /// - the command never reached the queue (the unit failed or was never enabled, no room
    ///   in the queue within the poll budget: [`Error::Timeout`] "command queue space", or a
    ///   command error of an earlier command met while waiting for room): the fault is still
    ///   outstanding (`page_response_owed` says so) and the answer may be sent again;
    /// - the command was queued and its sync failed (`Timeout` "CMD_SYNC", a command error,
    ///   service failure, an aborted completion MSI): the fault is answered (a second answer
    ///   is `NotOutstanding`): the device has, or will have, this one, or (for a command the
    ///   unit refused) waits for its own time-out.
    pub(crate) fn page_response_impl(&self, response: &PageResponse) -> Result<(), Error> {
        let cmd = self.response_command(response)?;
        let mut book = self.stalls.lock();
        let Some(i) = book.outstanding(response) else {
            return Err(Error::NotOutstanding {
                device: response.device,
                pasid: response.pasid,
                kind: response.kind,
            });
        };
        self.usable()?;
        if matches!(response.kind, FaultKind::PageRequest { .. }) && !self.is_enabled() {
            // The unit may ignore the CMD_PRI_RESP (§6.3.9.6): never queued, the record stays
            // until the clear of SMMUEN is acknowledged, which forgets it. `enable` and
            // `disable` change SMMUEN under the book.
            return Err(SmmuError::PriResponseIgnored {
                sid: response.device.0,
            }
            .into());
        }
        let mut guard = self.cmdq.lock();
        let Some(q) = guard.as_mut() else {
            return Err(SmmuError::InvalidConfig {
                reason: "the unit is not enabled",
            }
            .into());
        };
        if let Err(e) = q.submit(&self.regs, &[cmd]) {
            // Never queued: the record stays, and the answer may be sent again.
            drop(guard);
            drop(book);
            return Ok(self.note(Err(e))?);
        }
        if let Some(slot) = book.unanswered.get_mut(i) {
            *slot = None;
        }
        // The book is held through the sync: `disable` clears SMMUEN under it, and a
        // CMD_PRI_RESP still queued when it did would be ignored (§4.5) with the sync
        // completing all the same: answered `Ok`, the record gone, the device never told.
        let r = q.sync(&self.regs);
        drop(guard);
        drop(book);
        Ok(self.note(r)?)
    }

    /// [`Iommu::page_response_owed`](crate::iommu::Iommu::page_response_owed).
    pub(crate) fn page_response_owed_impl(&self, response: &PageResponse) -> bool {
        self.stalls.lock().outstanding(response).is_some()
    }

    /// [`Iommu::page_response_abandon`](crate::iommu::Iommu::page_response_abandon): the
    /// record goes, so it no longer counts against its stream's [`STREAM_QUOTA`] (a record
    /// kept for an answer nobody sends again held that place for the unit's life).
    pub(crate) fn page_response_abandon_impl(&self, response: &PageResponse) {
        let mut book = self.stalls.lock();
        if let Some(i) = book.outstanding(response) {
            if let Some(slot) = book.unanswered.get_mut(i) {
                *slot = None;
            }
        }
    }

    /// The command that sends `response`.
    fn response_command(&self, response: &PageResponse) -> Result<Command, Error> {
        let sid = StreamId(response.device.0);
        let cmd = match response.kind {
            FaultKind::PageRequest { group, .. } => {
                if !self.features.pri {
                    return Err(Error::Unsupported(Missing::Mode {
                        what: "CMD_PRI_RESP (IDR0.PRI)",
                    }));
                }
                let ssid = match response.pasid {
                    Some(p) => Some(SubstreamId::new(p.get())?),
                    None => None,
                };
                let resp = match response.code {
                    ResponseCode::Success => PriResponse::Success,
                    ResponseCode::Invalid => PriResponse::InvalidRequest,
                    ResponseCode::Failure => PriResponse::Failure,
                };
                Command::pri_resp(sid, ssid, group, resp)?
            }
            FaultKind::Stall { stag } => {
                if !self.features.stall {
                    return Err(Error::Unsupported(Missing::Mode {
                        what: "CMD_RESUME (IDR0.STALL_MODEL = 0b00)",
                    }));
                }
                let action = match response.code {
                    ResponseCode::Success => ResumeAction::Retry,
                    ResponseCode::Invalid | ResponseCode::Failure => ResumeAction::Abort,
                };
                Command::resume(sid, stag, action)
            }
        };
        Ok(cmd)
    }
}
