//! Threaded tests of the engine's concurrency contract (src/lib.rs, "Locking"): operations on
//! disjoint ranges of one table, racing where they share tables and larger pages.
//!
//! Each race is repeated enough times to happen on a loaded 2-core machine; the counts are
//! small under Miri, whose scheduler and weak-memory emulation explore interleavings instead.

extern crate std;

use std::sync::Barrier;
use std::vec::Vec;

use super::sync::AtomicU64;
use super::testutil::{
    arm_s2_4k, done, keep_rewriting, stop_rewriting, test_alloc, vtd_ss, TestAlloc, G1, K4, M2, RW,
    VTD_SS_48,
};
use super::vtd_ss::VtdSs;
use super::*;
use crate::mem::{Iova, PhysAddr, WalkerCoherency};

/// Repetitions of a race: enough to lose it reliably on the old code outside Miri.
const ROUNDS: usize = if cfg!(miri) { 3 } else { 400 };

/// Physical addresses of the test arena (`testutil`): a leaf pointing there maps page tables.
fn in_arena(pa: PhysAddr) -> bool {
    (0x4000_0000..0x4000_0000 + (16 << 20)).contains(&pa.get())
}

/// Whether `g` invalidates all of `[start, start + len)` in a way that reaches a cached leaf of
/// `len` bytes there: one of its ranges covers it, and its page sizes name that size (or it
/// is not leaf-only, which drivers invalidate at every level).
fn covers(g: &Gather, start: u64, len: u64) -> bool {
    let range = g
        .ranges()
        .iter()
        .any(|r| r.start.get() <= start && start + len <= r.end.get());
    range && (g.page_sizes() & len != 0 || !g.leaf_only())
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

/// Maps and unmaps `[base, base + len)` once, so that the tables above it stay from one round
/// to the next: the allocator's live pages then.
fn map_unmap_once<F: Format>(t: &PageTable<F, TestAlloc>, base: u64, pa: u64, len: u64) -> usize {
    t.map(Iova::new(base), PhysAddr::new(pa), len, RW).unwrap();
    let mut g = Gather::new();
    t.unmap(Iova::new(base), len, &mut g).unwrap();
    g.release(t.allocator(), done()).unwrap();
    t.allocator().stats().live_pages
}

/// `threads` threads started together, thread `i` unmapping `len` bytes at `at(i)`: their
/// gathers, in thread order.
fn unmap_on_threads<F: Format + Sync>(
    t: &PageTable<F, TestAlloc>,
    threads: u64,
    at: impl Fn(u64) -> u64 + Sync,
    len: u64,
) -> Vec<Gather> {
    let start = Barrier::new(threads as usize);
    std::thread::scope(|s| {
        let spawned: Vec<_> = (0..threads)
            .map(|i| {
                let (t, start, at) = (t, &start, &at);
                s.spawn(move || {
                    let mut g = Gather::new();
                    start.wait();
                    assert_eq!(t.unmap(Iova::new(at(i)), len, &mut g), Ok(len));
                    g
                })
            })
            .collect();
        spawned.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Unmaps the rest of `[base, base + len)`, then releases the threads' gathers and its own.
fn unmap_and_release<F: Format>(
    t: &PageTable<F, TestAlloc>,
    base: u64,
    len: u64,
    gathers: Vec<Gather>,
) {
    let mut g = Gather::new();
    t.unmap(Iova::new(base), len, &mut g).unwrap();
    for mut g in gathers {
        g.release(t.allocator(), done()).unwrap();
    }
    g.release(t.allocator(), done()).unwrap();
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
    let live = map_unmap_once(&t, base, pa, M2);
    let page = |i: u64| base + (i * 97 + 5) * K4;
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), M2, RW).unwrap();
        let gathers = unmap_on_threads(&t, THREADS, page, K4);
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
        unmap_and_release(&t, base, M2, gathers);
        assert_eq!(
            t.allocator().stats().live_pages,
            live,
            "round {round}: a table leaked"
        );
    }
}

/// The same race one level up through a contiguous run (Arm stage 2, 4 KiB granule: 16 blocks
/// of 2 MiB carry the hint): two threads per block break the run's hint and split their block.
#[test]
fn unmaps_inside_one_contiguous_run_split_each_block_once() {
    const THREADS: u64 = 4;
    const RUN: u64 = 16 * M2;
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    let live = map_unmap_once(&t, base, pa, RUN);
    // Threads 0 and 1 cut block 3, threads 2 and 3 block 4.
    let page = |i: u64| base + (3 + i / 2) * M2 + ((i % 2) * 300 + 7) * K4;
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), RUN, RW).unwrap();
        assert_eq!(leaves(&t, base, RUN).len(), 16);
        let gathers = unmap_on_threads(&t, THREADS, page, K4);
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
        // Each thread's invalidation covers its whole block: the block (or the run, which a
        // TLB may hold as one entry of the block's level) may still be cached when the thread
        // returns, if another thread split it or cleared the run's hint (item 3).
        for (i, g) in (0..THREADS).zip(&gathers) {
            let block = page(i) & !(M2 - 1);
            assert!(
                covers(g, block, M2),
                "round {round}: thread {i}: {:?}",
                g.ranges()
            );
        }
        unmap_and_release(&t, base, RUN, gathers);
        assert_eq!(
            t.allocator().stats().live_pages,
            live,
            "round {round}: a table leaked"
        );
    }
}

