//! Register access: the one module through which the crate touches MMIO.
//!
//! Drivers see registers only through [`RegisterWindow`], so a host model can stand in for the
//! hardware in tests. [`Mmio`] is the real window: every access is one plain, naturally aligned
//! load or store of the register's width through a raw pointer (never a reference). On aarch64
//! the access is written in assembly as a single `ldr`/`str` with no address writeback, so that a
//! hypervisor trapping it (a virtual SMMU) receives a valid syndrome (Arm ARM D17.2.37, ESR_EL2.ISV
//! is only set for single loads/stores without writeback).
//!
//! Ordering: [`RegisterWindow::doorbell32`]/[`RegisterWindow::doorbell64`] put a write barrier
//! between earlier stores to normal memory (queue entries, tables) and the register write that
//! tells the device to read them; [`dma_read_barrier`] orders a register read (a queue's consumer
//! index) before reads of memory the device wrote.
//!
//! A `--cfg loom` build (model checking, `tests/loom_queues.rs`) turns each barrier into the
//! `loom` fence that gives the same guarantee to a thread standing in for the device (a release
//! fence before a doorbell, an acquire fence after reading an index), and makes [`poll`] yield
//! to loom's scheduler, so that the thread standing in for the device can run between polls.

use core::ptr::NonNull;
use core::sync::atomic::{compiler_fence, Ordering};

/// A window of 32- and 64-bit device registers addressed by byte offset.
///
/// Offsets are the spec's register offsets. A window answers an offset outside itself with all
/// ones on reads (what a bus returns for a master abort) and ignores such writes, so a bad offset
/// can never become a panic or a wild access.
pub trait RegisterWindow {
    /// Reads the 32-bit register at `offset`.
    fn read32(&self, offset: usize) -> u32;
    /// Writes the 32-bit register at `offset`.
    fn write32(&self, offset: usize, value: u32);
    /// Reads the 64-bit register at `offset`.
    fn read64(&self, offset: usize) -> u64;
    /// Writes the 64-bit register at `offset`.
    fn write64(&self, offset: usize, value: u64);

    /// Writes a 32-bit doorbell: every earlier store to memory is visible to the device first.
    fn doorbell32(&self, offset: usize, value: u32) {
        dma_write_barrier();
        self.write32(offset, value);
    }

    /// Writes a 64-bit doorbell: every earlier store to memory is visible to the device first.
    fn doorbell64(&self, offset: usize, value: u64) {
        dma_write_barrier();
        self.write64(offset, value);
    }
}

impl<W: RegisterWindow + ?Sized> RegisterWindow for &W {
    fn read32(&self, offset: usize) -> u32 {
        (**self).read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        (**self).write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        (**self).read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        (**self).write64(offset, value)
    }
    fn doorbell32(&self, offset: usize, value: u32) {
        (**self).doorbell32(offset, value)
    }
    fn doorbell64(&self, offset: usize, value: u64) {
        (**self).doorbell64(offset, value)
    }
}

/// Orders earlier stores to normal memory before a later store to device memory.
///
/// aarch64: `DSB ST` (the device may be outside the inner-shareable domain). x86-64: stores are
/// not reordered with later stores to UC memory, so only the compiler must be stopped.
#[inline]
pub fn dma_write_barrier() {
    #[cfg(loom)]
    loom::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory the compiler tracks.
    unsafe {
        core::arch::asm!("dsb st", options(nostack, preserves_flags));
    }
    compiler_fence(Ordering::SeqCst);
}

/// Orders an earlier read of a device register before later reads of memory the device wrote.
///
/// aarch64: `DSB LD`. x86-64: loads are not reordered with older loads.
#[inline]
pub fn dma_read_barrier() {
    #[cfg(loom)]
    loom::sync::atomic::fence(core::sync::atomic::Ordering::Acquire);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory the compiler tracks.
    unsafe {
        core::arch::asm!("dsb ld", options(nostack, preserves_flags));
    }
    compiler_fence(Ordering::SeqCst);
}

