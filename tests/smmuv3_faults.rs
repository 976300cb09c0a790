//! Issue 14, items 7 and 8 and the MSI abort: how the SMMUv3 unit meets command errors, service
//! failure mode and aborted completion MSIs, driven against the behavioural model with the fault
//! injected at a chosen command.

use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Error, Iommu, Pasid, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::{op, Injection, SmmuModel, SmmuModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::smmuv3::cmdq::SyncMode;
use iommu_engine::smmuv3::{SmmuConfig, SmmuError, SmmuUnit};

const K4: u64 = 1 << 12;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const SID: u32 = 0x20;
const IOVA: u64 = 0x40_0000;
const PA: u64 = 0x4000_0000;

type Unit<'a> = SmmuUnit<&'a SmmuModel<'a>, &'a Arena>;

fn cfg() -> SmmuConfig {
    SmmuConfig {
        poll_budget: 200,
        ..SmmuConfig::default()
    }
}

fn s2() -> DomainConfig {
    DomainConfig {
        stage: Stage::Second,
        ..DomainConfig::default()
    }
}

/// An enabled unit with a stage-2 domain attached to `SID`, 4 pages mapped at `IOVA` and their
/// translations cached by the model's TLB.
fn setup<'a>(
    model: &'a SmmuModel<'a>,
    mem: &'a Arena,
    cfg: SmmuConfig,
) -> (Unit<'a>, DomainHandle) {
    let u = SmmuUnit::new(model, mem, cfg).unwrap();
    u.enable().unwrap();
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(d, Iova::new(IOVA), PhysAddr::new(PA), 4 * K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    for i in 0..4 {
        assert!(model
            .translate(SID, None, IOVA + i * K4, Access::READ)
            .is_ok());
    }
    model.reset_stats();
    (u, d)
}

fn translates(model: &SmmuModel<'_>, iova: u64) -> bool {
    model.translate(SID, None, iova, Access::READ).is_ok()
}

/// Unmaps the 2 MiB around `IOVA`: the leaf table goes into the gather.
fn unmap_all(u: &Unit<'_>, d: DomainHandle) -> Gather {
    let mut g = Gather::new();
    u.unmap(d, Iova::new(IOVA), 1 << 21, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 1);
    g
}

#[test]
fn a_transient_fetch_abort_retries_the_command_instead_of_dropping_it() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    let mut g = unmap_all(&u, d);
    // The TLBI (first command of the flush) cannot be fetched once.
    model.inject(Injection::CommandAbortAt { at: 0, times: 1 });
    u.flush(d, &mut g).unwrap();
    let st = model.stats();
    assert_eq!(st.cerrors, 1);
    assert_eq!(
        st.commands_of(op::TLBI_S2_IPA) + st.commands_of(op::TLBI_S12_VMALL),
        1
    );
    assert_eq!(
        st.syncs, 1,
        "the aborted command was not replaced by a CMD_SYNC"
    );
    assert_eq!(g.freed_pages(), 0);
    assert!(
        !translates(&model, IOVA),
        "the stale translation survived the flush"
    );

    // The same at a CFGI_STE: the attach completes and the new STE is the one used.
    let d2 = u.domain_alloc(&s2()).unwrap();
    u.map(d2, Iova::new(IOVA), PhysAddr::new(PA + 0x10_0000), K4, RW)
        .unwrap();
    model.reset_stats();
    model.inject(Injection::CommandAbortAt { at: 0, times: 1 });
    u.attach(DeviceId(SID), None, d2).unwrap();
    assert_eq!(model.stats().cerrors, 1);
    let t = model.translate(SID, None, IOVA, Access::READ).unwrap();
    assert_eq!(t.pa, PA + 0x10_0000);
}

#[test]
fn a_persistent_fetch_abort_fails_keeps_the_command_and_a_retry_completes() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    let mut g = unmap_all(&u, d);
    let live = mem.live_pages().len();
    model.inject(Injection::CommandAbortAt {
        at: 0,
        times: u32::MAX,
    });
    let err = u.flush(d, &mut g).unwrap_err();
    // CERROR_ABT = 2 in the low byte of the code.
    assert!(
        matches!(err, Error::CommandError { code, .. } if code & 0xff == 2),
        "{err:?}"
    );
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(mem.live_pages().len(), live);
    model.clear_injections();
    u.flush(d, &mut g).unwrap();
    assert_eq!(mem.live_pages().len(), live - 1);
    assert!(!translates(&model, IOVA));
    // Nothing was ever replaced: no command consumed was a CMD_SYNC where a TLBI stood.
    let st = model.stats();
    assert!(st.commands_of(op::TLBI_S2_IPA) + st.commands_of(op::TLBI_S12_VMALL) >= 1);
}