/// Per-page unmaps of pages of one run (Arm stage 2, 4 KiB granule: runs of 16 pages or of 16
/// blocks of 2 MiB carry the hint), four threads at once, each of a different `size` entry:
/// each finds its entry claimed by the run and breaks the run (`unmap_one` /
/// `unmap_one_block` -> `break_runs_at`). A thread that finds the run already broken by the
/// time it looks again breaks nothing and so records no run: it must record its own entry.
/// Each thread's gather must cover its entry at its size when the unmap returns, since a TLB
/// may hold the run (cached before the break) until then. Before the fix, a thread skipped
/// its record whenever its first look found the run (loom `two_page_unmaps_of_one_run_amd_v1`
/// failed so; review of 98f7158, finding 1).
fn per_page_unmaps_of_one_run_each_record_their_entry(size: u64) {
    const THREADS: u64 = 4;
    let run = 16 * size;
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    // The tables stay from one round to the next: map and unmap once first.
    let live = map_unmap_once(&t, base, pa, run);
    // Entries 1, 4, 7, 10 of the run.
    let entry = |i: u64| base + (3 * i + 1) * size;
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), run, RW).unwrap();
        let gathers = unmap_on_threads(&t, THREADS, entry, size);
        for (i, g) in (0..THREADS).zip(&gathers) {
            assert!(
                covers(g, entry(i), size),
                "round {round}: thread {i} unmapped {:#x} with the gather {:x?} (page sizes \
                 {:#x})",
                entry(i),
                g.ranges(),
                g.page_sizes()
            );
        }
        // The rest of the run stands alone, each leaf where it was.
        let found = leaves(&t, base, run);
        assert_eq!(found.len() as u64, 16 - THREADS, "round {round}");
        for &(iova, leaf_pa, _) in &found {
            assert_eq!(leaf_pa - pa, iova - base, "round {round}");
        }
        unmap_and_release(&t, base, run, gathers);
        assert_eq!(t.allocator().stats().live_pages, live, "round {round}");
    }
}

#[test]
fn per_page_unmaps_of_one_run_each_record_their_page() {
    per_page_unmaps_of_one_run_each_record_their_entry(K4);
}

#[test]
fn per_block_unmaps_of_one_run_each_record_their_block() {
    per_page_unmaps_of_one_run_each_record_their_entry(M2);
}

