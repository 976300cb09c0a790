//! Queue target `queue_vtd`: the VT-d invalidation queue ([`InvalidationQueue`]) against a
//! register model whose "hardware" consumes descriptors, completes waits and raises queue
//! errors (IQE, ITE, ICE) as the fuzzer decides, at every register poll.
//!
//! The model decodes the ring with its own reading of VT-d rev 4.1 §6.5.2 (type in 3:0 and
//! 11:9, wait descriptor type 5 with SW in bit 5, status data 63:32, status address 63:2 of the
//! second word; FSTS IQE bit 4, ICE bit 5, ITE bit 6; GCMD/GSTS QIE bit 26; IQA.DW bit 11,
//! IQA.QS 2:0) and checks:
//! - the queue never overwrites a descriptor the hardware has not consumed (except the one IQE
//!   stopped at, which recovery may replace while IQE is set);
//! - a successful wait means every descriptor queued before it was consumed;
//! - queue errors are reported only when injected, with the head the hardware stopped at for
//!   IQE; the queue keeps working after every error;
//! - a batch larger than the queue is refused before anything is queued.

use core::cell::RefCell;
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::mmio::RegisterWindow;
use crate::sim::{Arena, ArenaConfig, PhysMem};
use crate::vtd::inv_desc::Descriptor;
use crate::vtd::inv_queue::{DescriptorWidth, InvalidationQueue, QueueConfig};
use crate::vtd::{Error, QueueErrorKind};

const GCMD: usize = 0x18;
const GSTS: usize = 0x1c;
const FSTS: usize = 0x34;
const IQH: usize = 0x80;
const IQT: usize = 0x88;
const IQA: usize = 0x90;
const QIE: u32 = 1 << 26;
const FSTS_IQE: u32 = 1 << 4;
const FSTS_ICE: u32 = 1 << 5;
const FSTS_ITE: u32 = 1 << 6;
const WAIT_TYPE: u64 = 5;
const WAIT_SW: u64 = 1 << 5;

/// Ring slot -> descriptor, for the slots queued and not consumed: a slot array, since a
/// tree's insertions and removals were a tenth of the target's time.
#[derive(Default)]
struct Pending {
    slots: Vec<Option<[u64; 4]>>,
    len: usize,
}

impl Pending {
    fn insert(&mut self, index: u64, d: [u64; 4]) {
        let i = index as usize;
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        if self.slots[i].replace(d).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, index: u64) -> Option<[u64; 4]> {
        let d = self.slots.get_mut(index as usize)?.take();
        if d.is_some() {
            self.len -= 1;
        }
        d
    }

    fn contains(&self, index: u64) -> bool {
        self.slots.get(index as usize).is_some_and(Option::is_some)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// (slot, descriptor) in slot order.
    fn iter(&self) -> impl Iterator<Item = (u64, [u64; 4])> + '_ {
        (0u64..)
            .zip(&self.slots)
            .filter_map(|(i, d)| d.map(|d| (i, d)))
    }
}

#[derive(Default)]
struct State {
    gsts: u32,
    fsts: u32,
    iqa: u64,
    /// Hardware head, as an index.
    head: u64,
    /// Software tail as last written to IQT, as an index.
    tail: u64,
    /// Descriptors queued and not consumed: index -> words, as they were when queued.
    pending: Pending,
    /// Which errors the model raised and the queue has not yet cleared.
    injected: u32,
    /// Errors the model raised and the queue has not reported yet.
    raised: u32,
    /// Head index at the last IQE.
    iqe_head: Option<u64>,
}

struct Model<'a> {
    mem: &'a Arena,
    st: RefCell<State>,
    script: RefCell<Unstructured<'a>>,
}

