//! Event queue overflow, fault injection, 2-level tables and fetch aborts.

use super::translate::s2_setup;
use super::*;
use crate::sim::smmuv3::event::*;
use crate::sim::smmuv3::{cerror, EventRecord, Injection};
use crate::sim::walk::Access;

#[test]
fn event_queue_overflow_and_acknowledgement() {
    let mut rig = Rig::new();
    rig.eventq_log2 = 1;
    let m = rig.model(SmmuModelConfig::qemu_like());
    for sid in 0..3 {
        let f = m.translate(sid, None, 0, Access::READ).unwrap_err();
        assert_eq!((f.event, f.recorded), (C_BAD_STE, sid < 2));
    }
    let prod = m.read32(EVENTQ_PROD);
    assert_eq!(prod, 1 << 31 | 1 << 1, "full, OVFLG differs from OVACKFLG");
    let s = m.stats();
    assert_eq!((s.events_written, s.events_lost), (2, 1));
    let ev = m.pending_events();
    assert_eq!(
        ev.iter().map(|e| e.sid).collect::<Vec<_>>(),
        vec_of(&[0, 1])
    );
    // Consume both and acknowledge the overflow.
    m.write32(EVENTQ_CONS, 1 << 31 | 1 << 1);
    assert!(m.translate(5, None, 0, Access::READ).unwrap_err().recorded);
    assert_eq!(m.read32(EVENTQ_PROD), 1 << 31 | 1 << 1 | 1);
    // Disabled queue: events are discarded.
    m.write32(CR0, SMMUEN | CMDQEN);
    assert!(!m.translate(6, None, 0, Access::READ).unwrap_err().recorded);
    assert_eq!(m.stats().events_discarded, 1);
}

fn vec_of(v: &[u32]) -> Vec<u32> {
    v.to_vec()
}

#[test]
fn injected_command_errors_recover() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like());
    m.inject(Injection::CommandIllegal);
    rig.submit(&m, &[cmd::sync(), cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS), u32::from(cerror::ILL) << 24);
    // Acknowledge without changing the command: the injection was one-shot, so it now runs.
    m.write32(GERRORN, m.read32(GERROR));
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 2);
    assert_eq!(m.stats().syncs, 2);
    m.inject(Injection::CommandAbort);
    rig.submit(&m, &[cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS) >> 24, u32::from(cerror::ABT));
    m.write32(GERRORN, m.read32(GERROR));
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 3);
    assert_eq!(m.stats().cerrors, 2);
}

#[test]
fn injected_sync_stall_holds_cons() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like());
    m.inject(Injection::SyncStall);
    rig.submit(&m, &[cmd::tlbi_nsnh_all(), cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS), 1, "stopped on the CMD_SYNC");
    rig.submit(&m, &[cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS), 1);
    assert_eq!(m.stats().syncs, 0);
    m.clear_injections();
    assert_eq!(m.read32(CMDQ_CONS), 3);
    assert_eq!(m.stats().syncs, 2);
}

