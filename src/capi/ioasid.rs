//! The IOASID layer over C: a registry of units, contexts, and every context operation.

use core::ptr::{addr_of_mut, NonNull};

use crate::ioasid::{
    DeviceHandle, DeviceLabel, DirectRegion, IncoherentDmaGrant, IoasidCtx, IoasidFlags, IoasidId,
    Leaked, PasidAllocator, Registry, UnitId, MAX_DEVICES, MAX_DIRECT_REGIONS,
    MAX_PASID_ATTACHMENTS, MAX_UNITS,
};
use crate::iommu::{DeviceHints, DeviceId, Iommu, Pasid, Source};
use crate::mem::{Iova, PhysAddr};
use crate::pgtable::{IovaRange, Prot};

use super::env::CEnv;
use super::firmware::IeAtsPermission;
use super::object::{checked, handle, Obj, PasidPage, Tagged};
use super::status::{code, IeMissing, IeStatus};
use super::unit::{IeUnit, UnitObj};

/// A registry: the system's units, which context owns each device, the PASID space.
pub struct IeRegistry {
    _opaque: [u8; 0],
}

/// An IOASID context: what one process or VM holds.
pub struct IeCtx {
    _opaque: [u8; 0],
}

pub(super) struct RegistryObj {
    // Declared before `_pasids`, which it borrows, so that it drops first.
    registry: Registry<'static>,
    /// Owns the page the registry's PASID allocator lives in.
    _pasids: PasidPage,
    units: [Option<NonNull<Obj<UnitObj>>>; MAX_UNITS],
}

pub(super) struct CtxObj {
    // Declared first so that grants (which borrow `ctx`) drop before it.
    grants: crate::sync::Mutex<[Option<IncoherentDmaGrant<'static>>; MAX_DEVICES]>,
    pub(super) ctx: IoasidCtx<'static, 'static, CEnv>,
    registry: NonNull<Obj<RegistryObj>>,
}

// Both fit in one page of at most 1 MiB (`IeEnv::alloc_page`'s contract).
const _: () = assert!(
    super::object::page_log2_for::<Obj<RegistryObj>>().is_some()
        && super::object::page_log2_for::<Obj<CtxObj>>().is_some()
);

impl RegistryObj {
    /// The registry.
    pub(super) fn registry(&self) -> &Registry<'static> {
        &self.registry
    }
}

impl CtxObj {
    /// The context.
    pub(super) fn ctx(&self) -> &IoasidCtx<'static, 'static, CEnv> {
        &self.ctx
    }

    /// Whether the context was created in `registry`.
    pub(super) fn belongs_to(&self, registry: &Obj<RegistryObj>) -> bool {
        core::ptr::eq(self.registry.as_ptr(), registry)
    }
}

impl Tagged for RegistryObj {
    const TAG: u64 = u64::from_le_bytes(*b"ie-regis");
}

impl Tagged for CtxObj {
    const TAG: u64 = u64::from_le_bytes(*b"ie-ctx\0\0");
}

// SAFETY: the pointers name objects whose lifetime the user counts guard; the objects
// themselves are `Sync` (units, registry, context).
unsafe impl Send for RegistryObj {}
// SAFETY: as above.
unsafe impl Sync for RegistryObj {}
// SAFETY: as above.
unsafe impl Send for CtxObj {}
// SAFETY: as above.
unsafe impl Sync for CtxObj {}

pub(super) fn registry_obj<'h>(r: *mut IeRegistry) -> Result<&'h Obj<RegistryObj>, IeStatus> {
    // SAFETY: the C contract: `r` is NULL or a live registry handle.
    unsafe { handle(r.cast::<Obj<RegistryObj>>()) }
}

pub(super) fn ctx_obj<'h>(c: *mut IeCtx) -> Result<&'h Obj<CtxObj>, IeStatus> {
    // SAFETY: the C contract: `c` is NULL or a live context handle.
    unsafe { handle(c.cast::<Obj<CtxObj>>()) }
}

/// Creates a registry over `n_units` units (at most 8), each numbered by its position, with
/// PASIDs of `pasid_bits` bits (the narrowest of the system's units and devices): contexts
/// draw PASIDs 1 to `2^pasid_bits - 1`; 0 bits is a system without PASIDs (none is handed
/// out); more than 20 bits is `IE_STATUS_INVALID_ARGUMENT`, nothing created (it was clamped
/// to 20). The units cannot be destroyed while the registry exists.
///
/// A unit appears once in one registry: the registry decides which context owns each of the
/// unit's devices, and a second registry (or the same unit under a second number) would hand
/// the same device to another context, whose attach replaces the first one's context entry or
/// STE. `IE_STATUS_INVALID_ARGUMENT` for a handle listed twice, `IE_STATUS_BUSY` for a unit in
/// another live registry (free again once that registry is destroyed) or one an
/// ie_unit_disable() is turning off at that moment.
///
/// # Safety
/// `env` is a valid `IeEnv`; `units` points to `n_units` live unit handles; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_registry_create(
    env: *const super::env::IeEnv,
    units: *const *mut IeUnit,
    n_units: usize,
    pasid_bits: u32,
    out: *mut *mut IeRegistry,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let env = unsafe { CEnv::from_raw(env) }?;
        if units.is_null() || n_units == 0 || n_units > MAX_UNITS {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the caller's contract: `units` is misaligned (refused) or has `n_units`
        // readable entries; `out` is NULL, misaligned (both refused) or writable.
        let (units, out) = unsafe { (super::input_slice(units, n_units)?, super::output(out)?) };
        // Refused, not clamped: a caller asking for more than PCIe's 20 bits has a bug.
        if pasid_bits > Pasid::BITS {
            return Err(IeStatus::InvalidArgument);
        }
        let unit_at = |i: usize| -> Result<NonNull<Obj<UnitObj>>, IeStatus> {
            let u = *units.get(i).ok_or(IeStatus::InvalidArgument)?;
            // SAFETY: each entry is NULL or a handle (the caller's contract).
            unsafe { checked(u.cast::<Obj<UnitObj>>()) }
        };
        // SAFETY (for the `'static` below): a live unit; the registry holds a user count on
        // it, so the unit outlives the registry.
        let iommu_of = |u: NonNull<Obj<UnitObj>>| -> &'static dyn Iommu {
            // SAFETY: see above.
            unsafe { &*u.as_ptr() }.value.iommu()
        };
        let first = unit_at(0)?;
        let mut objs = [None; MAX_UNITS];
        let mut list = [iommu_of(first); MAX_UNITS];
        for i in 0..n_units {
            let u = unit_at(i)?;
            if objs[..i].contains(&Some(u)) {
                return Err(IeStatus::InvalidArgument);
            }
            objs[i] = Some(u);
            list[i] = iommu_of(u);
        }
        claim_units(&objs)?;
        let made = (|| {
            let pasids = PasidPage::new(env, pasid_bits)?;
            // SAFETY: the allocator lives in its own page, which the registry object owns and
            // frees only after the registry is dropped: `'static` stands for that.
            let allocator: &'static PasidAllocator = unsafe { &*(pasids.allocator() as *const _) };
            Obj::create_with(env, |slot: *mut RegistryObj| {
                // SAFETY: `slot` is writable and aligned (`create_with`); the registry is built
                // in place (its owner table is 6 KiB), then the other fields are written once
                // each.
                unsafe {
                    Registry::init_in_place(
                        NonNull::new_unchecked(addr_of_mut!((*slot).registry)),
                        &list[..n_units],
                        allocator,
                    )?;
                    addr_of_mut!((*slot).units).write(objs);
                    addr_of_mut!((*slot)._pasids).write(pasids);
                }
                Ok(())
            })
        })();
        match made {
            Ok(obj) => {
                *out = obj.as_ptr().cast();
                Ok(())
            }
            Err(e) => {
                release_units(&objs);
                Err(e)
            }
        }
    })())
}

