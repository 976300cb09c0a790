//! The command queue: submission with space checks, batching, CMD_SYNC completion, CERROR
//! recovery.
//!
//! Arm IHI 0070 G.b §3.5 (queues, PROD/CONS with wrap flags), §4.7 (CMD_SYNC: completion
//! signalled by CONS moving past it, by an MSI write of MSIData to MSIAddress, or by SEV),
//! §6.3.26-6.3.28 (CMDQ_BASE, CMDQ_PROD, CMDQ_CONS with ERR in bits 30:24), §7.1 (command
//! errors: the unit stops at the faulting command with CONS pointing at it and toggles
//! GERROR.CMDQ_ERR; software fixes or replaces the command, then toggles GERRORN.CMDQ_ERR and
//! the unit re-fetches from CONS), §7.5 (GERROR: MSI_CMDQ_ABT_ERR, SFM_ERR), §12.3 (service
//! failure mode).
//!
//! Recovery depends on the `CMDQ_CONS.ERR` code (as Linux's driver also does):
//! - `CERROR_ILL` (and codes the spec does not define): the command can never run; it is
//!   replaced by a CMD_SYNC and the error returned, so the caller's operation fails and its
//!   retry issues the command again.
//! - `CERROR_ABT`: the fetch was aborted by the interconnect; the command is left in place and
//!   fetched again on acknowledgement. It is not dropped: a transient abort costs nothing, a
//!   persistent one ends the wait with [`CommandErrorKind::Abort`] and the command still
//!   queued (fetched again by the next wait).
//! - `CERROR_ATC_INV_SYNC`: CONS is on the CMD_SYNC whose ATS invalidations timed out; it is
//!   acknowledged, so the queue runs again, and the CMD_SYNC runs again and may then complete:
//!   the timed-out invalidations are no longer outstanding, so that completion does not mean
//!   they took effect (§3.9.1.4: the error keeps the sync from looking complete, lest an
//!   unmapped page the device may still reach be reused). The wait of that CMD_SYNC fails
//!   with [`CommandErrorKind::AtcInvalidationSync`] whatever follows (its caller keeps the
//!   pages and retries, issuing the ATC invalidations again); a wait that meets it at an
//!   earlier CMD_SYNC (another call's, still pending) recovers it and completes on its own.
//!
//! `GERROR.SFM_ERR` ends every wait at once with [`SmmuError::ServiceFailure`] (it is left
//! unacknowledged: acknowledging does not leave the mode, and the unit's `enable` uses it to
//! refuse until a reset). `GERROR.MSI_CMDQ_ABT_ERR` while an MSI-completed CMD_SYNC is awaited
//! means its MSI will never arrive: the wait falls back to CMDQ_CONS, completion is polled
//! there from then on, and the sync reports [`SmmuError::SyncMsiAborted`].
//!
//! GERRORN (§6.3.18) is acknowledged by a read-modify-write, and the unit's event handler
//! (`SmmuUnit::handle_events`) writes it too, for the errors that are not the queue's. Every
//! GERRORN write is made under the unit's lock of this queue (`acknowledge_global_errors`
//! for the handler; the queue's own waits hold it throughout): two read-modify-writes that
//! interleaved would write back the other's bit as read before, undoing its acknowledgement
//! (a CMDQ_ERR active again, a toggle of an inactive error: CONSTRAINED UNPREDICTABLE). The
//! errors that concern the queue's calls, `CMDQ_ERR` and `MSI_CMDQ_ABT_ERR`, are the queue's:
//! the handler recovers a command error only through `CommandQueue::recover` under that
//! lock (no wait is in progress then), and never acknowledges `MSI_CMDQ_ABT_ERR`, which the
//! waiter it belongs to (or the next wait) must see.
//!
//! The queue is owned by one `&mut` user at a time; the producer index lives here and is written
//! to CMDQ_PROD once per batch through the doorbell barrier. Every wait is bounded.
//!
//! A `--cfg loom` build (`tests/loom_queues.rs`) reaches the ring through loom's atomics
//! (`queue.rs`, `QueueWord`) and the MSI word through `loom_words` (in place of `msi_word`),
//! and exposes the queue to the test as `LoomCommandQueue`, so that a thread standing in for
//! the SMMU consumes commands while the real producer runs; a normal build compiles the code
//! above unchanged.

