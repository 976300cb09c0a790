//! Reference walker for Arm VMSAv8-64 stage-2 tables, as an SMMUv3 STE or `VTCR_EL2` sets them up.
//!
//! Arm ARM DDI 0487 K.a, chapter D8, "Translation table walk" (start level and concatenated
//! initial tables from T0SZ and SL0), "Translation table descriptor formats" (stage-2 block and
//! page descriptors), "Memory region attributes" (stage-2 MemAttr, FEAT_S2FWB) and "Memory access
//! control" (S2AP, XN, FEAT_XNX). SMMUv3 (IHI 0070) STE.S2T0SZ / S2SL0 / S2TG / S2PS / S2FWB /
//! S2HA / S2HD follow the same definitions.
//!
//! Levels are the Arm lookup levels 0 to 3. The start level comes from SL0 (4 KiB: 0 -> 2,
//! 1 -> 1, 2 -> 0; 16 KiB and 64 KiB: 0 -> 3, 1 -> 2, 2 -> 1). The initial table resolves
//! `IAS - shift(start)` bits, which must be between 1 and stride + 4: beyond a stride, 2 to 16
//! granule-sized tables are concatenated into one root, aligned to its whole size. Any other
//! combination is the translation fault hardware raises for an inconsistent SL0/T0SZ (an SMMU
//! reports `C_BAD_STE`); here it is [`Fault::BadConfig`].
//!
//! Leaf bits read here: `MemAttr[3:0]` = `bits[5:2]`, `S2AP[1:0]` = `bits[7:6]` (bit 6 read, bit 7
//! write), SH = `bits[9:8]`, AF = bit 10, DBM = bit 51, Contiguous = bit 52, XN = bit 54 (with
//! FEAT_XNX `XN[1:0]` = `bits[54:53]`). Table descriptors of stage 2 carry no attributes.
//!
//! With `strict_res0`, RES0 bits hardware ignores are reported as [`Fault::ReservedBit`]:
//! address-field RES0 bits (see [`super::arm`]), bit 11 of a leaf, and bit 53 without FEAT_XNX.
//!
//! Not modelled: FEAT_LPA2, FEAT_TTST, SL2, FEAT_S2PIE/S2POE, MTE/ PBHA / software bits,
//! hardware updates of AF and DBM-managed dirty state (reported, not written), and combining
//! with a stage-1 memory type.

use std::vec::Vec;

use super::arm::{
    bits_at, classify, device, s2_cacheability, shareability, Cacheability, Geometry, Granule,
    Kind, MemType, Shareability,
};
use super::{Access, AccessKind, Entry, Fault, LeafAddress, Radix, Translation, WalkError};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

const MEMATTR_SHIFT: u32 = 2;
const MEMATTR_MASK: u64 = 0xf << MEMATTR_SHIFT;
const S2AP_READ: u64 = 1 << 6;
const S2AP_WRITE: u64 = 1 << 7;
const AF: u64 = 1 << 10;
const BIT_11: u64 = 1 << 11;
const DBM: u64 = 1 << 51;
const CONTIGUOUS: u64 = 1 << 52;
const XN_SHIFT: u32 = 53;
const XN_LOW: u64 = 1 << 53;
const XN_HIGH: u64 = 1 << 54;
/// Up to 2^4 = 16 tables may be concatenated at the start level.
const MAX_CONCATENATION_BITS: u32 = 4;

/// The stage-2 configuration (VTCR_EL2 / STE fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS2Config {
    /// VTTBR_EL2.BADDR / STE.S2TTB: base of the (possibly concatenated) root.
    pub ttb: PhysAddr,
    /// VTCR_EL2.TG0 / STE.S2TG.
    pub granule: Granule,
    /// VTCR_EL2.T0SZ / STE.S2T0SZ: the input (IPA) size is 64 - T0SZ.
    pub t0sz: u8,
    /// VTCR_EL2.SL0 / STE.S2SL0.
    pub sl0: u8,
    /// Output address size in bits (VTCR_EL2.PS / STE.S2PS decoded): 32, 36, 40, 42, 44, 48, 52.
    pub oas: u32,
    /// HCR_EL2.FWB / STE.S2FWB: MemAttr uses the FEAT_S2FWB encoding.
    pub fwb: bool,
    /// FEAT_XNX: `bits[54:53]` are `XN[1:0]`; otherwise bit 54 is XN and bit 53 RES0.
    pub xnx: bool,
    /// VTCR_EL2.HA / STE.S2HA: hardware sets AF, so AF = 0 does not fault.
    pub hardware_access_flag: bool,
    /// VTCR_EL2.HD / STE.S2HD: a DBM leaf without write permission is writable (hardware would
    /// set `S2AP[1]` on the first write).
    pub hardware_dirty: bool,
    /// Report RES0 bits hardware ignores as reserved-bit faults (a model-only check that catches
    /// encoders writing bits they should not).
    pub strict_res0: bool,
}

