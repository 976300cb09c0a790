//! Translation through stage 2, stage 1 and nested, with hand-built tables.

use super::*;
use crate::sim::smmuv3::event::*;
use crate::sim::walk::Access;

const IOVA: u64 = 0x1234_5000;

/// Stage 2 only: StreamID 3, VMID 7, one 4 KiB page and one 2 MiB block.
pub(super) fn s2_setup(rig: &Rig) -> (u64, u64, u64) {
    let root = rig.page();
    let (pa, block_pa) = (rig.page(), 0x8060_0000);
    rig.map(root, 1, IOVA, pa, 12, S2_RW_WB);
    rig.map(root, 1, 0x4000_0000, block_pa, 21, S2_RW_WB);
    rig.ste(3, ste_s2(7, root));
    (root, pa, block_pa)
}

#[test]
fn stage2_translates_pages_and_blocks() {
    let rig = Rig::new();
    let (_, pa, block_pa) = s2_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like());
    let ok = m.translate(3, None, IOVA + 0x18, Access::WRITE).unwrap();
    assert_eq!((ok.pa, ok.page_size_log2), (pa + 0x18, 12));
    assert_eq!(ok.s2_memattr, Some(0xf));
    // Without FWB a no-snoop transaction stays non-cacheable whatever stage 2 says.
    assert!(!ok.cacheable_wb);
    let ok = m.translate(3, None, 0x4012_3456, Access::READ).unwrap();
    assert_eq!((ok.pa, ok.page_size_log2), (block_pa + 0x12_3456, 21));
    assert!(!ok.tlb_hit);
    assert!(m.translate(3, None, IOVA, Access::READ).unwrap().tlb_hit);
}

#[test]
fn stage2_fwb_forces_write_back() {
    let rig = Rig::new();
    let root = rig.page();
    let pa = rig.page();
    // FWB MemAttr 0b0110 = Normal Write-Back.
    rig.map(root, 1, IOVA, pa, 12, 0x6 << 2 | 3 << 6 | 3 << 8 | 1 << 10);
    let [dw0, dw1, dw2, dw3] = ste_s2(1, root);
    rig.ste(3, [dw0, dw1 | 1 << 25, dw2, dw3]);
    let m = rig.model(SmmuModelConfig::qemu_like());
    // Without IDR3.FWB, STE.S2FWB is an illegal field.
    assert_eq!(
        m.translate(3, None, IOVA, Access::READ).unwrap_err().event,
        C_BAD_STE
    );
    let m = rig.model(SmmuModelConfig::qemu_like().with_fwb(true));
    let ok = m.translate(3, None, IOVA, Access::READ).unwrap();
    assert!(ok.cacheable_wb);
}

#[test]
fn stage2_faults_are_recorded_with_ipa() {
    let rig = Rig::new();
    s2_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like());
    let f = m
        .translate(3, None, 0x2000_0000, Access::WRITE)
        .unwrap_err();
    assert_eq!((f.event, f.recorded, f.stage2), (F_TRANSLATION, true, true));
    let ev = drain_events(&rig, &m);
    assert_eq!(ev.len(), 1);
    let e = ev[0];
    assert_eq!(
        (e.kind, e.sid, e.ssid, e.s2),
        (F_TRANSLATION, 3, None, true)
    );
    assert_eq!(
        (e.input_addr, e.addr2, e.read),
        (0x2000_0000, 0x2000_0000, false)
    );
    // Input beyond the 32-bit IPA space.
    let f = m.translate(3, None, 1 << 32, Access::READ).unwrap_err();
    assert_eq!(f.event, F_TRANSLATION);
    // A read-only page refuses writes: permission fault at stage 2.
    let root = rig.page();
    let pa = rig.page();
    rig.map(root, 1, IOVA, pa, 12, S2_RW_WB & !(1 << 7));
    rig.ste(4, ste_s2(8, root));
    assert!(m.translate(4, None, IOVA, Access::READ).is_ok());
    let f = m.translate(4, None, IOVA, Access::WRITE).unwrap_err();
    assert_eq!((f.event, f.stage2), (F_PERMISSION, true));
    // Access flag clear: F_ACCESS.
    rig.map(root, 1, IOVA + 0x1000, pa, 12, S2_RW_WB & !(1 << 10));
    let f = m
        .translate(4, None, IOVA + 0x1000, Access::READ)
        .unwrap_err();
    assert_eq!(f.event, F_ACCESS);
    assert_eq!(drain_events(&rig, &m).len(), 3);
}

