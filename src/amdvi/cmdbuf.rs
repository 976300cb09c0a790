//! The command buffer: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.4 "Commands" (the circular buffer, `CmdBufEn`, the head and tail pointers,
//! COMPLETION_WAIT) and §2.5 "Event Logging" (ILLEGAL_COMMAND_ERROR, COMMAND_HARDWARE_ERROR:
//! the unit stops fetching with the head pointer on the command, and `Status.CmdBufRun` clears).
//!
//! Software writes entries at the tail, then the tail pointer; the unit fetches from the head
//! and advances it. One entry is always left empty, so that head == tail means empty. Every
//! wait (for space, for a COMPLETION_WAIT store) is bounded by the poll budget.
//!
//! **Recovery.** When the unit stops on a command (`Status.CmdBufRun` clear while `CmdBufEn` is
//! set), the command at the head is replaced by `INVALIDATE_DEVTAB_ENTRY` of device 0 (always
//! legal, and an invalidation is never harmful), `CmdBufEn` is cleared and set again, and the
//! unit fetches on from the head; the call fails with [`Error::CommandError`] naming the event
//! the unit logged for it (read, not consumed, from the event log, among the events logged
//! since `CmdBufEn` was last set: [`StopLog`]; an older one names a slot of an earlier lap), so that the caller keeps
//! what the lost command covered and its retry issues it again -- the SMMUv3 driver replaces a
//! `CERROR_ILL` command and the VT-d driver skips an IQE descriptor the same way. A command
//! whose fetch failed (`COMMAND_HARDWARE_ERROR`) is replaced too: the retry writes it anew.
//!
//! **Starting.** A unit may show `CmdBufRun` some time after `CmdBufEn` was set (in `enable`,
//! and after a recovery). "Running clear" is therefore taken for a stop only once the buffer
//! is known to have started since `CmdBufEn` was last set: `CmdBufRun` was seen set, the head
//! moved from where it was, a COMPLETION_WAIT completed, or the event log names the command at
//! the head (a unit that stops at once on it). Until then a wait goes on, bounded by the poll
//! budget ([`Error::Timeout`]). After a recovery the head holds a legal command, so a unit
//! that starts and stops again before it is seen running has moved its head; until then the
//! log is not asked about the head: the stop just recovered is still logged against that slot
//! (read, not consumed) and would read as a new stop on every call until a drain.
//!
//! A `--cfg loom` build (`tests/loom_queues.rs`) reaches the ring and the semaphore word
//! through loom's atomics (`loom_words`, in place of `entry` and `semaphore_word`) and yields
//! to loom in its waits, so that a thread standing in for the unit consumes commands while
//! the real producer runs; a normal build compiles the code above unchanged.

use core::ptr::NonNull;
// A loom build replaces the functions that use `AtomicU64` (`loom_words`).
#[cfg_attr(loom, allow(unused_imports))]
use core::sync::atomic::{AtomicU64, Ordering};

use super::cmd::Command;
use super::regs::{self, Control, Status};
use super::{CommandErrorKind, Error, Wait};
use crate::mem::{Page, PageAllocator, PhysAddr, WalkerCoherency, PAGE_SHIFT_4K};
use crate::mmio::{dma_read_barrier, RegisterWindow};

/// Bytes per command.
pub const ENTRY_BYTES: u32 = 16;

/// Where the command buffer learns why the unit stopped: the event the unit logged for the
/// command it stopped on (the unit's event log; a closure for a bare buffer).
pub trait StopLog {
    /// The command error logged for the command at `pa` since `CmdBufEn` was last set, if any
    /// (read, not consumed).
    fn kind_of(&mut self, pa: PhysAddr) -> Option<CommandErrorKind>;

    /// `CmdBufEn` is about to be set again by a recovery: what is logged so far is about stops
    /// already recovered, which [`kind_of`](Self::kind_of) must no longer answer with (the
    /// next lap of the buffer reuses their command slots).
    fn restarted(&mut self) {}
}

impl<F: FnMut(PhysAddr) -> Option<CommandErrorKind>> StopLog for F {
    fn kind_of(&mut self, pa: PhysAddr) -> Option<CommandErrorKind> {
        self(pa)
    }
}

