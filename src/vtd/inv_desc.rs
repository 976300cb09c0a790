//! Invalidation descriptors: Intel VT-d specification rev. 4.1, §6.5.2.1-§6.5.2.8.
//!
//! Every descriptor is built as 256 bits ([`Descriptor`]). With 128-bit descriptors
//! (`IQA.DW = 0`, and always in legacy mode) only words 0 and 1 are written to the queue; the
//! descriptors defined here leave words 2 and 3 zero (reserved) so the same value serves both
//! widths. The type is bits 3:0 with the extension bits 11:9 (zero for every type here).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::reg_invalidation::check_page_range;
use super::{DomainId, Error, Field, Pasid, SourceId};
use crate::mem::{Iova, PhysAddr};

/// Descriptor type codes (bits 3:0).
pub mod desc_type {
    /// Context-cache invalidate (§6.5.2.1).
    pub const CONTEXT_CACHE: u64 = 0x1;
    /// IOTLB invalidate (§6.5.2.3).
    pub const IOTLB: u64 = 0x2;
    /// Device-TLB invalidate (§6.5.2.5).
    pub const DEVICE_TLB: u64 = 0x3;
    /// Interrupt entry cache invalidate (§6.5.2.7).
    pub const INTERRUPT_ENTRY_CACHE: u64 = 0x4;
    /// Invalidation wait (§6.5.2.8).
    pub const WAIT: u64 = 0x5;
    /// PASID-based IOTLB invalidate (§6.5.2.4).
    pub const PASID_IOTLB: u64 = 0x6;
    /// PASID-cache invalidate (§6.5.2.2).
    pub const PASID_CACHE: u64 = 0x7;
    /// PASID-based device-TLB invalidate (§6.5.2.6).
    pub const PASID_DEVICE_TLB: u64 = 0x8;
}

/// Granularity field of word 0, 5:4, where a descriptor has one.
pub const G: Field = Field::new(5, 4);
/// Domain-ID, word 0, 31:16 (context-cache, IOTLB, PASID-cache, PASID-based IOTLB).
pub const DID: Field = Field::new(31, 16);
/// PASID, word 0, 51:32 (PASID-cache, PASID-based IOTLB and device-TLB).
pub const PASID: Field = Field::new(51, 32);
/// Address mask, word 1, 5:0 (IOTLB, PASID-based IOTLB).
pub const AM: Field = Field::new(5, 0);
/// Invalidation hint, word 1, bit 6 (IOTLB, PASID-based IOTLB).
pub const IH: u64 = 1 << 6;
/// Address, word 1, 63:12.
pub const ADDR: Field = Field::new(63, 12);

/// One invalidation descriptor, 256 bits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Descriptor {
    /// Words 0-3; words 2 and 3 are zero for every descriptor built here.
    pub qw: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<Descriptor>() == 32);

/// Context-cache invalidation granularity (word 0, 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextCacheScope {
    /// 01b: global.
    Global,
    /// 10b: domain-selective.
    Domain(DomainId),
    /// 11b: device-selective; `fm` (0..=3) low bits of `sid` masked.
    Device {
        /// Domain.
        did: DomainId,
        /// Source-ID (word 0, 47:32).
        sid: SourceId,
        /// Function Mask (word 0, 49:48).
        fm: u8,
    },
}

/// IOTLB invalidation granularity (word 0, 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbScope {
    /// 01b: global.
    Global,
    /// 10b: domain-selective.
    Domain(DomainId),
    /// 11b: page-selective within domain: `2^am` pages at `addr`, aligned to `2^(12 + am)`.
    Page {
        /// Domain.
        did: DomainId,
        /// First page.
        addr: Iova,
        /// Address mask (must not exceed `CAP.MAMV`).
        am: u8,
        /// Only leaves changed.
        ih: bool,
    },
}

/// PASID-cache invalidation granularity (word 0, 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidCacheScope {
    /// 00b: every PASID of the domain.
    Domain(DomainId),
    /// 01b: one PASID of the domain.
    Pasid(DomainId, Pasid),
    /// 11b: everything.
    Global,
}

