//! The identification registers IDR0, IDR1, IDR3 and IDR5 decoded into typed capabilities.
//!
//! Arm IHI 0070 G.b §6.3.1 (SMMU_IDR0), §6.3.2 (SMMU_IDR1), §6.3.4 (SMMU_IDR3), §6.3.6
//! (SMMU_IDR5). One-bit features are `bitflags` with the spec's names; multi-bit fields are
//! [`Field`]s with `hi:lo` ranges and `const fn` getters, decoded into enums where the spec
//! enumerates the values.

use bitflags::bitflags;

use super::field::Field;
use super::regs;
use crate::mmio::RegisterWindow;

bitflags! {
    /// IDR0 one-bit features (§6.3.1).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr0Flags: u32 {
        /// Stage-2 translation.
        const S2P = 1 << 0;
        /// Stage-1 translation.
        const S1P = 1 << 1;
        /// Coherent access to tables, queues and MSIs (the walker snoops).
        const COHACC = 1 << 4;
        /// Broadcast TLB maintenance.
        const BTM = 1 << 5;
        /// Hypervisor stage-1 contexts (EL2).
        const HYP = 1 << 9;
        /// PCIe ATS.
        const ATS = 1 << 10;
        /// 16-bit ASIDs.
        const ASID16 = 1 << 12;
        /// MSI-based interrupts and CMD_SYNC completion.
        const MSI = 1 << 13;
        /// The unit sends a wake-up event (SEV) for queue activity.
        const SEV = 1 << 14;
        /// PCIe PRI.
        const PRI = 1 << 16;
        /// VMID wildcard matching.
        const VMW = 1 << 17;
        /// 16-bit VMIDs.
        const VMID16 = 1 << 18;
        /// Two-level CD tables.
        const CD2L = 1 << 19;
        /// Virtual ATOS page.
        const VATOS = 1 << 20;
        /// Terminate model: 1 means faulting transactions are always aborted, never RAZ/WI.
        const TERM_MODEL = 1 << 26;
    }
}

/// `IDR0.TTF`, bits 3:2: translation table formats.
pub const IDR0_TTF: Field = Field::new("TTF", 3, 2);
/// `IDR0.HTTU`, bits 7:6: hardware access/dirty flag updates.
pub const IDR0_HTTU: Field = Field::new("HTTU", 7, 6);
/// `IDR0.TTENDIAN`, bits 22:21.
pub const IDR0_TTENDIAN: Field = Field::new("TTENDIAN", 22, 21);
/// `IDR0.STALL_MODEL`, bits 25:24.
pub const IDR0_STALL_MODEL: Field = Field::new("STALL_MODEL", 25, 24);
/// `IDR0.ST_LEVEL`, bits 28:27.
pub const IDR0_ST_LEVEL: Field = Field::new("ST_LEVEL", 28, 27);

/// `IDR0.ST_LEVEL`: which stream table formats exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StLevel {
    /// Linear only.
    Linear,
    /// Linear and two-level.
    TwoLevel,
    /// A reserved encoding, kept raw.
    Reserved(u8),
}

/// `IDR0.STALL_MODEL`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallModel {
    /// Stall and terminate models both supported.
    StallAndTerminate,
    /// Stall not supported.
    TerminateOnly,
    /// Stall forced: STE.S1STALLD must be 0 where stalls apply.
    StallForced,
    /// Reserved encoding.
    Reserved,
}

/// `IDR0.TTENDIAN`: endianness of translation table walks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TtEndian {
    /// Both endiannesses.
    Mixed,
    /// Reserved encoding.
    Reserved,
    /// Little-endian only.
    Little,
    /// Big-endian only.
    Big,
}

/// `IDR0.TTF`: translation table formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttf {
    /// Reserved encoding 0.
    Reserved,
    /// AArch32 (LPAE) only.
    AArch32,
    /// AArch64 only.
    AArch64,
    /// Both.
    Both,
}

/// `IDR0.HTTU`: hardware translation table updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Httu {
    /// None.
    None,
    /// Access flag.
    Access,
    /// Access and dirty state.
    AccessDirty,
    /// Reserved encoding.
    Reserved,
}

