//! The VT-d unit driving the behavioural VT-d model (`sim::vtd`): its caches keep context,
//! PASID and IOTLB entries until they are invalidated, so a missing or too narrow invalidation
//! shows up as a translation that should have faulted.

use iommu_engine::iommu::{
    DeviceHints, DeviceId, DomainConfig, DomainHandle, Error, Iommu, Missing, Pasid, Stage,
};
use iommu_engine::mem::{Iova, PageAllocator, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::vtd::prq::{PageRequest, PageRequestOutcome};
use iommu_engine::sim::vtd::{DmaOk, Injection, VtdModel, VtdModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::{Arena, ArenaConfig, PhysMem};
use iommu_engine::vtd::{self, AttachOptions, Mode, VtdConfig, VtdUnit};

#[path = "support/pages.rs"]
mod pages;
use pages::Held;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// 00:04.0 (QEMU's edu in the scenarios) and 01:10.0 (upper half of a scalable context table).
const DEV: DeviceId = DeviceId(0x0020);
const DEV_HI: DeviceId = DeviceId(0x0180);

type Unit<'a> = VtdUnit<&'a VtdModel<'a>, &'a Arena>;

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .expect("arena")
}

fn unit<'a>(m: &'a VtdModel<'a>, a: &'a Arena, mode: Mode) -> Unit<'a> {
    let u = unit_keeping_stats(m, a, mode);
    m.reset_stats();
    u
}

/// As [`unit`], the model's counters kept.
fn unit_keeping_stats<'a>(m: &'a VtdModel<'a>, a: &'a Arena, mode: Mode) -> Unit<'a> {
    let u = unit_off(m, a, mode, 10_000);
    u.enable().expect("enable");
    u
}

/// A unit over the model, not enabled, that polls the model `poll_budget` times at most.
fn unit_off<'a>(m: &'a VtdModel<'a>, a: &'a Arena, mode: Mode, poll_budget: u32) -> Unit<'a> {
    let cfg = VtdConfig {
        mode,
        poll_budget,
        ..VtdConfig::legacy()
    }
    // What the model's DMAR would declare (QEMU reports HAW = aw-bits).
    .with_dmar_host_address_width((m.config().haw - 1) as u8);
    VtdUnit::new(m, a, cfg).expect("unit")
}

/// The model of a unit in `mode`: QEMU's default (legacy) or scalable.
fn model_config(mode: Mode) -> VtdModelConfig {
    match mode {
        Mode::Legacy => VtdModelConfig::qemu_default(),
        Mode::Scalable => VtdModelConfig::scalable(),
    }
}

/// Attach options with ATS on (the device's ATC caches translated requests).
fn ats() -> AttachOptions {
    AttachOptions {
        ats: true,
        ..AttachOptions::default()
    }
}

/// A new domain of `u`, `DEV` attached to it with ATS through each of `pasids` in turn (`None`:
/// requests without PASID), one page mapped at `x` and translated into the device's ATC
/// through each.
fn ats_translated(u: &Unit<'_>, m: &VtdModel<'_>, x: u64, pasids: &[Option<u32>]) -> DomainHandle {
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    for &p in pasids {
        let pasid = p.map(|p| Pasid::new(p).unwrap());
        u.attach_with(DEV, pasid, d, ats()).unwrap();
    }
    u.map(d, Iova::new(x), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    for &p in pasids {
        ok(m.ats_translate(sid(DEV), p, x, Access::READ));
    }
    d
}

fn sid(d: DeviceId) -> u16 {
    d.0 as u16
}

fn ok(r: Result<DmaOk, iommu_engine::sim::vtd::DmaFault>) -> DmaOk {
    r.unwrap_or_else(|f| panic!("expected a translation, got fault {:#x}", f.reason))
}

fn unmap_and_flush(u: &Unit<'_>, d: DomainHandle, iova: u64, len: u64) {
    let mut g = Gather::new();
    assert_eq!(u.unmap(d, Iova::new(iova), len, &mut g), Ok(len));
    u.flush(d, &mut g).expect("flush");
    assert!(g.is_empty());
}

/// The type codes of the descriptors the model executed.
fn types(m: &VtdModel<'_>) -> Vec<u64> {
    m.descriptor_log().iter().map(|d| d[0] & 0xf).collect()
}

#[test]
fn legacy_map_translate_unmap_and_the_invalidation_matters() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    assert!(u.is_enabled());
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x1234_5000), K4, RW)
        .unwrap();
    let t = ok(m.translate(sid(DEV), None, 0x10_0123, Access::WRITE));
    assert_eq!((t.pa, t.snoop, t.did), (0x1234_5123, false, 0));
    assert!(ok(m.translate(sid(DEV), None, 0x10_0008, Access::READ)).from_iotlb);

    // Unmapped but not flushed: the IOTLB still translates.
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x10_0000), K4, &mut g).unwrap();
    let stale = ok(m.translate(sid(DEV), None, 0x10_0000, Access::READ));
    assert!(
        stale.from_iotlb,
        "without the flush the stale entry is used"
    );
    u.flush(d, &mut g).unwrap();
    assert!(m
        .translate(sid(DEV), None, 0x10_0000, Access::READ)
        .is_err());
    // One page-selective invalidation and one wait.
    assert_eq!(types(&m), [2, 5]);
    assert_eq!(m.stats().iotlb_page, 1);

    // Another device was never attached; detach blocks the first one again.
    assert!(m.translate(0x0028, None, 0x10_0000, Access::READ).is_err());
    u.map(d, Iova::new(0), PhysAddr::new(0x5000), K4, RW)
        .unwrap();
    ok(m.translate(sid(DEV), None, 0, Access::READ));
    u.detach(DEV, None).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
    let faults = u.drain_faults(|_, _| {});
    assert!(faults.records >= 1);
}

#[test]
fn replacing_the_domain_invalidates_the_context_cache() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d1 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d1, Iova::new(0), PhysAddr::new(0x1000_0000), K4, RW)
        .unwrap();
    u.map(d2, Iova::new(0), PhysAddr::new(0x2000_0000), K4, RW)
        .unwrap();
    u.attach(DEV, None, d1).unwrap();
    assert_eq!(
        ok(m.translate(sid(DEV), None, 0, Access::READ)).pa,
        0x1000_0000
    );
    u.attach(DEV, None, d2).unwrap();
    let t = ok(m.translate(sid(DEV), None, 0, Access::READ));
    assert_eq!((t.pa, t.did), (0x2000_0000, 1));
}

/// VT-d tables have the 4 KiB granule only: a domain asked for another is refused, named.
#[test]
fn granules_other_than_4k_are_refused() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    for g in [14, 16] {
        let cfg = DomainConfig {
            granule_log2: Some(g),
            ..DomainConfig::default()
        };
        assert_eq!(
            u.domain_alloc(&cfg),
            Err(Error::Unsupported(Missing::PageSize { size_log2: g }))
        );
    }
    let d = u
        .domain_alloc(&DomainConfig {
            granule_log2: Some(12),
            ..DomainConfig::default()
        })
        .unwrap();
    u.domain_free(d).unwrap();
}

#[test]
fn snoop_control() {
    let a = arena();
    let snoop = DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    };
    // QEMU's default has no SC: refused, and named.
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    assert_eq!(
        u.domain_alloc(&snoop),
        Err(Error::Unsupported(Missing::SnoopControl))
    );
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_sc(true));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&snoop).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x20_0000), PhysAddr::new(0x4000_0000), M2, RW)
        .unwrap();
    let t = ok(m.translate(sid(DEV), None, 0x20_1000, Access::WRITE));
    assert_eq!((t.pa, t.snoop, t.page_size_log2), (0x4000_1000, true, 21));
    // A plain domain on the same unit does not force snooping.
    let plain = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DeviceId(0x28), None, plain).unwrap();
    u.map(plain, Iova::new(0), PhysAddr::new(0x9000), K4, RW)
        .unwrap();
    assert!(!ok(m.translate(0x28, None, 0, Access::READ)).snoop);
}

