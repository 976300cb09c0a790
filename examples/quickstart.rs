//! Quick start: build page tables in each hardware format, map and unmap ranges, and print what
//! an independent reference walker (the way the hardware reads memory) sees.
//!
//! Run with `cargo run --example quickstart`.

use iommu_engine::mem::{Iova, PhysAddr, WalkerCoherency};
use iommu_engine::pgtable::arm_s1::{self, ArmS1, ArmS1Config};
use iommu_engine::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use iommu_engine::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use iommu_engine::pgtable::{Format, Gather, InvalidationComplete, PageTable, Prot};
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::walk::{self, arm::Granule};

const MIB: u64 = 1 << 20;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// The ranges every format maps: a 4 KiB page, a run that mixes 4 KiB and 2 MiB pages, and a
/// 1 GiB-aligned gigabyte.
const RANGES: [(u64, u64, u64); 3] = [
    (0x1000, 0x7_0000_1000, 0x1000),
    (0x3ff000, 0x7_0040_0000 - 0x1000, 4 * MIB + 0x2000),
    (1 << 30, 1 << 33, 1 << 30),
];

fn main() {
    let arena = Arena::with_defaults().expect("a 64 MiB arena");

    let ss = VtdSs::new(VtdSsConfig {
        agaw: 48,
        haw: 46,
        page_2m: true,
        page_1g: true,
        snoop: true,
        dirty_tracking: false,
    })
    .expect("VT-d second-stage configuration");
    tour(
        "VT-d second stage, 4 levels, SNP in every leaf",
        ss,
        &arena,
        |root, iova| {
            let cfg = walk::vtd_ss::VtdSsConfig {
                root,
                levels: 4,
                haw: 46,
                large_2m: true,
                large_1g: true,
                snoop_control: true,
            };
            walk::vtd_ss::translate(&arena, &cfg, iova, walk::Access::READ)
                .map(|t| {
                    format!(
                        "{} {} snoop={}",
                        t.pa,
                        size(t.page_size_log2),
                        t.attrs.snoop
                    )
                })
                .map_err(|f| format!("{f:?}"))
        },
    );

    let fs = VtdFs::new(VtdFsConfig {
        levels: 4,
        haw: 46,
        page_1g: true,
        execute_disable: true,
        dirty_tracking: false,
    })
    .expect("VT-d first-stage configuration");
    tour(
        "VT-d first stage, x86-64 4-level paging",
        fs,
        &arena,
        |root, iova| {
            let cfg = walk::vtd_fs::VtdFsConfig {
                root,
                levels: 4,
                haw: 46,
                large_1g: true,
                execute_disable: true,
                write_protect: true,
                smep: false,
            };
            walk::vtd_fs::translate(&arena, &cfg, iova, walk::Access::READ)
                .map(|t| {
                    format!(
                        "{} {} user={}",
                        t.pa,
                        size(t.page_size_log2),
                        t.attrs.user.read
                    )
                })
                .map_err(|f| format!("{f:?}"))
        },
    );

    let s2cfg = ArmS2Config {
        granule_log2: 12,
        ias: 40,
        oas: 48,
        blocks: true,
        attributes: S2Attributes::ForcedWriteBack,
        dirty_tracking: false,
        bbml2: true,
    };
    let s2 = ArmS2::new(s2cfg).expect("Arm stage-2 configuration");
    let (t0sz, sl0) = (s2.t0sz() as u8, s2.sl0() as u8);
    let title = format!(
        "Arm stage 2, 4K granule, 40-bit IPA: start level {}, {} concatenated root tables, FWB write-back",
        s2.start_level(),
        s2.concatenated()
    );
    tour(&title, s2, &arena, |ttb, iova| {
        let cfg = walk::arm_s2::ArmS2Config {
            ttb,
            granule: Granule::K4,
            t0sz,
            sl0,
            oas: 48,
            fwb: true,
            xnx: false,
            hardware_access_flag: false,
            hardware_dirty: false,
            strict_res0: true,
        };
        walk::arm_s2::translate(&arena, &cfg, iova, walk::Access::READ)
            .map(|t| {
                let hint = if t.attrs.contiguous {
                    " contiguous"
                } else {
                    ""
                };
                let (pa, sz, mt) = (t.pa, size(t.page_size_log2), t.attrs.mem_type);
                format!("{pa} {sz} {mt:?}{hint}")
            })
            .map_err(|f| format!("{f:?}"))
    });

    let s1cfg = ArmS1Config {
        granule_log2: 16,
        ias: 48,
        oas: 48,
        blocks: true,
        coherent: true,
        dirty_tracking: false,
        bbml2: true,
    };
    let s1 = ArmS1::new(s1cfg).expect("Arm stage-1 configuration");
    tour(
        "Arm stage 1, 64K granule, 48-bit VA",
        s1,
        &arena,
        |ttb, iova| {
            let cfg = walk::arm_s1::ArmS1Config {
                ttb,
                granule: Granule::K64,
                t0sz: 16,
                oas: 48,
                mair: arm_s1::MAIR,
                hierarchical_permissions: true,
                wxn: false,
                hardware_access_flag: false,
                hardware_dirty: false,
                strict_res0: true,
            };
            walk::arm_s1::translate(&arena, &cfg, iova, walk::Access::READ)
                .map(|t| {
                    let hint = if t.attrs.contiguous {
                        " contiguous"
                    } else {
                        ""
                    };
                    let (pa, sz, mt) = (t.pa, size(t.page_size_log2), t.attrs.mem_type);
                    format!("{pa} {sz} {mt:?}{hint}")
                })
                .map_err(|f| format!("{f:?}"))
        },
    );

    let stats = arena.stats();
    println!(
        "\narena: {} allocations, {} frees, {} pages live, no bad frees: {}",
        stats.allocs,
        stats.frees,
        stats.live_pages,
        arena.bad_frees().is_empty()
    );
}

