//! A behavioural model of an AMD-Vi unit (AMD I/O Virtualization Technology (IOMMU)
//! Specification, document 48882, revision 3.10): the yardstick the `amdvi` driver is tested
//! against.
//!
//! Written from the spec with its own constants: it imports nothing from the driver or the
//! page-table engine and reads tables from an [`Arena`].
//!
//! | file | what | spec |
//! |---|---|---|
//! | `mod.rs` | registers: base registers, Control, Status, head/tail pointers, EFR | §3.4 |
//! | `command.rs` | command fetch and execution, ILLEGAL_COMMAND_ERROR / COMMAND_HARDWARE_ERROR | §2.4 |
//! | `translate.rs` | device table entry, v1 page walk (Next Level 0..6 and 7), IOTLB, IO_PAGE_FAULT | §2.2.2, §2.2.3 |
//!
//! What is modelled: every register the driver touches (base registers ignored while the
//! unit may use them: `DevTabBase` with `IommuEn` set, the command buffer's with `CmdBufEn`
//! set, the head pointer likewise; optionally, as QEMU, the event log's while `EventLogInt` is
//! set, [`AmdViModelConfig::event_base_kept_while_event_int`]); command execution when the tail moves or `CmdBufEn` is
//! set, with the head stopping on an illegal or unreadable command (`CmdBufRun` clear) and the
//! event logged; a device table cache and an IOTLB (with the page directory entries it
//! passed: `PDE` drops them) that keep entries until invalidated; the event log with overflow
//! (`EventOverflow`, `EventLogRun` clear, events dropped; an entry written some register reads
//! after its tail moved but before any later entry, [`Injection::DelayedEventWrite`], or never,
//! [`Injection::LostEventWrite`]; `CmdBufRun` set some register reads
//! after `CmdBufEn`, [`Injection::SlowCmdBufRun`]); fault injection ([`Injection`]);
//! optionally, INVALIDATE_DEVTAB_ENTRY taking effect only at the next COMPLETION_WAIT, the
//! latest §2.4 allows ([`AmdViModelConfig::devtab_invalidation_at_wait`]), and a device's
//! request translated after every command ([`AmdViModel::request_during_commands`]: the unit
//! translates while it runs commands).
//!
//! Dirty tracking: `D` set in v1 leaves under DTE `HAD` (see `translate.rs`).
//!
//! Guest (v2) translation through one-level GCR3 tables for PASID-tagged requests
//! ([`AmdViModel::dma_pasid`]), cached in the IOTLB under the DTE's `DomainID` and the PASID
//! (see `translate.rs`).
//!
//! ATS (§2.2.2.1 DTE `I`, §2.4 INVALIDATE_IOTLB_PAGES): a device's translation requests
//! ([`AmdViModel::ats_translate`]) are answered only while its DTE has `I` set, for requests
//! with or without a PASID alike (`I` is the device's, not a PASID's); the answer goes into the
//! device's own cache (its ATC, [`AmdViModel::atc_translation`]), which nothing but an
//! INVALIDATE_IOTLB_PAGES of that device covering the address empties: with `GN` the PASID's
//! entries only, without `GN` the entries without PASID only (the stricter of the readings of
//! an invalidation without a PASID prefix: a driver must name every PASID). A DTE change,
//! INVALIDATE_IOMMU_PAGES and INVALIDATE_IOMMU_ALL leave it alone: they are the unit's caches.
//!
//! What is not: interrupt remapping (INVALIDATE_INTERRUPT_TABLE is counted), nested (`GV` with a
//! host table) translation and multi-level GCR3 tables, translated (AT = 10b) requests (the
//! ATC's answer is what a device would send), PPR, the exclusion range (its enable bit is
//! recorded), performance counters. Interrupts are counted, not delivered.

mod command;
mod translate;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use crate::mmio::RegisterWindow;
use crate::sim::arena::{Arena, PhysMem};

pub use translate::{DmaFault, DmaOk};

/// Register offsets (§3.4), the model's own constants.
pub mod regs {
    /// Device Table Base Address.
    pub const DEV_TAB_BASE: usize = 0x0000;
    /// Command Buffer Base Address.
    pub const CMD_BUF_BASE: usize = 0x0008;
    /// Event Log Base Address.
    pub const EVENT_LOG_BASE: usize = 0x0010;
    /// IOMMU Control.
    pub const CONTROL: usize = 0x0018;
    /// Exclusion Base.
    pub const EXCLUSION_BASE: usize = 0x0020;
    /// Exclusion Range Limit.
    pub const EXCLUSION_LIMIT: usize = 0x0028;
    /// Extended Feature Register.
    pub const EFR: usize = 0x0030;
    /// Extended Feature 2 Register.
    pub const EFR2: usize = 0x01A0;
    /// Command Buffer Head Pointer.
    pub const CMD_HEAD: usize = 0x2000;
    /// Command Buffer Tail Pointer.
    pub const CMD_TAIL: usize = 0x2008;
    /// Event Log Head Pointer.
    pub const EVENT_HEAD: usize = 0x2010;
    /// Event Log Tail Pointer.
    pub const EVENT_TAIL: usize = 0x2018;
    /// IOMMU Status.
    pub const STATUS: usize = 0x2020;

