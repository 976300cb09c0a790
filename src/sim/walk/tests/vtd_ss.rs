//! VT-d second stage (rev 4.1 §9.8): hand-built 3-, 4- and 5-level tables.

use std::vec::Vec;

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::Arena;
use crate::sim::walk::vtd_ss::{table_pages, translate, walk_all, VtdSsConfig};
use crate::sim::walk::{Access, AccessKind, Fault, WalkError};

// Entry bits, spelled out from the spec's tables rather than shared with the walker.
const R: u64 = 1; // bit 0
const W: u64 = 2; // bit 1
const PS: u64 = 0x80; // bit 7
const A: u64 = 0x100; // bit 8
const D: u64 = 0x200; // bit 9
const SNP: u64 = 0x800; // bit 11

/// A 4-level table (AGAW 48):
/// - 4 KiB at IOVA 0x3000 -> 0x1234_5000, R/W, A and D set;
/// - 2 MiB at IOVA 0x20_0000 -> 0x20_0020_0000 (a 2 MiB multiple), R/W, SNP;
/// - 1 GiB at IOVA 0x4000_0000 -> 0x1_4000_0000, read-only.
struct Fixture {
    arena: Arena,
    cfg: VtdSsConfig,
    pml4: u64,
    pdpt: u64,
    pd: u64,
    pt: u64,
}

fn fixture() -> Fixture {
    let arena = arena_at(0x8000_0000);
    let (pml4, pdpt, pd, pt) = (
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
    );
    // Non-leaf entries: next table's address in 51:12, R and W so the leaves decide.
    put(&arena, pml4, 0, pdpt | R | W);
    put(&arena, pdpt, 0, pd | R | W);
    put(&arena, pd, 0, pt | R | W);
    // IOVA 0x3000: PML4 index 0, PDPT 0, PD 0, PT index 3.
    put(&arena, pt, 3, 0x1234_5000 | R | W | A | D);
    // IOVA 0x20_0000: PD index 1, PS = 1.
    put(&arena, pd, 1, 0x20_0020_0000 | PS | R | W | SNP);
    // IOVA 0x4000_0000: PDPT index 1, PS = 1, read-only.
    put(&arena, pdpt, 1, 0x1_4000_0000 | PS | R);
    let cfg = VtdSsConfig {
        root: PhysAddr::new(pml4),
        levels: 4,
        haw: 46,
        large_2m: true,
        large_1g: true,
        snoop_control: true,
    };
    Fixture {
        arena,
        cfg,
        pml4,
        pdpt,
        pd,
        pt,
    }
}

#[test]
fn leaves_of_each_size_translate() {
    let f = fixture();
    let t = translate(&f.arena, &f.cfg, Iova::new(0x3abc), Access::READ).expect("4K");
    assert_eq!(
        (t.pa, t.page_size_log2, t.read, t.write),
        (PhysAddr::new(0x1234_5abc), 12, true, true)
    );
    assert!(t.attrs.accessed && t.attrs.dirty && !t.attrs.snoop);

    let t = translate(&f.arena, &f.cfg, Iova::new(0x21_2345), Access::WRITE).expect("2M");
    assert_eq!(
        (t.pa, t.page_size_log2),
        (PhysAddr::new(0x20_0021_2345), 21)
    );
    assert!(t.attrs.snoop);

    let t = translate(&f.arena, &f.cfg, Iova::new(0x4123_4567), Access::READ).expect("1G");
    assert_eq!(
        (t.pa, t.page_size_log2, t.write),
        (PhysAddr::new(0x1_4123_4567), 30, false)
    );
}

#[test]
fn faults() {
    let f = fixture();
    let write = |iova| translate(&f.arena, &f.cfg, Iova::new(iova), Access::WRITE).err();
    // The 1 GiB leaf is read-only; the fault names the SS-PDPE level.
    assert_eq!(
        write(0x4000_0000),
        Some(Fault::Permission {
            level: 3,
            denied: AccessKind::Write
        })
    );
    // PT index 2 is empty: not present at the SS-PTE.
    assert_eq!(write(0x2000), Some(Fault::Translation { level: 1 }));
    // PML4 index 1 is empty.
    assert_eq!(write(1 << 39), Some(Fault::Translation { level: 4 }));
    // Beyond the 48-bit AGAW.
    assert_eq!(write(1 << 48), Some(Fault::InputRange { iova: 1 << 48 }));
    // Execute requests are not supported.
    let exec = translate(&f.arena, &f.cfg, Iova::new(0x3000), Access::EXEC).err();
    assert_eq!(
        exec,
        Some(Fault::Permission {
            level: 1,
            denied: AccessKind::Exec
        })
    );
    // A write-only leaf refuses reads (R = 0, W = 1 is present).
    put(&f.arena, f.pt, 4, 0x5000 | W);
    let read = translate(&f.arena, &f.cfg, Iova::new(0x4000), Access::READ).err();
    assert_eq!(
        read,
        Some(Fault::Permission {
            level: 1,
            denied: AccessKind::Read
        })
    );
    // A non-leaf entry without W takes write away from everything below it.
    put(&f.arena, f.pd, 0, f.pt | R);
    assert_eq!(
        write(0x3000),
        Some(Fault::Permission {
            level: 1,
            denied: AccessKind::Write
        })
    );
}

