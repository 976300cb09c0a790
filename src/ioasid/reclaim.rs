//! Reclaiming the tables that unmaps left empty, in an IOASID's record and in every hardware
//! domain behind it: deferred to the context's write lock (ARCHITECTURE.md, "Reclaim").
//!
//! An unmap of `[start, end)` unlinks the tables it covers whole; a table it covers only in part
//! can be left mapping nothing, and such a table always holds `start` or `end - 1` (see
//! [`crate::pgtable::PageTable::reclaim_at`]). Unlinking it while another CPU maps into the rest
//! of its span would lose that map, and `map`/`unmap` hold the context lock only for reading. So
//! each unmap notes its two ends in the IOASID's [`ReclaimLog`] (lock-free), and the unmap that
//! fills the log takes the context lock for writing -- no map or unmap of the context is then in
//! flight -- and reclaims around every noted end: in the record (a software table, freed at
//! once), and on each unit through [`Iommu::reclaim`], which invalidates once and frees the
//! pages only after that invalidation completed.

use crate::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::ctx::{IoasidCtx, UnitDomain};
use super::pending::Pending;
use super::record::Record;
use super::registry::UnitId;
use super::{keep_first, Error, IoasidId, MAX_UNITS};
use crate::iommu::{DomainHandle, DomainPages, Iommu, ReclaimScope};
use crate::mem::{Iova, PageAllocator};
use crate::pgtable::{Gather, InvalidationComplete, PageTable, TablePages};

/// Unmaps an IOASID notes before the one that fills the log reclaims. Each may leave one empty
/// table per level below the root at each end of its range, so between reclaims a table of `L`
/// levels holds at most `2 * (L - 1) * (RECLAIM_BATCH - 1)` surplus pages
/// ([`reclaim_slack`]); each reclaim costs the context's write lock, a walk of one table per
/// level around each noted end, and (only if a table was unlinked) one invalidation per unit.
pub const RECLAIM_BATCH: usize = 8;

/// The most table pages beyond what the live mappings need ([`TablePages::needed`]) that a
/// table of `levels` levels -- an IOASID's record, or its domain on one unit -- holds between
/// calls: the empty tables the unmaps noted since the last reclaim can have left, at most one per
/// level below the root at each end of each range. Holds whenever no map or unmap of the IOASID
/// is in flight, except after a failed invalidation (the domain then keeps the unlinked pages,
/// counted in [`DomainPages::unflushed`], until a later invalidation completes).
pub const fn reclaim_slack(levels: u32) -> usize {
    2 * (levels.saturating_sub(1) as usize) * (RECLAIM_BATCH - 1)
}

/// The ends of the ranges unmapped since the last reclaim. Written under the context's read
/// lock (any number of unmaps at once: each claims its own slot), read under its write lock.
pub(super) struct ReclaimLog {
    /// Unmaps noted since the last reclaim. Past [`RECLAIM_BATCH`] their ends are not kept and
    /// the next reclaim looks at every table.
    noted: AtomicUsize,
    /// A rolled-back map asks for a reclaim at once.
    urgent: AtomicBool,
    /// `[start, end - 1]` of each noted range.
    ends: [[AtomicU64; 2]; RECLAIM_BATCH],
    /// The ends the last reclaim took, as its scope reads them: kept here, under the write
    /// lock, rather than copied onto the stack of the reclaim that calls the units (the
    /// kernel-stack bound of the C ABI's entry points).
    taken: [Iova; 2 * RECLAIM_BATCH],
}

impl ReclaimLog {
    // Not `const`: loom's atomics have no `const` `new` (`sync.rs`).
    pub(super) fn new() -> Self {
        Self {
            noted: AtomicUsize::new(0),
            urgent: AtomicBool::new(false),
            #[cfg(not(loom))]
            ends: [const { [AtomicU64::new(0), AtomicU64::new(0)] }; RECLAIM_BATCH],
            #[cfg(loom)]
            ends: core::array::from_fn(|_| [AtomicU64::new(0), AtomicU64::new(0)]),
            taken: [Iova::ZERO; 2 * RECLAIM_BATCH],
        }
    }

