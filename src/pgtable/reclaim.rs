//! Reclaim around one IOVA: unlinking the tables an unmap left empty at an end of its range.
//!
//! An unmap of `[start, end)` unlinks every table whose span it covers whole. A table it covers
//! only in part, and from which it removed the last present entry, stays linked and maps
//! nothing; its span holds part of the range but not all of it, so it holds `start` or
//! `end - 1`. Its ancestors are on the same path from the root. So the tables an unmap can
//! leave empty are on the two paths to the ends of its range, at most one per level below the
//! root on each: [`PageTable::reclaim_at`] walks one such path.

use super::sync::Ordering;

use super::table::Table;
use super::{Error, Format, Gather, PageTable};
use crate::mem::{Iova, Page, PageAllocator};

/// Most levels a [`super::Geometry`] may have (checked by `Geometry::validate`).
const MAX_LEVELS: usize = 6;

impl<F: Format, A: PageAllocator> PageTable<F, A> {
    /// [`PageTable::reclaim_empty`] limited to the tables on the path from the root to `iova`:
    /// the deepest table on it is unlinked if it maps nothing, then its parent if that left it
    /// empty, and so on up to (not including) the root. Around the two ends of an unmapped range
    /// this finds every table the unmap left empty (module documentation), reading one table per
    /// level up to its first present entry. Returns how many tables were unlinked; they go into
    /// `gather` with their spans.
    ///
    /// `&mut self`, as for `reclaim_empty`: no other operation may be in flight.
    ///
    /// # Errors
    /// [`Error::UnknownTable`] for a corrupt table (nothing was unlinked);
    /// [`Error::GatherOfAnotherTable`] if another table's calls filled `gather` (nothing
    /// changed).
    pub fn reclaim_at(&mut self, iova: Iova, gather: &mut Gather) -> Result<usize, Error> {
        self.claim_gather(gather)?;
        let g = *self.geometry();
        if !iova.fits_in(g.ias) {
            return Ok(0);
        }
        let v = iova.get();
        // The tables above the deepest one: (table, index of the entry on the path, its level,
        // the entry).
        let mut path = [(self.root_table(), 0usize, 0u32, 0u64); MAX_LEVELS];
        let mut depth = 0;
        let (mut t, mut level) = (self.root_table(), g.top_level());
        while level > 0 && depth < MAX_LEVELS {
            let idx = g.index(level, v);
            // SAFETY: `t` is a live table at `level` and `idx` comes from an in-range IOVA.
            let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
            if !self.format().is_present(raw) || !self.format().is_table(level, raw) {
                break;
            }
            path[depth] = (t, idx, level, raw);
            depth += 1;
            t = self.child(raw)?;
            level -= 1;
        }
        let mut count = 0;
        while let Some(&(parent, idx, parent_level, raw)) =
            depth.checked_sub(1).and_then(|d| path.get(d))
        {
            if !self.maps_nothing(t, level) {
                break;
            }
            self.store_synced(parent, idx, 0);
            let shift = g.level_shift(parent_level);
            gather.add_table_change(v & !((1u64 << shift) - 1), 1 << shift);
            let pa = self.format().table_address(raw);
            gather.add_freed(Page { pa, va: t.0 }, g.granule_log2);
            count += 1;
            depth -= 1;
            (t, level) = (parent, parent_level);
        }
        Ok(count)
    }

    /// Whether every entry of `t` (a table at `level`) is non-present; stops at the first
    /// present one.
    fn maps_nothing(&self, t: Table, level: u32) -> bool {
        (0..1usize << self.geometry().level_bits(level)).all(|idx| {
            // SAFETY: `t` is a live table at `level` and `idx` is below its entry count.
            let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
            !self.format().is_present(raw)
        })
    }
}
