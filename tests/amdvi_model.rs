//! The AMD-Vi unit through the `Iommu` trait, against the behavioural model (`sim::amdvi`):
//! map, DMA through the model, unmap and flush (commands counted), faults decoded from the
//! event log, force-coherent domains, replace and detach, domain-ID reuse, failed flushes that
//! owe their invalidation, and one IOASID spanning a VT-d and an AMD-Vi unit.

use iommu_engine::amdvi::event::EventCode;
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit, ATS_UNLIKE_THE_DEVICE};
use iommu_engine::ioasid::{
    DeviceLabel, Error as IoasidError, Incompatibility, IoasidCtx, IoasidFlags, PasidAllocator,
    Registry, UnitId,
};
use iommu_engine::iommu::{
    DeviceHints, DeviceId, DomainConfig, DomainHandle, Error, Iommu, Missing, Pasid,
};
use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig, BusyRequest, Injection};
use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig};
use iommu_engine::sim::{walk, Arena, ArenaConfig};
use iommu_engine::vtd::{VtdConfig, VtdUnit};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

const DEV: DeviceId = DeviceId(0x20);
const DEV2: DeviceId = DeviceId(0x28);
const RW: Prot = Prot::READ.union(Prot::WRITE);

type Unit<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 8>;

fn config() -> AmdViConfig {
    AmdViConfig {
        poll_budget: 10_000,
        ..AmdViConfig::new()
    }
}

/// Maps `len` bytes at `iova` to `pa`, readable and writable.
fn map_rw(u: &Unit<'_>, d: DomainHandle, iova: u64, pa: u64, len: u64) {
    u.map(d, Iova::new(iova), PhysAddr::new(pa), len, RW)
        .expect("map");
}

fn setup<'a>(mem: &'a Arena, model: &'a AmdViModel<'a>) -> Unit<'a> {
    let u = AmdViUnit::new(model, mem, config()).expect("unit");
    u.enable().expect("enable");
    u
}

#[test]
fn map_dma_unmap_flush_and_fault() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert_eq!(
        u.domain_geometry(d).unwrap(),
        (48, 1 << 12 | 1 << 21 | 1 << 30)
    );
    u.attach(DEV, None, d).unwrap();
    map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x1000);
    map_rw(&u, d, 0x4000_0000, 0x1_0000_0000, 2 << 20);
    let ok = model.dma(DEV.0 as u16, 0x10_0123, true).unwrap();
    assert_eq!((ok.pa, ok.page_size_log2, ok.domain), (0x8000_0123, 12, 1));
    let ok = model.dma(DEV.0 as u16, 0x4012_3456, false).unwrap();
    assert_eq!((ok.pa, ok.page_size_log2), (0x1_0012_3456, 21));
    assert!(!ok.force_coherent);

    let before = model.stats();
    let mut g = Gather::new();
    assert_eq!(
        u.unmap(d, Iova::new(0x10_0000), 0x1000, &mut g).unwrap(),
        0x1000
    );
    u.flush(d, &mut g).unwrap();
    let after = model.stats();
    assert_eq!(
        after.invalidate_pages_page - before.invalidate_pages_page,
        1
    );
    assert_eq!(after.invalidate_pages_range, before.invalidate_pages_range);
    assert_eq!(after.completion_waits - before.completion_waits, 1);
    // The IOTLB entry went with the invalidation: the next DMA faults and is logged.
    let f = model.dma(DEV.0 as u16, 0x10_0123, true).unwrap_err();
    assert_eq!(f.event_code, 2);
    let mut events = Vec::new();
    u.drain_events(|e| events.push(e)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, EventCode::IoPageFault);
    assert_eq!((events[0].device_id, events[0].address), (0x20, 0x10_0123));
    assert_eq!(events[0].domain_or_pasid, 1);
    assert!(events[0].is_write());

    // A 2 MiB unmap is one S-encoded command.
    let before = model.stats();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x4000_0000), 2 << 20, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    let after = model.stats();
    assert_eq!(
        after.invalidate_pages_range - before.invalidate_pages_range,
        1
    );
    assert_eq!(after.completion_waits - before.completion_waits, 1);
    assert!(model.dma(DEV.0 as u16, 0x4012_3456, false).is_err());
}

#[test]
fn force_coherent_domains_set_fc() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    assert!(u.capabilities().enforce_snoop);
    let cfg = DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    u.attach(DEV, None, d).unwrap();
    map_rw(&u, d, 0x20_0000, 0x9000_0000, 0x1000);
    assert!(
        model
            .dma(DEV.0 as u16, 0x20_0000, true)
            .unwrap()
            .force_coherent
    );
}

#[test]
fn replace_detach_and_free() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let a = u.domain_alloc(&DomainConfig::default()).unwrap();
    let b = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(a, Iova::new(0x1000), PhysAddr::new(0xA000_0000), 0x1000, RW)
        .unwrap();
    u.map(b, Iova::new(0x1000), PhysAddr::new(0xB000_0000), 0x1000, RW)
        .unwrap();
    u.attach(DEV, None, a).unwrap();
    assert_eq!(
        model.dma(DEV.0 as u16, 0x1000, false).unwrap().pa,
        0xA000_0000
    );
    // Replace: the cached DTE goes, the device sees B at once.
    u.attach(DEV, None, b).unwrap();
    assert_eq!(
        model.dma(DEV.0 as u16, 0x1000, false).unwrap().pa,
        0xB000_0000
    );
    assert!(matches!(u.domain_free(b), Err(Error::Busy)));
    u.domain_free(a).unwrap();
    u.detach(DEV, None).unwrap();
    assert!(model.dma(DEV.0 as u16, 0x1000, false).is_err());
    assert!(matches!(u.detach(DEV, None), Err(Error::NotAttached(DEV))));
    let before = model.stats();
    u.domain_free(b).unwrap();
    assert_eq!(
        model.stats().invalidate_pages_all - before.invalidate_pages_all,
        1
    );
    assert!(
        model.cached_domain_ids().is_empty(),
        "no entry of a freed ID is left"
    );
    assert!(matches!(
        u.attach(DeviceId(0x1_0000), None, a),
        Err(Error::InvalidDomain(_)) | Err(Error::InvalidDevice(_))
    ));
    u.disable().unwrap();
    assert_eq!(u.release().map_err(|(_, e)| e).unwrap(), None);
    assert!(mem.bad_frees().is_empty());
}

/// A domain with `DEV` attached (`hints`), one 4 KiB page at 0x20_0000 in it used by a DMA
/// (so cached), then the whole first GiB unmapped into a gather, not yet flushed: a 2 MiB range
/// of 4 KiB pages, so the leaf table goes with the unmap. Returns the domain, the gather and
/// the number of pages it frees once flushed (at least 1).
fn used_then_unmapped(
    u: &Unit<'_>,
    model: &AmdViModel<'_>,
    hints: &DeviceHints,
) -> (DomainHandle, Gather, usize) {
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach_device(DEV, None, d, hints).unwrap();
    map_rw(u, d, 0x20_0000, 0x8000_0000, 0x1000);
    model.dma(DEV.0 as u16, 0x20_0000, false).unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0), 1 << 30, &mut g).unwrap();
    let freed = g.freed_pages();
    assert!(freed >= 1, "the leaf table goes with the unmap");
    (d, g, freed)
}

/// [`used_then_unmapped`] with `DEV` attached as an ATS device (DTE `I`), so the flush also
/// issues INVALIDATE_IOTLB_PAGES.
fn ats_used_then_unmapped(u: &Unit<'_>, model: &AmdViModel<'_>) -> (DomainHandle, Gather, usize) {
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    used_then_unmapped(u, model, &ats)
}

/// `Maxpend` (dword 0 bits 31:24) of every INVALIDATE_IOTLB_PAGES in `log` to `device`.
fn maxpends(log: &[[u64; 2]], device: DeviceId) -> Vec<u64> {
    log.iter()
        .filter(|c| c[0] >> 60 == 4 && c[0] & 0xFFFF == u64::from(device.0))
        .map(|c| (c[0] >> 24) & 0xFF)
        .collect()
}

