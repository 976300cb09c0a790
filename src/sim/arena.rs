//! [`Arena`]: a host [`PageAllocator`] that hands out pages of one zeroed host buffer under fake
//! physical addresses, and keeps the books a test needs.
//!
//! - Physical addresses start at a configurable base (default `0x8000_0000`), never equal to the
//!   host address, so a physical/virtual mix-up in the engine reads the wrong memory or nothing.
//!   Pick a base that fits the output address size of the walker under test: a base above 2^48
//!   exercises 52-bit output addresses.
//! - Pages of 4 KiB to 1 MiB, aligned to their size both physically and virtually.
//! - Counts of live pages, allocations, frees and the peak; double frees and frees of unknown pages
//!   are counted and recorded, never undefined behaviour.
//! - Freed memory is filled with [`POISON`], and freed pages are reused first-in first-out, so a
//!   use after free reads garbage (a walker reading a freed page gets `None`) instead of a stale
//!   but plausible table.
//! - Failure injection ([`FailPolicy`]) for error-path tests.
//! - A recorder for [`PageAllocator::sync_for_device`]: with [`Arena::start_sync_recording`] and
//!   [`Arena::unsynced_words`] a test checks that the engine reported every table word it changed.
//!
//! All table memory is read and written through 64-bit atomics, so the arena can be shared by
//! threads that map concurrently while a walker reads.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use crate::mem::{Page, PageAllocator, PhysAddr};

/// Memory a reference walker reads: 64-bit words at physical addresses.
///
/// [`Arena`] implements it; a model of other memory (an MMIO-backed table, a snapshot) can too.
pub trait PhysMem {
    /// The naturally aligned 64-bit word at physical address `pa`, or `None` if nothing readable
    /// is there (hardware would see an external abort or a bus error).
    fn read_u64(&self, pa: u64) -> Option<u64>;

    /// The `out.len()` words from `pa` into `out`, each read as by [`read_u64`](Self::read_u64);
    /// `false` (with `out` unspecified) if any of them is unreadable. Walkers read whole runs of
    /// entries with it; memory that can do better than word by word overrides it.
    fn read_words(&self, pa: u64, out: &mut [u64]) -> bool {
        for (i, w) in out.iter_mut().enumerate() {
            let word = (i as u64)
                .checked_mul(8)
                .and_then(|off| pa.checked_add(off))
                .and_then(|at| self.read_u64(at));
            match word {
                Some(v) => *w = v,
                None => return false,
            }
        }
        true
    }
}

impl<M: PhysMem + ?Sized> PhysMem for &M {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        (**self).read_u64(pa)
    }

    fn read_words(&self, pa: u64, out: &mut [u64]) -> bool {
        (**self).read_words(pa, out)
    }
}

/// Smallest page the arena hands out: 4 KiB.
pub const MIN_PAGE_LOG2: u32 = 12;
/// Largest page the arena hands out: 1 MiB (16 concatenated 64 KiB Arm stage-2 root tables).
pub const MAX_PAGE_LOG2: u32 = 20;
/// The pattern freed memory is filled with. Bit 0 is set so that every format reads a freed
/// entry as present/valid and a use after free shows up as a bogus walk rather than a hole.
pub const POISON: u64 = 0xDEAD_F4EE_DEAD_F4EF;

const BUFFER_ALIGN: usize = 1 << MAX_PAGE_LOG2;
const SIZE_CLASSES: usize = (MAX_PAGE_LOG2 - MIN_PAGE_LOG2 + 1) as usize;

/// Where the arena's physical addresses start and how much memory it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaConfig {
    /// Physical address of the first byte; a multiple of 1 MiB.
    pub base_pa: u64,
    /// Size of the buffer in bytes; a non-zero multiple of 1 MiB. The host reserves it lazily
    /// (only the pages handed out are ever touched).
    pub capacity: usize,
}

impl Default for ArenaConfig {
    fn default() -> Self {
        Self {
            base_pa: 0x8000_0000,
            capacity: 64 << 20,
        }
    }
}

