//! SoC Integrated Address Translation Cache structure, SATC (Intel VT-d specification rev.
//! 4.1, §8.8).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 5 |
//! | 2 | 2 | Length |
//! | 4 | 1 | Flags: bit 0 ATC_REQUIRED |
//! | 5 | 1 | Reserved |
//! | 6 | 2 | Segment Number |
//! | 8 | - | Device Scope[]: SoC-integrated endpoints that have an address translation cache |

use bitflags::bitflags;

use super::device_scope::{DeviceScopes, ScopeList};
use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u8};

/// Bytes before the device scopes.
pub(super) const FIXED: usize = 8;

bitflags! {
    /// `Flags` of a SATC (§8.8; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct SatcFlags: u8 {
        /// Bit 0: the listed devices need their ATC enabled to work correctly (the OS must
        /// enable ATS for them).
        const ATC_REQUIRED = 1 << 0;
    }
}

/// A SATC, checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Satc<'a> {
    /// `Flags`.
    pub flags: SatcFlags,
    /// `Segment Number`.
    pub segment: u16,
    scopes: ScopeList<'a>,
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl<'a> Satc<'a> {
    /// Decodes the SATC in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] and the device scopes' errors.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let scopes = ScopeList::parse(bytes, offset, FIXED, Structure::Satc)?;
        Ok(Self {
            flags: SatcFlags::from_bits_retain(read_u8(bytes, 4)?),
            segment: read_u16(bytes, 6)?,
            scopes,
            offset,
        })
    }

    /// The SoC-integrated devices with an address translation cache.
    pub fn device_scopes(&self) -> DeviceScopes<'a> {
        self.scopes.iter()
    }
}