/// Decoded `SMMU_IDR0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr0(pub u32);

impl Idr0 {
    /// The one-bit features.
    pub const fn flags(self) -> Idr0Flags {
        Idr0Flags::from_bits_truncate(self.0)
    }
    /// `ST_LEVEL`.
    pub const fn st_level(self) -> StLevel {
        match IDR0_ST_LEVEL.get(self.0 as u64) {
            0 => StLevel::Linear,
            1 => StLevel::TwoLevel,
            other => StLevel::Reserved(other as u8),
        }
    }
    /// `STALL_MODEL`.
    pub const fn stall_model(self) -> StallModel {
        match IDR0_STALL_MODEL.get(self.0 as u64) {
            0 => StallModel::StallAndTerminate,
            1 => StallModel::TerminateOnly,
            2 => StallModel::StallForced,
            _ => StallModel::Reserved,
        }
    }
    /// `TTENDIAN`.
    pub const fn ttendian(self) -> TtEndian {
        match IDR0_TTENDIAN.get(self.0 as u64) {
            0 => TtEndian::Mixed,
            2 => TtEndian::Little,
            3 => TtEndian::Big,
            _ => TtEndian::Reserved,
        }
    }
    /// `TTF`.
    pub const fn ttf(self) -> Ttf {
        match IDR0_TTF.get(self.0 as u64) {
            1 => Ttf::AArch32,
            2 => Ttf::AArch64,
            3 => Ttf::Both,
            _ => Ttf::Reserved,
        }
    }
    /// `HTTU`.
    pub const fn httu(self) -> Httu {
        match IDR0_HTTU.get(self.0 as u64) {
            0 => Httu::None,
            1 => Httu::Access,
            2 => Httu::AccessDirty,
            _ => Httu::Reserved,
        }
    }
}

bitflags! {
    /// IDR1 one-bit features (§6.3.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr1Flags: u32 {
        /// Incoming permission attributes can be overridden (STE.INSTCFG/PRIVCFG).
        const ATTR_PERMS_OVR = 1 << 26;
        /// Incoming memory type attributes can be overridden (STE.MTCFG/SHCFG...).
        const ATTR_TYPES_OVR = 1 << 27;
        /// Queue and table base addresses are relative to an implementation-defined base.
        const REL = 1 << 28;
        /// Queue base registers are fixed by the implementation.
        const QUEUES_PRESET = 1 << 29;
        /// STRTAB_BASE is fixed by the implementation.
        const TABLES_PRESET = 1 << 30;
        /// Enhanced command queues.
        const ECMDQ = 1 << 31;
    }
}

/// `IDR1.SIDSIZE`, bits 5:0: StreamID width.
pub const IDR1_SIDSIZE: Field = Field::new("SIDSIZE", 5, 0);
/// `IDR1.SSIDSIZE`, bits 10:6: SubstreamID width (0: no substreams).
pub const IDR1_SSIDSIZE: Field = Field::new("SSIDSIZE", 10, 6);
/// `IDR1.PRIQS`, bits 15:11: log2 of the largest PRI queue.
pub const IDR1_PRIQS: Field = Field::new("PRIQS", 15, 11);
/// `IDR1.EVENTQS`, bits 20:16: log2 of the largest event queue.
pub const IDR1_EVENTQS: Field = Field::new("EVENTQS", 20, 16);
/// `IDR1.CMDQS`, bits 25:21: log2 of the largest command queue.
pub const IDR1_CMDQS: Field = Field::new("CMDQS", 25, 21);

/// Decoded `SMMU_IDR1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr1(pub u32);

