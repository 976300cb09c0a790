//! Error paths of the VT-d unit against the behavioural model (`sim::vtd`), one test per defect
//! of issue 14 (items 1-6): after each injected fault the hardware, the unit's books and the
//! allocator's pages agree, and a retry of the same call completes what failed.

use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Error, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::arena::PhysMem;
use iommu_engine::sim::vtd::{Injection, VtdModel, VtdModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::{Arena, ArenaConfig};
use iommu_engine::vtd::{AttachOptions, Mode, VtdConfig, VtdUnit};

const K4: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const DEV: DeviceId = DeviceId(0x0020);

type Unit<'a> = VtdUnit<&'a VtdModel<'a>, &'a Arena>;

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .expect("arena")
}

fn config(mode: Mode) -> VtdConfig {
    VtdConfig {
        mode,
        poll_budget: 200,
        device_tlb_poll_budget: 400,
        ..VtdConfig::legacy()
    }
}

fn unit<'a>(m: &'a VtdModel<'a>, a: &'a Arena, mode: Mode) -> Unit<'a> {
    let u = VtdUnit::new(m, a, config(mode)).expect("unit");
    u.enable().expect("enable");
    m.reset_stats();
    u
}

fn sid(d: DeviceId) -> u16 {
    d.0 as u16
}

/// Every structure the model can still reach is memory the allocator still holds, and the
/// unit's books match its tables.
fn assert_consistent(u: &Unit<'_>, m: &VtdModel<'_>, a: &Arena) {
    for pa in m.reachable() {
        assert!(
            a.read_u64(pa).is_some(),
            "the unit can reach freed page {pa:#x}"
        );
    }
    assert_eq!(a.bad_frees(), []);
    if let Err(e) = u.audit() {
        panic!("audit: {e}");
    }
}

fn is_timeout(r: Result<(), Error>) -> bool {
    matches!(r, Err(Error::Timeout { .. }))
}

/// Item 1: under caching mode the invalidation after a map fails: the map is undone, and the
/// invalidation the undo needs is issued by the next flush of the domain.
#[test]
fn failed_map_under_caching_mode_is_undone() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_caching_mode(true));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    m.inject(Injection::StallWaits);
    let r = u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), K4, RW);
    assert!(is_timeout(r), "{r:?}");
    assert_eq!(
        u.query(d, Iova::new(0x10_0000)),
        None,
        "Err: nothing mapped"
    );
    m.clear_injections();
    assert!(m
        .translate(sid(DEV), None, 0x10_0000, Access::READ)
        .is_err());
    // The next flush, even of an empty gather, issues what the undo could not.
    m.reset_stats();
    u.flush(d, &mut Gather::new()).unwrap();
    assert!(m.stats().iotlb_page + m.stats().iotlb_domain >= 1);
    u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    assert!(m.translate(sid(DEV), None, 0x10_0000, Access::READ).is_ok());
    assert_consistent(&u, &m, &a);
}

/// Item 1, write-buffer flavour: `CAP.RWBF` and a write-buffer flush that never completes.
#[test]
fn failed_write_buffer_flush_undoes_the_map() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_rwbf(true));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    m.inject(Injection::StallWriteBufferFlush);
    let r = u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), K4, RW);
    assert!(is_timeout(r), "{r:?}");
    assert_eq!(
        u.query(d, Iova::new(0x10_0000)),
        None,
        "Err: nothing mapped"
    );
    m.clear_injections();
    u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    assert!(m.translate(sid(DEV), None, 0x10_0000, Access::READ).is_ok());
}

