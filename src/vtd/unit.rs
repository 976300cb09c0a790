//! One DMA-remapping hardware unit: Intel VT-d specification rev. 4.1, §11.4 (registers; the
//! Global Command Register's SRTP, QIE and TE handshakes enable it), §3.4 (root, context and
//! PASID tables), §6.5 (invalidation, with §6.5.3 Invalidation Considerations) and §7 (fault
//! recording).
//!
//! [`VtdUnit`] owns the register window, the root table and every table below it, the
//! invalidation queue and a fixed number of domains; it implements [`crate::iommu::Iommu`].
//!
//! ```
//! # fn main() -> Result<(), iommu_engine::iommu::Error> {
//! use iommu_engine::iommu::{DeviceId, DomainConfig, Iommu};
//! use iommu_engine::mem::{Iova, PhysAddr};
//! use iommu_engine::pgtable::{Gather, Prot};
//! use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig};
//! use iommu_engine::sim::Arena;
//! use iommu_engine::vtd::{VtdConfig, VtdUnit};
//!
//! // On hardware: `Mmio::new(base, len)` as the window and the kernel's page allocator.
//! let mem = Arena::with_defaults().expect("host memory");
//! let regs = VtdModel::new(&mem, VtdModelConfig::qemu_default());
//! // `vtd::Error` converts into `iommu::Error` with `?`.
//! let unit = VtdUnit::new(&regs, &mem, VtdConfig::legacy())?; // reads CAP/ECAP, root table
//! unit.enable()?; // RTADDR + SRTP, queued invalidation, global flushes, TE
//!
//! let d = unit.domain_alloc(&DomainConfig::default())?;
//! unit.attach(DeviceId(0x20), None, d)?; // 00:04.0
//! let rw = Prot::READ | Prot::WRITE;
//! unit.map(d, Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), 0x1000, rw)?;
//!
//! let mut gather = Gather::new();
//! unit.unmap(d, Iova::new(0x10_0000), 0x1000, &mut gather)?;
//! unit.flush(d, &mut gather)?; // one page-selective invalidation, one wait
//! # Ok(())
//! # }
//! ```
//!
//! Locking (always taken in this order, never the reverse): the configuration lock (root,
//! context and PASID tables, attachments), then one domain's read-write lock (its page table:
//! map and unmap take it shared, so maps on one domain run concurrently as the engine allows),
//! then the invalidation lock (queue or registers). The fault lock (primary fault records) is
//! a leaf, taken alone. No lock is held across a call into the embedder other than the page
//! allocator and a fault drain's `report` (under the fault lock).

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::Ordering;

use super::cap::{Cap, CapFlags};
use super::domain::{Choice, Domain};
use super::ecap::{Ecap, EcapFlags};
use super::fault::{drain_primary_faults, DrainSummary, FaultRecord};
use super::flush::FlushPlan;
use super::inv_desc::{ContextCacheScope, IotlbScope, PasidCacheScope};
use super::inv_queue::{DescriptorWidth, QueueConfig, QueueCore, IQA_QS_MAX};
use super::invalidation::{
    Batch, BatchParams, Counters, InvalidationStats, Invalidator, Request, Staging,
};
use super::platform::{HostAddressWidth, UNDECLARED_HAW, UNDECLARED_HAW_BITS};
use super::prq::PageRequestQueue;
use super::regs::{
    self, set_persistent, write_buffer_flush, write_root_table, Gsts, PersistentCommand,
    RootTableAddress, TranslationTableMode,
};
use super::root_table::RootTable;
use super::{DomainId, Error, Pasid, QueueErrorKind, SourceId, Wait};
use crate::iommu::{self, DomainHandle, Source};
use crate::mem::{Iova, PageAllocator, WalkerCoherency};
use crate::mmio::{RegisterWindow, DEFAULT_POLL_BUDGET};
use crate::pgtable::IovaRange;

mod attach;
mod audit;
mod dirty;
mod invalidate;
mod iommu_impl;
mod nested;
mod page_requests;
mod reclaim;
mod release;
#[cfg(test)]
mod tests;

pub use attach::AttachOptions;
pub use audit::{AuditError, AuditReport};
pub use nested::{MAX_USER_DOMAINS, USER_DOMAIN_BASE};
pub use release::Released;

use invalidate::push_whole_device_tlb;

/// Polls a wait on device-TLB invalidations may take unless told otherwise. The PCIe Base
/// Specification (Address Translation Services, "Invalidate Completion Timeout") lets a device
/// take up to 1 minute (+50% -0%, so up to 90 s) to answer an ATS Invalidate Request before
/// the request is considered lost; the unit's own wait must not give up earlier, or a slow but
/// correct device is reported as failed and its ATC left stale. One poll reads the status word
/// and `FSTS`, an uncached register read of about a microsecond on current platforms, so
/// 10^8 polls are about 100 s. A unit reports a device that never answers itself (`FSTS.ITE`,
/// after its own time-out), which ends the wait early.
pub const DEFAULT_DEVICE_TLB_POLL_BUDGET: u32 = 100_000_000;
/// Domains a [`VtdUnit`] holds unless told otherwise.
pub const DEFAULT_DOMAINS: usize = 64;
/// Device (and device, PASID) attachments one unit tracks.
pub const MAX_ATTACHMENTS: usize = 256;
/// PASID width a scalable-mode unit offers unless told otherwise: 15 bits make each device's
/// PASID directory exactly one 4 KiB page (512 entries of 64 PASIDs).
pub const DEFAULT_PASID_BITS: u32 = 15;
/// Default `IQA.QS`: a one-page invalidation queue (256 or 128 descriptors).
pub const DEFAULT_QUEUE_PAGES_LOG2: u8 = 0;
/// The interrupt address range (`0xFEEx_xxxx`, the spec's "Handling Requests to Interrupt
/// Address Range"): DMA writes there are interrupt requests, so no
/// domain may map it.
pub const INTERRUPT_WINDOW: IovaRange = IovaRange {
    start: Iova::new(0xFEE0_0000),
    end: Iova::new(0xFEF0_0000),
};
/// The PASID requests without PASID use in scalable mode (context entry `RID_PASID`).
pub const RID_PASID: Pasid = Pasid::ZERO;

