//! The faults a detach leaves behind: page requests (and stalls) a device raised for an
//! attachment that is gone, still in the unit's queue or in a dispatcher's batch. Linux
//! drains the hardware queue of the old attachment before it answers its faults (VT-d
//! `intel_iommu_drain_pasid_prq`, rev. 4.1 §6.5.2.8 Page-request Drain; iopf
//! `iopf_queue_flush_dev`), waiting for the fault thread. Here the detach waits for nobody:
//! it takes the unit's fence ([`Iommu::page_fault_fence`](crate::iommu::Iommu::page_fault_fence))
//! and quarantines the (unit, device, PASID) up to it; a fault of it numbered at or below the
//! fence is no context's (answered Invalid, as iommufd's auto-response), and the quarantine
//! ends once a drain of the unit passed the fence and every dispatch of the unit under way then
//! (which may hold a batch drained below the fence) has left.
//!
//! Dispatches are counted in two generations per unit, as a grace period: a dispatch enters the
//! unit's current generation; the generation moves on only when the one before it is empty. A
//! quarantine passed in generation `g` ends when the generation is `g + 2`, or `g + 1` with no
//! dispatch of `g` left: every dispatch that was under way when the drain passed the fence has
//! then left. Overlapping dispatches cannot keep a quarantine alive for ever (each dispatch is
//! bounded), as they could when only a dispatch running alone could end one.
//!
//! A stranded device (a dropped context's detach the unit refused) has no detach of the layer
//! after its unit's: [`Registry::release_stranded`](super::Registry::release_stranded)
//! quarantines it instead, every PASID of it (the registry does not know which the dead
//! context attached), up to the unit's fence taken once the embedder blocked the device.

use super::registry::{DeviceLabel, UnitId};
use super::MAX_UNITS;
use crate::iommu::Pasid;
use crate::iopf::{FaultSequence, PageFault};

/// Quarantined (device, PASID) pairs a registry holds; past it, a unit's faults up to the
/// fence are refused whatever their device (one unit-wide fence per unit).
pub const MAX_QUARANTINES: usize = 16;

/// Which of a device's faults a quarantine holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    /// Those without a PASID (`None`) or of one PASID: a detach's.
    Pasid(Option<Pasid>),
    /// Every one, whatever its PASID: a stranded device's release, when the registry does not
    /// know which PASIDs the dead context had attached.
    Device,
}

impl Scope {
    fn covers(self, pasid: Option<Pasid>) -> bool {
        match self {
            Self::Pasid(p) => p == pasid,
            Self::Device => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quarantine {
    label: DeviceLabel,
    scope: Scope,
    /// [`FaultSequence::ALL`] while the unit could give no fence.
    fence: FaultSequence,
    /// When it was added (the registry's count of quarantines added, from 1): a fence a
    /// dispatch took is given only to quarantines added before the dispatch entered.
    added: u64,
    /// The unit's dispatch generation when a drain passed the fence.
    passed: Option<u64>,
}

/// A dispatch's place in the unit's books, from [`Quarantines::enter`] to
/// [`Quarantines::leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DispatchTicket {
    generation: u64,
    /// Quarantines added before the dispatch entered.
    added_before: u64,
}

/// The unit-wide fence of a unit whose pairs did not fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct UnitWide {
    fence: FaultSequence,
    /// The last quarantine merged into it.
    added: u64,
    passed: Option<u64>,
}

/// The registry's quarantines (under its lock, a leaf).
#[derive(Debug)]
pub(super) struct Quarantines {
    entries: [Option<Quarantine>; MAX_QUARANTINES],
    /// Per unit: when the entries were full, the fence every fault of the unit is refused up
    /// to (conservative: other devices' faults already queued are refused too).
    unit_wide: [Option<UnitWide>; MAX_UNITS],
    /// Quarantines added so far.
    adds: u64,
    /// Per unit: the dispatch generation (module docs).
    generation: [u64; MAX_UNITS],
    /// Per unit: dispatches under way, by generation parity.
    active: [[u32; 2]; MAX_UNITS],
}

impl Quarantines {
    pub(super) const EMPTY: Self = Self {
        entries: [None; MAX_QUARANTINES],
        unit_wide: [None; MAX_UNITS],
        adds: 0,
        generation: [0; MAX_UNITS],
        active: [[0; 2]; MAX_UNITS],
    };

