//! The SMMUv3 command queue (`src/smmuv3/cmdq.rs`, `queue.rs`; Arm IHI 0070 G.b §3.5 queues
//! with PROD/CONS wrap flags, §4.7.3 CMD_SYNC, §6.3.26-6.3.28 CMDQ_BASE/PROD/CONS, §7.1
//! command errors) under loom: the crate's real producer (`CommandQueue::submit_and_sync`
//! through `LoomCommandQueue`) against a model SMMU consuming the queue on another thread.
//!
//! The model reads `CMDQ_PROD` (relaxed, then an acquire fence: a device fetches what the
//! doorbell published), fetches each command from `CMDQ_CONS` on and checks it word for word
//! against the one the scenario queued there (torn, stale or overwritten before it was
//! consumed: failure), and moves `CMDQ_CONS` past it (release). A command other than CMD_SYNC
//! is consumed before it completes (the model counts it as executed only after moving CONS,
//! as a unit that fetches ahead may); a CMD_SYNC is consumed only once every earlier command
//! completed, and its MSI, if it has one, is written after that (§4.7.3: what the sync's
//! completion makes observable is observable before the completion signal and before CONS
//! shows the CMD_SYNC consumed; seeing the signal means the consumption is observable). So
//! CONS past a command is not its completion, and the MSI may come late.
//!
//! The producer reads `CMDQ_CONS` with acquire ordering here: on hardware the caller's later
//! stores depend on the value it polled (a control dependency orders them), which loom cannot
//! express. `GERROR` is read with acquire for the same reason (the unit's `CMDQ_CONS.ERR` is
//! written before the `GERROR` toggle, and reads of one device's registers are not reordered).
//! `CMDQ_PROD` and `GERRORN` (CPU to unit) are relaxed: only the crate's barriers order them
//! with the queue memory.
//!
//! Command errors (§7.1, `Cerror`): CERROR_ILL, CERROR_ABT and CERROR_ATC_INV_SYNC, each raised
//! once at a chosen command. The unit stops with CONS on the command and the code in
//! `CMDQ_CONS.ERR`, toggles `GERROR.CMDQ_ERR`, and fetches again from CONS once `GERRORN`
//! matches. Two CPUs' calls are made one after the other on one thread: the queue's calls
//! hold the unit's `cmdq` lock from their first write to the end of their wait. The unit's
//! global-error handler, which takes that lock too, runs on a thread of its own beside them
//! (`smmu_handle_events_beside_a_waiter`, the queue behind a `LoomLockedQueue`).

use super::*;
use iommu_engine::mem::Iova;
use iommu_engine::smmuv3::cmd::{Command, SyncMsi, SyncSignal};
use iommu_engine::smmuv3::cmdq::{LoomCommandQueue, LoomLockedQueue, SyncMode};
use iommu_engine::smmuv3::regs::Gerror;
use iommu_engine::smmuv3::regs::{CMDQ_BASE, CMDQ_CONS, CMDQ_PROD, GERROR, GERRORN};
use iommu_engine::smmuv3::{CommandErrorKind, SmmuError, StreamId};
use loom::sync::atomic::AtomicU32;

/// `CMD_SYNC`'s opcode.
const CMD_SYNC: u8 = 0x46;
/// `GERROR.CMDQ_ERR`.
const CMDQ_ERR: u32 = 1;

/// A command error the model unit raises once (§7.1, `CMDQ_CONS.ERR`, bits 30:24).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cerror {
    /// CERROR_ILL (0x01): the unit expects the command replaced (by a CMD_SYNC without
    /// signal) when it fetches again.
    Illegal,
    /// CERROR_ABT (0x02): the fetch of the command aborted. CONS stays on it, and it is
    /// fetched again, unchanged, once software acknowledges (§7.1: commands at or after CONS
    /// are re-fetched when processing restarts).
    Abort,
    /// CERROR_ATC_INV_SYNC (0x03): a CMD_SYNC waited for CMD_ATC_INVs before it and one of
    /// their ATS invalidations timed out (§3.9.1.4). CONS stays on the CMD_SYNC; once
    /// acknowledged it is fetched again and completes, for the timed-out invalidation is no
    /// longer outstanding: the second run says nothing about it (one behaviour the spec allows;
    /// Linux's `arm_smmu_cmdq_skip_err` repeats the CMD_SYNC allowing that it may fail again,
    /// and a 2026 Linux series marks the faulting CMD_SYNC for its issuer because the issuer's
    /// wait cannot tell). A device may still hold the translation.
    AtcInvSync,
}

impl Cerror {
    fn code(self) -> u32 {
        match self {
            Cerror::Illegal => 1,
            Cerror::Abort => 2,
            Cerror::AtcInvSync => 3,
        }
    }
}

