//! `PageTable`: the generic walker, written once and monomorphised per [`Format`].
//!
//! Every operation validates its whole range first and either completes or leaves the table
//! exactly as it was: `map` checks for overlap and reserves every table page it will need in a
//! read-only first pass; `unmap` checks the larger pages its ends would cut and reserves the
//! pages a split needs before it clears anything. The exceptions are what only the walk can
//! meet (an entry hardware keeps rewriting, a corrupt table entry): `unmap` and
//! `read_and_clear_dirty` then stop with what they changed so far in their gather, which the
//! caller flushes.

use super::sync::{AtomicU64, Ordering};
use core::ptr::NonNull;

use super::spares::{self, Spares};
use super::{Error, Format, Gather, Geometry, Leaf, Mapping, Prot};
use crate::mem::{Iova, Page, PageAllocator, PhysAddr, WalkerCoherency};

/// What `unmap` does when its range cuts a larger page.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SplitPolicy {
    /// Replace the larger page by a fully populated table in one atomic store, then remove the
    /// asked part.
    #[default]
    Split,
    /// Fail with [`Error::SplitRefused`] and change nothing.
    Refuse,
}

/// How many times a compare-and-swap on a leaf is retried while hardware updates its
/// accessed/dirty bits. Those bits only ever get set, so a handful of retries always suffices.
const HW_UPDATE_RETRIES: u32 = 8;

/// Where an operation has read the entry `slot` and is about to replace it with a
/// compare-and-swap (or, having found a run claiming it, to look for that run again and break
/// it: `break_runs_over`). Unit-test builds yield the CPU here, so that the threaded tests
/// (`race_tests`) lose the race on a loaded machine too, and let a test play hardware that
/// keeps rewriting the entry (`testutil::keep_rewriting`) or another CPU that completes the
/// run's break first (`testutil::with_other_cpu_at`); other builds compile it to nothing.
#[inline(always)]
pub(super) fn race_window(slot: &AtomicU64) {
    #[cfg(all(test, feature = "std"))]
    {
        super::testutil::rewrite_if_asked(slot);
        super::testutil::other_cpu_if_asked(slot);
        std::thread::yield_now();
    }
    #[cfg(not(all(test, feature = "std")))]
    let _ = slot;
}

/// Whether reading dirty state cleans it ([`PageTable::read_dirty`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DirtyRead {
    /// Report and clean (the range must then be invalidated).
    Clear,
    /// Report only (iommufd `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`).
    NoClear,
}

/// A page table of format `F` whose pages come from `A`.
///
/// Dropping a `PageTable` leaks its pages: they may only be freed after the hardware has been
/// told, so call [`PageTable::destroy`] and release the gather after the invalidation.
pub struct PageTable<F: Format, A: PageAllocator> {
    format: F,
    alloc: A,
    root: Page,
    coherency: WalkerCoherency,
    split: SplitPolicy,
    /// `format.contiguous_runs(0)`, read once: the leaf-table paths consult it on every call.
    leaf_runs: u32,
    /// Log2 of the largest translation `map` may write: a leaf above level 0, or a run of
    /// leaves under the contiguous hint, spanning more is not written (`u32::MAX`: no limit).
    /// See [`PageTable::set_max_leaf_log2`].
    max_leaf_log2: u32,
    /// The sizes of `leaf_runs` whose runs of level-0 leaves fit `max_leaf_log2`: the runs `map`
    /// writes (unmap still meets the runs earlier maps wrote, by `leaf_runs`).
    map_runs: u32,
    /// Dirty tracking is on ([`PageTable::set_dirty_tracking`]): new writable leaves are
    /// written clean, so that only writes after the map mark them dirty. Not table memory:
    /// a plain atomic also under loom.
    tracking: core::sync::atomic::AtomicBool,
}

// SAFETY: the table's memory is only accessed through atomics, and the page pointers are owned
// by the table; sending it moves that ownership.
unsafe impl<F: Format + Send, A: PageAllocator + Send> Send for PageTable<F, A> {}
// SAFETY: every `&self` method accesses table memory through atomic operations, and installs
// tables with compare-and-swap; concurrent callers on disjoint ranges cannot corrupt it.
unsafe impl<F: Format + Sync, A: PageAllocator + Sync> Sync for PageTable<F, A> {}

impl<F: Format, A: PageAllocator> core::fmt::Debug for PageTable<F, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageTable")
            .field("root", &self.root.pa)
            .field("geometry", self.format.geometry())
            .field("coherency", &self.coherency)
            .field("split", &self.split)
            .finish()
    }
}

/// The most levels a table has (`Geometry::validate`; AMD-Vi v1 with a 64-bit domain): the
/// depth of a walk's path. The walks below the root (`visit`, `reap`, `clear_dirty_level`,
/// `reclaim_level`, `count_tables`) keep the tables they have open in an array of this many,
/// not in frames of their own: a walk takes one frame however deep the table (a kernel stack).
pub(super) const WALK_LEVELS: usize = 6;

/// `depth` as an index into a walk's path: `depth` itself, since a walk opens a table only
/// below one at level 1 or more and starts below level 6 (`depth <= level < WALK_LEVELS`),
/// but bounded where the compiler sees it, so that no bounds check (a panic) is compiled in.
#[inline(always)]
pub(super) const fn open_at(depth: usize) -> usize {
    if depth < WALK_LEVELS {
        depth
    } else {
        WALK_LEVELS - 1
    }
}

/// `x >> bits` for every `bits` in 1..=64 (a validated geometry's input and output sizes),
/// without a test: `x >> (bits - 1) >> 1`.
#[inline(always)]
fn above(x: u64, bits: u32) -> u64 {
    x >> (bits.wrapping_sub(1) & 63) >> 1
}

/// What `map_page` did with its page.
#[derive(Clone, Copy, PartialEq, Eq)]
enum PageMap {
    /// Mapped.
    Mapped,
    /// Nothing changed: the page's entry is present (`Error::Overlap` at the page).
    Overlap,
    /// Nothing changed: not a case of the one-page path (`map_range` decides).
    NotHere,
}

/// What `map_fast` did with its range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FastMap {
    /// Mapped.
    Mapped,
    /// Nothing changed: the entry mapping this IOVA is present (`Error::Overlap` there).
    Overlap(u64),
    /// Nothing changed: the arguments passed the checks, but the range is not a case of the
    /// fast paths (the general walk of `map_range` maps it).
    NotHere,
    /// Nothing changed: an argument to refuse (`map_range`'s checks name it). A variant
    /// without data, not a flag of `NotHere`: the answer then comes back in two registers,
    /// not through memory.
    Unchecked,
}

/// What `unmap_fast` did with its range.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FastUnmap {
    /// Unmapped this many bytes (0: nothing there).
    Unmapped(u64),
    /// Nothing changed: the arguments passed the checks, but the range is not a case of the
    /// leaf-table fast path (`unmap_range` decides).
    NotHere,
    /// Nothing changed: an argument to refuse (`unmap_range`'s checks name it).
    Unchecked,
}

/// Who descends (`descend`), which decides what the descent does besides reading.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Descent {
    /// A map: cleans each entry on the way for a non-coherent walker (rule 2), tests no split
    /// mark (a map records nothing in a gather).
    Map,
    /// An unmap for a coherent walker: returns the levels whose entry marks a split, cleans
    /// nothing (the clean is a no-op there).
    Unmap,
    /// An unmap for a non-coherent walker: the same, and cleans each entry on the way (rule 2:
    /// a split's linking entry may not be clean yet).
    UnmapCleaning,
}

/// What `clear_dirty_entry` found in its slot.
#[derive(Clone, Copy)]
enum Dirty {
    /// No table: a hole or a leaf, and whether this call cleaned it.
    Leaf(bool),
    /// A table entry (its raw value), to be walked.
    Table(u64),
}

/// What `unmap_entry` did with its slot.
#[derive(Clone, Copy)]
enum Unmapped {
    /// Unmapped this many bytes (0: nothing there).
    Bytes(u64),
    /// Found a table to walk for the part of the range under the slot, and the entry that
    /// linked it before (0: the table this call's split installed).
    Below(Table, u64),
    /// Unlinked the table the part covers whole (the slot is cleared, the change gathered),
    /// linked by this entry: its pages and bytes are for the walk to reap.
    Unlinked(Table, u64),
}

/// A table `unmap_level` is unmapping: the IOVA of its current slot (its index comes from it),
/// where its part of the range ends, and, if the entry that links it marks a split (rule 5),
/// the bytes the walk had unmapped when it opened the table (else [`NO_SPLIT`]). 32 bytes: the
/// path of six is most of that frame, which lies under the reap of a table the range covers
/// whole.
#[derive(Clone, Copy)]
struct UnmapOpen {
    t: Table,
    iova: u64,
    end: u64,
    split_from: u64,
}

/// [`UnmapOpen::split_from`] of a table no split made: no walk unmaps `u64::MAX` bytes, as a
/// range is whole granules.
const NO_SPLIT: u64 = u64::MAX;

/// A table `clear_dirty_level` is walking: the part of the range left in it (its parent's
/// entry stays current until it is done), the entry that links it, whether anything below it
/// was cleaned.
#[derive(Clone, Copy)]
struct DirtyOpen {
    t: Table,
    iova: u64,
    left: u64,
    link: u64,
    cleaned: bool,
}

/// The entry slots of a table page.
#[derive(Clone, Copy)]
pub(super) struct Table(pub(super) NonNull<u8>);

impl Table {
    /// The table page at `va` (tests walk tables by hand).
    #[cfg(test)]
    pub(super) fn at(va: NonNull<u8>) -> Self {
        Self(va)
    }

    /// # Safety
    /// `self` is a live table page with more than `index` entries.
    #[inline]
    pub(super) unsafe fn slot<'t>(self, index: usize) -> &'t AtomicU64 {
        // SAFETY: the caller guarantees the entry lies inside a live, 8-byte aligned table page;
        // table memory is only ever accessed atomically.
        unsafe { &*self.0.as_ptr().cast::<AtomicU64>().add(index) }
    }

    /// Where entry `index` lies (for cache maintenance).
    ///
    /// # Safety
    /// `self` is a live table page with at least `index` entries (`index` equal to the entry
    /// count gives the end of the page).
    #[inline]
    pub(super) unsafe fn entry_ptr(self, index: usize) -> NonNull<u8> {
        // SAFETY: the caller guarantees the entry lies inside (or one past) the table page.
        // Indexed by type like `slot`, so that it names the same entry when the atomics are
        // loom's (tests/loom.rs).
        unsafe { self.0.cast::<AtomicU64>().add(index).cast() }
    }
}

