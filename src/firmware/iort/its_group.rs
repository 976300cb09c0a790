//! ITS group node: Arm DEN 0049 E.f, chapter 3, table "ITS Group node format" (type 0: the
//! node header, `Number of ITSs` u32 at 16, then that many `GIC ITS Identifiers` u32 from 20:
//! the `GIC ITS ID` of the MADT's GIC ITS structures). An ITS group takes DeviceIDs; it has
//! no ID mappings of its own.

use super::node::{Node, NodeType};
use super::{u32_at, Error};

/// Offset of `Number of ITSs`.
const ITS_COUNT: usize = 16;
/// Offset of the identifier array.
const IDENTIFIERS: usize = 20;

/// An ITS group node.
#[derive(Clone, Copy, Debug)]
pub struct ItsGroup<'a> {
    /// The node.
    pub node: Node<'a>,
    identifiers: &'a [u8],
}

impl<'a> ItsGroup<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`], [`Error::ArrayOutsideNode`].
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::ItsGroup)?;
        node.require(IDENTIFIERS)?;
        let count = u32_at(node.bytes(), ITS_COUNT)?;
        let outside = Error::ArrayOutsideNode {
            node: node.reference(),
            what: "GIC ITS identifiers",
            offset: IDENTIFIERS as u32,
            count,
        };
        let len = (count as usize).checked_mul(4).ok_or(outside)?;
        let end = IDENTIFIERS.checked_add(len).ok_or(outside)?;
        let identifiers = node.bytes().get(IDENTIFIERS..end).ok_or(outside)?;
        Ok(Self { node, identifiers })
    }

    /// `Number of ITSs`.
    pub fn its_count(&self) -> usize {
        self.identifiers.len() / 4
    }

    /// The `GIC ITS Identifiers`.
    pub fn identifiers(&self) -> impl ExactSizeIterator<Item = u32> + 'a {
        self.identifiers
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(<[u8; 4]>::try_from(c).unwrap_or_default()))
    }
}
