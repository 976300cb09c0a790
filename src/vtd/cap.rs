//! Capability Register (`CAP_REG`, offset 0x8): Intel VT-d specification rev. 4.1, §11.4.2.
//!
//! One-bit capabilities are [`CapFlags`]; multi-bit fields are [`Field`]s written `hi:lo` with
//! `const fn` getters on [`Cap`]. Deprecated bits (23, formerly ISOCH) are not decoded.

use bitflags::bitflags;

use super::Field;

bitflags! {
    /// One-bit fields of `CAP_REG`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct CapFlags: u64 {
        /// 3: Advanced Fault Logging.
        const AFL = 1 << 3;
        /// 4: Required Write-Buffer Flushing (software must issue `GCMD.WBF`).
        const RWBF = 1 << 4;
        /// 5: Protected Low-Memory Region.
        const PLMR = 1 << 5;
        /// 6: Protected High-Memory Region.
        const PHMR = 1 << 6;
        /// 7: Caching Mode: not-present and erroneous entries may be cached, so making an entry
        /// present also needs an invalidation.
        const CM = 1 << 7;
        /// 22: Zero Length Read.
        const ZLR = 1 << 22;
        /// 39: Page Selective Invalidation.
        const PSI = 1 << 39;
        /// 54: Write Draining.
        const DWD = 1 << 54;
        /// 55: Read Draining.
        const DRD = 1 << 55;
        /// 56: First-stage 1-GByte Page support.
        const FL1GP = 1 << 56;
        /// 59: Posted Interrupts support.
        const PI = 1 << 59;
        /// 60: First-stage 5-level Paging support.
        const FL5LP = 1 << 60;
        /// 61: Enhanced Command Support.
        const ECMDS = 1 << 61;
        /// 62: Enhanced Set Interrupt Remap Table Pointer Support.
        const ESIRTPS = 1 << 62;
        /// 63: Enhanced Set Root Table Pointer Support.
        const ESRTPS = 1 << 63;
    }
}

bitflags! {
    /// `CAP.SAGAW`: second-stage adjusted guest address widths (page-table depths) supported.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Sagaw: u8 {
        /// Bit 1: 39-bit AGAW, 3-level table.
        const AGAW39 = 1 << 1;
        /// Bit 2: 48-bit AGAW, 4-level table.
        const AGAW48 = 1 << 2;
        /// Bit 3: 57-bit AGAW, 5-level table.
        const AGAW57 = 1 << 3;
    }
}

bitflags! {
    /// `CAP.SLLPS`: second-stage large page sizes supported.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Sllps: u8 {
        /// Bit 0: 21-bit offset (2 MiB pages).
        const SIZE_2M = 1 << 0;
        /// Bit 1: 30-bit offset (1 GiB pages).
        const SIZE_1G = 1 << 1;
    }
}

/// A raw `CAP_REG` value with decoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cap(pub u64);

impl Cap {
    /// 2:0 Number of Domains supported: `2^(4 + 2*ND)` domain ids; 7 is reserved.
    pub const ND: Field = Field::new(2, 0);
    /// 12:8 Supported Adjusted Guest Address Widths.
    pub const SAGAW: Field = Field::new(12, 8);
    /// 21:16 Maximum Guest Address Width, minus one.
    pub const MGAW: Field = Field::new(21, 16);
    /// 33:24 Fault-recording Register Offset, in 16-byte units from the register base.
    pub const FRO: Field = Field::new(33, 24);
    /// 37:34 Second Level Large Page Support.
    pub const SLLPS: Field = Field::new(37, 34);
    /// 47:40 Number of Fault-recording Registers, minus one.
    pub const NFR: Field = Field::new(47, 40);
    /// 53:48 Maximum Address Mask Value for page-selective invalidation.
    pub const MAMV: Field = Field::new(53, 48);

