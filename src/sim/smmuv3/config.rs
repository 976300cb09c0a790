//! What the modelled SMMU implements: the ID registers (Arm IHI 0070 G.b, §6.3.1 to §6.3.6,
//! SMMU_IDR0 to SMMU_IDR5, SMMU_IIDR, SMMU_AIDR), with builders for the features tests vary.
//!
//! Field positions are this model's own reading of §6.3 (checked against public headers).

/// SMMU_IDR0 fields (§6.3.1).
pub(crate) mod idr0 {
    /// Stage-2 translation supported.
    pub const S2P: u32 = 1 << 0;
    /// Stage-1 translation supported.
    pub const S1P: u32 = 1 << 1;
    /// TTF[3:2]: translation table formats; 0b10 = AArch64 only.
    pub const TTF_SHIFT: u32 = 2;
    /// Coherent access to tables, queues and MSIs.
    pub const COHACC: u32 = 1 << 4;
    /// Broadcast TLB maintenance: the SMMU takes part in the CPUs' TLBI ... IS unless
    /// CR2.PTM is set.
    pub const BTM: u32 = 1 << 5;
    /// HTTU[7:6]: 0b01 access flag, 0b10 access flag and dirty state.
    pub const HTTU_SHIFT: u32 = 6;
    /// Hypervisor stage 1 (EL2 StreamWorld) supported.
    pub const HYP: u32 = 1 << 9;
    /// PCIe ATS supported.
    pub const ATS: u32 = 1 << 10;
    /// 16-bit ASIDs.
    pub const ASID16: u32 = 1 << 12;
    /// MSIs supported (CMD_SYNC completion by MSI write).
    pub const MSI: u32 = 1 << 13;
    /// SEV on CMD_SYNC completion supported.
    pub const SEV: u32 = 1 << 14;
    /// PCIe PRI: the PRI queue and CMD_PRI_RESP.
    pub const PRI: u32 = 1 << 16;
    /// 16-bit VMIDs.
    pub const VMID16: u32 = 1 << 18;
    /// 2-level context-descriptor tables supported.
    pub const CD2L: u32 = 1 << 19;
    /// TTENDIAN[22:21]: 0b10 little-endian only.
    pub const TTENDIAN_SHIFT: u32 = 21;
    /// STALL_MODEL[25:24]: 0b01 stall not supported.
    pub const STALL_MODEL_SHIFT: u32 = 24;
    /// TERM_MODEL: terminated transactions always abort.
    pub const TERM_MODEL: u32 = 1 << 26;
    /// ST_LEVEL[28:27]: 0b01 2-level stream table supported.
    pub const ST_LEVEL_SHIFT: u32 = 27;
}

/// SMMU_IDR1 fields (§6.3.2).
pub(crate) mod idr1 {
    /// SIDSIZE[5:0].
    pub const SIDSIZE_SHIFT: u32 = 0;
    /// SSIDSIZE[10:6].
    pub const SSIDSIZE_SHIFT: u32 = 6;
    /// PRIQS[15:11]: log2 of the largest PRI queue.
    pub const PRIQS_SHIFT: u32 = 11;
    /// EVENTQS[20:16]: log2 of the largest event queue.
    pub const EVENTQS_SHIFT: u32 = 16;
    /// CMDQS[25:21]: log2 of the largest command queue.
    pub const CMDQS_SHIFT: u32 = 21;
    /// REL: base addresses in the preset registers are relative to an IMPLEMENTATION DEFINED
    /// base.
    pub const REL: u32 = 1 << 28;
    /// QUEUES_PRESET: the queue base registers are fixed (read-only).
    pub const QUEUES_PRESET: u32 = 1 << 29;
    /// TABLES_PRESET: STRTAB_BASE and STRTAB_BASE_CFG are fixed (read-only).
    pub const TABLES_PRESET: u32 = 1 << 30;
}

/// SMMU_IDR3 fields (§6.3.4).
pub(crate) mod idr3 {
    /// Hierarchical attribute disable supported.
    pub const HAD: u32 = 1 << 2;
    /// FEAT_XNX at stage 2.
    pub const XNX: u32 = 1 << 4;
    /// PPS: automatic PRI responses carry the request's PASID whatever STE.PPAR says.
    pub const PPS: u32 = 1 << 5;
    /// Stage-2 forced write-back (STE.S2FWB).
    pub const FWB: u32 = 1 << 8;
    /// Range invalidation (TG, SCALE, NUM, TTL in TLBI commands).
    pub const RIL: u32 = 1 << 10;
    /// BBML[12:11].
    pub const BBML_SHIFT: u32 = 11;
}