impl Idr1 {
    /// The one-bit features.
    pub const fn flags(self) -> Idr1Flags {
        Idr1Flags::from_bits_truncate(self.0)
    }
    /// `SIDSIZE`.
    pub const fn sidsize(self) -> u32 {
        IDR1_SIDSIZE.get(self.0 as u64) as u32
    }
    /// `SSIDSIZE`.
    pub const fn ssidsize(self) -> u32 {
        IDR1_SSIDSIZE.get(self.0 as u64) as u32
    }
    /// `PRIQS`.
    pub const fn priqs(self) -> u32 {
        IDR1_PRIQS.get(self.0 as u64) as u32
    }
    /// `EVENTQS`.
    pub const fn eventqs(self) -> u32 {
        IDR1_EVENTQS.get(self.0 as u64) as u32
    }
    /// `CMDQS`.
    pub const fn cmdqs(self) -> u32 {
        IDR1_CMDQS.get(self.0 as u64) as u32
    }
}

bitflags! {
    /// IDR3 one-bit features (§6.3.4).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr3Flags: u32 {
        /// Hierarchical attribute disables (CD.HAD0/HAD1).
        const HAD = 1 << 2;
        /// Page-based hardware attributes.
        const PBHA = 1 << 3;
        /// EL0/EL1 execute-never distinction at stage 2.
        const XNX = 1 << 4;
        /// Substream-valid behaviour of PRI responses.
        const PPS = 1 << 5;
        /// Memory partitioning and monitoring.
        const MPAM = 1 << 7;
        /// Stage-2 forced write-back (STE.S2FWB).
        const FWB = 1 << 8;
        /// Small translation tables (T0SZ up to 48).
        const STT = 1 << 9;
        /// Range invalidation (TLBI ... NUM/SCALE).
        const RIL = 1 << 10;
        /// E0PD in CDs.
        const E0PD = 1 << 13;
        /// Page table walks are non-cacheable regardless of attributes.
        const PTWNNC = 1 << 14;
    }
}

/// `IDR3.BBML`, bits 12:11: break-before-make level (0, 1 or 2).
pub const IDR3_BBML: Field = Field::new("BBML", 12, 11);

/// Decoded `SMMU_IDR3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr3(pub u32);

impl Idr3 {
    /// The one-bit features.
    pub const fn flags(self) -> Idr3Flags {
        Idr3Flags::from_bits_truncate(self.0)
    }
    /// `BBML`.
    pub const fn bbml(self) -> u32 {
        IDR3_BBML.get(self.0 as u64) as u32
    }
}

bitflags! {
    /// IDR5 translation granules (§6.3.6).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Idr5Granules: u32 {
        /// 4 KiB granule.
        const GRAN4K = 1 << 4;
        /// 16 KiB granule.
        const GRAN16K = 1 << 5;
        /// 64 KiB granule.
        const GRAN64K = 1 << 6;
    }
}

/// `IDR5.OAS`, bits 2:0: output address size.
pub const IDR5_OAS: Field = Field::new("OAS", 2, 0);
/// `IDR5.VAX`, bits 11:10: virtual address extension (1: 52-bit VAs).
pub const IDR5_VAX: Field = Field::new("VAX", 11, 10);
/// `IDR5.STALL_MAX`, bits 31:16: the most stalled transactions outstanding.
pub const IDR5_STALL_MAX: Field = Field::new("STALL_MAX", 31, 16);

/// Decoded `SMMU_IDR5`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr5(pub u32);

impl Idr5 {
    /// The supported granules.
    pub const fn granules(self) -> Idr5Granules {
        Idr5Granules::from_bits_truncate(self.0)
    }
    /// `OAS` in bits, or `None` for a reserved encoding.
    pub const fn oas_bits(self) -> Option<u32> {
        oas_to_bits(IDR5_OAS.get(self.0 as u64) as u32)
    }
    /// `VAX`.
    pub const fn vax(self) -> u32 {
        IDR5_VAX.get(self.0 as u64) as u32
    }
    /// `STALL_MAX`.
    pub const fn stall_max(self) -> u32 {
        IDR5_STALL_MAX.get(self.0 as u64) as u32
    }
}

/// The address size encoding shared by IDR5.OAS, STE.S2PS and CD.IPS, as a bit count.
pub const fn oas_to_bits(code: u32) -> Option<u32> {
    match code {
        0 => Some(32),
        1 => Some(36),
        2 => Some(40),
        3 => Some(42),
        4 => Some(44),
        5 => Some(48),
        6 => Some(52),
        _ => None,
    }
}

