//! Reference walker for VT-d first-stage tables (x86-64 4- and 5-level paging as VT-d uses it).
//!
//! Intel Virtualization Technology for Directed I/O Architecture Specification, rev 4.1:
//! §3.6 "First-Stage Translation" (§3.6.1 access rights, §3.6.2 accessed/dirty), §9.7
//! "First-Stage Paging Entries". The entry layout is the Intel SDM vol. 3A §4.5 IA-32e one.
//!
//! Levels: 5 = PML5E, 4 = PML4E, 3 = PDPE, 2 = PDE, 1 = PTE. Each table is one 4 KiB page.
//!
//! Entry bits read here:
//! - 0 P; 1 R/W; 2 U/S: write and user rights are the AND over the walk.
//! - 3 PWT, 4 PCD, and PAT (bit 7 in a PTE, bit 12 in a 2 MiB / 1 GiB leaf): reported as the
//!   3-bit PAT index of the leaf.
//! - 5 A (every level), 6 D (leaves), 8 G (leaves): reported, not checked.
//! - 7 PS: leaf in a PDPE (1 GiB, reserved unless `CAP.FS1GP`) or PDE (2 MiB); reserved in PML5E
//!   and PML4E.
//! - 51:12 address: bits at or above the host address width are reserved; 29:13 (1 GiB) and
//!   20:13 (2 MiB) are reserved in large leaves.
//! - 63 XD: execute-disable, the OR over the walk; reserved when execute-disable is not enabled.
//! - 11:9 and 62:52: ignored (protection keys are not used by VT-d).
//!
//! Input addresses must be canonical (bits 63:47, or 63:56 with 5 levels, all equal).
//!
//! Not modelled: A/D updates, extended-accessed (EA), SMAP-style supervisor read checks (VT-d
//! has none), and memory-type resolution.

use std::vec::Vec;

use super::{
    bits, first_set, vtd_leaf_address_bits, Access, AccessKind, Entry, Fault, LeafAddress, Perms,
    Radix, Translation, WalkError,
};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

const P: u64 = 1 << 0;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PWT: u64 = 1 << 3;
const PCD: u64 = 1 << 4;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const PS: u64 = 1 << 7;
const PAT_PTE: u64 = 1 << 7;
const G: u64 = 1 << 8;
const PAT_LARGE: u64 = 1 << 12;
const XD: u64 = 1 << 63;
const ADDRESS: u64 = bits(51, 12);
const PAGE_SHIFT: u32 = 12;
const INDEX_BITS: u32 = 9;

/// What the walker needs to know about the unit and the PASID entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdFsConfig {
    /// First-stage page-table pointer (FSPTPTR), 4 KiB aligned.
    pub root: PhysAddr,
    /// 4 or 5 levels (PASID entry FSPM; 5 needs `CAP.FS5LP`).
    pub levels: u8,
    /// Host address width: address bits at or above it are reserved. At most 52.
    pub haw: u32,
    /// `CAP.FS1GP`: 1 GiB leaves allowed.
    pub large_1g: bool,
    /// Execute-disable is enabled (the IA-32e `EFER.NXE` equivalent): bit 63 is XD. When false,
    /// bit 63 is reserved.
    pub execute_disable: bool,
    /// PASID entry WPE: supervisor writes honour R/W (CR0.WP equivalent).
    pub write_protect: bool,
    /// Supervisor instruction fetches from user pages are refused (SMEP equivalent).
    pub smep: bool,
}

/// Attributes of a first-stage leaf.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdFsAttrs {
    /// Rights of a user (unprivileged) request.
    pub user: Perms,
    /// Rights of a supervisor (privileged) request.
    pub supervisor: Perms,
    /// A of the leaf.
    pub accessed: bool,
    /// D of the leaf.
    pub dirty: bool,
    /// G of the leaf.
    pub global: bool,
    /// PAT index of the leaf: PAT << 2 | PCD << 1 | PWT.
    pub pat_index: u8,
}

/// Rights accumulated over the walk.
#[derive(Clone, Copy)]
struct Rights {
    write: bool,
    user: bool,
    execute_disable: bool,
}

#[derive(Clone, Copy)]
struct Leaf {
    oa: u64,
    size_log2: u32,
    attrs: VtdFsAttrs,
}

impl LeafAddress for Leaf {
    fn output_address(&mut self) -> &mut u64 {
        &mut self.oa
    }
}

struct Walker<'a>(&'a VtdFsConfig);

