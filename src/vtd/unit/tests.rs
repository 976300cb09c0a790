//! The unit against the register-file model of `test_support` (which consumes and logs
//! descriptors but keeps no caches; `tests/vtd_model.rs` runs against the behavioural model).

extern crate std;

use std::vec::Vec;

use super::*;
use crate::iommu::{DeviceId, DomainConfig, Iommu, Missing, Pasid as IommuPasid, Stage};
use crate::mem::PhysAddr;
use crate::pgtable::{Gather, Prot};
use crate::vtd::regs::{Fsts, Gcmd, RTADDR_REG};
use crate::vtd::test_support::{Model, TestAlloc, MODEL_FRO};

/// QEMU's default CAP: PSI, MAMV 18, SLLPS 2M+1G, MGAW 48, SAGAW 39+48, ND 6, FRO 0x22.
const QEMU_CAP: u64 = 0x00d2_008c_222f_0606;
/// QI, DT, IR, EIM, PT; IRO 0xf. No SC, no C.
const LEGACY_ECAP: u64 = 0x00f0_0f5e;
/// C, QI, DT, SC, PASID (PSS 19), SMTS, SLTS, FLTS, SMPWCS; IRO 0xf.
const SCALABLE_ECAP: u64 =
    SMPWCS | 1 << 47 | 1 << 46 | 1 << 43 | 1 << 40 | 19 << 35 | 0xf << 8 | 0x87;
/// ECAP bit 48: page walks through scalable-mode PASID entries may snoop (with PWSNP).
const SMPWCS: u64 = 1 << 48;
const CM: u64 = 1 << 7;
const RWBF: u64 = 1 << 4;
const PSI: u64 = 1 << 39;

const K4: u64 = 0x1000;
const M2: u64 = 0x20_0000;
const G1: u64 = 0x4000_0000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const DEV: DeviceId = DeviceId(0x0020); // 00:04.0
const DEV2: DeviceId = DeviceId(0x0108); // 01:01.0

type Unit<'a> = VtdUnit<&'a Model, &'a TestAlloc>;

/// The test allocator hands out host addresses (47 bits) as physical ones: the platform's HAW
/// (DMAR) must cover them, or the engine refuses to link its tables.
const fn host_config(mode: Mode) -> VtdConfig {
    VtdConfig {
        mode,
        ..VtdConfig::legacy()
    }
    .with_host_address_width(48)
}

fn unit<'a>(m: &'a Model, a: &'a TestAlloc, mode: Mode) -> Unit<'a> {
    let cfg = VtdConfig {
        mode,
        poll_budget: 1000,
        ..host_config(Mode::Legacy)
    };
    let u = VtdUnit::new(m, a, cfg).unwrap();
    u.enable().unwrap();
    m.clear_logs();
    u
}

fn legacy_model() -> Model {
    Model::with_caps(QEMU_CAP, LEGACY_ECAP)
}

fn scalable_model() -> Model {
    Model::with_caps(QEMU_CAP, SCALABLE_ECAP)
}

/// Descriptor type codes consumed, in order.
fn types(m: &Model) -> Vec<u64> {
    m.log().iter().map(|d| d[0] & 0xf).collect()
}

/// Word 0 and 1 of every consumed descriptor.
fn words(m: &Model) -> Vec<(u64, u64)> {
    m.log().iter().map(|d| (d[0], d[1])).collect()
}

/// An IOTLB page-selective descriptor as §6.5.2.3 lays it out (DR/DW set: QEMU's CAP has
/// DRD and DWD).
fn psi(did: u64, addr: u64, am: u64, ih: bool) -> (u64, u64) {
    (
        0x2 | 3 << 4 | 1 << 6 | 1 << 7 | did << 16,
        addr | u64::from(ih) << 6 | am,
    )
}

fn dsi(did: u64) -> (u64, u64) {
    (0x2 | 2 << 4 | 1 << 6 | 1 << 7 | did << 16, 0)
}

/// Reads the 64-bit word at physical address `pa` (test pages: PA == host address).
fn read_pa(pa: u64) -> u64 {
    // SAFETY: `pa` is inside a live `TestAlloc` page whose host address equals its PA.
    unsafe { core::ptr::read_volatile(pa as *const u64) }
}

fn root_pa(m: &Model) -> u64 {
    m.read64(RTADDR_REG) & !0xfff
}

/// The legacy context entry of `sid`.
fn legacy_context(m: &Model, sid: u16) -> [u64; 2] {
    let root = read_pa(root_pa(m) + u64::from(sid >> 8) * 16);
    assert_eq!(root & 1, 1, "root entry present");
    let ctx = (root & !0xfff) + u64::from(sid & 0xff) * 16;
    [read_pa(ctx), read_pa(ctx + 8)]
}

/// The scalable context entry of `sid` (word 0, 1) and its PASID entry `pasid` (words 0-2).
fn scalable_entries(m: &Model, sid: u16, pasid: u32) -> ([u64; 2], [u64; 3]) {
    let half = u64::from(sid & 0x80 != 0);
    let root = read_pa(root_pa(m) + u64::from(sid >> 8) * 16 + half * 8);
    assert_eq!(root & 1, 1, "root entry half present");
    let ctx = (root & !0xfff) + u64::from(sid & 0x7f) * 32;
    let c = [read_pa(ctx), read_pa(ctx + 8)];
    let dir = read_pa((c[0] & !0xfff) + u64::from(pasid >> 6) * 8);
    if dir & 1 == 0 {
        return (c, [0; 3]);
    }
    let pe = (dir & !0xfff) + u64::from(pasid & 0x3f) * 64;
    (c, [read_pa(pe), read_pa(pe + 8), read_pa(pe + 16)])
}

/// The second-stage leaf mapping `iova` (walks 4 levels by hand).
fn ss_leaf(root: u64, iova: u64) -> u64 {
    let mut table = root;
    for level in (0..4).rev() {
        let e = read_pa(table + ((iova >> (12 + 9 * level)) & 0x1ff) * 8);
        if level == 0 || e & 1 << 7 != 0 || e & 3 == 0 {
            return e;
        }
        table = e & 0x000f_ffff_ffff_f000;
    }
    0
}

fn ss_root<W: RegisterWindow, A: PageAllocator + Clone>(u: &VtdUnit<W, A>, d: DomainHandle) -> u64 {
    u.with_domain(d, |dom| match &dom.table {
        crate::vtd::domain::DomainTable::Second(t) => t.root().get(),
        crate::vtd::domain::DomainTable::First(t) => t.root().get(),
    })
    .unwrap()
}

#[test]
fn unit_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<VtdUnit<crate::mmio::Mmio, &'static TestAlloc>>();
    check::<Unit<'static>>();
}

#[test]
fn enable_legacy_sequence() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let cfg = VtdConfig {
        poll_budget: 1000,
        ..host_config(Mode::Legacy)
    };
    let u = VtdUnit::new(&m, &a, cfg).unwrap();
    assert!(m.gcmd_log().is_empty(), "new() writes nothing");
    u.enable().unwrap();
    assert!(u.is_enabled());
    // RTADDR: the root table, TTM 00b.
    assert_eq!(m.read64(RTADDR_REG) & 0xfff, 0);
    assert!(a.is_live(PhysAddr::new(root_pa(&m))));
    // GCMD: SRTP, then QIE, then TE (the one-shot SRTP never echoed).
    let g = m.gcmd_log();
    assert_eq!(
        g,
        [
            Gcmd::SRTP.bits(),
            Gcmd::QIE.bits(),
            (Gcmd::QIE | Gcmd::TE).bits()
        ]
    );
    // Global context-cache and IOTLB invalidation, one wait.
    assert_eq!(types(&m), [1, 2, 5]);
    assert_eq!(words(&m)[0].0, 0x11);
    assert_eq!(words(&m)[1].0 & 0x30, 0x10);
    assert_eq!(u.stats().waits, 1);
    // Disable: TE off, then QIE off; queue pages returned (root table stays).
    let pages = a.live_pages();
    u.disable().unwrap();
    assert!(!u.is_enabled());
    assert_eq!(a.live_pages(), pages - 2);
    assert_eq!(m.gcmd_log().last(), Some(&0));
    // And back on.
    u.enable().unwrap();
    assert!(u.is_enabled());
}

#[test]
fn enable_scalable_sequence() {
    let (m, a) = (scalable_model(), TestAlloc::default());
    let u = VtdUnit::new(&m, &a, host_config(Mode::Scalable)).unwrap();
    u.enable().unwrap();
    assert_eq!(m.read64(RTADDR_REG) & 0xc00, 0x400, "TTM 01b");
    assert_eq!(
        m.read64(regs::IQA_REG) & (1 << 11),
        1 << 11,
        "256-bit descriptors"
    );
    // Context cache, PASID cache (global: G 11b), IOTLB, wait.
    assert_eq!(types(&m), [1, 7, 2, 5]);
    assert_eq!(words(&m)[1].0, 0x37);
    assert_eq!(u.capabilities().pasid_bits, DEFAULT_PASID_BITS);
    // Scalable mode is refused without SMTS, and without QI.
    let no_sm = Model::with_caps(QEMU_CAP, LEGACY_ECAP);
    assert!(matches!(
        VtdUnit::new(&no_sm, &a, host_config(Mode::Scalable)).err(),
        Some(Error::Unsupported { what, .. }) if what.contains("SMTS")
    ));
    let no_qi = Model::with_caps(QEMU_CAP, SCALABLE_ECAP & !2);
    assert!(matches!(
        VtdUnit::new(&no_qi, &a, host_config(Mode::Scalable)).err(),
        Some(Error::Unsupported { what, .. }) if what.contains("QI")
    ));
}

