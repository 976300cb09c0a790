//! AMD-Vi v2 (guest) I/O page tables: x86-64 4- and 5-level paging for PASIDs.
//!
//! AMD I/O Virtualization Technology (IOMMU) Specification, document 48882, rev. 3.10:
//! §2.2.6 "I/O Page Tables for Guest Translations" (the guest tables are the AMD64 long-mode
//! format, AMD64 APM vol. 2 §5.3); §2.2.2 "Device Table": the DTE's `GV`, `GLX` and `GCR3
//! Table Root Pointer` (the GCR3 table holds one root per PASID; `GLX` is the number of GCR3
//! table levels minus one, not the guest table's depth) and `GuestPagingMode` (quadword 2 bits
//! 55:54: 00b 4 levels, 01b 5 levels, `EFR.GATS`).
//!
//! The entry layout is the processor's, the one VT-d's first stage uses too: both formats
//! share `x86_paging.rs`. Levels (this crate -> APM): 0 = PTE (4 KiB), 1 = PDE (2 MiB with PS),
//! 2 = PDPE (1 GiB with PS), 3 = PML4E, 4 = PML5E. Input addresses are canonical lower-half
//! addresses: 47 bits with 4 levels, 56 with 5.
//!
//! The v2 table has no force-coherent bit: snooping of a v2 domain's DMA is not enforceable
//! per table ([`AmdV2Config`] has no such knob); a domain that must enforce snoop uses v1.

use super::x86_paging::{self as x86, x86_paging_format_methods};
use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

/// Configuration of a v2 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV2Config {
    /// 4 or 5 levels (DTE `GuestPagingMode` 00b / 01b; 5 needs `EFR.GATS` = 01b).
    pub levels: u32,
    /// Output address bits, 32..=52.
    pub oas: u32,
    /// Set NX (bit 63) on leaves without [`Prot::EXEC`].
    pub execute_disable: bool,
    /// Leave D clear on writable leaves so the IOMMU marks the pages it writes.
    pub dirty_tracking: bool,
}

/// The AMD-Vi v2 guest format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV2 {
    cfg: AmdV2Config,
    geometry: Geometry,
}

impl AmdV2 {
    /// Builds the format (4 KiB, 2 MiB and 1 GiB pages: every v2 unit walks all three).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for levels other than 4/5 or output bits outside 32..=52.
    pub fn new(cfg: AmdV2Config) -> Result<Self, Error> {
        let geometry = x86::geometry(cfg.levels, cfg.oas, true)?;
        Ok(Self { cfg, geometry })
    }

    /// The configuration.
    pub const fn config(&self) -> &AmdV2Config {
        &self.cfg
    }

    /// The DTE's `GuestPagingMode` field (quadword 2, bits 55:54) for this table: 0 for 4
    /// levels, 1 for 5. Not `GLX`, which counts the GCR3 table's levels.
    pub const fn guest_paging_mode(&self) -> u64 {
        (self.cfg.levels - 4) as u64
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with P set and PS clear, and every leaf above level 0 has PS set; A and D (bits 5, 6), the only
// bits the IOMMU sets, lie outside ADDR, and so does SPLIT (bit 52, ignored by the IOMMU).
// P = 0 (bit 0) is not present.
unsafe impl Format for AmdV2 {
    x86_paging_format_methods!();
}
