//! Objects the C ABI hands out, placed in pages from the embedder's allocator (the crate has no
//! heap). Each starts with a header holding the allocator and a count of the objects that borrow
//! it, so that destroying an object something still uses fails with `Busy` instead of leaving a
//! dangling reference.

use core::mem::{align_of, size_of};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::ioasid::PasidAllocator;
use crate::mem::{Page, PageAllocator};

use super::env::CEnv;
use super::status::IeStatus;

/// Smallest page the embedder hands out.
const MIN_PAGE_LOG2: u32 = 12;
/// Largest page the embedder must hand out (the `PageAllocator` contract).
const MAX_PAGE_LOG2: u32 = 20;

/// An object of type `T` in its own page.
#[repr(C)]
pub(super) struct Obj<T> {
    env: CEnv,
    page: Page,
    size_log2: u32,
    /// Objects that hold a reference to this one.
    users: AtomicU32,
    pub(super) value: T,
}

impl<T> Obj<T> {
    /// Moves `value` into a new page from `env`.
    pub(super) fn create(env: CEnv, value: T) -> Result<NonNull<Self>, IeStatus> {
        let size_log2 = page_log2_for::<Self>().ok_or(IeStatus::NoMemory)?;
        let page = env.alloc(size_log2).ok_or(IeStatus::NoMemory)?;
        let ptr = page.va.cast::<Self>();
        // SAFETY: the page is at least `size_of::<Self>()` bytes, aligned to its size (which is
        // at least 4 KiB, more than `align_of::<Self>()`), and ours alone.
        unsafe {
            ptr.as_ptr().write(Obj {
                env,
                page,
                size_log2,
                users: AtomicU32::new(0),
                value,
            })
        };
        Ok(ptr)
    }

    /// Counts one more user of this object.
    pub(super) fn acquire(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
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
        if obj.users.load(Ordering::Acquire) != 0 {
            return Err(IeStatus::Busy);
        }
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

impl<T> Obj<T> {
    /// Moves the object out to `finish`, which consumes it (or hands it back with an error, and
    /// the object stays as it was), then returns the page; refused while something uses it.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Obj::create`] and is not used again after this returns `Ok`.
    pub(super) unsafe fn destroy_with(
        ptr: NonNull<Self>,
        finish: impl FnOnce(T) -> Result<(), (T, IeStatus)>,
    ) -> Result<(), IeStatus> {
        // SAFETY: the caller guarantees `ptr` is a live object.
        let obj = unsafe { ptr.as_ref() };
        if obj.users.load(Ordering::Acquire) != 0 {
            return Err(IeStatus::Busy);
        }
        let (env, page, size_log2) = (obj.env, obj.page, obj.size_log2);
        // SAFETY: `ptr` is live (the caller's contract); no reference to the value is held.
        let value_ptr = unsafe { core::ptr::addr_of_mut!((*ptr.as_ptr()).value) };
        // SAFETY: the value is live; it is either consumed by `finish` or written back below,
        // so it is never dropped twice nor used after the move.
        let value = unsafe { value_ptr.read() };
        match finish(value) {
            Ok(()) => {
                // SAFETY: the other fields need no drop; the page is ours and unused now.
                unsafe { env.free(page, size_log2) };
                Ok(())
            }
            Err((value, status)) => {
                // SAFETY: puts back the value moved out above.
                unsafe { value_ptr.write(value) };
                Err(status)
            }
        }
    }
}

/// The smallest page order that holds a `T`.
const fn page_log2_for<T>() -> Option<u32> {
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

/// Borrows the object behind a C handle.
///
/// # Safety
///
/// `ptr` is NULL or a live handle of type `T` the crate returned.
pub(super) unsafe fn handle<'h, T>(ptr: *mut Obj<T>) -> Result<&'h Obj<T>, IeStatus> {
    // SAFETY: the caller guarantees `ptr` is null or live.
    unsafe { ptr.as_ref() }.ok_or(IeStatus::InvalidArgument)
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
