//! Unit tests of the generic walker through the VT-d second-stage and Arm stage-2 formats.
//! The format-by-configuration conformance suite with the reference walkers is in `tests/`.

extern crate std;

use std::collections::BTreeMap;

use super::arm_s2::{ArmS2, ArmS2Config};
use super::table::Table;
use super::testutil::{
    done, new_table, test_alloc, TestAlloc, AMD_V1_48, ARM_S2_4K, G1, K4, M2, RW, VTD_SS_48,
};
use super::vtd_ss::{VtdSs, VtdSsConfig};
use super::*;
use crate::mem::{Iova, PageAllocator, PhysAddr, WalkerCoherency};
use crate::sim::arena::FailPolicy;

fn vtd(agaw: u32) -> PageTable<VtdSs, TestAlloc> {
    let cfg = VtdSsConfig {
        agaw,
        dirty_tracking: true,
        ..VTD_SS_48
    };
    new_table(VtdSs::new(cfg).unwrap())
}

fn iova(v: u64) -> Iova {
    Iova::new(v)
}
fn pa(v: u64) -> PhysAddr {
    PhysAddr::new(v)
}

#[test]
fn largest_page_is_chosen() {
    let t = vtd(48);
    // 1 GiB + 2 MiB + 4 KiB starting at 1 GiB: one 1G leaf, one 2M leaf, one 4K leaf.
    t.map(iova(G1), pa(2 * G1), G1 + M2 + K4, RW).unwrap();
    assert_eq!(t.query(iova(G1 + 5)).unwrap().size_log2, 30);
    assert_eq!(t.query(iova(G1 + 5)).unwrap().pa, pa(2 * G1 + 5));
    assert_eq!(t.query(iova(2 * G1)).unwrap().size_log2, 21);
    assert_eq!(t.query(iova(2 * G1 + M2)).unwrap().size_log2, 12);
    assert_eq!(t.query(iova(2 * G1 + M2 + K4)), None);
    // root + PDPT + PD + PT
    assert_eq!(t.allocator().stats().live_pages, 4);
    let mut leaves = std::vec::Vec::new();
    t.for_each_mapping(iova(0), 1 << 40, |l| {
        leaves.push((l.iova.get(), l.size_log2))
    })
    .unwrap();
    assert_eq!(leaves, [(G1, 30), (2 * G1, 21), (2 * G1 + M2, 12)]);
}

#[test]
fn misaligned_pa_forces_small_pages() {
    let t = vtd(39);
    t.map(iova(0), pa(K4), M2, Prot::READ).unwrap();
    assert_eq!(t.query(iova(M2 - 1)).unwrap().size_log2, 12);
    assert_eq!(t.query(iova(M2 - 1)).unwrap().pa, pa(M2 + K4 - 1));
    assert_eq!(t.query(iova(0)).unwrap().prot, Prot::READ);
}

#[test]
fn bad_arguments_change_nothing() {
    let t = vtd(39);
    t.map(iova(0x1000), pa(0x1000), K4, RW).unwrap();
    let before = t.allocator().stats().live_pages;
    assert_eq!(t.map(iova(0), pa(0), 0, RW), Err(Error::ZeroLength));
    assert!(matches!(
        t.map(iova(0x800), pa(0), K4, RW),
        Err(Error::MisalignedIova { .. })
    ));
    assert!(matches!(
        t.map(iova(0), pa(0x800), K4, RW),
        Err(Error::MisalignedPa { .. })
    ));
    assert!(matches!(
        t.map(iova(0), pa(0), 0x800, RW),
        Err(Error::MisalignedLength { .. })
    ));
    assert!(matches!(
        t.map(iova(u64::MAX - 0xfff), pa(0), 0x2000, RW),
        Err(Error::Overflow { .. })
    ));
    assert!(matches!(
        t.map(iova(1 << 39), pa(0), K4, RW),
        Err(Error::IovaOutOfRange { .. })
    ));
    assert!(matches!(
        t.map(iova(0), pa(1 << 46), K4, RW),
        Err(Error::PaOutOfRange { .. })
    ));
    assert!(matches!(
        t.map(iova(0), pa(0), K4, Prot::EXEC),
        Err(Error::UnsupportedProt { .. })
    ));
    // Overlap in the middle of a large range: nothing of the range gets mapped.
    assert_eq!(
        t.map(iova(0), pa(0), 64 * M2, RW),
        Err(Error::Overlap { iova: iova(0x1000) })
    );
    assert_eq!(t.query(iova(0)), None);
    assert_eq!(t.query(iova(M2)), None);
    assert_eq!(t.allocator().stats().live_pages, before);
    assert_eq!(t.query(iova(0x1000)).unwrap().pa, pa(0x1000));
}

#[test]
fn no_memory_changes_nothing() {
    let t = vtd(48);
    t.allocator().set_fail_policy(FailPolicy::AfterN(2));
    assert_eq!(t.map(iova(0), pa(0), K4, RW), Err(Error::NoMemory));
    assert_eq!(t.allocator().stats().live_pages, 1);
    assert_eq!(t.query(iova(0)), None);
}

#[test]
fn unmap_everything_frees_all_but_root_after_release() {
    let t = vtd(48);
    t.map(iova(0), pa(0), 3 * G1 + 7 * M2 + 9 * K4, RW).unwrap();
    t.map(iova(1 << 40), pa(K4), 300 * K4, RW).unwrap();
    let mut g = Gather::new();
    let bytes = t.unmap(iova(0), 1 << 48, &mut g).unwrap();
    assert_eq!(bytes, 3 * G1 + 7 * M2 + 9 * K4 + 300 * K4);
    assert!(!g.leaf_only());
    assert_eq!(g.page_sizes(), K4 | M2 | G1);
    // Pages are held, not freed, until the gather is released.
    let held = g.freed_pages();
    assert_eq!(t.allocator().stats().live_pages, 1 + held);
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, 1);
    assert!(g.is_empty());
}

#[test]
fn partial_unmap_leaves_tables_and_is_leaf_only() {
    let t = vtd(48);
    t.map(iova(0), pa(0), 16 * K4, RW).unwrap();
    let mut g = Gather::new();
    assert_eq!(t.unmap(iova(4 * K4), 4 * K4, &mut g).unwrap(), 4 * K4);
    assert!(g.leaf_only());
    assert_eq!(
        g.ranges(),
        &[IovaRange {
            start: iova(4 * K4),
            end: iova(8 * K4)
        }]
    );
    assert_eq!(g.freed_pages(), 0);
    assert_eq!(t.query(iova(3 * K4)).unwrap().pa, pa(3 * K4));
    assert_eq!(t.query(iova(4 * K4)), None);
    assert_eq!(t.query(iova(8 * K4)).unwrap().pa, pa(8 * K4));
    g.release(t.allocator(), done()).unwrap();
}

