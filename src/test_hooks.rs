//! Test-only hook points: a test's stand-in for another CPU's call at a chosen point of a
//! driver's path, run on the test's own thread (no spec structure: `cfg(test)` only).

use std::boxed::Box;
use std::cell::RefCell;

/// A hook point: a thread-local slot, `$set` to fill it (once) and `$run` to run and empty it
/// where the driver's path passes the point.
macro_rules! hook {
    ($(#[$set_attr:meta])* $set:ident, $run:ident, $slot:ident) => {
        std::thread_local! {
            static $slot: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
        }

        $(#[$set_attr])*
        pub(crate) fn $set(f: impl FnOnce() + 'static) {
            $slot.with(|h| *h.borrow_mut() = Some(Box::new(f)));
        }

        #[doc = concat!("Runs the call [`", stringify!($set), "`] left, if any.")]
        pub(crate) fn $run() {
            if let Some(f) = $slot.with(|h| h.borrow_mut().take()) {
                f();
            }
        }
    };
}

hook!(
    /// Sets what the next flush on this thread runs, once, right after it read which ATS devices
    /// its domain has: SMMUv3 after the domain's ATS user count, VT-d after the domain's ATS
    /// attachments (before its batch's wait), AMD-Vi after its commands named the ATS devices
    /// (before the COMPLETION_WAIT behind them).
    set_after_ats_read,
    after_ats_read,
    AFTER_ATS_READ
);

hook!(
    /// Sets what the next VT-d detach on this thread runs, once, right after it decided whether
    /// its device-TLB invalidation can be issued (translation on) or must be owed to the next
    /// `enable` (translation off), before its tear-down.
    set_after_detach_check,
    after_detach_check,
    AFTER_DETACH_CHECK
);

hook!(
    /// Sets what the next guest invalidation on this thread runs, once, after its batch was
    /// checked and before it is issued (SMMUv3: between the IOASID layer's check and issue passes;
    /// VT-d: between the unit's check and issue loops): a guest changing its buffer meanwhile.
    /// Only the C ABI's tests set it (`--features capi`).
    #[cfg_attr(not(feature = "capi"), allow(dead_code))]
    set_after_user_check,
    after_user_check,
    AFTER_USER_CHECK
);

hook!(
    /// Sets what the next table count (`PageTable::table_pages`) on this thread runs, once, when
    /// it has read a table pointer and before it reads that table: another CPU's call between the
    /// two.
    set_in_table_count,
    in_table_count,
    IN_TABLE_COUNT
);

hook!(
    /// Sets what the AMD-Vi model's next dirty update on this thread runs, once, after it read
    /// the leaf and before it writes `D`: the driver's unmap or clearing dirty read on another
    /// CPU meanwhile.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    set_in_dirty_update,
    in_dirty_update,
    IN_DIRTY_UPDATE
);

/// Runs `f` on another thread, as another CPU's call from inside a hook: returns once the
/// thread started and either finished or had `100_000` yields of this thread to (a bound, not a
/// timing: a call that can run in the hook's window finishes there; one that must wait for
/// this thread's call is still running). The caller joins the handle after its own call.
pub(crate) fn run_beside<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::sync::Arc;
    let started = Arc::new(AtomicBool::new(false));
    let s = started.clone();
    let thread = std::thread::spawn(move || {
        s.store(true, SeqCst);
        f()
    });
    while !started.load(SeqCst) {
        std::thread::yield_now();
    }
    for _ in 0..100_000 {
        if thread.is_finished() {
            break;
        }
        std::thread::yield_now();
    }
    thread
}
