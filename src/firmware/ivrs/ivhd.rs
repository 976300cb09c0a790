//! I/O Virtualization Hardware Definition block, IVHD: AMD I/O Virtualization Technology
//! (IOMMU) Specification, document 48882, revision 3.10, §5.2.2.1 "IVHD Type 10h" and §5.2.2.2
//! "IVHD Types 11h and 40h": one IOMMU, where its registers are, and which devices it
//! translates (its device entries, §5.2.2.3).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 1 | Type: 10h, 11h or 40h |
//! | 1 | 1 | Flags |
//! | 2 | 2 | Length |
//! | 4 | 2 | IOMMU DeviceID: the IOMMU's own PCI function |
//! | 6 | 2 | Capability Offset: its IOMMU capability block in configuration space |
//! | 8 | 8 | IOMMU Base Address: the register window |
//! | 16 | 2 | PCI Segment Group |
//! | 18 | 2 | IOMMU Info: bits 4:0 MSI number, bits 12:8 UnitID |
//! | 20 | 4 | type 10h: IOMMU Feature Reporting; types 11h/40h: IOMMU Attributes |
//! | 24 | 8 | types 11h/40h: EFR Register Image (the unit's Extended Feature Register) |
//! | 32 | 8 | types 11h/40h: EFR2 Register Image (reserved before revision 3.10) |
//! | 24 / 40 | - | device entries |
//!
//! A platform may describe one IOMMU with several IVHDs of different types (QEMU's IVRS has a
//! 10h and an 11h block for its one unit); software uses, per IOMMU, the block of the highest
//! type it knows ([`Ivrs::units`](super::Ivrs::units)). Type 40h also allows ACPI HID entries.

use bitflags::bitflags;

use super::device_entry::{DeviceEntries, DeviceRange, DeviceRanges, DteSetting, EntryList};
use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u32, read_u64, read_u8};
use crate::mem::PhysAddr;

/// Bytes before the device entries of a type 10h IVHD.
const FIXED_10H: usize = 24;
/// Bytes before the device entries of a type 11h or 40h IVHD.
const FIXED_11H: usize = 40;
/// The smallest register window (§3.4: the MMIO registers span 16 KiB; more with the
/// performance counters and the PPR/GA logs of later revisions).
pub const REGISTER_WINDOW: u64 = 0x4000;

bitflags! {
    /// `Flags` of an IVHD (§5.2.2.1; bits 7:4 are reserved in types 11h and 40h, where EFR
    /// and the attributes report the same; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct IvhdFlags: u8 {
        /// Bit 0: `HtTunEn`.
        const HT_TUN_EN = 1 << 0;
        /// Bit 1: `PassPW`.
        const PASS_PW = 1 << 1;
        /// Bit 2: `ResPassPW`.
        const RES_PASS_PW = 1 << 2;
        /// Bit 3: `Isoc`.
        const ISOC = 1 << 3;
        /// Bit 4: `IotlbSup` (type 10h).
        const IOTLB_SUP = 1 << 4;
        /// Bit 5: `Coherent` (type 10h): the unit's table reads snoop.
        const COHERENT = 1 << 5;
        /// Bit 6: `PreFSup` (type 10h).
        const PREF_SUP = 1 << 6;
        /// Bit 7: `PPRSup` (type 10h).
        const PPR_SUP = 1 << 7;
    }
}

/// An IVHD, checked: its length covers the fixed fields of its type and its device entries are
/// well formed (lengths, ranges closed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ivhd<'a> {
    /// `Type`: 10h, 11h or 40h.
    pub block_type: u8,
    /// `Flags`.
    pub flags: IvhdFlags,
    /// `IOMMU DeviceID`: the IOMMU's own PCI function (bus << 8 | device << 3 | function).
    pub device_id: u16,
    /// `Capability Offset`.
    pub capability_offset: u16,
    /// `IOMMU Base Address` (16 KiB aligned, checked by
    /// [`register_window`](Self::register_window)).
    pub base_address: u64,
    /// `PCI Segment Group`.
    pub segment: u16,
    /// `IOMMU Info`.
    pub info: u16,
    /// Type 10h: `IOMMU Feature Reporting`; types 11h/40h: `IOMMU Attributes`.
    pub features: u32,
    /// Types 11h/40h: `EFR Register Image`.
    pub efr_image: Option<u64>,
    /// Types 11h/40h: `EFR2 Register Image`.
    pub efr2_image: Option<u64>,
    entries: EntryList<'a>,
    /// Offset of the block in the IVRS table.
    pub offset: usize,
}

