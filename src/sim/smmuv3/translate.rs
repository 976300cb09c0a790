//! Translation of one transaction: Arm IHI 0070 G.b §3.3 (StreamID to STE, SubstreamID to CD),
//! §3.4 (address translation: stage 1, stage 2, nested, where stage-1 table and CD addresses
//! are IPAs translated by stage 2), §3.12 (faults and which are recorded: CD.R, STE.S2R),
//! §5.2 S1DSS, §7.3 (the event each failure raises).
//!
//! Every lookup goes through the model's caches first (STE, CD, TLB, walk cache); what a walk
//! finds is collected in a [`Pending`] set and added to the caches when the translation ends, so
//! that the walk itself only needs shared access to them.

use core::cell::{Cell, RefCell};
use std::vec::Vec;

use super::cd::{self, Cd};
use super::config::SmmuModelConfig;
use super::event::{self, EventRecord, FaultClass};
use super::event::{
    C_BAD_CD, C_BAD_STE, C_BAD_SUBSTREAMID, EVENT_NONE, F_ACCESS, F_ADDR_SIZE, F_CD_FETCH,
    F_PERMISSION, F_STREAM_DISABLED, F_TRANSLATION, F_WALK_EABT,
};
use super::regs::{cr0, gbpa};
use super::ste::{self, S1Context, S2Context, Ste, StreamConfig};
use super::strtab::{self, Miss};
use super::tlb::{Caches, Mt, Regime, TlbEntry, WalkEntry};
use super::{DmaFault, DmaOk, State};
use crate::mem::Iova;
use crate::sim::arena::{Arena, PhysMem};
use crate::sim::walk::arm::{Cacheability, MemType};
use crate::sim::walk::{arm_s1, arm_s2, Access, Fault};

/// One transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub sid: u32,
    pub ssid: Option<u32>,
    pub iova: u64,
    pub access: Access,
}

/// What a translation adds to the caches once it ends.
#[derive(Default)]
struct Pending {
    tlb: Vec<TlbEntry>,
    walk: Vec<WalkEntry>,
    ste: Option<(u32, [u64; 8])>,
    cd: Option<((u32, u32), (u64, [u64; 8]))>,
    tlb_hit: bool,
}

/// A failed translation before it becomes an event.
#[derive(Clone, Copy, Debug)]
struct Fail {
    event: u8,
    record: bool,
    s2: bool,
    class: FaultClass,
    addr2: u64,
}

impl Fail {
    /// A configuration or fetch error: always recorded.
    fn config(event: u8, addr2: u64) -> Self {
        Self {
            event,
            record: event != EVENT_NONE,
            s2: false,
            class: FaultClass::In,
            addr2,
        }
    }
}

struct Env<'a> {
    caches: &'a Caches,
    mem: &'a Arena,
    cfg: &'a SmmuModelConfig,
    pending: RefCell<Pending>,
}

/// Why memory under a walk could not be read: an external abort at a PA, or a stage-2 fault
/// translating an IPA.
#[derive(Clone, Copy, Debug)]
enum Inner {
    Abort(u64),
    Stage2 { event: u8, ipa: u64, fetch: u64 },
}

type Reader<'a> = dyn Fn(u64) -> Result<u64, Inner> + 'a;

/// Memory as one walk sees it: the walk cache of `regime` first (if any), then `base`.
struct StageMem<'a> {
    env: &'a Env<'a>,
    regime: Option<Regime>,
    base: &'a Reader<'a>,
    log: RefCell<Vec<(u64, u64, bool)>>,
    err: Cell<Option<Inner>>,
}

impl<'a> StageMem<'a> {
    fn new(env: &'a Env<'a>, regime: Option<Regime>, base: &'a Reader<'a>) -> Self {
        Self {
            env,
            regime,
            base,
            log: RefCell::new(Vec::new()),
            err: Cell::new(None),
        }
    }

    /// Caches the table descriptors of a successful walk of `input` whose leaf is
    /// `2^leaf_log2` bytes, with `stride` index bits a level.
    fn remember(&self, input: u64, leaf_log2: u32, stride: u32) {
        let Some(regime) = self.regime else { return };
        let log = self.log.borrow();
        let tables = log.len().saturating_sub(1);
        let mut pending = self.env.pending.borrow_mut();
        for (i, &(pa, value, cached)) in log.iter().take(tables).enumerate() {
            let size_log2 = (leaf_log2 + (tables - i) as u32 * stride).min(64);
            if !cached {
                pending.walk.push(WalkEntry {
                    regime,
                    entry_pa: pa,
                    value,
                    base: input & !low_mask(size_log2),
                    size_log2,
                });
            }
        }
    }
}

