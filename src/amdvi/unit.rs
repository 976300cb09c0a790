//! One AMD-Vi unit: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §3.4 "IOMMU MMIO Registers" (base registers, Control, Status; enabling),
//! §2.2.2 "Device Table", §2.4 "Commands" and §2.5 "Event Logging".
//!
//! [`AmdViUnit`] owns the register window, the device table, the command buffer and the event
//! log (and, with the v1 format, its domains: see `iommu_impl`).
//!
//! Locking (always in this order): the configuration lock (device table, attachments), a
//! domain's lock, the command lock (command buffer), the event lock (event log).
//!
//! **Enable and takeover.** [`AmdViUnit::enable`] programs the device table, the command buffer
//! and the event log, turns off the exclusion range (`ExEn`: DMA to it would bypass
//! translation), sets `GTEn` where EFR `GTSup` says so (before any entry with `GV` exists:
//! with it clear a PASID attach's entry would pass requests without PASID untranslated),
//! then sets `CmdBufEn`, `EventLogEn` and `IommuEn`, and invalidates every cache
//! before it returns: `INVALIDATE_IOMMU_ALL` where EFR `IASup` says so, else
//! INVALIDATE_DEVTAB_ENTRY and INVALIDATE_INTERRUPT_TABLE for every device ID of the table and
//! INVALIDATE_IOMMU_PAGES (all pages, PDE) for every domain ID this unit uses (the domain
//! slots' and the GCR3 tables'), as Linux's driver does without `IASup`; there the guest
//! (PASID-tagged) entries of a GCR3 table's ID are invalidated, PASID by PASID, when the ID is
//! first given out. Control is written from a known value (the bits this driver sets, and the
//! platform's IVHD bits `HtTunEn`, `PassPW`, `ResPassPW`, `Isoc` as found): nothing else a
//! previous owner set survives (its PPR and guest APIC logs, `DevTblSegEn`, `XTEn`...). On a
//! unit found enabled (`IommuEn` set by
//! firmware or a previous kernel) the base registers may change only with `IommuEn` clear: the
//! takeover stops the previous owner's command buffer and event log (bounded waits on their
//! run bits), clears `IommuEn`, clears Status (write 1 to clear: QEMU ignores an Event Log
//! Base write while `EventLogInt` is set), and programs and enables the unit again. Between the clear and
//! the set of `IommuEn` (a few register writes) DMA is not translated: accepted and documented
//! (ARCHITECTURE.md, "Platform facts"); an embedder that cannot accept it stops bus mastering
//! first. The previous owner's pages are never freed (they are not this unit's).

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};

use super::cmd::{self, Command, InvalidationRange};
use super::cmdbuf::{CommandBuffer, StopLog};
use super::devtab::DeviceTable;
use super::domain::{on_table, Domain};
use super::dte::{self, DeviceTableEntry, Store128};
use super::efr::{Efr, Efr2, EfrFlags};
use super::event::{Event, EventCode};
use super::eventlog::{DrainSummary, EventLog};
use super::gcr3::Gcr3Table;
use super::regs::{self, Control, Status};
use super::{CommandErrorKind, Error};
use crate::iommu::Pasid;
use crate::mem::{PageAllocator, PhysAddr, WalkerCoherency, PAGE_SHIFT_4K};
use crate::mmio::{RegisterWindow, DEFAULT_POLL_BUDGET};

/// Command buffer length unless told otherwise: 2^9 = 512 commands (8 KiB), as Linux.
pub const DEFAULT_COMMAND_LEN_LOG2: u32 = 9;
/// Event log length unless told otherwise: 2^9 = 512 events (8 KiB), as Linux.
pub const DEFAULT_EVENT_LEN_LOG2: u32 = 9;
/// Domains a unit holds unless told otherwise (domain IDs 1..=64; ID 0 tags nothing: blocking
/// entries carry it).
pub const DEFAULT_DOMAINS: usize = 64;
/// Output width unless told otherwise: 48 bits (every physical address of today's AMD servers
/// below 256 TiB).
pub const DEFAULT_OUTPUT_BITS: u32 = 48;
/// Device attachments one unit tracks (a device's requests without PASID and each of its
/// PASIDs count one each).
pub const MAX_ATTACHMENTS: usize = 256;
/// Devices with a GCR3 table (PASIDs attached) one unit tracks.
pub const MAX_GCR3_TABLES: usize = 64;
/// The `DomainID` of the `i`-th GCR3 table's device entry is `GCR3_DOMAIN_ID_BASE + i`: above
/// every domain slot's ID (a unit with this many domain slots is refused).
pub const GCR3_DOMAIN_ID_BASE: u16 = 0xFF00;
/// Device IDs the device table covers unless told otherwise: bus 0 (one 8 KiB table).
pub const DEFAULT_DEVICE_IDS: u32 = 256;

/// How to run a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdViConfig {
    /// Register and memory polls before any wait fails with [`Error::Timeout`].
    pub poll_budget: u32,
    /// Device IDs `0..device_ids` the device table covers (1..=65536; the ACPI IVRS device
    /// range). Requests from IDs beyond are refused by the unit (the table's `Size`).
    pub device_ids: u32,
    /// `ComLen`: 2^n commands (8..=15).
    pub command_len_log2: u32,
    /// `EventLen`: 2^n events (8..=15).
    pub event_len_log2: u32,
    /// The system's physical address width, 32..=52 (no unit register reports it: the CPU's
    /// `MAXPHYADDR`, CPUID 0x8000_0008): the output width of every domain.
    pub output_bits: u32,
    /// The widest IOVA the platform lets the unit translate (ACPI `IVinfo.VAsize`), 32..=64:
    /// a domain is never wider. 64 (the default): `EFR.HATS` alone decides.
    pub input_bits: u32,
    /// The unit may cache not-present entries (PCI capability header `NpCache`, bit 26): every
    /// map is then followed by an INVALIDATE_IOMMU_PAGES of its range. QEMU's `amd-iommu`
    /// reports it set.
    pub np_cache: bool,
}

