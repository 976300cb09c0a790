//! The unit against the behavioural model (`sim::amdvi`): enable and takeover, command
//! execution and recovery, the event log and its overflow, live device table entries.

use std::vec::Vec;

use super::cmd::Command;
use super::dte::DeviceTableEntry;
use super::event::{EventCode, FaultFlags};
use super::{AmdViConfig, AmdViUnit, CommandErrorKind, Error, Wait};
use crate::mem::{PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::sim::amdvi::{AmdViModel, AmdViModelConfig, Injection};
use crate::sim::arena::PhysMem;
use crate::sim::Arena;

const EDU: u32 = 0x20;
const PR: u64 = 1;
const IR: u64 = 1 << 61;
const IW: u64 = 1 << 62;

type Unit<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 8>;

fn unit<'a>(model: &'a AmdViModel<'a>, mem: &'a Arena, config: AmdViConfig) -> Unit<'a> {
    AmdViUnit::new(model, mem, config).expect("unit")
}

fn small() -> AmdViConfig {
    AmdViConfig {
        poll_budget: 1000,
        command_len_log2: 8,
        event_len_log2: 8,
        ..AmdViConfig::new()
    }
}

/// A 4-level v1 table mapping `iova` to `pa` (4 KiB) with `prot` bits on the leaf; returns the
/// root and every page.
fn hand_table(mem: &Arena, iova: u64, pa: u64, leaf_bits: u64) -> (PhysAddr, Vec<PhysAddr>) {
    let pages: Vec<PhysAddr> = (0..4).map(|_| mem.alloc(12).expect("page").pa).collect();
    for level in (2..=4u32).rev() {
        let table = pages[(4 - level) as usize].get();
        let child = pages[(5 - level) as usize].get();
        let index = (iova >> (12 + 9 * (level - 1))) & 0x1FF;
        assert!(mem.write_u64(
            table + index * 8,
            child | u64::from(level - 1) << 9 | PR | IR | IW
        ));
    }
    let index = (iova >> 12) & 0x1FF;
    assert!(mem.write_u64(pages[3].get() + index * 8, pa | leaf_bits | PR));
    (pages[0], pages)
}

fn free_pages(mem: &Arena, pages: &[PhysAddr]) {
    for &pa in pages {
        let va = mem.phys_to_virt(pa).expect("live");
        // SAFETY: allocated above with size 12; the unit no longer reaches it (the tests call
        // this after the entry pointing at it was replaced and invalidated).
        unsafe { mem.free(crate::mem::Page { pa, va }, 12) };
    }
}

#[test]
fn enable_invalidates_every_entry_and_domain_id_without_ia() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(
        &mem,
        AmdViModelConfig::qemu_default().without_invalidate_all(),
    );
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    assert!(u.is_enabled());
    let s = model.stats();
    assert_eq!(s.invalidate_devtab, 256);
    assert_eq!(s.invalidate_interrupt_table, 256);
    assert_eq!(
        s.invalidate_pages_all,
        8 + 64,
        "one per domain ID of the unit: its domain slots' and its GCR3 tables'"
    );
    assert_eq!(s.invalidate_all, 0);
    // One wait behind the entries' invalidations, one behind the IDs' (was one for both: an
    // ID could be refilled through an entry still cached, see `After`).
    assert_eq!(s.completion_waits, 2);
    assert_eq!(s.illegal_commands, 0);
    // More commands than the 256-entry buffer holds went through: the head wrapped.
    assert_eq!(u.command_stats().commands, 256 * 2 + 1 + 8 + 64 + 1);
}

#[test]
fn enable_with_ia_issues_one_invalidate_all() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let s = model.stats();
    assert_eq!((s.invalidate_all, s.invalidate_devtab), (1, 0));
    assert_eq!(s.completion_waits, 1);
}

#[test]
fn untouched_devices_are_blocked_and_their_faults_decoded() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    assert!(
        model.dma(EDU as u16, 0x1000, true).is_ok(),
        "off: untranslated"
    );
    u.enable().unwrap();
    assert!(model.dma(EDU as u16, 0x1000, true).is_err());
    let mut seen = Vec::new();
    let sum = u.drain_events(|e| seen.push(e)).unwrap();
    assert_eq!((sum.events, sum.overflow), (1, false));
    assert_eq!(seen[0].code, EventCode::IoPageFault);
    assert_eq!(seen[0].device_id, EDU as u16);
    assert_eq!(seen[0].address, 0x1000);
    assert!(seen[0].is_write());
    assert!(seen[0].flags.contains(FaultFlags::PE));
    assert_eq!(u.drain_events(|_| {}).unwrap().events, 0);
}

#[test]
fn takeover_stops_the_firmware_state_and_replaces_it() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    // Firmware's tables: a device table letting everything through (V clear), elsewhere.
    let fw = mem.alloc(12).unwrap();
    model.firmware_state(fw.pa.get(), fw.pa.get() | 8 << 56, fw.pa.get() | 8 << 56);
    assert!(
        model.dma(EDU as u16, 0x1000, false).is_ok(),
        "firmware passes DMA"
    );
    // The previous owner's PPR log and guest APIC log (bits 13-15, 28-29) would keep writing
    // memory that is not ours.
    let logs = 0b111 << 13 | 0b11 << 28;
    model.write64(0x18, model.read64(0x18) | logs);
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    assert_eq!(model.read64(0x18) & logs, 0, "PPR and GA logs off");
    assert_eq!(
        model.stats().ignored_writes,
        0,
        "bases written with the unit off"
    );
    assert!(
        !model.exclusion_enabled(),
        "the exclusion range would bypass translation"
    );
    assert!(
        model.dma(EDU as u16, 0x1000, false).is_err(),
        "our blocking DTE"
    );
}

/// A takeover starts Control from a known value: a previous owner's bits this driver does not
/// set stay off. `DevTblSegEn` (bits 36:34) above all: with it set the unit would take device
/// IDs outside segment 0 from the previous owner's segment tables (Device Table Base
/// registers 0x100-0x130), which `enable` never programs.
#[test]
fn takeover_clears_the_previous_owners_control_bits() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let fw = mem.alloc(12).unwrap();
    model.firmware_state(fw.pa.get(), fw.pa.get() | 8 << 56, fw.pa.get() | 8 << 56);
    // DevTblSegEn = 1 (two segments), XTEn, HADUpdate, GCR3TRPMode.
    let foreign = 1 << 34 | 1 << 50 | 0b11 << 46 | 1 << 58;
    model.write64(0x18, model.read64(0x18) | foreign);
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let ctrl = model.read64(0x18);
    assert_eq!((ctrl >> 34) & 7, 0, "DevTblSegEn: {ctrl:#x}");
    assert_eq!(ctrl & foreign, 0, "{ctrl:#x}");
    assert_eq!(ctrl, OWN_CONTROL, "{ctrl:#x}");
}

