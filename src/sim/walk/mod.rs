//! Reference walkers: one per table format, each decoding raw memory with its own constants.
//!
//! | module | format | spec |
//! |---|---|---|
//! | [`vtd_ss`] | VT-d second stage | VT-d spec rev 4.1, §3.7, §9.8 |
//! | [`vtd_fs`] | VT-d first stage (x86-64 4/5-level paging) | VT-d spec rev 4.1, §3.6, §9.7 |
//! | [`arm_s2`] | Arm VMSAv8-64 stage 2 | Arm ARM DDI 0487 K.a, chapter D8 |
//! | [`arm_s1`] | Arm VMSAv8-64 stage 1 | Arm ARM DDI 0487 K.a, chapter D8 |
//! | [`amdvi_v1`] | AMD-Vi v1 (host) | AMD IOMMU spec 48882 rev 3.10, §2.2.3 |
//! | [`amdvi_v2`] | AMD-Vi v2 (guest, x86-64 4/5-level paging) | AMD IOMMU spec 48882 rev 3.10, §2.2.6 |
//!
//! Every walker offers the same three functions:
//! - `translate(mem, cfg, iova, access) -> Result<Translation<_>, Fault>`: one lookup as the
//!   hardware would do it, including the permission check for `access`;
//! - `walk_all(mem, cfg) -> Result<Vec<(Iova, Translation<_>)>, WalkError>`: every leaf, by
//!   ascending IOVA, with the leaf's base IOVA and base output address and the permissions an
//!   unprivileged request gets (formats with privilege levels report both in their attributes);
//! - `table_pages(mem, cfg) -> Result<Vec<PhysAddr>, WalkError>`: the base of every table
//!   reachable from the root, the root first (a concatenated Arm root is one entry).
//!
//! The descent itself (index, read, decide, recurse) is written once here in terms of
//! a private `Radix` trait; what an entry *means* is entirely the format file's business.

pub mod amdvi_v1;
pub mod amdvi_v2;
pub mod arm;
pub mod arm_s1;
pub mod arm_s2;
pub mod vtd_fs;
pub mod vtd_ss;

use std::collections::BTreeSet;
use std::vec::Vec;

use super::arena::PhysMem;
use crate::mem::{Iova, PhysAddr};

/// What a request wants to do. Several kinds may be set at once (an atomic is read + write); the
/// walker checks read, then write, then execute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// A read.
    pub read: bool,
    /// A write.
    pub write: bool,
    /// An instruction fetch (execute request).
    pub exec: bool,
    /// A privileged (supervisor, EL1) request; ignored by formats without privilege levels.
    pub privileged: bool,
}

impl Access {
    /// An unprivileged read.
    pub const READ: Self = Self {
        read: true,
        write: false,
        exec: false,
        privileged: false,
    };
    /// An unprivileged write.
    pub const WRITE: Self = Self {
        read: false,
        write: true,
        exec: false,
        privileged: false,
    };
    /// An unprivileged instruction fetch.
    pub const EXEC: Self = Self {
        read: false,
        write: false,
        exec: true,
        privileged: false,
    };

    /// The same request made with privilege.
    pub const fn privileged(self) -> Self {
        Self {
            privileged: true,
            ..self
        }
    }
}

/// Read/write/execute permissions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Perms {
    /// Reads allowed.
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Instruction fetches allowed.
    pub exec: bool,
}

/// A successful translation, or one leaf of [`walk_all`](vtd_ss::walk_all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation<A> {
    /// Output address: of the translated byte for `translate`, of the leaf's base for `walk_all`.
    pub pa: PhysAddr,
    /// Log2 of the size of the leaf (page or block) that mapped it.
    pub page_size_log2: u32,
    /// Reads allowed (for the request's privilege; unprivileged in `walk_all`).
    pub read: bool,
    /// Writes allowed.
    pub write: bool,
    /// Instruction fetches allowed.
    pub exec: bool,
    /// Format-specific attributes of the leaf.
    pub attrs: A,
}

/// Which access a permission fault refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessKind {
    /// A read.
    Read,
    /// A write.
    Write,
    /// An instruction fetch.
    Exec,
}