/// The unit's registers. `GERROR` / `GERRORN` are loom atomics only in the scenario that
/// reports a command error (elsewhere they read 0 and cost no interleavings).
struct SmmuRegs {
    prod: AtomicU32,
    cons: AtomicU32,
    errors: bool,
    gerror: AtomicU32,
    gerrorn: AtomicU32,
    /// `CMDQ_PROD` writes.
    doorbells: StdU32,
    /// `GERRORN` writes: command errors acknowledged.
    acks: StdU32,
    /// `GERRORN` as the CPUs read it: the value last written, as a read of the register
    /// returns (its writers take turns under the queue's lock: the queue's calls, and
    /// `handle_events`' part in `smmu_handle_events_beside_a_waiter`), so their reads need no
    /// loom operation; the unit reads `gerrorn`. A write is a loom store, where loom may run
    /// another thread between a CPU's read and its write.
    gerrorn_written: StdU32,
}

#[derive(Clone)]
struct SmmuWindow(Arc<SmmuRegs>);

impl RegisterWindow for SmmuWindow {
    fn read32(&self, offset: usize) -> u32 {
        match offset {
            CMDQ_PROD => self.0.prod.load(Ordering::Relaxed),
            CMDQ_CONS => self.0.cons.load(Ordering::Acquire),
            GERROR if self.0.errors => self.0.gerror.load(Ordering::Acquire),
            GERRORN if self.0.errors => self
                .0
                .gerrorn_written
                .load(std::sync::atomic::Ordering::Relaxed),
            GERROR | GERRORN => 0,
            _ => panic!("read32 of register {offset:#x}"),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        match offset {
            CMDQ_PROD => {
                self.0
                    .doorbells
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0.prod.store(value, Ordering::Relaxed)
            }
            // Written by `program` only, before the threads start.
            CMDQ_CONS => self.0.cons.store(value, Ordering::Relaxed),
            GERRORN if self.0.errors => {
                self.0
                    .acks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0
                    .gerrorn_written
                    .store(value, std::sync::atomic::Ordering::Relaxed);
                self.0.gerrorn.store(value, Ordering::Relaxed)
            }
            _ => panic!("write32 of register {offset:#x} ({value:#x})"),
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        panic!("read64 of register {offset:#x}")
    }

    fn write64(&self, offset: usize, value: u64) {
        assert_eq!(
            offset, CMDQ_BASE,
            "write64 of register {offset:#x} ({value:#x})"
        );
    }
}

/// What the unit is to find in the queue, in the order it consumes it.
struct SmmuPlan {
    /// `CMDQ_CONS` (index and wrap) when the threads start.
    cons: u32,
    expected: Vec<Command>,
    /// A command error raised once at this position of `expected` (see [`Cerror`]).
    fault: Option<(usize, Cerror)>,
}

struct SmmuWorld {
    pages: Arc<Pages>,
    regs: Arc<SmmuRegs>,
    /// Commands other than CMD_SYNC the unit executed (bits 31:0), and which ran (bit 32 + n:
    /// one naming StreamID n, below 32), published by the CONS store of the CMD_SYNC after
    /// them (one word: one store per command).
    executed: AtomicU64,
    /// Command errors the unit raised (a test's count: no loom operation).
    raised: StdU32,
    producer_done: AtomicBool,
    /// Where the queue's MSI page is (the second page allocated), if it has one.
    msi_pa: u64,
    /// `CMDQ_BASE.LOG2SIZE`: two or four commands, so that a handful fill and wrap the queue.
    log2: u32,
}

impl SmmuWorld {
    fn window(&self) -> SmmuWindow {
        SmmuWindow(self.regs.clone())
    }

    fn entries(&self) -> u32 {
        1 << self.log2
    }

    /// The index and wrap flag bits of a PROD / CONS value.
    fn wrap_mask(&self) -> u32 {
        (2 << self.log2) - 1
    }

    fn ring_word(&self, index: u32, word: usize) -> &AtomicU64 {
        self.pages.word(0, index as usize * 2 + word)
    }

    fn fetch(&self, index: u32) -> [u64; 2] {
        [0, 1].map(|w| self.ring_word(index, w).load(Ordering::Relaxed))
    }

    /// The unit: consumes commands until the producer is done and the queue empty. Returns
    /// how many of the plan's commands it consumed. It reads `CMDQ_PROD` only once it has
    /// consumed up to the last value it read, as a unit may.
    fn run_unit(&self, plan: &SmmuPlan) -> usize {
        let mut cons = plan.cons;
        let mut prod = cons;
        let mut executed = self.executed.load(Ordering::Relaxed);
        let mut fault = plan.fault;
        let mut replaced = None;
        let mut k = 0;
        while k < plan.expected.len() {
            if prod == cons {
                prod = self.regs.prod.load(Ordering::Relaxed);
                // The fetches that follow see what the doorbell's barrier published.
                fence(Ordering::Acquire);
                let mask = self.wrap_mask();
                assert_eq!(
                    prod & !mask,
                    0,
                    "CMDQ_PROD {prod:#x}: bits beyond the wrap flag"
                );
                if prod == cons {
                    if self.producer_done.load(Ordering::Acquire) {
                        break;
                    }
                    loom::thread::yield_now();
                    continue;
                }
            }
            let index = cons % self.entries();
            let want = plan.expected[k].words;
            match fault.take_if(|&mut (at, _)| at == k).map(|(_, kind)| kind) {
                Some(Cerror::Illegal) => {
                    // The unit stops at the command: its words are read once the recovery
                    // has replaced it (reading them now, before the acknowledgement's
                    // yields, would let loom's progress rule hide a stale re-fetch).
                    replaced = Some(cons);
                    self.report(cons, Cerror::Illegal);
                    continue;
                }
                Some(Cerror::Abort) => {
                    // Nothing was read: the command is fetched again below, and must be the
                    // one queued there.
                    self.report(cons, Cerror::Abort);
                    continue;
                }
                Some(Cerror::AtcInvSync) => {
                    let fetched = self.fetch(index);
                    assert_eq!(fetched, want, "unit: the CMD_SYNC at {index}");
                    assert_eq!(
                        fetched[0] as u8, CMD_SYNC,
                        "CERROR_ATC_INV_SYNC at a CMD_SYNC"
                    );
                    self.report(cons, Cerror::AtcInvSync);
                    continue;
                }
                None => {}
            }
            let fetched = self.fetch(index);
            let want = if replaced == Some(cons) {
                Command::plain_sync().words
            } else {
                want
            };
            assert_eq!(
                fetched, want,
                "unit: command {index} (CONS {cons:#x}, PROD {prod:#x}) holds {fetched:x?}, not \
                 the command queued there, {want:x?}: torn, stale, or overwritten before the \
                 unit consumed it"
            );
            let next = (cons + 1) & self.wrap_mask();
            if fetched[0] as u8 == CMD_SYNC {
                // Every earlier command completed (this unit runs them in order): consumed,
                // then the MSI.
                self.regs.cons.store(next, Ordering::Release);
                self.sync_signal(fetched);
            } else {
                // Consumed before it runs.
                self.regs.cons.store(next, Ordering::Release);
                executed += 1;
                let sid = fetched[0] >> 32;
                if sid < 32 {
                    executed |= 1 << (32 + sid);
                }
                self.executed.store(executed, Ordering::Relaxed);
            }
            cons = next;
            k += 1;
        }
        k
    }

    /// §7.1: the unit stops at the command, CONS on it with `ERR` = the error's code, toggles
    /// `GERROR.CMDQ_ERR` (the code is visible before the toggle), and fetches nothing until
    /// software makes `GERRORN.CMDQ_ERR` match; then it fetches again from CONS.
    fn report(&self, cons: u32, error: Cerror) {
        self.raised
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.regs
            .cons
            .store(cons | error.code() << 24, Ordering::Relaxed);
        let gerror = self.regs.gerror.load(Ordering::Relaxed) ^ CMDQ_ERR;
        self.regs.gerror.store(gerror, Ordering::Release);
        loop {
            let ack = self.regs.gerrorn.load(Ordering::Relaxed);
            // The re-fetch sees what software wrote before acknowledging.
            fence(Ordering::Acquire);
            if ack & CMDQ_ERR == gerror & CMDQ_ERR {
                break;
            }
            loom::thread::yield_now();
        }
        // Running again: CONS without the error code.
        self.regs.cons.store(cons, Ordering::Relaxed);
    }

    /// A CMD_SYNC with `CS` = SIG_IRQ and an MSI address: a 32-bit write of MSIData (63:32)
    /// to MSIAddress (word 1, 51:2), release (it publishes what the sync completed).
    fn sync_signal(&self, d: [u64; 2]) {
        let cs = d[0] >> 12 & 3;
        let address = d[1] & 0x000f_ffff_ffff_fffc;
        if cs != SyncSignal::Irq as u64 || address == 0 {
            return;
        }
        assert_eq!(address, self.msi_pa, "a CMD_SYNC's MSI address");
        // The MSI word is the low half of the MSI page's word 0; the high half stays 0.
        self.pages.word(1, 0).store(d[0] >> 32, Ordering::Release);
    }
}

/// A command the scenario queues, told apart by its stream.
fn cfgi(sid: u32) -> Command {
    Command::cfgi_ste(StreamId(sid), true)
}

/// A filler queued before the threads start.
fn smmu_filler(sid: u32) -> Command {
    Command::cfgi_cd_all(StreamId(sid))
}

fn msi_sync(world: &SmmuWorld, data: u32) -> Command {
    let msi = SyncMsi {
        address: PhysAddr::new(world.msi_pa),
        data,
        msh: 3,
        msiattr: 0xf,
    };
    Command::sync(SyncSignal::Irq, Some(msi)).unwrap()
}

/// The queue's allocator: the scenario's pages, which outlive the queue (the model unit
/// checks them after the producer is done), so `free` (the queue's drop) gives nothing back.
#[derive(Clone)]
struct SmmuPages(Arc<Pages>);

// SAFETY: `Pages` hands out distinct zeroed, aligned pages live until the scenario ends;
// freeing only forgets them.
unsafe impl PageAllocator for SmmuPages {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        self.0.alloc(size_log2)
    }

    unsafe fn free(&self, _page: Page, _size_log2: u32) {}

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        self.0.phys_to_virt(pa)
    }
}

