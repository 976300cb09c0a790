//! Pointing devices and PASIDs at domains: Intel VT-d specification rev. 4.1, §9.3 and §9.4
//! (context entries), §9.6 (PASID-table entries), §6.5.3 (invalidation considerations: what to
//! invalidate when an entry is made present or torn down) and the Caching Mode rules of §6.
//!
//! Legacy mode writes the device's 128-bit context entry. Scalable mode gives each device a
//! context entry (made present once, pointing at its PASID directory) and writes the 512-bit
//! PASID entry of `RID_PASID` (requests without PASID) or of the PASID asked for.
//!
//! Every entry is written with [`LiveEntry`]: body first, the word holding `P` last. A present
//! entry is never rewritten in place: replacing the domain tears the old entry down (`P`
//! cleared in one store, so DMA is blocked rather than translated through a half-written
//! entry), invalidates what may still be cached of it -- context cache (device-selective) or
//! PASID cache (PASID-selective), then the IOTLB entries of the old domain (domain-selective for
//! second stage, PASID-based for first stage), then the device TLB -- waits, and only then
//! publishes the new entry. Making an entry present needs no invalidation, except under
//! caching mode (`CAP.CM`), where not-present entries may be cached under DID 0; without it,
//! `CAP.RWBF` asks for a write-buffer flush. A new ATS attachment (no ATS attachment of that
//! device and PASID recorded and settled) then invalidates the device's whole device TLB
//! (§6.5.2.5, §6.5.2.6) and waits: a previous owner may have left ATS enabled and the ATC full.

use super::invalidate::{device_tlb, push_whole_device_tlb};
use super::{Attachment, Mode, OwedDeviceTlb, VtdUnit, RID_PASID};
use crate::iommu::{self, DeviceId, DomainHandle, Missing};
use crate::mem::{Iova, PageAllocator};
use crate::mmio::RegisterWindow;
use crate::vtd::cap::{CapFlags, Sagaw};
use crate::vtd::context_entry::{
    AddressWidth, ContextEntry, ScalableContextEntry, ScalableContextFlags, TranslationType,
};
use crate::vtd::domain::{Domain, DomainTable};
use crate::vtd::ecap::EcapFlags;
use crate::vtd::inv_desc::{ContextCacheScope, IotlbScope, PasidCacheScope, PasidIotlbScope};
use crate::vtd::invalidation::{Batch, Invalidator, Request};
use crate::vtd::live_entry::LiveEntry;
use crate::vtd::pasid_entry::{PasidEntry, PasidEntryFlags, PasidTranslation, Pgtt};
use crate::vtd::pasid_table::{alloc_directory, directory_size_log2, PasidDirectory};
use crate::vtd::root_table::{resolve, RootSlot, RootTable};
use crate::vtd::{DomainId, Error, Pasid, SourceId};