/// PASID-based IOTLB invalidation granularity (word 0, 5:4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidIotlbScope {
    /// 10b: every non-global mapping of the PASID.
    AllInPasid,
    /// 11b: `2^am` pages at `addr` within the PASID.
    Page {
        /// First page.
        addr: Iova,
        /// Address mask.
        am: u8,
        /// Only leaves changed.
        ih: bool,
    },
}

/// Flags of an invalidation wait descriptor (word 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitFlags {
    /// 4, `IF`: raise an invalidation completion event (sets `ICS.IWC`).
    pub interrupt: bool,
    /// 6, `FN`: fence: later descriptors wait until earlier ones complete.
    pub fence: bool,
    /// 7, `PD`: page-request drain (needs `ECAP.PDS`).
    pub page_request_drain: bool,
}

/// The device-TLB address field with the `S` (size) bit: PCIe ATS encodes a `2^size_log2`-byte
/// range as the aligned address with bits `size_log2-2 .. 12` set and `S = 1`.
const fn ats_range(addr: Iova, size_log2: u32) -> Result<(u64, bool), Error> {
    if size_log2 < 12 || size_log2 > 64 {
        return Err(Error::InvalidArgument {
            what: "device-TLB range log2 (12..=64)",
            value: size_log2 as u64,
        });
    }
    if !addr.is_aligned(size_log2) {
        return Err(Error::InvalidArgument {
            what: "device-TLB address not aligned to its range",
            value: addr.get(),
        });
    }
    if size_log2 == 12 {
        return Ok((addr.get(), false));
    }
    let ones = ((1u64 << (size_log2 - 1)) - 1) & !0xfff;
    Ok((addr.get() | ones, true))
}

/// Splits a PF source-id over word 0, 15:12 (`PFSID[3:0]`) and 63:52 (`PFSID[15:4]`).
const fn pfsid_bits(pfsid: SourceId) -> u64 {
    let p = pfsid.get() as u64;
    (p & 0xf) << 12 | (p >> 4) << 52
}

const fn check_mip(mip: u8) -> Result<u64, Error> {
    if mip > 31 {
        return Err(Error::InvalidArgument {
            what: "MIP (0..=31)",
            value: mip as u64,
        });
    }
    Ok(mip as u64)
}

impl Descriptor {
    /// A descriptor from raw words (types this module does not build, e.g. page responses).
    pub const fn from_words(qw: [u64; 4]) -> Self {
        Self { qw }
    }
    const fn two(qw0: u64, qw1: u64) -> Self {
        Self {
            qw: [qw0, qw1, 0, 0],
        }
    }
    /// The type code (bits 3:0 and 11:9 of word 0).
    pub const fn desc_type(&self) -> u64 {
        (self.qw[0] & 0xf) | ((self.qw[0] >> 9) & 0x7) << 4
    }

    /// Context-cache invalidate (§6.5.2.1): word 0 = type 1, `G` 5:4, `DID` 31:16, `SID` 47:32,
    /// `FM` 49:48.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `fm > 3`.
    pub const fn context_cache(scope: ContextCacheScope) -> Result<Self, Error> {
        let (g, did, sid, fm) = match scope {
            ContextCacheScope::Global => (1, 0, 0, 0),
            ContextCacheScope::Domain(d) => (2, d.get(), 0, 0),
            ContextCacheScope::Device { did, sid, fm } => (3, did.get(), sid.get(), fm),
        };
        if fm > 3 {
            return Err(Error::InvalidArgument {
                what: "FM (0..=3)",
                value: fm as u64,
            });
        }
        let qw0 = desc_type::CONTEXT_CACHE
            | G.place(g)
            | DID.place(did as u64)
            | (sid as u64) << 32
            | (fm as u64) << 48;
        Ok(Self::two(qw0, 0))
    }

