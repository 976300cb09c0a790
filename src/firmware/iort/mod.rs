//! The ACPI IO Remapping Table (IORT): Arm DEN 0049, "IO Remapping Table, Platform Design
//! Document", revision E.f (April 2024; table revision 7). Older tables decode too: QEMU 10.0
//! writes revision 3 (issue E.b), Linux honours RMR nodes from revision 5 (E.d) on.
//!
//! The IORT describes how the IDs a device's transactions carry travel through the system:
//! a PCI root complex's requester IDs or a named component's own IDs are mapped, through the
//! *ID mappings* of each node, to StreamIDs of an SMMU, and from there (or directly, when no
//! SMMU sits in between) to DeviceIDs of a GIC ITS group for MSIs. Nodes refer to each other by
//! their offset from the start of the table ([`NodeRef`]).
//!
//! | file | structure (DEN 0049 E.f, chapter 3 "IORT") |
//! |---|---|
//! | [`table`] | the table header (node count, node array offset) after the ACPI header; node iteration |
//! | [`node`] | the node header common to every node: type, length, revision, identifier, ID mapping count and offset |
//! | [`id_mapping`] | the ID mapping format (input base, number of IDs, output base, output reference, flags) |
//! | [`memory_access`] | the memory access properties of named components and root complexes (CCA, AH, MAF) |
//! | [`its_group`], [`named_component`], [`root_complex`], [`smmu_v3`], [`pmcg`], [`rmr`] | one node type each |
//! | [`resolve`] | requester ID -> (SMMU node, StreamID), StreamID/requester ID -> (ITS group, DeviceID) |
//! | [`platform`] | what the crate's SMMUv3 driver and IOASID layer take: [`DeviceFacts`](crate::smmuv3::DeviceFacts), a unit's [`Platform`](crate::smmuv3::Platform), reserved ranges per StreamID |
//!
//! Every decoder works on the borrowed table, allocates nothing, checks every offset and length
//! against the node and the table that hold it, and reports malformed input as an [`Error`]
//! carrying the offending value; no input makes any function here panic (fuzz target
//! `firmware_iort`).

pub mod id_mapping;
pub mod its_group;
pub mod memory_access;
pub mod named_component;
pub mod node;
pub mod platform;
pub mod pmcg;
pub mod resolve;
pub mod rmr;
pub mod root_complex;
pub mod smmu_v3;
pub mod table;

#[cfg(any(test, feature = "fuzzing"))]
pub mod build;
#[cfg(test)]
mod tests;

use core::fmt;

use super::acpi;

pub use id_mapping::{IdMapping, IdMappingFlags, IdMappings};
pub use node::{Node, NodeKind, NodeRef, NodeType};
pub use resolve::{MsiTarget, StreamTarget, MAX_CHAIN};
pub use table::Iort;

/// An error decoding an IORT. Every variant carries the value that was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The ACPI layer refused the table (header, length, checksum, signature) or a read ran
    /// past the bytes of the table.
    Acpi(acpi::Error),
    /// A node header at `offset` declares a `length` below the 16-byte node header or reaching
    /// past the end of the table (`table_length`).
    NodeLength {
        /// The node's offset in the table.
        offset: u32,
        /// Its `Length` field.
        length: u16,
        /// Bytes in the table.
        table_length: usize,
    },
    /// A node is shorter than the fields its type and revision define.
    NodeTooShort {
        /// The node.
        node: NodeRef,
        /// Its type.
        node_type: NodeType,
        /// Its `Length` field.
        length: u16,
        /// Bytes its fields need.
        needed: usize,
    },
    /// A reference (ID mapping output reference, PMCG node reference, a caller's [`NodeRef`])
    /// names no node: no node of the table starts at that offset.
    NoNodeAt {
        /// The offset referred to.
        reference: NodeRef,
    },
    /// A node was asked to be decoded as a type it is not.
    WrongNodeType {
        /// The node.
        node: NodeRef,
        /// Its type.
        found: NodeType,
        /// The type asked for.
        expected: NodeType,
    },
    /// A node's ID mapping array (`count` mappings of 20 bytes at `offset`) overlaps the node
    /// header or reaches past the node.
    MappingsOutsideNode {
        /// The node.
        node: NodeRef,
        /// `Reference to ID Array`.
        offset: u32,
        /// `Number of ID mappings`.
        count: u32,
    },
    /// An array of the node (ITS identifiers, RMR memory range descriptors, a named
    /// component's name) overlaps the node header or reaches past the node.
    ArrayOutsideNode {
        /// The node.
        node: NodeRef,
        /// What the array is.
        what: &'static str,
        /// Its offset in the node.
        offset: u32,
        /// Its element count (bytes for a name).
        count: u32,
    },
    /// A named component's `Device object name` has no NUL terminator inside the node.
    NameNotTerminated {
        /// The node.
        node: NodeRef,
    },
    /// An ID mapping's range (`input_base + number of IDs`, or the output it gives) wraps
    /// past `u32::MAX`.
    IdRangeOverflow {
        /// The node that holds the mapping.
        node: NodeRef,
        /// The mapping's index in the node.
        index: u32,
    },
    /// No ID mapping of `node` covers `id`: the device's ID reaches nothing.
    NoMapping {
        /// The node.
        node: NodeRef,
        /// The ID looked up.
        id: u32,
    },
    /// Following ID mappings from `start` took more than [`MAX_CHAIN`] steps (a cycle, or a
    /// chain no platform builds).
    ChainTooLong {
        /// The node the walk started from.
        start: NodeRef,
        /// The ID it started with.
        id: u32,
    },
    /// A mapping leads to a node that cannot sit there (a named component, root complex, PMCG
    /// or RMR node as the output of a mapping, an ITS group on the way to an SMMU).
    UnexpectedOutput {
        /// The node whose mapping points there.
        from: NodeRef,
        /// The node pointed to.
        to: NodeRef,
        /// Its type.
        node_type: NodeType,
    },
    /// An SMMUv3 node's valid `DeviceID mapping index` is not an index of its ID mappings: a
    /// firmware bug, reported by `SmmuV3::device_id_mapping_index_check` (decoding ignores the
    /// index).
    DeviceIdMappingIndex {
        /// The node.
        node: NodeRef,
        /// The index.
        index: u32,
        /// `Number of ID mappings`.
        count: u32,
    },
    /// An RMR memory range whose `base + length` wraps past `u64::MAX`.
    RangeOverflow {
        /// The RMR node.
        node: NodeRef,
        /// `Base address`.
        base: u64,
        /// `Length`.
        length: u64,
    },
    /// RMR nodes in a table below revision 5 (E.d): issue E.b had no RMR memory attributes and
    /// E.c's are deprecated, so the ranges cannot be trusted (Linux ignores them too).
    RmrBeforeRevisionEd {
        /// The table's revision.
        table_revision: u8,
    },
    /// More distinct StreamID ranges with declared facts than a
    /// [`Platform`](crate::smmuv3::Platform) holds.
    TooManyDeclarations {
        /// The SMMU node.
        smmu: NodeRef,
        /// [`MAX_DECLARATIONS`](crate::smmuv3::MAX_DECLARATIONS).
        max: usize,
    },
}

