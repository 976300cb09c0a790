//! `spin`'s lock API over `loom`'s locks, for `--cfg loom` builds only (`sync.rs`).
//!
//! loom's locks cannot be built in a `const` (each is an object of the running model), and the
//! crate builds its locks in constants (`State::EMPTY`, the units' in-place constructors). So
//! each lock here is its data in an `UnsafeCell` beside a loom lock of `()` made on first use:
//! `new` stays `const`, and the loom lock is made inside the model, by the thread that first
//! takes it (making it is no scheduling point: no other thread runs meanwhile). loom then
//! schedules the threads at every acquisition and release and orders what they did under the
//! lock, as for its own `Mutex<T>`.
//!
//! `upgradeable_read` is modelled by the write lock: `spin`'s upgradeable guard shuts out new
//! readers and writers but lets readers already in finish, and its upgrade waits for them;
//! taking the write lock at once explores a subset of those interleavings (the readers in
//! flight finish before the guard's holder looks), never one `spin` forbids.

extern crate std;

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use std::sync::OnceLock;

/// `spin::Mutex` under loom.
pub(crate) struct Mutex<T: ?Sized> {
    lock: OnceLock<loom::sync::Mutex<()>>,
    data: UnsafeCell<T>,
}

// SAFETY: as `spin::Mutex` (and `std::sync::Mutex`): the data is reached only through a guard
// of the loom lock, so one thread at a time, and moving it across threads needs `T: Send`.
unsafe impl<T: ?Sized + Send> Sync for Mutex<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for Mutex<T> {}

impl<T> Mutex<T> {
    /// An unlocked mutex holding `data`.
    pub(crate) const fn new(data: T) -> Self {
        Self {
            lock: OnceLock::new(),
            data: UnsafeCell::new(data),
        }
    }

    /// The data, the lock consumed.
    pub(crate) fn into_inner(self) -> T {
        self.data.into_inner()
    }
}

impl<T: ?Sized> core::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Not the data: looking would take the lock, a scheduling point of the model.
        f.write_str("Mutex { .. }")
    }
}

impl<T: ?Sized> Mutex<T> {
    /// Takes the lock, loom switching to other threads while it is held elsewhere.
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        let lock = self.lock.get_or_init(|| loom::sync::Mutex::new(()));
        // A panic while a guard was held poisons the loom lock; the data stays usable, as
        // `spin`'s (which knows no poisoning).
        let guard = lock.lock().unwrap_or_else(|e| e.into_inner());
        MutexGuard {
            _guard: guard,
            data: &self.data,
        }
    }

    /// The lock if no other thread holds it, else `None` at once.
    // Only the units' unit tests try a lock, and they do not build under loom.
    #[allow(dead_code)]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let lock = self.lock.get_or_init(|| loom::sync::Mutex::new(()));
        let guard = match lock.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(MutexGuard {
            _guard: guard,
            data: &self.data,
        })
    }

    /// The data, through the exclusive borrow of the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// `spin::MutexGuard` under loom: the loom guard and the data it lets in.
pub(crate) struct MutexGuard<'a, T: ?Sized> {
    _guard: loom::sync::MutexGuard<'a, ()>,
    data: &'a UnsafeCell<T>,
}

impl<T: ?Sized> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the loom lock is held for the guard's life: no other reference to the data.
        unsafe { &*self.data.get() }
    }
}

impl<T: ?Sized> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` borrows the guard exclusively.
        unsafe { &mut *self.data.get() }
    }
}

/// `spin::RwLock` under loom.
pub(crate) struct RwLock<T: ?Sized> {
    lock: OnceLock<loom::sync::RwLock<()>>,
    data: UnsafeCell<T>,
}

// SAFETY: as `spin::RwLock` (and `std::sync::RwLock`): readers share `&T` across threads
// (`T: Sync`), a writer gets `&mut T` from any thread (`T: Send`), and only through a guard of
// the loom lock.
unsafe impl<T: ?Sized + Send + Sync> Sync for RwLock<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Send> Send for RwLock<T> {}

impl<T> RwLock<T> {
    /// An unlocked lock holding `data`.
    pub(crate) const fn new(data: T) -> Self {
        Self {
            lock: OnceLock::new(),
            data: UnsafeCell::new(data),
        }
    }
}

impl<T: ?Sized> RwLock<T> {
    fn loom(&self) -> &loom::sync::RwLock<()> {
        self.lock.get_or_init(|| loom::sync::RwLock::new(()))
    }

    /// Shared access, beside other readers.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, T> {
        let guard = self.loom().read().unwrap_or_else(|e| e.into_inner());
        RwLockReadGuard {
            _guard: guard,
            data: &self.data,
        }
    }

    /// Exclusive access.
    pub(crate) fn write(&self) -> RwLockWriteGuard<'_, T> {
        let guard = self.loom().write().unwrap_or_else(|e| e.into_inner());
        RwLockWriteGuard {
            _guard: guard,
            data: &self.data,
        }
    }

    /// Exclusive access if no other thread holds the lock, else `None` at once.
    pub(crate) fn try_write(&self) -> Option<RwLockWriteGuard<'_, T>> {
        let guard = match self.loom().try_write() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(RwLockWriteGuard {
            _guard: guard,
            data: &self.data,
        })
    }

    /// Read access that can become exclusive: the write lock at once (module docs).
    pub(crate) fn upgradeable_read(&self) -> RwLockUpgradableGuard<'_, T> {
        RwLockUpgradableGuard {
            write: self.write(),
        }
    }

    /// The data, through the exclusive borrow of the lock.
    pub(crate) fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

/// `spin::RwLockReadGuard` under loom.
pub(crate) struct RwLockReadGuard<'a, T: ?Sized> {
    _guard: loom::sync::RwLockReadGuard<'a, ()>,
    data: &'a UnsafeCell<T>,
}

impl<T: ?Sized> Deref for RwLockReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the loom read lock is held for the guard's life: no writer meanwhile.
        unsafe { &*self.data.get() }
    }
}

/// `spin::RwLockWriteGuard` under loom.
pub(crate) struct RwLockWriteGuard<'a, T: ?Sized> {
    _guard: loom::sync::RwLockWriteGuard<'a, ()>,
    data: &'a UnsafeCell<T>,
}

impl<T: ?Sized> Deref for RwLockWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the loom write lock is held for the guard's life: no other reference.
        unsafe { &*self.data.get() }
    }
}

impl<T: ?Sized> DerefMut for RwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` borrows the guard exclusively.
        unsafe { &mut *self.data.get() }
    }
}

/// `spin::RwLockUpgradableGuard` under loom: a write guard (module docs).
pub(crate) struct RwLockUpgradableGuard<'a, T: ?Sized> {
    write: RwLockWriteGuard<'a, T>,
}

impl<'a, T: ?Sized> RwLockUpgradableGuard<'a, T> {
    /// Exclusive access: already held.
    pub(crate) fn upgrade(self) -> RwLockWriteGuard<'a, T> {
        self.write
    }
}

impl<T: ?Sized> Deref for RwLockUpgradableGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.write
    }
}