impl AmdViConfig {
    /// The defaults: [`DEFAULT_POLL_BUDGET`], [`DEFAULT_DEVICE_IDS`], 512-entry buffer and log.
    pub const fn new() -> Self {
        Self {
            poll_budget: DEFAULT_POLL_BUDGET,
            device_ids: DEFAULT_DEVICE_IDS,
            command_len_log2: DEFAULT_COMMAND_LEN_LOG2,
            event_len_log2: DEFAULT_EVENT_LEN_LOG2,
            output_bits: DEFAULT_OUTPUT_BITS,
            input_bits: 64,
            np_cache: true,
        }
    }

    /// With the device table covering `device_ids` IDs.
    pub const fn with_device_ids(mut self, device_ids: u32) -> Self {
        self.device_ids = device_ids;
        self
    }
}

impl Default for AmdViConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What the unit read from EFR/EFR2 and decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitInfo {
    /// EFR.
    pub efr: Efr,
    /// EFR2.
    pub efr2: Efr2,
    /// Most levels of a host (v1) table (EFR `HATS`).
    pub host_levels: u32,
    /// EFR `PASmax` + 1 with `GTSup`, else 0: what the unit reports (attachments take PASIDs
    /// only with `GIoSup` too, see `Iommu::capabilities`).
    pub pasid_bits: u32,
    /// Polls per wait.
    pub poll_budget: u32,
    /// `ComLen`.
    pub command_len_log2: u32,
    /// `EventLen`.
    pub event_len_log2: u32,
    /// Output width of domains.
    pub output_bits: u32,
    /// Most input width of domains ([`AmdViConfig::input_bits`]).
    pub input_bits: u32,
    /// Maps invalidate their range ([`AmdViConfig::np_cache`]).
    pub np_cache: bool,
}

impl UnitInfo {
    fn decode(efr: Efr, efr2: Efr2, config: &AmdViConfig) -> Result<Self, Error> {
        if config.poll_budget == 0 {
            return Err(Error::InvalidArgument {
                what: "poll_budget (at least 1)",
                value: 0,
            });
        }
        for len in [config.command_len_log2, config.event_len_log2] {
            if !(regs::RING_LEN_MIN..=regs::RING_LEN_MAX).contains(&len) {
                return Err(Error::InvalidArgument {
                    what: "command_len_log2 / event_len_log2 (8..=15)",
                    value: u64::from(len),
                });
            }
        }
        if !(32..=52).contains(&config.output_bits) {
            return Err(Error::InvalidArgument {
                what: "output_bits (32..=52)",
                value: u64::from(config.output_bits),
            });
        }
        if !(32..=64).contains(&config.input_bits) {
            return Err(Error::InvalidArgument {
                what: "input_bits (32..=64)",
                value: u64::from(config.input_bits),
            });
        }
        let host_levels = efr.host_levels().ok_or(Error::Unsupported {
            what: "EFR HATS (reserved encoding)",
            value: efr.0,
        })?;
        Ok(Self {
            efr,
            efr2,
            host_levels,
            pasid_bits: efr.pasid_bits(),
            poll_budget: config.poll_budget,
            command_len_log2: config.command_len_log2,
            event_len_log2: config.event_len_log2,
            output_bits: config.output_bits,
            input_bits: config.input_bits,
            np_cache: config.np_cache,
        })
    }
}

/// Commands issued, by kind (counts only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CommandStats {
    /// Commands written to the buffer (COMPLETION_WAITs included).
    pub commands: u64,
    /// COMPLETION_WAITs.
    pub waits: u64,
    /// Commands replaced after the unit stopped on them.
    pub recoveries: u64,
}

/// An AMD-Vi unit.
///
/// Dropping it leaks its pages (the hardware may hold their addresses): [`disable`] it first,
/// then [`release`](Self::release) it.
///
/// [`disable`]: Self::disable
pub struct AmdViUnit<W: RegisterWindow, A: PageAllocator, const DOMAINS: usize = DEFAULT_DOMAINS> {
    pub(crate) regs: W,
    pub(crate) alloc: A,
    pub(crate) info: UnitInfo,
    pub(crate) config: crate::sync::Mutex<ConfigState>,
    pub(crate) domains: [crate::sync::RwLock<Option<Domain<A>>>; DOMAINS],
    pub(crate) cmd: crate::sync::Mutex<Option<CommandBuffer>>,
    /// The gather of a reclaim (112 bytes, which a kernel stack should not carry under the
    /// flush): locked only by `reclaim`, under the configuration lock (so never contended);
    /// empty whenever it is unlocked.
    pub(crate) reclaim_gather: crate::sync::Mutex<crate::pgtable::Gather>,
    /// The gather of a failed map's undo (`undo_map`), for the same reason: locked only
    /// there, before any other lock of the unit (undos serialize); empty whenever it is
    /// unlocked.
    pub(crate) undo_gather: crate::sync::Mutex<crate::pgtable::Gather>,
    pub(crate) events: crate::sync::Mutex<Option<EventLog>>,
    /// The 128-bit store a live device table entry needs (checked in `new`).
    pub(crate) cx16: Store128,
}

