//! Facts about a VT-d unit that no register of the unit reports: the platform's firmware
//! declares them (ACPI DMAR, Intel VT-d specification rev. 4.1 §8.1 "DMA Remapping Reporting
//! Structure"), and the embedder passes them on when it creates the unit.
//!
//! - Host address width (DMAR byte 36, `Host Address Width` = N, HAW = N + 1): the platform's
//!   DMA physical addressability. Bits 51:HAW of the address fields of root, context, PASID
//!   and paging entries are reserved (§9): an output address at or above `2^HAW` either
//!   faults on the walk or, on an implementation that does not check reserved bits, reaches
//!   another address. `CAP.MGAW` is not HAW: it bounds the *input* (DMA virtual) address, and
//!   §11.4.2 only requires `MGAW >= HAW`, so defaulting to it may be too wide.
//!
//! Without a declaration the unit uses [`UNDECLARED_HAW_BITS`] (36) capped by `CAP.MGAW`:
//! narrower than any platform VT-d exists on (every x86 processor with PAE or 64-bit mode has
//! `MAXPHYADDR >= 36`, Intel SDM Vol. 3A §4.1.4; VT-d platforms report HAW 36 or more), so an
//! undeclared width never lets a physical address the platform cannot hold into an entry. The
//! price: physical addresses at or above 64 GiB are refused (`pgtable::Error::PaOutOfRange`),
//! and so are pages there for page tables (`pgtable::Error::TableOutOfRange`) and for every
//! structure the unit reads (root, context and PASID tables, the invalidation queue and its
//! status page: [`Error::TableOutOfRange`](super::Error::TableOutOfRange)), until the embedder
//! passes the DMAR value (or its CPU's `MAXPHYADDR`).

use crate::iommu::Source;

/// Output address width a unit uses when the embedder declares none: see the module docs.
pub const UNDECLARED_HAW_BITS: u32 = 36;

/// The [`Source`] of a host address width taken from the ACPI DMAR table.
pub const DMAR_HAW: Source = Source::Firmware("ACPI DMAR Host Address Width");
/// The [`Source`] of a host address width the embedder gives from its own knowledge.
pub const EMBEDDER_HAW: Source = Source::Embedder("VtdConfig::host_address_width");
/// The [`Source`] of the width used when nothing is declared.
pub const UNDECLARED_HAW: Source =
    Source::Embedder("VtdConfig::host_address_width unset: min(CAP.MGAW, 36)");

/// The platform's host address width, with where it comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostAddressWidth {
    /// Output addresses are below `2^bits`.
    pub bits: u32,
    /// Where `bits` comes from: [`DMAR_HAW`] or [`EMBEDDER_HAW`].
    pub source: Source,
}

impl HostAddressWidth {
    /// From the ACPI DMAR table's `Host Address Width` field (byte 36), which holds HAW - 1.
    /// The hook a DMAR parser calls.
    pub const fn from_dmar(width_field: u8) -> Self {
        Self {
            bits: width_field as u32 + 1,
            source: DMAR_HAW,
        }
    }

    /// A width the embedder knows from elsewhere (its CPU's `MAXPHYADDR`, a board manual).
    pub const fn embedder(bits: u32) -> Self {
        Self {
            bits,
            source: EMBEDDER_HAW,
        }
    }
}
