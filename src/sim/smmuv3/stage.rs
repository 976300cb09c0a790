//! One stage's walk for the translation pipeline: Arm IHI 0070 G.b §3.4 (stage 2 of IPAs the
//! SMMU itself reads -- CDs and stage-1 tables when nested -- and of stage-1 output), §3.17 (TLB
//! and walk-cache fills), §3.12 (which stage-2 faults are recorded: STE.S2R). The walk cache is
//! consulted through [`StageMem`], a view of memory the reference walkers read.

use core::cell::{Cell, RefCell};
use std::vec::Vec;

use super::config::SmmuModelConfig;
use super::event::{
    FaultClass, C_BAD_STE, EVENT_NONE, F_ACCESS, F_ADDR_SIZE, F_PERMISSION, F_TRANSLATION,
    F_WALK_EABT,
};
use super::ste::S2Context;
use super::tlb::{CachedCd, Caches, CdKey, DirtyUpdate, L1Entry, Mt, Regime, TlbEntry, WalkEntry};
use crate::mem::Iova;
use crate::sim::arena::{Arena, PhysMem};
use crate::sim::walk::arm::{Cacheability, MemType};
use crate::sim::walk::{arm_s2, Access, Fault};

/// What a translation adds to the caches once it ends.
#[derive(Default)]
pub(super) struct Pending {
    pub(super) tlb: Vec<TlbEntry>,
    pub(super) walk: Vec<WalkEntry>,
    pub(super) ste: Option<(u32, [u64; 8])>,
    pub(super) cd: Option<(CdKey, CachedCd)>,
    pub(super) tlb_hit: bool,
    pub(super) l1std: Option<(u64, L1Entry)>,
    pub(super) l1cd: Option<((u32, u64), L1Entry)>,
    /// Entries (regime, privileged, address) whose dirty-state updates were made.
    pub(super) dirty_done: Vec<(Regime, bool, u64)>,
}

/// A failed translation before it becomes an event.
#[derive(Clone, Copy, Debug)]
pub(super) struct Fail {
    pub(super) event: u8,
    pub(super) record: bool,
    /// A translation-related fault of a stage configured to stall (CD.S with STE.S1STALLD
    /// = 0, STE.S2S): the transaction waits for CMD_RESUME.
    pub(super) stall: bool,
    pub(super) s2: bool,
    pub(super) class: FaultClass,
    pub(super) addr2: u64,
}

impl Fail {
    /// A configuration or fetch error: always recorded.
    pub(super) fn config(event: u8, addr2: u64) -> Self {
        Self {
            event,
            record: event != EVENT_NONE,
            stall: false,
            s2: false,
            class: FaultClass::In,
            addr2,
        }
    }
}

pub(super) struct Env<'a> {
    pub(super) caches: &'a Caches,
    pub(super) mem: &'a Arena,
    pub(super) cfg: &'a SmmuModelConfig,
    pub(super) pending: RefCell<Pending>,
}

/// Why memory under a walk could not be read: an external abort at a PA, or a stage-2 fault
/// translating an IPA.
#[derive(Clone, Copy, Debug)]
pub(super) enum Inner {
    Abort(u64),
    Stage2 { event: u8, ipa: u64, fetch: u64 },
}

pub(super) type Reader<'a> = dyn Fn(u64) -> Result<u64, Inner> + 'a;

/// Memory as one walk sees it: the walk cache of `regime` first (if any), then `base`.
pub(super) struct StageMem<'a> {
    env: &'a Env<'a>,
    regime: Option<Regime>,
    base: &'a Reader<'a>,
    log: RefCell<Vec<(u64, u64, bool)>>,
    pub(super) err: Cell<Option<Inner>>,
}

