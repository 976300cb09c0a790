//! The SMMUv3 unit driven against the behavioural model `sim::smmuv3`: what the driver writes
//! is read back by an independent decoder of STEs, CDs, commands and tables, which translates
//! DMA, caches what hardware may cache until it is invalidated, and counts commands.

use iommu_engine::iommu::{
    DeviceHints, DeviceId, DomainConfig, DomainHandle, Error, Iommu, Missing, Pasid, Source, Stage,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::{event, op, Injection, SmmuModel, SmmuModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::smmuv3::platform::{CANWBS_NOT_DECLARED, USER_STAGE1_NOT_COHERENT};
use iommu_engine::smmuv3::{DeviceFacts, Platform, SmmuConfig, SmmuError, SmmuUnit};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const SID: u32 = 0x20;

type Unit<'a> = SmmuUnit<&'a SmmuModel<'a>, &'a Arena>;

fn arena() -> Arena {
    Arena::with_defaults().unwrap()
}

fn unit<'a>(model: &'a SmmuModel<'a>, mem: &'a Arena, cfg: SmmuConfig) -> Unit<'a> {
    let u = SmmuUnit::new(model, mem, cfg).unwrap();
    u.enable().unwrap();
    model.reset_stats();
    u
}

fn cfg() -> SmmuConfig {
    SmmuConfig {
        poll_budget: 1000,
        ..SmmuConfig::default()
    }
}

fn s2() -> DomainConfig {
    DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    }
}

fn s1() -> DomainConfig {
    DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    }
}

fn pa_of(model: &SmmuModel<'_>, sid: u32, ssid: Option<u32>, iova: u64) -> Option<u64> {
    model
        .translate(sid, ssid, iova, Access::READ)
        .ok()
        .map(|t| t.pa)
}

#[test]
fn stage2_map_translates_and_unmap_plus_flush_faults() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(
        d,
        Iova::new(0x10_0000),
        PhysAddr::new(0x4000_0000),
        4 * K4,
        RW,
    )
    .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model
        .translate(SID, None, 0x10_2345, Access::WRITE)
        .unwrap();
    assert_eq!(ok.pa, 0x4000_2345);
    // Not enforcing snoop: stage 2 is write-back, which leaves a no-snoop DMA non-cacheable.
    assert!(!ok.cacheable_wb);
    assert_eq!(ok.s2_memattr, Some(0b1111));
    // A device outside any attachment aborts.
    assert!(model
        .translate(0x21, None, 0x10_0000, Access::READ)
        .is_err());

    let mut g = Gather::new();
    assert_eq!(
        u.unmap(d, Iova::new(0x10_0000), 4 * K4, &mut g).unwrap(),
        4 * K4
    );
    // Without the flush the model still translates from its TLB.
    assert_eq!(pa_of(&model, SID, None, 0x10_2000), Some(0x4000_2000));
    assert!(
        model
            .translate(SID, None, 0x10_2000, Access::READ)
            .unwrap()
            .tlb_hit
    );
    u.flush(d, &mut g).unwrap();
    let fault = model
        .translate(SID, None, 0x10_2000, Access::READ)
        .unwrap_err();
    assert_eq!(fault.event, event::F_TRANSLATION);
    assert!(fault.recorded && fault.stage2);
    let mut events = Vec::new();
    let report = u.handle_events(16, |e| events.push(e));
    assert_eq!(report.events.consumed, 1);
    assert_eq!(events[0].stream_id.0, SID);
    assert_eq!(events[0].input_address, Some(0x10_2000));
    // Detach: the stream aborts again.
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(d).unwrap();
    assert!(model.translate(SID, None, 0x10_0000, Access::READ).is_err());
}

/// The platform's word for every StreamID: its accesses are coherent whatever their
/// attributes (ACPI IORT CANWBS).
fn canwbs() -> SmmuConfig {
    SmmuConfig {
        platform: Platform::new(DeviceFacts {
            canwbs: true,
            coherent_dma: None,
            source: Source::Firmware("IORT root complex CANWBS"),
        }),
        ..cfg()
    }
}

fn snoop() -> DomainConfig {
    DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    }
}

#[test]
fn fwb_makes_no_snoop_dma_write_back_but_not_coherent() {
    // FWB and COHACC, no CANWBS: a No-Snoop transaction through a stage-2 domain comes out
    // write-back, and still does not snoop -- so no enforced snooping is claimed or built.
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = unit(&model, &mem, cfg());
    assert!(!u.capabilities().enforce_snoop);
    assert_eq!(
        u.domain_alloc(&snoop()),
        Err(Error::Unsupported(Missing::NotDeclared {
            what: CANWBS_NOT_DECLARED
        }))
    );
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model.translate(SID, None, 0x20_1000, Access::READ).unwrap();
    assert!(!ok.coherent);
}

