//! Arm stage 1 (DDI 0487 K.a, D8): AP, PXN/UXN, hierarchical limits, MAIR, start levels.

use std::vec::Vec;

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::Arena;
use crate::sim::walk::arm::{Cacheability, DeviceType, Granule, MemType};
use crate::sim::walk::arm_s1::{table_pages, translate, walk_all, ArmS1Config};
use crate::sim::walk::{Access, AccessKind, Fault, Perms};

const TABLE: u64 = 0b11;
const PAGE: u64 = 0b11;
const BLOCK: u64 = 0b01;
const AP_EL0: u64 = 1 << 6; // AP[1]
const AP_RO: u64 = 1 << 7; // AP[2]
const AF: u64 = 1 << 10;
const NG: u64 = 1 << 11;
const DBM: u64 = 1 << 51;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const AP_TABLE_RO: u64 = 1 << 62; // APTable[1]
const UXN_TABLE: u64 = 1 << 60;

/// AttrIndx in `bits[4:2]`.
const fn attr(index: u64) -> u64 {
    index << 2
}

/// MAIR: Attr0 Device-nGnRnE (0x00), Attr1 Device-nGnRE (0x04), Attr2 Normal WB RA/WA (0xff),
/// Attr3 Normal NC (0x44), Attr4 Normal WT RA/WA inner and outer (0xbb), Attr5 0x0f (high nibble
/// 0 = Device, but low bits non-zero: reserved).
const MAIR: u64 = 0x04 << 8 | 0xff << 16 | 0x44 << 24 | 0xbb << 32 | 0x0f << 40;

struct Fixture {
    arena: Arena,
    cfg: ArmS1Config,
    l1: u64,
    l2: u64,
    l3: u64,
}

/// 4 KiB granule, T0SZ 25 (IAS 39): start level 1 with a full 512-entry root.
/// - 0x1000: Normal WB (Attr2), AP = 0b01 (EL1 and EL0 read/write), nG.
/// - 0x2000: Device-nGnRE (Attr1), AP = 0b10 (EL1 read-only, no EL0), UXN.
/// - 0x3000: AP = 0b00 with UXN = 0: EL0 execute-only.
/// - 2 MiB block at 0x20_0000 -> 0x4020_0000: AP = 0b11 (read-only everywhere), PXN.
fn fixture() -> Fixture {
    let arena = arena_at(0x8000_0000);
    let (l1, l2, l3) = (table(&arena, 12), table(&arena, 12), table(&arena, 12));
    put(&arena, l1, 0, l2 | TABLE);
    put(&arena, l2, 0, l3 | TABLE);
    put(
        &arena,
        l3,
        1,
        0x1111_1000 | PAGE | attr(2) | AP_EL0 | AF | NG,
    );
    put(
        &arena,
        l3,
        2,
        0x2222_2000 | PAGE | attr(1) | AP_RO | AF | UXN,
    );
    put(&arena, l3, 3, 0x3333_3000 | PAGE | attr(2) | AF);
    put(
        &arena,
        l2,
        1,
        0x4020_0000 | BLOCK | attr(3) | AP_EL0 | AP_RO | AF | PXN,
    );
    let cfg = ArmS1Config {
        ttb: PhysAddr::new(l1),
        granule: Granule::K4,
        t0sz: 25,
        oas: 40,
        mair: MAIR,
        hierarchical_permissions: true,
        wxn: false,
        hardware_access_flag: false,
        hardware_dirty: false,
        strict_res0: true,
    };
    Fixture {
        arena,
        cfg,
        l1,
        l2,
        l3,
    }
}

fn perms(f: &Fixture, cfg: &ArmS1Config, va: u64) -> (Perms, Perms) {
    let t = translate(&f.arena, cfg, Iova::new(va), Access::default()).expect("mapped");
    (t.attrs.unprivileged, t.attrs.privileged)
}

const fn p(read: bool, write: bool, exec: bool) -> Perms {
    Perms { read, write, exec }
}

