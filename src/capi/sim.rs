//! The reference models over C (features `capi` + `sim`, host only): an arena of fake physical
//! memory that serves as the embedder's [`IeEnv`], and VT-d / SMMUv3 models that serve as
//! register windows and translate DMA, so that a C program can run the whole flow on the host.

extern crate std;

use core::ffi::c_void;
use core::ptr::NonNull;
use std::boxed::Box;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::mem::{Page, PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::sim::amdvi::{AmdViModel, AmdViModelConfig};
use crate::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use crate::sim::vtd::{VtdModel, VtdModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig};

use super::env::{IeEnv, IeRegs};
use super::status::{code, IeStatus};

/// An arena of fake physical memory (a host buffer) handing out pages.
pub struct IeSimArena {
    _opaque: [u8; 0],
}

/// A model of a VT-d unit or an SMMUv3.
pub struct IeSimModel {
    _opaque: [u8; 0],
}

struct ArenaObj {
    arena: Arena,
    models: core::sync::atomic::AtomicU32,
}

enum ModelObj {
    Vtd(VtdModel<'static>),
    Smmu(SmmuModel<'static>),
    AmdVi(AmdViModel<'static>),
}

struct ModelBox {
    model: ModelObj,
    arena: NonNull<ArenaObj>,
}

// SAFETY: `arena` names an `ArenaObj` (which is `Sync`) that outlives the model (counted).
unsafe impl Send for ModelBox {}
// SAFETY: as above.
unsafe impl Sync for ModelBox {}

/// What a live sim handle is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Arena,
    Model,
}

/// The live sim handles, and the model each unit created on a model's window uses. A table
/// rather than a tag in the object: a destroyed handle's memory is gone (`Box`), so it is looked
/// up, never read, and a handle destroyed twice or of the other type is refused for certain.
struct Handles {
    live: BTreeMap<usize, Kind>,
    /// Unit handle to the model whose window it drives.
    units: BTreeMap<usize, usize>,
}

static HANDLES: Mutex<Handles> = Mutex::new(Handles {
    live: BTreeMap::new(),
    units: BTreeMap::new(),
});

/// The table, even if a thread panicked holding it (it is consistent between statements).
fn handles() -> MutexGuard<'static, Handles> {
    HANDLES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `h`, if it is a live handle of `kind`.
fn live<T>(h: *mut T, kind: Kind) -> Result<NonNull<T>, IeStatus> {
    let p = NonNull::new(h).ok_or(IeStatus::InvalidArgument)?;
    match handles().live.get(&(h as usize)) {
        Some(k) if *k == kind => Ok(p),
        _ => Err(IeStatus::InvalidArgument),
    }
}

fn arena_obj<'h>(a: *mut IeSimArena) -> Result<&'h ArenaObj, IeStatus> {
    let a = live(a, Kind::Arena)?;
    // SAFETY: a live arena handle (the table); the C contract keeps it live during the call.
    Ok(unsafe { a.cast::<ArenaObj>().as_ref() })
}

fn model_obj<'h>(m: *mut IeSimModel) -> Result<&'h ModelBox, IeStatus> {
    let m = live(m, Kind::Model)?;
    // SAFETY: a live model handle (the table); the C contract keeps it live during the call.
    Ok(unsafe { m.cast::<ModelBox>().as_ref() })
}

/// Notes that `unit` (a new unit handle) drives the window `window_ctx` names, when that is
/// a model's (`IeRegs.ctx` from ie_sim_model_regs()): the model is then busy until
/// [`unit_destroyed`].
pub(super) fn unit_created(unit: usize, window_ctx: *mut c_void) {
    let mut h = handles();
    let model = window_ctx as usize;
    if h.live.get(&model) == Some(&Kind::Model) {
        h.units.insert(unit, model);
    }
}

/// `unit` is destroyed: its model, if any, is free again.
pub(super) fn unit_destroyed(unit: usize) {
    handles().units.remove(&unit);
}

/// The SMMUv3 model behind a live model handle (tests: its command log and injections).
#[cfg(test)]
pub(super) fn smmu_model<'h>(m: *mut IeSimModel) -> &'h SmmuModel<'static> {
    match model_obj(m).map(|b| &b.model) {
        Ok(ModelObj::Smmu(s)) => s,
        _ => panic!("not an SMMUv3 model"),
    }
}

/// The VT-d model behind a live model handle (tests: its injections).
#[cfg(test)]
pub(super) fn vtd_model<'h>(m: *mut IeSimModel) -> &'h VtdModel<'static> {
    match model_obj(m).map(|b| &b.model) {
        Ok(ModelObj::Vtd(v)) => v,
        _ => panic!("not a VT-d model"),
    }
}

/// Creates an arena of `bytes` (a multiple of 1 MiB) at physical address 2 GiB.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_arena_create(bytes: u64, out: *mut *mut IeSimArena) -> i32 {
    code((|| {
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        let capacity = usize::try_from(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let arena = Arena::new(ArenaConfig {
            capacity,
            ..ArenaConfig::default()
        })
        .map_err(|_| IeStatus::InvalidArgument)?;
        let obj = Box::into_raw(Box::new(ArenaObj {
            arena,
            models: core::sync::atomic::AtomicU32::new(0),
        }));
        handles().live.insert(obj as usize, Kind::Arena);
        *out = obj.cast();
        Ok(())
    })())
}

/// Destroys an arena with no model left.
///
/// # Safety
/// `arena` is NULL or a live arena handle, not used again after success.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_arena_destroy(arena: *mut IeSimArena) -> i32 {
    code((|| {
        let mut h = handles();
        if h.live.get(&(arena as usize)) != Some(&Kind::Arena) {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: a live arena (the table).
        let a = unsafe { &*arena.cast::<ArenaObj>() };
        if a.models.load(core::sync::atomic::Ordering::Acquire) != 0 {
            return Err(IeStatus::Busy);
        }
        h.live.remove(&(arena as usize));
        drop(h);
        // SAFETY: created by `Box::into_raw` in `ie_sim_arena_create`; unused from now on.
        drop(unsafe { Box::from_raw(arena.cast::<ArenaObj>()) });
        Ok(())
    })())
}

/// Pages allocated from the arena and not yet freed (0 for a NULL handle).
///
/// # Safety
/// `arena` is NULL or a live arena handle.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_arena_live_pages(arena: *mut IeSimArena) -> u64 {
    arena_obj(arena).map_or(0, |a| a.arena.stats().live_pages as u64)
}

