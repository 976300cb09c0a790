//! Reclaiming a domain's empty tables: Arm IHI 0070 G.b §4.4 (TLBI with Leaf = 0 invalidates
//! the walk caches for the address too), §4.7 (the CMD_SYNC that says it completed).
//!
//! A reclaim whose invalidation fails keeps the tables it unlinked and leaves the domain owing
//! a whole-tag invalidation (`domain::Owed`, as a failed flush does): the next flush, reclaim
//! or `domain_free` of the domain issues it and frees them.
//!
//! The domain's slot is held for writing from the unlink to the completion of the CMD_SYNC: no
//! map can write into a table being unlinked, and no map can install a table in place of one the
//! walk caches may still point at and return before the caches have forgotten it (the device
//! would walk the old, empty table and fault on a mapping already reported done).

use core::sync::atomic::Ordering;

use super::flush::TlbTag;
use super::ops::FlushTarget;
use super::unit::SmmuUnit;
use crate::iommu::{DomainHandle, Error, ReclaimScope};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;
use crate::pgtable::InvalidationComplete;

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// [`crate::iommu::Iommu::reclaim`].
    pub(crate) fn reclaim_domain(
        &self,
        d: DomainHandle,
        scope: ReclaimScope<'_>,
    ) -> Result<usize, Error> {
        // Lock order as in `flush`: configuration, domain slots, command queue. The children
        // of a nest parent are read before its own slot is taken (they are created and freed
        // only under the configuration lock, which is held throughout).
        self.usable()?;
        let config = self.config.lock();
        let children = self.children_of(d);
        let mut slot = self.slot(d)?.write();
        let dom = slot.as_mut().ok_or(Error::InvalidDomain(d))?;
        // What the domain owes (a failed flush or reclaim) is issued with the new tables, as
        // the whole tag, and the tables it kept are freed with them.
        let owed = dom.owed.take();
        let whole_tag = owed.is_some();
        let mut gather = owed.unwrap_or_default();
        let unlinked = dom.reclaim(scope, &mut gather);
        if gather.is_empty() && !whole_tag {
            return unlinked.map(|_| 0);
        }
        if self.has_cmdq() {
            let nest_parent = matches!(
                dom.tag,
                TlbTag::Stage2 {
                    nest_parent: true,
                    ..
                }
            );
            let ats = dom.ats_users.load(Ordering::Acquire) != 0;
            let target = FlushTarget {
                domain: d,
                tag: dom.tag,
                granule_log2: dom.geometry().granule_log2,
                config: (ats || nest_parent).then_some(&*config),
                children,
                whole_tag,
            };
            if let Err(e) = self.invalidate(&target, &gather) {
                // Never freed without a completed invalidation: the domain keeps them, and
                // owes the invalidation (`Owed`).
                dom.owed.put_back(&mut gather);
                return Err(e);
            }
        }
        drop(slot);
        drop(config);
        let pages = gather.freed_pages();
        // SAFETY: the tables were unlinked before the TLBIs of their spans were issued, and the
        // CMD_SYNC after them completed; a unit without a command queue never walked them.
        gather.release(&self.alloc, unsafe { InvalidationComplete::assume() })?;
        unlinked?;
        Ok(pages)
    }
}