/// Issue 13, item 3: a thread that unmaps a page under a table another thread's split made
/// cannot know whether the splitter's invalidation of the larger page has completed, so its
/// own gather covers the larger page (at its size). Pages never split cost only themselves.
fn split_pages_are_invalidated_by_every_later_unmap<F: Format>(t: PageTable<F, TestAlloc>) {
    let (base, pa) = (G1, 4 * G1);
    // One 1 GiB leaf; A's unmap splits it into 2 MiB leaves and one of those into 4 KiB.
    t.map(Iova::new(base), PhysAddr::new(pa), G1, RW).unwrap();
    let mut a = Gather::new();
    t.unmap(Iova::new(base + 5 * M2 + 3 * K4), K4, &mut a)
        .unwrap();
    assert!(covers(&a, base, G1) && covers(&a, base + 5 * M2, M2));
    // B: another 4 KiB page of the same 2 MiB block: both larger pages.
    let mut b = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(base + 5 * M2 + 9 * K4), K4, &mut b),
        Ok(K4)
    );
    assert!(covers(&b, base, G1), "{:?}", b.ranges());
    assert!(covers(&b, base + 5 * M2, M2), "{:?}", b.ranges());
    // C: a whole 2 MiB block elsewhere in the split 1 GiB page: the 1 GiB page.
    let mut c = Gather::new();
    assert_eq!(t.unmap(Iova::new(base + 9 * M2), M2, &mut c), Ok(M2));
    assert!(covers(&c, base, G1), "{:?}", c.ranges());
    // D: a hole under the split tables removes nothing and invalidates nothing.
    let mut d = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(base + 5 * M2 + 3 * K4), K4, &mut d),
        Ok(0)
    );
    assert!(d.is_empty());
    // F: maps into the split tables (the one-page path and the level-1 block path, whose
    // descents do not test split marks) leave the marks in place: a later unmap of what they
    // mapped still covers the larger pages.
    t.map(
        Iova::new(base + 5 * M2 + 3 * K4),
        PhysAddr::new(pa + 5 * M2 + 3 * K4),
        K4,
        RW,
    )
    .unwrap();
    t.map(Iova::new(base + 9 * M2), PhysAddr::new(pa + 9 * M2), M2, RW)
        .unwrap();
    let mut f = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(base + 5 * M2 + 3 * K4), 2 * K4, &mut f),
        Ok(2 * K4)
    );
    assert!(covers(&f, base, G1), "{:?}", f.ranges());
    assert!(covers(&f, base + 5 * M2, M2), "{:?}", f.ranges());
    let mut f2 = Gather::new();
    assert_eq!(t.unmap(Iova::new(base + 9 * M2), M2, &mut f2), Ok(M2));
    assert!(covers(&f2, base, G1), "{:?}", f2.ranges());
    // E: 4 KiB pages mapped as such: exactly the page.
    t.map(Iova::new(4 * G1), PhysAddr::new(pa), M2, Prot::READ)
        .unwrap();
    let mut g = Gather::new();
    t.unmap(Iova::new(4 * G1), M2, &mut g).unwrap();
    t.map(
        Iova::new(4 * G1 + K4),
        PhysAddr::new(pa + K4),
        2 * K4,
        Prot::READ,
    )
    .unwrap();
    let mut e = Gather::new();
    assert_eq!(t.unmap(Iova::new(4 * G1 + K4), K4, &mut e), Ok(K4));
    let exact = [IovaRange {
        start: Iova::new(4 * G1 + K4),
        end: Iova::new(4 * G1 + 2 * K4),
    }];
    assert_eq!(
        (e.ranges(), e.page_sizes(), e.leaf_only()),
        (&exact[..], K4, true)
    );
    for mut g in [a, b, c, d, e, f, f2, g] {
        g.release(t.allocator(), done()).unwrap();
    }
}

#[test]
fn split_pages_are_invalidated_by_every_later_unmap_vtd_ss() {
    // Level-0 leaves without a hint: the fast path of small unmaps.
    split_pages_are_invalidated_by_every_later_unmap(vtd_ss(false));
}