/// What `enable` sets in Control on the QEMU model: `IommuEn`, `EventLogEn`, `CmdBufEn`,
/// `Coherent`, `GTEn` (QEMU's EFR has `GTSup`), `InvTimeout` 1 s.
const OWN_CONTROL: u64 = 1 | 1 << 2 | 1 << 12 | 1 << 10 | 1 << 16 | 4 << 5;

/// The SMI filter (`SmiFEn`, `SmiFLogEn`) is the platform's: firmware sets it and its filter
/// registers up as a control on which devices may raise SMIs, which this driver does not
/// program. A takeover keeps it as found.
#[test]
fn takeover_keeps_the_firmware_s_smi_filter() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let fw = mem.alloc(12).unwrap();
    model.firmware_state(fw.pa.get(), fw.pa.get() | 8 << 56, fw.pa.get() | 8 << 56);
    let smi_filter = 1 << 22 | 1 << 24;
    model.write64(0x18, model.read64(0x18) | smi_filter);
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let ctrl = model.read64(0x18);
    assert_eq!(ctrl, OWN_CONTROL | smi_filter, "{ctrl:#x}");
}

/// A takeover of a unit whose previous owner left `Status.EventLogInt` set: QEMU's
/// `amd-iommu` ignores an Event Log Base Address write while that bit is set (the model's
/// `event_base_kept_while_event_int`), so `enable` must clear Status (write 1 to clear)
/// before it programs any base register. Else the unit keeps the previous owner's log and
/// writes our events into memory that is not ours, and our drain sees none of them.
#[test]
fn takeover_clears_status_before_the_event_log_base() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(
        &mem,
        AmdViModelConfig::qemu_default().with_event_base_kept_while_event_int(),
    );
    let fw = mem.alloc(12).unwrap();
    let fw_log = mem.alloc(12).unwrap();
    model.firmware_state(
        fw.pa.get(),
        fw.pa.get() | 8 << 56,
        fw_log.pa.get() | 8 << 56,
    );
    // The previous owner's last event, not acknowledged: EventLogInt set.
    model.raise_event([0x2 << 60 | 0x10, 0x1000]);
    assert_ne!(model.read64(0x2020) & 2, 0);
    let before = [
        mem.read_u64(fw_log.pa.get()),
        mem.read_u64(fw_log.pa.get() + 8),
    ];
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    assert_eq!(model.stats().ignored_writes, 0, "every base write taken");
    // A fault after the takeover lands in our log, not in the previous owner's.
    assert!(model.dma(EDU as u16, 0x1000, false).is_err());
    assert_eq!(
        [
            mem.read_u64(fw_log.pa.get()),
            mem.read_u64(fw_log.pa.get() + 8)
        ],
        before,
        "the previous owner's log was written"
    );
    let mut events = Vec::new();
    u.drain_events(|e| events.push(e)).unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].code, EventCode::IoPageFault);
}

#[test]
fn live_entry_translates_then_blocks_after_invalidation() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let (root, pages) = hand_table(&mem, 0x40_0000, 0x8765_4000, IR);
    let dte = DeviceTableEntry::translated(3, root, 4, false).unwrap();
    u.set_device_entry(EDU, &dte, &[]).unwrap();
    let ok = model.dma(EDU as u16, 0x40_0123, false).unwrap();
    assert_eq!((ok.pa, ok.domain), (0x8765_4123, 3));
    let err = model.dma(EDU as u16, 0x40_0123, true).unwrap_err();
    assert_eq!(err.event_code, 2, "read-only leaf: IO_PAGE_FAULT");
    assert_eq!(
        model.stats().invalidate_devtab,
        1,
        "enable used INVALIDATE_IOMMU_ALL"
    );
    let inv = Command::invalidate_iommu_pages(3, None, super::cmd::InvalidationRange::All, true);
    u.set_device_entry(EDU, &DeviceTableEntry::BLOCKED, &[inv])
        .unwrap();
    // The DTE cache and the IOTLB were invalidated: the device is blocked at once.
    assert!(model.dma(EDU as u16, 0x40_0123, false).is_err());
    assert_eq!(u.device_entry(EDU), Some(DeviceTableEntry::BLOCKED));
    free_pages(&mem, &pages);
    assert!(matches!(
        u.set_device_entry(256, &DeviceTableEntry::BLOCKED, &[]),
        Err(Error::InvalidArgument { value: 256, .. })
    ));
}

#[test]
fn illegal_command_is_replaced_and_the_buffer_runs_on() {
    for (inj, kind) in [
        (
            Injection::IllegalCommandAt(1),
            CommandErrorKind::IllegalCommand,
        ),
        (
            Injection::CommandHardwareErrorAt(1),
            CommandErrorKind::CommandHardware,
        ),
    ] {
        let mem = Arena::with_defaults().unwrap();
        let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
        let u = unit(&model, &mem, small());
        u.enable().unwrap();
        let before = model.stats();
        model.inject(inj);
        let r = u.run(&[&[Command::invalidate_devtab_entry(5)]]);
        let Err(Error::CommandError {
            kind: k, opcode, ..
        }) = r
        else {
            panic!("{r:?}");
        };
        assert_eq!((k, opcode), (kind, 2));
        assert_eq!(u.command_stats().recoveries, 1);
        // The replacement and the wait behind it ran; the next call goes through.
        let after = model.stats();
        assert_eq!(after.invalidate_devtab, before.invalidate_devtab + 1);
        assert_eq!(after.completion_waits, before.completion_waits + 1);
        u.run(&[&[Command::invalidate_devtab_entry(5)]]).unwrap();
        assert_eq!(
            model.stats().invalidate_devtab,
            before.invalidate_devtab + 2
        );
        // The error is in the event log for the embedder too.
        let mut codes = Vec::new();
        u.drain_events(|e| codes.push(e.code)).unwrap();
        assert_eq!(codes.len(), 1);
    }
}

/// A unit may show `CmdBufRun` some time after `CmdBufEn` was set (in `enable`, and after a
/// recovery): "not running" then is a buffer not started yet, not one stopped on a command.
/// Before, `enable` failed with `CommandError { Stopped }` (its INVALIDATE_IOMMU_ALL replaced),
/// and the call after a recovery failed the same way.
#[test]
fn a_buffer_slow_to_start_is_not_stopped() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    model.inject(Injection::SlowCmdBufRun(6));
    u.enable().unwrap();
    assert_eq!(u.command_stats().recoveries, 0);
    assert_eq!(model.stats().invalidate_all, 1, "not replaced");
    // A real stop is still found, and the call after its recovery goes through.
    model.inject(Injection::IllegalCommandAt(1));
    let r = u.run(&[&[Command::invalidate_devtab_entry(5)]]);
    assert!(
        matches!(
            r,
            Err(Error::CommandError {
                kind: CommandErrorKind::IllegalCommand,
                ..
            })
        ),
        "{r:?}"
    );
    let before = model.stats();
    u.run(&[&[Command::invalidate_devtab_entry(5)]]).unwrap();
    assert_eq!(u.command_stats().recoveries, 1);
    // The recovery's INVALIDATE_DEVTAB_ENTRY(0), run once the buffer started, and ours.
    assert_eq!(
        model.stats().invalidate_devtab,
        before.invalidate_devtab + 2
    );
}

