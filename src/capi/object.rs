//! Objects the C ABI hands out, placed in pages from the embedder's allocator (the crate has no
//! heap). Each starts with a header holding the allocator and a count of the objects that borrow
//! it, so that destroying an object something still uses fails with `Busy` instead of leaving a
//! dangling reference. The header also holds a tag naming the object's type, checked on every
//! handle and cleared by destroy: a handle of the wrong type (a cast in C), or one destroyed
//! twice while its page has not been reused, is refused with `IE_STATUS_INVALID_ARGUMENT` rather
//! than reinterpreted. The check is a backstop, not a guarantee: a destroyed handle stays invalid
//! to use.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::ioasid::PasidAllocator;
use crate::mem::{Page, PageAllocator};

use super::env::CEnv;
use super::status::IeStatus;

/// Smallest page the embedder hands out.
const MIN_PAGE_LOG2: u32 = 12;
/// Largest page the embedder must hand out (the `PageAllocator` contract).
const MAX_PAGE_LOG2: u32 = 20;

/// A type the C ABI hands out as a handle, with the tag its objects carry while alive.
pub(super) trait Tagged {
    /// Eight bytes no other handle type uses, never 0.
    const TAG: u64;
}

/// The tag of a destroyed object (and of a page that held none).
const DEAD: u64 = 0;

/// An object of type `T` in its own page.
#[repr(C)]
pub(super) struct Obj<T> {
    /// `T::TAG` while the object is alive; first, so that checking it reads nothing else.
    tag: AtomicU64,
    env: CEnv,
    page: Page,
    size_log2: u32,
    /// Objects that hold a reference to this one.
    users: AtomicU32,
    pub(super) value: T,
}

impl<T: Tagged> Obj<T> {
    /// Has `make` write the value into a new page from `env`: the page is taken first, so that
    /// the value can be built straight into it rather than moved through the stack once more
    /// (large values: a context is tens of KiB). `make` receives a writable, aligned, uninitialised
    /// slot and must have written a whole `T` when it returns `Ok`; if it fails, the page goes
    /// back.
    pub(super) fn create_with(
        env: CEnv,
        make: impl FnOnce(*mut T) -> Result<(), IeStatus>,
    ) -> Result<NonNull<Self>, IeStatus> {
        let size_log2 = page_log2_for::<Self>().ok_or(IeStatus::NoMemory)?;
        let page = env.alloc(size_log2).ok_or(IeStatus::NoMemory)?;
        let obj = page.va.cast::<Self>();
        let ptr = obj.as_ptr();
        // SAFETY: the page is at least `size_of::<Self>()` bytes, aligned to its size (which is
        // at least 4 KiB, and at least `align_of::<Self>()`: `page_log2_for`), and ours alone.
        // Every field is written once before the object is handed out; the tag last, so that
        // nothing takes a half-built object for a live one.
        unsafe {
            if let Err(e) = make(core::ptr::addr_of_mut!((*ptr).value)) {
                env.free(page, size_log2);
                return Err(e);
            }
            core::ptr::addr_of_mut!((*ptr).env).write(env);
            core::ptr::addr_of_mut!((*ptr).page).write(page);
            core::ptr::addr_of_mut!((*ptr).size_log2).write(size_log2);
            core::ptr::addr_of_mut!((*ptr).users).write(AtomicU32::new(0));
            core::ptr::addr_of_mut!((*ptr).tag).write(AtomicU64::new(T::TAG));
        }
        Ok(obj)
    }

