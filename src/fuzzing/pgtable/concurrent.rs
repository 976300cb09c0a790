//! Target `pgtable_concurrent` (VT-d second and first stage, Arm stage 2 and stage 1, AMD-Vi
//! v1 and v2 tables, chosen by the input's first byte): two to four threads map, unmap (cutting
//! larger pages they share), mark dirty and read-and-clear dirty state on disjoint slices of one window of ONE
//! table, while a checker thread walks the tables through the reference walker (issue 13,
//! "threaded stress").
//!
//! The window is two blocks of 4 KiB granules (4 MiB, so the slices share the upper tables and
//! the level-0 tables); the input cuts it into one slice per thread anywhere, so that slices
//! share larger pages, and may map either block whole (as a 2 MiB page where the format has
//! them) before the threads start, so that the first unmaps of neighbours split the same page.
//! Each thread runs its operations against its own model of its slice ([`super::shadow`]) and
//! checks, after each one:
//! - the result is the one its model predicts (overlap, bytes unmapped, unsupported
//!   permissions); nothing else may fail;
//! - the reference walker and the engine's enumeration over the operation's range equal its
//!   model exactly (nobody else writes translations in its slice);
//! - its gather covers every granule it unmapped, and every larger page it saw over a granule
//!   it unmapped at that page's size: another thread may have split that page and not yet
//!   invalidated it (issue 13, defect 3);
//! - a granule it marked dirty is reported by its next read-and-clear of that range, when no
//!   other thread's read-and-clear (which could have taken the report, the leaf being shared)
//!   overlapped (defect 4).
//!
//! The checker translates granules at random the whole time and asserts that each translation
//! belongs to the owner's model, before or after the owner's operation in flight (defect 1
//! made a losing splitter map 2 MiB of page-table memory). It holds a read lock around its
//! walks; a thread releasing its gather first takes the write lock, which is what the
//! completion of an invalidation guarantees for a hardware walker.
//!
//! At the end, single-threaded: the walker's whole table equals the union of the models, every
//! live page is a table the walker reaches (defect 1 orphaned the winner's table), and after
//! `destroy` every page is back.
//!
//! Being threaded, an input does not always replay the same interleaving; the corpus replay in
//! `cargo test` runs each input as a regression case all the same.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::thread::Thread;
use std::vec;
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use super::shadow::{Granule, Segments, Shadow};
use super::subjects::{
    AmdV1Subject, AmdV2Subject, ArmS1Subject, ArmS2Subject, Subject, VtdFsSubject, VtdSsSubject,
};
use super::{done, place};
use crate::mem::{Iova, PhysAddr, WalkerCoherency};
use crate::pgtable::{Error, Format, Gather, IovaRange, PageTable, Prot};
use crate::sim::walk::Fault;
use crate::sim::{Arena, ArenaConfig, PhysMem};

/// Most operations each thread runs.
const MAX_OPS_PER_THREAD: usize = 24;
/// Most granules of one operation's range the walker checks one by one.
const MAX_PROBES: u64 = 16;
/// The granule: 4 KiB, so that a window of two blocks is 1,024 granules.
const GRAN_LOG2: u32 = 12;
/// Granules in a block (one level-0 table).
const BLOCK: u64 = 1 << (GRAN_LOG2 - 3);
/// Granules in the window: two blocks.
const WINDOW: u64 = 2 * BLOCK;
/// Times a device write retries its compare-and-swap against concurrent splits.
const DEVICE_WRITE_RETRIES: usize = 16;
/// Granules the checker translates per batch (under one read lock).
const CHECK_BATCH: usize = 8;
/// Batches the checker may run per operation the workers completed, and ahead of them: it
/// checks while they run, at their pace. Free-running, it spent the CPU time the workers
/// waited for a core in, and its loop count (thus the edge counters libFuzzer sees) followed the
/// machine's load.
const CHECKS_PER_OP: u64 = 2;
const CHECKS_AHEAD: u64 = 8;
/// The workers wake a parked checker every this many operations (and when they finish).
const WAKE_EVERY: u64 = 4;