type Queue = LoomCommandQueue<SmmuPages>;

/// Setup: a queue of four commands in `mode`; `consumed` fillers queued and consumed (CONS
/// there), then `pending` more queued and left for the unit (the doorbell rung). Returns the
/// world, the queue and the pending fillers.
fn smmu_setup(
    log2: u32,
    mode: SyncMode,
    errors: bool,
    consumed: u32,
    pending: u32,
) -> (Arc<SmmuWorld>, Queue, Vec<Command>) {
    let wrap_mask = (2 << log2) - 1;
    let regs = Arc::new(SmmuRegs {
        prod: AtomicU32::new(0),
        cons: AtomicU32::new(0),
        errors,
        gerror: AtomicU32::new(0),
        gerrorn: AtomicU32::new(0),
        doorbells: StdU32::new(0),
        acks: StdU32::new(0),
        gerrorn_written: StdU32::new(0),
    });
    let pages = Arc::new(Pages::default());
    let window = SmmuWindow(regs.clone());
    let mut q = LoomCommandQueue::new(SmmuPages(pages.clone()), log2, mode, PATIENT).unwrap();
    q.program(&window);
    let done: Vec<Command> = (0..consumed).map(|i| smmu_filler(100 + i)).collect();
    q.submit(&window, &done).unwrap();
    regs.cons.store(consumed & wrap_mask, Ordering::Relaxed);
    let queued: Vec<Command> = (0..pending).map(|i| smmu_filler(200 + i)).collect();
    q.submit(&window, &queued).unwrap();
    assert_eq!(q.prod(), (consumed + pending) & wrap_mask, "setup: PROD");
    let world = Arc::new(SmmuWorld {
        pages,
        regs,
        executed: AtomicU64::new(u64::from(consumed)),
        raised: StdU32::new(0),
        producer_done: AtomicBool::new(false),
        msi_pa: PAGE_BASE + (1 << 16),
        log2,
    });
    for (i, d) in queued.iter().enumerate() {
        let index = (consumed + i as u32) % world.entries();
        assert_eq!(world.fetch(index), d.words, "setup: filler {i}");
    }
    world
        .regs
        .doorbells
        .store(0, std::sync::atomic::Ordering::Relaxed);
    (world, q, queued)
}