// A loom build replaces the function that uses `AtomicU32` (`loom_words`).
#[cfg_attr(loom, allow(unused_imports))]
use core::sync::atomic::{AtomicU32, Ordering};

use super::cmd::{Command, SyncMsi, SyncSignal};
use super::field::table_page;
use super::queue::{QueueMemory, QueuePointer};
use super::regs::{self, Gerror};
use super::{CommandErrorKind, SmmuError};
use crate::mem::{Page, PageAllocator, WalkerCoherency, PAGE_SHIFT_4K};
use crate::mmio::{dma_read_barrier, dma_write_barrier, poll, RegisterWindow};
use crate::sync::Mutex;

/// `CMDQ_CONS.ERR`, bits 30:24.
pub const CMDQ_CONS_ERR: super::field::Field = super::field::Field::new("ERR", 30, 24);

const ENTRY_LOG2: u32 = 4;
/// Polls between checks of GERROR while waiting on an MSI word in memory.
const MSI_ERROR_CHECK_INTERVAL: u32 = 64;

/// How CMD_SYNC completion is observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncMode {
    /// CS = SIG_NONE; poll CMDQ_CONS until it passes the CMD_SYNC.
    PollCons,
    /// CS = SIG_IRQ with an MSI to a word the queue owns; poll that word in memory (no MMIO
    /// reads while waiting). Needs `IDR0.MSI` and a coherent unit.
    Msi,
    /// CS = SIG_SEV; the CPU could sleep in WFE, but an event can be lost, so the wait falls
    /// back to polling CMDQ_CONS within the budget. Needs `IDR0.SEV`.
    Sev,
}

/// The command queue of one unit.
///
/// Crate-private: it frees its memory on `Drop`, which is sound only once the unit no longer
/// uses it (translation or the queue turned off and acknowledged). [`SmmuUnit`](super::SmmuUnit)
/// is the one owner that can know it, and leaks the memory when it cannot (its `Drop`).
pub(crate) struct CommandQueue<A: PageAllocator> {
    mem: QueueMemory<A>,
    prod: QueuePointer,
    cons: QueuePointer,
    mode: SyncMode,
    msi: Option<Page>,
    msi_sequence: u32,
    budget: u32,
    /// The last fetch abort or ATC invalidation timeout recovered (by re-running the command)
    /// during the current wait: reported if the wait runs out.
    retrying: Option<SmmuError>,
    /// The index of the CMD_SYNC the current `sync` waits for.
    awaited: Option<u32>,
    /// A CERROR_ATC_INV_SYNC met at the awaited CMD_SYNC: its wait fails even if the CMD_SYNC,
    /// run again, completes.
    atc_failed: Option<SmmuError>,
    /// A CMD_SYNC completion MSI aborted during the current wait.
    msi_aborted: bool,
}

// SAFETY: the raw page pointers are owned by the CommandQueue (the queue and MSI pages, freed only by its `Drop`);
// moving it to another thread moves that ownership, and the memory is accessed only through
// atomics.
unsafe impl<A: PageAllocator + Send> Send for CommandQueue<A> {}

impl<A: PageAllocator> CommandQueue<A> {
    /// Allocates a queue of `2^log2` commands; `max_log2` is `IDR1.CMDQS`. `budget` bounds
    /// every wait (in polls).
    ///
    /// # Errors
    ///
    /// [`SmmuError::SizeUnsupported`], [`SmmuError::NoMemory`],
    /// [`SmmuError::TableOutOfRange`] for a queue or MSI page at or above `2^oas` (`IDR5.OAS`),
    /// or [`SmmuError::InvalidConfig`] for MSI completion on a non-coherent unit (the CPU would
    /// read a stale cached copy of the MSI word).
    pub fn new(
        alloc: A,
        log2: u32,
        max_log2: u32,
        coherency: WalkerCoherency,
        mode: SyncMode,
        budget: u32,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        if mode == SyncMode::Msi && coherency == WalkerCoherency::NonCoherent {
            return Err(SmmuError::InvalidConfig {
                reason: "MSI completion needs IDR0.COHACC",
            });
        }
        let mem = QueueMemory::new(
            alloc,
            "command queue",
            log2,
            max_log2,
            ENTRY_LOG2,
            coherency,
            oas,
        )?;
        let msi = match mode {
            SyncMode::Msi => Some(table_page(
                &mem.alloc,
                PAGE_SHIFT_4K,
                oas,
                "CMD_SYNC MSI page",
            )?),
            _ => None,
        };
        let zero = QueuePointer::zero(log2);
        Ok(Self {
            mem,
            prod: zero,
            cons: zero,
            mode,
            msi,
            msi_sequence: 0,
            budget,
            retrying: None,
            awaited: None,
            atc_failed: None,
            msi_aborted: false,
        })
    }