/// Where the command buffer stands.
#[derive(Debug)]
pub struct CommandBuffer {
    ring: Page,
    /// log2 of the number of entries (`ComLen`).
    len_log2: u32,
    /// The page COMPLETION_WAIT stores its sequence number in (its first word).
    semaphore: Page,
    /// Software's tail: the byte offset the next command goes to.
    tail: u32,
    /// The sequence number of the last COMPLETION_WAIT issued.
    sequence: u64,
    coherency: WalkerCoherency,
    budget: u32,
    /// The buffer was seen started since `CmdBufEn` was last set (see the module).
    started: bool,
    /// The head when `CmdBufEn` was last set.
    enabled_head: u32,
    /// `CmdBufEn` was last set by a recovery: the command at `enabled_head` is our legal
    /// replacement, and the event naming it is the stop already recovered (see the module).
    replaced: bool,
    /// Commands replaced after the unit stopped on them.
    pub recoveries: u64,
    /// Commands written.
    pub commands: u64,
    /// COMPLETION_WAITs issued.
    pub waits: u64,
}

impl CommandBuffer {
    /// Allocates a buffer of `2^len_log2` commands and the completion page.
    ///
    /// # Errors
    /// [`Error::NoMemory`]; [`Error::InvalidArgument`] for a length outside 8..=15;
    /// [`Error::TableOutOfRange`] for pages above 2^52 (given back).
    pub fn new<A: PageAllocator + ?Sized>(
        alloc: &A,
        len_log2: u32,
        coherency: WalkerCoherency,
        budget: u32,
    ) -> Result<Self, Error> {
        let size_log2 = len_log2 + 4;
        let ring = alloc.alloc(size_log2).ok_or(Error::NoMemory)?;
        let semaphore = regs::ring_base("command buffer", ring.pa, len_log2).and_then(|_| {
            let s = alloc.alloc(PAGE_SHIFT_4K).ok_or(Error::NoMemory)?;
            match regs::base_field("completion store", s.pa) {
                Ok(_) => Ok(s),
                Err(e) => {
                    // SAFETY: the page came from `alloc` just now; no unit was given it.
                    unsafe { alloc.free(s, PAGE_SHIFT_4K) };
                    Err(e)
                }
            }
        });
        let semaphore = match semaphore {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: as above.
                unsafe { alloc.free(ring, size_log2) };
                return Err(e);
            }
        };
        Ok(Self {
            ring,
            len_log2,
            semaphore,
            tail: 0,
            sequence: 0,
            coherency,
            budget,
            started: false,
            enabled_head: 0,
            replaced: false,
            recoveries: 0,
            commands: 0,
            waits: 0,
        })
    }

    fn size(&self) -> u32 {
        ENTRY_BYTES << self.len_log2
    }

    /// Points the unit at the buffer, empty (`CmdBufEn` must be clear).
    ///
    /// # Errors
    /// None in practice (the base was checked in [`new`](Self::new)).
    pub fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), Error> {
        regs.write64(
            regs::CMD_BUF_BASE,
            regs::ring_base("command buffer", self.ring.pa, self.len_log2)?,
        );
        regs.write64(regs::CMD_BUF_HEAD, 0);
        regs.write64(regs::CMD_BUF_TAIL, 0);
        self.tail = 0;
        self.started = false;
        self.enabled_head = 0;
        self.replaced = false;
        Ok(())
    }

    fn head<W: RegisterWindow + ?Sized>(&self, regs: &W) -> u32 {
        (regs.read64(regs::CMD_BUF_HEAD) & regs::POINTER_MASK) as u32 & (self.size() - 1)
    }

    fn free_bytes(&self, head: u32) -> u32 {
        let used = self.tail.wrapping_sub(head) & (self.size() - 1);
        self.size() - used - ENTRY_BYTES
    }

    #[cfg(not(loom))]
    fn entry(&self, offset: u32) -> [&AtomicU64; 2] {
        let base = self
            .ring
            .va
            .as_ptr()
            .wrapping_add(offset as usize)
            .cast::<AtomicU64>();
        // SAFETY: `offset` is an entry offset below the ring's size (masked by every caller),
        // the ring is live and 16-byte aligned, and the crate accesses it only atomically.
        unsafe { [&*base, &*base.add(1)] }
    }

    fn write_entry(&mut self, cmd: &Command) {
        let [lo, hi] = self.entry(self.tail);
        lo.store(cmd.0[0], Ordering::Relaxed);
        hi.store(cmd.0[1], Ordering::Relaxed);
        self.tail = (self.tail + ENTRY_BYTES) & (self.size() - 1);
        self.commands += 1;
    }

    /// Queues `cmds` and publishes them (one tail write, or one per refill when the buffer
    /// is full), waiting for space within the budget.
    ///
    /// # Errors
    /// [`Error::Timeout`] (`CommandSpace`) with the commands written so far published;
    /// [`Error::CommandError`] when the unit stopped on a command (recovered, see the module).
    pub fn submit<W, A>(
        &mut self,
        regs: &W,
        alloc: &A,
        cmds: impl IntoIterator<Item = Command>,
        kind_of: &mut impl StopLog,
    ) -> Result<(), Error>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        for cmd in cmds {
            if self.free_bytes(self.head(regs)) < ENTRY_BYTES {
                self.publish(regs);
                self.wait_for_space(regs, kind_of)?;
            }
            self.write_entry(&cmd);
            self.clean(
                alloc,
                self.tail.wrapping_sub(ENTRY_BYTES) & (self.size() - 1),
            );
        }
        self.publish(regs);
        Ok(())
    }

    fn clean<A: PageAllocator + ?Sized>(&self, alloc: &A, offset: u32) {
        let [lo, _] = self.entry(offset);
        self.coherency
            .sync(alloc, NonNull::from(lo).cast::<u8>(), ENTRY_BYTES as usize);
    }

    fn publish<W: RegisterWindow + ?Sized>(&self, regs: &W) {
        regs.doorbell64(regs::CMD_BUF_TAIL, u64::from(self.tail));
    }

    fn wait_for_space<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        kind_of: &mut impl StopLog,
    ) -> Result<(), Error> {
        for _ in 0..self.budget {
            if self.free_bytes(self.head(regs)) >= ENTRY_BYTES {
                return Ok(());
            }
            if let Some(e) = self.check_stopped(regs, kind_of) {
                return Err(e);
            }
            core::hint::spin_loop();
            // Under loom a spin that never yields holds the model unit back.
            #[cfg(loom)]
            loom::thread::yield_now();
        }
        Err(Error::Timeout {
            what: Wait::CommandSpace,
            polls: self.budget,
        })
    }

    /// Queues a COMPLETION_WAIT storing a new sequence number and waits (bounded) until the
    /// unit stored it: every command queued before it has completed.
    ///
    /// # Errors
    /// [`Error::Timeout`] (`CompletionWait`); [`Error::CommandError`] when the unit stopped on
    /// a command before it (recovered: the buffer runs again, but the command was lost).
    pub fn wait<W, A>(
        &mut self,
        regs: &W,
        alloc: &A,
        kind_of: &mut impl StopLog,
    ) -> Result<(), Error>
    where
        W: RegisterWindow + ?Sized,
        A: PageAllocator + ?Sized,
    {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let cmd = Command::completion_wait(Some((self.semaphore.pa, sequence)), false);
        self.submit(regs, alloc, [cmd], kind_of)?;
        self.waits += 1;
        let semaphore = self.semaphore;
        let word = semaphore_word(&semaphore);
        for _ in 0..self.budget {
            if self.coherency == WalkerCoherency::NonCoherent {
                alloc.sync_for_cpu(self.semaphore.va, 8);
            }
            if word.load(Ordering::Acquire) == sequence {
                dma_read_barrier();
                self.started = true;
                return Ok(());
            }
            if let Some(e) = self.check_stopped(regs, kind_of) {
                return Err(e);
            }
            core::hint::spin_loop();
            #[cfg(loom)]
            loom::thread::yield_now();
        }
        Err(Error::Timeout {
            what: Wait::CompletionWait { sequence },
            polls: self.budget,
        })
    }

    /// If the unit stopped on a command, recovers (see the module) and returns the error. A
    /// buffer not seen started since `CmdBufEn` was set is not stopped (see the module).
    fn check_stopped<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        kind_of: &mut impl StopLog,
    ) -> Option<Error> {
        // Known started before `Status` was read: only then is "running clear" a stop (a
        // start seen after it, by the head, is judged at the next poll).
        let started = self.started;
        if regs::status(regs).contains(Status::CMD_BUF_RUN) {
            self.started = true;
            return None;
        }
        if !regs::control(regs).contains(Control::CMD_BUF_EN) {
            return None;
        }
        let head = self.head(regs);
        self.started |= head != self.enabled_head;
        if !started && self.replaced {
            // Not started since a recovery: the head still holds the replacement, and the
            // event naming that slot is the stop just recovered (read, not consumed).
            return None;
        }
        let pa = self.ring.pa.checked_add(u64::from(head))?;
        let logged = kind_of.kind_of(pa);
        if !started && logged.is_none() {
            return None;
        }
        let kind = logged.unwrap_or(CommandErrorKind::Stopped);
        let [lo, hi] = self.entry(head);
        let opcode = (lo.load(Ordering::Relaxed) >> 60) as u8;
        if let Err(e) = regs::set_control(regs, Control::CMD_BUF_EN, false, self.budget) {
            return Some(e);
        }
        let nop = Command::invalidate_devtab_entry(0);
        lo.store(nop.0[0], Ordering::Relaxed);
        hi.store(nop.0[1], Ordering::Relaxed);
        // The unit fetches from the head again once re-enabled (it is written only while
        // `CmdBufEn` is clear); the tail stays ours.
        regs.write64(regs::CMD_BUF_HEAD, u64::from(head));
        regs.write64(regs::CMD_BUF_TAIL, u64::from(self.tail));
        self.started = false;
        self.enabled_head = head;
        self.replaced = true;
        // The stop just recovered is logged before this: a later one is logged after.
        kind_of.restarted();
        if let Err(e) = regs::set_control(regs, Control::CMD_BUF_EN, true, self.budget) {
            return Some(e);
        }
        self.recoveries += 1;
        Some(Error::CommandError { kind, head, opcode })
    }

    /// Gives the buffer's pages back.
    ///
    /// # Safety
    /// The pages came from `alloc`, and the unit no longer reads the buffer nor writes the
    /// completion page (`CmdBufEn` clear and `CmdBufRun` seen clear).
    pub unsafe fn release<A: PageAllocator + ?Sized>(self, alloc: &A) {
        // SAFETY: per the caller.
        unsafe {
            alloc.free(self.ring, self.len_log2 + 4);
            alloc.free(self.semaphore, PAGE_SHIFT_4K);
        }
    }
}

