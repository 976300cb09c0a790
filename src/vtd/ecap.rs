//! Extended Capability Register (`ECAP_REG`, offset 0x10): Intel VT-d specification rev. 4.1,
//! §11.4.3.
//!
//! One-bit capabilities are [`EcapFlags`]; multi-bit fields are [`Field`]s with `const fn`
//! getters on [`Ecap`]. Deprecated bits (5, 24, 27, 28, 32) are not decoded.

use bitflags::bitflags;

use super::Field;

bitflags! {
    /// One-bit fields of `ECAP_REG`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct EcapFlags: u64 {
        /// 0: Page-walk Coherency: translation-structure accesses snoop CPU caches.
        const C = 1 << 0;
        /// 1: Queued Invalidation support.
        const QI = 1 << 1;
        /// 2: Device-TLB support.
        const DT = 1 << 2;
        /// 3: Interrupt Remapping support.
        const IR = 1 << 3;
        /// 4: Extended Interrupt Mode (x2APIC).
        const EIM = 1 << 4;
        /// 6: Pass Through.
        const PT = 1 << 6;
        /// 7: Snoop Control: hardware can force snooping for no-snoop requests.
        const SC = 1 << 7;
        /// 25: Memory Type Support.
        const MTS = 1 << 25;
        /// 26: Nested Translation Support.
        const NEST = 1 << 26;
        /// 29: Page Request Support.
        const PRS = 1 << 29;
        /// 30: Execute Request Support.
        const ERS = 1 << 30;
        /// 31: Supervisor Request Support.
        const SRS = 1 << 31;
        /// 33: No Write Flag Support.
        const NWFS = 1 << 33;
        /// 34: Extended Accessed Flag Support.
        const EAFS = 1 << 34;
        /// 40: Process Address Space ID Support.
        const PASID = 1 << 40;
        /// 41: Device-TLB Invalidation Throttle.
        const DIT = 1 << 41;
        /// 42: Page-request Drain Support.
        const PDS = 1 << 42;
        /// 43: Scalable Mode Translation Support.
        const SMTS = 1 << 43;
        /// 44: Virtual Command Support.
        const VCS = 1 << 44;
        /// 45: Second-stage Accessed/Dirty Support.
        const SLADS = 1 << 45;
        /// 46: Second-stage Translation Support.
        const SLTS = 1 << 46;
        /// 47: First-stage Translation Support.
        const FLTS = 1 << 47;
        /// 48: Scalable-Mode Page-walk Coherency Support.
        const SMPWCS = 1 << 48;
        /// 49: RID-PASID Support.
        const RPS = 1 << 49;
        /// 51: Performance Monitoring Support.
        const PMS = 1 << 51;
    }
}

/// A raw `ECAP_REG` value with decoders.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ecap(pub u64);

impl Ecap {
    /// 17:8 IOTLB Register Offset, in 16-byte units from the register base.
    pub const IRO: Field = Field::new(17, 8);
    /// 23:20 Maximum Handle Mask Value (interrupt-entry-cache invalidation).
    pub const MHMV: Field = Field::new(23, 20);
    /// 39:35 PASID Size Supported, minus one.
    pub const PSS: Field = Field::new(39, 35);

    /// The one-bit capabilities.
    pub const fn flags(self) -> EcapFlags {
        EcapFlags::from_bits_truncate(self.0)
    }
    /// `IRO` raw.
    pub const fn iro(self) -> u16 {
        Self::IRO.get(self.0) as u16
    }
    /// Byte offset of the IOTLB registers (`IVA_REG` at `IRO * 16`, `IOTLB_REG` 8 bytes later).
    pub const fn iotlb_register_offset(self) -> usize {
        self.iro() as usize * 16
    }
    /// `MHMV`.
    pub const fn mhmv(self) -> u8 {
        Self::MHMV.get(self.0) as u8
    }
    /// `PSS` raw.
    pub const fn pss(self) -> u8 {
        Self::PSS.get(self.0) as u8
    }
    /// Supported PASID width in bits (`PSS + 1`) if `ECAP.PASID` is set.
    pub const fn pasid_bits(self) -> Option<u8> {
        if self.0 & EcapFlags::PASID.bits() != 0 {
            Some(self.pss() + 1)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A legacy-mode unit (like QEMU's with interrupt remapping), decoded by hand:
    ///
    /// ```text
    /// 0x0000_0000_00f0_0f5e
    /// 7:0   = 0x5e = 0101_1110: QI(1) DT(2) IR(3) EIM(4) PT(6); C(0)=0 SC(7)=0
    /// 17:8  = 0x00f -> IRO = 15 -> IOTLB registers at 0xf0
    /// 23:20 = 0xf   -> MHMV = 15
    /// ```
    #[test]
    fn legacy_unit() {
        let e = Ecap(0x0000_0000_00f0_0f5e);
        assert_eq!(
            e.flags(),
            EcapFlags::QI | EcapFlags::DT | EcapFlags::IR | EcapFlags::EIM | EcapFlags::PT
        );
        assert_eq!(e.iro(), 0xf);
        assert_eq!(e.iotlb_register_offset(), 0xf0);
        assert_eq!(e.mhmv(), 15);
        assert_eq!(e.pasid_bits(), None);
    }

    /// A scalable-mode unit:
    ///
    /// ```text
    /// bits 43 SMTS, 46 SLTS, 47 FLTS, 40 PASID, 7 SC, 1 QI, 0 C
    /// PSS(39:35) = 19 -> 19 << 35 = 0x98_0000_0000 -> 20-bit PASIDs
    /// IRO = 0x10 -> 0x10 << 8 = 0x1000 -> IOTLB registers at 0x100
    /// value = (1<<47)|(1<<46)|(1<<43)|(1<<40)|0x98_0000_0000|0x1000|0x83
    ///       = 0x0000_c800_0000_0000 | 0x0100_0000_0000 | 0x98_0000_0000 | 0x1083
    ///       = 0x0000_c998_0000_1083
    /// ```
    #[test]
    fn scalable_unit() {
        let e = Ecap(0x0000_c998_0000_1083);
        assert_eq!(
            e.flags(),
            EcapFlags::C
                | EcapFlags::QI
                | EcapFlags::SC
                | EcapFlags::PASID
                | EcapFlags::SMTS
                | EcapFlags::SLTS
                | EcapFlags::FLTS
        );
        assert_eq!(e.pss(), 19);
        assert_eq!(e.pasid_bits(), Some(20));
        assert_eq!(e.iotlb_register_offset(), 0x100);
    }

    #[test]
    fn single_bits() {
        assert_eq!(Ecap(1 << 48).flags(), EcapFlags::SMPWCS);
        assert_eq!(Ecap(1 << 45).flags(), EcapFlags::SLADS);
        assert_eq!(Ecap(1 << 26).flags(), EcapFlags::NEST);
        assert_eq!(Ecap(u64::MAX).flags(), EcapFlags::all());
    }
}
