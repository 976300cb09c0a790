//! Command buffer entries: AMD I/O Virtualization Technology (IOMMU) Specification, document
//! 48882, revision 3.x, §2.4 "Commands": COMPLETION_WAIT, INVALIDATE_DEVTAB_ENTRY,
//! INVALIDATE_IOMMU_PAGES, INVALIDATE_IOTLB_PAGES, INVALIDATE_INTERRUPT_TABLE and
//! INVALIDATE_IOMMU_ALL.
//!
//! Every command is 128 bits; the opcode is bits 63:60 of the first quadword (bits 31:28 of its
//! second doubleword). The address of the two page invalidations is encoded with the `S` bit
//! ([`InvalidationRange`]): clear, one 4 KiB page; set, the lowest clear address bit from bit
//! 12 up gives the size: a naturally aligned block of 2^(n+1) bytes when bits 12..n are set and
//! bit n is clear, so that the whole address space is bit 63 clear and bits 62:12 set.
//!
//! The unit reads only address bits 51:12 and takes bits 63:52 as copies of bit 51 (Linux
//! `build_inv_address`: "Bits 63:52 are sign extended", and it invalidates everything when the
//! range's highest differing bit is above 51; 48882 Table 14's example encodings make a first
//! clear bit at 51 "every page", as QEMU's decoder reads them). So a page or block at or above
//! 2^51, which 5- and 6-level v1 domains (57 and 63 bits, `EFR.HATS`) hold, cannot be named: the
//! unit would invalidate other addresses and leave the unmapped ones cached. Every such range
//! is sent as everything ([`ALL_PAGES_ADDRESS`]), which keeps the widths `HATS` offers and costs
//! a full flush of the domain only for invalidations that reach 2^51
//! ([`INV_ADDRESS_LIMIT_LOG2`]). INVALIDATE_IOTLB_PAGES has the same address field and Linux
//! builds it the same way, so the same rule holds there (the ATS Invalidate Request the unit
//! sends carries 64 bits, but what it copies into it is what it read).
//!
//! Layouts checked against QEMU `hw/i386/amd_iommu.c` (`amdvi_cmdbuf_exec` and the handlers it
//! calls) and Linux `drivers/iommu/amd/iommu.c` (`build_*` helpers), facts only.

use crate::aligned_blocks::AlignedBlock;
use crate::iommu::Pasid;
use crate::mem::{Iova, PhysAddr, PAGE_SHIFT_4K};

/// `COMPLETION_WAIT`.
pub const OPCODE_COMPLETION_WAIT: u8 = 0x1;
/// `INVALIDATE_DEVTAB_ENTRY`.
pub const OPCODE_INVALIDATE_DEVTAB_ENTRY: u8 = 0x2;
/// `INVALIDATE_IOMMU_PAGES`.
pub const OPCODE_INVALIDATE_IOMMU_PAGES: u8 = 0x3;
/// `INVALIDATE_IOTLB_PAGES`.
pub const OPCODE_INVALIDATE_IOTLB_PAGES: u8 = 0x4;
/// `INVALIDATE_INTERRUPT_TABLE`.
pub const OPCODE_INVALIDATE_INTERRUPT_TABLE: u8 = 0x5;
/// `INVALIDATE_IOMMU_ALL` (needs EFR `IASup`).
pub const OPCODE_INVALIDATE_IOMMU_ALL: u8 = 0x8;

/// COMPLETION_WAIT `S`: store `Store Data` at `Store Address` when every earlier command
/// completed.
const COMPLETION_WAIT_S: u64 = 1 << 0;
/// COMPLETION_WAIT `I`: set `Status.ComWaitInt` (and interrupt under `ComWaitIntEn`).
const COMPLETION_WAIT_I: u64 = 1 << 1;
/// `S` of the page invalidations (second quadword bit 0).
const INV_S: u64 = 1 << 0;
/// `PDE` of INVALIDATE_IOMMU_PAGES: the page directory entries (walk caches) too.
const INV_PDE: u64 = 1 << 1;
/// `GN`: the address is a guest (PASID) address.
const INV_GN: u64 = 1 << 2;
/// The address bits of the second quadword, 63:12.
const INV_ADDRESS_MASK: u64 = !0xFFF;
/// The address of "every page": bit 63 clear, bits 62:12 set, with `S` (bits 50:12 set is
/// enough for the unit; the PCIe ATS form of "everything" is this one).
pub const ALL_PAGES_ADDRESS: u64 = 0x7FFF_FFFF_FFFF_F000;
/// The page invalidations name addresses below `2^51` exactly: the unit reads bits 51:12 and
/// takes bits 63:52 as copies of bit 51. A range that reaches `2^51` is sent as everything.
pub const INV_ADDRESS_LIMIT_LOG2: u32 = 51;

