//! Translation of one transaction: Arm IHI 0070 G.b §3.3 (StreamID to STE, SubstreamID to CD),
//! §3.4 (address translation: stage 1, stage 2, nested, where stage-1 table and CD addresses
//! are IPAs translated by stage 2), §3.12 (faults and which are recorded: CD.R, STE.S2R),
//! §5.2 S1DSS, §7.3 (the event each failure raises).
//!
//! Every lookup goes through the model's caches first (STE, CD, TLB, walk cache); what a walk
//! finds is collected in a [`Pending`] set and added to the caches when the translation ends, so
//! that the walk itself only needs shared access to them.

use core::cell::{Cell, RefCell};

use super::cd::{self, Cd};
use super::config::SmmuModelConfig;
use super::event::{self, EventRecord, FaultClass};
use super::event::{
    C_BAD_CD, C_BAD_STE, C_BAD_SUBSTREAMID, EVENT_NONE, F_ADDR_SIZE, F_CD_FETCH, F_PERMISSION,
    F_STREAM_DISABLED, F_TRANSLATION, F_WALK_EABT,
};
use super::regs::{cr0, gbpa};
use super::stage::{
    combine, fault_event, hw_update, level_of, low_mask, mt, stage2, stage2_fail, stage2_read, Env,
    Fail, Inner, Pending, StageMem, AF,
};
use super::ste::{self, S1Context, S2Context, Ste, StreamConfig};
use super::strtab::{self, L1Mem, Miss};
use super::tlb::{DirtyUpdate, L1Entry, Mt, Regime, TlbEntry};
use super::{DmaFault, DmaOk, State};
use crate::mem::Iova;
use crate::sim::arena::{Arena, PhysMem};

use crate::sim::walk::{arm_s1, Access};

/// One transaction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub sid: u32,
    pub ssid: Option<u32>,
    pub iova: u64,
    pub access: Access,
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
            let cached = |pa: u64| env.caches.l1std.get(&pa).map(|e| e.desc);
            let l1 = L1Mem {
                cached: &cached,
                inner: env.mem,
                fetched: Cell::new(None),
            };
            let addr = strtab::ste_address(env.cfg, regs, &l1, sid).map_err(miss)?;
            let w = strtab::fetch_ste(env.mem, addr).map_err(miss)?;
            let ste = ste::decode(env.cfg, &w).map_err(|()| Fail::config(C_BAD_STE, 0))?;
            let mut pending = env.pending.borrow_mut();
            pending.ste = Some((sid, w));
            if let Some((pa, desc)) = l1.fetched.get() {
                let split = strtab::strtab_split(regs);
                let entry = L1Entry {
                    desc,
                    first: u64::from(sid >> split << split),
                    count: 1 << split,
                };
                pending.l1std = Some((pa, entry));
            }
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
    let cached = |a: u64| env.caches.l1cd.get(&(sid, a)).map(|e| e.desc);
    let l1 = L1Mem {
        cached: &cached,
        inner: &mem,
        fetched: Cell::new(None),
    };
    let fetched = strtab::cd_address(s1, &l1, index, F_CD_FETCH)
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
    let mut pending = env.pending.borrow_mut();
    pending.cd = Some(((sid, index), (s1.ptr, words)));
    if let Some((a, desc)) = l1.fetched.get() {
        let split = strtab::cd_split(s1.fmt);
        let entry = L1Entry {
            desc,
            first: u64::from(index >> split << split),
            count: 1 << split,
        };
        pending.l1cd = Some(((sid, a), entry));
    }
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
        stall: cd.stall,
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
    let dirty = s1_hardware_updates(env, cd, nested, mem.leaf_address(), &t.attrs);
    let base = req.iova & !low_mask(size);
    Ok(TlbEntry {
        regime,
        global: !t.attrs.not_global,
        privileged: req.access.privileged,
        base,
        size_log2: size,
        leaf_base: base,
        leaf_size_log2: size,
        level: level_of(size, granule_log2),
        granule_log2,
        out: t.pa.get() - (req.iova - base),
        read: t.read,
        write: t.write,
        exec: t.exec,
        s2_perms: None,
        mem: mt(t.attrs.mem_type),
        s2_memattr: None,
        dirty: [dirty, None],
    })
}

/// Stage-1 HTTU (CD.HA, CD.HD): sets AF now; a writable-clean DBM leaf (`AP[2]` = 1) owes
/// clearing `AP[2]` on the first write. A nested leaf's IPA is translated by stage 2 first.
fn s1_hardware_updates(
    env: &Env<'_>,
    cd: &Cd,
    nested: Option<&S2Context>,
    leaf: Option<u64>,
    attrs: &arm_s1::ArmS1Attrs,
) -> Option<DirtyUpdate> {
    let af = cd.walk.hardware_access_flag && !attrs.accessed;
    let dirty = cd.walk.hardware_dirty && attrs.dbm && attrs.read_only;
    if !af && !dirty {
        return None;
    }
    let mut pa = leaf?;
    if let Some(s2) = nested {
        let e = stage2(env, s2, pa, false).ok()?;
        pa = e.out + (pa - e.base);
    }
    if af {
        hw_update(
            env,
            DirtyUpdate {
                pa,
                set: AF,
                clear: 0,
            },
        );
    }
    dirty.then_some(DirtyUpdate {
        pa,
        set: 0,
        clear: AP_READ_ONLY,
    })
}

