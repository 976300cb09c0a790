//! The unit against the test register model: enable order, domain choice, STE/CD contents,
//! exact command counts per flush, page release only after completion.

extern crate std;

use std::vec::Vec;

use super::cmd::Command;
use super::regs;
use super::ste::{self, Ste};
use super::testutil::{ModelSmmu, VecAllocator};
use super::*;
use crate::iommu::{DeviceId, DomainConfig, DomainHandle, Error, Iommu, Missing, Pasid, Stage};
use crate::mem::{Iova, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::pgtable::{Gather, Prot};

const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// IDR0: S2P | S1P | TTF AArch64 (2 << 2) | COHACC (1 << 4) | ATS (1 << 10) | ASID16 (1 << 12)
/// | VMID16 (1 << 18) | CD2L (1 << 19) | ST_LEVEL 2-level (1 << 27).
const IDR0: u32 = 0x3 | 0x8 | 0x10 | 1 << 10 | 1 << 12 | 1 << 18 | 1 << 19 | 1 << 27;
/// IDR1: SIDSIZE 16, SSIDSIZE 8, EVENTQS 8, CMDQS 8.
const IDR1: u32 = 16 | 8 << 6 | 8 << 16 | 8 << 21;
/// IDR3: FWB (1 << 8).
const FWB: u32 = 1 << 8;
/// IDR3: RIL (1 << 10).
const RIL: u32 = 1 << 10;
/// IDR5: GRAN4K | GRAN16K | GRAN64K, OAS 44 bits (4).
const IDR5: u32 = 0x70 | 4;

fn model(idr0: u32, idr3: u32) -> ModelSmmu {
    let m = ModelSmmu::new();
    m.set32(regs::IDR0, idr0);
    m.set32(regs::IDR1, IDR1);
    m.set32(regs::IDR3, idr3);
    m.set32(regs::IDR5, IDR5);
    m
}

fn config() -> SmmuConfig {
    SmmuConfig {
        poll_budget: 64,
        ..SmmuConfig::default()
    }
}

type Unit<'a> = SmmuUnit<&'a ModelSmmu, &'a VecAllocator>;

fn enabled<'a>(m: &'a ModelSmmu, alloc: &'a VecAllocator) -> Unit<'a> {
    let u = SmmuUnit::new(m, alloc, config()).unwrap();
    u.enable().unwrap();
    m.executed.borrow_mut().clear();
    u
}

/// Commands consumed since the last call, as opcodes.
fn take_ops(m: &ModelSmmu) -> Vec<u8> {
    m.executed
        .borrow_mut()
        .drain(..)
        .map(|c| c[0] as u8)
        .collect()
}

fn count(ops: &[u8], op: u8) -> usize {
    ops.iter().filter(|&&o| o == op).count()
}

const SYNC: u8 = 0x46;
const CFGI_STE: u8 = 0x03;
const CFGI_CD: u8 = 0x05;
const TLBI_NH_ASID: u8 = 0x11;
const TLBI_NH_VA: u8 = 0x12;
const TLBI_S12_VMALL: u8 = 0x28;
const TLBI_S2_IPA: u8 = 0x2a;
const ATC_INV: u8 = 0x40;

fn ste_of(u: &Unit<'_>, sid: u32) -> Ste {
    u.config
        .lock()
        .strtab
        .as_ref()
        .unwrap()
        .read(StreamId(sid))
        .unwrap()
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

#[test]
fn unit_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Unit<'static>>();
    fn object(_: &dyn Iommu) {}
    let (m, a) = (model(IDR0, 0), VecAllocator::default());
    object(&SmmuUnit::new(&m, &a, config()).unwrap());
}

#[test]
fn enable_follows_the_documented_order() {
    // With IDR0.HYP (1 << 9) the EL2 TLB is invalidated too.
    let (m, alloc) = (model(IDR0 | 1 << 9, 0), VecAllocator::default());
    let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
    assert_eq!(alloc.live_pages(), 0);
    u.enable().unwrap();
    assert!(u.is_enabled());
    // Stream table root, command queue, event queue.
    assert_eq!(alloc.live_pages(), 3);
    let writes: Vec<(usize, u64)> = m.writes.borrow().clone();
    let offsets: Vec<usize> = writes
        .iter()
        .map(|w| w.0)
        .filter(|&o| o != regs::CMDQ_PROD)
        .collect();
    let (cmdqen, eventqen, smmuen) = (1 << 3, 1 << 2, 1);
    assert_eq!(
        offsets,
        [
            regs::CR0,
            regs::GBPA,
            regs::CR1,
            regs::CR2,
            regs::STRTAB_BASE,
            regs::STRTAB_BASE_CFG,
            regs::CMDQ_BASE,
            regs::CMDQ_CONS,
            regs::CR0,
            regs::EVENTQ_BASE,
            regs::EVENTQ_PROD,
            regs::EVENTQ_CONS,
            regs::CR0,
            regs::CR0,
        ]
    );
    let cr0: Vec<u64> = writes
        .iter()
        .filter(|w| w.0 == regs::CR0)
        .map(|w| w.1)
        .collect();
    assert_eq!(
        cr0,
        [0, cmdqen, cmdqen | eventqen, cmdqen | eventqen | smmuen]
    );
    // GBPA: abort while disabled, written with UPDATE.
    let gbpa = writes.iter().find(|w| w.0 == regs::GBPA).unwrap().1;
    assert_eq!(gbpa, 1 << 31 | 1 << 20);
    // CR1 coherent (0xd75); two-level table of 2^16 StreamIDs, SPLIT 8.
    assert_eq!(m.read32(regs::CR1), 0xd75);
    assert_eq!(m.read32(regs::STRTAB_BASE_CFG), 1 << 16 | 8 << 6 | 16);
    // The commands, before EVENTQEN: CFGI_ALL, TLBI_EL2_ALL, TLBI_NSNH_ALL, CMD_SYNC.
    let ops: Vec<[u64; 2]> = m.executed.borrow().clone();
    assert_eq!(
        ops,
        [
            Command::cfgi_all().words,
            Command::tlbi_el2_all().words,
            Command::tlbi_nsnh_all().words,
            Command::plain_sync().words,
        ]
    );
    // Disable: GBPA first, then SMMUEN off with the queues still on.
    m.writes.borrow_mut().clear();
    u.disable().unwrap();
    let w: Vec<(usize, u64)> = m.writes.borrow().clone();
    assert_eq!(
        w.iter().map(|w| w.0).collect::<Vec<_>>(),
        [regs::GBPA, regs::CR0]
    );
    assert_eq!(w[1].1, cmdqen | eventqen);
    assert!(!u.is_enabled());
    // Re-enable reuses the tables.
    u.enable().unwrap();
    assert_eq!(alloc.live_pages(), 3);
}

#[test]
fn disable_to_bypass_and_a_stuck_cr0_times_out() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let cfg = SmmuConfig {
        when_disabled: DisabledTraffic::Bypass,
        ..config()
    };
    let u = SmmuUnit::new(&m, &alloc, cfg).unwrap();
    u.enable().unwrap();
    u.disable().unwrap();
    assert_eq!(m.read32(regs::GBPA) & (1 << 20), 0);
    m.set_cr0_stuck(true);
    assert!(matches!(u.enable(), Err(SmmuError::Cr0AckTimeout { .. })));
}

