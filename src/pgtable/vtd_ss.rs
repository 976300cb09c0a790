//! Intel VT-d second-stage page tables.
//!
//! Intel Virtualization Technology for Directed I/O, Architecture Specification, rev. 4.1
//! (March 2023): §3.7 "Second-Stage Translation" and §9.8 "Second-Stage Paging Entries".
//!
//! Levels (this crate -> spec): 0 = SS-PTE (4 KiB), 1 = SS-PDE (2 MiB with PS), 2 = SS-PDPE
//! (1 GiB with PS), 3 = SS-PML4E, 4 = SS-PML5E. The adjusted guest address width (AGAW, from
//! `CAP.SAGAW`) picks 3, 4 or 5 levels for 39, 48 or 57 input bits; `CAP.SLLPS` says which large
//! pages exist.
//!
//! Entry bits: R (0), W (1), X (2, not used: execute requests are not enabled), PS (7, leaf at
//! levels 1-2), A (8) and D (9) when the PASID entry sets SSADE, SNP (11: force snoop, only with
//! `ECAP.SC`), ADDR (51:12).

use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const PS: u64 = 1 << 7;
const D: u64 = 1 << 9;
const SNP: u64 = 1 << 11;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Bit 52 (ignored by hardware, §9.8): software's mark of a table made by a split.
const SPLIT: u64 = 1 << 52;
/// Bit 53 (ignored by hardware, §9.8): software's mark of a [`Prot::MMIO`] leaf. The leaf is
/// otherwise as for memory: `EMT` (5:3) is used only with the PASID entry's `EMTE` (§9.6),
/// which this crate never sets, and an MMIO target's type comes from the platform's decoding.
const MMIO: u64 = 1 << 53;

/// Configuration of a VT-d second-stage table, derived from the unit's capabilities and the
/// domain's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSsConfig {
    /// Adjusted guest address width: 39, 48 or 57 (3, 4 or 5 levels), one `CAP.SAGAW` allows.
    pub agaw: u32,
    /// Host address width: output addresses are below `1 << haw` (at most 52).
    pub haw: u32,
    /// `CAP.SLLPS` bit 0: 2 MiB pages.
    pub page_2m: bool,
    /// `CAP.SLLPS` bit 1: 1 GiB pages.
    pub page_1g: bool,
    /// Set SNP in every leaf: DMA is snooped whatever the request says. Needs `ECAP.SC`.
    pub snoop: bool,
    /// Hardware sets A/D (scalable-mode PASID entry SSADE, `ECAP.SLADS`): dirty tracking.
    pub dirty_tracking: bool,
}

/// The VT-d second-stage format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSs {
    cfg: VtdSsConfig,
    geometry: Geometry,
}

impl VtdSs {
    /// Builds the format.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an AGAW other than 39/48/57 or a HAW outside 32..=52.
    pub fn new(cfg: VtdSsConfig) -> Result<Self, Error> {
        if !matches!(cfg.agaw, 39 | 48 | 57) {
            return Err(Error::InvalidConfig {
                what: "agaw",
                value: cfg.agaw.into(),
            });
        }
        if !(32..=52).contains(&cfg.haw) {
            return Err(Error::InvalidConfig {
                what: "haw",
                value: cfg.haw.into(),
            });
        }
        let sizes = 1 << 12 | u64::from(cfg.page_2m) << 21 | u64::from(cfg.page_1g) << 30;
        let geometry = Geometry::new(12, cfg.agaw, cfg.haw, sizes)?;
        Ok(Self { cfg, geometry })
    }

    /// The configuration.
    pub const fn config(&self) -> &VtdSsConfig {
        &self.cfg
    }

    /// The AW field of a context or PASID entry for this table: 1, 2, 3 for 39, 48, 57 bits.
    pub const fn aw_field(&self) -> u64 {
        ((self.cfg.agaw - 30) / 9) as u64
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with R and W set and PS clear, and every leaf above level 0 has PS set; A and D (bits 8, 9),
// the only bits the walker sets, lie outside ADDR, and so does SPLIT (bit 52, ignored by the
// walker). R = W = 0 (bits 1:0) is not present.
unsafe impl Format for VtdSs {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn is_present(&self, raw: u64) -> bool {
        raw & (R | W) != 0
    }

    #[inline]
    fn present_mask(&self) -> Option<u64> {
        Some(R | W)
    }

    #[inline]
    fn is_table(&self, level: u32, raw: u64) -> bool {
        level > 0 && raw & PS == 0
    }

    #[inline]
    fn table_address(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR)
    }

    #[inline]
    fn encode_table(&self, _level: u32, table: PhysAddr) -> u64 {
        // Non-leaf R/W must allow everything the leaves below may grant.
        table.get() | R | W
    }

    #[inline]
    fn split_table_bit(&self) -> u64 {
        SPLIT
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        let allowed = Prot::READ | Prot::WRITE | Prot::MMIO;
        if prot.intersects(Prot::READ | Prot::WRITE) && (prot - allowed).is_empty() {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }

    #[inline]
    fn encode_leaf(&self, level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        let mut e = pa.get();
        if prot.contains(Prot::READ) {
            e |= R;
        }
        if prot.contains(Prot::WRITE) {
            e |= W;
        }
        if level > 0 {
            e |= PS;
        }
        if self.cfg.snoop {
            e |= SNP;
        }
        if prot.contains(Prot::MMIO) {
            e |= MMIO;
        }
        e
    }

    #[inline]
    fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR & !((1u64 << self.geometry.level_shift(level)) - 1))
    }

    #[inline]
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let mut p = Prot::empty();
        p.set(Prot::READ, raw & R != 0);
        p.set(Prot::WRITE, raw & W != 0);
        p.set(Prot::MMIO, raw & MMIO != 0);
        p
    }

    fn relevel_leaf(&self, raw: u64, _from: u32, to: u32, pa: PhysAddr) -> u64 {
        let attrs = raw & !ADDR & !PS;
        attrs | pa.get() | if to > 0 { PS } else { 0 }
    }

    fn dirty_tracking(&self) -> bool {
        self.cfg.dirty_tracking
    }

    #[inline]
    fn leaf_is_dirty(&self, raw: u64) -> bool {
        raw & D != 0
    }

    #[inline]
    fn leaf_clear_dirty(&self, raw: u64) -> u64 {
        raw & !D
    }
}
