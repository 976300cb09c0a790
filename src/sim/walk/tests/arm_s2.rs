//! Arm stage 2 (DDI 0487 K.a, D8): concatenated roots, three granules, 52-bit output.

use std::vec::Vec;

use super::{arena_at, put, table};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::Arena;
use crate::sim::walk::arm::{Cacheability, DeviceType, Granule, MemType, Shareability};
use crate::sim::walk::arm_s2::{root_shape, table_pages, translate, walk_all, ArmS2Config};
use crate::sim::walk::{Access, AccessKind, Fault, WalkError};

// Descriptor bits, from the stage-2 block/page descriptor format.
const TABLE: u64 = 0b11; // bits[1:0] at levels 0-2
const PAGE: u64 = 0b11; // bits[1:0] at level 3
const BLOCK: u64 = 0b01; // bits[1:0] at levels 1-2
const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const SH_INNER: u64 = 0b11 << 8;
const AF: u64 = 1 << 10;
const DBM: u64 = 1 << 51;
const CONT: u64 = 1 << 52;
const XN: u64 = 1 << 54;

/// `MemAttr[3:0]` in `bits[5:2]`.
const fn memattr(value: u64) -> u64 {
    value << 2
}

fn config(ttb: u64, granule: Granule, t0sz: u8, sl0: u8, oas: u32) -> ArmS2Config {
    ArmS2Config {
        ttb: PhysAddr::new(ttb),
        granule,
        t0sz,
        sl0,
        oas,
        fwb: false,
        xnx: false,
        hardware_access_flag: false,
        hardware_dirty: false,
        strict_res0: true,
    }
}

fn go(arena: &Arena, cfg: &ArmS2Config, ipa: u64, access: Access) -> Result<(u64, u32), Fault> {
    translate(arena, cfg, Iova::new(ipa), access).map(|t| (t.pa.get(), t.page_size_log2))
}

/// 4 KiB granule, IAS 40 (T0SZ 24), SL0 = 1: start level 1 resolves IPA bits 39:30, ten bits,
/// one more than a table holds, so the root is two concatenated 4 KiB tables (8 KiB, 8 KiB
/// aligned) and IPA bit 39 selects the second.
struct Concatenated {
    arena: Arena,
    cfg: ArmS2Config,
    root: u64,
    l2: u64,
    l3: u64,
}

fn concatenated() -> Concatenated {
    let arena = arena_at(0x8000_0000);
    let root = table(&arena, 13);
    let (l2, l3) = (table(&arena, 12), table(&arena, 12));
    // Root index 512 = first entry of the second table = IPA 1 << 39.
    put(&arena, root, 512, l2 | TABLE);
    put(&arena, l2, 0, l3 | TABLE);
    // 4 KiB page at IPA (1 << 39) + 0x1000: Normal WB (MemAttr 0b1111), RW, inner shareable.
    put(
        &arena,
        l3,
        1,
        0x4000_1000 | PAGE | memattr(0b1111) | S2AP_R | S2AP_W | SH_INNER | AF,
    );
    // 1 GiB block at IPA 1 << 30: Device-nGnRE (MemAttr 0b0001), read-only, execute-never.
    put(
        &arena,
        root,
        1,
        0xc000_0000 | BLOCK | memattr(0b0001) | S2AP_R | AF | XN,
    );
    // 2 MiB block at IPA (1 << 39) + 2 MiB with AF clear, Normal NC (0b0101), contiguous.
    put(
        &arena,
        l2,
        1,
        0x60_0000 | BLOCK | memattr(0b0101) | S2AP_R | S2AP_W | CONT,
    );
    let cfg = config(root, Granule::K4, 24, 1, 40);
    Concatenated {
        arena,
        cfg,
        root,
        l2,
        l3,
    }
}

