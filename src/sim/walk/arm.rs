//! What the Arm stage-1 and stage-2 walkers share: granule geometry, descriptor type and output
//! address decoding, and the memory-type vocabulary.
//!
//! Arm Architecture Reference Manual for A-profile, DDI 0487 K.a, chapter D8 "The AArch64 Virtual
//! Memory System Architecture" (cited by section title, which is stabler than numbering):
//! - "Translation table walk": lookup levels, the input address bits each level resolves per
//!   granule (4 KiB: 9 bits a level, 16 KiB: 11, 64 KiB: 13), start levels and, for stage 2,
//!   concatenated initial tables (up to 16);
//! - "Translation table descriptor formats": `bits[1:0]` (0b11 table below level 3, 0b01 block,
//!   0b11 page at level 3, 0bx0 invalid, 0b01 at level 3 reserved and treated as invalid), the
//!   next-level table address / output address in `bits[47:granule]`, and with the 64 KiB granule
//!   and a 52-bit output address size (FEAT_LPA) `OA[51:48]` in `bits[15:12]`;
//! - "Memory region attributes": `MAIR_ELx.Attr<n>` encodings, stage-2 MemAttr with and without
//!   FEAT_S2FWB.
//!
//! Blocks are allowed at: level 1 and 2 with 4 KiB, level 2 with 16 KiB, level 2 with 64 KiB,
//! and level 1 with 64 KiB when the output size is 52 bits (FEAT_LPA). A block elsewhere is a
//! translation fault. An output or table address with a bit set at or above the output address
//! size is an address size fault at the level of the descriptor that holds it.
//!
//! Not modelled: FEAT_LPA2 (`DS = 1`: 52-bit with 4 KiB / 16 KiB, level -1, level 0 blocks),
//! FEAT_TTST (start level 3 / IAS below 25), FEAT_D128, and `bits[15:12]` on a 64 KiB-granule
//! system without FEAT_LPA (they are always read as `OA[51:48]` here, so a set bit with OAS < 52 is
//! an address size fault).

use super::{bits, first_set, Fault, Translation, WalkError};
use crate::mem::Iova;

/// A translation granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granule {
    /// 4 KiB (TG0 = 0b00).
    K4,
    /// 16 KiB (TG0 = 0b10).
    K16,
    /// 64 KiB (TG0 = 0b01).
    K64,
}

impl Granule {
    /// Log2 of the granule (and of a full table) in bytes.
    pub const fn log2(self) -> u32 {
        match self {
            Granule::K4 => 12,
            Granule::K16 => 14,
            Granule::K64 => 16,
        }
    }

    /// Input address bits one full table resolves: a table holds `granule / 8` descriptors.
    pub const fn stride(self) -> u32 {
        self.log2() - 3
    }
}

/// Device memory types (the nG, nR, nE hints).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceType {
    /// Device-nGnRnE.
    NGnRnE,
    /// Device-nGnRE.
    NGnRE,
    /// Device-nGRE.
    NGRE,
    /// Device-GRE.
    GRE,
}

impl DeviceType {
    fn from_bits(two: u64) -> Self {
        match two & 3 {
            0 => DeviceType::NGnRnE,
            1 => DeviceType::NGnRE,
            2 => DeviceType::NGRE,
            _ => DeviceType::GRE,
        }
    }
}

/// Cacheability of one level (inner or outer) of Normal memory. Allocation hints are left out;
/// a stage-1 leaf reports its raw MAIR byte for those.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cacheability {
    /// Non-cacheable.
    NonCacheable,
    /// Write-Through.
    WriteThrough,
    /// Write-Back.
    WriteBack,
}

/// The memory type a leaf gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemType {
    /// Device memory.
    Device(DeviceType),
    /// Normal memory.
    Normal {
        /// Inner cacheability.
        inner: Cacheability,
        /// Outer cacheability.
        outer: Cacheability,
    },
    /// Stage 2 with FWB, MemAttr = 0b0111: the stage-1 attributes pass through unchanged.
    Stage1,
    /// An encoding the architecture reserves or leaves UNPREDICTABLE (raw value).
    Reserved(u8),
}

/// Shareability, `SH[1:0]` of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shareability {
    /// 0b00.
    NonShareable,
    /// 0b01: reserved (CONSTRAINED UNPREDICTABLE).
    Reserved,
    /// 0b10.
    Outer,
    /// 0b11.
    Inner,
}

/// SH, `bits[9:8]` of a block or page descriptor (without FEAT_LPA2).
pub(crate) fn shareability(desc: u64) -> Shareability {
    match (desc >> 8) & 3 {
        0 => Shareability::NonShareable,
        1 => Shareability::Reserved,
        2 => Shareability::Outer,
        _ => Shareability::Inner,
    }
}

