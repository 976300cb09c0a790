//! Attach and detach: STE and CD contents, transitions and their syncs, PASIDs, nesting, ATS.

use super::*;

const CANWBS: DeviceFacts = DeviceFacts {
    canwbs: true,
    coherent_dma: None,
    source: crate::iommu::Source::Firmware("IORT root complex CANWBS"),
};

fn declared(sids: (u32, u32)) -> SmmuConfig {
    SmmuConfig {
        platform: Platform::default()
            .declare(StreamId(sids.0), StreamId(sids.1), CANWBS)
            .unwrap(),
        ..config()
    }
}

#[test]
fn snoop_enforcement_needs_the_platforms_canwbs_not_fwb() {
    let alloc = VecAllocator::default();
    let snoop = DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    };
    let not_declared = Error::Unsupported(Missing::NotDeclared {
        what: platform::CANWBS_NOT_DECLARED,
    });
    // FWB and COHACC, nothing declared: no register can promise that No-Snoop DMA snoops.
    let m = model(IDR0, FWB);
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    assert!(!u.capabilities().enforce_snoop);
    assert_eq!(u.domain_alloc(&snoop), Err(not_declared));
    assert_eq!(alloc.live_pages(), 0);
    drop(u);
    // CANWBS for StreamIDs 4..=5 only, on a unit with FWB.
    let u = SmmuUnit::new(&m, &alloc, declared((4, 5))).unwrap();
    u.enable().unwrap();
    assert!(!u.capabilities().enforce_snoop);
    assert!(u.device_capabilities(DeviceId(5)).enforce_snoop);
    assert_eq!(
        u.device_capabilities(DeviceId(5)).sources.enforce_snoop,
        CANWBS.source
    );
    assert!(!u.device_capabilities(DeviceId(6)).enforce_snoop);
    let d = u.domain_alloc(&snoop).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    // Device 6 is refused before anything is written: its STE still aborts.
    let before = ste_of(&u, 6);
    assert_eq!(u.attach(DeviceId(6), None, d), Err(not_declared));
    assert_eq!(ste_of(&u, 6).words, before.words);
    u.attach(DeviceId(5), None, d).unwrap();
    // FWB still does its part: write-back over whatever stage 1 (a guest's) asks.
    let ste = ste_of(&u, 5);
    assert_eq!(ste.words[1] & ste::S2FWB, ste::S2FWB);
    // The leaf: MemAttr 0b0110 (FWB: forced write-back), SH inner (0b11 << 8).
    let leaf = leaf_of(&u, d, 0x1000);
    assert_eq!((leaf >> 2) & 0xf, 0b0110);
    assert_eq!((leaf >> 8) & 3, 3);
    // Without enforcement, write-back that leaves the device's attributes in charge, no FWB.
    let plain = u.domain_alloc(&s2()).unwrap();
    u.map(plain, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    assert_eq!((leaf_of(&u, plain, 0x1000) >> 2) & 0xf, 0b1111);
    // Stage 1 enforces too: CANWBS keeps the device coherent whatever the attributes.
    let s1_snoop = DomainConfig {
        stage: Stage::First,
        ..snoop
    };
    let d1 = u.domain_alloc(&s1_snoop).unwrap();
    assert_eq!(u.attach(DeviceId(6), None, d1), Err(not_declared));
    u.attach(DeviceId(4), None, d1).unwrap();
}

#[test]
fn without_fwb_a_canwbs_device_enforces_snoop_with_plain_write_back() {
    let alloc = VecAllocator::default();
    let m = model(IDR0 & !0x10, 0);
    let u = SmmuUnit::new(&m, &alloc, declared((0, 0xffff))).unwrap();
    u.enable().unwrap();
    assert!(u.device_capabilities(DeviceId(1)).enforce_snoop);
    let d = u
        .domain_alloc(&DomainConfig {
            enforce_snoop: true,
            ..s2()
        })
        .unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(1), None, d).unwrap();
    assert_eq!(ste_of(&u, 1).words[1] & ste::S2FWB, 0);
    assert_eq!((leaf_of(&u, d, 0x1000) >> 2) & 0xf, 0b1111);
}

