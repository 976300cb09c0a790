//! DMA checks for the SMMUv3 scenarios: buffers the device reaches through an IOVA, a byte
//! pattern, and checks that a transfer landed exactly where the translation says (and nowhere
//! else), or did not happen at all.
//!
//! The device is QEMU's `edu`: `RAM -> edu buffer` is a device *read* of the IOVA, `edu buffer
//! -> RAM` a device *write*. A translation failure makes QEMU drop the write and return zeros to
//! the read; the device itself reports nothing, so the IOMMU's event queue tells what happened.

use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr};

use crate::alloc::PageArena;
use crate::edu::Edu;
use crate::scenario::Fail;
use crate::{bail, ensure};

/// What guard bytes hold: anything the device did not write keeps this value.
pub const GUARD: u8 = 0xEE;

/// The pattern byte `i` of a transfer seeded with `seed` (never [`GUARD`] for long runs, and
/// different for every seed, so that bytes from another buffer or another test are caught).
pub fn pattern(seed: u8, i: usize) -> u8 {
    let b = (i as u8).wrapping_mul(7).wrapping_add((i >> 8) as u8) ^ 0x5a;
    b.wrapping_add(seed.wrapping_mul(31))
}

/// A buffer of `1 << log2` bytes from the page allocator, freed on drop. The device writes it
/// behind the compiler's back, so it is only read and written through volatile accesses.
pub struct DmaBuf<'a> {
    alloc: &'a PageArena,
    page: Page,
    log2: u32,
}

impl<'a> DmaBuf<'a> {
    /// A zeroed buffer of `1 << log2` bytes, aligned to its size.
    pub fn new(alloc: &'a PageArena, log2: u32) -> Result<Self, Fail> {
        match alloc.alloc(log2) {
            Some(page) => Ok(Self { alloc, page, log2 }),
            None => bail!("out of pages for a 2^{log2}-byte DMA buffer"),
        }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        1 << self.log2
    }

    /// Physical address of byte `off`.
    pub fn pa(&self, off: usize) -> PhysAddr {
        PhysAddr::new(self.page.pa.get() + off as u64)
    }

    fn ptr(&self, i: usize) -> *mut u8 {
        self.page.va.as_ptr().wrapping_add(i)
    }

    /// Byte `i` (volatile).
    pub fn get(&self, i: usize) -> u8 {
        assert!(i < self.len());
        // SAFETY: `i` is inside the live buffer we own.
        unsafe { core::ptr::read_volatile(self.ptr(i)) }
    }

    /// Sets byte `i` (volatile).
    pub fn set(&self, i: usize, v: u8) {
        assert!(i < self.len());
        // SAFETY: `i` is inside the live buffer we own.
        unsafe { core::ptr::write_volatile(self.ptr(i), v) }
    }

    /// Fills the whole buffer with [`GUARD`].
    pub fn guard_all(&self) {
        for i in 0..self.len() {
            self.set(i, GUARD);
        }
    }

    /// Fills `[off, off + len)` with `pattern(seed, ..)` counted from `off`.
    pub fn fill(&self, off: usize, len: usize, seed: u8) {
        for i in 0..len {
            self.set(off + i, pattern(seed, i));
        }
    }

    /// Checks that `[off, off + len)` holds `pattern(seed, ..)` and, if `guards`, that every
    /// other byte of the buffer is still [`GUARD`].
    pub fn expect(&self, off: usize, len: usize, seed: u8, guards: bool) -> Result<(), Fail> {
        for i in 0..self.len() {
            let inside = (off..off + len).contains(&i);
            if !inside && !guards {
                continue;
            }
            let want = if inside {
                pattern(seed, i - off)
            } else {
                GUARD
            };
            let got = self.get(i);
            ensure!(
                got == want,
                "byte {i:#x} of the buffer at {:#x}: got {got:#04x}, want {want:#04x} (data at +{off:#x}, {len:#x} bytes)",
                self.page.pa.get()
            );
        }
        Ok(())
    }

    /// Checks that every byte is [`GUARD`]: the device wrote nothing here.
    pub fn expect_untouched(&self) -> Result<(), Fail> {
        self.expect(0, 0, 0, true)
    }
}

impl Drop for DmaBuf<'_> {
    fn drop(&mut self) {
        // SAFETY: the page came from `alloc(log2)` and is freed once; every DMA of a scenario
        // completes (or fails) before the scenario returns, so the device no longer uses it.
        unsafe { self.alloc.free(self.page, self.log2) }
    }
}

/// Offset in edu's buffer that transfers use.
pub const EDU_OFF: u64 = 0;

/// Device read: `len` bytes from `iova` into edu's buffer.
pub fn read_iova(edu: &Edu, iova: Iova, len: usize) -> Result<(), Fail> {
    edu.dma_to_device(iova.get(), EDU_OFF, len as u64)
        .map(|_| ())
        .map_err(|e| Fail::new(format_args!("edu read of {iova}: {e}")))
}

/// Device write: `len` bytes of edu's buffer to `iova`.
pub fn write_iova(edu: &Edu, iova: Iova, len: usize) -> Result<(), Fail> {
    edu.dma_from_device(EDU_OFF, iova.get(), len as u64)
        .map(|_| ())
        .map_err(|e| Fail::new(format_args!("edu write to {iova}: {e}")))
}

/// Reads `len` bytes from `src_iova` (which must translate to `src` at `src_off`) into the
/// device, writes them back to `dst_iova` (translating to `dst` at `dst_off`), and checks that
/// `dst` holds them at `dst_off` with every other byte untouched. `src` is filled with a pattern
/// seeded by `seed`, `dst` with guard bytes first.
#[allow(clippy::too_many_arguments)]
pub fn roundtrip(
    edu: &Edu,
    src: &DmaBuf<'_>,
    src_off: usize,
    src_iova: Iova,
    dst: &DmaBuf<'_>,
    dst_off: usize,
    dst_iova: Iova,
    len: usize,
    seed: u8,
) -> Result<(), Fail> {
    src.fill(src_off, len, seed);
    dst.guard_all();
    read_iova(edu, src_iova, len)?;
    write_iova(edu, dst_iova, len)?;
    dst.expect(dst_off, len, seed, true)
}

/// Writes `len` pattern bytes (loaded into the device from `src_iova`, a working mapping of
/// `src` at `src_off`) to `dst_iova`. Used to show a write that must not land: the caller checks
/// the destination and the event queue.
pub fn load_then_write(
    edu: &Edu,
    src: &DmaBuf<'_>,
    src_off: usize,
    src_iova: Iova,
    dst_iova: Iova,
    len: usize,
    seed: u8,
) -> Result<(), Fail> {
    src.fill(src_off, len, seed);
    read_iova(edu, src_iova, len)?;
    write_iova(edu, dst_iova, len)
}
