//! Unit-level map and unmap (issue 7, item 4): the drivers over their behavioural models, with
//! every unmap followed by the gather's flush through the model's queue, and the same work
//! through the IOASID layer fanning out to two units.
//!
//! Targets, each over its own [`Arena`] (the `sim` allocator: fake physical addresses, books
//! kept under a mutex, pages zeroed on allocation and poisoned on free):
//! - `vtd-ss`: `vtd::VtdUnit`, legacy mode, second stage (4 levels), over `VtdModel` with QEMU's
//!   defaults (queued invalidation, `CAP.PSI`, `MAMV` 18, 2M and 1G pages) plus a coherent page
//!   walker (`ECAP.C`, see [`vtd_identity`]);
//! - `smmu-s2` / `smmu-s2-ril`: `smmuv3::SmmuUnit`, stage 2 with the 4 KiB granule, over
//!   `SmmuModel` as QEMU reports it, without and with `IDR3.RIL` (range invalidation);
//! - `ioasid-2units`: `IoasidCtx::map` / `unmap` on an IOASID attached to one device on a VT-d
//!   unit and one on an SMMUv3 unit (with RIL): two hardware domains plus the IOASID's record,
//!   one flush per unit.
//!
//! `one-call` maps (unmaps) the whole range in one call; `per-page` makes one call per page of
//! the size the engine picks there (4K, or 2M where IOVA and PA allow), each unmap with its own
//! flush (what a caller that unmaps page by page gets).
//!
//! Before its benches, each case runs once (a few times for the small ones) untimed by criterion
//! and prints one `units-report` line: the invalidation commands the model executed for one
//! map and for one unmap, and how much of the wall time was spent inside the model. Every
//! model's work (decoding and executing the queue, its TLB bookkeeping) happens inside a register
//! access of the driver, so [`Timed`] measures the model's share by timing those accesses.
//!
//! Criterion's samples are the thread's CPU time (`UNITS_CLOCK=wall` for wall time), so that
//! other processes on a shared machine do not count; the report's shares are ratios of wall
//! times measured together, with the cost of the clock reads subtracted (see [`calibrate`]).
//!
//! Run: `cargo bench --bench units` (about two minutes on two shared cores); results in
//! `BENCHMARKS.md`. A plain substring filter (`cargo bench --bench units -- 256x4K/vtd-ss`)
//! selects benches and reports alike; a regex filter selects benches only.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};

use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::{
    DeviceLabel, IoasidCtx, IoasidFlags, IoasidId, PasidAllocator, Record, Registry, UnitId,
    RECLAIM_BATCH,
};
use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Iommu, ReclaimScope, Stage};
use iommu_engine::mem::{Iova, PhysAddr, WalkerCoherency};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::{Gather, InvalidationComplete, PageTable, Prot};
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig, AmdViModelStats};
use iommu_engine::sim::arena::{Arena, ArenaConfig};
use iommu_engine::sim::smmuv3::{op, SmmuModel, SmmuModelConfig, SmmuModelStats};
use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig, VtdModelStats};
use iommu_engine::smmuv3::{SmmuConfig, SmmuUnit};
use iommu_engine::vtd::{VtdConfig, VtdUnit};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
/// Where the mapped output addresses start (never dereferenced); fits the SMMU model's 44-bit
/// OAS and the VT-d model's 48-bit HAW.
const TARGET_PA: u64 = 0x80_0000_0000;
/// Where the first workload's IOVAs start; each workload has its own [`REGION`] so that a
/// table left by one never meets another's block mappings. All of it is below 2^39.
const IOVA_BASE: u64 = 0x10_0000_0000;
const REGION: u64 = 64 * G1;
/// Arena per target: tables for 1 GiB of 4 KiB pages (2 MiB of leaf tables per domain, plus the
/// IOASID record) with room to spare; the host reserves it lazily.
const ARENA_BYTES: usize = 128 << 20;
/// The device on each unit: 00:04.0 on VT-d, StreamID 0x20 on SMMUv3, DeviceID 0x20 on AMD-Vi.
const DEV: DeviceId = DeviceId(0x20);
/// The device the direct calls of [`Direct`] reach through on each unit (its own domain).
const DEV2: DeviceId = DeviceId(0x28);
const RW: Prot = Prot::READ.union(Prot::WRITE);

// ---------------------------------------------------------------------------------------------
// clocks

/// Whether criterion's samples are CPU time of this thread (the default) or wall time
/// (`UNITS_CLOCK=wall`). On a machine shared with other busy processes the wall time of a
/// sample includes whatever time the scheduler gave to others; the thread's CPU time does not.
fn wall_clock() -> bool {
    static WALL: OnceLock<bool> = OnceLock::new();
    *WALL.get_or_init(|| std::env::var("UNITS_CLOCK").is_ok_and(|v| v == "wall"))
}

/// A point in time on the clock [`wall_clock`] picks.
#[derive(Clone, Copy)]
enum Stamp {
    Wall(Instant),
    Cpu(Duration),
}

