//! DMA Remapping Hardware Unit Definition structure, DRHD (Intel VT-d specification rev. 4.1,
//! §8.3).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 0 |
//! | 2 | 2 | Length |
//! | 4 | 1 | Flags: bit 0 INCLUDE_PCI_ALL |
//! | 5 | 1 | Size: bits 3:0 = N, the register set is 2^N 4 KiB pages |
//! | 6 | 2 | Segment Number |
//! | 8 | 8 | Register Base Address |
//! | 16 | - | Device Scope[] (§8.3.1) |

use bitflags::bitflags;

use super::device_scope::{DeviceScopes, ScopeList};
use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u64, read_u8};
use crate::mem::PhysAddr;

/// Bytes before the device scopes.
pub(super) const FIXED: usize = 16;

bitflags! {
    /// `Flags` of a DRHD (§8.3; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DrhdFlags: u8 {
        /// Bit 0: the unit covers every PCI device of its segment that no other DRHD lists
        /// (its own device scopes then list only IOAPICs and HPETs). At most one such unit per
        /// segment, and it comes last among the segment's DRHDs.
        const INCLUDE_PCI_ALL = 1 << 0;
    }
}

/// A DRHD, checked: its length covers the fixed fields and its device scopes are well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Drhd<'a> {
    /// `Flags`.
    pub flags: DrhdFlags,
    /// `Size` bits 3:0: the register set is `2^size` 4 KiB pages.
    pub size: u8,
    /// `Segment Number`: the PCI segment the unit's devices are on.
    pub segment: u16,
    /// `Register Base Address` (4 KiB aligned, checked by [`register_window`](Self::register_window)).
    pub register_base: u64,
    scopes: ScopeList<'a>,
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl<'a> Drhd<'a> {
    /// Decodes the DRHD in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] and the device scopes' errors.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let scopes = ScopeList::parse(bytes, offset, FIXED, Structure::Drhd)?;
        Ok(Self {
            flags: DrhdFlags::from_bits_retain(read_u8(bytes, 4)?),
            size: read_u8(bytes, 5)? & 0xf,
            segment: read_u16(bytes, 6)?,
            register_base: read_u64(bytes, 8)?,
            scopes,
            offset,
        })
    }

    /// Whether the unit covers every otherwise unlisted PCI device of its segment.
    pub const fn include_pci_all(&self) -> bool {
        self.flags.contains(DrhdFlags::INCLUDE_PCI_ALL)
    }

    /// The device scopes (§8.3.1): the PCI endpoints and sub-hierarchies the unit covers
    /// (none need be listed with INCLUDE_PCI_ALL), and its IOAPICs and HPETs.
    pub fn device_scopes(&self) -> DeviceScopes<'a> {
        self.scopes.iter()
    }

    /// The register window: its base and its length in bytes (`2^Size` 4 KiB pages).
    ///
    /// # Errors
    /// [`Error::RegisterBase`] if the base is not 4 KiB aligned or the window does not fit
    /// below 2^64.
    pub fn register_window(&self) -> Result<(PhysAddr, u64), Error> {
        let bad = Error::RegisterBase {
            base: self.register_base,
            size: self.size,
        };
        let length = 4096u64.checked_shl(u32::from(self.size)).ok_or(bad)?;
        if self.register_base % 4096 != 0 || self.register_base.checked_add(length).is_none() {
            return Err(bad);
        }
        Ok((PhysAddr::new(self.register_base), length))
    }
}
