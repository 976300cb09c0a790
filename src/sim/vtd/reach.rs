//! What the unit can still reach (VT-d spec rev 4.1, §3.4 root, context and PASID tables, §3.6 /
//! §3.7 page tables, chapter 6 the caches, §6.5.2 the invalidation queue): while translation is
//! on, every structure a walk from the latched root table, from a cached context or PASID
//! entry, or from a cached paging-structure entry could read; and the invalidation queue while
//! queued invalidation is on.
//!
//! A page in this set must not be returned to the allocator: the check a test makes after
//! every step of an error path ([`VtdModel::reachable`](super::VtdModel::reachable)). The walk
//! decodes with the model's own field positions (§9.1-§9.6), reads nothing it cannot read, and
//! reports an address it could not read as reachable too, so that a freed table shows up.

use std::collections::BTreeSet;

use super::cache::{CachedContext, Pgtt};
use super::regs::*;
use super::{bits, RootMode, State};

/// Entries of a 4 KiB page-table page.
const ENTRIES: u64 = 512;

/// Which page-table format a tree walk decodes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Second stage: present when R or W (bits 1:0), PS bit 7 above level 1.
    Second,
    /// First stage: present bit 0, PS bit 7 above level 1.
    First,
}

impl State<'_> {
    /// The base address of every structure the unit could read now (4 KiB granular; a PASID
    /// directory larger than a page contributes each of its pages).
    pub(crate) fn reachable(&self) -> BTreeSet<u64> {
        let mut out = BTreeSet::new();
        self.queue_pages(&mut out);
        // With translation off the unit walks nothing and uses no cached translation (a
        // driver invalidates every cache globally before it turns translation on again).
        if self.gsts & G_TE == 0 {
            return out;
        }
        if let Some(root) = self.root {
            match root.mode {
                RootMode::Legacy => self.legacy_root(root.addr, &mut out),
                RootMode::Scalable => self.scalable_root(root.addr, &mut out),
                RootMode::Invalid => {}
            }
        }
        for c in self.caches.context.values() {
            match *c {
                CachedContext::Legacy(l) if l.tt != 2 => {
                    self.tree(l.slptptr, l.levels, Format::Second, &mut out)
                }
                CachedContext::Scalable(s) => self.directory(s.pasid_dir, s.pdts, &mut out),
                _ => {}
            }
        }
        for pe in self.caches.pasid.values() {
            self.pasid_tables(
                pe.pgtt,
                pe.ssptptr,
                pe.ss_levels,
                pe.fsptptr,
                pe.fs_levels,
                &mut out,
            );
        }
        for e in self.caches.psc.values() {
            // The cached entry points at a table mapping 2^span bytes: its subtree.
            let levels = (e.span.saturating_sub(12) / 9) as u8;
            let format = match e.kind {
                super::cache::EntryKind::FirstStage => Format::First,
                _ => Format::Second,
            };
            self.tree(e.value & self.addr_mask(), levels, format, &mut out);
        }
        out
    }

    /// The invalidation queue's pages while queued invalidation is on.
    fn queue_pages(&self, out: &mut BTreeSet<u64>) {
        if self.gsts & G_QIE != 0 {
            let base = self.iqa & IQA_BASE;
            for i in 0..1u64 << (self.iqa & IQA_QS) {
                out.insert(base + i * 4096);
            }
        }
    }

    fn addr_mask(&self) -> u64 {
        bits(63, 12) & !self.above_haw()
    }

    fn legacy_root(&self, root: u64, out: &mut BTreeSet<u64>) {
        out.insert(root);
        for bus in 0..256u64 {
            let Some(lo) = self.read(root + bus * 16) else {
                return;
            };
            if lo & 1 == 0 {
                continue;
            }
            let table = lo & self.addr_mask();
            out.insert(table);
            for devfn in 0..256u64 {
                let (Some(lo), Some(hi)) = (
                    self.read(table + devfn * 16),
                    self.read(table + devfn * 16 + 8),
                ) else {
                    break;
                };
                let tt = (lo >> 2) & 3;
                if lo & 1 == 0 || tt == 2 {
                    continue;
                }
                if let Some(levels) = self.levels_for_aw(hi & 7) {
                    self.tree(lo & self.addr_mask(), levels, Format::Second, out);
                }
            }
        }
    }

    fn scalable_root(&self, root: u64, out: &mut BTreeSet<u64>) {
        out.insert(root);
        for half in 0..512u64 {
            let Some(e) = self.read(root + half * 8) else {
                return;
            };
            if e & 1 == 0 {
                continue;
            }
            let table = e & self.addr_mask();
            out.insert(table);
            for index in 0..128u64 {
                let Some(q0) = self.read(table + index * 32) else {
                    break;
                };
                if q0 & 1 != 0 {
                    let pdts = ((q0 >> 9) & 7) as u8;
                    self.directory(q0 & self.addr_mask(), pdts, out);
                }
            }
        }
    }

    /// A PASID directory of `2^(pdts + 7)` entries and the PASID tables below it.
    fn directory(&self, dir: u64, pdts: u8, out: &mut BTreeSet<u64>) {
        let entries = 1u64 << (u32::from(pdts) + 7);
        for page in 0..(entries * 8).div_ceil(4096) {
            out.insert(dir + page * 4096);
        }
        for i in 0..entries {
            let Some(d) = self.read(dir + i * 8) else {
                return;
            };
            if d & 1 == 0 {
                continue;
            }
            let table = d & self.addr_mask();
            out.insert(table);
            for p in 0..64u64 {
                let e = table + p * 64;
                let (Some(q0), Some(q2)) = (self.read(e), self.read(e + 16)) else {
                    break;
                };
                if q0 & 1 == 0 {
                    continue;
                }
                let pgtt = match (q0 >> 6) & 7 {
                    1 => Pgtt::FirstStage,
                    2 => Pgtt::SecondStage,
                    3 => Pgtt::Nested,
                    _ => continue,
                };
                let ss = self.levels_for_aw((q0 >> 2) & 7).unwrap_or(0);
                let fs = if (q2 >> 2) & 3 == 1 { 5 } else { 4 };
                let (ssptptr, fsptptr) = (q0 & self.addr_mask(), q2 & self.addr_mask());
                self.pasid_tables(pgtt, ssptptr, ss, fsptptr, fs, out);
            }
        }
    }

    fn pasid_tables(
        &self,
        pgtt: Pgtt,
        ssptptr: u64,
        ss_levels: u8,
        fsptptr: u64,
        fs_levels: u8,
        out: &mut BTreeSet<u64>,
    ) {
        if matches!(pgtt, Pgtt::SecondStage | Pgtt::Nested) {
            self.tree(ssptptr, ss_levels, Format::Second, out);
        }
        if matches!(pgtt, Pgtt::FirstStage) {
            self.tree(fsptptr, fs_levels, Format::First, out);
        }
        // A nested first-stage table lives in guest-physical space: not a host page.
    }

    /// A page table of `levels` levels at `table`, and every table below it.
    fn tree(&self, table: u64, levels: u8, format: Format, out: &mut BTreeSet<u64>) {
        if levels == 0 || !out.insert(table) {
            return;
        }
        for i in 0..ENTRIES {
            let Some(e) = self.read(table + i * 8) else {
                return;
            };
            let present = match format {
                Format::Second => e & 3 != 0,
                Format::First => e & 1 != 0,
            };
            if !present || levels == 1 || e & 1 << 7 != 0 {
                continue;
            }
            self.tree(e & self.addr_mask(), levels - 1, format, out);
        }
    }
}