impl ModelUnit for SmmuWorld {
    type Plan = SmmuPlan;
    fn run_unit(&self, plan: &SmmuPlan) -> usize {
        SmmuWorld::run_unit(self, plan)
    }
    fn producer_done(&self) -> &AtomicBool {
        &self.producer_done
    }
}

fn executed(w: &SmmuWorld) -> u64 {
    w.executed.load(Ordering::Relaxed) & 0xffff_ffff
}

/// The queue full when the producer comes, and its batch wrapping the index and flipping the
/// wrap flag: a queue of two commands, one filler consumed, two pending in indexes 1 and 0
/// (PROD index 1 with wrap 1, CONS index 1 with wrap 0: full). `submit_and_sync` of one
/// command must poll CONS (bounded) until the unit consumed a filler, write the command at
/// index 1 (wrap 1) and ring PROD (index 0, wrap 0), poll again for room for its CMD_SYNC
/// (index 0, wrap 0; PROD then index 1, wrap 0), and return `Ok` only once CONS passed the
/// CMD_SYNC, which the unit does only after running everything before it.
#[test]
fn smmu_full_queue_batch_wraps() {
    run("smmu_full_queue_batch_wraps", &["ok"], |t| {
        let (world, q, mut expected) = smmu_setup(1, SyncMode::PollCons, false, 1, 2);
        expected.extend([cfgi(1), Command::plain_sync()]);
        let plan = SmmuPlan {
            cons: 1,
            expected,
            fault: None,
        };
        let t = t.clone();
        race(world, q, plan, "commands", move |w, q| {
            let r = q.submit_and_sync(&w.window(), &[cfgi(1)]);
            assert_eq!(r, Ok(()), "a full queue's batch with {PATIENT} polls");
            t.note("ok");
            assert_eq!(executed(w), 4, "the sync returned before its commands ran");
            assert_eq!(q.prod(), 1, "PROD after wrapping: index 1, wrap flag 0");
            assert_eq!(w.regs.prod.load(Ordering::Relaxed), 1, "CMDQ_PROD");
            4
        });
    });
}

