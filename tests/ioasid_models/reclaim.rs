//! Bounded memory (issue 13, item 4): whatever a guest maps and unmaps, the table pages of an
//! IOASID -- its record and its domain on each unit -- stay within what the live mappings need
//! plus a documented constant. Counted through the arena, checked after every operation.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use iommu_engine::ioasid::{reclaim_slack, IoasidCtx, IoasidFlags, IoasidId, RECLAIM_BATCH};
use iommu_engine::iommu::{DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Prot, TablePages};
use iommu_engine::sim::arena::FailPolicy;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// splitmix64: a fixed sequence, so that a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Log2 of the span of one table at each non-root level of a 4 KiB-granule table with 9 index
/// bits per level: a leaf table spans 2 MiB, the one above it 1 GiB, ...
const TABLE_SPANS: [u32; 4] = [21, 30, 39, 48];

/// What the live mappings are, kept independently of the code under test: IOVA intervals, and
/// how many live bytes fall in each table span (to count the tables they need).
#[derive(Default)]
struct Shadow {
    /// start -> (end, pa).
    maps: BTreeMap<u64, (u64, u64)>,
    /// (span index, IOVA >> span) -> live bytes.
    spans: HashMap<(usize, u64), u64>,
    /// Distinct spans with live bytes, per span index.
    distinct: [usize; TABLE_SPANS.len()],
}

impl Shadow {
    fn account(&mut self, a: u64, b: u64, add: bool) {
        for (k, &s) in TABLE_SPANS.iter().enumerate() {
            let mut p = a >> s;
            while p << s < b {
                let lo = a.max(p << s);
                let hi = b.min((p + 1) << s);
                let e = self.spans.entry((k, p)).or_insert(0);
                if add {
                    if *e == 0 {
                        self.distinct[k] += 1;
                    }
                    *e += hi - lo;
                } else {
                    *e -= hi - lo;
                    if *e == 0 {
                        self.spans.remove(&(k, p));
                        self.distinct[k] -= 1;
                    }
                }
                p += 1;
            }
        }
    }

    fn overlaps(&self, a: u64, b: u64) -> bool {
        self.maps
            .range(..b)
            .next_back()
            .is_some_and(|(_, &(e, _))| e > a)
    }

    fn insert(&mut self, a: u64, b: u64, pa: u64) {
        self.maps.insert(a, (b, pa));
        self.account(a, b, true);
    }

    /// Removes `[a, b)`; returns the bytes that were mapped.
    fn remove(&mut self, a: u64, b: u64) -> u64 {
        let hit: Vec<(u64, u64, u64)> = self
            .maps
            .range(..b)
            .rev()
            .take_while(|(_, &(e, _))| e > a)
            .map(|(&s, &(e, pa))| (s, e, pa))
            .collect();
        let mut bytes = 0;
        for (s, e, pa) in hit {
            if e <= a {
                continue;
            }
            self.maps.remove(&s);
            let (lo, hi) = (s.max(a), e.min(b));
            self.account(lo, hi, false);
            bytes += hi - lo;
            if s < lo {
                self.maps.insert(s, (lo, pa));
            }
            if hi < e {
                self.maps.insert(hi, (e, pa + (hi - s)));
            }
        }
        bytes
    }

    /// An upper bound on the tables a table of `levels` levels needs for the live mappings:
    /// the root, and one table per span with live bytes at each level below it (the count if
    /// every leaf were one granule; larger leaves need fewer).
    fn tables_needed_at_most(&self, levels: usize) -> usize {
        1 + self.distinct[..levels - 1].iter().sum::<usize>()
    }
}

/// Levels of a 4 KiB-granule table of `ias` input bits.
fn levels(ias: u32) -> usize {
    (ias as usize - 12).div_ceil(9)
}

