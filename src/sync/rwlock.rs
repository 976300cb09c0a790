//! A spinning reader-writer lock whose writers go before readers that arrive after them.
//!
//! `spin::RwLock` lets a reader in whenever no writer holds the lock: readers whose critical
//! sections overlap (every CPU mapping or unmapping in one domain, every vCPU mapping in one
//! IOASID) keep a writer (a dirty-tracking switch, a table count, a detach) spinning for as long
//! as they keep coming. Here a writer first announces itself (a count of waiting writers in the
//! lock word); readers that find one waiting wait behind it, so a writer waits only for the
//! readers already inside, as Linux's queued rwlocks do outside interrupt context.
//!
//! The price is the one every writer-fair lock has: a CPU that holds the lock for reading and
//! asks for it again (for reading, or for an upgradeable read) waits for a writer that waits for
//! it. The crate never does (debug builds with `std`, so every test, check each acquisition
//! against a per-thread record); callbacks run under a lock (dirty-bit sinks) must not call back into the
//! object that holds it (ARCHITECTURE.md, "Concurrency").
//!
//! The lock word, one `AtomicUsize`: bit 0 a writer holds it, bit 1 an upgradeable reader holds
//! it, bits 15:2 the writers (and upgrading readers) waiting, the bits above the readers inside.
//! Same API as the part of `spin`'s the crate used, so `sync.rs` swaps one for the other.
//!
//! Under `--cfg loom` the word is loom's `AtomicUsize` and a waiter's spin is loom's
//! `spin_loop` (a yield: loom switches to the holder), so `tests/loom_lock.rs` model-checks
//! this algorithm; the crate's other locks are loom's own there (`sync.rs`). Normal builds keep
//! `core`'s atomic and spin hint: the same code as before.

use core::cell::UnsafeCell;
#[cfg(not(loom))]
use core::hint::spin_loop;
use core::ops::{Deref, DerefMut};
#[cfg(not(loom))]
use core::sync::atomic::{AtomicUsize, Ordering};
#[cfg(loom)]
use loom::sync::atomic::{AtomicUsize, Ordering};

const WRITER: usize = 1;
const UPGRADED: usize = 1 << 1;
const WAITER: usize = 1 << 2;
const WAITERS: usize = 0x3FFF << 2;
const READER: usize = 1 << 16;

/// Readers may enter only when none of these is set: a writer inside, an upgradeable reader
/// inside (it may be upgrading, as `spin`'s), a writer waiting.
const NO_READERS: usize = WRITER | UPGRADED | WAITERS;

/// A reader-writer spin lock; see the module documentation.
pub struct RwLock<T: ?Sized> {
    word: AtomicUsize,
    data: UnsafeCell<T>,
}

// SAFETY: as `spin::RwLock` (and `std::sync::RwLock`): readers share `&T` across threads
// (`T: Sync`), a writer gets `&mut T` from any thread (`T: Send`), and only through a guard.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unlocked lock holding `data`.
    #[cfg(not(loom))]
    pub const fn new(data: T) -> Self {
        Self {
            word: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }

    /// An unlocked lock holding `data` (loom's atomics have no `const` `new`).
    #[cfg(loom)]
    pub fn new(data: T) -> Self {
        Self {
            word: AtomicUsize::new(0),
            data: UnsafeCell::new(data),
        }
    }
}

impl<T: ?Sized> RwLock<T> {
    /// Shared access, beside other readers; after every writer already waiting.
    pub fn read(&self) -> RwLockReadGuard<'_, T> {
        held::acquire(self.addr());
        loop {
            // One locked instruction when nobody writes, as `spin`'s: count in, then look.
            if self.word.fetch_add(READER, Ordering::Acquire) & NO_READERS == 0 {
                return RwLockReadGuard { lock: self };
            }
            self.word.fetch_sub(READER, Ordering::Relaxed);
            while self.word.load(Ordering::Relaxed) & NO_READERS != 0 {
                spin_loop();
            }
        }
    }

    /// Exclusive access, once the readers inside have left; readers arriving meanwhile wait.
    pub fn write(&self) -> RwLockWriteGuard<'_, T> {
        held::acquire(self.addr());
        self.word.fetch_add(WAITER, Ordering::Relaxed);
        self.take_write(WAITER);
        RwLockWriteGuard { lock: self }
    }

    /// Exclusive access if nobody holds the lock, else `None` at once.
    pub fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let word = self.word.load(Ordering::Relaxed);
        if !Self::free_for_writer(word) {
            return None;
        }
        self.word
            .compare_exchange(word, word | WRITER, Ordering::Acquire, Ordering::Relaxed)
            .ok()?;
        held::acquire(self.addr());
        Some(RwLockWriteGuard { lock: self })
    }

    /// Read access that can become exclusive ([`RwLockUpgradableGuard::upgrade`]): beside
    /// readers already inside, one at a time, after every writer already waiting.
    pub fn upgradeable_read(&self) -> RwLockUpgradableGuard<'_, T> {
        held::acquire(self.addr());
        loop {
            let word = self.word.load(Ordering::Relaxed);
            if word & NO_READERS == 0
                && self
                    .word
                    .compare_exchange_weak(
                        word,
                        word | UPGRADED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return RwLockUpgradableGuard { lock: self };
            }
            spin_loop();
        }
    }

    /// The data, through the exclusive borrow of the lock.
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }

    /// Spins until no writer or upgradeable reader holds the lock and no reader is inside, then
    /// takes it, giving back `give_back` (the caller's waiting count, and its upgradeable bit).
    fn take_write(&self, give_back: usize) {
        let mine = give_back & UPGRADED;
        loop {
            let word = self.word.load(Ordering::Relaxed);
            if Self::free_for_writer(word & !mine)
                && self
                    .word
                    .compare_exchange_weak(
                        word,
                        word - give_back + WRITER,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            {
                return;
            }
            spin_loop();
        }
    }

    fn free_for_writer(word: usize) -> bool {
        word & (WRITER | UPGRADED) == 0 && word < READER
    }

    fn addr(&self) -> usize {
        (self as *const Self).cast::<u8>() as usize
    }

    /// How many writers (and upgrading readers) wait: a test's view of the lock word.
    #[cfg(any(test, loom))]
    pub fn waiting_writers(&self) -> usize {
        (self.word.load(Ordering::Relaxed) & WAITERS) / WAITER
    }
}

