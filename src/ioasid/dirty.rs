//! Dirty tracking of an IOASID, as iommufd offers it to a VMM migrating a guest:
//! `IOMMU_HWPT_SET_DIRTY_TRACKING` ([`IoasidCtx::set_dirty_tracking`]) and
//! `IOMMU_HWPT_GET_DIRTY_BITMAP` with or without `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`
//! ([`IoasidCtx::get_dirty_bitmap`], and [`IoasidCtx::read_dirty`] with a callback).
//!
//! The state is each hardware domain's (VT-d second-stage `D` under the PASID entry's `SSADE`;
//! SMMUv3 DBM leaves under `CD.HD` / `STE.S2HD`): a page written through two units is reported
//! by each. An IOASID allocated with [`IoasidFlags::DIRTY_TRACKING`] starts tracking (iommufd
//! starts with it off: see the module docs); turning it on cleans every page first, and reads
//! are refused while it is off ([`Error::DirtyTrackingOff`]), since the hardware then records
//! nothing.
//!
//! A unit's domain whose last device leaves (detach, a PASID's detach, an attach elsewhere)
//! is kept, without users, while tracking is on: its tables hold the dirty state the
//! hardware set, final once the leave's invalidation completed, and a VMM migrating a guest
//! must still read it. It goes on taking the IOASID's maps and unmaps, is used again by the
//! next attach on its unit, and is freed when tracking turns off or with the IOASID.

use super::ctx::{Ioasid, IoasidCtx, UnitDomain};
use super::map::domains;
use super::{Error, IoasidFlags, IoasidId};
use crate::mem::{Iova, PageAllocator};
use crate::pgtable::{self, DirtyRead, Gather};

bitflags::bitflags! {
    /// How [`IoasidCtx::get_dirty_bitmap`] and [`IoasidCtx::read_dirty`] read.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct DirtyReadFlags: u32 {
        /// Report without cleaning (iommufd `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`): no
        /// invalidation, and the next read reports the pages again.
        const NO_CLEAR = 1 << 0;
    }
}