/// The handle of the only domain a unit holds.
fn only_domain(unit: &dyn Iommu) -> DomainHandle {
    let mut found = (0..64u16)
        .map(DomainHandle)
        .filter(|&h| unit.domain_geometry(h).is_ok());
    let h = found.next().expect("a domain");
    assert!(found.next().is_none(), "one domain per unit");
    h
}

/// IOVAs below 2^39: every table of every unit spans them, and they scatter over 512 GiB.
const IOVA_BITS: u32 = 39;
/// The VT-d interrupt window, which no IOASID behind a VT-d unit may map.
const INTERRUPT_WINDOW: (u64, u64) = (0xfee0_0000, 0xfef0_0000);

/// Operations of the random sequence, checked after each one.
const OPS: u64 = 100_000;
/// Below this many live mappings a map is more likely than an unmap; above, the reverse.
const LIVE_TARGET: usize = 48;

/// Extra table pages allowed beyond what the live mappings need, per table of `levels` levels:
/// the crate's documented constant.
fn slack(levels: usize) -> usize {
    reclaim_slack(levels as u32)
}

/// Every this many operations, the exact audit: pages linked and needed per table, from the
/// tables and from their leaves, against the arena.
const AUDIT_EVERY: u64 = 2_000;

/// What a domain's leaves need, counted from the leaves alone (read back through the unit):
/// the root, and per level above a leaf's own up to the root's children, the table whose span
/// holds it.
fn needed_by_leaves(unit: &dyn Iommu, d: DomainHandle, levels: usize) -> usize {
    let shift = |level: usize| 12 + 9 * level as u32;
    let mut tables = BTreeSet::new();
    unit.for_each_mapping(d, Iova::new(0), 1 << IOVA_BITS, &mut |l| {
        for level in 0..levels - 1 {
            if shift(level) >= l.size_log2 {
                tables.insert((level, l.iova.get() >> shift(level + 1)));
            }
        }
    })
    .unwrap();
    1 + tables.len()
}

/// The exact audit: every table's linked pages within what its leaves need plus the slack, the
/// needs counted again from the leaves, and the arena holding exactly the linked and held pages.
fn audit(r: &Rig<'_, '_>, ctx: &Ctx<'_, '_>, io: IoasidId, levels: &[usize; 3], baseline: usize) {
    let p = ctx.table_pages(io).unwrap();
    assert!(
        p.record.linked <= p.record.needed + slack(levels[0]),
        "record: {p:?}"
    );
    let mut in_use = p.record.linked - 1;
    let units: [&dyn Iommu; 2] = [r.vtd, r.smmu];
    let domains: Vec<_> = p.domains.iter().flatten().collect();
    assert_eq!(domains.len(), 2);
    for (d, (unit, &levels)) in domains.iter().zip(units.iter().zip(&levels[1..])) {
        let t = d.pages.tables;
        assert_eq!(d.pages.unflushed, 0);
        assert!(
            t.linked <= t.needed + slack(levels),
            "unit {:?}: {t:?}",
            d.unit
        );
        assert_eq!(
            t.needed,
            needed_by_leaves(*unit, d.domain, levels),
            "{:?}",
            d.unit
        );
        in_use += t.linked - 1;
    }
    assert_eq!(
        r.live() - baseline,
        in_use,
        "the arena holds exactly the linked tables"
    );
}

type Ctx<'r, 'a> = IoasidCtx<'r, 'a, iommu_engine::sim::Arena>;

struct Run<'c, 'r, 'a> {
    ctx: &'c Ctx<'r, 'a>,
    io: IoasidId,
    shadow: Shadow,
    rng: Rng,
}

