//! SMMUv3 node: Arm DEN 0049 E.f, chapter 3, table "SMMUv3 node format" (type 4: the node
//! header, `Base Address` u64 at 16, `Flags` u32 at 24, reserved u32 at 28, `VATOS address`
//! u64 at 32, `Model` u32 at 40, `Event`, `PRI`, `GERR` and `Sync` GSIVs u32 at 44, 48, 52, 56,
//! `Proximity domain` u32 at 60 and `DeviceID mapping index` u32 at 64 (node revision 1 on),
//! then the ID mappings).
//!
//! An SMMUv3's ID mappings send its StreamIDs on to an ITS group as DeviceIDs (the MSIs of the
//! devices behind it), and one of them, a single mapping named by `DeviceID mapping index`,
//! gives the SMMU's own DeviceID for its own MSIs (event queue, GERROR, CMD_SYNC). Issue E.e
//! (node revision 5) added `Flags` bit 4 to say that index is valid, and only from that
//! revision does the bit count (reserved before); at revisions 1 to 4 the index holds when the
//! SMMU has no wired interrupt for one of its sources (a GSIV of 0), and revision 0 has no
//! index. Linux decides the same way, and ignores an index past the node's mappings as a
//! firmware bug.

use bitflags::bitflags;

use super::id_mapping::IdMapping;
use super::node::{Node, NodeType};
use super::{u32_at, u64_at, Error};

/// Offset of `Base Address`.
const BASE: usize = 16;
/// Offset of `Flags`.
const FLAGS: usize = 24;
/// Offset of `VATOS address`.
const VATOS: usize = 32;
/// Offset of `Model`.
const MODEL: usize = 40;
/// Offset of the four GSIVs.
const GSIVS: usize = 44;
/// Offset of `Proximity domain` (revision 1 on).
const PROXIMITY_DOMAIN: usize = 60;
/// Offset of `DeviceID mapping index` (revision 1 on).
const DEVICE_ID_MAPPING_INDEX: usize = 64;

/// First node revision whose `Flags` bit 4 says whether the DeviceID mapping index is valid
/// (issue E.e).
const REVISION_DEVICE_ID_VALID_FLAG: u8 = 5;

bitflags! {
    /// `Flags` of an SMMUv3 node.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SmmuV3Flags: u32 {
        /// Bit 0, COHACC Override: the SMMU's own accesses (table walks, queues, MSIs) are
        /// coherent, whatever `IDR0.COHACC` says.
        const COHACC_OVERRIDE = 1 << 0;
        /// Bits 2:1, HTTU Override: see [`SmmuV3Flags::httu_override`].
        const HTTU_OVERRIDE = 0b11 << 1;
        /// Bit 3: `Proximity domain` is valid.
        const PROXIMITY_DOMAIN_VALID = 1 << 3;
        /// Bit 4 (E.e): `DeviceID mapping index` is valid.
        const DEVICE_ID_MAPPING_INDEX_VALID = 1 << 4;
        const _ = !0;
    }
}

/// `Flags` bits 2:1: what the platform says about hardware translation table updates,
/// overriding `IDR0.HTTU`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HttuOverride {
    /// 0b00: not overridden, `IDR0.HTTU` holds.
    None,
    /// 0b01: hardware update of the Access flag is supported.
    AccessFlag,
    /// 0b10: hardware update of the Access flag and dirty state is supported.
    AccessFlagAndDirty,
    /// 0b11: reserved.
    Reserved,
}

impl SmmuV3Flags {
    /// The HTTU override.
    pub const fn httu_override(self) -> HttuOverride {
        match (self.bits() >> 1) & 0b11 {
            0 => HttuOverride::None,
            1 => HttuOverride::AccessFlag,
            2 => HttuOverride::AccessFlagAndDirty,
            _ => HttuOverride::Reserved,
        }
    }
}

/// `Model`: implementations with errata the driver must know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SmmuV3Model {
    /// 0: generic SMMUv3.
    Generic,
    /// 1: HiSilicon Hi161x.
    HiSiliconHi161x,
    /// 2: Cavium CN99xx.
    CaviumCn99xx,
    /// Another value.
    Other(u32),
}

impl From<u32> for SmmuV3Model {
    fn from(raw: u32) -> Self {
        match raw {
            0 => Self::Generic,
            1 => Self::HiSiliconHi161x,
            2 => Self::CaviumCn99xx,
            other => Self::Other(other),
        }
    }
}

