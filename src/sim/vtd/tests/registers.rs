//! Register semantics (§11.4): identity, reserved offsets, GCMD/GSTS handshakes.

use super::*;

#[test]
fn identity_reserved_offsets_and_window() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    assert_eq!(m.read32(0x00), 0x10);
    assert_eq!(m.read64(0x08), 0x00d2_008c_222f_0606);
    assert_eq!(m.read32(0x0c), 0x00d2_008c, "upper half of CAP");
    assert_eq!(m.read64(0x10) >> 8 & 0x3ff, 0xf, "IRO");
    m.write64(0x08, 0);
    assert_eq!(m.read64(0x08), 0x00d2_008c_222f_0606, "CAP is read-only");
    // Reserved offsets read 0 and ignore writes; GCMD is write-only.
    m.write32(0x60, 0xffff_ffff);
    assert_eq!(m.read32(0x60), 0);
    assert_eq!(m.read32(R_GCMD), 0);
    // Outside the window or misaligned: all ones.
    assert_eq!(m.read32(0x1000), u32::MAX);
    assert_eq!(m.read64(0x0c), u64::MAX);
    // FECTL starts masked.
    assert_eq!(m.read32(0x38), 1 << 31);
}

#[test]
fn gcmd_one_shot_and_persistent_bits() {
    let a = arena();
    let root = page(&a);
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_rwbf(true));
    // SRTP latches RTADDR: RTPS; a later RTADDR write changes nothing until the next SRTP.
    m.write64(R_RTADDR, root);
    m.write32(R_GCMD, SRTP);
    assert_eq!(m.read32(R_GSTS), SRTP);
    // TE is persistent: it must be written again with every later command.
    m.write32(R_GCMD, TE);
    assert_eq!(m.read32(R_GSTS), TE | SRTP);
    m.write32(R_GCMD, 1 << 27); // WBF without TE: the flush runs, TE drops
    assert_eq!(m.read32(R_GSTS), SRTP);
    assert_eq!(m.stats().write_buffer_flushes, 1);
    m.write32(R_GCMD, TE | 1 << 27);
    assert_eq!(
        m.read32(R_GSTS) & (1 << 27),
        0,
        "WBFS: the flush is already done"
    );
    // IRE needs ECAP.IR; QIE resets IQH.
    m.write32(R_GCMD, TE | 1 << 25);
    assert_eq!(m.read32(R_GSTS), TE | SRTP);
    m.write32(R_GCMD, TE | QIE);
    assert_eq!(m.read32(R_GSTS), TE | SRTP | QIE);
    assert_eq!(m.stats().root_table_latches, 1);
    // Scalable TTM without SMTS latches a root that faults every request.
    m.write64(R_RTADDR, root | 1 << 10);
    m.write32(R_GCMD, TE | QIE | SRTP);
    let e = m.translate(SID, None, 0, Access::READ).unwrap_err();
    assert_eq!(e.reason, fault::SM_ROOT_TABLE_INVALID);
}

#[test]
fn ignored_gcmd_never_acknowledges() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    m.inject(Injection::IgnoreGcmd);
    m.write64(R_RTADDR, page(&a));
    m.write32(R_GCMD, SRTP);
    m.write32(R_GCMD, TE);
    assert_eq!(m.read32(R_GSTS), 0);
    m.clear_injections();
    m.write32(R_GCMD, TE);
    assert_eq!(m.read32(R_GSTS), TE);
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VtdModel<'static>>();
}