impl Walker<'_> {
    fn level_of(&self, depth: usize) -> u32 {
        u32::from(self.0.levels) - depth as u32
    }

    fn reserved(&self, level: u32, entry: u64) -> u64 {
        let mut mask = bits(51, self.0.haw.min(52)) & ADDRESS;
        if !self.0.execute_disable {
            mask |= XD;
        }
        let large = entry & PS != 0;
        match level {
            4 | 5 => mask |= PS,
            3 if large && !self.0.large_1g => mask |= PS,
            3 if large => mask |= bits(29, 13),
            2 if large => mask |= bits(20, 13),
            _ => {}
        }
        mask
    }

    fn leaf(&self, level: u32, entry: u64, rights: Rights) -> Leaf {
        let size_log2 = PAGE_SHIFT + INDEX_BITS * (level - 1);
        let pat = if level == 1 {
            entry & PAT_PTE != 0
        } else {
            entry & PAT_LARGE != 0
        };
        let pat_index =
            u8::from(pat) << 2 | u8::from(entry & PCD != 0) << 1 | u8::from(entry & PWT != 0);
        let cfg = self.0;
        let user = Perms {
            read: rights.user,
            write: rights.user && rights.write,
            exec: rights.user && !rights.execute_disable,
        };
        let smep_blocks = cfg.smep && rights.user;
        let supervisor = Perms {
            read: true,
            write: rights.write || !cfg.write_protect,
            exec: !(rights.execute_disable || smep_blocks),
        };
        let attrs = VtdFsAttrs {
            user,
            supervisor,
            accessed: entry & A != 0,
            dirty: entry & D != 0,
            global: entry & G != 0,
            pat_index,
        };
        Leaf {
            oa: entry & bits(51, size_log2),
            size_log2,
            attrs,
        }
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
            write: true,
            user: true,
            execute_disable: false,
        }
    }

    fn decode(
        &self,
        depth: usize,
        entry: u64,
        above: Rights,
    ) -> Result<Entry<Rights, Leaf>, Fault> {
        if entry & P == 0 {
            return Ok(Entry::Invalid);
        }
        let level = self.level_of(depth);
        if let Some(bit) = first_set(entry, self.reserved(level, entry)) {
            return Err(Fault::ReservedBit {
                level: level as i8,
                bit,
            });
        }
        let rights = Rights {
            write: above.write && entry & RW != 0,
            user: above.user && entry & US != 0,
            execute_disable: above.execute_disable || self.0.execute_disable && entry & XD != 0,
        };
        if level == 1 || entry & PS != 0 {
            Ok(Entry::Leaf(self.leaf(level, entry, rights)))
        } else {
            Ok(Entry::Table {
                next: entry & ADDRESS,
                state: rights,
            })
        }
    }

    fn leaf_address_bits(&self, depth: usize) -> u64 {
        // Bit 12 of a large leaf is PAT, below its address.
        vtd_leaf_address_bits(self.0.haw, self.shift(depth))
    }
}

fn check_config(cfg: &VtdFsConfig) -> Result<(), Fault> {
    if !(4..=5).contains(&cfg.levels) {
        return Err(Fault::BadConfig("first-stage tables have 4 or 5 levels"));
    }
    if !(32..=52).contains(&cfg.haw) {
        return Err(Fault::BadConfig("host address width outside 32..=52"));
    }
    if !cfg.root.is_aligned(PAGE_SHIFT) || cfg.root.get() >> cfg.haw != 0 {
        return Err(Fault::BadConfig(
            "FSPTPTR not 4 KiB aligned or above the host address width",
        ));
    }
    Ok(())
}

/// Width of the linear address: 48 or 57 bits.
fn input_bits(cfg: &VtdFsConfig) -> u32 {
    PAGE_SHIFT + INDEX_BITS * u32::from(cfg.levels)
}

/// Sign-extends the top translated bit: the canonical form of an index-built address.
fn canonical(cfg: &VtdFsConfig, input: u64) -> u64 {
    let unused = 64 - input_bits(cfg);
    (((input << unused) as i64) >> unused) as u64
}

/// Translates `iova` for `access` as the unit would.
///
/// # Errors
///
/// [`Fault::InputRange`] for a non-canonical address, [`Fault::Translation`] for a non-present
/// entry, [`Fault::ReservedBit`], [`Fault::Permission`], [`Fault::ExternalAbort`], or
/// [`Fault::BadConfig`].
pub fn translate(
    mem: &impl PhysMem,
    cfg: &VtdFsConfig,
    iova: Iova,
    access: Access,
) -> Result<Translation<VtdFsAttrs>, Fault> {
    check_config(cfg)?;
    let input = iova.get();
    if canonical(cfg, input) != input {
        return Err(Fault::InputRange { iova: input });
    }
    let walker = Walker(cfg);
    let (depth, leaf) = super::lookup(mem, &walker, input)?;
    let perms = if access.privileged {
        leaf.attrs.supervisor
    } else {
        leaf.attrs.user
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
        return Err(Fault::Permission {
            level: walker.level(depth),
            denied,
        });
    }
    let offset = input & ((1u64 << leaf.size_log2) - 1);
    Ok(translation(&leaf, perms, leaf.oa | offset))
}

fn translation(leaf: &Leaf, perms: Perms, pa: u64) -> Translation<VtdFsAttrs> {
    Translation {
        pa: PhysAddr::new(pa),
        page_size_log2: leaf.size_log2,
        read: perms.read,
        write: perms.write,
        exec: perms.exec,
        attrs: leaf.attrs,
    }
}

/// Every leaf, by ascending index (so the upper, sign-extended half follows the lower), as
/// (canonical leaf base IOVA, translation of the leaf base with user rights).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first entry that faults, [`WalkError::TableReachedTwice`] for a
/// shared or cyclic table.
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &VtdFsConfig,
) -> Result<Vec<(Iova, Translation<VtdFsAttrs>)>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    let mut out = Vec::new();
    super::for_each_leaf(mem, &Walker(cfg), |found| {
        let leaf = &found.leaf;
        out.push((
            Iova::new(canonical(cfg, found.input)),
            translation(leaf, leaf.attrs.user, leaf.oa),
        ));
        Ok(())
    })
    .map_err(|(input, kind)| kind.into_error(Iova::new(canonical(cfg, input))))?;
    Ok(out)
}

/// The base of every table reachable from the root, the root first.
///
/// # Errors
///
/// As [`walk_all`].
pub fn table_pages(mem: &impl PhysMem, cfg: &VtdFsConfig) -> Result<Vec<PhysAddr>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    super::for_each_leaf(mem, &Walker(cfg), |_| Ok(()))
        .map_err(|(input, kind)| kind.into_error(Iova::new(canonical(cfg, input))))
}
