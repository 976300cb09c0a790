//! Whether firmware lets a PCI function use ATS (Intel VT-d specification rev. 4.1, §8.5 "Root
//! Port ATS Capability Reporting Structure", §8.8 "SoC Integrated Address Translation Cache
//! Reporting Structure").
//!
//! A device may send translated requests (which the unit does not translate) only where the
//! DMAR says its path supports ATS. Linux's `dmar_ats_supported` decides so, and
//! [`Dmar::ats_permission`] answers the same facts:
//! 1. a SATC of the function's segment whose scope names the function (its Physical Function
//!    for an SR-IOV VF): allowed, or [`AtsPermission::Required`] with ATC_REQUIRED;
//! 2. else the function's way up to its host bridge, which only the embedder's enumeration
//!    knows ([`Upstream`]): an integrated device (on a root bus, no bridge above it) is
//!    allowed; a conventional PCI bridge on the way (a PCI-PCI or PCIe-to-PCI bridge) forbids;
//! 3. else below root port `rp`: an ATSR of the segment with ALL_PORTS, or one whose scope
//!    names `rp`, allows; otherwise (no ATSR at all included) ATS is forbidden.
//!
//! Scopes name their device exactly (an ATSR's root port, a SATC's endpoint), as Linux
//! matches them. A scope that might name it but cannot be followed through the bus walk is
//! [`Error::ScopeUnresolved`] when nothing else decides: the answer would be a guess.

use super::device_scope::{DeviceScope, PciBuses};
use super::error::Error;
use super::lookup::first_scope;
use super::satc::SatcFlags;
use super::table::Dmar;
use super::AtsrFlags;
use crate::iommu::AtsPermission;
use crate::vtd::SourceId;

/// Where a PCI function sits below its host bridge, as the embedder's PCI enumeration found
/// it walking up from the function (Linux walks `bus->self` up to the root port).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Upstream {
    /// On a root bus, no bridge above it (a Root Complex Integrated Endpoint).
    Integrated,
    /// Below this PCIe root port, through PCIe switch ports only.
    RootPort(SourceId),
    /// A conventional PCI bridge (PCI-PCI, or PCIe-to-PCI/PCI-X: PCIe device type 7, or a bridge
    /// without a PCIe capability) is on the way up, at this requester ID: the requests above
    /// it carry no ATS.
    ConventionalBridge(SourceId),
}

/// Whether a scope of `scopes` names `rid` exactly; a scope that does decides even when
/// another does not resolve, else the first unresolved one is the error.
fn named_by<'a, B: PciBuses + ?Sized>(
    scopes: impl Iterator<Item = DeviceScope<'a>>,
    segment: u16,
    rid: SourceId,
    buses: &B,
) -> Result<bool, Error> {
    first_scope(scopes, rid, |s| s.names(segment, rid, buses)).map(|s| s.is_some())
}

impl Dmar<'_> {
    /// What the DMAR says about PCI function `function` on `segment` using ATS: the SATCs
    /// first, then `upstream` and the ATSRs (see the [module](self) documentation).
    /// `function` is the function firmware may list: for an SR-IOV Virtual Function, its
    /// Physical Function (Linux `pci_physfn`). Hand the answer to the attach in
    /// [`DeviceHints::ats_permission`](crate::iommu::DeviceHints::ats_permission): an attach
    /// with ATS where it is [`AtsPermission::Forbidden`] is refused.
    ///
    /// [`AtsPermission::Required`] (SATC ATC_REQUIRED): Linux enables ATS for such a device in
    /// scalable mode only; in legacy mode the hardware enables its ATC and the OS leaves the
    /// device's ATS off (else invalidations are issued twice).
    ///
    /// # Errors
    /// [`Error::ScopeUnresolved`] if no scope decides but a SATC scope that might name
    /// `function`, or an ATSR scope that might name the root port, could not be followed
    /// through `buses`.
    pub fn ats_permission<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        function: SourceId,
        upstream: Upstream,
        buses: &B,
    ) -> Result<AtsPermission, Error> {
        let mut unresolved = None;
        for satc in self.satcs().filter(|s| s.segment == segment) {
            match named_by(satc.device_scopes(), segment, function, buses) {
                Ok(true) if satc.flags.contains(SatcFlags::ATC_REQUIRED) => {
                    return Ok(AtsPermission::Required)
                }
                Ok(true) => return Ok(AtsPermission::Allowed),
                Ok(false) => {}
                Err(e) => {
                    unresolved.get_or_insert(e);
                }
            }
        }
        // The function may be a SATC's: the rest of the walk would be a guess.
        if let Some(e) = unresolved {
            return Err(e);
        }
        let root_port = match upstream {
            Upstream::Integrated => return Ok(AtsPermission::Allowed),
            Upstream::ConventionalBridge(_) => return Ok(AtsPermission::Forbidden),
            Upstream::RootPort(rp) => rp,
        };
        for atsr in self.atsrs().filter(|a| a.segment == segment) {
            if atsr.flags.contains(AtsrFlags::ALL_PORTS) {
                return Ok(AtsPermission::Allowed);
            }
            match named_by(atsr.device_scopes(), segment, root_port, buses) {
                Ok(true) => return Ok(AtsPermission::Allowed),
                Ok(false) => {}
                Err(e) => {
                    unresolved.get_or_insert(e);
                }
            }
        }
        unresolved.map_or(Ok(AtsPermission::Forbidden), Err)
    }
}
