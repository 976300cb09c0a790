//! Threaded stress of the concurrency contract (issue 13, "What must be true" 3).
//!
//! `THREADS` owners map, unmap and clean dirty state at random in disjoint slices of one shared
//! range, each against its own shadow, while a checker thread translates addresses of the whole
//! range through the independent reference walker of `sim::walk`, as a device would.
//!
//! The slices are not 2 MiB aligned and the range starts as one 1 GiB leaf owned by everyone, so
//! owners share upper tables and split the same larger pages at the slice boundaries; each round
//! ends with a leader unmapping the range whole and mapping the 1 GiB leaf again.
//!
//! What the checker asserts for every translation it sees:
//! - always: the output is one an owner could have asked for (input plus one of [`OFFSETS`]),
//!   never table memory, and a walk never fails other than with "not present";
//! - when no operation of the owner of the address (and no leader phase) began or ended during
//!   its walk: exactly the owner's shadow; when one operation was in flight all along: the shadow
//!   or that operation's new value (its range only).
//!
//! Budget: a count of operations per owner, not a time; deterministic seeds (the interleaving is
//! the scheduler's). Under Miri a handful of operations.

extern crate std;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::vec::Vec;

use super::arm_s2::ArmS2;
use super::testutil::{ARM_S2_4K, G1, K4, M2, VTD_SS_48};
use super::vtd_ss::{VtdSs, VtdSsConfig};
use super::*;
use crate::mem::{Iova, PhysAddr, WalkerCoherency};
use crate::sim::arena::{Arena, ArenaConfig};
use crate::sim::walk::{self, Access, Fault};

const THREADS: usize = 3;
/// Not a multiple of 2 MiB: blocks straddle the boundaries between owners.
const SLICE: u64 = 3 * M2 + 5 * K4;
const PAGES: usize = (SLICE / K4) as usize;
const BASE: u64 = G1;
/// The shared 1 GiB leaf's output.
const PA_BASE: u64 = 8 * G1;
/// Output minus input of every mapping anyone makes: the initial leaf's, one that allows 2 MiB
/// and 1 GiB leaves, one that allows only 4 KiB leaves.
const OFFSETS: [u64; 3] = [PA_BASE - BASE, 16 * G1, 16 * G1 + K4];
const ROUNDS: usize = if cfg!(miri) { 1 } else { 4 };
const OPS_PER_ROUND: usize = if cfg!(miri) { 6 } else { 400 };
/// Pages one operation names at most (Miri interprets every entry it writes).
const MAX_PAGES_PER_OP: usize = if cfg!(miri) { 12 } else { 512 };
/// Walks the checker makes under Miri (elsewhere it runs until the owners are done).
const MIRI_WALKS: usize = 30;
const ARENA_BASE: u64 = 0x4000_0000;
const ARENA_SIZE: usize = if cfg!(miri) { 4 << 20 } else { 32 << 20 };

/// Shadow value of a page: 0 if unmapped, else `1 + offset index` with the prot bits above.
fn shadow_value(offset: usize, prot: Prot) -> u64 {
    (1 + offset as u64) | (u64::from(prot.bits()) << 8)
}

fn expected_pa(iova: u64, value: u64) -> Option<(u64, bool)> {
    let offset = OFFSETS[(value & 0xff).checked_sub(1)? as usize];
    let prot = Prot::from_bits_truncate((value >> 8) as u8);
    Some((iova + offset, prot.contains(Prot::WRITE)))
}

/// What one owner publishes for the checker.
struct Owner {
    /// Odd while an operation is in flight.
    seq: AtomicU64,
    /// The operation in flight: first and last page index (inclusive), and the shadow value the
    /// pages will hold after it.
    op: [AtomicU64; 3],
    shadow: Vec<AtomicU64>,
}