/// Why [`Arena::new`] refused a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArenaError {
    /// `base_pa` is not a multiple of 1 MiB.
    UnalignedBase(u64),
    /// `capacity` is zero or not a multiple of 1 MiB.
    BadCapacity(usize),
    /// `base_pa + capacity` does not fit in 64 bits.
    AddressOverflow,
    /// The host could not provide the buffer.
    HostOutOfMemory,
}

impl core::fmt::Display for ArenaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnalignedBase(b) => write!(f, "arena base {b:#x} is not 1 MiB aligned"),
            Self::BadCapacity(c) => {
                write!(f, "arena capacity {c:#x} is not a non-zero MiB multiple")
            }
            Self::AddressOverflow => write!(f, "arena base + capacity overflows 64 bits"),
            Self::HostOutOfMemory => write!(f, "host allocation for the arena failed"),
        }
    }
}

impl std::error::Error for ArenaError {}

/// When [`Arena::alloc`](PageAllocator::alloc) fails on purpose. Attempts are counted from the
/// moment the policy is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailPolicy {
    /// Never fail on purpose.
    #[default]
    Never,
    /// Fail only the n-th attempt (1-based).
    Nth(u64),
    /// Let n attempts succeed, then fail every later one.
    AfterN(u64),
}

/// What was wrong with a rejected [`free`](PageAllocator::free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadFreeKind {
    /// The page was freed before and not handed out since.
    DoubleFree,
    /// The address was never the start of a page of this arena.
    Unknown,
    /// The page is live but was allocated with another size.
    SizeMismatch {
        /// The size it was allocated with.
        allocated_log2: u32,
    },
    /// The page is live but the virtual address given back is not the one handed out.
    WrongVirtual,
}

/// A rejected free: the arena ignored it and recorded it here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadFree {
    /// Physical address passed to `free`.
    pub pa: u64,
    /// Size passed to `free`.
    pub size_log2: u32,
    /// What was wrong.
    pub kind: BadFreeKind,
}

/// The arena's books.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Pages allocated and not yet freed.
    pub live_pages: usize,
    /// Bytes in live pages.
    pub live_bytes: u64,
    /// Successful allocations.
    pub allocs: u64,
    /// Successful frees.
    pub frees: u64,
    /// Allocations that failed (injected, exhausted, or an unsupported size).
    pub failed_allocs: u64,
    /// Highest `live_pages` seen.
    pub peak_live_pages: usize,
    /// Highest `live_bytes` seen.
    pub peak_live_bytes: u64,
    /// Rejected frees (see [`Arena::bad_frees`]).
    pub bad_frees: usize,
    /// Calls to `sync_for_device`.
    pub syncs: u64,
    /// Calls to `sync_for_device` whose range is not inside one live page.
    pub syncs_outside_live: u64,
}

/// The contents of every live page at one moment, for [`Arena::unsynced_words`].
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Page offset -> (allocation generation, words).
    pages: BTreeMap<u64, (u64, Vec<u64>)>,
}

#[derive(Clone, Copy, Debug)]
struct LivePage {
    size_log2: u32,
    /// Distinguishes a page freed and handed out again at the same address from the original.
    generation: u64,
}

#[derive(Debug, Default)]
struct Inner {
    live: BTreeMap<u64, LivePage>,
    freed: BTreeSet<u64>,
    free_lists: [VecDeque<u64>; SIZE_CLASSES],
    bump: u64,
    generation: u64,
    stats: ArenaStats,
    bad_frees: Vec<BadFree>,
    policy: FailPolicy,
    attempts: u64,
    sync_log: Option<Vec<(u64, u64)>>,
}

impl Inner {
    fn injected_failure(&mut self) -> bool {
        self.attempts = self.attempts.saturating_add(1);
        match self.policy {
            FailPolicy::Never => false,
            FailPolicy::Nth(n) => self.attempts == n,
            FailPolicy::AfterN(n) => self.attempts > n,
        }
    }

    /// The live page containing byte offset `off`: (page offset, page).
    fn page_containing(&self, off: u64) -> Option<(u64, LivePage)> {
        let (&start, &page) = self.live.range(..=off).next_back()?;
        (off - start < 1u64 << page.size_log2).then_some((start, page))
    }

