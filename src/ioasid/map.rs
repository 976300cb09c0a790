//! Mapping into an IOASID: the record, then every hardware domain behind it, all or nothing.

use super::ctx::{align_up, iova, Ioasid, IoasidCtx, UnitDomain};
use super::direct::direct_overlap;
use super::pending::Pending;
use super::record::RECORD_IAS;
use super::registry::UnitId;
use super::{Error, IoasidFlags, IoasidId, UNMAP_ALL};
use crate::iommu::{DomainHandle, Iommu};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::{self, Gather, InvalidationComplete, IovaRange, Mapping, Prot};

/// The domains of an IOASID with their slots.
pub(super) fn domains<'i, A: PageAllocator>(
    io: &'i Ioasid<'_, A>,
) -> impl Iterator<Item = (usize, UnitDomain)> + 'i {
    io.domains
        .iter()
        .enumerate()
        .filter_map(|(slot, d)| d.map(|d| (slot, d)))
}

/// Lowest IOVA [`IoasidCtx::alloc_iova`] hands out: page 0 stays unmapped so that a device
/// using a null DMA address faults.
const IOVA_ALLOC_BASE: u64 = 1 << 12;

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Maps `[iova, iova + len)` to `[pa, pa + len)` in the IOASID and in every hardware domain
    /// behind it. If any domain refuses, what was done is undone and nothing is mapped.
    ///
    /// # Errors
    /// [`Error::Reserved`] for a range touching a reserved region;
    /// [`Error::BeyondInputWidth`] for one reaching beyond the input width of a domain behind
    /// the IOASID (refused before anything is touched); [`Error::Busy`] for one touching the
    /// destination range of a [`IoasidCtx::copy`] into the IOASID in flight; [`Error::PageTable`]
    /// (overlap, alignment, width, memory; `UnsupportedProt` for [`Prot::PRIV`] in an IOASID
    /// not allocated with [`IoasidFlags::SUPERVISOR`]); unit errors. Nothing is mapped after any of them.
    /// [`Error::InvalidationPending`]: devices may still reach `pa`. Do not reuse `pa` until
    /// an unmap of the range returns `Ok`: it reissues every invalidation the IOASID's units
    /// owe first (failing while one fails), then unmaps whatever a domain or the record still
    /// holds of the range (`Ok(0)` if nothing). Nothing weaker is safe, because the error names
    /// one unit only (the first whose undo left something) and two things can lie behind it,
    /// on different units at once: a unit did not confirm the invalidation of the undone
    /// mapping (or of an earlier unmap; the record maps nothing of the range), and a unit
    /// could not unmap the range again (its domain still maps some of it: the record keeps the
    /// whole range, so no other caller maps over it or is handed it by
    /// [`IoasidCtx::alloc_iova`], a retry is refused with `Overlap`, and
    /// [`IoasidCtx::audit`] reports a [`Error::Mismatch`] naming a unit whose domain no longer
    /// maps it). Another call's `Ok` settles the first, never the second.
    pub fn map(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        self.map_or_copy_run(ioasid, iova, pa, len, prot, false)
    }

    /// [`IoasidCtx::map`], or with `copy_run` a run of a copy into the destination range it
    /// holds (`ioas.rs`: [`Ioasid::copying`], which refuses every other call's map there).
    /// Always inlined: `map`'s body.
    #[inline(always)]
    pub(super) fn map_or_copy_run(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        copy_run: bool,
    ) -> Result<(), Error> {
        let r = self.map_everywhere(ioasid, iova, pa, len, prot, copy_run);
        if r.is_err() {
            // A rollback leaves no table empty: it asked for a reclaim (see `reclaim.rs`).
            self.reclaim_if_due(ioasid);
        }
        r
    }

    /// [`IoasidCtx::map_or_copy_run`] under the context's read lock. Always inlined: one
    /// frame with `map`'s (called from `map` and `copy_runs`, it was a frame of its own under
    /// `map`'s, 1760 -> 1856 bytes for `ie_ctx_map`).
    #[inline(always)]
    fn map_everywhere(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        copy_run: bool,
    ) -> Result<(), Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        // Privileged-only pages only where supervisor requests are honoured (and so where a
        // device can ever use them); refused before anything is written.
        if prot.contains(Prot::PRIV) && !io.flags.contains(IoasidFlags::SUPERVISOR) {
            return Err(Error::PageTable(pgtable::Error::UnsupportedProt { prot }));
        }
        let end = iova.get().saturating_add(len);
        if let Some(r) = self.reserved_overlap(&st, io, iova.get(), end) {
            return Err(Error::Reserved(r));
        }
        if let Some(r) = direct_overlap(io, iova.get(), end) {
            return Err(Error::Reserved(r));
        }
        // A copy in flight owns its destination range until it ends: its undo must find there
        // only what it mapped (review 20 L1).
        if !copy_run && io.copy_overlapping(iova.get(), end).is_some() {
            return Err(Error::Busy);
        }
        if let Some((last, ias, unit)) = beyond_width(io, iova.get(), len) {
            return Err(Error::BeyondInputWidth { last, ias, unit });
        }
        // Overlapping calls take turns (`stripes.rs`), the rollback's unmap included.
        let _hold = io.stripes.take(iova.get(), len);
        self.map_in(io, iova, pa, len, prot)
    }

    /// Maps into the record and every domain of `io`, all or nothing (the checks done).
    /// Always inlined: a wrapper of [`Self::map_in_into`], whose `Result` is its caller's.
    #[inline(always)]
    pub(super) fn map_in(
        &self,
        io: &Ioasid<'a, A>,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        let mut r = Ok(());
        self.map_in_into(io, iova, pa, len, prot, &mut r);
        r
    }

    /// [`Self::map_in`] with its error in `out`, which the caller passes `Ok`; `false` if it
    /// failed. Always inlined: a wrapper of [`Self::map_domains`] and its rollback, whose frame
    /// would only add to its callers' (`map`, `take_one`).
    #[inline(always)]
    pub(super) fn map_in_into(
        &self,
        io: &Ioasid<'a, A>,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        out: &mut Result<(), Error>,
    ) -> bool {
        let mut failed = None;
        if self.map_domains(io, (iova, pa, len, prot), &mut failed, out) {
            return true;
        }
        if let Some(k) = failed {
            self.roll_back_map(io, k + 1, iova, len, out);
        }
        false
    }

    /// Maps into the record and every domain of `io`, its error in `out` (passed `Ok`);
    /// `false` if it failed, and on a domain's refusal `failed` set to its position for
    /// [`Self::roll_back_map`]. Not inlined: the rollback's unmaps and flushes run from its
    /// caller's frame, not under this one; no `Result` of this layer is in this frame over
    /// the units' maps and their flushes (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn map_domains(
        &self,
        io: &Ioasid<'a, A>,
        (iova, pa, len, prot): (Iova, PhysAddr, u64, Prot),
        failed: &mut Option<usize>,
        out: &mut Result<(), Error>,
    ) -> bool {
        // The errors are read where the calls returned them (`refuse_with`), not copied.
        if let Err(e) = &io.record.map(iova, pa, len, prot) {
            return super::refuse_with(out, e);
        }
        // A new mapping never lands where a stale translation may still be cached. Settled
        // once the record holds the range, not before: an unmap that let the range go parked
        // what it owes before its record did (`unmap_unsettled_into`, `roll_back_map`), so the
        // record's taking the range sees it. Settled first, an overlapping unmap on another
        // CPU (which the contract forbids) could park and let the range go in between, and the
        // domains took the range while its invalidation was owed (loom_ioasid:
        // unmap_with_a_failing_flush_vs_a_map_of_its_page).
        if !self.settle_into(io, out) {
            self.unmap_record(io, iova, len);
            return false;
        }
        for (k, (_, d)) in domains(io).enumerate() {
            let Ok(u) = self.unit(d.unit) else {
                *failed = Some(k);
                return super::refuse_into(out, Error::NoSuchUnit(d.unit));
            };
            if let Err(e) = &u.map(d.handle, iova, pa, len, prot) {
                *failed = Some(k);
                return super::refuse_with(out, e);
            }
        }
        true
    }

    /// Undoes a map that the `n`-th domain refused with the error in `out` (or, from
    /// [`IoasidCtx::copy`], the runs it mapped in every domain, `n` at least their number): the
    /// range is unmapped from the first `n` domains (the refusing one too: a unit may fail
    /// after writing entries, `Iommu::map`) and from the record. The range was free in the
    /// record when the call mapped it and no other call has mapped or unmapped there since,
    /// and every domain holds what the record holds, so nothing else is touched: a map's
    /// range by the callers' contract (calls on overlapping ranges do not overlap in time;
    /// another map over it is refused by the record), a copy's runs because its destination
    /// range is its own until it ends ([`Ioasid::copying`]: every other map and unmap there is
    /// `Busy`; before, another caller's unmap and map between two runs was erased by the
    /// undo, review 20 L1), an attach's direct region under the write lock.
    ///
    /// The error to report is left in `out`: the refusal, or, if a domain may still reach the
    /// pages, [`Error::InvalidationPending`] naming its unit: its flush failed (the
    /// invalidation is owed, reissued by the next call), or its unmap failed with the range
    /// still mapped there (see [`undo_left`]). In that last case the record keeps the whole
    /// range (found by review 19: dropped, it let another caller map the range, through an
    /// undo that cleared the leftover, and the first caller's unmap then erased that mapping;
    /// `alloc_iova` handed the range out too): only an unmap of the range lets it go. A
    /// failure's path, not inlined: its locals are
    /// not in the frame of the domains' maps. The domains' leaves gather in the
    /// context's `unmap_gather`, not in this frame over the units' unmaps and flushes (the
    /// kernel-stack bound of the C ABI): under the state's read lock (`map`, `copy`) concurrent
    /// undos take turns on it, under the write lock (an attach's direct regions) it is never
    /// contended.
    #[cold]
    #[inline(never)]
    pub(super) fn roll_back_map(
        &self,
        io: &Ioasid<'a, A>,
        n: usize,
        iova: Iova,
        len: u64,
        out: &mut Result<(), Error>,
    ) {
        let mut left = false;
        {
            // Never held by this thread here: locked only by this undo and by
            // `drop_unused_direct_into`, neither of which calls the other.
            let mut gather = self.unmap_gather.lock();
            for (slot, d) in domains(io).take(n) {
                // The mapping may have been visible: remove it and invalidate.
                left |= self.undo_domain(io, slot, &d, (iova, len), &mut gather, out);
            }
        }
        if left {
            // A domain still maps some of the range: the record keeps all of it, so no other
            // caller is handed the range or maps over it, and only an unmap of the range
            // (every domain, then the record) lets it go.
            io.reclaim.note_rollback(iova, len);
        } else {
            self.unmap_record(io, iova, len);
        }
    }

    /// [`Self::roll_back_map`]'s unmap and flush of the domain in slot `slot`, gathering in
    /// `gather`, which it leaves empty (released, or owed); `true` if the domain still maps
    /// some of the range ([`undo_left`] reported it). Not inlined, and what a failure
    /// leaves is worked out in [`owe_undo`] and [`undo_left`]: no `Result` of this layer is in
    /// the frame over the unit's unmap and flush.
    #[inline(never)]
    fn undo_domain(
        &self,
        io: &Ioasid<'a, A>,
        slot: usize,
        d: &UnitDomain,
        range: (Iova, u64),
        gather: &mut Gather,
        out: &mut Result<(), Error>,
    ) -> bool {
        // A domain's unit is in the registry for the context's life: the lookup cannot fail.
        let Ok(unit) = self.unit(d.unit) else {
            return false;
        };
        // Empty whenever it is passed: see `unmap_domain_into`.
        *gather = Gather::new();
        // Only the error is kept over the flush (the kernel-stack bound of the C ABI).
        let unmapped = unit.unmap(d.handle, range.0, range.1, gather).err();
        // Flush even after a failure: the gather holds what did change.
        if let Err(error) = unit.flush(d.handle, gather) {
            owe_undo(&io.pending, slot, d.unit, gather, error, out);
        }
        match unmapped {
            Some(error) => undo_left(d, unit, range, error, out),
            None => false,
        }
    }

    /// Unmaps `[iova, iova + len)` from the IOASID and every domain behind it, with one flush
    /// (one completion wait) per unit. Returns the bytes that were mapped. If a domain refuses
    /// (a split it cannot make) or fails partway (`EntryUnstable`, after unmapping a prefix),
    /// the domains already changed get the range back from the record, the failing one what it
    /// lost of it, and nothing is unmapped.
    ///
    /// # Errors
    /// [`Error::PageTable`] (range errors, a refused split, memory); unit errors;
    /// [`Error::Busy`] for a range (`UNMAP_ALL` too) touching the destination range of a
    /// [`IoasidCtx::copy`] into the IOASID in flight: nothing is unmapped. [`Error::InvalidationPending`]: the range is unmapped from the record and from
    /// every domain, but a unit did not confirm the invalidation, so devices behind it may still
    /// reach the old pages through stale caches (and the table pages the unmap emptied are
    /// kept). Do not reuse the pages until a retry of this call returns `Ok` (it reissues the
    /// invalidation first, and reports 0 bytes: the range is already unmapped), or until
    /// [`IoasidCtx::free`] of the IOASID returns `Ok` (it settles everything the IOASID's
    /// units owe before it frees any domain; a retry after it answers `NoSuchIoasid`, or
    /// reaches an IOASID allocated since under the same number: do not retry then).
    ///
    /// `iova` 0 with `len` [`UNMAP_ALL`](super::UNMAP_ALL) (`u64::MAX`) unmaps everything the
    /// owner mapped, whatever the address width, as iommufd's `IOMMU_IOAS_UNMAP` does: every
    /// range but the direct regions of attached devices, which stay mapped. It unmaps range
    /// after range (the gaps between direct regions); an error stops it with what lay below
    /// unmapped: retry until it returns `Ok`. A range holding no mapping returns `Ok(0)` (see
    /// the module documentation for why not iommufd's `ENOENT`).
    pub fn unmap(&self, ioasid: IoasidId, iova: Iova, len: u64) -> Result<u64, Error> {
        let mut unmapped = 0;
        self.unmap_counted(ioasid, iova, len, &mut unmapped)
            .map(|()| unmapped)
    }

    /// As [`IoasidCtx::unmap`], adding to `*unmapped` the bytes it unmapped from the IOASID
    /// however it ends: on [`Error::InvalidationPending`] the range's (it is unmapped, its
    /// invalidation unconfirmed), after an [`UNMAP_ALL`](super::UNMAP_ALL) that an error
    /// stopped what lay below, after a refusal 0.
    ///
    /// # Errors
    /// As [`IoasidCtx::unmap`].
    pub fn unmap_counted(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        unmapped: &mut u64,
    ) -> Result<(), Error> {
        let mut reclaim_due = false;
        let r = self.unmap_everywhere(ioasid, iova, len, unmapped, &mut reclaim_due);
        // Tables the unmap left empty are reclaimed every few unmaps (see `reclaim.rs`), with
        // the context lock released.
        if reclaim_due {
            self.reclaim_noted(ioasid);
        }
        r
    }

    /// [`IoasidCtx::unmap`] under the context's read lock; sets `reclaim_due` if the unmap,
    /// noted in the IOASID's reclaim log under the same lock, filled it. Not inlined: its
    /// locals are not under the reclaim that follows (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn unmap_everywhere(
        &self,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        unmapped: &mut u64,
        reclaim_due: &mut bool,
    ) -> Result<(), Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        // Overlapping calls take turns (`stripes.rs`): `UNMAP_ALL` takes every stripe.
        let hold = io.stripes.take(iova.get(), len);
        let r = self.unmap_checked(io, ioasid, iova, len, unmapped);
        drop(hold);
        *reclaim_due = io.reclaim.note(iova, len);
        r
    }

    /// [`IoasidCtx::unmap`] of `io`, found by the caller under the context's read lock.
    fn unmap_checked(
        &self,
        io: &Ioasid<'a, A>,
        ioasid: IoasidId,
        iova: Iova,
        len: u64,
        unmapped: &mut u64,
    ) -> Result<(), Error> {
        if io.nested.is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        // Nor an unmap, `UNMAP_ALL` included (see `map_everywhere`).
        if io
            .copy_overlapping(iova.get(), iova.get().saturating_add(len))
            .is_some()
        {
            return Err(Error::Busy);
        }
        if iova.get() == 0 && len == UNMAP_ALL {
            return self.unmap_all(io, unmapped);
        }
        // Attached devices' direct regions stay mapped (`direct.rs`).
        if let Some(r) = direct_overlap(io, iova.get(), iova.get().saturating_add(len)) {
            return Err(Error::Reserved(r));
        }
        self.unmap_in(io, iova, len, unmapped)
    }

    /// [`IoasidCtx::unmap`] of everything: every range of the IOASID's address space (the
    /// record's, narrowed to its domains' input widths: no mapping lies beyond) but the
    /// attached devices' direct mappings, in address order.
    fn unmap_all(&self, io: &Ioasid<'a, A>, unmapped: &mut u64) -> Result<(), Error> {
        let mut limit = 1u64 << RECORD_IAS;
        for d in io.domains.iter().flatten() {
            let (ias, _) = self.unit(d.unit)?.domain_geometry(d.handle)?;
            limit = limit.min(1u64.checked_shl(ias).unwrap_or(u64::MAX));
        }
        let mut at = 0u64;
        // Each pass unmaps up to the lowest direct region above `at` and steps over it (at
        // most MAX_DIRECT_PER_IOASID + 1 passes; no sorted copy, to keep the stack small).
        loop {
            let next = io
                .direct
                .iter()
                .flatten()
                .map(|d| d.region.range())
                .filter(|r| r.end.get() > at)
                .min_by_key(|r| r.start.get());
            let (start, end) = next.map_or((limit, limit), |r| (r.start.get(), r.end.get()));
            let gap_end = start.min(limit);
            if gap_end > at {
                // A failure stops here: what lies below `at` stays unmapped (and counted).
                self.unmap_in(io, iova(at), gap_end - at, unmapped)?;
            }
            if end >= limit {
                return Ok(());
            }
            at = end;
        }
    }

    /// Unmaps from every domain of `io` and from the record (see [`IoasidCtx::unmap`]) and
    /// adds the bytes the record let go to `*unmapped`, also when it fails (the range's after
    /// an unconfirmed invalidation, 0 after a refusal). The domains' leaves gather on the stack.
    fn unmap_in(
        &self,
        io: &Ioasid<'a, A>,
        iova: Iova,
        len: u64,
        unmapped: &mut u64,
    ) -> Result<(), Error> {
        self.settle(io)?;
        let mut out = Ok(());
        let bytes = self.unmap_unsettled_into(io, iova, len, &mut Gather::new(), &mut out);
        *unmapped = unmapped.saturating_add(bytes);
        out
    }

    /// Unmaps from every domain of `io` and from the record without settling what is owed
    /// first: the entries go even while a unit still owes an invalidation (their flush carries
    /// the owed ranges along), for the undo of a failed copy, which must not leave what it
    /// mapped behind because an earlier invalidation is unconfirmed. Its error goes in `out`,
    /// which the caller passes `Ok`; returns the bytes the record let go, whatever `out` says
    /// (0 when a domain or the record refused: the domains got the range back). Every error goes straight into
    /// the caller's `out`, so that no `Result` of this layer is in this frame or the domains'
    /// (the kernel-stack bound of the C ABI: the frames over the units' unmaps and flushes).
    /// Always inlined: with the copy check in `unmap_checked` rustc stopped inlining it into
    /// `unmap_everywhere`, a frame more under `ie_ctx_unmap` (1856 -> 1968 bytes).
    #[inline(always)]
    pub(super) fn unmap_unsettled_into(
        &self,
        io: &Ioasid<'a, A>,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
        out: &mut Result<(), Error>,
    ) -> u64 {
        // The first invalidation left owed, reported once every domain and the record agree.
        for (k, (slot, d)) in domains(io).enumerate() {
            // The entries are gone when owed: go on, so that every domain and the record agree.
            if self.unmap_domain_into(io, slot, &d, iova, len, gather, out) == DomainUnmap::Refused
            {
                self.remap_domains(io, k, &d, iova, len);
                return 0;
            }
        }
        self.unmap_from_record(io, iova, len, gather, out)
    }

    /// Maps back into the first `n` domains what the record holds in `[iova, iova + len)`
    /// (an unmap that a later domain refused), and into the one that refused (`failed`, the
    /// `n`th) what it lacks of it: a walk that failed partway (`EntryUnstable`,
    /// `UnknownTable`) has unmapped a prefix. A failure's path, not inlined.
    #[cold]
    #[inline(never)]
    fn remap_domains(
        &self,
        io: &Ioasid<'a, A>,
        n: usize,
        failed: &UnitDomain,
        iova: Iova,
        len: u64,
    ) {
        for (_, done) in domains(io).take(n) {
            let _ = self.remap_from_record(io, &done, iova, len);
        }
        let _ = self.refill_from_record(io, failed, iova, len);
    }

    /// Maps back into a domain whose unmap of `[iova, iova + len)` failed partway what it lost:
    /// its walk goes in address order and stops at the failing entry, so what it unmapped is
    /// everything below its first leaf still in the range, which the record holds. Not nested
    /// in the record's walk (`remap_from_record` after the domain's): both walks' frames at
    /// once would not fit the C ABI's kernel-stack bound. A rollback's path, not inlined.
    #[cold]
    #[inline(never)]
    fn refill_from_record(
        &self,
        io: &Ioasid<'a, A>,
        d: &UnitDomain,
        iova: Iova,
        len: u64,
    ) -> Result<(), Error> {
        let unit: &dyn Iommu = self.unit(d.unit)?;
        let lost = first_leaf(unit, d.handle, iova.get(), len)? - iova.get();
        if lost == 0 {
            return Ok(());
        }
        self.remap_from_record(io, d, iova, lost)
    }

    /// The record's part of [`Self::unmap_in`], after every domain's, gathering in `gather`
    /// (the domains', empty again: see [`Self::unmap_domain_into`]), which it leaves empty: on
    /// failure the domains get the range back from the record, and the error replaces what
    /// `out` held. Returns the bytes unmapped. Not inlined: its locals are not under the
    /// domains' unmaps and flushes.
    #[inline(never)]
    fn unmap_from_record(
        &self,
        io: &Ioasid<'a, A>,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
        out: &mut Result<(), Error>,
    ) -> u64 {
        *gather = Gather::new();
        let bytes = match io.record.unmap(iova, len, gather) {
            Ok(bytes) => bytes,
            Err(e) => {
                for (_, d) in domains(io) {
                    let _ = self.remap_from_record(io, &d, iova, len);
                }
                *out = Err(e.into());
                return 0;
            }
        };
        // SAFETY: the record is a software table: no hardware walks it.
        if let Err(e) = gather.release(self.alloc, unsafe { InvalidationComplete::assume() }) {
            *out = Err(e.into());
        }
        bytes
    }

    /// What the IOASID's owner mapped at `iova`. `size_log2` is the page the devices see it
    /// through at least: the record keeps 4 KiB pages, but behind a unit with a larger
    /// granule (SMMUv3 16 KiB or 64 KiB) every mapping is made of whole granules (attach
    /// and map refuse anything else), so the largest granule of the IOASID's domains is
    /// reported when the record's leaf is smaller.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn translate(&self, ioasid: IoasidId, iova: Iova) -> Result<Option<Mapping>, Error> {
        // The write lock: an unmap (read lock) may free the record's tables under the descent.
        let st = self.state.write();
        let io = st.ioasid(ioasid)?;
        let Some(m) = io.record.query(iova) else {
            return Ok(None);
        };
        let granule = domains(io)
            .filter_map(|(_, d)| self.unit(d.unit).ok()?.domain_geometry(d.handle).ok())
            .map(|(_, page_sizes)| page_sizes.trailing_zeros())
            .filter(|&g| g < 64)
            .max()
            .unwrap_or(0);
        Ok(Some(Mapping {
            size_log2: m.size_log2.max(granule),
            ..m
        }))
    }

    /// Finds and reserves `size` bytes (rounded up to whole 4 KiB pages) of IOVA aligned to
    /// `align` (a power of two; at least 4 KiB is used) that nothing maps or reserves, below
    /// every domain's input limit. The caller maps
    /// into it and returns it with [`IoasidCtx::free_iova`].
    ///
    /// # Errors
    /// [`Error::NoIovaSpace`]; [`Error::Capacity`] with too many outstanding reservations.
    pub fn alloc_iova(&self, ioasid: IoasidId, size: u64, align: u64) -> Result<Iova, Error> {
        // The write lock: the search walks the record, whose tables an unmap (read lock) frees
        // at once.
        let st = self.state.write();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        let align = align.max(1 << 12);
        if size == 0 || !align.is_power_of_two() {
            return Err(Error::NoIovaSpace { size });
        }
        // Whole pages: what is reserved is what can be mapped.
        let asked = size;
        let size = align_up(size, 1 << 12).ok_or(Error::NoIovaSpace { size: asked })?;
        let mut limit = 1u64 << RECORD_IAS;
        for d in io.domains.iter().flatten() {
            let (ias, _) = self.unit(d.unit)?.domain_geometry(d.handle)?;
            limit = limit.min(1u64.checked_shl(ias).unwrap_or(u64::MAX));
        }
        let mut reservations = io.reservations.lock();
        let slot = reservations
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Capacity("IOVA reservations"))?;
        let mut at = align_up(IOVA_ALLOC_BASE, align).ok_or(Error::NoIovaSpace { size: asked })?;
        loop {
            let end = at
                .checked_add(size)
                .filter(|&e| e <= limit)
                .ok_or(Error::NoIovaSpace { size: asked })?;
            let mut busy_until = reservations
                .iter()
                .flatten()
                .filter(|r| super::overlaps(r, at, end))
                .map(|r| r.end.get())
                .max();
            if let Some(r) = self.reserved_overlap(&st, io, at, end) {
                busy_until = busy_until.max(Some(r.end.get()));
            }
            // A copy's destination range: mapped by the copy, or free again when it ends.
            if let Some(r) = io.copy_overlapping(at, end) {
                busy_until = busy_until.max(Some(r.end.get()));
            }
            io.record.for_each_mapping(iova(at), size, |l| {
                busy_until = busy_until.max(Some(l.iova.get() + (1u64 << l.size_log2)));
            })?;
            match busy_until {
                None => break,
                Some(next) => {
                    at = align_up(next, align).ok_or(Error::NoIovaSpace { size: asked })?
                }
            }
        }
        reservations[slot] = Some(IovaRange {
            start: iova(at),
            end: iova(at + size),
        });
        Ok(iova(at))
    }

    /// Returns a reservation made by [`IoasidCtx::alloc_iova`] starting at `start`; `false` if
    /// there is none.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn free_iova(&self, ioasid: IoasidId, start: Iova) -> Result<bool, Error> {
        let st = self.state.read();
        let mut reservations = st.ioasid(ioasid)?.reservations.lock();
        let found = reservations
            .iter_mut()
            .find(|r| r.is_some_and(|r| r.start == start));
        Ok(found.map(|r| r.take()).is_some())
    }

    /// Unmaps a range from the domain in slot `slot` and flushes its unit, for
    /// [`Self::unmap_unsettled_into`], gathering in `gather` (the caller's: see
    /// [`Self::unmap_in`]), which it leaves empty: a completed flush releases it; one that
    /// fails leaves it owed (see `pending.rs`). An invalidation left owed goes into `out` as
    /// [`Error::InvalidationPending`] unless an earlier error is there ([`DomainUnmap::Owed`]),
    /// any other error replaces what `out` held ([`DomainUnmap::Refused`]). Not inlined, and
    /// the errors are built in [`domain_error`]: no `Result` of this layer is in the frame
    /// over the unit's unmap and flush.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn unmap_domain_into(
        &self,
        io: &Ioasid<'a, A>,
        slot: usize,
        d: &UnitDomain,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
        out: &mut Result<(), Error>,
    ) -> DomainUnmap {
        let Ok(unit) = self.unit(d.unit) else {
            return domain_error(out, Error::NoSuchUnit(d.unit));
        };
        // Empty whenever it is passed (a completed flush releases it, a failed one is parked):
        // made so again in case a unit returned one that is not, so that this domain's flush
        // never carries another's ranges (a page still held would be leaked, as a dropped
        // gather's are, never freed).
        *gather = Gather::new();
        let r = unit.unmap(d.handle, iova, len, gather);
        // Flush even after a failure: the gather holds what did change.
        match unit.flush(d.handle, gather) {
            Ok(()) => match r {
                Ok(_) => DomainUnmap::Done,
                Err(e) => domain_error(out, e),
            },
            Err(error) => owe_flush_into(&io.pending, slot, d.unit, gather, r, error, out),
        }
    }

    // Not inlined: its gather is not on the stack under the domains' unmaps before it.
    #[inline(never)]
    fn unmap_record(&self, io: &Ioasid<'a, A>, iova: Iova, len: u64) {
        // The domains and the record may now hold empty tables around the range.
        io.reclaim.note_rollback(iova, len);
        let mut gather = Gather::new();
        if io.record.unmap(iova, len, &mut gather).is_ok() {
            // SAFETY: the record is a software table: no hardware walks it.
            let _ = gather.release(self.alloc, unsafe { InvalidationComplete::assume() });
        }
    }

    /// Maps back into a domain what the record holds in `[iova, iova + len)`. A rollback's
    /// path, not inlined: its walk is not in the frame of the unmap that calls the domains'
    /// flushes.
    #[cold]
    #[inline(never)]
    fn remap_from_record(
        &self,
        io: &Ioasid<'a, A>,
        d: &UnitDomain,
        iova: Iova,
        len: u64,
    ) -> Result<(), Error> {
        let unit: &dyn Iommu = self.unit(d.unit)?;
        let (start, end) = (iova.get(), iova.get().saturating_add(len));
        let mut result = Ok(());
        io.record.for_each_mapping(iova, len, |l| {
            let from = l.iova.get().max(start);
            let to = (l.iova.get() + (1u64 << l.size_log2)).min(end);
            let pa = PhysAddr::new(l.pa.get() + (from - l.iova.get()));
            if result.is_ok() {
                result = unit
                    .map(d.handle, Iova::new(from), pa, to - from, l.prot)
                    .map_err(Error::from);
            }
        })?;
        result
    }
}

