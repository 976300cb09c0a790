//! Addresses and the memory the embedder lends to the engine.
//!
//! The crate owns no memory. Every page that hardware walks (page tables, context and PASID tables,
//! stream tables, queues) comes from a [`PageAllocator`] the embedder implements, and every write to
//! such memory is reported to the allocator's cache-maintenance hook
//! ([`PageAllocator::sync_for_device`]) so that walkers that do not snoop the CPU caches (VT-d
//! `ECAP.C = 0`, SMMUv3 `IDR0.COHACC = 0`) see it.
//!
//! Addresses are newtypes with checked arithmetic: nothing here wraps silently.

use core::fmt;
use core::ptr::NonNull;

/// Log2 of the 4 KiB base page, the smallest page and table size every supported format uses.
pub const PAGE_SHIFT_4K: u32 = 12;

macro_rules! address_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        #[repr(transparent)]
        pub struct $name(u64);

        impl $name {
            /// The address zero.
            pub const ZERO: Self = Self(0);

            /// Wraps a raw address.
            #[inline]
            pub const fn new(raw: u64) -> Self {
                Self(raw)
            }

            /// The address, or `None` if it does not fit in `bits` bits (an address width:
            /// a unit's output size, a table's input size).
            #[inline]
            pub const fn try_new(raw: u64, bits: u32) -> Option<Self> {
                if Self(raw).fits_in(bits) {
                    Some(Self(raw))
                } else {
                    None
                }
            }

            /// The raw address.
            #[inline]
            pub const fn get(self) -> u64 {
                self.0
            }

            /// `self + bytes`, or `None` on overflow.
            #[inline]
            pub const fn checked_add(self, bytes: u64) -> Option<Self> {
                match self.0.checked_add(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// `self - bytes`, or `None` on underflow.
            #[inline]
            pub const fn checked_sub(self, bytes: u64) -> Option<Self> {
                match self.0.checked_sub(bytes) {
                    Some(v) => Some(Self(v)),
                    None => None,
                }
            }

            /// Whether the address is a multiple of `1 << log2`. `log2 >= 64` is only true for zero.
            #[inline]
            pub const fn is_aligned(self, log2: u32) -> bool {
                log2 >= 64 && self.0 == 0 || log2 < 64 && self.0 & ((1u64 << log2) - 1) == 0
            }

            /// Whether the address fits in `bits` bits (`bits >= 64` always fits).
            #[inline]
            pub const fn fits_in(self, bits: u32) -> bool {
                bits >= 64 || self.0 >> bits == 0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({:#x})"), self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }

        impl fmt::LowerHex for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::LowerHex::fmt(&self.0, f)
            }
        }
    };
}

address_type!(
    /// A physical (output) address: what the IOMMU emits after translation, and where the
    /// hardware finds its tables.
    PhysAddr
);
address_type!(
    /// An I/O virtual address: what a device puts on the bus, the input of translation (an IPA
    /// for an Arm stage-2 table).
    Iova
);

/// A page handed out by a [`PageAllocator`]: its physical address and where the CPU reaches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page {
    /// Physical address; aligned to the page's size.
    pub pa: PhysAddr,
    /// CPU pointer to the first byte.
    pub va: NonNull<u8>,
}

/// The memory services the embedder lends to the engine.
///
/// # Safety
///
/// Implementors guarantee, for every page returned by [`alloc`](Self::alloc) with `size_log2 = n`:
/// - the page is `1 << n` bytes, zero-filled, aligned to `1 << n` both physically and virtually,
///   and not handed out again until it is given back through [`free`](Self::free);
/// - `va` stays valid for reads and writes (including 64-bit atomic accesses) until it is freed;
/// - [`phys_to_virt`](Self::phys_to_virt) maps any address inside a live page to the matching byte
///   of that page's `va`, and returns `None` for addresses outside every live page;
/// - the physical address is the one the IOMMU must be given to reach the page.
pub unsafe trait PageAllocator {
    /// Returns a zeroed page of `1 << size_log2` bytes (4 KiB up to at least 64 KiB, for
    /// concatenated Arm stage-2 roots up to 1 MiB), aligned to its size, or `None` if there is no
    /// memory.
    fn alloc(&self, size_log2: u32) -> Option<Page>;

    /// Takes back a page that `alloc(size_log2)` returned.
    ///
    /// # Safety
    ///
    /// `page` came from `self.alloc(size_log2)`, has not been freed since, and no hardware walker
    /// can reach it any more (its last reference was removed and the invalidation that covered
    /// that removal has completed).
    unsafe fn free(&self, page: Page, size_log2: u32);

    /// The CPU pointer for physical address `pa` inside a live page.
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>>;

    /// Makes `len` bytes at `va` (table memory the crate just wrote) visible to a hardware walker
    /// that does not snoop the CPU caches: clean to the point of coherency (Arm `DC CVAC`, x86
    /// `CLFLUSHOPT` + fence). The crate calls it after every write to walked memory, but only for
    /// units whose walker is not coherent; the default does nothing.
    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        let _ = (va, len);
    }

    /// Makes `len` bytes at `va`, which a device that does not snoop the CPU caches wrote
    /// (event queue records, a completion word), visible to the CPU: invalidate the cache lines
    /// (Arm `DC IVAC`). The crate calls it before reading such memory, only for non-coherent
    /// units; the default does nothing.
    fn sync_for_cpu(&self, va: NonNull<u8>, len: usize) {
        let _ = (va, len);
    }
}

