//! Command execution (§2.4 "Commands"): fetched from the head while `CmdBufEn` is set and the
//! head is not the tail; an illegal opcode or reserved bit, or an unreadable entry, stops the
//! buffer with the head on the command (`CmdBufRun` clear) and logs ILLEGAL_COMMAND_ERROR (5)
//! or COMMAND_HARDWARE_ERROR (6) with the command's address.
//!
//! Order (§2.4, COMPLETION_WAIT): a COMPLETION_WAIT completes once every command before it
//! has completed; that is the only order software can rely on. By default each command takes
//! effect as it is fetched (QEMU's order); with
//! [`devtab_invalidation_at_wait`](super::AmdViModelConfig::devtab_invalidation_at_wait) an
//! INVALIDATE_DEVTAB_ENTRY takes effect only when the next COMPLETION_WAIT completes, after
//! the commands issued between them. A device's request set with
//! [`request_during_commands`](super::AmdViModel::request_during_commands) is translated after
//! every command executed, as a unit translates while it runs commands.

use super::{countdown, regs, State, EFR_IA_SUP};
use crate::sim::arena::PhysMem;

const EVENT_ILLEGAL_COMMAND: u64 = 0x5;
const EVENT_COMMAND_HARDWARE: u64 = 0x6;
const EVENT_IOTLB_INV_TIMEOUT: u64 = 0x7;

/// What an `S`-encoded address covers: (first byte, log2 size); 64 is everything.
///
/// The unit reads address bits 51:12 and takes bits 63:52 as copies of bit 51 (Linux
/// `build_inv_address`: "Bits 63:52 are sign extended"); with `S`, a first clear bit at 51
/// or above is every page (48882 Table 14's example encodings, as QEMU reads them).
pub(super) fn decode_range(q1: u64) -> (u64, u32) {
    let addr = ((((q1 & !0xFFF) << 12) as i64) >> 12) as u64;
    if q1 & 1 == 0 {
        return (addr, 12);
    }
    let mut n = 12;
    while n < 51 && addr & (1 << n) != 0 {
        n += 1;
    }
    if n >= 51 {
        return (0, 64);
    }
    let log2 = n + 1;
    (addr & !((1u64 << log2) - 1), log2)
}

enum Outcome {
    Done,
    Illegal,
    Stall,
}

