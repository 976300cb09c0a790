//! ACPI DMAR over C: which remapping unit covers a PCI requester, and its register window and
//! host address width (Intel VT-d specification rev. 4.1, §8.1 DMAR, §8.3 DRHD, §8.3.1 Device
//! Scope), through the crate's parser ([`crate::firmware::dmar`]); and what the DMAR, the IORT
//! (Arm DEN 0049 E.f root complex `ATS Attribute`) and the IVRS (AMD 48882 §5.2.2) say about a
//! device's PCIe ATS.

use core::ffi::c_void;

use crate::firmware::dmar::ats::Upstream;
use crate::firmware::dmar::device_scope::{BridgeAnswer, BusRange, PciBuses};
use crate::firmware::dmar::lookup::FunctionKind;
use crate::firmware::dmar::table::Dmar;
use crate::firmware::iort::{platform, Iort};
use crate::firmware::ivrs::Ivrs;
use crate::iommu::AtsPermission;
use crate::vtd::SourceId;

use super::ioasid::IeDirectRegion;
use super::status::{code, IeStatus};

/// What platform firmware says about a device's PCIe ATS (`IeDeviceHints.ats_permission`,
/// ie_dmar_ats_permission()).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeAtsPermission {
    /// No table was consulted: the embedder decides alone.
    Undeclared = 0,
    /// Firmware allows ATS for the device.
    Allowed = 1,
    /// Firmware forbids it: an attach with `IeDeviceHints.ats` fails with
    /// `IE_STATUS_NOT_PERMITTED`.
    Forbidden = 2,
    /// A DMAR SATC with ATC_REQUIRED names the device: it needs its ATC enabled (allowed; Linux
    /// enables it in scalable mode only, the hardware does in legacy mode).
    Required = 3,
}

impl IeAtsPermission {
    /// The C value of `p`.
    pub(crate) const fn to_c(p: AtsPermission) -> u32 {
        match p {
            AtsPermission::Undeclared => Self::Undeclared as u32,
            AtsPermission::Allowed => Self::Allowed as u32,
            AtsPermission::Forbidden => Self::Forbidden as u32,
            AtsPermission::Required => Self::Required as u32,
        }
    }

    /// The crate's value for the C value `raw`.
    ///
    /// # Errors
    /// `InvalidArgument` for a value that is no `IeAtsPermission`.
    pub(crate) fn from_c(raw: u32) -> Result<AtsPermission, IeStatus> {
        [
            AtsPermission::Undeclared,
            AtsPermission::Allowed,
            AtsPermission::Forbidden,
            AtsPermission::Required,
        ]
        .into_iter()
        .find(|p| Self::to_c(*p) == raw)
        .ok_or(IeStatus::InvalidArgument)
    }
}

/// The remapping unit ie_dmar_unit_for() found.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IeDmarUnit {
    /// The register window's base (4 KiB aligned).
    pub register_base: u64,
    /// The register window's length in bytes (`2^Size` 4 KiB pages): what to map.
    pub register_len: u64,
    /// The platform's host address width in bits (the DMAR's field + 1): for
    /// `IeVtdConfig.host_address_width`.
    pub host_address_width: u32,
    /// The PCI segment of the unit's devices.
    pub segment: u16,
    /// The unit covers the requester as its segment's INCLUDE_PCI_ALL unit (no device scope
    /// names it).
    pub include_pci_all: bool,
}

/// The embedder's bridge walk: `bridge_buses(ctx, segment, bridge_rid, &secondary,
/// &subordinate)` gives the bus numbers below a PCI-to-PCI bridge and returns true, or false if
/// `bridge_rid` is not a bridge (no function there, or one of another header type: a definite
/// answer, the walk knows every function). NULL: the embedder has no bridge walk, and no
/// function is known to be a bridge or not.
pub type IeBridgeBusesFn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        segment: u16,
        bridge: u16,
        secondary: *mut u8,
        subordinate: *mut u8,
    ) -> bool,
>;

