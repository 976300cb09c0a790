//! The embedder's services as C function pointers: pages, address translation, cache
//! maintenance ([`IeEnv`]) and register access ([`IeRegs`]).

use core::ffi::c_void;
use core::ptr::NonNull;

use crate::mem::{Page, PageAllocator, PhysAddr};
use crate::mmio::{Mmio, RegisterWindow};

use super::status::IeStatus;

/// Returns a zeroed page of `1 << size_log2` bytes aligned to its size, stores its physical
/// address in `*pa`, and returns its CPU address; NULL when out of memory.
pub(super) type IeAllocPageFn =
    unsafe extern "C" fn(ctx: *mut c_void, size_log2: u32, pa: *mut u64) -> *mut c_void;
/// Takes back a page `alloc_page(size_log2)` returned.
pub(super) type IeFreePageFn =
    unsafe extern "C" fn(ctx: *mut c_void, va: *mut c_void, pa: u64, size_log2: u32);
/// The CPU address of physical address `pa` inside a live page; NULL outside every live page.
pub(super) type IePhysToVirtFn = unsafe extern "C" fn(ctx: *mut c_void, pa: u64) -> *mut c_void;
/// Cache maintenance over `len` bytes at `va` (clean for the device, or invalidate for the CPU).
pub(super) type IeSyncFn = unsafe extern "C" fn(ctx: *mut c_void, va: *mut c_void, len: usize);

/// The memory services an embedder lends to the crate.
///
/// Every function is called with `ctx`, from whichever thread calls into the crate, and may be
/// called with the crate's own locks held. Those are spin locks that disable neither preemption
/// nor interrupts: a function must be safe to call concurrently, must not sleep (Linux: no
/// `GFP_KERNEL`; `GFP_ATOMIC` or `GFP_NOWAIT`, with `__GFP_ZERO`), since a holder that sleeps
/// leaves every other caller spinning, and must not call into the library (its locks are not
/// re-entrant: a call on the same unit, registry or context deadlocks). The same holds for the
/// `IeRegs` accessor functions.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeEnv {
    /// Passed to every function.
    pub ctx: *mut c_void,
    /// Required: page allocation (4 KiB up to 1 MiB, zeroed, size-aligned).
    pub alloc_page:
        Option<unsafe extern "C" fn(ctx: *mut c_void, size_log2: u32, pa: *mut u64) -> *mut c_void>,
    /// Required: page release.
    pub free_page:
        Option<unsafe extern "C" fn(ctx: *mut c_void, va: *mut c_void, pa: u64, size_log2: u32)>,
    /// Required: physical to CPU address, for pages from `alloc_page`.
    pub phys_to_virt: Option<unsafe extern "C" fn(ctx: *mut c_void, pa: u64) -> *mut c_void>,
    /// Optional (NULL: nothing to do): clean `len` bytes of table memory to the point of
    /// coherency for a walker that does not snoop CPU caches.
    pub sync_for_device:
        Option<unsafe extern "C" fn(ctx: *mut c_void, va: *mut c_void, len: usize)>,
    /// Optional (NULL: nothing to do): invalidate `len` bytes a non-snooping device wrote.
    pub sync_for_cpu: Option<unsafe extern "C" fn(ctx: *mut c_void, va: *mut c_void, len: usize)>,
}

/// A validated [`IeEnv`]: the [`PageAllocator`] the crate's objects use.
#[derive(Clone, Copy, Debug)]
pub struct CEnv {
    ctx: *mut c_void,
    alloc_page: IeAllocPageFn,
    free_page: IeFreePageFn,
    phys_to_virt: IePhysToVirtFn,
    sync_for_device: Option<IeSyncFn>,
    sync_for_cpu: Option<IeSyncFn>,
}

// SAFETY: the header documents that the functions of an `IeEnv` are callable from any thread
// concurrently; `ctx` is only passed back to them.
unsafe impl Send for CEnv {}
// SAFETY: as above.
unsafe impl Sync for CEnv {}

