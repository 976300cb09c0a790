//! The event queue: consumption of event records with overflow detection.
//!
//! Arm IHI 0070 G.b §3.5 (queues), §6.3.29-6.3.31 (EVENTQ_BASE; EVENTQ_PROD and EVENTQ_CONS in
//! register page 1, PROD.OVFLG bit 31 toggled by the unit when it drops records because the
//! queue is full, CONS.OVACKFLG bit 31 written equal to it to acknowledge), §7.3 (records).
//!
//! Each `EventQueue::drain` call handles a bounded number of records so that an event storm
//! cannot hold the CPU.

use super::event::Event;
use super::queue::{QueueMemory, QueuePointer, QueueReader, QueueRegisters};
use super::regs;
use super::SmmuError;
use crate::mem::{PageAllocator, WalkerCoherency};
use crate::mmio::RegisterWindow;

const ENTRY_LOG2: u32 = 5;

/// What one drain of the event queue ([`SmmuUnit::handle_events`](super::SmmuUnit::handle_events)) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReport {
    /// Records handed to the handler.
    pub consumed: usize,
    /// The unit dropped records since the previous acknowledgement (now acknowledged).
    pub overflowed: bool,
    /// Records remain (the call stopped at its bound).
    pub more: bool,
}

/// The event queue of one unit.
///
/// Crate-private: it frees its memory on `Drop`, which is sound only once the unit no longer
/// uses it (translation or the queue turned off and acknowledged). [`SmmuUnit`](super::SmmuUnit)
/// is the one owner that can know it, and leaks the memory when it cannot (its `Drop`).
pub(crate) struct EventQueue<A: PageAllocator> {
    q: QueueReader<A, EventQueueRegisters>,
    /// Records handed out by [`drain`](Self::drain) since the queue was made: the position in
    /// the stream of records of the next one (it never goes back, even when `program` empties
    /// the queue).
    read: u64,
}

/// EVENTQ_BASE, EVENTQ_PROD, EVENTQ_CONS.
pub(crate) struct EventQueueRegisters;

impl QueueRegisters for EventQueueRegisters {
    const BASE: usize = regs::EVENTQ_BASE;
    const PROD: usize = regs::EVENTQ_PROD;
    const CONS: usize = regs::EVENTQ_CONS;
}

// SAFETY: the raw page pointers are owned by the EventQueue (the queue page, freed only by its `Drop`);
// moving it to another thread moves that ownership, and the memory is accessed only through
// atomics.
unsafe impl<A: PageAllocator + Send> Send for EventQueue<A> {}

impl<A: PageAllocator> EventQueue<A> {
    /// Allocates a queue of `2^log2` records; `max_log2` is `IDR1.EVENTQS`.
    ///
    /// # Errors
    ///
    /// [`SmmuError::SizeUnsupported`], [`SmmuError::NoMemory`], [`SmmuError::TableOutOfRange`]
    /// for a page at or above `2^oas` (`IDR5.OAS`). For a non-coherent unit every
    /// record is invalidated from the CPU caches ([`PageAllocator::sync_for_cpu`]) before it is
    /// read.
    pub fn new(
        alloc: A,
        log2: u32,
        max_log2: u32,
        coherency: WalkerCoherency,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        let mem = QueueMemory::new(
            alloc,
            "event queue",
            log2,
            max_log2,
            ENTRY_LOG2,
            coherency,
            oas,
        )?;
        Ok(Self {
            q: QueueReader::new(mem),
            read: 0,
        })
    }

    /// The EVENTQ_BASE value.
    pub fn base_register(&self) -> u64 {
        self.q.mem.base_register()
    }