/// INVALIDATE_IOTLB_PAGES carries `Maxpend` (dword 0 bits 31:24): the invalidations the unit
/// may keep outstanding at the device, its ATS Invalidate Queue Depth (PCIe ATS Capability
/// bits 4:0, 0 meaning 32), as Linux (`ats_qdep`) and Xen program it. 0 is no depth: a unit
/// could take it as no invalidation allowed in flight. Before, every command carried 0.
#[test]
fn iotlb_invalidations_carry_the_devices_ats_queue_depth() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    model.record_commands(true);
    // The default hint: the capability's 0, 32 invalidations.
    let (d, mut g, _) = ats_used_then_unmapped(&u, &model);
    u.flush(d, &mut g).unwrap();
    let m = maxpends(&model.take_command_log(), DEV);
    assert!(
        m.len() >= 2 && m.iter().all(|&x| x == 32),
        "the first ATS attach's and the flush's: {m:?}"
    );
    // A device that takes 4.
    let four = DeviceHints {
        ats: true,
        ats_queue_depth: 4,
        ..DeviceHints::default()
    };
    u.attach_device(DEV2, None, d, &four).unwrap();
    map_rw(&u, d, 0x30_0000, 0x9000_0000, 0x1000);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x30_0000), 0x1000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    u.detach(DEV2, None).unwrap();
    let log = model.take_command_log();
    let m = maxpends(&log, DEV2);
    assert!(
        m.len() >= 3 && m.iter().all(|&x| x == 4),
        "DEV2's attach, flush and detach: {m:?}"
    );
    let m = maxpends(&log, DEV);
    assert!(!m.is_empty() && m.iter().all(|&x| x == 32), "DEV's: {m:?}");
    // Beyond the 5-bit field: refused before anything is written.
    let wide = DeviceHints {
        ats: true,
        ats_queue_depth: 32,
        ..DeviceHints::default()
    };
    let r = u.attach_device(DEV2, None, d, &wide);
    assert!(
        matches!(r, Err(Error::InvalidArgument { value: 32, .. })),
        "{r:?}"
    );
    assert!(model.take_command_log().is_empty());
}

#[test]
fn a_failed_flush_owes_its_invalidation_and_frees_nothing() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let (d, mut g, _) = used_then_unmapped(&u, &model, &DeviceHints::default());
    model.inject(Injection::IllegalCommandAt(1));
    let live = mem.live_pages().len();
    assert!(matches!(
        u.flush(d, &mut g),
        Err(Error::CommandError { .. })
    ));
    assert_eq!(
        mem.live_pages().len(),
        live,
        "nothing freed without the invalidation"
    );
    assert!(model
        .reachable_tables()
        .iter()
        .all(|t| mem.live_pages().iter().any(|(pa, _)| pa.get() == *t)));
    drop(g); // the caller gives up on its gather: the domain still owes the range
    let mut empty = Gather::new();
    u.flush(d, &mut empty).unwrap();
    assert!(
        model.dma(DEV.0 as u16, 0x20_0000, false).is_err(),
        "invalidated by the retry"
    );
}

/// A domain with DEV attached as an ATS device (DTE `I`) and DEV2 attached without ATS.
fn ats_and_plain_device(u: &Unit<'_>) -> DomainHandle {
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DEV, None, d, &ats).unwrap();
    u.attach(DEV2, None, d).unwrap();
    d
}

#[test]
fn ats_devices_get_iotlb_invalidations() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let d = ats_and_plain_device(&u);
    assert_ne!(u.device_entry(DEV.0).unwrap().0[1] & (1 << 32), 0, "DTE I");
    u.map(d, Iova::new(0x1000), PhysAddr::new(0xA000_0000), 0x3000, RW)
        .unwrap();
    let before = model.stats();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), 0x3000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    let after = model.stats();
    assert_eq!(
        after.invalidate_pages_range - before.invalidate_pages_range,
        1
    );
    assert_eq!(
        after.invalidate_iotlb - before.invalidate_iotlb,
        1,
        "DEV only"
    );
    assert_eq!(after.completion_waits - before.completion_waits, 1);
}

/// The model's ATC: an ATS device (DTE `I`) caches what its translation requests were
/// answered, and the flush's INVALIDATE_IOTLB_PAGES empties it; a device without `I` is
/// refused (INVALID_DEVICE_REQUEST) and caches nothing.
#[test]
fn an_ats_devices_cache_is_invalidated_by_the_flush() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let d = ats_and_plain_device(&u);
    map_rw(&u, d, 0x1000, 0xA000_0000, 0x2000);
    let t = model
        .ats_translate(DEV.0 as u16, None, 0x1008, true)
        .unwrap();
    assert_eq!(t.pa, 0xA000_0008);
    assert_eq!(
        model.atc_translation(DEV.0 as u16, None, 0x1010),
        Some(0xA000_0010)
    );
    let refused = model.ats_translate(DEV2.0 as u16, None, 0x1008, true);
    assert_eq!(refused.map_err(|f| f.event_code), Err(0x8), "DTE I clear");
    assert_eq!(model.atc_translation(DEV2.0 as u16, None, 0x1008), None);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x1000), 0x1000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    assert_eq!(model.atc_translation(DEV.0 as u16, None, 0x1008), None);
    // Detach: the device's whole cache.
    model
        .ats_translate(DEV.0 as u16, None, 0x2000, false)
        .unwrap();
    u.detach(DEV, None).unwrap();
    assert_eq!(model.atc_translation(DEV.0 as u16, None, 0x2000), None);
}

#[test]
fn one_ioasid_spans_a_vtd_and_an_amdvi_unit() {
    let mem = Arena::with_defaults().unwrap();
    let amd_hw = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let vtd_hw = VtdModel::new(&mem, VtdModelConfig::qemu_default());
    let amd = setup(&mem, &amd_hw);
    let vtd = VtdUnit::new(&vtd_hw, &mem, VtdConfig::legacy()).unwrap();
    vtd.enable().unwrap();
    let units: [&dyn Iommu; 2] = [&vtd, &amd];
    static PASIDS: PasidAllocator = PasidAllocator::new(20);
    let registry = Registry::new(&units, &PASIDS).unwrap();
    let ctx = IoasidCtx::new(&registry, &mem, 8);
    let label = |unit, id| DeviceLabel {
        unit: UnitId(unit),
        id: DeviceId(id),
    };
    let gpu = ctx.bind(label(0, 0x100), false).unwrap();
    let nic = ctx.bind(label(1, 0x20), false).unwrap();
    let ioasid = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(gpu, ioasid).unwrap();
    ctx.attach(nic, ioasid).unwrap();
    ctx.map(
        ioasid,
        Iova::new(0x4000_0000),
        PhysAddr::new(0x1_0000_0000),
        0x2000,
        RW,
    )
    .unwrap();
    let v = vtd_hw
        .translate(0x100, None, 0x4000_1008, walk::Access::WRITE)
        .unwrap();
    let a = amd_hw.dma(0x20, 0x4000_1008, true).unwrap();
    assert_eq!((v.pa, a.pa), (0x1_0000_1008, 0x1_0000_1008));
    ctx.unmap(ioasid, Iova::new(0x4000_0000), 0x2000).unwrap();
    assert!(amd_hw.dma(0x20, 0x4000_1008, true).is_err());
    drop(ctx);
}