impl<F: Format, A: PageAllocator> PageTable<F, A> {
    /// Creates an empty table: allocates and (for a non-coherent walker) cleans its root.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for an invalid geometry, [`Error::NoMemory`],
    /// [`Error::TableOutOfRange`] if the allocator's root page lies beyond the output size.
    pub fn new(format: F, alloc: A, coherency: WalkerCoherency) -> Result<Self, Error> {
        let g = *format.geometry();
        g.validate()?;
        let size = g.root_size_log2();
        let root = alloc.alloc(size).ok_or(Error::NoMemory)?;
        let root = spares::reachable(&alloc, root, size, g.oas)?;
        coherency.sync(&alloc, root.va, 1 << size);
        let leaf_runs = format.contiguous_runs(0);
        Ok(Self {
            format,
            alloc,
            root,
            coherency,
            split: SplitPolicy::default(),
            leaf_runs,
            max_leaf_log2: u32::MAX,
            map_runs: leaf_runs,
            tracking: core::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Physical address of the root table (what the context entry, PASID entry, STE or CD
    /// points at).
    pub fn root(&self) -> PhysAddr {
        self.root.pa
    }

    /// The owner a gather this table fills records ([`Gather::claim`]): the root's address
    /// with bit 0 set (a root is page-aligned, so never 0, which names no table), the value a
    /// unit's domain claims its gathers with.
    pub(crate) fn gather_owner(&self) -> usize {
        self.root.pa.get() as usize | 1
    }

    /// Claims `gather` for this table: one gather holds one table's changes, so that a unit's
    /// flush, which takes only its own domain's gathers, never releases pages its
    /// invalidation did not cover (review of 2026-12-07 19:50, D1: a bare table's gather
    /// flushed on any domain freed its unlinked page while the table's own caches could
    /// still lead to it).
    #[inline(always)]
    pub(super) fn claim_gather(&self, gather: &mut Gather) -> Result<(), Error> {
        match gather.claim(self.gather_owner()) {
            true => Ok(()),
            false => Err(gather_of_another_table(gather)),
        }
    }

    /// The format and its configuration.
    pub fn format(&self) -> &F {
        &self.format
    }

    /// The allocator the table's pages come from.
    pub fn allocator(&self) -> &A {
        &self.alloc
    }

    /// The table's geometry.
    pub fn geometry(&self) -> &Geometry {
        self.format.geometry()
    }

    /// What `unmap` does when it would cut a larger page.
    pub fn split_policy(&self) -> SplitPolicy {
        self.split
    }

    /// Sets what `unmap` does when it would cut a larger page.
    pub fn set_split_policy(&mut self, split: SplitPolicy) {
        self.split = split;
    }

    /// The page-size policy of `map`: the log2 of the largest translation it may write, or
    /// `None` (the default) for the largest that alignment, length and the geometry's page
    /// sizes allow.
    pub fn max_leaf_log2(&self) -> Option<u32> {
        (self.max_leaf_log2 != u32::MAX).then_some(self.max_leaf_log2)
    }

    /// Limits the translations later `map` calls write to at most `2^max` bytes each (iommufd's
    /// `IOMMU_OPTION_HUGE_PAGES` off is `Some` of the granule): no leaf above level 0 that
    /// spans more, and no run of leaves under the contiguous hint (Arm) that spans more (a TLB
    /// may hold a hinted run as one entry). Level-0 leaves are always allowed, so a limit below
    /// the granule means "granule-sized pages only". `None` lifts the limit. The same for every
    /// format: it narrows which levels may hold leaves, as the geometry's page sizes do.
    ///
    /// Mappings already made keep their pages; `unmap` splits them as before.
    pub fn set_max_leaf_log2(&mut self, max: Option<u32>) {
        self.max_leaf_log2 = max.unwrap_or(u32::MAX);
        self.map_runs = self.runs_within_limit(0, self.leaf_runs);
    }

    /// Whether `map` may write a translation of `2^size_log2` bytes at `level` (a leaf, or a
    /// hinted run of leaves): level 0's single leaves always, others within the limit.
    #[inline]
    pub(super) fn within_leaf_limit(&self, level: u32, size_log2: u32) -> bool {
        size_log2 <= self.max_leaf_log2 || (level == 0 && size_log2 == self.geo().granule_log2)
    }

    /// The format's geometry: validated in `new`, and the same on every call (a requirement of
    /// the unsafe trait [`Format`]), so every index derived from it stays inside its table.
    #[inline]
    fn geo(&self) -> &Geometry {
        self.format.geometry()
    }

    /// A walk from `level` needs more than [`WALK_LEVELS`] open tables: never for a validated
    /// geometry (`new` refuses more levels), the error if the format's geometry changed.
    #[cold]
    pub(super) fn too_deep(level: u32) -> Error {
        Error::InvalidConfig {
            what: "levels",
            value: u64::from(level) + 1,
        }
    }

    /// Whether a map writes its leaves clean: dirty tracking is on (Arm: a writable leaf with
    /// DBM set is encoded writable-dirty, `S2AP[1]` / `AP[2]` = write allowed; clean it is
    /// write-protected until the walker's first write sets it, DDI 0487 K.a D8.4.6; VT-d and
    /// AMD-Vi: `D` starts clear either way). Read once per map: switching tracking must not
    /// race maps (see [`PageTable::set_dirty_tracking`]).
    #[inline]
    pub(super) fn writes_clean(&self) -> bool {
        self.tracking.load(core::sync::atomic::Ordering::Relaxed)
    }

    #[inline]
    pub(super) fn root_table(&self) -> Table {
        Table(self.root.va)
    }

    /// The table a table entry points to.
    #[inline]
    pub(super) fn child(&self, raw: u64) -> Result<Table, Error> {
        let pa = self.format.table_address(raw);
        self.alloc
            .phys_to_virt(pa)
            .map(Table)
            .ok_or(Error::UnknownTable { pa })
    }

    #[inline]
    pub(super) fn sync(&self, va: NonNull<u8>, len: usize) {
        self.coherency.sync(&self.alloc, va, len);
    }

    /// Checks an IOVA range: non-empty, no overflow, granule-aligned, inside the input size.
    pub(super) fn check_iova_range(&self, iova: Iova, len: u64) -> Result<(), Error> {
        let g = self.geo();
        if len == 0 {
            return Err(Error::ZeroLength);
        }
        let last = iova.checked_add(len - 1).ok_or(Error::Overflow {
            start: iova.get(),
            len,
        })?;
        if !iova.is_aligned(g.granule_log2) {
            return Err(Error::MisalignedIova {
                iova,
                granule_log2: g.granule_log2,
            });
        }
        if len & ((1 << g.granule_log2) - 1) != 0 {
            return Err(Error::MisalignedLength {
                len,
                granule_log2: g.granule_log2,
            });
        }
        if !last.fits_in(g.ias) {
            return Err(Error::IovaOutOfRange { last, ias: g.ias });
        }
        Ok(())
    }

    pub(super) fn check_pa_range(&self, pa: PhysAddr, len: u64) -> Result<(), Error> {
        let g = self.geo();
        let last = pa.checked_add(len - 1).ok_or(Error::Overflow {
            start: pa.get(),
            len,
        })?;
        if !pa.is_aligned(g.granule_log2) {
            return Err(Error::MisalignedPa {
                pa,
                granule_log2: g.granule_log2,
            });
        }
        if !last.fits_in(g.oas) {
            return Err(Error::PaOutOfRange { last, oas: g.oas });
        }
        Ok(())
    }

    /// [`Self::map_ranges_ok`] for `len` = one granule, without a branch: a granule-aligned
    /// address below `2^bits` starts a page that lies below it.
    #[inline(always)]
    pub(super) fn one_page_ok(&self, iova: u64, pa: u64) -> bool {
        // From the geometry, not from masks kept in the `PageTable`: every byte of it is on the
        // kernel stack of the IOASID calls that build or move a domain (tests/linux_module.rs).
        let g = self.geo();
        ((iova | pa) & ((1u64 << g.granule_log2) - 1)) | above(iova, g.ias) | above(pa, g.oas) == 0
    }

    /// Whether `check_iova_range(iova, len)` and `check_pa_range(pa, len)` both pass, as one
    /// branch-free test of the common case (a map's checks were about 30 instructions of
    /// taken branches; issue 18, goal 3). Never true where either check fails. (Written as
    /// `unmap_range_ok`, one OR of every failure's bits, it took up to 15 instructions fewer
    /// in `map_fast`'s own part, but changed the registers of its leaf loop: one more per
    /// eight leaves, VT-d or Arm by variant, callgrind.)
    #[inline(always)]
    pub(super) fn map_ranges_ok(&self, iova: u64, pa: u64, len: u64) -> bool {
        let g = self.geo();
        let granule_mask = (1u64 << g.granule_log2) - 1;
        let (last_iova, iova_wraps) = iova.overflowing_add(len.wrapping_sub(1));
        let (last_pa, pa_wraps) = pa.overflowing_add(len.wrapping_sub(1));
        let fits = |last: u64, bits: u32| last.checked_shr(bits).unwrap_or(0) == 0;
        (len != 0)
            & !iova_wraps
            & !pa_wraps
            & ((iova | pa | len) & granule_mask == 0)
            & fits(last_iova, g.ias)
            & fits(last_pa, g.oas)
    }

    /// Whether `check_iova_range(iova, len)` passes and the range's end, `iova + len`, does
    /// not overflow (an unmap's `Error::Overflow`), as one branch-free test as
    /// [`Self::map_ranges_ok`] (issue 18, goal 2: that test with an output address of 0 was
    /// about 35 instructions of an unmap of 256 pages). Never true where either fails.
    #[inline(always)]
    pub(super) fn unmap_range_ok(&self, iova: u64, len: u64) -> bool {
        let g = self.geo();
        let granule_mask = (1u64 << g.granule_log2) - 1;
        let (end, wraps) = iova.overflowing_add(len);
        // Without overflow and with `len` not 0, `end - 1` is the range's last IOVA.
        let wrong = ((iova | len) & granule_mask)
            | above(end.wrapping_sub(1), g.ias)
            | u64::from(wraps | (len == 0));
        wrong == 0
    }

    /// Whether a leaf at `level` can map `[iova, iova + len)` to `pa` entirely.
    #[inline]
    fn leaf_fits(&self, level: u32, iova: u64, pa: u64, len: u64) -> bool {
        let shift = self.geo().level_shift(level);
        let mask = (1u64 << shift) - 1;
        self.geo().leaf_allowed(level)
            && (iova | pa) & mask == 0
            && len > mask
            && self.within_leaf_limit(level, shift)
    }

    // ---------------------------------------------------------------------------------------
    // map

    /// Maps `[iova, iova + len)` to `[pa, pa + len)` with `prot`, using the largest pages that
    /// alignment, length and the configured page sizes allow.
    ///
    /// Either the whole range is mapped or nothing changed. Concurrent calls on disjoint ranges
    /// are allowed; on overlapping ranges they are not.
    ///
    /// # Errors
    /// [`Error::Overlap`] naming the first mapped IOVA in the range; range and alignment errors;
    /// [`Error::UnsupportedProt`]; [`Error::NoMemory`]; [`Error::TableOutOfRange`] if the
    /// allocator gave a table page the hardware cannot address.
    #[inline]
    pub fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), Error> {
        let fast = if len == 1 << self.geo().granule_log2 {
            match self.map_page(iova, pa, prot) {
                PageMap::Mapped => FastMap::Mapped,
                PageMap::Overlap => FastMap::Overlap(iova.get()),
                PageMap::NotHere => FastMap::Unchecked,
            }
        } else {
            self.map_fast(iova, pa, len, prot)
        };
        match fast {
            FastMap::Mapped => Ok(()),
            FastMap::Overlap(at) => Err(Error::Overlap {
                iova: Iova::new(at),
            }),
            // Called from here, not from `map_page` or `map_fast`: their frames are not under
            // the walk's (a kernel stack). One call: this body is inline in every caller.
            _ => self.map_range(iova, pa, len, prot, fast == FastMap::NotHere),
        }
    }

    /// [`Self::map`] of one granule, the hot path of per-page callers (issue 18, goal 3), in a
    /// function of its own: inside `map_range`'s frame it shared the registers of the general
    /// walk, which spilled the descent's (callgrind: 3 instructions per level). The addresses
    /// are tested without a branch and the descent reaches the existing leaf table;
    /// [`PageMap::NotHere`] for every other case (an argument error to name, a table to
    /// allocate), which `map` hands to `map_range`. A one-byte answer: an `Option` of a
    /// `Result` went through memory (callgrind: 6-8 instructions per call).
    #[inline(never)]
    fn map_page(&self, iova: Iova, pa: PhysAddr, prot: Prot) -> PageMap {
        if !self.one_page_ok(iova.get(), pa.get()) || self.format.check_prot(prot).is_err() {
            return PageMap::NotHere;
        }
        // A page never crosses a leaf table: no span to check.
        match self.descend(0, iova.get(), Descent::Map) {
            Some((leaf, _)) => self.map_one(leaf, iova.get(), pa.get(), prot),
            None => PageMap::NotHere,
        }
    }

    /// [`Self::map`] of a range other than one granule on its fast paths, the leaf-table and
    /// level-1 ones, in a function of its own as [`Self::map_page`] (issue 18, goal 2: inside
    /// `map_range`'s frame the leaf loop was a call of its own, `fill_leaves`, whose prologue,
    /// epilogue and set-up again were about 40 instructions of a 256-page map): the checks as
    /// one branch-free test, the descent to the existing table, the emptiness read of the
    /// range, then its stores. [`FastMap::NotHere`] for every other case (an argument error to
    /// name, a table to allocate, a range for the general walk), which `map` hands to
    /// `map_range` before anything changed, telling it whether the checks passed.
    #[inline(never)]
    fn map_fast(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> FastMap {
        let (iova, pa) = (iova.get(), pa.get());
        if !self.map_ranges_ok(iova, pa, len) || self.format.check_prot(prot).is_err() {
            return FastMap::Unchecked;
        }
        if let Some((leaf, _)) = self.plain_leaf_table_for(iova, len, Descent::Map) {
            // The general walk would descend the same existing tables and need no new one.
            // Once `first_present` found every entry empty, only a concurrent map of an
            // overlapping range, which the contract forbids, could fill one.
            let shift = self.geo().granule_log2;
            let first = self.geo().index(0, iova);
            // As in `plan_leaves`, the entries are `leaf`'s (`table_for`: the range lies inside
            // its span).
            if let Some(i) = self.first_present(leaf, first, (len >> shift) as usize) {
                return FastMap::Overlap(iova + ((i as u64) << shift));
            }
            self.fill_leaves_here(leaf, iova, pa, len, prot);
            return FastMap::Mapped;
        }
        if let Some(blocks) = self.block_table_for(iova, pa, len) {
            // The same for a block-aligned range inside one existing level-1 table whose
            // entries are all empty: the general walk would write one block per entry.
            self.fill_blocks(blocks, iova, pa, len, prot);
            return FastMap::Mapped;
        }
        FastMap::NotHere
    }

    /// [`Self::map`] of what `map_page` and `map_fast` leave: the checks (unless `checked`:
    /// `map_fast` found them passed), then the general walk. It does not descend to look for
    /// the existing table those two looked for (a second descent is more entries read in every
    /// interleaving `loom` explores, and no faster).
    #[inline(never)]
    fn map_range(
        &self,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
        checked: bool,
    ) -> Result<(), Error> {
        if !checked {
            if !self.map_ranges_ok(iova.get(), pa.get(), len) {
                // The checks name what is wrong (the test above is only their common case).
                self.check_iova_range(iova, len)?;
                self.check_pa_range(pa, len)?;
            }
            self.format.check_prot(prot)?;
        }
        let top = self.geo().top_level();
        let need = self.plan_map(self.root_table(), top, iova.get(), pa.get(), len)?;
        let granule = self.geo().granule_log2;
        let mut spares = Spares::reserve(&self.alloc, need, granule, self.geo().oas)?;
        let r = self.map_level(
            self.root_table(),
            top,
            iova.get(),
            pa.get(),
            len,
            prot,
            &mut spares,
        );
        spares.release(&self.alloc);
        r
    }

    /// `plan_leaves` and `fill_leaves` for the one page at `iova` in the leaf table `t` (issue
    /// 18, goal 3: without their range loops and run search): the entry is read (an overlap
    /// fails with nothing changed), then written with one atomic store and cleaned for a
    /// non-coherent walker.
    #[inline(always)]
    fn map_one(&self, t: Table, iova: u64, pa: u64, prot: Prot) -> PageMap {
        // `t` is below the root (`descend`).
        let idx = self.geo().index_below_top(0, iova);
        // SAFETY: `t` is a live leaf table and `idx` comes from an in-range IOVA.
        let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
        if self.format.is_present(raw) {
            return PageMap::Overlap;
        }
        self.write_level0(t, idx, 0, 1, pa, prot, 0);
        // SAFETY: as above.
        self.sync(unsafe { t.entry_ptr(idx) }, 8);
        PageMap::Mapped
    }

    /// `unmap_leaves` for the one page at `iova` in the leaf table `t`, without its range loops
    /// and run search: a present leaf is cleared with an atomic store of 0 (rule 6), cleaned
    /// and recorded in `gather`; a leaf a run still claims loses its hint first, with every
    /// leaf of the run (rule 4, `break_runs_at`). Returns the bytes unmapped.
    #[inline(always)]
    fn unmap_one(&self, t: Table, iova: u64, gather: &mut Gather) -> u64 {
        let shift = self.geo().granule_log2;
        // `t` is below the root (`descend`).
        let idx = self.geo().index_below_top(0, iova);
        // SAFETY: `t` is a live leaf table and `idx` comes from an in-range IOVA.
        let slot = unsafe { t.slot(idx) };
        let mut raw = slot.load(Ordering::Acquire);
        let claim = match self.leaf_runs {
            0 => None,
            runs => self.run_claiming(t, 0, runs, idx, raw),
        };
        let mut broken = false;
        if claim.is_some() {
            (raw, broken) = self.break_runs_at(t, 0, idx, iova, gather);
            self.note_claimed_run(0, claim, gather);
        }
        if !self.format.is_present(raw) {
            return 0;
        }
        slot.store(0, Ordering::Release);
        self.cleared_one(t, 0, idx, iova, broken, gather);
        1 << shift
    }

    /// The existing leaf (level-0) table whose span holds all of `[iova, iova + len)` with room
    /// to spare, if every entry on the way down is a table pointer. Then the general walks of
    /// `map` and `unmap` would only descend to it (no larger page can be placed or cut, no
    /// table needs allocating, unlinking or splitting), so the operation is done on it
    /// directly: the fast path of small maps and unmaps.
    ///
    /// Level-0 leaves under a contiguous hint are handled there too, run by run (see
    /// [`Self::hinted_runs`]).
    ///
    /// `how` is [`Descent::Map`] for `map`: it cleans every entry on the way for a
    /// non-coherent walker (a map relies on them, and a concurrent map that linked one may not
    /// have cleaned it yet), and gets 0 for the split levels (a map records nothing in a
    /// gather, so it does not pay for the test: issue 18, goal 3). An unmap (see
    /// [`Self::unmap_descend`]) gets the levels (bit `l` for level `l`) whose entry on the way
    /// is marked as made by a split ([`Self::split_made`]), which its gather must cover.
    #[inline(always)]
    fn plain_leaf_table_for(&self, iova: u64, len: u64, how: Descent) -> Option<(Table, u32)> {
        self.table_for(0, iova, len, how)
    }

    /// [`Self::plain_leaf_table_for`] for the existing table at `at` (0: a leaf table, 1: a
    /// table of level-1 entries, the fast path of block-sized maps and unmaps).
    #[inline(always)]
    fn table_for(&self, at: u32, iova: u64, len: u64, how: Descent) -> Option<(Table, u32)> {
        let span_log2 = self.geo().level_shift(at + 1);
        if len >> span_log2 != 0 || iova >> span_log2 != (iova + (len - 1)) >> span_log2 {
            return None;
        }
        self.descend(at, iova, how)
    }

    /// [`Self::descend`] for an unmap: for a non-coherent walker it also cleans every entry on
    /// the way (rule 2: an unmap relies on them as a map does -- another thread's split may
    /// have linked its table and not cleaned the link yet, and memory would still hold the
    /// larger leaf over this unmap's pages after its invalidation). One test per call, outside
    /// the descent: a coherent walker's descent is the one without cleans.
    #[inline(always)]
    fn unmap_descend(&self, at: u32, iova: u64) -> Option<(Table, u32)> {
        if self.coherency == WalkerCoherency::NonCoherent {
            return self.descend_cleaning(at, iova);
        }
        self.descend(at, iova, Descent::Unmap)
    }

    /// [`Self::unmap_descend`] for a non-coherent walker, out of line (the coherent unmap's
    /// body does not grow by a second descent).
    #[inline(never)]
    fn descend_cleaning(&self, at: u32, iova: u64) -> Option<(Table, u32)> {
        self.descend(at, iova, Descent::UnmapCleaning)
    }

    /// The descent of [`Self::table_for`] to the existing table at `at` whose span holds
    /// `iova` (an IOVA inside the input size), if every entry on the way is a table pointer.
    #[inline(always)]
    fn descend(&self, at: u32, iova: u64, how: Descent) -> Option<(Table, u32)> {
        // Read once, and the descent compiled once per answer: the format's fields would be
        // reloaded after every entry's acquire load, and a test of the answer at each level
        // kept the compiler from folding the decode into the allocator's range test (Arm,
        // whose mask depends on the output size: issue 18, goal 3).
        match self.format.table_address_mask() {
            Some(mask) => self.descend_with(at, iova, how, |raw| PhysAddr::new(raw & mask)),
            None => self.descend_with(at, iova, how, |raw| self.format.table_address(raw)),
        }
    }

    /// [`Self::descend`] with `address` decoding each table entry's address.
    #[inline(always)]
    fn descend_with(
        &self,
        at: u32,
        iova: u64,
        how: Descent,
        address: impl Fn(u64) -> PhysAddr,
    ) -> Option<(Table, u32)> {
        // A copy: the compiler would reload each field after every load of an entry (a
        // `PageTable` is not `Freeze`: its dirty-tracking flag is an atomic).
        let g = *self.geo();
        let clean = match how {
            Descent::Map => self.coherency == WalkerCoherency::NonCoherent,
            Descent::Unmap => false,
            Descent::UnmapCleaning => true,
        };
        if g.levels < at + 2 {
            return None;
        }
        let mut t = self.root_table();
        let mut split_levels = 0;
        for level in (at + 1..g.levels).rev() {
            let idx = g.index(level, iova);
            // SAFETY: `t` is a live table at `level`; the index comes from an in-range IOVA.
            let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
            if !self.format.is_present(raw) || !self.format.is_table(level, raw) {
                return None;
            }
            if clean {
                // Its run block whole: another thread's break of a run over it may not be
                // clean yet (`sync_cleared`).
                self.sync_cleared(t, level, idx, idx + 1);
            }
            let split = how != Descent::Map && self.split_made(level, raw);
            if at == 0 {
                // The one-page and leaf-table unmaps: without a branch (a test and a jump per
                // level kept the mask in memory, 12-14 instructions per call; issue 18, goal 2).
                split_levels |= u32::from(split) << level;
            } else if split {
                // `unmap_range`'s level-1 path keeps the branch: without it, that frame, on
                // the deepest chain of the C ABI's unmap, took 16 bytes more.
                split_levels |= 1 << level;
            }
            t = Table(self.alloc.phys_to_virt(address(raw))?);
        }
        Some((t, split_levels))
    }

    /// Whether the table entry `raw` at `level` may link a table that a split made: it carries
    /// the format's mark, or the format has none and a leaf could sit at `level`.
    #[inline]
    fn split_made(&self, level: u32, raw: u64) -> bool {
        match self.format.split_table_bit() {
            0 => self.geo().leaf_allowed(level),
            bit => raw & bit != 0,
        }
    }

    /// Records in `gather` the larger page that a split replaced by the table `iova` lies in, at
    /// `level`, after this thread cleared a leaf or dirty state below it. Any thread may have
    /// split it, and its invalidation of the larger page may not have completed when this
    /// thread returns; an invalidation of the small pages alone may miss the cached larger one
    /// (VT-d needs an address mask that covers the large page, Arm a TTL that names its
    /// level), so this thread invalidates it too.
    #[inline]
    fn note_split_page(&self, level: u32, iova: u64, gather: &mut Gather) {
        let shift = self.geo().level_shift(level);
        gather.add_leaves(iova & !((1u64 << shift) - 1), 1 << shift, shift);
    }

    /// [`Self::note_split_page`] for every level set in `split_levels`.
    #[inline]
    fn note_split_pages(&self, split_levels: u32, iova: u64, gather: &mut Gather) {
        let mut levels = split_levels;
        while levels != 0 {
            let level = levels.trailing_zeros();
            self.note_split_page(level, iova, gather);
            levels &= levels - 1;
        }
    }

    /// The entries of a level-0 map of `n` pages from slot `first` (mapping `iova` to `pa`)
    /// written as runs, as offsets `[a, b)` from `first`, and log2 of the run's leaves: every
    /// aligned run the range covers whole, of the largest size the format has here for which
    /// input and output are equally aligned and the range covers at least one (what
    /// `contiguous_run` decides entry by entry in the general walk; here one size per call, the
    /// ends in single leaves). `a == b`: none. Runs are aligned inside a table, so they never
    /// reach past `t`.
    #[inline(always)]
    fn hinted_runs(&self, first: usize, n: usize, iova: u64, pa: u64) -> (usize, usize, u32) {
        self.hinted_runs_at(0, first, n, iova, pa)
    }

    /// [`Self::hinted_runs`] for a map of `n` leaves at `level`.
    #[inline(always)]
    fn hinted_runs_at(
        &self,
        level: u32,
        first: usize,
        n: usize,
        iova: u64,
        pa: u64,
    ) -> (usize, usize, u32) {
        // Every run has at least two leaves (a per-page map of blocks asks for none).
        let mut sizes = if n < 2 { 0 } else { self.map_runs_at(level) };
        while sizes != 0 {
            let r_log2 = 31 - sizes.leading_zeros();
            sizes &= !(1 << r_log2);
            let run_bytes_mask = (1u64 << (self.geo().level_shift(level) + r_log2)) - 1;
            if (iova ^ pa) & run_bytes_mask != 0 {
                continue;
            }
            let run_mask = (1usize << r_log2) - 1;
            let a = first.wrapping_neg() & run_mask;
            if a >= n {
                continue;
            }
            let b = a + ((n - a) & !run_mask);
            if a < b {
                return (a, b, r_log2);
            }
        }
        (0, 0, 0)
    }

    /// The run sizes `map` writes at `level` (a mask as [`Format::contiguous_runs`]): the
    /// format's that fit the page-size limit (`set_max_leaf_log2`); level 0's are worked out
    /// once (level 1's are not kept, to keep a `PageTable` as small as it was: see
    /// `one_page_ok`).
    #[inline(always)]
    fn map_runs_at(&self, level: u32) -> u32 {
        match level {
            0 => self.map_runs,
            _ => self.runs_within_limit(level, self.format.contiguous_runs(level)),
        }
    }

    /// The sizes of `runs` (at `level`) whose runs fit the page-size limit.
    #[inline(always)]
    fn runs_within_limit(&self, level: u32, runs: u32) -> u32 {
        let shift = self.geo().level_shift(level);
        let mut fit = 0;
        let mut sizes = runs;
        while sizes != 0 {
            let n = sizes.trailing_zeros();
            sizes &= sizes - 1;
            if self.within_leaf_limit(level, shift + n) {
                fit |= 1 << n;
            }
        }
        fit
    }

    /// The run sizes at `level` that `unmap` may meet (a mask; 0: none), whatever the page-size
    /// limit now; level 0's are read once in `new`.
    #[inline(always)]
    fn runs_at(&self, level: u32) -> u32 {
        match level {
            0 => self.leaf_runs,
            _ => self.format.contiguous_runs(level),
        }
    }

    /// The IOVA bits below the largest run of leaves (`leaf_runs`, non-zero): a range whose
    /// ends have none of them set cuts no run.
    #[inline(always)]
    fn largest_leaf_run_mask(&self) -> u64 {
        (1u64 << (self.geo().granule_log2 + Self::largest_run_log2(self.leaf_runs))) - 1
    }

    /// Log2 of the largest run in the mask `runs` (0 if none).
    #[inline(always)]
    fn largest_run_log2(runs: u32) -> u32 {
        31u32.saturating_sub(runs.leading_zeros())
    }

    /// Writes leaves `first + from .. first + to` of the leaf table `t`, entry `first` mapping
    /// `pa`, as runs of `1 << run_log2` leaves (aligned to the table) if `run_log2 > 0`; the
    /// caller syncs them.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn write_level0(
        &self,
        t: Table,
        first: usize,
        from: usize,
        to: usize,
        pa: u64,
        prot: Prot,
        run_log2: u32,
    ) {
        self.write_run(t, 0, first, from, to, pa, prot, run_log2);
    }

    /// [`Self::write_level0`] for leaves at `level` of the table `t`.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn write_run(
        &self,
        t: Table,
        level: u32,
        first: usize,
        from: usize,
        to: usize,
        pa: u64,
        prot: Prot,
        run_log2: u32,
    ) {
        let tracking = self.writes_clean();
        let leaves = Leaves {
            level,
            first,
            pa,
            prot,
            run_log2,
            tracking,
        };
        store_leaves(&self.format, t, &leaves, from, to);
    }

    /// First pass of `map`: fails on overlap, returns the number of tables to allocate.
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack): a
    /// table's part of the range is checked before the next entry of the table above, each
    /// entry read once (the present entry that ends a stretch of empty ones where leaves fit
    /// twice, as `map_level` reads it after `write_stretch`), the first overlap in IOVA order
    /// reported.
    fn plan_map(&self, t: Table, level: u32, iova: u64, pa: u64, len: u64) -> Result<usize, Error> {
        if level == 0 {
            return self.plan_leaves(t, iova, len);
        }
        /// A table being checked: the part of the range left in it and its next slot.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            iova: u64,
            pa: u64,
            left: u64,
            idx: usize,
        }
        let mut path = [Open {
            t,
            iova,
            pa,
            left: len,
            idx: self.geo().index(level, iova),
        }; WALK_LEVELS];
        let (mut depth, mut need) = (0usize, 0usize);
        loop {
            let at = level - depth as u32;
            let open = &mut path[open_at(depth)];
            if open.left == 0 {
                if depth == 0 {
                    return Ok(need);
                }
                depth -= 1;
                continue;
            }
            let size = 1u64 << self.geo().level_shift(at);
            let (t, iova, pa, idx) = (open.t, open.iova, open.pa, open.idx);
            let chunk = open.left.min(size - (iova & (size - 1)));
            (open.iova, open.pa, open.left, open.idx) = (
                iova.wrapping_add(chunk),
                pa.wrapping_add(chunk),
                open.left - chunk,
                idx + 1,
            );
            // SAFETY: `t` is a live table at `at` and `idx` indexes it (derived from an IOVA
            // inside the table's span).
            let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
            if self.format.is_present(raw) {
                if !self.format.is_table(at, raw) {
                    return Err(Error::Overlap {
                        iova: Iova::new(iova),
                    });
                }
                let child = self.child(raw)?;
                if at == 1 {
                    need += self.plan_leaves(child, iova, chunk)?;
                    continue;
                }
                depth += 1;
                let Some(below) = path.get_mut(depth) else {
                    return Err(Self::too_deep(level));
                };
                *below = Open {
                    t: child,
                    iova,
                    pa,
                    left: chunk,
                    idx: self.geo().index(at - 1, iova),
                };
            } else if self.leaf_fits(at, iova, pa, chunk) {
                // Every later entry of the range in `t` is as aligned (`write_stretch`): the
                // empty ones up to the first present one need no table either, found so by
                // one `first_present` (entry by entry, the walk took about 30 instructions a
                // block: the 15 blocks of the mixed map). The present one, if any, is read
                // again by the next turn, as `map_level` reads it after `write_stretch`.
                let shift = self.geo().level_shift(at);
                let entries = 1usize << self.geo().level_bits(at);
                // Slot `idx` was read above; the others are `t`'s (`entries` bounds them).
                let n = ((open.left >> shift) as usize).min(entries - (idx + 1));
                let k = self.first_present(t, idx + 1, n).unwrap_or(n);
                let bytes = (k as u64) << shift;
                (open.iova, open.pa, open.left, open.idx) = (
                    open.iova.wrapping_add(bytes),
                    open.pa.wrapping_add(bytes),
                    open.left - bytes,
                    open.idx + k,
                );
            } else {
                need += 1 + self.count_new(at - 1, iova, pa, chunk);
            }
        }
    }

