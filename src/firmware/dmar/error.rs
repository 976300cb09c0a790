//! Errors of the DMAR parser (Intel VT-d specification rev. 4.1, chapter 8).

use core::fmt;

use crate::firmware::acpi;
use crate::vtd::SourceId;

/// Which DMAR structure an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Structure {
    /// The DMAR table's fixed part (§8.1).
    Table,
    /// A remapping structure's type and length header (§8.2).
    RemappingHeader,
    /// DMA Remapping Hardware Unit Definition (§8.3).
    Drhd,
    /// Device Scope (§8.3.1).
    DeviceScope,
    /// Reserved Memory Region Reporting (§8.4).
    Rmrr,
    /// Root Port ATS Capability Reporting (§8.5).
    Atsr,
    /// Remapping Hardware Static Affinity (§8.6).
    Rhsa,
    /// ACPI Name-space Device Declaration (§8.7).
    Andd,
    /// SoC Integrated Address Translation Cache (§8.8).
    Satc,
}

/// An error decoding or using a DMAR table. Every variant carries the offending value and,
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
        /// Its `Length` (or the bytes left, for the table).
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
        /// Its `Length`.
        length: usize,
        /// Bytes left in the container from `offset`.
        remaining: usize,
    },
    /// A device scope whose length is not 6 plus two bytes per path entry, or that has no path
    /// entry (§8.3.1).
    ScopeLength {
        /// Offset of the scope in the table.
        offset: usize,
        /// Its `Length`.
        length: u8,
    },
    /// A path entry names a device above 31 or a function above 7 (§8.3.1).
    PathEntry {
        /// Offset of the entry in the table.
        offset: usize,
        /// Its device number.
        device: u8,
        /// Its function number.
        function: u8,
    },
    /// A path walked through a function that is not a PCI-PCI bridge: the embedder's
    /// [`PciBuses`](super::PciBuses) reported no bridge at `bridge`.
    NotABridge {
        /// PCI segment.
        segment: u16,
        /// The function the path goes through.
        bridge: SourceId,
    },
    /// A device scope that may name the requester could not be followed: its path (or, for a
    /// sub-hierarchy, its own bridge) goes through a function the embedder's
    /// [`PciBuses`](super::PciBuses) does not report as a bridge. Whether the scope covers the
    /// requester is unknown, so the lookup ([`Dmar::unit_for`](super::Dmar::unit_for),
    /// [`Dmar::reserved_regions`](super::Dmar::reserved_regions)) does not guess: falling back
    /// to an INCLUDE_PCI_ALL unit could name the wrong unit, dropping an RMRR could break the
    /// device.
    ScopeUnresolved {
        /// Offset of the device scope in the table.
        scope: usize,
        /// PCI segment.
        segment: u16,
        /// The requester the lookup was for.
        requester: SourceId,
        /// The function the walk went through that answered as no bridge.
        bridge: SourceId,
    },
    /// An RMRR whose base is not 4 KiB aligned, whose `Limit + 1` is not, or whose limit is
    /// below its base (§8.4).
    RmrrRange {
        /// `Reserved Memory Region Base Address`.
        base: u64,
        /// `Reserved Memory Region Limit Address` (inclusive).
        limit: u64,
    },
    /// A DRHD register base that is not 4 KiB aligned, or whose register set (`Size`) does
    /// not fit below 2^64 (§8.3).
    RegisterBase {
        /// `Register Base Address`.
        base: u64,
        /// `Size` bits 3:0 (the set is 2^size 4 KiB pages).
        size: u8,
    },
}

acpi::lift_acpi_error!(Error);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Acpi(e) => write!(f, "DMAR: {e}"),
            Error::TooShort { structure, offset, length, minimum } => write!(
                f,
                "DMAR {structure:?} at {offset:#x}: length {length:#x} below its minimum {minimum:#x}"
            ),
            Error::Overrun { structure, offset, length, remaining } => write!(
                f,
                "DMAR {structure:?} at {offset:#x}: length {length:#x} runs past the {remaining:#x} bytes left"
            ),
            Error::ScopeLength { offset, length } => write!(
                f,
                "DMAR device scope at {offset:#x}: length {length} is not 6 + 2 * (path entries >= 1)"
            ),
            Error::PathEntry { offset, device, function } => write!(
                f,
                "DMAR device scope path entry at {offset:#x}: device {device:#x} function {function:#x} out of range"
            ),
            Error::NotABridge { segment, bridge } => write!(
                f,
                "DMAR device scope path goes through {segment:04x}:{bridge:?}, which is not a PCI-PCI bridge"
            ),
            Error::ScopeUnresolved { scope, segment, requester, bridge } => write!(
                f,
                "DMAR device scope at {scope:#x} may name {segment:04x}:{requester:?}, but its path goes through {segment:04x}:{bridge:?}, which the bus walk reports as no bridge"
            ),
            Error::RmrrRange { base, limit } => write!(
                f,
                "DMAR RMRR {base:#x}..={limit:#x} is not a 4 KiB-aligned, non-empty range"
            ),
            Error::RegisterBase { base, size } => write!(
                f,
                "DMAR DRHD register base {base:#x} (size field {size}) is not 4 KiB aligned or overflows"
            ),
        }
    }
}
