//! Reference walker for AMD-Vi v1 (host) I/O page tables.
//!
//! AMD I/O Virtualization Technology (IOMMU) Specification, document 48882, rev. 3.10: §2.2.3
//! "I/O Page Tables for Host Translations": Figure 8 (PDE) and Figure 9 (PTE), Table 14
//! "Example Page Size Encodings", Table 15 "Page Table Level Parameters"; §2.2.2 the DTE's
//! `Mode` (1 to 6 levels) and `Host Page Table Root Pointer`.
//!
//! Levels, as the spec numbers them: 6 (IOVA bits 63:57, 128 entries) down to 1 (bits 20:12,
//! 4 KiB PTEs). A table of `Mode` = N starts at level N; with N < 6 the IOVA bits above
//! 12 + 9N - 1 must be zero (the walk cannot reach them: an I/O page fault).
//!
//! Entry bits read here:
//! - 0 PR: present.
//! - 11:9 Next Level: in a PDE at level L, the level of the table it points to. L - 1 is the
//!   plain walk; 1 to L - 2 skips levels (their index bits must be zero): this walker does not
//!   model level skipping and refuses it with [`Fault::BadConfig`]; L or more, or a PDE at level
//!   1, is invalid ([`Fault::ReservedBit`] at bit 9, the field's lowest). Next Level 0 is a PTE
//!   of the level's own size (4 KiB, 2 MiB, 1 GiB, ...); 7 is a PTE whose size is encoded in its
//!   address: the first 0 bit from bit 12 up, at bit `n`, makes the page `2^(n + 1)` bytes
//!   (Table 14). Such a page must be larger than the level's own size and smaller than the
//!   span of the entry above (else [`Fault::ReservedBit`] at bit 9); software replicates the
//!   PTE in every entry the page spans, and the IOMMU may use any of them for all of the page:
//!   [`walk_all`] reports a replicated run that is not complete and identical as
//!   [`Fault::ContiguousMisprogrammed`]. Level 6 holds no PTEs (Table 15).
//! - 51:12 address: bits at or above the output size are reserved; below a page's size (a
//!   Next Level 0 PTE above level 1) they are reserved too.
//! - 61 IR, 62 IW: read / write permission, the AND over the walk.
//! - 60 FC, 59 U (PTE): reported. 5 A, 6 D: reported, not checked.
//! - 58:52: reserved. 4:1, 8:7, 63: ignored.
//!
//! Not modelled: level skipping, A/D updates, the DTE's own permission bits (the unit model
//! applies them), the exclusion range.

use std::vec::Vec;

use super::{
    bits, first_set, AccessKind, Entry, Fault, LeafAddress, Radix, Translation, WalkError,
};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

const PR: u64 = 1 << 0;
const A: u64 = 1 << 5;
const D: u64 = 1 << 6;
const NEXT_LEVEL: u64 = bits(11, 9);
const NEXT_LEVEL_SHIFT: u32 = 9;
const ADDRESS: u64 = bits(51, 12);
const RESERVED: u64 = bits(58, 52);
const U: u64 = 1 << 59;
const FC: u64 = 1 << 60;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;
const PAGE_SHIFT: u32 = 12;
const INDEX_BITS: u32 = 9;
/// Next Level of a PTE with the page size encoded in its address.
const NEXT_LEVEL_SIZED: u64 = 7;

/// What the walker needs to know about the device table entry and the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV1Config {
    /// Host Page Table Root Pointer (DTE bits 51:12), 4 KiB aligned.
    pub root: PhysAddr,
    /// DTE `Mode`: the level of the root table, 1 to 6.
    pub mode: u8,
    /// Output (system physical) address size in bits: address bits at or above it are
    /// reserved. At most 52.
    pub oas: u32,
}

/// Attributes of a v1 PTE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AmdV1Attrs {
    /// FC: the request is forced coherent (snooped).
    pub force_coherent: bool,
    /// U (bit 59), reported raw (this crate never sets it).
    pub u: bool,
    /// A of the PTE.
    pub accessed: bool,
    /// D of the PTE.
    pub dirty: bool,
    /// Next Level was 7: the page size came from the address bits.
    pub size_encoded: bool,
}

#[derive(Clone, Copy)]
struct Rights {
    read: bool,
    write: bool,
}

#[derive(Clone, Copy)]
struct Leaf {
    /// Base of the page (of the whole page for a size-encoded one).
    oa: u64,
    size_log2: u32,
    rights: Rights,
    attrs: AmdV1Attrs,
    /// The raw PTE without A and D: every entry of a replicated page must carry the same.
    raw: u64,
}

impl LeafAddress for Leaf {
    fn output_address(&mut self) -> &mut u64 {
        &mut self.oa
    }
}

struct Walker<'a>(&'a AmdV1Config);

