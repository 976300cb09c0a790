//! A behavioural model of an Intel VT-d remapping unit (Intel Virtualization Technology for
//! Directed I/O Architecture Specification, rev 4.1): the yardstick the `vtd` driver is tested
//! against.
//!
//! Written from the spec with its own constants: it imports nothing from the driver or the
//! page-table engine, reads tables from an [`Arena`] and walks page tables with the independent
//! reference walkers ([`walk::vtd_ss`], [`walk::vtd_fs`]).
//!
//! | file | what | spec |
//! |---|---|---|
//! | `config.rs` | VER / CAP / ECAP, QEMU defaults | §11.4.1-§11.4.3 |
//! | `regs.rs` | register offsets and fields | §11.4 |
//! | `window.rs` | register semantics: GCMD/GSTS handshakes, RTADDR, CCMD, IOTLB, FSTS, queue registers | §11.4 |
//! | `queue.rs` | queued invalidation: descriptor decode, execution, IQE / ITE / ICE | §6.5.2 |
//! | `cache.rs` | context-cache, PASID-cache, IOTLB and their invalidation | §6.2, §6.5 |
//! | `translate.rs` | legacy root / context entries, second-stage walk, IOTLB fill | §3.4, §3.7, §9.1, §9.3 |
//! | `scalable.rs` | scalable root / context / PASID entries, first-stage and nested walks | §3.4.3, §3.6, §3.8, §9.2, §9.4-§9.6 |
//! | `fault.rs` | fault reason codes and primary fault recording | chapter 7, §11.4 |
//! | `prq.rs` | page request queue, page group responses, retry after Success | chapter 7 "Page Request", §11.4 |
//! | `pmr.rs` | protected memory regions: PMEN, PLMBASE/PLMLIMIT, PHMBASE/PHMLIMIT | §11.4 |
//! | `reach.rs` | every structure the unit can still read: tables, caches, queue | §3.4, §6, §6.5.2 |
//!
//! What is modelled: every register a driver touches; queued and register-based invalidation
//! with every granularity; caches that keep entries until invalidated (negative entries under
//! CAP.CM), including a paging-structure cache that IH spares (and that nested walks fill with
//! the parent's second-stage entries, tagged with the DID alone); legacy and scalable
//! translation with FPD; accessed and dirty flags set by a walk (first stage always, §3.6.2;
//! second stage under the scalable-mode PASID entry's SSADE, §3.7.2; not in nested walks nor the
//! extended-accessed flag); fault recording with overflow; fault injection ([`Injection`]).
//!
//! Device TLBs: [`VtdModel::ats_translate`] fills a per-device ATC that only completed
//! device-TLB invalidations empty (not timed-out ones, nor ones answered with ICE).
//!
//! What is not: interrupt remapping (IRTA is latched, interrupt-entry-cache descriptors only
//! counted), ATS translation-request checks (TT / DTE), the scalable-mode context entry's PRE
//! bit unless [`VtdModelConfig::pre_checked`] (page requests are otherwise taken from any
//! device), advanced fault logging, performance monitoring. Interrupts are counted in
//! [`VtdModelStats`] instead of being delivered.

mod cache;
mod config;
pub mod fault;
mod pmr;
pub mod prq;
mod queue;
mod reach;
pub mod regs;
mod scalable;
mod translate;
mod window;

#[cfg(test)]
mod tests;

use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use crate::mmio::RegisterWindow;
use crate::sim::arena::Arena;
use crate::sim::{arena, walk};

use cache::Caches;
pub use config::{VtdModelConfig, QEMU_CAP, QEMU_ECAP};
use fault::FaultInfo;
pub use fault::FaultRecord;
use regs::*;

/// Bits `hi:lo` set, as the spec writes fields.
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// A successful translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DmaOk {
    /// The output address of the requested byte.
    pub pa: u64,
    /// The access snoops the CPU caches whatever the request's no-snoop attribute: the leaf's SNP
    /// (second stage, ECAP.SC) or the PASID entry's PGSNP.
    pub snoop: bool,
    /// Log2 of the page that mapped it.
    pub page_size_log2: u32,
    /// The domain-id of the translation (0 when translation is disabled).
    pub did: u16,
    /// Served from the IOTLB rather than a walk.
    pub from_iotlb: bool,
    /// Reads allowed on the page (for the request's privilege).
    pub read: bool,
    /// Writes allowed on the page.
    pub write: bool,
}