#[test]
fn configuration_is_checked_against_the_id_registers() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let bad = |cfg| SmmuUnit::new(&m, &alloc, cfg).err();
    assert!(matches!(
        bad(SmmuConfig {
            sid_bits: Some(17),
            ..config()
        }),
        Some(SmmuError::SizeUnsupported {
            log2: 17,
            max_log2: 16,
            ..
        })
    ));
    assert!(bad(SmmuConfig {
        cmdq_log2: Some(9),
        ..config()
    })
    .is_some());
    // IDR0.MSI and SEV are not set in IDR0.
    assert!(bad(SmmuConfig {
        sync: cmdq::SyncMode::Sev,
        ..config()
    })
    .is_some());
    // A linear-only unit refuses a two-level table; Auto then picks linear.
    let lin = model(IDR0 & !(1 << 27), 0);
    let two = SmmuConfig {
        stream_table: StreamTableLayout::TwoLevel { split: 8 },
        ..config()
    };
    assert!(SmmuUnit::new(&lin, &alloc, two).is_err());
    let cfg = SmmuConfig {
        sid_bits: Some(6),
        ..config()
    };
    let u = SmmuUnit::new(&lin, &alloc, cfg).unwrap();
    u.enable().unwrap();
    assert_eq!(lin.read32(regs::STRTAB_BASE_CFG), 6);
    // No AArch64 tables (TTF = 1): refused.
    assert!(SmmuUnit::new(&model(IDR0 & !0xc | 0x4, 0), &alloc, config()).is_err());
}