impl CEnv {
    /// Checks that the required functions are present.
    ///
    /// # Safety
    ///
    /// `env` is NULL, misaligned (both refused), or points to a readable `IeEnv` whose
    /// functions honour the contract in the header (the one of [`PageAllocator`]).
    pub unsafe fn from_raw(env: *const IeEnv) -> Result<Self, IeStatus> {
        // SAFETY: the caller guarantees `env` is NULL, misaligned or readable.
        let env = unsafe { super::input(env) }?;
        match (env.alloc_page, env.free_page, env.phys_to_virt) {
            (Some(alloc_page), Some(free_page), Some(phys_to_virt)) => Ok(Self {
                ctx: env.ctx,
                alloc_page,
                free_page,
                phys_to_virt,
                sync_for_device: env.sync_for_device,
                sync_for_cpu: env.sync_for_cpu,
            }),
            _ => Err(IeStatus::InvalidArgument),
        }
    }
}

// SAFETY: forwards to the embedder's functions, which the header requires to honour the
// `PageAllocator` contract; a page whose address is misaligned is refused here as a double check.
//
// None of the methods is inlined: an indirect call inside them is then known to be the
// embedder's (tests/linux_module.rs counts calls out of the object as leaving it, and an
// indirect call elsewhere in the IOASID layer or the C ABI as one that may reach any method
// of a vtable).
unsafe impl PageAllocator for CEnv {
    #[inline(never)]
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        // No page is as large as the address space: refuse rather than shift out of range.
        let align = 1usize.checked_shl(size_log2)?;
        let mut pa = 0u64;
        // SAFETY: `pa` is a valid out-parameter; the function follows the header's contract.
        let va = unsafe { (self.alloc_page)(self.ctx, size_log2, &mut pa) };
        let va = NonNull::new(va.cast::<u8>())?;
        let pa = PhysAddr::new(pa);
        if !pa.is_aligned(size_log2) || (va.as_ptr() as usize) % align != 0 {
            // SAFETY: the page came from `alloc_page(size_log2)` and nothing references it.
            unsafe { (self.free_page)(self.ctx, va.as_ptr().cast(), pa.get(), size_log2) };
            return None;
        }
        Some(Page { pa, va })
    }

    #[inline(never)]
    unsafe fn free(&self, page: Page, size_log2: u32) {
        // SAFETY: the caller gives back a page `alloc(size_log2)` returned.
        unsafe { (self.free_page)(self.ctx, page.va.as_ptr().cast(), page.pa.get(), size_log2) }
    }

    #[inline(never)]
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        // SAFETY: the function follows the header's contract and only computes an address.
        NonNull::new(unsafe { (self.phys_to_virt)(self.ctx, pa.get()) }.cast())
    }

    #[inline(never)]
    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        if let Some(f) = self.sync_for_device {
            // SAFETY: `va..va + len` is table memory of a live page the crate just wrote.
            unsafe { f(self.ctx, va.as_ptr().cast(), len) }
        }
    }

    #[inline(never)]
    fn sync_for_cpu(&self, va: NonNull<u8>, len: usize) {
        if let Some(f) = self.sync_for_cpu {
            // SAFETY: `va..va + len` is memory of a live page the device wrote.
            unsafe { f(self.ctx, va.as_ptr().cast(), len) }
        }
    }
}

/// Reads a 32-bit register at byte offset `off`.
pub(super) type IeRead32Fn = unsafe extern "C" fn(ctx: *mut c_void, off: usize) -> u32;
/// Writes a 32-bit register at byte offset `off`.
pub(super) type IeWrite32Fn = unsafe extern "C" fn(ctx: *mut c_void, off: usize, value: u32);
/// Reads a 64-bit register at byte offset `off`.
pub(super) type IeRead64Fn = unsafe extern "C" fn(ctx: *mut c_void, off: usize) -> u64;
/// Writes a 64-bit register at byte offset `off`.
pub(super) type IeWrite64Fn = unsafe extern "C" fn(ctx: *mut c_void, off: usize, value: u64);

/// A unit's register window: either mapped MMIO (`base` non-NULL: the crate accesses it with
/// single loads and stores) or four accessor functions (`base` NULL), e.g. for a hypervisor
/// that traps or a model. The functions are called as those of `IeEnv` are: from any thread,
/// with the library's spin locks held, so they must not sleep nor call into the library.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeRegs {
    /// CPU address of the registers, mapped as device memory; NULL to use the functions.
    /// Aligned to 8 bytes (the widest register access, a single 64-bit load or store, is then
    /// aligned wherever the register is); a misaligned base is refused with
    /// `IE_STATUS_INVALID_ARGUMENT`.
    pub base: *mut c_void,
    /// Length of the mapped window in bytes (VT-d: 4 KiB at least; SMMUv3: 128 KiB, pages 0
    /// and 1); a shorter one is refused. Ignored for accessor functions.
    pub len: usize,
    /// Passed to the functions.
    pub ctx: *mut c_void,
    /// 32-bit read (used when `base` is NULL).
    pub read32: Option<unsafe extern "C" fn(ctx: *mut c_void, off: usize) -> u32>,
    /// 32-bit write.
    pub write32: Option<unsafe extern "C" fn(ctx: *mut c_void, off: usize, value: u32)>,
    /// 64-bit read.
    pub read64: Option<unsafe extern "C" fn(ctx: *mut c_void, off: usize) -> u64>,
    /// 64-bit write.
    pub write64: Option<unsafe extern "C" fn(ctx: *mut c_void, off: usize, value: u64)>,
}

