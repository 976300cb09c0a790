//! Errors of the page-table engine.

use core::fmt;

use super::Prot;
use crate::mem::{Iova, PhysAddr};

/// Why a page-table operation failed. Every variant carries the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The page allocator had no page; nothing was changed.
    NoMemory,
    /// The length was zero.
    ZeroLength,
    /// `iova + len` (or `pa + len`) overflows 64 bits.
    Overflow {
        /// Start of the range.
        start: u64,
        /// Its length.
        len: u64,
    },
    /// The IOVA range reaches beyond the table's input address size.
    IovaOutOfRange {
        /// Last IOVA of the range.
        last: Iova,
        /// The table's input address size in bits.
        ias: u32,
    },
    /// The physical range reaches beyond the format's output address size.
    PaOutOfRange {
        /// Last physical address of the range.
        last: PhysAddr,
        /// The output address size in bits.
        oas: u32,
    },
    /// The IOVA is not aligned to the table's granule.
    MisalignedIova {
        /// The IOVA.
        iova: Iova,
        /// Log2 of the granule.
        granule_log2: u32,
    },
    /// The physical address is not aligned to the table's granule.
    MisalignedPa {
        /// The physical address.
        pa: PhysAddr,
        /// Log2 of the granule.
        granule_log2: u32,
    },
    /// The length is not a multiple of the table's granule.
    MisalignedLength {
        /// The length.
        len: u64,
        /// Log2 of the granule.
        granule_log2: u32,
    },
    /// A mapping already exists at this IOVA; nothing was changed.
    Overlap {
        /// First IOVA of the requested range found mapped.
        iova: Iova,
    },
    /// The format cannot express these permissions (for example write-only on x86 paging).
    UnsupportedProt {
        /// The permissions asked for.
        prot: Prot,
    },
    /// The unmap would cut a larger page and the table is configured to refuse splitting.
    SplitRefused {
        /// The IOVA inside the larger page where the cut falls.
        iova: Iova,
    },
    /// The unmap would cut a larger page that this format or configuration cannot split
    /// without a break-before-make sequence, or into pages it does not support.
    SplitUnsupported {
        /// The IOVA inside the larger page where the cut falls.
        iova: Iova,
    },
    /// Dirty tracking was asked of a table configured without it.
    NoDirtyTracking,
    /// A table entry points at memory the allocator does not know: the table is corrupt.
    UnknownTable {
        /// The physical address found in the entry.
        pa: PhysAddr,
    },
    /// The hardware kept changing an entry while the engine tried to replace it.
    EntryUnstable {
        /// The IOVA the entry maps.
        iova: Iova,
    },
    /// The allocator gave a table page that the hardware cannot reach: its address does not fit
    /// in the output address size (VT-d: bits at or above HAW are reserved; Arm: an address size
    /// fault, and with a 4 KiB / 16 KiB granule bits 51:48 would be dropped). The page was
    /// returned and nothing was changed.
    TableOutOfRange {
        /// Physical address of the page.
        pa: PhysAddr,
        /// The output address size in bits.
        oas: u32,
    },
    /// The format configuration is not valid.
    InvalidConfig {
        /// Which parameter.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// A gather was given pages of another table configuration.
    GatherMismatch {
        /// Log2 of the page size the gather held.
        held_log2: u32,
        /// Log2 of the page size offered.
        offered_log2: u32,
    },
    /// The gather holds what another table's calls recorded: one gather, one table, so that
    /// the invalidation that releases it is that table's.
    GatherOfAnotherTable {
        /// Root table address of the table that filled the gather.
        root: u64,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::NoMemory => write!(f, "no memory for a page-table page"),
            Error::ZeroLength => write!(f, "zero-length range"),
            Error::Overflow { start, len } => {
                write!(f, "range {start:#x} + {len:#x} overflows")
            }
            Error::IovaOutOfRange { last, ias } => {
                write!(f, "IOVA {last} beyond the {ias}-bit input range")
            }
            Error::PaOutOfRange { last, oas } => {
                write!(
                    f,
                    "physical address {last} beyond the {oas}-bit output range"
                )
            }
            Error::MisalignedIova { iova, granule_log2 } => {
                write!(f, "IOVA {iova} not aligned to 2^{granule_log2}")
            }
            Error::MisalignedPa { pa, granule_log2 } => {
                write!(f, "physical address {pa} not aligned to 2^{granule_log2}")
            }
            Error::MisalignedLength { len, granule_log2 } => {
                write!(f, "length {len:#x} not a multiple of 2^{granule_log2}")
            }
            Error::Overlap { iova } => write!(f, "IOVA {iova} is already mapped"),
            Error::UnsupportedProt { prot } => {
                write!(f, "permissions {prot:?} not expressible in this format")
            }
            Error::SplitRefused { iova } => {
                write!(
                    f,
                    "unmap at {iova} would split a larger page (splitting refused)"
                )
            }
            Error::SplitUnsupported { iova } => {
                write!(
                    f,
                    "unmap at {iova} would split a page this format cannot split"
                )
            }
            Error::NoDirtyTracking => write!(f, "table configured without dirty tracking"),
            Error::UnknownTable { pa } => {
                write!(f, "table entry points at unknown page {pa}")
            }
            Error::EntryUnstable { iova } => {
                write!(f, "entry for {iova} kept changing under the engine")
            }
            Error::TableOutOfRange { pa, oas } => {
                write!(f, "table page {pa} beyond the {oas}-bit output range")
            }
            Error::InvalidConfig { what, value } => {
                write!(f, "invalid configuration: {what} = {value:#x}")
            }
            Error::GatherMismatch {
                held_log2,
                offered_log2,
            } => write!(
                f,
                "gather holds 2^{held_log2}-byte pages, offered 2^{offered_log2}"
            ),
            Error::GatherOfAnotherTable { root } => {
                write!(f, "gather filled by the table with root {root:#x}")
            }
        }
    }
}
