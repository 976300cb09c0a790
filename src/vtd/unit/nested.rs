//! A guest's first stage nested over a host second-stage domain (iommufd's nested HWPT on
//! VT-d, `IOMMU_HWPT_DATA_VTD_S1`), and the guest's invalidations: Intel VT-d specification
//! rev. 4.1, §3.8 (nested translation: first-stage tables and output read through the second
//! stage), §9.6 (PASID-table entry with `PGTT` = 011b: `FSPTPTR` a guest physical address,
//! `FSPM`, `SRE`, `WPE`, `EAFE`; `SSPTPTR`, `AW`, `SSADE`, `PGSNP` of the parent; `DID`),
//! §6.2.1 (IOTLB entries of nested translations are tagged with the PASID entry's `DID` and
//! the PASID), §6.5.2.4 (PASID-based IOTLB invalidation), §6.5.2.5/§6.5.2.6 (device-TLB
//! invalidation) and §6.5.3.3 (changing a present PASID entry: the attach path's tear-down,
//! PASID-cache invalidation, then the new entry).
//!
//! A *user domain* holds the guest's `struct iommu_hwpt_vtd_s1`, checked field by field when
//! it is allocated: only `IOMMU_VTD_S1_SRE` (needs `ECAP.SRS`), `IOMMU_VTD_S1_EAFE` (needs
//! `ECAP.EAFS`) and `IOMMU_VTD_S1_WPE`; an address width of 48 (4-level) or 57 (5-level,
//! needs `CAP.FL5LP`); a 4 KiB aligned table below the parent's input width. The unit walks
//! the guest's tables through the parent; the crate never reads, writes or frees them.
//!
//! Each user domain has a domain-ID of its own, as Linux gives each nested domain one
//! (`domain_attach_iommu` in `intel/nested.c`): nested IOTLB entries are tagged (DID, PASID),
//! not by requester, so two guest stage 1s on one parent sharing the parent's DID would serve
//! each other's RID_PASID translations. User domain `i` takes the domain-ID of slot
//! `DOMAINS + i` (after the table domains'), and its attachments are recorded with that
//! slot, so detach, tear-down and the books treat them as any first-stage attachment.
//!
//! Invalidation: a guest entry (`addr`, `npages`, `IOMMU_VTD_INV_FLAGS_LEAF`) becomes one
//! PASID-based IOTLB invalidation per PASID attached to the user domain (page-selective over
//! the naturally aligned block covering the range, `IH` from the leaf flag; PASID-selective
//! for everything) and one device-TLB invalidation of the same block per ATS attachment; all
//! entries are checked before any is issued, and one wait ends the batch. A change of the
//! parent's second stage cannot be narrowed to guest addresses: the parent's flush adds a
//! domain-selective IOTLB invalidation of each user domain's ID and a whole device-TLB
//! invalidation of each of its ATS attachments (Linux's `CACHE_TAG_NESTING_IOTLB` /
//! `CACHE_TAG_NESTING_DEVTLB`).

use super::invalidate::device_tlb;
use super::{ConfigState, VtdUnit, RID_PASID};
use crate::iommu::{
    self, DomainHandle, Missing, Refusal, UserStage1, VtdS1Invalidate, VTD_INV_FLAGS_LEAF,
    VTD_S1_EAFE, VTD_S1_SRE, VTD_S1_WPE,
};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::IovaRange;
use crate::vtd::cap::CapFlags;
use crate::vtd::context_entry::AddressWidth;
use crate::vtd::domain::DomainTable;
use crate::vtd::ecap::EcapFlags;
use crate::vtd::flush::{self, FlushPlan, PlanLimits};
use crate::vtd::inv_desc::{IotlbScope, PasidIotlbScope};
use crate::vtd::invalidation::{Batch, Request};
use crate::vtd::pasid_entry::{
    FirstStagePagingMode, PasidEntry, PasidEntryFlags, PasidTranslation,
};
use crate::vtd::{DomainId, Error};

/// Most user domains a unit holds at a time.
pub const MAX_USER_DOMAINS: usize = 16;
/// User domain `i` has handle `USER_DOMAIN_BASE + i`: outside the table domains' handles,
/// which is why map, unmap, flush and query refuse it.
pub const USER_DOMAIN_BASE: u16 = 0x4000;

