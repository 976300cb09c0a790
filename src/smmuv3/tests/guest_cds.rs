//! A guest's CDs, cached through a user domain's nested STE, must be gone before the host
//! gives the stream a stage-1 STE: a stage-1-only STE would read a stale guest CD's TTB0 as a
//! physical address (the guest's choice: any host memory). CMD_CFGI_STE is not relied on to
//! drop the stream's CDs (the model's does not); CMD_CFGI_CD_ALL while the STE aborts does.

extern crate std;
use std::vec::Vec;

use crate::iommu::{DeviceId, DomainConfig, Iommu, Stage, UserStage1};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::Prot;
use crate::sim::smmuv3::{op, SmmuModel, SmmuModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig};
use crate::smmuv3::{SmmuConfig, SmmuUnit};

const SID: u32 = 0x20;
const GUEST_CD_IPA: u64 = 0x8_0000;

#[test]
fn a_guests_cds_are_invalidated_when_its_domain_leaves_the_stream() {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let m = SmmuModel::new(&arena, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = SmmuUnit::new(
        &m,
        &arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    let rw = Prot::READ.union(Prot::WRITE);
    // A host stage-1 domain, only to borrow a well-formed CD for the guest to copy.
    let template = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    let guest_cd = u
        .slot(template)
        .unwrap()
        .read()
        .as_ref()
        .unwrap()
        .context_descriptor()
        .unwrap();
    // The guest's CD table page, at IPA 0x8_0000 through the parent's stage 2.
    let page = arena.alloc(12).unwrap();
    for (i, w) in guest_cd.words.iter().enumerate() {
        assert!(arena.write_u64(page.pa.get() + 8 * i as u64, *w));
    }
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    u.map(parent, Iova::new(GUEST_CD_IPA), page.pa, 1 << 12, rw)
        .unwrap();
    let vste = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | GUEST_CD_IPA, 0],
    };
    let user = u.domain_alloc_user(parent, &vste).unwrap();
    u.attach(DeviceId(SID), None, user).unwrap();
    // The device's DMA makes the unit fetch (and cache) the guest's CD 0.
    let _ = m.translate(SID, None, 0x1000, Access::READ);
    assert!(m.cache_sizes().3 >= 1, "the guest's CD is cached");
    m.reset_stats();
    // The VM lets the device go; the host gives it a stage-1 (DMA API) domain.
    u.detach(DeviceId(SID), None).unwrap();
    let host = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    u.map(
        host,
        Iova::new(0x1000),
        PhysAddr::new(0x1_0100_0000),
        1 << 12,
        rw,
    )
    .unwrap();
    u.attach(DeviceId(SID), None, host).unwrap();
    let log: Vec<u8> = m.command_log().iter().map(|c| c[0] as u8).collect();
    let cd_invalidated = m.command_log().iter().any(|c| {
        let opc = c[0] as u8;
        let sid = (c[0] >> 32) as u32;
        (opc == op::CFGI_CD || opc == op::CFGI_CD_ALL) && sid == SID
            || opc == op::CFGI_STE_RANGE && c[1] & 0x1f == 31
    });
    assert!(
        cd_invalidated,
        "no CFGI_CD/CFGI_CD_ALL/CFGI_ALL for SID {SID:#x} between the guest's use and the \
         host's stage-1 attach (commands: {log:x?}); the model still caches {} CD(s)",
        m.cache_sizes().3
    );
}