/// How to attach.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// The device has ATS enabled: its context entry allows the device TLB (legacy `TT = 01b`,
    /// scalable `DTE`, set when the device's context entry is first made present), and every
    /// flush and tear-down of its domain also invalidates its device TLB. Needs `ECAP.DT`.
    ///
    /// Scalable mode keeps `DTE` as the device's first attachment set it: a later attachment
    /// of a device whose `DTE` is set gets device-TLB invalidations even without `ats` (the
    /// device may cache its translations), and `ats` on a device whose `DTE` is clear leaves
    /// its translation requests blocked until its context entry is rebuilt.
    pub ats: bool,
    /// Fail with [`iommu::Error::Busy`] instead of replacing when the device (or PASID) is
    /// already attached to another domain.
    pub exclusive: bool,
    /// The requester ID of the device's physical function, when the device is an SR-IOV
    /// virtual function (the embedder knows it from PCI enumeration: the PF's SR-IOV
    /// capability). On a unit with `ECAP.DIT` (device-TLB invalidation throttling) every
    /// device-TLB invalidation names the PF in `PFSID` (§6.5.2.5, §6.5.2.6), so that the unit
    /// throttles and times out invalidations per physical function; `None` names the device
    /// itself (a PF, or a device without SR-IOV). Without `ECAP.DIT`, `PFSID` is reserved and
    /// written 0 whatever this says.
    pub physical_function: Option<DeviceId>,
    /// The device has PCIe PRI enabled: on a unit with `ECAP.PRS`, its scalable-mode context
    /// entry gets `PRE` (Page Request Enable, rev. 4.1 §9.4), set like `DTE` when the entry is
    /// first made present, so that the unit reports its page requests to the page request
    /// queue. Ignored in legacy mode (no page requests) and without `ECAP.PRS`; otherwise
    /// the attach is refused ([`iommu::Error::Unsupported`]) until
    /// [`enable_page_requests`](VtdUnit::enable_page_requests) gave the unit its queue.
    pub pri: bool,
    /// The device is known not to use PASIDs (no PCIe PASID capability, or it is disabled:
    /// [`iommu::DeviceHints::pasid_bits`] of `Some(0)`). A device's first ATS attachment
    /// (and `enable`'s make-up of its device TLB) invalidates its whole device TLB: without
    /// this, on a unit with PASIDs, that includes a PASID-based invalidation with `G` (every
    /// PASID, §6.5.2.6), since a previous owner may have filled the ATC through any PASID;
    /// with it, only requests without PASID (§6.5.2.5), so that a device without PASID
    /// support is never sent an Invalidate Request carrying a PASID. Ignored for a PASID
    /// attachment.
    pub no_pasid: bool,
    /// Firmware forbids ATS for the device ([`iommu::AtsPermission::Forbidden`]). Scalable
    /// mode: an attach whose context entry already allows the device TLB (`DTE`, kept from an
    /// earlier attachment with `ats`, for the unit's life) is refused with
    /// [`iommu::Error::AtsForbidden`], nothing changed.
    pub ats_forbidden: bool,
}

/// What writing an attachment's entry did.
#[derive(Clone, Copy, Debug)]
struct Published {
    /// Whether the device's TLB must be invalidated for this attachment.
    ats: bool,
    /// A new entry was made present (not already there, identical).
    changed: bool,
    /// Scalable mode: the device's context entry was made present just now.
    new_context: bool,
}

/// What a device or PASID pointed at before, for the invalidations of its tear-down.
#[derive(Clone, Copy, Debug)]
struct Old {
    did: DomainId,
    /// First-stage only: everything cached for it is tagged (DID, PASID). Not for a nested
    /// entry, whose second-stage caching is tagged with the DID alone.
    first_stage: bool,
    ats: bool,
    pfsid: SourceId,
}