#[test]
fn an_atc_invalidation_timeout_fails_the_flush_though_the_repeated_sync_completes() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let u = SmmuUnit::new(&model, &mem, cfg()).unwrap();
    u.enable().unwrap();
    u.set_ats(DeviceId(SID), true).unwrap();
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(d, Iova::new(IOVA), PhysAddr::new(PA), 4 * K4, RW)
        .unwrap();
    u.attach(DeviceId(SID), None, d).unwrap();
    let mut g = unmap_all(&u, d);
    model.reset_stats();
    // A flush of an ATS domain: TLBI, CMD_SYNC, ATC_INV, CMD_SYNC. The second sync reports the
    // ATC invalidation timeout once: repeating it completes, but without the invalidation
    // (§3.9.1.4), so the flush fails and keeps its pages; its retry issues the ATC_INV again.
    model.inject(Injection::AtcInvSyncAt { at: 1, times: 1 });
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(err, Error::CommandError { code, .. } if code & 0xff == 3),
        "{err:?}"
    );
    let st = model.stats();
    assert_eq!(st.cerrors, 1);
    assert_eq!(st.commands_of(op::ATC_INV), 1);
    assert_eq!(st.syncs, 2, "the repeated CMD_SYNC completed");
    assert_eq!(
        g.freed_pages(),
        1,
        "pages freed after an ATC invalidation timed out"
    );
    model.reset_stats();
    u.flush(d, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 0);
    assert_eq!(
        model.stats().commands_of(op::ATC_INV),
        1,
        "the retry reissued the ATC_INV"
    );

    // Persistent: the flush fails with the code, keeps its pages, and a retry completes.
    u.map(d, Iova::new(IOVA), PhysAddr::new(PA), K4, RW)
        .unwrap();
    let mut g = unmap_all(&u, d);
    model.inject(Injection::AtcInvSyncAt {
        at: 1,
        times: u32::MAX,
    });
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(err, Error::CommandError { code, .. } if code & 0xff == 3),
        "{err:?}"
    );
    assert_eq!(g.freed_pages(), 1);
    model.clear_injections();
    model.reset_stats();
    u.flush(d, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 0);
    assert_eq!(
        model.stats().commands_of(op::ATC_INV),
        1,
        "the retry reissued the ATC_INV"
    );
}

/// How a domain `d` that a flush must reach leaves `SID` (see
/// `a_flush_reaches_the_atc_of_a_stream_still_retiring_its_domain`).
#[derive(Clone, Copy, Debug, PartialEq)]
enum TakeOff {
    /// Stage-2 `d`, the RID domain, replaced by another stage-2 domain.
    Replace,
    /// Stage-1 `d` on PASID 1 detached, another domain staying on PASID 2.
    DetachPasid,
    /// `d` a nest parent, its stage-1 child (the RID domain) replaced by a stage-2 domain.
    ReplaceChild,
}

/// An enabled unit with ATS on `SID`, the domain `d` a flush must reach with 4 pages mapped
/// at `IOVA`, attached (itself or its child) as `case` says, and the other domain `d2`.
fn ats_setup<'a>(
    model: &'a SmmuModel<'a>,
    mem: &'a Arena,
    case: TakeOff,
) -> (Unit<'a>, DomainHandle, DomainHandle) {
    let u = SmmuUnit::new(model, mem, cfg()).unwrap();
    u.enable().unwrap();
    u.set_ats(DeviceId(SID), true).unwrap();
    let conf = match case {
        TakeOff::DetachPasid => DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        },
        TakeOff::Replace => s2(),
        TakeOff::ReplaceChild => DomainConfig {
            nest_parent: true,
            ..s2()
        },
    };
    let d = u.domain_alloc(&conf).unwrap();
    u.map(d, Iova::new(IOVA), PhysAddr::new(PA), 4 * K4, RW)
        .unwrap();
    let d2 = match case {
        TakeOff::DetachPasid => {
            let d2 = u.domain_alloc(&conf).unwrap();
            u.attach(DeviceId(SID), Pasid::new(1), d).unwrap();
            u.attach(DeviceId(SID), Pasid::new(2), d2).unwrap();
            d2
        }
        TakeOff::Replace => {
            u.attach(DeviceId(SID), None, d).unwrap();
            u.domain_alloc(&conf).unwrap()
        }
        TakeOff::ReplaceChild => {
            let s1 = DomainConfig {
                stage: Stage::First,
                ..DomainConfig::default()
            };
            let child = u.domain_alloc_nested(&s1, d).unwrap();
            u.attach(DeviceId(SID), None, child).unwrap();
            u.domain_alloc(&s2()).unwrap()
        }
    };
    model.reset_stats();
    (u, d, d2)
}

