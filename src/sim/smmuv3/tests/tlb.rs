//! The caches keep entries until the right invalidation removes them.

use super::translate::{s1_setup, s2_setup};
use super::*;
use crate::mem::{Page, PhysAddr};
use crate::sim::smmuv3::event::*;
use crate::sim::walk::Access;

const IOVA: u64 = 0x1234_5000;

fn pa_of(m: &SmmuModel<'_>, sid: u32, ssid: Option<u32>, va: u64) -> u64 {
    m.translate(sid, ssid, va, Access::READ).unwrap().pa
}

#[test]
fn stage2_entry_is_stale_until_tlbi_s2_ipa() {
    let rig = Rig::new();
    let (root, pa, _) = s2_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    let pa2 = rig.page();
    rig.w(rig.slot(root, 1, IOVA, 3), pa2 | S2_RW_WB | 3);
    assert_eq!(pa_of(&m, 3, None, IOVA), pa, "no invalidation yet");
    // Wrong VMID, wrong page, stage-1 forms: still stale.
    rig.submit(
        &m,
        &[
            cmd::tlbi_s2_ipa(8, IOVA, true),
            cmd::tlbi_s2_ipa(7, IOVA + 0x1000, true),
            cmd::tlbi_nh_all(7),
            cmd::sync(),
        ],
    );
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    rig.submit(&m, &[cmd::tlbi_s2_ipa(7, IOVA, true), cmd::sync()]);
    assert_eq!(pa_of(&m, 3, None, IOVA), pa2);
    assert_eq!(m.stats().commands_of(op::TLBI_S2_IPA), 3);
}

#[test]
fn range_invalidation_covers_exactly_num_scale_pages() {
    let rig = Rig::new();
    let root = rig.page();
    let base = 0x2000_0000;
    let old: Vec<u64> = (0..6).map(|_| rig.page()).collect();
    for (i, pa) in old.iter().enumerate() {
        rig.map(root, 1, base + i as u64 * 0x1000, *pa, 12, S2_RW_WB);
    }
    rig.ste(3, ste_s2(7, root));
    let m = rig.model(SmmuModelConfig::qemu_like());
    let va = |i: usize| base + i as u64 * 0x1000;
    for (i, pa) in old.iter().enumerate() {
        assert_eq!(pa_of(&m, 3, None, va(i)), *pa);
    }
    let new: Vec<u64> = (0..6).map(|_| rig.page()).collect();
    for (i, pa) in new.iter().enumerate() {
        rig.w(rig.slot(root, 1, va(i), 3), pa | S2_RW_WB | 3);
    }
    // TTL = level 2 does not match these level-3 leaves.
    rig.submit(&m, &[cmd::tlbi_s2_ipa_range(7, base, 3, 0, 2), cmd::sync()]);
    assert_eq!(pa_of(&m, 3, None, va(0)), old[0]);
    // (NUM + 1) << SCALE = (1 + 1) << 1 = 4 pages from page 0, TTL level 3.
    rig.submit(&m, &[cmd::tlbi_s2_ipa_range(7, base, 1, 1, 3), cmd::sync()]);
    for (i, pa) in new.iter().enumerate().take(4) {
        assert_eq!(pa_of(&m, 3, None, va(i)), *pa, "page {i}");
    }
    assert_eq!(pa_of(&m, 3, None, va(4)), old[4]);
    assert_eq!(pa_of(&m, 3, None, va(5)), old[5]);
    // Without RIL, the range fields are reserved: CERROR_ILL.
    let m2 = rig.model(SmmuModelConfig::qemu_like().with_ril(false));
    rig.submit(&m2, &[cmd::tlbi_s2_ipa_range(7, base, 1, 1, 3)]);
    assert_eq!(m2.read32(CMDQ_CONS) >> 24 & 0x7f, 1);
}

