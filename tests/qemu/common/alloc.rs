//! A page allocator over a static arena, with PA == VA (identity-mapped guest memory).
//!
//! It implements [`iommu_engine::mem::PageAllocator`]: pages of `1 << n` bytes (4 KiB up to the
//! arena size), zero-filled and aligned to their size, tracked in a bitmap of 4 KiB frames. A
//! tiny spin lock makes `&self` methods safe to call from anywhere (the guests are single-core and
//! take no interrupts, so it never spins in practice). Misuse (freeing a page that is not live)
//! is counted rather than panicking, and every scenario is failed if the count is non-zero.

use core::cell::UnsafeCell;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use iommu_engine::mem::{Page, PageAllocator, PhysAddr, PAGE_SHIFT_4K};

const FRAME: usize = 1 << PAGE_SHIFT_4K;

/// Size of the arena in 4 KiB frames (4 MiB).
pub const ARENA_FRAMES: usize = 1024;
const WORDS: usize = ARENA_FRAMES / 64;

/// The memory handed out, aligned to 1 MiB so that every page size up to 1 MiB can be placed.
#[repr(C, align(0x100000))]
pub struct ArenaMemory(UnsafeCell<[u8; ARENA_FRAMES * FRAME]>);

// SAFETY: the bytes are only reached through pointers the allocator hands out for disjoint,
// exclusively-owned pages; the allocator's own state is behind its lock.
unsafe impl Sync for ArenaMemory {}

impl ArenaMemory {
    /// An arena (lives in .bss, so it costs nothing in the image).
    pub const fn new() -> Self {
        Self(UnsafeCell::new([0; ARENA_FRAMES * FRAME]))
    }
}

struct State {
    /// One bit per frame, set while the frame belongs to a live page.
    used: [u64; WORDS],
    live_frames: usize,
}

/// The allocator. PA == VA: the arena's address is its physical address.
pub struct PageArena {
    mem: &'static ArenaMemory,
    lock: AtomicBool,
    state: UnsafeCell<State>,
    misuse: AtomicUsize,
}

// SAFETY: `state` is only accessed while `lock` is held (see `with_state`).
unsafe impl Sync for PageArena {}

impl PageArena {
    /// An allocator over `mem`, with every frame free.
    pub const fn new(mem: &'static ArenaMemory) -> Self {
        Self {
            mem,
            lock: AtomicBool::new(false),
            state: UnsafeCell::new(State {
                used: [0; WORDS],
                live_frames: 0,
            }),
            misuse: AtomicUsize::new(0),
        }
    }

    /// First byte of the arena (a physical address too).
    pub fn base(&self) -> usize {
        self.mem.0.get() as usize
    }

    /// Size of the arena in bytes.
    pub const fn size(&self) -> usize {
        ARENA_FRAMES * FRAME
    }

    /// Number of 4 KiB frames currently handed out.
    pub fn live_frames(&self) -> usize {
        self.with_state(|s| s.live_frames)
    }

    /// Number of invalid `free` calls seen (double free, foreign page, wrong size).
    pub fn misuse_count(&self) -> usize {
        self.misuse.load(Ordering::Relaxed)
    }

    fn with_state<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        while self
            .lock
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        // SAFETY: the lock is held, so this is the only reference to the state.
        let r = f(unsafe { &mut *self.state.get() });
        self.lock.store(false, Ordering::Release);
        r
    }

    fn frames_for(size_log2: u32) -> Option<usize> {
        let log2 = size_log2.max(PAGE_SHIFT_4K);
        if log2 >= usize::BITS {
            return None;
        }
        let frames = (1usize << log2) / FRAME;
        (frames <= ARENA_FRAMES).then_some(frames)
    }

    fn range_is(state: &State, first: usize, count: usize, used: bool) -> bool {
        (first..first + count).all(|i| (state.used[i / 64] >> (i % 64) & 1 == 1) == used)
    }

    fn set_range(state: &mut State, first: usize, count: usize, used: bool) {
        for i in first..first + count {
            if used {
                state.used[i / 64] |= 1 << (i % 64);
            } else {
                state.used[i / 64] &= !(1 << (i % 64));
            }
        }
    }

    fn frame_of(&self, pa: u64) -> Option<usize> {
        let off = usize::try_from(pa).ok()?.checked_sub(self.base())?;
        (off < self.size()).then_some(off / FRAME)
    }
}

// SAFETY: pages are carved from a static arena that is identity-mapped (PA == VA) and never
// used for anything else; a frame is handed out only while its bit is clear, its bit stays set
// until `free`, every page is zeroed before it is returned and is aligned to its size because
// the arena is 1 MiB-aligned and the search only considers size-aligned frame indices (sizes
// above 1 MiB are additionally checked against the absolute address). `phys_to_virt` answers
// only for frames whose bit is set.
unsafe impl PageAllocator for PageArena {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        let frames = Self::frames_for(size_log2)?;
        let bytes = frames * FRAME;
        let base = self.base();
        let first = self.with_state(|s| {
            let mut i = 0;
            while i + frames <= ARENA_FRAMES {
                if (base + i * FRAME) & (bytes - 1) == 0 && Self::range_is(s, i, frames, false) {
                    Self::set_range(s, i, frames, true);
                    s.live_frames += frames;
                    return Some(i);
                }
                i += frames;
            }
            None
        })?;
        let addr = base + first * FRAME;
        // SAFETY: the frames [first, first + frames) were free and are now reserved for this
        // page alone; they lie inside the arena, which is valid for writes.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, bytes) };
        Some(Page {
            pa: PhysAddr::new(addr as u64),
            va: NonNull::new(addr as *mut u8)?,
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let ok = match (Self::frames_for(size_log2), self.frame_of(page.pa.get())) {
            (Some(frames), Some(first))
                if page.va.as_ptr() as u64 == page.pa.get()
                    && page.pa.is_aligned(size_log2.max(PAGE_SHIFT_4K))
                    && first + frames <= ARENA_FRAMES =>
            {
                self.with_state(|s| {
                    if Self::range_is(s, first, frames, true) {
                        Self::set_range(s, first, frames, false);
                        s.live_frames -= frames;
                        true
                    } else {
                        false
                    }
                })
            }
            _ => false,
        };
        if !ok {
            self.misuse.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let frame = self.frame_of(pa.get())?;
        let live = self.with_state(|s| Self::range_is(s, frame, 1, true));
        if live {
            NonNull::new(pa.get() as usize as *mut u8)
        } else {
            None
        }
    }

    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        crate::arch::clean_dcache_range(va.as_ptr() as usize, len);
    }
}
