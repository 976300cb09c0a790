//! Stalled transactions: Arm IHI 0070 (H.a) §3.12.2 "Stall model", §4.7.1 `CMD_RESUME`,
//! §4.7.2 `CMD_STALL_TERM`, §7.3 (the `Stall` and `STAG` fields of fault records).
//!
//! A translation-related fault (F_TRANSLATION, F_ADDR_SIZE, F_ACCESS, F_PERMISSION) at a stage
//! configured to stall (stage 1: `CD.S` = 1 and `STE.S1STALLD` = 0; stage 2: `STE.S2S` = 1),
//! on a unit whose `IDR0.STALL_MODEL` is not 0b01, holds the transaction: its record is
//! written with `Stall` = 1 and a STAG (the model's count up from 1, skipping any still held),
//! and the device waits. `CMD_RESUME` with Retry (Ac = 1) runs the transaction again as if it
//! had just arrived (it may complete, fault, or stall again with a new STAG); with Terminate it
//! ends with an abort (Ab = 1, or `IDR0.TERM_MODEL`) or RAZ/WI. A STAG that names no held
//! transaction of that StreamID does nothing. `CMD_STALL_TERM` ends every held transaction of
//! the stream with an abort; clearing `SMMU_CR0.SMMUEN` ends every held transaction and the
//! STAGs start again from 1 (a STAG may be reused once its transaction ended, §3.12.2).
//!
//! Model choice: when the record cannot be written (queue off, full or broken), the
//! transaction is terminated with an abort at once; an SMMU may instead retry it once the
//! queue is writable (§3.12.2). The model holds no transaction it has not reported.

use std::vec::Vec;

use super::config::{idr0, SmmuModelConfig};
use super::event::{self, EventRecord};
use super::stage::Fail;
use super::translate::{self, Request};
use super::State;
use crate::sim::arena::Arena;
use crate::sim::walk::Access;

/// A transaction the SMMU holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// StreamID.
    pub sid: u32,
    /// SubstreamID, if it had one.
    pub ssid: Option<u32>,
    /// Input address.
    pub iova: u64,
    /// The access.
    pub access: Access,
    /// Its STAG.
    pub stag: u16,
}

/// How a held transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StallEnd {
    /// Retried and translated: the access reached this output address.
    Completed(u64),
    /// Retried and faulted without stalling (the event type).
    Faulted(u8),
    /// Retried and stalled again, with this STAG.
    StalledAgain(u16),
    /// Terminated with an abort reported to the device (`CMD_RESUME` Abort).
    Aborted,
    /// Terminated with RAZ/WI (`CMD_RESUME` Terminate with Ab = 0, without `TERM_MODEL`).
    RazWi,
    /// Terminated with its stream by `CMD_STALL_TERM`, or by `SMMU_CR0.SMMUEN` cleared.
    Terminated,
}

/// A resumed or terminated transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StallOutcome {
    /// The transaction.
    pub stalled: Stalled,
    /// What became of it.
    pub end: StallEnd,
}

/// The stall side of the model.
#[derive(Clone, Debug, Default)]
pub(crate) struct StallState {
    pub(crate) held: Vec<Stalled>,
    pub(crate) outcomes: Vec<StallOutcome>,
    next: u16,
}

/// Holds the transaction of `req`, which failed with `fail` at a stalling stage: writes its
/// record with `Stall` = 1 and returns its STAG, or `None` if the record could not be written.
pub(super) fn stall(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    req: &Request,
    fail: &Fail,
) -> Option<u16> {
    let mut stag = state.stalls.next.wrapping_add(1).max(1);
    while state.stalls.held.iter().any(|s| s.stag == stag) {
        stag = stag.wrapping_add(1).max(1);
    }
    let record = EventRecord {
        kind: fail.event,
        sid: req.sid,
        ssid: req.ssid,
        s2: fail.s2,
        class: fail.class,
        read: !req.access.write,
        privileged: req.access.privileged,
        instruction: req.access.exec,
        input_addr: req.iova,
        addr2: fail.addr2,
        stag: Some(stag),
    };
    if !event::push(state, mem, cfg.eventq_max_log2(), &record) {
        return None;
    }
    state.stalls.next = stag;
    state.stalls.held.push(Stalled {
        sid: req.sid,
        ssid: req.ssid,
        iova: req.iova,
        access: req.access,
        stag,
    });
    Some(stag)
}

/// `CMD_RESUME(sid, stag)` with `action` = Ab << 1 | Ac.
pub(super) fn resume(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    sid: u32,
    stag: u16,
    action: u64,
) {
    let Some(i) = state
        .stalls
        .held
        .iter()
        .position(|s| s.sid == sid && s.stag == stag)
    else {
        return;
    };
    let stalled = state.stalls.held.remove(i);
    let end = if action & 1 != 0 {
        let req = Request {
            sid: stalled.sid,
            ssid: stalled.ssid,
            iova: stalled.iova,
            access: stalled.access,
        };
        match translate::translate(state, mem, cfg, req) {
            Ok(ok) => StallEnd::Completed(ok.pa),
            Err(f) => match f.stag {
                Some(again) => StallEnd::StalledAgain(again),
                None => StallEnd::Faulted(f.event),
            },
        }
    } else if action & 2 != 0 || cfg.has0(idr0::TERM_MODEL) {
        StallEnd::Aborted
    } else {
        StallEnd::RazWi
    };
    state.stalls.outcomes.push(StallOutcome { stalled, end });
}

/// `SMMU_CR0.SMMUEN` cleared (its acknowledgement): every held transaction is terminated
/// (§3.12.2) and the STAGs start again from 1, as an SMMU may reuse them from then on.
pub(super) fn translation_disabled(state: &mut State) {
    for stalled in core::mem::take(&mut state.stalls.held) {
        state.stalls.outcomes.push(StallOutcome {
            stalled,
            end: StallEnd::Terminated,
        });
    }
    state.stalls.next = 0;
}

/// `CMD_STALL_TERM(sid)`.
pub(super) fn terminate(state: &mut State, sid: u32) {
    let (ended, kept): (Vec<Stalled>, Vec<Stalled>) =
        state.stalls.held.iter().partition(|s| s.sid == sid);
    state.stalls.held = kept;
    for stalled in ended {
        state.stalls.outcomes.push(StallOutcome {
            stalled,
            end: StallEnd::Terminated,
        });
    }
}