impl DmaOk {
    fn untranslated(iova: u64) -> Self {
        Self {
            pa: iova,
            snoop: false,
            page_size_log2: 12,
            did: 0,
            from_iotlb: false,
            read: true,
            write: true,
        }
    }
}

/// A refused request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DmaFault {
    /// The spec's fault reason code (see [`fault`]).
    pub reason: u8,
    /// Whether a fault record was written (false under FPD, or when recording overflowed).
    pub recorded: bool,
    /// Whether FPD suppressed recording.
    pub suppressed_by_fpd: bool,
}

/// What the IQERCD.IQEI field reports after an invalidation queue error. The numbering is the
/// model's reading of the Invalidation Queue Error Record Register (§11.4); a driver should
/// treat it as diagnostic only.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Iqei {
    /// IQT beyond the queue.
    TailBeyondQueue = 1,
    /// The descriptor could not be read.
    FetchError = 2,
    /// Unknown or unsupported descriptor type, or a type that needs the 256-bit form.
    InvalidType = 3,
    /// A reserved field is set, or a field holds a reserved value.
    ReservedBit = 4,
    /// An injected invalid descriptor.
    InvalidDescriptor = 5,
    /// IQT not aligned to the descriptor width (bit 4 set with IQA.DW = 1).
    TailMisaligned = 6,
}

/// Faults to inject, for error-path tests of the driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Injection {
    /// The next descriptor fetched is rejected with IQE (whatever it holds).
    QueueError,
    /// The `n`-th descriptor fetched from now (1-based) is rejected with IQE.
    QueueErrorAt(u32),
    /// The next device-TLB or PASID-based device-TLB descriptor times out: FSTS.ITE, IQERCD
    /// ITESID; the head moves past it and the next wait descriptor, which is aborted (no status
    /// write); the queue stops until ITE is cleared. The device's ATC keeps its entries.
    DeviceTlbTimeout,
    /// As [`DeviceTlbTimeout`](Self::DeviceTlbTimeout), at the `n`-th device-TLB descriptor
    /// executed from now (1-based).
    DeviceTlbTimeoutAt(u32),
    /// The next device-TLB or PASID-based device-TLB descriptor completes with an invalidation
    /// completion error: FSTS.ICE, IQERCD.ICESID; processing goes on. Whether the device
    /// invalidated is unknown, so its ATC keeps its entries.
    CompletionError,
    /// As [`CompletionError`](Self::CompletionError), at the `n`-th device-TLB descriptor
    /// executed from now (1-based).
    CompletionErrorAt(u32),
    /// Wait descriptors never complete: the queue stops on the first one, the head on it,
    /// until [`VtdModel::clear_injections`].
    StallWaits,
    /// Wait descriptors do not complete until queued invalidation is turned off (GCMD.QIE
    /// clear): a queue left by a previous owner that never drains.
    StallWaitsUntilQueueOff,
    /// GCMD writes are never acknowledged: GSTS keeps its value and nothing is latched.
    IgnoreGcmd,
    /// A write-buffer flush (GCMD.WBF) never completes: GSTS.WBFS stays set until
    /// [`VtdModel::clear_injections`].
    StallWriteBufferFlush,
    /// Writes to the register at this offset (either half of a 64-bit one) are ignored.
    IgnoreWrites(usize),
}

#[derive(Clone, Copy, Debug, Default)]
struct Injections {
    /// Countdowns: 0 off, n fires at the n-th event.
    iqe_at: u32,
    ite_at: u32,
    ice_at: u32,
    stall_waits: bool,
    stall_until_queue_off: bool,
    ignore_gcmd: bool,
    stall_wbf: bool,
    ignore_write: Option<usize>,
}