#[test]
fn scalable_rid_and_pasid_second_and_first_stage() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let u = unit(&m, &a, Mode::Scalable);
    let ss = u
        .domain_alloc(&DomainConfig {
            enforce_snoop: true,
            ..DomainConfig::default()
        })
        .unwrap();
    let fs = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            enforce_snoop: true,
            ..DomainConfig::default()
        })
        .unwrap();
    let p7 = Pasid::new(7).unwrap();
    u.attach(DEV_HI, None, ss).unwrap();
    u.attach(DEV_HI, Some(p7), fs).unwrap();
    u.map(ss, Iova::new(0x8000), PhysAddr::new(0x3000_0000), K4, RW)
        .unwrap();
    u.map(fs, Iova::new(0x8000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();

    let t = ok(m.translate(sid(DEV_HI), None, 0x8010, Access::WRITE));
    assert_eq!((t.pa, t.snoop), (0x3000_0010, true));
    let t = ok(m.translate(sid(DEV_HI), Some(7), 0x8010, Access::WRITE));
    assert_eq!(
        (t.pa, t.snoop),
        (0x5000_0010, true),
        "PGSNP on the first stage"
    );
    assert!(m
        .translate(sid(DEV_HI), Some(8), 0x8010, Access::READ)
        .is_err());

    // First stage: unmapped, the IOTLB keeps it until the PASID-based invalidation.
    let mut g = Gather::new();
    u.unmap(fs, Iova::new(0x8000), K4, &mut g).unwrap();
    assert!(ok(m.translate(sid(DEV_HI), Some(7), 0x8000, Access::READ)).from_iotlb);
    m.reset_stats();
    u.flush(fs, &mut g).unwrap();
    assert_eq!(types(&m), [6, 5]);
    assert!(m
        .translate(sid(DEV_HI), Some(7), 0x8000, Access::READ)
        .is_err());
    // The second-stage RID mapping is untouched.
    ok(m.translate(sid(DEV_HI), None, 0x8000, Access::READ));
    unmap_and_flush(&u, ss, 0x8000, K4);
    assert!(m
        .translate(sid(DEV_HI), None, 0x8000, Access::READ)
        .is_err());

    // Replace PASID 7's domain and detach: the PASID cache is invalidated each time.
    u.map(ss, Iova::new(0x9000), PhysAddr::new(0x3100_0000), K4, RW)
        .unwrap();
    u.attach(DEV_HI, Some(p7), ss).unwrap();
    assert_eq!(
        ok(m.translate(sid(DEV_HI), Some(7), 0x9000, Access::READ)).pa,
        0x3100_0000
    );
    u.detach(DEV_HI, Some(p7)).unwrap();
    assert!(m
        .translate(sid(DEV_HI), Some(7), 0x9000, Access::READ)
        .is_err());
    ok(m.translate(sid(DEV_HI), None, 0x9000, Access::READ));
}

#[test]
fn exact_descriptor_counts() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    // (maps, unmap, expected (AM, IH) of each page-selective invalidation; None: DSI)
    type Case = (
        &'static [(u64, u64)],
        (u64, u64),
        Option<&'static [(u64, bool)]>,
    );
    let cases: [Case; 5] = [
        // Aligned 16-page run.
        (
            &[(0x10_0000, 16 * K4)],
            (0x10_0000, 16 * K4),
            Some(&[(4, true)]),
        ),
        // Unaligned 3-page run: one AM-2 block.
        (
            &[(0x20_1000, 3 * K4)],
            (0x20_1000, 3 * K4),
            Some(&[(2, true)]),
        ),
        // One 2 MiB leaf.
        (&[(0x4000_0000, M2)], (0x4000_0000, M2), Some(&[(9, true)])),
        // 2 MiB of 4 KiB pages: the table is freed, IH clear.
        (
            &[(0x8000_0000, K4), (0x8000_1000, M2 - K4)],
            (0x8000_0000, M2),
            Some(&[(9, false)]),
        ),
        // 64 GiB of 1 GiB pages: past the limit, domain-selective.
        (&[(64 * G1, 64 * G1)], (64 * G1, 64 * G1), None),
    ];
    let (mut flushes, waits_before) = (0, u.stats().waits);
    for (maps, (iova, len), expect) in cases {
        for &(i, l) in maps {
            u.map(d, Iova::new(i), PhysAddr::new(i), l, RW).unwrap();
        }
        ok(m.translate(sid(DEV), None, iova, Access::READ));
        m.reset_stats();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(iova), len, &mut g).unwrap();
        let (live, freed) = (a.live_pages().len(), g.freed_pages());
        u.flush(d, &mut g).unwrap();
        assert_eq!(a.live_pages().len(), live - freed);
        flushes += 1;
        let log = m.descriptor_log();
        let (wait, invs) = log.split_last().unwrap();
        assert_eq!(wait[0] & 0xf, 5, "one wait, last");
        match expect {
            Some(blocks) => {
                let got: Vec<_> = invs
                    .iter()
                    .map(|d| (d[1] & 0x3f, d[1] & 0x40 != 0))
                    .collect();
                assert_eq!(got, blocks, "case at {iova:#x}");
                assert!(invs.iter().all(|d| d[0] & 0x3f == 0x32), "page-selective");
            }
            None => assert_eq!(invs.iter().map(|d| d[0] & 0x3f).collect::<Vec<_>>(), [0x22]),
        }
        assert!(m.translate(sid(DEV), None, iova, Access::READ).is_err());
    }
    assert_eq!(u.stats().waits - waits_before, flushes);
}

/// One flush of several gathered ranges: the fewest page-selective descriptors whose blocks stay
/// inside the union of the ranges' own blocks (`vtd::flush`): a page then a range whose 64 KiB
/// block holds it, four 16 KiB blocks tiling 64 KiB, two buddy pages: one descriptor each; two
/// pages 32 KiB apart: two. Counted at the model, one wait each.
#[test]
fn several_ranges_flush_with_the_fewest_descriptors() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    let flush = |ranges: &[(u64, u64)]| {
        let mut g = Gather::new();
        for &(start, end) in ranges {
            u.map(d, Iova::new(start), PhysAddr::new(start), end - start, RW)
                .unwrap();
        }
        for &(start, end) in ranges {
            u.unmap(d, Iova::new(start), end - start, &mut g).unwrap();
        }
        m.reset_stats();
        u.flush(d, &mut g).unwrap();
        let types = types(&m);
        let invs = types.iter().filter(|&&t| t == 2).count();
        assert_eq!(types.iter().filter(|&&t| t == 5).count(), 1, "one wait");
        invs
    };
    assert_eq!(flush(&[(0x5000, 0x6000), (0x7000, 0x1_0000)]), 1);
    assert_eq!(flush(&[(0x7000, 0x1_0000), (0x5000, 0x6000)]), 1);
    let tiles = [
        (0x1000, 0x3000),
        (0x5000, 0x7000),
        (0x9000, 0xB000),
        (0xD000, 0xF000),
    ];
    assert_eq!(flush(&tiles), 1);
    assert_eq!(flush(&[(0x4000, 0x5000), (0x5000, 0x6000)]), 1);
    assert_eq!(flush(&[(0x1000, 0x2000), (0x9000, 0xA000)]), 2);
}

#[test]
fn thousands_of_flushes_wrap_the_queue() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    const N: u64 = 3000;
    for i in 0..N {
        let iova = (i % 512) * K4;
        u.map(d, Iova::new(iova), PhysAddr::new(0x10_0000 + iova), K4, RW)
            .unwrap();
        ok(m.translate(sid(DEV), None, iova, Access::READ));
        unmap_and_flush(&u, d, iova, K4);
        assert!(m.translate(sid(DEV), None, iova, Access::READ).is_err());
    }
    let s = m.stats();
    // 2 descriptors per flush in a 256-slot queue: it wrapped more than 20 times.
    assert_eq!((s.iotlb_page, s.wait), (N, N));
    let _ = u.drain_faults(|_, _| {});
}

#[test]
fn injected_errors_return_errors_and_the_unit_keeps_working() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_dt(true));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    let map = |iova: u64| {
        u.map(d, Iova::new(iova), PhysAddr::new(0x7000_0000), K4, RW)
            .unwrap();
        ok(m.translate(sid(DEV), None, iova, Access::READ));
    };

    // IQE on the page-selective invalidation: an error, and the gather keeps its range.
    map(0x1000);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), K4, &mut g).unwrap();
    m.inject(Injection::QueueError);
    assert!(
        matches!(u.flush(d, &mut g), Err(Error::CommandError { what, .. }) if what.contains("IQE"))
    );
    assert!(!g.is_empty());
    u.flush(d, &mut g).unwrap();
    assert!(m.translate(sid(DEV), None, 0x1000, Access::READ).is_err());

    // A wait that never completes: Timeout, the freed table stays in the gather.
    u.map(d, Iova::new(0x4000_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    u.map(d, Iova::new(0x4000_1000), PhysAddr::new(K4), M2 - K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x4000_0000), M2, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 1);
    let live = a.live_pages().len();
    m.inject(Injection::StallWaits);
    assert!(matches!(u.flush(d, &mut g), Err(Error::Timeout { .. })));
    assert_eq!((g.freed_pages(), a.live_pages().len()), (1, live));
    m.clear_injections();
    u.flush(d, &mut g).unwrap();
    assert_eq!(a.live_pages().len(), live - 1);

    // Device-TLB time-out (ATS device): ITE, then recovery.
    u.attach_with(DeviceId(0x30), None, d, ats()).unwrap();
    map(0x3000);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    m.inject(Injection::DeviceTlbTimeout);
    assert!(
        matches!(u.flush(d, &mut g), Err(Error::CommandError { what, .. }) if what.contains("ITE"))
    );
    m.reset_stats();
    u.flush(d, &mut g).unwrap();
    assert_eq!(
        (m.stats().iotlb_page, m.stats().device_tlb, m.stats().wait),
        (1, 1, 1)
    );
    assert!(m.translate(sid(DEV), None, 0x3000, Access::READ).is_err());

    // Invalidation completion error (ICE): reported once, the retry completes.
    map(0x4000);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x4000), K4, &mut g).unwrap();
    m.inject(Injection::CompletionError);
    assert!(
        matches!(u.flush(d, &mut g), Err(Error::CommandError { what, .. }) if what.contains("ICE"))
    );
    u.flush(d, &mut g).unwrap();
    assert!(m.translate(sid(DEV), None, 0x4000, Access::READ).is_err());

    // And ordinary work goes on.
    map(0x5000);
    unmap_and_flush(&u, d, 0x5000, K4);
    assert!(m.translate(sid(DEV), None, 0x5000, Access::READ).is_err());
    assert_eq!(a.bad_frees(), []);
}

