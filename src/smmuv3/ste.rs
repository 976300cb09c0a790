//! The Stream Table Entry: 64 bytes that say how the transactions of one StreamID are handled.
//!
//! Arm IHI 0070 G.b §5.2 "Stream Table Entry". Field positions below are given both as the
//! spec's STE bit numbers and as (64-bit word, bits). Only AArch64 stage-2 tables are built
//! (`S2AA64 = 1` whenever stage 2 is on): the crate has no AArch32 format, and QEMU's model
//! crashes on a stage-2 STE with `S2AA64 = 0`.
//!
//! Changing a live STE is [`ste_update`](super::ste_update)'s job.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::field::{address_bits, Field};
use super::regs::Shareability;
use super::{SmmuError, Vmid};
use crate::mem::PhysAddr;

/// `STE[0]`, word 0 bit 0: valid.
pub const V: u64 = 1 << 0;
/// `STE[3:1]`, word 0 bits 3:1.
pub const CONFIG: Field = Field::new("Config", 3, 1);
/// `STE[5:4]`, word 0 bits 5:4.
pub const S1FMT: Field = Field::new("S1Fmt", 5, 4);
/// `STE[51:6]`, word 0 bits 51:6: the CD table (or the single CD).
pub const S1CONTEXTPTR: Field = Field::new("S1ContextPtr", 51, 6);
/// `STE[63:59]`, word 0 bits 63:59: log2 of the number of CDs.
pub const S1CDMAX: Field = Field::new("S1CDMax", 63, 59);
/// `STE[65:64]`, word 1 bits 1:0.
pub const S1DSS: Field = Field::new("S1DSS", 1, 0);
/// `STE[67:66]`, word 1 bits 3:2: inner cacheability of CD fetches.
pub const S1CIR: Field = Field::new("S1CIR", 3, 2);
/// `STE[69:68]`, word 1 bits 5:4: outer cacheability of CD fetches.
pub const S1COR: Field = Field::new("S1COR", 5, 4);
/// `STE[71:70]`, word 1 bits 7:6: shareability of CD fetches.
pub const S1CSH: Field = Field::new("S1CSH", 7, 6);
/// `STE[83]`, word 1 bit 19: merge events for this stream.
pub const MEV: u64 = 1 << 19;
/// PPAR (bit 82): the SMMU's own answers to page requests it discarded in a PRI queue
/// overflow carry the request's PASID (§5.2, §8.1; ignored with `IDR3.PPS` = 1). Set to the
/// endpoint's "PRG Response PASID Required" (its PCIe PRI Status register), as §8.1 asks.
pub const PPAR: u64 = 1 << 18;
/// `STE[89]`, word 1 bit 25: stage-2 forced write-back (with `IDR3.FWB`).
pub const S2FWB: u64 = 1 << 25;
/// `STE[91]`, word 1 bit 27: stage-1 stall disable.
pub const S1STALLD: u64 = 1 << 27;
/// `STE[93:92]`, word 1 bits 29:28: ATS translated-request handling.
pub const EATS: Field = Field::new("EATS", 29, 28);
/// `STE[95:94]`, word 1 bits 31:30: stream world (translation regime).
pub const STRW: Field = Field::new("STRW", 31, 30);
/// `STE[109:108]`, word 1 bits 45:44: shareability override.
pub const SHCFG: Field = Field::new("SHCFG", 45, 44);
/// Word 1 bits 51:32: the incoming attribute overrides (MemAttr, MTCFG, ALLOCCFG, SHCFG,
/// NSCFG, PRIVCFG, INSTCFG), used whenever stage 1 does not supply attributes.
pub const ATTR_OVERRIDES: u64 = 0x000f_ffff_0000_0000;
/// `STE[143:128]`, word 2 bits 15:0.
pub const S2VMID: Field = Field::new("S2VMID", 15, 0);
/// `STE[165:160]`, word 2 bits 37:32: 64 - IPA size.
pub const S2T0SZ: Field = Field::new("S2T0SZ", 37, 32);
/// `STE[167:166]`, word 2 bits 39:38: starting level.
pub const S2SL0: Field = Field::new("S2SL0", 39, 38);
/// `STE[169:168]`, word 2 bits 41:40.
pub const S2IR0: Field = Field::new("S2IR0", 41, 40);
/// `STE[171:170]`, word 2 bits 43:42.
pub const S2OR0: Field = Field::new("S2OR0", 43, 42);
/// `STE[173:172]`, word 2 bits 45:44.
pub const S2SH0: Field = Field::new("S2SH0", 45, 44);
/// `STE[175:174]`, word 2 bits 47:46: granule.
pub const S2TG: Field = Field::new("S2TG", 47, 46);
/// `STE[178:176]`, word 2 bits 50:48: output size (OAS encoding).
pub const S2PS: Field = Field::new("S2PS", 50, 48);
/// `STE[179]`, word 2 bit 51: AArch64 table format.
pub const S2AA64: u64 = 1 << 51;
/// `STE[180]`, word 2 bit 52: big-endian walks.
pub const S2ENDI: u64 = 1 << 52;
/// `STE[181]`, word 2 bit 53: access flag fault disable.
pub const S2AFFD: u64 = 1 << 53;
/// `STE[182]`, word 2 bit 54: protected table walk.
pub const S2PTW: u64 = 1 << 54;
/// `STE[183]`, word 2 bit 55: hardware dirty update.
pub const S2HD: u64 = 1 << 55;
/// `STE[184]`, word 2 bit 56: hardware access flag update.
pub const S2HA: u64 = 1 << 56;
/// `STE[185]`, word 2 bit 57: stage-2 fault behaviour, stall.
pub const S2S: u64 = 1 << 57;
/// `STE[186]`, word 2 bit 58: stage-2 fault record.
pub const S2R: u64 = 1 << 58;
/// Every stage-2 field of word 2 (S2VMID through S2R).
pub const WORD2_STAGE2: u64 = 0x07ff_ffff_0000_ffff;
/// `STE[243:196]`, word 3 bits 51:4: stage-2 table base.
pub const S2TTB: Field = Field::new("S2TTB", 51, 4);