/// The fault hardware would raise. `level` is the spec's own level name: VT-d counts paging
/// structures from the leaf up (1 = PTE, 2 = PDE, 3 = PDPE, 4 = PML4E, 5 = PML5E); Arm counts
/// lookup levels from the root down (0 to 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The input address is outside what the configuration translates (VT-d: above the AGAW or
    /// non-canonical; Arm: at or above 2^IAS).
    InputRange {
        /// The offending input address.
        iova: u64,
    },
    /// The configuration itself is one hardware rejects (e.g. Arm SL0 inconsistent with T0SZ,
    /// a misaligned root).
    BadConfig(&'static str),
    /// The entry is not present (VT-d) / invalid (Arm translation fault).
    Translation {
        /// Level of the entry.
        level: i8,
    },
    /// The mapping exists but does not allow the access.
    Permission {
        /// Level of the leaf.
        level: i8,
        /// The access refused.
        denied: AccessKind,
    },
    /// A reserved bit is set (VT-d). Arm has no reserved-bit faults; its walkers raise this only
    /// for RES0 bits when the configuration asks for strict checking.
    ReservedBit {
        /// Level of the entry.
        level: i8,
        /// Lowest offending bit.
        bit: u32,
    },
    /// An output or table address does not fit the output address size (Arm).
    AddressSize {
        /// Level of the entry holding the address.
        level: i8,
        /// The full address decoded from the entry.
        address: u64,
    },
    /// The leaf's access flag is clear and hardware does not manage it (Arm).
    AccessFlag {
        /// Level of the leaf.
        level: i8,
    },
    /// A leaf carries the Arm Contiguous bit but the naturally aligned run it belongs to is not
    /// complete and consistent: every entry of the run valid, at the same level, carrying the
    /// bit, with the same attributes, mapping consecutive output aligned to the run. Arm ARM
    /// "The Contiguous bit" calls this misprogramming: a TLB may then use any entry of the run
    /// for all of it. Hardware raises no fault; `walk_all` of the Arm walkers reports it. The
    /// AMD-Vi v1 walker reports the same of a page whose size is encoded in its PTE (Next Level
    /// 7) when the entries it spans are not all that same PTE.
    ContiguousMisprogrammed {
        /// Lookup level of the run.
        level: i8,
    },
    /// The table memory could not be read (an external abort / bus error on the walk).
    ExternalAbort {
        /// Level of the table being read.
        level: i8,
        /// Physical address of the entry.
        pa: u64,
    },
}

/// Why `walk_all` or `table_pages` stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// An entry faults (reserved bit, bad address, unreadable table): the table is malformed
    /// at `iova` (the lowest input address the entry covers).
    Fault {
        /// Lowest input address covered by the faulting entry.
        iova: Iova,
        /// The fault.
        fault: Fault,
    },
    /// A table is linked from two places (or from itself). Hardware would walk it, but this
    /// crate never builds one, and enumerating it could take forever.
    TableReachedTwice {
        /// Base of the table.
        table: PhysAddr,
    },
}

/// What one entry means, as a format decodes it.
pub(crate) enum Entry<S, L> {
    /// Not present / invalid: no translation below.
    Invalid,
    /// A link to the next-level table at `next`, with what the walk carries down (permissions).
    Table { next: u64, state: S },
    /// A leaf, with the state accumulated above it already folded in.
    Leaf(L),
}

/// The shape of a radix table as one format reads it. Depth 0 is the root table.
pub(crate) trait Radix {
    /// What a walk accumulates from table entries (hierarchical permissions).
    type State: Copy;
    /// A decoded leaf.
    type Leaf: LeafAddress;

    /// Physical address of the root table.
    fn root(&self) -> u64;
    /// Number of levels walked from the root to the smallest leaf.
    fn depths(&self) -> usize;
    /// The spec's name for the level at `depth`.
    fn level(&self, depth: usize) -> i8;
    /// Lowest input-address bit the index at `depth` resolves.
    fn shift(&self, depth: usize) -> u32;
    /// Number of index bits at `depth` (the root may resolve more, when concatenated, or fewer).
    fn index_bits(&self, depth: usize) -> u32;
    /// The state a walk starts with.
    fn initial(&self) -> Self::State;
    /// Decodes `entry`, read at `depth`, given the state accumulated above it.
    fn decode(
        &self,
        depth: usize,
        entry: u64,
        state: Self::State,
    ) -> Result<Entry<Self::State, Self::Leaf>, Fault>;
    /// The bits of a leaf entry at `depth` that hold output-address bits and nothing else,
    /// from the leaf size up to the output address size (exclusive): the format checks nothing
    /// in them but the address size. 0 if the format makes no such promise.
    ///
    /// A walk relies on it to decode a run of leaves once: an entry that differs from the leaf
    /// before it (same table) only in these bits, and by exactly one leaf size, is that leaf
    /// moved up by one leaf size. It carried into no bit outside them, so every other bit, the
    /// address size check included, reads as the previous leaf's did.
    fn leaf_address_bits(&self, depth: usize) -> u64;
}