/// Makes the registry being created the sole user of each unit in `objs`: `Busy`, with none
/// of them claimed, if another registry has one.
fn claim_units(objs: &[Option<NonNull<Obj<UnitObj>>>]) -> Result<(), IeStatus> {
    for (i, u) in objs.iter().enumerate() {
        let Some(u) = u else { continue };
        // SAFETY: checked live by the caller.
        if !unsafe { u.as_ref() }.acquire_sole() {
            release_units(&objs[..i]);
            return Err(IeStatus::Busy);
        }
    }
    Ok(())
}

/// Gives up the registry's claim on each unit in `objs`.
fn release_units(objs: &[Option<NonNull<Obj<UnitObj>>>]) {
    for u in objs.iter().flatten() {
        // SAFETY: the registry held a user count, so the unit is live.
        unsafe { u.as_ref() }.release();
    }
}

/// Destroys a registry with no context left.
///
/// # Safety
/// `registry` is NULL or a live registry handle, not used again after success.
#[no_mangle]
pub unsafe extern "C" fn ie_registry_destroy(registry: *mut IeRegistry) -> i32 {
    code((|| {
        // SAFETY: the caller's contract: NULL or a handle.
        let obj = unsafe { checked(registry.cast::<Obj<RegistryObj>>()) }?;
        // SAFETY: a live handle (the caller's contract).
        let units = unsafe { obj.as_ref() }.value.units;
        // SAFETY: as above; `destroy` refuses while contexts use it.
        unsafe { Obj::destroy(obj) }?;
        release_units(&units);
        Ok(())
    })())
}

/// What destroyed contexts gave up because a unit would not undo it: devices left attached
/// (they stay bound, so no context can bind them), hardware domains left allocated, and table
/// pages held for invalidations never confirmed. None of it was freed: keep the memory those
/// contexts mapped, and reset the unit to recover it. Each out-pointer is NULL or writable.
///
/// # Safety
/// `registry` is a live registry handle.
#[no_mangle]
pub unsafe extern "C" fn ie_registry_leaked(
    registry: *mut IeRegistry,
    devices: *mut u64,
    domains: *mut u64,
    table_pages: *mut u64,
) -> i32 {
    code((|| {
        let r = registry_obj(registry)?;
        // SAFETY: the C contract: each is NULL, misaligned (refused) or writable; all checked
        // before any is written.
        let outs = unsafe {
            [
                super::optional_output(devices)?,
                super::optional_output(domains)?,
                super::optional_output(table_pages)?,
            ]
        };
        let l = r.value.registry.leaked();
        for (out, n) in outs.into_iter().zip([l.devices, l.domains, l.table_pages]) {
            if let Some(out) = out {
                *out = n;
            }
        }
        Ok(())
    })())
}

/// Creates a context drawing PASIDs from `registry` up to `pasid_quota` (at most 64, the PASID
/// attachments a context holds; more is refused with `IE_STATUS_INVALID_ARGUMENT`).
///
/// # Safety
/// `registry` is a live registry handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_create(
    registry: *mut IeRegistry,
    pasid_quota: u32,
    out: *mut *mut IeCtx,
) -> i32 {
    code((|| {
        let reg = registry_obj(registry)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        if pasid_quota > MAX_PASID_ATTACHMENTS as u32 {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the context holds a user count on the registry, which therefore outlives it:
        // `'static` stands for that.
        let reg_static: &'static Obj<RegistryObj> = unsafe { &*(reg as *const Obj<RegistryObj>) };
        let obj = Obj::create_with(*reg.env(), |slot: *mut CtxObj| {
            // SAFETY: `slot` is writable and aligned (`create_with`); each field is written
            // once, in place, so the context never exists on the stack as part of a `CtxObj`.
            unsafe {
                addr_of_mut!((*slot).grants)
                    .write(crate::sync::Mutex::new([const { None }; MAX_DEVICES]));
                addr_of_mut!((*slot).registry).write(NonNull::from(reg));
                IoasidCtx::init_in_place(
                    NonNull::new_unchecked(addr_of_mut!((*slot).ctx)),
                    &reg_static.value.registry,
                    reg_static.env(),
                    pasid_quota,
                );
            }
            Ok(())
        })?;
        reg.acquire();
        *out = obj.as_ptr().cast();
        Ok(())
    })())
}

/// Destroys a context: revokes its grants, detaches every device and PASID, frees every IOASID
/// and hardware domain, returns its PASIDs and unbinds its devices. What a unit refuses to
/// undo (a detach whose invalidation fails) is leaked on purpose and stays unusable: the
/// context is destroyed all the same and the call returns `IE_STATUS_LEAKED` (see
/// ie_registry_leaked() for what was given up).
///
/// # Safety
/// `ctx` is NULL or a live context handle, not used again after `IE_STATUS_OK` or
/// `IE_STATUS_LEAKED`.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_destroy(ctx: *mut IeCtx) -> i32 {
    code((|| {
        // SAFETY: the caller's contract: NULL or a handle.
        let obj = unsafe { checked(ctx.cast::<Obj<CtxObj>>()) }?;
        // SAFETY: a live handle (the caller's contract).
        let registry = unsafe { obj.as_ref() }.value.registry;
        let mut leaked = Leaked::default();
        // SAFETY: as above; `finish` consumes the value it is given, whole and unshared.
        unsafe {
            Obj::destroy_in_place(obj, |mut value| {
                let v = value.as_mut();
                // The grants borrow the context: revoked before it is torn down (one by one:
                // a whole empty table would be built on the stack, over the teardown).
                for g in v.grants.lock().iter_mut() {
                    *g = None;
                }
                leaked = v.ctx.tear_down();
                // The context is empty now: its drop gives up nothing more.
                value.as_ptr().drop_in_place();
                Ok(())
            })
        }?;
        // SAFETY: the context held a user count, so the registry is live.
        unsafe { registry.as_ref() }.release();
        if leaked != Leaked::default() {
            return Err(IeStatus::Leaked);
        }
        Ok(())
    })())
}