#[test]
fn enforced_snoop_on_a_canwbs_platform_snoops_with_fwb_forcing_write_back() {
    let mem = arena();
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_fwb(true)
            .with_canwbs(SID, SID),
    );
    let u = unit(&model, &mem, canwbs());
    assert!(u.capabilities().enforce_snoop);
    let d = u.domain_alloc(&snoop()).unwrap();
    u.map(d, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model.translate(SID, None, 0x20_1000, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x6000_1000);
    assert_eq!(ok.page_size_log2, 21);
    assert!(ok.coherent && ok.cacheable_wb);
    assert_eq!(ok.s2_memattr, Some(0b0110));
    // Without FWB the platform's word suffices: plain write-back MemAttr, still coherent.
    let mem2 = arena();
    let plain = SmmuModel::new(&mem2, SmmuModelConfig::qemu_like().with_canwbs(SID, SID));
    let u2 = unit(&plain, &mem2, canwbs());
    let d2 = u2.domain_alloc(&snoop()).unwrap();
    u2.map(d2, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
        .unwrap();
    u2.attach(DeviceId(SID), None, d2).unwrap();
    let ok = plain.translate(SID, None, 0x20_1000, Access::READ).unwrap();
    assert!(ok.coherent);
    assert_eq!(ok.s2_memattr, Some(0b1111));
}

/// CANWBS makes a stream's accesses coherent whatever their attributes: a device the platform
/// declares so, with no coherency of its own declared, attaches to a stage 2 that forces
/// write-back on a unit without `IDR0.COHACC` (a first version of the forced-write-back check
/// took it for non-coherent and refused it).
#[test]
fn a_canwbs_device_attaches_to_forced_write_back_without_cohacc() {
    let mem = arena();
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_fwb(true)
            .with_cohacc(false)
            .with_canwbs(SID, SID),
    );
    let u = unit(&model, &mem, canwbs());
    let d = u.domain_alloc(&snoop()).unwrap();
    u.map(d, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model.translate(SID, None, 0x20_1000, Access::READ).unwrap();
    assert!(ok.coherent && ok.cacheable_wb);
}

#[test]
fn stage1_translates_through_the_cd() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&s1()).unwrap();
    u.map(d, Iova::new(0x7000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model.translate(SID, None, 0x7010, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x5000_0010);
    // Stage 1 gives the access its type: Normal write-back (coherent unit).
    assert!(ok.cacheable_wb);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x7000), K4, &mut g).unwrap();
    assert!(model.translate(SID, None, 0x7010, Access::READ).is_ok());
    model.reset_stats();
    u.flush(d, &mut g).unwrap();
    let st = model.stats();
    assert_eq!(st.commands_of(op::TLBI_NH_VA), 1);
    assert_eq!(st.syncs, 1);
    assert_eq!(
        model
            .translate(SID, None, 0x7010, Access::READ)
            .unwrap_err()
            .event,
        event::F_TRANSLATION
    );
}

/// A stage-2 domain a guest's stage 1 may nest in.
fn nest_parent() -> DomainConfig {
    DomainConfig {
        nest_parent: true,
        ..s2()
    }
}

#[test]
fn nested_stage1_over_a_nest_parent() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let parent = u.domain_alloc(&nest_parent()).unwrap();
    // Stage 1 and its CD are walked as IPAs: the parent maps the arena at IPA = PA.
    let base = mem.base_pa();
    u.map(parent, Iova::new(base), PhysAddr::new(base), 64 << 20, RW)
        .unwrap();
    u.map(
        parent,
        Iova::new(0x1_0000_0000),
        PhysAddr::new(0x2_0000_0000),
        M2,
        RW,
    )
    .unwrap();
    let child = u.domain_alloc_nested(&s1(), parent).unwrap();
    u.map(
        child,
        Iova::new(0x40_0000),
        PhysAddr::new(0x1_0000_3000),
        K4,
        RW,
    )
    .unwrap();
    u.attach(DeviceId(SID), None, child).unwrap();
    let ok = model.translate(SID, None, 0x40_0008, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x2_0000_3008);
    // Unmapping the IPA in the parent and flushing the parent removes the combined entry.
    let mut g = Gather::new();
    u.unmap(parent, Iova::new(0x1_0000_0000), M2, &mut g)
        .unwrap();
    assert!(model.translate(SID, None, 0x40_0008, Access::READ).is_ok());
    u.flush(parent, &mut g).unwrap();
    let fault = model
        .translate(SID, None, 0x40_0008, Access::READ)
        .unwrap_err();
    assert!(fault.stage2);
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(child).unwrap();
    u.domain_free(parent).unwrap();
}

/// Maps `pages` 4 KiB pages at `iova`, unmaps them and flushes; returns (range TLBIs, syncs).
fn flush_counts(ril: bool, stage: DomainConfig, iova: u64, pages: u64) -> (u64, u64) {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ril(ril));
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&stage).unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    u.map(
        d,
        Iova::new(iova),
        PhysAddr::new(0x4000_0000),
        pages * K4,
        RW,
    )
    .unwrap();
    // Warm the TLB so that a missing invalidation would show.
    for i in 0..pages {
        assert!(model
            .translate(SID, None, iova + i * K4, Access::READ)
            .is_ok());
    }
    let mut g = Gather::new();
    u.unmap(d, Iova::new(iova), pages * K4, &mut g).unwrap();
    model.reset_stats();
    u.flush(d, &mut g).unwrap();
    for i in 0..pages {
        assert!(
            model
                .translate(SID, None, iova + i * K4, Access::READ)
                .is_err(),
            "page {i} still translates"
        );
    }
    let st = model.stats();
    let tlbi = st.commands_of(op::TLBI_S2_IPA) + st.commands_of(op::TLBI_NH_VA);
    (tlbi, st.syncs)
}

#[test]
fn exact_command_counts_with_and_without_ril() {
    // (pages at 0x10_0000, without RIL, with RIL)
    for (pages, plain, ril) in [(1, 1, 1), (3, 3, 1), (16, 16, 1), (33, 33, 2), (64, 64, 1)] {
        for stage in [s2(), s1()] {
            assert_eq!(
                flush_counts(false, stage, 0x10_0000, pages),
                (plain, 1),
                "{pages} pages without RIL"
            );
            assert_eq!(
                flush_counts(true, stage, 0x10_0000, pages),
                (ril, 1),
                "{pages} pages with RIL"
            );
        }
    }
    // 65 pages without RIL: one whole-VMID invalidation instead.
    assert_eq!(flush_counts(false, s2(), 0x10_0000, 65), (0, 1));
}