#[test]
fn stage1_memory_type_follows_the_devices_coherency_not_the_walkers() {
    let alloc = VecAllocator::default();
    // A non-coherent TCU (IDR0.COHACC = 0) in front of coherent masters, except StreamID 9.
    let m = model(IDR0 & !0x10, 0);
    let coherent = DeviceFacts {
        canwbs: false,
        coherent_dma: Some(true),
        source: crate::iommu::Source::Firmware("IORT root complex CCA"),
    };
    let platform = Platform::new(coherent)
        .declare(
            StreamId(9),
            StreamId(9),
            DeviceFacts {
                coherent_dma: Some(false),
                ..coherent
            },
        )
        .unwrap();
    let u = SmmuUnit::new(
        &m,
        &alloc,
        SmmuConfig {
            platform,
            ..config()
        },
    )
    .unwrap();
    u.enable().unwrap();
    let attrs = |d| {
        let leaf = leaf_of(&u, d, 0x1000);
        ((leaf >> 2) & 7, (leaf >> 8) & 3)
    };
    // Built for device 3 (coherent): Normal Write-Back (AttrIndx 0), Inner Shareable.
    let d = u
        .domain_alloc(&DomainConfig {
            device: Some(DeviceId(3)),
            ..s1()
        })
        .unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    assert_eq!(attrs(d), (0, 3));
    // The CD still walks with the TCU's attributes: non-cacheable, outer shareable.
    u.attach(DeviceId(3), None, d).unwrap();
    // Device 9 is not coherent: it cannot share a write-back stage 1. The refusal says what
    // the domain was built for, what the device is and who said so.
    assert_eq!(
        u.attach(DeviceId(9), None, d),
        Err(Error::Unsupported(Missing::DmaCoherency {
            domain: true,
            device: false,
            source: crate::iommu::Source::Firmware("IORT root complex CCA"),
        }))
    );
    // Built for device 9: Normal Non-cacheable (AttrIndx 1), Outer Shareable.
    let n = u
        .domain_alloc(&DomainConfig {
            device: Some(DeviceId(9)),
            ..s1()
        })
        .unwrap();
    u.map(n, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    assert_eq!(attrs(n), (1, 2));
    u.attach(DeviceId(9), None, n).unwrap();
    assert_eq!(
        u.attach(DeviceId(3), None, n),
        Err(Error::Unsupported(Missing::DmaCoherency {
            domain: false,
            device: true,
            source: crate::iommu::Source::Firmware("IORT root complex CCA"),
        }))
    );
    // No device named: the unit's declaration (coherent).
    let any = u.domain_alloc(&s1()).unwrap();
    u.map(any, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    assert_eq!(attrs(any), (0, 3));
    // Stage 2 leaves the device's attributes in charge: any device may share it.
    let s2d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(4), None, s2d).unwrap();
    u.attach(DeviceId(10), None, s2d).unwrap();
}

/// The raw leaf mapping `iova` (4 KiB stage-2 walk through the allocator's identity PAs).
fn leaf_of(u: &Unit<'_>, d: DomainHandle, iova: u64) -> u64 {
    let slot = u.domains[usize::from(d.0)].read();
    let dom = slot.as_ref().unwrap();
    let mut table = match &dom.table {
        domain::DomainTable::Stage2(t) => t.root().get(),
        domain::DomainTable::Stage1(t) => t.root().get(),
    };
    let levels = dom.geometry().levels;
    let geo = *dom.geometry();
    for level in (0..levels).rev() {
        let idx = geo.index(level, iova) as u64;
        // SAFETY: PA == VA for VecAllocator pages; the walk stays inside live tables.
        let e = unsafe { ((table + idx * 8) as *const u64).read_volatile() };
        if level == 0 || e & 2 == 0 {
            return e;
        }
        table = e & 0x0000_ffff_ffff_f000;
    }
    0
}

#[test]
fn stage2_attach_writes_the_ste_and_detach_aborts_and_invalidates() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    assert_eq!(
        u.domain_geometry(d).unwrap(),
        (48, 1 << 12 | 1 << 21 | 1 << 30)
    );
    let pages = alloc.live_pages();
    u.attach(DeviceId(0x123), None, d).unwrap();
    // The L2 stream table of 256 STEs was allocated on demand.
    assert_eq!(alloc.live_pages(), pages + 1);
    let ste = ste_of(&u, 0x123);
    // V | Config 0b110.
    assert_eq!(ste.words[0], 0xd);
    // VMID 1; S2T0SZ 16 (64 - 48); 48 bits at 4K: start level 0 with a 512-entry root, SL0 2;
    // IR0/OR0 WBWA (1); SH0 inner (3); TG 4K (0); PS 48 bits (5); S2AA64; S2PTW; S2R.
    let w2 = 1
        | 16 << 32
        | 2 << 38
        | 1 << 40
        | 1 << 42
        | 3 << 44
        | 5 << 48
        | 1 << 51
        | 1 << 54
        | 1 << 58;
    assert_eq!(ste.words[2], w2);
    let root = u.domains[usize::from(d.0)]
        .read()
        .as_ref()
        .unwrap()
        .stage2_fields()
        .unwrap()
        .ttb;
    assert_eq!(ste.words[3], root.get());
    // Abort -> stage 2: prepare words 1-3, then word 0: two CFGI_STE + CMD_SYNC pairs.
    assert_eq!(take_ops(&m), [CFGI_STE, SYNC, CFGI_STE, SYNC]);
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    u.detach(DeviceId(0x123), None).unwrap();
    assert_eq!(ste_of(&u, 0x123), Ste::ABORT);
    // Word 0 to abort (sync), words 1-3 cleaned (sync), then TLBI_S12_VMALL + one sync.
    assert_eq!(
        take_ops(&m),
        [CFGI_STE, SYNC, CFGI_STE, SYNC, TLBI_S12_VMALL, SYNC]
    );
    assert_eq!(
        u.detach(DeviceId(0x123), None),
        Err(Error::NotAttached(DeviceId(0x123)))
    );
    u.domain_free(d).unwrap();
    assert_eq!(take_ops(&m), [TLBI_S12_VMALL, SYNC]);
    // The VMID is free again: the next domain gets VMID 1.
    let e = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(0x123), None, e).unwrap();
    assert_eq!(ste_of(&u, 0x123).words[2] & 0xffff, 1);
    assert_eq!(
        u.attach(DeviceId(1 << 16), None, e),
        Err(Error::InvalidDevice(DeviceId(1 << 16)))
    );
}

#[test]
fn replacing_a_stage2_domain_is_hitless_where_the_ste_allows() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let (a, b) = (
        u.domain_alloc(&s2()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    u.attach(DeviceId(7), None, a).unwrap();
    take_ops(&m);
    u.attach(DeviceId(7), None, b).unwrap();
    // VMID and S2TTB both change (words 2 and 3): abort, write, enable = three syncs; then the
    // old domain's VMID is invalidated with one more.
    assert_eq!(
        take_ops(&m),
        [
            CFGI_STE,
            SYNC,
            CFGI_STE,
            SYNC,
            CFGI_STE,
            SYNC,
            TLBI_S12_VMALL,
            SYNC
        ]
    );
    assert_eq!(u.domain_free(a), Ok(()));
    assert_eq!(u.domain_free(b), Err(Error::Busy));
    // Attaching the same domain again changes nothing.
    take_ops(&m);
    u.attach(DeviceId(7), None, b).unwrap();
    assert!(take_ops(&m).is_empty());
}

#[test]
fn stage1_attach_writes_ste_and_cd() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s1()).unwrap();
    u.map(
        d,
        Iova::new(0x4000),
        PhysAddr::new(0x9000_0000),
        K4,
        Prot::READ,
    )
    .unwrap();
    u.attach(DeviceId(3), None, d).unwrap();
    let ste = ste_of(&u, 3);
    // V | Config 0b101 = 0xb; S1CDMax 8 (8 << 59); S1Fmt 2-level 4K (1 << 4): 2^8 CDs need
    // four 64-CD leaves.
    assert_eq!(ste.words[0] & 0xff, 0xb | 1 << 4);
    assert_eq!(ste.words[0] >> 59, 8);
    // S1DSS SUBSTREAM0 (2), S1CIR/S1COR WBWA, S1CSH inner: 0xd6; VMID 0 in word 2.
    assert_eq!(ste.words[1] & 0xff, 0xd6);
    assert_eq!(ste.words[2], 0);
    let config = u.config.lock();
    let stream = config.streams.iter().flatten().next().unwrap();
    let table = stream.cd.as_ref().unwrap();
    assert_eq!(
        ste.words[0] & ste::S1CONTEXTPTR.mask(),
        table.context_ptr().get()
    );
    let cd = table.read(SubstreamId::new(0).unwrap()).unwrap();
    // T0SZ 16, TG0 4K, IR0/OR0 WBWA, SH0 inner, EPD1, V, IPS 48 bits (5), AA64, R, A, ASET,
    // ASID 1.
    let w0 = 16
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | 5 << 32
        | 1 << 41
        | 1 << 45
        | 1 << 46
        | 1 << 47
        | 1 << 48;
    assert_eq!(cd.words[0], w0);
    assert_eq!(cd.words[3], crate::pgtable::arm_s1::MAIR);
    drop(config);
    // The STE did not point at the CD table before: no CFGI_CD, two STE steps.
    assert_eq!(take_ops(&m), [CFGI_STE, SYNC, CFGI_STE, SYNC]);
    u.detach(DeviceId(3), None).unwrap();
    // STE to abort, then CFGI_CD(0), CFGI_CD_ALL and TLBI_NH_ASID in one batch and one sync.
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 4..], [CFGI_CD, 0x06, TLBI_NH_ASID, SYNC]);
    assert_eq!(count(&ops, SYNC), 3);
    // The stream and its CD table are gone.
    assert!(u.config.lock().streams.iter().all(Option::is_none));
}