/// Root-table format (`RTADDR_REG.TTM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Legacy root and context entries (§9.1, §9.3): second-stage tables, no PASIDs.
    #[default]
    Legacy,
    /// Scalable mode (§9.2, §9.4-§9.6): PASID tables, first- or second-stage domains; needs
    /// `ECAP.SMTS` and `ECAP.QI`.
    Scalable,
}

/// How to run a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdConfig {
    /// Legacy or scalable mode.
    pub mode: Mode,
    /// Register polls before any wait on the hardware fails with [`Error::Timeout`].
    pub poll_budget: u32,
    /// Polls before the wait that ends a batch of device-TLB invalidations fails with
    /// [`Error::Timeout`]: such a wait lasts until every ATS device answered, which PCIe lets
    /// take far longer than any register handshake ([`DEFAULT_DEVICE_TLB_POLL_BUDGET`]).
    pub device_tlb_poll_budget: u32,
    /// `IQA.QS`: the invalidation queue is `2^queue_pages_log2` 4 KiB pages (0..=7).
    pub queue_pages_log2: u8,
    /// PASID width to offer in scalable mode, capped by `ECAP.PSS`; each device's PASID
    /// directory takes `max(4 KiB, 2^(pasid_bits - 3))` bytes.
    pub pasid_bits: u32,
    /// The platform's host address width (ACPI DMAR, [`HostAddressWidth::from_dmar`]), if
    /// known: 32..=52 bits, at most `CAP.MGAW`. Without it, the narrower of `CAP.MGAW` and
    /// [`UNDECLARED_HAW_BITS`] (see [`platform`](super::platform)). Physical addresses mapped
    /// and table pages must lie below `2^HAW`.
    pub host_address_width: Option<HostAddressWidth>,
}

impl VtdConfig {
    /// Legacy mode with the default budget and queue size.
    pub const fn legacy() -> Self {
        Self {
            mode: Mode::Legacy,
            poll_budget: DEFAULT_POLL_BUDGET,
            device_tlb_poll_budget: DEFAULT_DEVICE_TLB_POLL_BUDGET,
            queue_pages_log2: DEFAULT_QUEUE_PAGES_LOG2,
            pasid_bits: DEFAULT_PASID_BITS,
            host_address_width: None,
        }
    }

    /// Scalable mode with the default budget, queue size and PASID width.
    pub const fn scalable() -> Self {
        Self {
            mode: Mode::Scalable,
            ..Self::legacy()
        }
    }

    /// With the host address width the ACPI DMAR table declares: `width_field` is its `Host
    /// Address Width` byte (HAW - 1). The hook a DMAR parser calls.
    pub const fn with_dmar_host_address_width(mut self, width_field: u8) -> Self {
        self.host_address_width = Some(HostAddressWidth::from_dmar(width_field));
        self
    }

    /// With a host address width the embedder knows from elsewhere, in bits.
    pub const fn with_host_address_width(mut self, bits: u32) -> Self {
        self.host_address_width = Some(HostAddressWidth::embedder(bits));
        self
    }
}

impl Default for VtdConfig {
    fn default() -> Self {
        Self::legacy()
    }
}

/// What the unit found in `CAP`/`ECAP` and decided from them and the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// `CAP_REG`.
    pub cap: Cap,
    /// `ECAP_REG`.
    pub ecap: Ecap,
    /// Root-table mode.
    pub mode: Mode,
    /// Whether the unit's accesses to root, context and PASID tables snoop (`ECAP.C`).
    pub coherency: WalkerCoherency,
    /// Whether page-table walks snoop: `ECAP.C` in legacy mode; in scalable mode `ECAP.SMPWCS`
    /// (the PASID entry's `PWSNP`, which is set when `SMPWCS` allows it), since there `ECAP.C`
    /// covers only the root, context and PASID structures.
    pub page_walk_coherency: WalkerCoherency,
    /// Output address width of mappings.
    pub haw: u32,
    /// Where [`haw`](Self::haw) comes from: the DMAR table or the embedder
    /// ([`VtdConfig::host_address_width`]), else [`UNDECLARED_HAW`].
    pub haw_source: Source,
    /// `CAP.MGAW + 1`: IOVAs must be below `2^mgaw`.
    pub mgaw: u32,
    /// First domain-ID handed out (1 when `CAP.CM` reserves DID 0).
    pub did_base: u16,
    /// Number of domain-IDs (`CAP.ND`).
    pub domain_ids: u32,
    /// PASID width offered (0 in legacy mode).
    pub pasid_bits: u32,
    /// `PDTS` of every PASID directory.
    pub pdts: u8,
    /// Register polls per wait.
    pub poll_budget: u32,
    /// Polls of a wait that follows device-TLB invalidations.
    pub device_tlb_poll_budget: u32,
    /// `IQA.QS`.
    pub queue_pages_log2: u8,
}

impl UnitInfo {
    /// Whether the unit runs in scalable mode.
    pub const fn scalable(&self) -> bool {
        matches!(self.mode, Mode::Scalable)
    }

