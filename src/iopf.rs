//! I/O page faults: what a unit reports when a device asks for a page (PCIe PRI, PCI Express
//! Base Specification rev. 6.0 §10.4 "Page Request Services") or a stalled transaction waits for
//! software (Arm SMMUv3 IHI 0070 F.b §3.12.2 "Stall model"), and the fault queue that holds them
//! for one IOASID context until its owner answers, as Linux iommufd's fault object does
//! (`IOMMU_FAULT_QUEUE_ALLOC`, `struct iommu_hwpt_pgfault`, `struct iommu_hwpt_page_response`
//! in `include/uapi/linux/iommufd.h`).
//!
//! The units decode their own formats into [`PageFault`] (VT-d: the Page Request Queue,
//! rev. 4.1 §7.5 and §11.4.9; SMMUv3: the PRI queue, §8.1, and stall events, §7.3) and carry out
//! a [`PageResponse`] (VT-d: the page group response descriptor, §6.5.2.9 / §7.7; SMMUv3:
//! `CMD_PRI_RESP`, §4.7.1, and `CMD_RESUME`, §4.7.2).
//!
//! [`FaultQueue`] is fixed-size (`N` records, no allocation). A page request group (requests
//! of one device and PASID with one Page Request Group Index, the last one flagged) becomes
//! readable when its last request arrives; every record of a group carries the group's
//! cookie, and the group is answered once, by cookie. A stall is a group of one. A record that
//! does not fit is counted ([`FaultQueue::overflowed`]) and handed back to the caller, which
//! must answer it (with [`ResponseCode::Invalid`]: the device must not wait for an answer
//! nobody will give), as Linux's `iommu_report_device_fault` does when it cannot queue one.

use core::fmt;

use bitflags::bitflags;

use crate::iommu::{DeviceId, Pasid};

bitflags! {
    /// What the device asked for (PRI: Read / Write / Execute / Privileged Mode Requested;
    /// SMMUv3 event: `RnW`, `InD`, `PnU`). iommufd `IOMMU_PGFAULT_PERM_*`.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct FaultPerm: u8 {
        /// Read access.
        const READ = 1 << 0;
        /// Write access.
        const WRITE = 1 << 1;
        /// Instruction fetch.
        const EXEC = 1 << 2;
        /// Privileged (supervisor) access.
        const PRIV = 1 << 3;
    }
}

/// How the unit expects the fault to be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A PCIe page request: answered once per group (VT-d page group response, SMMUv3
    /// `CMD_PRI_RESP`), after the request flagged `last` (VT-d `LPIG`, SMMUv3 `PRG_LAST`).
    PageRequest {
        /// Page Request Group Index (9 bits).
        group: u16,
        /// Last request of its group: only the group's last request is answered.
        last: bool,
    },
    /// A transaction the SMMU holds (an event with `Stall` = 1): answered by `CMD_RESUME`
    /// with its tag, retried or aborted.
    Stall {
        /// The event's `STAG`.
        stag: u16,
    },
}

/// One I/O page fault, as a unit reports it (iommufd `struct iommu_hwpt_pgfault`, without the
/// cookie, which the queue gives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageFault {
    /// The requester on its unit (VT-d requester ID, SMMUv3 StreamID).
    pub device: DeviceId,
    /// The PASID (SubstreamID) of the request, if it carried one.
    pub pasid: Option<Pasid>,
    /// The address asked for (page-aligned for page requests).
    pub addr: u64,
    /// What the device asked to do there.
    pub perm: FaultPerm,
    /// How it is answered.
    pub kind: FaultKind,
    /// The unit's generation when it handed the fault out, which its answer carries
    /// ([`response`](Self::response)): SMMUv3 counts the clears of `SMMU_CR0.SMMUEN`, after
    /// which a group index or STAG from before may name a new fault, and refuses an answer
    /// from an older generation. 0 where a unit has none (VT-d, AMD-Vi).
    pub generation: u32,
    /// Where the unit's drain took it: the unit numbers the entries it consumes from its queue,
    /// from 1, one count for page requests and one for stalls ([`FaultSequence`]), so that a
    /// fence ([`Iommu::page_fault_fence`](crate::iommu::Iommu::page_fault_fence)) says which
    /// faults were raised before it. 0: not numbered (a fault built by hand).
    pub sequence: u64,
}

