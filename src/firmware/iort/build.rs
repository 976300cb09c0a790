//! Hand-built IORTs for tests and fuzzing (feature `fuzzing` or `cfg(test)`): nodes of every
//! type in the layouts of Arm DEN 0049 E.f, chapter 3, with `Length` and `Checksum` filled in.
//! Nodes are laid out in the order they are added; each adder returns the [`NodeRef`] the
//! node will have, so later nodes can map to earlier ones (and [`TableBuilder::patch_u32`]
//! rewrites a field afterwards, for forward references and malformed tables).

use std::vec::Vec;

use super::node::NodeRef;
use super::table::IORT_HEADER_LEN;
use crate::firmware::acpi::checksum;

/// One ID mapping to add.
#[derive(Clone, Copy, Debug)]
pub struct Map {
    /// `Input base`.
    pub input_base: u32,
    /// `Number of IDs` (the count minus one).
    pub id_count: u32,
    /// `Output base`.
    pub output_base: u32,
    /// `Output reference`.
    pub output: NodeRef,
    /// `Flags` (bit 0: single mapping).
    pub flags: u32,
}

impl Map {
    /// `count` IDs from `input` to `output_base` of `to`.
    pub const fn range(input: u32, count: u32, output_base: u32, to: NodeRef) -> Self {
        Self {
            input_base: input,
            id_count: count - 1,
            output_base,
            output: to,
            flags: 0,
        }
    }

    /// The single mapping giving `id` of `to`.
    pub const fn single(id: u32, to: NodeRef) -> Self {
        Self {
            input_base: 0,
            id_count: 0,
            output_base: id,
            output: to,
            flags: 1,
        }
    }
}

/// Memory access properties to write: `(CCA, AH, MAF)`.
pub type Access = (u32, u8, u8);

/// An IORT being built.
#[derive(Clone, Debug)]
pub struct TableBuilder {
    revision: u8,
    body: Vec<u8>,
    count: u32,
}

fn le32(v: &mut Vec<u8>, x: u32) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn le64(v: &mut Vec<u8>, x: u64) {
    v.extend_from_slice(&x.to_le_bytes());
}

fn access(v: &mut Vec<u8>, (cca, ah, maf): Access) {
    le32(v, cca);
    v.push(ah);
    v.extend_from_slice(&[0, 0]);
    v.push(maf);
}

impl TableBuilder {
    /// An empty table of `revision`.
    pub fn new(revision: u8) -> Self {
        Self {
            revision,
            body: Vec::new(),
            count: 0,
        }
    }

    /// Where the next node goes.
    pub fn next_ref(&self) -> NodeRef {
        NodeRef((IORT_HEADER_LEN + self.body.len()) as u32)
    }

    /// Adds a node: header, `data` (padded to 4 bytes), the mappings, then `tail`; returns its
    /// reference and the offset of `tail` in the node.
    pub fn node(
        &mut self,
        node_type: u8,
        revision: u8,
        identifier: u32,
        data: &[u8],
        maps: &[Map],
        tail: &[u8],
    ) -> (NodeRef, usize) {
        let at = self.next_ref();
        let mut data = data.to_vec();
        while data.len() % 4 != 0 {
            data.push(0);
        }
        let map_offset = 16 + data.len();
        let tail_offset = map_offset + 20 * maps.len();
        let length = tail_offset + tail.len();
        let mut n = Vec::new();
        n.push(node_type);
        n.extend_from_slice(&(length as u16).to_le_bytes());
        n.push(revision);
        le32(&mut n, identifier);
        le32(&mut n, maps.len() as u32);
        le32(
            &mut n,
            if maps.is_empty() {
                0
            } else {
                map_offset as u32
            },
        );
        n.extend_from_slice(&data);
        for m in maps {
            for x in [m.input_base, m.id_count, m.output_base, m.output.0, m.flags] {
                le32(&mut n, x);
            }
        }
        n.extend_from_slice(tail);
        self.body.extend_from_slice(&n);
        self.count += 1;
        (at, tail_offset)
    }

    /// An ITS group (revision 1) with `its_ids`.
    pub fn its_group(&mut self, its_ids: &[u32]) -> NodeRef {
        let mut d = Vec::new();
        le32(&mut d, its_ids.len() as u32);
        for &id in its_ids {
            le32(&mut d, id);
        }
        self.node(0, 1, self.count, &d, &[], &[]).0
    }

