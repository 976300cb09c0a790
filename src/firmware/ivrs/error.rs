//! Errors of the IVRS parser (AMD I/O Virtualization Technology (IOMMU) Specification, document
//! 48882, revision 3.10, §5.2 "I/O Virtualization Reporting Structure (IVRS)").

use core::fmt;

use crate::firmware::acpi;

/// Which IVRS structure an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Structure {
    /// The IVRS table's fixed part (§5.2.1).
    Table,
    /// An I/O virtualization definition block's `Type`, `Flags` and `Length` (§5.2.2).
    BlockHeader,
    /// I/O Virtualization Hardware Definition, types 10h, 11h, 40h (§5.2.2.1, §5.2.2.2).
    Ivhd,
    /// An IVHD device entry (§5.2.2.3).
    DeviceEntry,
    /// I/O Virtualization Memory Definition, types 20h, 21h, 22h (§5.2.2.4).
    Ivmd,
}

/// An error decoding or using an IVRS table. Every variant carries the offending value and,
/// for malformed bytes, the offset from the start of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The table's header, length or checksum (see [`acpi::Error`]).
    Acpi(acpi::Error),
    /// A structure's `Length` is below its fixed fields.
    TooShort {
        /// Which structure.
        structure: Structure,
        /// Its offset in the table.
        offset: usize,
        /// Its `Length` (or the bytes left).
        length: usize,
        /// The smallest valid length.
        minimum: usize,
    },
    /// A structure's `Length` runs past the end of the structure that contains it.
    Overrun {
        /// Which structure.
        structure: Structure,
        /// Its offset in the table.
        offset: usize,
        /// Its length.
        length: usize,
        /// Bytes left in the container from `offset`.
        remaining: usize,
    },
    /// A variable-length device entry of type F1h-FFh (beside ACPI HID, F0h): its length
    /// cannot be known, so the entries after it cannot be found (§5.2.2.3).
    UnknownEntry {
        /// Offset of the entry in the table.
        offset: usize,
        /// Its type.
        entry_type: u8,
    },
    /// A Start of Range entry (03h, 43h, 47h) not followed by an End of Range entry (04h), or
    /// an End of Range without a start, or a range whose end is below its start (§5.2.2.3).
    Range {
        /// Offset of the entry in the table.
        offset: usize,
        /// The range's first device ID (the end's, for an end without a start).
        start: u16,
        /// The range's last device ID (`start` when there is none).
        end: u16,
    },
    /// An IVHD register base that is not 16 KiB aligned (the register window is at least
    /// 16 KiB, §3.4), or zero.
    RegisterBase {
        /// `IOMMU Base Address`.
        base: u64,
    },
    /// An IVMD of type 22h whose first device ID (`DeviceID`) is after its last (`Auxiliary
    /// Data`): it would name no device (§5.2.2.4). The IVMD alone is refused
    /// ([`Block::Refused`](super::Block::Refused)), the table kept.
    IvmdDeviceRange {
        /// Offset of the IVMD in the table.
        offset: usize,
        /// `DeviceID`.
        first: u16,
        /// `Auxiliary Data`.
        last: u16,
    },
    /// An `IVinfo` address size no unit can have (§5.2.1): `PAsize` outside 32..=52, `VAsize`
    /// outside 32..=64, `GVAsize` neither 2 (48 bits) nor 3 (57 bits); 0 reports nothing.
    AddressSize {
        /// `PAsize`, `VAsize` or `GVAsize`.
        field: &'static str,
        /// Its value (bits; for `GVAsize` its code).
        bits: u32,
    },
    /// An IVMD whose start is not 4 KiB aligned, whose length is not a multiple of 4 KiB, or
    /// whose end overflows (§5.2.2.4).
    MemoryRange {
        /// `IVMD Start Address`.
        start: u64,
        /// `IVMD Memory Block Length`.
        length: u64,
    },
}

acpi::lift_acpi_error!(Error);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Acpi(e) => write!(f, "IVRS: {e}"),
            Error::TooShort { structure, offset, length, minimum } => write!(
                f,
                "IVRS {structure:?} at {offset:#x}: length {length:#x} below its minimum {minimum:#x}"
            ),
            Error::Overrun { structure, offset, length, remaining } => write!(
                f,
                "IVRS {structure:?} at {offset:#x}: length {length:#x} runs past the {remaining:#x} bytes left"
            ),
            Error::UnknownEntry { offset, entry_type } => write!(
                f,
                "IVRS device entry at {offset:#x}: variable-length type {entry_type:#04x} of unknown length"
            ),
            Error::Range { offset, start, end } => write!(
                f,
                "IVRS device entry at {offset:#x}: range {start:#06x}..={end:#06x} not closed, not opened or reversed"
            ),
            Error::RegisterBase { base } => write!(
                f,
                "IVRS IVHD IOMMU base address {base:#x} is zero or not 16 KiB aligned"
            ),
            Error::IvmdDeviceRange { offset, first, last } => write!(
                f,
                "IVRS IVMD at {offset:#x}: device range {first:#06x}..={last:#06x} starts after its end"
            ),
            Error::AddressSize { field, bits } => write!(
                f,
                "IVRS IVinfo {field} {bits} is not an address size a unit can have"
            ),
            Error::MemoryRange { start, length } => write!(
                f,
                "IVRS IVMD {start:#x} + {length:#x} is not a 4 KiB-aligned range below 2^64"
            ),
        }
    }
}