    /// `plan_map` at level 0, where every entry is one granule and needs no table: only the
    /// overlap check, as one tight loop (the hot path of small maps).
    #[inline]
    fn plan_leaves(&self, t: Table, iova: u64, len: u64) -> Result<usize, Error> {
        let shift = self.geo().granule_log2;
        let first = self.geo().index(0, iova);
        // `t` is a live leaf table and `[iova, iova + len)` lies inside its span (callers split
        // ranges per entry of the level above), so the entries are `t`'s.
        match self.first_present(t, first, (len >> shift) as usize) {
            Some(i) => Err(Error::Overlap {
                iova: Iova::new(iova + ((i as u64) << shift)),
            }),
            None => Ok(0),
        }
    }

    /// The offset from `first` of the first present entry among entries `first .. first + n`
    /// of the live table `t` (callers pass entries of it), if any. Where presence is a mask
    /// test ([`Format::present_mask`]) the stretch is first tested as a whole, by the OR of
    /// its entries (eight per loop step, `or_of_eights`), and searched entry by entry only if
    /// it holds a present one: the empty stretch every successful map checks costs about 1.4
    /// instructions per entry on x86-64 instead of six (issue 18, goal 2).
    #[inline(always)]
    fn first_present(&self, t: Table, first: usize, n: usize) -> Option<usize> {
        // SAFETY: callers pass entries of the live table `t`.
        let load = |i: usize| unsafe { t.slot(first + i) }.load(Ordering::Acquire);
        if let Some(mask) = self.format.present_mask() {
            // Whole eights first (`or_of_eights`), then the rest.
            let mut i = n & !7;
            // SAFETY: callers pass entries of the live table `t`.
            let mut acc = unsafe { or_of_eights(t, first, i) };
            if i + 4 <= n {
                acc |= load(i) | load(i + 1) | load(i + 2) | load(i + 3);
                i += 4;
            }
            while i < n {
                acc |= load(i);
                i += 1;
            }
            if acc & mask == 0 {
                return None;
            }
        }
        (0..n).find(|&i| self.format.is_present(load(i)))
    }

    /// Tables needed beneath a new table at `level` to map `[iova, iova + len)`.
    ///
    /// Without recursion: the parts of the range still to count at each level below `level`
    /// are kept in a fixed path (one frame however deep the tables: a kernel stack). Out of
    /// line: only a map that allocates tables comes here, and inline in `map_range` its loop
    /// shared the registers of `plan_map`'s and `map_level`'s (callgrind: 4 instructions per
    /// new leaf table of a 1 GiB map when `plan_map` gained its stretches).
    #[inline(never)]
    fn count_new(&self, level: u32, iova: u64, pa: u64, len: u64) -> usize {
        if level == 0 {
            return 0;
        }
        /// A new table's part of the range not yet counted.
        #[derive(Clone, Copy)]
        struct Open {
            iova: u64,
            pa: u64,
            left: u64,
        }
        let mut path = [Open {
            iova,
            pa,
            left: len,
        }; WALK_LEVELS];
        let (mut depth, mut need) = (0usize, 0usize);
        loop {
            let at = level - depth as u32;
            let open = &mut path[open_at(depth)];
            if open.left == 0 {
                if depth == 0 {
                    return need;
                }
                depth -= 1;
                continue;
            }
            let size = 1u64 << self.geo().level_shift(at);
            let (iova, pa) = (open.iova, open.pa);
            let chunk = open.left.min(size - (iova & (size - 1)));
            (open.iova, open.pa, open.left) = (
                iova.wrapping_add(chunk),
                pa.wrapping_add(chunk),
                open.left - chunk,
            );
            if self.leaf_fits(at, iova, pa, chunk) {
                continue;
            }
            need += 1;
            // The new table at `at - 1` needs tables of its own only above level 0; a path
            // deeper than a validated geometry's cannot occur (`depth < at <= level < 6`).
            if at > 1 && depth + 1 < WALK_LEVELS {
                depth += 1;
                path[open_at(depth)] = Open {
                    iova,
                    pa,
                    left: chunk,
                };
            }
        }
    }