unsafe extern "C" fn arena_alloc(ctx: *mut c_void, size_log2: u32, pa: *mut u64) -> *mut c_void {
    // SAFETY: `ctx` is the arena `ie_sim_arena_env` put there.
    let a = unsafe { &*ctx.cast::<ArenaObj>() };
    match a.arena.alloc(size_log2) {
        Some(p) => {
            // SAFETY: the crate passes a valid out-pointer.
            unsafe { *pa = p.pa.get() };
            p.va.as_ptr().cast()
        }
        None => core::ptr::null_mut(),
    }
}

unsafe extern "C" fn arena_free(ctx: *mut c_void, va: *mut c_void, pa: u64, size_log2: u32) {
    // SAFETY: `ctx` is the arena `ie_sim_arena_env` put there.
    let a = unsafe { &*ctx.cast::<ArenaObj>() };
    if let Some(va) = NonNull::new(va.cast::<u8>()) {
        let page = Page {
            pa: PhysAddr::new(pa),
            va,
        };
        // SAFETY: the crate gives back a page the arena handed out (the arena also checks).
        unsafe { a.arena.free(page, size_log2) };
    }
}

unsafe extern "C" fn arena_phys_to_virt(ctx: *mut c_void, pa: u64) -> *mut c_void {
    // SAFETY: `ctx` is the arena `ie_sim_arena_env` put there.
    let a = unsafe { &*ctx.cast::<ArenaObj>() };
    a.arena
        .phys_to_virt(PhysAddr::new(pa))
        .map_or(core::ptr::null_mut(), |p| p.as_ptr().cast())
}

