//! The invalidation queue: Intel VT-d specification rev. 4.1, §6.5.2 Queued Invalidation
//! Interface, §6.5.2.10 Hardware Handling of Queued Invalidation Interface Errors, and the
//! registers `IQH_REG` / `IQT_REG` / `IQA_REG` (§11.4).
//!
//! The queue is a ring of `2^QS` 4 KiB pages from the [`PageAllocator`]: `2^(QS+8)` 128-bit
//! descriptors, or `2^(QS+7)` 256-bit ones when `IQA.DW = 1` (scalable mode). Software owns the
//! tail (`IQT`), hardware the head (`IQH`); both hold byte offsets (`index << 4` or `<< 5`). One
//! slot always stays empty so that `head == tail` means empty.
//!
//! Rules kept here:
//! - never overwrite a descriptor hardware has not consumed: free space is computed from `IQH`
//!   before every batch, and waiting for space is bounded;
//! - one `IQT` write (a doorbell, ordered after the descriptor stores) per batch;
//! - exactly one invalidation wait descriptor per synchronisation; it writes a sequence number to
//!   a status word the queue owns, polled with a bound;
//! - queue errors (`FSTS.IQE/ITE/ICE`) become [`Error::QueueError`] with the `IQH` index, and are
//!   cleared so later submissions proceed. For IQE, §6.5.2.10: hardware stops at the offending
//!   descriptor, leaves `IQH` on it, and fetches nothing until `IQE` is cleared; the queue
//!   replaces that descriptor with a harmless wait (status write to a scratch word) before
//!   clearing, so hardware resumes past it, then writes `IQT` again (the same tail): QEMU
//!   resumes only on an `IQT` write, not when `IQE` is cleared.
//!
//! The descriptor ring and the status words are plain memory the unit reads and writes directly;
//! this module assumes those accesses are coherent with the CPU caches (`ECAP.C` covers the
//! translation structures; queue accesses are treated as snooped, as common drivers do).
//!
//! A `--cfg loom` build (`tests/loom_queues.rs`) replaces `write_slot` and `status_word` with
//! forms over loom's atomics (module `loom_words`), so that a thread standing in for the unit
//! fetches the descriptors and writes the status while the real producer runs; a normal build
//! compiles the code below unchanged.

// A loom build replaces the functions that use these (`loom_words`).
#[cfg_attr(loom, allow(unused_imports))]
use core::ptr::NonNull;
#[cfg_attr(loom, allow(unused_imports))]
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::inv_desc::{Descriptor, WaitFlags};
use super::regs::{self, clear_fsts, set_persistent, Fsts, Gsts, PersistentCommand};
use super::root_table::table_page;
use super::{Error, QueueErrorKind, Wait};
use crate::mem::{Page, PageAllocator, PhysAddr, PAGE_SHIFT_4K};
use crate::mmio::{dma_read_barrier, poll, RegisterWindow};

/// `IQA.DW`: descriptor width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DescriptorWidth {
    /// 128-bit descriptors (legacy mode, or scalable mode by choice).
    Bits128 = 0,
    /// 256-bit descriptors (scalable mode; needs `ECAP.SMTS`).
    Bits256 = 1,
}

impl DescriptorWidth {
    /// log2 of the descriptor size in bytes, the shift between index and `IQH`/`IQT` value.
    pub const fn shift(self) -> u32 {
        4 + self as u32
    }
}

/// `IQA` bit 11: Descriptor Width.
pub const IQA_DW: u64 = 1 << 11;
/// `IQA` 2:0: Queue Size, `2^QS` pages.
pub const IQA_QS_MAX: u8 = 7;

/// Offset of the wait status word in the status page.
const STATUS_OFFSET: usize = 0;
/// Offset of the scratch word that recovery waits write.
const SCRATCH_OFFSET: usize = 4;
/// What a recovery wait writes to the scratch word.
const RECOVERY_MARK: u32 = 0x1be0_0e0e;