/// No room within the budget: the same full queue, every wait given one poll. The call
/// either completes, or fails with `CommandQueueFull` (what was queued before the entry that
/// found no room is rung: the error's `prod` is what CMDQ_PROD holds, and the index PROD
/// points at still holds the command queued there a lap before), or with `SyncTimeout` (the
/// command and the CMD_SYNC queued). The retry, with room to wait, queues what is missing
/// (the command and a CMD_SYNC, a CMD_SYNC, or one more CMD_SYNC) and completes after all of
/// it ran.
#[test]
fn smmu_space_timeout_writes_nothing() {
    let outcomes = ["space timeout", "sync timeout"];
    run("smmu_space_timeout_writes_nothing", &outcomes, |t| {
        let (world, q, mut expected) = smmu_setup(1, SyncMode::PollCons, false, 1, 2);
        let batch = [cfgi(1)];
        expected.extend(batch);
        expected.extend([Command::plain_sync(), Command::plain_sync()]);
        // Everything the queue was given, from position 0 on.
        let mut history = vec![smmu_filler(100)];
        history.extend(expected.iter().copied());
        let plan = SmmuPlan {
            cons: 1,
            expected,
            fault: None,
        };
        let t = t.clone();
        race(world, q, plan, "commands", move |w, q| {
            q.set_budget(1);
            let before = q.prod();
            let r = q.submit_and_sync(&w.window(), &batch);
            // Entries this call queued (2: the command and its CMD_SYNC).
            let queued = (q.prod().wrapping_sub(before) & w.wrap_mask()) as usize;
            q.set_budget(PATIENT);
            let syncs = match r {
                Ok(()) => {
                    t.note("ok");
                    1
                }
                Err(SmmuError::CommandQueueFull { prod, .. }) => {
                    t.note("space timeout");
                    assert!(queued <= 1, "{queued} entries queued by a refused call");
                    assert_eq!(prod, q.prod(), "the error's PROD");
                    let rung = w.regs.prod.load(Ordering::Relaxed);
                    assert_eq!(
                        rung,
                        q.prod(),
                        "CMDQ_PROD: what was queued is rung, no more"
                    );
                    let lap_before = &history[3 + queued - 2];
                    let at_prod = w.fetch(q.prod() % w.entries());
                    assert_eq!(at_prod, lap_before.words, "an entry written past PROD");
                    q.submit_and_sync(&w.window(), &batch[queued..])
                        .expect("the retry of a batch refused for want of space");
                    1
                }
                Err(SmmuError::SyncTimeout { prod, .. }) => {
                    t.note("sync timeout");
                    assert_eq!(queued, 2, "a sync that timed out was queued with its batch");
                    assert_eq!(prod, q.prod(), "the error's PROD: past the CMD_SYNC");
                    q.submit_and_sync(&w.window(), &[])
                        .expect("a CMD_SYNC after the late one");
                    2
                }
                Err(e) => panic!("the first call's error: {e}"),
            };
            assert_eq!(executed(w), 4, "the sync returned before the batch ran");
            3 + syncs
        });
    });
}

/// A CMD_SYNC whose MSI comes late: a queue of two commands, empty at index 1 (wrap 0), MSI
/// completion, two polls. The first call (a command and a CMD_SYNC with MSIData 1) completes
/// or fails with `SyncTimeout`, everything queued; the unit still runs it and its MSI may land
/// while the next call polls. That call (a command and a CMD_SYNC with MSIData 2, each
/// waiting for room) must not take the late MSI 1 for its own: it returns only after its
/// command ran.
#[test]
fn smmu_msi_sync_timeout_then_late_completion() {
    run(
        "smmu_msi_sync_timeout_then_late_completion",
        &["ok", "sync timeout"],
        |t| {
            let (world, q, _) = smmu_setup(1, SyncMode::Msi, false, 1, 0);
            let expected = vec![cfgi(1), msi_sync(&world, 1), cfgi(2), msi_sync(&world, 2)];
            let plan = SmmuPlan {
                cons: 1,
                expected,
                fault: None,
            };
            let t = t.clone();
            race(world, q, plan, "commands", move |w, q| {
                q.set_budget(2);
                match q.submit_and_sync(&w.window(), &[cfgi(1)]) {
                    Ok(()) => {
                        t.note("ok");
                        assert_eq!(executed(w), 2, "the first sync returned before its command");
                    }
                    Err(e) => {
                        t.note("sync timeout");
                        assert!(
                            matches!(e, SmmuError::SyncTimeout { prod: 3, .. }),
                            "the first call's error: {e}"
                        );
                    }
                }
                assert_eq!(q.msi_sequence(), 1);
                assert_eq!(q.prod(), 3, "PROD after the first call: index 1, wrap 1");
                q.set_budget(PATIENT);
                q.submit_and_sync(&w.window(), &[cfgi(2)])
                    .expect("the second call");
                assert_eq!(
                    executed(w),
                    3,
                    "the second sync returned before its command ran"
                );
                assert_eq!(q.msi_sequence(), 2);
                assert_eq!(q.mode(), SyncMode::Msi);
                4
            });
        },
    );
}