/// The body of `pgtable_concurrent`.
pub fn concurrent(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(which) = u8::arbitrary(&mut u) else {
        return;
    };
    match which % 6 {
        0 => run::<VtdSsSubject>(&mut u, VtdSsSubject::draw),
        1 => run::<VtdFsSubject>(&mut u, VtdFsSubject::draw),
        2 => run::<ArmS2Subject>(&mut u, |u| ArmS2Subject::draw_granule(u, GRAN_LOG2)),
        3 => run::<ArmS1Subject>(&mut u, |u| ArmS1Subject::draw_granule(u, GRAN_LOG2)),
        // AMD-Vi v1 (Next Level 7 runs of any size, D set by the device with HAD) and v2.
        4 => run::<AmdV1Subject>(&mut u, AmdV1Subject::draw),
        _ => run::<AmdV2Subject>(&mut u, AmdV2Subject::draw),
    }
}

/// How the window is shared, decoded before the operations.
#[derive(Arbitrary, Debug)]
struct Setup {
    /// 2 + `threads % 3` threads.
    threads: u8,
    /// Slice boundaries, as granule indices modulo the window.
    cuts: [u16; 3],
    /// Where the window lies in the input range (see [`place`]).
    iova: (u8, u64),
    /// Where output addresses start.
    pa: (u8, u64),
    non_coherent: bool,
    /// Bit `b`: map block `b` whole before the threads start.
    blocks: u8,
    /// The checker's sampling sequence.
    seed: u64,
}

/// One thread's step. Positions are taken modulo the thread's slice.
#[derive(Arbitrary, Clone, Copy, Debug)]
enum Op {
    /// Map `count` granules from `first`; `pa_shift` bit 7 shifts the output address by
    /// `pa_shift & 63` granules.
    Map {
        first: u16,
        count: u16,
        pa_shift: u8,
        prot: u8,
    },
    /// Unmap `count` granules from `first` (cutting a larger page shared with a neighbour when
    /// the range ends inside one).
    Unmap { first: u16, count: u16 },
    /// Unmap one granule: the partial unmap that splits.
    UnmapOne { at: u16 },
    /// The device writes through the leaf of granule `at`.
    DeviceWrite { at: u16 },
    /// Read and clear the dirty state of `count` granules from `first`.
    ReadClearDirty { first: u16, count: u16 },
    /// Query one granule.
    Query { at: u16 },
    /// The invalidation completed: release the gather.
    Flush,
}