impl Stamp {
    fn now() -> Self {
        if wall_clock() {
            return Stamp::Wall(Instant::now());
        }
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
        Stamp::Cpu(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
    }

    fn elapsed(self) -> Duration {
        match (self, Stamp::now()) {
            (Stamp::Wall(start), _) => start.elapsed(),
            (Stamp::Cpu(start), Stamp::Cpu(now)) => now.saturating_sub(start),
            (Stamp::Cpu(_), Stamp::Wall(_)) => Duration::ZERO,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// timing the model

/// A register window that forwards to a model and, while switched on, counts the accesses and
/// adds the time spent inside the model (its queue processing included) to a total.
struct Timed<'m, W> {
    model: &'m W,
    on: AtomicBool,
    nanos: AtomicU64,
    accesses: AtomicU64,
}

impl<'m, W: RegisterWindow> Timed<'m, W> {
    fn new(model: &'m W) -> Self {
        Self {
            model,
            on: AtomicBool::new(false),
            nanos: AtomicU64::new(0),
            accesses: AtomicU64::new(0),
        }
    }

    #[inline]
    fn time<R>(&self, f: impl FnOnce(&W) -> R) -> R {
        if !self.on.load(Relaxed) {
            return f(self.model);
        }
        let start = Instant::now();
        let r = f(self.model);
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
        self.accesses.fetch_add(1, Relaxed);
        r
    }

    /// Starts timing from zero.
    fn start(&self) {
        self.nanos.store(0, Relaxed);
        self.accesses.store(0, Relaxed);
        self.on.store(true, Relaxed);
    }

    /// Stops timing: (nanoseconds inside the model, register accesses).
    fn stop(&self) -> (u64, u64) {
        self.on.store(false, Relaxed);
        (self.nanos.load(Relaxed), self.accesses.load(Relaxed))
    }
}

impl<W: RegisterWindow> RegisterWindow for Timed<'_, W> {
    fn read32(&self, offset: usize) -> u32 {
        self.time(|m| m.read32(offset))
    }
    fn write32(&self, offset: usize, value: u32) {
        self.time(|m| m.write32(offset, value))
    }
    fn read64(&self, offset: usize) -> u64 {
        self.time(|m| m.read64(offset))
    }
    fn write64(&self, offset: usize, value: u64) {
        self.time(|m| m.write64(offset, value))
    }
}

type VtdWindow<'m> = Timed<'m, VtdModel<'m>>;
type SmmuWindow<'m> = Timed<'m, SmmuModel<'m>>;
type AmdWindow<'m> = Timed<'m, AmdViModel<'m>>;

// ---------------------------------------------------------------------------------------------
// the targets

/// What is mapped into and unmapped from.
enum Space<'a, 'r, 'u> {
    /// One hardware domain of one unit.
    Domain(&'a dyn Iommu, DomainHandle),
    /// An IOASID of a context.
    Ioasid(&'a IoasidCtx<'r, 'u, Arena>, IoasidId),
    /// The calls an IOASID's map and unmap make, made directly.
    Direct(&'a Direct<'a>),
}

/// `IoasidCtx::map`, in a frame of its own: what callgrind counts against [`Direct::map`].
#[inline(never)]
fn ioasid_map(ctx: &IoasidCtx<'_, '_, Arena>, io: IoasidId, iova: Iova, pa: PhysAddr, len: u64) {
    ctx.map(io, iova, pa, len, RW).expect("ioasid map");
}

/// `IoasidCtx::unmap`, in a frame of its own: what callgrind counts against [`Direct::unmap`].
#[inline(never)]
fn ioasid_unmap(ctx: &IoasidCtx<'_, '_, Arena>, io: IoasidId, iova: Iova, len: u64) -> u64 {
    ctx.unmap(io, iova, len).expect("ioasid unmap")
}

/// What `IoasidCtx::map` and `unmap` do below the IOASID layer, done directly (issue 18,
/// goal 4: the layer's own cost is the difference): a record of the same format (a software
/// table, its pages freed at once), a domain on each unit (its own, with another device
/// attached), each unmap's flush per unit, and the reclaim the layer makes every
/// [`RECLAIM_BATCH`] unmaps around the same ends (in the record and through `Iommu::reclaim`).
/// Without the layer's checks, locks, lookups and bookkeeping.
struct Direct<'a> {
    record: RefCell<PageTable<Record, &'a Arena>>,
    domains: Vec<(&'a dyn Iommu, DomainHandle)>,
    alloc: &'a Arena,
    /// `[start, end - 1]` of each unmap since the last reclaim (capacity reserved).
    ends: RefCell<Vec<Iova>>,
}

impl<'a> Direct<'a> {
    fn new(alloc: &'a Arena, units: &[&'a dyn Iommu]) -> Self {
        let record = PageTable::new(Record::new(), alloc, WalkerCoherency::Coherent);
        let domains = units
            .iter()
            .map(|&u| (u, domain_for(u, Stage::Second, DEV2)))
            .collect();
        Self {
            record: RefCell::new(record.expect("record")),
            domains,
            alloc,
            ends: RefCell::new(Vec::with_capacity(2 * RECLAIM_BATCH)),
        }
    }

    #[inline(never)]
    fn map(&self, iova: Iova, pa: PhysAddr, len: u64) {
        self.record
            .borrow()
            .map(iova, pa, len, RW)
            .expect("record map");
        for &(unit, d) in &self.domains {
            unit.map(d, iova, pa, len, RW).expect("map");
        }
    }

    #[inline(never)]
    fn unmap(&self, iova: Iova, len: u64) -> u64 {
        for &(unit, d) in &self.domains {
            let mut gather = Gather::new();
            unit.unmap(d, iova, len, &mut gather).expect("unmap");
            unit.flush(d, &mut gather).expect("flush");
        }
        let mut gather = Gather::new();
        let bytes = self.record.borrow().unmap(iova, len, &mut gather);
        // SAFETY: the record is a software table: no hardware walks it.
        let done = unsafe { InvalidationComplete::assume() };
        gather.release(self.alloc, done).expect("release");
        let mut ends = self.ends.borrow_mut();
        ends.extend([iova, Iova::new(iova.get() + len - 1)]);
        if ends.len() >= 2 * RECLAIM_BATCH {
            let scope = ReclaimScope::Around(&ends);
            let mut gather = Gather::new();
            scope
                .reclaim(&mut self.record.borrow_mut(), &mut gather)
                .expect("record reclaim");
            // SAFETY: as above.
            let done = unsafe { InvalidationComplete::assume() };
            gather.release(self.alloc, done).expect("release");
            for &(unit, d) in &self.domains {
                unit.reclaim(d, scope).expect("reclaim");
            }
            ends.clear();
        }
        bytes.expect("record unmap")
    }
}

/// A model behind a [`Timed`] window, as a target sees it.
trait Model {
    /// Clears the model's counters.
    fn reset_stats(&self);
    /// The invalidation work the model counted since the last reset.
    fn commands(&self) -> String;
    /// Starts timing the model.
    fn start(&self);
    /// Stops timing: (nanoseconds inside the model, register accesses).
    fn stop(&self) -> (u64, u64);
}

impl Model for Timed<'_, VtdModel<'_>> {
    fn reset_stats(&self) {
        self.model.reset_stats();
    }
    fn commands(&self) -> String {
        vtd_commands(&self.model.stats())
    }
    fn start(&self) {
        Timed::start(self);
    }
    fn stop(&self) -> (u64, u64) {
        Timed::stop(self)
    }
}

/// The AMD-Vi model keeps no resettable counters: the target subtracts a snapshot.
struct AmdModel<'m> {
    window: &'m AmdWindow<'m>,
    base: Cell<AmdViModelStats>,
}

impl Model for AmdModel<'_> {
    fn reset_stats(&self) {
        self.base.set(self.window.model.stats());
    }
    fn commands(&self) -> String {
        amd_commands(&self.base.get(), &self.window.model.stats())
    }
    fn start(&self) {
        self.window.start();
    }
    fn stop(&self) -> (u64, u64) {
        self.window.stop()
    }
}