    fn bad_free(&mut self, pa: u64, size_log2: u32, kind: BadFreeKind) {
        self.bad_frees.push(BadFree {
            pa,
            size_log2,
            kind,
        });
        self.stats.bad_frees = self.bad_frees.len();
    }
}

/// A host page allocator over one zeroed buffer with fake physical addresses. See the module
/// documentation.
#[derive(Debug)]
pub struct Arena {
    /// The buffer: `capacity` bytes from a 1 MiB boundary inside the host allocation `alloc`.
    buf: NonNull<u8>,
    /// The host allocation (`calloc`-like, so that the host hands out zero pages lazily) and
    /// its layout; `buf` lies inside it.
    alloc: NonNull<u8>,
    layout: Layout,
    base_pa: u64,
    capacity: u64,
    /// One bit per 4 KiB frame of the buffer, set while the frame is part of a live page: the
    /// lock-free answer to "is this address in a live page", which every table read asks. Set
    /// and cleared under `inner`, after the books and before the page is handed out or poisoned.
    frames: Vec<AtomicU64>,
    inner: Mutex<Inner>,
}

// SAFETY: `buf` is owned by the arena and freed only in `drop`. The arena itself touches the
// buffer only through 64-bit atomics and its books only under the mutex; the raw pointer carries no
// thread affinity.
unsafe impl Send for Arena {}
// SAFETY: as for `Send`: every shared access the arena makes is atomic or behind `inner`.
unsafe impl Sync for Arena {}