#[test]
fn enable_times_out_when_hardware_ignores_gcmd() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let u = VtdUnit::new(
        &m,
        &a,
        VtdConfig {
            poll_budget: 20,
            ..host_config(Mode::Legacy)
        },
    )
    .unwrap();
    m.freeze_gcmd(true);
    assert!(matches!(
        u.enable(),
        Err(Error::Timeout {
            what: Wait::GlobalStatus { .. },
            polls: 20
        })
    ));
    m.freeze_gcmd(false);
    u.enable().unwrap();
}

#[test]
fn snoop_domain_refused_without_sc() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Legacy);
    let snoop = DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&snoop),
        Err(iommu::Error::Unsupported(Missing::SnoopControl))
    );
    assert!(!u.capabilities().enforce_snoop);
    // First stage needs scalable mode; dirty tracking needs SLADS.
    let fs = DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    };
    assert!(matches!(
        u.domain_alloc(&fs),
        Err(iommu::Error::Unsupported(Missing::Mode { .. }))
    ));
    let dirty = DomainConfig {
        dirty_tracking: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&dirty),
        Err(iommu::Error::Unsupported(Missing::DirtyTracking))
    );
    let wide = DomainConfig {
        min_ias: 57,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&wide),
        Err(iommu::Error::Unsupported(Missing::AddressWidth {
            need: 57,
            have: 48
        }))
    );

    // With SC the domain sets SNP (bit 11) in every leaf.
    let m = Model::with_caps(QEMU_CAP, LEGACY_ECAP | 0x80);
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&snoop).unwrap();
    u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let leaf = ss_leaf(ss_root(&u, d), 0x10_0000);
    assert_eq!(leaf, 0x8000_0000 | 1 << 11 | 3);
    assert_eq!(u.domain_geometry(d), Ok((48, K4 | M2 | G1)));
}

#[test]
fn attach_legacy_writes_context_entry_and_replaces() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Legacy);
    let d1 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d1).unwrap();
    // lo: SLPTPTR | TT 00b | P; hi: AW 010b (48 bits) | DID 0 << 8.
    assert_eq!(legacy_context(&m, 0x20), [ss_root(&u, d1) | 1, 2]);
    assert!(
        types(&m).is_empty(),
        "making an entry present needs no invalidation"
    );
    u.attach(DEV, None, d1).unwrap();
    assert!(types(&m).is_empty(), "same domain again: nothing to do");

    // Replace: context cache (device-selective, old DID 0), IOTLB (DSI, DID 0), wait.
    u.attach(DEV, None, d2).unwrap();
    assert_eq!(types(&m), [1, 2, 5]);
    assert_eq!(words(&m)[0].0, 0x1 | 3 << 4 | 0x20 << 32);
    assert_eq!(words(&m)[1], dsi(0));
    assert_eq!(legacy_context(&m, 0x20), [ss_root(&u, d2) | 1, 2 | 1 << 8]);

    // Exclusive attach over another domain fails Busy and changes nothing.
    let excl = AttachOptions {
        exclusive: true,
        ..AttachOptions::default()
    };
    assert_eq!(u.attach_with(DEV, None, d1, excl), Err(iommu::Error::Busy));
    assert_eq!(legacy_context(&m, 0x20)[1], 2 | 1 << 8);
    // PASIDs need scalable mode.
    assert_eq!(
        u.attach(DEV, IommuPasid::new(1), d1),
        Err(iommu::Error::Unsupported(Missing::Pasid { bits: 0 }))
    );
    assert_eq!(u.domain_free(d2), Err(iommu::Error::Busy));

    // Detach: P cleared and the rest scrubbed after the invalidation.
    m.clear_logs();
    u.detach(DEV, None).unwrap();
    assert_eq!(types(&m), [1, 2, 5]);
    assert_eq!(legacy_context(&m, 0x20), [0, 0]);
    assert_eq!(u.detach(DEV, None), Err(iommu::Error::NotAttached(DEV)));
    u.domain_free(d2).unwrap();
    assert_eq!(
        u.attach(DEV, None, d2),
        Err(iommu::Error::InvalidDomain(d2))
    );
    assert_eq!(
        u.attach(DeviceId(0x1_0000), None, d1),
        Err(iommu::Error::InvalidDevice(DeviceId(0x1_0000)))
    );
}

#[test]
fn attach_scalable_rid_and_pasid() {
    let (m, a) = (scalable_model(), TestAlloc::default());
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
            ..DomainConfig::default()
        })
        .unwrap();
    u.attach(DEV2, None, ss).unwrap();
    let (ctx, pe) = scalable_entries(&m, 0x108, 0);
    // Context: P | PASIDE (bit 3) | PDTS 2 (<< 9); RID_PASID 0.
    assert_eq!(ctx[0] & 0xfff, 1 | 1 << 3 | 2 << 9);
    assert_eq!(ctx[1], 0);
    // PASID entry 0: SSPTPTR | PGTT 010b | AW 010b | P; DID 0 | PWSNP (bit 87, ECAP.SMPWCS) |
    // PGSNP (bit 88).
    assert_eq!(
        pe,
        [ss_root(&u, ss) | 2 << 6 | 2 << 2 | 1, 1 << 23 | 1 << 24, 0]
    );

    let p5 = IommuPasid::new(5).unwrap();
    u.attach(DEV2, Some(p5), fs).unwrap();
    let (_, pe) = scalable_entries(&m, 0x108, 5);
    // First stage: PGTT 001b, AW 010b (widest SAGAW), DID 1 | PWSNP, FSPTPTR with FLPM 00b.
    assert_eq!(pe, [1 << 6 | 2 << 2 | 1, 1 << 23 | 1, ss_root(&u, fs)]);
    assert!(types(&m).is_empty());
    // PASID 0 is RID_PASID; PASIDs beyond the offered width are refused.
    assert_eq!(
        u.attach(DEV2, IommuPasid::new(0), fs),
        Err(iommu::Error::InvalidPasid(IommuPasid::new(0).unwrap()))
    );
    let big = IommuPasid::new(1 << 15).unwrap();
    assert_eq!(
        u.attach(DEV2, Some(big), fs),
        Err(iommu::Error::InvalidPasid(big))
    );
    // Exclusive setup of a present PASID entry of another domain: Busy.
    let excl = AttachOptions {
        exclusive: true,
        ..AttachOptions::default()
    };
    assert_eq!(
        u.attach_with(DEV2, Some(p5), ss, excl),
        Err(iommu::Error::Busy)
    );

    // Replace PASID 5 (first stage) by the second-stage domain: PASID cache (PASID-selective,
    // DID 1, PASID 5), PASID-based IOTLB (all of PASID 5, DID 1), wait.
    u.attach(DEV2, Some(p5), ss).unwrap();
    assert_eq!(types(&m), [7, 6, 5]);
    assert_eq!(words(&m)[0].0, 0x7 | 1 << 4 | 1 << 16 | 5 << 32);
    assert_eq!(words(&m)[1], (0x6 | 2 << 4 | 1 << 16 | 5 << 32, 0));
    let (_, pe) = scalable_entries(&m, 0x108, 5);
    assert_eq!(pe[1], 1 << 23 | 1 << 24, "now DID 0 with PWSNP and PGSNP");

    // Detach the RID: PASID cache for PASID 0, IOTLB domain-selective, wait.
    m.clear_logs();
    u.detach(DEV2, None).unwrap();
    assert_eq!(types(&m), [7, 2, 5]);
    assert_eq!(scalable_entries(&m, 0x108, 0).1, [0; 3]);
    assert_eq!(
        scalable_entries(&m, 0x108, 5).1[1],
        1 << 23 | 1 << 24,
        "PASID 5 untouched"
    );
}

/// Maps, unmaps and flushes in a legacy second-stage domain; returns the descriptors of the
/// flush.
fn flush_pattern(
    m: &Model,
    u: &Unit<'_>,
    d: DomainHandle,
    maps: &[(u64, u64)],
    unmap: (u64, u64),
) -> (Vec<(u64, u64)>, usize) {
    for &(iova, len) in maps {
        u.map(d, Iova::new(iova), PhysAddr::new(iova), len, RW)
            .unwrap();
    }
    m.clear_logs();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(unmap.0), unmap.1, &mut g).unwrap();
    let freed = g.freed_pages();
    let live = u.allocator().live_pages();
    u.flush(d, &mut g).unwrap();
    assert!(g.is_empty());
    assert_eq!(
        u.allocator().live_pages(),
        live - freed,
        "freed tables went back"
    );
    (words(m), freed)
}

