//! PASID structures: Intel VT-d specification rev. 4.1, §9.5 Scalable-Mode PASID Directory Entry
//! and §9.6 Scalable-Mode PASID Table Entry.
//!
//! A PASID is split 19:6 (directory index) and 5:0 (table index): a directory entry points to a
//! 4 KiB PASID table of 64 entries of 512 bits. Entries are published with
//! [`super::live_entry::LiveEntry`], word 0 (with `P`) last.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::context_entry::AddressWidth;
use super::{DomainId, Error, Field, Pasid};
use crate::mem::PhysAddr;

/// PASID-table entries per 4 KiB table.
pub const PASID_TABLE_ENTRIES: usize = 64;

/// Directory and table indices of `pasid` (19:6 and 5:0).
pub const fn pasid_indices(pasid: Pasid) -> (usize, usize) {
    ((pasid.get() >> 6) as usize, (pasid.get() & 0x3f) as usize)
}

/// PASID directory entry (§9.5): `P` (0), `FPD` (1), `SMPTBLPTR` (63:12).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(transparent)]
pub struct PasidDirEntry(pub u64);

const _: () = assert!(core::mem::size_of::<PasidDirEntry>() == 8);

impl PasidDirEntry {
    /// 63:12 PASID table pointer.
    pub const SMPTBLPTR: Field = Field::new(63, 12);

    /// A present entry for the PASID table at `table`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `table` is not 4 KiB aligned.
    pub const fn new(table: PhysAddr, fpd: bool) -> Result<Self, Error> {
        if !table.is_aligned(12) {
            return Err(Error::InvalidArgument {
                what: "PASID table pointer (4 KiB aligned)",
                value: table.get(),
            });
        }
        Ok(Self(table.get() | if fpd { 0b11 } else { 0b01 }))
    }
    /// Whether `P` is set.
    pub const fn present(self) -> bool {
        self.0 & 1 != 0
    }
    /// The PASID table.
    pub const fn table(self) -> PhysAddr {
        PhysAddr::new(self.0 & Self::SMPTBLPTR.mask())
    }
}

/// `PGTT` (8:6): PASID-granular translation type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Pgtt {
    /// 001b: first-stage translation only (needs `ECAP.FLTS`).
    FirstStage = 1,
    /// 010b: second-stage translation only (needs `ECAP.SLTS`).
    SecondStage = 2,
    /// 011b: nested, first stage then second stage (needs `ECAP.NEST`).
    Nested = 3,
    /// 100b: pass-through (needs `ECAP.PT`).
    PassThrough = 4,
}

impl TryFrom<u64> for Pgtt {
    type Error = Error;
    fn try_from(raw: u64) -> Result<Self, Error> {
        match raw {
            1 => Ok(Self::FirstStage),
            2 => Ok(Self::SecondStage),
            3 => Ok(Self::Nested),
            4 => Ok(Self::PassThrough),
            _ => Err(Error::InvalidArgument {
                what: "PGTT",
                value: raw,
            }),
        }
    }
}

/// `FLPM` (131:130): first-stage paging mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum FirstStagePagingMode {
    /// 00b: 4-level paging.
    Level4 = 0,
    /// 01b: 5-level paging (needs `CAP.FL5LP`).
    Level5 = 1,
}

bitflags! {
    /// One-bit controls of a PASID-table entry (mapped onto their words by [`PasidEntry::new`]).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct PasidEntryFlags: u32 {
        /// 1: Fault Processing Disable.
        const FPD = 1 << 0;
        /// 9: Second Stage Access/Dirty Enable (needs `ECAP.SLADS`).
        const SSADE = 1 << 1;
        /// 87: Page-Walk Snoop: walks of the first- and second-stage tables this entry points
        /// at snoop CPU caches (needs `ECAP.SMPWCS`; `ECAP.C` does not cover these walks in
        /// scalable mode).
        const PWSNP = 1 << 2;
        /// 88: Page Snoop: every access through this entry is snooped (enforce snooping).
        const PGSNP = 1 << 3;
        /// 128: Supervisor Request Enable (needs `ECAP.SRS`).
        const SRE = 1 << 4;
        /// 132: Write Protect Enable (first stage, supervisor).
        const WPE = 1 << 5;
        /// 135: Extended Access Flag Enable (needs `ECAP.EAFS`).
        const EAFE = 1 << 6;
    }
}

/// What a PASID-table entry translates through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidTranslation {
    /// First stage only, rooted at `fsptptr`.
    FirstStage {
        /// First-stage table root.
        fsptptr: PhysAddr,
        /// Its paging mode.
        flpm: FirstStagePagingMode,
    },
    /// Second stage only, rooted at `ssptptr`.
    SecondStage {
        /// Second-stage table root.
        ssptptr: PhysAddr,
    },
    /// First stage nested in second stage.
    Nested {
        /// First-stage table root (a guest physical address).
        fsptptr: PhysAddr,
        /// Its paging mode.
        flpm: FirstStagePagingMode,
        /// Second-stage table root.
        ssptptr: PhysAddr,
    },
    /// No translation.
    PassThrough,
}