impl Model for Timed<'_, SmmuModel<'_>> {
    fn reset_stats(&self) {
        self.model.reset_stats();
    }
    fn commands(&self) -> String {
        smmu_commands(&self.model.stats())
    }
    fn start(&self) {
        Timed::start(self);
    }
    fn stop(&self) -> (u64, u64) {
        Timed::stop(self)
    }
}

/// A target: where the work goes and which models execute its invalidations.
struct Target<'a, 'r, 'u> {
    name: &'static str,
    space: Space<'a, 'r, 'u>,
    models: Vec<&'a dyn Model>,
}

impl Target<'_, '_, '_> {
    #[inline]
    fn map(&self, iova: u64, pa: u64, len: u64) {
        let (iova, pa) = (Iova::new(iova), PhysAddr::new(pa));
        match self.space {
            Space::Domain(unit, d) => unit.map(d, iova, pa, len, RW).expect("map"),
            Space::Ioasid(ctx, io) => ioasid_map(ctx, io, iova, pa, len),
            Space::Direct(direct) => direct.map(iova, pa, len),
        }
    }

    /// Unmaps and flushes (the IOASID layer flushes each unit itself).
    #[inline]
    fn unmap(&self, iova: u64, len: u64) {
        let iova = Iova::new(iova);
        let bytes = match self.space {
            Space::Domain(unit, d) => {
                let mut gather = Gather::new();
                let bytes = unit.unmap(d, iova, len, &mut gather).expect("unmap");
                unit.flush(d, &mut gather).expect("flush");
                bytes
            }
            Space::Ioasid(ctx, io) => ioasid_unmap(ctx, io, iova, len),
            Space::Direct(direct) => direct.unmap(iova, len),
        };
        debug_assert_eq!(bytes, len);
    }

    fn map_pages(&self, iova: u64, pa: u64, len: u64) {
        for (off, size) in pages(iova, pa, len) {
            self.map(iova + off, pa + off, size);
        }
    }

    fn unmap_pages(&self, iova: u64, pa: u64, len: u64) {
        for (off, size) in pages(iova, pa, len) {
            self.unmap(iova + off, size);
        }
    }

    fn reset_stats(&self) {
        self.models.iter().for_each(|m| m.reset_stats());
    }

    fn start_timing(&self) {
        self.models.iter().for_each(|m| m.start());
    }

    /// (nanoseconds inside the models, register accesses).
    fn stop_timing(&self) -> (u64, u64) {
        self.models
            .iter()
            .map(|m| m.stop())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    }

    /// The invalidation work the models counted since the last reset.
    fn commands(&self) -> String {
        let all: Vec<String> = self.models.iter().map(|m| m.commands()).collect();
        all.join(" | ")
    }
}

