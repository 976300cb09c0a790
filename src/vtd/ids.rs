//! VT-d identifiers: domain-id (§9.3 DID), source-id (§3.4 requester-id), PASID (§3.4.3).
//!
//! Intel VT-d specification rev. 4.1. Checked constructors: a value too wide for its field is an
//! error carrying the value, never truncated.

use core::fmt;

use super::Error;

/// A domain identifier (`DID`, 16 bits; how many are usable is `CAP.ND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct DomainId(u16);

impl DomainId {
    /// Wraps a 16-bit domain id.
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }
    /// The raw id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

/// A PCI requester / source id: bus in 15:8, device in 7:3, function in 2:0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceId(u16);

impl SourceId {
    /// Wraps a raw 16-bit source id.
    pub const fn new(raw: u16) -> Self {
        Self(raw)
    }
    /// Builds `bus:device.function`; device must be below 32 and function below 8.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the out-of-range part.
    pub const fn from_bdf(bus: u8, device: u8, function: u8) -> Result<Self, Error> {
        if device >= 32 {
            return Err(Error::InvalidArgument {
                what: "PCI device number",
                value: device as u64,
            });
        }
        if function >= 8 {
            return Err(Error::InvalidArgument {
                what: "PCI function number",
                value: function as u64,
            });
        }
        Ok(Self(
            (bus as u16) << 8 | (device as u16) << 3 | function as u16,
        ))
    }
    /// The raw id.
    pub const fn get(self) -> u16 {
        self.0
    }
    /// The bus number (15:8).
    pub const fn bus(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Device and function (7:0), the index into a context table.
    pub const fn devfn(self) -> u8 {
        self.0 as u8
    }
}

impl fmt::Debug for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SourceId({:02x}:{:02x}.{})",
            self.bus(),
            self.devfn() >> 3,
            self.devfn() & 7
        )
    }
}

/// A process address space id: 20 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pasid(u32);

impl Pasid {
    /// Width of a PASID in bits.
    pub const BITS: u32 = 20;
    /// PASID 0.
    pub const ZERO: Self = Self(0);

    /// A PASID below `2^20`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] with the value if it has more than 20 bits.
    pub const fn new(raw: u32) -> Result<Self, Error> {
        if raw >> Self::BITS != 0 {
            return Err(Error::InvalidArgument {
                what: "PASID (20 bits)",
                value: raw as u64,
            });
        }
        Ok(Self(raw))
    }
    /// The raw PASID.
    pub const fn get(self) -> u32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_ids() {
        assert_eq!(SourceId::from_bdf(0, 2, 0).map(SourceId::get), Ok(0x10));
        assert!(SourceId::from_bdf(0, 32, 0).is_err());
        assert!(SourceId::from_bdf(0, 0, 8).is_err());
        assert_eq!(Pasid::new(0xf_ffff).map(Pasid::get), Ok(0xf_ffff));
        assert_eq!(
            Pasid::new(0x10_0000),
            Err(Error::InvalidArgument {
                what: "PASID (20 bits)",
                value: 0x10_0000
            })
        );
    }
}
