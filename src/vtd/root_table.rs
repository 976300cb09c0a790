//! The root table a unit owns: Intel VT-d specification rev. 4.1, §3.4 (root and
//! context tables in legacy and scalable mode), §9.1 Root Entry and §9.2 Scalable-Mode Root
//! Entry.
//!
//! One 4 KiB page of 256 entries, indexed by bus. A legacy entry points at one context table
//! for the bus's 256 device/functions; a scalable-mode entry has two halves, each with its own
//! present bit, pointing at the context tables of devfn 0-127 (lower) and 128-255 (upper). Each
//! pointer is therefore one 64-bit word, published with one store once the context table it
//! points at is zeroed (and cleaned for a non-coherent walker).
//!
//! Context tables are created on first use and never freed while the unit lives: an entry may
//! be cached, and freeing would need a global invalidation for no gain (at most 512 pages).

use core::ptr::NonNull;

use super::context_table::ContextTable;
use super::live_entry::LiveEntry;
use super::root_entry::{RootEntry, ScalableRootEntry, CTP, ROOT_TABLE_ENTRIES};
use super::Error;
use crate::mem::{
    alloc_below, Page, PageAllocator, PhysAddr, Unplaced, WalkerCoherency, PAGE_SHIFT_4K,
};

/// Which context table of a bus: legacy (one) or a scalable-mode half.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootSlot {
    /// Legacy root entry, word 0.
    Legacy,
    /// Scalable-mode lower half (`LP`/`LCTP`, word 0): devfn 0-127.
    ScalableLower,
    /// Scalable-mode upper half (`UP`/`UCTP`, word 1): devfn 128-255.
    ScalableUpper,
}

impl RootSlot {
    /// The scalable-mode half that holds `devfn`.
    pub const fn for_devfn(devfn: u8) -> Self {
        if devfn & 0x80 == 0 {
            Self::ScalableLower
        } else {
            Self::ScalableUpper
        }
    }

    const fn word(self) -> usize {
        match self {
            Self::Legacy | Self::ScalableLower => 0,
            Self::ScalableUpper => 1,
        }
    }

    /// The word that points at `table`.
    fn encode(self, table: PhysAddr) -> Result<u64, Error> {
        Ok(match self {
            Self::Legacy => RootEntry::new(table)?.lo,
            Self::ScalableLower => ScalableRootEntry::new(Some(table), None)?.lo,
            Self::ScalableUpper => ScalableRootEntry::new(None, Some(table))?.hi,
        })
    }
}

/// The unit's root table page.
#[derive(Debug)]
pub struct RootTable {
    page: Page,
}

// SAFETY: the page is owned by the table; its entries are only accessed through atomics.
unsafe impl Send for RootTable {}
// SAFETY: as above: shared access goes through 64-bit atomics (`LiveEntry`).
unsafe impl Sync for RootTable {}

impl RootTable {
    /// A table that owns no page: a stand-in for a constant initialiser, overwritten with a
    /// real table before anything reads it (`VtdUnit::init_in_place`). Never use or release it.
    pub(crate) const PLACEHOLDER: Self = Self {
        page: Page {
            pa: PhysAddr::new(0),
            va: NonNull::dangling(),
        },
    };