impl PhysMem for StageMem<'_> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let cached = self
            .regime
            .and_then(|r| self.env.caches.walk_lookup(&r, pa));
        let value = match cached {
            Some(v) => v,
            None => match (self.base)(pa) {
                Ok(v) => v,
                Err(e) => {
                    self.err.set(Some(e));
                    return None;
                }
            },
        };
        self.log.borrow_mut().push((pa, value, cached.is_some()));
        Some(value)
    }
}

fn low_mask(log2: u32) -> u64 {
    if log2 >= 64 {
        u64::MAX
    } else {
        (1u64 << log2) - 1
    }
}

fn mt(mem_type: MemType) -> Mt {
    let level = |c: Cacheability| match c {
        Cacheability::NonCacheable => Mt::NonCacheable,
        Cacheability::WriteThrough => Mt::WriteThrough,
        Cacheability::WriteBack => Mt::WriteBack,
    };
    match mem_type {
        MemType::Normal { inner, outer } => level(inner).min(level(outer)),
        MemType::Stage1 => Mt::PassThrough,
        _ => Mt::Device,
    }
}

/// The memory type after stage 2: with FWB, stage 2 decides unless it passes stage 1 through;
/// without, the weaker of the two wins.
fn combine(s1: Mt, s2: Mt, fwb: bool) -> Mt {
    match (fwb, s2) {
        (true, Mt::PassThrough) => s1,
        (true, s2) => s2,
        (false, s2) => s1.min(s2),
    }
}

/// The event a walker fault raises; `bad_config` for a configuration the walker refuses.
fn fault_event(fault: Fault, bad_config: u8) -> u8 {
    match fault {
        Fault::AddressSize { .. } => F_ADDR_SIZE,
        Fault::AccessFlag { .. } => F_ACCESS,
        Fault::Permission { .. } => F_PERMISSION,
        Fault::ExternalAbort { .. } => F_WALK_EABT,
        Fault::BadConfig(_) => bad_config,
        _ => F_TRANSLATION,
    }
}

fn level_of(size_log2: u32, granule_log2: u32) -> u32 {
    let stride = granule_log2 - 3;
    3u32.saturating_sub(size_log2.saturating_sub(granule_log2) / stride)
}

/// Stage 2 of `ipa`, from the TLB or a walk (whose results are pending).
fn stage2(env: &Env<'_>, s2: &S2Context, ipa: u64, privileged: bool) -> Result<TlbEntry, Inner> {
    let regime = Regime::S2 { vmid: s2.vmid };
    if let Some(e) = env.caches.lookup(&regime, privileged, ipa) {
        return Ok(e);
    }
    let read = |pa: u64| env.mem.read_u64(pa).ok_or(Inner::Abort(pa));
    let mem = StageMem::new(env, Some(regime), &read);
    let access = Access {
        privileged,
        ..Access::default()
    };
    let t = match arm_s2::translate(&mem, &s2.walk, Iova::new(ipa), access) {
        Ok(t) => t,
        Err(fault) => {
            if let Some(Inner::Abort(pa)) = mem.err.get() {
                return Err(Inner::Stage2 {
                    event: F_WALK_EABT,
                    ipa,
                    fetch: pa,
                });
            }
            let event = fault_event(fault, C_BAD_STE);
            return Err(Inner::Stage2 {
                event,
                ipa,
                fetch: 0,
            });
        }
    };
    let size = t.page_size_log2;
    let granule_log2 = s2.walk.granule.log2();
    mem.remember(ipa, size, granule_log2 - 3);
    let base = ipa & !low_mask(size);
    let entry = TlbEntry {
        regime,
        global: false,
        privileged,
        base,
        size_log2: size,
        level: level_of(size, granule_log2),
        granule_log2,
        out: t.pa.get() - (ipa - base),
        read: t.read,
        write: t.write,
        exec: t.exec,
        s2_perms: None,
        mem: mt(t.attrs.mem_type),
        s2_memattr: Some(t.attrs.memattr),
    };
    env.pending.borrow_mut().tlb.push(entry);
    Ok(entry)
}