/// What takes `d` (or its child) off `SID`.
fn take_off(u: &Unit<'_>, case: TakeOff, d2: DomainHandle) -> Result<(), Error> {
    match case {
        TakeOff::DetachPasid => u.detach(DeviceId(SID), Pasid::new(1)),
        TakeOff::Replace | TakeOff::ReplaceChild => u.attach(DeviceId(SID), None, d2),
    }
}

/// A stream whose retirement of `d` failed (the CMD_SYNC after the whole-stream CMD_ATC_INV
/// met CERROR_ATC_INV_SYNC) keeps `d` retiring: its ATC may still hold `d`'s translations, and
/// the device answers translated requests from it (its STE has EATS). A flush of `d` that
/// unmapped something must reach that ATC (CMD_ATC_INV of the stream, for the SubstreamID `d`
/// had, then a CMD_SYNC) before it frees the pages, or fail and keep them. The replace of a
/// RID domain, the detach of one PASID while another stays attached, and the replace of a
/// nest parent's stage-1 child (the flush of the parent).
#[test]
fn a_flush_reaches_the_atc_of_a_stream_still_retiring_its_domain() {
    let model_cfg = SmmuModelConfig::qemu_like()
        .with_ats(true)
        .with_ssid_bits(10);
    for case in [
        TakeOff::Replace,
        TakeOff::DetachPasid,
        TakeOff::ReplaceChild,
    ] {
        // Where the take-off's last CMD_SYNC (that of its CMD_ATC_INV) stands.
        let syncs = {
            let mem = Arena::with_defaults().unwrap();
            let model = SmmuModel::new(&mem, model_cfg);
            let (u, _, d2) = ats_setup(&model, &mem, case);
            take_off(&u, case, d2).unwrap();
            model.stats().syncs
        };
        let mem = Arena::with_defaults().unwrap();
        let model = SmmuModel::new(&mem, model_cfg);
        let (u, d, d2) = ats_setup(&model, &mem, case);
        model.inject(Injection::AtcInvSyncAt {
            at: syncs as u32 - 1,
            times: 1,
        });
        let err = take_off(&u, case, d2).unwrap_err();
        assert!(
            matches!(err, Error::CommandError { code, .. } if code & 0xff == 3),
            "{case:?}: {err:?}"
        );
        let mut g = unmap_all(&u, d);
        model.reset_stats();
        let r = u.flush(d, &mut g);
        let log = model.command_log();
        let ssid = |w: u64| (w & 1 << 11 != 0).then_some((w >> 12) & 0xf_ffff);
        let for_the_stream = |w: &[u64; 2]| {
            w[0] & 0xff == u64::from(op::ATC_INV)
                && w[0] >> 32 == u64::from(SID)
                && ssid(w[0]) == (case == TakeOff::DetachPasid).then_some(1)
        };
        let synced = log.iter().rposition(for_the_stream).is_some_and(|i| {
            log[i + 1..]
                .iter()
                .any(|w| w[0] & 0xff == u64::from(op::CMD_SYNC))
        });
        match r {
            Ok(()) => {
                assert!(
                    synced,
                    "{case:?}: the flush freed {} page(s) without a CMD_ATC_INV of stream \
                     {SID:#x} and a CMD_SYNC after it ({} command(s), {} CMD_ATC_INV)",
                    1 - g.freed_pages(),
                    log.len(),
                    model.stats().commands_of(op::ATC_INV),
                );
                assert_eq!(g.freed_pages(), 0);
            }
            Err(e) => assert_eq!(g.freed_pages(), 1, "{case:?}: {e:?}"),
        }
        // The retry settles the stream.
        take_off(&u, case, d2).unwrap();
    }
}

