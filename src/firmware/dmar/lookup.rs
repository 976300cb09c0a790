//! Which remapping unit covers a requester, and which reserved regions a requester needs
//! (Intel VT-d specification rev. 4.1, §8.3 "DMA Remapping Hardware Unit Definition", §8.3.1
//! "Device Scope Structure", §8.3.2 ARI Extended Functions, §8.3.3 SR-IOV Virtual Functions,
//! §8.4 "Reserved Memory Region Reporting").
//!
//! A PCI requester belongs to the DRHD whose device scopes name it (a PCI endpoint or
//! sub-hierarchy scope naming the function or a bridge above it, whatever the type says, as
//! Linux's `device_to_iommu` follows the hardware; an ACPI name-space device scope naming the
//! requester ID its ANDD device's DMA carries); failing that, to the
//! DRHD of its segment with INCLUDE_PCI_ALL (§8.3: such a unit covers "all PCI compatible
//! devices under the specified segment, except devices reported under the scope of other
//! remapping hardware units"). Kernels decide so (Linux `dmar_find_matched_drhd_unit`, FreeBSD
//! `dmar_find`); scope matches are tried first whatever the DRHDs' order in the table.
//!
//! The embedder's bus walk answers three ways ([`BridgeAnswer`](super::BridgeAnswer)). A
//! function it reports as no bridge is a definite answer: a scope whose path goes through it
//! (a root port disabled or hidden) names no present device, and a scope naming it has
//! nothing below it (a sub-hierarchy scope naming an endpoint), as Linux matches only present
//! devices. A scope whose answer depends on a function the walk cannot tell (no bus walk at
//! all: [`NoBusWalk`](super::NoBusWalk), the C API's NULL `bridge_buses`) might name the
//! requester: when no other scope decides, the lookup fails with [`Error::ScopeUnresolved`]
//! naming the scope, the requester and the bridge, rather than fall back to an
//! INCLUDE_PCI_ALL unit (maybe the wrong unit) or drop an RMRR (a broken device). A scope
//! that does name the requester decides even when another does not resolve.
//!
//! Functions firmware does not list are under the unit of one it does: an SR-IOV Virtual
//! Function under its Physical Function's (§8.3.3), an ARI Extended Function under its device's
//! function 0's (§8.3.2). Only the embedder knows what a function is (PCI enumeration):
//! [`Dmar::unit_for_function`] takes it as a [`FunctionKind`].

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

/// What a PCI function is, as far as device scopes go (§8.3.2, §8.3.3): firmware names only
/// traditional functions in device scopes, and the others are under the unit of the function
/// this says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FunctionKind {
    /// A function device scopes may name (every function of a device without ARI, and
    /// functions 0..=7 of an ARI device): looked up by its own requester ID.
    Traditional,
    /// An ARI Extended Function (function number above 7 of a device with ARI, §8.3.2): under
    /// the unit of its device's function 0, requester ID `bus:00.0` (with ARI the 8 bits below
    /// the bus are the function number). A requester ID whose function number is 7 or below
    /// names a traditional function (PCIe ARI: only functions above 7 are Extended), which
    /// scopes may name by itself: it is looked up as [`Traditional`](Self::Traditional).
    AriExtended,
    /// An SR-IOV Virtual Function (§8.3.3): under the unit of its Physical Function
    /// `physical_function`, which firmware is not required to list (nor could it: VFs appear
    /// when the PF's driver enables them, on buses the OS may number).
    Virtual {
        /// The Physical Function's requester ID.
        physical_function: SourceId,
        /// The Physical Function is itself an ARI Extended Function (then its function 0's
        /// unit; a PF numbered 7 or below is looked up by itself, as for
        /// [`AriExtended`](FunctionKind::AriExtended)).
        physical_function_ari_extended: bool,
    },
}

impl FunctionKind {
    /// The function device scopes name for `rid`, a function of this kind.
    pub const fn scoped_function(self, rid: SourceId) -> SourceId {
        match self {
            Self::Traditional => rid,
            Self::AriExtended => ari_scoped_function(rid),
            Self::Virtual {
                physical_function,
                physical_function_ari_extended: false,
            } => physical_function,
            Self::Virtual {
                physical_function,
                physical_function_ari_extended: true,
            } => ari_scoped_function(physical_function),
        }
    }
}

/// The function scopes name for the ARI function `rid`: function 0 of its device (the same
/// bus, function number 0) if `rid` is an Extended Function (number above 7), else `rid`
/// itself, a traditional function that scopes may name (a caller's "extended" label on it is
/// not trusted over the number).
const fn ari_scoped_function(rid: SourceId) -> SourceId {
    if rid.get() & 0xff <= 7 {
        rid
    } else {
        SourceId::new(rid.get() & 0xff00)
    }
}

/// What the scopes of one structure say about a requester.
enum Match<'a> {
    /// A scope covers it.
    Covered(DeviceScope<'a>),
    /// No scope covers it, and every scope resolved.
    NotCovered,
    /// No resolved scope covers it, and a scope could not be followed (the first such error).
    Unresolved(Error),
}