    /// Maps `[iova, iova + len)` to `pa` below `t` (at `level`), installing tables from
    /// `spares` where entries are empty.
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack). A
    /// table's entry stays current while the table below it is mapped; once that table's part
    /// is done its visited entries are cleaned (rule 2) and the walk moves past the entry. On an
    /// error every open table's visited entries are cleaned, the deepest first, the entry being
    /// descended through excluded, as the recursion did when it returned.
    #[allow(clippy::too_many_arguments)]
    fn map_level(
        &self,
        t: Table,
        level: u32,
        iova: u64,
        pa: u64,
        len: u64,
        prot: Prot,
        spares: &mut Spares,
    ) -> Result<(), Error> {
        if level == 0 {
            return self.map_leaves(t, iova, pa, len, prot);
        }
        /// A table being mapped: the part of the range left in it, its current slot, and the
        /// first slot visited.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            iova: u64,
            pa: u64,
            left: u64,
            idx: usize,
            first: usize,
        }
        impl Open {
            /// Past `bytes` of the range and `entries` slots.
            fn advance(&mut self, bytes: u64, entries: usize) {
                (self.iova, self.pa, self.left, self.idx) = (
                    self.iova.wrapping_add(bytes),
                    self.pa.wrapping_add(bytes),
                    self.left - bytes,
                    self.idx + entries,
                );
            }
        }
        let idx = self.geo().index(level, iova);
        let mut path = [Open {
            t,
            iova,
            pa,
            left: len,
            idx,
            first: idx,
        }; WALK_LEVELS];
        let mut depth = 0usize;
        let failed = loop {
            let at = level - depth as u32;
            let open = path[open_at(depth)];
            if open.left == 0 {
                // SAFETY: entries `first..idx` of the live table `t` were just visited.
                self.sync(
                    unsafe { open.t.entry_ptr(open.first) },
                    (open.idx - open.first) * 8,
                );
                if depth == 0 {
                    return Ok(());
                }
                // On past the parent's entry that links the table just mapped.
                depth -= 1;
                let parent = &mut path[open_at(depth)];
                let size = 1u64 << self.geo().level_shift(at + 1);
                parent.advance(parent.left.min(size - (parent.iova & (size - 1))), 1);
                continue;
            }
            let shift = self.geo().level_shift(at);
            let size = 1u64 << shift;
            let chunk = open.left.min(size - (open.iova & (size - 1)));
            // SAFETY: `open.t` is a live table at `at` and `open.idx` indexes it (derived from
            // an IOVA inside the table's span).
            let slot = unsafe { open.t.slot(open.idx) };
            let raw = slot.load(Ordering::Acquire);
            if !self.format.is_present(raw) && self.leaf_fits(at, open.iova, open.pa, chunk) {
                let written =
                    self.write_stretch(open.t, at, open.idx, open.iova, open.pa, open.left, prot);
                path[open_at(depth)].advance((written as u64) << shift, written);
                continue;
            }
            let (child, fresh) = match self.table_at(slot, at, raw, open.iova, spares) {
                Ok(child) => child,
                Err(e) => break e,
            };
            if at == 1 {
                if fresh {
                    self.fill_leaves(child, open.iova, open.pa, chunk, prot);
                } else if let Err(e) = self.map_leaves(child, open.iova, open.pa, chunk, prot) {
                    break e;
                }
                path[open_at(depth)].advance(chunk, 1);
                continue;
            }
            if depth + 1 >= WALK_LEVELS {
                break Self::too_deep(level);
            }
            depth += 1;
            let idx = self.geo().index(at - 1, open.iova);
            path[open_at(depth)] = Open {
                t: child,
                iova: open.iova,
                pa: open.pa,
                left: chunk,
                idx,
                first: idx,
            };
        };
        for open in path.iter().take(depth + 1).rev() {
            // SAFETY: entries `first..idx` of the live table `t` were visited.
            self.sync(
                unsafe { open.t.entry_ptr(open.first) },
                (open.idx - open.first) * 8,
            );
        }
        Err(failed)
    }

    /// `map_level` at level 0: one granule-sized leaf per entry, written in one tight loop per
    /// stretch of entries with or without the contiguous hint (a hinted run is written only
    /// once all its slots are found empty), then one cache-maintenance call for the entries
    /// written.
    #[inline]
    fn map_leaves(&self, t: Table, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Error> {
        let shift = self.geo().granule_log2;
        let first = self.geo().index(0, iova);
        let n = (len >> shift) as usize;
        let (a, b, run_log2) = self.hinted_runs(first, n, iova, pa);
        if a != b {
            return self.map_leaves_hinted(t, iova, pa, len, prot, (a, b, run_log2));
        }
        // The entries up to the first present one (none, after `plan_map`) are written (as in
        // `plan_leaves`, the entries are `t`'s).
        let written = self.first_present(t, first, n).unwrap_or(n);
        self.write_level0(t, first, 0, written, pa, prot, 0);
        let result = match written < n {
            true => Err(Error::Overlap {
                iova: Iova::new(iova + ((written as u64) << shift)),
            }),
            false => Ok(()),
        };
        // SAFETY: `first + written` is at most the entry count (see `plan_leaves`).
        self.sync(unsafe { t.entry_ptr(first) }, written * 8);
        result
    }

    /// `map_leaves` where entries `[a, b)` (from `hinted_runs`, `a < b`) carry the contiguous
    /// hint: out of line, so that formats without the hint keep the plain loop inline.
    #[inline(never)]
    fn map_leaves_hinted(
        &self,
        t: Table,
        iova: u64,
        pa: u64,
        len: u64,
        prot: Prot,
        (a, b, run_log2): (usize, usize, u32),
    ) -> Result<(), Error> {
        let shift = self.geo().granule_log2;
        let first = self.geo().index(0, iova);
        let n = (len >> shift) as usize;
        let run = 1usize << run_log2;
        let mut result = Ok(());
        let mut written = 0;
        while written < n {
            // The stretch from `written`: a whole hinted run, or plain entries up to the next.
            let (end, bits) = if (a..b).contains(&written) {
                (written + run, run_log2)
            } else if written < a {
                (a, 0)
            } else {
                (n, 0)
            };
            // As in `plan_leaves`, entries `first + written .. first + end` are `t`'s (end <= n).
            let found = self.first_present(t, first + written, end - written);
            if let Some(i) = found.map(|k| written + k) {
                if bits == 0 {
                    self.write_level0(t, first, written, i, pa, prot, 0);
                    written = i;
                }
                result = Err(Error::Overlap {
                    iova: Iova::new(iova + ((i as u64) << shift)),
                });
                break;
            }
            self.write_level0(t, first, written, end, pa, prot, bits);
            written = end;
        }
        // SAFETY: `first + written` is at most the entry count (see `plan_leaves`).
        self.sync(unsafe { t.entry_ptr(first) }, written * 8);
        result
    }

    /// `map_leaves` where every entry is known to be empty (a leaf table this call has just
    /// installed, into which only concurrent maps of disjoint ranges can write; or entries
    /// `plan_leaves` has just checked), so the entries are written without reading them: three
    /// tight loops, the middle one for the runs that carry the contiguous hint.
    ///
    /// Out of line for the general walk's fresh leaf tables (its frame is under `map_range`'s,
    /// a kernel stack); `map_fast` takes the loops in its own body (`fill_leaves_here`).
    #[inline(never)]
    fn fill_leaves(&self, t: Table, iova: u64, pa: u64, len: u64, prot: Prot) {
        self.fill_leaves_here(t, iova, pa, len, prot);
    }

    /// The body of [`Self::fill_leaves`], inline in its callers.
    #[inline(always)]
    fn fill_leaves_here(&self, t: Table, iova: u64, pa: u64, len: u64, prot: Prot) {
        let shift = self.geo().granule_log2;
        let first = self.geo().index(0, iova);
        let n = (len >> shift) as usize;
        let (a, b, run_log2) = self.hinted_runs(first, n, iova, pa);
        if a == b {
            self.write_level0(t, first, 0, n, pa, prot, 0);
        } else {
            self.fill_hinted(t, first, n, (a, b, run_log2), pa, prot);
        }
        // SAFETY: `first + n` is at most the entry count (see `plan_leaves`).
        self.sync(unsafe { t.entry_ptr(first) }, n * 8);
    }

    /// The three loops of `fill_leaves` with hinted runs `[a, b)`, out of line (see
    /// `map_leaves_hinted`).
    #[inline(never)]
    fn fill_hinted(
        &self,
        t: Table,
        first: usize,
        n: usize,
        (a, b, run_log2): (usize, usize, u32),
        pa: u64,
        prot: Prot,
    ) {
        self.write_level0(t, first, 0, a, pa, prot, 0);
        self.write_level0(t, first, a, b, pa, prot, run_log2);
        self.write_level0(t, first, b, n, pa, prot, 0);
    }

    /// The level-1 fast path of `map`: the existing level-1 table whose span holds all of
    /// `[iova, iova + len)` with room to spare, if input, output and length are aligned to the
    /// level-1 block size, blocks are allowed there and every entry of the range is empty.
    /// The general walk would then write one block per entry (nothing larger fits, nothing
    /// needs allocating); otherwise (an entry holds a table, or overlaps) it decides.
    #[inline]
    fn block_table_for(&self, iova: u64, pa: u64, len: u64) -> Option<Table> {
        let g = self.geo();
        let mask = (1u64 << g.level_shift(1)) - 1;
        if g.levels < 3
            || !g.leaf_allowed(1)
            || (iova | pa | len) & mask != 0
            || !self.within_leaf_limit(1, g.level_shift(1))
        {
            return None;
        }
        let (t, _) = self.table_for(1, iova, len, Descent::Map)?;
        let first = g.index(1, iova);
        // The range lies inside `t`'s span (`table_for`): the entries are `t`'s.
        let n = (len >> g.level_shift(1)) as usize;
        self.first_present(t, first, n).is_none().then_some(t)
    }

    /// `fill_leaves` at level 1: writes one block per entry of `[iova, iova + len)` in `t`
    /// (all found empty by `block_table_for`), whole aligned runs with the contiguous hint.
    #[inline]
    fn fill_blocks(&self, t: Table, iova: u64, pa: u64, len: u64, prot: Prot) {
        let first = self.geo().index(1, iova);
        let n = (len >> self.geo().level_shift(1)) as usize;
        let (a, b, run_log2) = self.hinted_runs_at(1, first, n, iova, pa);
        if a == b || (a == 0 && b == n) {
            // One stretch: no runs, or runs throughout (a 256-block map on Arm).
            self.write_run(t, 1, first, 0, n, pa, prot, run_log2);
        } else {
            // One copy of the leaf loop for the three stretches, in entry order: three copies
            // kept the values of the later stretches live across the first loop, which
            // spilled a multiple of the block size (Arm: 12 instructions per four blocks, not
            // 11; AMD-Vi v1 wrote its Next Level 7 runs in 3,507 instructions, 2,865 so).
            for (from, to, bits) in [(0, a, 0), (a, b, run_log2), (b, n, 0)] {
                self.write_run(t, 1, first, from, to, pa, prot, bits);
            }
        }
        // SAFETY: `first + n` is at most the entry count (see `block_table_for`).
        self.sync(unsafe { t.entry_ptr(first) }, n * 8);
    }

    /// `map_level`'s leaves from slot `idx` of `t` at `level` (1 or more), which it found empty
    /// where a leaf fits (`iova` and `pa` aligned to the entry's size, `left` at least one
    /// entry); returns how many entries it wrote, at least one. Every later entry of the range
    /// in `t` is as aligned, so the slots from `idx` up to the first present one are written as
    /// one stretch, as `fill_blocks` writes them (found empty by one `first_present`, the
    /// hinted runs of `hinted_runs_at`, one leaf template): entry by entry, the walk looked for
    /// a run and worked out the leaf's bits at every block (issue 18, goal 1: the 15 blocks of
    /// the mixed map). A format with more than one run size here (AMD-Vi v1) keeps
    /// `contiguous_run`'s entry-by-entry choice, which may mix sizes where `hinted_runs_at`
    /// writes one. Out of line: its locals are not in `map_range`'s frame (a kernel stack).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn write_stretch(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        pa: u64,
        left: u64,
        prot: Prot,
    ) -> usize {
        let g = self.geo();
        let shift = g.level_shift(level);
        let runs = self.format.contiguous_runs(level);
        // The entries of the range in `t` from `idx` (`left` ends inside `t`'s span).
        let n = ((left >> shift) as usize).min((1usize << g.level_bits(level)) - idx);
        if runs & runs.wrapping_sub(1) != 0 {
            let run_log2 = self.contiguous_run(t, level, idx, iova, pa, left);
            self.write_leaves(t, level, idx, pa, prot, run_log2);
            return 1 << run_log2;
        }
        // Slot `idx` was read empty by the caller; the others are `t`'s (`n` bounds them).
        let k = 1 + self.first_present(t, idx + 1, n - 1).unwrap_or(n - 1);
        if k == 1 {
            self.write_leaves(t, level, idx, pa, prot, 0);
            return 1;
        }
        let (a, b, run_log2) = self.hinted_runs_at(level, idx, k, iova, pa);
        self.write_run(t, level, idx, 0, a, pa, prot, 0);
        self.write_run(t, level, idx, a, b, pa, prot, run_log2);
        self.write_run(t, level, idx, b.max(a), k, pa, prot, 0);
        k
    }

    /// The table below `slot`, installing one from `spares` if the slot is empty; whether it
    /// was installed by this call.
    fn table_at(
        &self,
        slot: &AtomicU64,
        level: u32,
        raw: u64,
        iova: u64,
        spares: &mut Spares,
    ) -> Result<(Table, bool), Error> {
        let mut raw = raw;
        loop {
            if self.format.is_present(raw) {
                return if level > 0 && self.format.is_table(level, raw) {
                    self.child(raw).map(|t| (t, false))
                } else {
                    Err(Error::Overlap {
                        iova: Iova::new(iova),
                    })
                };
            }
            if level == 0 {
                return Err(Error::Overlap {
                    iova: Iova::new(iova),
                });
            }
            let page = spares.take(&self.alloc).ok_or(Error::NoMemory)?;
            // The zeroed table must reach memory before the entry that links it.
            self.sync(page.va, 1 << self.geo().granule_log2);
            let new = self.format.encode_table(level, page.pa);
            crate::barrier::publish_table();
            match slot.compare_exchange(raw, new, Ordering::Release, Ordering::Acquire) {
                Ok(_) => return Ok((Table(page.va), true)),
                Err(now) => {
                    // A concurrent map of a disjoint range installed a table first: use it.
                    spares.put(page);
                    raw = now;
                }
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // unmap

    /// Unmaps every page in `[iova, iova + len)` and returns the number of bytes unmapped
    /// (holes count for nothing). The cleared ranges and unlinked tables go into `gather`.
    ///
    /// A larger page that reaches outside the range is split (or, with
    /// [`SplitPolicy::Refuse`], the call fails).
    ///
    /// # Errors
    /// Refusals, with nothing changed: [`Error::GatherOfAnotherTable`] (another table's
    /// calls filled `gather`: one gather, one table); range and alignment errors; [`Error::SplitRefused`],
    /// [`Error::SplitUnsupported`]; [`Error::NoMemory`] or [`Error::TableOutOfRange`] for the
    /// tables a split needs (reserved before anything changes). Met during the walk, which
    /// stops there: [`Error::EntryUnstable`] (hardware kept rewriting an entry to be split),
    /// [`Error::UnknownTable`] (a corrupt entry). Then what the walk cleared before stays
    /// cleared, and `gather` holds it together with the larger page of every split table
    /// above it (ARCHITECTURE.md "Concurrency", rule 5): flush `gather` on an error too.
    #[inline]
    pub fn unmap(&self, iova: Iova, len: u64, gather: &mut Gather) -> Result<u64, Error> {
        self.claim_gather(gather)?;
        let fast = self.unmap_fast_or_page(iova, len, gather);
        match fast {
            FastUnmap::Unmapped(bytes) => Ok(bytes),
            // Called from here, not from `unmap_page` or `unmap_fast`: their frames are not
            // under the walk's (a kernel stack). One call: this body is inline in every
            // caller.
            _ => self.unmap_range(iova, len, gather, fast == FastUnmap::NotHere),
        }
    }

    /// `unmap_page` for one granule, `unmap_fast` for any other length a leaf table can hold,
    /// [`FastUnmap::Unchecked`] for longer ones (`unmap_range` checks them): out of line (two
    /// jumps), so that `unmap`'s body inline in its callers stays two calls (with the choice
    /// inline, a caller's own wrapper of `unmap` was no longer inlined: callgrind, 6-10
    /// instructions more per one-page unmap).
    #[inline(never)]
    fn unmap_fast_or_page(&self, iova: Iova, len: u64, gather: &mut Gather) -> FastUnmap {
        if len == 1 << self.geo().granule_log2 {
            self.unmap_page(iova, gather)
        } else if len >> self.geo().level_shift(1) == 0 {
            self.unmap_fast(iova, len, gather)
        } else {
            FastUnmap::Unchecked
        }
    }

    /// [`Self::unmap`] of one granule, in a function of its own as [`Self::map_page`]: the
    /// address tested without a branch, the descent to the existing leaf table, the one entry
    /// (`unmap_one`); [`FastUnmap::Unchecked`] for every other case (an argument error to
    /// name, an end that overflows, a run that `SplitPolicy::Refuse` must refuse to cut, no
    /// leaf table), which `unmap` hands to `unmap_range`, before anything changed.
    #[inline(never)]
    fn unmap_page(&self, iova: Iova, gather: &mut Gather) -> FastUnmap {
        let granule = 1u64 << self.geo().granule_log2;
        // Every run has at least two leaves, so one page may cut one wherever there are runs.
        let may_refuse = self.leaf_runs != 0 && self.split == SplitPolicy::Refuse;
        if !self.one_page_ok(iova.get(), 0)
            || iova.get().checked_add(granule).is_none()
            || may_refuse
        {
            return FastUnmap::Unchecked;
        }
        let Some((leaf, split_levels)) = self.unmap_descend(0, iova.get()) else {
            return FastUnmap::Unchecked;
        };
        let bytes = self.unmap_one(leaf, iova.get(), gather);
        if bytes > 0 {
            self.note_split_pages(split_levels, iova.get(), gather);
        }
        FastUnmap::Unmapped(bytes)
    }

    /// [`Self::unmap`] of a range other than one granule, shorter than a leaf table's span
    /// (`unmap_fast_or_page`, its one caller, tests it), on the leaf-table fast path, in a
    /// function of its own as [`Self::map_fast`] (issue 18, goal 2: the clearing loop was a
    /// call of its own, `clear_leaves`, whose prologue, epilogue and set-up again were about
    /// 40 instructions of a 256-page unmap): the checks as one branch-free test, the descent to
    /// the existing leaf table, the break of the runs the range cuts (rule 4), the loop that
    /// clears the leaves. [`FastUnmap::NotHere`] for every other case (a range across two leaf
    /// tables, a run `SplitPolicy::Refuse` must not cut, no leaf table) and
    /// [`FastUnmap::Unchecked`] for an argument to refuse, which `unmap` hands to
    /// `unmap_range` before anything changed.
    #[inline(never)]
    fn unmap_fast(&self, iova: Iova, len: u64, gather: &mut Gather) -> FastUnmap {
        let iova = iova.get();
        if !self.unmap_range_ok(iova, len) {
            return FastUnmap::Unchecked;
        }
        // Does not overflow (`unmap_range_ok`).
        let end = iova.wrapping_add(len);
        if self.leaf_runs != 0
            && (iova | end) & self.largest_leaf_run_mask() != 0
            && self.split == SplitPolicy::Refuse
        {
            // Under `SplitPolicy::Refuse`, a range that may cut a contiguous run takes the
            // general walk, whose `plan_split` refuses before anything changes. (The largest
            // run bounds the others: a range aligned to it cuts none.)
            return FastUnmap::NotHere;
        }
        // `plain_leaf_table_for` without its test of `len` (shorter than a leaf table's span,
        // the caller's test): the range lies inside one leaf table's span if its ends do.
        let span_log2 = self.geo().level_shift(1);
        if iova >> span_log2 != (end - 1) >> span_log2 {
            return FastUnmap::NotHere;
        }
        let Some((leaf, split_levels)) = self.unmap_descend(0, iova) else {
            return FastUnmap::NotHere;
        };
        let bytes = self.unmap_leaves(leaf, iova, len, gather);
        if bytes > 0 {
            self.note_split_pages(split_levels, iova, gather);
        }
        FastUnmap::Unmapped(bytes)
    }

    /// [`Self::unmap`] of what `unmap_page` and `unmap_fast` leave: the checks (unless
    /// `checked`: `unmap_fast` found them passed), then the level-1 fast path and the general
    /// walk. It does not descend to look for the leaf table those two looked for (see
    /// `map_range`).
    #[inline(never)]
    fn unmap_range(
        &self,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
        checked: bool,
    ) -> Result<u64, Error> {
        // The unmap's branch-free test of its arguments (`unmap_range_ok`): the common case of
        // the checks, which name what is wrong.
        if !checked && !self.unmap_range_ok(iova.get(), len) {
            self.check_iova_range(iova, len)?;
        }
        let end = iova.get().checked_add(len).ok_or(Error::Overflow {
            start: iova.get(),
            len,
        })?;
        if let Some((blocks, split_levels)) = self.block_unmap_table_for(iova.get(), end, len) {
            let r = if len >> self.geo().level_shift(1) == 1 {
                self.unmap_one_block(blocks, iova.get(), gather)
            } else {
                self.unmap_blocks(blocks, iova.get(), len, gather)
            };
            // After an error too: blocks before the failing entry are cleared (rule 5).
            if !matches!(r, Ok(0)) {
                self.note_split_pages(split_levels, iova.get(), gather);
            }
            return r;
        }
        self.unmap_walk(iova.get(), end, gather)
    }

    /// The general walk of [`Self::unmap`] over `[iova, end)`: the tables its splits need
    /// reserved first, then `unmap_level` from the root. Out of line: the fast paths' locals
    /// in `unmap`'s frame are not under the walk (a kernel stack).
    #[inline(never)]
    fn unmap_walk(&self, iova: u64, end: u64, gather: &mut Gather) -> Result<u64, Error> {
        let need = self.plan_split(iova, iova, end)? + self.plan_split(end, iova, end)?;
        let g = self.geo();
        let mut spares = Spares::reserve(&self.alloc, need, g.granule_log2, g.oas)?;
        let top = self.geo().top_level();
        let r = self.unmap_level(
            self.root_table(),
            top,
            iova,
            end - iova,
            gather,
            &mut spares,
        );
        spares.release(&self.alloc);
        r
    }

    /// Tables needed to split the leaf that contains the cut at `cut` (if it straddles the
    /// range `[start, end)`), or the reason it cannot be split.
    fn plan_split(&self, cut: u64, start: u64, end: u64) -> Result<usize, Error> {
        let g = *self.geo();
        if g.ias < 64 && cut >> g.ias != 0 {
            return Ok(0);
        }
        let mut t = self.root_table();
        for level in (0..g.levels).rev() {
            // SAFETY: `t` is a live table at `level` and the index comes from an in-range IOVA.
            let raw = unsafe { t.slot(g.index(level, cut)) }.load(Ordering::Acquire);
            if !self.format.is_present(raw) {
                return Ok(0);
            }
            if level > 0 && self.format.is_table(level, raw) {
                t = self.child(raw)?;
                continue;
            }
            let shift = g.level_shift(level);
            // A contiguous run is cut like a larger page: its hint must go first.
            let run_log2 = shift + self.contiguous_span_log2(level, raw);
            let run_base = cut & !((1u64 << run_log2) - 1);
            let run_end = run_base.saturating_add(1 << run_log2);
            if run_base == cut || (start <= run_base && run_end <= end) {
                return Ok(0);
            }
            let iova = Iova::new(cut);
            if self.split == SplitPolicy::Refuse {
                return Err(Error::SplitRefused { iova });
            }
            if !self.format.hitless_split() {
                return Err(Error::SplitUnsupported { iova });
            }
            let base = cut & !((1u64 << shift) - 1);
            if base == cut {
                // The cut falls between leaves of the run: only the hint is cleared.
                return Ok(0);
            }
            // One new table per level from the leaf down to the level the cut is aligned to.
            let aligned = (0..level)
                .rev()
                .find(|&l| cut & ((1u64 << g.level_shift(l)) - 1) == 0);
            let lowest = aligned.unwrap_or(0);
            if !self.format.hitless_split() || (lowest..level).any(|l| !g.leaf_allowed(l)) {
                return Err(Error::SplitUnsupported { iova });
            }
            return Ok((level - lowest) as usize);
        }
        Ok(0)
    }

    /// Unmaps `[iova, iova + len)` below `t` (at `level`); returns the bytes unmapped.
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack). Each
    /// entry is handled by `unmap_entry`, which may hand back a table to walk (one already
    /// there, or the one its split installed); that table's part of the range is unmapped
    /// before the next entry, with the parent's entry current meanwhile, so that the part
    /// (each level's `range`, as `unmap_entry` takes it) and the larger page of a split table
    /// (rule 5) are known when the walk returns to it. Errors return at once, through
    /// [`Self::unmap_failed`]: what was cleared before stays cleared and in `gather`, with the
    /// larger pages of the split tables still open.
    fn unmap_level(
        &self,
        t: Table,
        level: u32,
        iova: u64,
        len: u64,
        gather: &mut Gather,
        spares: &mut Spares,
    ) -> Result<u64, Error> {
        if level == 0 {
            self.break_leaf_runs(t, iova, len, gather);
            return Ok(self.clear_leaves(t, iova, len, gather));
        }
        let mut path = [UnmapOpen {
            t,
            iova,
            end: iova + len,
            split_from: NO_SPLIT,
        }; WALK_LEVELS];
        let mut depth = 0usize;
        // The bytes unmapped so far, under every table.
        let mut total = 0u64;
        // The part of the range under the current entry of the table at `up`.
        let chunk_of = |open: &UnmapOpen, up: u32| {
            let size = 1u64 << self.geo().level_shift(up);
            (open.end - open.iova).min(size - (open.iova & (size - 1)))
        };
        loop {
            let at = level - depth as u32;
            let open = path[open_at(depth)];
            // Done below the current entry of the table at `up`; `split`: something was
            // unmapped in a table a split made there, whose page is recorded (rule 5). Then the
            // walk moves past the entry.
            let (up, split) = if open.iova == open.end {
                if depth == 0 {
                    return Ok(total);
                }
                depth -= 1;
                (
                    at + 1,
                    open.split_from != NO_SPLIT && total > open.split_from,
                )
            } else {
                let chunk = chunk_of(&open, at);
                // The part of the range this table was asked for, as `unmap_entry` takes it.
                let range = match depth.checked_sub(1).and_then(|d| path.get(d)) {
                    Some(parent) => (parent.iova, parent.iova + chunk_of(parent, at + 1)),
                    None => (iova, iova + len),
                };
                // Whole entries where leaves may sit: the leaves up to the next table entry in
                // one loop.
                let (stop, bytes) = self.clear_stretch(&path[open_at(depth)], at, &range, gather);
                if stop != open.iova {
                    total += bytes;
                    path[open_at(depth)].iova = stop;
                    continue;
                }
                let idx = self.geo().index(at, open.iova);
                let found = match self
                    .unmap_entry(open.t, at, idx, open.iova, chunk, range, gather, spares)
                {
                    Ok(found) => found,
                    Err(e) => return Err(self.unmap_failed(e, &path, depth, level, gather)),
                };
                match found {
                    Unmapped::Bytes(bytes) => {
                        total += bytes;
                        (at, false)
                    }
                    // Reaped from this frame, not from `unmap_entry`'s: the deepest part of
                    // the walk (a kernel stack).
                    Unmapped::Unlinked(child, raw) => match self.reap(child, at - 1, raw, gather) {
                        Ok(bytes) => {
                            total += bytes;
                            (at, false)
                        }
                        Err(e) => return Err(self.unmap_failed(e, &path, depth, level, gather)),
                    },
                    Unmapped::Below(child, link) if at == 1 => {
                        self.break_leaf_runs(child, open.iova, chunk, gather);
                        let bytes = self.clear_leaves(child, open.iova, chunk, gather);
                        total += bytes;
                        (at, bytes > 0 && link != 0 && self.split_made(at, link))
                    }
                    Unmapped::Below(child, link) => {
                        if depth + 1 >= WALK_LEVELS {
                            let e = Self::too_deep(level);
                            return Err(self.unmap_failed(e, &path, depth, level, gather));
                        }
                        depth += 1;
                        path[open_at(depth)] = UnmapOpen {
                            t: child,
                            iova: open.iova,
                            end: open.iova + chunk,
                            split_from: if link != 0 && self.split_made(at, link) {
                                total
                            } else {
                                NO_SPLIT
                            },
                        };
                        continue;
                    }
                }
            };
            let current = &mut path[open_at(depth)];
            if split {
                self.note_split_page(up, current.iova, gather);
            }
            let chunk = chunk_of(current, up);
            current.iova = current.iova.wrapping_add(chunk);
        }
    }

    /// `unmap_level`'s error return: records in `gather` the larger page of every table on
    /// `path` (the open tables, `path[0]` at `level`, `path[depth]` the deepest) whose link
    /// marks a split (rule 5), then hands `e` back. Every such table, not only those whose
    /// bytes `unmap_level` counted: the failing step may itself have changed entries below it
    /// without counting them (a table unlinked whose reap then failed), and an invalidation
    /// too many costs nothing but itself. Out of line and cold: none of it is in the walk's
    /// frame (a kernel stack).
    #[cold]
    #[inline(never)]
    fn unmap_failed(
        &self,
        e: Error,
        path: &[UnmapOpen; WALK_LEVELS],
        depth: usize,
        level: u32,
        gather: &mut Gather,
    ) -> Error {
        let pairs = path.iter().zip(path.iter().skip(1)).take(depth);
        for (i, (parent, open)) in pairs.enumerate() {
            // `open` is at `level - i - 1`: its link at `level - i`.
            let up = level - i as u32;
            if open.split_from != NO_SPLIT {
                self.note_split_page(up, parent.iova, gather);
            }
        }
        e
    }

    /// Unmaps `[iova, iova + chunk)` under slot `idx` of `t` (at `level`); `range` is the part
    /// of the range the walk of `t` was asked for. Returns the bytes unmapped, or the table
    /// whose entries cover the part (for `unmap_level` to walk) with the entry that linked it
    /// before (a split of this call's installs a table: no entry, 0), or the table it unlinked
    /// because the part covers it whole (for `unmap_level` to reap, from its own frame).
    ///
    /// Other threads may change the slot meanwhile, within the contract (their ranges are
    /// disjoint from ours): another unmap may split the same larger page, or clear its
    /// contiguous hint; hardware may set accessed/dirty bits. So every decision is taken on the
    /// value last read, and a failed compare-and-swap re-examines what the slot holds now:
    /// a table (someone else's split) is descended into, a leaf is split again.
    ///
    /// Out of line, with `split_leaf`: their locals are not in `unmap_level`'s frame, under
    /// the leaf-table walk it calls (a kernel stack).
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn unmap_entry(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        chunk: u64,
        range: (u64, u64),
        gather: &mut Gather,
        spares: &mut Spares,
    ) -> Result<Unmapped, Error> {
        let shift = self.geo().level_shift(level);
        let size = 1u64 << shift;
        // SAFETY: `t` is a live table at `level`; `idx` comes from an IOVA in its span.
        let slot = unsafe { t.slot(idx) };
        let mut raw = slot.load(Ordering::Acquire);
        let runs = self.runs_at(level);
        for _ in 0..HW_UPDATE_RETRIES {
            let claim = match runs {
                0 => None,
                _ => self.run_claiming(t, level, runs, idx, raw),
            };
            if claim.is_some() {
                let t_iova = (iova & !(size - 1)) - ((idx as u64) << shift);
                self.break_runs_over(t, level, idx, t_iova, range, gather);
                self.note_claimed_run(level, claim, gather);
                raw = slot.load(Ordering::Acquire);
            }
            if !self.format.is_present(raw) {
                return Ok(Unmapped::Bytes(0));
            }
            if level > 0 && self.format.is_table(level, raw) {
                let child = self.child(raw)?;
                if chunk == size {
                    slot.store(0, Ordering::Release);
                    self.sync_cleared(t, level, idx, idx + 1);
                    gather.add_table_change(iova, size);
                    return Ok(Unmapped::Unlinked(child, raw));
                }
                // Rule 2: the walk relies on the link, which another thread's split may not
                // have cleaned yet, nor another's break of a run over it (a no-op for a
                // coherent walker).
                self.sync_cleared(t, level, idx, idx + 1);
                return Ok(Unmapped::Below(child, raw));
            }
            if chunk == size {
                slot.store(0, Ordering::Release);
                self.sync_cleared(t, level, idx, idx + 1);
                gather.add_leaves(iova, size, shift);
                return Ok(Unmapped::Bytes(size));
            }
            match self.split_leaf(t, idx, level, raw, iova, gather, spares)? {
                Ok(child) => return Ok(Unmapped::Below(child, 0)),
                // A concurrent split installed its table, or hardware set accessed/dirty
                // bits: look again.
                Err(now) => raw = now,
            }
        }
        Err(Error::EntryUnstable {
            iova: Iova::new(iova),
        })
    }

    /// `unmap_level`'s whole entries of the open table `open` at `level` (1 or more, where
    /// leaves may sit), from its current slot `idx` (mapping `iova`) to the end of its part
    /// `end`: clears the leaves and skips
    /// the empty entries up to the first table entry, as `unmap_entry` would one by one, in
    /// one loop (`clear_fours`; one cache-maintenance call and one gather record per run of
    /// cleared entries, the same bytes and ranges) where the walk took a call, a run search and
    /// a gather record per block (issue 18, goal 1: the 15 blocks of the mixed unmap). Returns
    /// the IOVA where it stopped (`iova`: entry `idx` is a table, or not an entry the range
    /// covers whole, or no leaf may sit at `level`: for `unmap_entry`) and the bytes it
    /// unmapped.
    ///
    /// Rule 4 first, as `unmap_entry` keeps it entry by entry: a run that holds an entry of the
    /// stretch and that `range` (the part of the range the walk of `t` was asked for) does
    /// not cover whole holds the stretch's first or last entry (runs are aligned blocks of
    /// entries); `break_runs_over` breaks it, found from its last leaf even half broken, before
    /// any entry is cleared. The runs the range covers whole are cleared like plain leaves. A
    /// run at the last entry is broken even if a table entry stops the stretch before it: the
    /// range cuts it, so this call breaks it before it clears any of its leaves either way.
    ///
    /// Out of line, as `unmap_entry`: its locals are not in `unmap_level`'s frame.
    #[inline(never)]
    fn clear_stretch(
        &self,
        open: &UnmapOpen,
        level: u32,
        range: &(u64, u64),
        gather: &mut Gather,
    ) -> (u64, u64) {
        let (t, iova, end, range) = (open.t, open.iova, open.end, *range);
        let g = self.geo();
        let shift = g.level_shift(level);
        if (end - iova) >> shift == 0 || iova & ((1 << shift) - 1) != 0 || !g.leaf_allowed(level) {
            // Part of an entry, or no leaves here: `unmap_entry`'s.
            return (iova, 0);
        }
        let idx = g.index(level, iova);
        // `[iova, end)` ends inside `t`'s span: `n` entries of `t` from `idx`.
        let n = (((end - iova) >> shift) as usize).min((1usize << g.level_bits(level)) - idx);
        let runs = self.runs_at(level);
        let run_mask = (1u64 << (shift + Self::largest_run_log2(runs))) - 1;
        if runs != 0 && (range.0 | range.1) & run_mask != 0 {
            let t_iova = iova - ((idx as u64) << shift);
            // `break_runs_over` only where a run claims the entry (its search, inline).
            let claim = self.run_last_over(t, level, runs, idx);
            if claim.is_some() {
                self.break_runs_over(t, level, idx, t_iova, range, gather);
                self.note_claimed_run(level, claim, gather);
            }
            let last = idx + n - 1;
            if last != idx {
                let claim = self.run_last_over(t, level, runs, last);
                if claim.is_some() {
                    self.break_runs_over(t, level, last, t_iova, range, gather);
                    self.note_claimed_run(level, claim, gather);
                }
            }
        }
        // SAFETY: `idx + i` indexes the live table `t` for `i < n` (see above).
        let slot = |i: usize| unsafe { t.slot(idx + i) };
        let (mut bytes, mut i, mut run) = (0u64, 0, 0);
        while i < n {
            i = self.clear_fours(t, level, idx, i, n);
            if i == n {
                break;
            }
            let raw = slot(i).load(Ordering::Acquire);
            let present = self.format.is_present(raw);
            if present && !self.format.is_table(level, raw) {
                i = self.clear_leaf(t, level, idx, i, n, raw, gather);
                continue;
            }
            if i > run {
                self.cleared_run(t, level, idx, run, i, iova, gather);
                bytes += ((i - run) as u64) << shift;
            }
            if present {
                // A table: `unmap_entry` unlinks it (or walks it), `unmap_level` reaps it.
                return (iova + ((i as u64) << shift), bytes);
            }
            i += 1;
            run = i;
        }
        if i > run {
            self.cleared_run(t, level, idx, run, i, iova, gather);
            bytes += ((i - run) as u64) << shift;
        }
        (iova + ((i as u64) << shift), bytes)
    }

    /// `unmap_level` at level 0: clears every present entry in one tight loop; each run of
    /// cleared entries gets one cache-maintenance call and one gather record (the same bytes and
    /// ranges as entry by entry, in fewer calls). Returns the bytes unmapped.
    ///
    /// A contiguous run the range covers only in part can only lie at either end; before any
    /// entry is cleared, such a run loses its hint on every leaf (`break_contiguous`, rule 4 of
    /// ARCHITECTURE.md "Concurrency") if any of its leaves in the range still carries it. Runs
    /// covered whole are cleared like plain leaves, as the general walk does.
    ///
    /// The leaf-table fast path's (`unmap_fast`), with the clearing loop in its caller's body.
    #[inline(always)]
    fn unmap_leaves(&self, t: Table, iova: u64, len: u64, gather: &mut Gather) -> u64 {
        self.break_leaf_runs(t, iova, len, gather);
        self.clear_leaves_here(t, iova, len, gather)
    }

    /// The first step of [`Self::unmap_leaves`]: the runs the range cuts lose their hint.
    /// The general walk takes it from its own frame, so that `break_cut_runs` is not under
    /// `clear_leaves`' (a kernel stack).
    #[inline(always)]
    fn break_leaf_runs(&self, t: Table, iova: u64, len: u64, gather: &mut Gather) {
        if self.leaf_runs != 0 && self.may_cut_runs(t, 0, self.leaf_runs, iova, len) {
            self.break_cut_runs(t, 0, iova, len, gather);
        }
    }

    /// The rest of [`Self::unmap_leaves`], once the cut runs are broken: the loop that clears
    /// the leaves. Returns the bytes unmapped.
    ///
    /// Out of line for the general walk (see `break_leaf_runs`); `unmap_fast` takes the loop
    /// in its own body (`clear_leaves_here`).
    #[inline(never)]
    fn clear_leaves(&self, t: Table, iova: u64, len: u64, gather: &mut Gather) -> u64 {
        self.clear_leaves_here(t, iova, len, gather)
    }

    /// The body of [`Self::clear_leaves`], inline in its callers.
    #[inline(always)]
    fn clear_leaves_here(&self, t: Table, iova: u64, len: u64, gather: &mut Gather) -> u64 {
        let shift = self.geo().granule_log2;
        let first = self.geo().index(0, iova);
        let n = (len >> shift) as usize;
        // SAFETY: as in `plan_leaves`, `first + i` indexes the live leaf table `t` for i < n.
        let slot = |i: usize| unsafe { t.slot(first + i) };
        let mut cleared = 0u64;
        let mut i = 0;
        // Up to here, the rest of a run of pages of the run's size (`clear_fours` leaves them
        // entry by entry: looking at every four of such a run again cost AMD-Vi v1 about 20
        // instructions per leaf).
        let mut fours_from = 0;
        while i < n {
            while i < n && !self.format.is_present(slot(i).load(Ordering::Acquire)) {
                i += 1;
            }
            let start = i;
            while i < n {
                if i >= fours_from {
                    i = self.clear_fours(t, 0, first, i, n);
                    if i == n {
                        break;
                    }
                }
                let raw = slot(i).load(Ordering::Acquire);
                if !self.format.is_present(raw) {
                    break;
                }
                if self.leaf_runs != 0 {
                    // A run the range holds whole (break_cut_runs left it).
                    let r_log2 = self.contiguous_span_log2(0, raw);
                    if r_log2 != 0 {
                        self.note_run_page(gather, shift + r_log2);
                        if self.format.contiguous_bit() == 0 && i >= fours_from {
                            // Runs are aligned in the table: the run ends at the next multiple.
                            fours_from = ((first + i) | ((1 << r_log2) - 1)) + 1 - first;
                        }
                    }
                }
                slot(i).store(0, Ordering::Release);
                i += 1;
            }
            if i > start {
                self.cleared_run(t, 0, first, start, i, iova, gather);
                cleared += (i - start) as u64;
            }
        }
        cleared << shift
    }

    /// Clears the present leaf `raw`, entry `first + i` of the live table `t` at `level` (1 or
    /// more), in a stretch of entries `first..first + n` that `clear_stretch` or
    /// `unmap_blocks` clears and records; returns the index past what it cleared. A leaf of a
    /// run that is one page of the run's size (AMD-Vi v1's Next Level 7, which `clear_fours`
    /// leaves to this) gets that size named in `gather` (runs the range cuts are broken
    /// before, so the range holds this one whole), and the rest of the run in the stretch is
    /// cleared with it (`clear_sized_runs`: a 512 MiB page is 256 level-1 entries).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn clear_leaf(
        &self,
        t: Table,
        level: u32,
        first: usize,
        i: usize,
        n: usize,
        raw: u64,
        gather: &mut Gather,
    ) -> usize {
        if self.sized_runs_at(level) && self.contiguous_span_log2(level, raw) != 0 {
            return self.clear_sized_runs(t, level, first, i, n, raw, gather);
        }
        // SAFETY: callers pass an entry of the live table `t`.
        unsafe { t.slot(first + i) }.store(0, Ordering::Release);
        i + 1
    }

    /// [`Self::clear_leaf`] from the run leaf `raw` at `i` on: names the run's size, clears
    /// the run four at a time and the rest of it (fewer than four) one by one, then the runs
    /// right after it the same way (a mixed range's blocks are runs of growing sizes), up to
    /// the first entry that is not a present run leaf. Returns the index past the last entry
    /// it cleared (more than `i`).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn clear_sized_runs(
        &self,
        t: Table,
        level: u32,
        first: usize,
        i: usize,
        n: usize,
        raw: u64,
        gather: &mut Gather,
    ) -> usize {
        // SAFETY: callers pass entries `first + i` with `i < n` of the live table `t`.
        let slot = |i: usize| unsafe { t.slot(first + i) };
        let shift = self.geo().level_shift(level);
        let (mut at, mut raw) = (i, raw);
        loop {
            let r_log2 = self.contiguous_span_log2(level, raw);
            if r_log2 == 0 {
                break;
            }
            self.note_run_page(gather, shift + r_log2);
            // Runs are aligned in the table: the run ends at the next multiple.
            let end = (((first + at) | ((1 << r_log2) - 1)) + 1 - first).min(n);
            at = self.clear_fours_of(t, level, first, at, end, false);
            while at < end {
                let e = slot(at).load(Ordering::Acquire);
                if !self.format.is_present(e) || self.format.is_table(level, e) {
                    break;
                }
                slot(at).store(0, Ordering::Release);
                at += 1;
            }
            if at != end || at == n {
                break;
            }
            raw = slot(at).load(Ordering::Acquire);
            if !self.format.is_present(raw) || self.format.is_table(level, raw) {
                break;
            }
        }
        if at == i {
            // The caller read entry `i` as a present leaf of its range, which no other thread
            // changes: cleared as the caller would clear it.
            slot(i).store(0, Ordering::Release);
            at += 1;
        }
        at
    }

    /// Clears entries `first + i ..` of the live table `t` at `level` (callers pass entries of
    /// it, `i <= n`) four at a time while all four are present leaves (rule 6: a plain store of
    /// 0 each, in entry order, each entry read before it is cleared as entry by entry); returns
    /// the index of the first entry left, a four that holds an empty entry, a table or (a
    /// format whose run leaf is a page of the run's size, AMD-Vi v1) a run leaf, or fewer than
    /// four before `n`. A load, one or two mask operations and a store per entry
    /// where presence is a mask test, against a test and branch per entry (issue 18, goal 2);
    /// at level 0 first eight at a time (`and_of_eight`: on x86-64 each load is the operand
    /// of the AND, 2.6 instructions per entry with the store and the loop's).
    #[inline(always)]
    fn clear_fours(&self, t: Table, level: u32, first: usize, i: usize, n: usize) -> usize {
        // Where a leaf of a run is a page of the run's size (AMD-Vi v1's Next Level 7), the
        // caller names that size in the gather (`clear_leaves`, `clear_leaf`): here only fours
        // without such a leaf (a run leaf of a hint-bit format needs nothing recorded but its
        // range). Before, such a format cleared every leaf entry by entry (issue 18: AMD-Vi v1
        // unmapped 256 x 4K in 3,739 instructions against VT-d's 1,533).
        self.clear_fours_of(t, level, first, i, n, self.sized_runs_at(level))
    }

    /// Whether a run leaf at `level` is a page of the run's size (AMD-Vi v1's Next Level 7:
    /// a format without a hint bit that has runs there), which a gather must name.
    #[inline(always)]
    fn sized_runs_at(&self, level: u32) -> bool {
        self.format.contiguous_bit() == 0
            && match level {
                0 => self.leaf_runs != 0,
                _ => self.format.contiguous_runs(level) != 0,
            }
    }

    /// [`Self::clear_fours`], stopping at a four that holds a run leaf if `sized_runs`.
    #[inline(always)]
    fn clear_fours_of(
        &self,
        t: Table,
        level: u32,
        first: usize,
        mut i: usize,
        n: usize,
        sized_runs: bool,
    ) -> usize {
        // SAFETY: callers pass entries of the live table `t`.
        let slot = |i: usize| unsafe { t.slot(first + i) };
        let Some(mask) = self.format.present_mask() else {
            return i;
        };
        let leaf = |raw: u64| !(level > 0 && self.format.is_table(level, raw));
        let stands_alone = |raw: u64| !sized_runs || self.format.leaf_run_log2(level, raw) == 0;
        if level == 0 && !sized_runs {
            // Leaves eight at a time while all eight have the mask's lowest bit (`all_present`'s
            // first test; every leaf at level 0 is one); the first eight without it is looked at
            // again four by four below.
            let lowest = mask & mask.wrapping_neg();
            let eights_end = n.saturating_sub(7);
            // SAFETY: `i + 8 <= n`: entries of the live table `t` (the caller's contract).
            while i < eights_end && unsafe { and_of_eight(t, first + i) } & lowest != 0 {
                for k in 0..8 {
                    slot(i + k).store(0, Ordering::Release);
                }
                i += 8;
            }
        }
        // `i + 4 <= n`, with the bound worked out once.
        let fours_end = n.saturating_sub(3);
        while i < fours_end {
            let e = [
                slot(i).load(Ordering::Acquire),
                slot(i + 1).load(Ordering::Acquire),
                slot(i + 2).load(Ordering::Acquire),
                slot(i + 3).load(Ordering::Acquire),
            ];
            let leaves = leaf(e[0]) & leaf(e[1]) & leaf(e[2]) & leaf(e[3]);
            if !(all_present(e, mask) & leaves) || !e.iter().all(|&raw| stands_alone(raw)) {
                break;
            }
            for (k, _) in e.iter().enumerate() {
                slot(i + k).store(0, Ordering::Release);
            }
            i += 4;
        }
        i
    }

    /// The level-1 fast path of `unmap`: the existing level-1 table whose span holds all of
    /// `[iova, end)` with room to spare, if the range is aligned to the level-1 entry size.
    /// The general walk would then only descend to it and remove whole entries: no page or
    /// table is cut, so nothing is split (a contiguous run may be cut: under
    /// `SplitPolicy::Refuse` that takes the general walk, as in `unmap`'s leaf-table path).
    #[inline]
    fn block_unmap_table_for(&self, iova: u64, end: u64, len: u64) -> Option<(Table, u32)> {
        let g = self.geo();
        let shift = g.level_shift(1);
        if g.levels < 3 || (iova | len) & ((1u64 << shift) - 1) != 0 {
            return None;
        }
        if self.split == SplitPolicy::Refuse {
            let runs = self.format.contiguous_runs(1);
            let run_mask = (1u64 << (shift + Self::largest_run_log2(runs))) - 1;
            if runs != 0 && (iova | end) & run_mask != 0 {
                return None;
            }
        }
        // `table_for`'s test, then the unmap's descent.
        let span_log2 = g.level_shift(2);
        if len >> span_log2 != 0 || iova >> span_log2 != (iova + (len - 1)) >> span_log2 {
            return None;
        }
        self.unmap_descend(1, iova)
    }

    /// [`Self::unmap_blocks`] for the one level-1 entry at `iova` in `t` (per-page callers of
    /// blocks), as `unmap_one` is `unmap_leaves` for one page: a present block that stands
    /// alone is cleared with an atomic store of 0, cleaned and recorded in `gather`; a block
    /// a run still claims loses its hint first (rule 4: the run found from its own hint or,
    /// half broken, from the run's last block's; `break_runs_at`), then is cleared as one
    /// that stands alone; a table (reaped) takes `unmap_blocks`. Returns the bytes unmapped.
    #[inline(always)]
    fn unmap_one_block(&self, t: Table, iova: u64, gather: &mut Gather) -> Result<u64, Error> {
        let shift = self.geo().level_shift(1);
        let idx = self.geo().index(1, iova);
        // SAFETY: `t` is a live table at level 1 and `idx` comes from an in-range IOVA.
        let slot = unsafe { t.slot(idx) };
        let mut raw = slot.load(Ordering::Acquire);
        let claim = match self.format.contiguous_runs(1) {
            0 => None,
            runs => self.run_claiming(t, 1, runs, idx, raw),
        };
        let mut broken = false;
        if claim.is_some() {
            (raw, broken) = self.break_runs_at(t, 1, idx, iova, gather);
            self.note_claimed_run(1, claim, gather);
        }
        if !self.format.is_present(raw) {
            return Ok(0);
        }
        if self.format.is_table(1, raw) {
            return self.unmap_blocks(t, iova, 1 << shift, gather);
        }
        slot.store(0, Ordering::Release);
        self.cleared_one(t, 1, idx, iova, broken, gather);
        Ok(1 << shift)
    }

    /// `unmap_level` at level 1 for a range of whole entries inside `t`: breaks the contiguous
    /// runs it cuts at either end first (as `unmap_leaves`), then clears every block in one
    /// loop (one cache-maintenance call and one gather record per run of blocks, as
    /// `unmap_leaves`) and unlinks every table, handing it to the gather as `unmap_entry`
    /// does for an entry covered whole. Returns the bytes unmapped.
    #[inline(never)]
    fn unmap_blocks(
        &self,
        t: Table,
        iova: u64,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error> {
        let shift = self.geo().level_shift(1);
        let first = self.geo().index(1, iova);
        let n = (len >> shift) as usize;
        let runs = self.format.contiguous_runs(1);
        if runs != 0 && self.may_cut_runs(t, 1, runs, iova, len) {
            self.break_cut_runs(t, 1, iova, len, gather);
        }
        // SAFETY: the range lies inside `t`'s span (`table_for`), so `first + i` indexes it.
        let slot = |i: usize| unsafe { t.slot(first + i) };
        let (mut bytes, mut i, mut run) = (0u64, 0, 0);
        while i < n {
            i = self.clear_fours(t, 1, first, i, n);
            if i == n {
                break;
            }
            let raw = slot(i).load(Ordering::Acquire);
            let table = self.format.is_present(raw) && self.format.is_table(1, raw);
            if self.format.is_present(raw) && !table {
                i = self.clear_leaf(t, 1, first, i, n, raw, gather);
                continue;
            }
            if i > run {
                self.cleared_run(t, 1, first, run, i, iova, gather);
                bytes += ((i - run) as u64) << shift;
            }
            if table {
                let child = self.child(raw)?;
                let at = iova + ((i as u64) << shift);
                // SAFETY: `first + i` indexes the live table `t`.
                unsafe { t.slot(first + i) }.store(0, Ordering::Release);
                self.sync_cleared(t, 1, first + i, first + i + 1);
                gather.add_table_change(at, 1 << shift);
                bytes += self.reap(child, 0, raw, gather)?;
            }
            i += 1;
            run = i;
        }
        if i > run {
            self.cleared_run(t, 1, first, run, i, iova, gather);
            bytes += ((i - run) as u64) << shift;
        }
        Ok(bytes)
    }

    /// Whether an unmap of `[iova, iova + len)` inside the table `t` at `level`, where the
    /// format has the runs `runs` (non-zero), has to look for runs it cuts
    /// ([`Self::break_cut_runs`]): not when both ends are aligned to the largest run (every
    /// run, aligned to its own size, then lies wholly inside the range or outside it), and for
    /// a single entry only when it is part of a run (every run has at least two leaves). What
    /// `break_cut_runs` would find in both cases, without its call and setup (issue 18: 92
    /// instructions of a one-page Arm unmap).
    #[inline(always)]
    fn may_cut_runs(&self, t: Table, level: u32, runs: u32, iova: u64, len: u64) -> bool {
        let g = self.geo();
        let shift = g.level_shift(level);
        let run_mask = (1u64 << (shift + Self::largest_run_log2(runs))) - 1;
        if (iova | iova.wrapping_add(len)) & run_mask == 0 {
            return false;
        }
        if len >> shift != 1 {
            return true;
        }
        let idx = g.index(level, iova);
        // SAFETY: the entry of `iova` lies in the live table `t` (callers' range is inside it).
        let raw = unsafe { t.slot(idx) }.load(Ordering::Acquire);
        self.run_claiming(t, level, runs, idx, raw).is_some()
    }

    /// The run of leaves that may still claim entry `e` of the table `t` at `level` (`raw`,
    /// read from it), where the format has the runs `runs`, as `run_last_over` finds it: the
    /// last entry of the block of some run size around `e` still part of a run over `e`. A
    /// break leaves a run leaf by leaf in entry order (`break_contiguous`), so the last leaf
    /// carries the run as long as any of its leaves does, `e`'s own included: a leaf standing
    /// alone is no proof that its run is broken whole (rule 4), and `e`'s own hint needs no
    /// test of its own (issue 18, goal 1). A table entry is no run's: a table takes the place
    /// of a run's leaf only once the run is broken whole (a split, rule 4) or in a slot its
    /// break let be cleared, and the acquire load that read the table entry follows that break
    /// (the search read the block's last entry for every table entry the general walk passed).
    #[inline(always)]
    fn run_claiming(
        &self,
        t: Table,
        level: u32,
        runs: u32,
        e: usize,
        raw: u64,
    ) -> Option<(usize, u64)> {
        if !self.format.is_present(raw) || (level > 0 && self.format.is_table(level, raw)) {
            return None;
        }
        self.run_last_over(t, level, runs, e)
    }

    /// The last entry of a run of leaves of `t` (at `level`, runs `runs`) that still claims
    /// entry `e`, with its value: of the blocks of each run size around `e`, the first whose
    /// last entry is part of a run holding `e`. Until a break is complete the run's last leaf
    /// carries it (rule 4), so a run over `e` that is whole or being broken is found.
    #[inline(always)]
    fn run_last_over(&self, t: Table, level: u32, runs: u32, e: usize) -> Option<(usize, u64)> {
        if runs & runs.wrapping_sub(1) == 0 {
            // One run size (Arm: every per-block unmap asks), without the loop over sizes.
            return self.block_last_claims(t, level, e, (runs as usize).wrapping_sub(1));
        }
        self.run_last_over_any(t, level, runs, e)
    }

    /// [`Self::run_last_over`] without its one-size shortcut: `break_runs_over`'s search, whose
    /// frame is under the unmap walk's (a kernel stack: the shortcut's second path took 16
    /// bytes more there).
    #[inline(always)]
    fn run_last_over_any(&self, t: Table, level: u32, runs: u32, e: usize) -> Option<(usize, u64)> {
        let entries = 1usize << self.geo().level_bits(level);
        let mut sizes = runs;
        while sizes != 0 {
            let last = e | ((1usize << sizes.trailing_zeros()) - 1);
            sizes &= sizes - 1;
            if last >= entries {
                break;
            }
            // SAFETY: `last < entries` indexes the live table `t`.
            let raw = unsafe { t.slot(last) }.load(Ordering::Acquire);
            let held = if self.format.is_present(raw) {
                self.contiguous_span_log2(level, raw)
            } else {
                0
            };
            if held != 0 && last >> held == e >> held {
                return Some((last, raw));
            }
        }
        None
    }

    /// [`Self::run_last_over`] for one run size: the last entry of the block of `run_mask + 1`
    /// entries of `t` (at `level`) around `e`, with its value, if it is part of a run holding
    /// `e`.
    #[inline(always)]
    fn block_last_claims(
        &self,
        t: Table,
        level: u32,
        e: usize,
        run_mask: usize,
    ) -> Option<(usize, u64)> {
        let last = e | run_mask;
        if last >= 1usize << self.geo().level_bits(level) {
            return None;
        }
        // SAFETY: `last` indexes the live table `t` (just checked).
        let raw = unsafe { t.slot(last) }.load(Ordering::Acquire);
        let held = if self.format.is_present(raw) {
            self.contiguous_span_log2(level, raw)
        } else {
            0
        };
        (held != 0 && last >> held == e >> held).then_some((last, raw))
    }

    /// `break_runs_over` for the one entry `idx` of `t` (at `level`), mapping `iova`, that a
    /// per-page unmap removes (`unmap_one`, `unmap_one_block`) and that a run claimed when
    /// the caller looked (`run_claiming`): no run lies inside one entry, so every run it is
    /// part of is cut. Without `unmap_leaves` / `unmap_blocks`' search of both ends of a range (issue 18,
    /// goal 1: about 250 instructions at the first per-block unmap of each run of 16 blocks).
    /// Returns the entry now in `idx`, and whether this call broke a run holding it (then its
    /// gather record of the run holds the entry's). Not so when another thread completed the
    /// break between the caller's search and this one's, which then finds no run: the caller
    /// records its entry as for one that stood alone (else its gather misses the entry, and a
    /// TLB entry of the run cached before that break outlives the unmap's invalidation: loom
    /// `two_page_unmaps_of_one_run_amd_v1` failed so). Out of line: once per run, and its
    /// frame is not under `unmap`'s.
    #[inline(never)]
    fn break_runs_at(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        gather: &mut Gather,
    ) -> (u64, bool) {
        let shift = self.geo().level_shift(level);
        let t_iova = iova - ((idx as u64) << shift);
        // An entry at `iova` lies below the end of the input space (the callers' checks).
        let range = (iova, iova + (1u64 << shift));
        let broken = self.break_runs_over(t, level, idx, t_iova, range, gather);
        // SAFETY: `idx` indexes the live table `t`.
        (unsafe { t.slot(idx) }.load(Ordering::Acquire), broken)
    }

    /// Breaks every run of leaves of `t` (at `level`; entry 0 maps `t_iova`) that still claims
    /// entry `e` and that `range` does not cover whole (`break_contiguous`), found from the
    /// run's last leaf (`run_last_over`), which a break rewrites last. Returns whether it broke
    /// one (and recorded it whole in `gather`).
    fn break_runs_over(
        &self,
        t: Table,
        level: u32,
        e: usize,
        t_iova: u64,
        range: (u64, u64),
        gather: &mut Gather,
    ) -> bool {
        let shift = self.geo().level_shift(level);
        let mut broken = false;
        // SAFETY: callers pass an entry `e` of the live table `t`.
        race_window(unsafe { t.slot(e) });
        // Each break leaves the run's last leaf alone: at most one per run size.
        for _ in 0..usize::BITS {
            let Some((last, raw)) = self.run_last_over_any(t, level, self.runs_at(level), e) else {
                break;
            };
            let at = t_iova + ((last as u64) << shift);
            let run = 1u64 << (shift + self.contiguous_span_log2(level, raw));
            let base = at & !(run - 1);
            if range.0 <= base && base + run <= range.1 {
                // Covered whole: cleared like plain leaves.
                break;
            }
            self.break_contiguous(t, level, last, at, raw, range, gather);
            broken = true;
        }
        broken
    }

    /// The first step of `unmap_leaves` (and `unmap_blocks`, at `level` 1) where the format
    /// has runs there: breaks the runs that `[iova, iova + len)` (inside the table `t`) covers
    /// only in part -- runs holding its first or its last entry -- that still claim it, even
    /// where the range's own leaves in them stand alone already (another thread may be
    /// breaking the run: its last leaf carries it until the break is complete, rule 4).
    /// Out of line (see `map_leaves_hinted`).
    #[inline(never)]
    fn break_cut_runs(&self, t: Table, level: u32, iova: u64, len: u64, gather: &mut Gather) {
        let shift = self.geo().level_shift(level);
        let first = self.geo().index(level, iova);
        let last = first + (len >> shift) as usize - 1;
        let t_iova = iova - ((first as u64) << shift);
        let range = (iova, iova + len);
        let runs = self.runs_at(level);
        for e in [first, last] {
            let claim = self.run_last_over(t, level, runs, e);
            if claim.is_some() {
                self.break_runs_over(t, level, e, t_iova, range, gather);
                self.note_claimed_run(level, claim, gather);
            }
        }
    }

    /// Reports entries `first + start .. first + end` of the leaf table `t` (mapping from
    /// `iova`, the IOVA of entry `first`) as cleared: cache maintenance and gather.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn cleared_run(
        &self,
        t: Table,
        level: u32,
        first: usize,
        start: usize,
        end: usize,
        iova: u64,
        gather: &mut Gather,
    ) {
        let shift = self.geo().level_shift(level);
        self.sync_cleared(t, level, first + start, first + end);
        let run_iova = iova + ((start as u64) << shift);
        gather.add_leaves(run_iova, ((end - start) as u64) << shift, shift);
    }

    /// `cleared_run` for the one entry `idx` of `t` (at `level`, mapping `iova`) that a
    /// per-page unmap cleared; `broken`: this call broke the entry's run (`break_runs_at`
    /// says so, not the search that found the run: another thread may have completed the
    /// break in between), whose gather record of the whole run (`break_contiguous`: its range,
    /// the entry's page size) holds the entry's already, so only the cache maintenance is left
    /// (issue 18, goal 1).
    #[inline(always)]
    fn cleared_one(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        broken: bool,
        gather: &mut Gather,
    ) {
        match broken {
            true => self.sync_cleared(t, level, idx, idx + 1),
            false => self.cleared_run(t, level, idx, 0, 1, iova, gather),
        }
    }

    /// Cache maintenance of entries `from..to` of the live table `t` (at `level`) that this
    /// call cleared, linked or relies on, for a non-coherent walker (a no-op for a coherent one, tested here as
    /// `sync` would). Where the format has runs at `level`, the aligned blocks of the largest
    /// run around them are cleaned whole (rule 2): another thread's break of a run over them
    /// may have rewritten the run's leaves and not cleaned them yet, and this call's search
    /// then found the run broken; memory would keep the hint in the run's other cache lines,
    /// whose walk may cache the whole run, these entries included, after this call's
    /// invalidation.
    #[inline(always)]
    fn sync_cleared(&self, t: Table, level: u32, from: usize, to: usize) {
        if self.coherency == WalkerCoherency::NonCoherent {
            self.sync_cleared_blocks(t, level, from, to);
        }
    }

    /// [`Self::sync_cleared`] for a non-coherent walker, out of line.
    #[inline(never)]
    fn sync_cleared_blocks(&self, t: Table, level: u32, from: usize, to: usize) {
        let (mut from, mut to) = (from, to);
        let runs = self.runs_at(level);
        if runs != 0 {
            // Runs are aligned blocks inside a table, whose entry count is a multiple of them.
            let block = 1usize << Self::largest_run_log2(runs);
            (from, to) = (from & !(block - 1), (to + block - 1) & !(block - 1));
        }
        // SAFETY: entries `from..to` lie in the live table `t` (the callers' entries, widened
        // to whole run blocks of it).
        self.alloc
            .sync_for_device(unsafe { t.entry_ptr(from) }, (to - from) * 8);
    }

    #[inline]
    pub(super) fn store_synced(&self, t: Table, idx: usize, raw: u64) {
        // SAFETY: callers pass a live table and an index inside it.
        unsafe { t.slot(idx) }.store(raw, Ordering::Release);
        // SAFETY: as above.
        self.sync(unsafe { t.entry_ptr(idx) }, 8);
    }

    /// Hands the unlinked table `t` (at `level`, linked by `raw`) and every table under it to
    /// `gather`, recording the sizes of the leaves they held; returns the bytes those leaves
    /// mapped.
    ///
    /// Depth first without recursion: one frame however deep the tables (a kernel stack), a
    /// table handed over after every table under it.
    fn reap(&self, t: Table, level: u32, raw: u64, gather: &mut Gather) -> Result<u64, Error> {
        /// A table being reaped: the entry that links it, the next slot, whether it held leaves.
        /// 24 bytes (a slot index fits 32 bits): the path of six is most of this frame, the
        /// deepest of an unmap.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            raw: u64,
            next: u32,
            leaves: bool,
        }
        let mut path = [Open {
            t,
            raw,
            next: 0,
            leaves: false,
        }; WALK_LEVELS];
        let (mut depth, mut bytes) = (0usize, 0u64);
        loop {
            let at = level - depth as u32;
            let shift = self.geo().level_shift(at);
            let open = &mut path[open_at(depth)];
            let entries = 1usize << self.geo().level_bits(at);
            if at == 0 && open.next == 0 {
                // A leaf table: every present entry is a leaf, counted in a loop of its own
                // (the step below costs about 55 instructions per entry; a 1 GiB unmap reaps
                // 262,144).
                let leaves = self.count_present(open.t, entries);
                bytes += (leaves as u64) << shift;
                open.leaves = leaves != 0;
                open.next = entries as u32;
            }
            if (open.next as usize) < entries {
                // SAFETY: `next` is below the table's entry count.
                let e = unsafe { open.t.slot(open.next as usize) }.load(Ordering::Acquire);
                open.next += 1;
                if !self.format.is_present(e) {
                    continue;
                }
                if at > 0 && self.format.is_table(at, e) {
                    let child = self.child(e)?;
                    depth += 1;
                    let Some(below) = path.get_mut(depth) else {
                        return Err(Self::too_deep(level));
                    };
                    *below = Open {
                        t: child,
                        raw: e,
                        next: 0,
                        leaves: false,
                    };
                } else {
                    bytes += 1 << shift;
                    open.leaves = true;
                }
                continue;
            }
            if open.leaves {
                gather.note_page_size(shift);
            }
            let pa = self.format.table_address(open.raw);
            gather.add_freed(Page { pa, va: open.t.0 }, self.geo().granule_log2);
            if depth == 0 {
                return Ok(bytes);
            }
            depth -= 1;
        }
    }

    /// The number of present entries among the first `n` of the live table `t` (callers pass
    /// at most its entry count): a load and a test per entry, the test a mask where the
    /// format has one ([`Format::present_mask`]), four entries at a time where all four
    /// have its lowest bit.
    #[inline(always)]
    fn count_present(&self, t: Table, n: usize) -> usize {
        // SAFETY: callers pass at most `t`'s entry count.
        let load = |i: usize| unsafe { t.slot(i) }.load(Ordering::Acquire);
        let Some(mask) = self.format.present_mask() else {
            return (0..n).filter(|&i| self.format.is_present(load(i))).count();
        };
        let one = |raw: u64| usize::from(raw & mask != 0);
        // Four at a time, four present when all have the mask's lowest bit (`all_present`):
        // VT-d's two-bit mask made a test and a carry per entry into one chain of additions,
        // about a cycle per entry (a 1 GiB unmap reaps 262,144).
        let lowest = mask & mask.wrapping_neg();
        let (mut count, mut i) = (0, 0);
        let fours_end = n.saturating_sub(3);
        while i < fours_end {
            let e = [load(i), load(i + 1), load(i + 2), load(i + 3)];
            count += if e[0] & e[1] & e[2] & e[3] & lowest != 0 {
                4
            } else {
                one(e[0]) + one(e[1]) + one(e[2]) + one(e[3])
            };
            i += 4;
        }
        count + (i..n).map(|i| one(load(i))).sum::<usize>()
    }

    /// Replaces the leaf `raw` in slot `idx` of `t` by a fully populated table of next-level
    /// leaves with the same translation and attributes (accessed/dirty state included), with one
    /// compare-and-swap from `raw`.
    ///
    /// Returns the new table, or, if the slot no longer held `raw`, what it holds now (the table
    /// of a concurrent split, or the leaf with bits the walker set); the spare page then goes
    /// back zeroed.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn split_leaf(
        &self,
        t: Table,
        idx: usize,
        level: u32,
        raw: u64,
        iova: u64,
        gather: &mut Gather,
        spares: &mut Spares,
    ) -> Result<Result<Table, u64>, Error> {
        let page = spares.take(&self.alloc).ok_or(Error::NoMemory)?;
        let new = Table(page.va);
        let child_size = 1u64 << self.geo().level_shift(level - 1);
        let entries = 1usize << self.geo().level_bits(level - 1);
        let table_entry = self.format.encode_table(level, page.pa) | self.format.split_table_bit();
        let base = self.entry_pa(level, raw, iova);
        for i in 0..entries {
            let pa = PhysAddr::new(base + i as u64 * child_size);
            let e = self.format.relevel_leaf(raw, level, level - 1, pa);
            // SAFETY: `i` is below the new table's entry count; the page is still private.
            unsafe { new.slot(i) }.store(e, Ordering::Relaxed);
        }
        self.sync(page.va, 1 << self.geo().granule_log2);
        // SAFETY: `idx` indexes the live table `t`.
        let slot = unsafe { t.slot(idx) };
        race_window(slot);
        crate::barrier::publish_table();
        match slot.compare_exchange(raw, table_entry, Ordering::Release, Ordering::Acquire) {
            Ok(_) => {
                // The run block whole: another thread's break of a run over the leaf may not be
                // clean yet (`sync_cleared`; review of 8b21902).
                self.sync_cleared(t, level, idx, idx + 1);
                let shift = self.geo().level_shift(level);
                gather.add_table_change(iova & !((1u64 << shift) - 1), 1 << shift);
                Ok(Ok(new))
            }
            Err(now) => {
                for i in 0..entries {
                    // SAFETY: as above; the page never became reachable.
                    unsafe { new.slot(i) }.store(0, Ordering::Relaxed);
                }
                spares.put(page);
                Ok(Err(now))
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // query, enumeration, dirty tracking

    /// The translation of `iova`, or `None` if it is not mapped (or outside the input range).
    pub fn query(&self, iova: Iova) -> Option<Mapping> {
        let g = self.geo();
        if !iova.fits_in(g.ias) {
            return None;
        }
        let mut t = self.root_table();
        for level in (0..g.levels).rev() {
            // SAFETY: `t` is a live table at `level` and the index comes from an in-range IOVA.
            let raw = unsafe { t.slot(g.index(level, iova.get())) }.load(Ordering::Acquire);
            if !self.format.is_present(raw) {
                return None;
            }
            if level > 0 && self.format.is_table(level, raw) {
                t = self.child(raw).ok()?;
                continue;
            }
            let shift = g.level_shift(level);
            let offset = iova.get() & ((1u64 << shift) - 1);
            return Some(Mapping {
                pa: PhysAddr::new(self.entry_pa(level, raw, iova.get())).checked_add(offset)?,
                prot: self.format.leaf_prot(level, raw),
                size_log2: shift,
            });
        }
        None
    }

    /// Calls `f` for every leaf that intersects `[iova, iova + len)`, in IOVA order.
    ///
    /// # Errors
    /// Range errors; [`Error::UnknownTable`] for a corrupt table.
    pub fn for_each_mapping(
        &self,
        iova: Iova,
        len: u64,
        mut f: impl FnMut(Leaf),
    ) -> Result<(), Error> {
        self.check_iova_range(iova, len)?;
        let top = self.geo().top_level();
        self.visit(
            self.root_table(),
            top,
            iova.get(),
            len,
            &mut |_, leaf, _| {
                f(leaf);
                Ok(())
            },
        )
    }

    /// As [`for_each_mapping`](Self::for_each_mapping), until `f` returns
    /// [`ControlFlow::Break`](core::ops::ControlFlow::Break): the walk ends there, with the
    /// leaves after it not visited. Returns whether `f` stopped it (a caller resumes from the
    /// leaf it stopped at).
    ///
    /// # Errors
    /// As [`for_each_mapping`](Self::for_each_mapping).
    pub fn for_each_mapping_until(
        &self,
        iova: Iova,
        len: u64,
        mut f: impl FnMut(Leaf) -> core::ops::ControlFlow<()>,
    ) -> Result<bool, Error> {
        self.check_iova_range(iova, len)?;
        let top = self.geo().top_level();
        let mut stopped = false;
        // The walk ends at the first error its visitor returns: `stopped` tells the visitor's
        // stop from the walk's own errors (the variant carried is never reported).
        let walked = self.visit(
            self.root_table(),
            top,
            iova.get(),
            len,
            &mut |_, leaf, _| {
                if f(leaf).is_break() {
                    stopped = true;
                    return Err(Error::ZeroLength);
                }
                Ok(())
            },
        );
        match walked {
            Err(_) if stopped => Ok(true),
            r => r.map(|()| false),
        }
    }

    /// Walks the leaves intersecting a range; `f` gets the slot, the leaf and its raw value.
    ///
    /// Without recursion: one frame however deep the tables (a kernel stack).
    pub(super) fn visit(
        &self,
        t: Table,
        level: u32,
        iova: u64,
        len: u64,
        f: &mut impl FnMut(&AtomicU64, Leaf, u64) -> Result<(), Error>,
    ) -> Result<(), Error> {
        /// A table being walked: the part of the range left in it and its next slot.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            iova: u64,
            left: u64,
            idx: usize,
        }
        let mut path = [Open {
            t,
            iova,
            left: len,
            idx: self.geo().index(level, iova),
        }; WALK_LEVELS];
        let mut depth = 0usize;
        loop {
            let at = level - depth as u32;
            let open = &mut path[open_at(depth)];
            if open.left == 0 {
                if depth == 0 {
                    return Ok(());
                }
                depth -= 1;
                continue;
            }
            let shift = self.geo().level_shift(at);
            let size = 1u64 << shift;
            let (iova, idx) = (open.iova, open.idx);
            let chunk = open.left.min(size - (iova & (size - 1)));
            (open.iova, open.left, open.idx) =
                (iova.wrapping_add(chunk), open.left - chunk, idx + 1);
            // SAFETY: `open.t` is a live table at `at`; `idx` comes from an IOVA in its span.
            let slot = unsafe { open.t.slot(idx) };
            let raw = slot.load(Ordering::Acquire);
            if !self.format.is_present(raw) {
                // hole
            } else if at > 0 && self.format.is_table(at, raw) {
                let child = self.child(raw)?;
                depth += 1;
                let Some(below) = path.get_mut(depth) else {
                    return Err(Self::too_deep(level));
                };
                *below = Open {
                    t: child,
                    iova,
                    left: chunk,
                    idx: self.geo().index(at - 1, iova),
                };
            } else {
                let leaf = Leaf {
                    iova: Iova::new(iova & !(size - 1)),
                    pa: PhysAddr::new(self.entry_pa(at, raw, iova)),
                    prot: self.format.leaf_prot(at, raw),
                    size_log2: shift,
                };
                f(slot, leaf, raw)?;
            }
        }
    }

    /// Reports every dirty leaf intersecting `[iova, iova + len)` to `sink` (its IOVA and log2
    /// size) and cleans each that lies entirely inside the range; the cleaned ranges go into
    /// `gather`, which must be flushed before the hardware reliably marks them dirty again. A
    /// dirty leaf straddling an edge of the range (a large page the range covers only part of)
    /// is reported and left dirty: a later read of its other part reports it again, where
    /// cleaning it would lose the writes there.
    ///
    /// May run concurrently with maps and unmaps of other ranges, even ones that split a larger
    /// page this range shares: a leaf that became a table meanwhile is descended into (the
    /// split carried its dirty state into every smaller leaf), so nothing dirty at the call is
    /// left unreported.
    ///
    /// # Errors
    /// [`Error::NoDirtyTracking`] when the format is configured without it; range errors;
    /// [`Error::GatherOfAnotherTable`] (another table's calls filled `gather`: nothing read);
    /// [`Error::EntryUnstable`] if hardware kept rewriting an entry, [`Error::UnknownTable`]
    /// for a corrupt entry: the walk stops there, and `gather` holds what it cleaned before,
    /// with the larger page of every split table above it (flush it on an error too).
    pub fn read_and_clear_dirty(
        &self,
        iova: Iova,
        len: u64,
        sink: impl FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        self.read_dirty(iova, len, DirtyRead::Clear, sink, gather)
    }

    /// Reports every dirty leaf intersecting `[iova, iova + len)` to `sink` (its IOVA and log2
    /// size); with [`DirtyRead::Clear`] also cleans it if it lies entirely inside the range, as
    /// [`read_and_clear_dirty`](Self::read_and_clear_dirty) does, with
    /// [`DirtyRead::NoClear`] leaves it dirty and `gather` untouched (iommufd's
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`: a caller that reads twice sees the page again).
    ///
    /// # Errors
    /// As [`read_and_clear_dirty`](Self::read_and_clear_dirty).
    pub fn read_dirty(
        &self,
        iova: Iova,
        len: u64,
        how: DirtyRead,
        mut sink: impl FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        if !self.format.dirty_tracking() {
            return Err(Error::NoDirtyTracking);
        }
        self.check_iova_range(iova, len)?;
        self.claim_gather(gather)?;
        let top = self.geo().top_level();
        let root = self.root_table();
        self.clear_dirty_level(root, top, iova.get(), len, how, &mut sink, gather)?;
        Ok(())
    }

    /// Whether dirty tracking is on ([`set_dirty_tracking`](Self::set_dirty_tracking)).
    pub fn dirty_tracking_on(&self) -> bool {
        self.tracking.load(core::sync::atomic::Ordering::Acquire)
    }

    /// Turns dirty tracking on or off for the leaves this table writes from now on, and when
    /// turning it on cleans every leaf, so that only writes after the call are reported (the
    /// cleaned ranges go into `gather`: flush it, and turn the walker's own tracking on --
    /// VT-d `SSADE`, SMMUv3 `HD` -- before relying on the state). While on, a map writes
    /// writable leaves clean (Arm: DBM set, write permission clear); while off, as the format
    /// encodes them (Arm: writable-dirty, so that a walker that does not update dirty state
    /// can write them). Turning it off changes no leaf: a clean Arm leaf needs the walker's
    /// hardware update on its next write, so the unit keeps that on (`HD`) for the table's
    /// life.
    ///
    /// Takes the table exclusively: a map racing the switch may write its leaves either way,
    /// and the walk compare-and-swaps into tables a concurrent unmap may unlink and free
    /// (review of 2026-12-07, F3).
    ///
    /// # Errors
    /// [`Error::NoDirtyTracking`] when the format is configured without it;
    /// [`Error::GatherOfAnotherTable`] (another table's calls filled `gather`: nothing changed);
    /// [`Error::EntryUnstable`] if hardware kept rewriting an entry: tracking is on and
    /// `gather` holds what was cleaned, as after a failed
    /// [`read_and_clear_dirty`](Self::read_and_clear_dirty).
    pub fn set_dirty_tracking(&mut self, on: bool, gather: &mut Gather) -> Result<(), Error> {
        if !self.format.dirty_tracking() {
            return Err(Error::NoDirtyTracking);
        }
        self.claim_gather(gather)?;
        self.tracking
            .store(on, core::sync::atomic::Ordering::Release);
        if on {
            let g = self.geo();
            let (top, root, len) = (g.top_level(), self.root_table(), 1u64 << g.ias.min(63));
            self.clear_dirty_level(root, top, 0, len, DirtyRead::Clear, &mut |_, _| {}, gather)?;
        }
        Ok(())
    }

    /// `read_and_clear_dirty` below `t` (at `level`) for `[iova, iova + len)`; returns whether
    /// it cleaned anything.
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack): each
    /// entry is read once per attempt by `clear_dirty_entry`, a table it finds is walked before
    /// the next entry, and once that table is done its split mark decides whether the larger
    /// page it replaced goes into `gather` (rule 5). Errors return at once, through
    /// [`Self::clear_dirty_failed`], which decides the same for the tables still open.
    #[allow(clippy::too_many_arguments)]
    fn clear_dirty_level(
        &self,
        t: Table,
        level: u32,
        iova: u64,
        len: u64,
        how: DirtyRead,
        sink: &mut impl FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<bool, Error> {
        let mut path = [DirtyOpen {
            t,
            iova,
            left: len,
            link: 0,
            cleaned: false,
        }; WALK_LEVELS];
        let mut depth = 0usize;
        loop {
            let at = level - depth as u32;
            let open = path[open_at(depth)];
            if open.left == 0 {
                if depth == 0 {
                    return Ok(open.cleaned);
                }
                // Back in the parent, at the entry that links the table just walked.
                depth -= 1;
                let (up, parent) = (at + 1, &mut path[open_at(depth)]);
                let size = 1u64 << self.geo().level_shift(up);
                let chunk = parent.left.min(size - (parent.iova & (size - 1)));
                if open.cleaned && self.split_made(up, open.link) {
                    // The larger page may still be cached, writable and dirty: an
                    // invalidation of the small pages alone could leave writes through it
                    // unrecorded.
                    self.note_split_page(up, parent.iova, gather);
                }
                parent.cleaned |= open.cleaned;
                (parent.iova, parent.left) = (parent.iova.wrapping_add(chunk), parent.left - chunk);
                continue;
            }
            let size = 1u64 << self.geo().level_shift(at);
            let chunk = open.left.min(size - (open.iova & (size - 1)));
            let idx = self.geo().index(at, open.iova);
            // A leaf straddling an edge of the range is reported but left dirty: cleaning it
            // would lose writes to its part outside the range, which the caller's bitmap does
            // not record (a later read of that part would report nothing).
            let leaf_how = if chunk == size {
                how
            } else {
                DirtyRead::NoClear
            };
            let found =
                match self.clear_dirty_entry(open.t, at, idx, open.iova, leaf_how, sink, gather) {
                    Ok(found) => found,
                    Err(e) => return Err(self.clear_dirty_failed(e, &path, depth, level, gather)),
                };
            match found {
                Dirty::Leaf(cleaned) => {
                    let open = &mut path[open_at(depth)];
                    open.cleaned |= cleaned;
                    (open.iova, open.left) = (open.iova.wrapping_add(chunk), open.left - chunk);
                }
                Dirty::Table(raw) => {
                    let child = match self.child(raw) {
                        Ok(child) => child,
                        Err(e) => {
                            return Err(self.clear_dirty_failed(e, &path, depth, level, gather))
                        }
                    };
                    if depth + 1 >= WALK_LEVELS {
                        let e = Self::too_deep(level);
                        return Err(self.clear_dirty_failed(e, &path, depth, level, gather));
                    }
                    depth += 1;
                    path[open_at(depth)] = DirtyOpen {
                        t: child,
                        iova: open.iova,
                        left: chunk,
                        link: raw,
                        cleaned: false,
                    };
                }
            }
        }
    }

    /// `clear_dirty_level`'s error return: records in `gather` the larger page of every table
    /// on `path` (the open tables, `path[0]` at `level`, `path[depth]` the deepest) whose link
    /// marks a split and below which something was cleaned (rule 5: the larger page may still
    /// be cached writable and dirty), then hands `e` back. `cleaned` is exact here, unlike an
    /// unmap's byte count: a failing `clear_dirty_entry` cleaned nothing; it is propagated up
    /// from the deepest table, as the walk would have done on its way back. Out of line and
    /// cold: none of it is in the walk's frame (a kernel stack).
    #[cold]
    #[inline(never)]
    fn clear_dirty_failed(
        &self,
        e: Error,
        path: &[DirtyOpen; WALK_LEVELS],
        depth: usize,
        level: u32,
        gather: &mut Gather,
    ) -> Error {
        let pairs = path.iter().zip(path.iter().skip(1)).take(depth);
        let mut below = false;
        for (i, (parent, open)) in pairs.enumerate().rev() {
            // `open` is at `level - i - 1`: its link at `level - i`.
            let up = level - i as u32;
            below |= open.cleaned;
            if below && self.split_made(up, open.link) {
                self.note_split_page(up, parent.iova, gather);
            }
        }
        e
    }

    /// Cleans the dirty state of the leaf in slot `idx` of `t` (`iova` lies in it),
    /// re-reading the slot when a compare-and-swap fails: hardware set accessed/dirty bits, or
    /// a concurrent unmap split the leaf (then the table it installed is returned, for
    /// `clear_dirty_level` to walk).
    #[allow(clippy::too_many_arguments)]
    fn clear_dirty_entry(
        &self,
        t: Table,
        level: u32,
        idx: usize,
        iova: u64,
        how: DirtyRead,
        sink: &mut impl FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<Dirty, Error> {
        let shift = self.geo().level_shift(level);
        // SAFETY: `t` is a live table at `level`; `idx` comes from an IOVA in its span.
        let slot = unsafe { t.slot(idx) };
        let mut raw = slot.load(Ordering::Acquire);
        for _ in 0..HW_UPDATE_RETRIES {
            if !self.format.is_present(raw) {
                return Ok(Dirty::Leaf(false));
            }
            if level > 0 && self.format.is_table(level, raw) {
                // Rule 2: cleaned before the walk below relies on it (a split's link may not
                // be yet: the walker would still cache the dirty larger leaf after this call's
                // invalidation, and writes through it go unrecorded).
                self.sync(NonNull::from(slot).cast(), 8);
                return Ok(Dirty::Table(raw));
            }
            if !self.format.leaf_is_dirty(raw) {
                return Ok(Dirty::Leaf(false));
            }
            if how == DirtyRead::NoClear {
                sink(Iova::new(iova & !((1u64 << shift) - 1)), shift);
                return Ok(Dirty::Leaf(false));
            }
            let clean = self.format.leaf_clear_dirty(raw);
            race_window(slot);
            match slot.compare_exchange(raw, clean, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    self.sync(NonNull::from(slot).cast(), 8);
                    let leaf_iova = iova & !((1u64 << shift) - 1);
                    sink(Iova::new(leaf_iova), shift);
                    gather.add_leaves(leaf_iova, 1 << shift, shift);
                    return Ok(Dirty::Leaf(true));
                }
                Err(now) => raw = now,
            }
        }
        Err(Error::EntryUnstable {
            iova: Iova::new(iova),
        })
    }

    // ---------------------------------------------------------------------------------------
    // compaction

    /// Unlinks every table whose entries are all non-present (left behind by unmaps that did not
    /// cover a whole table), handing their pages to `gather`. Returns how many were unlinked.
    ///
    /// `&mut self` proves that no map runs concurrently, which is what makes unlinking a table
    /// that a concurrent map could be filling safe; `unmap` alone never does it for that reason.
    ///
    /// # Errors
    /// [`Error::UnknownTable`] for a corrupt table; [`Error::GatherOfAnotherTable`] if another
    /// table's calls filled `gather` (nothing changed).
    pub fn reclaim_empty(&mut self, gather: &mut Gather) -> Result<usize, Error> {
        self.claim_gather(gather)?;
        self.reclaim_range(0, u64::MAX, gather)
    }

    /// [`PageTable::unmap`] for a caller with exclusive access: it also unlinks every table
    /// along `[iova, iova + len)` that the unmap left empty (not only those it covered whole),
    /// so that unmapping everything piece by piece leaves only the root. The tables go into
    /// `gather` with the cleared ranges.
    ///
    /// # Errors
    /// As [`PageTable::unmap`] (nothing changed); [`Error::UnknownTable`] for a corrupt table
    /// found while reclaiming (the unmap is done, `gather` holds what was unlinked).
    pub fn unmap_exclusive(
        &mut self,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error> {
        let bytes = self.unmap(iova, len, gather)?;
        // `unmap` checked that `len` is non-zero and the range does not overflow.
        self.reclaim_range(iova.get(), iova.get() + (len - 1), gather)?;
        Ok(bytes)
    }

    /// Unlinks the empty tables whose span meets `[first, last]`; returns how many.
    fn reclaim_range(&self, first: u64, last: u64, gather: &mut Gather) -> Result<usize, Error> {
        let top = self.geo().top_level();
        self.reclaim_level(self.root_table(), top, (first, last), gather)
    }

    /// Reclaims below `t` (at `level`, spanning from IOVA 0) inside the inclusive `range`:
    /// unlinks every table under `t` that is empty once the tables under it are reclaimed, and
    /// returns how many it unlinked.
    ///
    /// Depth first without recursion (one frame however deep the tables: a kernel stack): a
    /// table is unlinked, and handed to `gather`, once the walk of it is done and found it
    /// empty, after every table under it.
    fn reclaim_level(
        &self,
        t: Table,
        level: u32,
        range: (u64, u64),
        gather: &mut Gather,
    ) -> Result<usize, Error> {
        /// A table being walked: its first IOVA, the next slot, the entry that links it,
        /// whether it is empty so far.
        #[derive(Clone, Copy)]
        struct Open {
            t: Table,
            base: u64,
            next: usize,
            link: u64,
            empty: bool,
        }
        let mut path = [Open {
            t,
            base: 0,
            next: 0,
            link: 0,
            empty: true,
        }; WALK_LEVELS];
        let (mut depth, mut count) = (0usize, 0usize);
        loop {
            let at = level - depth as u32;
            let shift = self.geo().level_shift(at);
            let open = &mut path[open_at(depth)];
            if open.next < 1usize << self.geo().level_bits(at) {
                let idx = open.next;
                open.next += 1;
                // SAFETY: `idx` is below the table's entry count.
                let raw = unsafe { open.t.slot(idx) }.load(Ordering::Acquire);
                if !self.format.is_present(raw) {
                    continue;
                }
                let iova = open.base + ((idx as u64) << shift);
                let outside = iova > range.1 || iova + ((1u64 << shift) - 1) < range.0;
                if at == 0 || !self.format.is_table(at, raw) || outside {
                    open.empty = false;
                    continue;
                }
                let child = self.child(raw)?;
                depth += 1;
                let Some(below) = path.get_mut(depth) else {
                    return Err(Self::too_deep(level));
                };
                *below = Open {
                    t: child,
                    base: iova,
                    next: 0,
                    link: raw,
                    empty: true,
                };
                continue;
            }
            let done = *open;
            if depth == 0 {
                return Ok(count);
            }
            // Back in the parent, whose last slot read links the table just walked.
            depth -= 1;
            let parent = &mut path[open_at(depth)];
            if done.empty {
                let up_shift = self.geo().level_shift(at + 1);
                self.store_synced(parent.t, parent.next - 1, 0);
                gather.add_table_change(done.base, 1 << up_shift);
                let pa = self.format.table_address(done.link);
                gather.add_freed(Page { pa, va: done.t.0 }, self.geo().granule_log2);
                count += 1;
            } else {
                parent.empty = false;
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // teardown

    /// Unlinks nothing but hands every page of the table, root included, to `gather`, which
    /// records an invalidation of the whole input range. Call it once no context, PASID entry,
    /// STE or CD points at the table any more; release the gather after the invalidation.
    ///
    /// # Errors
    /// [`Error::UnknownTable`] for a corrupt table (the pages found so far are in `gather`);
    /// [`Error::GatherOfAnotherTable`] if another table's calls filled `gather`: nothing is
    /// in it then, and the table's pages stay allocated (leaked: a gather flushed for the
    /// other table would have freed them under that table's invalidation).
    pub fn destroy(mut self, gather: &mut Gather) -> Result<(), Error> {
        // SAFETY: `self` is consumed: nothing uses the table afterwards.
        unsafe { self.destroy_in_place(gather) }
    }

    /// As [`destroy`](Self::destroy), for a table that is part of a larger value its owner
    /// does not move (a kernel stack holds no copy of it).
    ///
    /// # Errors
    /// As [`destroy`](Self::destroy).
    ///
    /// # Safety
    /// The table is not used again, except to be dropped: its pages are in `gather`.
    pub(crate) unsafe fn destroy_in_place(&mut self, gather: &mut Gather) -> Result<(), Error> {
        self.claim_gather(gather)?;
        let g = *self.geo();
        gather.add_everything(g.ias);
        let root = self.root_table();
        let top = g.top_level();
        if top > 0 {
            for idx in 0..1usize << g.level_bits(top) {
                // SAFETY: `idx` is below the root's entry count.
                let e = unsafe { root.slot(idx) }.load(Ordering::Acquire);
                if self.format.is_present(e) && self.format.is_table(top, e) {
                    self.reap(self.child(e)?, top - 1, e, gather)?;
                }
            }
        }
        gather.add_freed(self.root, g.root_size_log2());
        Ok(())
    }
}

/// What a map writes into a stretch of one table: leaves at `level`, entry `first` mapping `pa`
/// (entry `first + i` mapping `pa + (i << level_shift)`), with `prot`, as runs of
/// `1 << run_log2` leaves aligned to the table if `run_log2 > 0`, written clean if dirty
/// tracking is on (`tracking`, read once per call: switching it must not race maps).
#[derive(Clone, Copy)]
pub(super) struct Leaves {
    pub(super) level: u32,
    pub(super) first: usize,
    pub(super) pa: u64,
    pub(super) prot: Prot,
    pub(super) run_log2: u32,
    pub(super) tracking: bool,
}

/// [`Error::GatherOfAnotherTable`] for `gather`, which another table's calls filled. Cold and
/// out of line: the hot paths keep one test and branch.
#[cold]
#[inline(never)]
fn gather_of_another_table(gather: &Gather) -> Error {
    Error::GatherOfAnotherTable {
        root: (gather.owner() & !1) as u64,
    }
}

/// The leaf loop of every map path: writes entries `first + from .. first + to` of the live
/// table `t` as `leaves` describes, one 64-bit atomic store each; the caller syncs them.
///
/// The leaf bits that `prot` and the format's configuration decide are worked out once per
/// call ([`Format::leaf_template`]), each leaf adds its address
/// ([`Format::leaf_from_template`]): the compiler cannot hoist them itself, since every store
/// into table memory might, for all it knows, change the format's configuration (callgrind, a
/// one-call map of 256 x 4K: VT-d 6,450 -> 3,395 instructions, Arm stage 2 11,892 -> 5,518;
/// 256 x 2M: 6,421 -> 3,372 and 21,144 -> 7,396).
#[inline(always)]
pub(super) fn store_leaves<F: Format>(
    format: &F,
    t: Table,
    leaves: &Leaves,
    from: usize,
    to: usize,
) {
    let Leaves {
        level,
        first,
        pa,
        prot,
        run_log2,
        tracking,
    } = *leaves;
    if from >= to {
        // The template costs a whole leaf encoding: not for an empty stretch (the ends of a
        // map written as runs are often empty).
        return;
    }
    let shift = format.geometry().level_shift(level);
    let template = format.leaf_template(level, run_log2, prot);
    // The address step is decided once per stretch, and each form gets a loop of its own: the
    // compiler cannot hoist a test of the format's configuration out of the loop (each store
    // might change it, for all it knows).
    let step = 1u64 << shift;
    // Wraps only past the last page, at the top of a 64-bit output range.
    let from_pa = pa.wrapping_add((from as u64) << shift);
    // Dirty tracking is decided once too: a test per leaf kept the compiler from unrolling.
    let from_template =
        |leaf_pa: u64| format.leaf_from_template(template, level, run_log2, PhysAddr::new(leaf_pa));
    match (format.leaf_address_in_place(level, run_log2), tracking) {
        // Where the template has no bit that an address of the stretch may have, `template |
        // pa` is `template + pa`: each leaf is the one before plus the page size, two
        // instructions a leaf instead of three (issue 18, goal 2). Not worth its test for one
        // leaf (a one-page map: the count is a constant there).
        (true, false)
            if to - from > 1 && template & address_bits(from_pa, to - from, step) == 0 =>
        {
            store_each(t, first, from, to, template | from_pa, step, |leaf| leaf)
        }
        (true, false) => store_each(t, first, from, to, from_pa, step, |leaf_pa| {
            template | leaf_pa
        }),
        (true, true) => store_each(t, first, from, to, from_pa, step, |leaf_pa| {
            format.leaf_clear_dirty(template | leaf_pa)
        }),
        (false, false) => store_each(t, first, from, to, from_pa, step, from_template),
        (false, true) => store_each(t, first, from, to, from_pa, step, |leaf_pa| {
            format.leaf_clear_dirty(from_template(leaf_pa))
        }),
    }
}