#[test]
fn flush_descriptor_counts() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    let wait = |w: &Vec<(u64, u64)>| w.last().map(|x| x.0 & 0xf) == Some(5);

    // Aligned run of 16 pages: one PSI, AM 4, IH (only leaves changed).
    let (w, freed) = flush_pattern(&m, &u, d, &[(0x10_0000, 16 * K4)], (0x10_0000, 16 * K4));
    assert_eq!((w.len(), freed), (2, 0));
    assert_eq!(w[0], psi(0, 0x10_0000, 4, true));
    assert!(wait(&w));

    // Unaligned run, pages 0x201..=0x203: the aligned block 0x200..=0x203, AM 2.
    let (w, _) = flush_pattern(&m, &u, d, &[(0x20_1000, 3 * K4)], (0x20_1000, 3 * K4));
    assert_eq!(w[..1], [psi(0, 0x20_0000, 2, true)]);
    assert_eq!(w.len(), 2);

    // A 2 MiB leaf: AM 9, IH.
    let (w, _) = flush_pattern(&m, &u, d, &[(0x4000_0000, M2)], (0x4000_0000, M2));
    assert_eq!(w[..1], [psi(0, 0x4000_0000, 9, true)]);
    assert_eq!(w.len(), 2);

    // 2 MiB of 4 KiB pages unmapped whole: the leaf table is freed -> IH clear.
    let (w, freed) = flush_pattern(
        &m,
        &u,
        d,
        &[(0x8000_0000, K4), (0x8000_1000, M2 - K4)],
        (0x8000_0000, M2),
    );
    assert_eq!(freed, 1);
    assert_eq!(w[..1], [psi(0, 0x8000_0000, 9, false)]);
    assert_eq!(w.len(), 2);

    // 64 GiB of 1 GiB leaves: 64 blocks of 2^18 pages > PAGE_SELECTIVE_LIMIT -> one DSI.
    let (w, _) = flush_pattern(&m, &u, d, &[(64 * G1, 64 * G1)], (64 * G1, 64 * G1));
    assert_eq!(w, [dsi(0), w[1]]);
    assert!(wait(&w));
    // 2 GiB of 1 GiB leaves: covering AM 19 > MAMV 18 -> two AM-18 blocks.
    let (w, _) = flush_pattern(&m, &u, d, &[(6 * G1, 2 * G1)], (6 * G1, 2 * G1));
    assert_eq!(w[..2], [psi(0, 6 * G1, 18, true), psi(0, 7 * G1, 18, true)]);
    assert_eq!(w.len(), 3);
    assert_eq!(u.stats().waits, 1 + 6, "enable, then one per flush");
}

#[test]
fn flush_without_psi_is_domain_selective() {
    let a = TestAlloc::default();
    let m = Model::with_caps(QEMU_CAP & !PSI, LEGACY_ECAP);
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let (w, _) = flush_pattern(&m, &u, d, &[(0, K4)], (0, K4));
    assert_eq!(w[..1], [dsi(0)]);
    assert_eq!(w.len(), 2);
}

#[test]
fn pages_released_only_after_the_wait() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let u = VtdUnit::new(
        &m,
        &a,
        VtdConfig {
            poll_budget: 50,
            ..host_config(Mode::Legacy)
        },
    )
    .unwrap();
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0), M2, RW).unwrap();
    u.map(d, Iova::new(M2), PhysAddr::new(M2), K4, RW).unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(M2), M2, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 1);
    let live = a.live_pages();
    // The wait never completes: Timeout, and the page stays in the gather.
    m.stall(true);
    assert!(matches!(
        u.flush(d, &mut g),
        Err(iommu::Error::Timeout { .. })
    ));
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(a.live_pages(), live);
    // Once the hardware moves again the flush completes and the page is freed.
    m.stall(false);
    u.flush(d, &mut g).unwrap();
    assert_eq!(a.live_pages(), live - 1);
    assert!(g.is_empty());
}

#[test]
fn queue_errors_are_reported_and_the_unit_keeps_working() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    u.attach_with(DEV, None, d, ats).unwrap();
    // TT 01b: device TLB allowed.
    assert_eq!(legacy_context(&m, 0x20)[0] & 0xc, 0x4);
    // The device-TLB invalidation times out (ITE).
    m.ite_on_device_tlb(true);
    u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
    assert!(matches!(
        u.flush(d, &mut g),
        Err(iommu::Error::CommandError { what, .. }) if what.contains("ITE")
    ));
    assert!(!regs::fsts(&m).0.contains(Fsts::ITE), "cleared");
    m.ite_on_device_tlb(false);
    m.clear_logs();
    u.flush(d, &mut g).unwrap();
    // IOTLB PSI, device-TLB (type 3, SID 0x20, one page), wait.
    assert_eq!(types(&m), [2, 3, 5]);
    // No ECAP.DIT: PFSID (15:12, 63:52) is reserved and stays 0.
    assert_eq!(words(&m)[1], (0x3 | 0x20 << 32, 0));
    // ICE reported once, then gone.
    u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
    m.raise_fsts(Fsts::ICE);
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
    assert!(u.flush(d, &mut g).is_err());
    u.flush(d, &mut g).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
}

#[test]
fn caching_mode_invalidates_on_map_and_reserves_did_0() {
    let a = TestAlloc::default();
    let m = Model::with_caps(QEMU_CAP | CM, LEGACY_ECAP);
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    // Newly present context entry under CM: context cache (device, DID 0), IOTLB DSI, wait.
    assert_eq!(types(&m), [1, 2, 5]);
    assert_eq!(words(&m)[1], dsi(1));
    assert_eq!(
        legacy_context(&m, 0x20)[1],
        2 | 1 << 8,
        "DID 1: 0 is reserved"
    );
    m.clear_logs();
    u.map(d, Iova::new(0x40_0000), PhysAddr::new(0), 4 * K4, RW)
        .unwrap();
    // Not-present entries may be cached, paging-structure ones too: PSI without IH.
    assert_eq!(words(&m)[..1], [psi(1, 0x40_0000, 2, false)]);
    assert_eq!(types(&m), [2, 5]);
}

#[test]
fn write_buffer_flush_on_map_when_rwbf() {
    let a = TestAlloc::default();
    let m = Model::with_caps(QEMU_CAP | RWBF, LEGACY_ECAP);
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
    assert_eq!(m.gcmd_log(), [(Gcmd::WBF | Gcmd::TE | Gcmd::QIE).bits()]);
    assert!(types(&m).is_empty());
}

#[test]
fn register_based_invalidation_without_qi() {
    let a = TestAlloc::default();
    let m = Model::with_caps(QEMU_CAP, LEGACY_ECAP & !2);
    let cfg = VtdConfig {
        poll_budget: 100,
        ..host_config(Mode::Legacy)
    };
    let u = VtdUnit::new(&m, &a, cfg).unwrap();
    u.enable().unwrap();
    let iotlb = regs::iotlb_reg(crate::vtd::test_support::MODEL_IRO);
    // Global context command (CIRG 01b), global IOTLB (IIRG 01b, DR|DW).
    let log = m.reg_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0], (regs::CCMD_REG, 1 << 63 | 1 << 61));
    assert_eq!(log[1], (iotlb, 1 << 63 | 1 << 60 | 3 << 48));
    assert_eq!(m.read64(regs::IQA_REG), 0, "no queue");
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x10_0000), PhysAddr::new(0), 2 * K4, RW)
        .unwrap();
    m.clear_logs();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x10_0000), 2 * K4, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    // Page-selective: IVA = address | IH | AM 1; IOTLB_REG IIRG 11b, DID 0.
    assert_eq!(m.reg_log(), [(iotlb, 1 << 63 | 3 << 60 | 3 << 48)]);
    assert_eq!(
        m.read64(crate::vtd::test_support::MODEL_IRO),
        0x10_0000 | 1 << 6 | 1
    );
    // ATS needs queued invalidation.
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    assert!(matches!(
        u.attach_with(DEV2, None, d, ats),
        Err(iommu::Error::Unsupported(_))
    ));
    assert_eq!(u.stats().descriptors, 0);
}

#[test]
fn first_stage_flush_is_pasid_based_per_pasid() {
    let a = TestAlloc::default();
    let m = scalable_model();
    let u = unit(&m, &a, Mode::Scalable);
    let fs = u
        .domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        })
        .unwrap();
    u.attach(DEV, None, fs).unwrap();
    u.attach(DEV2, None, fs).unwrap();
    u.attach(DEV2, IommuPasid::new(9), fs).unwrap();
    u.map(fs, Iova::new(0x7000), PhysAddr::new(0x7000), K4, RW)
        .unwrap();
    m.clear_logs();
    let mut g = Gather::new();
    u.unmap(fs, Iova::new(0x7000), K4, &mut g).unwrap();
    u.flush(fs, &mut g).unwrap();
    // PASID 0 (shared by both RIDs) once, PASID 9 once, then the wait.
    assert_eq!(types(&m), [6, 6, 5]);
    let w = words(&m);
    assert_eq!(w[0], (0x6 | 3 << 4, 0x7000 | 1 << 6));
    assert_eq!(w[1], (0x6 | 3 << 4 | 9 << 32, 0x7000 | 1 << 6));
}

