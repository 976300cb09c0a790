//! Descriptor bits shared by the Arm VMSAv8-64 stage-1 and stage-2 formats.
//!
//! Arm Architecture Reference Manual for A-profile (DDI 0487 K.a), D8.3 "Translation table
//! descriptor formats": bits 1:0 tell invalid / block / table-or-page; the next-level table
//! address and the output address sit in bits 47:granule, and with the 64 KiB granule and a
//! 52-bit output size (FEAT_LPA) OA[51:48] sit in bits 15:12.

use super::{Error, Geometry};
use crate::mem::PhysAddr;

pub(super) const VALID: u64 = 1 << 0;
/// Bit 1: table (levels 0-2 of the spec) or page (level 3) when set; block when clear.
pub(super) const TABLE_OR_PAGE: u64 = 1 << 1;
pub(super) const AF: u64 = 1 << 10;
pub(super) const SH_SHIFT: u32 = 8;
pub(super) const SH_OUTER: u64 = 0b10;
pub(super) const SH_INNER: u64 = 0b11;
pub(super) const DBM: u64 = 1 << 51;
pub(super) const CONTIGUOUS: u64 = 1 << 52;
/// Bit 55 of a table descriptor (bits 58:51 are IGNORED, Arm ARM "Table descriptor format"):
/// software's mark of a table made by a split.
pub(super) const SPLIT: u64 = 1 << 55;
const ADDR_47_12: u64 = 0x0000_ffff_ffff_f000;
const OA_51_48_LOW: u64 = 0xf << 12;

/// Whether `raw` at `level` points to a table (a page at level 0 has the same bits).
#[inline]
pub(super) const fn is_table(level: u32, raw: u64) -> bool {
    level > 0 && raw & TABLE_OR_PAGE != 0
}

/// Encodes an output or table address for the granule (OA[51:48] in bits 15:12 for 64 KiB).
#[inline]
pub(super) const fn encode_addr(granule_log2: u32, pa: u64) -> u64 {
    if granule_log2 == 16 {
        (pa & ADDR_47_12) | (pa >> 48 & 0xf) << 12
    } else {
        pa & ADDR_47_12
    }
}

/// [`encode_addr`] without the granule test, for an output address of a table's own output
/// size: OA[51:48] is 0 below 2^48 (the 4 KiB and 16 KiB granules' largest output size), so
/// moving it into bits 15:12 changes nothing there.
#[inline]
pub(super) const fn encode_addr_any_granule(pa: u64) -> u64 {
    (pa & ADDR_47_12) | (pa >> 48 & 0xf) << 12
}

/// Decodes the address of a descriptor whose address field starts at bit `shift`.
#[inline]
pub(super) const fn decode_addr(granule_log2: u32, raw: u64, shift: u32) -> u64 {
    let low = raw & ADDR_47_12 & !((1u64 << shift) - 1);
    if granule_log2 == 16 {
        (low & !OA_51_48_LOW) | (raw & OA_51_48_LOW) >> 12 << 48
    } else {
        low
    }
}

/// What the descriptor code of one configuration works out once, in the format's `new`: how a
/// table descriptor holds its table's address, the leaf bits no `prot` changes (stage 2: the
/// row of its table of leaf bits), and the hint's run size per level. 16 bytes, as the two
/// masks it replaced: a `PageTable` holds its format, and every byte of it is on the kernel
/// stack of the calls that build or move a domain.
///
/// The descent decodes one table address per level, and `map` / `unmap` ask for the hint's run
/// size at every run they write, break or clear: worked out from the configuration each time,
/// these were 5 and about 20 instructions (issue 18, goal 1: callgrind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Derived {
    /// Bits 47:granule: where a table descriptor holds its table's address below OA\[51:48\].
    table_low: u64,
    /// OA\[51:48\] (bits 15:12) with the 64 KiB granule, 0 with the others.
    table_high: u16,
    /// The leaf bits of Normal memory that the configuration fixes (attribute index or
    /// MemAttr, SH, AF and, at stage 1, nG): bits 11:2, so 16 bits hold them.
    normal_leaf: u16,
    /// Log2 of the contiguous hint's run at engine level `l` in bits `4l + 3 : 4l` (0: no
    /// hint there; levels 0-3, the most a VMSAv8-64 table without FEAT_LPA2 has).
    contiguous: u16,
    /// Where the format's table of leaf bits per `prot` starts for this configuration (stage
    /// 2's `LEAF_BITS`: a multiple of 32, one entry per value of `prot`'s five bits), 0 where
    /// the format has none (stage 1).
    leaf_row: u8,
}