/// The descriptors a VT-d model executed, by type (and IOTLB granularity), and its waits.
fn vtd_commands(st: &VtdModelStats) -> String {
    let all = [
        ("cc", st.context_cache_descs),
        ("iotlb-global", st.iotlb_global),
        ("iotlb-dsi", st.iotlb_domain),
        ("iotlb-psi", st.iotlb_page),
        ("dev-tlb", st.device_tlb),
        ("pasid-cache", st.pasid_cache),
        ("piotlb-pasid", st.piotlb_pasid),
        ("piotlb-psi", st.piotlb_page),
        ("wait", st.wait),
        ("reg-iotlb", st.register_iotlb_invalidations),
        ("wbf", st.write_buffer_flushes),
    ];
    named_counts("vtd", &all)
}

/// The commands an SMMUv3 model consumed, by opcode (CMD_SYNC included).
fn smmu_commands(st: &SmmuModelStats) -> String {
    let names = [
        (op::CFGI_STE, "CFGI_STE"),
        (op::CFGI_STE_RANGE, "CFGI_STE_RANGE"),
        (op::CFGI_CD, "CFGI_CD"),
        (op::CFGI_CD_ALL, "CFGI_CD_ALL"),
        (op::TLBI_NH_ALL, "TLBI_NH_ALL"),
        (op::TLBI_NH_ASID, "TLBI_NH_ASID"),
        (op::TLBI_NH_VA, "TLBI_NH_VA"),
        (op::TLBI_S12_VMALL, "TLBI_S12_VMALL"),
        (op::TLBI_S2_IPA, "TLBI_S2_IPA"),
        (op::ATC_INV, "ATC_INV"),
        (op::CMD_SYNC, "CMD_SYNC"),
    ];
    let mut all: Vec<(&str, u64)> = names.iter().map(|&(o, n)| (n, st.commands_of(o))).collect();
    let named: u64 = all.iter().map(|c| c.1).sum();
    all.push(("other", st.total_commands() - named));
    named_counts("smmu", &all)
}

/// The commands an AMD-Vi model executed between two snapshots.
fn amd_commands(a: &AmdViModelStats, b: &AmdViModelStats) -> String {
    let all = [
        (
            "pages-4K",
            b.invalidate_pages_page - a.invalidate_pages_page,
        ),
        (
            "pages-range",
            b.invalidate_pages_range - a.invalidate_pages_range,
        ),
        ("pages-all", b.invalidate_pages_all - a.invalidate_pages_all),
        ("iotlb", b.invalidate_iotlb - a.invalidate_iotlb),
        ("devtab", b.invalidate_devtab - a.invalidate_devtab),
        ("all", b.invalidate_all - a.invalidate_all),
        ("wait", b.completion_waits - a.completion_waits),
    ];
    named_counts("amdvi", &all)
}

fn named_counts(unit: &str, counts: &[(&str, u64)]) -> String {
    let shown: Vec<String> = counts
        .iter()
        .filter(|c| c.1 != 0)
        .map(|(n, c)| format!("{n}={c}"))
        .collect();
    if shown.is_empty() {
        format!("{unit}: none")
    } else {
        format!("{unit}: {}", shown.join(" "))
    }
}

/// The pages a per-page caller maps `[iova, iova + len)` with: (offset, size), 2 MiB where
/// both addresses are aligned and the rest is long enough, else 4 KiB.
fn pages(iova: u64, pa: u64, len: u64) -> impl Iterator<Item = (u64, u64)> {
    let next = Cell::new(0u64);
    std::iter::from_fn(move || {
        let off = next.get();
        if off >= len {
            return None;
        }
        let aligned = (iova + off) % M2 == 0 && (pa + off) % M2 == 0 && len - off >= M2;
        let size = if aligned { M2 } else { K4 };
        next.set(off + size);
        Some((off, size))
    })
}

// ---------------------------------------------------------------------------------------------
// workloads (the same as `benches/map_unmap.rs`)

#[derive(Clone, Copy)]
struct Work {
    name: &'static str,
    /// Offset of IOVA and PA from a 1 GiB boundary.
    offset: u64,
    len: u64,
    /// Also run one call per page.
    per_page: bool,
}

