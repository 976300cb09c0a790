//! What the IORT tells the crate's drivers: the SMMUv3 platform facts
//! ([`DeviceFacts`], [`Platform`], Arm DEN 0049 E.f §3.1.1.2 "Memory access properties" and
//! the SMMUv3 node's `Flags`) and the reserved memory each StreamID needs (RMR nodes).
//!
//! - [`device_facts`]: `CANWBS` and DMA coherency (`CCA` with `CPM`) of a root complex or
//!   named component, with a [`Source::Firmware`] naming the IORT field.
//! - [`Iort::smmu_platform`]: a unit's [`Platform`] for [`SmmuConfig::platform`]: one
//!   declaration per StreamID range a root complex or named component maps to the SMMU.
//! - [`device_hints`]: the [`DeviceHints`] the table declares for a device: a named
//!   component's `Node Flags` bit 0 (the device can be stalled) as [`DeviceHints::stall`], a
//!   root complex's `ATS Attribute` bit 0 as [`DeviceHints::ats_permission`].
//! - [`unit_facts`]: the SMMU's own facts (COHACC and HTTU overrides).
//! - [`Iort::reserved_regions`]: every (SMMU, StreamID range, memory range) an RMR node
//!   declares, as values the IOASID layer takes ([`MemoryRange::identity`] is an
//!   [`IovaRange`](crate::pgtable::IovaRange)).
//!
//! [`SmmuConfig::platform`]: crate::smmuv3::SmmuConfig::platform

use super::id_mapping::IdMapping;
use super::named_component::{NamedComponent, NamedComponentFlags};
use super::node::{Node, NodeRef, NodeType};
use super::resolve::StreamTarget;
use super::rmr::{MemoryRange, Rmr, RmrFlags};
use super::root_complex::{AtsAttribute, RootComplex};
use super::smmu_v3::{HttuOverride, SmmuV3};
use super::table::{Iort, Nodes, REVISION_E_D};
use super::Error;
use crate::iommu::{AtsPermission, DeviceHints, Source};
use crate::smmuv3::{DeviceFacts, Platform, StreamId, MAX_DECLARATIONS};

/// [`Source`] of the facts of a device behind a root complex.
pub const SOURCE_ROOT_COMPLEX: Source =
    Source::Firmware("IORT root complex memory access properties (CCA, CPM, CANWBS)");
/// [`Source`] of the facts of a named component.
pub const SOURCE_NAMED_COMPONENT: Source =
    Source::Firmware("IORT named component memory access properties (CCA, CPM, CANWBS)");
/// [`Source`] of an SMMUv3's own coherency.
pub const SOURCE_COHACC_OVERRIDE: Source =
    Source::Firmware("IORT SMMUv3 node Flags: COHACC Override");

/// The SMMUv3 platform facts of the devices a root complex or named component describes.
///
/// # Errors
/// [`Error::WrongNodeType`] for another node type; the node's decoding errors.
pub fn device_facts(node: Node<'_>) -> Result<DeviceFacts, Error> {
    let (access, source) = match node.node_type() {
        NodeType::NamedComponent => (
            NamedComponent::decode(node)?.memory_access,
            SOURCE_NAMED_COMPONENT,
        ),
        _ => (
            RootComplex::decode(node)?.memory_access,
            SOURCE_ROOT_COMPLEX,
        ),
    };
    Ok(DeviceFacts {
        canwbs: access.canwbs(),
        coherent_dma: Some(access.coherent()),
        source,
    })
}

/// The [`DeviceHints`] the IORT declares for the devices a named component or root complex
/// describes, for [`IoasidCtx::bind_with`](crate::ioasid::IoasidCtx::bind_with): a named
/// component's `Node Flags` bit 0 ("the device can be stalled") is
/// [`DeviceHints::stall`] (what Linux turns into the `dma-can-stall` property); a root
/// complex's devices are PCIe, which never stall (IHI 0070 §3.12.1).
///
/// [`DeviceHints::ats_permission`]: a root complex's `ATS Attribute` bit 0 (the root complex
/// supports ATS) allows ATS, its absence forbids it (Linux `iort_pci_rc_supports_ats`, which
/// the SMMUv3 driver checks before it enables ATS); a named component is no PCIe device and
/// has no ATS: forbidden. Whether ATS is on ([`DeviceHints::ats`]), PRI and a PCIe device's
/// PASID width are the device's own capabilities (its configuration space), which the IORT
/// does not give per device: the embedder sets them, and an attach with `ats` where this
/// forbids it is refused ([`crate::iommu::Error::AtsForbidden`]).
///
/// # Errors
/// [`Error::WrongNodeType`] for another node type; the node's decoding errors.
pub fn device_hints(node: Node<'_>) -> Result<DeviceHints, Error> {
    let (stall, ats_permission) = match node.node_type() {
        NodeType::NamedComponent => (
            NamedComponent::decode(node)?
                .flags
                .contains(NamedComponentFlags::STALL_SUPPORTED),
            AtsPermission::Forbidden,
        ),
        _ => (false, root_complex_ats(&RootComplex::decode(node)?)),
    };
    Ok(DeviceHints {
        stall,
        ats_permission,
        ..DeviceHints::default()
    })
}

