//! The `Format` trait: what a hardware page-table format tells the generic walker.

use super::{Error, Prot};
use crate::mem::PhysAddr;

/// The shape of a table: granule, levels, address sizes and the page sizes leaves may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Log2 of the granule: the smallest page and the size of every non-root table (12, 14, 16).
    pub granule_log2: u32,
    /// Number of levels; the root is level `levels - 1`.
    pub levels: u32,
    /// Index bits of the root level. More than `granule_log2 - 3` means concatenated root tables
    /// (Arm stage 2, up to 16); fewer means a partially used root.
    pub top_bits: u32,
    /// Input address size in bits: IOVAs are below `1 << ias`.
    pub ias: u32,
    /// Output address size in bits: physical addresses are below `1 << oas`.
    pub oas: u32,
    /// Bit `n` set: a leaf may map `1 << n` bytes. Always includes the granule.
    pub page_sizes: u64,
}

impl Geometry {
    /// Geometry for `ias` input bits with the fewest levels that cover them and no concatenation.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a parameter is out of range (see [`Geometry::validate`]).
    pub fn new(granule_log2: u32, ias: u32, oas: u32, page_sizes: u64) -> Result<Self, Error> {
        let bits = granule_log2.saturating_sub(3).max(1);
        let above = ias.saturating_sub(granule_log2);
        let levels = above.div_ceil(bits).max(1);
        let top_bits = above.saturating_sub((levels - 1) * bits);
        Self::with_levels(granule_log2, ias, oas, levels, top_bits, page_sizes)
    }

    /// Geometry with an explicit level count and root width (for concatenated roots).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when a parameter is out of range (see [`Geometry::validate`]).
    pub fn with_levels(
        granule_log2: u32,
        ias: u32,
        oas: u32,
        levels: u32,
        top_bits: u32,
        page_sizes: u64,
    ) -> Result<Self, Error> {
        let g = Self {
            granule_log2,
            levels,
            top_bits,
            ias,
            oas,
            page_sizes,
        };
        g.validate()?;
        Ok(g)
    }

    /// Checks the invariants the walker relies on.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the first parameter out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |what, value: u32| {
            Err(Error::InvalidConfig {
                what,
                value: value.into(),
            })
        };
        if !matches!(self.granule_log2, 12 | 14 | 16) {
            return bad("granule_log2", self.granule_log2);
        }
        if !(1..=6).contains(&self.levels) {
            return bad("levels", self.levels);
        }
        let bits = self.granule_log2 - 3;
        if self.top_bits == 0 || self.top_bits > bits + 4 {
            return bad("top_bits", self.top_bits);
        }
        if self.granule_log2 + (self.levels - 1) * bits + self.top_bits != self.ias || self.ias > 64
        {
            return bad("ias", self.ias);
        }
        if !(32..=64).contains(&self.oas) {
            return bad("oas", self.oas);
        }
        if self.page_sizes & (1 << self.granule_log2) == 0 {
            return bad("page_sizes (granule missing)", self.granule_log2);
        }
        let valid = (0..self.levels).fold(0u64, |m, l| m | 1 << self.level_shift(l));
        if self.page_sizes & !valid != 0 {
            return Err(Error::InvalidConfig {
                what: "page_sizes",
                value: self.page_sizes,
            });
        }
        Ok(())
    }

    // The helpers below are meaningful for a geometry that passed `validate` and levels below
    // `levels`; the fields are public, so for any other value they answer nonsense but never
    // panic (wrapping arithmetic, shift amounts taken modulo 64: the plain instruction).

    /// Log2 of the span of one entry at `level`.
    #[inline]
    pub const fn level_shift(&self, level: u32) -> u32 {
        self.granule_log2
            .wrapping_add(level.wrapping_mul(self.granule_log2.wrapping_sub(3)))
    }

    /// Index bits at `level`.
    #[inline]
    pub const fn level_bits(&self, level: u32) -> u32 {
        if level.wrapping_add(1) == self.levels {
            self.top_bits
        } else {
            self.granule_log2.wrapping_sub(3)
        }
    }

    /// Index of `iova`'s entry in its table at `level`.
    #[inline]
    pub const fn index(&self, level: u32, iova: u64) -> usize {
        let mask = 1u64.wrapping_shl(self.level_bits(level)).wrapping_sub(1);
        (iova.wrapping_shr(self.level_shift(level)) & mask) as usize
    }

    /// [`Self::index`] at a `level` below the top, whose tables all have `granule_log2 - 3`
    /// index bits: without `index`'s test of the level (the one-page paths, which reach their
    /// leaf table below the root).
    #[inline]
    pub(crate) const fn index_below_top(&self, level: u32, iova: u64) -> usize {
        let mask = 1u64
            .wrapping_shl(self.granule_log2.wrapping_sub(3))
            .wrapping_sub(1);
        (iova.wrapping_shr(self.level_shift(level)) & mask) as usize
    }

    /// Whether a leaf may sit at `level`.
    #[inline]
    pub const fn leaf_allowed(&self, level: u32) -> bool {
        self.level_shift(level) < 64
            && self.page_sizes.wrapping_shr(self.level_shift(level)) & 1 != 0
    }

    /// Log2 of the root table's allocation: at least one granule, more when concatenated.
    #[inline]
    pub const fn root_size_log2(&self) -> u32 {
        let bytes_log2 = self.top_bits.saturating_add(3);
        if bytes_log2 > self.granule_log2 {
            bytes_log2
        } else {
            self.granule_log2
        }
    }

    /// The top level.
    #[inline]
    pub const fn top_level(&self) -> u32 {
        self.levels.saturating_sub(1)
    }
}