#[test]
fn translation_and_memory_types() {
    let f = fixture();
    let t = translate(&f.arena, &f.cfg, Iova::new(0x1abc), Access::WRITE).expect("page");
    assert_eq!((t.pa.get(), t.page_size_log2), (0x1111_1abc, 12));
    let wb = MemType::Normal {
        inner: Cacheability::WriteBack,
        outer: Cacheability::WriteBack,
    };
    assert_eq!(
        (t.attrs.mair_attr, t.attrs.mem_type, t.attrs.not_global),
        (0xff, wb, true)
    );
    let t = translate(
        &f.arena,
        &f.cfg,
        Iova::new(0x2000),
        Access::READ.privileged(),
    )
    .expect("device");
    assert_eq!(t.attrs.mem_type, MemType::Device(DeviceType::NGnRE));
    let t = translate(&f.arena, &f.cfg, Iova::new(0x2f_fff0), Access::READ).expect("block");
    assert_eq!((t.pa.get(), t.page_size_log2), (0x402f_fff0, 21));
    let nc = MemType::Normal {
        inner: Cacheability::NonCacheable,
        outer: Cacheability::NonCacheable,
    };
    assert_eq!(t.attrs.mem_type, nc);
    // Attr4 0xbb: Write-Through both; Attr5 0x0f: Device with non-zero low bits is reserved.
    put(&f.arena, f.l3, 4, 0x4000 | PAGE | attr(4) | AF);
    put(&f.arena, f.l3, 5, 0x5000 | PAGE | attr(5) | AF);
    let mem_type = |va| {
        translate(&f.arena, &f.cfg, Iova::new(va), Access::default()).map(|t| t.attrs.mem_type)
    };
    let wt = MemType::Normal {
        inner: Cacheability::WriteThrough,
        outer: Cacheability::WriteThrough,
    };
    assert_eq!(mem_type(0x4000), Ok(wt));
    assert_eq!(mem_type(0x5000), Ok(MemType::Reserved(0x0f)));
}

#[test]
fn access_permissions() {
    let f = fixture();
    // AP 0b01: both levels read/write; writable at EL0 means never executable at EL1.
    assert_eq!(
        perms(&f, &f.cfg, 0x1000),
        (p(true, true, true), p(true, true, false))
    );
    // AP 0b10 + UXN: EL1 read-only and executable, nothing at EL0.
    assert_eq!(
        perms(&f, &f.cfg, 0x2000),
        (p(false, false, false), p(true, false, true))
    );
    // AP 0b00, UXN 0: EL0 may only execute.
    assert_eq!(
        perms(&f, &f.cfg, 0x3000),
        (p(false, false, true), p(true, true, true))
    );
    // AP 0b11 + PXN.
    assert_eq!(
        perms(&f, &f.cfg, 0x20_0000),
        (p(true, false, true), p(true, false, false))
    );
    // The checks themselves.
    let go = |va, access| translate(&f.arena, &f.cfg, Iova::new(va), access).err();
    assert_eq!(
        go(0x2000, Access::READ),
        Some(Fault::Permission {
            level: 3,
            denied: AccessKind::Read
        })
    );
    assert_eq!(
        go(0x2000, Access::WRITE.privileged()),
        Some(Fault::Permission {
            level: 3,
            denied: AccessKind::Write
        })
    );
    assert_eq!(
        go(0x1000, Access::EXEC.privileged()),
        Some(Fault::Permission {
            level: 3,
            denied: AccessKind::Exec
        })
    );
    assert_eq!(
        go(0x20_0000, Access::WRITE),
        Some(Fault::Permission {
            level: 2,
            denied: AccessKind::Write
        })
    );
    // WXN: writable means execute-never at that level.
    let wxn = ArmS1Config { wxn: true, ..f.cfg };
    assert_eq!(
        perms(&f, &wxn, 0x3000),
        (p(false, false, true), p(true, true, false))
    );
}

#[test]
fn hierarchical_limits() {
    let f = fixture();
    // APTable[1] and UXNTable in the level-1 descriptor: nothing below is writable or EL0-executable.
    put(&f.arena, f.l1, 0, f.l2 | TABLE | AP_TABLE_RO | UXN_TABLE);
    assert_eq!(
        perms(&f, &f.cfg, 0x1000),
        (p(true, false, false), p(true, false, true))
    );
    // With hierarchical permissions disabled (HPD) the table bits are ignored.
    let hpd = ArmS1Config {
        hierarchical_permissions: false,
        ..f.cfg
    };
    assert_eq!(
        perms(&f, &hpd, 0x1000),
        (p(true, true, true), p(true, true, false))
    );
}

#[test]
fn access_flag_and_dirty_state() {
    let f = fixture();
    put(&f.arena, f.l3, 6, 0x6000 | PAGE | attr(2) | AP_EL0);
    let go = |cfg: &ArmS1Config, va, access| {
        translate(&f.arena, cfg, Iova::new(va), access).map(|t| t.pa.get())
    };
    assert_eq!(
        go(&f.cfg, 0x6000, Access::READ),
        Err(Fault::AccessFlag { level: 3 })
    );
    let ha = ArmS1Config {
        hardware_access_flag: true,
        ..f.cfg
    };
    assert_eq!(go(&ha, 0x6000, Access::READ), Ok(0x6000));
    // Read-only + DBM: a write is permitted when hardware manages dirty state.
    put(
        &f.arena,
        f.l3,
        7,
        0x7000 | PAGE | attr(2) | AP_EL0 | AP_RO | AF | DBM,
    );
    assert_eq!(
        go(&f.cfg, 0x7000, Access::WRITE),
        Err(Fault::Permission {
            level: 3,
            denied: AccessKind::Write
        })
    );
    let hd = ArmS1Config {
        hardware_dirty: true,
        ..f.cfg
    };
    assert_eq!(go(&hd, 0x7000, Access::WRITE), Ok(0x7000));
}