#[test]
fn reserved_bits() {
    let f = fixture();
    let read =
        |cfg: &VtdSsConfig, iova| translate(&f.arena, cfg, Iova::new(iova), Access::READ).err();
    // SNP is reserved when the unit has no snoop control.
    let no_sc = VtdSsConfig {
        snoop_control: false,
        ..f.cfg
    };
    assert_eq!(
        read(&no_sc, 0x20_0000),
        Some(Fault::ReservedBit { level: 2, bit: 11 })
    );
    // Without SLLPS 1 GiB, PS in an SS-PDPE is reserved.
    let no_1g = VtdSsConfig {
        large_1g: false,
        ..f.cfg
    };
    assert_eq!(
        read(&no_1g, 0x4000_0000),
        Some(Fault::ReservedBit { level: 3, bit: 7 })
    );
    // Address bits at or above the HAW are reserved: 0x20_0020_0000 has bit 37 set.
    let narrow = VtdSsConfig { haw: 36, ..f.cfg };
    assert_eq!(
        read(&narrow, 0x20_0000),
        Some(Fault::ReservedBit { level: 2, bit: 37 })
    );
    // PS in an SS-PML4E is always reserved.
    put(&f.arena, f.pml4, 2, 0x1_0000_0000 | PS | R);
    assert_eq!(
        read(&f.cfg, 2 << 39),
        Some(Fault::ReservedBit { level: 4, bit: 7 })
    );
    // SNP in a non-leaf entry is reserved even with snoop control.
    put(&f.arena, f.pml4, 3, f.pdpt | R | SNP);
    assert_eq!(
        read(&f.cfg, 3 << 39),
        Some(Fault::ReservedBit { level: 4, bit: 11 })
    );
    // A 2 MiB leaf whose address is not 2 MiB aligned: bit 12 is reserved there.
    put(&f.arena, f.pd, 2, 0x40_1000 | PS | R);
    assert_eq!(
        read(&f.cfg, 0x40_0000),
        Some(Fault::ReservedBit { level: 2, bit: 12 })
    );
    // Bit 62 is reserved everywhere.
    put(&f.arena, f.pt, 5, 0x9000 | R | 1 << 62);
    assert_eq!(
        read(&f.cfg, 0x5000),
        Some(Fault::ReservedBit { level: 1, bit: 62 })
    );
    // A non-present entry is not checked at all.
    put(&f.arena, f.pt, 6, 1 << 62 | SNP | PS);
    assert_eq!(read(&f.cfg, 0x6000), Some(Fault::Translation { level: 1 }));
}

#[test]
fn walk_all_lists_every_leaf_and_table() {
    let f = fixture();
    let leaves: Vec<_> = walk_all(&f.arena, &f.cfg)
        .expect("walk")
        .into_iter()
        .map(|(iova, t)| (iova.get(), t.pa.get(), t.page_size_log2, t.write))
        .collect();
    assert_eq!(
        leaves,
        [
            (0x3000, 0x1234_5000, 12, true),
            (0x20_0000, 0x20_0020_0000, 21, true),
            (0x4000_0000, 0x1_4000_0000, 30, false),
        ]
    );
    let tables: Vec<u64> = table_pages(&f.arena, &f.cfg)
        .expect("tables")
        .iter()
        .map(|p| p.get())
        .collect();
    assert_eq!(tables, [f.pml4, f.pdpt, f.pd, f.pt]);
}

#[test]
fn walk_all_reports_malformed_tables() {
    let f = fixture();
    // The same SS-PT linked twice.
    put(&f.arena, f.pd, 5, f.pt | R | W);
    let err = walk_all(&f.arena, &f.cfg).err();
    assert_eq!(
        err,
        Some(WalkError::TableReachedTwice {
            table: PhysAddr::new(f.pt)
        })
    );
    // A link to memory that is not a live page: the walk would abort there.
    put(&f.arena, f.pd, 5, 0x7000_0000 | R | W);
    let err = walk_all(&f.arena, &f.cfg).err();
    let fault = Fault::ExternalAbort {
        level: 1,
        pa: 0x7000_0000,
    };
    assert_eq!(
        err,
        Some(WalkError::Fault {
            iova: Iova::new(5 << 21),
            fault
        })
    );
}

