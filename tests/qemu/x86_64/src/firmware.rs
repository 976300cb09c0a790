//! The platform as a kernel learns it from ACPI, with the crate's `firmware` module: the RSDP
//! from the PVH start info (QEMU's PVH loader finds it in the BIOS area; if it left the field at
//! 0, the BIOS area 0xE0000-0xFFFFF is scanned as ACPI 6.5 §5.2.5.1 says), the DMAR through the
//! RSDT/XSDT, then for each requester the DRHD that covers it, through the device scopes and
//! the bridges' secondary buses read from PCI configuration space. The VT-d register base and
//! every requester ID the scenarios use come from here, not from constants. On an `amd-iommu`
//! machine the IVRS does the same for AMD-Vi: the unit's register base, its device table size,
//! and the device ID each function's requests carry (AMD IOMMU specification 48882, §5.2).

use core::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use iommu_engine::firmware::acpi::Rsdp;
use iommu_engine::firmware::dmar::{BusRange, Coverage, Dmar, ScopeType, VtdUnitDefaults};
use iommu_engine::firmware::ivrs::{AmdViUnitDefaults, Ivrs};
use iommu_engine::vtd::SourceId;

use crate::pci::{Bdf, ConfigSpace};
use crate::scenario::Fail;
use crate::{bail, println, Cf8};

/// `hvm_start_info.magic` (Xen's `arch-x86/hvm/start_info.h`, the PVH boot ABI).
const PVH_MAGIC: u32 = 0x336e_c578;
/// Offset of `rsdp_paddr` in `hvm_start_info` (version 1 and later).
const PVH_RSDP_PADDR: usize = 32;
/// The BIOS read-only area the RSDP may be in.
const BIOS_AREA: core::ops::Range<u64> = 0xE_0000..0x10_0000;
/// Everything below 4 GiB is identity-mapped (boot.rs).
const MAPPED: u64 = 1 << 32;

/// The RSDP's physical address, found once by [`discover`].
static RSDP: AtomicU64 = AtomicU64::new(0);
/// The RID of the bus-0 `edu`, resolved once by [`discover`].
static EDU_RID: AtomicU16 = AtomicU16::new(0);

/// Physical memory as the crate's `PhysMemory`: the identity map below 4 GiB.
fn phys(address: u64, length: usize) -> Option<&'static [u8]> {
    let end = address.checked_add(u64::try_from(length).ok()?)?;
    if address == 0 || end > MAPPED {
        return None;
    }
    // SAFETY: [address, end) lies in the first 4 GiB, identity-mapped by boot.rs for the whole
    // run; ACPI tables and the BIOS area are never written after boot.
    Some(unsafe { core::slice::from_raw_parts(address as usize as *const u8, length) })
}

/// The bus walk the DMAR's device-scope paths need: a type-1 (bridge) header's secondary and
/// subordinate bus numbers (configuration offset 0x18: primary, secondary, subordinate).
pub fn bridge_buses(segment: u16, bridge: SourceId) -> Option<BusRange> {
    if segment != 0 {
        return None;
    }
    let bdf = (bridge.bus(), bridge.devfn() >> 3, bridge.devfn() & 7);
    if Cf8.read32(bdf, 0) & 0xffff == 0xffff || (Cf8.read32(bdf, 0x0c) >> 16) & 0x7f != 1 {
        return None;
    }
    let buses = Cf8.read32(bdf, 0x18);
    Some(BusRange {
        secondary: (buses >> 8) as u8,
        subordinate: (buses >> 16) as u8,
    })
}

/// Finds the RSDP: the PVH start info's `rsdp_paddr`, else a scan of the BIOS area.
fn find_rsdp(start_info: u64) -> Option<(u64, &'static str)> {
    if let Some(info) = phys(start_info, PVH_RSDP_PADDR + 8) {
        let magic = u32::from_le_bytes(info[..4].try_into().ok()?);
        let rsdp = u64::from_le_bytes(info[PVH_RSDP_PADDR..PVH_RSDP_PADDR + 8].try_into().ok()?);
        if magic == PVH_MAGIC && rsdp != 0 {
            return Some((rsdp, "PVH start info"));
        }
    }
    bios_area_rsdp().map(|address| (address, "BIOS area scan"))
}