#[test]
fn enable_times_out_when_gcmd_is_ignored() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = VtdUnit::new(
        &m,
        &a,
        VtdConfig {
            poll_budget: 100,
            ..VtdConfig::legacy()
        },
    )
    .unwrap();
    m.inject(Injection::IgnoreGcmd);
    assert!(matches!(
        u.enable(),
        Err(vtd::Error::Timeout { polls: 100, .. })
    ));
    m.clear_injections();
    u.enable().unwrap();
    assert!(u.is_enabled());
}

#[test]
fn caching_mode_invalidates_cached_not_present_entries() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_caching_mode(true));
    let u = unit(&m, &a, Mode::Legacy);
    // A request before the device is attached caches a not-present context entry.
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    // And one before the page is mapped caches a not-present translation.
    assert!(m.translate(sid(DEV), None, 0x6000, Access::READ).is_err());
    u.map(d, Iova::new(0x6000), PhysAddr::new(0x6000_0000), K4, RW)
        .unwrap();
    let t = ok(m.translate(sid(DEV), None, 0x6000, Access::READ));
    assert_eq!(
        (t.pa, t.did),
        (0x6000_0000, 1),
        "DID 0 is reserved under CM"
    );
}

#[test]
fn register_based_invalidation_without_qi() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_qi(false));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x2000), PhysAddr::new(0x8000), K4, RW)
        .unwrap();
    ok(m.translate(sid(DEV), None, 0x2000, Access::READ));
    unmap_and_flush(&u, d, 0x2000, K4);
    assert!(m.translate(sid(DEV), None, 0x2000, Access::READ).is_err());
    assert_eq!(m.stats().register_iotlb_invalidations, 1);
    assert_eq!(m.stats().wait, 0);
}

#[test]
fn concurrent_maps_and_translations() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (u, m) = (&u, &m);
            s.spawn(move || {
                for i in 0..32u64 {
                    let iova = t * G1 + i * K4;
                    u.map(
                        d,
                        Iova::new(iova),
                        PhysAddr::new(0x1000_0000 + iova),
                        K4,
                        RW,
                    )
                    .unwrap();
                    let r = ok(m.translate(sid(DEV), None, iova, Access::READ));
                    assert_eq!(r.pa, 0x1000_0000 + iova);
                }
            });
        }
    });
}

#[test]
fn non_coherent_walker_sees_every_table_write_cleaned() {
    for (cfg, mode) in [
        (VtdModelConfig::qemu_default(), Mode::Legacy),
        (
            VtdModelConfig::scalable().with_coherent(false),
            Mode::Scalable,
        ),
    ] {
        let a = arena();
        let m = VtdModel::new(&a, cfg);
        let u = unit(&m, &a, mode);
        assert!(!u.capabilities().coherent_walk);
        let before = a.start_sync_recording();
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        if mode == Mode::Scalable {
            u.attach(DEV, Pasid::new(100), d).unwrap();
        }
        u.map(
            d,
            Iova::new(0x10_0000),
            PhysAddr::new(0x1234_5000),
            8 * K4,
            RW,
        )
        .unwrap();
        u.map(d, Iova::new(G1), PhysAddr::new(0), M2, RW).unwrap();
        assert_eq!(a.unsynced_words(&before), Vec::<u64>::new(), "{mode:?}");
        a.stop_sync_recording();
        ok(m.translate(sid(DEV), None, 0x10_3000, Access::READ));
    }
}

#[test]
fn dirty_tracking_domain_in_scalable_mode() {
    let a = arena();
    // Second-stage A/D updates need snooped page walks: ECAP.SMPWCS (bit 48), so PWSNP.
    let mut cfg = VtdModelConfig::scalable();
    cfg.ecap |= 1 << 48;
    let m = VtdModel::new(&a, cfg);
    let u = unit(&m, &a, Mode::Scalable);
    assert!(u.capabilities().dirty_tracking);
    let d = u
        .domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        })
        .unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x4000), PhysAddr::new(0x7000), K4, RW)
        .unwrap();
    // A read sets only A: nothing dirty, nothing to flush.
    ok(m.translate(sid(DEV), None, 0x4000, Access::READ));
    let read_clear = |g: &mut Gather| {
        let mut seen = Vec::new();
        u.read_and_clear_dirty(
            d,
            Iova::new(0),
            0x10_0000,
            &mut |i, _| seen.push(i.get()),
            g,
        )
        .unwrap();
        seen
    };
    let mut g = Gather::new();
    assert!(read_clear(&mut g).is_empty());
    assert!(g.is_empty());
    // The write sets D (SSADE in the PASID entry): reported once, cleared, invalidated.
    ok(m.translate(sid(DEV), None, 0x4000, Access::WRITE));
    assert_eq!(read_clear(&mut g), [0x4000]);
    assert!(read_clear(&mut Gather::new()).is_empty(), "cleared");
    let before = m.descriptor_log().len();
    u.flush(d, &mut g).unwrap();
    assert!(
        m.descriptor_log().len() > before,
        "the clear is invalidated"
    );
    // Only because the IOTLB entry went, the next write is seen.
    ok(m.translate(sid(DEV), None, 0x4000, Access::WRITE));
    assert_eq!(read_clear(&mut g), [0x4000]);
    u.flush(d, &mut g).unwrap();
    // Legacy mode has no dirty tracking.
    let m2 = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u2 = unit(&m2, &a, Mode::Legacy);
    assert_eq!(
        u2.domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        }),
        Err(Error::Unsupported(Missing::DirtyTracking))
    );
}

#[test]
fn disable_and_release_return_every_page() {
    for (cfg, mode) in [
        (VtdModelConfig::qemu_default(), Mode::Legacy),
        (VtdModelConfig::scalable(), Mode::Scalable),
    ] {
        let a = arena();
        let m = VtdModel::new(&a, cfg);
        let u = unit(&m, &a, mode);
        let d1 = u.domain_alloc(&DomainConfig::default()).unwrap();
        let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d1).unwrap();
        u.attach(DEV_HI, None, d2).unwrap();
        if mode == Mode::Scalable {
            u.attach(DEV, Pasid::new(200), d2).unwrap();
        }
        u.map(d1, Iova::new(0x10_0000), PhysAddr::new(0), 64 * K4, RW)
            .unwrap();
        u.map(d2, Iova::new(G1), PhysAddr::new(0), M2 + K4, RW)
            .unwrap();
        assert_eq!(u.domain_id(d2), Some(vtd::DomainId::new(1)));
        // Still on: refused, and the unit is handed back intact.
        let Err((u, e)) = u.release() else {
            panic!("released while enabled")
        };
        assert!(matches!(e, vtd::Error::UnexpectedState { .. }));
        ok(m.translate(sid(DEV), None, 0x10_0000, Access::READ));
        u.disable().unwrap();
        assert!(!u.is_enabled());
        let released = u.release().map_err(|(_, e)| e).unwrap();
        assert_eq!(released.leaked, None);
        assert_eq!(a.live_pages(), [], "{mode:?}");
        assert_eq!(a.bad_frees(), []);
    }
}

#[test]
fn caching_mode_in_scalable_mode() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable().with_caching_mode(true));
    let u = unit(&m, &a, Mode::Scalable);
    let ss = u.domain_alloc(&DomainConfig::default()).unwrap();
    let fs = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    let p3 = Pasid::new(3).unwrap();
    // Requests before anything is set up cache not-present context and PASID entries.
    assert!(m.translate(sid(DEV), None, 0x6000, Access::READ).is_err());
    assert!(m
        .translate(sid(DEV), Some(3), 0x6000, Access::READ)
        .is_err());
    u.attach(DEV, None, ss).unwrap();
    u.attach(DEV, Some(p3), fs).unwrap();
    // And requests before the pages are mapped cache not-present translations.
    assert!(m.translate(sid(DEV), None, 0x6000, Access::READ).is_err());
    assert!(m
        .translate(sid(DEV), Some(3), 0x6000, Access::READ)
        .is_err());
    u.map(ss, Iova::new(0x6000), PhysAddr::new(0x6000_0000), K4, RW)
        .unwrap();
    u.map(fs, Iova::new(0x6000), PhysAddr::new(0x7000_0000), K4, RW)
        .unwrap();
    assert_eq!(
        ok(m.translate(sid(DEV), None, 0x6000, Access::READ)).pa,
        0x6000_0000
    );
    assert_eq!(
        ok(m.translate(sid(DEV), Some(3), 0x6000, Access::READ)).pa,
        0x7000_0000
    );
}

