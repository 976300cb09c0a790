//! C ABI of nested translation (issue 17, item 1): a child IOASID holding a guest's stage 1
//! over a NEST_PARENT IOASID, the guest's IDs for its devices, and the guest's invalidations
//! passed through (iommufd `IOMMU_HWPT_ALLOC` with a parent, `IOMMU_VDEVICE_ALLOC`,
//! `IOMMU_HWPT_INVALIDATE`). See [`crate::ioasid::IoasidCtx::alloc_nested`].

use core::marker::PhantomData;
use core::mem::size_of;

use crate::iommu::{self, Refusal, UserStage1, VtdS1Invalidate};
use crate::mem::{Page, PageAllocator};

use super::env::CEnv;
use super::ioasid::{ctx_obj, device, ioasid, IeCtx};
use super::status::{code, IeStatus};

/// Smallest and largest page a guest's batch is copied into (`IeEnv::alloc_page`'s range).
const BATCH_MIN_LOG2: u32 = 12;
const BATCH_MAX_LOG2: u32 = 20;

/// A guest's invalidation batch, copied out of the caller's buffer once, each entry read
/// exactly once, into a page of the context's allocator. The buffer may be shared with the
/// guest, whose CPUs can change it while the call runs: the units check the whole batch,
/// then issue it, and read it again for a failure's count, so they must read a copy that
/// nobody else writes, or what they issue is not what they checked.
struct GuestBatch<T> {
    env: CEnv,
    /// `None` for an empty batch, which takes no page.
    page: Option<Page>,
    size_log2: u32,
    len: usize,
    _entries: PhantomData<T>,
}

impl<T: Copy> GuestBatch<T> {
    /// Copies `n` entries from `src` (8-byte aligned, not NULL: checked by the caller).
    /// `IE_STATUS_INVALID_ARGUMENT` for a batch larger than the largest page (1 MiB),
    /// `IE_STATUS_NO_MEMORY` without a page.
    ///
    /// # Safety
    /// `src` is readable for `n` entries of `T`.
    unsafe fn copy_in(env: CEnv, src: *const T, n: usize) -> Result<Self, IeStatus> {
        let bytes = n
            .checked_mul(size_of::<T>())
            .ok_or(IeStatus::InvalidArgument)?;
        let size_log2 = bytes
            .checked_next_power_of_two()
            .map_or(u32::MAX, usize::trailing_zeros)
            .max(BATCH_MIN_LOG2);
        if size_log2 > BATCH_MAX_LOG2 {
            return Err(IeStatus::InvalidArgument);
        }
        let mut batch = Self {
            env,
            page: None,
            size_log2,
            len: 0,
            _entries: PhantomData,
        };
        if n == 0 {
            return Ok(batch);
        }
        let page = env.alloc(size_log2).ok_or(IeStatus::NoMemory)?;
        let dst = page.va.cast::<T>().as_ptr();
        for i in 0..n {
            // SAFETY: `src` is readable for `n` entries (the caller's contract); the page is
            // ours, aligned to at least 4 KiB and `bytes` long. A volatile read: each entry
            // is read once, here, whatever the guest writes meanwhile.
            unsafe { dst.add(i).write(src.add(i).read_volatile()) };
        }
        batch.page = Some(page);
        batch.len = n;
        Ok(batch)
    }

    /// The copied entries.
    fn entries(&self) -> &[T] {
        match self.page {
            // SAFETY: `len` entries were written in `copy_in`; the page is ours until `drop`.
            Some(p) => unsafe { core::slice::from_raw_parts(p.va.cast::<T>().as_ptr(), self.len) },
            None => &[],
        }
    }
}

impl<T> Drop for GuestBatch<T> {
    fn drop(&mut self) {
        if let Some(page) = self.page {
            // SAFETY: the page came from `env.alloc(size_log2)`; the slices `entries` lent
            // are gone with the borrow of `self`.
            unsafe { self.env.free(page, self.size_log2) };
        }
    }
}

/// A user invalidation's two optional outputs (the count and the refused request), both
/// checked before the call reads or issues anything.
///
/// # Safety
/// Each pointer is NULL, misaligned or writable for the call, unshared.
unsafe fn optional_outputs<'a>(
    count: *mut usize,
    refused: *mut IeRefusedRequest,
) -> Result<(Option<&'a mut usize>, Option<&'a mut IeRefusedRequest>), IeStatus> {
    // SAFETY: the caller's contract.
    unsafe {
        Ok((
            super::optional_output(count)?,
            super::optional_output(refused)?,
        ))
    }
}