/// Whether `[first, first + 2^size_log2)` lies below [`INV_ADDRESS_LIMIT_LOG2`].
const fn nameable(first: u64, size_log2: u32) -> bool {
    size_log2 <= INV_ADDRESS_LIMIT_LOG2 && first >> INV_ADDRESS_LIMIT_LOG2 == 0
}

/// One 128-bit command, as the unit reads it from the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command(pub [u64; 2]);

/// What a page invalidation covers, as the `S` bit and the address encode it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InvalidationRange {
    /// The 4 KiB page at this address (`S` clear); at or above `2^51`, encoded as
    /// [`All`](Self::All).
    Page(Iova),
    /// The naturally aligned block of `2^size_log2` bytes (13..=63) at `base`; one that
    /// reaches `2^51` is encoded as [`All`](Self::All) (see the module).
    Block {
        /// First address, aligned to the block.
        base: Iova,
        /// Log2 of the block's size.
        size_log2: u32,
    },
    /// The whole address space.
    All,
}

impl InvalidationRange {
    /// The smallest range that covers `[start, end)` (`end > start`): over-invalidation is
    /// always correct, and one command is the fewest. Everything when the range reaches
    /// `2^51`, which the command cannot name ([`INV_ADDRESS_LIMIT_LOG2`]).
    pub fn covering(start: u64, end: u64) -> Self {
        let first = start >> PAGE_SHIFT_4K;
        let last = end.saturating_sub(1).max(start) >> PAGE_SHIFT_4K;
        if last >> (INV_ADDRESS_LIMIT_LOG2 - PAGE_SHIFT_4K) != 0 {
            return InvalidationRange::All;
        }
        // Pages in the block: 2^k where k is one past the highest bit first and last differ in.
        let k = u64::BITS - (first ^ last).leading_zeros();
        if k == 0 {
            return InvalidationRange::Page(Iova::new(first << PAGE_SHIFT_4K));
        }
        let size_log2 = PAGE_SHIFT_4K + k;
        if size_log2 >= 64 {
            return InvalidationRange::All;
        }
        let base = (start >> size_log2) << size_log2;
        InvalidationRange::Block {
            base: Iova::new(base),
            size_log2,
        }
    }

    /// The address field and the `S` bit. A page or block that reaches `2^51` is encoded as
    /// everything: the unit would read it as other addresses.
    pub const fn encode(self) -> (u64, bool) {
        match self {
            InvalidationRange::Page(a) if nameable(a.get(), PAGE_SHIFT_4K) => {
                (a.get() & INV_ADDRESS_MASK, false)
            }
            InvalidationRange::Block { base, size_log2 }
                if size_log2 > PAGE_SHIFT_4K && nameable(base.get(), size_log2) =>
            {
                // Bits 12..size_log2-2 set, bit size_log2-1 clear.
                let ones = (1u64 << (size_log2 - 1)) - 1;
                ((base.get() | ones) & INV_ADDRESS_MASK, true)
            }
            _ => (ALL_PAGES_ADDRESS, true),
        }
    }

    /// What an `S`-encoded address covers as the unit reads it: `(first, log2 size)`, 64 for
    /// everything (the inverse of [`encode`](Self::encode), for models and logs). Bits 63:52
    /// are taken as copies of bit 51; the lowest clear bit from 12 up gives the size, and one
    /// at 51 or above (none below) is everything.
    pub const fn decode(address: u64, s: bool) -> (u64, u32) {
        let shift = 63 - INV_ADDRESS_LIMIT_LOG2;
        let address = ((((address & INV_ADDRESS_MASK) << shift) as i64) >> shift) as u64;
        if !s {
            return (address, PAGE_SHIFT_4K);
        }
        let n = (address | 0xFFF).trailing_ones();
        if n >= INV_ADDRESS_LIMIT_LOG2 {
            return (0, 64);
        }
        let size_log2 = n + 1;
        (address & !((1u64 << size_log2) - 1), size_log2)
    }
}

impl InvalidationRange {
    /// What the range covers: `(first, log2 size)`, 12 for a page, 64 for everything.
    pub const fn span(self) -> (u64, u32) {
        let (a, s) = self.encode();
        Self::decode(a, s)
    }