/// Decodes a MAIR attribute byte (`MAIR_ELx.Attr<n>`): 0b0000_dd00 is Device; otherwise
/// the high nibble is the outer and the low nibble the inner cacheability of Normal memory.
pub(crate) fn mair_mem_type(attr: u8) -> MemType {
    let (outer, inner) = (attr >> 4, attr & 0xf);
    if outer == 0 {
        return if inner & 3 == 0 {
            MemType::Device(DeviceType::from_bits(u64::from(inner >> 2)))
        } else {
            MemType::Reserved(attr)
        };
    }
    match (mair_cacheability(outer), mair_cacheability(inner)) {
        (Some(outer), Some(inner)) => MemType::Normal { inner, outer },
        _ => MemType::Reserved(attr),
    }
}

/// One nibble of a Normal MAIR attribute: 0b00RW (RW != 0) Write-Through transient, 0b0100
/// Non-cacheable, 0b01RW (RW != 0) Write-Back transient, 0b10RW Write-Through, 0b11RW Write-Back.
/// 0b0000 is UNPREDICTABLE for Normal memory.
fn mair_cacheability(nibble: u8) -> Option<Cacheability> {
    match nibble {
        0 => None,
        4 => Some(Cacheability::NonCacheable),
        1..=3 | 8..=11 => Some(Cacheability::WriteThrough),
        _ => Some(Cacheability::WriteBack),
    }
}

/// The stage-2 `MemAttr[3:2]` / [1:0] cacheability field: 0b01 NC, 0b10 WT, 0b11 WB; 0b00 is not
/// a Normal cacheability.
pub(crate) fn s2_cacheability(two: u64) -> Option<Cacheability> {
    match two & 3 {
        1 => Some(Cacheability::NonCacheable),
        2 => Some(Cacheability::WriteThrough),
        3 => Some(Cacheability::WriteBack),
        _ => None,
    }
}

pub(crate) fn device(two: u64) -> MemType {
    MemType::Device(DeviceType::from_bits(two))
}

/// Where a walk starts and how wide its addresses are.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub granule: Granule,
    /// Lookup level of the root (0 to 3).
    pub start_level: u32,
    /// Input bits the root resolves: more than a stride when concatenated, fewer when partial.
    pub root_bits: u32,
    /// Output address size in bits.
    pub oas: u32,
    /// Base of the root table.
    pub root: u64,
}

/// The output address sizes the PS / IPS encodings define.
const OUTPUT_SIZES: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

impl Geometry {
    /// Lowest input bit resolved at lookup `level`.
    pub fn shift(&self, level: u32) -> u32 {
        self.granule.log2() + (3 - level) * self.granule.stride()
    }

    pub fn depths(&self) -> usize {
        (4 - self.start_level) as usize
    }

    pub fn level(&self, depth: usize) -> u32 {
        self.start_level + depth as u32
    }

    pub fn index_bits(&self, depth: usize) -> u32 {
        if depth == 0 {
            self.root_bits
        } else {
            self.granule.stride()
        }
    }

    /// Checks the output size and the root address (aligned to the root table's size, and
    /// inside the output size).
    pub fn check(&self) -> Result<(), Fault> {
        if !OUTPUT_SIZES.contains(&self.oas) {
            return Err(Fault::BadConfig(
                "output address size is not a PS/IPS encoding",
            ));
        }
        if self.oas == 52 && self.granule != Granule::K64 {
            return Err(Fault::BadConfig(
                "52-bit output needs the 64 KiB granule (FEAT_LPA2 not modelled)",
            ));
        }
        // A table of 2^n descriptors is 2^(n+3) bytes and aligned to that, at least 64 bytes.
        let align = (self.root_bits + 3).max(6);
        if self.root & ((1u64 << align) - 1) != 0 {
            return Err(Fault::BadConfig(
                "translation table base not aligned to the root table size",
            ));
        }
        if self.root >> self.oas != 0 {
            return Err(Fault::AddressSize {
                level: self.start_level as i8,
                address: self.root,
            });
        }
        Ok(())
    }

    fn block_allowed(&self, level: u32) -> bool {
        match self.granule {
            Granule::K4 => level == 1 || level == 2,
            Granule::K16 => level == 2,
            Granule::K64 => level == 2 || level == 1 && self.oas == 52,
        }
    }

    /// The address in a descriptor whose address field starts at bit `lo`: `bits[47:lo]`, plus
    /// `OA[51:48]` from `bits[15:12]` with the 64 KiB granule.
    fn address(&self, desc: u64, lo: u32) -> u64 {
        let high = if self.granule == Granule::K64 {
            ((desc >> 12) & 0xf) << 48
        } else {
            0
        };
        desc & bits(47, lo) | high
    }
}

/// A descriptor's type and address, before the format reads its attributes.
pub(crate) enum Kind {
    Invalid,
    Table(u64),
    Leaf { oa: u64, size_log2: u32 },
}

/// The descriptor bits of a leaf of `1 << size_log2` bytes that hold output-address bits and
/// nothing else: `bits[47:size_log2]` below the output address size ([`classify`] reads
/// `OA[51:48]` of the 64 KiB granule from `bits[15:12]`, below every leaf size, and checks
/// nothing else in them).
pub(crate) fn leaf_address_bits(geometry: &Geometry, size_log2: u32) -> u64 {
    let hi = geometry.oas.min(48);
    if hi > size_log2 {
        bits(hi - 1, size_log2)
    } else {
        0
    }
}

