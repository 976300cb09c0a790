//! One SMMUv3: construction, enable/disable, events, and the state every operation shares.
//!
//! Arm IHI 0070 G.b §6.3.9 (CR0 and its CR0ACK handshake), §6.3.11/§6.3.12 (CR1, CR2),
//! §6.3.14 (GBPA), §6.3.23-§6.3.31 (stream table and queue base registers), §3.5 (queues),
//! §4.3/§4.4 (configuration and TLB invalidation at initialisation), §7.2/§6.3.18 (GERROR).
//!
//! ```text
//! let unit = SmmuUnit::new(regs, &alloc, SmmuConfig::default())?;  // reads IDR0-5
//! unit.enable()?;                                                   // tables, queues, SMMUEN
//! // then through the `Iommu` trait: domain_alloc, map, attach, unmap, flush, ...
//! ```
//!
//! Enable follows the initialisation sequence of §6.3.9 (and the order CR0 bits may be set):
//! 1. GBPA set to the configured behaviour for while SMMUEN = 0, then CR0 = 0 and wait for
//!    CR0ACK (firmware may have left queues or translation on; in the other order its traffic
//!    would follow the reset GBPA, bypass, between the two writes);
//! 2. IRQ_CTRL = 0 and wait for IRQ_CTRLACK; stale GERROR bits acknowledged; then (with
//!    `IDR0.MSI`) the `*_IRQ_CFG0` MSI addresses cleared: their reset value is UNKNOWN;
//! 3. allocate the stream table (every STE aborts), command and event queues;
//! 4. CR1 (cacheability of table and queue accesses, from `IDR0.COHACC` or the declared
//!    [`SmmuConfig::coherent_access`]), CR2 (RECINVSID);
//! 5. STRTAB_BASE, STRTAB_BASE_CFG; CMDQ_BASE/PROD/CONS; with `IDR0.ATS`, CR0.ATSCHK alone,
//!    CR0ACK (§6.3.9.2: it may be cached with STEs, so it changes while SMMUEN = 0, before
//!    the configuration invalidation of step 6); CR0.CMDQEN, CR0ACK;
//! 6. CMD_CFGI_ALL, CMD_TLBI_EL2_ALL (with `IDR0.HYP`), CMD_TLBI_NSNH_ALL, CMD_SYNC;
//! 7. EVENTQ_BASE/PROD/CONS; CR0.EVENTQEN, CR0ACK; with `IDR0.PRI`, PRIQ_BASE/PROD/CONS and
//!    CR0.PRIQEN, CR0ACK; IRQ_CTRL as configured;
//! 8. CR0.SMMUEN, CR0ACK;
//! 9. CMD_ATC_INV of the whole ATC of every ATS stream whose live STE allows ATS, each then
//!    CMD_SYNC: the re-initialisation of ATS clients §6.3.9.6 asks for on re-enable.
//!
//! While SMMUEN = 0 the unit ignores CMD_ATC_INV and CMD_PRI_RESP (§6.3.9.6, §4.5): the calls
//! that need one fail with [`SmmuError::AtcInvalidationIgnored`] or
//! [`SmmuError::PriResponseIgnored`] and keep what they owe (see [`SmmuUnit::disable`]). The
//! endpoints' PRI is re-initialised before the unit is enabled again, so clearing SMMUEN
//! forgets every page request group handed out (`page_faults.rs`).
//!
//! Locks (`spin`): configuration (stream table, streams, tag allocators) before a domain slot
//! before the command queue. Map and unmap take only their domain's slot for reading, so they
//! run concurrently on one domain and never wait on another domain or on configuration.
//! GERRORN is written only under the command queue's lock (`cmdq.rs`), `handle_events`'
//! acknowledgements included.

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use crate::sync::{Mutex, RwLock};

use super::attach::CommandStaging;

use super::cmd::Command;
use super::cmdq::{self, CommandQueue, SyncMode};
use super::domain::{Domain, TagAllocator, MAX_DOMAINS};
use super::event::Event;
use super::eventq::{DrainReport, EventQueue};
use super::features::Features;
use super::flush::DEFAULT_FLUSH_THRESHOLD;
use super::idr::{Idr, Idr0Flags};
use super::nested::{UserDomain, MAX_USER_DOMAINS};
use super::page_faults::{StallBook, EVENT_ROUND};
use super::platform::{DeviceFacts, Platform};
use super::priq::PriQueue;
use super::regs::{self, Cr0, Cr1, Cr2, Gbpa, Gerror, IrqCtrl};
use super::ste::S1Fmt;
use super::stream::{StreamState, MAX_STREAMS};
use super::strtab::{StreamTable, StrtabFormat};
use super::{CommandErrorKind, SmmuError, StreamId};
use crate::iommu::{DomainHandle, Error, Missing, Pasid, Source};
use crate::mem::{Iova, PageAllocator};
use crate::mmio::{RegisterWindow, DEFAULT_POLL_BUDGET};
use crate::pgtable::Gather;

/// Layout of the stream table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum StreamTableLayout {
    /// Two-level with 256-STE leaves when the unit has them (`IDR0.ST_LEVEL`) and more than 256
    /// StreamIDs are covered; linear otherwise.
    #[default]
    Auto,
    /// One array of `2^sid_bits` STEs.
    Linear,
    /// L1 descriptors and L2 tables of `2^split` STEs (split 6, 8 or 10), allocated when a
    /// StreamID in their span is first attached.
    TwoLevel {
        /// STRTAB_BASE_CFG.SPLIT.
        split: u32,
    },
}

/// What traffic gets while translation is off (GBPA, §6.3.14).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DisabledTraffic {
    /// Every transaction aborts (GBPA.ABORT = 1): nothing reaches memory untranslated.
    #[default]
    Abort,
    /// Transactions pass through untranslated (GBPA.ABORT = 0).
    Bypass,
}