    /// The range of a naturally aligned `(first, log2 size)` (`log2` 12..=64; `first` is
    /// aligned down).
    const fn of_span(first: u64, size_log2: u32) -> Self {
        if !nameable(first, size_log2) {
            InvalidationRange::All
        } else if size_log2 <= PAGE_SHIFT_4K {
            InvalidationRange::Page(Iova::new(first & INV_ADDRESS_MASK))
        } else {
            InvalidationRange::Block {
                base: Iova::new(first & !((1u64 << size_log2) - 1)),
                size_log2,
            }
        }
    }

    /// Whether `self` covers every address `other` covers.
    pub fn contains(self, other: Self) -> bool {
        crate::aligned_blocks::contains(self, other)
    }
}

impl AlignedBlock for InvalidationRange {
    fn span(self) -> (u64, u32) {
        InvalidationRange::span(self)
    }
    fn of_span(first: u64, size_log2: u32) -> Self {
        InvalidationRange::of_span(first, size_log2)
    }
}

/// Replaces the blocks of `blocks` by the fewest that cover the same addresses and no other
/// (a block inside another dropped, two halves of one aligned block joined, until neither
/// applies): the maximal aligned blocks inside their union, the fewest commands that
/// invalidate nothing outside it. The `S` encoding names blocks of every size: no cap. Returns how many are left, at the front of `blocks`.
pub fn fewest_blocks(blocks: &mut [InvalidationRange]) -> usize {
    crate::aligned_blocks::fewest_blocks(blocks, u32::MAX)
}

const fn op(opcode: u8) -> u64 {
    (opcode as u64) << 60
}

/// `Maxpend` of INVALIDATE_IOTLB_PAGES (dword 0 bits 31:24, the invalidations the unit may
/// have outstanding at the device) for a device whose PCIe ATS Capability reports Invalidate
/// Queue Depth `field` (bits 4:0, 0 meaning 32): the depth itself, as Linux (`ats_qdep`) and
/// Xen (`ats_queue_depth`) program it. 0 is not a depth: a unit could take it as no
/// invalidation allowed in flight. `None` for a value the 5-bit field cannot hold.
pub const fn maxpend(field: u8) -> Option<u8> {
    match field {
        0 => Some(32),
        1..=31 => Some(field),
        _ => None,
    }
}

/// What a refused [`maxpend`] names.
pub const ATS_QUEUE_DEPTH: &str =
    "ATS Invalidate Queue Depth (DeviceHints::ats_queue_depth, 5 bits)";

impl Command {
    /// The opcode, bits 63:60.
    pub const fn opcode(self) -> u8 {
        (self.0[0] >> 60) as u8
    }

    /// `COMPLETION_WAIT`: stores `data` at `store` (8-byte aligned, below 2^52) once every
    /// earlier command completed, and/or sets `ComWaitInt` (`interrupt`).
    pub const fn completion_wait(store: Option<(PhysAddr, u64)>, interrupt: bool) -> Self {
        let i = if interrupt { COMPLETION_WAIT_I } else { 0 };
        match store {
            Some((pa, data)) => Self([
                op(OPCODE_COMPLETION_WAIT)
                    | (pa.get() & 0x000F_FFFF_FFFF_FFF8)
                    | COMPLETION_WAIT_S
                    | i,
                data,
            ]),
            None => Self([op(OPCODE_COMPLETION_WAIT) | i, 0]),
        }
    }

    /// `INVALIDATE_DEVTAB_ENTRY` for `device_id`.
    pub const fn invalidate_devtab_entry(device_id: u16) -> Self {
        Self([op(OPCODE_INVALIDATE_DEVTAB_ENTRY) | device_id as u64, 0])
    }

    /// `INVALIDATE_IOMMU_PAGES` of `domain_id` (and `pasid`: `GN` set, guest addresses), over
    /// `range`; `pde` also drops cached page directory entries (needed whenever a table was
    /// unlinked or replaced).
    pub const fn invalidate_iommu_pages(
        domain_id: u16,
        pasid: Option<Pasid>,
        range: InvalidationRange,
        pde: bool,
    ) -> Self {
        let (address, s) = range.encode();
        let (pasid_field, gn) = match pasid {
            Some(p) => (p.get() as u64, INV_GN),
            None => (0, 0),
        };
        let mut q1 = address | gn;
        if s {
            q1 |= INV_S;
        }
        if pde {
            q1 |= INV_PDE;
        }
        Self([
            op(OPCODE_INVALIDATE_IOMMU_PAGES) | (domain_id as u64) << 32 | pasid_field,
            q1,
        ])
    }