#[test]
fn pasids_go_through_the_cd_table() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    assert_eq!(u.capabilities().pasid_bits, 8);
    let (a, b, s) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    let p = |v| Pasid::new(v).unwrap();
    assert_eq!(
        u.attach(DeviceId(9), Some(p(0)), a),
        Err(Error::InvalidPasid(p(0)))
    );
    assert_eq!(
        u.attach(DeviceId(9), Some(p(256)), a),
        Err(Error::InvalidPasid(p(256)))
    );
    assert!(matches!(
        u.attach(DeviceId(9), Some(p(1)), s),
        Err(Error::Unsupported(_))
    ));
    u.attach(DeviceId(9), Some(p(0x41)), a).unwrap();
    // Only substream traffic: stage 1 with S1DSS = TERMINATE.
    let ste = ste_of(&u, 9);
    assert_eq!(ste.config_raw(), 0b101);
    assert_eq!(ste.words[1] & 3, 0);
    take_ops(&m);
    // A second PASID in the same CD leaf: the STE already uses the table, so the words with
    // V = 0 then CFGI_CD + sync, V = 1 then CFGI_CD + sync; the STE does not change.
    u.attach(DeviceId(9), Some(p(0x42)), b).unwrap();
    assert_eq!(take_ops(&m), [CFGI_CD, SYNC, CFGI_CD, SYNC]);
    // The RID domain is a stage-1 domain without a parent: S1DSS SUBSTREAM0, CD 0.
    u.attach(DeviceId(9), None, b).unwrap();
    assert_eq!(ste_of(&u, 9).words[1] & 3, 2);
    // A stage-2 RID domain cannot sit beside un-nested PASID domains.
    assert!(matches!(
        u.attach(DeviceId(9), None, s),
        Err(Error::Unsupported(_))
    ));
    assert_eq!(ste_of(&u, 9).words[1] & 3, 2);
    take_ops(&m);
    u.detach(DeviceId(9), Some(p(0x41))).unwrap();
    // CFGI_CD and its sync (the STE did not change and still reaches the CD table), then
    // TLBI_NH_ASID of `a` and a sync.
    assert_eq!(take_ops(&m), [CFGI_CD, SYNC, TLBI_NH_ASID, SYNC]);
    assert_eq!(
        u.detach(DeviceId(9), Some(p(0x41))),
        Err(Error::NotAttached(DeviceId(9)))
    );
    u.detach(DeviceId(9), Some(p(0x42))).unwrap();
    u.detach(DeviceId(9), None).unwrap();
    assert_eq!(ste_of(&u, 9), Ste::ABORT);
    for d in [a, b, s] {
        u.domain_free(d).unwrap();
    }
}

/// `domain_free`'s errors, each leaving a state a retry or a later call completes:
/// - its whole-tag TLBI's CMD_SYNC times out: nothing changed (the domain keeps its slot, its
///   table and its tag, whose invalidation did not complete; the parent still counts it);
///   the retry frees it;
/// - the tag's invalidation completed and the table's tear-down then fails (the allocator no
///   longer knows a table page): the domain is gone whatever the error, so its tag is free
///   (its invalidation completed) and its parent no longer counts it; the pages the
///   tear-down reached go back, those below the unknown one are leaked.
#[test]
fn a_failed_domain_free_loses_neither_its_tag_nor_its_parents_count() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let child = u.domain_alloc_nested(&s1(), parent).unwrap();
    // Two leaf tables; the tear-down reaches the first before the second.
    for iova in [0x1000, 0x40_0000] {
        u.map(child, Iova::new(iova), PhysAddr::new(0x8000_0000), K4, RW)
            .unwrap();
    }
    let leaf_table = alloc.newest_page();
    let asids = || u.tags_in_use().1.in_use();
    assert_eq!(asids(), 1);

    m.stalled.set(true);
    assert_eq!(
        u.domain_free(child),
        Err(Error::Timeout { what: "CMD_SYNC" })
    );
    assert_eq!(asids(), 1, "an ASID whose TLBI did not complete is kept");
    assert_eq!(
        u.domain_free(parent),
        Err(Error::Busy),
        "the child is alive"
    );
    m.stalled.set(false);

    alloc.unknown.set(leaf_table);
    let live = alloc.live_pages();
    assert_eq!(
        u.domain_free(child),
        Err(Error::PageTable(crate::pgtable::Error::UnknownTable {
            pa: PhysAddr::new(leaf_table as u64)
        }))
    );
    assert_eq!(asids(), 0, "the ASID's TLBI completed: free, not leaked");
    assert_eq!(u.domain_free(child), Err(Error::InvalidDomain(child)));
    assert_eq!(
        alloc.live_pages(),
        live - 1,
        "the first leaf table goes back"
    );
    alloc.unknown.set(0);
    u.domain_free(parent)
        .expect("the parent no longer counts its destroyed child");
    assert_eq!(u.tags_in_use().0.in_use(), 0);
    assert!(u.audit().is_ok());
}

#[test]
fn nested_domain_gets_a_nested_ste() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    assert!(u.capabilities().nesting);
    let plain = u.domain_alloc(&s2()).unwrap();
    assert_eq!(
        u.domain_alloc_nested(&s1(), plain),
        Err(Error::Unsupported(Missing::Nesting))
    );
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let child = u.domain_alloc_nested(&s1(), parent).unwrap();
    assert_eq!(u.domain_free(parent), Err(Error::Busy));
    u.attach(DeviceId(0x20), None, child).unwrap();
    let ste = ste_of(&u, 0x20);
    assert_eq!(ste.config_raw(), 0b111);
    // The parent's VMID (2: `plain` has 1) in S2VMID; CD 0 carries the child's ASID.
    assert_eq!(ste.words[2] & 0xffff, 2);
    // A PASID domain of the same stream must nest on the same parent.
    let other = u.domain_alloc(&s1()).unwrap();
    assert!(u
        .attach(DeviceId(0x20), Some(Pasid::new(1).unwrap()), other)
        .is_err());
    // Flushing the parent also drops combined entries (TLBI_NH_ALL).
    u.map(parent, Iova::new(0), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(parent, Iova::new(0), K4, &mut g).unwrap();
    take_ops(&m);
    u.flush(parent, &mut g).unwrap();
    assert_eq!(take_ops(&m), [TLBI_S2_IPA, 0x10, SYNC]);
    u.detach(DeviceId(0x20), None).unwrap();
    u.domain_free(child).unwrap();
    u.domain_free(parent).unwrap();
}