/// What a root complex's `ATS Attribute` says of its devices' ATS: bit 0 set allows it.
pub fn root_complex_ats(rc: &RootComplex<'_>) -> AtsPermission {
    if rc.ats.contains(AtsAttribute::ATS_SUPPORTED) {
        AtsPermission::Allowed
    } else {
        AtsPermission::Forbidden
    }
}

/// What firmware says about an SMMUv3 itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitFacts {
    /// Register base (`Base Address`).
    pub base: u64,
    /// `COHACC Override`: the SMMU's table walks, queue and MSI accesses are coherent (clear:
    /// they are not). Firmware is authoritative over `IDR0.COHACC` (the register may not
    /// describe the integration): hand it to the unit with
    /// [`coherent_access_config`](Self::coherent_access_config).
    pub coherent_access: bool,
    /// `HTTU Override`.
    pub httu: HttuOverride,
    /// Where [`coherent_access`](Self::coherent_access) comes from.
    pub source: Source,
}

impl UnitFacts {
    /// The value for [`SmmuConfig::coherent_access`]: the node's `COHACC Override`, set or
    /// clear, with [`SOURCE_COHACC_OVERRIDE`]. Always declared: the IORT describes the SMMU's
    /// coherency either way, as Linux reads it (it warns when `IDR0.COHACC` disagrees and
    /// follows the firmware).
    ///
    /// [`SmmuConfig::coherent_access`]: crate::smmuv3::SmmuConfig::coherent_access
    pub const fn coherent_access_config(&self) -> Option<(bool, Source)> {
        Some((self.coherent_access, self.source))
    }
}

/// The facts of an SMMUv3 node.
pub fn unit_facts(smmu: &SmmuV3<'_>) -> UnitFacts {
    UnitFacts {
        base: smmu.base,
        coherent_access: smmu.coherent_access(),
        httu: smmu.flags.httu_override(),
        source: SOURCE_COHACC_OVERRIDE,
    }
}

/// One StreamID range a device node maps to an SMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamRange {
    /// The device node (root complex or named component).
    pub device: NodeRef,
    /// The mapping.
    pub mapping: IdMapping,
    /// The SMMU node.
    pub smmu: NodeRef,
    /// First StreamID.
    pub first: StreamId,
    /// Last StreamID (inclusive).
    pub last: StreamId,
}

/// A reserved memory range and the StreamIDs that need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedRegion {
    /// The SMMU node the StreamIDs belong to.
    pub smmu: NodeRef,
    /// First StreamID.
    pub first: StreamId,
    /// Last StreamID (inclusive).
    pub last: StreamId,
    /// The memory.
    pub range: MemoryRange,
    /// The RMR node's `Flags`: whether the range may be remapped, its access attributes.
    pub flags: RmrFlags,
}

impl ReservedRegion {
    /// Whether the region applies to `sid` of `smmu`.
    pub fn covers(&self, smmu: NodeRef, sid: StreamId) -> bool {
        self.smmu == smmu && self.first <= sid && sid <= self.last
    }
}