#[test]
fn faults_are_drained() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Legacy);
    // A write (T1 = 0) from 00:04.0 to 0x5000, reason 0x5.
    m.inject_fault(0, 0x5000, 0x5 << 32 | 0x20);
    let mut seen = Vec::new();
    let s =
        u.drain_faults(|i, r| seen.push((i, r.source_id().get(), r.fault_info(), r.reason_code())));
    assert_eq!(seen, [(0, 0x20, 0x5000, 5)]);
    assert_eq!(s.records, 1);
    assert!(!s.still_pending);
    let _ = MODEL_FRO;
}

#[test]
fn reserved_window_and_capabilities() {
    let (m, a) = (scalable_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Scalable);
    assert_eq!(u.reserved_regions(), [INTERRUPT_WINDOW]);
    let c = u.capabilities();
    assert_eq!((c.ias, c.oas, c.page_sizes), (48, 48, K4 | M2 | G1));
    assert!(c.enforce_snoop && c.coherent_walk && !c.dirty_tracking && !c.nesting);
}

#[test]
fn domain_ids_run_out() {
    let a = TestAlloc::default();
    // ND 0: 16 domain-IDs; with CM, DID 0 is reserved: 15 domains.
    let m = Model::with_caps((QEMU_CAP & !7) | CM, LEGACY_ECAP);
    let u = unit(&m, &a, Mode::Legacy);
    let ds: Vec<_> = (0..15)
        .map(|_| u.domain_alloc(&DomainConfig::default()).unwrap())
        .collect();
    assert_eq!(
        u.domain_alloc(&DomainConfig::default()),
        Err(iommu::Error::NoDomainIds)
    );
    u.domain_free(ds[3]).unwrap();
    assert_eq!(u.domain_alloc(&DomainConfig::default()), Ok(ds[3]));
}

#[test]
fn concurrent_maps_on_one_domain() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let u = &u;
            s.spawn(move || {
                for i in 0..64u64 {
                    let iova = t * G1 + i * K4;
                    u.map(d, Iova::new(iova), PhysAddr::new(iova), K4, RW)
                        .unwrap();
                }
            });
        }
    });
    let mut n = 0;
    u.for_each_mapping(d, Iova::new(0), 4 * G1, &mut |_| n += 1)
        .unwrap();
    assert_eq!(n, 256);
}

#[test]
fn pasid_tables_on_demand_and_dirty_entries() {
    let a = TestAlloc::default();
    // Scalable ECAP plus SLADS (bit 45).
    let m = Model::with_caps(QEMU_CAP, SCALABLE_ECAP | 1 << 45);
    let u = unit(&m, &a, Mode::Scalable);
    let d = u
        .domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        })
        .unwrap();
    let before = a.live_pages();
    // First attach of a device: context table, PASID directory, PASID table 0.
    u.attach(DEV, None, d).unwrap();
    assert_eq!(a.live_pages(), before + 3);
    // PASIDs 1..=63 share table 0; 64 needs table 1; another device needs its own directory.
    u.attach(DEV, IommuPasid::new(63), d).unwrap();
    assert_eq!(a.live_pages(), before + 3);
    u.attach(DEV, IommuPasid::new(64), d).unwrap();
    assert_eq!(a.live_pages(), before + 4);
    u.attach(DeviceId(0x28), None, d).unwrap();
    assert_eq!(
        a.live_pages(),
        before + 6,
        "same context table, new directory and table"
    );
    // SSADE (bit 9) in the second-stage PASID entry of a dirty-tracking domain.
    let (_, pe) = scalable_entries(&m, 0x20, 64);
    assert_eq!(pe[0] & (1 << 9 | 0x1c0), 1 << 9 | 2 << 6);
    assert!(u.capabilities().dirty_tracking);
    // Detaching leaves the tables (they may be cached) but clears the entries.
    u.detach(DEV, IommuPasid::new(64)).unwrap();
    assert_eq!(scalable_entries(&m, 0x20, 64).1, [0; 3]);
    assert_eq!(a.live_pages(), before + 6);
}

/// In scalable mode `ECAP.C` covers only root, context and PASID structures; page-table walks
/// snoop only through `PWSNP`, which needs `ECAP.SMPWCS`. A unit with `C` but without `SMPWCS`
/// walks page tables without snooping, so every page-table write must be cleaned to memory.
#[test]
fn scalable_page_walk_coherency_follows_smpwcs() {
    use core::sync::atomic::Ordering::Relaxed;
    for (smpwcs, stage) in [
        (false, Stage::Second),
        (false, Stage::First),
        (true, Stage::Second),
        (true, Stage::First),
    ] {
        let ecap = if smpwcs {
            SCALABLE_ECAP
        } else {
            SCALABLE_ECAP & !SMPWCS
        };
        let (m, a) = (Model::with_caps(QEMU_CAP, ecap), TestAlloc::default());
        let u = unit(&m, &a, Mode::Scalable);
        let cfg = DomainConfig {
            stage,
            ..DomainConfig::default()
        };
        let d = u.domain_alloc(&cfg).unwrap();
        u.attach(DEV, None, d).unwrap();
        let (_, pe) = scalable_entries(&m, 0x20, 0);
        assert_eq!(
            pe[1] & 1 << 23 != 0,
            smpwcs,
            "PWSNP with SMPWCS ({stage:?})"
        );
        assert_eq!(u.capabilities().coherent_walk, smpwcs);
        let before = a.synced.load(Relaxed);
        u.map(d, Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), K4, RW)
            .unwrap();
        let synced = a.synced.load(Relaxed) - before;
        if smpwcs {
            assert_eq!(
                synced, 0,
                "coherent page walks need no cache cleaning ({stage:?})"
            );
        } else {
            assert!(
                synced > 0,
                "non-snooped page walks need cleaned tables ({stage:?})"
            );
        }
    }
}

/// Scalable mode sets `DTE` once, when the device's context entry is first made present. An
/// attachment of the same device that does not ask for ATS still has a device TLB that may
/// cache its translations, so its flushes must invalidate it.
#[test]
fn device_tlb_follows_the_context_entry_dte() {
    let (m, a) = (scalable_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Scalable);
    let d1 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    u.attach_with(DEV, None, d1, ats).unwrap();
    assert_eq!(scalable_entries(&m, 0x20, 0).0[0] & 1 << 2, 1 << 2, "DTE");
    let p5 = IommuPasid::new(5).unwrap();
    u.attach(DEV, Some(p5), d2).unwrap();
    u.map(d2, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    m.clear_logs();
    let mut g = Gather::new();
    u.unmap(d2, Iova::new(0x10_0000), K4, &mut g).unwrap();
    u.flush(d2, &mut g).unwrap();
    // IOTLB PSI (DID 1), PASID-based device-TLB (SID 0x20, PASID 5, one page; no ECAP.DIT,
    // so PFSID is reserved and 0), wait.
    assert_eq!(types(&m), [2, 8, 5]);
    assert_eq!(words(&m)[1], (0x8 | 0x20 << 16 | 5 << 32, 0x10_0000));
    // Its tear-down also invalidates the device TLB (PASID cache, IOTLB, device TLB, wait).
    m.clear_logs();
    u.detach(DEV, Some(p5)).unwrap();
    assert_eq!(types(&m), [7, 2, 8, 5]);
}

/// `CAP.DRD` and `CAP.DWD` are separate capabilities: a unit with only one of them still gets
/// that drain on every IOTLB invalidation (queued: `DR` bit 7, `DW` bit 6 of word 0).
#[test]
fn read_and_write_draining_follow_their_own_cap_bits() {
    const DRD: u64 = 1 << 55;
    const DWD: u64 = 1 << 54;
    for (cap_bits, dr, dw) in [(DRD, true, false), (DWD, false, true), (0, false, false)] {
        let (m, a) = (
            Model::with_caps(QEMU_CAP & !(DRD | DWD) | cap_bits, LEGACY_ECAP),
            TestAlloc::default(),
        );
        let u = unit(&m, &a, Mode::Legacy);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        m.clear_logs();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        let w0 = words(&m)[0].0;
        assert_eq!(w0 & 0xf, 2, "IOTLB descriptor");
        assert_eq!(
            (w0 & 1 << 7 != 0, w0 & 1 << 6 != 0),
            (dr, dw),
            "CAP {cap_bits:#x}"
        );
    }
}

/// Hostile arguments through the public API: every call returns, none panics.
#[test]
fn hostile_arguments_never_panic() {
    let iovas = [
        0,
        K4,
        0xFEE0_0000,
        (1 << 48) - K4,
        1 << 48,
        1 << 57,
        !0xfff,
        u64::MAX,
    ];
    let lens = [0, 1, K4, 2 * K4, M2, G1, 1 << 48, u64::MAX - K4, u64::MAX];
    for (mode, m) in [
        (Mode::Legacy, legacy_model()),
        (Mode::Scalable, scalable_model()),
    ] {
        let a = TestAlloc::default();
        let u = unit(&m, &a, mode);
        for stage in [Stage::Second, Stage::First] {
            let Ok(d) = u.domain_alloc(&DomainConfig {
                stage,
                ..DomainConfig::default()
            }) else {
                continue;
            };
            u.attach(DEV, None, d).unwrap();
            for &iova in &iovas {
                for &len in &lens {
                    let _ = u.map(d, Iova::new(iova), PhysAddr::new(0), len, RW);
                    let _ = u.map(d, Iova::new(iova), PhysAddr::new(!0xfff), len, RW);
                    let mut g = Gather::new();
                    let _ = u.unmap(d, Iova::new(iova), len, &mut g);
                    u.flush(d, &mut g).unwrap();
                    let _ = u.for_each_mapping(d, Iova::new(iova), len, &mut |_| {});
                    let _ = u.query(d, Iova::new(iova));
                }
            }
            u.detach(DEV, None).unwrap();
            u.domain_free(d).unwrap();
        }
        let _ = u.attach(DeviceId(u32::MAX), None, DomainHandle(0));
        let _ = u.attach(DEV, IommuPasid::new(0xf_ffff), DomainHandle(u16::MAX));
        let _ = u.detach(DeviceId(u32::MAX), IommuPasid::new(0xf_ffff));
    }
}

/// A window that reads all ones once `dead` is set (a unit that fell off the bus).
struct Dying<'a> {
    inner: &'a Model,
    dead: crate::vtd::test_support::Flag,
}