#[test]
fn s2r_clear_suppresses_records_but_not_faults() {
    let rig = Rig::new();
    let root = rig.page();
    let [dw0, dw1, dw2, dw3] = ste_s2(1, root);
    rig.ste(5, [dw0, dw1, dw2 & !(1 << 58), dw3]);
    let m = rig.model(SmmuModelConfig::qemu_like());
    let f = m.translate(5, None, IOVA, Access::READ).unwrap_err();
    assert_eq!((f.event, f.recorded), (F_TRANSLATION, false));
    assert!(m.pending_events().is_empty());
}

/// Stage 1: StreamID 9 with a 4-entry linear CD table; CD 0 (ASID 5) and CD 2 (ASID 6).
pub(super) fn s1_setup(rig: &Rig) -> (u64, u64, u64) {
    let cdtab = rig.page();
    let root0 = rig.page();
    let root2 = rig.page();
    let (pa0, pa2) = (rig.page(), rig.page());
    rig.map(root0, 1, IOVA, pa0, 12, S1_RW);
    rig.map(root2, 1, IOVA, pa2, 12, S1_RW);
    write_cd(rig, cdtab, cd(5, root0));
    write_cd(rig, cdtab + 2 * 64, cd(6, root2));
    rig.ste(9, ste_s1(cdtab, 2, 2));
    (cdtab, pa0, pa2)
}