/// [`SmmuError::InvalidConfig`]'s reason for an STE with `S2S` = 1 and `EATS` != 0, which §5.2
/// makes ILLEGAL (C_BAD_STE: every transaction of the stream aborts).
pub const STAGE2_STALL_WITH_ATS: &str = "S2S = 1 with EATS != 0 is ILLEGAL (C_BAD_STE)";

/// `Config` (`STE[3:1]`): what the stream gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Config {
    /// 0b000: abort every transaction, no event.
    Abort = 0b000,
    /// 0b100: bypass both stages.
    Bypass = 0b100,
    /// 0b101: stage 1 translates, stage 2 bypassed.
    S1Translate = 0b101,
    /// 0b110: stage 1 bypassed, stage 2 translates.
    S2Translate = 0b110,
    /// 0b111: both stages (nested).
    Nested = 0b111,
}

/// `S1Fmt`: layout of the CD table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum S1Fmt {
    /// A linear array of `2^S1CDMax` CDs.
    Linear = 0,
    /// Two levels, 4 KiB leaf tables (64 CDs each).
    TwoLevel4K = 1,
    /// Two levels, 64 KiB leaf tables (1024 CDs each).
    TwoLevel64K = 2,
}

/// `S1DSS`: what a transaction without a SubstreamID gets when stage 1 is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum S1Dss {
    /// Terminate (abort with event).
    Terminate = 0,
    /// Bypass stage 1.
    Bypass = 1,
    /// Use the CD of SubstreamID 0.
    Substream0 = 2,
}

/// Cacheability of walks, in the TCR encoding (STE S1CIR/S1COR/S2IR0/S2OR0, CD IR0/OR0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cacheability {
    /// Non-cacheable.
    NonCacheable = 0,
    /// Write-back, read-allocate, write-allocate.
    WriteBackAllocate = 1,
    /// Write-through, read-allocate.
    WriteThrough = 2,
    /// Write-back, no write-allocate.
    WriteBack = 3,
}

/// `EATS`: handling of ATS translation requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Eats {
    /// ATS not permitted.
    Abort = 0,
    /// Full ATS.
    Translate = 1,
    /// Split-stage ATS (stage 1 only in the ATC).
    S1Check = 2,
}

