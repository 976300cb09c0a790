//! ACPI DMAR over C: which remapping unit covers a PCI requester, and its register window and
//! host address width (Intel VT-d specification rev. 4.1, §8.1 DMAR, §8.3 DRHD, §8.3.1 Device
//! Scope), through the crate's parser ([`crate::firmware::dmar`]).

use core::ffi::c_void;

use crate::firmware::dmar::device_scope::BusRange;
use crate::firmware::dmar::table::Dmar;
use crate::vtd::SourceId;

use super::ioasid::IeDirectRegion;
use super::status::{code, IeStatus};

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
/// `bridge_rid` is not a bridge. NULL: the embedder has no bridge walk.
pub type IeBridgeBusesFn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        segment: u16,
        bridge: u16,
        secondary: *mut u8,
        subordinate: *mut u8,
    ) -> bool,
>;

/// Asks the embedder's `bridge_buses` (NULL: no walk) for the buses below `bridge`.
fn bridge_bus_range(
    bridge_buses: IeBridgeBusesFn,
    ctx: *mut c_void,
    segment: u16,
    bridge: SourceId,
) -> Option<BusRange> {
    let f = bridge_buses?;
    let (mut secondary, mut subordinate) = (0u8, 0u8);
    // SAFETY: the C contract on `bridge_buses` and `ctx` (both C entry points' `# Safety`); the
    // out-pointers are ours.
    unsafe { f(ctx, segment, bridge.get(), &mut secondary, &mut subordinate) }.then_some(BusRange {
        secondary,
        subordinate,
    })
}

/// Finds in the ACPI DMAR table `table` (`len` bytes, header included, as `acpi_get_table`
/// returns it) the remapping unit that covers PCI requester `rid` on `segment`: the DRHD whose
/// device scope names it or a bridge above it, else the segment's INCLUDE_PCI_ALL DRHD.
/// `bridge_buses(ctx, segment, bridge_rid, &secondary, &subordinate)` gives the bus numbers of
/// a PCI-PCI bridge, false if none answers there; it resolves scope paths through bridges
/// (NULL: no bridge is known). `IE_STATUS_INVALID_ARGUMENT` for a malformed table, or when no
/// device scope names the requester but one that might goes through a function
/// `bridge_buses` does not report as a bridge (or `bridge_buses` is NULL and a scope's path
/// has more than one entry, or names a sub-hierarchy the requester is not the bridge of): the
/// unit would be a guess, so none is given. `IE_STATUS_NOT_FOUND` if no unit covers the
/// requester (its DMA is not remapped).
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
    code((|| {
        if table.is_null() || out.is_null() {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`.
        let bytes = unsafe { core::slice::from_raw_parts(table, len) };
        let dmar = Dmar::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let buses = |seg: u16, bridge: SourceId| bridge_bus_range(bridge_buses, ctx, seg, bridge);
        let unit = dmar
            .unit_for(segment, SourceId::new(rid), &buses)
            .map_err(|_| IeStatus::InvalidArgument)?
            .ok_or(IeStatus::NotFound)?;
        let d = dmar
            .unit_defaults(&unit.drhd)
            .map_err(|_| IeStatus::InvalidArgument)?;
        let found = IeDmarUnit {
            register_base: d.register_base.get(),
            register_len: d.register_len,
            host_address_width: u32::from(d.host_address_width_field) + 1,
            segment: d.segment,
            include_pci_all: d.include_pci_all,
        };
        // SAFETY: the C contract: `out` is writable.
        unsafe { out.write(found) };
        Ok(())
    })())
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
        if table.is_null() || count.is_null() || (out.is_null() && max != 0) {
            return Err(IeStatus::InvalidArgument);
        }
        // SAFETY: the C contract: `len` readable bytes at `table`.
        let bytes = unsafe { core::slice::from_raw_parts(table, len) };
        let dmar = Dmar::parse(bytes).map_err(|_| IeStatus::InvalidArgument)?;
        let buses = |seg: u16, bridge: SourceId| bridge_bus_range(bridge_buses, ctx, seg, bridge);
        let requester = SourceId::new(rid);
        // Checked whole first, so that nothing is written for a table with a bad region.
        for region in dmar.reserved_regions(segment, requester, &buses) {
            region.map_err(|_| IeStatus::InvalidArgument)?;
        }
        let mut n = 0u32;
        for range in dmar.reserved_regions(segment, requester, &buses).flatten() {
            if n < max {
                let region = IeDirectRegion {
                    start: range.start.get(),
                    length: range.end.get().saturating_sub(range.start.get()),
                    mmio: false,
                    relaxable: false,
                };
                // SAFETY: the C contract: `out` holds `max` writable elements.
                unsafe { out.add(n as usize).write(region) };
            }
            n = n.saturating_add(1);
        }
        // SAFETY: the C contract: `count` is writable.
        unsafe { count.write(n) };
        Ok(())
    })())
}
