//! The event log: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.5 "Event Logging" (the circular log the unit writes at the tail, software
//! consumes from the head) and §3.4 "IOMMU Status Register" (`EventOverflow`: the log was full
//! and the unit stopped logging, `EventLogRun` clear).
//!
//! **Overflow.** Events that arrive while the log is full are lost, and logging stops. The
//! drain reports the entries in the log (as many as its caller takes), acknowledges `EventOverflow` and restarts
//! logging the way the spec asks (`EventLogEn` cleared, `EventOverflow` written 1 to clear,
//! `EventLogEn` set), so that the next event is logged; [`DrainSummary::overflow`] tells the
//! embedder that some were lost (Linux restarts its log the same way).
//!
//! **Entries not written yet.** The tail can become visible before the entry it passed is
//! written (an erratum Linux's event handling meets by re-reading an entry whose type is 0
//! until it is not). Every entry is therefore read through [`EventLog::read_written`]: an entry
//! whose code (bits 63:60, never 0 in a written event) reads 0 is polled, within the poll
//! budget, until written; a drain clears each entry it consumed (and `program` the whole ring),
//! so that the previous lap's entry in a slot reads as "not written", never as a new event.
//! A reader whose budget ran out does not know what the entry holds: [`EventLog::find_since`]
//! fails with [`Error::Timeout`] (`Wait::EventEntry`). A drain gives up on it (Linux reports
//! "no event written" and moves on the same way), counts it in [`DrainSummary::unwritten`]
//! and goes on with the entries after it, so that one lost write cannot stop the log (every
//! later drain waiting at it, the log filling and overflowing behind it). But the write may
//! still come: a skipped slot is neither cleared nor given back to the unit (the head
//! register stays on it) until its write is seen (reported then, late:
//! [`DrainSummary::late`]) or a later entry was read as written (the unit writes its entries
//! in order, so a write not there by then never comes). Only then is it cleared and the head
//! moved past it. Cleared at the skip, the late write would land after the clear and read as
//! a new event when the unit's tail next passed the slot before writing it (an
//! IOTLB_INV_TIMEOUT missed, a flush returning `Ok` while a device's ATC held translations).
//! The IOTLB_INV_TIMEOUT check reads from the tail at its call's start, under the lock that
//! keeps drains out, so a skipped entry was logged before its window.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::event::Event;
use super::regs::{self, Control, Status};
use super::{Error, Wait};
use crate::mem::{Page, PageAllocator, WalkerCoherency};
use crate::mmio::{dma_read_barrier, RegisterWindow};

/// Bytes per event.
const ENTRY_BYTES: u32 = 16;

/// What one drain found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainSummary {
    /// Events reported.
    pub events: u32,
    /// The log had overflowed: events were lost; logging was restarted.
    pub overflow: bool,
    /// Entries the tail passed that were still not written after the poll budget: skipped
    /// (see the module); their events are reported late if their write comes.
    pub unwritten: u32,
    /// Of the events reported, those an earlier skip had given up on (written late).
    pub late: u32,
}

/// The event log's memory and geometry.
#[derive(Debug)]
pub struct EventLog {
    ring: Page,
    len_log2: u32,
    coherency: WalkerCoherency,
    /// Skipped entries from the head register on, neither cleared nor given back to the unit
    /// until settled (see the module). Written only under the unit's event lock.
    skipped: AtomicU32,
    /// Where events of command-buffer stops are looked up from
    /// ([`find_since_restart`](Self::find_since_restart)): the tail when `CmdBufEn` was last
    /// set (0 at `program`; [`mark_command_restart`](Self::mark_command_restart) at a
    /// recovery), moved along to the head by a drain that consumed past it. Written only
    /// under the unit's event lock.
    restart: AtomicU32,
}

