//! Naturally aligned invalidation blocks, and the fewest of them that cover a union: the
//! address-mask form of VT-d's page-selective invalidations (Intel VT-d specification 4.x,
//! §6.5.2.3 "IOTLB Invalidate Descriptor", field AM, bounded by `CAP.MAMV`) and the `S`-bit
//! form of AMD-Vi's INVALIDATE_IOMMU_PAGES and INVALIDATE_IOTLB_PAGES (document 48882, §2.4.3
//! and §2.4.4). Both name a block of `2^n` bytes aligned to its size; a flush of several
//! ranges sends one command per block, so fewer blocks are fewer commands.

/// A naturally aligned block of addresses, as one invalidation command names it.
pub(crate) trait AlignedBlock: Copy {
    /// `(first address, log2 of the size in bytes)`; a log2 of 64 or more is everything.
    fn span(self) -> (u64, u32);
    /// The block of `2^size_log2` bytes at `first` (aligned to it).
    fn of_span(first: u64, size_log2: u32) -> Self;
}

/// Replaces the blocks of `blocks` by the fewest of at most `2^max_log2` bytes that cover the
/// same addresses and no other: a block inside another is dropped, and two blocks that are
/// the halves of one aligned block no larger than `2^max_log2` become that block, until
/// neither applies. Returns how many are left, at the front of `blocks`, in their order.
///
/// The result is the set of *maximal* aligned blocks of at most `2^max_log2` bytes inside the
/// union `U` of the blocks given, which is the fewest commands whose blocks all lie inside
/// `U`: aligned blocks are nested or disjoint, so every such block lies inside exactly one
/// maximal one, and each maximal one holds addresses of `U` that must be covered (a set with
/// no nested pair and no pair of halves is that set: a maximal block tiled by smaller ones
/// would hold the smallest of them and its other half, which could be joined).
///
/// Quadratic in `blocks.len()` per merge: the callers hold a few dozen at most.
pub(crate) fn fewest_blocks<B: AlignedBlock>(blocks: &mut [B], max_log2: u32) -> usize {
    let mut n = blocks.len();
    // Each step removes one block, so at most `blocks.len()` steps.
    while let Some((i, j, merged)) = mergeable(blocks.get(..n).unwrap_or(&[]), max_log2) {
        blocks[i] = merged;
        blocks.copy_within(j + 1..n, j);
        n -= 1;
    }
    n
}

/// Whether `a` covers every address `b` covers.
pub(crate) fn contains<B: AlignedBlock>(a: B, b: B) -> bool {
    let ((f, l), (of, ol)) = (a.span(), b.span());
    l >= ol && (l >= 64 || f >> l == of >> l)
}

/// The block of at most `2^max_log2` bytes whose two halves are `a` and `b`, if they are that.
fn union_of_halves<B: AlignedBlock>(a: B, b: B, max_log2: u32) -> Option<B> {
    let ((f, l), (of, ol)) = (a.span(), b.span());
    if l != ol || l >= 64 || l >= max_log2 || f ^ of != 1 << l {
        return None;
    }
    Some(B::of_span(f.min(of), l + 1))
}

/// Two blocks `i` and `j` that one block covers exactly (one inside the other, or the two
/// halves of one within `max_log2`), and that block.
fn mergeable<B: AlignedBlock>(blocks: &[B], max_log2: u32) -> Option<(usize, usize, B)> {
    for (i, &a) in blocks.iter().enumerate() {
        for (j, &b) in blocks.iter().enumerate() {
            if i == j {
                continue;
            }
            if contains(a, b) {
                return Some((i, j, a));
            }
            if let Some(u) = union_of_halves(a, b, max_log2) {
                return Some((i, j, u));
            }
        }
    }
    None
}

/// A deterministic generator for tests (xorshift64): the same stream on every run.
#[cfg(test)]
pub(crate) struct XorShift(pub(crate) u64);

#[cfg(test)]
impl XorShift {
    /// The next value of the stream.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block of 4 KiB pages: `(first page, log2 of pages)`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Pages(u64, u32);

    impl AlignedBlock for Pages {
        fn span(self) -> (u64, u32) {
            (self.0 << 12, self.1 + 12)
        }
        fn of_span(first: u64, size_log2: u32) -> Self {
            Pages(first >> 12, size_log2 - 12)
        }
    }

    /// The pages of `k` log2 pages at page `at`, as bits of a 64-page window.
    fn mask(k: u32, at: u64) -> u64 {
        if k >= 6 {
            u64::MAX
        } else {
            ((1u64 << (1u64 << k)) - 1) << at
        }
    }

    /// The number of maximal aligned blocks of at most `2^cap` pages inside `union`.
    fn maximal(union: u64, cap: u32) -> usize {
        let top = cap.min(6);
        let mut count = 0;
        for k in 0..=top {
            for at in (0..64u64).step_by(1 << k) {
                let parent = at & !((2u64 << k) - 1);
                let inside = union & mask(k, at) == mask(k, at);
                let parent_inside = k < top && union & mask(k + 1, parent) == mask(k + 1, parent);
                if inside && !parent_inside {
                    count += 1;
                }
            }
        }
        count
    }

    /// Against brute force over 64 pages, for every set of up to 4 blocks a small generator
    /// makes and caps from 8 pages to none: the union is kept, and the count is the number
    /// of maximal aligned blocks within the cap inside it.
    #[test]
    fn fewest_blocks_are_the_maximal_blocks_of_the_union() {
        let union_of = |bs: &[Pages]| bs.iter().fold(0, |u, b| u | mask(b.1, b.0));
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            // At least the largest block made (the merge joins blocks, it never splits one).
            let cap = 3 + (rng.next() % 5) as u32;
            let n = (rng.next() % 4 + 1) as usize;
            let mut blocks = [Pages(0, 0); 4];
            for b in blocks.iter_mut().take(n) {
                let k = (rng.next() % 4) as u32;
                *b = Pages((rng.next() % 64) >> k << k, k);
            }
            let union = union_of(&blocks[..n]);
            let left = fewest_blocks(&mut blocks[..n], cap + 12);
            assert_eq!(union_of(&blocks[..left]), union, "{:?}", &blocks[..n]);
            assert_eq!(left, maximal(union, cap), "{:?}", &blocks[..n]);
        }
    }

    #[test]
    fn halves_join_only_within_the_cap() {
        let mut blocks = [Pages(0, 1), Pages(2, 1)];
        assert_eq!(fewest_blocks(&mut blocks, 12 + 1), 2);
        assert_eq!(fewest_blocks(&mut blocks, 12 + 2), 1);
        assert_eq!(blocks[0], Pages(0, 2));
        // The upper half first: the joined block starts at the lower one.
        let mut blocks = [Pages(6, 1), Pages(4, 1)];
        assert_eq!(fewest_blocks(&mut blocks, 64), 1);
        assert_eq!(blocks[0], Pages(4, 2));
    }

    #[test]
    fn the_blocks_left_keep_their_order() {
        let mut blocks = [Pages(8, 0), Pages(0, 0), Pages(9, 0), Pages(32, 0)];
        assert_eq!(fewest_blocks(&mut blocks, 64), 3);
        assert_eq!(&blocks[..3], &[Pages(8, 1), Pages(0, 0), Pages(32, 0)]);
    }
}
