//! [`Iommu`] for [`VtdUnit`]: Intel VT-d specification rev. 4.1 (see the parent module for
//! the sections each operation follows).

use super::invalidate::Purpose;
use super::{VtdUnit, INTERRUPT_WINDOW};
use crate::iommu::{
    Capabilities, DeviceHints, DeviceId, DomainConfig, DomainHandle, DomainPages, Error, Iommu,
    Pasid, ReclaimScope, Source, Sources, UserStage1, VtdS1Invalidate,
};
use crate::iopf::{FaultDrain, FaultSequence, PageFault, PageResponse};
use crate::mem::{Iova, PageAllocator, PhysAddr, WalkerCoherency};
use crate::mmio::RegisterWindow;
use crate::pgtable::{self, DirtyRead, Gather, IovaRange, Leaf, Mapping, Prot};
use crate::vtd::cap::{CapFlags, Sllps};
use crate::vtd::domain::{self, with_table, Domain};
use crate::vtd::ecap::EcapFlags;
use crate::vtd::inv_desc::IotlbScope;
use crate::vtd::invalidation::Request;

/// The ranges no domain may map.
/// Where VT-d's [`Capabilities::coherent_dma`] comes from: the platform architecture, no
/// register -- x86 DMA snoops CPU caches unless a request sets PCIe No-Snoop.
const X86_DMA_SNOOPS: Source = Source::Embedder("x86: DMA snoops CPU caches (No-Snoop aside)");

static RESERVED: [IovaRange; 1] = [INTERRUPT_WINDOW];

/// Refuses ranges beyond `CAP.MGAW` that the table's depth would still accept.
fn check_width<A: PageAllocator>(dom: &Domain<A>, iova: Iova, len: u64) -> Result<(), Error> {
    let Some(limit) = 1u64.checked_shl(dom.input_bits) else {
        return Ok(());
    };
    match iova.get().checked_add(len) {
        Some(end) if end > limit => Err(Error::PageTable(pgtable::Error::IovaOutOfRange {
            last: Iova::new(end - 1),
            ias: dom.input_bits,
        })),
        _ => Ok(()),
    }
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// The table part of [`Iommu::domain_free`], once the domain's DID is invalidated: the
    /// domain in `slot` is destroyed where it lies (not moved out of its slot onto the stack,
    /// about 500 bytes in the frame above the table's walk), its pages and those it owed go
    /// back to the allocator, and the slot is emptied whatever the result.
    #[inline(never)]
    fn destroy_in_slot(
        &self,
        slot: &mut Option<Domain<A>>,
        domain: DomainHandle,
    ) -> Result<(), Error> {
        let Some(dom) = slot.as_mut() else {
            return Err(Error::InvalidDomain(domain));
        };
        let gather = dom.owed.get_mut();
        // SAFETY: the slot is emptied below, whatever the result: the table is only dropped.
        let destroyed = with_table!(&mut dom.table, t => unsafe { t.destroy_in_place(gather) });
        // SAFETY: the table is unreachable (no attachment; each detach invalidated what its
        // entry cached) and the domain-selective IOTLB invalidation before this call completed.
        let done = unsafe { pgtable::InvalidationComplete::assume() };
        let released = gather.release(&self.alloc, done);
        *slot = None;
        released?;
        destroyed?;
        Ok(())
    }

    /// Takes back a mapping whose publication (caching-mode invalidation, write-buffer flush)
    /// failed, so that `map` fails with nothing mapped: the PTEs are cleared at once; the
    /// hardware may have cached them meanwhile, so their invalidation follows, and if it fails
    /// too it stays owed by the domain (with any table page the undo unlinked) until the next
    /// flush of the domain completes. A failure's path, not inlined: its gather is not in
    /// `map`'s frame.
    #[cold]
    #[inline(never)]
    fn undo_map(&self, domain: DomainHandle, iova: Iova, len: u64) {
        // The unit's gather, not the stack's (it would be under the flush): locked first,
        // only here, so undos serialize; empty whenever it is unlocked.
        let mut gather = self.undo_gather.lock();
        let gather = &mut *gather;
        self.undo_unmap(domain, iova, len, gather);
        if self.flush_gather(domain, gather, Purpose::Unmap).is_err() {
            self.owe(domain, gather);
            if !gather.is_empty() {
                // A domain freed meanwhile: its pages are leaked (as a dropped gather's
                // were), never left for the next undo to free.
                leak(gather);
            }
        }
    }

    /// The unmap of [`Self::undo_map`], out of line: inline, the table's unmap (two formats)
    /// kept its locals in `undo_map`'s frame, under the flush that follows (the deepest stack
    /// of the IOASID calls that map: tests/linux_module.rs).
    #[cold]
    #[inline(never)]
    fn undo_unmap(&self, domain: DomainHandle, iova: Iova, len: u64, gather: &mut Gather) {
        // The range was empty before `map` (it refuses to map over a present entry) and holds
        // exactly what `map` wrote, so this unmap needs no split and cannot fail.
        let _ = self.with_domain(
            domain,
            |d| with_table!(&d.table, t => t.unmap(iova, len, &mut *gather)),
        );
    }

    /// The caching-mode invalidation after `map` wrote `[iova, iova + len)` (not-present
    /// entries may be cached). Its gather is the unit's `map_gather`, not the stack's (it
    /// would be under the flush); not inlined, so `map`'s frame holds no guard of it.
    #[inline(never)]
    fn flush_map(&self, domain: DomainHandle, iova: Iova, len: u64) -> Result<(), Error> {
        let mut gather = self.map_gather.lock();
        gather.add_table_change(iova.get(), len);
        let flushed = self.flush_gather(domain, &mut gather, Purpose::Map);
        // Ranges only (a map frees no table page): a completed flush emptied it, a failed
        // one left its ranges owed by the domain (`flush_locked`). Empty for the next map.
        *gather = Gather::new();
        flushed
    }
}

