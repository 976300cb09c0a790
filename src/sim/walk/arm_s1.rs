//! Reference walker for Arm VMSAv8-64 stage-1 tables (the EL1&0 regime with two privilege
//! levels), as an SMMUv3 context descriptor (TTB0, T0SZ, TG0, IPS, MAIR, HA, HD, WXN, HAD0) sets
//! them up.
//!
//! Arm ARM DDI 0487 K.a, chapter D8, "Translation table walk" (start level from T0SZ),
//! "Translation table descriptor formats" (stage-1 table, block and page descriptors), "Memory
//! access control" (`AP[2:1]`, PXN, UXN, WXN, hierarchical APTable / PXNTable / UXNTable, and
//! "writable at EL0 implies PXN"), "Memory region attributes" (AttrIndx through MAIR).
//! SMMUv3 (IHI 0070) CD fields follow the same definitions.
//!
//! Levels are the Arm lookup levels 0 to 3; the walk starts at `4 - ceil((IAS - granule) /
//! stride)` and the root resolves the remaining bits (possibly fewer than a stride). Only the
//! TTB0 half is modelled: input addresses must be below 2^IAS.
//!
//! Table descriptor bits read: PXNTable 59, UXNTable 60, APTable 62:61 (bit 61: no EL0 access
//! below, bit 62: no write below), NSTable 63. With `hierarchical_permissions` false (HPD = 1)
//! bits 59 to 62 are ignored. Leaf bits read: `AttrIndx[2:0]` = `bits[4:2]`, NS 5, `AP[2:1]` =
//! `bits[7:6]` (bit 6: EL0 access, bit 7: read-only), SH 9:8, AF 10, nG 11, DBM 51, Contiguous 52,
//! PXN 53, UXN 54.
//!
//! Not modelled: TTB1 and the upper VA range, top-byte ignore, PAN/EPAN, permission indirection
//! (FEAT_S1PIE), FEAT_LPA2, and hardware updates of AF / dirty state (reported, not written).

use std::vec::Vec;

use super::arm::{
    classify, mair_mem_type, shareability, Geometry, Granule, Kind, MemType, Shareability,
};
use super::{Access, AccessKind, Entry, Fault, LeafAddress, Perms, Radix, Translation, WalkError};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

const ATTR_INDEX_SHIFT: u32 = 2;
const ATTR_INDEX_MASK: u64 = 0x7 << ATTR_INDEX_SHIFT;
const NS: u64 = 1 << 5;
const AP_EL0: u64 = 1 << 6;
const AP_READ_ONLY: u64 = 1 << 7;
const AF: u64 = 1 << 10;
const NOT_GLOBAL: u64 = 1 << 11;
const DBM: u64 = 1 << 51;
const CONTIGUOUS: u64 = 1 << 52;
const PXN: u64 = 1 << 53;
const UXN: u64 = 1 << 54;
const PXN_TABLE: u64 = 1 << 59;
const UXN_TABLE: u64 = 1 << 60;
const AP_TABLE_NO_EL0: u64 = 1 << 61;
const AP_TABLE_READ_ONLY: u64 = 1 << 62;
const NS_TABLE: u64 = 1 << 63;

/// The stage-1 configuration (context descriptor / TCR fields for TTB0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS1Config {
    /// CD.TTB0 / TTBR0.BADDR: base of the root table.
    pub ttb: PhysAddr,
    /// CD.TG0 / TCR.TG0.
    pub granule: Granule,
    /// CD.T0SZ / TCR.T0SZ: the input size is 64 - T0SZ.
    pub t0sz: u8,
    /// Output address size in bits (CD.IPS / TCR.IPS decoded): 32, 36, 40, 42, 44, 48, 52.
    pub oas: u32,
    /// CD.MAIR / MAIR_EL1: attribute byte n is bits[8n+7:8n].
    pub mair: u64,
    /// Hierarchical permissions are on (CD.HAD0 / TCR.HPD0 = 0).
    pub hierarchical_permissions: bool,
    /// CD.WXN / SCTLR.WXN: writable implies execute-never.
    pub wxn: bool,
    /// CD.HA / TCR.HA: hardware sets AF, so AF = 0 does not fault.
    pub hardware_access_flag: bool,
    /// CD.HD / TCR.HD: a DBM leaf marked read-only (`AP[2]` = 1) is writable (hardware would clear
    /// `AP[2]` on the first write).
    pub hardware_dirty: bool,
    /// Report RES0 address-field bits as reserved-bit faults (a model-only check).
    pub strict_res0: bool,
}