    /// Writes EVENTQ_BASE and zeroes PROD and CONS. Only while `CR0.EVENTQEN = 0`.
    pub fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) {
        self.q.program(regs);
    }

    /// The position of the next record [`drain`](Self::drain) hands out, counted in records
    /// since the queue was made.
    pub fn read(&self) -> u64 {
        self.read
    }

    /// The position just past the last record the unit has written (PROD read now): every
    /// record written before this call is before it.
    pub fn written<W: RegisterWindow + ?Sized>(&self, regs: &W) -> u64 {
        let raw = regs.read32(EventQueueRegisters::PROD);
        let prod = QueuePointer::from_register(self.q.mem.log2, raw);
        self.read + u64::from(prod.used_since(self.q.cons))
    }

    /// Hands at most `max` records to `handle`, then publishes CONS (acknowledging any
    /// overflow) so the unit can reuse the entries.
    pub fn drain<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        max: usize,
        mut handle: impl FnMut(Event),
    ) -> DrainReport {
        let (prod, overflow) = self.q.read_prod(regs);
        let mut consumed = 0;
        while consumed < max {
            let Some(raw) = self.q.pop::<4>(prod) else {
                break;
            };
            handle(Event::decode(raw));
            self.read += 1;
            consumed += 1;
        }
        // Acknowledged with every CONS write: a record the unit dropped is gone either way.
        let overflowed = overflow != self.q.overflow_ack;
        self.q.overflow_ack = overflow;
        self.q.publish(regs);
        DrainReport {
            consumed,
            overflowed,
            more: self.q.cons != prod,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::smmuv3::event::EventType;
    use crate::smmuv3::testutil::{ModelSmmu, VecAllocator};
    use crate::smmuv3::StreamId;
    use std::vec::Vec;

    fn record(sid: u32) -> [u64; 4] {
        [((sid as u64) << 32) | 0x10, 0, 0x1000 * sid as u64, 0]
    }

    #[test]
    fn drains_in_order_bounded_and_wraps() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = EventQueue::new(&alloc, 3, 19, WalkerCoherency::Coherent, 52).unwrap();
        q.program(&m);
        assert_eq!(q.base_register() & 0x1f, 3);
        let mut seen = Vec::new();
        for round in 0..100u32 {
            for i in 0..5 {
                m.push_event(record(round * 5 + i));
            }
            let r = q.drain(&m, 3, |e| seen.push(e));
            assert_eq!(
                r,
                DrainReport {
                    consumed: 3,
                    overflowed: false,
                    more: true
                }
            );
            let r = q.drain(&m, 64, |e| seen.push(e));
            assert_eq!(
                r,
                DrainReport {
                    consumed: 2,
                    overflowed: false,
                    more: false
                }
            );
        }
        let sids: Vec<u32> = seen.iter().map(|e| e.stream_id.0).collect();
        assert_eq!(sids, (0..500).collect::<Vec<_>>());
        assert!(seen
            .iter()
            .all(|e| e.event_type == Ok(EventType::FTranslation)));
        assert_eq!(seen[7].input_address, Some(0x7000));
    }

    #[test]
    fn overflow_is_reported_once_and_acknowledged() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = EventQueue::new(&alloc, 2, 19, WalkerCoherency::Coherent, 52).unwrap();
        q.program(&m);
        for i in 0..6 {
            m.push_event(record(i));
        }
        let mut n = 0;
        let r = q.drain(&m, 16, |_| n += 1);
        assert_eq!(
            r,
            DrainReport {
                consumed: 4,
                overflowed: true,
                more: false
            }
        );
        // OVACKFLG now equals OVFLG.
        assert_eq!(
            m.read32(regs::EVENTQ_CONS) >> 31,
            m.read32(regs::EVENTQ_PROD) >> 31
        );
        m.push_event(record(9));
        let r = q.drain(&m, 16, |e| assert_eq!(e.stream_id, StreamId(9)));
        assert_eq!(
            r,
            DrainReport {
                consumed: 1,
                overflowed: false,
                more: false
            }
        );
        assert!(EventQueue::new(&alloc, 2, 19, WalkerCoherency::NonCoherent, 52).is_ok());
    }

    /// The event queue's own overflow rule on the reader it shares with the PRI queue: every
    /// CONS write acknowledges, so a drain that stops short of PROD reports the overflow and
    /// acknowledges it (records the unit dropped are gone either way).
    #[test]
    fn overflow_acknowledged_by_a_partial_drain() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = EventQueue::new(&alloc, 2, 19, WalkerCoherency::Coherent, 52).unwrap();
        q.program(&m);
        for i in 0..6 {
            m.push_event(record(i));
        }
        let r = q.drain(&m, 1, |e| assert_eq!(e.stream_id, StreamId(0)));
        assert_eq!(
            r,
            DrainReport {
                consumed: 1,
                overflowed: true,
                more: true
            }
        );
        assert_eq!(m.read32(regs::EVENTQ_CONS), 1 | 1 << 31);
        let r = q.drain(&m, 16, |_| {});
        assert_eq!(
            r,
            DrainReport {
                consumed: 3,
                overflowed: false,
                more: false
            }
        );
    }
}
