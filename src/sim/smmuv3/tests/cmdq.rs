//! The command consumer: CMD_SYNC completion, CERROR_ILL and recovery, wrap-around.

use super::*;
use crate::sim::smmuv3::cerror;
use std::vec;

fn cons_err(m: &SmmuModel<'_>) -> u32 {
    m.read32(CMDQ_CONS) >> 24 & 0x7f
}

#[test]
fn sync_completes_by_cons_and_by_msi() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like().with_msi(true));
    let flag = rig.page();
    rig.w(flag, 0xffff_ffff_0000_0000);
    rig.submit(&m, &[cmd::tlbi_nsnh_all(), cmd::sync_msi(flag, 0xabcd)]);
    assert_eq!(m.read32(CMDQ_CONS), m.read32(CMDQ_PROD));
    assert_eq!(m.read32(CMDQ_CONS), 2);
    // The MSI wrote the 32-bit MSIData and nothing else.
    assert_eq!(rig.r(flag), 0xffff_ffff_0000_abcd);
    rig.submit(&m, &[cmd::sync_msi(flag + 4, 0x1234)]);
    assert_eq!(rig.r(flag), 0x0000_1234_0000_abcd);
    let s = m.stats();
    assert_eq!((s.syncs, s.sync_msi_writes), (2, 2));
    assert_eq!(s.commands_of(op::CMD_SYNC), 2);
    assert_eq!(s.commands_of(op::TLBI_NSNH_ALL), 1);
    assert_eq!(s.total_commands(), 3);
    assert_eq!(
        m.command_log(),
        vec![
            cmd::tlbi_nsnh_all(),
            cmd::sync_msi(flag, 0xabcd),
            cmd::sync_msi(flag + 4, 0x1234)
        ]
    );
    // Without IDR0.MSI the same command completes by CONS only.
    let m2 = rig.model(SmmuModelConfig::qemu_like());
    rig.w(flag, 0);
    rig.submit(&m2, &[cmd::sync_msi(flag, 7)]);
    assert_eq!(rig.r(flag), 0);
    assert_eq!(m2.stats().syncs, 1);
    m.reset_stats();
    assert_eq!(m.stats().total_commands(), 0);
    assert!(m.command_log().is_empty());
}

#[test]
fn illegal_command_stops_consumption_until_acknowledged() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like());
    rig.submit(&m, &[cmd::tlbi_nsnh_all(), [0x7f, 0], cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 1, "stopped at the bad command");
    assert_eq!(cons_err(&m), u32::from(cerror::ILL));
    assert_eq!(m.read32(GERROR) ^ m.read32(GERRORN), 1);
    assert_eq!(m.stats().syncs, 0);
    // More commands do not move it either.
    rig.submit(&m, &[cmd::sync()]);
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 1);
    // Recovery: replace the bad command with a CMD_SYNC, acknowledge GERROR.
    rig.w(rig.cmdq + 16, cmd::sync()[0]);
    rig.w(rig.cmdq + 24, cmd::sync()[1]);
    m.write32(GERRORN, m.read32(GERROR));
    assert_eq!(m.read32(CMDQ_CONS) & 0xff, 4);
    assert_eq!(m.stats().syncs, 3);
    assert_eq!(m.stats().cerrors, 1);
}

#[test]
fn reserved_fields_and_bad_values_are_illegal() {
    let rig = Rig::new();
    let illegal = [
        [0x03 | 1 << 10, 0], // CFGI_STE with SSec on the Non-secure queue
        [0x03, 1 << 1],      // CFGI_STE with a reserved bit in word 1
        [0x46 | 3 << 12, 0], // CMD_SYNC with CS = 0b11
        [0x12, 1 << 10],     // TLBI_NH_VA: TG = 0b01 with NUM/SCALE 0 is fine...
        [0x12 | 1 << 12, 0], // ...but NUM without TG is not
        [0x20, 0],           // TLBI_EL2_ALL without IDR0.HYP
        [0x00, 0],           // opcode 0
        [0x2a | 1 << 48, 0], // TLBI_S2_IPA with bits in the ASID field
    ];
    let mut errors = 0;
    for (i, c) in illegal.into_iter().enumerate() {
        let m = rig.model(SmmuModelConfig::qemu_like());
        m.write32(CR0, 0);
        m.write32(CMDQ_CONS, 0);
        m.write32(CMDQ_PROD, 0);
        m.write32(CR0, SMMUEN | EVENTQEN | CMDQEN);
        rig.submit(&m, &[c]);
        let legal = i == 3;
        assert_eq!(cons_err(&m) == 1, !legal, "case {i}: {:#x?}", c);
        errors += m.stats().cerrors;
    }
    assert_eq!(errors, 7);
    // Without stage 2, TLBI_S2_IPA is illegal; without VMID16, a VMID above 255 is.
    let m = rig.model(SmmuModelConfig::qemu_like().with_stages(true, false));
    m.write32(CR0, 0);
    m.write32(CMDQ_CONS, 0);
    m.write32(CMDQ_PROD, 0);
    m.write32(CR0, SMMUEN | CMDQEN);
    rig.submit(&m, &[cmd::tlbi_s2_ipa(1, 0, true)]);
    assert_eq!(cons_err(&m), 1);
}

#[test]
fn queue_wraps_around() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like());
    // 16 slots: 3 batches of 7 cross the end once; the wrap bit (bit 4) toggles.
    for _ in 0..3 {
        let batch: Vec<[u64; 2]> = (0..6)
            .map(|_| cmd::tlbi_nsnh_all())
            .chain([cmd::sync()])
            .collect();
        rig.submit(&m, &batch);
        assert_eq!(m.read32(CMDQ_CONS), m.read32(CMDQ_PROD));
    }
    assert_eq!(m.read32(CMDQ_CONS), 1 << 4 | 5);
    let s = m.stats();
    assert_eq!((s.commands_of(op::TLBI_NSNH_ALL), s.syncs), (18, 3));
    // The queue size is capped at IDR1.CMDQS: LOG2SIZE = 10 acts as 2 (4 slots).
    let mut rig = Rig::new();
    rig.cmdq_log2 = 2;
    let m = SmmuModel::new(
        &rig.arena,
        SmmuModelConfig::qemu_like().with_queue_bits(2, 2),
    );
    m.write64(CMDQ_BASE, rig.cmdq | 10);
    m.write32(CR0, CMDQEN);
    for _ in 0..5 {
        rig.submit(&m, &[cmd::sync()]);
    }
    assert_eq!(m.stats().syncs, 5);
    assert_eq!(m.read32(CMDQ_CONS) & 0x7, 1 << 2 | 1);
}

#[test]
fn queue_registers_are_read_only_while_enabled() {
    let rig = Rig::new();
    let m = rig.model(SmmuModelConfig::qemu_like());
    m.write64(CMDQ_BASE, 0x1000);
    m.write32(CMDQ_CONS, 3);
    m.write64(STRTAB_BASE, 0x2000);
    assert_eq!(m.read64(CMDQ_BASE), rig.cmdq | 4);
    assert_eq!(m.read32(CMDQ_CONS), 0);
    assert_eq!(m.read64(STRTAB_BASE), rig.strtab);
    assert_eq!(m.stats().ignored_writes, 3);
}
