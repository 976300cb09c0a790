//! Decoder target `decode_amdvi`: every AMD-Vi structure the crate reads back from hardware or
//! builds for it (AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10): event log entries (§2.5), command buffer entries (§2.4, the `S`-bit range
//! encoding), the flush planner's block merging, EFR (§3.4), device table entries (§2.2.2.1).
//!
//! Each input is a sequence of steps; each decodes 16 or 32 arbitrary bytes, never panics, and
//! is checked against this file's own reading of the layout (bit positions written out here,
//! not taken from the crate):
//! - an event: `EventCode` 63:60, flags 59:48, `DeviceID` 15:0, domain ID or PASID 47:32 with
//!   19:16, the address the second quadword; re-encoding gives the raw bits back (bits 31:20 of
//!   the first quadword are not decoded);
//! - a command entry: the opcode 63:60; a page invalidation's address through
//!   `InvalidationRange::decode` against a bit-by-bit reading (`S` clear: the 4 KiB page; set:
//!   the lowest clear bit from 12 up is the size's top bit; bits 63:52 copies of bit 51, a
//!   first clear bit at 51 or above everything), and a block re-encoded from it decodes to the
//!   same block, or to everything when it reaches 2^51;
//! - commands the crate builds from arbitrary fields read back field by field;
//! - `fewest_blocks` over up to 8 arbitrary blocks: the same addresses covered, no block inside
//!   another, no two halves of one block left;
//! - EFR and DTE accessors on arbitrary words, within their ranges.

use arbitrary::{Arbitrary, Unstructured};

use crate::amdvi::cmd::{fewest_blocks, Command, InvalidationRange};
use crate::amdvi::dte::DeviceTableEntry;
use crate::amdvi::efr::Efr;
use crate::amdvi::event::{Event, EventCode};
use crate::iommu::Pasid;
use crate::mem::PhysAddr;

/// The bits of an event's first quadword that `Event` decodes.
const EVENT_Q0_DECODED: u64 = 0xFFFF_FFFF_000F_FFFF;

/// Most steps per input (each is cheap: the bound keeps an input's time flat).
const STEPS: usize = 64;

fn words<const N: usize>(u: &mut Unstructured<'_>) -> [u64; N] {
    <[u64; N]>::arbitrary(u).unwrap_or([0; N])
}

/// The target's body.
pub fn amdvi(data: &[u8]) {
    let mut u = Unstructured::new(data);
    for _ in 0..STEPS {
        if u.is_empty() {
            break;
        }
        match u8::arbitrary(&mut u).unwrap_or(0) % 6 {
            0 => event(words::<2>(&mut u)),
            1 => command_entry(words::<2>(&mut u)),
            2 => built_commands(&mut u),
            3 => blocks(&mut u),
            4 => efr(words::<1>(&mut u)[0]),
            _ => dte(words::<4>(&mut u)),
        }
    }
}

fn event(raw: [u64; 2]) {
    let e = Event::decode(raw);
    let q0 = raw[0];
    assert_eq!(e.code.code(), (q0 >> 60) as u8);
    assert_eq!(EventCode::from_code(e.code.code()), e.code);
    assert_eq!(e.device_id, q0 as u16);
    assert_eq!(u64::from(e.flags.bits()), (q0 >> 48) & 0xFFF);
    assert_eq!(
        e.domain_or_pasid,
        ((q0 >> 32) & 0xFFFF) as u32 | (((q0 >> 16) & 0xF) as u32) << 16
    );
    assert_eq!(e.address, raw[1]);
    assert_eq!(e.is_write(), q0 & 1 << 53 != 0, "RW is flag bit 5");
    let again = Event::encode(
        e.code,
        e.device_id,
        e.domain_or_pasid,
        e.flags.bits(),
        e.address,
    );
    assert_eq!(
        [again[0], again[1]],
        [q0 & EVENT_Q0_DECODED, raw[1]],
        "{raw:#x?}"
    );
}

/// This target's reading of an `S`-encoded address: `(first, log2 size)`, 64 for everything.
/// The unit reads bits 51:12, bits 63:52 being copies of bit 51; with `S`, a first clear bit
/// at 51 or above is everything.
fn own_decode(q1: u64) -> (u64, u32) {
    let mut address = q1 & 0x000F_FFFF_FFFF_F000;
    if address & 1 << 51 != 0 {
        address |= 0xFFF0_0000_0000_0000;
    }
    if q1 & 1 == 0 {
        return (address, 12);
    }
    let mut top = 12;
    while top < 51 && address & (1u64 << top) != 0 {
        top += 1;
    }
    if top >= 51 {
        return (0, 64);
    }
    let log2 = top + 1;
    (address & !((1u64 << log2) - 1), log2)
}

fn command_entry(raw: [u64; 2]) {
    let c = Command(raw);
    assert_eq!(c.opcode(), (raw[0] >> 60) as u8);
    let (first, log2) = InvalidationRange::decode(raw[1], raw[1] & 1 != 0);
    assert_eq!((first, log2), own_decode(raw[1]), "{raw:#x?}");
    assert!((12..=64).contains(&log2));
    // The block covering what the address covers encodes to an address that decodes to it.
    let last = if log2 >= 64 {
        u64::MAX
    } else {
        first + ((1u64 << log2) - 1)
    };
    let block = InvalidationRange::covering(first, last.saturating_add(1).max(first + 1));
    let (a, s) = block.encode();
    let back = InvalidationRange::decode(a, s);
    assert_eq!(block.span(), back);
    if last >> 51 == 0 {
        assert_eq!(back, (first, log2), "{raw:#x?}");
    } else {
        // Reaching 2^51 (or the sign-extended top): nameable only as everything.
        assert_eq!(back, (0, 64), "{raw:#x?}");
    }
}