    /// Control `IommuEn`.
    pub const CTRL_IOMMU_EN: u64 = 1 << 0;
    /// Control `EventLogEn`.
    pub const CTRL_EVENT_LOG_EN: u64 = 1 << 2;
    /// Control `ComWaitIntEn`.
    pub const CTRL_COM_WAIT_INT_EN: u64 = 1 << 4;
    /// Control `CmdBufEn`.
    pub const CTRL_CMD_BUF_EN: u64 = 1 << 12;
    /// Control `GTEn`: guest translation; with it clear the unit ignores DTE `GV` and `GIoV`.
    pub const CTRL_GT_EN: u64 = 1 << 16;
    /// Status `EventOverflow` (RW1C).
    pub const ST_EVENT_OVERFLOW: u64 = 1 << 0;
    /// Status `EventLogInt` (RW1C).
    pub const ST_EVENT_LOG_INT: u64 = 1 << 1;
    /// Status `ComWaitInt` (RW1C).
    pub const ST_COM_WAIT_INT: u64 = 1 << 2;
    /// Status `EventLogRun`.
    pub const ST_EVENT_LOG_RUN: u64 = 1 << 3;
    /// Status `CmdBufRun`.
    pub const ST_CMD_BUF_RUN: u64 = 1 << 4;
    /// The write-1-to-clear bits of Status.
    pub const ST_RW1C: u64 = 0b110_0111;
    /// Head/tail pointer bits 18:4.
    pub const POINTER_MASK: u64 = 0x7_FFF0;
}

/// EFR `IASup`.
pub const EFR_IA_SUP: u64 = 1 << 6;
/// EFR `GTSup`.
pub const EFR_GT_SUP: u64 = 1 << 4;
/// EFR `HDSup`.
pub const EFR_HD_SUP: u64 = 1 << 52;
/// EFR `GIoSup`: guest I/O protection (DTE `GIoV` honoured).
pub const EFR_GIO_SUP: u64 = 1 << 48;

/// What the model reports and does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdViModelConfig {
    /// EFR.
    pub efr: u64,
    /// EFR2.
    pub efr2: u64,
    /// Host translations in the IOTLB are looked up by device ID (and IOVA), whatever domain
    /// ID the device's entry names now, as QEMU 10.0's `amd-iommu` keys its IOTLB
    /// (`amdvi_iotlb_lookup` by `devid`); they still go with INVALIDATE_IOMMU_PAGES of the
    /// domain ID they were cached under. `false`: tagged and looked up by domain ID (the spec).
    pub iotlb_by_device: bool,
    /// A write of the Event Log Base Address register is ignored while Status `EventLogInt`
    /// is set, as QEMU's `amd-iommu` does (`amdvi_handle_evtbase_write`: "Do not reset if
    /// eventlog interrupt bit is set"): the unit goes on logging into the log it had. `false`:
    /// the write takes whenever `EventLogEn` is clear (the spec).
    pub event_base_kept_while_event_int: bool,
    /// An INVALIDATE_DEVTAB_ENTRY takes effect only when the next COMPLETION_WAIT completes,
    /// after every other command issued between the two: the latest the spec allows. §2.4
    /// orders commands only through COMPLETION_WAIT (it completes once every earlier command
    /// has completed; nothing there says that one invalidation has taken effect before a
    /// later one of the same run starts), and the unit translates requests while it runs
    /// commands ([`AmdViModel::request_during_commands`]): a request between an
    /// INVALIDATE_IOMMU_PAGES and the entry's invalidation is translated through the entry
    /// still cached and refills what the page invalidation emptied. `false`: each command
    /// takes effect as it is fetched, in order (QEMU's `amd-iommu`).
    pub devtab_invalidation_at_wait: bool,
}

impl AmdViModelConfig {
    /// What QEMU 10's `amd-iommu` reports in EFR (`hw/i386/amd_iommu.h`,
    /// `AMDVI_EXT_FEATURES`): `PreFSup`, `PPRSup`, `GTSup`, `IASup`, `GASup`, `HESup`, `HATS` =
    /// 2 (6 levels), `GATS` = 2; EFR2 0. No `GIoSup`: DTE `GIoV` is ignored.
    pub const fn qemu_default() -> Self {
        Self {
            efr: 1 << 0 | 1 << 1 | EFR_GT_SUP | EFR_IA_SUP | 1 << 7 | 1 << 8 | 2 << 10 | 2 << 12,
            efr2: 0,
            iotlb_by_device: false,
            event_base_kept_while_event_int: false,
            devtab_invalidation_at_wait: false,
        }
    }