#[test]
fn service_failure_mode_fails_the_unit_until_it_is_reset() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    model.inject(Injection::ServiceFailure);
    let sfm = |e: &Error| matches!(e, Error::Hardware { what, .. } if what.contains("SFM_ERR"));
    // Found by the event handler...
    let report = u.handle_events(16, |_| {});
    assert!(report.gerror.bits() & 1 << 8 != 0);
    assert!(u.has_failed());
    assert!(!u.is_enabled());
    // ...every later call fails with the typed error and changes nothing.
    let live = mem.live_pages().len();
    assert!(sfm(&u
        .map(d, Iova::new(0), PhysAddr::new(PA), K4, RW)
        .unwrap_err()));
    let mut g = Gather::new();
    assert!(sfm(&u.unmap(d, Iova::new(IOVA), K4, &mut g).unwrap_err()));
    assert!(sfm(&u.domain_alloc(&s2()).unwrap_err()));
    assert!(sfm(&u.detach(DeviceId(SID), None).unwrap_err()));
    assert!(sfm(&u.attach(DeviceId(SID + 1), None, d).unwrap_err()));
    assert!(sfm(&u.domain_free(d).unwrap_err()));
    assert_eq!(
        u.enable(),
        Err(SmmuError::ServiceFailure { gerror: 1 << 8 })
    );
    assert_eq!(mem.live_pages().len(), live);
    assert!(u.query(d, Iova::new(IOVA)).is_some(), "the books are kept");

    // The reset path: the SMMU is reset (here the model), then `enable` rebuilds from the books.
    model.reset();
    u.enable().unwrap();
    assert!(!u.has_failed());
    assert_eq!(
        model.translate(SID, None, IOVA, Access::READ).unwrap().pa,
        PA
    );
    let mut g = unmap_all(&u, d);
    u.flush(d, &mut g).unwrap();
    assert!(!translates(&model, IOVA));
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(d).unwrap();
}

#[test]
fn service_failure_found_by_a_command_wait_fails_the_call() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    let mut g = unmap_all(&u, d);
    model.inject(Injection::ServiceFailure);
    let live = mem.live_pages().len();
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(err, Error::Hardware { what, .. } if what.contains("SFM_ERR")),
        "{err:?}"
    );
    assert!(u.has_failed());
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(mem.live_pages().len(), live);
}

#[test]
fn an_aborted_completion_msi_is_reported_as_such_and_the_retry_completes() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_msi(true));
    let (u, d) = setup(
        &model,
        &mem,
        SmmuConfig {
            sync: SyncMode::Msi,
            poll_budget: 100_000,
            ..cfg()
        },
    );
    let mut g = unmap_all(&u, d);
    model.inject(Injection::SyncMsiAbort);
    let err = u.flush(d, &mut g).unwrap_err();
    assert!(
        matches!(err, Error::Hardware { what, .. } if what.contains("MSI_CMDQ_ABT_ERR")),
        "{err:?}"
    );
    assert_eq!(g.freed_pages(), 1);
    // The unit now observes completion through CMDQ_CONS: the retry completes, MSI still broken.
    u.flush(d, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 0);
    assert!(!translates(&model, IOVA));
}

#[test]
fn a_domain_free_whose_invalidation_fails_keeps_the_domain_for_the_retry() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    u.detach(DeviceId(SID), None).unwrap();
    let live = mem.live_pages().len();
    model.inject(Injection::SyncStall);
    assert_eq!(u.domain_free(d), Err(Error::Timeout { what: "CMD_SYNC" }));
    // The handle still names the domain, its tables are intact, its VMID is not handed out.
    assert_eq!(mem.live_pages().len(), live);
    assert!(u.query(d, Iova::new(IOVA)).is_some());
    model.clear_injections();
    let other = u.domain_alloc(&s2()).unwrap();
    assert_ne!(other, d);
    model.reset_stats();
    u.domain_free(d).unwrap();
    assert_eq!(model.stats().commands_of(op::TLBI_S12_VMALL), 1);
    assert!(mem.live_pages().len() < live);
    assert!(u.query(other, Iova::new(IOVA)).is_none());
    u.domain_free(other).unwrap();
}

