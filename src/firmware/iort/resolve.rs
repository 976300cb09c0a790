//! Following ID mappings: Arm DEN 0049 E.f, chapter 3, "ID mappings" and the node formats'
//! descriptions of what each node's mappings take and give.
//!
//! A device's ID starts at the node that describes the device (a root complex takes PCI
//! requester IDs, a named component its own IDs) and moves from node to node through the
//! first ID mapping that covers it, until it reaches an SMMU (where it is a StreamID) or an ITS
//! group (where it is a DeviceID: on the way to the ITS for MSIs, or directly when no SMMU
//! translates the device). Single mappings apply on the first step only: they give the
//! describing node's own ID whatever the input. An SMMU passes StreamIDs on to an ITS group
//! through its range mappings; its single mapping (the DeviceID mapping index) is its own
//! DeviceID, not a device's, and is skipped.
//!
//! Every walk is bounded by [`MAX_CHAIN`] steps: a table whose mappings form a cycle ends in
//! [`Error::ChainTooLong`].

use super::node::{Node, NodeRef, NodeType};
use super::smmu_v3::SmmuV3;
use super::table::Iort;
use super::Error;

/// Most mapping steps a walk follows (the longest chain the issue describes has two:
/// root complex -> SMMU -> ITS group).
pub const MAX_CHAIN: usize = 8;

/// Where a device's ID leads on the way to translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTarget {
    /// An SMMU (v3 or v1/v2) translates the device under `stream_id`.
    Smmu {
        /// The SMMU node.
        smmu: NodeRef,
        /// The StreamID.
        stream_id: u32,
    },
    /// No SMMU: the ID reaches an ITS group directly, and the device's DMA is not translated.
    Untranslated {
        /// The ITS group node.
        its_group: NodeRef,
        /// The DeviceID its MSIs carry.
        device_id: u32,
    },
}

/// Where a device's MSIs go: an ITS group and the DeviceID they carry there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiTarget {
    /// The ITS group node.
    pub its_group: NodeRef,
    /// The DeviceID.
    pub device_id: u32,
}

/// What a walk stops at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Goal {
    /// The first SMMU or ITS group.
    Translation,
    /// An ITS group, through any SMMU.
    Msi,
}

impl<'a> Iort<'a> {
    /// Where `id`, an input ID of the device node `source` (a root complex's requester ID, a
    /// named component's ID), is translated.
    ///
    /// # Errors
    /// [`Error::NoMapping`] if no mapping covers the ID on the way; [`Error::UnexpectedOutput`]
    /// if a mapping leads to a node that takes no IDs; [`Error::ChainTooLong`]; the decoding
    /// errors of the nodes met.
    pub fn stream_target(&self, source: NodeRef, id: u32) -> Result<StreamTarget, Error> {
        let (node, out) = self.walk(source, id, Goal::Translation)?;
        Ok(if node.node_type().is_smmu() {
            StreamTarget::Smmu {
                smmu: node.reference(),
                stream_id: out,
            }
        } else {
            StreamTarget::Untranslated {
                its_group: node.reference(),
                device_id: out,
            }
        })
    }

    /// Where the MSIs of `id`, an input ID of `source`, go: the ID followed through any SMMU to
    /// an ITS group. `source` may also be an SMMU (then `id` is a StreamID).
    ///
    /// # Errors
    /// As [`stream_target`](Self::stream_target).
    pub fn msi_target(&self, source: NodeRef, id: u32) -> Result<MsiTarget, Error> {
        let (node, device_id) = self.walk(source, id, Goal::Msi)?;
        Ok(MsiTarget {
            its_group: node.reference(),
            device_id,
        })
    }

    /// Where the MSIs of a node with an ID of its own go (an SMMUv3 through its DeviceID
    /// mapping index, a PMCG through its single mapping); `None` if it has none (wired
    /// interrupts).
    ///
    /// # Errors
    /// As [`stream_target`](Self::stream_target).
    pub fn own_msi_target(&self, node: NodeRef) -> Result<Option<MsiTarget>, Error> {
        let n = self.node(node)?;
        let mapping = match n.node_type() {
            NodeType::SmmuV3 => SmmuV3::decode(n)?.device_id_mapping()?,
            NodeType::Pmcg => n.id_mappings()?.find(|m| m.is_single()),
            _ => None,
        };
        let Some(m) = mapping else { return Ok(None) };
        let (id, _) = m.output_range()?;
        let target = self.node(m.output_reference)?;
        match target.node_type() {
            NodeType::ItsGroup => Ok(Some(MsiTarget {
                its_group: target.reference(),
                device_id: id,
            })),
            // A PMCG of a root complex may map through the SMMU like a device.
            t if t.is_smmu() => self.msi_target(target.reference(), id).map(Some),
            t => Err(Error::UnexpectedOutput {
                from: node,
                to: target.reference(),
                node_type: t,
            }),
        }
    }

    fn walk(&self, start: NodeRef, id: u32, goal: Goal) -> Result<(Node<'a>, u32), Error> {
        let mut node = self.node(start)?;
        let mut current = id;
        for step in 0..MAX_CHAIN {
            let (to, out) = self.step(&node, current, step == 0)?;
            let next = self.node(to)?;
            match next.node_type() {
                NodeType::ItsGroup => return Ok((next, out)),
                t if t.is_smmu() && goal == Goal::Translation => return Ok((next, out)),
                t if t.is_smmu() => {
                    node = next;
                    current = out;
                }
                t => {
                    return Err(Error::UnexpectedOutput {
                        from: node.reference(),
                        to,
                        node_type: t,
                    })
                }
            }
        }
        Err(Error::ChainTooLong { start, id })
    }

    /// The first mapping of `node` that takes `id`: where it leads and the output ID.
    ///
    /// A match on the last ID of a range (of more than one ID) is provisional: firmware that
    /// wrote the count for `Number of IDs` (the count minus one) makes each range claim the
    /// first ID of the next, so a later mapping that *starts* at `id` takes it instead; one
    /// that merely covers it does not (a real conflict: the first match stands). Linux's
    /// `iort_id_map` reads such tables the same way.
    fn step(&self, node: &Node<'a>, id: u32, first: bool) -> Result<(NodeRef, u32), Error> {
        let own = match node.node_type() {
            NodeType::SmmuV3 => SmmuV3::decode(*node)?.device_id_mapping_index(),
            _ => None,
        };
        let mut provisional = None;
        for m in node.id_mappings()? {
            if Some(m.index) == own {
                continue;
            }
            if m.is_single() {
                if first
                    && matches!(
                        node.node_type(),
                        NodeType::NamedComponent | NodeType::RootComplex
                    )
                {
                    return Ok((m.output_reference, m.output_base));
                }
                continue;
            }
            let Some(out) = m.map_range(id)? else {
                continue;
            };
            if provisional.is_some() && id != m.input_base {
                continue;
            }
            if provisional.is_none() && m.id_count > 0 && id == m.input_last()? {
                provisional = Some((m.output_reference, out));
                continue;
            }
            return Ok((m.output_reference, out));
        }
        provisional.ok_or(Error::NoMapping {
            node: node.reference(),
            id,
        })
    }
}