    /// The CMDQ_BASE value.
    pub fn base_register(&self) -> u64 {
        self.mem.base_register()
    }

    /// Writes CMDQ_BASE and zeroes PROD and CONS. Only while `CR0.CMDQEN = 0` (§6.3.26).
    pub fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) {
        regs.write64(regs::CMDQ_BASE, self.base_register());
        regs.write32(regs::CMDQ_PROD, 0);
        regs.write32(regs::CMDQ_CONS, 0);
        self.prod = QueuePointer::zero(self.mem.log2);
        self.cons = self.prod;
    }

    /// Reads CMDQ_CONS after handling the global errors that concern the queue (see the module
    /// documentation): an error for `CERROR_ILL` (the command was replaced) and service
    /// failure; `CERROR_ABT` and `CERROR_ATC_INV_SYNC` are re-run and remembered in
    /// `retrying`, the latter also in `atc_failed` when it is at the awaited CMD_SYNC (that
    /// wait then fails whatever follows); an aborted completion MSI in `msi_aborted`.
    fn refresh_cons<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), SmmuError> {
        let active = Gerror::active(regs);
        if active.contains(Gerror::SFM_ERR) {
            return Err(SmmuError::ServiceFailure {
                gerror: active.bits(),
            });
        }
        if active.contains(Gerror::MSI_CMDQ_ABT_ERR) {
            Gerror::acknowledge(regs, Gerror::MSI_CMDQ_ABT_ERR);
            self.msi_aborted = true;
        }
        if active.contains(Gerror::CMDQ_ERR) {
            match self.recover(regs) {
                Some(
                    e @ SmmuError::CommandError {
                        kind:
                            kind @ (CommandErrorKind::Abort | CommandErrorKind::AtcInvalidationSync),
                        index,
                        ..
                    },
                ) => {
                    if kind == CommandErrorKind::AtcInvalidationSync && self.awaited == Some(index)
                    {
                        self.atc_failed = Some(e);
                    }
                    self.retrying = Some(e)
                }
                Some(e) => return Err(e),
                None => {}
            }
        }
        self.cons = QueuePointer::from_register(self.mem.log2, regs.read32(regs::CMDQ_CONS));
        Ok(())
    }

    /// Queues `commands`, as many per CMDQ_PROD write as there is room for, waiting (bounded)
    /// for the unit to consume older entries. Never overwrites an unconsumed entry.
    ///
    /// # Errors
    ///
    /// [`SmmuError::CommandQueueFull`] if no room appears within the budget (the commands
    /// before the failing one are queued); [`SmmuError::CommandError`] if the unit stopped at a
    /// command meanwhile (it was replaced and the queue restarted).
    pub fn submit<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        commands: &[Command],
    ) -> Result<(), SmmuError> {
        let mut rest = commands;
        while !rest.is_empty() {
            let free = self.wait_for_space(regs)?;
            let (batch, tail) = rest.split_at(rest.len().min(free as usize));
            for cmd in batch {
                self.write_entry(self.prod.index(), cmd);
                self.prod = self.prod.advance(1);
            }
            // One doorbell per batch; it orders the entries before the PROD write.
            regs.doorbell32(regs::CMDQ_PROD, self.prod.register());
            rest = tail;
        }
        Ok(())
    }

    fn wait_for_space<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<u32, SmmuError> {
        let free = self.prod.free_before(self.cons);
        if free > 0 {
            return Ok(free);
        }
        let mut failure = None;
        self.retrying = None;
        let found = poll(self.budget, || match self.refresh_cons(regs) {
            Err(e) => {
                failure = Some(e);
                Some(0)
            }
            Ok(()) => {
                let free = self.prod.free_before(self.cons);
                (free > 0).then_some(free)
            }
        });
        match (failure, found, self.retrying.take()) {
            (Some(e), _, _) => Err(e),
            (None, Some(free), _) => Ok(free),
            (None, None, Some(e)) => Err(e),
            (None, None, None) => Err(SmmuError::CommandQueueFull {
                prod: self.prod.register(),
                cons: self.cons.register(),
            }),
        }
    }

    fn write_entry(&self, index: u32, cmd: &Command) {
        let entry = self.mem.entry(index);
        for (w, v) in entry.iter().zip(cmd.words.iter()) {
            w.store(*v, Ordering::Relaxed);
        }
        self.mem.sync_entry(index);
    }

    /// Queues a CMD_SYNC and waits, within the budget, until it completes: every command queued
    /// before it has then taken effect. Fetch aborts and ATC invalidation timeouts met on the
    /// way are recovered by running the command again (see the module documentation).
    ///
    /// # Errors
    ///
    /// - [`SmmuError::CommandError`] with `CERROR_ILL`: a command was replaced by a CMD_SYNC
    ///   (the first such error; the wait still ran until this CMD_SYNC completed);
    /// - [`SmmuError::CommandError`] with `CERROR_ATC_INV_SYNC` at this CMD_SYNC: its ATS
    ///   invalidations timed out (reported even if the CMD_SYNC, run again, completed);
    /// - [`SmmuError::CommandError`] with `CERROR_ABT` / `CERROR_ATC_INV_SYNC`: still failing
    ///   when the budget ran out (the command stays queued);
    /// - [`SmmuError::SyncMsiAborted`]: the CMD_SYNC completed (CONS passed it) but its MSI
    ///   aborted; later syncs poll CMDQ_CONS;
    /// - [`SmmuError::ServiceFailure`]; [`SmmuError::SyncTimeout`];
    /// - the errors of [`submit`](Self::submit).
    pub fn sync<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Result<(), SmmuError> {
        let cmd = self.sync_command()?;
        // Queued here rather than through `submit`: one frame fewer under every sync's wait
        // for space.
        self.wait_for_space(regs)?;
        self.write_entry(self.prod.index(), &cmd);
        self.prod = self.prod.advance(1);
        regs.doorbell32(regs::CMDQ_PROD, self.prod.register());
        let sync_at = self.prod.advance((1u32 << self.mem.log2) * 2 - 1);
        let target = self.prod;
        let mut first_error = None;
        self.retrying = None;
        self.msi_aborted = false;
        self.awaited = Some(sync_at.index());
        self.atc_failed = None;
        let done = match self.mode {
            SyncMode::Msi => self.wait_msi(regs, sync_at, &mut first_error),
            SyncMode::PollCons | SyncMode::Sev => self.wait_cons(regs, target, &mut first_error),
        };
        self.awaited = None;
        let retrying = self.retrying.take();
        let atc_failed = self.atc_failed.take();
        if let Some(e) = first_error {
            return Err(e);
        }
        if self.msi_aborted {
            // The MSI target cannot be written: observe completion through CONS from now on.
            self.mode = SyncMode::PollCons;
        }
        if let Some(e) = atc_failed {
            // This CMD_SYNC's ATS invalidations timed out: its completion, if it came, is the
            // second run's, which did not wait for them.
            return Err(e);
        }
        if self.msi_aborted && done {
            return Err(SmmuError::SyncMsiAborted {
                address: self.msi.map_or(0, |p| p.pa.get()),
            });
        }
        match (done, retrying) {
            (true, _) => Ok(()),
            (false, Some(e)) => Err(e),
            (false, None) => Err(SmmuError::SyncTimeout {
                prod: target.register(),
                cons: self.cons.register(),
            }),
        }
    }

    /// Queues `commands` then a CMD_SYNC, and waits for it.
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit) and [`sync`](Self::sync).
    pub fn submit_and_sync<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        commands: &[Command],
    ) -> Result<(), SmmuError> {
        self.submit(regs, commands)?;
        self.sync(regs)
    }

    fn sync_command(&mut self) -> Result<Command, SmmuError> {
        match (self.mode, self.msi) {
            (SyncMode::Msi, Some(page)) => {
                self.msi_sequence = self.msi_sequence.wrapping_add(1);
                let msi = SyncMsi {
                    address: page.pa,
                    data: self.msi_sequence,
                    msh: 3,
                    msiattr: 0xf,
                };
                Command::sync(SyncSignal::Irq, Some(msi))
            }
            (SyncMode::Sev, _) => Command::sync(SyncSignal::Sev, None),
            _ => Ok(Command::plain_sync()),
        }
    }

    /// Whether the unit has consumed everything up to `target`.
    fn wait_cons<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        target: QueuePointer,
        first_error: &mut Option<SmmuError>,
    ) -> bool {
        poll(self.budget, || {
            if let Err(e) = self.refresh_cons(regs) {
                if let SmmuError::ServiceFailure { .. } = e {
                    // Nothing more will be consumed.
                    first_error.replace(e);
                    return Some(());
                }
                first_error.get_or_insert(e);
            }
            (self.cons == target).then_some(())
        })
        .is_some()
            && !matches!(first_error, Some(SmmuError::ServiceFailure { .. }))
    }

    /// Waits for the MSI word to hold the sequence number; if the CMD_SYNC itself faulted (and
    /// was replaced by one without MSI), falls back to CONS.
    fn wait_msi<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        sync_at: QueuePointer,
        first_error: &mut Option<SmmuError>,
    ) -> bool {
        let Some(page) = self.msi else { return false };
        let word = msi_word(&page);
        let want = self.msi_sequence;
        let target = self.prod;
        let mut polls = 0u32;
        let mut sync_faulted = false;
        let budget = self.budget;
        poll(budget, || {
            if word.load(Ordering::Acquire) == want {
                dma_read_barrier();
                return Some(());
            }
            polls = polls.wrapping_add(1);
            // The last poll looks too: a budget below the interval would otherwise never see
            // an aborted MSI, and nothing else acknowledges MSI_CMDQ_ABT_ERR.
            if polls % MSI_ERROR_CHECK_INTERVAL != 0 && polls != budget && !sync_faulted {
                return None;
            }
            match self.refresh_cons(regs) {
                Err(e @ SmmuError::ServiceFailure { .. }) => {
                    first_error.replace(e);
                    return Some(());
                }
                Err(e) => {
                    // A CMD_SYNC replaced after CERROR_ILL sends no MSI.
                    if let SmmuError::CommandError { index, .. } = e {
                        sync_faulted |= index == sync_at.index();
                    }
                    first_error.get_or_insert(e);
                }
                Ok(()) => {}
            }
            // An aborted MSI never arrives: CONS passing the CMD_SYNC is the completion.
            sync_faulted |= self.msi_aborted;
            (sync_faulted && self.cons == target).then_some(())
        })
        .is_some()
            && !matches!(first_error, Some(SmmuError::ServiceFailure { .. }))
    }

    /// Handles an active GERROR.CMDQ_ERR by its `CMDQ_CONS.ERR` code (see the module
    /// documentation): `CERROR_ILL` and undefined codes replace the command at CONS with a
    /// CMD_SYNC (no signal, no MSI); `CERROR_ABT` and `CERROR_ATC_INV_SYNC` leave it to run
    /// again. Then acknowledges through GERRORN (the unit re-fetches from CONS) and returns the
    /// error. `None` if no command error was active.
    // Inlined into `refresh_cons`, so that it adds no frame of its own under every command
    // queue wait (the kernel-stack bound of the C ABI's entry points).
    #[inline(always)]
    pub fn recover<W: RegisterWindow + ?Sized>(&mut self, regs: &W) -> Option<SmmuError> {
        if !Gerror::active(regs).contains(Gerror::CMDQ_ERR) {
            return None;
        }
        let raw = regs.read32(regs::CMDQ_CONS);
        let kind = CommandErrorKind::from_code(CMDQ_CONS_ERR.get(raw as u64) as u8);
        let at = QueuePointer::from_register(self.mem.log2, raw);
        let entry = self.mem.entry(at.index());
        let opcode = entry.first().map_or(0, |w| w.load(Ordering::Relaxed) as u8);
        match kind {
            CommandErrorKind::Abort | CommandErrorKind::AtcInvalidationSync => {}
            CommandErrorKind::Illegal | CommandErrorKind::Other(_) => {
                self.write_entry(at.index(), &Command::plain_sync());
                // The replacement must be in memory before the unit restarts from CONS.
                dma_write_barrier();
            }
        }
        Gerror::acknowledge(regs, Gerror::CMDQ_ERR);
        self.cons = at;
        Some(SmmuError::CommandError {
            index: at.index(),
            opcode,
            kind,
        })
    }
}