/// A device attached with hints whose firmware forbids ATS must not get it later through
/// `set_ats`, attached or after its detach: a plain `attach` would then write `STE.EATS` = 1,
/// and its translated requests would bypass the tables. The hints of a later `attach_device`
/// decide again; another device is not concerned.
#[test]
fn set_ats_refuses_a_device_whose_firmware_forbids_ats() {
    use crate::iommu::{AtsPermission, DeviceHints};
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    let forbidden = DeviceHints {
        ats_permission: AtsPermission::Forbidden,
        ..DeviceHints::default()
    };
    let dev = DeviceId(4);
    u.attach_device(dev, None, d, &forbidden).unwrap();
    u.detach(dev, None).unwrap();
    assert_eq!(u.set_ats(dev, true), Err(Error::AtsForbidden(dev)));
    u.attach(dev, None, d).unwrap();
    assert_eq!(
        (ste_of(&u, 4).words[1] >> 28) & 3,
        0,
        "EATS of a forbidden device"
    );
    assert_eq!(u.set_ats(dev, true), Err(Error::AtsForbidden(dev)));
    u.detach(dev, None).unwrap();
    // Firmware allows it in the next attach's hints: they decide.
    let allowed = DeviceHints {
        ats: true,
        ats_permission: AtsPermission::Allowed,
        ..DeviceHints::default()
    };
    u.attach_device(dev, None, d, &allowed).unwrap();
    assert_eq!((ste_of(&u, 4).words[1] >> 28) & 3, 1);
    u.detach(dev, None).unwrap();
    u.set_ats(dev, false).unwrap();
    // Another device is not concerned.
    u.set_ats(DeviceId(5), true).unwrap();
    u.set_ats(DeviceId(5), false).unwrap();
    u.domain_free(d).unwrap();
}

/// The mark of a forbidden device is kept in its stream record after its detach, and such a
/// record gives way when every slot is taken: the unit then refuses `set_ats(true)` for any
/// stream it has no record of (fail closed) rather than let the forgotten device have ATS.
#[test]
fn a_forgotten_forbidden_mark_refuses_set_ats_for_unknown_streams() {
    use crate::iommu::{AtsPermission, DeviceHints};
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    let forbidden = DeviceHints {
        ats_permission: AtsPermission::Forbidden,
        ..DeviceHints::default()
    };
    let n = u32::try_from(MAX_STREAMS).unwrap();
    for sid in 0..n {
        u.attach_device(DeviceId(sid), None, d, &forbidden).unwrap();
        u.detach(DeviceId(sid), None).unwrap();
    }
    // Every slot holds a mark: a new stream takes the first one's slot.
    u.attach(DeviceId(n), None, d).unwrap();
    assert_eq!(
        u.set_ats(DeviceId(0), true),
        Err(Error::AtsForbidden(DeviceId(0)))
    );
    assert_eq!(
        u.set_ats(DeviceId(n + 1), true),
        Err(Error::AtsForbidden(DeviceId(n + 1)))
    );
    // A device still marked is refused as before; an attach with ATS allowed still goes.
    assert_eq!(
        u.set_ats(DeviceId(1), true),
        Err(Error::AtsForbidden(DeviceId(1)))
    );
    u.detach(DeviceId(n), None).unwrap();
    let allowed = DeviceHints {
        ats: true,
        ats_permission: AtsPermission::Allowed,
        ..DeviceHints::default()
    };
    u.attach_device(DeviceId(n + 2), None, d, &allowed).unwrap();
    assert_eq!((ste_of(&u, n + 2).words[1] >> 28) & 3, 1);
    u.detach(DeviceId(n + 2), None).unwrap();
}

#[test]
fn ats_streams_get_atc_invalidations_after_the_tlbi_completes() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    u.set_ats(DeviceId(4), true).unwrap();
    u.attach(DeviceId(4), None, d).unwrap();
    assert_eq!(u.set_ats(DeviceId(4), false), Err(Error::Busy));
    // EATS = 1 (word 1 bits 29:28).
    assert_eq!((ste_of(&u, 4).words[1] >> 28) & 3, 1);
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    take_ops(&m);
    u.flush(d, &mut g).unwrap();
    assert_eq!(take_ops(&m), [TLBI_S2_IPA, SYNC, ATC_INV, SYNC]);
    u.detach(DeviceId(4), None).unwrap();
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 3..], [TLBI_S12_VMALL, ATC_INV, SYNC]);
}

