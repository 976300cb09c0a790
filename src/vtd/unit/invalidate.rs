//! Turning a gather into invalidations for one domain: Intel VT-d specification rev. 4.1,
//! §6.5.2.3-§6.5.2.6 and the Caching Mode rules of §6. The planning itself is [`crate::vtd::flush`].
//!
//! Second-stage domains are invalidated by domain-ID (IOTLB descriptor or `IOTLB_REG`); a
//! first-stage domain's entries are tagged with (domain-ID, PASID), so each PASID the domain is
//! attached through gets PASID-based invalidations. Every ATS-enabled attachment then gets the
//! same blocks as device-TLB invalidations. One wait ends the batch, and only after it completed
//! the gathered table pages go back to the allocator.

use super::{Attachment, ConfigState, VtdUnit, RID_PASID};
use crate::iommu::{self, DomainHandle};
use crate::mem::{Iova, PageAllocator};
use crate::mmio::RegisterWindow;
use crate::pgtable::{Gather, InvalidationComplete};
use crate::vtd::cap::CapFlags;
use crate::vtd::domain::Domain;
use crate::vtd::flush::{self, FlushPlan, PlanLimits};
use crate::vtd::inv_desc::{IotlbScope, PasidIotlbScope};
use crate::vtd::invalidation::{Batch, Request};
use crate::vtd::{DomainId, Error, Pasid};

/// Why a gather is flushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// After unmap (or dirty-bit clearing): IOTLB, paging-structure caches and device TLBs.
    Unmap,
    /// After map under caching mode (`CAP.CM`): not-present entries may be cached in the IOTLB
    /// and paging-structure caches; device TLBs never cache not-present results.
    Map,
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// Invalidates what `gather` recorded in `domain`, and what an earlier flush of the domain
    /// failed to invalidate, waits once, then releases the pages of both.
    ///
    /// On error nothing is released: `gather` keeps its ranges and pages (a retry with it
    /// completes the flush), and the domain records the ranges as owed, so that the next flush
    /// of the domain issues them again even if the caller retries with another (or an empty)
    /// gather. Linux restarts the whole batch after ITE for the same reason: a time-out aborts
    /// the descriptors queued after the one that timed out.
    pub(crate) fn flush_gather(
        &self,
        domain: DomainHandle,
        gather: &mut Gather,
        purpose: Purpose,
    ) -> Result<(), iommu::Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        let guard = self.domain_lock(domain)?.read();
        let dom = guard.as_ref().ok_or(iommu::Error::InvalidDomain(domain))?;
        if !gather.flushable_by(dom.gather_owner()) {
            return Err(iommu::Error::InvalidDomain(domain));
        }
        self.flush_locked(&cfg, slot, dom, gather, purpose)
    }

    /// [`Self::flush_gather`] for a caller that holds the configuration lock (`cfg`) and the
    /// domain's lock (`dom`, in slot `slot`), in that order.
    pub(crate) fn flush_locked(
        &self,
        cfg: &ConfigState,
        slot: usize,
        dom: &Domain<A>,
        gather: &mut Gather,
        purpose: Purpose,
    ) -> Result<(), iommu::Error> {
        let mut owed = dom.owed.lock();
        if gather.is_empty() && owed.is_empty() {
            return Ok(());
        }
        let first = dom.is_first_stage();
        let limits = PlanLimits {
            page_selective: first || self.info.cap.flags().contains(CapFlags::PSI),
            mamv: self.info.cap.mamv(),
        };
        // What is owed is invalidated as after an unmap, whatever this flush is for.
        let purpose = if owed.is_empty() {
            purpose
        } else {
            Purpose::Unmap
        };
        let attached = || cfg.of_domain(slot);
        let issued = {
            let mut inv = self.inval.lock();
            // Never contended: only taken here, under `inval`.
            let mut plan = self.flush_plan.lock();
            plan_into(&mut plan, gather, &owed, limits);
            let plan = &*plan;
            let mut batch = self.batch(&mut inv);
            let pushed = push_iotlb(&mut batch, dom.did, first, plan, attached()).and_then(|()| {
                // A nest parent's change reaches its user domains' nested entries too.
                match plan {
                    FlushPlan::Nothing => Ok(()),
                    _ if !dom.nest_parent => Ok(()),
                    _ => self.push_user_children(&mut batch, cfg, slot, purpose == Purpose::Unmap),
                }
            });
            match pushed {
                Ok(()) if purpose == Purpose::Unmap => {
                    push_device_tlb(&mut batch, plan, cfg.ats_of_domain(slot)).and_then(|()| {
                        #[cfg(test)]
                        crate::test_hooks::after_ats_read();
                        batch.finish()
                    })
                }
                Ok(()) => batch.finish(),
                Err(e) => Err(e),
            }
        };
        if let Err(e) = issued {
            owed.add_ranges_of(gather);
            return Err(e.into());
        }
        // SAFETY: the batch above invalidated every gathered and owed range in the IOTLB and
        // paging-structure caches (and device TLBs) of the only unit walking this domain's
        // table, and its wait descriptor completed (or translation is off and nothing walks).
        // A first-stage domain with no attachment gets no invalidation here: each detach
        // cleared its PASID entry, then invalidated everything tagged with its (DID, PASID)
        // and waited, so no cache can still lead to a table page it held.
        let done = unsafe { InvalidationComplete::assume() };
        owed.release(&self.alloc, done)?;
        drop(owed);
        // SAFETY: as above, for the caller's gather.
        let done = unsafe { InvalidationComplete::assume() };
        gather.release(&self.alloc, done)?;
        Ok(())
    }

    /// Keeps `gather` (ranges and pages) on `domain` as owed: the next flush of the domain
    /// invalidates its ranges and only then frees its pages. If the domain is gone, everything
    /// stays in `gather` (leaked if dropped).
    /// A failure's path, not inlined: the gather it moves is not in the caller's frame.
    #[cold]
    #[inline(never)]
    pub(crate) fn owe(&self, domain: DomainHandle, gather: &mut Gather) {
        let _ = self.with_domain(domain, |d| d.owed.lock().absorb(core::mem::take(gather)));
    }
}