// The split of handles that ie_ctx_bind's and ie_ctx_alloc's docs give.
const _: () =
    assert!(crate::ioasid::HANDLE_SLOT_BITS == 5 && crate::ioasid::MAX_GENERATION == (1 << 27) - 1);

pub(super) fn device(ctx: *mut IeCtx, d: u32) -> Result<DeviceHandle, IeStatus> {
    // The slot and its generation (`DeviceHandle::raw`): a stale one is refused by every
    // lookup of the context.
    Ok(ctx_obj(ctx)?.value.ctx.device_handle(d))
}

pub(super) fn ioasid(i: u32) -> Result<IoasidId, IeStatus> {
    // The slot and its generation: a stale one is refused by every lookup of the context.
    Ok(IoasidId(i))
}

fn pasid(p: u32) -> Result<Pasid, IeStatus> {
    Pasid::new(p).ok_or(IeStatus::InvalidArgument)
}

/// Binds device `device_id` (PCI RID on VT-d, StreamID on SMMUv3) behind unit number `unit`
/// to the context; `no_snoop_capable` is the device's own declaration that it may issue
/// no-snoop transactions. Writes the device's handle to `*out`.
///
/// A device handle (as an IOASID number, ie_ctx_alloc()) is a `uint32_t`: bits 4:0 the
/// device's slot in the context, bits 31:5 the slot's generation, which changes each time
/// the slot is emptied (ie_ctx_unbind()). A handle kept after its device was unbound is
/// refused by every call with `IE_STATUS_NOT_FOUND`, also once the slot holds another
/// device: a bind takes the free slot after the one bound last (round the context's 32), so
/// an emptied slot is taken again as late as can be, and a slot emptied under its last
/// generation (2^27 - 1) is retired, never bound again (ie_ctx_retired_slots()), rather than
/// starting over. The first device of a slot has generation 0; treat handles as opaque.
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_bind(
    ctx: *mut IeCtx,
    unit: u32,
    device_id: u32,
    no_snoop_capable: bool,
    out: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let label = device_label(unit, device_id)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        *out = c.value.ctx.bind(label, no_snoop_capable)?.raw();
        Ok(())
    })())
}

/// The device `device_id` behind unit `unit`, as ie_ctx_bind() and ie_ctx_bind_with() name
/// it: a unit number beyond `u8` is one that does not exist.
fn device_label(unit: u32, device_id: u32) -> Result<DeviceLabel, IeStatus> {
    let unit = u8::try_from(unit).map_err(|_| IeStatus::NotFound)?;
    Ok(DeviceLabel {
        unit: UnitId(unit),
        id: DeviceId(device_id),
    })
}

/// What the embedder knows of a device from PCI enumeration (ie_ctx_bind_with()).
///
/// Set `size` to `sizeof(IeDeviceHints)`: the struct grows at its end, and the size says which
/// fields the caller knows. The library reads `size` bytes at most; fields beyond them (a
/// module built against an older header) are their defaults (false, 0). A size below
/// `IE_DEVICE_HINTS_SIZE_V1` is `IE_STATUS_INVALID_ARGUMENT`; one above the library's own
/// (a newer header) is accepted if every byte beyond the library's struct is zero, else
/// `IE_STATUS_TOO_BIG`; above 4096, `IE_STATUS_TOO_BIG`. Nothing is bound after either.
/// Headers before `IE_DEVICE_HINTS_SIZE_V1` had no `size` (their struct started with `ats`):
/// modules built against them must be rebuilt.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeDeviceHints {
    /// The size in bytes of the caller's struct: `sizeof(IeDeviceHints)` of its header (an
    /// `IE_DEVICE_HINTS_SIZE_*`).
    pub size: u32,
    /// ATS is enabled on the device: VT-d allows its device TLB, SMMUv3 sets `STE.EATS`, and
    /// both invalidate its ATC on every flush (needs `ECAP.DT` / `IDR0.ATS`, else the attach
    /// fails with `IE_STATUS_INCOMPATIBLE`, reason `IE_MISSING_MODE`).
    pub ats: bool,
    /// The device is an SR-IOV virtual function whose physical function is
    /// `physical_function` (a PCI RID): VT-d names it in `PFSID` of device-TLB invalidations
    /// under `ECAP.DIT`.
    pub has_physical_function: bool,
    /// The physical function's RID, when `has_physical_function`.
    pub physical_function: u32,
    /// The device declares its own PASID width in `pasid_bits` (its PCIe PASID capability);
    /// false: the unit's width is the only limit.
    pub has_pasid_bits: bool,
    /// The device's PASID width in bits when `has_pasid_bits` (0: not PASID-capable): a PASID
    /// attach beyond it fails with `IE_STATUS_INCOMPATIBLE`, reason `IE_MISSING_DEVICE_PASID`.
    pub pasid_bits: u32,
    /// PRI (Page Request Interface) is enabled on the device: VT-d sets the scalable-mode
    /// context entry's PRE for it; reported by ie_ctx_device_info().
    pub pri: bool,
    /// The platform declares the device able to stall (ACPI IORT named component "DMA stall
    /// supported", device tree `dma-can-stall`; never a PCIe device): an SMMUv3 whose
    /// `IDR0.STALL_MODEL` is 0b00 stalls its faulting transactions and reports them as I/O
    /// page faults (ie_registry_dispatch_faults()); another SMMUv3 refuses the attach
    /// (`IE_STATUS_INCOMPATIBLE`).
    pub stall: bool,
    /// The device's PRI capability has "PRG Response PASID Required" set: an SMMUv3 sets
    /// `STE.PPAR` for it (the SMMU's own answers to page requests lost in a PRI queue
    /// overflow carry their PASID).
    pub pri_pasid_required: bool,
    /// The device's ATS Invalidate Queue Depth as its PCIe ATS Capability register reports it
    /// (bits 4:0, 0 meaning 32; 0 by default): AMD-Vi programs the depth into `Maxpend` of
    /// every INVALIDATE_IOTLB_PAGES to the device; an ATS attach with a value above 31 fails
    /// with `IE_STATUS_INVALID_ARGUMENT`.
    pub ats_queue_depth: u32,
    /// What firmware says about the device's ATS (an `IeAtsPermission` value, as
    /// ie_dmar_ats_permission() answers; 0 `IE_ATS_PERMISSION_UNDECLARED` by default): with
    /// `IE_ATS_PERMISSION_FORBIDDEN`, an attach with `ats` fails with `IE_STATUS_NOT_PERMITTED`
    /// (a translated request bypasses the unit's translation). Another value is
    /// `IE_STATUS_INVALID_ARGUMENT` at bind.
    pub ats_permission: u32,
}