/// `STRW`: the translation regime the stream belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Strw {
    /// Non-secure EL1 (with a VMID if stage 2 exists).
    NsEl1 = 0,
    /// EL2 (with `IDR0.HYP`).
    El2 = 2,
}

/// `SHCFG`: shareability override of incoming transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Shcfg {
    /// Non-shareable.
    NonShareable = 0,
    /// Use the incoming attribute.
    UseIncoming = 1,
    /// Outer shareable.
    Outer = 2,
    /// Inner shareable.
    Inner = 3,
}

/// `S2TG`: stage-2 granule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum S2Tg {
    /// 4 KiB.
    Size4K = 0,
    /// 64 KiB.
    Size64K = 1,
    /// 16 KiB.
    Size16K = 2,
}

/// The stage-1 half of an STE: where the CDs are and how to fetch them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1 {
    /// S1ContextPtr: the CD table, 64-byte aligned.
    pub context_ptr: PhysAddr,
    /// S1Fmt.
    pub fmt: S1Fmt,
    /// S1CDMax: log2 of the number of CDs (0..=20).
    pub cdmax: u8,
    /// S1DSS.
    pub dss: S1Dss,
    /// S1CIR.
    pub cir: Cacheability,
    /// S1COR.
    pub cor: Cacheability,
    /// S1CSH.
    pub csh: Shareability,
}

/// The stage-2 half of an STE: the VMID and the stage-2 table with its VTCR-like fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2 {
    /// S2VMID.
    pub vmid: Vmid,
    /// S2T0SZ: 64 - IPA bits.
    pub t0sz: u8,
    /// S2SL0: starting level, in the VTCR_EL2.SL0 encoding for the granule.
    pub sl0: u8,
    /// S2IR0.
    pub ir0: Cacheability,
    /// S2OR0.
    pub or0: Cacheability,
    /// S2SH0.
    pub sh0: Shareability,
    /// S2TG.
    pub tg: S2Tg,
    /// S2PS, in the OAS encoding (see [`bits_to_oas`](super::idr::bits_to_oas)).
    pub ps: u8,
    /// S2ENDI: big-endian walks.
    pub endi: bool,
    /// S2AFFD.
    pub affd: bool,
    /// S2PTW: a CD fetch or stage-1 walk to a stage-2 Device page is a stage-2 Permission
    /// fault (IGNORED unless both stages translate).
    pub ptw: bool,
    /// S2HD (with `IDR0.HTTU = 2`).
    pub hd: bool,
    /// S2HA (with `IDR0.HTTU >= 1`).
    pub ha: bool,
    /// S2S: stall on stage-2 faults.
    pub s: bool,
    /// S2R: record stage-2 faults.
    pub r: bool,
    /// S2FWB (with `IDR3.FWB`): stage 2 forces write-back over stage 1's memory type. It does
    /// not stop a PCIe No-Snoop transaction from bypassing the caches (that is `CANWBS`).
    pub fwb: bool,
    /// S2TTB: the stage-2 table, 16-byte aligned at least, 52 bits at most.
    pub ttb: PhysAddr,
}

/// A Stream Table Entry as eight little-endian words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(64))]
pub struct Ste {
    /// The words, in table order.
    pub words: [u64; 8],
}

const _: () = assert!(core::mem::size_of::<Ste>() == 64);

impl Ste {
    /// V = 0: the unit raises C_BAD_STE for the stream.
    pub const INVALID: Self = Self { words: [0; 8] };
    /// V = 1, Config = abort: transactions are silently terminated.
    pub const ABORT: Self = Self {
        words: [V, 0, 0, 0, 0, 0, 0, 0],
    };

    /// Whether V is set.
    pub const fn valid(&self) -> bool {
        self.words[0] & V != 0
    }

    /// The raw Config field.
    pub const fn config_raw(&self) -> u8 {
        CONFIG.get(self.words[0]) as u8
    }

    /// Whether the unit answers ATS Translation Requests of the stream and lets its
    /// translated transactions pass (`CR0.ATSCHK`): valid, a translating Config (stage 1 or 2
    /// enabled) and `EATS` not 0 (§5.2, §3.9.1).
    pub const fn allows_ats(&self) -> bool {
        self.valid() && self.config_raw() & 0b011 != 0 && EATS.get(self.words[1]) != 0
    }
}

