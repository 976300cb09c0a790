//! Context entries: Intel VT-d specification rev. 4.1, §9.3 Context Entry (legacy mode, 128
//! bits) and §9.4 Scalable-Mode Context-Entry (256 bits).
//!
//! A legacy context table holds 256 entries of 128 bits (one per devfn); a scalable-mode context
//! table holds 128 entries of 256 bits (one half of the devfn space, see
//! [`super::root_entry::ScalableRootEntry`]). Entries are published with
//! [`super::live_entry::LiveEntry`], word 0 (with `P`) last.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::{DomainId, Error, Field, Pasid};
use crate::mem::PhysAddr;

/// Legacy `TT` (3:2): what the device's requests may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TranslationType {
    /// 00b: untranslated requests translated through the second-stage table; translation
    /// requests and translated requests blocked.
    UntranslatedOnly = 0,
    /// 01b: as 00b, and the device-TLB may be used (ATS; needs `ECAP.DT`).
    DeviceTlb = 1,
    /// 10b: untranslated requests pass through (needs `ECAP.PT`); `AW` must then be the largest
    /// AGAW the unit supports and `SLPTPTR` is ignored.
    PassThrough = 2,
}

impl TryFrom<u64> for TranslationType {
    type Error = Error;
    fn try_from(raw: u64) -> Result<Self, Error> {
        match raw {
            0 => Ok(Self::UntranslatedOnly),
            1 => Ok(Self::DeviceTlb),
            2 => Ok(Self::PassThrough),
            _ => Err(Error::InvalidArgument {
                what: "context-entry TT",
                value: raw,
            }),
        }
    }
}

/// Adjusted guest address width (`AW`), the depth of the second-stage table; the encoding of
/// legacy context entries and PASID-table entries, matching the `CAP.SAGAW` bit positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum AddressWidth {
    /// 001b: 39-bit AGAW, 3-level table.
    Agaw39 = 1,
    /// 010b: 48-bit AGAW, 4-level table.
    Agaw48 = 2,
    /// 011b: 57-bit AGAW, 5-level table.
    Agaw57 = 3,
}

impl AddressWidth {
    /// The width in bits.
    pub const fn bits(self) -> u32 {
        30 + 9 * self as u32
    }
    /// The number of table levels.
    pub const fn levels(self) -> u32 {
        2 + self as u32
    }
}

impl TryFrom<u64> for AddressWidth {
    type Error = Error;
    fn try_from(raw: u64) -> Result<Self, Error> {
        match raw {
            1 => Ok(Self::Agaw39),
            2 => Ok(Self::Agaw48),
            3 => Ok(Self::Agaw57),
            _ => Err(Error::InvalidArgument {
                what: "AW",
                value: raw,
            }),
        }
    }
}

/// Legacy context entry (§9.3).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ContextEntry {
    /// Bits 63:0: `P` (0), `FPD` (1), `TT` (3:2), `SLPTPTR` (63:12).
    pub lo: u64,
    /// Bits 127:64: `AW` (66:64), `DID` (87:72).
    pub hi: u64,
}

const _: () = assert!(core::mem::size_of::<ContextEntry>() == 16);
const _: () = assert!(core::mem::offset_of!(ContextEntry, hi) == 8);

impl ContextEntry {
    /// 0: Present.
    pub const P: u64 = 1 << 0;
    /// 1: Fault Processing Disable.
    pub const FPD: u64 = 1 << 1;
    /// 3:2 Translation Type.
    pub const TT: Field = Field::new(3, 2);
    /// 63:12 Second Stage Page Translation Pointer.
    pub const SLPTPTR: Field = Field::new(63, 12);
    /// 66:64 (word 1, 2:0) Address Width.
    pub const AW: Field = Field::new(2, 0);
    /// 87:72 (word 1, 23:8) Domain Identifier.
    pub const DID: Field = Field::new(23, 8);

