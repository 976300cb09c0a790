//! Quick start, in two parts.
//!
//! 1. The IOASID flow on the VT-d and SMMUv3 models: units enabled, a context, devices bound,
//!    an IOASID that blocks no-snoop, attach (and a refused attach), map, DMA translated by the
//!    models the way the hardware would, unmap, an incoherent-DMA grant, and what it cost:
//!    invalidation commands issued and pages used.
//! 2. The engine alone: page tables in each hardware format, ranges mapped and unmapped, and
//!    what an independent reference walker (the way the hardware reads memory) sees.
//!
//! Run with `cargo run --example quickstart`.

use iommu_engine::ioasid::{DeviceLabel, IoasidCtx, IoasidFlags, PasidAllocator, Registry, UnitId};
use iommu_engine::iommu::{DeviceId, Iommu, Source};
use iommu_engine::mem::{Iova, PhysAddr, WalkerCoherency};
use iommu_engine::pgtable::arm_s1::{self, ArmS1, ArmS1Config};
use iommu_engine::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use iommu_engine::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use iommu_engine::pgtable::{Format, Gather, InvalidationComplete, PageTable, Prot};
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig};
use iommu_engine::sim::walk::{self, arm::Granule};
use iommu_engine::smmuv3::{DeviceFacts, Platform, SmmuConfig, SmmuUnit, StreamId};
use iommu_engine::vtd::{VtdConfig, VtdUnit};

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
    ioasid_tour();
    println!("\n== The engine alone: every format, read back by the reference walkers");
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

