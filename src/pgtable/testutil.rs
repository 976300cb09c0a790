//! A minimal allocator for the engine's unit tests (the `sim` arena serves the other tests).

extern crate std;

use core::ptr::NonNull;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::vec::Vec;

use crate::mem::{Page, PageAllocator, PhysAddr};

/// A host pointer kept with its provenance (for Miri).
#[derive(Clone, Copy)]
struct HostPtr(*mut u8);
// SAFETY: the pointer is only an address handed back to the engine; the pages are shared
// through atomics.
unsafe impl Send for HostPtr {}

/// Pages at fake physical addresses (PA != VA), counted.
pub(crate) struct TestAlloc {
    pages: Mutex<BTreeMap<u64, (HostPtr, u32)>>,
    next_pa: Mutex<u64>,
    pub(crate) fail_after: Mutex<Option<usize>>,
    pub(crate) synced: Mutex<Vec<(usize, usize)>>,
}

impl TestAlloc {
    pub(crate) fn new() -> Self {
        Self {
            pages: Mutex::new(BTreeMap::new()),
            next_pa: Mutex::new(0x4000_0000),
            fail_after: Mutex::new(None),
            synced: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn live(&self) -> usize {
        self.pages.lock().unwrap().len()
    }
}

// SAFETY: pages are fresh zeroed host allocations aligned to their size; fake PAs are unique and
// aligned to the page size; phys_to_virt resolves only live pages.
unsafe impl PageAllocator for TestAlloc {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        if let Some(n) = self.fail_after.lock().unwrap().as_mut() {
            if *n == 0 {
                return None;
            }
            *n -= 1;
        }
        let layout = Layout::from_size_align(1 << size_log2, 1 << size_log2).ok()?;
        // SAFETY: non-zero size.
        let va = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        let mut next = self.next_pa.lock().unwrap();
        let pa = next.next_multiple_of(1 << size_log2);
        *next = pa + (1 << size_log2);
        self.pages
            .lock()
            .unwrap()
            .insert(pa, (HostPtr(va.as_ptr()), size_log2));
        Some(Page {
            pa: PhysAddr::new(pa),
            va,
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let (va, size) = self
            .pages
            .lock()
            .unwrap()
            .remove(&page.pa.get())
            .expect("double free");
        assert_eq!(size, size_log2, "freed with another size");
        assert_eq!(va.0, page.va.as_ptr());
        let layout = Layout::from_size_align(1 << size, 1 << size).unwrap();
        // SAFETY: allocated above with this layout.
        unsafe { dealloc(va.0, layout) };
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let pages = self.pages.lock().unwrap();
        let (&base, &(va, size)) = pages.range(..=pa.get()).next_back()?;
        let off = pa.get() - base;
        (off < 1 << size)
            .then(|| NonNull::new(va.0.wrapping_add(off as usize)))
            .flatten()
    }

    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        self.synced
            .lock()
            .unwrap()
            .push((va.as_ptr() as usize, len));
    }
}

impl Drop for TestAlloc {
    fn drop(&mut self) {
        for (_, (va, size)) in std::mem::take(&mut *self.pages.lock().unwrap()) {
            let layout = Layout::from_size_align(1 << size, 1 << size).unwrap();
            // SAFETY: every live page was allocated with this layout and is no longer used.
            unsafe { dealloc(va.0, layout) };
        }
    }
}