/// Whether every entry of `e` is present, presence being `raw & mask != 0`
/// ([`Format::present_mask`]): first whether all have the mask's lowest bit (the AND of the
/// entries: the whole answer for a one-bit mask, and VT-d's read-only and read-write leaves
/// have R), else the OR of `(raw & mask) - 1`, whose top bit is set exactly for an entry
/// without a bit of the mask (for a mask without bit 63).
#[inline(always)]
fn all_present(e: [u64; 4], mask: u64) -> bool {
    let lowest = mask & mask.wrapping_neg();
    if e[0] & e[1] & e[2] & e[3] & lowest != 0 {
        true
    } else if mask == lowest {
        false
    } else if mask >> 63 == 0 {
        let absent = |raw: u64| (raw & mask).wrapping_sub(1);
        (absent(e[0]) | absent(e[1]) | absent(e[2]) | absent(e[3])) >> 63 == 0
    } else {
        e.iter().all(|&raw| raw & mask != 0)
    }
}

/// The OR of entries `first .. first + count` of the table `t` (`count` a multiple of 8), each
/// read once with the effect of an acquire load: the emptiness test of `first_present`.
///
/// # Safety
/// `t` is a live table page, `count` is a multiple of 8 and `first + count` is at most its
/// entry count (every block reads eight entries: any other `count` reads past the range).
#[inline(always)]
unsafe fn or_of_eights(t: Table, first: usize, count: usize) -> u64 {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        // SAFETY: the caller's contract.
        unsafe { or_of_eights_x86(t, first, count) }
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    {
        // SAFETY: the caller's contract.
        unsafe { or_of_eights_portable(t, first, count) }
    }
}

