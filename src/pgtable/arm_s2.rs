//! Arm VMSAv8-64 stage-2 translation tables, as an SMMUv3 walks them for an STE's S2TTB.
//!
//! Arm ARM (DDI 0487 K.a) D8.3.1 (descriptor formats), D8.5.3 "Stage 2 memory type and
//! Cacheability attributes" (MemAttr, and with FEAT_S2FWB the FWB encoding), D8.4.2 (S2AP),
//! D8.2.8 "Concatenated translation tables for the initial stage 2 lookup"; SMMUv3 (IHI 0070
//! G.b) §5.2 STE fields S2T0SZ/S2SL0/S2TG/S2PS that describe this table.
//!
//! Levels (this crate -> Arm lookup level, 4 KiB granule, 48-bit IAS): 0 -> 3 (page),
//! 1 -> 2 (2 MiB block), 2 -> 1 (1 GiB block), 3 -> 0. The start level is chosen with up to 16
//! concatenated tables, so that the walk is as short as the architecture allows.
//!
//! Leaf bits: MemAttr (5:2; Device-nGnRE 0b0001 for [`Prot::MMIO`]), S2AP (7:6: bit 6 read, bit 7 write), SH (9:8), AF (10), DBM (51),
//! Contiguous (52), XN (54:53). The engine sets Contiguous on every naturally aligned run of
//! leaves a map covers (Arm ARM "The Contiguous bit") when the configuration has `bbml2` and no
//! dirty tracking; a partial unmap clears it from the rest of the run first.

use super::arm_vmsa::{self as vmsa, AF, DBM, SH_INNER, SH_OUTER, SH_SHIFT};
use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

const S2AP_R: u64 = 1 << 6;
const S2AP_W: u64 = 1 << 7;
const MEMATTR_SHIFT: u32 = 2;
const XN: u64 = 0b10 << 53;
const XN_MASK: u64 = 0b11 << 53;
const MEMATTR_MASK: u64 = 0b1111 << MEMATTR_SHIFT;
/// MemAttr of [`Prot::MMIO`] leaves: Device-nGnRE, with and without FWB (MemAttr\[2\] = 0
/// is Device in both encodings, and stage 2 Device wins over any stage-1 type).
const MEMATTR_DEVICE_NGNRE: u64 = 0b0001;

/// The bits of `prot` a leaf encodes (READ, WRITE, EXEC, PRIV, MMIO): `prot`'s index in a row
/// of [`LEAF_BITS`].
const PROT_INDEX: u8 = 0x1f;
const _: () = assert!(Prot::all().bits() == PROT_INDEX);

/// [`ArmS2::leaf_bits`] without the descriptor type, for every configuration that changes
/// them (row `2 * attributes + dirty_tracking`, see [`ArmS2::leaf_row`]) and every value of
/// `prot`'s bits (the column). Worked out at compile time and read with one load (issue 18,
/// goal 3: worked out per call, the bits were 22 instructions of a one-page map, callgrind);
/// in read-only data, not in the format: a `PageTable` holds its format on kernel stacks.
/// Rows 6 and 7 are no configuration's (`leaf_row` is at most 5 rows in): they repeat rows 0
/// and 1, so that any `u8` index is in bounds without a test.
static LEAF_BITS: [u64; 256] = {
    let mut bits = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        let row = (i >> 5) % 6;
        let attributes = match row / 2 {
            0 => S2Attributes::NonCoherent,
            1 => S2Attributes::WriteBack,
            _ => S2Attributes::ForcedWriteBack,
        };
        bits[i] = ArmS2::prot_bits(attributes, row % 2 == 1, (i & 0x1f) as u64);
        i += 1;
    }
    bits
};

/// The memory attributes every leaf gets, fixed by the domain's snoop policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2Attributes {
    /// Normal, Inner and Outer Non-cacheable (MemAttr = 0b0101), Outer Shareable: DMA is not
    /// forced coherent (the stage-1 or device attributes decide).
    NonCoherent,
    /// Normal, Inner and Outer Write-Back (MemAttr = 0b1111), Inner Shareable: combined with
    /// the device's attributes, coherent where stage 1 or the transaction is cacheable.
    WriteBack,
    /// FEAT_S2FWB (`IDR3.FWB`, STE.S2FWB = 1): MemAttr = 0b0110 forces Normal Write-Back
    /// whatever the transaction or stage 1 says: coherency enforced.
    ForcedWriteBack,
}

