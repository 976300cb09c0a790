//! A behavioural model of an Arm SMMUv3 (Arm IHI 0070 G.b): the yardstick the `smmuv3` driver is
//! tested against.
//!
//! Written from the specification with its own constants; it imports nothing from the driver or
//! the page-table engine. Table walks use the independent reference walkers of
//! [`crate::sim::walk`]. What it models:
//!
//! - the register file of §6 (`regs.rs`): ID registers from [`SmmuModelConfig`], CR0/CR0ACK
//!   (ACK follows at once), GBPA (UPDATE completes at once), GERROR/GERRORN, queue registers
//!   (EVENTQ_PROD/CONS in page 1), unknown offsets reading 0;
//! - the command consumer of §4 and §7.1 ([`cmdq`]): commands run synchronously when CMDQ_PROD
//!   is written; malformed commands raise CERROR_ILL and stop consumption until GERRORN
//!   acknowledges the error;
//! - caches that keep entries until invalidated (`tlb.rs`): STEs, CDs, a TLB and a walk cache;
//! - translation (`translate.rs`, `ste.rs`, `cd.rs`, `strtab.rs`) through STE, CD, stage 1 and stage 2 (nested: stage-1 table
//!   and CD addresses are IPAs), with the event of §7.3 written to the event queue ([`event`]);
//! - fault injection ([`Injection`]).
//!
//! # Model choices (where the architecture allows more than one behaviour)
//! - Caches never evict. Invalid or illegal STEs/CDs are not cached. A cached CD is used only
//!   while the STE still points at the same CD table. Valid level-1 stream-table and CD-table
//!   descriptors are cached (by address) until CFGI_STE / CFGI_CD with Leaf = 0,
//!   CFGI_STE_RANGE, CFGI_CD_ALL or CFGI_ALL covers them. CFGI_STE and CFGI_STE_RANGE drop
//!   the CDs and L1CDs cached through their StreamIDs whatever Leaf says (§4.3.1, §4.3.2; QEMU
//!   drops its per-device configuration, CD included; until 2026-12-07 the model kept them).
//! - TLBI_S2_IPA removes stage-2-only entries; combined (nested) entries need TLBI_NH_* or
//!   TLBI_S12_VMALL. TLBI_NH_ASID leaves global (nG = 0) entries. A range TLBI removes only
//!   entries of the TG granule and, with a TTL hint, of that leaf level.
//! - Reserved command fields must be zero (CERROR_ILL otherwise), including TG/NUM/SCALE/TTL
//!   without IDR3.RIL, and NUM/SCALE/TTL with TG = 0.
//! - Incoming transactions are Normal Non-cacheable (a no-snoop DMA) unless stage 1 gives them a
//!   type: `DmaOk::cacheable_wb` says whether the SMMU made the access write-back anyway.
//!   Whether the access snoops is the platform's matter, not the SMMU's: `DmaOk::coherent` is
//!   set only for StreamIDs the configuration declares `CANWBS` (ACPI IORT), since a PCIe
//!   No-Snoop transaction can bypass the caches before any SMMU attribute, FWB included,
//!   applies.
//! - Hardware updates (IDR0.HTTU with CD.HA/HD, STE.S2HA/S2HD): AF is set when a walk uses a
//!   leaf; a writable-clean DBM leaf is made dirty (stage 1 clears `AP[2]`, stage 2 sets
//!   `S2AP[1]`) on the first write through its TLB entry, and not again until that entry is
//!   invalidated -- so cleaning dirty state without a TLBI loses later writes, as on hardware.
//!   Updates are read-modify-write through the arena, not atomic against a concurrent CPU write.
//! - the PRI queue of chapter 8 ([`priq`]): devices' page requests, overflow and automatic
//!   responses, `CMD_PRI_RESP` and the device's retry;
//! - stalls (§3.12.2, [`stall`]): a translation-related fault of a stage configured to stall
//!   holds the transaction, records it with `Stall` = 1 and a STAG, and CMD_RESUME retries or
//!   aborts it (CMD_STALL_TERM terminates a stream's);
//! - Not modelled: Secure state, ATS translation requests, STE.STRW = EL2,
//!   AArch32 and big-endian tables, MSIs for events and GERROR, cache maintenance for
//!   IDR0.COHACC = 0 (the model reads memory as it is; the arena's sync recorder checks that).

mod cd;
pub mod cmdq;
pub mod config;
pub mod event;
pub mod priq;
mod reach;
mod regs;
mod stage;
pub mod stall;
mod ste;
mod strtab;
mod tlb;
mod translate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

