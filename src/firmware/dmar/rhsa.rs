//! Remapping Hardware Static Affinity structure, RHSA (Intel VT-d specification rev. 4.1,
//! §8.6).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 3 |
//! | 2 | 2 | Length = 20 |
//! | 4 | 4 | Reserved |
//! | 8 | 8 | Register Base Address (of a DRHD) |
//! | 16 | 4 | Proximity Domain (as in the SRAT) |
//!
//! Tells which NUMA node a remapping unit sits on, so its tables can be allocated there.

use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u32, read_u64};

/// Bytes of an RHSA.
pub(super) const LENGTH: usize = 20;

/// An RHSA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rhsa {
    /// `Register Base Address` of the DRHD it describes.
    pub register_base: u64,
    /// `Proximity Domain`.
    pub proximity_domain: u32,
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl Rhsa {
    /// Decodes the RHSA in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] if `bytes` is shorter than 20 bytes.
    pub fn parse(bytes: &[u8], offset: usize) -> Result<Self, Error> {
        if bytes.len() < LENGTH {
            return Err(Error::TooShort {
                structure: Structure::Rhsa,
                offset,
                length: bytes.len(),
                minimum: LENGTH,
            });
        }
        Ok(Self {
            register_base: read_u64(bytes, 8)?,
            proximity_domain: read_u32(bytes, 16)?,
            offset,
        })
    }
}