impl Run<'_, '_, '_> {
    /// A random range to map: mostly a few scattered 4 KiB pages, some 2 MiB-aligned runs
    /// (block leaves), some ranges that straddle 2 MiB boundaries.
    fn pick_map(&mut self) -> (u64, u64, u64) {
        let rng = &mut self.rng;
        let pa_base = 0x10_0000_0000u64;
        match rng.below(10) {
            0..=6 => {
                let len = (1 + rng.below(8)) * K4;
                let iova = rng.below(1 << (IOVA_BITS - 12)) << 12;
                let pa = pa_base + (rng.below(1 << 24) << 12);
                (iova, pa, len)
            }
            7..=8 => {
                let len = (1 + rng.below(2)) * M2;
                let iova = rng.below(1 << (IOVA_BITS - 21)) << 21;
                let pa = pa_base + (rng.below(1 << 15) << 21);
                (iova, pa, len)
            }
            _ => {
                let len = (1 + rng.below(768)) * K4;
                let iova =
                    (rng.below(1 << (IOVA_BITS - 21)) << 21) + M2 - (rng.below(256) + 1) * K4;
                let pa = pa_base + (rng.below(1 << 24) << 12);
                (iova, pa, len)
            }
        }
    }

    /// A random range to unmap: a whole live mapping, a piece of one (splitting blocks), or
    /// anywhere (mostly holes).
    fn pick_unmap(&mut self) -> (u64, u64) {
        let n = self.shadow.maps.len() as u64;
        let kind = self.rng.below(20);
        if n == 0 || kind >= 17 {
            let iova = self.rng.below(1 << (IOVA_BITS - 12)) << 12;
            return (iova, (1 + self.rng.below(16)) * K4);
        }
        let i = self.rng.below(n) as usize;
        let (&s, &(e, _)) = self.shadow.maps.iter().nth(i).expect("live mapping");
        if kind < 12 {
            return (s, e - s);
        }
        let pages = (e - s) / K4;
        let first = self.rng.below(pages);
        let count = 1 + self.rng.below(pages - first);
        (s + first * K4, count * K4)
    }

    fn map(&mut self, r: &Rig<'_, '_>, inject: Option<u64>) {
        let (iova, pa, len) = self.pick_map();
        let end = iova + len;
        if iova < INTERRUPT_WINDOW.1 && INTERRUPT_WINDOW.0 < end {
            return;
        }
        if let Some(n) = inject {
            r.arena.set_fail_policy(FailPolicy::Nth(n));
        }
        let res = self
            .ctx
            .map(self.io, Iova::new(iova), PhysAddr::new(pa), len, RW);
        r.arena.set_fail_policy(FailPolicy::Never);
        let overlap = self.shadow.overlaps(iova, end);
        match res {
            Ok(()) => {
                assert!(!overlap, "map over a live mapping at {iova:#x} succeeded");
                self.shadow.insert(iova, end, pa);
                assert_eq!(r.vtd_read(RID_A, None, iova), Some((pa, true)));
                assert_eq!(
                    r.smmu_read(SID_A, None, end - K4),
                    Some((pa + len - K4, true))
                );
            }
            Err(e) => {
                assert!(overlap || inject.is_some(), "map {iova:#x}+{len:#x}: {e:?}");
                if !overlap {
                    assert_eq!(self.ctx.translate(self.io, Iova::new(iova)), Ok(None));
                    assert_eq!(r.vtd_read(RID_A, None, iova), None);
                    assert_eq!(r.smmu_read(SID_A, None, iova), None);
                }
            }
        }
    }

    fn unmap(&mut self, r: &Rig<'_, '_>) {
        let (iova, len) = self.pick_unmap();
        let expect = self.shadow.remove(iova, iova + len);
        assert_eq!(
            self.ctx.unmap(self.io, Iova::new(iova), len),
            Ok(expect),
            "unmap {iova:#x}+{len:#x}"
        );
        assert_eq!(r.vtd_read(RID_A, None, iova), None);
        assert_eq!(r.smmu_read(SID_A, None, iova + len - K4), None);
    }
}

