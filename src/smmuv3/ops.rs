//! The [`Iommu`] implementation of [`SmmuUnit`]: domains, map/unmap, flush, attach/detach.
//!
//! Arm IHI 0070 G.b §3.4 (stages: stage 2 tagged by VMID, stage 1 by ASID through a CD),
//! §4.4 (TLB invalidation), §4.7 (CMD_SYNC), §6.3.1/§6.3.4/§6.3.6 (the ID fields that decide
//! what a domain can be).
//!
//! Domain choice for a [`DomainConfig`]:
//! - `Stage::Second`, or `Stage::Any` on a unit with `IDR0.S2P`: stage 2 ([`ArmS2`]
//!   (crate::pgtable::arm_s2::ArmS2), VMID), input and output size `min(OAS, 48)` (52 with
//!   the 64 KiB granule: 4K/16K 52-bit descriptors, `IDR5.DS`, are not written);
//! - `Stage::First`, or `Stage::Any` on a stage-1-only unit: stage 1
//!   ([`ArmS1`](crate::pgtable::arm_s1::ArmS1), ASID), 48-bit input;
//! - granule [`SmmuConfig::granule_log2`](super::SmmuConfig::granule_log2), by default 4 KiB
//!   when `IDR5.GRAN4K` (else 16 KiB, else 64 KiB), with block mappings;
//! - `enforce_snoop` on either stage, but attached only to devices the platform declares
//!   `CANWBS` ([`SmmuConfig::platform`](super::SmmuConfig::platform)); refused with
//!   [`Missing::NotDeclared`] otherwise, at allocation when no device of the unit has it. On
//!   stage 2 of a unit with `IDR3.FWB` it also forces write-back over stage 1 (STE.S2FWB and
//!   the FWB MemAttr encoding);
//! - stage-1 leaves Normal Write-Back Inner Shareable for a device whose DMA is coherent
//!   (`DomainConfig::device`'s declared facts, else the unit's, else `IDR0.COHACC`), Normal
//!   Non-cacheable otherwise; a device of the other kind is refused at attach;
//! - `supervisor` on stage 1 only (`Stage::Any` then means stage 1): its leaves may be
//!   privileged-only (`Prot::PRIV`: `AP[1]` clear, no EL0 access), which a domain built
//!   without it refuses; privileged requests (PCIe: a PASID TLP prefix asking for privileged
//!   mode; `STE.PRIVCFG` is left to use the incoming attribute) reach every stage-1 domain,
//!   unprivileged ones never reach a `PRIV` page;
//! - `dirty_tracking` with `IDR0.HTTU` = 2 (DBM leaves, STE.S2HD/CD.HD);
//! - `nest_parent` on stage 2 of a unit with both stages; stage-1 domains nest on it through
//!   [`SmmuUnit::domain_alloc_nested`]; with `IDR3.FWB` it forces write-back (STE.S2FWB), and
//!   without it a user domain (a guest's stage 1) is only for `CANWBS` devices;
//! - no stage 1 on a unit with `IDR0.STALL_MODEL` = 2 (CD.S would have to be 1, and this driver
//!   does not resume stalled transactions).

use core::sync::atomic::Ordering;

use crate::sync::RwLockWriteGuard;

/// A domain slot, write-locked.
type SlotGuard<'s, A> = RwLockWriteGuard<'s, Option<Domain<A>>>;