#[test]
fn three_and_five_levels() {
    let arena = arena_at(0x8000_0000);
    // 3 levels (AGAW 39): the root is an SS-PDPT.
    let (pdpt, pd) = (table(&arena, 12), table(&arena, 12));
    put(&arena, pdpt, 511, pd | R | W);
    put(&arena, pd, 0, 0x60_0000 | PS | R | W);
    let cfg = VtdSsConfig {
        root: PhysAddr::new(pdpt),
        levels: 3,
        haw: 39,
        large_2m: true,
        large_1g: false,
        snoop_control: false,
    };
    let t = translate(&arena, &cfg, Iova::new(511 << 30 | 0x1234), Access::READ).expect("3-level");
    assert_eq!((t.pa.get(), t.page_size_log2), (0x60_1234, 21));
    assert_eq!(
        translate(&arena, &cfg, Iova::new(1 << 39), Access::READ).err(),
        Some(Fault::InputRange { iova: 1 << 39 })
    );
    // Without SLLPS 2 MiB, the same PS is a reserved bit.
    let no_2m = VtdSsConfig {
        large_2m: false,
        ..cfg
    };
    let err = translate(&arena, &no_2m, Iova::new(511 << 30), Access::READ).err();
    assert_eq!(err, Some(Fault::ReservedBit { level: 2, bit: 7 }));

    // 5 levels (AGAW 57): IOVA bit 56 selects SS-PML5E index 256.
    let tables: Vec<u64> = (0..5).map(|_| table(&arena, 12)).collect();
    put(&arena, tables[0], 256, tables[1] | R | W);
    put(&arena, tables[1], 0, tables[2] | R | W);
    put(&arena, tables[2], 0, tables[3] | R | W);
    put(&arena, tables[3], 0, tables[4] | R | W);
    put(&arena, tables[4], 1, 0xabc_d000 | R);
    let cfg = VtdSsConfig {
        root: PhysAddr::new(tables[0]),
        levels: 5,
        haw: 52,
        ..cfg
    };
    let t = translate(&arena, &cfg, Iova::new(1 << 56 | 0x1008), Access::READ).expect("5-level");
    assert_eq!(t.pa.get(), 0xabc_d008);
    assert_eq!(
        walk_all(&arena, &cfg).expect("walk")[0].0,
        Iova::new(1 << 56 | 0x1000)
    );
}

#[test]
fn bad_configs() {
    let f = fixture();
    let bad = |cfg: VtdSsConfig| translate(&f.arena, &cfg, Iova::ZERO, Access::READ).err();
    assert!(matches!(
        bad(VtdSsConfig { levels: 2, ..f.cfg }),
        Some(Fault::BadConfig(_))
    ));
    assert!(matches!(
        bad(VtdSsConfig {
            root: PhysAddr::new(f.pml4 + 8),
            ..f.cfg
        }),
        Some(Fault::BadConfig(_))
    ));
    assert!(matches!(
        bad(VtdSsConfig { haw: 53, ..f.cfg }),
        Some(Fault::BadConfig(_))
    ));
}

/// A run of leaves mapping consecutive pages is decoded once and moved along
/// (`Radix::leaf_address_bits`): an entry of the run with other bits (D) still reads its own,
/// and the run stops being one where it crosses the host address width.
#[test]
fn runs_of_leaves_decode_like_single_leaves() {
    let f = fixture();
    // PT entries 16..20 map 0x8000_0000 onwards; entry 18 is dirty.
    for i in 0..4 {
        let dirty = if i == 2 { D } else { 0 };
        put(
            &f.arena,
            f.pt,
            16 + i,
            (0x8000_0000 + (i << 12)) | R | W | dirty,
        );
    }
    let leaves: Vec<_> = walk_all(&f.arena, &f.cfg)
        .expect("walk")
        .into_iter()
        .filter(|(iova, _)| (0x10_000..0x20_000).contains(&iova.get()))
        .map(|(iova, t)| (iova.get(), t.pa.get(), t.attrs.dirty))
        .collect();
    assert_eq!(
        leaves,
        [
            (0x10_000, 0x8000_0000, false),
            (0x11_000, 0x8000_1000, false),
            (0x12_000, 0x8000_2000, true),
            (0x13_000, 0x8000_3000, false),
        ]
    );
    // HAW is 46: entries 30 and 31 step from the last page below 2^46 to 2^46, a reserved bit.
    put(&f.arena, f.pt, 30, ((1 << 46) - 0x1000) | R | W);
    put(&f.arena, f.pt, 31, (1 << 46) | R | W);
    assert_eq!(
        walk_all(&f.arena, &f.cfg).err(),
        Some(WalkError::Fault {
            iova: Iova::new(31 << 12),
            fault: Fault::ReservedBit { level: 1, bit: 46 },
        })
    );
}