/// The sizes `IeDeviceHints` had, each header's `sizeof(IeDeviceHints)` (its `size`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeDeviceHintsSize {
    /// `size` through `pri_pasid_required`: the first struct with a size, the smallest
    /// accepted.
    V1 = 24,
    /// With `ats_queue_depth`.
    V2 = 28,
    /// With `ats_permission`.
    V3 = 32,
}

const _: () = assert!(
    IeDeviceHintsSize::V1 as usize == core::mem::offset_of!(IeDeviceHints, ats_queue_depth)
        && IeDeviceHintsSize::V2 as usize == core::mem::offset_of!(IeDeviceHints, ats_permission)
        && IeDeviceHintsSize::V3 as usize == core::mem::size_of::<IeDeviceHints>()
);

impl IeDeviceHints {
    /// The caller's hints at `p`, of `(*p).size` bytes (`sized.rs`): fields beyond them at
    /// their defaults.
    ///
    /// # Errors
    /// `InvalidArgument` for a NULL or misaligned `p` or a size below
    /// [`IeDeviceHintsSize::V1`]; `TooBig` (see [`IeDeviceHints`]).
    ///
    /// # Safety
    /// `p` is NULL, misaligned (refused), or readable for its `size` bytes.
    unsafe fn read(p: *const Self) -> Result<Self, IeStatus> {
        // Not made a reference: an older caller's struct is shorter than `Self`.
        let p = super::checked_ptr(p)?;
        // SAFETY: not NULL and aligned (checked), readable for its size (the caller's
        // contract); the struct starts with `size` and holds integers and C `bool`s.
        unsafe { super::sized::read_sized(p.as_ptr(), IeDeviceHintsSize::V1 as u32) }
    }

    /// The hints as the IOASID layer takes them.
    ///
    /// # Errors
    /// `InvalidArgument` for an `ats_permission` that is no `IeAtsPermission`.
    fn hints(&self) -> Result<DeviceHints, IeStatus> {
        Ok(DeviceHints {
            ats_permission: IeAtsPermission::from_c(self.ats_permission)?,
            ats: self.ats,
            // A value above the 5-bit field stays one (refused by an ATS attach).
            ats_queue_depth: u8::try_from(self.ats_queue_depth).unwrap_or(u8::MAX),
            physical_function: self
                .has_physical_function
                .then_some(DeviceId(self.physical_function)),
            pasid_bits: self.has_pasid_bits.then_some(self.pasid_bits),
            pri: self.pri,
            pri_pasid_required: self.pri_pasid_required,
            stall: self.stall,
        })
    }
}

/// As ie_ctx_bind(), with `*hints` (not NULL, aligned, its `size` set: see IeDeviceHints):
/// the device's ATS and SR-IOV physical function, handed to every attach of it and reported by
/// ie_ctx_device_info(). `IE_STATUS_INVALID_ARGUMENT` for a NULL or misaligned `hints`.
///
/// # Safety
/// `ctx` is a live context handle; `hints` is misaligned (refused) or readable for its `size`
/// bytes; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_bind_with(
    ctx: *mut IeCtx,
    unit: u32,
    device_id: u32,
    no_snoop_capable: bool,
    hints: *const IeDeviceHints,
    out: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let label = device_label(unit, device_id)?;
        // SAFETY: the C contract: NULL, misaligned or readable for its size.
        let hints = unsafe { IeDeviceHints::read(hints) }?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        let h = c
            .value
            .ctx
            .bind_with(label, no_snoop_capable, hints.hints()?)?;
        *out = h.raw();
        Ok(())
    })())
}

/// A region a device must reach one-to-one (IOVA = physical address) wherever it is attached
/// (ie_ctx_bind_direct()): an ACPI DMAR RMRR, an IORT RMR memory range, or the embedder's own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeDirectRegion {
    /// First byte (4 KiB aligned): the IOVA and the physical address.
    pub start: u64,
    /// Length in bytes (a non-zero multiple of 4 KiB).
    pub length: u64,
    /// Device memory (IORT RMR access attributes Device-*): mapped as `IE_PROT_MMIO`.
    pub mmio: bool,
    /// Firmware lets the OS remap it once a driver owns the device (IORT RMR `Remapping
    /// permitted`); it is mapped one-to-one all the same.
    pub relaxable: bool,
}

/// As ie_ctx_bind_with() (`hints` may be NULL: no hints, as ie_ctx_bind()), with the device's
/// `n_regions` direct regions at `regions` (NULL when `n_regions` is 0; at most 4). Each is
/// mapped one-to-one, read/write, in every IOASID the device is attached to (not with a
/// PASID) before the unit switches the device, and `ie_ctx_map` / `ie_ctx_unmap` touching it
/// then fail with `IE_STATUS_RESERVED`; an attach whose IOASID holds a colliding mapping, IOVA
/// reservation, reserved region or unequal direct region of another device fails with
/// `IE_STATUS_INCOMPATIBLE` and `IE_MISSING_DIRECT_REGION`, changing nothing. The last
/// detach of its users unmaps it. `IE_STATUS_INVALID_ARGUMENT` for a region that is empty,
/// not 4 KiB aligned, beyond 57 bits, wrapping, or overlapping another of the device's, and
/// for a misaligned `hints` or `regions` array; `IE_STATUS_NO_SPACE` for more than 4. Nothing
/// is bound after an error.
///
/// # Safety
/// `ctx` is a live context handle; `hints` is NULL, misaligned (refused) or readable for its
/// `size` bytes; `regions` is misaligned (refused) or readable for `n_regions` elements (NULL
/// if 0); `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_bind_direct(
    ctx: *mut IeCtx,
    unit: u32,
    device_id: u32,
    no_snoop_capable: bool,
    hints: *const IeDeviceHints,
    regions: *const IeDirectRegion,
    n_regions: u32,
    out: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let label = device_label(unit, device_id)?;
        let n = n_regions as usize;
        // SAFETY: the C contract: `out` is NULL, misaligned (both refused) or writable;
        // `regions` is NULL (with `n_regions` 0), misaligned (refused) or has `n_regions`
        // readable elements.
        let (out, slice) = unsafe { (super::output(out)?, super::input_slice(regions, n)?) };
        if n > MAX_DIRECT_REGIONS {
            return Err(IeStatus::NoSpace);
        }
        // No allocator: the regions are converted into a fixed array, of which the first `n`
        // are used (the page filler is never read).
        let filler = DirectRegion::new(
            IovaRange {
                start: Iova::new(0),
                end: Iova::new(0x1000),
            },
            false,
        )?;
        let mut list = [filler; MAX_DIRECT_REGIONS];
        for (l, r) in list.iter_mut().zip(slice) {
            let end = r
                .start
                .checked_add(r.length)
                .ok_or(IeStatus::InvalidArgument)?;
            let range = IovaRange {
                start: Iova::new(r.start),
                end: Iova::new(end),
            };
            let region = DirectRegion::new(range, r.mmio)?;
            *l = if r.relaxable {
                region.relaxed()
            } else {
                region
            };
        }
        let hints = if hints.is_null() {
            None
        } else {
            // SAFETY: the C contract: misaligned or readable for its size.
            Some(unsafe { IeDeviceHints::read(hints) }?.hints()?)
        };
        let list = list.get(..n).ok_or(IeStatus::InvalidArgument)?;
        let h = c
            .value
            .ctx
            .bind_with_direct(label, no_snoop_capable, hints, list)?;
        *out = h.raw();
        Ok(())
    })())
}