/// After a recovery the ILLEGAL_COMMAND event naming the replaced command stays in the log
/// (read, not consumed), and the head still names that slot: a unit slow to start again must
/// not be taken for one stopped at once on it. Before, with `SlowCmdBufRun(20)` the call after
/// the recovery failed with `CommandError { IllegalCommand }` (a second recovery), and so did
/// every call until the events were drained.
#[test]
fn a_buffer_slow_to_start_after_a_recovery_is_not_stopped_by_the_old_event() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    model.inject(Injection::SlowCmdBufRun(20));
    u.enable().unwrap();
    model.inject(Injection::IllegalCommandAt(1));
    let r = u.run(&[&[Command::invalidate_devtab_entry(5)]]);
    assert!(
        matches!(
            r,
            Err(Error::CommandError {
                kind: CommandErrorKind::IllegalCommand,
                ..
            })
        ),
        "{r:?}"
    );
    let before = model.stats();
    for _ in 0..3 {
        u.run(&[&[Command::invalidate_devtab_entry(5)]]).unwrap();
    }
    assert_eq!(u.command_stats().recoveries, 1);
    // The recovery's INVALIDATE_DEVTAB_ENTRY(0) and our three.
    assert_eq!(
        model.stats().invalidate_devtab,
        before.invalidate_devtab + 4
    );
    // A real stop after the recovery is still found, and recovered once.
    model.inject(Injection::IllegalCommandAt(1));
    let r = u.run(&[&[Command::invalidate_devtab_entry(6)]]);
    assert!(
        matches!(
            r,
            Err(Error::CommandError {
                kind: CommandErrorKind::IllegalCommand,
                ..
            })
        ),
        "{r:?}"
    );
    assert_eq!(u.command_stats().recoveries, 2);
    u.run(&[&[Command::invalidate_devtab_entry(6)]]).unwrap();
    assert_eq!(u.command_stats().recoveries, 2);
}

/// The unit logs a command error against the command's address, and the next lap of the
/// buffer reuses that slot. A stop recovered stays logged until a drain (read, not consumed),
/// so it must not answer for a later stop at the same slot: only events logged since
/// `CmdBufEn` was last set are asked. Before, the log was read from its head: a
/// COMMAND_HARDWARE_ERROR a lap after an ILLEGAL_COMMAND_ERROR at the same slot came back as
/// `IllegalCommand`.
#[test]
fn a_stop_a_lap_later_is_not_answered_by_the_old_event_of_its_slot() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let tail = || model.read64(0x2008);
    let slot = tail();
    model.inject(Injection::IllegalCommandAt(1));
    let r = u.run(&[&[Command::invalidate_devtab_entry(1)]]);
    assert!(
        matches!(
            r,
            Err(Error::CommandError {
                kind: CommandErrorKind::IllegalCommand,
                ..
            })
        ),
        "{r:?}"
    );
    // A lap of the buffer (256 entries, two per call), the event still logged.
    for _ in 0..200 {
        u.run(&[&[Command::invalidate_devtab_entry(2)]]).unwrap();
        if tail() == slot {
            break;
        }
    }
    assert_eq!(tail(), slot);
    model.inject(Injection::CommandHardwareErrorAt(1));
    let r = u.run(&[&[Command::invalidate_devtab_entry(3)]]);
    assert!(
        matches!(
            r,
            Err(Error::CommandError {
                kind: CommandErrorKind::CommandHardware,
                head,
                ..
            }) if u64::from(head) == slot
        ),
        "the second stop at slot {slot:#x}: {r:?}"
    );
    assert_eq!(u.command_stats().recoveries, 2);
    u.run(&[&[Command::invalidate_devtab_entry(4)]]).unwrap();
    // Both events are still there for the embedder.
    let mut codes = Vec::new();
    u.drain_events(|e| codes.push(e.code)).unwrap();
    assert_eq!(
        codes,
        [
            EventCode::IllegalCommandError,
            EventCode::CommandHardwareError
        ]
    );
}

#[test]
fn stalled_completion_wait_times_out_and_the_retry_completes() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    model.inject(Injection::StallWaits);
    let r = u.run(&[&[Command::invalidate_devtab_entry(1)]]);
    assert!(matches!(
        r,
        Err(Error::Timeout {
            what: Wait::CompletionWait { .. },
            polls: 1000
        })
    ));
    model.clear_injections();
    u.run(&[]).unwrap();
}

/// An entry the tail passed that the unit never writes: a drain waits for it (bounded), then
/// skips it and says so (`DrainSummary::unwritten`), so later events are still reported and
/// the log does not fill behind it. Before, every drain stopped at it and returned `Ok` with
/// 0 events (the log filled and overflowed, failing every ATS flush after).
/// An IO_PAGE_FAULT of device 0x99 at page `i`, as the unit logs it.
fn page_fault(i: u64) -> [u64; 2] {
    super::event::Event::encode(EventCode::IoPageFault, 0x99, 1, 0, i << 12)
}

/// Register reads enough for a [`Injection::DelayedEventWrite`] due 10 reads after a drain's
/// polls gave up to land.
fn let_delayed_write_land(model: &AmdViModel<'_>) {
    for _ in 0..20 {
        model.read64(0x2020);
    }
}

#[test]
fn an_entry_never_written_is_skipped_and_reported_by_the_drain() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    model.inject(Injection::LostEventWrite);
    model.raise_event(page_fault(1));
    model.raise_event(page_fault(2));
    let mut seen = Vec::new();
    let sum = u.drain_events(|e| seen.push(e.address)).unwrap();
    assert_eq!((sum.events, sum.unwritten, sum.overflow), (1, 1, false));
    assert_eq!(seen, [2 << 12]);
    // Later drains make progress and do not wait at the skipped slot again.
    for round in 0..3u64 {
        seen.clear();
        for i in 0..100 {
            model.raise_event(page_fault(10 + round * 100 + i));
        }
        let sum = u.drain_events(|e| seen.push(e.address)).unwrap();
        assert_eq!((sum.events, sum.unwritten, sum.overflow), (100, 0, false));
    }
    assert_eq!(model.stats().events_dropped, 0);
}