/// An SMMUv3 node.
#[derive(Clone, Copy, Debug)]
pub struct SmmuV3<'a> {
    /// The node.
    pub node: Node<'a>,
    /// `Base Address` of the register frames (page 0).
    pub base: u64,
    /// `Flags`.
    pub flags: SmmuV3Flags,
    /// `VATOS address` (0: no VATOS interface).
    pub vatos: u64,
    /// `Model`.
    pub model: SmmuV3Model,
    /// `Event` GSIV (`None` when 0: MSIs, or not wired).
    pub event_gsiv: Option<u32>,
    /// `PRI` GSIV.
    pub pri_gsiv: Option<u32>,
    /// `GERR` GSIV.
    pub gerr_gsiv: Option<u32>,
    /// `Sync` GSIV.
    pub sync_gsiv: Option<u32>,
    /// `Proximity domain`, when `Flags` says it is valid.
    pub proximity_domain: Option<u32>,
    /// `DeviceID mapping index`, when the node's revision and fields say it is valid (in
    /// range or not).
    declared_device_id_mapping_index: Option<u32>,
}

impl<'a> SmmuV3<'a> {
    /// Decodes `node`.
    ///
    /// # Errors
    /// [`Error::WrongNodeType`], [`Error::NodeTooShort`]. A valid index that names no mapping
    /// of the node is a firmware bug ignored here (as Linux does: the SMMU then has no own
    /// DeviceID), not an error that would hide the node and every SMMU looked up past it;
    /// [`device_id_mapping_index_check`](Self::device_id_mapping_index_check) reports it.
    pub fn decode(node: Node<'a>) -> Result<Self, Error> {
        node.expect(NodeType::SmmuV3)?;
        let rev = node.revision();
        node.require(if rev == 0 {
            PROXIMITY_DOMAIN
        } else {
            DEVICE_ID_MAPPING_INDEX + 4
        })?;
        let bytes = node.bytes();
        let flags = SmmuV3Flags::from_bits_retain(u32_at(bytes, FLAGS)?);
        let gsiv = |i: usize| -> Result<Option<u32>, Error> {
            let v = u32_at(bytes, GSIVS + 4 * i)?;
            Ok((v != 0).then_some(v))
        };
        let (event_gsiv, pri_gsiv, gerr_gsiv, sync_gsiv) = (gsiv(0)?, gsiv(1)?, gsiv(2)?, gsiv(3)?);
        let (proximity, index) = if rev >= 1 {
            (
                u32_at(bytes, PROXIMITY_DOMAIN)?,
                u32_at(bytes, DEVICE_ID_MAPPING_INDEX)?,
            )
        } else {
            (0, 0)
        };
        let index_valid = if rev == 0 {
            // No index field before revision 1.
            false
        } else if rev < REVISION_DEVICE_ID_VALID_FLAG {
            // Before E.e bit 4 is reserved: valid when some interrupt source is not wired
            // (uses MSIs).
            [event_gsiv, pri_gsiv, gerr_gsiv, sync_gsiv]
                .iter()
                .any(Option::is_none)
        } else {
            flags.contains(SmmuV3Flags::DEVICE_ID_MAPPING_INDEX_VALID)
        };
        let declared_device_id_mapping_index = index_valid.then_some(index);
        Ok(Self {
            node,
            base: u64_at(bytes, BASE)?,
            flags,
            vatos: u64_at(bytes, VATOS)?,
            model: SmmuV3Model::from(u32_at(bytes, MODEL)?),
            event_gsiv,
            pri_gsiv,
            gerr_gsiv,
            sync_gsiv,
            proximity_domain: flags
                .contains(SmmuV3Flags::PROXIMITY_DOMAIN_VALID)
                .then_some(proximity),
            declared_device_id_mapping_index,
        })
    }

    /// Whether the SMMU's own accesses are coherent by firmware's word (`COHACC Override`).
    pub const fn coherent_access(&self) -> bool {
        self.flags.contains(SmmuV3Flags::COHACC_OVERRIDE)
    }

    /// The index of the mapping that gives the SMMU's own DeviceID, when it has one: the
    /// `DeviceID mapping index` when valid (node revision 1 to 4: some interrupt is not wired;
    /// revision 5 on: `Flags` bit 4) and naming a mapping of the node.
    pub const fn device_id_mapping_index(&self) -> Option<u32> {
        match self.declared_device_id_mapping_index {
            Some(i) if i < self.node.mapping_count() => Some(i),
            _ => None,
        }
    }

    /// Whether the DeviceID mapping index firmware declared valid names a mapping of the node.
    ///
    /// # Errors
    /// [`Error::DeviceIdMappingIndex`].
    pub fn device_id_mapping_index_check(&self) -> Result<(), Error> {
        match self.declared_device_id_mapping_index {
            Some(index) if index >= self.node.mapping_count() => Err(Error::DeviceIdMappingIndex {
                node: self.node.reference(),
                index,
                count: self.node.mapping_count(),
            }),
            _ => Ok(()),
        }
    }

    /// The mapping that gives the SMMU's own DeviceID (for its MSIs), when it has one.
    ///
    /// # Errors
    /// [`Error::MappingsOutsideNode`].
    pub fn device_id_mapping(&self) -> Result<Option<IdMapping>, Error> {
        let mappings = self.node.id_mappings()?;
        Ok(self.device_id_mapping_index().and_then(|i| mappings.get(i)))
    }
}