/// Unbinds a device that holds no grant (`IE_STATUS_BUSY` otherwise), detaching it first from
/// its IOASID and its PASIDs' as iommufd's unbind does. A detach error is returned with the
/// device still bound; call again.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_unbind(ctx: *mut IeCtx, device: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let device = self::device(ctx, device)?;
        // The unbind's result in this frame, not copied out of a frame of its own over the
        // detach (the kernel-stack bound).
        let mut r = Ok(());
        c.value.ctx.unbind_into(device, &mut r);
        Ok(r?)
    })())
}

/// What a device's unit can do, as ie_ctx_device_info() reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeDeviceInfo {
    /// The unit number the device was bound behind.
    pub unit: u32,
    /// PCI RID (VT-d) or StreamID (SMMUv3).
    pub device_id: u32,
    /// Largest input (IOVA) width in bits.
    pub ias: u32,
    /// Output (physical) address width in bits.
    pub oas: u32,
    /// Bit `n` set: pages of `1 << n` bytes.
    pub page_sizes: u64,
    /// PASID width in bits (0: none).
    pub pasid_bits: u32,
    /// The unit can force DMA to snoop CPU caches.
    pub enforce_snoop: bool,
    /// Hardware dirty tracking.
    pub dirty_tracking: bool,
    /// Nested translation.
    pub nesting: bool,
    /// The table walker snoops CPU caches.
    pub coherent_walk: bool,
    /// The device's DMA is coherent with CPU caches (SMMUv3: stage-1 leaves are Write-Back;
    /// IORT CCA, device-tree dma-coherent, the embedder, else IDR0.COHACC).
    pub coherent_dma: bool,
    /// Supervisor requests can be honoured (`IE_IOASID_FLAG_SUPERVISOR`).
    pub supervisor: bool,
    /// The device declared itself no-snoop capable.
    pub no_snoop_capable: bool,
    /// Bound with ATS enabled (ie_ctx_bind_with()).
    pub ats: bool,
    /// Bound as an SR-IOV virtual function of `physical_function`.
    pub has_physical_function: bool,
    /// The physical function's RID, when `has_physical_function`.
    pub physical_function: u32,
    /// Bound with PRI enabled (ie_ctx_bind_with()).
    pub pri: bool,
    /// Where each claim above comes from.
    pub sources: IeSources,
}

/// What kind of source a claim of `IeDeviceInfo` comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeSourceKind {
    /// A register of the unit (`name`: `"IDR5.OAS"`, `"ECAP.SC"`).
    Register = 1,
    /// A firmware declaration handed over by the embedder (ACPI IORT or DMAR, device tree).
    Firmware = 2,
    /// The embedder's configuration of the unit.
    Embedder = 3,
}

/// Longest source name kept in an `IeSource`, NUL included (longer names are cut). A literal in
/// the struct below, since the header carries no constants.
const IE_SOURCE_NAME_LEN: usize = 64;

/// Where one claim comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeSource {
    /// An `IeSourceKind` value.
    pub kind: u32,
    /// The register field, declaration or setting, NUL-terminated (cut at 63 bytes).
    pub name: [core::ffi::c_char; 64],
}

impl Default for IeSource {
    fn default() -> Self {
        Self {
            kind: 0,
            name: [0; IE_SOURCE_NAME_LEN],
        }
    }
}

impl IeSource {
    /// Writes `s` in place (a source built on the stack and copied costs 68 bytes of the
    /// caller's frame per claim: `ie_ctx_device_info` writes 12).
    #[inline(never)]
    fn set(&mut self, s: Source) {
        let kind = match s {
            Source::Register(_) => IeSourceKind::Register,
            Source::Firmware(_) => IeSourceKind::Firmware,
            Source::Embedder(_) => IeSourceKind::Embedder,
        };
        self.kind = kind as u32;
        self.name = [0; IE_SOURCE_NAME_LEN];
        for (d, b) in self
            .name
            .iter_mut()
            .take(IE_SOURCE_NAME_LEN - 1)
            .zip(s.name().bytes())
        {
            *d = b as core::ffi::c_char;
        }
    }
}

impl From<Source> for IeSource {
    fn from(s: Source) -> Self {
        let kind = match s {
            Source::Register(_) => IeSourceKind::Register,
            Source::Firmware(_) => IeSourceKind::Firmware,
            Source::Embedder(_) => IeSourceKind::Embedder,
        };
        let mut out = Self {
            kind: kind as u32,
            ..Self::default()
        };
        for (d, b) in out
            .name
            .iter_mut()
            .take(IE_SOURCE_NAME_LEN - 1)
            .zip(s.name().bytes())
        {
            *d = b as core::ffi::c_char;
        }
        out
    }
}

/// Where each claim of an `IeDeviceInfo` comes from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeSources {
    /// Of `ias`.
    pub ias: IeSource,
    /// Of `oas`.
    pub oas: IeSource,
    /// Of `page_sizes`.
    pub page_sizes: IeSource,
    /// Of `pasid_bits`.
    pub pasid_bits: IeSource,
    /// Of `enforce_snoop`.
    pub enforce_snoop: IeSource,
    /// Of `dirty_tracking`.
    pub dirty_tracking: IeSource,
    /// Of `nesting`.
    pub nesting: IeSource,
    /// Of `coherent_walk`.
    pub coherent_walk: IeSource,
    /// Of `coherent_dma`.
    pub coherent_dma: IeSource,
    /// Of `supervisor`.
    pub supervisor: IeSource,
    /// Of `ats`, `has_physical_function` and `physical_function` (the embedder's, at bind).
    pub hints: IeSource,
    /// Of `no_snoop_capable` (the embedder's declaration, at bind).
    pub no_snoop_capable: IeSource,
}

