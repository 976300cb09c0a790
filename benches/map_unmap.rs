//! Map and unmap throughput of the engine (VT-d second stage, Arm stage 2 with the 4 KiB
//! granule and, on the same workloads counted in entries, the 16 KiB and 64 KiB granules,
//! AMD-Vi v1; the first-stage formats VT-d first stage, Arm stage 1 and AMD-Vi v2)
//! against two peers doing the same work over the same host memory pool, and a memset
//! of the same number of PTE bytes as the lower bound.
//!
//! - `x86_64` crate: `OffsetPageTable::map_to` / `unmap`, one page per call (it has no range
//!   API), TLB flush tokens ignored (no hardware here). It never frees emptied tables.
//! - `aarch64-paging` crate: `RootTable<Stage2, _>::map_range` (one call per range); it unmaps
//!   by mapping the range with invalid attributes.
//!
//! Every table page of every contender comes from one [`HostPool`]: a bump/free-list allocator
//! over a zeroed host buffer whose physical-to-virtual translation is one subtraction, like a
//! kernel's linear map. A page is zeroed when it is handed out again.
//!
//! Run: `cargo bench --bench map_unmap` (a few minutes on two shared cores); results and
//! ratios are in `BENCHMARKS.md`. Flushing through the unit models' queues and IOASID fan-out
//! to two units are measured by `benches/units.rs`.

use std::alloc::{alloc_zeroed, Layout};
use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr, WalkerCoherency};
use iommu_engine::pgtable::amdvi_v1::{AmdV1, AmdV1Config};
use iommu_engine::pgtable::amdvi_v2::{AmdV2, AmdV2Config};
use iommu_engine::pgtable::arm_s1::{ArmS1, ArmS1Config};
use iommu_engine::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use iommu_engine::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use iommu_engine::pgtable::{Format, Gather, InvalidationComplete, PageTable, Prot};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const G1: u64 = 1 << 30;
/// Physical address of the pool's first byte (fake, != its host address).
const POOL_PA: u64 = 0x4000_0000;
/// Pool size: tables for 1 GiB of 4 KiB pages (2 MiB of leaf tables) many times over.
const POOL_BYTES: usize = 128 << 20;
/// Where the mapped output addresses start (never dereferenced).
const TARGET_PA: u64 = 0x80_0000_0000;
/// Where each workload's IOVAs start: 1 GiB aligned, past the 4-level tables' first entries.
const IOVA_BASE: u64 = 0x40_0000_0000;

// ---------------------------------------------------------------------------------------------
// the shared table-page pool

/// A bump allocator with a free list per page size (4, 16 and 64 KiB: the granules' table
/// pages) over one zeroed host buffer.
struct HostPool {
    base: NonNull<u8>,
    next: Cell<usize>,
    free: RefCell<[Vec<usize>; 3]>,
}

/// The free list of pages of `1 << size_log2` bytes, if the pool keeps one.
fn free_list(size_log2: u32) -> Option<usize> {
    match size_log2 {
        12 => Some(0),
        14 => Some(1),
        16 => Some(2),
        _ => None,
    }
}

impl HostPool {
    fn new() -> Self {
        let layout = Layout::from_size_align(POOL_BYTES, 1 << 21).expect("layout");
        // SAFETY: non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("host memory");
        Self {
            base,
            next: Cell::new(0),
            free: RefCell::new([Vec::new(), Vec::new(), Vec::new()]),
        }
    }

    /// A zeroed page of `1 << size_log2` bytes: (offset in the pool, host pointer).
    fn take(&self, size_log2: u32) -> Option<(usize, NonNull<u8>)> {
        let reused = free_list(size_log2).and_then(|l| self.free.borrow_mut()[l].pop());
        if let Some(off) = reused {
            // SAFETY: `off` is a freed page of this size inside the pool.
            let p = unsafe { self.base.add(off) };
            // SAFETY: the page is ours again; zero it as a real allocator must.
            unsafe { p.as_ptr().write_bytes(0, 1 << size_log2) };
            return Some((off, p));
        }
        self.bump(size_log2)
    }

    fn bump(&self, size_log2: u32) -> Option<(usize, NonNull<u8>)> {
        let size = 1usize << size_log2;
        let off = self.next.get().next_multiple_of(size);
        if off + size > POOL_BYTES {
            return None;
        }
        self.next.set(off + size);
        // SAFETY: inside the pool; never handed out before, so still zero.
        Some((off, unsafe { self.base.add(off) }))
    }

    fn give_back(&self, off: usize, size_log2: u32) {
        if let Some(l) = free_list(size_log2) {
            self.free.borrow_mut()[l].push(off);
        }
    }

    fn offset_of(&self, va: NonNull<u8>) -> usize {
        va.as_ptr() as usize - self.base.as_ptr() as usize
    }
}

// SAFETY: pages are aligned to their size physically (POOL_PA and offsets are multiples of it)
// and virtually (the buffer is 2 MiB aligned), zeroed when handed out, never handed out twice
// before being freed; phys_to_virt answers only inside the pool.
unsafe impl PageAllocator for HostPool {
    #[inline]
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        let (off, va) = self.take(size_log2)?;
        Some(Page {
            pa: PhysAddr::new(POOL_PA + off as u64),
            va,
        })
    }

    #[inline]
    unsafe fn free(&self, page: Page, size_log2: u32) {
        self.give_back(self.offset_of(page.va), size_log2);
    }

    #[inline]
    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let off = pa.get().checked_sub(POOL_PA)?;
        // SAFETY: inside the pool.
        (off < POOL_BYTES as u64).then(|| unsafe { self.base.add(off as usize) })
    }
}