/// How a unit is set up. `None` fields take a default that every unit supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuConfig {
    /// Stream table layout.
    pub stream_table: StreamTableLayout,
    /// StreamIDs covered: `2^sid_bits` (at most `IDR1.SIDSIZE`; default `min(SIDSIZE, 16)`).
    pub sid_bits: Option<u32>,
    /// SubstreamIDs per stream: `2^ssid_bits` CDs (at most `IDR1.SSIDSIZE`; default
    /// `min(SSIDSIZE, 10)`; 0 disables PASIDs).
    pub ssid_bits: Option<u32>,
    /// CD table layout when a table outgrows one leaf (two-level needs `IDR0.CD2L`; without it
    /// the table is linear).
    pub cd_format: S1Fmt,
    /// Command queue size, log2 entries (at most `IDR1.CMDQS`; default `min(CMDQS, 8)`).
    pub cmdq_log2: Option<u32>,
    /// Event queue size, log2 entries (at most `IDR1.EVENTQS`; default `min(EVENTQS, 7)`).
    pub eventq_log2: Option<u32>,
    /// PRI queue size, log2 entries, on a unit with `IDR0.PRI` (at most `IDR1.PRIQS`; default
    /// `min(PRIQS, 7)`). The queue is allocated and enabled by [`SmmuUnit::enable`]; the sum of
    /// the page request credits given to devices (their PRI capability's Outstanding Page
    /// Request Allocation) must not exceed it (IHI 0070 chapter 8).
    pub priq_log2: Option<u32>,
    /// How CMD_SYNC completion is observed (MSI needs `IDR0.MSI` and `COHACC`, SEV `IDR0.SEV`).
    pub sync: SyncMode,
    /// Register (or memory) polls before any wait on the unit gives up.
    pub poll_budget: u32,
    /// GBPA while translation is off, including after [`SmmuUnit::disable`].
    pub when_disabled: DisabledTraffic,
    /// Domains the unit may hold (at most [`MAX_DOMAINS`]).
    pub max_domains: usize,
    /// Range invalidation commands per flush before the whole VMID/ASID is invalidated.
    pub flush_threshold: u32,
    /// Interrupts to enable (IRQ_CTRL); empty by default: the embedder polls
    /// [`SmmuUnit::handle_events`] or enables them here and calls it from its handler.
    pub interrupts: IrqCtrl,
    /// What firmware (ACPI IORT, device tree) declares about the unit's devices: `CANWBS`,
    /// without which no domain enforces snooping, and DMA coherency (see
    /// [`platform`](super::platform)). Nothing is declared by default.
    pub platform: Platform,
    /// Take part in the CPUs' broadcast TLB maintenance (`CR2.PTM` = 0; needs `IDR0.BTM`).
    /// Off by default: `CR2.PTM` is set on a unit with `IDR0.BTM`, so that a CPU's TLBI for a
    /// VMID or ASID of its own never touches the unit's (the tags are the unit's, and collide
    /// with a hypervisor's).
    pub broadcast_tlb: bool,
    /// Granule of the unit's domains, log2 bytes: 12, 14 or 16 (the embedder's page size; it
    /// must be one of `IDR5.GRAN4K/16K/64K`). Default: 4 KiB when the unit has it, else 16 KiB,
    /// else 64 KiB. Blocks above it: 2 MiB and 1 GiB, 32 MiB, 512 MiB.
    pub granule_log2: Option<u32>,
    /// The SMMU's own access coherency (table walks, queues, MSIs) as firmware declares it,
    /// with where the claim comes from: ACPI IORT SMMUv3 node `COHACC Override`
    /// ([`UnitFacts::coherent_access_config`]), device tree `dma-coherent` on the SMMU node.
    /// It wins over `IDR0.COHACC` either way (the register may not describe the integration):
    /// it decides CR1's cacheability, whether table and queue writes are cleaned, whether MSI
    /// completion is possible, the default DMA coherency of undeclared devices, and the
    /// capability report's `coherent_walk` and its source. `None` (the default): follow
    /// `IDR0.COHACC`.
    ///
    /// [`UnitFacts::coherent_access_config`]: crate::firmware::iort::platform::UnitFacts::coherent_access_config
    pub coherent_access: Option<(bool, Source)>,
}

impl Default for SmmuConfig {
    fn default() -> Self {
        Self {
            stream_table: StreamTableLayout::Auto,
            sid_bits: None,
            ssid_bits: None,
            cd_format: S1Fmt::TwoLevel4K,
            cmdq_log2: None,
            eventq_log2: None,
            priq_log2: None,
            sync: SyncMode::PollCons,
            poll_budget: DEFAULT_POLL_BUDGET,
            when_disabled: DisabledTraffic::Abort,
            max_domains: MAX_DOMAINS,
            flush_threshold: DEFAULT_FLUSH_THRESHOLD,
            interrupts: IrqCtrl::empty(),
            platform: Platform::new(DeviceFacts::UNDECLARED),
            broadcast_tlb: false,
            granule_log2: None,
            coherent_access: None,
        }
    }
}

/// The configuration with every choice made against the unit's features.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub(crate) strtab: StrtabFormat,
    pub(crate) sid_bits: u32,
    pub(crate) ssid_bits: u32,
    pub(crate) cd_format: S1Fmt,
    pub(crate) cmdq_log2: u32,
    pub(crate) eventq_log2: u32,
    /// Only meaningful with `IDR0.PRI`.
    pub(crate) priq_log2: u32,
    pub(crate) sync: SyncMode,
    pub(crate) budget: u32,
    pub(crate) when_disabled: DisabledTraffic,
    pub(crate) max_domains: usize,
    pub(crate) flush_threshold: u32,
    pub(crate) interrupts: IrqCtrl,
    pub(crate) platform: Platform,
    /// `CR2.PTM`.
    pub(crate) private_tlb: bool,
    pub(crate) granule_log2: u32,
    /// Where `granule_log2` comes from.
    pub(crate) granule_source: Source,
}

fn bounded(
    what: &'static str,
    wanted: Option<u32>,
    default: u32,
    max: u32,
) -> Result<u32, SmmuError> {
    match wanted {
        None => Ok(default.min(max)),
        Some(log2) if log2 <= max => Ok(log2),
        Some(log2) => Err(SmmuError::SizeUnsupported {
            what,
            log2,
            max_log2: max,
        }),
    }
}

impl SmmuConfig {
    /// Checks the configuration against `f` and writes the resolved one to `out` (straight
    /// into the unit being built: a resolved configuration is 0.5 KiB). `out` is written only
    /// on success.
    pub(crate) fn resolve_into(
        &self,
        f: &Features,
        out: &mut MaybeUninit<Resolved>,
    ) -> Result<(), SmmuError> {
        let invalid = |reason| Err(SmmuError::InvalidConfig { reason });
        if !f.presets.is_empty() {
            return Err(SmmuError::Preset {
                idr1: f.presets.bits(),
            });
        }
        if !f.aarch64_tables {
            return invalid("IDR0.TTF: the unit walks no AArch64 tables");
        }
        if !f.little_endian_tables {
            return invalid("IDR0.TTENDIAN: the unit walks no little-endian tables");
        }
        if !f.s1p && !f.s2p {
            return invalid("IDR0: neither stage 1 nor stage 2");
        }
        let sid_bits = bounded("stream table", self.sid_bits, 16, f.sid_bits)?;
        let ssid_bits = if f.stage1_usable() {
            bounded("CD table", self.ssid_bits, 10, f.ssid_bits)?
        } else {
            0
        };
        let strtab = match self.stream_table {
            StreamTableLayout::Auto if f.two_level_strtab && sid_bits > 8 => {
                StrtabFormat::TwoLevel { split: 8 }
            }
            StreamTableLayout::Auto | StreamTableLayout::Linear => StrtabFormat::Linear,
            StreamTableLayout::TwoLevel { .. } if !f.two_level_strtab => {
                return invalid("a two-level stream table needs IDR0.ST_LEVEL = 1")
            }
            StreamTableLayout::TwoLevel { split } => StrtabFormat::TwoLevel { split },
        };
        match self.sync {
            SyncMode::Msi if !f.msi || !f.cohacc => {
                return invalid("MSI completion needs IDR0.MSI and a coherent SMMU (COHACC)")
            }
            SyncMode::Sev if !f.sev => return invalid("SEV completion needs IDR0.SEV"),
            _ => {}
        }
        self.platform.check()?;
        if self.broadcast_tlb && !f.btm {
            return invalid("broadcast TLB maintenance needs IDR0.BTM");
        }
        let (granule_log2, granule_source) = match self.granule_log2 {
            None => (f.granule_log2, Source::Register("IDR5.GRAN4K/16K/64K")),
            Some(g) if f.has_granule(g) => (g, Source::Embedder("SmmuConfig::granule_log2")),
            Some(_) => return invalid("the granule is not one of IDR5.GRAN4K/16K/64K"),
        };
        if self.max_domains > MAX_DOMAINS {
            return Err(SmmuError::FieldOutOfRange {
                field: "max_domains",
                value: self.max_domains as u64,
            });
        }
        out.write(Resolved {
            strtab,
            sid_bits,
            ssid_bits,
            cd_format: if f.cd2l {
                self.cd_format
            } else {
                S1Fmt::Linear
            },
            cmdq_log2: bounded("command queue", self.cmdq_log2, 8, f.cmdq_max_log2)?,
            eventq_log2: bounded("event queue", self.eventq_log2, 7, f.eventq_max_log2)?,
            priq_log2: if f.pri {
                bounded("PRI queue", self.priq_log2, 7, f.priq_max_log2)?
            } else {
                0
            },
            sync: self.sync,
            budget: self.poll_budget.max(1),
            when_disabled: self.when_disabled,
            max_domains: self.max_domains,
            flush_threshold: self.flush_threshold,
            interrupts: self.interrupts,
            platform: self.platform,
            private_tlb: f.btm && !self.broadcast_tlb,
            granule_log2,
            granule_source,
        });
        Ok(())
    }
}