    /// Counts one more user of this object.
    pub(super) fn acquire(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// Counts this object's only user: `false` (nothing counted) if it has one already. A
    /// unit takes one registry at most (two registries driving one unit would each write its
    /// context entries and STEs: a device bound in one could be attached by the other).
    pub(super) fn acquire_sole(&self) -> bool {
        self.users
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Counts one user less.
    pub(super) fn release(&self) {
        self.users.fetch_sub(1, Ordering::AcqRel);
    }

    /// The allocator the object came from.
    pub(super) fn env(&self) -> &CEnv {
        &self.env
    }

    /// Drops the object and returns its page, unless something still uses it.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Obj::create`] and is not used again after this returns `Ok`.
    pub(super) unsafe fn destroy(ptr: NonNull<Self>) -> Result<(), IeStatus> {
        // SAFETY: the caller guarantees `ptr` is a live object.
        let obj = unsafe { ptr.as_ref() };
        obj.claim()?;
        let (env, page, size_log2) = (obj.env, obj.page, obj.size_log2);
        // SAFETY: the object is live and nobody uses it any more (the caller's contract and the
        // count above); it is dropped once, then its page returned.
        unsafe {
            core::ptr::drop_in_place(ptr.as_ptr());
            env.free(page, size_log2);
        }
        Ok(())
    }
}

impl<T: Tagged> Obj<T> {
    /// Marks the object destroyed, unless something uses it (`Busy`) or another destroy got
    /// there first (`InvalidArgument`).
    fn claim(&self) -> Result<(), IeStatus> {
        if self.users.load(Ordering::Acquire) != 0 {
            return Err(IeStatus::Busy);
        }
        self.tag
            .compare_exchange(T::TAG, DEAD, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
            .map_err(|_| IeStatus::InvalidArgument)
    }

    /// Has `finish` consume the object where it lies (or fail, and the object stays as it
    /// was), then returns the page; refused while something uses it. Nothing is moved: a unit
    /// is released in its page, not through the stack.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Obj::create`] and is not used again after this returns `Ok`.
    /// `finish` receives the live value, unshared; when it returns `Ok` it has consumed it
    /// (the value is not dropped again), when it returns `Err` it left it live and whole.
    pub(super) unsafe fn destroy_in_place(
        ptr: NonNull<Self>,
        finish: impl FnOnce(NonNull<T>) -> Result<(), IeStatus>,
    ) -> Result<(), IeStatus> {
        // SAFETY: the caller guarantees `ptr` is a live object.
        unsafe { ptr.as_ref() }.claim()?;
        // SAFETY: `ptr` is live (the caller's contract); no reference to the value is held,
        // and the claim above keeps every other destroy away from it.
        let value =
            unsafe { NonNull::new_unchecked(core::ptr::addr_of_mut!((*ptr.as_ptr()).value)) };
        match finish(value) {
            Ok(()) => {
                // The header is read only now, not kept in this frame over `finish` (a
                // context's teardown runs there, on a kernel stack).
                // SAFETY: `finish` consumed the value alone; the header is intact.
                let obj = unsafe { ptr.as_ref() };
                let (env, page, size_log2) = (obj.env, obj.page, obj.size_log2);
                // SAFETY: the value was consumed, the other fields need no drop; the page is
                // ours and unused now.
                unsafe { env.free(page, size_log2) };
                Ok(())
            }
            Err(status) => {
                // SAFETY: `finish` left the object whole; it is live again.
                unsafe { ptr.as_ref() }.tag.store(T::TAG, Ordering::Release);
                Err(status)
            }
        }
    }
}

/// The smallest page order that holds a `T` (`None` above the largest page the embedder
/// must hand out: the object types assert at compile time that they fit).
pub(super) const fn page_log2_for<T>() -> Option<u32> {
    let size = if size_of::<T>() > align_of::<T>() {
        size_of::<T>()
    } else {
        align_of::<T>()
    };
    let mut log2 = MIN_PAGE_LOG2;
    while log2 <= MAX_PAGE_LOG2 {
        if size <= 1 << log2 {
            return Some(log2);
        }
        log2 += 1;
    }
    None
}

/// Checks a C handle: not NULL, aligned (every handle is: it starts its page), and tagged as
/// a live `T`.
///
/// # Safety
///
/// `ptr` is NULL, misaligned, or a live handle the crate returned (of any type: the tag tells
/// them apart).
pub(super) unsafe fn checked<T: Tagged>(ptr: *mut Obj<T>) -> Result<NonNull<Obj<T>>, IeStatus> {
    let ptr = super::checked_ptr(ptr)?;
    // SAFETY: not NULL and aligned (checked); every handle starts with the tag (`repr(C)`,
    // first field), whatever its type; only the tag is read before it has been checked.
    let tag = unsafe { &*core::ptr::addr_of!((*ptr.as_ptr()).tag) };
    if tag.load(Ordering::Acquire) != T::TAG {
        return Err(IeStatus::InvalidArgument);
    }
    Ok(ptr)
}

/// Borrows the object behind a C handle.
///
/// # Safety
///
/// As for [`checked`].
pub(super) unsafe fn handle<'h, T: Tagged>(ptr: *mut Obj<T>) -> Result<&'h Obj<T>, IeStatus> {
    // SAFETY: the caller's contract; `checked` saw a live `T`.
    unsafe { checked(ptr).map(|p| p.as_ref()) }
}

/// The system's PASID allocator, built in place in a zeroed page of its own: its 128 KiB bitmap
/// never passes through the stack.
pub(super) struct PasidPage {
    env: CEnv,
    page: Page,
    size_log2: u32,
}

impl PasidPage {
    /// An allocator of `bits`-bit PASIDs in a new page from `env`.
    pub(super) fn new(env: CEnv, bits: u32) -> Result<Self, IeStatus> {
        let size_log2 = page_log2_for::<PasidAllocator>().ok_or(IeStatus::NoMemory)?;
        let page = env.alloc(size_log2).ok_or(IeStatus::NoMemory)?;
        // SAFETY: the page is zeroed, ours, aligned to its size (more than the allocator's
        // alignment) and large enough.
        unsafe { PasidAllocator::init_zeroed(page.va.cast(), bits) };
        Ok(Self {
            env,
            page,
            size_log2,
        })
    }

    /// The allocator; it stays where it is until `self` is dropped.
    pub(super) fn allocator(&self) -> &PasidAllocator {
        // SAFETY: initialised in `new`, alive until `drop`.
        unsafe { self.page.va.cast::<PasidAllocator>().as_ref() }
    }
}

impl Drop for PasidPage {
    fn drop(&mut self) {
        // SAFETY: the page came from `env.alloc(size_log2)`; whoever borrowed the allocator
        // (the registry) was dropped before this (field order in `RegistryObj`).
        unsafe { self.env.free(self.page, self.size_log2) };
    }
}
