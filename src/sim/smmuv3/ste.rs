//! Stream table entries: Arm IHI 0070 G.b §5.2 (STE fields), with the legality checks whose
//! failure is C_BAD_STE (§7.3.5).
//!
//! Words read: `dw0` V[0], Config[3:1], S1Fmt[5:4], S1ContextPtr[51:6], S1CDMax[63:59];
//! `dw1` S1DSS[1:0], S2FWB[25], S1STALLD[27], EATS[29:28], STRW[31:30], SHCFG[45:44]; `dw2` S2VMID[15:0],
//! S2T0SZ[37:32], S2SL0[39:38], S2IR0[41:40], S2OR0[43:42], S2SH0[45:44], S2TG[47:46],
//! S2PS[50:48], S2AA64[51], S2ENDI[52], S2AFFD[53], S2PTW[54], S2HD[55], S2HA[56], S2S[57],
//! S2R[58]; `dw3` S2TTB[51:4].

use super::config::{idr0, idr3, SmmuModelConfig, OUTPUT_SIZES};
use crate::mem::PhysAddr;
use crate::sim::walk::arm::Granule;
use crate::sim::walk::arm_s2::ArmS2Config;

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

const V: u64 = 1;
const S1_CONTEXT_PTR: u64 = bits(51, 6);
const S2FWB: u64 = 1 << 25;
const S1STALLD: u64 = 1 << 27;
const S2TTB: u64 = bits(51, 4);
const S2AA64: u64 = 1 << 51;
const S2ENDI: u64 = 1 << 52;
const S2HD: u64 = 1 << 55;
const S2PTW: u64 = 1 << 54;
const S2HA: u64 = 1 << 56;
const S2S: u64 = 1 << 57;
const S2R: u64 = 1 << 58;

/// STE.Config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StreamConfig {
    /// 0b000: abort, no event.
    Abort,
    /// 0b100: bypass both stages.
    Bypass,
    /// 0b101: stage 1 only.
    S1,
    /// 0b110: stage 2 only.
    S2,
    /// 0b111: stage 1 then stage 2.
    Nested,
}

/// Stage-1 context fields of an STE.
#[derive(Clone, Copy, Debug)]
pub(crate) struct S1Context {
    /// S1ContextPtr (an IPA when nested).
    pub ptr: u64,
    /// S1Fmt: 0 linear, 1 2-level with 4 KiB leaf tables, 2 2-level with 64 KiB leaf tables.
    pub fmt: u8,
    /// S1CDMax: log2 of the number of CDs.
    pub cdmax: u32,
    /// S1DSS.
    pub dss: u8,
    /// S1STALLD: stage-1 faults never stall, whatever the CD says.
    pub stalld: bool,
}

/// Stage-2 fields of an STE, and the walker configuration they make.
#[derive(Clone, Copy, Debug)]
pub(crate) struct S2Context {
    pub vmid: u16,
    pub walk: ArmS2Config,
    /// S2R: record stage-2 faults.
    pub record: bool,
    /// S2S: stall stage-2 faults.
    pub stall: bool,
    /// S2PTW: a CD fetch or stage-1 walk to a stage-2 Device page is a stage-2 Permission
    /// fault (with 0 it is allowed: `IDR3.PTWNNC` = 0 is modelled).
    pub ptw: bool,
}

/// A decoded, legal STE.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Ste {
    pub config: StreamConfig,
    pub s1: Option<S1Context>,
    pub s2: Option<S2Context>,
    /// S2VMID, used as the VMID tag of stage-1-only entries too when stage 2 is implemented.
    pub vmid: u16,
    /// EATS.
    pub eats: u8,
}