#[test]
fn scattered_maps_and_unmaps_keep_table_pages_within_what_live_mappings_need() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        // The record and one domain per unit, each with its root and nothing else.
        let record_levels = 5;
        let (vtd_ias, _) = r.vtd.domain_geometry(only_domain(r.vtd)).unwrap();
        let (smmu_ias, _) = r.smmu.domain_geometry(only_domain(r.smmu)).unwrap();
        let tables = [record_levels, levels(vtd_ias), levels(smmu_ias)];
        let baseline = r.live();
        let slack_total: usize = tables.iter().map(|&l| slack(l)).sum();
        let mut run = Run {
            ctx: &ctx,
            io,
            shadow: Shadow::default(),
            rng: Rng(0x5eed_0013),
        };
        let mut peak_over = 0usize;
        for op in 0..OPS {
            let live = run.shadow.maps.len();
            let map = if live < LIVE_TARGET {
                run.rng.below(4) != 0
            } else {
                run.rng.below(4) == 0
            };
            if map {
                // One map in sixteen has its n-th page allocation fail: the record's (nothing
                // to undo) or a domain's (the fan-out is rolled back).
                let inject = (run.rng.below(16) == 0).then(|| 1 + run.rng.below(6));
                run.map(r, inject);
            } else {
                run.unmap(r);
            }
            let needed: usize = tables
                .iter()
                .map(|&l| run.shadow.tables_needed_at_most(l) - 1)
                .sum();
            let in_use = r.live() - baseline;
            peak_over = peak_over.max(in_use.saturating_sub(needed));
            assert!(
                in_use <= needed + slack_total,
                "after op {op}: {in_use} table pages in use, the live mappings need at most \
                 {needed} (+{slack_total})"
            );
            if op % AUDIT_EVERY == 0 {
                audit(r, &ctx, io, &tables, baseline);
            }
        }
        audit(r, &ctx, io, &tables, baseline);
        // Everything goes; what is left is the roots.
        let all: Vec<(u64, u64)> = run.shadow.maps.iter().map(|(&s, &(e, _))| (s, e)).collect();
        for (s, e) in all {
            assert_eq!(ctx.unmap(io, Iova::new(s), e - s), Ok(e - s));
        }
        run.shadow = Shadow::default();
        assert!(r.live() - baseline <= slack_total);
        // An explicit reclaim leaves the roots alone.
        ctx.reclaim(io).unwrap();
        assert_eq!(r.live(), baseline);
        println!("{OPS} operations: at most {peak_over} table pages beyond the bound on need");
        r.drain();
    });
}

/// A context with RID_A (VT-d) and SID_A (SMMUv3) attached to one ENFORCE_SNOOP IOASID.
fn two_unit_ioasid<'r>(r: &Rig<'r, '_>) -> (Ctx<'r, 'r>, IoasidId) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
    let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.attach(v, io).unwrap();
    ctx.attach(s, io).unwrap();
    (ctx, io)
}

#[test]
fn a_map_rolled_back_from_the_last_unit_leaves_no_table_behind() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io) = two_unit_ioasid(r);
        let before = r.live();
        // A page where nothing is mapped: the record needs 4 new tables (5 levels), each
        // domain 3 (4 levels). The 8th allocation is the SMMUv3 domain's first.
        r.arena.set_fail_policy(FailPolicy::Nth(8));
        let at = Iova::new(0x42_4000_3000);
        let res = ctx.map(io, at, PhysAddr::new(0x8000_0000), K4, RW);
        r.arena.set_fail_policy(FailPolicy::Never);
        assert!(res.is_err(), "{res:?}");
        assert_eq!(r.arena.stats().failed_allocs, 1);
        // The record and the VT-d domain had their 7 tables; all went back.
        assert_eq!(r.live(), before);
        let p = ctx.table_pages(io).unwrap();
        assert_eq!(p.record.linked, 1);
        for d in p.domains.iter().flatten() {
            assert_eq!(d.pages.tables.linked, 1, "{:?}", d.unit);
        }
        assert_eq!(r.vtd_read(RID_A, None, at.get()), None);
        assert_eq!(ctx.translate(io, at), Ok(None));
        // The same map then succeeds.
        ctx.map(io, at, PhysAddr::new(0x8000_0000), K4, RW).unwrap();
        assert_eq!(
            r.smmu_read(SID_A, None, at.get()),
            Some((0x8000_0000, true))
        );
        r.drain();
    });
}

