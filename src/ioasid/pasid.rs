//! The PASID allocator: one per system, over the 20-bit PASID space, with per-context quotas.
//!
//! PASIDs are system-wide on PCIe (a device's PASID means the same to every unit behind it), so
//! contexts draw from one allocator and each is limited by a quota. PASID 0 is never handed
//! out: VT-d scalable mode uses it as RID_PASID for requests without a PASID, and SMMUv3
//! substream 0 serves requests without a SubstreamID.

use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::iommu::Pasid;

const WORDS: usize = 1 << (Pasid::BITS - 6);

/// A lock-free bitmap over the PASID space.
pub struct PasidAllocator {
    bits: [AtomicU64; WORDS],
    /// Next word to search from, so allocation does not rescan the used prefix.
    hint: AtomicU32,
    limit: u32,
}

impl core::fmt::Debug for PasidAllocator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PasidAllocator")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl PasidAllocator {
    /// An allocator handing out PASIDs `1..(1 << bits)`, `bits` the narrowest PASID width of
    /// the system's units and devices: 0 for a system without PASIDs (none is handed out);
    /// above 20 clamped to 20 (the C ABI refuses it).
    ///
    /// The bitmap covers the whole 20-bit space (128 KiB): put the allocator in a `static`
    /// (`static PASIDS: PasidAllocator = PasidAllocator::new(20);` lands in `.bss`), or build it
    /// in zeroed memory with [`init_zeroed`](Self::init_zeroed), rather than on a kernel stack.
    pub const fn new(bits: u32) -> Self {
        Self {
            bits: [const { AtomicU64::new(0) }; WORDS],
            hint: AtomicU32::new(0),
            limit: Self::limit_for(bits),
        }
    }

    /// Makes an allocator of `bits` bits out of zero-filled memory, in place.
    ///
    /// # Safety
    ///
    /// `this` is valid for writes, aligned, `size_of::<PasidAllocator>()` bytes long, all
    /// zero, and not referenced elsewhere.
    pub unsafe fn init_zeroed(this: NonNull<Self>, bits: u32) {
        // All-zero is a valid bitmap (every PASID free) and hint; only the limit is written.
        // SAFETY: the caller guarantees `this` is valid for writes and aligned.
        unsafe { addr_of_mut!((*this.as_ptr()).limit).write(Self::limit_for(bits)) };
    }

    /// One past the largest PASID of a `bits`-bit space, `bits` clamped to 20. 0 bits: 1,
    /// PASID 0 alone, which is never handed out.
    const fn limit_for(bits: u32) -> u32 {
        let bits = if bits > Pasid::BITS {
            Pasid::BITS
        } else {
            bits
        };
        1 << bits
    }

    /// A free PASID, or `None` when the space is exhausted.
    pub fn alloc(&self) -> Option<Pasid> {
        let words = (self.limit as usize).div_ceil(64);
        let start = self.hint.load(Ordering::Relaxed) as usize % words;
        for n in 0..words {
            let w = (start + n) % words;
            let word = &self.bits[w];
            let mut cur = word.load(Ordering::Relaxed);
            loop {
                // PASID 0 is reserved; bits at or above the limit do not exist.
                let mut taken = cur | u64::from(w == 0);
                let base = (w * 64) as u32;
                if base + 64 > self.limit {
                    taken |= !0u64 << (self.limit - base);
                }
                if taken == u64::MAX {
                    break;
                }
                let bit = (!taken).trailing_zeros();
                match word.compare_exchange_weak(
                    cur,
                    cur | 1 << bit,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.hint.store(w as u32, Ordering::Relaxed);
                        return Pasid::new(base + bit);
                    }
                    Err(now) => cur = now,
                }
            }
        }
        None
    }

    /// Returns a PASID; `false` if it was not allocated.
    pub fn free(&self, pasid: Pasid) -> bool {
        let (w, bit) = ((pasid.get() / 64) as usize, pasid.get() % 64);
        match self.bits.get(w) {
            Some(word) => word.fetch_and(!(1 << bit), Ordering::AcqRel) & 1 << bit != 0,
            None => false,
        }
    }

    /// Whether `pasid` is allocated.
    pub fn is_allocated(&self, pasid: Pasid) -> bool {
        let (w, bit) = ((pasid.get() / 64) as usize, pasid.get() % 64);
        self.bits
            .get(w)
            .is_some_and(|word| word.load(Ordering::Acquire) & 1 << bit != 0)
    }
}
