//! Flush: command counts per unmap pattern, one sync, page release after completion.

use super::*;

/// Maps, unmaps, flushes; returns the opcodes the flush issued.
fn flush_ops(
    idr3: u32,
    cfg: DomainConfig,
    map: &[(u64, u64)],
    unmap: (u64, u64),
) -> (Vec<u8>, Vec<[u64; 2]>) {
    let (m, alloc) = (model(IDR0, idr3), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&cfg).unwrap();
    for &(iova, len) in map {
        u.map(
            d,
            Iova::new(iova),
            PhysAddr::new(0x1_0000_0000 + iova),
            len,
            RW,
        )
        .unwrap();
    }
    let mut g = Gather::new();
    u.unmap(d, Iova::new(unmap.0), unmap.1, &mut g).unwrap();
    m.executed.borrow_mut().clear();
    u.flush(d, &mut g).unwrap();
    assert!(g.is_empty());
    let cmds = m.executed.borrow().clone();
    (cmds.iter().map(|c| c[0] as u8).collect(), cmds)
}

#[test]
fn flush_command_counts_for_unmap_patterns() {
    struct Case {
        name: &'static str,
        map: &'static [(u64, u64)],
        unmap: (u64, u64),
        /// (range commands without RIL, with RIL).
        counts: (usize, usize),
        leaf: bool,
    }
    let cases = [
        Case {
            name: "aligned run of 16 pages",
            map: &[(0x10_0000, 16 * K4)],
            unmap: (0x10_0000, 16 * K4),
            counts: (16, 1),
            leaf: true,
        },
        Case {
            name: "unaligned 3 pages",
            map: &[(0x10_0000, 16 * K4)],
            unmap: (0x10_3000, 3 * K4),
            counts: (3, 1),
            leaf: true,
        },
        Case {
            name: "one 2 MiB block",
            map: &[(0x20_0000, M2)],
            unmap: (0x20_0000, M2),
            counts: (1, 1),
            leaf: true,
        },
    ];
    for case in &cases {
        for (idr3, want) in [(0, case.counts.0), (RIL, case.counts.1)] {
            for (cfg, op) in [(s2(), TLBI_S2_IPA), (s1(), TLBI_NH_VA)] {
                let (ops, cmds) = flush_ops(idr3, cfg, case.map, case.unmap);
                assert_eq!(count(&ops, op), want, "{} (RIL {})", case.name, idr3 != 0);
                assert_eq!(ops.len(), want + 1, "{}: {ops:x?}", case.name);
                assert_eq!(ops.last(), Some(&SYNC), "{}", case.name);
                let leaf = cmds
                    .iter()
                    .filter(|c| c[0] as u8 == op)
                    .all(|c| c[1] & 1 == 1);
                assert_eq!(leaf, case.leaf, "{}", case.name);
            }
        }
    }
    // Covering a last-level table's whole span frees it: LEAF clear. With RIL one command
    // (512 pages, SCALE 9); without it 512 page commands would pass the threshold.
    let (ops, cmds) = flush_ops(RIL, s2(), &[(0x40_0000, 4 * K4)], (0x40_0000, M2));
    assert_eq!(ops, [TLBI_S2_IPA, SYNC]);
    assert_eq!(cmds[0][1] & 1, 0);
    assert_eq!((cmds[0][0] >> 20) & 0x1f, 9);
    let (ops, _) = flush_ops(0, s2(), &[(0x40_0000, 4 * K4)], (0x40_0000, M2));
    assert_eq!(ops, [TLBI_S12_VMALL, SYNC]);
    // Beyond the threshold (64 page commands): one TLBI_S12_VMALL / TLBI_NH_ASID.
    let (ops, _) = flush_ops(0, s2(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_S12_VMALL, SYNC]);
    let (ops, _) = flush_ops(0, s1(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_NH_ASID, SYNC]);
    // With RIL the same unmap is two range commands (1 + 64 pages).
    let (ops, _) = flush_ops(RIL, s2(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_S2_IPA, TLBI_S2_IPA, SYNC]);
}

#[test]
fn pages_return_only_after_the_sync_and_stay_on_timeout() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(
        d,
        Iova::new(0x40_0000),
        PhysAddr::new(0x8000_0000),
        4 * K4,
        RW,
    )
    .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x40_0000), M2, &mut g).unwrap();
    // The last-level table was unlinked and is held by the gather.
    assert_eq!(g.freed_pages(), 1);
    let live = alloc.live_pages();
    m.stalled.set(true);
    assert_eq!(u.flush(d, &mut g), Err(Error::Timeout { what: "CMD_SYNC" }));
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(alloc.live_pages(), live);
    // The unit comes back: the retry releases the page after its own sync.
    m.stalled.set(false);
    let frees = alloc.frees.get();
    m.executed.borrow_mut().clear();
    u.flush(d, &mut g).unwrap();
    assert_eq!(alloc.frees.get(), frees + 1);
    assert_eq!(alloc.live_pages(), live - 1);
    // The stalled TLBI (512 pages: the whole VMID) and its sync ran when the unit came back,
    // then the retry's own: the release waited for a sync after a TLBI covering the table.
    assert_eq!(take_ops(&m), [TLBI_S12_VMALL, SYNC, TLBI_S12_VMALL, SYNC]);
    // An empty gather issues nothing.
    let mut empty = Gather::new();
    u.flush(d, &mut empty).unwrap();
    assert!(take_ops(&m).is_empty());
}