#[test]
fn concurrent_map_unmap_flush_and_attach() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let u = unit(&m, &a, Mode::Scalable);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let other = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let (u, m) = (&u, &m);
            s.spawn(move || {
                for i in 0..100u64 {
                    let iova = t * G1 + (i % 16) * K4;
                    let pa = 0x1000_0000 + t * M2 + (i % 16) * K4;
                    u.map(d, Iova::new(iova), PhysAddr::new(pa), K4, RW)
                        .unwrap();
                    assert_eq!(ok(m.translate(sid(DEV), None, iova, Access::READ)).pa, pa);
                    unmap_and_flush(u, d, iova, K4);
                    assert!(m.translate(sid(DEV), None, iova, Access::READ).is_err());
                }
            });
        }
        // Meanwhile another device's PASIDs come and go.
        let u = &u;
        s.spawn(move || {
            for i in 1..100u32 {
                let p = Pasid::new(i);
                u.attach(DEV_HI, p, other).unwrap();
                u.detach(DEV_HI, p).unwrap();
            }
        });
    });
    assert_eq!(m.stats().iotlb_page, 300);
}

#[test]
fn freed_tables_leave_no_stale_paging_structure_entries() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    // 4 KiB pages under one leaf table; a walk caches the entries above it.
    u.map(d, Iova::new(G1), PhysAddr::new(0x1000_0000), K4, RW)
        .unwrap();
    u.map(
        d,
        Iova::new(G1 + K4),
        PhysAddr::new(0x1000_1000),
        M2 - K4,
        RW,
    )
    .unwrap();
    ok(m.translate(sid(DEV), None, G1 + 0x5000, Access::READ));
    // The whole 2 MiB goes: the leaf table is freed (IH must be clear), then a 2 MiB page
    // takes its place. A stale directory entry would still lead to the freed table.
    unmap_and_flush(&u, d, G1, M2);
    u.map(d, Iova::new(G1), PhysAddr::new(0x4000_0000), M2, RW)
        .unwrap();
    let t = ok(m.translate(sid(DEV), None, G1 + 0x5000, Access::READ));
    assert_eq!((t.pa, t.page_size_log2), (0x4000_5000, 21));
}

/// Issue 15, item 8: an SR-IOV virtual function's device-TLB invalidations name its physical
/// function in `PFSID` when the unit has `ECAP.DIT`; without it `PFSID` is reserved (0).
/// Before the fix every invalidation carried `PFSID = SID`: under DIT the VF's ATC stayed stale
/// (the model counts the misrouted invalidation), without DIT the reserved bits made the queue
/// report IQE.
#[test]
fn device_tlb_invalidations_name_the_physical_function() {
    const PF: DeviceId = DeviceId(0x0180);
    const VF: DeviceId = DeviceId(0x0182);
    let check = |mcfg: VtdModelConfig, opts: AttachOptions| {
        let a = arena();
        let m = VtdModel::new(&a, mcfg);
        let u = unit(&m, &a, Mode::Legacy);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach_with(VF, None, d, opts).unwrap();
        u.map(d, Iova::new(0x3000), PhysAddr::new(0), K4, RW)
            .unwrap();
        ok(m.ats_translate(sid(VF), None, 0x3000, Access::READ));
        assert!(m.atc_holds(sid(VF), None, 0x3000));
        m.reset_stats();
        unmap_and_flush(&u, d, 0x3000, K4);
        assert_eq!((m.stats().device_tlb, m.stats().pfsid_mismatches), (1, 0));
        assert!(!m.atc_holds(sid(VF), None, 0x3000), "the VF's ATC is clean");
    };
    let ats = AttachOptions {
        ats: true,
        physical_function: Some(PF),
        ..AttachOptions::default()
    };
    let qemu = VtdModelConfig::qemu_default().with_dt(true);
    check(
        qemu.with_dit(true).with_virtual_function(sid(VF), sid(PF)),
        ats,
    );
    // Without DIT the PF is not named (PFSID reserved), whatever the embedder says.
    check(qemu, ats);
    check(
        qemu,
        AttachOptions {
            physical_function: None,
            ..ats
        },
    );
    // A PF under DIT names itself.
    let pf_only = VtdModelConfig::qemu_default().with_dt(true).with_dit(true);
    let a = arena();
    let m = VtdModel::new(&a, pf_only);
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let pf_ats = AttachOptions {
        physical_function: None,
        ..ats
    };
    u.attach_with(PF, None, d, pf_ats).unwrap();
    u.map(d, Iova::new(0x3000), PhysAddr::new(0), K4, RW)
        .unwrap();
    ok(m.ats_translate(sid(PF), None, 0x3000, Access::READ));
    unmap_and_flush(&u, d, 0x3000, K4);
    assert_eq!(m.stats().pfsid_mismatches, 0);
    assert!(!m.atc_holds(sid(PF), None, 0x3000));
    // A physical function that is no requester ID is refused before anything is written.
    let bad = AttachOptions {
        physical_function: Some(DeviceId(0x1_0000)),
        ..ats
    };
    assert_eq!(
        u.attach_with(VF, None, d, bad),
        Err(Error::InvalidDevice(DeviceId(0x1_0000)))
    );
}

/// The host address width is the platform's (ACPI DMAR), not `CAP.MGAW`: on a platform with a
/// 40-bit HAW behind a 48-bit-MGAW unit, an output address at or above 2^40 has reserved bits
/// set and the unit faults on it (or, on hardware that ignores them, reaches another page).
/// Undeclared, the unit assumes 36 bits; declared, it takes the DMAR's value; either way a
/// physical address above it is refused at map, naming the address.
#[test]
fn host_address_width_bounds_physical_addresses() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_haw(40));
    for (cfg, haw, source) in [
        (VtdConfig::legacy(), 36, vtd::platform::UNDECLARED_HAW),
        (
            VtdConfig::legacy().with_dmar_host_address_width(39),
            40,
            vtd::platform::DMAR_HAW,
        ),
    ] {
        let u = VtdUnit::new(&m, &a, cfg).unwrap();
        u.enable().unwrap();
        let caps = u.capabilities();
        assert_eq!((caps.oas, caps.sources.oas), (haw, source));
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        let top = (1u64 << haw) - K4;
        u.map(d, Iova::new(0x1000), PhysAddr::new(top), K4, RW)
            .unwrap();
        assert_eq!(
            ok(m.translate(sid(DEV), None, 0x1008, Access::READ)).pa,
            top + 8
        );
        assert_eq!(
            u.map(d, Iova::new(0x2000), PhysAddr::new(top + K4), K4, RW),
            Err(Error::PageTable(
                iommu_engine::pgtable::Error::PaOutOfRange {
                    last: PhysAddr::new(top + 2 * K4 - 1),
                    oas: haw
                }
            ))
        );
        // Nothing was written for the refused range.
        assert!(m.translate(sid(DEV), None, 0x2000, Access::READ).is_err());
        u.detach(DEV, None).unwrap();
        unmap_and_flush(&u, d, 0x1000, K4);
        u.domain_free(d).unwrap();
        u.disable().unwrap();
    }
    // A declaration the unit contradicts (HAW above MGAW, §11.4.2) or the formats cannot
    // express is refused with the value.
    for bits in [31, 49, 53] {
        let cfg = VtdConfig::legacy().with_host_address_width(bits);
        assert!(
            matches!(
                VtdUnit::new(&m, &a, cfg).err(),
                Some(vtd::Error::InvalidArgument { value, .. }) if value == u64::from(bits)
            ),
            "HAW {bits}"
        );
    }
}

/// `2^36`: the host address width the test below declares (DMAR field 35).
const HAW36: u64 = 1 << 36;