// ---------------------------------------------------------------------------------------------
// the contenders

/// One page table that can map and unmap ranges; `per_page` forces one call per 4 KiB page.
trait Contender {
    fn name(&self) -> &'static str;
    /// Maps `[iova, iova + len)` in one call where the API allows, else page by page.
    fn map(&mut self, iova: u64, pa: u64, len: u64);
    /// Unmaps `[iova, iova + len)` and frees what the implementation frees.
    fn unmap(&mut self, iova: u64, len: u64);
    /// Maps page by page with `page` sized calls.
    fn map_pages(&mut self, iova: u64, pa: u64, len: u64, page: u64) {
        for off in (0..len).step_by(page as usize) {
            self.map(iova + off, pa + off, page);
        }
    }
    fn unmap_pages(&mut self, iova: u64, len: u64, page: u64) {
        for off in (0..len).step_by(page as usize) {
            self.unmap(iova + off, page);
        }
    }
}

fn done() -> InvalidationComplete {
    // SAFETY: no hardware walks the benchmark's tables.
    unsafe { InvalidationComplete::assume() }
}

struct Engine<'a, F: Format> {
    name: &'static str,
    table: PageTable<F, &'a HostPool>,
    pool: &'a HostPool,
}

impl<F: Format> Contender for Engine<'_, F> {
    fn name(&self) -> &'static str {
        self.name
    }
    #[inline]
    fn map(&mut self, iova: u64, pa: u64, len: u64) {
        let rw = Prot::READ | Prot::WRITE;
        self.table
            .map(Iova::new(iova), PhysAddr::new(pa), len, rw)
            .expect("engine map");
    }
    #[inline]
    fn unmap(&mut self, iova: u64, len: u64) {
        let mut gather = Gather::new();
        self.table
            .unmap(Iova::new(iova), len, &mut gather)
            .expect("engine unmap");
        gather.release(self.pool, done()).expect("release");
    }
}