/// The embedder's `bridge_buses` and its `ctx`, as the lookups' bus walk: NULL answers
/// [`BridgeAnswer::Unknown`] for every function, false [`BridgeAnswer::NotABridge`].
struct CBusWalk {
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
}

impl PciBuses for CBusWalk {
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange> {
        let f = self.bridge_buses?;
        let (mut secondary, mut subordinate) = (0u8, 0u8);
        // SAFETY: the C contract on `bridge_buses` and `ctx` (the C entry points' `# Safety`);
        // the out-pointers are ours.
        unsafe {
            f(
                self.ctx,
                segment,
                bridge.get(),
                &mut secondary,
                &mut subordinate,
            )
        }
        .then_some(BusRange {
            secondary,
            subordinate,
        })
    }

    fn bridge(&self, segment: u16, bridge: SourceId) -> BridgeAnswer {
        if self.bridge_buses.is_none() {
            return BridgeAnswer::Unknown;
        }
        match PciBuses::bridge_buses(self, segment, bridge) {
            Some(range) => BridgeAnswer::Bridge(range),
            None => BridgeAnswer::NotABridge,
        }
    }
}

/// What a PCI function is, for ie_dmar_unit_for_function() (VT-d 4.1 §8.3.2, §8.3.3): firmware
/// lists only traditional functions in device scopes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeFunctionKind {
    /// A function device scopes may name: looked up by its own RID (as ie_dmar_unit_for()).
    Traditional = 0,
    /// An ARI Extended Function (function number above 7): under the unit of its device's
    /// function 0 (`bus:00.0`). A `rid` numbered 7 or below is a traditional function and is
    /// looked up by itself.
    AriExtended = 1,
    /// An SR-IOV Virtual Function: under the unit of its Physical Function
    /// `physical_function` (Linux: `pci_physfn()`, the RID given as
    /// `IeDeviceHints.physical_function` at bind).
    Virtual = 2,
    /// An SR-IOV Virtual Function whose Physical Function `physical_function` is itself an
    /// ARI Extended Function: under the unit of the PF's function 0 (of the PF itself if it is
    /// numbered 7 or below).
    VirtualOfAriExtended = 3,
}

impl IeFunctionKind {
    /// The crate's kind for the C value `kind` and the PF's RID `physical_function`.
    fn from_c(kind: u32, physical_function: u16) -> Result<FunctionKind, IeStatus> {
        let pf = |physical_function_ari_extended| FunctionKind::Virtual {
            physical_function: SourceId::new(physical_function),
            physical_function_ari_extended,
        };
        match kind {
            k if k == Self::Traditional as u32 => Ok(FunctionKind::Traditional),
            k if k == Self::AriExtended as u32 => Ok(FunctionKind::AriExtended),
            k if k == Self::Virtual as u32 => Ok(pf(false)),
            k if k == Self::VirtualOfAriExtended as u32 => Ok(pf(true)),
            _ => Err(IeStatus::InvalidArgument),
        }
    }
}

/// Finds in the ACPI DMAR table `table` (`len` bytes, header included, as `acpi_get_table`
/// returns it) the remapping unit that covers PCI requester `rid` on `segment`: the DRHD whose
/// device scope names it or a bridge above it, else the segment's INCLUDE_PCI_ALL DRHD.
/// `bridge_buses(ctx, segment, bridge_rid, &secondary, &subordinate)` gives the bus numbers of
/// a PCI-PCI bridge, false if none answers there (then a scope through it names nothing, and
/// nothing is below it); it resolves scope paths through bridges and tells whether a scope's
/// function (endpoint or sub-hierarchy: firmware mislabels both) is a bridge the requester is
/// below. NULL: no bus walk, nothing is known. `IE_STATUS_INVALID_ARGUMENT` for a malformed
/// table, or when `bridge_buses` is NULL, no device scope names the requester, and one that
/// might needs the walk (a path of more than one entry, or a PCI scope naming a function on
/// another bus than the requester's, which may be a bridge above it): the unit would be a
/// guess, so none is given. `IE_STATUS_NOT_FOUND` if no unit covers the
/// requester (its DMA is not remapped). `rid` is looked up as itself: for an SR-IOV Virtual
/// Function or an ARI Extended Function, which firmware does not list, use
/// ie_dmar_unit_for_function().
///
/// # Safety
/// `table` points to `len` readable bytes; `out` is writable; `bridge_buses` is NULL or safe
/// to call with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn ie_dmar_unit_for(
    table: *const u8,
    len: usize,
    segment: u16,
    rid: u16,
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    out: *mut IeDmarUnit,
) -> i32 {
    // SAFETY: the caller's contract, the same.
    code(unsafe {
        unit_for(
            table,
            len,
            segment,
            rid,
            FunctionKind::Traditional,
            bridge_buses,
            ctx,
            out,
        )
    })
}