impl<'a> Iort<'a> {
    /// The root complex of PCI segment `segment`.
    ///
    /// # Errors
    /// The decoding errors of the nodes on the way.
    pub fn root_complex(&self, segment: u32) -> Result<Option<RootComplex<'a>>, Error> {
        for node in self.nodes() {
            let node = node?;
            if node.node_type() == NodeType::RootComplex {
                let rc = RootComplex::decode(node)?;
                if rc.segment == segment {
                    return Ok(Some(rc));
                }
            }
        }
        Ok(None)
    }

    /// The named component whose `Device object name` is `name` (`b"\\_SB.DEV0"`).
    ///
    /// # Errors
    /// The decoding errors of the nodes on the way.
    pub fn named_component(&self, name: &[u8]) -> Result<Option<NamedComponent<'a>>, Error> {
        for node in self.nodes() {
            let node = node?;
            if node.node_type() == NodeType::NamedComponent {
                let nc = NamedComponent::decode(node)?;
                if nc.name == name {
                    return Ok(Some(nc));
                }
            }
        }
        Ok(None)
    }

    /// The SMMUv3 whose registers are at `base`.
    ///
    /// # Errors
    /// The decoding errors of the nodes on the way.
    pub fn smmu_v3(&self, base: u64) -> Result<Option<SmmuV3<'a>>, Error> {
        for node in self.nodes() {
            let node = node?;
            if node.node_type() == NodeType::SmmuV3 {
                let smmu = SmmuV3::decode(node)?;
                if smmu.base == base {
                    return Ok(Some(smmu));
                }
            }
        }
        Ok(None)
    }

    /// The StreamID ranges `device` (a root complex or named component) maps straight to an
    /// SMMU: one per mapping whose output is an SMMU node (mappings to an ITS group are
    /// devices no SMMU translates).
    ///
    /// # Errors
    /// [`Error::MappingsOutsideNode`], [`Error::IdRangeOverflow`], [`Error::NoNodeAt`] for
    /// an output reference that names no node.
    pub fn device_streams(
        &self,
        device: Node<'a>,
    ) -> Result<impl Iterator<Item = Result<StreamRange, Error>> + 'a, Error> {
        let iort = *self;
        Ok(device.id_mappings()?.filter_map(move |m| {
            let to = match iort.node(m.output_reference) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            if !to.node_type().is_smmu() {
                return None;
            }
            Some(m.output_range().map(|(first, last)| StreamRange {
                device: device.reference(),
                mapping: m,
                smmu: to.reference(),
                first: StreamId(first),
                last: StreamId(last),
            }))
        }))
    }

    /// The [`Platform`] of the SMMU at `smmu` for [`SmmuConfig::platform`]: every StreamID
    /// range a root complex or named component maps to it, with that node's
    /// [`device_facts`]. Adjacent ranges with equal facts are merged; StreamIDs no device maps
    /// keep [`DeviceFacts::UNDECLARED`].
    ///
    /// # Errors
    /// [`Error::TooManyDeclarations`] beyond [`MAX_DECLARATIONS`] ranges; the decoding errors
    /// of the nodes.
    ///
    /// [`SmmuConfig::platform`]: crate::smmuv3::SmmuConfig::platform
    pub fn smmu_platform(&self, smmu: NodeRef) -> Result<Platform, Error> {
        let mut platform = Platform::default();
        let mut used = 0;
        for node in self.nodes() {
            let node = node?;
            if !matches!(
                node.node_type(),
                NodeType::RootComplex | NodeType::NamedComponent
            ) {
                continue;
            }
            let facts = device_facts(node)?;
            for range in self.device_streams(node)? {
                let range = range?;
                if range.smmu != smmu {
                    continue;
                }
                let merged = platform.streams.iter_mut().take(used).flatten().any(|d| {
                    let joins = d.facts == facts
                        && (d.last.0.checked_add(1) == Some(range.first.0)
                            || range.last.0.checked_add(1) == Some(d.first.0));
                    if joins {
                        d.first = d.first.min(range.first);
                        d.last = d.last.max(range.last);
                    }
                    joins
                });
                if merged {
                    continue;
                }
                if used == MAX_DECLARATIONS {
                    return Err(Error::TooManyDeclarations {
                        smmu,
                        max: MAX_DECLARATIONS,
                    });
                }
                platform = platform
                    .declare(range.first, range.last, facts)
                    .map_err(|_| Error::TooManyDeclarations {
                        smmu,
                        max: MAX_DECLARATIONS,
                    })?;
                used += 1;
            }
        }
        Ok(platform)
    }

    /// Every reserved region the RMR nodes declare: for each RMR node, each of its ID
    /// mappings (a StreamID range of an SMMU) with each of its memory ranges.
    pub fn reserved_regions(&self) -> ReservedRegions<'a> {
        ReservedRegions {
            iort: *self,
            nodes: self.nodes(),
            current: None,
            mapping: 0,
            range: 0,
            done: false,
        }
    }

    /// The reserved regions a device needs, as [`Dmar::reserved_regions`] gives a PCI
    /// requester's RMRRs: `id` (a root complex's requester ID, a named component's ID) of the
    /// device node `source` is resolved through the ID mappings to (SMMU, StreamID) as
    /// [`stream_target`](Self::stream_target) does, then [`reserved_for`](Self::reserved_for)
    /// gives the RMR ranges of that StreamID (for
    /// [`DirectRegion::from_rmr`](crate::ioasid::DirectRegion::from_rmr)). Nothing when no
    /// SMMU translates the device (its ID reaches an ITS group directly).
    ///
    /// [`Dmar::reserved_regions`]: crate::firmware::dmar::Dmar::reserved_regions
    ///
    /// # Errors
    /// Those of [`stream_target`](Self::stream_target); each item, those of
    /// [`reserved_regions`](Self::reserved_regions).
    pub fn reserved_for_device(
        &self,
        source: NodeRef,
        id: u32,
    ) -> Result<impl Iterator<Item = Result<ReservedRegion, Error>> + 'a, Error> {
        let target = match self.stream_target(source, id)? {
            StreamTarget::Smmu { smmu, stream_id } => Some((smmu, StreamId(stream_id))),
            StreamTarget::Untranslated { .. } => None,
        };
        let iort = *self;
        Ok(target
            .into_iter()
            .flat_map(move |(smmu, sid)| iort.reserved_for(smmu, sid)))
    }

    /// The reserved regions StreamID `sid` of the SMMU `smmu` needs.
    pub fn reserved_for(
        &self,
        smmu: NodeRef,
        sid: StreamId,
    ) -> impl Iterator<Item = Result<ReservedRegion, Error>> + 'a {
        self.reserved_regions()
            .filter(move |r| r.as_ref().map_or(true, |r| r.covers(smmu, sid)))
    }
}