#[test]
fn hitless_ste_transitions_count_their_syncs() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let (a, b) = (
        u.domain_alloc(&s2()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    u.map(a, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.map(b, Iova::new(0), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    // Abort -> stage 2: prepare the stage-2 words, then switch word 0: two syncs.
    u.attach(DeviceId(SID), None, a).unwrap();
    let st = model.stats();
    assert_eq!((st.commands_of(op::CFGI_STE), st.syncs), (2, 2));
    assert_eq!(pa_of(&model, SID, None, 0), Some(0x4000_0000));
    // Stage 2 (VMID 1) -> stage 2 (VMID 2): break to abort, write, make: three syncs, then the
    // old VMID is invalidated: a fourth.
    model.reset_stats();
    u.attach(DeviceId(SID), None, b).unwrap();
    let st = model.stats();
    assert_eq!((st.commands_of(op::CFGI_STE), st.syncs), (3, 4));
    assert_eq!(st.commands_of(op::TLBI_S12_VMALL), 1);
    assert_eq!(pa_of(&model, SID, None, 0), Some(0x5000_0000));
    // Stage 2 -> abort on detach: word 0 first, then the rest cleaned, then the TLBI.
    model.reset_stats();
    u.detach(DeviceId(SID), None).unwrap();
    assert_eq!(model.stats().syncs, 3);
    assert!(model.translate(SID, None, 0, Access::READ).is_err());
}

#[test]
fn two_level_stream_and_cd_tables() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ssid_bits(10));
    let u = unit(&model, &mem, cfg());
    assert_eq!(u.capabilities().pasid_bits, 10);
    let live = mem.live_pages().len();
    let (a, b) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    u.map(a, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.map(b, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    // StreamIDs in different 256-STE leaves; PASIDs in different 64-CD leaves.
    let p = |v| Some(Pasid::new(v).unwrap());
    u.attach(DeviceId(0x20), p(5), a).unwrap();
    u.attach(DeviceId(0x20), p(0x341), b).unwrap();
    u.attach(DeviceId(0x1234), None, b).unwrap();
    assert_eq!(pa_of(&model, 0x20, Some(5), 0x1008), Some(0x4000_0008));
    assert_eq!(pa_of(&model, 0x20, Some(0x341), 0x1008), Some(0x5000_0008));
    assert_eq!(pa_of(&model, 0x1234, None, 0x1008), Some(0x5000_0008));
    // No RID domain on 0x20: traffic without a PASID is terminated; unattached PASIDs fault.
    assert!(model.translate(0x20, None, 0x1008, Access::READ).is_err());
    assert!(model
        .translate(0x20, Some(6), 0x1008, Access::READ)
        .is_err());
    assert!(mem.live_pages().len() > live);
    u.detach(DeviceId(0x20), Some(Pasid::new(5).unwrap()))
        .unwrap();
    assert!(model
        .translate(0x20, Some(5), 0x1008, Access::READ)
        .is_err());
    assert_eq!(pa_of(&model, 0x20, Some(0x341), 0x1008), Some(0x5000_0008));
    assert_eq!(
        u.attach(DeviceId(0x20), p(1 << 10), a),
        Err(Error::InvalidPasid(Pasid::new(1 << 10).unwrap()))
    );
}

#[test]
fn queue_wraps_over_thousands_of_flushes() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ril(false));
    let small = SmmuConfig {
        cmdq_log2: Some(3),
        ..cfg()
    };
    let u = unit(&model, &mem, small);
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    model.reset_stats();
    let rounds = 2000u64;
    for i in 0..rounds {
        let iova = (i % 64) * 4 * K4;
        u.map(
            d,
            Iova::new(iova),
            PhysAddr::new(0x4000_0000 + i * K4),
            3 * K4,
            RW,
        )
        .unwrap();
        assert_eq!(
            pa_of(&model, SID, None, iova + K4),
            Some(0x4000_1000 + i * K4)
        );
        let mut g = Gather::new();
        u.unmap(d, Iova::new(iova), 3 * K4, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        assert!(model.translate(SID, None, iova + K4, Access::READ).is_err());
    }
    let st = model.stats();
    // Three page invalidations and one sync per round, through an 8-entry queue.
    assert_eq!(st.commands_of(op::TLBI_S2_IPA), 3 * rounds);
    assert_eq!(st.syncs, rounds);
    // The faults filled the event queue; draining keeps it usable.
    let r = u.handle_events(usize::MAX, |_| {});
    assert!(r.events.consumed > 0);
}

#[test]
fn injected_command_error_is_recovered_and_pages_kept_until_a_good_flush() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    u.map(
        d,
        Iova::new(0x40_0000),
        PhysAddr::new(0x4000_0000),
        4 * K4,
        RW,
    )
    .unwrap();
    assert!(model.translate(SID, None, 0x40_0000, Access::READ).is_ok());
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x40_0000), M2, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 1);
    let live = mem.live_pages().len();
    model.inject(Injection::CommandIllegal);
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(matches!(err, Error::CommandError { .. }), "{err:?}");
    // The TLBI was replaced: the page is kept and the stale entry may survive.
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(mem.live_pages().len(), live);
    // The queue runs again; the retry invalidates and releases.
    u.flush(d, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 0);
    assert_eq!(mem.live_pages().len(), live - 1);
    assert!(model.translate(SID, None, 0x40_0000, Access::READ).is_err());
    // A CMD_SYNC that never completes: timeout, pages kept.
    u.map(
        d,
        Iova::new(0x40_0000),
        PhysAddr::new(0x4000_0000),
        4 * K4,
        RW,
    )
    .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x40_0000), M2, &mut g).unwrap();
    model.inject(Injection::SyncStall);
    assert_eq!(u.flush(d, &mut g), Err(Error::Timeout { what: "CMD_SYNC" }));
    assert_eq!(g.freed_pages(), 1);
    model.clear_injections();
    u.flush(d, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 0);
}

