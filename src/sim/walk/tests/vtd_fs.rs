//! VT-d first stage (rev 4.1 §9.7, IA-32e paging): hand-built 4- and 5-level tables.

use std::vec::Vec;

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::Arena;
use crate::sim::walk::vtd_fs::{table_pages, translate, walk_all, VtdFsConfig};
use crate::sim::walk::{Access, AccessKind, Fault, Perms};

const P: u64 = 1; // bit 0
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const PAT_LARGE: u64 = 1 << 12;
const XD: u64 = 1 << 63;

/// Non-leaf entries grant everything (P, R/W, U/S) so the leaves decide, except where a test
/// says otherwise.
const LINK: u64 = P | RW | US;

struct Fixture {
    arena: Arena,
    cfg: VtdFsConfig,
    pml4: u64,
    pdpt: u64,
    pd: u64,
    pt: u64,
}

/// - 4 KiB at 0x1000 -> 0x5555_5000: user, writable, A + D.
/// - 4 KiB at 0x2000 -> 0x6666_6000: supervisor-only, read-only, XD, PWT (PAT index 1).
/// - 2 MiB at 0x20_0000 -> 0x4000_0000: user read-only, PAT + PCD (PAT index 6).
/// - 1 GiB at 0x4000_0000 -> 0x2_0000_0000: user, writable.
fn fixture() -> Fixture {
    let arena = arena_at(0x8000_0000);
    let (pml4, pdpt, pd, pt) = (
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
        table(&arena, 12),
    );
    put(&arena, pml4, 0, pdpt | LINK);
    put(&arena, pdpt, 0, pd | LINK);
    put(&arena, pd, 0, pt | LINK);
    put(&arena, pt, 1, 0x5555_5000 | P | RW | US | A | D);
    put(&arena, pt, 2, 0x6666_6000 | P | PWT | XD);
    put(&arena, pd, 1, 0x4000_0000 | P | US | PS | PAT_LARGE | PCD);
    put(&arena, pdpt, 1, 0x2_0000_0000 | P | RW | US | PS);
    let cfg = VtdFsConfig {
        root: PhysAddr::new(pml4),
        levels: 4,
        haw: 46,
        large_1g: true,
        execute_disable: true,
        write_protect: true,
        smep: true,
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

fn go(f: &Fixture, iova: u64, access: Access) -> Result<(u64, u32), Fault> {
    translate(&f.arena, &f.cfg, Iova::new(iova), access).map(|t| (t.pa.get(), t.page_size_log2))
}

#[test]
fn leaves_of_each_size_translate() {
    let f = fixture();
    assert_eq!(go(&f, 0x1234, Access::WRITE), Ok((0x5555_5234, 12)));
    assert_eq!(go(&f, 0x2f_ffff, Access::READ), Ok((0x400f_ffff, 21)));
    assert_eq!(go(&f, 0x7fff_fff8, Access::WRITE), Ok((0x2_3fff_fff8, 30)));
    let t = translate(&f.arena, &f.cfg, Iova::new(0x20_0000), Access::READ).expect("2M");
    assert_eq!(t.attrs.pat_index, 0b110);
    let t = translate(&f.arena, &f.cfg, Iova::new(0x1000), Access::READ).expect("4K");
    assert!(t.attrs.accessed && t.attrs.dirty);
    assert_eq!(
        t.attrs.supervisor,
        Perms {
            read: true,
            write: true,
            exec: false
        },
        "SMEP: user page"
    );
    assert_eq!(
        t.attrs.user,
        Perms {
            read: true,
            write: true,
            exec: true
        }
    );
    let t = translate(
        &f.arena,
        &f.cfg,
        Iova::new(0x2000),
        Access::READ.privileged(),
    )
    .expect("4K");
    assert_eq!(t.attrs.pat_index, 0b001);
}

#[test]
fn user_supervisor_and_write_checks() {
    let f = fixture();
    // The supervisor-only page refuses user reads, and is read-only and XD for everyone.
    assert_eq!(
        go(&f, 0x2000, Access::READ),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Read
        })
    );
    assert_eq!(
        go(&f, 0x2000, Access::READ.privileged()),
        Ok((0x6666_6000, 12))
    );
    let write = Access::WRITE.privileged();
    assert_eq!(
        go(&f, 0x2000, write),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Write
        })
    );
    let exec = Access::EXEC.privileged();
    assert_eq!(
        go(&f, 0x2000, exec),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Exec
        })
    );
    // With WPE = 0 a supervisor may write a read-only page.
    let no_wp = VtdFsConfig {
        write_protect: false,
        ..f.cfg
    };
    assert!(translate(&f.arena, &no_wp, Iova::new(0x2000), write).is_ok());
    // SMEP: a supervisor fetch from a user page is refused; without SMEP it is allowed.
    assert_eq!(
        go(&f, 0x1000, exec),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Exec
        })
    );
    let no_smep = VtdFsConfig {
        smep: false,
        ..f.cfg
    };
    assert!(translate(&f.arena, &no_smep, Iova::new(0x1000), exec).is_ok());
    // User write to the read-only 2 MiB page.
    assert_eq!(
        go(&f, 0x20_0000, Access::WRITE),
        Err(Fault::Permission {
            level: 2,
            denied: AccessKind::Write
        })
    );
    // Rights are the AND over the walk: clear U/S in the PDPE and the 4 KiB user page is gone
    // for user requests; set XD in the PML4E and nothing executes.
    put(&f.arena, f.pdpt, 0, f.pd | P | RW);
    assert_eq!(
        go(&f, 0x1000, Access::READ),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Read
        })
    );
    put(&f.arena, f.pml4, 0, f.pdpt | LINK | XD);
    let exec_user = translate(&f.arena, &no_smep, Iova::new(0x4000_0000), Access::EXEC).err();
    assert_eq!(
        exec_user,
        Some(Fault::Permission {
            level: 3,
            denied: AccessKind::Exec
        })
    );
}

