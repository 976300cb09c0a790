//! From a [`Gather`] to the fewest IOTLB invalidations: Intel VT-d specification rev. 4.1,
//! §6.5.2.3 (IOTLB Invalidate Descriptor: page-selective-within-domain with address mask),
//! §6.5.2.4 (PASID-based IOTLB Invalidate Descriptor), §6.5.2.5/§6.5.2.6 (device-TLB) and
//! §6.5.1 (the same granularities through `IOTLB_REG`/`IVA_REG`).
//!
//! A page-selective invalidation covers `2^AM` pages at an address aligned to `2^(12 + AM)`.
//! Each gathered range is covered by the *one* smallest naturally aligned block that contains
//! it, when `AM <= CAP.MAMV` (over-invalidation is always correct, and one descriptor is the
//! fewest); a range whose covering block is too large is cut into the largest aligned blocks
//! `MAMV` allows. Then the blocks of all ranges are made the fewest whose union is the union
//! `U` of those blocks (`fewest_blocks`: a block inside another is dropped, two halves of an
//! aligned block within `MAMV` become that block), the minimum over every set of
//! page-selective descriptors that invalidates nothing outside `U` (one domain-selective
//! invalidation, fewer still, is chosen only past the limit: it drops the domain's other
//! translations). Past [`PAGE_SELECTIVE_LIMIT`] blocks (after merging), or without `CAP.PSI`, one
//! domain-selective (PASID-selective for first-stage domains) invalidation replaces them.
//! `IH` (invalidation hint: the paging-structure caches may stay) is set only when the gather
//! changed leaves alone.

use crate::aligned_blocks::{self, AlignedBlock};
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

/// What a flush invalidates for one tag. Built in place in the unit's plan storage
/// ([`plan_into`]): at 280 bytes it is kept off the stack under the invalidations.
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

/// Plans the invalidation of `ranges` (`leaf_only`: no table was freed or split) into `out`.
pub fn plan_into(out: &mut FlushPlan, ranges: &[IovaRange], leaf_only: bool, limits: PlanLimits) {
    // Built in place (the unit's plan storage): no 280-byte plan on the stack.
    *out = FlushPlan::Pages {
        blocks: [Block::default(); PAGE_SELECTIVE_LIMIT],
        len: 0,
        ih: leaf_only,
    };
    let FlushPlan::Pages { blocks, len, .. } = out else {
        return;
    };
    for r in ranges.iter().filter(|r| r.end > r.start) {
        if !limits.page_selective {
            *out = FlushPlan::Everything;
            return;
        }
        let mut add = |b: Block| {
            if *len == blocks.len() {
                // Full: merge what is planned before giving up on page-selective.
                *len = fewest_blocks(blocks, limits.mamv);
            }
            let slot = blocks.get_mut(*len).ok_or(())?;
            *slot = b;
            *len += 1;
            Ok::<(), ()>(())
        };
        let fits = match covering_block(*r) {
            Some(b) if b.am <= limits.mamv => add(b),
            _ => decompose(*r, limits.mamv, &mut add),
        };
        if fits.is_err() {
            *out = FlushPlan::Everything;
            return;
        }
    }
    *len = fewest_blocks(blocks.get_mut(..*len).unwrap_or(&mut []), limits.mamv);
    if *len == 0 {
        *out = FlushPlan::Nothing;
    }
}

/// Replaces the blocks of `blocks` by the fewest of at most `2^mamv` pages that cover the same
/// addresses and no other: the maximal aligned blocks within MAMV inside their union, the
/// fewest page-selective descriptors that invalidate nothing outside it (see
/// `aligned_blocks::fewest_blocks`). Returns how many are left, at the front, in their order.
fn fewest_blocks(blocks: &mut [Block], mamv: u8) -> usize {
    aligned_blocks::fewest_blocks(blocks, PAGE_SHIFT_4K + u32::from(mamv))
}