    fn decode(cap: Cap, ecap: Ecap, config: &VtdConfig) -> Result<Self, Error> {
        let unsupported = |what, value| Err(Error::Unsupported { what, value });
        let domain_ids = match cap.domain_count() {
            Some(n) => n,
            None => return unsupported("CAP.ND (reserved encoding)", cap.0),
        };
        if config.poll_budget == 0 {
            return Err(Error::InvalidArgument {
                what: "poll_budget (at least 1)",
                value: 0,
            });
        }
        if config.queue_pages_log2 > IQA_QS_MAX {
            return Err(Error::InvalidArgument {
                what: "queue_pages_log2 (IQA.QS, 0..=7)",
                value: u64::from(config.queue_pages_log2),
            });
        }
        let e = ecap.flags();
        if config.mode == Mode::Scalable {
            if !e.contains(EcapFlags::SMTS) {
                return unsupported("ECAP.SMTS (scalable mode)", ecap.0);
            }
            if !e.contains(EcapFlags::QI) {
                return unsupported("ECAP.QI (scalable mode needs queued invalidation)", ecap.0);
            }
            if !e.intersects(EcapFlags::SLTS | EcapFlags::FLTS) {
                return unsupported("ECAP.SLTS or ECAP.FLTS", ecap.0);
            }
        } else if cap.sagaw().is_empty() {
            return unsupported("CAP.SAGAW (no second-stage table depth)", cap.0);
        }
        let pasid_bits = match config.mode {
            Mode::Legacy => 0,
            Mode::Scalable => config
                .pasid_bits
                .min(ecap.pasid_bits().map_or(0, u32::from))
                .min(Pasid::BITS),
        };
        let pdts = super::context_entry::ScalableContextEntry::pdts_for(pasid_bits).unwrap_or(0);
        let mgaw = u32::from(cap.mgaw());
        let haw = host_address_width(config.host_address_width, mgaw)?;
        let snoops = |flag| {
            if e.contains(flag) {
                WalkerCoherency::Coherent
            } else {
                WalkerCoherency::NonCoherent
            }
        };
        let page_walk_coherency = match config.mode {
            Mode::Legacy => snoops(EcapFlags::C),
            Mode::Scalable => snoops(EcapFlags::SMPWCS),
        };
        Ok(Self {
            cap,
            ecap,
            mode: config.mode,
            coherency: snoops(EcapFlags::C),
            page_walk_coherency,
            haw: haw.bits,
            haw_source: haw.source,
            mgaw,
            did_base: u16::from(cap.flags().contains(CapFlags::CM)),
            domain_ids,
            pasid_bits,
            pdts,
            poll_budget: config.poll_budget,
            device_tlb_poll_budget: config.device_tlb_poll_budget,
            queue_pages_log2: config.queue_pages_log2,
        })
    }

    /// The domain-ID of domain slot `slot`, if the unit has that many.
    pub(crate) fn did_of(&self, slot: usize) -> Option<DomainId> {
        let did = u32::try_from(slot)
            .ok()?
            .checked_add(u32::from(self.did_base))?;
        if did >= self.domain_ids {
            return None;
        }
        u16::try_from(did).ok().map(DomainId::new)
    }
}

/// The output width: the declared one, checked against what the format and the unit can
/// express, else the narrower of `CAP.MGAW` and [`UNDECLARED_HAW_BITS`].
fn host_address_width(
    declared: Option<HostAddressWidth>,
    mgaw: u32,
) -> Result<HostAddressWidth, Error> {
    let Some(haw) = declared else {
        return Ok(HostAddressWidth {
            bits: UNDECLARED_HAW_BITS.min(mgaw).clamp(32, 52),
            source: UNDECLARED_HAW,
        });
    };
    if !(32..=52).contains(&haw.bits) {
        return Err(Error::InvalidArgument {
            what: "host_address_width (32..=52 bits)",
            value: u64::from(haw.bits),
        });
    }
    // §11.4.2: an implementation's MGAW is at least the platform's HAW; a wider declaration
    // contradicts the unit, and neither can be trusted.
    if haw.bits > mgaw {
        return Err(Error::InvalidArgument {
            what: "host_address_width (wider than CAP.MGAW)",
            value: u64::from(haw.bits),
        });
    }
    Ok(haw)
}

/// One attachment: a device, or a device's PASID, pointing at a domain slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub sid: SourceId,
    pub pasid: Option<Pasid>,
    pub slot: usize,
    pub ats: bool,
    /// The `PFSID` of the attachment's device-TLB invalidations (see
    /// [`AttachOptions::physical_function`]).
    pub pfsid: SourceId,
    /// The device may use PASIDs (not said otherwise by [`AttachOptions::no_pasid`]): its
    /// whole device-TLB invalidations cover every PASID too.
    pub pasids: bool,
    /// `false` while an attach or detach of this entry failed half-way: the entry is either
    /// not present (torn down, its invalidation not confirmed) or present and pointing at
    /// `slot` (published, the caching-mode invalidation or write-buffer flush not confirmed).
    /// Retrying the attach, or detaching, completes it; the domain cannot be freed meanwhile.
    pub settled: bool,
}

/// What the configuration lock protects.
pub(crate) struct ConfigState {
    pub root: RootTable,
    /// Recorded attachments; an entry is added or removed only through [`Self::set`], which
    /// keeps `used` and `ats` (a flush reads those instead of scanning every slot).
    attachments: [Option<Attachment>; MAX_ATTACHMENTS],
    /// One past the last recorded attachment: `attachments[used..]` are all `None`.
    used: usize,
    /// Recorded attachments with ATS enabled (each needs device-TLB invalidations).
    ats: usize,
    /// User domains (a guest's first stage over a table domain): `unit/nested.rs`.
    pub users: [Option<nested::UserDomain>; nested::MAX_USER_DOMAINS],
    /// Device TLBs of ATS attachments detached while translation was off: their tear-down's
    /// device-TLB invalidation was dropped (nothing to send it through), yet the device's ATC
    /// may still hold what it translated, which a scalable-mode context entry's `DTE` keeps
    /// usable. [`VtdUnit::enable`] invalidates them, then forgets them.
    pub devtlb_owed: [Option<OwedDeviceTlb>; MAX_DEVTLB_OWED],
}