/// The RSDP a scan of the BIOS area finds (ACPI 6.5 §5.2.5.1).
pub fn bios_area_rsdp() -> Option<u64> {
    let area = phys(BIOS_AREA.start, (BIOS_AREA.end - BIOS_AREA.start) as usize)?;
    Rsdp::scan(area, BIOS_AREA.start).map(|(address, _)| address)
}

/// The RSDP address [`discover`] used.
pub fn rsdp_address() -> u64 {
    RSDP.load(Ordering::Relaxed)
}

/// The DMAR, checked.
pub fn dmar() -> Result<Dmar<'static>, Fail> {
    let rsdp = RSDP.load(Ordering::Relaxed);
    if rsdp == 0 {
        bail!("no RSDP found");
    }
    match Dmar::find(&phys, rsdp) {
        Ok(t) => Ok(t),
        Err(e) => bail!("DMAR: {e}"),
    }
}

/// The requester ID of the PCI function at `bdf` and the defaults of the unit that covers it,
/// as the DMAR says; fails if no unit covers it.
pub fn covering_unit(bdf: Bdf) -> Result<(u16, VtdUnitDefaults), Fail> {
    let t = dmar()?;
    let Ok(rid) = SourceId::from_bdf(bdf.0, bdf.1, bdf.2) else {
        bail!("bad BDF {bdf:?}");
    };
    let unit = match t.unit_for(0, rid, &bridge_buses) {
        Ok(Some(unit)) => unit,
        Ok(None) => bail!("no DMAR unit covers {rid:?}: its DMA would not be remapped"),
        Err(e) => bail!("{e}"),
    };
    let how = match unit.coverage {
        Coverage::Scope(s) => {
            let named = s.requester_id(0, &bridge_buses);
            // An endpoint scope names the function itself: the RID is what its path resolves to.
            if s.scope_type == ScopeType::PciEndpoint && named != Ok(rid) {
                bail!("endpoint scope resolves to {named:?}, not {rid:?}");
            }
            match named {
                Ok(n) => (s.scope_type, n.get()),
                Err(e) => bail!("{e}"),
            }
        }
        Coverage::IncludePciAll => (ScopeType::Reserved(0), rid.get()),
    };
    let defaults = match t.unit_defaults(&unit.drhd) {
        Ok(d) => d,
        Err(e) => bail!("{e}"),
    };
    // boot.rs maps 2-4 GiB uncached: the registers must lie there.
    let window = defaults.register_base.get()..defaults.register_base.get() + defaults.register_len;
    if window.start < 1 << 31 || window.end > MAPPED {
        bail!("VT-d registers {window:#x?} outside the uncached 2-4 GiB window");
    }
    println!(
        "DMAR: {rid:?} (RID {:#06x}) is under the unit at {:#x} through {:?} {:#06x}",
        rid.get(),
        defaults.register_base.get(),
        how.0,
        how.1
    );
    Ok((rid.get(), defaults))
}

/// Finds the RSDP and, if the platform has a DMAR, the unit that covers `edu` at `edu_bdf`.
/// Returns that unit's register base (0 without a DMAR: no VT-d on this machine).
pub fn discover(start_info: u64, edu_bdf: Option<Bdf>) -> usize {
    let Some((rsdp, how)) = find_rsdp(start_info) else {
        println!("note: no RSDP");
        return 0;
    };
    RSDP.store(rsdp, Ordering::Relaxed);
    println!("RSDP at {rsdp:#x} ({how})");
    let t = match dmar() {
        Ok(t) => t,
        Err(e) => {
            println!("note: {e}");
            return 0;
        }
    };
    println!(
        "DMAR: HAW {}, flags {:?}, {} structure(s)",
        t.host_address_width(),
        t.flags(),
        t.structures().count()
    );
    let Some(bdf) = edu_bdf else {
        // Without edu, the first unit.
        return t
            .drhds()
            .next()
            .and_then(|d| t.unit_defaults(&d).ok())
            .map_or(0, |d| d.register_base.get() as usize);
    };
    match covering_unit(bdf) {
        Ok((rid, unit)) => {
            EDU_RID.store(rid, Ordering::Relaxed);
            unit.register_base.get() as usize
        }
        Err(e) => {
            println!("note: {e}");
            0
        }
    }
}