impl<W: RegisterWindow, A: PageAllocator, const DOMAINS: usize> AmdViUnit<W, A, DOMAINS> {
    /// Reads EFR/EFR2 through `regs`, checks the configuration and allocates the device table
    /// (every entry blocking). Nothing is written to the unit until [`enable`](Self::enable).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`], [`Error::Unsupported`] (also for a processor without
    /// `CMPXCHG16B`, which live device table entries need), [`Error::NoMemory`],
    /// [`Error::TableOutOfRange`].
    pub fn new(regs: W, alloc: A, config: AmdViConfig) -> Result<Self, Error> {
        let mut slot = MaybeUninit::<Self>::uninit();
        // SAFETY: `slot` is ours, aligned and `size_of::<Self>()` bytes; it is read only after
        // `init_in_place` returned `Ok`, which means every field was written.
        unsafe {
            Self::init_in_place(NonNull::from(&mut slot).cast(), regs, alloc, config)?;
            Ok(slot.assume_init())
        }
    }

    /// As [`new`](Self::new), building the unit straight into `slot` (with its domain slots and
    /// attachment list a unit is tens of KiB: a kernel stack should hold no copy of it). Every
    /// field is written through its own pointer, the domain slots one at a time. Everything
    /// that can fail (EFR decoding, the device table's page) happens before the first write:
    /// on error `slot` is left uninitialised and `regs` and `alloc` are dropped.
    ///
    /// # Errors
    /// As [`new`](Self::new).
    ///
    /// # Safety
    /// `slot` is valid for writes of `size_of::<Self>()` bytes, aligned, and not in use: what it
    /// held is overwritten without being dropped. After `Ok` it holds a unit the caller must
    /// eventually drop or release ([`release`](Self::release),
    /// [`release_in_place`](Self::release_in_place)).
    pub unsafe fn init_in_place(
        slot: NonNull<Self>,
        regs: W,
        alloc: A,
        config: AmdViConfig,
    ) -> Result<(), Error> {
        if DOMAINS >= usize::from(GCR3_DOMAIN_ID_BASE) {
            return Err(Error::InvalidArgument {
                what: "DOMAINS (domain IDs below GCR3_DOMAIN_ID_BASE)",
                value: DOMAINS as u64,
            });
        }
        let cx16 = Store128::detect().ok_or(Error::Unsupported {
            what: "CMPXCHG16B (CPUID.01H:ECX.CX16) for 128-bit device table entry stores",
            value: 0,
        })?;
        let efr = Efr(regs.read64(regs::EXT_FEATURE));
        let efr2 = Efr2(regs.read64(regs::EXT_FEATURE2));
        let info = UnitInfo::decode(efr, efr2, &config)?;
        let devtab = DeviceTable::new(&alloc, config.device_ids, WalkerCoherency::Coherent)?;
        let p = slot.as_ptr();
        // SAFETY: the caller guarantees `slot` is writable and aligned; each field is written
        // exactly once, and nothing can fail from here on, so the unit is whole on return.
        unsafe {
            addr_of_mut!((*p).regs).write(regs);
            addr_of_mut!((*p).alloc).write(alloc);
            addr_of_mut!((*p).info).write(info);
            // The mutex, then its state field by field: the attachment list is written in
            // place, not built on the stack first.
            let cfg = addr_of_mut!((*p).config);
            cfg.write(ConfigState::EMPTY);
            // The placeholder is overwritten, not dropped (it owns nothing).
            addr_of_mut!((*cfg).get_mut().devtab).write(devtab);
            // An array is laid out as `DOMAINS` consecutive elements (the Reference, "Type
            // layout"): each is written in turn.
            let domains =
                addr_of_mut!((*p).domains).cast::<crate::sync::RwLock<Option<Domain<A>>>>();
            for i in 0..DOMAINS {
                domains.add(i).write(crate::sync::RwLock::new(None));
            }
            addr_of_mut!((*p).cmd).write(crate::sync::Mutex::new(None));
            addr_of_mut!((*p).reclaim_gather)
                .write(crate::sync::Mutex::new(crate::pgtable::Gather::new()));
            addr_of_mut!((*p).undo_gather)
                .write(crate::sync::Mutex::new(crate::pgtable::Gather::new()));
            addr_of_mut!((*p).events).write(crate::sync::Mutex::new(None));
            addr_of_mut!((*p).cx16).write(cx16);
        }
        Ok(())
    }

    /// What the unit decoded.
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

    /// Whether `Control.IommuEn` reads set.
    pub fn is_enabled(&self) -> bool {
        regs::control(&self.regs).contains(Control::IOMMU_EN)
    }

    /// Device IDs the device table covers.
    pub fn device_ids(&self) -> u32 {
        self.config.lock().devtab.device_ids()
    }

    /// Commands issued so far.
    pub fn command_stats(&self) -> CommandStats {
        self.cmd
            .lock()
            .as_ref()
            .map_or(CommandStats::default(), |c| CommandStats {
                commands: c.commands,
                waits: c.waits,
                recoveries: c.recoveries,
            })
    }