#[test]
fn split_pages_are_invalidated_by_every_later_unmap_arm_s2() {
    // The contiguous hint at level 0: the leaf-table fast path, run by run.
    split_pages_are_invalidated_by_every_later_unmap(arm_s2_4k(false));
}

/// The slot of the leaf that maps `iova`.
fn leaf_slot<F: Format>(t: &PageTable<F, TestAlloc>, iova: u64) -> &AtomicU64 {
    let mut found = None;
    let top = t.geometry().top_level();
    t.visit(t.root_table(), top, iova, K4, &mut |slot, _, _| {
        found = Some(core::ptr::from_ref(slot));
        Ok(())
    })
    .unwrap();
    // SAFETY: the slot lies in a live table of `t`, which outlives the borrow.
    unsafe { &*found.expect("a leaf maps the IOVA") }
}

/// One 1 GiB leaf at `G1`, split by an unmap of one page of its 2 MiB block 5 (rule 5's
/// "others' split": that unmap's gather is released without being flushed, so the larger
/// pages may still be cached when the next unmap runs).
fn split_gigabyte<F: Format>(t: &PageTable<F, TestAlloc>) {
    t.map(Iova::new(G1), PhysAddr::new(4 * G1), G1, RW).unwrap();
    let mut a = Gather::new();
    assert_eq!(t.unmap(Iova::new(G1 + 5 * M2 + 3 * K4), K4, &mut a), Ok(K4));
    assert!(covers(&a, G1, G1) && covers(&a, G1 + 5 * M2, M2));
    a.release(t.allocator(), done()).unwrap();
}

/// `g` covers both larger pages [`split_gigabyte`] split, which may still be cached: its 2 MiB
/// block 5 and the 1 GiB page.
fn assert_covers_split_gigabyte(g: &Gather) {
    let ranges = g.ranges();
    assert!(
        covers(g, G1 + 5 * M2, M2),
        "the split 2 MiB page: {ranges:?}"
    );
    assert!(covers(g, G1, G1), "the split 1 GiB page: {ranges:?}");
}

/// Rule 5 after an error: an unmap that cleared leaves below a table a split made, then
/// failed on a later entry (`EntryUnstable`: hardware kept rewriting the leaf it had to split),
/// has still recorded the larger page in its gather, which the caller flushes on error too
/// (`IoasidCtx::unmap_domain_into`): else a TLB entry of the 1 GiB page would keep reaching the
/// cleared 2 MiB pages. `accessed`: the format's accessed flag, which the "hardware" flips.
fn a_failed_unmap_invalidates_the_split_pages_above_what_it_cleared<F: Format>(
    t: PageTable<F, TestAlloc>,
    accessed: u64,
) {
    split_gigabyte(&t);
    // Blocks 7 and 8 cleared whole; block 9 cut at 4 KiB, where the split keeps failing.
    keep_rewriting(leaf_slot(&t, G1 + 9 * M2), accessed);
    let mut b = Gather::new();
    let r = t.unmap(Iova::new(G1 + 7 * M2), 2 * M2 + K4, &mut b);
    stop_rewriting();
    assert_eq!(
        r,
        Err(Error::EntryUnstable {
            iova: Iova::new(G1 + 9 * M2)
        })
    );
    assert_eq!(t.query(Iova::new(G1 + 8 * M2)), None, "block 8 was cleared");
    assert!(covers(&b, G1 + 7 * M2, M2) && covers(&b, G1 + 8 * M2, M2));
    assert!(covers(&b, G1, G1), "the split 1 GiB page: {:?}", b.ranges());
    b.release(t.allocator(), done()).unwrap();
    // The same with a split 2 MiB page below the 1 GiB one: its 4 KiB pages cleared, block 6
    // cleared, 7 and 8 (holes) skipped, and block 9 failing again.
    keep_rewriting(leaf_slot(&t, G1 + 9 * M2), accessed);
    let mut c = Gather::new();
    let r = t.unmap(Iova::new(G1 + 5 * M2 + 8 * K4), 4 * M2, &mut c);
    stop_rewriting();
    assert!(matches!(r, Err(Error::EntryUnstable { .. })), "{r:?}");
    assert_covers_split_gigabyte(&c);
    c.release(t.allocator(), done()).unwrap();
}