/// Builds STEs from typed halves, checking every field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SteBuilder {
    config: Config,
    s1: Option<Stage1>,
    s2: Option<Stage2>,
    eats: Eats,
    strw: Strw,
    mev: bool,
    shcfg: Shcfg,
    s1stalld: bool,
    ppar: bool,
}

impl SteBuilder {
    const fn with(config: Config, s1: Option<Stage1>, s2: Option<Stage2>) -> Self {
        Self {
            config,
            s1,
            s2,
            eats: Eats::Abort,
            strw: Strw::NsEl1,
            mev: false,
            shcfg: Shcfg::UseIncoming,
            s1stalld: false,
            ppar: false,
        }
    }
    /// Config = abort.
    pub const fn abort() -> Self {
        Self::with(Config::Abort, None, None)
    }
    /// Config = bypass (incoming shareability by default).
    pub const fn bypass() -> Self {
        Self::with(Config::Bypass, None, None)
    }
    /// Config = stage-1 translate.
    pub const fn stage1(s1: Stage1) -> Self {
        Self::with(Config::S1Translate, Some(s1), None)
    }
    /// Config = stage-2 translate.
    pub const fn stage2(s2: Stage2) -> Self {
        Self::with(Config::S2Translate, None, Some(s2))
    }
    /// Config = nested.
    pub const fn nested(s1: Stage1, s2: Stage2) -> Self {
        Self::with(Config::Nested, Some(s1), Some(s2))
    }
    /// Sets EATS.
    pub const fn eats(mut self, eats: Eats) -> Self {
        self.eats = eats;
        self
    }
    /// Sets STRW.
    pub const fn strw(mut self, strw: Strw) -> Self {
        self.strw = strw;
        self
    }
    /// Sets MEV.
    pub const fn mev(mut self, mev: bool) -> Self {
        self.mev = mev;
        self
    }
    /// Sets S1STALLD (stage-1 faults never stall, whatever a CD says; only on a unit with
    /// `IDR0.STALL_MODEL` = 0b00, where the field exists; written only with a stage 1).
    pub const fn s1_stall_disabled(mut self, on: bool) -> Self {
        self.s1stalld = on;
        self
    }
    /// Sets PPAR (only with `IDR0.PRI` and SubstreamIDs, where the field exists).
    pub const fn ppar(mut self, on: bool) -> Self {
        self.ppar = on;
        self
    }
    /// Sets SHCFG.
    pub const fn shcfg(mut self, shcfg: Shcfg) -> Self {
        self.shcfg = shcfg;
        self
    }

    /// The STE.
    ///
    /// # Errors
    ///
    /// A field error for a misaligned or too wide table address, `S1CDMax > 20`,
    /// `S2T0SZ`/`S2SL0`/`S2PS` out of range; [`SmmuError::InvalidConfig`] for EATS on a
    /// configuration that does not translate, or with `S2S` ([`STAGE2_STALL_WITH_ATS`]).
    pub fn build(&self) -> Result<Ste, SmmuError> {
        let mut w = [0u64; 8];
        w[0] = V | CONFIG.set_masked(0, self.config as u64);
        let translates = matches!(
            self.config,
            Config::S1Translate | Config::S2Translate | Config::Nested
        );
        if self.eats != Eats::Abort && !translates {
            return Err(SmmuError::InvalidConfig {
                reason: "EATS needs a translating Config",
            });
        }
        // Stage-2 stall with ATS is ILLEGAL (§5.2, S2S and EATS): the unit would abort
        // every transaction of the stream with C_BAD_STE. Refused for EATS 0b10 as well.
        if self.eats != Eats::Abort && self.s2.is_some_and(|s2| s2.s) {
            return Err(SmmuError::InvalidConfig {
                reason: STAGE2_STALL_WITH_ATS,
            });
        }
        if self.config == Config::Bypass || (self.config as u8 & 0b110) == 0b110 {
            w[1] = SHCFG.set_masked(w[1], self.shcfg as u64);
        }
        if translates {
            w[1] = EATS.set_masked(w[1], self.eats as u64);
            w[1] = STRW.set_masked(w[1], self.strw as u64);
            if self.mev {
                w[1] |= MEV;
            }
        }
        if self.ppar {
            w[1] |= PPAR;
        }
        if let Some(s1) = &self.s1 {
            encode_stage1(&mut w, s1, self.shcfg)?;
            if self.s1stalld {
                w[1] |= S1STALLD;
            }
        }
        if let Some(s2) = &self.s2 {
            encode_stage2(&mut w, s2)?;
        }
        Ok(Ste { words: w })
    }
}

