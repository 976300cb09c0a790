//! ID mappings: Arm DEN 0049 E.f, chapter 3, table "ID mapping format" (20 bytes: `Input
//! base`, `Number of IDs`, `Output base`, `Output reference`, `Flags`, each 32 bits).
//!
//! A mapping sends the input IDs `Input base ..= Input base + Number of IDs` (the field holds
//! the number of IDs *minus one*) to `Output base + (id - Input base)` in the ID space of the
//! node at `Output reference`. With `Flags` bit 0 (*single mapping*) the mapping gives the one
//! ID of the node itself (a named component's StreamID, an SMMU's or PMCG's own DeviceID for
//! its MSIs): the input fields are then ignored and the output is `Output base`.
//!
//! Firmware that wrote the count itself in `Number of IDs` makes a range claim the first ID of
//! the next one; the walk ([`resolve`](super::resolve)) lets the next range have it.

use bitflags::bitflags;

use super::node::{Node, NodeRef, NODE_HEADER_LEN};
use super::{u32_at, Error};

/// Bytes of one ID mapping.
pub const ID_MAPPING_LEN: usize = 20;

bitflags! {
    /// `Flags` of an ID mapping.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct IdMappingFlags: u32 {
        /// Bit 0, single mapping: the node's own ID is `Output base`; input ignored.
        const SINGLE_MAPPING = 1 << 0;
        // Bits 31:1 are reserved: kept, so that a decoded mapping round-trips.
        const _ = !0;
    }
}

/// One ID mapping, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdMapping {
    /// The node that holds the mapping.
    pub node: NodeRef,
    /// Its index among the node's mappings.
    pub index: u32,
    /// `Input base`.
    pub input_base: u32,
    /// `Number of IDs`: the number of IDs in the range *minus one*.
    pub id_count: u32,
    /// `Output base`.
    pub output_base: u32,
    /// `Output reference`: the node the outputs belong to.
    pub output_reference: NodeRef,
    /// `Flags`.
    pub flags: IdMappingFlags,
}

impl IdMapping {
    /// Whether this is a single mapping (`Flags` bit 0).
    pub const fn is_single(&self) -> bool {
        self.flags.contains(IdMappingFlags::SINGLE_MAPPING)
    }

    /// The last input ID of the range.
    ///
    /// # Errors
    /// [`Error::IdRangeOverflow`] if the range wraps past `u32::MAX`.
    pub fn input_last(&self) -> Result<u32, Error> {
        self.input_base
            .checked_add(self.id_count)
            .ok_or(self.overflow())
    }

    /// The output IDs `(first, last)` the mapping produces: one ID for a single mapping.
    ///
    /// # Errors
    /// [`Error::IdRangeOverflow`] if the range wraps past `u32::MAX`.
    pub fn output_range(&self) -> Result<(u32, u32), Error> {
        if self.is_single() {
            return Ok((self.output_base, self.output_base));
        }
        let last = self
            .output_base
            .checked_add(self.id_count)
            .ok_or(self.overflow())?;
        Ok((self.output_base, last))
    }

    /// The output of `id` if this range mapping covers it (`None` if it does not; single
    /// mappings cover no input ID: use [`output_range`](Self::output_range)).
    ///
    /// # Errors
    /// [`Error::IdRangeOverflow`] if the input or output range wraps.
    pub fn map_range(&self, id: u32) -> Result<Option<u32>, Error> {
        if self.is_single() {
            return Ok(None);
        }
        let last = self.input_last()?;
        if id < self.input_base || id > last {
            return Ok(None);
        }
        self.output_range()?;
        // id - input_base <= id_count, and output_base + id_count does not wrap.
        id.checked_sub(self.input_base)
            .and_then(|offset| self.output_base.checked_add(offset))
            .map(Some)
            .ok_or(self.overflow())
    }

    fn overflow(&self) -> Error {
        Error::IdRangeOverflow {
            node: self.node,
            index: self.index,
        }
    }
}

/// Iterator over a node's ID mappings (the array was checked to lie inside the node).
#[derive(Clone, Debug)]
pub struct IdMappings<'a> {
    node: NodeRef,
    array: &'a [u8],
    index: u32,
}

impl<'a> IdMappings<'a> {
    pub(super) fn of(node: &Node<'a>) -> Result<Self, Error> {
        let count = node.mapping_count();
        let offset = node.mapping_offset();
        let outside = Error::MappingsOutsideNode {
            node: node.reference(),
            offset,
            count,
        };
        if count == 0 {
            return Ok(Self {
                node: node.reference(),
                array: &[],
                index: 0,
            });
        }
        let start = offset as usize;
        let len = (count as usize)
            .checked_mul(ID_MAPPING_LEN)
            .ok_or(outside)?;
        let end = start.checked_add(len).ok_or(outside)?;
        if start < NODE_HEADER_LEN {
            return Err(outside);
        }
        let array = node.bytes().get(start..end).ok_or(outside)?;
        Ok(Self {
            node: node.reference(),
            array,
            index: 0,
        })
    }

    /// The mapping at `index`, if there is one.
    pub fn get(&self, index: u32) -> Option<IdMapping> {
        let at = (index as usize).checked_mul(ID_MAPPING_LEN)?;
        decode(
            self.node,
            index,
            self.array.get(at..at.checked_add(ID_MAPPING_LEN)?)?,
        )
    }

    /// Number of mappings.
    pub fn len(&self) -> usize {
        self.array.len() / ID_MAPPING_LEN
    }

    /// Whether the node has no mappings.
    pub fn is_empty(&self) -> bool {
        self.array.is_empty()
    }
}

fn decode(node: NodeRef, index: u32, raw: &[u8]) -> Option<IdMapping> {
    let field = |i: usize| u32_at(raw, i * 4).ok();
    Some(IdMapping {
        node,
        index,
        input_base: field(0)?,
        id_count: field(1)?,
        output_base: field(2)?,
        output_reference: NodeRef(field(3)?),
        flags: IdMappingFlags::from_bits_retain(field(4)?),
    })
}

impl Iterator for IdMappings<'_> {
    type Item = IdMapping;

    fn next(&mut self) -> Option<IdMapping> {
        let m = self.get(self.index)?;
        self.index += 1;
        Some(m)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.len().saturating_sub(self.index as usize);
        (left, Some(left))
    }
}

impl ExactSizeIterator for IdMappings<'_> {}
impl core::iter::FusedIterator for IdMappings<'_> {}
