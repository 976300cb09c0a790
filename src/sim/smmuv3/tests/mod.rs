//! Tests of the SMMUv3 model. Every structure is built by hand with raw 64-bit words from the
//! spec's field positions (never the driver's encoders).

mod cmdq;
mod faults;
mod regs;
mod tlb;
mod translate;

use std::vec::Vec;

use super::{op, SmmuModel, SmmuModelConfig};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;
use crate::sim::arena::{Arena, PhysMem};

pub(super) const CR0: usize = 0x20;
pub(super) const CR0ACK: usize = 0x24;
pub(super) const GBPA: usize = 0x44;
pub(super) const GERROR: usize = 0x60;
pub(super) const GERRORN: usize = 0x64;
pub(super) const STRTAB_BASE: usize = 0x80;
pub(super) const STRTAB_BASE_CFG: usize = 0x88;
pub(super) const CMDQ_BASE: usize = 0x90;
pub(super) const CMDQ_PROD: usize = 0x98;
pub(super) const CMDQ_CONS: usize = 0x9c;
pub(super) const EVENTQ_BASE: usize = 0xa0;
pub(super) const EVENTQ_PROD: usize = 0x100a8;
pub(super) const EVENTQ_CONS: usize = 0x100ac;

pub(super) const SMMUEN: u32 = 1;
pub(super) const EVENTQEN: u32 = 1 << 2;
pub(super) const CMDQEN: u32 = 1 << 3;

/// Stage-2 leaf: valid page/block, MemAttr = 0b1111 (Normal WB), S2AP = RW, SH = inner, AF.
pub(super) const S2_RW_WB: u64 = 0xf << 2 | 3 << 6 | 3 << 8 | 1 << 10;
/// Stage-1 leaf: AttrIndx 0, AP = EL0 RW, SH = inner, AF, nG.
pub(super) const S1_RW: u64 = 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11;

/// An arena, and a model over it with queues and a stream table set up.
pub(super) struct Rig {
    pub arena: Arena,
    pub strtab: u64,
    pub cmdq: u64,
    pub cmdq_log2: u32,
    pub eventq: u64,
    pub eventq_log2: u32,
}

impl Rig {
    pub fn new() -> Self {
        let arena = Arena::with_defaults().unwrap();
        let page = |a: &Arena| a.alloc(12).unwrap().pa.get();
        Rig {
            strtab: page(&arena),
            cmdq: page(&arena),
            cmdq_log2: 4,
            eventq: page(&arena),
            eventq_log2: 5,
            arena,
        }
    }

    pub fn page(&self) -> u64 {
        self.arena.alloc(12).unwrap().pa.get()
    }

    pub fn w(&self, pa: u64, v: u64) {
        assert!(self.arena.write_u64(pa, v), "write {pa:#x}");
    }

    pub fn r(&self, pa: u64) -> u64 {
        self.arena.read_u64(pa).unwrap()
    }

    /// A model with the linear stream table (64 STEs), command and event queues, enabled.
    pub fn model(&self, cfg: SmmuModelConfig) -> SmmuModel<'_> {
        let m = SmmuModel::new(&self.arena, cfg);
        m.write64(STRTAB_BASE, self.strtab);
        m.write32(STRTAB_BASE_CFG, 6);
        m.write64(CMDQ_BASE, self.cmdq | u64::from(self.cmdq_log2));
        m.write64(EVENTQ_BASE, self.eventq | u64::from(self.eventq_log2));
        m.write32(CR0, SMMUEN | EVENTQEN | CMDQEN);
        assert_eq!(m.read32(CR0ACK), SMMUEN | EVENTQEN | CMDQEN);
        m
    }

    /// Writes an STE (valid word 0 last).
    pub fn ste(&self, sid: u32, words: [u64; 4]) {
        let base = self.strtab + u64::from(sid) * 64;
        for i in (0..4).rev() {
            self.w(base + 8 * i as u64, words[i]);
        }
    }

    /// Queues `cmds` at CMDQ_PROD and rings the doorbell once.
    pub fn submit(&self, m: &SmmuModel<'_>, cmds: &[[u64; 2]]) {
        let mask = (2u32 << self.cmdq_log2) - 1;
        let mut prod = m.read32(CMDQ_PROD) & mask;
        for c in cmds {
            let slot = self.cmdq + u64::from(prod & ((1 << self.cmdq_log2) - 1)) * 16;
            self.w(slot, c[0]);
            self.w(slot + 8, c[1]);
            prod = (prod + 1) & mask;
        }
        m.doorbell32(CMDQ_PROD, prod);
    }

    /// Maps one leaf of `2^size_log2` bytes at `va` -> `pa` in a 4 KiB-granule table whose
    /// root (at `start_level`) is `root`, allocating tables on the way.
    pub fn map(&self, root: u64, start_level: u32, va: u64, pa: u64, size_log2: u32, attrs: u64) {
        let leaf_level = 3 - (size_log2 - 12) / 9;
        let mut table = root;
        for level in start_level..=leaf_level {
            let shift = 12 + 9 * (3 - level);
            let slot = table + ((va >> shift) & 0x1ff) * 8;
            if level == leaf_level {
                let kind = if level == 3 { 3 } else { 1 };
                self.w(slot, pa | attrs | kind);
                return;
            }
            let desc = self.r(slot);
            table = if desc & 1 == 0 {
                let next = self.page();
                self.w(slot, next | 3);
                next
            } else {
                desc & 0xffff_ffff_f000
            };
        }
    }

    /// The slot holding the level-`level` descriptor for `va` (tables must exist).
    pub fn slot(&self, root: u64, start_level: u32, va: u64, level: u32) -> u64 {
        let mut table = root;
        for l in start_level..level {
            let shift = 12 + 9 * (3 - l);
            table = self.r(table + ((va >> shift) & 0x1ff) * 8) & 0xffff_ffff_f000;
        }
        table + ((va >> (12 + 9 * (3 - level))) & 0x1ff) * 8
    }
}