/// A position in a unit's fault queues: how many page requests, and how many stalls, it has
/// numbered ([`PageFault::sequence`]). As a fence (`Iommu::page_fault_fence`): every fault
/// already written to the unit's queues when it was taken has a sequence at or below it; as
/// what a drain reached ([`FaultDrain::reached`]): every fault drained so far has one at or
/// below it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FaultSequence {
    /// Page request queue entries (VT-d page request descriptors, SMMUv3 PRI queue entries).
    pub page_requests: u64,
    /// Stall records (SMMUv3 events with `Stall` = 1).
    pub stalls: u64,
}

impl FaultSequence {
    /// A fence covering every fault, numbered or not: what stands in for a fence the unit
    /// could not give (until it gives one).
    pub const ALL: Self = Self {
        page_requests: u64::MAX,
        stalls: u64::MAX,
    };

    /// Whether `fault` was numbered at or below this fence (in its kind's count).
    pub const fn covers(&self, fault: &PageFault) -> bool {
        match fault.kind {
            FaultKind::PageRequest { .. } => fault.sequence <= self.page_requests,
            FaultKind::Stall { .. } => fault.sequence <= self.stalls,
        }
    }

    /// Whether a drain that `reached` this far has taken everything this fence covers.
    pub const fn passed_by(&self, reached: Self) -> bool {
        reached.page_requests >= self.page_requests && reached.stalls >= self.stalls
    }

    /// The later of two fences, count by count.
    pub fn max(self, other: Self) -> Self {
        Self {
            page_requests: self.page_requests.max(other.page_requests),
            stalls: self.stalls.max(other.stalls),
        }
    }
}

impl PageFault {
    /// A placeholder (device 0, no PASID, a stall with tag 0), to fill buffers with.
    pub const EMPTY: Self = Self {
        device: DeviceId(0),
        pasid: None,
        addr: 0,
        perm: FaultPerm::empty(),
        kind: FaultKind::Stall { stag: 0 },
        generation: 0,
        sequence: 0,
    };

    /// Whether answering the fault's group goes through this record (the last request of a
    /// page request group, or a stall).
    pub const fn needs_response(&self) -> bool {
        match self.kind {
            FaultKind::PageRequest { last, .. } => last,
            FaultKind::Stall { .. } => true,
        }
    }

    /// The response that answers this fault's group with `code`.
    pub const fn response(&self, code: ResponseCode) -> PageResponse {
        PageResponse {
            device: self.device,
            pasid: self.pasid,
            kind: self.kind,
            code,
            generation: self.generation,
        }
    }
}

/// The answer to a fault group (iommufd `enum iommu_hwpt_pgfault_response_code`, plus the
/// kernel's `IOMMU_PAGE_RESP_FAILURE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ResponseCode {
    /// The pages are there: retry (VT-d Success, SMMUv3 PRI `Success`, stall `RETRY`).
    Success = 0,
    /// The request is not valid (VT-d Invalid Request, SMMUv3 PRI `Deny`, stall `ABORT`): the
    /// device must not retry.
    Invalid = 1,
    /// Nobody can answer (VT-d Response Failure, SMMUv3 PRI `Fail`, stall `ABORT`): the device
    /// stops using page requests until reset (PCIe Response Failure disables its PRI).
    Failure = 2,
}

impl ResponseCode {
    /// Decodes the C ABI's value.
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            0 => Some(Self::Success),
            1 => Some(Self::Invalid),
            2 => Some(Self::Failure),
            _ => None,
        }
    }
}

