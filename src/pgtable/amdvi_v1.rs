//! AMD-Vi v1 (host) I/O page tables.
//!
//! AMD I/O Virtualization Technology (IOMMU) Specification, document 48882, rev. 3.10:
//! §2.2.3 "I/O Page Tables for Host Translations" (Figure 8 "I/O Page Table Entry (PDE)",
//! Figure 9 "I/O Page Table Entry (PTE)", Table 14 "Example Page Size Encodings", Table 15
//! "Page Table Level Parameters"); §2.2.2 "Device Table": the DTE's `Mode` and `Host Page Table
//! Root Pointer`.
//!
//! Levels (this crate -> spec): level `l` is the spec's level `l + 1`: 0 = level 1 (4 KiB
//! PTEs), 1 = level 2 (2 MiB), 2 = level 3 (1 GiB), ..., 5 = level 6, whose 128 entries resolve
//! IOVA bits 63:57. The DTE's `Mode` is the number of levels, 1 to 6, the fewest that cover the
//! domain's address width (`AmdV1Config::ias`). v1 translates the whole 64-bit space (no sign
//! extension); this crate's tables stop at 63 bits, since the engine's ranges end at or below
//! `u64::MAX` (an unmap of the last page below 2^64 would have no end to name): a 63-bit domain
//! has Mode 6, and the IOMMU faults on the upper half for want of entries.
//!
//! Entry bits: PR (0), A (5), D (6, PTE: set by the IOMMU when the DTE's HAD asks for it), Next
//! Level (11:9), address (51:12), U (59, never set), FC (60, PTE: force coherent), IR (61), IW
//! (62). 4:1, 8:7 and 63 are ignored by the IOMMU. A PDE's Next Level is the level of the table
//! it points to, always one below its own: this crate does not skip levels (a PDE may name a
//! lower level, the skipped index bits then being zero; the format allows it, this table does
//! not use it). A PDE grants IR and IW: permissions are the AND over the walk, the PTE decides.
//!
//! Leaves: Next Level 0 maps the level's own size (4 KiB, 2 MiB, 1 GiB; no 512 GiB and larger
//! leaves: Linux's AMD driver notes a hardware bug with 512 GiB pages, and the top level may
//! hold none, Table 15). Next Level 7 maps a page of any power of two between the level's size
//! and the next level's, 2 to 256 entries (8 KiB to 1 MiB at level 1, 4 MiB to 512 MiB at level
//! 2, 2 GiB to 256 GiB at level 3), its size encoded in the address bits (Table 14: bits
//! `size - 2 : 12` set, bit `size - 1` clear) and the PTE replicated in every entry the page
//! spans: the engine's runs ([`Format::contiguous_runs`]). A partial unmap first rewrites each
//! entry of such a page as a Next Level 0 PTE of its own address (`leaf_out_of_run`), then
//! invalidates the whole page. No runs with dirty tracking: the IOMMU marks D in the entry it
//! walked, which would leave the page's dirty state spread over its entries.
//!
//! `FC` is the per-IOASID "enforce snoop": set in every PTE when the domain must not issue
//! non-snooped DMA ([`AmdV1Config::force_coherent`]).

use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

const PR: u64 = 1 << 0;
const D: u64 = 1 << 6;
const NEXT_LEVEL_SHIFT: u32 = 9;
/// Next Level, bits 11:9.
const NEXT_LEVEL: u64 = 0b111 << NEXT_LEVEL_SHIFT;
const ADDR: u64 = 0x000f_ffff_ffff_f000;
const FC: u64 = 1 << 60;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;
/// Bit 1 (ignored, Figures 8 and 9): software's mark of a table made by a split.
const SPLIT: u64 = 1 << 1;
/// Bit 2 (ignored): software's mark of a [`Prot::MMIO`] leaf. The PTE is otherwise as for
/// memory: v1 PTEs carry no memory type, the platform's address decoding gives an MMIO target
/// its type.
const MMIO: u64 = 1 << 2;