#[test]
fn two_level_stream_table() {
    let rig = Rig::new();
    let (root, pa, _) = s2_setup(&rig);
    let m = SmmuModel::new(&rig.arena, SmmuModelConfig::qemu_like());
    let l1 = rig.page();
    let l2 = rig.page();
    // SPLIT = 8, LOG2SIZE = 16: L1 index = sid >> 8. L1[1] spans 2^(5-1) = 16 STEs.
    rig.w(l1 + 8, l2 | 5);
    let ste = ste_s2(7, root);
    for (i, w) in ste.iter().enumerate().rev() {
        rig.w(l2 + 0x3 * 64 + 8 * i as u64, *w);
    }
    m.write64(STRTAB_BASE, l1);
    m.write32(STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    m.write64(EVENTQ_BASE, rig.eventq | u64::from(rig.eventq_log2));
    m.write32(CR0, SMMUEN | EVENTQEN);
    let iova = 0x1234_5000;
    assert_eq!(m.translate(0x103, None, iova, Access::READ).unwrap().pa, pa);
    // Beyond the span, an invalid L1 descriptor, beyond LOG2SIZE.
    for sid in [0x110, 0x203, 0x1_0000] {
        assert_eq!(
            m.translate(sid, None, iova, Access::READ)
                .unwrap_err()
                .event,
            C_BAD_STREAMID
        );
    }
    // L1 descriptor in unreadable memory: F_STE_FETCH.
    m.write32(CR0, 0);
    m.write64(STRTAB_BASE, 0x1000);
    m.write32(CR0, SMMUEN | EVENTQEN);
    let f = m.translate(0x105, None, iova, Access::READ).unwrap_err();
    assert_eq!((f.event, f.addr2), (F_STE_FETCH, 0x1008));
    assert_eq!(drain_events(&rig, &m).len(), 4);
}

#[test]
fn two_level_cd_table() {
    let rig = Rig::new();
    let l1 = rig.page();
    let l2 = rig.page();
    let root = rig.page();
    let pa = rig.page();
    let iova = 0x1234_5000;
    rig.map(root, 1, iova, pa, 12, S1_RW);
    // S1Fmt = 1 (4 KiB leaf tables: 64 CDs each). SubstreamID 70 = L1[1], CD 6.
    rig.w(l1 + 8, l2 | 1);
    write_cd(&rig, l2 + 6 * 64, cd(3, root));
    rig.ste(9, [1 | 5 << 1 | 1 << 4 | l1 | 8 << 59, 2, 0, 0]);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(8));
    assert_eq!(m.translate(9, Some(70), iova, Access::READ).unwrap().pa, pa);
    assert_eq!(
        m.translate(9, Some(140), iova, Access::READ)
            .unwrap_err()
            .event,
        C_BAD_SUBSTREAMID
    );
    // 2-level CD tables need IDR0.CD2L: without substreams support the STE is illegal.
    let m = rig.model(SmmuModelConfig::qemu_like());
    assert_eq!(
        m.translate(9, None, iova, Access::READ).unwrap_err().event,
        C_BAD_STE
    );
}

#[test]
fn fetch_aborts() {
    let rig = Rig::new();
    // A stage-2 root outside memory: F_WALK_EABT with the descriptor's address.
    rig.ste(3, ste_s2(7, 0x1000));
    // A CD table outside memory: F_CD_FETCH.
    rig.ste(4, ste_s1(0x4000, 0, 0));
    let m = rig.model(SmmuModelConfig::qemu_like());
    let f = m.translate(3, None, 0x1234_5000, Access::READ).unwrap_err();
    assert_eq!((f.event, f.addr2), (F_WALK_EABT, 0x1000));
    let f = m.translate(4, None, 0x1234_5000, Access::READ).unwrap_err();
    assert_eq!((f.event, f.addr2), (F_CD_FETCH, 0x4000));
    let ev = drain_events(&rig, &m);
    assert_eq!(
        ev.iter().map(|e| (e.kind, e.addr2)).collect::<Vec<_>>(),
        [(F_WALK_EABT, 0x1000), (F_CD_FETCH, 0x4000)]
    );
}

