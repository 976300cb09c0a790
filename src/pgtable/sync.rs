//! The atomics through which the engine reads and writes table memory.
//!
//! Normally `core::sync::atomic`. A `--cfg loom` build (model checking, `tests/loom.rs`) takes
//! them from [`loom`](https://docs.rs/loom/0.7), which explores every interleaving and every
//! weak-memory outcome of the accesses made through them; its test allocator hands out pages
//! that are arrays of loom's `AtomicU64`, so table memory must only be reached through
//! [`AtomicU64`] pointers indexed by type (`Table::slot`), never by byte offsets.

#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