#[test]
fn the_retry_of_an_attach_that_failed_part_way_completes_it() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    let d2 = u.domain_alloc(&s2()).unwrap();
    u.map(d2, Iova::new(IOVA), PhysAddr::new(PA + 0x10_0000), K4, RW)
        .unwrap();
    // The STE is rewritten in memory, then its CFGI_STE's CMD_SYNC never completes.
    model.inject(Injection::SyncStall);
    assert_eq!(
        u.attach(DeviceId(SID), None, d2),
        Err(Error::Timeout { what: "CMD_SYNC" })
    );
    model.clear_injections();
    // The old domain may still be in use through a cached STE: it cannot be freed yet.
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    model.reset_stats();
    u.attach(DeviceId(SID), None, d2).unwrap();
    let st = model.stats();
    assert!(
        st.commands_of(op::CFGI_STE) >= 1,
        "the retry invalidated the STE"
    );
    assert_eq!(
        st.commands_of(op::TLBI_S12_VMALL),
        1,
        "the retry invalidated the old domain's VMID"
    );
    assert_eq!(
        model.translate(SID, None, IOVA, Access::READ).unwrap().pa,
        PA + 0x10_0000
    );
    u.domain_free(d).unwrap();
}

#[test]
fn the_retry_of_a_detach_that_failed_part_way_completes_it() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    model.inject(Injection::SyncStall);
    assert_eq!(
        u.detach(DeviceId(SID), None),
        Err(Error::Timeout { what: "CMD_SYNC" })
    );
    model.clear_injections();
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    model.reset_stats();
    u.detach(DeviceId(SID), None).unwrap();
    assert_eq!(model.stats().commands_of(op::TLBI_S12_VMALL), 1);
    assert!(!translates(&model, IOVA));
    assert_eq!(
        u.detach(DeviceId(SID), None),
        Err(Error::NotAttached(DeviceId(SID)))
    );
    u.domain_free(d).unwrap();
}

#[test]
fn audit_reports_what_was_changed_underneath_the_unit() {
    use iommu_engine::mmio::RegisterWindow;
    use iommu_engine::sim::arena::PhysMem;
    use iommu_engine::smmuv3::{AuditError, StreamTableLayout};
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(
        &model,
        &mem,
        SmmuConfig {
            stream_table: StreamTableLayout::Linear,
            sid_bits: Some(8),
            ..cfg()
        },
    );
    let report = u.audit().unwrap();
    assert_eq!(
        (report.streams, report.live_stes, report.domains),
        (1, 1, 1)
    );
    assert_eq!(report.unsettled, 0);
    // The linear stream table: STE n at STRTAB_BASE.ADDR + 64 n.
    let base = model.read64(0x80) & ((1 << 52) - 1) & !0x3f;
    let ste = |sid: u64, w: u64| base + 64 * sid + 8 * w;
    let word = |pa: u64| PhysMem::read_u64(&mem, pa).unwrap();
    let good: Vec<u64> = (0..8).map(|w| word(ste(u64::from(SID), w))).collect();
    // A word of the live STE changed: the S2TTB points elsewhere.
    assert!(mem.write_u64(ste(u64::from(SID), 3), good[3] ^ 0x1000));
    assert_eq!(u.audit(), Err(AuditError::SteMismatch { sid: SID }));
    assert!(mem.write_u64(ste(u64::from(SID), 3), good[3]));
    // A copy of it at a StreamID nothing is attached to.
    for (w, v) in good.iter().enumerate().rev() {
        assert!(mem.write_u64(ste(u64::from(SID) + 1, w as u64), *v));
    }
    assert_eq!(u.audit(), Err(AuditError::StraySte { sid: SID + 1 }));
    for w in 0..8 {
        assert!(mem.write_u64(ste(u64::from(SID) + 1, w), if w == 0 { 1 } else { 0 }));
    }
    assert_eq!(u.audit().map(|r| r.live_stes), Ok(1));
    // The register no longer points at the table.
    model.reset();
    assert!(matches!(
        u.audit(),
        Err(AuditError::Register {
            name: "STRTAB_BASE",
            ..
        })
    ));
    u.enable().unwrap();
    assert!(u.audit().is_ok());
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(d).unwrap();
    assert_eq!(
        u.audit().map(|r| (r.streams, r.live_stes, r.domains)),
        Ok((0, 0, 0))
    );
}

