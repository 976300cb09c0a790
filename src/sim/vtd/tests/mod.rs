//! Model tests. Every table and descriptor is written by hand with raw 64-bit stores, the bits
//! computed here from the spec; nothing comes from the driver's encoders.

mod legacy;
mod queue;
mod registers;
mod scalable;

use super::*;
use crate::mem::PageAllocator;
use crate::sim::arena::ArenaConfig;
use crate::sim::walk::Access;

// Register offsets, spelled out again from the spec's register map (§11.4).
const R_GCMD: usize = 0x18;
const R_GSTS: usize = 0x1c;
const R_RTADDR: usize = 0x20;
const R_CCMD: usize = 0x28;
const R_FSTS: usize = 0x34;
const R_IQH: usize = 0x80;
const R_IQT: usize = 0x88;
const R_IQA: usize = 0x90;
const R_ICS: usize = 0x9c;
const R_IQERCD: usize = 0xb0;
/// QEMU's IRO 0xf: IVA_REG at 0xf0, IOTLB_REG at 0xf8.
const R_IVA: usize = 0xf0;
const R_IOTLB: usize = 0xf8;
/// QEMU's FRO 0x22: the first fault record at 0x220.
const R_FRCD: usize = 0x220;

const TE: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const QIE: u32 = 1 << 26;

/// Source-id 00:01.0 (bus 0, device 1, function 0) and its domain.
const SID: u16 = 0x0008;
const DID: u16 = 5;

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x8000_0000,
        capacity: 16 << 20,
    })
    .expect("arena")
}

/// A zeroed 4 KiB page; its physical address.
fn page(arena: &Arena) -> u64 {
    arena.alloc(12).expect("page").pa.get()
}

fn put(arena: &Arena, pa: u64, value: u64) {
    assert!(arena.write_u64(pa, value), "store outside a live page");
}

fn get(arena: &Arena, pa: u64) -> u64 {
    use crate::sim::arena::PhysMem;
    arena.read_u64(pa).expect("readable")
}

/// Latches `rtaddr` and turns translation on, checking each handshake.
fn enable(m: &VtdModel<'_>, rtaddr: u64) {
    m.write64(R_RTADDR, rtaddr);
    m.write32(R_GCMD, SRTP);
    assert_ne!(m.read32(R_GSTS) & SRTP, 0, "RTPS after SRTP");
    m.write32(R_GCMD, TE);
    assert_ne!(m.read32(R_GSTS) & TE, 0, "TES after TE");
}

/// An invalidation queue of one 4 KiB page (QS = 0), as a driver would run it.
struct Queue {
    base: u64,
    /// Descriptor size in bytes: 16 or 32.
    step: u64,
    tail: u64,
}

impl Queue {
    /// Sets IQA (DW from `wide`), IQT = 0 and enables QI, keeping TE as it is.
    fn enable(m: &VtdModel<'_>, arena: &Arena, wide: bool) -> Self {
        let base = page(arena);
        m.write64(R_IQA, base | u64::from(wide) << 11);
        m.write64(R_IQT, 0);
        let te = m.read32(R_GSTS) & TE;
        m.write32(R_GCMD, te | QIE);
        assert_ne!(m.read32(R_GSTS) & QIE, 0, "QIES after QIE");
        assert_eq!(m.read64(R_IQH), 0);
        Self {
            base,
            step: if wide { 32 } else { 16 },
            tail: 0,
        }
    }

    /// Writes `descs` (two qwords each; the upper half of a 256-bit slot stays zero) at the
    /// tail and rings IQT.
    fn submit(&mut self, m: &VtdModel<'_>, arena: &Arena, descs: &[[u64; 2]]) {
        for d in descs {
            self.write_at(arena, self.tail, *d);
            self.tail = (self.tail + self.step) % 4096;
        }
        m.write32(R_IQT, self.tail as u32);
    }

    fn write_at(&self, arena: &Arena, off: u64, d: [u64; 2]) {
        put(arena, self.base + off, d[0]);
        put(arena, self.base + off + 8, d[1]);
        if self.step == 32 {
            put(arena, self.base + off + 16, 0);
            put(arena, self.base + off + 24, 0);
        }
    }
}

// Descriptors (§6.5.2), built from the spec's field positions.
fn cc_global() -> [u64; 2] {
    [0x1 | 1 << 4, 0]
}
fn cc_domain(did: u16) -> [u64; 2] {
    [0x1 | 2 << 4 | u64::from(did) << 16, 0]
}
fn cc_device(did: u16, sid: u16, fm: u64) -> [u64; 2] {
    [
        0x1 | 3 << 4 | u64::from(did) << 16 | u64::from(sid) << 32 | fm << 48,
        0,
    ]
}
fn iotlb_global() -> [u64; 2] {
    [0x2 | 1 << 4, 0]
}
fn iotlb_domain(did: u16) -> [u64; 2] {
    [0x2 | 2 << 4 | u64::from(did) << 16, 0]
}
fn iotlb_page(did: u16, addr: u64, am: u64) -> [u64; 2] {
    [0x2 | 3 << 4 | u64::from(did) << 16, addr | am]
}
fn wait(status: u64, data: u32) -> [u64; 2] {
    [0x5 | 1 << 5 | u64::from(data) << 32, status]
}
fn piotlb_pasid(did: u16, pasid: u32) -> [u64; 2] {
    [
        0x6 | 2 << 4 | u64::from(did) << 16 | u64::from(pasid) << 32,
        0,
    ]
}
fn piotlb_page(did: u16, pasid: u32, addr: u64, am: u64) -> [u64; 2] {
    [
        0x6 | 3 << 4 | u64::from(did) << 16 | u64::from(pasid) << 32,
        addr | am,
    ]
}
fn pc_pasid(did: u16, pasid: u32) -> [u64; 2] {
    [
        0x7 | 1 << 4 | u64::from(did) << 16 | u64::from(pasid) << 32,
        0,
    ]
}
fn pc_domain(did: u16) -> [u64; 2] {
    [0x7 | u64::from(did) << 16, 0]
}