#[test]
fn concurrent_map_unmap_flush_from_threads() {
    let (m, alloc) = (model(IDR0, RIL), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let u = &u;
            s.spawn(move || {
                for i in 0..64u64 {
                    let iova = Iova::new((t << 32) | (i * M2));
                    u.map(d, iova, PhysAddr::new(0x1_0000_0000 + i * K4), 16 * K4, RW)
                        .unwrap();
                    let mut g = Gather::new();
                    assert_eq!(u.unmap(d, iova, 16 * K4, &mut g).unwrap(), 16 * K4);
                    u.flush(d, &mut g).unwrap();
                }
            });
        }
    });
    // 256 flushes, one range command and one sync each.
    let ops = take_ops(&m);
    assert_eq!((count(&ops, TLBI_S2_IPA), count(&ops, SYNC)), (256, 256));
}

/// A flush does no work proportional to the unit's stream slots (issue 18, goal 4): a
/// one-page flush of a domain with one stream, or with 40 more streams attached to it and to
/// another domain (none with ATS), issues the same commands and looks at no stream slot (the
/// domain's `ats_users` count says there is no ATC to invalidate). With an ATS stream on the
/// domain the flush reads the unit's `MAX_STREAMS` slots, whatever the number attached, and
/// invalidates that stream's ATC only.
#[test]
fn flushes_look_at_no_stream_slot_without_ats() {
    use core::sync::atomic::Ordering::Relaxed;
    let (m, alloc) = (model(IDR0, RIL), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let s2 = DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    };
    let (d, e) = (u.domain_alloc(&s2).unwrap(), u.domain_alloc(&s2).unwrap());
    let flush = || {
        u.map(d, Iova::new(0x3000), PhysAddr::new(0x8000_0000), K4, RW)
            .unwrap();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
        take_ops(&m);
        u.config.lock().flush_stream_reads.store(0, Relaxed);
        u.flush(d, &mut g).unwrap();
        (
            take_ops(&m),
            u.config.lock().flush_stream_reads.load(Relaxed),
        )
    };
    u.attach(DeviceId(1), None, d).unwrap();
    let one = flush();
    assert_eq!(one, (std::vec![TLBI_S2_IPA, SYNC], 0), "one stream");
    for sid in 2..42 {
        u.attach(DeviceId(sid), None, if sid % 4 == 0 { d } else { e })
            .unwrap();
    }
    assert_eq!(flush(), one, "41 streams, none with ATS");
    u.set_ats(DeviceId(50), true).unwrap();
    u.attach(DeviceId(50), None, d).unwrap();
    assert_eq!(
        flush(),
        (std::vec![TLBI_S2_IPA, SYNC, ATC_INV, SYNC], MAX_STREAMS),
        "the ATS stream's ATC"
    );
    for sid in (1..42).chain([50]) {
        u.detach(DeviceId(sid), None).unwrap();
    }
    assert_eq!(flush(), one, "no stream attached");
}

/// An ATS stream attached to a domain while a flush of it runs, after the flush read the
/// domain's ATS user count (0) and before its TLBI: until that TLBI completes, the device can
/// fill its ATC from the stale TLB entries of the pages being freed (an ATS translation
/// request is answered from the TLB), so the flush must still invalidate that stream's ATC
/// before it releases them. Linux's order: TLBI, CMD_SYNC, a full barrier, then the count.
#[test]
fn a_flush_reaches_the_atc_of_a_stream_attached_while_it_runs() {
    let m: &'static ModelSmmu = std::boxed::Box::leak(std::boxed::Box::new(model(IDR0, RIL)));
    let alloc: &'static VecAllocator = std::boxed::Box::leak(std::boxed::Box::default());
    let u: &'static Unit<'static> = std::boxed::Box::leak(std::boxed::Box::new(enabled(m, alloc)));
    let s2 = DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&s2).unwrap();
    u.attach(DeviceId(1), None, d).unwrap();
    u.set_ats(DeviceId(50), true).unwrap();
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    take_ops(m);
    crate::test_hooks::set_after_ats_read(move || {
        u.attach(DeviceId(50), None, d).unwrap();
        take_ops(m);
    });
    u.flush(d, &mut g).unwrap();
    assert!(g.is_empty());
    assert_eq!(
        take_ops(m),
        std::vec![TLBI_S2_IPA, SYNC, ATC_INV, SYNC],
        "the stream attached during the flush has its ATC invalidated after the TLBI"
    );
}