#[test]
fn a_failed_unmap_invalidates_the_split_pages_above_what_it_cleared_vtd_ss() {
    // VT-d second stage: A is bit 8.
    a_failed_unmap_invalidates_the_split_pages_above_what_it_cleared(vtd_ss(false), 1 << 8);
}

#[test]
fn a_failed_unmap_invalidates_the_split_pages_above_what_it_cleared_arm_s2() {
    // Arm stage 2: AF is bit 10.
    a_failed_unmap_invalidates_the_split_pages_above_what_it_cleared(arm_s2_4k(false), 1 << 10);
}

/// The level-1 fast path (`unmap_blocks`, a range of whole 2 MiB entries in one table) after
/// an error: blocks 6 and 7 cleared, then entry 8 links a table outside the allocator
/// (`UnknownTable`); the split 1 GiB page above them is still recorded.
#[test]
fn a_failed_block_unmap_invalidates_the_split_page_above_what_it_cleared() {
    let t = vtd_ss(false);
    split_gigabyte(&t);
    let corrupt = t.format().encode_table(1, PhysAddr::new(1 << 40));
    leaf_slot(&t, G1 + 8 * M2).store(corrupt, core::sync::atomic::Ordering::Release);
    let mut b = Gather::new();
    let r = t.unmap(Iova::new(G1 + 6 * M2), 3 * M2, &mut b);
    assert_eq!(
        r,
        Err(Error::UnknownTable {
            pa: PhysAddr::new(1 << 40)
        })
    );
    assert!(covers(&b, G1 + 6 * M2, M2) && covers(&b, G1 + 7 * M2, M2));
    assert!(covers(&b, G1, G1), "the split 1 GiB page: {:?}", b.ranges());
    b.release(t.allocator(), done()).unwrap();
}

/// Rule 5 for dirty state after an error: a `read_and_clear_dirty` that cleaned 2 MiB leaves
/// below a table a split made, then failed on a later leaf (`EntryUnstable`), has recorded the
/// larger page: a TLB entry of the 1 GiB page, writable and dirty, would otherwise take
/// writes to the cleaned pages without marking them.
#[test]
fn a_failed_dirty_read_invalidates_the_split_page_above_what_it_cleaned() {
    let t = vtd_ss(true);
    split_gigabyte(&t);
    for block in 6..9 {
        set_dirty_vtd_ss(&t, G1 + block * M2);
    }
    keep_rewriting(leaf_slot(&t, G1 + 8 * M2), 1 << 8);
    let (mut g, mut seen) = (Gather::new(), Vec::new());
    let r = t.read_and_clear_dirty(
        Iova::new(G1 + 6 * M2),
        3 * M2,
        |iova, log2| seen.push((iova.get(), log2)),
        &mut g,
    );
    stop_rewriting();
    assert_eq!(
        r,
        Err(Error::EntryUnstable {
            iova: Iova::new(G1 + 8 * M2)
        })
    );
    assert_eq!(seen, [(G1 + 6 * M2, 21), (G1 + 7 * M2, 21)]);
    assert!(covers(&g, G1 + 6 * M2, M2) && covers(&g, G1 + 7 * M2, M2));
    assert!(covers(&g, G1, G1), "the split 1 GiB page: {:?}", g.ranges());
    g.release(t.allocator(), done()).unwrap();
    // Failing inside the split 2 MiB page, after cleaning 4 KiB pages of it: both larger
    // pages, though nothing was cleaned directly in the 1 GiB page's table.
    let page = |i: u64| G1 + 5 * M2 + i * K4;
    for i in 4..8 {
        set_dirty_vtd_ss(&t, page(i));
    }
    keep_rewriting(leaf_slot(&t, page(7)), 1 << 8);
    let (mut g, mut seen) = (Gather::new(), Vec::new());
    let r = t.read_and_clear_dirty(
        Iova::new(page(4)),
        4 * K4,
        |iova, _| seen.push(iova.get()),
        &mut g,
    );
    stop_rewriting();
    assert!(matches!(r, Err(Error::EntryUnstable { .. })), "{r:?}");
    assert_eq!(seen, [page(4), page(5), page(6)]);
    assert_covers_split_gigabyte(&g);
    g.release(t.allocator(), done()).unwrap();
}

