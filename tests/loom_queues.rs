//! Model checking, with [`loom`], of a queue the hardware consumes while the CPU produces into
//! it: the VT-d invalidation queue (`src/vtd/inv_queue.rs`; Intel VT-d specification rev. 4.1,
//! §6.5.2 Queued Invalidation Interface, §6.5.2.8 Invalidation Wait Descriptor, and the
//! registers IQH / IQT / IQA, §11.4), here, the SMMUv3 command queue (module `smmuv3`,
//! `tests/loom_queues/smmuv3.rs`) and the AMD-Vi command buffer (module `amdvi`,
//! `tests/loom_queues/amdvi.rs`); each module says what its model unit does. Modules
//! `vtd_enable` and `amdvi_enable` run the whole VT-d and AMD-Vi drivers instead: `enable`
//! beside a flush, against a unit model that answers in the caller's thread; module
//! `enable_model` holds what the two share (the race, the model's IOTLB, the checks).
//!
//! Built only with `--cfg loom`, which points the queue's ring and status word at loom's atomics
//! (`inv_queue.rs`, `loom_words`), turns the `mmio` barriers into loom fences and makes
//! `mmio::poll` yield to loom:
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release --test loom_queues -- --test-threads=1 --nocapture
//! ```
//!
//! Each scenario runs the crate's real producer (`QueueCore::submit_and_wait_noting`, the body
//! of the `submit_and_wait_within` that `VtdUnit`'s batches call under its `inval` lock:
//! the space check on `IQH`, the descriptor stores, the `IQT` doorbell, the bounded poll of the
//! wait's status word) on one loom thread, and a model of the unit on another. The unit reads
//! `IQT` (then an acquire fence: a device fetches what the doorbell published), fetches each
//! descriptor from `IQH` on, and checks that it is, word for word, the descriptor the scenario
//! queued in that slot: a torn or stale descriptor (the tail written before the descriptor's
//! words, or without the barrier before the doorbell), or one overwritten before the unit
//! consumed it, fails. Once it has fetched a descriptor it moves `IQH` past it (release: the
//! slot may be reused), and only then runs it, as a unit that fetches ahead may: an
//! invalidation by counting it (relaxed), a wait descriptor by writing its status data with
//! release ordering (VT-d §6.5.2.8: the status write happens once every earlier descriptor
//! has completed). So `IQH` past a wait is not its completion. The unit may be slower than
//! the producer at every step: loom runs it late wherever the preemption bound lets it.
//!
//! The producer asserts, in every interleaving: a call that returned `Ok` saw every descriptor
//! before its wait executed; a call that timed out returned the error its documentation names,
//! with the queue in the documented state (`false`, nothing written, `IQT` and the tail where
//! they were, for want of space; `true`, the batch queued and the doorbell rung, for a wait
//! whose status did not arrive); a later call completes, and does not take an earlier wait's
//! late status for its own.
//!
//! Not modelled: queue errors (`FSTS.IQE/ITE/ICE`, the recovery's `neutralise`), 256-bit
//! descriptors, a unit that does not snoop the ring, more than one producer (the unit's queue
//! is behind its `inval` lock), the weak orderings loom does not explore (load buffering: a
//! fetch reading a store the producer made after seeing the fetch's `IQH`) (ARCHITECTURE.md,
//! "Queues the hardware consumes").
#![cfg(loom)]