impl Model<'_> {
    fn shift(st: &State) -> u32 {
        4 + ((st.iqa >> 11) & 1) as u32
    }

    fn entries(st: &State) -> u64 {
        let qs = (st.iqa & 7) as u32;
        1 << (8 + qs - ((st.iqa >> 11) & 1) as u32)
    }

    fn read_slot(&self, st: &State, index: u64) -> [u64; 4] {
        let base = (st.iqa & !0xfff) + (index << Self::shift(st));
        let words = if Self::shift(st) == 5 { 4 } else { 2 };
        let mut d = [0u64; 4];
        assert!(self.mem.read_words(base, &mut d[..words]), "ring readable");
        d
    }

    /// One step of hardware activity, as the script says.
    fn progress(&self) {
        let action = u8::arbitrary(&mut self.script.borrow_mut()).unwrap_or(0);
        let mut st = self.st.borrow_mut();
        if st.gsts & QIE == 0 || st.fsts & FSTS_IQE != 0 {
            return;
        }
        match action % 16 {
            12 => self.raise(&mut st, FSTS_ITE),
            13 => self.raise(&mut st, FSTS_ICE),
            14 if st.head != st.tail => {
                let head = st.head;
                st.iqe_head = Some(head);
                self.raise(&mut st, FSTS_IQE);
            }
            15 => {}
            n => {
                for _ in 0..=n {
                    if st.head == st.tail {
                        break;
                    }
                    self.consume(&mut st);
                }
            }
        }
    }

    fn raise(&self, st: &mut State, bit: u32) {
        st.fsts |= bit;
        st.injected |= bit;
        st.raised |= bit;
    }

    fn consume(&self, st: &mut State) {
        let d = self.read_slot(st, st.head);
        let kind = (d[0] & 0xf) | ((d[0] >> 9) & 7) << 4;
        if kind == WAIT_TYPE && d[0] & WAIT_SW != 0 {
            let addr = d[1] & !3;
            let data = d[0] >> 32;
            let word = addr & !7;
            let old = self.mem.read_u64(word).expect("status word readable");
            let new = if addr & 4 == 0 {
                old & !0xffff_ffff | data
            } else {
                old & 0xffff_ffff | data << 32
            };
            assert!(self.mem.write_u64(word, new), "status write");
        }
        let head = st.head;
        if let Some(queued) = st.pending.remove(head) {
            assert_eq!(
                d, queued,
                "descriptor {head} overwritten before the hardware consumed it"
            );
        }
        st.head = (st.head + 1) % Self::entries(st);
    }

    /// Every descriptor still pending is what was queued: checked when the hardware consumes
    /// one (`consume`), and for the rest when the input ends. Checking every pending slot at
    /// every doorbell made the model most of the target's time.
    fn check_pending(&self) {
        let st = self.st.borrow();
        for (i, queued) in st.pending.iter() {
            assert_eq!(
                self.read_slot(&st, i),
                queued,
                "descriptor {i} overwritten before the hardware consumed it"
            );
        }
    }

    /// The queue wrote IQT: record what it queued (a pending descriptor is checked when the
    /// hardware consumes it).
    fn doorbell(&self, st: &mut State, value: u64) {
        let new_tail = value >> Self::shift(st);
        assert!(
            new_tail < Self::entries(st),
            "IQT {value:#x} beyond the ring"
        );
        let mut i = st.tail;
        while i != new_tail {
            assert!(
                !st.pending.contains(i),
                "tail moved over pending descriptor {i}"
            );
            let d = self.read_slot(st, i);
            st.pending.insert(i, d);
            i = (i + 1) % Self::entries(st);
        }
        assert!(
            (st.pending.len() as u64) < Self::entries(st),
            "queue completely full: head == tail would read as empty"
        );
        st.tail = new_tail;
    }
}