    /// Notes that `[iova, iova + len)` was unmapped (or that an unmap of it was attempted);
    /// returns whether a reclaim is due.
    pub(super) fn note(&self, iova: Iova, len: u64) -> bool {
        let Some(last) = len.checked_sub(1).and_then(|l| iova.get().checked_add(l)) else {
            // Refused before anything changed.
            return self.due();
        };
        // Relaxed: the write lock a reclaim takes orders these after every reader's release.
        let n = self.noted.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.ends.get(n) {
            slot[0].store(iova.get(), Ordering::Relaxed);
            slot[1].store(last, Ordering::Relaxed);
        }
        n.saturating_add(1) >= RECLAIM_BATCH
    }

    /// Notes a range a failed map was rolled back from: the next reclaim is due at once.
    pub(super) fn note_rollback(&self, iova: Iova, len: u64) {
        self.note(iova, len);
        self.urgent.store(true, Ordering::Relaxed);
    }

    /// Whether the log asks for a reclaim.
    pub(super) fn due(&self) -> bool {
        self.urgent.load(Ordering::Relaxed) || self.noted.load(Ordering::Relaxed) >= RECLAIM_BATCH
    }

    /// Empties the log, returning the IOVAs to reclaim around (`None`: every table).
    #[cfg(not(loom))]
    fn take(&mut self) -> Option<&[Iova]> {
        let n = core::mem::take(self.noted.get_mut());
        *self.urgent.get_mut() = false;
        let slots = self.ends.get_mut(..n)?;
        for (out, slot) in self.taken.chunks_exact_mut(2).zip(slots) {
            out[0] = Iova::new(*slot[0].get_mut());
            out[1] = Iova::new(*slot[1].get_mut());
        }
        self.taken.get(..2 * n)
    }

    /// [`Self::take`] under loom, whose atomics have no `get_mut` (`sync.rs`): the same reads
    /// and writes, exclusive by `&mut self`.
    #[cfg(loom)]
    fn take(&mut self) -> Option<&[Iova]> {
        let n = self.noted.with_mut(core::mem::take);
        self.urgent.store(false, Ordering::Relaxed);
        let slots = self.ends.get_mut(..n)?;
        for (out, slot) in self.taken.chunks_exact_mut(2).zip(slots) {
            out[0] = Iova::new(slot[0].with_mut(|v| *v));
            out[1] = Iova::new(slot[1].with_mut(|v| *v));
        }
        self.taken.get(..2 * n)
    }
}

/// The table pages of an IOASID, as [`IoasidCtx::table_pages`] counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoasidPages {
    /// The IOASID's record (a 5-level software table).
    pub record: TablePages,
    /// Its hardware domains, one per unit.
    pub domains: [Option<UnitPages>; MAX_UNITS],
}