#[test]
fn unmaps_reclaim_every_batch_and_an_explicit_reclaim_takes_the_rest() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io) = two_unit_ioasid(r);
        let baseline = r.live();
        // One page per GiB: each needs its own PD and PT in every table (record: also its
        // own level-1 table).
        let page = |i: u64| Iova::new((i + 1) << 30);
        for i in 0..RECLAIM_BATCH as u64 {
            ctx.map(io, page(i), PhysAddr::new(0x8000_0000), K4, RW)
                .unwrap();
        }
        let mapped = r.live();
        let (waits, syncs) = r.completions();
        for i in 0..RECLAIM_BATCH as u64 - 1 {
            assert_eq!(ctx.unmap(io, page(i), K4), Ok(K4));
        }
        // Nothing reclaimed yet: one completion per unit per unmap.
        assert_eq!(r.live(), mapped);
        let n = RECLAIM_BATCH as u64;
        assert_eq!(r.completions(), (waits + n - 1, syncs + n - 1));
        let p = ctx.table_pages(io).unwrap();
        assert_eq!(p.record.surplus(), 2 * (RECLAIM_BATCH - 1));
        // The unmap that fills the log reclaims: one more completion per unit.
        assert_eq!(ctx.unmap(io, page(n - 1), K4), Ok(K4));
        assert_eq!(r.completions(), (waits + n + 1, syncs + n + 1));
        assert_eq!(r.live(), baseline);
        let p = ctx.table_pages(io).unwrap();
        assert_eq!(p.record.linked, 1);
        for d in p.domains.iter().flatten() {
            assert_eq!(
                d.pages.tables,
                TablePages {
                    linked: 1,
                    needed: 1
                },
                "{:?}",
                d.unit
            );
        }
        r.drain();
    });
}