/// Orders earlier reads of memory the device wrote (queue entries) before a later register
/// write that hands those entries back to the device (a queue's consumer index).
///
/// aarch64: `DSB LD`, so every entry read has completed before the device can see the new
/// index and overwrite the entry (the entries' acquire loads order the store for the CPU's
/// own observers; the unit is not one of them on a non-coherent system). x86-64: stores are
/// not reordered with older loads.
#[inline]
pub fn dma_consumed_barrier() {
    #[cfg(loom)]
    loom::sync::atomic::fence(core::sync::atomic::Ordering::Release);
    #[cfg(target_arch = "aarch64")]
    // SAFETY: a barrier instruction; it touches no memory the compiler tracks.
    unsafe {
        core::arch::asm!("dsb ld", options(nostack, preserves_flags));
    }
    compiler_fence(Ordering::SeqCst);
}

/// A real register window at a CPU virtual address mapped as device memory.
#[derive(Debug)]
pub struct Mmio {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mmio` is an address and a length; register accesses through it are single loads and
// stores the device serialises. Callers that need atomic read-modify-write sequences hold their
// own lock.
unsafe impl Send for Mmio {}
// SAFETY: as for `Send`: shared use issues independent single accesses.
unsafe impl Sync for Mmio {}

impl Mmio {
    /// Wraps the register window at `base`, `len` bytes long.
    ///
    /// # Safety
    ///
    /// `base..base + len` is mapped as device memory (uncached, non-reordering) for the whole life
    /// of the returned value, holds the registers of one IOMMU unit, and nothing else writes those
    /// registers while the driver owns them. `base` should be 8-byte aligned: an access whose
    /// address is not aligned to its size is not made (reads return all-ones, as outside the
    /// window), since it would be undefined behaviour and fault on Arm device memory.
    pub const unsafe fn new(base: NonNull<u8>, len: usize) -> Self {
        Self { base, len }
    }

    /// The window's length in bytes.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The register pointer for an access of `size` bytes at `offset`, if inside and aligned
    /// (the address, not only the offset: a misaligned base would misalign every access).
    fn reg(&self, offset: usize, size: usize) -> Option<*mut u8> {
        let end = offset.checked_add(size)?;
        let p = self.base.as_ptr().wrapping_add(offset);
        (end <= self.len && (p as usize) % size == 0).then_some(p)
    }
}

impl RegisterWindow for Mmio {
    fn read32(&self, offset: usize) -> u32 {
        match self.reg(offset, 4) {
            // SAFETY: `reg` checked that the aligned 4-byte access lies inside the window that
            // `new`'s contract maps as device memory.
            Some(p) => unsafe { arch::read32(p.cast()) },
            None => u32::MAX,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        if let Some(p) = self.reg(offset, 4) {
            // SAFETY: as in `read32`.
            unsafe { arch::write32(p.cast(), value) }
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        match self.reg(offset, 8) {
            // SAFETY: as in `read32`, for an aligned 8-byte access.
            Some(p) => unsafe { arch::read64(p.cast()) },
            None => u64::MAX,
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        if let Some(p) = self.reg(offset, 8) {
            // SAFETY: as in `read64`.
            unsafe { arch::write64(p.cast(), value) }
        }
    }
}

#[cfg(target_arch = "aarch64")]
mod arch {
    //! Single `ldr`/`str` with a plain base register: no writeback, so a trapping hypervisor
    //! gets a valid instruction syndrome.

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn read32(p: *const u32) -> u32 {
        let v: u32;
        // SAFETY: the caller guarantees `p` is a mapped, aligned register.
        unsafe {
            core::arch::asm!("ldr {v:w}, [{p}]", p = in(reg) p, v = out(reg) v,
                options(nostack, readonly, preserves_flags))
        };
        v
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn write32(p: *mut u32, v: u32) {
        // SAFETY: the caller guarantees `p` is a mapped, aligned register.
        unsafe {
            core::arch::asm!("str {v:w}, [{p}]", p = in(reg) p, v = in(reg) v,
                options(nostack, preserves_flags))
        };
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn read64(p: *const u64) -> u64 {
        let v: u64;
        // SAFETY: the caller guarantees `p` is a mapped, aligned register.
        unsafe {
            core::arch::asm!("ldr {v:x}, [{p}]", p = in(reg) p, v = out(reg) v,
                options(nostack, readonly, preserves_flags))
        };
        v
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn write64(p: *mut u64, v: u64) {
        // SAFETY: the caller guarantees `p` is a mapped, aligned register.
        unsafe {
            core::arch::asm!("str {v:x}, [{p}]", p = in(reg) p, v = in(reg) v,
                options(nostack, preserves_flags))
        };
    }
}

#[cfg(not(target_arch = "aarch64"))]
mod arch {
    //! Volatile accesses: one `mov` of the register's width on x86-64.

    use volatile::VolatilePtr;

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn read32(p: *const u32) -> u32 {
        // SAFETY: the caller guarantees `p` is a mapped, aligned, non-null register.
        unsafe { VolatilePtr::new_read_only(core::ptr::NonNull::new_unchecked(p.cast_mut())) }
            .read()
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn write32(p: *mut u32, v: u32) {
        // SAFETY: the caller guarantees `p` is a mapped, aligned, non-null register.
        unsafe { VolatilePtr::new(core::ptr::NonNull::new_unchecked(p)) }.write(v)
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn read64(p: *const u64) -> u64 {
        // SAFETY: the caller guarantees `p` is a mapped, aligned, non-null register.
        unsafe { VolatilePtr::new_read_only(core::ptr::NonNull::new_unchecked(p.cast_mut())) }
            .read()
    }

    /// # Safety
    /// `p` is an aligned device register inside a mapped window.
    #[inline]
    pub unsafe fn write64(p: *mut u64, v: u64) {
        // SAFETY: the caller guarantees `p` is a mapped, aligned, non-null register.
        unsafe { VolatilePtr::new(core::ptr::NonNull::new_unchecked(p)) }.write(v)
    }
}

/// Default number of register polls before a wait on hardware gives up.
///
/// A poll is one uncached register read (roughly 0.1-1 us on real hardware), so the default
/// bounds a wait at a few tens of milliseconds to a few seconds; units let the embedder choose.
pub const DEFAULT_POLL_BUDGET: u32 = 1_000_000;

/// Calls `probe` until it returns `Some`, at most `budget` times; `None` means the wait timed out.
///
/// Every wait on hardware in the crate goes through this function, so none is unbounded.
#[inline]
pub fn poll<T>(budget: u32, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    for _ in 0..budget {
        if let Some(v) = probe() {
            return Some(v);
        }
        core::hint::spin_loop();
        // Under loom a spin that never yields is explored forever.
        #[cfg(loom)]
        loom::thread::yield_now();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_window_accesses_are_harmless() {
        let mut regs = [0u64; 4];
        // SAFETY: the window is a live local array standing in for registers.
        let w = unsafe { Mmio::new(NonNull::from(&mut regs).cast(), 32) };
        w.write64(8, 0x1122_3344_5566_7788);
        assert_eq!(w.read64(8), 0x1122_3344_5566_7788);
        assert_eq!(w.read32(12), 0x1122_3344);
        w.write64(32, 1);
        w.write32(3, 1);
        assert_eq!(w.read64(32), u64::MAX);
        assert_eq!(w.read32(2), u32::MAX);
        assert_eq!(w.read64(usize::MAX - 3), u64::MAX);
        assert_eq!(regs, [0, 0x1122_3344_5566_7788, 0, 0]);
    }
}