#[test]
fn vmall_and_nsnh_all_remove_every_entry_of_their_scope() {
    let rig = Rig::new();
    let (root, pa, _) = s2_setup(&rig);
    rig.ste(4, ste_s2(8, root));
    let m = rig.model(SmmuModelConfig::qemu_like());
    pa_of(&m, 3, None, IOVA);
    pa_of(&m, 4, None, IOVA);
    let pa2 = rig.page();
    rig.w(rig.slot(root, 1, IOVA, 3), pa2 | S2_RW_WB | 3);
    rig.submit(&m, &[cmd::tlbi_s12_vmall(7), cmd::sync()]);
    assert_eq!(pa_of(&m, 3, None, IOVA), pa2);
    assert_eq!(pa_of(&m, 4, None, IOVA), pa, "VMID 8 untouched");
    rig.submit(&m, &[cmd::tlbi_nsnh_all(), cmd::sync()]);
    assert_eq!(pa_of(&m, 4, None, IOVA), pa2);
}

#[test]
fn leaf_only_invalidation_of_a_freed_table_is_caught() {
    let rig = Rig::new();
    let root = rig.page();
    let table = rig.arena.alloc(12).unwrap();
    let l2 = rig.page();
    rig.w(root + ((IOVA >> 30) & 0x1ff) * 8, l2 | 3);
    rig.w(l2 + ((IOVA >> 21) & 0x1ff) * 8, table.pa.get() | 3);
    let pa = rig.page();
    rig.w(
        table.pa.get() + ((IOVA >> 12) & 0x1ff) * 8,
        pa | S2_RW_WB | 3,
    );
    rig.ste(3, ste_s2(7, root));
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    // Unmap by clearing the level-2 entry and free the level-3 table, then invalidate with
    // Leaf = 1: the walk cache still points at the freed table.
    rig.w(l2 + ((IOVA >> 21) & 0x1ff) * 8, 0);
    // SAFETY: the page came from this arena and nothing else references it.
    unsafe {
        rig.arena.free(
            Page {
                pa: PhysAddr::new(table.pa.get()),
                va: table.va,
            },
            12,
        )
    };
    rig.submit(&m, &[cmd::tlbi_s2_ipa(7, IOVA, true), cmd::sync()]);
    let f = m.translate(3, None, IOVA, Access::READ).unwrap_err();
    assert_eq!(
        (f.event, f.addr2),
        (F_WALK_EABT, table.pa.get() + ((IOVA >> 12) & 0x1ff) * 8)
    );
    // Leaf = 0 removes the walk-cache entries too.
    rig.submit(&m, &[cmd::tlbi_s2_ipa(7, IOVA, false), cmd::sync()]);
    assert_eq!(
        m.translate(3, None, IOVA, Access::READ).unwrap_err().event,
        F_TRANSLATION
    );
}

#[test]
fn stage1_entries_follow_asid_and_va_invalidations() {
    let rig = Rig::new();
    let (cdtab, pa0, _) = s1_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    assert_eq!(pa_of(&m, 9, None, IOVA), pa0);
    let root0 = rig.r(cdtab + 8) & !0xf;
    let pa0b = rig.page();
    rig.w(rig.slot(root0, 1, IOVA, 3), pa0b | S1_RW | 3);
    // Other ASID, other VA, stage-2 forms: stale.
    rig.submit(
        &m,
        &[
            cmd::tlbi_nh_asid(0, 6),
            cmd::tlbi_nh_va(0, 5, IOVA + 0x1000, false),
            cmd::tlbi_s12_vmall(1),
            cmd::sync(),
        ],
    );
    assert_eq!(pa_of(&m, 9, None, IOVA), pa0);
    rig.submit(&m, &[cmd::tlbi_nh_va(0, 5, IOVA, true), cmd::sync()]);
    assert_eq!(pa_of(&m, 9, None, IOVA), pa0b);
    // A global (nG = 0) page survives TLBI_NH_ASID but not TLBI_NH_VA of any ASID.
    let g = rig.page();
    rig.map(root0, 1, IOVA + 0x1000, g, 12, S1_RW & !(1 << 11));
    assert_eq!(pa_of(&m, 9, None, IOVA + 0x1000), g);
    rig.w(rig.slot(root0, 1, IOVA + 0x1000, 3), 0);
    rig.submit(&m, &[cmd::tlbi_nh_asid(0, 5), cmd::sync()]);
    assert_eq!(pa_of(&m, 9, None, IOVA + 0x1000), g, "global entry kept");
    rig.submit(
        &m,
        &[cmd::tlbi_nh_va(0, 99, IOVA + 0x1000, true), cmd::sync()],
    );
    assert_eq!(
        m.translate(9, None, IOVA + 0x1000, Access::READ)
            .unwrap_err()
            .event,
        F_TRANSLATION
    );
}

