//! Accounting of a table's pages: how many are linked, and how many its leaves need.
//!
//! The bound that reclaim keeps (ARCHITECTURE.md, "Reclaim") is stated against
//! [`TablePages::needed`]: given the leaves present, at their IOVAs and sizes, a leaf at level
//! `k` sits in a table at level `k` that must be linked from a table at level `k + 1`, and so
//! on up to the root. The tables on those paths, and nothing else, are what the leaves need;
//! every other linked table maps nothing and could be reclaimed.

use super::sync::Ordering;

use super::table::{open_at, Table, WALK_LEVELS};
use super::{Error, Format, PageTable};
use crate::mem::PageAllocator;

/// The table pages of a [`PageTable`], counted by [`PageTable::table_pages`]. A table is one
/// allocation from the allocator (a concatenated root is one table).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TablePages {
    /// Tables reachable from the root, the root included.
    pub linked: usize,
    /// The fewest tables the present leaves need: the root, and every table with a present
    /// leaf somewhere beneath it (module documentation).
    pub needed: usize,
}

impl TablePages {
    /// Linked tables that map nothing: what a reclaim would unlink.
    pub const fn surplus(&self) -> usize {
        self.linked.saturating_sub(self.needed)
    }
}

impl<F: Format, A: PageAllocator> PageTable<F, A> {
    /// Counts the tables linked from the root and the tables the present leaves need, in one
    /// walk. Takes the table exclusively: a concurrent unmap may unlink a table the walk is
    /// inside, and its flush free it (review of 2026-12-07, F3: the units counted under the
    /// domain lock their unmaps share, and read freed memory).
    ///
    /// # Errors
    /// [`Error::UnknownTable`] for a corrupt table.
    pub fn table_pages(&mut self) -> Result<TablePages, Error> {
        let top = self.geometry().top_level();
        let (linked, needed, _) = self.count_tables(self.root_table(), top)?;
        // The root is needed even with nothing mapped: the hardware points at it.
        Ok(TablePages {
            linked,
            needed: needed.max(1),
        })
    }

