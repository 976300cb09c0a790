//! Queue target `queue_smmuv3`: the SMMUv3 command queue as a unit drives it -- TLB
//! invalidations and CMD_SYNCs issued by flushes of a stage-2 domain -- over the behavioural
//! model of [`crate::sim::smmuv3`], with CERROR_ILL, CERROR_ABT, CERROR_ATC_INV_SYNC (once, or
//! at a chosen command until recovery) and never-completing CMD_SYNCs injected as the input
//! decides, and a queue small enough (16
//! entries) that it wraps all the time.
//!
//! Checks after every step:
//! - a flush that succeeds has been consumed: every unmapped page faults in the model (its TLB
//!   kept the old translations until then), and the gathered pages went back to the arena
//!   (checked for the pages touched since the last check and their neighbours; every page every
//!   few flushes and at the end);
//! - a flush that fails keeps its pages (the arena's live count does not drop) and fails only
//!   when something was injected;
//! - once injections are cleared and the unit has handled its errors, the next flush succeeds:
//!   the queue is never left wedged;
//! - no page is leaked at the end, none freed twice.

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::iommu::{DeviceId, DomainConfig, DomainHandle, Iommu, Stage};
use crate::mem::{Iova, PhysAddr};
use crate::pgtable::{Gather, Prot};
use crate::sim::smmuv3::{Injection, SmmuModel, SmmuModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig};
use crate::smmuv3::{SmmuConfig, SmmuUnit};

const SID: u32 = 0x20;
const K4: u64 = 1 << 12;
/// The window the target maps in: 64 pages at 4 MiB (crossing no 2 MiB boundary's table).
const WINDOW: u64 = 0x40_0000;
const PAGES: u64 = 64;
/// Every this many checks after a flush (and at the end) the model translates every page;
/// the others translate the pages mapped or unmapped since the last check and their
/// neighbours.
const FULL_CHECK_EVERY: u32 = 8;

#[derive(Arbitrary, Debug)]
enum Op {
    /// Map `count` pages from page `first` (clipped to the window), skipping mapped ones.
    Map { first: u8, count: u8 },
    /// Unmap `count` pages from page `first` and flush.
    UnmapFlush { first: u8, count: u8 },
    /// Inject a fault for what comes next.
    Inject(Fault),
    /// Clear injections and let the unit handle its events and errors.
    Recover,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Fault {
    Illegal,
    Abort,
    SyncStall,
    AtcSyncTimeout,
    /// Fetching the command `at` commands from now aborts until recovery.
    AbortPersistent {
        at: u8,
    },
    /// The CMD_SYNC `at` syncs from now reports an ATC invalidation timeout until recovery.
    AtcSyncPersistent {
        at: u8,
    },
}

impl From<Fault> for Injection {
    fn from(f: Fault) -> Self {
        match f {
            Fault::Illegal => Injection::CommandIllegal,
            Fault::Abort => Injection::CommandAbort,
            Fault::SyncStall => Injection::SyncStall,
            Fault::AtcSyncTimeout => Injection::AtcInvSyncTimeout,
            Fault::AbortPersistent { at } => Injection::CommandAbortAt {
                at: u32::from(at % 8),
                times: u32::MAX,
            },
            Fault::AtcSyncPersistent { at } => Injection::AtcInvSyncAt {
                at: u32::from(at % 4),
                times: u32::MAX,
            },
        }
    }
}

struct Rig<'m> {
    model: &'m SmmuModel<'m>,
    mem: &'m Arena,
    unit: SmmuUnit<&'m SmmuModel<'m>, &'m Arena>,
    domain: DomainHandle,
    /// Page index -> physical page it maps.
    mapped: BTreeMap<u64, u64>,
    /// Pages unmapped but not yet flushed (still maybe in the model's TLB).
    pending: Vec<Gather>,
    injected: bool,
    /// Pages mapped or unmapped since the translations were last checked.
    touched: BTreeSet<u64>,
    /// Translation checks so far.
    checks: u32,
}

