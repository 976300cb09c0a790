//! Named component node: Arm DEN 0049 E.f, chapter 3, table "Named component node format"
//! (type 1: the node header, `Node Flags` u32 at 16, memory access properties (8 bytes) at
//! 20, `Device memory address size limit` u8 at 28, `Device object name` (NUL-terminated ASCII,
//! the full path of the device in the ACPI namespace) from 29, padding, then the ID
//! mappings).
//!
//! A named component is a platform device. Its ID mappings give its StreamIDs: usually single
//! mappings (one StreamID each), or ranges for a device whose transactions carry IDs of its own.

use bitflags::bitflags;

use super::memory_access::{MemoryAccessProperties, MEMORY_ACCESS_LEN};
use super::node::{Node, NodeType};
use super::{u32_at, u8_at, Error};

/// Offset of `Node Flags`.
const FLAGS: usize = 16;
/// Offset of the memory access properties.
const MEMORY_ACCESS: usize = 20;
/// Offset of `Device memory address size limit`.
const ADDRESS_SIZE_LIMIT: usize = MEMORY_ACCESS + MEMORY_ACCESS_LEN;
/// Offset of `Device object name`.
const NAME: usize = ADDRESS_SIZE_LIMIT + 1;

bitflags! {
    /// `Node Flags` of a named component.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct NamedComponentFlags: u32 {
        /// Bit 0: the device can be stalled (SMMUv3 stall model).
        const STALL_SUPPORTED = 1 << 0;
        const _ = !0;
    }
}

impl NamedComponentFlags {
    /// Bits 5:1, `Substream width`: the SubstreamID (PASID) bits the device supports.
    pub const fn substream_width(self) -> u32 {
        (self.bits() >> 1) & 0x1f
    }
}

/// A named component node.
#[derive(Clone, Copy, Debug)]
pub struct NamedComponent<'a> {
    /// The node.
    pub node: Node<'a>,
    /// `Node Flags`.
    pub flags: NamedComponentFlags,
    /// Memory access properties.
    pub memory_access: MemoryAccessProperties,
    /// `Device memory address size limit`: the bits of address the device can drive; `None`
    /// when 0 (not declared).
    pub address_size_limit: Option<u8>,
    /// `Device object name` without its NUL (`b"\\_SB.DEV0"`).
    pub name: &'a [u8],
}

impl<'a> NamedComponent<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`], [`Error::NameNotTerminated`] if the
    /// name's NUL is not inside the node (before the ID mappings, when there are any).
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::NamedComponent)?;
        node.require(NAME + 1)?;
        let bytes = node.bytes();
        let limit = u8_at(bytes, ADDRESS_SIZE_LIMIT)?;
        // The name ends before the ID mappings when they follow it.
        let end = match node.mapping_offset() as usize {
            m if node.mapping_count() != 0 && m > NAME => m.min(bytes.len()),
            _ => bytes.len(),
        };
        let area = bytes.get(NAME..end).unwrap_or(&[]);
        let nul = area
            .iter()
            .position(|&b| b == 0)
            .ok_or(Error::NameNotTerminated {
                node: node.reference(),
            })?;
        Ok(Self {
            node,
            flags: NamedComponentFlags::from_bits_retain(u32_at(bytes, FLAGS)?),
            memory_access: MemoryAccessProperties::decode(bytes, MEMORY_ACCESS)?,
            address_size_limit: (limit != 0).then_some(limit),
            name: area.get(..nul).unwrap_or(&[]),
        })
    }
}
