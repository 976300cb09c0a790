//! Arena tests: alignment, books, bad frees, failure injection, the sync recorder, threads.

use super::*;

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x8000_0000,
        capacity: 4 << 20,
    })
    .expect("arena")
}

#[test]
fn pages_are_aligned_zeroed_and_distinct_from_host_addresses() {
    let a = arena();
    for log2 in MIN_PAGE_LOG2..=MAX_PAGE_LOG2 {
        let page = a.alloc(log2).expect("page");
        assert!(page.pa.is_aligned(log2) && page.pa.get() >= 0x8000_0000);
        assert_eq!(page.va.as_ptr() as usize % (1usize << log2), 0);
        assert_ne!(page.pa.get(), page.va.as_ptr() as u64);
        let last = page.pa.get() + (1u64 << log2) - 8;
        assert_eq!(a.read_u64(last), Some(0));
        assert_eq!(
            a.phys_to_virt(PhysAddr::new(last + 4)),
            Some(
                // SAFETY: the offset stays inside the page just allocated.
                unsafe { page.va.add((1usize << log2) - 4) }
            )
        );
    }
    assert_eq!(a.alloc(11), None);
    assert_eq!(a.alloc(21), None);
    assert_eq!(a.stats().failed_allocs, 2);
}

#[test]
fn books_and_bad_frees() {
    let a = arena();
    let p = a.alloc(12).expect("page");
    let q = a.alloc(16).expect("page");
    assert_eq!(a.stats().live_pages, 2);
    // SAFETY: `p` and `q` came from `a` and no walker can reach them.
    unsafe {
        a.free(q, 12);
        a.free(p, 12);
        a.free(p, 12);
        a.free(
            Page {
                pa: PhysAddr::new(0x1000),
                va: p.va,
            },
            12,
        );
        a.free(q, 16);
    }
    let kinds: Vec<_> = a.bad_frees().iter().map(|b| b.kind).collect();
    assert_eq!(
        kinds,
        [
            BadFreeKind::SizeMismatch { allocated_log2: 16 },
            BadFreeKind::DoubleFree,
            BadFreeKind::Unknown
        ]
    );
    let s = a.stats();
    assert_eq!(
        (
            s.live_pages,
            s.allocs,
            s.frees,
            s.peak_live_pages,
            s.bad_frees
        ),
        (0, 2, 2, 2, 3)
    );
    assert_eq!(
        a.read_u64(p.pa.get()),
        None,
        "a walker cannot read a freed page"
    );
    // The freed page comes back zeroed, not poisoned.
    let again = a.alloc(12).expect("page");
    assert_eq!(again.pa, p.pa);
    assert_eq!(a.read_u64(again.pa.get() + 8), Some(0));
}

#[test]
fn failure_injection() {
    let a = arena();
    a.set_fail_policy(FailPolicy::Nth(2));
    assert!(a.alloc(12).is_some());
    assert!(a.alloc(12).is_none());
    assert!(a.alloc(12).is_some());
    a.set_fail_policy(FailPolicy::AfterN(1));
    assert!(a.alloc(12).is_some());
    assert!(a.alloc(12).is_none());
    assert!(a.alloc(12).is_none());
    a.set_fail_policy(FailPolicy::Never);
    assert!(a.alloc(12).is_some());
    assert_eq!(a.stats().failed_allocs, 3);
}

#[test]
fn exhaustion_fails_cleanly() {
    let a = Arena::new(ArenaConfig {
        base_pa: 1 << 20,
        capacity: 1 << 20,
    })
    .expect("arena");
    assert!(a.alloc(20).is_some());
    assert!(a.alloc(12).is_none());
}

#[test]
fn config_is_checked() {
    let bad = |base_pa, capacity| Arena::new(ArenaConfig { base_pa, capacity }).err();
    assert_eq!(
        bad(0x1000, 1 << 20),
        Some(ArenaError::UnalignedBase(0x1000))
    );
    assert_eq!(bad(0, 0), Some(ArenaError::BadCapacity(0)));
    assert_eq!(
        bad(u64::MAX - (1 << 20) + 1, 2 << 20),
        Some(ArenaError::AddressOverflow)
    );
    // A base above 2^48 for 52-bit output address tests.
    assert!(bad(1 << 50, 1 << 20).is_none());
}

#[test]
fn sync_recorder_finds_unreported_writes() {
    let a = arena();
    let old = a.alloc(12).expect("page");
    let before = a.start_sync_recording();
    let new = a.alloc(12).expect("page");
    // The engine would write through `va`; the test stands in for it.
    assert!(a.write_u64(old.pa.get() + 0x10, 7));
    assert!(a.write_u64(old.pa.get() + 0x18, 9));
    a.sync_for_device(new.va, 4096);
    // SAFETY: 0x10 is inside the 4 KiB page.
    a.sync_for_device(unsafe { old.va.add(0x10) }, 8);
    assert_eq!(a.unsynced_words(&before), [old.pa.get() + 0x18]);
    assert_eq!(
        a.sync_log(),
        [(new.pa.get(), 4096), (old.pa.get() + 0x10, 8)]
    );
    // A range that spills out of its page is counted, not recorded.
    // SAFETY: the pointer stays inside the arena's buffer.
    a.sync_for_device(unsafe { old.va.add(4088) }, 16);
    assert_eq!(a.stats().syncs_outside_live, 1);
    assert_eq!(a.stop_sync_recording().len(), 2);
}