/// What [`Error::BeyondInputWidth`] names when `[iova, iova + len)` reaches beyond the input
/// width of a domain of `io`: the range's last IOVA, the narrowest such width and its unit
/// (an empty or overflowing range is left to the record to name). Not the error itself: a
/// 56-byte value in the frame of `map`, which calls the units.
///
/// Every mapping of an IOASID lies below every one of its domains' input widths: `map` and
/// `copy` refuse anything else here, before the record or a domain is touched; an attach
/// refuses a domain narrower than a mapping (`Missing::AddressWidth`, `check_run`) and a
/// direct region beyond a domain the IOASID has (`check_direct`). Without it, a range that
/// a wide domain took and a narrow one refused, whose undo then failed in the wide one,
/// stayed in the record straddling the narrow width, and `unmap(0, UNMAP_ALL)`, which stops
/// at the narrowest width, returned `Ok` with the page above it still mapped (review 19b).
pub(super) fn beyond_width<A: PageAllocator>(
    io: &Ioasid<'_, A>,
    iova: u64,
    len: u64,
) -> Option<(Iova, u32, UnitId)> {
    let last = iova.checked_add(len.checked_sub(1)?)?;
    if last & io.beyond_ias == 0 {
        return None;
    }
    let d = io
        .domains
        .iter()
        .flatten()
        .filter(|d| d.ias < 64 && last >> d.ias != 0)
        .min_by_key(|d| d.ias)?;
    Some((Iova::new(last), d.ias, d.unit))
}