/// Attributes of a stage-2 leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS2Attrs {
    /// Memory type from MemAttr (and FWB).
    pub mem_type: MemType,
    /// `MemAttr[3:0]`, raw.
    pub memattr: u8,
    /// `SH[1:0]`.
    pub shareability: Shareability,
    /// AF.
    pub accessed: bool,
    /// DBM.
    pub dbm: bool,
    /// `S2AP[1]` itself: with DBM, the page is dirty once this is set.
    pub s2ap_write: bool,
    /// Contiguous hint.
    pub contiguous: bool,
    /// `XN[1:0]` (bit 53 is 0 in the value without FEAT_XNX).
    pub xn: u8,
    /// Instruction fetches allowed for a privileged request.
    pub privileged_exec: bool,
}

#[derive(Clone, Copy)]
struct Leaf {
    oa: u64,
    size_log2: u32,
    read: bool,
    write: bool,
    unprivileged_exec: bool,
    attrs: ArmS2Attrs,
}

impl LeafAddress for Leaf {
    fn output_address(&mut self) -> &mut u64 {
        &mut self.oa
    }
}

struct Walker<'a> {
    cfg: &'a ArmS2Config,
    geometry: Geometry,
}

/// Start level selected by SL0 for a granule (without FEAT_LPA2 / FEAT_TTST).
fn start_level(granule: Granule, sl0: u8) -> Option<u32> {
    match (granule, sl0) {
        (Granule::K4, 0) => Some(2),
        (Granule::K4, 1) => Some(1),
        (Granule::K4, 2) => Some(0),
        (Granule::K16 | Granule::K64, 0) => Some(3),
        (Granule::K16 | Granule::K64, 1) => Some(2),
        (Granule::K16 | Granule::K64, 2) => Some(1),
        _ => None,
    }
}

/// Input address size: 25 to 48 bits, or to 52 with the 64 KiB granule (FEAT_LPA).
fn input_size(cfg: &ArmS2Config) -> Result<u32, Fault> {
    let ias = 64u32.saturating_sub(u32::from(cfg.t0sz));
    let max = if cfg.granule == Granule::K64 { 52 } else { 48 };
    if !(25..=max).contains(&ias) {
        return Err(Fault::BadConfig("T0SZ outside the supported input sizes"));
    }
    Ok(ias)
}

/// The start level and the input bits the (possibly concatenated) root resolves.
fn start_and_root_bits(cfg: &ArmS2Config) -> Result<(u32, u32), Fault> {
    let ias = input_size(cfg)?;
    let start =
        start_level(cfg.granule, cfg.sl0).ok_or(Fault::BadConfig("reserved SL0 encoding"))?;
    let root_bits = bits_at(cfg.granule, start, ias).unwrap_or(0);
    if root_bits == 0 || root_bits > cfg.granule.stride() + MAX_CONCATENATION_BITS {
        return Err(Fault::BadConfig("SL0 inconsistent with T0SZ"));
    }
    Ok((start, root_bits))
}

fn geometry(cfg: &ArmS2Config) -> Result<Geometry, Fault> {
    let (start_level, root_bits) = start_and_root_bits(cfg)?;
    let geometry = Geometry {
        granule: cfg.granule,
        start_level,
        root_bits,
        oas: cfg.oas,
        root: cfg.ttb.get(),
    };
    geometry.check()?;
    Ok(geometry)
}