/// As ie_dmar_unit_for(), for PCI function `rid` of kind `kind` (an `IeFunctionKind` value):
/// the unit is that of the function device scopes name for it, a Virtual Function's Physical
/// Function `physical_function` (VT-d 4.1 §8.3.3) or an ARI Extended Function's function 0
/// (§8.3.2); ie_dmar_unit_for() would give a VF or an Extended Function its segment's
/// INCLUDE_PCI_ALL unit (or none), not its PF's. `physical_function` is read only for the two
/// Virtual kinds. `IE_STATUS_INVALID_ARGUMENT` also for an unknown `kind`.
///
/// # Safety
/// As ie_dmar_unit_for().
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ie_dmar_unit_for_function(
    table: *const u8,
    len: usize,
    segment: u16,
    rid: u16,
    kind: u32,
    physical_function: u16,
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    out: *mut IeDmarUnit,
) -> i32 {
    code(
        IeFunctionKind::from_c(kind, physical_function).and_then(|kind| {
            // SAFETY: the caller's contract, the same as ie_dmar_unit_for()'s.
            unsafe { unit_for(table, len, segment, rid, kind, bridge_buses, ctx, out) }
        }),
    )
}

/// ie_dmar_unit_for() and ie_dmar_unit_for_function().
///
/// # Safety
/// As ie_dmar_unit_for().
#[allow(clippy::too_many_arguments)]
unsafe fn unit_for(
    table: *const u8,
    len: usize,
    segment: u16,
    rid: u16,
    kind: FunctionKind,
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    out: *mut IeDmarUnit,
) -> Result<(), IeStatus> {
    if table.is_null() {
        return Err(IeStatus::InvalidArgument);
    }
    // SAFETY: the C contract: `len` readable bytes at `table`; `out` is NULL, misaligned
    // (both refused) or writable.
    let (bytes, out) = unsafe { (super::input_slice(table, len)?, super::output(out)?) };
    let dmar = Dmar::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
    let buses = CBusWalk { bridge_buses, ctx };
    let unit = dmar
        .unit_for_function(segment, SourceId::new(rid), kind, &buses)
        .map_err(|_| IeStatus::InvalidArgument)?
        .ok_or(IeStatus::NotFound)?;
    let d = dmar
        .unit_defaults(&unit.drhd)
        .map_err(|_| IeStatus::InvalidArgument)?;
    *out = IeDmarUnit {
        register_base: d.register_base.get(),
        register_len: d.register_len,
        host_address_width: u32::from(d.host_address_width_field) + 1,
        segment: d.segment,
        include_pci_all: d.include_pci_all,
    };
    Ok(())
}

