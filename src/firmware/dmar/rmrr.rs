//! Reserved Memory Region Reporting structure, RMRR (Intel VT-d specification rev. 4.1, §8.4).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 2 | Type = 1 |
//! | 2 | 2 | Length |
//! | 4 | 2 | Reserved |
//! | 6 | 2 | Segment Number |
//! | 8 | 8 | Reserved Memory Region Base Address (4 KiB aligned) |
//! | 16 | 8 | Reserved Memory Region Limit Address (inclusive; Limit + 1 4 KiB aligned) |
//! | 24 | - | Device Scope[] (§8.3.1): the endpoints that use the region |
//!
//! The listed devices keep DMA-ing to the region after the OS takes over (USB legacy
//! emulation, integrated graphics' stolen memory): every domain such a device is attached to
//! must map the region one-to-one (IOVA = physical address), or the device breaks.

use super::device_scope::{DeviceScopes, ScopeList};
use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u64};
use crate::mem::Iova;
use crate::pgtable::IovaRange;

/// Bytes before the device scopes.
pub(super) const FIXED: usize = 24;

/// An RMRR, checked: its length covers the fixed fields and its device scopes are well formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rmrr<'a> {
    /// `Segment Number`.
    pub segment: u16,
    /// `Reserved Memory Region Base Address`.
    pub base: u64,
    /// `Reserved Memory Region Limit Address` (the region's last byte).
    pub limit: u64,
    scopes: ScopeList<'a>,
    /// Offset of the structure in the DMAR table.
    pub offset: usize,
}

impl<'a> Rmrr<'a> {
    /// Decodes the RMRR in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`] and the device scopes' errors.
    pub fn parse(bytes: &'a [u8], offset: usize) -> Result<Self, Error> {
        let scopes = ScopeList::parse(bytes, offset, FIXED, Structure::Rmrr)?;
        Ok(Self {
            segment: read_u16(bytes, 6)?,
            base: read_u64(bytes, 8)?,
            limit: read_u64(bytes, 16)?,
            scopes,
            offset,
        })
    }

    /// The devices that use the region.
    pub fn device_scopes(&self) -> DeviceScopes<'a> {
        self.scopes.iter()
    }

    /// The region as the IOVA range to map one-to-one (`start` = base, `end` = limit + 1; the
    /// physical address of each IOVA is the IOVA itself).
    ///
    /// # Errors
    /// [`Error::RmrrRange`] if the base or `limit + 1` is not 4 KiB aligned, the limit is
    /// below the base, or `limit + 1` overflows.
    pub fn identity_range(&self) -> Result<IovaRange, Error> {
        let bad = Error::RmrrRange {
            base: self.base,
            limit: self.limit,
        };
        let end = self.limit.checked_add(1).ok_or(bad)?;
        if self.base % 4096 != 0 || end % 4096 != 0 || end <= self.base {
            return Err(bad);
        }
        Ok(IovaRange {
            start: Iova::new(self.base),
            end: Iova::new(end),
        })
    }
}