/// Counts `counter` down; true when it reaches its event.
pub(crate) fn countdown(counter: &mut u32) -> bool {
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

/// Counters of what the unit did. Counts only, never timings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct VtdModelStats {
    /// DMA requests blocked by a protected memory region (`PMEN.PRS`), never recorded.
    pub pmr_blocked: u64,
    /// Protected memory regions turned off (`PMEN.EPM` cleared) while translation was off:
    /// DMA to them then ran untranslated and unprotected.
    pub pmr_off_before_te: u64,
    /// Context-cache invalidate descriptors executed.
    pub context_cache_descs: u64,
    /// IOTLB invalidate descriptors, global.
    pub iotlb_global: u64,
    /// IOTLB invalidate descriptors, domain-selective (including page-selective ones done as
    /// domain-selective because CAP.PSI is clear).
    pub iotlb_domain: u64,
    /// IOTLB invalidate descriptors, page-selective.
    pub iotlb_page: u64,
    /// Device-TLB invalidate descriptors.
    pub device_tlb: u64,
    /// Interrupt-entry-cache invalidate descriptors.
    pub iec: u64,
    /// Invalidation wait descriptors completed.
    pub wait: u64,
    /// PASID-cache invalidate descriptors.
    pub pasid_cache: u64,
    /// PASID-based IOTLB invalidate descriptors, PASID-selective.
    pub piotlb_pasid: u64,
    /// PASID-based IOTLB invalidate descriptors, page-selective within PASID.
    pub piotlb_page: u64,
    /// PASID-based device-TLB invalidate descriptors.
    pub pasid_device_tlb: u64,
    /// Device-TLB invalidations (either form) under `ECAP.DIT` whose `PFSID` is not the
    /// device's physical function (as [`VtdModelConfig::with_virtual_function`] declares):
    /// the unit throttles and times out the wrong function's invalidations, and the model
    /// leaves the device's ATC untouched.
    pub pfsid_mismatches: u64,
    /// Descriptors skipped after a time-out.
    pub aborted_descriptors: u64,
    /// Context-cache invalidations through CCMD.
    pub register_context_invalidations: u64,
    /// IOTLB invalidations through the IOTLB register.
    pub register_iotlb_invalidations: u64,
    /// Register-based invalidations refused (queued invalidation enabled).
    pub register_invalidations_refused: u64,
    /// Write-buffer flushes (GCMD.WBF).
    pub write_buffer_flushes: u64,
    /// Root table pointer latches (GCMD.SRTP).
    pub root_table_latches: u64,
    /// Times translation was turned off (GSTS.TES set to clear): from then on DMA passes
    /// untranslated.
    pub translation_disables: u64,
    /// Invalidation queue errors.
    pub iqe: u64,
    /// Invalidation time-out errors.
    pub ite: u64,
    /// Invalidation completion errors.
    pub ice: u64,
    /// Wait-descriptor status writes that hit no memory.
    pub status_write_errors: u64,
    /// Invalidation completion interrupts delivered (IF with IECTL.IM clear).
    pub completion_interrupts: u64,
    /// Requests translated (successfully or not).
    pub translations: u64,
    /// IOTLB hits and misses.
    pub iotlb_hits: u64,
    /// IOTLB misses (walks).
    pub iotlb_misses: u64,
    /// Faults written to a fault record.
    pub faults_recorded: u64,
    /// Faults not recorded because of FPD.
    pub faults_suppressed: u64,
    /// Faults lost to overflow (PFO).
    pub faults_dropped: u64,
    /// Fault events delivered (FECTL.IM clear).
    pub fault_interrupts: u64,
    /// Times an armed [`Injection`] took effect: an IQE, ITE or ICE it raised, a wait
    /// descriptor it stalled, a GCMD write or register write it dropped, a write-buffer flush
    /// it stalled. A fault-matrix cell checks that its fault met the call this way.
    pub injections_fired: u64,
}

/// Sizes of the caches, for tests that check what an invalidation removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheSizes {
    /// Context-cache entries.
    pub context: usize,
    /// PASID-cache entries.
    pub pasid: usize,
    /// IOTLB entries (negative ones included).
    pub iotlb: usize,
    /// Paging-structure cache entries (non-leaf entries).
    pub paging_structure: usize,
}

/// Root table mode latched by SRTP (RTADDR.TTM).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RootMode {
    Legacy,
    Scalable,
    /// TTM reserved, or scalable without ECAP.SMTS: every translation faults.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Root {
    addr: u64,
    mode: RootMode,
}

