//! Test-only hook points: a test's stand-in for another CPU's call at a chosen point of a
//! driver's path, run on the test's own thread (no spec structure: `cfg(test)` only).

use std::boxed::Box;
use std::cell::RefCell;

std::thread_local! {
    static AFTER_ATS_READ: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Sets what the next flush on this thread runs, once, right after it read which ATS devices
/// its domain has: SMMUv3 after the domain's ATS user count, VT-d after the domain's ATS
/// attachments (before its batch's wait), AMD-Vi after its commands named the ATS devices
/// (before the COMPLETION_WAIT behind them).
pub(crate) fn set_after_ats_read(f: impl FnOnce() + 'static) {
    AFTER_ATS_READ.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Runs the call [`set_after_ats_read`] left, if any.
pub(crate) fn after_ats_read() {
    if let Some(f) = AFTER_ATS_READ.with(|h| h.borrow_mut().take()) {
        f();
    }
}

std::thread_local! {
    static AFTER_DETACH_CHECK: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Sets what the next VT-d detach on this thread runs, once, right after it decided whether
/// its device-TLB invalidation can be issued (translation on) or must be owed to the next
/// `enable` (translation off), before its tear-down.
pub(crate) fn set_after_detach_check(f: impl FnOnce() + 'static) {
    AFTER_DETACH_CHECK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Runs the call [`set_after_detach_check`] left, if any.
pub(crate) fn after_detach_check() {
    if let Some(f) = AFTER_DETACH_CHECK.with(|h| h.borrow_mut().take()) {
        f();
    }
}

std::thread_local! {
    static AFTER_USER_CHECK: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Sets what the next guest invalidation on this thread runs, once, after its batch was
/// checked and before it is issued (SMMUv3: between the IOASID layer's check and issue passes;
/// VT-d: between the unit's check and issue loops): a guest changing its buffer meanwhile.
// Only the C ABI's tests set it (`--features capi`).
#[cfg_attr(not(feature = "capi"), allow(dead_code))]
pub(crate) fn set_after_user_check(f: impl FnOnce() + 'static) {
    AFTER_USER_CHECK.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Runs the call [`set_after_user_check`] left, if any.
pub(crate) fn after_user_check() {
    if let Some(f) = AFTER_USER_CHECK.with(|h| h.borrow_mut().take()) {
        f();
    }
}

std::thread_local! {
    static IN_TABLE_COUNT: RefCell<Option<Box<dyn FnOnce()>>> = const { RefCell::new(None) };
}

/// Sets what the next table count (`PageTable::table_pages`) on this thread runs, once, when
/// it has read a table pointer and before it reads that table: another CPU's call between the
/// two.
pub(crate) fn set_in_table_count(f: impl FnOnce() + 'static) {
    IN_TABLE_COUNT.with(|h| *h.borrow_mut() = Some(Box::new(f)));
}

/// Runs the call [`set_in_table_count`] left, if any.
pub(crate) fn in_table_count() {
    if let Some(f) = IN_TABLE_COUNT.with(|h| h.borrow_mut().take()) {
        f();
    }
}