#[test]
fn partial_superpage_unmap_splits_or_refuses() {
    let mut t = vtd(48);
    t.map(iova(G1), pa(G1), G1, RW).unwrap();
    t.set_split_policy(SplitPolicy::Refuse);
    let mut g = Gather::new();
    assert_eq!(
        t.unmap(iova(G1 + M2 + K4), K4, &mut g),
        Err(Error::SplitRefused {
            iova: iova(G1 + M2 + K4)
        })
    );
    assert!(g.is_empty());
    assert_eq!(t.query(iova(G1 + M2 + K4)).unwrap().size_log2, 30);
    t.set_split_policy(SplitPolicy::Split);
    let live = t.allocator().stats().live_pages;
    assert_eq!(t.unmap(iova(G1 + M2 + K4), K4, &mut g).unwrap(), K4);
    // 1G -> 512 x 2M, then one 2M -> 512 x 4K: two new tables.
    assert_eq!(t.allocator().stats().live_pages, live + 2);
    assert_eq!(t.query(iova(G1 + M2 + K4)), None);
    assert_eq!(t.query(iova(G1 + M2)).unwrap().size_log2, 12);
    assert_eq!(
        t.query(iova(G1 + 2 * M2 - 1)).unwrap().pa,
        pa(G1 + 2 * M2 - 1)
    );
    assert_eq!(t.query(iova(G1)).unwrap().size_log2, 21);
    assert_eq!(t.query(iova(2 * G1 - 1)).unwrap().pa, pa(2 * G1 - 1));
    assert!(!g.leaf_only());
    g.release(t.allocator(), done()).unwrap();
}

#[test]
fn arm_split_needs_bbml2() {
    let cfg = ArmS2Config {
        bbml2: false,
        ..ARM_S2_4K
    };
    let f = ArmS2::new(cfg).unwrap();
    // IAS 40 with 4K: start level 1 with two concatenated tables (Arm ARM D8.2.8).
    assert_eq!((f.start_level(), f.concatenated()), (1, 2));
    let t = new_table(f);
    t.map(iova(0), pa(0), M2, RW).unwrap();
    let mut g = Gather::new();
    assert_eq!(
        t.unmap(iova(K4), K4, &mut g),
        Err(Error::SplitUnsupported { iova: iova(K4) })
    );
    assert!(g.is_empty());
}

#[test]
fn dirty_bits_are_read_and_cleared() {
    let t = vtd(48);
    t.map(iova(0), pa(0), 4 * K4, RW).unwrap();
    // Play the hardware: set D (bit 9) on the second PTE.
    let leaf = t.query(iova(K4)).unwrap();
    assert_eq!(leaf.size_log2, 12);
    let mut pt: Option<*const core::sync::atomic::AtomicU64> = None;
    t.visit(t.root_table(), 3, K4, K4, &mut |slot, _, _| {
        pt = Some(slot as *const _);
        Ok(())
    })
    .unwrap();
    // SAFETY: the slot belongs to the live table `t`.
    unsafe { &*pt.unwrap() }.fetch_or(1 << 9, core::sync::atomic::Ordering::Relaxed);
    let mut dirty = std::vec::Vec::new();
    let mut g = Gather::new();
    t.read_and_clear_dirty(iova(0), 4 * K4, |i, s| dirty.push((i.get(), s)), &mut g)
        .unwrap();
    assert_eq!(dirty, [(K4, 12)]);
    assert!(g.leaf_only());
    dirty.clear();
    t.read_and_clear_dirty(iova(0), 4 * K4, |i, s| dirty.push((i.get(), s)), &mut g)
        .unwrap();
    assert!(dirty.is_empty());
    g.release(t.allocator(), done()).unwrap();
}

/// A clearing read of part of a dirty 2 MiB leaf reports the leaf and leaves it dirty (its
/// gather empty: nothing cleaned, nothing to invalidate); a read of the rest reports it again,
/// and one covering it whole cleans it (its gather naming exactly the leaf).
#[test]
fn a_clearing_read_cleans_only_leaves_inside_its_range() {
    let t = vtd(48);
    t.map(iova(M2), pa(M2), M2, RW).unwrap();
    assert_eq!(t.query(iova(M2)).unwrap().size_log2, 21);
    let mut pt: Option<*const core::sync::atomic::AtomicU64> = None;
    t.visit(t.root_table(), 3, M2, K4, &mut |slot, _, _| {
        pt = Some(slot as *const _);
        Ok(())
    })
    .unwrap();
    // SAFETY: the slot belongs to the live table `t`.
    unsafe { &*pt.unwrap() }.fetch_or(1 << 9, core::sync::atomic::Ordering::Relaxed);
    let read = |at: u64, len: u64| {
        let (mut seen, mut g) = (std::vec::Vec::new(), Gather::new());
        t.read_and_clear_dirty(iova(at), len, |i, s| seen.push((i.get(), s)), &mut g)
            .unwrap();
        let ranges: std::vec::Vec<_> = g
            .ranges()
            .iter()
            .map(|r| (r.start.get(), r.end.get()))
            .collect();
        g.release(t.allocator(), done()).unwrap();
        (seen, ranges)
    };
    // Each edge: the first page, the last page, a range from below the leaf into it.
    for (at, len) in [
        (M2, K4),
        (2 * M2 - K4, K4),
        (M2 - K4, 2 * K4),
        (M2 + K4, M2),
    ] {
        assert_eq!(
            read(at, len),
            (std::vec![(M2, 21)], std::vec![]),
            "{at:#x}+{len:#x}"
        );
    }
    assert_eq!(
        read(M2 - K4, M2 + 2 * K4),
        (std::vec![(M2, 21)], std::vec![(M2, 2 * M2)])
    );
    assert_eq!(read(M2, M2), (std::vec![], std::vec![]));
}

/// iommufd `SET_DIRTY_TRACKING` / `GET_DIRTY_BITMAP_NO_CLEAR` at the engine: while tracking
/// is on an Arm stage-2 map writes writable-clean leaves (DBM, `S2AP[1]` clear), off
/// writable-dirty ones; turning it on cleans them; `NoClear` reports without cleaning.
#[test]
fn set_dirty_tracking_cleans_and_no_clear_keeps() {
    let f = ArmS2::new(ArmS2Config {
        dirty_tracking: true,
        ..ARM_S2_4K
    })
    .unwrap();
    let mut t = new_table(f);
    let read = |t: &PageTable<ArmS2, _>, how| {
        let (mut seen, mut g) = (std::vec::Vec::new(), Gather::new());
        t.read_dirty(iova(0), 4 * K4, how, |i, _| seen.push(i.get()), &mut g)
            .unwrap();
        let n = g.ranges().len();
        g.release(t.allocator(), done()).unwrap();
        (seen, n)
    };
    // Off (a new table's state): writable-dirty.
    t.map(iova(0), pa(0), K4, RW).unwrap();
    let mut g = Gather::new();
    t.set_dirty_tracking(true, &mut g).unwrap();
    assert_eq!(
        g.ranges().len(),
        1,
        "the dirty leaf was cleaned into the gather"
    );
    g.release(t.allocator(), done()).unwrap();
    t.map(iova(K4), pa(K4), K4, RW).unwrap();
    assert_eq!(read(&t, DirtyRead::Clear), (std::vec![], 0));
    t.set_dirty_tracking(false, &mut Gather::new()).unwrap();
    t.map(iova(2 * K4), pa(2 * K4), K4, RW).unwrap();
    assert_eq!(read(&t, DirtyRead::NoClear), (std::vec![2 * K4], 0));
    assert_eq!(read(&t, DirtyRead::NoClear), (std::vec![2 * K4], 0));
    assert_eq!(read(&t, DirtyRead::Clear), (std::vec![2 * K4], 1));
    assert_eq!(read(&t, DirtyRead::NoClear), (std::vec![], 0));
}