/// The review's probe (issue 15): every structure the unit reads -- root table, context
/// table, PASID directory and table, invalidation queue and its status page, page-table pages
/// -- must lie below `2^HAW`: the unit ignores (or faults on) the address bits above it, so a
/// page there would be reached through another address. A page the allocator hands out above
/// is refused with the address and the width, given back, and nothing is written.
#[test]
fn structures_above_the_host_address_width_are_refused() {
    let legacy = VtdConfig {
        poll_budget: 10_000,
        ..VtdConfig::legacy()
    }
    .with_dmar_host_address_width(35);
    // Every page at 2^36: the root table cannot be placed.
    let above = Arena::new(ArenaConfig {
        base_pa: HAW36,
        capacity: 8 << 20,
    })
    .unwrap();
    let m = VtdModel::new(&above, VtdModelConfig::qemu_default());
    let r = VtdUnit::new(&m, &above, legacy);
    assert_eq!(
        r.err(),
        Some(vtd::Error::TableOutOfRange {
            table: "root table",
            pa: PhysAddr::new(HAW36),
            haw: 36
        })
    );
    assert_eq!(above.stats().live_pages, 0);

    let a = pages::arena_across(36);
    let mut held = Held::default();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = VtdUnit::new(&m, &a, legacy).unwrap();
    // The queue's ring, then (the ring below) its status page.
    for (below, table) in [(0, "invalidation queue"), (1, "invalidation status page")] {
        let (live, pa) = held.next_high(&a, 36, below);
        let r = u.enable();
        assert_eq!(r, Err(vtd::Error::TableOutOfRange { table, pa, haw: 36 }));
        assert_eq!(a.stats().live_pages, live, "pages kept");
        held.went_back(&a, pa);
    }
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let refused = |table, pa| {
        Err(Error::TableOutOfRange {
            table,
            pa,
            width: 36,
        })
    };
    let (live, pa) = held.next_high(&a, 36, 2);
    // The queue and status page below, the context table of bus 0 above.
    u.enable().unwrap();
    assert_eq!(u.attach(DEV, None, d), refused("context table", pa));
    assert_eq!(a.stats().live_pages, live + 2, "pages kept");
    held.went_back(&a, pa);
    assert!(m.translate(sid(DEV), None, 0x1000, Access::READ).is_err());
    let (_, pa) = held.next_high(&a, 36, 1);
    u.attach(DEV, None, d).unwrap();
    // A page-table page under the domain's root: nothing is linked.
    let live = a.stats().live_pages;
    let r = u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW);
    assert_eq!(
        r,
        Err(Error::PageTable(
            iommu_engine::pgtable::Error::TableOutOfRange { pa, oas: 36 }
        ))
    );
    assert_eq!(a.stats().live_pages, live, "pages kept");
    held.went_back(&a, pa);
    assert_eq!(u.query(d, Iova::new(0x1000)), None);
    assert!(m.translate(sid(DEV), None, 0x1000, Access::READ).is_err());
    let _ = held.next_high(&a, 36, 3);
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    ok(m.translate(sid(DEV), None, 0x1008, Access::READ));
    assert!(a.bad_frees().is_empty());
    // Everything the unit allocated goes back with it: nothing it refused was kept.
    u.disable().unwrap();
    let released = u.release().map_err(|(_, e)| e).unwrap();
    assert_eq!(released.leaked, None);
    assert_eq!(a.stats().live_pages, held.len());

    // Scalable mode: the PASID directory above (the context table below), then the PASID table
    // of RID_PASID above (the directory below). What was placed below stays linked (a context
    // table lives as long as the unit; a present context entry over an empty directory blocks
    // as none would); the page above went back.
    let a = pages::arena_across(36);
    let mut held = Held::default();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let scalable = VtdConfig {
        mode: Mode::Scalable,
        ..legacy
    };
    let u = VtdUnit::new(&m, &a, scalable).unwrap();
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    for table in ["PASID directory", "PASID table"] {
        let (live, pa) = held.next_high(&a, 36, 1);
        assert_eq!(u.attach(DEV, None, d), refused(table, pa));
        assert_eq!(a.stats().live_pages, live + 1, "pages kept");
        assert!(m.translate(sid(DEV), None, 0x1000, Access::READ).is_err());
        held.went_back(&a, pa);
    }
    let _ = held.next_high(&a, 36, 1);
    u.attach(DEV, None, d).unwrap();
    assert!(a.bad_frees().is_empty());
    // Everything the unit allocated goes back with it: nothing it refused was kept.
    u.disable().unwrap();
    let released = u.release().map_err(|(_, e)| e).unwrap();
    assert_eq!(released.leaked, None);
    assert_eq!(a.stats().live_pages, held.len());
}

/// `CAP.MGAW` bounds first-stage domains too: a 39-bit unit (QEMU `aw-bits=39`) blocks every
/// request at or above 2^39, and checks first-stage inputs for canonicality at 39 bits, so a
/// first-stage domain offers 38 bits, not the 47 of 4-level paging. An undeclared HAW on it
/// is 36 bits, the narrower of MGAW and the undeclared default.
#[test]
fn first_stage_width_is_bounded_by_mgaw() {
    let a = arena();
    let mut mcfg = VtdModelConfig::scalable().with_haw(39);
    mcfg.cap = mcfg.cap & !(0x3f << 16) | 38 << 16;
    let m = VtdModel::new(&a, mcfg);
    let u = unit(&m, &a, Mode::Scalable);
    assert_eq!(u.capabilities().oas, 39);
    let fs = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    assert_eq!(u.domain_geometry(fs).map(|g| g.0), Ok(38));
    u.map(fs, Iova::new((1 << 38) - K4), PhysAddr::new(0), K4, RW)
        .unwrap();
    assert!(matches!(
        u.map(fs, Iova::new(1 << 38), PhysAddr::new(0), K4, RW),
        Err(Error::PageTable(_))
    ));
    assert_eq!(
        u.domain_alloc(&DomainConfig {
            stage: Stage::First,
            min_ias: 39,
            ..DomainConfig::default()
        }),
        Err(Error::Unsupported(Missing::AddressWidth {
            need: 39,
            have: 38
        }))
    );
    // A first-stage-only unit reports the same width; undeclared, its HAW is 36 bits.
    let mut fs_only = mcfg;
    fs_only.ecap &= !(1 << 46);
    let m = VtdModel::new(&a, fs_only);
    let u = VtdUnit::new(&m, &a, VtdConfig::scalable()).unwrap();
    assert_eq!((u.capabilities().ias, u.capabilities().oas), (38, 36));
}

/// A supervisor (privileged) request, as a PASID TLP prefix with Privileged Mode Requested.
const SUPERVISOR_READ: Access = Access {
    privileged: true,
    ..Access::READ
};
const SUPERVISOR_WRITE: Access = Access {
    privileged: true,
    ..Access::WRITE
};

/// Issue 15, item 9: a privileged-only first-stage page (`Prot::PRIV`: U/S clear) is reachable
/// only by supervisor requests, which the unit honours only with the PASID entry's `SRE`. A
/// domain built without `DomainConfig::supervisor` refuses `PRIV` (it could never be used: its
/// PASID entries keep `SRE` clear and every supervisor request faults); one built with it sets
/// `SRE`, and `WPE`, so that supervisor writes still honour read-only pages.
#[test]
fn supervisor_requests_reach_privileged_pages_only_with_sre() {
    use iommu_engine::sim::vtd::fault::{SM_FS_USER_SUPERVISOR, SM_PASID_ENTRY_SRE_CLEAR};
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let u = unit(&m, &a, Mode::Scalable);
    assert_eq!(
        (
            u.capabilities().supervisor,
            u.capabilities().sources.supervisor
        ),
        (true, iommu_engine::iommu::Source::Register("ECAP.SRS"))
    );
    let fault = |pasid, iova, access| {
        m.translate(sid(DEV), Some(pasid), iova, access)
            .err()
            .map(|f| f.reason)
    };
    let priv_rw = RW | Prot::PRIV;

    // Without: PRIV refused with the value, and supervisor requests fault on SRE.
    let user = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    assert_eq!(
        u.map(
            user,
            Iova::new(0x2000),
            PhysAddr::new(0x3000_0000),
            K4,
            priv_rw
        ),
        Err(Error::PageTable(
            iommu_engine::pgtable::Error::UnsupportedProt { prot: priv_rw }
        ))
    );
    assert_eq!(u.query(user, Iova::new(0x2000)), None);
    u.map(user, Iova::new(0x1000), PhysAddr::new(0x3000_1000), K4, RW)
        .unwrap();
    let p1 = Pasid::new(1).unwrap();
    u.attach(DEV, Some(p1), user).unwrap();
    ok(m.translate(sid(DEV), Some(1), 0x1000, Access::WRITE));
    assert_eq!(
        fault(1, 0x1000, SUPERVISOR_READ),
        Some(SM_PASID_ENTRY_SRE_CLEAR)
    );

    // With: SRE set, the privileged page reaches supervisors only; WPE keeps read-only pages
    // read-only for them too.
    let sup = u
        .domain_alloc(&DomainConfig {
            supervisor: true,
            ..DomainConfig::default()
        })
        .unwrap();
    u.map(
        sup,
        Iova::new(0x2000),
        PhysAddr::new(0x3000_2000),
        K4,
        priv_rw,
    )
    .unwrap();
    u.map(
        sup,
        Iova::new(0x3000),
        PhysAddr::new(0x3000_3000),
        K4,
        Prot::READ,
    )
    .unwrap();
    let p2 = Pasid::new(2).unwrap();
    u.attach(DEV, Some(p2), sup).unwrap();
    assert_eq!(
        ok(m.translate(sid(DEV), Some(2), 0x2010, SUPERVISOR_WRITE)).pa,
        0x3000_2010
    );
    ok(m.translate(sid(DEV), Some(2), 0x2010, SUPERVISOR_READ));
    assert_eq!(fault(2, 0x2000, Access::READ), Some(SM_FS_USER_SUPERVISOR));
    ok(m.translate(sid(DEV), Some(2), 0x3000, SUPERVISOR_READ));
    ok(m.translate(sid(DEV), Some(2), 0x3000, Access::READ));
    assert!(fault(2, 0x3000, SUPERVISOR_WRITE).is_some());
    assert!(fault(2, 0x3000, Access::WRITE).is_some());

    // Second stage has no privilege levels; a unit without ECAP.SRS cannot set SRE.
    let want = Err(Error::Unsupported(Missing::SupervisorRequests));
    let second = DomainConfig {
        supervisor: true,
        stage: Stage::Second,
        ..DomainConfig::default()
    };
    assert_eq!(u.domain_alloc(&second), want);
    let mut no_srs = VtdModelConfig::scalable();
    no_srs.ecap &= !iommu_engine::sim::vtd::regs::ECAP_SRS;
    let m2 = VtdModel::new(&a, no_srs);
    let u2 = unit(&m2, &a, Mode::Scalable);
    assert!(!u2.capabilities().supervisor);
    let first = DomainConfig {
        supervisor: true,
        ..DomainConfig::default()
    };
    assert_eq!(u2.domain_alloc(&first), want);
    let m3 = VtdModel::new(&a, VtdModelConfig::scalable());
    let legacy = unit(&m3, &a, Mode::Legacy);
    assert_eq!(legacy.domain_alloc(&first), want);
}