#[test]
fn shared_between_threads() {
    let a = arena();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..16 {
                    let p = a.alloc(12).expect("page");
                    assert!(a.write_u64(p.pa.get(), 1));
                    // SAFETY: `p` came from `a` and nothing else refers to it.
                    unsafe { a.free(p, 12) };
                }
            });
        }
    });
    let s = a.stats();
    assert_eq!(
        (s.allocs, s.frees, s.live_pages, s.bad_frees),
        (64, 64, 0, 0)
    );
}

#[test]
fn reset_is_as_good_as_new() {
    let mut a = arena();
    let kept = a.alloc(16).expect("page");
    let gone = a.alloc(12).expect("page");
    assert!(a.write_u64(kept.pa.get() + 8, 7));
    // SAFETY: `gone` came from `a` and nothing else refers to it.
    unsafe { a.free(gone, 12) };
    let (kept_pa, gone_pa) = (kept.pa.get(), gone.pa.get());
    let config = ArenaConfig {
        base_pa: 0x4000_0000,
        capacity: 2 << 20,
    };
    a.reset(config).expect("reset");
    assert_eq!(a.stats(), ArenaStats::default());
    assert!(a.live_pages().is_empty() && a.bad_frees().is_empty());
    assert_eq!(a.base_pa(), 0x4000_0000);
    // The old pages are gone: neither address reads any more.
    assert_eq!(a.read_u64(kept_pa + 8), None);
    assert_eq!(a.read_u64(gone_pa), None);
    // Every page handed out again is zero, written ones and poisoned ones alike, and the new
    // capacity holds: 2 MiB is 32 pages of 64 KiB.
    let pages: Vec<Page> = (0..32).map(|_| a.alloc(16).expect("page")).collect();
    assert!(a.alloc(12).is_none());
    // Under Miri every word read is interpreted: sample each page's words there.
    let stride = if cfg!(miri) { 509 } else { 1 };
    for p in &pages {
        assert!(p.pa.get() >= 0x4000_0000);
        for i in (0..(1u64 << 16) / 8).step_by(stride) {
            assert_eq!(a.read_u64(p.pa.get() + 8 * i), Some(0));
        }
    }
    // A larger capacity than the buffer has: a new buffer.
    let big = ArenaConfig {
        base_pa: 0x8000_0000,
        capacity: 8 << 20,
    };
    a.reset(big).expect("reset to a larger capacity");
    assert_eq!(a.stats().live_pages, 0);
    let pages: Vec<Page> = (0..8).map(|_| a.alloc(20).expect("1 MiB page")).collect();
    assert_eq!(pages.len(), 8);
    assert_eq!(
        a.reset(ArenaConfig {
            base_pa: 0x1000,
            capacity: 1 << 20
        }),
        Err(ArenaError::UnalignedBase(0x1000))
    );
}

#[test]
fn reads_see_exactly_the_live_pages() {
    let a = arena();
    let p = a.alloc(14).expect("page");
    let q = a.alloc(12).expect("page");
    let end = p.pa.get() + (1 << 14);
    assert_eq!(a.read_u64(end - 8), Some(0));
    // SAFETY: `p` came from `a` and nothing else refers to it.
    unsafe { a.free(p, 14) };
    assert_eq!(a.read_u64(end - 8), None);
    assert_eq!(a.phys_to_virt(PhysAddr::new(end - 8)), None);
    assert_eq!(a.read_u64(q.pa.get()), Some(0));
    assert_eq!(a.read_u64(q.pa.get() + 4), None, "unaligned");
    assert_eq!(a.read_u64(q.pa.get() + (1 << 12)), None, "past the page");
}

#[test]
fn read_words_reads_live_runs_only() {
    let a = arena();
    let p = a.alloc(13).expect("8 KiB page");
    assert!(a.write_u64(p.pa.get() + 8, 5));
    assert!(a.write_u64(p.pa.get() + (1 << 12), 6));
    let mut run = [9u64; 1024];
    // Across both 4 KiB frames of the page.
    assert!(a.read_words(p.pa.get(), &mut run));
    assert_eq!((run[0], run[1], run[512], run[1023]), (0, 5, 6, 0));
    // One word past the page, or an unaligned start: unreadable.
    assert!(!a.read_words(p.pa.get() + 8, &mut run));
    assert!(!a.read_words(p.pa.get() + 4, &mut run[..1]));
    let mut none = [0u64; 0];
    assert!(a.read_words(p.pa.get(), &mut none));
}