fn vtd_ss(pool: &HostPool) -> Engine<'_, VtdSs> {
    let cfg = VtdSsConfig {
        agaw: 48,
        haw: 46,
        page_2m: true,
        page_1g: true,
        snoop: false,
        dirty_tracking: false,
    };
    let f = VtdSs::new(cfg).expect("format");
    Engine {
        name: "engine-vtd-ss",
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

fn amdvi_v1(pool: &HostPool) -> Engine<'_, AmdV1> {
    // 48 input bits (Mode 4), 2M/1G leaves and size-encoded pages, FC set (enforced snoop).
    let cfg = AmdV1Config {
        ias: 48,
        oas: 48,
        large_pages: true,
        force_coherent: true,
        dirty_tracking: false,
    };
    let f = AmdV1::new(cfg).expect("format");
    Engine {
        name: "engine-amdvi-v1",
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

fn arm_s2(pool: &HostPool) -> Engine<'_, ArmS2> {
    arm_s2_granule(pool, 12, "engine-arm-s2")
}

/// The Arm stage-2 format at a granule of `1 << granule_log2` bytes, as `arm_s2` otherwise.
fn arm_s2_granule<'a>(
    pool: &'a HostPool,
    granule_log2: u32,
    name: &'static str,
) -> Engine<'a, ArmS2> {
    let cfg = ArmS2Config {
        granule_log2,
        ias: 48,
        oas: 48,
        blocks: true,
        attributes: S2Attributes::WriteBack,
        dirty_tracking: false,
        bbml2: true,
    };
    let f = ArmS2::new(cfg).expect("format");
    Engine {
        name,
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

// The first-stage formats (issue 18, goal 5): the same engine and fast paths, other encoders.

fn vtd_fs(pool: &HostPool) -> Engine<'_, VtdFs> {
    // 4 levels (48-bit), 2M and 1G pages, XD on leaves without EXEC.
    let cfg = VtdFsConfig {
        levels: 4,
        haw: 46,
        page_1g: true,
        execute_disable: true,
        dirty_tracking: false,
    };
    let f = VtdFs::new(cfg).expect("format");
    Engine {
        name: "engine-vtd-fs",
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

fn arm_s1(pool: &HostPool) -> Engine<'_, ArmS1> {
    // As `arm_s2`: 4 KiB granule, 48-bit input, blocks, FEAT_BBM level 2 (the hint on).
    let cfg = ArmS1Config {
        granule_log2: 12,
        ias: 48,
        oas: 48,
        blocks: true,
        coherent: true,
        dirty_tracking: false,
        bbml2: true,
    };
    let f = ArmS1::new(cfg).expect("format");
    Engine {
        name: "engine-arm-s1",
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

fn amdvi_v2(pool: &HostPool) -> Engine<'_, AmdV2> {
    // 4 levels, NX on leaves without EXEC (x86 first-stage entries, as VT-d first stage).
    let cfg = AmdV2Config {
        levels: 4,
        oas: 48,
        execute_disable: true,
        dirty_tracking: false,
    };
    let f = AmdV2::new(cfg).expect("format");
    Engine {
        name: "engine-amdvi-v2",
        table: PageTable::new(f, pool, WalkerCoherency::Coherent).expect("table"),
        pool,
    }
}

mod x86_peer {
    use super::*;
    use x86_64::structures::paging::{
        FrameAllocator, Mapper, OffsetPageTable, Page as XPage, PageTable as XTable,
        PageTableFlags, PhysFrame, Size1GiB, Size2MiB, Size4KiB,
    };
    use x86_64::{PhysAddr as XPhys, VirtAddr};

    pub struct Frames<'a>(pub &'a HostPool);

    // SAFETY: frames come from the pool, unused and 4 KiB aligned.
    unsafe impl FrameAllocator<Size4KiB> for Frames<'_> {
        fn allocate_frame(&mut self) -> Option<PhysFrame<Size4KiB>> {
            let page = self.0.alloc(12)?;
            Some(PhysFrame::containing_address(XPhys::new(page.pa.get())))
        }
    }

    pub struct X86<'a> {
        pub table: OffsetPageTable<'a>,
        pub frames: Frames<'a>,
    }

    pub fn new(pool: &HostPool) -> X86<'_> {
        let root = pool.alloc(12).expect("root");
        // SAFETY: a zeroed, 4 KiB aligned page the pool gave us, used only by this table.
        let level4 = unsafe { &mut *root.va.as_ptr().cast::<XTable>() };
        let offset = VirtAddr::new(pool.base.as_ptr() as u64 - POOL_PA);
        X86 {
            // SAFETY: every frame of the pool is mapped at `offset + pa`.
            table: unsafe { OffsetPageTable::new(level4, offset) },
            frames: Frames(pool),
        }
    }

    const FLAGS: PageTableFlags = PageTableFlags::PRESENT.union(PageTableFlags::WRITABLE);

    impl Contender for X86<'_> {
        fn name(&self) -> &'static str {
            "x86_64-OffsetPageTable"
        }
        #[inline]
        fn map(&mut self, iova: u64, pa: u64, len: u64) {
            // Largest page per step, as the engine picks them.
            let mut off = 0;
            while off < len {
                let (v, p) = (iova + off, pa + off);
                let aligned = |s: u64| (v | p) % s == 0 && len - off >= s;
                // SAFETY: the output addresses are never accessed; this table is never loaded.
                unsafe {
                    if aligned(G1) {
                        let page = XPage::<Size1GiB>::from_start_address(VirtAddr::new(v)).unwrap();
                        let frame = PhysFrame::from_start_address(XPhys::new(p)).unwrap();
                        self.table
                            .map_to(page, frame, FLAGS, &mut self.frames)
                            .expect("map_to")
                            .ignore();
                        off += G1;
                    } else if aligned(M2) {
                        let page = XPage::<Size2MiB>::from_start_address(VirtAddr::new(v)).unwrap();
                        let frame = PhysFrame::from_start_address(XPhys::new(p)).unwrap();
                        self.table
                            .map_to(page, frame, FLAGS, &mut self.frames)
                            .expect("map_to")
                            .ignore();
                        off += M2;
                    } else {
                        let page = XPage::<Size4KiB>::from_start_address(VirtAddr::new(v)).unwrap();
                        let frame = PhysFrame::from_start_address(XPhys::new(p)).unwrap();
                        self.table
                            .map_to(page, frame, FLAGS, &mut self.frames)
                            .expect("map_to")
                            .ignore();
                        off += K4;
                    }
                }
            }
        }
        #[inline]
        fn unmap(&mut self, iova: u64, len: u64) {
            let mut off = 0;
            while off < len {
                let v = VirtAddr::new(iova + off);
                // Try the sizes the map used, largest first.
                if (iova + off) % G1 == 0 && len - off >= G1 {
                    if let Ok((_, f)) = self
                        .table
                        .unmap(XPage::<Size1GiB>::from_start_address(v).unwrap())
                    {
                        f.ignore();
                        off += G1;
                        continue;
                    }
                }
                if (iova + off) % M2 == 0 && len - off >= M2 {
                    if let Ok((_, f)) = self
                        .table
                        .unmap(XPage::<Size2MiB>::from_start_address(v).unwrap())
                    {
                        f.ignore();
                        off += M2;
                        continue;
                    }
                }
                let (_, f) = self
                    .table
                    .unmap(XPage::<Size4KiB>::from_start_address(v).unwrap())
                    .expect("unmap");
                f.ignore();
                off += K4;
            }
        }
    }
}

mod arm_peer {
    use super::*;
    use aarch64_paging::descriptor::{PhysicalAddress, Stage2Attributes};
    use aarch64_paging::paging::{
        Constraints, MemoryRegion, PageTable as APageTable, RootTable, Stage2, Translation,
    };