/// Item 2: the context entry is published, then the caching-mode invalidation fails. The
/// attachment is recorded (the domain cannot be freed under it), detach tears it down, and a
/// retry of the attach completes it.
#[test]
fn attach_that_fails_after_publishing_is_recorded() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_caching_mode(true));
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    m.inject(Injection::StallWaits);
    assert!(is_timeout(u.attach(DEV, None, d)));
    m.clear_injections();
    let report = u.audit().unwrap();
    assert_eq!(
        (report.entries, report.unsettled),
        (1, 1),
        "recorded, unsettled"
    );
    assert_eq!(
        u.domain_free(d),
        Err(Error::Busy),
        "the entry still points at it"
    );
    u.attach(DEV, None, d).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_ok());
    u.detach(DEV, None).unwrap();
    u.domain_free(d).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
    assert_consistent(&u, &m, &a);

    // Detach of an attachment that failed the same way.
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    m.inject(Injection::StallWaits);
    assert!(is_timeout(u.attach(DEV, None, d)));
    m.clear_injections();
    u.detach(DEV, None).unwrap();
    u.domain_free(d).unwrap();
    assert_consistent(&u, &m, &a);
}

/// Item 3: a domain free whose invalidation times out changes nothing: the handle and DID stay
/// taken, the table stays, and the retry frees it.
#[test]
fn failed_domain_free_keeps_the_domain_and_its_did() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    u.attach(DEV, None, d).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_ok());
    u.detach(DEV, None).unwrap();
    let did = u.domain_id(d).unwrap();
    let pages = a.stats().live_pages;
    m.inject(Injection::StallWaits);
    assert!(is_timeout(u.domain_free(d)));
    assert_eq!(u.domain_id(d), Some(did), "the DID stays taken");
    assert_eq!(u.audit().unwrap().domains, 1);
    assert_eq!(a.stats().live_pages, pages, "no page freed");
    m.clear_injections();
    let other = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert_ne!(other, d);
    assert_ne!(u.domain_id(other), Some(did));
    u.domain_free(d).unwrap();
    assert_eq!(u.domain_id(d), None);
    assert_consistent(&u, &m, &a);
}

fn ats_unit_and_domain<'a>(m: &'a VtdModel<'a>, a: &'a Arena) -> (Unit<'a>, DomainHandle) {
    let u = unit(m, a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    u.attach_with(DEV, None, d, ats).unwrap();
    (u, d)
}

/// Item 4: a device-TLB invalidation lost to ITE (or ICE) is issued again by the retry, even
/// when the retry unmaps nothing (the PTEs went with the first attempt) and flushes an empty
/// gather.
#[test]
fn lost_device_tlb_invalidation_is_reissued() {
    for fault in [Injection::DeviceTlbTimeout, Injection::CompletionError] {
        let a = arena();
        let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_dt(true));
        let (u, d) = ats_unit_and_domain(&m, &a);
        u.map(d, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        m.ats_translate(sid(DEV), None, 0x3000, Access::READ)
            .unwrap();
        assert!(m.atc_holds(sid(DEV), None, 0x3000));
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
        m.inject(fault);
        assert!(matches!(
            u.flush(d, &mut g),
            Err(Error::CommandError { .. })
        ));
        assert!(
            m.atc_holds(sid(DEV), None, 0x3000),
            "{fault:?}: not invalidated"
        );
        // The caller gives up on that gather (its pages leak) and retries as a whole.
        let mut retry = Gather::new();
        assert_eq!(u.unmap(d, Iova::new(0x3000), K4, &mut retry), Ok(0));
        u.flush(d, &mut retry).unwrap();
        assert!(
            !m.atc_holds(sid(DEV), None, 0x3000),
            "{fault:?}: the retry must reissue the device-TLB invalidation"
        );
    }
}

/// Item 4: a time-out in the middle of a batch aborts the descriptors after it; the retry
/// issues them all (here: the second device's invalidation).
#[test]
fn device_tlb_timeout_mid_batch_reissues_the_rest() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_dt(true));
    let (u, d) = ats_unit_and_domain(&m, &a);
    let dev2 = DeviceId(0x0028);
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    u.attach_with(dev2, None, d, ats).unwrap();
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    for dev in [DEV, dev2] {
        m.ats_translate(sid(dev), None, 0x3000, Access::READ)
            .unwrap();
    }
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    m.inject(Injection::DeviceTlbTimeoutAt(1));
    assert!(u.flush(d, &mut g).is_err());
    assert!(
        m.atc_holds(sid(dev2), None, 0x3000),
        "aborted with the batch"
    );
    u.flush(d, &mut g).unwrap();
    for dev in [DEV, dev2] {
        assert!(!m.atc_holds(sid(dev), None, 0x3000));
    }
    assert_consistent(&u, &m, &a);
}