    /// Turns translation on (see the module: enable, takeover, global invalidation).
    ///
    /// # Errors
    /// [`Error::Timeout`] naming the run bit or the completion wait; [`Error::NoMemory`] for
    /// the buffer or the log; [`Error::CommandError`]. Each leaves a state a retry of `enable`
    /// completes (a retry stops and reprograms the command buffer and log).
    pub fn enable(&self) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        // Until INVALIDATE_IOMMU_ALL completed, no GCR3 tag is known free of an earlier
        // owner's guest translations.
        cfg.gcr3_tags_clean = 0;
        let devtab = &cfg.devtab;
        let mut cmd = self.cmd.lock();
        let mut events = self.events.lock();
        let budget = self.info.poll_budget;
        // Stop whatever runs (a previous owner's buffer and log, or ours from a failed enable),
        // then leave translation off for the base register writes (see the module).
        regs::set_control(
            &self.regs,
            Control::CMD_BUF_EN | Control::EVENT_LOG_EN,
            false,
            budget,
        )?;
        regs::set_control(&self.regs, Control::IOMMU_EN, false, budget)?;
        // Status before any base register: QEMU's `amd-iommu` ignores an Event Log Base write
        // while `EventLogInt` is set (a previous owner's unacknowledged event), and would keep
        // logging into the previous owner's buffer. The log is stopped: nothing sets it again.
        self.regs.write64(
            regs::STATUS,
            (Status::EVENT_OVERFLOW
                | Status::EVENT_LOG_INT
                | Status::COM_WAIT_INT
                | Status::PPR_OVERFLOW
                | Status::PPR_INT)
                .bits(),
        );
        self.regs.write64(regs::EXCLUSION_BASE, 0);
        self.regs.write64(regs::EXCLUSION_LIMIT, 0);
        self.regs
            .write64(regs::DEV_TAB_BASE, devtab.base_register()?);
        if cmd.is_none() {
            *cmd = Some(CommandBuffer::new(
                &self.alloc,
                self.info.command_len_log2,
                WalkerCoherency::Coherent,
                budget,
            )?);
        }
        if events.is_none() {
            *events = Some(EventLog::new(
                &self.alloc,
                self.info.event_len_log2,
                WalkerCoherency::Coherent,
            )?);
        }
        let (Some(c), Some(log)) = (cmd.as_mut(), events.as_ref()) else {
            return Err(Error::NoMemory);
        };
        c.program(&self.regs)?;
        log.program(&self.regs, &self.alloc)?;
        // Control starts from a known value, not from what a previous owner left: only the
        // bits this driver sets, and the platform's four IVHD bits as found (see
        // `Control::KEPT`). Anything else would go on doing the previous owner's work:
        // `DevTblSegEn` (device IDs outside segment 0 taken from its segment tables at
        // 0x100-0x130), its PPR and guest APIC logs (memory not ours), `XTEn`, `HADUpdate`...
        let mut ctrl = regs::control(&self.regs) & Control::KEPT;
        ctrl.insert(Control::COHERENT);
        // §3.4 `GTEn`: with it clear the unit may ignore `GV`, and a PASID attach's entry
        // (`Mode` 0 with `IR`/`IW`) would pass requests without PASID untranslated. Set before
        // any `GV` entry exists, as Linux's `iommu_enable_gt`; PASID attaches check it.
        if self.info.efr.flags().contains(EfrFlags::GT_SUP) {
            ctrl.insert(Control::GT_EN);
        }
        let ctrl = ctrl.bits() | regs::INV_TIMEOUT_1S << regs::INV_TIMEOUT_SHIFT;
        self.regs.write64(regs::CONTROL, ctrl);
        regs::set_control(
            &self.regs,
            Control::CMD_BUF_EN | Control::EVENT_LOG_EN,
            true,
            budget,
        )?;
        regs::set_control(&self.regs, Control::IOMMU_EN, true, budget)?;
        let mut kind_of = LoggedStops {
            regs: &self.regs,
            alloc: &self.alloc,
            log: Some(log),
        };
        let ia = self.info.efr.flags().contains(EfrFlags::IA_SUP);
        if ia {
            c.submit(
                &self.regs,
                &self.alloc,
                [Command::invalidate_iommu_all()],
                &mut kind_of,
            )?;
        } else {
            for id in 0..devtab.device_ids() {
                let id = id as u16;
                c.submit(
                    &self.regs,
                    &self.alloc,
                    [
                        Command::invalidate_devtab_entry(id),
                        Command::invalidate_interrupt_table(id),
                    ],
                    &mut kind_of,
                )?;
            }
            // The entries' invalidation completes first: in the same run it could take
            // effect after an ID's, and a device still running for the previous owner would
            // refill that ID through its cached entry (see `After`).
            c.wait(&self.regs, &self.alloc, &mut kind_of)?;
            // The previous owner may have cached translations under the IDs this unit's
            // domains will use.
            for slot in 0..DOMAINS {
                let cmd = Command::invalidate_iommu_pages(
                    domain_id_of(slot),
                    None,
                    InvalidationRange::All,
                    true,
                );
                c.submit(&self.regs, &self.alloc, [cmd], &mut kind_of)?;
            }
            // And under the GCR3 tables' IDs (host entries; their PASIDs' guest entries go
            // when a tag is first given out: `gcr3_tags_clean`).
            for i in 0..MAX_GCR3_TABLES {
                let cmd = Command::invalidate_iommu_pages(
                    GCR3_DOMAIN_ID_BASE + i as u16,
                    None,
                    InvalidationRange::All,
                    true,
                );
                c.submit(&self.regs, &self.alloc, [cmd], &mut kind_of)?;
            }
        }
        c.wait(&self.regs, &self.alloc, &mut kind_of)?;
        if ia {
            cfg.gcr3_tags_clean = u64::MAX;
        }
        Ok(())
    }

    /// Turns translation off (`IommuEn` clear: DMA is no longer translated), then stops the
    /// command buffer and the event log and gives their pages back. The device table, domains
    /// and attachments stay; [`enable`](Self::enable) turns everything on again.
    ///
    /// # Errors
    /// [`Error::Timeout`] when a run bit did not clear (the pages are kept).
    pub fn disable(&self) -> Result<(), Error> {
        let mut cmd = self.cmd.lock();
        let mut events = self.events.lock();
        let budget = self.info.poll_budget;
        regs::set_control(&self.regs, Control::IOMMU_EN, false, budget)?;
        regs::set_control(
            &self.regs,
            Control::CMD_BUF_EN | Control::EVENT_LOG_EN,
            false,
            budget,
        )?;
        if let Some(c) = cmd.take() {
            // SAFETY: from `self.alloc`; CmdBufEn is clear and CmdBufRun was seen clear.
            unsafe { c.release(&self.alloc) };
        }
        if let Some(l) = events.take() {
            // SAFETY: from `self.alloc`; EventLogEn is clear and EventLogRun was seen clear.
            unsafe { l.release(&self.alloc) };
        }
        Ok(())
    }

    /// Gives every page back: the device table and every domain's table (a disabled unit walks
    /// none of them). `Ok(Some(error))`: released, but a domain's table pointed at memory the
    /// allocator did not hand out (a corrupt entry), which nobody can give back: leaked, the
    /// rest freed (VT-d's [`Released::leaked`](crate::vtd::unit::Released)).
    ///
    /// # Errors
    /// [`Error::UnexpectedState`] (`Control`) while the unit is enabled: the unit is given
    /// back unchanged.
    // The error hands the unit itself back (no allocator to box it in), as VT-d's release.
    #[allow(clippy::result_large_err)]
    pub fn release(self) -> Result<Option<Error>, (Self, Error)> {
        let mut slot = MaybeUninit::new(self);
        // SAFETY: `slot` holds a live unit nothing else references; on `Ok` it was consumed
        // and is never read again, on `Err` it is untouched and handed back.
        match unsafe { Self::release_in_place(NonNull::from(&mut slot).cast()) } {
            Ok(leaked) => Ok(leaked),
            // SAFETY: as above: the unit is whole.
            Err(e) => Err((unsafe { slot.assume_init() }, e)),
        }
    }

    /// As [`release`](Self::release), without moving the unit: on `Ok` the unit at `this` is
    /// gone (its pages freed, its register window and allocator dropped); on `Err` it is
    /// untouched.
    ///
    /// # Errors
    /// As [`release`](Self::release).
    ///
    /// # Safety
    /// `this` points to a live unit that nothing else references for the duration of the
    /// call; after `Ok` it is treated as uninitialised (neither used nor dropped again).
    pub unsafe fn release_in_place(this: NonNull<Self>) -> Result<Option<Error>, Error> {
        let p = this.as_ptr();
        // SAFETY: the caller guarantees a live, unshared unit.
        let unit = unsafe { &mut *p };
        let ctrl = regs::control(&unit.regs);
        if ctrl.intersects(Control::IOMMU_EN | Control::CMD_BUF_EN | Control::EVENT_LOG_EN)
            || unit.cmd.get_mut().is_some()
        {
            return Err(Error::UnexpectedState {
                register: "Control (disable the unit before releasing it)",
                value: ctrl.bits(),
            });
        }
        let mut leaked = None;
        for (slot, lock) in unit.domains.iter_mut().enumerate() {
            if let Some(dom) = lock.get_mut().take() {
                let mut gather = dom.owed.into_inner();
                // A corrupt table leaks what it could not walk; the rest goes back.
                let destroyed = on_table!(dom.table, t => t.destroy(&mut gather));
                // SAFETY: IommuEn is clear: the unit walks no table, and a later enable would
                // point it at another device table (this one is freed below).
                let done = unsafe { crate::pgtable::InvalidationComplete::assume() };
                if destroyed.and(gather.release(&unit.alloc, done)).is_err() {
                    leaked = Some(Error::UnexpectedState {
                        register: "domain page table (pages unknown to the allocator)",
                        value: slot as u64,
                    });
                }
            }
        }
        for g in unit.config.get_mut().gcr3.iter_mut() {
            if let Some(g) = g.take() {
                // SAFETY: from `unit.alloc`; IommuEn is clear, so the unit reads no GCR3 table.
                unsafe { unit.alloc.free(g.page, PAGE_SHIFT_4K) };
            }
        }
        // SAFETY: the table is read out once and the unit is never used again (the caller's
        // contract after `Ok`), so it is neither freed twice nor dropped.
        let devtab = unsafe { core::ptr::read(&unit.config.get_mut().devtab) };
        // SAFETY: from `unit.alloc`; IommuEn is clear, so the unit reads no device table.
        unsafe { devtab.release(&unit.alloc) };
        // SAFETY: the remaining fields own nothing but the window and the allocator, dropped
        // once here; the rest (locks, plain data) needs no drop.
        unsafe {
            core::ptr::drop_in_place(addr_of_mut!((*p).regs));
            core::ptr::drop_in_place(addr_of_mut!((*p).alloc));
        }
        Ok(leaked)
    }

    /// Reports and consumes every logged event (for the embedder's event interrupt or a poll
    /// loop), restarting the log after an overflow. Nothing while the unit is disabled. An
    /// entry the unit never wrote (within the poll budget) is skipped and counted in
    /// [`DrainSummary::unwritten`], and reported late ([`DrainSummary::late`]) if its write
    /// comes. Drains take turns under the unit's event lock, a spin lock that does not mask
    /// interrupts and is held while `report` runs: not from a hard interrupt handler that can
    /// interrupt a drain on the same CPU, and `report` calls nothing of this unit.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the restart after an overflow did not see `EventLogRun` clear.
    pub fn drain_events(&self, report: impl FnMut(Event)) -> Result<DrainSummary, Error> {
        self.drain_events_at_most(usize::MAX, report)
    }

    /// As [`drain_events`](Self::drain_events), for at most `max` events, the oldest: only
    /// those reported are consumed, the rest stay logged for the next call (an embedder with
    /// room for `max` records loses none). An overflow is acknowledged and logging restarted
    /// whatever is left. `Status.EventLogInt` is cleared before the log is read, for the
    /// events left behind by `max` too: no interrupt comes for them, so call again until a
    /// drain reports fewer than `max` (it then reached the tail).
    ///
    /// # Errors
    /// As [`drain_events`](Self::drain_events).
    pub fn drain_events_at_most(
        &self,
        max: usize,
        report: impl FnMut(Event),
    ) -> Result<DrainSummary, Error> {
        let events = self.events.lock();
        match events.as_ref() {
            Some(log) => log.drain(&self.regs, &self.alloc, self.info.poll_budget, max, report),
            None => Ok(DrainSummary::default()),
        }
    }

    /// Submits the commands of `batches`, in order, and waits once for their completion (one
    /// COMPLETION_WAIT): the unit's raw command interface (for an embedder that drives
    /// interrupt remapping itself: INVALIDATE_INTERRUPT_TABLE).
    ///
    /// # Errors
    /// [`Error::UnexpectedState`] while the unit is disabled; [`Error::Timeout`];
    /// [`Error::CommandError`] (the command was replaced, see [`cmdbuf`](super::cmdbuf)).
    pub fn run(&self, batches: &[&[Command]]) -> Result<(), Error> {
        self.run_iter(batches.iter().flat_map(|b| b.iter().copied()))
    }

    /// As [`run`](Self::run), for commands made on the fly: written straight into the ring
    /// (no copy of them on the stack), one tail write, one wait.
    pub(crate) fn run_iter(&self, cmds: impl Iterator<Item = Command>) -> Result<(), Error> {
        let mut cmd = self.cmd.lock();
        let Some(c) = cmd.as_mut() else {
            return Err(Error::UnexpectedState {
                register: "Control.CmdBufEn (the unit is not enabled)",
                value: regs::control(&self.regs).bits(),
            });
        };
        let events = self.events.lock();
        // Events logged from here on are this call's: the command lock keeps every other
        // command out, the event lock keeps drains out until the check below.
        let since = events.as_ref().map(|log| log.tail(&self.regs));
        let mut kind_of = LoggedStops {
            regs: &self.regs,
            alloc: &self.alloc,
            log: events.as_ref(),
        };
        let mut ats = false;
        let cmds = cmds.inspect(|command| {
            ats |= command.opcode() == cmd::OPCODE_INVALIDATE_IOTLB_PAGES;
        });
        c.submit(&self.regs, &self.alloc, cmds, &mut kind_of)?;
        c.wait(&self.regs, &self.alloc, &mut kind_of)?;
        match (ats, events.as_ref(), since) {
            (true, Some(log), Some(since)) => {
                iotlb_timeout(&self.regs, &self.alloc, log, since, self.info.poll_budget)
            }
            _ => Ok(()),
        }
    }

    /// Writes `entry` into the live DTE of `device_id` in the spec's order
    /// ([`dte::write_live`]), then INVALIDATE_DEVTAB_ENTRY and a completion wait, then the
    /// `extra` commands (the IOTLB invalidations the change needs) and a second wait (none
    /// without `extra`): §2.4 orders commands only through COMPLETION_WAIT, so an IOTLB
    /// invalidation in the entry's run could take effect before the entry's and a request
    /// through the entry still cached would refill what it emptied (`After::Waited`). The
    /// unit's raw interface: the caller keeps whatever `entry` points at alive until another
    /// entry replaced it and that call returned `Ok`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a device the table does not cover (nothing written); the
    /// command errors of [`run`](Self::run) (the entry is written, or blocking when its upper
    /// half changes too; its invalidation, or that of `extra`, not confirmed: call again).
    pub fn set_device_entry(
        &self,
        device_id: u32,
        entry: &DeviceTableEntry,
        extra: &[Command],
    ) -> Result<(), Error> {
        let cfg = self.config.lock();
        self.set_device_entry_locked(&cfg.devtab, device_id, entry, &[])?;
        self.run_after(extra)
    }

    /// The commands of [`After::Waited`], once the entry's run completed: a run of their own
    /// and its wait (nothing without commands). Not inlined: its frame lies beside the
    /// entry's write, not under it.
    #[inline(never)]
    pub(crate) fn run_after(&self, later: &[Command]) -> Result<(), Error> {
        if later.is_empty() {
            return Ok(());
        }
        self.run(&[later])
    }

    /// Writes `entry` as [`Self::set_device_entry`] does, then runs INVALIDATE_DEVTAB_ENTRY
    /// and `extra` in one run, one wait (see [`After`] for when `extra` may share the run).
    pub(crate) fn set_device_entry_locked(
        &self,
        devtab: &DeviceTable,
        device_id: u32,
        entry: &DeviceTableEntry,
        extra: &[Command],
    ) -> Result<(), Error> {
        let beyond = Error::InvalidArgument {
            what: "device ID beyond the device table",
            value: u64::from(device_id),
        };
        let slot = devtab.entry(device_id).ok_or(beyond)?;
        let inv = Command::invalidate_devtab_entry(u16::try_from(device_id).map_err(|_| beyond)?);
        dte::write_live(
            self.cx16,
            slot,
            entry,
            // The unit's table reads snoop (Control.Coherent, x86): no cache maintenance.
            |_| {},
            || self.run(&[&[inv]]),
        )?;
        self.run(&[&[inv], extra])
    }

    /// The live entry of `device_id`, as the unit reads it now.
    pub fn device_entry(&self, device_id: u32) -> Option<DeviceTableEntry> {
        self.config.lock().devtab.read(device_id)
    }
}