impl RegisterWindow for Dying<'_> {
    fn read32(&self, offset: usize) -> u32 {
        if self.dead.get() {
            u32::MAX
        } else {
            self.inner.read32(offset)
        }
    }
    fn write32(&self, offset: usize, value: u32) {
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        if self.dead.get() {
            u64::MAX
        } else {
            self.inner.read64(offset)
        }
    }
    fn write64(&self, offset: usize, value: u64) {
        self.inner.write64(offset, value)
    }
}

/// Registers reading all ones (every capability, every status bit) bound every operation.
#[test]
fn all_ones_registers_never_panic_or_hang() {
    // Every CAP/ECAP bit set but a valid ND: widest everything.
    let all = Model::with_caps(!7 | 6, u64::MAX);
    let a = TestAlloc::default();
    for mode in [Mode::Legacy, Mode::Scalable] {
        let cfg = VtdConfig {
            mode,
            poll_budget: 50,
            ..host_config(Mode::Legacy)
        };
        let u: VtdUnit<&Model, &TestAlloc> = VtdUnit::new(&all, &a, cfg).unwrap();
        let _ = u.enable();
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        let _ = u.attach(DEV, None, d);
        let _ = u.map(d, Iova::new(0), PhysAddr::new(0), M2, RW);
        let mut g = Gather::new();
        let _ = u.unmap(d, Iova::new(0), M2, &mut g);
        let _ = u.flush(d, &mut g);
        let _ = u.drain_faults(|_, _| {});
        let _ = u.disable();
    }
    for mode in [Mode::Legacy, Mode::Scalable] {
        let (m, a) = (scalable_model(), TestAlloc::default());
        let w = Dying {
            inner: &m,
            dead: Default::default(),
        };
        let cfg = VtdConfig {
            mode,
            poll_budget: 50,
            ..host_config(Mode::Legacy)
        };
        let u = VtdUnit::new(&w, &a, cfg).unwrap();
        u.enable().unwrap();
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.attach(DEV, None, d).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        w.dead.set(true);
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
        assert!(u.flush(d, &mut g).is_err());
        assert!(u.detach(DEV, None).is_err());
        let s = u.drain_faults(|_, _| {});
        assert!(s.records <= 256);
        assert!(u.disable().is_err());
        assert!(u.enable().is_err());
    }
}

/// Hardware sets second-stage A/D bits only through a snooped walk (fault reason 0x7C
/// otherwise): without `ECAP.SMPWCS` (so no `PWSNP`) dirty tracking is refused, not offered.
#[test]
fn dirty_tracking_needs_snooped_page_walks() {
    const SLADS: u64 = 1 << 45;
    for (ecap, offered) in [
        (SCALABLE_ECAP | SLADS, true),
        ((SCALABLE_ECAP | SLADS) & !SMPWCS, false),
    ] {
        let (m, a) = (Model::with_caps(QEMU_CAP, ecap), TestAlloc::default());
        let u = unit(&m, &a, Mode::Scalable);
        assert_eq!(u.capabilities().dirty_tracking, offered, "ECAP {ecap:#x}");
        let r = u.domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        });
        if offered {
            assert!(r.is_ok());
        } else {
            assert_eq!(r, Err(iommu::Error::Unsupported(Missing::DirtyTracking)));
        }
    }
}

/// In-place construction and release (no copy of the unit on the stack): the unit is built in
/// an uninitialised heap slot, used, and released there; every page comes back.
#[test]
fn init_in_place_and_release_in_place_free_every_page() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let mut slot = std::boxed::Box::new(core::mem::MaybeUninit::<Unit<'_>>::uninit());
    let ptr = NonNull::from(&mut *slot).cast::<Unit<'_>>();
    // SAFETY: the slot is ours, aligned, uninitialised and unshared.
    unsafe { VtdUnit::init_in_place(ptr, &m, &a, host_config(Mode::Legacy)) }.unwrap();
    assert_eq!(a.live_pages(), 1, "the root table");
    {
        // SAFETY: initialised above; the only reference while it lives.
        let u = unsafe { ptr.as_ref() };
        u.enable().unwrap();
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        u.attach(DEV, None, d).unwrap();
        assert!(a.live_pages() > 1);
    }
    // Refused while translating, and the unit stays whole and usable.
    // SAFETY: a live, unshared unit.
    let e = unsafe { VtdUnit::release_in_place(ptr) }.err();
    assert!(matches!(e, Some(Error::UnexpectedState { .. })), "{e:?}");
    // SAFETY: still live (the release was refused); the only reference while it lives.
    unsafe { ptr.as_ref() }.disable().unwrap();
    // SAFETY: as above; not used again after `Ok`.
    let released = unsafe { VtdUnit::release_in_place(ptr) };
    assert!(matches!(released, Ok(Released { leaked: None, .. })));
    assert_eq!(a.live_pages(), 0);
}

/// A failed in-place construction allocates nothing and leaves the slot as it was.
#[test]
fn init_in_place_failure_leaves_the_slot_uninitialised() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let mut slot = std::boxed::Box::new(core::mem::MaybeUninit::<Unit<'_>>::uninit());
    let ptr = NonNull::from(&mut *slot).cast::<Unit<'_>>();
    a.fail.set(true);
    // SAFETY: the slot is ours, aligned, uninitialised and unshared.
    let e = unsafe { VtdUnit::init_in_place(ptr, &m, &a, host_config(Mode::Legacy)) }.unwrap_err();
    assert!(matches!(e, Error::NoMemory), "{e:?}");
    assert_eq!(a.live_pages(), 0);
    // Scalable mode on a unit without SMTS: refused before anything is allocated.
    a.fail.set(false);
    let cfg = VtdConfig {
        mode: Mode::Scalable,
        ..host_config(Mode::Legacy)
    };
    // SAFETY: as above (the slot is still uninitialised).
    let e = unsafe { VtdUnit::init_in_place(ptr, &m, &a, cfg) }.unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e:?}");
    assert_eq!(a.live_pages(), 0);
}

