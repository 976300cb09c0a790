//! The invalidation queue processor (VT-d spec rev 4.1, §6.5.2 "Queued Invalidation Interface";
//! descriptor formats in its subsections; errors in "Hardware Handling of Queued Invalidation
//! Interface Errors"; FSTS and IQERCD in §11.4).
//!
//! On every write to IQT (and when queued invalidation is enabled, or a queue error is cleared)
//! the model fetches and executes the descriptors from IQH up to IQT at once, in order.
//!
//! Descriptor layout (128-bit; in the 256-bit form, IQA.DW = 1, bits 255:128 are reserved for
//! every type this model knows). Type = bits 11:9 (type[6:4]) : 3:0 (type[3:0]).
//!
//! | type | name | fields (low qword / high qword) |
//! |---|---|---|
//! | 0x1 | context-cache | 5:4 G (01 global, 10 domain, 11 device), 31:16 DID, 47:32 SID, 49:48 FM |
//! | 0x2 | IOTLB | 5:4 G (01 global, 10 domain, 11 page), 6 DW, 7 DR, 31:16 DID / 5:0 AM, 6 IH, 63:12 ADDR |
//! | 0x3 | device-TLB | 15:12 PFSID[3:0], 20:16 MIP, 47:32 SID, 63:52 PFSID[15:4] / 0 S, 63:12 ADDR |
//! | 0x4 | interrupt-entry-cache | 4 G (index-selective), 31:27 IM, 47:32 IIDX |
//! | 0x5 | invalidation wait | 4 IF, 5 SW, 6 FN, 7 PD, 63:32 status data / 63:2 status address |
//! | 0x6 | PASID-based IOTLB | 5:4 G (10 PASID, 11 page-in-PASID), 31:16 DID, 51:32 PASID / 5:0 AM, 6 IH, 63:12 ADDR |
//! | 0x7 | PASID-cache | 5:4 G (00 domain, 01 PASID, 11 global), 31:16 DID, 51:32 PASID |
//! | 0x9 | page group response (with ECAP.PRS; `prq.rs`) | 4 PP, 15:12 response code, 31:16 RID, 51:32 PASID / 11:3 PRGI |
//! | 0x8 | PASID-based device-TLB | 8:4 MIP, 15:12 PFSID[3:0], 31:16 SID, 51:32 PASID, 63:52 PFSID[15:4] / 0 G, 11 S, 63:12 ADDR |
//!
//! Rejected like hardware, with FSTS.IQE set, IQH left on the offending descriptor and processing
//! stopped until software clears IQE (or, with `VtdModelConfig::iqe_clear_resumes` off, as QEMU,
//! until the next IQT write after that): an unknown type, a reserved granularity, a reserved bit
//! set, a type the unit does not support (device-TLB without ECAP.DT, PASID-based types without
//! ECAP.SMTS, interrupt-entry-cache without ECAP.IR), a PASID-based type (0x6-0x8) in a 128-bit
//! queue (the model's reading: those types are defined only in the 256-bit form), an address
//! mask above CAP.MAMV, and a tail that is outside the queue or (DW = 1) not 256-bit aligned.
//!
//! IQERCD.IQEI, as the model sets it (its own numbering, documented in [`Iqei`](super::Iqei)).

use super::arena::PhysMem;
use super::cache::{ContextGranularity, IotlbGranularity, PasidCacheGranularity};
use super::regs::*;
use super::{bits, countdown, Iqei, State};