/// Queue geometry and wait bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueConfig {
    /// `IQA.QS` (0..=7): the queue is `2^qs` pages.
    pub qs: u8,
    /// `IQA.DW`.
    pub width: DescriptorWidth,
    /// Register polls before any wait gives up.
    pub poll_budget: u32,
    /// The host address width: the ring (`IQA.IQA`, bits HAW-1:12) and the wait descriptors'
    /// status page must lie below `2^haw`.
    pub haw: u32,
}

/// A running invalidation queue over the register window `W`: a [`QueueCore`] with the window it
/// drives.
#[derive(Debug)]
pub struct InvalidationQueue<W: RegisterWindow> {
    regs: W,
    core: QueueCore,
}

impl<W: RegisterWindow> InvalidationQueue<W> {
    /// Allocates the ring and status page, programs `IQT = 0` and `IQA`, and sets `GCMD.QIE`
    /// (see [`QueueCore::enable`]).
    ///
    /// # Errors
    /// As [`QueueCore::enable`].
    pub fn enable<A: PageAllocator + ?Sized>(
        regs: W,
        alloc: &A,
        config: QueueConfig,
    ) -> Result<Self, Error> {
        let core = QueueCore::enable(&regs, alloc, config)?;
        Ok(Self { regs, core })
    }

    /// Number of descriptor slots.
    pub const fn entries(&self) -> u32 {
        self.core.entries()
    }

    /// The most descriptors one [`submit_and_wait`](Self::submit_and_wait) batch may carry.
    pub const fn batch_capacity(&self) -> usize {
        self.core.batch_capacity()
    }

    /// The software tail index.
    pub const fn tail(&self) -> u32 {
        self.core.tail()
    }

    /// The register window.
    pub const fn regs(&self) -> &W {
        &self.regs
    }

    /// Queues `descriptors` and rings the doorbell once (see [`QueueCore::submit`]).
    ///
    /// # Errors
    /// As [`QueueCore::submit`].
    pub fn submit(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        self.core.submit(&self.regs, descriptors)
    }

    /// Queues one invalidation wait and polls for its status write.
    ///
    /// # Errors
    /// As [`QueueCore::wait`].
    pub fn wait(&mut self) -> Result<(), Error> {
        self.core.wait(&self.regs)
    }

    /// Queues `descriptors` and one wait, and polls for the wait's status write.
    ///
    /// # Errors
    /// As [`QueueCore::submit_and_wait`].
    pub fn submit_and_wait(&mut self, descriptors: &[Descriptor]) -> Result<(), Error> {
        self.core.submit_and_wait(&self.regs, descriptors)
    }

    /// Waits for the unit to consume everything queued, then clears `GCMD.QIE`.
    ///
    /// # Errors
    /// [`Error::QueueError`] or [`Error::Timeout`].
    pub fn disable(&mut self) -> Result<(), Error> {
        self.core.disable(&self.regs)
    }

    /// Gives the ring and status pages back to `alloc` once queued invalidation is off.
    ///
    /// # Errors
    /// Returns the queue with [`Error::UnexpectedState`] if `GSTS.QIES` is still set.
    ///
    /// # Safety
    /// `alloc` is the allocator [`enable`](Self::enable) was given.
    pub unsafe fn release<A: PageAllocator + ?Sized>(self, alloc: &A) -> Result<(), (Self, Error)> {
        let Self { regs, core } = self;
        // SAFETY: forwarded contract: `alloc` is the allocator the queue came from.
        unsafe { core.release(&regs, alloc) }.map_err(|(core, e)| (Self { regs, core }, e))
    }
}

/// The state of a running invalidation queue without its register window: ring, status page,
/// tail and sequence number. Every method that touches hardware takes the window, so a driver
/// that owns its window elsewhere (the unit, which also uses it for GCMD and faults) can keep
/// the queue behind its own lock.
#[derive(Debug)]
pub struct QueueCore {
    ring: Page,
    status: Page,
    config: QueueConfig,
    entries: u32,
    tail: u32,
    sequence: u32,
}

// SAFETY: the ring and status pages are owned by the queue (nothing else writes them from the
// CPU); moving the queue to another thread moves that ownership.
unsafe impl Send for QueueCore {}
// SAFETY: `&self` methods only read plain fields; every access to the pages needs `&mut self`.
unsafe impl Sync for QueueCore {}