/// A device's ATC may hold translations from before its stream's STE allowed ATS (boot
/// firmware, a previous kernel, a previous owner whose teardown this unit did not see): once
/// `STE.EATS` is on, the device's translated requests using them pass (`CR0.ATSCHK` checks
/// EATS only). The attach that turns EATS on (abort -> translating with EATS) must invalidate
/// the stream's whole ATC -- CMD_ATC_INV without SubstreamID, Size 52 from 0 -- after the
/// STE's CFGI_STE completed, and wait for it, before it returns; an attach that keeps EATS on
/// (a replace, a PASID beside the RID) issues only the retiring domain's CMD_ATC_INV, and a
/// stream without ATS none. A detach to abort turns EATS off: the next attach owes it again.
#[test]
fn the_attach_that_turns_eats_on_invalidates_the_streams_whole_atc() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let whole = Command::atc_inv(StreamId(4), None, Iova::ZERO, 52, false)
        .unwrap()
        .words;
    let (d, e) = (
        u.domain_alloc(&s2()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    u.set_ats(DeviceId(4), true).unwrap();
    take_ops(&m);
    u.attach(DeviceId(4), None, d).unwrap();
    let cmds: Vec<[u64; 2]> = m.executed.borrow().clone();
    // Abort -> stage 2 with EATS (two CFGI_STE + CMD_SYNC pairs), then the whole ATC.
    assert_eq!(
        take_ops(&m),
        [CFGI_STE, SYNC, CFGI_STE, SYNC, ATC_INV, SYNC],
        "the first ATS attach must invalidate the stream's whole ATC"
    );
    assert_eq!(cmds[4], whole);
    // A replace keeps EATS on: only the retiring domain's VMID and whole-stream ATC.
    u.attach(DeviceId(4), None, e).unwrap();
    let ops = take_ops(&m);
    assert_eq!(count(&ops, ATC_INV), 1, "{ops:x?}");
    assert_eq!(&ops[ops.len() - 3..], [TLBI_S12_VMALL, ATC_INV, SYNC]);
    // Detached, the STE aborts (EATS off); the next attach turns it on again.
    u.detach(DeviceId(4), None).unwrap();
    take_ops(&m);
    u.attach(DeviceId(4), None, d).unwrap();
    let cmds: Vec<[u64; 2]> = m.executed.borrow().clone();
    assert_eq!(
        take_ops(&m),
        [CFGI_STE, SYNC, CFGI_STE, SYNC, ATC_INV, SYNC]
    );
    assert_eq!(cmds[4], whole);
    // A stream without ATS: no CMD_ATC_INV.
    u.attach(DeviceId(5), None, e).unwrap();
    assert_eq!(take_ops(&m), [CFGI_STE, SYNC, CFGI_STE, SYNC]);
    // A stage-1 first attach with ATS: the CD and STE, then the whole ATC; a PASID beside
    // the RID domain keeps EATS on and issues none.
    let (x, y) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    u.set_ats(DeviceId(6), true).unwrap();
    take_ops(&m);
    u.attach(DeviceId(6), None, x).unwrap();
    let cmds: Vec<[u64; 2]> = m.executed.borrow().clone();
    let ops = take_ops(&m);
    assert_eq!(count(&ops, ATC_INV), 1, "{ops:x?}");
    assert_eq!(&ops[ops.len() - 2..], [ATC_INV, SYNC]);
    assert_eq!(
        cmds[ops.len() - 2],
        Command::atc_inv(StreamId(6), None, Iova::ZERO, 52, false)
            .unwrap()
            .words
    );
    u.attach(DeviceId(6), Pasid::new(1), y).unwrap();
    let ops = take_ops(&m);
    assert_eq!(count(&ops, ATC_INV), 0, "{ops:x?}");
    u.detach(DeviceId(6), Pasid::new(1)).unwrap();
    u.detach(DeviceId(6), None).unwrap();
    u.detach(DeviceId(5), None).unwrap();
    u.detach(DeviceId(4), None).unwrap();
}

#[test]
fn replacing_between_stages_retires_the_old_configuration() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let (x, y, s) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    u.attach(DeviceId(2), None, s).unwrap();
    take_ops(&m);
    // Stage 2 -> stage 1: CD 0 installed before the STE points at it (no CFGI_CD needed);
    // word 0 and S2VMID both change, so the STE breaks (three syncs); then VMID invalidated.
    u.attach(DeviceId(2), None, x).unwrap();
    assert_eq!(
        take_ops(&m),
        [
            CFGI_STE,
            SYNC,
            CFGI_STE,
            SYNC,
            CFGI_STE,
            SYNC,
            TLBI_S12_VMALL,
            SYNC
        ]
    );
    assert_eq!(ste_of(&u, 2).config_raw(), 0b101);
    // Stage 1 -> stage 1: CD 0 goes invalid, is filled with V = 0, then made valid with the
    // new ASID (CFGI_CD and sync each), the STE is unchanged, then the old ASID is invalidated.
    u.attach(DeviceId(2), None, y).unwrap();
    assert_eq!(
        take_ops(&m),
        [
            CFGI_CD,
            SYNC,
            CFGI_CD,
            SYNC,
            CFGI_CD,
            SYNC,
            TLBI_NH_ASID,
            SYNC
        ]
    );
    // Stage 1 -> stage 2: the STE switches, then CD 0 is retired with the old ASID.
    u.attach(DeviceId(2), None, s).unwrap();
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 3..], [CFGI_CD, TLBI_NH_ASID, SYNC]);
    assert_eq!(ste_of(&u, 2).config_raw(), 0b110);
    for d in [x, y] {
        u.domain_free(d).unwrap();
    }
    assert_eq!(u.domain_free(s), Err(Error::Busy));
}

#[test]
fn a_failed_sync_during_attach_keeps_both_domains_alive() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let (a, b) = (
        u.domain_alloc(&s2()).unwrap(),
        u.domain_alloc(&s2()).unwrap(),
    );
    u.attach(DeviceId(8), None, a).unwrap();
    m.stalled.set(true);
    assert_eq!(
        u.attach(DeviceId(8), None, b),
        Err(Error::Timeout { what: "CMD_SYNC" })
    );
    m.stalled.set(false);
    // The STE may reference either domain: neither can be freed.
    assert_eq!(u.domain_free(a), Err(Error::Busy));
    assert_eq!(u.domain_free(b), Err(Error::Busy));
    // A refusal before any write changes nothing.
    let c = u.domain_alloc(&s1()).unwrap();
    u.attach(DeviceId(9), Some(Pasid::new(1).unwrap()), c)
        .unwrap();
    assert!(u.attach(DeviceId(9), None, b).is_err());
    assert_eq!(ste_of(&u, 9).words[1] & 3, 0);
    u.detach(DeviceId(9), Some(Pasid::new(1).unwrap())).unwrap();
    u.domain_free(c).unwrap();
}

