//! iommufd's `IOMMU_IOAS_COPY` and `IOMMU_IOAS_IOVA_RANGES` (Linux
//! `include/uapi/linux/iommufd.h`, `struct iommu_ioas_copy`, `struct iommu_ioas_iova_ranges`).
//!
//! A copy maps, in the destination IOASID, the physical pages the source range maps, with
//! the same permissions: the record's leaves are read back run by run (contiguous in IOVA and
//! physical address, one permission), each run mapped as [`IoasidCtx::map`] maps (every check
//! and every domain of the destination apply, but the refusal of the destination range the
//! copy itself holds). iommufd's copy takes the destination's
//! permissions from its flags; here they are the source's, leaf by leaf, which a VMM that
//! mirrors a guest's mappings between address spaces wants (a copy of a read-only range
//! stays read-only). A run that fails undoes the runs mapped before it (with their unmap's
//! invalidation), so the destination is left as it was.
//!
//! The usable ranges of an IOASID are its address space -- as wide as the narrowest domain
//! behind it (the record's [`RECORD_IAS`] with none) -- less the reserved regions of the units
//! its domains are on, the context's reserved regions ([`IoasidCtx::reserve_region`]) and the
//! direct regions mapped for its attached devices: what `map` would accept, as
//! `IOMMU_IOAS_IOVA_RANGES` reports the ranges `IOMMU_IOAS_MAP` accepts.

use super::ctx::{Ioasid, IoasidCtx, State};
use super::record::RECORD_IAS;
use super::{Error, IoasidId, MAX_UNITS};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::{self, IovaRange, Prot};

/// How many copies may be in flight into one IOASID at once ([`Ioasid::copying`]).
pub(super) const MAX_COPIES_PER_IOASID: usize = 4;

/// How far a copy went: the bytes it mapped, and its hold on its IOASIDs.
struct Progress<'c, 'r, 'a, A: PageAllocator> {
    done: u64,
    hold: Option<CopyHold<'c, 'r, 'a, A>>,
}

/// A copy's hold on its IOASIDs ([`IoasidCtx::hold_for_copy`]): counted in both (`free` of
/// either is `Busy`), its destination range in `dst`'s [`Ioasid::copying`] (no other call
/// maps or unmaps there). Released when dropped, after the undo: also when a unit's call
/// panics and unwinds (a hosted embedder's), which would otherwise leave both IOASIDs `Busy`
/// for ever and the range refused (review 20 L2).
struct CopyHold<'c, 'r, 'a, A: PageAllocator> {
    ctx: &'c IoasidCtx<'r, 'a, A>,
    src: IoasidId,
    dst: IoasidId,
    /// The slot of `dst`'s `copying` holding the range.
    slot: u8,
}

impl<A: PageAllocator> Drop for CopyHold<'_, '_, '_, A> {
    fn drop(&mut self) {
        self.ctx.release_copy(self.src, self.dst, self.slot);
    }
}

/// A stretch of the source of a copy: contiguous in IOVA and physical address, one
/// permission.
#[derive(Clone, Copy)]
struct Run {
    pa: PhysAddr,
    len: u64,
    prot: Prot,
}