/// [`or_of_eights`] with atomic loads: every target but hosted x86-64, and the model checkers
/// (loom, Miri), which therefore check this form; `asm_reads_match_the_portable_loops` checks
/// the x86-64 form against it.
///
/// # Safety
/// As [`or_of_eights`].
#[cfg(any(test, not(all(target_arch = "x86_64", not(loom), not(miri)))))]
#[inline(always)]
unsafe fn or_of_eights_portable(t: Table, first: usize, count: usize) -> u64 {
    // SAFETY: the caller's contract.
    let load = |i: usize| unsafe { t.slot(first + i) }.load(Ordering::Acquire);
    let (mut acc, mut i) = (0u64, 0);
    while i < count {
        let low = load(i) | load(i + 1) | load(i + 2) | load(i + 3);
        acc |= low | (load(i + 4) | load(i + 5) | load(i + 6) | load(i + 7));
        i += 8;
    }
    acc
}

/// [`or_of_eights`] on x86-64: each entry is the memory operand of an `OR` (issue 18, goal
/// 2). The compiler does not fold an atomic load into the instruction that uses it, so the
/// portable loop is a `MOV` and an `OR` per entry (19 instructions per eight with the loop's,
/// against 11 here). An aligned 8-byte load is single-copy atomic on x86-64 and every load
/// has acquire semantics there (it is the `MOV` an `Ordering::Acquire` load compiles to), so
/// each operand is read as the atomic load it replaces; the `asm!` blocks are not `readonly`,
/// so the compiler moves no memory access across them either. Four accumulators: the chain of
/// dependent `OR`s is a quarter of the loads.
///
/// # Safety
/// As [`or_of_eights`].
#[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
#[inline(always)]
unsafe fn or_of_eights_x86(t: Table, first: usize, count: usize) -> u64 {
    // SAFETY: `first + count` is at most the entry count (the caller's contract).
    let mut p = unsafe { t.entry_ptr(first) }
        .as_ptr()
        .cast::<u64>()
        .cast_const();
    let end = p.wrapping_add(count);
    let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
    while p < end {
        // SAFETY: `p .. p + 8` are entries of the live, 8-byte aligned table `t` (the caller's
        // contract); the block only reads them.
        unsafe {
            core::arch::asm!(
                "or {a}, qword ptr [{p}]",
                "or {b}, qword ptr [{p} + 8]",
                "or {c}, qword ptr [{p} + 16]",
                "or {d}, qword ptr [{p} + 24]",
                "or {a}, qword ptr [{p} + 32]",
                "or {b}, qword ptr [{p} + 40]",
                "or {c}, qword ptr [{p} + 48]",
                "or {d}, qword ptr [{p} + 56]",
                p = in(reg) p,
                a = inout(reg) a,
                b = inout(reg) b,
                c = inout(reg) c,
                d = inout(reg) d,
                options(nostack),
            );
        }
        p = p.wrapping_add(8);
    }
    (a | b) | (c | d)
}