#[test]
fn random_sequences_match_a_model() {
    let t = vtd(39);
    let mut model: BTreeMap<u64, u64> = BTreeMap::new(); // 4K page -> pa
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    // 4 x 2 MiB of 4K pages; under Miri a window that still crosses one 2 MiB boundary.
    let window = if cfg!(miri) { 640 } else { 4 * 512 };
    for _ in 0..if cfg!(miri) { 50 } else { 2000 } {
        let page = rnd(window);
        let big = rnd(4) == 0;
        let pages = 1 + rnd(if big { window / 2 } else { 8 });
        let pages = pages.min(window - page);
        let (start, len) = (page * K4, pages * K4);
        let do_map = rnd(2) == 0;
        let aligned = rnd(2);
        if do_map {
            let target = rnd(1 << 20) * M2 + (page % 512) * K4 * aligned;
            let r = t.map(iova(start), pa(target), len, RW);
            let overlaps = (page..page + pages).any(|p| model.contains_key(&p));
            assert_eq!(r.is_err(), overlaps, "map {start:#x}+{len:#x}: {r:?}");
            if r.is_ok() {
                for i in 0..pages {
                    model.insert(page + i, target + i * K4);
                }
            }
        } else {
            let mut g = Gather::new();
            let bytes = t.unmap(iova(start), len, &mut g).unwrap();
            let removed = (page..page + pages)
                .filter(|p| model.remove(p).is_some())
                .count();
            assert_eq!(bytes, removed as u64 * K4);
            g.release(t.allocator(), done()).unwrap();
        }
    }
    for p in 0..window {
        assert_eq!(
            t.query(iova(p * K4)).map(|m| m.pa.get()),
            model.get(&p).copied()
        );
    }
}

#[test]
fn concurrent_disjoint_maps() {
    // Under Miri, which checks every interleaving it runs for data races, fewer pages: the
    // threads still meet in the same PT and the same PD.
    const PER_THREAD: u64 = if cfg!(miri) { 24 } else { 256 };
    let t = vtd(48);
    std::thread::scope(|s| {
        for th in 0..4u64 {
            let t = &t;
            s.spawn(move || {
                // The last pages of one PT and the first of the next.
                for i in 512 / 4 - PER_THREAD / 2..512 / 4 + PER_THREAD / 2 {
                    let at = (i * 4 + th) * K4;
                    t.map(iova(at), pa(at + G1), K4, RW).unwrap();
                }
            });
        }
    });
    for p in 512 - 2 * PER_THREAD..512 + 2 * PER_THREAD {
        assert_eq!(t.query(iova(p * K4)).unwrap().pa, pa(p * K4 + G1));
    }
    // root + PDPT + PD + two PTs: no table was installed twice.
    assert_eq!(t.allocator().stats().live_pages, 5);
}

#[test]
fn destroy_hands_every_page_to_the_gather() {
    let t = vtd(48);
    t.map(iova(0), pa(0), 5 * M2 + K4, RW).unwrap();
    let live = t.allocator().stats().live_pages;
    let mut g = Gather::new();
    let alloc_ptr: *const TestAlloc = t.allocator();
    // Keep the allocator alive across destroy: the table owns it, so destroy a borrowed one.
    let _ = alloc_ptr;
    let t2 = PageTable::new(*t.format(), t.allocator(), WalkerCoherency::Coherent).unwrap();
    t2.map(iova(0), pa(0), 5 * M2 + K4, RW).unwrap();
    let after = t.allocator().stats().live_pages;
    t2.destroy(&mut g).unwrap();
    assert_eq!(g.freed_pages(), after - live);
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, live);
}

#[test]
fn non_coherent_walker_is_told_about_every_write() {
    let cfg = VtdSsConfig {
        page_1g: false,
        snoop: true,
        ..VTD_SS_48
    };
    let alloc = test_alloc();
    let before = alloc.start_sync_recording();
    let t = PageTable::new(
        VtdSs::new(cfg).unwrap(),
        &alloc,
        WalkerCoherency::NonCoherent,
    )
    .unwrap();
    t.map(iova(0), pa(0), M2 + 3 * K4, RW).unwrap();
    let mut g = Gather::new();
    t.unmap(iova(M2), K4, &mut g).unwrap();
    g.release(&alloc, done()).unwrap();
    // Root, PDPT, PD (holding the 2 MiB leaf) and one PT: every word of each new table and
    // every entry written since was reported to the hook.
    assert_eq!(alloc.stats().live_pages, 4);
    assert_eq!(alloc.unsynced_words(&before), std::vec::Vec::<u64>::new());
    assert_eq!(alloc.stats().syncs_outside_live, 0);
}

#[test]
fn reclaim_empty_unlinks_tables_left_by_partial_unmaps() {
    let mut t = vtd(48);
    t.map(iova(0), pa(0), 4 * K4, RW).unwrap();
    t.map(iova(G1), pa(0), K4, RW).unwrap();
    let mut g = Gather::new();
    // Page-by-page unmaps empty the tables without covering them: they stay linked.
    for i in 0..4 {
        t.unmap(iova(i * K4), K4, &mut g).unwrap();
    }
    assert_eq!(g.freed_pages(), 0);
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, 6); // root, PDPT, PD + PT for 0, PD + PT for 1G
    assert_eq!(t.reclaim_empty(&mut g).unwrap(), 2);
    assert!(!g.leaf_only());
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, 4);
    assert_eq!(t.query(iova(G1)).unwrap().pa, pa(0));
    // A 2 MiB map at 0 now gets a 2 MiB leaf again.
    t.map(iova(0), pa(0), M2, RW).unwrap();
    assert_eq!(t.query(iova(0)).unwrap().size_log2, 21);
    g.release(t.allocator(), done()).unwrap();
}

#[test]
fn unmap_exclusive_unlinks_the_tables_it_empties() {
    let mut t = vtd(48);
    t.map(iova(0), pa(0), K4, RW).unwrap();
    t.map(iova(2 * G1), pa(0), K4, RW).unwrap();
    // Root, PDPT, then a PD and a PT for each page.
    assert_eq!(t.allocator().stats().live_pages, 6);
    let mut g = Gather::new();
    // The range covers a sliver of the PT only; the PT and then its PD are left empty.
    assert_eq!(t.unmap_exclusive(iova(0), 2 * K4, &mut g), Ok(K4));
    assert_eq!(g.freed_pages(), 2);
    assert!(!g.leaf_only());
    assert_eq!(t.allocator().stats().live_pages, 6, "held until released");
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, 4);
    assert_eq!(t.query(iova(2 * G1)).unwrap().pa, pa(0));
    // The last page: PT, PD and PDPT go; the root stays.
    assert_eq!(t.unmap_exclusive(iova(2 * G1), K4, &mut g), Ok(K4));
    g.release(t.allocator(), done()).unwrap();
    assert_eq!(t.allocator().stats().live_pages, 1);
    assert!(t.allocator().bad_frees().is_empty());
}

/// An allocator that, the first time the engine cleans a whole new table page (which it does
/// after reading the empty slot and before publishing the table with compare-and-swap), maps
/// a disjoint range through the same table: that map installs the table first, so the outer
/// compare-and-swap deterministically loses.
struct Racer<'a> {
    arena: &'a TestAlloc,
    table: std::sync::OnceLock<&'a PageTable<VtdSs, &'a Racer<'a>>>,
    fired: std::sync::atomic::AtomicBool,
}