    /// Quarantines `label`'s faults with `pasid` up to `fence` (`None`: unknown, every fault
    /// until a fence is known). A later fence replaces an earlier one of the same pair: the
    /// unit's counts only grow, so it covers it.
    pub(super) fn add(
        &mut self,
        label: DeviceLabel,
        pasid: Option<Pasid>,
        fence: Option<FaultSequence>,
    ) {
        self.add_scope(label, Scope::Pasid(pasid), fence);
    }

    /// As [`add`](Self::add), for every fault of `label` whatever its PASID.
    pub(super) fn add_device(&mut self, label: DeviceLabel, fence: Option<FaultSequence>) {
        self.add_scope(label, Scope::Device, fence);
    }

    fn add_scope(&mut self, label: DeviceLabel, scope: Scope, fence: Option<FaultSequence>) {
        let fence = fence.unwrap_or(FaultSequence::ALL);
        self.adds = self.adds.saturating_add(1);
        let added = self.adds;
        let same = |q: &Option<Quarantine>| q.is_some_and(|q| q.label == label && q.scope == scope);
        let slot = match self.entries.iter().position(same) {
            Some(i) => Some(i),
            None => self.entries.iter().position(Option::is_none),
        };
        match slot.and_then(|i| self.entries.get_mut(i)) {
            Some(e) => {
                *e = Some(Quarantine {
                    label,
                    scope,
                    fence,
                    added,
                    passed: None,
                })
            }
            None => {
                if let Some(w) = self.unit_wide.get_mut(usize::from(label.unit.0)) {
                    *w = Some(UnitWide {
                        fence: w.map_or(fence, |w| w.fence.max(fence)),
                        added,
                        passed: None,
                    });
                }
            }
        }
    }

    /// Whether `fault`, from `unit`, belongs to an attachment that is gone.
    pub(super) fn holds(&self, unit: UnitId, fault: &PageFault) -> bool {
        let wide = self
            .unit_wide
            .get(usize::from(unit.0))
            .copied()
            .flatten()
            .is_some_and(|w| w.fence.covers(fault));
        wide || self.entries.iter().flatten().any(|q| {
            q.label.unit == unit
                && q.label.id == fault.device
                && q.scope.covers(fault.pasid)
                && q.fence.covers(fault)
        })
    }

    /// Whether a quarantine of `unit` waits for a fence the unit could not give.
    pub(super) fn fence_unknown(&self, unit: UnitId) -> bool {
        let unknown = |f: &FaultSequence| *f == FaultSequence::ALL;
        self.unit_wide
            .get(usize::from(unit.0))
            .copied()
            .flatten()
            .is_some_and(|w| unknown(&w.fence))
            || self
                .entries
                .iter()
                .flatten()
                .any(|q| q.label.unit == unit && unknown(&q.fence))
    }

    /// Gives `unit`'s unknown fences `fence`, taken by the dispatch of `ticket` after it
    /// entered: later than the detaches of the quarantines added before that, so it covers what
    /// their old attachments raised (and, conservatively, what the new ones raised since). A
    /// quarantine added after the dispatch entered may have been added after the fence was
    /// taken: it keeps waiting for a fence of its own.
    pub(super) fn know_fence(
        &mut self,
        unit: UnitId,
        fence: FaultSequence,
        ticket: DispatchTicket,
    ) {
        let fills =
            |f: FaultSequence, added: u64| f == FaultSequence::ALL && added <= ticket.added_before;
        for q in self.entries.iter_mut().flatten() {
            if q.label.unit == unit && fills(q.fence, q.added) {
                q.fence = fence;
            }
        }
        if let Some(Some(w)) = self.unit_wide.get_mut(usize::from(unit.0)) {
            if fills(w.fence, w.added) {
                w.fence = fence;
            }
        }
    }

    /// A dispatch of `unit` starts: its ticket, for [`leave`](Self::leave) and
    /// [`know_fence`](Self::know_fence).
    pub(super) fn enter(&mut self, unit: UnitId) -> DispatchTicket {
        let u = usize::from(unit.0);
        self.advance(u);
        let generation = self.generation.get(u).copied().unwrap_or(0);
        if let Some(n) = self
            .active
            .get_mut(u)
            .and_then(|a| a.get_mut(parity(generation)))
        {
            *n = n.saturating_add(1);
        }
        DispatchTicket {
            generation,
            added_before: self.adds,
        }
    }

