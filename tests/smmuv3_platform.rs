//! The SMMUv3 unit on the behavioural model configured as real platforms are and QEMU is not
//! (issue 15): 52-bit output with the 4 KiB granule, preset tables and queues, broadcast TLB
//! maintenance, granules chosen by the embedder.

use iommu_engine::iommu::{DeviceId, DomainConfig, Error, Iommu, Source, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{self, Prot};
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::smmuv3::cmdq::SyncMode;
use iommu_engine::smmuv3::{SmmuConfig, SmmuError, SmmuUnit, StreamTableLayout};

#[path = "support/pages.rs"]
mod pages;
use pages::Held;

const K4: u64 = 1 << 12;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const SID: u32 = 0x20;

type Unit<'a> = SmmuUnit<&'a SmmuModel<'a>, &'a Arena>;

fn arena() -> Arena {
    Arena::with_defaults().unwrap()
}

fn cfg() -> SmmuConfig {
    SmmuConfig {
        poll_budget: 1000,
        ..SmmuConfig::default()
    }
}

fn unit<'a>(model: &'a SmmuModel<'a>, mem: &'a Arena, cfg: SmmuConfig) -> Unit<'a> {
    let u = SmmuUnit::new(model, mem, cfg).unwrap();
    u.enable().unwrap();
    model.reset_stats();
    u
}

fn stage(s: Stage) -> DomainConfig {
    DomainConfig {
        stage: s,
        ..DomainConfig::default()
    }
}

/// `IDR5.OAS` = 52 with only the 4 KiB and 16 KiB granules' 48-bit descriptors (no
/// `IDR5.DS`): the unit's domains output 48 bits, and say so.
#[test]
fn a_52_bit_unit_with_the_4k_granule_builds_48_bit_domains() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_oas_bits(52));
    let u = unit(&model, &mem, cfg());
    let caps = u.capabilities();
    assert_eq!((caps.ias, caps.oas), (48, 48));
    assert_eq!(
        caps.sources.oas,
        Source::Register("IDR5.OAS clamped by the granule (4K/16K without LPA2: 48)")
    );
    for s in [Stage::Second, Stage::First] {
        let d = u.domain_alloc(&stage(s)).unwrap();
        u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        u.attach(DeviceId(SID), None, d).unwrap();
        let ok = model.translate(SID, None, 0x1008, Access::READ).unwrap();
        assert_eq!(ok.pa, 0x4000_0008, "{s:?}");
        u.detach(DeviceId(SID), None).unwrap();
        u.domain_free(d).unwrap();
    }
}

/// `IDR1.TABLES_PRESET` / `QUEUES_PRESET` / `REL`: the unit uses tables and queues at
/// addresses the crate did not choose. Refused with a typed error, before anything is written.
#[test]
fn preset_tables_or_queues_are_refused() {
    let mem = arena();
    for (tables, queues, rel) in [
        (true, false, false),
        (false, true, false),
        (false, false, true),
        (true, true, true),
    ] {
        let model = SmmuModel::new(
            &mem,
            SmmuModelConfig::qemu_like().with_presets(tables, queues, rel),
        );
        let r = SmmuUnit::new(&model, &mem, cfg()).map(|_| ());
        let want = u32::from(tables) << 30 | u32::from(queues) << 29 | u32::from(rel) << 28;
        assert!(
            matches!(r, Err(SmmuError::Preset { idr1 }) if idr1 == want),
            "{tables} {queues} {rel}: {r:?}"
        );
        assert_eq!(mem.stats().live_pages, 0);
        assert_eq!(model.stats().total_commands(), 0);
    }
}