#[test]
fn concatenated_root_translates() {
    let c = concatenated();
    assert_eq!(root_shape(&c.cfg), Ok((1, 2)));
    let t = translate(&c.arena, &c.cfg, Iova::new(1 << 39 | 0x1234), Access::WRITE).expect("page");
    assert_eq!(
        (t.pa.get(), t.page_size_log2, t.exec),
        (0x4000_1234, 12, true)
    );
    let normal_wb = MemType::Normal {
        inner: Cacheability::WriteBack,
        outer: Cacheability::WriteBack,
    };
    assert_eq!(
        (t.attrs.mem_type, t.attrs.shareability),
        (normal_wb, Shareability::Inner)
    );

    let t = translate(&c.arena, &c.cfg, Iova::new(0x4abc_def0), Access::READ).expect("1G block");
    assert_eq!(
        (t.pa.get(), t.page_size_log2, t.exec),
        (0xcabc_def0, 30, false)
    );
    assert_eq!(t.attrs.mem_type, MemType::Device(DeviceType::NGnRE));
}

#[test]
fn faults() {
    let c = concatenated();
    let go = |cfg: &ArmS2Config, ipa, access| go(&c.arena, cfg, ipa, access);
    assert_eq!(
        go(&c.cfg, 1 << 30, Access::WRITE),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Write
        })
    );
    assert_eq!(
        go(&c.cfg, 1 << 30, Access::EXEC),
        Err(Fault::Permission {
            level: 1,
            denied: AccessKind::Exec
        })
    );
    // AF = 0 faults before permissions unless hardware manages AF.
    let block_2m = 1 << 39 | 0x20_0000;
    assert_eq!(
        go(&c.cfg, block_2m, Access::WRITE),
        Err(Fault::AccessFlag { level: 2 })
    );
    let ha = ArmS2Config {
        hardware_access_flag: true,
        ..c.cfg
    };
    assert_eq!(go(&ha, block_2m + 5, Access::WRITE), Ok((0x60_0005, 21)));
    // Invalid descriptors and IPAs beyond the 40-bit IAS.
    assert_eq!(
        go(&c.cfg, 0, Access::READ),
        Err(Fault::Translation { level: 1 })
    );
    assert_eq!(
        go(&c.cfg, 1 << 39, Access::READ),
        Err(Fault::Translation { level: 3 })
    );
    assert_eq!(
        go(&c.cfg, 1 << 40, Access::READ),
        Err(Fault::InputRange { iova: 1 << 40 })
    );
    // 0b01 at level 3 is reserved: a translation fault, not a block.
    put(&c.arena, c.l3, 2, 0x9000 | BLOCK | AF | S2AP_R);
    assert_eq!(
        go(&c.cfg, 1 << 39 | 0x2000, Access::READ),
        Err(Fault::Translation { level: 3 })
    );
    // An output address at or above the 40-bit OAS.
    put(&c.arena, c.l3, 3, 1 << 40 | PAGE | AF | S2AP_R);
    let address_size = Fault::AddressSize {
        level: 3,
        address: 1 << 40,
    };
    assert_eq!(
        go(&c.cfg, 1 << 39 | 0x3000, Access::READ),
        Err(address_size)
    );
    // A 1 GiB block address with bit 29 set: RES0 under strict checking, ignored by hardware.
    put(&c.arena, c.root, 2, 0xa000_0000 | BLOCK | AF | S2AP_R);
    assert_eq!(
        go(&c.cfg, 2 << 30, Access::READ),
        Err(Fault::ReservedBit { level: 1, bit: 29 })
    );
    let lax = ArmS2Config {
        strict_res0: false,
        ..c.cfg
    };
    assert_eq!(go(&lax, 2 << 30, Access::READ), Ok((0x8000_0000, 30)));
}