/// How a domain's part of [`IoasidCtx::unmap_unsettled_into`] ended; its error is in the
/// caller's `out`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DomainUnmap {
    /// Unmapped and invalidated.
    Done,
    /// Unmapped, the invalidation owed ([`Error::InvalidationPending`]).
    Owed,
    /// The unit refused (or its table failed): the unmap stops there.
    Refused,
}

/// Puts a domain's error `e` into `out` as [`IoasidCtx::unmap_unsettled_into`] reports it: an
/// invalidation left owed unless an earlier error is there, any other error in place of
/// what was there. A failure's path, not inlined: `e` is built in this frame.
#[cold]
#[inline(never)]
fn domain_error(out: &mut Result<(), Error>, e: impl Into<Error>) -> DomainUnmap {
    let e = e.into();
    if let Error::InvalidationPending { .. } = e {
        if out.is_ok() {
            *out = Err(e);
        }
        DomainUnmap::Owed
    } else {
        *out = Err(e);
        DomainUnmap::Refused
    }
}

/// [`owe_flush`] for [`IoasidCtx::unmap_domain_into`]: its error goes into `out` as
/// [`domain_error`] puts it. A failure's path, not inlined.
#[cold]
#[inline(never)]
fn owe_flush_into(
    pending: &Pending,
    slot: usize,
    unit: UnitId,
    gather: &mut Gather,
    done: Result<u64, crate::iommu::Error>,
    error: crate::iommu::Error,
    out: &mut Result<(), Error>,
) -> DomainUnmap {
    match owe_flush(pending, slot, unit, gather, done, error) {
        Ok(_) => DomainUnmap::Done,
        Err(e) => domain_error(out, e),
    }
}