impl Owner {
    fn new() -> Self {
        Self {
            seq: AtomicU64::new(0),
            op: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            shadow: (0..PAGES).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn begin(&self, first: usize, last: usize, value: u64) {
        self.op[0].store(first as u64, Relaxed);
        self.op[1].store(last as u64, Relaxed);
        self.op[2].store(value, Relaxed);
        // Release: the checker that sees the odd count sees the op.
        self.seq.fetch_add(1, Release);
    }

    fn end(&self, first: usize, last: usize, value: u64) {
        for page in &self.shadow[first..=last] {
            page.store(value, Relaxed);
        }
        self.seq.fetch_add(1, Release);
    }
}

/// A table under test and how the reference walker reads it.
trait Subject<'a>: Sync {
    type F: Format + Sync;
    fn table(&self) -> &PageTable<Self::F, &'a Arena>;
    /// `Ok(Some((pa, writable)))`, `Ok(None)` for not present, `Err` for any other fault.
    fn translate(&self, iova: u64) -> Result<Option<(u64, bool)>, Fault>;
    /// Sets the dirty state of the leaf in `slot` as the walker would, if it still holds `raw`.
    fn mark_dirty(&self, slot: &AtomicU64, raw: u64) -> bool;
}

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: ARENA_BASE,
        capacity: ARENA_SIZE,
    })
    .unwrap()
}

fn walked<A>(r: Result<walk::Translation<A>, Fault>) -> Result<Option<(u64, bool)>, Fault> {
    match r {
        Ok(t) => Ok(Some((t.pa.get(), t.write))),
        Err(Fault::Translation { .. }) => Ok(None),
        Err(f) => Err(f),
    }
}

struct VtdSubject<'a> {
    table: PageTable<VtdSs, &'a Arena>,
    arena: &'a Arena,
    walker: walk::vtd_ss::VtdSsConfig,
}

impl<'a> Subject<'a> for VtdSubject<'a> {
    type F = VtdSs;
    fn table(&self) -> &PageTable<VtdSs, &'a Arena> {
        &self.table
    }
    fn translate(&self, iova: u64) -> Result<Option<(u64, bool)>, Fault> {
        walked(walk::vtd_ss::translate(
            self.arena,
            &self.walker,
            Iova::new(iova),
            Access::READ,
        ))
    }
    fn mark_dirty(&self, slot: &AtomicU64, raw: u64) -> bool {
        // D is bit 9 of a second-stage leaf (VT-d 4.1 §9.8); the unit sets it atomically.
        slot.compare_exchange(raw, raw | 1 << 9, AcqRel, Acquire)
            .is_ok()
    }
}

struct ArmSubject<'a> {
    table: PageTable<ArmS2, &'a Arena>,
    arena: &'a Arena,
    walker: walk::arm_s2::ArmS2Config,
}

impl<'a> Subject<'a> for ArmSubject<'a> {
    type F = ArmS2;
    fn table(&self) -> &PageTable<ArmS2, &'a Arena> {
        &self.table
    }
    fn translate(&self, iova: u64) -> Result<Option<(u64, bool)>, Fault> {
        walked(walk::arm_s2::translate(
            self.arena,
            &self.walker,
            Iova::new(iova),
            Access::READ,
        ))
    }
    fn mark_dirty(&self, _: &AtomicU64, _: u64) -> bool {
        false
    }
}

/// Sets the flag if the thread that owns it panics, so that the others stop instead of waiting
/// for it forever.
struct PanicFlag<'a>(&'a AtomicBool);

impl Drop for PanicFlag<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Release);
        }
    }
}

/// A barrier that gives up (panics) when another thread failed.
struct Barrier {
    count: AtomicUsize,
    generation: AtomicUsize,
    n: usize,
}

impl Barrier {
    fn new(n: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            n,
        }
    }

    /// Waits for all `n` threads; true for exactly one of them.
    fn wait(&self, failed: &AtomicBool) -> bool {
        let generation = self.generation.load(Acquire);
        if self.count.fetch_add(1, AcqRel) + 1 == self.n {
            self.count.store(0, Relaxed);
            self.generation.fetch_add(1, Release);
            return true;
        }
        while self.generation.load(Acquire) == generation {
            assert!(!failed.load(Acquire), "another thread failed");
            std::thread::yield_now();
        }
        false
    }
}

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn slice_base(owner: usize) -> u64 {
    BASE + owner as u64 * SLICE
}