/// With `IDR0.BTM` the unit would obey the CPUs' broadcast TLB invalidations, and a
/// hypervisor's VMIDs collide with the unit's: `CR2.PTM` is set unless the embedder asks for
/// broadcast maintenance.
#[test]
fn broadcast_tlb_maintenance_is_private_unless_asked_for() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_btm(true));
    let u = unit(&model, &mem, cfg());
    assert_eq!(model.cr2() & 1 << 2, 1 << 2, "CR2.PTM");
    let d = u.domain_alloc(&stage(Stage::Second)).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    model.translate(SID, None, 0x1000, Access::READ).unwrap();
    let tlb = model.cache_sizes().0;
    assert!(tlb > 0);
    // A hypervisor invalidates its own VMID 1..=255: the unit's entries stay.
    for vmid in 0..=255 {
        assert_eq!(model.broadcast_tlbi_vmall(vmid), 0);
    }
    assert_eq!(model.cache_sizes().0, tlb);
    drop(u);

    // Asked for: PTM clear, and the broadcast reaches the unit.
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_btm(true));
    let u = unit(
        &model,
        &mem,
        SmmuConfig {
            broadcast_tlb: true,
            ..cfg()
        },
    );
    assert_eq!(model.cr2() & 1 << 2, 0);
    let d = u.domain_alloc(&stage(Stage::Second)).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    model.translate(SID, None, 0x1000, Access::READ).unwrap();
    let dropped: usize = (0..=255).map(|v| model.broadcast_tlbi_vmall(v)).sum();
    assert_eq!(dropped, 1);

    // Without IDR0.BTM there is nothing to ask for: refused, and PTM (RES0) stays clear.
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let r = SmmuUnit::new(
        &model,
        &mem,
        SmmuConfig {
            broadcast_tlb: true,
            ..cfg()
        },
    );
    assert!(matches!(r, Err(SmmuError::InvalidConfig { .. })));
    let _u = unit(&model, &mem, cfg());
    assert_eq!(model.cr2() & 1 << 2, 0);
}

/// The embedder's page size decides the granule (a 16 KiB or 64 KiB kernel): stage 1 and
/// stage 2 domains of that granule, whose block mappings (32 MiB, 512 MiB) the model walks.
#[test]
fn domains_of_the_16k_and_64k_granules_with_blocks() {
    for (g, block) in [(14u32, 25u32), (16, 29)] {
        let mem = arena();
        let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_oas_bits(48));
        let u = unit(
            &model,
            &mem,
            SmmuConfig {
                granule_log2: Some(g),
                ..cfg()
            },
        );
        let caps = u.capabilities();
        assert_eq!(caps.page_sizes, 1 << g | 1 << block, "granule {g}");
        assert_eq!(
            caps.sources.page_sizes,
            Source::Embedder("SmmuConfig::granule_log2")
        );
        let (page, big) = (1u64 << g, 1u64 << block);
        for s in [Stage::Second, Stage::First] {
            let d = u.domain_alloc(&stage(s)).unwrap();
            assert_eq!(u.domain_geometry(d).unwrap().1, caps.page_sizes);
            // One block and one page after it, at IOVA != PA.
            let (iova, pa) = (big, 3 * big);
            u.map(d, Iova::new(iova), PhysAddr::new(pa), big + page, RW)
                .unwrap();
            u.attach(DeviceId(SID), None, d).unwrap();
            let ok = model
                .translate(SID, None, iova + big - 8, Access::READ)
                .unwrap();
            assert_eq!(
                (ok.pa, ok.page_size_log2),
                (pa + big - 8, block),
                "{g} {s:?}"
            );
            let ok = model
                .translate(SID, None, iova + big + 8, Access::WRITE)
                .unwrap();
            assert_eq!((ok.pa, ok.page_size_log2), (pa + big + 8, g), "{g} {s:?}");
            // Misaligned for the granule: refused.
            assert!(u
                .map(d, Iova::new(8 * big), PhysAddr::new(0x1000), page, RW)
                .is_err());
            u.detach(DeviceId(SID), None).unwrap();
            u.domain_free(d).unwrap();
        }
    }
}

#[test]
fn a_granule_the_unit_lacks_is_refused() {
    let mem = arena();
    // QEMU-like, but 4 KiB only (IDR5 bits 5 and 6 clear).
    let mut c = SmmuModelConfig::qemu_like();
    c.idr[5] &= !(1 << 5 | 1 << 6);
    let model = SmmuModel::new(&mem, c);
    for g in [14, 16, 13] {
        let r = SmmuUnit::new(
            &model,
            &mem,
            SmmuConfig {
                granule_log2: Some(g),
                ..cfg()
            },
        );
        assert!(matches!(r, Err(SmmuError::InvalidConfig { .. })), "{g}");
    }
    let u = unit(&model, &mem, cfg());
    assert_eq!(u.capabilities().page_sizes, 1 << 12 | 1 << 21 | 1 << 30);
}