/// A unit left running by a previous owner (firmware, the kernel before kexec): translation on,
/// its queue and tables live, device 00:04.0 translating 0 to `0x4000_0000`.
fn previous_owner<'a>(m: &'a VtdModel<'a>, a: &'a Arena, mode: Mode) -> DomainHandle {
    let old = VtdUnit::new(m, a, config(mode)).unwrap();
    old.enable().unwrap();
    let d = old.domain_alloc(&DomainConfig::default()).unwrap();
    old.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    old.attach(DEV, None, d).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_ok());
    // Gone without a word when `old` goes out of scope: dropping a unit leaks its pages,
    // which the hardware still walks.
    d
}

/// Item 5: taking over a running unit never lets DMA pass untranslated: translation stays on,
/// the unit is pointed at the new (blocking) root table, and every cache is invalidated.
#[test]
fn takeover_blocks_dma_instead_of_passing_it_through() {
    for mode in [Mode::Legacy, Mode::Scalable] {
        let a = arena();
        let cfg = match mode {
            Mode::Legacy => VtdModelConfig::qemu_default(),
            Mode::Scalable => VtdModelConfig::scalable(),
        };
        let m = VtdModel::new(&a, cfg);
        previous_owner(&m, &a, mode);
        m.reset_stats();
        let u = VtdUnit::new(&m, &a, config(mode)).unwrap();
        u.enable().unwrap();
        assert!(u.is_enabled());
        assert_eq!(
            m.stats().translation_disables,
            0,
            "{mode:?}: TE was turned off"
        );
        assert!(m.stats().root_table_latches >= 1);
        // Blocked, not translated by the old tables nor their cached entries.
        assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        u.attach(DEV, None, d).unwrap();
        let t = m.translate(sid(DEV), None, 0, Access::READ).unwrap();
        assert_eq!(t.pa, 0x5000_0000);
    }
}

/// Item 5: a previous owner in the other root-table mode cannot be taken over without turning
/// translation off (RTADDR.TTM may change only with TE clear): refused, nothing changed.
#[test]
fn takeover_across_root_table_modes_is_refused() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    previous_owner(&m, &a, Mode::Legacy);
    m.reset_stats();
    let u = VtdUnit::new(&m, &a, config(Mode::Scalable)).unwrap();
    assert!(u.enable().is_err());
    assert_eq!(m.stats().translation_disables, 0);
    assert_eq!(m.stats().root_table_latches, 0);
    // What the embedder may do instead, knowingly: disable, then enable.
    u.disable().unwrap();
    u.enable().unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
}

/// Item 6: queue errors the previous owner left (IQE, ITE, ICE) are cleared before the new
/// queue starts, so they neither stop it nor make `enable` fail.
#[test]
fn takeover_clears_stale_queue_errors() {
    for stale in [1 << 4, 1 << 5, 1 << 6, 0x70] {
        let a = arena();
        let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
        previous_owner(&m, &a, Mode::Legacy);
        m.leave_queue_errors(stale);
        let u = VtdUnit::new(&m, &a, config(Mode::Legacy)).unwrap();
        u.enable()
            .unwrap_or_else(|e| panic!("FSTS {stale:#x} left: {e:?}"));
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0x5000_0000), K4, RW)
            .unwrap();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        assert_consistent(&u, &m, &a);
    }
}

/// Item 6: a previous owner's queue that never drains does not stop the takeover (Linux waits
/// a bounded time, then turns the queue off regardless).
#[test]
fn takeover_carries_on_when_the_old_queue_does_not_drain() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let old = VtdUnit::new(&m, &a, config(Mode::Legacy)).unwrap();
    old.enable().unwrap();
    let d = old.domain_alloc(&DomainConfig::default()).unwrap();
    old.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    old.unmap(d, Iova::new(0), K4, &mut g).unwrap();
    m.inject(Injection::StallWaitsUntilQueueOff);
    assert!(old.flush(d, &mut g).is_err(), "the old queue is stuck");
    // Gone: the gather's pages and the unit's tables leak (dropping either frees nothing).
    drop(g);
    let u = VtdUnit::new(&m, &a, config(Mode::Legacy)).unwrap();
    u.enable().unwrap();
    assert_eq!(m.stats().translation_disables, 0);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    assert_eq!(
        m.translate(sid(DEV), None, 0, Access::READ).unwrap().pa,
        0x5000_0000
    );
}