/// The format of an [`IeUserStage1`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeUserStage1Format {
    /// SMMUv3: `smmuv3_ste` holds words 0 and 1 of the guest's STE (only V, Config, S1Fmt,
    /// S1ContextPtr, S1CDMax, S1DSS, S1CIR, S1COR, S1CSH may be set).
    SmmuV3 = 1,
    /// VT-d: `vtd_flags`, `vtd_pgtbl_addr` and `vtd_addr_width` are iommufd's
    /// `struct iommu_hwpt_vtd_s1` (`IOMMU_HWPT_DATA_VTD_S1`).
    Vtd = 2,
}

/// A guest's stage 1 (iommufd `struct iommu_hwpt_arm_smmuv3` / `struct iommu_hwpt_vtd_s1`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IeUserStage1 {
    /// `IE_USER_STAGE1_FORMAT_*`.
    pub format: u32,
    /// SMMUv3: the guest's STE words 0 and 1.
    pub smmuv3_ste: [u64; 2],
    /// VT-d: `IOMMU_VTD_S1_SRE` (1), `IOMMU_VTD_S1_EAFE` (2), `IOMMU_VTD_S1_WPE` (4); any other
    /// bit is refused.
    pub vtd_flags: u64,
    /// VT-d: the guest's first-stage root table, a guest physical address (4 KiB aligned).
    pub vtd_pgtbl_addr: u64,
    /// VT-d: 48 (4-level) or 57 (5-level) bits.
    pub vtd_addr_width: u32,
}

impl IeUserStage1 {
    fn to_rust(self) -> Result<UserStage1, IeStatus> {
        match self.format {
            f if f == IeUserStage1Format::SmmuV3 as u32 => Ok(UserStage1::SmmuV3 {
                ste: self.smmuv3_ste,
            }),
            f if f == IeUserStage1Format::Vtd as u32 => Ok(UserStage1::Vtd {
                flags: self.vtd_flags,
                pgtbl_addr: self.vtd_pgtbl_addr,
                addr_width: self.vtd_addr_width,
            }),
            _ => Err(IeStatus::InvalidArgument),
        }
    }
}

/// Why a guest's invalidation was refused (`IeRefusedRequest::why`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeRefusal {
    /// Nothing was refused.
    None = 0,
    /// A command or descriptor type the guest may not issue (a stage-2 command, a sync...).
    Type = 1,
    /// A StreamID / requester ID naming no device of the guest attached to the child.
    ForeignDevice = 2,
    /// SMMUv3: a non-zero VMID.
    Vmid = 3,
    /// A PASID not attached to the child (not produced today: a VT-d invalidation names no
    /// PASID).
    ForeignPasid = 4,
    /// Reserved bits, or bits only the host may set (VT-d: flags other than
    /// `IOMMU_VTD_INV_FLAGS_LEAF`, or `__reserved`).
    ReservedBits = 5,
    /// VT-d: an address not 4 KiB aligned, or everything (`npages` all ones) not at 0.
    Misaligned = 6,
    /// VT-d: a range beyond the guest's first-stage input width.
    OutOfWidth = 7,
}

impl From<Refusal> for IeRefusal {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Type => IeRefusal::Type,
            Refusal::ForeignDevice => IeRefusal::ForeignDevice,
            Refusal::Vmid => IeRefusal::Vmid,
            Refusal::ForeignPasid => IeRefusal::ForeignPasid,
            Refusal::ReservedBits => IeRefusal::ReservedBits,
            Refusal::Misaligned => IeRefusal::Misaligned,
            Refusal::OutOfWidth => IeRefusal::OutOfWidth,
        }
    }
}

/// The request ie_ctx_invalidate_user() refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IeRefusedRequest {
    /// Its index in the batch.
    pub index: u32,
    /// `IeRefusal`; `IE_REFUSAL_NONE` when nothing was refused.
    pub why: u32,
    /// Its two words, as the guest gave them.
    pub request: [u64; 2],
}

/// Allocates a nested child of `parent` (an IOASID allocated with `IE_IOASID_FLAG_NEST_PARENT`)
/// holding the guest's stage 1 `*stage1`; writes its number. The guest's tables are the
/// guest's memory, reached through the parent: the crate never reads, writes or frees them.
/// ie_ctx_map() and ie_ctx_unmap() refuse the child (`IE_STATUS_INVALID_ARGUMENT`);
/// ie_ctx_attach() (and, on VT-d, ie_ctx_attach_pasid()) attach devices to it; ie_ctx_free()
/// of the parent is `IE_STATUS_BUSY` while the child exists.
///
/// # Safety
/// `ctx` is a live context handle; `stage1` is readable; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_alloc_nested(
    ctx: *mut IeCtx,
    parent: u32,
    stage1: *const IeUserStage1,
    out: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: `stage1` is NULL, misaligned (both refused) or readable;
        // `out` is NULL, misaligned (both refused) or writable.
        let (s1, out) = unsafe { (super::input(stage1)?, super::output(out)?) };
        *out = c.value.ctx.alloc_nested(ioasid(parent)?, s1.to_rust()?)?.0;
        Ok(())
    })())
}