/// A drain of at most `max` events reports at most `max`, late ones included: an entry
/// skipped earlier and written since is reported first and counts against `max` (the C ABI
/// fills a buffer of `max` records and says how many it wrote). Before, the late entry and
/// the next written one were both reported to a drain of at most 1.
#[test]
fn a_drain_of_at_most_max_reports_at_most_max_late_ones_included() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    // Written 10 register reads after the drain's 1,000 polls gave up.
    model.inject(Injection::DelayedEventWrite(1_010));
    model.raise_event(page_fault(1));
    let sum = u.drain_events(|_| {}).unwrap();
    assert_eq!((sum.events, sum.unwritten), (0, 1));
    let_delayed_write_land(&model);
    model.raise_event(page_fault(2));
    model.raise_event(page_fault(3));
    let mut seen = Vec::new();
    for _ in 0..3 {
        let sum = u.drain_events_at_most(1, |e| seen.push(e.address)).unwrap();
        assert!(sum.events <= 1, "a drain of at most 1 reported {seen:x?}");
    }
    assert_eq!(seen, [1 << 12, 2 << 12, 3 << 12]);
    let sum = u.drain_events(|_| {}).unwrap();
    assert_eq!((sum.events, sum.unwritten), (0, 0));
}

/// Entries are written in order: a skipped entry whose write came settles every skipped one
/// before it, on an idle log too. Before, a drain settled skipped entries only up to the first
/// still unwritten, so one written after a lost one stayed unreported until a new event came.
#[test]
fn a_late_entry_behind_a_lost_one_is_reported_on_an_idle_log() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    model.inject(Injection::LostEventWrite);
    model.raise_event(page_fault(1));
    // Written 10 register reads after the drain's 1,000 polls of each entry gave up.
    model.inject(Injection::DelayedEventWrite(2_010));
    model.raise_event(page_fault(2));
    let sum = u.drain_events(|_| {}).unwrap();
    assert_eq!((sum.events, sum.unwritten), (0, 2));
    let_delayed_write_land(&model);
    let mut seen = Vec::new();
    let sum = u.drain_events(|e| seen.push(e.address)).unwrap();
    assert_eq!(seen, [2 << 12], "the late entry behind the lost one");
    assert_eq!((sum.events, sum.late), (1, 1));
}

/// A drain's `max` bounds the events it reports, not the slots it looks at: entries skipped
/// (never written) do not use it up. A caller that drains until a drain reports fewer than
/// `max` (the C ABI's `ie_unit_read_faults` loop) must have seen every written event by then,
/// on an idle log too. Before, a drain of at most 2 that met two unwritten entries stopped
/// there and reported 0, leaving the written entry behind them until the next event.
#[test]
fn skipped_entries_do_not_use_up_a_drains_max() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    for i in 1..=2 {
        model.inject(Injection::LostEventWrite);
        model.raise_event(page_fault(i));
    }
    model.raise_event(page_fault(3));
    let mut seen = Vec::new();
    let sum = u.drain_events_at_most(2, |e| seen.push(e.address)).unwrap();
    assert_eq!(
        seen,
        [3 << 12],
        "the written entry behind two unwritten ones ({sum:?})"
    );
    assert_eq!((sum.events, sum.unwritten, sum.late), (1, 2, 0));
    // Reports stay within `max`: behind two more unwritten entries, three written ones come
    // out two, then one.
    for i in 4..=5 {
        model.inject(Injection::LostEventWrite);
        model.raise_event(page_fault(i));
    }
    for i in 6..=8 {
        model.raise_event(page_fault(i));
    }
    seen.clear();
    let sum = u.drain_events_at_most(2, |e| seen.push(e.address)).unwrap();
    assert_eq!((sum.events, sum.unwritten), (2, 2));
    let sum = u.drain_events_at_most(2, |e| seen.push(e.address)).unwrap();
    assert_eq!((sum.events, sum.unwritten), (1, 0));
    assert_eq!(seen, [6 << 12, 7 << 12, 8 << 12]);
    let sum = u.drain_events(|_| {}).unwrap();
    assert_eq!((sum.events, sum.unwritten), (0, 0));
}

/// The model's registers, with one event logged just before the first write of Status that
/// clears `EventLogInt` (W1C): an event the unit logs between a drain's reads and its
/// acknowledgement.
struct EventBeforeIntClear<'a> {
    model: &'a AmdViModel<'a>,
    armed: std::sync::atomic::AtomicBool,
}

impl RegisterWindow for EventBeforeIntClear<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.model.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.model.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.model.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        use std::sync::atomic::Ordering;
        if offset == 0x2020 && value & 2 != 0 && self.armed.swap(false, Ordering::Relaxed) {
            self.model.raise_event(page_fault(9));
        }
        self.model.write64(offset, value)
    }
}

/// A drain acknowledges `EventLogInt` before it reads the log: an event logged after the
/// acknowledgement sets it again (with `EventIntEn`, a new interrupt), one logged before is
/// read. Before, the drain wrote the W1C after reading the log, so an event logged between
/// its last read and that write stayed in the log with the bit clear: no interrupt would come
/// for it on an idle log (a lost wake-up).
#[test]
fn an_event_logged_during_a_drain_is_drained_or_keeps_event_log_int() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let regs = EventBeforeIntClear {
        model: &model,
        armed: std::sync::atomic::AtomicBool::new(false),
    };
    let u: AmdViUnit<&EventBeforeIntClear<'_>, &Arena, 8> =
        AmdViUnit::new(&regs, &mem, small()).expect("unit");
    u.enable().unwrap();
    model.raise_event(page_fault(1));
    regs.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut seen = Vec::new();
    u.drain_events(|e| seen.push(e.address)).unwrap();
    assert!(
        !regs.armed.load(std::sync::atomic::Ordering::Relaxed),
        "the drain acknowledged EventLogInt"
    );
    let pending = model.read64(0x2010) != model.read64(0x2018);
    let int = model.read64(0x2020) & 2 != 0;
    assert!(
        !pending || int,
        "an event left in the log with EventLogInt clear (reported {seen:x?})"
    );
    if !pending {
        assert_eq!(seen, [1 << 12, 9 << 12]);
    }
    // Nothing is lost: the next drain reports what the first left.
    u.drain_events(|e| seen.push(e.address)).unwrap();
    assert_eq!(seen, [1 << 12, 9 << 12]);
}

#[test]
fn event_log_overflow_is_reported_and_logging_restarts() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    for i in 0..300u64 {
        model.raise_event([2 << 60 | 0x20, i << 12]);
    }
    let mut n = 0;
    let sum = u.drain_events(|_| n += 1).unwrap();
    assert_eq!(
        (sum.events, sum.overflow),
        (255, true),
        "one slot stays empty"
    );
    assert_eq!(model.stats().events_dropped, 300 - 255);
    model.raise_event([2 << 60 | 0x21, 0x5000]);
    let mut last = None;
    let sum = u.drain_events(|e| last = Some(e)).unwrap();
    assert_eq!((sum.events, sum.overflow), (1, false));
    assert_eq!(last.map(|e| e.device_id), Some(0x21));
}

