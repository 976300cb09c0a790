//! Register semantics (VT-d spec rev 4.1, §10.4 "Register Descriptions" summary and §11.4):
//! what reads return and what writes do.
//!
//! - 64-bit registers may be accessed as two 32-bit halves. A write to the half holding the
//!   command bit (CCMD.ICC, IOTLB.IVT: the upper half) triggers the command; for IQT the lower
//!   half (the offset) is the doorbell.
//! - GCMD is write-only (reads 0). One-shot commands (SRTP, SIRTP, WBF) act once per write; the
//!   persistent bits (TE, QIE, IRE, CFI) are the state software wants, and GSTS follows them.
//!   Handshakes complete before the write returns, so GSTS already shows the result (unless
//!   [`Injection::IgnoreGcmd`](super::Injection::IgnoreGcmd)). SRTP latches RTADDR: TTM 00 legacy,
//!   01 scalable (only with ECAP.SMTS), anything else leaves a root that faults every request.
//!   WBFS reads 0: the flush is complete at once (unless
//!   [`Injection::StallWriteBufferFlush`](super::Injection::StallWriteBufferFlush)). Enabling
//!   QIE resets IQH to 0.
//! - FSTS: PFO, AFO, APF, IQE, ICE, ITE are RW1C; PPF and FRI are computed from the records.
//!   Clearing IQE or ITE lets the queue run again from IQH.
//! - Register-based invalidation (CCMD, IOTLB) while queued invalidation is enabled is refused:
//!   the command bit clears with actual granularity 00 and nothing is invalidated.
//! - Reserved and unknown offsets inside the 4 KiB window read 0 and ignore writes; misaligned
//!   or out-of-window accesses read all ones, like [`crate::mmio::Mmio`].

use super::cache::{ContextGranularity, IotlbGranularity};
use super::regs::*;
use super::{Root, RootMode, State};

const LOW: u64 = 0xffff_ffff;
const HIGH: u64 = !LOW;