#[test]
fn dirty_tracking_sets_the_hardware_update_bits() {
    // HTTU = 2 (2 << 6): access and dirty state.
    let (m, alloc) = (model(IDR0 | 2 << 6, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    assert!(u.capabilities().dirty_tracking);
    let dirty = |stage| DomainConfig {
        dirty_tracking: true,
        stage,
        ..DomainConfig::default()
    };
    let (a, b) = (
        u.domain_alloc(&dirty(Stage::Second)).unwrap(),
        u.domain_alloc(&dirty(Stage::First)).unwrap(),
    );
    u.attach(DeviceId(1), None, a).unwrap();
    u.attach(DeviceId(2), None, b).unwrap();
    // STE.S2HD (word 2 bit 55) and S2HA (bit 56).
    assert_eq!((ste_of(&u, 1).words[2] >> 55) & 3, 3);
    let config = u.config.lock();
    let cd = config
        .streams
        .iter()
        .flatten()
        .find(|s| s.sid == StreamId(2))
        .and_then(|s| s.cd.as_ref())
        .map(|t| t.read(SubstreamId::new(0).unwrap()).unwrap())
        .unwrap();
    drop(config);
    // CD.HD (bit 42) and HA (bit 43).
    assert_eq!((cd.words[0] >> 42) & 3, 3);
    // A writable leaf carries DBM (bit 51) and starts writable-clean, S2AP[1] (bit 7) clear:
    // hardware marks it dirty by granting write, so only the device's writes count.
    u.map(a, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    assert_eq!((leaf_of(&u, a, 0x1000) >> 51) & 1, 1);
    assert_eq!((leaf_of(&u, a, 0x1000) >> 7) & 1, 0);
    let mut g = Gather::new();
    let mut seen = 0;
    u.read_and_clear_dirty(a, Iova::new(0), M2, &mut |_, _| seen += 1, &mut g)
        .unwrap();
    assert_eq!((seen, g.is_empty()), (0, true));
    // Tracking off: maps write writable-dirty leaves (the unit need not update them).
    u.set_dirty_tracking(a, false).unwrap();
    u.map(a, Iova::new(0x2000), PhysAddr::new(0x8000_1000), K4, RW)
        .unwrap();
    assert_eq!((leaf_of(&u, a, 0x2000) >> 7) & 1, 1);
    // On again: the leaf is cleaned, and the cleaning flushed like an unmap (a cached
    // writable-dirty entry would take writes without marking the leaf).
    take_ops(&m);
    u.set_dirty_tracking(a, true).unwrap();
    assert_eq!((leaf_of(&u, a, 0x2000) >> 7) & 1, 0);
    assert_eq!(take_ops(&m), [TLBI_S2_IPA, SYNC]);
}

/// Hardware dirty updates (`IDR0.HTTU` = 2) on a unit whose table walks do not snoop the CPU
/// caches (`IDR0.COHACC` = 0): the unit writes the dirty state to memory while the CPU may read
/// a stale clean copy from its cache, so a migration's read-and-clear loses pages the device
/// wrote (Linux offers dirty tracking only with both: `arm_smmu_dbm_capable`). Neither the
/// capability nor a domain asking for it is offered; the source says why.
#[test]
fn dirty_tracking_needs_coherent_table_walks() {
    let idr0 = (IDR0 | 2 << 6) & !0x10;
    let (m, alloc) = (model(idr0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let caps = u.capabilities();
    assert!(!caps.coherent_walk);
    assert!(!caps.dirty_tracking, "offered without IDR0.COHACC");
    assert_eq!(
        caps.sources.dirty_tracking,
        crate::iommu::Source::Register(crate::smmuv3::features::DIRTY_WITHOUT_COHERENT_WALK)
    );
    for stage in [Stage::First, Stage::Second] {
        let dirty = DomainConfig {
            dirty_tracking: true,
            stage,
            ..DomainConfig::default()
        };
        assert_eq!(
            u.domain_alloc(&dirty),
            Err(Error::Unsupported(Missing::DirtyTracking))
        );
    }
    // A domain without it cannot turn it on.
    let d = u.domain_alloc(&s2()).unwrap();
    assert_eq!(
        u.set_dirty_tracking(d, true),
        Err(Error::Unsupported(Missing::DirtyTracking))
    );
    // Declared coherent by firmware (IORT COHACC Override): offered.
    let declared = SmmuConfig {
        coherent_access: Some((true, crate::iommu::Source::Firmware("IORT COHACC Override"))),
        ..config()
    };
    let (m2, alloc2) = (model(idr0, 0), VecAllocator::default());
    let u2 = SmmuUnit::new(&m2, &alloc2, declared).unwrap();
    assert!(u2.capabilities().dirty_tracking);
}

/// Only a CMD_SYNC orders the completion of earlier commands (IHI 0070 G.b §4.7): a TLBI queued
/// right after a CFGI_CD may complete first, and a transaction still using the cached CD
/// (reachable while the STE keeps stage 1) would refill the TLB under the ASID that is about to
/// be freed. So whenever the STE still points at the CD table, the CFGI_CD is synced on its
/// own before the ASID is invalidated.
#[test]
fn a_retired_cd_is_invalidated_and_synced_before_its_asid() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let p = |v| Pasid::new(v).unwrap();
    let (a, b, c) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    u.attach(DeviceId(9), Some(p(1)), a).unwrap();
    u.attach(DeviceId(9), Some(p(2)), c).unwrap();
    u.attach(DeviceId(9), None, b).unwrap();
    take_ops(&m);
    // A PASID goes; the STE does not change.
    u.detach(DeviceId(9), Some(p(1))).unwrap();
    assert_eq!(take_ops(&m), [CFGI_CD, SYNC, TLBI_NH_ASID, SYNC]);
    // The RID domain goes while a PASID stays: S1DSS changes, and CD 0 stays reachable through
    // SubstreamID 0.
    u.detach(DeviceId(9), None).unwrap();
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 4..], [CFGI_CD, SYNC, TLBI_NH_ASID, SYNC]);
    assert_eq!(ste_of(&u, 9).config_raw(), 0b101);
    // The last one: the STE aborts first, so one batch suffices.
    u.detach(DeviceId(9), Some(p(2))).unwrap();
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 4..], [CFGI_CD, 0x06, TLBI_NH_ASID, SYNC]);
    // Nested: a stage-2 RID domain replaces a stage-1 one while a nested PASID stays, so the
    // STE keeps its CD table and CD 0 is retired under the same rule.
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let (n0, n1) = (
        u.domain_alloc_nested(&s1(), parent).unwrap(),
        u.domain_alloc_nested(&s1(), parent).unwrap(),
    );
    u.attach(DeviceId(0x30), None, n0).unwrap();
    u.attach(DeviceId(0x30), Some(p(1)), n1).unwrap();
    take_ops(&m);
    u.attach(DeviceId(0x30), None, parent).unwrap();
    let ops = take_ops(&m);
    assert_eq!(&ops[ops.len() - 4..], [CFGI_CD, SYNC, TLBI_NH_ASID, SYNC]);
    assert_eq!(ste_of(&u, 0x30).config_raw(), 0b111);
    u.detach(DeviceId(0x30), Some(p(1))).unwrap();
    u.detach(DeviceId(0x30), None).unwrap();
    for d in [a, b, c, n0, n1, parent] {
        u.domain_free(d).unwrap();
    }
}

/// A CD slot the live STE reaches may be fetched at any time, its words in any order (IHI 0070
/// G.b §3.21.3.1): the unit could pair a new V = 1 with the slot's old TTB0 (a removed domain's,
/// or 0 in a fresh leaf) and fill the TLB with that under the new ASID. So the words go in with
/// V = 0, CFGI_CD + CMD_SYNC, and only then V = 1, CFGI_CD + CMD_SYNC.
#[test]
fn a_cd_in_a_live_table_is_filled_and_invalidated_before_it_is_made_valid() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let p = |v| Pasid::new(v).unwrap();
    let (a, b, c) = (
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
        u.domain_alloc(&s1()).unwrap(),
    );
    u.attach(DeviceId(9), Some(p(1)), a).unwrap();
    take_ops(&m);
    // A second PASID: the STE already reaches the table.
    u.attach(DeviceId(9), Some(p(2)), b).unwrap();
    assert_eq!(take_ops(&m), [CFGI_CD, SYNC, CFGI_CD, SYNC]);
    // Replacing the domain of a PASID: V cleared (CFGI_CD, sync), words written (CFGI_CD,
    // sync), V set (CFGI_CD, sync), then the old ASID.
    u.attach(DeviceId(9), Some(p(2)), c).unwrap();
    assert_eq!(
        take_ops(&m),
        [
            CFGI_CD,
            SYNC,
            CFGI_CD,
            SYNC,
            CFGI_CD,
            SYNC,
            TLBI_NH_ASID,
            SYNC
        ]
    );
    u.detach(DeviceId(9), Some(p(1))).unwrap();
    u.detach(DeviceId(9), Some(p(2))).unwrap();
    for d in [a, b, c] {
        u.domain_free(d).unwrap();
    }
}