/// Every event type of the spec's §2.5 the unit can log, written into the log as the spec lays
/// it out (raw entries built here by hand, not by `Event::encode`), comes out of a drain
/// decoded: its code (63:60), DeviceID (15:0), flags (59:48), domain ID or PASID (47:32 with
/// 19:16) and address (the second quadword; the command's address for the command errors and
/// IOTLB_INV_TIMEOUT), in the order logged.
#[test]
fn every_event_type_is_decoded_from_the_log() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    // (code, DeviceID, flags, DomainID or PASID[15:0], PASID[19:16], address, expected)
    let cases: [(u64, u16, u64, u64, u64, u64, EventCode); 9] = [
        (
            0x1,
            0x0010,
            0x080,
            0,
            0,
            0x1000,
            EventCode::IllegalDevTableEntry,
        ),
        (
            0x2,
            0x0020,
            0x031,
            0x0005,
            0x3,
            0xdead_b000,
            EventCode::IoPageFault,
        ),
        (
            0x3,
            0x0021,
            0x020,
            0,
            0,
            0x4_2000,
            EventCode::DevTabHardwareError,
        ),
        (
            0x4,
            0x0022,
            0x000,
            0x0007,
            0,
            0x7_3000,
            EventCode::PageTabHardwareError,
        ),
        (
            0x5,
            0x0000,
            0x000,
            0,
            0,
            0x10_0040,
            EventCode::IllegalCommandError,
        ),
        (
            0x6,
            0x0000,
            0x000,
            0,
            0,
            0x10_0050,
            EventCode::CommandHardwareError,
        ),
        (
            0x7,
            0x0023,
            0x000,
            0,
            0,
            0x10_0060,
            EventCode::IotlbInvTimeout,
        ),
        (
            0x8,
            0x0024,
            0x100,
            0x0009,
            0x1,
            0x8000,
            EventCode::InvalidDeviceRequest,
        ),
        (
            0x9,
            0x0025,
            0x000,
            0x000A,
            0,
            0x9000,
            EventCode::InvalidPprRequest,
        ),
    ];
    for &(code, dev, flags, low, high, address, _) in &cases {
        model.raise_event([
            code << 60 | flags << 48 | low << 32 | high << 16 | u64::from(dev),
            address,
        ]);
    }
    let mut seen = Vec::new();
    let sum = u.drain_events(|e| seen.push(e)).unwrap();
    assert_eq!((sum.events, sum.overflow), (9, false));
    for (e, &(_, dev, flags, low, high, address, want)) in seen.iter().zip(&cases) {
        assert_eq!(e.code, want);
        assert_eq!(e.device_id, dev, "{want:?}");
        assert_eq!(u64::from(e.flags.bits()), flags, "{want:?}");
        assert_eq!(u64::from(e.domain_or_pasid), high << 16 | low, "{want:?}");
        assert_eq!(e.address, address, "{want:?}");
    }
    assert!(seen[1].is_write() && seen[1].flags.contains(FaultFlags::PR | FaultFlags::GN));
    assert!(seen[0].flags.contains(FaultFlags::RZ));
    assert!(seen[7].flags.contains(FaultFlags::TR));
    assert_eq!(u.drain_events(|_| {}).unwrap().events, 0);
}

#[test]
fn disable_and_release_return_every_page() {
    let mem = Arena::with_defaults().unwrap();
    let base = mem.live_pages().len();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let Err((u, e)) = u.release() else {
        panic!("released while enabled");
    };
    assert!(matches!(e, Error::UnexpectedState { .. }));
    u.disable().unwrap();
    assert!(!u.is_enabled());
    assert!(
        model.dma(EDU as u16, 0x1000, false).is_ok(),
        "off: untranslated"
    );
    assert_eq!(u.release().map_err(|(_, e)| e).unwrap(), None);
    assert_eq!(mem.live_pages().len(), base);
    assert!(mem.bad_frees().is_empty());
}

#[test]
fn run_bits_that_never_clear_time_out() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    model.inject(Injection::StuckRun);
    assert!(matches!(
        u.disable(),
        Err(Error::Timeout {
            what: Wait::Run { set: false, .. },
            ..
        })
    ));
}

/// A flush does no work proportional to the unit's attachment slots (issue 18, goal 4): with
/// one device attached or with 200 more (on another domain and on the same one, none with
/// ATS), a one-page unmap's flush issues the same commands and looks at no attachment slot.
/// With an ATS device attached it looks only at the recorded part of the table, and still
/// invalidates exactly that device's IOTLB.
#[test]
fn flushes_look_at_no_attachment_slot_without_ats() {
    use crate::iommu::{DeviceHints, DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::{Gather, Prot};
    use core::sync::atomic::Ordering::Relaxed;

    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let e = u.domain_alloc(&DomainConfig::default()).unwrap();
    // (page invalidations, IOTLB invalidations, waits, slots looked at) of one flush.
    let flush = || {
        let rw = Prot::READ | Prot::WRITE;
        u.map(d, Iova::new(0x1000), PhysAddr::new(0xA000_0000), 0x1000, rw)
            .unwrap();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0x1000), 0x1000, &mut g).unwrap();
        u.config.lock().flush_slot_reads.store(0, Relaxed);
        let before = model.stats();
        u.flush(d, &mut g).unwrap();
        let after = model.stats();
        (
            after.invalidate_pages_page - before.invalidate_pages_page
                + after.invalidate_pages_range
                - before.invalidate_pages_range,
            after.invalidate_iotlb - before.invalidate_iotlb,
            after.completion_waits - before.completion_waits,
            u.config.lock().flush_slot_reads.load(Relaxed),
        )
    };
    u.attach(DeviceId(EDU), None, d).unwrap();
    let one = flush();
    assert_eq!(one, (1, 0, 1, 0), "one device");
    for dev in 0x21..0x21 + 200 {
        let to = if dev % 8 == 0 { d } else { e };
        u.attach(DeviceId(dev), None, to).unwrap();
    }
    assert_eq!(flush(), one, "201 devices, none with ATS");
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(0xF0), None, d, &ats).unwrap();
    let (pages, iotlb, waits, reads) = flush();
    assert_eq!((pages, iotlb, waits), (1, 1, 1), "the ATS device's IOTLB");
    assert_eq!(reads, 202, "only the recorded part: 202 attachments");
    // The books follow detaches from the end, past the holes, and back to nothing.
    let books = || {
        let cfg = u.config.lock();
        let last = cfg.attachments.iter().rposition(Option::is_some);
        let ats = cfg.attachments.iter().flatten().filter(|a| a.ats).count();
        assert_eq!((cfg.used, cfg.ats), (last.map_or(0, |i| i + 1), ats));
        (cfg.used, cfg.ats)
    };
    assert_eq!(books(), (202, 1));
    u.detach(DeviceId(0xF0), None).unwrap();
    assert_eq!(books(), (201, 0));
    assert_eq!(flush(), one, "ATS device gone");
    for dev in (0x21..0x21 + 200).rev().step_by(3) {
        u.detach(DeviceId(dev), None).unwrap();
        books();
    }
    for dev in (0x21..0x21 + 200).chain([EDU]) {
        let _ = u.detach(DeviceId(dev), None);
    }
    assert_eq!(books(), (0, 0));
}

