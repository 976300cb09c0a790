//! A guest's CDs, cached through a user domain's nested STE, must be gone before the host
//! gives the stream a stage-1 STE: a stage-1-only STE would read a stale guest CD's TTB0 as a
//! physical address (the guest's choice: any host memory). The CMD_CFGI_STE of the STE that
//! leaves the nested configuration drops them (IHI 0070 §4.3.1; the model did not until
//! 2026-12-07, and these tests failed then). A replace goes through an aborting STE first
//! (`ste_update::tests::a_new_cd_table_goes_through_abort`).

extern crate std;
use std::vec::Vec;

use crate::iommu::{DeviceId, DomainConfig, DomainHandle, Iommu, Stage, UserStage1};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::Prot;
use crate::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig};
use crate::smmuv3::{SmmuConfig, SmmuUnit};

const SID: u32 = 0x20;
const GUEST_CD_IPA: u64 = 0x8_0000;
fn stage1() -> DomainConfig {
    DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    }
}

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap()
}

fn model(arena: &Arena) -> SmmuModel<'_> {
    SmmuModel::new(arena, SmmuModelConfig::qemu_like().with_fwb(true))
}

/// An enabled unit over `m`.
fn unit<'a>(m: &'a SmmuModel<'a>, arena: &'a Arena) -> SmmuUnit<&'a SmmuModel<'a>, &'a Arena> {
    let u = SmmuUnit::new(
        m,
        arena,
        SmmuConfig {
            poll_budget: 10_000,
            ..SmmuConfig::default()
        },
    )
    .unwrap();
    u.enable().unwrap();
    u
}

/// A nest parent and a user domain over it whose vSTE names a CD table at `GUEST_CD_IPA`.
fn user_domain(u: &SmmuUnit<&SmmuModel<'_>, &Arena>) -> (DomainHandle, DomainHandle) {
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
    (parent, u.domain_alloc_user(parent, &vste).unwrap())
}

#[test]
fn a_guests_cds_are_invalidated_when_its_domain_leaves_the_stream() {
    let arena = arena();
    let m = model(&arena);
    let u = unit(&m, &arena);
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
    let host = u.domain_alloc(&stage1()).unwrap();
    u.map(
        host,
        Iova::new(0x1000),
        PhysAddr::new(0x1_0100_0000),
        1 << 12,
        rw,
    )
    .unwrap();
    u.attach(DeviceId(SID), None, host).unwrap();
    assert_eq!(
        m.cache_sizes().3,
        0,
        "a CD cached through the guest's STE outlived the detach (commands: {:x?})",
        m.command_log()
            .iter()
            .map(|c| c[0] as u8)
            .collect::<Vec<_>>()
    );
}

/// The same, shown through a translation: when the host's new CD table lands at the address
/// the guest's vSTE named (the model keeps a cached CD while the STE's S1ContextPtr matches;
/// hardware need not compare), the host domain's DMA was translated by the guest's CD 0, the
/// guest's TTB0 read as a physical address under a stage-1-only STE.
#[test]
fn host_dma_is_never_translated_by_a_stale_guest_cd() {
    let arena = arena();
    let m = model(&arena);
    let u = unit(&m, &arena);
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

/// A replace of a user domain whose CMD_SYNC never completes: the attach fails with the
/// timeout and the stream stays unsettled (the user domain retiring, so it cannot be freed);
/// the same attach again settles it, and the user domain can go.
#[test]
fn a_replace_whose_leaving_sync_times_out_is_settled_by_the_retry() {
    use crate::iommu::Error;
    use crate::sim::smmuv3::Injection;
    let arena = arena();
    let m = model(&arena);
    let u = unit(&m, &arena);
    let (_, user) = user_domain(&u);
    u.attach(DeviceId(SID), None, user).unwrap();
    let host = u.domain_alloc(&stage1()).unwrap();
    m.inject(Injection::SyncStall);
    assert!(matches!(
        u.attach(DeviceId(SID), None, host),
        Err(Error::Timeout { .. })
    ));
    m.clear_injections();
    assert_eq!(u.domain_free(user), Err(Error::Busy), "still retiring");
    u.attach(DeviceId(SID), None, host).unwrap();
    u.domain_free(user).unwrap();
    u.detach(DeviceId(SID), None).unwrap();
    u.domain_free(host).unwrap();
}

/// A replace of a user domain by a host stage-1 domain that is refused (the stream's new CD
/// table cannot be allocated: NoMemory, no unit fault) leaves the user domain attached, as
/// every refusal does (9e4d142's leave-first replace left the stream detached from it).
#[test]
fn a_refused_replace_keeps_the_user_domain() {
    use crate::iommu::Error;
    let arena = arena();
    let m = model(&arena);
    let u = unit(&m, &arena);
    let (_, user) = user_domain(&u);
    u.attach(DeviceId(SID), None, user).unwrap();
    let host = u.domain_alloc(&stage1()).unwrap();
    // Nothing left to allocate: the host stage-1 attach needs a CD table for the stream.
    let mut hog = Vec::new();
    while let Some(p) = arena.alloc(12) {
        hog.push(p);
    }
    let r = u.attach(DeviceId(SID), None, host);
    assert_eq!(r, Err(Error::NoMemory));
    // Refused: the user domain is still attached, so it cannot be freed...
    assert_eq!(
        u.domain_free(user),
        Err(Error::Busy),
        "the refused replace left the stream detached from its user domain (STE aborts)"
    );
}
