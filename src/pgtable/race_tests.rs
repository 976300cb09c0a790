//! Threaded tests of the engine's concurrency contract (src/lib.rs, "Locking"): operations on
//! disjoint ranges of one table, racing where they share tables and larger pages.
//!
//! Each race is repeated enough times to happen on a loaded 2-core machine; the counts are
//! small under Miri, whose scheduler and weak-memory emulation explore interleavings instead.

extern crate std;

use std::sync::Barrier;
use std::vec::Vec;

use super::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use super::testutil::{test_alloc, TestAlloc};
use super::vtd_ss::{VtdSs, VtdSsConfig};
use super::*;
use crate::mem::{Iova, PhysAddr, WalkerCoherency};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// Repetitions of a race: enough to lose it reliably on the old code outside Miri.
const ROUNDS: usize = if cfg!(miri) { 3 } else { 400 };

fn vtd_ss(dirty: bool) -> PageTable<VtdSs, TestAlloc> {
    let cfg = VtdSsConfig {
        agaw: 48,
        haw: 46,
        page_2m: true,
        page_1g: true,
        snoop: false,
        dirty_tracking: dirty,
    };
    PageTable::new(
        VtdSs::new(cfg).unwrap(),
        test_alloc(),
        WalkerCoherency::Coherent,
    )
    .unwrap()
}

fn done() -> InvalidationComplete {
    // SAFETY: no hardware walks the test tables.
    unsafe { InvalidationComplete::assume() }
}

/// Physical addresses of the test arena (`testutil`): a leaf pointing there maps page tables.
fn in_arena(pa: PhysAddr) -> bool {
    (0x4000_0000..0x4000_0000 + (16 << 20)).contains(&pa.get())
}

/// Every leaf in `[iova, iova + len)`: (IOVA, PA, log2 size).
fn leaves<F: Format>(t: &PageTable<F, TestAlloc>, iova: u64, len: u64) -> Vec<(u64, u64, u32)> {
    let mut v = Vec::new();
    t.for_each_mapping(Iova::new(iova), len, |l| {
        v.push((l.iova.get(), l.pa.get(), l.size_log2))
    })
    .unwrap();
    v
}

/// Threads unmapping disjoint 4 KiB pages of one 2 MiB leaf all split it: exactly one split
/// wins, the others descend into the table it installed. Issue 13, item 1: the losers used to
/// split the winner's *table entry* as if it were a leaf, installing 512 read/write leaves over
/// the 2 MiB of memory that holds page tables and orphaning the winner's table.
#[test]
fn unmaps_inside_one_superpage_split_it_once() {
    const THREADS: u64 = 4;
    let t = vtd_ss(false);
    let (base, pa) = (G1, 4 * G1);
    // Root, level-2 and level-1 tables stay; each round adds and removes one leaf table.
    t.map(Iova::new(base), PhysAddr::new(pa), M2, RW).unwrap();
    let mut g = Gather::new();
    t.unmap(Iova::new(base), M2, &mut g).unwrap();
    g.release(t.allocator(), done()).unwrap();
    let live = t.allocator().stats().live_pages;
    let page = |i: u64| base + (i * 97 + 5) * K4;
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), M2, RW).unwrap();
        let start = Barrier::new(THREADS as usize);
        let gathers: Vec<Gather> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (t, start) = (&t, &start);
                    s.spawn(move || {
                        let mut g = Gather::new();
                        start.wait();
                        assert_eq!(t.unmap(Iova::new(page(i)), K4, &mut g), Ok(K4));
                        g
                    })
                })
                .collect();
            spawned.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let found = leaves(&t, base, M2);
        for &(iova, leaf_pa, size_log2) in &found {
            assert!(
                !in_arena(PhysAddr::new(leaf_pa)),
                "round {round}: leaf over table memory"
            );
            assert_eq!(
                (leaf_pa - pa, size_log2),
                (iova - base, 12),
                "round {round}"
            );
        }
        assert_eq!(found.len() as u64, 512 - THREADS, "round {round}");
        for i in 0..THREADS {
            assert_eq!(t.query(Iova::new(page(i))), None, "round {round}");
        }
        let mut g = Gather::new();
        t.unmap(Iova::new(base), M2, &mut g).unwrap();
        for mut g in gathers {
            g.release(t.allocator(), done()).unwrap();
        }
        g.release(t.allocator(), done()).unwrap();
        assert_eq!(
            t.allocator().stats().live_pages,
            live,
            "round {round}: a table leaked"
        );
    }
}

fn arm_s2_4k(dirty: bool) -> PageTable<ArmS2, TestAlloc> {
    let cfg = ArmS2Config {
        granule_log2: 12,
        ias: 40,
        oas: 40,
        blocks: true,
        attributes: S2Attributes::WriteBack,
        dirty_tracking: dirty,
        bbml2: true,
    };
    PageTable::new(
        ArmS2::new(cfg).unwrap(),
        test_alloc(),
        WalkerCoherency::Coherent,
    )
    .unwrap()
}

/// The same race one level up through a contiguous run (Arm stage 2, 4 KiB granule: 16 blocks
/// of 2 MiB carry the hint): two threads per block break the run's hint and split their block.
#[test]
fn unmaps_inside_one_contiguous_run_split_each_block_once() {
    const THREADS: u64 = 4;
    const RUN: u64 = 16 * M2;
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    t.map(Iova::new(base), PhysAddr::new(pa), RUN, RW).unwrap();
    let mut g = Gather::new();
    t.unmap(Iova::new(base), RUN, &mut g).unwrap();
    g.release(t.allocator(), done()).unwrap();
    let live = t.allocator().stats().live_pages;
    // Threads 0 and 1 cut block 3, threads 2 and 3 block 4.
    let page = |i: u64| base + (3 + i / 2) * M2 + ((i % 2) * 300 + 7) * K4;
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), RUN, RW).unwrap();
        assert_eq!(leaves(&t, base, RUN).len(), 16);
        let start = Barrier::new(THREADS as usize);
        let gathers: Vec<Gather> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..THREADS)
                .map(|i| {
                    let (t, start) = (&t, &start);
                    s.spawn(move || {
                        let mut g = Gather::new();
                        start.wait();
                        assert_eq!(t.unmap(Iova::new(page(i)), K4, &mut g), Ok(K4));
                        g
                    })
                })
                .collect();
            spawned.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let found = leaves(&t, base, RUN);
        let mut bytes = 0;
        for &(iova, leaf_pa, size_log2) in &found {
            assert!(
                !in_arena(PhysAddr::new(leaf_pa)),
                "round {round}: leaf over table memory"
            );
            assert_eq!(leaf_pa - pa, iova - base, "round {round}");
            let split = (3 * M2..5 * M2).contains(&(iova - base));
            assert_eq!(size_log2, if split { 12 } else { 21 }, "round {round}");
            bytes += 1u64 << size_log2;
        }
        assert_eq!(bytes, RUN - THREADS * K4, "round {round}");
        let mut g = Gather::new();
        t.unmap(Iova::new(base), RUN, &mut g).unwrap();
        for mut g in gathers {
            g.release(t.allocator(), done()).unwrap();
        }
        g.release(t.allocator(), done()).unwrap();
        assert_eq!(
            t.allocator().stats().live_pages,
            live,
            "round {round}: a table leaked"
        );
    }
}
