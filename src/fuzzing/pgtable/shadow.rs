//! The page-table fuzzers' model of what is mapped: runs of granules, not granules.
//!
//! A map of the whole window with 64 KiB granules is 16,384 granules; kept one by one, every
//! map, unmap and dirty pass cost the model as many tree operations, and comparing it with the
//! engine cost as many again, which made the model, not the engine, most of a fuzzer's time.
//! Runs keep the model's work proportional to the number of operations instead.
//!
//! [`Segments`] is the common currency of the checks: a sorted list of maximal runs in which
//! consecutive granules map to consecutive output addresses. The engine's leaves, the reference
//! walker's leaves and the model's runs each become one, and two views agree exactly when their
//! segment lists are equal.

use std::collections::BTreeMap;
use std::vec::Vec;

use crate::pgtable::Prot;

/// What the model knows about one mapped granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Granule {
    pub pa: u64,
    pub prot: Prot,
    pub dirty: bool,
}

/// `count` granules from a start index, mapped to consecutive output addresses from `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Run {
    count: u64,
    pa: u64,
    prot: Prot,
    dirty: bool,
}

/// Granule index -> mapping, as disjoint runs keyed by their first granule.
#[derive(Debug)]
pub(super) struct Shadow {
    gran_log2: u32,
    runs: BTreeMap<u64, Run>,
}

impl Shadow {
    pub(super) fn new(gran_log2: u32) -> Self {
        Self {
            gran_log2,
            runs: BTreeMap::new(),
        }
    }

    /// The run containing granule `i`: (its first granule, the run).
    fn run_at(&self, i: u64) -> Option<(u64, Run)> {
        let (&start, &run) = self.runs.range(..=i).next_back()?;
        (i < start + run.count).then_some((start, run))
    }

    /// What granule `i` maps to.
    pub(super) fn get(&self, i: u64) -> Option<Granule> {
        let (start, run) = self.run_at(i)?;
        Some(Granule {
            pa: run.pa + ((i - start) << self.gran_log2),
            prot: run.prot,
            dirty: run.dirty,
        })
    }

    /// The first mapped granule in `[first, end)`.
    pub(super) fn first_mapped(&self, first: u64, end: u64) -> Option<u64> {
        if self.run_at(first).is_some() {
            return Some(first);
        }
        self.runs.range(first..end).next().map(|(&s, _)| s)
    }

    /// Cuts the run straddling `i` (if any) in two, so that no run crosses `i`.
    fn cut(&mut self, i: u64) {
        let Some((start, run)) = self.run_at(i) else {
            return;
        };
        if start == i {
            return;
        }
        let head = i - start;
        self.runs.insert(start, Run { count: head, ..run });
        self.runs.insert(
            i,
            Run {
                count: run.count - head,
                pa: run.pa + (head << self.gran_log2),
                ..run
            },
        );
    }

    /// Maps `[first, first + count)` (which must be unmapped) to `pa` onwards.
    pub(super) fn insert(&mut self, first: u64, count: u64, pa: u64, prot: Prot, dirty: bool) {
        debug_assert!(self.first_mapped(first, first + count).is_none());
        self.runs.insert(
            first,
            Run {
                count,
                pa,
                prot,
                dirty,
            },
        );
    }

    /// Unmaps `[first, end)`; returns the removed pieces as (first granule, count).
    pub(super) fn remove(&mut self, first: u64, end: u64) -> Vec<(u64, u64)> {
        self.cut(first);
        self.cut(end);
        let starts: Vec<u64> = self.runs.range(first..end).map(|(&s, _)| s).collect();
        starts
            .into_iter()
            .map(|s| (s, self.runs.remove(&s).map_or(0, |r| r.count)))
            .collect()
    }

    /// Sets the dirty state of every mapped granule in `[first, end)`.
    pub(super) fn set_dirty(&mut self, first: u64, end: u64, dirty: bool) {
        self.cut(first);
        self.cut(end);
        for (_, run) in self.runs.range_mut(first..end) {
            run.dirty = dirty;
        }
    }

    /// The mapped pieces of `[first, end)`, in order, as segments (dirty state and
    /// permissions left out: the enumeration and walker checks compare output addresses).
    pub(super) fn segments(&self, first: u64, end: u64) -> Segments {
        let mut s = Segments::new(self.gran_log2);
        let from = self.run_at(first).map_or(first, |(start, _)| start);
        for (&start, run) in self.runs.range(from..end) {
            let lo = start.max(first);
            let hi = (start + run.count).min(end);
            s.push(lo, hi - lo, run.pa + ((lo - start) << self.gran_log2));
        }
        s
    }
}

/// Maximal runs of granules mapped to consecutive output addresses, in granule order:
/// (first granule, count, output address of the first).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Segments {
    gran_log2: u32,
    list: Vec<(u64, u64, u64)>,
}

impl Segments {
    pub(super) fn new(gran_log2: u32) -> Self {
        Self {
            gran_log2,
            list: Vec::new(),
        }
    }

    /// Appends `count` granules from `first` mapped from `pa`; `first` must not be below the
    /// end of the last piece. Merges with the last segment when it continues it.
    pub(super) fn push(&mut self, first: u64, count: u64, pa: u64) {
        if count == 0 {
            return;
        }
        if let Some(last) = self.list.last_mut() {
            assert!(first >= last.0 + last.1, "segments out of order");
            if first == last.0 + last.1 && pa == last.2 + (last.1 << self.gran_log2) {
                last.1 += count;
                return;
            }
        }
        self.list.push((first, count, pa));
    }

    /// Appends every segment of `other` (which must start at or after the end of this one).
    pub(super) fn append(&mut self, other: &Self) {
        for &(first, count, pa) in &other.list {
            self.push(first, count, pa);
        }
    }

    /// How many granules the segments map.
    pub(super) fn granules(&self) -> u64 {
        self.list.iter().map(|&(_, count, _)| count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RW: Prot = Prot::READ.union(Prot::WRITE);

    #[test]
    fn runs_cut_remove_and_compare_as_segments() {
        let mut m = Shadow::new(12);
        m.insert(10, 20, 0x10_0000, RW, false);
        m.insert(40, 4, 0x8000, Prot::READ, true);
        assert_eq!(m.first_mapped(0, 10), None);
        assert_eq!(m.first_mapped(0, 11), Some(10));
        assert_eq!(m.first_mapped(15, 100), Some(15));
        assert_eq!(m.first_mapped(30, 100), Some(40));
        assert_eq!(m.get(12).map(|g| g.pa), Some(0x10_2000));
        assert_eq!(m.remove(12, 14), [(12, 2)]);
        assert_eq!(m.remove(0, 11), [(10, 1)]);
        assert_eq!(m.get(12), None);
        assert_eq!(m.get(14).map(|g| g.pa), Some(0x10_4000));
        m.set_dirty(20, 42, true);
        assert!(!m.get(19).unwrap().dirty && m.get(20).unwrap().dirty);
        assert!(m.get(41).unwrap().dirty && m.get(43).unwrap().dirty);
        // Cutting and dirtying keep the translation: the segments merge back.
        let mut want = Segments::new(12);
        want.push(11, 1, 0x10_1000);
        want.push(14, 16, 0x10_4000);
        want.push(40, 4, 0x8000);
        assert_eq!(m.segments(0, 100), want);
        let mut tail = Segments::new(12);
        tail.push(29, 1, 0x11_3000);
        tail.push(40, 1, 0x8000);
        assert_eq!(m.segments(29, 41), tail);
    }
}
