//! `Gather`: what an unmap must tell the hardware, and the pages it may free once told.
//!
//! An unmap records here every IOVA range it cleared, the page sizes involved, whether only
//! leaves changed, and the table pages it unlinked. A driver turns that into the fewest
//! invalidation commands, waits for their completion once, and only then calls
//! [`Gather::release`] (DESIGN.md invariant 1: no table page returns to the allocator before the
//! invalidation covering it has completed).
//!
//! Freed pages are chained through their own first 64-bit word, so the gather needs no memory
//! of its own however many pages it holds. The hardware may still walk such a page through a
//! stale walk cache until the invalidation completes; the link word is a page-aligned address
//! with a size code in bits 11:4 and bits 3:0 zero, which every supported format decodes as a
//! non-present entry, and the page was unlinked as part of an unmap of its whole span.

use super::sync::{AtomicU64, Ordering};

use super::Error;
use crate::mem::{Iova, Page, PageAllocator, PhysAddr};

/// How many disjoint IOVA ranges a gather keeps before it widens them into one covering range
/// (over-invalidation is always safe).
pub const GATHER_RANGES: usize = 4;

/// A half-open IOVA range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct IovaRange {
    /// First IOVA.
    pub start: Iova,
    /// One past the last IOVA.
    pub end: Iova,
}

impl IovaRange {
    /// Length in bytes (0 for a range whose end is below its start).
    pub const fn len(&self) -> u64 {
        self.end.get().saturating_sub(self.start.get())
    }

    /// Whether the range is empty.
    pub const fn is_empty(&self) -> bool {
        self.end.get() <= self.start.get()
    }
}

/// Proof that the invalidation covering a gather has completed.
///
/// The crate's drivers create it after their completion wait; an embedder that drives its own
/// hardware creates it with the unsafe [`InvalidationComplete::assume`].
#[derive(Debug)]
pub struct InvalidationComplete(());

impl InvalidationComplete {
    /// Asserts that the invalidation covering the gather about to be released has completed.
    ///
    /// # Safety
    ///
    /// The IOTLB and paging-structure caches of every unit that can walk the gather's table have
    /// been invalidated for every range the gather holds, and that invalidation has completed.
    pub const unsafe fn assume() -> Self {
        Self(())
    }
}

/// The invalidation and freed pages one or more unmaps produced.
#[derive(Debug)]
#[must_use = "a gather holds pending invalidations and freed pages: flush it, then release it"]
pub struct Gather {
    ranges: [IovaRange; GATHER_RANGES],
    nranges: usize,
    page_sizes: u64,
    /// A table changed (was unlinked, or its page freed), not only leaves. False when
    /// empty, so that an empty gather is all zeroes: arrays of them (an IOASID's pending
    /// invalidations) are then zero-filled in place, not copied through the stack.
    tables_changed: bool,
    /// First freed page and its size code, or 0.
    freed_head: u64,
    /// Virtual address of the last page of the chain (the first one added), whose link word
    /// ends the chain, or 0: so that [`Gather::absorb`] can append a chain without walking it.
    freed_tail: usize,
    freed: usize,
    /// The unit domain whose unmap or dirty read filled the gather (its root table's address), 0
    /// for none: a unit flushes and fills only its own domain's gather ([`Gather::claim`]).
    owner: usize,
}

impl Default for Gather {
    fn default() -> Self {
        Self::new()
    }
}

/// A freed page's link: its address with the size's log2 in bits 11:4 (bits 3:0 stay zero).
const fn link(pa: PhysAddr, size_log2: u32) -> u64 {
    pa.get() | (size_log2 as u64) << 4
}

const fn unlink(word: u64) -> (PhysAddr, u32) {
    (PhysAddr::new(word & !0xfff), ((word >> 4) & 0xff) as u32)
}

impl Gather {
    /// An empty gather.
    pub const fn new() -> Self {
        Self {
            ranges: [IovaRange {
                start: Iova::ZERO,
                end: Iova::ZERO,
            }; GATHER_RANGES],
            nranges: 0,
            page_sizes: 0,
            tables_changed: false,
            freed_head: 0,
            freed_tail: 0,
            freed: 0,
            owner: 0,
        }
    }

    /// Whether nothing needs invalidating and no page is held.
    pub const fn is_empty(&self) -> bool {
        self.nranges == 0 && self.freed == 0
    }