impl Arena {
    /// An arena for `config`.
    ///
    /// # Errors
    ///
    /// [`ArenaError`] if the base or capacity are not 1 MiB multiples, their sum overflows, or the
    /// host has no memory.
    pub fn new(config: ArenaConfig) -> Result<Self, ArenaError> {
        Self::check_config(&config)?;
        // One MiB more than asked, at the allocator's natural alignment, and the buffer aligned
        // inside it by hand: an over-aligned `alloc_zeroed` would have the host zero (and fault
        // in) the whole buffer up front, while this one is `calloc`, whose large blocks come
        // zeroed from the kernel page by page as they are touched.
        let layout = config
            .capacity
            .checked_add(BUFFER_ALIGN)
            .and_then(|size| Layout::from_size_align(size, 16).ok())
            .ok_or(ArenaError::BadCapacity(config.capacity))?;
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc_zeroed(layout) };
        let alloc = NonNull::new(raw).ok_or(ArenaError::HostOutOfMemory)?;
        let pad = (raw as usize).next_multiple_of(BUFFER_ALIGN) - raw as usize;
        // SAFETY: `pad < BUFFER_ALIGN`, and the allocation has `capacity + BUFFER_ALIGN` bytes, so
        // the buffer `[pad, pad + capacity)` lies inside it; the result is non-null.
        let buf = unsafe { alloc.add(pad) };
        let mut arena = Self {
            buf,
            alloc,
            layout,
            base_pa: config.base_pa,
            capacity: config.capacity as u64,
            frames: Vec::new(),
            inner: Mutex::default(),
        };
        arena.frames = (0..arena.frame_words())
            .map(|_| AtomicU64::new(0))
            .collect();
        Ok(arena)
    }

    /// Makes the arena as good as `Arena::new(config)`: books cleared, every page free and zero.
    /// Keeps the host buffer if it is large enough and zeroes again only the part of it ever
    /// handed out, so that a fuzzer running thousands of short cases a second does not pay for
    /// a fresh buffer each time.
    ///
    /// # Errors
    ///
    /// As [`Arena::new`]; the arena is unchanged then.
    pub fn reset(&mut self, config: ArenaConfig) -> Result<(), ArenaError> {
        Self::check_config(&config)?;
        if config.capacity as u64 > self.layout.size() as u64 - BUFFER_ALIGN as u64 {
            *self = Self::new(config)?;
            return Ok(());
        }
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        let used = inner.bump;
        *inner = Inner::default();
        // SAFETY: `&mut self`: no page is lent out any more (every `Page` handed out borrowed
        // the arena), so nothing else reads or writes the buffer; `[0, used)` lies inside it.
        unsafe { self.buf.as_ptr().write_bytes(0, used as usize) };
        self.base_pa = config.base_pa;
        self.capacity = config.capacity as u64;
        let words = self.frame_words();
        self.frames.truncate(words);
        self.frames.resize_with(words, || AtomicU64::new(0));
        for w in &mut self.frames {
            *w.get_mut() = 0;
        }
        Ok(())
    }

    fn check_config(config: &ArenaConfig) -> Result<(), ArenaError> {
        if config.base_pa % BUFFER_ALIGN as u64 != 0 {
            return Err(ArenaError::UnalignedBase(config.base_pa));
        }
        if config.capacity == 0 || config.capacity % BUFFER_ALIGN != 0 {
            return Err(ArenaError::BadCapacity(config.capacity));
        }
        if config.base_pa.checked_add(config.capacity as u64).is_none() {
            return Err(ArenaError::AddressOverflow);
        }
        Ok(())
    }

    /// Words of the frame bitmap: one bit per 4 KiB of capacity.
    fn frame_words(&self) -> usize {
        (self.capacity >> MIN_PAGE_LOG2).div_ceil(64) as usize
    }

    /// Marks the frames of the page at `off` live (`true`) or not.
    fn mark_frames(&self, off: u64, size_log2: u32, live: bool) {
        let first = off >> MIN_PAGE_LOG2;
        for frame in first..first + (1u64 << (size_log2 - MIN_PAGE_LOG2)) {
            let (word, bit) = (&self.frames[(frame / 64) as usize], 1u64 << (frame % 64));
            if live {
                word.fetch_or(bit, Ordering::Release);
            } else {
                word.fetch_and(!bit, Ordering::Release);
            }
        }
    }

    /// Whether the byte at offset `off` (inside the buffer) lies in a live page.
    fn is_live(&self, off: u64) -> bool {
        let frame = off >> MIN_PAGE_LOG2;
        self.frames[(frame / 64) as usize].load(Ordering::Acquire) >> (frame % 64) & 1 == 1
    }

    /// An arena with [`ArenaConfig::default`].
    ///
    /// # Errors
    ///
    /// [`ArenaError::HostOutOfMemory`] if the host has no memory.
    pub fn with_defaults() -> Result<Self, ArenaError> {
        Self::new(ArenaConfig::default())
    }

    /// Physical address of the first byte of the buffer.
    pub fn base_pa(&self) -> u64 {
        self.base_pa
    }

    /// The books as they are now.
    pub fn stats(&self) -> ArenaStats {
        self.lock().stats
    }

    /// Every rejected free so far, oldest first.
    pub fn bad_frees(&self) -> Vec<BadFree> {
        self.lock().bad_frees.clone()
    }

    /// Every live page: (physical address, size log2), by address.
    pub fn live_pages(&self) -> Vec<(PhysAddr, u32)> {
        let inner = self.lock();
        inner
            .live
            .iter()
            .map(|(&off, p)| (PhysAddr::new(self.base_pa + off), p.size_log2))
            .collect()
    }

    /// Sets when allocations fail on purpose, and restarts the attempt count.
    pub fn set_fail_policy(&self, policy: FailPolicy) {
        let mut inner = self.lock();
        inner.policy = policy;
        inner.attempts = 0;
    }

    /// Writes the 64-bit word at `pa` inside a live page (for tests that hand-build tables). Not
    /// reported to the sync recorder. Returns `false` if `pa` is unaligned or not in a live page.
    pub fn write_u64(&self, pa: u64, value: u64) -> bool {
        let Some(off) = self.live_word(pa) else {
            return false;
        };
        self.word(off).store(value, Ordering::Release);
        true
    }

    /// Compare-and-swaps the 64-bit word at `pa` inside a live page, as hardware updates an
    /// entry's accessed and dirty bits (an atomic read-modify-write that a concurrent
    /// compare-and-swap of the engine cannot lose). Not reported to the sync recorder.
    /// `None` if `pa` is unaligned or not in a live page; otherwise the result of the exchange
    /// (`Err` holds the value found).
    pub fn compare_exchange_u64(
        &self,
        pa: u64,
        current: u64,
        new: u64,
    ) -> Option<Result<u64, u64>> {
        let off = self.live_word(pa)?;
        Some(
            self.word(off)
                .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire),
        )
    }

    /// Starts (or restarts) recording `sync_for_device` ranges, and returns a snapshot of every
    /// live page taken at the same moment, for [`unsynced_words`](Self::unsynced_words).
    pub fn start_sync_recording(&self) -> Snapshot {
        let mut inner = self.lock();
        inner.sync_log = Some(Vec::new());
        self.snapshot_locked(&inner)
    }

    /// Stops recording and returns the recorded ranges as (physical address, length).
    pub fn stop_sync_recording(&self) -> Vec<(u64, u64)> {
        self.lock().sync_log.take().unwrap_or_default()
    }

    /// The ranges recorded so far, as (physical address, length), in call order.
    pub fn sync_log(&self) -> Vec<(u64, u64)> {
        self.lock().sync_log.clone().unwrap_or_default()
    }

    /// The contents of every live page now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        self.snapshot_locked(&inner)
    }

    /// Physical addresses of the 64-bit words of live pages that changed since `before` but are
    /// not covered by a range recorded since recording started.
    ///
    /// A page allocated after `before` counts as changed in every word: the zeroing happened in
    /// the CPU's caches too, so a non-coherent walker needs the whole new table cleaned before
    /// it is linked.
    pub fn unsynced_words(&self, before: &Snapshot) -> Vec<u64> {
        let inner = self.lock();
        let covered = merge_ranges(inner.sync_log.as_deref().unwrap_or_default());
        let mut missing = Vec::new();
        for (&off, page) in &inner.live {
            let old = before
                .pages
                .get(&off)
                .filter(|(generation, _)| *generation == page.generation);
            for i in 0..(1u64 << page.size_log2) / 8 {
                let now = self.word(off + i * 8).load(Ordering::Acquire);
                let changed = old.and_then(|(_, words)| words.get(i as usize)) != Some(&now);
                let pa = self.base_pa + off + i * 8;
                if changed && !is_covered(&covered, pa, 8) {
                    missing.push(pa);
                }
            }
        }
        missing
    }

    fn snapshot_locked(&self, inner: &Inner) -> Snapshot {
        let pages = inner
            .live
            .iter()
            .map(|(&off, page)| {
                let words = (0..(1u64 << page.size_log2) / 8)
                    .map(|i| self.word(off + i * 8).load(Ordering::Acquire))
                    .collect();
                (off, (page.generation, words))
            })
            .collect();
        Snapshot { pages }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the books from the others.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The word at byte offset `off` of the buffer. `off` must be 8-aligned and inside the
    /// buffer; every caller derives it from a live page or from an allocation being set up.
    fn word(&self, off: u64) -> &AtomicU64 {
        debug_assert!(off % 8 == 0 && off < self.capacity);
        // SAFETY: `off` is 8-aligned and below `capacity` (callers derive it from pages inside the
        // buffer), the buffer is 1 MiB aligned, so the pointer is in bounds and aligned for
        // `AtomicU64`. The buffer lives as long as `self`, and all accesses to it, ours and the
        // engine's, are atomic or to pages the engine exclusively owns.
        unsafe { AtomicU64::from_ptr(self.buf.as_ptr().add(off as usize).cast::<u64>()) }
    }

    /// Fills a block that nobody else may access: being freed (its user gave it up, and no
    /// walker can reach it any more) or being handed out (not live yet).
    ///
    /// With plain writes, not atomic stores: the block may have held objects with atomics of
    /// other sizes (the C ABI builds units and contexts in pages, with 1- and 4-byte atomics
    /// inside). A plain write ends their lives; an 8-byte atomic store partially overlapping a
    /// smaller atomic is outside the C++20 model, and Miri's weak-memory emulation aborts on it
    /// ("cannot have partially overlapping store buffer when previous write was atomic").
    fn fill(&self, off: u64, size_log2: u32, value: u64) {
        debug_assert!(off % 8 == 0 && off + (1u64 << size_log2) <= self.capacity);
        let words = self.buf.as_ptr().wrapping_add(off as usize).cast::<u64>();
        for i in 0..(1usize << size_log2) / 8 {
            // SAFETY: the block lies inside the buffer (callers pass a block of the arena) and is
            // 8-aligned; nothing else accesses it meanwhile (see above), and every later access
            // happens after the arena's lock hands the block out again.
            unsafe { words.add(i).write(value) };
        }
    }

    /// Byte offset of the 8-aligned word `pa` if it lies in a live page.
    fn live_word(&self, pa: u64) -> Option<u64> {
        let off = self.offset_of(pa)?;
        (off % 8 == 0 && self.is_live(off)).then_some(off)
    }

    fn offset_of(&self, pa: u64) -> Option<u64> {
        pa.checked_sub(self.base_pa)
            .filter(|&off| off < self.capacity)
    }

    fn va_of(&self, off: u64) -> NonNull<u8> {
        // SAFETY: callers pass offsets inside the buffer, so the result stays in the allocation
        // and, being derived from a non-null pointer without wrapping, is non-null.
        unsafe { self.buf.add(off as usize) }
    }

    /// Takes a block of `1 << size_log2` bytes: a freed one of that size (oldest first), or a
    /// fresh one from the end. Returns its offset and whether it is fresh (never handed out, so
    /// still zero since the buffer was allocated or reset: nothing writes outside live pages).
    fn take_block(&self, inner: &mut Inner, size_log2: u32) -> Option<(u64, bool)> {
        let class = (size_log2 - MIN_PAGE_LOG2) as usize;
        if let Some(off) = inner.free_lists[class].pop_front() {
            inner.freed.remove(&off);
            return Some((off, false));
        }
        let size = 1u64 << size_log2;
        let off = inner.bump.checked_next_multiple_of(size)?;
        let end = off.checked_add(size).filter(|&end| end <= self.capacity)?;
        inner.bump = end;
        Some((off, true))
    }
}

