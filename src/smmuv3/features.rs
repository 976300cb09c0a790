//! What one unit can do, decided once from its ID registers.
//!
//! Arm IHI 0070 G.b §6.3.1 (IDR0: S1P, S2P, COHACC, HTTU, ATS, HYP, MSI, SEV, CD2L, ST_LEVEL,
//! TTF), §6.3.2 (IDR1: SIDSIZE, SSIDSIZE, CMDQS, EVENTQS), §6.3.4 (IDR3: RIL, FWB, BBML),
//! §6.3.6 (IDR5: OAS, granules). The driver reads the registers through [`Idr`] and keeps only
//! the decisions here, so the rest of the unit never re-decodes a register.

use super::idr::{
    Httu, Idr, Idr0Flags, Idr1Flags, Idr3Flags, Idr5Granules, StLevel, StallModel, TtEndian, Ttf,
};
use super::platform::DeviceFacts;
use super::SmmuError;

/// Where [`Capabilities::dirty_tracking`]'s `false` comes from on a unit with `IDR0.HTTU` = 2
/// whose table walks are not coherent (`IDR0.COHACC` = 0, or declared so): the unit's dirty
/// updates go to memory while the CPU may read a stale clean entry from its cache, and a
/// read-and-clear would lose pages the device wrote. Linux requires both as well
/// (`arm_smmu_dbm_capable`: FEAT_HD and FEAT_COHERENCY).
pub const DIRTY_WITHOUT_COHERENT_WALK: &str =
    "IDR0.HTTU = 2 without coherent table walks (IDR0.COHACC = 0 or declared so): dirty state not offered";
use crate::iommu::{Capabilities, Source, Sources};
use crate::mem::WalkerCoherency;