/// Configuration state: changed by enable, attach, detach, domain allocation and free.
pub(crate) struct ConfigState<A: PageAllocator> {
    pub(crate) strtab: Option<StreamTable<A>>,
    pub(crate) streams: [Option<StreamState<A>>; MAX_STREAMS],
    pub(crate) vmids: TagAllocator,
    pub(crate) asids: TagAllocator,
    /// A stream record that remembered only that firmware forbids its device ATS was dropped
    /// to make room for another stream (`SmmuUnit::stream_index`): from then on `set_ats(true)`
    /// for a stream without a record is refused, since the unit can no longer tell.
    pub(crate) ats_forgotten: bool,
    /// Stream slots the flushes looked at (tests: a flush does no work proportional to the
    /// unit's streams unless the domain has ATS users, issue 18).
    #[cfg(test)]
    pub(crate) flush_stream_reads: core::sync::atomic::AtomicUsize,
}

impl<A: PageAllocator> ConfigState<A> {
    /// Unlocked, no stream table, no stream, no tag taken: a constant, so that writing it
    /// copies from read-only data rather than from a temporary built on the stack.
    // Each use is a fresh value written once into a new object: no lock is shared.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: Mutex<Self> = Mutex::new(ConfigState {
        strtab: None,
        streams: [const { None }; MAX_STREAMS],
        vmids: TagAllocator::new(),
        asids: TagAllocator::new(),
        ats_forgotten: false,
        #[cfg(test)]
        flush_stream_reads: core::sync::atomic::AtomicUsize::new(0),
    });
}

/// What [`SmmuUnit::handle_events`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventReport {
    /// The event queue drain.
    pub events: DrainReport,
    /// Global errors that were active, now acknowledged (`CMDQ_ERR` included when a command
    /// error was recovered), but for `SFM_ERR` (left active) and `MSI_CMDQ_ABT_ERR` (left to
    /// the command queue: the CMD_SYNC wait it concerns, or the next one, takes it).
    pub gerror: Gerror,
    /// The command error recovered, if any: a `CERROR_ILL` command was replaced by a CMD_SYNC;
    /// after `CERROR_ABT` or `CERROR_ATC_INV_SYNC` the command runs again. Either way the
    /// queue runs again.
    pub command_error: Option<SmmuError>,
}

/// An Arm SMMUv3 driven through the crate's [`Iommu`](crate::iommu::Iommu) trait.
///
/// `A` is cloned for every table the unit builds (stream table, queues, one per domain): every
/// clone must hand out and take back pages of the same pool, as `&Allocator` does. The unit is
/// `Send + Sync` when `W` and `A` are. Dropping a unit that still translates leaks its stream
/// table, CD tables and queues (the hardware may still use them); see its `Drop`.
pub struct SmmuUnit<W: RegisterWindow, A: PageAllocator + Clone> {
    pub(crate) regs: W,
    pub(crate) alloc: A,
    pub(crate) idr: Idr,
    pub(crate) features: Features,
    pub(crate) cfg: Resolved,
    pub(crate) config: Mutex<ConfigState<A>>,
    pub(crate) cmdq: Mutex<Option<CommandQueue<A>>>,
    /// The command batches' buffer: locked only by a batch, under `cmdq`.
    pub(crate) cmd_staging: Mutex<CommandStaging>,
    /// The pages a flush of an owing domain took from it (`flush_impl`), held while its
    /// whole-tag invalidation runs and empty otherwise: kept here rather than on the stack
    /// under the command queue. Taken first, before every other lock of the unit, and only
    /// by a flush of an owing domain, which it serializes (they serialize on `cmdq` anyway).
    pub(crate) owed_kept: Mutex<Gather>,
    pub(crate) eventq: Mutex<Option<EventQueue<A>>>,
    /// The PRI queue, on a unit with `IDR0.PRI` once enabled.
    pub(crate) priq: Mutex<Option<PriQueue<A>>>,
    /// `GERROR.PRIQ_ABT_ERR` was seen: requests may be lost, reported with the next drain.
    pub(crate) priq_lost: AtomicBool,
    /// Stalled transactions reported and not yet answered (`iopf_stall.rs`).
    pub(crate) stalls: Mutex<StallBook>,
    pub(crate) domains: [RwLock<Option<Domain<A>>>; MAX_DOMAINS],
    /// Domains whose stage 1 a guest owns (`nested.rs`): changed under `config`.
    pub(crate) user_domains: RwLock<[Option<UserDomain>; MAX_USER_DOMAINS]>,
    pub(crate) enabled: AtomicBool,
    /// Service failure mode was seen: every operation fails until `enable` finds it gone.
    pub(crate) failed: AtomicU32,
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// Reads IDR0-IDR5 and checks `cfg` against them. Nothing is allocated or written yet.
    ///
    /// # Errors
    ///
    /// [`SmmuError::InvalidConfig`] for a unit without AArch64 tables or translation, or a
    /// feature the configuration needs and the unit lacks; [`SmmuError::SizeUnsupported`] for a
    /// table or queue beyond the unit's limits.
    pub fn new(regs: W, alloc: A, cfg: SmmuConfig) -> Result<Self, SmmuError> {
        let mut slot = MaybeUninit::<Self>::uninit();
        // SAFETY: `slot` is ours, aligned and `size_of::<Self>()` bytes; it is read only after
        // `init_in_place` returned `Ok`, which means every field was written.
        unsafe {
            Self::init_in_place(NonNull::from(&mut slot).cast(), regs, alloc, &cfg)?;
            Ok(slot.assume_init())
        }
    }