/// An ATS device that does not answer INVALIDATE_IOTLB_PAGES (the unit logs IOTLB_INV_TIMEOUT
/// naming the command and goes on): the flush that issued it fails with a typed error, frees
/// nothing and owes its ranges; the retry issues them again and frees (as VT-d's `FSTS.ITE`
/// and SMMUv3's `CERROR_ATC_INV_SYNC`).
#[test]
fn iotlb_invalidation_timeout_fails_the_flush() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let (d, mut g, freed) = ats_used_then_unmapped(&u, &model);
    let live = mem.live_pages().len();
    model.inject(Injection::IotlbTimeout);
    let before = model.stats();
    let e = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(e, Error::CommandError { what, code } if what.contains("IOTLB_INV_TIMEOUT") && code & 0xFFFF == u64::from(DEV.0)),
        "{e:?}"
    );
    assert_eq!(model.stats().invalidate_iotlb - before.invalidate_iotlb, 1);
    assert_eq!(mem.live_pages().len(), live, "nothing freed");
    assert_eq!(
        g.freed_pages(),
        freed,
        "the caller's gather keeps its pages"
    );
    // The event stays in the log for the embedder.
    let mut events = Vec::new();
    u.drain_events(|e| events.push(e)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, EventCode::IotlbInvTimeout);
    assert_eq!(events[0].device_id, DEV.0 as u16);
    // The retry issues the owed invalidation again and frees.
    let before = model.stats();
    u.flush(d, &mut g).unwrap();
    assert_eq!(model.stats().invalidate_iotlb - before.invalidate_iotlb, 1);
    assert_eq!(u.table_pages(d).unwrap().unflushed, 0);
    assert_eq!(mem.live_pages().len(), live - freed);
    assert!(model.dma(DEV.0 as u16, 0x20_0000, false).is_err());
}

/// The tail of the event log can move before the entry is written (the erratum Linux's event
/// handling retries for while an entry's type reads 0). A flush that reads the IOTLB_INV_TIMEOUT
/// slot too early must not take "no event" for "no time-out": it waits for the entry (bounded)
/// and fails; the pages stay.
#[test]
fn a_flush_waits_for_an_iotlb_timeout_entry_written_after_the_tail() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let (d, mut g, freed) = ats_used_then_unmapped(&u, &model);
    let live = mem.live_pages().len();
    model.inject(Injection::IotlbTimeout);
    model.inject(Injection::DelayedEventWrite(3));
    let e = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(e, Error::CommandError { what, .. } if what.contains("IOTLB_INV_TIMEOUT")),
        "{e:?}"
    );
    assert_eq!(model.stats().iotlb_timeouts, 1);
    assert_eq!(mem.live_pages().len(), live, "nothing freed");
    assert_eq!(g.freed_pages(), freed);
    // An entry never written within the poll budget: the outcome is unknown, the flush fails.
    let mut events = Vec::new();
    u.drain_events(|e| events.push(e)).unwrap();
    assert_eq!(events.len(), 1);
    model.inject(Injection::IotlbTimeout);
    model.inject(Injection::DelayedEventWrite(u32::MAX));
    let e = u.flush(d, &mut g).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert_eq!(mem.live_pages().len(), live, "nothing freed");
    model.clear_injections();
    events.clear();
    u.drain_events(|e| events.push(e)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].code, EventCode::IotlbInvTimeout);
    u.flush(d, &mut g).unwrap();
    assert_eq!(mem.live_pages().len(), live - freed);
}

/// As above, where the slot still holds the previous lap's entry: a drain clears what it
/// consumed, so a stale entry reads as not written rather than as some other event.
#[test]
fn a_stale_entry_of_the_last_lap_is_not_taken_for_the_new_one() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let (d, mut g, _) = ats_used_then_unmapped(&u, &model);
    // A lap of page faults (512 entries), drained as they come.
    let fault =
        iommu_engine::amdvi::event::Event::encode(EventCode::IoPageFault, 0x99, 1, 0, 0x5000);
    for i in 0..600 {
        model.raise_event(fault);
        if i % 100 == 99 {
            u.drain_events(|_| {}).unwrap();
        }
    }
    u.drain_events(|_| {}).unwrap();
    let live = mem.live_pages().len();
    model.inject(Injection::IotlbTimeout);
    model.inject(Injection::DelayedEventWrite(3));
    let e = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(e, Error::CommandError { what, .. } if what.contains("IOTLB_INV_TIMEOUT")),
        "{e:?}"
    );
    assert_eq!(mem.live_pages().len(), live, "nothing freed");
}

/// A drain that gave up on an entry (not written within the poll budget) must not let the
/// unit's late write of it pass for a later lap's event. Before, the drain cleared the slot
/// and freed it at once; the late write landed after the clear, and one lap later, with the
/// next entry there written after its tail moved (the erratum), the IOTLB_INV_TIMEOUT check
/// read the stale event as the new one: the flush returned `Ok` and freed the pages while the
/// device's ATC still held their translations.
#[test]
fn a_late_write_of_a_skipped_entry_is_not_taken_for_a_later_laps() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let (d, mut g, _) = ats_used_then_unmapped(&u, &model);
    model
        .ats_translate(DEV.0 as u16, None, 0x20_0000, false)
        .ok();
    let fault =
        iommu_engine::amdvi::event::Event::encode(EventCode::IoPageFault, 0x99, 1, 0, 0x5000);
    const TAIL: usize = 0x2018;
    let slot = model.read64(TAIL);
    // Written 10 register reads after the drain's 10,000 polls gave up.
    model.inject(Injection::DelayedEventWrite(10_010));
    model.raise_event(fault);
    let sum = u.drain_events(|_| {}).unwrap();
    assert_eq!((sum.events, sum.unwritten), (0, 1));
    for _ in 0..20 {
        model.read64(0x2020);
    }
    // A lap of faults, drained as they come, until the tail is back at the skipped slot.
    let mut reported = 0;
    for _ in 0..600 {
        model.raise_event(fault);
        reported += u.drain_events(|_| {}).unwrap().events;
        if model.read64(TAIL) == slot {
            break;
        }
    }
    assert_eq!(model.read64(TAIL), slot);
    let live = mem.live_pages().len();
    model.inject(Injection::IotlbTimeout);
    model.inject(Injection::DelayedEventWrite(u32::MAX));
    let r = u.flush(d, &mut g);
    assert!(
        r.is_err(),
        "{r:?}: pages freed ({} -> {}) while the ATC holds {:?}",
        live,
        mem.live_pages().len(),
        model.atc_translation(DEV.0 as u16, None, 0x20_0000)
    );
    assert_eq!(mem.live_pages().len(), live, "nothing freed");
    assert_eq!(reported, 512, "every fault, the late one included");
}

/// A model whose EFR has `GTSup` and 16-bit PASIDs.
fn pasid_model(mem: &Arena) -> AmdViModel<'_> {
    AmdViModel::new(mem, AmdViModelConfig::qemu_default().with_pasids(16))
}