/// Configuration of an Arm stage-2 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS2Config {
    /// Log2 of the granule: 12, 14 or 16 (`IDR5.GRAN4K/16K/64K`).
    pub granule_log2: u32,
    /// Input (IPA) size in bits, 32..=48 (52 with the 64 KiB granule): STE.S2T0SZ = 64 - ias.
    pub ias: u32,
    /// Output size in bits (`IDR5.OAS`, STE.S2PS): 32..=48, 52 with the 64 KiB granule.
    pub oas: u32,
    /// Allow block leaves (2 MiB/1 GiB, 32 MiB, 512 MiB).
    pub blocks: bool,
    /// Leaf memory attributes.
    pub attributes: S2Attributes,
    /// Set DBM on writable leaves: the SMMU marks them dirty (`IDR0.HTTU` = 2, STE.S2HD).
    pub dirty_tracking: bool,
    /// Replacing a block by a table, or changing the Contiguous bit of live leaves, needs no
    /// break-before-make (FEAT_BBM level 2, `IDR3.BBML` = 2). Also enables the contiguous hint.
    pub bbml2: bool,
}

/// The Arm stage-2 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS2 {
    cfg: ArmS2Config,
    geometry: Geometry,
    /// What the descriptor code works out from the configuration once.
    derived: vmsa::Derived,
}

impl ArmS2 {
    /// Builds the format, choosing the start level with concatenated root tables.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unsupported granule, IAS or OAS.
    pub fn new(cfg: ArmS2Config) -> Result<Self, Error> {
        vmsa::check_granule_oas(cfg.granule_log2, cfg.oas)?;
        let max_ias = if cfg.granule_log2 == 16 { 52 } else { 48 };
        if !(32..=max_ias).contains(&cfg.ias) {
            return Err(Error::InvalidConfig {
                what: "ias",
                value: cfg.ias.into(),
            });
        }
        let mut pages = 1 << cfg.granule_log2;
        if cfg.blocks {
            pages |= vmsa::block_sizes(cfg.granule_log2);
        }
        let natural = vmsa::natural_geometry(cfg.granule_log2, cfg.ias, cfg.oas)?;
        let bits = cfg.granule_log2 - 3;
        // Fold a root of at most 16 entries into 16 concatenated next-level tables.
        let (levels, top_bits) = if natural.levels > 1 && natural.top_bits <= 4 {
            (natural.levels - 1, natural.top_bits + bits)
        } else {
            (natural.levels, natural.top_bits)
        };
        let probe = Geometry {
            granule_log2: cfg.granule_log2,
            levels,
            top_bits,
            ias: cfg.ias,
            oas: cfg.oas,
            page_sizes: 0,
        };
        let valid = (0..levels).fold(0u64, |m, l| m | 1 << probe.level_shift(l));
        let geometry = Geometry::with_levels(
            cfg.granule_log2,
            cfg.ias,
            cfg.oas,
            levels,
            top_bits,
            pages & valid,
        )?;
        let hint = vmsa::use_contiguous(cfg.bbml2, cfg.dirty_tracking);
        let normal = Self::normal_attributes(cfg.attributes);
        let row = Self::leaf_row(cfg.attributes, cfg.dirty_tracking);
        Ok(Self {
            cfg,
            geometry,
            derived: vmsa::Derived::new(&geometry, normal, hint, row),
        })
    }

    /// Where the configuration's row of [`LEAF_BITS`] starts.
    const fn leaf_row(attributes: S2Attributes, dirty_tracking: bool) -> u8 {
        let attributes = match attributes {
            S2Attributes::NonCoherent => 0,
            S2Attributes::WriteBack => 1,
            S2Attributes::ForcedWriteBack => 2,
        };
        (2 * attributes + dirty_tracking as u8) << 5
    }

    /// The configuration.
    pub const fn config(&self) -> &ArmS2Config {
        &self.cfg
    }

    /// Arm lookup level of the root (0..=3), as in "starting level" of D8.2.
    pub const fn start_level(&self) -> u32 {
        4 - self.geometry.levels
    }

    /// STE.S2SL0 / VTCR_EL2.SL0 for the start level: with the 4 KiB granule 0, 1, 2 select
    /// levels 2, 1, 0; with 16 KiB and 64 KiB they select levels 3, 2, 1 (IHI 0070 G.b §5.2).
    pub const fn sl0(&self) -> u64 {
        let top = if self.cfg.granule_log2 == 12 { 2 } else { 3 };
        (top - self.start_level()) as u64
    }

    /// STE.S2T0SZ / VTCR_EL2.T0SZ: 64 minus the input size.
    pub const fn t0sz(&self) -> u64 {
        (64 - self.cfg.ias) as u64
    }

    /// Number of concatenated root tables (1 to 16).
    pub const fn concatenated(&self) -> u32 {
        1 << self
            .geometry
            .top_bits
            .saturating_sub(self.cfg.granule_log2 - 3)
    }

    /// MemAttr, SH and AF of Normal memory leaves, fixed by the domain's snoop policy.
    const fn normal_attributes(attributes: S2Attributes) -> u64 {
        let (memattr, sh) = match attributes {
            S2Attributes::NonCoherent => (0b0101, SH_OUTER),
            S2Attributes::WriteBack => (0b1111, SH_INNER),
            S2Attributes::ForcedWriteBack => (0b0110, SH_INNER),
        };
        memattr << MEMATTR_SHIFT | sh << SH_SHIFT | AF
    }

