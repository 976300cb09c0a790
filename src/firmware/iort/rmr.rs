//! Reserved memory range (RMR) node: Arm DEN 0049 E.f, chapter 3, table "RMR node format"
//! (type 6: the node header, `Flags` u32 at 16, `Number of memory range descriptors` u32 at 20,
//! `Reference to memory range descriptors` u32 at 24, the ID mappings, and the array of
//! table "Memory range descriptor format": `Physical range offset` (base) u64, `Physical range
//! length` u64, reserved u32, 20 bytes each).
//!
//! An RMR names memory that devices keep reaching across the OS's takeover of the SMMU (a
//! firmware-owned buffer, a display's framebuffer): the devices are the StreamIDs
//! `Output base ..= Output base + Number of IDs` of the SMMU each ID mapping's `Output
//! reference` names, and every range must stay mapped for them, identity-mapped unless
//! `Flags` bit 0 lets the OS remap it. The issue wants base and length 64 KiB aligned.
//! The flags as decoded here are those of issue E.d on (table revision 5): E.b had no memory
//! attributes and E.c's layout is deprecated.

use bitflags::bitflags;

use super::id_mapping::IdMapping;
use super::node::{Node, NodeRef, NodeType, NODE_HEADER_LEN};
use super::{u32_at, u64_at, Error};
use crate::mem::Iova;
use crate::pgtable::IovaRange;

/// Offset of `Flags`.
const FLAGS: usize = 16;
/// Offset of `Number of memory range descriptors`.
const RANGE_COUNT: usize = 20;
/// Offset of `Reference to memory range descriptors`.
const RANGE_OFFSET: usize = 24;
/// Bytes of one memory range descriptor.
pub const MEMORY_RANGE_LEN: usize = 20;
/// Alignment the issue wants of an RMR's base and length (64 KiB).
pub const RMR_ALIGN: u64 = 1 << 16;

bitflags! {
    /// `Flags` of an RMR node (E.d on).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct RmrFlags: u32 {
        /// Bit 0: the OS may remap the ranges (map them at another IOVA); clear, they must
        /// be identity-mapped.
        const REMAPPING_PERMITTED = 1 << 0;
        /// Bit 1: the accesses to the ranges are privileged.
        const ACCESS_PRIVILEGED = 1 << 1;
        /// Bits 9:2: see [`RmrFlags::access_attributes`].
        const ACCESS_ATTRIBUTES = 0xff << 2;
        const _ = !0;
    }
}

/// `Flags` bits 9:2: the memory attributes the ranges must be mapped with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RmrAccessAttributes {
    /// 0x00: Device-nGnRnE.
    DeviceNGnRnE,
    /// 0x01: Device-nGnRE.
    DeviceNGnRE,
    /// 0x02: Device-nGRE.
    DeviceNGRE,
    /// 0x03: Device-GRE.
    DeviceGRE,
    /// 0x04: Normal, inner and outer non-cacheable.
    NormalNonCacheable,
    /// 0x05: Normal, inner and outer write-back, inner shareable.
    NormalWriteBack,
    /// Reserved values.
    Reserved(u8),
}

impl RmrFlags {
    /// The access attributes.
    pub const fn access_attributes(self) -> RmrAccessAttributes {
        match (self.bits() >> 2) as u8 {
            0 => RmrAccessAttributes::DeviceNGnRnE,
            1 => RmrAccessAttributes::DeviceNGnRE,
            2 => RmrAccessAttributes::DeviceNGRE,
            3 => RmrAccessAttributes::DeviceGRE,
            4 => RmrAccessAttributes::NormalNonCacheable,
            5 => RmrAccessAttributes::NormalWriteBack,
            other => RmrAccessAttributes::Reserved(other),
        }
    }
}

/// One memory range descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryRange {
    /// The RMR node.
    pub node: NodeRef,
    /// `Physical range offset`: the base address.
    pub base: u64,
    /// `Physical range length`.
    pub length: u64,
}

impl MemoryRange {
    /// The range as IOVAs mapped one to one: `[base, base + length)`.
    ///
    /// # Errors
    /// [`Error::RangeOverflow`] if `base + length` wraps.
    pub fn identity(&self) -> Result<IovaRange, Error> {
        let end = self
            .base
            .checked_add(self.length)
            .ok_or(Error::RangeOverflow {
                node: self.node,
                base: self.base,
                length: self.length,
            })?;
        Ok(IovaRange {
            start: Iova::new(self.base),
            end: Iova::new(end),
        })
    }

    /// Whether base and length are 64 KiB aligned, as the issue requires (Linux warns and
    /// uses the range anyway; so may the embedder).
    pub const fn aligned(&self) -> bool {
        self.base % RMR_ALIGN == 0 && self.length % RMR_ALIGN == 0
    }
}

/// An RMR node.
#[derive(Clone, Copy, Debug)]
pub struct Rmr<'a> {
    /// The node.
    pub node: Node<'a>,
    /// `Flags`.
    pub flags: RmrFlags,
    ranges: &'a [u8],
}

impl<'a> Rmr<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`], [`Error::ArrayOutsideNode`] for a
    /// descriptor array overlapping the node header or leaving the node.
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::Rmr)?;
        node.require(RANGE_OFFSET + 4)?;
        let bytes = node.bytes();
        let count = u32_at(bytes, RANGE_COUNT)?;
        let offset = u32_at(bytes, RANGE_OFFSET)?;
        let outside = Error::ArrayOutsideNode {
            node: node.reference(),
            what: "memory range descriptors",
            offset,
            count,
        };
        let ranges = if count == 0 {
            &[][..]
        } else {
            let start = offset as usize;
            let len = (count as usize)
                .checked_mul(MEMORY_RANGE_LEN)
                .ok_or(outside)?;
            let end = start.checked_add(len).ok_or(outside)?;
            if start < NODE_HEADER_LEN {
                return Err(outside);
            }
            bytes.get(start..end).ok_or(outside)?
        };
        Ok(Self {
            node,
            flags: RmrFlags::from_bits_retain(u32_at(bytes, FLAGS)?),
            ranges,
        })
    }

    /// The memory range descriptors.
    pub fn ranges(&self) -> impl ExactSizeIterator<Item = MemoryRange> + 'a {
        let node = self.node.reference();
        self.ranges
            .chunks_exact(MEMORY_RANGE_LEN)
            .map(move |d| MemoryRange {
                node,
                base: u64_at(d, 0).unwrap_or(0),
                length: u64_at(d, 8).unwrap_or(0),
            })
    }

    /// The ID mappings: each names StreamIDs of an SMMU that need the ranges.
    ///
    /// # Errors
    /// [`Error::MappingsOutsideNode`].
    pub fn streams(&self) -> Result<impl Iterator<Item = IdMapping> + 'a, Error> {
        self.node.id_mappings()
    }
}
