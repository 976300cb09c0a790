//! Reference walker for VT-d second-stage tables.
//!
//! Intel Virtualization Technology for Directed I/O Architecture Specification, rev 4.1:
//! §3.7 "Second-Stage Translation" (walk, large pages, access rights, snoop), §9.8
//! "Second-Stage Paging Entries" (entry formats, reserved bits).
//!
//! Levels, named as the spec names the entries: 5 = SS-PML5E, 4 = SS-PML4E, 3 = SS-PDPE,
//! 2 = SS-PDE, 1 = SS-PTE. A 3-level table (AGAW 39) starts at the SS-PDPE, 4-level (48) at the
//! SS-PML4E, 5-level (57) at the SS-PML5E. Each table is one 4 KiB page of 512 entries.
//!
//! Entry bits read here:
//! - 0 R, 1 W: the entry is present iff R or W is set; effective permission is the AND over the
//!   walk.
//! - 7 PS: in an SS-PDPE/SS-PDE, set means a 1 GiB / 2 MiB leaf; reserved in SS-PML5E/PML4E, and
//!   reserved where `CAP.SLLPS` does not list the size.
//! - 8 A (every level), 9 D (leaves): reported, never checked (meaningful only with SSADE).
//! - 11 SNP: leaves only, reserved unless `ECAP.SC`; reserved in non-leaf entries.
//! - 5:3 EMT, 6 IPAT (leaves): reported raw, not checked.
//! - 51:12 address; bits at or above the host address width are reserved; the low bits of a large
//!   leaf's address (20:12 for 2 MiB, 29:12 for 1 GiB) are reserved.
//! - 62: reserved (the former TM bit). 2, 10, 61:52, 63: ignored.
//!
//! Not modelled: execute requests (bit 2, removed from rev 4 as the spec's execute support was),
//! the MGAW limit on the input address (the walker checks the AGAW only), A/D updates, memory
//! type combination with PAT/MTRR.

use std::vec::Vec;

use super::{
    bits, first_set, vtd_leaf_address_bits, AccessKind, Entry, Fault, LeafAddress, Radix,
    Translation, WalkError,
};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

const R: u64 = 1 << 0;
const W: u64 = 1 << 1;
const EMT_SHIFT: u32 = 3;
const EMT_MASK: u64 = bits(5, 3);
const IPAT: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const A: u64 = 1 << 8;
const D: u64 = 1 << 9;
const SNP: u64 = 1 << 11;
const ADDRESS: u64 = bits(51, 12);
/// Reserved in every entry (rev 4.1 Tables "Format of SS-PML5E" ... "SS-PTE").
const RESERVED_ALWAYS: u64 = 1 << 62;
const PAGE_SHIFT: u32 = 12;
const INDEX_BITS: u32 = 9;

/// What the walker needs to know about the unit and the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdSsConfig {
    /// Second-stage page-table pointer (SSPTPTR / SLPTPTR), 4 KiB aligned.
    pub root: PhysAddr,
    /// Number of levels: 3, 4 or 5 (AGAW 39, 48, 57), from the entry's AW and `CAP.SAGAW`.
    pub levels: u8,
    /// Host address width (HAW, from the DMAR table; bounded by `CAP.MGAW`): address bits at or
    /// above it are reserved. At most 52.
    pub haw: u32,
    /// `CAP.SLLPS` bit 0: 2 MiB leaves allowed.
    pub large_2m: bool,
    /// `CAP.SLLPS` bit 1: 1 GiB leaves allowed.
    pub large_1g: bool,
    /// `ECAP.SC`: the unit supports snoop control, so SNP is defined in leaves.
    pub snoop_control: bool,
}

/// Attributes of a second-stage leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdSsAttrs {
    /// SNP: the access snoops the CPU caches whatever the request's no-snoop attribute.
    pub snoop: bool,
    /// A of the leaf.
    pub accessed: bool,
    /// D of the leaf.
    pub dirty: bool,
    /// EMT, bits 5:3 (raw).
    pub emt: u8,
    /// IPAT.
    pub ipat: bool,
}

#[derive(Clone, Copy)]
struct Leaf {
    oa: u64,
    size_log2: u32,
    rights: Rights,
    attrs: VtdSsAttrs,
}

impl LeafAddress for Leaf {
    fn output_address(&mut self) -> &mut u64 {
        &mut self.oa
    }
}

#[derive(Clone, Copy)]
struct Rights {
    read: bool,
    write: bool,
}

struct Walker<'a>(&'a VtdSsConfig);

impl Walker<'_> {
    fn level_of(&self, depth: usize) -> u32 {
        u32::from(self.0.levels) - depth as u32
    }

    fn large_allowed(&self, level: u32) -> bool {
        match level {
            2 => self.0.large_2m,
            3 => self.0.large_1g,
            _ => false,
        }
    }

    /// Reserved bits of a present entry at `level`, with `leaf` already decided.
    fn reserved(&self, level: u32, leaf: bool) -> u64 {
        let mut mask = RESERVED_ALWAYS | bits(51, self.0.haw.min(52)) & ADDRESS;
        if !leaf || !self.0.snoop_control {
            mask |= SNP;
        }
        if leaf && level > 1 {
            // The page address starts at the page size: the bits below it are reserved.
            mask |= bits(PAGE_SHIFT + INDEX_BITS * (level - 1) - 1, PAGE_SHIFT);
        }
        mask
    }
}