/// SMMU_IDR5 fields (§6.3.6).
pub(crate) mod idr5 {
    /// OAS[2:0]: 0b100 = 44 bits.
    pub const OAS_MASK: u32 = 0x7;
    /// 4 KiB granule.
    pub const GRAN4K: u32 = 1 << 4;
    /// 16 KiB granule.
    pub const GRAN16K: u32 = 1 << 5;
    /// 64 KiB granule.
    pub const GRAN64K: u32 = 1 << 6;
}

/// Bits of the output sizes the 3-bit PS/IPS/OAS encodings name (0b000 = 32 ... 0b110 = 52).
pub(crate) const OUTPUT_SIZES: [u32; 7] = [32, 36, 40, 42, 44, 48, 52];

/// The ID registers of the modelled SMMU.
///
/// [`SmmuModelConfig::qemu_like`] is what QEMU 10.0's `arm-smmuv3` reports for
/// `-M virt,iommu=smmuv3` (stage = nested), read from QEMU's `smmuv3_init_regs`:
/// IDR0: S1P, S2P, TTF = AArch64, COHACC, ASID16, VMID16, TTENDIAN = little, STALL_MODEL = no
/// stall, TERM_MODEL, ST_LEVEL = 2-level (no MSI, SEV, ATS, HYP, HTTU or CD2L);
/// IDR1: SIDSIZE = 16, SSIDSIZE = 0, EVENTQS = CMDQS = 19; IDR3: HAD, XNX, RIL, BBML = 2 (no
/// FWB); IDR5: OAS = 44 bits, 4K, 16K and 64K granules; AIDR = 1 (SMMUv3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmmuModelConfig {
    /// SMMU_IDR0 to SMMU_IDR5, as the registers read.
    pub idr: [u32; 6],
    /// SMMU_IIDR.
    pub iidr: u32,
    /// SMMU_AIDR.
    pub aidr: u32,
    /// Not a register: the StreamIDs `first..=last` whose accesses the platform keeps coherent
    /// whatever their attributes (ACPI IORT `CANWBS`).
    pub canwbs: Option<(u32, u32)>,
}

impl SmmuModelConfig {
    /// What QEMU 10.0's `arm-smmuv3` reports (see the type's documentation).
    pub const fn qemu_like() -> Self {
        let idr0 = idr0::S1P
            | idr0::S2P
            | 2 << idr0::TTF_SHIFT
            | idr0::COHACC
            | idr0::ASID16
            | idr0::VMID16
            | 2 << idr0::TTENDIAN_SHIFT
            | 1 << idr0::STALL_MODEL_SHIFT
            | idr0::TERM_MODEL
            | 1 << idr0::ST_LEVEL_SHIFT;
        let idr1 = 16 << idr1::SIDSIZE_SHIFT | 19 << idr1::EVENTQS_SHIFT | 19 << idr1::CMDQS_SHIFT;
        let idr3 = idr3::HAD | idr3::XNX | idr3::RIL | 2 << idr3::BBML_SHIFT;
        let idr5 = 4 | idr5::GRAN4K | idr5::GRAN16K | idr5::GRAN64K;
        Self {
            idr: [idr0, idr1, 0, idr3, 0, idr5],
            iidr: 0,
            aidr: 1,
            canwbs: None,
        }
    }

    const fn set(mut self, reg: usize, bits: u32, on: bool) -> Self {
        if on {
            self.idr[reg] |= bits;
        } else {
            self.idr[reg] &= !bits;
        }
        self
    }

    /// The platform keeps StreamIDs `first..=last` coherent whatever their attributes (IORT
    /// `CANWBS`).
    pub const fn with_canwbs(mut self, first: u32, last: u32) -> Self {
        self.canwbs = Some((first, last));
        self
    }

    /// Whether the platform declares `sid` `CANWBS`.
    pub(crate) fn canwbs(&self, sid: u32) -> bool {
        self.canwbs.is_some_and(|(a, b)| (a..=b).contains(&sid))
    }