impl<'a> Ivhd<'a> {
    /// Decodes the IVHD in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] and the device entries' errors.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let block_type = read_u8(bytes, 0)?;
        let fixed = if block_type == 0x10 {
            FIXED_10H
        } else {
            FIXED_11H
        };
        if bytes.len() < fixed {
            return Err(Error::TooShort {
                structure: Structure::Ivhd,
                offset,
                length: bytes.len(),
                minimum: fixed,
            });
        }
        let (efr_image, efr2_image) = if block_type == 0x10 {
            (None, None)
        } else {
            (Some(read_u64(bytes, 24)?), Some(read_u64(bytes, 32)?))
        };
        Ok(Self {
            block_type,
            flags: IvhdFlags::from_bits_retain(read_u8(bytes, 1)?),
            device_id: read_u16(bytes, 4)?,
            capability_offset: read_u16(bytes, 6)?,
            base_address: read_u64(bytes, 8)?,
            segment: read_u16(bytes, 16)?,
            info: read_u16(bytes, 18)?,
            features: read_u32(bytes, 20)?,
            efr_image,
            efr2_image,
            entries: EntryList::parse(bytes.get(fixed..).unwrap_or(&[]), offset + fixed)?,
            offset,
        })
    }

    /// `IOMMU Info` bits 4:0: the MSI number of the unit's event interrupt.
    pub const fn msi_number(&self) -> u8 {
        (self.info & 0x1f) as u8
    }

    /// `IOMMU Info` bits 12:8: the HyperTransport UnitID.
    pub const fn unit_id(&self) -> u8 {
        ((self.info >> 8) & 0x1f) as u8
    }

    /// The device entries, in table order, each with its offset in the table.
    pub fn device_entries(&self) -> DeviceEntries<'a> {
        self.entries.iter()
    }

    /// The PCI device IDs the unit translates, as runs (selects, ranges, aliases, all).
    pub fn device_ranges(&self) -> DeviceRanges<'a> {
        DeviceRanges {
            entries: self.entries.iter(),
        }
    }

    /// What this unit's entries say about PCI `device_id`, if any names it, as a run: the
    /// devices around it that every entry treats alike (so `requester` holds for each).
    ///
    /// Entries accumulate, as Linux's IVHD walk (`init_iommu_from_acpi`) applies them: the DTE
    /// settings of every entry naming the device are ORed; the alias is the last alias entry's
    /// (42h, 43h), since only those write a device's alias and a later Select, Range or All
    /// leaves it (the alias is a hardware fact: the bridge rewrites the requester ID). An
    /// alias's source ID is named by the unit as well, with the entry's settings: its DTE is
    /// the one the unit uses for the aliased devices.
    pub fn covering(&self, device_id: u16) -> Option<DeviceRange> {
        let mut found: Option<DeviceRange> = None;
        let (mut first, mut last) = (0, u16::MAX);
        let runs = self.device_ranges().filter(|r| !r.is_empty());
        for r in runs.flat_map(with_alias_source) {
            if r.contains(device_id) {
                first = first.max(r.first);
                last = last.min(r.last);
                let f = found.get_or_insert(DeviceRange {
                    dte: DteSetting::empty(),
                    alias: None,
                    extended: None,
                    ..r
                });
                f.dte |= r.dte;
                f.alias = r.alias.or(f.alias);
                f.extended = match (f.extended, r.extended) {
                    (Some(a), Some(b)) => Some(a | b),
                    (a, b) => a.or(b),
                };
            } else if r.last < device_id {
                first = first.max(r.last + 1);
            } else {
                last = last.min(r.first - 1);
            }
        }
        found.map(|f| DeviceRange { first, last, ..f })
    }

    /// The highest device ID any entry names (PCI devices, their aliases, special and ACPI
    /// devices): the device table must cover it.
    pub fn last_device_id(&self) -> Option<u16> {
        use super::device_entry::DeviceEntry as E;
        self.device_entries()
            .filter_map(|(_, e)| match e {
                E::All { .. } => Some(u16::MAX),
                E::Select { device_id, .. }
                | E::RangeStart { device_id, .. }
                | E::End { device_id }
                | E::ExtendedSelect { device_id, .. }
                | E::ExtendedRangeStart { device_id, .. }
                | E::Special { device_id, .. }
                | E::AcpiHid { device_id, .. } => Some(device_id),
                E::Alias {
                    device_id, source, ..
                }
                | E::AliasRangeStart {
                    device_id, source, ..
                } => Some(device_id.max(source)),
                _ => None,
            })
            .max()
    }

    /// The register window: its base and the 16 KiB every unit has.
    ///
    /// # Errors
    /// [`Error::RegisterBase`] for a zero base or one not 16 KiB aligned.
    pub fn register_window(&self) -> Result<(PhysAddr, u64), Error> {
        let base = self.base_address;
        if base == 0 || base % REGISTER_WINDOW != 0 || base.checked_add(REGISTER_WINDOW).is_none() {
            return Err(Error::RegisterBase { base });
        }
        Ok((PhysAddr::new(base), REGISTER_WINDOW))
    }
}

/// A run and, for an alias run, its source ID as a run of one with the same settings (Linux
/// sets the source's DTE from the alias entry too).
fn with_alias_source(r: DeviceRange) -> impl Iterator<Item = DeviceRange> {
    let source = r.alias.map(|s| DeviceRange {
        first: s,
        last: s,
        alias: None,
        ..r
    });
    core::iter::once(r).chain(source)
}
