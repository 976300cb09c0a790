//! AMD-Vi v1 (48882 rev 3.10 §2.2.3): hand-built tables of Mode 1, 3, 4 and 6, with pages of
//! the levels' own sizes and size-encoded (Next Level 7) pages.

use std::vec::Vec;

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::Arena;
use crate::sim::walk::amdvi_v1::{table_pages, translate, walk_all, AmdV1Config};
use crate::sim::walk::{Access, AccessKind, Fault, WalkError};

// Entry bits, spelled out from Figures 8 and 9 rather than shared with the walker.
const PR: u64 = 1; // bit 0
const D: u64 = 0x40; // bit 6
const FC: u64 = 1 << 60;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;

/// Next Level field (bits 11:9).
const fn nl(level: u64) -> u64 {
    level << 9
}

/// A PDE pointing at a table of `level`.
const fn pde(table: u64, level: u64) -> u64 {
    table | nl(level) | PR | IR | IW
}

/// A Mode 4 table:
/// - 4 KiB at IOVA 0x3000 -> 0x1234_5000, IR/IW, FC, D;
/// - 2 MiB (Next Level 0 at level 2) at IOVA 0x20_0000 -> 0x20_0020_0000, read-only;
/// - 1 GiB at IOVA 0x4000_0000 -> 0x1_4000_0000, write-only;
/// - 32 KiB size-encoded at IOVA 0x10_0000 (PT entries 256..264) -> 0x8_0000: address bits
///   13:12 = 11b, bit 14 = 0 (Table 14);
/// - 8 MiB size-encoded at IOVA 0x80_0000 (PD entries 4..8) -> 0x4080_0000.
struct Fixture {
    arena: Arena,
    cfg: AmdV1Config,
    pdp: u64,
    pd: u64,
    pt: u64,
}

fn fixture() -> Fixture {
    let arena = arena_at(0x8000_0000);
    let (l4, pdp, pd, pt) = (
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
    );
    put(&arena, l4, 0, pde(pdp, 3));
    put(&arena, pdp, 0, pde(pd, 2));
    put(&arena, pd, 0, pde(pt, 1));
    put(&arena, pt, 3, 0x1234_5000 | PR | IR | IW | FC | D);
    put(&arena, pd, 1, 0x20_0020_0000 | PR | IR);
    put(&arena, pdp, 1, 0x1_4000_0000 | PR | IW);
    for i in 256..264 {
        put(&arena, pt, i, 0x8_0000 | 0x3000 | nl(7) | PR | IR | IW);
    }
    // 8 MiB: bits 21:12 ones, bit 22 zero.
    for i in 4..8 {
        put(&arena, pd, i, 0x4080_0000 | 0x3f_f000 | nl(7) | PR | IR);
    }
    let cfg = AmdV1Config {
        root: PhysAddr::new(l4),
        mode: 4,
        oas: 48,
    };
    Fixture {
        arena,
        cfg,
        pdp,
        pd,
        pt,
    }
}

fn read(f: &Fixture, iova: u64) -> Result<(u64, u32), Fault> {
    translate(&f.arena, &f.cfg, Iova::new(iova), Access::READ)
        .map(|t| (t.pa.get(), t.page_size_log2))
}

#[test]
fn pages_of_every_kind_translate() {
    let f = fixture();
    assert_eq!(read(&f, 0x3abc), Ok((0x1234_5abc, 12)));
    assert_eq!(read(&f, 0x2f_0008), Ok((0x20_002f_0008, 21)));
    // 32 KiB page: every one of its eight entries translates into the one page.
    assert_eq!(read(&f, 0x10_0010), Ok((0x8_0010, 15)));
    assert_eq!(read(&f, 0x10_7ff8), Ok((0x8_7ff8, 15)));
    assert_eq!(read(&f, 0xff_fff0), Ok((0x40ff_fff0, 23)));
    let t = translate(&f.arena, &f.cfg, Iova::new(0x3000), Access::WRITE).unwrap();
    assert!(t.attrs.force_coherent && t.attrs.dirty && !t.attrs.size_encoded);
    let w = translate(&f.arena, &f.cfg, Iova::new(0x4000_0000), Access::WRITE).unwrap();
    assert_eq!(
        (w.pa.get(), w.page_size_log2, w.read),
        (0x1_4000_0000, 30, false)
    );
}

#[test]
fn permissions_are_the_and_over_the_walk() {
    let f = fixture();
    let denied = |iova, access, kind| {
        assert_eq!(
            translate(&f.arena, &f.cfg, Iova::new(iova), access),
            Err(Fault::Permission {
                level: 3,
                denied: kind
            })
        );
    };
    denied(0x4000_0000, Access::READ, AccessKind::Read);
    // A PDE without IW takes write away from the PTEs below it.
    put(&f.arena, f.pd, 0, pde(f.pt, 1) & !IW);
    let r = translate(&f.arena, &f.cfg, Iova::new(0x3000), Access::WRITE);
    assert_eq!(
        r,
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Write
        })
    );
    denied(0x4000_0000, Access::EXEC, AccessKind::Exec);
}

#[test]
fn walk_all_reports_a_size_encoded_page_once() {
    let f = fixture();
    let all: Vec<_> = walk_all(&f.arena, &f.cfg)
        .unwrap()
        .iter()
        .map(|(i, t)| (i.get(), t.pa.get(), t.page_size_log2))
        .collect();
    assert_eq!(
        all,
        [
            (0x3000, 0x1234_5000, 12),
            (0x10_0000, 0x8_0000, 15),
            (0x20_0000, 0x20_0020_0000, 21),
            (0x80_0000, 0x4080_0000, 23),
            (0x4000_0000, 0x1_4000_0000, 30),
        ]
    );
    assert_eq!(table_pages(&f.arena, &f.cfg).unwrap().len(), 4);
}