    /// With INVALIDATE_DEVTAB_ENTRY taking effect only at the next COMPLETION_WAIT
    /// ([`devtab_invalidation_at_wait`](Self::devtab_invalidation_at_wait)).
    pub const fn with_devtab_invalidation_at_wait(mut self) -> Self {
        self.devtab_invalidation_at_wait = true;
        self
    }

    /// With QEMU's Event Log Base Address quirk
    /// ([`event_base_kept_while_event_int`](Self::event_base_kept_while_event_int)).
    pub const fn with_event_base_kept_while_event_int(mut self) -> Self {
        self.event_base_kept_while_event_int = true;
        self
    }

    /// With the IOTLB's host translations looked up by device ID, as QEMU's
    /// ([`iotlb_by_device`](Self::iotlb_by_device)).
    pub const fn with_iotlb_by_device(mut self) -> Self {
        self.iotlb_by_device = true;
        self
    }

    /// With EFR `GTSup`, `GIoSup` and `PASmax` = `bits - 1` (1..=20): PASIDs of `bits` bits,
    /// on a unit that also honours DTE `GIoV` (as every unit Linux uses v2 tables on).
    pub const fn with_pasids(mut self, bits: u32) -> Self {
        self.efr = (self.efr & !(0x1F << 32))
            | EFR_GT_SUP
            | EFR_GIO_SUP
            | ((bits.saturating_sub(1) as u64) & 0x1F) << 32;
        self
    }

    /// Without EFR `GIoSup`: DTE `GIoV` is ignored (QEMU's `amd-iommu`).
    pub const fn without_guest_io_protection(mut self) -> Self {
        self.efr &= !EFR_GIO_SUP;
        self
    }

    /// With EFR `HDSup` (and `HASup`): the unit sets `D` in v1 leaves under DTE `HAD`.
    pub const fn with_dirty_tracking(mut self) -> Self {
        self.efr |= EFR_HD_SUP | 1 << 49;
        self
    }

    /// Without EFR `IASup`: INVALIDATE_IOMMU_ALL is illegal.
    pub const fn without_invalidate_all(mut self) -> Self {
        self.efr &= !EFR_IA_SUP;
        self
    }

    /// With EFR `IASup` (INVALIDATE_IOMMU_ALL).
    pub const fn with_invalidate_all(mut self) -> Self {
        self.efr |= EFR_IA_SUP;
        self
    }
}

/// Faults to inject, for error-path tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injection {
    /// The `n`-th command fetched from now (1-based) is illegal: ILLEGAL_COMMAND_ERROR.
    IllegalCommandAt(u32),
    /// The `n`-th command fetched from now cannot be read: COMMAND_HARDWARE_ERROR.
    CommandHardwareErrorAt(u32),
    /// COMPLETION_WAITs do not complete (the unit stops on the first one, head on it, run bit
    /// set) until [`AmdViModel::clear_injections`].
    StallWaits,
    /// The `n`-th COMPLETION_WAIT fetched from now (1-based) does not complete, nor does any
    /// after it, until [`AmdViModel::clear_injections`] (as [`Injection::StallWaits`] from
    /// that wait on): a timeout at each step of a call that waits more than once.
    StallWaitAt(u32),
    /// The next INVALIDATE_IOTLB_PAGES times out: IOTLB_INV_TIMEOUT logged with the command's
    /// address, the device's cache kept, the buffer running on (the unit treats the command as
    /// done).
    IotlbTimeout,
    /// `CmdBufRun` / `EventLogRun` do not clear when their enable bit is cleared, until
    /// [`AmdViModel::clear_injections`] (a unit slow to stop: then they follow their enable
    /// bits).
    StuckRun,
    /// The next event logged moves the tail at once but its entry is written only after `n`
    /// more register reads (or at [`AmdViModel::clear_injections`]): the tail visible before
    /// the entry, as the erratum Linux's event handling retries for (it re-reads an entry
    /// whose type is 0). Until then the slot holds what it held: zero, or the entry of the
    /// previous lap if software did not clear it. Writes stay in order: the entry is written
    /// before any later event's.
    DelayedEventWrite(u32),
    /// The next event logged moves the tail but its entry is never written (a lost write):
    /// the slot keeps what it held.
    LostEventWrite,
    /// Each time `CmdBufEn` is set, `CmdBufRun` sets (and fetching starts) only `n` register
    /// reads later, until [`AmdViModel::clear_injections`]: a unit slow to start its buffer.
    SlowCmdBufRun(u32),
}

/// A device's request that the unit translates once after every command it executes (a
/// device that keeps its DMA or its ATS translation requests going while software's commands
/// run), see [`AmdViModel::request_during_commands`]. Its answers are not kept anywhere but
/// in the unit's caches (and, for an ATS request, in the device's ATC); its faults are logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyRequest {
    /// The requester.
    pub device: u16,
    /// The PASID of the request, if any.
    pub pasid: Option<u32>,
    /// The address.
    pub iova: u64,
    /// A write (or an ATS request asking for write permission).
    pub write: bool,
    /// An ATS translation request (answered into the device's ATC) rather than a DMA.
    pub ats: bool,
}

