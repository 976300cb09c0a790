//! The x86-64 4- and 5-level paging entry layout, shared by the VT-d first-stage ([`super::vtd_fs`])
//! and the AMD-Vi v2 guest ([`super::amdvi_v2`]) formats: both units walk the processor's own
//! format.
//!
//! Intel SDM vol. 3A §4.5 "4-Level Paging and 5-Level Paging" (Tables 4-15 to 4-20); AMD64
//! Architecture Programmer's Manual vol. 2 (24593) §5.3 "Long-Mode Page Translation" and §5.4
//! "Page-Translation-Table Entry Fields".
//!
//! Entry bits: P (0), R/W (1), U/S (2), PWT (3), PCD (4), A (5), D (6, leaf), PS (7), ADDR
//! (51:12), XD/NX (63). The engine sets A (and D on writable leaves unless dirty tracking is on)
//! so the walker need not perform locked A/D updates.

pub(super) const P: u64 = 1 << 0;
pub(super) const RW: u64 = 1 << 1;
pub(super) const US: u64 = 1 << 2;
pub(super) const PWT: u64 = 1 << 3;
pub(super) const PCD: u64 = 1 << 4;
pub(super) const A: u64 = 1 << 5;
pub(super) const D: u64 = 1 << 6;
pub(super) const PS: u64 = 1 << 7;
pub(super) const XD: u64 = 1 << 63;
pub(super) const ADDR: u64 = 0x000f_ffff_ffff_f000;
/// Bit 52 (ignored in every paging-structure entry: SDM "Formats of Paging Entries", APM
/// "Available to Software"): software's mark of a table made by a split.
pub(super) const SPLIT: u64 = 1 << 52;

/// Level count and input bits: canonical lower-half addresses, 47 bits with 4 levels, 56 with 5
/// (DMA addresses are the lower half, so the root's upper 256 entries stay unused).
pub(super) fn geometry(
    levels: u32,
    oas: u32,
    page_1g: bool,
) -> Result<super::Geometry, super::Error> {
    if !matches!(levels, 4 | 5) {
        return Err(super::Error::InvalidConfig {
            what: "levels",
            value: levels.into(),
        });
    }
    if !(32..=52).contains(&oas) {
        return Err(super::Error::InvalidConfig {
            what: "haw",
            value: oas.into(),
        });
    }
    let sizes = 1 << 12 | 1 << 21 | u64::from(page_1g) << 30;
    let ias = 12 + 9 * levels - 1;
    super::Geometry::with_levels(12, ias, oas, levels, 8, sizes)
}

/// The [`super::Format`] methods of the x86-64 layout, for a type with fields `geometry` and
/// `cfg` (with `execute_disable` and `dirty_tracking`).
macro_rules! x86_paging_format_methods {
    () => {
        #[inline]
        fn geometry(&self) -> &Geometry {
            &self.geometry
        }

        #[inline]
        fn is_present(&self, raw: u64) -> bool {
            raw & x86::P != 0
        }

        #[inline]
        fn present_mask(&self) -> Option<u64> {
            Some(x86::P)
        }

        #[inline]
        fn is_table(&self, level: u32, raw: u64) -> bool {
            level > 0 && raw & x86::PS == 0
        }

        #[inline]
        fn table_address(&self, raw: u64) -> PhysAddr {
            PhysAddr::new(raw & x86::ADDR)
        }

        #[inline]
        fn encode_table(&self, _level: u32, table: PhysAddr) -> u64 {
            // Permissions combine as the most restrictive along the walk: tables grant
            // everything.
            table.get() | x86::P | x86::RW | x86::US | x86::A
        }

        #[inline]
        fn split_table_bit(&self) -> u64 {
            x86::SPLIT
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
            let mut e = pa.get() | x86::P | x86::A;
            if prot.contains(Prot::WRITE) {
                e |= x86::RW;
                if !self.cfg.dirty_tracking {
                    e |= x86::D;
                }
            }
            if !prot.contains(Prot::PRIV) {
                e |= x86::US;
            }
            if self.cfg.execute_disable && !prot.contains(Prot::EXEC) {
                e |= x86::XD;
            }
            if level > 0 {
                e |= x86::PS;
            }
            if prot.contains(Prot::MMIO) {
                // PAT index 3 (PAT = 0, PCD, PWT): UC in the architectural PAT.
                e |= x86::PCD | x86::PWT;
            }
            e
        }

        #[inline]
        fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
            PhysAddr::new(raw & x86::ADDR & !((1u64 << self.geometry.level_shift(level)) - 1))
        }

        #[inline]
        fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
            let mut p = Prot::READ;
            p.set(Prot::WRITE, raw & x86::RW != 0);
            p.set(Prot::PRIV, raw & x86::US == 0);
            p.set(Prot::EXEC, !self.cfg.execute_disable || raw & x86::XD == 0);
            p.set(Prot::MMIO, raw & x86::PCD != 0);
            p
        }

        fn relevel_leaf(&self, raw: u64, from: u32, to: u32, pa: PhysAddr) -> u64 {
            // Bit 12 is PAT in a large-page entry but address in a PTE; the engine never sets
            // PAT.
            let _ = from;
            let attrs = raw & !x86::ADDR & !x86::PS;
            attrs | pa.get() | if to > 0 { x86::PS } else { 0 }
        }

        fn dirty_tracking(&self) -> bool {
            self.cfg.dirty_tracking
        }

        #[inline]
        fn leaf_is_dirty(&self, raw: u64) -> bool {
            raw & x86::D != 0
        }

        #[inline]
        fn leaf_clear_dirty(&self, raw: u64) -> u64 {
            raw & !x86::D
        }
    };
}
pub(super) use x86_paging_format_methods;