/// PASID attach through the GCR3 table (issue 20): a PASID's DMA translates through its v2
/// table, requests without a PASID and other PASIDs fault, a detach makes the PASID fault and
/// the last one gives the GCR3 table back; one INVALIDATE_IOMMU_PAGES with `GN` per flush.
#[test]
fn pasid_dma_translates_through_its_v2_table_until_detached() {
    let mem = Arena::with_defaults().unwrap();
    let model = pasid_model(&mem);
    let u = setup(&mem, &model);
    assert_eq!(u.capabilities().pasid_bits, 9, "one GCR3 level");
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    let e = u.domain_alloc(&cfg).unwrap();
    map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x2000);
    map_rw(&u, e, 0x10_0000, 0x9000_0000, 0x1000);
    let live = mem.live_pages().len();
    let p5 = Pasid::new(5).unwrap();
    let p7 = Pasid::new(7).unwrap();
    u.attach(DEV, Some(p5), d).unwrap();
    assert_eq!(mem.live_pages().len(), live + 1, "the GCR3 table");
    u.attach(DEV, Some(p7), e).unwrap();
    assert_eq!(mem.live_pages().len(), live + 1, "one table per device");
    let dte = u.device_entry(DEV.0).unwrap();
    assert!(dte.gcr3().is_some() && dte.mode() == 0);
    let ok = model.dma_pasid(DEV.0 as u16, 5, 0x10_1234, true).unwrap();
    assert_eq!(ok.pa, 0x8000_1234);
    let ok = model.dma_pasid(DEV.0 as u16, 7, 0x10_0010, false).unwrap();
    assert_eq!(ok.pa, 0x9000_0010);
    assert!(model.dma_pasid(DEV.0 as u16, 6, 0x10_0000, false).is_err());
    assert!(
        model.dma(DEV.0 as u16, 0x10_0000, false).is_err(),
        "no PASID: PASID 0's entry, invalid"
    );
    assert!(model.dma_pasid(DEV2.0 as u16, 5, 0x10_0000, false).is_err());
    // A v1 domain beside the PASIDs would nest: refused.
    let v1 = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert!(matches!(
        u.attach(DEV, None, v1),
        Err(Error::Unsupported(_))
    ));
    // Unmap + flush: one INVALIDATE_IOMMU_PAGES (GN, the PASID), one wait.
    let before = model.stats();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x10_1000), 0x1000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    let after = model.stats();
    assert_eq!(
        after.invalidate_pages_page - before.invalidate_pages_page,
        1
    );
    assert_eq!(after.completion_waits - before.completion_waits, 1);
    assert!(model.dma_pasid(DEV.0 as u16, 5, 0x10_1234, true).is_err());
    let mut events = Vec::new();
    u.drain_events(|e| events.push(e)).unwrap();
    let last = events.last().unwrap();
    assert_eq!(last.code, EventCode::IoPageFault);
    assert_eq!(last.domain_or_pasid, 5, "GN: the PASID");
    // Detach PASID 5: it faults, PASID 7 still translates.
    u.detach(DEV, Some(p5)).unwrap();
    assert!(model.dma_pasid(DEV.0 as u16, 5, 0x10_0000, false).is_err());
    assert_eq!(
        model
            .dma_pasid(DEV.0 as u16, 7, 0x10_0010, false)
            .unwrap()
            .pa,
        0x9000_0010
    );
    assert!(matches!(u.domain_free(e), Err(Error::Busy)));
    u.domain_free(d).unwrap();
    // The last PASID: the entry blocks, the GCR3 table goes back.
    let live = mem.live_pages().len();
    u.detach(DEV, Some(p7)).unwrap();
    assert!(model.dma_pasid(DEV.0 as u16, 7, 0x10_0010, false).is_err());
    assert!(u.device_entry(DEV.0).unwrap().blocks_dma());
    assert_eq!(mem.live_pages().len(), live - 1, "the GCR3 table back");
    // Now the v1 domain may take the device's requests without PASID.
    u.attach(DEV, None, v1).unwrap();
}

/// Control `GTEn` (§3.4): with it clear the unit ignores `GV`, and a PASID attach's entry
/// (`Mode` 0, `IR`, `IW`, `GV`, `GIoV`) would let the device's requests without PASID reach
/// all memory untranslated. `enable` sets it where EFR `GTSup` says so (as Linux's
/// `iommu_enable_gt`); a unit on which it does not read set refuses PASID attaches.
#[test]
fn pasid_attaches_need_gten() {
    let mem = Arena::with_defaults().unwrap();
    let model = pasid_model(&mem);
    let u = setup(&mem, &model);
    assert_ne!(model.read64(0x18) & 1 << 16, 0, "enable sets GTEn");
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x1000);
    u.attach(DEV, Some(Pasid::new(5).unwrap()), d).unwrap();
    assert!(
        model.dma(DEV.0 as u16, 0x5000_0000, true).is_err(),
        "no PASID: PASID 0's entry, invalid -- not untranslated"
    );
    assert_eq!(
        model
            .dma_pasid(DEV.0 as u16, 5, 0x10_0010, false)
            .unwrap()
            .pa,
        0x8000_0010
    );
    // A unit whose GTEn does not read set takes no PASID.
    model.write64(0x18, model.read64(0x18) & !(1 << 16));
    assert!(matches!(
        u.attach(DEV2, Some(Pasid::new(5).unwrap()), d),
        Err(Error::Unsupported(_))
    ));
    assert!(u.device_entry(DEV2.0).unwrap().blocks_dma());
}

/// EFR `GIoSup` (bit 48): only a unit with guest I/O protection honours DTE `GIoV`, the bit
/// that makes a PASID attach's entry (`Mode` 0, `IR`, `IW`, `GV`, `GIoV`) translate requests
/// without PASID through PASID 0's (invalid) entry. QEMU's `amd-iommu` reports `GTSup` but not
/// `GIoSup` and treats `Mode` 0 as no remapping with the entry's `IR`/`IW`: a PASID attach
/// there would let the device read and write all memory without PASID. Guest tables are used
/// only with `GTSup` and `GIoSup` (as Linux's `amd_iommu_v2_pgtbl_supported`): refused, typed,
/// and the device stays blocked.
#[test]
fn no_pasid_attach_without_giosup() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u = setup(&mem, &model);
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let p1 = Pasid::new(1).unwrap();
    let attached = u.domain_alloc(&cfg).and_then(|d| {
        map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x1000);
        u.attach(DEV, Some(p1), d)
    });
    let dma = model.dma(DEV.0 as u16, 0x5000_0000, true);
    assert!(
        dma.is_err(),
        "a request without PASID to an unmapped IOVA went through: {dma:?} (attach: {attached:?})"
    );
    assert_eq!(
        attached,
        Err(Error::Unsupported(Missing::Pasid { bits: 0 }))
    );
    assert_eq!(u.capabilities().pasid_bits, 0);
    assert!(u.device_entry(DEV.0).unwrap().blocks_dma());
    // The IOASID layer refuses the same attach with a typed reason.
    let units: [&dyn Iommu; 1] = [&u];
    static PASIDS: PasidAllocator = PasidAllocator::new(20);
    let registry = Registry::new(&units, &PASIDS).unwrap();
    let ctx = IoasidCtx::new(&registry, &mem, 8);
    let dev = ctx
        .bind(
            DeviceLabel {
                unit: UnitId(0),
                id: DEV,
            },
            false,
        )
        .unwrap();
    let ioasid = ctx.alloc(IoasidFlags::PASID).unwrap();
    let pasid = ctx.alloc_pasid().unwrap();
    assert_eq!(
        ctx.attach_pasid(dev, pasid, ioasid),
        Err(IoasidError::Incompatible {
            device: dev,
            reason: Incompatibility::Missing(Missing::Pasid { bits: 0 }),
        })
    );
    assert!(model.dma(DEV.0 as u16, 0x5000_0000, true).is_err());
    // On a unit with `GIoSup` the same attach is taken and requests without PASID fault.
    let mem2 = Arena::with_defaults().unwrap();
    let model2 = AmdViModel::new(&mem2, AmdViModelConfig::qemu_default().with_pasids(1));
    let u2 = setup(&mem2, &model2);
    let d = u2.domain_alloc(&cfg).unwrap();
    u2.attach(DEV, Some(p1), d).unwrap();
    assert!(model2.dma(DEV.0 as u16, 0x5000_0000, true).is_err());
}

/// A takeover on a unit without `IASup`: the previous owner's guest translations, cached
/// under the GCR3 `DomainID` this driver gives its first device with PASIDs (0xFF00) and a
/// PASID it never attaches, must not translate that device's requests.
#[test]
fn a_takeover_without_ia_leaves_no_earlier_pasid_translation() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(
        &mem,
        AmdViModelConfig::qemu_default()
            .with_pasids(16)
            .without_invalidate_all(),
    );
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    // The previous owner: PASID 7 of DEV cached under 0xFF00.
    let old = setup(&mem, &model);
    let d = old.domain_alloc(&cfg).unwrap();
    map_rw(&old, d, 0x10_0000, 0x8000_0000, 0x1000);
    old.attach(DEV, Some(Pasid::new(7).unwrap()), d).unwrap();
    model.dma_pasid(DEV.0 as u16, 7, 0x10_0010, true).unwrap();
    assert!(model.cached_domain_ids().contains(&0xFF00));
    // This driver takes the unit over and attaches PASID 5 of DEV.
    let u = setup(&mem, &model);
    let e = u.domain_alloc(&cfg).unwrap();
    map_rw(&u, e, 0x20_0000, 0x9000_0000, 0x1000);
    u.attach(DEV, Some(Pasid::new(5).unwrap()), e).unwrap();
    assert_eq!(u.device_entry(DEV.0).unwrap().0[1] as u16, 0xFF00);
    assert_eq!(
        model
            .dma_pasid(DEV.0 as u16, 5, 0x20_0010, false)
            .unwrap()
            .pa,
        0x9000_0010
    );
    assert!(
        model.dma_pasid(DEV.0 as u16, 7, 0x10_0010, true).is_err(),
        "the earlier owner's PASID 7 translation"
    );
}