    /// IOTLB invalidate (§6.5.2.3): word 0 = type 2, `G` 5:4, `DW` 6, `DR` 7, `DID` 31:16;
    /// word 1 = `AM` 5:0, `IH` 6, `ADDR` 63:12.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a misaligned page range.
    pub const fn iotlb(
        scope: IotlbScope,
        drain_reads: bool,
        drain_writes: bool,
    ) -> Result<Self, Error> {
        let (g, did, qw1) = match scope {
            IotlbScope::Global => (1, 0, 0),
            IotlbScope::Domain(d) => (2, d.get(), 0),
            IotlbScope::Page { did, addr, am, ih } => {
                if let Err(e) = check_page_range(addr, am) {
                    return Err(e);
                }
                (
                    3,
                    did.get(),
                    addr.get() | if ih { IH } else { 0 } | am as u64,
                )
            }
        };
        let dw = if drain_writes { 1 << 6 } else { 0 };
        let dr = if drain_reads { 1 << 7 } else { 0 };
        Ok(Self::two(
            desc_type::IOTLB | G.place(g) | dw | dr | DID.place(did as u64),
            qw1,
        ))
    }

    /// Device-TLB invalidate (§6.5.2.5) of a `2^size_log2`-byte range at `addr` (12 = one page):
    /// word 0 = type 3, `PFSID[3:0]` 15:12, `MIP` 20:16, `SID` 47:32, `PFSID[15:4]` 63:52;
    /// word 1 = `S` 0, `ADDR` 63:12.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `mip > 31` or the range is misaligned or out of 12..=64.
    pub const fn device_tlb(
        sid: SourceId,
        pfsid: SourceId,
        mip: u8,
        addr: Iova,
        size_log2: u32,
    ) -> Result<Self, Error> {
        let mip = match check_mip(mip) {
            Ok(m) => m,
            Err(e) => return Err(e),
        };
        let (a, s) = match ats_range(addr, size_log2) {
            Ok(v) => v,
            Err(e) => return Err(e),
        };
        let qw0 = desc_type::DEVICE_TLB | pfsid_bits(pfsid) | mip << 16 | (sid.get() as u64) << 32;
        Ok(Self::two(qw0, a | s as u64))
    }

    /// Interrupt entry cache invalidate (§6.5.2.7): word 0 = type 4, `G` 4 (0 global,
    /// 1 index-selective), `IM` 31:27, `IIDX` 47:32. `None` selects global.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the index mask exceeds 31.
    pub const fn interrupt_entry_cache(selective: Option<(u16, u8)>) -> Result<Self, Error> {
        match selective {
            None => Ok(Self::two(desc_type::INTERRUPT_ENTRY_CACHE, 0)),
            Some((_, im)) if im > 31 => Err(Error::InvalidArgument {
                what: "IM (0..=31)",
                value: im as u64,
            }),
            Some((index, im)) => {
                let qw0 = desc_type::INTERRUPT_ENTRY_CACHE
                    | 1 << 4
                    | (im as u64) << 27
                    | (index as u64) << 32;
                Ok(Self::two(qw0, 0))
            }
        }
    }

    /// Invalidation wait (§6.5.2.8): word 0 = type 5, `IF` 4, `SW` 5, `FN` 6, `PD` 7, status
    /// data 63:32; word 1 = status address 63:2. `status` of `Some((data, address))` sets `SW`:
    /// hardware writes the 32-bit `data` to the 4-byte-aligned `address` when every earlier
    /// descriptor has completed.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the status address is not 4-byte aligned.
    pub const fn wait(flags: WaitFlags, status: Option<(u32, PhysAddr)>) -> Result<Self, Error> {
        let mut qw0 = desc_type::WAIT;
        if flags.interrupt {
            qw0 |= 1 << 4;
        }
        if flags.fence {
            qw0 |= 1 << 6;
        }
        if flags.page_request_drain {
            qw0 |= 1 << 7;
        }
        let mut qw1 = 0;
        if let Some((data, addr)) = status {
            if !addr.is_aligned(2) {
                return Err(Error::InvalidArgument {
                    what: "wait status address (4-byte aligned)",
                    value: addr.get(),
                });
            }
            qw0 |= 1 << 5 | (data as u64) << 32;
            qw1 = addr.get();
        }
        Ok(Self::two(qw0, qw1))
    }