/// STE words for stage 2 only: VMID, 4 KiB granule, IAS 32 (S2T0SZ = 32, S2SL0 = 1: start at
/// level 1), S2PS = 40 bits, S2AA64, S2R, root `ttb`.
pub(super) fn ste_s2(vmid: u16, ttb: u64) -> [u64; 4] {
    [1 | 6 << 1, 1 << 44, s2_dw2(vmid), ttb]
}

pub(super) fn s2_dw2(vmid: u16) -> u64 {
    u64::from(vmid) | 32 << 32 | 1 << 38 | 1 << 40 | 1 << 42 | 3 << 44 | 2 << 48 | 1 << 51 | 1 << 58
}

/// STE words for stage 1 with a linear CD table at `cdtab` of 2^`cdmax` CDs (S1DSS given).
pub(super) fn ste_s1(cdtab: u64, cdmax: u64, dss: u64) -> [u64; 4] {
    [1 | 5 << 1 | cdtab | cdmax << 59, dss | 1 << 44, 0, 0]
}

/// CD words: IAS 32 (T0SZ = 32, start level 1), 4 KiB, IPS = 40 bits, AA64, R, A, EPD1, V,
/// ASID, TTB0 `ttb`, MAIR attr 0 = Normal WB.
pub(super) fn cd(asid: u16, ttb: u64) -> [u64; 4] {
    let dw0 = 32
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | 2 << 32
        | 1 << 41
        | 1 << 45
        | 1 << 46
        | u64::from(asid) << 48;
    [dw0, ttb, 0, 0xff]
}

pub(super) fn write_cd(rig: &Rig, addr: u64, words: [u64; 4]) {
    for i in (0..4).rev() {
        rig.w(addr + 8 * i as u64, words[i]);
    }
}

/// Raw commands, encoded here from §4's field positions.
pub(super) mod cmd {
    pub fn cfgi_ste(sid: u32) -> [u64; 2] {
        [0x03 | u64::from(sid) << 32, 1]
    }
    pub fn cfgi_ste_range(sid: u32, range: u64) -> [u64; 2] {
        [0x04 | u64::from(sid) << 32, range]
    }
    pub fn cfgi_cd(sid: u32, ssid: u32) -> [u64; 2] {
        [0x05 | u64::from(ssid) << 12 | u64::from(sid) << 32, 1]
    }
    pub fn cfgi_cd_all(sid: u32) -> [u64; 2] {
        [0x06 | u64::from(sid) << 32, 0]
    }
    pub fn tlbi_nh_asid(vmid: u16, asid: u16) -> [u64; 2] {
        [0x11 | u64::from(vmid) << 32 | u64::from(asid) << 48, 0]
    }
    pub fn tlbi_nh_va(vmid: u16, asid: u16, va: u64, leaf: bool) -> [u64; 2] {
        [
            0x12 | u64::from(vmid) << 32 | u64::from(asid) << 48,
            va & !0xfff | u64::from(leaf),
        ]
    }
    pub fn tlbi_nh_all(vmid: u16) -> [u64; 2] {
        [0x10 | u64::from(vmid) << 32, 0]
    }
    pub fn tlbi_s2_ipa(vmid: u16, ipa: u64, leaf: bool) -> [u64; 2] {
        [0x2a | u64::from(vmid) << 32, ipa & !0xfff | u64::from(leaf)]
    }
    /// Range form: TG = 4 KiB, `num + 1` << `scale` pages, TTL level `ttl`.
    pub fn tlbi_s2_ipa_range(vmid: u16, ipa: u64, num: u64, scale: u64, ttl: u64) -> [u64; 2] {
        [
            0x2a | num << 12 | scale << 20 | u64::from(vmid) << 32,
            ipa & !0xfff | 1 << 10 | ttl << 8,
        ]
    }
    pub fn tlbi_s12_vmall(vmid: u16) -> [u64; 2] {
        [0x28 | u64::from(vmid) << 32, 0]
    }
    pub fn tlbi_nsnh_all() -> [u64; 2] {
        [0x30, 0]
    }
    pub fn sync() -> [u64; 2] {
        [0x46, 0]
    }
    pub fn sync_msi(addr: u64, data: u32) -> [u64; 2] {
        [0x46 | 1 << 12 | u64::from(data) << 32, addr]
    }
}

/// The events in the queue, consuming them (moves EVENTQ_CONS).
pub(super) fn drain_events(rig: &Rig, m: &SmmuModel<'_>) -> Vec<super::EventRecord> {
    let ev = m.pending_events();
    let prod = m.read32(EVENTQ_PROD);
    m.write32(EVENTQ_CONS, prod & ((2 << rig.eventq_log2) - 1));
    ev
}
