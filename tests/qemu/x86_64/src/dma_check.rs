//! `edu` DMA through an IOVA, with the bytes checked on the CPU side (PA == VA).
//!
//! A round trip copies RAM -> edu buffer through one IOVA and edu buffer -> RAM through another,
//! with a fresh pattern each time (so stale data in edu's buffer cannot pass), and checks the
//! whole destination page: the pattern where the translation should land, the guard byte
//! everywhere else.

use iommu_engine::mem::{Page, PageAllocator};

use crate::edu::Edu;
use crate::scenario::{Ctx, Fail};
use crate::{bail, ensure};

/// What a destination page holds outside the bytes a DMA should write.
pub const GUARD: u8 = 0xEE;
/// Bytes per 4 KiB page.
pub const PAGE: usize = 4096;

/// Byte `i` of the pattern numbered `seed`.
pub fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(7).wrapping_add((i >> 8) as u8) ^ seed.wrapping_mul(0x3b) ^ 0x5a
}

/// A 4 KiB page from the guest allocator, freed on drop.
pub struct Buf {
    alloc: &'static crate::alloc::PageArena,
    page: Page,
}

impl Buf {
    /// A zeroed page.
    pub fn new(ctx: &Ctx) -> Result<Buf, Fail> {
        match ctx.alloc.alloc(12) {
            Some(page) => Ok(Buf {
                alloc: ctx.alloc,
                page,
            }),
            None => bail!("out of guest pages"),
        }
    }

    /// Physical (== virtual) address of the page.
    pub fn pa(&self) -> u64 {
        self.page.pa.get()
    }

    fn ptr(&self) -> *mut u8 {
        self.page.va.as_ptr()
    }

    /// Writes the pattern `seed` over the whole page.
    pub fn fill_pattern(&self, seed: u8) {
        for i in 0..PAGE {
            // SAFETY: `i < PAGE`, inside our page; volatile because a device reads it.
            unsafe { core::ptr::write_volatile(self.ptr().add(i), pattern(i, seed)) };
        }
    }

    /// Writes `byte` over the whole page.
    pub fn fill(&self, byte: u8) {
        for i in 0..PAGE {
            // SAFETY: as in `fill_pattern`.
            unsafe { core::ptr::write_volatile(self.ptr().add(i), byte) };
        }
    }

    /// Byte `i` (volatile: a device may have written it).
    pub fn byte(&self, i: usize) -> u8 {
        let i = i.min(PAGE - 1);
        // SAFETY: `i < PAGE`, inside our page.
        unsafe { core::ptr::read_volatile(self.ptr().add(i)) }
    }

    /// Checks `[off, off + len)` holds pattern `seed` (pattern index 0 at `src_off`) and every
    /// other byte of the page is [`GUARD`].
    pub fn check(
        &self,
        what: &str,
        off: usize,
        len: usize,
        seed: u8,
        src_off: usize,
    ) -> Result<(), Fail> {
        for i in 0..PAGE {
            let want = if (off..off + len).contains(&i) {
                pattern(i - off + src_off, seed)
            } else {
                GUARD
            };
            let got = self.byte(i);
            ensure!(
                got == want,
                "{what}: byte {i:#x} of page {:#x} is {got:#04x}, want {want:#04x}",
                self.pa()
            );
        }
        Ok(())
    }

    /// Checks every byte of the page is `byte`.
    pub fn check_all(&self, what: &str, byte: u8) -> Result<(), Fail> {
        for i in 0..PAGE {
            let got = self.byte(i);
            ensure!(
                got == byte,
                "{what}: byte {i:#x} of page {:#x} is {got:#04x}, want {byte:#04x} (DMA landed here)",
                self.pa()
            );
        }
        Ok(())
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        // SAFETY: the page came from `alloc(12)`; scenarios drop buffers only after the DMAs
        // using them completed (edu is synchronous) and their IOVAs are unmapped or the unit
        // is about to be torn down with the domain.
        unsafe { self.alloc.free(self.page, 12) };
    }
}

/// A round trip through the IOMMU: `len` bytes from `src_iova` (which must translate to
/// `src.pa() + src_off`) into edu's buffer, then back out to `dst_iova` (which must translate
/// to `dst.pa() + dst_off`). `src` gets pattern `seed`, `dst` the guard byte; then the whole of
/// `dst` is checked.
#[allow(clippy::too_many_arguments)]
pub fn roundtrip(
    edu: &Edu,
    src: &Buf,
    src_iova: u64,
    src_off: usize,
    dst: &Buf,
    dst_iova: u64,
    dst_off: usize,
    len: usize,
    seed: u8,
) -> Result<(), Fail> {
    ensure!(
        src_off + len <= PAGE && dst_off + len <= PAGE && len > 0,
        "round trip of {len} bytes at {src_off:#x}/{dst_off:#x} leaves the page"
    );
    src.fill_pattern(seed);
    dst.fill(GUARD);
    to_device(edu, src_iova, len)?;
    from_device(edu, dst_iova, len)?;
    dst.check("round trip", dst_off, len, seed, src_off)?;
    crate::println!(
        "dma ok: {len} bytes iova {src_iova:#x} (pa {:#x}) -> edu -> iova {dst_iova:#x} (pa {:#x})",
        src.pa() + src_off as u64,
        dst.pa() + dst_off as u64
    );
    Ok(())
}

/// RAM at device address `iova` -> edu buffer offset 0.
pub fn to_device(edu: &Edu, iova: u64, len: usize) -> Result<(), Fail> {
    match edu.dma_to_device(iova, 0, len as u64) {
        Ok(_) => Ok(()),
        Err(e) => bail!("edu DMA from iova {iova:#x}: {e}"),
    }
}

/// edu buffer offset 0 -> RAM at device address `iova`.
pub fn from_device(edu: &Edu, iova: u64, len: usize) -> Result<(), Fail> {
    match edu.dma_from_device(0, iova, len as u64) {
        Ok(_) => Ok(()),
        Err(e) => bail!("edu DMA to iova {iova:#x}: {e}"),
    }
}
