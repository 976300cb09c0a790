//! Arm VMSAv8-64 stage-1 translation tables, as an SMMUv3 walks them for a CD's TTB0.
//!
//! Arm ARM (DDI 0487 K.a) D8.3.1 (descriptor formats), D8.4.1 (stage 1 data access
//! permissions, AP\[2:1\]), D8.5.2 (AttrIndx and MAIR), D8.4.5 (PXN/UXN); SMMUv3 (IHI 0070 G.b)
//! §5.4 CD fields T0SZ/TG0/IPS/MAIR that describe this table.
//!
//! Levels (this crate -> Arm lookup level, 4 KiB granule, 48-bit VA): 0 -> 3, 1 -> 2, 2 -> 1,
//! 3 -> 0. Stage 1 has no concatenation: a short VA leaves the root partly used.
//!
//! Leaf bits: AttrIndx (4:2: Normal WB or NC by the table's coherency, Device-nGnRE for
//! [`Prot::MMIO`]), AP (7:6: AP\[1\] = EL0 access, AP\[2\] = read-only), SH (9:8), AF
//! (10), nG (11, set: translations are tagged with the CD's ASID), DBM (51), Contiguous (52),
//! PXN (53), UXN (54). Contiguous is set as for stage 2 (see [`super::arm_s2`]).

use super::arm_vmsa::{self as vmsa, AF, DBM, SH_INNER, SH_OUTER, SH_SHIFT};
use super::{Error, Format, Geometry, Prot};
use crate::mem::PhysAddr;

const ATTRINDX_SHIFT: u32 = 2;
const AP_EL0: u64 = 1 << 6;
const AP_RO: u64 = 1 << 7;
const NG: u64 = 1 << 11;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;

/// MAIR value the stage-1 format expects in the CD (MAIR0): Attr0 = Normal Write-Back
/// read/write-allocate (0xff), Attr1 = Normal Non-cacheable (0x44), Attr2 = Device-nGnRE (0x04).
pub const MAIR: u64 = 0x04_44_ff;
/// AttrIndx of Normal Write-Back in [`MAIR`].
pub const ATTR_INDEX_WB: u64 = 0;
/// AttrIndx of Normal Non-cacheable in [`MAIR`].
pub const ATTR_INDEX_NC: u64 = 1;
/// AttrIndx of Device-nGnRE in [`MAIR`]: leaves of [`Prot::MMIO`].
pub const ATTR_INDEX_DEVICE: u64 = 2;
const ATTRINDX_MASK: u64 = 0b111 << ATTRINDX_SHIFT;

/// Configuration of an Arm stage-1 table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS1Config {
    /// Log2 of the granule: 12, 14 or 16 (CD.TG0).
    pub granule_log2: u32,
    /// Input (VA) size in bits, 32..=48 (52 with 64 KiB): CD.T0SZ = 64 - ias.
    pub ias: u32,
    /// Output size in bits (CD.IPS).
    pub oas: u32,
    /// Allow block leaves.
    pub blocks: bool,
    /// Leaves are Normal Write-Back Inner Shareable (else Normal Non-cacheable).
    pub coherent: bool,
    /// Set DBM on writable leaves: the SMMU marks them dirty (CD.HD).
    pub dirty_tracking: bool,
    /// Replacing a block by a table, or changing the Contiguous bit of live leaves, needs no
    /// break-before-make (FEAT_BBM level 2, `IDR3.BBML` = 2). Also enables the contiguous hint.
    pub bbml2: bool,
}

/// The Arm stage-1 format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS1 {
    cfg: ArmS1Config,
    geometry: Geometry,
    /// What the descriptor code works out from the configuration once.
    derived: vmsa::Derived,
}