/// The AND of entries `first .. first + 8` of the table `t`, each read once with the effect
/// of an acquire load: `clear_fours`' test of eight leaves.
///
/// # Safety
/// `t` is a live table page and `first + 8` is at most its entry count.
#[inline(always)]
unsafe fn and_of_eight(t: Table, first: usize) -> u64 {
    #[cfg(all(target_arch = "x86_64", not(loom), not(miri)))]
    {
        // SAFETY: `first + 8` is at most the entry count (the caller's contract).
        let p = unsafe { t.entry_ptr(first) }
            .as_ptr()
            .cast::<u64>()
            .cast_const();
        let all: u64;
        // SAFETY: `p .. p + 8` are entries of the live, 8-byte aligned table `t`; the block
        // only reads them, each as the atomic load it replaces (see `or_of_eights_x86`).
        unsafe {
            core::arch::asm!(
                "mov {all}, qword ptr [{p}]",
                "and {all}, qword ptr [{p} + 8]",
                "and {all}, qword ptr [{p} + 16]",
                "and {all}, qword ptr [{p} + 24]",
                "and {all}, qword ptr [{p} + 32]",
                "and {all}, qword ptr [{p} + 40]",
                "and {all}, qword ptr [{p} + 48]",
                "and {all}, qword ptr [{p} + 56]",
                p = in(reg) p,
                all = out(reg) all,
                options(nostack),
            );
        }
        all
    }
    #[cfg(not(all(target_arch = "x86_64", not(loom), not(miri))))]
    {
        // SAFETY: the caller's contract.
        unsafe { and_of_eight_portable(t, first) }
    }
}