/// Shared access; the lock is released on drop.
pub struct RwLockReadGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

/// Exclusive access; the lock is released on drop.
pub struct RwLockWriteGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

/// Read access that [`upgrade`](Self::upgrade) makes exclusive; released on drop.
pub struct RwLockUpgradableGuard<'a, T: ?Sized> {
    lock: &'a RwLock<T>,
}

impl<'a, T: ?Sized> RwLockUpgradableGuard<'a, T> {
    /// Exclusive access, once the readers inside have left; readers arriving meanwhile wait.
    pub fn upgrade(self) -> RwLockWriteGuard<'a, T> {
        let lock = self.lock;
        core::mem::forget(self);
        lock.word.fetch_add(WAITER, Ordering::Relaxed);
        lock.take_write(WAITER | UPGRADED);
        RwLockWriteGuard { lock }
    }
}

impl<T: ?Sized> Drop for RwLockReadGuard<'_, T> {
    fn drop(&mut self) {
        held::release(self.lock.addr());
        self.lock.word.fetch_sub(READER, Ordering::Release);
    }
}

impl<T: ?Sized> Drop for RwLockWriteGuard<'_, T> {
    fn drop(&mut self) {
        held::release(self.lock.addr());
        self.lock.word.fetch_sub(WRITER, Ordering::Release);
    }
}

impl<T: ?Sized> Drop for RwLockUpgradableGuard<'_, T> {
    fn drop(&mut self) {
        held::release(self.lock.addr());
        self.lock.word.fetch_sub(UPGRADED, Ordering::Release);
    }
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a reader is counted in the lock word for the guard's life: no writer.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for RwLockUpgradableGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the upgradeable bit is set for the guard's life: no writer.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer bit is set for the guard's life: no other guard.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` borrows the guard exclusively.
        unsafe { &mut *self.lock.data.get() }
    }
}

/// A waiter's pause under loom: a yield, so loom runs another thread (the holder). loom also
/// explores schedules no CPU runs, where waiters only yield to one another for ever while the
/// holder never runs: after `LOOM_PAUSES` pauses of one thread in one execution, the rest of that
/// execution is not explored (`loom::skip_branch`) and takes loom's default schedule, which runs
/// the thread that yielded least. A waiter that nothing will let in still spins for ever there,
/// and loom fails the scenario (its branch bound): a guard that did not release is still caught.
#[cfg(loom)]
fn spin_loop() {
    const LOOM_PAUSES: u32 = 4;
    loom::thread_local! {
        static PAUSES: core::cell::Cell<u32> = core::cell::Cell::new(0);
    }
    if PAUSES.with(|p| {
        p.set(p.get() + 1);
        p.get() > LOOM_PAUSES
    }) {
        loom::skip_branch();
    }
    loom::hint::spin_loop();
}

/// Debug builds with `std` (the crate's tests, the host models') record, per thread, the locks
/// it holds, and fail an acquisition of a lock the thread already holds: with writers first,
/// such a CPU would wait for a writer that waits for it. Other builds record nothing, and so
/// does loom's (its threads share one thread-local).
#[cfg(all(feature = "std", debug_assertions, not(loom)))]
mod held {
    use std::cell::RefCell;
    use std::vec::Vec;

    std::thread_local! {
        static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn acquire(lock: usize) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            assert!(
                !h.contains(&lock),
                "this thread already holds the lock at {lock:#x}"
            );
            h.push(lock);
        });
    }

    pub(super) fn release(lock: usize) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&l| l == lock) {
                h.swap_remove(i);
            }
        });
    }
}

#[cfg(not(all(feature = "std", debug_assertions, not(loom))))]
mod held {
    #[inline(always)]
    pub(super) fn acquire(_lock: usize) {}
    #[inline(always)]
    pub(super) fn release(_lock: usize) {}
}