impl Walker<'_> {
    /// `MemAttr[3:0]` as a memory type (without FWB: [3:2] outer or 0b00 = Device, [1:0] inner or
    /// device kind; with FWB: [2] = 0 Device, 0b101 Normal NC, 0b110 Normal WB, 0b111 stage-1
    /// attributes, 0b100 and [3] = 1 reserved).
    fn mem_type(&self, memattr: u64) -> MemType {
        let raw = memattr as u8;
        if self.cfg.fwb {
            return match memattr {
                0..=3 => device(memattr),
                5 => MemType::Normal {
                    inner: Cacheability::NonCacheable,
                    outer: Cacheability::NonCacheable,
                },
                6 => MemType::Normal {
                    inner: Cacheability::WriteBack,
                    outer: Cacheability::WriteBack,
                },
                7 => MemType::Stage1,
                _ => MemType::Reserved(raw),
            };
        }
        if memattr >> 2 == 0 {
            return device(memattr);
        }
        match (s2_cacheability(memattr >> 2), s2_cacheability(memattr)) {
            (Some(outer), Some(inner)) => MemType::Normal { inner, outer },
            _ => MemType::Reserved(raw),
        }
    }

    fn leaf(&self, desc: u64, oa: u64, size_log2: u32) -> Leaf {
        let memattr = (desc & MEMATTR_MASK) >> MEMATTR_SHIFT;
        let xn = if self.cfg.xnx {
            ((desc >> XN_SHIFT) & 3) as u8
        } else {
            u8::from(desc & XN_HIGH != 0) << 1
        };
        // XN[1:0]: 0b00 both execute, 0b01 EL0 only, 0b10 neither, 0b11 EL1 only.
        let (privileged_exec, unprivileged_exec) = (xn == 0 || xn == 3, xn == 0 || xn == 1);
        let s2ap_write = desc & S2AP_WRITE != 0;
        let dbm = desc & DBM != 0;
        let attrs = ArmS2Attrs {
            mem_type: self.mem_type(memattr),
            memattr: memattr as u8,
            shareability: shareability(desc),
            accessed: desc & AF != 0,
            dbm,
            s2ap_write,
            contiguous: desc & CONTIGUOUS != 0,
            xn,
            privileged_exec,
        };
        Leaf {
            oa,
            size_log2,
            read: desc & S2AP_READ != 0,
            write: s2ap_write || self.cfg.hardware_dirty && dbm,
            unprivileged_exec,
            attrs,
        }
    }
}

impl Radix for Walker<'_> {
    type State = ();
    type Leaf = Leaf;

    fn root(&self) -> u64 {
        self.geometry.root
    }
    fn depths(&self) -> usize {
        self.geometry.depths()
    }
    fn level(&self, depth: usize) -> i8 {
        self.geometry.level(depth) as i8
    }
    fn shift(&self, depth: usize) -> u32 {
        self.geometry.shift(self.geometry.level(depth))
    }
    fn index_bits(&self, depth: usize) -> u32 {
        self.geometry.index_bits(depth)
    }
    fn initial(&self) {}

    fn decode(&self, depth: usize, desc: u64, _: ()) -> Result<Entry<(), Leaf>, Fault> {
        let level = self.geometry.level(depth);
        match classify(&self.geometry, level, desc, self.cfg.strict_res0)? {
            Kind::Invalid => Ok(Entry::Invalid),
            Kind::Table(next) => Ok(Entry::Table { next, state: () }),
            Kind::Leaf { oa, size_log2 } => {
                let mut res0 = BIT_11;
                if !self.cfg.xnx {
                    res0 |= XN_LOW;
                }
                match super::first_set(desc, res0) {
                    Some(bit) if self.cfg.strict_res0 => Err(Fault::ReservedBit {
                        level: level as i8,
                        bit,
                    }),
                    _ => Ok(Entry::Leaf(self.leaf(desc, oa, size_log2))),
                }
            }
        }
    }

    fn leaf_address_bits(&self, depth: usize) -> u64 {
        super::arm::leaf_address_bits(&self.geometry, self.shift(depth))
    }
}

fn walker(cfg: &ArmS2Config) -> Result<Walker<'_>, Fault> {
    Ok(Walker {
        cfg,
        geometry: geometry(cfg)?,
    })
}

