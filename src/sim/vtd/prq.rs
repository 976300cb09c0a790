//! The model's page request queue (VT-d spec rev 4.1, chapter 7 "Page Request": the Page
//! Request Descriptor, queue overflow and the Page Group Response Descriptor; §11.4 PQH 0xC0,
//! PQT 0xC8, PQA 0xD0, PRS 0xDC, PECTL 0xE0). Present only with `ECAP.PRS` (bit 29): without
//! it the registers are reserved (read 0, writes ignored) and devices' page requests are
//! refused.
//!
//! A device's request ([`VtdModel::page_request`](super::VtdModel::page_request)) is written at
//! PQT as a 256-bit descriptor (word 0: 7:0 type 1, 8 PASID Present, 31:16 RID, 51:32 PASID, 52
//! Execute Requested, 53 Privilege Mode Requested; word 1: 0 Read, 1 Write, 2 LPIG, 11:3 PRGI,
//! 63:12 address), PQT moves on and PRS.PPR is set (a page request event is counted when PPR
//! and PRO were both clear and PECTL.IM is clear). The queue is full when moving PQT would make
//! it equal PQH: the request is not written, PRO is set, and -- the model's reading of the
//! chapter -- a request with LPIG is answered by the unit itself with Success (the device
//! retries and asks again), one without LPIG is dropped. While PRO is set, every request is
//! handled that way.
//!
//! A page group response descriptor (invalidation queue type 0x9: word 0 4 PASID Present, 15:12
//! Response Code, 31:16 RID, 51:32 PASID; word 1 11:3 PRGI) answers the outstanding group of
//! that RID, PASID and index: the model records the response and, for Success, retries the
//! translation of every page of the group (what the device does next). A response that answers
//! no outstanding group is recorded as unexpected (hardware would pass it on to a device that
//! drops it; for a test it is a driver bug). A Stop Marker (PASID, LPIG, neither read nor write)
//! is queued like any request but opens no group: nothing answers it.
//!
//! With [`VtdModelConfig::pre_checked`](super::VtdModelConfig::pre_checked), a request is
//! queued only from a device whose scalable-mode context entry (translation on) is present
//! with `PRE` (§9.4 "Page Request Enable"; §11.4 PQA: software programs the queue before it
//! enables page requests in any context entry). Any other request is not written: the unit
//! answers one with LPIG itself, "Invalid Request" (the model's reading of chapter 7's page
//! request handling; the device's PRI then stops asking), and drops one without.

use std::vec::Vec;

use super::bits;
use super::regs::{ECAP_PRS, G_TE};
use super::{RootMode, State};
use crate::sim::walk::Access;

/// PQA 63:12 base, 2:0 PQS.
pub const PQA_BASE: u64 = bits(63, 12);
/// PQA 2:0: size, `2^PQS` 4 KiB pages.
pub const PQA_PQS: u64 = bits(2, 0);
/// PQH / PQT 18:5.
pub const PQ_OFFSET: u64 = bits(18, 5);
/// PRS 0: pending page request.
pub const PRS_PPR: u32 = 1 << 0;
/// PRS 1: page request overflow.
pub const PRS_PRO: u32 = 1 << 1;
/// Page group response code "Invalid Request" (PCIe PRI).
pub const INVALID_REQUEST: u8 = 0x1;
/// The page group response descriptor's type.
pub const TYPE_PAGE_GROUP_RESPONSE: u8 = 0x9;
/// Reserved bits of a page group response, word 0 (11:5 and 63:52).
pub const PGRP_RESERVED: u64 = bits(11, 5) | bits(63, 52);
/// Reserved bits of a page group response, word 1.
pub const PGRP_HI_RESERVED: u64 = bits(2, 0) | bits(63, 12);

/// A device's page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageRequest {
    /// Requester ID.
    pub sid: u16,
    /// PASID, if the request carries one.
    pub pasid: Option<u32>,
    /// The page asked for (bits 11:0 ignored).
    pub addr: u64,
    /// What the device wants to do there.
    pub access: Access,
    /// Page Request Group Index (9 bits).
    pub group: u16,
    /// Last page in group.
    pub last: bool,
}