#[derive(Clone, Copy, Debug, Default)]
struct Injections {
    illegal_at: u32,
    hw_error_at: u32,
    stall_waits: bool,
    stall_wait_at: u32,
    iotlb_timeout: bool,
    stuck_run: bool,
    event_write_delay: u32,
    lost_event_write: bool,
    slow_cmd_buf_run: u32,
}

/// Counts `counter` down; true when it reaches its event.
fn countdown(counter: &mut u32) -> bool {
    match *counter {
        0 => false,
        1 => {
            *counter = 0;
            true
        }
        _ => {
            *counter -= 1;
            false
        }
    }
}

/// What the unit did (counts only, never timings).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AmdViModelStats {
    /// COMPLETION_WAITs completed.
    pub completion_waits: u64,
    /// COMPLETION_WAIT stores written.
    pub completion_stores: u64,
    /// COMPLETION_WAIT interrupts (`ComWaitInt` set).
    pub completion_interrupts: u64,
    /// INVALIDATE_DEVTAB_ENTRY.
    pub invalidate_devtab: u64,
    /// INVALIDATE_IOMMU_PAGES, of one 4 KiB page (`S` clear).
    pub invalidate_pages_page: u64,
    /// INVALIDATE_IOMMU_PAGES with `S` set, less than everything.
    pub invalidate_pages_range: u64,
    /// INVALIDATE_IOMMU_PAGES of everything.
    pub invalidate_pages_all: u64,
    /// INVALIDATE_IOTLB_PAGES.
    pub invalidate_iotlb: u64,
    /// INVALIDATE_IOTLB_PAGES the device did not complete in time (IOTLB_INV_TIMEOUT logged).
    pub iotlb_timeouts: u64,
    /// ATS translation requests answered (the answer cached in the device's ATC).
    pub ats_translations: u64,
    /// ATS translation requests refused (DTE `I` clear, or the translation faulted).
    pub ats_refused: u64,
    /// INVALIDATE_INTERRUPT_TABLE.
    pub invalidate_interrupt_table: u64,
    /// INVALIDATE_IOMMU_ALL.
    pub invalidate_all: u64,
    /// ILLEGAL_COMMAND_ERROR.
    pub illegal_commands: u64,
    /// COMMAND_HARDWARE_ERROR.
    pub command_hardware_errors: u64,
    /// Writes to a base or head register ignored because the unit may be using it.
    pub ignored_writes: u64,
    /// Events written to the log.
    pub events_logged: u64,
    /// Events lost (log full or disabled).
    pub events_dropped: u64,
    /// Requests translated or refused.
    pub translations: u64,
    /// IOTLB hits.
    pub iotlb_hits: u64,
    /// Page walks.
    pub walks: u64,
    /// Requests let through untranslated (`IommuEn` clear, or a DTE with `V` clear).
    pub untranslated: u64,
    /// Times an armed [`Injection`] took effect: an illegal or unreadable command it made, a
    /// COMPLETION_WAIT it stalled, an IOTLB invalidation it timed out. A fault-matrix cell
    /// checks that its fault met the call this way.
    pub injections_fired: u64,
}

impl AmdViModelStats {
    /// Every command the unit executed (COMPLETION_WAITs and the invalidations; the errors
    /// are not commands executed).
    pub fn total_commands(&self) -> u64 {
        self.completion_waits
            + self.invalidate_devtab
            + self.invalidate_pages_page
            + self.invalidate_pages_range
            + self.invalidate_pages_all
            + self.invalidate_iotlb
            + self.invalidate_interrupt_table
            + self.invalidate_all
    }
}

/// Everything behind the lock.
struct State<'m> {
    mem: &'m Arena,
    cfg: AmdViModelConfig,
    dev_tab_base: u64,
    cmd_base: u64,
    event_base: u64,
    control: u64,
    exclusion_base: u64,
    exclusion_limit: u64,
    cmd_head: u64,
    cmd_tail: u64,
    event_head: u64,
    event_tail: u64,
    status: u64,
    /// Cached device table entries.
    dte_cache: HashMap<u16, [u64; 4]>,
    /// The IOTLB: translations tagged with their domain ID.
    iotlb: Vec<translate::IotlbEntry>,
    /// Page directory entries cached by walks.
    pde_cache: Vec<translate::PdeEntry>,
    /// The devices' ATS translation caches (not the unit's: see the module).
    atc: Vec<translate::AtcEntry>,
    inj: Injections,
    /// An event whose tail moved but whose entry is not written yet: (address, entry,
    /// register reads left), see [`Injection::DelayedEventWrite`].
    pending_event: Option<(u64, [u64; 2], u32)>,
    /// Register reads left before `CmdBufRun` sets (see [`Injection::SlowCmdBufRun`]).
    pending_run: Option<u32>,
    /// Device table entries invalidated but still cached until the next COMPLETION_WAIT
    /// completes ([`AmdViModelConfig::devtab_invalidation_at_wait`]).
    pending_devtab: Vec<u16>,
    /// The request made after every command executed.
    busy: Option<BusyRequest>,
    stats: AmdViModelStats,
    /// Every command executed since [`AmdViModel::take_command_log`] while
    /// [`AmdViModel::record_commands`] is on (COMPLETION_WAITs included; a command the unit
    /// stopped on is not executed). Off by default: a bench's long run keeps no log.
    log: Option<Vec<[u64; 2]>>,
}

