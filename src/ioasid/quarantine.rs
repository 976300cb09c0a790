//! The faults a detach leaves behind: page requests (and stalls) a device raised for an
//! attachment that is gone, still in the unit's queue or in a dispatcher's batch. Linux
//! drains the hardware queue of the old attachment before it answers its faults (VT-d
//! `intel_iommu_drain_pasid_prq`, rev. 4.1 §6.5.2.8 Page-request Drain; iopf
//! `iopf_queue_flush_dev`), waiting for the fault thread. Here the detach waits for nobody:
//! it takes the unit's fence ([`Iommu::page_fault_fence`](crate::iommu::Iommu::page_fault_fence))
//! and quarantines the (unit, device, PASID) up to it; a fault of it numbered at or below the
//! fence is no context's (answered Invalid, as iommufd's auto-response), and the quarantine
//! ends once a drain of the unit passed the fence with no other dispatch of the unit under way.

use super::registry::{DeviceLabel, UnitId};
use super::MAX_UNITS;
use crate::iommu::Pasid;
use crate::iopf::{FaultSequence, PageFault};

/// Quarantined (device, PASID) pairs a registry holds; past it, a unit's faults up to the
/// fence are refused whatever their device (one unit-wide fence per unit).
pub const MAX_QUARANTINES: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Quarantine {
    label: DeviceLabel,
    pasid: Option<Pasid>,
    /// [`FaultSequence::ALL`] while the unit could give no fence.
    fence: FaultSequence,
}

/// The registry's quarantines (under its lock, a leaf).
#[derive(Debug)]
pub(super) struct Quarantines {
    entries: [Option<Quarantine>; MAX_QUARANTINES],
    /// Per unit: when the entries were full, the fence every fault of the unit is refused up
    /// to (conservative: other devices' faults already queued are refused too).
    unit_wide: [Option<FaultSequence>; MAX_UNITS],
    /// Per unit: dispatches under way. A quarantine ends only in a dispatch that is alone: a
    /// batch another dispatch drained earlier may still hold faults below the fence.
    dispatching: [u32; MAX_UNITS],
}

impl Quarantines {
    pub(super) const EMPTY: Self = Self {
        entries: [None; MAX_QUARANTINES],
        unit_wide: [None; MAX_UNITS],
        dispatching: [0; MAX_UNITS],
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
        let fence = fence.unwrap_or(FaultSequence::ALL);
        let same = |q: &Option<Quarantine>| q.is_some_and(|q| q.label == label && q.pasid == pasid);
        let slot = match self.entries.iter().position(same) {
            Some(i) => Some(i),
            None => self.entries.iter().position(Option::is_none),
        };
        match slot.and_then(|i| self.entries.get_mut(i)) {
            Some(e) => {
                *e = Some(Quarantine {
                    label,
                    pasid,
                    fence,
                })
            }
            None => {
                if let Some(w) = self.unit_wide.get_mut(usize::from(label.unit.0)) {
                    *w = Some(w.map_or(fence, |w| w.max(fence)));
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
            .is_some_and(|w| w.covers(fault));
        wide || self.entries.iter().flatten().any(|q| {
            q.label.unit == unit
                && q.label.id == fault.device
                && q.pasid == fault.pasid
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
            .is_some_and(|w| unknown(&w))
            || self
                .entries
                .iter()
                .flatten()
                .any(|q| q.label.unit == unit && unknown(&q.fence))
    }

    /// Gives `unit`'s unknown fences `fence`, taken now: later than the detach, so it covers
    /// what the old attachment raised (and, conservatively, what the new one raised since).
    pub(super) fn know_fence(&mut self, unit: UnitId, fence: FaultSequence) {
        for q in self.entries.iter_mut().flatten() {
            if q.label.unit == unit && q.fence == FaultSequence::ALL {
                q.fence = fence;
            }
        }
        if let Some(w) = self.unit_wide.get_mut(usize::from(unit.0)) {
            if *w == Some(FaultSequence::ALL) {
                *w = Some(fence);
            }
        }
    }

    /// A dispatch of `unit` starts.
    pub(super) fn enter(&mut self, unit: UnitId) {
        if let Some(n) = self.dispatching.get_mut(usize::from(unit.0)) {
            *n = n.saturating_add(1);
        }
    }

    /// A dispatch of `unit` routed everything it drained, up to `reached`: the quarantines it
    /// passed end if it is the unit's only dispatch.
    pub(super) fn passed(&mut self, unit: UnitId, reached: FaultSequence) {
        if self.dispatching.get(usize::from(unit.0)).copied() != Some(1) {
            return;
        }
        for e in &mut self.entries {
            if e.is_some_and(|q| q.label.unit == unit && q.fence.passed_by(reached)) {
                *e = None;
            }
        }
        if let Some(w) = self.unit_wide.get_mut(usize::from(unit.0)) {
            if w.is_some_and(|f| f.passed_by(reached)) {
                *w = None;
            }
        }
    }

    /// A dispatch of `unit` ends.
    pub(super) fn leave(&mut self, unit: UnitId) {
        if let Some(n) = self.dispatching.get_mut(usize::from(unit.0)) {
            *n = n.saturating_sub(1);
        }
    }

    /// Quarantines held (the pairs'; a unit-wide one counts once).
    pub(super) fn len(&self) -> usize {
        self.entries.iter().flatten().count() + self.unit_wide.iter().flatten().count()
    }
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
    fn a_quarantine_holds_up_to_its_fence_and_ends_once_a_lone_dispatch_passed_it() {
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, Some(at(5)));
        assert!(q.holds(UnitId(0), &request(1, 5)));
        assert!(
            !q.holds(UnitId(0), &request(1, 6)),
            "raised after the fence"
        );
        assert!(!q.holds(UnitId(0), &request(2, 5)), "another device");
        assert!(!q.holds(UnitId(1), &request(1, 5)), "another unit");
        // Two dispatches under way: the one that passed the fence is not alone.
        q.enter(UnitId(0));
        q.enter(UnitId(0));
        q.passed(UnitId(0), at(9));
        assert_eq!(
            q.len(),
            1,
            "the other dispatch may hold a batch below the fence"
        );
        q.leave(UnitId(0));
        q.passed(UnitId(0), at(4));
        assert_eq!(q.len(), 1, "not passed yet");
        q.passed(UnitId(0), at(5));
        assert_eq!(q.len(), 0);
        q.leave(UnitId(0));
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
        q.enter(UnitId(0));
        q.passed(UnitId(0), at(7));
        q.leave(UnitId(0));
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn an_unknown_fence_holds_everything_until_a_dispatch_gets_one() {
        let mut q = Quarantines::EMPTY;
        q.add(label(1), None, None);
        assert!(q.fence_unknown(UnitId(0)));
        assert!(q.holds(UnitId(0), &request(1, u64::MAX)));
        q.enter(UnitId(0));
        q.passed(UnitId(0), at(1000));
        assert_eq!(q.len(), 1, "no drain passes an unknown fence");
        q.know_fence(UnitId(0), at(10));
        assert!(!q.fence_unknown(UnitId(0)));
        assert!(!q.holds(UnitId(0), &request(1, 11)));
        q.passed(UnitId(0), at(10));
        q.leave(UnitId(0));
        assert_eq!(q.len(), 0);
    }
}