    pub struct PoolTranslation<'a>(pub &'a HostPool);

    impl Translation<Stage2Attributes> for PoolTranslation<'_> {
        fn allocate_table(&mut self) -> (NonNull<APageTable<Stage2Attributes>>, PhysicalAddress) {
            let page = self.0.alloc(12).expect("pool page");
            (page.va.cast(), PhysicalAddress(page.pa.get() as usize))
        }
        unsafe fn deallocate_table(&mut self, table: NonNull<APageTable<Stage2Attributes>>) {
            self.0.give_back(self.0.offset_of(table.cast()), 12);
        }
        fn physical_to_virtual(
            &self,
            pa: PhysicalAddress,
        ) -> NonNull<APageTable<Stage2Attributes>> {
            self.0
                .phys_to_virt(PhysAddr::new(pa.0 as u64))
                .expect("pool address")
                .cast()
        }
    }

    pub struct Arm<'a>(pub RootTable<Stage2, PoolTranslation<'a>>);

    pub fn new(pool: &HostPool) -> Arm<'_> {
        Arm(RootTable::new(PoolTranslation(pool), 0, Stage2))
    }

    fn attrs() -> Stage2Attributes {
        Stage2Attributes::VALID
            | Stage2Attributes::MEMATTR_NORMAL_INNER_WB
            | Stage2Attributes::MEMATTR_NORMAL_OUTER_WB
            | Stage2Attributes::S2AP_ACCESS_RW
            | Stage2Attributes::SH_INNER
            | Stage2Attributes::ACCESS_FLAG
            | Stage2Attributes::XN
    }

    impl Contender for Arm<'_> {
        fn name(&self) -> &'static str {
            "aarch64-paging-Stage2"
        }
        #[inline]
        fn map(&mut self, iova: u64, pa: u64, len: u64) {
            let region = MemoryRegion::new(iova as usize, (iova + len) as usize);
            self.0
                .map_range(
                    &region,
                    PhysicalAddress(pa as usize),
                    attrs(),
                    Constraints::empty(),
                )
                .expect("map_range");
        }
        #[inline]
        fn unmap(&mut self, iova: u64, len: u64) {
            let region = MemoryRegion::new(iova as usize, (iova + len) as usize);
            self.0
                .map_range(
                    &region,
                    PhysicalAddress(0),
                    Stage2Attributes::empty(),
                    Constraints::empty(),
                )
                .expect("unmap via map_range");
        }
    }
}

mod multiarch_peer {
    //! `page_table_multiarch` 0.6: `PageTable64` with the x86-64 entry format (the host's
    //! architecture; its `aarch64` type is compiled only on aarch64 hosts). Its frame handler is
    //! a type with static functions, so the pool is reached through a process-wide pointer set
    //! by [`new`]. `map_region` picks the largest page per step (`allow_huge`), `unmap_region`
    //! clears entry by entry and never frees emptied tables; TLB flushes are compiled out on a
    //! hosted target.
    use super::*;
    use memory_addr::{PhysAddr as MPhys, VirtAddr as MVirt};
    use page_table_multiarch::x86_64::X64PageTable;
    use page_table_multiarch::{MappingFlags, PagingHandler};
    use std::sync::atomic::AtomicPtr;

    static POOL: AtomicPtr<HostPool> = AtomicPtr::new(std::ptr::null_mut());

