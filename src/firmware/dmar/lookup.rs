//! Which remapping unit covers a requester, and which reserved regions a requester needs
//! (Intel VT-d specification rev. 4.1, §8.3 "DMA Remapping Hardware Unit Definition", §8.3.1
//! "Device Scope Structure", §8.4 "Reserved Memory Region Reporting").
//!
//! A PCI requester belongs to the DRHD whose device scopes name it (a PCI endpoint scope naming
//! the function, or a PCI sub-hierarchy scope naming a bridge above it); failing that, to the
//! DRHD of its segment with INCLUDE_PCI_ALL (§8.3: such a unit covers "all PCI compatible
//! devices under the specified segment, except devices reported under the scope of other
//! remapping hardware units"). Kernels decide so (Linux `dmar_find_matched_drhd_unit`, FreeBSD
//! `dmar_find`); scope matches are tried first whatever the DRHDs' order in the table.
//!
//! A scope whose path does not resolve (it goes through a function that is not a bridge: an
//! empty hot-plug slot, a hierarchy the OS renumbered or firmware described wrongly) names no
//! device and covers nothing.

use super::device_scope::{DeviceScope, PciBuses};
use super::drhd::Drhd;
use super::error::Error;
use super::table::Dmar;
use crate::pgtable::IovaRange;
use crate::vtd::SourceId;

/// How a unit came to cover a requester.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coverage<'a> {
    /// A device scope of the unit names the requester or a bridge above it.
    Scope(DeviceScope<'a>),
    /// No unit's scope names it; the unit is its segment's INCLUDE_PCI_ALL unit.
    IncludePciAll,
}

/// The unit that translates a requester's DMA, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoveringUnit<'a> {
    /// The unit.
    pub drhd: Drhd<'a>,
    /// How it covers the requester.
    pub coverage: Coverage<'a>,
}

/// The first scope of `scopes` that covers `rid`; unresolvable scopes cover nothing.
fn matching_scope<'a, B: PciBuses + ?Sized>(
    mut scopes: impl Iterator<Item = DeviceScope<'a>>,
    segment: u16,
    rid: SourceId,
    buses: &B,
) -> Option<DeviceScope<'a>> {
    scopes.find(|scope| scope.covers(segment, rid, buses).unwrap_or(false))
}

impl<'a> Dmar<'a> {
    /// The unit that covers PCI requester `rid` on `segment`: the DRHD one of whose device
    /// scopes names it (or a bridge above it), else the segment's INCLUDE_PCI_ALL DRHD. `None`
    /// if no unit covers it: its DMA is not remapped at all, so it must not be given to
    /// anything untrusted.
    pub fn unit_for<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &B,
    ) -> Option<CoveringUnit<'a>> {
        let listed = self
            .drhds()
            .filter(|d| d.segment == segment && !d.include_pci_all())
            .find_map(|drhd| {
                matching_scope(drhd.device_scopes(), segment, rid, buses).map(|scope| {
                    CoveringUnit {
                        drhd,
                        coverage: Coverage::Scope(scope),
                    }
                })
            });
        listed.or_else(|| {
            self.drhds()
                .find(|d| d.segment == segment && d.include_pci_all())
                .map(|drhd| CoveringUnit {
                    drhd,
                    coverage: Coverage::IncludePciAll,
                })
        })
    }

    /// The reserved memory regions (RMRRs, §8.4) that requester `rid` on `segment` must keep
    /// reaching, each as the IOVA range to map one-to-one (IOVA = physical address) in every
    /// domain the requester is attached to. An RMRR names its devices by endpoint scopes; a
    /// sub-hierarchy scope is honoured for every device below the bridge.
    ///
    /// # Errors
    /// Each item is [`Error::RmrrRange`] for an RMRR naming the requester whose range is
    /// malformed (the kernel decides: Linux warns and skips it).
    pub fn reserved_regions<'b, B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &'b B,
    ) -> impl Iterator<Item = Result<IovaRange, Error>> + 'b
    where
        'a: 'b,
    {
        self.rmrrs()
            .filter(move |r| {
                r.segment == segment
                    && matching_scope(r.device_scopes(), segment, rid, buses).is_some()
            })
            .map(|r| r.identity_range())
    }
}