impl QueueCore {
    /// Allocates the ring and status page, programs `IQT = 0` and `IQA`, and sets `GCMD.QIE`.
    /// If queued invalidation is already on (left by firmware or a previous kernel), it is
    /// given `poll_budget` polls to drain and turned off (drained or not), since `IQA` may only
    /// change while it is off; queue errors left in `FSTS` are cleared before the new queue
    /// starts.
    ///
    /// On a hardware time-out the pages are leaked rather than freed: the unit may still hold
    /// their address.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for `qs > 7`; [`Error::NoMemory`]; [`Error::TableOutOfRange`]
    /// for a page the allocator gave at or above `2^haw` (given back); [`Error::Timeout`] if the
    /// unit does not acknowledge `QIE`; [`Error::UnexpectedState`] if `IQH` is not 0
    /// once enabled.
    pub fn enable<W: RegisterWindow + ?Sized, A: PageAllocator + ?Sized>(
        regs: &W,
        alloc: &A,
        config: QueueConfig,
    ) -> Result<Self, Error> {
        if config.qs > IQA_QS_MAX {
            return Err(Error::InvalidArgument {
                what: "IQA.QS (0..=7)",
                value: config.qs as u64,
            });
        }
        let budget = config.poll_budget;
        if regs::gsts(regs).contains(Gsts::QIES) {
            // A previous owner's queue gets the budget to drain; a queue stopped by an error
            // never will. Either way it is turned off: what it still held was the previous
            // owner's business, and the caller invalidates every cache globally next.
            let _drained = poll(budget, || {
                let (fsts, _) = regs::fsts(regs);
                let stopped = fsts.intersects(Fsts::IQE | Fsts::ITE);
                let empty = regs.read64(regs::IQH_REG) == regs.read64(regs::IQT_REG);
                (empty || stopped).then_some(())
            });
            set_persistent(
                regs,
                PersistentCommand::QueuedInvalidationEnable,
                false,
                budget,
            )?;
        }
        // Errors a previous owner left would stop the new queue at its first descriptor, and
        // the first wait would take them for its own.
        clear_fsts(regs, Fsts::IQE | Fsts::ITE | Fsts::ICE);
        let ring_log2 = PAGE_SHIFT_4K + config.qs as u32;
        let ring = table_page(alloc, ring_log2, config.haw, "invalidation queue")?;
        let status = match table_page(alloc, PAGE_SHIFT_4K, config.haw, "invalidation status page")
        {
            Ok(page) => page,
            Err(e) => {
                // SAFETY: `ring` came from `alloc` just now and the unit never saw it.
                unsafe { alloc.free(ring, ring_log2) };
                return Err(e);
            }
        };
        let entries = 1u32 << (8 + config.qs as u32 - config.width as u32);
        regs.write64(regs::IQT_REG, 0);
        let tail = regs.read64(regs::IQT_REG);
        if tail != 0 {
            // SAFETY: both pages came from `alloc` just now and the unit never saw them.
            unsafe {
                alloc.free(ring, ring_log2);
                alloc.free(status, PAGE_SHIFT_4K);
            }
            // Enabling with a stale tail would run the new ring's empty slots.
            return Err(Error::UnexpectedState {
                register: "IQT (the write of 0 did not take)",
                value: tail,
            });
        }
        let dw = if config.width == DescriptorWidth::Bits256 {
            IQA_DW
        } else {
            0
        };
        let iqa = ring.pa.get() | dw | config.qs as u64;
        regs.write64(regs::IQA_REG, iqa);
        set_persistent(
            regs,
            PersistentCommand::QueuedInvalidationEnable,
            true,
            budget,
        )?;
        // IQA is checked once the queue runs (QEMU reads back the address it latched with
        // QIE, not the one written): a dropped write leaves the unit on another ring.
        let running = regs.read64(regs::IQA_REG);
        if running != iqa {
            set_persistent(
                regs,
                PersistentCommand::QueuedInvalidationEnable,
                false,
                budget,
            )?;
            // SAFETY: both pages came from `alloc` just now; the unit runs (ran) another ring
            // and never had their address.
            unsafe {
                alloc.free(ring, ring_log2);
                alloc.free(status, PAGE_SHIFT_4K);
            }
            return Err(Error::UnexpectedState {
                register: "IQA (the write did not take)",
                value: running,
            });
        }
        let head = regs.read64(regs::IQH_REG);
        if head != 0 {
            return Err(Error::UnexpectedState {
                register: "IQH after enabling queued invalidation",
                value: head,
            });
        }
        Ok(Self {
            ring,
            status,
            config,
            entries,
            tail: 0,
            sequence: 0,
        })
    }

