//! Register semantics (§11.4): identity, reserved offsets, GCMD/GSTS handshakes.

use super::*;

#[test]
fn identity_reserved_offsets_and_window() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    assert_eq!(m.read32(0x00), 0x30);
    assert_eq!(m.read64(0x08), 0x00d2_008c_222f_0606);
    assert_eq!(m.read32(0x0c), 0x00d2_008c, "upper half of CAP");
    assert_eq!(m.read64(0x10), 0xf42, "QI, PT, IRO 0xf");
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

/// A small deterministic generator (xorshift64*), so the test needs no crate and replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn arbitrary_registers_tables_and_requests_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..20 {
        let a = arena();
        let pages: std::vec::Vec<u64> = (0..8).map(|_| page(&a)).collect();
        // Tables full of noise, with pointers into the arena now and then.
        for &p in &pages {
            for i in 0..512 {
                let v = match rng.next() % 4 {
                    0 => pages[(rng.next() % 8) as usize] | rng.next() & 0xfff,
                    1 => 0,
                    _ => rng.next(),
                };
                put(&a, p + 8 * i, v);
            }
        }
        let mut cfg = if round % 2 == 0 {
            VtdModelConfig::qemu_default()
        } else {
            VtdModelConfig::scalable()
        };
        if round >= 10 {
            cfg.cap = rng.next();
            cfg.ecap = rng.next();
            cfg.haw = (rng.next() % 80) as u32;
        }
        let m = VtdModel::new(&a, cfg);
        for _ in 0..300 {
            let off = (rng.next() % 0x1100) as usize & !3;
            let v = match rng.next() % 3 {
                0 => pages[(rng.next() % 8) as usize] | rng.next() & 0xfff,
                _ => rng.next(),
            };
            match rng.next() % 4 {
                0 => m.write32(off, v as u32),
                1 => m.write64(off & !7, v),
                2 => {
                    m.read32(off);
                }
                _ => {
                    let pasid = (rng.next() % 2 == 0).then(|| rng.next() as u32);
                    let access = Access {
                        read: rng.next() % 2 == 0,
                        write: rng.next() % 2 == 0,
                        exec: rng.next() % 4 == 0,
                        privileged: rng.next() % 2 == 0,
                    };
                    let _ = m.translate(rng.next() as u16, pasid, rng.next(), access);
                }
            }
            // Keep the unit interesting: translation and queue on, root at a page.
            if rng.next() % 16 == 0 {
                m.write64(R_RTADDR, pages[0] | (rng.next() % 2) << 10);
                m.write32(R_GCMD, TE | SRTP | QIE);
                m.write64(R_IQA, pages[1] | rng.next() & 0x807);
            }
        }
        let _ = (m.stats(), m.descriptor_log().len(), m.cache_sizes());
    }
}

#[test]
fn fault_events_respect_the_interrupt_mask() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_nfr(3));
    m.write32(R_GCMD, TE); // translation on, no root table: every request faults (0x8)
    let fault = || m.translate(SID, None, 0, Access::READ).unwrap_err().reason;
    assert_eq!(fault(), fault::ROOT_TABLE_ACCESS_ERROR);
    assert_eq!(m.read32(0x38), 1 << 31 | 1 << 30, "masked: IP pending");
    assert_eq!(m.stats().fault_interrupts, 0);
    m.write32(0x38, 0);
    assert_eq!(
        (m.read32(0x38), m.stats().fault_interrupts),
        (0, 1),
        "unmasking delivers"
    );
    // A second fault while PPF is still set is not a new event.
    fault();
    assert_eq!(m.stats().fault_interrupts, 1);
    assert_eq!(
        m.read32(R_FSTS) >> 8 & 0xff,
        0,
        "FRI names the first pending record"
    );
    // Clear both records; the next fault raises an event and FRI points at record 2.
    m.write32(R_FRCD + 12, 1 << 31);
    m.write32(R_FRCD + 16 + 12, 1 << 31);
    fault();
    assert_eq!(m.stats().fault_interrupts, 2);
    assert_eq!(m.read32(R_FSTS), 2 << 8 | 2);
}

#[test]
fn protected_memory_regions() {
    let a = arena();
    // Without CAP.PLMR/PHMR: PMEN and the region registers read 0 and ignore writes.
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    m.write32(0x68, 0x4000_0000);
    m.write32(0x64, 1 << 31);
    assert_eq!((m.read32(0x64), m.read32(0x68)), (0, 0));
    let m = VtdModel::new(
        &a,
        VtdModelConfig::qemu_default().with_protected_memory(true),
    );
    // 2 MiB granularity: bits 20:0 read 0; bits at or above HAW (48) too.
    m.write32(0x68, 0x4012_3456);
    m.write32(0x6C, 0x4000_0000);
    m.write64(0x70, 0xffff_0002_0000_0000);
    m.write64(0x78, 0x2_0000_0000);
    assert_eq!(
        (m.read32(0x68), m.read64(0x70)),
        (0x4000_0000, 0x2_0000_0000)
    );
    // EPM off: nothing is blocked.
    assert!(m.translate(1, None, 0x4000_0000, Access::WRITE).is_ok());
    m.write32(0x64, 1 << 31);
    assert_eq!(m.read32(0x64), 1 << 31 | 1, "EPM, PRS");
    // Both regions (inclusive of the limit's 2 MiB) block, unrecorded; around them, no.
    for pa in [0x4000_0000, 0x401f_ffff, 0x2_0000_0000, 0x2_001f_ffff] {
        let f = m.translate(1, None, pa, Access::WRITE);
        assert!(f.is_err_and(|f| !f.recorded), "{pa:#x}");
    }
    for pa in [0x3fff_ffff, 0x4020_0000, 0x2_0020_0000] {
        assert!(m.translate(1, None, pa, Access::READ).is_ok(), "{pa:#x}");
    }
    assert_eq!(m.stats().pmr_blocked, 4);
    assert_eq!(m.read32(0x34), 0, "FSTS: nothing recorded");
    // Cleared with translation off: counted.
    m.write32(0x64, 0);
    assert_eq!(m.read32(0x64), 0);
    assert_eq!(m.stats().pmr_off_before_te, 1);
    assert!(m.translate(1, None, 0x4000_0000, Access::WRITE).is_ok());
}