/// Scalable mode: the context entry's `DTE` is the device's, set by its first attachment, so
/// every PASID of a device whose `DTE` is set may be in its ATC, whatever that PASID's attach
/// said. The flush of a PASID attached without ATS on such a device must invalidate the
/// device TLB for that PASID too (issue 20's review asked the AMD-Vi question of VT-d).
#[test]
fn every_pasid_of_a_device_with_dte_gets_device_tlb_invalidations() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable().with_dt(true));
    let u = unit(&m, &a, Mode::Scalable);
    let fs = DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    };
    let d5 = u.domain_alloc(&fs).unwrap();
    let d6 = u.domain_alloc(&fs).unwrap();
    let (p5, p6) = (Pasid::new(5).unwrap(), Pasid::new(6).unwrap());
    u.attach_with(DEV, Some(p5), d5, ats()).unwrap();
    u.attach_with(DEV, Some(p6), d6, AttachOptions::default())
        .unwrap();
    for d in [d5, d6] {
        u.map(d, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
    }
    for p in [5, 6] {
        ok(m.ats_translate(sid(DEV), Some(p), 0x3000, Access::READ));
        assert!(m.atc_holds(sid(DEV), Some(p), 0x3000));
    }
    unmap_and_flush(&u, d6, 0x3000, K4);
    assert!(
        !m.atc_holds(sid(DEV), Some(6), 0x3000),
        "PASID 6 (attached without ATS) left in the ATC of a device whose DTE is set"
    );
    assert!(m.atc_holds(sid(DEV), Some(5), 0x3000), "PASID 5 untouched");
    unmap_and_flush(&u, d5, 0x3000, K4);
    assert!(!m.atc_holds(sid(DEV), Some(5), 0x3000));
    // A detach of the PASID empties its entries too.
    u.map(d6, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    ok(m.ats_translate(sid(DEV), Some(6), 0x3000, Access::READ));
    u.detach(DEV, Some(p6)).unwrap();
    assert!(!m.atc_holds(sid(DEV), Some(6), 0x3000));
}

/// The review of the VT-d driver, item 1: a device-TLB invalidation asked for while the unit is
/// disabled is dropped (nothing walks the tables), but the device's ATC still holds what it
/// translated before: `enable` must invalidate the whole device TLB of every ATS attachment, or
/// a page unmapped, flushed (`Ok`) and freed while the unit was off stays reachable by
/// translated requests (legacy `TT = 01b`, scalable `DTE`) once it is on again.
#[test]
fn enable_invalidates_the_device_tlbs_of_an_unmap_while_disabled() {
    const X: u64 = 0x3000;
    let cases = [
        (Mode::Legacy, None),
        (Mode::Scalable, None),
        (Mode::Scalable, Some(5)),
    ];
    for (mode, p) in cases {
        let a = arena();
        let m = VtdModel::new(&a, model_config(mode).with_dt(true));
        let u = unit(&m, &a, mode);
        let d = ats_translated(&u, &m, X, &[p]);
        u.disable().unwrap();
        unmap_and_flush(&u, d, X, K4);
        m.reset_stats();
        u.enable().unwrap();
        assert!(
            !m.atc_holds(sid(DEV), p, X),
            "{mode:?} PASID {p:?}: the ATC keeps a page unmapped and flushed while disabled"
        );
        // Scalable: the PASID-based invalidation with G rides along (every PASID).
        let s = m.stats();
        let want = if mode == Mode::Legacy { (1, 0) } else { (1, 1) };
        assert_eq!((s.device_tlb, s.pasid_device_tlb), want, "{mode:?}");
        assert_eq!(s.wait, 1, "{mode:?}");
    }
}

/// Item 1, the detach variant: a scalable-mode detach while disabled clears the PASID entry,
/// but the device's context entry keeps `DTE`, so translated requests still pass: its ATC must
/// be emptied by `enable` though no attachment of it is recorded any more.
#[test]
fn enable_invalidates_the_device_tlb_of_a_device_detached_while_disabled() {
    const X: u64 = 0x3000;
    for mode in [Mode::Legacy, Mode::Scalable] {
        let a = arena();
        let m = VtdModel::new(&a, model_config(mode).with_dt(true));
        let u = unit(&m, &a, mode);
        ats_translated(&u, &m, X, &[None]);
        u.disable().unwrap();
        u.detach(DEV, None).unwrap();
        u.enable().unwrap();
        assert!(
            !m.atc_holds(sid(DEV), None, X),
            "{mode:?}: the ATC of a device detached while disabled survives enable"
        );
        // Owed once: a second enable has nothing left to invalidate.
        u.disable().unwrap();
        m.reset_stats();
        u.enable().unwrap();
        assert_eq!(m.stats().device_tlb, 0, "{mode:?}");
    }
}

/// Item 2: a device's first ATS attachment is published with no device-TLB invalidation, so
/// whatever a previous owner (firmware, a kexec'd kernel) left in its ATC is accepted. The
/// attach invalidates the whole device TLB once the entry is published (counted: one
/// device-TLB descriptor with `S` and the all-addresses encoding, for that SID), and a
/// translation the previous owner's tables gave is gone.
#[test]
fn a_first_ats_attach_invalidates_the_whole_device_tlb() {
    const X: u64 = 0x3000;
    for (mode, p) in [
        (Mode::Legacy, None),
        (Mode::Scalable, None),
        (Mode::Scalable, Some(5u32)),
    ] {
        let a = arena();
        let m = VtdModel::new(&a, model_config(mode).with_dt(true));
        let pasid = p.map(|p| Pasid::new(p).unwrap());
        // The previous owner: ATS on, X translated into the device's ATC, then gone without
        // a word (dropping a unit leaks its pages, which the hardware still walks).
        ats_translated(&unit(&m, &a, mode), &m, X, &[p]);
        let u = unit(&m, &a, mode);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        m.reset_stats();
        let before = m.descriptor_log().len();
        u.attach_with(DEV, pasid, d, ats()).unwrap();
        let log = m.descriptor_log();
        let devtlb: Vec<_> = log[before..]
            .iter()
            .filter(|d| matches!(d[0] & 0xf, 3 | 8))
            .collect();
        // Legacy: one Device-TLB descriptor; scalable (PASIDs): that one, then a PASID-based
        // one with G (every PASID) naming the attachment's PASID (0 for RID_PASID).
        let want = if mode == Mode::Legacy { 1 } else { 2 };
        assert_eq!(devtlb.len(), want, "{mode:?} PASID {p:?}: {devtlb:x?}");
        let desc = devtlb[0];
        assert_eq!(desc[0] & 0xf, 3, "{mode:?}: {desc:x?}");
        assert_eq!(
            (desc[1] & 1, (desc[0] >> 32) as u16),
            (1, sid(DEV)),
            "{mode:?}: {desc:x?}"
        );
        if let Some(desc) = devtlb.get(1) {
            let (s, g, sid_of, pasid_of) = (
                desc[1] >> 11 & 1,
                desc[1] & 1,
                (desc[0] >> 16) as u16,
                (desc[0] >> 32 & 0xf_ffff) as u32,
            );
            assert_eq!(
                (desc[0] & 0xf, s, g, sid_of, pasid_of),
                (8, 1, 1, sid(DEV), p.unwrap_or(0)),
                "{mode:?}: {desc:x?}"
            );
        }
        assert!(
            !m.atc_holds(sid(DEV), p, X),
            "{mode:?} PASID {p:?}: the previous owner's translation survives the first ATS attach"
        );
        // Moving the device to another domain does not invalidate it twice (tear-down does).
        let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
        m.reset_stats();
        u.attach_with(DEV, pasid, d2, ats()).unwrap();
        let s = m.stats();
        assert_eq!(s.device_tlb + s.pasid_device_tlb, 1, "{mode:?}");
    }
}

/// A previous owner's ATC entries for a PASID this unit never attached (and for requests
/// without PASID) must not survive a device's first ATS attachment: a Device-TLB invalidation
/// (§6.5.2.5) covers only requests without PASID, a PASID-based one (§6.5.2.6) with `G` clear
/// only the PASID it names. Each case attaches the device once, without PASID or with PASID 5,
/// after the previous owner filled the ATC through PASID 7 and without PASID.
#[test]
fn a_first_ats_attach_invalidates_every_pasid_of_the_device_tlb() {
    const X: u64 = 0x3000;
    for p in [None, Some(5u32)] {
        let a = arena();
        let m = VtdModel::new(&a, VtdModelConfig::scalable().with_dt(true));
        ats_translated(&unit(&m, &a, Mode::Scalable), &m, X, &[None, Some(7)]);
        let u = unit(&m, &a, Mode::Scalable);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        let pasid = p.map(|p| Pasid::new(p).unwrap());
        u.attach_with(DEV, pasid, d, ats()).unwrap();
        assert!(
            !m.atc_holds(sid(DEV), Some(7), X),
            "attach of PASID {p:?}: the previous owner's PASID 7 entry survives"
        );
        assert!(
            !m.atc_holds(sid(DEV), None, X),
            "attach of PASID {p:?}: the previous owner's entry without PASID survives"
        );
    }
}

/// The same for `enable`'s make-up of the device TLBs it owes: a device attached with ATS
/// while the unit was off gets its whole device TLB invalidated by `enable`, every PASID of it
/// included, not only the PASID (or requests without PASID) it was attached through.
#[test]
fn enable_invalidates_every_pasid_of_an_owed_device_tlb() {
    const X: u64 = 0x3000;
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable().with_dt(true));
    {
        let old = unit(&m, &a, Mode::Scalable);
        ats_translated(&old, &m, X, &[Some(7)]);
        old.disable().unwrap();
    }
    let u = unit_off(&m, &a, Mode::Scalable, 10_000);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    // Off: the attach's own whole device-TLB invalidation is dropped, owed to `enable`.
    u.attach_with(DEV, None, d, ats()).unwrap();
    assert!(m.atc_holds(sid(DEV), Some(7), X));
    u.enable().unwrap();
    assert!(
        !m.atc_holds(sid(DEV), Some(7), X),
        "enable leaves the previous owner's PASID 7 entry in the ATC"
    );
}