// SAFETY: forwards to the arena, which upholds the contract; the hook only adds a map.
unsafe impl PageAllocator for Racer<'_> {
    fn alloc(&self, size_log2: u32) -> Option<crate::mem::Page> {
        self.arena.alloc(size_log2)
    }
    unsafe fn free(&self, page: crate::mem::Page, size_log2: u32) {
        // SAFETY: the caller upholds `free`'s contract for the arena the page came from.
        unsafe { self.arena.free(page, size_log2) }
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<core::ptr::NonNull<u8>> {
        self.arena.phys_to_virt(pa)
    }
    fn sync_for_device(&self, va: core::ptr::NonNull<u8>, len: usize) {
        self.arena.sync_for_device(va, len);
        if len == 4096 {
            if let Some(t) = self.table.get() {
                if !self.fired.swap(true, core::sync::atomic::Ordering::Relaxed) {
                    t.map(iova(G1 + M2 + K4), pa(0x5000), K4, RW).unwrap();
                }
            }
        }
    }
}

#[test]
fn the_loser_of_a_table_install_returns_its_page() {
    let arena = test_alloc();
    let racer = Racer {
        arena: &arena,
        table: std::sync::OnceLock::new(),
        fired: false.into(),
    };
    let f = VtdSs::new(VTD_SS_48).unwrap();
    let t = PageTable::new(f, &racer, WalkerCoherency::NonCoherent).unwrap();
    assert!(racer.table.set(&t).is_ok());
    // Needs a PDPT, a PD and a PT; the racer installs all three first (for its own page in the
    // same PT), so every one of this map's reserved tables loses or goes unused.
    t.map(iova(G1 + M2), pa(0x4000), K4, RW).unwrap();
    assert!(racer.fired.load(core::sync::atomic::Ordering::Relaxed));
    assert_eq!(t.query(iova(G1 + M2)).unwrap().pa, pa(0x4000));
    assert_eq!(t.query(iova(G1 + M2 + K4)).unwrap().pa, pa(0x5000));
    let stats = arena.stats();
    // Root, PDPT, PD, PT: the loser's pages all went back.
    assert_eq!(stats.live_pages, 4);
    assert_eq!(stats.allocs - stats.frees, 4);
    assert!(stats.frees >= 3);
    assert!(arena.bad_frees().is_empty());
}

/// The arena, counting `phys_to_virt` calls: one per table entry an operation descends through.
struct Descents<'a> {
    arena: &'a TestAlloc,
    calls: core::sync::atomic::AtomicUsize,
}