/// Plans the invalidation of what `gather` and `owed` record together into `out` (the unit's
/// plan storage). Not inlined: the merged gather (112 bytes) is on the stack only while it
/// runs, not under the invalidations that follow.
#[inline(never)]
fn plan_into(out: &mut FlushPlan, gather: &Gather, owed: &Gather, limits: PlanLimits) {
    let mut all = Gather::new();
    all.add_ranges_of(gather);
    all.add_ranges_of(owed);
    flush::plan_into(out, all.ranges(), all.leaf_only(), limits);
    all.clear_ranges();
}

/// The IOTLB (and paging-structure cache) invalidations of `plan`.
fn push_iotlb<'a, W: RegisterWindow + ?Sized>(
    batch: &mut Batch<'_, W>,
    did: DomainId,
    first_stage: bool,
    plan: &FlushPlan,
    attached: impl Iterator<Item = &'a Attachment> + Clone,
) -> Result<(), Error> {
    if !first_stage {
        return match *plan {
            FlushPlan::Nothing => Ok(()),
            FlushPlan::Everything => batch.push(Request::Iotlb(IotlbScope::Domain(did))),
            FlushPlan::Pages { ih, .. } => plan.blocks().iter().try_for_each(|b| {
                batch.push(Request::Iotlb(IotlbScope::Page {
                    did,
                    addr: b.addr,
                    am: b.am,
                    ih,
                }))
            }),
        };
    }
    let all = attached.clone();
    for (i, a) in attached.enumerate() {
        let pasid = a.pasid.unwrap_or(RID_PASID);
        // Entries are tagged (DID, PASID): two devices on one PASID share them.
        if all
            .clone()
            .take(i)
            .any(|b| b.pasid.unwrap_or(RID_PASID) == pasid)
        {
            continue;
        }
        push_pasid_iotlb(batch, did, pasid, plan)?;
    }
    Ok(())
}

