//! The crate's `RwLock` against many CPUs: a writer is not starved by readers that keep
//! arriving, and readers still share the lock.

use super::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// A reader arriving while a writer waits queues behind the writer: else readers whose
/// critical sections overlap (every CPU unmapping) keep a writer (a dirty-tracking switch, a
/// detach) out for as long as they keep coming.
#[test]
fn a_waiting_writer_goes_before_later_readers() {
    let lock = Arc::new(RwLock::new(0u32));
    let first = lock.read();
    let writer = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || *lock.write() += 1)
    };
    while lock.waiting_writers() == 0 {
        thread::yield_now();
    }
    let entered = Arc::new(AtomicBool::new(false));
    let late = {
        let (lock, entered) = (Arc::clone(&lock), Arc::clone(&entered));
        thread::spawn(move || {
            let g = lock.read();
            entered.store(true, Ordering::SeqCst);
            *g
        })
    };
    thread::sleep(Duration::from_millis(200));
    assert!(
        !entered.load(Ordering::SeqCst),
        "a reader entered while a writer waited"
    );
    drop(first);
    writer.join().unwrap();
    assert_eq!(
        late.join().unwrap(),
        1,
        "the late reader saw the writer's store"
    );
}

/// Readers share the lock; a writer waits for the readers inside and only for them.
#[test]
fn readers_share_and_a_writer_waits_only_for_those_inside() {
    let lock = Arc::new(RwLock::new(0u32));
    let a = lock.read();
    let b = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || *lock.read()).join().unwrap()
    };
    assert_eq!(b, 0, "a second reader entered beside the first");
    assert!(lock.try_write().is_none(), "try_write beside a reader");
    drop(a);
    let mut w = lock.try_write().expect("try_write on a free lock");
    *w = 7;
    drop(w);
    assert_eq!(*lock.read(), 7);
}

/// An upgradeable reader keeps writers out, lets readers already inside finish, and becomes
/// the writer before a writer that waited for it.
#[test]
fn an_upgrade_goes_before_a_writer_waiting_on_it() {
    let lock = Arc::new(RwLock::new(0u32));
    let up = lock.upgradeable_read();
    let writer = {
        let lock = Arc::clone(&lock);
        thread::spawn(move || {
            let mut g = lock.write();
            *g = *g * 10 + 2;
        })
    };
    while lock.waiting_writers() == 0 {
        thread::yield_now();
    }
    assert!(
        lock.try_write().is_none(),
        "try_write beside an upgradeable reader"
    );
    let mut w = up.upgrade();
    *w = *w * 10 + 1;
    drop(w);
    writer.join().unwrap();
    assert_eq!(
        *lock.read(),
        12,
        "the upgrade wrote first, then the waiting writer"
    );
}

/// Four CPUs, two readers and two writers, 20,000 acquisitions each (100 under Miri): a writer's two stores are
/// never seen apart, and no acquisition is lost.
#[test]
fn readers_never_see_a_writer_half_done() {
    const ROUNDS: u64 = if cfg!(miri) { 100 } else { 20_000 };
    let lock = Arc::new(RwLock::new((0u64, 0u64)));
    let threads: std::vec::Vec<_> = (0..4)
        .map(|t| {
            let lock = Arc::clone(&lock);
            thread::spawn(move || {
                for _ in 0..ROUNDS {
                    if t % 2 == 0 {
                        let mut g = lock.write();
                        g.0 += 1;
                        core::hint::black_box(&mut *g);
                        g.1 += 1;
                    } else if t == 1 {
                        let g = lock.read();
                        assert_eq!(g.0, g.1, "a reader saw a writer half done");
                    } else {
                        let g = lock.upgradeable_read();
                        let seen = g.0;
                        assert_eq!(seen, g.1, "an upgradeable reader saw a writer half done");
                        let mut g = g.upgrade();
                        assert_eq!(g.0, seen, "a write came in between read and upgrade");
                        g.0 += 1;
                        g.1 += 1;
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(*lock.read(), (3 * ROUNDS, 3 * ROUNDS));
}

/// The tests' per-thread record catches a thread asking again for a lock it holds.
#[test]
#[should_panic(expected = "already holds the lock")]
fn a_second_read_on_one_thread_is_caught() {
    let lock = RwLock::new(());
    let _a = lock.read();
    let _b = lock.read();
}