/// Fills `*env` with the arena's page services.
///
/// # Safety
/// `arena` is a live arena handle; `env` is writable. The env is valid while the arena lives.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_arena_env(arena: *mut IeSimArena, env: *mut IeEnv) -> i32 {
    code((|| {
        arena_obj(arena)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let env = unsafe { super::output(env) }?;
        *env = IeEnv {
            ctx: arena.cast(),
            alloc_page: Some(arena_alloc),
            free_page: Some(arena_free),
            phys_to_virt: Some(arena_phys_to_virt),
            sync_for_device: None,
            sync_for_cpu: None,
        };
        Ok(())
    })())
}

/// What the VT-d model reports in CAP/ECAP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeSimVtdConfig {
    /// Scalable mode (ECAP.SMTS, PASID, first stage) rather than a legacy-only unit.
    pub scalable: bool,
    /// ECAP.SC: the unit can enforce snooping.
    pub snoop_control: bool,
    /// CAP.CM: caching mode (not-present entries may be cached).
    pub caching_mode: bool,
    /// ECAP.PRS: the page request queue (ie_sim_model_page_request()).
    pub page_requests: bool,
    /// Fault recording registers (`CAP.NFR + 1`); 0 is the default, one.
    pub fault_records: u8,
}

/// What the SMMUv3 model reports in its ID registers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeSimSmmuConfig {
    /// IDR3.FWB: stage-2 forced write-back.
    pub fwb: bool,
    /// IDR0.COHACC: coherent table walks and queue accesses.
    pub cohacc: bool,
    /// IDR3.RIL: range invalidation.
    pub ril: bool,
    /// Not a register: the platform keeps every stream's accesses coherent whatever their
    /// attributes (ACPI IORT `CANWBS`), PCIe No-Snoop included.
    pub canwbs: bool,
    /// IDR0.HTTU = 2: hardware access flag and dirty state (DBM leaves), for dirty tracking.
    pub httu: bool,
    /// IDR0.PRI (IDR1.PRIQS = 19): the PRI queue, which ie_unit_enable() sets up, and devices'
    /// page requests (ie_sim_model_page_request()).
    pub pri: bool,
    /// IDR0.STALL_MODEL = 0b00 (stall and terminate; else 0b01, terminate only): the stream of
    /// a device bound declared able to stall (`IeDeviceHints::stall`) holds a faulting
    /// transaction until it is answered (ie_sim_model_stall()).
    pub stall: bool,
    /// IDR0.ATS: PCIe ATS (STE.EATS and a guest's CMD_ATC_INV accepted).
    pub ats: bool,
}

/// What became of a transaction the SMMUv3 model stalled (ie_sim_model_stall()).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeSimStallEnd {
    /// Still held: nobody answered it yet.
    Held = 0,
    /// Resumed (`CMD_RESUME` Retry) and translated: it reached `*pa`.
    Completed = 1,
    /// Resumed and faulted without stalling.
    Faulted = 2,
    /// Resumed and stalled again (a new STAG).
    StalledAgain = 3,
    /// Terminated with an abort (`CMD_RESUME` Abort).
    Aborted = 4,
    /// Terminated with RAZ/WI.
    RazWi = 5,
    /// Terminated with its stream (`CMD_STALL_TERM`).
    Terminated = 6,
}