    /// A present entry.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `slptptr` is not 4 KiB aligned.
    pub const fn new(
        tt: TranslationType,
        slptptr: PhysAddr,
        aw: AddressWidth,
        did: DomainId,
        fpd: bool,
    ) -> Result<Self, Error> {
        if !slptptr.is_aligned(12) {
            return Err(Error::InvalidArgument {
                what: "SLPTPTR (4 KiB aligned)",
                value: slptptr.get(),
            });
        }
        let fpd = if fpd { Self::FPD } else { 0 };
        Ok(Self {
            lo: Self::P | fpd | Self::TT.place(tt as u64) | slptptr.get(),
            hi: Self::AW.place(aw as u64) | Self::DID.place(did.get() as u64),
        })
    }
    /// Whether `P` is set.
    pub const fn present(&self) -> bool {
        self.lo & Self::P != 0
    }
    /// `DID`.
    pub const fn did(&self) -> DomainId {
        DomainId::new(Self::DID.get(self.hi) as u16)
    }
    /// `TT`, decoded.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for the reserved encoding.
    pub fn translation_type(&self) -> Result<TranslationType, Error> {
        TranslationType::try_from(Self::TT.get(self.lo))
    }
    /// `SLPTPTR`.
    pub const fn slptptr(&self) -> PhysAddr {
        PhysAddr::new(self.lo & Self::SLPTPTR.mask())
    }
    /// The two words, word 0 (with `P`) first.
    pub const fn words(&self) -> [u64; 2] {
        [self.lo, self.hi]
    }
}

/// Scalable-mode context entry (§9.4). Bits 255:128 are reserved.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct ScalableContextEntry {
    /// Bits 63:0: `P` (0), `FPD` (1), `DTE` (2), `PASIDE` (3), `PRE` (4), `PDTS` (11:9),
    /// `PASIDDIRPTR` (63:12).
    pub lo: u64,
    /// Bits 127:64: `RID_PASID` (83:64).
    pub hi: u64,
    /// Bits 255:128: reserved, zero.
    pub reserved: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<ScalableContextEntry>() == 32);
const _: () = assert!(core::mem::offset_of!(ScalableContextEntry, hi) == 8);
const _: () = assert!(core::mem::offset_of!(ScalableContextEntry, reserved) == 16);

/// Options of a scalable-mode context entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScalableContextFlags {
    /// `FPD`: do not record or report faults for this device.
    pub fpd: bool,
    /// `DTE`: device-TLB (ATS) enabled; needs `ECAP.DT`.
    pub dte: bool,
    /// `PASIDE`: requests with PASID are allowed.
    pub paside: bool,
    /// `PRE`: page requests are allowed; needs `ECAP.PRS`.
    pub pre: bool,
}

impl ScalableContextEntry {
    /// 0: Present.
    pub const P: u64 = 1 << 0;
    /// 1: Fault Processing Disable.
    pub const FPD: u64 = 1 << 1;
    /// 2: Device-TLB Enable.
    pub const DTE: u64 = 1 << 2;
    /// 3: PASID Enable.
    pub const PASIDE: u64 = 1 << 3;
    /// 4: Page Request Enable.
    pub const PRE: u64 = 1 << 4;
    /// 11:9 PASID Directory Size: the directory has `2^(PDTS + 7)` entries.
    pub const PDTS: Field = Field::new(11, 9);
    /// 63:12 PASID Directory Pointer.
    pub const PASIDDIRPTR: Field = Field::new(63, 12);
    /// 83:64 (word 1, 19:0) RID_PASID: the PASID used for requests without PASID.
    pub const RID_PASID: Field = Field::new(19, 0);