/// Scalable-mode PASID-table entry (§9.6), 512 bits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PasidEntry {
    /// Words 0-2: `P`, `FPD`, `AW`, `PGTT`, `SSADE`, `SSPTPTR` / `DID`, `PWSNP`, `PGSNP` /
    /// `SRE`, `FLPM`, `WPE`, `EAFE`, `FSPTPTR`.
    pub qw: [u64; 3],
    /// Words 3-7: fields this crate leaves zero (memory type, HPT, ...), reserved.
    pub reserved: [u64; 5],
}

const _: () = assert!(core::mem::size_of::<PasidEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(PasidEntry, reserved) == 24);

impl PasidEntry {
    /// Word 0, 0: Present.
    pub const P: u64 = 1 << 0;
    /// Word 0, 1: Fault Processing Disable.
    pub const FPD: u64 = 1 << 1;
    /// Word 0, 4:2 Address Width of the second stage.
    pub const AW: Field = Field::new(4, 2);
    /// Word 0, 8:6 PASID Granular Translation Type.
    pub const PGTT: Field = Field::new(8, 6);
    /// Word 0, 9: Second Stage Access/Dirty Enable.
    pub const SSADE: u64 = 1 << 9;
    /// Word 0, 63:12 Second Stage Page Table Pointer.
    pub const SSPTPTR: Field = Field::new(63, 12);
    /// Word 1, 15:0 (bits 79:64) Domain Identifier.
    pub const DID: Field = Field::new(15, 0);
    /// Word 1, 23 (bit 87): Page-Walk Snoop.
    pub const PWSNP: u64 = 1 << 23;
    /// Word 1, 24 (bit 88): Page Snoop.
    pub const PGSNP: u64 = 1 << 24;
    /// Word 2, 0 (bit 128): Supervisor Request Enable.
    pub const SRE: u64 = 1 << 0;
    /// Word 2, 3:2 (bits 131:130) First Level Paging Mode.
    pub const FLPM: Field = Field::new(3, 2);
    /// Word 2, 4 (bit 132): Write Protect Enable.
    pub const WPE: u64 = 1 << 4;
    /// Word 2, 7 (bit 135): Extended Access Flag Enable.
    pub const EAFE: u64 = 1 << 7;
    /// Word 2, 63:12 (bits 191:140) First Stage Page Table Pointer.
    pub const FSPTPTR: Field = Field::new(63, 12);

