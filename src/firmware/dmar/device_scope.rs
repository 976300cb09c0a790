//! Device Scope structure (Intel VT-d specification rev. 4.1, §8.3.1), its PCI path, and the
//! resolution of a path to a requester ID by walking PCI-PCI bridges (§8.3.1, "the PCI path
//! ... starting from the start bus number").
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 1 | Type: 1 PCI endpoint, 2 PCI sub-hierarchy, 3 IOAPIC, 4 MSI-capable HPET, 5 ACPI name-space device |
//! | 1 | 1 | Length: 6 + 2 * N |
//! | 2 | 1 | Flags |
//! | 3 | 1 | Reserved |
//! | 4 | 1 | Enumeration ID (IOAPIC ID, HPET number, ACPI device number) |
//! | 5 | 1 | Start Bus Number |
//! | 6 | 2 * N | Path: (Device, Function) pairs, the first on the start bus |
//!
//! A path of more than one entry goes through bridges: the bus of entry `i + 1` is the
//! secondary bus of the bridge that entry `i` names, which only the PCI configuration space
//! knows at run time (firmware or the OS may renumber buses). The embedder reads it through
//! [`PciBuses`].

use bitflags::bitflags;

use super::error::{Error, Structure};
use crate::firmware::acpi::read_u8;
use crate::vtd::SourceId;

/// Bytes of a device scope before its path.
const FIXED: usize = 6;

/// `Type` of a device scope (§8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScopeType {
    /// 1: a PCI endpoint device; the path names the device itself.
    PciEndpoint,
    /// 2: a PCI-PCI bridge and every device below it.
    PciSubHierarchy,
    /// 3: an I/O APIC; the enumeration ID is its APIC ID.
    IoApic,
    /// 4: an MSI-capable HPET; the enumeration ID is its HPET number.
    MsiCapableHpet,
    /// 5: an ACPI name-space device; the enumeration ID is its ANDD device number (§8.7).
    AcpiNamespaceDevice,
    /// A value the specification reserves.
    Reserved(u8),
}

impl ScopeType {
    /// Decodes the `Type` byte.
    pub const fn from_raw(raw: u8) -> Self {
        match raw {
            1 => Self::PciEndpoint,
            2 => Self::PciSubHierarchy,
            3 => Self::IoApic,
            4 => Self::MsiCapableHpet,
            5 => Self::AcpiNamespaceDevice,
            other => Self::Reserved(other),
        }
    }
}

bitflags! {
    /// `Flags` of a device scope (§8.3.1; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct ScopeFlags: u8 {
        /// Bit 3: the device's address translation cache is hardened (SATC, §8.8).
        const ATC_HARDENED = 1 << 3;
        /// Bit 4: the device needs its address translation cache enabled to work (SATC).
        const ATC_REQUIRED = 1 << 4;
    }
}

/// One (Device, Function) entry of a PCI path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PathEntry {
    /// PCI device number (0..=31).
    pub device: u8,
    /// PCI function number (0..=7).
    pub function: u8,
}

/// The secondary and subordinate bus numbers of a PCI-PCI bridge (configuration space
/// offsets 0x19 and 0x1A, PCI-to-PCI Bridge Architecture Specification §3.2.5.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BusRange {
    /// The bus directly below the bridge.
    pub secondary: u8,
    /// The highest bus below the bridge.
    pub subordinate: u8,
}

impl BusRange {
    /// Whether `bus` lies below the bridge.
    pub const fn contains(&self, bus: u8) -> bool {
        self.secondary <= bus && bus <= self.subordinate
    }
}

/// What the embedder's bus walk says about one function, as a possible bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BridgeAnswer {
    /// A PCI-PCI bridge, with the buses below it.
    Bridge(BusRange),
    /// No bridge answers there: no function, or a header type other than 1. A definite
    /// answer: a path through it names no present device, and no bus is below it.
    NotABridge,
    /// The walk cannot tell (no bus walk at all): a scope whose answer depends on it is
    /// unresolved ([`Error::NotABridge`]).
    Unknown,
}

