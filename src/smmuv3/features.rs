//! What one unit can do, decided once from its ID registers.
//!
//! Arm IHI 0070 G.b §6.3.1 (IDR0: S1P, S2P, COHACC, HTTU, ATS, HYP, MSI, SEV, CD2L, ST_LEVEL,
//! TTF), §6.3.2 (IDR1: SIDSIZE, SSIDSIZE, CMDQS, EVENTQS), §6.3.4 (IDR3: RIL, FWB, BBML),
//! §6.3.6 (IDR5: OAS, granules). The driver reads the registers through [`Idr`] and keeps only
//! the decisions here, so the rest of the unit never re-decodes a register.

use super::idr::{
    Httu, Idr, Idr0Flags, Idr3Flags, Idr5Granules, StLevel, StallModel, TtEndian, Ttf,
};
use super::platform::DeviceFacts;
use crate::iommu::{Capabilities, Source, Sources};
use crate::mem::WalkerCoherency;

/// The decoded capabilities the driver acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation (`IDR0.S1P`).
    pub s1p: bool,
    /// Stage-2 translation (`IDR0.S2P`).
    pub s2p: bool,
    /// Coherent table walks, queue and MSI accesses (`IDR0.COHACC`).
    pub cohacc: bool,
    /// Stage-2 forced write-back (`IDR3.FWB`).
    pub fwb: bool,
    /// Range invalidation (`IDR3.RIL`).
    pub ril: bool,
    /// Hardware dirty state (`IDR0.HTTU` = 2).
    pub dirty: bool,
    /// ATS (`IDR0.ATS`).
    pub ats: bool,
    /// EL2 stage-1 contexts (`IDR0.HYP`): `TLBI_EL2_ALL` at reset.
    pub hyp: bool,
    /// MSI completion of CMD_SYNC (`IDR0.MSI`).
    pub msi: bool,
    /// SEV on CMD_SYNC (`IDR0.SEV`).
    pub sev: bool,
    /// Two-level CD tables (`IDR0.CD2L`).
    pub cd2l: bool,
    /// Two-level stream tables (`IDR0.ST_LEVEL` = 1).
    pub two_level_strtab: bool,
    /// AArch64 translation tables (`IDR0.TTF` includes AArch64).
    pub aarch64_tables: bool,
    /// Little-endian table walks (`IDR0.TTENDIAN` mixed or little-endian): the engine writes
    /// little-endian tables and the driver sets `STE.S2ENDI` / `CD.ENDI` = 0.
    pub little_endian_tables: bool,
    /// Stage-1 faults must stall (`IDR0.STALL_MODEL` = 2): CD.S must be 1, and this driver
    /// does not resume stalled transactions, so it builds no stage-1 context on such a unit.
    pub stall_forced: bool,
    /// Block-to-table replacement without break-before-make (`IDR3.BBML` = 2).
    pub bbml2: bool,
    /// StreamID bits (`IDR1.SIDSIZE`).
    pub sid_bits: u32,
    /// SubstreamID bits (`IDR1.SSIDSIZE`).
    pub ssid_bits: u32,
    /// Largest command queue, log2 entries (`IDR1.CMDQS`).
    pub cmdq_max_log2: u32,
    /// Largest event queue, log2 entries (`IDR1.EVENTQS`).
    pub eventq_max_log2: u32,
    /// Output address size in bits (`IDR5.OAS`; 48 for a reserved encoding).
    pub oas: u32,
    /// The granule domains use: 4 KiB when `IDR5.GRAN4K`, else 16 KiB, else 64 KiB.
    pub granule_log2: u32,
}

impl Features {
    /// Decides from the ID registers.
    pub fn from_idr(idr: &Idr) -> Self {
        let f0 = idr.idr0.flags();
        let f3 = idr.idr3.flags();
        let gran = idr.idr5.granules();
        let granule_log2 = if gran.contains(Idr5Granules::GRAN4K) {
            12
        } else if gran.contains(Idr5Granules::GRAN16K) {
            14
        } else {
            16
        };
        Self {
            s1p: f0.contains(Idr0Flags::S1P),
            s2p: f0.contains(Idr0Flags::S2P),
            cohacc: f0.contains(Idr0Flags::COHACC),
            fwb: f3.contains(Idr3Flags::FWB),
            ril: f3.contains(Idr3Flags::RIL),
            dirty: idr.idr0.httu() == Httu::AccessDirty,
            ats: f0.contains(Idr0Flags::ATS),
            hyp: f0.contains(Idr0Flags::HYP),
            msi: f0.contains(Idr0Flags::MSI),
            sev: f0.contains(Idr0Flags::SEV),
            cd2l: f0.contains(Idr0Flags::CD2L),
            two_level_strtab: idr.idr0.st_level() == StLevel::TwoLevel,
            aarch64_tables: matches!(idr.idr0.ttf(), Ttf::AArch64 | Ttf::Both),
            little_endian_tables: matches!(idr.idr0.ttendian(), TtEndian::Mixed | TtEndian::Little),
            stall_forced: idr.idr0.stall_model() == StallModel::StallForced,
            bbml2: idr.idr3.bbml() == 2,
            sid_bits: idr.idr1.sidsize().min(32),
            ssid_bits: idr.idr1.ssidsize().min(20),
            cmdq_max_log2: idr.idr1.cmdqs(),
            eventq_max_log2: idr.idr1.eventqs(),
            oas: idr.idr5.oas_bits().unwrap_or(48),
            granule_log2,
        }
    }

    /// Whether the driver builds stage-1 contexts here (`IDR0.S1P`, and faults need not stall).
    pub const fn stage1_usable(&self) -> bool {
        self.s1p && !self.stall_forced
    }