impl PageRequest {
    /// A Stop Marker (PCIe PRI): a PASID, `last`, neither read nor write. It asks for no
    /// response.
    pub const fn is_stop_marker(&self) -> bool {
        self.pasid.is_some() && self.last && !self.access.read && !self.access.write
    }
}

/// What became of a page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageRequestOutcome {
    /// Written to the queue.
    Queued,
    /// The queue was full (or PRO set): PRO set, the request dropped; with LPIG the unit
    /// answered Success itself.
    Overflow,
    /// The unit has no page requests (`ECAP.PRS` clear), no queue is programmed, or (with
    /// `pre_checked`) the device's context entry does not enable them (with LPIG, answered
    /// "Invalid Request" by the unit).
    Refused,
}

/// A response the unit sent a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupResponse {
    /// Requester ID.
    pub sid: u16,
    /// PASID, if the response carries one.
    pub pasid: Option<u32>,
    /// Page Request Group Index.
    pub group: u16,
    /// Response code (0 Success, 1 Invalid Request, 0xF Response Failure).
    pub code: u8,
    /// Sent by the unit itself (queue overflow), not by software.
    pub automatic: bool,
    /// Whether it answered an outstanding group (false: a response nobody asked for).
    pub expected: bool,
}

/// A page the device asked for again after a Success response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// The request retried.
    pub request: PageRequest,
    /// The translation's output address, or the fault reason.
    pub result: Result<u64, u8>,
}

/// The page request state of a unit.
#[derive(Debug, Default)]
pub(crate) struct PrqState {
    pub(crate) pqh: u64,
    pub(crate) pqt: u64,
    pub(crate) pqa: u64,
    pub(crate) prs: u32,
    pub(crate) pectl: u32,
    /// Requests queued whose group has not been answered.
    pub(crate) outstanding: Vec<PageRequest>,
    pub(crate) responses: Vec<GroupResponse>,
    pub(crate) retries: Vec<Retry>,
    pub(crate) events: u64,
}