    /// A present entry for domain `did`. `aw` is the second-stage width (for first-stage and
    /// pass-through entries, the unit's largest supported AGAW).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a table pointer is not 4 KiB aligned.
    pub const fn new(
        translation: PasidTranslation,
        did: DomainId,
        aw: AddressWidth,
        flags: PasidEntryFlags,
    ) -> Result<Self, Error> {
        let (pgtt, ss, fs) = match translation {
            PasidTranslation::FirstStage { fsptptr, flpm } => {
                (Pgtt::FirstStage, None, Some((fsptptr, flpm)))
            }
            PasidTranslation::SecondStage { ssptptr } => (Pgtt::SecondStage, Some(ssptptr), None),
            PasidTranslation::Nested {
                fsptptr,
                flpm,
                ssptptr,
            } => (Pgtt::Nested, Some(ssptptr), Some((fsptptr, flpm))),
            PasidTranslation::PassThrough => (Pgtt::PassThrough, None, None),
        };
        let mut w0 = Self::P | Self::AW.place(aw as u64) | Self::PGTT.place(pgtt as u64);
        if let Some(ss) = ss {
            if !ss.is_aligned(12) {
                return Err(Error::InvalidArgument {
                    what: "SSPTPTR (4 KiB aligned)",
                    value: ss.get(),
                });
            }
            w0 |= ss.get();
        }
        let mut w2 = 0;
        if let Some((fs, flpm)) = fs {
            if !fs.is_aligned(12) {
                return Err(Error::InvalidArgument {
                    what: "FSPTPTR (4 KiB aligned)",
                    value: fs.get(),
                });
            }
            w2 |= fs.get() | Self::FLPM.place(flpm as u64);
        }
        let mut w1 = Self::DID.place(did.get() as u64);
        let f = flags;
        if f.contains(PasidEntryFlags::FPD) {
            w0 |= Self::FPD;
        }
        if f.contains(PasidEntryFlags::SSADE) {
            w0 |= Self::SSADE;
        }
        if f.contains(PasidEntryFlags::PWSNP) {
            w1 |= Self::PWSNP;
        }
        if f.contains(PasidEntryFlags::PGSNP) {
            w1 |= Self::PGSNP;
        }
        if f.contains(PasidEntryFlags::SRE) {
            w2 |= Self::SRE;
        }
        if f.contains(PasidEntryFlags::WPE) {
            w2 |= Self::WPE;
        }
        if f.contains(PasidEntryFlags::EAFE) {
            w2 |= Self::EAFE;
        }
        Ok(Self {
            qw: [w0, w1, w2],
            reserved: [0; 5],
        })
    }
    /// Whether `P` is set.
    pub const fn present(&self) -> bool {
        self.qw[0] & Self::P != 0
    }
    /// `PGTT`, decoded.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a reserved encoding.
    pub fn pgtt(&self) -> Result<Pgtt, Error> {
        Pgtt::try_from(Self::PGTT.get(self.qw[0]))
    }
    /// `DID`.
    pub const fn did(&self) -> DomainId {
        DomainId::new(Self::DID.get(self.qw[1]) as u16)
    }
    /// `SSPTPTR`.
    pub const fn ssptptr(&self) -> PhysAddr {
        PhysAddr::new(self.qw[0] & Self::SSPTPTR.mask())
    }
    /// `FSPTPTR`.
    pub const fn fsptptr(&self) -> PhysAddr {
        PhysAddr::new(self.qw[2] & Self::FSPTPTR.mask())
    }
    /// The eight words, word 0 (with `P`) first.
    pub const fn words(&self) -> [u64; 8] {
        let r = self.reserved;
        [
            self.qw[0], self.qw[1], self.qw[2], r[0], r[1], r[2], r[3], r[4],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_entry() {
        // 0x7_6543_2000 | FPD (0x2) | P = 0x7_6543_2003
        let d = PasidDirEntry::new(PhysAddr::new(0x7_6543_2000), true).unwrap();
        assert_eq!(d.0, 0x7_6543_2003);
        assert_eq!(d.table(), PhysAddr::new(0x7_6543_2000));
        assert!(PasidDirEntry::new(PhysAddr::new(0x7_6543_2100), false).is_err());
        assert_eq!(pasid_indices(Pasid::new(0x12345).unwrap()), (0x48d, 0x05));
    }

    #[test]
    fn second_stage_entry() {
        // w0: P | AW 010b<<2 (0x8) | PGTT 010b<<6 (0x80) | SSADE (0x200) | 0x1_0000_0000
        //   = 0x1_0000_0289
        // w1: DID 0x77 | PGSNP 1<<24 = 0x100_0077
        let e = PasidEntry::new(
            PasidTranslation::SecondStage {
                ssptptr: PhysAddr::new(0x1_0000_0000),
            },
            DomainId::new(0x77),
            AddressWidth::Agaw48,
            PasidEntryFlags::SSADE | PasidEntryFlags::PGSNP,
        )
        .unwrap();
        assert_eq!(e.words(), [0x1_0000_0289, 0x100_0077, 0, 0, 0, 0, 0, 0]);
        assert_eq!(e.pgtt(), Ok(Pgtt::SecondStage));
        assert_eq!(e.did(), DomainId::new(0x77));
    }

    #[test]
    fn first_stage_nested_and_pass_through() {
        // First stage, 5-level, SRE + WPE + PWSNP:
        // w0: P | AW 011b<<2 (0xc) | PGTT 001b<<6 (0x40) = 0x4d
        // w1: DID 9 | PWSNP 1<<23 = 0x80_0009
        // w2: 0x2000 | FLPM 01b<<2 (0x4) | SRE (0x1) | WPE (0x10) = 0x2015
        let fs = PasidTranslation::FirstStage {
            fsptptr: PhysAddr::new(0x2000),
            flpm: FirstStagePagingMode::Level5,
        };
        let flags = PasidEntryFlags::SRE | PasidEntryFlags::WPE | PasidEntryFlags::PWSNP;
        let e = PasidEntry::new(fs, DomainId::new(9), AddressWidth::Agaw57, flags).unwrap();
        assert_eq!(e.words()[..3], [0x4d, 0x80_0009, 0x2015]);
        assert_eq!(e.fsptptr(), PhysAddr::new(0x2000));

        // Nested: w0 = P | AW 010b<<2 | PGTT 011b<<6 (0xc0) | 0x5000 = 0x50c9; w2 = 0x3000.
        let n = PasidTranslation::Nested {
            fsptptr: PhysAddr::new(0x3000),
            flpm: FirstStagePagingMode::Level4,
            ssptptr: PhysAddr::new(0x5000),
        };
        let e = PasidEntry::new(
            n,
            DomainId::new(1),
            AddressWidth::Agaw48,
            PasidEntryFlags::empty(),
        )
        .unwrap();
        assert_eq!(e.words()[..3], [0x50c9, 1, 0x3000]);
        assert_eq!(e.ssptptr(), PhysAddr::new(0x5000));

        // Pass-through with FPD: P | FPD | AW 010b<<2 | PGTT 100b<<6 (0x100) = 0x10b.
        let e = PasidEntry::new(
            PasidTranslation::PassThrough,
            DomainId::new(2),
            AddressWidth::Agaw48,
            PasidEntryFlags::FPD,
        )
        .unwrap();
        assert_eq!(e.words()[..3], [0x10b, 2, 0]);
        assert_eq!(e.pgtt(), Ok(Pgtt::PassThrough));

        let bad = PasidTranslation::SecondStage {
            ssptptr: PhysAddr::new(0x10),
        };
        assert!(PasidEntry::new(
            bad,
            DomainId::new(1),
            AddressWidth::Agaw48,
            PasidEntryFlags::empty()
        )
        .is_err());
        assert!(Pgtt::try_from(0).is_err());
    }
}