// Reserved bits of each descriptor type: low qword, or high qword (`_HI`).
const CC_RESERVED: u64 = bits(8, 6) | bits(15, 12) | bits(63, 50);
const IOTLB_RESERVED: u64 = 1 << 8 | bits(15, 12) | bits(63, 32);
const IOTLB_HI_RESERVED: u64 = bits(11, 7);
const DEVTLB_RESERVED: u64 = bits(8, 4) | bits(31, 21) | bits(51, 48);
/// `PFSID[3:0]` (15:12) and `PFSID[15:4]` (63:52) of both device-TLB forms: reserved without
/// `ECAP.DIT`.
const PFSID_BITS: u64 = bits(15, 12) | bits(63, 52);
const DEVTLB_HI_RESERVED: u64 = bits(11, 1);
const IEC_RESERVED: u64 = bits(8, 5) | bits(26, 12) | bits(63, 48);
const WAIT_RESERVED: u64 = 1 << 8 | bits(31, 12);
const WAIT_HI_RESERVED: u64 = bits(1, 0);
const PIOTLB_RESERVED: u64 = bits(8, 6) | bits(15, 12) | bits(63, 52);
const PC_RESERVED: u64 = bits(8, 6) | bits(15, 12) | bits(63, 52);
const PDEVTLB_HI_RESERVED: u64 = bits(10, 1);

/// Descriptor types (§6.5.2).
pub(crate) const TYPE_CONTEXT_CACHE: u8 = 0x1;
pub(crate) const TYPE_IOTLB: u8 = 0x2;
pub(crate) const TYPE_DEVICE_TLB: u8 = 0x3;
pub(crate) const TYPE_IEC: u8 = 0x4;
pub(crate) const TYPE_WAIT: u8 = 0x5;
pub(crate) const TYPE_PIOTLB: u8 = 0x6;
pub(crate) const TYPE_PASID_CACHE: u8 = 0x7;
pub(crate) const TYPE_PASID_DEVICE_TLB: u8 = 0x8;

/// What executing one descriptor did.
enum Outcome {
    /// Done; move on.
    Done,
    /// Rejected: IQE with this IQEI; the head stays.
    Invalid(Iqei),
    /// A wait that does not complete (injected stall): the head stays, processing pauses.
    Stalled,
    /// A device-TLB invalidation timed out: ITE; the head moves past the descriptor and the
    /// next wait descriptor, which is aborted.
    TimedOut { sid: u16 },
}

fn field(v: u64, hi: u32, lo: u32) -> u64 {
    (v & bits(hi, lo)) >> lo
}