/// The global errors that belong to the command queue's calls: a command error and an aborted
/// CMD_SYNC MSI (IHI 0070 G.b §7.5). The event handler leaves them to the queue (see the
/// module documentation).
pub const QUEUE_ERRORS: Gerror = Gerror::CMDQ_ERR.union(Gerror::MSI_CMDQ_ABT_ERR);

/// The command queue's part of the unit's global-error handler (`SmmuUnit::handle_events`),
/// given the errors `active` it read: under the queue's lock `queue`, recovers an active
/// command error through [`CommandQueue::recover`] (which finds nothing if a wait recovered
/// it meanwhile) and acknowledges the errors that are neither the queue's ([`QUEUE_ERRORS`])
/// nor `SFM_ERR` (left active, see [`SmmuError::ServiceFailure`]). Returns the command error
/// recovered.
///
/// The lock is taken only when there is something to do, and then waits for a call on the
/// queue in progress (each of its waits bounded by the poll budget). Every GERRORN write is
/// made under it, so that this read-modify-write and a wait's never interleave.
pub(crate) fn acknowledge_global_errors<A: PageAllocator, W: RegisterWindow + ?Sized>(
    queue: &Mutex<Option<CommandQueue<A>>>,
    regs: &W,
    active: Gerror,
) -> Option<SmmuError> {
    let others = active - QUEUE_ERRORS - Gerror::SFM_ERR;
    if others.is_empty() && !active.contains(Gerror::CMDQ_ERR) {
        return None;
    }
    let mut queue = queue.lock();
    let recovered = if active.contains(Gerror::CMDQ_ERR) {
        queue.as_mut().and_then(|q| q.recover(regs))
    } else {
        None
    };
    if !others.is_empty() {
        Gerror::acknowledge(regs, others);
    }
    recovered
}