#[test]
fn faults_and_ranges() {
    let f = fixture();
    let go = |va, access| translate(&f.arena, &f.cfg, Iova::new(va), access).err();
    assert_eq!(
        go(1 << 39, Access::READ),
        Some(Fault::InputRange { iova: 1 << 39 })
    );
    assert_eq!(
        go(1 << 30, Access::READ),
        Some(Fault::Translation { level: 1 })
    );
    // A 1 GiB block at level 1 beyond the 40-bit output size.
    put(&f.arena, f.l1, 2, 0x100_0000_0000 | BLOCK | AF);
    let fault = Fault::AddressSize {
        level: 1,
        address: 0x100_0000_0000,
    };
    assert_eq!(go(2 << 30, Access::READ), Some(fault));
    // A table descriptor whose address has RES0 bit 48 set (strict checking).
    put(&f.arena, f.l1, 3, 1 << 48 | f.l2 | TABLE);
    assert_eq!(
        go(3 << 30, Access::READ),
        Some(Fault::ReservedBit { level: 1, bit: 48 })
    );
}

#[test]
fn walk_all_and_tables() {
    let f = fixture();
    let leaves: Vec<_> = walk_all(&f.arena, &f.cfg)
        .expect("walk")
        .into_iter()
        .map(|(va, t)| {
            (
                va.get(),
                t.pa.get(),
                t.page_size_log2,
                t.read,
                t.write,
                t.exec,
            )
        })
        .collect();
    assert_eq!(
        leaves,
        [
            (0x1000, 0x1111_1000, 12, true, true, true),
            (0x2000, 0x2222_2000, 12, false, false, false),
            (0x3000, 0x3333_3000, 12, false, false, true),
            (0x20_0000, 0x4020_0000, 21, true, false, true),
        ]
    );
    let tables: Vec<u64> = table_pages(&f.arena, &f.cfg)
        .expect("tables")
        .iter()
        .map(|p| p.get())
        .collect();
    assert_eq!(tables, [f.l1, f.l2, f.l3]);
}

#[test]
fn start_levels_of_other_granules() {
    let arena = arena_at(0x8000_0000);
    // 16 KiB, IAS 48: four levels, the level-0 root resolves one bit (two entries).
    let (l0, l1, l2) = (table(&arena, 14), table(&arena, 14), table(&arena, 14));
    put(&arena, l0, 1, l1 | TABLE);
    put(&arena, l1, 0, l2 | TABLE);
    put(&arena, l2, 3, 0x600_0000 | BLOCK | AF | AP_EL0);
    let cfg = ArmS1Config {
        ttb: PhysAddr::new(l0),
        granule: Granule::K16,
        t0sz: 16,
        oas: 48,
        mair: MAIR,
        hierarchical_permissions: true,
        wxn: false,
        hardware_access_flag: false,
        hardware_dirty: false,
        strict_res0: true,
    };
    let go = |cfg: &ArmS1Config, va| {
        translate(&arena, cfg, Iova::new(va), Access::READ).map(|t| (t.pa.get(), t.page_size_log2))
    };
    assert_eq!(go(&cfg, 1 << 47 | 3 << 25 | 0x10), Ok((0x600_0010, 25)));
    let tables: Vec<u64> = table_pages(&arena, &cfg)
        .expect("tables")
        .iter()
        .map(|p| p.get())
        .collect();
    assert_eq!(tables, [l0, l1, l2]);

    // 64 KiB, IAS 48: three levels, the level-1 root resolves bits 47:42 (64 entries).
    let (r1, r2) = (table(&arena, 16), table(&arena, 16));
    put(&arena, r1, 63, r2 | TABLE);
    put(&arena, r2, 2, 0x4000_0000 | BLOCK | AF | AP_EL0);
    let cfg64 = ArmS1Config {
        ttb: PhysAddr::new(r1),
        granule: Granule::K64,
        ..cfg
    };
    assert_eq!(
        go(&cfg64, 63 << 42 | 2 << 29 | 0x1234),
        Ok((0x4000_1234, 29))
    );
    // A 512-byte root must be at least 512-byte aligned.
    let misaligned = ArmS1Config {
        ttb: PhysAddr::new(r1 + 0x100),
        ..cfg64
    };
    assert!(matches!(go(&misaligned, 0), Err(Fault::BadConfig(_))));
}