const WORK: &[Work] = &[
    Work {
        name: "1x4K",
        offset: 0,
        len: K4,
        per_page: false,
    },
    Work {
        name: "256x4K",
        offset: 0,
        len: 256 * K4,
        per_page: true,
    },
    Work {
        // 1 GiB of 4 KiB pages: the output is misaligned by 4 KiB, so no larger page fits.
        name: "262144x4K",
        offset: 0,
        len: G1,
        per_page: true,
    },
    Work {
        name: "256x2M",
        offset: 0,
        len: 256 * M2,
        per_page: true,
    },
    Work {
        // 16 x 4K up to a 2 MiB boundary, 15 x 2M, 16 x 4K.
        name: "mixed",
        offset: M2 - 16 * K4,
        len: 16 * K4 + 15 * M2 + 16 * K4,
        per_page: true,
    },
];

impl Work {
    fn big(&self) -> bool {
        self.len >= G1
    }

    /// Output address: 4 KiB pages only where the name says so.
    fn pa(&self) -> u64 {
        let base = if self.name.ends_with("x4K") {
            TARGET_PA + K4
        } else {
            TARGET_PA
        };
        base + self.offset
    }

    /// IOVA of copy `i` of the workload.
    fn iova(&self, i: u64) -> u64 {
        let index = WORK.iter().position(|x| x.name == self.name).unwrap_or(0) as u64;
        IOVA_BASE + index * REGION + i * self.len.next_multiple_of(G1) + self.offset
    }

    /// Copies mapped in a row before they are unmapped (distinct tables, like a real caller's
    /// live mappings).
    fn batch(&self) -> u64 {
        (64 * K4 / self.len).clamp(1, 64)
    }

    fn map_copy(&self, t: &Target<'_, '_, '_>, i: u64, per_page: bool) {
        if per_page {
            t.map_pages(self.iova(i), self.pa(), self.len);
        } else {
            t.map(black_box(self.iova(i)), self.pa(), self.len);
        }
    }

    fn unmap_copy(&self, t: &Target<'_, '_, '_>, i: u64, per_page: bool) {
        if per_page {
            t.unmap_pages(self.iova(i), self.pa(), self.len);
        } else {
            t.unmap(black_box(self.iova(i)), self.len);
        }
    }
}

/// Times `map` of `iters` copies (untimed unmap between batches).
fn time_map(t: &Target<'_, '_, '_>, w: &Work, per_page: bool, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(w.batch());
        let start = Stamp::now();
        for i in 0..k {
            w.map_copy(t, i, per_page);
        }
        total += start.elapsed();
        for i in 0..k {
            w.unmap_copy(t, i, false);
        }
        left -= k;
    }
    total
}

/// Times `unmap` with its flush of `iters` copies (untimed map between batches).
fn time_unmap(t: &Target<'_, '_, '_>, w: &Work, per_page: bool, iters: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(w.batch());
        for i in 0..k {
            w.map_copy(t, i, false);
        }
        let start = Stamp::now();
        for i in 0..k {
            w.unmap_copy(t, i, per_page);
        }
        total += start.elapsed();
        left -= k;
    }
    total
}

/// What timing one register access costs: (the bias each measured interval carries, the whole
/// cost the wrapper adds to the wall time), in nanoseconds. The report subtracts both, per
/// access, so that neither the model's share nor the total is inflated by the clock reads.
fn calibrate() -> (f64, f64) {
    struct Nothing;
    impl RegisterWindow for Nothing {
        fn read32(&self, _: usize) -> u32 {
            black_box(0)
        }
        fn write32(&self, _: usize, v: u32) {
            black_box(v);
        }
        fn read64(&self, _: usize) -> u64 {
            black_box(0)
        }
        fn write64(&self, _: usize, v: u64) {
            black_box(v);
        }
    }
    // Many short runs, keeping the least of each: a run the scheduler interrupted only reads
    // higher, never lower.
    const N: u32 = 20_000;
    const RUNS: usize = 25;
    let nothing = Nothing;
    let timed = Timed::new(&nothing);
    let run = |w: &dyn RegisterWindow| {
        let start = Instant::now();
        for i in 0..N {
            black_box(w.read32(black_box(i as usize)));
        }
        start.elapsed().as_nanos() as f64 / f64::from(N)
    };
    let (mut inside, mut added) = (f64::MAX, f64::MAX);
    for _ in 0..RUNS {
        let plain = run(&nothing);
        timed.start();
        let wrapped = run(&timed);
        let (ns, _) = timed.stop();
        inside = inside.min(ns as f64 / f64::from(N));
        added = added.min((wrapped - plain).max(0.0));
    }
    (inside, added)
}