impl State<'_> {
    fn prs_supported(&self) -> bool {
        self.cfg.ecap & ECAP_PRS != 0
    }

    pub(crate) fn prq_reg64(&self, base: usize) -> Option<u64> {
        if !self.prs_supported() {
            return None;
        }
        match base {
            super::regs::PQH => Some(self.prq.pqh),
            super::regs::PQT => Some(self.prq.pqt),
            super::regs::PQA => Some(self.prq.pqa),
            _ => None,
        }
    }

    pub(crate) fn prq_write64(&mut self, base: usize, v: u64) {
        match base {
            super::regs::PQH => self.prq.pqh = v & PQ_OFFSET,
            // PQT is the unit's; software writes it only to reset the queue.
            super::regs::PQT => self.prq.pqt = v & PQ_OFFSET,
            _ => self.prq.pqa = v & (PQA_BASE | PQA_PQS),
        }
    }

    pub(crate) fn prq_reg32(&self, offset: usize) -> Option<u32> {
        if !self.prs_supported() {
            return None;
        }
        match offset {
            super::regs::PRS => Some(self.prq.prs),
            super::regs::PECTL => Some(self.prq.pectl),
            _ => None,
        }
    }

    /// Returns whether `offset` is a page request register (and handled the write).
    pub(crate) fn prq_write32(&mut self, offset: usize, value: u32) -> bool {
        if !self.prs_supported() {
            return false;
        }
        match offset {
            super::regs::PRS => self.prq.prs &= !(value & (PRS_PPR | PRS_PRO)),
            super::regs::PECTL => {
                self.prq.pectl =
                    (self.prq.pectl & super::regs::EVENT_IP) | (value & super::regs::EVENT_IM)
            }
            _ => return false,
        }
        true
    }

    /// Whether `sid`'s page requests may go to the queue: translation on, a scalable-mode root
    /// table, and the device's context entry present with `PRE` (§9.4; legacy context entries
    /// have no `PRE`: no page requests).
    fn page_requests_enabled(&mut self, sid: u16) -> bool {
        match self.root {
            Some(r) if self.gsts & G_TE != 0 && r.mode == RootMode::Scalable => {
                self.scalable_context(r.addr, sid).is_ok_and(|c| c.pre)
            }
            _ => false,
        }
    }

    fn prq_bytes(&self) -> u64 {
        4096 << (self.prq.pqa & PQA_PQS)
    }

    pub(crate) fn page_request(&mut self, req: PageRequest) -> PageRequestOutcome {
        if !self.prs_supported() {
            return PageRequestOutcome::Refused;
        }
        if self.cfg.pre_checked && !self.page_requests_enabled(req.sid) {
            if req.last && !req.is_stop_marker() {
                self.prq.responses.push(GroupResponse {
                    sid: req.sid,
                    pasid: req.pasid,
                    group: req.group,
                    code: INVALID_REQUEST,
                    automatic: true,
                    expected: true,
                });
            }
            return PageRequestOutcome::Refused;
        }
        if self.prq.pqa & PQA_BASE == 0 {
            return PageRequestOutcome::Refused;
        }
        let size = self.prq_bytes();
        let tail = self.prq.pqt % size;
        let next = (tail + 32) % size;
        if self.prq.prs & PRS_PRO != 0 || next == self.prq.pqh % size {
            self.prq.prs |= PRS_PRO;
            if req.last && !req.is_stop_marker() {
                self.prq.responses.push(GroupResponse {
                    sid: req.sid,
                    pasid: req.pasid,
                    group: req.group,
                    code: 0,
                    automatic: true,
                    expected: true,
                });
            }
            return PageRequestOutcome::Overflow;
        }
        let a = req.access;
        let w0 = 0x1
            | u64::from(req.pasid.is_some()) << 8
            | u64::from(req.sid) << 16
            | u64::from(req.pasid.unwrap_or(0) & 0xf_ffff) << 32
            | u64::from(a.exec) << 52
            | u64::from(a.privileged) << 53;
        let w1 = u64::from(a.read)
            | u64::from(a.write) << 1
            | u64::from(req.last) << 2
            | u64::from(req.group & 0x1ff) << 3
            | req.addr & bits(63, 12);
        let at = (self.prq.pqa & PQA_BASE) + tail;
        for (i, w) in [w0, w1, 0, 0].into_iter().enumerate() {
            if !self.mem.write_u64(at + 8 * i as u64, w) {
                return PageRequestOutcome::Refused;
            }
        }
        self.prq.pqt = next;
        let was = self.prq.prs;
        self.prq.prs |= PRS_PPR;
        if was & (PRS_PPR | PRS_PRO) == 0 {
            self.prq.pectl |= super::regs::EVENT_IP;
            if self.prq.pectl & super::regs::EVENT_IM == 0 {
                self.prq.pectl &= !super::regs::EVENT_IP;
                self.prq.events += 1;
            }
        }
        // A Stop Marker (PASID, LPIG, neither read nor write: PCIe PRI) opens no group: the
        // device expects no response to it.
        if !req.is_stop_marker() {
            self.prq.outstanding.push(req);
        }
        PageRequestOutcome::Queued
    }

    /// Executes a page group response descriptor; `false` if a reserved bit is set.
    pub(crate) fn page_group_response(&mut self, lo: u64, hi: u64) -> bool {
        if lo & PGRP_RESERVED != 0 || hi & PGRP_HI_RESERVED != 0 {
            return false;
        }
        let sid = ((lo >> 16) & 0xffff) as u16;
        let pasid = (lo & 1 << 4 != 0).then_some(((lo >> 32) & 0xf_ffff) as u32);
        let group = ((hi >> 3) & 0x1ff) as u16;
        let code = ((lo >> 12) & 0xf) as u8;
        let (answered, kept): (Vec<PageRequest>, Vec<PageRequest>) = self
            .prq
            .outstanding
            .iter()
            .partition(|r| r.sid == sid && r.pasid == pasid && r.group == group);
        let expected = answered.iter().any(|r| r.last);
        if expected {
            self.prq.outstanding = kept;
        }
        self.prq.responses.push(GroupResponse {
            sid,
            pasid,
            group,
            code,
            automatic: false,
            expected,
        });
        if expected && code == 0 {
            for request in answered {
                let result = self
                    .translate_inner(request.sid, request.pasid, request.addr, request.access)
                    .map(|ok| ok.pa)
                    .map_err(|f| f.reason);
                self.prq.retries.push(Retry { request, result });
            }
        }
        true
    }
}