/// A command the unit cannot run (CERROR_ILL, §7.1): a queue of four commands, empty at 0;
/// `submit_and_sync` of an illegal command (opcode 0xff). The unit stops at it; the
/// producer's documented recovery (`CommandQueue::recover`) replaces it with a CMD_SYNC
/// without signal, makes that visible, and acknowledges through `GERRORN`; the unit then
/// fetches the replacement (checked word for word) and runs on. The call
/// reports `CommandError { index: 0, opcode: 0xff, Illegal }` only after its own CMD_SYNC
/// completed (CONS past it), and the next call (a legal command) completes after it ran.
#[test]
fn smmu_illegal_command_replaced() {
    run("smmu_illegal_command_replaced", &["illegal"], |t| {
        let (world, q, _) = smmu_setup(2, SyncMode::PollCons, true, 0, 0);
        let bad = Command { words: [0xff, 0] };
        let expected = vec![bad, Command::plain_sync(), cfgi(1), Command::plain_sync()];
        let plan = SmmuPlan {
            cons: 0,
            expected,
            fault: Some((0, Cerror::Illegal)),
        };
        let t = t.clone();
        race(world, q, plan, "commands", move |w, q| {
            let r = q.submit_and_sync(&w.window(), &[bad]);
            let want = SmmuError::CommandError {
                index: 0,
                opcode: 0xff,
                kind: CommandErrorKind::Illegal,
            };
            assert_eq!(r, Err(want), "the call with an illegal command");
            t.note("illegal");
            let cons = w.regs.cons.load(Ordering::Relaxed);
            assert_eq!(cons, 2, "the call returned before its CMD_SYNC completed");
            let (gerror, gerrorn) = (
                w.regs.gerror.load(Ordering::Relaxed),
                w.regs.gerrorn.load(Ordering::Relaxed),
            );
            assert_eq!(gerror, gerrorn, "GERROR.CMDQ_ERR left unacknowledged");
            q.submit_and_sync(&w.window(), &[cfgi(1)])
                .expect("the call after the recovery");
            assert_eq!(
                executed(w),
                1,
                "the second call returned before its command ran"
            );
            assert_eq!(q.prod(), 4, "PROD: index 0, wrap 1");
            4
        });
    });
}

/// Bit n: a command naming StreamID n ran, as a call that just returned sees it.
fn ran(w: &SmmuWorld) -> u64 {
    w.executed.load(Ordering::Relaxed) >> 32
}

fn acks(w: &SmmuWorld) -> u32 {
    w.regs.acks.load(std::sync::atomic::Ordering::Relaxed)
}

