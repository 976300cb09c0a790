//! Tests of the unmap / map fast paths of `table.rs` against the concurrency rules
//! of ARCHITECTURE.md ("Concurrency"). Each test sets up a state another thread can leave the
//! table in mid-operation (the interleavings are reachable: every store named below is one
//! the engine itself makes), runs the call under review, and checks the guarantee.

extern crate std;

use std::vec::Vec;

use super::amdvi_v1::{AmdV1, AmdV1Config};
use super::arm_s2::{ArmS2, ArmS2Config};
use super::testutil::{
    amd_v1, arm_s2_4k, done, new_table, TestAlloc, AMD_V1_48, ARM_S2_4K, G1, K4, M2, RW, VTD_SS_48,
};
use super::*;
use crate::mem::{Iova, PhysAddr};
use core::sync::atomic::Ordering;

/// The raw level-0 entry that maps `iova`, and a closure target to rewrite it.
fn leaf_slot<F: Format>(
    t: &PageTable<F, TestAlloc>,
    iova: u64,
    f: &mut impl FnMut(&super::sync::AtomicU64, u64),
) {
    let top = t.geometry().top_level();
    t.visit(t.root_table(), top, iova, K4, &mut |slot, _, raw| {
        f(slot, raw);
        Ok(())
    })
    .unwrap();
}

/// The entries `[base, base + n pages)` as they are now (0 for a hole).
fn raws<F: Format>(t: &PageTable<F, TestAlloc>, base: u64, n: u64) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let mut v = 0;
            let top = t.geometry().top_level();
            t.visit(t.root_table(), top, base + i * K4, K4, &mut |_, _, raw| {
                v = raw;
                Ok(())
            })
            .unwrap();
            v
        })
        .collect()
}

/// What thread A's `break_contiguous` has done when it is preempted after its
/// `fetch_update` of leaves `0..upto` of the run at `base` (`leaf_out_of_run` of each, in
/// entry order), before the rest.
fn break_run_partly<F: Format>(t: &PageTable<F, TestAlloc>, base: u64, pa: u64, upto: u64) {
    for i in 0..upto {
        leaf_slot(t, base + i * K4, &mut |slot, _| {
            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                let part = t.format().is_present(e) && t.format().leaf_run_log2(0, e) != 0;
                part.then(|| t.format().leaf_out_of_run(0, e, PhysAddr::new(pa + i * K4)))
            });
        });
    }
}

/// The same one level up (Arm, 4 KiB granule): `break_contiguous` has made `blocks` of the run
/// of 2 MiB blocks at `base` stand alone, in entry order, and not yet the rest.
fn break_block_run_partly(
    t: &PageTable<ArmS2, TestAlloc>,
    base: u64,
    pa: u64,
    blocks: core::ops::Range<u64>,
) {
    let run_of = |raw: u64| t.format().leaf_run_log2(1, raw);
    for i in blocks {
        leaf_slot(t, base + i * M2, &mut |slot, raw| {
            assert_eq!(run_of(raw), 4, "block {i} was mapped in a run of 16");
            let _ = slot.fetch_update(Ordering::AcqRel, Ordering::Acquire, |e| {
                (run_of(e) != 0)
                    .then(|| t.format().leaf_out_of_run(1, e, PhysAddr::new(pa + i * M2)))
            });
        });
    }
}

