//! The contiguous hint: runs of leaves that a TLB may cache as one entry.
//!
//! Arm ARM (DDI 0487 K.a) "The Contiguous bit": a naturally aligned run of 16 to 128 leaves (by
//! granule and level, see [`Format::contiguous_log2`]) that map a contiguous, equally aligned
//! output range with identical attributes may all carry the hint; a TLB may then hold the whole
//! run as one entry. Every leaf of such a run must stay valid and consistent while any of them
//! carries the hint ("misprogramming" otherwise lets a TLB translate an unmapped page).
//!
//! So `map` sets the hint only on runs it writes whole, and `unmap` clears it from every leaf of
//! a run it does not remove whole *before* it clears any leaf, recording the whole run in the
//! gather. Clearing the hint of live leaves needs FEAT_BBM level 2, which formats require before
//! they report a non-zero run ([`Format::contiguous_log2`]); `unmap` plans such a cut like the
//! split of a larger page (refused under [`super::SplitPolicy::Refuse`]).

use super::sync::Ordering;

use super::table::Table;
use super::{Format, Gather, PageTable, Prot};
use crate::mem::{PageAllocator, PhysAddr};

impl<F: Format, A: PageAllocator> PageTable<F, A> {
    /// How many leaves to write at `idx` of `t` (at `level`) for `[iova, iova + left)` to `pa`:
    /// a whole contiguous run if the format has one here, the range covers it with matching
    /// alignment and its slots are all empty; otherwise 1.
    pub(super) fn contiguous_run(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        pa: u64,
        left: u64,
    ) -> usize {
        let n_log2 = self.format().contiguous_log2(level);
        if n_log2 == 0 {
            return 1;
        }
        let run_log2 = self.geometry().level_shift(level) + n_log2;
        if !self.within_leaf_limit(level, run_log2) {
            return 1;
        }
        let run = 1u64 << run_log2;
        if (iova | pa) & (run - 1) != 0 || left < run {
            return 1;
        }
        // `left` stays inside `t`'s span and the run is aligned, so its slots are all in `t`.
        let n = 1usize << n_log2;
        let free = (idx..idx + n).all(|i| {
            // SAFETY: `i` indexes the live table `t` (see above).
            let raw = unsafe { t.slot(i) }.load(Ordering::Acquire);
            !self.format().is_present(raw)
        });
        if free {
            n
        } else {
            1
        }
    }

    /// Writes `run` leaves from slot `idx` of `t` mapping consecutive pages from `pa`; a run of
    /// more than one carries the contiguous hint. The caller syncs the slots.
    pub(super) fn write_leaves(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        pa: u64,
        prot: Prot,
        run: usize,
    ) {
        let shift = self.geometry().level_shift(level);
        let hint = if run > 1 {
            self.format().contiguous_bit()
        } else {
            0
        };
        for i in 0..run {
            let leaf_pa = PhysAddr::new(pa + ((i as u64) << shift));
            let raw = self.format().encode_leaf(level, leaf_pa, prot) | hint;
            // SAFETY: the caller passes slots of the live table `t` (see `contiguous_run`).
            unsafe { t.slot(idx + i) }.store(raw, Ordering::Relaxed);
        }
    }

    /// Whether the present entry `raw` at `level` is a leaf carrying the contiguous hint.
    #[inline]
    pub(super) fn is_contiguous_leaf(&self, level: u32, raw: u64) -> bool {
        let bit = self.format().contiguous_bit();
        bit != 0 && raw & bit != 0 && !(level > 0 && self.format().is_table(level, raw))
    }

    /// Log2 of the number of leaves the run of the present entry `raw` spans (0 if it carries
    /// no hint).
    #[inline]
    pub(super) fn contiguous_span_log2(&self, level: u32, raw: u64) -> u32 {
        if self.is_contiguous_leaf(level, raw) {
            self.format().contiguous_log2(level)
        } else {
            0
        }
    }

    /// Clears the hint from every leaf of the run holding slot `idx` of `t` (which maps `iova`)
    /// unless `range` covers the whole run; returns the entry now in slot `idx`.
    pub(super) fn break_contiguous(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        range: (u64, u64),
        gather: &mut Gather,
    ) -> u64 {
        let shift = self.geometry().level_shift(level);
        let n_log2 = self.format().contiguous_log2(level);
        let run = 1u64 << (shift + n_log2);
        let base = iova & !(run - 1);
        if n_log2 == 0 || (range.0 <= base && base + run <= range.1) {
            // SAFETY: `idx` indexes the live table `t`.
            return unsafe { t.slot(idx) }.load(Ordering::Acquire);
        }
        let first = idx - ((iova - base) >> shift) as usize;
        let bit = self.format().contiguous_bit();
        for i in first..first + (1usize << n_log2) {
            // An atomic update keeps accessed/dirty bits the walker may set meanwhile; it leaves
            // alone an entry that is no longer a hinted leaf (an unmap of another part of the
            // run may have cleared the hint and split a leaf already: a table entry's bit 52
            // is not a hint, and may be the software's).
            // SAFETY: the run is aligned inside the live table `t`.
            let _ = unsafe { t.slot(i) }.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                let hinted = self.format().is_present(e) && self.is_contiguous_leaf(level, e);
                hinted.then_some(e & !bit)
            });
        }
        // SAFETY: the run is aligned inside the live table `t`.
        self.sync(unsafe { t.entry_ptr(first) }, 8 << n_log2);
        // A TLB may hold the run as one entry: invalidate all of it.
        gather.add_leaves(base, run, shift);
        // SAFETY: `idx` indexes the live table `t`.
        unsafe { t.slot(idx) }.load(Ordering::Acquire)
    }
}