impl State<'_> {
    /// Runs commands until the buffer is empty, stopped or stalled.
    pub(super) fn run_commands(&mut self) {
        if self.control & regs::CTRL_CMD_BUF_EN == 0 || self.status & regs::ST_CMD_BUF_RUN == 0 {
            return;
        }
        let size = Self::ring_size(self.cmd_base);
        // Bounded: a full lap at most (the tail may not pass the head).
        for _ in 0..size / 16 {
            if self.cmd_head == self.cmd_tail {
                return;
            }
            let at = Self::ring_addr(self.cmd_base) + self.cmd_head;
            let unreadable = countdown(&mut self.inj.hw_error_at);
            if unreadable {
                self.stats.injections_fired += 1;
            }
            let raw = match (self.mem.read_u64(at), self.mem.read_u64(at + 8)) {
                _ if unreadable => None,
                (Some(a), Some(b)) => Some([a, b]),
                _ => None,
            };
            let outcome = match raw {
                None => {
                    self.stop(EVENT_COMMAND_HARDWARE, at);
                    self.stats.command_hardware_errors += 1;
                    return;
                }
                Some(_) if countdown(&mut self.inj.illegal_at) => {
                    self.stats.injections_fired += 1;
                    Outcome::Illegal
                }
                Some(c) => self.execute(c, at),
            };
            match outcome {
                Outcome::Done => {
                    if let (Some(log), Some(c)) = (self.log.as_mut(), raw) {
                        log.push(c);
                    }
                    self.cmd_head = (self.cmd_head + 16) % size;
                    self.busy_request();
                }
                Outcome::Stall => return,
                Outcome::Illegal => {
                    self.stop(EVENT_ILLEGAL_COMMAND, at);
                    self.stats.illegal_commands += 1;
                    return;
                }
            }
        }
    }

    fn stop(&mut self, code: u64, at: u64) {
        self.status &= !regs::ST_CMD_BUF_RUN;
        self.log_event([code << 60, at]);
    }

    fn execute(&mut self, c: [u64; 2], at: u64) -> Outcome {
        let opcode = c[0] >> 60;
        match opcode {
            0x1 => {
                // COMPLETION_WAIT: S bit 0, I bit 1, store address 51:3; reserved 59:52.
                if c[0] & 0x0FF0_0000_0000_0000 != 0 {
                    return Outcome::Illegal;
                }
                if !self.inj.stall_waits && countdown(&mut self.inj.stall_wait_at) {
                    self.inj.stall_waits = true;
                }
                if self.inj.stall_waits {
                    self.stats.injections_fired += 1;
                    return Outcome::Stall;
                }
                // Every earlier command has completed: the entries invalidated are gone now.
                for device in core::mem::take(&mut self.pending_devtab) {
                    self.dte_cache.remove(&device);
                }
                if c[0] & 1 != 0 {
                    let addr = c[0] & 0x000F_FFFF_FFFF_FFF8;
                    if !self.mem.write_u64(addr, c[1]) {
                        self.stop(EVENT_COMMAND_HARDWARE, addr);
                        self.stats.command_hardware_errors += 1;
                        return Outcome::Stall;
                    }
                    self.stats.completion_stores += 1;
                }
                if c[0] & 2 != 0 {
                    self.status |= regs::ST_COM_WAIT_INT;
                    self.stats.completion_interrupts += 1;
                }
                self.stats.completion_waits += 1;
            }
            0x2 => {
                if c[0] & 0x0FFF_FFFF_FFFF_0000 != 0 || c[1] != 0 {
                    return Outcome::Illegal;
                }
                if self.cfg.devtab_invalidation_at_wait {
                    self.pending_devtab.push(c[0] as u16);
                } else {
                    self.dte_cache.remove(&(c[0] as u16));
                }
                self.stats.invalidate_devtab += 1;
            }
            0x3 => {
                let domain = (c[0] >> 32) as u16;
                let (first, log2) = decode_range(c[1]);
                let pde = c[1] & 2 != 0;
                // GN: the guest translations of the PASID (bits 19:0), else the host ones.
                let pasid = (c[1] & 4 != 0).then_some((c[0] & 0xF_FFFF) as u32);
                self.invalidate_pages(domain, pasid, first, log2, pde && pasid.is_none());
                match (c[1] & 1 != 0, log2) {
                    (false, _) => self.stats.invalidate_pages_page += 1,
                    (true, 64) => self.stats.invalidate_pages_all += 1,
                    (true, _) => self.stats.invalidate_pages_range += 1,
                }
            }
            0x4 => {
                self.stats.invalidate_iotlb += 1;
                let dev = c[0] & 0xFFFF;
                if self.inj.iotlb_timeout {
                    self.stats.injections_fired += 1;
                    // §2.5 IOTLB_INV_TIMEOUT: DeviceID and the physical address of the
                    // command that timed out; command processing goes on.
                    self.inj.iotlb_timeout = false;
                    self.stats.iotlb_timeouts += 1;
                    self.log_event([EVENT_IOTLB_INV_TIMEOUT << 60 | dev, at]);
                } else {
                    // DeviceID 15:0; PASID[15:8] in bits 23:16 and PASID[7:0] in bits 55:48
                    // (the second doubleword's 23:16), meaningful with GN (second quadword
                    // bit 2); the address with S as INVALIDATE_IOMMU_PAGES's.
                    let (first, log2) = decode_range(c[1]);
                    let pasid = (c[1] & 4 != 0)
                        .then_some(((c[0] >> 16) & 0xFF) << 8 | (c[0] >> 48) & 0xFF)
                        .map(|p| p as u32);
                    self.invalidate_atc(dev as u16, pasid, first, log2);
                }
            }
            0x5 => {
                if c[0] & 0x0FFF_FFFF_FFFF_0000 != 0 || c[1] != 0 {
                    return Outcome::Illegal;
                }
                self.stats.invalidate_interrupt_table += 1;
            }
            0x8 => {
                if self.cfg.efr & EFR_IA_SUP == 0 {
                    return Outcome::Illegal;
                }
                self.dte_cache.clear();
                self.iotlb.clear();
                self.pde_cache.clear();
                self.stats.invalidate_all += 1;
            }
            _ => return Outcome::Illegal,
        }
        Outcome::Done
    }

    /// The request of [`request_during_commands`](super::AmdViModel::request_during_commands),
    /// once; its answer matters only through what it caches.
    fn busy_request(&mut self) {
        let Some(r) = self.busy else {
            return;
        };
        let _ = if r.ats {
            self.ats_request(r.device, r.pasid, r.iova, r.write)
        } else {
            self.stats.translations += 1;
            self.translate(r.device, r.pasid.map(|p| p & 0xF_FFFF), r.iova, r.write)
        };
    }

    fn invalidate_pages(
        &mut self,
        domain: u16,
        pasid: Option<u32>,
        first: u64,
        log2: u32,
        pde: bool,
    ) {
        let last = if log2 >= 64 {
            u64::MAX
        } else {
            first + ((1u64 << log2) - 1)
        };
        self.iotlb.retain(|e| {
            let e_last = e.iova + ((1u64 << e.size_log2) - 1);
            e.domain != domain || e.pasid != pasid || e_last < first || e.iova > last
        });
        if pde {
            self.pde_cache
                .retain(|p| p.domain != domain || p.last() < first || p.iova > last);
        }
    }

    /// INVALIDATE_IOTLB_PAGES reaching `device`: its ATC entries of `pasid` (`None`: those
    /// without PASID) that overlap the range go.
    fn invalidate_atc(&mut self, device: u16, pasid: Option<u32>, first: u64, log2: u32) {
        let last = if log2 >= 64 {
            u64::MAX
        } else {
            first + ((1u64 << log2) - 1)
        };
        self.atc.retain(|e| {
            let e_last = e.iova + ((1u64 << e.size_log2) - 1);
            e.device != device || e.pasid != pasid || e_last < first || e.iova > last
        });
    }
}

#[cfg(test)]
mod tests {
    use super::decode_range;

    #[test]
    fn s_bit_decoding() {
        assert_eq!(decode_range(0x5000), (0x5000, 12));
        assert_eq!(decode_range(0x4001), (0x4000, 13));
        assert_eq!(decode_range(0x9001), (0x8000, 14));
        assert_eq!(decode_range(0x7FFF_FFFF_FFFF_F001), (0, 64));
        assert_eq!(decode_range(0xF_F001), (0, 21));
        // Bits 63:52 are bit 51's copies: 2^56 is read as 0, 2^52 - 4 KiB as its sign
        // extension; a first clear bit at 51 or above is everything.
        assert_eq!(decode_range(1 << 56), (0, 12));
        assert_eq!(
            decode_range(0xF_FFFF_FFFF_F000),
            (0xFFFF_FFFF_FFFF_F000, 12)
        );
        assert_eq!(decode_range(0x7_FFFF_FFFF_F001), (0, 64));
        assert_eq!(decode_range(0x3_FFFF_FFFF_F001), (0, 51));
    }
}
