//! Structs a C caller passes with their own size in their first field (`uint32_t size`), so
//! that a struct can grow without breaking modules built against an older header: Linux's
//! extensible uAPI structs and their `copy_struct_from_user` (`clone3`, `openat2`,
//! `sched_setattr`) are the model.
//!
//! The library reads `min(size, sizeof)` bytes of the caller's struct and leaves the fields
//! beyond them at their defaults (an older caller never set them); a size below the first
//! versioned struct's is `IE_STATUS_INVALID_ARGUMENT`; a larger one (a newer caller) is
//! accepted only if every byte the library does not know is zero, else
//! `IE_STATUS_TOO_BIG`: it sets something this library cannot honour.

use core::mem::size_of;

use super::status::IeStatus;

/// The largest `size` the library looks at (a page): beyond it, `IE_STATUS_TOO_BIG` without
/// reading the bytes, so that the check of a newer caller's tail is bounded.
const MAX_SIZE: u32 = 4096;

/// The caller's struct at `p`, of `(*p).size` bytes (its first `u32`): the bytes the library
/// knows copied over `T::default()`.
///
/// # Errors
/// `InvalidArgument` for a size below `first` (the first versioned struct's size), `TooBig`
/// for a size above [`MAX_SIZE`] or a tail beyond `size_of::<T>()` that is not all zero.
///
/// # Safety
/// `p` is aligned and readable for a `u32` and, when that is at least `first`, for that many
/// bytes; `T` starts with that `u32`, and the caller's bytes are a valid `T` prefix (each
/// `bool` 0 or 1).
pub(super) unsafe fn read_sized<T: Copy + Default>(p: *const T, first: u32) -> Result<T, IeStatus> {
    // SAFETY: the caller's contract: every version starts with its size.
    let size = unsafe { p.cast::<u32>().read() };
    if size < first {
        return Err(IeStatus::InvalidArgument);
    }
    if size > MAX_SIZE {
        return Err(IeStatus::TooBig);
    }
    let known = size_of::<T>().min(size as usize);
    let bytes = p.cast::<u8>();
    // SAFETY: `size` bytes are readable (the caller's contract) and `size` is at most
    // `MAX_SIZE`, so every offset below it is in the caller's struct.
    let tail_is_zero = (known..size as usize).all(|i| unsafe { bytes.add(i).read() } == 0);
    if !tail_is_zero {
        return Err(IeStatus::TooBig);
    }
    let mut value = T::default();
    // SAFETY: `known` bytes are readable at `p` and writable at `value` (at most its size);
    // they do not overlap (`value` is this frame's); the caller's bytes are a valid prefix
    // of a `T`, and the rest of `value` keeps its defaults.
    unsafe {
        core::ptr::copy_nonoverlapping(bytes, (&mut value as *mut T).cast::<u8>(), known);
    }
    Ok(value)
}