    fn pool() -> &'static HostPool {
        // SAFETY: set by `new` to a pool that outlives every table built on it (the bench's
        // pool lives until the process ends); the bench is single-threaded.
        unsafe { &*POOL.load(Ordering::Relaxed) }
    }

    pub struct Handler;

    impl PagingHandler for Handler {
        fn alloc_frames(num: usize, align: usize) -> Option<MPhys> {
            assert!(num == 1 && align <= K4 as usize, "one 4 KiB frame");
            let page = pool().alloc(12)?;
            Some(MPhys::from(page.pa.get() as usize))
        }
        fn dealloc_frames(paddr: MPhys, num: usize) {
            assert_eq!(num, 1);
            pool().give_back(paddr.as_usize() - POOL_PA as usize, 12);
        }
        fn phys_to_virt(paddr: MPhys) -> MVirt {
            let va = pool()
                .phys_to_virt(PhysAddr::new(paddr.as_usize() as u64))
                .expect("pool address");
            MVirt::from(va.as_ptr() as usize)
        }
    }

    pub struct Multiarch(X64PageTable<Handler>);

    pub fn new(pool: &HostPool) -> Multiarch {
        POOL.store(pool as *const HostPool as *mut HostPool, Ordering::Relaxed);
        Multiarch(X64PageTable::try_new().expect("root"))
    }

    impl Contender for Multiarch {
        fn name(&self) -> &'static str {
            "page_table_multiarch-X64"
        }
        #[inline]
        fn map(&mut self, iova: u64, pa: u64, len: u64) {
            let flags = MappingFlags::READ | MappingFlags::WRITE;
            let (v0, p0) = (iova as usize, pa as usize);
            self.0
                .cursor()
                .map_region(
                    MVirt::from(v0),
                    |v| MPhys::from(p0 + (v.as_usize() - v0)),
                    len as usize,
                    flags,
                    true,
                )
                .expect("map_region");
        }
        #[inline]
        fn unmap(&mut self, iova: u64, len: u64) {
            self.0
                .cursor()
                .unmap_region(MVirt::from(iova as usize), len as usize)
                .expect("unmap_region");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// workloads

/// A mapping workload: total length, and the IOVA/PA offset that decides the page sizes.
#[derive(Clone, Copy)]
struct Work {
    name: &'static str,
    /// Offset from a block (or 1 GiB) boundary of both IOVA and PA (makes the range start with
    /// pages up to the next block boundary).
    offset: u64,
    len: u64,
    /// Page size of a per-page call, if the workload is also run one page per call.
    per_page: Option<u64>,
    /// Pages only: the output is misaligned by one page, so no larger page fits.
    pages_only: bool,
    /// First IOVA of the workload's region: each workload has its own, because peers keep
    /// emptied tables linked (a block cannot go where a page's table was left).
    region: u64,
    /// The page (`pages_only`) or block size that a packed layout aligns each range to.
    unit: u64,
}

const G128: u64 = 128 * G1;

const WORK: &[Work] = &[
    Work {
        name: "1x4K",
        offset: 0,
        len: K4,
        per_page: None,
        pages_only: true,
        region: IOVA_BASE,
        unit: K4,
    },
    Work {
        name: "256x4K",
        offset: 0,
        len: 256 * K4,
        per_page: Some(K4),
        pages_only: true,
        region: IOVA_BASE + G128,
        unit: K4,
    },
    Work {
        name: "262144x4K",
        // 1 GiB of 4 KiB pages: the output is misaligned by 4 KiB, so no larger page fits.
        offset: 0,
        len: G1,
        per_page: None,
        pages_only: true,
        region: IOVA_BASE + 2 * G128,
        unit: K4,
    },
    Work {
        name: "256x2M",
        offset: 0,
        len: 256 * M2,
        per_page: Some(M2),
        pages_only: false,
        region: IOVA_BASE + 3 * G128,
        unit: M2,
    },
    Work {
        // 16 x 4K up to a 2 MiB boundary, 15 x 2M, 16 x 4K.
        name: "mixed",
        offset: M2 - 16 * K4,
        len: 16 * K4 + 15 * M2 + 16 * K4,
        per_page: None,
        pages_only: false,
        region: IOVA_BASE + 4 * G128,
        unit: M2,
    },
];

/// `WORK` for a granule of `1 << granule_log2` bytes (issue 18, goal 1: the Arm format's 16 KiB
/// and 64 KiB granules), counted in entries: each workload writes as many leaves (pages of the
/// granule, level-2 blocks of `granule << (granule_log2 - 3)` bytes) as its 4 KiB original, so
/// its rows compare with the 4 KiB rows and the store limits of the same entry counts. The
/// names say the sizes (`256x16K`, `256x32M`, ...; `mixed-16K` is 16 pages up to a block
/// boundary, 15 blocks, 16 pages); each workload has 4 TiB of its own from `base`.
fn scaled_work(granule_log2: u32, base: u64) -> Vec<Work> {
    let page = 1u64 << granule_log2;
    let block = page << (granule_log2 - 3);
    let size = |bytes: u64| match bytes.trailing_zeros() {
        b @ 30.. => format!("{}G", 1u64 << (b - 30)),
        b @ 20.. => format!("{}M", 1u64 << (b - 20)),
        b => format!("{}K", 1u64 << (b - 10)),
    };
    let name = |n: &str| -> &'static str { Box::leak(n.to_owned().into_boxed_str()) };
    WORK.iter()
        .enumerate()
        .map(|(i, w)| {
            let region = base + ((i as u64) << 42);
            let (len, offset, per_page, unit) = match w.name {
                "mixed" => (32 * page + 15 * block, block - 16 * page, None, block),
                _ if w.pages_only => (w.len / K4 * page, 0, w.per_page.map(|_| page), page),
                _ => (w.len / M2 * block, 0, w.per_page.map(|_| block), block),
            };
            let unit_name = if w.pages_only {
                size(page)
            } else {
                size(block)
            };
            let label = match w.name {
                "mixed" => format!("mixed-{}", size(page)),
                _ => format!("{}x{}", len / unit, unit_name),
            };
            Work {
                name: name(&label),
                offset,
                len,
                per_page,
                pages_only: w.pages_only,
                region,
                unit,
            }
        })
        .collect()
}

/// Output address for a workload: only pages where it says so.
fn target_pa(w: &Work) -> u64 {
    if w.pages_only {
        TARGET_PA + w.unit
    } else {
        TARGET_PA
    }
}

/// The one-call rows over 262,144 entries (1 GiB of 4 KiB pages).
fn whole_table_row(w: &Work) -> bool {
    w.pages_only && w.len / w.unit >= 262_144
}

/// How many distinct ranges a timed batch maps before the untimed unmap: 64 pages' worth, and
/// at least 16 ranges below 1 GiB. Each batch reads the clock twice (25-40 ns between the two
/// reads on the 2-vCPU guest of BENCHMARKS.md), which one call of 256 pages took whole, where
/// criterion's loop spreads it over many iterations of the store limit; a 1 GiB call takes
/// 100 µs or more.
fn batch(w: &Work) -> u64 {
    if whole_table_row(w) {
        1
    } else {
        (64 * w.unit / w.len).clamp(16, 64)
    }
}

/// Distance between the ranges of a timed batch. By default each range starts its own 1 GiB
/// (or its own multiple of 1 GiB: the layout every row of BENCHMARKS.md uses: a 256 x 4K batch
/// fills entries 0-255 of 16 leaf tables, whose lines share L1 sets).
/// `IE_BENCH_LAYOUT=packed`, a diagnostic of that layout's cost: back to back (page workloads)
/// or one block apart (the others, for their page sizes), as a VMM maps guest memory or an
/// IOVA allocator hands out ranges.
fn stride(w: &Work) -> u64 {
    let packed = std::env::var("IE_BENCH_LAYOUT").is_ok_and(|v| v == "packed");
    if packed && !whole_table_row(w) {
        w.len.next_multiple_of(w.unit)
    } else {
        w.len.next_multiple_of(G1).max(G1)
    }
}

/// Times `map` of `iters` copies of the workload (untimed unmap between batches).
fn time_map<C: Contender>(c: &mut C, w: &Work, per_page: bool, iters: u64) -> Duration {
    let stride = stride(w);
    let n = batch(w);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(n);
        let start = Instant::now();
        for i in 0..k {
            let (iova, pa) = (w.region + i * stride + w.offset, target_pa(w) + w.offset);
            match (per_page, w.per_page) {
                (true, Some(p)) => c.map_pages(iova, pa, w.len, p),
                _ => c.map(black_box(iova), pa, w.len),
            }
        }
        total += start.elapsed();
        for i in 0..k {
            c.unmap(w.region + i * stride + w.offset, w.len);
        }
        left -= k;
    }
    total
}

