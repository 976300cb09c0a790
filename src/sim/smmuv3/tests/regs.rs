//! The register file: ID registers, handshakes, unknown offsets.

use super::*;
use crate::sim::smmuv3::Injection;

#[test]
fn qemu_like_id_registers() {
    let rig = Rig::new();
    let m = SmmuModel::new(&rig.arena, SmmuModelConfig::qemu_like());
    // IDR0: S2P | S1P | TTF=2 | COHACC | ASID16 | VMID16 | TTENDIAN=2 | STALL_MODEL=1 |
    // TERM_MODEL | ST_LEVEL=1.
    assert_eq!(m.read32(0x0), 0x0d44_101b);
    // IDR1: SIDSIZE=16, EVENTQS=19, CMDQS=19.
    assert_eq!(m.read32(0x4), 0x0273_0010);
    // IDR3: HAD | XNX | RIL | BBML=2.
    assert_eq!(m.read32(0xc), 0x1414);
    // IDR5: OAS=44 bits (0b100) | GRAN4K | GRAN16K | GRAN64K.
    assert_eq!(m.read32(0x14), 0x74);
    assert_eq!(m.read32(0x1c), 1);
    let c = SmmuModelConfig::qemu_like()
        .with_ril(false)
        .with_fwb(true)
        .with_cohacc(false)
        .with_ssid_bits(20)
        .with_httu(true, true)
        .with_stages(false, true)
        .with_oas_bits(48);
    assert_eq!(c.idr[3] & (1 << 10 | 1 << 8), 1 << 8);
    assert_eq!(
        c.idr[0] & (1 << 4 | 3 << 6 | 3 | 1 << 19),
        2 << 6 | 1 | 1 << 19
    );
    assert_eq!(c.idr[1] >> 6 & 0x1f, 20);
    assert_eq!(c.idr[5] & 7, 5);
}

#[test]
fn handshakes_and_unknown_offsets() {
    let rig = Rig::new();
    let m = SmmuModel::new(&rig.arena, SmmuModelConfig::qemu_like());
    assert_eq!(m.read32(GBPA), 1 << 12, "reset: SHCFG = incoming");
    m.write32(GBPA, 1 << 20);
    assert_eq!(m.read32(GBPA), 1 << 12, "no UPDATE: ignored");
    m.write32(GBPA, 1 << 31 | 1 << 20);
    assert_eq!(
        m.read32(GBPA),
        1 << 20,
        "UPDATE completes at once and reads 0"
    );
    m.write32(0x50, 0x5);
    assert_eq!(m.read32(0x54), 0x5);
    m.write32(CR0, SMMUEN | CMDQEN);
    assert_eq!(m.read32(CR0ACK), SMMUEN | CMDQEN);
    m.inject(Injection::Cr0AckStuck);
    m.write32(CR0, SMMUEN);
    assert_eq!(m.read32(CR0ACK), SMMUEN | CMDQEN, "ACK stuck");
    m.clear_injections();
    assert_eq!(m.read32(CR0ACK), SMMUEN);
    // An injected stuck update keeps UPDATE set and the old fields until cleared.
    m.inject(Injection::GbpaUpdateStuck);
    m.write32(GBPA, 1 << 31);
    assert_eq!(m.read32(GBPA), 1 << 31 | 1 << 20);
    m.clear_injections();
    assert_eq!(m.read32(GBPA), 0);
    // Unknown offsets read 0; outside the two pages, all ones.
    assert_eq!(m.read32(0x3c), 0);
    m.write32(0x3c, 5);
    assert_eq!(m.read32(0x3c), 0);
    assert_eq!(m.read32(0x2_0000), u32::MAX);
    assert_eq!(m.read64(0x2_0000), u64::MAX);
    // 64-bit registers by halves.
    m.write32(0xa0, 0x1234_5005);
    m.write32(0xa4, 0x0000_00ab);
    assert_eq!(m.read64(0xa0), 0xab_1234_5005);
    assert_eq!(m.read32(0xa4), 0xab);
    // EVENTQ_PROD/CONS in page 1, with their page-0 aliases.
    m.write32(EVENTQ_PROD, 3);
    assert_eq!(m.read32(0xa8), 3);
    m.write32(0xac, 2);
    assert_eq!(m.read32(EVENTQ_CONS), 2);
}

