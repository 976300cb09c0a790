//! Model checking, with [`loom`], of the crate's writer-first reader-writer lock
//! (`src/sync/rwlock.rs`), the lock every table walk, attach, detach and dirty-tracking switch
//! runs under.
//!
//! Built only with `--cfg loom`, which builds the lock over loom's `AtomicUsize` and makes a
//! waiter's spin a loom yield (so loom switches to the holder); the crate hands it out through
//! the `#[doc(hidden)]` `iommu_engine::loom_rwlock`, which exists only then. Everywhere else
//! in a loom build the crate's locks are loom's own (`src/sync.rs`): this file is the only place
//! the lock's own algorithm is explored.
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release --test loom_lock -- --test-threads=1 --nocapture
//! ```
//!
//! The data each lock guards is a [`Witness`]: a loom `UnsafeCell` that loom fails a scenario
//! on if two of its accesses, one of them a write, are not ordered by happens-before. A lock
//! that lets a writer in beside another guard, or that hands over without the acquire/release
//! edge, fails there. Each scenario also asserts what the lock promises (a writer's update
//! seen whole, nothing between an upgradeable read and its upgrade, a reader behind a waiting
//! writer, `try_write` refused only while the lock is held), ends with the lock free, and
//! completes: a waiter that would spin for ever (a guard's drop that did not release) exceeds
//! loom's branch bound, which fails the scenario too.
#![cfg(loom)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use iommu_engine::loom_rwlock::RwLock;
use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, Ordering};
use loom::sync::Arc;
use loom::thread;

/// The guarded data: a number whose every access loom checks against the others.
struct Witness(UnsafeCell<u64>);

// SAFETY: the lock under test is what orders the accesses; loom fails the scenario where it
// does not (the point of the witness).
unsafe impl Sync for Witness {}

impl Witness {
    fn new() -> Self {
        Self(UnsafeCell::new(0))
    }

    /// A read, through any guard.
    fn get(&self) -> u64 {
        // SAFETY: loom checks this read against every write of the cell.
        self.0.with(|p| unsafe { *p })
    }

    /// A write, through a write guard.
    fn set(&self, v: u64) {
        // SAFETY: loom checks this write against every access of the cell.
        self.0.with_mut(|p| unsafe { *p = v })
    }
}

type Lock = Arc<RwLock<Witness>>;

fn new_lock() -> Lock {
    Arc::new(RwLock::new(Witness::new()))
}

/// The lock is free at the end: every guard's drop released what it took.
fn assert_free(lock: &Lock) -> u64 {
    let g = lock
        .try_write()
        .expect("the lock is still held after every guard was dropped");
    g.get()
}

/// Adds `n` under the write lock (a read, then a write: a writer half done is visible).
fn add_under_write(lock: &Lock, n: u64) {
    let g = lock.write();
    let v = g.get();
    g.set(v + n);
}

/// How often each outcome came up, over a scenario's interleavings.
#[derive(Clone, Default)]
struct Tally(std::sync::Arc<Mutex<BTreeMap<&'static str, usize>>>);

impl Tally {
    fn note(&self, outcome: &'static str) {
        *self.0.lock().unwrap().entry(outcome).or_default() += 1;
    }
}

/// Runs `body` under loom (preemptions bounded by `LOOM_MAX_PREEMPTIONS`, else 2), printing
/// the interleavings explored, the time taken and the outcomes; fails if one of `outcomes`
/// never came up (the scenario would not test it).
fn run(name: &str, outcomes: &[&str], body: impl Fn(&Tally) + Send + Sync + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    let bound = builder.preemption_bound;
    let iterations = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tally = Tally::default();
    let start = Instant::now();
    let (it, t) = (iterations.clone(), tally.clone());
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        builder.check(move || {
            it.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            body(&t);
        })
    }));
    let verdict = if checked.is_ok() { "passed" } else { "FAILED" };
    let seen = tally.0.lock().unwrap().clone();
    println!(
        "loom scenario {name}: {verdict} after {} interleavings in {:.1} s (preemption bound \
         {bound:?}); outcomes {seen:?}",
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
    );
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
    for o in outcomes {
        assert!(seen.contains_key(o), "{name}: no interleaving reached {o}");
    }
}

/// A writer beside two readers: it waits for the readers inside, readers wait for it, and a
/// reader sees its update whole or not at all.
#[test]
fn writer_vs_readers() {
    run(
        "writer_vs_readers",
        &["a reader before the writer", "a reader after the writer"],
        |tally| {
            let lock = new_lock();
            let writer = {
                let lock = lock.clone();
                thread::spawn(move || add_under_write(&lock, 1))
            };
            let reader = {
                let (lock, tally) = (lock.clone(), tally.clone());
                thread::spawn(move || {
                    let v = lock.read().get();
                    tally.note(if v == 0 {
                        "a reader before the writer"
                    } else {
                        "a reader after the writer"
                    });
                })
            };
            let v = lock.read().get();
            assert!(v <= 1, "a reader saw {v}");
            writer.join().unwrap();
            reader.join().unwrap();
            assert_eq!(assert_free(&lock), 1, "the writer's update was lost");
        },
    );
}