impl Walker<'_> {
    fn level_of(&self, depth: usize) -> u32 {
        u32::from(self.0.mode) - depth as u32
    }

    fn level_shift(level: u32) -> u32 {
        PAGE_SHIFT + INDEX_BITS * (level - 1)
    }

    fn invalid_next_level(level: u32) -> Fault {
        Fault::ReservedBit {
            level: level as i8,
            bit: NEXT_LEVEL_SHIFT,
        }
    }

    /// The size (log2) of a PTE at `level` with Next Level `next`, or the fault.
    fn page_size(level: u32, next: u64, entry: u64) -> Result<u32, Fault> {
        let own = Self::level_shift(level);
        if next == 0 {
            return Ok(own);
        }
        // The lowest 0 bit from bit 12 up (bits 11:0 read as ones).
        let zero = (entry | bits(11, 0)).trailing_ones();
        let size_log2 = zero + 1;
        let above = own + if level == 6 { 7 } else { INDEX_BITS };
        if size_log2 <= own || size_log2 >= above || zero > 51 {
            return Err(Self::invalid_next_level(level));
        }
        Ok(size_log2)
    }
}

impl Radix for Walker<'_> {
    type State = Rights;
    type Leaf = Leaf;

    fn root(&self) -> u64 {
        self.0.root.get()
    }
    fn depths(&self) -> usize {
        usize::from(self.0.mode)
    }
    fn level(&self, depth: usize) -> i8 {
        self.level_of(depth) as i8
    }
    fn shift(&self, depth: usize) -> u32 {
        Self::level_shift(self.level_of(depth))
    }
    fn index_bits(&self, depth: usize) -> u32 {
        if self.level_of(depth) == 6 {
            7
        } else {
            INDEX_BITS
        }
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
        if entry & PR == 0 {
            return Ok(Entry::Invalid);
        }
        let level = self.level_of(depth);
        let reserved = RESERVED | bits(51, self.0.oas.min(52)) & ADDRESS;
        if let Some(bit) = first_set(entry, reserved) {
            return Err(Fault::ReservedBit {
                level: level as i8,
                bit,
            });
        }
        let rights = Rights {
            read: above.read && entry & IR != 0,
            write: above.write && entry & IW != 0,
        };
        let next = (entry & NEXT_LEVEL) >> NEXT_LEVEL_SHIFT;
        if next != 0 && next != NEXT_LEVEL_SIZED {
            let next = next as u32;
            if next >= level {
                return Err(Self::invalid_next_level(level));
            }
            if next + 1 != level {
                return Err(Fault::BadConfig("level skipping is not modelled"));
            }
            return Ok(Entry::Table {
                next: entry & ADDRESS,
                state: rights,
            });
        }
        if level == 6 {
            return Err(Self::invalid_next_level(level));
        }
        let size_log2 = Self::page_size(level, next, entry)?;
        let own = Self::level_shift(level);
        if next == 0 && level > 1 {
            if let Some(bit) = first_set(entry, bits(own - 1, PAGE_SHIFT)) {
                return Err(Fault::ReservedBit {
                    level: level as i8,
                    bit,
                });
            }
        }
        let attrs = AmdV1Attrs {
            force_coherent: entry & FC != 0,
            u: entry & U != 0,
            accessed: entry & A != 0,
            dirty: entry & D != 0,
            size_encoded: next == NEXT_LEVEL_SIZED,
        };
        Ok(Entry::Leaf(Leaf {
            oa: entry & bits(51, size_log2),
            size_log2,
            rights,
            attrs,
            raw: entry & !(A | D),
        }))
    }

    fn leaf_address_bits(&self, _depth: usize) -> u64 {
        // A size-encoded PTE's low address bits are its size: one moved by a leaf size is
        // another page size, not the next page.
        0
    }
}

fn check_config(cfg: &AmdV1Config) -> Result<(), Fault> {
    if !(1..=6).contains(&cfg.mode) {
        return Err(Fault::BadConfig("DTE Mode for a v1 table is 1 to 6"));
    }
    if !(32..=52).contains(&cfg.oas) {
        return Err(Fault::BadConfig("output address size outside 32..=52"));
    }
    if !cfg.root.is_aligned(PAGE_SHIFT) || cfg.root.get() >> cfg.oas != 0 {
        return Err(Fault::BadConfig(
            "Host Page Table Root Pointer not 4 KiB aligned or above the output size",
        ));
    }
    Ok(())
}