#[test]
fn ste_cache_is_stale_until_cfgi_ste() {
    let rig = Rig::new();
    let (_, pa, _) = s2_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    rig.ste(3, [1 | 4 << 1, 0, 0, 0]);
    assert_eq!(pa_of(&m, 3, None, IOVA), pa, "cached STE");
    rig.submit(
        &m,
        &[cmd::cfgi_ste(4), cmd::cfgi_ste_range(8, 2), cmd::sync()],
    );
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    // Range = 1 covers StreamIDs 2 and 3.
    rig.submit(&m, &[cmd::cfgi_ste_range(2, 1), cmd::sync()]);
    assert_eq!(pa_of(&m, 3, None, IOVA), IOVA, "bypass now");
    rig.ste(3, [1, 0, 0, 0]);
    rig.submit(&m, &[cmd::cfgi_ste(3), cmd::sync()]);
    assert_eq!(
        m.translate(3, None, IOVA, Access::READ).unwrap_err().event,
        EVENT_NONE
    );
    // CFGI_ALL is CFGI_STE_RANGE with Range = 31.
    rig.ste(3, [1 | 4 << 1, 0, 0, 0]);
    rig.submit(&m, &[cmd::cfgi_ste_range(0, 31), cmd::sync()]);
    assert_eq!(pa_of(&m, 3, None, IOVA), IOVA);
    assert_eq!(m.cache_sizes().2, 1);
}

