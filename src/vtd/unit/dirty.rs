//! Turning second-stage dirty tracking on and off: Intel VT-d specification rev. 4.1, §3.7.2
//! (accessed and dirty flags of second-stage entries, set by the walk when the scalable-mode
//! PASID entry's `SSADE` is set, `ECAP.SSADS`/`SLADS`), §9.6 (`SSADE`, word 0 bit 9) and
//! §6.5.3 (what to invalidate after a PASID-table entry changed).
//!
//! Order, for each attachment of the domain (and, for a nest parent, of its nested children,
//! whose nested PASID entries hold the parent's `SSPTPTR` and so its `SSADE`): the table first (turning on cleans every leaf:
//! `D` clear, so that only writes after the call are reported), then `SSADE` changed in the
//! present PASID entry in one 64-bit store, then one batch: a PASID-selective PASID-cache
//! invalidation per attachment, the domain-selective IOTLB invalidation (IOTLB entries filled
//! while `SSADE` was clear set no flag on a write, and entries of cleaned leaves must be
//! re-walked), a device-TLB invalidation per ATS attachment, and one wait. Linux
//! (`intel_pasid_setup_dirty_tracking`) issues the same three; the domain-selective IOTLB
//! invalidation covers every range the cleaning gathered.

use super::invalidate::{device_tlb, Purpose};
use super::VtdUnit;
use crate::iommu::{self, DomainHandle, Missing};
use crate::mem::{Iova, PageAllocator};
use crate::mmio::RegisterWindow;
use crate::pgtable::{Gather, InvalidationComplete};
use crate::vtd::domain::DomainTable;
use crate::vtd::inv_desc::{IotlbScope, PasidCacheScope};
use crate::vtd::invalidation::Request;
use crate::vtd::pasid_entry::PasidEntry;
use crate::vtd::unit::RID_PASID;

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// [`iommu::Iommu::set_dirty_tracking`] on this unit.
    pub(crate) fn set_dirty_tracking_impl(
        &self,
        domain: DomainHandle,
        on: bool,
    ) -> Result<(), iommu::Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        // The write lock: the walk writes into tables a concurrent unmap could free.
        let mut guard = self.domain_lock(domain)?.write();
        let dom = guard.as_mut().ok_or(iommu::Error::InvalidDomain(domain))?;
        let DomainTable::Second(table) = &mut dom.table else {
            return Err(iommu::Error::Unsupported(Missing::DirtyTracking));
        };
        if !dom.dirty {
            return Err(iommu::Error::Unsupported(Missing::DirtyTracking));
        }
        let mut cleaned = Gather::new();
        if let Err(e) = table.set_dirty_tracking(on, &mut cleaned) {
            return Err(self.tracking_failed(&cfg, slot, dom, &mut cleaned, e.into()));
        }
        self.publish_tracking(&cfg, slot, dom, on, &mut cleaned)
    }

    /// A table walk that failed partway (`EntryUnstable`) has cleaned a prefix of the leaves,
    /// which an IOTLB entry may still hold dirty (taking writes without setting `D`): their
    /// ranges are invalidated as after an unmap, or owed by the domain if that fails
    /// (`flush_locked` keeps them); `SSADE` is left as it was. Returns the walk's error. A
    /// failure's path, not inlined.
    #[cold]
    #[inline(never)]
    fn tracking_failed(
        &self,
        cfg: &super::ConfigState,
        slot: usize,
        dom: &crate::vtd::domain::Domain<A>,
        cleaned: &mut Gather,
        error: iommu::Error,
    ) -> iommu::Error {
        // No page in it (cleaning unlinks no table): only ranges, which a failed flush keeps.
        let _ = self.flush_locked(cfg, slot, dom, cleaned, Purpose::Unmap);
        error
    }

    /// The part of [`Self::set_dirty_tracking_impl`] after the table's walk: `SSADE` in the
    /// present PASID entries, then their invalidations and those of the cleaned leaves (owed
    /// by the domain if they fail). Not inlined: its batch and iterators are not in the frame
    /// above the walk (`clear_dirty_level`, once per table level).
    #[inline(never)]
    fn publish_tracking(
        &self,
        cfg: &super::ConfigState,
        slot: usize,
        dom: &crate::vtd::domain::Domain<A>,
        on: bool,
        cleaned: &mut Gather,
    ) -> Result<(), iommu::Error> {
        let ssade = if on { PasidEntry::SSADE } else { 0 };
        let (co, alloc) = (self.info.coherency, &self.alloc);
        // The domain's own entries, then those of its nested children: SSADE lives in the
        // entry that holds SSPTPTR, a child's nested entry for a device behind the child.
        let children = || {
            cfg.users
                .iter()
                .enumerate()
                .filter(move |(_, u)| u.is_some_and(|u| u.parent == slot))
                .map(|(i, _)| Self::user_slot(i))
        };
        let slots = || core::iter::once(slot).chain(children());
        for s in slots() {
            for a in cfg.of_domain(s) {
                if let Some(entry) = self.existing_pasid_entry(&cfg.root, a.sid, a.pasid)? {
                    entry.update_present(PasidEntry::SSADE, ssade, co, alloc)?;
                }
            }
        }
        let issued = {
            let mut inv = self.inval.lock();
            let mut b = self.batch(&mut inv);
            let mut push = || -> Result<(), crate::vtd::Error> {
                for s in slots() {
                    let Some(did) = self.info.did_of(s) else {
                        continue;
                    };
                    if s != slot && cfg.of_domain(s).next().is_none() {
                        continue;
                    }
                    for a in cfg.of_domain(s) {
                        let p = a.pasid.unwrap_or(RID_PASID);
                        b.push(Request::PasidCache(PasidCacheScope::Pasid(did, p)))?;
                    }
                    b.push(Request::Iotlb(IotlbScope::Domain(did)))?;
                    for a in cfg.of_domain(s).filter(|a| a.ats) {
                        b.push(device_tlb(a, Iova::ZERO, 64))?;
                    }
                }
                Ok(())
            };
            push().and_then(|()| b.finish())
        };
        if let Err(e) = issued {
            // The next flush of the domain reissues the cleaned ranges' invalidation.
            dom.owed.lock().absorb(core::mem::take(cleaned));
            return Err(e.into());
        }
        cleaned.clear_ranges();
        // SAFETY: cleaning dirty state unlinks no table, so the gather holds no page; the
        // domain-selective invalidation above completed anyway.
        let done = unsafe { InvalidationComplete::assume() };
        cleaned.release(&self.alloc, done)?;
        Ok(())
    }
}