/// The iommufd `addr_width` of 4-level first-stage paging.
const ADDR_WIDTH_4LEVEL: u32 = 48;
/// The iommufd `addr_width` of 5-level first-stage paging.
const ADDR_WIDTH_5LEVEL: u32 = 57;

/// A guest's first stage over a parent second-stage domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct UserDomain {
    /// The parent's domain slot.
    pub parent: usize,
    /// `FSPTPTR`: the guest's table, a guest physical address.
    pub fsptptr: PhysAddr,
    /// `FSPM`.
    pub fspm: FirstStagePagingMode,
    /// `SRE`, `WPE`, `EAFE` as the guest asked.
    pub flags: PasidEntryFlags,
    /// The guest's input width: 48 or 57 bits.
    pub input_bits: u32,
}

/// The slot index of user domain `d`, if `d` is a user domain handle.
pub(crate) fn user_index(d: DomainHandle) -> Option<usize> {
    let i = usize::from(d.0.checked_sub(USER_DOMAIN_BASE)?);
    (i < MAX_USER_DOMAINS).then_some(i)
}

const fn bad(what: &'static str, value: u64) -> iommu::Error {
    iommu::Error::InvalidArgument { what, value }
}

/// Checks one guest invalidation against the guest's input width (`input_bits`) and returns
/// the range it covers (`None`: everything) and whether only leaves changed.
///
/// # Errors
/// The [`Refusal`], as iommufd refuses the entry: unknown flags or reserved bits
/// (`-EOPNOTSUPP`), an unaligned address or "everything" not at 0 (`-EINVAL`); and a range
/// outside both canonical halves of the width.
pub(crate) fn check_request(
    r: &VtdS1Invalidate,
    input_bits: u32,
) -> Result<(Option<IovaRange>, bool), Refusal> {
    if r.flags & !VTD_INV_FLAGS_LEAF != 0 || r.reserved != 0 {
        return Err(Refusal::ReservedBits);
    }
    let leaf = r.flags & VTD_INV_FLAGS_LEAF != 0;
    if r.addr & 0xfff != 0 || r.npages == u64::MAX && r.addr != 0 {
        return Err(Refusal::Misaligned);
    }
    if r.npages == u64::MAX {
        return Ok((None, leaf));
    }
    // In u128, no sum overflows: fewer than 2^64 pages of 4 KiB from below 2^64 end below 2^77.
    let start = u128::from(r.addr);
    let end = start + u128::from(r.npages) * 0x1000;
    if !canonical_range(start, end, input_bits) {
        return Err(Refusal::OutOfWidth);
    }
    // The upper half's last page ends at 2^64, past any u64: ending it at u64::MAX keeps that
    // page in (invalidations cover whole pages: the plan's last page is (end - 1) >> 12).
    let end = u64::try_from(end).unwrap_or(u64::MAX);
    Ok((
        Some(IovaRange {
            start: Iova::new(r.addr),
            end: Iova::new(end),
        }),
        leaf,
    ))
}