/// What a unit is told to send a device: the answer to one fault group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PageResponse {
    /// The requester on its unit.
    pub device: DeviceId,
    /// The PASID of the group's requests (sent back where the unit requires it).
    pub pasid: Option<Pasid>,
    /// The group (PRGI, with `last` set) or the stall tag.
    pub kind: FaultKind,
    /// The answer.
    pub code: ResponseCode,
    /// The generation of the fault answered ([`PageFault::generation`]).
    pub generation: u32,
}

/// What a drain of a unit's page request (or stall) reporting found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FaultDrain {
    /// Faults written to the caller's slice.
    pub reported: usize,
    /// Faults remain (the slice was full): drain again.
    pub more: bool,
    /// The unit lost requests before this drain (VT-d `PRS.PRO`, SMMUv3 `PRIQ_PROD.OVFLG`);
    /// the overflow was acknowledged. SMMUv3 also sets it when the drain dropped the PRI
    /// queue's requests because translation is off, and on the first drain after `SMMUEN`
    /// was cleared if a request that was not its group's last had been handed out (those
    /// groups died with the endpoint's PRI, re-initialised before the unit is enabled again,
    /// even when the PRI queue was empty): drop the partial groups.
    pub overflow: bool,
    /// How far the unit's numbering went with this drain ([`PageFault::sequence`]): every
    /// fault numbered at or below it has been handed out (or dropped) by this or an earlier
    /// drain. 0 where the unit numbers nothing.
    pub reached: FaultSequence,
}

/// The name a fault group has in its context's queue (iommufd's `cookie`). The upper 8 bits
/// are the queue's owner tag, so that a cookie from another context is told apart from one
/// that is not outstanding (up to 255 contexts; beyond that two owners may share a tag, and
/// a foreign cookie is refused as not outstanding).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FaultCookie(pub u32);

impl fmt::Display for FaultCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A fault as the queue's owner reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuedFault {
    /// The unit that reported it, as its owner numbers units (the IOASID layer: `UnitId`).
    pub unit: u8,
    /// The fault.
    pub fault: PageFault,
    /// Its group's cookie: answer with it ([`FaultQueue::respond`]).
    pub cookie: FaultCookie,
}

/// A refused answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultError {
    /// No group with this cookie awaits an answer: it was answered already (a double
    /// response), never read, or never existed.
    NotOutstanding(FaultCookie),
    /// The cookie names another context's fault.
    NotOwned(FaultCookie),
    /// The context has no fault queue (`IoasidCtx::fault_queue_alloc` first): the fault was
    /// not taken.
    NoQueue,
    /// The queue is full: the fault was not taken (and counted as overflow).
    QueueFull,
    /// The faulting device (and PASID) is not bound to and attached in this context.
    NotRouted {
        /// The device, on its unit.
        device: DeviceId,
        /// The PASID of the fault.
        pasid: Option<Pasid>,
    },
}

impl fmt::Display for FaultError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FaultError::NotOutstanding(c) => write!(f, "no fault {c} awaits a response"),
            FaultError::NotOwned(c) => write!(f, "fault {c} belongs to another context"),
            FaultError::NoQueue => write!(f, "no fault queue allocated"),
            FaultError::QueueFull => write!(f, "fault queue full"),
            FaultError::NotRouted { device, pasid } => match pasid {
                Some(p) => write!(f, "device {:#x} PASID {p} is not attached here", device.0),
                None => write!(f, "device {:#x} is not attached here", device.0),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// A request of a group whose last request has not arrived.
    Partial,
    /// Readable.
    Ready,
    /// Read; the group's answering record, waiting for [`FaultQueue::respond`].
    Outstanding,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    unit: u8,
    fault: PageFault,
    cookie: FaultCookie,
    stage: Stage,
    /// Arrival order, for reading in order.
    seq: u32,
}

/// A context's fault queue: `N` records, no allocation.
#[derive(Debug)]
pub struct FaultQueue<const N: usize> {
    entries: [Option<Entry>; N],
    tag: u8,
    open: bool,
    next_cookie: u32,
    next_seq: u32,
    overflowed: u64,
}