/// Stage-1 `AP[2]` (read-only): cleared by hardware when a DBM page becomes dirty.
const AP_READ_ONLY: u64 = 1 << 7;

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
        dirty: [s1.dirty[0], s2e.dirty[1]],
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
            let cd = Cd {
                stall: cd.stall && !s1.stalld,
                ..cd
            };
            record.s1 = cd.record;
            record.s1_stall = cd.stall;
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
        s1_stall: false,
        s2_stall: s2.is_some_and(|s| s.stall),
    }
}

/// Stage-1 and stage-2 fault recording (CD.R, STE.S2R) and stalling (CD.S, STE.S2S).
#[derive(Clone, Copy)]
struct Record {
    s1: bool,
    s2: bool,
    s1_stall: bool,
    s2_stall: bool,
}

fn finish(
    env: &Env<'_>,
    req: &Request,
    (e, mem): (TlbEntry, Mt),
    record: Record,
) -> Result<DmaOk, Fail> {
    if let Err(stage2) = permit(&e, &req.access) {
        let (record, stall) = if stage2 {
            (record.s2, record.s2_stall)
        } else {
            (record.s1, record.s1_stall)
        };
        return Err(Fail {
            event: F_PERMISSION,
            record,
            stall,
            s2: stage2,
            class: FaultClass::In,
            addr2: 0,
        });
    }
    if req.access.write && e.dirty.iter().any(Option::is_some) {
        for u in e.dirty.iter().flatten() {
            hw_update(env, *u);
        }
        let done = (e.regime, req.access.privileged, req.iova);
        env.pending.borrow_mut().dirty_done.push(done);
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
        // Filled in by `translate` / `translated` from the platform.
        coherent: false,
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
    if state.service_failure {
        // §12.3: client transactions are terminated, nothing is recorded.
        return Err(report(state, mem, cfg, &req, Fail::config(EVENT_NONE, 0)));
    }
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
    result
        .map(|o| platform_coherency(cfg, &req, o))
        .map_err(|fail| report(state, mem, cfg, &req, fail))
}

/// What the structures in memory translate `req` to, walked with empty caches: the output
/// address, or `None` (a fault, the unit off or in service failure mode). Nothing the model
/// keeps changes: no cache is filled, no event recorded, no counter moved.
pub(crate) fn in_memory(
    state: &State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: Request,
) -> Option<u64> {
    if state.service_failure || !state.regs.enabled(cr0::SMMUEN) {
        return None;
    }
    let empty = super::tlb::Caches::default();
    let env = Env {
        caches: &empty,
        mem,
        cfg,
        pending: RefCell::new(Pending::default()),
    };
    run(&env, &state.regs, &req).ok().map(|o| o.pa)
}

/// The platform's part: a transaction of a stream the platform makes coherent whatever its
/// attributes (IORT `CANWBS`) snoops even as a PCIe No-Snoop; no SMMU attribute does that.
fn platform_coherency(cfg: &SmmuModelConfig, req: &Request, mut o: DmaOk) -> DmaOk {
    o.coherent = cfg.canwbs(req.sid);
    o
}

fn apply(state: &mut State, pending: Pending) {
    let caches = &mut state.caches;
    if pending.tlb_hit {
        state.stats.tlb_hits += 1;
    } else if !pending.tlb.is_empty() {
        state.stats.tlb_misses += 1;
    }
    caches.tlb.extend(pending.tlb);
    for (regime, privileged, addr) in pending.dirty_done {
        caches.dirty_done(&regime, privileged, addr);
    }
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
    if let Some((key, value)) = pending.l1std {
        caches.l1std.insert(key, value);
    }
    if let Some((key, value)) = pending.l1cd {
        caches.l1cd.insert(key, value);
    }
}

fn report(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: &Request,
    fail: Fail,
) -> DmaFault {
    state.stats.faults += 1;
    if fail.stall && cfg.stall_supported() {
        if let Some(stag) = super::stall::stall(state, mem, cfg, req, &fail) {
            return DmaFault {
                event: fail.event,
                recorded: true,
                stage2: fail.s2,
                class: fail.class,
                addr2: fail.addr2,
                stag: Some(stag),
            };
        }
        // The record could not be written: the model terminates the transaction (an
        // SMMU would retry it once the queue is writable, §3.12.2).
    }
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
        stag: None,
    };
    let recorded = fail.record
        && fail.event != EVENT_NONE
        && event::push(state, mem, cfg.eventq_max_log2(), &record);
    DmaFault {
        event: fail.event,
        recorded,
        stage2: fail.s2,
        class: fail.class,
        addr2: fail.addr2,
        stag: None,
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
    if let Some((key, value)) = pending.l1std {
        state.caches.l1std.insert(key, value);
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
    if state.service_failure || !state.regs.enabled(cr0::SMMUEN) {
        return translate(state, mem, cfg, req);
    }
    state.stats.translations += 1;
    let regs = state.regs;
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
    result
        .map(|o| platform_coherency(cfg, &req, o))
        .map_err(|fail| report(state, mem, cfg, &req, fail))
}