/// A register window that counts the unit's reads of `FSTS`: one per poll of a queue wait.
struct CountingPolls<'a> {
    inner: &'a VtdModel<'a>,
    fsts_reads: std::sync::atomic::AtomicU64,
}

impl iommu_engine::mmio::RegisterWindow for CountingPolls<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if offset == iommu_engine::sim::vtd::regs::FSTS {
            self.fsts_reads
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.inner.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

/// Item 4: a wait behind device-TLB invalidations polls `device_tlb_poll_budget` times (a
/// device may take up to a minute to answer), any other wait `poll_budget` times.
#[test]
fn device_tlb_waits_have_their_own_budget() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_dt(true));
    let w = CountingPolls {
        inner: &m,
        fsts_reads: Default::default(),
    };
    let cfg = VtdConfig {
        poll_budget: 100,
        device_tlb_poll_budget: 5000,
        ..VtdConfig::legacy()
    };
    let u = VtdUnit::new(&w, &a, cfg).unwrap();
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let polls = |f: &dyn Fn() -> Result<(), Error>| {
        m.inject(Injection::StallWaits);
        let before = w.fsts_reads.load(std::sync::atomic::Ordering::Relaxed);
        assert!(is_timeout(f()));
        m.clear_injections();
        w.fsts_reads.load(std::sync::atomic::Ordering::Relaxed) - before
    };
    let flush = || {
        u.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)?;
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g)?;
        u.flush(d, &mut g)
    };
    let without_ats = polls(&flush);
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    u.attach_with(DEV, None, d, ats).unwrap();
    let with_ats = polls(&flush);
    assert!((100..200).contains(&without_ats), "{without_ats} polls");
    assert!((5000..5100).contains(&with_ats), "{with_ats} polls");
}

/// Review of issue 14: a takeover `enable` that fails after the new root table is latched (here
/// the new queue's page cannot be allocated) leaves translation on through this unit's tables
/// with no invalidation interface. Calls that need an invalidation then fail with a typed
/// error instead of dropping it and reporting `Ok`; a retried `enable` completes the takeover
/// and the same calls succeed.
#[test]
fn failed_takeover_refuses_invalidations_while_translating() {
    use iommu_engine::sim::FailPolicy;
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    previous_owner(&m, &a, Mode::Legacy);
    let u = VtdUnit::new(&m, &a, config(Mode::Legacy)).unwrap();
    a.set_fail_policy(FailPolicy::Nth(1));
    let r = u.enable();
    a.set_fail_policy(FailPolicy::Never);
    assert!(r.is_err(), "the queue allocation was to fail: {r:?}");
    assert!(u.is_enabled(), "TE stays on through a takeover");
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    // Publishing the context entry needs a context-cache invalidation.
    let attached = u.attach(DEV, None, d);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
    let f = u.flush(d, &mut g);
    let stale = m.translate(sid(DEV), None, 0, Access::READ).is_ok();
    assert!(
        !(f.is_ok() && stale),
        "flush returned Ok while a stale IOTLB entry still translates"
    );
    assert!(f.is_err(), "an invalidation was dropped and Ok reported");
    assert!(
        attached.is_err() || f.is_err(),
        "attach and flush both succeeded with no invalidation issued"
    );
    assert_eq!(u.stats().dropped, 0, "requests dropped while translating");
    // The retry completes the takeover; the owed flush is then issued.
    u.enable().unwrap();
    if attached.is_err() {
        u.attach(DEV, None, d).unwrap();
    }
    u.flush(d, &mut g).unwrap();
    assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
    assert_consistent(&u, &m, &a);
}