    /// PASID-based IOTLB invalidate (§6.5.2.4): word 0 = type 6, `G` 5:4, `DID` 31:16, `PASID`
    /// 51:32; word 1 = `AM` 5:0, `IH` 6, `ADDR` 63:12.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a misaligned page range.
    pub const fn pasid_iotlb(
        did: DomainId,
        pasid: Pasid,
        scope: PasidIotlbScope,
    ) -> Result<Self, Error> {
        let (g, qw1) = match scope {
            PasidIotlbScope::AllInPasid => (2, 0),
            PasidIotlbScope::Page { addr, am, ih } => {
                if let Err(e) = check_page_range(addr, am) {
                    return Err(e);
                }
                (3, addr.get() | if ih { IH } else { 0 } | am as u64)
            }
        };
        let qw0 = desc_type::PASID_IOTLB
            | G.place(g)
            | DID.place(did.get() as u64)
            | PASID.place(pasid.get() as u64);
        Ok(Self::two(qw0, qw1))
    }

    /// PASID-cache invalidate (§6.5.2.2): word 0 = type 7, `G` 5:4, `DID` 31:16, `PASID` 51:32.
    pub const fn pasid_cache(scope: PasidCacheScope) -> Self {
        let (g, did, pasid) = match scope {
            PasidCacheScope::Domain(d) => (0, d.get(), 0),
            PasidCacheScope::Pasid(d, p) => (1, d.get(), p.get()),
            PasidCacheScope::Global => (3, 0, 0),
        };
        Self::two(
            desc_type::PASID_CACHE | G.place(g) | DID.place(did as u64) | PASID.place(pasid as u64),
            0,
        )
    }