/// Marks the leaf that maps `iova` dirty, as the walker would (VT-d second stage: D, bit 9).
fn set_dirty_vtd_ss(t: &PageTable<VtdSs, TestAlloc>, iova: u64) {
    let top = t.geometry().top_level();
    t.visit(t.root_table(), top, iova, K4, &mut |slot, _, _| {
        slot.fetch_or(1 << 9, core::sync::atomic::Ordering::AcqRel);
        Ok(())
    })
    .unwrap();
}

/// Issue 13, item 4: `read_and_clear_dirty` of one page of a dirty 2 MiB leaf while another
/// thread unmaps another page of it (splitting it) reports the page in this pass, whichever
/// wins; it used to return without reporting it when its compare-and-swap found the table.
/// Whichever wins, the page is cleaned only once it is a leaf of its own (the block straddles
/// the read's range), and its dirty state is never lost.
#[test]
fn dirty_read_racing_a_split_reports_the_page() {
    let t = vtd_ss(true);
    let (base, pa) = (G1, 4 * G1);
    let (cut, read) = (base + 17 * K4, base + 300 * K4);
    for round in 0..ROUNDS {
        t.map(Iova::new(base), PhysAddr::new(pa), M2, RW).unwrap();
        set_dirty_vtd_ss(&t, base);
        let start = Barrier::new(2);
        let (mut reports, mut g) = (Vec::new(), Gather::new());
        let mut cut_gather = Gather::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                assert_eq!(t.unmap(Iova::new(cut), K4, &mut cut_gather), Ok(K4));
            });
            start.wait();
            let sink = |iova: Iova, size_log2| reports.push((iova.get(), size_log2));
            t.read_and_clear_dirty(Iova::new(read), K4, sink, &mut g)
                .unwrap();
        });
        // Either the whole block before the split, or the page after it.
        assert!(
            reports == [(base, 21)] || reports == [(read, 12)],
            "round {round}: {reports:?}"
        );
        if reports == [(base, 21)] {
            // Read before the split: the block straddles the range, so it was reported and
            // left dirty (nothing cleaned, nothing to invalidate); the split carried its dirty
            // state into the page, which the next read reports and cleans.
            assert!(g.is_empty(), "round {round}: {:?}", g.ranges());
            let mut again = Vec::new();
            let sink = |iova: Iova, size_log2| again.push((iova.get(), size_log2));
            t.read_and_clear_dirty(Iova::new(read), K4, sink, &mut g)
                .unwrap();
            assert_eq!(again, [(read, 12)], "round {round}");
        }
        // After the split, the cleaned page's invalidation must reach the cached block.
        assert!(covers(&g, base, M2), "round {round}: {:?}", g.ranges());
        let mut again = Vec::new();
        let sink = |iova: Iova, size_log2| again.push((iova.get(), size_log2));
        t.read_and_clear_dirty(Iova::new(read), K4, sink, &mut g)
            .unwrap();
        assert_eq!(again, [], "round {round}");
        t.unmap(Iova::new(base), M2, &mut g).unwrap();
        g.release(t.allocator(), done()).unwrap();
        cut_gather.release(t.allocator(), done()).unwrap();
    }
}