/// The word COMPLETION_WAIT stores its sequence number in: the first of the semaphore page.
#[cfg(not(loom))]
fn semaphore_word(page: &Page) -> &AtomicU64 {
    // SAFETY: the semaphore page is live while the buffer is, and 8-byte aligned; the unit
    // writes it with DMA, which the crate reads only atomically.
    unsafe { &*page.va.as_ptr().cast::<AtomicU64>() }
}

/// Under `--cfg loom` (`tests/loom_queues.rs`) the test allocator's pages are arrays of loom's
/// `AtomicU64`, reached by word index, never by byte offset.
#[cfg(loom)]
mod loom_words {
    use super::CommandBuffer;
    use crate::mem::Page;
    use loom::sync::atomic::AtomicU64;

    impl CommandBuffer {
        /// Every later wait's poll budget (for a model-checking scenario).
        pub fn set_budget(&mut self, budget: u32) {
            self.budget = budget;
        }

        /// As the normal build's `entry`: the two words of the command at byte `offset`.
        pub(super) fn entry(&self, offset: u32) -> [&AtomicU64; 2] {
            let first = self.ring.va.cast::<AtomicU64>().as_ptr();
            let word = offset as usize / 8;
            // SAFETY: `offset` is an entry offset below the ring's size, so words `word` and
            // `word + 1` lie inside the ring, a live page of loom atomics until `release`.
            unsafe { [&*first.add(word), &*first.add(word + 1)] }
        }
    }

    /// As the normal build's `semaphore_word`.
    pub(super) fn semaphore_word(page: &Page) -> &AtomicU64 {
        // SAFETY: the semaphore page is a live page of loom atomics while the buffer is.
        unsafe { &*page.va.cast::<AtomicU64>().as_ptr() }
    }
}

#[cfg(loom)]
use loom_words::semaphore_word;

// SAFETY: the ring and completion pages are owned by the buffer (nothing else writes them from
// the CPU); moving the buffer to another thread moves that ownership.
unsafe impl Send for CommandBuffer {}
// SAFETY: `&self` methods read the pages only through atomics; writes need `&mut self`.
unsafe impl Sync for CommandBuffer {}