/// A fetch abort (CERROR_ABT, §7.1) on one CPU's command while another CPU submits and syncs:
/// a queue of eight commands, empty at 0. CPU A's call queues CFGI_STE(1) and a CMD_SYNC with
/// one poll per wait; then CPU B's call queues CFGI_STE(2) and a CMD_SYNC with room to wait;
/// the unit aborts the fetch of A's command once. The queue's calls hold the unit's `cmdq` lock from
/// their first write to the end of their wait, so the CPUs' calls run one after the other:
/// they are made on one loom thread, in the order that leaves A's error pending when B's call
/// comes (B first would meet nothing of A's), and each races the unit.
///
/// In every interleaving: the unit fetches the aborted command again after the
/// acknowledgement and finds it unchanged (word for word: never replaced, never dropped); a
/// call returns `Ok` only once its own command ran; A fails only with `SyncTimeout` or with
/// `CommandError { Abort }` naming its command's index and opcode (the abort met, the budget
/// gone), its command still queued, which B's CMD_SYNC then covers; B, with room to wait,
/// completes, acknowledging the error itself when A left before meeting it; the error is
/// acknowledged exactly once and every command consumed. Required: A
/// completing after the abort, A failing with it, and B's wait acknowledging it.
#[test]
fn smmu_fetch_abort_beside_a_submitter() {
    let outcomes = ["a ok after the abort", "a abort", "b acknowledged"];
    run("smmu_fetch_abort_beside_a_submitter", &outcomes, |t| {
        let (world, q, _) = smmu_setup(3, SyncMode::PollCons, true, 0, 0);
        let sync = Command::plain_sync();
        let plan = SmmuPlan {
            cons: 0,
            expected: vec![cfgi(1), sync, cfgi(2), sync],
            fault: Some((0, Cerror::Abort)),
        };
        let t = t.clone();
        race(world, q, plan, "commands", move |w, q| {
            q.set_budget(1);
            let a = q.submit_and_sync(&w.window(), &[cfgi(1)]);
            let acks_after_a = acks(w);
            let abort = SmmuError::CommandError {
                index: 0,
                opcode: 0x03,
                kind: CommandErrorKind::Abort,
            };
            match a {
                Ok(()) => {
                    t.note("a ok after the abort");
                    assert_ne!(
                        ran(w) & 1 << 1,
                        0,
                        "A's call returned before its command ran"
                    );
                }
                Err(e) if e == abort => t.note("a abort"),
                Err(SmmuError::SyncTimeout { .. }) => t.note("a sync timeout"),
                Err(e) => panic!("A's call (its command's fetch aborted once): {e}"),
            }
            q.set_budget(PATIENT);
            q.submit_and_sync(&w.window(), &[cfgi(2)])
                .expect("B's call, with room to wait");
            assert_eq!(
                ran(w),
                1 << 1 | 1 << 2,
                "B's CMD_SYNC completed before its command, or A's before it, ran"
            );
            if a.is_err() && acks_after_a == 0 {
                t.note("b acknowledged");
            }
            assert_eq!(executed(w), 2);
            assert_eq!(w.raised.load(std::sync::atomic::Ordering::Relaxed), 1);
            assert_eq!(acks(w), 1, "the abort acknowledged {} times", acks(w));
            4
        });
    });
}

/// CERROR_ATC_INV_SYNC (§7.1, §3.9.1.4) on one CPU's CMD_SYNC while another CPU's sync is
/// pending: a queue of eight commands, empty at 0. CPU A's call queues CMD_ATC_INV(1) and a
/// CMD_SYNC with two polls per wait; then CPU B's call queues CFGI_STE(2) and a CMD_SYNC
/// with room to wait. A's ATS invalidation times out: the unit stops at A's CMD_SYNC with CERROR_ATC_INV_SYNC, and once acknowledged runs it
/// again, and it completes (`Cerror::AtcInvSync`). The CPUs' calls are made on one loom
/// thread, as in `smmu_fetch_abort_beside_a_submitter`: A's CMD_SYNC, when A's budget runs
/// out first, is still pending before B's.
///
/// In every interleaving each call reports exactly its own outcome: A never returns `Ok`
/// (its invalidation did not complete: a flush reporting it complete would free pages the
/// device may still reach through its ATC), but `CommandError { AtcInvalidationSync }`
/// naming its CMD_SYNC, or `SyncTimeout` if its budget ran out first; B returns `Ok` after
/// its command ran, even when its wait is the one that meets and acknowledges the error at
/// A's CMD_SYNC (B's CMD_SYNC waited for no failed invalidation). The error is raised and acknowledged once, and every
/// command consumed. Required: A's error, and B acknowledging it for A.
#[test]
fn smmu_atc_sync_timeout_beside_a_pending_sync() {
    let outcomes = ["a atc error", "b acknowledged a's error"];
    run(
        "smmu_atc_sync_timeout_beside_a_pending_sync",
        &outcomes,
        |t| {
            let (world, q, _) = smmu_setup(3, SyncMode::PollCons, true, 0, 0);
            let atc = Command::atc_inv(StreamId(1), None, Iova::new(0), 0, false).unwrap();
            let sync = Command::plain_sync();
            let plan = SmmuPlan {
                cons: 0,
                expected: vec![atc, sync, cfgi(2), sync],
                fault: Some((1, Cerror::AtcInvSync)),
            };
            let t = t.clone();
            race(world, q, plan, "commands", move |w, q| {
                q.set_budget(2);
                let a = q.submit_and_sync(&w.window(), &[atc]);
                let acks_after_a = acks(w);
                let atc_error = SmmuError::CommandError {
                    index: 1,
                    opcode: CMD_SYNC,
                    kind: CommandErrorKind::AtcInvalidationSync,
                };
                match a {
                    Ok(()) => panic!(
                    "A's CMD_SYNC, whose ATS invalidation timed out, reported as complete (its \
                     pages would be freed while the device's ATC may still hold them)"
                ),
                    Err(e) if e == atc_error => t.note("a atc error"),
                    Err(SmmuError::SyncTimeout { .. }) => t.note("a sync timeout"),
                    Err(e) => panic!("A's call (its ATS invalidation timed out): {e}"),
                }
                q.set_budget(PATIENT);
                let b = q.submit_and_sync(&w.window(), &[cfgi(2)]);
                assert_eq!(
                    b,
                    Ok(()),
                    "B's call, whose CMD_SYNC waited for no failed invalidation"
                );
                assert_ne!(
                    ran(w) & 1 << 2,
                    0,
                    "B's call returned before its command ran"
                );
                if acks_after_a == 0 {
                    t.note("b acknowledged a's error");
                }
                assert_eq!(executed(w), 2);
                assert_eq!(w.raised.load(std::sync::atomic::Ordering::Relaxed), 1);
                assert_eq!(acks(w), 1, "the error acknowledged {} times", acks(w));
                4
            });
        },
    );
}

