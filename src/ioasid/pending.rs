//! Invalidations a unit has not confirmed yet, kept per hardware domain of an IOASID.
//!
//! When a unit's flush fails (a queue that stalls, a wait that times out, an invalidation the
//! hardware rejects: `Iommu::flush` returns `Timeout` or `Hardware`), the entries the unmap
//! cleared are gone from the domain, but stale IOTLB, paging-structure and device-TLB entries
//! may still lead to the old pages, and the table pages the unmap unlinked may still be walked.
//! The failed [`Gather`] holds exactly what is owed: its ranges and those table pages. It is
//! kept here and flushed again (every range reissued) before the IOASID's domains are used for
//! anything else; its pages return to the unit's allocator only when such a flush completes,
//! or never (dropping a context leaks what it still holds, on purpose).

use crate::sync::atomic::{AtomicU32, Ordering};

use super::ctx::{Ioasid, IoasidCtx, UnitDomain};
use super::{Error, MAX_UNITS};
use crate::mem::PageAllocator;
use crate::pgtable::Gather;

/// The loop of `Pending::settle_with` and `Pending::settle_with_into`, written once: under
/// the lock, every owing slot's gather flushed through its domain's unit, the slot settled
/// once that completed with nothing left, `$failed` run with each error `$e` in slot order.
/// A macro, not an `#[inline(always)]` function: through one (a per-slot helper returning a
/// `Result` or taking a closure, or the whole loop taking a closure) `settle_with`'s frame
/// went from 160 to 216-224 bytes, and ie_ctx_free and ie_ctx_detach_pasid up by as much
/// (`IE_STACK_CHAIN=all cargo test --test linux_module rust_object_fits_a_kernel`).
macro_rules! flush_owed {
    ($pending:expr, $ctx:expr, $domains:expr, |$e:ident| $failed:expr) => {{
        let pending: &Pending = $pending;
        let mut gathers = pending.gathers.lock();
        for (slot, (g, d)) in gathers.iter_mut().zip($domains).enumerate() {
            // The mask, not the gather, says what is owed: an empty gather may be owed too.
            if !pending.owed(slot) {
                continue;
            }
            let flushed = match d {
                Some(d) => match $ctx.unit(d.unit) {
                    Ok(unit) => {
                        unit.flush(d.handle, g)
                            .map_err(|error| Error::InvalidationPending {
                                unit: d.unit,
                                error,
                            })
                    }
                    Err(e) => Err(e),
                },
                None => Ok(()),
            };
            match flushed {
                Ok(()) if g.is_empty() => {
                    pending.mask.fetch_and(!(1 << slot), Ordering::AcqRel);
                }
                Ok(()) => {}
                Err($e) => $failed,
            }
        }
    }};
}

/// The unconfirmed invalidations of one IOASID, one gather per domain slot.
pub(super) struct Pending {
    gathers: crate::sync::Mutex<[Gather; MAX_UNITS]>,
    /// Bit `n` set: slot `n` holds a gather. Lets maps and unmaps skip the lock when nothing
    /// is owed (the common case).
    mask: AtomicU32,
}

impl Pending {
    // Not `const`: loom's atomics have no `const` `new` (`sync.rs`).
    pub(super) fn new() -> Self {
        Self {
            gathers: crate::sync::Mutex::new([const { Gather::new() }; MAX_UNITS]),
            mask: AtomicU32::new(0),
        }
    }

    /// Whether some invalidation is owed.
    pub(super) fn any(&self) -> bool {
        self.mask.load(Ordering::Acquire) != 0
    }

    /// Whether an invalidation is owed in domain slot `slot`.
    pub(super) fn owed(&self, slot: usize) -> bool {
        self.mask.load(Ordering::Acquire) & 1u32.checked_shl(slot as u32).unwrap_or(0) != 0
    }

    /// Keeps what `gather` holds (its flush failed; it is left empty) for domain slot `slot`,
    /// with what is owed there.
    /// An empty gather still marks the slot as owing: the unit may owe the invalidation itself
    /// (VT-d's own undo of a failed map cleared the entries, then its flush failed), and only
    /// a flush of the domain, which reissues what the unit owes even with an empty gather
    /// (`Iommu::flush`), settles it.
    // Not inlined: the gather it takes is on the stack only while it runs, not in the frame
    // of a caller that goes on to flush (the kernel-stack bound of the C ABI's entry points).
    #[inline(never)]
    pub(super) fn park(&self, slot: usize, gather: &mut Gather) {
        let gather = core::mem::take(gather);
        let mut gathers = self.gathers.lock();
        if let Some(owed) = gathers.get_mut(slot) {
            owed.absorb(gather);
            self.mask.fetch_or(1 << slot, Ordering::AcqRel);
        } else {
            // No such slot (cannot happen: slots index `Ioasid::domains`). Dropping a gather
            // leaks its pages (it has no `Drop`), which is safe; freeing them would not be.
            drop(gather);
        }
    }