/// An MSI doorbell (the GICv3 ITS `GITS_TRANSLATER` page) next to memory, through each stage:
/// Device-nGnRE, which stage-2 FWB leaves Device; the memory beside it stays write-back.
#[test]
fn mmio_is_device_memory_at_both_stages_even_under_fwb() {
    use iommu_engine::smmuv3::{DeviceFacts, Platform};
    const DOORBELL: u64 = 0x0808_0000;
    let mem = arena();
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_fwb(true)
            .with_canwbs(SID, SID),
    );
    let canwbs = SmmuConfig {
        platform: Platform::new(DeviceFacts {
            canwbs: true,
            coherent_dma: None,
            source: Source::Firmware("IORT"),
        }),
        ..cfg()
    };
    let u = unit(&model, &mem, canwbs);
    let snoop_s2 = DomainConfig {
        enforce_snoop: true,
        ..stage(Stage::Second)
    };
    for (cfg, fwb) in [
        (snoop_s2, true),
        (stage(Stage::Second), false),
        (stage(Stage::First), false),
    ] {
        let d = u.domain_alloc(&cfg).unwrap();
        u.map(
            d,
            Iova::new(0x1000),
            PhysAddr::new(DOORBELL),
            K4,
            RW | Prot::MMIO,
        )
        .unwrap();
        u.map(d, Iova::new(0x2000), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        u.attach(DeviceId(SID), None, d).unwrap();
        let bell = model.translate(SID, None, 0x1040, Access::WRITE).unwrap();
        let ram = model.translate(SID, None, 0x2000, Access::WRITE).unwrap();
        assert_eq!(bell.pa, DOORBELL + 0x40);
        assert!(
            !bell.cacheable_wb,
            "{cfg:?}: the doorbell must not be cacheable"
        );
        if cfg.stage == Stage::Second {
            assert_eq!(bell.s2_memattr, Some(0b0001), "{cfg:?}: Device-nGnRE");
            let ram_attr = if fwb { 0b0110 } else { 0b1111 };
            assert_eq!(ram.s2_memattr, Some(ram_attr), "{cfg:?}");
            assert!(ram.cacheable_wb == fwb, "{cfg:?}");
        } else {
            assert!(ram.cacheable_wb, "stage 1 on a coherent unit: write-back");
        }
        assert_eq!(
            u.query(d, Iova::new(0x1000)).unwrap().prot,
            u.query(d, Iova::new(0x2000)).unwrap().prot | Prot::MMIO
        );
        u.detach(DeviceId(SID), None).unwrap();
        u.domain_free(d).unwrap();
    }
}

/// One unit, domains of three granules side by side (`DomainConfig::granule_log2`): each walks
/// with its own TG, blocks and invalidation granule; a granule the unit lacks is refused.
#[test]
fn domains_of_different_granules_on_one_unit() {
    use iommu_engine::iommu::{Error, Missing};
    use iommu_engine::pgtable::Gather;
    let mem = arena();
    let mut c = SmmuModelConfig::qemu_like();
    let model = SmmuModel::new(&mem, c);
    let u = unit(&model, &mem, cfg());
    let mut sid = SID;
    for (g, block) in [(16u32, 29u32), (14, 25), (12, 21)] {
        for s in [Stage::Second, Stage::First] {
            let d = u
                .domain_alloc(&DomainConfig {
                    granule_log2: Some(g),
                    ..stage(s)
                })
                .unwrap();
            assert_eq!(
                u.domain_geometry(d).unwrap().1 & (1 << g | 1 << block),
                1 << g | 1 << block
            );
            let big = 1u64 << block;
            u.map(d, Iova::new(big), PhysAddr::new(2 * big), big, RW)
                .unwrap();
            u.attach(DeviceId(sid), None, d).unwrap();
            let ok = model.translate(sid, None, big + 8, Access::READ).unwrap();
            assert_eq!(
                (ok.pa, ok.page_size_log2),
                (2 * big + 8, block),
                "{g} {s:?}"
            );
            // Unmapped and flushed in the domain's own granule: the translation is gone.
            let mut gather = Gather::new();
            assert_eq!(u.unmap(d, Iova::new(big), big, &mut gather), Ok(big));
            u.flush(d, &mut gather).unwrap();
            assert!(model.translate(sid, None, big + 8, Access::READ).is_err());
            sid += 1;
        }
    }
    c.idr[5] &= !(1 << 5);
    let mem = arena();
    let model = SmmuModel::new(&mem, c);
    let u = unit(&model, &mem, cfg());
    let no16 = DomainConfig {
        granule_log2: Some(14),
        ..stage(Stage::Second)
    };
    assert_eq!(
        u.domain_alloc(&no16),
        Err(Error::Unsupported(Missing::PageSize { size_log2: 14 }))
    );
}