/// The inverse of [`oas_to_bits`].
pub const fn bits_to_oas(bits: u32) -> Option<u32> {
    match bits {
        32 => Some(0),
        36 => Some(1),
        40 => Some(2),
        42 => Some(3),
        44 => Some(4),
        48 => Some(5),
        52 => Some(6),
        _ => None,
    }
}

/// The identification registers of one unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Idr {
    /// IDR0.
    pub idr0: Idr0,
    /// IDR1.
    pub idr1: Idr1,
    /// IDR3.
    pub idr3: Idr3,
    /// IDR5.
    pub idr5: Idr5,
}

impl Idr {
    /// Reads the registers.
    pub fn read<W: RegisterWindow + ?Sized>(regs: &W) -> Self {
        Self {
            idr0: Idr0(regs.read32(regs::IDR0)),
            idr1: Idr1(regs.read32(regs::IDR1)),
            idr3: Idr3(regs.read32(regs::IDR3)),
            idr5: Idr5(regs.read32(regs::IDR5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idr0_decodes_every_field() {
        // ST_LEVEL=1 (1<<27), STALL_MODEL=2 (2<<24), TTENDIAN=2 (2<<21), TTF=2 (2<<2), HTTU=2
        // (2<<6), plus COHACC (1<<4), S1P, S2P, ASID16 (1<<12), VMID16 (1<<18), MSI (1<<13),
        // TERM_MODEL (1<<26): 0x0800_0000|0x0200_0000|0x0040_0000|0x8|0x80|0x10|0x3|0x1000
        // |0x4_0000|0x2000|0x0400_0000 = 0x0e44_309b.
        let v = Idr0(0x0e44_309b);
        assert_eq!(v.st_level(), StLevel::TwoLevel);
        assert_eq!(v.stall_model(), StallModel::StallForced);
        assert_eq!(v.ttendian(), TtEndian::Little);
        assert_eq!(v.ttf(), Ttf::AArch64);
        assert_eq!(v.httu(), Httu::AccessDirty);
        let f = v.flags();
        let want = Idr0Flags::COHACC
            | Idr0Flags::S1P
            | Idr0Flags::S2P
            | Idr0Flags::ASID16
            | Idr0Flags::VMID16
            | Idr0Flags::MSI
            | Idr0Flags::TERM_MODEL;
        assert_eq!(f, want);
    }

    #[test]
    fn idr1_idr3_idr5() {
        // CMDQS=19 (19<<21 = 0x0260_0000), EVENTQS=19 (0x13_0000), PRIQS=0, SSIDSIZE=20
        // (20<<6 = 0x500), SIDSIZE=16 (0x10), ECMDQ (1<<31).
        let i1 = Idr1(0x8273_0510);
        assert_eq!((i1.cmdqs(), i1.eventqs(), i1.priqs()), (19, 19, 0));
        assert_eq!((i1.ssidsize(), i1.sidsize()), (20, 16));
        assert_eq!(i1.flags(), Idr1Flags::ECMDQ);
        // RIL (1<<10) | FWB (1<<8) | BBML=2 (2<<11) | HAD (1<<2) = 0x1504.
        let i3 = Idr3(0x1504);
        assert_eq!(i3.flags(), Idr3Flags::RIL | Idr3Flags::FWB | Idr3Flags::HAD);
        assert_eq!(i3.bbml(), 2);
        // STALL_MAX=0x80 (0x80<<16), VAX=1 (1<<10), GRAN4K|GRAN64K (0x50), OAS=5.
        let i5 = Idr5(0x0080_0455);
        assert_eq!(i5.stall_max(), 0x80);
        assert_eq!(i5.vax(), 1);
        assert_eq!(i5.granules(), Idr5Granules::GRAN4K | Idr5Granules::GRAN64K);
        assert_eq!(i5.oas_bits(), Some(48));
        assert_eq!(Idr5(7).oas_bits(), None);
        for code in 0..7 {
            let bits = oas_to_bits(code).unwrap();
            assert_eq!(bits_to_oas(bits), Some(code));
        }
    }
}