/// Times `unmap` (with the gather's release) of `iters` copies (untimed map between batches).
fn time_unmap<C: Contender>(c: &mut C, w: &Work, per_page: bool, iters: u64) -> Duration {
    let stride = stride(w);
    let n = batch(w);
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let k = left.min(n);
        for i in 0..k {
            c.map(
                w.region + i * stride + w.offset,
                target_pa(w) + w.offset,
                w.len,
            );
        }
        let start = Instant::now();
        for i in 0..k {
            let iova = w.region + i * stride + w.offset;
            match (per_page, w.per_page) {
                (true, Some(p)) => c.unmap_pages(iova, w.len, p),
                _ => c.unmap(black_box(iova), w.len),
            }
        }
        total += start.elapsed();
        left -= k;
    }
    total
}

fn contenders(
    pool: &HostPool,
) -> (
    Engine<'_, VtdSs>,
    Engine<'_, ArmS2>,
    x86_peer::X86<'_>,
    arm_peer::Arm<'_>,
    multiarch_peer::Multiarch,
) {
    (
        vtd_ss(pool),
        arm_s2(pool),
        x86_peer::new(pool),
        arm_peer::new(pool),
        multiarch_peer::new(pool),
    )
}

fn bench_one<C: Contender>(c: &mut Criterion, who: &mut C, w: &Work) {
    let name = who.name();
    let mut g = c.benchmark_group(format!("map/{}", w.name));
    g.bench_function(BenchmarkId::new(name, "one-call"), |b| {
        b.iter_custom(|iters| time_map(who, w, false, iters))
    });
    if w.per_page.is_some() {
        g.bench_function(BenchmarkId::new(name, "per-page"), |b| {
            b.iter_custom(|iters| time_map(who, w, true, iters))
        });
    }
    g.finish();
    let mut g = c.benchmark_group(format!("unmap/{}", w.name));
    g.bench_function(BenchmarkId::new(name, "one-call"), |b| {
        b.iter_custom(|iters| time_unmap(who, w, false, iters))
    });
    if w.per_page.is_some() {
        g.bench_function(BenchmarkId::new(name, "per-page"), |b| {
            b.iter_custom(|iters| time_unmap(who, w, true, iters))
        });
    }
    g.finish();
}

fn memset_bound(c: &mut Criterion) {
    let mut g = c.benchmark_group("memset-bound");
    for (name, ptes) in [("1x4K", 1usize), ("256x4K", 256), ("262144x4K", 262_144)] {
        let mut buf = vec![0u64; ptes];
        g.bench_function(name, |b| {
            b.iter(|| {
                // One PTE-sized store per page: the least any table writer must do.
                let p = black_box(buf.as_mut_ptr());
                // SAFETY: `p` points at `ptes` u64s.
                unsafe { p.write_bytes(0x5a, ptes) };
                black_box(&buf);
            })
        });
    }
    g.finish();
    // The store limit: one 64-bit atomic store per entry written, the least an engine that
    // writes hardware-walked memory only with such stores (as this one must) can do. 256
    // entries is also the limit of the 256 x 2M rows (one level-1 entry each).
    let mut g = c.benchmark_group("store-limit");
    for (name, ptes) in [("1x4K", 1usize), ("256x4K", 256), ("262144x4K", 262_144)] {
        let buf: Vec<AtomicU64> = (0..ptes).map(|_| AtomicU64::new(0)).collect();
        g.bench_function(name, |b| b.iter(|| store_pass(black_box(&buf[..]))));
    }
    g.finish();
    all_or_nothing_limits(c);
    break_limits(c);
}

/// What breaking one contiguous run costs at least (issue 18, goal 1: Arm's per-page unmaps of
/// hinted blocks, the one row above 1.2x VT-d): the first unmap in a run of 16 clears the hint
/// of all 16 leaves before it clears its own, each with an atomic read-modify-write, since
/// another CPU may be clearing its own leaf of the run at the same time and a plain store of
/// the value read before would bring that leaf back (rule 4 of ARCHITECTURE.md).
/// `break-limit/16-rmw`: those 16 `fetch_and`s (a locked `AND` each on x86-64, each a full
/// barrier); `break-limit/16-load-store`: the same bits cleared by a load and a store per leaf,
/// what the break would cost without concurrent unmaps.
fn break_limits(c: &mut Criterion) {
    #[repr(align(128))]
    struct Run([AtomicU64; 16]);
    const HINT: u64 = 1 << 52;
    let run = Run(std::array::from_fn(|i| {
        AtomicU64::new(0x5000_0403 | HINT | (i as u64) << 21)
    }));
    let mut g = c.benchmark_group("break-limit");
    g.bench_function("16-rmw", |b| {
        b.iter(|| {
            for e in &black_box(&run).0 {
                e.fetch_and(!HINT, Ordering::AcqRel);
            }
        })
    });
    g.bench_function("16-load-store", |b| {
        b.iter(|| {
            for e in &black_box(&run).0 {
                let v = e.load(Ordering::Acquire);
                e.store(v & !HINT, Ordering::Release);
            }
        })
    });
    g.finish();
}

