//! The IORT node header: Arm DEN 0049 E.f, chapter 3, table "IORT node format" (`Type` u8 at
//! 0, `Length` u16 at 1, `Revision` u8 at 3, `Identifier` u32 at 4 (reserved before issue
//! E.b), `Number of ID mappings` u32 at 8, `Reference to ID Array` u32 at 12), and the node
//! types of table "IORT node types".

use super::id_mapping::IdMappings;
use super::its_group::ItsGroup;
use super::named_component::NamedComponent;
use super::pmcg::Pmcg;
use super::rmr::Rmr;
use super::root_complex::RootComplex;
use super::smmu_v3::SmmuV3;
use super::{u32_at, Error};
use crate::firmware::acpi;

/// Bytes of the node header.
pub const NODE_HEADER_LEN: usize = 16;

/// A node's offset from the start of the IORT: how nodes refer to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeRef(pub u32);

/// `Type` of a node (table "IORT node types").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NodeType {
    /// 0: ITS group.
    ItsGroup,
    /// 1: named component (a platform device described in the namespace).
    NamedComponent,
    /// 2: PCI root complex.
    RootComplex,
    /// 3: SMMUv1 or SMMUv2.
    SmmuV1V2,
    /// 4: SMMUv3.
    SmmuV3,
    /// 5: performance monitoring counter group (PMCG) of an SMMUv3.
    Pmcg,
    /// 6: reserved memory range (RMR).
    Rmr,
    /// A type this decoder does not know (later issues add types); such nodes are skipped.
    Other(u8),
}

impl From<u8> for NodeType {
    fn from(raw: u8) -> Self {
        match raw {
            0 => Self::ItsGroup,
            1 => Self::NamedComponent,
            2 => Self::RootComplex,
            3 => Self::SmmuV1V2,
            4 => Self::SmmuV3,
            5 => Self::Pmcg,
            6 => Self::Rmr,
            other => Self::Other(other),
        }
    }
}

impl NodeType {
    /// Whether the node is an SMMU (v1/v2 or v3): where a device's IDs become StreamIDs.
    pub const fn is_smmu(self) -> bool {
        matches!(self, Self::SmmuV1V2 | Self::SmmuV3)
    }
}

/// One node: its header decoded, its bytes (exactly `Length` of them) borrowed from the table.
#[derive(Clone, Copy, Debug)]
pub struct Node<'a> {
    bytes: &'a [u8],
    reference: NodeRef,
    node_type: NodeType,
    revision: u8,
    identifier: u32,
    mapping_count: u32,
    mapping_offset: u32,
}

impl<'a> Node<'a> {
    /// The node whose header starts at `offset` of `table`.
    pub(super) fn at(table: &'a [u8], offset: usize) -> Result<Self, Error> {
        let header = acpi::read_bytes(table, offset, NODE_HEADER_LEN)?;
        let length = acpi::read_u16(header, 1)?;
        let bad_length = Error::NodeLength {
            offset: u32::try_from(offset).unwrap_or(u32::MAX),
            length,
            table_length: table.len(),
        };
        if (length as usize) < NODE_HEADER_LEN {
            return Err(bad_length);
        }
        let bytes = acpi::read_bytes(table, offset, length as usize).map_err(|_| bad_length)?;
        let reference = NodeRef(u32::try_from(offset).map_err(|_| bad_length)?);
        Ok(Self {
            bytes,
            reference,
            node_type: NodeType::from(acpi::read_u8(header, 0)?),
            revision: acpi::read_u8(header, 3)?,
            identifier: u32_at(header, 4)?,
            mapping_count: u32_at(header, 8)?,
            mapping_offset: u32_at(header, 12)?,
        })
    }

    /// Where the node is: its offset in the table.
    pub const fn reference(&self) -> NodeRef {
        self.reference
    }

    /// `Type`.
    pub const fn node_type(&self) -> NodeType {
        self.node_type
    }

    /// `Length`: bytes of the node, header included.
    pub const fn length(&self) -> u16 {
        self.bytes.len() as u16
    }

    /// `Revision` of the node's format (each node type has its own).
    pub const fn revision(&self) -> u8 {
        self.revision
    }

    /// `Identifier`: unique among the table's nodes (issue E.b on; reserved, zero, before).
    pub const fn identifier(&self) -> u32 {
        self.identifier
    }

    /// `Number of ID mappings`.
    pub const fn mapping_count(&self) -> u32 {
        self.mapping_count
    }

    /// `Reference to ID Array`: offset of the ID mappings from the start of the node.
    pub const fn mapping_offset(&self) -> u32 {
        self.mapping_offset
    }

    /// The node's bytes, header included.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The node's ID mappings.
    ///
    /// # Errors
    /// [`Error::MappingsOutsideNode`] if the array overlaps the header or leaves the node.
    pub fn id_mappings(&self) -> Result<IdMappings<'a>, Error> {
        IdMappings::of(self)
    }

    /// Checks that the node is at least `needed` bytes long (its type's fields at its revision).
    pub(super) fn require(&self, needed: usize) -> Result<(), Error> {
        if self.bytes.len() < needed {
            return Err(Error::NodeTooShort {
                node: self.reference,
                node_type: self.node_type,
                length: self.length(),
                needed,
            });
        }
        Ok(())
    }

    /// Checks that the node is of type `expected`.
    pub(super) fn expect(&self, expected: NodeType) -> Result<(), Error> {
        if self.node_type != expected {
            return Err(Error::WrongNodeType {
                node: self.reference,
                found: self.node_type,
                expected,
            });
        }
        Ok(())
    }

    /// The node decoded by its type.
    ///
    /// # Errors
    /// Those of the type's decoder (a node too short for its fields, an array outside it).
    pub fn kind(&self) -> Result<NodeKind<'a>, Error> {
        Ok(match self.node_type {
            NodeType::ItsGroup => NodeKind::ItsGroup(ItsGroup::decode(*self)?),
            NodeType::NamedComponent => NodeKind::NamedComponent(NamedComponent::decode(*self)?),
            NodeType::RootComplex => NodeKind::RootComplex(RootComplex::decode(*self)?),
            NodeType::SmmuV3 => NodeKind::SmmuV3(SmmuV3::decode(*self)?),
            NodeType::Pmcg => NodeKind::Pmcg(Pmcg::decode(*self)?),
            NodeType::Rmr => NodeKind::Rmr(Rmr::decode(*self)?),
            NodeType::SmmuV1V2 | NodeType::Other(_) => NodeKind::Other(*self),
        })
    }
}

/// A node decoded by its type.
#[derive(Clone, Copy, Debug)]
pub enum NodeKind<'a> {
    /// ITS group.
    ItsGroup(ItsGroup<'a>),
    /// Named component.
    NamedComponent(NamedComponent<'a>),
    /// PCI root complex.
    RootComplex(RootComplex<'a>),
    /// SMMUv3.
    SmmuV3(SmmuV3<'a>),
    /// PMCG.
    Pmcg(Pmcg<'a>),
    /// Reserved memory range.
    Rmr(Rmr<'a>),
    /// SMMUv1/v2 (only its header and ID mappings are decoded: the crate drives SMMUv3) or a
    /// type this decoder does not know.
    Other(Node<'a>),
}