/// Translates the IPA `iova` for `access` as the walker of an SMMU or a CPU would.
///
/// # Errors
///
/// [`Fault::InputRange`] at or above 2^IAS, [`Fault::Translation`], [`Fault::AddressSize`],
/// [`Fault::AccessFlag`] (before permissions, as the architecture orders them),
/// [`Fault::Permission`], [`Fault::ExternalAbort`], [`Fault::BadConfig`], and
/// [`Fault::ReservedBit`] with `strict_res0`.
pub fn translate(
    mem: &impl PhysMem,
    cfg: &ArmS2Config,
    iova: Iova,
    access: Access,
) -> Result<Translation<ArmS2Attrs>, Fault> {
    let walker = walker(cfg)?;
    let input = iova.get();
    if input >> input_size(cfg)? != 0 {
        return Err(Fault::InputRange { iova: input });
    }
    let (depth, leaf) = super::lookup(mem, &walker, input)?;
    let level = walker.level(depth);
    if !leaf.attrs.accessed && !cfg.hardware_access_flag {
        return Err(Fault::AccessFlag { level });
    }
    let exec = if access.privileged {
        leaf.attrs.privileged_exec
    } else {
        leaf.unprivileged_exec
    };
    let denied = if access.read && !leaf.read {
        Some(AccessKind::Read)
    } else if access.write && !leaf.write {
        Some(AccessKind::Write)
    } else if access.exec && !exec {
        Some(AccessKind::Exec)
    } else {
        None
    };
    if let Some(denied) = denied {
        return Err(Fault::Permission { level, denied });
    }
    let offset = input & ((1u64 << leaf.size_log2) - 1);
    Ok(translation(&leaf, exec, leaf.oa | offset))
}

fn translation(leaf: &Leaf, exec: bool, pa: u64) -> Translation<ArmS2Attrs> {
    Translation {
        pa: PhysAddr::new(pa),
        page_size_log2: leaf.size_log2,
        read: leaf.read,
        write: leaf.write,
        exec,
        attrs: leaf.attrs,
    }
}

/// Every leaf, by ascending IPA, as (leaf base IPA, translation of the leaf base with the
/// unprivileged execute permission).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first descriptor that faults (a block at a level without blocks,
/// an address size fault, a bad configuration at IOVA 0), [`WalkError::TableReachedTwice`], and [`Fault::ContiguousMisprogrammed`] for a run of leaves
/// carrying the Contiguous bit that is not whole and consistent.
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &ArmS2Config,
) -> Result<Vec<(Iova, Translation<ArmS2Attrs>)>, WalkError> {
    let walker = walker(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    let mut out = Vec::new();
    super::for_each_leaf(mem, &walker, |found| {
        let leaf = &found.leaf;
        out.push((
            Iova::new(found.input),
            translation(leaf, leaf.unprivileged_exec, leaf.oa),
        ));
        Ok(())
    })
    .map_err(|(input, kind)| kind.into_error(Iova::new(input)))?;
    super::arm::check_contiguous(cfg.granule, &out, |a| a.contiguous, same_run_attributes)?;
    Ok(out)
}

/// Whether two leaves of one contiguous run agree on everything but the state hardware updates
/// per entry (AF, and `S2AP[1]` of a DBM leaf).
fn same_run_attributes(a: &Translation<ArmS2Attrs>, b: &Translation<ArmS2Attrs>) -> bool {
    let norm = |t: &Translation<ArmS2Attrs>| {
        let mut attrs = t.attrs;
        attrs.accessed = false;
        if attrs.dbm {
            attrs.s2ap_write = false;
        }
        (t.read, t.write || attrs.dbm, t.exec, attrs)
    };
    norm(a) == norm(b)
}

/// The base of every table reachable from the root, the (concatenated) root first.
///
/// # Errors
///
/// As [`walk_all`].
pub fn table_pages(mem: &impl PhysMem, cfg: &ArmS2Config) -> Result<Vec<PhysAddr>, WalkError> {
    let walker = walker(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    super::for_each_leaf(mem, &walker, |_| Ok(()))
        .map_err(|(input, kind)| kind.into_error(Iova::new(input)))
}

/// The start level and the number of concatenated root tables `cfg` selects, for tests that
/// build a root by hand and for checking an encoder's choice.
///
/// # Errors
///
/// [`Fault::BadConfig`] if SL0 and T0SZ are inconsistent or reserved.
pub fn root_shape(cfg: &ArmS2Config) -> Result<(u32, u32), Fault> {
    let (start, root_bits) = start_and_root_bits(cfg)?;
    Ok((start, 1 << root_bits.saturating_sub(cfg.granule.stride())))
}
