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

/// The embedder's PCI configuration access, used to follow device-scope paths through
/// bridges. Any `Fn(u16, SourceId) -> Option<BusRange>` closure is one.
pub trait PciBuses {
    /// The bus numbers of the PCI-PCI bridge at `bridge` on `segment`, or `None` if no bridge
    /// answers there (no function, or a header type other than 1).
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange>;
}

impl<F> PciBuses for F
where
    F: Fn(u16, SourceId) -> Option<BusRange>,
{
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange> {
        self(segment, bridge)
    }
}

/// A device scope's path, checked: at least one entry, every device below 32 and every
/// function below 8.
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
    /// where `bytes` starts in the table. Returns the scope and its length.
    fn decode(bytes: &'a [u8], offset: usize) -> Result<(Self, usize), Error> {
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
        for (i, pair) in path.chunks_exact(2).enumerate() {
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
    /// as a bridge (it is absent, or the hierarchy is not what firmware described).
    pub fn requester_id<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        buses: &B,
    ) -> Result<SourceId, Error> {
        let mut bus = self.start_bus;
        let mut last = None;
        for entry in self.path.entries() {
            if let Some(bridge) = last {
                bus = buses
                    .bridge_buses(segment, bridge)
                    .ok_or(Error::NotABridge { segment, bridge })?
                    .secondary;
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
        last.ok_or(Error::ScopeLength {
            offset: self.offset,
            length: FIXED as u8,
        })
    }

    /// Whether this scope covers the requester `rid` on `segment`: a PCI endpoint scope the
    /// function its path names, a PCI sub-hierarchy scope the bridge and every bus below it
    /// (the bridge's secondary to subordinate bus). Other scope types cover no PCI requester.
    ///
    /// # Errors
    /// Those of [`requester_id`](Self::requester_id); [`Error::NotABridge`] if a
    /// sub-hierarchy scope's own bridge does not answer as a bridge.
    pub fn covers<B: PciBuses + ?Sized>(
        &self,
        segment: u16,
        rid: SourceId,
        buses: &B,
    ) -> Result<bool, Error> {
        // The function a path ends at has the last entry's device and function whatever the
        // buses: another device/function is not the endpoint (no walk needed).
        let last_devfn = self
            .path
            .entries()
            .last()
            .map(|e| (e.device << 3) | e.function);
        match self.scope_type {
            ScopeType::PciEndpoint => {
                if last_devfn != Some(rid.devfn()) {
                    return Ok(false);
                }
                Ok(self.requester_id(segment, buses)? == rid)
            }
            ScopeType::PciSubHierarchy => {
                let bridge = self.requester_id(segment, buses)?;
                if bridge == rid {
                    return Ok(true);
                }
                // A bridge's secondary bus is another bus than its own: a device on the
                // bridge's bus is not below it.
                if rid.bus() == bridge.bus() {
                    return Ok(false);
                }
                let range = buses
                    .bridge_buses(segment, bridge)
                    .ok_or(Error::NotABridge { segment, bridge })?;
                Ok(range.contains(rid.bus()))
            }
            _ => Ok(false),
        }
    }
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
        let (scope, len) = DeviceScope::decode(self.bytes, self.offset).ok()?;
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
        let (mut rest, mut at) = (list.bytes, list.offset);
        while !rest.is_empty() {
            let (_, len) = DeviceScope::decode(rest, at)?;
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