/// The unit's global-error handler (`SmmuUnit::handle_events`, its part that writes `GERRORN`:
/// `LoomLockedQueue::handle_global_errors`) on CPU H beside CPU A's calls on the command queue
/// (IHI 0070 G.b §7.5, §6.3.18): a queue of four commands, empty at 0, behind the unit's lock;
/// `GERROR.EVENTQ_ABT_ERR` active when the threads start (H acknowledges it); A queues an
/// illegal command (opcode 0xff) and a CMD_SYNC, the unit stops at it with CERROR_ILL and
/// toggles `GERROR.CMDQ_ERR`, and A's wait recovers and acknowledges it; then A queues
/// CFGI_STE(1) and a CMD_SYNC. Three threads: A, H and the unit.
///
/// In every interleaving: A's first call fails with `CommandError { index: 0, opcode: 0xff,
/// Illegal }` and its second completes after its command ran; H reports no command error of
/// its own (A's wait recovers A's); at the end no error is active and `GERRORN` was written
/// twice, once per error. With H's read-modify-write outside the queue's lock (as before the
/// fix) it fails (after 32,824 interleavings): H writes back the `CMDQ_ERR` bit it read before
/// A's acknowledgement, the error is active again, the unit stops and A's second call times
/// out. Required: H's read of the errors finding A's `CMDQ_ERR` active.
#[test]
fn smmu_handle_events_beside_a_waiter() {
    let outcomes = ["h saw cmdq_err"];
    run("smmu_handle_events_beside_a_waiter", &outcomes, |t| {
        let (world, q, _) = smmu_setup(2, SyncMode::PollCons, true, 0, 0);
        world
            .regs
            .gerror
            .store(Gerror::EVENTQ_ABT_ERR.bits(), Ordering::Relaxed);
        let bad = Command { words: [0xff, 0] };
        let plan = SmmuPlan {
            cons: 0,
            expected: vec![bad, Command::plain_sync(), cfgi(1), Command::plain_sync()],
            fault: Some((0, Cerror::Illegal)),
        };
        let t = t.clone();
        race(
            world,
            Arc::new(LoomLockedQueue::new(q)),
            plan,
            "commands",
            move |w, q| {
                let (window, handler) = (w.window(), q.clone());
                let h = loom::thread::spawn(move || handler.handle_global_errors(&window));
                let a = q.submit_and_sync(&w.window(), &[bad], PATIENT);
                let illegal = SmmuError::CommandError {
                    index: 0,
                    opcode: 0xff,
                    kind: CommandErrorKind::Illegal,
                };
                assert_eq!(a, Err(illegal), "A's call with an illegal command");
                q.submit_and_sync(&w.window(), &[cfgi(1)], PATIENT)
                    .expect("A's call after the recovery");
                assert_eq!(
                    executed(w),
                    1,
                    "A's second call returned before its command ran"
                );
                let (seen, recovered) = h.join().unwrap();
                assert!(seen.contains(Gerror::EVENTQ_ABT_ERR));
                if seen.contains(Gerror::CMDQ_ERR) {
                    t.note("h saw cmdq_err");
                }
                assert_eq!(recovered, None, "H recovered A's command error");
                let (gerror, gerrorn) = (
                    w.regs.gerror.load(Ordering::Relaxed),
                    w.regs.gerrorn.load(Ordering::Relaxed),
                );
                assert_eq!(
                    gerror ^ gerrorn,
                    0,
                    "errors left active (GERROR {gerror:#x}, GERRORN {gerrorn:#x}): an \
                     acknowledgement undone"
                );
                assert_eq!(w.raised.load(std::sync::atomic::Ordering::Relaxed), 1);
                assert_eq!(acks(w), 2, "GERRORN written {} times", acks(w));
                4
            },
        );
    });
}