#[path = "loom_queues/amdvi.rs"]
mod amdvi;
#[path = "loom_queues/amdvi_enable.rs"]
mod amdvi_enable;
#[path = "loom_queues/enable_model.rs"]
mod enable_model;
#[path = "loom_queues/smmuv3.rs"]
mod smmuv3;
#[path = "loom_queues/vtd_enable.rs"]
mod vtd_enable;

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32 as StdU32, AtomicU64 as StdU64};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use iommu_engine::mem::{Page, PageAllocator, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::vtd::inv_desc::{ContextCacheScope, Descriptor, IotlbScope, WaitFlags};
use iommu_engine::vtd::inv_queue::{DescriptorWidth, QueueConfig, QueueCore};
use iommu_engine::vtd::regs::{FSTS_REG, GCMD_REG, GSTS_REG, IQA_REG, IQH_REG, IQT_REG};
use iommu_engine::vtd::{DomainId, Error, Wait};
use loom::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// Physical address of the first page; each page gets a 64 KiB-aligned slot after it.
const PAGE_BASE: u64 = 0x4000_0000;
/// `IQA.QS = 0`: one 4 KiB page of 128-bit descriptors.
const ENTRIES: u32 = 256;
/// Index to `IQH` / `IQT` value (128-bit descriptors).
const SHIFT: u32 = 4;
/// Polls that always suffice: the unit runs whenever the producer polls, and only a preemption
/// (two at most) can hold it back.
const PATIENT: u32 = 64;

// ------------------------------------------------------------------------------------------
// memory: pages that are arrays of loom atomics

/// The pages the queue allocated: its ring first, then its status page.
#[derive(Default)]
struct Pages(Mutex<Vec<Box<[AtomicU64]>>>);

// SAFETY: `alloc` hands out distinct zeroed pages of the size asked, aligned (their addresses
// are 64 KiB apart), live until the scenario ends; `free` is never needed by these scenarios.
unsafe impl PageAllocator for Pages {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        assert_eq!(size_log2, 12, "the scenarios' queue has IQA.QS = 0");
        let words: Box<[AtomicU64]> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let va = NonNull::from(&words[0]).cast::<u8>();
        let mut pages = self.0.lock().unwrap();
        let pa = PAGE_BASE + ((pages.len() as u64) << 16);
        pages.push(words);
        Some(Page {
            pa: PhysAddr::new(pa),
            va,
        })
    }

    unsafe fn free(&self, page: Page, _size_log2: u32) {
        panic!("page {:#x} freed during a queue scenario", page.pa.get());
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let pages = self.0.lock().unwrap();
        let i = usize::try_from((pa.get().checked_sub(PAGE_BASE)?) >> 16).ok()?;
        pages.get(i).map(|w| NonNull::from(&w[0]).cast())
    }
}

impl Pages {
    /// Word `index` of the `page`th page allocated (0: the ring, 1: the status page).
    fn word(&self, page: usize, index: usize) -> &AtomicU64 {
        let pages = self.0.lock().unwrap();
        let p: *const AtomicU64 = &pages[page][index];
        // SAFETY: the boxed page never moves nor is dropped before `self` (no `free`).
        unsafe { &*p }
    }
}

// ------------------------------------------------------------------------------------------
// registers

/// The unit's registers. `IQH` and `IQT` are loom atomics (the unit and the producer race on
/// them); `GSTS` and `IQA` only matter while the queue is enabled, before the threads start,
/// and `FSTS` stays 0 (no queue error is modelled), so they cost no interleavings.
#[derive(Default)]
struct Regs {
    gsts: StdU32,
    iqa: StdU64,
    iqh: AtomicU64,
    iqt: AtomicU64,
    /// `IQT` writes: a batch rings the doorbell once.
    doorbells: StdU32,
}

#[derive(Clone)]
struct Window(Arc<Regs>);