/// A decoded leaf whose output address a walk can move (a run of leaves, see
/// [`Radix::leaf_address_bits`]).
pub(crate) trait LeafAddress: Copy {
    /// The leaf's output address.
    fn output_address(&mut self) -> &mut u64;

    /// `self` with its output address moved up by `by` bytes.
    fn advanced(mut self, by: u64) -> Self {
        *self.output_address() += by;
        self
    }
}

/// [`Radix::leaf_address_bits`] of the VT-d first- and second-stage formats: bits 51:12 of a
/// leaf are its address, reserved at and above the host address width `haw`; `lo` is the
/// leaf's size (log2).
fn vtd_leaf_address_bits(haw: u32, lo: u32) -> u64 {
    let hi = haw.min(52);
    if hi > lo {
        bits(hi - 1, lo)
    } else {
        0
    }
}

fn read_entry<R: Radix>(
    mem: &impl PhysMem,
    fmt: &R,
    table: u64,
    depth: usize,
    index: u64,
) -> Result<u64, Fault> {
    let level = fmt.level(depth);
    let pa = index.checked_mul(8).and_then(|off| table.checked_add(off));
    let pa = pa.ok_or(Fault::ExternalAbort { level, pa: table })?;
    mem.read_u64(pa).ok_or(Fault::ExternalAbort { level, pa })
}

fn index_at<R: Radix>(fmt: &R, depth: usize, input: u64) -> u64 {
    let bits = fmt.index_bits(depth);
    (input >> fmt.shift(depth)) & ((1u64 << bits) - 1)
}

/// One lookup of `input` (already range-checked by the format): the leaf's depth and the leaf
/// (which folds in whatever the walk accumulated above it).
pub(crate) fn lookup<R: Radix>(
    mem: &impl PhysMem,
    fmt: &R,
    input: u64,
) -> Result<(usize, R::Leaf), Fault> {
    let mut table = fmt.root();
    let mut state = fmt.initial();
    for depth in 0..fmt.depths() {
        let entry = read_entry(mem, fmt, table, depth, index_at(fmt, depth, input))?;
        match fmt.decode(depth, entry, state)? {
            Entry::Invalid => {
                return Err(Fault::Translation {
                    level: fmt.level(depth),
                })
            }
            Entry::Leaf(leaf) => return Ok((depth, leaf)),
            Entry::Table { next, state: below } => {
                table = next;
                state = below;
            }
        }
    }
    // The last level's decoder never returns `Table`; if one does, it is a model bug, which the
    // hardware equivalent would report as a translation fault at the last level.
    Err(Fault::Translation {
        level: fmt.level(fmt.depths() - 1),
    })
}

/// A leaf found by [`for_each_leaf`].
pub(crate) struct Found<L> {
    /// Lowest input address the leaf maps (index bits only; the format sign-extends if needed).
    pub input: u64,
    pub leaf: L,
}

/// Calls `f` for every leaf, by ascending index, and returns the base of every table visited.
pub(crate) fn for_each_leaf<R: Radix>(
    mem: &impl PhysMem,
    fmt: &R,
    mut f: impl FnMut(Found<R::Leaf>) -> Result<(), Fault>,
) -> Result<Vec<PhysAddr>, (u64, WalkErrorKind)> {
    let mut seen = BTreeSet::new();
    let mut tables = Vec::new();
    visit(
        mem,
        fmt,
        fmt.root(),
        0,
        0,
        fmt.initial(),
        &mut seen,
        &mut tables,
        &mut f,
    )?;
    Ok(tables)
}

/// A [`WalkError`] before the format turns the input address into an [`Iova`].
pub(crate) enum WalkErrorKind {
    Fault(Fault),
    TableReachedTwice(u64),
}