/// Stage 2 of an IPA the SMMU reads (a CD or a stage-1 table): it must grant reads.
fn stage2_read(env: &Env<'_>, s2: &S2Context, ipa: u64) -> Result<u64, Inner> {
    let e = stage2(env, s2, ipa, false)?;
    if !e.read {
        return Err(Inner::Stage2 {
            event: F_PERMISSION,
            ipa,
            fetch: 0,
        });
    }
    let pa = e.out + (ipa - e.base);
    env.mem.read_u64(pa).ok_or(Inner::Abort(pa))
}

/// A stage-2 failure as the fault it reports, for a fetch of `class`.
fn stage2_fail(inner: Inner, s2: &S2Context, class: FaultClass, abort_event: u8) -> Fail {
    match inner {
        Inner::Abort(pa) => Fail::config(abort_event, pa),
        Inner::Stage2 { event, ipa, fetch } => {
            let recordable = matches!(event, F_TRANSLATION | F_ADDR_SIZE | F_ACCESS | F_PERMISSION);
            Fail {
                event,
                record: !recordable || s2.record,
                s2: true,
                class,
                addr2: if event == F_WALK_EABT { fetch } else { ipa },
            }
        }
    }
}

/// Which CD a transaction uses (§5.2 S1CDMax, S1DSS), or `None` to bypass stage 1.
fn choose_cd(s1: &S1Context, ssid: Option<u32>) -> Result<Option<u32>, Fail> {
    match ssid {
        Some(s) if s1.cdmax == 0 || s >> s1.cdmax != 0 || s1.dss == 2 && s == 0 => {
            Err(Fail::config(C_BAD_SUBSTREAMID, 0))
        }
        Some(s) => Ok(Some(s)),
        None if s1.cdmax == 0 => Ok(Some(0)),
        None => match s1.dss {
            0 => Err(Fail::config(F_STREAM_DISABLED, 0)),
            1 => Ok(None),
            _ => Ok(Some(0)),
        },
    }
}

fn fetch_ste(env: &Env<'_>, regs: &super::regs::Regs, sid: u32) -> Result<Ste, Fail> {
    let words = match env.caches.ste.get(&sid) {
        Some(w) => *w,
        None => {
            let addr = strtab::ste_address(env.cfg, regs, env.mem, sid).map_err(miss)?;
            let w = strtab::fetch_ste(env.mem, addr).map_err(miss)?;
            let ste = ste::decode(env.cfg, &w).map_err(|()| Fail::config(C_BAD_STE, 0))?;
            env.pending.borrow_mut().ste = Some((sid, w));
            return Ok(ste);
        }
    };
    ste::decode(env.cfg, &words).map_err(|()| Fail::config(C_BAD_STE, 0))
}

fn miss(m: Miss) -> Fail {
    Fail::config(m.event, m.fetch_addr)
}

fn fetch_cd(env: &Env<'_>, ste: &Ste, s1: &S1Context, sid: u32, index: u32) -> Result<Cd, Fail> {
    if let Some((ptr, words)) = env.caches.cd.get(&(sid, index)) {
        if *ptr == s1.ptr {
            return cd::decode(env.cfg, words).map_err(|()| Fail::config(C_BAD_CD, 0));
        }
    }
    let nested = ste.s2.filter(|_| ste.config == StreamConfig::Nested);
    let read = |a: u64| match &nested {
        Some(s2) => stage2_read(env, s2, a),
        None => env.mem.read_u64(a).ok_or(Inner::Abort(a)),
    };
    let mem = StageMem::new(env, None, &read);
    let fetched = strtab::cd_address(s1, &mem, index, F_CD_FETCH)
        .and_then(|addr| strtab::fetch_cd(&mem, addr, F_CD_FETCH));
    let words = match (fetched, mem.err.get(), &nested) {
        (Ok(w), _, _) => w,
        (Err(_), Some(inner), Some(s2)) => {
            return Err(stage2_fail(inner, s2, FaultClass::Cd, F_CD_FETCH))
        }
        (Err(_), Some(Inner::Abort(pa)), None) => return Err(Fail::config(F_CD_FETCH, pa)),
        (Err(m), _, _) => return Err(miss(m)),
    };
    let cd = cd::decode(env.cfg, &words).map_err(|()| Fail::config(C_BAD_CD, 0))?;
    env.pending.borrow_mut().cd = Some(((sid, index), (s1.ptr, words)));
    Ok(cd)
}