impl RegisterWindow for Window {
    fn read32(&self, offset: usize) -> u32 {
        match offset {
            GSTS_REG => self.0.gsts.load(std::sync::atomic::Ordering::Relaxed),
            FSTS_REG => 0,
            _ => panic!("read32 of register {offset:#x}"),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        match offset {
            // GSTS follows GCMD at once (QIE -> QIES, bit 26).
            GCMD_REG => self
                .0
                .gsts
                .store(value, std::sync::atomic::Ordering::Relaxed),
            FSTS_REG => {}
            _ => panic!("write32 of register {offset:#x}"),
        }
    }

    // Device registers are read and written with relaxed accesses: only the `mmio` barriers
    // order them with the queue memory.
    fn read64(&self, offset: usize) -> u64 {
        match offset {
            IQH_REG => self.0.iqh.load(Ordering::Relaxed),
            IQT_REG => self.0.iqt.load(Ordering::Relaxed),
            IQA_REG => self.0.iqa.load(std::sync::atomic::Ordering::Relaxed),
            _ => panic!("read64 of register {offset:#x}"),
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        match offset {
            IQT_REG => {
                self.0
                    .doorbells
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.iqt.store(value, Ordering::Relaxed)
            }
            IQA_REG => self
                .0
                .iqa
                .store(value, std::sync::atomic::Ordering::Relaxed),
            _ => panic!("write64 of register {offset:#x}"),
        }
    }
}

// ------------------------------------------------------------------------------------------
// the unit

/// What the unit is to find in the ring, in the order it consumes it.
struct Plan {
    /// `IQH` when the threads start.
    head: u32,
    /// The descriptors from `head` on, one per slot.
    expected: Vec<Descriptor>,
    /// `expected[from..to]`, queued and checked before the threads start, is consumed in one
    /// step (`IQH` moved past it at once): the producer's batches never reach those slots, and
    /// fetching 250 descriptors one by one would cost more interleavings than it explores.
    bulk: Option<(usize, usize)>,
}

struct World {
    pages: Pages,
    regs: Arc<Regs>,
    /// Invalidations (every descriptor but waits) the unit executed, published by the status
    /// writes of the waits after them.
    executed: AtomicU64,
    /// Set by the producer when it has queued everything (the unit stops once idle).
    producer_done: AtomicBool,
    status_pa: u64,
}

impl World {
    fn window(&self) -> Window {
        Window(self.regs.clone())
    }

    fn ring_word(&self, slot: u32, word: usize) -> &AtomicU64 {
        self.pages.word(0, slot as usize * 2 + word)
    }

    /// The unit: fetches and runs descriptors until the producer is done and the queue empty.
    /// Returns how many of the plan's descriptors it consumed.
    fn run_unit(&self, plan: &Plan) -> usize {
        let mut head = plan.head;
        let mut executed = self.executed.load(Ordering::Relaxed);
        let mut k = 0;
        while k < plan.expected.len() {
            if let Some((from, to)) = plan.bulk.filter(|&(from, _)| from == k) {
                let n = (to - from) as u32;
                head = (head + n) % ENTRIES;
                executed += u64::from(n);
                k = to;
                self.executed.store(executed, Ordering::Relaxed);
                self.regs
                    .iqh
                    .store(u64::from(head) << SHIFT, Ordering::Release);
                continue;
            }
            let iqt = self.regs.iqt.load(Ordering::Relaxed);
            // The fetches that follow see what the doorbell's barrier published.
            fence(Ordering::Acquire);
            assert!(
                iqt % (1 << SHIFT) == 0 && iqt >> SHIFT < u64::from(ENTRIES),
                "IQT {iqt:#x} is outside the queue or misaligned"
            );
            if iqt >> SHIFT == u64::from(head) {
                if self.producer_done.load(Ordering::Acquire) {
                    break;
                }
                loom::thread::yield_now();
                continue;
            }
            let fetched = [
                self.ring_word(head, 0).load(Ordering::Relaxed),
                self.ring_word(head, 1).load(Ordering::Relaxed),
            ];
            let want = &plan.expected[k].qw[..2];
            assert_eq!(
                fetched,
                want,
                "unit: slot {head} (IQT {:#x}) holds {fetched:x?}, not the descriptor queued \
                 there, {want:x?}: torn, stale, or overwritten before the unit consumed it",
                iqt >> SHIFT
            );
            // Fetched: the slot may be reused. `IQH` moves before the descriptor runs, as it
            // may on a unit that fetches ahead: `IQH` past a wait is not its completion.
            head = (head + 1) % ENTRIES;
            self.regs
                .iqh
                .store(u64::from(head) << SHIFT, Ordering::Release);
            if plan.expected[k].desc_type() == 0x5 {
                self.wait(fetched);
            } else {
                executed += 1;
                self.executed.store(executed, Ordering::Relaxed);
            }
            k += 1;
        }
        k
    }

    /// An invalidation wait descriptor (§6.5.2.8): with `SW` (bit 5), a 32-bit write of the
    /// status data (63:32) to the status address (word 1, 63:2), after every earlier descriptor
    /// completed (the release store publishes `executed`).
    fn wait(&self, d: [u64; 2]) {
        assert_ne!(d[0] & 1 << 5, 0, "a wait of the queue's without SW");
        assert_eq!(d[1], self.status_pa, "a wait's status address");
        // The status word is the low half of word 0; the high half (the scratch word of
        // recovery waits) stays 0 here.
        self.pages.word(1, 0).store(d[0] >> 32, Ordering::Release);
    }
}

// ------------------------------------------------------------------------------------------
// scenarios

/// An invalidation the scenario queues, told apart by its domain.
fn iotlb(did: u16) -> Descriptor {
    Descriptor::iotlb(IotlbScope::Domain(DomainId::new(did)), false, false).unwrap()
}

/// A filler queued before the threads start, told apart by its domain.
fn filler(did: u16) -> Descriptor {
    Descriptor::context_cache(ContextCacheScope::Domain(DomainId::new(did))).unwrap()
}

fn wait(world: &World, sequence: u32) -> Descriptor {
    Descriptor::wait(
        WaitFlags::default(),
        Some((sequence, PhysAddr::new(world.status_pa))),
    )
    .unwrap()
}

/// Setup: enables a queue of `ENTRIES` slots, queues `fillers` fillers (the doorbell rung
/// once), and lets the unit consume the first `consumed` of them.
fn setup(fillers: usize, consumed: u32) -> (Arc<World>, QueueCore, Vec<Descriptor>) {
    let regs = Arc::new(Regs::default());
    let pages = Pages::default();
    let config = QueueConfig {
        qs: 0,
        width: DescriptorWidth::Bits128,
        poll_budget: 4,
        haw: 39,
    };
    let window = Window(regs.clone());
    let mut q = QueueCore::enable(&window, &pages, config).unwrap();
    assert_eq!(q.entries(), ENTRIES);
    let queued: Vec<Descriptor> = (0..fillers).map(|i| filler(i as u16 + 1)).collect();
    q.submit(&window, &queued).unwrap();
    let world = Arc::new(World {
        status_pa: PAGE_BASE + (1 << 16),
        pages,
        regs,
        executed: AtomicU64::new(u64::from(consumed)),
        producer_done: AtomicBool::new(false),
    });
    for (i, d) in queued.iter().enumerate() {
        let slot = i as u32;
        let words = [0, 1].map(|w| world.ring_word(slot, w).load(Ordering::Relaxed));
        assert_eq!(&words, &d.qw[..2], "setup: filler {i}");
    }
    world
        .regs
        .iqh
        .store(u64::from(consumed) << SHIFT, Ordering::Relaxed);
    world
        .regs
        .doorbells
        .store(0, std::sync::atomic::Ordering::Relaxed);
    (world, q, queued)
}

fn model_builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    // Setup writes a ring of 256 descriptors: more than loom's default of 1000 branches.
    b.max_branches = b.max_branches.max(20_000);
    b
}

/// How often each outcome of the producer's calls came up, over a scenario's interleavings.
#[derive(Clone, Default)]
struct Tally(Arc<Mutex<BTreeMap<&'static str, usize>>>);

impl Tally {
    fn note(&self, outcome: &'static str) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }
}

/// Runs `body` under loom, printing the interleavings explored, the time taken and the
/// outcomes; fails if one of `outcomes` never came up (the scenario would not test it).
fn run(name: &str, outcomes: &[&str], body: impl Fn(&Tally) + Send + Sync + 'static) {
    let iterations = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tally = Tally::default();
    let start = Instant::now();
    let (it, t) = (iterations.clone(), tally.clone());
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model_builder().check(move || {
            it.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            body(&t);
        })
    }));
    let verdict = if checked.is_ok() { "passed" } else { "FAILED" };
    let seen = tally.0.lock().unwrap().clone();
    println!(
        "loom scenario {name}: {verdict} after {} interleavings in {:.1} s (preemption bound \
         {:?}); outcomes {seen:?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        model_builder().preemption_bound
    );
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    for o in outcomes {
        assert!(seen.contains_key(o), "{name}: no interleaving reached {o}");
    }
}