/// A hardware page-table format: how entries are encoded and decoded.
///
/// Implementations are small and `#[inline]`: the walker calls them in its inner loops.
///
/// # Safety
///
/// The engine dereferences table memory on the strength of these answers, so an implementation
/// guarantees:
/// - [`geometry`](Self::geometry) is valid ([`Geometry::validate`]) and the same on every call;
/// - for every `level > 0` and table address `pa`, `raw = encode_table(level, pa)` is present,
///   `is_table(level, raw)` holds and `table_address(raw) == pa`, also after the walker set any
///   of the bits it may set (accessed, dirty);
/// - a leaf from [`encode_leaf`](Self::encode_leaf), [`relevel_leaf`](Self::relevel_leaf),
///   [`encode_run_leaf`](Self::encode_run_leaf) or [`leaf_out_of_run`](Self::leaf_out_of_run)
///   at level `l > 0` is present and not a table (`is_table(l, leaf)` is false);
/// - the same holds for `encode_table(level, pa) | split_table_bit()`, and the walker ignores
///   that bit in a table entry;
/// - [`table_address_mask`](Self::table_address_mask), where it is `Some(mask)`, gives
///   `table_address(raw) == raw & mask` for every such table entry;
/// - where [`contiguous_bit`](Self::contiguous_bit) is non-zero, no table entry above carries
///   it, and [`leaf_out_of_run`](Self::leaf_out_of_run) is the leaf without it (the engine
///   breaks such runs by clearing the bit with an atomic AND);
/// - a raw entry whose bits 3:0 are zero is not present. The engine relies on it to link freed
///   table pages into a list through their first word while the hardware may still walk them
///   (see [`super::Gather`]).
pub unsafe trait Format {
    /// The table's shape.
    fn geometry(&self) -> &Geometry;

    /// Whether `raw` is a present entry (a table pointer or a leaf).
    fn is_present(&self, raw: u64) -> bool;

    /// `Some(mask)` if [`Self::is_present`] is exactly `raw & mask != 0` (presence is any of
    /// some bits), so that whether any of many entries is present is one test of their OR:
    /// the map paths check a stretch of entries for emptiness that way, four loads and ORs
    /// per loop step instead of a test and branch per entry (issue 18, goal 2). The
    /// conformance suite checks the equality.
    ///
    /// Default: `None` (every entry is tested on its own).
    #[inline]
    fn present_mask(&self) -> Option<u64> {
        None
    }

    /// Whether the present entry `raw` at `level` points to a next-level table.
    fn is_table(&self, level: u32, raw: u64) -> bool;

    /// The table address in a table entry.
    fn table_address(&self, raw: u64) -> PhysAddr;

