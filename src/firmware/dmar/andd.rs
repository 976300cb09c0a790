//! ACPI Name-space Device Declaration structure, ANDD (Intel VT-d specification rev. 4.1,
//! §8.7).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 4 |
//! | 2 | 2 | Length |
//! | 4 | 3 | Reserved |
//! | 7 | 1 | ACPI Device Number (the enumeration ID of type-5 device scopes) |
//! | 8 | - | ACPI Object Name: the device's fully qualified name, ASCII, NUL-terminated |
//!
//! Names a non-PCI device (an ACPI name-space device) that a DRHD's type-5 device scope
//! places behind the unit; the scope's path gives the requester ID the device uses.

use super::error::{Error, Structure};
use crate::firmware::acpi::read_u8;

/// Bytes before the object name.
pub(super) const FIXED: usize = 8;

/// An ANDD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Andd<'a> {
    /// `ACPI Device Number`.
    pub device_number: u8,
    /// `ACPI Object Name`, without its terminating NUL (the whole field if firmware left it
    /// out). Not checked to be ASCII.
    pub object_name: &'a [u8],
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl<'a> Andd<'a> {
    /// Decodes the ANDD in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] if `bytes` has no room for a name byte.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let name = bytes
            .get(FIXED..)
            .filter(|n| !n.is_empty())
            .ok_or(Error::TooShort {
                structure: Structure::Andd,
                offset,
                length: bytes.len(),
                minimum: FIXED + 1,
            })?;
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        Ok(Self {
            device_number: read_u8(bytes, 7)?,
            object_name: name.get(..end).unwrap_or(name),
            offset,
        })
    }
}