    /// IDR0.BTM: broadcast TLB maintenance.
    pub const fn with_btm(self, on: bool) -> Self {
        self.set(0, idr0::BTM, on)
    }

    /// IDR1.TABLES_PRESET, QUEUES_PRESET and REL: the stream table and queue bases are fixed by
    /// the implementation, at addresses software does not choose. The model's base registers
    /// then ignore writes.
    pub const fn with_presets(self, tables: bool, queues: bool, rel: bool) -> Self {
        self.set(1, idr1::TABLES_PRESET, tables)
            .set(1, idr1::QUEUES_PRESET, queues)
            .set(1, idr1::REL, rel)
    }

    pub(crate) const fn has1(&self, bit: u32) -> bool {
        self.idr[1] & bit != 0
    }

    /// IDR3.RIL: range invalidation.
    pub const fn with_ril(self, on: bool) -> Self {
        self.set(3, idr3::RIL, on)
    }

    /// IDR3.FWB: stage-2 forced write-back.
    pub const fn with_fwb(self, on: bool) -> Self {
        self.set(3, idr3::FWB, on)
    }

    /// IDR0.COHACC: coherent table walks.
    pub const fn with_cohacc(self, on: bool) -> Self {
        self.set(0, idr0::COHACC, on)
    }

    /// IDR0.MSI: CMD_SYNC completion by MSI write.
    pub const fn with_msi(self, on: bool) -> Self {
        self.set(0, idr0::MSI, on)
    }

    /// IDR0.SEV: CMD_SYNC completion by SEV.
    pub const fn with_sev(self, on: bool) -> Self {
        self.set(0, idr0::SEV, on)
    }

    /// IDR0.ATS: PCIe ATS (STE.EATS legal).
    pub const fn with_ats(self, on: bool) -> Self {
        self.set(0, idr0::ATS, on)
    }

    /// IDR0.PRI with IDR1.PRIQS = `log2` (capped at 19) and IDR3.PPS: a PRI queue of at most
    /// `2^log2` entries (`on` = false clears all three).
    pub const fn with_pri(mut self, on: bool, log2: u8) -> Self {
        let q = if !on {
            0
        } else if log2 > 19 {
            19
        } else {
            log2 as u32
        };
        self.idr[1] = self.idr[1] & !(0x1f << idr1::PRIQS_SHIFT) | q << idr1::PRIQS_SHIFT;
        self.set(0, idr0::PRI, on).set(3, idr3::PPS, on)
    }

    /// IDR3.PPS: automatic PRI responses carry the request's PASID whatever STE.PPAR says
    /// (`false`: the STE's PPAR decides, §8.1). [`with_pri`](Self::with_pri) sets it.
    pub const fn with_pps(self, on: bool) -> Self {
        self.set(3, idr3::PPS, on)
    }

    /// IDR0.STALL_MODEL: 0b00 stall and terminate, 0b01 terminate only, 0b10 stall forced.
    pub const fn with_stall_model(mut self, model: u32) -> Self {
        self.idr[0] =
            self.idr[0] & !(3 << idr0::STALL_MODEL_SHIFT) | (model & 3) << idr0::STALL_MODEL_SHIFT;
        self
    }

    /// IDR1.SSIDSIZE (capped at 20); non-zero also sets IDR0.CD2L (2-level CD tables).
    pub const fn with_ssid_bits(mut self, bits: u8) -> Self {
        let bits = if bits > 20 { 20 } else { bits as u32 };
        self.idr[1] = self.idr[1] & !(0x1f << idr1::SSIDSIZE_SHIFT) | bits << idr1::SSIDSIZE_SHIFT;
        self.set(0, idr0::CD2L, bits > 0)
    }

    /// IDR1.SIDSIZE (capped at 32).
    pub const fn with_sid_bits(mut self, bits: u8) -> Self {
        let bits = if bits > 32 { 32 } else { bits as u32 };
        self.idr[1] = self.idr[1] & !0x3f | bits;
        self
    }