pub use cmdq::{cerror, op};
pub use config::SmmuModelConfig;
pub use event::{EventRecord, FaultClass};
pub use reach::Reach;

use crate::mmio::RegisterWindow;
use crate::sim::arena::Arena;
use crate::sim::walk::Access;
use regs::{cr0, gbpa, gerror, Regs, EVENTQ_OVFLG};

/// A translation that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaOk {
    /// Output (physical) address of the byte.
    pub pa: u64,
    /// Log2 of the size of the mapping that translated it (the smaller stage when nested).
    pub page_size_log2: u32,
    /// The effective memory type after stage 2 (and FWB) is Normal inner and outer Write-Back,
    /// for a transaction that arrived Non-cacheable (see the module's model choices).
    pub cacheable_wb: bool,
    /// The access snooped CPU caches although it arrived as a PCIe No-Snoop transaction: the
    /// platform declares the stream `CANWBS` ([`SmmuModelConfig::with_canwbs`]).
    pub coherent: bool,
    /// Stage-2 `MemAttr[3:0]` of the leaf, when stage 2 translated.
    pub s2_memattr: Option<u8>,
    /// The translation came from the TLB.
    pub tlb_hit: bool,
}

/// A translation that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaFault {
    /// Event type code ([`event::F_TRANSLATION`], ...), or [`event::EVENT_NONE`] for a silent
    /// abort.
    pub event: u8,
    /// An event record was written to the event queue.
    pub recorded: bool,
    /// A stage-2 fault.
    pub stage2: bool,
    /// CLASS of a translation fault.
    pub class: FaultClass,
    /// The record's second address: the IPA of a stage-2 fault or the address of a fetch abort.
    pub addr2: u64,
    /// The transaction is stalled with this STAG (its record has `Stall` = 1): it waits for
    /// CMD_RESUME or CMD_STALL_TERM ([`stall`]).
    pub stag: Option<u16>,
}

/// What the model counted since creation or [`SmmuModel::reset_stats`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmmuModelStats {
    /// Commands consumed without error and not ignored, by opcode.
    pub commands: BTreeMap<u8, u64>,
    /// CMD_ATC_INV and CMD_PRI_RESP consumed while SMMUEN = 0: ignored (§6.3.9.6), not in
    /// `commands` (the command log has them).
    pub ignored_commands: u64,
    /// CMD_ATC_INV that took effect (SMMUEN = 1), by StreamID.
    pub atc_invalidations: BTreeMap<u32, u64>,
    /// CMD_SYNCs completed.
    pub syncs: u64,
    /// MSI writes made by CMD_SYNCs.
    pub sync_msi_writes: u64,
    /// SEVs sent by CMD_SYNCs.
    pub sync_sevs: u64,
    /// Command errors raised.
    pub cerrors: u64,
    /// Register writes ignored because the register was not writable then (e.g. CMDQ_BASE with
    /// CMDQEN set, GBPA without UPDATE).
    pub ignored_writes: u64,
    /// Translations requested.
    pub translations: u64,
    /// Translations that failed.
    pub faults: u64,
    /// Translations served by the TLB.
    pub tlb_hits: u64,
    /// Translations that walked.
    pub tlb_misses: u64,
    /// TLB entries removed by commands.
    pub tlb_entries_invalidated: usize,
    /// Walk-cache entries removed by commands.
    pub walk_entries_invalidated: usize,
    /// STE cache entries removed by commands.
    pub ste_invalidated: usize,
    /// CD cache entries removed by commands.
    pub cd_invalidated: usize,
    /// Level-1 stream table and CD table descriptors removed by commands.
    pub l1_invalidated: usize,
    /// Event records written.
    pub events_written: u64,
    /// Events lost to a full queue (overflow).
    pub events_lost: u64,
    /// Events dropped because the queue was disabled or broken.
    pub events_discarded: u64,
    /// Times an armed [`Injection`] took effect: a command error it raised, a CMD_SYNC it
    /// stalled, a completion MSI it aborted, a CR0 or GBPA write whose acknowledgement it held
    /// back, a register write it dropped, a read of GERROR that showed a global error it raised
    /// (service failure included) still unacknowledged. A fault-matrix cell checks that its
    /// fault met the call this way.
    pub injections_fired: u64,
    /// Reads of GERROR: where the driver can see a global error.
    pub gerror_reads: u64,
    /// Register writes by offset (a 64-bit register at its base), dropped ones included.
    pub register_writes: BTreeMap<usize, u64>,
}