impl RegisterWindow for Model<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if offset == FSTS {
            self.progress();
        }
        let st = self.st.borrow();
        match offset {
            GSTS => st.gsts,
            FSTS => st.fsts,
            _ => 0,
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        let mut st = self.st.borrow_mut();
        match offset {
            GCMD => st.gsts = value & QIE,
            FSTS => {
                let cleared = value & st.fsts & (FSTS_IQE | FSTS_ICE | FSTS_ITE);
                if cleared & FSTS_IQE != 0 {
                    // Recovery may have replaced the descriptor IQE stopped at.
                    if let Some(head) = st.iqe_head.take() {
                        let d = self.read_slot(&st, head);
                        st.pending.insert(head, d);
                    }
                }
                st.fsts &= !cleared;
                st.injected &= !cleared;
            }
            _ => {}
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        if offset == IQH {
            self.progress();
        }
        let st = self.st.borrow();
        match offset {
            IQH => st.head << Self::shift(&st),
            IQT => st.tail << Self::shift(&st),
            IQA => st.iqa,
            _ => 0,
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        let mut st = self.st.borrow_mut();
        match offset {
            IQA => {
                st.iqa = value;
                st.head = 0;
            }
            IQT if st.gsts & QIE == 0 => st.tail = value >> Self::shift(&st),
            IQT => self.doorbell(&mut st, value),
            _ => {}
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Submit(u8),
    SubmitAndWait(u8),
    Wait,
}

/// A context-cache global invalidation (type 1, granularity 01b): valid on every unit.
fn descriptor(i: u64) -> Descriptor {
    // Bits 63:16 (DID, SID, FM) are ignored for a global invalidation; vary them so that an
    // overwrite is visible.
    Descriptor::from_words([1 | 1 << 4 | (i & 0xffff) << 16, 0, 0, 0])
}

/// Target `queue_vtd`.
pub fn vtd(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok((qs, wide, budget, script_len)) = <(u8, bool, u8, u16)>::arbitrary(&mut u) else {
        return;
    };
    let config = QueueConfig {
        qs: qs % 3,
        width: if wide {
            DescriptorWidth::Bits256
        } else {
            DescriptorWidth::Bits128
        },
        poll_budget: 16 + u32::from(budget),
        haw: 48,
    };
    let script = u.bytes(usize::from(script_len) % 4096).unwrap_or(&[]);
    let arena = ArenaConfig {
        base_pa: 1 << 32,
        capacity: 1 << 20,
    };
    super::with_arena(arena, |mem| run(mem, config, script, &mut u));
}

fn run(mem: &Arena, config: QueueConfig, script: &[u8], u: &mut Unstructured<'_>) {
    let model = Model {
        mem,
        st: RefCell::new(State::default()),
        script: RefCell::new(Unstructured::new(script)),
    };
    let mut q = InvalidationQueue::enable(&model, mem, config).expect("enable");
    let mut serial = 0u64;
    for _ in 0..64 {
        let Ok(op) = Op::arbitrary(u) else {
            break;
        };
        let (n, wait) = match op {
            Op::Submit(n) => (usize::from(n), false),
            Op::SubmitAndWait(n) => (usize::from(n), true),
            Op::Wait => (0, true),
        };
        let batch: Vec<Descriptor> = (0..n)
            .map(|_| {
                serial += 1;
                descriptor(serial)
            })
            .collect();
        let r = if wait {
            q.submit_and_wait(&batch)
        } else {
            q.submit(&batch)
        };
        let capacity = q.batch_capacity();
        let mut st = model.st.borrow_mut();
        match r {
            Ok(()) => {
                assert!(
                    n + usize::from(wait) <= capacity,
                    "oversized batch accepted"
                );
                if wait {
                    assert!(
                        st.pending.is_empty(),
                        "wait returned with {:?} pending",
                        st.pending.iter().map(|(i, _)| i).collect::<Vec<_>>()
                    );
                }
            }
            Err(Error::BatchTooLarge { len, capacity: c }) => {
                assert_eq!((len, c), (n + usize::from(wait), capacity));
                assert!(len > capacity);
            }
            Err(Error::QueueError { kind, head }) => {
                let bit = match kind {
                    QueueErrorKind::InvalidQueueEntry => FSTS_IQE,
                    QueueErrorKind::InvalidationTimeout => FSTS_ITE,
                    QueueErrorKind::InvalidationCompletion => FSTS_ICE,
                };
                assert!(st.raised & bit != 0, "{kind:?} reported but never raised");
                st.raised &= !bit;
                assert_eq!(st.fsts & bit, 0, "{kind:?} reported but not cleared");
                if bit == FSTS_IQE {
                    assert_eq!(u64::from(head), st.head, "IQE head");
                }
            }
            Err(Error::Timeout { .. }) => {}
            Err(e) => panic!("queue: {e:?}"),
        }
    }
    model.check_pending();
    if q.disable().is_ok() {
        // SAFETY: `mem` is the allocator `enable` was given.
        if unsafe { q.release(mem) }.is_ok() {
            assert_eq!(mem.stats().live_pages, 0, "ring or status page leaked");
        }
    }
    assert!(mem.bad_frees().is_empty());
}