/// Declares the ID the guest's vIOMMU knows `device` by (`has_id`: `virt_id`, a virtual
/// StreamID or requester ID; `!has_id`: withdraws it), as iommufd `IOMMU_VDEVICE_ALLOC`. The
/// guest's invalidations name devices by it. `IE_STATUS_BUSY` if another device of the
/// context behind the same unit has that ID.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_set_virtual_id(
    ctx: *mut IeCtx,
    device_handle: u32,
    has_id: bool,
    virt_id: u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let d = device(ctx, device_handle)?;
        Ok(c.value.ctx.set_virtual_id(d, has_id.then_some(virt_id))?)
    })())
}

/// Passes `n` guest SMMUv3 invalidation requests (`requests`: `2 * n` 64-bit words, each
/// request two words as the guest's vIOMMU queue held it: TLBI_NH_VA / TLBI_NH_VAA /
/// TLBI_NH_ASID / TLBI_NH_ALL / ATC_INV / CFGI_CD / CFGI_CD_ALL commands) for the nested
/// child `child` to its units, each checked and rewritten with the host's VMID and StreamID,
/// and waits for completion (iommufd `IOMMU_HWPT_INVALIDATE` with
/// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`). A command naming a device (ATC_INV, CFGI_CD,
/// CFGI_CD_ALL) goes to the unit of the device attached to the child under that virtual ID,
/// a TLBI to every unit the child is on; every unit checks the whole batch before any is
/// given its part. A VT-d child takes ie_ctx_invalidate_user_vtd(). `*issued` (if not NULL)
/// is written after every return: how many leading requests completed on every unit they were
/// for (iommufd's `entry_num`), 0 when none was issued. On success it is `n` (0 while no
/// device is attached). On `IE_STATUS_NOT_PERMITTED` nothing of the batch was issued on any
/// unit (`*issued` 0) and `*refused` (if not NULL) names the first request refused and why;
/// after every other return its `why` is `IE_REFUSAL_NONE`. On `IE_STATUS_TIMEOUT`,
/// `IE_STATUS_HARDWARE` or `IE_STATUS_COMMAND_ERROR` a unit failed: in its check of the batch
/// (nothing issued anywhere, `*issued` 0), or in its part after the units before it completed
/// theirs (`*issued` the leading requests complete); the rest may have been issued on some
/// units and none is known complete: pass them again.
///
/// The batch is read once, each request exactly once, into a page from the context's
/// `IeEnv` before anything is checked: `requests` may be memory the guest shares and
/// changes meanwhile, and what is checked is what is issued. At most 65536 requests (one
/// 1 MiB page; more is `IE_STATUS_INVALID_ARGUMENT`); `IE_STATUS_NO_MEMORY` without a page.
///
/// # Safety
/// `ctx` is a live context handle; `requests` is readable for `2 * n` words (or NULL with `n`
/// 0); `issued` and `refused` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_invalidate_user(
    ctx: *mut IeCtx,
    child: u32,
    requests: *const u64,
    n: usize,
    issued: *mut usize,
    refused: *mut IeRefusedRequest,
) -> i32 {
    // SAFETY: the C contract: each is NULL, misaligned (refused before anything is read or
    // issued) or writable.
    let (issued, refused) = match unsafe { optional_outputs(issued, refused) } {
        Ok(outs) => outs,
        Err(e) => return e as i32,
    };
    let mut what = IeRefusedRequest {
        index: 0,
        why: IeRefusal::None as u32,
        request: [0; 2],
    };
    // Nothing issued unless the call says otherwise.
    let mut count = 0usize;
    let r = (|| {
        let c = ctx_obj(ctx)?;
        let child = ioasid(child)?;
        // Read entry by entry (volatile), never made a slice: checked as one would be.
        super::checked_array(requests, n)?;
        // SAFETY: the C contract: `requests` is readable for `2 * n` aligned words, and
        // `[u64; 2]` is two such words with no padding.
        let batch = unsafe { GuestBatch::copy_in(*c.env(), requests.cast::<[u64; 2]>(), n) }?;
        match c.value.ctx.invalidate_user(child, batch.entries()) {
            Ok(k) => {
                count = k;
                Ok(())
            }
            Err(e @ crate::ioasid::Error::UserInvalidationIncomplete { done, .. }) => {
                count = done as usize;
                Err(e.into())
            }
            Err(crate::ioasid::Error::Iommu(iommu::Error::Refused {
                index,
                request,
                why,
            })) => {
                what = IeRefusedRequest {
                    index,
                    why: IeRefusal::from(why) as u32,
                    request,
                };
                Err(IeStatus::NotPermitted)
            }
            Err(e) => Err(e.into()),
        }
    })();
    if let Some(out) = issued {
        *out = count;
    }
    if let Some(out) = refused {
        *out = what;
    }
    code(r)
}