    /// A dispatch of `unit` routed everything it drained, up to `reached`: the quarantines it
    /// passed end once every dispatch under way now has left.
    pub(super) fn passed(&mut self, unit: UnitId, reached: FaultSequence) {
        let u = usize::from(unit.0);
        let now = self.generation.get(u).copied().unwrap_or(0);
        for q in self.entries.iter_mut().flatten() {
            if q.label.unit == unit && q.passed.is_none() && q.fence.passed_by(reached) {
                q.passed = Some(now);
            }
        }
        if let Some(Some(w)) = self.unit_wide.get_mut(u) {
            if w.passed.is_none() && w.fence.passed_by(reached) {
                w.passed = Some(now);
            }
        }
        self.advance(u);
        self.sweep(unit);
    }

    /// A dispatch of `unit` ends.
    pub(super) fn leave(&mut self, unit: UnitId, ticket: DispatchTicket) {
        let u = usize::from(unit.0);
        if let Some(n) = self
            .active
            .get_mut(u)
            .and_then(|a| a.get_mut(parity(ticket.generation)))
        {
            *n = n.saturating_sub(1);
        }
        self.advance(u);
        self.sweep(unit);
    }

    /// Moves unit `u`'s generation on if no dispatch of the one before it is under way.
    fn advance(&mut self, u: usize) {
        let (Some(g), Some(a)) = (self.generation.get_mut(u), self.active.get(u)) else {
            return;
        };
        if a[parity(g.wrapping_sub(1))] == 0 {
            *g = g.wrapping_add(1);
        }
    }

    /// Ends `unit`'s quarantines passed before every dispatch under way now entered.
    fn sweep(&mut self, unit: UnitId) {
        let u = usize::from(unit.0);
        let (Some(&now), Some(&active)) = (self.generation.get(u), self.active.get(u)) else {
            return;
        };
        let over = |passed: Option<u64>| {
            passed.is_some_and(|g| {
                let later = now.wrapping_sub(g);
                later >= 2 || (later == 1 && active[parity(g)] == 0)
            })
        };
        for e in &mut self.entries {
            if e.is_some_and(|q| q.label.unit == unit && over(q.passed)) {
                *e = None;
            }
        }
        if let Some(w) = self.unit_wide.get_mut(u) {
            if w.is_some_and(|w| over(w.passed)) {
                *w = None;
            }
        }
    }

    /// Quarantines held (the pairs'; a unit-wide one counts once).
    pub(super) fn len(&self) -> usize {
        self.entries.iter().flatten().count() + self.unit_wide.iter().flatten().count()
    }
}

fn parity(generation: u64) -> usize {
    (generation & 1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommu::DeviceId;
    use crate::iopf::{FaultKind, FaultPerm};

    fn label(id: u32) -> DeviceLabel {
        DeviceLabel {
            unit: UnitId(0),
            id: DeviceId(id),
        }
    }

    fn request(id: u32, sequence: u64) -> PageFault {
        PageFault {
            device: DeviceId(id),
            pasid: None,
            addr: 0,
            perm: FaultPerm::READ,
            kind: FaultKind::PageRequest {
                group: 1,
                last: true,
            },
            generation: 0,
            sequence,
        }
    }

    const fn at(page_requests: u64) -> FaultSequence {
        FaultSequence {
            page_requests,
            stalls: 0,
        }
    }

    #[test]
    fn a_quarantine_holds_up_to_its_fence_and_ends_once_the_dispatches_under_way_left() {
        let u = UnitId(0);
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, Some(at(5)));
        assert!(q.holds(u, &request(1, 5)));
        assert!(!q.holds(u, &request(1, 6)), "raised after the fence");
        assert!(!q.holds(u, &request(2, 5)), "another device");
        assert!(!q.holds(UnitId(1), &request(1, 5)), "another unit");
        // Two dispatches under way: the one that passed the fence is not alone.
        let a = q.enter(u);
        let b = q.enter(u);
        q.passed(u, at(4));
        q.leave(u, a);
        assert_eq!(q.len(), 1, "not passed yet");
        q.passed(u, at(9));
        assert_eq!(q.len(), 1, "this dispatch has not left");
        // One entering now may share the pass's generation: it is waited for too.
        let c = q.enter(u);
        q.leave(u, b);
        q.leave(u, c);
        assert_eq!(q.len(), 0, "every dispatch under way at the pass has left");
    }

    /// Review of 2026-12-07 (14:50), finding 2: a quarantine ended only in a dispatch running
    /// alone, so fault threads that always overlap never ended one (the table filled, and
    /// every later detach refused the unit's whole queue).
    #[test]
    fn dispatches_that_always_overlap_still_end_a_quarantine() {
        let u = UnitId(0);
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, Some(at(5)));
        let mut older = q.enter(u);
        for round in 0..4 {
            let newer = q.enter(u);
            q.passed(u, at(10 + round));
            q.leave(u, older);
            older = newer;
        }
        assert_eq!(
            q.len(),
            0,
            "a quarantine outlived every dispatch under way at its pass"
        );
        q.leave(u, older);
    }

