//! The locks of the crate: one name for each, whatever the build.
//!
//! Normally `spin`'s `Mutex` and this crate's writer-first `RwLock` (`rwlock.rs`: `spin`'s lets
//! readers that keep coming starve a writer): `const` construction (contexts, units and their
//! in-place constructors copy locked values from constants), no allocator, no operating system. A `--cfg loom` build
//! (model checking, `tests/loom.rs`, `tests/loom_ioasid.rs`) takes them from `loom_locks`, over
//! [`loom`](https://docs.rs/loom/0.7)'s scheduled locks: a `spin` lock spins on `core` atomics
//! loom does not see, so a thread waiting for one would spin for ever where loom must switch to
//! the holder. The atomics of table memory have their own switch, `pgtable/sync.rs`.
//!
//! The IOASID layer's own atomics (an IOASID's `Pending` mask and `ReclaimLog`, the registry's
//! counters) are named by `atomic`: `core`'s in normal builds, loom's under `--cfg loom`, so
//! that `tests/loom_ioasid.rs` explores their interleavings and weak-memory outcomes with the
//! locks'. loom's have no `const` `new` and no `get_mut`: the few places that need either say so
//! with `cfg(loom)`, and normal builds keep `core`'s own code.
//!
//! The crate's own `RwLock` is built under loom too, beside loom's, for the scenarios of its
//! algorithm alone (`tests/loom_lock.rs`).
//!
//! The API is the part of `spin`'s the crate uses: `Mutex::{new, lock, try_lock, get_mut,
//! into_inner}`, `RwLock::{new, read, write, try_write, upgradeable_read, get_mut}`,
//! `RwLockUpgradableGuard::upgrade` and the guards. Everything else takes these names, never
//! `spin::` (a `spin` lock under loom would hang a scenario, not fail it).

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use spin::{Mutex, MutexGuard};

#[cfg(not(loom))]
mod rwlock;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use rwlock::{RwLock, RwLockReadGuard, RwLockUpgradableGuard, RwLockWriteGuard};
/// The crate's own `RwLock` over loom's atomics, reached only by `tests/loom_lock.rs` (through
/// `crate::loom_rwlock`): the crate's other locks stay loom's own under `--cfg loom`, as the
/// spinning lock would multiply their interleavings.
#[cfg(loom)]
pub(crate) mod rwlock;

/// The IOASID layer's atomics: `core`'s, or loom's under `--cfg loom` (see the module's
/// documentation).
pub(crate) mod atomic {
    #[cfg(not(loom))]
    pub(crate) use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
}

#[cfg(loom)]
mod loom_locks;
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom_locks::{
    Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockUpgradableGuard, RwLockWriteGuard,
};

#[cfg(all(test, not(loom)))]
mod tests;