    /// As [`SmmuUnit::new`], building the unit straight into `slot` (a unit is about 18 KiB:
    /// a kernel stack should hold no copy of it). Every field is written through its own
    /// pointer; the domain slots one at a time, so that no part larger than the configuration
    /// state (its per-stream array) is ever built as a temporary. Nothing relies on the
    /// memory's previous contents.
    ///
    /// The ID registers are read and `cfg` checked before the first write, and nothing is
    /// allocated: on error `slot` is left uninitialised and `regs` and `alloc` are dropped.
    ///
    /// # Errors
    /// As [`SmmuUnit::new`].
    ///
    /// # Safety
    /// `slot` is valid for writes of `size_of::<Self>()` bytes, aligned, and not in use: what
    /// it held is overwritten without being dropped. After `Ok` it holds a unit the caller
    /// must eventually drop in place.
    pub unsafe fn init_in_place(
        slot: NonNull<Self>,
        regs: W,
        alloc: A,
        cfg: &SmmuConfig,
    ) -> Result<(), SmmuError> {
        let idr = Idr::read(&regs);
        // The declared coherency replaces IDR0.COHACC here, once: every later decision reads
        // `features.cohacc`.
        let features = Features::from_idr(&idr).with_coherent_access(cfg.coherent_access);
        let p = slot.as_ptr();
        // SAFETY: the caller guarantees `slot` is writable and aligned; `MaybeUninit<Resolved>`
        // has `Resolved`'s layout. The field is written only if the configuration resolves,
        // before anything else is (on error the slot stays uninitialised).
        cfg.resolve_into(&features, unsafe {
            &mut *addr_of_mut!((*p).cfg).cast::<MaybeUninit<Resolved>>()
        })?;
        // SAFETY: the caller guarantees `slot` is writable and aligned; each field is written
        // exactly once, and nothing can fail from here on, so the unit is whole on return.
        unsafe {
            addr_of_mut!((*p).regs).write(regs);
            addr_of_mut!((*p).alloc).write(alloc);
            addr_of_mut!((*p).idr).write(idr);
            addr_of_mut!((*p).features).write(features);
            // Copied from a constant: no temporary on the stack.
            addr_of_mut!((*p).config).write(ConfigState::EMPTY);
            addr_of_mut!((*p).cmdq).write(Mutex::new(None));
            addr_of_mut!((*p).cmd_staging).write(Mutex::new(CommandStaging::new()));
            addr_of_mut!((*p).owed_kept).write(Mutex::new(Gather::new()));
            addr_of_mut!((*p).eventq).write(Mutex::new(None));
            addr_of_mut!((*p).priq).write(Mutex::new(None));
            addr_of_mut!((*p).priq_lost).write(AtomicBool::new(false));
            addr_of_mut!((*p).stalls).write(StallBook::EMPTY);
            // An array is laid out as `MAX_DOMAINS` consecutive elements (the Reference, "Type
            // layout"): each is written in turn.
            let domains = addr_of_mut!((*p).domains).cast::<RwLock<Option<Domain<A>>>>();
            for i in 0..MAX_DOMAINS {
                domains.add(i).write(RwLock::new(None));
            }
            addr_of_mut!((*p).user_domains).write(RwLock::new([None; MAX_USER_DOMAINS]));
            addr_of_mut!((*p).enabled).write(AtomicBool::new(false));
            addr_of_mut!((*p).failed).write(AtomicU32::new(0));
        }
        Ok(())
    }

    /// The ID registers as read at construction.
    pub fn idr(&self) -> &Idr {
        &self.idr
    }

    /// The decisions taken from them.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The register window.
    pub fn registers(&self) -> &W {
        &self.regs
    }