/// Whether `start..end` lies in the first-stage input space of `input_bits` (48: 4-level,
/// 57: 5-level paging): below `2^input_bits`, or in the upper canonical half (VT-d 4.1 §3.6:
/// bits 63:`input_bits` copy the top bit), where a guest with SRE maps its supervisor
/// addresses (Linux's `intel_nested_cache_invalidate_user` checks no width at all).
fn canonical_range(start: u128, end: u128, input_bits: u32) -> bool {
    let top = 1u128 << u64::BITS;
    let lower_end = 1u128.checked_shl(input_bits).unwrap_or(top).min(top);
    let upper_start = top - (lower_end >> 1);
    end <= lower_end || (start >= upper_start && end <= top)
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// The attachment slot of user domain `i`: after the table domains' slots, so that its
    /// domain-ID is [`UnitInfo::did_of`](super::UnitInfo::did_of) of it.
    pub(crate) const fn user_slot(i: usize) -> usize {
        DOMAINS + i
    }

    /// [`Iommu::domain_alloc_user`](iommu::Iommu::domain_alloc_user): the guest's
    /// `struct iommu_hwpt_vtd_s1` checked field by field.
    pub(crate) fn alloc_user_domain(
        &self,
        parent: DomainHandle,
        stage1: &UserStage1,
    ) -> Result<DomainHandle, iommu::Error> {
        let &UserStage1::Vtd {
            flags,
            pgtbl_addr,
            addr_width,
        } = stage1
        else {
            return Err(iommu::Error::Unsupported(Missing::Mode {
                what: "an SMMUv3 stage 1 on a VT-d unit",
            }));
        };
        let ecap = self.info.ecap.flags();
        let nests = EcapFlags::NEST | EcapFlags::FLTS | EcapFlags::SLTS;
        if !self.info.scalable() || !ecap.contains(nests) {
            return Err(iommu::Error::Unsupported(Missing::Nesting));
        }
        if flags & !(VTD_S1_SRE | VTD_S1_EAFE | VTD_S1_WPE) != 0 {
            return Err(bad("iommu_hwpt_vtd_s1.flags (beyond SRE/EAFE/WPE)", flags));
        }
        let mut entry_flags = PasidEntryFlags::empty();
        if flags & VTD_S1_SRE != 0 {
            if !ecap.contains(EcapFlags::SRS) {
                return Err(iommu::Error::Unsupported(Missing::SupervisorRequests));
            }
            entry_flags |= PasidEntryFlags::SRE;
        }
        if flags & VTD_S1_EAFE != 0 {
            if !ecap.contains(EcapFlags::EAFS) {
                return Err(iommu::Error::Unsupported(Missing::Mode {
                    what: "extended accessed flag (ECAP.EAFS)",
                }));
            }
            entry_flags |= PasidEntryFlags::EAFE;
        }
        if flags & VTD_S1_WPE != 0 {
            entry_flags |= PasidEntryFlags::WPE;
        }
        let fspm = match addr_width {
            ADDR_WIDTH_4LEVEL => FirstStagePagingMode::Level4,
            ADDR_WIDTH_5LEVEL if self.info.cap.flags().contains(CapFlags::FL5LP) => {
                FirstStagePagingMode::Level5
            }
            ADDR_WIDTH_5LEVEL => {
                return Err(iommu::Error::Unsupported(Missing::AddressWidth {
                    need: ADDR_WIDTH_5LEVEL,
                    have: ADDR_WIDTH_4LEVEL,
                }))
            }
            w => return Err(bad("iommu_hwpt_vtd_s1.addr_width (48 or 57)", w.into())),
        };
        if pgtbl_addr & 0xfff != 0 {
            return Err(bad(
                "iommu_hwpt_vtd_s1.pgtbl_addr (4 KiB aligned)",
                pgtbl_addr,
            ));
        }
        let pslot = self.slot(parent)?;
        let mut cfg = self.config.lock();
        {
            let guard = self.domain_lock(parent)?.read();
            let p = guard.as_ref().ok_or(iommu::Error::InvalidDomain(parent))?;
            if !p.nest_parent || p.is_first_stage() {
                return Err(iommu::Error::Unsupported(Missing::Nesting));
            }
            // The guest's table is read through the parent: a GPA it cannot map is no table.
            if pgtbl_addr >> p.input_bits != 0 {
                return Err(bad(
                    "iommu_hwpt_vtd_s1.pgtbl_addr (beyond the parent's input width)",
                    pgtbl_addr,
                ));
            }
        }
        let i = cfg
            .users
            .iter()
            .enumerate()
            .position(|(i, u)| u.is_none() && self.info.did_of(Self::user_slot(i)).is_some())
            .ok_or(iommu::Error::NoDomainIds)?;
        let handle = DomainHandle(USER_DOMAIN_BASE + i as u16);
        *cfg.users.get_mut(i).ok_or(iommu::Error::NoDomainIds)? = Some(UserDomain {
            parent: pslot,
            fsptptr: PhysAddr::new(pgtbl_addr),
            fspm,
            flags: entry_flags,
            input_bits: addr_width,
        });
        Ok(handle)
    }

    /// [`Iommu::domain_free`](iommu::Iommu::domain_free) of a user domain: refused while a
    /// device or PASID is attached; its domain-ID is invalidated (domain-selective IOTLB)
    /// before the slot, and so the ID, can be taken again.
    pub(crate) fn free_user_domain(&self, d: DomainHandle) -> Result<(), iommu::Error> {
        let i = user_index(d).ok_or(iommu::Error::InvalidDomain(d))?;
        let mut cfg = self.config.lock();
        if cfg.users.get(i).copied().flatten().is_none() {
            return Err(iommu::Error::InvalidDomain(d));
        }
        let slot = Self::user_slot(i);
        if cfg.of_domain(slot).next().is_some() {
            return Err(iommu::Error::Busy);
        }
        let did = self
            .info
            .did_of(slot)
            .ok_or(iommu::Error::InvalidDomain(d))?;
        {
            let mut inv = self.inval.lock();
            let mut b = self.batch(&mut inv);
            b.push(Request::Iotlb(IotlbScope::Domain(did)))?;
            b.finish()?;
        }
        if let Some(u) = cfg.users.get_mut(i) {
            *u = None;
        }
        Ok(())
    }

    /// Whether user domains nest on the table domain in `slot`.
    pub(crate) fn has_user_children(cfg: &ConfigState, slot: usize) -> bool {
        cfg.users.iter().flatten().any(|u| u.parent == slot)
    }

    /// The nested PASID entry of user domain `i` and its domain-ID: the guest's first stage
    /// over the parent's second stage, with the parent's `AW`, `PGSNP` and (while it tracks)
    /// `SSADE`, since those live in the entry that holds `SSPTPTR`.
    pub(crate) fn user_pasid_entry(
        &self,
        cfg: &ConfigState,
        i: usize,
    ) -> Result<(PasidEntry, DomainId), iommu::Error> {
        let handle = DomainHandle(USER_DOMAIN_BASE.saturating_add(i as u16));
        let u = cfg
            .users
            .get(i)
            .copied()
            .flatten()
            .ok_or(iommu::Error::InvalidDomain(handle))?;
        let did = self
            .info
            .did_of(Self::user_slot(i))
            .ok_or(iommu::Error::InvalidDomain(handle))?;
        let guard = self
            .domains
            .get(u.parent)
            .ok_or(iommu::Error::InvalidDomain(handle))?
            .read();
        let p = guard.as_ref().ok_or(iommu::Error::InvalidDomain(handle))?;
        let DomainTable::Second(t) = &p.table else {
            return Err(iommu::Error::Unsupported(Missing::Nesting));
        };
        let mut flags = u.flags;
        if self.info.ecap.flags().contains(EcapFlags::SMPWCS) {
            flags |= PasidEntryFlags::PWSNP;
        }
        if p.snoop {
            flags |= PasidEntryFlags::PGSNP;
        }
        if p.tracking() {
            flags |= PasidEntryFlags::SSADE;
        }
        let aw = AddressWidth::try_from(t.format().aw_field())?;
        let tr = PasidTranslation::Nested {
            fsptptr: u.fsptptr,
            flpm: u.fspm,
            ssptptr: t.root(),
        };
        Ok((PasidEntry::new(tr, did, aw, flags)?, did))
    }

    /// [`Iommu::invalidate_user_vtd`](iommu::Iommu::invalidate_user_vtd).
    pub(crate) fn invalidate_user_vtd_impl(
        &self,
        d: DomainHandle,
        requests: &[VtdS1Invalidate],
    ) -> Result<usize, iommu::Error> {
        let i = user_index(d).ok_or(iommu::Error::InvalidDomain(d))?;
        let cfg = self.config.lock();
        let u = cfg
            .users
            .get(i)
            .copied()
            .flatten()
            .ok_or(iommu::Error::InvalidDomain(d))?;
        for (index, r) in requests.iter().enumerate() {
            check_request(r, u.input_bits).map_err(|why| iommu::Error::Refused {
                index: index as u32,
                request: [r.addr, r.npages],
                why,
            })?;
        }
        #[cfg(test)]
        crate::test_hooks::after_user_check();
        let slot = Self::user_slot(i);
        if requests.is_empty() || cfg.of_domain(slot).next().is_none() {
            // Nothing attached: nothing can be cached under the domain's ID.
            return Ok(requests.len());
        }
        let did = self
            .info
            .did_of(slot)
            .ok_or(iommu::Error::InvalidDomain(d))?;
        let limits = PlanLimits {
            page_selective: true,
            mamv: self.info.cap.mamv(),
        };
        let mut inv = self.inval.lock();
        let mut b = self.batch(&mut inv);
        for r in requests {
            let Ok((range, leaf)) = check_request(r, u.input_bits) else {
                continue;
            };
            let mut plan = FlushPlan::Everything;
            if let Some(range) = range {
                flush::plan_into(&mut plan, &[range], leaf, limits);
            }
            push_user_request(&mut b, &cfg, slot, did, &plan)?;
        }
        b.finish()?;
        Ok(requests.len())
    }

    /// What the parent's flush owes its user domains (see the module docs): for each user
    /// domain of the table domain in `slot` with an attachment, a domain-selective IOTLB
    /// invalidation of its ID and (`device_tlb`, after an unmap) a whole device-TLB
    /// invalidation of each ATS attachment.
    pub(crate) fn push_user_children<Wb: RegisterWindow + ?Sized>(
        &self,
        batch: &mut Batch<'_, Wb>,
        cfg: &ConfigState,
        slot: usize,
        device_tlbs: bool,
    ) -> Result<(), Error> {
        for (i, u) in cfg.users.iter().enumerate() {
            if !u.is_some_and(|u| u.parent == slot) {
                continue;
            }
            let child = Self::user_slot(i);
            if cfg.of_domain(child).next().is_none() {
                continue;
            }
            if let Some(did) = self.info.did_of(child) {
                batch.push(Request::Iotlb(IotlbScope::Domain(did)))?;
            }
            if device_tlbs {
                for a in cfg.ats_of_domain(child) {
                    batch.push(device_tlb(a, Iova::ZERO, 64))?;
                }
            }
        }
        Ok(())
    }
}