#[test]
fn non_coherent_unit_gets_every_write_cleaned() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_cohacc(false));
    // Every word the driver writes from now on, in new or live pages, must be cleaned.
    let before = mem.start_sync_recording();
    let u = unit(&model, &mem, cfg());
    assert!(!u.capabilities().coherent_walk);
    assert!(!u.capabilities().enforce_snoop);
    let (a, b) = (
        u.domain_alloc(&s2()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    u.map(
        a,
        Iova::new(0x20_0000),
        PhysAddr::new(0x4000_0000),
        M2 + K4,
        RW,
    )
    .unwrap();
    u.map(b, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, a).unwrap();
    u.attach(DeviceId(0x300), None, b).unwrap();
    assert_eq!(pa_of(&model, SID, None, 0x40_0000), Some(0x4020_0000));
    assert_eq!(pa_of(&model, 0x300, None, 0x1000), Some(0x5000_0000));
    let mut g = Gather::new();
    u.unmap(a, Iova::new(0x20_0000), M2 + K4, &mut g).unwrap();
    u.flush(a, &mut g).unwrap();
    u.attach(DeviceId(SID), None, b).unwrap();
    assert_eq!(mem.unsynced_words(&before), Vec::<u64>::new());
    mem.stop_sync_recording();
}

#[test]
fn concurrent_maps_and_flushes_on_one_domain() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    model.reset_stats();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (u, model) = (&u, &model);
            s.spawn(move || {
                for i in 0..50u64 {
                    let iova = (t << 30) | (i * 4 * K4);
                    let pa = 0x4000_0000 + (t * 64 + i) * K4;
                    u.map(d, Iova::new(iova), PhysAddr::new(pa), 2 * K4, RW)
                        .unwrap();
                    assert_eq!(pa_of(model, SID, None, iova), Some(pa));
                    let mut g = Gather::new();
                    u.unmap(d, Iova::new(iova), 2 * K4, &mut g).unwrap();
                    u.flush(d, &mut g).unwrap();
                    assert!(model.translate(SID, None, iova, Access::READ).is_err());
                }
            });
        }
    });
    assert_eq!(model.stats().syncs, 200);
}

#[test]
fn msi_and_sev_completion() {
    use iommu_engine::smmuv3::cmdq::SyncMode;
    for (sync, model_cfg) in [
        (SyncMode::Msi, SmmuModelConfig::qemu_like().with_msi(true)),
        (SyncMode::Sev, SmmuModelConfig::qemu_like().with_sev(true)),
    ] {
        let mem = arena();
        let model = SmmuModel::new(&mem, model_cfg);
        // Without the ID bit the mode is refused.
        assert!(SmmuUnit::new(
            &model,
            &mem,
            SmmuConfig {
                sync: if sync == SyncMode::Msi {
                    SyncMode::Sev
                } else {
                    SyncMode::Msi
                },
                ..cfg()
            }
        )
        .is_err());
        let u = unit(&model, &mem, SmmuConfig { sync, ..cfg() });
        let d = u.domain_alloc(&s2()).unwrap();
        u.attach(DeviceId(SID), None, d).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        assert!(model.translate(SID, None, 0, Access::READ).is_ok());
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
        model.reset_stats();
        u.flush(d, &mut g).unwrap();
        let st = model.stats();
        assert_eq!(st.syncs, 1);
        assert_eq!(
            (st.sync_msi_writes, st.sync_sevs),
            if sync == SyncMode::Msi {
                (1, 0)
            } else {
                (0, 1)
            }
        );
        assert!(model.translate(SID, None, 0, Access::READ).is_err());
    }
}

#[test]
fn splitting_a_cached_block_invalidates_it() {
    for ril in [false, true] {
        let mem = arena();
        let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ril(ril));
        let u = unit(&model, &mem, cfg());
        for stage in [s2(), s1()] {
            let d = u.domain_alloc(&stage).unwrap();
            let sid = if stage.stage == Stage::Second {
                0x40
            } else {
                0x41
            };
            u.attach(DeviceId(sid), None, d).unwrap();
            u.map(d, Iova::new(0x20_0000), PhysAddr::new(0x6000_0000), M2, RW)
                .unwrap();
            // The TLB now holds the 2 MiB block.
            let hit = model.translate(sid, None, 0x20_5000, Access::READ).unwrap();
            assert_eq!(hit.page_size_log2, 21);
            let mut g = Gather::new();
            u.unmap(d, Iova::new(0x20_5000), K4, &mut g).unwrap();
            u.flush(d, &mut g).unwrap();
            assert!(
                model.translate(sid, None, 0x20_5000, Access::READ).is_err(),
                "RIL {ril}: the block survived its split"
            );
            let next = model.translate(sid, None, 0x20_6000, Access::READ).unwrap();
            assert_eq!((next.pa, next.page_size_log2), (0x6000_6000, 12));
        }
    }
}

