//! Root Port ATS Capability Reporting structure, ATSR (Intel VT-d specification rev. 4.1,
//! §8.5).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 2 |
//! | 2 | 2 | Length |
//! | 4 | 1 | Flags: bit 0 ALL_PORTS |
//! | 5 | 1 | Reserved |
//! | 6 | 2 | Segment Number |
//! | 8 | - | Device Scope[]: the root ports (PCI sub-hierarchy scopes) that support ATS |
//!
//! A device may use ATS (and so a device-TLB) only below a root port an ATSR names, or on a
//! segment whose ATSR has ALL_PORTS.

use bitflags::bitflags;

use super::device_scope::{DeviceScopes, ScopeList};
use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u8};

/// Bytes before the device scopes.
pub(super) const FIXED: usize = 8;

bitflags! {
    /// `Flags` of an ATSR (§8.5; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AtsrFlags: u8 {
        /// Bit 0: every root port of the segment supports ATS transactions; the device
        /// scopes are then empty.
        const ALL_PORTS = 1 << 0;
    }
}

/// An ATSR, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Atsr<'a> {
    /// `Flags`.
    pub flags: AtsrFlags,
    /// `Segment Number`.
    pub segment: u16,
    scopes: ScopeList<'a>,
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl<'a> Atsr<'a> {
    /// Decodes the ATSR in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] and the device scopes' errors.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let scopes = ScopeList::parse(bytes, offset, FIXED, Structure::Atsr)?;
        Ok(Self {
            flags: AtsrFlags::from_bits_retain(read_u8(bytes, 4)?),
            segment: read_u16(bytes, 6)?,
            scopes,
            offset,
        })
    }

    /// The root ports that support ATS.
    pub fn device_scopes(&self) -> DeviceScopes<'a> {
        self.scopes.iter()
    }
}