/// Review of issue 14: a flush that failed leaves its invalidation owed by the domain
/// (`Iommu::flush`): a caller that drops the gather and retries unmap (0 bytes now) and flush
/// with a new, empty gather still gets the TLBI, and the stale translation is gone.
#[test]
fn a_failed_flush_is_owed_by_the_domain_and_reissued_with_an_empty_gather() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like());
    let (u, d) = setup(&model, &mem, cfg());
    let mut g = Gather::new();
    u.unmap(d, Iova::new(IOVA), K4, &mut g).unwrap();
    model.inject(Injection::CommandIllegalAt { at: 0 });
    assert!(u.flush(d, &mut g).is_err());
    model.clear_injections();
    drop(g);
    assert!(
        translates(&model, IOVA),
        "the failed TLBI left the entry cached"
    );
    model.reset_stats();
    let mut g2 = Gather::new();
    assert_eq!(u.unmap(d, Iova::new(IOVA), K4, &mut g2).unwrap(), 0);
    assert!(g2.is_empty());
    u.flush(d, &mut g2).unwrap();
    let st = model.stats();
    assert_eq!(st.commands_of(op::TLBI_S12_VMALL), 1, "the owed TLBI");
    assert_eq!(st.syncs, 1);
    assert!(
        !translates(&model, IOVA),
        "stale TLB entry survives a retried unmap+flush that returned Ok"
    );
    // Paid: the next empty flush issues nothing.
    model.reset_stats();
    u.flush(d, &mut Gather::new()).unwrap();
    assert_eq!(model.stats().syncs, 0);
    assert!(translates(&model, IOVA + K4), "the other pages stay mapped");
}

/// Whether `log` holds, after its last CFGI_STE of `sid`, a CMD_ATC_INV of `sid`'s whole ATC
/// (no SubstreamID, Size 52 from 0) followed by a CMD_SYNC.
fn whole_atc_invalidated_after_the_ste(log: &[[u64; 2]], sid: u32) -> bool {
    let of = |w: &[u64; 2], o: u8| w[0] & 0xff == u64::from(o) && w[0] >> 32 == u64::from(sid);
    let Some(ste) = log.iter().rposition(|w| of(w, op::CFGI_STE)) else {
        return false;
    };
    let whole = |w: &[u64; 2]| of(w, op::ATC_INV) && w[0] & 1 << 11 == 0 && w[1] == 52;
    log[ste..].iter().position(whole).is_some_and(|i| {
        log[ste + i..]
            .iter()
            .any(|w| w[0] & 0xff == u64::from(op::CMD_SYNC))
    })
}

/// The first ATS attach of a stream whose whole-ATC invalidation fails (its CMD_SYNC stalls,
/// or meets CERROR_ATC_INV_SYNC) fails: the STE already allows ATS and the device's ATC is
/// not known to be clean. The stream is left unsettled, attached to the domain in the books
/// (the domain cannot be freed); nothing is leaked and nothing rolled back. The retry issues
/// the whole-ATC invalidation again and returns `Ok`; a detach instead settles it too.
#[test]
fn a_first_ats_attach_whose_atc_invalidation_fails_is_unsettled_and_its_retry_invalidates() {
    for (stall, retry_detaches) in [(true, false), (false, false), (true, true)] {
        let mem = Arena::with_defaults().unwrap();
        let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
        let u = SmmuUnit::new(&model, &mem, cfg()).unwrap();
        u.enable().unwrap();
        let d = u.domain_alloc(&s2()).unwrap();
        u.map(d, Iova::new(IOVA), PhysAddr::new(PA), K4, RW)
            .unwrap();
        u.set_ats(DeviceId(SID), true).unwrap();
        let pages = mem.live_pages().len();
        model.reset_stats();
        if stall {
            model.inject(Injection::SyncStallAfter(op::ATC_INV));
        } else {
            model.inject(Injection::AtcInvSyncAt { at: 2, times: 1 });
        }
        let err = u.attach(DeviceId(SID), None, d).unwrap_err();
        let what = (stall, retry_detaches);
        assert!(
            matches!(err, Error::Timeout { .. } | Error::CommandError { .. }),
            "{what:?}: {err:?}"
        );
        assert_eq!(model.stats().commands_of(op::ATC_INV), 1, "{what:?}");
        model.clear_injections();
        let report = u.audit().unwrap();
        assert_eq!(report.unsettled, 1, "{what:?}");
        assert_eq!(u.domain_free(d), Err(Error::Busy), "{what:?}");
        // The level-2 stream table stays (the STE lives in it); nothing else was taken.
        assert_eq!(mem.live_pages().len(), pages + 1, "{what:?}");
        model.reset_stats();
        if retry_detaches {
            u.detach(DeviceId(SID), None).unwrap();
            assert!(
                whole_atc_invalidated_after_the_ste(&model.command_log(), SID),
                "{what:?}: {:x?}",
                model.command_log()
            );
            assert!(!translates(&model, IOVA));
        } else {
            u.attach(DeviceId(SID), None, d).unwrap();
            assert!(
                whole_atc_invalidated_after_the_ste(&model.command_log(), SID),
                "{what:?}: the retry did not invalidate the whole ATC: {:x?}",
                model.command_log()
            );
            assert_eq!(
                model.translate(SID, None, IOVA, Access::READ).unwrap().pa,
                PA
            );
            assert_eq!(u.audit().unwrap().unsettled, 0);
            u.detach(DeviceId(SID), None).unwrap();
        }
        u.domain_free(d).unwrap();
    }
}