/// A device with ATS caches the final (stage 1 + stage 2) translations of a nested domain in
/// its ATC, tagged by the stage-1 input address. Unmapping from the nest parent changes those
/// translations, so the flush must reach the ATCs of streams attached through the parent's
/// children too, and since an IPA range says nothing about the addresses the ATC is indexed
/// by, it must invalidate them whole.
#[test]
fn flushing_a_nest_parent_invalidates_the_atcs_of_nested_ats_streams() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let child = u.domain_alloc_nested(&s1(), parent).unwrap();
    u.set_ats(DeviceId(4), true).unwrap();
    u.attach(DeviceId(4), None, child).unwrap();
    u.map(
        parent,
        Iova::new(0x10_0000),
        PhysAddr::new(0x8000_0000),
        K4,
        RW,
    )
    .unwrap();
    let mut g = Gather::new();
    u.unmap(parent, Iova::new(0x10_0000), K4, &mut g).unwrap();
    take_ops(&m);
    u.flush(parent, &mut g).unwrap();
    let cmds: Vec<[u64; 2]> = m.executed.borrow().clone();
    assert_eq!(
        take_ops(&m),
        [TLBI_S2_IPA, 0x10, SYNC, ATC_INV, SYNC],
        "the stream's ATC holds translations through the parent"
    );
    // The whole ATC of the stream: Size 52 from 0, every SubstreamID.
    assert_eq!(
        cmds[3],
        Command::atc_inv(StreamId(4), None, Iova::ZERO, 52, false)
            .unwrap()
            .words
    );
    // A flush of the child itself still invalidates by range.
    u.map(child, Iova::new(0x4000), PhysAddr::new(0x10_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(child, Iova::new(0x4000), K4, &mut g).unwrap();
    take_ops(&m);
    u.flush(child, &mut g).unwrap();
    assert_eq!(take_ops(&m), [TLBI_NH_VA, SYNC, ATC_INV, SYNC]);
    u.detach(DeviceId(4), None).unwrap();
    u.domain_free(child).unwrap();
    u.domain_free(parent).unwrap();
}

/// After a detach whose CMD_SYNC timed out, the unit may still hold the old STE, and with it
/// the stream's CD table: nothing may free that table, or the domain, until the retry of the
/// detach completes.
#[test]
fn a_cd_table_outlives_a_detach_that_timed_out() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s1()).unwrap();
    u.set_ats(DeviceId(4), true).unwrap();
    u.attach(DeviceId(4), None, d).unwrap();
    m.stalled.set(true);
    assert_eq!(
        u.detach(DeviceId(4), None),
        Err(Error::Timeout { what: "CMD_SYNC" })
    );
    m.stalled.set(false);
    let live = alloc.live_pages();
    // The stream is unsettled: ATS cannot change and the domain cannot go.
    assert_eq!(u.set_ats(DeviceId(4), false), Err(Error::Busy));
    assert_eq!(alloc.live_pages(), live);
    assert_eq!(u.domain_free(d), Err(Error::Busy));
    // The retry of the detach completes it: the stream's caches and the domain's ASID and ATC
    // entries are invalidated, then the CD table goes.
    take_ops(&m);
    u.detach(DeviceId(4), None).unwrap();
    let ops = take_ops(&m);
    assert!(count(&ops, CFGI_STE) >= 1, "{ops:x?}");
    assert_eq!(count(&ops, TLBI_NH_ASID), 1, "{ops:x?}");
    assert_eq!(count(&ops, ATC_INV), 1, "{ops:x?}");
    // The two-level CD table: its L1 table and one leaf.
    assert_eq!(alloc.live_pages(), live - 2);
    assert_eq!(
        u.detach(DeviceId(4), None),
        Err(Error::NotAttached(DeviceId(4)))
    );
    u.set_ats(DeviceId(4), false).unwrap();
    u.domain_free(d).unwrap();
}

/// A guest's nested STE merges events (`STE.MEV`, word 1 bit 19): a guest CD table that
/// faults on every access would otherwise fill the host's event queue, shared by every device
/// (Linux's nested STE sets it "for DoS mitigations on eventq").
#[test]
fn a_guests_nested_ste_merges_events() {
    use crate::iommu::UserStage1;
    let (m, alloc) = (model(IDR0, FWB), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let vste = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | 0x4_0000, 0],
    };
    let user = u.domain_alloc_user(parent, &vste).unwrap();
    u.attach(DeviceId(4), None, user).unwrap();
    let ste = ste_of(&u, 4);
    assert_eq!(ste.config_raw(), 0b111);
    assert_eq!(ste.words[1] & ste::MEV, ste::MEV, "{:#x?}", ste.words);
    assert_eq!(ste::MEV, 1 << 19);
}