/// The alignment `IeRegs::base` needs: the widest register access (64 bits).
const MMIO_BASE_ALIGN: usize = 8;

/// A validated [`IeRegs`].
#[derive(Debug)]
pub enum CRegs {
    /// Mapped MMIO.
    Mmio(Mmio),
    /// Accessor functions.
    Ops {
        /// Passed to the functions.
        ctx: *mut c_void,
        /// 32-bit read.
        read32: IeRead32Fn,
        /// 32-bit write.
        write32: IeWrite32Fn,
        /// 64-bit read.
        read64: IeRead64Fn,
        /// 64-bit write.
        write64: IeWrite64Fn,
    },
}

// SAFETY: MMIO is `Send + Sync`; the header requires accessor functions to be callable from
// any thread.
unsafe impl Send for CRegs {}
// SAFETY: as above.
unsafe impl Sync for CRegs {}

impl CRegs {
    /// Checks the window.
    ///
    /// # Safety
    ///
    /// `regs` is NULL, misaligned (both refused), or points to a readable `IeRegs`; a
    /// non-NULL `base` maps `len` bytes of one unit's registers as device memory for the life
    /// of the unit; accessor functions are callable from any thread.
    pub unsafe fn from_raw(regs: *const IeRegs) -> Result<Self, IeStatus> {
        // SAFETY: the caller guarantees `regs` is NULL, misaligned or readable.
        let r = unsafe { super::input(regs) }?;
        if let Some(base) = NonNull::new(r.base.cast::<u8>()) {
            // Registers sit at offsets aligned to their size (`Mmio` checks): on an aligned
            // base every access is aligned. A misaligned one is undefined behaviour, and an
            // alignment fault on Arm device memory.
            if (base.as_ptr() as usize) % MMIO_BASE_ALIGN != 0 {
                return Err(IeStatus::InvalidArgument);
            }
            // SAFETY: the caller guarantees the mapping, per this function's contract.
            return Ok(CRegs::Mmio(unsafe { Mmio::new(base, r.len) }));
        }
        match (r.read32, r.write32, r.read64, r.write64) {
            (Some(read32), Some(write32), Some(read64), Some(write64)) => Ok(CRegs::Ops {
                ctx: r.ctx,
                read32,
                write32,
                read64,
                write64,
            }),
            _ => Err(IeStatus::InvalidArgument),
        }
    }
}

// Not inlined, as CEnv's methods: an indirect call inside them is the embedder's accessor.
impl RegisterWindow for CRegs {
    #[inline(never)]
    fn read32(&self, offset: usize) -> u32 {
        match self {
            CRegs::Mmio(m) => m.read32(offset),
            // SAFETY: the accessor honours the header's contract.
            CRegs::Ops { ctx, read32, .. } => unsafe { read32(*ctx, offset) },
        }
    }
    #[inline(never)]
    fn write32(&self, offset: usize, value: u32) {
        match self {
            CRegs::Mmio(m) => m.write32(offset, value),
            // SAFETY: as above.
            CRegs::Ops { ctx, write32, .. } => unsafe { write32(*ctx, offset, value) },
        }
    }
    #[inline(never)]
    fn read64(&self, offset: usize) -> u64 {
        match self {
            CRegs::Mmio(m) => m.read64(offset),
            // SAFETY: as above.
            CRegs::Ops { ctx, read64, .. } => unsafe { read64(*ctx, offset) },
        }
    }
    #[inline(never)]
    fn write64(&self, offset: usize, value: u64) {
        match self {
            CRegs::Mmio(m) => m.write64(offset, value),
            // SAFETY: as above.
            CRegs::Ops { ctx, write64, .. } => unsafe { write64(*ctx, offset, value) },
        }
    }
}