/// CERROR_ATC_INV_SYNC reports that a CMD_SYNC waited on ATC invalidations that timed out
/// (IHI 0070 G.b §4.7, §7.1): a CMD_SYNC with no CMD_ATC_INV consumed since the previous
/// CMD_SYNC has none to wait for and cannot report it. An injection scheduled at such a
/// CMD_SYNC moves to the next CMD_SYNC that follows a CMD_ATC_INV.
#[test]
fn an_atc_inv_sync_timeout_fires_only_at_a_sync_after_an_atc_inv() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like().with_sev(true));
    let sync = [0x46 | 2 << 12, 0];
    let atc_inv = [0x40 | 9 << 32, 0];
    let cfgi_ste = [0x03 | 9 << 32, 0];
    // Scheduled at the first CMD_SYNC, which follows only a CFGI_STE: it completes.
    m.inject(Injection::AtcInvSyncTimeout);
    rig.submit(&m, &[cfgi_ste, sync]);
    assert_eq!(
        m.read32(CMDQ_CONS),
        2,
        "a CMD_SYNC without ATC_INV reported an ATC timeout"
    );
    assert_eq!(m.stats().injections_fired, 0);
    // Moved to the next CMD_SYNC after a CMD_ATC_INV (not the next CMD_SYNC: another plain
    // one completes first).
    rig.submit(&m, &[sync]);
    assert_eq!(m.read32(CMDQ_CONS), 3);
    rig.submit(&m, &[atc_inv, cfgi_ste, sync]);
    assert_eq!(
        m.read32(CMDQ_CONS),
        u32::from(cerror::ATC_INV_SYNC) << 24 | 5
    );
    m.write32(GERRORN, m.read32(GERROR));
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 6);
    // The CMD_SYNC that completed ends what was outstanding: `at` counts every CMD_SYNC, and
    // the one it names (the second from now) has no ATC_INV before it since the last one.
    m.inject(Injection::AtcInvSyncAt { at: 1, times: 1 });
    rig.submit(&m, &[atc_inv, sync, sync]);
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 9);
    assert_eq!(m.stats().injections_fired, 1);
    rig.submit(&m, &[atc_inv, sync]);
    assert_eq!(
        m.read32(CMDQ_CONS),
        u32::from(cerror::ATC_INV_SYNC) << 24 | 10
    );
    assert_eq!(m.stats().injections_fired, 2);
}

#[test]
fn injected_atc_inv_sync_timeout_retries_the_sync() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like().with_sev(true));
    m.inject(Injection::AtcInvSyncTimeout);
    let atc_inv = [0x40 | 9 << 32, 0];
    rig.submit(&m, &[atc_inv, [0x46 | 2 << 12, 0]]);
    assert_eq!(
        m.read32(CMDQ_CONS),
        u32::from(cerror::ATC_INV_SYNC) << 24 | 1
    );
    assert_eq!(m.stats().sync_sevs, 0);
    m.write32(GERRORN, m.read32(GERROR));
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 2);
    let s = m.stats();
    assert_eq!(
        (
            s.syncs,
            s.sync_sevs,
            s.commands_of(crate::sim::smmuv3::op::ATC_INV)
        ),
        (1, 1, 1)
    );
}

#[test]
fn prefetch_config_caches_the_ste() {
    let rig = Rig::new();
    let (_, pa, _) = s2_setup(&rig);
    let m = rig.model(SmmuModelConfig::qemu_like());
    rig.submit(&m, &[[0x01 | 3 << 32, 0], cmd::sync()]);
    assert_eq!(m.cache_sizes().2, 1);
    // Changed without CFGI_STE: the prefetched STE is still used.
    rig.ste(3, [1 | 4 << 1, 0, 0, 0]);
    assert_eq!(
        m.translate(3, None, 0x1234_5000, Access::READ).unwrap().pa,
        pa
    );
}

#[test]
fn event_record_words_match_the_spec_layout() {
    let rec = EventRecord {
        kind: F_TRANSLATION,
        sid: 0x1234,
        ssid: Some(0x5),
        s2: true,
        class: crate::sim::smmuv3::FaultClass::Tt,
        read: true,
        privileged: false,
        instruction: false,
        input_addr: 0xdead_b000,
        addr2: 0x4000_1234,
        stag: None,
    };
    // dw0: 0x10 | SSV (1 << 11) | 5 << 12 | 0x1234 << 32; dw1: RnW (1 << 35) | S2 (1 << 39) |
    // CLASS 0b01 << 40; dw3: IPA[51:12] only.
    let words = rec.encode();
    assert_eq!(
        words,
        [
            0x0000_1234_0000_5810,
            0x0000_0188_0000_0000,
            0xdead_b000,
            0x4000_1000
        ]
    );
    let fetch = EventRecord {
        kind: F_WALK_EABT,
        addr2: 0x4000_1238,
        ..rec
    };
    assert_eq!(fetch.encode()[3], 0x4000_1238);
    assert_eq!(EventRecord::decode(words).sid, 0x1234);
}