impl WalkErrorKind {
    /// The public error, with `input` made an IOVA by the format's `to_iova`.
    pub(crate) fn into_error(self, iova: Iova) -> WalkError {
        match self {
            Self::Fault(fault) => WalkError::Fault { iova, fault },
            Self::TableReachedTwice(pa) => WalkError::TableReachedTwice {
                table: PhysAddr::new(pa),
            },
        }
    }
}

#[allow(clippy::too_many_arguments)] // the recursion's whole state; a struct would only rename it
fn visit<R: Radix>(
    mem: &impl PhysMem,
    fmt: &R,
    table: u64,
    depth: usize,
    base: u64,
    state: R::State,
    seen: &mut BTreeSet<u64>,
    tables: &mut Vec<PhysAddr>,
    f: &mut impl FnMut(Found<R::Leaf>) -> Result<(), Fault>,
) -> Result<(), (u64, WalkErrorKind)> {
    if !seen.insert(table) {
        return Err((base, WalkErrorKind::TableReachedTwice(table)));
    }
    tables.push(PhysAddr::new(table));
    let entries = 1u64 << fmt.index_bits(depth);
    // Decoding is a function of the entry and the state, which is the same for the whole
    // table: if the format reads a zero entry as invalid (all four do), a run of zero entries
    // is skipped whole, which spares walking every entry of a mostly empty 64 KiB-granule or
    // concatenated root one by one.
    let zero_invalid = matches!(fmt.decode(depth, 0, state), Ok(Entry::Invalid));
    // The last entry decoded as a leaf, with its leaf: the next entry, if it is this one moved
    // by one leaf size within the address bits, is that leaf moved (see `leaf_address_bits`).
    let step = 1u64 << fmt.shift(depth);
    let address_bits = fmt.leaf_address_bits(depth);
    let mut last: Option<(u64, R::Leaf)> = None;
    let mut chunk = [0u64; ZERO_RUN];
    let mut index = 0;
    while index < entries {
        let n = (entries - index).min(ZERO_RUN as u64) as usize;
        let run = &mut chunk[..n];
        let at = table.checked_add(index * 8);
        // The chunk read in one go (every word of a live page); otherwise entry by entry, so
        // that an unreadable one is reported at its own address.
        let read = at.is_some_and(|at| mem.read_words(at, run));
        if zero_invalid && read && *run == ZEROS[..n] {
            index += n as u64;
            last = None;
            continue;
        }
        for (k, index) in (index..index + n as u64).enumerate() {
            let input = base | index << fmt.shift(depth);
            let fault = |fault| (input, WalkErrorKind::Fault(fault));
            let entry = if read {
                run[k]
            } else {
                read_entry(mem, fmt, table, depth, index).map_err(fault)?
            };
            if let Some((previous, leaf)) = last {
                if entry.wrapping_sub(previous) == step && (entry ^ previous) & !address_bits == 0 {
                    let leaf = leaf.advanced(step);
                    f(Found { input, leaf }).map_err(fault)?;
                    last = Some((entry, leaf));
                    continue;
                }
            }
            last = None;
            match fmt.decode(depth, entry, state).map_err(fault)? {
                Entry::Invalid => {}
                Entry::Leaf(leaf) => {
                    f(Found { input, leaf }).map_err(fault)?;
                    last = Some((entry, leaf));
                }
                Entry::Table { next, state: below } if depth + 1 < fmt.depths() => {
                    visit(mem, fmt, next, depth + 1, input, below, seen, tables, f)?;
                }
                Entry::Table { .. } => {
                    return Err(fault(Fault::Translation {
                        level: fmt.level(depth),
                    }))
                }
            }
        }
        index += n as u64;
    }
    Ok(())
}

/// Entries a walk reads at once to skip runs of zero entries.
const ZERO_RUN: usize = 64;
/// What a run of zero entries compares equal to.
const ZEROS: [u64; ZERO_RUN] = [0; ZERO_RUN];

/// Bits `hi:lo` of a 64-bit value set, as the specs write fields.
pub(crate) const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

/// The lowest set bit of `value & mask`, if any: the bit a reserved-bit fault reports.
pub(crate) fn first_set(value: u64, mask: u64) -> Option<u32> {
    let hit = value & mask;
    (hit != 0).then(|| hit.trailing_zeros())
}

#[cfg(test)]
mod tests;