    /// The one-bit capabilities.
    pub const fn flags(self) -> CapFlags {
        CapFlags::from_bits_truncate(self.0)
    }
    /// `ND`, raw.
    pub const fn nd(self) -> u8 {
        Self::ND.get(self.0) as u8
    }
    /// Number of domain ids supported, or `None` for the reserved encoding 7.
    pub const fn domain_count(self) -> Option<u32> {
        match self.nd() {
            nd @ 0..=6 => Some(1 << (4 + 2 * nd as u32)),
            _ => None,
        }
    }
    /// `SAGAW`, decoded (reserved bits dropped).
    pub const fn sagaw(self) -> Sagaw {
        Sagaw::from_bits_truncate(Self::SAGAW.get(self.0) as u8)
    }
    /// `MGAW` raw (the width minus one).
    pub const fn mgaw_raw(self) -> u8 {
        Self::MGAW.get(self.0) as u8
    }
    /// Maximum guest address width in bits (`MGAW + 1`).
    pub const fn mgaw(self) -> u8 {
        self.mgaw_raw() + 1
    }
    /// `FRO` raw.
    pub const fn fro(self) -> u16 {
        Self::FRO.get(self.0) as u16
    }
    /// Byte offset of fault-recording register 0 (`FRO * 16`).
    pub const fn fault_recording_offset(self) -> usize {
        self.fro() as usize * 16
    }
    /// `SLLPS`, decoded (reserved bits dropped).
    pub const fn sllps(self) -> Sllps {
        Sllps::from_bits_truncate(Self::SLLPS.get(self.0) as u8)
    }
    /// `NFR` raw (the count minus one).
    pub const fn nfr(self) -> u8 {
        Self::NFR.get(self.0) as u8
    }
    /// Number of fault-recording registers (`NFR + 1`, 1..=256).
    pub const fn fault_recording_count(self) -> u16 {
        self.nfr() as u16 + 1
    }
    /// `MAMV`: the largest address mask a page-selective invalidation may use.
    pub const fn mamv(self) -> u8 {
        Self::MAMV.get(self.0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's default `CAP_REG`, decoded by hand from §11.4.2:
    ///
    /// ```text
    /// 0x00d2_008c_222f_0606
    /// 63:56 = 0x00       ESRTPS ESIRTPS ECMDS FL5LP PI FL1GP all 0
    /// 55:48 = 0xd2       DRD(55)=1 DWD(54)=1 MAMV(53:48)=0x12=18
    /// 47:40 = 0x00       NFR=0 -> 1 fault-recording register
    /// 39:32 = 0x8c       PSI(39)=1, SLLPS(37:34)=0b0011 (2M, 1G), FRO[33:32]=0
    /// 31:24 = 0x22       FRO[31:24]=0x22 -> FRO=0x22 -> offset 0x220
    /// 23:16 = 0x2f       bit 23=0, ZLR(22)=0, MGAW(21:16)=0x2f=47 -> 48 bits
    /// 15:8  = 0x06       SAGAW(12:8)=0b00110 -> 39-bit and 48-bit
    /// 7:0   = 0x06       CM=PHMR=PLMR=RWBF=AFL=0, ND(2:0)=6 -> 2^16 domains
    /// ```
    #[test]
    fn qemu_default_cap() {
        let cap = Cap(0x00d2_008c_222f_0606);
        assert_eq!(cap.flags(), CapFlags::DRD | CapFlags::DWD | CapFlags::PSI);
        assert_eq!(cap.mamv(), 18);
        assert_eq!(cap.nfr(), 0);
        assert_eq!(cap.fault_recording_count(), 1);
        assert_eq!(cap.sllps(), Sllps::SIZE_2M | Sllps::SIZE_1G);
        assert_eq!(cap.fro(), 0x22);
        assert_eq!(cap.fault_recording_offset(), 0x220);
        assert_eq!(cap.mgaw_raw(), 47);
        assert_eq!(cap.mgaw(), 48);
        assert_eq!(cap.sagaw(), Sagaw::AGAW39 | Sagaw::AGAW48);
        assert_eq!(cap.nd(), 6);
        assert_eq!(cap.domain_count(), Some(65536));
        assert!(!cap.flags().contains(CapFlags::CM));
        assert!(!cap.flags().contains(CapFlags::RWBF));
    }

    #[test]
    fn every_flag_and_reserved_nd() {
        let all = Cap(u64::MAX);
        assert_eq!(all.flags(), CapFlags::all());
        assert_eq!(all.domain_count(), None);
        assert_eq!(all.fault_recording_count(), 256);
        assert_eq!(all.mgaw(), 64);
        assert_eq!(all.fault_recording_offset(), 0x3ff * 16);
        // CM alone: bit 7.
        assert_eq!(Cap(0x80).flags(), CapFlags::CM);
        // FL5LP alone: bit 60; ESRTPS: bit 63.
        assert_eq!(Cap(1 << 60).flags(), CapFlags::FL5LP);
        assert_eq!(Cap(1 << 63).flags(), CapFlags::ESRTPS);
    }
}
