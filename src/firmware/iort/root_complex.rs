//! PCI root complex node: Arm DEN 0049 E.f, chapter 3, table "Root complex node format" (type
//! 2: the node header, memory access properties (8 bytes) at 16, `ATS Attribute` u32 at 24,
//! `PCI Segment number` u32 at 28, `Memory address size limit` u8 at 32 (node revision 1 on),
//! `PASID capabilities` u16 at 33 (revision 4, as in E.f), then the ID mappings).
//!
//! A root complex's ID mappings take PCI requester IDs (`bus << 8 | device << 3 | function`)
//! of its segment to StreamIDs of an SMMU, or to DeviceIDs of an ITS group for a device no SMMU
//! translates.

use bitflags::bitflags;

use super::memory_access::MemoryAccessProperties;
use super::node::{Node, NodeType};
use super::{u32_at, u8_at, Error};
use crate::firmware::acpi;

/// Offset of the memory access properties.
const MEMORY_ACCESS: usize = 16;
/// Offset of `ATS Attribute`.
const ATS: usize = 24;
/// Offset of `PCI Segment number`.
const SEGMENT: usize = 28;
/// Offset of `Memory address size limit` (revision 1 on).
const ADDRESS_SIZE_LIMIT: usize = 32;
/// Offset of `PASID capabilities` (revision 4).
const PASID_CAPABILITIES: usize = 33;

bitflags! {
    /// `ATS Attribute` of a root complex.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AtsAttribute: u32 {
        /// Bit 0: the root complex supports ATS (Address Translation Services).
        const ATS_SUPPORTED = 1 << 0;
        /// Bit 1: the root complex supports PRI (Page Request Interface).
        const PRI_SUPPORTED = 1 << 1;
        /// Bit 2: the root complex forwards PASID prefixes on translated transactions.
        const PASID_FORWARDING_SUPPORTED = 1 << 2;
        const _ = !0;
    }
}

/// A PCI root complex node.
#[derive(Clone, Copy, Debug)]
pub struct RootComplex<'a> {
    /// The node.
    pub node: Node<'a>,
    /// Memory access properties (of every device below the root complex).
    pub memory_access: MemoryAccessProperties,
    /// `ATS Attribute`.
    pub ats: AtsAttribute,
    /// `PCI Segment number`: the segment whose requester IDs the mappings take (matches the
    /// MCFG and `_SEG`).
    pub segment: u32,
    /// `Memory address size limit`: the bits of address the root complex can drive; `None`
    /// in a revision-0 node or when 0 (not declared).
    pub address_size_limit: Option<u8>,
    /// `PASID capabilities` bits 4:0, `Max PASID width`; `None` before revision 4.
    pub max_pasid_width: Option<u8>,
}

impl<'a> RootComplex<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`].
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::RootComplex)?;
        let rev = node.revision();
        let needed = match rev {
            0 => SEGMENT + 4,
            1..=3 => ADDRESS_SIZE_LIMIT + 1,
            _ => PASID_CAPABILITIES + 2,
        };
        node.require(needed)?;
        let bytes = node.bytes();
        let limit = if rev >= 1 {
            u8_at(bytes, ADDRESS_SIZE_LIMIT)?
        } else {
            0
        };
        let max_pasid_width = if rev >= 4 {
            Some((acpi::read_u16(bytes, PASID_CAPABILITIES)? & 0x1f) as u8)
        } else {
            None
        };
        Ok(Self {
            node,
            memory_access: MemoryAccessProperties::decode(bytes, MEMORY_ACCESS)?,
            ats: AtsAttribute::from_bits_retain(u32_at(bytes, ATS)?),
            segment: u32_at(bytes, SEGMENT)?,
            address_size_limit: (limit != 0).then_some(limit),
            max_pasid_width,
        })
    }
}