/// Reports what a bound device's unit can do for it (the platform's declarations about the
/// device included), and where each claim comes from.
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_device_info(
    ctx: *mut IeCtx,
    device: u32,
    out: *mut IeDeviceInfo,
) -> i32 {
    code((|| {
        let cx = ctx_obj(ctx)?;
        // SAFETY: the C contract: `out` is NULL, misaligned (both refused) or valid for a
        // write of an `IeDeviceInfo`.
        let o = unsafe { super::output(out) }?;
        let info = cx.value.ctx.device_info(self::device(ctx, device)?)?;
        let c = info.capabilities;
        // Field by field, in place: a whole `IeDeviceInfo` (and its 12 sources) built on the
        // stack and copied would cost a kernel caller over 2.5 KiB of stack.
        o.unit = u32::from(info.label.unit.0);
        o.device_id = info.label.id.0;
        o.ias = c.ias;
        o.oas = c.oas;
        o.page_sizes = c.page_sizes;
        o.pasid_bits = c.pasid_bits;
        o.enforce_snoop = c.enforce_snoop;
        o.dirty_tracking = c.dirty_tracking;
        o.nesting = c.nesting;
        o.coherent_walk = c.coherent_walk;
        o.coherent_dma = c.coherent_dma;
        o.supervisor = c.supervisor;
        o.no_snoop_capable = info.no_snoop_capable;
        o.ats = info.hints.ats;
        o.has_physical_function = info.hints.physical_function.is_some();
        o.physical_function = info.hints.physical_function.map_or(0, |d| d.0);
        o.pri = info.hints.pri;
        let (s, os) = (c.sources, &mut o.sources);
        os.ias.set(s.ias);
        os.oas.set(s.oas);
        os.page_sizes.set(s.page_sizes);
        os.pasid_bits.set(s.pasid_bits);
        os.enforce_snoop.set(s.enforce_snoop);
        os.dirty_tracking.set(s.dirty_tracking);
        os.nesting.set(s.nesting);
        os.coherent_walk.set(s.coherent_walk);
        os.coherent_dma.set(s.coherent_dma);
        os.supervisor.set(s.supervisor);
        os.hints.set(info.hints_source);
        os.no_snoop_capable.set(info.no_snoop_source);
        Ok(())
    })())
}

/// Flags of ie_ctx_alloc(), fixed for the IOASID's life; OR them together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeIoasidFlag {
    /// Block no-snoop: every DMA through the IOASID snoops CPU caches.
    EnforceSnoop = 1 << 0,
    /// The IOASID is the parent (second stage) of nested translation.
    NestParent = 1 << 1,
    /// Hardware dirty tracking on every domain behind the IOASID, on from allocation
    /// (`ie_ctx_set_dirty_tracking`).
    DirtyTracking = 1 << 2,
    /// A PASID-granular address space: first stage, or with `IE_IOASID_FLAG_DIRTY_TRACKING`
    /// on VT-d second stage (PGTT = second-stage-only).
    Pasid = 1 << 3,
    /// Supervisor (privileged) requests are honoured: first-stage domains (VT-d with `SRE`,
    /// needing `ECAP.SRS`; SMMUv3 stage 1); only such an IOASID maps `IE_PROT_PRIV` pages.
    Supervisor = 1 << 4,
}

// The C values must be the flags' bits.
const _: () = assert!(
    IeIoasidFlag::EnforceSnoop as u32 == IoasidFlags::ENFORCE_SNOOP.bits()
        && IeIoasidFlag::NestParent as u32 == IoasidFlags::NEST_PARENT.bits()
        && IeIoasidFlag::DirtyTracking as u32 == IoasidFlags::DIRTY_TRACKING.bits()
        && IeIoasidFlag::Pasid as u32 == IoasidFlags::PASID.bits()
        && IeIoasidFlag::Supervisor as u32 == IoasidFlags::SUPERVISOR.bits()
);

/// Allocates an IOASID with `flags` (`IE_IOASID_FLAG_*`), fixed for its life; writes its number.
///
/// The number is a handle: bits 4:0 the IOASID's slot in the context, bits 31:5 the slot's
/// generation, which changes each time its IOASID is freed (ie_ctx_free()). A number kept
/// after its IOASID was freed is refused by every call with `IE_STATUS_NOT_FOUND`, also once
/// the slot holds a new IOASID, rather than reaching it: slots are taken round the table and
/// retired at their last generation, as device handles' (ie_ctx_bind()). The first IOASID
/// of a slot has generation 0; treat numbers as opaque.
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_alloc(ctx: *mut IeCtx, flags: u32, out: *mut u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let flags = IoasidFlags::from_bits(flags).ok_or(IeStatus::InvalidArgument)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        *out = c.value.ctx.alloc(flags)?.0;
        Ok(())
    })())
}

/// How many device slots (`*devices`) and IOASID slots (`*ioasids`) of the context are
/// retired: emptied under their last generation (after 2^27 - 1 unbinds or frees of the
/// slot), never handed out again, so that no handle names two objects. Each is one place
/// fewer of the context's 32 devices or IOASIDs; a context that retires many is one to
/// destroy and create again. Each out-pointer is NULL or writable.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_retired_slots(
    ctx: *mut IeCtx,
    devices: *mut u32,
    ioasids: *mut u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: each is NULL, misaligned (refused) or writable; both
        // checked before either is written.
        let outs = unsafe {
            [
                super::optional_output(devices)?,
                super::optional_output(ioasids)?,
            ]
        };
        let r = c.value.ctx.retired_slots();
        for (out, n) in outs.into_iter().zip([r.devices, r.ioasids]) {
            if let Some(out) = out {
                *out = n;
            }
        }
        Ok(())
    })())
}

/// Frees an IOASID with nothing attached. `IE_STATUS_BUSY` while a device or PASID is
/// attached, a nested child has it as its parent, or an ie_ctx_copy() from or into it runs
/// on another thread (the copy holds its IOASIDs until its undo is done).
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_free(ctx: *mut IeCtx, ioasid: u32) -> i32 {
    code((|| {
        Ok(ctx_obj(ctx)?.value.ctx.free(self::ioasid(ioasid)?)?)
    })())
}

/// An attach refused before it reached the context: `*reason` (if not NULL) is
/// `IeMissing::None`, as after every call that did not fail with `IE_STATUS_INCOMPATIBLE`.
fn refused(e: IeStatus, reason: Option<&mut u32>) -> i32 {
    if let Some(out) = reason {
        *out = IeMissing::None as u32;
    }
    e as i32
}

/// Writes why an attach failed to `reason` (if not NULL) and returns the status.
fn attach_result(r: Result<(), crate::ioasid::Error>, reason: Option<&mut u32>) -> i32 {
    let missing = match r {
        Err(crate::ioasid::Error::Incompatible { reason, .. }) => IeMissing::from(reason),
        _ => IeMissing::None,
    };
    if let Some(out) = reason {
        *out = missing as u32;
    }
    code(r.map_err(IeStatus::from))
}