/// Stage 1 of `req` under `cd` (through stage 2 for table addresses when `nested`).
fn stage1(
    env: &Env<'_>,
    cd: &Cd,
    regime: Regime,
    nested: Option<&S2Context>,
    req: &Request,
) -> Result<TlbEntry, Fail> {
    let s1_fault = |event: u8| Fail {
        event,
        record: cd.record,
        s2: false,
        class: FaultClass::In,
        addr2: 0,
    };
    if cd.epd0 {
        return Err(s1_fault(F_TRANSLATION));
    }
    let read = |a: u64| match nested {
        Some(s2) => stage2_read(env, s2, a),
        None => env.mem.read_u64(a).ok_or(Inner::Abort(a)),
    };
    let mem = StageMem::new(env, Some(regime), &read);
    let access = Access {
        privileged: req.access.privileged,
        ..Access::default()
    };
    let t = match arm_s1::translate(&mem, &cd.walk, Iova::new(req.iova), access) {
        Ok(t) => t,
        Err(fault) => {
            return Err(match (mem.err.get(), nested) {
                (Some(inner @ Inner::Stage2 { .. }), Some(s2)) => {
                    stage2_fail(inner, s2, FaultClass::Tt, F_WALK_EABT)
                }
                (Some(Inner::Abort(pa)), _) => Fail::config(F_WALK_EABT, pa),
                _ => match fault_event(fault, C_BAD_CD) {
                    C_BAD_CD => Fail::config(C_BAD_CD, 0),
                    event => s1_fault(event),
                },
            })
        }
    };
    let size = t.page_size_log2;
    let granule_log2 = cd.walk.granule.log2();
    mem.remember(req.iova, size, granule_log2 - 3);
    let base = req.iova & !low_mask(size);
    Ok(TlbEntry {
        regime,
        global: !t.attrs.not_global,
        privileged: req.access.privileged,
        base,
        size_log2: size,
        level: level_of(size, granule_log2),
        granule_log2,
        out: t.pa.get() - (req.iova - base),
        read: t.read,
        write: t.write,
        exec: t.exec,
        s2_perms: None,
        mem: mt(t.attrs.mem_type),
        s2_memattr: None,
    })
}

/// The combined entry of a stage-1 entry and the stage-2 entry of its output.
fn nest(s1: &TlbEntry, s2e: &TlbEntry, fwb: bool, iova: u64) -> TlbEntry {
    let ipa = s1.out + (iova - s1.base);
    let pa = s2e.out + (ipa - s2e.base);
    let size = s1.size_log2.min(s2e.size_log2);
    TlbEntry {
        base: iova & !low_mask(size),
        size_log2: size,
        out: pa & !low_mask(size),
        s2_perms: Some([s2e.read, s2e.write, s2e.exec]),
        mem: combine(s1.mem, s2e.mem, fwb),
        s2_memattr: s2e.s2_memattr,
        ..*s1
    }
}

/// Checks `access` against an entry; `Err(true)` if stage 2 refused it.
fn permit(e: &TlbEntry, access: &Access) -> Result<(), bool> {
    let denies =
        |p: [bool; 3]| access.read && !p[0] || access.write && !p[1] || access.exec && !p[2];
    if denies([e.read, e.write, e.exec]) {
        return Err(e.s2_perms.is_none() && matches!(e.regime, Regime::S2 { .. }));
    }
    match e.s2_perms {
        Some(p) if denies(p) => Err(true),
        _ => Ok(()),
    }
}

/// Stage 2 only (STE.Config = S2, or nested with stage 1 bypassed by S1DSS).
fn s2_only(env: &Env<'_>, s2: &S2Context, req: &Request) -> Result<(TlbEntry, Mt), Fail> {
    let regime = Regime::S2 { vmid: s2.vmid };
    let hit = env
        .caches
        .lookup(&regime, req.access.privileged, req.iova)
        .is_some();
    env.pending.borrow_mut().tlb_hit = hit;
    let e = stage2(env, s2, req.iova, req.access.privileged)
        .map_err(|inner| stage2_fail(inner, s2, FaultClass::In, F_WALK_EABT))?;
    let mem = combine(Mt::NonCacheable, e.mem, s2.walk.fwb);
    Ok((e, mem))
}