acpi::lift_acpi_error!(Error);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Acpi(e) => write!(f, "IORT: {e}"),
            Error::NodeLength { offset, length, table_length } => write!(
                f,
                "IORT node at {offset:#x}: length {length:#x} is below 16 or beyond the table's {table_length:#x} bytes"
            ),
            Error::NodeTooShort { node, node_type, length, needed } => write!(
                f,
                "IORT {node_type:?} node at {:#x}: length {length:#x}, its fields need {needed:#x}",
                node.0
            ),
            Error::NoNodeAt { reference } => {
                write!(f, "IORT reference {:#x} names no node", reference.0)
            }
            Error::WrongNodeType { node, found, expected } => write!(
                f,
                "IORT node at {:#x} is a {found:?} node, not {expected:?}",
                node.0
            ),
            Error::MappingsOutsideNode { node, offset, count } => write!(
                f,
                "IORT node at {:#x}: {count} ID mappings at {offset:#x} lie outside the node",
                node.0
            ),
            Error::ArrayOutsideNode { node, what, offset, count } => write!(
                f,
                "IORT node at {:#x}: {what} ({count} at {offset:#x}) lie outside the node",
                node.0
            ),
            Error::NameNotTerminated { node } => write!(
                f,
                "IORT named component at {:#x}: name not NUL-terminated inside the node",
                node.0
            ),
            Error::IdRangeOverflow { node, index } => write!(
                f,
                "IORT node at {:#x}: ID mapping {index} wraps past 0xffffffff",
                node.0
            ),
            Error::NoMapping { node, id } => {
                write!(f, "IORT node at {:#x}: no ID mapping covers ID {id:#x}", node.0)
            }
            Error::ChainTooLong { start, id } => write!(
                f,
                "IORT: mappings of ID {id:#x} from node {:#x} go on past {MAX_CHAIN} steps",
                start.0
            ),
            Error::UnexpectedOutput { from, to, node_type } => write!(
                f,
                "IORT node at {:#x}: an ID mapping leads to a {node_type:?} node at {:#x}",
                from.0, to.0
            ),
            Error::DeviceIdMappingIndex { node, index, count } => write!(
                f,
                "IORT SMMUv3 node at {:#x}: DeviceID mapping index {index} of {count} mappings",
                node.0
            ),
            Error::RangeOverflow { node, base, length } => write!(
                f,
                "IORT RMR node at {:#x}: range {base:#x} + {length:#x} wraps",
                node.0
            ),
            Error::RmrBeforeRevisionEd { table_revision } => write!(
                f,
                "IORT revision {table_revision} has RMR nodes; they are honoured from revision 5 (E.d)"
            ),
            Error::TooManyDeclarations { smmu, max } => write!(
                f,
                "IORT SMMU node at {:#x}: more than {max} StreamID ranges with distinct facts",
                smmu.0
            ),
        }
    }
}

/// `u32` field at `offset` of a node's bytes.
fn u32_at(bytes: &[u8], offset: usize) -> Result<u32, Error> {
    Ok(acpi::read_u32(bytes, offset)?)
}

/// `u64` field at `offset` of a node's bytes.
fn u64_at(bytes: &[u8], offset: usize) -> Result<u64, Error> {
    Ok(acpi::read_u64(bytes, offset)?)
}

/// `u8` field at `offset` of a node's bytes.
fn u8_at(bytes: &[u8], offset: usize) -> Result<u8, Error> {
    Ok(acpi::read_u8(bytes, offset)?)
}
