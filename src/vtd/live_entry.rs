//! Writing entries that the remapping hardware may be walking: Intel VT-d specification
//! rev. 4.1, §9 (Translation Structure Formats) and §6.5.3 (Invalidation Considerations).
//!
//! Root, context and PASID entries are 64 to 512 bits, but the CPU stores at most 64 bits
//! atomically, and a walk may fetch an entry while software is in the middle of changing it. The
//! only bit hardware consults before trusting the rest is the Present bit `P` (bit 0 of word 0 in
//! every entry this crate writes). Hence the order (paraphrasing §6.5.3's guidance on making
//! entries present and not present):
//!
//! - *making an entry present*: write every other word first while `P` is still 0, make them
//!   visible (Release; cache clean for a non-coherent walker, `ECAP.C = 0`), then write word 0
//!   with `P = 1` in one 64-bit store;
//! - *tearing an entry down*: clear word 0 (and with it `P`) first in one store; the other words
//!   may be cleared only after the context/PASID-cache and IOTLB invalidation that covers the
//!   entry has completed, because a cached copy may still be in use until then
//!   ([`LiveEntry::scrub`]).
//!
//! A present entry is never rewritten in place ([`Error::EntryPresent`]): the caller tears it
//! down, invalidates, and publishes again.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use super::Error;
use crate::mem::{PageAllocator, WalkerCoherency};

/// Present bit of word 0, common to every entry written through [`LiveEntry`].
pub const PRESENT: u64 = 1;

/// An entry in live table memory, as 64-bit atomic words.
#[derive(Clone, Copy, Debug)]
pub struct LiveEntry<'a> {
    words: &'a [AtomicU64],
}

impl<'a> LiveEntry<'a> {
    /// Wraps the words of one entry (word 0 holds `P`).
    pub const fn new(words: &'a [AtomicU64]) -> Self {
        Self { words }
    }

    /// Wraps `count` words at `ptr`.
    ///
    /// # Safety
    /// `ptr` is 8-byte aligned and points to `count` words of table memory that stay valid for
    /// `'a` and are accessed, by the CPU, only through atomics while this value lives.
    pub unsafe fn from_ptr(ptr: NonNull<u8>, count: usize) -> Self {
        // SAFETY: the caller guarantees alignment, validity for 'a and atomic-only access;
        // `AtomicU64` has the layout of `u64`.
        let words = unsafe { core::slice::from_raw_parts(ptr.cast::<AtomicU64>().as_ptr(), count) };
        Self { words }
    }

    /// Number of 64-bit words.
    pub const fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether the entry has no words.
    pub const fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Word `index`, or `None` past the end.
    pub fn word(&self, index: usize) -> Option<u64> {
        self.words.get(index).map(|w| w.load(Ordering::Acquire))
    }

    /// Whether `P` is set.
    pub fn is_present(&self) -> bool {
        self.word(0).is_some_and(|w| w & PRESENT != 0)
    }

    fn sync<A: PageAllocator + ?Sized>(&self, from: usize, coherency: WalkerCoherency, alloc: &A) {
        if let Some(first) = self.words.get(from..).and_then(|w| w.first()) {
            let len = (self.words.len() - from) * 8;
            coherency.sync(alloc, NonNull::from(first).cast(), len);
        }
    }

    /// Makes the entry `new` present: words 1.. first, then word 0 (with `P`) last, Release.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `new` has a different length; [`Error::EntryPresent`] if the
    /// live entry is present.
    pub fn publish<A: PageAllocator + ?Sized>(
        &self,
        new: &[u64],
        coherency: WalkerCoherency,
        alloc: &A,
    ) -> Result<(), Error> {
        let (Some(slot0), Some((&word0, rest))) = (self.words.first(), new.split_first()) else {
            return Err(Error::InvalidArgument {
                what: "entry length (words)",
                value: new.len() as u64,
            });
        };
        if new.len() != self.words.len() {
            return Err(Error::InvalidArgument {
                what: "entry length (words)",
                value: new.len() as u64,
            });
        }
        let current = slot0.load(Ordering::Acquire);
        if current & PRESENT != 0 {
            return Err(Error::EntryPresent { word0: current });
        }
        for (slot, &w) in self.words.iter().skip(1).zip(rest) {
            slot.store(w, Ordering::Relaxed);
        }
        // The walker must see the body before it can see P: clean it first when it does not
        // snoop, and order the stores (Release) for one that does.
        self.sync(1, coherency, alloc);
        slot0.store(word0, Ordering::Release);
        self.sync(0, coherency, alloc);
        Ok(())
    }

    /// Changes the bits `mask` of word 0 of a *present* entry to those of `value`, in one
    /// 64-bit store that keeps `P` and every other bit: only for fields the spec lets software
    /// change in a live entry, followed by the invalidation it prescribes (a PASID-table
    /// entry's `SSADE`: PASID cache, IOTLB and device TLB, as for any change to a present
    /// entry, §6.5.3). The one exception to "never rewritten in place" above: a field of one
    /// word, so no walk can see a half-written entry (Linux changes `SSADE` the same way). A
    /// non-present entry is left alone (whoever publishes it writes the field). Returns
    /// whether the word changed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `mask` includes `P` or the entry has no words.
    pub fn update_present<A: PageAllocator + ?Sized>(
        &self,
        mask: u64,
        value: u64,
        coherency: WalkerCoherency,
        alloc: &A,
    ) -> Result<bool, Error> {
        let Some(slot0) = self.words.first().filter(|_| mask & PRESENT == 0) else {
            return Err(Error::InvalidArgument {
                what: "live word-0 update mask",
                value: mask,
            });
        };
        let old = slot0.load(Ordering::Acquire);
        if old & PRESENT == 0 {
            return Ok(false);
        }
        let new = (old & !mask) | (value & mask);
        if new != old {
            slot0.store(new, Ordering::Release);
            self.sync(0, coherency, alloc);
        }
        Ok(new != old)
    }

