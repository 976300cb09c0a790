//! Event records and the event queue producer: Arm IHI 0070 G.b §7.2 (event queue, overflow)
//! and §7.3 (event record formats and type codes).
//!
//! A record is 32 bytes: `dw0` `type[7:0]`, `SSV[11]`, `SubstreamID[31:12]`,
//! `StreamID[63:32]`; `dw1` `STAG[15:0]`, `Stall[31]`, `PnU[33]`, `InD[34]`, `RnW[35]`, `S2[39]`, `CLASS[41:40]`; `dw2` the
//! input address; `dw3` the IPA (`bits[51:12]`) of a stage-2 fault, or the fetch address
//! (`bits[51:3]`) of a fetch abort.

use super::regs::{cr0, gerror, QueueShape, EVENTQ_OVFLG};
use super::State;
use crate::sim::arena::Arena;

/// No event: the transaction was terminated silently (GBPA.ABORT, STE.Config = abort).
pub const EVENT_NONE: u8 = 0x00;
/// Unsupported upstream transaction.
pub const F_UUT: u8 = 0x01;
/// StreamID outside the stream table, or its level-2 table is not valid.
pub const C_BAD_STREAMID: u8 = 0x02;
/// External abort fetching an STE.
pub const F_STE_FETCH: u8 = 0x03;
/// An STE that is not valid or has an illegal field.
pub const C_BAD_STE: u8 = 0x04;
/// Bad ATS translation request.
pub const F_BAD_ATS_TREQ: u8 = 0x05;
/// A transaction without SubstreamID on a stream whose S1DSS terminates them.
pub const F_STREAM_DISABLED: u8 = 0x06;
/// A translated (ATS) transaction the STE forbids.
pub const F_TRANSL_FORBIDDEN: u8 = 0x07;
/// A SubstreamID the configuration does not allow.
pub const C_BAD_SUBSTREAMID: u8 = 0x08;
/// External abort fetching a CD (or a level-1 CD descriptor).
pub const F_CD_FETCH: u8 = 0x09;
/// A CD that is not valid or has an illegal field.
pub const C_BAD_CD: u8 = 0x0a;
/// External abort on a translation table walk.
pub const F_WALK_EABT: u8 = 0x0b;
/// Translation fault.
pub const F_TRANSLATION: u8 = 0x10;
/// Address size fault.
pub const F_ADDR_SIZE: u8 = 0x11;
/// Access flag fault.
pub const F_ACCESS: u8 = 0x12;
/// Permission fault.
pub const F_PERMISSION: u8 = 0x13;
/// TLB conflict.
pub const F_TLB_CONFLICT: u8 = 0x20;
/// Configuration cache conflict.
pub const F_CFG_CONFLICT: u8 = 0x21;
/// Page request (PRI).
pub const E_PAGE_REQUEST: u8 = 0x24;
/// External abort fetching a VMS.
pub const F_VMS_FETCH: u8 = 0x25;

/// CLASS of a translation-related fault: on the CD fetch, the table walk, or the input address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FaultClass {
    /// CLASS = 0b00: the fault happened fetching a CD (stage-2 translation of its IPA).
    Cd,
    /// CLASS = 0b01: fetching a stage-1 translation table descriptor.
    Tt,
    /// CLASS = 0b10: translating the input address.
    #[default]
    In,
}

/// One event record, decoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventRecord {
    /// Event type code.
    pub kind: u8,
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, when the transaction had one (SSV).
    pub ssid: Option<u32>,
    /// The fault is a stage-2 fault.
    pub s2: bool,
    /// CLASS.
    pub class: FaultClass,
    /// The transaction was a read (RnW).
    pub read: bool,
    /// The transaction was privileged (PnU).
    pub privileged: bool,
    /// The transaction was an instruction fetch (InD).
    pub instruction: bool,
    /// Input address.
    pub input_addr: u64,
    /// IPA of a stage-2 fault (`bits[51:12]` are recorded), or the fetch address of a fetch
    /// abort (`bits[51:3]`).
    pub addr2: u64,
    /// `Stall` = 1 with this STAG: the transaction waits for CMD_RESUME.
    pub stag: Option<u16>,
}