/// A device TLB owed a whole invalidation (every tag it may hold, as for a first ATS
/// attachment), recorded by the detach of the attachment (`sid`, `pasid`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwedDeviceTlb {
    pub sid: SourceId,
    pub pasid: Option<Pasid>,
    pub pfsid: SourceId,
    /// As [`Attachment::pasids`].
    pub pasids: bool,
}

/// Device TLBs a unit keeps owed while disabled (detaches of ATS attachments while off beyond
/// it fail with [`iommu::Error::NoMemory`], nothing changed).
pub const MAX_DEVTLB_OWED: usize = 64;

impl ConfigState {
    /// Unlocked, nothing attached, a placeholder root table: a constant, so that writing it
    /// copies from read-only data rather than from a temporary built on the stack.
    // Each use is a fresh value written once into a new object: no lock is shared.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: crate::sync::Mutex<Self> = crate::sync::Mutex::new(ConfigState {
        root: RootTable::PLACEHOLDER,
        attachments: [None; MAX_ATTACHMENTS],
        used: 0,
        ats: 0,
        users: [None; nested::MAX_USER_DOMAINS],
        devtlb_owed: [None; MAX_DEVTLB_OWED],
    });

    /// The recorded attachments' part of the table: every slot past it is `None`.
    pub fn recorded(&self) -> &[Option<Attachment>] {
        self.attachments
            .get(..self.used)
            .unwrap_or(&self.attachments)
    }

    pub fn find(&self, sid: SourceId, pasid: Option<Pasid>) -> Option<usize> {
        self.recorded()
            .iter()
            .position(|a| a.is_some_and(|a| a.sid == sid && a.pasid == pasid))
    }

    /// A free attachment slot: the first `None`, as before `used` was kept.
    pub fn free_index(&self) -> Option<usize> {
        self.attachments.iter().position(Option::is_none)
    }

    pub fn of_domain(&self, slot: usize) -> impl Iterator<Item = &Attachment> + Clone {
        self.recorded()
            .iter()
            .flatten()
            .filter(move |a| a.slot == slot)
    }

    /// The attachments of domain `slot` with ATS enabled; none without looking at any slot if
    /// the unit has no ATS attachment (issue 18, goal 4: a flush does no work proportional to
    /// the attachment slots).
    pub fn ats_of_domain(&self, slot: usize) -> impl Iterator<Item = &Attachment> {
        let recorded = if self.ats == 0 { &[] } else { self.recorded() };
        recorded
            .iter()
            .flatten()
            .filter(move |a| a.slot == slot && a.ats)
    }

    /// Records that `owed`'s device TLB needs a whole invalidation at the next `enable`.
    ///
    /// # Errors
    /// [`iommu::Error::NoMemory`] when [`MAX_DEVTLB_OWED`] other device TLBs are owed.
    pub fn owe_device_tlb(&mut self, owed: OwedDeviceTlb) -> Result<(), iommu::Error> {
        if self.devtlb_owed.contains(&Some(owed)) {
            return Ok(());
        }
        let free = self.devtlb_owed.iter_mut().find(|o| o.is_none());
        *free.ok_or(iommu::Error::NoMemory)? = Some(owed);
        Ok(())
    }

    /// Every device TLB `enable` must invalidate whole: those of the recorded ATS attachments,
    /// then the owed ones no recorded ATS attachment names.
    pub fn device_tlbs(&self) -> impl Iterator<Item = Attachment> + '_ {
        let recorded = self.recorded().iter().flatten().filter(|a| a.ats).copied();
        let owed = self.devtlb_owed.iter().flatten().filter(move |o| {
            !self
                .recorded()
                .iter()
                .flatten()
                .any(|a| a.ats && a.sid == o.sid && a.pasid == o.pasid)
        });
        recorded.chain(owed.map(|o| Attachment {
            sid: o.sid,
            pasid: o.pasid,
            slot: 0,
            ats: true,
            pfsid: o.pfsid,
            pasids: o.pasids,
            settled: true,
        }))
    }

    /// The attachment recorded at `index`.
    pub fn get(&self, index: usize) -> Option<Attachment> {
        self.attachments.get(index).copied().flatten()
    }

    /// Marks the attachment at `index` (if any) settled or not.
    pub fn set_settled(&mut self, index: usize, settled: bool) {
        if let Some(a) = self.attachments.get_mut(index).and_then(Option::as_mut) {
            a.settled = settled;
        }
    }

    /// Records `attachment` at `index` (or removes it: `None`), keeping `used` and `ats`.
    pub fn set(&mut self, index: usize, attachment: Option<Attachment>) {
        let Some(entry) = self.attachments.get_mut(index) else {
            return;
        };
        let was_ats = entry.is_some_and(|a| a.ats);
        let is_ats = attachment.is_some_and(|a| a.ats);
        *entry = attachment;
        self.ats = (self.ats + usize::from(is_ats)).saturating_sub(usize::from(was_ats));
        if attachment.is_some() {
            self.used = self.used.max(index + 1);
        } else {
            while self.used > 0
                && self
                    .attachments
                    .get(self.used - 1)
                    .is_some_and(Option::is_none)
            {
                self.used -= 1;
            }
        }
    }
}

/// A VT-d remapping unit with up to `DOMAINS` domains.
///
/// `W` is its register window, `A` the allocator every table, queue and page-table page comes
/// from; page tables get clones of `A`, so a clone must hand out and take back pages of the
/// same pool (a reference, or a handle). `VtdUnit` is `Send + Sync` when `W` and `A` are.
///
/// Dropping a unit leaks its pages: hardware may still hold their addresses. To get them back,
/// [`disable`](Self::disable) it, then [`release`](Self::release) it.
pub struct VtdUnit<
    W: RegisterWindow,
    A: PageAllocator + Clone,
    const DOMAINS: usize = DEFAULT_DOMAINS,