/// One owner's random operations for one round.
fn owner_round<'a, S: Subject<'a>>(
    s: &S,
    me: &Owner,
    index: usize,
    rng: &mut Rng,
    gathers: &mut Vec<Gather>,
) {
    let t = s.table();
    let base = slice_base(index);
    let page_iova = |p: usize| base + p as u64 * K4;
    for _ in 0..OPS_PER_ROUND {
        let first = rng.below(PAGES as u64) as usize;
        let len = match rng.below(8) {
            0 => 512,
            1..=3 => 1 + rng.below(8) as usize,
            _ => 1 + rng.below(160) as usize,
        }
        .min(MAX_PAGES_PER_OP);
        let last = (first + len - 1).min(PAGES - 1);
        match rng.below(8) {
            // Unmap: splits the blocks and runs the range cuts.
            0..=3 => {
                let mapped: Vec<usize> = (first..=last)
                    .filter(|&p| me.shadow[p].load(Relaxed) != 0)
                    .collect();
                let mut g = Gather::new();
                me.begin(first, last, 0);
                let n = (last + 1 - first) as u64;
                let r = t.unmap(Iova::new(page_iova(first)), n * K4, &mut g);
                let want = Ok(mapped.len() as u64 * K4);
                assert_eq!(r, want, "owner {index}: unmap of pages {first}..={last}");
                me.end(first, last, 0);
                for &p in &mapped {
                    let iova = page_iova(p);
                    let covered = g
                        .ranges()
                        .iter()
                        .any(|r| r.start.get() <= iova && iova < r.end.get());
                    assert!(covered, "owner {index}: page {p} not in the gather");
                }
                gathers.push(g);
            }
            // Map the hole starting at `first` (if it is one), largest pages allowed.
            4..=6 => {
                let hole = (first..=last)
                    .take_while(|&p| me.shadow[p].load(Relaxed) == 0)
                    .count();
                if hole == 0 {
                    continue;
                }
                let offset = 1 + rng.below(2) as usize;
                let prot = if rng.below(4) == 0 {
                    Prot::READ
                } else {
                    Prot::READ | Prot::WRITE
                };
                let value = shadow_value(offset, prot);
                let last = first + hole - 1;
                me.begin(first, last, value);
                let iova = page_iova(first);
                let pa = PhysAddr::new(iova + OFFSETS[offset]);
                let r = t.map(Iova::new(iova), pa, hole as u64 * K4, prot);
                assert_eq!(r, Ok(()), "owner {index}: map of pages {first}..={last}");
                me.end(first, last, value);
            }
            // Dirty: mark pages whose leaf is ours alone, then read and clean them.
            _ => dirty_round(s, index, first, last, gathers),
        }
    }
}

fn dirty_round<'a, S: Subject<'a>>(
    s: &S,
    index: usize,
    first: usize,
    last: usize,
    gathers: &mut Vec<Gather>,
) {
    let t = s.table();
    if !t.format().dirty_tracking() {
        return;
    }
    let (lo, hi) = (slice_base(index), slice_base(index) + SLICE);
    let (start, len) = (lo + first as u64 * K4, (last + 1 - first) as u64 * K4);
    let mut marked = Vec::new();
    let top = t.geometry().top_level();
    t.visit(t.root_table(), top, start, len, &mut |slot, leaf, raw| {
        let end = leaf.iova.get() + (1u64 << leaf.size_log2);
        if lo <= leaf.iova.get() && end <= hi && s.mark_dirty(slot, raw) {
            marked.push(leaf.iova.get().max(start));
        }
        Ok(())
    })
    .unwrap();
    let mut reported = Vec::new();
    let mut g = Gather::new();
    let sink = |iova: Iova, size_log2: u32| reported.push((iova.get(), size_log2));
    t.read_and_clear_dirty(Iova::new(start), len, sink, &mut g)
        .unwrap();
    for iova in marked {
        let found = reported
            .iter()
            .any(|&(r, size_log2)| r <= iova && iova < r + (1u64 << size_log2));
        assert!(found, "owner {index}: dirty page {iova:#x} not reported");
    }
    gathers.push(g);
}

/// What the checker found: walks whose owner was idle throughout, in flight throughout.
#[derive(Default, Debug)]
struct Checked {
    walks: usize,
    exact: usize,
    in_flight: usize,
}

