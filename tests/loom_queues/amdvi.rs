//! The AMD-Vi command buffer (`src/amdvi/cmdbuf.rs`; AMD IOMMU specification 48882 rev. 3.10,
//! §2.4 Commands: the circular buffer, the head and tail pointers, COMPLETION_WAIT) under
//! loom: the crate's real producer (`CommandBuffer::submit` and `wait`, which the unit calls
//! under its `cmd` lock) against a model unit consuming the buffer on another thread.
//!
//! The model reads the tail pointer (relaxed, then an acquire fence: a device fetches what the
//! tail write's barrier published), fetches every command from the head up to that tail into
//! a list of its own, checking each word for word against the one the scenario queued there
//! (torn, stale or overwritten before it was fetched: failure), moves the head past them all
//! (release: the entries may be reused), and only then runs the list in order: other commands
//! are counted as executed, a COMPLETION_WAIT with `S` is a 64-bit release store of its data
//! to its address, made after every command before it ran (§2.4: the head pointer is the
//! offset of the next command to fetch; only COMPLETION_WAIT says earlier commands completed,
//! and a device-IOTLB invalidation completes when the device answers). So the head past a
//! COMPLETION_WAIT, or at the tail, is not its completion. The head and tail registers are
//! relaxed: only the crate's barriers order them with memory.
//!
//! A buffer is at least 256 commands (`ComLen` 8): as for the VT-d queue, fillers are queued
//! before the threads start and the unit takes those from the third on in one step.
//!
//! ILLEGAL_COMMAND_ERROR (§2.4, §2.5) at a chosen command (`AmdWorld::stop`): the unit logs
//! the event, clears `Status.CmdBufRun` with the head on the command, and fetches again from
//! the head once `Control.CmdBufEn` was cleared and set.

use super::*;
use iommu_engine::amdvi::cmd::Command as AmdCommand;
use iommu_engine::amdvi::cmdbuf::CommandBuffer;
use iommu_engine::amdvi::regs::{
    Control, Status, CMD_BUF_BASE, CMD_BUF_HEAD, CMD_BUF_TAIL, CONTROL, STATUS,
};
use iommu_engine::amdvi::{
    CommandErrorKind as AmdCommandErrorKind, Error as AmdError, Wait as AmdWait,
};
use iommu_engine::mem::WalkerCoherency;

/// `ComLen` 8: 256 commands of 16 bytes, one 4 KiB page.
const LEN_LOG2: u32 = 8;
const SIZE: u64 = 16 << LEN_LOG2;
/// COMPLETION_WAIT's opcode (bits 63:60) and its `S` bit (word 0 bit 0).
const COMPLETION_WAIT: u64 = 0x1;
/// INVALIDATE_DEVTAB_ENTRY's opcode.
const INVALIDATE_DEVTAB_ENTRY: u64 = 0x2;
const STORE: u64 = 1;

/// The unit's registers: the head and tail pointers as loom atomics; `Status` reads
/// `CmdBufRun` and `Control` `CmdBufEn`, loom atomics only in the scenario with a command
/// error (`errors`; elsewhere constants that cost no interleavings).
struct AmdRegs {
    head: AtomicU64,
    tail: AtomicU64,
    errors: bool,
    /// `Status.CmdBufRun`, cleared by the unit when it stops on a command.
    status: AtomicU64,
    /// `Control` as the CPUs read it: only they write it, under the buffer's lock.
    control: StdU64,
    /// `Control` writes that set `CmdBufEn` (the unit restarts on one after it stopped: a
    /// count, so that a clear and set between two of its reads are not missed).
    enables: AtomicU64,
    /// The address the unit's last ILLEGAL_COMMAND_ERROR event names (§2.5.x: the event
    /// log entry, written before `CmdBufRun` clears); 0: none.
    event: AtomicU64,
    /// Tail pointer writes.
    doorbells: StdU32,
    /// The last tail pointer written (the producer's, so no loom operation).
    tail_written: StdU64,
    /// Head pointer reads that found the buffer full (the tail written one entry behind the
    /// head): the producer's space checks and polls that saw no room.
    full_reads: StdU32,
}