/// One checked guest entry's invalidations: PASID-based IOTLB for each PASID attached to the
/// user domain in `slot` (once per PASID: entries are tagged (DID, PASID)), device TLB for
/// each ATS attachment.
fn push_user_request<W: RegisterWindow + ?Sized>(
    b: &mut Batch<'_, W>,
    cfg: &ConfigState,
    slot: usize,
    did: DomainId,
    plan: &FlushPlan,
) -> Result<(), Error> {
    let attached = cfg.of_domain(slot);
    for (n, a) in attached.clone().enumerate() {
        let pasid = a.pasid.unwrap_or(RID_PASID);
        if attached
            .clone()
            .take(n)
            .any(|x| x.pasid.unwrap_or(RID_PASID) == pasid)
        {
            continue;
        }
        match *plan {
            FlushPlan::Nothing => {}
            FlushPlan::Everything => b.push(Request::PasidIotlb {
                did,
                pasid,
                scope: PasidIotlbScope::AllInPasid,
            })?,
            FlushPlan::Pages { ih, .. } => {
                for blk in plan.blocks() {
                    b.push(Request::PasidIotlb {
                        did,
                        pasid,
                        scope: PasidIotlbScope::Page {
                            addr: blk.addr,
                            am: blk.am,
                            ih,
                        },
                    })?;
                }
            }
        }
    }
    for a in cfg.ats_of_domain(slot) {
        match *plan {
            FlushPlan::Nothing => {}
            FlushPlan::Everything => b.push(device_tlb(a, Iova::ZERO, 64))?,
            FlushPlan::Pages { .. } => {
                for blk in plan.blocks() {
                    b.push(device_tlb(a, blk.addr, blk.size_log2()))?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(addr: u64, npages: u64, flags: u32) -> VtdS1Invalidate {
        VtdS1Invalidate {
            addr,
            npages,
            flags,
            reserved: 0,
        }
    }

    #[test]
    fn guest_invalidations_are_checked_as_iommufd_does() {
        let r = |addr: u64, npages: u64| IovaRange {
            start: Iova::new(addr),
            end: Iova::new(addr + npages * 0x1000),
        };
        assert_eq!(
            check_request(&req(0x1234_5000, 2, VTD_INV_FLAGS_LEAF), 48),
            Ok((Some(r(0x1234_5000, 2)), true))
        );
        assert_eq!(check_request(&req(0, u64::MAX, 0), 48), Ok((None, false)));
        assert_eq!(
            check_request(&req(0x1000, u64::MAX, 0), 48),
            Err(Refusal::Misaligned)
        );
        assert_eq!(
            check_request(&req(0x1234_5800, 1, 0), 48),
            Err(Refusal::Misaligned)
        );
        assert_eq!(check_request(&req(0, 1, 2), 48), Err(Refusal::ReservedBits));
        let mut reserved = req(0, 1, 0);
        reserved.reserved = 1;
        assert_eq!(check_request(&reserved, 48), Err(Refusal::ReservedBits));
        // The last page of the 48-bit space is in; one past it is not; 57 bits take it.
        let last = (1u64 << 48) - 0x1000;
        assert!(check_request(&req(last, 1, 0), 48).is_ok());
        assert_eq!(
            check_request(&req(last, 2, 0), 48),
            Err(Refusal::OutOfWidth)
        );
        assert!(check_request(&req(last, 2, 0), 57).is_ok());
        assert_eq!(
            check_request(&req(0x1000, u64::MAX - 1, 0), 57),
            Err(Refusal::OutOfWidth)
        );
    }
}

/// Review (nestrev): a guest with `IOMMU_VTD_S1_SRE` maps supervisor (upper-canonical)
/// addresses in its 4-level first stage (VT-d 4.1 §3.6: first-stage input addresses are
/// canonical, bits 63:48 a copy of bit 47). Its invalidation of such an address is refused as
/// beyond its width; Linux `intel_nested_cache_invalidate_user` checks only alignment and
/// flags and flushes it.
#[cfg(test)]
mod review_tests {
    use super::*;

    #[test]
    fn upper_canonical_first_stage_address_is_invalidated() {
        let r = VtdS1Invalidate {
            addr: 0xffff_8000_0000_0000,
            npages: 1,
            flags: 0,
            reserved: 0,
        };
        assert!(check_request(&r, 48).is_ok(), "{:?}", check_request(&r, 48));
    }

    /// The upper half's last page ends at 2^64: it is invalidated (its end saturates, the
    /// plan still covers the page), at 48 and 57 bits; a range past 2^64 or starting in the
    /// non-canonical hole is not, and no sum overflows.
    #[test]
    fn the_top_page_is_invalidated_and_nothing_overflows() {
        let req = |addr: u64, npages: u64| VtdS1Invalidate {
            addr,
            npages,
            flags: 0,
            reserved: 0,
        };
        let top = 0xffff_ffff_ffff_f000;
        for bits in [48, 57] {
            let (range, _) = check_request(&req(top, 1), bits).unwrap();
            let range = range.unwrap();
            assert_eq!(
                (range.start, range.end),
                (Iova::new(top), Iova::new(u64::MAX))
            );
            let mut plan = FlushPlan::Nothing;
            let limits = PlanLimits {
                page_selective: true,
                mamv: 9,
            };
            flush::plan_into(&mut plan, &[range], false, limits);
            assert_eq!(
                plan.blocks(),
                &[flush::Block {
                    addr: Iova::new(top),
                    am: 0
                }]
            );
            assert_eq!(check_request(&req(top, 2), bits), Err(Refusal::OutOfWidth));
            assert_eq!(
                check_request(&req(top, u64::MAX - 1), bits),
                Err(Refusal::OutOfWidth)
            );
        }
        // 57-bit upper half starts at 0xff00_0000_0000_0000; the 48-bit one does not reach it.
        assert!(check_request(&req(0xff00_0000_0000_0000, 1), 57).is_ok());
        assert!(check_request(&req(0xff00_0000_0000_0000, 1), 48).is_err());
        // The hole between the halves.
        assert_eq!(
            check_request(&req(0x8000_0000_0000_0000, 1), 48),
            Err(Refusal::OutOfWidth)
        );
    }
}
