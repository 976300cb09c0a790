//! From a [`Gather`] to the fewest IOTLB invalidations: Intel VT-d specification rev. 4.1,
//! §6.5.2.3 (IOTLB Invalidate Descriptor: page-selective-within-domain with address mask),
//! §6.5.2.4 (PASID-based IOTLB Invalidate Descriptor), §6.5.2.5/§6.5.2.6 (device-TLB) and
//! §6.5.1 (the same granularities through `IOTLB_REG`/`IVA_REG`).
//!
//! A page-selective invalidation covers `2^AM` pages at an address aligned to `2^(12 + AM)`.
//! Each gathered range is covered by the *one* smallest naturally aligned block that contains
//! it, when `AM <= CAP.MAMV` (over-invalidation is always correct, and one descriptor is the
//! fewest); a range whose covering block is too large is cut into the largest aligned blocks
//! `MAMV` allows. Past [`PAGE_SELECTIVE_LIMIT`] blocks, or without `CAP.PSI`, one
//! domain-selective (PASID-selective for first-stage domains) invalidation replaces them.
//! `IH` (invalidation hint: the paging-structure caches may stay) is set only when the gather
//! changed leaves alone.

use crate::mem::{Iova, PAGE_SHIFT_4K};
use crate::pgtable::IovaRange;

/// Most page-selective invalidations issued for one tag (domain, or domain and PASID) in one
/// flush; past it a single domain- or PASID-selective invalidation is cheaper than the
/// descriptors and replaces them.
pub const PAGE_SELECTIVE_LIMIT: usize = 16;

/// A naturally aligned block of `2^am` 4 KiB pages at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Block {
    /// First address, aligned to `2^(12 + am)`.
    pub addr: Iova,
    /// Address mask: log2 of the number of pages.
    pub am: u8,
}

impl Block {
    /// Log2 of the block's size in bytes.
    pub const fn size_log2(self) -> u32 {
        PAGE_SHIFT_4K + self.am as u32
    }
}

/// What a flush invalidates for one tag. Built on the stack once per flush, so the size of the
/// block array does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPlan {
    /// Nothing was gathered.
    Nothing,
    /// These blocks, page-selectively; `ih` when only leaves changed.
    Pages {
        /// The blocks (the first `len`).
        blocks: [Block; PAGE_SELECTIVE_LIMIT],
        /// How many blocks are used.
        len: usize,
        /// Invalidation hint.
        ih: bool,
    },
    /// Everything of the domain (or PASID).
    Everything,
}

impl FlushPlan {
    /// The page-selective blocks, empty for the other plans.
    pub fn blocks(&self) -> &[Block] {
        match self {
            FlushPlan::Pages { blocks, len, .. } => blocks.get(..*len).unwrap_or(&[]),
            _ => &[],
        }
    }
}

/// What the hardware allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlanLimits {
    /// Page-selective invalidation is available (`CAP.PSI`; always for PASID-based forms).
    pub page_selective: bool,
    /// Largest address mask (`CAP.MAMV`).
    pub mamv: u8,
}

/// Plans the invalidation of `ranges` (`leaf_only`: no table was freed or split).
pub fn plan(ranges: &[IovaRange], leaf_only: bool, limits: PlanLimits) -> FlushPlan {
    let mut blocks = [Block::default(); PAGE_SELECTIVE_LIMIT];
    let mut len = 0;
    for r in ranges.iter().filter(|r| r.end > r.start) {
        if !limits.page_selective {
            return FlushPlan::Everything;
        }
        let mut add = |b: Block| {
            let slot = blocks.get_mut(len).ok_or(())?;
            *slot = b;
            len += 1;
            Ok::<(), ()>(())
        };
        let fits = match covering_block(*r) {
            Some(b) if b.am <= limits.mamv => add(b),
            _ => decompose(*r, limits.mamv, &mut add),
        };
        if fits.is_err() {
            return FlushPlan::Everything;
        }
    }
    if len == 0 {
        FlushPlan::Nothing
    } else {
        FlushPlan::Pages {
            blocks,
            len,
            ih: leaf_only,
        }
    }
}

/// First and last 4 KiB page numbers of a non-empty range.
fn pages(r: IovaRange) -> (u64, u64) {
    (
        r.start.get() >> PAGE_SHIFT_4K,
        r.end.get().saturating_sub(1) >> PAGE_SHIFT_4K,
    )
}