/// A model unit the scenarios race a producer against: the VT-d invalidation queue's
/// (`World`), the SMMUv3 command queue's (`smmuv3::SmmuWorld`), the AMD-Vi command buffer's
/// (`amdvi::AmdWorld`).
trait ModelUnit: Send + Sync + 'static {
    /// What the unit expects to fetch, and how.
    type Plan: Send + 'static;
    /// Consumes the queue on `plan` until the producer is done and nothing is left; returns
    /// how many entries it consumed.
    fn run_unit(&self, plan: &Self::Plan) -> usize;
    /// Set by the producer's thread once it returned.
    fn producer_done(&self) -> &AtomicBool;
}

impl ModelUnit for World {
    type Plan = Plan;
    fn run_unit(&self, plan: &Plan) -> usize {
        World::run_unit(self, plan)
    }
    fn producer_done(&self) -> &AtomicBool {
        &self.producer_done
    }
}

/// Spawns the unit on `plan`, runs `producer` on another thread with the queue `q`, and checks
/// that the unit consumed what the producer says it queued: the plan's first `producer()`
/// entries (`what`: descriptors, commands).
fn race<W: ModelUnit, Q: Send + 'static>(
    world: Arc<W>,
    q: Q,
    plan: W::Plan,
    what: &'static str,
    producer: impl FnOnce(&W, &mut Q) -> usize + Send + 'static,
) {
    let w = world.clone();
    let unit = loom::thread::spawn(move || w.run_unit(&plan));
    let w = world.clone();
    let producer = loom::thread::spawn(move || {
        let mut q = q;
        let queued = producer(&w, &mut q);
        w.producer_done().store(true, Ordering::Release);
        queued
    });
    let queued = producer.join().unwrap();
    let consumed = unit.join().unwrap();
    assert_eq!(
        consumed, queued,
        "the unit consumed {consumed} of the {queued} {what} queued"
    );
}