/// The same, shown through a translation: when the host's new CD table lands at the address
/// the guest's vSTE named (the model keeps a cached CD while the STE's S1ContextPtr matches;
/// hardware need not compare), the host domain's DMA was translated by the guest's CD 0, the
/// guest's TTB0 read as a physical address under a stage-1-only STE.
#[test]
fn host_dma_is_never_translated_by_a_stale_guest_cd() {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let m = SmmuModel::new(&arena, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = SmmuUnit::new(
        &m,
        &arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    let rw = Prot::READ.union(Prot::WRITE);
    let s1 = DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    };
    // What the guest's CD will hold: a stage-1 context whose table maps 0x1000 to X.
    const X: u64 = 0x1_0180_0000;
    const B_PA: u64 = 0x1_0100_0000;
    let template = u.domain_alloc(&s1).unwrap();
    u.map(template, Iova::new(0x1000), PhysAddr::new(X), 1 << 12, rw)
        .unwrap();
    let guest_cd = u
        .slot(template)
        .unwrap()
        .read()
        .as_ref()
        .unwrap()
        .context_descriptor()
        .unwrap();
    // Host domain A on the stream first: its CD table's address t.
    let a = u.domain_alloc(&s1).unwrap();
    u.attach(DeviceId(SID), None, a).unwrap();
    let t = {
        let cfg = u.config.lock();
        let st = cfg.strtab.as_ref().unwrap();
        st.read(crate::smmuv3::StreamId(SID)).unwrap().words[0]
            & crate::smmuv3::ste::S1CONTEXTPTR.mask()
    };
    // The guest's CD table at IPA t (any IPA a guest may choose).
    let page = arena.alloc(12).unwrap();
    for (i, w) in guest_cd.words.iter().enumerate() {
        assert!(arena.write_u64(page.pa.get() + 8 * i as u64, *w));
    }
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    u.map(parent, Iova::new(t), page.pa, 1 << 12, rw).unwrap();
    let user = u
        .domain_alloc_user(
            parent,
            &UserStage1::SmmuV3 {
                ste: [1 | 0b101 << 1 | t, 0],
            },
        )
        .unwrap();
    let b = u.domain_alloc(&s1).unwrap();
    u.map(b, Iova::new(0x1000), PhysAddr::new(B_PA), 1 << 12, rw)
        .unwrap();
    // Host -> VM -> host.
    u.detach(DeviceId(SID), None).unwrap();
    u.attach(DeviceId(SID), None, user).unwrap();
    let _ = m.translate(SID, None, 0x1000, Access::READ);
    u.detach(DeviceId(SID), None).unwrap();
    u.attach(DeviceId(SID), None, b).unwrap();
    let t2 = {
        let cfg = u.config.lock();
        let st = cfg.strtab.as_ref().unwrap();
        st.read(crate::smmuv3::StreamId(SID)).unwrap().words[0]
            & crate::smmuv3::ste::S1CONTEXTPTR.mask()
    };
    let got = m.translate(SID, None, 0x1000, Access::READ);
    let in_memory = m.translate_in_memory(SID, None, 0x1000, Access::READ);
    assert_eq!(in_memory, Some(B_PA), "the tables in memory say B");
    assert_eq!(
        got.as_ref().ok().map(|o| o.pa),
        Some(B_PA),
        "host domain B's DMA at 0x1000 (new CD table at {t2:#x}, guest's vSTE named {t:#x}): {got:x?}"
    );
}

/// A user domain replaced directly by a host stage-1 domain (no detach between): the guest's
/// CDs are invalidated while the stream aborts, before the CMD_CFGI_STE of the stage-1 STE.
/// Invalidated after it, a device could use a stale guest CD under the stage-1 STE until the
/// invalidation completed.
#[test]
fn a_user_domain_replaced_by_a_stage1_domain_leaves_no_cd_behind_first() {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let m = SmmuModel::new(&arena, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = SmmuUnit::new(
        &m,
        &arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    let rw = Prot::READ.union(Prot::WRITE);
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    let page = arena.alloc(12).unwrap();
    u.map(parent, Iova::new(GUEST_CD_IPA), page.pa, 1 << 12, rw)
        .unwrap();
    let vste = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | GUEST_CD_IPA, 0],
    };
    let user = u.domain_alloc_user(parent, &vste).unwrap();
    u.attach(DeviceId(SID), None, user).unwrap();
    let host = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    m.reset_stats();
    u.attach(DeviceId(SID), None, host).unwrap();
    let log = m.command_log();
    let of_sid = |c: &[u64; 2], opc: u8| c[0] as u8 == opc && (c[0] >> 32) as u32 == SID;
    let cd_all = log.iter().position(|c| of_sid(c, op::CFGI_CD_ALL));
    let last_ste = log.iter().rposition(|c| of_sid(c, op::CFGI_STE));
    let ops: Vec<u8> = log.iter().map(|c| c[0] as u8).collect();
    assert!(
        matches!((cd_all, last_ste), (Some(a), Some(s)) if a < s),
        "CFGI_CD_ALL ({cd_all:?}) before the stage-1 STE's CFGI_STE ({last_ste:?}): {ops:x?}"
    );
}

/// The replace's leaving detach whose CMD_SYNC never completes: the attach fails with the
/// timeout and the stream stays unsettled (the user domain retiring, so it cannot be freed);
/// the same attach again settles it, and the user domain can go.
#[test]
fn a_replace_whose_leaving_sync_times_out_is_settled_by_the_retry() {
    use crate::iommu::Error;
    use crate::sim::smmuv3::Injection;
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let m = SmmuModel::new(&arena, SmmuModelConfig::qemu_like().with_fwb(true));
    let u = SmmuUnit::new(
        &m,
        &arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    let vste = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | GUEST_CD_IPA, 0],
    };
    let user = u.domain_alloc_user(parent, &vste).unwrap();
    u.attach(DeviceId(SID), None, user).unwrap();
    let host = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    m.inject(Injection::SyncStall);
    assert!(matches!(
        u.attach(DeviceId(SID), None, host),
        Err(Error::Timeout { .. })
    ));
    m.clear_injections();
    assert_eq!(u.domain_free(user), Err(Error::Busy), "still retiring");
    m.reset_stats();
    u.attach(DeviceId(SID), None, host).unwrap();
    assert!(
        m.command_log()
            .iter()
            .any(|c| c[0] as u8 == op::CFGI_CD_ALL && (c[0] >> 32) as u32 == SID),
        "the retry completed the leaving detach"
    );
    u.domain_free(user).unwrap();
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(host).unwrap();
}