impl Rig<'_> {
    fn iova(page: u64) -> u64 {
        WINDOW + page * K4
    }

    fn map(&mut self, first: u8, count: u8) {
        let first = u64::from(first) % PAGES;
        let end = (first + u64::from(count) % 16 + 1).min(PAGES);
        for p in first..end {
            if self.mapped.contains_key(&p) {
                continue;
            }
            let pa = 0x8000_0000 + p * K4 * 3;
            let r = self.unit.map(
                self.domain,
                Iova::new(Self::iova(p)),
                PhysAddr::new(pa),
                K4,
                Prot::READ | Prot::WRITE,
            );
            match r {
                Ok(()) => {
                    self.mapped.insert(p, pa);
                    self.touched.insert(p);
                }
                // The page was unmapped but its stale TLB entry may still be cached: mapping
                // over it is fine for the engine; any other error is a bug.
                Err(e) => panic!("map of page {p} failed: {e:?}"),
            }
        }
    }

    fn unmap_flush(&mut self, first: u8, count: u8) {
        let first = u64::from(first) % PAGES;
        let end = (first + u64::from(count) % 16 + 1).min(PAGES);
        let mut gather = Gather::new();
        for p in first..end {
            if self.mapped.remove(&p).is_some() {
                self.touched.insert(p);
                let n = self
                    .unit
                    .unmap(self.domain, Iova::new(Self::iova(p)), K4, &mut gather)
                    .expect("unmap of a mapped page");
                assert_eq!(n, K4, "unmap of page {p} removed {n:#x} bytes");
            }
        }
        self.pending.push(gather);
        self.flush_pending();
    }

    /// Flushes every pending gather; checks what a success or a failure must mean.
    fn flush_pending(&mut self) {
        let mut kept = Vec::new();
        for mut gather in self.pending.drain(..) {
            let held = gather.freed_pages();
            let live = self.mem.stats().live_pages;
            match self.unit.flush(self.domain, &mut gather) {
                Ok(()) => {
                    assert_eq!(gather.freed_pages(), 0, "pages kept after a good flush");
                    assert_eq!(self.mem.stats().live_pages, live - held);
                }
                Err(e) => {
                    assert!(self.injected, "flush failed with nothing injected: {e:?}");
                    assert_eq!(
                        gather.freed_pages(),
                        held,
                        "pages released by a failed flush"
                    );
                    assert_eq!(self.mem.stats().live_pages, live);
                    kept.push(gather);
                }
            }
        }
        self.pending = kept;
        if self.pending.is_empty() {
            self.check_translations();
        }
    }

    /// With every flush done, the model translates exactly what is mapped: the pages mapped or
    /// unmapped since the last check and their neighbours, every page every
    /// [`FULL_CHECK_EVERY`] checks (translating all 64 after every flush made the model's walks
    /// most of the target's time).
    fn check_translations(&mut self) {
        self.checks += 1;
        let pages: BTreeSet<u64> = if self.checks % FULL_CHECK_EVERY == 0 {
            (0..PAGES).collect()
        } else {
            self.touched
                .iter()
                .flat_map(|&p| [p.saturating_sub(1), p, (p + 1).min(PAGES - 1)])
                .collect()
        };
        self.touched.clear();
        for p in pages {
            let t = self.model.translate(SID, None, Self::iova(p), Access::READ);
            match self.mapped.get(&p) {
                Some(&pa) => assert_eq!(t.map(|t| t.pa).ok(), Some(pa), "page {p}"),
                None => assert!(t.is_err(), "page {p} still translates after its flush"),
            }
        }
    }

    fn recover(&mut self) {
        self.model.clear_injections();
        self.unit.handle_events(usize::MAX, |_| {});
        self.injected = false;
        self.flush_pending();
        assert!(
            self.pending.is_empty(),
            "the queue stayed wedged after recovery"
        );
    }
}

/// The body of `queue_smmuv3`.
pub fn smmuv3(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(ril) = bool::arbitrary(&mut u) else {
        return;
    };
    let config = ArenaConfig {
        capacity: 4 << 20,
        ..ArenaConfig::default()
    };
    super::with_arena(config, |mem| run(mem, ril, &mut u));
}

fn run(mem: &Arena, ril: bool, u: &mut Unstructured<'_>) {
    let model = SmmuModel::new(mem, SmmuModelConfig::qemu_like().with_ril(ril));
    let cfg = SmmuConfig {
        poll_budget: 64,
        cmdq_log2: Some(4),
        ..SmmuConfig::default()
    };
    let unit = SmmuUnit::new(&model, mem, cfg).expect("unit");
    unit.enable().expect("enable");
    let stage2 = DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    };
    let domain = unit.domain_alloc(&stage2).expect("domain");
    unit.attach(DeviceId(SID), None, domain).expect("attach");
    let mut rig = Rig {
        model: &model,
        mem,
        unit,
        domain,
        mapped: BTreeMap::new(),
        pending: Vec::new(),
        injected: false,
        touched: BTreeSet::new(),
        checks: 0,
    };
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(u) else {
            break;
        };
        match op {
            Op::Map { first, count } => rig.map(first, count),
            Op::UnmapFlush { first, count } => rig.unmap_flush(first, count),
            Op::Inject(f) => {
                model.inject(f.into());
                rig.injected = true;
            }
            Op::Recover => rig.recover(),
        }
    }
    rig.recover();
    rig.checks = FULL_CHECK_EVERY - 1;
    rig.check_translations();
    rig.unit.detach(DeviceId(SID), None).expect("detach");
    rig.unit.domain_free(domain).expect("domain free");
    rig.unit.disable().expect("disable");
    drop(rig);
    let stats = mem.stats();
    assert_eq!(stats.bad_frees, 0, "bad frees: {:?}", mem.bad_frees());
}