impl<const N: usize> FaultQueue<N> {
    /// An empty queue whose cookies carry `tag` (non-zero: 0 is mapped to 1).
    pub const fn new(tag: u8) -> Self {
        Self {
            entries: [None; N],
            tag: if tag == 0 { 1 } else { tag },
            open: false,
            next_cookie: 0,
            next_seq: 0,
            overflowed: 0,
        }
    }

    /// Gives the queue's cookies `tag` (non-zero: 0 is mapped to 1) from now on.
    pub fn retag(&mut self, tag: u8) {
        self.tag = if tag == 0 { 1 } else { tag };
    }

    /// Marks the queue as in use (its owner asked for it: iommufd `IOMMU_FAULT_QUEUE_ALLOC`).
    pub fn open(&mut self) {
        self.open = true;
    }

    /// Whether [`open`](Self::open) was called.
    pub const fn is_open(&self) -> bool {
        self.open
    }

    /// The owner tag for a context number (1..=255, cycling).
    pub const fn tag_for(ctx: u32) -> u8 {
        (ctx % 255) as u8 + 1
    }

    /// Records the queue could not hold since it was made.
    pub const fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Records held (partial groups, readable and outstanding).
    pub fn len(&self) -> usize {
        self.entries.iter().flatten().count()
    }