    /// [`Self::park`] of an empty gather: the slot owes what its unit owes. Not inlined: the
    /// empty gather is not in the caller's frame.
    #[inline(never)]
    pub(super) fn park_empty(&self, slot: usize) {
        self.park(slot, &mut Gather::new());
    }

    /// Flushes what is owed in every slot through its domain's unit, which returns the pages
    /// to the unit's allocator when the invalidation completed. The lock is held throughout,
    /// so that no concurrent failure can park a gather while one is being retried; a bounded
    /// wait on the hardware happens only while something is owed. A slot owing with no domain
    /// (cannot happen: `free_domains` keeps a domain until it is settled) counts as flushed.
    ///
    /// # Errors
    /// The first failure, [`Error::InvalidationPending`] naming its unit (or the unit lookup's
    /// error); what failed stays owed, the slots already flushed are settled.
    fn settle_with<A: PageAllocator>(
        &self,
        ctx: &IoasidCtx<'_, '_, A>,
        domains: &[Option<UnitDomain>; MAX_UNITS],
    ) -> Result<(), Error> {
        if !self.any() {
            return Ok(());
        }
        let mut result = Ok(());
        flush_owed!(self, ctx, domains, |e| super::keep_first(&mut result, e));
        result
    }

    /// [`Self::settle_with`] with its first error put into `out` unless an earlier one is
    /// there; `false` if any slot failed. The same flushes in the same order (`flush_owed!`);
    /// inlined only in `settle_owed_into`, whose callers hold no `Result` over it (the
    /// kernel-stack bound of the C ABI), while `settle_with` keeps its own frame for the
    /// others. Not a wrapper of `settle_with`: its `Result` cost the detaches and the unmap
    /// 32 to 56 bytes of stack.
    #[inline(always)]
    fn settle_with_into<A: PageAllocator>(
        &self,
        ctx: &IoasidCtx<'_, '_, A>,
        domains: &[Option<UnitDomain>; MAX_UNITS],
        out: &mut Result<(), Error>,
    ) -> bool {
        if !self.any() {
            return true;
        }
        let mut settled = true;
        flush_owed!(self, ctx, domains, |e| {
            settled = false;
            super::keep_first(out, e);
        });
        settled
    }

    /// Gives up on everything owed (a context being dropped whose unit never confirmed):
    /// the gathers are dropped unreleased, so their table pages are never freed. Returns how many
    /// pages were leaked that way.
    pub(super) fn leak(&self) -> usize {
        let mut gathers = self.gathers.lock();
        let mut pages = 0;
        for g in gathers.iter_mut() {
            pages += g.freed_pages();
            // Dropped without release: its pages are never returned (`Gather` has no `Drop`).
            drop(core::mem::take(g));
        }
        self.mask.store(0, Ordering::Release);
        pages
    }
}

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Reissues every invalidation the IOASID's units still owe, through the unit that owes
    /// it.
    ///
    /// # Errors
    /// [`Error::InvalidationPending`] naming the first unit that failed again.
    #[inline]
    pub(super) fn settle(&self, io: &Ioasid<'a, A>) -> Result<(), Error> {
        // Every map and unmap asks: answered here, without the call (issue 18, goal 4).
        if !io.pending.any() {
            return Ok(());
        }
        self.settle_owed(io)
    }

    /// [`Self::settle`] with its error put into `result` unless an earlier one is there;
    /// `false` if it failed. No `Result` in the caller's frame.
    #[inline]
    pub(super) fn settle_into(&self, io: &Ioasid<'a, A>, result: &mut Result<(), Error>) -> bool {
        if !io.pending.any() {
            return true;
        }
        self.settle_owed_into(io, result)
    }

    /// [`Self::settle_into`] when something is owed.
    #[cold]
    #[inline(never)]
    fn settle_owed_into(&self, io: &Ioasid<'a, A>, result: &mut Result<(), Error>) -> bool {
        io.pending.settle_with_into(self, &io.domains, result)
    }

    /// [`Self::settle`] when something is owed.
    #[cold]
    #[inline(never)]
    fn settle_owed(&self, io: &Ioasid<'a, A>) -> Result<(), Error> {
        io.pending.settle_with(self, &io.domains)
    }
}