impl Drop for Arena {
    fn drop(&mut self) {
        // SAFETY: `alloc` was allocated in `new` with exactly `layout` and is freed only here.
        unsafe { dealloc(self.alloc.as_ptr(), self.layout) }
    }
}

impl PhysMem for Arena {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let off = self.live_word(pa)?;
        Some(self.word(off).load(Ordering::Acquire))
    }

    fn read_words(&self, pa: u64, out: &mut [u64]) -> bool {
        let Some(off) = self.live_word(pa) else {
            return false;
        };
        let bytes = out.len() as u64 * 8;
        let Some(end) = off.checked_add(bytes).filter(|&end| end <= self.capacity) else {
            return false;
        };
        // Every frame the run touches must be live; a run inside one frame (a walker's chunk)
        // needs one more look.
        let last = end.saturating_sub(8).max(off);
        let frames = (off >> MIN_PAGE_LOG2)..=(last >> MIN_PAGE_LOG2);
        if !frames.into_iter().all(|f| self.is_live(f << MIN_PAGE_LOG2)) {
            return false;
        }
        // One pointer for the whole run (the checks of `word` per word made a walk's reads,
        // instrumented for fuzzing, a tenth of its time).
        let words = self.buf.as_ptr().wrapping_add(off as usize).cast::<u64>();
        for (i, w) in out.iter_mut().enumerate() {
            // SAFETY: `off..end` lies inside the buffer (checked above) and is 8-aligned, so
            // each word is in bounds and aligned for `AtomicU64`; accesses to table memory are
            // atomic (see `word`).
            *w = unsafe { AtomicU64::from_ptr(words.add(i)) }.load(Ordering::Acquire);
        }
        true
    }
}