    /// Review of 2026-12-07 (14:50), finding 1: a fence a dispatch took was given to a
    /// quarantine a detach added after the dispatch entered: it may predate that detach.
    #[test]
    fn a_dispatch_s_fence_is_not_given_to_a_later_detach() {
        let u = UnitId(0);
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, None);
        let d = q.enter(u);
        // The dispatch takes its fence (10) here; a detach that got no fence comes after.
        q.add(label(2), None, None);
        q.know_fence(u, at(10), d);
        assert!(
            !q.holds(u, &request(1, 11)),
            "the earlier detach's fence is known"
        );
        assert!(
            q.holds(u, &request(2, 11)),
            "the later detach's device raised 11 before its detach: still refused"
        );
        assert!(q.fence_unknown(u));
        q.leave(u, d);
        let e = q.enter(u);
        q.know_fence(u, at(20), e);
        assert!(!q.fence_unknown(u));
        assert!(!q.holds(u, &request(2, 21)));
        q.leave(u, e);
    }

    #[test]
    fn past_its_room_the_unit_s_faults_up_to_the_fence_are_refused_whatever_the_device() {
        let mut q = Quarantines::EMPTY;
        for id in 0..MAX_QUARANTINES as u32 {
            q.add(label(id), None, Some(at(3)));
        }
        q.add(label(100), None, Some(at(7)));
        assert_eq!(q.len(), MAX_QUARANTINES + 1);
        assert!(q.holds(UnitId(0), &request(100, 7)));
        assert!(
            q.holds(UnitId(0), &request(200, 7)),
            "conservative: any device"
        );
        assert!(!q.holds(UnitId(0), &request(100, 8)));
        let d = q.enter(UnitId(0));
        q.passed(UnitId(0), at(7));
        q.leave(UnitId(0), d);
        assert_eq!(q.len(), 0);
    }

    /// A stranded device's release (D3, review of 2026-12-07): the registry does not know
    /// which PASIDs the dead context attached, so the quarantine holds every one.
    #[test]
    fn a_device_wide_quarantine_holds_the_rid_and_every_pasid_up_to_its_fence() {
        let mut q = Quarantines::EMPTY;
        q.add_device(label(1), Some(at(5)));
        let with = |pasid: u32, sequence: u64| PageFault {
            pasid: Pasid::new(pasid),
            ..request(1, sequence)
        };
        assert!(q.holds(UnitId(0), &request(1, 5)));
        assert!(q.holds(UnitId(0), &with(1, 4)));
        assert!(q.holds(UnitId(0), &with(0xfffff, 5)));
        assert!(!q.holds(UnitId(0), &with(1, 6)), "raised after the fence");
        assert!(!q.holds(UnitId(0), &request(2, 5)), "another device");
        let d = q.enter(UnitId(0));
        q.passed(UnitId(0), at(5));
        q.leave(UnitId(0), d);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn an_unknown_fence_holds_everything_until_a_dispatch_gets_one() {
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, None);
        assert!(q.fence_unknown(UnitId(0)));
        assert!(q.holds(UnitId(0), &request(1, u64::MAX)));
        let d = q.enter(UnitId(0));
        q.passed(UnitId(0), at(1000));
        assert_eq!(q.len(), 1, "no drain passes an unknown fence");
        q.know_fence(UnitId(0), at(10), d);
        assert!(!q.fence_unknown(UnitId(0)));
        assert!(!q.holds(UnitId(0), &request(1, 11)));
        q.passed(UnitId(0), at(10));
        q.leave(UnitId(0), d);
        assert_eq!(q.len(), 0);
    }
}