fn check_one<'a, S: Subject<'a>>(
    s: &S,
    owners: &[Owner],
    leader: &AtomicU64,
    iova: u64,
    c: &mut Checked,
) {
    let owner = ((iova - BASE) / SLICE) as usize;
    let owned = owner < THREADS;
    let page = ((iova - BASE) % SLICE / K4) as usize;
    let (g1, s1) = (
        leader.load(Acquire),
        owned.then(|| owners[owner].seq.load(Acquire)),
    );
    let (op_first, op_last, op_value) = match owned {
        true => (
            owners[owner].op[0].load(Relaxed) as usize,
            owners[owner].op[1].load(Relaxed) as usize,
            owners[owner].op[2].load(Relaxed),
        ),
        false => (0, 0, 0),
    };
    let before = owned.then(|| owners[owner].shadow[page].load(Relaxed));
    let seen = s.translate(iova);
    let after = owned.then(|| owners[owner].shadow[page].load(Relaxed));
    let (g2, s2) = (
        leader.load(Acquire),
        owned.then(|| owners[owner].seq.load(Acquire)),
    );
    c.walks += 1;
    let seen = match seen {
        Ok(seen) => seen,
        Err(f) => panic!("walk of {iova:#x} faulted: {f:?}"),
    };
    if let Some((pa, _)) = seen {
        assert!(
            !(ARENA_BASE..ARENA_BASE + ARENA_SIZE as u64).contains(&pa),
            "{iova:#x} -> table memory {pa:#x}"
        );
        assert!(
            OFFSETS.contains(&(pa - iova)),
            "{iova:#x} -> {pa:#x}: nobody asked for it"
        );
    }
    if g1 != g2 || g1 & 1 != 0 || s1 != s2 {
        return;
    }
    // Unowned addresses keep the leaf every round starts with.
    let want = |v: Option<u64>| match v {
        Some(v) => expected_pa(iova, v),
        None => Some((iova + OFFSETS[0], true)),
    };
    let idle = s1.is_none_or(|s| s & 1 == 0);
    if idle {
        assert_eq!(seen, want(before), "{iova:#x}: owner {owner} idle");
        c.exact += 1;
    } else {
        let in_op = (op_first..=op_last).contains(&page);
        let ok = seen == want(before)
            || seen == want(after)
            || in_op && seen == expected_pa(iova, op_value);
        assert!(ok, "{iova:#x}: {seen:?}, owner {owner} had {before:?}/{after:?} during an op on {op_first}..={op_last}");
        c.in_flight += 1;
    }
}