/// Where the commands a device table entry change needs besides its INVALIDATE_DEVTAB_ENTRY
/// (the IOTLB invalidations) go.
///
/// §2.4 orders commands only through COMPLETION_WAIT: it completes once every earlier command
/// has completed, and nothing there says that one command of a run has taken effect before a
/// later one starts. The unit translates requests while it runs commands, so with the
/// entry's invalidation taking effect last a request between an IOTLB (or device IOTLB)
/// invalidation and it is translated through the old entry still cached, and what it caches
/// survives the wait (model option `devtab_invalidation_at_wait`).
#[derive(Clone, Copy, Debug)]
pub(crate) enum After<'a> {
    /// In the entry's run, one wait: for an entry replaced that translated nothing those
    /// commands cover (a blocking one; a PASID's GCR3 entry, cleared or rewritten in memory
    /// before the run, so that a walk through the old DTE reads the new one).
    Batched(&'a [Command]),
    /// In a run of their own once the entry's invalidation completed (two waits; one without
    /// commands): for an entry replaced that translated through a domain, whose IOTLB entries
    /// (or the device's ATC) the commands empty for good.
    Waited(&'a [Command]),
}

impl<'a> After<'a> {
    /// The commands for the entry's run, and those for a run after it.
    pub(crate) fn split(self) -> (&'a [Command], &'a [Command]) {
        match self {
            After::Batched(extra) => (extra, &[]),
            After::Waited(extra) => (&[], extra),
        }
    }
}

/// One attachment: a device pointing at a domain slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Attachment {
    pub device: u16,
    /// The PASID, for an attachment through the device's GCR3 table.
    pub pasid: Option<Pasid>,
    pub slot: usize,
    /// The device's ATC may hold translations: its hint, or, while unsettled, a hint it had
    /// before the move (until the move's INVALIDATE_IOTLB_PAGES is confirmed).
    pub ats: bool,
    /// `Maxpend` of the device's INVALIDATE_IOTLB_PAGES: its ATS Invalidate Queue Depth
    /// ([`cmd::maxpend`]), the hint's, or while unsettled the one the device had with ATS.
    pub maxpend: u8,
    /// `false` while an attach or detach of the device failed half-way (its entry written,
    /// the invalidation not confirmed): the domain cannot be freed meanwhile.
    pub settled: bool,
    /// While unsettled after a move: the slot of the domain the move left, whose
    /// INVALIDATE_IOMMU_PAGES was not confirmed; the next move or detach invalidates it again
    /// (`leave_commands`). `None` once settled.
    pub left: Option<usize>,
}