/// The queue full when the producer comes, and its batch wrapping: 254 fillers in slots 0-253
/// are unconsumed (`IQH` 0, `IQT` 254: one free slot, which must stay empty), and the producer
/// queues two invalidations and a wait (3 slots). It must poll `IQH` (bounded) until the unit
/// has fetched two fillers, then write slots 254, 255 and 0 and ring `IQT` = 1 once. The unit
/// fetches fillers 0-2 one at a time (an overwrite of a slot it has not fetched is seen there),
/// jumps over 3-253, then runs the batch; the producer's `Ok` must come after both
/// invalidations.
#[test]
fn vtd_full_queue_batch_wraps() {
    run("vtd_full_queue_batch_wraps", &["ok"], |t| {
        let (world, q, mut expected) = setup(254, 0);
        expected.extend([iotlb(1), iotlb(2), wait(&world, 1)]);
        let plan = Plan {
            head: 0,
            expected,
            bulk: Some((3, 254)),
        };
        let t = t.clone();
        race(world, q, plan, "descriptors", move |w, q| {
            let r = q.submit_and_wait_noting(&w.window(), &[iotlb(1), iotlb(2)], PATIENT);
            assert_eq!(r, Ok(()), "a full queue's batch with {PATIENT} polls");
            t.note("ok");
            assert_eq!(q.tail(), 1, "the tail after wrapping");
            let executed = w.executed.load(Ordering::Relaxed);
            assert_eq!(
                executed, 256,
                "the wait returned before its invalidations ran"
            );
            assert_eq!(
                w.regs.doorbells.load(std::sync::atomic::Ordering::Relaxed),
                1,
                "one IQT write per batch"
            );
            257
        });
    });
}