/// The seed flow of the IOASID proposal on the VT-d and SMMUv3 models: two units, one context,
/// devices bound and attached to an IOASID that enforces snooping, mappings seen through the
/// models the way the hardware would translate DMA, a refused attach, an incoherent-DMA grant,
/// and what it all cost: commands issued and pages used.
fn ioasid_tour() {
    println!("\n== The IOASID flow on the VT-d and SMMUv3 models");
    let arena = Arena::with_defaults().expect("a 64 MiB arena");
    let pages = |what: &str| println!("   pages in use {what}: {}", arena.stats().live_pages);

    // Three units: VT-d with snoop control, VT-d without, an SMMUv3 with FWB. On Arm no
    // register says that a No-Snoop DMA stays coherent: firmware does (ACPI IORT CANWBS), here
    // for the root complex whose requesters are StreamIDs 0x40..=0x4f, and not for StreamID
    // 0x41, a named component the platform gives no such promise.
    let vtd_hw = VtdModel::new(&arena, VtdModelConfig::qemu_default().with_sc(true));
    let plain_hw = VtdModel::new(&arena, VtdModelConfig::qemu_default());
    let smmu_hw = SmmuModel::new(
        &arena,
        SmmuModelConfig::qemu_like()
            .with_fwb(true)
            .with_canwbs(0x40, 0x40),
    );
    let vtd = VtdUnit::new(&vtd_hw, &arena, VtdConfig::legacy()).expect("VT-d unit");
    let plain = VtdUnit::new(&plain_hw, &arena, VtdConfig::legacy()).expect("VT-d unit");
    let iort = |canwbs, node| DeviceFacts {
        canwbs,
        coherent_dma: Some(true),
        source: Source::Firmware(node),
    };
    let platform = Platform::default()
        .declare(
            StreamId(0x41),
            StreamId(0x41),
            iort(false, "IORT named component 1"),
        )
        .and_then(|p| {
            p.declare(
                StreamId(0x40),
                StreamId(0x4f),
                iort(true, "IORT root complex 0 CANWBS"),
            )
        })
        .expect("declarations");
    let smmu_cfg = SmmuConfig {
        platform,
        ..SmmuConfig::default()
    };
    let smmu = SmmuUnit::new(&smmu_hw, &arena, smmu_cfg).expect("SMMUv3 unit");
    vtd.enable().expect("enable VT-d");
    plain.enable().expect("enable VT-d");
    smmu.enable().expect("enable SMMUv3");
    pages("by three enabled units");

    let units: [&dyn Iommu; 3] = [&vtd, &plain, &smmu];
    static PASIDS: PasidAllocator = PasidAllocator::new(20);
    let registry = Registry::new(&units, &PASIDS).expect("registry");
    let ctx = IoasidCtx::new(&registry, &arena, 8);

    // Devices: a GPU behind VT-d (no-snoop capable), a NIC behind the SMMUv3's root complex,
    // an accelerator behind it without CANWBS, a disk behind the VT-d unit without snoop
    // control.
    let label = |unit, id| DeviceLabel {
        unit: UnitId(unit),
        id: DeviceId(id),
    };
    let gpu = ctx.bind(label(0, 0x0100), true).expect("bind gpu");
    let nic = ctx.bind(label(2, 0x0040), false).expect("bind nic");
    let disk = ctx.bind(label(1, 0x0200), false).expect("bind disk");
    let accel = ctx.bind(label(2, 0x0041), false).expect("bind accel");
    for (name, dev) in [
        ("gpu 01:00.0 on VT-d", gpu),
        ("nic sid 0x40 on SMMUv3", nic),
        ("accel sid 0x41 on SMMUv3", accel),
        ("disk 02:00.0 on VT-d without SC", disk),
    ] {
        let i = ctx.device_info(dev).expect("device_info");
        let c = i.capabilities;
        println!(
            "   {name}: {}-bit IOVA, {}-bit PA ({}), pages {:#x}, PASID {} bits, no-snoop capable {}",
            c.ias, c.oas, c.sources.oas, c.page_sizes, c.pasid_bits, i.no_snoop_capable
        );
        println!(
            "      enforce snoop {} (from {})",
            c.enforce_snoop, c.sources.enforce_snoop
        );
    }

    // One IOASID that blocks no-snoop, shared by the GPU and the NIC.
    let ioasid = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).expect("alloc");
    ctx.attach(gpu, ioasid).expect("attach gpu");
    ctx.attach(nic, ioasid).expect("attach nic");
    match ctx.attach(disk, ioasid) {
        Err(e) => println!("   attach disk refused: {e}"),
        Ok(()) => panic!("a unit without snoop control must be refused"),
    }
    // Same SMMUv3, FWB and all: without CANWBS its No-Snoop DMA could still miss the caches.
    match ctx.attach(accel, ioasid) {
        Err(e) => println!("   attach accel refused: {e}"),
        Ok(()) => panic!("a device without CANWBS must be refused"),
    }

    let (iova, pa, len) = (0x4000_0000u64, 0x1_0000_0000u64, (2 << 20) + 0x1000);
    ctx.map(
        ioasid,
        Iova::new(iova),
        PhysAddr::new(pa),
        len,
        Prot::READ | Prot::WRITE,
    )
    .expect("map");
    println!("   mapped IOVA {iova:#x}+{len:#x} -> PA {pa:#x} on both units");
    pages("after the map (two page tables + the IOASID's record)");
    let probe = iova + 0x10;
    let v = vtd_hw
        .translate(0x0100, None, probe, walk::Access::WRITE)
        .expect("VT-d DMA");
    let s = smmu_hw
        .translate(0x40, None, probe, walk::Access::WRITE)
        .expect("SMMU DMA");
    println!(
        "   gpu writes {probe:#x}: PA {:#x}, {} KiB page, snoop {}",
        v.pa,
        1 << (v.page_size_log2 - 10),
        v.snoop
    );
    println!(
        "   nic writes {probe:#x}: PA {:#x}, {} KiB page, snoop {} (CANWBS), write-back {} (FWB)",
        s.pa,
        1 << (s.page_size_log2 - 10),
        s.coherent,
        s.cacheable_wb
    );

    vtd_hw.reset_stats();
    smmu_hw.reset_stats();
    let n = ctx.unmap(ioasid, Iova::new(iova), len).expect("unmap");
    let vs = vtd_hw.stats();
    let ss = smmu_hw.stats();
    println!(
        "   unmapped {n:#x} bytes: VT-d ran {} IOTLB + {} wait descriptors, SMMUv3 consumed {} commands ({} CMD_SYNC)",
        vs.iotlb_page + vs.iotlb_domain + vs.iotlb_global,
        vs.wait,
        ss.total_commands(),
        ss.syncs
    );
    let gone = vtd_hw
        .translate(0x0100, None, probe, walk::Access::WRITE)
        .is_err()
        && smmu_hw
            .translate(0x40, None, probe, walk::Access::WRITE)
            .is_err();
    println!("   the same DMAs now fault: {gone}");

    // Incoherent DMA only for a device of this context that declared it.
    if let Err(e) = ctx.allow_incoherent_dma(nic) {
        println!("   incoherent DMA for the nic refused: {e}");
    }
    let grant = ctx.allow_incoherent_dma(gpu).expect("grant");
    println!(
        "   grant for the gpu: WBINVD must be honoured = {}",
        ctx.incoherent_dma_allowed()
    );
    drop(grant);
    println!(
        "   grant dropped: WBINVD must be honoured = {}",
        ctx.incoherent_dma_allowed()
    );

    drop(ctx);
    pages("after dropping the context (the units' own tables and queues)");
    for unit in [&vtd, &plain] {
        unit.disable().expect("disable VT-d");
    }
    smmu.disable().expect("disable SMMUv3");
    for unit in [vtd, plain] {
        unit.release().map_err(|(_, e)| e).expect("release VT-d");
    }
    drop(smmu);
    pages("after disabling and releasing the units");
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