#[derive(Clone)]
struct AmdWindow(Arc<AmdRegs>);

impl RegisterWindow for AmdWindow {
    fn read32(&self, offset: usize) -> u32 {
        panic!("read32 of register {offset:#x}")
    }

    fn write32(&self, offset: usize, value: u32) {
        panic!("write32 of register {offset:#x} ({value:#x})")
    }

    fn read64(&self, offset: usize) -> u64 {
        match offset {
            CMD_BUF_HEAD => {
                let head = self.0.head.load(Ordering::Relaxed);
                let tail = self
                    .0
                    .tail_written
                    .load(std::sync::atomic::Ordering::Relaxed);
                if (head + SIZE - tail) % SIZE == 16 {
                    self.0
                        .full_reads
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                head
            }
            CMD_BUF_TAIL => self.0.tail.load(Ordering::Relaxed),
            // Acquire: the event entry the unit wrote before it cleared `CmdBufRun` is seen
            // (reads of one device's registers are not reordered; loom cannot express it).
            STATUS if self.0.errors => self.0.status.load(Ordering::Acquire),
            STATUS => Status::CMD_BUF_RUN.bits(),
            CONTROL if self.0.errors => self.0.control.load(std::sync::atomic::Ordering::Relaxed),
            CONTROL => Control::CMD_BUF_EN.bits(),
            _ => panic!("read64 of register {offset:#x}"),
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        match offset {
            CMD_BUF_TAIL => {
                self.0
                    .doorbells
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.0
                    .tail_written
                    .store(value, std::sync::atomic::Ordering::Relaxed);
                self.0.tail.store(value, Ordering::Relaxed)
            }
            // `program`, before the threads start, and the recovery, while `CmdBufEn` is
            // clear.
            CMD_BUF_HEAD => self.0.head.store(value, Ordering::Relaxed),
            CONTROL if self.0.errors => {
                self.0
                    .control
                    .store(value, std::sync::atomic::Ordering::Relaxed);
                if value & Control::CMD_BUF_EN.bits() != 0 {
                    // Running again at once (as the VT-d model's GSTS follows GCMD): a unit
                    // slow to set `CmdBufRun` is not modelled (see the scenario).
                    self.0
                        .status
                        .store(Status::CMD_BUF_RUN.bits(), Ordering::Relaxed);
                    let n = self.0.enables.load(Ordering::Relaxed);
                    self.0.enables.store(n + 1, Ordering::Relaxed);
                }
            }
            CMD_BUF_BASE => {}
            _ => panic!("write64 of register {offset:#x} ({value:#x})"),
        }
    }
}

struct AmdPlan {
    /// The head (byte offset) when the threads start.
    head: u64,
    expected: Vec<AmdCommand>,
    /// `expected[from..to]` is consumed in one step (see the module).
    bulk: Option<(usize, usize)>,
    /// The command at this position of `expected` is illegal: the unit stops on it (see
    /// `AmdWorld::stop`), and once restarted expects it replaced by the recovery's
    /// INVALIDATE_DEVTAB_ENTRY of device 0.
    illegal: Option<usize>,
}

struct AmdWorld {
    pages: Arc<Pages>,
    regs: Arc<AmdRegs>,
    /// Commands other than COMPLETION_WAIT the unit ran (bits 31:0), and which ran (bit
    /// 32 + n: an INVALIDATE_DEVTAB_ENTRY of device n, below 32), published by the stores of
    /// the COMPLETION_WAITs after them.
    executed: AtomicU64,
    /// The ring's address (the first page allocated).
    ring_pa: u64,
    producer_done: AtomicBool,
    /// The semaphore page (the second page allocated).
    semaphore_pa: u64,
}

impl AmdWorld {
    fn window(&self) -> AmdWindow {
        AmdWindow(self.regs.clone())
    }

    fn fetch(&self, offset: u64) -> [u64; 2] {
        let word = offset as usize / 8;
        [0, 1].map(|w| self.pages.word(0, word + w).load(Ordering::Relaxed))
    }

    fn executed(&self) -> u64 {
        self.executed.load(Ordering::Relaxed) & 0xffff_ffff
    }

    /// Bit n: an INVALIDATE_DEVTAB_ENTRY of device n ran.
    fn ran(&self) -> u64 {
        self.executed.load(Ordering::Relaxed) >> 32
    }

    /// The unit: fetches and runs commands until the producer is done and the buffer empty.
    /// Returns how many of the plan's commands it consumed. It reads the tail only once it
    /// has fetched up to the last value it read, and fetches up to it before running any.
    fn run_unit(&self, plan: &AmdPlan) -> usize {
        let mut head = plan.head;
        let mut tail = head;
        let mut executed = self.executed.load(Ordering::Relaxed);
        let mut illegal = plan.illegal;
        let mut replaced = None;
        let mut k = 0;
        while k < plan.expected.len() {
            if let Some((from, to)) = plan.bulk.filter(|&(from, _)| from == k) {
                let n = (to - from) as u64;
                head = (head + 16 * n) % SIZE;
                k = to;
                self.regs.head.store(head, Ordering::Release);
                executed += n;
                self.executed.store(executed, Ordering::Relaxed);
                continue;
            }
            if head == tail {
                // Read first: once the producer is done, the tail read after sees its last
                // write.
                let done = self.producer_done.load(Ordering::Acquire);
                tail = self.regs.tail.load(Ordering::Relaxed);
                // The fetches that follow see what the tail write's barrier published.
                fence(Ordering::Acquire);
                assert!(
                    tail % 16 == 0 && tail < SIZE,
                    "tail pointer {tail:#x} is outside the buffer or misaligned"
                );
                if head == tail {
                    if done {
                        break;
                    }
                    loom::thread::yield_now();
                    continue;
                }
            }
            // Fetch ahead up to the tail (or the bulk step), then move the head past it all:
            // the entries may be reused before any of the commands ran.
            let stop = match plan.bulk {
                Some((from, _)) if from > k => from,
                _ => plan.expected.len(),
            };
            let mut fetched = Vec::new();
            let mut stopped = false;
            while head != tail && k < stop {
                if illegal == Some(k) {
                    // Fetched and found illegal: the unit stops with the head on it, once the
                    // commands fetched before it ran.
                    illegal = None;
                    stopped = true;
                    break;
                }
                let d = self.fetch(head);
                let want = if replaced == Some(k) {
                    AmdCommand::invalidate_devtab_entry(0).0
                } else {
                    plan.expected[k].0
                };
                assert_eq!(
                    d, want,
                    "unit: command at {head:#x} (tail {tail:#x}) holds {d:x?}, not the command \
                     queued there, {want:x?}: torn, stale, or overwritten before it was fetched"
                );
                fetched.push(d);
                head = (head + 16) % SIZE;
                k += 1;
            }
            self.regs.head.store(head, Ordering::Release);
            // Then run them in order: a COMPLETION_WAIT's store after every earlier command.
            for d in fetched {
                if d[0] >> 60 == COMPLETION_WAIT {
                    self.completion_wait(d);
                } else {
                    executed += 1;
                    let device = d[0] & 0xffff;
                    if d[0] >> 60 == INVALIDATE_DEVTAB_ENTRY && device < 32 {
                        executed |= 1 << (32 + device);
                    }
                    self.executed.store(executed, Ordering::Relaxed);
                }
            }
            if stopped {
                replaced = Some(k);
                (head, tail) = self.stop(head);
            }
        }
        k
    }

    /// The unit meets an illegal command at `head` (§2.4, §2.5: ILLEGAL_COMMAND_ERROR): it
    /// logs the event with the command's address, clears `Status.CmdBufRun` and fetches
    /// nothing more, the head pointer on the command. Software restarts it by clearing and
    /// setting `Control.CmdBufEn` (writing the head and tail pointers while it is clear); the
    /// unit then fetches from the head pointer. Returns the head and tail it restarts with.
    fn stop(&self, head: u64) -> (u64, u64) {
        let enables = self.regs.enables.load(Ordering::Relaxed);
        self.regs
            .event
            .store(self.ring_pa + head, Ordering::Relaxed);
        self.regs.status.store(0, Ordering::Release);
        loop {
            let now = self.regs.enables.load(Ordering::Relaxed);
            // The fetches after the restart see what software wrote before setting CmdBufEn.
            fence(Ordering::Acquire);
            if now != enables {
                break;
            }
            loom::thread::yield_now();
        }
        let head = self.regs.head.load(Ordering::Relaxed);
        let tail = self.regs.tail.load(Ordering::Relaxed);
        // As for every tail read: the fetches see what the tail write's barrier published.
        fence(Ordering::Acquire);
        (head, tail)
    }

    /// COMPLETION_WAIT with `S`: a 64-bit store of word 1 to the address in word 0 (51:3),
    /// made once every earlier command completed (release: publishes `executed`).
    fn completion_wait(&self, d: [u64; 2]) {
        assert_eq!(
            d[0] & STORE,
            STORE,
            "a COMPLETION_WAIT of the buffer's without S"
        );
        let address = d[0] & 0x000f_ffff_ffff_fff8;
        assert_eq!(
            address, self.semaphore_pa,
            "a COMPLETION_WAIT's store address"
        );
        self.pages.word(1, 0).store(d[1], Ordering::Release);
    }
}

/// A command the scenario queues, told apart by its device.
fn devtab(device: u16) -> AmdCommand {
    AmdCommand::invalidate_devtab_entry(device)
}

fn completion(world: &AmdWorld, sequence: u64) -> AmdCommand {
    AmdCommand::completion_wait(Some((PhysAddr::new(world.semaphore_pa), sequence)), false)
}

/// Setup: a buffer of 256 commands, `fillers` fillers queued (published), the unit having
/// consumed the first `consumed`.
fn amd_setup(fillers: u16, consumed: u64) -> (Arc<AmdWorld>, CommandBuffer, Vec<AmdCommand>) {
    amd_setup_with(fillers, consumed, false)
}

/// As `amd_setup`; `errors`: `Status` and `Control` are the model's (see `AmdRegs`).
fn amd_setup_with(
    fillers: u16,
    consumed: u64,
    errors: bool,
) -> (Arc<AmdWorld>, CommandBuffer, Vec<AmdCommand>) {
    let regs = Arc::new(AmdRegs {
        head: AtomicU64::new(0),
        tail: AtomicU64::new(0),
        errors,
        status: AtomicU64::new(Status::CMD_BUF_RUN.bits()),
        control: StdU64::new(Control::CMD_BUF_EN.bits()),
        enables: AtomicU64::new(0),
        event: AtomicU64::new(0),
        doorbells: StdU32::new(0),
        tail_written: StdU64::new(0),
        full_reads: StdU32::new(0),
    });
    let pages = Arc::new(Pages::default());
    let window = AmdWindow(regs.clone());
    let mut b = CommandBuffer::new(&*pages, LEN_LOG2, WalkerCoherency::Coherent, PATIENT).unwrap();
    b.program(&window).unwrap();
    let queued: Vec<AmdCommand> = (0..fillers).map(|i| devtab(1000 + i)).collect();
    b.submit(
        &window,
        &*pages,
        queued.iter().copied(),
        &mut |_: PhysAddr| None,
    )
    .unwrap();
    let world = Arc::new(AmdWorld {
        pages,
        regs,
        executed: AtomicU64::new(consumed),
        ring_pa: PAGE_BASE,
        producer_done: AtomicBool::new(false),
        semaphore_pa: PAGE_BASE + (1 << 16),
    });
    for (i, d) in queued.iter().enumerate() {
        assert_eq!(world.fetch(16 * i as u64), d.0, "setup: filler {i}");
    }
    world.regs.head.store(16 * consumed, Ordering::Relaxed);
    world
        .regs
        .doorbells
        .store(0, std::sync::atomic::Ordering::Relaxed);
    world
        .regs
        .full_reads
        .store(0, std::sync::atomic::Ordering::Relaxed);
    (world, b, queued)
}

impl ModelUnit for AmdWorld {
    type Plan = AmdPlan;
    fn run_unit(&self, plan: &AmdPlan) -> usize {
        AmdWorld::run_unit(self, plan)
    }
    fn producer_done(&self) -> &AtomicBool {
        &self.producer_done
    }
}

/// The buffer nearly full when the producer comes, and its commands wrapping: 254 fillers
/// unconsumed (head 0, tail 254: one free entry besides the one that must stay empty). A
/// command takes entry 254; its COMPLETION_WAIT must wait (bounded) for the unit to fetch a
/// filler, take entry 255 and wrap the tail pointer to 0; `wait` returns only once the
/// command ran. Outcomes, by the head reads that found the buffer full: "room at once" (none:
/// the unit had fetched before the COMPLETION_WAIT's space check), "full, room at the first
/// poll" (one: the command published by a third tail write, then the wait for room's first
/// poll found room) and "waited for room" (a poll found it still full); the last is
/// required, so the bounded wait for room is exercised.
#[test]
fn amdvi_full_buffer_wraps() {
    run("amdvi_full_buffer_wraps", &["waited for room"], |t| {
        let (world, b, mut expected) = amd_setup(254, 0);
        expected.extend([devtab(1), completion(&world, 1)]);
        let plan = AmdPlan {
            head: 0,
            expected,
            bulk: Some((2, 254)),
            illegal: None,
        };
        let t = t.clone();
        race(world, b, plan, "commands", move |w, b| {
            let window = w.window();
            b.submit(&window, &*w.pages, [devtab(1)], &mut |_: PhysAddr| None)
                .expect("the command, in the free entry");
            b.wait(&window, &*w.pages, &mut |_: PhysAddr| None)
                .expect("the COMPLETION_WAIT, with room to wait");
            let doorbells = w.regs.doorbells.load(std::sync::atomic::Ordering::Relaxed);
            let full = w.regs.full_reads.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(
                w.executed(),
                255,
                "the wait returned before its command ran"
            );
            // A buffer found full publishes what it holds before waiting for room.
            t.note(match (full, doorbells) {
                (0, 2) => "room at once",
                (1, 3) => "full, room at the first poll",
                (2.., 3) => "waited for room",
                _ => panic!("{full} head reads found the buffer full, {doorbells} tail writes"),
            });
            let tail = w.regs.tail.load(Ordering::Relaxed);
            assert_eq!(tail, 0, "the tail pointer after wrapping");
            256
        });
    });
}

/// No room within the budget: 255 fillers unconsumed (the buffer full), a command given one
/// poll for room. Either it is queued, or `submit` fails with `Timeout { CommandSpace }` and
/// nothing written: the tail pointer where it was and the entry there untouched; the retry,
/// with room to wait, queues it. (Its completion is the other scenarios' business: no
/// COMPLETION_WAIT here.)
#[test]
fn amdvi_space_timeout_writes_nothing() {
    run(
        "amdvi_space_timeout_writes_nothing",
        &["space timeout"],
        |t| {
            let (world, b, mut expected) = amd_setup(255, 0);
            expected.push(devtab(1));
            let plan = AmdPlan {
                head: 0,
                expected,
                bulk: Some((2, 255)),
                illegal: None,
            };
            let t = t.clone();
            race(world, b, plan, "commands", move |w, b| {
                let window = w.window();
                b.set_budget(1);
                let r = b.submit(&window, &*w.pages, [devtab(1)], &mut |_: PhysAddr| None);
                b.set_budget(PATIENT);
                match r {
                    Ok(()) => t.note("ok"),
                    Err(e) => {
                        t.note("space timeout");
                        let space = AmdError::Timeout {
                            what: AmdWait::CommandSpace,
                            polls: 1,
                        };
                        assert_eq!(e, space, "the error of a command refused for want of room");
                        assert_eq!(b.commands, 255, "a refused command was written");
                        let tail = w.regs.tail.load(Ordering::Relaxed);
                        assert_eq!(tail, 16 * 255, "the tail pointer after a refusal");
                        assert_eq!(w.fetch(tail), [0, 0], "an entry written past the tail");
                        b.submit(&window, &*w.pages, [devtab(1)], &mut |_: PhysAddr| None)
                            .expect("the retry, with room to wait");
                    }
                }
                let tail = w.regs.tail.load(Ordering::Relaxed);
                assert_eq!(tail, 0, "the tail pointer after the command: wrapped");
                256
            });
        },
    );
}

/// A COMPLETION_WAIT whose store comes late: the buffer empty with head = tail = 254, a
/// command, then `wait` with two polls: `Ok` (the command ran) or
/// `Timeout { CompletionWait { sequence: 1 } }`; the unit still runs it, and its store may
/// land while the next wait polls. That wait (after another command, sequence 2) must not
/// take store 1 for its own: it returns only after both commands ran.
#[test]
fn amdvi_wait_timeout_then_late_store() {
    run(
        "amdvi_wait_timeout_then_late_store",
        &["ok", "wait timeout"],
        |t| {
            let (world, b, _) = amd_setup(254, 254);
            let expected = vec![
                devtab(1),
                completion(&world, 1),
                devtab(2),
                completion(&world, 2),
            ];
            let plan = AmdPlan {
                head: 16 * 254,
                expected,
                bulk: None,
                illegal: None,
            };
            let t = t.clone();
            race(world, b, plan, "commands", move |w, b| {
                let window = w.window();
                b.submit(&window, &*w.pages, [devtab(1)], &mut |_: PhysAddr| None)
                    .expect("the first command");
                b.set_budget(2);
                match b.wait(&window, &*w.pages, &mut |_: PhysAddr| None) {
                    Ok(()) => {
                        t.note("ok");
                        assert_eq!(w.executed(), 255, "the first wait returned early");
                    }
                    Err(e) => {
                        t.note("wait timeout");
                        let late = AmdError::Timeout {
                            what: AmdWait::CompletionWait { sequence: 1 },
                            polls: 2,
                        };
                        assert_eq!(e, late, "the first wait's error");
                    }
                }
                b.set_budget(PATIENT);
                b.submit(&window, &*w.pages, [devtab(2)], &mut |_: PhysAddr| None)
                    .expect("the second command");
                b.wait(&window, &*w.pages, &mut |_: PhysAddr| None)
                    .expect("the second wait");
                assert_eq!(
                    w.executed(),
                    256,
                    "the second wait returned before its command ran"
                );
                4
            });
        },
    );
}

/// An illegal command (ILLEGAL_COMMAND_ERROR, §2.4, §2.5) from one CPU while another submits:
/// a buffer of 256 commands, empty at 0. CPU A's call queues a command of an opcode the spec
/// does not define (0xf) and waits (`wait`: a COMPLETION_WAIT, sequence 1) with two polls;
/// then CPU B's call queues INVALIDATE_DEVTAB_ENTRY(2) and waits with room to wait. The unit
/// stops on A's command (event logged, `CmdBufRun` clear, the head on it). The unit's `cmd`
/// lock holds each call from its first write to the end of its wait, so the CPUs' calls run
/// one after the other: they are made on one loom thread, A's first (B first meets nothing of
/// A's), and each races the unit.
///
/// In every interleaving: A's call never returns `Ok` (its command never ran), but
/// `CommandError { IllegalCommand }` naming the command's offset and opcode, once its wait
/// recovered the buffer, or `Timeout { CompletionWait }`; whichever wait meets the stopped
/// unit recovers it, and the unit, restarted, fetches the recovery's INVALIDATE_DEVTAB_ENTRY
/// of device 0 where the illegal command stood (word for word: the illegal command is never
/// fetched again) and runs on; B's wait returns `Ok` only once its command ran, or, when it is
/// the one that met the stopped unit (A gone with a timeout), fails with the same
/// `CommandError` (the module's rule: the call that recovers reports the lost command, and
/// its caller's retry covers its own), and its second `wait` then completes after its command
/// ran; the buffer is recovered once and every command consumed. Required: A recovering, and
/// B recovering for A.
///
/// Not modelled: a unit that sets `CmdBufRun` some time after `CmdBufEn` is set again (here
/// it is set at once). `regs::set_control` does not wait for it, so a wait that checks the
/// unit right after another's recovery can find `CmdBufRun` still clear and recover again: a
/// spurious `CommandError`, and, if the unit restarted between that wait's reads of `Status`
/// and of the head pointer, a legal command of a call still waiting replaced (that call then
/// fails, and its retry issues it again).
#[test]
fn amdvi_illegal_command_beside_a_submitter() {
    let outcomes = ["a illegal", "b recovered a's command"];
    run("amdvi_illegal_command_beside_a_submitter", &outcomes, |t| {
        let (world, b, _) = amd_setup_with(0, 0, true);
        let bad = AmdCommand([0xf << 60, 0]);
        let expected = vec![
            bad,
            completion(&world, 1),
            devtab(2),
            completion(&world, 2),
            completion(&world, 3),
        ];
        let plan = AmdPlan {
            head: 0,
            expected,
            bulk: None,
            illegal: Some(0),
        };
        let t = t.clone();
        race(world, b, plan, "commands", move |w, b| {
            let window = w.window();
            let pages = &*w.pages;
            let mut kind_of = |pa: PhysAddr| {
                (w.regs.event.load(Ordering::Relaxed) == pa.get())
                    .then_some(AmdCommandErrorKind::IllegalCommand)
            };
            let illegal = AmdError::CommandError {
                kind: AmdCommandErrorKind::IllegalCommand,
                head: 0,
                opcode: 0xf,
            };
            b.submit(&window, pages, [bad], &mut kind_of)
                .expect("A's command, in an empty buffer");
            b.set_budget(2);
            match b.wait(&window, pages, &mut kind_of) {
                Ok(()) => panic!("A's wait returned Ok: its command never ran"),
                Err(e) if e == illegal => t.note("a illegal"),
                Err(AmdError::Timeout {
                    what: AmdWait::CompletionWait { sequence: 1 },
                    ..
                }) => t.note("a timeout"),
                Err(e) => panic!("A's wait (its command illegal): {e}"),
            }
            b.set_budget(PATIENT);
            b.submit(&window, pages, [devtab(2)], &mut kind_of)
                .expect("B's command, with room");
            let mut queued = 4;
            match b.wait(&window, pages, &mut kind_of) {
                Ok(()) => {}
                Err(e) if e == illegal => {
                    t.note("b recovered a's command");
                    b.wait(&window, pages, &mut kind_of)
                        .expect("B's second wait, the buffer recovered");
                    queued = 5;
                }
                Err(e) => panic!("B's wait: {e}"),
            }
            assert_ne!(
                w.ran() & 1 << 2,
                0,
                "B's wait returned before its command ran"
            );
            assert_eq!(b.recoveries, 1, "recoveries of the buffer");
            assert_eq!(w.executed(), 2, "the replacement and B's command ran");
            queued
        });
    });
}