use super::attach::Batch;
use super::cmd::Command;
use super::cmdq::CommandQueue;
use super::domain::{Domain, DomainParams};
use super::flush::{atc_inv_for, invalidate_all, tlbi_commands, FlushPolicy, TlbTag};
use super::platform::{DeviceFacts, CANWBS_NOT_DECLARED};
use super::unit::SmmuUnit;
use super::{Asid, StreamId, Vmid};
use crate::iommu::{
    Capabilities, DeviceHints, DeviceId, DomainConfig, DomainHandle, DomainPages, Error, Iommu,
    Missing, Pasid, ReclaimScope, Stage, UserPass, UserStage1, VirtualId,
};
use crate::iopf::{FaultDrain, FaultSequence, PageFault, PageResponse};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::{DirtyRead, Gather, InvalidationComplete, IovaRange, Leaf, Mapping, Prot};

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// The granule of a domain for `cfg`: its own, else the unit's.
    fn granule_for(&self, cfg: &DomainConfig) -> Result<u32, Error> {
        match cfg.granule_log2 {
            None => Ok(self.cfg.granule_log2),
            Some(g) if self.features.has_granule(g) => Ok(g),
            Some(g) => Err(Error::Unsupported(Missing::PageSize { size_log2: g })),
        }
    }

    fn params(&self, granule_log2: u32) -> DomainParams {
        DomainParams {
            granule_log2,
            coherency: self.features.coherency(),
            dirty: self.features.dirty_usable(),
            bbml2: self.features.bbml2,
            fwb: self.features.fwb,
        }
    }

    /// What the platform declared about `device`, or about every device of the unit.
    pub(crate) fn facts_for(&self, device: Option<DeviceId>) -> DeviceFacts {
        device.map_or(self.cfg.platform.unit, |d| {
            self.cfg.platform.facts(StreamId(d.0))
        })
    }

    /// Whether DMA with `facts` is coherent: as declared, else as the walker (`IDR0.COHACC` or
    /// `SmmuConfig::coherent_access`).
    pub(crate) fn dma_coherent(&self, facts: &DeviceFacts) -> bool {
        facts.coherent_dma.unwrap_or(self.features.cohacc)
    }

    /// A free domain slot, write-locked, and its handle: a new domain is built in it. Callers
    /// hold the configuration lock, so no other allocation races for a free slot; the read
    /// check does not wait for maps in flight on other domains. `held`: a slot the caller
    /// holds (a nest parent's), skipped: locking it again would wait behind a waiting writer
    /// that waits for the caller (`sync/rwlock.rs`).
    fn free_slot(
        &self,
        held: Option<DomainHandle>,
    ) -> Result<(DomainHandle, SlotGuard<'_, A>), Error> {
        for (i, slot) in self.domains.iter().take(self.cfg.max_domains).enumerate() {
            if held.is_some_and(|h| usize::from(h.0) == i) || slot.read().is_some() {
                continue;
            }
            let s = slot.write();
            if s.is_none() {
                return Ok((DomainHandle(i as u16), s));
            }
        }
        Err(Error::NoDomainIds)
    }

    fn check_common(&self, cfg: &DomainConfig, ias: u32) -> Result<(), Error> {
        // Not without coherent walks either (`features::DIRTY_WITHOUT_COHERENT_WALK`).
        if cfg.dirty_tracking && !self.features.dirty_usable() {
            return Err(Error::Unsupported(Missing::DirtyTracking));
        }
        if cfg.min_ias > ias {
            return Err(Error::Unsupported(Missing::AddressWidth {
                need: cfg.min_ias,
                have: ias,
            }));
        }
        Ok(())
    }

    /// A stage-1 domain whose output addresses are IPAs of `parent`, a stage-2 domain
    /// allocated with `nest_parent`. Attaching it gives the stream a nested STE (Config =
    /// 0b111) with the parent's stage 2; its TLB entries carry the parent's VMID. The CD table
    /// and stage-1 table pages are walked through the parent: they are reached at IPA = PA, so
    /// the parent must map them that way (a VM usually owns its stage 1 instead).
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] (`Nesting` without both stages, or a parent that is not a nest
    /// parent), [`Error::InvalidDomain`], [`Error::NoDomainIds`], [`Error::NoMemory`].
    pub fn domain_alloc_nested(
        &self,
        cfg: &DomainConfig,
        parent: DomainHandle,
    ) -> Result<DomainHandle, Error> {
        self.usable()?;
        if !(self.features.stage1_usable() && self.features.s2p) {
            return Err(Error::Unsupported(Missing::Nesting));
        }
        self.check_common(cfg, self.features.s1_ias())?;
        let g = self.granule_for(cfg)?;
        let mut config = self.config.lock();
        let pslot = self.slot(parent)?.read();
        let p = pslot.as_ref().ok_or(Error::InvalidDomain(parent))?;
        let TlbTag::Stage2 {
            vmid,
            nest_parent: true,
        } = p.tag
        else {
            return Err(Error::Unsupported(Missing::Nesting));
        };
        // A guest owns the ASIDs under a parent with user domains (`nested.rs`).
        if self.has_user_children(parent) {
            return Err(Error::Busy);
        }
        let (handle, mut slot) = self.free_slot(Some(parent))?;
        let asid = config.asids.alloc().ok_or(Error::NoDomainIds)?;
        let child_cfg = DomainConfig {
            stage: Stage::First,
            nest_parent: false,
            // A device behind the child reaches memory through the parent's stage 2 too.
            enforce_snoop: cfg.enforce_snoop || p.enforce_snoop,
            ..*cfg
        };
        let oas = p.geometry().ias;
        let coherent = self.dma_coherent(&self.facts_for(cfg.device));
        let params = self.params(g);
        if let Err(e) = Domain::build_stage1(
            &mut slot,
            self.alloc.clone(),
            &params,
            &child_cfg,
            coherent,
            oas,
            vmid,
            Asid(asid),
        )
        .and_then(|()| Domain::start_tracking_in(&mut slot))
        {
            config.asids.free(asid);
            return Err(e);
        }
        if let Some(dom) = slot.as_mut() {
            dom.parent = Some(parent);
        }
        p.children.fetch_add(1, Ordering::AcqRel);
        Ok(handle)
    }

    fn alloc_domain(&self, cfg: &DomainConfig) -> Result<DomainHandle, Error> {
        self.usable()?;
        let f = self.features;
        let stage2 = match cfg.stage {
            Stage::Second if !f.s2p => {
                return Err(Error::Unsupported(Missing::Mode { what: "stage 2" }))
            }
            Stage::Second => true,
            Stage::First => false,
            // Only stage 1 has privilege levels (AP[1]) and substreams (a PASID selects a CD).
            Stage::Any => f.s2p && !cfg.supervisor && !cfg.pasid,
        };
        if cfg.supervisor && (stage2 || !f.s1p) {
            return Err(Error::Unsupported(Missing::SupervisorRequests));
        }
        if !stage2 && !f.s1p {
            return Err(Error::Unsupported(Missing::Mode { what: "stage 1" }));
        }
        if !stage2 && f.stall_forced {
            return Err(Error::Unsupported(Missing::Mode {
                what: "stage 1 on a unit that forces stalls (IDR0.STALL_MODEL = 2)",
            }));
        }
        if cfg.nest_parent && !(f.stage1_usable() && f.s2p) {
            return Err(Error::Unsupported(Missing::Nesting));
        }
        if cfg.nest_parent && !stage2 {
            return Err(Error::Unsupported(Missing::Mode {
                what: "a nest parent is a stage-2 domain",
            }));
        }
        if cfg.enforce_snoop && !self.cfg.platform.any_canwbs() {
            return Err(Error::Unsupported(Missing::NotDeclared {
                what: CANWBS_NOT_DECLARED,
            }));
        }
        let g = self.granule_for(cfg)?;
        let ias = if stage2 { f.s2_ias(g) } else { f.s1_ias() };
        self.check_common(cfg, ias)?;
        let mut config = self.config.lock();
        let (handle, mut slot) = self.free_slot(None)?;
        if stage2 {
            let vmid = config.vmids.alloc().ok_or(Error::NoDomainIds)?;
            Domain::build_stage2(
                &mut slot,
                self.alloc.clone(),
                &self.params(g),
                cfg,
                ias,
                f.oas_for(g),
                Vmid(vmid),
            )
            .and_then(|()| Domain::start_tracking_in(&mut slot))
            .inspect_err(|_| config.vmids.free(vmid))?;
        } else {
            let asid = config.asids.alloc().ok_or(Error::NoDomainIds)?;
            Domain::build_stage1(
                &mut slot,
                self.alloc.clone(),
                &self.params(g),
                cfg,
                self.dma_coherent(&self.facts_for(cfg.device)),
                f.oas_for(g),
                Vmid(0),
                Asid(asid),
            )
            .and_then(|()| Domain::start_tracking_in(&mut slot))
            .inspect_err(|_| config.asids.free(asid))?;
        }
        Ok(handle)
    }

    /// [`Iommu::domain_free`]. What holds after each error:
    /// - refused (`Busy`, `InvalidDomain`, the unit unusable): nothing changed;
    /// - the whole-tag TLBI or its CMD_SYNC failed (`Timeout`, `CommandError`, `Hardware`):
    ///   nothing changed either: the domain keeps its slot, table and tag (whose
    ///   invalidation is not known to have completed, so it is not reused) and its parent
    ///   still counts it; a retry issues the TLBI again and completes the free;
    /// - the TLBI completed and the table's tear-down failed (the allocator cannot translate
    ///   a table page or a gathered one: an embedder bug): the domain is gone all the same.
    ///   Its tag is free (its invalidation completed), its parent no longer counts it, every
    ///   page the tear-down reached went back, and those it could not reach are leaked (no
    ///   STE, CD or TLB entry leads to them). A retry is `InvalidDomain`.
    ///
    /// Before, that last case emptied the slot but returned before freeing the tag and
    /// before the parent's count: both were lost for good (the parent `Busy` forever).
    fn free_domain(&self, d: DomainHandle) -> Result<(), Error> {
        self.usable()?;
        let mut config = self.config.lock();
        // Under the configuration lock nothing can attach the domain meanwhile.
        let (tag, parent) = self.with_domain(d, |dom| {
            if dom.busy() {
                return Err(Error::Busy);
            }
            Ok((dom.tag, dom.parent))
        })?;
        if self.has_cmdq() {
            self.with_cmdq(|q, r| q.submit_and_sync(r, &[invalidate_all(tag)]))?;
        }
        let destroyed = self.destroy_domain(d);
        free_tag(&mut config, tag);
        if let Some(p) = parent {
            if let Some(pd) = self.slot(p)?.read().as_ref() {
                pd.children.fetch_sub(1, Ordering::AcqRel);
            }
        }
        destroyed
    }

    /// The table part of [`free_domain`](Self::free_domain), once the domain's whole tag is
    /// invalidated: the domain is destroyed where it lies (not moved out of its slot onto the
    /// stack, about 500 bytes in the frame above the table's walk), its pages and the tables a
    /// failed reclaim left owed go back to the allocator, and its slot is emptied, whatever
    /// the result (a tear-down that failed part-way gives back what it gathered, and leaks
    /// the rest).
    #[inline(never)]
    fn destroy_domain(&self, d: DomainHandle) -> Result<(), Error> {
        let mut slot = self.slot(d)?.write();
        let dom = slot.as_mut().ok_or(Error::InvalidDomain(d))?;
        // SAFETY: the slot is emptied below, whatever the result: the domain is only dropped.
        let (g, destroyed) = unsafe { dom.destroy_in_place() };
        // SAFETY: no STE or CD points at the table (the domain had no users), and the TLBI of
        // its whole tag completed (or the unit never had a command queue, so never walked
        // it): every page gathered, a failed walk's too, is unreachable.
        let released = g.release(&self.alloc, unsafe { InvalidationComplete::assume() });
        *slot = None;
        destroyed.and(released.map_err(Error::from))
    }

    fn with_domain<R>(
        &self,
        d: DomainHandle,
        f: impl FnOnce(&Domain<A>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let slot = self.slot(d)?.read();
        f(slot.as_ref().ok_or(Error::InvalidDomain(d))?)
    }

    /// [`Self::with_domain`] under the slot's write lock: for walks of the whole table that no
    /// unmap may run beside (its flush frees the tables they read).
    fn with_domain_mut<R>(
        &self,
        d: DomainHandle,
        f: impl FnOnce(&mut Domain<A>) -> Result<R, Error>,
    ) -> Result<R, Error> {
        let mut slot = self.slot(d)?.write();
        f(slot.as_mut().ok_or(Error::InvalidDomain(d))?)
    }

    /// [`Iommu::flush`]: the commands of [`super::flush`], one CMD_SYNC (a second one before
    /// CMD_ATC_INV when the domain has ATS users: the ATC must not refill from a stale TLB),
    /// then the gathered pages go back to the allocator. A nest parent's flush always looks at
    /// the streams (the ATS users of its stage-1 children are counted on the children): the
    /// ATCs of those attached through its children are invalidated whole. Any other flush that
    /// found no ATS user looks again once its TLBI completed (`ats_users_after_tlbi`).
    ///
    /// What the domain owes ([`Owed`](super::domain::Owed): a failed flush or reclaim) is
    /// issued instead of the gather's ranges, even with an empty gather, and the tables it
    /// kept are freed with the gather's pages. A flush that fails leaves the domain owing.
    fn flush_impl(&self, d: DomainHandle, gather: &mut Gather) -> Result<(), Error> {
        self.usable()?;
        let (tag, granule_log2, ats, owed) = self.with_domain(d, |dom| {
            if !gather.flushable_by(dom.gather_owner()) {
                return Err(Error::InvalidDomain(d));
            }
            Ok((
                dom.tag,
                dom.geometry().granule_log2,
                dom.ats_users.load(Ordering::Acquire) != 0,
                dom.owed.is_owed(),
            ))
        })?;
        #[cfg(test)]
        crate::test_hooks::after_ats_read();
        // A whole-tag invalidation is owed (an earlier flush failed): the owed pages are taken
        // into the unit's `owed_kept` (locked first, before any other lock of the unit; put
        // back below if this flush fails too; empty whenever it is unlocked). One frame for
        // both cases: the owed case is not a frame of its own above the commands' path.
        let mut kept = owed.then(|| self.owed_kept.lock());
        let whole_tag = match kept.as_deref_mut() {
            Some(kept) => self.with_domain(d, |dom| Ok(dom.owed.take_into(kept)))?,
            None => false,
        };
        if gather.is_empty() && !whole_tag {
            return Ok(());
        }
        let r = self.flush_tag(d, gather, tag, granule_log2, ats, whole_tag);
        let r = match (r, kept.as_deref_mut()) {
            (Ok(()), Some(kept)) => {
                // SAFETY: `kept` holds pages only when `whole_tag`: the whole tag was then
                // invalidated and the CMD_SYNC after it completed (or the unit has no command
                // queue and never walked them).
                kept.release(&self.alloc, unsafe { InvalidationComplete::assume() })
                    .map_err(Error::from)
            }
            (r, _) => r,
        };
        if r.is_err() {
            self.flush_failed(d, kept.as_deref_mut());
        }
        r
    }

    /// What a failed flush leaves (for [`flush_impl`](Self::flush_impl)): the whole tag owed,
    /// with the owed pages this flush took (`kept`) put back. Whatever this flush was to
    /// invalidate is owed (a gather the caller drops no longer says which ranges): the whole
    /// tag, conservatively.
    #[cold]
    #[inline(never)]
    fn flush_failed(&self, d: DomainHandle, kept: Option<&mut Gather>) {
        match kept {
            None => {
                let _ = self.with_domain(d, |dom| {
                    dom.owed.owe_whole_tag();
                    Ok(())
                });
            }
            Some(kept) => {
                let _ = self.with_domain(d, |dom| {
                    dom.owed.put_back(kept);
                    Ok(())
                });
                // A domain freed meanwhile: its pages are leaked, never left for the next
                // owed flush (of another domain) to take.
                leak(kept);
            }
        }
    }

    /// The commands of [`flush_impl`](Self::flush_impl); `whole_tag`: the whole tag and every
    /// ATC range instead of the gather's ranges.
    fn flush_tag(
        &self,
        d: DomainHandle,
        gather: &mut Gather,
        tag: TlbTag,
        granule_log2: u32,
        ats: bool,
        whole_tag: bool,
    ) -> Result<(), Error> {
        let nest_parent = matches!(
            tag,
            TlbTag::Stage2 {
                nest_parent: true,
                ..
            }
        );
        if self.has_cmdq() {
            // Lock order: configuration (for the ATS streams), then domain slots (for the
            // children of a nest parent), then the command queue.
            let config = (ats || nest_parent).then(|| self.config.lock());
            let children = if config.is_some() && nest_parent {
                self.children_of(d)
            } else {
                0
            };
            let target = FlushTarget {
                domain: d,
                tag,
                granule_log2,
                config: config.as_deref(),
                children,
                whole_tag,
            };
            self.invalidate(&target, gather)?;
            if config.is_none() && self.ats_users_after_tlbi(d)? {
                self.atcs_attached_meanwhile(d, gather, whole_tag)?;
            }
        }
        // SAFETY: every range of the gather was invalidated in the domain's tag (or the whole
        // tag) and the CMD_SYNC after those commands completed, and in the ATC of every ATS
        // stream attached before that CMD_SYNC completed; a unit without a command queue was
        // never enabled and never walked the table.
        gather.release(&self.alloc, unsafe { InvalidationComplete::assume() })?;
        Ok(())
    }

    /// For a flush that found no ATS user of `d` before its TLBI, once that TLBI's CMD_SYNC
    /// completed: whether `d` has ATS users now. Until that CMD_SYNC completed, a device
    /// attached meanwhile could fill its ATC from the stale TLB entries of the pages the flush
    /// frees (an ATS translation request is answered from the TLB). Linux's order: TLBI,
    /// CMD_SYNC, barrier, then the count. An attach raises the count before the CFGI doorbell
    /// (`DSB ST` on aarch64) that precedes every STE or CD word letting the device ask, and
    /// the completion was read from the unit: a read barrier and a full barrier order this
    /// load after it.
    #[inline]
    fn ats_users_after_tlbi(&self, d: DomainHandle) -> Result<bool, Error> {
        crate::mmio::dma_read_barrier();
        core::sync::atomic::fence(Ordering::SeqCst);
        self.with_domain(d, |dom| Ok(dom.ats_users.load(Ordering::Acquire) != 0))
    }

    /// The ATC invalidations of a flush whose domain `d` gained ATS users while its TLBI ran
    /// ([`Self::ats_users_after_tlbi`]): `gather`'s span (everything if `whole_tag`) in the ATC
    /// of each, under the configuration lock, with their own CMD_SYNC.
    #[cold]
    #[inline(never)]
    fn atcs_attached_meanwhile(
        &self,
        d: DomainHandle,
        gather: &Gather,
        whole_tag: bool,
    ) -> Result<(), Error> {
        let Some(span) = atc_span(gather, whole_tag) else {
            return Ok(());
        };
        let config = self.config.lock();
        self.with_cmdq(|q, r| {
            invalidate_atcs(
                Batch::new(q, r, &self.cmd_staging),
                self.is_enabled(),
                &config,
                d,
                (0, self.user_children_of(d)),
                span,
            )
        })?;
        Ok(())
    }

    /// The TLB (and ATC) invalidations of `gather` (or of the whole tag) for `target`, each
    /// batch ended by a CMD_SYNC that completed before this returns `Ok`. The caller has
    /// checked that the unit has a command queue, and holds no domain slot lock that
    /// `target.children` was taken under.
    pub(crate) fn invalidate(
        &self,
        target: &FlushTarget<'_, A>,
        gather: &Gather,
    ) -> Result<(), Error> {
        let FlushTarget {
            domain: d,
            tag,
            granule_log2,
            config,
            children,
            whole_tag,
        } = *target;
        let span = atc_span(gather, whole_tag);
        self.with_cmdq(|q, r| {
            self.invalidate_tlb(q, r, tag, granule_log2, whole_tag, gather)?;
            let (Some(config), Some(span)) = (config, span) else {
                return Ok(());
            };
            invalidate_atcs(
                Batch::new(q, r, &self.cmd_staging),
                self.is_enabled(),
                config,
                d,
                (children, self.user_children_of(d)),
                span,
            )
        })?;
        Ok(())
    }
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// The TLB part of [`SmmuUnit::invalidate`], ended by a CMD_SYNC. Not inlined: the
    /// planning's locals are on the stack only while it runs, not under the ATC invalidations
    /// that follow.
    #[inline(never)]
    fn invalidate_tlb(
        &self,
        q: &mut CommandQueue<A>,
        r: &W,
        tag: TlbTag,
        granule_log2: u32,
        whole_tag: bool,
        gather: &Gather,
    ) -> Result<(), super::SmmuError> {
        let policy = FlushPolicy {
            ril: self.features.ril,
            granule_log2,
            threshold: self.cfg.flush_threshold,
        };
        let mut b = Batch::new(q, r, &self.cmd_staging);
        if whole_tag {
            b.push(invalidate_all(tag))?;
        } else {
            // One command at a time from the planner (its frame is gone when the batch
            // submits), not a callback under it.
            for c in tlbi_commands(tag, gather, &policy)? {
                b.push(c?)?;
            }
        }
        b.sync()
    }
}

/// The IOVA range a flush's ATC invalidations cover: everything when the whole tag is owed,
/// else the gather's span (`None`: nothing gathered).
fn atc_span(gather: &Gather, whole_tag: bool) -> Option<IovaRange> {
    if whole_tag {
        Some(IovaRange {
            start: Iova::ZERO,
            end: Iova::new(u64::MAX),
        })
    } else {
        gather.span()
    }
}

/// Empties `gather` without freeing its pages (`Gather` has no `Drop`: they are leaked).
#[cold]
#[inline(never)]
fn leak(gather: &mut Gather) {
    drop(core::mem::take(gather));
}

/// What [`SmmuUnit::invalidate`] invalidates: a domain's tag, and the ATCs of the streams
/// attached to it or still retiring it (when `config` is given), or attached to its stage-1
/// `children` (a bitmap of handles).
pub(crate) struct FlushTarget<'c, A: PageAllocator> {
    pub(crate) domain: DomainHandle,
    pub(crate) tag: TlbTag,
    pub(crate) granule_log2: u32,
    pub(crate) config: Option<&'c super::unit::ConfigState<A>>,
    pub(crate) children: u64,
    /// The whole tag and every ATC range, whatever the gather records (what a domain owes).
    pub(crate) whole_tag: bool,
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// The user domains nested on `parent`, as a bitmap of their indices.
    pub(crate) fn user_children_of(&self, parent: DomainHandle) -> u64 {
        let users = self.user_domains.read();
        let mut mask = 0u64;
        for (i, u) in users.iter().enumerate() {
            if u.is_some_and(|u| u.parent == parent) {
                mask |= 1 << i;
            }
        }
        mask
    }

    /// The stage-1 domains nested on `parent`, as a bitmap of handles (`MAX_DOMAINS` ≤ 64).
    /// The parent's own slot is not read: callers may hold it (a domain is never its own
    /// child), and locking it again would wait behind a waiting writer (`sync/rwlock.rs`).
    pub(crate) fn children_of(&self, parent: DomainHandle) -> u64 {
        let mut mask = 0u64;
        for (i, slot) in self.domains.iter().enumerate().take(self.cfg.max_domains) {
            if i != usize::from(parent.0)
                && slot
                    .read()
                    .as_ref()
                    .is_some_and(|x| x.parent == Some(parent))
            {
                mask |= 1u64.checked_shl(i as u32).unwrap_or(0);
            }
        }
        mask
    }
}