const _: () = assert!(core::mem::size_of::<Derived>() == 16);

impl Derived {
    /// For a table of `geometry` (`granule_log2` its granule) whose Normal leaves carry
    /// `normal_leaf`, with the hint on (`hint`: see [`use_contiguous`]), and `leaf_row` (see
    /// [`Self::leaf_row`](field@Self::leaf_row)).
    pub(super) fn new(geometry: &Geometry, normal_leaf: u64, hint: bool, leaf_row: u8) -> Self {
        let granule_log2 = geometry.granule_log2;
        let below_granule = 1u64.wrapping_shl(granule_log2).wrapping_sub(1);
        let mut contiguous = 0u16;
        for level in 0..geometry.levels.min(4) {
            if hint && geometry.leaf_allowed(level) {
                // At most 7 (`contiguous_log2`): four bits.
                contiguous |= (contiguous_log2(granule_log2, level) as u16) << (4 * level);
            }
        }
        Self {
            table_low: ADDR_47_12 & !below_granule,
            table_high: if granule_log2 == 16 { 0xf000 } else { 0 },
            // Bits 11:2 only: the callers' attributes (checked by the conformance suite's
            // encodings, which go through this field).
            normal_leaf: (normal_leaf & 0xffc) as u16,
            contiguous,
            leaf_row,
        }
    }

    /// The table address in the table descriptor `raw`: `decode_addr(granule_log2, raw,
    /// granule_log2)` without its granule test.
    #[inline]
    pub(super) const fn table_address(self, raw: u64) -> u64 {
        (raw & self.table_low) | (raw & self.table_high as u64) << 36
    }

    /// The mask that is [`Self::table_address`] for every table descriptor the engine writes
    /// in a table of at most 48 output bits (`oas`): OA\[51:48\] is 0 there, and the bits
    /// between bit 12 and the granule are 0 (a table is aligned to the granule, and the walker
    /// sets no bit there). One constant for every granule: the compiler folds it into what
    /// the descent does next (an allocator's range test).
    #[inline]
    pub(super) const fn table_address_mask(oas: u32) -> Option<u64> {
        if oas <= 48 {
            Some(ADDR_47_12)
        } else {
            None
        }
    }

    /// See [`Self::normal_leaf`](field@Self::normal_leaf).
    #[inline]
    pub(super) const fn normal_leaf(self) -> u64 {
        self.normal_leaf as u64
    }

    /// See [`Self::leaf_row`](field@Self::leaf_row).
    #[inline]
    pub(super) const fn leaf_row(self) -> u8 {
        self.leaf_row
    }

    /// Log2 of the hint's run at `level` (0: none).
    #[inline]
    pub(super) const fn contiguous_log2(self, level: u32) -> u32 {
        if level < 4 {
            (self.contiguous >> (4 * level) & 0xf) as u32
        } else {
            0
        }
    }
}

/// The descriptor type bits of a leaf at `level`: page (0b11) at level 0, block (0b01) above.
#[inline]
pub(super) const fn leaf_type(level: u32) -> u64 {
    if level == 0 {
        VALID | TABLE_OR_PAGE
    } else {
        VALID
    }
}

