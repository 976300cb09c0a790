//! Queue target `queue_amdvi`: the AMD-Vi command buffer ([`CommandBuffer`]) and event log
//! ([`EventLog`]) against a register model (AMD IOMMU specification 48882 rev. 3.10, §2.4,
//! §2.5, §3.4) whose "hardware" fetches commands, stores COMPLETION_WAITs, stops on a command
//! (logging ILLEGAL_COMMAND_ERROR), logs events and overflows the log as the fuzzer decides, at
//! every read of a head, tail or `Status`; or, in the second mode, against registers that read
//! whatever the fuzzer says.
//!
//! The model reads the rings with its own reading of the spec (opcode 63:60; COMPLETION_WAIT
//! opcode 1 with `S` in bit 0 stores the second quadword at bits 51:3 of the first; ring
//! length in bits 59:56 of the base, pointers in bits 18:4; `Status` bit 0 `EventOverflow`,
//! bit 3 `EventLogRun`, bit 4 `CmdBufRun`; `Control` bit 2 `EventLogEn`, bit 12 `CmdBufEn`)
//! and checks, in the first mode:
//! - no command is overwritten before the unit fetched it, but the one the unit stopped on,
//!   which recovery replaces while `CmdBufEn` is clear; the tail never passes the head;
//! - a successful COMPLETION_WAIT means every command queued before it was fetched;
//! - a command error is reported only after the model stopped on a command, naming its offset,
//!   and the buffer runs again after it;
//! - a drain of at most `max` events reports the oldest logged events in order, at most `max`,
//!   and moves the head past exactly those; it reports an overflow exactly when there was one,
//!   after which logging runs again;
//! - a search of the log consumes nothing.
//!
//! In the second mode: no panic, every pointer written 16-byte aligned and inside its ring,
//! a bounded number of register reads per call.

use core::cell::RefCell;
use std::collections::VecDeque;
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::amdvi::cmd::{Command, InvalidationRange};
use crate::amdvi::cmdbuf::CommandBuffer;
use crate::amdvi::event::EventCode;
use crate::amdvi::eventlog::EventLog;
use crate::amdvi::regs;
use crate::amdvi::{CommandErrorKind, Error};
use crate::iommu::Pasid;
use crate::mem::{PhysAddr, WalkerCoherency};
use crate::mmio::RegisterWindow;
use crate::sim::{Arena, ArenaConfig, PhysMem};

const ST_EVENT_OVERFLOW: u64 = 1 << 0;
const ST_EVENT_LOG_RUN: u64 = 1 << 3;
const ST_CMD_BUF_RUN: u64 = 1 << 4;
/// The `Status` bits software clears by writing 1: overflow, event and wait interrupts.
const ST_RW1C: u64 = 0x7;
const CTRL_EVENT_LOG_EN: u64 = 1 << 2;
const CTRL_CMD_BUF_EN: u64 = 1 << 12;
const OPCODE_COMPLETION_WAIT: u64 = 1;
const EVENT_ILLEGAL_COMMAND: u64 = 5;
/// Ring lengths: 2^8 entries, the least the spec allows.
const LEN_LOG2: u32 = 8;

#[derive(Default)]
struct State {
    control: u64,
    status: u64,
    cmd_base: u64,
    cmd_head: u64,
    cmd_tail: u64,
    /// Commands published and not fetched, by slot, as they were when published.
    pending: Vec<Option<[u64; 2]>>,
    /// The slot the unit stopped on.
    stopped_at: Option<u64>,
    /// Stops not yet reported by a command error.
    stops: u32,
    evt_base: u64,
    evt_head: u64,
    evt_tail: u64,
    /// Events in the log, oldest first.
    logged: VecDeque<[u64; 2]>,
    /// Events software consumed (moved the head past) and has not compared yet.
    consumed: Vec<[u64; 2]>,
    /// Register reads.
    reads: u64,
    /// Overflows of the event log.
    overflows: u32,
    /// The offset of the command the unit last stopped on.
    last_stop: u64,
}

struct Model<'a> {
    mem: &'a Arena,
    wild: bool,
    st: RefCell<State>,
    script: RefCell<Unstructured<'a>>,
}