/// The CMD_SYNC MSI word: the first 32 bits of the queue's MSI page.
#[cfg(not(loom))]
fn msi_word(page: &Page) -> &AtomicU32 {
    // SAFETY: the page is live while the queue is, 4 KiB aligned, and the unit writes the word
    // only through DMA; the CPU reads it atomically.
    unsafe { &*page.va.as_ptr().cast::<AtomicU32>() }
}

impl<A: PageAllocator> Drop for CommandQueue<A> {
    /// Frees the MSI page (the queue memory frees itself). The unit must have stopped using
    /// the queue (`CR0.CMDQEN = 0` acknowledged) first.
    fn drop(&mut self) {
        if let Some(page) = self.msi.take() {
            // SAFETY: allocated in `new` with PAGE_SHIFT_4K; the drop contract says the unit no
            // longer writes MSIs to it.
            unsafe { self.mem.alloc.free(page, PAGE_SHIFT_4K) };
        }
    }
}

/// Under `--cfg loom` (`tests/loom_queues.rs`) the test allocator's pages are arrays of loom's
/// `AtomicU64`: the ring is reached through `QueueMemory::entry` by word index, the MSI word is
/// the low half (little-endian) of the MSI page's word 0. `LoomCommandQueue` lets the test
/// build the crate-private queue and drive its real producer; `LoomLockedQueue` puts it behind
/// the unit's lock, beside the global-error handler's part (`acknowledge_global_errors`).
#[cfg(loom)]
mod loom_words {
    use super::{acknowledge_global_errors, CommandQueue, Gerror, Mutex, SmmuError, SyncMode};
    use crate::mem::{Page, PageAllocator, WalkerCoherency};
    use crate::mmio::RegisterWindow;
    use crate::smmuv3::cmd::Command;
    use core::sync::atomic::Ordering;
    use loom::sync::atomic::AtomicU64;