/// [`and_of_eight`] with atomic loads (as [`or_of_eights_portable`]).
///
/// # Safety
/// As [`and_of_eight`].
#[cfg(any(test, not(all(target_arch = "x86_64", not(loom), not(miri)))))]
#[inline(always)]
unsafe fn and_of_eight_portable(t: Table, first: usize) -> u64 {
    // SAFETY: the caller's contract.
    let load = |i: usize| unsafe { t.slot(first + i) }.load(Ordering::Acquire);
    (load(0) & load(1) & load(2) & load(3)) & (load(4) & load(5) & load(6) & load(7))
}

/// The x86-64 `asm!` reads give the portable loops' answers: every `first` and every count of
/// eights up to the longest that fits, over tables of one bit at every position,
/// of random values, and of random values with a few empty entries.
#[cfg(all(test, target_arch = "x86_64", not(loom), not(miri)))]
#[test]
fn asm_reads_match_the_portable_loops() {
    #[repr(C, align(4096))]
    struct Page([u64; 512]);
    let mut rng = crate::aligned_blocks::XorShift(0x2545_F491_4F6C_DD1D);
    let mut page = Page([0; 512]);
    let mut fills: std::vec::Vec<std::vec::Vec<u64>> = std::vec::Vec::new();
    for bit in 0..64 {
        for at in [0usize, 7, 8, 255, 511] {
            let mut v = std::vec![0u64; 512];
            v[at] = 1 << bit;
            fills.push(v);
        }
    }
    for holes in [0u64, 3] {
        let v = (0..512)
            .map(|_| {
                let r = rng.next();
                if holes != 0 && r % 7 < holes {
                    0
                } else {
                    rng.next()
                }
            })
            .collect();
        fills.push(v);
    }
    for fill in &fills {
        page.0.copy_from_slice(fill);
        let t = Table::at(NonNull::from(&mut page).cast());
        for first in 0..512 {
            // Short counts, and the longest that fits (to the table's end or 7 short of it).
            let longest = (512 - first) & !7;
            for count in [0, 8, 16, 24, 64, longest]
                .into_iter()
                .filter(|&c| c <= longest)
            {
                // SAFETY: `first + count <= 512`, `count` a multiple of 8: in the page.
                let (asm, portable) = unsafe {
                    (
                        or_of_eights(t, first, count),
                        or_of_eights_portable(t, first, count),
                    )
                };
                assert_eq!(asm, portable, "OR of {count} entries from {first}");
            }
            if first + 8 <= 512 {
                // SAFETY: `first + 8 <= 512`: in the page.
                let (asm, portable) =
                    unsafe { (and_of_eight(t, first), and_of_eight_portable(t, first)) };
                assert_eq!(asm, portable, "AND of 8 entries from {first}");
            }
        }
    }
}

/// The bits that any of the `count` (at least 1) addresses from `from_pa` by `step` (a power
/// of two) may have set: `from_pa`'s below `step` (the same in every address; none for the
/// aligned addresses the engine maps), and from `step`'s up to the last address's highest
/// (every bit if the last one wraps). A template with none of them gives
/// `template | pa == template + pa` for each.
#[inline(always)]
pub(super) fn address_bits(from_pa: u64, count: usize, step: u64) -> u64 {
    let below_step = step.wrapping_sub(1);
    let last = (count as u64)
        .wrapping_sub(1)
        .checked_mul(step)
        .and_then(|span| from_pa.checked_add(span));
    match last {
        Some(last) => {
            let up_to_last = u64::MAX.checked_shr(last.leading_zeros()).unwrap_or(0);
            (up_to_last & !below_step) | (from_pa & below_step)
        }
        None => u64::MAX,
    }
}

/// Stores `leaf(pa)` into entry `first + i` of the live table `t` for `i` in `from..to`, `pa`
/// going from `from_pa` by `step` per entry: one 64-bit atomic store each (the loop of
/// [`store_leaves`]). Nothing for `from >= to`.
#[inline(always)]
fn store_each(
    t: Table,
    first: usize,
    from: usize,
    to: usize,
    from_pa: u64,
    step: u64,
    leaf: impl Fn(u64) -> u64,
) {
    // SAFETY: callers pass entries of the live table `t` (see `plan_leaves`).
    let store = |i: usize, pa: u64| unsafe { t.slot(first + i) }.store(leaf(pa), Ordering::Relaxed);
    let mut pa = from_pa;
    let mut i = from;
    // Four entries per step, in entry order: the compiler unrolled this loop for some
    // stretches and not others (Arm's level-1 blocks: 7 instructions per entry against VT-d's
    // 3.75, callgrind).
    // Saturating: `to - from` wrapping for `from > to` would make `fours` an index past the
    // table (today's caller returns before that, but the stores are unchecked).
    let fours = from + (to.saturating_sub(from) & !3);
    while i < fours {
        store(i, pa);
        store(i + 1, pa.wrapping_add(step));
        store(i + 2, pa.wrapping_add(2 * step));
        store(i + 3, pa.wrapping_add(3 * step));
        pa = pa.wrapping_add(4 * step);
        i += 4;
    }
    while i < to {
        store(i, pa);
        pa = pa.wrapping_add(step);
        i += 1;
    }
}