#[test]
fn dirty_state_and_xnx() {
    let c = concatenated();
    // A DBM page without S2AP[1]: writable only when hardware manages dirty state.
    put(&c.arena, c.l3, 4, 0x7000 | PAGE | AF | S2AP_R | DBM);
    let ipa = 1 << 39 | 0x4000;
    assert_eq!(
        go(&c.arena, &c.cfg, ipa, Access::WRITE),
        Err(Fault::Permission {
            level: 3,
            denied: AccessKind::Write
        })
    );
    let hd = ArmS2Config {
        hardware_dirty: true,
        ..c.cfg
    };
    let t = translate(&c.arena, &hd, Iova::new(ipa), Access::WRITE).expect("DBM write");
    assert!(t.attrs.dbm && !t.attrs.s2ap_write);
    // FEAT_XNX: XN[1:0] = 0b01 lets EL0 execute but not EL1; 0b11 the opposite.
    put(&c.arena, c.l3, 5, 0x8000 | PAGE | AF | S2AP_R | 1 << 53);
    put(&c.arena, c.l3, 6, 0x9000 | PAGE | AF | S2AP_R | 3 << 53);
    let xnx = ArmS2Config { xnx: true, ..c.cfg };
    let exec = |ipa: u64, access| go(&c.arena, &xnx, 1 << 39 | ipa, access).is_ok();
    assert!(exec(0x5000, Access::EXEC) && !exec(0x5000, Access::EXEC.privileged()));
    assert!(!exec(0x6000, Access::EXEC) && exec(0x6000, Access::EXEC.privileged()));
    // Without FEAT_XNX bit 53 is RES0.
    let err = go(&c.arena, &c.cfg, 1 << 39 | 0x5000, Access::READ).err();
    assert_eq!(err, Some(Fault::ReservedBit { level: 3, bit: 53 }));
}

#[test]
fn memattr_with_and_without_fwb() {
    let c = concatenated();
    let encodings = [
        (0b0000u64, 0),
        (0b0110, 1),
        (0b0101, 2),
        (0b0111, 3),
        (0b0100, 4),
        (0b1010, 5),
    ];
    for (value, index) in encodings {
        put(
            &c.arena,
            c.l3,
            16 + index,
            0x10_0000 | PAGE | AF | S2AP_R | memattr(value),
        );
    }
    let mem_type = |cfg: &ArmS2Config, index: u64| {
        translate(
            &c.arena,
            cfg,
            Iova::new(1 << 39 | (16 + index) << 12),
            Access::READ,
        )
        .map(|t| t.attrs.mem_type)
    };
    let normal = |inner, outer| Ok(MemType::Normal { inner, outer });
    use Cacheability::{NonCacheable as Nc, WriteBack as Wb, WriteThrough as Wt};
    // Without FWB: [3:2] = outer, [1:0] = inner; [3:2] = 0 is Device.
    assert_eq!(mem_type(&c.cfg, 0), Ok(MemType::Device(DeviceType::NGnRnE)));
    assert_eq!(
        mem_type(&c.cfg, 1),
        normal(Wt, Nc),
        "0b0110: outer NC, inner WT"
    );
    assert_eq!(
        mem_type(&c.cfg, 4),
        Ok(MemType::Reserved(0b0100)),
        "inner 0b00 is not Normal"
    );
    assert_eq!(mem_type(&c.cfg, 5), normal(Wt, Wt));
    // With FWB: 0b110 forces Write-Back, 0b101 Non-cacheable, 0b111 passes stage 1 through.
    let fwb = ArmS2Config { fwb: true, ..c.cfg };
    assert_eq!(mem_type(&fwb, 1), normal(Wb, Wb));
    assert_eq!(mem_type(&fwb, 2), normal(Nc, Nc));
    assert_eq!(mem_type(&fwb, 3), Ok(MemType::Stage1));
    assert_eq!(mem_type(&fwb, 4), Ok(MemType::Reserved(0b0100)));
    assert_eq!(mem_type(&fwb, 5), Ok(MemType::Reserved(0b1010)));
}