/// The decoded capabilities the driver acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Stage-1 translation (`IDR0.S1P`).
    pub s1p: bool,
    /// Stage-2 translation (`IDR0.S2P`).
    pub s2p: bool,
    /// Coherent table walks, queue and MSI accesses: `IDR0.COHACC`, unless the embedder
    /// declared otherwise ([`SmmuConfig::coherent_access`](super::SmmuConfig::coherent_access),
    /// applied by [`with_coherent_access`](Self::with_coherent_access)). Every user of the
    /// unit's coherency (CR1, cleaning of table and queue writes, MSI completion, the default
    /// DMA coherency of devices) reads this value.
    pub cohacc: bool,
    /// Where [`cohacc`](Self::cohacc) comes from: `IDR0.COHACC` or the declaration.
    pub cohacc_source: Source,
    /// Stage-2 forced write-back (`IDR3.FWB`).
    pub fwb: bool,
    /// Range invalidation (`IDR3.RIL`).
    pub ril: bool,
    /// Hardware dirty state (`IDR0.HTTU` = 2); offered only with coherent walks
    /// ([`dirty_usable`](Self::dirty_usable)).
    pub dirty: bool,
    /// ATS (`IDR0.ATS`).
    pub ats: bool,
    /// 16-bit ASIDs (`IDR0.ASID16`); else 8.
    pub asid16: bool,
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
    /// Stage-1 faults may be made to stall or not, stream by stream (`IDR0.STALL_MODEL` = 0):
    /// `STE.S1STALLD` exists and `CD.S` may be set for a device declared able to stall.
    pub stall: bool,
    /// PCIe PRI (`IDR0.PRI`): the PRI queue and `CMD_PRI_RESP`.
    pub pri: bool,
    /// Largest PRI queue, log2 entries (`IDR1.PRIQS`).
    pub priq_max_log2: u32,
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
    /// Output address size in bits as `IDR5.OAS` reports it (48 for an encoding this driver
    /// does not know, such as 56 bits, which needs 128-bit descriptors). What a domain can
    /// output also depends on its granule: [`oas_for`](Self::oas_for).
    pub oas: u32,
    /// The granules the unit walks (`IDR5.GRAN4K`, `GRAN16K`, `GRAN64K`).
    pub granules: Idr5Granules,
    /// The default granule: 4 KiB when `IDR5.GRAN4K`, else 16 KiB, else 64 KiB.
    pub granule_log2: u32,
    /// Broadcast TLB maintenance (`IDR0.BTM`): `CR2.PTM` exists.
    pub btm: bool,
    /// `IDR1.TABLES_PRESET`, `QUEUES_PRESET` and `REL`, as set: tables or queues this driver
    /// cannot place. Such a unit is refused.
    pub presets: Idr1Flags,
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
            cohacc_source: Source::Register("IDR0.COHACC"),
            fwb: f3.contains(Idr3Flags::FWB),
            ril: f3.contains(Idr3Flags::RIL),
            dirty: idr.idr0.httu() == Httu::AccessDirty,
            ats: f0.contains(Idr0Flags::ATS),
            asid16: f0.contains(Idr0Flags::ASID16),
            hyp: f0.contains(Idr0Flags::HYP),
            msi: f0.contains(Idr0Flags::MSI),
            sev: f0.contains(Idr0Flags::SEV),
            cd2l: f0.contains(Idr0Flags::CD2L),
            two_level_strtab: idr.idr0.st_level() == StLevel::TwoLevel,
            aarch64_tables: matches!(idr.idr0.ttf(), Ttf::AArch64 | Ttf::Both),
            little_endian_tables: matches!(idr.idr0.ttendian(), TtEndian::Mixed | TtEndian::Little),
            stall_forced: idr.idr0.stall_model() == StallModel::StallForced,
            stall: idr.idr0.stall_model() == StallModel::StallAndTerminate,
            pri: f0.contains(Idr0Flags::PRI),
            priq_max_log2: idr.idr1.priqs().min(19),
            bbml2: idr.idr3.bbml() == 2,
            sid_bits: idr.idr1.sidsize().min(32),
            ssid_bits: idr.idr1.ssidsize().min(20),
            cmdq_max_log2: idr.idr1.cmdqs(),
            eventq_max_log2: idr.idr1.eventqs(),
            oas: idr.idr5.oas_bits().unwrap_or(48),
            granules: gran,
            granule_log2,
            btm: f0.contains(Idr0Flags::BTM),
            presets: idr.idr1.flags()
                & (Idr1Flags::TABLES_PRESET | Idr1Flags::QUEUES_PRESET | Idr1Flags::REL),
        }
    }

    /// The features with the SMMU's own access coherency as declared (`Some((coherent,
    /// source))`: IORT `COHACC Override`, device tree `dma-coherent` on the SMMU node), which
    /// wins over `IDR0.COHACC` either way; unchanged for `None`.
    #[must_use]
    pub const fn with_coherent_access(self, declared: Option<(bool, Source)>) -> Self {
        match declared {
            Some((cohacc, cohacc_source)) => Self {
                cohacc,
                cohacc_source,
                ..self
            },
            None => self,
        }
    }

    /// Whether the unit walks tables of the `granule_log2` granule.
    pub const fn has_granule(&self, granule_log2: u32) -> bool {
        let bit = match granule_log2 {
            12 => Idr5Granules::GRAN4K,
            14 => Idr5Granules::GRAN16K,
            16 => Idr5Granules::GRAN64K,
            _ => return false,
        };
        self.granules.contains(bit)
    }

    /// Output size of a domain of the `granule_log2` granule: `IDR5.OAS`, but at most 48 bits
    /// with the 4 KiB and 16 KiB granules and 52 with 64 KiB (§3.4; 52-bit output with the
    /// smaller granules needs the LPA2 descriptors of `IDR5.DS`, which this driver does not
    /// write).
    pub fn oas_for(&self, granule_log2: u32) -> u32 {
        let max = if granule_log2 == 16 { 52 } else { 48 };
        self.oas.min(max)
    }

    /// Whether domains may track dirty state: hardware dirty updates (`IDR0.HTTU` = 2) and
    /// coherent table walks (the effective `COHACC`; see [`DIRTY_WITHOUT_COHERENT_WALK`]).
    pub const fn dirty_usable(&self) -> bool {
        self.dirty && self.cohacc
    }

    /// Whether the driver builds stage-1 contexts here (`IDR0.S1P`, and faults need not stall).
    pub const fn stage1_usable(&self) -> bool {
        self.s1p && !self.stall_forced
    }

    /// Whether table and queue writes need cleaning to memory (effective `COHACC` = 0).
    pub const fn coherency(&self) -> WalkerCoherency {
        if self.cohacc {
            WalkerCoherency::Coherent
        } else {
            WalkerCoherency::NonCoherent
        }
    }

    /// Largest input size of a stage-2 domain of the `granule_log2` granule: the IPA may not
    /// exceed the output size, nor 48 bits (52 only with the 64 KiB granule).
    pub fn s2_ias(&self, granule_log2: u32) -> u32 {
        self.oas_for(granule_log2)
    }

    /// Input size of a stage-1 domain (48-bit VAs; this driver does not use `IDR5.VAX`).
    pub const fn s1_ias(&self) -> u32 {
        48
    }

    /// Page sizes a domain of the `granule_log2` granule may use: the granule and the block
    /// sizes above it (2 MiB and 1 GiB with 4 KiB; 32 MiB with 16 KiB; 512 MiB with 64 KiB).
    ///
    /// # Errors
    ///
    /// [`SmmuError::FieldOutOfRange`] (`value` the argument) for any other granule: VMSAv8-64
    /// has only these three (before, another one computed shifts that overflowed, a panic in
    /// debug builds).
    pub const fn page_sizes(granule_log2: u32) -> Result<u64, SmmuError> {
        match granule_log2 {
            12 => Ok(1 << 12 | 1 << 21 | 1 << 30),
            14 => Ok(1 << 14 | 1 << 25),
            16 => Ok(1 << 16 | 1 << 29),
            g => Err(SmmuError::FieldOutOfRange {
                field: "granule_log2 (12, 14 or 16)",
                value: g as u64,
            }),
        }
    }

    /// What the unit reports through [`crate::iommu::Iommu::capabilities`] for devices of
    /// which the platform declared `facts`; `pasid_bits` is the CD table size the unit was
    /// configured with, `granule` the granule its domains use and where that choice comes
    /// from.
    ///
    /// Snooping is enforced only on the platform's word (`CANWBS`): no register can say that a
    /// PCIe No-Snoop transaction stays coherent. `IDR3.FWB` is not enough (it forces
    /// write-back over stage-1 attributes, after the root complex may have let a No-Snoop
    /// transaction bypass the caches), nor is `IDR0.COHACC` (the SMMU's own accesses only).
    pub fn capabilities(
        &self,
        pasid_bits: u32,
        granule: (u32, Source),
        facts: &DeviceFacts,
    ) -> Capabilities {
        let g = granule.0;
        let clamped = self.oas_for(g) < self.oas;
        let oas_source = if clamped {
            Source::Register("IDR5.OAS clamped by the granule (4K/16K without LPA2: 48)")
        } else {
            Source::Register("IDR5.OAS")
        };
        Capabilities {
            ias: if self.s2p {
                self.s2_ias(g)
            } else {
                self.s1_ias()
            },
            oas: self.oas_for(g),
            // No page size for a granule the architecture lacks (the unit's own is checked).
            page_sizes: Self::page_sizes(g).unwrap_or_default(),
            pasid_bits: if self.stage1_usable() { pasid_bits } else { 0 },
            enforce_snoop: facts.canwbs,
            dirty_tracking: self.dirty_usable(),
            nesting: self.stage1_usable() && self.s2p,
            coherent_walk: self.cohacc,
            coherent_dma: facts.coherent_dma.unwrap_or(self.cohacc),
            // Stage 1 honours the incoming privilege and its AP[1] makes pages privileged-only.
            supervisor: self.stage1_usable(),
            sources: Sources {
                ias: if self.s2p {
                    oas_source
                } else {
                    Source::Register("IDR0.S1P")
                },
                oas: oas_source,
                page_sizes: granule.1,
                pasid_bits: if self.stage1_usable() {
                    Source::Embedder("SmmuConfig::ssid_bits, bounded by IDR1.SSIDSIZE")
                } else {
                    Source::Register("IDR0.S1P, STALL_MODEL: stage 1 unusable")
                },
                enforce_snoop: facts.source,
                dirty_tracking: if self.dirty && !self.cohacc {
                    Source::Register(DIRTY_WITHOUT_COHERENT_WALK)
                } else {
                    Source::Register("IDR0.HTTU")
                },
                nesting: Source::Register("IDR0.S1P + S2P"),
                coherent_walk: self.cohacc_source,
                // Undeclared devices follow the SMMU's coherency: name its declaration if any.
                coherent_dma: match (facts.coherent_dma, self.cohacc_source) {
                    (None, declared @ (Source::Firmware(_) | Source::Embedder(_))) => declared,
                    _ => facts.coherent_dma_source(),
                },
                supervisor: Source::Register("IDR0.S1P"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_size_is_clamped_by_granule() {
        // IDR5: OAS 52 (0b110), 4K | 16K | 64K.
        let idr = Idr {
            idr0: Idr0(0x3 | 0x8 | 0x10),
            idr1: Idr1(16 | 8 << 16 | 8 << 21),
            idr3: Idr3(0),
            idr5: Idr5(0x70 | 6),
        };
        let f = Features::from_idr(&idr);
        assert_eq!(f.oas, 52);
        assert_eq!((f.oas_for(12), f.oas_for(14), f.oas_for(16)), (48, 48, 52));
        assert_eq!((f.s2_ias(12), f.s2_ias(16)), (48, 52));
        let caps = f.capabilities(0, (16, Source::Embedder("g")), &DeviceFacts::UNDECLARED);
        assert_eq!(
            (caps.ias, caps.oas, caps.page_sizes),
            (52, 52, 1 << 16 | 1 << 29)
        );
        assert_eq!(caps.sources.oas, Source::Register("IDR5.OAS"));
        // 4 KiB: 48 bits, and the report says the granule clamped IDR5.OAS.
        let caps = f.capabilities(8, (12, Source::Embedder("g")), &DeviceFacts::UNDECLARED);
        let clamped = Source::Register("IDR5.OAS clamped by the granule (4K/16K without LPA2: 48)");
        assert_eq!((caps.oas, caps.sources.oas), (48, clamped));
        assert_eq!(caps.sources.ias, clamped);
        // The PASID width is the embedder's CD table size, not a stage bit.
        assert_eq!(
            (caps.pasid_bits, caps.sources.pasid_bits),
            (
                8,
                Source::Embedder("SmmuConfig::ssid_bits, bounded by IDR1.SSIDSIZE")
            )
        );
        let s2_only = Features { s1p: false, ..f };
        let caps = s2_only.capabilities(8, (16, Source::Embedder("g")), &DeviceFacts::UNDECLARED);
        assert_eq!(caps.pasid_bits, 0);
        assert_eq!(
            caps.sources.pasid_bits,
            Source::Register("IDR0.S1P, STALL_MODEL: stage 1 unusable")
        );
        assert!(f.has_granule(14) && !f.has_granule(13));
        // Presets and BTM are decoded.
        let p = Features::from_idr(&Idr {
            idr0: Idr0(0x3 | 0x8 | 1 << 5),
            idr1: Idr1(1 << 28 | 1 << 30 | 1 << 31),
            ..idr
        });
        assert!(p.btm);
        assert_eq!(p.presets, Idr1Flags::REL | Idr1Flags::TABLES_PRESET);
    }

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
        assert_eq!(f.s2_ias(12), 44);
        assert_eq!(Features::page_sizes(12), Ok(1 << 12 | 1 << 21 | 1 << 30));
        assert_eq!(Features::page_sizes(14), Ok(1 << 14 | 1 << 25));
        assert_eq!(Features::page_sizes(16), Ok(1 << 16 | 1 << 29));
        let caps = f.capabilities(8, (12, Source::Register("IDR5")), &DeviceFacts::UNDECLARED);
        assert!(caps.nesting && caps.coherent_walk);
        assert_eq!(caps.sources.coherent_walk, Source::Register("IDR0.COHACC"));
        let no_coh = Features { cohacc: false, ..f };
        assert_eq!(no_coh.coherency(), WalkerCoherency::NonCoherent);
    }

    #[test]
    fn page_sizes_of_a_granule_the_architecture_lacks_are_an_error() {
        for g in [40, 2, 13, 0, u32::MAX] {
            assert_eq!(
                Features::page_sizes(g),
                Err(SmmuError::FieldOutOfRange {
                    field: "granule_log2 (12, 14 or 16)",
                    value: u64::from(g),
                })
            );
        }
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
        let caps = f.capabilities(0, (12, Source::Register("IDR5")), &DeviceFacts::UNDECLARED);
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
            let caps = g.capabilities(0, (12, Source::Register("IDR5")), &canwbs);
            assert!(caps.enforce_snoop);
            assert_eq!(caps.sources.enforce_snoop, canwbs.source);
        }
    }
}