/// Iterator over the reserved regions of an [`Iort`] (see [`Iort::reserved_regions`]). It
/// stops after the first error, which it yields.
#[derive(Clone, Debug)]
pub struct ReservedRegions<'a> {
    iort: Iort<'a>,
    nodes: Nodes<'a>,
    current: Option<(Rmr<'a>, Option<(NodeRef, IdMapping)>)>,
    mapping: u32,
    range: usize,
    done: bool,
}

impl<'a> ReservedRegions<'a> {
    fn advance(&mut self) -> Result<Option<ReservedRegion>, Error> {
        loop {
            let Some((rmr, stream)) = self.current else {
                let Some(node) = self.nodes.next() else {
                    return Ok(None);
                };
                let node = node?;
                if node.node_type() != NodeType::Rmr {
                    continue;
                }
                if self.iort.revision() < REVISION_E_D {
                    return Err(Error::RmrBeforeRevisionEd {
                        table_revision: self.iort.revision(),
                    });
                }
                self.current = Some((Rmr::decode(node)?, None));
                self.mapping = 0;
                continue;
            };
            let Some((smmu, mapping)) = stream else {
                // Next ID mapping of this RMR node.
                let Some(m) = rmr.node.id_mappings()?.get(self.mapping) else {
                    self.current = None;
                    continue;
                };
                self.mapping += 1;
                let to = self.iort.node(m.output_reference)?;
                if !to.node_type().is_smmu() {
                    return Err(Error::UnexpectedOutput {
                        from: rmr.node.reference(),
                        to: to.reference(),
                        node_type: to.node_type(),
                    });
                }
                m.output_range()?;
                self.current = Some((rmr, Some((to.reference(), m))));
                self.range = 0;
                continue;
            };
            let Some(range) = rmr.ranges().nth(self.range) else {
                self.current = Some((rmr, None));
                continue;
            };
            self.range += 1;
            range.identity()?;
            let (first, last) = mapping.output_range()?;
            return Ok(Some(ReservedRegion {
                smmu,
                first: StreamId(first),
                last: StreamId(last),
                range,
                flags: rmr.flags,
            }));
        }
    }
}

impl Iterator for ReservedRegions<'_> {
    type Item = Result<ReservedRegion, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.advance() {
            Ok(Some(r)) => Some(Ok(r)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl core::iter::FusedIterator for ReservedRegions<'_> {}