/// The smallest page size a dirty bitmap may use (log2): the record's page.
pub const DIRTY_BITMAP_MIN_PAGE_LOG2: u32 = 12;

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Turns dirty tracking of an IOASID allocated with [`IoasidFlags::DIRTY_TRACKING`] on or
    /// off in every hardware domain behind it (iommufd `IOMMU_HWPT_SET_DIRTY_TRACKING`).
    /// Turning it on cleans every page, so that the first read reports only what devices
    /// wrote after this call, and ends with each unit's invalidation of what it may have
    /// cached (see [`Iommu::set_dirty_tracking`](crate::iommu::Iommu::set_dirty_tracking)); domains built later for the IOASID follow
    /// the state. Calling it again with the same value does the work again.
    ///
    /// # Errors
    /// [`Error::PageTable`] (`NoDirtyTracking`) for an IOASID allocated without
    /// `DIRTY_TRACKING`; [`Error::NoSuchIoasid`]; [`Error::UserOwned`] for a nested child; an earlier invalidation still owed
    /// ([`Error::InvalidationPending`]); unit errors. After a unit error tracking counts as
    /// off (reads are refused) whatever was asked, some domains may already have the new
    /// state: retry.
    pub fn set_dirty_tracking(&self, ioasid: IoasidId, on: bool) -> Result<(), Error> {
        let mut st = self.state.write();
        let io = st.ioasid_mut(ioasid)?;
        if io.nested.is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        if !io.flags.contains(IoasidFlags::DIRTY_TRACKING) {
            return Err(Error::PageTable(pgtable::Error::NoDirtyTracking));
        }
        self.settle(io)?;
        // Off until every domain confirmed: a half-done switch reports nothing.
        io.dirty_off = true;
        for (_, d) in domains(io) {
            self.unit(d.unit)?.set_dirty_tracking(d.handle, on)?;
        }
        io.dirty_off = !on;
        if !on {
            // Domains kept for their dirty state after their last device left (the leave's
            // `release_domain`) are no longer needed: reads are refused until tracking is
            // on again, which cleans every page. One that cannot be freed yet stays kept.
            let _ = self.free_domains(io);
        }
        Ok(())
    }

    /// Whether the IOASID's dirty tracking is on.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn dirty_tracking(&self, ioasid: IoasidId) -> Result<bool, Error> {
        Ok(self.state.read().ioasid(ioasid)?.tracking())
    }

    /// Reports (to `sink`) and cleans the dirty pages of `[iova, iova + len)` in every domain of
    /// the IOASID, flushing each unit once: [`read_dirty`](Self::read_dirty) without flags.
    ///
    /// # Errors
    /// As [`read_dirty`](Self::read_dirty).
    pub fn read_and_clear_dirty(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        sink: &mut dyn FnMut(Iova, u32),
    ) -> Result<(), Error> {
        self.read_dirty(ioasid, iova, len, DirtyReadFlags::empty(), sink)
    }

    /// Reports (to `sink`: IOVA and log2 size of each dirty leaf) the dirty pages of `[iova,
    /// iova + len)` in every domain of the IOASID; cleans them unless `flags` has
    /// [`DirtyReadFlags::NO_CLEAR`], flushing each unit once. A page written through two units
    /// is reported by each. A leaf only partly inside the range (a large page straddling an
    /// edge) is reported and left dirty: a later read of its other part reports it again
    /// (cleaning it would lose the writes there).
    ///
    /// `sink` is called under the context's read lock, holding the range's IOVA stripes (see
    /// the module's "Locking"): it must not call the context at all, nor the units' domains,
    /// not even for reading: the locks are writer-first, so a second read of a lock this call
    /// holds waits behind any writer that waits for this call (a deadlock as soon as another
    /// thread attaches, detaches, allocates or reclaims). It should only record what it is
    /// given.
    ///
    /// # Errors
    /// [`Error::PageTable`] (`NoDirtyTracking` for an IOASID allocated without it; range
    /// errors); [`Error::DirtyTrackingOff`] while tracking is off; [`Error::UserOwned`] for a
    /// nested child (its dirty state is its parent's); unit errors.
    /// Range errors of any domain (narrower than the range, or of a larger granule) come
    /// before any domain is read: nothing reported, nothing cleaned. An error a unit's walk
    /// meets later (an entry hardware kept rewriting, a corrupt one, a unit fault) stops the
    /// read there: what `sink` was given before it was cleaned, so keep it (the bitmap of
    /// [`get_dirty_bitmap`](Self::get_dirty_bitmap) holds it) and read again.
    /// [`Error::InvalidationPending`]: the dirty state was reported and cleaned in every
    /// domain, but a unit did not confirm the invalidation, so writes through its stale caches
    /// may go unrecorded until a call on the IOASID returns `Ok`: treat every page of the
    /// range as dirty, and retry.
    pub fn read_dirty(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        flags: DirtyReadFlags,
        sink: &mut dyn FnMut(Iova, u32),
    ) -> Result<(), Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        if !io.flags.contains(IoasidFlags::DIRTY_TRACKING) {
            return Err(Error::PageTable(pgtable::Error::NoDirtyTracking));
        }
        if !io.tracking() {
            return Err(Error::DirtyTrackingOff(ioasid));
        }
        // Overlapping calls take turns (`stripes.rs`): no unmap frees a table the read
        // cleans entries of.
        let _hold = io.stripes.take(iova.get(), len);
        self.settle(io)?;
        let how = if flags.contains(DirtyReadFlags::NO_CLEAR) {
            DirtyRead::NoClear
        } else {
            DirtyRead::Clear
        };
        // Every domain's range checks first: a range one refuses (narrower, or of a larger
        // granule) failed after the domains before it were read and cleaned, and a caller
        // discarding what it was given on the error lost their pages.
        for (_, d) in domains(io) {
            self.check_dirty_range(&d, iova, len)?;
        }
        let mut owed = Ok(());
        for (slot, d) in domains(io) {
            match self.read_domain_dirty(io, slot, &d, iova, len, how, sink) {
                Err(e @ Error::InvalidationPending { .. }) => owed = owed.and(Err(e)),
                r => r?,
            }
        }
        owed
    }

    /// The range checks a unit's walk of `d` makes before reading anything (the engine's
    /// `check_iova_range`): non-empty, no overflow, aligned to the domain's granule, within
    /// its input width. The same errors, before any domain is read.
    fn check_dirty_range(&self, d: &UnitDomain, iova: Iova, len: u64) -> Result<(), Error> {
        let (ias, sizes) = self.unit(d.unit)?.domain_geometry(d.handle)?;
        Ok(walk_range(iova, len, ias, sizes.trailing_zeros())?)
    }

    /// [`read_dirty`](Self::read_dirty) of the domain in slot `slot`, with its unit's flush:
    /// the read's error, else [`Error::InvalidationPending`] when the flush failed (its gather
    /// is then owed). Not inlined: its gather is on the stack only while it runs, not under
    /// the settling of what is owed (the kernel-stack bound of the C ABI).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn read_domain_dirty(
        &self,
        io: &Ioasid<'a, A>,
        slot: usize,
        d: &UnitDomain,
        iova: Iova,
        len: u64,
        how: DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
    ) -> Result<(), Error> {
        let unit = self.unit(d.unit)?;
        let mut gather = Gather::new();
        let r = unit.read_dirty(d.handle, iova, len, how, sink, &mut gather);
        match unit.flush(d.handle, &mut gather) {
            Ok(()) => Ok(r?),
            // The read's own error stops the caller; the flush's is owed and it goes on.
            Err(error) => super::map::owe_flush(&io.pending, slot, d.unit, &mut gather, r, error),
        }
    }

    /// Sets, in the caller's `bitmap`, the bit of every `2^page_log2`-byte page of
    /// `[iova, iova + len)` that a dirty leaf touches (bit `i` for the page at
    /// `iova + i * 2^page_log2`: word `i / 64`, bit `i % 64`), as iommufd's
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` does; cleans them unless `flags` has [`DirtyReadFlags::NO_CLEAR`], except a large leaf straddling an edge of the
    /// range, which stays dirty (see [`read_dirty`](Self::read_dirty)). Bits are set, never
    /// cleared: zero the bitmap first. Needs `ceil(len / 2^page_log2 / 64)` words; the range must
    /// be aligned to the page size.
    ///
    /// # Errors
    /// [`Error::DirtyBitmapRange`] (checked first, nothing read) for a page size below
    /// [`DIRTY_BITMAP_MIN_PAGE_LOG2`] or above 2^63, an empty, misaligned or overflowing range;
    /// [`Error::DirtyBitmapTooSmall`] (nothing read) for a bitmap shorter than that; as
    /// [`read_dirty`](Self::read_dirty): after a walk's error the bits set are of pages
    /// already cleaned, which only this bitmap now records.
    pub fn get_dirty_bitmap(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        page_log2: u32,
        bitmap: &mut [u64],
        flags: DirtyReadFlags,
    ) -> Result<(), Error> {
        let pages = bitmap_pages(iova, len, page_log2)?;
        let need = pages.div_ceil(64);
        if (bitmap.len() as u64) < need {
            return Err(Error::DirtyBitmapTooSmall {
                words: bitmap.len(),
                need,
            });
        }
        let mut bitmap = Bitmap {
            words: bitmap,
            start: iova.get(),
            end: iova.get() + (len - 1),
            page_log2,
        };
        self.read_dirty(ioasid, iova, len, flags, &mut |leaf, size_log2| {
            bitmap.record_leaf(leaf, size_log2);
        })
    }
}

/// The caller's bitmap of `[start, end]`: bit `i` for the page at `start + i * 2^page_log2`.
/// The read's sink inlines [`Bitmap::record_leaf`] and stays a leaf function of no frame
/// beyond its return address: the C ABI's stack bound (`tests/linux_module.rs`) counts it under
/// every call through a `dyn FnMut(Iova, u32)`, `ie_ctx_destroy`'s deepest chain included.
struct Bitmap<'b> {
    words: &'b mut [u64],
    start: u64,
    end: u64,
    page_log2: u32,
}

impl Bitmap<'_> {
    /// Sets the bits of the pages of the range that the dirty leaf at `leaf` of `2^size_log2`
    /// bytes touches, and returns how many words it wrote. A word at a time, under the read's
    /// locks: a dirty 1 GiB leaf in 4 KiB pages is 4,096 words (it was 262,144 single-bit
    /// updates). Bits beyond the bitmap are left alone (the caller sized it for the range).
    #[inline(always)]
    fn record_leaf(&mut self, leaf: Iova, size_log2: u32) -> usize {
        let leaf_last = leaf
            .get()
            .saturating_add((1u64 << size_log2.min(63)).wrapping_sub(1));
        let (from, to) = (leaf.get().max(self.start), leaf_last.min(self.end));
        if from > to {
            return 0;
        }
        let bit = |a: u64| (a - self.start) >> self.page_log2;
        set_bits(self.words, bit(from), bit(to))
    }
}

/// Sets bits `first..=last` of `bitmap` (bit `i`: word `i / 64`, bit `i % 64`), the partial
/// first and last words masked, and returns how many words it wrote. Few live values: inlined
/// into the read's sink, it needs no saved register (see [`Bitmap`]).
#[inline(always)]
fn set_bits(bitmap: &mut [u64], first: u64, last: u64) -> usize {
    let mut written = 0;
    let mut bit = first;
    while bit <= last {
        let Some(w) = bitmap.get_mut((bit / 64) as usize) else {
            break;
        };
        let top = if bit / 64 == last / 64 { last % 64 } else { 63 };
        *w |= (u64::MAX << (bit % 64)) & (u64::MAX >> (63 - top));
        written += 1;
        // The next word's first bit.
        let Some(next) = (bit | 63).checked_add(1) else {
            break;
        };
        bit = next;
    }
    written
}

/// Whether a table of input width `ias` and granule `2^granule_log2` walks `[iova, iova +
/// len)`, with the engine's errors in the engine's order.
fn walk_range(iova: Iova, len: u64, ias: u32, granule_log2: u32) -> Result<(), pgtable::Error> {
    if len == 0 {
        return Err(pgtable::Error::ZeroLength);
    }
    let last = iova.checked_add(len - 1).ok_or(pgtable::Error::Overflow {
        start: iova.get(),
        len,
    })?;
    if !iova.is_aligned(granule_log2) {
        return Err(pgtable::Error::MisalignedIova { iova, granule_log2 });
    }
    if len & ((1u64 << granule_log2.min(63)) - 1) != 0 {
        return Err(pgtable::Error::MisalignedLength { len, granule_log2 });
    }
    if !last.fits_in(ias) {
        return Err(pgtable::Error::IovaOutOfRange { last, ias });
    }
    Ok(())
}

/// The number of pages a dirty bitmap of `[iova, iova + len)` has, or why the range is refused.
fn bitmap_pages(iova: Iova, len: u64, page_log2: u32) -> Result<u64, Error> {
    let bad = Error::DirtyBitmapRange {
        iova,
        len,
        page_log2,
    };
    if !(DIRTY_BITMAP_MIN_PAGE_LOG2..64).contains(&page_log2) || len == 0 {
        return Err(bad);
    }
    let mask = (1u64 << page_log2) - 1;
    if iova.get() & mask != 0 || len & mask != 0 || iova.get().checked_add(len - 1).is_none() {
        return Err(bad);
    }
    Ok(len >> page_log2)
}

#[cfg(test)]
mod tests {
    //! The bitmap's fill against the bit-at-a-time reference it replaced.

    extern crate std;

    use super::Bitmap;
    use crate::mem::Iova;

    /// The reference: one bit per page (as `get_dirty_bitmap` filled it before).
    fn reference(
        bitmap: &mut [u64],
        (start, end): (u64, u64),
        page_log2: u32,
        leaf: Iova,
        size_log2: u32,
    ) {
        let leaf_last = leaf
            .get()
            .saturating_add((1u64 << size_log2.min(63)).wrapping_sub(1));
        let (from, to) = (leaf.get().max(start), leaf_last.min(end));
        if from > to {
            return;
        }
        for bit in (from - start) >> page_log2..=(to - start) >> page_log2 {
            if let Some(w) = bitmap.get_mut((bit / 64) as usize) {
                *w |= 1 << (bit % 64);
            }
        }
    }

    /// [`Bitmap::record_leaf`] of `words` for `[start, end]`.
    fn record_leaf(
        words: &mut [u64],
        (start, end): (u64, u64),
        page_log2: u32,
        leaf: Iova,
        size_log2: u32,
    ) -> usize {
        let mut bitmap = Bitmap {
            words,
            start,
            end,
            page_log2,
        };
        bitmap.record_leaf(leaf, size_log2)
    }

    /// A dirty 1 GiB leaf reported in 4 KiB pages: every one of the 262,144 bits set, in
    /// 4,096 word writes (it was one update per bit). In a range starting 3 pages before the
    /// leaf (its pages are bits 3 to 262,146: both ends mid-word) it is 4,097 words, the first
    /// and the last masked, nothing set beyond.
    #[test]
    fn a_dirty_gib_leaf_is_recorded_a_word_at_a_time() {
        let gib = 1u64 << 30;
        let mut bitmap = std::vec![0u64; 4096];
        let n = record_leaf(&mut bitmap, (gib, 2 * gib - 1), 12, Iova::new(gib), 30);
        assert_eq!(n, 4096);
        assert!(bitmap.iter().all(|&w| w == u64::MAX));
        let start = gib - 3 * 0x1000;
        let mut bitmap = std::vec![0u64; 4098];
        let n = record_leaf(
            &mut bitmap,
            (start, 2 * gib + 0xFFFF),
            12,
            Iova::new(gib),
            30,
        );
        assert_eq!(n, 4097);
        assert_eq!(bitmap[0], !0b111);
        assert!(bitmap[1..4096].iter().all(|&w| w == u64::MAX));
        assert_eq!(bitmap[4096], 0b111);
        assert_eq!(bitmap[4097], 0);
    }

    /// Random ranges (starting and ending mid-word or not), page sizes and leaves (of every
    /// size from the page's up to 1 GiB, inside, straddling either edge or outside the
    /// range): the same bits as the reference, and one word written per word touched.
    #[test]
    fn the_fill_matches_the_bit_reference() {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for case in 0..20_000 {
            let page_log2 = [12, 13, 16, 21][next(4) as usize];
            let pages = 1 + next(700);
            let start = next(1 << 20) << page_log2;
            let end = start + (pages << page_log2) - 1;
            let size_log2 = [12, 14, 16, 21, 25, 30][next(6) as usize];
            let size = 1u64 << size_log2;
            // A leaf anywhere from a little before the range to a little past its end.
            let span = ((pages << page_log2) >> size_log2) + 4;
            let around = (start.saturating_sub(2 * size) >> size_log2) + next(span);
            let leaf = Iova::new(around << size_log2);
            let words = pages.div_ceil(64) as usize;
            let (mut got, mut want) = (std::vec![0u64; words + 1], std::vec![0u64; words + 1]);
            let n = record_leaf(&mut got[..words], (start, end), page_log2, leaf, size_log2);
            reference(&mut want[..words], (start, end), page_log2, leaf, size_log2);
            assert_eq!(
                got, want,
                "case {case}: {start:#x}..={end:#x}, 2^{page_log2}, leaf {leaf:?} 2^{size_log2}"
            );
            let touched = want.iter().filter(|&&w| w != 0).count();
            assert_eq!(n, touched, "case {case}: words written");
        }
    }
}