#[test]
fn snoop_enforcement_needs_fwb_and_cohacc_and_is_never_downgraded() {
    let alloc = VecAllocator::default();
    let snoop = DomainConfig {
        enforce_snoop: true,
        ..DomainConfig::default()
    };
    for (idr0, idr3) in [(IDR0, 0), (IDR0 & !0x10, FWB)] {
        let m = model(idr0, idr3);
        let u = SmmuUnit::new(&m, &alloc, config()).unwrap();
        assert!(!u.capabilities().enforce_snoop);
        assert_eq!(
            u.domain_alloc(&snoop),
            Err(Error::Unsupported(Missing::SnoopControl))
        );
    }
    assert_eq!(alloc.live_pages(), 0);
    let m = model(IDR0, FWB);
    let u = enabled(&m, &alloc);
    assert!(u.capabilities().enforce_snoop);
    // Stage 1 cannot override a no-snoop attribute.
    let s1_snoop = DomainConfig {
        stage: Stage::First,
        ..snoop
    };
    assert_eq!(
        u.domain_alloc(&s1_snoop),
        Err(Error::Unsupported(Missing::SnoopControl))
    );
    let d = u.domain_alloc(&snoop).unwrap();
    u.map(d, Iova::new(0x1000), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    u.attach(DeviceId(5), None, d).unwrap();
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
        (44, 1 << 12 | 1 << 21 | 1 << 30)
    );
    let pages = alloc.live_pages();
    u.attach(DeviceId(0x123), None, d).unwrap();
    // The L2 stream table of 256 STEs was allocated on demand.
    assert_eq!(alloc.live_pages(), pages + 1);
    let ste = ste_of(&u, 0x123);
    // V | Config 0b110.
    assert_eq!(ste.words[0], 0xd);
    // VMID 1; S2T0SZ 20 (64 - 44); 44 bits at 4K: start level 0 with a 32-entry root, SL0 2;
    // IR0/OR0 WBWA (1); SH0 inner (3); TG 4K (0); PS 44 bits (4); S2AA64; S2R.
    let w2 = 1 | 20 << 32 | 2 << 38 | 1 << 40 | 1 << 42 | 3 << 44 | 4 << 48 | 1 << 51 | 1 << 58;
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
    // T0SZ 16, TG0 4K, IR0/OR0 WBWA, SH0 inner, EPD1, V, IPS 44 bits (4), AA64, R, A, ASET,
    // ASID 1.
    let w0 = 16
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | 4 << 32
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
    // A second PASID in the same CD leaf: the STE already uses the table, so CFGI_CD + sync,
    // and the STE does not change.
    u.attach(DeviceId(9), Some(p(0x42)), b).unwrap();
    assert_eq!(take_ops(&m), [CFGI_CD, SYNC]);
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
    // CFGI_CD + TLBI_NH_ASID of `a`, one sync (the STE did not change).
    assert_eq!(take_ops(&m), [CFGI_CD, TLBI_NH_ASID, SYNC]);
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

/// Maps, unmaps, flushes; returns the opcodes the flush issued.
fn flush_ops(
    idr3: u32,
    cfg: DomainConfig,
    map: &[(u64, u64)],
    unmap: (u64, u64),
) -> (Vec<u8>, Vec<[u64; 2]>) {
    let (m, alloc) = (model(IDR0, idr3), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&cfg).unwrap();
    for &(iova, len) in map {
        u.map(
            d,
            Iova::new(iova),
            PhysAddr::new(0x1_0000_0000 + iova),
            len,
            RW,
        )
        .unwrap();
    }
    let mut g = Gather::new();
    u.unmap(d, Iova::new(unmap.0), unmap.1, &mut g).unwrap();
    m.executed.borrow_mut().clear();
    u.flush(d, &mut g).unwrap();
    assert!(g.is_empty());
    let cmds = m.executed.borrow().clone();
    (cmds.iter().map(|c| c[0] as u8).collect(), cmds)
}

#[test]
fn flush_command_counts_for_unmap_patterns() {
    struct Case {
        name: &'static str,
        map: &'static [(u64, u64)],
        unmap: (u64, u64),
        /// (range commands without RIL, with RIL).
        counts: (usize, usize),
        leaf: bool,
    }
    let cases = [
        Case {
            name: "aligned run of 16 pages",
            map: &[(0x10_0000, 16 * K4)],
            unmap: (0x10_0000, 16 * K4),
            counts: (16, 1),
            leaf: true,
        },
        Case {
            name: "unaligned 3 pages",
            map: &[(0x10_0000, 16 * K4)],
            unmap: (0x10_3000, 3 * K4),
            counts: (3, 1),
            leaf: true,
        },
        Case {
            name: "one 2 MiB block",
            map: &[(0x20_0000, M2)],
            unmap: (0x20_0000, M2),
            counts: (1, 1),
            leaf: true,
        },
    ];
    for case in &cases {
        for (idr3, want) in [(0, case.counts.0), (RIL, case.counts.1)] {
            for (cfg, op) in [(s2(), TLBI_S2_IPA), (s1(), TLBI_NH_VA)] {
                let (ops, cmds) = flush_ops(idr3, cfg, case.map, case.unmap);
                assert_eq!(count(&ops, op), want, "{} (RIL {})", case.name, idr3 != 0);
                assert_eq!(ops.len(), want + 1, "{}: {ops:x?}", case.name);
                assert_eq!(ops.last(), Some(&SYNC), "{}", case.name);
                let leaf = cmds
                    .iter()
                    .filter(|c| c[0] as u8 == op)
                    .all(|c| c[1] & 1 == 1);
                assert_eq!(leaf, case.leaf, "{}", case.name);
            }
        }
    }
    // Covering a last-level table's whole span frees it: LEAF clear. With RIL one command
    // (512 pages, SCALE 9); without it 512 page commands would pass the threshold.
    let (ops, cmds) = flush_ops(RIL, s2(), &[(0x40_0000, 4 * K4)], (0x40_0000, M2));
    assert_eq!(ops, [TLBI_S2_IPA, SYNC]);
    assert_eq!(cmds[0][1] & 1, 0);
    assert_eq!((cmds[0][0] >> 20) & 0x1f, 9);
    let (ops, _) = flush_ops(0, s2(), &[(0x40_0000, 4 * K4)], (0x40_0000, M2));
    assert_eq!(ops, [TLBI_S12_VMALL, SYNC]);
    // Beyond the threshold (64 page commands): one TLBI_S12_VMALL / TLBI_NH_ASID.
    let (ops, _) = flush_ops(0, s2(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_S12_VMALL, SYNC]);
    let (ops, _) = flush_ops(0, s1(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_NH_ASID, SYNC]);
    // With RIL the same unmap is two range commands (1 + 64 pages).
    let (ops, _) = flush_ops(RIL, s2(), &[(0, 65 * K4)], (0, 65 * K4));
    assert_eq!(ops, [TLBI_S2_IPA, TLBI_S2_IPA, SYNC]);
}

#[test]
fn pages_return_only_after_the_sync_and_stay_on_timeout() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    let d = u.domain_alloc(&s2()).unwrap();
    u.map(
        d,
        Iova::new(0x40_0000),
        PhysAddr::new(0x8000_0000),
        4 * K4,
        RW,
    )
    .unwrap();
    let mut g = Gather::new();
    u.unmap(d, Iova::new(0x40_0000), M2, &mut g).unwrap();
    // The last-level table was unlinked and is held by the gather.
    assert_eq!(g.freed_pages(), 1);
    let live = alloc.live_pages();
    m.stalled.set(true);
    assert_eq!(u.flush(d, &mut g), Err(Error::Timeout { what: "CMD_SYNC" }));
    assert_eq!(g.freed_pages(), 1);
    assert_eq!(alloc.live_pages(), live);
    // The unit comes back: the retry releases the page after its own sync.
    m.stalled.set(false);
    let frees = alloc.frees.get();
    m.executed.borrow_mut().clear();
    u.flush(d, &mut g).unwrap();
    assert_eq!(alloc.frees.get(), frees + 1);
    assert_eq!(alloc.live_pages(), live - 1);
    // The stalled TLBI (512 pages: the whole VMID) and its sync ran when the unit came back,
    // then the retry's own: the release waited for a sync after a TLBI covering the table.
    assert_eq!(take_ops(&m), [TLBI_S12_VMALL, SYNC, TLBI_S12_VMALL, SYNC]);
    // An empty gather issues nothing.
    let mut empty = Gather::new();
    u.flush(d, &mut empty).unwrap();
    assert!(take_ops(&m).is_empty());
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

#[test]
fn events_and_command_errors_are_handled() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let u = enabled(&m, &alloc);
    // F_TRANSLATION (0x10) for StreamID 0x20 at 0x5000.
    m.push_event([0x20 << 32 | 0x10, 0, 0x5000, 0]);
    let mut seen = Vec::new();
    let r = u.handle_events(16, |e| seen.push(e));
    assert_eq!(r.events.consumed, 1);
    assert_eq!(seen[0].stream_id, StreamId(0x20));
    assert_eq!(seen[0].input_address, Some(0x5000));
    assert!(r.command_error.is_none());
    // A malformed command stops the queue: the next wait recovers it and reports it.
    let err = u.with_cmdq(|q, r| q.submit_and_sync(r, &[Command { words: [0xff, 0] }]));
    assert!(matches!(
        err,
        Err(SmmuError::CommandError { opcode: 0xff, .. })
    ));
    // The queue works again.
    let d = u.domain_alloc(&s2()).unwrap();
    u.attach(DeviceId(1), None, d).unwrap();
    let r = u.handle_events(16, |_| {});
    assert!(r.gerror.is_empty());
}