/// The PCI requester ID of `device`.
pub(super) fn source_id(device: DeviceId) -> Result<SourceId, iommu::Error> {
    u16::try_from(device.0)
        .map(SourceId::new)
        .map_err(|_| iommu::Error::InvalidDevice(device))
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// Points `device` (or its `pasid`) at `domain`, as [`iommu::Iommu::attach`] does, with
    /// options.
    ///
    /// # Errors
    /// [`iommu::Error::InvalidDevice`], [`iommu::Error::InvalidPasid`],
    /// [`iommu::Error::InvalidDomain`], [`iommu::Error::Unsupported`] (a PASID in legacy mode,
    /// ATS without `ECAP.DT`, PRI before [`enable_page_requests`](Self::enable_page_requests)
    /// on a scalable-mode unit with `ECAP.PRS`), [`iommu::Error::Busy`] (`exclusive` and
    /// attached elsewhere), [`iommu::Error::NoMemory`] (tables, or all
    /// [`super::MAX_ATTACHMENTS`] in use), hardware errors. An error of the whole device-TLB invalidation of a new ATS attachment
    /// leaves the entry present and the attachment recorded, unsettled: a retry issues it
    /// again.
    pub fn attach_with(
        &self,
        device: DeviceId,
        pasid: Option<iommu::Pasid>,
        domain: DomainHandle,
        opts: AttachOptions,
    ) -> Result<(), iommu::Error> {
        let sid = source_id(device)?;
        let pasid = self.check_pasid(pasid)?;
        let pfsid = self.pfsid(sid, opts)?;
        let pasids = !opts.no_pasid || pasid.is_some();
        if opts.ats
            && !self
                .info
                .ecap
                .flags()
                .contains(EcapFlags::DT | EcapFlags::QI)
        {
            return Err(iommu::Error::Unsupported(Missing::Mode {
                what: "device-TLB invalidation (ECAP.DT and ECAP.QI)",
            }));
        }
        self.check_page_requests(opts)?;
        let user = super::nested::user_index(domain);
        let slot = match user {
            Some(i) => Self::user_slot(i),
            None => self.slot(domain)?,
        };
        let mut cfg = self.config.lock();
        let index = match cfg.find(sid, pasid) {
            Some(i) => i,
            None => cfg.free_index().ok_or(iommu::Error::NoMemory)?,
        };
        // Firmware forbids ATS: refused before anything changes if this attach asks for it,
        // or if the device's context entry kept `DTE` from an earlier attachment with ATS.
        if opts.ats_forbidden
            && (opts.ats
                || self.info.mode == Mode::Scalable
                    && self.context_allows_device_tlb(&cfg.root, sid)?)
        {
            return Err(iommu::Error::AtsForbidden(device));
        }
        let recorded = cfg.get(index);
        let old = recorded.map(|a| self.old_of(&a));
        // Scalable mode: the device's context entry was made present by an attach whose
        // invalidations completed once one of its attachments is settled. Until then (a first
        // attach, or one that made the entry present and then failed, e.g. out of memory for
        // the PASID table) a caching-mode unit may still hold its not-present entry.
        let context_confirmed = cfg
            .recorded()
            .iter()
            .flatten()
            .any(|a| a.sid == sid && a.settled);
        // What a scalable-mode entry points at: (entry, domain-ID, first stage).
        let target = match (self.info.mode, user) {
            (Mode::Legacy, Some(_)) => return Err(iommu::Error::Unsupported(Missing::Nesting)),
            (Mode::Legacy, None) => None,
            (Mode::Scalable, Some(i)) => {
                let (entry, did) = self.user_pasid_entry(&cfg, i)?;
                Some((entry, did, true))
            }
            (Mode::Scalable, None) => {
                let guard = self.domain_lock(domain)?.read();
                let dom = guard.as_ref().ok_or(iommu::Error::InvalidDomain(domain))?;
                Some((self.pasid_entry_for(dom)?, dom.did, dom.is_first_stage()))
            }
        };
        let published = match target {
            None => {
                let guard = self.domain_lock(domain)?.read();
                let dom = guard.as_ref().ok_or(iommu::Error::InvalidDomain(domain))?;
                self.attach_legacy(&cfg.root, sid, dom, old, opts)
            }
            Some((new, did, _)) => {
                self.attach_scalable(&cfg.root, sid, pasid, (&new, did), old, opts)
            }
        };
        let published = match published {
            Ok(p) => p,
            Err(e) => {
                // A hardware error means the old entry may be torn down with its invalidation
                // unconfirmed: the attachment stays recorded (so its domain cannot be freed)
                // until a retry or a detach completes it. Other errors come before any write.
                if e.is_hardware() {
                    cfg.set_settled(index, false);
                }
                return Err(e.into());
            }
        };
        let unchanged = recorded.is_some_and(|a| a.settled && a.slot == slot && !published.changed);
        cfg.set(
            index,
            Some(Attachment {
                sid,
                pasid,
                slot,
                ats: published.ats,
                pfsid,
                pasids,
                settled: unchanged,
            }),
        );
        if unchanged {
            return Ok(());
        }
        // Recorded before the entry's publication is confirmed: if the confirmation fails,
        // the entry is present and points at the domain, and the books say so.
        let (did, first_stage) = match target {
            Some((_, did, first)) => (did, first),
            None => self.with_domain(domain, |d| (d.did, d.is_first_stage()))?,
        };
        let new_context =
            published.new_context || !context_confirmed || recorded.is_some_and(|a| !a.settled);
        self.after_present(|b| match self.info.mode {
            Mode::Legacy => {
                b.push(Request::ContextCache(ContextCacheScope::Device {
                    did: DomainId::new(0),
                    sid,
                    fm: 0,
                }))?;
                b.push(Request::Iotlb(IotlbScope::Domain(did)))
            }
            Mode::Scalable => {
                let p = pasid.unwrap_or(RID_PASID);
                if new_context {
                    b.push(Request::ContextCache(ContextCacheScope::Device {
                        did: DomainId::new(0),
                        sid,
                        fm: 0,
                    }))?;
                }
                b.push(Request::PasidCache(PasidCacheScope::Pasid(did, p)))?;
                b.push(iotlb_of(did, p, first_stage))
            }
        })?;
        // The device's ATC may hold translations nothing here ever gave (a previous owner's,
        // with ATS left enabled): a new ATS attachment invalidates its whole device TLB once
        // the entry is published, so that whatever it caches from now on came through it.
        let first_ats = !recorded.is_some_and(|a| a.ats && a.settled);
        if published.ats && first_ats {
            let a = Attachment {
                sid,
                pasid,
                slot,
                ats: true,
                pfsid,
                pasids,
                settled: true,
            };
            let mut inv = self.inval.lock();
            let mut b = self.batch(&mut inv);
            push_whole_device_tlb(&mut b, &a, self.info.pasid_bits > 0)?;
            b.finish()?;
        }
        cfg.set_settled(index, true);
        Ok(())
    }

    /// Blocks `device` (or its `pasid`) again, as [`iommu::Iommu::detach`] does.
    ///
    /// If the invalidation that follows clearing the entry fails, the entry stays cleared and
    /// the attachment recorded (unsettled): a retry of the detach completes it. While the
    /// unit is off, an ATS attachment's device TLB is owed to the next `enable`; with
    /// [`super::MAX_DEVTLB_OWED`] owed already, [`iommu::Error::NoMemory`] and nothing changed.
    /// The invalidation lock is held from that check to the tear-down's wait, so that a
    /// concurrent `disable` cannot turn the queue off in between and drop what is owed.
    pub(super) fn detach_impl(
        &self,
        device: DeviceId,
        pasid: Option<iommu::Pasid>,
    ) -> Result<(), iommu::Error> {
        let sid = source_id(device)?;
        let pasid = self.check_pasid(pasid)?;
        let mut cfg = self.config.lock();
        let index = cfg
            .find(sid, pasid)
            .ok_or(iommu::Error::NotAttached(device))?;
        let Some(att) = cfg.get(index) else {
            return Err(iommu::Error::NotAttached(device));
        };
        let old = self.old_of(&att);
        // Held from this check to the tear-down's wait: a `disable` in between would turn the
        // invalidator off after the check said on, and the tear-down's device-TLB invalidation
        // would be dropped with nothing owed (the device's ATC then outlives the pages).
        let mut inv = self.inval.lock();
        // Translation off: the tear-down's device-TLB invalidation is dropped, so `enable`
        // owes it (before anything is written: if the unit cannot keep it, nothing changes).
        if att.ats && matches!(*inv, Invalidator::Off) {
            cfg.owe_device_tlb(OwedDeviceTlb {
                sid,
                pasid,
                pfsid: att.pfsid,
                pasids: att.pasids,
            })?;
        }
        #[cfg(test)]
        crate::test_hooks::after_detach_check();
        let entry = match self.info.mode {
            Mode::Legacy => cfg
                .root
                .context_table(
                    sid.bus(),
                    RootSlot::Legacy,
                    &self.alloc,
                    self.info.coherency,
                    self.info.haw,
                    false,
                )?
                .map(|t| t.entry(sid.devfn())),
            Mode::Scalable => self.existing_pasid_entry(&cfg.root, sid, pasid)?,
        };
        let torn_down = self.tear_down(&mut inv, entry, sid, pasid, old);
        drop(inv);
        match torn_down {
            Ok(()) => cfg.set(index, None),
            Err(_) => {
                cfg.set_settled(index, false);
            }
        }
        Ok(torn_down?)
    }

    fn check_pasid(&self, pasid: Option<iommu::Pasid>) -> Result<Option<Pasid>, iommu::Error> {
        let Some(p) = pasid else {
            return Ok(None);
        };
        let bits = self.info.pasid_bits;
        if bits == 0 {
            return Err(iommu::Error::Unsupported(Missing::Pasid { bits }));
        }
        // PASID 0 is RID_PASID: requests without PASID use it.
        if p.get() == RID_PASID.get() || p.get() >> bits != 0 {
            return Err(iommu::Error::InvalidPasid(p));
        }
        Pasid::new(p.get())
            .map(Some)
            .map_err(|_| iommu::Error::InvalidPasid(p))
    }

    /// The tear-down facts of an existing attachment. A user domain's (slot past the table
    /// domains') entries are nested: their walks cache the parent's second-stage entries
    /// tagged with the user domain's DID alone, which only an IOTLB invalidation of the DID
    /// drops (§6.5.2.4, Table 21; `iotlb_of`). Its tear-down must drop them: the parent's
    /// flushes reach only user domains with an attachment (`push_user_children`).
    fn old_of(&self, a: &Attachment) -> Old {
        let first_stage = a.slot < DOMAINS
            && self
                .domains
                .get(a.slot)
                .and_then(|l| l.read().as_ref().map(Domain::is_first_stage))
                .unwrap_or(false);
        Old {
            did: self.info.did_of(a.slot).unwrap_or_default(),
            first_stage,
            ats: a.ats,
            pfsid: a.pfsid,
        }
    }

    /// The `PFSID` of `sid`'s device-TLB invalidations: with `ECAP.DIT` its physical
    /// function's source-id (itself unless `opts` names a PF), else 0 (the field is reserved).
    ///
    /// # Errors
    /// [`iommu::Error::InvalidDevice`] for a physical function that is no requester ID.
    fn pfsid(&self, sid: SourceId, opts: AttachOptions) -> Result<SourceId, iommu::Error> {
        let pf = opts.physical_function.map(source_id).transpose()?;
        if !self.info.ecap.flags().contains(EcapFlags::DIT) {
            return Ok(SourceId::new(0));
        }
        Ok(pf.unwrap_or(sid))
    }

    fn attach_legacy(
        &self,
        root: &RootTable,
        sid: SourceId,
        dom: &Domain<A>,
        old: Option<Old>,
        opts: AttachOptions,
    ) -> Result<Published, Error> {
        let (co, alloc) = (self.info.coherency, &self.alloc);
        let DomainTable::Second(table) = &dom.table else {
            return Err(Error::Unsupported {
                what: "first-stage domain in legacy mode",
                value: 0,
            });
        };
        let aw = AddressWidth::try_from(table.format().aw_field())?;
        let tt = if opts.ats {
            TranslationType::DeviceTlb
        } else {
            TranslationType::UntranslatedOnly
        };
        let new = ContextEntry::new(tt, table.root(), aw, dom.did, false)?;
        let entry = root
            .context_table(sid.bus(), RootSlot::Legacy, alloc, co, self.info.haw, true)?
            .ok_or(Error::NoMemory)?
            .entry(sid.devfn());
        let current = ContextEntry {
            lo: entry.word(0).unwrap_or(0),
            hi: entry.word(1).unwrap_or(0),
        };
        let same = Published {
            ats: opts.ats,
            changed: false,
            new_context: false,
        };
        if current.present() {
            if current == new {
                return Ok(same);
            }
            if opts.exclusive && current.did() != dom.did {
                return Err(Error::EntryPresent { word0: current.lo });
            }
        }
        let old = old.or_else(|| {
            current.present().then(|| Old {
                did: current.did(),
                first_stage: false,
                ats: current.translation_type() == Ok(TranslationType::DeviceTlb),
                // Checked by `attach_with`.
                pfsid: self.pfsid(sid, opts).unwrap_or(sid),
            })
        });
        if let Some(old) = old {
            self.tear_down(&mut self.inval.lock(), Some(entry), sid, None, old)?;
        }
        entry.publish(&new.words(), co, alloc)?;
        Ok(Published {
            changed: true,
            ..same
        })
    }

    /// A PRI attach on a scalable-mode unit with `ECAP.PRS` needs this crate's page request
    /// queue first: `PRE` sends the device's page requests wherever `PQA` points (§11.4 PQA:
    /// programmed before page requests are enabled in any context entry), which is address 0
    /// at reset or a previous owner's queue, memory the kernel now uses otherwise. Refused
    /// rather than attached without `PRE`: the caller asked for page requests. The queue is
    /// never freed while the unit is live (only by `release`, translation off), so the check
    /// cannot go stale.
    #[inline(never)]
    fn check_page_requests(&self, opts: AttachOptions) -> Result<(), iommu::Error> {
        let prs = self.info.ecap.flags().contains(EcapFlags::PRS);
        if opts.pri && prs && self.info.mode == Mode::Scalable && self.prq.lock().is_none() {
            return Err(iommu::Error::Unsupported(Missing::Mode {
                what: "page requests (enable_page_requests first)",
            }));
        }
        Ok(())
    }

    /// Whether the device's TLB must be invalidated for this attachment: asked for, or already
    /// allowed by the device's context entry (`DTE` is set only when the entry is first made
    /// present, so it can be on for an attachment that did not ask for ATS).
    fn attach_scalable(
        &self,
        root: &RootTable,
        sid: SourceId,
        pasid: Option<Pasid>,
        (new, did): (&PasidEntry, DomainId),
        old: Option<Old>,
        opts: AttachOptions,
    ) -> Result<Published, Error> {
        let (co, alloc) = (self.info.coherency, &self.alloc);
        let p = pasid.unwrap_or(RID_PASID);
        let pre = opts.pri && self.info.ecap.flags().contains(EcapFlags::PRS);
        let (ctx, new_context) = self.scalable_context(root, sid, opts.ats, pre)?;
        let ats = opts.ats || ctx.word(0).unwrap_or(0) & ScalableContextEntry::DTE != 0;
        let entry = self
            .directory(&ctx)?
            .entry(p, alloc, co, self.info.haw, true)?
            .ok_or(Error::NoMemory)?;
        let current = read_pasid_entry(&entry);
        let same = Published {
            ats,
            changed: false,
            new_context,
        };
        if current.present() {
            if current == *new {
                return Ok(same);
            }
            if opts.exclusive && current.did() != did {
                return Err(Error::EntryPresent {
                    word0: current.qw[0],
                });
            }
        }
        let old = old.or_else(|| {
            current.present().then(|| Old {
                did: current.did(),
                first_stage: matches!(current.pgtt(), Ok(Pgtt::FirstStage)),
                ats,
                // Checked by `attach_with`.
                pfsid: self.pfsid(sid, opts).unwrap_or(sid),
            })
        });
        if let Some(old) = old {
            self.tear_down(&mut self.inval.lock(), Some(entry), sid, pasid, old)?;
        }
        entry.publish(&new.words(), co, alloc)?;
        Ok(Published {
            changed: true,
            ..same
        })
    }

    /// The device's scalable-mode context entry, made present (with a new, empty PASID
    /// directory) if it is not; `true` when it was just made present.
    fn scalable_context<'r>(
        &self,
        root: &'r RootTable,
        sid: SourceId,
        ats: bool,
        pre: bool,
    ) -> Result<(LiveEntry<'r>, bool), Error> {
        let (co, alloc) = (self.info.coherency, &self.alloc);
        let slot = RootSlot::for_devfn(sid.devfn());
        let ctx = root
            .context_table(sid.bus(), slot, alloc, co, self.info.haw, true)?
            .ok_or(Error::NoMemory)?
            .entry(sid.devfn());
        if ctx.is_present() {
            return Ok((ctx, false));
        }
        let pdts = self.info.pdts;
        let dir = alloc_directory(alloc, pdts, co, self.info.haw)?;
        let flags = ScalableContextFlags {
            fpd: false,
            dte: ats,
            paside: self.info.pasid_bits > 0,
            pre,
        };
        let published = ScalableContextEntry::new(dir.pa, pdts, RID_PASID, flags)
            .and_then(|e| ctx.publish(&e.words(), co, alloc));
        if let Err(e) = published {
            // SAFETY: the directory came from `alloc` just now and was never published.
            unsafe { alloc.free(dir, directory_size_log2(pdts)) };
            return Err(e);
        }
        Ok((ctx, true))
    }

    /// The PASID directory a present scalable-mode context entry points at.
    fn directory<'r>(&self, ctx: &LiveEntry<'r>) -> Result<PasidDirectory<'r>, Error> {
        let w0 = ctx.word(0).unwrap_or(0);
        let pa = crate::mem::PhysAddr::new(w0 & ScalableContextEntry::PASIDDIRPTR.mask());
        let pdts = ScalableContextEntry::PDTS.get(w0) as u8;
        let va = resolve(&self.alloc, pa, "scalable-mode context entry")?;
        Ok(PasidDirectory::new(va, pdts))
    }

    /// `sid`'s scalable-mode context entry if it is present (no allocation).
    fn existing_context<'r>(
        &self,
        root: &'r RootTable,
        sid: SourceId,
    ) -> Result<Option<LiveEntry<'r>>, Error> {
        let (co, alloc) = (self.info.coherency, &self.alloc);
        let slot = RootSlot::for_devfn(sid.devfn());
        let Some(table) = root.context_table(sid.bus(), slot, alloc, co, self.info.haw, false)?
        else {
            return Ok(None);
        };
        let ctx = table.entry(sid.devfn());
        Ok(ctx.is_present().then_some(ctx))
    }

    /// Whether `sid`'s scalable-mode context entry is present with `DTE` (no allocation).
    fn context_allows_device_tlb(&self, root: &RootTable, sid: SourceId) -> Result<bool, Error> {
        let ctx = self.existing_context(root, sid)?;
        Ok(ctx.is_some_and(|c| c.word(0).unwrap_or(0) & ScalableContextEntry::DTE != 0))
    }

    /// The PASID entry of (`sid`, `pasid`) if its tables exist (no allocation).
    pub(super) fn existing_pasid_entry<'r>(
        &self,
        root: &'r RootTable,
        sid: SourceId,
        pasid: Option<Pasid>,
    ) -> Result<Option<LiveEntry<'r>>, Error> {
        let Some(ctx) = self.existing_context(root, sid)? else {
            return Ok(None);
        };
        let (co, alloc) = (self.info.coherency, &self.alloc);
        self.directory(&ctx)?
            .entry(pasid.unwrap_or(RID_PASID), alloc, co, self.info.haw, false)
    }

    /// The PASID entry that points at `dom`.
    pub(super) fn pasid_entry_for(&self, dom: &Domain<A>) -> Result<PasidEntry, Error> {
        let mut flags = PasidEntryFlags::empty();
        // Page walks through this entry snoop only with PWSNP, which needs ECAP.SMPWCS; the
        // domain's table was built for `UnitInfo::page_walk_coherency`, which says the same.
        if self.info.ecap.flags().contains(EcapFlags::SMPWCS) {
            flags |= PasidEntryFlags::PWSNP;
        }
        if dom.snoop {
            flags |= PasidEntryFlags::PGSNP;
        }
        match &dom.table {
            DomainTable::Second(t) => {
                if dom.tracking() {
                    flags |= PasidEntryFlags::SSADE;
                }
                let aw = AddressWidth::try_from(t.format().aw_field())?;
                let tr = PasidTranslation::SecondStage { ssptptr: t.root() };
                PasidEntry::new(tr, dom.did, aw, flags)
            }
            DomainTable::First(t) => {
                if dom.supervisor {
                    // WPE with SRE: supervisor writes honour R/W = 0, as user writes always
                    // do (without it a supervisor request could write read-only pages).
                    flags |= PasidEntryFlags::SRE | PasidEntryFlags::WPE;
                }
                let flpm = dom.first_stage_mode().ok_or(Error::InvalidArgument {
                    what: "first-stage paging mode",
                    value: u64::from(t.geometry().levels),
                })?;
                let tr = PasidTranslation::FirstStage {
                    fsptptr: t.root(),
                    flpm,
                };
                PasidEntry::new(tr, dom.did, self.widest_aw(), flags)
            }
        }
    }

    /// The widest second-stage AW the unit supports (what first-stage entries carry).
    fn widest_aw(&self) -> AddressWidth {
        let sagaw = self.info.cap.sagaw();
        if sagaw.contains(Sagaw::AGAW57) {
            AddressWidth::Agaw57
        } else if sagaw.contains(Sagaw::AGAW39) && !sagaw.contains(Sagaw::AGAW48) {
            AddressWidth::Agaw39
        } else {
            AddressWidth::Agaw48
        }
    }

    /// Clears `P` of `entry` (if any), invalidates what may be cached of the attachment `old`
    /// through `inv` (the unit's invalidator, locked by the caller), waits, then scrubs the
    /// entry's other words.
    fn tear_down(
        &self,
        inv: &mut Invalidator,
        entry: Option<LiveEntry<'_>>,
        sid: SourceId,
        pasid: Option<Pasid>,
        old: Old,
    ) -> Result<(), Error> {
        let (co, alloc) = (self.info.coherency, &self.alloc);
        if let Some(e) = &entry {
            e.retire(0, co, alloc);
        }
        let mut b = self.batch(inv);
        if self.info.scalable() {
            let p = pasid.unwrap_or(RID_PASID);
            b.push(Request::PasidCache(PasidCacheScope::Pasid(old.did, p)))?;
            b.push(iotlb_of(old.did, p, old.first_stage))?;
        } else {
            b.push(Request::ContextCache(ContextCacheScope::Device {
                did: old.did,
                sid,
                fm: 0,
            }))?;
            b.push(Request::Iotlb(IotlbScope::Domain(old.did)))?;
        }
        if old.ats {
            let a = Attachment {
                sid,
                pasid,
                slot: 0,
                ats: true,
                pfsid: old.pfsid,
                pasids: false,
                settled: true,
            };
            b.push(device_tlb(&a, Iova::ZERO, 64))?;
        }
        b.finish()?;
        match entry {
            Some(e) => e.scrub(co, alloc),
            None => Ok(()),
        }
    }

    /// After an entry became present: under caching mode the invalidations `f` pushes, else a
    /// write-buffer flush when `CAP.RWBF`.
    fn after_present(
        &self,
        f: impl FnOnce(&mut Batch<'_, W>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if !self.info.cap.flags().contains(CapFlags::CM) {
            return self.flush_write_buffer();
        }
        let mut inv = self.inval.lock();
        let mut b = self.batch(&mut inv);
        f(&mut b)?;
        b.finish()
    }
}

/// The IOTLB invalidation of everything a domain cached for PASID `p`: PASID-selective for a
/// first-stage-only entry; domain-selective for a second-stage or nested one (a PASID-based
/// invalidation leaves the second-stage paging-structure caching of the DID, §6.5.2.4 Table
/// 21; a domain-selective one drops nested IOTLB entries too, §6.5.2.3).
fn iotlb_of(did: DomainId, p: Pasid, first_stage: bool) -> Request {
    if first_stage {
        Request::PasidIotlb {
            did,
            pasid: p,
            scope: PasidIotlbScope::AllInPasid,
        }
    } else {
        Request::Iotlb(IotlbScope::Domain(did))
    }
}

/// The PASID entry `entry` holds.
pub(super) fn read_pasid_entry(entry: &LiveEntry<'_>) -> PasidEntry {
    let w = |i| entry.word(i).unwrap_or(0);
    PasidEntry {
        qw: [w(0), w(1), w(2)],
        reserved: [w(3), w(4), w(5), w(6), w(7)],
    }
}