    /// PASID-based device-TLB invalidate (§6.5.2.6): word 0 = type 8, `MIP` 8:4, `PFSID[3:0]`
    /// 15:12, `SID` 31:16, `PASID` 51:32, `PFSID[15:4]` 63:52; word 1 = `G` 0, `S` 11, `ADDR`
    /// 63:12. `global` sets `G`, the PCIe ATS Global Invalidate bit: the range's global
    /// translations are invalidated for every PASID, not only for `pasid`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `mip > 31` or the range is misaligned or out of 12..=64.
    pub const fn pasid_device_tlb(
        sid: SourceId,
        pfsid: SourceId,
        mip: u8,
        pasid: Pasid,
        global: bool,
        addr: Iova,
        size_log2: u32,
    ) -> Result<Self, Error> {
        let mip = match check_mip(mip) {
            Ok(m) => m,
            Err(e) => return Err(e),
        };
        let (a, s) = match ats_range(addr, size_log2) {
            Ok(v) => v,
            Err(e) => return Err(e),
        };
        let qw0 = desc_type::PASID_DEVICE_TLB
            | mip << 4
            | pfsid_bits(pfsid)
            | (sid.get() as u64) << 16
            | PASID.place(pasid.get() as u64);
        let qw1 = a | (s as u64) << 11 | global as u64;
        Ok(Self::two(qw0, qw1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(raw: u16) -> SourceId {
        SourceId::new(raw)
    }

    #[test]
    fn context_cache() {
        // Device: type 1 | G 11b<<4 (0x30) | DID 0x1234<<16 | SID 0x0010<<32 | FM 1<<48
        //       = 0x0001_0010_1234_0031
        let d = Descriptor::context_cache(ContextCacheScope::Device {
            did: DomainId::new(0x1234),
            sid: sid(0x10),
            fm: 1,
        });
        assert_eq!(d.map(|d| d.qw), Ok([0x0001_0010_1234_0031, 0, 0, 0]));
        // Global: 1 | 01b<<4 = 0x11; domain 5: 1 | 10b<<4 | 5<<16 = 0x5_0021.
        assert_eq!(
            Descriptor::context_cache(ContextCacheScope::Global).map(|d| d.qw[0]),
            Ok(0x11)
        );
        assert_eq!(
            Descriptor::context_cache(ContextCacheScope::Domain(DomainId::new(5))).map(|d| d.qw[0]),
            Ok(0x5_0021)
        );
        assert!(Descriptor::context_cache(ContextCacheScope::Device {
            did: DomainId::new(0),
            sid: sid(0),
            fm: 4
        })
        .is_err());
    }

    #[test]
    fn iotlb() {
        // Page: 2 | G 11b<<4 (0x30) | DW 0x40 | DR 0x80 | DID 7<<16 = 0x7_00f2;
        // word 1: 0x20_0000 | IH 0x40 | AM 9 = 0x20_0049
        let scope = IotlbScope::Page {
            did: DomainId::new(7),
            addr: Iova::new(0x20_0000),
            am: 9,
            ih: true,
        };
        assert_eq!(
            Descriptor::iotlb(scope, true, true).map(|d| d.qw),
            Ok([0x7_00f2, 0x20_0049, 0, 0])
        );
        // Global: 2 | 01b<<4 = 0x12; domain 0xffff: 2 | 0x20 | 0xffff<<16 = 0xffff_0022.
        assert_eq!(
            Descriptor::iotlb(IotlbScope::Global, false, false).map(|d| d.qw[0]),
            Ok(0x12)
        );
        assert_eq!(
            Descriptor::iotlb(IotlbScope::Domain(DomainId::new(0xffff)), false, false)
                .map(|d| d.qw[0]),
            Ok(0xffff_0022)
        );
        let bad = IotlbScope::Page {
            did: DomainId::new(7),
            addr: Iova::new(0x10_0000),
            am: 9,
            ih: false,
        };
        assert!(Descriptor::iotlb(bad, false, false).is_err());
    }

    #[test]
    fn device_tlb() {
        // SID 0x0100, PFSID 0x00f8: PFSID[3:0]=8 -> 0x8000, PFSID[15:4]=0x00f -> 0xf<<52;
        // word 0 = 3 | 0x8000 | 0x100<<32 | 0x00f0_0000_0000_0000 = 0x00f0_0100_0000_8003
        // 16 KiB at 0x4000_0000: S=1, bit 12 set (bits 12..=12 = size_log2-2) -> 0x4000_1001
        let d = Descriptor::device_tlb(sid(0x100), sid(0xf8), 0, Iova::new(0x4000_0000), 14);
        assert_eq!(
            d.map(|d| d.qw),
            Ok([0x00f0_0100_0000_8003, 0x4000_1001, 0, 0])
        );
        // One page, MIP 31: 3 | 31<<16 (0x1f_0000) = 0x1f_0003; word 1 = address, S=0.
        let d = Descriptor::device_tlb(sid(0), sid(0), 31, Iova::new(0x9000), 12);
        assert_eq!(d.map(|d| d.qw), Ok([0x1f_0003, 0x9000, 0, 0]));
        // 8 KiB: bit 12 clear, S=1 -> 0x2001. Whole space: bits 62:12 set, S=1.
        assert_eq!(
            Descriptor::device_tlb(sid(0), sid(0), 0, Iova::new(0x2000), 13).map(|d| d.qw[1]),
            Ok(0x2001)
        );
        assert_eq!(
            Descriptor::device_tlb(sid(0), sid(0), 0, Iova::ZERO, 64).map(|d| d.qw[1]),
            Ok(0x7fff_ffff_ffff_f001)
        );
        assert!(Descriptor::device_tlb(sid(0), sid(0), 32, Iova::ZERO, 12).is_err());
        assert!(Descriptor::device_tlb(sid(0), sid(0), 0, Iova::new(0x1000), 13).is_err());
        assert!(Descriptor::device_tlb(sid(0), sid(0), 0, Iova::ZERO, 65).is_err());
    }

    #[test]
    fn wait_and_iec() {
        // SW, data 0xabcd, address 0x1000_0040: 5 | SW 0x20 | 0xabcd<<32 = 0x0000_abcd_0000_0025
        let w = Descriptor::wait(
            WaitFlags::default(),
            Some((0xabcd, PhysAddr::new(0x1000_0040))),
        );
        assert_eq!(
            w.map(|d| d.qw),
            Ok([0x0000_abcd_0000_0025, 0x1000_0040, 0, 0])
        );
        // IF | FN | PD without status: 5 | 0x10 | 0x40 | 0x80 = 0xd5
        let f = WaitFlags {
            interrupt: true,
            fence: true,
            page_request_drain: true,
        };
        assert_eq!(Descriptor::wait(f, None).map(|d| d.qw[0]), Ok(0xd5));
        assert!(Descriptor::wait(f, Some((1, PhysAddr::new(0x1002)))).is_err());
        // IEC selective, index 0x40, IM 3: 4 | 0x10 | 3<<27 (0x1800_0000) | 0x40<<32
        //   = 0x0000_0040_1800_0014
        assert_eq!(
            Descriptor::interrupt_entry_cache(Some((0x40, 3))).map(|d| d.qw[0]),
            Ok(0x0000_0040_1800_0014)
        );
        assert_eq!(
            Descriptor::interrupt_entry_cache(None).map(|d| d.qw[0]),
            Ok(0x4)
        );
        assert!(Descriptor::interrupt_entry_cache(Some((0, 32))).is_err());
    }

    #[test]
    fn pasid_descriptors() {
        let p5 = Pasid::new(5).unwrap();
        // PASID cache, PASID-selective, DID 3, PASID 0x12345:
        // 7 | 01b<<4 (0x10) | 3<<16 | 0x12345<<32 = 0x0001_2345_0003_0017
        let pc = Descriptor::pasid_cache(PasidCacheScope::Pasid(
            DomainId::new(3),
            Pasid::new(0x12345).unwrap(),
        ));
        assert_eq!(pc.qw, [0x0001_2345_0003_0017, 0, 0, 0]);
        // Domain: 7 | 0 | 3<<16 = 0x3_0007; global: 7 | 0x30 = 0x37.
        assert_eq!(
            Descriptor::pasid_cache(PasidCacheScope::Domain(DomainId::new(3))).qw[0],
            0x3_0007
        );
        assert_eq!(Descriptor::pasid_cache(PasidCacheScope::Global).qw[0], 0x37);
        // P_IOTLB page, DID 2, PASID 5, 0x7000, AM 0: 6 | 0x30 | 2<<16 | 5<<32 = 0x5_0002_0036
        let pi = Descriptor::pasid_iotlb(
            DomainId::new(2),
            p5,
            PasidIotlbScope::Page {
                addr: Iova::new(0x7000),
                am: 0,
                ih: false,
            },
        );
        assert_eq!(pi.map(|d| d.qw), Ok([0x5_0002_0036, 0x7000, 0, 0]));
        // All in PASID: 6 | 10b<<4 (0x20) | 2<<16 | 5<<32 = 0x5_0002_0026
        let pa = Descriptor::pasid_iotlb(DomainId::new(2), p5, PasidIotlbScope::AllInPasid);
        assert_eq!(pa.map(|d| d.qw[0]), Ok(0x5_0002_0026));
        // PASID device-TLB: SID 0x0208, PFSID 0x0208 (8 -> 0x8000; 0x020 -> 0x020<<52 =
        // 0x0200_0000_0000_0000), MIP 4 -> 0x40, PASID 9 -> 9<<32, SID<<16 = 0x0208_0000:
        // 8 | 0x40 | 0x8000 | 0x0208_0000 | 0x9_0000_0000 | 0x0200_0000_0000_0000
        //   = 0x0200_0009_0208_8048; word 1 for one page at 0x9000, G=0: 0x9000
        let pd = Descriptor::pasid_device_tlb(
            sid(0x208),
            sid(0x208),
            4,
            Pasid::new(9).unwrap(),
            false,
            Iova::new(0x9000),
            12,
        );
        assert_eq!(pd.map(|d| d.qw), Ok([0x0200_0009_0208_8048, 0x9000, 0, 0]));
        // Global, 8 KiB at 0x2000: S (bit 11) | G (bit 0) | 0x2000 = 0x2801.
        let pg = Descriptor::pasid_device_tlb(sid(0), sid(0), 0, p5, true, Iova::new(0x2000), 13);
        assert_eq!(pg.map(|d| d.qw[1]), Ok(0x2801));
        assert_eq!(pg.map(|d| d.desc_type()), Ok(desc_type::PASID_DEVICE_TLB));
    }
}
