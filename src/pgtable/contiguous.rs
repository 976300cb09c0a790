//! Runs of leaves that a TLB may cache as one entry: Arm's contiguous hint and AMD-Vi v1's
//! size-encoded pages.
//!
//! Arm ARM (DDI 0487 K.a) "The Contiguous bit": a naturally aligned run of 16 to 128 leaves (by
//! granule and level, see [`Format::contiguous_log2`]) that map a contiguous, equally aligned
//! output range with identical attributes may all carry the hint; a TLB may then hold the whole
//! run as one entry. Every leaf of such a run must stay valid and consistent while any of them
//! carries the hint ("misprogramming" otherwise lets a TLB translate an unmapped page). AMD IOMMU
//! spec 48882 rev 3.10 §2.2.3, Table 14: a PTE with Next Level 7 maps a page of the size its
//! address bits encode, any power of two between its level's size and the next one's, and is
//! replicated in every entry the page spans; the IOMMU may use any of them for all of the page.
//! Both are runs to the engine ([`Format::contiguous_runs`], [`Format::leaf_run_log2`]).
//!
//! So `map` writes a run only where it writes all of it, the largest the alignment and length
//! allow, and `unmap` makes every leaf of a run it does not remove whole stand alone
//! ([`Format::leaf_out_of_run`]: the hint cleared, or Next Level 0 and the leaf's own address)
//! *before* it clears any leaf, recording the whole run in the gather. Changing live leaves so
//! needs no break-before-make, which formats require before they report runs (Arm: FEAT_BBM
//! level 2); `unmap` plans such a cut like the split of a larger page (refused under
//! [`super::SplitPolicy::Refuse`]).

use super::sync::Ordering;

use super::table::{store_leaves, Leaves, Table};
use super::{Format, Gather, PageTable, Prot};
use crate::mem::{PageAllocator, PhysAddr};

impl<F: Format, A: PageAllocator> PageTable<F, A> {
    /// Log2 of how many leaves to write at `idx` of `t` (at `level`) for `[iova, iova + left)`
    /// to `pa`: the largest run the format has here, the range covers with matching alignment
    /// and whose slots are all empty; otherwise 0 (one leaf).
    pub(super) fn contiguous_run(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        pa: u64,
        left: u64,
    ) -> u32 {
        let shift = self.geometry().level_shift(level);
        let mut sizes = self.format().contiguous_runs(level);
        // The smallest run first, without the loop's steps: most entries the general walk
        // writes (blocks of a range not aligned to a run) fit none (issue 18, goal 1).
        let smallest = (1u64 << shift)
            .checked_shl(sizes.trailing_zeros())
            .unwrap_or(0);
        if sizes == 0 || smallest == 0 || (iova | pa) & (smallest - 1) != 0 || left < smallest {
            return 0;
        }
        while sizes != 0 {
            let n_log2 = 31 - sizes.leading_zeros();
            sizes &= !(1 << n_log2);
            let Some(run) = 1u64.checked_shl(shift + n_log2) else {
                continue;
            };
            if !self.within_leaf_limit(level, shift + n_log2) {
                continue;
            }
            if (iova | pa) & (run - 1) != 0 || left < run {
                continue;
            }
            // `left` stays inside `t`'s span and the run is aligned, so its slots are all in `t`.
            let n = 1usize << n_log2;
            let free = (idx..idx + n).all(|i| {
                // SAFETY: `i` indexes the live table `t` (see above).
                let raw = unsafe { t.slot(i) }.load(Ordering::Acquire);
                !self.format().is_present(raw)
            });
            if free {
                return n_log2;
            }
        }
        0
    }