impl Descents<'_> {
    fn take(&self) -> usize {
        self.calls.swap(0, core::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: forwards to the arena, which upholds the contract; it only counts.
unsafe impl PageAllocator for Descents<'_> {
    fn alloc(&self, size_log2: u32) -> Option<crate::mem::Page> {
        self.arena.alloc(size_log2)
    }
    unsafe fn free(&self, page: crate::mem::Page, size_log2: u32) {
        // SAFETY: the caller upholds `free`'s contract for the arena the page came from.
        unsafe { self.arena.free(page, size_log2) }
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<core::ptr::NonNull<u8>> {
        self.calls
            .fetch_add(1, core::sync::atomic::Ordering::Relaxed);
        self.arena.phys_to_virt(pa)
    }
    fn sync_for_device(&self, va: core::ptr::NonNull<u8>, len: usize) {
        self.arena.sync_for_device(va, len);
    }
}

/// Arm stage 2 with the contiguous hint at level 0 (4 KiB granule, FEAT_BBM level 2): a map or
/// unmap inside an existing leaf table descends from the root once (three table entries of the
/// four levels), as without the hint, instead of a planning walk and one or two split checks
/// before the operation's own walk (6 descents per map, 9 per unmap before). The runs it
/// writes whole carry the hint, a run it cuts loses it on every leaf before anything is
/// cleared, and the gather holds the whole cut run.
#[test]
fn hinted_leaf_table_calls_descend_once() {
    let arena = test_alloc();
    let counted = Descents {
        arena: &arena,
        calls: 0.into(),
    };
    let cfg = ArmS2Config {
        ias: 48,
        oas: 48,
        ..ARM_S2_4K
    };
    let f = ArmS2::new(cfg).unwrap();
    assert_eq!(f.contiguous_log2(0), 4);
    let mut t = PageTable::new(f, &counted, WalkerCoherency::Coherent).unwrap();
    let base = 0x40_0000_0000;
    // Installs the tables (the general walk).
    t.map(iova(base), pa(G1), K4, RW).unwrap();
    counted.take();
    let run = 16 * K4;
    // Four whole runs from `run`, plus one page before them and one after.
    t.map(
        iova(base + run - K4),
        pa(G1 + run - K4),
        4 * run + 2 * K4,
        RW,
    )
    .unwrap();
    assert_eq!(counted.take(), 3, "map: one descent");
    let hinted = |t: &PageTable<ArmS2, &Descents<'_>>| {
        let mut h = std::vec::Vec::new();
        let top = t.geometry().top_level();
        t.visit(t.root_table(), top, base, M2, &mut |_, leaf, raw| {
            h.push((
                leaf.iova.get() - base,
                raw & t.format().contiguous_bit() != 0,
            ));
            Ok(())
        })
        .unwrap();
        counted.take();
        h
    };
    let want: std::vec::Vec<_> = core::iter::once((0, false))
        .chain(core::iter::once((run - K4, false)))
        .chain((0..64).map(|i| (run + i * K4, true)))
        .chain(core::iter::once((5 * run, false)))
        .collect();
    assert_eq!(hinted(&t), want);
    // One page in the middle of the second run: the run loses its hint, the page goes.
    let mut g = Gather::new();
    let cut = base + 2 * run + 5 * K4;
    assert_eq!(t.unmap(iova(cut), K4, &mut g), Ok(K4));
    assert_eq!(counted.take(), 3, "unmap: one descent");
    let span = g.span().unwrap();
    assert_eq!(
        (span.start.get(), span.end.get()),
        (base + 2 * run, base + 3 * run)
    );
    assert!(g.leaf_only());
    g.release(&counted, done()).unwrap();
    let want: std::vec::Vec<_> = want
        .into_iter()
        .filter(|&(o, _)| o != cut - base)
        .map(|(o, h)| (o, h && !(2 * run..3 * run).contains(&o)))
        .collect();
    assert_eq!(hinted(&t), want);
    // Under `SplitPolicy::Refuse` a cut run is refused before anything changes.
    t.set_split_policy(SplitPolicy::Refuse);
    let mut g = Gather::new();
    assert_eq!(
        t.unmap(iova(base + 3 * run + K4), K4, &mut g),
        Err(Error::SplitRefused {
            iova: iova(base + 3 * run + K4)
        })
    );
    assert!(g.is_empty());
    assert_eq!(hinted(&t), want);
    // A whole run and the plain pages around the runs: one descent each, nothing to break.
    t.set_split_policy(SplitPolicy::Split);
    counted.take();
    assert_eq!(t.unmap(iova(base + 3 * run), run, &mut g), Ok(run));
    assert_eq!(t.unmap(iova(base), run, &mut g), Ok(2 * K4));
    assert_eq!(counted.take(), 6);
    let span = g.span().unwrap();
    assert_eq!((span.start.get(), span.end.get()), (base, base + 4 * run));
    g.release(&counted, done()).unwrap();
    assert_eq!(t.query(iova(base + 4 * run)).unwrap().pa, pa(G1 + 4 * run));
    assert!(arena.bad_frees().is_empty());
}

/// Map a 2 MiB-aligned 2 MiB range with page-size limit `max` in `t` (a fresh table of a
/// 4 KiB-granule format with 2 MiB blocks); returns (leaves, hinted leaves, table pages).
fn leaves_under_limit<F: Format>(
    mut t: PageTable<F, TestAlloc>,
    max: Option<u32>,
) -> (usize, usize, usize) {
    t.set_max_leaf_log2(max);
    assert_eq!(t.max_leaf_log2(), max);
    let base = 0x4000_0000;
    t.map(iova(base), pa(2 * G1), M2, RW).unwrap();
    let (mut leaves, mut hinted) = (0, 0);
    let top = t.geometry().top_level();
    let bit = t.format().contiguous_bit();
    t.visit(t.root_table(), top, base, M2, &mut |_, leaf, raw| {
        assert_eq!(leaf.pa.get() - 2 * G1, leaf.iova.get() - base);
        if max.is_some_and(|m| m <= 12) {
            assert_eq!(leaf.size_log2, 12);
        }
        leaves += 1;
        hinted += usize::from(bit != 0 && raw & bit != 0);
        Ok(())
    })
    .unwrap();
    (leaves, hinted, t.allocator().stats().live_pages)
}

/// iommufd `IOMMU_OPTION_HUGE_PAGES` off, in the engine: a page-size limit of 4 KiB makes
/// every format write 512 level-0 leaves for a 2 MiB-aligned 2 MiB map (one more table page:
/// the leaf table), with no contiguous hint on the Arm formats (a hinted run is a 64 KiB
/// translation); 64 KiB allows the hinted runs but no block; no limit, one block.
#[test]
fn option_huge_pages_off_maps_only_4k() {
    use super::arm_s1::{ArmS1, ArmS1Config};
    use super::vtd_fs::{VtdFs, VtdFsConfig};
    let s2 = || {
        ArmS2::new(ArmS2Config {
            ias: 48,
            oas: 48,
            ..ARM_S2_4K
        })
        .unwrap()
    };
    let s1 = || {
        ArmS1::new(ArmS1Config {
            granule_log2: 12,
            ias: 48,
            oas: 48,
            blocks: true,
            coherent: true,
            dirty_tracking: false,
            bbml2: true,
        })
        .unwrap()
    };
    let fs = || {
        VtdFs::new(VtdFsConfig {
            levels: 4,
            haw: 46,
            page_1g: true,
            execute_disable: true,
            dirty_tracking: false,
        })
        .unwrap()
    };
    // Root, level 2 and level 1 tables; the limit adds the leaf table.
    assert_eq!(leaves_under_limit(vtd(48), None), (1, 0, 3));
    assert_eq!(leaves_under_limit(vtd(48), Some(12)), (512, 0, 4));
    assert_eq!(leaves_under_limit(new_table(s2()), Some(16)), (512, 512, 4));
    if cfg!(miri) {
        // One format with the hint and one without are enough to check the memory accesses.
        return;
    }
    assert_eq!(leaves_under_limit(new_table(fs()), None), (1, 0, 3));
    assert_eq!(leaves_under_limit(new_table(fs()), Some(12)), (512, 0, 4));
    for limit_below_granule in [Some(0), Some(11)] {
        assert_eq!(
            leaves_under_limit(vtd(48), limit_below_granule),
            (512, 0, 4)
        );
    }
    assert_eq!(leaves_under_limit(new_table(s2()), None), (1, 0, 3));
    assert_eq!(leaves_under_limit(new_table(s2()), Some(12)), (512, 0, 4));
    assert_eq!(leaves_under_limit(new_table(s1()), None), (1, 0, 3));
    assert_eq!(leaves_under_limit(new_table(s1()), Some(12)), (512, 0, 4));
    assert_eq!(leaves_under_limit(new_table(s1()), Some(20)), (512, 512, 4));
    // Lifting the limit: the next map uses blocks again; the small pages stay.
    let mut t = vtd(48);
    t.set_max_leaf_log2(Some(12));
    t.map(iova(0), pa(G1), M2, RW).unwrap();
    // The level-1 table exists now: the level-1 fast path keeps the limit too.
    t.map(iova(2 * M2), pa(G1 + 2 * M2), M2, RW).unwrap();
    assert_eq!(t.query(iova(2 * M2)).unwrap().size_log2, 12);
    t.set_max_leaf_log2(None);
    t.map(iova(M2), pa(G1 + M2), M2, RW).unwrap();
    assert_eq!(t.query(iova(0)).unwrap().size_log2, 12);
    assert_eq!(t.query(iova(M2)).unwrap().size_log2, 21);
    // Arm with 2 MiB blocks allowed but not a hinted run of 16 (32 MiB), in an existing
    // level-1 table: blocks without the hint.
    let mut t = new_table(s2());
    t.map(iova(0), pa(G1), K4, RW).unwrap();
    t.set_max_leaf_log2(Some(21));
    let run = 16 * M2;
    t.map(iova(run), pa(G1 + run), run, RW).unwrap();
    let bit = t.format().contiguous_bit();
    let top = t.geometry().top_level();
    let mut blocks = 0;
    t.visit(t.root_table(), top, run, run, &mut |_, leaf, raw| {
        assert_eq!((leaf.size_log2, raw & bit), (21, 0));
        blocks += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(blocks, 16);
}

/// The level-1 fast path (issue 18, goal 2): a block-aligned map or unmap inside an existing
/// level-1 table descends from the root once (two table entries of the four levels) instead of
/// a planning walk or two split checks before its own walk (4 descents per map, 6 per unmap
/// before, plus one per table unlinked). Arm stage 2 (4 KiB granule, FEAT_BBM level 2) sets
/// the contiguous hint on whole runs of 16 blocks there; an unmap that cuts a run breaks it
/// first, and unlinks a leaf table it covers whole as the general walk does.
#[test]
fn block_aligned_calls_in_a_level1_table_descend_once() {
    let arena = test_alloc();
    let counted = Descents {
        arena: &arena,
        calls: 0.into(),
    };
    let cfg = ArmS2Config {
        ias: 48,
        oas: 48,
        ..ARM_S2_4K
    };
    let f = ArmS2::new(cfg).unwrap();
    assert_eq!(f.contiguous_log2(1), 4);
    let t = PageTable::new(f, &counted, WalkerCoherency::Coherent).unwrap();
    let base = 0x40_0000_0000;
    let run = 16 * M2;
    // Installs the tables down to a leaf table at `base` (the general walk).
    t.map(iova(base), pa(G1), K4, RW).unwrap();
    counted.take();
    // Two whole runs of blocks and one block more, from the second run on.
    t.map(iova(base + run), pa(G1 + run), 2 * run + M2, RW)
        .unwrap();
    assert_eq!(counted.take(), 2, "map: one descent");
    let leaves = |t: &PageTable<ArmS2, &Descents<'_>>| {
        let mut v = std::vec::Vec::new();
        let top = t.geometry().top_level();
        t.visit(t.root_table(), top, base, G1, &mut |_, leaf, raw| {
            let hint = raw & t.format().contiguous_bit() != 0;
            v.push((leaf.iova.get() - base, leaf.size_log2, hint));
            Ok(())
        })
        .unwrap();
        counted.take();
        v
    };
    let mut want = std::vec![(0, 12, false)];
    want.extend((0..32).map(|i| (run + i * M2, 21, true)));
    want.push((3 * run, 21, false));
    assert_eq!(leaves(&t), want);
    // A block-aligned map onto a present block takes the general walk and fails there.
    assert_eq!(
        t.map(iova(base + 3 * run), pa(0), M2, RW),
        Err(Error::Overlap {
            iova: iova(base + 3 * run)
        })
    );
    counted.take();
    // From the leaf table to the middle of the second run: the leaf table is unlinked whole,
    // the cut run loses its hint before any block goes, the first run goes whole.
    let mut g = Gather::new();
    let end = 2 * run + 4 * M2;
    assert_eq!(t.unmap(iova(base), end, &mut g), Ok(K4 + run + 4 * M2));
    assert_eq!(
        counted.take(),
        2 + 1,
        "unmap: one descent, one unlinked table"
    );
    assert_eq!(g.freed_pages(), 1);
    assert!(!g.leaf_only());
    let span = g.span().unwrap();
    assert_eq!((span.start.get(), span.end.get()), (base, base + 3 * run));
    g.release(&counted, done()).unwrap();
    counted.take();
    let mut want: std::vec::Vec<_> = (4..16).map(|i| (2 * run + i * M2, 21, false)).collect();
    want.push((3 * run, 21, false));
    assert_eq!(leaves(&t), want);
    assert!(arena.bad_frees().is_empty());
}

/// The first-stage formats take the engine's fast paths (issue 18, goal 5): VT-d first stage,
/// Arm stage 1 (4 KiB granule, FEAT_BBM level 2: the contiguous hint on) and AMD-Vi v2, like
/// the second-stage formats, map and unmap 256 x 4K inside an existing leaf table with one
/// descent from the root (three table entries of four levels) and 16 x 2M blocks inside an
/// existing level-1 table with one descent (two entries). The general walk makes two to four
/// more per call (see the two tests above).
#[test]
fn first_stage_formats_take_the_fast_paths() {
    use super::amdvi_v2::{AmdV2, AmdV2Config};
    use super::arm_s1::{ArmS1, ArmS1Config};
    use super::vtd_fs::{VtdFs, VtdFsConfig};

    fn descents<F: Format>(f: F) -> [usize; 4] {
        let arena = test_alloc();
        let counted = Descents {
            arena: &arena,
            calls: 0.into(),
        };
        let t = PageTable::new(f, &counted, WalkerCoherency::Coherent).unwrap();
        let base = 0x40_0000_0000;
        // Installs the tables down to a leaf table at `base` (the general walk).
        t.map(iova(base), pa(G1), K4, RW).unwrap();
        counted.take();
        let mut n = [0; 4];
        // Under Miri a handful of entries: the paths taken are the same.
        let pages = if cfg!(miri) { 32 } else { 256 };
        let (small, large) = (iova(base + 16 * K4), iova(base + 32 * M2));
        t.map(small, pa(G1 + 16 * K4), pages * K4, RW).unwrap();
        n[0] = counted.take();
        let mut g = Gather::new();
        assert_eq!(t.unmap(small, pages * K4, &mut g), Ok(pages * K4));
        n[1] = counted.take();
        t.map(large, pa(2 * G1), 16 * M2, RW).unwrap();
        n[2] = counted.take();
        assert_eq!(t.unmap(large, 16 * M2, &mut g), Ok(16 * M2));
        n[3] = counted.take();
        g.release(&counted, done()).unwrap();
        n
    }
    let vtd_fs = VtdFs::new(VtdFsConfig {
        levels: 4,
        haw: 46,
        page_1g: true,
        execute_disable: true,
        dirty_tracking: false,
    })
    .unwrap();
    let arm_s1 = ArmS1::new(ArmS1Config {
        granule_log2: 12,
        ias: 48,
        oas: 48,
        blocks: true,
        coherent: true,
        dirty_tracking: false,
        bbml2: true,
    })
    .unwrap();
    assert_eq!(arm_s1.contiguous_log2(0), 4, "the hint is on");
    let amd_v2 = AmdV2::new(AmdV2Config {
        levels: 4,
        oas: 48,
        execute_disable: true,
        dirty_tracking: false,
    })
    .unwrap();
    assert_eq!(descents(vtd_fs), [3, 3, 2, 2], "VT-d first stage");
    assert_eq!(descents(arm_s1), [3, 3, 2, 2], "Arm stage 1");
    assert_eq!(descents(amd_v2), [3, 3, 2, 2], "AMD-Vi v2");
}

/// A reclaim around the ends of many unmaps inside one leaf table walks the path to it once
/// (issue 18, goal 4): an IOASID's per-page unmaps note up to 16 ends there between reclaims,
/// and each walk reads the leaf table up to its first present entry. The result is that of
/// walking around every end: nothing while a page is left, the leaf table (and no more)
/// once the last page is gone.
#[test]
fn reclaim_around_ends_in_one_leaf_table_walks_once() {
    use crate::iommu::ReclaimScope;
    let arena = test_alloc();
    let counted = Descents {
        arena: &arena,
        calls: 0.into(),
    };
    let f = VtdSs::new(VTD_SS_48).unwrap();
    let mut t = PageTable::new(f, &counted, WalkerCoherency::Coherent).unwrap();
    let base = 0x40_0000_0000;
    let pages = if cfg!(miri) { 4 } else { 8 };
    t.map(iova(base), pa(G1), pages * K4, RW).unwrap();
    // Another leaf table under the same level-1 table keeps the upper levels linked.
    t.map(iova(base + M2), pa(G1), K4, RW).unwrap();
    let mut g = Gather::new();
    let mut ends = std::vec::Vec::new();
    for p in 1..pages {
        let at = base + p * K4;
        assert_eq!(t.unmap(iova(at), K4, &mut g), Ok(K4));
        ends.extend([iova(at), iova(at + K4 - 1)]);
    }
    g.release(&counted, done()).unwrap();
    counted.take();
    let mut g = Gather::new();
    assert_eq!(ReclaimScope::Around(&ends).reclaim(&mut t, &mut g), Ok(0));
    // One walk: three table entries down, then the leaf table's first entry is present.
    assert_eq!(counted.take(), 3, "one walk for {} ends", ends.len());
    assert!(g.is_empty());
    assert_eq!(t.unmap(iova(base), K4, &mut g), Ok(K4));
    ends.extend([iova(base), iova(base + K4 - 1)]);
    assert_eq!(ReclaimScope::Around(&ends).reclaim(&mut t, &mut g), Ok(1));
    assert_eq!(g.freed_pages(), 1, "the leaf table only");
    g.release(&counted, done()).unwrap();
    assert_eq!(t.query(iova(base + M2)).map(|m| m.pa), Some(pa(G1)));
}

/// The arena, recording the order in which pages are freed.
struct FreeOrder<'a> {
    arena: &'a TestAlloc,
    freed: std::sync::Mutex<std::vec::Vec<PhysAddr>>,
}

// SAFETY: forwards to the arena, which upholds the contract; it only records.
unsafe impl PageAllocator for FreeOrder<'_> {
    fn alloc(&self, size_log2: u32) -> Option<crate::mem::Page> {
        self.arena.alloc(size_log2)
    }
    unsafe fn free(&self, page: crate::mem::Page, size_log2: u32) {
        self.freed.lock().unwrap().push(page.pa);
        // SAFETY: the caller upholds `free`'s contract for the arena the page came from.
        unsafe { self.arena.free(page, size_log2) }
    }
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<core::ptr::NonNull<u8>> {
        self.arena.phys_to_virt(pa)
    }
    fn sync_for_device(&self, va: core::ptr::NonNull<u8>, len: usize) {
        self.arena.sync_for_device(va, len);
    }
}

