//! Threads kept from one input to the next, for the threaded target (`pgtable_concurrent`).
//!
//! Spawning and joining three to five threads per input cost that target more than its own
//! work: in a `perf` profile of it, `clone3` and thread start-up were 13% of all cycles, the
//! harness's own code under 5%. Each calling thread here has its own pool of
//! [`MAX_THREADS`]` - 1` threads, parked between inputs; [`run`] hands them one job, wakes only
//! the ones it needs, runs the last share of the job itself, and returns only once every share
//! has finished, as `std::thread::scope` does -- so a job may borrow from the caller's stack.
//! Threads are woken one by one (`unpark`), not all through a condition variable, and the
//! target has no start barrier any more: a profile with both had 32% of all cycles in `futex`
//! (every thread put to sleep twice per input), and a barrier spinning on `yield` instead
//! burnt the CPU time the other threads waited for a core in.
//!
//! A share that panics is caught and the panic is resumed on the caller once all shares are
//! done (`cargo test`'s corpus replay catches it as it would a scoped thread's); under
//! libFuzzer the panic hook aborts first, wherever the panic happens.

use core::any::Any;
use std::boxed::Box;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::vec::Vec;

/// Shares one job may have: four workers and the checker of `pgtable_concurrent`.
pub(crate) const MAX_THREADS: usize = 5;

/// A job, its lifetime erased: valid while [`Pool::run`] waits (see there).
#[derive(Clone, Copy)]
struct JobPtr(*const (dyn Fn(usize) + Sync + 'static));

// SAFETY: the job is `Sync` (shared by all threads at once), and the pointer is only
// dereferenced while the `run` that published it waits for every share to finish.
unsafe impl Send for JobPtr {}

struct State {
    /// Incremented for each job; a thread runs each generation's job once.
    generation: u64,
    job: Option<JobPtr>,
    /// Shares `0..shares` of the current job; the caller runs the last one.
    shares: usize,
    /// Pool threads not finished with their share yet.
    running: usize,
    /// The thread waiting in [`Pool::run`].
    caller: Option<Thread>,
    /// The first panic of the current job.
    panic: Option<Box<dyn Any + Send>>,
    quit: bool,
}

struct Shared {
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Pool {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<()>>,
}

std::thread_local! {
    static POOL: Pool = Pool::new();
}

/// Runs `job(0)`, ..., `job(shares - 1)` at once, each on its own thread (the last on the
/// calling thread), starting them together, and returns when all have returned; resumes the
/// first panic if one panicked.
///
/// # Panics
/// If `shares` is 0 or more than [`MAX_THREADS`] (a harness bug).
pub(crate) fn run(shares: usize, job: &(dyn Fn(usize) + Sync)) {
    assert!(
        (1..=MAX_THREADS).contains(&shares),
        "{shares} shares asked of the pool"
    );
    POOL.with(|pool| pool.run(shares, job));
}

impl Pool {
    fn new() -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                generation: 0,
                job: None,
                shares: 0,
                running: 0,
                caller: None,
                panic: None,
                quit: false,
            }),
        });
        let handles = (0..MAX_THREADS - 1)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(std::format!("fuzz-pool-{index}"))
                    .spawn(move || serve(&shared, index))
                    .expect("spawn a pool thread")
            })
            .collect();
        Self { shared, handles }
    }

    fn run(&self, shares: usize, job: &(dyn Fn(usize) + Sync)) {
        // SAFETY: only the lifetime changes (same pointer, same vtable). The pointer is used by
        // the pool threads between the publication below and their decrement of `running`;
        // this function neither returns nor unwinds (the caller's own share is caught, nothing
        // else here panics: poisoning is ignored) before `running` is zero and the job is
        // withdrawn, so `job` outlives every use.
        let erased = unsafe {
            core::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(job)
        };
        let helpers = shares - 1;
        {
            let mut st = lock(&self.shared.state);
            st.job = Some(JobPtr(erased));
            st.shares = shares;
            st.running = helpers;
            st.caller = Some(std::thread::current());
            st.generation += 1;
        }
        for h in &self.handles[..helpers] {
            h.thread().unpark();
        }
        let mine = std::panic::catch_unwind(AssertUnwindSafe(|| job(shares - 1)));
        // Parking may wake spuriously, and an unpark meant for an earlier wait may be pending:
        // the count decides.
        while lock(&self.shared.state).running > 0 {
            std::thread::park();
        }
        let mut st = lock(&self.shared.state);
        st.job = None;
        st.caller = None;
        let panic = st.panic.take();
        drop(st);
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        lock(&self.shared.state).quit = true;
        for h in self.handles.drain(..) {
            h.thread().unpark();
            let _ = h.join();
        }
    }
}

/// A pool thread: runs its share of each generation's job it is woken for, until told to quit.
fn serve(shared: &Shared, index: usize) {
    let mut seen = 0;
    loop {
        let job = {
            let st = lock(&shared.state);
            if st.quit {
                return;
            }
            match st.job {
                Some(job) if st.generation != seen && index + 1 < st.shares => {
                    seen = st.generation;
                    job
                }
                _ => {
                    drop(st);
                    std::thread::park();
                    continue;
                }
            }
        };
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: `run` published this job for this generation and waits, without
            // returning or unwinding, until this thread decrements `running` below; the
            // pointer is not used after that.
            unsafe { (*job.0)(index) }
        }));
        let mut st = lock(&shared.state);
        if let Err(p) = r {
            st.panic.get_or_insert(p);
        }
        st.running -= 1;
        if st.running == 0 {
            if let Some(caller) = &st.caller {
                caller.unpark();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use core::sync::atomic::{AtomicUsize, Ordering};

    use super::run;

    #[test]
    fn every_share_runs_once_per_job_and_may_borrow_the_callers_stack() {
        for shares in 1..=super::MAX_THREADS {
            let ran: [AtomicUsize; super::MAX_THREADS] = Default::default();
            run(shares, &|i| {
                ran[i].fetch_add(1, Ordering::SeqCst);
            });
            let counts: std::vec::Vec<usize> =
                ran.iter().map(|r| r.load(Ordering::SeqCst)).collect();
            let want: std::vec::Vec<usize> = (0..super::MAX_THREADS)
                .map(|i| usize::from(i < shares))
                .collect();
            assert_eq!(counts, want, "{shares} shares");
        }
    }

    #[test]
    fn a_panicking_share_reaches_the_caller_after_every_share_finished() {
        let finished = AtomicUsize::new(0);
        let r = std::panic::catch_unwind(|| {
            run(4, &|i| {
                if i == 1 {
                    panic!("share 1 fails");
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        });
        assert!(r.is_err(), "the panic of share 1 was lost");
        assert_eq!(finished.load(Ordering::SeqCst), 3);
        // The pool still serves the next job.
        let again = AtomicUsize::new(0);
        run(4, &|_| {
            again.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(again.load(Ordering::SeqCst), 4);
    }
}
