//! Root entries: Intel VT-d specification rev. 4.1, §9.1 Root Entry (legacy mode) and §9.2
//! Scalable-Mode Root Entry.
//!
//! The root table is one 4 KiB page of 256 entries of 128 bits, indexed by bus number. In legacy
//! mode an entry points to a context table for all 256 device/functions of the bus; in scalable
//! mode the lower half points to the context table for devfn 0-127 and the upper half to the one
//! for devfn 128-255, each half with its own present bit, so each half is published with one
//! 64-bit store.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{Error, Field};
use crate::mem::PhysAddr;

/// Entries in a root table.
pub const ROOT_TABLE_ENTRIES: usize = 256;

/// 63:12 of a root-entry half: the context-table pointer.
pub const CTP: Field = Field::new(63, 12);

const fn pointer(pa: PhysAddr, what: &'static str) -> Result<u64, Error> {
    if !pa.is_aligned(12) {
        return Err(Error::InvalidArgument {
            what,
            value: pa.get(),
        });
    }
    Ok(pa.get() | 1)
}

/// Legacy root entry (§9.1): `P` (0), `CTP` (63:12); bits 127:64 reserved.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RootEntry {
    /// Bits 63:0: `P` and `CTP`.
    pub lo: u64,
    /// Bits 127:64: reserved, zero.
    pub reserved: u64,
}

const _: () = assert!(core::mem::size_of::<RootEntry>() == 16);
const _: () = assert!(core::mem::offset_of!(RootEntry, reserved) == 8);

impl RootEntry {
    /// A present entry pointing at the context table `ctp` (4 KiB aligned).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `ctp` is not 4 KiB aligned.
    pub const fn new(ctp: PhysAddr) -> Result<Self, Error> {
        match pointer(ctp, "context-table pointer (4 KiB aligned)") {
            Ok(lo) => Ok(Self { lo, reserved: 0 }),
            Err(e) => Err(e),
        }
    }
    /// Whether `P` is set.
    pub const fn present(&self) -> bool {
        self.lo & 1 != 0
    }
    /// The context-table pointer.
    pub const fn context_table(&self) -> PhysAddr {
        PhysAddr::new(self.lo & CTP.mask())
    }
    /// The two words, word 0 first.
    pub const fn words(&self) -> [u64; 2] {
        [self.lo, self.reserved]
    }
}

/// Scalable-mode root entry (§9.2): `LP` (0), `LCTP` (63:12) for devfn 0-127; `UP` (64), `UCTP`
/// (127:76) for devfn 128-255.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ScalableRootEntry {
    /// Bits 63:0: `LP`, `LCTP`.
    pub lo: u64,
    /// Bits 127:64: `UP`, `UCTP`.
    pub hi: u64,
}

const _: () = assert!(core::mem::size_of::<ScalableRootEntry>() == 16);
const _: () = assert!(core::mem::offset_of!(ScalableRootEntry, hi) == 8);

impl ScalableRootEntry {
    /// An entry with the given lower and upper context tables (`None`: that half not present).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a pointer is not 4 KiB aligned.
    pub const fn new(lower: Option<PhysAddr>, upper: Option<PhysAddr>) -> Result<Self, Error> {
        let lo = match lower {
            Some(pa) => match pointer(pa, "lower context-table pointer (4 KiB aligned)") {
                Ok(v) => v,
                Err(e) => return Err(e),
            },
            None => 0,
        };
        let hi = match upper {
            Some(pa) => match pointer(pa, "upper context-table pointer (4 KiB aligned)") {
                Ok(v) => v,
                Err(e) => return Err(e),
            },
            None => 0,
        };
        Ok(Self { lo, hi })
    }
    /// The half that covers `devfn`: word index 0 (lower, devfn < 128) or 1 (upper), and the
    /// index of the device's 256-bit entry in that half's context table.
    pub const fn half_for(devfn: u8) -> (usize, usize) {
        ((devfn >> 7) as usize, (devfn & 0x7f) as usize)
    }
    /// The lower context table, if `LP`.
    pub const fn lower(&self) -> Option<PhysAddr> {
        if self.lo & 1 != 0 {
            Some(PhysAddr::new(self.lo & CTP.mask()))
        } else {
            None
        }
    }
    /// The upper context table, if `UP`.
    pub const fn upper(&self) -> Option<PhysAddr> {
        if self.hi & 1 != 0 {
            Some(PhysAddr::new(self.hi & CTP.mask()))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn encodings() {
        // CTP 0x1234_5000 | P = 0x1234_5001; upper word reserved.
        let r = RootEntry::new(PhysAddr::new(0x1234_5000)).unwrap();
        assert_eq!(r.words(), [0x1234_5001, 0]);
        assert_eq!(r.context_table(), PhysAddr::new(0x1234_5000));
        assert_eq!(r.as_bytes()[0], 0x01);
        assert!(RootEntry::new(PhysAddr::new(0x1234_5800)).is_err());

        let s = ScalableRootEntry::new(None, Some(PhysAddr::new(0xabc_d000))).unwrap();
        assert_eq!((s.lo, s.hi), (0, 0xabc_d001));
        assert_eq!(
            (s.lower(), s.upper()),
            (None, Some(PhysAddr::new(0xabc_d000)))
        );
        assert_eq!(ScalableRootEntry::half_for(0x85), (1, 5));
        assert_eq!(ScalableRootEntry::half_for(0x10), (0, 0x10));
        assert!(ScalableRootEntry::new(Some(PhysAddr::new(8)), None).is_err());
    }
}
