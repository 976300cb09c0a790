//! Context descriptors: Arm IHI 0070 G.b §5.4 (CD fields), with the legality checks whose
//! failure is C_BAD_CD (§7.3.11).
//!
//! Words read: `dw0` T0SZ[5:0], TG0[7:6], IR0[9:8], OR0[11:10], SH0[13:12], EPD0[14],
//! ENDI[15], EPD1[30], V[31], IPS[34:32], AFFD[35], WXN[36], AA64[41], HD[42], HA[43], S[44],
//! R[45], A[46], ASID[63:48]; `dw1` TTB0[51:4]; `dw3` MAIR. Only the TTB0 half of the VA space
//! is modelled: with EPD1 = 0 an address in the upper half is a translation fault all the same.

use super::config::{idr0, SmmuModelConfig, OUTPUT_SIZES};
use crate::mem::PhysAddr;
use crate::sim::walk::arm::Granule;
use crate::sim::walk::arm_s1::ArmS1Config;

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

const EPD0: u64 = 1 << 14;
const ENDI: u64 = 1 << 15;
const V: u64 = 1 << 31;
const WXN: u64 = 1 << 36;
const AA64: u64 = 1 << 41;
const HD: u64 = 1 << 42;
const HA: u64 = 1 << 43;
const S: u64 = 1 << 44;
const R: u64 = 1 << 45;
const TTB0: u64 = bits(51, 4);

/// A decoded, legal CD.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cd {
    pub asid: u16,
    pub walk: ArmS1Config,
    /// EPD0: walks of TTB0 are disabled (every address is a translation fault).
    pub epd0: bool,
    /// R: record stage-1 faults.
    pub record: bool,
    /// S: stall stage-1 faults (unless the STE's S1STALLD forbids it).
    pub stall: bool,
}

/// Decodes a CD; `Err(())` is C_BAD_CD.
pub(crate) fn decode(cfg: &SmmuModelConfig, w: &[u64; 8]) -> Result<Cd, ()> {
    let [dw0, dw1, _, dw3, ..] = *w;
    if dw0 & V == 0 || dw0 & AA64 == 0 || dw0 & ENDI != 0 {
        return Err(());
    }
    let granule = match (dw0 >> 6) & 3 {
        0 => Granule::K4,
        1 => Granule::K64,
        2 => Granule::K16,
        _ => return Err(()),
    };
    if !cfg.granule_ok(granule.log2()) {
        return Err(());
    }
    let t0sz = (dw0 & 0x3f) as u8;
    // IAS from 25 bits to 48 (52 only with the 64 KiB granule and VAX, not modelled).
    if !(16..=39).contains(&t0sz) {
        return Err(());
    }
    let asid = (dw0 >> 48) as u16;
    if asid > 0xff && !cfg.has0(idr0::ASID16) {
        return Err(());
    }
    if dw0 & S != 0 && !cfg.stall_supported() {
        return Err(());
    }
    // IPS above IDR5.OAS is treated as OAS.
    let ips = OUTPUT_SIZES
        .get(((dw0 >> 32) & 7) as usize)
        .copied()
        .ok_or(())?;
    let oas = ips.min(cfg.oas());
    let ttb = dw1 & TTB0;
    if ttb >> oas != 0 {
        return Err(());
    }
    let httu = cfg.httu();
    Ok(Cd {
        asid,
        walk: ArmS1Config {
            ttb: PhysAddr::new(ttb),
            granule,
            t0sz,
            oas,
            mair: dw3,
            hierarchical_permissions: true,
            wxn: dw0 & WXN != 0,
            hardware_access_flag: httu >= 1 && dw0 & HA != 0,
            hardware_dirty: httu >= 2 && dw0 & HD != 0,
            strict_res0: false,
        },
        epd0: dw0 & EPD0 != 0,
        record: dw0 & R != 0,
        stall: dw0 & S != 0,
    })
}
