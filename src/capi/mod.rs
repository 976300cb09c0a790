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
//! - Every pointer a call reads or writes through (an input struct, an output, an array, a
//!   handle) is aligned to its type. A misaligned one is `IE_STATUS_INVALID_ARGUMENT`, where
//!   NULL would be accepted too (an optional output is refused, not skipped); a required one
//!   that is NULL as well; an array may be NULL only when it is empty. Every pointer is checked
//!   before the call changes anything, outputs included: a refused call wrote nothing and
//!   changed nothing. (A Rust reference made from a misaligned pointer is undefined behaviour
//!   even if never used: `input`, `output`, `optional_output`, `input_slice` and
//!   `output_slice` in this module are the only ways the C ABI makes one.)
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
mod pointer_tests;
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

use core::ptr::NonNull;

/// A caller's pointer that is neither NULL nor misaligned for `T`: the only kind a Rust
/// reference, or a typed read or write, may be made from (anything else is undefined
/// behaviour even if never read). Nothing is read; `InvalidArgument` otherwise.
#[inline(always)]
fn checked_ptr<T>(p: *const T) -> Result<NonNull<T>, IeStatus> {
    match NonNull::new(p.cast_mut()) {
        Some(nn) if p.is_aligned() => Ok(nn),
        _ => Err(IeStatus::InvalidArgument),
    }
}

/// A caller's array of `n` `T`s: `None` for NULL with `n` 0 (nothing to access), else
/// [`checked_ptr`] (a misaligned pointer is refused even with `n` 0).
#[inline(always)]
fn checked_array<T>(p: *const T, n: usize) -> Result<Option<NonNull<T>>, IeStatus> {
    if p.is_null() && n == 0 {
        return Ok(None);
    }
    checked_ptr(p).map(Some)
}

/// The caller's input struct at `p`, refused (`InvalidArgument`) if NULL or misaligned.
///
/// # Safety
/// `p` is NULL, misaligned, or valid for reads of a `T` for `'a`, with nothing writing it.
#[inline(always)]
unsafe fn input<'a, T>(p: *const T) -> Result<&'a T, IeStatus> {
    let p = checked_ptr(p)?;
    // SAFETY: not NULL and aligned (checked); readable for `'a` (the caller's contract).
    Ok(unsafe { p.as_ref() })
}

/// The caller's output at `p`, refused (`InvalidArgument`) if NULL or misaligned.
///
/// # Safety
/// `p` is NULL, misaligned, or valid for reads and writes of a `T` for `'a`, with nothing
/// else accessing it.
#[inline(always)]
unsafe fn output<'a, T>(p: *mut T) -> Result<&'a mut T, IeStatus> {
    let mut p = checked_ptr(p)?;
    // SAFETY: not NULL and aligned (checked); writable for `'a`, unshared (the caller's
    // contract).
    Ok(unsafe { p.as_mut() })
}

/// The caller's optional output at `p`: `None` for NULL (not written), refused
/// (`InvalidArgument`) if misaligned rather than skipped.
///
/// # Safety
/// As for [`output`].
#[inline(always)]
unsafe fn optional_output<'a, T>(p: *mut T) -> Result<Option<&'a mut T>, IeStatus> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's contract, the same.
    unsafe { output(p) }.map(Some)
}

/// The caller's input array of `n` `T`s at `p` (NULL with `n` 0: empty), refused
/// (`InvalidArgument`) if NULL with `n` above 0, or misaligned.
///
/// # Safety
/// `p` is NULL, misaligned, or valid for reads of `n` `T`s for `'a`, with nothing writing
/// them.
#[inline(always)]
unsafe fn input_slice<'a, T>(p: *const T, n: usize) -> Result<&'a [T], IeStatus> {
    Ok(match checked_array(p, n)? {
        None => &[],
        // SAFETY: not NULL and aligned (checked); `n` readable elements for `'a` (the
        // caller's contract).
        Some(p) => unsafe { core::slice::from_raw_parts(p.as_ptr(), n) },
    })
}

/// The caller's output array of `n` `T`s at `p` (NULL with `n` 0: empty), refused
/// (`InvalidArgument`) if NULL with `n` above 0, or misaligned.
///
/// # Safety
/// `p` is NULL, misaligned, or valid for reads and writes of `n` `T`s for `'a`, with
/// nothing else accessing them.
#[inline(always)]
unsafe fn output_slice<'a, T>(p: *mut T, n: usize) -> Result<&'a mut [T], IeStatus> {
    Ok(match checked_array(p, n)? {
        None => &mut [],
        // SAFETY: not NULL and aligned (checked); `n` writable elements for `'a`, unshared
        // (the caller's contract).
        Some(p) => unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), n) },
    })
}