/// A device said to have no PASIDs (`AttachOptions::no_pasid`, from `DeviceHints::pasid_bits`
/// of `Some(0)`) is never sent a PASID-based invalidation by its first ATS attach: only the
/// Device-TLB form, which empties what it can hold.
#[test]
fn a_first_ats_attach_of_a_device_without_pasids_sends_no_pasid_form() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable().with_dt(true));
    let u = unit(&m, &a, Mode::Scalable);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let opts = AttachOptions {
        ats: true,
        no_pasid: true,
        ..AttachOptions::default()
    };
    u.attach_with(DEV, None, d, opts).unwrap();
    let s = m.stats();
    assert_eq!((s.device_tlb, s.pasid_device_tlb), (1, 0));
    // Through the Iommu trait, the hints say it.
    let hints = DeviceHints {
        ats: true,
        pasid_bits: Some(0),
        ..DeviceHints::default()
    };
    m.reset_stats();
    u.attach_device(DEV_HI, None, d, &hints).unwrap();
    let s = m.stats();
    assert_eq!((s.device_tlb, s.pasid_device_tlb), (1, 0));
}

/// Firmware (or tboot) programmed the protected memory regions and left `PMEN.EPM` set: a
/// low region at 1 GiB and a high region at 8 GiB, 2 MiB each.
fn firmware_protects(m: &VtdModel<'_>) {
    m.write32(0x68, 0x4000_0000); // PLMBASE
    m.write32(0x6C, 0x4000_0000); // PLMLIMIT
    m.write64(0x70, 0x2_0000_0000); // PHMBASE
    m.write64(0x78, 0x2_0000_0000); // PHMLIMIT
    m.write32(0x64, 1 << 31); // PMEN.EPM
    assert_eq!(m.read32(0x64), 1 << 31 | 1, "PMEN: EPM and PRS");
}

/// VT-d PMEN left set by firmware is never cleared: DMA to the protected regions stays
/// blocked once translation is on, though the domain maps them (register descriptions,
/// `PMEN_REG`: software should disable the protected memory regions after setting up DMA
/// remapping). `enable` must clear `EPM` after `TE` is set -- before, DMA to the regions would
/// run untranslated -- and wait for `PRS` to clear.
#[test]
fn enable_turns_off_the_protected_memory_regions_firmware_left_on() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let a = arena();
        let m = VtdModel::new(&a, model_config(mode).with_protected_memory(true));
        firmware_protects(&m);
        // Translation off: the regions block DMA, unrecorded.
        let f = m.translate(sid(DEV), None, 0x4000_1000, Access::WRITE);
        assert!(f.is_err_and(|f| !f.recorded), "{mode:?}");
        let u = unit_keeping_stats(&m, &a, mode);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        u.map(
            d,
            Iova::new(0x20_0000),
            PhysAddr::new(0x2_0000_0000),
            K4,
            RW,
        )
        .unwrap();
        for (iova, pa) in [(0x10_0000, 0x4000_0000), (0x20_0000, 0x2_0000_0000)] {
            let r = m.translate(sid(DEV), None, iova, Access::WRITE);
            assert!(
                r.is_ok_and(|ok| ok.pa == pa),
                "{mode:?}: DMA to {pa:#x} (a protected region firmware left on) is still \
                 blocked after enable"
            );
        }
        assert_eq!(m.read32(0x64), 0, "{mode:?}: PMEN");
        assert_eq!(
            m.stats().pmr_off_before_te,
            0,
            "{mode:?}: EPM cleared before TE"
        );
    }
}

/// `PRS` that never clears (the `EPM` write ignored) fails `enable` with a timeout naming
/// `PMEN_REG`, after a bounded number of polls; translation stays on (the regions still
/// protect); a retried `enable` completes once the register answers.
#[test]
fn enable_times_out_when_pmen_does_not_answer() {
    let a = arena();
    let m = VtdModel::new(
        &a,
        VtdModelConfig::qemu_default().with_protected_memory(true),
    );
    firmware_protects(&m);
    let u = unit_off(&m, &a, Mode::Legacy, 100);
    m.inject(Injection::IgnoreWrites(0x64));
    assert_eq!(
        u.enable(),
        Err(vtd::Error::Timeout {
            what: vtd::Wait::ProtectedMemoryStatus { set: false },
            polls: 100
        }),
        "a PMEN whose PRS never clears"
    );
    assert!(u.is_enabled());
    assert_eq!(m.read32(0x64), 1 << 31 | 1);
    m.clear_injections();
    u.enable().unwrap();
    assert_eq!(m.read32(0x64), 0);
}

/// A unit whose `CAP.PLMR` and `CAP.PHMR` are clear has no protected memory regions
/// (`PMEN_REG` reads 0): `enable` never touches the register.
#[test]
fn enable_leaves_pmen_alone_without_protected_memory_regions() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let _u = unit_keeping_stats(&m, &a, Mode::Legacy);
    assert_eq!(m.register_writes(0x60), 0, "PMEN_REG written");
}

/// The review of src/vtd, item 3: QEMU resumes its invalidation queue after an IQE only on an
/// `IQT` write (its `FSTS` write handler fetches nothing; `vtd_handle_iqt_write` fetches when
/// `QIE` is on and `IQE` clear), not when `IQE` is cleared as §6.5.2.10's hardware does. A
/// recovery that neutralises the offending descriptor and clears `IQE` without writing `IQT`
/// leaves the queue stopped at `IQH`: the next `disable` waits for a drain that never comes
/// (a `Timeout`), and with it every later wait behind the stopped head. The model here resumes
/// only on `IQT`, as QEMU; the unit must recover, then disable and re-enable cleanly.
#[test]
fn a_queue_error_recovery_rings_the_doorbell_again() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let a = arena();
        let m = VtdModel::new(&a, model_config(mode).with_iqe_clear_resumes(false));
        let u = unit(&m, &a, mode);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        u.map(d, Iova::new(0x1000), PhysAddr::new(0x7000_0000), K4, RW)
            .unwrap();
        ok(m.translate(sid(DEV), None, 0x1000, Access::READ));
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0x1000), K4, &mut g).unwrap();
        m.inject(Injection::QueueError);
        assert!(
            matches!(u.flush(d, &mut g), Err(Error::CommandError { what, .. }) if what.contains("IQE")),
            "{mode:?}"
        );
        assert_eq!(
            u.disable(),
            Ok(()),
            "{mode:?}: disable after an IQE recovery (the queue must have resumed)"
        );
        u.enable().unwrap();
        u.flush(d, &mut g).unwrap();
        assert!(m.translate(sid(DEV), None, 0x1000, Access::READ).is_err());
    }
}