impl Attachment {
    /// Whether a flush of domain `slot` must reach this attachment's tags (a GCR3 table's
    /// `DomainID` with the PASID, the ATS device's IOTLB): attached to it, or unsettled. A
    /// move whose invalidation was not confirmed may have left translations of the domain
    /// the device left in the PASID-tagged IOTLB entries or in the device's ATC, which that
    /// domain's ID does not tag; the record names only the new domain, so every flush covers
    /// an unsettled attachment until its retry or detach completes.
    pub fn flushed_with(&self, slot: usize) -> bool {
        self.slot == slot || !self.settled
    }
}

/// What the configuration lock protects.
pub(crate) struct ConfigState {
    pub devtab: DeviceTable,
    /// Written only through [`ConfigState::set`], which keeps `used` and `ats`.
    pub attachments: [Option<Attachment>; MAX_ATTACHMENTS],
    /// One past the last slot of `attachments` in use: nothing is attached beyond.
    pub used: usize,
    /// Attachments with ATS: a flush looks for them only when there is one.
    pub ats: usize,
    /// Attachment slots the flushes looked at (tests: a flush does no work proportional to
    /// the slots, issue 18).
    #[cfg(test)]
    pub flush_slot_reads: core::sync::atomic::AtomicUsize,
    /// The GCR3 tables of devices with PASIDs attached.
    pub gcr3: [Option<Gcr3Table>; MAX_GCR3_TABLES],
    /// Bit `i`: `GCR3_DOMAIN_ID_BASE + i` holds no guest translation of an earlier owner
    /// (INVALIDATE_IOMMU_ALL completed, or every PASID of it was invalidated when it was
    /// first given out on a unit without `IASup`).
    pub gcr3_tags_clean: u64,
}