#[test]
fn model_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SmmuModel<'static>>();
}

/// Random register writes, commands, table words and transactions: the model answers every
/// one without panicking.
#[test]
fn random_inputs_never_panic() {
    let rig = Rig::new();
    let (root, pa) = (rig.page(), rig.page());
    rig.map(root, 1, 0x1234_5000, pa, 12, S2_RW_WB);
    let m = rig.model(
        SmmuModelConfig::qemu_like()
            .with_msi(true)
            .with_ssid_bits(8),
    );
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let offsets = [
        CR0,
        GBPA,
        GERRORN,
        STRTAB_BASE,
        STRTAB_BASE_CFG,
        CMDQ_BASE,
        CMDQ_PROD,
        CMDQ_CONS,
        EVENTQ_BASE,
        EVENTQ_PROD,
        EVENTQ_CONS,
        0x50,
        0x28,
        0x2c,
    ];
    for i in 0..3000u64 {
        let r = next();
        match i % 4 {
            0 => {
                let off = offsets[(r % offsets.len() as u64) as usize];
                // Keep queue and table bases inside the arena most of the time.
                let v = match off {
                    STRTAB_BASE => rig.strtab | (r >> 60),
                    CMDQ_BASE => rig.cmdq | u64::from(rig.cmdq_log2),
                    EVENTQ_BASE => rig.eventq | (r >> 59),
                    _ => next(),
                };
                if r & 1 == 0 {
                    m.write32(off, v as u32);
                } else {
                    m.write64(off & !7, v);
                }
            }
            1 => {
                let op = [
                    0x01, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x2a, 0x28, 0x46, 0x40,
                ];
                let opcode = op[(r % op.len() as u64) as usize];
                let c = [
                    opcode | next() & !0xff & if r & 2 == 0 { 0 } else { u64::MAX },
                    next() & 0xfff_ffff_ffff,
                ];
                rig.submit(&m, &[c]);
                if m.read32(GERROR) != m.read32(GERRORN) {
                    // Recover as a driver does: replace the bad command by a CMD_SYNC.
                    let slot = rig.cmdq + u64::from(m.read32(CMDQ_CONS) & 0xf) * 16;
                    rig.w(slot, cmd::sync()[0]);
                    rig.w(slot + 8, 0);
                    m.write32(GERRORN, m.read32(GERROR));
                }
            }
            2 => {
                let sid = (r % 8) as u32;
                let w = [next() | 1, next(), next(), next() & 0xf_ffff_ffff_fff0];
                rig.ste(sid, if r & 4 == 0 { ste_s2(1, root) } else { w });
            }
            _ => {
                let ssid = (r & 8 != 0).then_some((r >> 8) as u32 & 0xff);
                let access = crate::sim::walk::Access {
                    read: r & 16 != 0,
                    write: r & 32 != 0,
                    exec: r & 64 != 0,
                    privileged: r & 128 != 0,
                };
                let iova = if r & 0x100 == 0 {
                    0x1234_5000
                } else {
                    next() >> (r % 64)
                };
                if r & 0xe00 == 0 {
                    m.write32(CR0, SMMUEN | EVENTQEN | CMDQEN);
                }
                let _ = m.translate((r >> 40) as u32 % 10, ssid, iova, access);
                let _ = m.translated_transaction((r >> 40) as u32 % 10, next(), access);
            }
        }
    }
    let _ = m.pending_events();
    assert!(m.stats().translations >= 750);
}