    /// The MSI word as `CommandQueue::wait_msi` reads it.
    pub(super) struct MsiWord<'a>(&'a AtomicU64);

    impl MsiWord<'_> {
        pub(super) fn load(&self, order: Ordering) -> u32 {
            self.0.load(order) as u32
        }
    }

    /// As the normal build's `msi_word`.
    pub(super) fn msi_word(page: &Page) -> MsiWord<'_> {
        // SAFETY: the MSI page is a live page of loom atomics while the queue is.
        MsiWord(unsafe { &*page.va.cast::<AtomicU64>().as_ptr() })
    }

    /// The crate's command queue for a model-checking test: a coherent unit, `IDR1.CMDQS` 19,
    /// 52-bit addresses.
    pub struct LoomCommandQueue<A: PageAllocator>(CommandQueue<A>);

    impl<A: PageAllocator> LoomCommandQueue<A> {
        /// `CommandQueue::new`.
        ///
        /// # Errors
        /// As `CommandQueue::new`.
        pub fn new(alloc: A, log2: u32, mode: SyncMode, budget: u32) -> Result<Self, SmmuError> {
            CommandQueue::new(alloc, log2, 19, WalkerCoherency::Coherent, mode, budget, 52)
                .map(Self)
        }

        /// `CommandQueue::program`.
        pub fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) {
            self.0.program(regs)
        }

        /// Every later wait's poll budget.
        pub fn set_budget(&mut self, budget: u32) {
            self.0.budget = budget;
        }

        /// `CommandQueue::submit`.
        ///
        /// # Errors
        /// As `CommandQueue::submit`.
        pub fn submit<W: RegisterWindow + ?Sized>(
            &mut self,
            regs: &W,
            commands: &[Command],
        ) -> Result<(), SmmuError> {
            self.0.submit(regs, commands)
        }

        /// `CommandQueue::submit_and_sync`.
        ///
        /// # Errors
        /// As `CommandQueue::submit_and_sync`.
        pub fn submit_and_sync<W: RegisterWindow + ?Sized>(
            &mut self,
            regs: &W,
            commands: &[Command],
        ) -> Result<(), SmmuError> {
            self.0.submit_and_sync(regs, commands)
        }

        /// The producer position (`CMDQ_PROD` encoding: index and wrap flag).
        pub fn prod(&self) -> u32 {
            self.0.prod.register()
        }

        /// The sequence number the last CMD_SYNC's MSI carries.
        pub fn msi_sequence(&self) -> u32 {
            self.0.msi_sequence
        }

        /// The sync mode (an aborted MSI turns `Msi` into `PollCons`).
        pub fn mode(&self) -> SyncMode {
            self.0.mode
        }
    }

    /// The queue behind the unit's lock (`SmmuUnit::cmdq`), shared by the test's CPUs: a
    /// call on the queue holds the lock throughout, as `SmmuUnit::with_cmdq` does, and the
    /// global-error handler's part takes it as `SmmuUnit::handle_events` does.
    pub struct LoomLockedQueue<A: PageAllocator>(Mutex<Option<CommandQueue<A>>>);

    impl<A: PageAllocator> LoomLockedQueue<A> {
        /// The queue, behind its lock.
        pub fn new(q: LoomCommandQueue<A>) -> Self {
            Self(Mutex::new(Some(q.0)))
        }

        /// `CommandQueue::submit_and_sync` under the lock, with `budget` polls per wait.
        ///
        /// # Errors
        /// As `CommandQueue::submit_and_sync`.
        pub fn submit_and_sync<W: RegisterWindow + ?Sized>(
            &self,
            regs: &W,
            commands: &[Command],
            budget: u32,
        ) -> Result<(), SmmuError> {
            let mut queue = self.0.lock();
            let q = queue
                .as_mut()
                .ok_or(SmmuError::InvalidConfig { reason: "no queue" })?;
            q.budget = budget;
            q.submit_and_sync(regs, commands)
        }

        /// What `SmmuUnit::handle_events` does with the global errors, but for `SFM_ERR` and
        /// `PRIQ_ABT_ERR` (which it notes in the unit): reads the active errors, then
        /// `acknowledge_global_errors`. Returns both.
        pub fn handle_global_errors<W: RegisterWindow + ?Sized>(
            &self,
            regs: &W,
        ) -> (Gerror, Option<SmmuError>) {
            let active = Gerror::active(regs);
            (active, acknowledge_global_errors(&self.0, regs, active))
        }
    }
}