> {
    regs: W,
    alloc: A,
    info: UnitInfo,
    config: crate::sync::Mutex<ConfigState>,
    domains: [crate::sync::RwLock<Option<Domain<A>>>; DOMAINS],
    inval: crate::sync::Mutex<Invalidator>,
    /// The batches' descriptor buffer: locked only by a batch, under `inval`.
    staging: crate::sync::Mutex<Staging>,
    /// The plan of the flush in progress (280 bytes, which a kernel stack should not carry
    /// under the invalidation chain): locked only by `flush_locked`, under `inval`.
    flush_plan: crate::sync::Mutex<FlushPlan>,
    /// The gather of a reclaim (112 bytes, which a kernel stack should not carry under the
    /// invalidation chain): locked only by `reclaim_domain`, under the configuration lock
    /// (so never contended); empty whenever it is unlocked.
    reclaim_gather: crate::sync::Mutex<crate::pgtable::Gather>,
    /// The gather of a failed map's undo (`undo_map`), for the same reason: locked only
    /// there, before any other lock of the unit; empty whenever it is unlocked.
    undo_gather: crate::sync::Mutex<crate::pgtable::Gather>,
    /// The gather of a map's caching-mode invalidation (`flush_map`), for the same reason:
    /// locked only there, before any other lock of the unit (flushes serialize on the
    /// configuration lock anyway); empty whenever it is unlocked.
    map_gather: crate::sync::Mutex<crate::pgtable::Gather>,
    counters: Counters,
    /// The page request queue, once [`enable_page_requests`](Self::enable_page_requests).
    prq: crate::sync::Mutex<Option<PageRequestQueue>>,
    /// Page group responses whose descriptor never reached the invalidation queue, so still
    /// owed (`Iommu::page_response_owed`): a leaf lock, taken under `inval` or alone.
    unqueued: crate::sync::Mutex<page_requests::Unqueued>,
    /// Held by a fault-record drain from its `FSTS` read to its last clear: two CPUs' drains
    /// take turns, so that neither reads a record the other is clearing (a record reported
    /// twice, or its halves from two faults). A leaf lock, taken alone.
    faults: crate::sync::Mutex<()>,
}

