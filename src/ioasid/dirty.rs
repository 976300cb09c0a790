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
        let (start, end) = (iova.get(), iova.get() + (len - 1));
        self.read_dirty(ioasid, iova, len, flags, &mut |leaf, size_log2| {
            let leaf_last = leaf
                .get()
                .saturating_add((1u64 << size_log2.min(63)).wrapping_sub(1));
            let (from, to) = (leaf.get().max(start), leaf_last.min(end));
            if from > to {
                return;
            }
            let (first, last) = ((from - start) >> page_log2, (to - start) >> page_log2);
            for bit in first..=last {
                if let Some(w) = bitmap.get_mut((bit / 64) as usize) {
                    *w |= 1 << (bit % 64);
                }
            }
        })
    }
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