/// Issue 13, item 2: a map that returns `Ok` has made every entry on its path visible to a
/// walker that does not snoop the CPU caches. Thread A maps 8 MiB of 4 KiB pages, linking four
/// new leaf tables under three new upper tables; thread B waits until the first leaf table is
/// linked and maps the page just below A's range, under the same tables. When B returns, each
/// entry on its path must have been cleaned (an entry-sized `sync_for_device` after it was
/// written: whole-page syncs are of tables before they were linked). B used to take the fast
/// path down the tables A linked and clean only its own leaf.
#[test]
fn a_map_returns_after_its_whole_path_is_clean() {
    let arena = test_alloc();
    for round in 0..ROUNDS {
        let t = PageTable::new(
            VtdSs::new(VTD_SS_48).unwrap(),
            &arena,
            WalkerCoherency::NonCoherent,
        )
        .unwrap();
        arena.start_sync_recording();
        let base = G1;
        let synced_when_b_returned = std::thread::scope(|s| {
            s.spawn(|| {
                // 4 KiB pages only: the output is never 2 MiB aligned with the input.
                let pa = PhysAddr::new(4 * G1 + 2 * K4);
                t.map(Iova::new(base + K4), pa, 4 * M2 - K4, RW).unwrap();
            });
            while path_entries(&t, base).len() < 3 {
                std::thread::yield_now();
            }
            t.map(Iova::new(base), PhysAddr::new(4 * G1), K4, RW)
                .unwrap();
            arena.sync_log().len()
        });
        let log = arena.stop_sync_recording();
        let entry_syncs: Vec<(u64, u64)> = log[..synced_when_b_returned]
            .iter()
            .copied()
            .filter(|&(_, len)| len < 4096)
            .collect();
        for (level, pa) in path_entries(&t, base) {
            let clean = entry_syncs
                .iter()
                .any(|&(start, len)| start <= pa && pa + 8 <= start + len);
            assert!(
                clean,
                "round {round}: level {level} entry at {pa:#x} not clean"
            );
        }
        let mut g = Gather::new();
        t.destroy(&mut g).unwrap();
        g.release(&arena, done()).unwrap();
    }
    assert_eq!(arena.stats().live_pages, 0);
}

/// The physical addresses of the present entries on the walk to `iova`: (level, address).
fn path_entries<F: Format, A: crate::mem::PageAllocator>(
    t: &PageTable<F, A>,
    iova: u64,
) -> Vec<(u32, u64)> {
    let g = *t.geometry();
    let (mut entries, mut table, mut table_pa) = (Vec::new(), t.root_table(), t.root());
    for level in (0..g.levels).rev() {
        let idx = g.index(level, iova);
        // SAFETY: `table` is a live table of `t` and `idx` indexes it.
        let raw = unsafe { table.slot(idx) }.load(core::sync::atomic::Ordering::Acquire);
        if !t.format().is_present(raw) {
            break;
        }
        entries.push((level, table_pa.get() + idx as u64 * 8));
        if level == 0 || !t.format().is_table(level, raw) {
            break;
        }
        table_pa = t.format().table_address(raw);
        table = super::table::Table::at(t.allocator().phys_to_virt(table_pa).unwrap());
    }
    entries
}

/// Issue 13, item 7: the dirty state the walker set in a larger page before it was split is in
/// every smaller leaf after it (the split copies the value its compare-and-swap replaced), and
/// a split that lost to a dirty-bit update rebuilds from the new value.
#[test]
fn a_split_carries_dirty_state_into_every_child() {
    let t = vtd_ss(true);
    let (base, pa) = (G1, 4 * G1);
    t.map(Iova::new(base), PhysAddr::new(pa), M2, RW).unwrap();
    set_dirty_vtd_ss(&t, base);
    let mut g = Gather::new();
    t.unmap(Iova::new(base + 7 * K4), K4, &mut g).unwrap();
    let mut reports = Vec::new();
    let sink = |iova: Iova, size_log2| reports.push((iova.get(), size_log2));
    t.read_and_clear_dirty(Iova::new(base), M2, sink, &mut g)
        .unwrap();
    let want: Vec<(u64, u32)> = (0..512)
        .filter(|&p| p != 7)
        .map(|p| (base + p * K4, 12))
        .collect();
    assert_eq!(reports, want);
    g.release(t.allocator(), done()).unwrap();
}