/// The end of [`IoasidCtx::undo_domain`] when the unit's flush failed with `error`: the
/// gather is owed (see `pending.rs`), and [`Error::InvalidationPending`] naming `unit` goes
/// into `out` in place of the refusal (not of an earlier one: the first such domain is named).
/// A failure's path, not inlined: the error is built here.
#[cold]
#[inline(never)]
fn owe_undo(
    pending: &Pending,
    slot: usize,
    unit: UnitId,
    gather: &mut Gather,
    error: crate::iommu::Error,
    out: &mut Result<(), Error>,
) {
    pending.park(slot, gather);
    reachable(out, Error::InvalidationPending { unit, error });
}

/// The end of [`IoasidCtx::undo_domain`] when the unit's unmap of `[iova, iova + len)` failed
/// with `error`: if domain `d` still maps anything there, [`Error::InvalidationPending`]
/// naming its unit goes into `out` in place of the refusal (not of an earlier one), and `true`
/// (the caller keeps the range in the record). An unmap of the range finishes the undo (it
/// unmaps every domain, then the record); meanwhile `audit` names a unit whose domain no
/// longer maps it, and a map over any of the range is refused by the record before any
/// domain is touched. A failure's path, not inlined.
///
/// Which unmap errors can come on an undo: the range is exactly what this call mapped, all
/// of its leaves inside it, so the unmap splits nothing. That holds because the record refuses
/// a map over any part of a range it holds before a domain is touched, and the record keeps
/// every range a domain may still map after an undo (above): a domain's leaf in the range can
/// only be this call's own (no `NoMemory`, `TableOutOfRange`,
/// `SplitRefused`, `SplitUnsupported`, and no `EntryUnstable`, met only on a leaf to be split);
/// the unit accepted the range for its map (no range or alignment error), or refused it with
/// nothing written (then its unmap's refusal leaves nothing mapped: not reported); the domain
/// lives under the state's lock (no `InvalidDomain`). What is left is a corrupt table
/// (`UnknownTable`, partway) or a unit breaking its contract (the tests' fake unit): whatever
/// the error, the domain is walked, and any leaf left in the range is reported.
#[cold]
#[inline(never)]
fn undo_left(
    d: &UnitDomain,
    unit: &dyn Iommu,
    (iova, len): (Iova, u64),
    error: crate::iommu::Error,
    out: &mut Result<(), Error>,
) -> bool {
    // Only the part of the range inside the domain's input width can hold a leaf, and the walk
    // must be one the unit accepts: a map refused for its width or for the domain's granule
    // (nothing written) must not count its walk's argument error as a leaf (kept in the record,
    // no unmap of the range could ever let it go). So the range is widened to the granule --
    // every leaf is a granule-aligned multiple of it, so any leaf of the widened range covers
    // part of the range -- and cut at the width. Its geometry unknown, the whole range is
    // walked.
    let (limit, granule) = unit
        .domain_geometry(d.handle)
        .map_or((u64::MAX, 1), |(ias, sizes)| {
            let limit = 1u64.checked_shl(ias).unwrap_or(u64::MAX);
            (limit, (sizes & sizes.wrapping_neg()).max(1))
        });
    let start = iova.get() & !(granule - 1);
    let end =
        (iova.get().saturating_add(len).saturating_add(granule - 1) & !(granule - 1)).min(limit);
    // A walk that fails counts as a leaf left: reported, never assumed gone.
    let left = start < end
        && first_leaf(unit, d.handle, start, end - start).map_or(true, |first| first < end);
    if left {
        reachable(
            out,
            Error::InvalidationPending {
                unit: d.unit,
                error,
            },
        );
    }
    left
}