    /// The IOVA ranges to invalidate, disjoint, in the order they were first recorded.
    pub fn ranges(&self) -> &[IovaRange] {
        self.ranges.get(..self.nranges).unwrap_or(&[])
    }

    /// One range covering every recorded range, or `None` if there is none.
    pub fn span(&self) -> Option<IovaRange> {
        let r = self.ranges();
        let start = r.iter().map(|r| r.start).min()?;
        let end = r.iter().map(|r| r.end).max()?;
        Some(IovaRange { start, end })
    }

    /// Bit `n` set: a leaf of `1 << n` bytes was changed.
    ///
    /// A hint for invalidations that take a page size, not a bound on what a unit may still
    /// cache: of AMD-Vi v1's Next Level 7 pages (one translation of the run's size), an unmap
    /// that first looks after another CPU *finished* breaking the run finds stand-alone leaves
    /// and names only their size, while a TLB may hold the run until that CPU's invalidation
    /// completes. Invalidate AMD-Vi by address range (`INVALIDATE_IOMMU_PAGES` removes every
    /// cached translation overlapping the range), as this crate's driver does.
    pub const fn page_sizes(&self) -> u64 {
        self.page_sizes
    }

    /// Whether only leaf entries changed (no table was unlinked or split): invalidations may
    /// then spare the paging-structure caches (VT-d IH, Arm TLBI LEAF).
    pub const fn leaf_only(&self) -> bool {
        !self.tables_changed
    }

    /// Number of table pages held for freeing.
    pub const fn freed_pages(&self) -> usize {
        self.freed
    }

    /// Records that leaves of `1 << size_log2` bytes in `[start, start + len)` changed.
    #[inline]
    pub(crate) fn add_leaves(&mut self, start: u64, len: u64, size_log2: u32) {
        self.page_sizes |= 1u64.checked_shl(size_log2).unwrap_or(0);
        self.add_range(start, start.saturating_add(len));
    }

    /// Records that leaves of `1 << size_log2` bytes changed inside an already recorded range.
    #[inline]
    pub(crate) fn note_page_size(&mut self, size_log2: u32) {
        self.page_sizes |= 1u64.checked_shl(size_log2).unwrap_or(0);
    }

    /// Records that a non-leaf entry covering `[start, start + len)` changed.
    #[inline]
    pub(crate) fn add_table_change(&mut self, start: u64, len: u64) {
        self.tables_changed = true;
        self.add_range(start, start.saturating_add(len));
    }

    /// Records a change over every IOVA below `1 << ias` (the table is being destroyed).
    pub(crate) fn add_everything(&mut self, ias: u32) {
        self.tables_changed = true;
        self.add_range(0, 1u64.checked_shl(ias).unwrap_or(u64::MAX));
    }

    /// Records `[start, end)`. The first range of a gather (every one-call unmap's, most
    /// often its only one) and the extension of the newest one (a walk's next run) inline in
    /// the caller: the call of the general case and its register saves were about a tenth of
    /// the fixed part of an unmap of 256 pages (issue 18, goal 2).
    #[inline(always)]
    fn add_range(&mut self, start: u64, end: u64) {
        match self
            .nranges
            .checked_sub(1)
            .and_then(|i| self.ranges.get_mut(i))
        {
            None if self.nranges == 0 => {
                self.ranges[0] = IovaRange {
                    start: Iova::new(start),
                    end: Iova::new(end),
                };
                self.nranges = 1;
            }
            Some(last) if last.end.get() == start => last.end = Iova::new(end),
            _ => self.add_range_more(start, end),
        }
    }

    /// [`Self::add_range`] into a gather that holds ranges already.
    #[inline(never)]
    fn add_range_more(&mut self, start: u64, end: u64) {
        let n = self.nranges.min(GATHER_RANGES);
        // Extending the newest range is the common case: unmaps walk upwards.
        if let Some(last) = self.ranges[..n].last_mut() {
            if last.end.get() == start {
                last.end = Iova::new(end);
                return;
            }
        }
        for r in &mut self.ranges[..n] {
            if start <= r.end.get() && r.start.get() <= end {
                r.start = r.start.min(Iova::new(start));
                r.end = r.end.max(Iova::new(end));
                return;
            }
        }
        if n < GATHER_RANGES {
            self.ranges[n] = IovaRange {
                start: Iova::new(start),
                end: Iova::new(end),
            };
            self.nranges = n + 1;
        } else {
            let all = self.span().unwrap_or_default();
            self.ranges[0] = IovaRange {
                start: all.start.min(Iova::new(start)),
                end: all.end.max(Iova::new(end)),
            };
            self.nranges = 1;
        }
    }