    /// Tears the entry down by clearing word 0 (and `P`) in one store, keeping `keep` bits of
    /// it (for example `FPD`, so that faults on the now non-present entry stay suppressed).
    /// The other words stay until [`scrub`](Self::scrub), after the invalidation completes.
    pub fn retire<A: PageAllocator + ?Sized>(
        &self,
        keep: u64,
        coherency: WalkerCoherency,
        alloc: &A,
    ) {
        if let Some(slot0) = self.words.first() {
            let old = slot0.load(Ordering::Acquire);
            slot0.store(old & keep & !PRESENT, Ordering::Release);
            self.sync(0, coherency, alloc);
        }
    }

    /// Zeroes words 1.. of a non-present entry. Call only after the invalidation covering the
    /// [`retire`](Self::retire) has completed.
    ///
    /// # Errors
    /// [`Error::EntryPresent`] if the entry is present.
    pub fn scrub<A: PageAllocator + ?Sized>(
        &self,
        coherency: WalkerCoherency,
        alloc: &A,
    ) -> Result<(), Error> {
        let word0 = self.word(0).unwrap_or(0);
        if word0 & PRESENT != 0 {
            return Err(Error::EntryPresent { word0 });
        }
        for slot in self.words.iter().skip(1) {
            slot.store(0, Ordering::Relaxed);
        }
        self.sync(1, coherency, alloc);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mem::PhysAddr;
    use crate::vtd::test_support::TestAlloc;
    use core::cell::RefCell;
    use std::vec::Vec;

    /// Records the order in which words are made visible to a non-coherent walker.
    #[derive(Default)]
    struct Recorder {
        inner: TestAlloc,
        synced: RefCell<Vec<(usize, usize)>>,
    }
    // SAFETY: delegates to `TestAlloc`.
    unsafe impl PageAllocator for Recorder {
        fn alloc(&self, s: u32) -> Option<crate::mem::Page> {
            self.inner.alloc(s)
        }
        unsafe fn free(&self, p: crate::mem::Page, s: u32) {
            // SAFETY: forwarded contract.
            unsafe { self.inner.free(p, s) }
        }
        fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
            self.inner.phys_to_virt(pa)
        }
        fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
            self.synced.borrow_mut().push((va.as_ptr() as usize, len));
        }
    }

    #[test]
    fn publish_writes_present_word_last_and_refuses_live_entries() {
        let mem: [AtomicU64; 4] = Default::default();
        let e = LiveEntry::new(&mem);
        let rec = Recorder::default();
        e.publish(&[0x1001, 2, 3, 4], WalkerCoherency::NonCoherent, &rec)
            .unwrap();
        let base = &mem[0] as *const _ as usize;
        // Body (words 1..3, 24 bytes) cleaned before word 0 (all 32 bytes) is.
        assert_eq!(*rec.synced.borrow(), [(base + 8, 24), (base, 32)]);
        assert!(e.is_present());
        assert_eq!(
            e.publish(&[1, 0, 0, 0], WalkerCoherency::Coherent, &rec),
            Err(Error::EntryPresent { word0: 0x1001 })
        );
        assert!(e.publish(&[1, 0], WalkerCoherency::Coherent, &rec).is_err());
        assert_eq!(
            e.scrub(WalkerCoherency::Coherent, &rec),
            Err(Error::EntryPresent { word0: 0x1001 })
        );
        e.retire(0x2, WalkerCoherency::Coherent, &rec);
        assert_eq!(e.word(0), Some(0));
        assert_eq!(
            e.word(1),
            Some(2),
            "body stays until the invalidation completes"
        );
        e.scrub(WalkerCoherency::Coherent, &rec).unwrap();
        assert_eq!([e.word(1), e.word(2), e.word(3)], [Some(0); 3]);
        let empty = LiveEntry::new(&[]);
        assert!(empty.publish(&[], WalkerCoherency::Coherent, &rec).is_err());
        assert!(!empty.is_present());
    }

    #[test]
    fn update_present_changes_one_field_of_a_present_entry_only() {
        let mem: [AtomicU64; 2] = Default::default();
        let e = LiveEntry::new(&mem);
        let rec = Recorder::default();
        let ssade = 1 << 9;
        // Not present: left alone (whoever publishes it writes the field).
        assert_eq!(
            e.update_present(ssade, ssade, WalkerCoherency::NonCoherent, &rec),
            Ok(false)
        );
        assert_eq!(e.word(0), Some(0));
        e.publish(&[0x1001, 7], WalkerCoherency::Coherent, &rec)
            .unwrap();
        assert_eq!(
            e.update_present(ssade | PRESENT, 0, WalkerCoherency::Coherent, &rec),
            Err(Error::InvalidArgument {
                what: "live word-0 update mask",
                value: ssade | PRESENT
            })
        );
        assert_eq!(
            e.update_present(ssade, ssade, WalkerCoherency::NonCoherent, &rec),
            Ok(true)
        );
        assert_eq!((e.word(0), e.word(1)), (Some(0x1201), Some(7)));
        // Word 0 cleaned for a walker that does not snoop.
        let base = &mem[0] as *const _ as usize;
        assert_eq!(rec.synced.borrow().last(), Some(&(base, 16)));
        assert_eq!(
            e.update_present(ssade, ssade, WalkerCoherency::Coherent, &rec),
            Ok(false)
        );
        assert_eq!(
            e.update_present(ssade, 0, WalkerCoherency::Coherent, &rec),
            Ok(true)
        );
        assert_eq!(e.word(0), Some(0x1001));
    }
}