/// Issue 15, item 9, on SMMUv3: `Prot::PRIV` is a stage-1 leaf with `AP[1]` clear (no EL0
/// access): a privileged transaction reaches it, an unprivileged one takes a permission
/// fault. As on VT-d, only a domain built for supervisor requests (`DomainConfig::supervisor`,
/// stage 1 only) maps it; stage 2 has no privilege levels.
#[test]
fn privileged_pages_need_a_supervisor_stage_1_domain() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    assert!(u.capabilities().supervisor);
    let priv_rw = RW | Prot::PRIV;
    let d = u.domain_alloc(&s1()).unwrap();
    assert_eq!(
        u.map(
            d,
            Iova::new(0x1000),
            PhysAddr::new(0x4000_0000),
            K4,
            priv_rw
        ),
        Err(Error::PageTable(
            iommu_engine::pgtable::Error::UnsupportedProt { prot: priv_rw }
        ))
    );
    let supervisor = DomainConfig {
        supervisor: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&DomainConfig {
            stage: Stage::Second,
            ..supervisor
        }),
        Err(Error::Unsupported(Missing::SupervisorRequests))
    );
    // Stage::Any on a unit with both stages: stage 1.
    let sup = u.domain_alloc(&supervisor).unwrap();
    u.map(
        sup,
        Iova::new(0x1000),
        PhysAddr::new(0x4000_0000),
        K4,
        priv_rw,
    )
    .unwrap();
    u.attach(DeviceId(SID), None, sup).unwrap();
    let privileged = Access {
        privileged: true,
        ..Access::READ
    };
    assert_eq!(
        model
            .translate(SID, None, 0x1008, privileged)
            .map(|t| t.pa)
            .ok(),
        Some(0x4000_0008)
    );
    assert!(model.translate(SID, None, 0x1008, Access::READ).is_err());
    let s2_only = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_stages(false, true));
    let u2 = unit(&s2_only, &mem, cfg());
    assert!(!u2.capabilities().supervisor);
    assert_eq!(
        u2.domain_alloc(&supervisor),
        Err(Error::Unsupported(Missing::SupervisorRequests))
    );
}

/// A platform that declares `facts` for StreamID `SID` alone.
fn declared_for_sid(facts: DeviceFacts) -> Platform {
    Platform::default()
        .declare(
            iommu_engine::smmuv3::StreamId(SID),
            iommu_engine::smmuv3::StreamId(SID),
            facts,
        )
        .unwrap()
}

/// A device the platform declares non-coherent (IORT CCA = 0) behind a coherent unit
/// (`IDR0.COHACC`): its stage-1 leaves are Non-cacheable, and the capability report says its DMA
/// is not coherent and that the IORT says so. Undeclared devices follow `IDR0.COHACC`, named.
#[test]
fn non_coherent_device_is_reported_with_its_source() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let cca0 = Source::Firmware("IORT named component CCA=0");
    let facts = DeviceFacts {
        canwbs: false,
        coherent_dma: Some(false),
        source: cca0,
    };
    let platform = declared_for_sid(facts);
    let u = unit(&model, &mem, SmmuConfig { platform, ..cfg() });
    assert!(u.capabilities().coherent_walk);
    let caps = u.device_capabilities(DeviceId(SID));
    assert!(!caps.coherent_dma);
    assert_eq!(caps.sources.coherent_dma, cca0);
    let other = u.device_capabilities(DeviceId(SID + 1));
    assert!(other.coherent_dma);
    assert_eq!(
        other.sources.coherent_dma,
        Source::Register("IDR0.COHACC (coherency undeclared)")
    );
    let d = u
        .domain_alloc(&DomainConfig {
            device: Some(DeviceId(SID)),
            ..s1()
        })
        .unwrap();
    u.map(d, Iova::new(K4), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let ok = model.translate(SID, None, K4, Access::READ).unwrap();
    assert!(
        !ok.cacheable_wb,
        "non-coherent device got Write-Back leaves"
    );
}

/// ATS is the stream's (`STE.EATS`): its ATC may hold translations of every substream. A PASID
/// attached with a plain `attach` on an ATS stream gets CMD_ATC_INV of its substream behind the
/// flush of its domain, and an attach declaring no ATS on the attached ATS stream is refused
/// (`Busy`) rather than turning ATS off under its other PASIDs (issue 20's review asked the
/// AMD-Vi question of SMMUv3).
#[test]
fn every_pasid_of_an_ats_stream_gets_atc_invalidations() {
    let mem = arena();
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_ssid_bits(10)
            .with_ats(true),
    );
    let u = unit(&model, &mem, cfg());
    let (a, b) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let (p5, p6) = (Pasid::new(5).unwrap(), Pasid::new(6).unwrap());
    u.attach_device(DeviceId(SID), Some(p5), a, &ats).unwrap();
    assert_eq!(
        u.attach_device(DeviceId(SID), Some(p6), b, &DeviceHints::default()),
        Err(Error::Busy)
    );
    u.attach(DeviceId(SID), Some(p6), b).unwrap();
    u.map(b, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(b, Iova::new(0x1000), K4, &mut g).unwrap();
    model.reset_stats();
    u.flush(b, &mut g).unwrap();
    // CMD_ATC_INV: SSV word 0 bit 11, SubstreamID bits 31:12, StreamID bits 63:32.
    let atc: Vec<(u64, u64, u64)> = model
        .command_log()
        .iter()
        .filter(|c| c[0] & 0xff == u64::from(op::ATC_INV))
        .map(|c| (c[0] >> 32, (c[0] >> 11) & 1, (c[0] >> 12) & 0xF_FFFF))
        .collect();
    assert_eq!(atc, [(u64::from(SID), 1, 6)], "PASID 6's ATC entries");
}

/// An ATS stream's unit with domain `d` attached to `SID` (ATS on) and 4 KiB at 0x1000 mapped.
fn ats_unit<'a>(model: &'a SmmuModel<'a>, mem: &'a Arena) -> (Unit<'a>, DomainHandle) {
    let u = unit(model, mem, cfg());
    let d = u.domain_alloc(&s2()).unwrap();
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(SID), None, d, &ats).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    (u, d)
}

/// The CMD_ATC_INVs of the log for `sid`, as (SSV, Size): after `enable`, Size 52 at 0 is the
/// stream's whole ATC.
fn atc_invs(model: &SmmuModel<'_>, sid: u32) -> Vec<(u64, u64)> {
    model
        .command_log()
        .iter()
        .filter(|c| c[0] & 0xff == u64::from(op::ATC_INV) && c[0] >> 32 == u64::from(sid))
        .map(|c| ((c[0] >> 11) & 1, c[1] & 0x3f))
        .collect()
}