// SAFETY: forwards to `A`, which upholds the contract.
unsafe impl<A: PageAllocator + ?Sized> PageAllocator for &A {
    #[inline]
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        (**self).alloc(size_log2)
    }

    #[inline]
    unsafe fn free(&self, page: Page, size_log2: u32) {
        // SAFETY: the caller upholds `free`'s contract for `A`.
        unsafe { (**self).free(page, size_log2) }
    }

    #[inline]
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        (**self).phys_to_virt(pa)
    }

    #[inline]
    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        (**self).sync_for_device(va, len)
    }

    #[inline]
    fn sync_for_cpu(&self, va: NonNull<u8>, len: usize) {
        (**self).sync_for_cpu(va, len)
    }
}

/// Why [`alloc_below`] has no page to give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unplaced {
    /// The allocator had no page.
    NoMemory,
    /// The allocator's page starts at this address and does not fit below the width; it was
    /// given back.
    Beyond(PhysAddr),
}

/// A page of `2^size_log2` bytes whose every byte lies below `2^width`, for a structure a unit
/// reads through an address it can only express in `width` bits (VT-d: the host address width,
/// SMMUv3: `IDR5.OAS`). A page beyond goes straight back to `alloc`: a unit that ignores the
/// address bits above its width would read another page in its place.
pub(crate) fn alloc_below<A: PageAllocator + ?Sized>(
    alloc: &A,
    size_log2: u32,
    width: u32,
) -> Result<Page, Unplaced> {
    let page = alloc.alloc(size_log2).ok_or(Unplaced::NoMemory)?;
    let last = 1u64
        .checked_shl(size_log2)
        .and_then(|bytes| page.pa.checked_add(bytes - 1));
    match last {
        Some(last) if last.fits_in(width) => Ok(page),
        _ => {
            // SAFETY: the page came from `alloc.alloc(size_log2)` just now and no unit was
            // given its address.
            unsafe { alloc.free(page, size_log2) };
            Err(Unplaced::Beyond(page.pa))
        }
    }
}

/// Whether the hardware walker snoops CPU caches (VT-d `ECAP.C`, SMMUv3 `IDR0.COHACC`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkerCoherency {
    /// The walker snoops: writes need no cache maintenance.
    Coherent,
    /// The walker reads memory directly: every written range must be cleaned to memory.
    NonCoherent,
}

impl WalkerCoherency {
    /// Cleans `len` bytes at `va` through `alloc` when the walker needs it.
    #[inline]
    pub fn sync<A: PageAllocator + ?Sized>(self, alloc: &A, va: NonNull<u8>, len: usize) {
        if self == WalkerCoherency::NonCoherent {
            alloc.sync_for_device(va, len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_arithmetic_never_wraps() {
        assert_eq!(Iova::new(u64::MAX).checked_add(1), None);
        assert_eq!(PhysAddr::new(0).checked_sub(1), None);
        assert_eq!(
            Iova::new(0x1000).checked_add(0x1000),
            Some(Iova::new(0x2000))
        );
    }

    #[test]
    fn alignment_and_width() {
        assert!(PhysAddr::new(0x20_0000).is_aligned(21));
        assert!(!PhysAddr::new(0x20_1000).is_aligned(21));
        assert!(PhysAddr::ZERO.is_aligned(64));
        assert!(!PhysAddr::new(1 << 63).is_aligned(64));
        assert!(Iova::new((1 << 48) - 1).fits_in(48));
        assert!(!Iova::new(1 << 48).fits_in(48));
        assert!(Iova::new(u64::MAX).fits_in(64));
        assert_eq!(PhysAddr::try_new(1 << 52, 52), None);
        assert_eq!(
            PhysAddr::try_new((1 << 52) - 1, 52),
            Some(PhysAddr::new((1 << 52) - 1))
        );
        assert_eq!(Iova::try_new(u64::MAX, 64), Some(Iova::new(u64::MAX)));
    }
}