impl<W: RegisterWindow, A: PageAllocator + Clone> VtdUnit<W, A> {
    /// Reads `CAP`/`ECAP` through `regs`, checks that the unit can run as `config` asks, and
    /// allocates the (empty) root table. Nothing is written to the hardware until
    /// [`enable`](Self::enable).
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the missing capability (scalable mode without `ECAP.SMTS`
    /// or `ECAP.QI`, a reserved `CAP.ND`); [`Error::InvalidArgument`] for a bad queue size;
    /// [`Error::NoMemory`].
    pub fn new(regs: W, alloc: A, config: VtdConfig) -> Result<Self, Error> {
        Self::with_capacity(regs, alloc, config)
    }
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// As [`VtdUnit::new`], for a unit holding `DOMAINS` domains.
    ///
    /// # Errors
    /// As [`VtdUnit::new`].
    pub fn with_capacity(regs: W, alloc: A, config: VtdConfig) -> Result<Self, Error> {
        let mut slot = MaybeUninit::<Self>::uninit();
        // SAFETY: `slot` is ours, aligned and `size_of::<Self>()` bytes; it is read only after
        // `init_in_place` returned `Ok`, which means every field was written.
        unsafe {
            Self::init_in_place(NonNull::from(&mut slot).cast(), regs, alloc, config)?;
            Ok(slot.assume_init())
        }
    }

    /// As [`VtdUnit::with_capacity`], building the unit straight into `slot` (a unit is about
    /// 13 KiB: a kernel stack should hold no copy of it). Every field is written through its
    /// own pointer; the domain slots one at a time, so that no part larger than the
    /// configuration state (root table and attachment list, about 6 KiB) is ever built as a
    /// temporary. Nothing relies on the memory's previous contents.
    ///
    /// Everything that can fail (`CAP`/`ECAP` decoding, the root table's page) happens before
    /// the first write: on error `slot` is left uninitialised, the root table's page is not
    /// allocated, and `regs` and `alloc` are dropped.
    ///
    /// # Errors
    /// As [`VtdUnit::new`].
    ///
    /// # Safety
    /// `slot` is valid for writes of `size_of::<Self>()` bytes, aligned, and not in use: what
    /// it held is overwritten without being dropped. After `Ok` it holds a unit the caller
    /// must eventually drop or [`release`](Self::release) (or
    /// [`release_in_place`](Self::release_in_place)).
    pub unsafe fn init_in_place(
        slot: NonNull<Self>,
        regs: W,
        alloc: A,
        config: VtdConfig,
    ) -> Result<(), Error> {
        let cap = Cap(regs.read64(regs::CAP_REG));
        let ecap = Ecap(regs.read64(regs::ECAP_REG));
        let info = UnitInfo::decode(cap, ecap, &config)?;
        let root = RootTable::new(&alloc, info.coherency, info.haw)?;
        let p = slot.as_ptr();
        // SAFETY: the caller guarantees `slot` is writable and aligned; each field is written
        // exactly once, and nothing can fail from here on, so the unit is whole on return.
        unsafe {
            addr_of_mut!((*p).regs).write(regs);
            addr_of_mut!((*p).alloc).write(alloc);
            addr_of_mut!((*p).info).write(info);
            // Copied from a constant (no temporary on the stack), then given its root table;
            // the placeholder is overwritten, not dropped (it owns nothing).
            let config = addr_of_mut!((*p).config);
            config.write(ConfigState::EMPTY);
            addr_of_mut!((*config).get_mut().root).write(root);
            // An array is laid out as `DOMAINS` consecutive elements (the Reference, "Type
            // layout"): each is written in turn.
            let domains =
                addr_of_mut!((*p).domains).cast::<crate::sync::RwLock<Option<Domain<A>>>>();
            for i in 0..DOMAINS {
                domains.add(i).write(crate::sync::RwLock::new(None));
            }
            addr_of_mut!((*p).inval).write(crate::sync::Mutex::new(Invalidator::Off));
            // A constant, so that the 1 KiB buffer is copied straight into place, not built
            // on the stack first.
            // Only ever the initial value of the field, never borrowed.
            #[allow(clippy::declare_interior_mutable_const)]
            const STAGING: crate::sync::Mutex<Staging> = crate::sync::Mutex::new(Staging::new());
            addr_of_mut!((*p).staging).write(STAGING);
            #[allow(clippy::declare_interior_mutable_const)]
            const FLUSH_PLAN: crate::sync::Mutex<FlushPlan> =
                crate::sync::Mutex::new(FlushPlan::Nothing);
            addr_of_mut!((*p).flush_plan).write(FLUSH_PLAN);
            addr_of_mut!((*p).reclaim_gather)
                .write(crate::sync::Mutex::new(crate::pgtable::Gather::new()));
            addr_of_mut!((*p).undo_gather)
                .write(crate::sync::Mutex::new(crate::pgtable::Gather::new()));
            addr_of_mut!((*p).map_gather)
                .write(crate::sync::Mutex::new(crate::pgtable::Gather::new()));
            addr_of_mut!((*p).counters).write(Counters::default());
            addr_of_mut!((*p).prq).write(crate::sync::Mutex::new(None));
            #[allow(clippy::declare_interior_mutable_const)]
            const UNQUEUED: crate::sync::Mutex<page_requests::Unqueued> =
                crate::sync::Mutex::new(page_requests::Unqueued::EMPTY);
            addr_of_mut!((*p).unqueued).write(UNQUEUED);
            addr_of_mut!((*p).faults).write(crate::sync::Mutex::new(()));
        }
        Ok(())
    }

    /// What the unit decoded from its capability registers.
    pub const fn info(&self) -> &UnitInfo {
        &self.info
    }

    /// The register window.
    pub const fn regs(&self) -> &W {
        &self.regs
    }

    /// The page allocator.
    pub const fn allocator(&self) -> &A {
        &self.alloc
    }

    /// Invalidation requests issued so far.
    pub fn stats(&self) -> InvalidationStats {
        self.counters.snapshot()
    }

    /// Turns DMA remapping on (§11.4 Global Command Register, §6.5.3): `RTADDR` (root table
    /// and mode) with `SRTP`, the invalidation queue when `ECAP.QI` (else register-based
    /// invalidation), global context-cache, PASID-cache (scalable mode) and IOTLB invalidation,
    /// a whole device-TLB invalidation (§6.5.2.5, PASID-based §6.5.2.6 for a PASID) of every
    /// recorded ATS attachment and of every ATS attachment detached while the unit was off,
    /// all awaited, a write-buffer flush when `CAP.RWBF`, then `TE`, then, on a unit with
    /// protected memory regions (`CAP.PLMR` or `CAP.PHMR`), `PMEN.EPM` cleared if firmware (or
    /// tboot) left the regions on (`PMEN.PRS` set), and `PRS` awaited clear: the register
    /// descriptions (`PMEN_REG`) ask software to disable them once DMA remapping is set up, as
    /// with translation on they may keep blocking DMA the domains map. May be called again
    /// after [`disable`](Self::disable).
    ///
    /// Device TLBs: a global IOTLB invalidation does not reach them (§6.5.3), and while the
    /// unit was off every invalidation was dropped, yet an ATS device's ATC kept what it
    /// translated and its translated requests pass again once `TE` is set (legacy `TT = 01b`,
    /// scalable `DTE`). Device TLBs of devices this unit never attached with ATS (a previous
    /// owner's) are not touched here: each is invalidated whole by the device's first ATS
    /// attachment ([`attach_with`](Self::attach_with)).
    ///
    /// **Takeover.** On a unit found translating (`GSTS.TES` set by firmware or a previous
    /// kernel) translation is never turned off, since DMA would then pass untranslated: the
    /// unit is pointed at this unit's root table while `TE` stays set (the spec allows `SRTP`
    /// with translation on; every device not attached here is then blocked), the previous
    /// owner's queue gets a bounded time to drain and is turned off whether it drained or not
    /// (as Linux does), the queue errors it left (`FSTS.IQE/ITE/ICE`) are cleared so that they
    /// cannot stop the new queue, and the unit's own caches are invalidated globally (device
    /// TLBs as above). The previous owner's pages are never freed (they are not this unit's).
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the register that did not respond (`PMEN_REG.PRS`:
    /// [`Wait::ProtectedMemoryStatus`], with `TE` set and the regions possibly still on; a
    /// retry, a takeover of the running unit, completes it); [`Error::NoMemory`] for
    /// the queue; queue errors; [`Error::Unsupported`] when taking over a unit that runs in the
    /// other root-table mode (`RTADDR.TTM` may change only with translation off: call
    /// [`disable`](Self::disable) first, accepting untranslated DMA meanwhile); a device-TLB
    /// invalidation that fails (`FSTS.ITE`, `FSTS.ICE`, or a wait that times out): the queue
    /// runs, `TE` is not set yet (still set, in a takeover) and the device TLBs are still owed,
    /// so a retry issues them again. Each leaves the unit in a state a retry of `enable`
    /// completes. A takeover that fails after the root
    /// table was latched leaves translation on through this unit's tables with no invalidation
    /// interface: until a retried `enable` succeeds, every call that needs an invalidation
    /// fails with [`Error::UnexpectedState`] (`GSTS.TES`) rather than drop it.
    pub fn enable(&self) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        let mut inv = self.inval.lock();
        let budget = self.info.poll_budget;
        let ttm = match self.info.mode {
            Mode::Legacy => TranslationTableMode::Legacy,
            Mode::Scalable => TranslationTableMode::Scalable,
        };
        if regs::gsts(&self.regs).contains(Gsts::TES) {
            let rtaddr = self.regs.read64(regs::RTADDR_REG);
            if RootTableAddress::TTM.get(rtaddr) != ttm as u64 {
                return Err(Error::Unsupported {
                    what: "takeover of a unit running in the other root-table mode \
                           (RTADDR.TTM changes only with TE clear): disable it first",
                    value: rtaddr,
                });
            }
        }
        // With TE set this is the takeover's switch: from here on the new tables decide.
        write_root_table(
            &self.regs,
            RootTableAddress::new(cfg.root.pa(), ttm)?,
            budget,
        )?;
        self.stop_queue(&mut inv)?;
        *inv = if self.info.ecap.flags().contains(EcapFlags::QI) {
            let width = match self.info.mode {
                Mode::Legacy => DescriptorWidth::Bits128,
                Mode::Scalable => DescriptorWidth::Bits256,
            };
            let qc = QueueConfig {
                qs: self.info.queue_pages_log2,
                width,
                poll_budget: budget,
                haw: self.info.haw,
            };
            Invalidator::Queue(QueueCore::enable(&self.regs, &self.alloc, qc)?)
        } else {
            Invalidator::Registers
        };
        let mut batch = self.batch(&mut inv);
        batch.push(Request::ContextCache(ContextCacheScope::Global))?;
        if self.info.scalable() {
            batch.push(Request::PasidCache(PasidCacheScope::Global))?;
        }
        batch.push(Request::Iotlb(IotlbScope::Global))?;
        // A global IOTLB invalidation does not reach device TLBs (§6.5.3): every device TLB
        // that may hold translations this unit's books no longer back -- anything flushed or
        // detached while the unit was off, whose device-TLB invalidations were dropped -- is
        // invalidated whole, before `TE` (or, in a takeover, before this returns).
        let pasid_unit = self.info.pasid_bits > 0;
        for a in cfg.device_tlbs() {
            push_whole_device_tlb(&mut batch, &a, pasid_unit)?;
        }
        batch.finish()?;
        cfg.devtlb_owed = [None; MAX_DEVTLB_OWED];
        if self.info.cap.flags().contains(CapFlags::RWBF) {
            write_buffer_flush(&self.regs, budget)?;
        }
        set_persistent(
            &self.regs,
            PersistentCommand::TranslationEnable,
            true,
            budget,
        )?;
        // Only now: with TE clear the regions are all that keeps DMA off them.
        if self
            .info
            .cap
            .flags()
            .intersects(CapFlags::PLMR | CapFlags::PHMR)
        {
            regs::disable_protected_memory(&self.regs, budget)?;
        }
        Ok(())
    }

    /// Turns DMA remapping off (`TE` clear: DMA is no longer translated), then drains and
    /// turns off the invalidation queue and returns its pages. Tables, domains and attachments
    /// stay; [`enable`](Self::enable) turns everything back on.
    ///
    /// # Errors
    /// [`Error::Timeout`]; queue errors.
    pub fn disable(&self) -> Result<(), Error> {
        let mut inv = self.inval.lock();
        set_persistent(
            &self.regs,
            PersistentCommand::TranslationEnable,
            false,
            self.info.poll_budget,
        )?;
        self.stop_queue(&mut inv)
    }

    /// Whether `GSTS.TES` reads set.
    pub fn is_enabled(&self) -> bool {
        regs::gsts(&self.regs).contains(Gsts::TES)
    }

    /// Reports and clears every pending primary fault record (§7), for the embedder's fault
    /// interrupt handler (a threaded one: see below) or a poll loop. Bounded by `CAP.NFR + 1`
    /// records per call. Callable from any CPU: drains take turns under the unit's fault lock,
    /// a spin lock that does not mask interrupts and is held while `report` runs. So: do not
    /// call it from a hard interrupt handler that can interrupt a drain on the same CPU (that
    /// CPU would spin for ever); keep `report` short (other CPUs' drains spin meanwhile); and
    /// let `report` call nothing of this unit (copy the records out and act, e.g. detach a
    /// faulting device, after the call returns).
    pub fn drain_faults(&self, report: impl FnMut(u16, FaultRecord)) -> DrainSummary {
        self.drain_faults_at_most(usize::MAX, report)
    }

    /// As [`drain_faults`](Self::drain_faults), reporting and clearing at most `max` records:
    /// the others stay pending (`FSTS.PPF` stays set) for the next call.
    pub fn drain_faults_at_most(
        &self,
        max: usize,
        report: impl FnMut(u16, FaultRecord),
    ) -> DrainSummary {
        let _turn = self.faults.lock();
        drain_primary_faults(&self.regs, self.info.cap, max, report)
    }

    /// Drains and turns off the queue (if any) and returns its pages; the invalidator is off.
    fn stop_queue(&self, inv: &mut Invalidator) -> Result<(), Error> {
        match core::mem::replace(inv, Invalidator::Off) {
            Invalidator::Queue(mut q) => {
                if let Err(e) = q.disable(&self.regs) {
                    *inv = Invalidator::Queue(q);
                    return Err(e);
                }
                // SAFETY: the queue came from `QueueCore::enable` with `self.alloc`.
                if let Err((q, e)) = unsafe { q.release(&self.regs, &self.alloc) } {
                    *inv = Invalidator::Queue(q);
                    return Err(e);
                }
                Ok(())
            }
            Invalidator::Registers | Invalidator::Off => Ok(()),
        }
    }

    /// A batch on the locked invalidator.
    pub(crate) fn batch<'a>(&'a self, inv: &'a mut Invalidator) -> Batch<'a, W> {
        let cap = self.info.cap.flags();
        let params = BatchParams {
            iotlb_register_offset: self.info.ecap.iotlb_register_offset(),
            drain_reads: cap.contains(CapFlags::DRD),
            drain_writes: cap.contains(CapFlags::DWD),
            poll_budget: self.info.poll_budget,
            device_tlb_poll_budget: self.info.device_tlb_poll_budget,
        };
        // Never contended: every batch is made under `inval`, which `inv` proves held.
        Batch::new(&self.regs, inv, params, &self.counters, self.staging.lock())
    }

    /// Flushes the write buffer when `CAP.RWBF` requires it after table updates (the spec's
    /// "Write Buffer Flushing") and
    /// translation is on.
    pub(crate) fn flush_write_buffer(&self) -> Result<(), Error> {
        if !self.info.cap.flags().contains(CapFlags::RWBF) {
            return Ok(());
        }
        let inv = self.inval.lock();
        // Off with TE set (a failed takeover `enable`): the hardware walks these tables, so
        // the write buffer is flushed (a register command, needing no queue).
        if matches!(*inv, Invalidator::Off) && !self.is_enabled() {
            return Ok(());
        }
        self.counters
            .register_commands
            .fetch_add(1, Ordering::Relaxed);
        write_buffer_flush(&self.regs, self.info.poll_budget)
    }

    /// The slot a handle names, if in range.
    pub(crate) fn slot(&self, domain: DomainHandle) -> Result<usize, iommu::Error> {
        let slot = usize::from(domain.0);
        if slot < DOMAINS {
            Ok(slot)
        } else {
            Err(iommu::Error::InvalidDomain(domain))
        }
    }

    /// Builds a domain in a free slot.
    pub(crate) fn alloc_domain(
        &self,
        choice: Choice,
        cfg: &iommu::DomainConfig,
    ) -> Result<DomainHandle, iommu::Error> {
        for (slot, lock) in self.domains.iter().enumerate() {
            let Some(did) = self.info.did_of(slot) else {
                break;
            };
            let Some(mut guard) = lock.try_write() else {
                continue;
            };
            if guard.is_some() {
                continue;
            }
            let handle = DomainHandle(u16::try_from(slot).map_err(|_| iommu::Error::NoDomainIds)?);
            Domain::build_into(&mut guard, choice, self.alloc.clone(), did, &self.info, cfg)?;
            Domain::start_tracking(&mut guard)?;
            return Ok(handle);
        }
        Err(iommu::Error::NoDomainIds)
    }

    pub(crate) fn domain_lock(
        &self,
        domain: DomainHandle,
    ) -> Result<&crate::sync::RwLock<Option<Domain<A>>>, iommu::Error> {
        let slot = self.slot(domain)?;
        self.domains
            .get(slot)
            .ok_or(iommu::Error::InvalidDomain(domain))
    }

    /// Runs `f` on a live domain, its table shared.
    pub(crate) fn with_domain<R>(
        &self,
        domain: DomainHandle,
        f: impl FnOnce(&Domain<A>) -> R,
    ) -> Result<R, iommu::Error> {
        let guard = self.domain_lock(domain)?.read();
        let d = guard.as_ref().ok_or(iommu::Error::InvalidDomain(domain))?;
        Ok(f(d))
    }
}

/// A bounded wait, named for the `Iommu` layer.
const fn wait_name(what: Wait) -> &'static str {
    match what {
        Wait::GlobalStatus { .. } => "GSTS to reflect a GCMD command",
        Wait::ContextCommand => "CCMD.ICC to clear",
        Wait::IotlbInvalidate => "IOTLB_REG.IVT to clear",
        Wait::InvalidationWait { .. } => "the invalidation wait descriptor's status write",
        Wait::QueueSpace { .. } => "free invalidation-queue slots",
        Wait::QueueDrain => "the invalidation queue to drain",
        Wait::ProtectedMemoryStatus { .. } => "PMEN_REG.PRS to reflect EPM",
    }
}

