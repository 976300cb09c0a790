//! Facts about a unit's devices that no SMMUv3 register reports: firmware declares them, and
//! the embedder passes them on when it creates the unit.
//!
//! Arm DEN 0049 (IO Remapping Table, IORT) E.f §3.1.1.2 "Memory access properties" of the
//! named component and root complex nodes: the Cache Coherent Attribute (CCA, byte 0) and the
//! memory access flags (byte 7: bit 0 CPM, bit 1 DACS, bit 2 CANWBS). A root complex or named
//! component maps its requesters to StreamIDs of one SMMU through its ID mappings, so a
//! declaration covers a StreamID range. Device tree: `dma-coherent` on the device's node (or an
//! ancestor) is the CCA; there is no binding for CANWBS, which a device-tree platform can only
//! declare from its own documentation ([`Source::Embedder`]).
//!
//! - `CANWBS` (IORT E.f, April 2024): every access of the device to Normal memory stays
//!   coherent even when the attributes it presents, or those the SMMU gives it, are not
//!   Write-Back Shareable -- PCIe No-Snoop included. It is the only basis for enforced snooping
//!   on SMMUv3: `IDR3.FWB` forces write-back over stage-1 attributes but a No-Snoop
//!   transaction can bypass the caches before it reaches the SMMU's attributes, and
//!   `IDR0.COHACC` covers the SMMU's own table walks, queues and MSIs only.
//! - coherent DMA (IORT `CCA` = 1 with `CPM`; DT `dma-coherent`): the device's transactions
//!   snoop when they are Write-Back Shareable, so stage-1 leaves get that type. Undeclared, the
//!   unit follows its walker's coherency (`IDR0.COHACC`, or the declared
//!   [`SmmuConfig::coherent_access`](super::SmmuConfig::coherent_access)), as if the devices
//!   were as coherent as its walker.

use super::{SmmuError, StreamId};
use crate::iommu::Source;

/// What [`Missing::NotDeclared`](crate::iommu::Missing::NotDeclared) names when a domain that
/// enforces snooping meets a device (or a unit) without `CANWBS`.
pub const CANWBS_NOT_DECLARED: &str =
    "CANWBS (ACPI IORT memory access flags) for the device: its No-Snoop DMA is not known to be coherent";

/// What [`Missing::NotDeclared`](crate::iommu::Missing::NotDeclared) names when a guest's stage
/// 1 (a user domain) would decide its device's memory type: the unit has no `IDR3.FWB` to
/// force write-back under it, and the device (or every device of the unit, at allocation) has
/// no `CANWBS`.
pub const USER_STAGE1_NOT_COHERENT: &str =
    "CANWBS (ACPI IORT memory access flags) for the device: without IDR3.FWB a guest's stage 1 could make its DMA Non-cacheable";

/// Most StreamID ranges a [`Platform`] declares facts for.
pub const MAX_DECLARATIONS: usize = 8;

/// What the platform says about some devices' transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceFacts {
    /// IORT `CANWBS`: accesses to Normal memory are coherent whatever their attributes, PCIe
    /// No-Snoop included. Required for domains that enforce snooping.
    pub canwbs: bool,
    /// IORT `CCA` / DT `dma-coherent`: `Some(true)` if DMA snoops when marked Write-Back
    /// Shareable, `Some(false)` if it must be non-cacheable; `None` to follow `IDR0.COHACC`.
    pub coherent_dma: Option<bool>,
    /// Where the two facts come from: [`Source::Firmware`] naming the table and node,
    /// or [`Source::Embedder`] for the embedder's own knowledge of the platform.
    pub source: Source,
}

impl DeviceFacts {
    /// Nothing declared: no `CANWBS`, DMA as coherent as the SMMU's walker.
    pub const UNDECLARED: Self = Self {
        canwbs: false,
        coherent_dma: None,
        source: Source::Embedder("SmmuConfig::platform: nothing declared"),
    };
}

impl DeviceFacts {
    /// Where the device's DMA coherency comes from: this declaration's source, or
    /// [`COHERENCY_UNDECLARED`] when it leaves it to `IDR0.COHACC`.
    pub const fn coherent_dma_source(&self) -> Source {
        match self.coherent_dma {
            Some(_) => self.source,
            None => COHERENCY_UNDECLARED,
        }
    }
}

/// The source of a device's DMA coherency nobody declared: the unit's walker coherency.
pub const COHERENCY_UNDECLARED: Source = Source::Register("IDR0.COHACC (coherency undeclared)");

impl Default for DeviceFacts {
    fn default() -> Self {
        Self::UNDECLARED
    }
}