/// The regions (RMRRs, VT-d 4.1 §8.4) that PCI requester `rid` on `segment` must keep reaching,
/// from the ACPI DMAR table `table` (`len` bytes), for ie_ctx_bind_direct(): the first `max`
/// go to `out[0..max]` (NULL with `max` = 0 to only count), each identity-mapped normal memory;
/// `*count` gets how many there are. `bridge_buses` and `ctx` are as for ie_dmar_unit_for().
/// `IE_STATUS_INVALID_ARGUMENT` for a malformed table, an RMRR naming the requester whose range
/// is malformed, or an RMRR that may name it through a scope `bridge_buses` cannot follow
/// (nothing is written then: a region left out could break the device).
///
/// # Safety
/// `table` points to `len` readable bytes; `out` is NULL or writable for `max` elements;
/// `count` is writable; `bridge_buses` is NULL or safe to call with `ctx`.
#[no_mangle]
pub unsafe extern "C" fn ie_dmar_reserved_regions(
    table: *const u8,
    len: usize,
    segment: u16,
    rid: u16,
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    out: *mut IeDirectRegion,
    max: u32,
    count: *mut u32,
) -> i32 {
    code((|| {
        if table.is_null() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`; `out` is NULL (with `max`
        // 0), misaligned (refused) or writable for `max` elements; `count` is NULL, misaligned
        // (both refused) or writable.
        let (bytes, out, count) = unsafe {
            (
                super::input_slice(table, len)?,
                super::output_slice(out, max as usize)?,
                super::output(count)?,
            )
        };
        let dmar = Dmar::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let buses = CBusWalk { bridge_buses, ctx };
        let requester = SourceId::new(rid);
        // Checked whole first, so that nothing is written for a table with a bad region.
        for region in dmar.reserved_regions(segment, requester, &buses) {
            region.map_err(|_| IeStatus::InvalidArgument)?;
        }
        let mut n = 0u32;
        for range in dmar.reserved_regions(segment, requester, &buses).flatten() {
            if let Some(slot) = out.get_mut(n as usize) {
                *slot = IeDirectRegion {
                    start: range.start.get(),
                    length: range.end.get().saturating_sub(range.start.get()),
                    mmio: false,
                    relaxable: false,
                };
            }
            n = n.saturating_add(1);
        }
        *count = n;
        Ok(())
    })())
}

/// Where a PCI function sits below its host bridge, for ie_dmar_ats_permission() (what the
/// embedder's enumeration found walking up from the function).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeUpstream {
    /// On a root bus, no bridge above it (a Root Complex Integrated Endpoint).
    Integrated = 0,
    /// Below the PCIe root port `upstream_rid`, through PCIe switch ports only.
    RootPort = 1,
    /// A conventional PCI bridge (PCI-PCI, PCIe-to-PCI/PCI-X) at `upstream_rid` is on the way.
    ConventionalBridge = 2,
}

impl IeUpstream {
    /// The crate's value for the C `kind` and `rid`.
    fn from_c(kind: u32, rid: u16) -> Result<Upstream, IeStatus> {
        let rid = SourceId::new(rid);
        match kind {
            k if k == Self::Integrated as u32 => Ok(Upstream::Integrated),
            k if k == Self::RootPort as u32 => Ok(Upstream::RootPort(rid)),
            k if k == Self::ConventionalBridge as u32 => Ok(Upstream::ConventionalBridge(rid)),
            _ => Err(IeStatus::InvalidArgument),
        }
    }
}

/// What the ACPI DMAR table `table` (`len` bytes) says about PCI function `function` on
/// `segment` using ATS (VT-d 4.1 §8.5 ATSR, §8.8 SATC), as Linux's `dmar_ats_supported`
/// decides: `*out` gets an `IeAtsPermission` for `IeDeviceHints.ats_permission`. A SATC naming
/// the function: `IE_ATS_PERMISSION_REQUIRED` with ATC_REQUIRED, else `ALLOWED`; otherwise by
/// `upstream` (an `IeUpstream` value) and `upstream_rid`: an integrated device is allowed, a
/// conventional PCI bridge on the way forbids, and below a root port an ATSR of the segment
/// with ALL_PORTS or naming the port allows, else `IE_ATS_PERMISSION_FORBIDDEN`. `function`
/// is the function firmware may list (a Virtual Function's Physical Function). `bridge_buses`
/// and `ctx` are as for ie_dmar_unit_for(). `IE_STATUS_INVALID_ARGUMENT` for a malformed
/// table, an unknown `upstream`, or a scope that might decide but that `bridge_buses` cannot
/// follow (nothing is written then).
///
/// # Safety
/// `table` points to `len` readable bytes; `out` is writable; `bridge_buses` is NULL or safe
/// to call with `ctx`.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn ie_dmar_ats_permission(
    table: *const u8,
    len: usize,
    segment: u16,
    function: u16,
    upstream: u32,
    upstream_rid: u16,
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    out: *mut u32,
) -> i32 {
    code((|| {
        if table.is_null() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`; `out` is NULL, misaligned
        // (both refused) or writable.
        let (bytes, out) = unsafe { (super::input_slice(table, len)?, super::output(out)?) };
        let upstream = IeUpstream::from_c(upstream, upstream_rid)?;
        let dmar = Dmar::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let buses = CBusWalk { bridge_buses, ctx };
        let permission = dmar
            .ats_permission(segment, SourceId::new(function), upstream, &buses)
            .map_err(|_| IeStatus::InvalidArgument)?;
        *out = IeAtsPermission::to_c(permission);
        Ok(())
    })())
}

