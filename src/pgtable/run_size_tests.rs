//! Tests that an unmap's gather names the page size of every AMD-Vi v1 Next Level 7 page it
//! removed or cut (AMD IOMMU spec 48882 rev 3.10 §2.2.3, Table 14: a PTE with Next Level 7
//! maps one page of the size its address bits encode, replicated in every entry the page
//! spans, which the unit may cache as one translation of that size). The contract is
//! `PageTable::note_run_page`'s: an embedder that invalidates by page size learns the size
//! from the gather. Each test sets up the state another CPU can leave the table in (the
//! stores are the engine's own: `leaf_out_of_run` of every leaf of a run is a complete break)
//! and checks the gather of the call under review.

extern crate std;

use std::vec::Vec;

use super::amdvi_v1::AmdV1;
use super::sync::AtomicU64;
use super::testutil::{amd_v1, done, with_other_cpu_at, TestAlloc, G1, K4, M2, RW};
use super::*;
use crate::mem::{Iova, PhysAddr};

const K64: u64 = 1 << 16;
const M4: u64 = 1 << 22;
const M8: u64 = 1 << 23;
const IOVA: u64 = G1;
const PA: u64 = 4 * G1;

/// The entries of `[iova, iova + len)` (leaves of `size` bytes each): slot and value.
fn entries(
    t: &PageTable<AmdV1, TestAlloc>,
    iova: u64,
    len: u64,
    size: u64,
) -> Vec<(*const AtomicU64, u64)> {
    let mut v = Vec::new();
    let top = t.geometry().top_level();
    t.visit(t.root_table(), top, iova, len, &mut |slot, leaf, raw| {
        assert_eq!(
            1u64 << leaf.size_log2,
            size,
            "the leaf at {:#x}",
            leaf.iova.get()
        );
        v.push((core::ptr::from_ref(slot), raw));
        Ok(())
    })
    .unwrap();
    v
}

/// What another CPU's complete break of the run of `len` bytes at `iova` (mapping `PA + iova -
/// IOVA`, leaves of `size` bytes at `level`) leaves: every leaf re-encoded to stand alone.
fn broken_run(
    t: &PageTable<AmdV1, TestAlloc>,
    iova: u64,
    len: u64,
    size: u64,
    level: u32,
) -> Vec<(*const AtomicU64, u64)> {
    let run = entries(t, iova, len, size);
    assert!(
        run.iter()
            .all(|&(_, raw)| (size << t.format().leaf_run_log2(level, raw)) == len),
        "the map wrote one run of {len:#x} at {iova:#x}"
    );
    run.iter()
        .enumerate()
        .map(|(i, &(slot, raw))| {
            let pa = PhysAddr::new(PA + iova - IOVA + i as u64 * size);
            (slot, t.format().leaf_out_of_run(level, raw, pa))
        })
        .collect()
}

/// (a) An unmap of `[iova, iova + len)` that finds the entry at `at` claimed by the run of
/// `run` bytes at `run_iova` (leaves of `size` bytes at `level`), which another CPU's unmap
/// completes the break of between this call's search and its break (`race_window` in
/// `break_runs_over`). The other CPU's invalidation of the run may not have completed when
/// this call returns, and a TLB may hold the run as one translation of its size until then:
/// the gather names that size, besides covering the range.
#[allow(clippy::too_many_arguments)]
fn unmap_of_a_run_another_cpu_broke(
    map: (u64, u64),
    run: (u64, u64),
    size: u64,
    level: u32,
    at: u64,
    unmap: (u64, u64),
    what: &str,
) {
    let t = amd_v1();
    t.map(
        Iova::new(map.0),
        PhysAddr::new(PA + map.0 - IOVA),
        map.1,
        RW,
    )
    .unwrap();
    let stores = broken_run(&t, run.0, run.1, size, level);
    let trigger = entries(&t, at, size, size)[0].0 as usize;
    let mut g = Gather::new();
    // SAFETY: the entries are `t`'s, which lives past the call.
    let (bytes, made) = unsafe {
        with_other_cpu_at(trigger, &stores, || {
            t.unmap(Iova::new(unmap.0), unmap.1, &mut g)
        })
    };
    assert!(
        made,
        "{what}: the unmap never reached the break of the run at {:#x}",
        run.0
    );
    assert!(bytes.unwrap() >= size.min(unmap.1), "{what}");
    let covered = g
        .ranges()
        .iter()
        .any(|r| r.start.get() <= unmap.0 && unmap.0 + unmap.1 <= r.end.get());
    assert!(
        covered,
        "{what}: the gather {:x?} misses the range",
        g.ranges()
    );
    assert_ne!(
        g.page_sizes() & run.1,
        0,
        "{what}: the unmap found its entry in a Next Level 7 page of {:#x} that another CPU \
         broke meanwhile, whose invalidation may still be running, but its gather names only \
         the page sizes {:#x}",
        run.1,
        g.page_sizes()
    );
    g.release(t.allocator(), done()).unwrap();
}