impl From<Error> for iommu::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Timeout { what, .. } => iommu::Error::Timeout {
                what: wait_name(what),
            },
            Error::QueueError { kind, head } => iommu::Error::CommandError {
                what: match kind {
                    QueueErrorKind::InvalidQueueEntry => "invalidation queue error (FSTS.IQE)",
                    QueueErrorKind::InvalidationTimeout => {
                        "device-TLB invalidation time-out (FSTS.ITE)"
                    }
                    QueueErrorKind::InvalidationCompletion => {
                        "invalidation completion error (FSTS.ICE)"
                    }
                },
                code: u64::from(head),
            },
            Error::Unsupported { what, .. } => {
                iommu::Error::Unsupported(iommu::Missing::Mode { what })
            }
            Error::NoMemory => iommu::Error::NoMemory,
            Error::EntryPresent { .. } => iommu::Error::Busy,
            Error::InvalidArgument { what, value } => iommu::Error::InvalidArgument { what, value },
            Error::BatchTooLarge { len, .. } => iommu::Error::InvalidArgument {
                what: "invalidation batch larger than the queue",
                value: len as u64,
            },
            Error::InvalidationRejected { register } => iommu::Error::Hardware {
                what: "register-based invalidation ignored (actual granularity 0)",
                code: register,
            },
            Error::UnexpectedState { register, value } => iommu::Error::Hardware {
                what: register,
                code: value,
            },
            Error::TableOutOfRange { table, pa, haw } => iommu::Error::TableOutOfRange {
                table,
                pa,
                width: haw,
            },
        }
    }
}