impl State<'_> {
    fn iotlb_base(&self) -> usize {
        ((self.cfg.ecap >> ECAP_IRO_SHIFT) & 0x3ff) as usize * 16
    }

    fn frcd_offset(&self, base: usize) -> Option<usize> {
        let start = self.fault_record_base();
        let off = base.checked_sub(start)?;
        (off < self.records.len() * 16).then_some(off)
    }

    /// The 64-bit register at `base`, if one is there.
    fn reg64(&self, base: usize) -> Option<u64> {
        let iotlb = self.iotlb_base();
        Some(match base {
            CAP => self.cfg.cap,
            ECAP => self.cfg.ecap,
            RTADDR => self.rtaddr,
            CCMD => self.ccmd,
            IQH => self.iqh,
            IQT => self.iqt,
            IQA => self.iqa,
            IQERCD => self.iqercd,
            IRTA => self.irta,
            PQH | PQT | PQA => return self.prq_reg64(base),
            PHMBASE | PHMLIMIT => return self.pmr.reg64(base),
            _ if base == iotlb => self.iva,
            _ if base == iotlb + 8 => self.iotlb_reg,
            _ => return self.frcd_offset(base).and_then(|off| self.read_frcd(off)),
        })
    }

    fn reg32(&self, offset: usize) -> u32 {
        match offset {
            VER => self.cfg.ver,
            GSTS => self.gsts,
            FSTS => self.read_fsts(),
            FECTL => self.fectl,
            FEDATA => self.fedata,
            FEADDR => self.feaddr,
            FEUADDR => self.feuaddr,
            ICS => self.ics,
            IECTL => self.iectl,
            IEDATA => self.iedata,
            IEADDR => self.ieaddr,
            IEUADDR => self.ieuaddr,
            // GCMD is write-only; everything else is reserved.
            _ => self
                .pmr
                .reg32(offset)
                .or_else(|| self.prq_reg32(offset))
                .unwrap_or(0),
        }
    }

    pub(crate) fn read32(&self, offset: usize) -> u32 {
        if offset % 4 != 0 || offset >= WINDOW {
            return u32::MAX;
        }
        match self.reg64(offset & !7) {
            Some(v) if offset % 8 == 0 => v as u32,
            Some(v) => (v >> 32) as u32,
            None => self.reg32(offset),
        }
    }

    pub(crate) fn read64(&self, offset: usize) -> u64 {
        if offset % 8 != 0 || offset >= WINDOW {
            return u64::MAX;
        }
        self.reg64(offset).unwrap_or_else(|| {
            u64::from(self.reg32(offset)) | u64::from(self.reg32(offset + 4)) << 32
        })
    }

    /// Counts a write at `offset`; whether an injection makes the unit ignore it.
    fn ignored(&mut self, offset: usize) -> bool {
        *self.writes.entry(offset & !7).or_default() += 1;
        let ignored = self
            .inject
            .ignore_write
            .is_some_and(|o| o & !7 == offset & !7);
        if ignored {
            self.stats.injections_fired += 1;
        }
        ignored
    }

    pub(crate) fn write32(&mut self, offset: usize, value: u32) {
        if offset % 4 != 0 || offset >= WINDOW || self.ignored(offset) {
            return;
        }
        let base = offset & !7;
        if self.reg64(base).is_some() {
            let (v, mask) = if offset % 8 == 0 {
                (u64::from(value), LOW)
            } else {
                (u64::from(value) << 32, HIGH)
            };
            return self.write_reg64(base, v, mask);
        }
        self.write_reg32(offset, value);
    }

    pub(crate) fn write64(&mut self, offset: usize, value: u64) {
        if offset % 8 != 0 || offset >= WINDOW || self.ignored(offset) {
            return;
        }
        if self.reg64(offset).is_some() {
            return self.write_reg64(offset, value, u64::MAX);
        }
        self.write_reg32(offset, value as u32);
        self.write_reg32(offset + 4, (value >> 32) as u32);
    }

    /// A write of the bits in `mask` of the 64-bit register at `base`.
    fn write_reg64(&mut self, base: usize, value: u64, mask: u64) {
        let merge = |old: u64| old & !mask | value & mask;
        let iotlb = self.iotlb_base();
        match base {
            RTADDR => self.rtaddr = merge(self.rtaddr),
            IRTA => self.irta = merge(self.irta),
            PQH | PQT | PQA => {
                let old = self.prq_reg64(base).unwrap_or(0);
                self.prq_write64(base, merge(old));
            }
            IQA => self.iqa = merge(self.iqa) & (IQA_BASE | IQA_DW | IQA_QS),
            IQT => {
                self.iqt = merge(self.iqt) & IQ_OFFSET;
                self.process_queue();
            }
            CCMD => {
                self.ccmd = merge(self.ccmd);
                if mask & CCMD_ICC != 0 && self.ccmd & CCMD_ICC != 0 {
                    self.context_command();
                }
            }
            _ if base == iotlb => self.iva = merge(self.iva),
            _ if base == iotlb + 8 => {
                self.iotlb_reg = merge(self.iotlb_reg);
                if mask & IOTLB_IVT != 0 && self.iotlb_reg & IOTLB_IVT != 0 {
                    self.iotlb_command();
                }
            }
            PHMBASE | PHMLIMIT => {
                let (cap, haw) = (self.cfg.cap, self.cfg.haw);
                self.pmr.write64(cap, haw, base, value, mask);
            }
            _ => {
                if let Some(off) = self.frcd_offset(base) {
                    self.write_frcd(off, value & mask);
                }
            }
        }
    }

    fn write_reg32(&mut self, offset: usize, value: u32) {
        match offset {
            GCMD => self.write_gcmd(value),
            FSTS => {
                let clear = value & FSTS_RW1C & self.fsts;
                self.fsts &= !clear;
                let resume_iqe = clear & FSTS_IQE != 0 && self.cfg.iqe_clear_resumes;
                if resume_iqe || clear & FSTS_ITE != 0 {
                    self.process_queue();
                }
            }
            FECTL => self.write_fectl(value),
            FEDATA => self.fedata = value,
            FEADDR => self.feaddr = value & !3,
            FEUADDR => self.feuaddr = value,
            ICS => self.ics &= !(value & ICS_IWC),
            IECTL => {
                self.iectl = (self.iectl & EVENT_IP) | (value & EVENT_IM);
                if self.iectl & EVENT_IM == 0 && self.iectl & EVENT_IP != 0 {
                    self.iectl &= !EVENT_IP;
                    self.stats.completion_interrupts += 1;
                }
            }
            IEDATA => self.iedata = value,
            IEADDR => self.ieaddr = value & !3,
            IEUADDR => self.ieuaddr = value,
            _ => {
                let cap = self.cfg.cap;
                let was_on = self.pmr.reg32(PMEN).is_some_and(|v| v & PMEN_PRS != 0);
                if !self.pmr.write32(cap, offset, value) {
                    self.prq_write32(offset, value);
                    return;
                }
                let now_on = self.pmr.reg32(PMEN).is_some_and(|v| v & PMEN_PRS != 0);
                if was_on && !now_on && self.gsts & G_TE == 0 {
                    self.stats.pmr_off_before_te += 1;
                }
            }
        }
    }

    fn write_gcmd(&mut self, value: u32) {
        if self.inject.ignore_gcmd {
            self.stats.injections_fired += 1;
            return;
        }
        let ecap = self.cfg.ecap;
        if value & G_SRTP != 0 {
            let addr = self.rtaddr & RTADDR_RTA;
            let mode = match (self.rtaddr >> RTADDR_TTM_SHIFT) & 3 {
                0 => RootMode::Legacy,
                1 if ecap & ECAP_SMTS != 0 => RootMode::Scalable,
                _ => RootMode::Invalid,
            };
            self.root = Some(Root { addr, mode });
            self.gsts |= G_SRTP;
            self.stats.root_table_latches += 1;
        }
        if value & G_SIRTP != 0 && ecap & ECAP_IR != 0 {
            self.gsts |= G_SIRTP;
        }
        if value & G_WBF != 0 && self.cfg.cap & CAP_RWBF != 0 {
            if self.inject.stall_wbf {
                self.stats.injections_fired += 1;
                self.gsts |= G_WBF;
            } else {
                self.gsts &= !G_WBF;
                self.stats.write_buffer_flushes += 1;
            }
        }
        let qie_was = self.gsts & G_QIE != 0;
        let te_was = self.gsts & G_TE != 0;
        let mut persistent = G_TE;
        if ecap & ECAP_QI != 0 {
            persistent |= G_QIE;
        }
        if ecap & ECAP_IR != 0 {
            persistent |= G_IRE | G_CFI;
        }
        self.gsts = self.gsts & !persistent | value & persistent;
        if te_was && self.gsts & G_TE == 0 {
            self.stats.translation_disables += 1;
        }
        if qie_was && self.gsts & G_QIE == 0 {
            self.inject.stall_until_queue_off = false;
        }
        if !qie_was && self.gsts & G_QIE != 0 {
            self.iqh = 0;
            self.process_queue();
        }
    }

    /// CCMD with ICC set: a register-based context-cache invalidation.
    fn context_command(&mut self) {
        let v = self.ccmd;
        let did = (v & 0xffff) as u16;
        let cirg = (v >> CCMD_CIRG_SHIFT) & 3;
        let g = match cirg {
            1 => Some(ContextGranularity::Global),
            2 => Some(ContextGranularity::Domain(did)),
            3 => Some(ContextGranularity::Device {
                did,
                sid: ((v >> CCMD_SID_SHIFT) & 0xffff) as u16,
                fm: ((v >> CCMD_FM_SHIFT) & 3) as u8,
            }),
            _ => None,
        };
        let caig = match g {
            Some(g) if self.gsts & G_QIE == 0 => {
                let scalable = self.scalable_mode();
                self.caches.invalidate_context(g, scalable);
                self.stats.register_context_invalidations += 1;
                cirg
            }
            _ => {
                self.stats.register_invalidations_refused += 1;
                0
            }
        };
        self.ccmd = v & !(CCMD_ICC | 3 << CCMD_CAIG_SHIFT) | caig << CCMD_CAIG_SHIFT;
    }

    /// IOTLB_REG with IVT set: a register-based IOTLB invalidation (IVA_REG gives the page).
    fn iotlb_command(&mut self) {
        let v = self.iotlb_reg;
        let did = ((v >> IOTLB_DID_SHIFT) & 0xffff) as u16;
        let am = (self.iva & IVA_AM) as u8;
        let g = match (v >> IOTLB_IIRG_SHIFT) & 3 {
            1 => Some(IotlbGranularity::Global),
            2 => Some(IotlbGranularity::Domain(did)),
            3 if u64::from(am) <= self.mamv() => {
                let ih = self.iva & IVA_IH != 0;
                Some(self.page_or_domain(did, self.iva & IVA_ADDR, am, ih))
            }
            _ => None,
        };
        let iaig = match g {
            Some(g) if self.gsts & G_QIE == 0 => {
                self.caches.invalidate_iotlb(g);
                self.stats.register_iotlb_invalidations += 1;
                match g {
                    IotlbGranularity::Global => 1,
                    IotlbGranularity::Domain(_) => 2,
                    IotlbGranularity::Page { .. } => 3,
                }
            }
            _ => {
                self.stats.register_invalidations_refused += 1;
                0
            }
        };
        self.iotlb_reg = v & !(IOTLB_IVT | 3 << IOTLB_IAIG_SHIFT) | iaig << IOTLB_IAIG_SHIFT;
    }
}
