//! Reclaiming a domain's empty tables: Intel VT-d specification rev. 4.1, §6.5.2.3-§6.5.2.4
//! (page-selective IOTLB invalidation with IH = 0 also invalidates the paging-structure caches
//! for the range), §6.5.2.8 (the wait descriptor that says it completed).
//!
//! The domain is held exclusively from the unlink to the completion of the invalidation: no map
//! can write into a table being unlinked, and no map can install a table in place of one the
//! paging-structure caches may still point at and return before the caches have forgotten it
//! (the device would walk the old, empty table and fault on a mapping already reported done).

use super::invalidate::Purpose;
use super::VtdUnit;
use crate::iommu::{self, DomainHandle, ReclaimScope};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;
use crate::pgtable::Gather;
use crate::vtd::domain::with_table;

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// [`iommu::Iommu::reclaim`].
    pub(crate) fn reclaim_domain(
        &self,
        domain: DomainHandle,
        scope: ReclaimScope<'_>,
    ) -> Result<usize, iommu::Error> {
        let slot = self.slot(domain)?;
        // Lock order as everywhere in the unit: configuration, domain, queue.
        let cfg = self.config.lock();
        let mut guard = self.domain_lock(domain)?.write();
        let dom = guard.as_mut().ok_or(iommu::Error::InvalidDomain(domain))?;
        // The unit's, not the stack's: it is under the whole invalidation chain. Empty when
        // unlocked (a completed flush releases it, a failed one leaves it to the domain).
        let mut gather = self.reclaim_gather.lock();
        let gather = &mut *gather;
        let unlinked = with_table!(&mut dom.table, t => scope.reclaim(t, gather));
        // What an earlier failed flush still owes (this reclaim's pages included) is issued
        // again and freed by `flush_locked` too.
        let pages = gather.freed_pages() + dom.owed.get_mut().freed_pages();
        if let Err(e) = self.flush_locked(&cfg, slot, dom, gather, Purpose::Unmap) {
            // Never freed without a completed invalidation: the domain keeps the pages with
            // the ranges `flush_locked` recorded as owed, for its next flush or its free.
            keep_owed(dom.owed.get_mut(), gather);
            return Err(e);
        }
        unlinked?;
        Ok(pages)
    }
}

/// Keeps what a failed reclaim's flush left in `gather` as owed by the domain. A failure's
/// path, not inlined: the gather it moves is not a second copy in the reclaim's frame.
#[cold]
#[inline(never)]
fn keep_owed(owed: &mut Gather, gather: &mut Gather) {
    owed.absorb(core::mem::take(gather));
}