/// Attributes of a stage-1 leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArmS1Attrs {
    /// AttrIndx.
    pub attr_index: u8,
    /// The MAIR byte AttrIndx selects (carries the allocation hints).
    pub mair_attr: u8,
    /// Memory type decoded from `mair_attr`.
    pub mem_type: MemType,
    /// `SH[1:0]`.
    pub shareability: Shareability,
    /// NS of the leaf, or NSTable of a table above it.
    pub non_secure: bool,
    /// nG.
    pub not_global: bool,
    /// AF.
    pub accessed: bool,
    /// DBM.
    pub dbm: bool,
    /// `AP[2]` itself: with DBM, the page is dirty once this is clear.
    pub read_only: bool,
    /// Contiguous hint.
    pub contiguous: bool,
    /// Rights of an unprivileged (EL0) request.
    pub unprivileged: Perms,
    /// Rights of a privileged (EL1) request.
    pub privileged: Perms,
}

/// What table descriptors above a leaf take away.
#[derive(Clone, Copy, Default)]
struct Limits {
    no_el0: bool,
    read_only: bool,
    uxn: bool,
    pxn: bool,
    non_secure: bool,
}

#[derive(Clone, Copy)]
struct Leaf {
    oa: u64,
    size_log2: u32,
    attrs: ArmS1Attrs,
}

impl LeafAddress for Leaf {
    fn output_address(&mut self) -> &mut u64 {
        &mut self.oa
    }
}

struct Walker<'a> {
    cfg: &'a ArmS1Config,
    geometry: Geometry,
}

fn geometry(cfg: &ArmS1Config) -> Result<Geometry, Fault> {
    let ias = 64u32.saturating_sub(u32::from(cfg.t0sz));
    let max = if cfg.granule == Granule::K64 { 52 } else { 48 };
    if !(25..=max).contains(&ias) {
        return Err(Fault::BadConfig("T0SZ outside the supported input sizes"));
    }
    let (granule_log2, stride) = (cfg.granule.log2(), cfg.granule.stride());
    let levels = (ias - granule_log2).div_ceil(stride);
    let start_level = 4 - levels;
    let root_bits = ias - (granule_log2 + (levels - 1) * stride);
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
    fn limits(&self, desc: u64, above: Limits) -> Limits {
        let hierarchical = self.cfg.hierarchical_permissions;
        Limits {
            no_el0: above.no_el0 || hierarchical && desc & AP_TABLE_NO_EL0 != 0,
            read_only: above.read_only || hierarchical && desc & AP_TABLE_READ_ONLY != 0,
            uxn: above.uxn || hierarchical && desc & UXN_TABLE != 0,
            pxn: above.pxn || hierarchical && desc & PXN_TABLE != 0,
            non_secure: above.non_secure || desc & NS_TABLE != 0,
        }
    }

    /// The rights of both privilege levels for leaf `desc` under `limits`.
    fn perms(&self, desc: u64, limits: Limits) -> (Perms, Perms) {
        let cfg = self.cfg;
        let dirty_managed = cfg.hardware_dirty && desc & DBM != 0;
        let read_only = desc & AP_READ_ONLY != 0 && !dirty_managed || limits.read_only;
        let el0_read = desc & AP_EL0 != 0 && !limits.no_el0;
        let el0_write = el0_read && !read_only;
        let el1_write = !read_only;
        // AP[2:1] = 0b00 with UXN = 0 is EL0 execute-only memory: execute does not need read.
        let el0_never = desc & UXN != 0 || limits.uxn || cfg.wxn && el0_write;
        // A region writable at EL0 is never executable at EL1.
        let el1_never = desc & PXN != 0 || limits.pxn || el0_write || cfg.wxn && el1_write;
        let (el0_exec, el1_exec) = (!el0_never, !el1_never);
        (
            Perms {
                read: el0_read,
                write: el0_write,
                exec: el0_exec,
            },
            Perms {
                read: true,
                write: el1_write,
                exec: el1_exec,
            },
        )
    }

    fn leaf(&self, desc: u64, oa: u64, size_log2: u32, limits: Limits) -> Leaf {
        let attr_index = ((desc & ATTR_INDEX_MASK) >> ATTR_INDEX_SHIFT) as u8;
        let mair_attr = (self.cfg.mair >> (8 * u32::from(attr_index))) as u8;
        let (unprivileged, privileged) = self.perms(desc, limits);
        let attrs = ArmS1Attrs {
            attr_index,
            mair_attr,
            mem_type: mair_mem_type(mair_attr),
            shareability: shareability(desc),
            non_secure: limits.non_secure || desc & NS != 0,
            not_global: desc & NOT_GLOBAL != 0,
            accessed: desc & AF != 0,
            dbm: desc & DBM != 0,
            read_only: desc & AP_READ_ONLY != 0,
            contiguous: desc & CONTIGUOUS != 0,
            unprivileged,
            privileged,
        };
        Leaf {
            oa,
            size_log2,
            attrs,
        }
    }
}