/// The unit keeps, under its configuration lock, one past its last recorded attachment and its
/// number of ATS attachments (issue 18, goal 4): a flush looks at no attachment slot when no
/// ATS device is attached, and at most the recorded part of the table otherwise. Both follow
/// every attach, re-attach and detach; device-TLB invalidations still go to exactly the
/// domain's ATS attachments.
#[test]
fn flushes_find_ats_attachments_from_the_books() {
    let a = TestAlloc::default();
    let m = legacy_model();
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let e = u.domain_alloc(&DomainConfig::default()).unwrap();
    let ats = AttachOptions {
        ats: true,
        ..AttachOptions::default()
    };
    const DEV3: DeviceId = DeviceId(0x0030);
    const DEV4: DeviceId = DeviceId(0x0040);
    let books = |used: usize, ats: usize| {
        let cfg = u.config.lock();
        let recount = cfg.attachments.iter().flatten().filter(|a| a.ats).count();
        let last = cfg
            .attachments
            .iter()
            .rposition(Option::is_some)
            .map_or(0, |i| i + 1);
        assert_eq!(
            (cfg.used, cfg.ats),
            (last, recount),
            "books match the table"
        );
        assert_eq!((cfg.used, cfg.ats), (used, ats));
    };
    // One page mapped, unmapped and flushed: the device-TLB invalidations (type 3) it issued.
    let device_tlb_flushes = || {
        u.map(d, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        m.clear_logs();
        let mut g = Gather::new();
        u.unmap(d, Iova::new(0), K4, &mut g).unwrap();
        u.flush(d, &mut g).unwrap();
        types(&m).iter().filter(|&&t| t == 3).count()
    };
    u.attach(DEV, None, d).unwrap();
    books(1, 0);
    assert_eq!(device_tlb_flushes(), 0);
    u.attach_with(DEV2, None, d, ats).unwrap();
    u.attach_with(DEV3, None, e, ats).unwrap();
    u.attach_with(DEV4, None, d, ats).unwrap();
    books(4, 3);
    assert_eq!(
        device_tlb_flushes(),
        2,
        "DEV2 and DEV4, not DEV3 of the other domain"
    );
    // Re-attaching DEV4 without ATS, then moving DEV3 to `d`.
    u.attach(DEV4, None, d).unwrap();
    books(4, 2);
    u.attach_with(DEV3, None, d, ats).unwrap();
    books(4, 2);
    assert_eq!(device_tlb_flushes(), 2, "DEV2 and DEV3");
    // Detaching from the end shrinks the recorded part past the holes.
    u.detach(DEV2, None).unwrap();
    books(4, 1);
    u.detach(DEV4, None).unwrap();
    books(3, 1);
    u.detach(DEV3, None).unwrap();
    books(1, 0);
    assert_eq!(device_tlb_flushes(), 0);
    // The next attach takes the first free slot; the recorded part grows again.
    u.attach_with(DEV2, None, d, ats).unwrap();
    books(2, 1);
    assert_eq!(device_tlb_flushes(), 1);
    u.detach(DEV, None).unwrap();
    u.detach(DEV2, None).unwrap();
    books(0, 0);
}

/// A device with PRI gets `PRE` in its scalable-mode context entry on a unit with `ECAP.PRS`
/// (rev. 4.1 §9.4: without it the unit does not report the device's page requests), and only
/// there; a device without PRI never does.
#[test]
fn pri_device_gets_the_context_entry_pre() {
    const PRS: u64 = 1 << 29;
    for (ecap, pri, pre) in [
        (SCALABLE_ECAP | PRS, true, true),
        (SCALABLE_ECAP | PRS, false, false),
        (SCALABLE_ECAP & !PRS, true, false),
    ] {
        let (m, a) = (Model::with_caps(QEMU_CAP, ecap), TestAlloc::default());
        let u = unit(&m, &a, Mode::Scalable);
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        let opts = AttachOptions {
            pri,
            ..AttachOptions::default()
        };
        if ecap & PRS != 0 {
            // PRE only over this crate's page request queue.
            let missing = Missing::Mode {
                what: "page requests (enable_page_requests first)",
            };
            assert_eq!(
                u.attach_with(DEV, None, d, opts).err(),
                pri.then_some(crate::iommu::Error::Unsupported(missing))
            );
            u.enable_page_requests(0).unwrap();
        }
        u.attach_with(DEV, None, d, opts).unwrap();
        let lo = scalable_entries(&m, 0x20, 0).0[0];
        assert_eq!(lo & 1 << 4 != 0, pre, "PRE, ECAP {ecap:#x}, pri {pri}");
    }
}

/// The slot of the 4 KiB second-stage leaf that maps `iova` in `d`.
fn ss_leaf_slot(
    u: &Unit<'_>,
    d: DomainHandle,
    iova: u64,
) -> &'static core::sync::atomic::AtomicU64 {
    let guard = u.domain_lock(d).unwrap().read();
    let dom = guard.as_ref().unwrap();
    let crate::vtd::domain::DomainTable::Second(t) = &dom.table else {
        panic!("a second-stage domain");
    };
    let (mut table, top) = (t.root().get(), t.geometry().top_level());
    for level in (1..=top).rev() {
        let idx = (iova >> (12 + 9 * level)) & 511;
        // SAFETY: PA == VA for TestAlloc pages; the walk stays inside live tables.
        let e = unsafe { ((table + idx * 8) as *const u64).read_volatile() };
        assert!(e & 3 != 0 && e & 1 << 7 == 0, "a table at level {level}");
        table = e & 0x000f_ffff_ffff_f000;
    }
    let at = table + ((iova >> 12) & 511) * 8;
    // SAFETY: an entry of a live leaf table, which outlives the test's use; table memory is
    // 64-bit atomics.
    unsafe { &*(at as *const core::sync::atomic::AtomicU64) }
}

/// A `set_dirty_tracking` whose table walk fails partway (`EntryUnstable`: hardware kept
/// rewriting the third leaf) has cleaned `D` of the first two: an IOTLB entry may still hold
/// them dirty, so the call invalidates them before returning (or the domain owes it).
#[test]
fn a_failed_tracking_switch_invalidates_the_leaves_it_cleaned() {
    use core::sync::atomic::Ordering::SeqCst;
    let a = TestAlloc::default();
    let m = Model::with_caps(QEMU_CAP, SCALABLE_ECAP | 1 << 45);
    let u = unit(&m, &a, Mode::Scalable);
    let d = u
        .domain_alloc(&DomainConfig {
            dirty_tracking: true,
            ..DomainConfig::default()
        })
        .unwrap();
    u.attach(DEV, None, d).unwrap();
    for i in 1..4 {
        u.map(
            d,
            Iova::new(i * K4),
            PhysAddr::new(0x8000_0000 + i * K4),
            K4,
            RW,
        )
        .unwrap();
        // D (bit 9): the device wrote the page.
        ss_leaf_slot(&u, d, i * K4).fetch_or(1 << 9, SeqCst);
    }
    m.clear_logs();
    // A (bit 8) keeps flipping on the third leaf.
    crate::pgtable::testutil::keep_rewriting(ss_leaf_slot(&u, d, 3 * K4), 1 << 8);
    let r = u.set_dirty_tracking(d, true);
    crate::pgtable::testutil::stop_rewriting();
    assert!(
        matches!(
            r,
            Err(crate::iommu::Error::PageTable(
                crate::pgtable::Error::EntryUnstable { .. }
            ))
        ),
        "{r:?}"
    );
    let dirty = |i: u64| ss_leaf_slot(&u, d, i * K4).load(SeqCst) & 1 << 9 != 0;
    assert_eq!([dirty(1), dirty(2), dirty(3)], [false, false, true]);
    let w = words(&m);
    let owed = !u
        .domain_lock(d)
        .unwrap()
        .read()
        .as_ref()
        .unwrap()
        .owed
        .lock()
        .is_empty();
    // Page-selective IOTLB invalidations of pages 1-2, then a wait.
    let iotlb = w.iter().filter(|x| x.0 & 0xf == 2).count();
    let wait = w.last().map(|x| x.0 & 0xf) == Some(5);
    assert!(
        !owed && (iotlb >= 1 && wait),
        "the cleaned leaves not invalidated (or owed instead): {w:x?}"
    );
    u.set_dirty_tracking(d, true).unwrap();
    assert!(!dirty(3));
}

/// An ATS device attached to a domain while an unmap's flush of it runs, after the flush read
/// the domain's ATS attachments and before its IOTLB invalidation completed: were the attach
/// to land there, the device could fill its ATC from the IOTLB entry of the page the flush
/// then frees (a translation request is answered from the IOTLB), with no device-TLB
/// invalidation of it in the flush. The flush holds the configuration lock from its read of
/// the attachments to its wait, and an attach holds it from its record to the entry's
/// publication, so the attach waits for the flush and the device's requests fault until
/// then. The test's hook starts the attach on another thread in that window and lets the
/// device ask for the page. Passed when written: no defect (Linux's `cache_tag_flush_range`
/// likewise walks the domain's cache tags, and waits for the batch, under the lock an attach
/// takes to add its tag before the device's entry is set up).
#[test]
fn a_device_attached_while_a_flush_runs_waits_for_its_iotlb_invalidation() {
    use crate::sim::vtd::{VtdModel, VtdModelConfig};
    use crate::sim::walk::Access;
    use crate::sim::Arena;
    use core::sync::atomic::{AtomicBool, Ordering::SeqCst};
    use std::boxed::Box;
    use std::sync::{Arc, Mutex};

    let arena: &'static Arena = Box::leak(Box::new(Arena::with_defaults().unwrap()));
    let cfg = VtdModelConfig::qemu_default().with_dt(true);
    let m: &'static VtdModel<'static> = Box::leak(Box::new(VtdModel::new(arena, cfg)));
    type SimUnit = VtdUnit<&'static VtdModel<'static>, &'static Arena>;
    let u: &'static SimUnit = Box::leak(Box::new(
        VtdUnit::new(m, arena, VtdConfig::legacy()).unwrap(),
    ));
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    // DEV (no ATS) on d: its DMA leaves d's page in the IOTLB, tagged with d's domain-ID.
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    m.translate(DEV.0 as u16, None, 0x3000, Access::READ)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    m.reset_stats();
    let attacher = Arc::new(Mutex::new(None));
    let attached_in_window = Arc::new(AtomicBool::new(false));
    let (t, w) = (attacher.clone(), attached_in_window.clone());
    crate::test_hooks::set_after_ats_read(move || {
        let ats = AttachOptions {
            ats: true,
            ..AttachOptions::default()
        };
        // The attach cannot finish while the flush runs.
        let thread =
            crate::test_hooks::run_beside(move || u.attach_with(DEV2, None, d, ats).unwrap());
        w.store(thread.is_finished(), SeqCst);
        // DEV2's driver enabled ATS: it asks for the page.
        let _ = m.ats_translate(DEV2.0 as u16, None, 0x3000, Access::READ);
        *t.lock().unwrap() = Some(thread);
    });
    u.flush(d, &mut g).unwrap();
    let flushed = m.descriptor_log();
    let thread = attacher.lock().unwrap().take().expect("the hook ran");
    thread.join().unwrap();
    assert_eq!(
        flushed.iter().map(|d| d[0] & 0xf).collect::<Vec<_>>(),
        [2, 5],
        "the flush: d's page in the IOTLB, one wait"
    );
    assert!(
        !m.atc_holds(DEV2.0 as u16, None, 0x3000),
        "DEV2's ATC holds the page the flush freed"
    );
    assert!(
        !attached_in_window.load(SeqCst),
        "the attach finished between the flush's read of the ATS attachments and its wait"
    );
    assert!(m
        .ats_translate(DEV2.0 as u16, None, 0x3000, Access::READ)
        .is_err());
    // Attached now: the next flush reaches its device TLB.
    u.map(d, Iova::new(0x3000), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    m.ats_translate(DEV2.0 as u16, None, 0x3000, Access::READ)
        .unwrap();
    u.unmap(d, Iova::new(0x3000), K4, &mut g).unwrap();
    u.flush(d, &mut g).unwrap();
    assert!(!m.atc_holds(DEV2.0 as u16, None, 0x3000));
}