/// Rule 4 / "What the walker may see" ("never a hinted run with a hole"): thread A unmaps page
/// 15 of a 16-leaf run and is breaking it (its `break_contiguous` updates leaves 0..=15 in
/// order and has made 0..=12 stand alone; 13..=15 still carry the run); thread B unmaps pages
/// among 0..=12, which it finds out of the run already. B's unmap must not return while leaves
/// of the run that still claim it span B's pages: a TLB may fill the whole run from leaf 13
/// after B's invalidation, and B's pages stay reachable after B returned (their memory may be
/// reused by then). B's gather names only its own pages.
fn unmap_beside_a_half_broken_run<F: Format>(
    t: PageTable<F, TestAlloc>,
    base: u64,
    pa: u64,
    b_iova: u64,
    b_len: u64,
    what: &str,
) {
    // 64 KiB at a 64 KiB aligned IOVA and PA: one run of 16 leaves (Arm: the hint; AMD-Vi
    // v1: one Next Level 7 page of 64 KiB replicated in 16 entries).
    t.map(Iova::new(base), PhysAddr::new(pa), 16 * K4, RW)
        .unwrap();
    let before = raws(&t, base, 16);
    assert!(
        before.iter().all(|&e| t.format().leaf_run_log2(0, e) == 4),
        "{what}: the map wrote a run of 16: {before:#x?}"
    );
    break_run_partly(&t, base, pa, 13);
    let mut g = Gather::new();
    let bytes = t.unmap(Iova::new(b_iova), b_len, &mut g).unwrap();
    assert!(bytes >= K4, "{what}: B unmapped {bytes:#x}");
    let after = raws(&t, base, 16);
    let b_end = b_iova + b_len;
    let stale: Vec<(u64, u32)> = (0..16u64)
        .filter_map(|i| {
            let e = after[i as usize];
            let r = t.format().leaf_run_log2(0, e);
            (t.format().is_present(e) && r != 0).then_some((i, r))
        })
        .filter(|&(i, r)| {
            let run = 1u64 << (12 + r);
            let leaf_base = (base + i * K4) & !(run - 1);
            leaf_base < b_end && b_iova < leaf_base + run
        })
        .collect();
    assert!(
        stale.is_empty(),
        "{what}: B's unmap of {b_iova:#x}+{b_len:#x} returned (gather {:x?}, page sizes {:#x}) \
         while leaves (index, run log2) {stale:?} of the run at {base:#x} still claim the run \
         over B's pages: after B's invalidation a walker may cache the run from one of them \
         and translate B's pages",
        g.ranges(),
        g.page_sizes()
    );
    g.release(t.allocator(), done()).unwrap();
}

/// The one-page fast path (`descend` + `unmap_one`): B's leaf reads as a lone leaf.
#[test]
fn one_page_unmap_beside_a_half_broken_run_arm() {
    let (base, pa) = (G1, 4 * G1);
    unmap_beside_a_half_broken_run(
        arm_s2_4k(false),
        base,
        pa,
        base + 12 * K4,
        K4,
        "arm one page",
    );
}

/// The leaf-table fast path (`plain_leaf_table_for` + `break_leaf_runs` + `clear_leaves`).
#[test]
fn leaf_table_unmap_beside_a_half_broken_run_arm() {
    let (base, pa) = (G1, 4 * G1);
    unmap_beside_a_half_broken_run(
        arm_s2_4k(false),
        base,
        pa,
        base + 4 * K4,
        9 * K4,
        "arm leaf table",
    );
}

/// The general walk (`unmap_level` + `unmap_entry`): the run is entries 0..=15 of a leaf
/// table, B's range runs from the last page of the previous leaf table to page 12 of the run.
#[test]
fn general_walk_unmap_beside_a_half_broken_run_arm() {
    let (base, pa) = (G1 + M2, 4 * G1 + M2);
    let t = arm_s2_4k(false);
    // The previous leaf table exists (B's range starts in it).
    t.map(Iova::new(base - K4), PhysAddr::new(pa - K4), K4, RW)
        .unwrap();
    unmap_beside_a_half_broken_run(t, base, pa, base - K4, 14 * K4, "arm general walk");
}

/// The leaf-table fast path on AMD-Vi v1.
#[test]
fn leaf_table_unmap_beside_a_half_broken_run_amd_v1() {
    let (base, pa) = (G1, 4 * G1);
    unmap_beside_a_half_broken_run(amd_v1(), base, pa, base + 4 * K4, 9 * K4, "amd leaf table");
}

/// AMD-Vi v1: a 64 KiB Next Level 7 page (the same PTE in 16 entries; the IOMMU may use any
/// of them for all of the page), half converted to Next Level 0 leaves by thread A.
#[test]
fn one_page_unmap_beside_a_half_broken_run_amd_v1() {
    let (base, pa) = (G1, 4 * G1);
    unmap_beside_a_half_broken_run(amd_v1(), base, pa, base + 12 * K4, K4, "amd one page");
}