/// Log2 of the number of entries one Contiguous bit spans at engine `level` (0 = Arm lookup
/// level 3), Arm ARM "The Contiguous bit": 4 KiB granule: 16 entries at levels 3, 2 and 1;
/// 16 KiB: 128 pages, 32 level-2 blocks; 64 KiB: 32 pages, 32 level-2 blocks. 0 elsewhere.
pub(super) const fn contiguous_log2(granule_log2: u32, level: u32) -> u32 {
    match (granule_log2, level) {
        (12, 0..=2) => 4,
        (14, 0) => 7,
        (14, 1) | (16, 0) | (16, 1) => 5,
        _ => 0,
    }
}

/// Whether the engine sets the Contiguous bit: only if a run can later be broken in place
/// (FEAT_BBM level 2: changing the hint of live entries needs no break-before-make) and hardware
/// does not track dirty state (with DBM it may record a write in any one entry of a contiguous
/// run, so the dirty state of each page could no longer be told apart).
pub(super) const fn use_contiguous(bbml2: bool, dirty_tracking: bool) -> bool {
    bbml2 && !dirty_tracking
}

/// Block sizes each granule allows (Arm ARM D8.2.7): 4K: 1G, 2M; 16K: 32M (64G needs
/// FEAT_LPA2); 64K: 512M (4T needs FEAT_LPA).
pub(super) const fn block_sizes(granule_log2: u32) -> u64 {
    match granule_log2 {
        12 => 1 << 21 | 1 << 30,
        14 => 1 << 25,
        _ => 1 << 29,
    }
}

/// Checks granule and output size (a PS/IPS encoding): 52 bits only with the 64 KiB granule (FEAT_LPA; the 4K/16K
/// 52-bit descriptors of FEAT_LPA2 are not supported).
pub(super) fn check_granule_oas(granule_log2: u32, oas: u32) -> Result<(), Error> {
    if !matches!(granule_log2, 12 | 14 | 16) {
        return Err(Error::InvalidConfig {
            what: "granule_log2",
            value: granule_log2.into(),
        });
    }
    let max = if granule_log2 == 16 { 52 } else { 48 };
    // Only the sizes VTCR_EL2.PS / STE.S2PS / CD.IPS can encode.
    if !matches!(oas, 32 | 36 | 40 | 42 | 44 | 48 | 52) || oas > max {
        return Err(Error::InvalidConfig {
            what: "oas",
            value: oas.into(),
        });
    }
    Ok(())
}

/// Clears the leaf type and address of `raw` and re-encodes it at `to` for `pa`.
#[inline]
pub(super) const fn relevel(granule_log2: u32, raw: u64, to: u32, pa: PhysAddr) -> u64 {
    // The pieces of a split block are no longer part of a contiguous run.
    let attrs = raw & !(ADDR_47_12 | VALID | TABLE_OR_PAGE | CONTIGUOUS);
    attrs | encode_addr(granule_log2, pa.get()) | leaf_type(to)
}

/// Level count and root width for a table of `ias` bits.
pub(super) fn natural_geometry(granule_log2: u32, ias: u32, oas: u32) -> Result<Geometry, Error> {
    Geometry::new(granule_log2, ias, oas, 1 << granule_log2)
}