    /// Writes `1 << run_log2` leaves from slot `idx` of `t` mapping consecutive pages from `pa`,
    /// as one run if `run_log2 > 0`. The caller syncs the slots.
    pub(super) fn write_leaves(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        pa: u64,
        prot: Prot,
        run_log2: u32,
    ) {
        let tracking = self.writes_clean();
        if run_log2 == 0 {
            // One leaf (every entry the general walk writes outside a run): without the leaf
            // loop's stretch set-up (issue 18, goal 1: about 20 instructions per block of a
            // mixed map); the same two encoding steps.
            let template = self.format().leaf_template(level, 0, prot);
            let leaf = if self.format().leaf_address_in_place(level, 0) {
                template | pa
            } else {
                self.format()
                    .leaf_from_template(template, level, 0, PhysAddr::new(pa))
            };
            let leaf = if tracking {
                self.format().leaf_clear_dirty(leaf)
            } else {
                leaf
            };
            // SAFETY: callers pass a slot of the live table `t`.
            unsafe { t.slot(idx) }.store(leaf, Ordering::Relaxed);
            return;
        }
        let leaves = Leaves {
            level,
            first: idx,
            pa,
            prot,
            run_log2,
            tracking,
        };
        store_leaves(self.format(), t, &leaves, 0, 1 << run_log2);
    }

    /// Whether the present entry `raw` at `level` is a leaf written as part of a run.
    #[inline]
    pub(super) fn is_contiguous_leaf(&self, level: u32, raw: u64) -> bool {
        !(level > 0 && self.format().is_table(level, raw))
            && self.format().leaf_run_log2(level, raw) != 0
    }

    /// Log2 of the number of leaves the run of the present entry `raw` spans (0 if it is not
    /// part of one).
    #[inline]
    pub(super) fn contiguous_span_log2(&self, level: u32, raw: u64) -> u32 {
        if self.is_contiguous_leaf(level, raw) {
            self.format().leaf_run_log2(level, raw)
        } else {
            0
        }
    }

    /// The output address of the first byte of the present leaf `raw` at `level` that maps
    /// `iova`: of a leaf of a run, the run's address (whatever leaf of it [`Format::leaf_address`]
    /// names) plus the leaf's offset in the run.
    #[inline]
    pub(super) fn entry_pa(&self, level: u32, raw: u64, iova: u64) -> u64 {
        let shift = self.geometry().level_shift(level);
        let run_log2 = shift + self.contiguous_span_log2(level, raw);
        let run_mask = 1u64.checked_shl(run_log2).map_or(u64::MAX, |r| r - 1);
        let entry_mask = (1u64 << shift) - 1;
        let address = self.format().leaf_address(level, raw).get();
        (address & !run_mask) | (iova & run_mask & !entry_mask)
    }

    /// Names a run of `2^size_log2` bytes in `gather` where the run is one page of that size
    /// (AMD-Vi v1's Next Level 7 pages, a format without a contiguous-hint bit): a unit may
    /// cache it as one translation of that size, so a gather that named only the granule would
    /// not say what was removed. A hinted run (Arm) is leaves of the granule's size, whose
    /// lookup level the TLB invalidation's hint keeps naming. A run that another CPU's break
    /// had completed before this call first looked at it cannot be named (its leaves stand
    /// alone, nothing says they were a run's), though a unit may hold it until that CPU's
    /// invalidation completes: page sizes are no bound on an AMD-Vi v1 unit's cached
    /// translations, whose invalidations go by address range (ARCHITECTURE.md, "The
    /// engine", Runs).
    #[inline]
    pub(super) fn note_run_page(&self, gather: &mut Gather, size_log2: u32) {
        if self.format().contiguous_bit() == 0 {
            gather.note_page_size(size_log2);
        }
    }