/// The one-page fast path (`unmap_one` -> `break_runs_at`): page 3 of a 64 KiB page.
#[test]
fn one_page_unmap_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let run = (IOVA, K64);
    unmap_of_a_run_another_cpu_broke(
        run,
        run,
        K4,
        0,
        IOVA + 3 * K4,
        (IOVA + 3 * K4, K4),
        "one page",
    );
}

/// The one-block fast path (`unmap_one_block` -> `break_runs_at`): block 1 of an 8 MiB page.
#[test]
fn one_block_unmap_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let run = (IOVA, M8);
    unmap_of_a_run_another_cpu_broke(run, run, M2, 1, IOVA + M2, (IOVA + M2, M2), "one block");
}

/// The leaf-table fast path (`unmap_fast` -> `break_cut_runs`): pages 2..=5 of a 64 KiB page.
#[test]
fn page_range_unmap_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let run = (IOVA, K64);
    unmap_of_a_run_another_cpu_broke(
        run,
        run,
        K4,
        0,
        IOVA + 2 * K4,
        (IOVA + 2 * K4, 4 * K4),
        "pages",
    );
}

/// The level-1 fast path (`unmap_blocks` -> `break_cut_runs`): blocks 1 and 2 of an 8 MiB
/// page.
#[test]
fn block_range_unmap_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let run = (IOVA, M8);
    unmap_of_a_run_another_cpu_broke(run, run, M2, 1, IOVA + M2, (IOVA + M2, 2 * M2), "blocks");
}

/// The general walk's stretch of blocks (`clear_stretch`): the last page before the 8 MiB
/// page (its own leaf table) and blocks 0..=2 of it.
#[test]
fn stretch_unmap_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let t_map = (IOVA - K4, K4 + M8);
    let run = (IOVA, M8);
    unmap_of_a_run_another_cpu_broke(t_map, run, M2, 1, IOVA, (IOVA - K4, K4 + 3 * M2), "stretch");
}

/// The general walk's split of one block (`unmap_entry`): one page of block 1 of an 8 MiB
/// page.
#[test]
fn split_of_a_run_another_cpu_broke_names_the_run_amd_v1() {
    let run = (IOVA, M8);
    unmap_of_a_run_another_cpu_broke(
        run,
        run,
        M2,
        1,
        IOVA + M2,
        (IOVA + M2 + 5 * K4, K4),
        "split",
    );
}

/// (b) An unmap whose range holds an 8 MiB page (four level-1 entries) whole names 8 MiB in
/// its gather, not only the entries' 2 MiB: the level-1 fast path (`unmap_blocks`) and the
/// general walk (`clear_stretch`, reached by a range that starts in the leaf table before).
#[test]
fn block_run_cleared_whole_names_its_size_amd_v1() {
    for (start, len, what) in [
        (IOVA, M8, "level-1 fast path"),
        (IOVA - K4, K4 + M8, "general walk"),
    ] {
        let t = amd_v1();
        t.map(Iova::new(start), PhysAddr::new(PA + start - IOVA), len, RW)
            .unwrap();
        let runs = entries(&t, IOVA, M8, M2);
        assert!(
            runs.iter()
                .all(|&(_, raw)| t.format().leaf_run_log2(1, raw) == 2),
            "{what}: the map wrote an 8 MiB page"
        );
        let mut g = Gather::new();
        assert_eq!(t.unmap(Iova::new(start), len, &mut g), Ok(len), "{what}");
        assert_ne!(
            g.page_sizes() & M8,
            0,
            "{what}: the unmap cleared an 8 MiB Next Level 7 page whole, but its gather names \
             only the page sizes {:#x}",
            g.page_sizes()
        );
        g.release(t.allocator(), done()).unwrap();
    }
}

/// (b) without the range's ends: a 4 MiB page in the middle of the range (a 2 MiB block before
/// it, an 8 MiB page after it), which neither end's run search reaches, is named by the
/// clearing loop itself (`clear_leaf`), on the level-1 fast path and in the general walk
/// (review of 34e789c: the test above passes without `clear_leaf`, its page being at an end).
#[test]
fn block_run_inside_the_range_names_its_size_amd_v1() {
    for (start, len, what) in [
        (IOVA + M2, 7 * M2, "level-1 fast path"),
        (IOVA + M2 - K4, K4 + 7 * M2, "general walk"),
    ] {
        let t = amd_v1();
        t.map(Iova::new(start), PhysAddr::new(PA + start - IOVA), len, RW)
            .unwrap();
        let page = entries(&t, IOVA + M4, M4, M2);
        assert!(
            page.iter()
                .all(|&(_, raw)| t.format().leaf_run_log2(1, raw) == 1),
            "{what}: the map wrote a 4 MiB page"
        );
        let mut g = Gather::new();
        assert_eq!(t.unmap(Iova::new(start), len, &mut g), Ok(len), "{what}");
        assert_ne!(
            g.page_sizes() & M4,
            0,
            "{what}: the unmap cleared a 4 MiB Next Level 7 page whole, but its gather names \
             only the page sizes {:#x}",
            g.page_sizes()
        );
        g.release(t.allocator(), done()).unwrap();
    }
}