impl Radix for Walker<'_> {
    type State = Limits;
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
    fn initial(&self) -> Limits {
        Limits::default()
    }

    fn decode(&self, depth: usize, desc: u64, above: Limits) -> Result<Entry<Limits, Leaf>, Fault> {
        let level = self.geometry.level(depth);
        Ok(
            match classify(&self.geometry, level, desc, self.cfg.strict_res0)? {
                Kind::Invalid => Entry::Invalid,
                Kind::Table(next) => Entry::Table {
                    next,
                    state: self.limits(desc, above),
                },
                Kind::Leaf { oa, size_log2 } => Entry::Leaf(self.leaf(desc, oa, size_log2, above)),
            },
        )
    }

    fn leaf_address_bits(&self, depth: usize) -> u64 {
        super::arm::leaf_address_bits(&self.geometry, self.shift(depth))
    }
}

fn walker(cfg: &ArmS1Config) -> Result<Walker<'_>, Fault> {
    Ok(Walker {
        cfg,
        geometry: geometry(cfg)?,
    })
}

/// Translates the VA `iova` for `access` as an SMMU's stage-1 walker would.
///
/// # Errors
///
/// [`Fault::InputRange`] at or above 2^IAS, [`Fault::Translation`], [`Fault::AddressSize`],
/// [`Fault::AccessFlag`] (before permissions), [`Fault::Permission`], [`Fault::ExternalAbort`],
/// [`Fault::BadConfig`], and [`Fault::ReservedBit`] with `strict_res0`.
pub fn translate(
    mem: &impl PhysMem,
    cfg: &ArmS1Config,
    iova: Iova,
    access: Access,
) -> Result<Translation<ArmS1Attrs>, Fault> {
    let walker = walker(cfg)?;
    let input = iova.get();
    if input.checked_shr(64 - u32::from(cfg.t0sz)).unwrap_or(0) != 0 {
        return Err(Fault::InputRange { iova: input });
    }
    let (depth, leaf) = super::lookup(mem, &walker, input)?;
    let level = walker.level(depth);
    if !leaf.attrs.accessed && !cfg.hardware_access_flag {
        return Err(Fault::AccessFlag { level });
    }
    let perms = if access.privileged {
        leaf.attrs.privileged
    } else {
        leaf.attrs.unprivileged
    };
    let denied = if access.read && !perms.read {
        Some(AccessKind::Read)
    } else if access.write && !perms.write {
        Some(AccessKind::Write)
    } else if access.exec && !perms.exec {
        Some(AccessKind::Exec)
    } else {
        None
    };
    if let Some(denied) = denied {
        return Err(Fault::Permission { level, denied });
    }
    let offset = input & ((1u64 << leaf.size_log2) - 1);
    Ok(translation(&leaf, perms, leaf.oa | offset))
}

fn translation(leaf: &Leaf, perms: Perms, pa: u64) -> Translation<ArmS1Attrs> {
    Translation {
        pa: PhysAddr::new(pa),
        page_size_log2: leaf.size_log2,
        read: perms.read,
        write: perms.write,
        exec: perms.exec,
        attrs: leaf.attrs,
    }
}

/// Every leaf, by ascending VA, as (leaf base VA, translation of the leaf base with
/// unprivileged rights).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first descriptor that faults, [`WalkError::TableReachedTwice`], and [`Fault::ContiguousMisprogrammed`] for a run of leaves
/// carrying the Contiguous bit that is not whole and consistent.
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &ArmS1Config,
) -> Result<Vec<(Iova, Translation<ArmS1Attrs>)>, WalkError> {
    let walker = walker(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    let mut out = Vec::new();
    super::for_each_leaf(mem, &walker, |found| {
        let leaf = &found.leaf;
        out.push((
            Iova::new(found.input),
            translation(leaf, leaf.attrs.unprivileged, leaf.oa),
        ));
        Ok(())
    })
    .map_err(|(input, kind)| kind.into_error(Iova::new(input)))?;
    super::arm::check_contiguous(cfg.granule, &out, |a| a.contiguous, same_run_attributes)?;
    Ok(out)
}

/// Whether two leaves of one contiguous run agree on everything but the state hardware updates
/// per entry (AF, and `AP[2]` of a DBM leaf).
fn same_run_attributes(a: &Translation<ArmS1Attrs>, b: &Translation<ArmS1Attrs>) -> bool {
    let norm = |t: &Translation<ArmS1Attrs>| {
        let mut attrs = t.attrs;
        attrs.accessed = false;
        if attrs.dbm {
            attrs.read_only = false;
            attrs.unprivileged.write = false;
            attrs.privileged.write = false;
        }
        (t.read, t.write || attrs.dbm, t.exec, attrs)
    };
    norm(a) == norm(b)
}

/// The base of every table reachable from the root, the root first.
///
/// # Errors
///
/// As [`walk_all`].
pub fn table_pages(mem: &impl PhysMem, cfg: &ArmS1Config) -> Result<Vec<PhysAddr>, WalkError> {
    let walker = walker(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    super::for_each_leaf(mem, &walker, |_| Ok(()))
        .map_err(|(input, kind)| kind.into_error(Iova::new(input)))
}