fn built_commands(u: &mut Unstructured<'_>) {
    let [a, b] = words::<2>(u);
    let domain = a as u16;
    let pasid = Pasid::new((a >> 16) as u32 & 0xF_FFFF).filter(|_| a & 1 << 40 != 0);
    let pde = a & 1 << 41 != 0;
    let end = b
        .saturating_add((a >> 42) & 0xF_FFFF)
        .max(b.saturating_add(1));
    let range = InvalidationRange::covering(b, end);
    let (first, log2) = range.span();
    assert!(first <= b && (log2 >= 64 || end - 1 <= first + ((1u64 << log2) - 1)));
    let c = Command::invalidate_iommu_pages(domain, pasid, range, pde);
    assert_eq!(c.opcode(), 3);
    assert_eq!((c.0[0] >> 32) as u16, domain);
    assert_eq!(c.0[0] & 0xF_FFFF, pasid.map_or(0, |p| u64::from(p.get())));
    assert_eq!(c.0[1] & 2 != 0, pde, "PDE");
    assert_eq!(c.0[1] & 4 != 0, pasid.is_some(), "GN");
    assert_eq!(own_decode(c.0[1]), (first, log2));
    let c = Command::invalidate_iotlb_pages(domain, (a >> 56) as u8, pasid, range);
    assert_eq!(c.opcode(), 4);
    assert_eq!(c.0[0] as u16, domain, "DeviceID");
    assert_eq!((c.0[0] >> 32) as u16, domain, "QueueID");
    assert_eq!((c.0[0] >> 24) as u8, (a >> 56) as u8, "Maxpend");
    let p = pasid.map_or(0, |p| u64::from(p.get()));
    let field = (c.0[0] >> 16) & 0xFF | ((c.0[0] >> 48) & 0xFF) << 8 | ((c.0[0] >> 56) & 0xF) << 16;
    let ours = (p >> 8) & 0xFF | (p & 0xFF) << 8 | ((p >> 16) & 0xF) << 16;
    assert_eq!(field, ours, "PASID fields");
    assert_eq!(own_decode(c.0[1]), (first, log2));
    let store = PhysAddr::new(b & !7);
    let c = Command::completion_wait(Some((store, a)), pde);
    assert_eq!(c.opcode(), 1);
    assert_eq!(c.0[0] & 0x000F_FFFF_FFFF_FFF8, b & 0x000F_FFFF_FFFF_FFF8);
    assert_eq!(c.0[0] & 3, 1 | u64::from(pde) << 1);
    assert_eq!(c.0[1], a);
}

fn blocks(u: &mut Unstructured<'_>) {
    let n = usize::from(u8::arbitrary(u).unwrap_or(0) % 8) + 1;
    let mut given = [InvalidationRange::All; 8];
    for b in given.iter_mut().take(n) {
        let [w] = words::<1>(u);
        *b = InvalidationRange::covering(
            w & !0xFFF,
            (w & !0xFFF).saturating_add(1u64 << (12 + (w & 0x3F) % 30)),
        );
    }
    let given = &given[..n];
    let mut planned = [InvalidationRange::All; 8];
    planned[..n].copy_from_slice(given);
    let left = fewest_blocks(&mut planned[..n]);
    assert!((1..=n).contains(&left));
    let planned = &planned[..left];
    // Every block given lies inside one planned block; every planned block is tiled exactly
    // by the given blocks inside it that no other given block holds.
    for &g in given {
        assert!(
            planned.iter().any(|p| p.contains(g)),
            "{given:x?} -> {planned:x?}"
        );
    }
    for (i, &p) in planned.iter().enumerate() {
        let size = |b: InvalidationRange| 1u128 << b.span().1;
        let tiles: u128 = given
            .iter()
            .enumerate()
            .filter(|&(k, &g)| {
                p.contains(g)
                    && !given
                        .iter()
                        .enumerate()
                        .any(|(j, &o)| j != k && o.contains(g) && (!g.contains(o) || j < k))
            })
            .map(|(_, &g)| size(g))
            .sum();
        assert_eq!(tiles, size(p), "{given:x?} -> {planned:x?}");
        for (j, &q) in planned.iter().enumerate() {
            assert!(i == j || !p.contains(q), "nested: {planned:x?}");
            let ((pf, pl), (qf, ql)) = (p.span(), q.span());
            assert!(
                i == j || pl != ql || pl >= 64 || pf ^ qf != 1 << pl,
                "two halves of one block: {planned:x?}"
            );
        }
    }
}

fn efr(raw: u64) {
    let e = Efr(raw);
    let _ = e.flags();
    assert!(e.host_levels().map_or(true, |l| (4..=6).contains(&l)));
    assert!(e.guest_levels().map_or(true, |l| l == 4 || l == 5));
    assert!(e.glx_sup() <= 3);
    assert!(e.pasid_bits() <= 32);
}

fn dte(raw: [u64; 4]) {
    let e = DeviceTableEntry(raw);
    assert_eq!(e.mode(), ((raw[0] >> 9) & 7) as u32);
    assert_eq!(e.domain_id(), raw[1] as u16);
    assert_eq!(e.root().get() & 0xFFF, 0);
    if let Some(g) = e.gcr3() {
        assert_eq!(g.get() & 0xFFF, 0);
        assert!(g.get() < 1 << 52);
    }
    if e.blocks_dma() {
        assert_eq!(e.mode(), 0);
        assert!(e.gcr3().is_none());
    }
}