fn run(env: &Env<'_>, regs: &super::regs::Regs, req: &Request) -> Result<DmaOk, Fail> {
    let ste = fetch_ste(env, regs, req.sid)?;
    let mut record = s2_record(ste.s2.as_ref());
    let bypass = |req: &Request| {
        if req.iova >> env.cfg.oas() != 0 {
            return Err(Fail::config(F_ADDR_SIZE, 0));
        }
        Ok(ok(req.iova, 12, Mt::NonCacheable, None, false))
    };
    let (entry, mem) = match (ste.config, ste.s1, ste.s2) {
        (StreamConfig::Abort, ..) => return Err(Fail::config(EVENT_NONE, 0)),
        (StreamConfig::Bypass, ..) if req.ssid.is_none() => return bypass(req),
        (StreamConfig::S2, _, Some(s2)) if req.ssid.is_none() => s2_only(env, &s2, req)?,
        (StreamConfig::S1 | StreamConfig::Nested, Some(s1), s2) => {
            let nested = s2.filter(|_| ste.config == StreamConfig::Nested);
            let Some(index) = choose_cd(&s1, req.ssid)? else {
                return match nested {
                    Some(s2) => finish(env, req, s2_only(env, &s2, req)?, s2_record(Some(&s2))),
                    None => bypass(req),
                };
            };
            let cd = fetch_cd(env, &ste, &s1, req.sid, index)?;
            record.s1 = cd.record;
            let regime = match nested {
                Some(_) => Regime::Nested {
                    vmid: ste.vmid,
                    asid: cd.asid,
                },
                None => Regime::S1 {
                    vmid: ste.vmid,
                    asid: cd.asid,
                },
            };
            if let Some(e) = env.caches.lookup(&regime, req.access.privileged, req.iova) {
                env.pending.borrow_mut().tlb_hit = true;
                (e, e.mem)
            } else {
                let e1 = stage1(env, &cd, regime, nested.as_ref(), req)?;
                let e = match &nested {
                    Some(s2) => {
                        let ipa = e1.out + (req.iova - e1.base);
                        let e2 = stage2(env, s2, ipa, req.access.privileged)
                            .map_err(|inner| stage2_fail(inner, s2, FaultClass::In, F_WALK_EABT))?;
                        nest(&e1, &e2, s2.walk.fwb, req.iova)
                    }
                    None => e1,
                };
                env.pending.borrow_mut().tlb.push(e);
                (e, e.mem)
            }
        }
        // A SubstreamID on a stream without stage 1 (§3.3.2), or an STE without its stage.
        _ => return Err(Fail::config(C_BAD_SUBSTREAMID, 0)),
    };
    finish(env, req, (entry, mem), record)
}

fn s2_record(s2: Option<&S2Context>) -> Record {
    Record {
        s1: true,
        s2: s2.is_some_and(|s| s.record),
    }
}

/// Stage-1 and stage-2 fault recording (CD.R, STE.S2R).
#[derive(Clone, Copy)]
struct Record {
    s1: bool,
    s2: bool,
}

fn finish(
    env: &Env<'_>,
    req: &Request,
    (e, mem): (TlbEntry, Mt),
    record: Record,
) -> Result<DmaOk, Fail> {
    if let Err(stage2) = permit(&e, &req.access) {
        let record = if stage2 { record.s2 } else { record.s1 };
        return Err(Fail {
            event: F_PERMISSION,
            record,
            s2: stage2,
            class: FaultClass::In,
            addr2: 0,
        });
    }
    let hit = env.pending.borrow().tlb_hit;
    let pa = e.out + (req.iova - e.base);
    Ok(ok(pa, e.size_log2, mem, e.s2_memattr, hit))
}

fn ok(pa: u64, size: u32, mem: Mt, s2_memattr: Option<u8>, tlb_hit: bool) -> DmaOk {
    DmaOk {
        pa,
        page_size_log2: size,
        cacheable_wb: mem == Mt::WriteBack,
        s2_memattr,
        tlb_hit,
    }
}