/// Decodes the type and address of `desc` at `level`. With `strict`, RES0 bits of the address
/// field (`bits[49:48]`, and the low bits of a block's output address) raise
/// [`Fault::ReservedBit`]; hardware does not check them.
pub(crate) fn classify(
    geometry: &Geometry,
    level: u32,
    desc: u64,
    strict: bool,
) -> Result<Kind, Fault> {
    let fault_level = level as i8;
    if desc & 1 == 0 {
        return Ok(Kind::Invalid);
    }
    let is_table_or_page = desc & 2 != 0;
    if !is_table_or_page && (level == 3 || !geometry.block_allowed(level)) {
        return Err(Fault::Translation { level: fault_level });
    }
    let granule_log2 = geometry.granule.log2();
    let lo = if is_table_or_page {
        granule_log2
    } else {
        geometry.shift(level)
    };
    if strict {
        let mut res0 = bits(49, 48);
        if geometry.granule == Granule::K16 {
            // Bits[13:12] lie below every 16 KiB address field.
            res0 |= bits(13, 12);
        }
        if lo > granule_log2 {
            // Bit 16 of a block is nT (FEAT_BBM), not part of the address.
            res0 |= bits(lo - 1, granule_log2) & !(1 << 16);
        }
        if let Some(bit) = first_set(desc, res0) {
            return Err(Fault::ReservedBit {
                level: fault_level,
                bit,
            });
        }
    }
    let address = geometry.address(desc, lo);
    if address >> geometry.oas != 0 {
        return Err(Fault::AddressSize {
            level: fault_level,
            address,
        });
    }
    Ok(if is_table_or_page && level < 3 {
        Kind::Table(address)
    } else {
        Kind::Leaf {
            oa: address,
            size_log2: lo,
        }
    })
}

/// Input address bits the level-`level` table resolves when the walk covers `ias` bits.
pub(crate) fn bits_at(granule: Granule, level: u32, ias: u32) -> Option<u32> {
    ias.checked_sub(granule.log2() + (3 - level) * granule.stride())
}

/// Log2 of the number of entries one Contiguous bit spans at lookup `level` (Arm ARM "The
/// Contiguous bit"): 4 KiB granule: 16 at levels 1, 2 and 3; 16 KiB: 128 at level 3, 32 at
/// level 2; 64 KiB: 32 at levels 2 and 3. `None` where the bit is not defined here.
pub(crate) fn contiguous_entries_log2(granule: Granule, level: u32) -> Option<u32> {
    match (granule, level) {
        (Granule::K4, 1..=3) => Some(4),
        (Granule::K16, 3) => Some(7),
        (Granule::K16, 2) | (Granule::K64, 2 | 3) => Some(5),
        _ => None,
    }
}

/// Checks every run of leaves carrying the Contiguous bit among `leaves` (all leaves of a walk,
/// each translated at its base): the run is complete, at one level, all with the bit and with
/// `same` attributes, mapping consecutive output aligned to the run.
///
/// # Errors
///
/// [`Fault::ContiguousMisprogrammed`] at the base of the first bad run.
pub(crate) fn check_contiguous<A>(
    granule: Granule,
    leaves: &[(Iova, Translation<A>)],
    contiguous: impl Fn(&A) -> bool,
    same: impl Fn(&Translation<A>, &Translation<A>) -> bool,
) -> Result<(), WalkError> {
    // `leaves` is sorted by input address (a walk yields them in order). Each run is checked
    // once, from its base, over the leaves that follow it: linear in the number of leaves (a
    // table of leaves that all carry the bit is common, and checking each leaf's whole run
    // again made the walk quadratic in the run length).
    let mut checked_to = None;
    for (iova, leaf) in leaves.iter().filter(|(_, t)| contiguous(&t.attrs)) {
        if checked_to.is_some_and(|end| iova.get() < end) {
            continue;
        }
        let size_log2 = leaf.page_size_log2;
        let level = 3 - (size_log2 - granule.log2()) / granule.stride();
        let bad = |base: u64| WalkError::Fault {
            iova: Iova::new(base),
            fault: Fault::ContiguousMisprogrammed { level: level as i8 },
        };
        let n_log2 = contiguous_entries_log2(granule, level).ok_or(bad(iova.get()))?;
        let run_log2 = size_log2 + n_log2;
        let base = iova.get() & !((1u64 << run_log2) - 1);
        let at = leaves
            .binary_search_by_key(&base, |(i, _)| i.get())
            .map_err(|_| bad(base))?;
        let first = &leaves[at].1;
        if first.pa.get() & ((1u64 << run_log2) - 1) != 0 {
            return Err(bad(base));
        }
        let run = leaves.get(at..at + (1usize << n_log2)).ok_or(bad(base))?;
        for (k, (i, t)) in (0u64..).zip(run) {
            let ok = i.get() == base + (k << size_log2)
                && t.page_size_log2 == size_log2
                && contiguous(&t.attrs)
                && t.pa.get() == first.pa.get() + (k << size_log2)
                && same(first, t);
            if !ok {
                return Err(bad(base));
            }
        }
        checked_to = Some(base + (1u64 << run_log2));
    }
    Ok(())
}