impl Radix for Walker<'_> {
    type State = Rights;
    type Leaf = Leaf;

    fn root(&self) -> u64 {
        self.0.root.get()
    }
    fn depths(&self) -> usize {
        usize::from(self.0.levels)
    }
    fn level(&self, depth: usize) -> i8 {
        self.level_of(depth) as i8
    }
    fn shift(&self, depth: usize) -> u32 {
        PAGE_SHIFT + INDEX_BITS * (self.level_of(depth) - 1)
    }
    fn index_bits(&self, _depth: usize) -> u32 {
        INDEX_BITS
    }
    fn initial(&self) -> Rights {
        Rights {
            read: true,
            write: true,
        }
    }

    fn decode(
        &self,
        depth: usize,
        entry: u64,
        above: Rights,
    ) -> Result<Entry<Rights, Leaf>, Fault> {
        if entry & (R | W) == 0 {
            return Ok(Entry::Invalid);
        }
        let level = self.level_of(depth);
        let fault_level = level as i8;
        // PS means "leaf" only in an SS-PDPE or SS-PDE; elsewhere (and where SLLPS lacks the size)
        // bit 7 is reserved, which the mask below reports. An SS-PTE ignores bit 7.
        let leaf = level == 1 || entry & PS != 0 && self.large_allowed(level);
        let mut reserved = self.reserved(level, leaf);
        if level > 1 && !leaf {
            reserved |= PS;
        }
        if let Some(bit) = first_set(entry, reserved) {
            return Err(Fault::ReservedBit {
                level: fault_level,
                bit,
            });
        }
        let state = Rights {
            read: above.read && entry & R != 0,
            write: above.write && entry & W != 0,
        };
        if !leaf {
            return Ok(Entry::Table {
                next: entry & ADDRESS,
                state,
            });
        }
        let size_log2 = self.shift(depth);
        let attrs = VtdSsAttrs {
            snoop: entry & SNP != 0,
            accessed: entry & A != 0,
            dirty: entry & D != 0,
            emt: ((entry & EMT_MASK) >> EMT_SHIFT) as u8,
            ipat: entry & IPAT != 0,
        };
        Ok(Entry::Leaf(Leaf {
            oa: entry & bits(51, size_log2),
            size_log2,
            rights: state,
            attrs,
        }))
    }

    fn leaf_address_bits(&self, depth: usize) -> u64 {
        vtd_leaf_address_bits(self.0.haw, self.shift(depth))
    }
}

fn check_config(cfg: &VtdSsConfig) -> Result<(), Fault> {
    if !(3..=5).contains(&cfg.levels) {
        return Err(Fault::BadConfig(
            "second-stage tables have 3, 4 or 5 levels",
        ));
    }
    if !(32..=52).contains(&cfg.haw) {
        return Err(Fault::BadConfig("host address width outside 32..=52"));
    }
    let root = cfg.root.get();
    if !cfg.root.is_aligned(PAGE_SHIFT) || root >> cfg.haw != 0 {
        return Err(Fault::BadConfig(
            "SSPTPTR not 4 KiB aligned or above the host address width",
        ));
    }
    Ok(())
}

fn input_bits(cfg: &VtdSsConfig) -> u32 {
    PAGE_SHIFT + INDEX_BITS * u32::from(cfg.levels)
}

/// Translates `iova` for `access` as the unit would.
///
/// # Errors
///
/// The [`Fault`] the unit would report: [`Fault::InputRange`] above the AGAW,
/// [`Fault::Translation`] for a non-present entry, [`Fault::ReservedBit`],
/// [`Fault::Permission`], [`Fault::ExternalAbort`] for unreadable table memory, or
/// [`Fault::BadConfig`].
pub fn translate(
    mem: &impl PhysMem,
    cfg: &VtdSsConfig,
    iova: Iova,
    access: super::Access,
) -> Result<Translation<VtdSsAttrs>, Fault> {
    check_config(cfg)?;
    let input = iova.get();
    if input >> input_bits(cfg) != 0 {
        return Err(Fault::InputRange { iova: input });
    }
    let walker = Walker(cfg);
    let (depth, leaf) = super::lookup(mem, &walker, input)?;
    let rights = leaf.rights;
    let level = walker.level(depth);
    let denied = if access.read && !rights.read {
        Some(AccessKind::Read)
    } else if access.write && !rights.write {
        Some(AccessKind::Write)
    } else if access.exec {
        Some(AccessKind::Exec)
    } else {
        None
    };
    if let Some(denied) = denied {
        return Err(Fault::Permission { level, denied });
    }
    let offset = input & ((1u64 << leaf.size_log2) - 1);
    Ok(translation(leaf, leaf.oa | offset))
}

fn translation(leaf: Leaf, pa: u64) -> Translation<VtdSsAttrs> {
    Translation {
        pa: PhysAddr::new(pa),
        page_size_log2: leaf.size_log2,
        read: leaf.rights.read,
        write: leaf.rights.write,
        exec: false,
        attrs: leaf.attrs,
    }
}

/// Every leaf, by ascending IOVA, as (leaf base IOVA, translation of the leaf base).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first entry that faults, [`WalkError::TableReachedTwice`] for a
/// shared or cyclic table.
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &VtdSsConfig,
) -> Result<Vec<(Iova, Translation<VtdSsAttrs>)>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    let mut out = Vec::new();
    super::for_each_leaf(mem, &Walker(cfg), |found| {
        out.push((
            Iova::new(found.input),
            translation(found.leaf, found.leaf.oa),
        ));
        Ok(())
    })
    .map_err(|(input, kind)| kind.into_error(Iova::new(input)))?;
    Ok(out)
}

/// The base of every table reachable from the root, the root first.
///
/// # Errors
///
/// As [`walk_all`].
pub fn table_pages(mem: &impl PhysMem, cfg: &VtdSsConfig) -> Result<Vec<PhysAddr>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    super::for_each_leaf(mem, &Walker(cfg), |_| Ok(()))
        .map_err(|(input, kind)| kind.into_error(Iova::new(input)))
}