/// Every structure the unit reads -- stream table and its level-2 tables, CD tables, command
/// and event queues, the CMD_SYNC MSI page, page-table pages -- must lie below `2^OAS`
/// (`IDR5.OAS` 44 here, as QEMU's): `STRTAB_BASE.ADDR`, `CMDQ_BASE.ADDR`, `EVENTQ_BASE.ADDR`,
/// `L1STD.L2Ptr`, `STE.S1ContextPtr` and `CMD_SYNC.MSIAddress` bits above it are RES0 and a
/// unit need not store them (IHI 0070 G.b §6.3.24, §6.3.26, §6.3.29, §5.2, §4.7.3), so a page
/// there would be reached through another address. A page the allocator hands out above is
/// refused with the address and the width, given back, and nothing is written.
#[test]
fn structures_above_the_output_address_size_are_refused() {
    let a = pages::arena_across(44);
    let mut held = Held::default();
    let model_cfg = SmmuModelConfig::qemu_like()
        .with_msi(true)
        .with_ssid_bits(8);
    let model = SmmuModel::new(&a, model_cfg);
    // Every structure one 4 KiB page: 2^9 L1STDs, 2^6-STE level-2 tables, 2^8 commands,
    // 2^7 event records, 2^2 L1CDs, 2^6-CD level-2 tables.
    let cfg = SmmuConfig {
        sync: SyncMode::Msi,
        stream_table: StreamTableLayout::TwoLevel { split: 6 },
        sid_bits: Some(15),
        ..cfg()
    };
    let u = SmmuUnit::new(&model, &a, cfg).unwrap();
    // (pages placed below, pages the failed enable keeps, the structure refused): the stream
    // table is kept for the retry, a command queue only with its MSI page.
    for (below, kept, table) in [
        (0, 0, "stream table"),
        (1, 1, "command queue"),
        (1, 0, "CMD_SYNC MSI page"),
        (2, 2, "event queue"),
    ] {
        let (live, pa) = held.next_high(&a, 44, below);
        let refused = SmmuError::TableOutOfRange { table, pa, oas: 44 };
        assert_eq!(u.enable(), Err(refused));
        assert_eq!(a.stats().live_pages, live + kept, "pages kept");
        held.went_back(&a, pa);
    }
    let _ = held.next_high(&a, 44, 1);
    u.enable().unwrap();
    // A domain's root table, then the level-2 stream table holding the STE, then a table
    // under the domain's root.
    let engine = |pa| Error::PageTable(pgtable::Error::TableOutOfRange { pa, oas: 44 });
    let unit = |table, pa| Error::TableOutOfRange {
        table,
        pa,
        width: 44,
    };
    let (live, pa) = held.next_high(&a, 44, 0);
    assert_eq!(u.domain_alloc(&stage(Stage::Second)), Err(engine(pa)));
    assert_eq!(a.stats().live_pages, live, "pages kept");
    held.went_back(&a, pa);
    let _ = held.next_high(&a, 44, 1);
    let s2 = u.domain_alloc(&stage(Stage::Second)).unwrap();
    let (live, pa) = held.next_high(&a, 44, 0);
    let r = u.attach(DeviceId(SID), None, s2);
    assert_eq!(r, Err(unit("level-2 stream table", pa)));
    assert_eq!(a.stats().live_pages, live, "pages kept");
    held.went_back(&a, pa);
    assert!(model.translate(SID, None, 0x1000, Access::READ).is_err());
    let _ = held.next_high(&a, 44, 1);
    u.attach(DeviceId(SID), None, s2).unwrap();
    let (live, pa) = held.next_high(&a, 44, 0);
    let r = u.map(s2, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW);
    assert_eq!(r, Err(engine(pa)));
    assert_eq!(a.stats().live_pages, live, "pages kept");
    held.went_back(&a, pa);
    assert!(model.translate(SID, None, 0x1000, Access::READ).is_err());
    // The CD table of a stage-1 stream, then its level-2 table (its STE's level-2 table is
    // there already): the attach keeps neither.
    let _ = held.next_high(&a, 44, 1);
    let s1 = u.domain_alloc(&stage(Stage::First)).unwrap();
    for (below, table) in [(0, "CD table"), (1, "level-2 CD table")] {
        let (live, pa) = held.next_high(&a, 44, below);
        let r = u.attach(DeviceId(SID + 1), None, s1);
        assert_eq!(r, Err(unit(table, pa)));
        assert_eq!(a.stats().live_pages, live, "pages kept");
        held.went_back(&a, pa);
    }
    // The CD table and its level-2 table, then three tables under s1's root.
    let _ = held.next_high(&a, 44, 5);
    u.attach(DeviceId(SID + 1), None, s1).unwrap();
    u.map(s1, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let ok = model
        .translate(SID + 1, None, 0x1008, Access::READ)
        .unwrap();
    assert_eq!(ok.pa, 0x4000_0008);
    assert!(a.bad_frees().is_empty());
    // Everything the unit allocated goes back with it: nothing it refused was kept.
    for (sid, d) in [(SID, s2), (SID + 1, s1)] {
        u.detach(DeviceId(sid), None).unwrap();
        let mut g = iommu_engine::pgtable::Gather::new();
        u.unmap(d, Iova::new(0x1000), K4, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        u.domain_free(d).unwrap();
    }
    u.disable().unwrap();
    drop(u);
    assert_eq!(a.stats().live_pages, held.len());
}

/// The review's 52-bit test (issue 15, item 1): on an `IDR5.OAS` = 52 unit the 64 KiB
/// granule's descriptors carry OA[51:48] (VMSAv8-64 with FEAT_LPA; no LPA2 needed), so its
/// domains output 52 bits and an output address at 2^50 translates end to end at both stages
/// (`STE.S2PS` / `CD.IPS` = 52 bits). The 16 KiB granule's descriptors hold 48 bits without
/// `IDR5.DS`: the same map is refused with `PaOutOfRange { oas: 48 }` and nothing is written.
/// No QEMU row: QEMU 10.0's SMMUv3 reports `IDR5.OAS` = 44 bits and has no property to change
/// it (`-device arm-smmuv3,help` lists `bus_num`, `primary-bus` and `stage` only;
/// tests/qemu/README.md, scenario 200), so the model stands in for a 52-bit unit.
#[test]
fn a_52_bit_unit_reaches_2_pow_50_with_the_64k_granule_only() {
    for (granule_log2, oas) in [(16, 52), (14, 48)] {
        let mem = arena();
        let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_oas_bits(52));
        let cfg = SmmuConfig {
            granule_log2: Some(granule_log2),
            ..cfg()
        };
        let u = unit(&model, &mem, cfg);
        assert_eq!(u.capabilities().oas, oas, "granule 2^{granule_log2}");
        let page = 1u64 << granule_log2;
        let pa = (1u64 << 50) | (3 * page);
        for s in [Stage::Second, Stage::First] {
            let d = u.domain_alloc(&stage(s)).unwrap();
            let r = u.map(d, Iova::new(page), PhysAddr::new(pa), page, RW);
            if oas == 52 {
                r.unwrap();
                u.attach(DeviceId(SID), None, d).unwrap();
                let ok = model.translate(SID, None, page + 8, Access::READ).unwrap();
                assert_eq!(ok.pa, pa + 8, "{s:?}");
                u.detach(DeviceId(SID), None).unwrap();
                let mut g = pgtable::Gather::new();
                assert_eq!(u.unmap(d, Iova::new(page), page, &mut g), Ok(page));
                u.flush(d, &mut g).unwrap();
            } else {
                let last = PhysAddr::new(pa + page - 1);
                assert_eq!(
                    r,
                    Err(Error::PageTable(pgtable::Error::PaOutOfRange {
                        last,
                        oas: 48
                    })),
                    "{s:?}"
                );
                assert_eq!(u.query(d, Iova::new(page)), None);
            }
            u.domain_free(d).unwrap();
        }
    }
}

/// Runs one map, attach and unmap on a unit whose `IDR0.COHACC` is `cohacc`, with the SMMU's
/// own coherency declared as `declared` (IORT `COHACC Override`, DT `dma-coherent`): returns
/// the unit's capabilities, the CR1 it wrote and how many `sync_for_device` cleans the
/// operations made.
fn with_declared_coherency(
    cohacc: bool,
    declared: Option<(bool, Source)>,
) -> (iommu_engine::iommu::Capabilities, u32, u64) {
    use iommu_engine::mmio::RegisterWindow;
    use iommu_engine::pgtable::Gather;
    use iommu_engine::smmuv3::regs;
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_cohacc(cohacc));
    let before = mem.stats().syncs;
    let u = unit(
        &model,
        &mem,
        SmmuConfig {
            coherent_access: declared,
            ..cfg()
        },
    );
    let d = u.domain_alloc(&stage(Stage::Second)).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(iommu_engine::iommu::DeviceId(SID), None, d)
        .unwrap();
    let ok = model.translate(SID, None, 0x1008, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x4000_0008);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), K4, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    let cleans = mem.stats().syncs - before;
    (u.capabilities(), model.read32(regs::CR1), cleans)
}