#[test]
fn stage1_selects_cd_by_substream() {
    let rig = Rig::new();
    let (cdtab, pa0, pa2) = s1_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    let ok = m.translate(9, None, IOVA + 4, Access::READ).unwrap();
    assert_eq!(ok.pa, pa0 + 4);
    // MAIR attribute 0 is Normal WB: stage 1 makes the access write-back.
    assert!(ok.cacheable_wb);
    assert_eq!(
        m.translate(9, Some(2), IOVA, Access::WRITE).unwrap().pa,
        pa2
    );
    // S1DSS = 0b10 (CD 0 for no SubstreamID): SubstreamID 0 itself is C_BAD_SUBSTREAMID.
    let f = m.translate(9, Some(0), IOVA, Access::READ).unwrap_err();
    assert_eq!(f.event, C_BAD_SUBSTREAMID);
    // Beyond S1CDMax.
    assert_eq!(
        m.translate(9, Some(4), IOVA, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_SUBSTREAMID
    );
    // CD 1 is not valid.
    assert_eq!(
        m.translate(9, Some(1), IOVA, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_CD
    );
    let ev = drain_events(&rig, &m);
    assert_eq!(ev.len(), 3);
    assert_eq!((ev[2].kind, ev[2].ssid), (C_BAD_CD, Some(1)));
    // Unmapped VA: stage-1 translation fault, S2 = 0.
    let f = m
        .translate(9, Some(2), 0x40_0000, Access::READ)
        .unwrap_err();
    assert_eq!(
        (f.event, f.stage2, f.recorded),
        (F_TRANSLATION, false, true)
    );
    let _ = cdtab;
}

#[test]
fn s1dss_terminate_and_bypass() {
    let rig = Rig::new();
    let (cdtab, ..) = s1_setup(&rig);
    rig.ste(9, ste_s1(cdtab, 2, 0));
    rig.ste(10, ste_s1(cdtab, 2, 1));
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    assert_eq!(
        m.translate(9, None, IOVA, Access::READ).unwrap_err().event,
        F_STREAM_DISABLED
    );
    assert_eq!(m.translate(10, None, IOVA, Access::READ).unwrap().pa, IOVA);
    assert!(m.translate(10, Some(2), IOVA, Access::READ).is_ok());
}

#[test]
fn stage1_permissions_and_bad_cd_fields() {
    let rig = Rig::new();
    let (cdtab, ..) = s1_setup(&rig);
    let root = rig.page();
    let pa = rig.page();
    // AP[2] = read-only.
    rig.map(root, 1, IOVA, pa, 12, S1_RW | 1 << 7);
    write_cd(&rig, cdtab + 3 * 64, cd(7, root));
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(4));
    assert!(m.translate(9, Some(3), IOVA, Access::READ).is_ok());
    let f = m.translate(9, Some(3), IOVA, Access::WRITE).unwrap_err();
    assert_eq!((f.event, f.stage2), (F_PERMISSION, false));
    // Each illegal CD field is C_BAD_CD: AA64 = 0, TG0 = 0b11, T0SZ = 10, ENDI, S (no stall).
    let [dw0, dw1, dw2, dw3] = cd(8, root);
    for bad in [
        dw0 & !(1 << 41),
        dw0 | 3 << 6,
        dw0 & !0x3f | 10,
        dw0 | 1 << 15,
        dw0 | 1 << 44,
    ] {
        write_cd(&rig, cdtab + 64, [bad, dw1, dw2, dw3]);
        m.translate(9, Some(1), IOVA, Access::READ).unwrap_err();
        assert_eq!(
            m.translate(9, Some(1), IOVA, Access::READ)
                .unwrap_err()
                .event,
            C_BAD_CD
        );
    }
    // TTB0 beyond IPS (40 bits).
    write_cd(&rig, cdtab + 64, [dw0, 1 << 41, dw2, dw3]);
    assert_eq!(
        m.translate(9, Some(1), IOVA, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_CD
    );
}

/// Nested: stage-1 tables and the CD table live at IPAs that stage 2 maps to PAs.
#[test]
fn nested_translates_table_addresses_through_stage2() {
    let rig = Rig::new();
    let s2root = rig.page();
    // Identity-free layout: IPA 0x1000_0000 + n -> PA pages.
    let ipa_of = |n: u64| 0x1000_0000 + n * 0x1000;
    let mut next = 0;
    let mut ipa_page = |rig: &Rig| {
        let pa = rig.page();
        let ipa = ipa_of(next);
        next += 1;
        rig.map(s2root, 1, ipa, pa, 12, S2_RW_WB);
        (ipa, pa)
    };
    let (cd_ipa, cd_pa) = ipa_page(&rig);
    let (s1root_ipa, s1root_pa) = ipa_page(&rig);
    let (l2_ipa, l2_pa) = ipa_page(&rig);
    let (l3_ipa, l3_pa) = ipa_page(&rig);
    let (data_ipa, data_pa) = ipa_page(&rig);
    // Stage-1 tables written by hand at their PAs, holding IPAs.
    rig.w(s1root_pa + ((IOVA >> 30) & 0x1ff) * 8, l2_ipa | 3);
    rig.w(l2_pa + ((IOVA >> 21) & 0x1ff) * 8, l3_ipa | 3);
    rig.w(l3_pa + ((IOVA >> 12) & 0x1ff) * 8, data_ipa | S1_RW | 3);
    write_cd(&rig, cd_pa, cd(5, s1root_ipa));
    rig.ste(11, [1 | 7 << 1 | cd_ipa, 1 << 44, s2_dw2(9), s2root]);
    let m = rig.model(SmmuModelConfig::qemu_like());
    let ok = m.translate(11, None, IOVA + 0x40, Access::WRITE).unwrap();
    assert_eq!(ok.pa, data_pa + 0x40);
    // Stage 1 says WB, stage 2 says WB: write-back.
    assert!(ok.cacheable_wb);
    // Unmap the stage-2 page holding the level-3 table: a stage-2 fault on a table fetch.
    let slot = rig.slot(s2root, 1, l3_ipa, 3);
    rig.w(slot, 0);
    rig.submit(&m, &[cmd::tlbi_s12_vmall(9), cmd::sync()]);
    let f = m.translate(11, None, IOVA, Access::READ).unwrap_err();
    assert_eq!(
        (f.event, f.stage2, f.class, f.addr2),
        (
            F_TRANSLATION,
            true,
            FaultClass::Tt,
            l3_ipa + ((IOVA >> 12) & 0x1ff) * 8
        )
    );
    // Unmap the CD's IPA: stage-2 fault of class CD (after CFGI_CD drops the cached CD).
    rig.w(rig.slot(s2root, 1, cd_ipa, 3), 0);
    rig.submit(
        &m,
        &[cmd::cfgi_cd(11, 0), cmd::tlbi_s12_vmall(9), cmd::sync()],
    );
    let f = m.translate(11, None, IOVA, Access::READ).unwrap_err();
    assert_eq!(
        (f.event, f.stage2, f.class),
        (F_TRANSLATION, true, FaultClass::Cd)
    );
    assert_eq!(drain_events(&rig, &m).len(), 2);
}

#[test]
fn bypass_abort_and_bad_ste_fields() {
    let rig = Rig::new();
    let root = rig.page();
    rig.ste(1, [1 | 4 << 1, 0, 0, 0]);
    rig.ste(2, [1, 0, 0, 0]);
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(
        m.translate(1, None, 0x1234, Access::READ).unwrap().pa,
        0x1234
    );
    assert_eq!(
        m.translate(1, Some(1), 0x1234, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_SUBSTREAMID
    );
    let f = m.translate(2, None, 0x1234, Access::READ).unwrap_err();
    assert_eq!((f.event, f.recorded), (EVENT_NONE, false));
    // Not valid, then each illegal field: reserved Config, S2AA64 = 0, S2TG = 0b11, S2ENDI,
    // SL0 inconsistent with T0SZ, S1CDMax beyond SSIDSIZE, STRW = EL2, EATS without ATS.
    let [dw0, dw1, dw2, dw3] = ste_s2(1, root);
    let bad = [
        [dw0 & !1, dw1, dw2, dw3],
        [1 | 2 << 1, dw1, dw2, dw3],
        [dw0, dw1, dw2 & !(1 << 51), dw3],
        [dw0, dw1, dw2 | 3 << 46, dw3],
        [dw0, dw1, dw2 | 1 << 52, dw3],
        [dw0, dw1, dw2 & !(3 << 38), dw3],
        [1 | 5 << 1 | 1 << 59, 1 << 44, 0, 0],
        [dw0, dw1 | 2 << 30, dw2, dw3],
        [dw0, dw1 | 1 << 28, dw2, dw3],
    ];
    for (i, words) in bad.into_iter().enumerate() {
        let sid = 20 + i as u32;
        rig.ste(sid, words);
        let f = m.translate(sid, None, 0x1000, Access::READ).unwrap_err();
        assert_eq!((f.event, f.recorded), (C_BAD_STE, true), "case {i}");
    }
    let ev = drain_events(&rig, &m);
    assert_eq!(ev.len(), 1 + bad.len());
    assert!(ev[1..]
        .iter()
        .enumerate()
        .all(|(i, e)| e.kind == C_BAD_STE && e.sid == 20 + i as u32));
    // Beyond the stream table (LOG2SIZE = 6).
    assert_eq!(
        m.translate(64, None, 0, Access::READ).unwrap_err().event,
        C_BAD_STREAMID
    );
}

#[test]
fn smmu_disabled_follows_gbpa() {
    let rig = Rig::new();
    let m = SmmuModel::new(&rig.arena, SmmuModelConfig::qemu_like());
    assert_eq!(
        m.translate(0, None, 0x5000, Access::READ).unwrap().pa,
        0x5000
    );
    m.write32(GBPA, 1 << 31 | 1 << 20);
    let f = m.translate(0, None, 0x5000, Access::READ).unwrap_err();
    assert_eq!((f.event, f.recorded), (EVENT_NONE, false));
}

#[test]
fn ats_translated_transactions_need_eats() {
    let rig = Rig::new();
    let root = rig.page();
    rig.ste(3, ste_s2(1, root));
    let [dw0, dw1, dw2, dw3] = ste_s2(2, root);
    rig.ste(4, [dw0, dw1 | 1 << 28, dw2, dw3]);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ats(true));
    let f = m
        .translated_transaction(3, 0x9000, Access::READ)
        .unwrap_err();
    assert_eq!(f.event, F_TRANSL_FORBIDDEN);
    assert_eq!(
        m.translated_transaction(4, 0x9000, Access::READ)
            .unwrap()
            .pa,
        0x9000
    );
}
