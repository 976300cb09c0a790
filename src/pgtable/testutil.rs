//! The allocator of the engine's and the IOASID layer's unit tests: the `sim` arena, so that
//! every test counts pages, catches double frees and records cache maintenance the same way as
//! the conformance suite does; and the hook that lets a test play hardware rewriting an entry.

extern crate std;

use super::sync::{AtomicU64, Ordering};
use core::cell::Cell;

pub(crate) use crate::sim::arena::Arena as TestAlloc;
use crate::sim::arena::ArenaConfig;

/// A 16 MiB arena (4 MiB under Miri, which interprets every byte it zeroes) whose physical
/// addresses start at 1 GiB, so that PA != VA.
pub(crate) fn test_alloc() -> TestAlloc {
    TestAlloc::new(ArenaConfig {
        base_pa: 0x4000_0000,
        capacity: if cfg!(miri) { 4 << 20 } else { 16 << 20 },
    })
    .expect("host memory for the test arena")
}

std::thread_local! {
    /// The entry `keep_rewriting` names (its address; 0: none) and the bits it flips.
    static REWRITE: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// Until `stop_rewriting`, every time this thread is about to compare-and-swap `slot`
/// (`table::race_window`), `bits` of it flip first: an entry that another agent keeps
/// rewriting (hardware toggling accessed state), so that the call's compare-and-swap keeps
/// failing and it gives up with `EntryUnstable` after `HW_UPDATE_RETRIES` attempts.
pub(crate) fn keep_rewriting(slot: &AtomicU64, bits: u64) {
    REWRITE.with(|r| r.set((core::ptr::from_ref(slot) as usize, bits)));
}

/// Ends [`keep_rewriting`].
pub(crate) fn stop_rewriting() {
    REWRITE.with(|r| r.set((0, 0)));
}

/// `table::race_window`'s hook: flips the bits `keep_rewriting` asked for if `slot` is its
/// entry.
pub(super) fn rewrite_if_asked(slot: &AtomicU64) {
    let (at, bits) = REWRITE.with(Cell::get);
    if at == core::ptr::from_ref(slot) as usize {
        slot.fetch_xor(bits, Ordering::AcqRel);
    }
}