/// The ATC invalidations that follow a TLB invalidation of domain `d`: `span` in the ATC of
/// every ATS stream attached to `d`, everything in those attached to one of its stage-1
/// `children` (a bitmap of handles) or of its user domains (a bitmap of user-domain
/// indices), and everything (of its SubstreamID) in those still retiring `d` or one of them
/// (an attach or detach that failed part-way); one CMD_SYNC if any command was issued.
/// Refused before the first command unless `translating` (read under the configuration lock,
/// which `enable` and `disable` hold): while SMMUEN = 0 the unit would ignore them.
fn invalidate_atcs<W: RegisterWindow, A: PageAllocator>(
    mut b: Batch<'_, W, A>,
    translating: bool,
    config: &super::unit::ConfigState<A>,
    d: DomainHandle,
    (children, user_children): (u64, u64),
    span: IovaRange,
) -> Result<(), super::SmmuError> {
    let mut pushed = false;
    let commands = AtcCommands {
        config,
        d,
        children,
        user_children,
        span,
        stream: 0,
        attachment: 0,
    };
    // One command at a time from the iterator (its frame is gone when the batch submits).
    for c in commands {
        let c = c?;
        if !translating {
            return Err(super::SmmuError::AtcInvalidationIgnored {
                sid: (c.words[0] >> 32) as u32,
            });
        }
        b.push(c)?;
        pushed = true;
    }
    if pushed {
        b.sync()
    } else {
        Ok(())
    }
}

