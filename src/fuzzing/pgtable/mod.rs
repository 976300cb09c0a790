//! Page-table targets: arbitrary configurations and operation sequences, each step checked
//! against a shadow model, the engine's own enumeration and the independent reference walker.
//!
//! The fuzzer works in a window of `2 << (granule_log2 - 3)` granules (two of the smallest
//! blocks: 4 MiB with 4 KiB pages, 64 MiB with 16 KiB, 1 GiB with 64 KiB), placed at IOVA 0, at
//! the top of the input range or anywhere block-aligned, with output addresses at 0, at the top
//! of the output range or anywhere. Larger pages than the window allows (1 GiB with 4 KiB
//! pages) are the conformance suite's business (`tests/pgtable_conformance.rs`).
//!
//! After every operation:
//! - the operation's result is the one the model predicts (overlap, split refused or
//!   unsupported, bytes unmapped, dirty leaves reported, injected allocation failure), and a
//!   failed operation allocated and freed nothing;
//! - [`PageTable::for_each_mapping`] over what the operation touched equals the model: its
//!   range and one granule either side, and what is left of every larger page or contiguous
//!   run it cut (of a range longer than 32 granules, its first and last 16), every leaf that
//!   intersects them in whole; every [`FULL_CHECK_EVERY`] steps, the whole window;
//! - the reference walker translates every granule the operation touched and every granule
//!   of the larger pages it cut (sampled for large ranges, plus both neighbours) as the model
//!   says, output address and rights;
//! - the arena's live pages are exactly the tables the walker reaches plus the pages the pending
//!   gather holds; a page unlinked from the table stays live until the gather is released, and is
//!   freed then; the arena saw no double or unknown free;
//! - the pending gather's ranges cover every granule whose translation was removed or changed.
//!
//! At the end the whole table is compared leaf by leaf through the walker, destroyed, and every
//! page must be back in the arena.
//!
//! The checks are incremental so that the engine, not the checking, takes most of the time:
//! the model keeps runs of granules (`shadow.rs`), each step compares only what it touched, and
//! a change anywhere else (a stray write) is caught by the next full comparison or the final
//! walk. Inputs run on one arena per thread, reset between inputs (`super::with_arena`).

mod concurrent;
mod shadow;
mod subjects;

pub use self::concurrent::concurrent;

use std::collections::BTreeSet;
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use self::shadow::{Segments, Shadow};
use self::subjects::{
    AmdV1Subject, AmdV2Subject, ArmS1Subject, ArmS2Subject, Seen, Subject, VtdFsSubject,
    VtdSsSubject,
};
use crate::mem::{Iova, PhysAddr, WalkerCoherency};
use crate::pgtable::{
    Error, Format, Gather, InvalidationComplete, IovaRange, PageTable, Prot, SplitPolicy,
};
use crate::sim::{Arena, ArenaConfig, FailPolicy, PhysMem};

/// Most operations one input runs.
const MAX_OPS: usize = 48;
/// Every this many steps the engine's enumeration of the whole window is checked (each step
/// checks what it touched; the end of the input checks everything through the walker).
pub const FULL_CHECK_EVERY: usize = 8;
/// Granules at each end of a long operation's range that every step compares through the
/// engine's enumeration (widened to whole leaves).
const ENDS: u64 = 16;
/// Most granules of one operation's range the walker checks one by one, besides its ends
/// (where they fall moves from step to step; the final walk sees every granule).
const MAX_PROBES: u64 = 16;

/// Target `pgtable_vtd_ss`: VT-d second stage.
pub fn vtd_ss(data: &[u8]) {
    run::<VtdSsSubject>(data, VtdSsSubject::draw);
}

/// Target `pgtable_vtd_fs`: VT-d first stage.
pub fn vtd_fs(data: &[u8]) {
    run::<VtdFsSubject>(data, VtdFsSubject::draw);
}

/// Target `pgtable_arm_s2_4k`: Arm stage 2, 4 KiB granule.
pub fn arm_s2_4k(data: &[u8]) {
    run::<ArmS2Subject>(data, |u| ArmS2Subject::draw_granule(u, 12));
}

/// Target `pgtable_arm_s2_16k`: Arm stage 2, 16 KiB granule.
pub fn arm_s2_16k(data: &[u8]) {
    run::<ArmS2Subject>(data, |u| ArmS2Subject::draw_granule(u, 14));
}

/// Target `pgtable_arm_s2_64k`: Arm stage 2, 64 KiB granule.
pub fn arm_s2_64k(data: &[u8]) {
    run::<ArmS2Subject>(data, |u| ArmS2Subject::draw_granule(u, 16));
}

