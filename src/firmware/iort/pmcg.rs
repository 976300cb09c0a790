//! Performance monitoring counter group (PMCG) node: Arm DEN 0049 E.f, chapter 3, table "PMCG
//! node format" (type 5: the node header, `Page 0 Base Address` u64 at 16, `Overflow interrupt
//! GSIV` u32 at 24, `Node reference` u32 at 28, `Page 1 Base Address` u64 at 32 (node revision
//! 1 on), then the ID mappings: at most one, a single mapping giving the PMCG's own DeviceID
//! for its overflow MSI).

use super::id_mapping::IdMapping;
use super::node::{Node, NodeRef, NodeType};
use super::{u32_at, u64_at, Error};

/// Offset of `Page 0 Base Address`.
const PAGE0: usize = 16;
/// Offset of `Overflow interrupt GSIV`.
const OVERFLOW_GSIV: usize = 24;
/// Offset of `Node reference`.
const NODE_REFERENCE: usize = 28;
/// Offset of `Page 1 Base Address` (revision 1 on).
const PAGE1: usize = 32;

/// A PMCG node.
#[derive(Clone, Copy, Debug)]
pub struct Pmcg<'a> {
    /// The node.
    pub node: Node<'a>,
    /// `Page 0 Base Address`.
    pub page0_base: u64,
    /// `Overflow interrupt GSIV`; `None` when 0 (the PMCG signals overflow with an MSI).
    pub overflow_gsiv: Option<u32>,
    /// `Node reference`: the SMMU or device node whose events the PMCG counts (`None` when 0,
    /// which is the table header, never a node).
    pub node_reference: Option<NodeRef>,
    /// `Page 1 Base Address`; `None` in a revision-0 node.
    pub page1_base: Option<u64>,
}

impl<'a> Pmcg<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`].
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::Pmcg)?;
        let has_page1 = node.revision() >= 1;
        node.require(if has_page1 { PAGE1 + 8 } else { PAGE1 })?;
        let bytes = node.bytes();
        let gsiv = u32_at(bytes, OVERFLOW_GSIV)?;
        let reference = u32_at(bytes, NODE_REFERENCE)?;
        Ok(Self {
            node,
            page0_base: u64_at(bytes, PAGE0)?,
            overflow_gsiv: (gsiv != 0).then_some(gsiv),
            node_reference: (reference != 0).then_some(NodeRef(reference)),
            page1_base: if has_page1 {
                Some(u64_at(bytes, PAGE1)?)
            } else {
                None
            },
        })
    }

    /// The mapping that gives the PMCG's own DeviceID (its first, if any).
    ///
    /// # Errors
    /// [`Error::MappingsOutsideNode`].
    pub fn device_id_mapping(&self) -> Result<Option<IdMapping>, Error> {
        Ok(self.node.id_mappings()?.next())
    }
}