    /// Whether [`enable`](Self::enable) completed and [`disable`](Self::disable) was not called
    /// (nor service failure mode seen since).
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Whether the unit was found in service failure mode (`GERROR.SFM_ERR`) and not yet
    /// reset and enabled again: every operation fails with [`SmmuError::ServiceFailure`].
    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire) != 0
    }

    /// [`SmmuError::ServiceFailure`] once the unit has failed.
    pub(crate) fn usable(&self) -> Result<(), SmmuError> {
        match self.failed.load(Ordering::Acquire) {
            0 => Ok(()),
            gerror => Err(SmmuError::ServiceFailure { gerror }),
        }
    }

    /// Records service failure mode and turns the unit off: GBPA to the configured behaviour,
    /// then CR0 = 0, each within the budget (a failed unit may take neither; it already
    /// terminates every transaction, §12.3). SFM_ERR is left active: `enable` refuses while
    /// it is, and only a reset clears it.
    fn enter_failure(&self, gerror: u32) {
        let before = self
            .failed
            .swap(gerror | Gerror::SFM_ERR.bits(), Ordering::AcqRel);
        self.enabled.store(false, Ordering::Release);
        if before != 0 {
            // Turned off when the failure was first seen.
            return;
        }
        let _ = regs::update_gbpa(&self.regs, self.gbpa_value(), self.cfg.budget);
        let _ = regs::write_cr0(&self.regs, 0, self.cfg.budget);
    }

    /// Passes `r` on, failing the unit first if it reports service failure mode.
    pub(crate) fn note<R>(&self, r: Result<R, SmmuError>) -> Result<R, SmmuError> {
        if let Err(SmmuError::ServiceFailure { gerror }) = r {
            self.enter_failure(gerror);
        }
        r
    }

    fn gbpa_value(&self) -> Gbpa {
        let now = Gbpa::from_bits_retain(self.regs.read32(regs::GBPA)) - Gbpa::UPDATE;
        match self.cfg.when_disabled {
            DisabledTraffic::Abort => now | Gbpa::ABORT,
            DisabledTraffic::Bypass => now - Gbpa::ABORT,
        }
    }

    /// Allocates the stream table and queues (first call only), programs them and turns
    /// translation on, in the order of the module documentation. Streams attached before a
    /// [`disable`](Self::disable) keep their STEs. Once SMMUEN is set, the whole ATC of every
    /// ATS stream whose STE allows ATS is invalidated (the re-initialisation of ATS clients
    /// §6.3.9.6 asks for), one CMD_SYNC per stream, and waited for before it returns; if that
    /// fails the unit is turned off again and the error returned. A stream whose STE aborts
    /// (idle, or detached while disabled) is not waited on: its ATC is owed by the attach that
    /// turns its EATS on, or by the retried detach.
    ///
    /// `enable` starts by clearing `SMMUEN` (`CR0` = 0), which forgets the outstanding page
    /// requests and stalls as [`disable`](Self::disable) does: re-initialise the endpoints'
    /// PRI (PCIe Page Request Control: Reset, then Enable) before it, as §6.3.9.6 requires.
    ///
    /// It is also the way back from service failure mode: once the SMMU has been reset
    /// (`GERROR.SFM_ERR` no longer active), `enable` programs it again from the unit's books
    /// (stream table, queues, every attachment's STE and CD are still in memory), invalidates
    /// every configuration and TLB cache, and clears [`has_failed`](Self::has_failed).
    ///
    /// # Errors
    ///
    /// [`SmmuError::ServiceFailure`] while the SMMU is still in service failure mode (nothing
    /// is written); [`SmmuError::Cr0AckTimeout`], [`SmmuError::GbpaUpdateTimeout`],
    /// [`SmmuError::IrqCtrlAckTimeout`], [`SmmuError::NoMemory`], command queue errors: the
    /// unit is left off (translation disabled, GBPA as configured) with its tables; call
    /// `enable` again. [`SmmuError::AtcReinitTimeout`] names an ATS stream whose endpoint did
    /// not answer its ATC invalidation: retrying fails the same way while it stays dead;
    /// detach it (while disabled the detach writes its aborting STE, then fails with
    /// [`SmmuError::AtcInvalidationIgnored`]), then `enable` again.
    pub fn enable(&self) -> Result<(), SmmuError> {
        let active = Gerror::active(&self.regs);
        if active.contains(Gerror::SFM_ERR) {
            self.enter_failure(active.bits());
            return Err(SmmuError::ServiceFailure {
                gerror: active.bits(),
            });
        }
        let r = self.enable_locked();
        if r.is_ok() {
            self.failed.store(0, Ordering::Release);
        }
        self.note(r)
    }

    fn enable_locked(&self) -> Result<(), SmmuError> {
        // The unit's lock order (`page_faults.rs`): configuration, event queue, book, PRI
        // queue, command queue. (The command queue was taken before the event queue, and the
        // PRI queue before the book: against a drain, which takes the book then the PRI queue,
        // each waited for the other for ever.)
        let mut config = self.config.lock();
        let mut eventq = self.eventq.lock();
        let mut book = self.stalls.lock();
        let mut priq = self.priq.lock();
        let mut cmdq = self.cmdq.lock();
        let budget = self.cfg.budget;
        let coherency = self.features.coherency();
        // GBPA first: it governs traffic only once SMMUEN is clear, so setting it while a
        // previous owner's translation is still on is harmless, and clearing CR0 after it
        // never lets DMA through untranslated under the reset GBPA (bypass).
        regs::update_gbpa(&self.regs, self.gbpa_value(), budget)?;
        // Before the write: SMMUEN may clear before CR0ACK shows it (§6.3.9), and a timeout
        // must not leave `enabled` claiming the unit still acts on CMD_ATC_INV.
        self.enabled.store(false, Ordering::Release);
        regs::write_cr0(&self.regs, 0, budget)?;
        // SMMUEN is clear: every stalled transaction ended (§3.12.2), and every page request
        // group handed out belongs to the endpoints' PRI from before their re-initialisation
        // (§6.3.9.6).
        book.translation_ended(eventq.as_ref().map(|q| q.written(&self.regs)));
        self.quiesce_interrupts(budget)?;
        if config.strtab.is_none() {
            config.strtab = Some(StreamTable::new(
                self.alloc.clone(),
                self.cfg.strtab,
                self.cfg.sid_bits,
                coherency,
                self.features.oas,
            )?);
        }
        if cmdq.is_none() {
            *cmdq = Some(CommandQueue::new(
                self.alloc.clone(),
                self.cfg.cmdq_log2,
                self.features.cmdq_max_log2,
                coherency,
                self.cfg.sync,
                budget,
                self.features.oas,
            )?);
        }
        if eventq.is_none() {
            *eventq = Some(EventQueue::new(
                self.alloc.clone(),
                self.cfg.eventq_log2,
                self.features.eventq_max_log2,
                coherency,
                self.features.oas,
            )?);
        }
        if self.features.pri && priq.is_none() {
            *priq = Some(PriQueue::new(
                self.alloc.clone(),
                self.cfg.priq_log2,
                self.features.priq_max_log2,
                coherency,
                self.features.oas,
            )?);
        }
        let (Some(strtab), Some(cq), Some(eq)) =
            (config.strtab.as_ref(), cmdq.as_mut(), eventq.as_mut())
        else {
            return Err(SmmuError::InvalidConfig {
                reason: "tables missing after allocation",
            });
        };
        let cr1 = if self.features.cohacc {
            Cr1::COHERENT
        } else {
            Cr1::NON_COHERENT
        };
        self.regs.write32(regs::CR1, cr1.encode());
        // PTM (with IDR0.BTM; RES0 otherwise): a CPU's broadcast TLBI for its own VMIDs and
        // ASIDs must not reach the unit's, which are allocated apart from them.
        let mut cr2 = Cr2::RECINVSID;
        if self.cfg.private_tlb {
            cr2 |= Cr2::PTM;
        }
        self.regs.write32(regs::CR2, cr2.bits());
        strtab.program(&self.regs);
        strtab.check_programmed(&self.regs)?;
        cq.program(&self.regs);
        let mut cr0 = Cr0::empty();
        if self.features.ats {
            // Otherwise every ATS Translated transaction passes unchecked (§3.9.1): any
            // device, even one whose STE aborts, could reach any address by claiming its
            // requests were translated. In a CR0 write of its own, acknowledged, while SMMUEN
            // is clear (it may be cached with the STEs: §6.3.9.2 asks for every STE of ATS
            // traffic to be invalidated after it changes, which the CMD_CFGI_ALL below does).
            cr0 |= Cr0::ATSCHK;
            regs::write_cr0(&self.regs, cr0.bits(), budget)?;
        }
        cr0 |= Cr0::CMDQEN;
        regs::write_cr0(&self.regs, cr0.bits(), budget)?;
        cq.submit(&self.regs, &[Command::cfgi_all()])?;
        if self.features.hyp {
            cq.submit(&self.regs, &[Command::tlbi_el2_all()])?;
        }
        cq.submit_and_sync(&self.regs, &[Command::tlbi_nsnh_all()])?;
        eq.program(&self.regs);
        // Programmed empty: no record of a terminated stall is left unread.
        book.clear_fences();
        cr0 |= Cr0::EVENTQEN;
        regs::write_cr0(&self.regs, cr0.bits(), budget)?;
        if let Some(pq) = priq.as_mut() {
            // Software's credits were sized for an empty queue: requests lost before (while
            // the unit was off, every one was answered Response Failure) are not waited for.
            pq.program(&self.regs);
            self.priq_lost.store(false, Ordering::Release);
            cr0 |= Cr0::PRIQEN;
            regs::write_cr0(&self.regs, cr0.bits(), budget)?;
        }
        if !self.cfg.interrupts.is_empty() {
            regs::write_irq_ctrl(&self.regs, self.cfg.interrupts, budget)?;
        }
        regs::write_cr0(&self.regs, (cr0 | Cr0::SMMUEN).bits(), budget)?;
        if let Err(e) = self.reinit_atcs(&config, cq) {
            // Left off, as every other failure leaves it: the retry of `enable` sends them.
            let _ = regs::write_cr0(&self.regs, cr0.bits(), budget);
            return Err(e);
        }
        self.enabled.store(true, Ordering::Release);
        Ok(())
    }

    /// The re-initialisation of the ATS clients §6.3.9.6 asks for once SMMUEN is set again:
    /// the whole ATC of every ATS stream (Size 52 from 0, SSV = 0: an ATS Invalidation Request
    /// without a PASID prefix, which is what the stream-wide invalidations of `forget` send;
    /// Global is ignored with SSV = 0, §4.5.1), each followed by its CMD_SYNC. Only the
    /// streams whose live STE allows ATS: their STEs kept EATS while translation was off, and
    /// the unit ignored every CMD_ATC_INV sent meanwhile (none was: [`Self::atc_reachable`]).
    /// A stream whose STE aborts (detached, even while disabled: the STE is written before
    /// the ignored CMD_ATC_INV fails the detach) is left to its `atc_owed` or unsettled state.
    ///
    /// No freed page is reachable between SMMUEN = 1 and their completion: every flush that
    /// returned `Ok` (and so let its pages go) completed its CMD_ATC_INVs while translation
    /// was on, and while it was off every one that needed one failed and kept its pages (the
    /// domain owes the invalidation, a detached domain stays retiring and cannot be freed).
    /// While SMMUEN was 0 ATS Translation Requests were refused (Unsupported Request), so the
    /// ATCs gained nothing. What an ATC may hold now is a translation of a page still mapped or
    /// still kept.
    fn reinit_atcs(
        &self,
        config: &ConfigState<A>,
        cq: &mut CommandQueue<A>,
    ) -> Result<(), SmmuError> {
        let Some(strtab) = config.strtab.as_ref() else {
            return Ok(());
        };
        for s in config.streams.iter().flatten().filter(|s| s.ats) {
            // Only where the live STE lets the device use its ATC: one that aborts needs
            // nothing now (the write that turns its EATS on owes the whole ATC, `atc_owed`),
            // and an idle endpoint gone quiet (D3cold, removed) would time out every retry.
            if !strtab.read(s.sid)?.allows_ats() {
                continue;
            }
            // A CMD_SYNC per stream, so that a timeout names the endpoint to detach.
            let inv = Command::atc_inv(s.sid, None, Iova::ZERO, 52, false)?;
            cq.submit_and_sync(&self.regs, &[inv])
                .map_err(|e| match e {
                    SmmuError::CommandError {
                        kind: CommandErrorKind::AtcInvalidationSync,
                        ..
                    } => SmmuError::AtcReinitTimeout { sid: s.sid.0 },
                    e => e,
                })?;
        }
        Ok(())
    }

    /// [`SmmuError::AtcInvalidationIgnored`] while translation is off: the unit would ignore a
    /// CMD_ATC_INV for `sid` (§6.3.9.6). Read under the configuration lock, which `enable`
    /// and `disable` hold while they change it.
    pub(crate) fn atc_reachable(&self, sid: StreamId) -> Result<(), SmmuError> {
        if self.is_enabled() {
            Ok(())
        } else {
            Err(SmmuError::AtcInvalidationIgnored { sid: sid.0 })
        }
    }

    /// Turns every interrupt off (a previous owner may have left them on), acknowledges the
    /// global errors it left active and, on a unit that
    /// signals them by MSI (`IDR0.MSI`), clears the MSI addresses: their reset value is
    /// UNKNOWN, and 0 means no MSI write (§6.3.16, §6.3.19). The `*_IRQ_CFG0` registers may
    /// only change while their interrupt is disabled, hence the order.
    fn quiesce_interrupts(&self, budget: u32) -> Result<(), SmmuError> {
        regs::write_irq_ctrl(&self.regs, IrqCtrl::empty(), budget)?;
        // Errors a previous owner left active: an unacknowledged CMDQ_ERR keeps the command
        // queue stopped, and the first command queued here would be taken for the culprit.
        // `enable` holds the command queue's lock, as every GERRORN write must (`cmdq.rs`).
        let stale = Gerror::active(&self.regs);
        if !stale.is_empty() {
            Gerror::acknowledge(&self.regs, stale);
        }
        let f0 = self.idr.idr0.flags();
        if f0.contains(Idr0Flags::MSI) {
            self.regs.write64(regs::GERROR_IRQ_CFG0, 0);
            self.regs.write64(regs::EVENTQ_IRQ_CFG0, 0);
            if f0.contains(Idr0Flags::PRI) {
                self.regs.write64(regs::PRIQ_IRQ_CFG0, 0);
            }
        }
        Ok(())
    }

    /// Turns translation off: GBPA is set to the configured abort or bypass first, then
    /// CR0.SMMUEN cleared. The queues stay enabled, so configuration can still be invalidated.
    ///
    /// ATS streams may stay attached (a hypervisor turns the unit off to reset or hand it
    /// over, and cannot always reach its endpoints first), but §3.9 asks the embedder to have
    /// turned ATS off at the endpoints before: while SMMUEN is clear the unit answers no ATS
    /// Translation Request, aborts Translated transactions and ignores CMD_ATC_INV
    /// (§6.3.9.6). So, until [`enable`](Self::enable), every call that would have to
    /// invalidate an ATS stream's ATC (a flush, reclaim or free of a domain an ATS stream uses,
    /// a detach or replacing attach of one, the attach that turns its EATS on) fails with
    /// [`SmmuError::AtcInvalidationIgnored`] and keeps what it was to release; `enable`
    /// invalidates the whole ATC of every ATS stream whose STE allows ATS before it returns,
    /// and the retries complete. A detach while disabled writes the stream's aborting STE
    /// (CMD_CFGI_STE works with SMMUEN clear) before it fails, so a dead endpoint no longer
    /// holds `enable` back (see [`SmmuError::AtcReinitTimeout`]).
    ///
    /// Once the clear is acknowledged, every stalled transaction has ended (§3.12.2) and the
    /// unit ignores CMD_PRI_RESP: the unit forgets every stall and outstanding page request
    /// group it handed out, and starts a new [`generation`](crate::iopf::PageFault::generation)
    /// (an answer to one of them is `NotOutstanding`, nothing sent, even after a new fault with
    /// its group index or STAG). The embedder must re-initialise the endpoints' PRI (PCIe
    /// Page Request Control: Reset, then Enable) before `enable`, as §6.3.9.6 requires: the
    /// device is to forget the groups whose answers will never come. Until `enable`,
    /// [`Iommu::drain_page_faults`](crate::iommu::Iommu::drain_page_faults) drops what the PRI
    /// queue still holds, unanswered and not handed out
    /// ([`faults_discarded`](Self::faults_discarded)); the next drain sets `overflow` if a
    /// group could be left partial (a request that was not its group's last was handed out),
    /// so that `dispatch_page_faults` drops the contexts' partial groups of the unit.
    ///
    /// # Errors
    ///
    /// [`SmmuError::ServiceFailure`] on a failed unit (it was turned off when the failure was
    /// seen); [`SmmuError::GbpaUpdateTimeout`], [`SmmuError::Cr0AckTimeout`]: translation may
    /// still be on; call again. After a `Cr0AckTimeout` the unit counts as disabled all the
    /// same (SMMUEN may have cleared before the acknowledgement, §6.3.9): the calls that need a
    /// CMD_ATC_INV fail until `enable` succeeds.
    pub fn disable(&self) -> Result<(), SmmuError> {
        self.usable()?;
        // Lock order: configuration, event queue, book (`page_faults.rs`).
        let _config = self.config.lock();
        let eventq = self.eventq.lock();
        let mut book = self.stalls.lock();
        let budget = self.cfg.budget;
        regs::update_gbpa(&self.regs, self.gbpa_value(), budget)?;
        let cr0 = Cr0::from_bits_truncate(self.regs.read32(regs::CR0)) - Cr0::SMMUEN;
        // Before the write, whose effect may come before its acknowledgement (§6.3.9): on a
        // timeout translation may be off, and every CMD_ATC_INV may be ignored.
        self.enabled.store(false, Ordering::Release);
        regs::write_cr0(&self.regs, cr0.bits(), budget)?;
        // Every stalled transaction ended with SMMUEN (§3.12.2), and their STAGs may name new
        // stalls once it is set again; the endpoints' PRI is re-initialised before then
        // (§6.3.9.6), and may reuse group indexes: the book forgets both and fences off the
        // stalls' records.
        book.translation_ended(eventq.as_ref().map(|q| q.written(&self.regs)));
        Ok(())
    }

    /// Handles at most `max` event records with `handler` and acknowledges global errors: a
    /// command error is recovered (by its code, see [`cmdq`](super::cmdq)); `SFM_ERR` fails
    /// the unit (see [`SmmuError::ServiceFailure`]) and stays active; `MSI_CMDQ_ABT_ERR` is
    /// reported and left to the command queue (the CMD_SYNC wait whose MSI aborted must see
    /// it, to fail with [`SmmuError::SyncMsiAborted`] and fall back to polling CMDQ_CONS,
    /// rather than time out); the others are acknowledged and reported. For the embedder's
    /// interrupt handler, or to poll.
    ///
    /// Locks (`spin`): the event queue's while it drains (inside it the stall book's, and the
    /// command queue's to abort a stall it cannot file), released before the global errors;
    /// then the command queue's alone, only when a command error is active or an error other
    /// than the queue's and `SFM_ERR` is to be acknowledged. Every GERRORN write is made under
    /// that lock (a read-modify-write interleaved with a queue wait's would undo the wait's
    /// acknowledgement), and a command-queue call holds it for its whole wait, so
    /// `handle_events` may spin that long (each wait bounded by [`SmmuConfig::poll_budget`]).
    /// Call it from a context that cannot interrupt a unit operation on the same CPU (a
    /// threaded handler, or with the unit's other calls made with that interrupt masked): an
    /// interrupt that arrived while its CPU held one of these locks would spin for ever.
    /// `handler` runs with the event queue's lock held: it must not call this unit (an attach, detach, enable or disable
    /// takes the configuration lock, which comes before the event queue's): copy the records
    /// out and act on them after the call returns.
    pub fn handle_events(&self, max: usize, mut handler: impl FnMut(Event)) -> EventReport {
        let mut events = DrainReport {
            consumed: 0,
            overflowed: false,
            more: false,
        };
        // In rounds: a stall record is filed for the fault path (`page_faults`), and one the
        // unit's book has no room for is aborted at the end of the round, before the event
        // queue's lock is released: no termination or SMMUEN clear (which take it) can free
        // its STAG for a new stall before the abort is queued (§3.12.2).
        loop {
            let budget = (max - events.consumed).min(EVENT_ROUND);
            let mut abort = [None; EVENT_ROUND];
            let mut eventq = self.eventq.lock();
            let Some(q) = eventq.as_mut() else { break };
            let mut at = q.read();
            let round = q.drain(&self.regs, budget, |e| {
                let filed = self.file_stall(&e, at);
                at += 1;
                if let Some(a) = filed {
                    if let Some(slot) = abort.iter_mut().find(|s| s.is_none()) {
                        *slot = Some(a);
                    }
                }
                handler(e)
            });
            for (sid, stag) in abort.iter().flatten().copied() {
                let _ = self.abort_stall(sid, stag);
            }
            // Every record before `at` is filed or not a stall: a drain that finds the book
            // empty has handed out every stall numbered up to it (lock order: event queue,
            // book).
            self.stalls.lock().processed_until(at);
            drop(eventq);
            events.consumed += round.consumed;
            events.overflowed |= round.overflowed;
            events.more = round.more;
            if !round.more || events.consumed >= max {
                break;
            }
        }
        let gerror = Gerror::active(&self.regs);
        if gerror.contains(Gerror::SFM_ERR) {
            // Left active: acknowledging does not leave the mode (§12.3), and `enable` refuses
            // while it is active.
            self.enter_failure(gerror.bits());
        }
        if gerror.contains(Gerror::PRIQ_ABT_ERR) {
            // §8.2: PRI records may have been lost (their requests answered or not): the next
            // drain reports it, so that the groups they belonged to are dropped.
            self.priq_lost.store(true, Ordering::Release);
        }
        // Under the command queue's lock, as every GERRORN write; the queue's own errors are
        // left to it.
        let command_error = cmdq::acknowledge_global_errors(&self.cmdq, &self.regs, gerror);
        EventReport {
            events,
            gerror,
            command_error,
        }
    }

    /// Runs `f` with the command queue, or fails if the unit was never enabled.
    pub(crate) fn with_cmdq<R>(
        &self,
        f: impl FnOnce(&mut CommandQueue<A>, &W) -> Result<R, SmmuError>,
    ) -> Result<R, SmmuError> {
        self.usable()?;
        let mut guard = self.cmdq.lock();
        let q = guard.as_mut().ok_or(SmmuError::InvalidConfig {
            reason: "the unit is not enabled",
        })?;
        let r = f(q, &self.regs);
        // Failing the unit writes registers only: the queue's lock is not needed for it.
        drop(guard);
        self.note(r)
    }

    /// Whether the unit has ever had a command queue (tables may be cached only then).
    pub(crate) fn has_cmdq(&self) -> bool {
        self.cmdq.lock().is_some()
    }

    /// The slot of `d`, if it is a handle this unit could have issued.
    pub(crate) fn slot(&self, d: DomainHandle) -> Result<&RwLock<Option<Domain<A>>>, Error> {
        let i = usize::from(d.0);
        if i >= self.cfg.max_domains {
            return Err(Error::InvalidDomain(d));
        }
        self.domains.get(i).ok_or(Error::InvalidDomain(d))
    }
}

