//! Units over C: creation of VT-d and SMMUv3 units on the embedder's register window.

use core::ptr::NonNull;

use crate::iommu::{self, Iommu};
use crate::smmuv3::{DisabledTraffic, SmmuConfig, SmmuUnit, StreamTableLayout};
use crate::vtd::unit::{Mode, VtdConfig, VtdUnit};

use super::env::{CEnv, CRegs, IeEnv, IeRegs};
use super::object::{handle, Obj};
use super::status::{code, IeStatus};

/// One IOMMU unit (a VT-d remapping unit or an SMMUv3).
pub struct IeUnit {
    _opaque: [u8; 0],
}

/// The unit behind an [`IeUnit`] handle.
///
/// Each lives alone in a page sized for it, so the difference between variants costs at most
/// one page order, and there is no heap to box the larger one in.
#[allow(clippy::large_enum_variant)]
pub(super) enum UnitObj {
    Vtd(VtdUnit<CRegs, CEnv>),
    Smmu(SmmuUnit<CRegs, CEnv>),
}

impl UnitObj {
    /// The unit as the IOASID layer drives it.
    pub(super) fn iommu(&self) -> &dyn Iommu {
        match self {
            UnitObj::Vtd(u) => u,
            UnitObj::Smmu(u) => u,
        }
    }
}

fn status<E: Into<iommu::Error>>(e: E) -> IeStatus {
    IeStatus::from(e.into())
}

/// How to run a VT-d unit ([`ie_vtd_config_default`] fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeVtdConfig {
    /// Scalable mode (PASID tables, first-stage domains); needs `ECAP.SMTS` and `ECAP.QI`.
    pub scalable: bool,
    /// Register polls before a wait on the hardware fails with `IE_STATUS_TIMEOUT`.
    pub poll_budget: u32,
    /// The invalidation queue is `2^queue_pages_log2` 4 KiB pages (0..=7).
    pub queue_pages_log2: u8,
    /// PASID width offered in scalable mode (capped by `ECAP.PSS`).
    pub pasid_bits: u32,
    /// Host address width from the ACPI DMAR table; 0 to use `CAP.MGAW`.
    pub host_address_width: u32,
}

impl From<IeVtdConfig> for VtdConfig {
    fn from(c: IeVtdConfig) -> Self {
        VtdConfig {
            mode: if c.scalable {
                Mode::Scalable
            } else {
                Mode::Legacy
            },
            poll_budget: c.poll_budget,
            queue_pages_log2: c.queue_pages_log2,
            pasid_bits: c.pasid_bits,
            host_address_width: (c.host_address_width != 0).then_some(c.host_address_width),
        }
    }
}

/// Fills `*out` with the default VT-d configuration (legacy mode).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_vtd_config_default(out: *mut IeVtdConfig) -> i32 {
    let d = VtdConfig::legacy();
    // SAFETY: the C contract.
    match unsafe { out.as_mut() } {
        Some(out) => {
            *out = IeVtdConfig {
                scalable: false,
                poll_budget: d.poll_budget,
                queue_pages_log2: d.queue_pages_log2,
                pasid_bits: d.pasid_bits,
                host_address_width: 0,
            };
            IeStatus::Ok as i32
        }
        None => IeStatus::InvalidArgument as i32,
    }
}

/// The stream table layout of an SMMUv3 unit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeStreamTable {
    /// Two-level when the unit supports it and more than 256 StreamIDs are covered.
    Auto = 0,
    /// One array of STEs.
    Linear = 1,
    /// Two-level with 256-STE leaves allocated on demand.
    TwoLevel = 2,
}

/// How to run an SMMUv3 ([`ie_smmu_config_default`] fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeSmmuConfig {
    /// Stream table layout.
    pub stream_table: IeStreamTable,
    /// StreamIDs covered: `2^sid_bits`; 0 for the default (`min(IDR1.SIDSIZE, 16)`).
    pub sid_bits: u32,
    /// Register polls before a wait on the unit fails with `IE_STATUS_TIMEOUT`.
    pub poll_budget: u32,
    /// While translation is off (and after `ie_unit_disable`), let DMA through untranslated
    /// instead of aborting it.
    pub bypass_when_disabled: bool,
}

fn smmu_config(c: &IeSmmuConfig) -> SmmuConfig {
    SmmuConfig {
        stream_table: match c.stream_table {
            IeStreamTable::Auto => StreamTableLayout::Auto,
            IeStreamTable::Linear => StreamTableLayout::Linear,
            IeStreamTable::TwoLevel => StreamTableLayout::TwoLevel { split: 8 },
        },
        sid_bits: (c.sid_bits != 0).then_some(c.sid_bits),
        poll_budget: c.poll_budget,
        when_disabled: if c.bypass_when_disabled {
            DisabledTraffic::Bypass
        } else {
            DisabledTraffic::Abort
        },
        ..SmmuConfig::default()
    }
}

/// Fills `*out` with the default SMMUv3 configuration.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_smmu_config_default(out: *mut IeSmmuConfig) -> i32 {
    let d = SmmuConfig::default();
    // SAFETY: the C contract.
    match unsafe { out.as_mut() } {
        Some(out) => {
            *out = IeSmmuConfig {
                stream_table: IeStreamTable::Auto,
                sid_bits: 0,
                poll_budget: d.poll_budget,
                bypass_when_disabled: false,
            };
            IeStatus::Ok as i32
        }
        None => IeStatus::InvalidArgument as i32,
    }
}