/// The commands of [`invalidate_atcs`], one at a time: for each ATS stream (in slot order)
/// and each of its attachments, `CMD_ATC_INV` of `span` where `d` is attached, of everything
/// where one of its stage-1 `children` or user domains is; then, for the domain the stream is
/// retiring (an attach or detach that failed part-way), of everything if it is `d` or one of
/// those children.
struct AtcCommands<'c, A: PageAllocator> {
    config: &'c super::unit::ConfigState<A>,
    d: DomainHandle,
    children: u64,
    user_children: u64,
    span: IovaRange,
    /// The stream slot looked at, and the next of its attachments.
    stream: usize,
    attachment: usize,
}

impl<A: PageAllocator> Iterator for AtcCommands<'_, A> {
    type Item = Result<Command, super::SmmuError>;

    /// Not inlined: its frame is gone before the caller pushes the command.
    #[inline(never)]
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let slot = self.config.streams.get(self.stream)?;
            #[cfg(test)]
            if self.attachment == 0 {
                self.config
                    .flush_stream_reads
                    .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            }
            // The attachments, then the domain an unfinished attach or detach took off the
            // stream (`retiring`): until the stream is settled, its ATC may still hold that
            // domain's translations, and the device may use them (the STE keeps EATS).
            let at = slot.as_ref().filter(|s| s.ats).and_then(|s| {
                s.attachments()
                    .map(|(ssid, x)| (ssid, x, false))
                    .chain(s.retiring.map(|r| (r.ssid, r.domain, true)))
                    .nth(self.attachment)
                    .map(|a| (s.sid, a))
            });
            let Some((sid, (ssid, x, retiring))) = at else {
                self.stream += 1;
                self.attachment = 0;
                continue;
            };
            self.attachment += 1;
            let user_child =
                self.user_children & super::nested::user_index(x).map_or(0, |i| 1u64 << i) != 0;
            if x == self.d && !retiring {
                return Some(atc_inv_for(sid, ssid, self.span));
            }
            if x == self.d
                || user_child
                || self.children & 1u64.checked_shl(x.0.into()).unwrap_or(0) != 0
            {
                // A retiring `d`: the whole ATC of its SubstreamID, as the retry's settle
                // sends (`forget`). A child: the ATC holds stage-1 input addresses translated
                // through this stage 2: an IPA range does not say which, so all of them.
                return Some(Command::atc_inv(sid, ssid, Iova::ZERO, 52, false));
            }
        }
    }
}