    /// A present entry whose PASID directory at `pasid_dir` has `2^(pdts + 7)` entries.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `pasid_dir` is not 4 KiB aligned or `pdts > 7`.
    pub const fn new(
        pasid_dir: PhysAddr,
        pdts: u8,
        rid_pasid: Pasid,
        flags: ScalableContextFlags,
    ) -> Result<Self, Error> {
        if !pasid_dir.is_aligned(12) {
            return Err(Error::InvalidArgument {
                what: "PASID directory pointer (4 KiB aligned)",
                value: pasid_dir.get(),
            });
        }
        if pdts > 7 {
            return Err(Error::InvalidArgument {
                what: "PDTS (0..=7)",
                value: pdts as u64,
            });
        }
        let mut lo = Self::P | pasid_dir.get() | Self::PDTS.place(pdts as u64);
        if flags.fpd {
            lo |= Self::FPD;
        }
        if flags.dte {
            lo |= Self::DTE;
        }
        if flags.paside {
            lo |= Self::PASIDE;
        }
        if flags.pre {
            lo |= Self::PRE;
        }
        Ok(Self {
            lo,
            hi: Self::RID_PASID.place(rid_pasid.get() as u64),
            reserved: [0; 2],
        })
    }
    /// The `PDTS` that makes a directory cover every PASID below `2^pasid_bits` (each
    /// directory entry covers 64 PASIDs), or `None` if `pasid_bits > 20`.
    pub const fn pdts_for(pasid_bits: u32) -> Option<u8> {
        if pasid_bits > Pasid::BITS {
            return None;
        }
        // 2^(PDTS+7) directory entries * 64 PASIDs = 2^(PDTS+13) PASIDs.
        Some(pasid_bits.saturating_sub(13) as u8)
    }
    /// Whether `P` is set.
    pub const fn present(&self) -> bool {
        self.lo & Self::P != 0
    }
    /// `PASIDDIRPTR`.
    pub const fn pasid_dir(&self) -> PhysAddr {
        PhysAddr::new(self.lo & Self::PASIDDIRPTR.mask())
    }
    /// The four words, word 0 (with `P`) first.
    pub const fn words(&self) -> [u64; 4] {
        [self.lo, self.hi, self.reserved[0], self.reserved[1]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_entry() {
        // lo: P | TT 01b<<2 (0x4) | SLPTPTR 0x8_7654_3000 = 0x8_7654_3005
        // hi: AW 010b | DID 0x1234 << 8 = 0x12_3402
        let c = ContextEntry::new(
            TranslationType::DeviceTlb,
            PhysAddr::new(0x8_7654_3000),
            AddressWidth::Agaw48,
            DomainId::new(0x1234),
            false,
        )
        .unwrap();
        assert_eq!(c.words(), [0x8_7654_3005, 0x12_3402]);
        assert_eq!(c.did(), DomainId::new(0x1234));
        assert_eq!(c.translation_type(), Ok(TranslationType::DeviceTlb));
        assert_eq!(c.slptptr(), PhysAddr::new(0x8_7654_3000));
        // Pass-through with FPD: P | FPD (0x2) | TT 10b<<2 (0x8) = 0xb; AW 011b, DID 0xffff<<8.
        let pt = ContextEntry::new(
            TranslationType::PassThrough,
            PhysAddr::ZERO,
            AddressWidth::Agaw57,
            DomainId::new(0xffff),
            true,
        )
        .unwrap();
        assert_eq!(pt.words(), [0xb, 0xff_ff03]);
        assert!(ContextEntry::new(
            TranslationType::PassThrough,
            PhysAddr::new(0x10),
            AddressWidth::Agaw39,
            DomainId::new(1),
            false
        )
        .is_err());
        assert!(TranslationType::try_from(3).is_err());
        assert_eq!(AddressWidth::Agaw48.bits(), 48);
        assert_eq!(AddressWidth::Agaw57.levels(), 5);
    }

    #[test]
    fn scalable_entry() {
        // lo: P | DTE (0x4) | PASIDE (0x8) | PDTS 7<<9 (0xe00) | 0x4000_0000 = 0x4000_0e0d
        // hi: RID_PASID 0x5
        let flags = ScalableContextFlags {
            dte: true,
            paside: true,
            ..Default::default()
        };
        let c =
            ScalableContextEntry::new(PhysAddr::new(0x4000_0000), 7, Pasid::new(5).unwrap(), flags)
                .unwrap();
        assert_eq!(c.words(), [0x4000_0e0d, 0x5, 0, 0]);
        assert_eq!(c.pasid_dir(), PhysAddr::new(0x4000_0000));
        assert!(ScalableContextEntry::new(PhysAddr::new(0x1000), 8, Pasid::ZERO, flags).is_err());
        assert!(ScalableContextEntry::new(PhysAddr::new(0x1001), 0, Pasid::ZERO, flags).is_err());
        assert_eq!(ScalableContextEntry::pdts_for(20), Some(7));
        assert_eq!(ScalableContextEntry::pdts_for(8), Some(0));
        assert_eq!(ScalableContextEntry::pdts_for(21), None);
    }
}