/// Through the `Iommu` trait: a domain's empty tables are unlinked, invalidated with one
/// completion, freed only after it; when the completion never comes the pages are kept (not
/// freed, not reused) until a later flush's, reclaim's or free's invalidation completes, and
/// the unit's audit reports what is owed (`owed`: domains owing, pages waiting).
fn reclaim_through_the_trait(
    r: &Rig<'_, '_>,
    unit: &dyn Iommu,
    device: u32,
    completions: impl Fn() -> u64,
    stall: impl Fn(bool),
    owed: impl Fn() -> (usize, usize),
) {
    use iommu_engine::iommu::{DomainConfig, ReclaimScope};
    let d = unit.domain_alloc(&DomainConfig::default()).unwrap();
    unit.attach(iommu_engine::iommu::DeviceId(device), None, d)
        .unwrap();
    let root_only = r.live();
    for at in [0u64, 1 << 30, 2 << 30] {
        unit.map(d, Iova::new(at), PhysAddr::new(0x8000_0000), K4, RW)
            .unwrap();
    }
    let mapped = r.live();
    assert_eq!(
        mapped - root_only,
        7,
        "the root's child, then a PD and a PT per page"
    );
    for at in [1u64 << 30, 2 << 30] {
        let mut g = iommu_engine::pgtable::Gather::new();
        assert_eq!(unit.unmap(d, Iova::new(at), K4, &mut g), Ok(K4));
        unit.flush(d, &mut g).unwrap();
    }
    let p = unit.table_pages(d).unwrap();
    assert_eq!((p.tables.linked, p.tables.needed, p.unflushed), (8, 4, 0));
    // Around an IOVA whose tables still map something: nothing to do, no command.
    let before = completions();
    assert_eq!(
        unit.reclaim(d, ReclaimScope::Around(&[Iova::new(K4)])),
        Ok(0)
    );
    assert_eq!(completions(), before);
    // The completion never comes: the two tables are unlinked but kept.
    stall(true);
    let around = [Iova::new(1 << 30)];
    assert!(matches!(
        unit.reclaim(d, ReclaimScope::Around(&around)),
        Err(iommu_engine::iommu::Error::Timeout { .. })
    ));
    stall(false);
    assert_eq!(r.live(), mapped);
    let p = unit.table_pages(d).unwrap();
    assert_eq!((p.tables.linked, p.tables.needed, p.unflushed), (6, 4, 2));
    assert_eq!(
        owed(),
        (1, 2),
        "the audit reports the owed invalidation and its pages"
    );
    // The next reclaim invalidates them again with its own, then frees all four.
    let before = completions();
    assert_eq!(unit.reclaim(d, ReclaimScope::All), Ok(4));
    assert_eq!(completions(), before + 1);
    assert_eq!(r.live(), mapped - 4);
    let p = unit.table_pages(d).unwrap();
    assert_eq!((p.tables.linked, p.tables.needed, p.unflushed), (4, 4, 0));
    assert_eq!(owed(), (0, 0));
    assert_eq!(
        unit.query(d, Iova::new(0)).map(|m| m.pa.get()),
        Some(0x8000_0000)
    );
    // What a failed reclaim owes is owed like what a failed flush owes: the next flush, even
    // with an empty gather, issues it and frees the kept tables (`Iommu::flush`).
    unit.map(d, Iova::new(1 << 30), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let mut g = iommu_engine::pgtable::Gather::new();
    assert_eq!(unit.unmap(d, Iova::new(1 << 30), K4, &mut g), Ok(K4));
    unit.flush(d, &mut g).unwrap();
    stall(true);
    assert!(unit.reclaim(d, ReclaimScope::All).is_err());
    stall(false);
    assert_eq!(unit.table_pages(d).unwrap().unflushed, 2);
    let kept = r.live();
    let before = completions();
    unit.flush(d, &mut iommu_engine::pgtable::Gather::new())
        .unwrap();
    assert!(
        completions() > before,
        "the owed invalidation was not issued"
    );
    assert_eq!(unit.table_pages(d).unwrap().unflushed, 0);
    assert_eq!(owed(), (0, 0));
    assert_eq!(r.live(), kept - 2);
    // Kept pages are freed by domain_free too.
    let mut g = iommu_engine::pgtable::Gather::new();
    assert_eq!(unit.unmap(d, Iova::new(0), K4, &mut g), Ok(K4));
    unit.flush(d, &mut g).unwrap();
    stall(true);
    assert!(unit.reclaim(d, ReclaimScope::All).is_err());
    stall(false);
    assert_eq!(unit.table_pages(d).unwrap().unflushed, 3);
    unit.detach(iommu_engine::iommu::DeviceId(device), None)
        .unwrap();
    unit.domain_free(d).unwrap();
    assert_eq!(r.live(), root_only - 1);
}

#[test]
fn vtd_reclaim_frees_after_the_wait_and_keeps_pages_when_it_times_out() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        use iommu_engine::sim::vtd::Injection;
        reclaim_through_the_trait(
            r,
            r.vtd,
            RID_B,
            || r.vm.stats().wait,
            |on| {
                if on {
                    r.vm.inject(Injection::StallWaits)
                } else {
                    r.vm.clear_injections()
                }
            },
            || {
                let a = r.vtd.audit().unwrap();
                (a.owing, a.owed_pages)
            },
        );
        r.drain();
    });
}