/// A bit no entry of the limits' tables ever has: their emptiness checks always pass.
const ABSENT: u64 = 1 << 62;

/// One 64-bit `Release` store per entry, each the next page's (a map's leaf loop).
#[inline(always)]
fn store_pass(entries: &[AtomicU64]) {
    let v = black_box(0x5a5a_5000_0003u64);
    for (i, e) in entries.iter().enumerate() {
        e.store(v + ((i as u64) << 12), Ordering::Release);
    }
}

/// An all-or-nothing map's least work: every entry read (their OR), then, the range found
/// empty, every entry stored.
#[inline(always)]
fn check_store_pass(entries: &[AtomicU64]) {
    if or_of_all(entries) & ABSENT == 0 {
        store_pass(entries);
    }
}

/// An exact unmap's least work, entry by entry: each loaded (their OR kept), then cleared.
#[inline(always)]
fn load_store_pass(entries: &[AtomicU64]) {
    let mut seen = 0;
    for e in entries {
        seen |= e.load(Ordering::Acquire);
        e.store(0, Ordering::Release);
    }
    black_box(seen);
}

/// The same eight entries at a time, as the engine's clearing loop: their OR, then their
/// stores.
#[inline(always)]
fn clear_eights_pass(entries: &[AtomicU64]) {
    let mut seen = 0;
    for eight in entries.chunks_exact(8) {
        let or = or_of_all(eight);
        if or != 0 {
            for e in eight {
                e.store(0, Ordering::Release);
            }
        }
        seen |= or;
    }
    black_box(seen);
}

/// The OR of `buf`'s entries, each read once as an acquire load: on x86-64 as the memory
/// operand of an `OR`, four accumulators, eight entries a step (the engine's read pass,
/// `or_of_eights_x86`); elsewhere with atomic loads. `buf.len()` is a multiple of eight.
fn or_of_all(buf: &[AtomicU64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let (mut a, mut b, mut c, mut d) = (0u64, 0u64, 0u64, 0u64);
        for eight in buf.chunks_exact(8) {
            // SAFETY: `eight` is eight aligned, live `AtomicU64`s; the block only reads them,
            // each as the aligned 8-byte load an acquire load is on x86-64.
            unsafe {
                core::arch::asm!(
                    "or {a}, qword ptr [{p}]",
                    "or {b}, qword ptr [{p} + 8]",
                    "or {c}, qword ptr [{p} + 16]",
                    "or {d}, qword ptr [{p} + 24]",
                    "or {a}, qword ptr [{p} + 32]",
                    "or {b}, qword ptr [{p} + 40]",
                    "or {c}, qword ptr [{p} + 48]",
                    "or {d}, qword ptr [{p} + 56]",
                    p = in(reg) eight.as_ptr(),
                    a = inout(reg) a,
                    b = inout(reg) b,
                    c = inout(reg) c,
                    d = inout(reg) d,
                    options(nostack),
                );
            }
        }
        (a | b) | (c | d)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        buf.iter().fold(0, |acc, e| acc | e.load(Ordering::Acquire))
    }
}

/// The least an all-or-nothing map and an exact unmap can do with 64-bit atomic accesses, for
/// the 256-entry and 1 GiB rows (issue 18, goal 2: what bounds them).
/// - `check-store-limit`: one pass reading every entry (their OR, as the engine's emptiness
///   check does) and, when a mask of it is clear, a second pass storing every entry: a map
///   may write nothing until every entry is known empty, since a device may walk the table.
///   The entries hold the previous iteration's stores and the mask is a bit they never set,
///   so the check reads real entries and always passes.
/// - `load-store-limit`: one pass loading each entry and storing 0 in its place, with the
///   loaded values' OR kept: an unmap must know what it clears (the bytes it returns, the
///   gather's exact ranges).
fn all_or_nothing_limits(c: &mut Criterion) {
    bench_flat(c, "check-store-limit", check_store_pass);
    bench_flat(c, "load-store-limit", load_store_pass);
    tables_limits(c);
}

/// `<group>/256x4K` and `<group>/262144x4K`: `pass` over one array of that many entries.
fn bench_flat(c: &mut Criterion, group: &str, pass: impl Fn(&[AtomicU64])) {
    let mut g = c.benchmark_group(group);
    for (name, ptes) in [("256x4K", 256usize), ("262144x4K", 262_144)] {
        let buf: Vec<AtomicU64> = (0..ptes).map(|_| AtomicU64::new(0)).collect();
        g.bench_function(name, |b| b.iter(|| pass(black_box(&buf[..]))));
    }
    g.finish();
}

/// The limits above over the engine rows' own layout (issue 18, goal 2): a 256 x 4K
/// workload's timed batch maps 16 ranges 1 GiB apart, each into entries 0-255 of its own leaf
/// table, so the batch's entries are 16 x 2 KiB at the same offset of 16 pages: the same 32
/// sets of a 64-set L1 data cache, 16 lines a set where this machine's has 12 ways (48 KiB,
/// `/sys/devices/system/cpu/cpu0/cache/index0`), and each call finds its table's lines in L2.
/// `<limit>/16-tables`: one call's worth (256 entries) per iteration, the next of 16 such
/// tables 4 KiB apart each time, as the engine rows go through theirs.
fn tables_limits(c: &mut Criterion) {
    // Entry 512 * t of the buffer starts table t: 4 KiB apart; each table's first 256 used.
    let buf: Vec<AtomicU64> = (0..WalkTables::TABLES * 512)
        .map(|_| AtomicU64::new(0))
        .collect();
    let table = |t: usize| black_box(&buf[t * 512..t * 512 + 256]);
    bench_tables(c, "store-limit", table, store_pass);
    bench_tables(c, "check-store-limit", table, check_store_pass);
    bench_tables(c, "load-store-limit", table, load_store_pass);
    walk_limits(c);
}