fn run<S: Subject + Sync>(
    u: &mut Unstructured<'_>,
    draw: fn(&mut Unstructured<'_>) -> arbitrary::Result<Option<S>>,
) where
    S::F: Sync,
{
    let Ok(Some(subject)) = draw(u) else {
        return;
    };
    let Ok(setup) = Setup::arbitrary(u) else {
        return;
    };
    let g = *subject.format().geometry();
    if g.granule_log2 != GRAN_LOG2 {
        return;
    }
    let threads = 2 + usize::from(setup.threads % 3);
    let mut ops = vec![Vec::new(); threads];
    for i in 0..threads * MAX_OPS_PER_THREAD {
        let Ok(op) = Op::arbitrary(u) else {
            break;
        };
        ops[i % threads].push(op);
    }
    let config = ArenaConfig {
        // Table pages high in the output range, as in the single-threaded targets.
        base_pa: (1u64 << g.oas.min(62)) - (1 << 30),
        // Ample: running out is not what this target looks for.
        capacity: 8 << 20,
    };
    super::super::with_arena(config, |mem| run_on(mem, &subject, &setup, ops));
}

/// Slice boundaries: `threads` non-empty slices covering the window, in order.
fn slices(threads: usize, cuts: [u16; 3]) -> Vec<(u64, u64)> {
    let mut bounds: Vec<u64> = cuts[..threads - 1]
        .iter()
        .map(|&c| 1 + u64::from(c) % (WINDOW - 1))
        .collect();
    bounds.sort_unstable();
    bounds.dedup();
    let mut slices = Vec::new();
    let mut start = 0;
    for b in bounds.into_iter().chain([WINDOW]) {
        slices.push((start, b));
        start = b;
    }
    slices
}

fn run_on<S: Subject + Sync>(mem: &Arena, subject: &S, setup: &Setup, mut ops: Vec<Vec<Op>>)
where
    S::F: Sync,
{
    let coherency = if setup.non_coherent {
        WalkerCoherency::NonCoherent
    } else {
        WalkerCoherency::Coherent
    };
    let table = PageTable::new(subject.format(), mem, coherency).expect("new table");
    let g = *table.geometry();
    let block_log2 = 2 * GRAN_LOG2 - 3;
    let base = place(
        setup.iova.0,
        setup.iova.1,
        g.ias,
        WINDOW << GRAN_LOG2,
        block_log2,
    );
    let pa_span = (WINDOW + 64) << GRAN_LOG2;
    let pa_base = place(setup.pa.0, setup.pa.1, g.oas, pa_span, block_log2);
    let slices = slices(ops.len(), setup.cuts);
    ops.truncate(slices.len());
    let owners: Vec<Mutex<Owner>> = slices
        .iter()
        .map(|_| {
            Mutex::new(Owner {
                shadow: Shadow::new(GRAN_LOG2),
                inflight: None,
                epoch: 0,
            })
        })
        .collect();
    let rw = Prot::READ | Prot::WRITE;
    for b in 0..2 {
        if setup.blocks >> b & 1 == 0 {
            continue;
        }
        let (first, end) = (b * BLOCK, (b + 1) * BLOCK);
        let pa = pa_base + (first << GRAN_LOG2);
        let iova = Iova::new(base + (first << GRAN_LOG2));
        table
            .map(iova, PhysAddr::new(pa), BLOCK << GRAN_LOG2, rw)
            .expect("map a whole block before the threads start");
        for (owner, &(lo, hi)) in owners.iter().zip(&slices) {
            let (lo, hi) = (lo.max(first), hi.min(end));
            if lo < hi {
                let at = pa + ((lo - first) << GRAN_LOG2);
                let dirty = subject.starts_dirty(rw);
                lock(owner).shadow.insert(lo, hi - lo, at, rw, dirty);
            }
        }
    }
    let rig = Rig {
        subject,
        mem,
        table: &table,
        base,
        pa_base,
        slices,
        owners,
        walks: RwLock::new(()),
        rc_events: AtomicU64::new(0),
        rc_inflight: AtomicU64::new(0),
        finished: AtomicUsize::new(0),
        progress: AtomicU64::new(0),
        checker_thread: OnceLock::new(),
    };
    let workers = ops.len();
    // Threads kept from one input to the next (spawning them was most of this target's time),
    // started together.
    crate::fuzzing::pool::run(workers + 1, &|t| {
        if t < workers {
            rig.worker(t, &ops[t]);
        } else {
            rig.checker(setup.seed);
        }
    });
    rig.finish();
    drop(rig);
    let mut gather = Gather::new();
    table.destroy(&mut gather).expect("destroy");
    gather.release(mem, done()).expect("release after destroy");
    assert_eq!(mem.stats().live_pages, 0, "pages leaked");
    assert!(mem.bad_frees().is_empty(), "{:?}", mem.bad_frees());
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking thread must not hide the books from the one that reports.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An operation that changes translations, while it runs.
#[derive(Clone, Copy, Debug)]
enum InFlight {
    Map {
        first: u64,
        count: u64,
        pa: u64,
        prot: Prot,
    },
    Unmap {
        first: u64,
        count: u64,
    },
}

/// One thread's slice as the checker sees it.
struct Owner {
    shadow: Shadow,
    inflight: Option<InFlight>,
    /// Operations that changed the model so far.
    epoch: u64,
}

/// A translation as compared: output address, read, write.
type View = Option<(u64, bool, bool)>;

/// What the threads share.
struct Rig<'a, S: Subject> {
    subject: &'a S,
    mem: &'a Arena,
    table: &'a PageTable<S::F, &'a Arena>,
    base: u64,
    pa_base: u64,
    /// `[start, end)` granules of each thread.
    slices: Vec<(u64, u64)>,
    owners: Vec<Mutex<Owner>>,
    /// Held (read) by the checker around its walks; taken (write) before pages are freed.
    walks: RwLock<()>,
    /// Starts and ends of read-and-clear calls, all threads.
    rc_events: AtomicU64,
    /// Read-and-clear calls running.
    rc_inflight: AtomicU64,
    /// Threads done (or panicked).
    finished: AtomicUsize,
    /// Operations the workers completed, all threads.
    progress: AtomicU64,
    /// The checker, parked when it is ahead of the workers.
    checker_thread: OnceLock<Thread>,
}

/// Counts its thread as finished when dropped, panicking or not, and wakes the checker, so
/// that it stops.
struct Finished<'a>(&'a AtomicUsize, &'a OnceLock<Thread>);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        if let Some(checker) = self.1.get() {
            checker.unpark();
        }
    }
}