/// The PASIDs' cached translations are tagged with the PASID: an invalidation without `GN`
/// leaves them stale, the driver's flush (with `GN`) removes them.
#[test]
fn pasid_translations_need_the_gn_invalidation() {
    use iommu_engine::amdvi::cmd::{Command, InvalidationRange};
    let mem = Arena::with_defaults().unwrap();
    let model = pasid_model(&mem);
    let u = setup(&mem, &model);
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x1000);
    let p = Pasid::new(3).unwrap();
    u.attach(DEV, Some(p), d).unwrap();
    model.dma_pasid(DEV.0 as u16, 3, 0x10_0000, false).unwrap();
    let tag = u.device_entry(DEV.0).unwrap().domain_id();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x10_0000), 0x1000, &mut g).unwrap();
    // Host-address invalidation of the same DomainID: not the PASID's entries.
    u.run(&[&[Command::invalidate_iommu_pages(
        tag,
        None,
        InvalidationRange::All,
        true,
    )]])
    .unwrap();
    let stale = model.dma_pasid(DEV.0 as u16, 3, 0x10_0000, false).unwrap();
    assert!(stale.from_iotlb, "stale without GN");
    u.flush(d, &mut g).unwrap();
    assert!(model.dma_pasid(DEV.0 as u16, 3, 0x10_0000, false).is_err());
}

/// DTE `I` (ATS) is the device's, not a PASID's (issue 20, an escape found by review): with
/// `I` set the device may cache the translations of every PASID in its ATC, so every PASID of
/// an ATS device must be in the IOTLB invalidations of its domain. A PASID attach whose ATS
/// differs from the device's other PASIDs' is refused (`InvalidArgument`, the hint's value):
/// before, the last attach rewrote `I` while only PASIDs attached with ATS were invalidated,
/// and PASID 1 (attached without ATS) kept a translation in the device's ATC after its unmap.
#[test]
fn ats_is_the_devices_for_every_pasid() {
    let mem = Arena::with_defaults().unwrap();
    let model = pasid_model(&mem);
    let u = setup(&mem, &model);
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    let e = u.domain_alloc(&cfg).unwrap();
    map_rw(&u, d, 0x10_0000, 0x8000_0000, 0x1000);
    map_rw(&u, e, 0x10_0000, 0x9000_0000, 0x1000);
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let (p1, p2) = (Pasid::new(1).unwrap(), Pasid::new(2).unwrap());
    let dte_i = |u: &Unit<'_>| u.device_entry(DEV.0).unwrap().0[1] & (1 << 32) != 0;
    u.attach(DEV, Some(p1), d).unwrap();
    let second = u.attach_device(DEV, Some(p2), e, &ats);
    // Whatever the unit answered, PASID 1's translation must not outlive its unmap in the
    // device's cache.
    if model
        .ats_translate(DEV.0 as u16, Some(1), 0x10_0000, true)
        .is_ok()
    {
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0x10_0000), 0x1000, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        assert_eq!(
            model.atc_translation(DEV.0 as u16, Some(1), 0x10_0000),
            None,
            "PASID 1's unmapped page still in the device's ATC (DTE I = {})",
            dte_i(&u)
        );
    }
    assert_eq!(
        second,
        Err(Error::InvalidArgument {
            what: ATS_UNLIKE_THE_DEVICE,
            value: 1,
        })
    );
    assert!(!dte_i(&u), "the device's entry unchanged");
    assert!(model.dma_pasid(DEV.0 as u16, 2, 0x10_0000, false).is_err());
    // The other way round: a device with ATS takes no PASID without it.
    u.detach(DEV, Some(p1)).unwrap();
    u.attach_device(DEV, Some(p1), d, &ats).unwrap();
    assert!(dte_i(&u));
    assert_eq!(
        u.attach(DEV, Some(p2), e),
        Err(Error::InvalidArgument {
            what: ATS_UNLIKE_THE_DEVICE,
            value: 0,
        })
    );
    // Both with ATS: an unmap in one domain empties that PASID's entries of the device's
    // cache, not the other's; a detach empties the PASID's.
    u.attach_device(DEV, Some(p2), e, &ats).unwrap();
    assert!(dte_i(&u));
    map_rw(&u, d, 0x20_0000, 0x8010_0000, 0x1000);
    for p in [1, 2] {
        model
            .ats_translate(DEV.0 as u16, Some(p), 0x10_0000, true)
            .ok();
    }
    model
        .ats_translate(DEV.0 as u16, Some(1), 0x20_0000, true)
        .unwrap();
    assert_eq!(
        model.atc_translation(DEV.0 as u16, Some(2), 0x10_0000),
        Some(0x9000_0000)
    );
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x20_0000), 0x1000, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    assert_eq!(
        model.atc_translation(DEV.0 as u16, Some(1), 0x20_0000),
        None
    );
    assert_eq!(
        model.atc_translation(DEV.0 as u16, Some(2), 0x10_0000),
        Some(0x9000_0000)
    );
    u.detach(DEV, Some(p2)).unwrap();
    assert_eq!(
        model.atc_translation(DEV.0 as u16, Some(2), 0x10_0000),
        None
    );
    u.detach(DEV, Some(p1)).unwrap();
}

/// An allocator that gives its next page, once armed, from a second arena at 2^52 (where no
/// AMD-Vi structure can lie: its address fields are bits 51:12), every other from the first.
#[derive(Clone, Copy)]
struct HighOnce<'a> {
    low: &'a Arena,
    high: &'a Arena,
    armed: &'a AtomicBool,
}

// SAFETY: every page comes from one of two arenas and goes back to the one that gave it.
unsafe impl PageAllocator for HighOnce<'_> {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.high.alloc(size_log2)
        } else {
            self.low.alloc(size_log2)
        }
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        if self.high.phys_to_virt(page.pa).is_some() {
            // SAFETY: the caller's contract; the page is the high arena's.
            unsafe { self.high.free(page, size_log2) }
        } else {
            // SAFETY: as above, the low arena's.
            unsafe { self.low.free(page, size_log2) }
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        self.low
            .phys_to_virt(pa)
            .or_else(|| self.high.phys_to_virt(pa))
    }
}