/// Facts for the StreamIDs `first..=last` (one IORT ID mapping, or one device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Declaration {
    /// First StreamID covered.
    pub first: StreamId,
    /// Last StreamID covered (inclusive).
    pub last: StreamId,
    /// The facts.
    pub facts: DeviceFacts,
}

/// Everything the platform declared for one unit: a default for every device and up to
/// [`MAX_DECLARATIONS`] StreamID ranges that override it. The first range covering a StreamID
/// decides for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Platform {
    /// For every StreamID no range covers (an IORT SMMU node whose every input declares the
    /// same properties, or a device-tree platform).
    pub unit: DeviceFacts,
    /// Per-range declarations.
    pub streams: [Option<Declaration>; MAX_DECLARATIONS],
}

impl Platform {
    /// `unit` for every device.
    pub const fn new(unit: DeviceFacts) -> Self {
        Self {
            unit,
            streams: [None; MAX_DECLARATIONS],
        }
    }

    /// Adds a declaration for `first..=last`.
    ///
    /// # Errors
    /// [`SmmuError::EmptyDeclaration`] for `first > last`,
    /// [`SmmuError::TooManyDeclarations`] when [`MAX_DECLARATIONS`] are made; each names the
    /// range.
    pub fn declare(
        mut self,
        first: StreamId,
        last: StreamId,
        facts: DeviceFacts,
    ) -> Result<Self, SmmuError> {
        if first > last {
            return Err(SmmuError::EmptyDeclaration { first, last });
        }
        let free = self.streams.iter_mut().find(|d| d.is_none()).ok_or(
            SmmuError::TooManyDeclarations {
                first,
                last,
                max: MAX_DECLARATIONS,
            },
        )?;
        *free = Some(Declaration { first, last, facts });
        Ok(self)
    }

    /// Checks every declaration (a range built by hand may be empty).
    ///
    /// # Errors
    /// [`SmmuError::EmptyDeclaration`] naming the first empty range.
    pub(crate) fn check(&self) -> Result<(), SmmuError> {
        match self.streams.iter().flatten().find(|d| d.first > d.last) {
            Some(d) => Err(SmmuError::EmptyDeclaration {
                first: d.first,
                last: d.last,
            }),
            None => Ok(()),
        }
    }

    /// Whether any device of the unit is declared `CANWBS`.
    pub fn any_canwbs(&self) -> bool {
        self.unit.canwbs || self.streams.iter().flatten().any(|d| d.facts.canwbs)
    }

    /// The facts that hold for `sid`.
    pub fn facts(&self, sid: StreamId) -> DeviceFacts {
        self.streams
            .iter()
            .flatten()
            .find(|d| d.first <= sid && sid <= d.last)
            .map_or(self.unit, |d| d.facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_covering_range_decides_else_the_unit_default() {
        let rc = DeviceFacts {
            canwbs: true,
            coherent_dma: Some(true),
            source: Source::Firmware("IORT root complex CANWBS"),
        };
        let nc = DeviceFacts {
            canwbs: false,
            coherent_dma: Some(false),
            source: Source::Firmware("IORT named component"),
        };
        let p = Platform::default()
            .declare(StreamId(0x100), StreamId(0x1ff), rc)
            .unwrap()
            .declare(StreamId(0x180), StreamId(0x180), nc)
            .unwrap();
        assert_eq!(p.facts(StreamId(0x100)), rc);
        assert_eq!(p.facts(StreamId(0x180)), rc);
        assert_eq!(p.facts(StreamId(0x1ff)), rc);
        assert_eq!(p.facts(StreamId(0x200)), DeviceFacts::UNDECLARED);
        assert_eq!(p.facts(StreamId(0xff)), DeviceFacts::UNDECLARED);
        let empty = SmmuError::EmptyDeclaration {
            first: StreamId(2),
            last: StreamId(1),
        };
        assert_eq!(
            Platform::default().declare(StreamId(2), StreamId(1), rc),
            Err(empty)
        );
        let mut full = Platform::default();
        for i in 0..MAX_DECLARATIONS as u32 {
            full = full.declare(StreamId(i), StreamId(i), nc).unwrap();
        }
        assert_eq!(
            full.declare(StreamId(99), StreamId(100), nc),
            Err(SmmuError::TooManyDeclarations {
                first: StreamId(99),
                last: StreamId(100),
                max: MAX_DECLARATIONS
            })
        );
        let mut bad = Platform::default();
        bad.streams[3] = Some(Declaration {
            first: StreamId(5),
            last: StreamId(4),
            facts: nc,
        });
        assert_eq!(
            bad.check(),
            Err(SmmuError::EmptyDeclaration {
                first: StreamId(5),
                last: StreamId(4)
            })
        );
        // The errors say what was declared, for a log line.
        let text = std::format!("{empty}");
        assert!(text.contains("0x2") && text.contains("0x1"), "{text}");
    }
}