impl EventLog {
    /// Allocates a log of `2^len_log2` entries.
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::InvalidArgument`], [`Error::TableOutOfRange`].
    pub fn new<A: PageAllocator + ?Sized>(
        alloc: &A,
        len_log2: u32,
        coherency: WalkerCoherency,
    ) -> Result<Self, Error> {
        let ring = alloc.alloc(len_log2 + 4).ok_or(Error::NoMemory)?;
        if let Err(e) = regs::ring_base("event log", ring.pa, len_log2) {
            // SAFETY: the page came from `alloc` just now; no unit was given it.
            unsafe { alloc.free(ring, len_log2 + 4) };
            return Err(e);
        }
        Ok(Self {
            ring,
            len_log2,
            coherency,
            skipped: AtomicU32::new(0),
            restart: AtomicU32::new(0),
        })
    }

    fn size(&self) -> u32 {
        ENTRY_BYTES << self.len_log2
    }

    /// Points the unit at the log, empty and every entry cleared (`EventLogEn` must be clear).
    ///
    /// # Errors
    /// None in practice (checked in [`new`](Self::new)).
    pub fn program<W: RegisterWindow + ?Sized, A: PageAllocator + ?Sized>(
        &self,
        regs: &W,
        alloc: &A,
    ) -> Result<(), Error> {
        // A log programmed again (a retried enable) keeps its page: its old entries would
        // read as written when the unit's tail passes them before writing.
        for i in 0..(1u32 << self.len_log2) {
            self.clear(alloc, i * ENTRY_BYTES);
        }
        // The cleared ring reaches memory before the unit is pointed at it.
        regs.doorbell64(
            regs::EVENT_LOG_BASE,
            regs::ring_base("event log", self.ring.pa, self.len_log2)?,
        );
        regs.write64(regs::EVENT_LOG_HEAD, 0);
        regs.write64(regs::EVENT_LOG_TAIL, 0);
        self.skipped.store(0, Ordering::Relaxed);
        self.restart.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn pointer<W: RegisterWindow + ?Sized>(&self, regs: &W, offset: usize) -> u32 {
        (regs.read64(offset) & regs::POINTER_MASK) as u32 & (self.size() - 1)
    }

    /// The two words of the entry at byte `offset` (masked to the log).
    fn words(&self, offset: u32) -> [&AtomicU64; 2] {
        let p = self
            .ring
            .va
            .as_ptr()
            .wrapping_add((offset & (self.size() - 1)) as usize)
            .cast::<AtomicU64>();
        // SAFETY: the offset is masked below the log's size and 16-byte aligned by every
        // caller; the page is live and the unit writes it with DMA, which the crate accesses
        // only atomically.
        unsafe { [&*p, &*p.add(1)] }
    }

    fn read<A: PageAllocator + ?Sized>(&self, alloc: &A, offset: u32) -> Event {
        let [lo, hi] = self.words(offset);
        if self.coherency == WalkerCoherency::NonCoherent {
            alloc.sync_for_cpu(
                core::ptr::NonNull::from(lo).cast::<u8>(),
                ENTRY_BYTES as usize,
            );
        }
        // The code is in the first word: read it first, the second behind a read barrier, so
        // that a code seen written comes with the rest of the entry.
        let q0 = lo.load(Ordering::Relaxed);
        dma_read_barrier();
        Event::decode([q0, hi.load(Ordering::Relaxed)])
    }

    /// Whether `e` was written: its code (bits 63:60) is never 0 in an event the unit logs.
    const fn written(e: &Event) -> bool {
        e.raw[0] >> 60 != 0
    }

    /// The entry at `offset`, which the tail has passed: polled (at most `budget` times, a
    /// register read between polls) while its code still reads 0 (see the module).
    ///
    /// # Errors
    /// [`Error::Timeout`] (`Wait::EventEntry`) when it was not written within the budget.
    pub fn read_written<W, A>(
        &self,
        regs: &W,
        alloc: &A,
        offset: u32,
        budget: u32,
    ) -> Result<Event, Error>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        for _ in 0..budget {
            let e = self.read(alloc, offset);
            if Self::written(&e) {
                return Ok(e);
            }
            // The register read spaces the polls out (the unit's write is in flight).
            let _ = regs.read64(regs::EVENT_LOG_TAIL);
            core::hint::spin_loop();
        }
        Err(Error::Timeout {
            what: Wait::EventEntry { offset },
            polls: budget,
        })
    }

    /// Clears the entry at `offset` once consumed (see the module).
    fn clear<A: PageAllocator + ?Sized>(&self, alloc: &A, offset: u32) {
        let [lo, hi] = self.words(offset);
        lo.store(0, Ordering::Relaxed);
        hi.store(0, Ordering::Relaxed);
        self.coherency.sync(
            alloc,
            core::ptr::NonNull::from(lo).cast::<u8>(),
            ENTRY_BYTES as usize,
        );
    }

    /// Where the unit writes its next event (the tail's byte offset): the start of what
    /// [`find_since`](Self::find_since) looks at.
    pub fn tail<W: RegisterWindow + ?Sized>(&self, regs: &W) -> u32 {
        self.pointer(regs, regs::EVENT_LOG_TAIL)
    }

    /// As [`find`](Self::find), over the events logged since the tail was `since` (and not
    /// consumed since: the caller holds the log against drains), each awaited until written
    /// ([`read_written`](Self::read_written), `budget` polls).
    ///
    /// # Errors
    /// [`Error::Timeout`] when an entry the tail passed was not written within the budget:
    /// what it holds is unknown.
    pub fn find_since<W, A, T>(
        &self,
        regs: &W,
        alloc: &A,
        since: u32,
        budget: u32,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> Result<Option<T>, Error>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        let mut at = since & (self.size() - 1);
        let tail = self.pointer(regs, regs::EVENT_LOG_TAIL);
        dma_read_barrier();
        for _ in 0..(1u32 << self.len_log2) {
            if at == tail {
                break;
            }
            if let Some(t) = f(&self.read_written(regs, alloc, at, budget)?) {
                return Ok(Some(t));
            }
            at = (at + ENTRY_BYTES) & (self.size() - 1);
        }
        Ok(None)
    }

    /// Calls `f` on each logged, unconsumed event (oldest first) without consuming it, until
    /// `f` returns `Some`. An entry not written yet is not waited for: `f` sees it with code
    /// `Other(0)` (a command error's event missed this way only makes the error `Stopped`).
    pub fn find<W, A, T>(
        &self,
        regs: &W,
        alloc: &A,
        f: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        let head = self.pointer(regs, regs::EVENT_LOG_HEAD);
        self.find_from(regs, alloc, head, f)
    }

    /// Notes that `CmdBufEn` is being set again (a command buffer recovery): the events
    /// logged so far are about stops already recovered, and
    /// [`find_since_restart`](Self::find_since_restart) no longer reads them.
    pub fn mark_command_restart<W: RegisterWindow + ?Sized>(&self, regs: &W) {
        self.restart.store(self.tail(regs), Ordering::Relaxed);
    }

    /// As [`find`](Self::find), over the unconsumed events logged since `CmdBufEn` was last
    /// set (by `program`'s caller or a recovery, [`mark_command_restart`](Self::mark_command_restart)):
    /// only those can be about a stop not yet recovered. An older one names a command slot
    /// that a later lap of the buffer reuses: read from the head, it would answer for a new
    /// stop at that slot with its own (possibly other) error.
    pub fn find_since_restart<W, A, T>(
        &self,
        regs: &W,
        alloc: &A,
        f: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        let mask = self.size() - 1;
        let head = self.pointer(regs, regs::EVENT_LOG_HEAD);
        let tail = self.pointer(regs, regs::EVENT_LOG_TAIL);
        let mark = self.restart.load(Ordering::Relaxed) & mask;
        // Drains keep the mark between the head and the tail; a unit whose pointers say
        // otherwise has every unconsumed event read.
        let from = if mark.wrapping_sub(head) & mask <= tail.wrapping_sub(head) & mask {
            mark
        } else {
            head
        };
        self.find_from(regs, alloc, from, f)
    }

    /// [`find`](Self::find) from byte offset `from` up to the tail.
    fn find_from<W, A, T>(
        &self,
        regs: &W,
        alloc: &A,
        from: u32,
        mut f: impl FnMut(&Event) -> Option<T>,
    ) -> Option<T>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        let mut head = from & (self.size() - 1);
        let tail = self.pointer(regs, regs::EVENT_LOG_TAIL);
        dma_read_barrier();
        for _ in 0..(1u32 << self.len_log2) {
            if head == tail {
                break;
            }
            if let Some(t) = f(&self.read(alloc, head)) {
                return Some(t);
            }
            head = (head + ENTRY_BYTES) & (self.size() - 1);
        }
        None
    }

    /// Reports and consumes the oldest logged events, at most `max` (late ones included; and
    /// at most the log's size): the head moves past the events reported and no further, so the rest stay for
    /// the next drain. Each entry is awaited until written ([`read_written`](Self::read_written));
    /// one still not written after the budget is skipped, not reported, and counted in
    /// [`DrainSummary::unwritten`] (the head stays on it until it is settled, see the module);
    /// each consumed entry is cleared. `max` bounds the reports, not the entries looked at: a
    /// drain that reports fewer than `max` reached the tail, so a caller that drains until
    /// then has seen every written event (skipped entries cost their poll budget each, at
    /// most the log's size of them). Acknowledges the event interrupt (`EventLogInt`, W1C)
    /// before it reads the log, so an event logged during the drain leaves it set; restarts logging after an
    /// overflow (see the module) whether or not events are left: the unit logs into the
    /// entries freed, from its tail (§3.4 `EventOverflow`: clear it and set `EventLogEn`).
    ///
    /// # Errors
    /// [`Error::Timeout`] when `EventLogRun` did not clear for the restart (the events were
    /// reported and consumed).
    pub fn drain<W, A>(
        &self,
        regs: &W,
        alloc: &A,
        budget: u32,
        max: usize,
        mut report: impl FnMut(Event),
    ) -> Result<DrainSummary, Error>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        let status = regs::status(regs);
        // Acknowledged (W1C) before the log is read: an event logged from here on sets it
        // again (with `EventIntEn`, a new interrupt), one logged before is read below.
        // Acknowledged after, an event logged between the last read and the write would stay
        // in the log with no interrupt coming for it on an idle log.
        regs.write64(regs::STATUS, Status::EVENT_LOG_INT.bits());
        let mut summary = DrainSummary::default();
        let mask = self.size() - 1;
        // `freed`: the head register (what the unit may reuse ends there); the `skipped`
        // entries from it on were given up on and are not settled; `head`: the next to read.
        let mut freed = self.pointer(regs, regs::EVENT_LOG_HEAD);
        let head_before = freed;
        let mut skipped = self.skipped.load(Ordering::Relaxed);
        let tail = self.pointer(regs, regs::EVENT_LOG_TAIL);
        dma_read_barrier();
        // Reports left: late ones count too (the caller has room for `max`).
        let mut left = max;
        // A late write seen now is reported before anything after it; written in order, it
        // settles every skipped entry before it too.
        let n = self.settle(
            alloc,
            freed,
            self.written_prefix(alloc, freed, skipped),
            &mut left,
            &mut summary,
            &mut report,
        );
        freed = (freed + n * ENTRY_BYTES) & mask;
        skipped -= n;
        let mut head = (freed + skipped * ENTRY_BYTES) & mask;
        // Bounded by the log, not by `max`: skipped entries use up no report, and a drain that
        // stopped at `max` of them would report fewer than `max` with a written entry left
        // behind them, which a caller draining until then would not come back for.
        for _ in 0..(1usize << self.len_log2) {
            if head == tail || left == 0 {
                break;
            }
            // Past the budget the entry is given up on (as Linux does): waiting at it on every
            // drain would stop the log for good and let it fill up behind it.
            match self.read_written(regs, alloc, head, budget) {
                Ok(event) => {
                    // Written in order: every skipped entry before this one is settled, as
                    // far as `left` has room; this one waits for the next drain if not all.
                    let n =
                        self.settle(alloc, freed, skipped, &mut left, &mut summary, &mut report);
                    freed = (freed + n * ENTRY_BYTES) & mask;
                    skipped -= n;
                    if skipped != 0 || left == 0 {
                        break;
                    }
                    self.clear(alloc, head);
                    report(event);
                    left -= 1;
                    summary.events += 1;
                    freed = (head + ENTRY_BYTES) & mask;
                }
                Err(_) => {
                    skipped += 1;
                    summary.unwritten += 1;
                }
            }
            head = (head + ENTRY_BYTES) & mask;
        }
        self.skipped.store(skipped, Ordering::Relaxed);
        // What is consumed is no longer looked up for command stops: the mark stays between
        // the head and the tail (see `find_since_restart`).
        let mark = self.restart.load(Ordering::Relaxed);
        if mark.wrapping_sub(head_before) & mask < freed.wrapping_sub(head_before) & mask {
            self.restart.store(freed, Ordering::Relaxed);
        }
        // The head frees the consumed slots for the unit: their clearing must reach memory
        // first, or the zero could land after the unit's next entry there (read as unwritten).
        regs.doorbell64(regs::EVENT_LOG_HEAD, u64::from(freed));
        if status.contains(Status::EVENT_OVERFLOW) {
            summary.overflow = true;
            regs::set_control(regs, Control::EVENT_LOG_EN, false, budget)?;
            regs.write64(regs::STATUS, Status::EVENT_OVERFLOW.bits());
            regs::set_control(regs, Control::EVENT_LOG_EN, true, budget)?;
        }
        Ok(summary)
    }

    /// How many of the `n` skipped entries from `from` end with one written: up to and with
    /// the last written (the unit writes in order, so the unwritten ones before it are lost).
    fn written_prefix<A: PageAllocator + ?Sized>(&self, alloc: &A, from: u32, n: u32) -> u32 {
        let at = |i: u32| (from + i * ENTRY_BYTES) & (self.size() - 1);
        (0..n)
            .rev()
            .find(|&i| Self::written(&self.read(alloc, at(i))))
            .map_or(0, |i| i + 1)
    }

    /// Settles the `n` skipped entries from `from` (see the module), oldest first, all known
    /// final (a later entry was read as written): one whose write has come is reported (late)
    /// and cleared, if `left` (reports left) allows; one not written is lost for good. Returns
    /// how many were settled (a prefix: it stops at the first written one `left` has no room
    /// for).
    fn settle<A: PageAllocator + ?Sized>(
        &self,
        alloc: &A,
        from: u32,
        n: u32,
        left: &mut usize,
        summary: &mut DrainSummary,
        report: &mut impl FnMut(Event),
    ) -> u32 {
        for i in 0..n {
            let at = (from + i * ENTRY_BYTES) & (self.size() - 1);
            let e = self.read(alloc, at);
            if Self::written(&e) {
                if *left == 0 {
                    return i;
                }
                self.clear(alloc, at);
                report(e);
                *left -= 1;
                summary.events += 1;
                summary.late += 1;
            }
        }
        n
    }

    /// Gives the log's page back.
    ///
    /// # Safety
    /// The page came from `alloc` and the unit no longer writes the log (`EventLogEn` clear,
    /// `EventLogRun` seen clear).
    pub unsafe fn release<A: PageAllocator + ?Sized>(self, alloc: &A) {
        // SAFETY: per the caller.
        unsafe { alloc.free(self.ring, self.len_log2 + 4) };
    }
}

// SAFETY: the log's page is owned by it; the CPU reads and clears it only through atomics.
unsafe impl Send for EventLog {}
// SAFETY: as above.
unsafe impl Sync for EventLog {}