impl SmmuModelStats {
    /// Commands of `opcode` consumed.
    pub fn commands_of(&self, opcode: u8) -> u64 {
        self.commands.get(&opcode).copied().unwrap_or(0)
    }

    /// Every command consumed.
    pub fn total_commands(&self) -> u64 {
        self.commands.values().sum()
    }

    /// Writes of the register at `offset` (IHI 0070 §6.3), dropped ones included: what a
    /// register injection ([`Injection::IgnoreWrites`], [`Injection::Cr0AckStuck`] on CR0,
    /// [`Injection::GbpaUpdateStuck`] on GBPA) can meet.
    pub fn register_writes(&self, offset: usize) -> u64 {
        self.register_writes.get(&offset).copied().unwrap_or(0)
    }
}

/// A fault to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injection {
    /// The next command consumed raises CERROR_ILL whatever it holds.
    CommandIllegal,
    /// Fetching the next command aborts: CERROR_ABT, once (the re-fetch after GERRORN succeeds).
    CommandAbort,
    /// CMD_SYNCs never complete: consumption stops on the first one (CONS stays on it) until
    /// [`SmmuModel::clear_injections`].
    SyncStall,
    /// CR0ACK stops following CR0 until [`SmmuModel::clear_injections`].
    Cr0AckStuck,
    /// Writes to the register at this offset (a 32-bit register, or a 64-bit one written whole
    /// or by halves) are dropped until [`SmmuModel::clear_injections`]: a register write the
    /// unit ignores.
    IgnoreWrites(usize),
    /// GBPA updates never complete: a write with UPDATE leaves UPDATE set and the old fields in
    /// force until [`SmmuModel::clear_injections`], which completes it.
    GbpaUpdateStuck,
    /// The next CMD_SYNC that waits on an ATC invalidation (a CMD_ATC_INV consumed since the
    /// previous CMD_SYNC completed) reports its completion timeout: CERROR_ATC_INV_SYNC with
    /// CONS on the CMD_SYNC, which runs again once GERRORN acknowledges the error. A CMD_SYNC
    /// with no CMD_ATC_INV to wait on completes: the injection waits for the next one that has
    /// (IHI 0070 G.b §4.7, §7.1: the error reports ATC invalidations the CMD_SYNC waited on).
    AtcInvSyncTimeout,
    /// The next command with this opcode ([`cmdq::op`]) is CERROR_ILL, once: a command the
    /// unit refuses, whatever its position in the queue.
    CommandIllegalOpcode(u8),
    /// The first CMD_SYNC after the next command with this opcode ([`cmdq::op`]) never
    /// completes, nor does any later one, until [`SmmuModel::clear_injections`]
    /// ([`Injection::SyncStall`] armed by that command): the wait for one command times out.
    SyncStallAfter(u8),
    /// The command `at` commands from now (0: the next one consumed) is CERROR_ILL, once.
    CommandIllegalAt {
        /// Commands consumed before it.
        at: u32,
    },
    /// Fetching the command `at` commands from now aborts (CERROR_ABT) `times` times in a row:
    /// each GERRORN acknowledgement re-fetches it (§7.1). `u32::MAX`: until
    /// [`SmmuModel::clear_injections`] (a persistent abort).
    CommandAbortAt {
        /// Commands consumed before it.
        at: u32,
        /// Fetches that abort.
        times: u32,
    },
    /// The CMD_SYNC `at` CMD_SYNCs from now reports CERROR_ATC_INV_SYNC `times` times in a row
    /// (`u32::MAX`: until cleared); each acknowledgement runs it again. As for
    /// [`Injection::AtcInvSyncTimeout`], only a CMD_SYNC that waits on a CMD_ATC_INV can: if
    /// that one does not, the injection moves to the next CMD_SYNC that does (never dropped:
    /// a cell meant to meet an ATC timeout meets the first one the call can have).
    AtcInvSyncAt {
        /// CMD_SYNCs completed before it.
        at: u32,
        /// Attempts that fail.
        times: u32,
    },
    /// Every CMD_SYNC completion MSI aborts (GERROR.MSI_CMDQ_ABT_ERR); the CMD_SYNC itself
    /// completes (CONS passes it). Until [`SmmuModel::clear_injections`].
    SyncMsiAbort,
    /// Service failure mode (§12.3): GERROR.SFM_ERR is raised, no command is consumed, no event
    /// recorded and every transaction terminated, whatever GERRORN says, until
    /// [`SmmuModel::reset`] (the mode is left only by a reset).
    ServiceFailure,
    /// Raises the given GERROR bits (other than CMDQ_ERR and SFM_ERR, which have their own
    /// injections) as the hardware would report them: EVENTQ_ABT_ERR also stops event
    /// delivery until acknowledged.
    GlobalError(u32),
}