impl State<'_> {
    fn desc_bytes(&self) -> u64 {
        if self.iqa & IQA_DW != 0 {
            32
        } else {
            16
        }
    }

    fn queue_bytes(&self) -> u64 {
        4096u64 << (self.iqa & IQA_QS)
    }

    fn queue_error(&mut self, iqei: Iqei) {
        self.fsts |= FSTS_IQE;
        self.iqercd = (self.iqercd & !IQERCD_IQEI) | iqei as u64;
        self.stats.iqe += 1;
        self.raise_fault_event();
    }

    /// Runs the queue from IQH to IQT, if the unit is in a state to.
    pub(crate) fn process_queue(&mut self) {
        if self.gsts & G_QIE == 0 || self.fsts & (FSTS_IQE | FSTS_ITE) != 0 {
            return;
        }
        let (size, step) = (self.queue_bytes(), self.desc_bytes());
        if self.iqt >= size || self.iqt % step != 0 {
            let why = if self.iqt >= size {
                Iqei::TailBeyondQueue
            } else {
                Iqei::TailMisaligned
            };
            return self.queue_error(why);
        }
        // One descriptor per iteration; the bound is the queue length, so a bug cannot spin.
        for _ in 0..size / step {
            if self.iqh == self.iqt {
                return;
            }
            let Some(desc) = self.fetch(self.iqh) else {
                return self.queue_error(Iqei::FetchError);
            };
            match self.execute(desc) {
                Outcome::Done => self.iqh = (self.iqh + step) % size,
                Outcome::Invalid(why) => return self.queue_error(why),
                Outcome::Stalled => return,
                Outcome::TimedOut { sid } => {
                    self.abort_to_next_wait();
                    self.fsts |= FSTS_ITE;
                    self.iqercd =
                        (self.iqercd & !bits(47, 32)) | u64::from(sid) << IQERCD_ITESID_SHIFT;
                    self.stats.ite += 1;
                    self.raise_fault_event();
                    return;
                }
            }
        }
    }

    /// After a time-out: skip the device-TLB descriptor and everything up to and including
    /// the next wait descriptor, whose status write is not done (it is aborted).
    fn abort_to_next_wait(&mut self) {
        let (size, step) = (self.queue_bytes(), self.desc_bytes());
        self.iqh = (self.iqh + step) % size;
        for _ in 0..size / step {
            if self.iqh == self.iqt {
                return;
            }
            let ty = self.fetch(self.iqh).map(|d| desc_type(d[0]));
            self.iqh = (self.iqh + step) % size;
            self.stats.aborted_descriptors += 1;
            if ty == Some(TYPE_WAIT) {
                return;
            }
        }
    }

    /// Reads the descriptor at queue offset `off`.
    fn fetch(&self, off: u64) -> Option<[u64; 4]> {
        let base = (self.iqa & IQA_BASE).checked_add(off)?;
        let mut d = [0u64; 4];
        let n = (self.desc_bytes() / 8) as usize;
        for (i, q) in d.iter_mut().enumerate().take(n) {
            *q = self.mem.read_u64(base.checked_add(8 * i as u64)?)?;
        }
        Some(d)
    }

    fn execute(&mut self, d: [u64; 4]) -> Outcome {
        if countdown(&mut self.inject.iqe_at) {
            self.stats.injections_fired += 1;
            return Outcome::Invalid(Iqei::InvalidDescriptor);
        }
        let wide = self.iqa & IQA_DW != 0;
        if d[2] != 0 || d[3] != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let ty = desc_type(d[0]);
        let ecap = self.cfg.ecap;
        let supported = match ty {
            TYPE_CONTEXT_CACHE | TYPE_IOTLB | TYPE_WAIT => true,
            TYPE_DEVICE_TLB => ecap & ECAP_DT != 0,
            TYPE_IEC => ecap & ECAP_IR != 0,
            TYPE_PIOTLB | TYPE_PASID_CACHE => ecap & ECAP_SMTS != 0 && wide,
            TYPE_PASID_DEVICE_TLB => ecap & ECAP_SMTS != 0 && ecap & ECAP_DT != 0 && wide,
            super::prq::TYPE_PAGE_GROUP_RESPONSE => ecap & ECAP_PRS != 0,
            _ => false,
        };
        if !supported {
            return Outcome::Invalid(Iqei::InvalidType);
        }
        let (lo, hi) = (d[0], d[1]);
        let outcome = match ty {
            TYPE_CONTEXT_CACHE => self.context_cache_desc(lo, hi),
            TYPE_IOTLB => self.iotlb_desc(lo, hi),
            TYPE_DEVICE_TLB => self.device_tlb_desc(lo, hi, false),
            TYPE_IEC => self.iec_desc(lo, hi),
            TYPE_WAIT => self.wait_desc(lo, hi),
            TYPE_PIOTLB => self.piotlb_desc(lo, hi),
            TYPE_PASID_CACHE => self.pasid_cache_desc(lo, hi),
            super::prq::TYPE_PAGE_GROUP_RESPONSE => {
                if self.page_group_response(lo, hi) {
                    Outcome::Done
                } else {
                    Outcome::Invalid(Iqei::ReservedBit)
                }
            }
            _ => self.device_tlb_desc(lo, hi, true),
        };
        if matches!(outcome, Outcome::Done | Outcome::TimedOut { .. }) {
            self.log.push(d);
        }
        outcome
    }

    fn context_cache_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & CC_RESERVED != 0 || hi != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let did = field(lo, 31, 16) as u16;
        let g = match field(lo, 5, 4) {
            1 => ContextGranularity::Global,
            2 => ContextGranularity::Domain(did),
            3 => ContextGranularity::Device {
                did,
                sid: field(lo, 47, 32) as u16,
                fm: field(lo, 49, 48) as u8,
            },
            _ => return Outcome::Invalid(Iqei::ReservedBit),
        };
        let scalable = self.scalable_mode();
        self.caches.invalidate_context(g, scalable);
        self.stats.context_cache_descs += 1;
        Outcome::Done
    }

    fn iotlb_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & IOTLB_RESERVED != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let did = field(lo, 31, 16) as u16;
        let g = match field(lo, 5, 4) {
            1 => IotlbGranularity::Global,
            2 => IotlbGranularity::Domain(did),
            3 => {
                if hi & IOTLB_HI_RESERVED != 0 {
                    return Outcome::Invalid(Iqei::ReservedBit);
                }
                let am = field(hi, 5, 0) as u8;
                if u64::from(am) > self.mamv() {
                    return Outcome::Invalid(Iqei::ReservedBit);
                }
                self.page_or_domain(did, hi & bits(63, 12), am, hi & 1 << 6 != 0)
            }
            _ => return Outcome::Invalid(Iqei::ReservedBit),
        };
        match g {
            IotlbGranularity::Global => self.stats.iotlb_global += 1,
            IotlbGranularity::Domain(_) => self.stats.iotlb_domain += 1,
            IotlbGranularity::Page { .. } => self.stats.iotlb_page += 1,
        }
        self.caches.invalidate_iotlb(g);
        Outcome::Done
    }

    fn device_tlb_desc(&mut self, lo: u64, hi: u64, pasid_form: bool) -> Outcome {
        let bad = if pasid_form {
            hi & PDEVTLB_HI_RESERVED != 0
        } else {
            lo & DEVTLB_RESERVED != 0 || hi & DEVTLB_HI_RESERVED != 0
        };
        let dit = self.cfg.ecap & ECAP_DIT != 0;
        if bad || (!dit && lo & PFSID_BITS != 0) {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let sid = if pasid_form {
            field(lo, 31, 16)
        } else {
            field(lo, 47, 32)
        } as u16;
        let pfsid = (field(lo, 63, 52) << 4 | field(lo, 15, 12)) as u16;
        let misrouted = dit && pfsid != self.cfg.physical_function(sid);
        if misrouted {
            self.stats.pfsid_mismatches += 1;
        }
        if pasid_form {
            self.stats.pasid_device_tlb += 1;
        } else {
            self.stats.device_tlb += 1;
        }
        let ice = countdown(&mut self.inject.ice_at);
        if ice {
            self.stats.injections_fired += 1;
            self.fsts |= FSTS_ICE;
            self.iqercd = (self.iqercd & !bits(63, 48)) | u64::from(sid) << IQERCD_ICESID_SHIFT;
            self.stats.ice += 1;
            self.raise_fault_event();
        }
        if countdown(&mut self.inject.ite_at) {
            self.stats.injections_fired += 1;
            return Outcome::TimedOut { sid };
        }
        if !ice && !misrouted {
            self.invalidate_atc(lo, hi, sid, pasid_form);
        }
        Outcome::Done
    }

    /// What a completed device-TLB invalidation removes from the device's ATC: the range the
    /// address and S bit encode (S is bit 0 of the high qword in the device-TLB form, bit 11 in
    /// the PASID-based form, whose bit 0 is G; PCIe ATS: with S set, the run of ones from bit
    /// 12 up gives the size, `2^(13 + ones)` bytes).
    fn invalidate_atc(&mut self, lo: u64, hi: u64, sid: u16, pasid_form: bool) {
        let addr = hi & bits(63, 12);
        let s = if pasid_form { hi & 1 << 11 } else { hi & 1 };
        let size_log2 = if s == 0 {
            12
        } else {
            13 + (addr >> 12).trailing_ones()
        };
        let base = addr & !(1u64.checked_shl(size_log2).unwrap_or(0).wrapping_sub(1));
        let (pasid, global) = if pasid_form {
            (Some(field(lo, 51, 32) as u32), hi & 1 != 0)
        } else {
            (None, false)
        };
        self.caches
            .invalidate_atc(sid, pasid, global, base, size_log2.min(64));
    }

    fn iec_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & IEC_RESERVED != 0 || hi != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        self.stats.iec += 1;
        Outcome::Done
    }

    fn wait_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & WAIT_RESERVED != 0 || hi & WAIT_HI_RESERVED != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        if self.inject.stall_waits || self.inject.stall_until_queue_off {
            self.stats.injections_fired += 1;
            return Outcome::Stalled;
        }
        if lo & 1 << 5 != 0 {
            // SW: a 32-bit write of the status data at the 4-byte aligned status address.
            let addr = hi & bits(63, 2);
            let data = lo >> 32;
            let word = addr & !7;
            let shift = (addr & 4) * 8;
            let old = self.mem.read_u64(word);
            let new = old.map(|o| (o & !(0xffff_ffffu64 << shift)) | data << shift);
            if !new.is_some_and(|n| self.mem.write_u64(word, n)) {
                self.stats.status_write_errors += 1;
            }
        }
        if lo & 1 << 4 != 0 {
            self.ics |= ICS_IWC;
            if self.iectl & EVENT_IM != 0 {
                self.iectl |= EVENT_IP;
            } else {
                self.stats.completion_interrupts += 1;
            }
        }
        self.stats.wait += 1;
        Outcome::Done
    }

    fn piotlb_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & PIOTLB_RESERVED != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let did = field(lo, 31, 16) as u16;
        let pasid = field(lo, 51, 32) as u32;
        match field(lo, 5, 4) {
            2 => {
                self.caches.invalidate_piotlb(did, pasid, None);
                self.stats.piotlb_pasid += 1;
            }
            3 => {
                let am = field(hi, 5, 0) as u8;
                if hi & IOTLB_HI_RESERVED != 0 || u64::from(am) > self.mamv() {
                    return Outcome::Invalid(Iqei::ReservedBit);
                }
                let ih = hi & 1 << 6 != 0;
                self.caches
                    .invalidate_piotlb(did, pasid, Some((hi & bits(63, 12), am, ih)));
                self.stats.piotlb_page += 1;
            }
            _ => return Outcome::Invalid(Iqei::ReservedBit),
        }
        Outcome::Done
    }

    fn pasid_cache_desc(&mut self, lo: u64, hi: u64) -> Outcome {
        if lo & PC_RESERVED != 0 || hi != 0 {
            return Outcome::Invalid(Iqei::ReservedBit);
        }
        let did = field(lo, 31, 16) as u16;
        let g = match field(lo, 5, 4) {
            0 => PasidCacheGranularity::Domain(did),
            1 => PasidCacheGranularity::Pasid {
                did,
                pasid: field(lo, 51, 32) as u32,
            },
            3 => PasidCacheGranularity::Global,
            _ => return Outcome::Invalid(Iqei::ReservedBit),
        };
        self.caches.invalidate_pasid_cache(g);
        self.stats.pasid_cache += 1;
        Outcome::Done
    }

    /// CAP.MAMV.
    pub(crate) fn mamv(&self) -> u64 {
        (self.cfg.cap >> CAP_MAMV_SHIFT) & 0x3f
    }

    /// Page-selective when CAP.PSI, else the domain-selective invalidation hardware does instead.
    pub(crate) fn page_or_domain(&self, did: u16, addr: u64, am: u8, ih: bool) -> IotlbGranularity {
        if self.cfg.cap & CAP_PSI != 0 {
            IotlbGranularity::Page { did, addr, am, ih }
        } else {
            IotlbGranularity::Domain(did)
        }
    }
}

/// The 7-bit descriptor type: bits 11:9 then 3:0.
pub(crate) fn desc_type(lo: u64) -> u8 {
    ((field(lo, 11, 9) << 4) | field(lo, 3, 0)) as u8
}