/// The embedder's PCI configuration access, used to follow device-scope paths through
/// bridges. Any `Fn(u16, SourceId) -> Option<BusRange>` closure is one (a complete walk:
/// `None` is [`BridgeAnswer::NotABridge`]); [`NoBusWalk`] is the embedder without one.
pub trait PciBuses {
    /// The bus numbers of the PCI-PCI bridge at `bridge` on `segment`, or `None` if no bridge
    /// answers there (no function, or a header type other than 1).
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange>;

    /// The three-way answer the lookups use: by default [`bridge_buses`](Self::bridge_buses)'s,
    /// `None` being [`BridgeAnswer::NotABridge`]. A walk that may not know a function answers
    /// [`BridgeAnswer::Unknown`] for it.
    fn bridge(&self, segment: u16, bridge: SourceId) -> BridgeAnswer {
        match self.bridge_buses(segment, bridge) {
            Some(range) => BridgeAnswer::Bridge(range),
            None => BridgeAnswer::NotABridge,
        }
    }
}

/// No bus walk at all (the C API's NULL `bridge_buses`): every bridge is
/// [`BridgeAnswer::Unknown`], so only scopes that need no walk decide.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NoBusWalk;

impl PciBuses for NoBusWalk {
    fn bridge_buses(&self, _: u16, _: SourceId) -> Option<BusRange> {
        None
    }

    fn bridge(&self, _: u16, _: SourceId) -> BridgeAnswer {
        BridgeAnswer::Unknown
    }
}

impl<F> PciBuses for F
where
    F: Fn(u16, SourceId) -> Option<BusRange>,
{
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange> {
        self(segment, bridge)
    }
}

/// A device scope's path, checked: at least one entry; in a DRHD or RMRR every device below
/// 32 and every function below 8 (an ATSR's or SATC's may have others and then names
/// nothing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciPath<'a> {
    bytes: &'a [u8],
}

impl<'a> PciPath<'a> {
    /// The entries, the first on the scope's start bus.
    pub fn entries(&self) -> impl Iterator<Item = PathEntry> + 'a {
        self.bytes.chunks_exact(2).map(|pair| PathEntry {
            device: pair.first().copied().unwrap_or(0),
            function: pair.get(1).copied().unwrap_or(0),
        })
    }

    /// Number of entries (at least 1).
    pub fn len(&self) -> usize {
        self.bytes.len() / 2
    }

    /// Always false: a checked path has an entry.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() < 2
    }
}

/// A Device Scope structure (§8.3.1), checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceScope<'a> {
    /// `Type`.
    pub scope_type: ScopeType,
    /// `Flags`.
    pub flags: ScopeFlags,
    /// `Enumeration ID`.
    pub enumeration_id: u8,
    /// `Start Bus Number`.
    pub start_bus: u8,
    /// `Path`.
    pub path: PciPath<'a>,
    /// Offset of the scope in the DMAR table (for error reports).
    pub offset: usize,
}

impl<'a> DeviceScope<'a> {
    /// Decodes the scope at the start of `bytes` (the rest of its container), `offset` being
    /// where `bytes` starts in the table, checking its path's entries if `check_paths`.
    /// Returns the scope and its length.
    fn decode(bytes: &'a [u8], offset: usize, check_paths: bool) -> Result<(Self, usize), Error> {
        if bytes.len() < FIXED {
            return Err(Error::TooShort {
                structure: Structure::DeviceScope,
                offset,
                length: bytes.len(),
                minimum: FIXED,
            });
        }
        let length = read_u8(bytes, 1)?;
        let len = usize::from(length);
        if len < FIXED + 2 || (len - FIXED) % 2 != 0 {
            return Err(Error::ScopeLength { offset, length });
        }
        let Some(scope) = bytes.get(..len) else {
            return Err(Error::Overrun {
                structure: Structure::DeviceScope,
                offset,
                length: len,
                remaining: bytes.len(),
            });
        };
        let path = scope.get(FIXED..).unwrap_or(&[]);
        for (i, pair) in path.chunks_exact(2).enumerate().filter(|_| check_paths) {
            if let [device, function] = *pair {
                if device >= 32 || function >= 8 {
                    let at = offset
                        .saturating_add(FIXED)
                        .saturating_add(i.saturating_mul(2));
                    return Err(Error::PathEntry {
                        offset: at,
                        device,
                        function,
                    });
                }
            }
        }
        let scope = Self {
            scope_type: ScopeType::from_raw(read_u8(scope, 0)?),
            flags: ScopeFlags::from_bits_retain(read_u8(scope, 2)?),
            enumeration_id: read_u8(scope, 4)?,
            start_bus: read_u8(scope, 5)?,
            path: PciPath { bytes: path },
            offset,
        };
        Ok((scope, len))
    }