    /// `INVALIDATE_IOTLB_PAGES`: the ATS device `device_id`'s translation cache over `range`
    /// (`max_pending`: its invalidate queue depth, `Maxpend`, see [`maxpend`]; `pasid`: `GN`).
    pub const fn invalidate_iotlb_pages(
        device_id: u16,
        max_pending: u8,
        pasid: Option<Pasid>,
        range: InvalidationRange,
    ) -> Self {
        let (address, s) = range.encode();
        // Dword 0: DeviceID 15:0, PASID[15:8] 23:16, Maxpend 31:24; dword 1: QueueID 15:0
        // (the device ID), PASID[7:0] 23:16; PASID[19:16] would go in dword 1 bits 27:24.
        let (p, gn) = match pasid {
            Some(p) => (p.get() as u64, INV_GN),
            None => (0, 0),
        };
        let q0 = device_id as u64
            | ((p >> 8) & 0xFF) << 16
            | (max_pending as u64) << 24
            | (device_id as u64) << 32
            | (p & 0xFF) << 48
            | ((p >> 16) & 0xF) << 56
            | op(OPCODE_INVALIDATE_IOTLB_PAGES);
        let mut q1 = address | gn;
        if s {
            q1 |= INV_S;
        }
        Self([q0, q1])
    }

    /// `INVALIDATE_INTERRUPT_TABLE` for `device_id`.
    pub const fn invalidate_interrupt_table(device_id: u16) -> Self {
        Self([op(OPCODE_INVALIDATE_INTERRUPT_TABLE) | device_id as u64, 0])
    }