fn ring_len(base: u64) -> u64 {
    16 << ((base >> 56) & 0xF)
}

impl Model<'_> {
    fn next_u8(&self) -> u8 {
        u8::arbitrary(&mut self.script.borrow_mut()).unwrap_or(0)
    }

    fn next_u64(&self) -> u64 {
        u64::arbitrary(&mut self.script.borrow_mut()).unwrap_or(u64::MAX)
    }

    fn read_entry(&self, base: u64, offset: u64) -> [u64; 2] {
        let at = (base & regs::BASE_MASK) + offset;
        let lo = self.mem.read_u64(at).expect("ring readable");
        let hi = self.mem.read_u64(at + 8).expect("ring readable");
        [lo, hi]
    }

    /// One step of hardware activity, as the script says; with the script spent, the unit
    /// fetches everything (so that every input ends).
    fn progress(&self) {
        let action = self.next_u8();
        let mut st = self.st.borrow_mut();
        match action % 16 {
            8 => self.stop(&mut st),
            9 | 10 => {}
            11..=13 => {
                // A logged event's code (63:60) is never 0: 0 is what the driver reads as
                // "not written yet".
                let first = self.next_u64();
                let code = if first >> 60 == 0 { 1 << 60 } else { 0 };
                let entry = [first | code, self.next_u64()];
                self.log(&mut st, entry);
            }
            n => {
                for _ in 0..=n * 8 {
                    if !self.fetch(&mut st) {
                        break;
                    }
                }
            }
        }
    }

    fn running(st: &State) -> bool {
        st.control & CTRL_CMD_BUF_EN != 0 && st.status & ST_CMD_BUF_RUN != 0
    }

    /// Fetches and runs the command at the head; false when there is none or the unit stopped.
    fn fetch(&self, st: &mut State) -> bool {
        if !Self::running(st) || st.cmd_head == st.cmd_tail {
            return false;
        }
        let slot = st.cmd_head / 16;
        let cmd = self.read_entry(st.cmd_base, st.cmd_head);
        let queued = st.pending[slot as usize].take();
        assert_eq!(
            queued,
            Some(cmd),
            "command {slot} overwritten before the unit fetched it"
        );
        if cmd[0] >> 60 == OPCODE_COMPLETION_WAIT && cmd[0] & 1 != 0 {
            let store = cmd[0] & 0x000F_FFFF_FFFF_FFF8;
            assert!(self.mem.write_u64(store, cmd[1]), "completion store");
        }
        st.cmd_head = (st.cmd_head + 16) % ring_len(st.cmd_base);
        true
    }

    fn stop(&self, st: &mut State) {
        if !Self::running(st) || st.cmd_head == st.cmd_tail {
            return;
        }
        st.status &= !ST_CMD_BUF_RUN;
        st.stopped_at = Some(st.cmd_head / 16);
        st.last_stop = st.cmd_head;
        st.stops += 1;
        let pa = (st.cmd_base & regs::BASE_MASK) + st.cmd_head;
        self.log(st, [EVENT_ILLEGAL_COMMAND << 60, pa]);
    }

    fn log(&self, st: &mut State, entry: [u64; 2]) {
        if st.control & CTRL_EVENT_LOG_EN == 0 || st.status & ST_EVENT_LOG_RUN == 0 {
            return;
        }
        let len = ring_len(st.evt_base);
        let next = (st.evt_tail + 16) % len;
        if next == st.evt_head {
            st.status |= ST_EVENT_OVERFLOW;
            st.status &= !ST_EVENT_LOG_RUN;
            st.overflows += 1;
            return;
        }
        let at = (st.evt_base & regs::BASE_MASK) + st.evt_tail;
        assert!(self.mem.write_u64(at, entry[0]) && self.mem.write_u64(at + 8, entry[1]));
        st.logged.push_back(entry);
        st.evt_tail = next;
    }

    /// The tail moved to `tail`: every slot it passed is queued, none may be pending.
    fn doorbell(&self, st: &mut State, tail: u64) {
        let len = ring_len(st.cmd_base);
        let mut at = st.cmd_tail;
        while at != tail {
            let slot = (at / 16) as usize;
            assert!(
                st.pending[slot].is_none(),
                "tail moved over pending command {slot}"
            );
            st.pending[slot] = Some(self.read_entry(st.cmd_base, at));
            at = (at + 16) % len;
        }
        let queued = st.pending.iter().filter(|p| p.is_some()).count() as u64;
        assert!(
            queued < len / 16,
            "the buffer filled up: head == tail would read as empty"
        );
        st.cmd_tail = tail;
    }

    fn check_pending(&self) {
        let st = self.st.borrow();
        for (slot, queued) in st.pending.iter().enumerate() {
            if let Some(q) = queued {
                if st.stopped_at != Some(slot as u64) {
                    let now = self.read_entry(st.cmd_base, slot as u64 * 16);
                    assert_eq!(
                        now, *q,
                        "command {slot} overwritten before the unit fetched it"
                    );
                }
            }
        }
    }
}