    /// [`Self::note_run_page`] for the run a search found claiming an entry that this call
    /// then removes or cuts (`claim`: the run's last leaf, as `run_last_over` returns it).
    /// Another CPU's unmap of the run may complete its break between that search and this
    /// call's own (`break_runs_over`, which then breaks and records nothing); that CPU's
    /// invalidation of the run may not have completed when this call returns, and a unit may
    /// hold the run as one translation of its size until then. Where this call breaks the run
    /// itself, `break_contiguous` names the same size. Nothing for a hinted run (Arm).
    #[inline(always)]
    pub(super) fn note_claimed_run(
        &self,
        level: u32,
        claim: Option<(usize, u64)>,
        gather: &mut Gather,
    ) {
        if self.format().contiguous_bit() == 0 {
            // A format without runs has none to name (its span is 0 whatever the entry: VT-d
            // compiles this out).
            if let Some((_, last)) = claim {
                let span = self.contiguous_span_log2(level, last);
                if span != 0 {
                    let shift = self.geometry().level_shift(level);
                    gather.note_page_size(shift + span);
                }
            }
        }
    }

    /// Makes every leaf of the run that `raw` (read from slot `idx` of `t`, mapping `iova`) was
    /// written as part of stand alone, unless `range` covers the whole run.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn break_contiguous(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        raw: u64,
        range: (u64, u64),
        gather: &mut Gather,
    ) {
        let shift = self.geometry().level_shift(level);
        let n_log2 = self.contiguous_span_log2(level, raw);
        let run = 1u64 << (shift + n_log2);
        let base = iova & !(run - 1);
        if n_log2 == 0 || (range.0 <= base && base + run <= range.1) {
            return;
        }
        let first = idx - ((iova - base) >> shift) as usize;
        let bit = self.format().contiguous_bit();
        if bit != 0 {
            // A hint bit alone makes the run (`Format::contiguous_bit`): clearing it is
            // `leaf_out_of_run`, and no other entry the engine writes has it, so one atomic AND
            // per leaf does what the update below does, without its load, test and retry
            // (issue 18, goal 1: 17 instructions per leaf). It keeps the accessed/dirty bits the
            // walker may set meanwhile, and leaves alone, bit for bit, an entry that another
            // unmap of the run has cleared, made stand alone or split into a table.
            for i in 0..1usize << n_log2 {
                // SAFETY: the run is aligned inside the live table `t`.
                unsafe { t.slot(first + i) }.fetch_and(!bit, Ordering::AcqRel);
            }
        } else {
            self.leave_run(t, level, first, iova, raw, n_log2);
        }
        // SAFETY: the run is aligned inside the live table `t`.
        self.sync(unsafe { t.entry_ptr(first) }, 8 << n_log2);
        // A TLB may hold the run as one entry: invalidate all of it.
        gather.add_leaves(base, run, shift);
        self.note_run_page(gather, shift + n_log2);
    }

    /// [`Self::break_contiguous`] of a format whose runs are more than a bit
    /// ([`Format::leaf_out_of_run`], AMD-Vi v1's Next Level 7 pages): every leaf of the run at
    /// `first` of `t` that `raw` (mapping `iova`) is part of re-encoded to stand alone.
    fn leave_run(&self, t: Table, level: u32, first: usize, iova: u64, raw: u64, n_log2: u32) {
        let shift = self.geometry().level_shift(level);
        let run = 1u64 << (shift + n_log2);
        let run_pa = self.entry_pa(level, raw, iova) & !(run - 1);
        for i in 0..1usize << n_log2 {
            let pa = PhysAddr::new(run_pa + ((i as u64) << shift));
            // An atomic update keeps accessed/dirty bits the walker may set meanwhile; it leaves
            // alone an entry that is no longer part of *this* run: another unmap of the run may
            // have broken it and split a leaf already (a table entry's bit 52 is not a hint,
            // and may be the software's), or, once that break was complete, cleared leaves and
            // mapped a smaller run of its own in their place, which must keep its addresses.
            // SAFETY: the run is aligned inside the live table `t`.
            let _ = unsafe { t.slot(first + i) }.fetch_update(
                Ordering::AcqRel,
                Ordering::Acquire,
                |e| {
                    let ours = self.format().is_present(e)
                        && self.contiguous_span_log2(level, e) == n_log2
                        && self.format().leaf_address(level, e).get() & !(run - 1) == run_pa;
                    ours.then(|| self.format().leaf_out_of_run(level, e, pa))
                },
            );
        }
    }
}