/// No room within the budget: the same full queue, but the producer polls once, for space and
/// then for the status. Either the unit made room first and the call completes as above, or it
/// made room but the status came too late (`Timeout { InvalidationWait { sequence: 1 } }`, the
/// batch queued: a wait alone, sequence 2, then completes it), or the call fails with
/// `Timeout { QueueSpace { needed: 3 } }` and nothing written: the tail, `IQT` and the slots
/// the batch would take are unchanged (the unit, which checks slot 0 before the batch, would
/// see an early write). The retry, with room to wait, completes with sequence number 1: the
/// failed call used none.
#[test]
fn vtd_space_timeout_writes_nothing() {
    let outcomes = ["ok", "status timeout", "space timeout"];
    run("vtd_space_timeout_writes_nothing", &outcomes, |t| {
        let (world, q, mut expected) = setup(254, 0);
        expected.extend([iotlb(1), iotlb(2), wait(&world, 1), wait(&world, 2)]);
        let plan = Plan {
            head: 0,
            expected,
            bulk: Some((3, 254)),
        };
        let t = t.clone();
        race(world, q, plan, "descriptors", move |w, q| {
            let batch = [iotlb(1), iotlb(2)];
            let mut queued = 257;
            match q.submit_and_wait_noting(&w.window(), &batch, 1) {
                Ok(()) => t.note("ok"),
                Err((e, true)) => {
                    t.note("status timeout");
                    let late = Error::Timeout {
                        what: Wait::InvalidationWait { sequence: 1 },
                        polls: 1,
                    };
                    assert_eq!(e, late, "the first call's error, its batch queued");
                    assert_eq!(q.tail(), 1, "the tail after a batch whose wait timed out");
                    q.submit_and_wait_noting(&w.window(), &[], PATIENT)
                        .expect("a wait after the late one");
                    queued = 258;
                }
                Err((e, false)) => {
                    t.note("space timeout");
                    let space = Error::Timeout {
                        what: Wait::QueueSpace { needed: 3 },
                        polls: 1,
                    };
                    assert_eq!(e, space, "the first call's error, nothing queued");
                    assert_eq!(q.tail(), 254, "the tail after a refused batch");
                    let iqt = w.regs.iqt.load(Ordering::Relaxed);
                    assert_eq!(iqt, 254 << SHIFT, "IQT after a refused batch");
                    q.submit_and_wait_noting(&w.window(), &batch, PATIENT)
                        .expect("the retry of a batch refused for want of space");
                }
            }
            assert_eq!(q.tail(), if queued == 258 { 2 } else { 1 });
            assert_eq!(w.executed.load(Ordering::Relaxed), 256);
            queued
        });
    });
}

/// A wait whose status comes late: the queue is empty with `IQH` = `IQT` = 254, and the
/// producer queues an invalidation and a wait (slots 254, 255) with a budget of two polls.
/// Either it completes (then the invalidation ran) or it fails with
/// `Timeout { InvalidationWait { sequence: 1 } }`, the batch queued (`true`, tail 0): the unit
/// still runs it, and its status write may land while the next call polls. That call (an
/// invalidation and a wait in slots 0 and 1, sequence 2) must not take the late status 1 for
/// its own: it returns only after both invalidations ran.
#[test]
fn vtd_wait_timeout_then_late_status() {
    run(
        "vtd_wait_timeout_then_late_status",
        &["ok", "status timeout"],
        |t| {
            let (world, q, _) = setup(254, 254);
            let expected = vec![iotlb(1), wait(&world, 1), iotlb(2), wait(&world, 2)];
            let plan = Plan {
                head: 254,
                expected,
                bulk: None,
            };
            let t = t.clone();
            race(world, q, plan, "descriptors", move |w, q| {
                match q.submit_and_wait_noting(&w.window(), &[iotlb(1)], 2) {
                    Ok(()) => {
                        t.note("ok");
                        assert!(
                            w.executed.load(Ordering::Relaxed) >= 255,
                            "the first wait returned before its invalidation ran"
                        );
                    }
                    Err((e, queued)) => {
                        t.note("status timeout");
                        let late = Error::Timeout {
                            what: Wait::InvalidationWait { sequence: 1 },
                            polls: 2,
                        };
                        assert_eq!((e, queued), (late, true), "the first call's error");
                    }
                }
                assert_eq!(q.tail(), 0, "the tail after the first batch");
                q.submit_and_wait_noting(&w.window(), &[iotlb(2)], PATIENT)
                    .expect("the second batch");
                assert_eq!(q.tail(), 2);
                assert_eq!(
                    w.executed.load(Ordering::Relaxed),
                    256,
                    "the second wait returned before its invalidation ran"
                );
                4
            });
        },
    );
}