fn free_tag<A: PageAllocator>(config: &mut super::unit::ConfigState<A>, tag: TlbTag) {
    match tag {
        TlbTag::Stage2 { vmid, .. } => config.vmids.free(vmid.0),
        TlbTag::Stage1 { asid, .. } => config.asids.free(asid.0),
    }
}

impl<W, A> Iommu for SmmuUnit<W, A>
where
    W: RegisterWindow + Sync + Send,
    A: PageAllocator + Clone + Send + Sync,
{
    fn capabilities(&self) -> Capabilities {
        self.features.capabilities(
            self.cfg.ssid_bits,
            (self.cfg.granule_log2, self.cfg.granule_source),
            &self.cfg.platform.unit,
        )
    }

    fn device_capabilities(&self, device: DeviceId) -> Capabilities {
        let facts = self.cfg.platform.facts(StreamId(device.0));
        let granule = (self.cfg.granule_log2, self.cfg.granule_source);
        self.features
            .capabilities(self.cfg.ssid_bits, granule, &facts)
    }

    fn check_device(&self, device: DeviceId, cfg: &DomainConfig) -> Result<(), Missing> {
        if cfg.enforce_snoop && !self.cfg.platform.facts(StreamId(device.0)).canwbs {
            return Err(Missing::NotDeclared {
                what: CANWBS_NOT_DECLARED,
            });
        }
        Ok(())
    }

    /// None: MSI doorbells are declared by the embedder through the IOASID layer.
    fn reserved_regions(&self) -> &[IovaRange] {
        &[]
    }

    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, Error> {
        self.alloc_domain(cfg)
    }

    fn domain_geometry(&self, domain: DomainHandle) -> Result<(u32, u64), Error> {
        self.with_domain(domain, |d| Ok((d.geometry().ias, d.geometry().page_sizes)))
    }

    fn domain_free(&self, domain: DomainHandle) -> Result<(), Error> {
        if super::nested::user_index(domain).is_some() {
            return self.free_user_domain(domain);
        }
        self.free_domain(domain)
    }

    fn set_max_page_log2(&self, domain: DomainHandle, max: Option<u32>) -> Result<(), Error> {
        // The write lock waits for maps in flight: each map sees one policy throughout.
        let mut guard = self.slot(domain)?.write();
        let d = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        d.set_max_leaf_log2(max);
        Ok(())
    }

    fn map(
        &self,
        domain: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        self.usable()?;
        // No command: the unit caches no invalid entry, so a new mapping needs no invalidation.
        self.with_domain(domain, |d| d.map(iova, pa, len, prot))
    }

    fn unmap(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error> {
        self.usable()?;
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            d.unmap(iova, len, gather)
        })
    }

    fn flush(&self, domain: DomainHandle, gather: &mut Gather) -> Result<(), Error> {
        self.flush_impl(domain, gather)
    }

    fn reclaim(&self, domain: DomainHandle, scope: ReclaimScope<'_>) -> Result<usize, Error> {
        self.reclaim_domain(domain, scope)
    }

    fn table_pages(&self, domain: DomainHandle) -> Result<DomainPages, Error> {
        // The write lock: an unmap and its flush (read lock) would free tables the walk reads.
        self.with_domain_mut(domain, Domain::table_pages)
    }

    fn query(&self, domain: DomainHandle, iova: Iova) -> Option<Mapping> {
        self.with_domain(domain, |d| Ok(d.query(iova)))
            .ok()
            .flatten()
    }

    fn for_each_mapping(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), Error> {
        self.with_domain(domain, |d| d.for_each_mapping(iova, len, f))
    }

    fn read_dirty(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        how: DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        self.usable()?;
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            d.read_dirty(iova, len, how, sink, gather)
        })
    }

    fn set_dirty_tracking(&self, domain: DomainHandle, on: bool) -> Result<(), Error> {
        self.usable()?;
        let mut cleaned = Gather::new();
        // The write lock: the walk writes into tables a concurrent unmap could free.
        let r = self.with_domain_mut(domain, |d| d.set_dirty_tracking(on, &mut cleaned));
        // The leaves cleaned were writable-dirty, and may be cached so: a write through such
        // a TLB entry needs no hardware update and would go unrecorded. HD stays set (see
        // `Domain::set_dirty_tracking`), so nothing else changes in the STE or CD. A walk that
        // failed partway has cleaned a prefix: flushed too (owed if that fails), the walk's
        // error reported.
        let flushed = self.flush_impl(domain, &mut cleaned);
        r?;
        flushed
    }

    fn attach(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
    ) -> Result<(), Error> {
        self.attach_impl(device, pasid, domain)
    }

    /// ATS declared at bind: `STE.EATS` for the stream from its first attach on, and
    /// CMD_ATC_INV behind every flush of its domains (`SmmuUnit::ats_for_attach`); refused
    /// without `IDR0.ATS`. Not declared: a stream's ATS left from an earlier bind is turned off
    /// first (`SmmuUnit::no_ats_for_attach`).
    fn attach_device(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
        hints: &DeviceHints,
    ) -> Result<(), Error> {
        hints.check_ats(device)?;
        let enabled = self.hints_for_attach(device, hints)?;
        let r = self.attach_impl(device, pasid, domain);
        if enabled && matches!(&r, Err(e) if !e.is_unit_fault()) {
            // Refused before anything was written: the stream is idle again.
            self.undo_ats(device);
        }
        r
    }

    fn detach(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<(), Error> {
        self.detach_impl(device, pasid)
    }

    fn domain_alloc_user(
        &self,
        parent: DomainHandle,
        stage1: &UserStage1,
    ) -> Result<DomainHandle, Error> {
        self.alloc_user_domain(parent, stage1)
    }

    fn invalidate_user(
        &self,
        domain: DomainHandle,
        requests: &[[u64; 2]],
        ids: &[VirtualId],
        pass: UserPass,
    ) -> Result<usize, Error> {
        self.invalidate_user_impl(domain, requests, ids, pass)
    }

    fn drain_page_faults(&self, out: &mut [PageFault]) -> Result<FaultDrain, Error> {
        self.drain_page_faults_impl(out)
    }

    fn page_response(&self, response: &PageResponse) -> Result<(), Error> {
        self.page_response_impl(response)
    }

    fn page_response_owed(&self, response: &PageResponse) -> bool {
        self.page_response_owed_impl(response)
    }

    fn page_fault_fence(&self) -> Result<Option<FaultSequence>, Error> {
        self.page_fault_fence_impl()
    }

    fn page_response_abandon(&self, response: &PageResponse) {
        self.page_response_abandon_impl(response)
    }
}