/// The top of the input range through every fast path: the last page (entry 511 of the last
/// table of every level), runs and blocks ending exactly at `2^ias`, a range across the last
/// two leaf tables, and ranges that would overflow `iova + len`.
fn top_of_the_address_space<F: Format>(t: PageTable<F, TestAlloc>, pa_base: u64, what: &str) {
    let g = *t.geometry();
    let gran = 1u64 << g.granule_log2;
    let top = 1u64 << g.ias;
    let pa = |iova: u64| PhysAddr::new(pa_base + (iova & ((1u64 << 40) - 1)));
    let mut gather = Gather::new();
    let last = top - gran;
    let b = 1u64 << g.level_shift(1);
    let mapped = |t: &PageTable<F, TestAlloc>, from: u64| {
        let mut v = Vec::new();
        t.for_each_mapping(Iova::new(from), top - from, |l| v.push(l))
            .unwrap();
        v
    };
    // Level-1 blocks ending at the top: the block map and unmap fast paths.
    if g.leaf_allowed(1) && g.levels >= 3 {
        // The level-1 table exists (a page under it).
        t.map(Iova::new(top - 4 * b), pa(top - 4 * b), gran, RW)
            .unwrap();
        t.map(Iova::new(top - 2 * b), pa(top - 2 * b), 2 * b, RW)
            .unwrap();
        let q = t.query(Iova::new(last)).expect("last block mapped");
        assert_eq!(q.size_log2, g.level_shift(1), "{what}");
        assert_eq!(q.pa.get(), pa(top - 2 * b).get() + 2 * b - gran, "{what}");
        assert_eq!(t.unmap(Iova::new(top - b), b, &mut gather), Ok(b), "{what}");
        assert_eq!(
            t.unmap(Iova::new(top - 2 * b), b, &mut gather),
            Ok(b),
            "{what}"
        );
        assert_eq!(
            t.unmap(Iova::new(top - 4 * b), gran, &mut gather),
            Ok(gran),
            "{what}"
        );
        assert_eq!(mapped(&t, top - 4 * b), [], "{what}");
    }
    // The last page: the one-page map and unmap.
    t.map(Iova::new(last), pa(last), gran, RW).unwrap();
    let q = t.query(Iova::new(last)).expect("last page mapped");
    assert_eq!(q.pa, pa(last), "{what}");
    assert_eq!(
        t.unmap(Iova::new(last), gran, &mut gather),
        Ok(gran),
        "{what}"
    );
    assert_eq!(t.unmap(Iova::new(last), gran, &mut gather), Ok(0), "{what}");
    assert!(t.query(Iova::new(last)).is_none(), "{what}");
    // 64 granules ending at the top (runs where the format has them), unmapped in pieces: the
    // last one, seven below it, the rest.
    let span = 64 * gran;
    t.map(Iova::new(top - span), pa(top - span), span, RW)
        .unwrap();
    assert_eq!(
        t.unmap(Iova::new(last), gran, &mut gather),
        Ok(gran),
        "{what}"
    );
    assert_eq!(
        t.unmap(Iova::new(top - 8 * gran), 7 * gran, &mut gather),
        Ok(7 * gran),
        "{what}"
    );
    assert_eq!(
        t.unmap(Iova::new(top - span), span - 8 * gran, &mut gather),
        Ok(span - 8 * gran),
        "{what}"
    );
    assert_eq!(mapped(&t, top - span), [], "{what}");
    // Across the last two leaf tables.
    t.map(Iova::new(top - b - gran), pa(top - b - gran), 2 * gran, RW)
        .unwrap();
    assert_eq!(
        t.unmap(Iova::new(top - b - gran), 2 * gran, &mut gather),
        Ok(2 * gran),
        "{what}"
    );
    // The last leaf table unlinked whole by a level-1 aligned unmap.
    t.map(
        Iova::new(top - b + 3 * gran),
        pa(top - b + 3 * gran),
        5 * gran,
        RW,
    )
    .unwrap();
    assert_eq!(
        t.unmap(Iova::new(top - b), b, &mut gather),
        Ok(5 * gran),
        "{what}"
    );
    assert_eq!(mapped(&t, top - 4 * b), [], "{what}");
    // Overflowing ranges are refused, whatever the path.
    for (iova, len) in [
        (last, !(gran - 1)),
        (last, gran.wrapping_neg()),
        (top - b, gran.wrapping_neg()),
        (!(gran - 1), gran),
        (top, gran),
    ] {
        assert!(
            t.unmap(Iova::new(iova), len, &mut gather).is_err(),
            "{what}: unmap {iova:#x}+{len:#x}"
        );
        assert!(
            t.map(Iova::new(iova), pa(0), len, RW).is_err(),
            "{what}: map {iova:#x}+{len:#x}"
        );
    }
    gather.release(t.allocator(), done()).unwrap();
}