/// A PASID attach whose device entry cannot be built changes nothing (issue 20, defect 7 of
/// the review): here the device's new GCR3 table lies at 2^52, which no DTE can name. Before,
/// the GCR3 entry was written, the attachment recorded and the table kept as the device's
/// before `DeviceTableEntry::guest` refused the address: the page never went back, and every
/// later PASID attach of the device failed on the same table.
#[test]
fn a_pasid_attach_whose_entry_cannot_be_built_changes_nothing() {
    let mem = Arena::with_defaults().unwrap();
    let high = Arena::new(ArenaConfig {
        base_pa: 1 << 52,
        capacity: 1 << 20,
    })
    .unwrap();
    let armed = AtomicBool::new(false);
    let alloc = HighOnce {
        low: &mem,
        high: &high,
        armed: &armed,
    };
    let model = pasid_model(&mem);
    let u = AmdViUnit::<_, _, 8>::new(&model, alloc, config()).expect("unit");
    u.enable().unwrap();
    let cfg = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let d = u.domain_alloc(&cfg).unwrap();
    u.map(
        d,
        Iova::new(0x10_0000),
        PhysAddr::new(0x8000_0000),
        0x1000,
        RW,
    )
    .unwrap();
    let live = mem.live_pages().len();
    let p = Pasid::new(1).unwrap();
    armed.store(true, Ordering::SeqCst);
    let refused = u.attach(DEV, Some(p), d);
    assert!(high.live_pages().is_empty(), "the GCR3 page given back");
    assert_eq!(mem.live_pages().len(), live);
    assert!(u.device_entry(DEV.0).unwrap().blocks_dma());
    assert!(model.dma_pasid(DEV.0 as u16, 1, 0x10_0000, false).is_err());
    // A page the unit can reach: the same attach goes through.
    u.attach(DEV, Some(p), d)
        .expect("attach with a reachable GCR3 table");
    let ok = model.dma_pasid(DEV.0 as u16, 1, 0x10_0123, false).unwrap();
    assert_eq!(ok.pa, 0x8000_0123);
    u.detach(DEV, Some(p)).unwrap();
    u.domain_free(d).unwrap();
    assert!(matches!(
        refused,
        Err(Error::TableOutOfRange { table: "GCR3 table", pa, width: 52 }) if pa.get() == 1 << 52
    ));
}

/// Dirty tracking with EFR `HDSup` (issue 20), as the other families' dirty tests: a write
/// sets `D` (DTE `HAD`), reported once and cleaned; `NO_CLEAR` reports without cleaning; the
/// clean is seen again only after the flush invalidated the IOTLB; turning tracking on leaves
/// every page clean; off, writes set nothing.
#[test]
fn dirty_tracking_with_hdsup() {
    use iommu_engine::pgtable::DirtyRead;
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default().with_dirty_tracking());
    let u = setup(&mem, &model);
    assert!(u.capabilities().dirty_tracking);
    let d = u
        .domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        })
        .unwrap();
    u.attach(DEV, None, d).unwrap();
    assert_ne!(u.device_entry(DEV.0).unwrap().0[0] & (3 << 7), 0, "HAD");
    u.map(d, Iova::new(0x4000), PhysAddr::new(0x7000_0000), 0x4000, RW)
        .unwrap();
    let read = |how, g: &mut Gather| {
        let mut seen = Vec::new();
        u.read_dirty(
            d,
            Iova::new(0),
            0x10_0000,
            how,
            &mut |i, _| seen.push(i.get()),
            g,
        )
        .unwrap();
        seen
    };
    // A read sets nothing.
    model.dma(DEV.0 as u16, 0x4000, false).unwrap();
    let mut g = Gather::new();
    assert!(read(DirtyRead::Clear, &mut g).is_empty());
    // A write sets D: NO_CLEAR reports and keeps it, Clear reports and cleans it.
    model.dma(DEV.0 as u16, 0x5008, true).unwrap();
    assert_eq!(read(DirtyRead::NoClear, &mut g), [0x5000]);
    assert!(g.is_empty(), "NO_CLEAR cleans nothing, owes nothing");
    assert_eq!(read(DirtyRead::NoClear, &mut g), [0x5000]);
    assert_eq!(read(DirtyRead::Clear, &mut g), [0x5000]);
    assert!(read(DirtyRead::Clear, &mut Gather::new()).is_empty());
    // Without the invalidation the IOTLB entry, cached dirty, hides the next write.
    model.dma(DEV.0 as u16, 0x5008, true).unwrap();
    assert!(read(DirtyRead::NoClear, &mut Gather::new()).is_empty());
    u.flush(d, &mut g).unwrap();
    model.dma(DEV.0 as u16, 0x5008, true).unwrap();
    assert_eq!(read(DirtyRead::Clear, &mut g), [0x5000]);
    u.flush(d, &mut g).unwrap();
    // Off: HAD clear in the device's entry.
    u.set_dirty_tracking(d, false).unwrap();
    assert_eq!(u.device_entry(DEV.0).unwrap().0[0] & (3 << 7), 0);
    model.dma(DEV.0 as u16, 0x5000, true).unwrap();
    // On again: every page starts clean, and the next write is recorded.
    let before = model.stats();
    u.set_dirty_tracking(d, true).unwrap();
    let after = model.stats();
    assert_eq!(after.invalidate_devtab - before.invalidate_devtab, 1);
    assert_eq!(after.invalidate_pages_all - before.invalidate_pages_all, 1);
    assert_eq!(after.completion_waits - before.completion_waits, 1);
    assert!(
        read(DirtyRead::NoClear, &mut Gather::new()).is_empty(),
        "starts clean"
    );
    model.dma(DEV.0 as u16, 0x6000, true).unwrap();
    assert_eq!(read(DirtyRead::NoClear, &mut Gather::new()), [0x6000]);
    // Without HDSup: refused.
    let m2 = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let u2 = setup(&mem, &m2);
    assert!(!u2.capabilities().dirty_tracking);
    assert!(matches!(
        u2.domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        }),
        Err(Error::Unsupported(_))
    ));
}

/// The INVALIDATE_IOTLB_PAGES (opcode 4) of a command log, as (DeviceID 15:0, the PASID when
/// `GN`: PASID[15:8] in 23:16, PASID[7:0] in 55:48).
fn iotlb_targets(log: &[[u64; 2]]) -> Vec<(u16, Option<u32>)> {
    log.iter()
        .filter(|c| c[0] >> 60 == 4)
        .map(|c| {
            let pasid = (c[1] & 4 != 0).then_some(((c[0] >> 16) & 0xFF) << 8 | (c[0] >> 48) & 0xFF);
            (c[0] as u16, pasid.map(|p| p as u32))
        })
        .collect()
}

/// How an ATS device leaves its domain in
/// `a_flush_reaches_the_iotlb_of_an_ats_device_whose_move_or_detach_failed`.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// `DEV` from `a` to `b`, with ATS.
    Replace,
    /// `DEV` from `a` to `b` with the trait's plain `attach` (no ATS hint: `I` goes off).
    ReplaceWithoutAts,
    /// `DEV` detached from `a`.
    Detach,
    /// PASID 5 of `DEV2` from `p` to `q`.
    PasidReplace,
    /// PASID 5 of `DEV2` detached from `p`, its PASID 7 staying.
    PasidDetach,
    /// PASID 5 of `DEV2`, its only one, detached from `p` (the entry blocks).
    PasidDetachLast,
}