impl ConfigState {
    /// Unlocked, nothing attached, a placeholder table: a constant, so that writing it copies
    /// from read-only data rather than from a temporary built on the stack.
    // Each use is a fresh value written once into a new object: no lock is shared.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: crate::sync::Mutex<Self> = crate::sync::Mutex::new(ConfigState {
        devtab: DeviceTable::PLACEHOLDER,
        attachments: [None; MAX_ATTACHMENTS],
        used: 0,
        ats: 0,
        #[cfg(test)]
        flush_slot_reads: core::sync::atomic::AtomicUsize::new(0),
        gcr3: [const { None }; MAX_GCR3_TABLES],
        gcr3_tags_clean: 0,
    });

    /// Records (or with `None` removes) the attachment in slot `index`, keeping `used` and
    /// `ats`; an index beyond the table changes nothing.
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
        } else if index + 1 == self.used {
            let before = self.attachments.get(..index).unwrap_or(&[]);
            self.used = before
                .iter()
                .rposition(Option::is_some)
                .map_or(0, |i| i + 1);
        }
    }

    /// The part of `attachments` that holds any.
    pub fn recorded(&self) -> &[Option<Attachment>] {
        self.attachments
            .get(..self.used)
            .unwrap_or(&self.attachments)
    }

    /// The attachment of `device`'s requests without PASID.
    pub fn find(&self, device: u16) -> Option<usize> {
        self.find_pasid(device, None)
    }

    /// The attachment of `device` with `pasid` (`None`: without PASID).
    pub fn find_pasid(&self, device: u16, pasid: Option<Pasid>) -> Option<usize> {
        self.recorded()
            .iter()
            .position(|a| a.is_some_and(|a| a.device == device && a.pasid == pasid))
    }

    /// Whether `device` has PASIDs attached (or half-attached).
    pub fn has_pasids(&self, device: u16) -> bool {
        self.recorded()
            .iter()
            .flatten()
            .any(|a| a.device == device && a.pasid.is_some())
    }

    /// The `DomainID` of `device`'s GCR3 table.
    pub fn gcr3_tag(&self, device: u16) -> Option<u16> {
        self.gcr3_of(device)
            .and_then(|i| self.gcr3[i].as_ref())
            .map(|g| g.domain_id)
    }

    /// The index of `device`'s GCR3 table.
    pub fn gcr3_of(&self, device: u16) -> Option<usize> {
        self.gcr3
            .iter()
            .position(|g| g.as_ref().is_some_and(|g| g.device == device))
    }

    pub fn of_domain(&self, slot: usize) -> impl Iterator<Item = &Attachment> {
        self.recorded()
            .iter()
            .flatten()
            .filter(move |a| a.slot == slot)
    }

    /// The ATS devices attached to domain `slot`: those a flush invalidates the IOTLBs of.
    /// No slot is looked at when no device has ATS (issue 18: a flush does no work
    /// proportional to the unit's attachment slots).
    pub fn ats_of_domain(&self, slot: usize) -> impl Iterator<Item = &Attachment> {
        self.ats_candidates()
            .iter()
            .inspect(|_| self.count_flush_read())
            .flatten()
            .filter(move |a| a.slot == slot && a.ats)
    }

    /// The attachment slots that may hold an ATS device: none when no device has ATS.
    pub fn ats_candidates(&self) -> &[Option<Attachment>] {
        if self.ats == 0 {
            &[]
        } else {
            self.recorded()
        }
    }

    /// Counts one attachment slot looked at by a flush (tests only).
    #[cfg(test)]
    pub fn count_flush_read(&self) {
        self.flush_slot_reads
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
    }

    #[cfg(not(test))]
    #[inline(always)]
    pub fn count_flush_read(&self) {}
}