/// The table pages of an IOASID's domain on one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitPages {
    /// The unit.
    pub unit: UnitId,
    /// The domain, as the unit numbers it.
    pub domain: DomainHandle,
    /// Its pages.
    pub pages: DomainPages,
}

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Unlinks every table that maps nothing from the IOASID's record and from its domain on
    /// every unit, invalidating each unit once (only if it had such a table) and freeing the
    /// pages after that invalidation completed. Returns how many pages were freed. Takes the
    /// context's lock for writing: maps and unmaps of the context wait meanwhile. Unmaps do
    /// this by themselves, around the ranges they unmapped ([`RECLAIM_BATCH`]); this call
    /// looks at every table.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; the first unit error (the other units are still reclaimed;
    /// see [`Iommu::reclaim`] for what a unit whose invalidation failed does with the pages).
    pub fn reclaim(&self, ioasid: IoasidId) -> Result<usize, Error> {
        let mut st = self.state.write();
        let io = st.ioasid_mut(ioasid)?;
        io.reclaim.take();
        self.reclaim_tables(&mut io.record, &io.domains, &io.pending, ReclaimScope::All)
    }

    /// Counts the table pages of the IOASID's record and of its domain on every unit: linked,
    /// needed by the leaves, held after a failed invalidation. Exact: no map or unmap runs
    /// meanwhile (the context's lock is taken for writing).
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::PageTable`] or unit errors for a corrupt table.
    pub fn table_pages(&self, ioasid: IoasidId) -> Result<IoasidPages, Error> {
        // The write lock: an unmap (read lock) frees tables the walks would read.
        let mut st = self.state.write();
        let io = st.ioasid_mut(ioasid)?;
        let mut out = IoasidPages {
            record: io.record.table_pages()?,
            domains: [None; MAX_UNITS],
        };
        for (slot, d) in out.domains.iter_mut().zip(io.domains.iter().flatten()) {
            let pages = self.unit(d.unit)?.table_pages(d.handle)?;
            *slot = Some(UnitPages {
                unit: d.unit,
                domain: d.handle,
                pages,
            });
        }
        Ok(out)
    }

    /// Reclaims after an unmap whose note filled the log (the unmap notes its range under the
    /// context's read lock it already holds: `map.rs`). Called with the context lock released.
    pub(super) fn reclaim_noted(&self, ioasid: IoasidId) {
        // The unmap itself succeeded or failed already; a unit whose invalidation fails here
        // keeps the pages and reports the failure again at its next flush.
        let _ = self.reclaim_due(ioasid);
    }

    /// Reclaims if the log asks for it (a failed map that was rolled back). Called with the
    /// context lock released.
    pub(super) fn reclaim_if_due(&self, ioasid: IoasidId) {
        let _ = self.reclaim_when_due(ioasid);
    }

    /// As [`reclaim_if_due`](Self::reclaim_if_due), reporting a reclaim that failed.
    ///
    /// # Errors
    /// Those of the reclaim ([`Error::InvalidationPending`]: the tables it unlinked stay
    /// owed by the IOASID).
    pub(super) fn reclaim_when_due(&self, ioasid: IoasidId) -> Result<(), Error> {
        let mut result = Ok(());
        self.reclaim_when_due_into(ioasid, &mut result);
        result
    }

    /// [`Self::reclaim_when_due`] with its error in `result`, which the caller passes `Ok`.
    pub(super) fn reclaim_when_due_into(&self, ioasid: IoasidId, result: &mut Result<(), Error>) {
        let due = self
            .state
            .read()
            .ioasid(ioasid)
            .is_ok_and(|io| io.reclaim.due());
        if due {
            self.reclaim_due_into(ioasid, result);
        }
    }

    /// Takes the write lock and reclaims around the noted ends, unless another thread did it
    /// first.
    fn reclaim_due(&self, ioasid: IoasidId) -> Result<usize, Error> {
        let mut result = Ok(());
        let freed = self.reclaim_due_into(ioasid, &mut result);
        result.map(|()| freed)
    }

    /// [`Self::reclaim_due`] with its error in `result`, which the caller passes `Ok`; returns
    /// the pages freed. The errors go straight into the caller's `result`: no `Result` of this
    /// layer is in the frames over the units' reclaims and flushes (the kernel-stack bound of
    /// the C ABI).
    fn reclaim_due_into(&self, ioasid: IoasidId, result: &mut Result<(), Error>) -> usize {
        // An upgradeable guard stops new readers, so that a stream of maps and unmaps cannot
        // keep the reclaim out (a plain `write` waits for a moment with no reader at all).
        let guard = self.state.upgradeable_read();
        if !guard.ioasid(ioasid).is_ok_and(|io| io.reclaim.due()) {
            return 0;
        }
        let mut st = guard.upgrade();
        let io = match st.ioasid_mut(ioasid) {
            Ok(io) => io,
            Err(e) => {
                *result = Err(e);
                return 0;
            }
        };
        // The scope borrows the log's ends in place, beside the record and domains it reclaims.
        let scope = match io.reclaim.take() {
            Some(ends) => ReclaimScope::Around(ends),
            None => ReclaimScope::All,
        };
        self.reclaim_tables_into(&mut io.record, &io.domains, &io.pending, scope, result)
    }

    /// The record's part of [`Self::reclaim_tables_into`]: the pages it freed, its error put
    /// into `result` (passed `Ok`). Not inlined: its gather is on the stack only while it
    /// runs, not under the units' reclaims (and their flushes).
    ///
    /// `None` (the error in `result`) if returning the record's pages to the allocator failed.
    #[inline(never)]
    fn reclaim_record(
        &self,
        record: &mut PageTable<Record, &'a A>,
        scope: ReclaimScope<'_>,
        result: &mut Result<(), Error>,
    ) -> Option<usize> {
        let mut gather = Gather::new();
        let record = scope.reclaim(record, &mut gather);
        let freed = gather.freed_pages();
        // SAFETY: the record is a software table: no hardware walks it.
        if let Err(e) = gather.release(self.alloc, unsafe { InvalidationComplete::assume() }) {
            *result = Err(e.into());
            return None;
        }
        if let Err(e) = record {
            keep_first(result, e.into());
        }
        Some(freed)
    }

    /// Reclaims `scope` in the record and in every domain; the caller holds the write lock.
    fn reclaim_tables(
        &self,
        record: &mut PageTable<Record, &'a A>,
        domains: &[Option<UnitDomain>; MAX_UNITS],
        pending: &Pending,
        scope: ReclaimScope<'_>,
    ) -> Result<usize, Error> {
        let mut result = Ok(());
        let freed = self.reclaim_tables_into(record, domains, pending, scope, &mut result);
        result.map(|()| freed)
    }

    /// [`Self::reclaim_tables`] with its first error in `result`, which the caller passes
    /// `Ok`; returns the pages freed.
    fn reclaim_tables_into(
        &self,
        record: &mut PageTable<Record, &'a A>,
        domains: &[Option<UnitDomain>; MAX_UNITS],
        pending: &Pending,
        scope: ReclaimScope<'_>,
        result: &mut Result<(), Error>,
    ) -> usize {
        let Some(mut freed) = self.reclaim_record(record, scope, result) else {
            return 0;
        };
        for (slot, d) in domains.iter().enumerate() {
            let Some(d) = d else { continue };
            let unit: &dyn Iommu = match self.unit(d.unit) {
                Ok(u) => u,
                Err(e) => {
                    keep_first(result, e);
                    continue;
                }
            };
            match unit.reclaim(d.handle, scope) {
                Ok(n) => freed += n,
                Err(error) => reclaim_failed(pending, slot, d.unit, error, result),
            }
        }
        freed
    }
}

/// A domain's reclaim that failed with `error`, for [`IoasidCtx::reclaim_tables_into`]: a unit
/// whose invalidation was not confirmed leaves the domain owing it, with the tables the reclaim
/// unlinked; noted as owed by the IOASID too (an empty gather), so that its next call, or a
/// retried detach, flushes the domain and settles it. The error goes into `result` unless an
/// earlier one is there. A failure's path, not inlined: the error is built here.
#[cold]
#[inline(never)]
fn reclaim_failed(
    pending: &Pending,
    slot: usize,
    unit: UnitId,
    error: crate::iommu::Error,
    result: &mut Result<(), Error>,
) {
    if error.is_unit_fault() {
        pending.park_empty(slot);
        keep_first(result, Error::InvalidationPending { unit, error });
    } else {
        keep_first(result, error.into());
    }
}
