//! What the SMMU can still reach: every page it may read or write through its registers, the
//! structures in memory and its caches. Arm IHI 0070 G.b §3.3 (stream table, L1STD), §3.3.2
//! (CD tables, L1CD), §5.2 (STE), §5.4 (CD), §3.21 (what may stay cached until invalidated).
//!
//! A test compares this with the allocator's live pages: a page freed while it is in here is
//! one the hardware may still walk or write (a use after free by DMA). The walk uses the model's
//! own decoders and the reference walkers of [`crate::sim::walk`], not the driver's.
//!
//! The walk follows: the queue bases while their queues are enabled (in CR0 or CR0ACK); the
//! stream table and the caches while translation is (SMMUEN in CR0 or CR0ACK: with SMMUEN = 0
//! the SMMU walks nothing, and software invalidates every cache before it sets SMMUEN again,
//! as §6.3.9 initialisation does); every legal STE in the
//! table or in the STE cache to its CD table (linear, or L1CD then leaves, addresses taken as
//! PAs) and its stage-2 table; every legal CD in the table or in the CD cache to its stage-1
//! table; cached L1 descriptors to their leaves; walk-cache entries to the table they read. TLB
//! and walk-cache entries also report the tags (VMID, ASID) they are held under.

use std::collections::BTreeSet;
use std::vec::Vec;

use super::cd;
use super::config::SmmuModelConfig;
use super::regs::{cr0, qbase, strtab_cfg, Regs, STRTAB_ADDR_MASK};
use super::ste::{self, S1Context};
use super::strtab::{cd_address, cd_split, fetch_cd, fetch_ste, ste_address, strtab_split};
use super::tlb::{Caches, Regime};
use super::State;
use crate::sim::arena::{Arena, PhysMem};
use crate::sim::walk::{arm_s1, arm_s2};

/// Everything the SMMU can reach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// (base address, what) of every structure the SMMU may access, by address: stream table
    /// and its level-2 tables, CD tables and their leaves, translation tables, queues.
    pub structures: Vec<(u64, &'static str)>,
    /// The tags of every TLB and walk-cache entry: (VMID, ASID for stage-1 and combined
    /// entries).
    pub tags: BTreeSet<(u16, Option<u16>)>,
}

impl Reach {
    /// Whether some structure lies in `[pa, pa + 2^size_log2)`.
    pub fn touches(&self, pa: u64, size_log2: u32) -> bool {
        let end = pa.saturating_add(1u64 << size_log2.min(63));
        self.structures.iter().any(|&(a, _)| a >= pa && a < end)
    }
}

struct Walk<'a> {
    mem: &'a Arena,
    cfg: &'a SmmuModelConfig,
    out: BTreeSet<(u64, &'static str)>,
}