/// `AmdViConfig::input_bits` (ACPI `IVinfo.VAsize`) bounds every domain's width below what
/// `EFR.HATS` walks: the capabilities say it, a wider domain is refused naming both widths, and
/// a default domain takes the levels that cover it (3 for 39 bits: the DTE's `Mode`).
#[test]
fn input_bits_bound_every_domain() {
    use crate::iommu::{DeviceId, DomainConfig, Error as IommuError, Iommu, Missing};
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let wide = unit(&model, &mem, small());
    let hats = wide.capabilities().ias;
    assert!(hats > 39, "the model walks {hats} bits");
    let u = unit(
        &model,
        &mem,
        AmdViConfig {
            input_bits: 39,
            ..small()
        },
    );
    assert_eq!(u.capabilities().ias, 39);
    let wider = DomainConfig {
        min_ias: 40,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&wider),
        Err(IommuError::Unsupported(Missing::AddressWidth {
            need: 40,
            have: 39
        }))
    );
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.enable().unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    let entry = u.config.lock().devtab.entry(EDU).unwrap().load();
    assert_eq!(entry.mode(), 3);
    // Below 32 or above 64 the configuration is refused.
    for bits in [31, 65] {
        let c = AmdViConfig {
            input_bits: bits,
            ..small()
        };
        assert!(matches!(
            AmdViUnit::<_, _, 8>::new(&model, &mem, c),
            Err(Error::InvalidArgument { value, .. }) if value == u64::from(bits)
        ));
    }
}

/// A flush issues the fewest INVALIDATE_IOMMU_PAGES whose blocks stay inside the union of
/// the gathered ranges' own covering blocks (`InvalidationRange::covering`): a block inside
/// another is dropped whatever their order, and two blocks that are the halves of one aligned
/// block become that block, again and again. Counted at the model: commands it executed.
#[test]
fn flush_issues_the_fewest_blocks_for_several_ranges() {
    use crate::iommu::{DeviceId, DomainConfig, Iommu};
    use crate::pgtable::Gather;

    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    // (page invalidations, block invalidations, everything, waits) of one flush of `ranges`.
    let flush = |ranges: &[(u64, u64)]| {
        let mut g = Gather::new();
        for &(start, end) in ranges {
            g.add_leaves(start, end - start, 12);
        }
        assert_eq!(g.ranges().len(), ranges.len(), "disjoint, not adjacent");
        let before = model.stats();
        u.flush(d, &mut g).unwrap();
        let after = model.stats();
        (
            after.invalidate_pages_page - before.invalidate_pages_page,
            after.invalidate_pages_range - before.invalidate_pages_range,
            after.invalidate_pages_all - before.invalidate_pages_all,
            after.completion_waits - before.completion_waits,
        )
    };
    // A page, then a range whose covering block (64 KiB at 0) holds that page.
    assert_eq!(flush(&[(0x5000, 0x6000), (0x7000, 0x1_0000)]), (0, 1, 0, 1));
    // The same, the other way round.
    assert_eq!(flush(&[(0x7000, 0x1_0000), (0x5000, 0x6000)]), (0, 1, 0, 1));
    // Four 16 KiB covering blocks that tile 64 KiB at 0: one block.
    let tiles = [
        (0x1000, 0x3000),
        (0x5000, 0x7000),
        (0x9000, 0xB000),
        (0xD000, 0xF000),
    ];
    assert_eq!(flush(&tiles), (0, 1, 0, 1));
    // A page inside another range's block (0x1_3000 in 8 KiB at 0x1_2000), and two pages
    // that are the halves of 8 KiB at 0x1_0000, which is the buddy of that block: 16 KiB.
    let nested = [
        (0x1_3C00, 0x1_3D00),
        (0x1_0000, 0x1_1000),
        (0x1_1800, 0x1_1900),
        (0x1_2800, 0x1_3800),
    ];
    assert_eq!(flush(&nested), (0, 1, 0, 1));
    // Two pages whose union is no aligned block: two commands (one block of both would
    // invalidate the pages between them, outside every range's covering block).
    assert_eq!(flush(&[(0x1000, 0x2000), (0x9000, 0xA000)]), (2, 0, 0, 1));
    // Two pages that are buddies: one 8 KiB block.
    assert_eq!(flush(&[(0x4000, 0x4800), (0x5400, 0x5800)]), (0, 1, 0, 1));
}

/// A drain of at most `max` events consumes only those it reports: the head moves past them
/// and no further, the rest come out of the next drain in order. After an overflow a partial
/// drain still acknowledges it and restarts logging: the unit logs into the entries freed.
#[test]
fn a_drain_of_at_most_max_events_consumes_only_those() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let fault = |i: u64| [2 << 60 | 0x20, i << 12];
    for i in 0..3 {
        model.raise_event(fault(i));
    }
    let mut seen = Vec::new();
    let sum = u.drain_events_at_most(1, |e| seen.push(e.address)).unwrap();
    assert_eq!((sum.events, sum.overflow), (1, false));
    let sum = u.drain_events_at_most(0, |e| seen.push(e.address)).unwrap();
    assert_eq!(sum.events, 0);
    let sum = u.drain_events_at_most(8, |e| seen.push(e.address)).unwrap();
    assert_eq!(sum.events, 2);
    assert_eq!(seen, [0, 0x1000, 0x2000]);
    // Overflow: 255 logged (one slot stays empty), 45 dropped.
    for i in 0..300 {
        model.raise_event(fault(i));
    }
    seen.clear();
    let sum = u
        .drain_events_at_most(10, |e| seen.push(e.address))
        .unwrap();
    assert_eq!((sum.events, sum.overflow), (10, true));
    assert_eq!(model.stats().events_dropped, 45);
    // Logging runs again, into the 10 entries freed: the 11th new event is dropped.
    for i in 1000..1011 {
        model.raise_event(fault(i));
    }
    assert_eq!(model.stats().events_dropped, 46);
    let sum = u.drain_events(|e| seen.push(e.address)).unwrap();
    assert_eq!(sum.events, 245 + 10);
    assert!(sum.overflow, "the 11th was lost");
    let expected: Vec<u64> = (0..255).chain(1000..1010).map(|i| i << 12).collect();
    assert_eq!(seen, expected);
}

