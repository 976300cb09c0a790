//! Protected memory regions (VT-d spec rev 4.1, register descriptions §11.4: `PMEN_REG`,
//! `PLMBASE_REG`, `PLMLIMIT_REG`, `PHMBASE_REG`, `PHMLIMIT_REG`; §10.4.16-§10.4.20 in rev 3):
//! DMA to a protected low- or high-memory region is blocked while `PMEN.PRS` reads set.
//!
//! Firmware (or a measured launch such as tboot) programs the regions and sets `PMEN.EPM`;
//! the regions exist only when `CAP.PLMR` (low) or `CAP.PHMR` (high) says so, and `PMEN` reads
//! 0 and ignores writes when neither does. The model's choices where the spec leaves them to
//! the implementation: regions are 2 MiB aligned (`N` = 21: base and limit bits 20:0 read 0),
//! a region covers `base ..= limit | (2 MiB - 1)` and is empty when `limit < base`, `PRS`
//! follows `EPM` at once, and a region blocks every DMA whose output address falls in it,
//! translated or not (with translation on the spec lets hardware block or not, so a driver
//! must not rely on either). Blocked requests are not recorded as faults (§11.4, `PMEN.EPM`).

use super::regs::*;

/// Protected-memory registers.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pmr {
    /// `PMEN_REG`: `EPM` (31) and `PRS` (0).
    pmen: u32,
    plmbase: u32,
    plmlimit: u32,
    phmbase: u64,
    phmlimit: u64,
}

/// Region base and limit fields: bits 20:0 are read-only 0 (2 MiB regions).
const REGION_LOW_BITS: u64 = (1 << 21) - 1;

impl Pmr {
    /// The 32-bit register at `offset`, if it is one of these.
    pub(crate) fn reg32(&self, offset: usize) -> Option<u32> {
        match offset {
            PMEN => Some(self.pmen),
            PLMBASE => Some(self.plmbase),
            PLMLIMIT => Some(self.plmlimit),
            _ => None,
        }
    }

    /// The 64-bit register at `base`, if it is one of these.
    pub(crate) fn reg64(&self, base: usize) -> Option<u64> {
        match base {
            PHMBASE => Some(self.phmbase),
            PHMLIMIT => Some(self.phmlimit),
            _ => None,
        }
    }

    /// A 32-bit write; false when `offset` is not one of these registers.
    pub(crate) fn write32(&mut self, cap: u64, offset: usize, value: u32) -> bool {
        let low = cap & CAP_PLMR != 0;
        let region = value & !(REGION_LOW_BITS as u32);
        match offset {
            PMEN if low || cap & CAP_PHMR != 0 => {
                let on = value & PMEN_EPM != 0;
                self.pmen = if on { PMEN_EPM | PMEN_PRS } else { 0 };
            }
            PLMBASE if low => self.plmbase = region,
            PLMLIMIT if low => self.plmlimit = region,
            PMEN | PLMBASE | PLMLIMIT => {}
            _ => return false,
        }
        true
    }

    /// A write of the bits in `mask` of a 64-bit register; false when `base` is not one of
    /// these. Bits at or above `haw` read 0.
    pub(crate) fn write64(
        &mut self,
        cap: u64,
        haw: u32,
        base: usize,
        value: u64,
        mask: u64,
    ) -> bool {
        let reg = match base {
            PHMBASE => &mut self.phmbase,
            PHMLIMIT => &mut self.phmlimit,
            _ => return false,
        };
        if cap & CAP_PHMR != 0 {
            let width = 1u64.checked_shl(haw).map_or(u64::MAX, |w| w - 1);
            *reg = (*reg & !mask | value & mask) & width & !REGION_LOW_BITS;
        }
        true
    }

    /// Whether a DMA to `pa` is blocked: `PRS` set and `pa` in a region `cap` has.
    pub(crate) fn blocks(&self, cap: u64, pa: u64) -> bool {
        let within = |base: u64, limit: u64| base <= pa && pa <= limit | REGION_LOW_BITS;
        self.pmen & PMEN_PRS != 0
            && ((cap & CAP_PLMR != 0 && within(u64::from(self.plmbase), u64::from(self.plmlimit)))
                || (cap & CAP_PHMR != 0 && within(self.phmbase, self.phmlimit)))
    }
}