#[test]
fn an_incomplete_or_inconsistent_replicated_page_is_misprogrammed() {
    let misprogrammed = |f: &Fixture, iova: u64, level: i8| {
        assert_eq!(
            walk_all(&f.arena, &f.cfg),
            Err(WalkError::Fault {
                iova: Iova::new(iova),
                fault: Fault::ContiguousMisprogrammed { level }
            })
        );
    };
    let f = fixture();
    put(&f.arena, f.pt, 260, 0); // a hole in the 32 KiB page
    misprogrammed(&f, 0x10_0000, 1);
    let f = fixture();
    put(&f.arena, f.pt, 257, 0x8_0000 | 0x3000 | nl(7) | PR | IR); // IW lost in one entry
    misprogrammed(&f, 0x10_0000, 1);
    let f = fixture();
    put(&f.arena, f.pd, 7, 0); // the 8 MiB page ends early
    misprogrammed(&f, 0x80_0000, 2);
    // A and D differ between entries as the IOMMU sets them: not a misprogramming.
    let f = fixture();
    put(
        &f.arena,
        f.pt,
        258,
        0x8_0000 | 0x3000 | nl(7) | PR | IR | IW | D,
    );
    assert!(walk_all(&f.arena, &f.cfg).is_ok());
}

#[test]
fn bad_next_level_and_reserved_bits_fault() {
    let bad_nl = |level| Err(Fault::ReservedBit { level, bit: 9 });
    let f = fixture();
    // A size-encoded PTE of the level's own size (bit 12 clear: 8 KiB, at level 2).
    put(&f.arena, f.pd, 9, 0x4120_0000 | nl(7) | PR | IR);
    assert_eq!(read(&f, 9 << 21), bad_nl(2));
    // As large as the entry above spans (1 GiB at level 2: bits 28:12 ones, 29 zero).
    put(
        &f.arena,
        f.pd,
        10,
        0x4000_0000 | 0x1fff_f000 | nl(7) | PR | IR,
    );
    assert_eq!(read(&f, 10 << 21), bad_nl(2));
    // A PDE naming its own level, and one at level 1.
    put(&f.arena, f.pd, 11, pde(f.pt, 2));
    assert_eq!(read(&f, 11 << 21), bad_nl(2));
    put(&f.arena, f.pt, 5, pde(0x9000, 1));
    assert_eq!(read(&f, 0x5000), bad_nl(1));
    // Level skipping (a level-3 PDE naming a level-1 table) is not modelled.
    put(&f.arena, f.pdp, 2, pde(f.pt, 1));
    assert!(matches!(read(&f, 2 << 30), Err(Fault::BadConfig(_))));
    // Reserved 58:52, address bits above the output size, low bits of a 2 MiB page.
    put(&f.arena, f.pt, 6, 0x6000 | PR | IR | 1 << 55);
    assert_eq!(
        read(&f, 0x6000),
        Err(Fault::ReservedBit { level: 1, bit: 55 })
    );
    put(&f.arena, f.pt, 7, 1 << 48 | PR | IR);
    assert_eq!(
        read(&f, 0x7000),
        Err(Fault::ReservedBit { level: 1, bit: 48 })
    );
    put(&f.arena, f.pd, 12, 0x4180_1000 | PR | IR);
    assert_eq!(
        read(&f, 12 << 21),
        Err(Fault::ReservedBit { level: 2, bit: 12 })
    );
    // Not present.
    assert_eq!(read(&f, 0x8000), Err(Fault::Translation { level: 1 }));
}

#[test]
fn mode_bounds_the_input_and_level_6_resolves_bits_63_57() {
    let f = fixture();
    assert_eq!(read(&f, 1 << 48), Err(Fault::InputRange { iova: 1 << 48 }));
    // Mode 6: 128 root entries; entry 127 covers the top 2^57 bytes, no sign extension.
    let arena = arena_at(0x8000_0000);
    let tables: Vec<u64> = (0..6).map(|_| table(&arena, 12)).collect();
    put(&arena, tables[0], 127, pde(tables[1], 5));
    for l in 1..5 {
        put(&arena, tables[l], 511, pde(tables[l + 1], 5 - l as u64));
    }
    put(&arena, tables[5], 511, 0x7000 | PR | IR);
    let cfg = AmdV1Config {
        root: PhysAddr::new(tables[0]),
        mode: 6,
        oas: 48,
    };
    let t = translate(&arena, &cfg, Iova::new(u64::MAX - 7), Access::READ).unwrap();
    assert_eq!(t.pa.get(), 0x7ff8);
    // A PTE at level 6 is invalid (Table 15).
    put(&arena, tables[0], 0, 0x8000_0000_0000 | PR | IR);
    let r = translate(&arena, &cfg, Iova::new(0x10), Access::READ);
    assert_eq!(r, Err(Fault::ReservedBit { level: 6, bit: 9 }));
    // Mode 1: one table of 4 KiB PTEs, 21 input bits.
    let cfg = AmdV1Config {
        root: PhysAddr::new(tables[5]),
        mode: 1,
        oas: 48,
    };
    assert_eq!(
        translate(&arena, &cfg, Iova::new(0x1f_f008), Access::READ)
            .unwrap()
            .pa
            .get(),
        0x7008
    );
    assert_eq!(
        translate(&arena, &cfg, Iova::new(1 << 21), Access::READ),
        Err(Fault::InputRange { iova: 1 << 21 })
    );
}
