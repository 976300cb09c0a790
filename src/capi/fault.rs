//! I/O page faults over C (issue 17 item 8): a unit's page request queue turned on, a context's
//! fault queue (iommufd `IOMMU_FAULT_QUEUE_ALLOC`), the dispatch of a unit's page requests and
//! stalls to the contexts, reading them and answering them. See [`crate::ioasid`] (module
//! docs, the `IOMMU_FAULT_QUEUE_ALLOC` row) and [`crate::iopf`].

use crate::ioasid::{dispatch_page_faults_with, UnitId};
use crate::iommu::Pasid;
use crate::iopf::{FaultCookie, FaultKind, PageFault, QueuedFault, ResponseCode};

use super::ioasid::{ctx_obj, registry_obj, IeCtx, IeRegistry};
use super::status::{code, IeStatus};
use super::unit::{unit_obj, IeUnit, UnitObj};

/// `IePageFault::flags`, OR-ed together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IePageFaultFlag {
    /// `pasid` is valid.
    PasidValid = 1 << 0,
    /// The last request of its page request group (the group is answered through it).
    LastPage = 1 << 1,
    /// A stalled transaction (SMMUv3); `group` is its STAG.
    Stall = 1 << 2,
}

/// `IePageFault::perm`, OR-ed together (iommufd `IOMMU_PGFAULT_PERM_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IePageFaultPerm {
    /// Read.
    Read = 1 << 0,
    /// Write.
    Write = 1 << 1,
    /// Instruction fetch.
    Exec = 1 << 2,
    /// Privileged.
    Priv = 1 << 3,
}

const _: () = {
    use crate::iopf::FaultPerm;
    assert!(IePageFaultPerm::Read as u32 == FaultPerm::READ.bits() as u32);
    assert!(IePageFaultPerm::Write as u32 == FaultPerm::WRITE.bits() as u32);
    assert!(IePageFaultPerm::Exec as u32 == FaultPerm::EXEC.bits() as u32);
    assert!(IePageFaultPerm::Priv as u32 == FaultPerm::PRIV.bits() as u32);
    assert!(IeFaultResponse::Success as u32 == ResponseCode::Success as u32);
    assert!(IeFaultResponse::Invalid as u32 == ResponseCode::Invalid as u32);
    assert!(IeFaultResponse::Failure as u32 == ResponseCode::Failure as u32);
};

/// One I/O page fault as a context's queue gives it (iommufd `struct iommu_hwpt_pgfault`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IePageFault {
    /// `IePageFaultFlag`s.
    pub flags: u32,
    /// The unit's number in the registry.
    pub unit: u32,
    /// The device: PCI RID (VT-d) or StreamID (SMMUv3).
    pub device: u32,
    /// The PASID / SubstreamID, with `IE_PAGE_FAULT_FLAG_PASID_VALID`.
    pub pasid: u32,
    /// `IePageFaultPerm`s.
    pub perm: u32,
    /// Page request group index, or the STAG of a stall.
    pub group: u32,
    /// The group's cookie: answer with ie_ctx_respond_fault().
    pub cookie: u32,
    /// Reserved, 0.
    pub reserved: u32,
    /// The faulting address.
    pub addr: u64,
}

impl IePageFault {
    fn new(q: &QueuedFault) -> Self {
        let f: &PageFault = &q.fault;
        let mut flags = 0;
        let group = match f.kind {
            FaultKind::PageRequest { group, last } => {
                if last {
                    flags |= IePageFaultFlag::LastPage as u32;
                }
                group
            }
            FaultKind::Stall { stag } => {
                flags |= IePageFaultFlag::Stall as u32;
                stag
            }
        };
        if f.pasid.is_some() {
            flags |= IePageFaultFlag::PasidValid as u32;
        }
        Self {
            flags,
            unit: u32::from(q.unit),
            device: f.device.0,
            pasid: f.pasid.map_or(0, Pasid::get),
            perm: u32::from(f.perm.bits()),
            group: u32::from(group),
            cookie: q.cookie.0,
            reserved: 0,
            addr: f.addr,
        }
    }
}

/// Gives the unit a page request queue of `2^log2_pages` 4 KiB pages (VT-d: 0..=3, needs
/// `ECAP.PRS` and queued invalidation). Its page requests then reach
/// ie_registry_dispatch_faults().
///
/// # Safety
/// `unit` is a live unit handle.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_enable_page_requests(unit: *mut IeUnit, log2_pages: u32) -> i32 {
    code((|| match &unit_obj(unit)?.value {
        UnitObj::Vtd(u) => {
            let pqs = u8::try_from(log2_pages).map_err(|_| IeStatus::InvalidArgument)?;
            u.enable_page_requests(pqs)
                .map_err(|e| IeStatus::from(crate::iommu::Error::from(e)))
        }
        _ => Err(IeStatus::Unsupported),
    })())
}

/// Opens the context's fault queue (iommufd `IOMMU_FAULT_QUEUE_ALLOC`): page faults of its
/// attached devices are queued from now on (64 records).
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_fault_queue_alloc(ctx: *mut IeCtx) -> i32 {
    code((|| {
        ctx_obj(ctx)?.value.ctx().fault_queue_alloc();
        Ok(())
    })())
}