    /// `Some(mask)` if [`Self::table_address`] is `raw & mask` for every table entry of this
    /// table: `encode_table(level, pa)` for every table address `pa` below `2^oas`, with the
    /// split mark and any bits the walker sets. The fast paths' descent reads it once per
    /// call and decodes each level's entry with one AND (issue 18, goals 1 and 3: Arm's
    /// decode, which moves OA\[51:48\] with the 64 KiB granule, took 5 instructions and two
    /// loads per level, reloaded after every entry's acquire load). The conformance suite
    /// checks the equality.
    ///
    /// Default: `None` (every entry is decoded by `table_address`).
    #[inline]
    fn table_address_mask(&self) -> Option<u64> {
        None
    }

    /// Encodes a pointer to the table at `table` from an entry at `level`.
    fn encode_table(&self, level: u32, table: PhysAddr) -> u64;

    /// A bit of table entries that the walker ignores, which the engine sets in the entry that
    /// links a table made by splitting a larger page, or 0 if the format has none.
    ///
    /// A thread that unmaps (or cleans dirty state) under such a table cannot know whether the
    /// splitter's invalidation of the larger page has completed, so it invalidates the larger
    /// page too (see `PageTable::unmap`). Without the bit, every table at a level that may hold
    /// leaves is treated as if a split had made it.
    fn split_table_bit(&self) -> u64 {
        0
    }

    /// Checks that `prot` can be expressed by a leaf of this format and configuration.
    ///
    /// # Errors
    /// [`Error::UnsupportedProt`] with `prot`.
    fn check_prot(&self, prot: Prot) -> Result<(), Error>;

    /// Encodes a leaf at `level` mapping `pa` with `prot` (already checked).
    fn encode_leaf(&self, level: u32, pa: PhysAddr, prot: Prot) -> u64;

    /// The output address of the leaf `raw` at `level`. For a leaf of a run
    /// ([`Self::leaf_run_log2`]) it may be the output address of any leaf of the run (AMD-Vi
    /// v1's leaves of one page all hold the page's address): the engine keeps its bits above the
    /// run's size and takes the rest from the IOVA.
    fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr;

    /// The permissions of the leaf `raw`.
    fn leaf_prot(&self, level: u32, raw: u64) -> Prot;

    /// The leaf `raw` at `from` re-encoded at level `to` for output address `pa`, keeping every
    /// attribute (including accessed/dirty state): used to split a larger page.
    fn relevel_leaf(&self, raw: u64, from: u32, to: u32, pa: PhysAddr) -> u64;

    /// Whether a leaf can be replaced by an equivalent table in one store with no
    /// break-before-make (Arm: FEAT_BBM level 2; VT-d: always).
    fn hitless_split(&self) -> bool {
        true
    }

    /// The contiguous-hint bit of a leaf (Arm's Contiguous, bit 52), or 0 for formats without
    /// one. A run of leaves carrying it must be complete and consistent (same attributes,
    /// contiguous output aligned to the run) for as long as any of them carries it. A format
    /// with one makes a run's leaf stand alone by clearing it, and sets it in no table entry
    /// (see the trait's safety section): the engine breaks a run with one atomic AND per leaf.
    fn contiguous_bit(&self) -> u64 {
        0
    }

    /// Log2 of the number of leaves at `level` that one contiguous hint spans (Arm: 16 pages of
    /// 4 KiB, ...), or 0 where this format or configuration sets no hint. Non-zero only where
    /// [`Self::contiguous_bit`] is, and only if a run can be broken without break-before-make
    /// ([`Self::hitless_split`]), since a partial unmap has to clear the hint of the rest of it.
    fn contiguous_log2(&self, level: u32) -> u32 {
        let _ = level;
        0
    }

    /// The runs of leaves at `level` that one encoding may span, as a mask: bit `n` set, a
    /// naturally aligned run of `2^n` leaves (`n` >= 1) mapping an equally aligned output range
    /// with one `prot` may be written as one (Arm: the contiguous hint's single size; AMD-Vi v1:
    /// every power of two up to half a table, pages whose size Next Level 7 encodes in the
    /// address bits). A TLB may hold such a run as one entry, so every leaf of it stays valid
    /// and consistent while any of them is written as part of it. Non-zero only where leaves
    /// may sit and a run can be broken without break-before-make ([`Self::hitless_split`]).
    ///
    /// Default: the single size of [`Self::contiguous_log2`].
    fn contiguous_runs(&self, level: u32) -> u32 {
        match self.contiguous_log2(level) {
            0 => 0,
            n => 1u32.checked_shl(n).unwrap_or(0),
        }
    }

