//! Intel VT-d first-stage page tables: x86-64 4- and 5-level paging as VT-d walks it.
//!
//! Intel VT-d Architecture Specification rev. 4.1: §3.6 "First-Stage Translation" and §9.9
//! "First-Stage Paging Entries"; the entry layout is the Intel SDM vol. 3A §4.5 IA-32e paging
//! layout.
//!
//! Input addresses are canonical lower-half addresses: 47 bits with 4 levels, 56 with 5.
//!
//! Levels (this crate -> spec): 0 = PTE (4 KiB), 1 = PDE (2 MiB with PS), 2 = PDPE (1 GiB with
//! PS, needs `CAP.FL1GP`), 3 = PML4E, 4 = PML5E (`CAP.FL5LP`, PASID entry FLPM = 1).
//!
//! The entry layout and the engine's use of it are shared with the AMD-Vi v2 format: see
//! `x86_paging.rs`.

use super::x86_paging::{self as x86, x86_paging_format_methods};
use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

/// Configuration of a VT-d first-stage table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdFsConfig {
    /// 4 (48-bit) or 5 (57-bit, `CAP.FL5LP`) levels.
    pub levels: u32,
    /// Host address width: output addresses are below `1 << haw` (at most 52).
    pub haw: u32,
    /// `CAP.FL1GP`: 1 GiB pages.
    pub page_1g: bool,
    /// Set XD on leaves without [`Prot::EXEC`].
    pub execute_disable: bool,
    /// Leave D clear on writable leaves so the walker reports writes.
    pub dirty_tracking: bool,
}

/// The VT-d first-stage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdFs {
    cfg: VtdFsConfig,
    geometry: Geometry,
}

impl VtdFs {
    /// Builds the format.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for levels other than 4/5 or a HAW outside 32..=52.
    pub fn new(cfg: VtdFsConfig) -> Result<Self, Error> {
        let geometry = x86::geometry(cfg.levels, cfg.haw, cfg.page_1g)?;
        Ok(Self { cfg, geometry })
    }

    /// The configuration.
    pub const fn config(&self) -> &VtdFsConfig {
        &self.cfg
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with P set and PS clear, and every leaf above level 0 has PS set; A and D (bits 5, 6), the only
// bits the walker sets, lie outside ADDR, and so does SPLIT (bit 52, ignored by the walker).
// P = 0 (bit 0) is not present.
unsafe impl Format for VtdFs {
    x86_paging_format_methods!();
}