#[test]
fn walk_all_and_table_pages() {
    let c = concatenated();
    // The 2 MiB block carries the Contiguous bit alone: its 32 MiB run is incomplete.
    assert_eq!(
        walk_all(&c.arena, &c.cfg).err(),
        Some(WalkError::Fault {
            iova: Iova::new(1 << 39),
            fault: Fault::ContiguousMisprogrammed { level: 2 },
        })
    );
    put(
        &c.arena,
        c.l2,
        1,
        0x60_0000 | BLOCK | memattr(0b0101) | S2AP_R | S2AP_W,
    );
    let leaves: Vec<_> = walk_all(&c.arena, &c.cfg)
        .expect("walk")
        .into_iter()
        .map(|(ipa, t)| {
            (
                ipa.get(),
                t.pa.get(),
                t.page_size_log2,
                t.write,
                t.attrs.contiguous,
            )
        })
        .collect();
    assert_eq!(
        leaves,
        [
            (1 << 30, 0xc000_0000, 30, false, false),
            (1 << 39 | 0x1000, 0x4000_1000, 12, true, false),
            (1 << 39 | 0x20_0000, 0x60_0000, 21, true, false),
        ]
    );
    let tables: Vec<u64> = table_pages(&c.arena, &c.cfg)
        .expect("tables")
        .iter()
        .map(|p| p.get())
        .collect();
    assert_eq!(tables, [c.root, c.l2, c.l3]);
    // A level-2 table linked into itself.
    put(&c.arena, c.l2, 7, c.l2 | TABLE);
    let err = walk_all(&c.arena, &c.cfg).err();
    assert_eq!(
        err,
        Some(WalkError::TableReachedTwice {
            table: PhysAddr::new(c.l2)
        })
    );
}

#[test]
fn inconsistent_configurations() {
    let c = concatenated();
    let bad = |cfg: ArmS2Config| {
        matches!(
            translate(&c.arena, &cfg, Iova::ZERO, Access::READ),
            Err(Fault::BadConfig(_))
        )
    };
    // SL0 = 0 starts at level 2: 19 bits at the root, more than 16 concatenated tables.
    assert!(bad(ArmS2Config { sl0: 0, ..c.cfg }));
    // IAS 44 at level 1 needs 32 tables.
    assert!(bad(ArmS2Config { t0sz: 20, ..c.cfg }));
    // IAS 30 at level 1 leaves no bit for the root.
    assert!(bad(ArmS2Config { t0sz: 34, ..c.cfg }));
    // An 8 KiB root must be 8 KiB aligned.
    assert!(bad(ArmS2Config {
        ttb: PhysAddr::new(c.root + 0x1000),
        ..c.cfg
    }));
    // SL0 = 3 is not modelled (FEAT_TTST / LPA2); 52-bit output needs 64 KiB.
    assert!(bad(ArmS2Config { sl0: 3, ..c.cfg }));
    assert!(bad(ArmS2Config { oas: 52, ..c.cfg }));
    assert!(bad(ArmS2Config { oas: 41, ..c.cfg }));
    // IAS 40 at level 0 is consistent too: a 2-entry root.
    assert_eq!(root_shape(&ArmS2Config { sl0: 2, ..c.cfg }), Ok((0, 1)));
}

#[test]
fn granule_16k() {
    // 16 KiB granule, IAS 40 (T0SZ 24), SL0 = 2: start level 1 resolves bits 39:36 (16 entries),
    // level 2 bits 35:25 (32 MiB blocks), level 3 bits 24:14 (16 KiB pages).
    let arena = arena_at(0x8000_0000);
    let (l1, l2, l3) = (table(&arena, 14), table(&arena, 14), table(&arena, 14));
    put(&arena, l1, 15, l2 | TABLE);
    put(&arena, l2, 0, l3 | TABLE);
    put(&arena, l3, 3, 0x1234_c000 | PAGE | AF | S2AP_R);
    put(&arena, l2, 2, 0x1_0600_0000 | BLOCK | AF | S2AP_R | S2AP_W);
    let cfg = config(l1, Granule::K16, 24, 2, 40);
    assert_eq!(root_shape(&cfg), Ok((1, 1)));
    let base = 15u64 << 36;
    assert_eq!(
        go(&arena, &cfg, base | 3 << 14 | 0x3ff8, Access::READ),
        Ok((0x1234_fff8, 14))
    );
    assert_eq!(
        go(&arena, &cfg, base | 2 << 25 | 0x1ff_ffff, Access::WRITE),
        Ok((0x1_07ff_ffff, 25))
    );
    // A block at level 1 is not allowed with 16 KiB.
    put(&arena, l1, 0, 0x10_0000_0000 | BLOCK | AF | S2AP_R);
    assert_eq!(
        go(&arena, &cfg, 0, Access::READ),
        Err(Fault::Translation { level: 1 })
    );
    // Bits 13:12 of a 16 KiB page address are RES0.
    put(&arena, l3, 4, 0x5000 | PAGE | AF | S2AP_R);
    assert_eq!(
        go(&arena, &cfg, base | 4 << 14, Access::READ),
        Err(Fault::ReservedBit { level: 3, bit: 12 })
    );
}