/// Puts `e` (pages still reachable) into `out` in place of a refusal, not of an earlier one.
fn reachable(out: &mut Result<(), Error>, e: Error) {
    if !matches!(out, Err(Error::InvalidationPending { .. })) {
        *out = Err(e);
    }
}

/// Where the first leaf of domain `d` of `unit` in `[iova, iova + len)` begins (`iova` for a
/// leaf that covers it), or the range's end if it has none.
fn first_leaf(unit: &dyn Iommu, d: DomainHandle, iova: u64, len: u64) -> Result<u64, Error> {
    let mut first = iova.saturating_add(len);
    unit.for_each_mapping(d, Iova::new(iova), len, &mut |leaf| {
        first = first.min(leaf.iova.get().max(iova));
    })?;
    Ok(first)
}

/// The end of [`IoasidCtx::unmap_domain_into`] (through [`owe_flush_into`]) and of a dirty
/// read's flush when the unit's flush failed: the gather is owed (see `pending.rs`), and the
/// call's own error (`done`) is reported, else [`Error::InvalidationPending`]. A failure's
/// path, not inlined: the error is built here, not in the frame that flushes (the
/// kernel-stack bound of the C ABI).
#[cold]
#[inline(never)]
pub(super) fn owe_flush<T>(
    pending: &Pending,
    slot: usize,
    unit: UnitId,
    gather: &mut Gather,
    done: Result<T, crate::iommu::Error>,
    error: crate::iommu::Error,
) -> Result<T, Error> {
    pending.park(slot, gather);
    done?;
    Err(Error::InvalidationPending { unit, error })
}