/// Unmaps at and above 2^51 in a 6-level (63-bit) domain are invalidated as the unit reads
/// the command: INVALIDATE_IOMMU_PAGES carries address bits 51:12 and the unit takes bits
/// 63:52 as copies of bit 51 (48882 Table 14's encodings, Linux `build_inv_address`), so a
/// page or block named there would invalidate other addresses. The model reads it that way,
/// for INVALIDATE_IOTLB_PAGES too; each DMA below was cached in the IOTLB (and an ATS
/// device's translation in its ATC) before the unmap and must be gone after the flush.
#[test]
fn unmaps_above_2_51_are_invalidated_as_the_unit_reads_the_address() {
    use crate::iommu::{DeviceHints, DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::{Gather, Prot};

    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let wide = DomainConfig {
        min_ias: 63,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&wide).unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    const ATS_DEV: u16 = 0xF0;
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(ATS_DEV.into()), None, d, &ats)
        .unwrap();
    let rw = Prot::READ | Prot::WRITE;
    // (first IOVA, length): a page at 2^56; the page just below 2^52 (address bit 51 set);
    // two pages across 2^52; a 2 MiB page at 2^52.
    let cases = [
        (1u64 << 56, 0x1000u64),
        ((1 << 52) - 0x1000, 0x1000),
        ((1 << 52) - 0x1000, 0x2000),
        (1 << 52, 0x20_0000),
    ];
    let mut stale = Vec::new();
    for (iova, len) in cases {
        u.map(d, Iova::new(iova), PhysAddr::new(0xA000_0000), len, rw)
            .unwrap();
        let last = iova + len - 0x1000;
        for at in [iova, last] {
            assert!(model.dma(EDU as u16, at, false).is_ok(), "{at:#x} mapped");
            assert!(model.ats_translate(ATS_DEV, None, at, false).is_ok());
        }
        let mut g = Gather::new();
        u.unmap(d, Iova::new(iova), len, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        for at in [iova, last] {
            if model.dma(EDU as u16, at, false).is_ok() {
                stale.push(("IOTLB", iova, len, at));
            }
            if model.atc_translation(ATS_DEV, None, at).is_some() {
                stale.push(("ATC", iova, len, at));
            }
        }
    }
    assert_eq!(
        stale,
        [],
        "(cache, unmapped, length, still translated) after the flush"
    );
}

/// The slot of the 4 KiB v1 leaf that maps `iova` in `d` (4 levels: the default domain).
fn v1_leaf_slot<'a>(
    u: &Unit<'a>,
    mem: &'a Arena,
    d: crate::iommu::DomainHandle,
    iova: u64,
) -> &'a core::sync::atomic::AtomicU64 {
    let guard = u.domains[usize::from(d.0)].read();
    let super::domain::Table::V1(t) = &guard.as_ref().unwrap().table else {
        panic!("a v1 domain");
    };
    let mut table = t.root().get();
    for level in (1..=t.geometry().top_level()).rev() {
        let at = table + ((iova >> (12 + 9 * level)) & 0x1FF) * 8;
        let e = crate::sim::arena::PhysMem::read_u64(mem, at);
        let e = e.expect("table memory");
        let next = (e >> 9) & 7;
        assert!(e & PR != 0 && next != 0 && next != 7, "a table at {level}");
        table = e & 0x000F_FFFF_FFFF_F000;
    }
    let at = PhysAddr::new(table + ((iova >> 12) & 0x1FF) * 8);
    let va = mem.phys_to_virt(at).expect("a live leaf table");
    // SAFETY: an entry of a live leaf table of `mem`, which outlives the borrow; table memory
    // is 64-bit atomics.
    unsafe { va.cast::<core::sync::atomic::AtomicU64>().as_ref() }
}

/// A `set_dirty_tracking` whose table walk fails partway (`EntryUnstable`: hardware kept
/// rewriting the third leaf) has cleaned `D` of the first two leaves, which the IOTLB holds
/// dirty from the device's writes: the call invalidates them before returning (or the domain
/// owes it), else the next write through page 1 hits the cached dirty entry and sets no `D`
/// (the model's IOTLB: an entry cached dirty sets nothing again), lost to live migration.
#[test]
fn a_failed_tracking_switch_invalidates_the_leaves_it_cleaned() {
    use crate::iommu::{DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::testutil::{keep_rewriting, stop_rewriting};
    use crate::pgtable::Prot;
    use core::sync::atomic::Ordering::SeqCst;
    const D: u64 = 1 << 6;
    const A: u64 = 1 << 5;

    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default().with_dirty_tracking());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let tracked = DomainConfig {
        dirty_tracking: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&tracked).unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    for i in 1..4 {
        let (iova, pa) = (Iova::new(i << 12), PhysAddr::new(0xA000_0000 + (i << 12)));
        u.map(d, iova, pa, 0x1000, Prot::READ | Prot::WRITE)
            .unwrap();
    }
    u.set_dirty_tracking(d, true).unwrap();
    let dirty = |i: u64| v1_leaf_slot(&u, &mem, d, i << 12).load(SeqCst) & D != 0;
    // The device writes each page: D set, the IOTLB entries cached dirty.
    for i in 1..4 {
        assert!(model.dma(EDU as u16, i << 12, true).is_ok());
    }
    assert_eq!([dirty(1), dirty(2), dirty(3)], [true; 3]);
    let before = model.stats();
    keep_rewriting(v1_leaf_slot(&u, &mem, d, 3 << 12), A);
    let r = u.set_dirty_tracking(d, true);
    stop_rewriting();
    assert!(
        matches!(
            r,
            Err(crate::iommu::Error::PageTable(
                crate::pgtable::Error::EntryUnstable { .. }
            ))
        ),
        "{r:?}"
    );
    assert_eq!([dirty(1), dirty(2), dirty(3)], [false, false, true]);
    let after = model.stats();
    let invalidations =
        after.invalidate_pages_page + after.invalidate_pages_range + after.invalidate_pages_all
            - before.invalidate_pages_page
            - before.invalidate_pages_range
            - before.invalidate_pages_all;
    let dom = u.domains[usize::from(d.0)].read();
    let owed = !dom.as_ref().unwrap().owed.lock().is_empty();
    drop(dom);
    assert!(
        invalidations >= 1 && !owed,
        "the cleaned leaves not invalidated (or owed instead): {invalidations} commands"
    );
    assert!(model.dma(EDU as u16, 1 << 12, true).is_ok());
    assert!(
        dirty(1),
        "a write through page 1 after the failed switch went unrecorded"
    );
    u.set_dirty_tracking(d, true).unwrap();
    assert_eq!([dirty(1), dirty(2), dirty(3)], [false; 3]);
}