/// The model. Implements [`RegisterWindow`]; DMA is issued with [`dma`](Self::dma).
pub struct AmdViModel<'m> {
    state: Mutex<State<'m>>,
}

impl<'m> AmdViModel<'m> {
    /// A unit in its reset state (everything off), reading memory from `mem`.
    pub fn new(mem: &'m Arena, cfg: AmdViModelConfig) -> Self {
        Self {
            state: Mutex::new(State {
                mem,
                cfg,
                dev_tab_base: 0,
                cmd_base: 0,
                event_base: 0,
                control: 0,
                exclusion_base: 0,
                exclusion_limit: 0,
                cmd_head: 0,
                cmd_tail: 0,
                event_head: 0,
                event_tail: 0,
                status: 0,
                dte_cache: HashMap::new(),
                iotlb: Vec::new(),
                pde_cache: Vec::new(),
                atc: Vec::new(),
                inj: Injections::default(),
                pending_event: None,
                pending_run: None,
                pending_devtab: Vec::new(),
                busy: None,
                stats: AmdViModelStats::default(),
                log: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<'m>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counters.
    pub fn stats(&self) -> AmdViModelStats {
        self.lock().stats
    }

    /// Starts (or stops) logging every command the unit executes, for
    /// [`take_command_log`](Self::take_command_log).
    pub fn record_commands(&self, on: bool) {
        self.lock().log = on.then(Vec::new);
    }

    /// Every command executed since the last call (or since
    /// [`record_commands`](Self::record_commands)), oldest first, as its two quadwords; the log
    /// starts again empty. Empty when not recording.
    pub fn take_command_log(&self) -> Vec<[u64; 2]> {
        self.lock()
            .log
            .as_mut()
            .map(core::mem::take)
            .unwrap_or_default()
    }

    /// Makes `request` once after every command the unit executes from now on (`None`: stop):
    /// a device whose DMA (or ATS translation requests) goes on while commands run, as the
    /// unit translates requests and executes commands at the same time.
    pub fn request_during_commands(&self, request: Option<BusyRequest>) {
        self.lock().busy = request;
    }

    /// Arms a fault.
    pub fn inject(&self, injection: Injection) {
        let mut st = self.lock();
        match injection {
            Injection::IllegalCommandAt(n) => st.inj.illegal_at = n,
            Injection::CommandHardwareErrorAt(n) => st.inj.hw_error_at = n,
            Injection::StallWaits => st.inj.stall_waits = true,
            Injection::StallWaitAt(n) => st.inj.stall_wait_at = n,
            Injection::IotlbTimeout => st.inj.iotlb_timeout = true,
            Injection::StuckRun => st.inj.stuck_run = true,
            Injection::DelayedEventWrite(n) => st.inj.event_write_delay = n.max(1),
            Injection::LostEventWrite => st.inj.lost_event_write = true,
            Injection::SlowCmdBufRun(n) => st.inj.slow_cmd_buf_run = n.max(1),
        }
    }

    /// Disarms every fault, lets a stalled buffer run on and run bits held by
    /// [`Injection::StuckRun`] follow their enable bits.
    pub fn clear_injections(&self) {
        let mut st = self.lock();
        if st.inj.stuck_run {
            if st.control & regs::CTRL_CMD_BUF_EN == 0 {
                st.status &= !regs::ST_CMD_BUF_RUN;
            }
            if st.control & regs::CTRL_EVENT_LOG_EN == 0 {
                st.status &= !regs::ST_EVENT_LOG_RUN;
            }
        }
        st.inj = Injections::default();
        st.write_pending_event();
        st.start_pending_run();
        st.run_commands();
    }

    /// Sets the state firmware would leave: enabled, with its own device table, command
    /// buffer and event log at these addresses, and an exclusion range.
    pub fn firmware_state(&self, dev_tab_base: u64, cmd_base: u64, event_base: u64) {
        let mut st = self.lock();
        st.dev_tab_base = dev_tab_base;
        st.cmd_base = cmd_base;
        st.event_base = event_base;
        st.exclusion_base = 0x1 | 0x8000_0000;
        st.exclusion_limit = 0x8FFF_F000;
        st.control = regs::CTRL_IOMMU_EN | regs::CTRL_CMD_BUF_EN | regs::CTRL_EVENT_LOG_EN;
        st.status = regs::ST_CMD_BUF_RUN | regs::ST_EVENT_LOG_RUN;
    }

    /// Whether the exclusion range is enabled (`ExEn`).
    pub fn exclusion_enabled(&self) -> bool {
        self.lock().exclusion_base & 1 != 0
    }

    /// Entries in the device table cache and the IOTLB.
    pub fn cache_sizes(&self) -> (usize, usize) {
        let st = self.lock();
        (st.dte_cache.len(), st.iotlb.len())
    }

    /// Every page-table page the unit can still reach: walked from the roots of the device
    /// table's entries (the latched table) and of the cached entries, and the tables the page
    /// directory cache holds (walked too); for an entry with `GV`, its GCR3 table and the v2
    /// tables its valid entries name (GCR3 entries are not cached: read on every IOTLB miss).
    /// A page here that the allocator has back is memory the unit would read after it was
    /// freed.
    pub fn reachable_tables(&self) -> BTreeSet<u64> {
        let st = self.lock();
        let mut roots: Vec<(u64, u32)> = Vec::new();
        let mut guest: Vec<u64> = Vec::new();
        let push_dte = |roots: &mut Vec<(u64, u32)>, guest: &mut Vec<u64>, d: [u64; 4]| {
            let mode = ((d[0] >> 9) & 7) as u32;
            if d[0] & 3 == 3 && (1..=6).contains(&mode) {
                roots.push((d[0] & 0x000F_FFFF_FFFF_F000, mode));
            }
            if d[0] & 1 != 0 && d[0] & (1 << 55) != 0 {
                guest.push(
                    ((d[0] >> 58) & 0x7) << 12
                        | ((d[1] >> 16) & 0xFFFF) << 15
                        | ((d[1] >> 43) & 0x1F_FFFF) << 31,
                );
            }
        };
        if st.control & regs::CTRL_IOMMU_EN != 0 {
            let entries = ((st.dev_tab_base & 0x1FF) + 1) * 4096 / 32;
            let base = st.dev_tab_base & 0x000F_FFFF_FFFF_F000;
            for id in 0..entries {
                let mut d = [0u64; 4];
                let mut ok = true;
                for (i, w) in d.iter_mut().enumerate() {
                    match st.mem.read_u64(base + id * 32 + 8 * i as u64) {
                        Some(v) => *w = v,
                        None => ok = false,
                    }
                }
                if ok {
                    push_dte(&mut roots, &mut guest, d);
                }
            }
        }
        for d in st.dte_cache.values() {
            push_dte(&mut roots, &mut guest, *d);
        }
        roots.extend(st.pde_cache.iter().map(|p| (p.table, p.level)));
        let mut seen = BTreeSet::new();
        st.guest_tables(guest, &mut seen);
        while let Some((table, level)) = roots.pop() {
            if !seen.insert(table) || level <= 1 {
                continue;
            }
            for i in 0..512u64 {
                let Some(e) = st.mem.read_u64(table + i * 8) else {
                    break;
                };
                let next = ((e >> 9) & 7) as u32;
                if e & 1 != 0 && (1..level).contains(&next) {
                    roots.push((e & 0x000F_FFFF_FFFF_F000, next));
                }
            }
        }
        seen
    }

    /// What a read of `iova` by `device_id` translates to from memory alone: the device table
    /// entry and the page tables as memory holds them, every cache ignored, nothing cached,
    /// no event logged and no counter moved (for tests that compare what the tables say
    /// before and after a call). `None`: the request faults.
    pub fn translate_in_memory(&self, device_id: u16, iova: u64) -> Option<u64> {
        self.translate_in_memory_pasid(device_id, None, iova)
    }

    /// As [`translate_in_memory`](Self::translate_in_memory), for a request with `pasid`
    /// (through the device's GCR3 table).
    pub fn translate_in_memory_pasid(
        &self,
        device_id: u16,
        pasid: Option<u32>,
        iova: u64,
    ) -> Option<u64> {
        let mut st = self.lock();
        let caches = (
            core::mem::take(&mut st.dte_cache),
            core::mem::take(&mut st.iotlb),
            core::mem::take(&mut st.pde_cache),
        );
        let kept = (st.stats, st.event_tail, st.status, st.control);
        // The walk logs no event: the log is off for it.
        st.control &= !regs::CTRL_EVENT_LOG_EN;
        let pa = st
            .translate(device_id, pasid, iova, false)
            .ok()
            .map(|t| t.pa);
        (st.dte_cache, st.iotlb, st.pde_cache) = caches;
        (st.stats, st.event_tail, st.status, st.control) = kept;
        pa
    }

    /// The domain IDs the IOTLB and the page directory cache hold entries for.
    pub fn cached_domain_ids(&self) -> BTreeSet<u16> {
        let st = self.lock();
        st.iotlb
            .iter()
            .map(|e| e.domain)
            .chain(st.pde_cache.iter().map(|p| p.domain))
            .collect()
    }

    /// Raises an event as the unit would (for tests of the log's overflow handling).
    pub fn raise_event(&self, raw: [u64; 2]) {
        self.lock().log_event(raw);
    }
}

impl State<'_> {
    /// Adds to `seen` the GCR3 tables `gcr3` and the v2 (x86-64 4-level) tables their valid
    /// entries name, walked down to the last table (`PS`, bit 7, ends a walk at levels 3 and
    /// 2).
    fn guest_tables(&self, gcr3: Vec<u64>, seen: &mut BTreeSet<u64>) {
        let mut v2: Vec<(u64, u32)> = Vec::new();
        for g in gcr3 {
            if !seen.insert(g) {
                continue;
            }
            for i in 0..512u64 {
                match self.mem.read_u64(g + i * 8) {
                    Some(e) if e & 1 != 0 => v2.push((e & 0x000F_FFFF_FFFF_F000, 4)),
                    Some(_) => {}
                    None => break,
                }
            }
        }
        while let Some((table, level)) = v2.pop() {
            if !seen.insert(table) || level <= 1 {
                continue;
            }
            for i in 0..512u64 {
                let Some(e) = self.mem.read_u64(table + i * 8) else {
                    break;
                };
                if e & 1 != 0 && e & (1 << 7) == 0 {
                    v2.push((e & 0x000F_FFFF_FFFF_F000, level - 1));
                }
            }
        }
    }

    fn ring_size(base: u64) -> u64 {
        16u64 << ((base >> 56) & 0xF)
    }

    fn ring_addr(base: u64) -> u64 {
        base & 0x000F_FFFF_FFFF_F000
    }

    /// Writes an event at the tail, or drops it (log off, stopped or full: overflow).
    fn log_event(&mut self, raw: [u64; 2]) {
        if self.control & regs::CTRL_EVENT_LOG_EN == 0 || self.status & regs::ST_EVENT_LOG_RUN == 0
        {
            self.stats.events_dropped += 1;
            return;
        }
        let size = Self::ring_size(self.event_base);
        let next = (self.event_tail + 16) % size;
        if next == self.event_head {
            self.status |= regs::ST_EVENT_OVERFLOW;
            self.status &= !regs::ST_EVENT_LOG_RUN;
            self.stats.events_dropped += 1;
            return;
        }
        let at = Self::ring_addr(self.event_base) + self.event_tail;
        // The unit's entry writes are ordered: a delayed one lands before any later one.
        self.write_pending_event();
        if self.inj.lost_event_write {
            self.inj.lost_event_write = false;
            self.stats.injections_fired += 1;
        } else if self.inj.event_write_delay != 0 {
            // The tail moves now, the entry later (see `Injection::DelayedEventWrite`).
            self.pending_event = Some((at, raw, self.inj.event_write_delay));
            self.inj.event_write_delay = 0;
            self.stats.injections_fired += 1;
        } else if !(self.mem.write_u64(at, raw[0]) && self.mem.write_u64(at + 8, raw[1])) {
            self.stats.events_dropped += 1;
            return;
        }
        self.event_tail = next;
        self.status |= regs::ST_EVENT_LOG_INT;
        self.stats.events_logged += 1;
    }

    /// Writes the delayed event's entry (see `Injection::DelayedEventWrite`).
    fn write_pending_event(&mut self) {
        if let Some((at, raw, _)) = self.pending_event.take() {
            // Second quadword first: the code (first quadword, bits 63:60) is the last to
            // appear, as for a unit that writes the entry's halves in any order.
            let _ = self.mem.write_u64(at + 8, raw[1]) && self.mem.write_u64(at, raw[0]);
        }
    }

    /// Sets `CmdBufRun` held back by [`Injection::SlowCmdBufRun`] (if `CmdBufEn` is still set).
    fn start_pending_run(&mut self) {
        if self.pending_run.take().is_some() && self.control & regs::CTRL_CMD_BUF_EN != 0 {
            self.status |= regs::ST_CMD_BUF_RUN;
            self.run_commands();
        }
    }

    /// One register read: the delayed event's entry and a slow `CmdBufRun` come nearer.
    fn tick(&mut self) {
        if let Some((_, _, left)) = self.pending_event.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.write_pending_event();
            }
        }
        if let Some(left) = self.pending_run.as_mut() {
            *left -= 1;
            if *left == 0 {
                self.start_pending_run();
            }
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        match offset {
            regs::DEV_TAB_BASE => self.dev_tab_base,
            regs::CMD_BUF_BASE => self.cmd_base,
            regs::EVENT_LOG_BASE => self.event_base,
            regs::CONTROL => self.control,
            regs::EXCLUSION_BASE => self.exclusion_base,
            regs::EXCLUSION_LIMIT => self.exclusion_limit,
            regs::EFR => self.cfg.efr,
            regs::EFR2 => self.cfg.efr2,
            regs::CMD_HEAD => self.cmd_head,
            regs::CMD_TAIL => self.cmd_tail,
            regs::EVENT_HEAD => self.event_head,
            regs::EVENT_TAIL => self.event_tail,
            regs::STATUS => self.status,
            _ => 0,
        }
    }

    fn write64(&mut self, offset: usize, value: u64) {
        let iommu_on = self.control & regs::CTRL_IOMMU_EN != 0;
        let cmd_on = self.control & regs::CTRL_CMD_BUF_EN != 0;
        let log_on = self.control & regs::CTRL_EVENT_LOG_EN != 0;
        match offset {
            regs::DEV_TAB_BASE if iommu_on => self.stats.ignored_writes += 1,
            regs::DEV_TAB_BASE => self.dev_tab_base = value,
            regs::CMD_BUF_BASE | regs::CMD_HEAD if cmd_on => self.stats.ignored_writes += 1,
            regs::CMD_BUF_BASE => self.cmd_base = value,
            regs::CMD_HEAD => self.cmd_head = value & regs::POINTER_MASK,
            regs::EVENT_LOG_BASE if log_on => self.stats.ignored_writes += 1,
            regs::EVENT_LOG_BASE
                if self.cfg.event_base_kept_while_event_int
                    && self.status & regs::ST_EVENT_LOG_INT != 0 =>
            {
                self.stats.ignored_writes += 1;
            }
            regs::EVENT_LOG_BASE => self.event_base = value,
            regs::EXCLUSION_BASE => self.exclusion_base = value,
            regs::EXCLUSION_LIMIT => self.exclusion_limit = value,
            regs::CMD_TAIL => {
                self.cmd_tail = value & regs::POINTER_MASK;
                self.run_commands();
            }
            regs::EVENT_HEAD => self.event_head = value & regs::POINTER_MASK,
            regs::EVENT_TAIL if log_on => self.stats.ignored_writes += 1,
            regs::EVENT_TAIL => self.event_tail = value & regs::POINTER_MASK,
            regs::STATUS => self.status &= !(value & regs::ST_RW1C),
            regs::CONTROL => self.write_control(value),
            _ => {}
        }
    }

    fn write_control(&mut self, value: u64) {
        let old = self.control;
        self.control = value;
        let rose = value & !old;
        let fell = old & !value;
        if fell & (regs::CTRL_CMD_BUF_EN | regs::CTRL_EVENT_LOG_EN) != 0 && self.inj.stuck_run {
            self.stats.injections_fired += 1;
        }
        if fell & regs::CTRL_CMD_BUF_EN != 0 && !self.inj.stuck_run {
            self.status &= !regs::ST_CMD_BUF_RUN;
        }
        if fell & regs::CTRL_EVENT_LOG_EN != 0 && !self.inj.stuck_run {
            self.status &= !regs::ST_EVENT_LOG_RUN;
        }
        if rose & regs::CTRL_EVENT_LOG_EN != 0 {
            self.status |= regs::ST_EVENT_LOG_RUN;
        }
        if rose & regs::CTRL_IOMMU_EN != 0 {
            // A newly enabled unit starts with empty caches only if software says so: the
            // caches are kept, as hardware keeps them across IommuEn.
        }
        if fell & regs::CTRL_CMD_BUF_EN != 0 {
            self.pending_run = None;
        }
        if rose & regs::CTRL_CMD_BUF_EN != 0 && self.inj.slow_cmd_buf_run != 0 {
            self.stats.injections_fired += 1;
            self.pending_run = Some(self.inj.slow_cmd_buf_run);
        } else if rose & regs::CTRL_CMD_BUF_EN != 0 {
            self.status |= regs::ST_CMD_BUF_RUN;
            self.run_commands();
        }
    }
}

impl RegisterWindow for AmdViModel<'_> {
    fn read32(&self, offset: usize) -> u32 {
        let mut st = self.lock();
        st.tick();
        let v = st.read64(offset & !7);
        (v >> ((offset & 4) * 8)) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut st = self.lock();
        let old = st.read64(offset & !7);
        let shift = (offset & 4) * 8;
        let new = (old & !(0xFFFF_FFFFu64 << shift)) | u64::from(value) << shift;
        st.write64(offset & !7, new);
    }

    fn read64(&self, offset: usize) -> u64 {
        let mut st = self.lock();
        st.tick();
        st.read64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.lock().write64(offset, value)
    }
}

impl core::fmt::Debug for AmdViModel<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let st = self.lock();
        f.debug_struct("AmdViModel")
            .field("control", &format_args!("{:#x}", st.control))
            .field("status", &format_args!("{:#x}", st.status))
            .field("stats", &st.stats)
            .finish_non_exhaustive()
    }
}
