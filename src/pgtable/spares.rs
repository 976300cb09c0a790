//! Pages reserved before an operation starts, so that it cannot fail half-way for want of memory.
//!
//! Reserved pages are not reachable by hardware until the engine links one, so they are chained
//! through their first word and returned directly when unused.

use super::sync::{AtomicU64, Ordering};

use super::Error;
use crate::mem::{Page, PageAllocator, PhysAddr};

pub(crate) struct Spares {
    /// Physical address of the first spare plus one (0 = none), chained through first words.
    head: u64,
    size_log2: u32,
}

impl Spares {
    pub(crate) const fn none(size_log2: u32) -> Self {
        Self { head: 0, size_log2 }
    }

    /// Reserves `count` zeroed pages whose addresses fit in `oas` bits, or returns every page
    /// taken so far and fails.
    pub(crate) fn reserve<A: PageAllocator>(
        alloc: &A,
        count: usize,
        size_log2: u32,
        oas: u32,
    ) -> Result<Self, Error> {
        let mut s = Self::none(size_log2);
        for _ in 0..count {
            let taken = alloc.alloc(size_log2).ok_or(Error::NoMemory);
            match taken.and_then(|page| reachable(alloc, page, size_log2, oas)) {
                Ok(page) => s.put(page),
                Err(e) => {
                    s.release(alloc);
                    return Err(e);
                }
            }
        }
        Ok(s)
    }

    pub(crate) fn put(&mut self, page: Page) {
        // SAFETY: the page is ours alone (never linked into a table); first word is aligned.
        unsafe { (*page.va.as_ptr().cast::<AtomicU64>()).store(self.head, Ordering::Relaxed) };
        self.head = page.pa.get() + 1;
    }

    /// A zeroed page, or `None` when the reserve is exhausted.
    pub(crate) fn take<A: PageAllocator>(&mut self, alloc: &A) -> Option<Page> {
        let pa = PhysAddr::new(self.head.checked_sub(1)?);
        let va = alloc.phys_to_virt(pa)?;
        let word = va.as_ptr().cast::<AtomicU64>();
        // SAFETY: a reserved page we own; restoring its first word to zero makes it the zeroed
        // page the allocator handed out.
        self.head = unsafe { (*word).swap(0, Ordering::Relaxed) };
        Some(Page { pa, va })
    }

    /// Returns every unused page to the allocator.
    pub(crate) fn release<A: PageAllocator>(&mut self, alloc: &A) {
        while let Some(page) = self.take(alloc) {
            // SAFETY: the page came from `alloc.alloc(size_log2)` and was never visible to
            // hardware.
            unsafe { alloc.free(page, self.size_log2) };
        }
    }
}

/// `page` if a table there can be linked from an entry of a format with `oas` output bits; else
/// the page goes back to `alloc` and the error names it.
///
/// An entry cannot encode a table address at or above `1 << oas`: VT-d treats those bits as
/// reserved, an Arm walker raises an address size fault, and the Arm 4 KiB / 16 KiB encoders
/// would silently drop bits 51:48 and link some other page.
pub(crate) fn reachable<A: PageAllocator>(
    alloc: &A,
    page: Page,
    size_log2: u32,
    oas: u32,
) -> Result<Page, Error> {
    let last = page.pa.checked_add((1u64 << size_log2) - 1);
    match last {
        Some(last) if last.fits_in(oas) => Ok(page),
        _ => {
            // SAFETY: the page came from `alloc.alloc(size_log2)` just now and was never linked.
            unsafe { alloc.free(page, size_log2) };
            Err(Error::TableOutOfRange { pa: page.pa, oas })
        }
    }
}