/// A move or detach of an ATS device away from domain `a` (or of its PASID away from `p`)
/// that fails part-way (a command error at each of its first commands, a COMPLETION_WAIT that
/// never completes, the device not answering INVALIDATE_IOTLB_PAGES) may leave the old domain
/// reachable by the device: its cached DTE, the old domain's IOTLB entries, or its own ATC.
/// The device goes on asking (an ATS request answered from whatever still translates for it
/// refills its ATC); then the caller unmaps the old domain's page and flushes that domain. If
/// the flush returns `Ok` it frees the page, so when the device's ATC held it the flush
/// issued INVALIDATE_IOTLB_PAGES for that device (and PASID), and afterwards nothing of the
/// page is left for it.
///
/// Passed when written (no defect): an unsettled attachment, which a failed attach or detach
/// leaves in the books (never removed before its invalidation completed), counts as attached
/// for every domain's flush and stays an ATS attachment while unsettled
/// (`Attachment::flushed_with`), so the old domain's flush reaches the device's IOTLB. The
/// fault matrix checked the ATC after the failed replaces; this checks the commands, and the
/// detaches too.
#[test]
fn a_flush_reaches_the_iotlb_of_an_ats_device_whose_move_or_detach_failed() {
    const PA_OLD: u64 = 0xA000_0000;
    const PA_NEW: u64 = 0xB000_0000;
    const IOVA: u64 = 0x1000;
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let mut faults = vec![Injection::StallWaits, Injection::IotlbTimeout];
    for n in 1..=4 {
        faults.push(Injection::IllegalCommandAt(n));
        faults.push(Injection::CommandHardwareErrorAt(n));
        faults.push(Injection::StallWaitAt(n));
    }
    let leaves = [
        Leave::Replace,
        Leave::ReplaceWithoutAts,
        Leave::Detach,
        Leave::PasidReplace,
        Leave::PasidDetach,
        Leave::PasidDetachLast,
    ];
    let (mut failed, mut held, mut owed) = (0, 0, 0);
    for leave in leaves {
        for &fault in &faults {
            let cell = format!("{leave:?}, {fault:?}");
            let mem = Arena::with_defaults().unwrap();
            let model = pasid_model(&mem);
            let u: Unit<'_> = AmdViUnit::new(
                &model,
                &mem,
                AmdViConfig {
                    poll_budget: 2_000,
                    ..AmdViConfig::new()
                },
            )
            .unwrap();
            u.enable().unwrap();
            let pasid_leave = !matches!(
                leave,
                Leave::Replace | Leave::ReplaceWithoutAts | Leave::Detach
            );
            let v2 = DomainConfig {
                pasid: pasid_leave,
                ..DomainConfig::default()
            };
            let old = u.domain_alloc(&v2).unwrap();
            let new = u.domain_alloc(&v2).unwrap();
            map_rw(&u, old, IOVA, PA_OLD, 0x1000);
            map_rw(&u, new, IOVA, PA_NEW, 0x1000);
            let (p5, p7) = (Pasid::new(5), Pasid::new(7));
            let (dev, pasid) = if pasid_leave {
                u.attach_device(DEV2, p5, old, &ats).unwrap();
                if matches!(leave, Leave::PasidDetach) {
                    u.attach_device(DEV2, p7, new, &ats).unwrap();
                }
                (DEV2.0 as u16, Some(5))
            } else {
                u.attach_device(DEV, None, old, &ats).unwrap();
                (DEV.0 as u16, None)
            };
            model.ats_translate(dev, pasid, IOVA, false).unwrap();
            model.inject(fault);
            let r = match leave {
                Leave::Replace => u.attach_device(DEV, None, new, &ats),
                Leave::ReplaceWithoutAts => u.attach(DEV, None, new),
                Leave::Detach => u.detach(DEV, None),
                Leave::PasidReplace => u.attach_device(DEV2, p5, new, &ats),
                Leave::PasidDetach | Leave::PasidDetachLast => u.detach(DEV2, p5),
            };
            model.clear_injections();
            if r.is_ok() {
                continue;
            }
            failed += 1;
            // The device asks again: whatever still translates for it refills its ATC.
            let _ = model.ats_translate(dev, pasid, IOVA, false);
            let atc_holds_old = model.atc_translation(dev, pasid, IOVA) == Some(PA_OLD);
            let mut g = Gather::new();
            assert_eq!(
                u.unmap(old, Iova::new(IOVA), 0x1000, &mut g),
                Ok(0x1000),
                "{cell}"
            );
            model.record_commands(true);
            if u.flush(old, &mut g).is_err() {
                owed += 1;
                continue;
            }
            if atc_holds_old {
                held += 1;
                let targets = iotlb_targets(&model.take_command_log());
                assert!(
                    targets.contains(&(dev, pasid)),
                    "{cell} ({r:?}): the device's ATC held the old domain's page, its flush \
                     invalidated the IOTLBs of {targets:x?} only"
                );
            }
            let _ = model.ats_translate(dev, pasid, IOVA, false);
            assert_ne!(
                model.atc_translation(dev, pasid, IOVA),
                Some(PA_OLD),
                "{cell} ({r:?}): the old domain flushed, the device can still reach its page"
            );
        }
    }
    println!("{failed} failed calls, {held} with the old page in the ATC, {owed} flushes owed");
    assert!(held > 0, "the cells must reach the case");
}

/// Review of the VT-d driver, item 3 (the AMD-Vi question): a device's first ATS attachment
/// (DTE `I` set, no ATS attachment of it recorded) was published with no INVALIDATE_IOTLB_PAGES,
/// so whatever a previous owner with ATS left in the device's IOTLB (ATC) was accepted. The
/// attach invalidates the whole device IOTLB once the DTE and its INVALIDATE_DEVTAB_ENTRY are
/// out (counted: one INVALIDATE_IOTLB_PAGES), and the previous owner's translation is gone.
#[test]
fn a_first_ats_attach_invalidates_the_whole_device_iotlb() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    // The previous owner: ATS on, 0x1000 translated into the device's ATC, then gone without
    // a word (dropping a unit leaks its pages, which the hardware still walks).
    {
        let old = setup(&mem, &model);
        let d = old.domain_alloc(&DomainConfig::default()).unwrap();
        old.attach_device(DEV, None, d, &ats).unwrap();
        map_rw(&old, d, 0x1000, 0xA000_0000, 0x1000);
        model
            .ats_translate(DEV.0 as u16, None, 0x1000, false)
            .unwrap();
        assert_eq!(
            model.atc_translation(DEV.0 as u16, None, 0x1000),
            Some(0xA000_0000)
        );
    }
    let u = setup(&mem, &model);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let before = model.stats();
    u.attach_device(DEV, None, d, &ats).unwrap();
    let after = model.stats();
    assert_eq!(after.invalidate_iotlb - before.invalidate_iotlb, 1);
    assert_eq!(
        model.atc_translation(DEV.0 as u16, None, 0x1000),
        None,
        "the previous owner's translation survives the first ATS attach"
    );
    // A move to another domain invalidates it once, as before (the previous attachment's).
    let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let before = model.stats();
    u.attach_device(DEV, None, d2, &ats).unwrap();
    assert_eq!(model.stats().invalidate_iotlb - before.invalidate_iotlb, 1);
}

/// A unit whose INVALIDATE_DEVTAB_ENTRY takes effect only at the next COMPLETION_WAIT (the
/// latest §2.4 allows, `AmdViModelConfig::devtab_invalidation_at_wait`).
fn late_devtab_model(mem: &Arena) -> AmdViModel<'_> {
    AmdViModel::new(
        mem,
        AmdViModelConfig::qemu_default().with_devtab_invalidation_at_wait(),
    )
}

/// `device` asking for `iova` (an ATS translation request when `ats`) after every command
/// the unit runs.
fn busy(model: &AmdViModel<'_>, device: DeviceId, iova: u64, ats: bool) {
    model.request_during_commands(Some(BusyRequest {
        device: device.0 as u16,
        pasid: None,
        iova,
        write: false,
        ats,
    }));
}

/// A detach's commands were one run: INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES of the
/// domain, INVALIDATE_IOTLB_PAGES of the ATS device, one wait. §2.4 orders commands only
/// through COMPLETION_WAIT, so the entry's invalidation may take effect after the IOTLB
/// invalidation; an ATS request of the device in between is answered through the entry still
/// cached and its answer survives in the device's ATC. The detached device then holds a
/// translation of the domain that no later flush of the domain reaches (it is not attached):
/// the page can be unmapped and freed under it. Failed before the fix (the ATC held
/// 0xA000_0000 after the detach returned); the detach now waits for the entry's invalidation
/// before it invalidates the domain and the device's IOTLB.
#[test]
fn a_detach_leaves_no_atc_translation_when_the_entry_is_invalidated_last() {
    let mem = Arena::with_defaults().unwrap();
    let model = late_devtab_model(&mem);
    let u = setup(&mem, &model);
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach_device(DEV, None, d, &ats).unwrap();
    map_rw(&u, d, 0x1000, 0xA000_0000, 0x1000);
    model
        .ats_translate(DEV.0 as u16, None, 0x1000, false)
        .unwrap();
    busy(&model, DEV, 0x1000, true);
    u.detach(DEV, None).unwrap();
    model.request_during_commands(None);
    assert_eq!(
        model.atc_translation(DEV.0 as u16, None, 0x1000),
        None,
        "the detached device keeps the domain's translation in its ATC"
    );
    assert!(model.dma(DEV.0 as u16, 0x1000, false).is_err());
}