/// Everything behind the lock.
struct State<'m> {
    mem: &'m Arena,
    cfg: VtdModelConfig,
    gsts: u32,
    rtaddr: u64,
    root: Option<Root>,
    irta: u64,
    ccmd: u64,
    iva: u64,
    iotlb_reg: u64,
    fsts: u32,
    fri: u8,
    next_record: usize,
    records: Vec<FaultRecord>,
    fectl: u32,
    fedata: u32,
    feaddr: u32,
    feuaddr: u32,
    iqa: u64,
    iqh: u64,
    iqt: u64,
    ics: u32,
    iectl: u32,
    iedata: u32,
    ieaddr: u32,
    ieuaddr: u32,
    iqercd: u64,
    caches: Caches,
    stats: VtdModelStats,
    log: Vec<[u64; 4]>,
    /// Register writes by offset (64-bit registers counted at their base), since creation or
    /// [`VtdModel::reset_stats`].
    writes: std::collections::BTreeMap<usize, u64>,
    inject: Injections,
    /// A probe walk ([`VtdModel::translate_in_memory`]): sets no accessed or dirty flag.
    probing: bool,
    /// Page request queue registers and the groups devices wait on.
    prq: prq::PrqState,
    /// Protected memory regions.
    pmr: pmr::Pmr,
}

/// The model of one VT-d unit over the memory of an [`Arena`].
///
/// Register accesses go through [`RegisterWindow`]; devices' requests through
/// [`translate`](Self::translate). All state sits behind one mutex, so the model is `Send + Sync`
/// and a test may translate from one thread while a driver programs it from another.
pub struct VtdModel<'m> {
    state: Mutex<State<'m>>,
}