/// The bus-0 `edu`'s requester ID as [`discover`] resolved it.
pub fn edu_rid() -> u16 {
    EDU_RID.load(Ordering::Relaxed)
}

/// The DMAR's unit defaults for the unit at `register_base` (for `VtdConfig`).
pub fn unit_defaults(register_base: usize) -> Result<VtdUnitDefaults, Fail> {
    let t = dmar()?;
    for d in t.drhds() {
        if let Ok(defaults) = t.unit_defaults(&d) {
            if defaults.register_base.get() == register_base as u64 {
                return Ok(defaults);
            }
        }
    }
    bail!("no DRHD at {register_base:#x}")
}

/// The IVRS, checked.
pub fn ivrs() -> Result<Ivrs<'static>, Fail> {
    let rsdp = RSDP.load(Ordering::Relaxed);
    if rsdp == 0 {
        bail!("no RSDP found");
    }
    match Ivrs::find(&phys, rsdp) {
        Ok(t) => Ok(t),
        Err(e) => bail!("IVRS: {e}"),
    }
}

/// The device ID the AMD-Vi unit sees for the PCI function at `bdf` and that unit's defaults,
/// as the IVRS says (the IVHD type software uses, the entry that names the function); fails if
/// no unit translates it.
pub fn amdvi_unit(bdf: Bdf) -> Result<(u16, AmdViUnitDefaults), Fail> {
    let t = ivrs()?;
    let id = u16::from(bdf.0) << 8 | u16::from(bdf.1 & 0x1f) << 3 | u16::from(bdf.2 & 7);
    let Some((unit, run)) = t.unit_for(0, id) else {
        bail!("no IVHD names device {id:#06x}: its DMA would not be translated");
    };
    let defaults = match AmdViUnitDefaults::of(&t, &unit) {
        Ok(d) => d,
        Err(e) => bail!("{e}"),
    };
    // boot.rs maps 2-4 GiB uncached: the registers must lie there.
    let base = defaults.register_base.get();
    let window = base..base + defaults.register_len;
    if window.start < 1 << 31 || window.end > MAPPED {
        bail!("AMD-Vi registers {window:#x?} outside the uncached 2-4 GiB window");
    }
    println!(
        "IVRS: device {id:#06x} is under the unit at {base:#x} (IVHD type {:#04x} at {:#x}, entry {:#06x}..={:#06x}), requester {:#06x}",
        unit.block_type,
        unit.offset,
        run.first,
        run.last,
        run.requester(id)
    );
    Ok((run.requester(id), defaults))
}

/// The AMD-Vi unit that translates `edu` at `edu_bdf` (the first unit without edu), as the
/// IVRS says: its register base, 0 on a machine without an IVRS (no `amd-iommu`).
pub fn discover_amdvi(edu_bdf: Option<Bdf>) -> usize {
    let t = match ivrs() {
        Ok(t) => t,
        Err(e) => {
            println!("note: {e}");
            return 0;
        }
    };
    println!(
        "IVRS: IVinfo {:#x}, {} block(s), first unit of type {:#04x?}",
        t.iv_info().0,
        t.blocks().count(),
        t.units().next().map(|u| u.block_type)
    );
    let Some(bdf) = edu_bdf else {
        return t
            .units()
            .next()
            .and_then(|u| AmdViUnitDefaults::of(&t, &u).ok())
            .map_or(0, |d| d.register_base.get() as usize);
    };
    match amdvi_unit(bdf) {
        Ok((_, d)) => d.register_base.get() as usize,
        Err(e) => {
            println!("note: {e}");
            0
        }
    }
}

/// The IVRS defaults of the unit at `register_base` (for `AmdViConfig`).
pub fn amdvi_defaults(register_base: usize) -> Result<AmdViUnitDefaults, Fail> {
    let t = ivrs()?;
    for u in t.units() {
        if let Ok(d) = AmdViUnitDefaults::of(&t, &u) {
            if d.register_base.get() == register_base as u64 {
                return Ok(d);
            }
        }
    }
    bail!("no IVHD at {register_base:#x}")
}