/// The tables below `t` (at `level`), children before their parent, in slot order: the order
/// in which the recursive walks handed them over (a reference for the iterative ones).
fn tables_post_order<F: Format, A: PageAllocator>(
    pt: &PageTable<F, A>,
    t: Table,
    level: u32,
    out: &mut std::vec::Vec<PhysAddr>,
) {
    if level == 0 {
        return;
    }
    for idx in 0..1usize << pt.geometry().level_bits(level) {
        // SAFETY: `t` is a live table at `level`; `idx` is below its entry count.
        let raw = unsafe { t.slot(idx) }.load(core::sync::atomic::Ordering::Acquire);
        if pt.format().is_present(raw) && pt.format().is_table(level, raw) {
            let child = pt.child(raw).unwrap();
            tables_post_order(pt, child, level - 1, out);
            out.push(pt.format().table_address(raw));
        }
    }
}

/// The walks that keep their open tables in a fixed path rather than in frames of their own
/// (`map_level`, `plan_map`, `count_new`, `unmap_level`, `visit`, `reap`, `reclaim_level`,
/// `count_tables`), on the deepest table there is (AMD-Vi v1, 63-bit input: six levels, a
/// table installed at every level by the maps), against the recursive order: leaves in IOVA order
/// with an early exit that stops the walk, tables handed to the gather after every table
/// under them and in slot order (release frees them in the reverse order), the counts of a
/// recursive count.
#[test]
fn walks_of_a_six_level_table_keep_the_recursive_order() {
    use super::amdvi_v1::{AmdV1, AmdV1Config};
    let arena = test_alloc();
    let order = FreeOrder {
        arena: &arena,
        freed: std::vec::Vec::new().into(),
    };
    let cfg = AmdV1Config {
        ias: 63,
        force_coherent: false,
        dirty_tracking: true,
        ..AMD_V1_48
    };
    let mut t =
        PageTable::new(AmdV1::new(cfg).unwrap(), &order, WalkerCoherency::Coherent).unwrap();
    assert_eq!(t.geometry().levels, 6);
    let top = t.geometry().top_level();
    // Two entries at each of the three levels above 1 GiB pages, and below each a 1 GiB page,
    // a 2 MiB page and two 4 KiB pages (tables at every level).
    let mut mapped = BTreeMap::new();
    for i in 0..2u64 {
        for j in 0..2u64 {
            for k in 0..2u64 {
                let base = (i << 62) | (j << 48) | (k << 39);
                for (off, len) in [(K4, K4), (5 * K4, K4), (4 * M2, M2), (3 * G1, G1)] {
                    let phys = (mapped.len() as u64) << 30;
                    t.map(iova(base + off), pa(phys), len, RW).unwrap();
                    mapped.insert(base + off, (phys, len));
                }
            }
        }
    }
    // `visit`: every leaf in IOVA order, and an error from `f` ends the walk.
    let mut seen = std::vec::Vec::new();
    t.for_each_mapping(iova(0), 1 << 63, |l| seen.push((l.iova.get(), l.pa.get())))
        .unwrap();
    let want: std::vec::Vec<(u64, u64)> = mapped.iter().map(|(&v, &(p, _))| (v, p)).collect();
    assert_eq!(seen, want);
    let mut calls = 0;
    let stop = t.visit(t.root_table(), top, 0, 1 << 63, &mut |_, _, _| {
        calls += 1;
        if calls == 7 {
            return Err(Error::NoMemory);
        }
        Ok(())
    });
    assert_eq!((stop, calls), (Err(Error::NoMemory), 7));
    // `count_tables` against a recursive count.
    let mut tables = std::vec::Vec::new();
    tables_post_order(&t, t.root_table(), top, &mut tables);
    let pages = t.table_pages().unwrap();
    assert_eq!(pages.linked, tables.len() + 1);
    assert_eq!(pages.surplus(), 0);
    // `reap`: unmapping the whole second half of the input range frees the tables below the
    // root's entry for it, children first (release frees in the reverse order).
    let half = 1u64 << 62;
    // SAFETY: the root is a live table at `top`; the index comes from an in-range IOVA.
    let root_raw = unsafe { t.root_table().slot(t.geometry().index(top, half)) }
        .load(core::sync::atomic::Ordering::Acquire);
    let mut below = std::vec::Vec::new();
    tables_post_order(&t, t.child(root_raw).unwrap(), top - 1, &mut below);
    below.push(t.format().table_address(root_raw));
    let mut g = Gather::new();
    let bytes = t.unmap(iova(half), half, &mut g).unwrap();
    let want_bytes: u64 = mapped.range(half..).map(|(_, &(_, len))| len).sum();
    assert_eq!(bytes, want_bytes);
    g.release(t.allocator(), done()).unwrap();
    let mut freed = core::mem::take(&mut *order.freed.lock().unwrap());
    freed.reverse();
    assert_eq!(freed, below);
    // `reclaim_level`: unmapping every leaf of the first half leaves its tables empty; a
    // reclaim unlinks them all, children first, and the root alone stays.
    let mut left = std::vec::Vec::new();
    tables_post_order(&t, t.root_table(), top, &mut left);
    for (&v, &(_, len)) in mapped.range(..half) {
        assert_eq!(t.unmap(iova(v), len, &mut g), Ok(len));
    }
    assert_eq!(t.table_pages().unwrap().surplus(), left.len());
    assert_eq!(t.reclaim_empty(&mut g), Ok(left.len()));
    g.release(t.allocator(), done()).unwrap();
    let mut freed = core::mem::take(&mut *order.freed.lock().unwrap());
    freed.reverse();
    assert_eq!(freed, left);
    assert_eq!(t.table_pages().unwrap().linked, 1);
    assert!(arena.bad_frees().is_empty());
}