/// One map and one unmap of the workload with the models timed: prints the commands per call
/// sequence and the share of the time spent in the models. `clock` is [`calibrate`]'s.
fn report(t: &Target<'_, '_, '_>, w: &Work, per_page: bool, clock: (f64, f64)) {
    let reps = match (w.big(), per_page) {
        (true, true) => 1,
        (true, false) => 4,
        _ => w.batch().max(8),
    };
    let mode = if per_page { "per-page" } else { "one-call" };
    // Fault in the host pages of the tables first: the arena reserves its buffer lazily.
    w.map_copy(t, 0, false);
    w.unmap_copy(t, 0, false);
    for (op, is_map) in [("map", true), ("unmap+flush", false)] {
        // The repetition with the least wall time: the one least disturbed by other processes.
        let mut best: Option<(f64, f64, u64)> = None;
        let mut commands = String::new();
        for r in 0..reps {
            if !is_map {
                w.map_copy(t, 0, false);
            }
            t.reset_stats();
            t.start_timing();
            let start = Instant::now();
            if is_map {
                w.map_copy(t, 0, per_page);
            } else {
                w.unmap_copy(t, 0, per_page);
            }
            let elapsed = start.elapsed();
            let (ns, n) = t.stop_timing();
            let wall = (elapsed.as_nanos() as f64 - n as f64 * clock.1).max(1.0);
            let model = (ns as f64 - n as f64 * clock.0).max(0.0);
            if best.map_or(true, |b| wall < b.0) {
                best = Some((wall, model, n));
            }
            if r == 0 {
                commands = t.commands();
            }
            if is_map {
                w.unmap_copy(t, 0, false);
            }
        }
        let (wall, model, n) = best.unwrap_or((1.0, 0.0, 0));
        println!(
            "units-report {}/{op}/{}/{mode}: {} per call sequence, {} in the model \
             ({:.0}%, {n} register accesses); commands: {commands}",
            t.name,
            w.name,
            show_ns(wall as u64),
            show_ns(model as u64),
            100.0 * model / wall,
        );
    }
    t.reset_stats();
}

fn show_ns(ns: u64) -> String {
    match ns {
        n if n >= 10_000_000 => format!("{:.1} ms", n as f64 / 1e6),
        n if n >= 10_000 => format!("{:.1} us", n as f64 / 1e3),
        n => format!("{n} ns"),
    }
}

/// Whether criterion will run any bench of this case: the report honours the command line's
/// filter (a plain substring; criterion takes a regex, which a plain name also is).
fn selected(t: &Target<'_, '_, '_>, w: &Work, mode: &str) -> bool {
    // Criterion's options that take a value (the value is not a filter).
    const VALUED: &[&str] = &[
        "--profile-time",
        "--sample-size",
        "--warm-up-time",
        "--measurement-time",
        "--nresamples",
        "--noise-threshold",
        "--confidence-level",
        "--significance-level",
        "--save-baseline",
        "--baseline",
        "--baseline-lenient",
        "--load-baseline",
        "--color",
        "--format",
        "--output-format",
        "--plotting-backend",
    ];
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let after_valued = i
                .checked_sub(1)
                .is_some_and(|p| VALUED.contains(&args[p].as_str()));
            !a.starts_with('-') && !after_valued
        })
        .map(|(_, a)| a)
        .collect();
    filters.is_empty()
        || ["unit-map", "unit-unmap-flush"].iter().any(|op| {
            let id = format!("{op}/{}/{}/{mode}", w.name, t.name);
            filters.iter().any(|f| id.contains(f.as_str()))
        })
}

fn bench_target(c: &mut Criterion, t: &Target<'_, '_, '_>, clock: (f64, f64)) {
    for w in WORK {
        let modes: &[bool] = if w.per_page { &[false, true] } else { &[false] };
        for &per_page in modes {
            if selected(t, w, if per_page { "per-page" } else { "one-call" }) {
                report(t, w, per_page, clock);
            }
        }
        for (op, is_map) in [("unit-map", true), ("unit-unmap-flush", false)] {
            let mut g = c.benchmark_group(format!("{op}/{}", w.name));
            if w.big() {
                // A sample is at least one 1 GiB call sequence: as few as criterion allows.
                g.sampling_mode(SamplingMode::Flat)
                    .warm_up_time(Duration::from_millis(1))
                    .measurement_time(Duration::from_secs(1));
            }
            for &per_page in modes {
                let mode = if per_page { "per-page" } else { "one-call" };
                g.bench_function(BenchmarkId::new(t.name, mode), |b| {
                    b.iter_custom(|iters| {
                        if is_map {
                            time_map(t, w, per_page, iters)
                        } else {
                            time_unmap(t, w, per_page, iters)
                        }
                    })
                });
            }
            g.finish();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// building the units

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x8000_0000,
        capacity: ARENA_BYTES,
    })
    .expect("arena")
}

/// QEMU's `intel-iommu` with `ECAP.C` set: a coherent page walker, as server VT-d units have
/// (QEMU's default leaves it clear, which makes the driver report every table write to
/// `PageAllocator::sync_for_device`; the arena's bookkeeping there would dominate the numbers,
/// where a kernel would run a few `clflush`).
fn vtd_identity() -> VtdModelConfig {
    VtdModelConfig::qemu_default().with_coherent(true)
}