#[test]
fn smmu_reclaim_frees_after_the_sync_and_keeps_pages_when_it_times_out() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        use iommu_engine::sim::smmuv3::Injection;
        reclaim_through_the_trait(
            r,
            r.smmu,
            SID_B,
            || r.sm.stats().syncs,
            |on| {
                if on {
                    r.sm.inject(Injection::SyncStall)
                } else {
                    r.sm.clear_injections()
                }
            },
            || {
                let a = r.smmu.audit().unwrap();
                (a.owing, a.owed_pages)
            },
        );
        r.drain();
    });
}

/// Reclaim running while other threads map and unmap other ranges that share tables with
/// what is reclaimed: every map is seen by both devices as soon as it returns, every unmap
/// faults on both, pages mapped throughout never stop translating (a reclaim never frees a
/// table something reaches: the arena poisons a freed page), and in the end exactly the tables
/// the live mappings need are left.
///
/// Nothing here depends on how the threads are scheduled: the reclaimer and the checker start
/// before the workers (a barrier), and each worker, once in its run, waits until each of them
/// has completed a pass that started after the worker got there, so explicit reclaims run
/// between the workers' operations on every machine. (It used to assert that the explicit
/// reclaimer freed something, which failed under load: the unmaps' own reclaims can take every
/// empty table first.) What is counted instead is fixed by the operations: every
/// [`RECLAIM_BATCH`]-th unmap reclaims around the range it just emptied, so tables are freed
/// while the workers run.
#[test]
fn reclaim_runs_while_other_threads_map_and_unmap_ranges_sharing_its_tables() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Barrier;
    const THREADS: u64 = 3;
    const ROUNDS: u64 = 400;
    /// Two GiB-sized regions (a PD each in every table); thread `t` churns in the 2 MiB table
    /// at `t * 2 MiB` of either, so that its leaf table is empty whenever it has just
    /// unmapped, and the PD whenever every thread has.
    const REGION: u64 = 0x40_0000_0000;
    /// Sets the flag if its thread panics, so that a worker waiting for that thread stops.
    struct OnPanic<'f>(&'f AtomicBool);
    impl Drop for OnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.store(true, Ordering::SeqCst);
            }
        }
    }
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let (ctx, io) = two_unit_ioasid(r);
        let baseline = r.live();
        // Pinned pages, in the first region's PD but in a 2 MiB table of their own.
        let pinned = |t: u64| REGION + 64 * M2 + t * K4;
        for t in 0..THREADS {
            ctx.map(
                io,
                Iova::new(pinned(t)),
                PhysAddr::new(0x9000_0000 + t * K4),
                K4,
                RW,
            )
            .unwrap();
        }
        let pinned_tables = r.live() - baseline;
        // The domains, to read their tables from the root as well as through the devices
        // (whose caches may still hold a path to a table being unlinked).
        let p = ctx.table_pages(io).unwrap();
        let handles: Vec<DomainHandle> = p.domains.iter().flatten().map(|d| d.domain).collect();
        let (vd, sd) = (handles[0], handles[1]);
        let stop = AtomicBool::new(false);
        let helper_failed = AtomicBool::new(false);
        // Completed passes of the reclaimer and of the checker.
        let reclaims = AtomicU64::new(0);
        let checks = AtomicU64::new(0);
        let start = Barrier::new(THREADS as usize + 2);
        let frees_before = r.arena.stats().frees;
        std::thread::scope(|sc| {
            let (ctx, stop, failed, start) = (&ctx, &stop, &helper_failed, &start);
            let (reclaims, checks) = (&reclaims, &checks);
            // Until `passes` counts a pass that started after this call (the one under way
            // may have started before): a pass completed as `seen + 2` did.
            let wait_for_a_pass = move |passes: &AtomicU64| {
                let seen = passes.load(Ordering::SeqCst);
                while passes.load(Ordering::SeqCst) < seen + 2 && !failed.load(Ordering::SeqCst) {
                    std::thread::yield_now();
                }
                assert!(
                    !failed.load(Ordering::SeqCst),
                    "the reclaimer or the checker failed"
                );
            };
            let workers: Vec<_> = (0..THREADS)
                .map(|t| {
                    sc.spawn(move || {
                        let mut rng = Rng(0xc0ffee + t);
                        start.wait();
                        for round in 0..ROUNDS {
                            let region = REGION + rng.below(2) * (1 << 30);
                            let pages = 1 + rng.below(8);
                            let at = region + t * M2 + rng.below(512 - pages) * K4;
                            let pa = 0x1_0000_0000 + (t << 28) + rng.below(1 << 12) * K4;
                            ctx.map(io, Iova::new(at), PhysAddr::new(pa), pages * K4, RW)
                                .unwrap();
                            let last = at + (pages - 1) * K4;
                            let in_table = |u: &dyn Iommu, d, iova: u64| {
                                u.query(d, Iova::new(iova)).map(|m| m.pa.get())
                            };
                            assert_eq!(in_table(r.vtd, vd, last), Some(pa + (pages - 1) * K4));
                            assert_eq!(in_table(r.smmu, sd, at), Some(pa));
                            assert_eq!(r.vtd_read(RID_A, None, at), Some((pa, true)));
                            assert_eq!(
                                r.smmu_read(SID_A, None, last),
                                Some((pa + (pages - 1) * K4, true))
                            );
                            assert_eq!(ctx.unmap(io, Iova::new(at), pages * K4), Ok(pages * K4));
                            assert_eq!(r.vtd_read(RID_A, None, last), None);
                            assert_eq!(r.smmu_read(SID_A, None, at), None);
                            // Staggered, so that the others keep mapping meanwhile.
                            if round == (t + 1) * ROUNDS / (THREADS + 1) {
                                wait_for_a_pass(reclaims);
                                wait_for_a_pass(checks);
                            }
                        }
                    })
                })
                .collect();
            sc.spawn(move || {
                let _failed = OnPanic(failed);
                start.wait();
                while !stop.load(Ordering::SeqCst) {
                    ctx.reclaim(io).unwrap();
                    reclaims.fetch_add(1, Ordering::SeqCst);
                    std::thread::yield_now();
                }
            });
            sc.spawn(move || {
                let _failed = OnPanic(failed);
                start.wait();
                while !stop.load(Ordering::SeqCst) {
                    for t in 0..THREADS {
                        let want = Some((0x9000_0000 + t * K4, true));
                        assert_eq!(r.vtd_read(RID_A, None, pinned(t)), want);
                        assert_eq!(r.smmu_read(SID_A, None, pinned(t)), want);
                    }
                    checks.fetch_add(1, Ordering::SeqCst);
                }
            });
            let results: Vec<_> = workers.into_iter().map(|w| w.join()).collect();
            // Stop the others before a worker's failure is reported, or the scope waits forever.
            stop.store(true, Ordering::SeqCst);
            for r in results {
                if let Err(panic) = r {
                    std::panic::resume_unwind(panic);
                }
            }
        });
        // Each worker's wait saw two passes of each complete (counts, not timing).
        assert!(reclaims.load(Ordering::SeqCst) >= 2);
        assert!(checks.load(Ordering::SeqCst) >= 2);
        // Tables freed while the workers ran (by the unmaps' reclaims or the explicit ones): the
        // unmap that fills the log reclaims around the range it has just emptied, whose table
        // no other thread maps into, so at least one table per [`RECLAIM_BATCH`] unmaps -- unless
        // a reclaim had freed it already.
        assert!(
            r.arena.stats().frees > frees_before,
            "no table freed while the workers ran"
        );
        ctx.reclaim(io).unwrap();
        let p = ctx.table_pages(io).unwrap();
        assert_eq!(p.record.surplus(), 0);
        for d in p.domains.iter().flatten() {
            assert_eq!(d.pages.tables.surplus(), 0, "{:?}", d.unit);
            assert_eq!(d.pages.unflushed, 0);
        }
        assert_eq!(r.live() - baseline, pinned_tables);
        r.drain();
    });
}