/// Scalable mode under caching mode: a device's not-present context entry may be cached (tagged
/// with DID 0). An attach that makes the context entry present and then runs out of memory
/// (for the PASID table) leaves it present; the retry finds it present
/// and must still invalidate the context cache, or the device stays blocked by the cached
/// not-present entry. Every allocation of the attach is failed in turn.
#[test]
fn scalable_caching_mode_attach_retried_after_no_memory_invalidates_the_context() {
    use iommu_engine::sim::FailPolicy;
    let mut failed = 0;
    for n in 1..=8 {
        let a = arena();
        let m = VtdModel::new(&a, VtdModelConfig::scalable().with_caching_mode(true));
        let u = unit(&m, &a, Mode::Scalable);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        // Another device on the bus: the root entry is present, so that a DMA before the
        // attach caches DEV's not-present context entry.
        u.attach(DeviceId(0x0028), None, d).unwrap();
        assert!(m.translate(sid(DEV), None, 0, Access::READ).is_err());
        a.set_fail_policy(FailPolicy::Nth(n));
        let first = u.attach(DEV, None, d);
        a.set_fail_policy(FailPolicy::Never);
        assert_consistent(&u, &m, &a);
        match first {
            Ok(()) => {}
            Err(Error::NoMemory) => {
                failed += 1;
                u.attach(DEV, None, d).unwrap();
            }
            Err(e) => panic!("allocation {n}: {e:?}"),
        }
        assert_consistent(&u, &m, &a);
        assert_eq!(
            m.translate(sid(DEV), None, 0, Access::READ).map(|t| t.pa),
            Ok(0x4000_0000),
            "allocation {n} failed ({first:?}); after the retry the device is still blocked"
        );
    }
    assert!(
        failed >= 2,
        "the attach allocates its directory and PASID table"
    );
}

/// A drain of at most `max` fault records reports and clears only those (VT-d 4.1 §7.2.1,
/// §11.4.9.x): the rest stay pending for the next call, found even though `FSTS.FRI` names
/// the first record of the batch, which the previous call cleared (hardware moves FRI only
/// when it sets PPF). Four fault recording registers (`CAP.NFR` = 3), three faults.
#[test]
fn a_drain_of_at_most_max_records_clears_only_those() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_nfr(3));
    let u = unit(&m, &a, Mode::Legacy);
    for i in 0..3u64 {
        assert!(m
            .translate(sid(DEV), None, 0x10_0000 + i * K4, Access::WRITE)
            .is_err());
    }
    let mut seen = Vec::new();
    let mut counts = Vec::new();
    for _ in 0..4 {
        let s = u.drain_faults_at_most(1, |_, r| seen.push(r.fault_info()));
        counts.push((s.records, s.still_pending));
    }
    assert_eq!(
        counts,
        [(1, true), (1, true), (1, false), (0, false)],
        "(records, still pending) per drain of at most 1"
    );
    assert_eq!(seen, [0x10_0000, 0x10_1000, 0x10_2000]);
    // Nothing read is dropped while records wait: a fourth and a fifth fault are recorded
    // into the freed registers and come out after the older one, a drain of 0 reads none.
    assert!(m
        .translate(sid(DEV), None, 0x20_0000, Access::WRITE)
        .is_err());
    assert!(m
        .translate(sid(DEV), None, 0x20_1000, Access::WRITE)
        .is_err());
    assert!(m
        .translate(sid(DEV), None, 0x20_2000, Access::WRITE)
        .is_err());
    assert_eq!(u.drain_faults_at_most(0, |_, _| {}).records, 0);
    seen.clear();
    let s = u.drain_faults_at_most(2, |_, r| seen.push(r.fault_info()));
    assert_eq!((s.records, s.still_pending), (2, true));
    let s = u.drain_faults(|_, r| seen.push(r.fault_info()));
    assert_eq!(
        (s.records, s.still_pending, s.overflowed),
        (1, false, false)
    );
    assert_eq!(seen, [0x20_0000, 0x20_1000, 0x20_2000]);
}