    /// Adds the ranges `other` records (not its pages), keeping whether only leaves changed.
    pub(crate) fn add_ranges_of(&mut self, other: &Gather) {
        for r in other.ranges() {
            if !other.tables_changed {
                self.add_range(r.start.get(), r.end.get());
            } else {
                self.add_table_change(r.start.get(), r.len());
            }
        }
        self.page_sizes |= other.page_sizes;
    }

    /// Takes `page` (of `1 << size_log2` bytes), already unlinked from every table, for freeing
    /// after the invalidation.
    pub(crate) fn add_freed(&mut self, page: Page, size_log2: u32) {
        self.tables_changed = true;
        let word = page.va.as_ptr().cast::<AtomicU64>();
        // SAFETY: `page` is a live table page (aligned, at least 4 KiB) the engine just unlinked;
        // its first word is written atomically with a non-present encoding (module docs).
        unsafe { (*word).store(self.freed_head, Ordering::Relaxed) };
        if self.freed == 0 {
            self.freed_tail = word as usize;
        }
        self.freed_head = link(page.pa, size_log2);
        self.freed += 1;
    }

    /// Notes that unit domain `owner` (its root table's address) is filling the gather; `false`,
    /// nothing changed, if another domain's call filled what it holds. A unit calls it before
    /// its table's unmap or dirty read fills the gather, and [`Gather::flushable_by`] before a
    /// flush: flushed on another domain, the gather's ranges were invalidated in that
    /// domain's tag and its pages freed while the caches of the domain they came from could
    /// still lead to them (review of 2026-12-07, F2).
    pub(crate) fn claim(&mut self, owner: usize) -> bool {
        if !self.flushable_by(owner) {
            return false;
        }
        self.owner = owner;
        true
    }

    /// The owner [`Gather::claim`] recorded, 0 for none.
    pub(crate) fn owner(&self) -> usize {
        self.owner
    }

    /// Whether a flush of unit domain `owner` may take the gather: empty, filled by that
    /// domain's calls, or by none (the units' own gathers, such as a map's invalidation).
    pub(crate) fn flushable_by(&self, owner: usize) -> bool {
        self.owner == 0 || self.owner == owner || self.is_empty()
    }

    /// Moves everything `other` holds into this gather: its ranges (widened as usual), page
    /// sizes and held pages (the chains are spliced: no page is touched but `other`'s last).
    /// For a caller that keeps one gather of invalidations still to confirm (a flush failed)
    /// and adds a later one that failed too; both must belong to the same table (one unit,
    /// one domain). Infallible; `core::mem::take` the source to move out of a `&mut Gather`.
    /// Crate-only, as [`Gather::clear_ranges`]: a caller mixing two domains' gathers, or
    /// forgetting ranges, would have a flush free pages no invalidation covered.
    pub(crate) fn absorb(&mut self, other: Gather) {
        if self.is_empty() {
            self.owner = other.owner;
        }
        for r in other.ranges() {
            self.add_range(r.start.get(), r.end.get());
        }
        self.page_sizes |= other.page_sizes;
        self.tables_changed |= other.tables_changed;
        if other.freed == 0 {
            return;
        }
        if self.freed == 0 {
            self.freed_tail = other.freed_tail;
        } else {
            // SAFETY: `other.freed_tail` is the first word of the last page of `other`'s chain,
            // a page `other` holds (unlinked from every table, nobody else writes it); its
            // link word (0, the end) now continues into this gather's chain.
            unsafe {
                (*(other.freed_tail as *const AtomicU64)).store(self.freed_head, Ordering::Relaxed)
            };
        }
        self.freed_head = other.freed_head;
        self.freed += other.freed;
    }