/// While SMMUEN = 0 the unit ignores CMD_ATC_INV (IHI 0070 §6.3.9.6, §4.5), and a device's ATC
/// outlives the disable (its STE keeps EATS). A flush of an ATS domain while disabled must not
/// report the page invalidated: it fails, the domain owes the invalidation, and `enable`
/// invalidates the whole ATC of every ATS stream (the re-initialisation §6.3.9.6 asks for)
/// before it returns; the retried flush then completes.
#[test]
fn a_flush_while_disabled_owes_the_atc_and_enable_invalidates_it() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let (u, d) = ats_unit(&model, &mem);
    u.disable().unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), K4, &mut g).unwrap();
    model.reset_stats();
    let r = u.flush(d, &mut g);
    assert!(
        r.is_err(),
        "a flush whose ATC_INV the unit ignores reported {r:?}"
    );
    assert_eq!(model.stats().atc_invalidations.get(&SID), None);
    assert_eq!(
        u.audit().unwrap().owing,
        1,
        "the domain owes its invalidation"
    );
    model.reset_stats();
    u.enable().unwrap();
    assert_eq!(model.stats().atc_invalidations.get(&SID), Some(&1));
    assert_eq!(atc_invs(&model, SID), [(0, 52)], "the stream's whole ATC");
    model.reset_stats();
    u.flush(d, &mut g).unwrap();
    assert_eq!(
        model.stats().atc_invalidations.get(&SID),
        Some(&1),
        "the retried flush's own ATC_INV"
    );
    assert_eq!(u.audit().unwrap().owing, 0);
}

/// `enable` re-initialises the ATC of the streams whose STE lets the device use it, not of
/// every stream with ATS on: an idle one (detached, its STE aborting) needs nothing now (the
/// attach that turns its EATS on again owes its whole ATC), and a device gone (D3cold,
/// surprise-removed) would time out every enable's CMD_SYNC (CERROR_ATC_INV_SYNC), keeping the
/// whole unit off for good.
#[test]
fn enable_does_not_wait_on_the_atc_of_a_detached_ats_stream() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let (u, d) = ats_unit(&model, &mem);
    u.detach(DeviceId(SID), None).unwrap();
    u.disable().unwrap();
    model.inject(Injection::AtcInvSyncAt {
        at: 0,
        times: u32::MAX,
    });
    model.reset_stats();
    let r = u.enable();
    model.clear_injections();
    assert_eq!(r, Ok(()), "the dead device's ATC kept the unit off");
    assert_eq!(
        atc_invs(&model, SID),
        [],
        "its STE aborts: nothing to invalidate"
    );
    u.domain_free(d).unwrap();
}

/// An ATS endpoint that no longer answers (D3cold, surprise-removed) while its stream is
/// attached: `enable`'s re-initialisation of its ATC times out (CERROR_ATC_INV_SYNC), and the
/// error names the StreamID. The way out: detach it while disabled (its STE is written to
/// abort; the detach fails on the ignored ATC_INV and leaves it unsettled, the domain held),
/// then `enable` succeeds; the domain stays `Busy` until the stream's ATC is settled.
#[test]
fn a_dead_ats_endpoint_can_be_detached_while_disabled_and_enable_then_succeeds() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let (u, d) = ats_unit(&model, &mem);
    u.disable().unwrap();
    model.inject(Injection::AtcInvSyncAt {
        at: 0,
        times: u32::MAX,
    });
    assert_eq!(
        u.enable(),
        Err(SmmuError::AtcReinitTimeout { sid: SID }),
        "enable names the stream whose invalidation timed out"
    );
    assert!(!u.is_enabled());
    // The model keeps a timed-out CMD_ATC_INV waited on by every later CMD_SYNC, even across
    // enable's queue reset: cleared for the detach's CFGI_STE, armed again for enable.
    model.clear_injections();
    assert!(u.detach(DeviceId(SID), None).is_err());
    model.inject(Injection::AtcInvSyncAt {
        at: 0,
        times: u32::MAX,
    });
    u.enable().unwrap();
    model.clear_injections();
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(d).unwrap();
}

/// Detach and free while disabled: the detach cannot invalidate the stream's ATC (ignored while
/// SMMUEN = 0), so it fails with the domain still held (retiring), and the free is refused
/// (`Busy`); after `enable` the retried detach and the free complete.
#[test]
fn a_detach_while_disabled_keeps_the_domain_until_enable() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let (u, d) = ats_unit(&model, &mem);
    u.disable().unwrap();
    model.reset_stats();
    assert!(u.detach(DeviceId(SID), None).is_err());
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    assert_eq!(model.stats().atc_invalidations.get(&SID), None);
    u.enable().unwrap();
    // The failed detach wrote the aborting STE: enable has no ATC of it to re-initialise.
    assert_eq!(model.stats().atc_invalidations.get(&SID), None);
    model.reset_stats();
    u.detach(DeviceId(SID), None).unwrap();
    assert_eq!(
        model.stats().atc_invalidations.get(&SID),
        Some(&1),
        "the retried detach's own ATC_INV"
    );
    u.domain_free(d).unwrap();
}