/// The device-TLB invalidations a descriptor log holds, as (SID, PASID): the non-PASID form
/// (type 3, `SID` 47:32) and the PASID-based one (type 8, `SID` 31:16, `PASID` 51:32).
fn device_tlb_targets(log: &[[u64; 4]]) -> Vec<(u16, Option<u32>)> {
    log.iter()
        .filter_map(|d| match d[0] & 0xf | (d[0] >> 5) & 0x70 {
            0x3 => Some(((d[0] >> 32) as u16, None)),
            0x8 => Some(((d[0] >> 16) as u16, Some(((d[0] >> 32) & 0xF_FFFF) as u32))),
            _ => None,
        })
        .collect()
}

/// How `DEV` (ATS, its ATC holding d1's page) leaves d1 in
/// `a_flush_reaches_the_device_tlb_of_a_device_whose_move_or_detach_failed`.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// To d2, with ATS.
    Replace,
    /// To d2 with the trait's plain `attach` (no ATS asked).
    ReplaceWithoutAts,
    Detach,
    /// PASID 5 to d2 (scalable mode).
    PasidReplace,
    /// PASID 5 detached, `DEV`'s requests without PASID staying on d1 (scalable mode).
    PasidDetach,
}

/// A move or detach of `DEV` away from d1 that fails part-way (the tear-down's invalidation
/// times out, the queue rejects a descriptor, the device does not answer its device-TLB
/// invalidation) may leave d1 reachable by the device: its entry, a cached context or PASID
/// entry, IOTLB entries of d1, or its own ATC. The device goes on asking (a translation
/// request answered from whatever still translates for it refills its ATC); then the caller
/// unmaps d1's page and flushes d1. If that flush returns `Ok` it frees the page, so it must
/// have reached the device's ATC: when the ATC held d1's page, the flush issued a device-TLB
/// invalidation for `DEV` (and the PASID), and afterwards nothing of the page is left for it.
///
/// Passed when written (no defect): VT-d keeps a failed tear-down's attachment in its books,
/// on d1, ATS included, until the retry or a detach completes it (`ConfigState`: `settled`
/// false, never removed before its invalidation completed), so d1's flushes keep counting it
/// among the domain's ATS attachments; the entry published for d2 only after the old one's
/// tear-down (device TLB included) completed. The SMMUv3 defect of this family (a retiring
/// stream left out of its old domain's flushes) has no VT-d counterpart.
#[test]
fn a_flush_reaches_the_device_tlb_of_a_device_whose_move_or_detach_failed() {
    const PA_A: u64 = 0x4000_0000;
    const PA_B: u64 = 0x5000_0000;
    const IOVA: u64 = 0x3000;
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    let first_stage = DomainConfig {
        stage: iommu_engine::iommu::Stage::First,
        ..DomainConfig::default()
    };
    let variants = [
        (
            "legacy",
            VtdModelConfig::qemu_default().with_dt(true),
            Mode::Legacy,
            DomainConfig::default(),
        ),
        (
            "legacy, caching mode",
            VtdModelConfig::qemu_default()
                .with_dt(true)
                .with_caching_mode(true),
            Mode::Legacy,
            DomainConfig::default(),
        ),
        (
            "scalable",
            VtdModelConfig::scalable(),
            Mode::Scalable,
            DomainConfig::default(),
        ),
        (
            "scalable, first stage",
            VtdModelConfig::scalable(),
            Mode::Scalable,
            first_stage,
        ),
        (
            "scalable, caching mode",
            VtdModelConfig::scalable().with_caching_mode(true),
            Mode::Scalable,
            DomainConfig::default(),
        ),
    ];
    let mut faults = vec![
        Injection::StallWaits,
        Injection::DeviceTlbTimeoutAt(1),
        Injection::CompletionErrorAt(1),
    ];
    faults.extend((1..=6).map(Injection::QueueErrorAt));
    let (mut failed, mut held, mut owed) = (0, 0, 0);
    for (name, model, mode, dc) in variants {
        let leaves: &[Leave] = match mode {
            Mode::Legacy => &[Leave::Replace, Leave::ReplaceWithoutAts, Leave::Detach],
            Mode::Scalable => &[
                Leave::Replace,
                Leave::ReplaceWithoutAts,
                Leave::Detach,
                Leave::PasidReplace,
                Leave::PasidDetach,
            ],
        };
        for &leave in leaves {
            for &fault in &faults {
                let cell = format!("{name}, {leave:?}, {fault:?}");
                let a = arena();
                let m = VtdModel::new(&a, model);
                let u = unit(&m, &a, mode);
                let d1 = u.domain_alloc(&dc).unwrap();
                let d2 = u.domain_alloc(&dc).unwrap();
                u.map(d1, Iova::new(IOVA), PhysAddr::new(PA_A), K4, RW)
                    .unwrap();
                u.map(d2, Iova::new(IOVA), PhysAddr::new(PA_B), K4, RW)
                    .unwrap();
                u.attach_with(DEV, None, d1, ats).unwrap();
                let p5 = iommu_engine::iommu::Pasid::new(5);
                if mode == Mode::Scalable {
                    u.attach_with(DEV, p5, d1, ats).unwrap();
                }
                let pasid = match leave {
                    Leave::PasidReplace | Leave::PasidDetach => Some(5),
                    _ => None,
                };
                m.ats_translate(sid(DEV), pasid, IOVA, Access::READ)
                    .unwrap();
                m.inject(fault);
                let r = match leave {
                    Leave::Replace => u.attach_with(DEV, None, d2, ats),
                    Leave::ReplaceWithoutAts => u.attach(DEV, None, d2),
                    Leave::Detach => u.detach(DEV, None),
                    Leave::PasidReplace => u.attach_with(DEV, p5, d2, ats),
                    Leave::PasidDetach => u.detach(DEV, p5),
                };
                m.clear_injections();
                if r.is_ok() {
                    continue;
                }
                failed += 1;
                // The device asks again: whatever still translates for it refills its ATC.
                let _ = m.ats_translate(sid(DEV), pasid, IOVA, Access::READ);
                let atc_holds_d1 = m.atc_translation(sid(DEV), pasid, IOVA) == Some(PA_A);
                let mut g = Gather::new();
                assert_eq!(u.unmap(d1, Iova::new(IOVA), K4, &mut g), Ok(K4), "{cell}");
                m.reset_stats();
                if u.flush(d1, &mut g).is_err() {
                    owed += 1;
                    continue;
                }
                if atc_holds_d1 {
                    held += 1;
                    let targets = device_tlb_targets(&m.descriptor_log());
                    assert!(
                        targets.contains(&(sid(DEV), pasid)),
                        "{cell} ({r:?}): DEV's ATC held d1's page, the flush of d1 invalidated \
                         the device TLBs of {targets:x?} only"
                    );
                }
                assert_ne!(
                    m.atc_translation(sid(DEV), pasid, IOVA),
                    Some(PA_A),
                    "{cell} ({r:?}): d1 flushed, DEV's ATC still holds its page"
                );
                let _ = m.ats_translate(sid(DEV), pasid, IOVA, Access::READ);
                assert_ne!(
                    m.atc_translation(sid(DEV), pasid, IOVA),
                    Some(PA_A),
                    "{cell} ({r:?}): d1 flushed, DEV can still reach its page"
                );
                assert_consistent(&u, &m, &a);
            }
        }
    }
    println!("{failed} failed calls, {held} with d1's page in DEV's ATC, {owed} flushes owed");
    assert!(held > 0 && held < failed, "the cells must reach both cases");
}