    /// Whether the queue holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn fresh_cookie(&mut self) -> FaultCookie {
        self.next_cookie = (self.next_cookie + 1) & 0x00ff_ffff;
        if self.next_cookie == 0 {
            self.next_cookie = 1;
        }
        FaultCookie(u32::from(self.tag) << 24 | self.next_cookie)
    }

    /// Queues `fault`. A page request joins the partial group of the same device, PASID and
    /// index (or starts one); its group becomes readable with its last request.
    ///
    /// # Errors
    /// `Err(fault)` when the queue is full: the fault is counted in
    /// [`overflowed`](Self::overflowed), nothing else changes, and the caller must answer it
    /// if [`PageFault::needs_response`] (with [`ResponseCode::Invalid`]) so that the device
    /// does not wait for ever.
    pub fn push(&mut self, unit: u8, fault: PageFault) -> Result<FaultCookie, PageFault> {
        let Some(free) = self.entries.iter().position(Option::is_none) else {
            self.overflowed = self.overflowed.saturating_add(1);
            return Err(fault);
        };
        let (cookie, stage) = match fault.kind {
            FaultKind::PageRequest { group, last } => {
                let joined = self.entries.iter().flatten().find(|e| {
                    e.stage == Stage::Partial
                        && e.unit == unit
                        && e.fault.device == fault.device
                        && e.fault.pasid == fault.pasid
                        && e.fault.generation == fault.generation
                        && matches!(e.fault.kind, FaultKind::PageRequest { group: g, .. } if g == group)
                });
                let cookie = match joined {
                    Some(e) => e.cookie,
                    None => self.fresh_cookie(),
                };
                if last {
                    for e in self.entries.iter_mut().flatten() {
                        if e.cookie == cookie && e.stage == Stage::Partial {
                            e.stage = Stage::Ready;
                        }
                    }
                    (cookie, Stage::Ready)
                } else {
                    (cookie, Stage::Partial)
                }
            }
            FaultKind::Stall { .. } => (self.fresh_cookie(), Stage::Ready),
        };
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        if let Some(slot) = self.entries.get_mut(free) {
            *slot = Some(Entry {
                unit,
                fault,
                cookie,
                stage,
                seq,
            });
        }
        Ok(cookie)
    }

    /// Moves up to `out.len()` readable faults, oldest first, into `out` and returns how many.
    /// A group's answering record stays, outstanding until [`respond`](Self::respond); the
    /// others leave the queue.
    pub fn read(&mut self, out: &mut [QueuedFault]) -> usize {
        let mut n = 0;
        while n < out.len() {
            let oldest = self
                .entries
                .iter_mut()
                .flatten()
                .filter(|e| e.stage == Stage::Ready)
                .min_by_key(|e| e.seq.wrapping_sub(self.next_seq));
            let Some(e) = oldest else { break };
            if let Some(o) = out.get_mut(n) {
                *o = QueuedFault {
                    unit: e.unit,
                    fault: e.fault,
                    cookie: e.cookie,
                };
            }
            e.stage = Stage::Outstanding;
            n += 1;
        }
        for slot in &mut self.entries {
            if slot.is_some_and(|e| e.stage == Stage::Outstanding && !e.fault.needs_response()) {
                *slot = None;
            }
        }
        n
    }

    /// The unit and the response of the outstanding group named `cookie`, left in the queue.
    ///
    /// # Errors
    /// As [`respond`](Self::respond).
    pub fn outstanding(
        &self,
        cookie: FaultCookie,
        code: ResponseCode,
    ) -> Result<(u8, PageResponse), FaultError> {
        if (cookie.0 >> 24) as u8 != self.tag {
            return Err(FaultError::NotOwned(cookie));
        }
        self.entries
            .iter()
            .flatten()
            .find(|e| {
                e.cookie == cookie && e.stage == Stage::Outstanding && e.fault.needs_response()
            })
            .map(|e| (e.unit, e.fault.response(code)))
            .ok_or(FaultError::NotOutstanding(cookie))
    }

    /// Takes the outstanding group named `cookie` out of the queue and returns the unit and the
    /// response it must send.
    ///
    /// # Errors
    /// [`FaultError::NotOwned`] for another queue's cookie, [`FaultError::NotOutstanding`] if
    /// no read group with that cookie awaits an answer (answered already, or never read).
    pub fn respond(
        &mut self,
        cookie: FaultCookie,
        code: ResponseCode,
    ) -> Result<(u8, PageResponse), FaultError> {
        if (cookie.0 >> 24) as u8 != self.tag {
            return Err(FaultError::NotOwned(cookie));
        }
        let slot = self.entries.iter_mut().find(|s| {
            s.is_some_and(|e| {
                e.cookie == cookie && e.stage == Stage::Outstanding && e.fault.needs_response()
            })
        });
        match slot.and_then(Option::take) {
            Some(e) => Ok((e.unit, e.fault.response(code))),
            None => Err(FaultError::NotOutstanding(cookie)),
        }
    }

    /// Drops the partial groups (no last request yet) `unit` reported: after the unit's own
    /// queue overflowed, their last requests may be lost and the groups would hold records for
    /// ever (Linux: `iopf_queue_discard_partial`). Partial groups need no answer. Returns how
    /// many records were dropped.
    pub fn discard_partial(&mut self, unit: u8) -> usize {
        let mut n = 0;
        for slot in &mut self.entries {
            if slot.is_some_and(|e| e.unit == unit && e.stage == Stage::Partial) {
                *slot = None;
                n += 1;
            }
        }
        n
    }

    /// Removes every record `matches` (given the unit and the fault) selects, in every stage,
    /// and hands `answer` the response with `code` each of their groups still owed. iommufd
    /// answers a detached device's faults, read or not, this way with
    /// [`ResponseCode::Invalid`] (`iommufd_auto_response_faults`; a stall is aborted). Returns
    /// how many groups were answered.
    pub fn answer_matching(
        &mut self,
        code: ResponseCode,
        mut matches: impl FnMut(u8, &PageFault) -> bool,
        mut answer: impl FnMut(u8, PageResponse),
    ) -> usize {
        let mut answered = 0;
        for slot in &mut self.entries {
            let Some(e) = slot else { continue };
            if !matches(e.unit, &e.fault) {
                continue;
            }
            if e.fault.needs_response() {
                answer(e.unit, e.fault.response(code));
                answered += 1;
            }
            *slot = None;
        }
        answered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pr(dev: u32, group: u16, last: bool, addr: u64) -> PageFault {
        PageFault {
            device: DeviceId(dev),
            pasid: Pasid::new(5),
            addr,
            perm: FaultPerm::READ | FaultPerm::WRITE,
            kind: FaultKind::PageRequest { group, last },
            generation: 0,
            sequence: 0,
        }
    }

    #[test]
    fn a_group_is_readable_with_its_last_request_and_answered_once() {
        let mut q = FaultQueue::<4>::new(7);
        let c1 = q.push(0, pr(1, 3, false, 0x1000)).unwrap();
        let mut out = [QueuedFault {
            unit: 0,
            fault: pr(0, 0, false, 0),
            cookie: FaultCookie(0),
        }; 4];
        assert_eq!(q.read(&mut out), 0, "partial group not readable");
        let c2 = q.push(0, pr(1, 3, true, 0x2000)).unwrap();
        assert_eq!(c1, c2);
        assert_eq!(q.read(&mut out), 2);
        assert_eq!((out[0].fault.addr, out[1].fault.addr), (0x1000, 0x2000));
        assert_eq!(q.len(), 1, "only the answering record stays");
        let (_, r) = q.respond(c1, ResponseCode::Success).unwrap();
        assert_eq!(
            r.kind,
            FaultKind::PageRequest {
                group: 3,
                last: true
            }
        );
        assert_eq!(
            q.respond(c1, ResponseCode::Success),
            Err(FaultError::NotOutstanding(c1))
        );
        assert!(q.is_empty());
    }

    #[test]
    fn the_generation_costs_a_fault_no_room() {
        // Handed out by the batch (drains fill caller slices, queues hold 64): the generation
        // takes what was padding in a PageFault; a PageResponse grows by its 4 bytes. The
        // sequence (the fence of a detach) costs 8 bytes a fault.
        assert_eq!(core::mem::size_of::<PageFault>(), 40);
        assert_eq!(core::mem::size_of::<PageResponse>(), 24);
    }

    #[test]
    fn a_partial_group_of_an_older_generation_takes_no_new_request() {
        // After an SMMUEN clear the endpoint's PRI is re-initialised and may reuse a group
        // index: a request of the new generation starts its own group.
        let mut q = FaultQueue::<4>::new(1);
        let old = q.push(0, pr(1, 3, false, 0x1000)).unwrap();
        let new = q
            .push(
                0,
                PageFault {
                    generation: 1,
                    ..pr(1, 3, true, 0x2000)
                },
            )
            .unwrap();
        assert_ne!(old, new);
        assert_eq!(
            q.discard_partial(0),
            1,
            "the old partial group is left alone"
        );
    }

    #[test]
    fn a_full_queue_counts_and_hands_back() {
        let mut q = FaultQueue::<2>::new(1);
        q.push(0, pr(1, 1, true, 0)).unwrap();
        q.push(0, pr(1, 2, true, 0)).unwrap();
        assert_eq!(
            q.push(0, pr(1, 3, true, 0x3000)),
            Err(pr(1, 3, true, 0x3000))
        );
        assert_eq!(q.overflowed(), 1);
    }

    #[test]
    fn foreign_and_unread_cookies_are_refused() {
        let mut q = FaultQueue::<2>::new(1);
        let c = q.push(0, pr(1, 1, true, 0)).unwrap();
        assert_eq!(
            q.respond(c, ResponseCode::Success),
            Err(FaultError::NotOutstanding(c)),
            "not read yet"
        );
        let foreign = FaultCookie(2 << 24 | 1);
        assert_eq!(
            q.respond(foreign, ResponseCode::Success),
            Err(FaultError::NotOwned(foreign))
        );
    }

    #[test]
    fn answering_a_device_fails_its_groups_and_drops_partials() {
        let mut q = FaultQueue::<4>::new(1);
        q.push(0, pr(1, 1, false, 0)).unwrap();
        q.push(0, pr(1, 2, true, 0)).unwrap();
        q.push(0, pr(2, 2, true, 0)).unwrap();
        let mut got = [None; 4];
        let mut i = 0;
        let n = q.answer_matching(
            ResponseCode::Invalid,
            |_, f| f.device == DeviceId(1),
            |_, r| {
                got[i] = Some(r);
                i += 1;
            },
        );
        assert_eq!(n, 1);
        assert_eq!(got[0].map(|r| r.code), Some(ResponseCode::Invalid));
        assert_eq!(q.len(), 1);
    }
}