/// The first ATS attach of a stream owes the invalidation of its whole ATC (the device's ATC
/// may hold translations from before); while SMMUEN = 0 that CMD_ATC_INV would be ignored, so
/// the attach fails with the stream unsettled, and its retry after `enable` completes it.
#[test]
fn an_ats_attach_while_disabled_owes_its_atc_invalidation_until_enable() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&s2()).unwrap();
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.disable().unwrap();
    model.reset_stats();
    let r = u.attach_device(DeviceId(SID), None, d, &ats);
    assert!(
        r.is_err(),
        "an attach whose ATC_INV the unit ignores reported {r:?}"
    );
    assert_eq!(model.stats().atc_invalidations.get(&SID), None);
    assert_eq!(u.audit().unwrap().unsettled, 1);
    u.enable().unwrap();
    model.reset_stats();
    u.attach_device(DeviceId(SID), None, d, &ats).unwrap();
    assert_eq!(
        model.stats().atc_invalidations.get(&SID),
        Some(&1),
        "the retried attach's own ATC_INV"
    );
    assert_eq!(u.audit().unwrap().unsettled, 0);
}

/// A user domain: the guest's CD table and stage 1, nested over `parent`, built by hand in
/// guest memory (IPA 0x20_0000: the CD, 0x20_1000: a level-1 table) that `parent` maps. The
/// guest's stage 1 maps VA 0..1 GiB to IPA 0x4000_0000 with a 1 GiB block of MAIR attribute 0,
/// and its MAIR makes attribute 0 Normal Non-cacheable (0x44); `parent` maps IPA
/// 0x4000_0000 (2 MiB) to 0x6000_0000.
fn guest_non_cacheable_stage1(u: &Unit<'_>, mem: &Arena, parent: DomainHandle) -> DomainHandle {
    guest_stage1(u, mem, parent, RW)
}

/// [`guest_non_cacheable_stage1`] with the guest's level-1 table mapped by `parent` with
/// `table_prot`.
fn guest_stage1(u: &Unit<'_>, mem: &Arena, parent: DomainHandle, table_prot: Prot) -> DomainHandle {
    use iommu_engine::iommu::UserStage1;
    use iommu_engine::mem::PageAllocator;
    let cd = mem.alloc(12).unwrap().pa.get();
    let l1 = mem.alloc(12).unwrap().pa.get();
    u.map(parent, Iova::new(0x20_0000), PhysAddr::new(cd), K4, RW)
        .unwrap();
    u.map(
        parent,
        Iova::new(0x20_1000),
        PhysAddr::new(l1),
        K4,
        table_prot,
    )
    .unwrap();
    u.map(
        parent,
        Iova::new(0x4000_0000),
        PhysAddr::new(0x6000_0000),
        M2,
        RW,
    )
    .unwrap();
    // T0SZ 25, TG0 4K, IR0/OR0 write-back, SH0 inner, V, IPS 44 bits, AA64, ASID 1.
    let dw0 = 25 | 1 << 8 | 1 << 10 | 3 << 12 | 1 << 31 | 0b100 << 32 | 1 << 41 | 1 << 48;
    assert!(mem.write_u64(cd, dw0));
    assert!(mem.write_u64(cd + 8, 0x20_1000));
    assert!(mem.write_u64(cd + 24, 0x44));
    // Block, AttrIndx 0, AP[1] (EL0 too), SH inner, AF.
    assert!(mem.write_u64(l1, 0x4000_0000 | 1 << 10 | 3 << 8 | 1 << 6 | 0b01));
    // V, Config = stage 1 translates (0b101), linear CD table at IPA 0x20_0000.
    let vste = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | 0x20_0000, 0],
    };
    u.domain_alloc_user(parent, &vste).unwrap()
}

/// A guest's stage 1 must not make DMA Non-cacheable (it would read stale DRAM under dirty
/// host lines): a nest parent on a unit with `IDR3.FWB` forces write-back (STE.S2FWB)
/// whatever the guest's MAIR says; without FWB a user domain needs the device's `CANWBS`.
#[test]
fn a_guests_stage1_cannot_make_dma_non_cacheable() {
    let nest = nest_parent();
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = unit(&model, &mem, cfg());
    let parent = u.domain_alloc(&nest).unwrap();
    let user = guest_non_cacheable_stage1(&u, &mem, parent);
    u.attach(DeviceId(SID), None, user).unwrap();
    let ok = model.translate(SID, None, 0x1040, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x6000_1040);
    assert!(
        ok.cacheable_wb,
        "the guest's MAIR made the DMA Non-cacheable"
    );
    assert_eq!(ok.s2_memattr, Some(0b0110));

    // No FWB, no CANWBS anywhere: the guest's stage 1 would decide; refused.
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let u = unit(&model, &mem, cfg());
    let parent = u.domain_alloc(&nest).unwrap();
    let vste = iommu_engine::iommu::UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | 0x20_0000, 0],
    };
    assert_eq!(
        u.domain_alloc_user(parent, &vste),
        Err(Error::Unsupported(Missing::NotDeclared {
            what: USER_STAGE1_NOT_COHERENT
        }))
    );

    // No FWB, CANWBS for SID only: the user domain serves SID, not SID + 1.
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_canwbs(SID, SID));
    let facts = DeviceFacts {
        canwbs: true,
        coherent_dma: None,
        source: Source::Firmware("IORT root complex CANWBS"),
    };
    let platform = declared_for_sid(facts);
    let u = unit(&model, &mem, SmmuConfig { platform, ..cfg() });
    let parent = u.domain_alloc(&nest).unwrap();
    let user = guest_non_cacheable_stage1(&u, &mem, parent);
    assert_eq!(
        u.attach(DeviceId(SID + 1), None, user),
        Err(Error::Unsupported(Missing::NotDeclared {
            what: USER_STAGE1_NOT_COHERENT
        }))
    );
    u.attach(DeviceId(SID), None, user).unwrap();
    let ok = model.translate(SID, None, 0x1040, Access::READ).unwrap();
    assert!(ok.coherent);
}