/// One VT-d guest invalidation: iommufd's `struct iommu_hwpt_vtd_s1_invalidate`
/// (`IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`), field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IeVtdS1Invalidate {
    /// First address of the guest's first-stage input, 4 KiB aligned.
    pub addr: u64,
    /// Number of 4 KiB pages; all ones with `addr` 0: everything.
    pub npages: u64,
    /// `IOMMU_VTD_INV_FLAGS_LEAF` (1): only leaf entries changed; no other bit.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// Passes `n` VT-d guest invalidations (`requests`, iommufd
/// `IOMMU_HWPT_INVALIDATE` with `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`) for the nested child
/// `child` to its units: every entry is checked, then each becomes PASID-based IOTLB
/// invalidations under the child's own domain ID for every PASID attached to it (requests
/// without PASID: RID_PASID) and device-TLB invalidations for its ATS devices, with one wait.
/// `*processed` (if not NULL) is written after every return: how many entries were processed
/// (`n` on success), 0 when none is known complete. On `IE_STATUS_NOT_PERMITTED` nothing was
/// issued and `*refused` (if not NULL) names the first entry refused (`request` = its `addr`,
/// `npages`) and why (`IE_REFUSAL_RESERVED_BITS`, `IE_REFUSAL_MISALIGNED`,
/// `IE_REFUSAL_OUT_OF_WIDTH`); after every other return its `why` is `IE_REFUSAL_NONE`. On
/// `IE_STATUS_TIMEOUT`, `IE_STATUS_HARDWARE` or `IE_STATUS_COMMAND_ERROR` a unit failed: the
/// invalidations may have been issued, none is known complete (`*processed` 0): pass the
/// batch again. The batch is read once, each entry exactly once, as by
/// ie_ctx_invalidate_user(): at most 43690 entries (one 1 MiB page).
///
/// # Safety
/// `ctx` is a live context handle; `requests` is readable for `n` entries (or NULL with `n`
/// 0); `processed` and `refused` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_invalidate_user_vtd(
    ctx: *mut IeCtx,
    child: u32,
    requests: *const IeVtdS1Invalidate,
    n: usize,
    processed: *mut usize,
    refused: *mut IeRefusedRequest,
) -> i32 {
    // SAFETY: the C contract: each is NULL, misaligned (refused before anything is read or
    // issued) or writable.
    let (processed, refused) = match unsafe { optional_outputs(processed, refused) } {
        Ok(outs) => outs,
        Err(e) => return e as i32,
    };
    let mut what = IeRefusedRequest {
        index: 0,
        why: IeRefusal::None as u32,
        request: [0; 2],
    };
    // None known complete unless the call says otherwise.
    let mut count = 0usize;
    let r = (|| {
        let c = ctx_obj(ctx)?;
        let child = ioasid(child)?;
        // Read entry by entry (volatile), never made a slice: checked as one would be.
        super::checked_array(requests, n)?;
        // The same layout (`repr(C)`, asserted below): the entries are copied as the
        // engine's type, once each, into a page (not the stack).
        // SAFETY: the C contract: `requests` is readable for `n` aligned entries;
        // `IeVtdS1Invalidate` and `VtdS1Invalidate` are `repr(C)` with the same fields in
        // the same order, so an entry of one is an entry of the other.
        let batch =
            unsafe { GuestBatch::<VtdS1Invalidate>::copy_in(*c.env(), requests.cast(), n) }?;
        match c.value.ctx.invalidate_user_vtd(child, batch.entries()) {
            Ok(k) => {
                count = k;
                Ok(())
            }
            Err(crate::ioasid::Error::Iommu(iommu::Error::Refused {
                index,
                request,
                why,
            })) => {
                what = IeRefusedRequest {
                    index,
                    why: IeRefusal::from(why) as u32,
                    request,
                };
                Err(IeStatus::NotPermitted)
            }
            Err(e) => Err(e.into()),
        }
    })();
    if let Some(out) = processed {
        *out = count;
    }
    if let Some(out) = refused {
        *out = what;
    }
    code(r)
}

const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<IeVtdS1Invalidate>() == size_of::<VtdS1Invalidate>());
    assert!(align_of::<IeVtdS1Invalidate>() == align_of::<VtdS1Invalidate>());
    assert!(offset_of!(IeVtdS1Invalidate, npages) == offset_of!(VtdS1Invalidate, npages));
    assert!(offset_of!(IeVtdS1Invalidate, flags) == offset_of!(VtdS1Invalidate, flags));
    assert!(offset_of!(IeVtdS1Invalidate, reserved) == offset_of!(VtdS1Invalidate, reserved));
};