/// What dropping a unit gives up rather than frees ([`SmmuUnit::tear_down`]): memory lost
/// until reboot, which the owner should report (the C ABI's `IE_STATUS_LEAKED`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    /// The stream table, CD tables and queues are kept: the unit did not acknowledge turning
    /// off (CR0ACK), so it may still read or write them.
    pub tables: bool,
    /// Domains still allocated: a drop frees no domain's page tables.
    pub domains: u32,
}

impl Kept {
    /// Whether nothing is given up.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// Readies the unit for its drop and says what the drop will give up. The stream table,
    /// the CD tables and the queues go back to the allocator (in the drop) only once CR0ACK
    /// reads 0: then the unit walks no table, reads no command and writes no event record or
    /// CMD_SYNC MSI. A unit that was [`disable`](Self::disable)d (translation off, queues
    /// still on) gets its queues turned off here, within the poll budget. A unit still
    /// translating, or one whose queues do not acknowledge, keeps them: they are leaked
    /// ([`Kept::tables`]), since DMA into or out of freed pages is worse than lost memory.
    /// Domain page tables are never freed by a drop ([`Kept::domains`]): free the domains
    /// first. The drop calls it too; a second call finds nothing more to keep.
    pub fn tear_down(&mut self) -> Kept {
        let domains = (self.domains.iter_mut())
            .filter_map(|d| d.get_mut().as_ref())
            .count() as u32;
        let config = self.config.get_mut();
        if config.strtab.is_none() && self.cmdq.get_mut().is_none() {
            return Kept {
                tables: false,
                domains,
            };
        }
        let ack = self.regs.read32(regs::CR0ACK);
        let quiet = ack == 0
            || (ack & Cr0::SMMUEN.bits() == 0
                && regs::write_cr0(&self.regs, 0, self.cfg.budget).is_ok());
        if !quiet {
            core::mem::forget(config.strtab.take());
            for stream in config.streams.iter_mut().flatten() {
                core::mem::forget(stream.cd.take());
            }
            core::mem::forget(self.cmdq.get_mut().take());
            core::mem::forget(self.eventq.get_mut().take());
            core::mem::forget(self.priq.get_mut().take());
        }
        Kept {
            tables: !quiet,
            domains,
        }
    }
}