#[test]
fn granule_64k_with_52_bit_addresses() {
    // Tables live above 2^48, so every table address needs OA[51:48] in bits[15:12].
    let arena = arena_at(1 << 48);
    // 64 KiB granule, IAS 52 (T0SZ 12), SL0 = 2: start level 1 resolves bits 51:42 (1024
    // entries, 8 KiB), level 2 bits 41:29 (512 MiB blocks), level 3 bits 28:16 (64 KiB pages).
    let (l1, l2, l3) = (table(&arena, 16), table(&arena, 16), table(&arena, 16));
    let link = |table: u64| (table & 0xffff_ffff_0000) | ((table >> 48) & 0xf) << 12 | TABLE;
    put(&arena, l1, 1023, link(l2));
    put(&arena, l2, 5, link(l3));
    // A page at OA 0xa_0123_4567_0000: bits[47:16] = 0x0123_4567, OA[51:48] = 0xa in bits[15:12].
    put(
        &arena,
        l3,
        7,
        0x0123_4567_0000 | 0xa << 12 | PAGE | AF | S2AP_R,
    );
    // A 512 MiB block at OA 0xf_0000_2000_0000.
    put(&arena, l2, 6, 0x2000_0000 | 0xf << 12 | BLOCK | AF | S2AP_R);
    // FEAT_LPA allows a 4 TiB block at level 1 with a 52-bit output size.
    put(&arena, l1, 1, 0x400_0000_0000 | BLOCK | AF | S2AP_R);
    let cfg = config(l1, Granule::K64, 12, 2, 52);
    assert_eq!(root_shape(&cfg), Ok((1, 1)));
    let top = 1023u64 << 42;
    assert_eq!(
        go(&arena, &cfg, top | 5 << 29 | 7 << 16 | 0xabc, Access::READ),
        Ok((0xa_0123_4567_0abc, 16))
    );
    assert_eq!(
        go(&arena, &cfg, top | 6 << 29 | 0x10, Access::READ),
        Ok((0xf_0000_2000_0010, 29))
    );
    assert_eq!(
        go(&arena, &cfg, 1 << 42 | 0x42, Access::READ),
        Ok((0x400_0000_0042, 42))
    );
    // With a 48-bit output size (and IAS 48) the same root is beyond the OAS.
    let oas48 = ArmS2Config {
        oas: 48,
        t0sz: 16,
        ..cfg
    };
    let err = translate(&arena, &oas48, Iova::ZERO, Access::READ).err();
    assert_eq!(
        err,
        Some(Fault::AddressSize {
            level: 1,
            address: l1
        })
    );
}

#[test]
fn granule_64k_oa_high_bits_beyond_a_48_bit_oas() {
    let arena = arena_at(0x8000_0000);
    // IAS 48 (T0SZ 16), SL0 = 2: start level 1 resolves bits 47:42 (64 entries).
    let (l1, l2) = (table(&arena, 16), table(&arena, 16));
    put(&arena, l1, 0, l2 | TABLE);
    // OA[51:48] = 1 in bits[15:12] of a 512 MiB block: beyond a 48-bit OAS.
    put(&arena, l2, 0, 0x2000_0000 | 1 << 12 | BLOCK | AF | S2AP_R);
    // A level-1 block needs a 52-bit output size with 64 KiB.
    put(&arena, l1, 1, 0x400_0000_0000 | BLOCK | AF | S2AP_R);
    let cfg = config(l1, Granule::K64, 16, 2, 48);
    let address = 1 << 48 | 0x2000_0000;
    assert_eq!(
        go(&arena, &cfg, 0, Access::READ),
        Err(Fault::AddressSize { level: 2, address })
    );
    assert_eq!(
        go(&arena, &cfg, 1 << 42, Access::READ),
        Err(Fault::Translation { level: 1 })
    );
}