/// What one thread keeps for itself.
struct Worker {
    t: usize,
    gather: Gather,
    /// Its own read-and-clear starts and ends (part of `rc_events`).
    own_events: u64,
    /// Granules it marked dirty and has not seen reported: (granule, other threads'
    /// read-and-clear events before the write, whether none of theirs was running then).
    dirtied: Vec<(u64, u64, bool)>,
}

impl<S: Subject> Rig<'_, S> {
    fn iova_of(&self, index: u64) -> u64 {
        self.base + (index << GRAN_LOG2)
    }

    fn owner_of(&self, index: u64) -> &Mutex<Owner> {
        let t = self.slices.partition_point(|&(_, end)| end <= index);
        &self.owners[t]
    }

    fn view(&self, g: Granule) -> (u64, bool, bool) {
        let (read, write) = self.subject.rights(g.prot);
        (g.pa, read, write)
    }

    /// What the walker sees at granule `index`.
    fn walk(&self, index: u64) -> View {
        let root = self.table.root();
        match self.subject.translate(self.mem, root, self.iova_of(index)) {
            Ok(s) => Some((s.pa, s.read, s.write)),
            Err(Fault::Translation { .. }) => None,
            Err(f) => panic!("walker fault at granule {index}: {f:?}"),
        }
    }

    /// The size of the leaf the walker finds at granule `index`.
    fn leaf_size(&self, index: u64) -> Option<u32> {
        let root = self.table.root();
        let s = self.subject.translate(self.mem, root, self.iova_of(index));
        s.ok().map(|s| s.size_log2)
    }

    // -----------------------------------------------------------------------------------------
    // the checker

    /// (epoch, model now, what the operation in flight makes of `index`).
    fn snapshot(&self, o: &Owner, index: u64) -> (u64, View, Option<View>) {
        let now = o.shadow.get(index).map(|g| self.view(g));
        let target = match o.inflight {
            Some(InFlight::Map {
                first,
                count,
                pa,
                prot,
            }) if (first..first + count).contains(&index) => {
                let (read, write) = self.subject.rights(prot);
                Some(Some((pa + ((index - first) << GRAN_LOG2), read, write)))
            }
            Some(InFlight::Unmap { first, count }) if (first..first + count).contains(&index) => {
                Some(None)
            }
            _ => None,
        };
        (o.epoch, now, target)
    }

    fn checker(&self, seed: u64) {
        // Set before the first look at `progress`: a worker that finds it unset has counted
        // its operation first (sequentially consistent), so no wake-up is lost.
        let _ = self.checker_thread.set(std::thread::current());
        let mut x = seed | 1;
        let mut batches = 0u64;
        loop {
            let finished = self.finished.load(Ordering::SeqCst) == self.slices.len();
            let allowed = CHECKS_PER_OP * self.progress.load(Ordering::SeqCst) + CHECKS_AHEAD;
            if !finished && batches >= allowed {
                std::thread::park();
                continue;
            }
            {
                let _walking = self.walks.read().unwrap_or_else(PoisonError::into_inner);
                for _ in 0..CHECK_BATCH {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    self.check_seen(x % WINDOW);
                }
            }
            batches += 1;
            if finished {
                return;
            }
        }
    }

    /// After each operation of a worker: counts it, and wakes the checker now and then.
    fn step_done(&self) {
        let done = self.progress.fetch_add(1, Ordering::SeqCst) + 1;
        if done % WAKE_EVERY == 0 {
            if let Some(checker) = self.checker_thread.get() {
                checker.unpark();
            }
        }
    }

    /// The walker's translation of `index` is one its owner's model had, or its operation in
    /// flight makes, while the walk ran.
    fn check_seen(&self, index: u64) {
        let owner = self.owner_of(index);
        let (e0, v0, t0) = self.snapshot(&lock(owner), index);
        let seen = self.walk(index);
        let (e1, v1, t1) = self.snapshot(&lock(owner), index);
        if e1 - e0 > 1 {
            // Two or more operations completed meanwhile: no single state to compare with.
            return;
        }
        let ok = seen == v0 || seen == v1 || Some(seen) == t0 || Some(seen) == t1;
        assert!(
            ok,
            "checker: granule {index} ({:#x}) translates to {seen:x?}; its owner's model had \
             {v0:x?} then {v1:x?}, in flight {t0:x?} then {t1:x?}",
            self.iova_of(index)
        );
    }

    // -----------------------------------------------------------------------------------------
    // the threads

    fn worker(&self, t: usize, ops: &[Op]) {
        let _finished = Finished(&self.finished, &self.checker_thread);
        let mut w = Worker {
            t,
            gather: Gather::new(),
            own_events: 0,
            dirtied: Vec::new(),
        };
        for &op in ops {
            match op {
                Op::Map {
                    first,
                    count,
                    pa_shift,
                    prot,
                } => {
                    let (first, count) = self.range(t, first, count);
                    let shift = if pa_shift & 0x80 != 0 {
                        u64::from(pa_shift & 63)
                    } else {
                        0
                    };
                    let pa = self.pa_base + ((first + shift) << GRAN_LOG2);
                    self.map(t, first, count, pa, Prot::from_bits_truncate(prot));
                    self.check_own(t, first, count);
                }
                Op::Unmap { first, count } => {
                    let (first, count) = self.range(t, first, count);
                    self.unmap(&mut w, first, count);
                    self.check_own(t, first, count);
                }
                Op::UnmapOne { at } => {
                    let (first, _) = self.range(t, at, 0);
                    self.unmap(&mut w, first, 1);
                    self.check_own(t, first, 1);
                }
                Op::DeviceWrite { at } => {
                    let (at, _) = self.range(t, at, 0);
                    self.device_write(&mut w, at);
                }
                Op::ReadClearDirty { first, count } => {
                    let (first, count) = self.range(t, first, count);
                    self.read_clear_dirty(&mut w, first, count);
                    self.check_own(t, first, count);
                }
                Op::Query { at } => {
                    let (at, _) = self.range(t, at, 0);
                    self.query(t, at);
                }
                Op::Flush => self.flush(&mut w),
            }
            self.step_done();
        }
        self.flush(&mut w);
    }

    /// `(first, count)` inside slice `t` from raw fuzzer values.
    fn range(&self, t: usize, first: u16, count: u16) -> (u64, u64) {
        let (start, end) = self.slices[t];
        let first = start + u64::from(first) % (end - start);
        let count = 1 + u64::from(count) % (end - first);
        (first, count)
    }

    fn map(&self, t: usize, first: u64, count: u64, pa: u64, prot: Prot) {
        let owner = &self.owners[t];
        let overlap = {
            let mut o = lock(owner);
            o.inflight = Some(InFlight::Map {
                first,
                count,
                pa,
                prot,
            });
            o.shadow.first_mapped(first, first + count)
        };
        let (iova, len) = (self.iova_of(first), count << GRAN_LOG2);
        let r = self
            .table
            .map(Iova::new(iova), PhysAddr::new(pa), len, prot);
        let mut o = lock(owner);
        o.inflight = None;
        match r {
            Ok(()) => {
                assert!(self.subject.prot_ok(prot), "map accepted {prot:?}");
                assert_eq!(overlap, None, "map over a mapped granule succeeded");
                let dirty = self.subject.starts_dirty(prot);
                o.shadow.insert(first, count, pa, prot, dirty);
                o.epoch += 1;
            }
            Err(Error::UnsupportedProt { prot: p }) => {
                assert_eq!(p, prot);
                assert!(!self.subject.prot_ok(prot), "map refused {prot:?}");
            }
            Err(Error::Overlap { iova: at }) => {
                assert!(self.subject.prot_ok(prot));
                let first_mapped = overlap.expect("overlap reported on an empty range");
                assert_eq!(at.get(), self.iova_of(first_mapped), "overlap address");
            }
            Err(e) => panic!("thread {t}: map {iova:#x}+{len:#x} -> {pa:#x} {prot:?}: {e:?}"),
        }
    }

    fn unmap(&self, w: &mut Worker, first: u64, count: u64) {
        let t = w.t;
        let end = first + count;
        // Larger pages over the ends of the range now: if another thread splits one before this
        // unmap clears a granule under it, its invalidation may still be pending when this
        // unmap returns, so this gather must cover the larger page too.
        let large: Vec<(u64, u32)> = [first, end - 1]
            .into_iter()
            .filter_map(|i| self.leaf_size(i).map(|s| (i, s)))
            .filter(|&(_, s)| s > GRAN_LOG2)
            .collect();
        let owner = &self.owners[t];
        let mapped: u64 = {
            let mut o = lock(owner);
            o.inflight = Some(InFlight::Unmap { first, count });
            let s = o.shadow.segments(first, end);
            s.granules()
        };
        let (iova, len) = (self.iova_of(first), count << GRAN_LOG2);
        let r = self.table.unmap(Iova::new(iova), len, &mut w.gather);
        let removed = {
            let mut o = lock(owner);
            o.inflight = None;
            match r {
                Ok(bytes) => {
                    assert_eq!(bytes, mapped << GRAN_LOG2, "thread {t}: bytes unmapped");
                    o.epoch += 1;
                    o.shadow.remove(first, end)
                }
                // A larger page or contiguous run over an end of the range that the format
                // cannot replace without a break (Arm without FEAT_BBM level 2): nothing
                // changed, which `check_own` verifies.
                Err(Error::SplitUnsupported { iova: at })
                    if at.get() == iova || at.get() == iova + len =>
                {
                    return;
                }
                Err(e) => panic!("thread {t}: unmap {iova:#x}+{len:#x}: {e:?}"),
            }
        };
        w.dirtied.retain(|&(g, _, _)| !(first..end).contains(&g));
        let ranges = w.gather.ranges();
        for (s, n) in removed {
            let (lo, hi) = (self.iova_of(s), self.iova_of(s + n));
            assert!(
                covered(ranges, lo, hi),
                "thread {t}: unmapped {lo:#x}..{hi:#x}, not in the gather {ranges:x?}"
            );
        }
        for (i, size) in large {
            if !(first..end).contains(&i) {
                continue;
            }
            let lo = self.iova_of(i) & !((1u64 << size) - 1);
            let sized = w.gather.page_sizes() >> size & 1 == 1 || !w.gather.leaf_only();
            assert!(
                covered(ranges, lo, lo + (1 << size)) && sized,
                "thread {t}: unmapped granule {i} under a 2^{size} page at {lo:#x}, but the \
                 gather {ranges:x?} (page sizes {:#x}, leaf only {}) does not invalidate it",
                w.gather.page_sizes(),
                w.gather.leaf_only()
            );
        }
    }

    /// The entry of the leaf mapping granule `index` and the value the walk read there, found
    /// as the hardware walks: the value is the one read once, since a split may replace the
    /// leaf with a table entry right after.
    fn leaf_entry(&self, index: u64) -> Option<(u64, u64)> {
        let f = self.table.format();
        let g = *f.geometry();
        let iova = self.iova_of(index);
        let mut table = self.table.root().get();
        for level in (0..g.levels).rev() {
            let entry = table + 8 * g.index(level, iova) as u64;
            let raw = self.mem.read_u64(entry)?;
            if !f.is_present(raw) {
                return None;
            }
            if level > 0 && f.is_table(level, raw) {
                table = f.table_address(raw).get();
                continue;
            }
            return Some((entry, raw));
        }
        None
    }

    fn device_write(&self, w: &mut Worker, at: u64) {
        let Some(g) = lock(&self.owners[w.t]).shadow.get(at) else {
            return;
        };
        if !g.prot.contains(Prot::WRITE) || !self.subject.dirty_tracking() {
            return;
        }
        // Other threads' read-and-clear calls before the write (events first, then the count
        // running: see `read_clear_dirty`).
        let others = self.rc_events.load(Ordering::SeqCst) - w.own_events;
        let quiet = self.rc_inflight.load(Ordering::SeqCst) == 0;
        for _ in 0..DEVICE_WRITE_RETRIES {
            let (entry, raw) = self.leaf_entry(at).expect("mapped granule has a leaf");
            let written = self
                .subject
                .device_write(raw)
                .unwrap_or_else(|| panic!("writable leaf {raw:#x} refuses a device write"));
            // A split may replace the leaf meanwhile: then walk again, as hardware would.
            if let Some(Ok(_)) = self.mem.compare_exchange_u64(entry, raw, written) {
                w.dirtied.push((at, others, quiet));
                return;
            }
        }
    }

    fn read_clear_dirty(&self, w: &mut Worker, first: u64, count: u64) {
        let t = w.t;
        let end = first + count;
        // Running first, then the event: a writer that reads the events and then sees nothing
        // running knows any call it missed starts after its read.
        self.rc_inflight.fetch_add(1, Ordering::SeqCst);
        self.rc_events.fetch_add(1, Ordering::SeqCst);
        w.own_events += 1;
        let (iova, len) = (self.iova_of(first), count << GRAN_LOG2);
        let mut reported = Vec::new();
        let r = self.table.read_and_clear_dirty(
            Iova::new(iova),
            len,
            |at, size_log2| reported.push((at.get(), size_log2)),
            &mut w.gather,
        );
        let others = self.rc_events.load(Ordering::SeqCst) - w.own_events;
        if self.subject.dirty_tracking() {
            r.unwrap_or_else(|e| panic!("thread {t}: read_and_clear_dirty: {e:?}"));
        } else {
            assert_eq!(r, Err(Error::NoDirtyTracking));
        }
        let page_sizes = self.table.geometry().page_sizes;
        for &(at, size) in &reported {
            assert!(
                page_sizes >> size & 1 == 1 && at & ((1u64 << size) - 1) == 0,
                "thread {t}: reported leaf {at:#x} of 2^{size}"
            );
            assert!(
                at < iova + len && iova < at + (1 << size),
                "thread {t}: reported leaf {at:#x} of 2^{size} outside {iova:#x}+{len:#x}"
            );
        }
        let o = lock(&self.owners[t]);
        let reports = |g: u64| {
            let a = self.iova_of(g);
            reported
                .iter()
                .any(|&(at, size)| at <= a && a < at + (1 << size))
        };
        for g in first..end {
            if reports(g) {
                assert!(
                    o.shadow.get(g).is_some(),
                    "thread {t}: granule {g} reported dirty but not mapped"
                );
            }
        }
        drop(o);
        w.dirtied.retain(|&(g, before, quiet)| {
            let asked = (first..end).contains(&g);
            if asked && quiet && before == others {
                assert!(
                    reports(g),
                    "thread {t}: granule {g} was written and no other thread read its dirty \
                     state since, but read_and_clear_dirty did not report it (reported \
                     {reported:x?})"
                );
            }
            // A granule outside the range stays dirty even if its leaf was reported: a leaf
            // straddling an edge of the range is not cleaned.
            !asked
        });
        self.rc_events.fetch_add(1, Ordering::SeqCst);
        w.own_events += 1;
        self.rc_inflight.fetch_sub(1, Ordering::SeqCst);
    }

    fn query(&self, t: usize, at: u64) {
        let q = self.table.query(Iova::new(self.iova_of(at)));
        let g = lock(&self.owners[t]).shadow.get(at);
        let rw = Prot::READ | Prot::WRITE;
        match (q, g) {
            (None, None) => {}
            (Some(m), Some(g)) => {
                assert_eq!(m.pa.get(), g.pa, "thread {t}: query pa of granule {at}");
                assert_eq!(m.prot & rw, g.prot & rw, "thread {t}: query prot");
            }
            (q, g) => panic!("thread {t}: query granule {at}: engine {q:?}, model {g:?}"),
        }
    }

    fn flush(&self, w: &mut Worker) {
        // The invalidation's completion: no walk that started before it is still running.
        drop(self.walks.write().unwrap_or_else(PoisonError::into_inner));
        w.gather.release(self.mem, done()).expect("release");
    }

    /// After one of thread `t`'s operations: the walker and the engine's enumeration over its
    /// range equal the thread's model exactly (nobody else maps or unmaps there).
    fn check_own(&self, t: usize, first: u64, count: u64) {
        let end = first + count;
        let o = lock(&self.owners[t]);
        let stride = (count / MAX_PROBES).max(1);
        for i in (first..end).step_by(stride as usize).chain([end - 1]) {
            let want = o.shadow.get(i).map(|g| self.view(g));
            assert_eq!(self.walk(i), want, "thread {t}: walker at granule {i}");
        }
        let mut engine = Segments::new(GRAN_LOG2);
        let (iova, len) = (self.iova_of(first), count << GRAN_LOG2);
        self.table
            .for_each_mapping(Iova::new(iova), len, |l| {
                let start = (l.iova.get() - self.base) >> GRAN_LOG2;
                let n = 1u64 << (l.size_log2 - GRAN_LOG2);
                let (lo, hi) = (start.max(first), (start + n).min(end));
                engine.push(lo, hi - lo, l.pa.get() + ((lo - start) << GRAN_LOG2));
            })
            .expect("for_each_mapping");
        assert_eq!(
            engine,
            o.shadow.segments(first, end),
            "thread {t}: engine enumeration (left) vs model (right) over {first}..{end}"
        );
    }

    /// Once the threads are done: the walker's whole table is the union of the models, and
    /// every live page is a table it reaches.
    fn finish(&self) {
        let root = self.table.root();
        let mut walked = Segments::new(GRAN_LOG2);
        for (iova, s) in self.subject.walk_all(self.mem, root) {
            assert!(iova >= self.base, "leaf below the window at {iova:#x}");
            let start = (iova - self.base) >> GRAN_LOG2;
            walked.push(start, 1u64 << (s.size_log2 - GRAN_LOG2), s.pa);
        }
        let mut want = Segments::new(GRAN_LOG2);
        for (owner, &(lo, hi)) in self.owners.iter().zip(&self.slices) {
            want.append(&lock(owner).shadow.segments(lo, hi));
        }
        assert_eq!(walked, want, "walker (left) vs the threads' models (right)");
        assert_eq!(
            self.mem.stats().live_pages,
            self.subject.table_pages(self.mem, root),
            "live pages that no table links (orphaned or leaked tables)"
        );
        assert!(
            self.mem.bad_frees().is_empty(),
            "{:?}",
            self.mem.bad_frees()
        );
    }
}

/// Whether `[lo, hi)` lies in the union of `ranges`.
fn covered(ranges: &[IovaRange], lo: u64, hi: u64) -> bool {
    let mut at = lo;
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable_by_key(|r| r.start);
    for r in &sorted {
        if r.start.get() <= at {
            at = at.max(r.end.get());
        }
    }
    at >= hi
}