#[test]
fn the_top_of_the_address_space_through_every_fast_path() {
    use super::vtd_fs::{VtdFs, VtdFsConfig};
    use super::vtd_ss::{VtdSs, VtdSsConfig};
    for agaw in [39, 48, 57] {
        let cfg = VtdSsConfig { agaw, ..VTD_SS_48 };
        top_of_the_address_space(new_table(VtdSs::new(cfg).unwrap()), 4 * G1, "vtd ss");
    }
    for levels in [4, 5] {
        let cfg = VtdFsConfig {
            levels,
            haw: 46,
            page_1g: true,
            execute_disable: false,
            dirty_tracking: false,
        };
        top_of_the_address_space(new_table(VtdFs::new(cfg).unwrap()), 4 * G1, "vtd fs");
    }
    for (granule_log2, ias) in [(12, 48), (12, 40), (14, 47), (16, 48), (16, 42)] {
        let cfg = ArmS2Config {
            granule_log2,
            ias,
            oas: 48,
            ..ARM_S2_4K
        };
        top_of_the_address_space(new_table(ArmS2::new(cfg).unwrap()), 1 << 40, "arm s2");
    }
    for ias in [39, 48, 57, 63] {
        let cfg = AmdV1Config { ias, ..AMD_V1_48 };
        top_of_the_address_space(new_table(AmdV1::new(cfg).unwrap()), 1 << 40, "amd v1");
    }
}

/// The same at level 1 (`block_unmap_table_for` + `unmap_blocks`): thread A unmaps block 15 of
/// a run of 16 blocks of 2 MiB (Arm, 4 KiB granule) and has made blocks 0..=12 stand alone;
/// thread B unmaps block 12 with the level-1 fast path, which reads that one entry
/// (`may_cut_runs`), finds it out of the run and clears it.
#[test]
fn block_unmap_beside_a_half_broken_run_arm() {
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    t.map(Iova::new(base), PhysAddr::new(pa), 16 * M2, RW)
        .unwrap();
    let run_of = |raw: u64| t.format().leaf_run_log2(1, raw);
    break_block_run_partly(&t, base, pa, 0..13);
    let mut g = Gather::new();
    assert_eq!(t.unmap(Iova::new(base + 12 * M2), M2, &mut g), Ok(M2));
    let mut stale = Vec::new();
    for i in 13..16u64 {
        leaf_slot(&t, base + i * M2, &mut |_, raw| {
            if run_of(raw) != 0 {
                stale.push(i);
            }
        });
    }
    assert!(
        stale.is_empty(),
        "B's unmap of block 12 returned (gather {:x?}, page sizes {:#x}) while blocks {stale:?} \
         still carry the run of 16 over it",
        g.ranges(),
        g.page_sizes()
    );
    g.release(t.allocator(), done()).unwrap();
}

/// The level-1 entry that maps `iova` (0 for a hole).
fn raws_at_level1<F: Format>(t: &PageTable<F, TestAlloc>, iova: u64) -> u64 {
    let mut v = 0;
    let top = t.geometry().top_level();
    let _ = t.visit(t.root_table(), top, iova, M2, &mut |_, _, raw| {
        v = raw;
        Ok(())
    });
    v
}