/// Whether a scope of `scopes` covers `rid`. A scope that covers it decides, even when
/// another scope of the list does not resolve.
fn matching_scope<'a, B: PciBuses + ?Sized>(
    scopes: impl Iterator<Item = DeviceScope<'a>>,
    segment: u16,
    rid: SourceId,
    buses: &B,
) -> Match<'a> {
    match first_scope(scopes, rid, |s| s.covers(segment, rid, buses)) {
        Ok(Some(scope)) => Match::Covered(scope),
        Ok(None) => Match::NotCovered,
        Err(e) => Match::Unresolved(e),
    }
}

/// The first scope of `scopes` for which `test` (about requester `rid`) answers yes: one that
/// does decides, even when another could not be followed; else the first scope that could
/// not (`NotABridge` made [`Error::ScopeUnresolved`], naming the scope and `rid`).
pub(super) fn first_scope<'a>(
    scopes: impl Iterator<Item = DeviceScope<'a>>,
    rid: SourceId,
    test: impl Fn(&DeviceScope<'a>) -> Result<bool, Error>,
) -> Result<Option<DeviceScope<'a>>, Error> {
    let mut unresolved = None;
    for scope in scopes {
        match test(&scope) {
            Ok(true) => return Ok(Some(scope)),
            Ok(false) => {}
            Err(e) => {
                unresolved.get_or_insert(match e {
                    Error::NotABridge { segment, bridge } => Error::ScopeUnresolved {
                        scope: scope.offset,
                        segment,
                        requester: rid,
                        bridge,
                    },
                    other => other,
                });
            }
        }
    }
    unresolved.map_or(Ok(None), Err)
}

impl<'a> Dmar<'a> {
    /// The unit that covers PCI requester `rid` on `segment`: the DRHD one of whose device
    /// scopes names it (or a bridge above it), else the segment's INCLUDE_PCI_ALL DRHD.
    /// `Ok(None)` if no unit covers it: its DMA is not remapped at all, so it must not be given
    /// to anything untrusted.
    ///
    /// `rid` is taken as a function scopes may name ([`FunctionKind::Traditional`]): for an
    /// SR-IOV Virtual Function or an ARI Extended Function, which firmware does not list, this
    /// answers the INCLUDE_PCI_ALL unit (or none) where its PF's or function 0's unit is the
    /// right one. Use [`unit_for_function`](Self::unit_for_function) for those.
    ///
    /// # Errors
    /// [`Error::ScopeUnresolved`] if no scope names the requester but one that might could not
    /// be followed through `buses` (a path through a function that answers as no bridge, or
    /// no bus walk at all): the answer would be a guess.
    pub fn unit_for<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &B,
    ) -> Result<Option<CoveringUnit<'a>>, Error> {
        let mut unresolved = None;
        for drhd in self
            .drhds()
            .filter(|d| d.segment == segment && !d.include_pci_all())
        {
            match matching_scope(drhd.device_scopes(), segment, rid, buses) {
                Match::Covered(scope) => {
                    return Ok(Some(CoveringUnit {
                        drhd,
                        coverage: Coverage::Scope(scope),
                    }))
                }
                Match::NotCovered => {}
                Match::Unresolved(e) => {
                    unresolved.get_or_insert(e);
                }
            }
        }
        if let Some(e) = unresolved {
            return Err(e);
        }
        Ok(self
            .drhds()
            .find(|d| d.segment == segment && d.include_pci_all())
            .map(|drhd| CoveringUnit {
                drhd,
                coverage: Coverage::IncludePciAll,
            }))
    }

    /// The unit that covers PCI function `rid` on `segment`, a function of `kind`: the unit of
    /// the function scopes name for it ([`FunctionKind::scoped_function`]): a Virtual
    /// Function's Physical Function (§8.3.3), an ARI Extended Function's function 0 (§8.3.2),
    /// else `rid` itself, as [`unit_for`](Self::unit_for). The coverage names the scope that
    /// covers that function.
    ///
    /// # Errors
    /// As [`unit_for`](Self::unit_for); [`Error::ScopeUnresolved`] names the function looked
    /// up (the PF, function 0) as the requester.
    pub fn unit_for_function<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        kind: FunctionKind,
        buses: &B,
    ) -> Result<Option<CoveringUnit<'a>>, Error> {
        self.unit_for(segment, kind.scoped_function(rid), buses)
    }

    /// The reserved memory regions (RMRRs, §8.4) that requester `rid` on `segment` must keep
    /// reaching, each as the IOVA range to map one-to-one (IOVA = physical address) in every
    /// domain the requester is attached to. An RMRR names its devices by endpoint scopes; a
    /// sub-hierarchy scope is honoured for every device below the bridge.
    ///
    /// # Errors
    /// Each item is [`Error::RmrrRange`] for an RMRR naming the requester whose range is
    /// malformed, carrying its base and limit (the kernel decides; Linux's
    /// `dmar_parse_one_rmrr` warns, taints the kernel and keeps it: the device may still
    /// need it, so the error is not a reason to drop the region), or
    /// [`Error::ScopeUnresolved`] for an RMRR none of whose scopes names the requester but one
    /// of which could not be followed through `buses` (the region may be the device's).
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
            .filter(move |r| r.segment == segment)
            .filter_map(
                move |r| match matching_scope(r.device_scopes(), segment, rid, buses) {
                    Match::Covered(_) => Some(r.identity_range()),
                    Match::NotCovered => None,
                    Match::Unresolved(e) => Some(Err(e)),
                },
            )
    }
}