#[test]
fn contiguous_runs_must_be_whole_and_consistent() {
    let c = concatenated();
    put(
        &c.arena,
        c.l2,
        1,
        0x60_0000 | BLOCK | memattr(0b0101) | S2AP_R | S2AP_W,
    );
    // Sixteen 4 KiB pages at IPA (1 << 39) + 64 KiB, output 0x4010_0000 (64 KiB aligned).
    let leaf = |k: u64| (0x4010_0000 + (k << 12)) | PAGE | memattr(0b1111) | S2AP_R | AF | CONT;
    for k in 0..16 {
        put(&c.arena, c.l3, 16 + k, leaf(k));
    }
    let run: Vec<_> = walk_all(&c.arena, &c.cfg)
        .expect("a whole run")
        .into_iter()
        .filter(|(_, t)| t.attrs.contiguous)
        .map(|(ipa, t)| (ipa.get(), t.pa.get()))
        .collect();
    assert_eq!(run.len(), 16);
    assert_eq!(run[15], (1 << 39 | 0x1f000, 0x4010_f000));
    let misprogrammed = Some(WalkError::Fault {
        iova: Iova::new(1 << 39 | 0x10000),
        fault: Fault::ContiguousMisprogrammed { level: 3 },
    });
    // Each of these breaks the run: a hole, a non-consecutive output, other permissions.
    for (k, bad) in [(5, 0), (7, leaf(8)), (15, leaf(15) | S2AP_W)] {
        put(&c.arena, c.l3, 16 + k, bad);
        assert_eq!(walk_all(&c.arena, &c.cfg).err(), misprogrammed, "entry {k}");
        put(&c.arena, c.l3, 16 + k, leaf(k));
    }
    // The access flag is per entry: hardware may set it in any one of them.
    put(&c.arena, c.l3, 16 + 3, leaf(3) & !AF);
    assert!(walk_all(&c.arena, &c.cfg).is_ok());
}

/// A run of pages mapping consecutive output is decoded once and moved along
/// (`Radix::leaf_address_bits`): a page of the run with other bits (AF clear) still reads its
/// own, and the run stops being one where it crosses the output address size.
#[test]
fn runs_of_pages_decode_like_single_pages() {
    let c = concatenated();
    put(&c.arena, c.l2, 1, 0); // the incomplete contiguous block
    let rw = PAGE | memattr(0b1111) | S2AP_R | S2AP_W;
    for i in 0..4u64 {
        let af = if i == 2 { 0 } else { AF };
        put(&c.arena, c.l3, 16 + i, (0x8000_0000 + (i << 12)) | rw | af);
    }
    let leaves: Vec<_> = walk_all(&c.arena, &c.cfg)
        .expect("walk")
        .into_iter()
        .filter(|(ipa, _)| ipa.get() >= 1 << 39 | 0x10_000)
        .map(|(ipa, t)| (ipa.get() & 0xff_ffff, t.pa.get(), t.attrs.accessed))
        .collect();
    assert_eq!(
        leaves,
        [
            (0x10_000, 0x8000_0000, true),
            (0x11_000, 0x8000_1000, true),
            (0x12_000, 0x8000_2000, false),
            (0x13_000, 0x8000_3000, true),
        ]
    );
    // OAS is 40: entries 30 and 31 step from the last page below 2^40 to 2^40.
    put(&c.arena, c.l3, 30, ((1 << 40) - 0x1000) | rw | AF);
    put(&c.arena, c.l3, 31, (1 << 40) | rw | AF);
    assert_eq!(
        walk_all(&c.arena, &c.cfg).err(),
        Some(WalkError::Fault {
            iova: Iova::new(1 << 39 | 31 << 12),
            fault: Fault::AddressSize {
                level: 3,
                address: 1 << 40
            },
        })
    );
}