    /// Whether table and queue writes need cleaning to memory (`IDR0.COHACC = 0`).
    pub const fn coherency(&self) -> WalkerCoherency {
        if self.cohacc {
            WalkerCoherency::Coherent
        } else {
            WalkerCoherency::NonCoherent
        }
    }

    /// Largest input size of a stage-2 domain: the IPA may not exceed the output size, nor 48
    /// bits (52 only with the 64 KiB granule).
    pub fn s2_ias(&self) -> u32 {
        let max = if self.granule_log2 == 16 { 52 } else { 48 };
        self.oas.min(max)
    }

    /// Input size of a stage-1 domain (48-bit VAs; this driver does not use `IDR5.VAX`).
    pub const fn s1_ias(&self) -> u32 {
        48
    }

    /// Page sizes a domain may use: the granule and the block sizes above it.
    pub const fn page_sizes(&self) -> u64 {
        let g = self.granule_log2;
        let bits = g - 3;
        let mut sizes = 1u64 << g | 1u64 << (g + bits);
        if g == 12 {
            sizes |= 1 << (g + 2 * bits);
        }
        sizes
    }

    /// What the unit reports through [`crate::iommu::Iommu::capabilities`] for devices of
    /// which the platform declared `facts`; `pasid_bits` is the CD table size the unit was
    /// configured with.
    ///
    /// Snooping is enforced only on the platform's word (`CANWBS`): no register can say that a
    /// PCIe No-Snoop transaction stays coherent. `IDR3.FWB` is not enough (it forces
    /// write-back over stage-1 attributes, after the root complex may have let a No-Snoop
    /// transaction bypass the caches), nor is `IDR0.COHACC` (the SMMU's own accesses only).
    pub fn capabilities(&self, pasid_bits: u32, facts: &DeviceFacts) -> Capabilities {
        let stage = if self.s2p { "IDR0.S2P" } else { "IDR0.S1P" };
        Capabilities {
            ias: if self.s2p {
                self.s2_ias()
            } else {
                self.s1_ias()
            },
            oas: self.oas,
            page_sizes: self.page_sizes(),
            pasid_bits: if self.stage1_usable() { pasid_bits } else { 0 },
            enforce_snoop: facts.canwbs,
            dirty_tracking: self.dirty,
            nesting: self.stage1_usable() && self.s2p,
            coherent_walk: self.cohacc,
            sources: Sources {
                ias: Source::Register(if self.s2p { "IDR5.OAS" } else { "IDR0.S1P" }),
                oas: Source::Register("IDR5.OAS"),
                page_sizes: Source::Register("IDR5.GRAN4K/16K/64K"),
                pasid_bits: Source::Register(stage),
                enforce_snoop: facts.source,
                dirty_tracking: Source::Register("IDR0.HTTU"),
                nesting: Source::Register("IDR0.S1P + S2P"),
                coherent_walk: Source::Register("IDR0.COHACC"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::idr::{Idr0, Idr1, Idr3, Idr5};

    #[test]
    fn decisions() {
        // S1P | S2P | TTF AArch64 (2 << 2) | COHACC (1 << 4) | HTTU 2 (2 << 6) | ST_LEVEL 1.
        let idr = Idr {
            idr0: Idr0(0x3 | 0x8 | 0x10 | 0x80 | 1 << 27),
            idr1: Idr1(16 | 8 << 6 | 8 << 16 | 8 << 21),
            idr3: Idr3(1 << 8 | 1 << 10),
            idr5: Idr5(0x70 | 4),
        };
        let f = Features::from_idr(&idr);
        assert!(f.s1p && f.s2p && f.cohacc && f.fwb && f.ril && f.dirty);
        assert!(f.two_level_strtab && f.aarch64_tables);
        assert_eq!(
            (f.sid_bits, f.ssid_bits, f.oas, f.granule_log2),
            (16, 8, 44, 12)
        );
        assert_eq!(f.s2_ias(), 44);
        assert_eq!(f.page_sizes(), 1 << 12 | 1 << 21 | 1 << 30);
        let caps = f.capabilities(8, &DeviceFacts::UNDECLARED);
        assert!(caps.nesting && caps.coherent_walk);
        assert_eq!(caps.sources.coherent_walk, Source::Register("IDR0.COHACC"));
        let no_coh = Features { cohacc: false, ..f };
        assert_eq!(no_coh.coherency(), WalkerCoherency::NonCoherent);
    }

    #[test]
    fn snooping_is_enforced_on_the_platform_declaration_only() {
        // S1P | S2P | TTF AArch64 | COHACC, and IDR3.FWB: everything a register can say.
        let idr = Idr {
            idr0: Idr0(0x3 | 0x8 | 0x10),
            idr1: Idr1(16 | 8 << 16 | 8 << 21),
            idr3: Idr3(1 << 8),
            idr5: Idr5(0x70 | 5),
        };
        let f = Features::from_idr(&idr);
        assert!(f.fwb && f.cohacc && f.s2p);
        let caps = f.capabilities(0, &DeviceFacts::UNDECLARED);
        assert!(!caps.enforce_snoop);
        assert_eq!(caps.sources.enforce_snoop, DeviceFacts::UNDECLARED.source);
        let canwbs = DeviceFacts {
            canwbs: true,
            coherent_dma: None,
            source: Source::Firmware("IORT root complex CANWBS"),
        };
        // Declared: enforced whatever FWB and COHACC say, and the report names the table.
        for g in [
            f,
            Features {
                fwb: false,
                cohacc: false,
                ..f
            },
        ] {
            let caps = g.capabilities(0, &canwbs);
            assert!(caps.enforce_snoop);
            assert_eq!(caps.sources.enforce_snoop, canwbs.source);
        }
    }
}
