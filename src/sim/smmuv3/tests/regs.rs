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
