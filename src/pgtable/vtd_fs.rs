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
//! Entry bits: P (0), R/W (1), U/S (2), PWT (3), PCD (4), A (5), D (6, leaf), PS (7), ADDR
//! (51:12), XD (63). The engine sets A (and D on writable leaves unless dirty tracking is on) so
//! the walker need not perform locked A/D updates.

use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Bit 52 (ignored in every paging-structure entry, §9.7 and the SDM's "Formats of Paging
/// Entries"): software's mark of a table made by a split.
const SPLIT: u64 = 1 << 52;

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
        if !matches!(cfg.levels, 4 | 5) {
            return Err(Error::InvalidConfig {
                what: "levels",
                value: cfg.levels.into(),
            });
        }
        if !(32..=52).contains(&cfg.haw) {
            return Err(Error::InvalidConfig {
                what: "haw",
                value: cfg.haw.into(),
            });
        }
        let sizes = 1 << 12 | 1 << 21 | u64::from(cfg.page_1g) << 30;
        // Input addresses must be canonical (bits above the top one copy it); DMA addresses are
        // the lower half, so the root's upper 256 entries stay unused: 47 or 56 input bits.
        let ias = 12 + 9 * cfg.levels - 1;
        let geometry = Geometry::with_levels(12, ias, cfg.haw, cfg.levels, 8, sizes)?;
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
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn is_present(&self, raw: u64) -> bool {
        raw & P != 0
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
        // Permissions combine as the most restrictive along the walk: tables grant everything.
        table.get() | P | RW | US | A
    }

    #[inline]
    fn split_table_bit(&self) -> u64 {
        SPLIT
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        // A present x86 entry is always readable: write-only cannot be expressed.
        if prot.contains(Prot::READ) {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }

    #[inline]
    fn encode_leaf(&self, level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        let mut e = pa.get() | P | A;
        if prot.contains(Prot::WRITE) {
            e |= RW;
            if !self.cfg.dirty_tracking {
                e |= D;
            }
        }
        if !prot.contains(Prot::PRIV) {
            e |= US;
        }
        if self.cfg.execute_disable && !prot.contains(Prot::EXEC) {
            e |= XD;
        }
        if level > 0 {
            e |= PS;
        }
        if prot.contains(Prot::MMIO) {
            // PAT index 3 (PAT = 0, PCD, PWT): UC in the architectural PAT.
            e |= PCD | PWT;
        }
        e
    }

    #[inline]
    fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR & !((1u64 << self.geometry.level_shift(level)) - 1))
    }

    #[inline]
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let mut p = Prot::READ;
        p.set(Prot::WRITE, raw & RW != 0);
        p.set(Prot::PRIV, raw & US == 0);
        p.set(Prot::EXEC, !self.cfg.execute_disable || raw & XD == 0);
        p.set(Prot::MMIO, raw & PCD != 0);
        p
    }

    fn relevel_leaf(&self, raw: u64, from: u32, to: u32, pa: PhysAddr) -> u64 {
        // Bit 12 is PAT in a large-page entry but address in a PTE; the engine never sets PAT.
        let _ = from;
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