impl Walk<'_> {
    fn add(&mut self, pa: u64, what: &'static str) {
        self.out.insert((pa, what));
    }

    fn ste(&mut self, words: &[u64; 8]) {
        let Ok(ste) = ste::decode(self.cfg, words) else {
            return;
        };
        if let Some(s2) = ste.s2 {
            self.add(s2.walk.ttb.get(), "stage-2 table");
            if let Ok(pages) = arm_s2::table_pages(self.mem, &s2.walk) {
                for p in pages {
                    self.add(p.get(), "stage-2 table");
                }
            }
        }
        if let Some(s1) = ste.s1 {
            self.cd_table(&s1);
        }
    }

    fn cd_table(&mut self, s1: &S1Context) {
        self.add(s1.ptr, "CD table");
        let count = 1u64 << s1.cdmax.min(20);
        if s1.fmt != 0 {
            let split = cd_split(s1.fmt);
            for l1 in 0..count.div_ceil(1 << split) {
                if let Some(desc) = self.mem.read_u64(s1.ptr + 8 * l1) {
                    if desc & 1 != 0 {
                        self.add(desc & ((1 << 52) - 1) & !0xfff, "CD table leaf");
                    }
                }
            }
        }
        for ssid in 0..count {
            let Ok(addr) = cd_address(s1, self.mem, ssid as u32, 0) else {
                continue;
            };
            if let Ok(words) = fetch_cd(self.mem, addr, 0) {
                self.cd(&words);
            }
        }
    }

    fn cd(&mut self, words: &[u64; 8]) {
        if let Ok(cd) = cd::decode(self.cfg, words) {
            if !cd.epd0 {
                self.add(cd.walk.ttb.get(), "stage-1 table");
                if let Ok(pages) = arm_s1::table_pages(self.mem, &cd.walk) {
                    for p in pages {
                        self.add(p.get(), "stage-1 table");
                    }
                }
            }
        }
    }

    fn stream_table(&mut self, regs: &Regs) {
        let base = regs.strtab_base & STRTAB_ADDR_MASK;
        self.add(base, "stream table");
        let log2 = (regs.strtab_base_cfg & strtab_cfg::LOG2SIZE_MASK).min(self.cfg.sid_bits());
        let two_level = (regs.strtab_base_cfg >> strtab_cfg::FMT_SHIFT) & strtab_cfg::FMT_MASK == 1;
        let count = 1u64 << log2.min(24);
        if two_level {
            let split = strtab_split(regs).min(log2);
            for l1 in 0..count >> split {
                if let Some(desc) = self.mem.read_u64(base + 8 * l1) {
                    if desc & 0x1f != 0 {
                        self.add(desc & ((1 << 52) - 1) & !0x3f, "stream table leaf");
                    }
                }
            }
        }
        for sid in 0..count {
            let Ok(addr) = ste_address(self.cfg, regs, self.mem, sid as u32) else {
                continue;
            };
            if let Ok(words) = fetch_ste(self.mem, addr) {
                self.ste(&words);
            }
        }
    }

    fn caches(&mut self, caches: &Caches) -> BTreeSet<(u16, Option<u16>)> {
        for words in caches.ste.values() {
            self.ste(words);
        }
        for (ptr, words) in caches.cd.values() {
            self.add(*ptr, "CD table (cached pointer)");
            self.cd(words);
        }
        for e in caches.l1std.values() {
            self.add(
                e.desc & ((1 << 52) - 1) & !0x3f,
                "stream table leaf (cached)",
            );
        }
        for e in caches.l1cd.values() {
            self.add(e.desc & ((1 << 52) - 1) & !0xfff, "CD table leaf (cached)");
        }
        let mut tags = BTreeSet::new();
        let tag = |r: &Regime| match *r {
            Regime::S1 { vmid, asid } | Regime::Nested { vmid, asid } => (vmid, Some(asid)),
            Regime::S2 { vmid } => (vmid, None),
        };
        for w in &caches.walk {
            self.add(w.entry_pa & !0xfff, "table (walk cache)");
            tags.insert(tag(&w.regime));
        }
        for t in &caches.tlb {
            tags.insert(tag(&t.regime));
        }
        tags
    }
}

/// The walk of [`SmmuModel::reachable`](super::SmmuModel::reachable).
pub(crate) fn reachable(state: &State, mem: &Arena, cfg: &SmmuModelConfig) -> Reach {
    let regs = &state.regs;
    let mut w = Walk {
        mem,
        cfg,
        out: BTreeSet::new(),
    };
    let on = |bit: u32| (regs.cr0ack | regs.cr0) & bit != 0;
    if on(cr0::CMDQEN) {
        w.add(regs.cmdq_base & qbase::ADDR_MASK, "command queue");
    }
    if on(cr0::EVENTQEN) {
        w.add(regs.eventq_base & qbase::ADDR_MASK, "event queue");
    }
    let mut tags = BTreeSet::new();
    if on(cr0::SMMUEN) {
        if regs.strtab_base & STRTAB_ADDR_MASK != 0 {
            w.stream_table(regs);
        }
        tags = w.caches(&state.caches);
    }
    Reach {
        structures: w.out.into_iter().collect(),
        tags,
    }
}