#[test]
fn domains_are_bounded_and_reject_what_the_unit_lacks() {
    let (m, alloc) = (model(IDR0, 0), VecAllocator::default());
    let cfg = SmmuConfig {
        max_domains: 2,
        ..config()
    };
    let u = SmmuUnit::new(&m, &alloc, cfg).unwrap();
    let dirty = DomainConfig {
        dirty_tracking: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&dirty),
        Err(Error::Unsupported(Missing::DirtyTracking))
    );
    let wide = DomainConfig {
        min_ias: 48,
        ..DomainConfig::default()
    };
    assert_eq!(
        u.domain_alloc(&wide),
        Err(Error::Unsupported(Missing::AddressWidth {
            need: 48,
            have: 44
        }))
    );
    let a = u.domain_alloc(&s2()).unwrap();
    let _b = u.domain_alloc(&s1()).unwrap();
    let live = alloc.live_pages();
    assert_eq!(u.domain_alloc(&s2()), Err(Error::NoDomainIds));
    assert_eq!(alloc.live_pages(), live);
    assert_eq!(
        u.domain_geometry(DomainHandle(2)),
        Err(Error::InvalidDomain(DomainHandle(2)))
    );
    // Before enable, attach is refused and a free needs no command.
    assert!(u.attach(DeviceId(1), None, a).is_err());
    u.domain_free(a).unwrap();
    // A stage-2-only unit refuses stage 1 and nesting.
    let m2 = model(IDR0 & !0x2, 0);
    let u2 = SmmuUnit::new(&m2, &alloc, config()).unwrap();
    assert!(matches!(u2.domain_alloc(&s1()), Err(Error::Unsupported(_))));
    assert_eq!(u2.capabilities().pasid_bits, 0);
    let np = DomainConfig {
        nest_parent: true,
        ..DomainConfig::default()
    };
    assert_eq!(
        u2.domain_alloc(&np),
        Err(Error::Unsupported(Missing::Nesting))
    );
}