fn push_pasid_iotlb<W: RegisterWindow + ?Sized>(
    batch: &mut Batch<'_, W>,
    did: DomainId,
    pasid: Pasid,
    plan: &FlushPlan,
) -> Result<(), Error> {
    match *plan {
        FlushPlan::Nothing => Ok(()),
        FlushPlan::Everything => batch.push(Request::PasidIotlb {
            did,
            pasid,
            scope: PasidIotlbScope::AllInPasid,
        }),
        FlushPlan::Pages { ih, .. } => plan.blocks().iter().try_for_each(|b| {
            batch.push(Request::PasidIotlb {
                did,
                pasid,
                scope: PasidIotlbScope::Page {
                    addr: b.addr,
                    am: b.am,
                    ih,
                },
            })
        }),
    }
}

/// The device-TLB invalidations of `plan` for every attachment of `attached` (the domain's
/// ATS-enabled ones).
fn push_device_tlb<'a, W: RegisterWindow + ?Sized>(
    batch: &mut Batch<'_, W>,
    plan: &FlushPlan,
    attached: impl Iterator<Item = &'a Attachment>,
) -> Result<(), Error> {
    for a in attached {
        match *plan {
            FlushPlan::Nothing => {}
            FlushPlan::Everything => batch.push(device_tlb(a, Iova::ZERO, 64))?,
            FlushPlan::Pages { .. } => {
                for b in plan.blocks() {
                    batch.push(device_tlb(a, b.addr, b.size_log2()))?;
                }
            }
        }
    }
    Ok(())
}

/// A device-TLB invalidation of `2^size_log2` bytes at `addr` for attachment `a`.
pub(crate) fn device_tlb(a: &Attachment, addr: Iova, size_log2: u32) -> Request {
    match a.pasid {
        None => Request::DeviceTlb {
            sid: a.sid,
            pfsid: a.pfsid,
            addr,
            size_log2,
        },
        Some(pasid) => Request::PasidDeviceTlb {
            sid: a.sid,
            pfsid: a.pfsid,
            pasid,
            global: false,
            addr,
            size_log2,
        },
    }
}

/// Invalidates everything the device of attachment `a` may cache, whatever it was attached
/// through: a Device-TLB invalidation of the whole range (§6.5.2.5: requests without PASID),
/// then, on a unit with PASIDs (`pasid_unit`) and a device that may use them, a PASID-based one
/// of the whole range with `G` (§6.5.2.6: every PASID). `G` names the attachment's PASID (or
/// `RID_PASID`) too: a device whose ATS capability lacks Global Invalidate Supported ignores
/// `G` (PCIe ATS) and still drops that PASID's entries. A PASID attachment on a device said
/// to have no PASIDs keeps its own PASID-based invalidation, without `G`.
pub(crate) fn push_whole_device_tlb<W: RegisterWindow + ?Sized>(
    batch: &mut Batch<'_, W>,
    a: &Attachment,
    pasid_unit: bool,
) -> Result<(), Error> {
    batch.push(Request::DeviceTlb {
        sid: a.sid,
        pfsid: a.pfsid,
        addr: Iova::ZERO,
        size_log2: 64,
    })?;
    let global = pasid_unit && a.pasids;
    if !global && a.pasid.is_none() {
        return Ok(());
    }
    batch.push(Request::PasidDeviceTlb {
        sid: a.sid,
        pfsid: a.pfsid,
        pasid: a.pasid.unwrap_or(RID_PASID),
        global,
        addr: Iova::ZERO,
        size_log2: 64,
    })
}