    /// Leaf `index` of a run of `2^n_log2` leaves at `level` whose first maps `pa` (aligned to
    /// the run), with `prot` (already checked).
    ///
    /// Default: the leaf for its own output address with [`Self::contiguous_bit`] set.
    fn encode_run_leaf(
        &self,
        level: u32,
        pa: PhysAddr,
        n_log2: u32,
        index: usize,
        prot: Prot,
    ) -> u64 {
        let _ = n_log2;
        let shift = self.geometry().level_shift(level);
        let own = pa.get().wrapping_add((index as u64).wrapping_shl(shift));
        self.encode_leaf(level, PhysAddr::new(own), prot) | self.contiguous_bit()
    }

    /// The bits of the leaves a map writes at `level` with `prot` that do not depend on their
    /// output address: of lone leaves if `n_log2` is 0, else of the leaves of runs of
    /// `2^n_log2`. Worked out once per stretch of leaves; [`Self::leaf_from_template`] adds the
    /// address of each.
    ///
    /// Default: `encode_leaf` for output address 0, with [`Self::contiguous_bit`] in a run.
    #[inline]
    fn leaf_template(&self, level: u32, n_log2: u32, prot: Prot) -> u64 {
        let leaf = self.encode_leaf(level, PhysAddr::new(0), prot);
        if n_log2 == 0 {
            leaf
        } else {
            leaf | self.contiguous_bit()
        }
    }

    /// The leaf at `level` mapping `pa` (its own output address, aligned to the level and below
    /// `2^oas`: the engine maps no other) from
    /// `template = leaf_template(level, n_log2, prot)`: exactly `encode_leaf(level, pa, prot)`
    /// if `n_log2` is 0, else `encode_run_leaf(level, run, n_log2, index, prot)` for the leaf
    /// `index` of the run at `run` that `pa` is (`pa = run + (index << level_shift)`). The
    /// conformance suite checks both equalities for every format.
    ///
    /// Default: `template | pa`, for formats that hold the output address's own bits in place
    /// (all but Arm's 64 KiB granule, which moves OA\[51:48\], and AMD-Vi's size-encoded runs).
    #[inline]
    fn leaf_from_template(&self, template: u64, level: u32, n_log2: u32, pa: PhysAddr) -> u64 {
        let _ = (level, n_log2);
        template | pa.get()
    }

    /// Whether [`Self::leaf_from_template`] at `level` for runs of `2^n_log2` is
    /// `template | pa` for every output address the table maps (aligned to the level, below
    /// `2^oas`): then the leaf loop adds each address with one OR, decided once per stretch
    /// (issue 18, goal 1: Arm's address encoding was 4-5 instructions per leaf). The
    /// conformance suite checks the equality wherever this is true.
    ///
    /// Default: true, as the default `leaf_from_template` is `template | pa`; a format that
    /// overrides that method overrides this one too.
    #[inline]
    fn leaf_address_in_place(&self, level: u32, n_log2: u32) -> bool {
        let _ = (level, n_log2);
        true
    }

    /// Log2 of the number of leaves of the run the present leaf `raw` at `level` was written as
    /// part of, or 0 if it stands alone.
    ///
    /// Default: [`Self::contiguous_log2`] if `raw` carries [`Self::contiguous_bit`].
    fn leaf_run_log2(&self, level: u32, raw: u64) -> u32 {
        let bit = self.contiguous_bit();
        if bit != 0 && raw & bit != 0 {
            self.contiguous_log2(level)
        } else {
            0
        }
    }

    /// The leaf `raw` of a run at `level`, re-encoded to stand alone: the same translation of
    /// its own span (output address `pa`) and every attribute, accessed/dirty state included.
    ///
    /// Default: `raw` without [`Self::contiguous_bit`].
    fn leaf_out_of_run(&self, level: u32, raw: u64, pa: PhysAddr) -> u64 {
        let _ = (level, pa);
        raw & !self.contiguous_bit()
    }

    /// Whether leaves carry hardware-maintained dirty state in this configuration.
    fn dirty_tracking(&self) -> bool {
        false
    }

    /// Whether the leaf `raw` is dirty.
    fn leaf_is_dirty(&self, raw: u64) -> bool {
        let _ = raw;
        false
    }

    /// `raw` with its dirty state cleaned (the write that hardware will mark dirty again).
    fn leaf_clear_dirty(&self, raw: u64) -> u64 {
        raw
    }
}