    /// `INVALIDATE_IOMMU_ALL`: every cached device table entry, translation and interrupt
    /// remapping entry.
    pub const fn invalidate_iommu_all() -> Self {
        Self([op(OPCODE_INVALIDATE_IOMMU_ALL), 0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_bit_encoding_round_trips() {
        for size_log2 in 13..64 {
            let base = if size_log2 < 60 { 3u64 << size_log2 } else { 0 };
            let r = InvalidationRange::Block {
                base: Iova::new(base),
                size_log2,
            };
            let (a, s) = r.encode();
            assert!(s);
            if nameable(base, size_log2) {
                assert_eq!(InvalidationRange::decode(a, s), (base, size_log2));
            } else {
                assert_eq!(a, ALL_PAGES_ADDRESS, "{base:#x} 2^{size_log2}");
            }
        }
        // What reaches 2^51 is everything: the unit reads bits 63:52 as copies of bit 51.
        for (start, end) in [
            (1u64 << 56, (1 << 56) + 0x1000),
            (1 << 51, (1 << 51) + 0x1000),
            ((1 << 51) - 0x1000, (1 << 51) + 0x1000),
            (1 << 52, (1 << 52) + 0x20_0000),
        ] {
            let r = InvalidationRange::covering(start, end);
            assert_eq!(r, InvalidationRange::All, "{start:#x}..{end:#x}");
        }
        let below = InvalidationRange::covering((1 << 51) - 0x2000, (1 << 51) - 0x1000);
        assert_eq!(below.span(), ((1 << 51) - 0x2000, 12));
        let low_half = InvalidationRange::covering(0, 1 << 51);
        assert_eq!(low_half.span(), (0, 51));
        for r in [
            InvalidationRange::Page(Iova::new(1 << 56)),
            InvalidationRange::Block {
                base: Iova::new(1 << 52),
                size_log2: 21,
            },
            InvalidationRange::Block {
                base: Iova::new(0),
                size_log2: 52,
            },
        ] {
            assert_eq!(r.encode(), (ALL_PAGES_ADDRESS, true), "{r:?}");
            assert_eq!(r.span(), (0, 64));
        }
        // The unit's reading of what the old encoding sent: other addresses.
        assert_eq!(InvalidationRange::decode(1 << 56, false), (0, 12));
        assert_eq!(
            InvalidationRange::decode(0xF_FFFF_FFFF_F000, false),
            (0xFFFF_FFFF_FFFF_F000, 12)
        );
        assert_eq!(
            InvalidationRange::decode((1 << 52) | 0xFF000, true),
            (0, 21)
        );
        // A first clear bit at 51 is everything (48882 Table 14).
        assert_eq!(InvalidationRange::decode(0x7_FFFF_FFFF_F000, true), (0, 64));
        let (a, s) = InvalidationRange::All.encode();
        assert_eq!((a, s), (ALL_PAGES_ADDRESS, true));
        assert_eq!(InvalidationRange::decode(a, s), (0, 64));
        let (a, s) = InvalidationRange::Page(Iova::new(0x5000)).encode();
        assert_eq!(InvalidationRange::decode(a, s), (0x5000, 12));
        // 8 KiB at 0x4000: bit 12 clear.
        let r = InvalidationRange::Block {
            base: Iova::new(0x4000),
            size_log2: 13,
        };
        assert_eq!(r.encode(), (0x4000, true));
        // 16 KiB at 0x8000: bit 12 set, bit 13 clear.
        let r = InvalidationRange::Block {
            base: Iova::new(0x8000),
            size_log2: 14,
        };
        assert_eq!(r.encode(), (0x9000, true));
    }

    #[test]
    fn covering_is_the_smallest_aligned_block() {
        assert_eq!(
            InvalidationRange::covering(0x5000, 0x6000),
            InvalidationRange::Page(Iova::new(0x5000))
        );
        assert_eq!(
            InvalidationRange::covering(0x5000, 0x7000),
            InvalidationRange::Block {
                base: Iova::new(0x4000),
                size_log2: 14
            }
        );
        assert_eq!(
            InvalidationRange::covering(0x20_0000, 0x40_0000),
            InvalidationRange::Block {
                base: Iova::new(0x20_0000),
                size_log2: 21
            }
        );
        assert_eq!(
            InvalidationRange::covering(0, u64::MAX),
            InvalidationRange::All
        );
        // Every covering block covers its range.
        let cases = [
            (0x1000, 0x3000),
            (0xFFF_F000, 0x1000_1000),
            (0x7000, 0x9000),
        ];
        for (s, e) in cases {
            let (a, sb) = InvalidationRange::covering(s, e).encode();
            let (first, log2) = InvalidationRange::decode(a, sb);
            assert!(
                first <= s && e - 1 <= first + ((1u64 << log2) - 1),
                "{s:#x}..{e:#x}"
            );
        }
    }

    /// The merge itself is tested against brute force in `aligned_blocks`; here, the ends of
    /// what the `S` encoding names.
    #[test]
    fn fewest_blocks_join_up_to_everything() {
        // A page inside the 64 KiB block around it; four 16 KiB blocks that tile 64 KiB.
        let mut blocks = [
            InvalidationRange::Page(Iova::new(0x5000)),
            InvalidationRange::covering(0, 0x1_0000),
        ];
        assert_eq!(fewest_blocks(&mut blocks), 1);
        assert_eq!(blocks[0].span(), (0, 16));
        let mut blocks =
            [0, 0x4000, 0x8000, 0xC000].map(|a| InvalidationRange::covering(a, a + 0x4000));
        assert_eq!(fewest_blocks(&mut blocks), 1);
        assert_eq!(blocks[0].span(), (0, 16));
        // Everything swallows the rest.
        let mut blocks = [
            InvalidationRange::Page(Iova::new(0x5000)),
            InvalidationRange::All,
        ];
        assert_eq!(fewest_blocks(&mut blocks), 1);
        assert_eq!(blocks[0], InvalidationRange::All);
        // The two halves of the address space are everything.
        let half = |base| InvalidationRange::Block {
            base: Iova::new(base),
            size_log2: 63,
        };
        let mut blocks = [half(0), half(1 << 63)];
        assert_eq!(fewest_blocks(&mut blocks), 1);
        assert_eq!(blocks[0].span(), (0, 64));
        // So are the two halves of the 2^52 the command names.
        let mut blocks = [
            InvalidationRange::covering(0, 1 << 51),
            InvalidationRange::covering(1 << 51, 1 << 52),
        ];
        assert_eq!(fewest_blocks(&mut blocks), 1);
        assert_eq!(blocks[0].span(), (0, 64));
    }

    #[test]
    fn layouts() {
        let c = Command::completion_wait(Some((PhysAddr::new(0x1234_5678), 7)), true);
        assert_eq!(c.opcode(), OPCODE_COMPLETION_WAIT);
        assert_eq!(c.0, [0x1000_0000_1234_567B, 7]);
        let c = Command::invalidate_iommu_pages(
            5,
            None,
            InvalidationRange::Page(Iova::new(0x7000)),
            true,
        );
        assert_eq!(c.0, [0x3000_0005_0000_0000, 0x7002]);
        let c = Command::invalidate_devtab_entry(0x20);
        assert_eq!(c.0, [0x2000_0000_0000_0020, 0]);
        assert_eq!(Command::invalidate_iommu_all().opcode(), 8);
        let c = Command::invalidate_iotlb_pages(0x20, 32, None, InvalidationRange::All);
        assert_eq!(c.0[0], 0x4000_0020_2000_0020);
        assert_eq!(c.0[1], ALL_PAGES_ADDRESS | 1);
    }
}