/// Target `pgtable_arm_s1`: Arm stage 1, any granule.
pub fn arm_s1(data: &[u8]) {
    run::<ArmS1Subject>(data, ArmS1Subject::draw);
}

/// Target `pgtable_amdvi_v1`: AMD-Vi v1 host tables, 1 to 6 levels, size-encoded pages.
pub fn amdvi_v1(data: &[u8]) {
    run::<AmdV1Subject>(data, AmdV1Subject::draw);
}

/// Target `pgtable_amdvi_v2`: AMD-Vi v2 guest tables (x86-64 4/5-level paging).
pub fn amdvi_v2(data: &[u8]) {
    run::<AmdV2Subject>(data, AmdV2Subject::draw);
}

/// One step of a sequence. Granule positions are taken modulo the window.
#[derive(Arbitrary, Debug)]
enum Op {
    /// Map `count` granules from `first`; `pa_shift` bit 7 shifts the output address by
    /// `pa_shift & 63` granules (so that large pages are sometimes impossible).
    Map {
        first: u16,
        count: u16,
        pa_shift: u8,
        prot: u8,
    },
    /// Unmap `count` granules from `first` into the pending gather.
    Unmap { first: u16, count: u16 },
    /// Query one granule (at an arbitrary byte offset in it).
    Query { at: u16, offset: u16 },
    /// The device writes through the leaf at `at` (hardware dirty marking).
    DeviceWrite { at: u16 },
    /// Read and clear the dirty state of `count` granules from `first`.
    ReadClearDirty { first: u16, count: u16 },
    /// The invalidation completed: release the pending gather.
    Flush,
    /// The next operation's `n`-th page allocation fails.
    FailAlloc { n: u8 },
    /// Refuse (or allow) splitting larger pages.
    SetSplit { refuse: bool },
    /// Unlink tables left empty by partial unmaps.
    Reclaim,
    /// Map with raw arguments (alignment, range, overflow and permission errors).
    MapRaw {
        iova: u64,
        pa: u64,
        len: u64,
        prot: u8,
    },
    /// Unmap with raw arguments.
    UnmapRaw { iova: u64, len: u64 },
}

/// The state one input runs against.
struct Harness<'a, S: Subject> {
    subject: S,
    mem: &'a Arena,
    table: PageTable<S::F, &'a Arena>,
    gran_log2: u32,
    /// First IOVA of the window.
    base: u64,
    /// Window size in granules.
    window: u64,
    /// Output address of window granule 0 when not shifted.
    pa_base: u64,
    /// Granule index in the window -> what is mapped there.
    model: Shadow,
    gather: Gather,
    /// Table pages unlinked into the pending gather (must stay live until it is released).
    unlinked: BTreeSet<u64>,
    /// Table pages the walker reached after the last step.
    reachable: BTreeSet<u64>,
    /// Granule ranges `[start, end)` whose translation changed since the gather was last
    /// released.
    changed: Vec<(u64, u64)>,
    fail_armed: bool,
    /// The arena ran out of pages (not injected): the input ends after this step.
    exhausted: bool,
    steps: usize,
}

fn done() -> InvalidationComplete {
    // SAFETY: no hardware walks the fuzzer's tables; the reference walker has no caches.
    unsafe { InvalidationComplete::assume() }
}