/// A first ATS attach whose whole-ATC invalidation keeps failing (the device never answers:
/// CERROR_ATC_INV_SYNC at every CMD_SYNC that waits on a CMD_ATC_INV) leaves the STE with
/// EATS and the domain's translation. A detach must still take both away: it writes the
/// aborting STE before anything waits on the device (the stale ATC entries are unusable once
/// EATS is off, CR0.ATSCHK), and may then fail on its own whole-ATC invalidation, keeping the
/// domain (`domain_free` Busy) until a retry completes it.
///
/// The device that never answers is `AtcInvSyncTimeout` armed before every call (each call
/// here waits on one CMD_ATC_INV): after CERROR_ATC_INV_SYNC the acknowledged CMD_SYNC runs
/// again and completes, and the queue with it (§3.9.1.4). `AtcInvSyncAt { times: u32::MAX }`
/// instead fails that same CMD_SYNC at every re-run, a queue that never moves again, which no
/// STE write (its CFGI_STE behind that CMD_SYNC) gets past.
#[test]
fn a_detach_aborts_the_ste_though_the_owed_atc_invalidation_keeps_failing() {
    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let u = SmmuUnit::new(&model, &mem, cfg()).unwrap();
    u.enable().unwrap();
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(d, Iova::new(IOVA), PhysAddr::new(PA), K4, RW)
        .unwrap();
    u.set_ats(DeviceId(SID), true).unwrap();
    model.inject(Injection::AtcInvSyncTimeout);
    let err = u.attach(DeviceId(SID), None, d).unwrap_err();
    assert!(
        matches!(err, Error::CommandError { code, .. } if code & 0xff == 3),
        "{err:?}"
    );
    assert_eq!(model.stats().injections_fired, 1);
    assert!(translates(&model, IOVA), "the STE with EATS is live");
    // Every detach meets the timeout again; none may leave the STE translating.
    for attempt in 0..2 {
        model.inject(Injection::AtcInvSyncTimeout);
        let r = u.detach(DeviceId(SID), None);
        assert!(
            matches!(r, Err(Error::CommandError { code, .. }) if code & 0xff == 3),
            "attempt {attempt}: {r:?}"
        );
        assert!(
            model
                .translate_in_memory(SID, None, IOVA, Access::READ)
                .is_none(),
            "attempt {attempt}: {r:?}: the STE still translates"
        );
        assert!(!translates(&model, IOVA), "attempt {attempt}: {r:?}");
        assert!(
            model.translated_transaction(SID, PA, Access::READ).is_err(),
            "attempt {attempt}: {r:?}: a translated request passes (EATS on)"
        );
        assert_eq!(u.audit().unwrap().live_stes, 0, "attempt {attempt}: {r:?}");
        // The stream's ATC is not known to be clean: the domain (and its VMID) stays.
        assert_eq!(u.domain_free(d), Err(Error::Busy), "attempt {attempt}");
    }
    model.clear_injections();
    u.detach(DeviceId(SID), None).unwrap();
    assert_eq!(u.audit().unwrap().unsettled, 0);
    u.domain_free(d).unwrap();
}