    /// (tables linked at and below `t`, tables needed at and below `t`, whether a leaf is
    /// present below `t`).
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack): a
    /// table counts as needed once the walk of it is done and found a leaf beneath it.
    fn count_tables(&self, t: Table, level: u32) -> Result<(usize, usize, bool), Error> {
        /// A table being walked: the next slot, whether a leaf is present below it so far.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            next: usize,
            leaf: bool,
        }
        let mut path = [Open {
            t,
            next: 0,
            leaf: false,
        }; WALK_LEVELS];
        let (mut depth, mut linked, mut needed) = (0usize, 1, 0);
        loop {
            let at = level - depth as u32;
            let open = &mut path[open_at(depth)];
            if open.next < 1usize << self.geometry().level_bits(at) {
                let idx = open.next;
                open.next += 1;
                // SAFETY: `t` is a live table at `at` and `idx` is below its entry count.
                let raw = unsafe { open.t.slot(idx) }.load(Ordering::Acquire);
                if !self.format().is_present(raw) {
                    continue;
                }
                if at > 0 && self.format().is_table(at, raw) {
                    let child = self.child(raw)?;
                    #[cfg(test)]
                    crate::test_hooks::in_table_count();
                    linked += 1;
                    depth += 1;
                    let Some(below) = path.get_mut(depth) else {
                        return Err(Self::too_deep(level));
                    };
                    *below = Open {
                        t: child,
                        next: 0,
                        leaf: false,
                    };
                } else {
                    open.leaf = true;
                }
                continue;
            }
            let leaf = open.leaf;
            if leaf {
                needed += 1;
            }
            if depth == 0 {
                return Ok((linked, needed, leaf));
            }
            depth -= 1;
            path[open_at(depth)].leaf |= leaf;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::BTreeSet;

    use super::*;
    use crate::mem::{Iova, PhysAddr};
    use crate::pgtable::testutil::{done, vtd_ss, TestAlloc, G1, K4, M2, RW};
    use crate::pgtable::vtd_ss::VtdSs;
    use crate::pgtable::Gather;

    fn release(t: &PageTable<VtdSs, TestAlloc>, g: &mut Gather) {
        g.release(t.allocator(), done()).unwrap();
    }

    /// What the leaves need, counted from the leaves alone: the root, and for every level
    /// above a leaf's own (up to the root's children) the table whose span holds it.
    fn needed_by_leaves(t: &PageTable<VtdSs, TestAlloc>) -> usize {
        let g = *t.geometry();
        let mut tables = BTreeSet::new();
        t.for_each_mapping(Iova::new(0), 1 << g.ias, |l| {
            for level in 0..g.top_level() {
                if g.level_shift(level) >= l.size_log2 {
                    tables.insert((level, l.iova.get() >> g.level_shift(level + 1)));
                }
            }
        })
        .unwrap();
        1 + tables.len()
    }

    #[test]
    fn linked_and_needed_tables_are_counted() {
        let mut t = vtd_ss(false);
        assert_eq!(
            t.table_pages().unwrap(),
            TablePages {
                linked: 1,
                needed: 1
            }
        );
        t.map(Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        t.map(Iova::new(G1), PhysAddr::new(0), K4, RW).unwrap();
        // Root, PDPT, then a PD and a PT for each page.
        let both = TablePages {
            linked: 6,
            needed: 6,
        };
        assert_eq!(t.table_pages().unwrap(), both);
        let mut g = Gather::new();
        assert_eq!(t.unmap(Iova::new(0), K4, &mut g), Ok(K4));
        release(&t, &mut g);
        let p = t.table_pages().unwrap();
        assert_eq!((p.linked, p.needed, p.surplus()), (6, 4, 2));
        assert_eq!(t.allocator().stats().live_pages, p.linked);
        // A 2 MiB leaf needs no PT.
        t.map(Iova::new(2 * G1), PhysAddr::new(0), M2, RW).unwrap();
        assert_eq!(t.table_pages().unwrap().needed, 5);
        assert_eq!(needed_by_leaves(&t), 5);
    }

    #[test]
    fn reclaim_at_unlinks_only_the_empty_tables_around_one_iova() {
        let mut t = vtd_ss(false);
        t.map(Iova::new(0), PhysAddr::new(0), 2 * K4, RW).unwrap();
        t.map(Iova::new(G1), PhysAddr::new(0), K4, RW).unwrap();
        t.map(Iova::new(2 * G1), PhysAddr::new(0), K4, RW).unwrap();
        let mut g = Gather::new();
        for at in [0, G1] {
            assert_eq!(t.unmap(Iova::new(at), K4, &mut g), Ok(K4));
        }
        release(&t, &mut g);
        // The PT and PD of 1 GiB are empty; the PT at 0 still maps a page.
        assert_eq!(t.table_pages().unwrap().surplus(), 2);
        assert_eq!(t.reclaim_at(Iova::new(0), &mut g), Ok(0));
        assert_eq!(t.reclaim_at(Iova::new(2 * G1 + 5 * K4), &mut g), Ok(0));
        assert_eq!(t.reclaim_at(Iova::new(G1 + M2 - K4), &mut g), Ok(2));
        assert_eq!(g.freed_pages(), 2);
        release(&t, &mut g);
        let p = t.table_pages().unwrap();
        assert_eq!((p.linked, p.needed), (6, 6));
        assert_eq!(t.allocator().stats().live_pages, 6);
        assert_eq!(t.query(Iova::new(K4)).unwrap().pa, PhysAddr::new(K4));
        assert_eq!(t.query(Iova::new(2 * G1)).unwrap().pa, PhysAddr::new(0));
    }

    /// Reclaiming around the two ends of every unmapped range is enough: after it the table
    /// holds exactly the tables its leaves need, whatever was mapped and unmapped before.
    #[test]
    fn reclaiming_at_both_ends_of_each_unmap_leaves_no_surplus() {
        let mut t = vtd_ss(false);
        let mut seed = 0x1234_5678_9abc_def1u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut g = Gather::new();
        let mut live: std::vec::Vec<(u64, u64)> = std::vec::Vec::new();
        // Miri interprets every entry store: a few operations there prove the memory accesses.
        for _ in 0..if cfg!(miri) { 12 } else { 400 } {
            // 34 bits of IOVA: several PDs and PDPT entries.
            let (iova, len) = match next(3) {
                0 => (next(1 << 22) << 12, (1 + next(8)) * K4),
                1 => (next(1 << 13) << 21, (1 + next(2)) * M2),
                _ => (next(1 << 22) << 12, (1 + next(1024)) * K4),
            };
            if next(5) < 2 {
                // Overlaps fail and change nothing.
                if t.map(Iova::new(iova), PhysAddr::new(iova), len, RW).is_ok() {
                    live.push((iova, len));
                }
                continue;
            }
            // Mostly a live range or a piece of one (splitting blocks), else anywhere.
            let (iova, len) = match (live.len(), next(4)) {
                (0, _) | (_, 0) => (iova, len),
                (n, k) => {
                    let (s, l) = live.swap_remove(next(n as u64) as usize);
                    if k == 1 {
                        let pages = l / K4;
                        let first = next(pages);
                        (s + first * K4, (1 + next(pages - first)) * K4)
                    } else {
                        (s, l)
                    }
                }
            };
            t.unmap(Iova::new(iova), len, &mut g).unwrap();
            t.reclaim_at(Iova::new(iova), &mut g).unwrap();
            t.reclaim_at(Iova::new(iova + len - K4), &mut g).unwrap();
            release(&t, &mut g);
            let p = t.table_pages().unwrap();
            assert_eq!(p.needed, needed_by_leaves(&t));
            assert_eq!(p.linked, p.needed, "after {iova:#x}+{len:#x}");
            assert_eq!(t.allocator().stats().live_pages, p.linked);
        }
        assert!(t.allocator().bad_frees().is_empty());
    }
}