    /// Allocates an empty (all non-present) root table below `2^haw`.
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::TableOutOfRange`].
    pub fn new<A: PageAllocator + ?Sized>(
        alloc: &A,
        coherency: WalkerCoherency,
        haw: u32,
    ) -> Result<Self, Error> {
        let page = table_page(alloc, PAGE_SHIFT_4K, haw, "root table")?;
        coherency.sync(alloc, page.va, 1 << PAGE_SHIFT_4K);
        Ok(Self { page })
    }

    /// The table's physical address (for `RTADDR_REG`).
    pub const fn pa(&self) -> PhysAddr {
        self.page.pa
    }

    /// The pointer word of `bus` for `slot`.
    fn word(&self, bus: u8, slot: RootSlot) -> LiveEntry<'_> {
        const _: () = assert!(ROOT_TABLE_ENTRIES == 256);
        let offset = usize::from(bus) * 16 + slot.word() * 8;
        // SAFETY: `offset + 8 <= 4096`: the word lies inside the live, 4 KiB-aligned root page
        // this table owns; table memory is only accessed through atomics.
        unsafe { LiveEntry::from_ptr(self.page.va.add(offset), 1) }
    }

    /// The context table `slot` of `bus` points at; with `create`, a missing one is allocated
    /// and published (below `2^haw`). `None` when missing and not created.
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::TableOutOfRange`]; [`Error::UnexpectedState`] if a present
    /// entry points at memory the allocator does not know.
    #[allow(clippy::too_many_arguments)] // each is one fact of the lookup; no natural group
    pub fn context_table<A: PageAllocator + ?Sized>(
        &self,
        bus: u8,
        slot: RootSlot,
        alloc: &A,
        coherency: WalkerCoherency,
        haw: u32,
        create: bool,
    ) -> Result<Option<ContextTable<'_>>, Error> {
        let word = self.word(bus, slot);
        let raw = word.word(0).unwrap_or(0);
        if raw & 1 != 0 {
            let pa = PhysAddr::new(raw & CTP.mask());
            let va = resolve(alloc, pa, "root entry")?;
            return Ok(Some(ContextTable::new(va, slot != RootSlot::Legacy)));
        }
        if !create {
            return Ok(None);
        }
        let page = table_page(alloc, PAGE_SHIFT_4K, haw, "context table")?;
        coherency.sync(alloc, page.va, 1 << PAGE_SHIFT_4K);
        let published = slot
            .encode(page.pa)
            .and_then(|w| word.publish(&[w], coherency, alloc));
        if let Err(e) = published {
            // SAFETY: the page came from `alloc` just now and was never published.
            unsafe { alloc.free(page, PAGE_SHIFT_4K) };
            return Err(e);
        }
        Ok(Some(ContextTable::new(page.va, slot != RootSlot::Legacy)))
    }
}

impl RootTable {
    /// Gives every context table, then the root table, back to `alloc`, calling `each` on every
    /// context table first (to free what its entries point at).
    ///
    /// # Errors
    /// [`Error::UnexpectedState`] for a root entry pointing at memory `alloc` does not know (the
    /// pages not yet freed are leaked).
    ///
    /// # Safety
    /// Translation is off and no invalidation is pending: hardware walks none of these tables,
    /// and `alloc` is the allocator they came from.
    pub unsafe fn release<A: PageAllocator + ?Sized>(
        self,
        alloc: &A,
        scalable: bool,
        mut each: impl FnMut(ContextTable<'_>) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let slots: &[RootSlot] = if scalable {
            &[RootSlot::ScalableLower, RootSlot::ScalableUpper]
        } else {
            &[RootSlot::Legacy]
        };
        for bus in 0..=u8::MAX {
            for &slot in slots {
                let raw = self.word(bus, slot).word(0).unwrap_or(0);
                if raw & 1 == 0 {
                    continue;
                }
                let pa = PhysAddr::new(raw & CTP.mask());
                let va = resolve(alloc, pa, "root entry")?;
                each(ContextTable::new(va, scalable))?;
                // SAFETY: the caller guarantees nothing walks the table; it came from `alloc`
                // as one 4 KiB page (`context_table`).
                unsafe { alloc.free(Page { pa, va }, PAGE_SHIFT_4K) };
            }
        }
        // SAFETY: as above, for the root page allocated in `new`.
        unsafe { alloc.free(self.page, PAGE_SHIFT_4K) };
        Ok(())
    }
}

/// A zeroed page of `2^size_log2` bytes for `table`, a structure the unit reads, below
/// `2^haw`.
///
/// # Errors
/// [`Error::NoMemory`], [`Error::TableOutOfRange`] (the page was given back).
pub(crate) fn table_page<A: PageAllocator + ?Sized>(
    alloc: &A,
    size_log2: u32,
    haw: u32,
    table: &'static str,
) -> Result<Page, Error> {
    alloc_below(alloc, size_log2, haw).map_err(|e| match e {
        Unplaced::NoMemory => Error::NoMemory,
        Unplaced::Beyond(pa) => Error::TableOutOfRange { table, pa, haw },
    })
}

/// The CPU address of a table the hardware structures point at.
pub(crate) fn resolve<A: PageAllocator + ?Sized>(
    alloc: &A,
    pa: PhysAddr,
    register: &'static str,
) -> Result<NonNull<u8>, Error> {
    alloc.phys_to_virt(pa).ok_or(Error::UnexpectedState {
        register,
        value: pa.get(),
    })
}
