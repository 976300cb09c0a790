//! Dirty tracking over C: iommufd's `IOMMU_HWPT_SET_DIRTY_TRACKING` and
//! `IOMMU_HWPT_GET_DIRTY_BITMAP` (with `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`) for an IOASID
//! allocated with `IE_IOASID_FLAG_DIRTY_TRACKING` (see `ioasid::IoasidCtx::set_dirty_tracking`
//! and `get_dirty_bitmap`).

use crate::ioasid::DirtyReadFlags;
use crate::mem::Iova;

use super::ioasid::{ctx_obj, ioasid, IeCtx};
use super::status::{code, IeStatus};

/// Flags of [`ie_ctx_get_dirty_bitmap`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeDirtyFlag {
    /// Report without cleaning (iommufd `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`): nothing is
    /// invalidated and the next read reports the pages again.
    NoClear = 1 << 0,
}

const _: () = assert!(IeDirtyFlag::NoClear as u32 == DirtyReadFlags::NO_CLEAR.bits());

/// Turns dirty tracking of an IOASID allocated with `IE_IOASID_FLAG_DIRTY_TRACKING` on or off
/// in every domain behind it (it starts on). Turning it on cleans every page first, so that
/// the next `ie_ctx_get_dirty_bitmap` reports only what devices wrote after this call.
/// `IE_STATUS_UNSUPPORTED` for an IOASID allocated without the flag. After a unit error
/// (`IE_STATUS_TIMEOUT`, ...) tracking counts as off: call again.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_set_dirty_tracking(
    ctx: *mut IeCtx,
    ioasid: u32,
    enable: bool,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        Ok(c.value
            .ctx
            .set_dirty_tracking(self::ioasid(ioasid)?, enable)?)
    })())
}

/// Sets in `bitmap` (`words` 64-bit words) bit `i` (word `i / 64`, bit `i % 64`) for every
/// `page_size`-byte page at `iova + i * page_size` of `[iova, iova + length)` that a device wrote
/// since the last clearing read, and cleans those pages (one invalidation per unit) unless `flags`
/// has `IE_DIRTY_FLAG_NO_CLEAR`; a large page straddling an edge of the range is reported and left
/// dirty, for a later read of its other part. Bits are set, never cleared: zero the bitmap first.
/// `page_size` is a power of two of at least 4096; `iova` and `length` are multiples of it; `words`
/// is at least `ceil(length / page_size / 64)`. `IE_STATUS_INVALID_ARGUMENT` for any of those
/// (nothing read), an unknown flag, a NULL or not 8-byte aligned bitmap, or tracking turned off;
/// `IE_STATUS_UNSUPPORTED` for an IOASID allocated without dirty tracking. A unit error after
/// the read (`IE_STATUS_TIMEOUT`, ...): the bits are valid but writes through stale caches may
/// go unrecorded: treat every page of the range as dirty and call again.
///
/// # Safety
/// `ctx` is a live context handle; `bitmap` is NULL, not 8-byte aligned (refused), or valid
/// for reads and writes of `words` words.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_get_dirty_bitmap(
    ctx: *mut IeCtx,
    ioasid: u32,
    iova: u64,
    length: u64,
    page_size: u64,
    bitmap: *mut u64,
    words: usize,
    flags: u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let flags = DirtyReadFlags::from_bits(flags).ok_or(IeStatus::InvalidArgument)?;
        if !page_size.is_power_of_two() || bitmap.is_null() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `bitmap` is misaligned (refused) or valid for reads and
        // writes of `words` words, and nothing else accesses them during the call.
        let bitmap = unsafe { super::output_slice(bitmap, words) }?;
        Ok(c.value.ctx.get_dirty_bitmap(
            self::ioasid(ioasid)?,
            Iova::new(iova),
            length,
            page_size.trailing_zeros(),
            bitmap,
            flags,
        )?)
    })())
}