impl<'a> StageMem<'a> {
    pub(super) fn new(env: &'a Env<'a>, regime: Option<Regime>, base: &'a Reader<'a>) -> Self {
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
    /// Address of the leaf descriptor of the last walk (an IPA for a nested stage-1 walk).
    pub(super) fn leaf_address(&self) -> Option<u64> {
        self.log.borrow().last().map(|&(pa, ..)| pa)
    }

    pub(super) fn remember(&self, input: u64, leaf_log2: u32, stride: u32) {
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

pub(super) fn low_mask(log2: u32) -> u64 {
    if log2 >= 64 {
        u64::MAX
    } else {
        (1u64 << log2) - 1
    }
}

pub(super) fn mt(mem_type: MemType) -> Mt {
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
pub(super) fn combine(s1: Mt, s2: Mt, fwb: bool) -> Mt {
    match (fwb, s2) {
        (true, Mt::PassThrough) => s1,
        (true, s2) => s2,
        (false, s2) => s1.min(s2),
    }
}

/// The event a walker fault raises; `bad_config` for a configuration the walker refuses.
pub(super) fn fault_event(fault: Fault, bad_config: u8) -> u8 {
    match fault {
        Fault::AddressSize { .. } => F_ADDR_SIZE,
        Fault::AccessFlag { .. } => F_ACCESS,
        Fault::Permission { .. } => F_PERMISSION,
        Fault::ExternalAbort { .. } => F_WALK_EABT,
        Fault::BadConfig(_) => bad_config,
        _ => F_TRANSLATION,
    }
}

pub(super) fn level_of(size_log2: u32, granule_log2: u32) -> u32 {
    let stride = granule_log2 - 3;
    3u32.saturating_sub(size_log2.saturating_sub(granule_log2) / stride)
}

/// Stage 2 of `ipa`, from the TLB or a walk (whose results are pending).
pub(super) fn stage2(
    env: &Env<'_>,
    s2: &S2Context,
    ipa: u64,
    privileged: bool,
) -> Result<TlbEntry, Inner> {
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
    let leaf = mem.leaf_address().unwrap_or(0);
    if s2.walk.hardware_access_flag && !t.attrs.accessed {
        hw_update(
            env,
            DirtyUpdate {
                pa: leaf,
                set: AF,
                clear: 0,
            },
        );
    }
    let dirty =
        (s2.walk.hardware_dirty && t.attrs.dbm && !t.attrs.s2ap_write).then_some(DirtyUpdate {
            pa: leaf,
            set: S2AP_WRITE,
            clear: 0,
        });
    let base = ipa & !low_mask(size);
    let entry = TlbEntry {
        regime,
        global: false,
        privileged,
        base,
        size_log2: size,
        leaf_base: base,
        leaf_size_log2: size,
        level: level_of(size, granule_log2),
        granule_log2,
        out: t.pa.get() - (ipa - base),
        read: t.read,
        write: t.write,
        exec: t.exec,
        s2_perms: None,
        mem: mt(t.attrs.mem_type),
        s2_memattr: Some(t.attrs.memattr),
        dirty: [None, dirty],
    };
    env.pending.borrow_mut().tlb.push(entry);
    Ok(entry)
}

/// Access flag, `bits[10]` of a leaf.
pub(super) const AF: u64 = 1 << 10;
/// Stage-2 `S2AP[1]` (write permission): set by hardware when a DBM page becomes dirty.
const S2AP_WRITE: u64 = 1 << 7;

/// A hardware update of a descriptor (HTTU, §3.13): applied to a still-valid descriptor.
/// Read-modify-write through the arena, so not atomic against a concurrent CPU write.
pub(super) fn hw_update(env: &Env<'_>, u: DirtyUpdate) {
    if let Some(old) = env.mem.read_u64(u.pa) {
        if old & 1 != 0 {
            env.mem.write_u64(u.pa, (old | u.set) & !u.clear);
        }
    }
}

/// Stage 2 of an IPA the SMMU reads (a CD or a stage-1 table): it must grant reads.
pub(super) fn stage2_read(env: &Env<'_>, s2: &S2Context, ipa: u64) -> Result<u64, Inner> {
    let e = stage2(env, s2, ipa, false)?;
    // S2PTW (§5.2): table and CD fetches must not reach Device memory.
    if !e.read || s2.ptw && e.mem == Mt::Device {
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
pub(super) fn stage2_fail(
    inner: Inner,
    s2: &S2Context,
    class: FaultClass,
    abort_event: u8,
) -> Fail {
    match inner {
        Inner::Abort(pa) => Fail::config(abort_event, pa),
        Inner::Stage2 { event, ipa, fetch } => {
            let recordable = matches!(event, F_TRANSLATION | F_ADDR_SIZE | F_ACCESS | F_PERMISSION);
            Fail {
                event,
                record: !recordable || s2.record,
                stall: recordable && s2.stall,
                s2: true,
                class,
                addr2: if event == F_WALK_EABT { fetch } else { ipa },
            }
        }
    }
}
