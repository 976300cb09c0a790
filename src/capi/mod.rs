//! The C ABI (feature `capi`): `extern "C"` functions over the whole flow a C kernel or
//! hypervisor needs -- create units on its register windows, a registry and contexts, and every
//! IOASID operation -- declared in `include/iommu_engine.h`.
//!
//! # The embedder's obligations
//! - Services come in as function pointers: [`IeEnv`] (pages, physical-to-virtual, cache
//!   maintenance) and [`IeRegs`] (a mapped register window, or accessor functions). No other
//!   symbol is needed from the embedder.
//! - Objects (units, registries, contexts) live in pages from `IeEnv::alloc_page`; the crate
//!   has no heap. An object used by another (a unit by a registry, a registry by a context)
//!   cannot be destroyed before its user: the destroy call returns `IE_STATUS_BUSY`.
//! - Every function returns an `int32_t` [`IeStatus`]; [`ie_status_errno`] maps it to the
//!   negative errno a Linux module would return. No panic crosses the boundary: the crate's
//!   code does not panic on any input, and a build with `panic = "abort"` would abort rather
//!   than unwind into C.
//! - Concurrency is that of [`crate::ioasid`]: every function may be called from any thread;
//!   map/unmap on disjoint ranges run concurrently; configuration calls serialise inside. No
//!   call sleeps; calls spin for bounded hardware waits, so none belongs in a hard interrupt
//!   handler (drain faults from a threaded handler or bottom half). The locks are `spin`'s
//!   (`crate::sync`), which disable neither preemption nor interrupts: callers on a
//!   preemptible kernel disable preemption around calls, and the embedder's callbacks
//!   ([`IeEnv`], [`IeRegs`] accessors), which may run with a lock held, never sleep and never
//!   call back into the library (the locks are not re-entrant).
//! - A unit belongs to one registry, once (`ie_registry_create` refuses a duplicate handle
//!   and a unit another live registry holds); a register window's base is 8-byte aligned.
//! - A caller's buffer made a slice or read as a struct (a dirty bitmap, device hints, direct
//!   regions, a guest's invalidation batch) is aligned to its type, else
//!   `IE_STATUS_INVALID_ARGUMENT`.
//! - Handles are checked: NULL, a handle of another type or a destroyed one (while its page
//!   is not reused) is `IE_STATUS_INVALID_ARGUMENT`; enum values cross as integers. Device
//!   handles and IOASID numbers carry their slot's generation in bits 31:5: one kept after
//!   its unbind or free is `IE_STATUS_NOT_FOUND`, even once the slot is reused (slots are
//!   taken round the table and retired at their last generation, `ie_ctx_retired_slots`).
//! - Stack: units, registries and contexts are built and released in their pages (tens of
//!   KiB that never cross the stack); the header gives each call's deepest stack, which
//!   `tests/linux_module.rs` measures and holds.

#[cfg(all(test, feature = "sim"))]
mod abi_review_tests;
#[cfg(all(test, feature = "sim"))]
mod contract_tests;
#[cfg(all(test, feature = "sim"))]
mod copy_tests;
mod dirty;
mod env;
mod fault;
mod firmware;
mod ioas;
mod ioasid;
mod nested;
mod object;
#[cfg(all(test, feature = "sim"))]
mod review_tests;
#[cfg(feature = "sim")]
mod sim;
mod sized;
mod status;
#[cfg(all(test, feature = "sim"))]
mod tests;
mod unit;

pub use dirty::*;
pub use env::{CEnv, CRegs, IeEnv, IeRegs};
pub use fault::*;
pub use firmware::*;
pub use ioas::*;
pub use ioasid::*;
pub use nested::*;
#[cfg(feature = "sim")]
pub use sim::*;
pub use status::{ie_status_errno, IeMissing, IeStatus};
pub use unit::*;