fn encode_stage1(w: &mut [u64; 8], s1: &Stage1, shcfg: Shcfg) -> Result<(), SmmuError> {
    if s1.cdmax > 20 {
        return Err(SmmuError::FieldOutOfRange {
            field: "S1CDMax",
            value: s1.cdmax as u64,
        });
    }
    w[0] |= address_bits(S1CONTEXTPTR, s1.context_ptr.get())?;
    w[0] = S1FMT.set_masked(w[0], s1.fmt as u64);
    w[0] = S1CDMAX.set_masked(w[0], s1.cdmax as u64);
    w[1] = S1DSS.set_masked(w[1], s1.dss as u64);
    w[1] = S1CIR.set_masked(w[1], s1.cir as u64);
    w[1] = S1COR.set_masked(w[1], s1.cor as u64);
    w[1] = S1CSH.set_masked(w[1], s1.csh as u64);
    // Non-substream traffic that bypasses stage 1 takes its attributes from the overrides.
    if s1.dss == S1Dss::Bypass {
        w[1] = SHCFG.set_masked(w[1], shcfg as u64);
    }
    Ok(())
}

fn encode_stage2(w: &mut [u64; 8], s2: &Stage2) -> Result<(), SmmuError> {
    let mut w2 = S2VMID.set_masked(0, s2.vmid.0 as u64);
    w2 = S2T0SZ.set(w2, s2.t0sz as u64)?;
    w2 = S2SL0.set(w2, s2.sl0 as u64)?;
    w2 = S2IR0.set_masked(w2, s2.ir0 as u64);
    w2 = S2OR0.set_masked(w2, s2.or0 as u64);
    w2 = S2SH0.set_masked(w2, s2.sh0 as u64);
    w2 = S2TG.set_masked(w2, s2.tg as u64);
    if s2.ps > 6 {
        return Err(SmmuError::FieldOutOfRange {
            field: "S2PS",
            value: s2.ps as u64,
        });
    }
    w2 = S2PS.set_masked(w2, s2.ps as u64) | S2AA64;
    for (on, bit) in [
        (s2.endi, S2ENDI),
        (s2.affd, S2AFFD),
        (s2.ptw, S2PTW),
        (s2.hd, S2HD),
        (s2.ha, S2HA),
        (s2.s, S2S),
        (s2.r, S2R),
    ] {
        if on {
            w2 |= bit;
        }
    }
    if s2.fwb {
        w[1] |= S2FWB;
    }
    w[2] = w2;
    w[3] = address_bits(S2TTB, s2.ttb.get())?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn s2(ttb: u64, vmid: u16) -> Stage2 {
        Stage2 {
            vmid: Vmid(vmid),
            t0sz: 24,
            sl0: 1,
            ir0: Cacheability::WriteBackAllocate,
            or0: Cacheability::WriteBackAllocate,
            sh0: Shareability::Inner,
            tg: S2Tg::Size4K,
            ps: 5,
            endi: false,
            affd: false,
            ptw: false,
            hd: false,
            ha: false,
            s: false,
            r: true,
            fwb: false,
            ttb: PhysAddr::new(ttb),
        }
    }

    pub(crate) fn s1(cd: u64) -> Stage1 {
        Stage1 {
            context_ptr: PhysAddr::new(cd),
            fmt: S1Fmt::Linear,
            cdmax: 4,
            dss: S1Dss::Substream0,
            cir: Cacheability::WriteBackAllocate,
            cor: Cacheability::WriteBackAllocate,
            csh: Shareability::Inner,
        }
    }

    #[test]
    fn abort_and_bypass() {
        assert_eq!(SteBuilder::abort().build().unwrap(), Ste::ABORT);
        // Bypass: V | Config 0b100 << 1 = 0x9; SHCFG incoming = 1 << 44.
        let b = SteBuilder::bypass().build().unwrap();
        assert_eq!(b.words[..2], [0x9, 1 << 44]);
        assert!(SteBuilder::bypass().eats(Eats::Translate).build().is_err());
    }

    #[test]
    fn stage2_words() {
        let ste = SteBuilder::stage2(s2(0x8010_0000, 7)).build().unwrap();
        // V | Config 0b110 << 1 = 0xd.
        assert_eq!(ste.words[0], 0xd);
        // SHCFG incoming (1 << 44).
        assert_eq!(ste.words[1], 1 << 44);
        // VMID 7; T0SZ 24 (24 << 32 = 0x18_0000_0000); SL0 1 (1 << 38 = 0x40_0000_0000);
        // IR0/OR0 WBWA (1 << 40 | 1 << 42 = 0x500_0000_0000); SH0 inner (3 << 44 =
        // 0x3000_0000_0000); TG 4K (0); PS 48 bits (5 << 48 = 0x5_0000_0000_0000); S2AA64
        // (1 << 51 = 0x8_0000_0000_0000); S2R (1 << 58 = 0x400_0000_0000_0000).
        // Sum: 0x040d_3558_0000_0007.
        assert_eq!(ste.words[2], 0x040d_3558_0000_0007);
        assert_eq!(ste.words[3], 0x8010_0000);
        let mut bad = s2(0x8010_0008, 7);
        assert!(SteBuilder::stage2(bad).build().is_err());
        bad.ttb = PhysAddr::new(1 << 52);
        assert!(SteBuilder::stage2(bad).build().is_err());
        let bad = Stage2 {
            t0sz: 64,
            ..s2(0x1000, 1)
        };
        assert!(SteBuilder::stage2(bad).build().is_err());
        let fwb = Stage2 {
            fwb: true,
            ..s2(0x1000, 1)
        };
        assert_eq!(
            SteBuilder::stage2(fwb).build().unwrap().words[1] & S2FWB,
            S2FWB
        );
    }

    #[test]
    fn stage1_and_nested_words() {
        let ste = SteBuilder::stage1(s1(0x4_0000))
            .eats(Eats::Translate)
            .build()
            .unwrap();
        // V | 0b101 << 1 = 0xb; S1ContextPtr 0x4_0000; S1CDMax 4 << 59 = 0x2000_0000_0000_0000.
        assert_eq!(ste.words[0], 0x2000_0000_0004_000b);
        // S1DSS 2; S1CIR 1 << 2; S1COR 1 << 4; S1CSH 3 << 6: 0xd6; EATS 1 << 28.
        assert_eq!(ste.words[1], 0x1000_00d6);
        let n = SteBuilder::nested(s1(0x4_0000), s2(0x8000, 3))
            .build()
            .unwrap();
        assert_eq!(n.config_raw(), Config::Nested as u8);
        assert_eq!(n.words[3], 0x8000);
        let bad = Stage1 {
            cdmax: 21,
            ..s1(0x4_0000)
        };
        assert!(SteBuilder::stage1(bad).build().is_err());
        assert!(SteBuilder::stage1(s1(0x4_0020)).build().is_err());
    }

    #[test]
    fn stage2_stall_never_comes_with_ats() {
        let stall = Stage2 {
            s: true,
            ..s2(0x8000, 3)
        };
        let refused = Err(SmmuError::InvalidConfig {
            reason: STAGE2_STALL_WITH_ATS,
        });
        for eats in [Eats::Translate, Eats::S1Check] {
            assert_eq!(SteBuilder::stage2(stall).eats(eats).build(), refused);
            assert_eq!(
                SteBuilder::nested(s1(0x4_0000), stall).eats(eats).build(),
                refused
            );
        }
        // Either alone builds.
        assert!(SteBuilder::stage2(stall).build().is_ok());
        let ats = SteBuilder::stage2(s2(0x8000, 3)).eats(Eats::Translate);
        assert!(ats.build().is_ok());
    }
}