/// Decodes an STE; `Err(())` is C_BAD_STE.
pub(crate) fn decode(cfg: &SmmuModelConfig, w: &[u64; 8]) -> Result<Ste, ()> {
    let [dw0, dw1, dw2, dw3, ..] = *w;
    if dw0 & V == 0 {
        return Err(());
    }
    let config = match (dw0 >> 1) & 7 {
        0 => StreamConfig::Abort,
        4 => StreamConfig::Bypass,
        5 => StreamConfig::S1,
        6 => StreamConfig::S2,
        7 => StreamConfig::Nested,
        _ => return Err(()),
    };
    let (uses_s1, uses_s2) = match config {
        StreamConfig::S1 => (true, false),
        StreamConfig::S2 => (false, true),
        StreamConfig::Nested => (true, true),
        _ => (false, false),
    };
    if uses_s1 && !cfg.has0(idr0::S1P) || uses_s2 && !cfg.has0(idr0::S2P) {
        return Err(());
    }
    let eats = ((dw1 >> 28) & 3) as u8;
    let strw = (dw1 >> 30) & 3;
    if eats != 0 && !cfg.has0(idr0::ATS) || eats == 3 {
        return Err(());
    }
    // StreamWorld EL2 needs IDR0.HYP; the model builds no EL2 regime, so only NS-EL1.
    if strw != 0 && (uses_s1 || uses_s2) {
        return Err(());
    }
    let vmid = dw2 as u16;
    if vmid > 0xff && !cfg.has0(idr0::VMID16) && cfg.has0(idr0::S2P) {
        return Err(());
    }
    let s1 = if uses_s1 {
        Some(s1_context(cfg, dw0, dw1)?)
    } else {
        None
    };
    let s2 = if uses_s2 {
        Some(s2_context(cfg, dw1, dw2, dw3)?)
    } else {
        None
    };
    // Stage-2 stall with ATS is ILLEGAL (§5.2, S2S and EATS): a Translation Request cannot be
    // stalled. Read for any EATS but 0b00 (0b10 split-stage included, conservatively).
    if s2.as_ref().is_some_and(|s| s.stall) && eats != 0 {
        return Err(());
    }
    Ok(Ste {
        config,
        s1,
        s2,
        vmid: if cfg.has0(idr0::S2P) { vmid } else { 0 },
        eats,
    })
}

fn s1_context(cfg: &SmmuModelConfig, dw0: u64, dw1: u64) -> Result<S1Context, ()> {
    let fmt = ((dw0 >> 4) & 3) as u8;
    let cdmax = ((dw0 >> 59) & 0x1f) as u32;
    let dss = (dw1 & 3) as u8;
    let ptr = dw0 & S1_CONTEXT_PTR;
    if fmt == 3 || fmt != 0 && !cfg.has0(idr0::CD2L) || cdmax > cfg.ssid_bits() {
        return Err(());
    }
    if cdmax > 0 && dss == 3 {
        return Err(());
    }
    if ptr >> cfg.oas() != 0 {
        return Err(());
    }
    // S1STALLD is ILLEGAL unless stalls are configurable (IDR0.STALL_MODEL = 0b00).
    if dw1 & S1STALLD != 0 && cfg.stall_model() != 0 {
        return Err(());
    }
    Ok(S1Context {
        ptr,
        fmt,
        cdmax,
        dss,
        stalld: dw1 & S1STALLD != 0,
    })
}

fn s2_context(cfg: &SmmuModelConfig, dw1: u64, dw2: u64, dw3: u64) -> Result<S2Context, ()> {
    if dw2 & S2AA64 == 0 || dw2 & S2ENDI != 0 {
        // AArch32 tables (IDR0.TTF = AArch64 only) and big-endian walks are illegal here.
        return Err(());
    }
    let granule = match (dw2 >> 46) & 3 {
        0 => Granule::K4,
        1 => Granule::K64,
        2 => Granule::K16,
        _ => return Err(()),
    };
    if !cfg.granule_ok(granule.log2()) {
        return Err(());
    }
    let fwb = dw1 & S2FWB != 0;
    if fwb && !cfg.has3(idr3::FWB) {
        return Err(());
    }
    if dw2 & S2S != 0 && !cfg.stall_supported() {
        return Err(());
    }
    // S2PS above IDR5.OAS is treated as OAS (§5.2, S2PS).
    let ps = OUTPUT_SIZES
        .get(((dw2 >> 48) & 7) as usize)
        .copied()
        .ok_or(())?;
    let oas = ps.min(cfg.oas());
    let ttb = dw3 & S2TTB;
    if ttb >> oas != 0 {
        return Err(());
    }
    let httu = cfg.httu();
    let walk = ArmS2Config {
        ttb: PhysAddr::new(ttb),
        granule,
        t0sz: ((dw2 >> 32) & 0x3f) as u8,
        sl0: ((dw2 >> 38) & 3) as u8,
        oas,
        fwb,
        xnx: cfg.has3(idr3::XNX),
        hardware_access_flag: httu >= 1 && dw2 & S2HA != 0,
        hardware_dirty: httu >= 2 && dw2 & S2HD != 0,
        strict_res0: false,
    };
    // An SL0/T0SZ combination the walker cannot start is C_BAD_STE, found before any walk.
    crate::sim::walk::arm_s2::root_shape(&walk).map_err(|_| ())?;
    Ok(S2Context {
        vmid: dw2 as u16,
        walk,
        record: dw2 & S2R != 0,
        stall: dw2 & S2S != 0,
        ptw: dw2 & S2PTW != 0,
    })
}