#[test]
fn level1_descriptors_stay_cached_until_a_non_leaf_cfgi() {
    let rig = Rig::new();
    let (root, pa, _) = s2_setup(&rig);
    let m = SmmuModel::new(&rig.arena, SmmuModelConfig::qemu_like());
    let (l1, old_l2, new_l2) = (rig.page(), rig.page(), rig.page());
    rig.w(l1 + 8, old_l2 | 9);
    for (i, w) in ste_s2(7, root).iter().enumerate().rev() {
        rig.w(old_l2 + 3 * 64 + 8 * i as u64, *w);
    }
    // The new level-2 table makes StreamID 0x103 bypass.
    rig.w(new_l2 + 3 * 64, 1 | 4 << 1);
    m.write64(STRTAB_BASE, l1);
    m.write32(STRTAB_BASE_CFG, 1 << 16 | 8 << 6 | 16);
    m.write64(CMDQ_BASE, rig.cmdq | u64::from(rig.cmdq_log2));
    m.write32(CR0, SMMUEN | CMDQEN);
    let iova = 0x1234_5000;
    assert_eq!(m.translate(0x103, None, iova, Access::READ).unwrap().pa, pa);
    rig.w(l1 + 8, new_l2 | 9);
    // Leaf = 1 refetches the STE through the cached level-1 descriptor: the old table.
    rig.submit(&m, &[cmd::cfgi_ste(0x103), cmd::sync()]);
    assert_eq!(m.translate(0x103, None, iova, Access::READ).unwrap().pa, pa);
    rig.submit(&m, &[[0x03 | 0x103 << 32, 0], cmd::sync()]);
    assert_eq!(
        m.translate(0x103, None, iova, Access::READ).unwrap().pa,
        iova
    );
    assert_eq!(m.stats().l1_invalidated, 1);
}

#[test]
fn level1_cd_descriptors_stay_cached_until_a_non_leaf_cfgi_cd() {
    let rig = Rig::new();
    let (l1, old_l2, new_l2, root) = (rig.page(), rig.page(), rig.page(), rig.page());
    let (pa_old, pa_new) = (rig.page(), rig.page());
    let iova = 0x1234_5000;
    rig.map(root, 1, iova, pa_old, 12, S1_RW);
    let root2 = rig.page();
    rig.map(root2, 1, iova, pa_new, 12, S1_RW);
    rig.w(l1 + 8, old_l2 | 1);
    write_cd(&rig, old_l2 + 6 * 64, cd(3, root));
    write_cd(&rig, new_l2 + 6 * 64, cd(4, root2));
    rig.ste(9, [1 | 5 << 1 | 1 << 4 | l1 | 8 << 59, 2, 0, 0]);
    let m = rig.model(SmmuModelConfig::qemu_like().with_ssid_bits(8));
    assert_eq!(
        m.translate(9, Some(70), iova, Access::READ).unwrap().pa,
        pa_old
    );
    rig.w(l1 + 8, new_l2 | 1);
    rig.submit(&m, &[cmd::cfgi_cd(9, 70), cmd::sync()]);
    assert_eq!(
        m.translate(9, Some(70), iova, Access::READ).unwrap().pa,
        pa_old
    );
    rig.submit(&m, &[[0x05 | 70 << 12 | 9 << 32, 0], cmd::sync()]);
    assert_eq!(
        m.translate(9, Some(70), iova, Access::READ).unwrap().pa,
        pa_new
    );
    // CFGI_CD_ALL drops every level-1 CD descriptor of the stream.
    rig.w(l1 + 8, 0);
    rig.submit(&m, &[cmd::cfgi_cd_all(9), cmd::sync()]);
    let f = m.translate(9, Some(70), iova, Access::READ).unwrap_err();
    assert_eq!(f.event, C_BAD_SUBSTREAMID);
}