/// The Next Level field of `raw`.
#[inline]
const fn next_level(raw: u64) -> u64 {
    (raw & NEXT_LEVEL) >> NEXT_LEVEL_SHIFT
}

/// Next Level of a PTE whose page size is encoded in its address (Table 14).
const NEXT_LEVEL_SIZED: u64 = 7;
/// Runs of 2 to 256 entries: up to half a table, below the next level's size.
const RUNS: u32 = 0x1fe;

/// Log2 of the size of the size-encoded PTE `raw`: the first 0 address bit from bit 12 up, at
/// bit `n`, makes the page `2^(n + 1)` bytes.
#[inline]
const fn encoded_size_log2(raw: u64) -> u32 {
    (raw | 0xfff).trailing_ones() + 1
}

/// Configuration of a v1 table, derived from the unit's features and the domain's policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV1Config {
    /// Input (IOVA) address bits, 13..=63: the table has the fewest levels that cover them
    /// ([`AmdV1::mode`]); the unit's `EFR.HATS` bounds the levels it walks.
    pub ias: u32,
    /// Output address bits, 32..=52 (the system's physical address size).
    pub oas: u32,
    /// 2 MiB and 1 GiB leaves (Next Level 0 at levels 2 and 3).
    pub large_pages: bool,
    /// Set FC in every PTE: the device's requests are snooped whatever their no-snoop attribute
    /// (the IOASID's `ENFORCE_SNOOP`).
    pub force_coherent: bool,
    /// The IOMMU sets D in PTEs it writes through (`EFR.HDSup`, DTE `HAD`): dirty tracking.
    pub dirty_tracking: bool,
}

/// The AMD-Vi v1 host format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV1 {
    cfg: AmdV1Config,
    geometry: Geometry,
}

impl AmdV1 {
    /// Builds the format.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for input bits outside 13..=63 or output bits outside 32..=52.
    pub fn new(cfg: AmdV1Config) -> Result<Self, Error> {
        if !(13..=63).contains(&cfg.ias) {
            return Err(Error::InvalidConfig {
                what: "ias",
                value: cfg.ias.into(),
            });
        }
        if !(32..=52).contains(&cfg.oas) {
            return Err(Error::InvalidConfig {
                what: "oas",
                value: cfg.oas.into(),
            });
        }
        let levels = (cfg.ias - 12).div_ceil(9);
        let mut sizes = 1 << 12;
        if cfg.large_pages {
            // A leaf below the top level only where the level exists (Table 15).
            sizes |= u64::from(levels > 1) << 21 | u64::from(levels > 2) << 30;
        }
        let geometry = Geometry::new(12, cfg.ias, cfg.oas, sizes)?;
        Ok(Self { cfg, geometry })
    }

    /// The configuration.
    pub const fn config(&self) -> &AmdV1Config {
        &self.cfg
    }

    /// The DTE's `Mode` (bits 11:9 of its first quadword) for this table: its level count,
    /// 1 to 6.
    pub const fn mode(&self) -> u64 {
        self.geometry.levels as u64
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with PR set and Next Level = its level (1..=5), never 0 or 7, which is what `is_table` tests;
// every leaf has Next Level 0, or 7 in a run (`encode_run_leaf`; `leaf_out_of_run` and
// `relevel_leaf` give 0). A and D (bits 5, 6), the only bits the IOMMU sets, lie outside
// ADDR and Next Level, and so do SPLIT and MMIO (bits 1, 2, ignored by the IOMMU). PR = 0
// (bit 0) is not present.
unsafe impl Format for AmdV1 {
    #[inline]
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    #[inline]
    fn is_present(&self, raw: u64) -> bool {
        raw & PR != 0
    }

    #[inline]
    fn present_mask(&self) -> Option<u64> {
        Some(PR)
    }

    #[inline]
    fn is_table(&self, level: u32, raw: u64) -> bool {
        level > 0 && !matches!(next_level(raw), 0 | 7)
    }

    #[inline]
    fn table_address(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR)
    }

    #[inline]
    fn encode_table(&self, level: u32, table: PhysAddr) -> u64 {
        // The table below an entry at `level` is at the spec's level `level`: one below this
        // entry's `level + 1`.
        table.get() | PR | u64::from(level) << NEXT_LEVEL_SHIFT | IR | IW
    }

    #[inline]
    fn split_table_bit(&self) -> u64 {
        SPLIT
    }

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        // IR and IW are independent: write-only is expressible; there is no execute or
        // privilege permission in a v1 PTE.
        let allowed = Prot::READ | Prot::WRITE | Prot::MMIO;
        if prot.intersects(Prot::READ | Prot::WRITE) && (prot - allowed).is_empty() {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }

    #[inline]
    fn encode_leaf(&self, _level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        let mut e = pa.get() | PR;
        if prot.contains(Prot::READ) {
            e |= IR;
        }
        if prot.contains(Prot::WRITE) {
            e |= IW;
        }
        if self.cfg.force_coherent {
            e |= FC;
        }
        if prot.contains(Prot::MMIO) {
            e |= MMIO;
        }
        e
    }

    #[inline]
    fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
        let size_log2 = if next_level(raw) == NEXT_LEVEL_SIZED {
            encoded_size_log2(raw)
        } else {
            self.geometry.level_shift(level)
        };
        let low = 1u64.checked_shl(size_log2).map_or(u64::MAX, |s| s - 1);
        PhysAddr::new(raw & ADDR & !low)
    }