fn vtd_unit<'a>(w: &'a VtdWindow<'a>, a: &'a Arena) -> VtdUnit<&'a VtdWindow<'a>, &'a Arena> {
    // The model's 48-bit HAW as the DMAR table would declare it (an undeclared width is
    // taken as 36 bits, below TARGET_PA).
    let cfg = VtdConfig::legacy().with_host_address_width(48);
    let u = VtdUnit::new(w, a, cfg).expect("VT-d unit");
    u.enable().expect("enable VT-d");
    u
}

fn smmu_unit<'a>(w: &'a SmmuWindow<'a>, a: &'a Arena) -> SmmuUnit<&'a SmmuWindow<'a>, &'a Arena> {
    let u = SmmuUnit::new(w, a, SmmuConfig::default()).expect("SMMUv3 unit");
    u.enable().expect("enable SMMUv3");
    u
}

/// A domain with the device attached.
fn domain(unit: &dyn Iommu, stage: Stage) -> DomainHandle {
    domain_for(unit, stage, DEV)
}

/// A domain with `dev` attached.
fn domain_for(unit: &dyn Iommu, stage: Stage, dev: DeviceId) -> DomainHandle {
    let cfg = DomainConfig {
        stage,
        ..DomainConfig::default()
    };
    let d = unit.domain_alloc(&cfg).expect("domain");
    unit.attach(dev, None, d).expect("attach");
    d
}

type AmdUnit<'a> = AmdViUnit<&'a AmdWindow<'a>, &'a Arena, 8>;

/// An AMD-Vi unit over the model as QEMU's `amd-iommu` reports it (v1 tables, 48-bit Mode 4,
/// `NpCache`).
fn amd_unit<'a>(w: &'a AmdWindow<'a>, a: &'a Arena) -> AmdUnit<'a> {
    let u = AmdViUnit::new(w, a, AmdViConfig::new()).expect("AMD-Vi unit");
    u.enable().expect("enable AMD-Vi");
    u
}

fn vtd_alone(c: &mut Criterion, clock: (f64, f64)) {
    let mem = arena();
    let model = VtdModel::new(&mem, vtd_identity());
    let window = Timed::new(&model);
    let unit = vtd_unit(&window, &mem);
    let d = domain(&unit, Stage::Second);
    let t = Target {
        name: "vtd-ss",
        space: Space::Domain(&unit, d),
        models: vec![&window],
    };
    bench_target(c, &t, clock);
}

fn smmu_alone(c: &mut Criterion, clock: (f64, f64), ril: bool) {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ril(ril));
    let window = Timed::new(&model);
    let unit = smmu_unit(&window, &mem);
    let d = domain(&unit, Stage::Second);
    let t = Target {
        name: if ril { "smmu-s2-ril" } else { "smmu-s2" },
        space: Space::Domain(&unit, d),
        models: vec![&window],
    };
    bench_target(c, &t, clock);
}

fn amd_alone(c: &mut Criterion, clock: (f64, f64)) {
    let mem = arena();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let window = Timed::new(&model);
    let unit = amd_unit(&window, &mem);
    let d = domain(&unit, Stage::Second);
    let stats = AmdModel {
        window: &window,
        base: Cell::new(model.stats()),
    };
    let t = Target {
        name: "amdvi-v1",
        space: Space::Domain(&unit, d),
        models: vec![&stats],
    };
    bench_target(c, &t, clock);
}

/// An IOASID attached to `DEV` on each of `units`, and [`Direct`] over the same units: the
/// layer's own cost per call in one run ([`overhead`]), then both as criterion targets.
fn ioasid_layer(
    c: &mut Criterion,
    clock: (f64, f64),
    mem: &Arena,
    units: &[&dyn Iommu],
    models: Vec<&dyn Model>,
    names: (&'static str, &'static str),
) {
    static PASIDS: PasidAllocator = PasidAllocator::new(20);
    let registry = Registry::new(units, &PASIDS).expect("registry");
    let ctx = IoasidCtx::new(&registry, mem, 0);
    let io = ctx.alloc(IoasidFlags::empty()).expect("IOASID");
    for unit in 0..units.len() {
        let unit = UnitId(unit as u8);
        let dev = ctx
            .bind(DeviceLabel { unit, id: DEV }, false)
            .expect("bind");
        ctx.attach(dev, io).expect("attach");
    }
    let direct = Direct::new(mem, units);
    let layer = Target {
        name: names.0,
        space: Space::Ioasid(&ctx, io),
        models: models.clone(),
    };
    let below = Target {
        name: names.1,
        space: Space::Direct(&direct),
        models,
    };
    overhead(&layer, &below);
    if overhead_only() {
        return;
    }
    bench_target(c, &layer, clock);
    bench_target(c, &below, clock);
}

