//! iommufd's IOAS calls of issue 17 over C (items 4-6 beside `ioasid.rs`): the page-size option
//! (`IOMMU_OPTION_HUGE_PAGES`), copying mappings (`IOMMU_IOAS_COPY`) and the usable IOVA
//! ranges (`IOMMU_IOAS_IOVA_RANGES`), with the semantics of [`crate::ioasid::IoasidCtx`].

use super::ioasid::{ctx_obj, ioasid, IeCtx};
use super::status::{code, IeStatus};
use crate::mem::Iova;
use crate::pgtable::IovaRange;

/// iommufd `IOMMU_OPTION_HUGE_PAGES`: `enabled` false limits every hardware domain of the
/// IOASID to 4 KiB pages (a unit whose granule is larger uses its granule), true (the
/// default) lifts the limit. `IE_STATUS_BUSY` if the IOASID has both a hardware domain (an
/// attached device) and a mapping, as iommufd refuses; `IE_STATUS_UNSUPPORTED` from a unit
/// that cannot limit its pages. Nothing changed after an error.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_set_huge_pages(ctx: *mut IeCtx, ioasid: u32, enabled: bool) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        Ok(c.value.ctx.set_huge_pages(self::ioasid(ioasid)?, enabled)?)
    })())
}

/// The page-size limit of the IOASID: `*max_log2` (not NULL) is the log2 of the largest page
/// its domains map, or 64 when there is no limit (iommufd `IOMMU_OPTION_OP_GET` of
/// `HUGE_PAGES` is `*max_log2 == 64`).
///
/// # Safety
/// `ctx` is a live context handle; `max_log2` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_max_page_log2(
    ctx: *mut IeCtx,
    ioasid: u32,
    max_log2: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(max_log2) }?;
        let max = c.value.ctx.max_page_log2(self::ioasid(ioasid)?)?;
        *out = max.unwrap_or(64);
        Ok(())
    })())
}

/// iommufd `IOMMU_IOAS_COPY`: maps `[dst_iova, dst_iova + len)` in IOASID `dst` to the
/// physical pages `[src_iova, src_iova + len)` maps in `src`, with the same permissions, all
/// or nothing. `IE_STATUS_NOT_FOUND` when the source range has a hole (or an IOASID does not
/// exist); `IE_STATUS_RESERVED` for a source range over an attached device's direct region;
/// otherwise the errors of ie_ctx_map() in the destination: nothing is mapped in `dst`
/// after any error (`IE_STATUS_TIMEOUT` / `IE_STATUS_HARDWARE` / `IE_STATUS_COMMAND_ERROR`:
/// what was mapped was unmapped again, but a unit may not have confirmed the invalidation, or
/// may still map some of the range (then, as after ie_ctx_map(), `dst` keeps the range), or
/// both on different units: in every case, as after ie_ctx_map(), do not reuse the pages
/// until ie_ctx_unmap() of `[dst_iova, dst_iova + len)` returns `IE_STATUS_OK`).
/// `IE_STATUS_BUSY` when the destination range overlaps that of another copy into `dst`
/// running on another thread, or the source range overlaps that of a copy into `src` still
/// running (pages it may yet undo: `src` == `dst` included); `IE_STATUS_NO_SPACE` with four
/// copies already running into `dst`, nothing held. Until it returns, the destination range
/// is the copy's: ie_ctx_map() and ie_ctx_unmap() of `dst` touching it, ie_ctx_unmap() of
/// all of `dst` (`iova` 0, `len` `UINT64_MAX`) and another copy into it return
/// `IE_STATUS_BUSY`, and so does ie_ctx_free() of `src` or `dst`; an attach to `dst` of a
/// device whose direct region lies in it fails with `IE_STATUS_INCOMPATIBLE` and
/// `IE_MISSING_DIRECT_REGION`.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_copy(
    ctx: *mut IeCtx,
    src: u32,
    src_iova: u64,
    dst: u32,
    dst_iova: u64,
    len: u64,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        Ok(c.value.ctx.copy(
            ioasid(src)?,
            Iova::new(src_iova),
            ioasid(dst)?,
            Iova::new(dst_iova),
            len,
        )?)
    })())
}

/// One usable IOVA range, first and last address inclusive (iommufd's
/// `struct iommu_iova_range`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IeIovaRange {
    /// The first IOVA of the range.
    pub start: u64,
    /// The last IOVA of the range.
    pub last: u64,
}

/// iommufd `IOMMU_IOAS_IOVA_RANGES`: the IOVA ranges ie_ctx_map() accepts in the IOASID, in
/// address order: its address space (as wide as the narrowest unit domain behind it; 57 bits
/// with none) less the reserved regions of those units, the context's reserved regions and
/// attached devices' direct regions. `*num` (not NULL) is the capacity of `ranges` on entry
/// and the number of ranges on return; `ranges` may be NULL when `*num` is 0.
/// `IE_STATUS_BUFFER_TOO_SMALL` when there are more than `*num`: `*num` is then the number
/// needed and `ranges` holds the first ones (call again with a buffer that large).
///
/// # Safety
/// `ctx` is a live context handle; `num` is readable and writable; `ranges` is writable for
/// `*num` entries (or NULL with `*num` 0).
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_iova_ranges(
    ctx: *mut IeCtx,
    ioasid: u32,
    ranges: *mut IeIovaRange,
    num: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: `num` is NULL, misaligned (both refused) or readable and
        // writable.
        let num = unsafe { super::output(num) }?;
        // SAFETY: the C contract: `ranges` is NULL (with `*num` 0), misaligned (refused) or
        // writable for `*num` entries.
        let ranges = unsafe { super::output_slice(ranges, *num as usize) }?;
        let mut i = 0usize;
        let n = c
            .value
            .ctx
            .for_each_iova_range(self::ioasid(ioasid)?, |r| {
                if let Some(slot) = ranges.get_mut(i) {
                    *slot = IeIovaRange {
                        start: r.start.get(),
                        last: r.end.get().saturating_sub(1),
                    };
                }
                i += 1;
            })?;
        *num = u32::try_from(n).unwrap_or(u32::MAX);
        if n > ranges.len() {
            return Err(IeStatus::BufferTooSmall);
        }
        Ok(())
    })())
}

/// Declares `[start, start + len)` a range no IOASID of the context may map (beyond the
/// units' own reserved regions), as iommufd's reserved IOVA ranges: ie_ctx_map() refuses it
/// and ie_ctx_iova_ranges() leaves it out. `IE_STATUS_RESERVED` if the context already uses
/// part of it (a bound device's direct region, a mapping, an IOVA reservation, the destination
/// range of an ie_ctx_copy() in flight; iommufd's `EADDRINUSE`); `IE_STATUS_NO_SPACE` beyond
/// 8 regions; `IE_STATUS_INVALID_ARGUMENT` for an empty or overflowing range.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_reserve_region(ctx: *mut IeCtx, start: u64, len: u64) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let end = start
            .checked_add(len)
            .filter(|_| len != 0)
            .ok_or(IeStatus::InvalidArgument)?;
        let range = IovaRange {
            start: Iova::new(start),
            end: Iova::new(end),
        };
        Ok(c.value.ctx.reserve_region(range)?)
    })())
}