/// The argument tests of the hot paths (`map_ranges_ok` for any length, `one_page_ok` for
/// one granule) pass exactly where `check_iova_range` and `check_pa_range` both do (and
/// `unmap_range_ok` where `check_iova_range` does and the range's end does not overflow), on
/// addresses and lengths at every edge (alignment, input and output size, wrapping), for
/// geometries with 39, 48 and 64 input bits, 46 and 52 output bits, 4 KiB and 64 KiB granules.
#[test]
fn hot_path_argument_tests_agree_with_the_checks() {
    fn agree<F: Format>(f: F) {
        let t = new_table(f);
        let g = *t.geometry();
        let gran = 1u64 << g.granule_log2;
        let edges = |bits: u32| {
            let top = 1u64.checked_shl(bits).unwrap_or(0);
            [
                0,
                gran / 2,
                gran,
                3 * gran,
                top.wrapping_sub(gran),
                top.wrapping_sub(1),
                top,
                top.wrapping_add(gran),
                u64::MAX - (gran - 1),
                u64::MAX,
            ]
        };
        let lens = [
            0,
            gran / 2,
            gran,
            gran + 1,
            2 * gran,
            1 << 30,
            u64::MAX - (gran - 1),
        ];
        for iova in edges(g.ias) {
            for len in lens {
                let checks = t.check_iova_range(Iova::new(iova), len).is_ok()
                    && iova.checked_add(len).is_some();
                assert_eq!(
                    t.unmap_range_ok(iova, len),
                    checks,
                    "unmap {iova:#x}, {len:#x}"
                );
            }
            for pa in edges(g.oas) {
                for len in lens {
                    let checks = t
                        .check_iova_range(Iova::new(iova), len)
                        .and_then(|()| t.check_pa_range(PhysAddr::new(pa), len))
                        .is_ok();
                    assert_eq!(
                        t.map_ranges_ok(iova, pa, len),
                        checks,
                        "{iova:#x} -> {pa:#x}, {len:#x}"
                    );
                    if len == gran {
                        assert_eq!(t.one_page_ok(iova, pa), checks, "{iova:#x} -> {pa:#x}");
                    }
                }
            }
        }
    }
    for agaw in [39, 48] {
        agree(VtdSs::new(VtdSsConfig { agaw, ..VTD_SS_48 }).unwrap());
    }
    let cfg = ArmS2Config {
        granule_log2: 16,
        ias: 52,
        oas: 52,
        ..ARM_S2_4K
    };
    agree(ArmS2::new(cfg).unwrap());
    agree(Ias64);
}