impl ArmS1 {
    /// Builds the format.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an unsupported granule, IAS or OAS.
    pub fn new(cfg: ArmS1Config) -> Result<Self, Error> {
        vmsa::check_granule_oas(cfg.granule_log2, cfg.oas)?;
        let max_ias = if cfg.granule_log2 == 16 { 52 } else { 48 };
        if !(32..=max_ias).contains(&cfg.ias) {
            return Err(Error::InvalidConfig {
                what: "ias",
                value: cfg.ias.into(),
            });
        }
        let natural = vmsa::natural_geometry(cfg.granule_log2, cfg.ias, cfg.oas)?;
        let mut pages = 1 << cfg.granule_log2;
        if cfg.blocks {
            pages |= vmsa::block_sizes(cfg.granule_log2);
        }
        let valid = (0..natural.levels).fold(0u64, |m, l| m | 1 << natural.level_shift(l));
        let geometry = Geometry::new(cfg.granule_log2, cfg.ias, cfg.oas, pages & valid)?;
        let hint = vmsa::use_contiguous(cfg.bbml2, cfg.dirty_tracking);
        Ok(Self {
            cfg,
            geometry,
            derived: vmsa::Derived::new(&geometry, Self::normal_attributes(cfg.coherent), hint, 0),
        })
    }

    /// The configuration.
    pub const fn config(&self) -> &ArmS1Config {
        &self.cfg
    }

    /// CD.T0SZ / TCR.T0SZ: 64 minus the input size.
    pub const fn t0sz(&self) -> u64 {
        (64 - self.cfg.ias) as u64
    }

    /// AttrIndx, SH, AF and nG of Normal memory leaves, fixed by the table's coherency.
    const fn normal_attributes(coherent: bool) -> u64 {
        let (index, sh) = if coherent {
            (ATTR_INDEX_WB, SH_INNER)
        } else {
            (ATTR_INDEX_NC, SH_OUTER)
        };
        index << ATTRINDX_SHIFT | sh << SH_SHIFT | AF | NG
    }

    fn leaf_attributes(&self, prot: Prot) -> u64 {
        if prot.contains(Prot::MMIO) {
            // Device memory is always Outer Shareable whatever SH says (Arm ARM D8.5.2).
            ATTR_INDEX_DEVICE << ATTRINDX_SHIFT | SH_OUTER << SH_SHIFT | AF | NG
        } else {
            self.derived.normal_leaf()
        }
    }
}

// SAFETY: the geometry is validated in `new` and never changes. A table entry is its address
// with bits 1:0 = 0b11, and every leaf above level 0 is a block (bit 1 clear); AF and AP\[2\]
// (bits 10, 7), the only bits the walker sets, lie outside the address field, and so does the
// split mark (bit 55, IGNORED in table descriptors). Bit 0 clear is invalid.
unsafe impl Format for ArmS1 {
    vmsa::vmsa_shared_format_methods!();

    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        // AP\[2:1\] has no write-only or no-access encoding for a valid descriptor.
        if prot.contains(Prot::READ) {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }

    #[inline]
    fn encode_leaf(&self, level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        let mut e = vmsa::encode_addr(self.cfg.granule_log2, pa.get())
            | vmsa::leaf_type(level)
            | self.leaf_attributes(prot);
        if prot.contains(Prot::WRITE) {
            if self.cfg.dirty_tracking {
                e |= DBM;
            }
        } else {
            e |= AP_RO;
        }
        if !prot.contains(Prot::PRIV) {
            e |= AP_EL0;
        }
        if !prot.contains(Prot::EXEC) {
            e |= PXN | UXN;
        }
        e
    }

    #[inline]
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let mut p = Prot::READ;
        p.set(Prot::WRITE, raw & AP_RO == 0 || raw & DBM != 0);
        p.set(Prot::PRIV, raw & AP_EL0 == 0);
        p.set(Prot::EXEC, raw & (PXN | UXN) != PXN | UXN);
        p.set(
            Prot::MMIO,
            raw & ATTRINDX_MASK == ATTR_INDEX_DEVICE << ATTRINDX_SHIFT,
        );
        p
    }

    #[inline]
    fn leaf_is_dirty(&self, raw: u64) -> bool {
        raw & (DBM | AP_RO) == DBM
    }

    #[inline]
    fn leaf_clear_dirty(&self, raw: u64) -> u64 {
        raw | AP_RO
    }
}