/// Firmware is authoritative over `IDR0.COHACC` (issue 16): a unit whose register says
/// non-coherent but whose IORT node has `COHACC Override` walks cacheable, cleans nothing, and
/// its report names the IORT; the reverse declaration makes a coherent-looking unit clean
/// every write and walk non-cacheable.
#[test]
fn declared_smmu_coherency_overrides_idr0_cohacc() {
    use iommu_engine::firmware::iort::platform::SOURCE_COHACC_OVERRIDE;
    use iommu_engine::smmuv3::regs::Cr1;
    let embedder = Source::Embedder("test: SmmuConfig::coherent_access");
    // Undeclared: the register decides, both ways.
    let (caps, cr1, cleans) = with_declared_coherency(false, None);
    assert!(!caps.coherent_walk && cleans > 0);
    assert_eq!(cr1, Cr1::NON_COHERENT.encode());
    assert_eq!(caps.sources.coherent_walk, Source::Register("IDR0.COHACC"));
    let (caps, cr1, cleans) = with_declared_coherency(true, None);
    assert!(caps.coherent_walk);
    assert_eq!((cr1, cleans), (Cr1::COHERENT.encode(), 0));
    // COHACC = 0, declared coherent: write-back walks, no clean at all.
    let (caps, cr1, cleans) = with_declared_coherency(false, Some((true, SOURCE_COHACC_OVERRIDE)));
    assert!(caps.coherent_walk);
    assert!(
        caps.coherent_dma,
        "undeclared devices follow the SMMU's coherency"
    );
    assert_eq!(caps.sources.coherent_walk, SOURCE_COHACC_OVERRIDE);
    assert_eq!(caps.sources.coherent_dma, SOURCE_COHACC_OVERRIDE);
    assert_eq!((cr1, cleans), (Cr1::COHERENT.encode(), 0));
    // COHACC = 1, declared non-coherent: non-cacheable walks, every table write cleaned.
    let (caps, cr1, cleans) = with_declared_coherency(true, Some((false, embedder)));
    assert!(!caps.coherent_walk && !caps.coherent_dma);
    assert_eq!(caps.sources.coherent_walk, embedder);
    assert_eq!(cr1, Cr1::NON_COHERENT.encode());
    assert!(cleans > 0, "{cleans}");
}

/// MSI completion of CMD_SYNC needs a coherent SMMU: a declaration decides it as it decides
/// the rest.
#[test]
fn msi_sync_follows_the_declared_coherency() {
    let mem = arena();
    let on = SmmuModelConfig::qemu_like().with_msi(true);
    let model = SmmuModel::new(&mem, on.with_cohacc(true));
    let off = Some((false, Source::Embedder("test")));
    let msi = |coherent_access| SmmuConfig {
        sync: SyncMode::Msi,
        coherent_access,
        ..cfg()
    };
    assert!(matches!(
        SmmuUnit::new(&model, &mem, msi(off)),
        Err(SmmuError::InvalidConfig { .. })
    ));
    let model = SmmuModel::new(&mem, on.with_cohacc(false));
    SmmuUnit::new(&model, &mem, msi(Some((true, Source::Embedder("test"))))).unwrap();
}