#[test]
fn reserved_bits_and_canonical_addresses() {
    let f = fixture();
    let read = |cfg: &VtdFsConfig, iova| {
        translate(&f.arena, cfg, Iova::new(iova), Access::READ.privileged()).err()
    };
    // PS at the PDPE without FS1GP.
    let no_1g = VtdFsConfig {
        large_1g: false,
        ..f.cfg
    };
    assert_eq!(
        read(&no_1g, 0x4000_0000),
        Some(Fault::ReservedBit { level: 3, bit: 7 })
    );
    // XD without execute-disable enabled.
    let no_xd = VtdFsConfig {
        execute_disable: false,
        ..f.cfg
    };
    assert_eq!(
        read(&no_xd, 0x2000),
        Some(Fault::ReservedBit { level: 1, bit: 63 })
    );
    // Address above the HAW: 0x2_0000_0000 has bit 33 set.
    let narrow = VtdFsConfig { haw: 33, ..f.cfg };
    assert_eq!(
        read(&narrow, 0x4000_0000),
        Some(Fault::ReservedBit { level: 3, bit: 33 })
    );
    // PS in a PML4E.
    put(&f.arena, f.pml4, 1, 0x80_0000_0000 | P | PS);
    assert_eq!(
        read(&f.cfg, 1 << 39),
        Some(Fault::ReservedBit { level: 4, bit: 7 })
    );
    // Bits 20:13 of a 2 MiB leaf (bit 12 is PAT).
    put(&f.arena, f.pd, 2, 0x60_2000 | P | PS);
    assert_eq!(
        read(&f.cfg, 0x40_0000),
        Some(Fault::ReservedBit { level: 2, bit: 13 })
    );
    // Bits 29:13 of a 1 GiB leaf.
    put(&f.arena, f.pdpt, 2, 0x8000_4000 | P | PS);
    assert_eq!(
        read(&f.cfg, 0x8000_0000),
        Some(Fault::ReservedBit { level: 3, bit: 14 })
    );
    // Non-canonical: bit 47 set but 63:48 clear.
    assert_eq!(
        read(&f.cfg, 1 << 47),
        Some(Fault::InputRange { iova: 1 << 47 })
    );
    // The canonical upper half indexes PML4 entry 256 and up.
    put(&f.arena, f.pml4, 256, f.pdpt | LINK);
    let upper = 0xffff_8000_0000_1000;
    assert_eq!(go(&f, upper, Access::WRITE), Ok((0x5555_5000, 12)));
}

#[test]
fn walk_all_and_tables() {
    let f = fixture();
    let leaves: Vec<_> = walk_all(&f.arena, &f.cfg)
        .expect("walk")
        .into_iter()
        .map(|(iova, t)| (iova.get(), t.pa.get(), t.page_size_log2, t.read, t.write))
        .collect();
    assert_eq!(
        leaves,
        [
            (0x1000, 0x5555_5000, 12, true, true),
            (0x2000, 0x6666_6000, 12, false, false),
            (0x20_0000, 0x4000_0000, 21, true, false),
            (0x4000_0000, 0x2_0000_0000, 30, true, true),
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
fn five_levels_and_sign_extension() {
    let arena = arena_at(0x8000_0000);
    let t: Vec<u64> = (0..5).map(|_| table(&arena, 12)).collect();
    // PML5 index 511 is the top of the canonical upper half: bits 63:57 all ones.
    put(&arena, t[0], 511, t[1] | LINK);
    put(&arena, t[1], 0, t[2] | LINK);
    put(&arena, t[2], 0, t[3] | LINK);
    put(&arena, t[3], 0, t[4] | LINK);
    put(&arena, t[4], 0, 0x7000 | P | US);
    let cfg = VtdFsConfig {
        root: PhysAddr::new(t[0]),
        levels: 5,
        haw: 52,
        large_1g: false,
        execute_disable: false,
        write_protect: true,
        smep: false,
    };
    let iova = 0xffff_0000_0000_0000u64 | 0x10;
    let got = translate(&arena, &cfg, Iova::new(iova), Access::READ).map(|t| t.pa.get());
    assert_eq!(got, Ok(0x7010));
    assert_eq!(
        walk_all(&arena, &cfg).expect("walk")[0].0,
        Iova::new(0xffff_0000_0000_0000)
    );
    // 1 << 56 without the sign extension above it is not canonical with 5 levels.
    let err = translate(&arena, &cfg, Iova::new(1 << 56), Access::READ).err();
    assert_eq!(err, Some(Fault::InputRange { iova: 1 << 56 }));
}