// SAFETY: pages are carved from one buffer the arena owns for its whole life; a block is handed out
// by `take_block` only when it is not live (fresh, or taken off a free list that `free` fills only
// after removing it from `live`), is zero when returned (a fresh block was never written since
// `alloc_zeroed` or the last `reset`, a reused one is refilled), and is aligned to its size
// physically (base and offsets are size multiples) and virtually (the buffer is 1 MiB aligned).
// `phys_to_virt` answers only for live pages. Physical addresses are fake, which is the point: the
// only "hardware" is the reference walkers, which read through `PhysMem` with the same mapping.
unsafe impl PageAllocator for Arena {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        let mut inner = self.lock();
        let block =
            if (MIN_PAGE_LOG2..=MAX_PAGE_LOG2).contains(&size_log2) && !inner.injected_failure() {
                self.take_block(&mut inner, size_log2)
            } else {
                None
            };
        let Some((off, fresh)) = block else {
            inner.stats.failed_allocs += 1;
            return None;
        };
        if !fresh {
            // A reused block holds POISON.
            self.fill(off, size_log2, 0);
        }
        inner.generation += 1;
        let generation = inner.generation;
        inner.live.insert(
            off,
            LivePage {
                size_log2,
                generation,
            },
        );
        self.mark_frames(off, size_log2, true);
        let stats = &mut inner.stats;
        stats.allocs += 1;
        stats.live_pages += 1;
        stats.live_bytes += 1u64 << size_log2;
        stats.peak_live_pages = stats.peak_live_pages.max(stats.live_pages);
        stats.peak_live_bytes = stats.peak_live_bytes.max(stats.live_bytes);
        Some(Page {
            pa: PhysAddr::new(self.base_pa + off),
            va: self.va_of(off),
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let pa = page.pa.get();
        let mut inner = self.lock();
        let Some(off) = self.offset_of(pa) else {
            return inner.bad_free(pa, size_log2, BadFreeKind::Unknown);
        };
        let kind = match inner.live.get(&off) {
            Some(live) if live.size_log2 != size_log2 => BadFreeKind::SizeMismatch {
                allocated_log2: live.size_log2,
            },
            Some(_) if page.va != self.va_of(off) => BadFreeKind::WrongVirtual,
            Some(_) => {
                inner.live.remove(&off);
                self.mark_frames(off, size_log2, false);
                self.fill(off, size_log2, POISON);
                inner.freed.insert(off);
                inner.free_lists[(size_log2 - MIN_PAGE_LOG2) as usize].push_back(off);
                inner.stats.frees += 1;
                inner.stats.live_pages -= 1;
                inner.stats.live_bytes -= 1u64 << size_log2;
                return;
            }
            None if inner.freed.contains(&off) => BadFreeKind::DoubleFree,
            None => BadFreeKind::Unknown,
        };
        inner.bad_free(pa, size_log2, kind);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let off = self.offset_of(pa.get())?;
        self.is_live(off).then(|| self.va_of(off))
    }

    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        let off = (va.as_ptr() as usize)
            .checked_sub(self.buf.as_ptr() as usize)
            .map(|o| o as u64);
        let mut inner = self.lock();
        inner.stats.syncs += 1;
        let inside = off.and_then(|off| {
            let (start, page) = inner.page_containing(off)?;
            let end = off.checked_add(len as u64)?;
            (end <= start + (1u64 << page.size_log2)).then_some(off)
        });
        match inside {
            Some(off) => {
                let pa = self.base_pa + off;
                if let Some(log) = inner.sync_log.as_mut() {
                    log.push((pa, len as u64));
                }
            }
            None => inner.stats.syncs_outside_live += 1,
        }
    }
}

/// Sorts and merges (start, length) ranges into disjoint (start, end) intervals.
fn merge_ranges(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut sorted: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(pa, len)| (pa, pa.saturating_add(len)))
        .collect();
    sorted.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (start, end) in sorted {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

fn is_covered(merged: &[(u64, u64)], pa: u64, len: u64) -> bool {
    let i = merged.partition_point(|&(start, _)| start <= pa);
    i > 0 && merged[i - 1].1 >= pa.saturating_add(len)
}

#[cfg(test)]
mod tests;