/// A command error armed for a command still to come.
#[derive(Clone, Copy, Debug)]
struct Armed {
    /// CMDQ_CONS.ERR code to raise.
    code: u8,
    /// Counts only commands with this opcode (CMD_SYNC for CERROR_ATC_INV_SYNC); `None`:
    /// every command.
    only: Option<u8>,
    /// Matching commands still to be consumed before it fires.
    countdown: u32,
    /// Fires left (`u32::MAX`: forever).
    times: u32,
}

#[derive(Clone, Debug, Default)]
struct Injections {
    armed: Vec<Armed>,
    sync_stall: bool,
    /// [`Injection::SyncStallAfter`]: `sync_stall` is set once a command with this opcode
    /// is consumed.
    sync_stall_after: Option<u8>,
    cr0ack_stuck: bool,
    gbpa_stuck: bool,
    msi_abort: bool,
    /// [`Injection::IgnoreWrites`].
    ignore_write: Option<usize>,
    /// GERROR bits raised by [`Injection::GlobalError`] / [`Injection::ServiceFailure`].
    global: u32,
    /// A GBPA write waiting for its UPDATE to complete.
    gbpa_pending: Option<u32>,
}

/// Everything behind the model's lock.
pub(crate) struct State {
    regs: Regs,
    caches: tlb::Caches,
    stats: SmmuModelStats,
    log: Vec<[u64; 2]>,
    injections: Injections,
    /// A CMD_SYNC is stalled (injected): consumption waits.
    sync_stalled: bool,
    /// In service failure mode (injected): left only by [`SmmuModel::reset`].
    service_failure: bool,
    /// The PRI queue's requests and responses ([`priq`]).
    pri: priq::PriState,
    /// Stalled transactions ([`stall`]).
    stalls: stall::StallState,
    /// A CMD_ATC_INV was consumed since the last CMD_SYNC completed: the next CMD_SYNC waits
    /// on it, and only such a CMD_SYNC can report CERROR_ATC_INV_SYNC.
    atc_inv_outstanding: bool,
}

impl State {
    /// The command error armed for the command about to be consumed (`sync`: it is a
    /// CMD_SYNC), if one fires now.
    fn command_fault(&mut self, opcode: Option<u8>) -> Option<u8> {
        let atc_waited = self.atc_inv_outstanding;
        let armed = &mut self.injections.armed;
        // An ATC timeout left at countdown 0 by a CMD_SYNC with no ATC invalidation to wait on
        // stays armed for the next one that has.
        let eligible = |a: &Armed| a.code != cerror::ATC_INV_SYNC || atc_waited;
        let i = armed.iter().position(|a| {
            a.countdown == 0 && (a.only.is_none() || a.only == opcode) && eligible(a)
        })?;
        let a = armed.get_mut(i)?;
        let code = a.code;
        self.stats.injections_fired += 1;
        if a.times != u32::MAX {
            a.times -= 1;
        }
        if a.times == 0 {
            armed.remove(i);
        }
        Some(code)
    }

    /// A command was consumed without error: armed errors come one command closer.
    fn command_consumed(&mut self, opcode: u8) {
        match opcode {
            cmdq::op::ATC_INV => self.atc_inv_outstanding = true,
            cmdq::op::CMD_SYNC => self.atc_inv_outstanding = false,
            _ => {}
        }
        for a in &mut self.injections.armed {
            if a.only.map_or(true, |o| o == opcode) {
                a.countdown = a.countdown.saturating_sub(1);
            }
        }
        if self.injections.sync_stall_after == Some(opcode) {
            self.injections.sync_stall_after = None;
            self.injections.sync_stall = true;
        }
    }
}

/// The model: register window, caches and translation over memory in an [`Arena`].
pub struct SmmuModel<'m> {
    mem: &'m Arena,
    cfg: SmmuModelConfig,
    state: Mutex<State>,
}

impl<'m> SmmuModel<'m> {
    /// A model in its reset state, reading and writing memory in `mem`.
    pub fn new(mem: &'m Arena, cfg: SmmuModelConfig) -> Self {
        Self {
            mem,
            cfg,
            state: Mutex::new(State {
                regs: Regs::reset(),
                caches: tlb::Caches::default(),
                stats: SmmuModelStats::default(),
                log: Vec::new(),
                injections: Injections::default(),
                sync_stalled: false,
                service_failure: false,
                pri: priq::PriState::default(),
                stalls: stall::StallState::default(),
                atc_inv_outstanding: false,
            }),
        }
    }