impl<'r, 'a, A: PageAllocator> IoasidCtx<'r, 'a, A> {
    /// iommufd `IOMMU_IOAS_COPY`: maps `[dst_iova, dst_iova + len)` in `dst` to the physical
    /// pages `[src_iova, src_iova + len)` maps in `src`, with the same permissions, all or
    /// nothing. `src` and `dst` may be the same IOASID (at a range that does not overlap).
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::PageTable`] for a range that is empty, overflows or
    /// is not 4 KiB aligned; [`Error::NotMapped`] naming the first IOVA of the source range
    /// that maps nothing (iommufd's `ENOENT`); [`Error::Reserved`] for a source range over a
    /// direct region of an attached device (not the owner's to copy);
    /// [`Error::BeyondInputWidth`] for a destination range reaching beyond a domain of `dst`
    /// (the whole range refused before any run is mapped; a narrower domain attached between
    /// runs makes a later run fail with it, and the runs before it are undone); [`Error::Busy`] for a destination range
    /// overlapping that of another copy in flight into `dst`, or a source range overlapping
    /// that of a copy in flight into `src` (checked at the start and again with each run read:
    /// pages a copy is still mapping, and may yet undo, are not copied on), [`Error::Capacity`] with
    /// four (`MAX_COPIES_PER_IOASID`) in flight into it; then any error of
    /// [`IoasidCtx::map`] in the destination. Nothing is mapped in `dst` after any of them:
    /// what was mapped before the failure is unmapped again, with its invalidation. If a unit
    /// does not confirm it, or cannot unmap it (its domain still maps some of the range: as
    /// after a failed `map`, `dst`'s record then keeps what the copy mapped at `dst_iova`, and
    /// a retry is refused with `Overlap`), the error is [`Error::InvalidationPending`], naming
    /// one unit though both may have happened on different units: as after a failed `map`, do
    /// not rely on the pages being unreachable until an unmap of `[dst_iova, dst_iova + len)`
    /// returns `Ok` (it settles every owed invalidation first; another call's `Ok` is not
    /// enough).
    ///
    /// Until it returns, the destination range is the copy's: any other [`IoasidCtx::map`]
    /// or [`IoasidCtx::unmap`] of `dst` touching it (`UNMAP_ALL` too) is [`Error::Busy`],
    /// so that a failed copy's undo removes only what the copy mapped; and [`IoasidCtx::free`]
    /// of `src` or `dst` is [`Error::Busy`].
    ///
    /// If a unit's call panics and unwinds through the copy (a hosted embedder's unit), no
    /// undo runs: the hold is released (both IOASIDs and the range are the caller's again),
    /// and what the copy had mapped stays mapped in `dst`'s record and the domains that took
    /// it -- the runs before the panic, and the panicking run in the domains before the unit
    /// that panicked. An unmap of `[dst_iova, dst_iova + len)` removes it.
    pub fn copy(
        &self,
        src: IoasidId,
        src_iova: Iova,
        dst: IoasidId,
        dst_iova: Iova,
        len: u64,
    ) -> Result<(), Error> {
        let mut progress = Progress {
            done: 0,
            hold: None,
        };
        let mut r = self.copy_runs(src, src_iova, dst, dst_iova, len, &mut progress);
        if let Err(e) = r.as_mut() {
            if progress.done != 0 {
                #[cfg(test)]
                super::tests::copy_pause("undo");
                self.undo_copy(dst, dst_iova, progress.done, e);
            }
        }
        // The hold is released here, after the undo.
        drop(progress);
        r
    }

    /// [`copy`](Self::copy) but for the undo of a failure and the release of its IOASIDs:
    /// `progress` says how many bytes it mapped at `dst_iova` before it failed, and holds
    /// `src` and `dst`. Not inlined: the undo's unmap and flushes run from its caller's frame,
    /// not under this one (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn copy_runs<'c>(
        &'c self,
        src: IoasidId,
        src_iova: Iova,
        dst: IoasidId,
        dst_iova: Iova,
        len: u64,
        progress: &mut Progress<'c, 'r, 'a, A>,
    ) -> Result<(), Error> {
        check_range(src_iova, len)?;
        check_range(dst_iova, len)?;
        // Both IOASIDs are held until the undo is done (`free` is `Busy`): an `IoasidId` is a
        // slot number, and the lock is released between runs and before the undo, so one
        // freed and allocated again meanwhile would take the later runs, or lose the range to
        // the undo (review 19 finding 4). The destination range is the copy's alone
        // meanwhile, so that the undo unmaps only the copy's runs (review 20 L1).
        let slot = self.hold_for_copy(src, src_iova, dst, dst_iova, len)?;
        progress.hold = Some(CopyHold {
            ctx: self,
            src,
            dst,
            slot,
        });
        // Its own range, when copying within one IOASID, is not another copy's.
        let own = (src == dst).then_some(slot);
        // The whole source first, so that a hole is refused before anything is mapped.
        let mut at = 0;
        while at < len {
            at += self
                .source_run(src, src_iova.get() + at, len - at, own)?
                .len;
        }
        while progress.done < len {
            let done = progress.done;
            let run = self.source_run(src, src_iova.get() + done, len - done, own)?;
            let to = Iova::new(dst_iova.get() + done);
            // Into the range the copy holds: not refused as another call's would be.
            self.map_or_copy_run(dst, to, run.pa, run.len, run.prot, true)?;
            progress.done += run.len;
            #[cfg(test)]
            super::tests::copy_pause("between runs");
        }
        Ok(())
    }

    /// Counts a copy in flight from `src` into `dst` and keeps its destination range
    /// `[dst_iova, dst_iova + len)` in `dst`'s [`Ioasid::copying`], under the write lock: no
    /// map or unmap of `dst` is in flight then, and every later one sees the range (`Busy`
    /// there until the copy ends). [`IoasidCtx::free`] refuses either IOASID while it is
    /// counted. Refused once both exist (`dst` named first) if the destination range
    /// reaches beyond a domain's width (whole, before any run is mapped: `map.rs`,
    /// `beyond_width`), overlaps another copy's in flight (`Busy`) or `dst` has
    /// [`MAX_COPIES_PER_IOASID`] in flight (`Capacity`). Returns the slot of the range. Not
    /// inlined: beside the runs, not above them.
    #[inline(never)]
    fn hold_for_copy(
        &self,
        src: IoasidId,
        src_iova: Iova,
        dst: IoasidId,
        dst_iova: Iova,
        len: u64,
    ) -> Result<u8, Error> {
        let mut st = self.state.write();
        let d = st.ioasid(dst)?;
        // A source range another copy is filling (`source_run` checks it again run by run).
        let src_end = src_iova.get().saturating_add(len);
        if st
            .ioasid(src)?
            .copy_overlapping(src_iova.get(), src_end)
            .is_some()
        {
            return Err(Error::Busy);
        }
        if let Some((last, ias, unit)) = super::map::beyond_width(d, dst_iova.get(), len) {
            return Err(Error::BeyondInputWidth { last, ias, unit });
        }
        // `check_range`: no overflow.
        let end = dst_iova.get().saturating_add(len);
        if d.copy_overlapping(dst_iova.get(), end).is_some() {
            return Err(Error::Busy);
        }
        let slot = d
            .copying
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Capacity("copies in flight into an IOASID"))?;
        // Every refusal is above: both exist under this lock, so nothing below fails and the
        // hold is taken whole or not at all.
        if let Ok(d) = st.ioasid_mut(dst) {
            d.copying[slot] = Some(IovaRange {
                start: dst_iova,
                end: Iova::new(end),
            });
            d.copies = d.copies.saturating_add(1);
        }
        if let Ok(s) = st.ioasid_mut(src) {
            s.copies = s.copies.saturating_add(1);
        }
        // At most MAX_COPIES_PER_IOASID.
        Ok(slot as u8)
    }

    /// Counts the copy [`Self::hold_for_copy`] counted as done and lets its destination range
    /// (in slot `slot` of `dst`'s `copying`) go, under the write lock. Not inlined, as it.
    #[inline(never)]
    fn release_copy(&self, src: IoasidId, dst: IoasidId, slot: u8) {
        let mut st = self.state.write();
        // Held: both still exist.
        if let Ok(d) = st.ioasid_mut(dst) {
            if let Some(range) = d.copying.get_mut(usize::from(slot)) {
                *range = None;
            }
            d.copies = d.copies.saturating_sub(1);
        }
        if let Ok(s) = st.ioasid_mut(src) {
            s.copies = s.copies.saturating_sub(1);
        }
    }

    /// Unmaps the `done` bytes a failed [`copy`](Self::copy) mapped at `dst_iova` from every
    /// domain of `dst` and its record, as a refused map's undo does ([`Self::roll_back_map`]);
    /// the error to report, `e`, becomes [`Error::InvalidationPending`] if a domain may still
    /// reach the pages (an invalidation not confirmed, or an unmap that failed leaving them
    /// mapped: then the record keeps the `done` bytes, as after a refused map), unless it is
    /// one already (the failed run's own undo's, met first: the undo names the first unit,
    /// as `roll_back_map` does). What is owed is not settled first (as [`IoasidCtx::unmap`] does): when the
    /// failed run's own rollback left an invalidation unconfirmed, settling would fail again
    /// and leave the earlier runs mapped. Nor does a domain that fails put the range back
    /// everywhere (as an unmap's refusal does): the undo removes all it can. A failure's path,
    /// not inlined; `e` is changed in place (the kernel-stack bound of the C ABI).
    #[cold]
    #[inline(never)]
    fn undo_copy(&self, dst: IoasidId, dst_iova: Iova, done: u64, e: &mut Error) {
        let st = self.state.read();
        let Ok(io) = st.ioasid(dst) else {
            return;
        };
        let mut out = Ok(());
        // The runs' range, as the runs' maps took it (`stripes.rs`).
        let hold = io.stripes.take(dst_iova.get(), done);
        // Every domain of `dst` took the runs.
        self.roll_back_map(io, MAX_UNITS, dst_iova, done, &mut out);
        drop(hold);
        // In place of the refusal, not of the failed run's own undo's InvalidationPending
        // (met first), as the undo itself reports (`reachable`).
        if let Err(p) = out {
            if !matches!(e, Error::InvalidationPending { .. }) {
                *e = p;
            }
        }
    }

    /// The run of the source of a copy from `iova`, at most `left` bytes. `Busy` if the
    /// rest of the source, `[iova, iova + left)`, overlaps the destination range of a copy in
    /// flight into `src` other than the asking copy's own slot `own`: read under the same
    /// lock as the run, so that no copy takes pages another copy mapped and may yet undo
    /// (review 20b finding 1; iommufd refuses to copy an area not fully populated).
    fn source_run(
        &self,
        src: IoasidId,
        iova: u64,
        left: u64,
        own: Option<u8>,
    ) -> Result<Run, Error> {
        let st = self.state.read();
        let io = st.ioasid(src)?;
        let end = iova.saturating_add(left);
        if io.other_copy_overlapping(iova, end, own).is_some() {
            return Err(Error::Busy);
        }
        if let Some(r) = super::direct::direct_overlap(io, iova, end) {
            return Err(Error::Reserved(r));
        }
        // The source's stripes while the run is read, released before it is mapped (into
        // the destination's: never both held, even within one IOASID).
        let _hold = io.stripes.take(iova, left);
        let mut run: Option<Run> = None;
        let mut at = iova;
        while at < end {
            let Some(m) = io.record.query(Iova::new(at)) else {
                break;
            };
            // The rest of the leaf holding `at`, within the range.
            let leaf_end = (at | ((1u64 << m.size_log2) - 1)).saturating_add(1);
            let piece = leaf_end.min(end) - at;
            match run.as_mut() {
                Some(r) if r.pa.get() + r.len == m.pa.get() && r.prot == m.prot => r.len += piece,
                Some(_) => break,
                None => {
                    run = Some(Run {
                        pa: m.pa,
                        len: piece,
                        prot: m.prot,
                    })
                }
            }
            at += piece;
        }
        run.ok_or(Error::NotMapped(Iova::new(iova)))
    }

    /// iommufd `IOMMU_IOAS_IOVA_RANGES`: writes the IOVA ranges `map` accepts in `ioasid`
    /// into `out`, in address order, and returns how many there are. The address space is as
    /// wide as the narrowest of the IOASID's domains (with none, the record's
    /// [`RECORD_IAS`] bits); from it are taken the reserved regions of those domains' units,
    /// the context's reserved regions and the direct regions of its attached devices. An
    /// attach to a unit with a narrower width or more reserved regions narrows it.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::BufferTooSmall`] with the number of ranges when
    /// `out` holds fewer (iommufd's `EMSGSIZE` with `num_iovas` set): `out` is then filled
    /// with the first ranges.
    pub fn iova_ranges(&self, ioasid: IoasidId, out: &mut [IovaRange]) -> Result<usize, Error> {
        let mut n = 0;
        self.for_each_iova_range(ioasid, |r| {
            if let Some(slot) = out.get_mut(n) {
                *slot = r;
            }
            n += 1;
        })?;
        if n > out.len() {
            return Err(Error::BufferTooSmall { needed: n });
        }
        Ok(n)
    }

    /// As [`iova_ranges`](Self::iova_ranges), calling `f` with each range in address order
    /// (under the context's read lock: `f` must not call the context); returns how many.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn for_each_iova_range(
        &self,
        ioasid: IoasidId,
        mut f: impl FnMut(IovaRange),
    ) -> Result<usize, Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        let mut top = 1u64 << RECORD_IAS;
        for d in io.domains.iter().flatten() {
            let (ias, _) = self.unit(d.unit)?.domain_geometry(d.handle)?;
            top = top.min(1u64.checked_shl(ias).unwrap_or(u64::MAX));
        }
        let (mut at, mut n) = (0u64, 0usize);
        while at < top {
            let (start, end) = self
                .next_excluded(&st, io, at)
                .map_or((top, top), |r| (r.start.get(), r.end.get()));
            if start > at {
                f(IovaRange {
                    start: Iova::new(at),
                    end: Iova::new(start.min(top)),
                });
                n += 1;
            }
            // Overlapping excluded regions: the next pass starts past this one's end.
            at = at.max(end);
        }
        Ok(n)
    }

    /// Of the regions `map` refuses in `io` (its units' reserved regions, the context's, its
    /// direct mappings), the lowest that ends above `at`.
    fn next_excluded(&self, st: &State<'a, A>, io: &Ioasid<'a, A>, at: u64) -> Option<IovaRange> {
        let units = io
            .domains
            .iter()
            .flatten()
            .filter_map(|d| self.unit(d.unit).ok())
            .flat_map(|u| u.reserved_regions().iter().copied());
        let direct = io.direct.iter().flatten().map(|d| d.region.range());
        st.reserved
            .iter()
            .flatten()
            .copied()
            .chain(units)
            .chain(direct)
            .filter(|r| r.end.get() > at)
            .min_by_key(|r| r.start.get())
    }
}

/// A copy's range: not empty, no overflow, 4 KiB aligned (the record's page).
fn check_range(iova: Iova, len: u64) -> Result<(), Error> {
    const PAGE: u64 = 1 << 12;
    if len == 0 {
        return Err(pgtable::Error::ZeroLength.into());
    }
    if iova.get().checked_add(len).is_none() {
        return Err(pgtable::Error::Overflow {
            start: iova.get(),
            len,
        }
        .into());
    }
    if !iova.is_aligned(12) {
        return Err(pgtable::Error::MisalignedIova {
            iova,
            granule_log2: 12,
        }
        .into());
    }
    if len & (PAGE - 1) != 0 {
        return Err(pgtable::Error::MisalignedLength {
            len,
            granule_log2: 12,
        }
        .into());
    }
    Ok(())
}