    /// Number of descriptor slots.
    pub const fn entries(&self) -> u32 {
        self.entries
    }

    /// The most descriptors one [`submit_and_wait`](Self::submit_and_wait) batch may carry (one
    /// slot stays empty and one holds the wait).
    pub const fn batch_capacity(&self) -> usize {
        self.entries as usize - 2
    }

    /// The software tail index.
    pub const fn tail(&self) -> u32 {
        self.tail
    }

    /// Where the descriptor ring is (`IQA.IQA`).
    pub const fn ring_pa(&self) -> PhysAddr {
        self.ring.pa
    }

    /// The descriptor width the queue was programmed with.
    pub const fn width(&self) -> DescriptorWidth {
        self.config.width
    }

    /// Queues `descriptors` and rings the doorbell once, without waiting for completion.
    ///
    /// # Errors
    /// [`Error::BatchTooLarge`]; [`Error::InvalidArgument`] for a 256-bit descriptor in a 128-bit
    /// queue; [`Error::QueueError`] if the unit reports a queue error; [`Error::Timeout`] if
    /// space does not free up within the poll budget.
    pub fn submit<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
    ) -> Result<(), Error> {
        self.submit_within(regs, descriptors, self.config.poll_budget)
    }

    /// As [`submit`](Self::submit), waiting for space at most `budget` polls (a batch with
    /// device-TLB invalidations frees its slots only as devices answer).
    ///
    /// # Errors
    /// As [`submit`](Self::submit).
    pub fn submit_within<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
        budget: u32,
    ) -> Result<(), Error> {
        if descriptors.is_empty() {
            return Ok(());
        }
        self.check_batch(descriptors, 0)?;
        self.reserve(regs, descriptors.len() as u32, budget)?;
        for d in descriptors {
            self.push(d);
        }
        self.ring_doorbell(regs);
        Ok(())
    }

    /// Queues one invalidation wait and polls until hardware writes its status, which means
    /// every descriptor queued before it has completed.
    ///
    /// # Errors
    /// [`Error::QueueError`] (the error is cleared first); [`Error::Timeout`] naming the
    /// sequence number if the status write does not arrive within the poll budget.
    pub fn wait<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), Error> {
        self.submit_and_wait(regs, &[])
    }

    /// Queues `descriptors` followed by one invalidation wait, rings the doorbell once, and
    /// polls for the wait's status write.
    ///
    /// # Errors
    /// As [`submit`](Self::submit) and [`wait`](Self::wait).
    pub fn submit_and_wait<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
    ) -> Result<(), Error> {
        self.submit_and_wait_within(regs, descriptors, self.config.poll_budget)
    }

    /// As [`submit_and_wait`](Self::submit_and_wait), polling at most `budget` times for space
    /// and for the wait's status write: a batch with device-TLB invalidations completes only
    /// when every device answered, which PCIe allows to take up to a minute.
    ///
    /// # Errors
    /// As [`submit_and_wait`](Self::submit_and_wait).
    pub fn submit_and_wait_within<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
        budget: u32,
    ) -> Result<(), Error> {
        self.submit_and_wait_noting(regs, descriptors, budget)
            .map_err(|(e, _)| e)
    }

    /// As [`submit_and_wait_within`](Self::submit_and_wait_within), saying with an error
    /// whether `descriptors` were queued (`true`: they are in the ring and the doorbell was
    /// rung, so the unit runs them whatever became of the wait; `false`: nothing was written,
    /// as for a batch refused, no room within `budget`, or a queue error met while looking
    /// for room).
    ///
    /// # Errors
    /// As [`submit_and_wait`](Self::submit_and_wait), with the flag.
    pub fn submit_and_wait_noting<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
        budget: u32,
    ) -> Result<(), (Error, bool)> {
        self.submit_and_wait_flagged(regs, descriptors, budget, WaitFlags::default())
    }

    /// One invalidation wait with Page-request Drain (`PD`, and `FN`): its status is written
    /// only once every page request the unit received before it is in the page request queue
    /// (rev. 4.1 §6.5.2.8; the caller checks `ECAP.PDS`).
    ///
    /// # Errors
    /// As [`wait`](Self::wait).
    pub fn wait_draining_page_requests<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        budget: u32,
    ) -> Result<(), Error> {
        let flags = WaitFlags {
            fence: true,
            page_request_drain: true,
            ..WaitFlags::default()
        };
        self.submit_and_wait_flagged(regs, &[], budget, flags)
            .map_err(|(e, _)| e)
    }

    /// [`submit_and_wait_noting`](Self::submit_and_wait_noting) with the wait's `flags`.
    fn submit_and_wait_flagged<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        descriptors: &[Descriptor],
        budget: u32,
        flags: WaitFlags,
    ) -> Result<(), (Error, bool)> {
        self.check_batch(descriptors, 1).map_err(|e| (e, false))?;
        let sequence = self.sequence.wrapping_add(1);
        let wait = Descriptor::wait(flags, Some((sequence, self.status_pa(STATUS_OFFSET))))
            .map_err(|e| (e, false))?;
        self.reserve(regs, descriptors.len() as u32 + 1, budget)
            .map_err(|e| (e, false))?;
        for d in descriptors {
            self.push(d);
        }
        self.push(&wait);
        self.sequence = sequence;
        self.ring_doorbell(regs);
        self.await_status(regs, sequence, budget)
            .map_err(|e| (e, true))
    }

    /// Waits for the unit to consume everything queued, then clears `GCMD.QIE`.
    ///
    /// # Errors
    /// [`Error::QueueError`] or [`Error::Timeout`].
    pub fn disable<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), Error> {
        let budget = self.config.poll_budget;
        // Drained is IQH reaching the IQT the hardware holds: descriptors whose doorbell the
        // unit never took (a dropped IQT write) were never fetched and never will be.
        // A queue error here belongs to work whose caller already saw it fail (every batch
        // waits for itself): it is cleared (IQE's descriptor neutralised) and the drain goes on.
        poll(budget, || match self.probe_head(regs) {
            Ok(head) => {
                let tail = regs.read64(regs::IQT_REG) >> self.config.width.shift();
                (u64::from(head) == tail).then_some(Ok(()))
            }
            Err(Error::QueueError { .. }) => None,
            Err(e) => Some(Err(e)),
        })
        .unwrap_or(Err(Error::Timeout {
            what: Wait::QueueDrain,
            polls: budget,
        }))?;
        set_persistent(
            regs,
            PersistentCommand::QueuedInvalidationEnable,
            false,
            budget,
        )
    }

    /// Gives the ring and status pages back to `alloc` once queued invalidation is off.
    ///
    /// # Errors
    /// Returns the queue with [`Error::UnexpectedState`] if `GSTS.QIES` is still set.
    ///
    /// # Safety
    /// `alloc` is the allocator [`enable`](Self::enable) was given.
    pub unsafe fn release<W: RegisterWindow + ?Sized, A: PageAllocator + ?Sized>(
        self,
        regs: &W,
        alloc: &A,
    ) -> Result<(), (Self, Error)> {
        let gsts = regs::gsts(regs);
        if gsts.contains(Gsts::QIES) {
            let e = Error::UnexpectedState {
                register: "GSTS (QIES still set)",
                value: gsts.bits() as u64,
            };
            return Err((self, e));
        }
        // SAFETY: both pages came from `alloc` (caller's promise) with these sizes, and the unit
        // no longer fetches from them: queued invalidation is off.
        unsafe {
            alloc.free(self.ring, PAGE_SHIFT_4K + self.config.qs as u32);
            alloc.free(self.status, PAGE_SHIFT_4K);
        }
        Ok(())
    }

    fn check_batch(&self, descriptors: &[Descriptor], extra: usize) -> Result<(), Error> {
        let len = descriptors.len() + extra;
        if len > self.batch_capacity() {
            return Err(Error::BatchTooLarge {
                len,
                capacity: self.batch_capacity(),
            });
        }
        if self.config.width == DescriptorWidth::Bits128 {
            if let Some(d) = descriptors.iter().find(|d| d.qw[2] != 0 || d.qw[3] != 0) {
                return Err(Error::InvalidArgument {
                    what: "256-bit descriptor in a 128-bit queue",
                    value: d.qw[0],
                });
            }
        }
        Ok(())
    }

    fn status_pa(&self, offset: usize) -> PhysAddr {
        // The page is 4 KiB aligned and the offsets are below 4 KiB: OR cannot overflow.
        PhysAddr::new(self.status.pa.get() | offset as u64)
    }

    #[cfg(not(loom))]
    fn status_word(&self) -> &AtomicU32 {
        // SAFETY: the status page is a live, 4 KiB-aligned page owned by this queue until
        // `release`; the word at offset 0 is aligned, and hardware writes it whole.
        unsafe {
            &*self
                .status
                .va
                .as_ptr()
                .add(STATUS_OFFSET)
                .cast::<AtomicU32>()
        }
    }

    /// Reads `IQH` as an index, after checking for queue errors.
    fn probe_head<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<u32, Error> {
        self.check_errors(regs)?;
        self.head_index(regs)
    }

    fn head_index<W: RegisterWindow + ?Sized>(&self, regs: &W) -> Result<u32, Error> {
        let raw = regs.read64(regs::IQH_REG);
        let index = raw >> self.config.width.shift();
        if index >= self.entries as u64 {
            return Err(Error::UnexpectedState {
                register: "IQH",
                value: raw,
            });
        }
        Ok(index as u32)
    }

    /// Polls until `needed` slots are free, never counting the slot that must stay empty.
    fn reserve<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        needed: u32,
        budget: u32,
    ) -> Result<(), Error> {
        let entries = self.entries;
        poll(budget, || match self.probe_head(regs) {
            // head, tail < entries <= 2^15: no overflow.
            Ok(head) => ((head + entries - self.tail - 1) % entries >= needed).then_some(Ok(())),
            Err(e) => Some(Err(e)),
        })
        .unwrap_or(Err(Error::Timeout {
            what: Wait::QueueSpace { needed },
            polls: budget,
        }))
    }

    #[cfg(not(loom))]
    fn slot(&self, index: u32) -> NonNull<u64> {
        let offset = (index as usize) << self.config.width.shift();
        // SAFETY: `index < entries`, so the offset lies inside the 2^(12+QS)-byte ring.
        unsafe { self.ring.va.add(offset).cast::<u64>() }
    }

    /// Writes `d` at `index` (the words the width carries).
    #[cfg(not(loom))]
    fn write_slot(&self, index: u32, d: &Descriptor) {
        let words = if self.config.width == DescriptorWidth::Bits256 {
            4
        } else {
            2
        };
        let p = self.slot(index).cast::<AtomicU64>();
        for (i, &w) in d.qw.iter().take(words).enumerate() {
            // SAFETY: `slot` points at a descriptor-aligned slot of `words` u64s inside the ring,
            // a live page only this queue writes from the CPU; the unit reads it concurrently,
            // so each word is one 64-bit atomic store. Relaxed: the doorbell's barrier
            // (`doorbell64`: `dma_write_barrier` before the `IQT` write) orders them before the
            // unit may fetch them.
            unsafe { &*p.as_ptr().add(i) }.store(w, Ordering::Relaxed)
        }
    }

    fn push(&mut self, d: &Descriptor) {
        self.write_slot(self.tail, d);
        self.tail = (self.tail + 1) % self.entries;
    }

    fn ring_doorbell<W: RegisterWindow + ?Sized>(&self, regs: &W) {
        let value = (self.tail as u64) << self.config.width.shift();
        regs.doorbell64(regs::IQT_REG, value);
    }

    fn await_status<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        sequence: u32,
        budget: u32,
    ) -> Result<(), Error> {
        poll(budget, || {
            dma_read_barrier();
            if self.status_word().load(Ordering::Acquire) == sequence {
                // A wait completes even when a device-TLB invalidation before it ended with
                // an invalidation completion error (ICE): that invalidation may not have taken
                // effect, so the batch is not complete.
                return Some(self.check_errors(regs));
            }
            self.check_errors(regs).err().map(Err)
        })
        .unwrap_or(Err(Error::Timeout {
            what: Wait::InvalidationWait { sequence },
            polls: budget,
        }))
    }

    /// Turns a pending `FSTS` queue error into [`Error::QueueError`] after clearing it (and, for
    /// IQE, neutralising the offending descriptor).
    fn check_errors<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), Error> {
        let (fsts, _) = regs::fsts(regs);
        let (kind, bit) = if fsts.contains(Fsts::IQE) {
            (QueueErrorKind::InvalidQueueEntry, Fsts::IQE)
        } else if fsts.contains(Fsts::ITE) {
            (QueueErrorKind::InvalidationTimeout, Fsts::ITE)
        } else if fsts.contains(Fsts::ICE) {
            (QueueErrorKind::InvalidationCompletion, Fsts::ICE)
        } else {
            return Ok(());
        };
        let head = self.head_index(regs)?;
        let stopped = bit == Fsts::IQE && head != self.tail;
        if stopped {
            self.neutralise(head)?;
        }
        clear_fsts(regs, bit);
        if stopped {
            // §6.5.2.10's hardware resumes fetching at IQH once IQE is clear; QEMU resumes
            // only on an IQT write (QEMU.md). The same tail again is a no-op for the former
            // and restarts the latter, so the neutralised slot and what follows it run and
            // later waits (a drain, `disable`) complete.
            self.ring_doorbell(regs);
        }
        Err(Error::QueueError { kind, head })
    }

    /// Replaces the descriptor at `index` with a wait whose status write lands in the scratch
    /// word: valid for every unit, and without effect on the caller's completion tracking.
    fn neutralise(&self, index: u32) -> Result<(), Error> {
        let harmless = Descriptor::wait(
            WaitFlags::default(),
            Some((RECOVERY_MARK, self.status_pa(SCRATCH_OFFSET))),
        )?;
        self.write_slot(index, &harmless);
        // The write must be visible before IQE is cleared and the unit re-fetches the slot.
        crate::mmio::dma_write_barrier();
        Ok(())
    }
}

