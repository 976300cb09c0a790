//! iommufd's IOAS calls of issue 17 over C (items 4-6 beside `ioasid.rs`): the page-size option
//! (`IOMMU_OPTION_HUGE_PAGES`), copying mappings (`IOMMU_IOAS_COPY`) and the usable IOVA
//! ranges (`IOMMU_IOAS_IOVA_RANGES`), with the semantics of [`crate::ioasid::IoasidCtx`].

use super::ioasid::{ctx_obj, ioasid, put, IeCtx};
use super::status::{code, IeStatus};

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
        if max_log2.is_null() {
            return Err(IeStatus::InvalidArgument);
        }
        let max = c.value.ctx.max_page_log2(self::ioasid(ioasid)?)?;
        put(max_log2, max.unwrap_or(64))
    })())
}