/// The domain ID of domain slot `slot`: `slot + 1` (ID 0 is left to blocking entries).
pub(crate) const fn domain_id_of(slot: usize) -> u16 {
    (slot + 1) as u16
}

/// After a completion wait behind INVALIDATE_IOTLB_PAGES: the IOTLB_INV_TIMEOUT the unit
/// logged since the log's tail was `since` (§2.5: the unit completes a command whose ATS
/// device did not answer in time, and logs the event with the command's address), or the
/// overflow that may have dropped one. Read, not consumed: the embedder's drain reports it.
/// An entry the tail passed that is not written within the budget fails the call with
/// [`Error::Timeout`]: it may be the time-out (see [`eventlog`](super::eventlog)).
fn iotlb_timeout<W, A>(
    regs: &W,
    alloc: &A,
    log: &EventLog,
    since: u32,
    budget: u32,
) -> Result<(), Error>
where
    W: RegisterWindow + ?Sized,
    A: PageAllocator + ?Sized,
{
    let found = log.find_since(regs, alloc, since, budget, |e| {
        (e.code == EventCode::IotlbInvTimeout).then_some((e.device_id, e.address))
    })?;
    if let Some((device_id, command)) = found {
        return Err(Error::IotlbInvTimeout {
            device_id: Some(device_id),
            command,
        });
    }
    if regs::status(regs).contains(Status::EVENT_OVERFLOW) {
        return Err(Error::IotlbInvTimeout {
            device_id: None,
            command: 0,
        });
    }
    Ok(())
}

/// The unit's event log as the command buffer asks it why the unit stopped (see `cmdbuf`).
struct LoggedStops<'a, W: ?Sized, A: ?Sized> {
    regs: &'a W,
    alloc: &'a A,
    log: Option<&'a EventLog>,
}

impl<W: RegisterWindow + ?Sized, A: PageAllocator + ?Sized> StopLog for LoggedStops<'_, W, A> {
    fn kind_of(&mut self, pa: PhysAddr) -> Option<CommandErrorKind> {
        self.log
            .and_then(|log| command_error_kind(self.regs, self.alloc, log, pa))
    }

    fn restarted(&mut self) {
        if let Some(log) = self.log {
            log.mark_command_restart(self.regs);
        }
    }
}

/// The command error the unit logged for the command at `pa` since `CmdBufEn` was last set
/// (read, not consumed).
fn command_error_kind<W, A>(
    regs: &W,
    alloc: &A,
    log: &EventLog,
    pa: PhysAddr,
) -> Option<CommandErrorKind>
where
    W: RegisterWindow + ?Sized,
    A: PageAllocator + ?Sized,
{
    log.find_since_restart(regs, alloc, |e| match e.code {
        EventCode::IllegalCommandError if e.address == pa.get() => {
            Some(CommandErrorKind::IllegalCommand)
        }
        EventCode::CommandHardwareError if e.address == pa.get() => {
            Some(CommandErrorKind::CommandHardware)
        }
        _ => None,
    })
}