/// A user domain (the guest's vSTE over a nest parent): the stream's STE carries the guest's
/// stage-1 fields over the parent's stage 2 and VMID; no crate PASID beside it; the parent
/// cannot be freed under it; a crate-built stage-1 child cannot share the parent's VMID with
/// it (guest ASIDs would alias host ones) and the other way round; unmapping from the parent
/// invalidates the whole ATC of an ATS stream attached through it; leaving it issues
/// TLBI_NH_ALL of the parent's VMID; the audit counts it.
#[test]
fn user_domain_gets_the_guests_stage1_over_the_parent() {
    use crate::iommu::UserStage1;
    let (m, alloc) = (model(IDR0, FWB), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let parent = u
        .domain_alloc(&DomainConfig {
            nest_parent: true,
            ..s2()
        })
        .unwrap();
    let vste = UserStage1::SmmuV3 {
        ste: [
            1 | 0b101 << 1 | 0x4_0000 | 2 << 59,
            2 | 1 << 2 | 1 << 4 | 3 << 6,
        ],
    };
    let plain = u.domain_alloc(&s2()).unwrap();
    assert_eq!(
        u.domain_alloc_user(plain, &vste),
        Err(Error::Unsupported(Missing::Nesting))
    );
    // EATS is the host's (set_ats), not the guest's.
    let eats = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | 0x4_0000, 1 << 28],
    };
    assert!(matches!(
        u.domain_alloc_user(parent, &eats),
        Err(Error::InvalidArgument { .. })
    ));
    let user = u.domain_alloc_user(parent, &vste).unwrap();
    assert_eq!(u.domain_alloc_nested(&s1(), parent), Err(Error::Busy));
    assert_eq!(u.domain_free(parent), Err(Error::Busy));
    // Map, unmap, flush and query refuse it: it has no table.
    assert_eq!(
        u.map(user, Iova::new(0), PhysAddr::new(0x8000_0000), K4, RW),
        Err(Error::InvalidDomain(user))
    );
    u.set_ats(DeviceId(4), true).unwrap();
    u.attach(DeviceId(4), None, user).unwrap();
    let ste = ste_of(&u, 4);
    assert_eq!(ste.config_raw(), 0b111);
    // FWB on the parent: the guest's stage 1 cannot make the DMA Non-cacheable.
    assert_eq!(ste.words[1] & ste::S2FWB, ste::S2FWB);
    assert_eq!(ste.words[0] & ste::S1CONTEXTPTR.mask(), 0x4_0000);
    assert_eq!(ste::S1CDMAX.get(ste.words[0]), 2);
    assert_eq!(ste::S1DSS.get(ste.words[1]), 2);
    assert_eq!(ste::EATS.get(ste.words[1]), 1);
    // The parent's VMID (the parent has 1, `plain` 2).
    assert_eq!(ste.words[2] & 0xffff, 1);
    assert!(u
        .attach(
            DeviceId(4),
            Some(Pasid::new(1).unwrap()),
            u.domain_alloc(&s1()).unwrap()
        )
        .is_err());
    assert_eq!(u.audit().map(|a| a.unsettled), Ok(0));
    u.map(
        parent,
        Iova::new(0x10_0000),
        PhysAddr::new(0x8000_0000),
        K4,
        RW,
    )
    .unwrap();
    let mut g = Gather::new();
    u.unmap(parent, Iova::new(0x10_0000), K4, &mut g).unwrap();
    take_ops(&m);
    u.flush(parent, &mut g).unwrap();
    let cmds: Vec<[u64; 2]> = m.executed.borrow().clone();
    assert_eq!(take_ops(&m), [TLBI_S2_IPA, 0x10, SYNC, ATC_INV, SYNC]);
    assert_eq!(
        cmds[3],
        Command::atc_inv(StreamId(4), None, Iova::ZERO, 52, false)
            .unwrap()
            .words
    );
    u.detach(DeviceId(4), None).unwrap();
    let ops = take_ops(&m);
    assert_eq!(
        count(&ops, 0x10),
        1,
        "TLBI_NH_ALL of the parent's VMID: {ops:x?}"
    );
    u.domain_free(user).unwrap();
    // Without user domains the parent takes a crate-built child again, and then no user one.
    let child = u.domain_alloc_nested(&s1(), parent).unwrap();
    assert_eq!(u.domain_alloc_user(parent, &vste), Err(Error::Busy));
    u.domain_free(child).unwrap();
    u.domain_free(parent).unwrap();
    assert_eq!(u.audit().map(|a| a.unsettled), Ok(0));
}

/// The slot of the level-0 leaf that maps `iova` in `d` (a 4 KiB stage-2 domain).
fn leaf_slot_of(
    u: &Unit<'_>,
    d: DomainHandle,
    iova: u64,
) -> &'static core::sync::atomic::AtomicU64 {
    let slot = u.domains[usize::from(d.0)].read();
    let dom = slot.as_ref().unwrap();
    let mut table = match &dom.table {
        domain::DomainTable::Stage2(t) => t.root().get(),
        domain::DomainTable::Stage1(t) => t.root().get(),
    };
    let geo = *dom.geometry();
    for level in (1..geo.levels).rev() {
        let idx = geo.index(level, iova) as u64;
        // SAFETY: PA == VA for VecAllocator pages; the walk stays inside live tables.
        let e = unsafe { ((table + idx * 8) as *const u64).read_volatile() };
        assert_eq!(e & 3, 3, "a table at level {level}");
        table = e & 0x0000_ffff_ffff_f000;
    }
    let at = table + geo.index(0, iova) as u64 * 8;
    // SAFETY: an entry of a live leaf table, which outlives the test's use (the allocator's
    // pages are never unmapped while the test runs); table memory is 64-bit atomics.
    unsafe { &*(at as *const core::sync::atomic::AtomicU64) }
}

/// A `set_dirty_tracking` on whose table walk fails partway (`EntryUnstable`: hardware kept
/// rewriting the third leaf) has cleaned the first two: their TLB entries may still be
/// writable-dirty, taking writes without marking the leaves, so the call invalidates them
/// before it returns (or leaves the invalidation owed by the domain if that fails too).
#[test]
fn a_failed_tracking_switch_invalidates_the_leaves_it_cleaned() {
    let (m, alloc) = (model(IDR0 | 2 << 6, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u
        .domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..s2()
        })
        .unwrap();
    u.attach(DeviceId(1), None, d).unwrap();
    // Tracking off: maps write writable-dirty leaves, S2AP[1] (bit 7) set.
    u.set_dirty_tracking(d, false).unwrap();
    for i in 1..4 {
        u.map(
            d,
            Iova::new(i * K4),
            PhysAddr::new(0x8000_0000 + i * K4),
            K4,
            RW,
        )
        .unwrap();
    }
    take_ops(&m);
    // AF (bit 10) keeps flipping on the third leaf.
    crate::pgtable::testutil::keep_rewriting(leaf_slot_of(&u, d, 3 * K4), 1 << 10);
    let r = u.set_dirty_tracking(d, true);
    crate::pgtable::testutil::stop_rewriting();
    assert!(
        matches!(
            r,
            Err(Error::PageTable(
                crate::pgtable::Error::EntryUnstable { .. }
            ))
        ),
        "{r:?}"
    );
    assert_eq!((leaf_of(&u, d, K4) >> 7) & 1, 0, "leaf 1 cleaned");
    assert_eq!((leaf_of(&u, d, 2 * K4) >> 7) & 1, 0, "leaf 2 cleaned");
    assert_eq!((leaf_of(&u, d, 3 * K4) >> 7) & 1, 1, "leaf 3 not cleaned");
    let ops = take_ops(&m);
    let owed = u.domains[usize::from(d.0)]
        .read()
        .as_ref()
        .unwrap()
        .owed
        .is_owed();
    assert!(
        !owed && (count(&ops, TLBI_S2_IPA) == 2 && ops.last() == Some(&SYNC)),
        "the cleaned leaves not invalidated (or owed instead): {ops:x?}"
    );
    // The retry cleans the third and invalidates it.
    u.set_dirty_tracking(d, true).unwrap();
    assert_eq!((leaf_of(&u, d, 3 * K4) >> 7) & 1, 0);
    u.detach(DeviceId(1), None).unwrap();
    u.domain_free(d).unwrap();
}