/// Validates the common arguments of unit creation.
///
/// # Safety
/// As for [`ie_vtd_create`].
unsafe fn unit_args<C: Copy>(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const C,
    out: *mut *mut IeUnit,
) -> Result<(CEnv, CRegs, C), IeStatus> {
    // SAFETY: the caller's contract.
    let env = unsafe { CEnv::from_raw(env) }?;
    // SAFETY: the caller's contract.
    let regs = unsafe { CRegs::from_raw(regs) }?;
    // SAFETY: the caller's contract.
    let config = *unsafe { config.as_ref() }.ok_or(IeStatus::InvalidArgument)?;
    if out.is_null() {
        return Err(IeStatus::InvalidArgument);
    }
    Ok((env, regs, config))
}

fn publish(env: CEnv, unit: UnitObj, out: *mut *mut IeUnit) -> Result<(), IeStatus> {
    let obj = Obj::create(env, unit)?;
    // SAFETY: checked non-null and writable by the caller's contract.
    unsafe { *out = obj.as_ptr().cast() };
    Ok(())
}

/// Creates a VT-d unit on `regs` (not yet enabled: see [`ie_unit_enable`]). Reads CAP/ECAP
/// and refuses a configuration the unit cannot run (`IE_STATUS_UNSUPPORTED`).
///
/// # Safety
/// `env` is a valid `IeEnv`; `regs` a valid `IeRegs` whose window stays mapped while the unit
/// lives; `config` readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ie_vtd_create(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const IeVtdConfig,
    out: *mut *mut IeUnit,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let (env, regs, config) = unsafe { unit_args(env, regs, config, out) }?;
        let unit = VtdUnit::new(regs, env, config.into()).map_err(status)?;
        publish(env, UnitObj::Vtd(unit), out)
    })())
}

/// Creates an SMMUv3 unit on `regs` (a 128 KiB window; not yet enabled: see
/// [`ie_unit_enable`]).
///
/// # Safety
/// As for [`ie_vtd_create`].
#[no_mangle]
pub unsafe extern "C" fn ie_smmu_create(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const IeSmmuConfig,
    out: *mut *mut IeUnit,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let (env, regs, config) = unsafe { unit_args(env, regs, config, out) }?;
        let unit = SmmuUnit::new(regs, env, smmu_config(&config)).map_err(status)?;
        publish(env, UnitObj::Smmu(unit), out)
    })())
}

fn unit_obj<'h>(u: *mut IeUnit) -> Result<&'h Obj<UnitObj>, IeStatus> {
    // SAFETY: the C contract: NULL or a live unit handle.
    unsafe { handle(u.cast::<Obj<UnitObj>>()) }
}

/// Turns translation on: tables, queues, global invalidation, then the enable bit, in the
/// order the specification requires.
///
/// # Safety
/// `unit` is a live unit handle.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_enable(unit: *mut IeUnit) -> i32 {
    code((|| match &unit_obj(unit)?.value {
        UnitObj::Vtd(u) => u.enable().map_err(status),
        UnitObj::Smmu(u) => u.enable().map_err(status),
    })())
}

/// Turns translation off (an SMMUv3 then aborts or bypasses DMA per its configuration).
///
/// # Safety
/// `unit` is a live unit handle.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_disable(unit: *mut IeUnit) -> i32 {
    code((|| match &unit_obj(unit)?.value {
        UnitObj::Vtd(u) => u.disable().map_err(status),
        UnitObj::Smmu(u) => u.disable().map_err(status),
    })())
}

/// Reports and clears pending fault records (VT-d) or events (SMMUv3), at most `max`; writes
/// how many were seen to `*count` (if not NULL). For the embedder's fault interrupt handler.
///
/// # Safety
/// `unit` is a live unit handle; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_drain_faults(unit: *mut IeUnit, max: u32, count: *mut u32) -> i32 {
    code((|| {
        let n = match &unit_obj(unit)?.value {
            UnitObj::Vtd(u) => {
                let mut n = 0u32;
                let _ = u.drain_faults(|_, _| n = n.saturating_add(1));
                n
            }
            UnitObj::Smmu(u) => {
                let mut n = 0u32;
                let _ = u.handle_events(max as usize, |_| n = n.saturating_add(1));
                n
            }
        };
        // SAFETY: the C contract.
        if let Some(c) = unsafe { count.as_mut() } {
            *c = n;
        }
        Ok(())
    })())
}

/// Destroys a disabled unit that no registry uses and returns every page it holds
/// (`IE_STATUS_BUSY` while it is enabled or in a registry: the hardware may still walk its
/// tables).
///
/// # Safety
/// `unit` is NULL or a live unit handle, not used again after success.
// The unit comes back in the error when it cannot go (no heap to box it in).
#[allow(clippy::result_large_err)]
#[no_mangle]
pub unsafe extern "C" fn ie_unit_destroy(unit: *mut IeUnit) -> i32 {
    code((|| {
        let obj = NonNull::new(unit.cast::<Obj<UnitObj>>()).ok_or(IeStatus::InvalidArgument)?;
        // SAFETY: a live handle (the caller's contract); refused while a registry uses it.
        unsafe {
            Obj::destroy_with(obj, |value| match value {
                // A table that pointed outside the allocator (`leaked`) cannot be given back by
                // anyone: the rest is freed and the handle is gone either way.
                UnitObj::Vtd(u) => u
                    .release()
                    .map(drop)
                    .map_err(|(u, _)| (UnitObj::Vtd(u), IeStatus::Busy)),
                UnitObj::Smmu(u) if u.is_enabled() => Err((UnitObj::Smmu(u), IeStatus::Busy)),
                // Its stream table, CD tables and queues return their pages when dropped.
                UnitObj::Smmu(u) => {
                    drop(u);
                    Ok(())
                }
            })
        }
    })())
}
