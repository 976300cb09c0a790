//! The IORT table header and its node array: Arm DEN 0049 E.f, chapter 3, table "IORT" (the
//! ACPI header, then `Number of IORT Nodes` at byte 36, `Offset to Array of IORT Nodes` at 40,
//! reserved at 44).
//!
//! Nodes follow one another from the array offset, each `Length` bytes long; a node is found by
//! walking the array, so a reference that points into the middle of a node is refused instead
//! of being decoded as a node.

use super::node::{Node, NodeRef, NodeType, NODE_HEADER_LEN};
use super::{u32_at, Error};
use crate::firmware::acpi::{self, Sdt, Signature, SDT_HEADER_LEN};

/// Bytes of the IORT header: the ACPI header and three 32-bit fields.
pub const IORT_HEADER_LEN: usize = SDT_HEADER_LEN + 12;

/// Table revision of issue E.b (what QEMU 10.0 writes).
pub const REVISION_E_B: u8 = 3;
/// Table revision of issue E.d, from which RMR nodes are honoured.
pub const REVISION_E_D: u8 = 5;
/// Table revision of issue E.e (SMMUv3 `DeviceID mapping index valid`).
pub const REVISION_E_E: u8 = 6;
/// Table revision of issue E.f (memory access flag `CANWBS`).
pub const REVISION_E_F: u8 = 7;

/// A checked IORT: signature, length and checksum verified, the node array inside the table.
#[derive(Clone, Copy, Debug)]
pub struct Iort<'a> {
    bytes: &'a [u8],
    revision: u8,
    node_count: u32,
    node_offset: u32,
}

impl<'a> Iort<'a> {
    /// Checks and decodes the IORT at the start of `bytes` (bytes beyond its `Length` are
    /// ignored).
    ///
    /// # Errors
    /// [`Error::Acpi`] for a bad signature, length or checksum, or a table too short for the
    /// IORT header; [`Error::NodeLength`] if the node array starts outside the table.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::from_sdt(Sdt::parse_expecting(bytes, Signature::IORT)?)
    }

    /// Decodes an ACPI table already checked (found through the XSDT with
    /// [`acpi`]).
    ///
    /// # Errors
    /// As [`parse`](Self::parse).
    pub fn from_sdt(sdt: Sdt<'a>) -> Result<Self, Error> {
        if sdt.signature() != Signature::IORT {
            return Err(acpi::Error::WrongSignature {
                expected: Signature::IORT,
                found: sdt.signature(),
            }
            .into());
        }
        let bytes = sdt.bytes();
        let node_count = u32_at(bytes, SDT_HEADER_LEN)?;
        let node_offset = u32_at(bytes, SDT_HEADER_LEN + 4)?;
        u32_at(bytes, SDT_HEADER_LEN + 8)?;
        if node_count != 0 && !(IORT_HEADER_LEN..=bytes.len()).contains(&(node_offset as usize)) {
            return Err(Error::NodeLength {
                offset: node_offset,
                length: 0,
                table_length: bytes.len(),
            });
        }
        Ok(Self {
            bytes,
            revision: sdt.header().revision,
            node_count,
            node_offset,
        })
    }

    /// The table's revision (ACPI header `Revision`): [`REVISION_E_F`] for issue E.f.
    pub const fn revision(&self) -> u8 {
        self.revision
    }

    /// `Number of IORT Nodes`.
    pub const fn node_count(&self) -> u32 {
        self.node_count
    }

    /// The whole table: exactly `Length` bytes.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Every node, in table order. The iterator stops after the first malformed node header
    /// (yielding its error), and after `Number of IORT Nodes`.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            table: self.bytes,
            offset: self.node_offset as usize,
            left: self.node_count,
        }
    }

    /// The node that starts at `reference`.
    ///
    /// # Errors
    /// [`Error::NoNodeAt`] if no node starts there; the error of a malformed node header met
    /// on the way.
    pub fn node(&self, reference: NodeRef) -> Result<Node<'a>, Error> {
        for node in self.nodes() {
            let node = node?;
            if node.reference() == reference {
                return Ok(node);
            }
        }
        Err(Error::NoNodeAt { reference })
    }

    /// Every node of type `node_type` (nodes before a malformed header only; use
    /// [`nodes`](Self::nodes) to see the error).
    pub fn nodes_of(&self, node_type: NodeType) -> impl Iterator<Item = Node<'a>> + 'a {
        self.nodes()
            .map_while(Result::ok)
            .filter(move |n| n.node_type() == node_type)
    }
}

/// Iterator over the nodes of an [`Iort`].
#[derive(Clone, Debug)]
pub struct Nodes<'a> {
    table: &'a [u8],
    offset: usize,
    left: u32,
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Result<Node<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        match Node::at(self.table, self.offset) {
            Ok(node) => {
                // `Node::at` checked `length >= NODE_HEADER_LEN`: the walk always advances.
                self.offset += node.length() as usize;
                debug_assert!(node.length() as usize >= NODE_HEADER_LEN);
                Some(Ok(node))
            }
            Err(e) => {
                self.left = 0;
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let fit = self.table.len().saturating_sub(self.offset) / NODE_HEADER_LEN + 1;
        (0, Some((self.left as usize).min(fit)))
    }
}

impl core::iter::FusedIterator for Nodes<'_> {}