const SSV: u64 = 1 << 11;
const PNU: u64 = 1 << 33;
const IND: u64 = 1 << 34;
const RNW: u64 = 1 << 35;
const S2: u64 = 1 << 39;
const STALL: u64 = 1 << 31;
const CLASS_SHIFT: u32 = 40;
/// FetchAddr[51:3] of a fetch abort.
const FETCH_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x7;
/// IPA[51:12] of a stage-2 fault.
const IPA_MASK: u64 = ((1 << 52) - 1) & !0xfff;

impl EventRecord {
    /// The four words of the record.
    pub fn encode(&self) -> [u64; 4] {
        let mut dw0 = u64::from(self.kind) | u64::from(self.sid) << 32;
        if let Some(ssid) = self.ssid {
            dw0 |= SSV | u64::from(ssid & 0xf_ffff) << 12;
        }
        let class = match self.class {
            FaultClass::Cd => 0,
            FaultClass::Tt => 1,
            FaultClass::In => 2,
        };
        let mut dw1 = class << CLASS_SHIFT;
        if let Some(stag) = self.stag {
            dw1 |= STALL | u64::from(stag);
        }
        for (on, bit) in [
            (self.privileged, PNU),
            (self.instruction, IND),
            (self.read, RNW),
            (self.s2, S2),
        ] {
            if on {
                dw1 |= bit;
            }
        }
        let fetch = matches!(
            self.kind,
            F_STE_FETCH | F_CD_FETCH | F_WALK_EABT | F_VMS_FETCH
        );
        let mask = if fetch { FETCH_ADDR_MASK } else { IPA_MASK };
        [dw0, dw1, self.input_addr, self.addr2 & mask]
    }

    /// Decodes a record as [`encode`](Self::encode) writes it.
    pub fn decode(words: [u64; 4]) -> Self {
        let [dw0, dw1, dw2, dw3] = words;
        Self {
            kind: dw0 as u8,
            sid: (dw0 >> 32) as u32,
            ssid: (dw0 & SSV != 0).then_some(((dw0 >> 12) & 0xf_ffff) as u32),
            s2: dw1 & S2 != 0,
            class: match (dw1 >> CLASS_SHIFT) & 3 {
                0 => FaultClass::Cd,
                1 => FaultClass::Tt,
                _ => FaultClass::In,
            },
            read: dw1 & RNW != 0,
            privileged: dw1 & PNU != 0,
            instruction: dw1 & IND != 0,
            input_addr: dw2,
            addr2: dw3,
            stag: (dw1 & STALL != 0).then_some(dw1 as u16),
        }
    }
}

/// Entry size of the event queue.
const EVENT_BYTES: u64 = 32;

/// Writes `record` to the event queue if it is enabled. Returns whether it was written; a full
/// queue sets PROD.OVFLG to differ from CONS.OVACKFLG (§7.2.2) and drops the record.
pub(crate) fn push(state: &mut State, mem: &Arena, max_log2: u32, record: &EventRecord) -> bool {
    let regs = &mut state.regs;
    if state.service_failure
        || !regs.enabled(cr0::EVENTQEN)
        || (regs.gerror ^ regs.gerrorn) & gerror::EVENTQ_ABT_ERR != 0
    {
        state.stats.events_discarded += 1;
        return false;
    }
    let q = QueueShape::from_base(regs.eventq_base, max_log2);
    let (prod, cons) = (regs.eventq_prod, regs.eventq_cons);
    if q.full(prod, cons) {
        // Overflow: OVFLG toggles to differ from OVACKFLG until software acknowledges it.
        let acked = cons & EVENTQ_OVFLG;
        regs.eventq_prod = prod & !EVENTQ_OVFLG | (acked ^ EVENTQ_OVFLG);
        state.stats.events_lost += 1;
        return false;
    }
    let Some(slot) = q.slot(prod, EVENT_BYTES) else {
        regs.raise_gerror(gerror::EVENTQ_ABT_ERR);
        return false;
    };
    let words = record.encode();
    let written = (0..4u64).all(|i| {
        let word = words.get(i as usize).copied().unwrap_or(0);
        mem.write_u64(slot.wrapping_add(8 * i), word)
    });
    if !written {
        regs.raise_gerror(gerror::EVENTQ_ABT_ERR);
        state.stats.events_discarded += 1;
        return false;
    }
    regs.eventq_prod = prod & EVENTQ_OVFLG | q.next(prod);
    state.stats.events_written += 1;
    true
}