fn new_model(
    arena: *mut IeSimArena,
    out: *mut *mut IeSimModel,
    make: impl FnOnce(&'static Arena) -> ModelObj,
) -> Result<(), IeStatus> {
    let a = arena_obj(arena)?;
    // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
    let out = unsafe { super::output(out) }?;
    // SAFETY: the model holds a count on the arena, which therefore outlives it: `'static`
    // stands for that.
    let arena_static: &'static Arena = unsafe { &*(&a.arena as *const Arena) };
    let obj = Box::into_raw(Box::new(ModelBox {
        model: make(arena_static),
        arena: NonNull::from(a),
    }));
    a.models.fetch_add(1, core::sync::atomic::Ordering::AcqRel);
    handles().live.insert(obj as usize, Kind::Model);
    *out = obj.cast();
    Ok(())
}

/// Creates a VT-d model over the arena's memory.
///
/// # Safety
/// `arena` is a live arena handle; `config` is readable; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_vtd_model_create(
    arena: *mut IeSimArena,
    config: *const IeSimVtdConfig,
    out: *mut *mut IeSimModel,
) -> i32 {
    code((|| {
        // SAFETY: the C contract: NULL, misaligned (both refused) or readable.
        let c = *unsafe { super::input(config) }?;
        let base = if c.scalable {
            VtdModelConfig::scalable()
        } else {
            VtdModelConfig::qemu_default()
        };
        let cfg = base
            .with_sc(c.snoop_control)
            .with_caching_mode(c.caching_mode)
            .with_prs(c.page_requests)
            .with_nfr(c.fault_records.saturating_sub(1));
        new_model(arena, out, |a| ModelObj::Vtd(VtdModel::new(a, cfg)))
    })())
}

/// Creates an AMD-Vi model over the arena's memory: QEMU's `amd-iommu` EFR (`IASup`, 6-level
/// host tables), or without `IASup` when `invalidate_all` is false.
///
/// # Safety
/// `arena` is a live arena handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_amdvi_model_create(
    arena: *mut IeSimArena,
    invalidate_all: bool,
    out: *mut *mut IeSimModel,
) -> i32 {
    let mut cfg = AmdViModelConfig::qemu_default();
    if !invalidate_all {
        cfg = cfg.without_invalidate_all();
    }
    code(new_model(arena, out, |a| {
        ModelObj::AmdVi(AmdViModel::new(a, cfg))
    }))
}

/// Creates an SMMUv3 model over the arena's memory.
///
/// # Safety
/// `arena` is a live arena handle; `config` is readable; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_smmu_model_create(
    arena: *mut IeSimArena,
    config: *const IeSimSmmuConfig,
    out: *mut *mut IeSimModel,
) -> i32 {
    code((|| {
        // SAFETY: the C contract: NULL, misaligned (both refused) or readable.
        let c = *unsafe { super::input(config) }?;
        let mut cfg = SmmuModelConfig::qemu_like()
            .with_fwb(c.fwb)
            .with_cohacc(c.cohacc)
            .with_ril(c.ril)
            .with_httu(c.httu, c.httu)
            .with_pri(c.pri, 19)
            .with_ats(c.ats);
        if c.stall {
            cfg = cfg.with_stall_model(0);
        }
        if c.canwbs {
            cfg = cfg.with_canwbs(0, u32::MAX);
        }
        new_model(arena, out, |a| ModelObj::Smmu(SmmuModel::new(a, cfg)))
    })())
}

/// Destroys a model whose unit is destroyed (`IE_STATUS_BUSY` while a unit created on its
/// window lives).
///
/// # Safety
/// `model` is NULL or a model handle, not used again after success (nor its register window).
#[no_mangle]
pub unsafe extern "C" fn ie_sim_model_destroy(model: *mut IeSimModel) -> i32 {
    code((|| {
        let mut h = handles();
        if h.live.get(&(model as usize)) != Some(&Kind::Model) {
            return Err(IeStatus::InvalidArgument);
        }
        if h.units.values().any(|&m| m == model as usize) {
            return Err(IeStatus::Busy);
        }
        h.live.remove(&(model as usize));
        drop(h);
        // SAFETY: a live model (the table, just left).
        let m = unsafe { &*model.cast::<ModelBox>() };
        // SAFETY: the model held a count on the arena, so it is live.
        unsafe { m.arena.as_ref() }
            .models
            .fetch_sub(1, core::sync::atomic::Ordering::AcqRel);
        // SAFETY: created by `Box::into_raw`; unused from now on.
        drop(unsafe { Box::from_raw(model.cast::<ModelBox>()) });
        Ok(())
    })())
}