/// The model's window, which stops the first read of one register (after reading it) until
/// another thread says go on (or a while passed): a second CPU's call placed in the middle of
/// this one's.
struct Pausing<'m> {
    m: &'m Model,
    at: usize,
    armed: core::sync::atomic::AtomicBool,
    reached: std::sync::mpsc::SyncSender<()>,
    resume: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
}

impl RegisterWindow for Pausing<'_> {
    fn read32(&self, offset: usize) -> u32 {
        self.m.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.m.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        let v = self.m.read64(offset);
        if offset == self.at && self.armed.swap(false, Ordering::SeqCst) {
            self.reached.send(()).unwrap();
            // The other call either runs now (no lock keeps it out) or waits for this one.
            let _ = self
                .resume
                .lock()
                .unwrap()
                .recv_timeout(std::time::Duration::from_millis(200));
        }
        v
    }
    fn write64(&self, offset: usize, value: u64) {
        self.m.write64(offset, value)
    }
}

#[test]
fn concurrent_fault_drains_report_each_record_once_and_whole() {
    let (m, a) = (legacy_model(), TestAlloc::default());
    let (reached, reached_rx) = std::sync::mpsc::sync_channel(1);
    let (resume_tx, resume) = std::sync::mpsc::channel();
    let w = Pausing {
        m: &m,
        // Record 0's top half, which the drain reads first.
        at: regs::frcd_reg(MODEL_FRO, 0) + 8,
        armed: core::sync::atomic::AtomicBool::new(false),
        reached,
        resume: std::sync::Mutex::new(resume),
    };
    let cfg = VtdConfig {
        poll_budget: 1000,
        ..host_config(Mode::Legacy)
    };
    let u = VtdUnit::new(&w, &a, cfg).unwrap();
    u.enable().unwrap();
    const FIRST: (u64, u64) = (0x5000, 1 << 63 | 0x5 << 32 | 0x20);
    const SECOND: (u64, u64) = (0x9000, 1 << 63 | 0x6 << 32 | 0x108);
    m.inject_fault(0, FIRST.0, FIRST.1);
    w.armed.store(true, Ordering::SeqCst);
    let mut seen = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let (u, seen, m) = (&u, &seen, &m);
        s.spawn(move || {
            // CPU B: drains while CPU A is between reading record 0's top and bottom halves,
            // then the hardware records a new fault in the register B freed.
            reached_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the drain never read record 0's top half");
            u.drain_faults(|_, r| seen.lock().unwrap().push((r.lo, r.hi)));
            m.inject_fault(0, SECOND.0, SECOND.1);
            let _ = resume_tx.send(());
        });
        u.drain_faults(|_, r| seen.lock().unwrap().push((r.lo, r.hi)));
    });
    u.drain_faults(|_, r| seen.get_mut().unwrap().push((r.lo, r.hi)));
    let mut seen = seen.into_inner().unwrap();
    seen.sort();
    assert_eq!(
        seen,
        [FIRST, SECOND],
        "each fault once, its halves together"
    );
}

/// The review of src/vtd, item 1: a detach of an ATS attachment decides whether its device-TLB
/// invalidation can be issued (translation on) or must be owed to the next `enable`
/// (translation off), then tears the entry down. Were a `disable` (another CPU) to land in
/// between, the tear-down's invalidations would be dropped as "translation off", nothing owed,
/// the detach `Ok`, and the device's ATC would keep translations of pages the embedder then
/// frees, usable again once the unit is re-enabled. The test's hook starts the `disable` on
/// another thread in that window; whichever way it lands, the ATC must be empty after the
/// next `enable`.
#[test]
fn a_disable_racing_a_detach_never_loses_its_device_tlb_invalidation() {
    use crate::sim::vtd::{VtdModel, VtdModelConfig};
    use crate::sim::walk::Access;
    use crate::sim::Arena;
    use std::boxed::Box;
    use std::sync::{Arc, Mutex};

    const X: u64 = 0x3000;
    for mode in [Mode::Legacy, Mode::Scalable] {
        let arena: &'static Arena = Box::leak(Box::new(Arena::with_defaults().unwrap()));
        let cfg = match mode {
            Mode::Legacy => VtdModelConfig::qemu_default(),
            Mode::Scalable => VtdModelConfig::scalable(),
        };
        let m: &'static VtdModel<'static> =
            Box::leak(Box::new(VtdModel::new(arena, cfg.with_dt(true))));
        type SimUnit = VtdUnit<&'static VtdModel<'static>, &'static Arena>;
        let config = VtdConfig {
            mode,
            ..VtdConfig::legacy()
        };
        let u: &'static SimUnit = Box::leak(Box::new(VtdUnit::new(m, arena, config).unwrap()));
        u.enable().unwrap();
        let d = u.domain_alloc(&DomainConfig::default()).unwrap();
        let ats = AttachOptions {
            ats: true,
            ..AttachOptions::default()
        };
        u.attach_with(DEV, None, d, ats).unwrap();
        u.map(d, Iova::new(X), PhysAddr::new(0x4000_0000), K4, RW)
            .unwrap();
        m.ats_translate(DEV.0 as u16, None, X, Access::READ)
            .unwrap();
        let disabler = Arc::new(Mutex::new(None));
        let t = disabler.clone();
        crate::test_hooks::set_after_detach_check(move || {
            let thread = crate::test_hooks::run_beside(move || u.disable());
            *t.lock().unwrap() = Some(thread);
        });
        let detached = u.detach(DEV, None);
        let thread = disabler.lock().unwrap().take().expect("the hook ran");
        thread.join().unwrap().unwrap();
        u.enable().unwrap();
        assert!(
            !m.atc_holds(DEV.0 as u16, None, X),
            "{mode:?}: the ATC keeps a detached domain's page after a disable raced the detach \
             (detach said {detached:?})"
        );
    }
}

/// The review of src/vtd, item 2: a Stop Marker (a page request with a PASID, `LPIG` set,
/// read and write not requested: PCIe PRI's "Stop Marker Message", which Linux's VT-d
/// driver drops too) asks for no page and no response. The drain must consume it without
/// reporting it as a page fault (a handler would answer a group the device never opened,
/// possibly one a later request of that PASID reuses); the page request around it is
/// reported as usual.
#[test]
fn a_stop_marker_is_consumed_not_reported() {
    use crate::iopf::{FaultKind, PageFault};
    use crate::sim::vtd::prq::{PageRequest, PageRequestOutcome};
    use crate::sim::vtd::{VtdModel, VtdModelConfig};
    use crate::sim::walk::Access;
    use crate::sim::Arena;

    let arena = Arena::with_defaults().unwrap();
    let m = VtdModel::new(&arena, VtdModelConfig::scalable().with_prs(true));
    let u = VtdUnit::new(&m, &arena, VtdConfig::scalable()).unwrap();
    u.enable().unwrap();
    u.enable_page_requests(0).unwrap();
    let stop = PageRequest {
        sid: DEV.0 as u16,
        pasid: Some(5),
        addr: 0,
        access: Access {
            read: false,
            write: false,
            exec: false,
            privileged: false,
        },
        group: 0,
        last: true,
    };
    let read = PageRequest {
        addr: 0x5000,
        access: Access::READ,
        group: 1,
        ..stop
    };
    for r in [read, stop, read] {
        assert_eq!(m.page_request(r), PageRequestOutcome::Queued);
    }
    let mut out = [PageFault {
        device: DEV,
        pasid: None,
        addr: 0,
        perm: crate::iopf::FaultPerm::empty(),
        kind: FaultKind::PageRequest {
            group: 0,
            last: false,
        },
        generation: 0,
        sequence: 0,
    }; 4];
    let d = u.drain_page_requests(&mut out).unwrap();
    let groups: Vec<_> = out[..d.reported].iter().map(|f| (f.addr, f.kind)).collect();
    let g1 = FaultKind::PageRequest {
        group: 1,
        last: true,
    };
    assert_eq!(
        groups,
        [(0x5000, g1), (0x5000, g1)],
        "a stop marker was reported as a page fault"
    );
    assert!(!d.more);
    // Nothing left queued: the marker was consumed; only the read's group awaits an answer.
    assert_eq!(u.drain_page_requests(&mut out).unwrap().reported, 0);
    assert_eq!(m.outstanding_page_requests(), 2);
}