    /// IDR1.CMDQS and IDR1.EVENTQS: log2 of the largest queues (capped at 19).
    pub const fn with_queue_bits(mut self, cmdq: u8, eventq: u8) -> Self {
        let c = if cmdq > 19 { 19 } else { cmdq as u32 };
        let e = if eventq > 19 { 19 } else { eventq as u32 };
        self.idr[1] = self.idr[1] & !(0x1f << idr1::CMDQS_SHIFT | 0x1f << idr1::EVENTQS_SHIFT)
            | c << idr1::CMDQS_SHIFT
            | e << idr1::EVENTQS_SHIFT;
        self
    }

    /// IDR0.S1P and IDR0.S2P.
    pub const fn with_stages(self, s1: bool, s2: bool) -> Self {
        self.set(0, idr0::S1P, s1).set(0, idr0::S2P, s2)
    }

    /// IDR0.HTTU: hardware access flag (`ha`), and dirty state too (`hd`, implies `ha`).
    pub const fn with_httu(mut self, ha: bool, hd: bool) -> Self {
        let v = if hd {
            2
        } else if ha {
            1
        } else {
            0
        };
        self.idr[0] = self.idr[0] & !(3 << idr0::HTTU_SHIFT) | v << idr0::HTTU_SHIFT;
        self
    }

    /// IDR0.ST_LEVEL: 2-level stream tables.
    pub const fn with_two_level_strtab(mut self, on: bool) -> Self {
        self.idr[0] &= !(3 << idr0::ST_LEVEL_SHIFT);
        if on {
            self.idr[0] |= 1 << idr0::ST_LEVEL_SHIFT;
        }
        self
    }

    /// IDR5.OAS from a size in bits (32, 36, 40, 42, 44, 48 or 52; others leave it unchanged).
    pub const fn with_oas_bits(mut self, bits: u32) -> Self {
        let mut i = 0;
        while i < OUTPUT_SIZES.len() {
            if OUTPUT_SIZES[i] == bits {
                self.idr[5] = self.idr[5] & !idr5::OAS_MASK | i as u32;
            }
            i += 1;
        }
        self
    }

    pub(crate) const fn has0(&self, bit: u32) -> bool {
        self.idr[0] & bit != 0
    }

    pub(crate) const fn has3(&self, bit: u32) -> bool {
        self.idr[3] & bit != 0
    }

    /// Output address size in bits.
    pub(crate) fn oas(&self) -> u32 {
        let i = (self.idr[5] & idr5::OAS_MASK) as usize;
        OUTPUT_SIZES.get(i).copied().unwrap_or(48)
    }

    pub(crate) const fn sid_bits(&self) -> u32 {
        self.idr[1] & 0x3f
    }

    pub(crate) const fn ssid_bits(&self) -> u32 {
        (self.idr[1] >> idr1::SSIDSIZE_SHIFT) & 0x1f
    }

    pub(crate) const fn cmdq_max_log2(&self) -> u32 {
        (self.idr[1] >> idr1::CMDQS_SHIFT) & 0x1f
    }

    pub(crate) const fn priq_max_log2(&self) -> u32 {
        (self.idr[1] >> idr1::PRIQS_SHIFT) & 0x1f
    }

    pub(crate) const fn eventq_max_log2(&self) -> u32 {
        (self.idr[1] >> idr1::EVENTQS_SHIFT) & 0x1f
    }

    pub(crate) const fn httu(&self) -> u32 {
        (self.idr[0] >> idr0::HTTU_SHIFT) & 3
    }

    pub(crate) const fn two_level_strtab(&self) -> bool {
        (self.idr[0] >> idr0::ST_LEVEL_SHIFT) & 3 == 1
    }

    pub(crate) const fn stall_model(&self) -> u32 {
        (self.idr[0] >> idr0::STALL_MODEL_SHIFT) & 3
    }

    pub(crate) const fn stall_supported(&self) -> bool {
        self.stall_model() != 1
    }

    /// Whether the granule of `log2` bytes (12, 14, 16) is supported.
    pub(crate) const fn granule_ok(&self, log2: u32) -> bool {
        let bit = match log2 {
            12 => idr5::GRAN4K,
            14 => idr5::GRAN16K,
            16 => idr5::GRAN64K,
            _ => 0,
        };
        bit != 0 && self.idr[5] & bit != 0
    }
}

impl Default for SmmuModelConfig {
    fn default() -> Self {
        Self::qemu_like()
    }
}