/// The general walk at level 1 (`unmap_level` + `clear_stretch`): the whole blocks of a range
/// that starts in the leaf table before them are cleared in one loop, whose rule-4 check looks
/// at the stretch's first and last block only. Thread A unmaps block 15 of a run of 16 blocks
/// of 2 MiB (blocks `run..run + 16` of the level-1 table) and has made blocks `run..=run + 12`
/// stand alone; thread B unmaps the last page before block 0 and blocks `0..=run + 12`. A run
/// whose first block B covers (at the stretch's first block) and a run whose last block B cuts
/// (at its last): B must complete the break before it returns, and leave whole runs it covers
/// to be cleared as plain blocks.
fn general_walk_block_unmap_beside_a_half_broken_run(run: u64) {
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    // The leaf table before block 0 (B's range starts in it), and blocks 0..run + 16.
    t.map(Iova::new(base - K4), PhysAddr::new(pa - K4), K4, RW)
        .unwrap();
    t.map(Iova::new(base), PhysAddr::new(pa), (run + 16) * M2, RW)
        .unwrap();
    let run_of = |raw: u64| t.format().leaf_run_log2(1, raw);
    break_block_run_partly(&t, base, pa, run..run + 13);
    let mut g = Gather::new();
    let b_len = K4 + (run + 13) * M2;
    assert_eq!(t.unmap(Iova::new(base - K4), b_len, &mut g), Ok(b_len));
    for i in 0..run + 13 {
        let raw = raws_at_level1(&t, base + i * M2);
        assert_eq!(raw, 0, "block {i} after B's unmap");
    }
    let mut stale = Vec::new();
    for i in run + 13..run + 16 {
        leaf_slot(&t, base + i * M2, &mut |_, raw| {
            if run_of(raw) != 0 {
                stale.push(i);
            }
        });
    }
    assert!(
        stale.is_empty(),
        "B's unmap up to block {} returned (gather {:x?}, page sizes {:#x}) while blocks \
         {stale:?} still carry the run of 16 over it",
        run + 12,
        g.ranges(),
        g.page_sizes()
    );
    // Exactly B's range and the run it cut, in 2 MiB leaves (and B's one page).
    let span = g.span().unwrap();
    assert_eq!(
        (span.start.get(), span.end.get()),
        (base - K4, base + (run + 16) * M2)
    );
    assert!(g.leaf_only());
    g.release(t.allocator(), done()).unwrap();
}

#[test]
fn general_walk_block_unmap_beside_a_half_broken_run_at_its_start_arm() {
    general_walk_block_unmap_beside_a_half_broken_run(0);
}

#[test]
fn general_walk_block_unmap_beside_a_half_broken_run_at_its_end_arm() {
    general_walk_block_unmap_beside_a_half_broken_run(16);
}

/// As above, B's range starting inside the run: B unmaps blocks 5..=16 and the first page of
/// block 17 (a leaf table), so its stretch of whole blocks is 5..=16, whose last block stands
/// alone outside any run: only the check at the stretch's first block finds the run.
#[test]
fn general_walk_block_unmap_from_inside_a_half_broken_run_arm() {
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    t.map(Iova::new(base), PhysAddr::new(pa), 17 * M2, RW)
        .unwrap();
    t.map(
        Iova::new(base + 17 * M2),
        PhysAddr::new(pa + 17 * M2),
        K4,
        RW,
    )
    .unwrap();
    let run_of = |raw: u64| t.format().leaf_run_log2(1, raw);
    break_block_run_partly(&t, base, pa, 0..13);
    let mut g = Gather::new();
    let (b, b_len) = (base + 5 * M2, 12 * M2 + K4);
    assert_eq!(t.unmap(Iova::new(b), b_len, &mut g), Ok(b_len));
    let mut stale = Vec::new();
    for i in 0..5u64 {
        leaf_slot(&t, base + i * M2, &mut |_, raw| {
            if run_of(raw) != 0 {
                stale.push(i);
            }
        });
    }
    for i in 13..16u64 {
        // B cleared these: no leaf of the run is left over them.
        assert!(t.query(Iova::new(base + i * M2)).is_none(), "block {i}");
    }
    assert!(
        stale.is_empty(),
        "B's unmap from block 5 returned (gather {:x?}) while blocks {stale:?} still carry the \
         run of 16 over its blocks 5..=15",
        g.ranges()
    );
    let span = g.span().unwrap();
    assert_eq!((span.start.get(), span.end.get()), (base, b + b_len));
    g.release(t.allocator(), done()).unwrap();
}