    /// Resolves the path to the requester ID of the function it ends at: the first entry on
    /// `start_bus`, each further entry on the secondary bus of the bridge before it, read
    /// through `buses`.
    ///
    /// # Errors
    /// [`Error::NotABridge`] if the path goes through a function that `buses` does not report
    /// as a bridge (it is absent, or the hierarchy is not what firmware described);
    /// [`Error::PathEntry`] for a path entry no function can have (an ATSR's or SATC's: the
    /// other structures' paths are checked when the table is built).
    pub fn requester_id<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        buses: &B,
    ) -> Result<SourceId, Error> {
        match self.resolve(segment, buses)? {
            Resolved::At(rid) => Ok(rid),
            Resolved::Absent { bridge } => Err(Error::NotABridge { segment, bridge }),
        }
    }

    /// As [`requester_id`](Self::requester_id), telling a path through a function the walk
    /// reports as no bridge (the scope names no present device) from one it cannot follow.
    fn resolve<B: PciBuses + ?Sized>(&self, segment: u16, buses: &B) -> Result<Resolved, Error> {
        let mut bus = self.start_bus;
        let mut last = None;
        for entry in self.path.entries() {
            if let Some(bridge) = last {
                bus = match buses.bridge(segment, bridge) {
                    BridgeAnswer::Bridge(range) => range.secondary,
                    BridgeAnswer::NotABridge => return Ok(Resolved::Absent { bridge }),
                    BridgeAnswer::Unknown => return Err(Error::NotABridge { segment, bridge }),
                };
            }
            let rid = SourceId::from_bdf(bus, entry.device, entry.function).map_err(|_| {
                Error::PathEntry {
                    offset: self.offset,
                    device: entry.device,
                    function: entry.function,
                }
            })?;
            last = Some(rid);
        }
        // `decode` refused empty paths; an empty one resolves to nothing rather than panic.
        last.map(Resolved::At).ok_or(Error::ScopeLength {
            offset: self.offset,
            length: FIXED as u8,
        })
    }

    /// Whether this PCI endpoint or sub-hierarchy scope's path names `rid` itself (not a
    /// device below it): how an ATSR names its root ports and a SATC its devices (Linux
    /// matches the scope's device exactly). A path through a function the walk reports as no
    /// bridge, or a path entry no function can have, names nothing.
    ///
    /// # Errors
    /// [`Error::NotABridge`] when the path goes through a function the walk cannot tell
    /// ([`BridgeAnswer::Unknown`]).
    pub fn names<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &B,
    ) -> Result<bool, Error> {
        if !matches!(
            self.scope_type,
            ScopeType::PciEndpoint | ScopeType::PciSubHierarchy
        ) {
            return Ok(false);
        }
        match self.resolve(segment, buses) {
            Ok(Resolved::At(named)) => Ok(named == rid),
            Ok(Resolved::Absent { .. }) | Err(Error::PathEntry { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether this scope covers the requester `rid` on `segment`. A PCI endpoint or PCI
    /// sub-hierarchy scope covers the function its path names and, if that function is a
    /// bridge, every bus below it (secondary to subordinate), whatever the type says: firmware
    /// mislabels both ways, and Linux (`device_to_iommu`, `is_downstream_to_pci_bridge`)
    /// follows the hardware. An ACPI name-space device scope (type 5, §8.3.1) covers the
    /// requester ID its path gives the ANDD device's DMA. Other types cover no PCI requester,
    /// nor does a path through a function the walk reports as no bridge.
    ///
    /// # Errors
    /// [`Error::NotABridge`] when the answer depends on a function the walk cannot tell
    /// ([`BridgeAnswer::Unknown`]: a bridge on the path, or whether the named function is a
    /// bridge the requester is below).
    pub fn covers<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &B,
    ) -> Result<bool, Error> {
        let below = match self.scope_type {
            ScopeType::PciEndpoint | ScopeType::PciSubHierarchy => true,
            ScopeType::AcpiNamespaceDevice => false,
            _ => return Ok(false),
        };
        // The path starts on the root bus of a host bridge (§8.3.1 `Start Bus Number`), which
        // is below no bridge: a requester there is covered only as the function a one-entry
        // path names (no walk needed).
        if rid.bus() == self.start_bus {
            let devfn = rid.devfn();
            let mut entries = self.path.entries();
            return Ok(match (entries.next(), entries.next()) {
                (Some(e), None) => e.device == devfn >> 3 && e.function == devfn & 7,
                _ => false,
            });
        }
        let named = match self.resolve(segment, buses) {
            Ok(Resolved::At(named)) => named,
            // A function no path reaches, or one no function can have (an ATSR's or SATC's
            // path, never checked: Linux does not either): the scope names nothing.
            Ok(Resolved::Absent { .. }) | Err(Error::PathEntry { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        // A bridge's secondary bus is another bus than its own: a device on the named
        // function's bus is not below it (no walk needed).
        if named == rid || !below || rid.bus() == named.bus() {
            return Ok(named == rid);
        }
        match buses.bridge(segment, named) {
            BridgeAnswer::Bridge(range) => Ok(range.contains(rid.bus())),
            BridgeAnswer::NotABridge => Ok(false),
            BridgeAnswer::Unknown => Err(Error::NotABridge {
                segment,
                bridge: named,
            }),
        }
    }
}

/// Where a scope's path leads.
enum Resolved {
    /// The function it names.
    At(SourceId),
    /// Nowhere: it goes through `bridge`, which the walk reports as no bridge.
    Absent {
        /// The function that is not a bridge.
        bridge: SourceId,
    },
}

/// The device scopes of one structure, in table order. Built only over bytes that
/// the structure's parser checked, so it yields every scope there is.
#[derive(Clone, Debug)]
pub struct DeviceScopes<'a> {
    bytes: &'a [u8],
    /// Offset of `bytes` in the table.
    offset: usize,
}

impl<'a> Iterator for DeviceScopes<'a> {
    type Item = DeviceScope<'a>;

    fn next(&mut self) -> Option<DeviceScope<'a>> {
        let (scope, len) = DeviceScope::decode(self.bytes, self.offset, false).ok()?;
        self.bytes = self.bytes.get(len..).unwrap_or(&[]);
        self.offset = self.offset.saturating_add(len);
        Some(scope)
    }
}

/// The Device Scope[] list that ends a DRHD, RMRR, ATSR or SATC (§8.3.1): the bytes after
/// the structure's fixed fields, checked to be a whole number of well-formed device scopes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ScopeList<'a> {
    bytes: &'a [u8],
    /// Offset of `bytes` in the table.
    offset: usize,
}

impl<'a> ScopeList<'a> {
    /// Splits the scope list off `bytes`, the whole `structure` (exactly its `Length` bytes) at
    /// table offset `offset` whose fixed fields take `fixed` bytes, and checks it.
    ///
    /// # Errors
    /// [`Error::TooShort`] if `bytes` does not cover the fixed fields, and the device scopes'
    /// errors.
    pub(super) fn parse(
        bytes: &'a [u8],
        offset: usize,
        fixed: usize,
        structure: Structure,
    ) -> Result<Self, Error> {
        let list = Self {
            bytes: bytes.get(fixed..).ok_or(Error::TooShort {
                structure,
                offset,
                length: bytes.len(),
                minimum: fixed,
            })?,
            offset: offset.saturating_add(fixed),
        };
        // A path entry no function can have (device 32 and up, function 8 and up) refuses the
        // table in a DRHD or RMRR, which decide whose DMA goes where. In an ATSR or SATC it
        // only makes the scope name nothing, as in Linux: refusing the whole table for it
        // would take every unit away.
        let check_paths = !matches!(structure, Structure::Atsr | Structure::Satc);
        let (mut rest, mut at) = (list.bytes, list.offset);
        while !rest.is_empty() {
            let (_, len) = DeviceScope::decode(rest, at, check_paths)?;
            rest = rest.get(len..).unwrap_or(&[]);
            at = at.saturating_add(len);
        }
        Ok(list)
    }

    /// The device scopes, in table order.
    pub(super) const fn iter(&self) -> DeviceScopes<'a> {
        DeviceScopes {
            bytes: self.bytes,
            offset: self.offset,
        }
    }
}