/// Maps the ranges, shows the walker's view, unmaps half, shows it again, tears down.
fn tour<F: Format>(
    title: &str,
    format: F,
    arena: &Arena,
    walk: impl Fn(PhysAddr, Iova) -> Result<String, String>,
) {
    println!("\n== {title}");
    let table = PageTable::new(format, arena, WalkerCoherency::Coherent).expect("root page");
    let granule = 1u64 << table.geometry().granule_log2;
    for (iova, pa, len) in RANGES {
        let len = len.next_multiple_of(granule);
        let (iova, pa) = (iova & !(granule - 1), pa & !(granule - 1));
        match table.map(Iova::new(iova), PhysAddr::new(pa), len, RW) {
            Ok(()) => println!("map   {iova:#012x} -> {pa:#012x} ({})", size_bytes(len)),
            Err(e) => println!("map   {iova:#012x}: refused: {e}"),
        }
    }
    let mut leaves = 0;
    table
        .for_each_mapping(Iova::ZERO, 1 << table.geometry().ias, |_| leaves += 1)
        .expect("walk the table");
    println!(
        "      {leaves} leaves, {} table pages",
        arena.stats().live_pages
    );
    for probe in [0x1000, 0x400000 + 0x123, (1 << 30) + 0x1234_5678, 0x2000] {
        println!(
            "walk  {probe:#012x}: {}",
            show(walk(table.root(), Iova::new(probe)))
        );
    }
    let mut gather = Gather::new();
    let bytes = table.unmap(Iova::new(1 << 30), 1 << 29, &mut gather);
    println!(
        "unmap {:#012x} ({}): {:?} bytes; gather: {} range(s), leaf only: {}, {} page(s) held",
        1u64 << 30,
        size_bytes(1 << 29),
        bytes,
        gather.ranges().len(),
        gather.leaf_only(),
        gather.freed_pages()
    );
    for probe in [(1 << 30) + 0x1000, (1 << 30) + (1 << 29) + 0x1000] {
        println!(
            "walk  {probe:#012x}: {}",
            show(walk(table.root(), Iova::new(probe)))
        );
    }
    // No hardware walks these tables: the invalidation a driver would issue is vacuous here.
    // SAFETY: nothing but this example reads the arena.
    gather
        .release(arena, unsafe { InvalidationComplete::assume() })
        .expect("release");
    table.destroy(&mut gather).expect("destroy");
    // SAFETY: as above.
    gather
        .release(arena, unsafe { InvalidationComplete::assume() })
        .expect("release");
}

fn show(r: Result<String, String>) -> String {
    r.unwrap_or_else(|fault| format!("fault: {fault}"))
}

fn size(log2: u32) -> String {
    size_bytes(1 << log2)
}

fn size_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b >> 20),
        b => format!("{} KiB", b >> 10),
    }
}