impl<'m> VtdModel<'m> {
    /// A unit in its reset state (translation, queued invalidation and interrupt remapping off,
    /// no root table latched, fault records clear) with the identity `cfg`.
    pub fn new(mem: &'m Arena, cfg: VtdModelConfig) -> Self {
        let mut state = State {
            mem,
            cfg,
            gsts: 0,
            rtaddr: 0,
            root: None,
            irta: 0,
            ccmd: 0,
            iva: 0,
            iotlb_reg: 0,
            fsts: 0,
            fri: 0,
            next_record: 0,
            records: Vec::new(),
            fectl: EVENT_IM,
            fedata: 0,
            feaddr: 0,
            feuaddr: 0,
            iqa: 0,
            iqh: 0,
            iqt: 0,
            ics: 0,
            iectl: EVENT_IM,
            iedata: 0,
            ieaddr: 0,
            ieuaddr: 0,
            iqercd: 0,
            caches: Caches::default(),
            stats: VtdModelStats::default(),
            probing: false,
            prq: prq::PrqState::default(),
            pmr: pmr::Pmr::default(),
            log: Vec::new(),
            writes: std::collections::BTreeMap::new(),
            inject: Injections::default(),
        };
        state.records = std::vec![FaultRecord::default(); state.fault_record_count()];
        Self {
            state: Mutex::new(state),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<'m>> {
        // A panic while holding the lock (a failed assertion in a test thread) leaves the state
        // consistent enough to read: every mutation is a plain field update.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity the unit was built with.
    pub fn config(&self) -> VtdModelConfig {
        self.lock().cfg
    }

    /// Translates a request from `sid` (bus << 8 | devfn), with or without PASID, for `access`.
    ///
    /// # Errors
    ///
    /// [`DmaFault`] with the spec's reason code. The fault is also recorded in the primary
    /// fault recording registers unless FPD applies or recording overflowed, like hardware.
    pub fn translate(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: walk::Access,
    ) -> Result<DmaOk, DmaFault> {
        let mut st = self.lock();
        st.stats.translations += 1;
        let fail = match st.translate_inner(sid, pasid, iova, access) {
            Ok(ok) if st.pmr.blocks(st.cfg.cap, ok.pa) => {
                st.stats.pmr_blocked += 1;
                return Err(DmaFault {
                    reason: fault::BLOCKED_BY_PMR,
                    recorded: false,
                    suppressed_by_fpd: false,
                });
            }
            Ok(ok) => return Ok(ok),
            Err(fail) => fail,
        };
        let recorded = if fail.fpd {
            st.stats.faults_suppressed += 1;
            false
        } else {
            st.record_fault(FaultInfo {
                sid,
                pasid,
                addr: iova,
                read: !access.write,
                reason: fail.reason,
            })
        };
        Err(DmaFault {
            reason: fail.reason,
            recorded,
            suppressed_by_fpd: fail.fpd,
        })
    }

    /// What the root, context and PASID tables and the paging structures in memory translate
    /// `iova` to for `sid` (and `pasid`), as a walk with empty caches finds it: the output
    /// address, or `None` for a fault (or translation off). Unlike
    /// [`translate`](Self::translate) it changes nothing the model keeps (no cache fill, no
    /// fault record, no counter): for tests that compare what the tables say before and after
    /// a call.
    pub fn translate_in_memory(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: walk::Access,
    ) -> Option<u64> {
        let mut st = self.lock();
        let caches = core::mem::take(&mut st.caches);
        let stats = st.stats;
        st.probing = true;
        let r = st.translate_inner(sid, pasid, iova, access);
        st.probing = false;
        st.caches = caches;
        st.stats = stats;
        r.ok().map(|t| t.pa)
    }

    /// The counters so far.
    pub fn stats(&self) -> VtdModelStats {
        self.lock().stats
    }

    /// Every descriptor executed so far, oldest first, as four qwords (the upper two are zero
    /// for 128-bit descriptors). Rejected descriptors are not included.
    pub fn descriptor_log(&self) -> Vec<[u64; 4]> {
        self.lock().log.clone()
    }

    /// Clears the counters and the descriptor log.
    pub fn reset_stats(&self) {
        let mut st = self.lock();
        st.stats = VtdModelStats::default();
        st.log.clear();
        st.writes.clear();
    }

    /// How many times software wrote the 8-byte-aligned register slot holding `offset` (as
    /// [`Injection::IgnoreWrites`] matches writes), dropped writes included, since creation or
    /// [`reset_stats`](Self::reset_stats): what a register-write injection can meet.
    pub fn register_writes(&self, offset: usize) -> u64 {
        self.lock().writes.get(&(offset & !7)).copied().unwrap_or(0)
    }

    /// How many entries each cache holds.
    pub fn cache_sizes(&self) -> CacheSizes {
        let st = self.lock();
        CacheSizes {
            context: st.caches.context.len(),
            pasid: st.caches.pasid.len(),
            iotlb: st.caches.iotlb.len(),
            paging_structure: st.caches.psc.len(),
        }
    }

    /// The fault recording registers, as software would read them.
    pub fn fault_records(&self) -> Vec<FaultRecord> {
        self.lock().records.clone()
    }

    /// Arms a fault injection.
    pub fn inject(&self, what: Injection) {
        let mut st = self.lock();
        let at = |n: u32| n.max(1);
        match what {
            Injection::QueueError => st.inject.iqe_at = 1,
            Injection::QueueErrorAt(n) => st.inject.iqe_at = at(n),
            Injection::DeviceTlbTimeout => st.inject.ite_at = 1,
            Injection::DeviceTlbTimeoutAt(n) => st.inject.ite_at = at(n),
            Injection::CompletionError => st.inject.ice_at = 1,
            Injection::CompletionErrorAt(n) => st.inject.ice_at = at(n),
            Injection::StallWaits => st.inject.stall_waits = true,
            Injection::StallWaitsUntilQueueOff => st.inject.stall_until_queue_off = true,
            Injection::IgnoreGcmd => st.inject.ignore_gcmd = true,
            Injection::StallWriteBufferFlush => st.inject.stall_wbf = true,
            Injection::IgnoreWrites(offset) => st.inject.ignore_write = Some(offset),
        }
    }

    /// Disarms every injection; a queue stalled on a wait descriptor resumes.
    pub fn clear_injections(&self) {
        let mut st = self.lock();
        st.inject = Injections::default();
        st.gsts &= !G_WBF;
        st.process_queue();
    }

    /// Sets FSTS error bits (`IQE`, `ICE`, `ITE`; other bits are ignored) as a previous owner
    /// of the unit may have left them: nothing else changes, so the queue stops as hardware's
    /// would until they are cleared.
    pub fn leave_queue_errors(&self, fsts: u32) {
        let mut st = self.lock();
        st.fsts |= fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE);
    }

    /// Translates a translation request from an ATS device (`sid`, with or without PASID) as
    /// [`translate`](Self::translate) does, and caches the result in the device's ATC, which
    /// only device-TLB invalidations that complete remove.
    ///
    /// # Errors
    /// As [`translate`](Self::translate).
    pub fn ats_translate(
        &self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: walk::Access,
    ) -> Result<DmaOk, DmaFault> {
        let ok = self.translate(sid, pasid, iova, access)?;
        let mut st = self.lock();
        let page = ok.pa >> ok.page_size_log2 << ok.page_size_log2;
        let base = iova >> ok.page_size_log2 << ok.page_size_log2;
        st.caches
            .atc
            .insert((sid, pasid, base), (ok.page_size_log2, page));
        Ok(ok)
    }

    /// A device's page request (PCIe PRI) reaching the unit: written to the page request queue
    /// ([`prq`]), or the queue overflowed, or the unit has none.
    pub fn page_request(&self, req: prq::PageRequest) -> prq::PageRequestOutcome {
        self.lock().page_request(req)
    }

    /// Every page group response the unit sent devices, oldest first.
    pub fn page_responses(&self) -> Vec<prq::GroupResponse> {
        self.lock().prq.responses.clone()
    }

    /// Every page a device asked for again after a Success response, with the result.
    pub fn page_retries(&self) -> Vec<prq::Retry> {
        self.lock().prq.retries.clone()
    }

    /// Page requests queued whose group was not answered yet.
    pub fn outstanding_page_requests(&self) -> usize {
        self.lock().prq.outstanding.len()
    }

    /// Page request events delivered (PECTL.IM clear).
    pub fn page_request_events(&self) -> u64 {
        self.lock().prq.events
    }

    /// Whether the ATC of `sid` (and `pasid`) holds a translation of `iova`: what the device
    /// could still reach without asking the unit.
    pub fn atc_holds(&self, sid: u16, pasid: Option<u32>, iova: u64) -> bool {
        self.lock().caches.atc_covers(sid, pasid, iova)
    }

    /// What the ATC of `sid` (and `pasid`) holds for `iova`: the output address a translated
    /// request of the device would carry, whatever the tables and the unit's caches say now.
    pub fn atc_translation(&self, sid: u16, pasid: Option<u32>, iova: u64) -> Option<u64> {
        let st = self.lock();
        st.caches
            .atc
            .iter()
            .find(|(&(s, p, base), &(size, _))| {
                s == sid && p == pasid && iova >> size == base >> size
            })
            .map(|(_, &(size, page))| page + (iova & ((1u64 << size) - 1)))
    }

    /// The 4 KiB-aligned base of every structure the unit could still read: root, context and
    /// PASID tables and page tables reachable from the latched root table or from a cached
    /// context, PASID or paging-structure entry, and the invalidation queue while it is on. A
    /// page in this set that the allocator no longer holds is memory the hardware may walk
    /// after software gave it up.
    pub fn reachable(&self) -> std::collections::BTreeSet<u64> {
        self.lock().reachable()
    }

    /// Every domain-ID some IOTLB, paging-structure-cache or PASID-cache entry (or a legacy
    /// context-cache entry) is tagged with: a domain-ID in this set may not be given to a new
    /// domain.
    pub fn cached_domain_ids(&self) -> std::collections::BTreeSet<u16> {
        let st = self.lock();
        let c = &st.caches;
        let legacy = c.context.values().filter_map(|e| match e {
            cache::CachedContext::Legacy(l) => Some(l.did),
            _ => None,
        });
        c.iotlb
            .keys()
            .map(|k| k.0)
            .chain(c.psc.keys().map(|k| k.0))
            .chain(c.pasid.values().map(|p| p.did))
            .chain(legacy)
            .collect()
    }

    /// ATC entries of every device.
    pub fn atc_entries(&self) -> usize {
        self.lock().caches.atc.len()
    }
}

impl RegisterWindow for VtdModel<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.lock().read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.lock().write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.lock().read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.lock().write64(offset, value)
    }
}

impl core::fmt::Debug for VtdModel<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let st = self.lock();
        f.debug_struct("VtdModel")
            .field("cfg", &st.cfg)
            .field("gsts", &format_args!("{:#x}", st.gsts))
            .field("root", &st.root)
            .field("stats", &st.stats)
            .finish_non_exhaustive()
    }
}