fn stress<'a, S: Subject<'a>>(s: &S, seed: u64) {
    let t = s.table();
    let owners: Vec<Owner> = (0..THREADS).map(|_| Owner::new()).collect();
    let leader = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let failed = AtomicBool::new(false);
    let rounds_done = AtomicUsize::new(0);
    let barrier = Barrier::new(THREADS);
    let whole = (THREADS as u64 * SLICE).next_multiple_of(M2) + 4 * M2;
    let mut all_gathers: Vec<Gather> = Vec::new();
    let value0 = shadow_value(0, Prot::READ | Prot::WRITE);
    // The round's start: the whole 1 GiB as one leaf, every owner's pages mapped through it.
    let start_round = |gathers: &mut Vec<Gather>| {
        leader.fetch_add(1, Release);
        let mut g = Gather::new();
        t.unmap(Iova::new(BASE), G1, &mut g).unwrap();
        t.map(
            Iova::new(BASE),
            PhysAddr::new(PA_BASE),
            G1,
            Prot::READ | Prot::WRITE,
        )
        .unwrap();
        for o in &owners {
            for p in &o.shadow {
                p.store(value0, Relaxed);
            }
        }
        leader.fetch_add(1, Release);
        gathers.push(g);
    };
    start_round(&mut all_gathers);
    let checked = std::thread::scope(|sc| {
        let checker = sc.spawn(|| {
            let _flag = PanicFlag(&failed);
            let mut c = Checked::default();
            let mut rng = Rng(seed ^ 0x5eed);
            while !done.load(Acquire) && !failed.load(Acquire) {
                let iova = BASE + rng.below(whole / K4) * K4 + rng.below(K4);
                check_one(s, &owners, &leader, iova, &mut c);
                if cfg!(miri) && c.walks >= MIRI_WALKS {
                    break;
                }
            }
            c
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (owners, barrier, rounds_done) = (&owners, &barrier, &rounds_done);
                let (start_round, failed) = (&start_round, &failed);
                sc.spawn(move || {
                    let _flag = PanicFlag(failed);
                    let mut rng = Rng(seed.wrapping_mul(i as u64 + 1) | 1);
                    let mut gathers = Vec::new();
                    for round in 0..ROUNDS {
                        owner_round(s, &owners[i], i, &mut rng, &mut gathers);
                        if barrier.wait(failed) {
                            rounds_done.fetch_add(1, Relaxed);
                            if round + 1 < ROUNDS {
                                start_round(&mut gathers);
                            }
                        }
                        barrier.wait(failed);
                    }
                    gathers
                })
            })
            .collect();
        let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
        done.store(true, Release);
        let checked = checker.join();
        // Report the first failure, not the others giving up after it.
        let mut first = None;
        for r in results {
            match r {
                Ok(g) => all_gathers.extend(g),
                Err(e) => first = first.or(Some(e)),
            }
        }
        match (checked, first) {
            (Err(e), _) | (Ok(_), Some(e)) => std::panic::resume_unwind(e),
            (Ok(c), None) => c,
        }
    });
    assert_eq!(rounds_done.load(Relaxed), ROUNDS);
    // Final state: every owner's pages exactly as its shadow says, through the engine.
    for (i, o) in owners.iter().enumerate() {
        for (p, v) in o.shadow.iter().enumerate() {
            let iova = slice_base(i) + p as u64 * K4;
            let q = t
                .query(Iova::new(iova))
                .map(|m| (m.pa.get(), m.prot.contains(Prot::WRITE)));
            assert_eq!(q, expected_pa(iova, v.load(Relaxed)), "owner {i} page {p}");
        }
    }
    std::eprintln!("stress: {checked:?}");
    assert!(checked.walks > 0);
    // Nothing leaked or freed twice: with everything unmapped and every gather released, only
    // the tables above the 1 GiB entry are left.
    let mut g = Gather::new();
    t.unmap(Iova::new(BASE), G1, &mut g).unwrap();
    all_gathers.push(g);
    let alloc = *t.allocator();
    for mut g in all_gathers {
        // SAFETY: no hardware walks the test table; the checker has stopped.
        g.release(alloc, unsafe { InvalidationComplete::assume() })
            .unwrap();
    }
    assert_eq!(alloc.stats().bad_frees, 0);
    assert_eq!(alloc.stats().live_pages, t.geometry().levels as usize - 2);
}

#[test]
fn stress_vtd_ss_with_dirty_tracking() {
    let arena = &arena();
    let cfg = VtdSsConfig {
        snoop: true,
        dirty_tracking: true,
        ..VTD_SS_48
    };
    let table = PageTable::new(VtdSs::new(cfg).unwrap(), arena, WalkerCoherency::Coherent).unwrap();
    let walker = walk::vtd_ss::VtdSsConfig {
        root: table.root(),
        levels: 4,
        haw: 46,
        large_2m: true,
        large_1g: true,
        snoop_control: true,
    };
    stress(
        &VtdSubject {
            table,
            arena,
            walker,
        },
        0x1357_9bdf,
    );
}

#[test]
fn stress_arm_s2_4k_with_contiguous_hint() {
    let arena = &arena();
    let f = ArmS2::new(ARM_S2_4K).unwrap();
    assert!(f.contiguous_log2(0) > 0);
    let table = PageTable::new(f, arena, WalkerCoherency::Coherent).unwrap();
    let walker = walk::arm_s2::ArmS2Config {
        ttb: table.root(),
        granule: walk::arm::Granule::K4,
        t0sz: f.t0sz() as u8,
        sl0: f.sl0() as u8,
        oas: 40,
        fwb: false,
        xnx: false,
        hardware_access_flag: false,
        hardware_dirty: false,
        strict_res0: true,
    };
    stress(
        &ArmSubject {
            table,
            arena,
            walker,
        },
        0x2468_ace0,
    );
}