    /// An SMMUv3 (revision 5) at `base`: `flags`, the four GSIVs (event, PRI, GERR, sync),
    /// `device_id_index`, `maps`.
    pub fn smmu_v3(
        &mut self,
        base: u64,
        flags: u32,
        gsivs: [u32; 4],
        device_id_index: u32,
        maps: &[Map],
    ) -> NodeRef {
        let mut d = Vec::new();
        le64(&mut d, base);
        le32(&mut d, flags);
        le32(&mut d, 0);
        le64(&mut d, 0);
        le32(&mut d, 0);
        for g in gsivs {
            le32(&mut d, g);
        }
        le32(&mut d, 7); // proximity domain
        le32(&mut d, device_id_index);
        self.node(4, 5, self.count, &d, maps, &[]).0
    }

    /// A root complex (revision 4) of `segment`.
    pub fn root_complex(
        &mut self,
        access_props: Access,
        ats: u32,
        segment: u32,
        address_size_limit: u8,
        maps: &[Map],
    ) -> NodeRef {
        let mut d = Vec::new();
        access(&mut d, access_props);
        le32(&mut d, ats);
        le32(&mut d, segment);
        d.push(address_size_limit);
        d.extend_from_slice(&0x14u16.to_le_bytes()); // PASID capabilities: width 20
        d.push(0);
        le32(&mut d, 0); // flags
        self.node(2, 4, self.count, &d, maps, &[]).0
    }

    /// A named component (revision 4) called `name`.
    pub fn named_component(
        &mut self,
        flags: u32,
        access_props: Access,
        address_size_limit: u8,
        name: &[u8],
        maps: &[Map],
    ) -> NodeRef {
        let mut d = Vec::new();
        le32(&mut d, flags);
        access(&mut d, access_props);
        d.push(address_size_limit);
        d.extend_from_slice(name);
        d.push(0);
        self.node(1, 4, self.count, &d, maps, &[]).0
    }

    /// A PMCG (revision 2).
    pub fn pmcg(
        &mut self,
        page0: u64,
        gsiv: u32,
        reference: NodeRef,
        page1: u64,
        maps: &[Map],
    ) -> NodeRef {
        let mut d = Vec::new();
        le64(&mut d, page0);
        le32(&mut d, gsiv);
        le32(&mut d, reference.0);
        le64(&mut d, page1);
        self.node(5, 2, self.count, &d, maps, &[]).0
    }

    /// An RMR (revision 3) with `flags`, `ranges` (base, length) and `maps`.
    pub fn rmr(&mut self, flags: u32, ranges: &[(u64, u64)], maps: &[Map]) -> NodeRef {
        let mut tail = Vec::new();
        for &(base, len) in ranges {
            le64(&mut tail, base);
            le64(&mut tail, len);
            le32(&mut tail, 0);
        }
        let mut d = Vec::new();
        le32(&mut d, flags);
        le32(&mut d, ranges.len() as u32);
        le32(&mut d, (16 + 12 + 20 * maps.len()) as u32);
        self.node(6, 3, self.count, &d, maps, &tail).0
    }

    /// Overwrites the `u32` at `offset` of the table (from the table's start).
    pub fn patch_u32(&mut self, offset: usize, value: u32) {
        let at = offset - IORT_HEADER_LEN;
        self.body[at..at + 4].copy_from_slice(&value.to_le_bytes());
    }

    /// Overwrites the byte at `offset` of the table.
    pub fn patch_u8(&mut self, offset: usize, value: u8) {
        self.body[offset - IORT_HEADER_LEN] = value;
    }

    /// The table, `Length` and `Checksum` filled in.
    pub fn build(&self) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(b"IORT");
        le32(&mut t, (IORT_HEADER_LEN + self.body.len()) as u32);
        t.push(self.revision);
        t.push(0);
        t.extend_from_slice(b"IOMMUE");
        t.extend_from_slice(b"IORTTEST");
        le32(&mut t, 1);
        t.extend_from_slice(b"IEST");
        le32(&mut t, 1);
        le32(&mut t, self.count);
        le32(&mut t, IORT_HEADER_LEN as u32);
        le32(&mut t, 0);
        t.extend_from_slice(&self.body);
        seal(&mut t);
        t
    }
}

/// Sets the checksum byte of a table so its bytes sum to zero.
pub fn seal(table: &mut [u8]) {
    if table.len() > 9 {
        table[9] = 0;
        table[9] = 0u8.wrapping_sub(checksum(table));
    }
}