/// Attaches a device to an IOASID (replacing its current attachment). On
/// `IE_STATUS_INCOMPATIBLE`, `*reason` (if not NULL) names the missing capability
/// (`IeMissing`) and nothing changed.
///
/// On `IE_STATUS_TIMEOUT`, `IE_STATUS_HARDWARE` or `IE_STATUS_COMMAND_ERROR` the unit may
/// already translate the device through the new IOASID: the device counts as attached to it,
/// *unsettled*, and both the new and the previous IOASID keep their domains and the device's
/// direct regions. Call ie_ctx_attach() again with the same arguments to settle it (the
/// previous IOASID is then released), or ie_ctx_detach() to tear both down; meanwhile an
/// attach to a third IOASID and ie_ctx_free() of either return `IE_STATUS_BUSY`. Except when
/// the attach was refused and undoing its direct regions failed (`InvalidationPending`
/// underneath): then the same statuses mean the device is *not* attached, and its direct
/// regions may still be reachable through the IOASID as after a failed ie_ctx_map(). Call
/// ie_ctx_attach() again once the unit recovers (if it returns `IE_STATUS_INCOMPATIBLE`
/// with a direct region colliding with itself, a region whose own map failed is still held
/// as a mapping: ie_ctx_unmap() it first). `IE_STATUS_OUT_OF_RANGE`: a direct region of the
/// device reaches beyond the input width of a hardware domain the IOASID has. Any other
/// error changed nothing.
///
/// # Safety
/// `ctx` is a live context handle; `reason` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_attach(
    ctx: *mut IeCtx,
    device: u32,
    ioasid: u32,
    reason: *mut u32,
) -> i32 {
    // SAFETY: the C contract: NULL, misaligned (refused, nothing attached) or writable.
    let reason = match unsafe { super::optional_output(reason) } {
        Ok(reason) => reason,
        Err(e) => return e as i32,
    };
    let r = ctx_obj(ctx).and_then(|c| Ok((c, self::device(ctx, device)?, self::ioasid(ioasid)?)));
    let (c, d, i) = match r {
        Ok(v) => v,
        Err(e) => return refused(e, reason),
    };
    // The attach's result in this frame, not copied out of a frame of its own over the maps
    // and flushes (the kernel-stack bound).
    let mut r = Ok(());
    c.value.ctx.attach_into(d, i, &mut r);
    attach_result(r, reason)
}

/// Attaches a (device, PASID) pair to an IOASID allocated with `IE_IOASID_FLAG_PASID`; `reason`,
/// and the unsettled state after `IE_STATUS_TIMEOUT` / `HARDWARE` / `COMMAND_ERROR` (settled by
/// the same call again or by ie_ctx_detach_pasid()), as for ie_ctx_attach().
///
/// # Safety
/// `ctx` is a live context handle; `reason` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_attach_pasid(
    ctx: *mut IeCtx,
    device: u32,
    pasid: u32,
    ioasid: u32,
    reason: *mut u32,
) -> i32 {
    // SAFETY: the C contract: NULL, misaligned (refused, nothing attached) or writable.
    let reason = match unsafe { super::optional_output(reason) } {
        Ok(reason) => reason,
        Err(e) => return e as i32,
    };
    let r = ctx_obj(ctx).and_then(|c| {
        Ok((
            c,
            self::device(ctx, device)?,
            self::pasid(pasid)?,
            self::ioasid(ioasid)?,
        ))
    });
    match r {
        Ok((c, d, p, i)) => attach_result(c.value.ctx.attach_pasid(d, p, i), reason),
        Err(e) => refused(e, reason),
    }
}

/// Detaches a device: its DMA is blocked and the caches invalidated.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_detach(ctx: *mut IeCtx, device: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let device = self::device(ctx, device)?;
        // The detach's result in this frame, not copied out of a frame of its own over the
        // unmaps and flushes (the kernel-stack bound).
        let mut r = Ok(());
        c.value.ctx.detach_into(device, &mut r);
        Ok(r?)
    })())
}

/// Detaches a (device, PASID) pair.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_detach_pasid(ctx: *mut IeCtx, device: u32, pasid: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        Ok(c.value
            .ctx
            .detach_pasid(self::device(ctx, device)?, self::pasid(pasid)?)?)
    })())
}

/// Permissions of ie_ctx_map(); OR them together.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeProt {
    /// Device reads (DMA from memory).
    Read = 1 << 0,
    /// Device writes (DMA to memory).
    Write = 1 << 1,
    /// Instruction fetch.
    Exec = 1 << 2,
    /// Privileged (supervisor) access only: only in an IOASID allocated with
    /// `IE_IOASID_FLAG_SUPERVISOR` (`IE_STATUS_UNSUPPORTED` elsewhere).
    Priv = 1 << 3,
    /// The target is device memory (MMIO: a peer's BAR, an MSI doorbell such as the GICv3 ITS
    /// translater page): Arm Device-nGnRE at either stage (FWB keeps it Device), VT-d first
    /// stage UC; VT-d second stage as for memory (the platform's decoding types MMIO).
    Mmio = 1 << 4,
}

// The C values must be the permission bits.
const _: () = assert!(
    IeProt::Read as u8 == Prot::READ.bits()
        && IeProt::Write as u8 == Prot::WRITE.bits()
        && IeProt::Exec as u8 == Prot::EXEC.bits()
        && IeProt::Priv as u8 == Prot::PRIV.bits()
        && IeProt::Mmio as u8 == Prot::MMIO.bits()
);

/// Maps `[iova, iova + len)` to `[pa, pa + len)` with `prot` (`IE_PROT_*`) in the IOASID and
/// every hardware domain behind it; all or nothing. `IE_STATUS_TIMEOUT` /
/// `IE_STATUS_HARDWARE` / `IE_STATUS_COMMAND_ERROR`: the call was refused, but a unit may not
/// have confirmed the invalidation of what was undone (nothing is mapped in the IOASID), or
/// may still map some of the range (its unmap failed: the IOASID keeps the range, so a map
/// over it returns `IE_STATUS_EXISTS` and no other caller gets it); both can happen at once
/// on different units, and the status does not say which. Call ie_ctx_unmap() of the range
/// until it returns `IE_STATUS_OK` before reusing `pa` (it reissues the owed invalidations
/// first); another call's `IE_STATUS_OK` is not enough. `IE_STATUS_OUT_OF_RANGE`: the range
/// reaches beyond the input width of a domain behind the IOASID (ie_ctx_iova_ranges() says
/// what may be mapped), or the physical range beyond a unit's output width; nothing changed.
/// `IE_STATUS_BUSY`: the range touches the destination range of an ie_ctx_copy() into the
/// IOASID running on another thread; nothing changed.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_map(
    ctx: *mut IeCtx,
    ioasid: u32,
    iova: u64,
    pa: u64,
    len: u64,
    prot: u32,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let prot = u8::try_from(prot)
            .ok()
            .and_then(Prot::from_bits)
            .ok_or(IeStatus::InvalidArgument)?;
        let id = self::ioasid(ioasid)?;
        Ok(c.value
            .ctx
            .map(id, Iova::new(iova), PhysAddr::new(pa), len, prot)?)
    })())
}