    /// Every bit of a leaf at `level` with `prot` but its output address (and the hint): the
    /// configuration's entry of [`LEAF_BITS`] for `prot` and the descriptor type of `level`.
    #[inline]
    fn leaf_bits(&self, level: u32, prot: Prot) -> u64 {
        // Within the table for every `u8` (its size), and of this configuration's row: the
        // row's start is a multiple of 32, `prot`'s bits below 32.
        let index = self.derived.leaf_row() | prot.bits() & PROT_INDEX;
        LEAF_BITS[usize::from(index)] | vmsa::leaf_type(level)
    }

    /// [`Self::leaf_bits`] without the descriptor type, for the Normal attributes of
    /// `attributes`, with dirty tracking or not, and `prot`'s bits `p`: branch-free from them,
    /// which sit where S2AP and XN want them shifted (the assertions below).
    const fn prot_bits(attributes: S2Attributes, dirty_tracking: bool, p: u64) -> u64 {
        const _: () = assert!((Prot::READ.bits() as u64) << 6 == S2AP_R);
        const _: () = assert!((Prot::WRITE.bits() as u64) << 6 == S2AP_W);
        const _: () = assert!((Prot::WRITE.bits() as u64) << 50 == DBM);
        const _: () = assert!((Prot::EXEC.bits() as u64) << 52 == XN);
        let attributes = if p & Prot::MMIO.bits() as u64 != 0 {
            MEMATTR_DEVICE_NGNRE << MEMATTR_SHIFT | SH_OUTER << SH_SHIFT | AF
        } else {
            Self::normal_attributes(attributes)
        };
        // With DBM a writable page starts dirty: S2AP write set, DBM marks it trackable.
        let dbm = if dirty_tracking { p << 50 & DBM } else { 0 };
        attributes | (p << 6 & (S2AP_R | S2AP_W)) | dbm | (!p << 52 & XN)
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with bits 1:0 = 0b11, and every leaf above level 0 is a block (bit 1 clear); AF and S2AP\[1\]
// (bits 10, 7), the only bits the walker sets, lie outside the address field, and so does the
// split mark (bit 55, IGNORED in table descriptors). Bit 0 clear is invalid.
unsafe impl Format for ArmS2 {
    vmsa::vmsa_shared_format_methods!();

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        if prot.intersects(Prot::READ | Prot::WRITE) && !prot.contains(Prot::PRIV) {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }

    #[inline]
    fn encode_leaf(&self, level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        vmsa::encode_addr(self.cfg.granule_log2, pa.get()) | self.leaf_bits(level, prot)
    }

    #[inline]
    fn leaf_template(&self, level: u32, n_log2: u32, prot: Prot) -> u64 {
        let hint = if n_log2 == 0 { 0 } else { vmsa::CONTIGUOUS };
        self.leaf_bits(level, prot) | hint
    }

    #[inline]
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let mut p = Prot::empty();
        p.set(Prot::READ, raw & S2AP_R != 0);
        p.set(Prot::WRITE, raw & (S2AP_W | DBM) != 0);
        p.set(Prot::EXEC, raw & XN_MASK == 0);
        // MemAttr[3:2] = 0b00: Device (both encodings; the Normal ones never have it).
        p.set(
            Prot::MMIO,
            raw & MEMATTR_MASK & 0b1100 << MEMATTR_SHIFT == 0,
        );
        p
    }

    #[inline]
    fn leaf_is_dirty(&self, raw: u64) -> bool {
        raw & (DBM | S2AP_W) == DBM | S2AP_W
    }

    #[inline]
    fn leaf_clear_dirty(&self, raw: u64) -> u64 {
        raw & !S2AP_W
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration reads its own row of `LEAF_BITS`: a leaf's bits are those worked
    /// out from the configuration, for every value of `prot`'s bits and every level.
    #[test]
    fn leaf_bits_come_from_the_configurations_row() {
        for attributes in [
            S2Attributes::NonCoherent,
            S2Attributes::WriteBack,
            S2Attributes::ForcedWriteBack,
        ] {
            for dirty_tracking in [false, true] {
                let f = ArmS2::new(ArmS2Config {
                    granule_log2: 12,
                    ias: 48,
                    oas: 48,
                    blocks: true,
                    attributes,
                    dirty_tracking,
                    bbml2: false,
                })
                .unwrap();
                for bits in 0..=u8::MAX {
                    let prot = Prot::from_bits_retain(bits);
                    let p = u64::from(bits & PROT_INDEX);
                    for level in 0..4 {
                        assert_eq!(
                            f.leaf_bits(level, prot),
                            ArmS2::prot_bits(attributes, dirty_tracking, p) | vmsa::leaf_type(level),
                            "{attributes:?}, dirty tracking {dirty_tracking}, {bits:#x}, level {level}"
                        );
                    }
                }
            }
        }
    }
}