/// Translates `iova` for `access` as the IOMMU would (execute requests are refused: v1 PTEs
/// grant no execute permission).
///
/// # Errors
///
/// The [`Fault`] the IOMMU would report as an I/O page fault: [`Fault::InputRange`] beyond
/// what `Mode` translates, [`Fault::Translation`] for a non-present entry,
/// [`Fault::ReservedBit`] (also for an invalid Next Level), [`Fault::Permission`],
/// [`Fault::ExternalAbort`] for unreadable table memory, or [`Fault::BadConfig`].
pub fn translate(
    mem: &impl PhysMem,
    cfg: &AmdV1Config,
    iova: Iova,
    access: super::Access,
) -> Result<Translation<AmdV1Attrs>, Fault> {
    check_config(cfg)?;
    let input = iova.get();
    let width = PAGE_SHIFT + INDEX_BITS * u32::from(cfg.mode);
    if width < 64 && input >> width != 0 {
        return Err(Fault::InputRange { iova: input });
    }
    let walker = Walker(cfg);
    let (depth, leaf) = super::lookup(mem, &walker, input)?;
    let rights = leaf.rights;
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
        return Err(Fault::Permission {
            level: walker.level(depth),
            denied,
        });
    }
    let offset = input & ((1u64 << leaf.size_log2) - 1);
    Ok(translation(&leaf, leaf.oa | offset))
}

fn translation(leaf: &Leaf, pa: u64) -> Translation<AmdV1Attrs> {
    Translation {
        pa: PhysAddr::new(pa),
        page_size_log2: leaf.size_log2,
        read: leaf.rights.read,
        write: leaf.rights.write,
        exec: false,
        attrs: leaf.attrs,
    }
}

/// A size-encoded page being read entry by entry.
struct Pending {
    /// IOVA of the page.
    base: u64,
    /// IOVA of the next entry expected.
    next: u64,
    leaf: Leaf,
}

/// Every page, by ascending IOVA, as (page base IOVA, translation of the page base). A
/// size-encoded page is reported once, with its whole size, after all the entries it spans
/// were found identical (A and D aside).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first entry that faults; a replicated page not complete and
/// identical is [`Fault::ContiguousMisprogrammed`] at the page's base.
/// [`WalkError::TableReachedTwice`] for a shared or cyclic table.
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &AmdV1Config,
) -> Result<Vec<(Iova, Translation<AmdV1Attrs>)>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    let mut out = Vec::new();
    let mut pending: Option<Pending> = None;
    // The base of the page found misprogrammed: the error names it, not the entry that told.
    let mut broken = None;
    super::for_each_leaf(mem, &Walker(cfg), |found| {
        let leaf = found.leaf;
        if let Some(p) = pending.take() {
            if found.input != p.next || leaf.raw != p.leaf.raw {
                broken = Some(p.base);
                return Err(misprogrammed(&p));
            }
            let next = p.next.wrapping_add(1u64 << entry_shift(&p));
            if next == p.base.wrapping_add(1u64 << p.leaf.size_log2) {
                out.push((Iova::new(p.base), translation(&p.leaf, p.leaf.oa)));
            } else {
                pending = Some(Pending { next, ..p });
            }
            return Ok(());
        }
        if !leaf.attrs.size_encoded {
            out.push((Iova::new(found.input), translation(&leaf, leaf.oa)));
            return Ok(());
        }
        let base = found.input & !((1u64 << leaf.size_log2) - 1);
        let p = Pending {
            base,
            next: base,
            leaf,
        };
        if found.input != base {
            broken = Some(base);
            return Err(misprogrammed(&p));
        }
        pending = Some(Pending {
            next: base.wrapping_add(1u64 << entry_shift(&p)),
            ..p
        });
        Ok(())
    })
    .map_err(|(input, kind)| kind.into_error(Iova::new(broken.unwrap_or(input))))?;
    if let Some(p) = pending {
        return Err(WalkError::Fault {
            iova: Iova::new(p.base),
            fault: misprogrammed(&p),
        });
    }
    Ok(out)
}

fn misprogrammed(p: &Pending) -> Fault {
    Fault::ContiguousMisprogrammed {
        level: ((entry_shift(p) - PAGE_SHIFT) / INDEX_BITS + 1) as i8,
    }
}

/// Log2 of the span of one entry of the replicated page `p` (the level it sits at).
fn entry_shift(p: &Pending) -> u32 {
    // The page lies at the level whose entries are the largest below its size.
    let above_4k = p.leaf.size_log2 - PAGE_SHIFT - 1;
    PAGE_SHIFT + INDEX_BITS * (above_4k / INDEX_BITS)
}

/// The base of every table reachable from the root, the root first.
///
/// # Errors
///
/// As [`walk_all`], but a replicated page is not checked.
pub fn table_pages(mem: &impl PhysMem, cfg: &AmdV1Config) -> Result<Vec<PhysAddr>, WalkError> {
    check_config(cfg).map_err(|fault| WalkError::Fault {
        iova: Iova::ZERO,
        fault,
    })?;
    super::for_each_leaf(mem, &Walker(cfg), |_| Ok(()))
        .map_err(|(input, kind)| kind.into_error(Iova::new(input)))
}