/// The general walk writes the blocks of a range that starts in a leaf table as `fill_blocks`
/// does (`write_stretch`): whole aligned runs of 16 carry the hint, the blocks outside them
/// stand alone; a block already there fails the map with `Overlap` at it, nothing written.
#[test]
fn general_walk_writes_block_runs_arm() {
    let t = arm_s2_4k(false);
    let (base, pa) = (G1, 4 * G1);
    // The last page before block 0, blocks 0..=34 (runs 0..16 and 16..32, then 3 alone).
    t.map(
        Iova::new(base - K4),
        PhysAddr::new(pa - K4),
        K4 + 35 * M2,
        RW,
    )
    .unwrap();
    let run_of = |i: u64| {
        let mut r = None;
        leaf_slot(&t, base + i * M2, &mut |_, raw| {
            r = Some(t.format().leaf_run_log2(1, raw))
        });
        r
    };
    let runs: Vec<_> = (0..35).map(run_of).collect();
    let want: Vec<_> = (0..35u64)
        .map(|i| Some(if i < 32 { 4 } else { 0 }))
        .collect();
    assert_eq!(runs, want);
    for i in 0..35u64 {
        let got = t.query(Iova::new(base + i * M2 + K4)).map(|m| m.pa.get());
        assert_eq!(got, Some(pa + i * M2 + K4), "block {i}");
    }
    // A block in the middle of a later map's blocks: the map fails there, changing nothing.
    let (b2, p2) = (2 * G1, 8 * G1);
    t.map(Iova::new(b2 + 20 * M2), PhysAddr::new(p2 + 20 * M2), M2, RW)
        .unwrap();
    t.map(Iova::new(b2 - K4), PhysAddr::new(p2 - K4), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    t.unmap(Iova::new(b2 - K4), K4, &mut g).unwrap();
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(
        t.map(Iova::new(b2 - K4), PhysAddr::new(p2 - K4), K4 + 32 * M2, RW),
        Err(Error::Overlap {
            iova: Iova::new(b2 + 20 * M2)
        })
    );
    assert!((0..32u64)
        .filter(|&i| i != 20)
        .all(|i| t.query(Iova::new(b2 + i * M2)).is_none()));
}

/// All-or-nothing maps through the leaf-table fast path (`plan_leaves`' four-per-step OR and
/// its tail) and the block fast path: a map of `n` pages (or blocks) whose page `p` is mapped
/// already fails with `Overlap` at `p` and changes nothing, for the ranges ending at entry 511.
#[test]
fn fast_path_maps_are_all_or_nothing() {
    let t = arm_s2_4k(false);
    let mapped = |t: &PageTable<ArmS2, TestAlloc>, iova: u64, len: u64| {
        let mut v = Vec::new();
        t.for_each_mapping(Iova::new(iova), len, |l| v.push(l))
            .unwrap();
        v
    };
    for (unit, base) in [(K4, G1), (M2, 4 * G1)] {
        // The leaf table (the level-1 table) exists.
        t.map(Iova::new(base), PhysAddr::new(base), unit, RW)
            .unwrap();
        for n in 1..=9u64 {
            for first in [1u64, 255 - n / 2, 512 - n] {
                for p in 0..n {
                    let iova = base + first * unit;
                    let at = iova + p * unit;
                    t.map(Iova::new(at), PhysAddr::new(at), unit, Prot::READ)
                        .unwrap();
                    let before = mapped(&t, base, 512 * unit);
                    assert_eq!(
                        t.map(Iova::new(iova), PhysAddr::new(iova), n * unit, RW),
                        Err(Error::Overlap {
                            iova: Iova::new(at)
                        }),
                        "unit {unit:#x} n {n} first {first} p {p}"
                    );
                    assert_eq!(
                        mapped(&t, base, 512 * unit),
                        before,
                        "n {n} first {first} p {p}"
                    );
                    let mut g = Gather::new();
                    assert_eq!(t.unmap(Iova::new(at), unit, &mut g), Ok(unit));
                    g.release(t.allocator(), done()).unwrap();
                }
            }
        }
    }
}

/// `plan_map` checks a stretch of block slots with one `first_present` (cd40009): a slot of
/// the stretch holding a leaf table stops it, and the plan goes down into that table. A map of
/// blocks over a leaf table with a page in the range fails with `Overlap` at that page and
/// changes nothing, pages allocated included; over the same table emptied it maps all of the
/// range, with the tables the plan counted (a walk short of a table would fail with `NoMemory`
/// part-way).
#[test]
fn block_stretch_stops_at_a_leaf_table() {
    let t = arm_s2_4k(false);
    let leaves = |t: &PageTable<ArmS2, TestAlloc>, iova: u64, len: u64| {
        let mut v = Vec::new();
        t.for_each_mapping(Iova::new(iova), len, |l| v.push(l))
            .unwrap();
        v
    };
    let base = 4 * G1;
    for slot in [0u64, 1, 5, 9] {
        let page = base + slot * M2 + 3 * K4;
        t.map(Iova::new(page), PhysAddr::new(page), K4, RW).unwrap();
        let before = (leaves(&t, base, G1), t.allocator().live_pages());
        assert_eq!(
            t.map(Iova::new(base), PhysAddr::new(base), 10 * M2, RW),
            Err(Error::Overlap {
                iova: Iova::new(page)
            }),
            "page table at block slot {slot}"
        );
        assert_eq!(
            (leaves(&t, base, G1), t.allocator().live_pages()),
            before,
            "slot {slot}"
        );
        // The leaf table stays, empty.
        let mut g = Gather::new();
        assert_eq!(t.unmap(Iova::new(page), K4, &mut g), Ok(K4));
        g.release(t.allocator(), done()).unwrap();
        assert_eq!(
            t.map(Iova::new(base), PhysAddr::new(base), 10 * M2, RW),
            Ok(()),
            "over the emptied leaf table at slot {slot}"
        );
        let mapped = leaves(&t, base, G1);
        assert_eq!(
            mapped.iter().map(|l| 1u64 << l.size_log2).sum::<u64>(),
            10 * M2,
            "slot {slot}"
        );
        assert!(
            mapped.iter().all(|l| l.pa.get() == l.iova.get()),
            "slot {slot}: {mapped:?}"
        );
        let mut g = Gather::new();
        assert_eq!(t.unmap(Iova::new(base), 10 * M2, &mut g), Ok(10 * M2));
        g.release(t.allocator(), done()).unwrap();
    }
}

/// The leaf table that maps `iova` (every level above it a table pointer).
fn leaf_table<F: Format>(t: &PageTable<F, TestAlloc>, iova: u64) -> super::table::Table {
    let g = *t.geometry();
    let mut tab = t.root_table();
    for level in (1..g.levels).rev() {
        // SAFETY: `tab` is a live table at `level`; the index comes from an in-range IOVA.
        let raw = unsafe { tab.slot(g.index(level, iova)) }.load(Ordering::Acquire);
        tab = t.child(raw).expect("a table pointer");
    }
    tab
}

/// AMD-Vi v1 has runs of every size from 2 to 256 leaves, so once a run's break is complete
/// another thread may map a smaller run inside its block. Thread A unmaps page 15 of a 16-page
/// run and is preempted in its break (it read the run's leaf before); thread B unmaps pages 4
/// and 5 (completing the break), and maps them again elsewhere as a run of two; A resumes its
/// break with the leaf it read. A must leave B's new run alone: rewriting it as leaves of the
/// old run would map B's IOVAs to the old run's freed pages.
#[test]
fn a_resumed_break_leaves_a_new_run_in_its_block_alone_amd_v1() {
    let t = amd_v1();
    let (base, pa, q) = (G1, 4 * G1, 8 * G1);
    t.map(Iova::new(base), PhysAddr::new(pa), 16 * K4, RW)
        .unwrap();
    let leaf = leaf_table(&t, base);
    let idx = t.geometry().index(0, base + 15 * K4);
    // SAFETY: `leaf` is live and `idx` indexes it.
    let a_read = unsafe { leaf.slot(idx) }.load(Ordering::Acquire);
    assert_eq!(t.format().leaf_run_log2(0, a_read), 4);
    let mut g = Gather::new();
    assert_eq!(
        t.unmap(Iova::new(base + 4 * K4), 2 * K4, &mut g),
        Ok(2 * K4)
    );
    g.release(t.allocator(), done()).unwrap();
    t.map(Iova::new(base + 4 * K4), PhysAddr::new(q), 2 * K4, RW)
        .unwrap();
    let before = raws(&t, base + 4 * K4, 2);
    assert!(
        before.iter().all(|&e| t.format().leaf_run_log2(0, e) == 1),
        "B's map wrote a run of two: {before:#x?}"
    );
    // A resumes: its break, with the leaf it read before.
    let range = (base + 15 * K4, base + 16 * K4);
    t.break_contiguous(leaf, 0, idx, base + 15 * K4, a_read, range, &mut g);
    for (i, want) in [(4u64, q), (5, q + K4)] {
        let got = t.query(Iova::new(base + i * K4)).map(|m| m.pa.get());
        assert_eq!(
            got,
            Some(want),
            "page {i} (B's new run) after A's resumed break: {:#x?}",
            raws(&t, base + 4 * K4, 2)
        );
    }
    g.release(t.allocator(), done()).unwrap();
}