fn window(ctx: *mut c_void) -> &'static dyn RegisterWindow {
    // SAFETY: `ctx` is the live model `ie_sim_model_regs` put there.
    match &unsafe { &*ctx.cast::<ModelBox>() }.model {
        ModelObj::Vtd(m) => m,
        ModelObj::Smmu(m) => m,
        ModelObj::AmdVi(m) => m,
    }
}

unsafe extern "C" fn model_read32(ctx: *mut c_void, off: usize) -> u32 {
    window(ctx).read32(off)
}
unsafe extern "C" fn model_write32(ctx: *mut c_void, off: usize, v: u32) {
    window(ctx).write32(off, v)
}
unsafe extern "C" fn model_read64(ctx: *mut c_void, off: usize) -> u64 {
    window(ctx).read64(off)
}
unsafe extern "C" fn model_write64(ctx: *mut c_void, off: usize, v: u64) {
    window(ctx).write64(off, v)
}

/// Fills `*regs` with the model's register window (accessor functions).
///
/// # Safety
/// `model` is a live model handle; `regs` is writable. The window is valid while the model
/// lives.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_model_regs(model: *mut IeSimModel, regs: *mut IeRegs) -> i32 {
    code((|| {
        model_obj(model)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let regs = unsafe { super::output(regs) }?;
        *regs = IeRegs {
            base: core::ptr::null_mut(),
            len: 0,
            ctx: model.cast(),
            read32: Some(model_read32),
            write32: Some(model_write32),
            read64: Some(model_read64),
            write64: Some(model_write64),
        };
        Ok(())
    })())
}

/// What a DMA translated to through a model.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeSimDma {
    /// The physical address.
    pub pa: u64,
    /// The access snoops CPU caches although the device sent it No-Snoop (VT-d SNP / PGSNP;
    /// SMMUv3: only on a `CANWBS` platform, whatever FWB does).
    pub snoop: bool,
}

/// Device `device_id` (RID / StreamID) asks the model for the page at `addr` (a PCIe page
/// request without PASID, for a write when `write`, in group `group`, the group's last when
/// `last`). `IE_STATUS_OK`: queued; `IE_STATUS_FAULTS_LOST`: the page request queue (VT-d) or
/// PRI queue (SMMUv3) overflowed, or the SMMU answered Response Failure itself (its PRI queue
/// off or broken); `IE_STATUS_UNSUPPORTED`: no page requests (VT-d `page_requests` off or no
/// queue programmed, SMMUv3 `pri` off, an AMD-Vi model).
///
/// # Safety
/// `model` is a live model handle.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_model_page_request(
    model: *mut IeSimModel,
    device_id: u32,
    addr: u64,
    write: bool,
    group: u32,
    last: bool,
) -> i32 {
    use crate::sim::vtd::prq::{PageRequest, PageRequestOutcome};
    code((|| {
        let m = model_obj(model)?;
        let access = if write { Access::WRITE } else { Access::READ };
        let group = u16::try_from(group)
            .ok()
            .filter(|g| *g < 512)
            .ok_or(IeStatus::InvalidArgument)?;
        let v = match &m.model {
            ModelObj::Vtd(v) => v,
            ModelObj::Smmu(s) => {
                use crate::sim::smmuv3::priq::{PriOutcome, PriRequest};
                let req = PriRequest {
                    sid: device_id,
                    ssid: None,
                    addr,
                    access,
                    group,
                    last,
                };
                return match s.page_request(req) {
                    PriOutcome::Queued => Ok(()),
                    PriOutcome::Overflow | PriOutcome::Failed => Err(IeStatus::FaultsLost),
                    PriOutcome::Refused => Err(IeStatus::Unsupported),
                };
            }
            _ => return Err(IeStatus::Unsupported),
        };
        let req = PageRequest {
            sid: u16::try_from(device_id).map_err(|_| IeStatus::InvalidArgument)?,
            pasid: None,
            addr,
            access,
            group,
            last,
        };
        match v.page_request(req) {
            PageRequestOutcome::Queued => Ok(()),
            PageRequestOutcome::Overflow => Err(IeStatus::FaultsLost),
            PageRequestOutcome::Refused => Err(IeStatus::Unsupported),
        }
    })())
}