/// The smallest naturally aligned block that contains the non-empty range `r`.
fn covering_block(r: IovaRange) -> Option<Block> {
    let (first, last) = pages(r);
    // The block size is the highest bit in which the first and last page numbers differ.
    let am = u64::BITS - (first ^ last).leading_zeros();
    let base = first
        .checked_shr(am)
        .unwrap_or(0)
        .checked_shl(am)
        .unwrap_or(0);
    Some(Block {
        addr: Iova::new(base.checked_shl(PAGE_SHIFT_4K)?),
        am: u8::try_from(am).ok()?,
    })
}

/// Cuts `r` into the largest aligned blocks of at most `2^mamv` pages; stops when `add` refuses.
fn decompose(
    r: IovaRange,
    mamv: u8,
    add: &mut impl FnMut(Block) -> Result<(), ()>,
) -> Result<(), ()> {
    let (mut page, last) = pages(r);
    while page <= last {
        let align = page.trailing_zeros().min(u32::from(mamv));
        let room = (last - page + 1).ilog2();
        let am = align.min(room);
        add(Block {
            addr: Iova::new(page << PAGE_SHIFT_4K),
            am: am as u8,
        })?;
        match page.checked_add(1 << am) {
            Some(next) => page = next,
            None => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: PlanLimits = PlanLimits {
        page_selective: true,
        mamv: 18,
    };

    fn range(start: u64, end: u64) -> IovaRange {
        IovaRange {
            start: Iova::new(start),
            end: Iova::new(end),
        }
    }

    fn blocks(p: &FlushPlan) -> std::vec::Vec<(u64, u8)> {
        p.blocks().iter().map(|b| (b.addr.get(), b.am)).collect()
    }

    extern crate std;

    #[test]
    fn covering_blocks() {
        // 16 aligned pages: one block, AM 4.
        let p = plan(&[range(0x10_0000, 0x11_0000)], true, QEMU);
        assert_eq!(blocks(&p), [(0x10_0000, 4)]);
        assert!(matches!(p, FlushPlan::Pages { ih: true, .. }));
        // Pages 1..=3: the aligned block 0..=3, AM 2 (one descriptor beats 2 exact ones).
        let p = plan(&[range(0x1000, 0x4000)], false, QEMU);
        assert_eq!(blocks(&p), [(0, 2)]);
        assert!(matches!(p, FlushPlan::Pages { ih: false, .. }));
        // One 2 MiB leaf: AM 9.
        assert_eq!(
            blocks(&plan(&[range(0x20_0000, 0x40_0000)], true, QEMU)),
            [(0x20_0000, 9)]
        );
        // A single page: AM 0.
        assert_eq!(
            blocks(&plan(&[range(0x7000, 0x8000)], true, QEMU)),
            [(0x7000, 0)]
        );
        assert_eq!(plan(&[], true, QEMU), FlushPlan::Nothing);
    }

    #[test]
    fn mamv_cuts_and_limits_fall_back_to_everything() {
        let small = PlanLimits {
            page_selective: true,
            mamv: 2,
        };
        // 12 pages at page 4: covering AM 4 > 2 -> 4+4+4 pages (AM 2 each).
        let p = plan(&[range(0x4000, 0x10000)], true, small);
        assert_eq!(blocks(&p), [(0x4000, 2), (0x8000, 2), (0xc000, 2)]);
        // Unaligned start: page 1 (AM 0), 2..=3 (AM 1), 4..=7 (AM 2), 8 (AM 0).
        let p = plan(&[range(0x1000, 0x9000)], true, small);
        assert_eq!(
            blocks(&p),
            [(0x1000, 0), (0x2000, 1), (0x4000, 2), (0x8000, 0)]
        );
        // 17 blocks of 4 pages: past the limit.
        let p = plan(&[range(0, 17 << 14)], true, small);
        assert_eq!(p, FlushPlan::Everything);
        // No PSI: everything.
        let nopsi = PlanLimits {
            page_selective: false,
            mamv: 18,
        };
        assert_eq!(
            plan(&[range(0, 0x1000)], true, nopsi),
            FlushPlan::Everything
        );
        // A whole 48-bit space (a destroyed table): everything.
        assert_eq!(
            plan(&[range(0, 1 << 48)], false, QEMU),
            FlushPlan::Everything
        );
    }
}