/// Unmaps `[iova, iova + len)` from the IOASID and every domain behind it, invalidates the
/// IOTLBs (one completion wait per unit) and writes the bytes that were mapped to `*unmapped`
/// (if not NULL). `*unmapped` is written after every return: the bytes this call unmapped, 0
/// when it unmapped nothing. `IE_STATUS_TIMEOUT` / `IE_STATUS_HARDWARE` /
/// `IE_STATUS_COMMAND_ERROR` after the range was unmapped (`*unmapped` its bytes): a unit did
/// not confirm the invalidation, and devices may
/// still reach the pages; call again (it reissues the invalidation and reports 0 bytes) until
/// `IE_STATUS_OK` before reusing them, or until ie_ctx_free() of the IOASID returns
/// `IE_STATUS_OK` (it settles everything owed before it frees any domain; a call after it
/// answers `IE_STATUS_NOT_FOUND`, also once an IOASID is allocated in the same slot: the
/// number carries the slot's generation). `iova` 0 with `len` `UINT64_MAX` unmaps everything but
/// attached devices' direct regions, whatever the address width (iommufd's `IOMMU_IOAS_UNMAP`
/// form; an error stops it with what lay below unmapped and counted: call again until
/// `IE_STATUS_OK`). A range holding no mapping returns `IE_STATUS_OK` with 0 bytes.
/// `IE_STATUS_BUSY`: the range (`UINT64_MAX` too) touches the destination range of an
/// ie_ctx_copy() into the IOASID running on another thread; nothing was unmapped: retry once
/// the copy returned. `IE_STATUS_UNSUPPORTED`: the range cuts a larger page (or a contiguous
/// run) that a unit's table format cannot split while devices use it (SMMUv3 without BBML2);
/// nothing was unmapped: unmap whole pages (ie_ctx_translate() gives a mapping's page size).
/// `IE_STATUS_NOT_PERMITTED`: the range cuts a larger page a domain is configured never to
/// split; nothing was unmapped. Neither succeeds if called again as it is.
///
/// # Safety
/// `ctx` is a live context handle; `unmapped` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_unmap(
    ctx: *mut IeCtx,
    ioasid: u32,
    iova: u64,
    len: u64,
    unmapped: *mut u64,
) -> i32 {
    // SAFETY: the C contract: NULL, misaligned (refused, nothing unmapped) or writable.
    let unmapped = match unsafe { super::optional_output(unmapped) } {
        Ok(unmapped) => unmapped,
        Err(e) => return e as i32,
    };
    let mut n = 0u64;
    let r = (|| {
        let c = ctx_obj(ctx)?;
        let id = self::ioasid(ioasid)?;
        Ok(c.value
            .ctx
            .unmap_counted(id, Iova::new(iova), len, &mut n)?)
    })();
    if let Some(out) = unmapped {
        *out = n;
    }
    code(r)
}

/// Looks up `iova` in the IOASID: writes the physical address, or returns
/// `IE_STATUS_NOT_FOUND` when it is not mapped.
///
/// # Safety
/// `ctx` is a live context handle; `pa` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_translate(
    ctx: *mut IeCtx,
    ioasid: u32,
    iova: u64,
    pa: *mut u64,
) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let pa = unsafe { super::output(pa) }?;
        let m = c
            .value
            .ctx
            .translate(self::ioasid(ioasid)?, Iova::new(iova))?;
        *pa = m.ok_or(IeStatus::NotFound)?.pa.get();
        Ok(())
    })())
}

/// Allocates a PASID within the context's quota.
///
/// # Safety
/// `ctx` is a live context handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_alloc_pasid(ctx: *mut IeCtx, out: *mut u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        // SAFETY: the C contract: NULL, misaligned (both refused) or writable.
        let out = unsafe { super::output(out) }?;
        *out = c.value.ctx.alloc_pasid()?.get();
        Ok(())
    })())
}

/// Frees a PASID of the context that is no longer attached.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_free_pasid(ctx: *mut IeCtx, pasid: u32) -> i32 {
    code((|| {
        Ok(ctx_obj(ctx)?.value.ctx.free_pasid(self::pasid(pasid)?)?)
    })())
}

/// Grants a bound, no-snoop-capable device of the context the right to issue non-snooped DMA
/// (`IE_STATUS_NOT_PERMITTED` otherwise). Granting twice is one grant.
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_allow_incoherent_dma(ctx: *mut IeCtx, device: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let d = self::device(ctx, device)?;
        let mut grants = c.value.grants.lock();
        let slot = grants
            .get_mut(usize::from(d.slot()))
            .ok_or(IeStatus::NotFound)?;
        if let Some(g) = slot {
            // The slot's device cannot be unbound while it holds the grant: a handle of
            // another generation names a device unbound since.
            return if g.device() == d {
                Ok(())
            } else {
                Err(IeStatus::NotFound)
            };
        }
        // SAFETY: the grant borrows the context, which lives in the same object and is
        // dropped after `grants` (field order): `'static` stands for that.
        let ctx: &'static IoasidCtx<'static, 'static, CEnv> =
            unsafe { &*(&c.value.ctx as *const _) };
        *slot = Some(ctx.allow_incoherent_dma(d)?);
        Ok(())
    })())
}

/// Revokes a device's grant of incoherent DMA (`IE_STATUS_NOT_FOUND` if it has none).
///
/// # Safety
/// `ctx` is a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_revoke_incoherent_dma(ctx: *mut IeCtx, device: u32) -> i32 {
    code((|| {
        let c = ctx_obj(ctx)?;
        let d = self::device(ctx, device)?;
        let mut grants = c.value.grants.lock();
        let slot = grants
            .get_mut(usize::from(d.slot()))
            .ok_or(IeStatus::NotFound)?;
        // Only the grant of this very device (its generation included), not of a device
        // bound in the slot since.
        if !slot.as_ref().is_some_and(|g| g.device() == d) {
            return Err(IeStatus::NotFound);
        }
        slot.take().map(drop).ok_or(IeStatus::NotFound)
    })())
}

/// Whether any grant of incoherent DMA is outstanding in the context (a hypervisor must then
/// honour a guest's WBINVD). False for a NULL handle.
///
/// # Safety
/// `ctx` is NULL or a live context handle.
#[no_mangle]
pub unsafe extern "C" fn ie_ctx_incoherent_dma_allowed(ctx: *mut IeCtx) -> bool {
    ctx_obj(ctx).is_ok_and(|c| c.value.ctx.incoherent_dma_allowed())
}