#[test]
fn cd_cache_is_stale_until_cfgi_cd() {
    let rig = Rig::new();
    let (cdtab, _, pa2) = s1_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    assert_eq!(pa_of(&m, 9, Some(2), IOVA), pa2);
    // Point CD 2 at another table with another ASID.
    let root = rig.page();
    let pa3 = rig.page();
    rig.map(root, 1, IOVA, pa3, 12, S1_RW);
    write_cd(&rig, cdtab + 2 * 64, cd(30, root));
    assert_eq!(pa_of(&m, 9, Some(2), IOVA), pa2, "cached CD");
    rig.submit(&m, &[cmd::cfgi_cd(9, 1), cmd::cfgi_cd(8, 2), cmd::sync()]);
    assert_eq!(pa_of(&m, 9, Some(2), IOVA), pa2);
    rig.submit(&m, &[cmd::cfgi_cd(9, 2), cmd::sync()]);
    assert_eq!(pa_of(&m, 9, Some(2), IOVA), pa3);
    write_cd(&rig, cdtab + 2 * 64, [0; 4]);
    rig.submit(&m, &[cmd::cfgi_cd_all(9), cmd::sync()]);
    assert_eq!(
        m.translate(9, Some(2), IOVA, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_CD
    );
    assert_eq!(m.stats().cd_invalidated, 2);
}

#[test]
fn tlbi_by_va_removes_every_splinter_of_a_stage1_block() {
    let rig = Rig::new();
    let s2root = rig.page();
    let mut next = 0x1000_0000u64;
    let mut ipa_page = |rig: &Rig| {
        let pa = rig.page();
        rig.map(s2root, 1, next, pa, 12, S2_RW_WB);
        next += 0x1000;
        (next - 0x1000, pa)
    };
    let (cd_ipa, cd_pa) = ipa_page(&rig);
    let (root_ipa, root_pa) = ipa_page(&rig);
    let (l2_ipa, l2_pa) = ipa_page(&rig);
    // Stage 1: VA 0x4000_0000 is a 2 MiB block at IPA 0x2000_0000; stage 2 maps two 4 KiB
    // pages of it.
    rig.w(root_pa + 8, l2_ipa | 3);
    rig.w(l2_pa, 0x2000_0000 | S1_RW | 1);
    let (a, b) = (rig.page(), rig.page());
    rig.map(s2root, 1, 0x2000_0000, a, 12, S2_RW_WB);
    rig.map(s2root, 1, 0x2000_1000, b, 12, S2_RW_WB);
    write_cd(&rig, cd_pa, cd(5, root_ipa));
    rig.ste(11, [1 | 7 << 1 | cd_ipa, 1 << 44, s2_dw2(9), s2root]);
    let m = rig.model(SmmuModelConfig::qemu_like());
    let ok = m.translate(11, None, 0x4000_0010, Access::READ).unwrap();
    assert_eq!((ok.pa, ok.page_size_log2), (a + 0x10, 12));
    assert_eq!(pa_of(&m, 11, None, 0x4000_1000), b);
    // One TLBI_NH_VA at the block's first page removes both combined entries.
    let before = m.stats().tlb_entries_invalidated;
    rig.submit(&m, &[cmd::tlbi_nh_va(9, 5, 0x4000_0000, true), cmd::sync()]);
    assert_eq!(m.stats().tlb_entries_invalidated - before, 2);
    // TLBI_S2_IPA leaves combined entries: stage-2 changes need TLBI_NH_* or S12_VMALL.
    pa_of(&m, 11, None, 0x4000_0000);
    let c = rig.page();
    rig.w(rig.slot(s2root, 1, 0x2000_0000, 3), c | S2_RW_WB | 3);
    rig.submit(&m, &[cmd::tlbi_s2_ipa(9, 0x2000_0000, true), cmd::sync()]);
    assert_eq!(
        pa_of(&m, 11, None, 0x4000_0000),
        a,
        "combined entry survives"
    );
    rig.submit(&m, &[cmd::tlbi_nh_all(9), cmd::sync()]);
    assert_eq!(pa_of(&m, 11, None, 0x4000_0000), c);
}

const DBM: u64 = 1 << 51;

#[test]
fn stage2_httu_sets_af_and_dirty_once_per_tlb_entry() {
    let rig = Rig::new();
    let root = rig.page();
    let pa = rig.page();
    // Writable-clean DBM page (S2AP[1] = 0) with AF = 0.
    rig.map(
        root,
        1,
        IOVA,
        pa,
        12,
        (S2_RW_WB & !(1 << 7) & !(1 << 10)) | DBM,
    );
    let [dw0, dw1, dw2, dw3] = ste_s2(7, root);
    rig.ste(3, [dw0, dw1, dw2 | 1 << 55 | 1 << 56, dw3]);
    // Without HTTU, S2HA/S2HD do nothing: access flag fault.
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(
        m.translate(3, None, IOVA, Access::READ).unwrap_err().event,
        F_ACCESS
    );
    let m = rig.model(SmmuModelConfig::qemu_like().with_httu(true, true));
    let slot = rig.slot(root, 1, IOVA, 3);
    assert_eq!(pa_of(&m, 3, None, IOVA), pa);
    assert_eq!(
        rig.r(slot) & (1 << 10 | 1 << 7),
        1 << 10,
        "AF set, still clean"
    );
    m.translate(3, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(rig.r(slot) & 1 << 7, 1 << 7, "dirty");
    // Software cleans the page. Without a TLBI the cached entry is already dirty: a write is
    // not recorded.
    rig.w(slot, rig.r(slot) & !(1 << 7));
    m.translate(3, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(rig.r(slot) & 1 << 7, 0, "stale TLB entry hides the write");
    rig.submit(&m, &[cmd::tlbi_s2_ipa(7, IOVA, true), cmd::sync()]);
    m.translate(3, None, IOVA, Access::WRITE).unwrap();
    assert_eq!(rig.r(slot) & 1 << 7, 1 << 7);
}

#[test]
fn stage1_httu_clears_ap2_on_first_write() {
    let rig = Rig::new();
    let (cdtab, ..) = s1_setup(&rig);
    let root = rig.page();
    let pa = rig.page();
    rig.map(root, 1, IOVA, pa, 12, S1_RW | 1 << 7 | DBM);
    let [dw0, dw1, dw2, dw3] = cd(9, root);
    write_cd(&rig, cdtab + 64, [dw0 | 1 << 42 | 1 << 43, dw1, dw2, dw3]);
    let m = rig.model(
        SmmuModelConfig::qemu_like()
            .with_ssid_bits(4)
            .with_httu(true, true),
    );
    let slot = rig.slot(root, 1, IOVA, 3);
    assert_eq!(pa_of(&m, 9, Some(1), IOVA), pa);
    assert_eq!(rig.r(slot) & 1 << 7, 1 << 7, "a read leaves it clean");
    m.translate(9, Some(1), IOVA, Access::WRITE).unwrap();
    assert_eq!(rig.r(slot) & 1 << 7, 0, "AP[2] cleared: dirty");
    // Without CD.HD the same page refuses writes.
    write_cd(&rig, cdtab + 64, [dw0, dw1, dw2, dw3]);
    rig.w(slot, rig.r(slot) | 1 << 7);
    rig.submit(
        &m,
        &[cmd::cfgi_cd(9, 1), cmd::tlbi_nh_asid(0, 9), cmd::sync()],
    );
    assert_eq!(
        m.translate(9, Some(1), IOVA, Access::WRITE)
            .unwrap_err()
            .event,
        F_PERMISSION
    );
}

#[test]
fn nh_vaa_and_nh_va_range_forms() {
    let rig = Rig::new();
    let (cdtab, ..) = s1_setup(&rig);
    let root = rig.page();
    let old: Vec<u64> = (0..4).map(|_| rig.page()).collect();
    for (i, pa) in old.iter().enumerate() {
        rig.map(root, 1, IOVA + i as u64 * 0x1000, *pa, 12, S1_RW);
    }
    write_cd(&rig, cdtab + 64, cd(21, root));
    write_cd(&rig, cdtab + 3 * 64, cd(22, root));
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    let va = |i: u64| IOVA + i * 0x1000;
    for i in 0..4 {
        pa_of(&m, 9, Some(1), va(i));
        pa_of(&m, 9, Some(3), va(i));
    }
    let new: Vec<u64> = (0..4).map(|_| rig.page()).collect();
    for (i, pa) in new.iter().enumerate() {
        rig.w(rig.slot(root, 1, va(i as u64), 3), pa | S1_RW | 3);
    }
    // TLBI_NH_VAA: page 0 for every ASID of VMID 0.
    rig.submit(&m, &[[0x13, va(0) | 1], cmd::sync()]);
    assert_eq!(pa_of(&m, 9, Some(1), va(0)), new[0]);
    assert_eq!(pa_of(&m, 9, Some(3), va(0)), new[0]);
    // TLBI_NH_VA, range: ASID 21, TG = 4 KiB, NUM = 1, SCALE = 0 (2 pages from page 1), TTL 3.
    rig.submit(
        &m,
        &[
            [0x12 | 1 << 12 | 21 << 48, va(1) | 1 << 10 | 3 << 8 | 1],
            cmd::sync(),
        ],
    );
    assert_eq!(pa_of(&m, 9, Some(1), va(1)), new[1]);
    assert_eq!(pa_of(&m, 9, Some(1), va(2)), new[2]);
    assert_eq!(pa_of(&m, 9, Some(1), va(3)), old[3], "outside the range");
    assert_eq!(pa_of(&m, 9, Some(3), va(1)), old[1], "other ASID");
    // A range in the wrong granule (TG = 64 KiB) misses these 4 KiB entries.
    rig.submit(
        &m,
        &[
            [0x12 | 22 << 48, va(0) & !0xffff | 3 << 10 | 1],
            cmd::sync(),
        ],
    );
    assert_eq!(pa_of(&m, 9, Some(3), va(1)), old[1]);
}