/// As the detach above, for a move of an ATS device from `a` to `b`: an ATS request between
/// the IOTLB invalidation and the entry's invalidation (which may take effect last) is
/// answered from `a`, and `a`'s page stays in the device's ATC once it is `b`'s. Failed
/// before the fix (the ATC held `a`'s 0xA000_0000 at 0x5000, which `b` does not map).
#[test]
fn a_move_leaves_no_atc_translation_of_the_old_domain_when_the_entry_is_invalidated_last() {
    let mem = Arena::with_defaults().unwrap();
    let model = late_devtab_model(&mem);
    let u = setup(&mem, &model);
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let a = u.domain_alloc(&DomainConfig::default()).unwrap();
    let b = u.domain_alloc(&DomainConfig::default()).unwrap();
    map_rw(&u, a, 0x5000, 0xA000_0000, 0x1000);
    u.attach_device(DEV, None, a, &ats).unwrap();
    model
        .ats_translate(DEV.0 as u16, None, 0x5000, false)
        .unwrap();
    busy(&model, DEV, 0x5000, true);
    u.attach_device(DEV, None, b, &ats).unwrap();
    model.request_during_commands(None);
    assert_eq!(
        model.atc_translation(DEV.0 as u16, None, 0x5000),
        None,
        "the moved device keeps the old domain's translation in its ATC"
    );
}

/// `domain_free` of a domain that an unsettled move left (the move's INVALIDATE_DEVTAB_ENTRY
/// was refused: the device's entry may still be cached naming the domain) invalidated, in one
/// run, the device's entry, the domain's IOTLB and page directory entries, one wait, then
/// freed the tables. With the entry's invalidation taking effect last, a request of the
/// device in between walks the domain's tables again through the cached entry: the page
/// directory cache then names table pages that were freed, and the IOTLB holds translations
/// tagged with the ID the next domain of the slot gets. Failed before the fix (a freed table
/// reachable, the new domain's device translating through the old domain's page); the free
/// now waits for the entries' invalidation before it invalidates the domain.
#[test]
fn a_domain_free_after_an_unsettled_move_leaves_no_walk_of_its_tables() {
    let mem = Arena::with_defaults().unwrap();
    let model = late_devtab_model(&mem);
    let u = setup(&mem, &model);
    let a = u.domain_alloc(&DomainConfig::default()).unwrap();
    let b = u.domain_alloc(&DomainConfig::default()).unwrap();
    map_rw(&u, a, 0x20_0000, 0xA000_0000, 0x1000);
    u.attach(DEV, None, a).unwrap();
    assert_eq!(
        model.dma(DEV.0 as u16, 0x20_0000, false).unwrap().pa,
        0xA000_0000
    );
    // The move's first command (INVALIDATE_DEVTAB_ENTRY) is refused: unsettled.
    model.inject(Injection::IllegalCommandAt(1));
    assert!(u.attach(DEV, None, b).is_err());
    model.clear_injections();
    busy(&model, DEV, 0x20_0000, false);
    u.domain_free(a).unwrap();
    model.request_during_commands(None);
    let live = mem.live_pages();
    let freed: Vec<u64> = model
        .reachable_tables()
        .into_iter()
        .filter(|t| !live.iter().any(|(pa, _)| pa.get() == *t))
        .collect();
    assert!(
        freed.is_empty(),
        "the unit can still walk freed table pages {freed:x?}"
    );
    // The slot's next domain gets the freed one's ID.
    let c = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert_eq!(c, a, "the slot (and its domain ID) is reused");
    map_rw(&u, c, 0x20_0000, 0xC000_0000, 0x1000);
    u.attach(DEV2, None, c).unwrap();
    assert_eq!(
        model.dma(DEV2.0 as u16, 0x20_0000, false).unwrap().pa,
        0xC000_0000,
        "the reused domain ID inherits the freed domain's translation"
    );
}

/// A takeover on a unit without `IASup` invalidated, in one run, every device table entry and
/// interrupt table, then every domain ID this unit will use, one wait. With the entries'
/// invalidation taking effect last, a request of a device still running for the previous
/// owner, between the invalidation of an ID and its entry's, walks the previous owner's
/// tables through its cached entry and caches them under that ID: the first domain of ours
/// given the ID then answers the previous owner's translations to its own devices. Failed
/// before the fix (a device of our domain read 0xA000_0000 at an IOVA the domain never
/// mapped); `enable` now waits for the entries' invalidation before it invalidates the IDs.
#[test]
fn a_takeover_leaves_no_earlier_translation_under_our_ids_when_entries_are_invalidated_last() {
    let mem = Arena::with_defaults().unwrap();
    let model = AmdViModel::new(
        &mem,
        AmdViModelConfig::qemu_default()
            .without_invalidate_all()
            .with_devtab_invalidation_at_wait(),
    );
    // The previous owner: DEV translating 0x1000 through its domain of ID 1, then gone
    // without a word, DEV still running.
    {
        let old = setup(&mem, &model);
        let d = old.domain_alloc(&DomainConfig::default()).unwrap();
        old.attach(DEV, None, d).unwrap();
        map_rw(&old, d, 0x1000, 0xA000_0000, 0x1000);
        model.dma(DEV.0 as u16, 0x1000, false).unwrap();
    }
    busy(&model, DEV, 0x1000, false);
    let u = setup(&mem, &model);
    model.request_during_commands(None);
    let c = u.domain_alloc(&DomainConfig::default()).unwrap();
    map_rw(&u, c, 0x8000, 0xC000_0000, 0x1000);
    u.attach(DEV2, None, c).unwrap();
    let r = model.dma(DEV2.0 as u16, 0x1000, false);
    assert!(
        r.is_err(),
        "our domain answers the previous owner's translation of an IOVA it never mapped: {r:?}"
    );
}

/// COMPLETION_WAITs per call since the entry's invalidation is waited for before the IOTLB
/// invalidations of an entry that translated through a domain (`amdvi::unit::After`): a
/// first attach, a first ATS attach, a PASID attach and a PASID's detach keep one run and one
/// wait (the entry replaced reaches nothing those commands cover); a move and a detach take
/// two; a `domain_free` with nothing unsettled keeps one.
#[test]
fn waits_per_attach_detach_and_free() {
    let mem = Arena::with_defaults().unwrap();
    let model = pasid_model(&mem);
    let u = setup(&mem, &model);
    let waits = |f: &dyn Fn()| {
        let before = model.stats().completion_waits;
        f();
        model.stats().completion_waits - before
    };
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let a = u.domain_alloc(&DomainConfig::default()).unwrap();
    let b = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert_eq!(
        waits(&|| u.attach(DEV, None, a).unwrap()),
        1,
        "first attach"
    );
    assert_eq!(
        waits(&|| u.attach_device(DEV2, None, a, &ats).unwrap()),
        1,
        "first ATS attach"
    );
    assert_eq!(waits(&|| u.attach(DEV, None, b).unwrap()), 2, "move");
    assert_eq!(waits(&|| u.detach(DEV, None).unwrap()), 2, "detach");
    assert_eq!(waits(&|| u.detach(DEV2, None).unwrap()), 2, "ATS detach");
    assert_eq!(waits(&|| u.domain_free(a).unwrap()), 1, "domain_free");
    let v2 = DomainConfig {
        pasid: true,
        ..DomainConfig::default()
    };
    let p = u.domain_alloc(&v2).unwrap();
    let p5 = Pasid::new(5);
    // The first PASID of a device also cleans its GCR3 table's tag on a unit without IASup;
    // this one has it.
    assert_eq!(waits(&|| u.attach(DEV, p5, p).unwrap()), 1, "PASID attach");
    assert_eq!(
        waits(&|| u.detach(DEV, p5).unwrap()),
        1,
        "last PASID's detach"
    );
}