/// As `a_flush_reaches_the_device_tlb_of_a_device_whose_move_or_detach_failed`, for a device
/// on a nested (user) domain: `DEV` (ATS) translates through a guest's first stage over a nest
/// parent P, its ATC holding the nested translation of `IOVA`; its move to d2 (with or
/// without ATS) or its detach fails part-way; the device asks again; then P unmaps the
/// guest-physical page behind `IOVA` and is flushed. If that flush returns `Ok` it frees the
/// page, so where the ATC held it the flush issued a device-TLB invalidation for `DEV` and
/// afterwards nothing of the page is left for it. Passed when written (no defect): the user
/// domain keeps the attachment in its slot until the tear-down completed, and a nest parent's
/// flush invalidates the whole device TLB of each ATS attachment of its user domains, settled
/// or not (`push_user_children`).
#[test]
fn a_nest_parent_flush_reaches_the_device_tlb_of_a_device_whose_move_from_its_child_failed() {
    use iommu_engine::iommu::UserStage1;
    use iommu_engine::mem::PageAllocator;
    const PA_A: u64 = 0x4000_0000;
    const PA_B: u64 = 0x5000_0000;
    const IOVA: u64 = 0x3000;
    /// Guest-physical address of the guest's page `i`: its PML4, PDPT, PD, PT (0-3), and its
    /// data page (4), which P maps to `PA_A`.
    const fn gpa(i: u64) -> u64 {
        0x10_0000 + i * K4
    }
    // First-stage entries (VT-d §9.7): P, R/W, U/S, A for a table; D too for a leaf.
    const FS_TABLE: u64 = 0x27;
    const FS_LEAF: u64 = 0x67;
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    let mut faults = vec![
        Injection::StallWaits,
        Injection::DeviceTlbTimeoutAt(1),
        Injection::CompletionErrorAt(1),
    ];
    faults.extend((1..=6).map(Injection::QueueErrorAt));
    let (mut failed, mut held) = (0, 0);
    for leave in [Leave::Replace, Leave::ReplaceWithoutAts, Leave::Detach] {
        for &fault in &faults {
            let cell = format!("nested, {leave:?}, {fault:?}");
            let a = arena();
            let m = VtdModel::new(&a, VtdModelConfig::scalable());
            let u = unit(&m, &a, Mode::Scalable);
            let parent = u
                .domain_alloc(&DomainConfig {
                    nest_parent: true,
                    ..DomainConfig::default()
                })
                .unwrap();
            let tables: Vec<u64> = (0..4).map(|_| a.alloc(12).unwrap().pa.get()).collect();
            for (i, &pa) in tables.iter().enumerate() {
                u.map(parent, Iova::new(gpa(i as u64)), PhysAddr::new(pa), K4, RW)
                    .unwrap();
            }
            u.map(parent, Iova::new(gpa(4)), PhysAddr::new(PA_A), K4, RW)
                .unwrap();
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
            let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
            u.map(d2, Iova::new(IOVA), PhysAddr::new(PA_B), K4, RW)
                .unwrap();
            u.attach_with(DEV, None, child, ats).unwrap();
            let t = m.ats_translate(sid(DEV), None, IOVA, Access::READ).unwrap();
            assert_eq!(t.pa, PA_A, "setup: the nested translation");
            m.inject(fault);
            let r = match leave {
                Leave::Replace => u.attach_with(DEV, None, d2, ats),
                Leave::ReplaceWithoutAts => u.attach(DEV, None, d2),
                _ => u.detach(DEV, None),
            };
            m.clear_injections();
            if r.is_ok() {
                continue;
            }
            failed += 1;
            let _ = m.ats_translate(sid(DEV), None, IOVA, Access::READ);
            let atc_holds_a = m.atc_translation(sid(DEV), None, IOVA) == Some(PA_A);
            let mut g = Gather::new();
            assert_eq!(
                u.unmap(parent, Iova::new(gpa(4)), K4, &mut g),
                Ok(K4),
                "{cell}"
            );
            m.reset_stats();
            if u.flush(parent, &mut g).is_err() {
                continue;
            }
            if atc_holds_a {
                held += 1;
                let targets = device_tlb_targets(&m.descriptor_log());
                assert!(
                    targets.contains(&(sid(DEV), None)),
                    "{cell} ({r:?}): DEV's ATC held the parent's page, the parent's flush \
                     invalidated the device TLBs of {targets:x?} only"
                );
            }
            let _ = m.ats_translate(sid(DEV), None, IOVA, Access::READ);
            assert_ne!(
                m.atc_translation(sid(DEV), None, IOVA),
                Some(PA_A),
                "{cell} ({r:?}): the parent flushed, DEV can still reach its page"
            );
        }
    }
    println!("{failed} failed calls, {held} with the parent's page in DEV's ATC");
    assert!(held > 0, "the cells must reach the case");
}