/// The [`super::Format`] methods stage 1 and stage 2 share, for a type with fields `geometry`
/// and `cfg` (with `granule_log2`, `bbml2` and `dirty_tracking`).
macro_rules! vmsa_shared_format_methods {
    () => {
        #[inline]
        fn geometry(&self) -> &Geometry {
            &self.geometry
        }

        #[inline]
        fn is_present(&self, raw: u64) -> bool {
            raw & vmsa::VALID != 0
        }

        #[inline]
        fn present_mask(&self) -> Option<u64> {
            Some(vmsa::VALID)
        }

        #[inline]
        fn is_table(&self, level: u32, raw: u64) -> bool {
            vmsa::is_table(level, raw)
        }

        #[inline]
        fn table_address(&self, raw: u64) -> PhysAddr {
            PhysAddr::new(self.derived.table_address(raw))
        }

        #[inline]
        fn table_address_mask(&self) -> Option<u64> {
            vmsa::Derived::table_address_mask(self.cfg.oas)
        }

        #[inline]
        fn encode_table(&self, _level: u32, table: PhysAddr) -> u64 {
            let addr = vmsa::encode_addr(self.cfg.granule_log2, table.get());
            addr | vmsa::VALID | vmsa::TABLE_OR_PAGE
        }

        #[inline]
        fn split_table_bit(&self) -> u64 {
            vmsa::SPLIT
        }

        #[inline]
        fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
            let shift = self.geometry.level_shift(level);
            PhysAddr::new(vmsa::decode_addr(self.cfg.granule_log2, raw, shift))
        }

        #[inline]
        fn leaf_from_template(
            &self,
            template: u64,
            _level: u32,
            _n_log2: u32,
            pa: PhysAddr,
        ) -> u64 {
            // Branch-free: the engine maps only output addresses below 2^oas, and 4 KiB / 16 KiB
            // tables have at most 48 output bits, so OA[51:48] moved into bits 15:12 is 0
            // there and this is `encode_addr` for every granule (no per-leaf granule test).
            template | vmsa::encode_addr_any_granule(pa.get())
        }

        #[inline]
        fn leaf_address_in_place(&self, _level: u32, _n_log2: u32) -> bool {
            // Below 2^48 (every 4 KiB and 16 KiB table, and 64 KiB tables of up to 48 output
            // bits) an aligned output address is its own encoding: OA[51:48] is 0.
            self.cfg.oas <= 48
        }

        fn relevel_leaf(&self, raw: u64, _from: u32, to: u32, pa: PhysAddr) -> u64 {
            vmsa::relevel(self.cfg.granule_log2, raw, to, pa)
        }

        fn hitless_split(&self) -> bool {
            self.cfg.bbml2
        }

        #[inline]
        fn contiguous_bit(&self) -> u64 {
            vmsa::CONTIGUOUS
        }

        #[inline]
        fn contiguous_log2(&self, level: u32) -> u32 {
            self.derived.contiguous_log2(level)
        }

        #[inline]
        fn contiguous_runs(&self, level: u32) -> u32 {
            match self.derived.contiguous_log2(level) {
                0 => 0,
                n => 1 << n,
            }
        }

        #[inline]
        fn leaf_run_log2(&self, level: u32, raw: u64) -> u32 {
            if raw & vmsa::CONTIGUOUS != 0 {
                self.derived.contiguous_log2(level)
            } else {
                0
            }
        }

        #[inline]
        fn leaf_out_of_run(&self, _level: u32, raw: u64, _pa: PhysAddr) -> u64 {
            raw & !vmsa::CONTIGUOUS
        }

        fn dirty_tracking(&self) -> bool {
            self.cfg.dirty_tracking
        }
    };
}
pub(super) use vmsa_shared_format_methods;

#[cfg(test)]
mod tests {
    use super::*;

    /// `Derived::table_address` is `decode_addr` at the granule's own shift, for every granule
    /// and any descriptor bits (the engine's own table entries and anything else).
    #[test]
    fn table_addr_decodes_as_decode_addr() {
        let raws = [
            0,
            u64::MAX,
            0x0000_ffff_ffff_f003,
            0x0000_1234_5678_9abf,
            0x00f0_0000_4000_f003,
            0x8000_0000_0001_5003,
            0x5555_5555_5555_5555,
            0xaaaa_aaaa_aaaa_aaaa,
        ];
        for g in [12, 14, 16] {
            let geometry = natural_geometry(g, 48, if g == 16 { 52 } else { 48 }).unwrap();
            let t = Derived::new(&geometry, 0, true, 0);
            for raw in raws {
                assert_eq!(
                    t.table_address(raw),
                    decode_addr(g, raw, g),
                    "granule 2^{g}, {raw:#x}"
                );
            }
        }
    }
}