impl AlignedBlock for Block {
    fn span(self) -> (u64, u32) {
        (self.addr.get(), self.size_log2())
    }
    fn of_span(first: u64, size_log2: u32) -> Self {
        Block {
            addr: Iova::new(first),
            // Merges only join blocks of at most 2^MAMV pages: 12..=12 + 63.
            am: size_log2.saturating_sub(PAGE_SHIFT_4K) as u8,
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

    fn plan(ranges: &[IovaRange], leaf_only: bool, limits: PlanLimits) -> FlushPlan {
        let mut p = FlushPlan::Everything;
        plan_into(&mut p, ranges, leaf_only, limits);
        p
    }

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

    fn limits(mamv: u8) -> PlanLimits {
        PlanLimits {
            page_selective: true,
            mamv,
        }
    }

    /// Edge cases, each with the blocks planned by hand: (ranges, MAMV, expected blocks as
    /// (address, AM), or `None` for one domain-/PASID-selective invalidation).
    #[test]
    fn edge_cases_by_hand() {
        type Case = (&'static [(u64, u64)], u8, Option<&'static [(u64, u8)]>);
        const TOP48: u64 = 1 << 48;
        const TOP64_PAGE: u64 = !0xfff;
        let cases: &[Case] = &[
            // Straddling a 2 MiB boundary (pages 511 and 512): the covering block is pages
            // 0..=1023 (AM 10) when MAMV allows it...
            (&[(0x1f_f000, 0x20_1000)], 18, Some(&[(0, 10)])),
            // ...else the two pages on their own.
            (
                &[(0x1f_f000, 0x20_1000)],
                9,
                Some(&[(0x1f_f000, 0), (0x20_0000, 0)]),
            ),
            // AM exactly MAMV: one block; twice as large: two blocks of MAMV.
            (&[(0, 1 << 30)], 18, Some(&[(0, 18)])),
            (&[(0, 1 << 31)], 18, Some(&[(0, 18), (1 << 30, 18)])),
            // MAMV 0: one descriptor per page.
            (
                &[(0x3000, 0x6000)],
                0,
                Some(&[(0x3000, 0), (0x4000, 0), (0x5000, 0)]),
            ),
            // The last page below 2^48, and the last 4 KiB page of the 64-bit space.
            (&[(TOP48 - 0x1000, TOP48)], 18, Some(&[(TOP48 - 0x1000, 0)])),
            (&[(TOP64_PAGE, u64::MAX)], 18, Some(&[(TOP64_PAGE, 0)])),
            // The top 2 MiB below 2^48 straddled by a range ending at 2^48: aligned block.
            (
                &[(TOP48 - 0x20_0000 + 0x1000, TOP48)],
                18,
                Some(&[(TOP48 - 0x20_0000, 9)]),
            ),
            // An unaligned range that needs several blocks under a small MAMV: pages 3..=20.
            (
                &[(0x3000, 0x1_5000)],
                2,
                Some(&[
                    (0x3000, 0),
                    (0x4000, 2),
                    (0x8000, 2),
                    (0xc000, 2),
                    (0x1_0000, 2),
                    (0x1_4000, 0),
                ]),
            ),
            // Several ranges: one block each, in order; empty ranges ignored.
            (
                &[(0x5000, 0x5000), (0x40_0000, 0x60_0000), (0x1000, 0x2000)],
                18,
                Some(&[(0x40_0000, 9), (0x1000, 0)]),
            ),
            // Exactly PAGE_SELECTIVE_LIMIT blocks, then one more: everything.
            (
                &[(0, 16 << 12)],
                0,
                Some(&[
                    (0, 0),
                    (0x1000, 0),
                    (0x2000, 0),
                    (0x3000, 0),
                    (0x4000, 0),
                    (0x5000, 0),
                    (0x6000, 0),
                    (0x7000, 0),
                    (0x8000, 0),
                    (0x9000, 0),
                    (0xa000, 0),
                    (0xb000, 0),
                    (0xc000, 0),
                    (0xd000, 0),
                    (0xe000, 0),
                    (0xf000, 0),
                ]),
            ),
            (&[(0, 17 << 12)], 0, None),
            // The whole 64-bit space: more blocks than allowed under any real MAMV.
            (&[(0, u64::MAX)], 18, None),
        ];
        for &(ranges, mamv, expected) in cases {
            let ranges: std::vec::Vec<_> = ranges.iter().map(|&(s, e)| range(s, e)).collect();
            let p = plan(&ranges, true, limits(mamv));
            match expected {
                Some(want) => assert_eq!(blocks(&p), want, "{ranges:x?} MAMV {mamv}"),
                None => assert_eq!(p, FlushPlan::Everything, "{ranges:x?} MAMV {mamv}"),
            }
        }
    }

    /// Every page of every range is covered by an aligned block within MAMV, for all ranges of
    /// up to 40 pages starting in the first 40 pages and every MAMV up to 6.
    #[test]
    fn blocks_cover_aligned_and_within_mamv() {
        for mamv in 0..=6u8 {
            for first in 0..40u64 {
                for count in 1..=40u64 {
                    let r = range(first << 12, (first + count) << 12);
                    let p = plan(&[r], false, limits(mamv));
                    let bs = p.blocks();
                    if p == FlushPlan::Everything {
                        assert!(
                            count > PAGE_SELECTIVE_LIMIT as u64,
                            "{first} {count} {mamv}"
                        );
                        continue;
                    }
                    for b in bs {
                        assert!(b.am <= mamv);
                        assert!(b.addr.is_aligned(b.size_log2()), "{b:?}");
                    }
                    for page in first..first + count {
                        let a = page << 12;
                        assert!(
                            bs.iter().any(|b| {
                                a >= b.addr.get() && a - b.addr.get() < 1 << b.size_log2()
                            }),
                            "page {page:#x} uncovered: {first} {count} {mamv} {bs:?}"
                        );
                    }
                    assert!(matches!(p, FlushPlan::Pages { ih: false, .. }));
                }
            }
        }
    }

    /// Several ranges give the fewest page-selective descriptors whose blocks stay inside the
    /// union of the ranges' own blocks: a block inside another is dropped whatever their order,
    /// two halves of an aligned block within MAMV become that block. Descriptor counts.
    #[test]
    fn several_ranges_give_the_fewest_blocks() {
        let count = |ranges: &[(u64, u64)], mamv: u8| {
            let ranges: std::vec::Vec<_> = ranges.iter().map(|&(s, e)| range(s, e)).collect();
            plan(&ranges, true, limits(mamv)).blocks().len()
        };
        // A page, then a range whose covering block (64 KiB at 0) holds it: one descriptor.
        assert_eq!(count(&[(0x5000, 0x6000), (0x7000, 0x1_0000)], 18), 1);
        assert_eq!(count(&[(0x7000, 0x1_0000), (0x5000, 0x6000)], 18), 1);
        // Four 16 KiB blocks that tile 64 KiB at 0: one.
        let tiles = [
            (0x1000, 0x3000),
            (0x5000, 0x7000),
            (0x9000, 0xB000),
            (0xD000, 0xF000),
        ];
        assert_eq!(count(&tiles, 18), 1);
        // ...but not past MAMV: two of 32 KiB under MAMV 3.
        assert_eq!(count(&tiles, 3), 2);
        // Two buddy pages: one 8 KiB block; two pages 32 KiB apart: two.
        assert_eq!(count(&[(0x4000, 0x4800), (0x5400, 0x5800)], 18), 1);
        assert_eq!(count(&[(0x1000, 0x2000), (0x9000, 0xA000)], 18), 2);
        // 17 single pages that tile 64 KiB and one more page: within the limit once merged.
        let mut pages: std::vec::Vec<(u64, u64)> =
            (0..16u64).map(|p| (p << 12, (p + 1) << 12)).collect();
        pages.push((0x2_0000, 0x2_1000));
        assert_eq!(count(&pages, 18), 2);

        // Against brute force over 64 pages: the union is kept, and the count is the number of
        // maximal aligned blocks of at most 2^MAMV pages inside it.
        let mask = |am: u32, at: u64| -> u64 {
            if am >= 6 {
                u64::MAX
            } else {
                ((1u64 << (1u64 << am)) - 1) << at
            }
        };
        let pages_of = |bs: &[Block]| {
            bs.iter()
                .fold(0u64, |u, b| u | mask(u32::from(b.am), b.addr.get() >> 12))
        };
        let mut rng = crate::aligned_blocks::XorShift(0x9E37_79B9_7F4A_7C15);
        let mut next = || rng.next();
        for _ in 0..20_000 {
            let mamv = (next() % 7) as u8;
            let n = (next() % 4 + 1) as usize;
            let ranges: std::vec::Vec<_> = (0..n)
                .map(|_| {
                    let first = next() % 64;
                    let len = (next() % 8 + 1).min(64 - first);
                    range(first << 12, (first + len) << 12)
                })
                .collect();
            let p = plan(&ranges, true, limits(mamv));
            if p == FlushPlan::Everything {
                continue;
            }
            // The union of each range's own blocks (planned alone).
            let union = ranges.iter().fold(0, |u, &r| {
                u | pages_of(plan(&[r], true, limits(mamv)).blocks())
            });
            assert_eq!(pages_of(p.blocks()), union, "{ranges:x?} MAMV {mamv}");
            let mut maximal = 0;
            for am in 0..=u32::from(mamv).min(6) {
                for at in (0..64u64).step_by(1 << am) {
                    let parent = at & !((2u64 << am) - 1);
                    let inside = union & mask(am, at) == mask(am, at);
                    let parent_inside = am < u32::from(mamv).min(6)
                        && union & mask(am + 1, parent) == mask(am + 1, parent);
                    if inside && !parent_inside {
                        maximal += 1;
                    }
                }
            }
            assert_eq!(p.blocks().len(), maximal, "{ranges:x?} MAMV {mamv}");
        }
    }
}