/// Under `--cfg loom` the test allocator's pages are arrays of loom's `AtomicU64`, reached by
/// index, never by byte offset; the status word is the low half (little-endian) of word 0.
#[cfg(loom)]
mod loom_words {
    use super::{Descriptor, DescriptorWidth, QueueCore, STATUS_OFFSET};
    use core::sync::atomic::Ordering;
    use loom::sync::atomic::AtomicU64;

    const _: () = assert!(STATUS_OFFSET == 0);

    /// The status word as `QueueCore::await_status` reads it.
    pub(super) struct StatusWord<'a>(&'a AtomicU64);

    impl StatusWord<'_> {
        pub(super) fn load(&self, order: Ordering) -> u32 {
            self.0.load(order) as u32
        }
    }

    impl QueueCore {
        /// As the normal build's `write_slot`: the words the width carries, each one relaxed
        /// 64-bit store (the doorbell's barrier orders them before `IQT`).
        pub(super) fn write_slot(&self, index: u32, d: &Descriptor) {
            let words = if self.config.width == DescriptorWidth::Bits256 {
                4
            } else {
                2
            };
            let first = self.ring.va.cast::<AtomicU64>().as_ptr();
            for (i, &w) in d.qw.iter().take(words).enumerate() {
                // SAFETY: `index < entries`, so word `index * words + i` lies inside the ring,
                // a live page of loom atomics until `release`.
                unsafe { &*first.add(index as usize * words + i) }.store(w, Ordering::Relaxed)
            }
        }

        /// As the normal build's `status_word`.
        pub(super) fn status_word(&self) -> StatusWord<'_> {
            // SAFETY: the status page is a live page of loom atomics until `release`.
            StatusWord(unsafe { &*self.status.va.cast::<AtomicU64>().as_ptr() })
        }
    }
}

#[cfg(test)]
mod tests;