    #[inline]
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let mut p = Prot::empty();
        p.set(Prot::READ, raw & IR != 0);
        p.set(Prot::WRITE, raw & IW != 0);
        p.set(Prot::MMIO, raw & MMIO != 0);
        p
    }

    fn relevel_leaf(&self, raw: u64, _from: u32, _to: u32, pa: PhysAddr) -> u64 {
        // A lone leaf has Next Level 0 at any level: only the address changes.
        (raw & !ADDR & !NEXT_LEVEL) | pa.get()
    }

    fn contiguous_runs(&self, level: u32) -> u32 {
        if self.cfg.large_pages && !self.cfg.dirty_tracking && self.geometry.leaf_allowed(level) {
            RUNS
        } else {
            0
        }
    }

    #[inline]
    fn encode_run_leaf(
        &self,
        level: u32,
        pa: PhysAddr,
        n_log2: u32,
        _index: usize,
        prot: Prot,
    ) -> u64 {
        // Every entry of the page holds the same PTE: the page's address with its size encoded
        // below it (`size - 2 : 12` set; bit `size - 1` is clear in an aligned address).
        let size_log2 = self.geometry.level_shift(level).wrapping_add(n_log2);
        let code = 1u64.wrapping_shl(size_log2.wrapping_sub(1)).wrapping_sub(1) & ADDR;
        self.encode_leaf(level, pa, prot) | code | NEXT_LEVEL_SIZED << NEXT_LEVEL_SHIFT
    }

    #[inline]
    fn leaf_template(&self, level: u32, n_log2: u32, prot: Prot) -> u64 {
        if n_log2 == 0 {
            self.encode_leaf(level, PhysAddr::new(0), prot)
        } else {
            self.encode_run_leaf(level, PhysAddr::new(0), n_log2, 0, prot)
        }
    }

    #[inline]
    fn leaf_from_template(&self, template: u64, level: u32, n_log2: u32, pa: PhysAddr) -> u64 {
        // Every leaf of a page holds the page's address (`encode_run_leaf`).
        let size_log2 = self.geometry.level_shift(level).wrapping_add(n_log2);
        let page_mask = 1u64.wrapping_shl(size_log2).wrapping_sub(1);
        template | pa.get() & !page_mask
    }

    #[inline]
    fn leaf_address_in_place(&self, _level: u32, n_log2: u32) -> bool {
        // A lone leaf holds its own (aligned) address; a run's leaves hold the run's.
        n_log2 == 0
    }

    #[inline]
    fn leaf_run_log2(&self, level: u32, raw: u64) -> u32 {
        if next_level(raw) == NEXT_LEVEL_SIZED {
            encoded_size_log2(raw).saturating_sub(self.geometry.level_shift(level))
        } else {
            0
        }
    }

    fn leaf_out_of_run(&self, _level: u32, raw: u64, pa: PhysAddr) -> u64 {
        (raw & !ADDR & !NEXT_LEVEL) | pa.get()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn format(ias: u32) -> AmdV1 {
        AmdV1::new(AmdV1Config {
            ias,
            oas: 48,
            large_pages: true,
            force_coherent: true,
            dirty_tracking: false,
        })
        .unwrap()
    }

    #[test]
    fn mode_is_the_fewest_levels_covering_the_width() {
        for (ias, mode) in [
            (13, 1),
            (21, 1),
            (22, 2),
            (30, 2),
            (39, 3),
            (40, 4),
            (48, 4),
        ] {
            assert_eq!(format(ias).mode(), mode, "ias {ias}");
        }
        assert_eq!((format(57).mode(), format(58).mode()), (5, 6));
        let g = *format(63).geometry();
        assert_eq!((g.levels, g.top_bits, g.ias), (6, 6, 63));
        assert_eq!(g.page_sizes, 1 << 12 | 1 << 21 | 1 << 30);
        assert_eq!(format(21).geometry().page_sizes, 1 << 12);
        assert_eq!(format(30).geometry().page_sizes, 1 << 12 | 1 << 21);
    }

    #[test]
    fn out_of_range_widths_are_refused() {
        let cfg = AmdV1Config {
            ias: 12,
            oas: 48,
            large_pages: true,
            force_coherent: false,
            dirty_tracking: false,
        };
        assert!(matches!(
            AmdV1::new(cfg),
            Err(Error::InvalidConfig {
                what: "ias",
                value: 12
            })
        ));
        assert!(matches!(
            AmdV1::new(AmdV1Config {
                ias: 48,
                oas: 53,
                ..cfg
            }),
            Err(Error::InvalidConfig {
                what: "oas",
                value: 53
            })
        ));
    }

    #[test]
    fn entries_as_the_spec_lays_them_out() {
        let f = format(48);
        let pa = PhysAddr::new(0x1234_5000);
        // PDE at the spec's level 4 pointing to a level-3 table.
        let pde = f.encode_table(3, pa);
        assert_eq!(pde, 0x1234_5000 | 1 | 3 << 9 | 1 << 61 | 1 << 62);
        assert!(f.is_table(3, pde) && f.is_table(3, pde | SPLIT));
        let pte = f.encode_leaf(0, pa, Prot::WRITE);
        assert_eq!(pte, 0x1234_5000 | 1 | 1 << 60 | 1 << 62);
        let big = f.encode_leaf(1, PhysAddr::new(0x4020_0000), Prot::READ);
        assert!(!f.is_table(1, big), "Next Level 0 is a leaf at every level");
        assert_eq!(next_level(big), 0);
        assert_eq!(f.leaf_prot(1, big), Prot::READ);
        assert_eq!(f.leaf_address(1, big | D).get(), 0x4020_0000);
    }

    /// Mode 6 has no sign extension: the engine maps the last page below 2^63 and a gigabyte under it, and
    /// the reference walker finds them there, under root entry 63 of 128.
    #[test]
    fn the_top_of_63_bits_with_six_levels() {
        use crate::mem::{Iova, WalkerCoherency};
        use crate::pgtable::testutil::test_alloc;
        use crate::pgtable::{Gather, InvalidationComplete, PageTable};
        use crate::sim::walk::{self, Access};

        let alloc = test_alloc();
        assert!(matches!(
            AmdV1::new(AmdV1Config {
                ias: 64,
                ..*format(48).config()
            }),
            Err(Error::InvalidConfig {
                what: "ias",
                value: 64
            })
        ));
        let t = PageTable::new(format(63), &alloc, WalkerCoherency::Coherent).unwrap();
        let cfg = walk::amdvi_v1::AmdV1Config {
            root: t.root(),
            mode: 6,
            oas: 48,
        };
        let top = 1u64 << 63;
        let (page, gig) = (top - (1 << 12), top - (1 << 30));
        t.map(Iova::new(page), PhysAddr::new(0x7000), 1 << 12, Prot::READ)
            .unwrap();
        t.map(
            Iova::new(gig - (1 << 30)),
            PhysAddr::new(1 << 30),
            1 << 30,
            Prot::WRITE,
        )
        .unwrap();
        let r = walk::amdvi_v1::translate(&alloc, &cfg, Iova::new(page + 8), Access::READ).unwrap();
        assert_eq!(
            (r.pa.get(), r.page_size_log2, r.attrs.force_coherent),
            (0x7008, 12, true)
        );
        let probe = Iova::new(gig - 8);
        let w = walk::amdvi_v1::translate(&alloc, &cfg, probe, Access::WRITE).unwrap();
        assert_eq!((w.pa.get(), w.page_size_log2), ((2 << 30) - 8, 30));
        assert!(walk::amdvi_v1::translate(&alloc, &cfg, probe, Access::READ).is_err());
        assert_eq!(walk::amdvi_v1::walk_all(&alloc, &cfg).unwrap().len(), 2);
        let mut gather = Gather::new();
        assert_eq!(t.unmap(Iova::new(page), 1 << 12, &mut gather), Ok(1 << 12));
        // SAFETY: no hardware walks the test table.
        gather
            .release(&alloc, unsafe { InvalidationComplete::assume() })
            .unwrap();
        assert_eq!(walk::amdvi_v1::walk_all(&alloc, &cfg).unwrap().len(), 1);
    }

    /// A 64 KiB map writes one size-encoded page: 16 identical PTEs with Next Level 7 and
    /// address bits 14:12 set (Table 14); unmapping one 4 KiB page of it first rewrites the 15
    /// others as Next Level 0 PTEs of their own addresses, and invalidates all 64 KiB.
    #[test]
    fn size_encoded_pages_are_written_whole_and_broken_before_a_cut() {
        use crate::mem::{Iova, WalkerCoherency};
        use crate::pgtable::testutil::test_alloc;
        use crate::pgtable::{Gather, InvalidationComplete, PageTable};
        use crate::sim::arena::PhysMem;

        let alloc = test_alloc();
        let f = format(39);
        assert_eq!(f.contiguous_runs(0), 0x1fe);
        let t = PageTable::new(f, &alloc, WalkerCoherency::Coherent).unwrap();
        let (iova, pa) = (0x4_0000u64, 0x1230_0000u64);
        t.map(
            Iova::new(iova),
            PhysAddr::new(pa),
            0x1_0000,
            Prot::READ | Prot::WRITE,
        )
        .unwrap();
        // The leaf table: root entry 0 -> level-2 entry 0 -> level-1 table.
        let mut table = t.root().get();
        for level in [2, 1] {
            let raw = alloc.read_u64(table).unwrap();
            assert_eq!(next_level(raw), level);
            table = f.table_address(raw).get();
        }
        let raw = |i: u64| alloc.read_u64(table + 8 * i).unwrap();
        let want = pa | 0x7000 | 7 << 9 | PR | IR | IW | FC;
        assert!((64..80).all(|i| raw(i) == want), "16 copies of {want:#x}");
        assert_eq!(f.leaf_run_log2(0, want), 4);
        assert_eq!(f.leaf_address(0, want).get(), pa);
        assert_eq!(
            t.query(Iova::new(iova + 0x5008)).unwrap().pa.get(),
            pa + 0x5008
        );
        let mut gather = Gather::new();
        assert_eq!(
            t.unmap(Iova::new(iova + 0x3000), 0x1000, &mut gather),
            Ok(0x1000)
        );
        for i in 64..80 {
            let own = pa + ((i - 64) << 12);
            let expect = if i == 67 { 0 } else { own | PR | IR | IW | FC };
            assert_eq!(raw(i), expect, "entry {i}");
        }
        let span = gather.span().unwrap();
        assert!(span.start.get() <= iova && iova + 0x1_0000 <= span.end.get());
        // SAFETY: no hardware walks the test table.
        gather
            .release(&alloc, unsafe { InvalidationComplete::assume() })
            .unwrap();
    }
}