/// An ATS device attached to a domain while a flush of it runs, after the flush's commands
/// read the ATS devices attached and before the COMPLETION_WAIT behind its
/// INVALIDATE_IOMMU_PAGES: were the attach to land there, the device could fill its ATC from
/// the IOTLB entry of the page the flush then frees, with no INVALIDATE_IOTLB_PAGES of it in
/// the flush. The flush holds the configuration lock from its read of the attachments to its
/// wait, and an attach holds it from its record to its wait, so the attach waits for the
/// flush and the device's requests are refused until then. The test's hook starts the attach
/// on another thread in that window and lets the device ask for the page. Passed when
/// written: no defect (Linux's `amd_iommu_iotlb_sync` likewise flushes the pages of the
/// domain's device list and waits under the domain lock an attach takes to join that list).
#[test]
fn a_device_attached_while_a_flush_runs_waits_for_its_invalidation() {
    use crate::iommu::{DeviceHints, DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::{Gather, Prot};
    use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::boxed::Box;
    use std::sync::{Arc, Mutex};

    let mem: &'static Arena = Box::leak(Box::new(Arena::with_defaults().unwrap()));
    let model: &'static AmdViModel<'static> = Box::leak(Box::new(AmdViModel::new(
        mem,
        AmdViModelConfig::qemu_default(),
    )));
    let u: &'static Unit<'static> = Box::leak(Box::new(unit(model, mem, small())));
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    // EDU (no ATS) on d: its DMA leaves d's page in the IOTLB, tagged with d's domain ID.
    u.attach(DeviceId(EDU), None, d).unwrap();
    let rw = Prot::READ | Prot::WRITE;
    u.map(d, Iova::new(0x1000), PhysAddr::new(0xA000_0000), 0x1000, rw)
        .unwrap();
    model.dma(EDU as u16, 0x1000, false).unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), 0x1000, &mut g).unwrap();
    const ATS_DEV: u32 = 0x28;
    let attacher = Arc::new(Mutex::new(None));
    let attached_in_window = Arc::new(AtomicBool::new(false));
    let (t, w) = (attacher.clone(), attached_in_window.clone());
    crate::test_hooks::set_after_ats_read(move || {
        // The attach cannot finish while the flush runs.
        let thread = crate::test_hooks::run_beside(move || {
            let ats = DeviceHints {
                ats: true,
                ..DeviceHints::default()
            };
            u.attach_device(DeviceId(ATS_DEV), None, d, &ats).unwrap();
        });
        w.store(thread.is_finished(), SeqCst);
        // The device's driver enabled ATS: it asks for the page.
        let _ = model.ats_translate(ATS_DEV as u16, None, 0x1000, false);
        *t.lock().unwrap() = Some(thread);
    });
    model.record_commands(true);
    u.flush(d, &mut g).unwrap();
    let flushed: Vec<u64> = model
        .take_command_log()
        .iter()
        .map(|c| c[0] >> 60)
        .collect();
    let thread = attacher.lock().unwrap().take().expect("the hook ran");
    thread.join().unwrap();
    assert_eq!(
        flushed.get(..2),
        Some(&[3, 1][..]),
        "the flush: INVALIDATE_IOMMU_PAGES of d's page, one COMPLETION_WAIT"
    );
    assert_eq!(
        model.atc_translation(ATS_DEV as u16, None, 0x1000),
        None,
        "the ATS device's ATC holds the page the flush freed"
    );
    assert!(
        !attached_in_window.load(SeqCst),
        "the attach finished between the flush's read of the ATS devices and its wait"
    );
    assert!(model
        .ats_translate(ATS_DEV as u16, None, 0x1000, false)
        .is_err());
    // Attached now: the next flush reaches its IOTLB.
    u.map(d, Iova::new(0x1000), PhysAddr::new(0xA000_0000), 0x1000, rw)
        .unwrap();
    model
        .ats_translate(ATS_DEV as u16, None, 0x1000, false)
        .unwrap();
    u.unmap(d, Iova::new(0x1000), 0x1000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    assert_eq!(model.atc_translation(ATS_DEV as u16, None, 0x1000), None);
}

/// A release whose domain's table points at memory the allocator never handed out cannot
/// give that memory back: it says so (`Ok(Some(error))`), as VT-d's `Released::leaked` does,
/// instead of returning `Ok(())` with the pages gone without a word (the C ABI's
/// `ie_unit_destroy` then answers `IE_STATUS_LEAKED`).
#[test]
fn a_release_that_leaks_a_table_says_so() {
    use crate::iommu::{DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::Prot;
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    u.map(
        d,
        Iova::new(0),
        PhysAddr::new(0x10_0000),
        0x1000,
        Prot::READ,
    )
    .unwrap();
    let dte = u.config.lock().devtab.entry(EDU).unwrap().load();
    u.detach(DeviceId(EDU), None).unwrap();
    u.disable().unwrap();
    // The root's second entry (unused): a next-level table far outside the arena
    // (`phys_to_virt` knows nothing of it).
    let stray = 1u64 << 45 | u64::from(dte.mode() - 1) << 9 | PR | IR | IW;
    assert!(mem.write_u64(dte.root().get() + 8, stray));
    let leaked = u.release().map_err(|(_, e)| e).unwrap();
    assert!(
        leaked.is_some(),
        "the stray table was leaked without a word"
    );
}

/// The model sets a leaf's `D` as the unit does (Host Dirty, HAD), with one atomic
/// read-modify-write: a driver's change of the leaf between the model's read of it and its
/// write of `D` (here an unmap on another CPU, played by a hook at that point) is kept. It was
/// a read then a plain write: the write put the unmapped leaf back (with `D`), and after the
/// unmap's flush the device still reached the page the driver had taken back.
#[test]
fn a_dirty_update_racing_an_unmap_does_not_bring_the_leaf_back() {
    use std::cell::RefCell;
    use std::rc::Rc;

    use crate::iommu::{DeviceId, DomainConfig, Iommu};
    use crate::mem::Iova;
    use crate::pgtable::{Gather, Prot};
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default().with_dirty_tracking());
    let u = unit(&model, &mem, small());
    u.enable().unwrap();
    let dirty = DomainConfig {
        dirty_tracking: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&dirty).unwrap();
    u.attach(DeviceId(EDU), None, d).unwrap();
    let rw = Prot::READ.union(Prot::WRITE);
    u.map(d, Iova::new(0x5000), PhysAddr::new(0x7000_0000), 0x1000, rw)
        .unwrap();
    let gather = Rc::new(RefCell::new(Gather::new()));
    let (g, at) = (gather.clone(), core::ptr::addr_of!(u) as usize);
    crate::test_hooks::set_in_dirty_update(move || {
        // SAFETY: `u` lives until the end of the test, and the hook runs inside the DMA
        // below, on this thread; the unmap touches the table only, not the model.
        let u = unsafe { &*(at as *const Unit<'_>) };
        let unmapped = u.unmap(d, Iova::new(0x5000), 0x1000, &mut g.borrow_mut());
        assert_eq!(unmapped.unwrap(), 0x1000);
    });
    let ok = model.dma(EDU as u16, 0x5008, true).unwrap();
    assert_eq!(ok.pa, 0x7000_0008, "translated before the unmap");
    u.flush(d, &mut gather.borrow_mut()).unwrap();
    assert!(
        model.dma(EDU as u16, 0x5008, false).is_err(),
        "the unmapped page is not reachable after the unmap's flush"
    );
}