/// A user (nested) domain's second-stage caching outlives the detach of its last device unless
/// the tear-down invalidates its domain-ID. Nested walks cache the nest parent's second-stage
/// entries tagged with the user domain's DID alone, which a PASID-based IOTLB invalidation
/// does not drop (VT-d rev 4.1 §6.5.2.4, Table 21; the model's `cache.rs`); the parent's flush
/// reaches only the DIDs of user domains with an attachment (`push_user_children`). So: `DEV`
/// walks the guest's first stage through the parent P; `DEV` detaches; P unmaps the guest's
/// memory and frees the table that mapped it; nothing may still reach that table, and `DEV`
/// re-attached to the same user domain (after P mapped the memory again) must translate
/// through P's new table, with and without caching mode. Failed before the tear-down of a
/// nested entry used a domain-selective IOTLB invalidation: the PD entry cached for the user
/// domain's DID still pointed at the freed table.
#[test]
fn a_user_domain_detach_drops_its_nested_second_stage_caching() {
    use iommu_engine::iommu::UserStage1;
    use iommu_engine::mem::PageAllocator;
    use iommu_engine::sim::arena::PhysMem;
    const PA_A: u64 = 0x4000_0000;
    const IOVA: u64 = 0x3000;
    /// Guest-physical address of the guest's page `i`: its PML4, PDPT, PD, PT (0-3), and its
    /// data page (4), which P maps to `PA_A`.
    const fn gpa(i: u64) -> u64 {
        0x10_0000 + i * K4
    }
    // First-stage entries (VT-d §9.7): P, R/W, U/S, A for a table; D too for a leaf.
    const FS_TABLE: u64 = 0x27;
    const FS_LEAF: u64 = 0x67;
    for cm in [false, true] {
        let a = arena();
        let m = VtdModel::new(&a, VtdModelConfig::scalable().with_caching_mode(cm));
        let u = unit(&m, &a, Mode::Scalable);
        let parent = u
            .domain_alloc(&DomainConfig {
                nest_parent: true,
                ..DomainConfig::default()
            })
            .unwrap();
        let tables: Vec<u64> = (0..4).map(|_| a.alloc(12).unwrap().pa.get()).collect();
        let map_guest = || {
            for (i, &pa) in tables.iter().enumerate() {
                u.map(parent, Iova::new(gpa(i as u64)), PhysAddr::new(pa), K4, RW)
                    .unwrap();
            }
            u.map(parent, Iova::new(gpa(4)), PhysAddr::new(PA_A), K4, RW)
                .unwrap();
        };
        map_guest();
        let index = |shift: u32| ((IOVA >> shift) & 0x1ff) * 8;
        for (level, shift) in [39, 30, 21].into_iter().enumerate() {
            let next = gpa(level as u64 + 1) | FS_TABLE;
            assert!(a.write_u64(tables[level] + index(shift), next));
        }
        assert!(a.write_u64(tables[3] + index(12), gpa(4) | FS_LEAF));
        let stage1 = UserStage1::Vtd {
            flags: 0,
            pgtbl_addr: gpa(0),
            addr_width: 48,
        };
        let child = u.domain_alloc_user(parent, &stage1).unwrap();
        u.attach(DEV, None, child).unwrap();
        let t = ok(m.translate(sid(DEV), None, IOVA, Access::READ));
        assert_eq!(t.pa, PA_A, "cm {cm}: setup, the nested translation");
        m.reset_stats();
        u.detach(DEV, None).unwrap();
        // PASID-cache (type 7) and domain-selective IOTLB (type 2, G = 10b) invalidations of
        // the user domain's DID (31:16 in both), then the wait: as many as before, the
        // PASID-based IOTLB invalidation (type 6) replaced.
        let log = m.descriptor_log();
        let types: Vec<u64> = log.iter().map(|d| d[0] & 0xf).collect();
        assert_eq!(types, [7, 2, 5], "cm {cm}: the detach's descriptors");
        assert_eq!((log[1][0] >> 4) & 3, 2, "cm {cm}: domain-selective");
        assert_eq!(
            log[1][0] >> 16 & 0xffff,
            log[0][0] >> 16 & 0xffff,
            "cm {cm}: its DID"
        );
        // P unmaps the guest's memory: the 2 MiB of its last-level table, which is freed.
        let mut g = Gather::new();
        assert_eq!(u.unmap(parent, Iova::ZERO, M2, &mut g), Ok(5 * K4));
        let (live, freed) = (a.live_pages().len(), g.freed_pages());
        assert!(freed > 0, "cm {cm}: P's table freed");
        u.flush(parent, &mut g).unwrap();
        assert_eq!(a.live_pages().len(), live - freed);
        for pa in m.reachable() {
            assert!(
                a.read_u64(pa).is_some(),
                "cm {cm}: the unit can reach freed page {pa:#x} (cached for the user domain)"
            );
        }
        // The pages P freed go to another owner first (zeroed), P's new table elsewhere.
        let _other: Vec<_> = (0..freed).map(|_| a.alloc(12).unwrap()).collect();
        map_guest();
        u.attach(DEV, None, child).unwrap();
        let t = m.translate(sid(DEV), None, IOVA, Access::READ);
        assert_eq!(
            t.map(|t| t.pa),
            Ok(PA_A),
            "cm {cm}: re-attached, DEV walks P's new table"
        );
    }
}

/// A model with page requests that, as hardware, queues only those of devices whose
/// scalable-mode context entry has `PRE`.
fn pri_model() -> VtdModelConfig {
    VtdModelConfig::scalable()
        .with_prs(true)
        .with_pre_checked(true)
}

/// Device hints of a PRI device (ATS, which PRI needs).
fn pri_hints() -> DeviceHints {
    DeviceHints {
        ats: true,
        pri: true,
        ..DeviceHints::default()
    }
}

/// Word 0 of `dev`'s scalable-mode context entry (0 while its root entry half is absent).
fn context_word0(m: &VtdModel<'_>, a: &Arena, dev: DeviceId) -> u64 {
    let sid = sid(dev);
    let half = u64::from(sid & 0x80 != 0);
    let root = m.read64(vtd::regs::RTADDR_REG) & !0xfff;
    let re = a
        .read_u64(root + u64::from(sid >> 8) * 16 + half * 8)
        .unwrap();
    if re & 1 == 0 {
        return 0;
    }
    a.read_u64((re & !0xfff) + u64::from(sid & 0x7f) * 32)
        .unwrap()
}

/// A write page request of `dev`, the last of group 1.
fn page_request(dev: DeviceId) -> PageRequest {
    PageRequest {
        sid: sid(dev),
        pasid: None,
        addr: 0x5000,
        access: Access::WRITE,
        group: 1,
        last: true,
    }
}

const PRE: u64 = 1 << 4;

/// Review of the page request paths: a PRI attach set the context entry's `PRE` while the
/// unit had no page request queue of this crate's (`PQA` 0, its reset value: hardware would
/// write the device's page requests at physical address 0; rev. 4.1 §11.4 PQA: software
/// programs it before enabling page requests in any context entry). The attach is refused
/// until `enable_page_requests`, then sets `PRE` over the crate's queue.
#[test]
fn a_pri_attach_waits_for_the_page_request_queue() {
    let a = arena();
    let m = VtdModel::new(&a, pri_model());
    let u = unit(&m, &a, Mode::Scalable);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let r = u.attach_device(DEV, None, d, &pri_hints());
    let (pre, pqa) = (
        context_word0(&m, &a, DEV) & PRE != 0,
        m.read64(vtd::regs::PQA_REG),
    );
    assert!(
        !pre,
        "PRE set while PQA = {pqa:#x} (no page request queue programmed)"
    );
    assert!(
        matches!(r, Err(Error::Unsupported(Missing::Mode { .. }))),
        "a PRI attach without a page request queue: {r:?}"
    );
    u.enable_page_requests(0).unwrap();
    u.attach_device(DEV, None, d, &pri_hints()).unwrap();
    assert_ne!(context_word0(&m, &a, DEV) & PRE, 0);
    assert_ne!(m.read64(vtd::regs::PQA_REG) & !0xfff, 0);
    assert_eq!(
        m.page_request(page_request(DEV)),
        PageRequestOutcome::Queued
    );
    // Disabled, the unit still holds its queue; `release` gives it back only with
    // translation off (no context entry with `PRE` is walked any more).
    u.disable().unwrap();
    assert!(u.release().is_ok());
    assert_eq!(m.read64(vtd::regs::PQA_REG), 0);
}

/// Review of the page request paths: a previous owner (firmware, a kernel before kexec) left
/// `PQA` naming its queue, a page this kernel now uses. A device attached with PRI before
/// this crate programmed its own queue got `PRE`, and the unit wrote its page requests into
/// that page. Now the PRI attach is refused; attached without PRI, the device's request is
/// answered "Invalid Request" by the unit and written nowhere; once the crate has its queue,
/// requests go there.
#[test]
fn a_previous_owner_s_page_request_queue_is_never_written() {
    let a = arena();
    let m = VtdModel::new(&a, pri_model());
    let data = a.alloc(12).expect("page").pa.get();
    for i in 0..512u64 {
        assert!(a.write_u64(data + 8 * i, 0x5a5a_5a5a_5a5a_5a5a));
    }
    m.write64(vtd::regs::PQA_REG, data); // the previous owner's PQA (PQS 0)
    let u = unit(&m, &a, Mode::Scalable);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let r = u.attach_device(DEV, None, d, &pri_hints());
    assert!(
        matches!(r, Err(Error::Unsupported(Missing::Mode { .. }))),
        "a PRI attach over the previous owner's queue: {r:?}"
    );
    let no_pri = DeviceHints {
        pri: false,
        ..pri_hints()
    };
    u.attach_device(DEV, None, d, &no_pri).unwrap();
    assert_eq!(context_word0(&m, &a, DEV) & PRE, 0);
    assert_eq!(
        m.page_request(page_request(DEV)),
        PageRequestOutcome::Refused
    );
    let answered = m.page_responses();
    assert_eq!(
        answered
            .iter()
            .map(|g| (g.code, g.automatic))
            .collect::<Vec<_>>(),
        [(0x1, true)],
        "the unit answers a request without PRE itself, Invalid Request"
    );
    u.enable_page_requests(0).unwrap();
    assert_ne!(m.read64(vtd::regs::PQA_REG) & !0xfff, data);
    // `PRE` is set when a context entry is made present: another device.
    u.attach_device(DEV_HI, None, d, &pri_hints()).unwrap();
    assert_eq!(
        m.page_request(page_request(DEV_HI)),
        PageRequestOutcome::Queued
    );
    for i in 0..512u64 {
        assert_eq!(
            a.read_u64(data + 8 * i),
            Some(0x5a5a_5a5a_5a5a_5a5a),
            "a page request overwrote the kernel's page (word {i})"
        );
    }
}