#[cfg(loom)]
use loom_words::msi_word;
#[cfg(loom)]
pub use loom_words::{LoomCommandQueue, LoomLockedQueue};

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::smmuv3::testutil::{ModelSmmu, VecAllocator};
    use crate::smmuv3::StreamId;
    use std::vec::Vec;

    fn queue<'a>(
        alloc: &'a VecAllocator,
        m: &ModelSmmu,
        log2: u32,
        mode: SyncMode,
    ) -> CommandQueue<&'a VecAllocator> {
        let mut q =
            CommandQueue::new(alloc, log2, 19, WalkerCoherency::Coherent, mode, 1000, 52).unwrap();
        regs::write_cr0(m, 0, 10).unwrap();
        q.program(m);
        regs::write_cr0(m, regs::Cr0::CMDQEN.bits(), 10).unwrap();
        m.prod_writes.set(0);
        q
    }

    #[test]
    fn batching_uses_one_prod_write() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = queue(&alloc, &m, 4, SyncMode::PollCons);
        let cmds: Vec<_> = (0..10)
            .map(|i| Command::cfgi_ste(StreamId(i), true))
            .collect();
        m.stalled.set(true);
        q.submit(&m, &cmds).unwrap();
        assert_eq!(m.prod_writes.get(), 1);
        m.stalled.set(false);
        q.sync(&m).unwrap();
        assert_eq!(m.executed.borrow().len(), 11);
        // CMDQ_BASE: allocate hint, address, LOG2SIZE 4.
        assert_eq!(q.base_register() & 0x1f, 4);
        assert_eq!(q.base_register() >> 62, 1);
    }

    #[test]
    fn wraps_over_thousands_of_commands() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = queue(&alloc, &m, 3, SyncMode::PollCons);
        m.consume_batch.set(3);
        let cmds: Vec<_> = (0..5000)
            .map(|i| Command::cfgi_ste(StreamId(i), false))
            .collect();
        for chunk in cmds.chunks(37) {
            q.submit_and_sync(&m, chunk).unwrap();
        }
        let executed = m.executed.borrow();
        let ste: Vec<_> = executed
            .iter()
            .filter(|c| c[0] & 0xff == 0x03)
            .map(|c| (c[0] >> 32) as u32)
            .collect();
        assert_eq!(ste, (0..5000).collect::<Vec<_>>());
        assert_eq!(executed.len(), 5000 + cmds.chunks(37).count());
    }

    #[test]
    fn stalled_consumer_times_out() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = queue(&alloc, &m, 2, SyncMode::PollCons);
        m.stalled.set(true);
        let cmds = [Command::tlbi_nsnh_all(); 5];
        // Four fit; the fifth finds PROD (index 0, wrap 1) against CONS 0.
        assert_eq!(
            q.submit(&m, &cmds),
            Err(SmmuError::CommandQueueFull { prod: 4, cons: 0 })
        );
        m.stalled.set(false);
        q.sync(&m).unwrap();
        m.stalled.set(true);
        assert!(matches!(q.sync(&m), Err(SmmuError::SyncTimeout { .. })));
    }

    #[test]
    fn msi_and_sev_completion() {
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = queue(&alloc, &m, 4, SyncMode::Msi);
        q.submit_and_sync(&m, &[Command::cfgi_all()]).unwrap();
        q.sync(&m).unwrap();
        assert_eq!(m.msis.get(), 2);
        let mut s = queue(&alloc, &m, 4, SyncMode::Sev);
        s.sync(&m).unwrap();
        assert_eq!(m.sevs.get(), 1);
        assert!(CommandQueue::new(
            &alloc,
            4,
            19,
            WalkerCoherency::NonCoherent,
            SyncMode::Msi,
            1,
            52
        )
        .is_err());
        assert!(matches!(
            CommandQueue::new(
                &alloc,
                20,
                19,
                WalkerCoherency::Coherent,
                SyncMode::PollCons,
                1,
                52
            ),
            Err(SmmuError::SizeUnsupported {
                log2: 20,
                max_log2: 19,
                ..
            })
        ));
    }

    #[test]
    fn illegal_command_is_replaced_and_the_queue_recovers() {
        for mode in [SyncMode::PollCons, SyncMode::Msi] {
            let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
            let mut q = queue(&alloc, &m, 3, mode);
            q.submit_and_sync(&m, &[Command::cfgi_all(); 6]).unwrap();
            let bad = Command { words: [0xff, 0] };
            let err = q.submit_and_sync(
                &m,
                &[
                    Command::cfgi_cd_all(StreamId(1)),
                    bad,
                    Command::cfgi_cd_all(StreamId(2)),
                ],
            );
            // Six commands and a sync (indexes 0-6), then CFGI_CD_ALL at 7, the bad one at 0.
            assert_eq!(
                err,
                Err(SmmuError::CommandError {
                    index: 0,
                    opcode: 0xff,
                    kind: CommandErrorKind::Illegal
                })
            );
            assert!(Gerror::active(&m).is_empty());
            // The commands after the bad one ran, the bad one became a CMD_SYNC.
            let ops: Vec<u8> = m.executed.borrow().iter().map(|c| c[0] as u8).collect();
            assert_eq!(&ops[7..], &[0x06, 0x46, 0x06, 0x46]);
            q.submit_and_sync(&m, &[Command::cfgi_all()]).unwrap();
        }
    }
}