impl<W: RegisterWindow, A: PageAllocator + Clone> Drop for SmmuUnit<W, A> {
    /// Frees what [`SmmuUnit::tear_down`] does not keep.
    fn drop(&mut self) {
        let _ = self.tear_down();
    }
}

// SAFETY: every field is `Send` for `W: Send, A: Send` (the tables and queues own their pages,
// see their `Send` impls); nothing is tied to the creating thread.
unsafe impl<W: RegisterWindow + Send, A: PageAllocator + Clone + Send> Send for SmmuUnit<W, A> {}
// SAFETY: shared access goes through `spin` locks (configuration, queues, domain slots) or is
// read-only (registers as read at construction, features, configuration); the register window
// is `Sync`, and page-table memory is only touched through atomics (`PageTable` is `Sync`).
unsafe impl<W: RegisterWindow + Sync, A: PageAllocator + Clone + Send + Sync> Sync
    for SmmuUnit<W, A>
{
}

impl From<SmmuError> for Error {
    /// Maps the driver's errors onto the trait's, keeping the offending values: waits become
    /// [`Error::Timeout`]; a command error becomes [`Error::CommandError`] with code
    /// `index << 16 | opcode << 8 | CERROR`; a value the unit cannot express (a caller, allocator
    /// or configuration bug) [`Error::InvalidArgument`]; configuration refusals
    /// [`Error::Unsupported`]; the unit's own conditions (service failure, an aborted
    /// completion MSI, an ignored register write) [`Error::Hardware`].
    fn from(e: SmmuError) -> Self {
        match e {
            SmmuError::NoMemory { .. } => Error::NoMemory,
            SmmuError::EmptyDeclaration { first, last } => Error::InvalidArgument {
                what: "SmmuConfig::platform: empty StreamID range (first << 32 | last)",
                value: u64::from(first.0) << 32 | u64::from(last.0),
            },
            SmmuError::TooManyDeclarations { first, last, .. } => Error::InvalidArgument {
                what: "SmmuConfig::platform: a range beyond MAX_DECLARATIONS (first << 32 | last)",
                value: u64::from(first.0) << 32 | u64::from(last.0),
            },
            SmmuError::TableOutOfRange { table, pa, oas } => Error::TableOutOfRange {
                table,
                pa,
                width: oas,
            },
            SmmuError::SyncTimeout { .. } => Error::Timeout { what: "CMD_SYNC" },
            SmmuError::CommandQueueFull { .. } => Error::Timeout {
                what: "command queue space",
            },
            SmmuError::Cr0AckTimeout { .. } => Error::Timeout { what: "CR0ACK" },
            SmmuError::RegisterIgnored {
                register, found, ..
            } => Error::Hardware {
                what: register,
                code: found,
            },
            SmmuError::IrqCtrlAckTimeout { .. } => Error::Timeout {
                what: "IRQ_CTRLACK",
            },
            SmmuError::GbpaUpdateTimeout { .. } => Error::Timeout {
                what: "GBPA.UPDATE",
            },
            SmmuError::CommandError {
                index,
                opcode,
                kind,
            } => Error::CommandError {
                what: match kind {
                    CommandErrorKind::Illegal => "command rejected (CMDQ_CONS.ERR CERROR_ILL)",
                    CommandErrorKind::Abort => "command fetch abort (CMDQ_CONS.ERR CERROR_ABT)",
                    CommandErrorKind::AtcInvalidationSync => {
                        "ATS invalidation timed out (CMDQ_CONS.ERR CERROR_ATC_INV_SYNC)"
                    }
                    CommandErrorKind::Other(_) => "command error (CMDQ_CONS.ERR)",
                },
                code: u64::from(index) << 16 | u64::from(opcode) << 8 | u64::from(kind.code()),
            },
            SmmuError::SyncMsiAborted { address } => Error::Hardware {
                what: "CMD_SYNC completion MSI aborted (GERROR.MSI_CMDQ_ABT_ERR): retry",
                code: address,
            },
            SmmuError::ServiceFailure { gerror } => Error::Hardware {
                what: "SMMU in service failure mode (GERROR.SFM_ERR): reset it, then enable",
                code: gerror.into(),
            },
            SmmuError::AtcInvalidationIgnored { sid } => Error::Hardware {
                what: "SMMU translation disabled (CR0.SMMUEN = 0): CMD_ATC_INV ignored for this StreamID; enable, then retry",
                code: sid.into(),
            },
            SmmuError::AtcReinitTimeout { sid } => Error::Hardware {
                what: "SMMU enable: ATS invalidation timed out (CERROR_ATC_INV_SYNC) for this StreamID; detach it, then enable",
                code: sid.into(),
            },
            SmmuError::PriResponseIgnored { sid } => Error::Hardware {
                what: "SMMU translation disabled (CR0.SMMUEN = 0): CMD_PRI_RESP ignored for this StreamID; the fault stays outstanding",
                code: sid.into(),
            },
            SmmuError::StreamIdOutOfRange { sid, .. } => {
                Error::InvalidDevice(crate::iommu::DeviceId(sid))
            }
            SmmuError::SubstreamIdOutOfRange { ssid, log2 } => match Pasid::new(ssid) {
                Some(p) => Error::InvalidPasid(p),
                None => Error::Unsupported(Missing::Pasid { bits: log2 }),
            },
            SmmuError::DescriptorLive { .. } => Error::Busy,
            SmmuError::Preset { .. } => Error::Unsupported(Missing::Mode {
                what: "preset tables or queues (IDR1.TABLES_PRESET, QUEUES_PRESET, REL)",
            }),
            SmmuError::InvalidConfig { reason } => {
                Error::Unsupported(Missing::Mode { what: reason })
            }
            SmmuError::FieldOutOfRange { field, value } => {
                Error::InvalidArgument { what: field, value }
            }
            SmmuError::AddressMisaligned { field, address, .. }
            | SmmuError::AddressTooWide { field, address, .. } => Error::InvalidArgument {
                what: field,
                value: address,
            },
            SmmuError::SizeUnsupported { what, log2, .. } => Error::InvalidArgument {
                what,
                value: log2.into(),
            },
            SmmuError::NotMapped { address } => Error::InvalidArgument {
                what: "table not mapped by the allocator",
                value: address,
            },
        }
    }
}