fn ioasid_two_units(c: &mut Criterion, clock: (f64, f64)) {
    let mem = arena();
    let vmodel = VtdModel::new(&mem, vtd_identity());
    let vwindow = Timed::new(&vmodel);
    let vtd = vtd_unit(&vwindow, &mem);
    let smodel = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let swindow = Timed::new(&smodel);
    let smmu = smmu_unit(&swindow, &mem);
    let units: [&dyn Iommu; 2] = [&vtd, &smmu];
    let models: Vec<&dyn Model> = vec![&vwindow, &swindow];
    ioasid_layer(
        c,
        clock,
        &mem,
        &units,
        models,
        ("ioasid-2units", "direct-2units"),
    );
}

fn ioasid_one_unit(c: &mut Criterion, clock: (f64, f64)) {
    let mem = arena();
    let vmodel = VtdModel::new(&mem, vtd_identity());
    let vwindow = Timed::new(&vmodel);
    let vtd = vtd_unit(&vwindow, &mem);
    let units: [&dyn Iommu; 1] = [&vtd];
    ioasid_layer(
        c,
        clock,
        &mem,
        &units,
        vec![&vwindow],
        ("ioasid-vtd", "direct-vtd"),
    );
}

/// `UNITS_OVERHEAD=only`: the IOASID layer's overhead lines alone (no criterion bench, no
/// other target): what `valgrind --tool=callgrind` runs to count instructions per call.
fn overhead_only() -> bool {
    std::env::var("UNITS_OVERHEAD").is_ok_and(|v| v == "only")
}

/// The workloads of the overhead lines: single calls of each page size, and one call per page.
const OVERHEAD_WORK: &[(&str, bool)] = &[
    ("1x4K", false),
    ("256x4K", true),
    ("256x2M", false),
    ("256x2M", true),
    ("mixed", true),
];

/// The IOASID layer's own cost per call (issue 18, goal 4): map and unmap (with its flushes)
/// through `layer` (an IOASID) and through `below` (the same engine calls and flushes made
/// directly, [`Direct`]), batch against batch in alternating order, on the thread's CPU clock
/// (wall with `UNITS_CLOCK=wall`). Prints the medians per call, their difference and ratio,
/// and the median of the paired differences (each round's two batches ran within
/// microseconds of each other).
fn overhead<'a, 'r, 'u>(layer: &Target<'a, 'r, 'u>, below: &Target<'a, 'r, 'u>) {
    let rounds: usize = std::env::var("UNITS_OVERHEAD_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(201);
    for &(name, per_page) in OVERHEAD_WORK {
        let Some(w) = WORK.iter().find(|w| w.name == name) else {
            continue;
        };
        let mode = if per_page { "per-page" } else { "one-call" };
        if !selected(layer, w, mode) && !selected(below, w, mode) {
            continue;
        }
        let calls = if per_page {
            pages(w.iova(0), w.pa(), w.len).count() as u64
        } else {
            1
        } * w.batch();
        // Warm both: tables exist, host pages faulted in.
        for t in [layer, below] {
            time_map(t, w, per_page, w.batch());
            time_unmap(t, w, per_page, w.batch());
        }
        for (op, is_map) in [("map", true), ("unmap+flush", false)] {
            let (mut up, mut down, mut diff) = (Vec::new(), Vec::new(), Vec::new());
            for r in 0..rounds {
                let run = |t: &Target<'_, '_, '_>| {
                    let d = if is_map {
                        time_map(t, w, per_page, w.batch())
                    } else {
                        time_unmap(t, w, per_page, w.batch())
                    };
                    d.as_nanos() as f64 / calls as f64
                };
                let (a, b) = if r % 2 == 0 {
                    let a = run(layer);
                    (a, run(below))
                } else {
                    let b = run(below);
                    (run(layer), b)
                };
                up.push(a);
                down.push(b);
                diff.push(a - b);
            }
            let (a, b, d) = (median(&mut up), median(&mut down), median(&mut diff));
            println!(
                "units-report overhead {}/{op}/{}/{mode}: {:.0} ns per call through the IOASID, \
                 {:.0} ns direct ({}): +{:.0} ns, {:.2}x; paired median +{:.0} ns \
                 ({rounds} rounds of {calls} calls)",
                layer.name,
                w.name,
                a,
                b,
                below.name,
                a - b,
                a / b,
                d
            );
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn units(c: &mut Criterion) {
    let clock = calibrate();
    if overhead_only() {
        ioasid_one_unit(c, clock);
        ioasid_two_units(c, clock);
        return;
    }
    println!(
        "units-report clock: {:.1} ns of each timed register access is clock reads, \
         {:.1} ns added to the wall time (both subtracted below)",
        clock.0, clock.1
    );
    vtd_alone(c, clock);
    smmu_alone(c, clock, false);
    smmu_alone(c, clock, true);
    amd_alone(c, clock);
    ioasid_one_unit(c, clock);
    ioasid_two_units(c, clock);
}

fn config() -> Criterion {
    // Short by default: ~70 benches on two shared cores.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = units
}
criterion_main!(benches);