/// Two writers and a `try_write`: one at a time, no update lost.
#[test]
fn writer_vs_writer() {
    run(
        "writer_vs_writer",
        &["try_write took it", "try_write refused"],
        |tally| {
            let lock = new_lock();
            let writers: Vec<_> = [1, 10]
                .into_iter()
                .map(|n| {
                    let lock = lock.clone();
                    thread::spawn(move || add_under_write(&lock, n))
                })
                .collect();
            match lock.try_write() {
                Some(g) => {
                    g.set(g.get() + 100);
                    tally.note("try_write took it");
                }
                None => tally.note("try_write refused"),
            }
            for w in writers {
                w.join().unwrap();
            }
            let v = assert_free(&lock);
            assert!(v == 11 || v == 111, "an update was lost: {v}");
        },
    );
}

/// An upgradeable reader beside a reader and a writer: no write comes between its read and its
/// upgrade, the reader sees each update whole, and the writer's update is not lost.
#[test]
fn upgrade_vs_reader_and_writer() {
    run(
        "upgrade_vs_reader_and_writer",
        &["the writer first", "the upgrade first"],
        |tally| {
            let lock = new_lock();
            let upgrader = {
                let (lock, tally) = (lock.clone(), tally.clone());
                thread::spawn(move || {
                    let g = lock.upgradeable_read();
                    let seen = g.get();
                    let w = g.upgrade();
                    assert_eq!(
                        w.get(),
                        seen,
                        "a write came between the read and the upgrade"
                    );
                    w.set(seen + 1);
                    tally.note(if seen == 0 {
                        "the upgrade first"
                    } else {
                        "the writer first"
                    });
                })
            };
            let writer = {
                let lock = lock.clone();
                thread::spawn(move || add_under_write(&lock, 10))
            };
            let v = lock.read().get();
            assert!([0, 1, 10, 11].contains(&v), "a reader saw {v}");
            upgrader.join().unwrap();
            writer.join().unwrap();
            assert_eq!(assert_free(&lock), 11, "an update was lost");
        },
    );
}

/// `try_write` is refused while a reader, an upgradeable reader or a writer holds the lock,
/// succeeds on a free lock, and, racing a reader, takes it only when the reader is out.
#[test]
fn try_write_refused_only_while_held() {
    run(
        "try_write_refused_only_while_held",
        &["try_write took it", "try_write refused"],
        |tally| {
            let lock = new_lock();
            {
                let _r = lock.read();
                assert!(lock.try_write().is_none(), "try_write beside a reader");
            }
            {
                let _u = lock.upgradeable_read();
                assert!(
                    lock.try_write().is_none(),
                    "try_write beside an upgradeable reader"
                );
            }
            {
                let _w = lock.write();
                assert!(lock.try_write().is_none(), "try_write beside a writer");
            }
            assert_free(&lock);

            let done = Arc::new(AtomicBool::new(false));
            let reader = {
                let (lock, done) = (lock.clone(), done.clone());
                thread::spawn(move || {
                    let v = lock.read().get();
                    done.store(true, Ordering::SeqCst);
                    v
                })
            };
            // The reader gone before the attempt (its store seen) leaves the lock free.
            let reader_gone = done.load(Ordering::SeqCst);
            match lock.try_write() {
                Some(g) => {
                    g.set(g.get() + 1);
                    tally.note("try_write took it");
                }
                None => {
                    assert!(!reader_gone, "try_write refused on a free lock");
                    tally.note("try_write refused");
                }
            }
            let v = reader.join().unwrap();
            assert!(v <= 1, "the reader saw {v}");
            assert_free(&lock);
        },
    );
}

/// Writers first: a reader that arrives while a writer waits (for a reader inside) enters
/// only after that writer, so it sees the writer's update.
#[test]
fn a_reader_waits_behind_a_waiting_writer() {
    run(
        "a_reader_waits_behind_a_waiting_writer",
        &[
            "arrived while the writer waited",
            "arrived with no writer waiting",
        ],
        |tally| {
            let lock = new_lock();
            let first = lock.read();
            let writer = {
                let lock = lock.clone();
                thread::spawn(move || add_under_write(&lock, 1))
            };
            let late = {
                let (lock, tally) = (lock.clone(), tally.clone());
                thread::spawn(move || {
                    // One writer: counted waiting means it has not entered yet.
                    let writer_waiting = lock.waiting_writers() > 0;
                    let v = lock.read().get();
                    if writer_waiting {
                        assert_eq!(v, 1, "a reader went before a writer waiting when it came");
                        tally.note("arrived while the writer waited");
                    } else {
                        tally.note("arrived with no writer waiting");
                    }
                })
            };
            assert_eq!(first.get(), 0);
            drop(first);
            writer.join().unwrap();
            late.join().unwrap();
            assert_eq!(assert_free(&lock), 1);
        },
    );
}
