//! Giving a disabled unit's memory back: every domain's page table, the PASID tables and
//! directories, context tables, root table. Safe only once translation and queued invalidation
//! are off (Intel VT-d specification rev. 4.1, §11.4 Global Status Register: TES and QIES
//! clear), because then hardware walks none of it.

use core::mem::MaybeUninit;
use core::ptr::NonNull;

use super::{ConfigState, UnitInfo, VtdUnit};
use crate::iommu::DomainHandle;
use crate::mem::{PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::InvalidationComplete;
use crate::vtd::context_entry::ScalableContextEntry;
use crate::vtd::domain::with_table;
use crate::vtd::invalidation::Counters;
use crate::vtd::invalidation::Invalidator;
use crate::vtd::pasid_table::release_directory;
use crate::vtd::prq::PageRequestQueue;
use crate::vtd::regs::{self, Gsts};
use crate::vtd::{DomainId, Error};

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// The domain-ID the hardware tags `domain`'s translations with (a nested child's user
    /// domain included: it has one of its own).
    pub fn domain_id(&self, domain: DomainHandle) -> Option<DomainId> {
        if let Some(i) = super::nested::user_index(domain) {
            let cfg = self.config.lock();
            cfg.users.get(i).copied().flatten()?;
            return self.info.did_of(Self::user_slot(i));
        }
        self.with_domain(domain, |d| d.did).ok()
    }

    /// Frees every page the unit holds and gives back its register window and allocator.
    ///
    /// Moves the unit (about 13 KiB) in and, on error, out again: where stack is short, use
    /// [`release_in_place`](Self::release_in_place).
    ///
    /// # Errors
    /// [`Error::UnexpectedState`], with the unit, while translation or queued invalidation is
    /// on: call [`disable`](Self::disable) first.
    // The error hands the unit itself back (no allocator to box it in): it is large by nature.
    #[allow(clippy::result_large_err)]
    pub fn release(self) -> Result<Released<W, A>, (Self, Error)> {
        let mut slot = MaybeUninit::new(self);
        // SAFETY: `slot` holds a live unit that nothing else references; on `Ok` it was
        // consumed and is never read again, on `Err` it is untouched and handed back.
        match unsafe { Self::release_in_place(NonNull::from(&mut slot).cast()) } {
            Ok(released) => Ok(released),
            // SAFETY: as above: the unit is whole.
            Err(e) => Err((unsafe { slot.assume_init() }, e)),
        }
    }

    /// As [`release`](Self::release), without moving the unit: on `Ok` the unit at `this` is
    /// gone (its pages freed, its register window and allocator moved into the result) and
    /// the memory may be reused; on `Err` it is untouched and still live.
    ///
    /// # Errors
    /// As [`release`](Self::release).
    ///
    /// # Safety
    /// `this` points to a live unit that nothing else references for the duration of the
    /// call; after `Ok` it is treated as uninitialised (neither used nor dropped again).
    pub unsafe fn release_in_place(this: NonNull<Self>) -> Result<Released<W, A>, Error> {
        // SAFETY: the caller guarantees a live, unshared unit.
        let unit = unsafe { &mut *this.as_ptr() };
        let gsts = regs::gsts(&unit.regs);
        let queue_on = !matches!(*unit.inval.get_mut(), Invalidator::Off);
        if gsts.intersects(Gsts::TES | Gsts::QIES) || queue_on {
            return Err(Error::UnexpectedState {
                register: "GSTS (translation or queued invalidation still on)",
                value: u64::from(gsts.bits()),
            });
        }
        let info = unit.info;
        let mut leaked = None;
        if let Some(prq) = unit.prq.get_mut().take() {
            PageRequestQueue::unprogram(&unit.regs);
            // SAFETY: the page came from `alloc` (enable_page_requests) and the unit no longer
            // points at it (PQA cleared, translation off).
            unsafe { unit.alloc.free(prq.page(), prq.size_log2()) };
        }
        for lock in unit.domains.iter_mut() {
            // One domain at a time: each leaves its slot empty.
            if let Some(d) = lock.get_mut().take() {
                // Pages a failed flush left owed go with the table.
                let mut gather = d.owed.into_inner();
                let destroyed = with_table!(d.table, t => t.destroy(&mut gather));
                // SAFETY: translation is off, so no walker can reach the table.
                let done = unsafe { InvalidationComplete::assume() };
                if destroyed.and(gather.release(&unit.alloc, done)).is_err() {
                    leaked = Some(Error::UnexpectedState {
                        register: "domain page table (pages unknown to the allocator)",
                        value: u64::from(d.did.get()),
                    });
                }
            }
        }
        // SAFETY: the unit is live and unshared (the caller); the register window, allocator
        // and root table are moved out once, and the fields left behind need no drop
        // (asserted below), so nothing is dropped twice and the memory may be reused.
        let (regs, alloc, root) = unsafe {
            (
                core::ptr::read(&unit.regs),
                core::ptr::read(&unit.alloc),
                core::ptr::read(&unit.config.get_mut().root),
            )
        };
        const {
            assert!(!core::mem::needs_drop::<ConfigState>());
            assert!(!core::mem::needs_drop::<Invalidator>());
            assert!(!core::mem::needs_drop::<Counters>());
        }
        // SAFETY: translation and queued invalidation are off; every table came from `alloc`.
        let tables = unsafe {
            root.release(&alloc, info.scalable(), |ct| {
                free_directories(&alloc, &info, ct)
            })
        };
        Ok(Released {
            regs,
            alloc,
            leaked: tables.err().or(leaked),
        })
    }
}

/// What [`VtdUnit::release`] gives back.
#[derive(Debug)]
pub struct Released<W, A> {
    /// The register window.
    pub regs: W,
    /// The allocator.
    pub alloc: A,
    /// A table pointed at memory the allocator did not know: what it pointed at was leaked.
    pub leaked: Option<Error>,
}

/// Frees the PASID directory (and tables) of every present entry of a scalable context table.
fn free_directories<A: PageAllocator + ?Sized>(
    alloc: &A,
    info: &UnitInfo,
    ct: crate::vtd::context_table::ContextTable<'_>,
) -> Result<(), Error> {
    if !info.scalable() {
        return Ok(());
    }
    for index in 0..128u8 {
        let w0 = ct.entry(index).word(0).unwrap_or(0);
        if w0 & ScalableContextEntry::P == 0 {
            continue;
        }
        let dir = PhysAddr::new(w0 & ScalableContextEntry::PASIDDIRPTR.mask());
        let pdts = ScalableContextEntry::PDTS.get(w0) as u8;
        // SAFETY: translation is off (caller); the directory came from `alloc`.
        unsafe { release_directory(alloc, dir, pdts)? };
    }
    Ok(())
}