/// A format of 64 input bits (4 KiB granule, 6 levels of 9 bits and a root of 7), for the
/// edge where no IOVA is out of range: only the geometry is used.
struct Ias64;

// SAFETY: the geometry is valid and the same on every call; no other method is called by
// `hot_path_argument_tests_agree_with_the_checks` (table entries are never written).
unsafe impl Format for Ias64 {
    fn geometry(&self) -> &Geometry {
        static G: Geometry = Geometry {
            granule_log2: 12,
            levels: 6,
            top_bits: 7,
            ias: 64,
            oas: 64,
            page_sizes: 1 << 12,
        };
        &G
    }
    fn is_present(&self, raw: u64) -> bool {
        raw & 1 != 0
    }
    fn is_table(&self, level: u32, raw: u64) -> bool {
        level > 0 && raw & 1 != 0
    }
    fn table_address(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & !0xfff)
    }
    fn encode_table(&self, _level: u32, table: PhysAddr) -> u64 {
        table.get() | 1
    }
    fn check_prot(&self, _prot: Prot) -> Result<(), Error> {
        Ok(())
    }
    fn encode_leaf(&self, _level: u32, pa: PhysAddr, _prot: Prot) -> u64 {
        pa.get() | 1
    }
    fn leaf_address(&self, _level: u32, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & !0xfff)
    }
    fn leaf_prot(&self, _level: u32, _raw: u64) -> Prot {
        Prot::READ
    }
    fn relevel_leaf(&self, raw: u64, _from: u32, _to: u32, _pa: PhysAddr) -> u64 {
        raw
    }
}

/// `for_each_mapping_until` visits the leaves in IOVA order and stops at the one its visitor
/// breaks at (reporting that it stopped); a walk resumed from that leaf's IOVA visits it
/// first; a walk its visitor never stops reports that it ran to the end; range errors are
/// the walk's own.
#[test]
fn a_walk_of_the_mappings_stops_where_its_visitor_breaks() {
    use core::ops::ControlFlow;
    let t = vtd(48);
    t.map(iova(G1), pa(2 * G1), G1 + M2 + K4, RW).unwrap();
    t.map(iova(4 * G1), pa(K4), K4, RW).unwrap();
    let mut seen = std::vec::Vec::new();
    let stopped = t
        .for_each_mapping_until(iova(0), 1 << 40, |l| {
            if seen.len() == 2 {
                return ControlFlow::Break(());
            }
            seen.push(l.iova.get());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(stopped);
    assert_eq!(seen, [G1, 2 * G1]);
    let mut rest = std::vec::Vec::new();
    let stopped = t
        .for_each_mapping_until(iova(2 * G1 + M2), (1 << 40) - (2 * G1 + M2), |l| {
            rest.push(l.iova.get());
            ControlFlow::Continue(())
        })
        .unwrap();
    assert!(!stopped);
    assert_eq!(rest, [2 * G1 + M2, 4 * G1]);
    assert!(t
        .for_each_mapping_until(iova(1 << 48), K4, |_| ControlFlow::Continue(()))
        .is_err());
}

/// `address_bits` covers every bit of every address of a stretch, so that a template without
/// any of them gives `template | pa == template + pa` for each (the leaf loop then adds the
/// page size to the leaf before): aligned and misaligned starts, steps of 4 KiB to 1 GiB,
/// stretches up to the top of the 64-bit range and past it, templates of one bit anywhere and
/// of the formats' shapes (attribute bits low and high around an address field).
#[test]
fn address_bits_cover_every_address_of_a_stretch() {
    use super::table::address_bits;
    let templates = [
        0u64,
        0x3,
        0x883,
        0xfff,
        0x7ff0_0000_0000_0003,
        0x0060_0000_0000_0743,
    ]
    .into_iter()
    .chain((0..64).map(|b| 1u64 << b));
    let templates: std::vec::Vec<u64> = templates.collect();
    for step_log2 in [12u32, 14, 16, 21, 30] {
        let step = 1u64 << step_log2;
        for from_pa in [
            0,
            step,
            0x80_0000_1000,
            (1 << 46) - 16 * step,
            (1 << 48) - step,
            u64::MAX - (4 * step - 1),
            0x1234_5000 | (step >> 1),
        ] {
            // Miri runs the short stretches only (a 512-entry stretch is 36,000 checks).
            let counts: &[usize] = if cfg!(miri) {
                &[1, 2, 5]
            } else {
                &[1, 2, 3, 4, 5, 16, 512]
            };
            for &count in counts {
                let bits = address_bits(from_pa, count, step);
                for k in 0..count as u64 {
                    let Some(pa) = k.checked_mul(step).and_then(|d| from_pa.checked_add(d)) else {
                        assert_eq!(bits, u64::MAX, "{from_pa:#x} x{count} by {step:#x}");
                        break;
                    };
                    assert_eq!(
                        pa & !bits,
                        0,
                        "{pa:#x} in {from_pa:#x} x{count} by {step:#x}"
                    );
                    for &t in &templates {
                        if t & bits == 0 {
                            assert_eq!(t | pa, t.wrapping_add(pa), "{t:#x} | {pa:#x}");
                        }
                    }
                }
            }
        }
    }
}

/// One gather, one table (review of 2026-12-07 19:50, D1: a bare table's gather was flushed
/// by a unit on an unrelated domain). Every call of another table that would fill the gather
/// refuses it with `GatherOfAnotherTable`, naming the table that filled it, and changes
/// nothing; that table goes on filling it, and once released the gather is anyone's.
#[test]
fn a_gather_takes_one_tables_changes() {
    let arena = test_alloc();
    let table = || {
        let f = VtdSs::new(VtdSsConfig {
            dirty_tracking: true,
            ..VTD_SS_48
        });
        PageTable::new(f.unwrap(), &arena, WalkerCoherency::Coherent).unwrap()
    };
    let (a, mut b) = (table(), table());
    a.map(iova(M2), pa(G1), K4, RW).unwrap();
    b.map(iova(M2), pa(G1), K4, RW).unwrap();
    let mut g = Gather::new();
    assert_eq!(a.unmap(iova(M2), K4, &mut g), Ok(K4));
    let theirs = Err(Error::GatherOfAnotherTable {
        root: a.root().get(),
    });
    assert_eq!(b.unmap(iova(M2), K4, &mut g).map(|_| ()), theirs);
    assert_eq!(
        b.read_and_clear_dirty(iova(0), G1, |_, _| {}, &mut g),
        theirs
    );
    assert_eq!(b.set_dirty_tracking(true, &mut g), theirs);
    assert_eq!(b.reclaim_empty(&mut g).map(|_| ()), theirs);
    assert_eq!(b.reclaim_at(iova(M2), &mut g).map(|_| ()), theirs);
    assert!(
        b.query(iova(M2)).is_some(),
        "a refused call changed the other table"
    );
    // The table that filled the gather goes on: its emptied tables (all but the root) join it.
    let mut a = a;
    assert_eq!(a.reclaim_at(iova(M2), &mut g), Ok(3));
    assert_eq!(g.freed_pages(), 3);
    g.release(&arena, done()).unwrap();
    assert_eq!(b.unmap(iova(M2), K4, &mut g), Ok(K4));
    g.release(&arena, done()).unwrap();
}