/// What the ACPI IORT `table` (`len` bytes, header included) says about the PCIe devices of PCI
/// segment `segment` using ATS: the segment's root complex node's `ATS Attribute` bit 0 (Arm
/// DEN 0049 E.f; Linux `iort_pci_rc_supports_ats`, which its SMMUv3 driver requires). `*out`
/// gets an `IeAtsPermission` for `IeDeviceHints.ats_permission`: `IE_ATS_PERMISSION_ALLOWED`
/// with the bit, `IE_ATS_PERMISSION_FORBIDDEN` without, `IE_ATS_PERMISSION_UNDECLARED` when
/// the table has no root complex for the segment. `IE_STATUS_INVALID_ARGUMENT` for a NULL
/// `table`, a NULL or misaligned `out`, or a malformed table (nothing is written then).
///
/// # Safety
/// `table` is NULL (refused) or points to `len` readable bytes; `out` is NULL or misaligned
/// (refused), or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_iort_ats_permission(
    table: *const u8,
    len: usize,
    segment: u32,
    out: *mut u32,
) -> i32 {
    code((|| {
        if table.is_null() || out.is_null() || !out.is_aligned() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`.
        let bytes = unsafe { core::slice::from_raw_parts(table, len) };
        let iort = Iort::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let permission = iort
            .root_complex(segment)
            .map_err(|_| IeStatus::InvalidArgument)?
            .map_or(AtsPermission::Undeclared, |rc| {
                platform::root_complex_ats(&rc)
            });
        // SAFETY: not NULL and aligned (checked); the C contract: `out` is writable.
        unsafe { out.write(IeAtsPermission::to_c(permission)) };
        Ok(())
    })())
}

/// What the ACPI IVRS `table` (`len` bytes, header included) says about PCI device `device_id`
/// (bus, device, function) of `segment` using ATS (AMD 48882 §5.2.2.2): `*out` gets an
/// `IeAtsPermission` for `IeDeviceHints.ats_permission`: `IE_ATS_PERMISSION_FORBIDDEN` when
/// an extended device entry naming the device sets "ATS disabled" (`Extended DTE Setting`
/// bit 31) or its unit is a type 10h IVHD without `IotlbSup`, `IE_ATS_PERMISSION_UNDECLARED`
/// when no unit translates the device, else `IE_ATS_PERMISSION_ALLOWED`.
/// `IE_STATUS_INVALID_ARGUMENT` for a NULL `table`, a NULL or misaligned `out`, or a malformed
/// table (nothing is written then).
///
/// # Safety
/// As ie_iort_ats_permission().
#[no_mangle]
pub unsafe extern "C" fn ie_ivrs_ats_permission(
    table: *const u8,
    len: usize,
    segment: u16,
    device_id: u16,
    out: *mut u32,
) -> i32 {
    code((|| {
        if table.is_null() || out.is_null() || !out.is_aligned() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`.
        let bytes = unsafe { core::slice::from_raw_parts(table, len) };
        let ivrs = Ivrs::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let permission = ivrs.ats_permission(segment, device_id);
        // SAFETY: not NULL and aligned (checked); the C contract: `out` is writable.
        unsafe { out.write(IeAtsPermission::to_c(permission)) };
        Ok(())
    })())
}