/// A pointer written by software: 16-byte aligned, inside its ring.
fn pointer(value: u64, base: u64, what: &str) -> u64 {
    assert_eq!(
        value & !regs::POINTER_MASK,
        0,
        "{what} {value:#x} outside the pointer bits"
    );
    assert!(value < ring_len(base), "{what} {value:#x} beyond the ring");
    value
}

impl RegisterWindow for Model<'_> {
    fn read32(&self, offset: usize) -> u32 {
        (self.read64(offset & !7) >> ((offset & 4) * 8)) as u32
    }

    fn write32(&self, offset: usize, value: u32) {
        let old = self.st.borrow().control;
        if offset == regs::CONTROL {
            self.write64(offset, old & !0xFFFF_FFFF | u64::from(value));
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.st.borrow_mut().reads += 1;
        let volatile = matches!(
            offset,
            regs::CMD_BUF_HEAD | regs::EVENT_LOG_TAIL | regs::STATUS
        );
        if self.wild && (volatile || offset == regs::EVENT_LOG_HEAD || offset == regs::CONTROL) {
            return self.next_u64();
        }
        if volatile {
            self.progress();
        }
        let st = self.st.borrow();
        match offset {
            regs::CONTROL => st.control,
            regs::STATUS => st.status,
            regs::CMD_BUF_HEAD => st.cmd_head,
            regs::CMD_BUF_TAIL => st.cmd_tail,
            regs::EVENT_LOG_HEAD => st.evt_head,
            regs::EVENT_LOG_TAIL => st.evt_tail,
            _ => 0,
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        let mut st = self.st.borrow_mut();
        match offset {
            regs::CMD_BUF_BASE => {
                st.cmd_base = value;
                st.pending = std::vec![None; (ring_len(value) / 16) as usize];
            }
            regs::EVENT_LOG_BASE => st.evt_base = value,
            regs::CMD_BUF_TAIL => {
                let tail = pointer(value, st.cmd_base, "command tail");
                if !self.wild {
                    self.doorbell(&mut st, tail);
                }
            }
            regs::CMD_BUF_HEAD => {
                let head = pointer(value, st.cmd_base, "command head");
                assert!(
                    self.wild || st.control & CTRL_CMD_BUF_EN == 0,
                    "command head written while CmdBufEn is set"
                );
                st.cmd_head = head;
            }
            regs::EVENT_LOG_HEAD => {
                let head = pointer(value, st.evt_base, "event head");
                if !self.wild {
                    let len = ring_len(st.evt_base);
                    let moved = (head + len - st.evt_head) % len / 16;
                    assert!(
                        moved as usize <= st.logged.len(),
                        "head moved past the tail"
                    );
                    for _ in 0..moved {
                        let e = st.logged.pop_front().expect("counted");
                        st.consumed.push(e);
                    }
                }
                st.evt_head = head;
            }
            regs::STATUS => st.status &= !(value & ST_RW1C),
            regs::CONTROL => {
                let rose = value & !st.control;
                let fell = st.control & !value;
                st.control = value;
                if fell & CTRL_CMD_BUF_EN != 0 {
                    st.status &= !ST_CMD_BUF_RUN;
                }
                if rose & CTRL_CMD_BUF_EN != 0 {
                    st.status |= ST_CMD_BUF_RUN;
                    // Recovery replaced the command the unit stopped on: it is queued anew.
                    if let Some(slot) = st.stopped_at.take() {
                        let at = slot * 16;
                        let cmd = self.read_entry(st.cmd_base, at);
                        if st.pending[slot as usize].is_some() {
                            st.pending[slot as usize] = Some(cmd);
                        }
                    }
                }
                if fell & CTRL_EVENT_LOG_EN != 0 {
                    st.status &= !ST_EVENT_LOG_RUN;
                }
                if rose & CTRL_EVENT_LOG_EN != 0 {
                    st.status |= ST_EVENT_LOG_RUN;
                }
            }
            _ => {}
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Commands (count, seed), then maybe a COMPLETION_WAIT.
    Submit(u8, u64, bool),
    Wait,
    /// Drain at most this many events.
    Drain(u16),
    /// Look for the n-th logged event without consuming it.
    Find(u8),
}

fn command(seed: u64, i: u64) -> Command {
    let x = seed.rotate_left((i % 64) as u32) ^ i;
    let start = x & !0xFFF;
    let range = InvalidationRange::covering(start, start.saturating_add(1 << (12 + x % 20)));
    match i % 4 {
        0 => Command::invalidate_iommu_pages(x as u16, None, range, x & 1 != 0),
        1 => Command::invalidate_devtab_entry(x as u16),
        2 => Command::invalidate_iotlb_pages(
            x as u16,
            0,
            Pasid::new((x >> 20) as u32 & 0xF_FFFF),
            range,
        ),
        _ => Command::completion_wait(None, false),
    }
}

/// Target `queue_amdvi`.
pub fn amdvi(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((wild, budget, script_len)) = <(bool, u8, u16)>::arbitrary(&mut u) else {
        return;
    };
    let script = u.bytes(usize::from(script_len) % 4096).unwrap_or(&[]);
    let arena = ArenaConfig {
        base_pa: 1 << 32,
        capacity: 1 << 20,
    };
    let budget = 4 + u32::from(budget % 32);
    super::with_arena(arena, |mem| run(mem, wild, budget, script, &mut u));
}

fn run(mem: &Arena, wild: bool, budget: u32, script: &[u8], u: &mut Unstructured<'_>) {
    let model = Model {
        mem,
        wild,
        st: RefCell::new(State::default()),
        script: RefCell::new(Unstructured::new(script)),
    };
    let coherent = WalkerCoherency::Coherent;
    let mut cb = CommandBuffer::new(mem, LEN_LOG2, coherent, budget).expect("command buffer");
    let log = EventLog::new(mem, LEN_LOG2, coherent).expect("event log");
    cb.program(&model).expect("program");
    log.program(&model, mem).expect("program");
    model.write64(regs::CONTROL, CTRL_CMD_BUF_EN | CTRL_EVENT_LOG_EN);
    let kind_of = &mut |pa: PhysAddr| {
        log.find(&model, mem, |e| {
            (e.address == pa.get() && e.code == EventCode::IllegalCommandError)
                .then_some(CommandErrorKind::IllegalCommand)
        })
    };
    let mut serial = 0u64;
    for _ in 0..48 {
        let Ok(op) = Op::arbitrary(u) else {
            break;
        };
        let reads_before = model.st.borrow().reads;
        let mut n = 0u64;
        let mut waited = false;
        let result = match op {
            Op::Submit(count, seed, wait) => {
                n = u64::from(count % 24);
                let first = serial;
                let cmds = (0..n).map(move |i| command(seed, first + i));
                serial += n;
                let r = cb.submit(&model, mem, cmds, kind_of);
                if wait && r.is_ok() {
                    n += 1;
                    waited = true;
                    cb.wait(&model, mem, kind_of)
                } else {
                    r
                }
            }
            Op::Wait => {
                n = 1;
                waited = true;
                cb.wait(&model, mem, kind_of)
            }
            Op::Drain(max) => {
                // Each entry the drain passes may be awaited for a whole budget: one the tail
                // passed but the unit has not written is polled, then skipped (bff862c). Since
                // `max` counts events reported, not slots looked at (e430614), a drain may pass
                // every entry of the log however small `max` is.
                n = u64::from(max % 300).max(1 << LEN_LOG2);
                drain(&model, &log, mem, budget, usize::from(max % 300));
                Ok(())
            }
            Op::Find(k) => {
                let before = model.st.borrow().evt_head;
                let mut seen = 0u8;
                let _ = log.find(&model, mem, |_| {
                    seen += 1;
                    (seen > k).then_some(())
                });
                let st = model.st.borrow();
                assert!(wild || st.evt_head == before, "a search consumed events");
                Ok(())
            }
        };
        let reads = model.st.borrow().reads - reads_before;
        let per_poll = 8 + 2 * u64::from(budget);
        let bound = (n + 2) * (1 + u64::from(budget) * per_poll) + 512;
        assert!(
            reads <= bound,
            "{reads} register reads for {op:?}, bound {bound}"
        );
        check(&model, &result, wild, waited);
    }
    if !wild {
        model.check_pending();
    }
    // SAFETY: the pages came from `mem`; nothing walks them once this input ends.
    unsafe {
        cb.release(mem);
        log.release(mem);
    }
    assert!(mem.bad_frees().is_empty());
}

fn drain(model: &Model<'_>, log: &EventLog, mem: &Arena, budget: u32, max: usize) {
    let (had_overflow, overflows, available) = {
        let st = model.st.borrow();
        (
            st.status & ST_EVENT_OVERFLOW != 0,
            st.overflows,
            st.logged.len(),
        )
    };
    let mut reported = Vec::new();
    let r = log.drain(model, mem, budget, max, |e| reported.push(e.raw));
    assert!(
        reported.len() <= max,
        "{} events reported, max {max}",
        reported.len()
    );
    if model.wild {
        return;
    }
    let mut st = model.st.borrow_mut();
    let consumed = core::mem::take(&mut st.consumed);
    assert_eq!(reported, consumed, "reported and consumed differ");
    assert!(
        reported.len() >= max.min(available),
        "{} reported of {available} logged, max {max}",
        reported.len()
    );
    match r {
        Ok(summary) => {
            assert_eq!(summary.events as usize, reported.len());
            // One that happens during the drain may be reported by it or by the next.
            assert!(summary.overflow || !had_overflow, "overflow not reported");
            assert!(!summary.overflow || had_overflow || st.overflows > overflows);
            if summary.overflow {
                assert_eq!(
                    st.status & (ST_EVENT_OVERFLOW | ST_EVENT_LOG_RUN),
                    ST_EVENT_LOG_RUN
                );
            }
        }
        Err(e) => panic!("drain: {e:?}"),
    }
}

fn check(model: &Model<'_>, result: &Result<(), Error>, wild: bool, waited: bool) {
    if wild {
        if let Err(Error::CommandError { head, .. }) = result {
            assert_eq!(u64::from(*head) % 16, 0);
            assert!(u64::from(*head) < 16 << LEN_LOG2);
        }
        return;
    }
    let mut st = model.st.borrow_mut();
    match result {
        Ok(()) if waited => {
            let left: Vec<usize> = (0..st.pending.len())
                .filter(|&i| st.pending[i].is_some())
                .collect();
            assert!(
                left.is_empty(),
                "a wait returned with commands {left:?} not fetched"
            );
        }
        Ok(()) => {}
        Err(Error::CommandError { head, kind, .. }) => {
            assert!(
                st.stops > 0,
                "command error {kind:?} at {head:#x} never injected"
            );
            st.stops = 0;
            assert_eq!(
                u64::from(*head),
                st.last_stop,
                "the offset the unit stopped at"
            );
            assert_eq!(
                st.status & ST_CMD_BUF_RUN,
                ST_CMD_BUF_RUN,
                "the buffer runs again"
            );
        }
        Err(Error::Timeout { .. }) => {}
        Err(e) => panic!("command buffer: {e:?}"),
    }
}