/// Translates `req`, updating the caches and writing an event record on a recorded fault.
pub(crate) fn translate(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: Request,
) -> Result<DmaOk, DmaFault> {
    state.stats.translations += 1;
    let regs = state.regs;
    let result = if !regs.enabled(cr0::SMMUEN) {
        if regs.gbpa & gbpa::ABORT != 0 {
            Err(Fail::config(EVENT_NONE, 0))
        } else {
            Ok(ok(req.iova, 12, Mt::NonCacheable, None, false))
        }
    } else {
        let env = Env {
            caches: &state.caches,
            mem,
            cfg,
            pending: RefCell::new(Pending::default()),
        };
        let result = run(&env, &regs, &req);
        let pending = env.pending.into_inner();
        apply(state, pending);
        result
    };
    result.map_err(|fail| report(state, mem, cfg, &req, fail))
}

fn apply(state: &mut State, pending: Pending) {
    let caches = &mut state.caches;
    if pending.tlb_hit {
        state.stats.tlb_hits += 1;
    } else if !pending.tlb.is_empty() {
        state.stats.tlb_misses += 1;
    }
    caches.tlb.extend(pending.tlb);
    for w in pending.walk {
        if caches.walk_lookup(&w.regime, w.entry_pa).is_none() {
            caches.walk.push(w);
        }
    }
    if let Some((sid, words)) = pending.ste {
        caches.ste.insert(sid, words);
    }
    if let Some((key, value)) = pending.cd {
        caches.cd.insert(key, value);
    }
}

fn report(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: &Request,
    fail: Fail,
) -> DmaFault {
    let record = EventRecord {
        kind: fail.event,
        sid: req.sid,
        ssid: req.ssid,
        s2: fail.s2,
        class: fail.class,
        read: !req.access.write,
        privileged: req.access.privileged,
        instruction: req.access.exec,
        input_addr: req.iova,
        addr2: fail.addr2,
    };
    state.stats.faults += 1;
    let recorded = fail.record
        && fail.event != EVENT_NONE
        && event::push(state, mem, cfg.eventq_max_log2(), &record);
    DmaFault {
        event: fail.event,
        recorded,
        stage2: fail.s2,
        class: fail.class,
        addr2: fail.addr2,
    }
}

/// PREFETCH_CONFIG: fetches and caches the STE of `sid` if it is valid.
pub(crate) fn prefetch_config(state: &mut State, mem: &Arena, cfg: &SmmuModelConfig, sid: u32) {
    let regs = state.regs;
    let env = Env {
        caches: &state.caches,
        mem,
        cfg,
        pending: RefCell::new(Pending::default()),
    };
    let _ = fetch_ste(&env, &regs, sid);
    let pending = env.pending.into_inner();
    if let Some((sid, words)) = pending.ste {
        state.caches.ste.insert(sid, words);
    }
}

/// An ATS-translated transaction (§3.9.1, STE.EATS): its address is already a PA (or an IPA
/// under split-stage ATS, EATS = 0b10, which stage 2 then translates). Translated transactions
/// on a stream whose STE does not enable ATS are F_TRANSL_FORBIDDEN.
pub(crate) fn translated(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: Request,
) -> Result<DmaOk, DmaFault> {
    state.stats.translations += 1;
    let regs = state.regs;
    if !regs.enabled(cr0::SMMUEN) {
        return translate(state, mem, cfg, req);
    }
    let env = Env {
        caches: &state.caches,
        mem,
        cfg,
        pending: RefCell::new(Pending::default()),
    };
    let result = fetch_ste(&env, &regs, req.sid).and_then(|ste| match (ste.config, ste.s2) {
        (StreamConfig::Abort, _) => Err(Fail::config(EVENT_NONE, 0)),
        (StreamConfig::Bypass, _) => Ok(ok(req.iova, 12, Mt::NonCacheable, None, false)),
        _ if ste.eats == 0 || !cfg.has0(super::config::idr0::ATS) => {
            Err(Fail::config(super::event::F_TRANSL_FORBIDDEN, 0))
        }
        (StreamConfig::Nested, Some(s2)) if ste.eats == 2 => {
            finish(&env, &req, s2_only(&env, &s2, &req)?, s2_record(Some(&s2)))
        }
        _ => Ok(ok(req.iova, 12, Mt::NonCacheable, None, false)),
    });
    let pending = env.pending.into_inner();
    apply(state, pending);
    result.map_err(|fail| report(state, mem, cfg, &req, fail))
}