/// `<group>/16-tables`: `pass` over `leaf(t)`, the next of 16 tables each iteration.
fn bench_tables<'a>(
    c: &mut Criterion,
    group: &str,
    leaf: impl Fn(usize) -> &'a [AtomicU64],
    pass: impl Fn(&[AtomicU64]),
) {
    let mut g = c.benchmark_group(group);
    g.bench_function("16-tables", |b| {
        let mut t = 0;
        b.iter(|| {
            let entries = leaf(t);
            t = (t + 1) % WalkTables::TABLES;
            pass(entries)
        })
    });
    g.finish();
}

/// A 4 KiB table page of the walk limits below, aligned as the pool's.
#[repr(C, align(4096))]
struct TablePage([AtomicU64; 512]);

/// The engine rows' tables for a 256 x 4K batch, as a walk reaches them: a root, one level-3
/// table whose entries `t` lead to 16 level-2 tables (one per 1 GiB), whose entry 0 leads to a
/// leaf table. Each table entry holds the next table's host address with bits 0-1 set.
struct WalkTables {
    pages: Vec<TablePage>,
}

impl WalkTables {
    const TABLES: usize = 16;

    fn new() -> Self {
        let n = 2 + 2 * Self::TABLES;
        let pages: Vec<TablePage> = (0..n)
            .map(|_| TablePage([const { AtomicU64::new(0) }; 512]))
            .collect();
        let link = |from: usize, idx: usize, to: usize| {
            let to = &pages[to] as *const TablePage as u64;
            pages[from].0[idx].store(to | 3, Ordering::Relaxed);
        };
        link(0, 0, 1);
        for t in 0..Self::TABLES {
            // Level-2 and leaf tables alternate, as the pool hands them out to a map.
            link(1, t, 2 + 2 * t);
            link(2 + 2 * t, 0, 3 + 2 * t);
        }
        Self { pages }
    }

    /// The first 256 entries of leaf table `t`, reached by three dependent loads from the root.
    fn leaf(&self, t: usize) -> &[AtomicU64] {
        let next = |e: &AtomicU64| {
            let va = e.load(Ordering::Acquire) & !0xfff;
            // SAFETY: every entry read here was linked by `new` to a page of `self.pages`,
            // which lives as long as `self`.
            unsafe { &*(va as *const TablePage) }
        };
        let l3 = next(&self.pages[0].0[0]);
        let l2 = next(&l3.0[t]);
        &next(&l2.0[0]).0[..256]
    }
}

/// The least any engine that walks its tables can do on the 256 x 4K rows' layout (issue 18,
/// goal 2: what bounds them): `walk-<limit>/16-tables`, the descent's three dependent loads from
/// the root to the leaf table (the level-2 tables' entry 0 shares its L1 set with the leaf
/// entries), then the limit's pass over the leaf's 256 entries, the next of 16 such each time.
fn walk_limits(c: &mut Criterion) {
    let tables = WalkTables::new();
    let leaf = |t: usize| tables.leaf(black_box(t));
    bench_tables(c, "walk-check-store-limit", leaf, check_store_pass);
    bench_tables(c, "walk-load-store-limit", leaf, clear_eights_pass);
}

fn map_unmap(c: &mut Criterion) {
    let pool = HostPool::new();
    let (mut vtd, mut arm, mut x86, mut a64, mut multi) = contenders(&pool);
    let mut amd = amdvi_v1(&pool);
    let (mut vtd_fs, mut arm_s1, mut amd_v2) = (vtd_fs(&pool), arm_s1(&pool), amdvi_v2(&pool));
    for w in WORK {
        bench_one(c, &mut vtd, w);
        bench_one(c, &mut arm, w);
        bench_one(c, &mut amd, w);
        bench_one(c, &mut vtd_fs, w);
        bench_one(c, &mut arm_s1, w);
        bench_one(c, &mut amd_v2, w);
        bench_one(c, &mut x86, w);
        bench_one(c, &mut a64, w);
        bench_one(c, &mut multi, w);
    }
    // Goal 1's other granules, on the same workloads counted in entries (`scaled_work`).
    for (granule_log2, base, name) in [
        (14, 1u64 << 44, "engine-arm-s2-16k"),
        (16, 1u64 << 46, "engine-arm-s2-64k"),
    ] {
        let mut arm = arm_s2_granule(&pool, granule_log2, name);
        for w in &scaled_work(granule_log2, base) {
            bench_one(c, &mut arm, w);
        }
    }
    memset_bound(c);
    // Unit-level benches (gather flush through the VT-d / SMMUv3 model queues with the number
    // of commands issued, IOASID map fanning out to two units) are in `benches/units.rs`.
}

fn config() -> Criterion {
    // Short by default: ~60 benches must finish in a few minutes on two shared cores.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = map_unmap
}
criterion_main!(benches);