fn run<S: Subject>(data: &[u8], draw: fn(&mut Unstructured<'_>) -> arbitrary::Result<Option<S>>) {
    let mut u = Unstructured::new(data);
    let Ok(Some(subject)) = draw(&mut u) else {
        return;
    };
    let Ok(placement) = <(u8, u64, u8, u64, bool, bool)>::arbitrary(&mut u) else {
        return;
    };
    let g = *subject.format().geometry();
    let config = ArenaConfig {
        // Table pages high in the output range: PA != VA, wide addresses exercised.
        base_pa: (1u64 << g.oas.min(62)) - (1 << 30),
        // Small, so that running out is reachable. An input that exhausts it ends early
        // (`out_of_memory`).
        capacity: arena_capacity(&g),
    };
    super::with_arena(config, |mem| run_on(mem, subject, placement, &mut u));
}

fn run_on<S: Subject>(
    mem: &Arena,
    subject: S,
    placement: (u8, u64, u8, u64, bool, bool),
    u: &mut Unstructured<'_>,
) {
    let coherency = if placement.4 {
        WalkerCoherency::NonCoherent
    } else {
        WalkerCoherency::Coherent
    };
    let mut table = PageTable::new(subject.format(), mem, coherency).expect("new table");
    if placement.5 {
        table.set_split_policy(SplitPolicy::Refuse);
    }
    let mut h = Harness::new(subject, mem, table, placement);
    let mut ops = 0;
    while ops < MAX_OPS && !h.exhausted {
        let Ok(op) = Op::arbitrary(u) else {
            break;
        };
        h.step(op);
        ops += 1;
    }
    h.finish();
}

/// 64 granules plus room for two roots (a concatenated root may be 16 granules), in MiB.
fn arena_capacity(g: &crate::pgtable::Geometry) -> usize {
    let bytes = (64usize << g.granule_log2) + (2usize << g.root_size_log2());
    bytes.next_multiple_of(1 << 20)
}

/// Picks a block-aligned start among 0, the top, or anywhere below `1 << bits`.
fn place(sel: u8, raw: u64, bits: u32, span: u64, align_log2: u32) -> u64 {
    let limit = 1u64.checked_shl(bits).unwrap_or(0).wrapping_sub(1);
    let top = (limit - (span - 1)) & !((1u64 << align_log2) - 1);
    match sel % 3 {
        0 => 0,
        1 => top,
        _ => (raw & limit).min(top) & !((1u64 << align_log2) - 1),
    }
}

impl<'a, S: Subject> Harness<'a, S> {
    fn new(
        subject: S,
        mem: &'a Arena,
        table: PageTable<S::F, &'a Arena>,
        placement: (u8, u64, u8, u64, bool, bool),
    ) -> Self {
        let g = *table.geometry();
        let gran_log2 = g.granule_log2;
        let window = 2u64 << (gran_log2 - 3);
        let block_log2 = gran_log2 + (gran_log2 - 3);
        let span = window << gran_log2;
        let base = place(placement.0, placement.1, g.ias, span, block_log2);
        // Room for the largest output shift above the window.
        let pa_span = (window + 64) << gran_log2;
        let pa_base = place(placement.2, placement.3, g.oas, pa_span, block_log2);
        let mut h = Self {
            subject,
            mem,
            table,
            gran_log2,
            base,
            window,
            pa_base,
            model: Shadow::new(gran_log2),
            gather: Gather::new(),
            unlinked: BTreeSet::new(),
            reachable: BTreeSet::new(),
            changed: Vec::new(),
            fail_armed: false,
            exhausted: false,
            steps: 0,
        };
        h.reachable = h.window_tables();
        h
    }

    fn gran(&self) -> u64 {
        1 << self.gran_log2
    }

    fn iova_of(&self, index: u64) -> u64 {
        self.base + (index << self.gran_log2)
    }

    /// Records that the translation of granules `[start, end)` changed.
    fn note_changed(&mut self, start: u64, end: u64) {
        match self.changed.last_mut() {
            Some(last) if last.1 == start => last.1 = end,
            _ => self.changed.push((start, end)),
        }
    }

    /// `(first, count)` inside the window from raw fuzzer values.
    fn range(&self, first: u16, count: u16) -> (u64, u64) {
        let first = u64::from(first) % self.window;
        let count = 1 + u64::from(count) % (self.window - first);
        (first, count)
    }

    /// A `NoMemory` result is legitimate only when injected or when the arena is nearly full.
    fn out_of_memory(&mut self) {
        if self.fail_armed {
            return;
        }
        let stats = self.mem.stats();
        let largest = 1u64 << self.table.geometry().root_size_log2();
        let capacity = arena_capacity(self.table.geometry()) as u64;
        assert!(
            stats.live_bytes + 8 * largest.max(16 << self.gran_log2) > capacity,
            "NoMemory without injection, {} of {capacity} bytes live",
            stats.live_bytes
        );
        self.exhausted = true;
    }

    /// Every table page reachable from the root through entries that intersect the window
    /// (nothing is ever mapped outside it), found by decoding entries with the format.
    fn window_tables(&self) -> BTreeSet<u64> {
        let f = self.table.format();
        let g = *f.geometry();
        let mut tables = BTreeSet::new();
        let mut level_tables = Vec::from([self.table.root().get()]);
        tables.insert(self.table.root().get());
        let (first, last) = (self.base, self.iova_of(self.window) - 1);
        for level in (1..g.levels).rev() {
            let mut below = Vec::new();
            let shift = g.level_shift(level);
            for &t in &level_tables {
                let mut iova = first;
                loop {
                    let entry = t + 8 * g.index(level, iova) as u64;
                    let raw = self.mem.read_u64(entry).expect("table entry readable");
                    if f.is_present(raw) && f.is_table(level, raw) {
                        let child = f.table_address(raw).get();
                        if tables.insert(child) {
                            below.push(child);
                        }
                    }
                    let next = (iova >> shift).wrapping_add(1) << shift;
                    if next == 0 || next > last {
                        break;
                    }
                    iova = next;
                }
            }
            level_tables = below;
        }
        tables
    }

    fn step(&mut self, op: Op) {
        let live_before = self.mem.stats().live_pages;
        // Granule ranges `(first, count)` the step touched: checked through the engine's
        // enumeration and the walker.
        let mut probes: Vec<(u64, u64)> = Vec::new();
        // Larger pages and runs the step cut: checked through the enumeration in whole.
        let mut cut: Vec<(u64, u64)> = Vec::new();
        match op {
            Op::Map {
                first,
                count,
                pa_shift,
                prot,
            } => {
                let (first, count) = self.range(first, count);
                let shift = if pa_shift & 0x80 != 0 {
                    u64::from(pa_shift & 63)
                } else {
                    0
                };
                let pa = self.pa_base + ((first + shift) << self.gran_log2);
                let prot = Prot::from_bits_truncate(prot);
                self.map(first, count, pa, prot);
                probes.push((first, count));
            }
            Op::Unmap { first, count } => {
                let (first, count) = self.range(first, count);
                cut = self.unmap(first, count);
                probes.push((first, count));
            }
            Op::Query { at, offset } => {
                let at = u64::from(at) % self.window;
                self.query(at, u64::from(offset) % self.gran());
            }
            Op::DeviceWrite { at } => {
                let at = u64::from(at) % self.window;
                self.device_write(at);
            }
            Op::ReadClearDirty { first, count } => {
                let (first, count) = self.range(first, count);
                self.read_clear_dirty(first, count);
                probes.push((first, count));
            }
            Op::Flush => self.flush(),
            Op::FailAlloc { n } => {
                self.mem
                    .set_fail_policy(FailPolicy::Nth(u64::from(n % 8) + 1));
                self.fail_armed = true;
                return;
            }
            Op::SetSplit { refuse } => self.table.set_split_policy(if refuse {
                SplitPolicy::Refuse
            } else {
                SplitPolicy::Split
            }),
            Op::Reclaim => {
                let n = self
                    .table
                    .reclaim_empty(&mut self.gather)
                    .expect("reclaim_empty");
                assert!(n <= self.reachable.len(), "reclaimed {n} tables");
            }
            Op::MapRaw {
                iova,
                pa,
                len,
                prot,
            } => {
                if let Some(p) = self.map_raw(iova, pa, len, Prot::from_bits_truncate(prot)) {
                    probes.push(p);
                }
            }
            Op::UnmapRaw { iova, len } => {
                if let Some((p, c)) = self.unmap_raw(iova, len) {
                    probes.push(p);
                    cut = c;
                }
            }
        }
        if self.fail_armed {
            self.mem.set_fail_policy(FailPolicy::Never);
            self.fail_armed = false;
        }
        self.check_pages(live_before);
        self.steps += 1;
        if self.steps % FULL_CHECK_EVERY == 0 {
            self.check_enumeration(0, self.window);
        }
        for (first, count) in probes {
            // The range and both neighbours (the enumeration widens them to whole leaves).
            let lo = first.saturating_sub(1);
            let hi = (first + count + 1).min(self.window);
            self.check_ends(lo, hi);
            self.check_walker(first, count);
        }
        for (first, count) in cut {
            // What is left of a larger page or run the step cut: its ends, where the split's
            // new table meets its neighbours; the walker samples the middle.
            self.check_ends(first, first + count);
            self.check_walker(first, count);
        }
        self.check_gather_covers();
    }

    /// The engine's enumeration of granules `[lo, hi)` against the model; of a long range only
    /// its ends, where leaves are cut and sizes change: the walker samples the middle, and the
    /// next full comparison (every [`FULL_CHECK_EVERY`] steps, and the final walk) sees all of
    /// it. A whole 64 KiB-granule block is 8,192 leaves: enumerating every range in whole made
    /// the checks most of a fuzzer's time.
    fn check_ends(&self, lo: u64, hi: u64) {
        if hi - lo <= 2 * ENDS {
            self.check_enumeration(lo, hi - lo);
        } else {
            self.check_enumeration(lo, ENDS);
            self.check_enumeration(hi - ENDS, ENDS);
        }
    }

    // -----------------------------------------------------------------------------------------
    // operations

    fn map(&mut self, first: u64, count: u64, pa: u64, prot: Prot) {
        let iova = self.iova_of(first);
        let len = count << self.gran_log2;
        let r = self
            .table
            .map(Iova::new(iova), PhysAddr::new(pa), len, prot);
        let overlap = self.model.first_mapped(first, first + count);
        match r {
            Ok(()) => {
                assert!(self.subject.prot_ok(prot), "map accepted {prot:?}");
                assert_eq!(overlap, None, "map over a mapped granule succeeded");
                let dirty = self.subject.starts_dirty(prot);
                self.model.insert(first, count, pa, prot, dirty);
            }
            Err(Error::UnsupportedProt { prot: p }) => {
                assert_eq!(p, prot);
                assert!(!self.subject.prot_ok(prot), "map refused {prot:?}");
            }
            Err(Error::Overlap { iova: at }) => {
                assert!(self.subject.prot_ok(prot));
                let first_mapped = overlap.expect("overlap reported on an empty range");
                assert_eq!(at.get(), self.iova_of(first_mapped), "overlap address");
            }
            Err(Error::NoMemory) => self.out_of_memory(),
            Err(e) => panic!("map {iova:#x}+{len:#x} -> {pa:#x} {prot:?}: {e:?}"),
        }
    }

    /// The leaf containing window granule `index`, as (first granule, granule count), from the
    /// engine's enumeration.
    fn leaf_at(&self, index: u64) -> Option<(u64, u64)> {
        let mut found = None;
        self.table
            .for_each_mapping(Iova::new(self.iova_of(index)), self.gran(), |l| {
                let start = (l.iova.get() - self.base) >> self.gran_log2;
                found = Some((start, 1u64 << (l.size_log2 - self.gran_log2)));
            })
            .expect("for_each_mapping");
        found
    }

    /// The leaf containing window granule `index`, widened to its whole run if it was written
    /// as part of one (Arm's contiguous hint, AMD-Vi v1's size-encoded pages): a run is cut
    /// like a larger page.
    fn run_at(&self, index: u64) -> Option<(u64, u64)> {
        let (start, n) = self.leaf_at(index)?;
        let f = self.table.format();
        let raw = self.mem.read_u64(self.leaf_entry(index)?)?;
        let level = n.trailing_zeros() / (self.gran_log2 - 3);
        let run_log2 = f.leaf_run_log2(level, raw);
        if run_log2 == 0 {
            return Some((start, n));
        }
        let run = n << run_log2;
        // The window base is block-aligned, so run alignment in the window is IOVA alignment.
        let run_start = start / run * run;
        Some((run_start, run))
    }

    /// Unmaps granules `[first, first + count)`; returns the larger pages and runs it had to
    /// cut, as `(first, count)`.
    fn unmap(&mut self, first: u64, count: u64) -> Vec<(u64, u64)> {
        let iova = self.iova_of(first);
        let len = count << self.gran_log2;
        let end = first + count;
        // A leaf (or a run of leaves under one contiguous hint) that reaches outside the range
        // at either end must be split.
        let straddles = |leaf: Option<(u64, u64)>| {
            leaf.is_some_and(|(start, n)| start < first || start + n > end)
        };
        let cut_leaves: Vec<(u64, u64)> = [self.run_at(first), self.run_at(end - 1)]
            .into_iter()
            .filter(|&l| straddles(l))
            .flatten()
            .collect();
        let cut = !cut_leaves.is_empty();
        let freed_before = self.gather.freed_pages();
        let r = self.table.unmap(Iova::new(iova), len, &mut self.gather);
        match r {
            Ok(bytes) => {
                assert!(
                    !cut || self.table.split_policy() == SplitPolicy::Split,
                    "split despite SplitPolicy::Refuse"
                );
                let removed = self.model.remove(first, end);
                let granules: u64 = removed.iter().map(|&(_, n)| n).sum();
                assert_eq!(bytes, granules << self.gran_log2, "bytes unmapped");
                for (s, n) in removed {
                    self.note_changed(s, s + n);
                }
                // A split leaf changed from a larger page to a table.
                for &(s, n) in &cut_leaves {
                    self.note_changed(s, s + n);
                }
            }
            Err(Error::SplitRefused { iova: at }) => {
                assert!(cut, "split refused at {at} with no leaf cut");
                assert_eq!(self.table.split_policy(), SplitPolicy::Refuse);
                assert_eq!(self.gather.freed_pages(), freed_before);
            }
            Err(Error::SplitUnsupported { iova: at }) => {
                assert!(cut, "split unsupported at {at} with no leaf cut");
                assert_eq!(self.gather.freed_pages(), freed_before);
            }
            Err(Error::NoMemory) => self.out_of_memory(),
            Err(e) => panic!("unmap {iova:#x}+{len:#x}: {e:?}"),
        }
        cut_leaves
    }

    fn query(&self, at: u64, offset: u64) {
        let iova = self.iova_of(at) + offset;
        let q = self.table.query(Iova::new(iova));
        match (q, self.model.get(at)) {
            (None, None) => {}
            (Some(m), Some(g)) => {
                assert_eq!(m.pa.get(), g.pa + offset, "query pa at {iova:#x}");
                let rw = Prot::READ | Prot::WRITE;
                assert_eq!(m.prot & rw, g.prot & rw, "query prot at {iova:#x}");
                assert_eq!(m.prot.contains(Prot::PRIV), g.prot.contains(Prot::PRIV));
            }
            (q, g) => panic!("query {iova:#x}: engine {q:?}, model {g:?}"),
        }
    }

    /// Physical address of the leaf entry mapping window granule `index`.
    fn leaf_entry(&self, index: u64) -> Option<u64> {
        let f = self.table.format();
        let g = *f.geometry();
        let iova = self.iova_of(index);
        let mut table = self.table.root().get();
        for level in (0..g.levels).rev() {
            let entry = table + 8 * g.index(level, iova) as u64;
            let raw = self.mem.read_u64(entry)?;
            if !f.is_present(raw) {
                return None;
            }
            if level > 0 && f.is_table(level, raw) {
                table = f.table_address(raw).get();
                continue;
            }
            return Some(entry);
        }
        None
    }

    fn device_write(&mut self, at: u64) {
        let Some(g) = self.model.get(at) else {
            return;
        };
        if !g.prot.contains(Prot::WRITE) || !self.subject.dirty_tracking() {
            return;
        }
        let entry = self.leaf_entry(at).expect("mapped granule has a leaf");
        let raw = self.mem.read_u64(entry).expect("leaf entry readable");
        let written = self
            .subject
            .device_write(raw)
            .unwrap_or_else(|| panic!("writable leaf {raw:#x} refuses a device write"));
        assert!(self.mem.write_u64(entry, written));
        let (start, n) = self.leaf_at(at).expect("leaf");
        self.model.set_dirty(start, start + n, true);
    }

    fn read_clear_dirty(&mut self, first: u64, count: u64) {
        let iova = self.iova_of(first);
        let len = count << self.gran_log2;
        let mut reported = Vec::new();
        let r = self.table.read_and_clear_dirty(
            Iova::new(iova),
            len,
            |at, size_log2| reported.push((at.get(), size_log2)),
            &mut self.gather,
        );
        if !self.subject.dirty_tracking() {
            assert_eq!(r, Err(Error::NoDirtyTracking));
            return;
        }
        r.expect("read_and_clear_dirty");
        // Expected: every leaf intersecting the range with a dirty granule, once, in order;
        // cleaned only if it lies entirely inside the range (one straddling an edge stays
        // dirty, for a later read of its part outside).
        let mut leaves = Vec::new();
        self.table
            .for_each_mapping(Iova::new(iova), len, |l| leaves.push(l))
            .expect("for_each_mapping");
        let mut expected = Vec::new();
        for l in leaves {
            let start = (l.iova.get() - self.base) >> self.gran_log2;
            let n = 1u64 << (l.size_log2 - self.gran_log2);
            if self.model.get(start).expect("leaf in model").dirty {
                expected.push((l.iova.get(), l.size_log2));
                let inside =
                    l.iova.get() >= iova && l.iova.get() + (n << self.gran_log2) <= iova + len;
                if inside {
                    self.model.set_dirty(start, start + n, false);
                    self.note_changed(start, start + n);
                }
            }
        }
        assert_eq!(reported, expected, "dirty leaves reported");
    }

    fn flush(&mut self) {
        let held = self.gather.freed_pages();
        let frees = self.mem.stats().frees;
        self.gather.release(self.mem, done()).expect("release");
        assert_eq!(
            self.mem.stats().frees - frees,
            held as u64,
            "pages released"
        );
        let live: BTreeSet<u64> = self.mem.live_pages().iter().map(|p| p.0.get()).collect();
        for pa in &self.unlinked {
            assert!(
                !live.contains(pa),
                "unlinked table {pa:#x} not freed by release"
            );
        }
        self.unlinked.clear();
        self.changed.clear();
    }

    /// Raw arguments: in the window, the same as `map`; valid elsewhere, skipped; otherwise an
    /// argument error that changes nothing.
    fn map_raw(&mut self, iova: u64, pa: u64, len: u64, prot: Prot) -> Option<(u64, u64)> {
        let g = *self.table.geometry();
        if let Some((first, count)) = self.in_window(iova, len) {
            let pa_ok = pa & (self.gran() - 1) == 0
                && pa.checked_add(len - 1).is_some_and(|l| l >> g.oas == 0);
            if pa_ok {
                self.map(first, count, pa, prot);
                return Some((first, count));
            }
        } else if self.valid_elsewhere(iova, len) {
            return None;
        }
        let before = self.mem.stats();
        let r = self
            .table
            .map(Iova::new(iova), PhysAddr::new(pa), len, prot);
        match r {
            Err(
                Error::ZeroLength
                | Error::Overflow { .. }
                | Error::MisalignedIova { .. }
                | Error::MisalignedPa { .. }
                | Error::MisalignedLength { .. }
                | Error::IovaOutOfRange { .. }
                | Error::PaOutOfRange { .. }
                | Error::UnsupportedProt { .. },
            ) => {}
            Err(Error::NoMemory) => self.out_of_memory(),
            r => panic!("map_raw {iova:#x}+{len:#x} -> {pa:#x}: {r:?}"),
        }
        self.check_unchanged(&before, "map");
        // What the refused range would have touched in the window must still match the model.
        self.window_part(iova, len)
    }

    /// Unmap with raw arguments; returns the granules to check and the larger pages cut.
    #[allow(clippy::type_complexity)]
    fn unmap_raw(&mut self, iova: u64, len: u64) -> Option<((u64, u64), Vec<(u64, u64)>)> {
        if let Some((first, count)) = self.in_window(iova, len) {
            let cut = self.unmap(first, count);
            return Some(((first, count), cut));
        }
        if self.valid_elsewhere(iova, len) {
            // Nothing is mapped outside the window: unmapping there finds nothing.
            let outside = iova
                .checked_add(len)
                .is_some_and(|end| end <= self.base || iova >= self.iova_of(self.window));
            if outside {
                let r = self.table.unmap(Iova::new(iova), len, &mut self.gather);
                assert_eq!(r, Ok(0), "unmap outside the window");
            }
            return None;
        }
        let before = self.mem.stats();
        let held = self.gather.freed_pages();
        match self.table.unmap(Iova::new(iova), len, &mut self.gather) {
            Err(
                Error::ZeroLength
                | Error::Overflow { .. }
                | Error::MisalignedIova { .. }
                | Error::MisalignedLength { .. }
                | Error::IovaOutOfRange { .. },
            ) => {}
            r => panic!("unmap_raw {iova:#x}+{len:#x}: {r:?}"),
        }
        self.check_unchanged(&before, "unmap");
        assert_eq!(
            self.gather.freed_pages(),
            held,
            "failed unmap unlinked a table"
        );
        self.window_part(iova, len).map(|p| (p, Vec::new()))
    }

    /// The granules of the window that `[iova, iova + len)` intersects, as `(first, count)`.
    fn window_part(&self, iova: u64, len: u64) -> Option<(u64, u64)> {
        let lo = iova.max(self.base);
        let hi = iova.saturating_add(len).min(self.iova_of(self.window));
        (lo < hi).then(|| {
            let first = (lo - self.base) >> self.gran_log2;
            let last = (hi - 1 - self.base) >> self.gran_log2;
            (first, last - first + 1)
        })
    }

    /// A refused operation allocated and freed no page.
    fn check_unchanged(&self, before: &crate::sim::ArenaStats, what: &str) {
        let after = self.mem.stats();
        assert_eq!(
            (after.allocs, after.frees),
            (before.allocs, before.frees),
            "failed {what} allocated or freed pages"
        );
    }

    /// `(first, count)` if `[iova, iova + len)` is a granule-aligned range inside the window.
    fn in_window(&self, iova: u64, len: u64) -> Option<(u64, u64)> {
        let mask = self.gran() - 1;
        let end = iova.checked_add(len)?;
        let inside = len != 0
            && (iova | len) & mask == 0
            && iova >= self.base
            && end <= self.iova_of(self.window);
        inside.then(|| ((iova - self.base) >> self.gran_log2, len >> self.gran_log2))
    }

    /// Whether `[iova, iova + len)` is a valid IOVA range (somewhere outside the window).
    fn valid_elsewhere(&self, iova: u64, len: u64) -> bool {
        let ias = self.table.geometry().ias;
        let mask = self.gran() - 1;
        len != 0
            && (iova | len) & mask == 0
            && iova
                .checked_add(len - 1)
                .is_some_and(|l| l.checked_shr(ias).unwrap_or(0) == 0)
    }

    // -----------------------------------------------------------------------------------------
    // checks

    /// The engine's enumeration of `count` granules from `first`, widened to the whole leaves
    /// that intersect them, equals the model, and every leaf has a configured size and is
    /// aligned to it.
    fn check_enumeration(&self, first: u64, count: u64) {
        let g = *self.table.geometry();
        let (mut lo, mut hi) = (first, first + count);
        let mut engine = Segments::new(self.gran_log2);
        self.table
            .for_each_mapping(
                Iova::new(self.iova_of(first)),
                count << self.gran_log2,
                |l| {
                    assert!(
                        g.page_sizes >> l.size_log2 & 1 == 1,
                        "leaf size 2^{}",
                        l.size_log2
                    );
                    assert!(l.iova.is_aligned(l.size_log2) && l.pa.is_aligned(l.size_log2));
                    assert!(
                        l.iova.get() >= self.base,
                        "leaf below the window at {:?}",
                        l.iova
                    );
                    let start = (l.iova.get() - self.base) >> self.gran_log2;
                    let n = 1u64 << (l.size_log2 - self.gran_log2);
                    (lo, hi) = (lo.min(start), hi.max(start + n));
                    engine.push(start, n, l.pa.get());
                },
            )
            .expect("for_each_mapping");
        assert_eq!(
            engine,
            self.model.segments(lo, hi),
            "engine enumeration (left) vs model (right) over granules {lo}..{hi}"
        );
    }

    fn check_walker(&self, first: u64, count: u64) {
        let root = self.table.root();
        let lo = first.saturating_sub(1);
        let hi = (first + count + 1).min(self.window);
        let stride = ((hi - lo) / MAX_PROBES).max(1);
        self.probe(root, lo);
        // A different phase each step, so that a long input samples different granules.
        let mut i = lo + (self.steps as u64).wrapping_mul(0x9e37_79b9) % stride;
        while i < hi {
            self.probe(root, i);
            i += stride;
        }
        self.probe(root, hi - 1);
    }

    fn probe(&self, root: PhysAddr, index: u64) {
        let iova = self.iova_of(index);
        let walked = self.subject.translate(self.mem, root, iova);
        match (walked, self.model.get(index)) {
            (Ok(s), Some(g)) => {
                let (read, write) = self.subject.rights(g.prot);
                let want = Seen {
                    pa: g.pa,
                    size_log2: s.size_log2,
                    read,
                    write,
                };
                assert_eq!(s, want, "walker at {iova:#x}");
            }
            (Err(crate::sim::walk::Fault::Translation { .. }), None) => {}
            (w, g) => panic!("walker at {iova:#x}: {w:?}, model {g:?}"),
        }
    }

    /// Live pages = reachable tables + pages held by the gather; unlinked pages stay live until
    /// released; nothing freed twice or unknown.
    fn check_pages(&mut self, live_before: usize) {
        let reachable = self.window_tables();
        let gone: Vec<u64> = self.reachable.difference(&reachable).copied().collect();
        self.unlinked.extend(gone);
        self.reachable = reachable;
        let stats = self.mem.stats();
        assert_eq!(
            stats.live_pages,
            self.reachable.len() + self.gather.freed_pages(),
            "live pages = reachable tables + held pages (before the step: {live_before})"
        );
        assert_eq!(
            self.unlinked.len(),
            self.gather.freed_pages(),
            "unlinked pages held"
        );
        let live: BTreeSet<u64> = self.mem.live_pages().iter().map(|p| p.0.get()).collect();
        for pa in &self.unlinked {
            assert!(
                live.contains(pa),
                "table {pa:#x} freed before its gather was released"
            );
        }
        assert!(
            self.mem.bad_frees().is_empty(),
            "{:?}",
            self.mem.bad_frees()
        );
    }

    fn check_gather_covers(&self) {
        let mut ranges: Vec<IovaRange> = self.gather.ranges().to_vec();
        ranges.sort_unstable_by_key(|r| r.start);
        for &(start, end) in &self.changed {
            let (mut at, end) = (self.iova_of(start), self.iova_of(end));
            for r in &ranges {
                if r.start.get() <= at {
                    at = at.max(r.end.get());
                }
            }
            assert!(
                at >= end,
                "granule {at:#x} changed but the gather {ranges:?} does not cover it"
            );
        }
    }

    fn finish(mut self) {
        let root = self.table.root();
        let mut walked = Segments::new(self.gran_log2);
        for (iova, s) in self.subject.walk_all(self.mem, root) {
            assert!(iova >= self.base, "leaf below the window at {iova:#x}");
            let start = (iova - self.base) >> self.gran_log2;
            walked.push(start, 1u64 << (s.size_log2 - self.gran_log2), s.pa);
        }
        assert_eq!(
            walked,
            self.model.segments(0, u64::MAX),
            "walker (left) disagrees with the model (right)"
        );

        self.flush();
        let mut gather = Gather::new();
        let mem = self.mem;
        self.table.destroy(&mut gather).expect("destroy");
        gather.release(mem, done()).expect("release after destroy");
        assert_eq!(mem.stats().live_pages, 0, "pages leaked");
        assert!(mem.bad_frees().is_empty(), "{:?}", mem.bad_frees());
    }
}