impl<W, A, const DOMAINS: usize> Iommu for VtdUnit<W, A, DOMAINS>
where
    W: RegisterWindow + Sync,
    A: PageAllocator + Clone + Send + Sync,
{
    fn capabilities(&self) -> Capabilities {
        let info = &self.info;
        let e = info.ecap.flags();
        let second = !info.scalable() || e.contains(EcapFlags::SLTS);
        let (ias, page_sizes, stage) = if second {
            let s = info.cap.sllps();
            let sizes = 1 << 12
                | u64::from(s.contains(Sllps::SIZE_2M)) << 21
                | u64::from(s.contains(Sllps::SIZE_1G)) << 30;
            let stage = ("CAP.SAGAW", "CAP.SLLPS");
            (domain::second_stage_max_bits(info), sizes, stage)
        } else {
            let g1 = info.cap.flags().contains(CapFlags::FL1GP);
            let sizes = 1 << 12 | 1 << 21 | u64::from(g1) << 30;
            let stage = ("CAP.FL5LP", "CAP.FL1GP");
            (domain::first_stage_max_bits(info), sizes, stage)
        };
        Capabilities {
            ias,
            oas: info.haw,
            page_sizes,
            pasid_bits: info.pasid_bits,
            enforce_snoop: e.contains(EcapFlags::SC),
            dirty_tracking: domain::second_stage_dirty_tracking(info),
            nesting: e.contains(EcapFlags::NEST),
            coherent_walk: info.page_walk_coherency == WalkerCoherency::Coherent,
            coherent_dma: true,
            supervisor: domain::supervisor_capable(info),
            sources: Sources {
                ias: Source::Register(stage.0),
                oas: info.haw_source,
                page_sizes: Source::Register(stage.1),
                pasid_bits: Source::Register("ECAP.PSS"),
                enforce_snoop: Source::Register("ECAP.SC"),
                dirty_tracking: Source::Register("ECAP.SLADS"),
                nesting: Source::Register("ECAP.NEST"),
                coherent_walk: Source::Register(match info.mode {
                    super::Mode::Legacy => "ECAP.C",
                    super::Mode::Scalable => "ECAP.SMPWCS",
                }),
                coherent_dma: X86_DMA_SNOOPS,
                supervisor: Source::Register("ECAP.SRS"),
            },
        }
    }

    fn reserved_regions(&self) -> &[IovaRange] {
        &RESERVED
    }

    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, Error> {
        let choice = domain::choose(&self.info, cfg)?;
        self.alloc_domain(choice, cfg)
    }

    fn domain_geometry(&self, domain: DomainHandle) -> Result<(u32, u64), Error> {
        self.with_domain(domain, |d| (d.input_bits, d.geometry().page_sizes))
    }

    fn set_max_page_log2(&self, domain: DomainHandle, max: Option<u32>) -> Result<(), Error> {
        // The write lock waits for maps in flight: each map sees one policy throughout.
        let mut guard = self.domain_lock(domain)?.write();
        let d = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        with_table!(&mut d.table, t => t.set_max_leaf_log2(max));
        Ok(())
    }

    fn domain_free(&self, domain: DomainHandle) -> Result<(), Error> {
        if super::nested::user_index(domain).is_some() {
            return self.free_user_domain(domain);
        }
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        if cfg.of_domain(slot).next().is_some() || Self::has_user_children(&cfg, slot) {
            return Err(Error::Busy);
        }
        let mut guard = self.domain_lock(domain)?.write();
        let did = guard.as_ref().ok_or(Error::InvalidDomain(domain))?.did;
        // Nothing points at the table any more, but the IOTLB and paging-structure caches may
        // still hold entries tagged with the domain-ID: they are invalidated while the slot
        // (and so the handle and the DID) stays taken. If that fails, nothing has changed and
        // the free can be retried.
        {
            let mut inv = self.inval.lock();
            let mut b = self.batch(&mut inv);
            b.push(Request::Iotlb(IotlbScope::Domain(did)))?;
            b.finish()?;
        }
        // The slot's write lock is held until it is emptied: whatever takes the configuration
        // lock now (an attach) waits for the slot and then finds no domain.
        drop(cfg);
        self.destroy_in_slot(&mut guard, domain)
    }

    fn map(
        &self,
        domain: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        self.with_domain(domain, |d| {
            check_width(d, iova, len)?;
            // A privileged-only page could never be used without SRE: refused, not written.
            if prot.contains(Prot::PRIV) && !d.supervisor {
                return Err(Error::PageTable(pgtable::Error::UnsupportedProt { prot }));
            }
            with_table!(&d.table, t => t.map(iova, pa, len, prot)).map_err(Error::from)
        })??;
        let published = if self.info.cap.flags().contains(CapFlags::CM) {
            self.flush_map(domain, iova, len)
        } else {
            self.flush_write_buffer().map_err(Error::from)
        };
        if let Err(e) = published {
            self.undo_map(domain, iova, len);
            return Err(e);
        }
        Ok(())
    }

    fn unmap(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error> {
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            with_table!(&d.table, t => t.unmap(iova, len, gather)).map_err(Error::from)
        })?
    }

    fn flush(&self, domain: DomainHandle, gather: &mut Gather) -> Result<(), Error> {
        self.flush_gather(domain, gather, Purpose::Unmap)
    }

    fn reclaim(&self, domain: DomainHandle, scope: ReclaimScope<'_>) -> Result<usize, Error> {
        self.reclaim_domain(domain, scope)
    }

    fn table_pages(&self, domain: DomainHandle) -> Result<DomainPages, Error> {
        // The write lock: an unmap and its flush (read lock) would free tables the walk reads.
        let mut guard = self.domain_lock(domain)?.write();
        let d = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        let pages = DomainPages {
            tables: with_table!(&mut d.table, t => t.table_pages())?,
            unflushed: d.owed.lock().freed_pages(),
        };
        Ok(pages)
    }

    fn query(&self, domain: DomainHandle, iova: Iova) -> Option<Mapping> {
        self.with_domain(domain, |d| with_table!(&d.table, t => t.query(iova)))
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
        self.with_domain(domain, |d| {
            with_table!(&d.table, t => t.for_each_mapping(iova, len, &mut *f)).map_err(Error::from)
        })?
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
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            with_table!(&d.table, t => t.read_dirty(iova, len, how, &mut *sink, gather))
                .map_err(Error::from)
        })?
    }

    fn set_dirty_tracking(&self, domain: DomainHandle, on: bool) -> Result<(), Error> {
        self.set_dirty_tracking_impl(domain, on)
    }

    fn attach(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
    ) -> Result<(), Error> {
        self.attach_with(device, pasid, domain, super::AttachOptions::default())
    }

    fn attach_device(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
        hints: &DeviceHints,
    ) -> Result<(), Error> {
        hints.check_ats(device)?;
        let opts = super::AttachOptions {
            ats: hints.ats,
            physical_function: hints.physical_function,
            pri: hints.pri,
            no_pasid: hints.pasid_bits == Some(0),
            ats_forbidden: hints.ats_permission == crate::iommu::AtsPermission::Forbidden,
            ..super::AttachOptions::default()
        };
        self.attach_with(device, pasid, domain, opts)
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

    fn invalidate_user_vtd(
        &self,
        domain: DomainHandle,
        requests: &[VtdS1Invalidate],
    ) -> Result<usize, Error> {
        self.invalidate_user_vtd_impl(domain, requests)
    }

    fn drain_page_faults(&self, out: &mut [PageFault]) -> Result<FaultDrain, Error> {
        Ok(self.drain_page_requests(out)?)
    }

    fn page_response(&self, response: &PageResponse) -> Result<(), Error> {
        Ok(self.page_group_response(response)?)
    }

    fn page_fault_fence(&self) -> Result<Option<FaultSequence>, Error> {
        Ok(self.page_request_fence()?)
    }

    fn page_response_owed(&self, response: &PageResponse) -> bool {
        VtdUnit::page_response_owed(self, response)
    }
}

/// Empties `gather` without freeing its pages (`Gather` has no `Drop`: they are leaked).
#[cold]
#[inline(never)]
fn leak(gather: &mut Gather) {
    *gather = Gather::new();
}