    /// The ID registers it reports.
    pub fn config(&self) -> &SmmuModelConfig {
        &self.cfg
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Translates `iova` for a transaction from StreamID `sid` (and SubstreamID `ssid`).
    ///
    /// # Errors
    ///
    /// [`DmaFault`] with the event the SMMU raises; the record is in the event queue when
    /// [`DmaFault::recorded`].
    pub fn translate(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<DmaOk, DmaFault> {
        let req = translate::Request {
            sid,
            ssid,
            iova,
            access,
        };
        translate::translate(&mut self.lock(), self.mem, &self.cfg, req)
    }

    /// What the stream table, CDs and translation tables in memory translate `iova` to for
    /// `sid` (and `ssid`), as a walk with empty caches finds it: the output address, or `None`
    /// for a fault (or the unit off). Unlike [`translate`](Self::translate) it changes nothing
    /// the model keeps (no cache fill, no event, no counter): for tests that compare what the
    /// tables say before and after a call.
    pub fn translate_in_memory(
        &self,
        sid: u32,
        ssid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Option<u64> {
        let req = translate::Request {
            sid,
            ssid,
            iova,
            access,
        };
        translate::in_memory(&self.lock(), self.mem, &self.cfg, req)
    }

    /// A PCIe ATS-translated transaction from `sid` at address `addr` (already translated by
    /// the device's ATC): passes when STE.EATS allows it, F_TRANSL_FORBIDDEN otherwise.
    ///
    /// # Errors
    ///
    /// As [`translate`](Self::translate).
    pub fn translated_transaction(
        &self,
        sid: u32,
        addr: u64,
        access: Access,
    ) -> Result<DmaOk, DmaFault> {
        let req = translate::Request {
            sid,
            ssid: None,
            iova: addr,
            access,
        };
        translate::translated(&mut self.lock(), self.mem, &self.cfg, req)
    }

    /// The counters.
    pub fn stats(&self) -> SmmuModelStats {
        self.lock().stats.clone()
    }

    /// Every command consumed (raw words), oldest first.
    pub fn command_log(&self) -> Vec<[u64; 2]> {
        self.lock().log.clone()
    }

    /// Clears the counters and the command log.
    pub fn reset_stats(&self) {
        let mut st = self.lock();
        st.stats = SmmuModelStats::default();
        st.log.clear();
    }

    /// Arms a fault injection.
    pub fn inject(&self, injection: Injection) {
        let mut st = self.lock();
        let sync = Some(cmdq::op::CMD_SYNC);
        let mut arm = |code, only, countdown, times| {
            st.injections.armed.push(Armed {
                code,
                only,
                countdown,
                times,
            })
        };
        match injection {
            Injection::CommandIllegal => arm(cerror::ILL, None, 0, 1),
            Injection::CommandIllegalAt { at } => arm(cerror::ILL, None, at, 1),
            Injection::CommandIllegalOpcode(opcode) => arm(cerror::ILL, Some(opcode), 0, 1),
            Injection::CommandAbort => arm(cerror::ABT, None, 0, 1),
            Injection::CommandAbortAt { at, times } => arm(cerror::ABT, None, at, times.max(1)),
            Injection::AtcInvSyncTimeout => arm(cerror::ATC_INV_SYNC, sync, 0, 1),
            Injection::AtcInvSyncAt { at, times } => {
                arm(cerror::ATC_INV_SYNC, sync, at, times.max(1))
            }
            Injection::SyncStall => st.injections.sync_stall = true,
            Injection::SyncStallAfter(opcode) => st.injections.sync_stall_after = Some(opcode),
            Injection::Cr0AckStuck => st.injections.cr0ack_stuck = true,
            Injection::GbpaUpdateStuck => st.injections.gbpa_stuck = true,
            Injection::IgnoreWrites(offset) => st.injections.ignore_write = Some(offset),
            Injection::SyncMsiAbort => st.injections.msi_abort = true,
            Injection::ServiceFailure => {
                st.service_failure = true;
                st.injections.global |= gerror::SFM_ERR;
                st.regs.raise_gerror(gerror::SFM_ERR);
            }
            Injection::GlobalError(bits) => {
                let bits = bits & gerror::ALL & !(gerror::CMDQ_ERR | gerror::SFM_ERR);
                st.injections.global |= bits;
                for bit in (0..32).map(|b| 1u32 << b).filter(|b| bits & b != 0) {
                    st.regs.raise_gerror(bit);
                }
            }
        }
    }

    /// Disarms every injection; a stalled CMD_SYNC completes and consumption resumes, and CR0ACK
    /// catches up with CR0. Service failure mode stays: only [`reset`](Self::reset) leaves it.
    pub fn clear_injections(&self) {
        let mut st = self.lock();
        if let Some(v) = st.injections.gbpa_pending {
            st.regs.gbpa = v;
        }
        st.injections = Injections::default();
        st.sync_stalled = false;
        st.regs.cr0ack = st.regs.cr0;
        cmdq::consume(&mut st, self.mem, &self.cfg);
    }

    /// Every structure the SMMU can still reach through its registers, tables and caches, and
    /// the tags its TLB entries are held under (see [`Reach`]).
    pub fn reachable(&self) -> Reach {
        let st = self.lock();
        reach::reachable(&st, self.mem, &self.cfg)
    }

    /// Whether the model is in service failure mode.
    pub fn in_service_failure(&self) -> bool {
        self.lock().service_failure
    }

    /// A reset of the SMMU (the only way out of service failure mode, §12.3): every register
    /// back to its reset value, every cache empty, every injection cleared. Memory and the
    /// counters are kept.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.regs = Regs::reset();
        st.caches = tlb::Caches::default();
        st.injections = Injections::default();
        st.sync_stalled = false;
        st.service_failure = false;
        st.atc_inv_outstanding = false;
    }

    /// A CPU's broadcast `TLBI VMALLS12E1IS` for `vmid` (a hypervisor invalidating its guest):
    /// with `IDR0.BTM` and `CR2.PTM` = 0 the SMMU takes part (IHI 0070 G.b §6.3.12) and drops
    /// every TLB entry of that VMID, its own or not. Returns the entries dropped.
    pub fn broadcast_tlbi_vmall(&self, vmid: u16) -> usize {
        const CR2_PTM: u32 = 1 << 2;
        let mut st = self.lock();
        if !self.cfg.has0(config::idr0::BTM) || st.regs.cr2 & CR2_PTM != 0 {
            return 0;
        }
        let inv = tlb::Invalidation {
            scope: tlb::Scope::Vmid(vmid),
            range: None,
            leaf: false,
        };
        let (tlb, walk) = st.caches.invalidate(&inv);
        st.stats.tlb_entries_invalidated += tlb;
        st.stats.walk_entries_invalidated += walk;
        tlb
    }

    /// CR2 as software last wrote it.
    pub fn cr2(&self) -> u32 {
        self.lock().regs.cr2
    }

    /// Number of TLB entries, walk-cache entries, cached STEs and cached CDs.
    pub fn cache_sizes(&self) -> (usize, usize, usize, usize) {
        let st = self.lock();
        let c = &st.caches;
        (c.tlb.len(), c.walk.len(), c.ste.len(), c.cd.len())
    }

    /// A device's PCIe page request arriving at the SMMU (see [`priq`]).
    pub fn page_request(&self, req: priq::PriRequest) -> priq::PriOutcome {
        priq::page_request(&mut self.lock(), self.mem, &self.cfg, req)
    }

    /// Every PRG response the SMMU sent devices, oldest first.
    pub fn pri_responses(&self) -> Vec<priq::PriResponse> {
        self.lock().pri.responses.clone()
    }

    /// Every page a device asked for again after a Success response.
    pub fn pri_retries(&self) -> Vec<priq::PriRetry> {
        self.lock().pri.retries.clone()
    }

    /// Page requests queued whose group was not answered yet.
    pub fn outstanding_page_requests(&self) -> usize {
        self.lock().pri.outstanding.len()
    }

    /// Transactions stalled now, oldest first.
    pub fn stalled(&self) -> Vec<stall::Stalled> {
        self.lock().stalls.held.clone()
    }

    /// What became of every stalled transaction that was resumed or terminated, in order.
    pub fn stall_outcomes(&self) -> Vec<stall::StallOutcome> {
        self.lock().stalls.outcomes.clone()
    }

    /// Page requests discarded in a PRI queue overflow condition.
    pub fn pri_lost(&self) -> u64 {
        self.lock().pri.lost
    }

    /// Event records software has not consumed yet (between EVENTQ_CONS and EVENTQ_PROD),
    /// read from memory without moving CONS.
    pub fn pending_events(&self) -> Vec<EventRecord> {
        let st = self.lock();
        let q = regs::QueueShape::from_base(st.regs.eventq_base, self.cfg.eventq_max_log2());
        let (prod, mut cons) = (st.regs.eventq_prod, st.regs.eventq_cons);
        let mut out = Vec::new();
        while !q.empty(prod, cons) {
            let words = q.slot(cons, 32).and_then(|a| {
                let mut w = [0u64; 4];
                for (i, word) in w.iter_mut().enumerate() {
                    *word = crate::sim::arena::PhysMem::read_u64(self.mem, a + 8 * i as u64)?;
                }
                Some(w)
            });
            let Some(words) = words else { break };
            out.push(EventRecord::decode(words));
            cons = q.next(cons);
        }
        out
    }

    fn write_reg32(&self, st: &mut State, offset: usize, value: u32) {
        let r = &mut st.regs;
        let mut consume = false;
        match offset {
            regs::CR0 => {
                let translating = r.cr0ack & cr0::SMMUEN != 0;
                r.cr0 = value & cr0::ALL;
                if !st.injections.cr0ack_stuck {
                    r.cr0ack = r.cr0;
                } else {
                    st.stats.injections_fired += 1;
                }
                if translating && st.regs.cr0ack & cr0::SMMUEN == 0 {
                    // §3.12.2: clearing SMMUEN terminates every stalled transaction, and
                    // their STAGs may be given to new stalls.
                    stall::translation_disabled(st);
                }
                consume = true;
            }
            regs::CR1 if !r.enabled(cr0::SMMUEN | cr0::CMDQEN | cr0::EVENTQEN) => r.cr1 = value,
            regs::CR2 if !r.enabled(cr0::SMMUEN) => r.cr2 = value,
            regs::GBPA if value & gbpa::UPDATE != 0 => {
                if st.injections.gbpa_stuck {
                    st.stats.injections_fired += 1;
                    r.gbpa |= gbpa::UPDATE;
                    st.injections.gbpa_pending = Some(value & gbpa::FIELDS);
                } else {
                    r.gbpa = value & gbpa::FIELDS;
                }
            }
            regs::IRQ_CTRL => {
                r.irq_ctrl = value & 0x7;
                r.irq_ctrlack = r.irq_ctrl;
            }
            regs::GERRORN => {
                r.gerrorn = value & gerror::ALL;
                consume = true;
            }
            regs::GERROR_IRQ_CFG1 => r.gerror_irq_cfg1 = value,
            regs::GERROR_IRQ_CFG2 => r.gerror_irq_cfg2 = value,
            regs::STRTAB_BASE_CFG
                if !r.enabled(cr0::SMMUEN) && !self.cfg.has1(config::idr1::TABLES_PRESET) =>
            {
                r.strtab_base_cfg = value
            }
            regs::CMDQ_PROD => {
                r.cmdq_prod = value & 0xf_ffff;
                consume = true;
            }
            regs::CMDQ_CONS if !r.enabled(cr0::CMDQEN) => r.cmdq_cons = value,
            regs::EVENTQ_PROD | regs::EVENTQ_PROD_PAGE0 if !r.enabled(cr0::EVENTQEN) => {
                r.eventq_prod = value
            }
            regs::EVENTQ_CONS | regs::EVENTQ_CONS_PAGE0 => {
                r.eventq_cons = value & (EVENTQ_OVFLG | 0xf_ffff)
            }
            regs::PRIQ_PROD if !r.enabled(cr0::PRIQEN) && self.cfg.has0(config::idr0::PRI) => {
                r.priq_prod = value
            }
            regs::PRIQ_CONS if self.cfg.has0(config::idr0::PRI) => {
                r.priq_cons = value & (regs::PRIQ_OVFLG | 0xf_ffff)
            }
            regs::EVENTQ_IRQ_CFG1 => r.eventq_irq_cfg1 = value,
            regs::EVENTQ_IRQ_CFG2 => r.eventq_irq_cfg2 = value,
            // Halves of 64-bit registers.
            o if o % 8 == 4 && self.reg64_writable(st, o - 4) => {
                if let Some(reg) = st.regs.reg64(o - 4) {
                    *reg = *reg & 0xffff_ffff | u64::from(value) << 32;
                }
            }
            o if self.reg64_writable(st, o) => {
                if let Some(reg) = st.regs.reg64(o) {
                    *reg = *reg & !0xffff_ffff | u64::from(value);
                }
            }
            o => {
                if self.known(o) {
                    st.stats.ignored_writes += 1;
                }
            }
        }
        if consume {
            cmdq::consume(st, self.mem, &self.cfg);
        }
    }

    /// Whether the 64-bit register at `offset` exists and may be written now.
    fn reg64_writable(&self, st: &mut State, offset: usize) -> bool {
        let r = &st.regs;
        let tables = self.cfg.has1(config::idr1::TABLES_PRESET);
        let queues = self.cfg.has1(config::idr1::QUEUES_PRESET);
        let ok = match offset {
            regs::STRTAB_BASE => !tables && !r.enabled(cr0::SMMUEN),
            regs::CMDQ_BASE => !queues && !r.enabled(cr0::CMDQEN),
            regs::EVENTQ_BASE => !queues && !r.enabled(cr0::EVENTQEN),
            regs::GERROR_IRQ_CFG0 | regs::EVENTQ_IRQ_CFG0 => true,
            regs::PRIQ_BASE => {
                self.cfg.has0(config::idr0::PRI) && !queues && !r.enabled(cr0::PRIQEN)
            }
            regs::PRIQ_IRQ_CFG0 => self.cfg.has0(config::idr0::PRI),
            _ => false,
        };
        ok && st.regs.reg64(offset).is_some()
    }

    /// Whether software-visible state lives at `offset` (for counting ignored writes).
    fn known(&self, offset: usize) -> bool {
        let base = offset & !7;
        Regs::reset().read32(offset).is_some() || Regs::reset().reg64(base).is_some()
    }

    fn read_reg32(&self, st: &mut State, offset: usize) -> u32 {
        match offset {
            o if (regs::IDR0..=regs::IDR5).contains(&o) && o % 4 == 0 => {
                self.cfg.idr.get(o / 4).copied().unwrap_or(0)
            }
            regs::IIDR => self.cfg.iidr,
            regs::AIDR => self.cfg.aidr,
            o => {
                if let Some(v) = st.regs.read32(o) {
                    return v;
                }
                let half = o % 8 == 4;
                match st.regs.reg64(o & !7) {
                    Some(v) if half => (*v >> 32) as u32,
                    Some(v) => *v as u32,
                    None => 0,
                }
            }
        }
    }
}

impl RegisterWindow for SmmuModel<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if offset >= regs::WINDOW_LEN || offset % 4 != 0 {
            return u32::MAX;
        }
        let mut st = self.lock();
        if offset == regs::GERROR {
            st.stats.gerror_reads += 1;
            let active = st.regs.gerror ^ st.regs.gerrorn;
            if active & st.injections.global != 0 {
                st.stats.injections_fired += 1;
            }
        }
        self.read_reg32(&mut st, offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        if offset >= regs::WINDOW_LEN || offset % 4 != 0 {
            return;
        }
        let mut st = self.lock();
        let base = if st.regs.reg64(offset & !7).is_some() {
            offset & !7
        } else {
            offset
        };
        *st.stats.register_writes.entry(base).or_default() += 1;
        if let Some(at) = st.injections.ignore_write {
            if offset == at || offset == at + 4 && st.regs.reg64(at).is_some() {
                st.stats.ignored_writes += 1;
                st.stats.injections_fired += 1;
                return;
            }
        }
        self.write_reg32(&mut st, offset, value);
    }

    fn read64(&self, offset: usize) -> u64 {
        if offset >= regs::WINDOW_LEN || offset % 8 != 0 {
            return u64::MAX;
        }
        let mut st = self.lock();
        if let Some(v) = st.regs.reg64(offset) {
            return *v;
        }
        let lo = self.read_reg32(&mut st, offset);
        let hi = self.read_reg32(&mut st, offset + 4);
        u64::from(lo) | u64::from(hi) << 32
    }

    fn write64(&self, offset: usize, value: u64) {
        if offset >= regs::WINDOW_LEN || offset % 8 != 0 {
            return;
        }
        let mut st = self.lock();
        *st.stats.register_writes.entry(offset).or_default() += 1;
        if let Some(at) = st.injections.ignore_write {
            if offset == at || offset + 4 == at {
                st.stats.ignored_writes += 1;
                st.stats.injections_fired += 1;
                return;
            }
        }
        if st.regs.reg64(offset).is_some() {
            if self.reg64_writable(&mut st, offset) {
                if let Some(reg) = st.regs.reg64(offset) {
                    *reg = value;
                }
            } else {
                st.stats.ignored_writes += 1;
            }
            return;
        }
        // A 64-bit access to two 32-bit registers: low word first.
        self.write_reg32(&mut st, offset, value as u32);
        self.write_reg32(&mut st, offset + 4, (value >> 32) as u32);
    }
}
