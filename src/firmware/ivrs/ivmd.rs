//! I/O Virtualization Memory Definition block, IVMD: AMD I/O Virtualization Technology (IOMMU)
//! Specification, document 48882, revision 3.10, §5.2.2.4 "IVMD Types 20h, 21h, 22h": memory
//! that devices must keep reaching (unity mapped, with the permissions given) or that is
//! excluded from translation.
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 1 | Type: 20h all devices, 21h one device, 22h a range of devices |
//! | 1 | 1 | Flags: bit 0 Unity, bit 1 IR, bit 2 IW, bit 3 ExclusionRange |
//! | 2 | 2 | Length (32) |
//! | 4 | 2 | DeviceID (21h; the first of the range for 22h) |
//! | 6 | 2 | Auxiliary Data (22h: the last DeviceID of the range) |
//! | 8 | 2 | PCI Segment Group of the devices named (reserved, so 0, in tables before segments) |
//! | 10 | 6 | Reserved |
//! | 16 | 8 | IVMD Start Address |
//! | 24 | 8 | IVMD Memory Block Length |

use bitflags::bitflags;

use super::error::{Error, Structure};
use crate::firmware::acpi::{read_u16, read_u64, read_u8};
use crate::mem::PhysAddr;

/// Bytes of an IVMD.
const LEN: usize = 32;

bitflags! {
    /// `Flags` of an IVMD (bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct IvmdFlags: u8 {
        /// Bit 0: the range must be mapped one-to-one (IOVA = PA) for the devices named.
        const UNITY = 1 << 0;
        /// Bit 1: with read permission.
        const IR = 1 << 1;
        /// Bit 2: with write permission.
        const IW = 1 << 2;
        /// Bit 3: the range is an exclusion range (not translated).
        const EXCLUSION_RANGE = 1 << 3;
    }
}

/// Which devices an IVMD is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IvmdDevices {
    /// 20h: every device of the IVMD's PCI segment.
    All,
    /// 21h: one device ID.
    One(u16),
    /// 22h: device IDs `first..=last`.
    Range {
        /// First device ID.
        first: u16,
        /// Last device ID (inclusive).
        last: u16,
    },
}

/// An IVMD, checked for its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ivmd {
    /// The devices it is for.
    pub devices: IvmdDevices,
    /// `PCI Segment Group` of the devices.
    pub segment: u16,
    /// `Flags`.
    pub flags: IvmdFlags,
    /// `IVMD Start Address`.
    pub start: u64,
    /// `IVMD Memory Block Length`.
    pub length: u64,
    /// Offset of the block in the IVRS table.
    pub offset: usize,
}

impl Ivmd {
    /// Decodes the IVMD in `bytes` (exactly its `Length` bytes) at table offset `offset`.
    ///
    /// # Errors
    /// [`Error::TooShort`]; [`Error::IvmdDeviceRange`] for a type 22h whose first device ID
    /// is after its last (the table keeps the other blocks: [`Block::Refused`]).
    ///
    /// [`Block::Refused`]: super::Block::Refused
    pub fn parse(bytes: &[u8], offset: usize) -> Result<Self, Error> {
        if bytes.len() < LEN {
            return Err(Error::TooShort {
                structure: Structure::Ivmd,
                offset,
                length: bytes.len(),
                minimum: LEN,
            });
        }
        let device_id = read_u16(bytes, 4)?;
        let devices = match read_u8(bytes, 0)? {
            0x20 => IvmdDevices::All,
            0x21 => IvmdDevices::One(device_id),
            _ => {
                let last = read_u16(bytes, 6)?;
                if last < device_id {
                    return Err(Error::IvmdDeviceRange {
                        offset,
                        first: device_id,
                        last,
                    });
                }
                IvmdDevices::Range {
                    first: device_id,
                    last,
                }
            }
        };
        Ok(Self {
            devices,
            segment: read_u16(bytes, 8)?,
            flags: IvmdFlags::from_bits_retain(read_u8(bytes, 1)?),
            start: read_u64(bytes, 16)?,
            length: read_u64(bytes, 24)?,
            offset,
        })
    }

    /// Whether the IVMD is for `device_id` of PCI segment `segment`: device IDs are per
    /// segment, so another segment's IVMD (20h "all devices" included) is not.
    pub const fn applies_to(&self, segment: u16, device_id: u16) -> bool {
        if self.segment != segment {
            return false;
        }
        match self.devices {
            IvmdDevices::All => true,
            IvmdDevices::One(d) => d == device_id,
            IvmdDevices::Range { first, last } => first <= device_id && device_id <= last,
        }
    }

    /// The memory range: its start and length.
    ///
    /// # Errors
    /// [`Error::MemoryRange`] unless start and length are 4 KiB aligned, the length is not
    /// zero and the end fits below 2^64.
    pub fn range(&self) -> Result<(PhysAddr, u64), Error> {
        let bad = Error::MemoryRange {
            start: self.start,
            length: self.length,
        };
        if self.start % 4096 != 0
            || self.length % 4096 != 0
            || self.length == 0
            || self.start.checked_add(self.length).is_none()
        {
            return Err(bad);
        }
        Ok((PhysAddr::new(self.start), self.length))
    }
}