/// Drains unit number `unit`'s page requests (and stalls) and queues each in the context among
/// `ctxs[0..n_ctxs]` that owns the faulting device (attached, queue open); a fault none takes is
/// answered Invalid at once. `*queued` (if not NULL) receives how many were queued. Call it from
/// a threaded handler of the unit's page request interrupt, or to poll.
///
/// `IE_STATUS_FAULTS_LOST`: the unit's own queue overflowed before the drain (acknowledged;
/// partial groups from it were dropped; devices ask again). `IE_STATUS_INVALID_ARGUMENT`, with
/// nothing drained: an entry of `ctxs` is neither NULL nor a live context of `registry`.
///
/// # Safety
/// `registry` is a live registry handle; `ctxs` points to `n_ctxs` handles, each NULL or a
/// handle; `queued` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_registry_dispatch_faults(
    registry: *mut IeRegistry,
    unit: u32,
    ctxs: *const *mut IeCtx,
    n_ctxs: u32,
    queued: *mut u32,
) -> i32 {
    code((|| {
        let reg = registry_obj(registry)?;
        // SAFETY: the C contract: `ctxs` is NULL (with `n_ctxs` 0), misaligned (refused) or
        // has `n_ctxs` readable entries; `queued` is NULL, misaligned (refused) or writable.
        let (ctxs, queued) = unsafe {
            (
                super::input_slice(ctxs, n_ctxs as usize)?,
                super::optional_output(queued)?,
            )
        };
        let id = UnitId(u8::try_from(unit).map_err(|_| IeStatus::InvalidArgument)?);
        let iommu = reg.value.registry().unit(id)?;
        // Before anything is drained: a context of another registry would be handed faults
        // of a device this registry's owner table gave to someone else.
        for &c in ctxs {
            if !c.is_null() && !ctx_obj(c)?.value.belongs_to(reg) {
                return Err(IeStatus::InvalidArgument);
            }
        }
        let context = |i: usize| {
            let c = *ctxs.get(i)?;
            ctx_obj(c).ok().map(|o| o.value.ctx())
        };
        let d = dispatch_page_faults_with(id, iommu, ctxs.len(), context)?;
        if let Some(q) = queued {
            *q = d.queued;
        }
        if d.unit_overflow {
            Err(IeStatus::FaultsLost)
        } else {
            Ok(())
        }
    })())
}

/// Moves up to `max` readable faults, oldest first, into `out` and writes their number to
/// `*count` (iommufd: `read()` of the fault queue). The faults of one page request group share
/// a cookie; answer the group once.
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable for `max` entries; `count` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_read_faults(
    ctx: *mut IeCtx,
    out: *mut IePageFault,
    max: u32,
    count: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?.value.ctx();
        // SAFETY: the C contract: `out` is NULL (with `max` 0), misaligned (refused) or
        // writable for `max` entries; `count` is NULL, misaligned (both refused) or writable.
        let (out, count) = unsafe {
            (
                super::output_slice(out, max as usize)?,
                super::output(count)?,
            )
        };
        let mut n = 0u32;
        let mut one = [QueuedFault {
            unit: 0,
            fault: PageFault::EMPTY,
            cookie: FaultCookie(0),
        }];
        for slot in out.iter_mut() {
            if c.read_faults(&mut one) != 1 {
                break;
            }
            *slot = IePageFault::new(&one[0]);
            n += 1;
        }
        *count = n;
        Ok(())
    })())
}

/// `ie_ctx_respond_fault` codes (iommufd `IOMMU_PGFAULT_RESP_*`, plus failure).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeFaultResponse {
    /// The pages are there: the device retries (SMMUv3 stall: RETRY).
    Success = 0,
    /// The request is invalid: the device does not retry (stall: ABORT).
    Invalid = 1,
    /// Nobody can answer: the device stops using page requests (stall: ABORT).
    Failure = 2,
}

/// Answers the fault group `cookie` names with `response` (an `IeFaultResponse`): the unit
/// sends the device a page group response (VT-d) or `CMD_PRI_RESP` / `CMD_RESUME` (SMMUv3).
/// `IE_STATUS_INVALID_ARGUMENT`: no such group awaits an answer (answered already, not read,
/// or no longer outstanding at the unit, e.g. a stall it terminated; iommufd's `-EINVAL`) or an
/// unknown code; `IE_STATUS_NOT_PERMITTED`: another context's cookie.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_respond_fault(ctx: *mut IeCtx, cookie: u32, response: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?.value.ctx();
        let code = ResponseCode::from_u32(response).ok_or(IeStatus::InvalidArgument)?;
        Ok(c.respond_fault(FaultCookie(cookie), code)?)
    })())
}

/// Faults the context's queue could not hold since it was opened (each was answered Invalid).
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_faults_overflowed(ctx: *mut IeCtx, out: *mut u64) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?.value.ctx();
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let o = unsafe { super::output(out) }?;
        *o = c.faults_overflowed();
        Ok(())
    })())
}