/// A nest parent on a unit with `IDR3.FWB` forces Normal Write-Back under everything over it
/// (`STE.S2FWB`, MemAttr 0b0110): a device the platform declares non-coherent (IORT CCA = 0)
/// cannot be attached to it, nor to a crate-built stage 1 or a user domain nested on it, whose
/// Non-cacheable leaves the parent would silently make Write-Back. The device keeps its domain.
#[test]
fn forced_write_back_parent_refuses_a_non_coherent_device() {
    let nest = DomainConfig {
        nest_parent: true,
        ..s2()
    };
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_fwb(true));
    let cca0 = Source::Firmware("IORT named component CCA=0");
    let facts = DeviceFacts {
        canwbs: false,
        coherent_dma: Some(false),
        source: cca0,
    };
    let platform = Platform::default()
        .declare(
            iommu_engine::smmuv3::StreamId(SID),
            iommu_engine::smmuv3::StreamId(SID),
            facts,
        )
        .unwrap();
    let u = unit(&model, &mem, SmmuConfig { platform, ..cfg() });
    // The device's own (Non-cacheable) stage-1 domain first: a refusal must leave it there.
    let own = u
        .domain_alloc(&DomainConfig {
            device: Some(DeviceId(SID)),
            ..s1()
        })
        .unwrap();
    u.map(own, Iova::new(K4), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, own).unwrap();

    let parent = u.domain_alloc(&nest).unwrap();
    let base = mem.base_pa();
    u.map(parent, Iova::new(base), PhysAddr::new(base), 64 << 20, RW)
        .unwrap();
    u.map(
        parent,
        Iova::new(0x1_0000_0000),
        PhysAddr::new(0x2_0000_0000),
        M2,
        RW,
    )
    .unwrap();
    let child = u
        .domain_alloc_nested(
            &DomainConfig {
                device: Some(DeviceId(SID)),
                ..s1()
            },
            parent,
        )
        .unwrap();
    u.map(
        child,
        Iova::new(0x40_0000),
        PhysAddr::new(0x1_0000_3000),
        K4,
        RW,
    )
    .unwrap();
    let refused = Err(Error::Unsupported(Missing::DmaCoherency {
        domain: true,
        device: false,
        source: cca0,
    }));
    assert_eq!(
        u.attach(DeviceId(SID), None, child),
        refused,
        "the parent's S2FWB would make the non-coherent device's DMA Write-Back"
    );
    assert_eq!(u.attach(DeviceId(SID), None, parent), refused);
    // A guest's stage 1 (its ASIDs) only once the crate's child is gone.
    u.domain_free(child).unwrap();
    let user = guest_non_cacheable_stage1(&u, &mem, parent);
    assert_eq!(u.attach(DeviceId(SID), None, user), refused);

    // Left as it was: still its own domain, Non-cacheable.
    let ok = model.translate(SID, None, K4, Access::READ).unwrap();
    assert_eq!(ok.pa, 0x4000_0000);
    assert!(!ok.cacheable_wb);
    // An undeclared (COHACC: coherent) device still attaches to both.
    u.attach(DeviceId(SID + 1), None, parent).unwrap();
}

/// STE.S2PTW = 1 (IHI 0070 §5.2): a guest's stage-1 walk (or CD fetch) that lands on a page the
/// parent maps as Device memory (MMIO) is a stage-2 Permission fault, not a read of the device.
#[test]
fn a_guests_table_walk_into_a_device_page_faults() {
    let mem = arena();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = unit(&model, &mem, cfg());
    let parent = u.domain_alloc(&nest_parent()).unwrap();
    let user = guest_stage1(&u, &mem, parent, RW | Prot::MMIO);
    u.attach(DeviceId(SID), None, user).unwrap();
    let f = model
        .translate(SID, None, 0x1040, Access::READ)
        .expect_err("the guest's walk read a Device-mapped page");
    assert_eq!((f.event, f.stage2), (event::F_PERMISSION, true));
    assert_eq!(f.addr2, 0x20_1000);
}

/// A stream declared both able to stall (a platform device's fact: IORT "DMA stall supported",
/// `dma-can-stall`) and ATS-capable (a PCIe device's): an STE with `S2S` = 1 and `EATS` != 0
/// is ILLEGAL (IHI 0070 §5.2), so the unit would answer every transaction of the stream with
/// C_BAD_STE. The attach is refused before anything is written, whichever order the stream
/// met the two in; a stream declared one of them keeps working.
#[test]
fn a_stream_that_may_stall_is_refused_ats() {
    let mem = arena();
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_ats(true)
            .with_stall_model(0),
    );
    let u = unit(&model, &mem, cfg());
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(d, Iova::new(K4), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let both = DeviceHints {
        ats: true,
        stall: true,
        ..DeviceHints::default()
    };
    let r = u.attach_device(DeviceId(SID), None, d, &both);
    if r.is_ok() {
        let t = model.translate(SID, None, K4, Access::READ);
        assert!(
            t.is_ok(),
            "the attach wrote an STE the unit rejects (event {:#x})",
            t.unwrap_err().event
        );
    }
    let refused = Err(Error::InvalidArgument {
        what: iommu_engine::smmuv3::STALL_WITH_ATS,
        value: u64::from(SID),
    });
    assert_eq!(r, refused);
    // Nothing was written.
    assert!(model.stats().commands.is_empty());
    // Either alone works.
    let stall = DeviceHints {
        stall: true,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(SID), None, d, &stall).unwrap();
    assert_eq!(
        model.translate(SID, None, K4, Access::READ).unwrap().pa,
        0x4000_0000
    );
    u.detach(DeviceId(SID), None).unwrap();
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(SID), None, d, &ats).unwrap();
    assert_eq!(
        model.translate(SID, None, K4, Access::READ).unwrap().pa,
        0x4000_0000
    );
}