/// Review of src/pgtable (2026-12-07, F3): `table_pages` walks the domain's tables. Under the
/// domain's read lock, which an unmap and its flush also take, another CPU's unmap of the
/// whole range unlinked the tables and its flush freed them (the arena fills freed pages with
/// POISON) while the count was inside them: a read of freed memory. The test's hook starts
/// that unmap on another thread when the count has read its first table pointer and lets it
/// finish if it can; the count must see the tables whole (the root and one table on each of
/// the three levels below it), never freed ones.
#[test]
fn a_table_count_never_walks_tables_an_unmap_frees() {
    use crate::sim::vtd::{VtdModel, VtdModelConfig};
    use crate::sim::Arena;
    use std::boxed::Box;
    use std::sync::{Arc, Mutex};

    let arena: &'static Arena = Box::leak(Box::new(Arena::with_defaults().unwrap()));
    let m: &'static VtdModel<'static> = Box::leak(Box::new(VtdModel::new(
        arena,
        VtdModelConfig::qemu_default(),
    )));
    type SimUnit = VtdUnit<&'static VtdModel<'static>, &'static Arena>;
    let u: &'static SimUnit = Box::leak(Box::new(
        VtdUnit::new(m, arena, VtdConfig::legacy()).unwrap(),
    ));
    u.enable().unwrap();
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x4000_0000), 3 * K4, RW)
        .unwrap();
    let unmapper = Arc::new(Mutex::new(None));
    let t = unmapper.clone();
    crate::test_hooks::set_in_table_count(move || {
        let thread = crate::test_hooks::run_beside(move || {
            let mut g = Gather::new();
            u.unmap(d, Iova::ZERO, G1, &mut g).and_then(|n| {
                u.flush(d, &mut g)?;
                Ok(n)
            })
        });
        *t.lock().unwrap() = Some(thread);
    });
    let pages = u.table_pages(d);
    let thread = unmapper.lock().unwrap().take().expect("the hook ran");
    assert_eq!(thread.join().unwrap(), Ok(3 * K4));
    let pages = pages.expect("the count walked freed tables");
    assert_eq!(
        (pages.tables.linked, pages.tables.needed),
        (4, 4),
        "the count walked freed tables: {pages:?}"
    );
}

/// Review of src/pgtable (2026-12-07, F2): a gather holds what one domain's unmap unlinked;
/// flushed on another domain, the unit invalidated that domain's tag and freed the first
/// domain's table pages, which its caches may still lead to. A flush now refuses a gather
/// another domain's call filled (nothing issued, nothing freed), and so does an unmap into it.
#[test]
fn a_gather_is_flushed_only_on_the_domain_that_filled_it() {
    let m = legacy_model();
    let a = TestAlloc::default();
    let u = unit(&m, &a, Mode::Legacy);
    let da = u.domain_alloc(&DomainConfig::default()).unwrap();
    let db = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, da).unwrap();
    u.attach(DEV2, None, db).unwrap();
    u.map(da, Iova::new(M2), PhysAddr::new(0x4000_1000), M2, RW)
        .unwrap();
    u.map(db, Iova::new(M2), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    // 4K pages at first (one leaf table), unmapped whole: the leaf table is unlinked.
    u.unmap(da, Iova::new(M2), M2, &mut g).unwrap();
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(
        u.flush(db, &mut g),
        Err(crate::iommu::Error::InvalidDomain(db))
    );
    assert_eq!(
        g.freed_pages(),
        1,
        "a flush of the other domain freed the page"
    );
    assert_eq!(
        u.unmap(db, Iova::new(M2), K4, &mut g),
        Err(crate::iommu::Error::InvalidDomain(db))
    );
    assert!(
        u.query(db, Iova::new(M2)).is_some(),
        "the refused unmap changed db"
    );
    u.flush(da, &mut g).unwrap();
    assert!(g.is_empty());
    u.unmap(db, Iova::new(M2), K4, &mut g).unwrap();
    u.flush(db, &mut g).unwrap();
}

/// A bare `PageTable` (an embedder's, or a guest's first stage the crate built) filled a
/// gather that no unit call claimed, and a unit's flush of any domain took it: it invalidated
/// that domain's tag and gave the other table's unlinked page back to the allocator, while the
/// caches of the table it came from could still lead to it (review of 2026-12-07 19:50, D1:
/// "pages held 16 -> 15" on a nested set-up). Now the table's own calls claim the gather for
/// it: the unit refuses it with `InvalidDomain`, and a bare table's unmap into a unit
/// domain's gather is refused too (`GatherOfAnotherTable`), nothing changed.
#[test]
fn a_bare_tables_gather_is_not_flushed_by_a_unit() {
    use crate::mem::WalkerCoherency;
    use crate::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
    use crate::pgtable::PageTable;
    let m = legacy_model();
    let a = TestAlloc::default();
    let u = unit(&m, &a, Mode::Legacy);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DEV, None, d).unwrap();
    let f = VtdSs::new(VtdSsConfig {
        agaw: 48,
        haw: 48,
        page_2m: true,
        page_1g: true,
        snoop: false,
        dirty_tracking: false,
    })
    .unwrap();
    let bare = PageTable::new(f, &a, WalkerCoherency::Coherent).unwrap();
    bare.map(Iova::new(M2), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    // The leaf table is covered whole: unlinked into the gather.
    assert_eq!(bare.unmap(Iova::new(M2), M2, &mut g), Ok(K4));
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(
        u.flush(d, &mut g),
        Err(crate::iommu::Error::InvalidDomain(d))
    );
    assert_eq!(
        g.freed_pages(),
        1,
        "a unit's flush freed a bare table's page"
    );
    // SAFETY: nothing walks the bare table.
    g.release(&a, unsafe {
        crate::pgtable::InvalidationComplete::assume()
    })
    .unwrap();
    // A unit domain's gather, then a bare table's unmap into it.
    u.map(d, Iova::new(M2), PhysAddr::new(0x4000_1000), K4, RW)
        .unwrap();
    bare.map(Iova::new(M2), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(M2), K4, &mut g).unwrap();
    assert!(matches!(
        bare.unmap(Iova::new(M2), M2, &mut g),
        Err(crate::pgtable::Error::GatherOfAnotherTable { .. })
    ));
    assert!(
        bare.query(Iova::new(M2)).is_some(),
        "the refused unmap changed the bare table"
    );
    u.flush(d, &mut g).unwrap();
}

/// Scalable mode keeps a device's `DTE` from its first attachment with ATS. A later attach
/// whose firmware forbids ATS was let through, and the context entry still allowed the
/// device TLB (translated requests) (review of 17:58: `DTE` 4, want 0). Now refused with
/// `AtsForbidden`, nothing changed; an attach without the prohibition still goes.
#[test]
fn a_forbidden_ats_attach_does_not_inherit_dte() {
    use crate::iommu::{AtsPermission, DeviceHints};
    let (m, a) = (scalable_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Scalable);
    let d1 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let d2 = u.domain_alloc(&DomainConfig::default()).unwrap();
    let with = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    u.attach_device(DEV, None, d1, &with).unwrap();
    assert_eq!(scalable_entries(&m, 0x20, 0).0[0] & 1 << 2, 1 << 2, "DTE");
    u.detach(DEV, None).unwrap();
    let forbidden = DeviceHints {
        ats_permission: AtsPermission::Forbidden,
        ..DeviceHints::default()
    };
    let before = scalable_entries(&m, 0x20, 0);
    assert_eq!(
        u.attach_device(DEV, None, d2, &forbidden),
        Err(crate::iommu::Error::AtsForbidden(DEV)),
        "firmware forbids ATS, yet the context entry allows the device TLB (DTE)"
    );
    assert_eq!(scalable_entries(&m, 0x20, 0), before, "nothing changed");
    u.attach_device(DEV, None, d2, &DeviceHints::default())
        .unwrap();
}

/// `attach_with` itself refuses `ats` where firmware forbids it (review of 18:00: a direct
/// call with both set made the device's context entry with `DTE`).
#[test]
fn attach_with_refuses_ats_that_firmware_forbids() {
    let (m, a) = (scalable_model(), TestAlloc::default());
    let u = unit(&m, &a, Mode::Scalable);
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    let both = AttachOptions {
        ats: true,
        ats_forbidden: true,
        ..AttachOptions::default()
    };
    assert_eq!(
        u.attach_with(DEV, None, d, both),
        Err(crate::iommu::Error::AtsForbidden(DEV))
    );
    u.attach(DEV, None, d).unwrap();
    assert_eq!(scalable_entries(&m, 0x20, 0).0[0] & 1 << 2, 0, "no DTE");
}