/// What became of the transaction of StreamID `stream_id` the SMMUv3 model stalled with STAG
/// `stag` (an `IePageFault`'s `group`): `*end` gets an `IeSimStallEnd` (its last outcome,
/// or held) and `*pa` (if not NULL) the address it reached when completed, else 0.
/// `IE_STATUS_NOT_FOUND`: the model never stalled it; `IE_STATUS_UNSUPPORTED`: not an SMMUv3
/// model.
///
/// # Safety
/// `model` is a live model handle; `end` is writable; `pa` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_model_stall(
    model: *mut IeSimModel,
    stream_id: u32,
    stag: u32,
    end: *mut IeSimStallEnd,
    pa: *mut u64,
) -> i32 {
    use crate::sim::smmuv3::stall::StallEnd;
    code((|| {
        let m = model_obj(model)?;
        // SAFETY: the C contract: `end` is NULL, misaligned (both refused) or writable; `pa`
        // NULL, misaligned (refused) or writable.
        let (end, pa) = unsafe { (super::output(end)?, super::optional_output(pa)?) };
        let ModelObj::Smmu(s) = &m.model else {
            return Err(IeStatus::Unsupported);
        };
        let mine = |sid: u32, t: u16| sid == stream_id && u32::from(t) == stag;
        let (e, at) = if s.stalled().iter().any(|t| mine(t.sid, t.stag)) {
            (IeSimStallEnd::Held, 0)
        } else {
            let outcomes = s.stall_outcomes();
            let last = outcomes
                .iter()
                .rev()
                .find(|o| mine(o.stalled.sid, o.stalled.stag))
                .ok_or(IeStatus::NotFound)?;
            match last.end {
                StallEnd::Completed(a) => (IeSimStallEnd::Completed, a),
                StallEnd::Faulted(_) => (IeSimStallEnd::Faulted, 0),
                StallEnd::StalledAgain(_) => (IeSimStallEnd::StalledAgain, 0),
                StallEnd::Aborted => (IeSimStallEnd::Aborted, 0),
                StallEnd::RazWi => (IeSimStallEnd::RazWi, 0),
                StallEnd::Terminated => (IeSimStallEnd::Terminated, 0),
            }
        };
        *end = e;
        if let Some(p) = pa {
            *p = at;
        }
        Ok(())
    })())
}

/// Translates a DMA of device `device_id` (RID / StreamID) at `iova` through the model, as the
/// hardware would (its caches included); `IE_STATUS_NOT_FOUND` when the hardware would fault.
///
/// # Safety
/// `model` is a live model handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_sim_model_translate(
    model: *mut IeSimModel,
    device_id: u32,
    iova: u64,
    write: bool,
    out: *mut IeSimDma,
) -> i32 {
    code((|| {
        let m = model_obj(model)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        let access = if write { Access::WRITE } else { Access::READ };
        let dma = match &m.model {
            ModelObj::Vtd(v) => {
                let sid = u16::try_from(device_id).map_err(|_| IeStatus::InvalidArgument)?;
                v.translate(sid, None, iova, access)
                    .map(|t| IeSimDma {
                        pa: t.pa,
                        snoop: t.snoop,
                    })
                    .map_err(|_| IeStatus::NotFound)?
            }
            ModelObj::Smmu(s) => s
                .translate(device_id, None, iova, access)
                .map(|t| IeSimDma {
                    pa: t.pa,
                    snoop: t.coherent,
                })
                .map_err(|_| IeStatus::NotFound)?,
            ModelObj::AmdVi(a) => {
                let id = u16::try_from(device_id).map_err(|_| IeStatus::InvalidArgument)?;
                a.dma(id, iova, write)
                    .map(|t| IeSimDma {
                        pa: t.pa,
                        snoop: t.force_coherent,
                    })
                    .map_err(|_| IeStatus::NotFound)?
            }
        };
        *out = dma;
        Ok(())
    })())
}