    /// Returns every held page to `alloc` and empties the gather.
    ///
    /// # Errors
    /// [`Error::UnknownTable`] if `alloc` does not know a held page (it came from another
    /// allocator); the pages not yet returned are kept, so the call can be repeated with the
    /// right allocator.
    pub fn release<A: PageAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        _done: InvalidationComplete,
    ) -> Result<(), Error> {
        while self.freed_head != 0 {
            let (pa, size_log2) = unlink(self.freed_head);
            let va = alloc.phys_to_virt(pa).ok_or(Error::UnknownTable { pa })?;
            // SAFETY: `va` is the page's first word (a live page the allocator just mapped).
            let next = unsafe { (*va.as_ptr().cast::<AtomicU64>()).load(Ordering::Relaxed) };
            // SAFETY: the page came from `alloc` (phys_to_virt knows it), was unlinked by an
            // unmap, and `_done` proves the invalidation covering it completed.
            unsafe { alloc.free(Page { pa, va }, size_log2) };
            self.freed_head = next;
            self.freed -= 1;
        }
        self.freed_tail = 0;
        self.nranges = 0;
        self.page_sizes = 0;
        self.tables_changed = false;
        self.owner = 0;
        Ok(())
    }

    /// Forgets the recorded ranges after the caller invalidated them, keeping held pages.
    /// Crate-only: a flush of a gather whose ranges were forgotten would free its pages with
    /// no invalidation (review of 2026-12-07, F2).
    pub(crate) fn clear_ranges(&mut self) {
        self.nranges = 0;
        self.page_sizes = 0;
        self.tables_changed = self.freed != 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adjacent_ranges_merge_and_overflow_widens() {
        let mut g = Gather::new();
        g.add_leaves(0x1000, 0x1000, 12);
        g.add_leaves(0x2000, 0x1000, 12);
        assert_eq!(
            g.ranges(),
            &[IovaRange {
                start: Iova::new(0x1000),
                end: Iova::new(0x3000)
            }]
        );
        for i in 0..GATHER_RANGES as u64 {
            g.add_leaves(0x10_0000 * (i + 1), 0x1000, 12);
        }
        assert_eq!(g.ranges().len(), 1);
        assert_eq!(g.span().unwrap().start, Iova::new(0x1000));
        assert_eq!(g.span().unwrap().end, Iova::new(0x40_1000));
        assert!(g.leaf_only());
        assert_eq!(g.page_sizes(), 1 << 12);
        g.add_table_change(0, 0x20_0000);
        assert!(!g.leaf_only());
    }

    #[test]
    fn absorb_keeps_every_range_and_page_of_both() {
        use crate::pgtable::testutil::test_alloc;
        let alloc = test_alloc();
        let take = |g: &mut Gather, n: usize| {
            for _ in 0..n {
                g.add_freed(alloc.alloc(12).unwrap(), 12);
            }
        };
        for (a_pages, b_pages) in [(0, 0), (2, 0), (0, 3), (2, 3), (1, 1)] {
            let (mut a, mut b) = (Gather::new(), Gather::new());
            a.add_leaves(0x1000, 0x1000, 12);
            take(&mut a, a_pages);
            b.add_leaves(0x20_0000, 0x20_0000, 21);
            take(&mut b, b_pages);
            a.absorb(b);
            assert_eq!(a.ranges().len(), 2);
            assert_eq!(a.page_sizes(), 1 << 12 | 1 << 21);
            assert_eq!(a.freed_pages(), a_pages + b_pages);
            assert_eq!(a.leaf_only(), a_pages + b_pages == 0);
            let live = alloc.live_pages().len();
            // SAFETY: nothing walks these pages.
            a.release(&alloc, unsafe { InvalidationComplete::assume() })
                .unwrap();
            assert_eq!(alloc.live_pages().len(), live - a_pages - b_pages);
            assert!(a.is_empty());
            // The emptied gather takes pages again and chains them from scratch.
            take(&mut a, 1);
            let mut c = Gather::new();
            take(&mut c, 2);
            a.absorb(c);
            // SAFETY: nothing walks these pages.
            a.release(&alloc, unsafe { InvalidationComplete::assume() })
                .unwrap();
            assert_eq!(alloc.live_pages().len(), live - a_pages - b_pages);
        }
        assert_eq!(alloc.bad_frees(), []);
    }

    #[test]
    fn link_word_is_not_present_in_any_format() {
        let w = link(PhysAddr::new(0xdead_b000), 20);
        assert_eq!(w & 0xf, 0);
        assert_eq!(unlink(w), (PhysAddr::new(0xdead_b000), 20));
    }
}
