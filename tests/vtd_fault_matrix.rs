//! The VT-d fault matrix (issue 14, "What must be true" 2): every public operation of a VT-d
//! unit, in legacy mode, legacy mode under caching mode, scalable mode with second-stage and
//! with first-stage domains, and scalable mode under caching mode, against every fault
//! the behavioural model can inject at every point the operation reaches: a stalled queue, a
//! dropped register write (GCMD, IQT, IQA, RTADDR, FSTS), a write-buffer flush that never
//! completes, IQE at each descriptor, ITE and ICE at each device-TLB descriptor, allocation
//! failure at each allocation; and fault recording that overflowed (`FSTS.PFO`) drained while a
//! fault register write is dropped.
//!
//! After every cell, and again after the retry of a failed call:
//! - `Ok` means the whole effect happened (checked by translating through the model);
//! - `Err` means no effect, or exactly the partial state the documentation names for that call
//!   (`partial_state`: a snapshot of what the tables in memory translate, what the books map,
//!   the live domains, the audit's counts and the allocator's pages, before and after); the
//!   same call with the fault cleared must then complete it;
//! - no structure the model can still reach (tables from the latched root, cached entries, the
//!   queue) is memory the allocator has back ([`VtdModel::reachable`]);
//! - no cache holds an entry tagged with a domain-ID no live domain carries (a DID reused
//!   before its invalidation completed would be one);
//! - [`VtdUnit::audit`]: the unit's books equal what a walk of its tables finds;
//! - at the end, tearing everything down returns every page, with no bad free.
//!
//! The test prints the size of the matrix and fails listing every cell that did not hold.

use std::collections::BTreeSet;

use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Iommu, Pasid, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::{DirtyRead, Gather, Prot};
use iommu_engine::sim::arena::PhysMem;
use iommu_engine::sim::vtd::{regs, Injection, VtdModel, VtdModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::{Arena, ArenaConfig, FailPolicy};
use iommu_engine::vtd::{AttachOptions, AuditReport, Mode, VtdConfig, VtdUnit};

type Unit<'a> = VtdUnit<&'a VtdModel<'a>, &'a Arena>;

const K4: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
const DEV: DeviceId = DeviceId(0x0020);
const DEV2: DeviceId = DeviceId(0x0028);
/// On a bus no other device uses: attaching it allocates a context table (and in scalable
/// mode a PASID directory and table).
const DEV3: DeviceId = DeviceId(0x0300);
const PA_A: u64 = 0x4000_0000;
const PA_B: u64 = 0x5000_0000;
const PA_C: u64 = 0x6000_0000;
const NEW_IOVA: u64 = 0x4000_0000;
const ATS: AttachOptions = AttachOptions {
    ats: true,
    exclusive: false,
    physical_function: None,
    pri: false,
    no_pasid: false,
    ats_forbidden: false,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    /// QEMU's unit with device TLBs and `CAP.RWBF`.
    Legacy,
    /// QEMU's unit with device TLBs under caching mode.
    LegacyCachingMode,
    /// A scalable-mode unit (second-stage domains, PASIDs, dirty tracking).
    Scalable,
    /// The same unit with first-stage domains (PASID-based invalidations).
    ScalableFirstStage,
    /// The scalable-mode unit under caching mode (second-stage domains): not-present context
    /// and PASID entries may be cached.
    ScalableCachingMode,
}

impl Variant {
    fn model(self) -> VtdModelConfig {
        match self {
            Variant::Legacy => VtdModelConfig::qemu_default().with_dt(true).with_rwbf(true),
            Variant::LegacyCachingMode => VtdModelConfig::qemu_default()
                .with_dt(true)
                .with_caching_mode(true),
            Variant::Scalable | Variant::ScalableFirstStage | Variant::ScalableCachingMode => {
                // ECAP.SMPWCS (bit 48): snooped page walks, which dirty tracking needs.
                let mut cfg = VtdModelConfig::scalable()
                    .with_caching_mode(self == Variant::ScalableCachingMode);
                cfg.ecap |= 1 << 48;
                cfg
            }
        }
    }

    fn mode(self) -> Mode {
        match self {
            Variant::Scalable | Variant::ScalableFirstStage | Variant::ScalableCachingMode => {
                Mode::Scalable
            }
            _ => Mode::Legacy,
        }
    }

    /// The domains the fixture builds.
    fn domain(self, dirty: bool) -> DomainConfig {
        match self {
            Variant::ScalableFirstStage => DomainConfig {
                stage: Stage::First,
                ..DomainConfig::default()
            },
            Variant::Scalable | Variant::ScalableCachingMode => DomainConfig {
                dirty_tracking: dirty,
                ..DomainConfig::default()
            },
            _ => DomainConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Enable,
    Takeover,
    DomainAlloc,
    DomainFree,
    Attach,
    /// `Attach` of a device on a new bus: the attach allocates.
    AttachNewBus,
    Replace,
    /// `DEV` (ATS, its ATC holding d1's page) moved to d2 with the trait's plain `attach`: no
    /// ATS asked (legacy: `TT` untranslated-only; scalable: the context entry's `DTE` stays).
    /// After a failure, d1's page is unmapped and d1 flushed before the retry: if that returns
    /// `Ok`, `DEV`'s ATC holds nothing at 0; after the move, nothing either.
    ReplaceWithoutAts,
    Detach,
    PasidAttach,
    PasidDetach,
    Map,
    UnmapAndFlush,
    Flush,
    DirtyReadAndClear,
    /// `set_dirty_tracking(d1, true)`, after a write under an earlier period of tracking left
    /// the leaf dirty and a read cached the entry without `SSADE`.
    DirtyOn,
    /// `set_dirty_tracking(d1, false)`, its entry cached with `SSADE`.
    DirtyOff,
    Disable,
    Release,
    /// `drain_faults` after more faults than the unit has fault recording registers.
    DrainFaults,
}

const OPS: [Op; 20] = [
    Op::Enable,
    Op::Takeover,
    Op::DomainAlloc,
    Op::DomainFree,
    Op::Attach,
    Op::AttachNewBus,
    Op::Replace,
    Op::ReplaceWithoutAts,
    Op::Detach,
    Op::PasidAttach,
    Op::PasidDetach,
    Op::Map,
    Op::UnmapAndFlush,
    Op::Flush,
    Op::DirtyReadAndClear,
    Op::DirtyOn,
    Op::DirtyOff,
    Op::Disable,
    Op::Release,
    Op::DrainFaults,
];

impl Op {
    fn applies(self, v: Variant) -> bool {
        match self {
            Op::PasidAttach | Op::PasidDetach => v.mode() == Mode::Scalable,
            Op::DirtyReadAndClear | Op::DirtyOn | Op::DirtyOff => {
                matches!(v, Variant::Scalable | Variant::ScalableCachingMode)
            }
            _ => true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Inject(Injection),
    AllocFailure(u64),
    /// IQE/ITE/ICE the previous owner left in FSTS (takeover and enable only).
    StaleQueueErrors(u32),
}

fn arena() -> Arena {
    Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 16 << 20,
    })
    .expect("arena")
}

fn config(v: Variant) -> VtdConfig {
    VtdConfig {
        mode: v.mode(),
        poll_budget: 40,
        device_tlb_poll_budget: 80,
        ..VtdConfig::legacy()
    }
}

/// The state an operation starts from, and what it left.
struct Fixture<'a> {
    v: Variant,
    m: &'a VtdModel<'a>,
    a: &'a Arena,
    u: Option<Unit<'a>>,
    /// Domains allocated here (some may have been freed).
    domains: Vec<DomainHandle>,
    /// d1: DEV (ATS) attached, 0 -> PA_A; in scalable mode PASID 5 too.
    d1: Option<DomainHandle>,
    /// d2: maps 0 -> PA_B; attached to nothing.
    d2: Option<DomainHandle>,
    /// A gather of an unmap of 0 in d1, for `Flush`.
    gather: Gather,
    /// Pages a previous owner left (takeover): never the unit's to free.
    foreign_pages: usize,
    /// The IOVAs `read_and_clear_dirty` reported, over every attempt.
    dirty_seen: Vec<u64>,
}

fn pasid(p: u32) -> Option<Pasid> {
    Pasid::new(p)
}

fn sid(d: DeviceId) -> u16 {
    d.0 as u16
}

impl<'a> Fixture<'a> {
    fn unit(&self) -> &Unit<'a> {
        self.u.as_ref().expect("unit")
    }

    /// Builds the state `op` starts from. Nothing here runs under a fault.
    fn new(v: Variant, m: &'a VtdModel<'a>, a: &'a Arena, op: Op) -> Self {
        let mut f = Fixture {
            v,
            m,
            a,
            u: None,
            domains: Vec::new(),
            d1: None,
            d2: None,
            gather: Gather::new(),
            foreign_pages: 0,
            dirty_seen: Vec::new(),
        };
        if op == Op::Takeover {
            let old = VtdUnit::new(m, a, config(v)).unwrap();
            old.enable().unwrap();
            let d = old.domain_alloc(&DomainConfig::default()).unwrap();
            old.map(d, Iova::new(0), PhysAddr::new(PA_A), K4, RW)
                .unwrap();
            old.attach(DEV, None, d).unwrap();
            m.translate(sid(DEV), None, 0, Access::READ).unwrap();
            f.foreign_pages = a.stats().live_pages;
        }
        let u = VtdUnit::new(m, a, config(v)).unwrap();
        if matches!(op, Op::Enable | Op::Takeover) {
            f.u = Some(u);
            return f;
        }
        u.enable().unwrap();
        f.u = Some(u);
        let u = f.unit();
        let d1 = u.domain_alloc(&v.domain(true)).unwrap();
        let d2 = u.domain_alloc(&v.domain(false)).unwrap();
        u.map(d1, Iova::new(0), PhysAddr::new(PA_A), K4, RW)
            .unwrap();
        u.map(d2, Iova::new(0), PhysAddr::new(PA_B), K4, RW)
            .unwrap();
        u.attach_with(DEV, None, d1, ATS).unwrap();
        m.ats_translate(sid(DEV), None, 0, Access::READ).unwrap();
        if v.mode() == Mode::Scalable {
            u.attach_with(DEV, pasid(5), d1, ATS).unwrap();
            m.ats_translate(sid(DEV), Some(5), 0, Access::READ).unwrap();
        }
        // d2 was used, so caches hold entries tagged with its DID.
        u.attach(DEV2, None, d2).unwrap();
        m.translate(sid(DEV2), None, 0, Access::READ).unwrap();
        u.detach(DEV2, None).unwrap();
        if op == Op::Flush {
            let mut g = Gather::new();
            assert_eq!(u.unmap(d1, Iova::new(0), K4, &mut g), Ok(K4));
            f.gather = g;
        }
        f.domains = vec![d1, d2];
        f.d1 = Some(d1);
        f.d2 = Some(d2);
        if op == Op::Release {
            f.unit().disable().unwrap();
        }
        if op == Op::DirtyReadAndClear {
            // A DMA write: the model sets the leaf's D flag (SSADE), the IOTLB caches it dirty.
            m.translate(sid(DEV), None, 0, Access::WRITE).unwrap();
        }
        if op == Op::DirtyOn {
            // d1 tracks from its allocation: a write leaves the leaf dirty, then tracking goes
            // off and a read caches the entry without SSADE. `on` must clean the leaf and
            // make the next write through that IOTLB entry recorded.
            m.translate(sid(DEV), None, 0, Access::WRITE).unwrap();
            f.unit().set_dirty_tracking(d1, false).unwrap();
            m.translate(sid(DEV), None, 0, Access::READ).unwrap();
        }
        if op == Op::DirtyOff {
            // The entry cached with SSADE: `off` must make the next write unrecorded.
            m.translate(sid(DEV), None, 0, Access::READ).unwrap();
        }
        if op == Op::DrainFaults {
            // More faults than fault recording registers: FSTS.PFO.
            let records = m.fault_records().len() as u64;
            for i in 0..records + 2 {
                assert!(m.translate(sid(DEV2), None, i * K4, Access::WRITE).is_err());
            }
            assert_ne!(m.read32(regs::FSTS) & regs::FSTS_PFO, 0);
        }
        f
    }

    /// Runs `op` once.
    fn run(&mut self, op: Op) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Debug| format!("{e:?}");
        let (d1, d2) = (self.d1, self.d2);
        let u = self.u.as_ref().ok_or("no unit")?;
        match op {
            Op::Enable | Op::Takeover => u.enable().map_err(|x| e(&x)),
            Op::DomainAlloc => {
                let d = u.domain_alloc(&self.v.domain(false)).map_err(|x| e(&x))?;
                self.domains.push(d);
                Ok(())
            }
            Op::DomainFree => u.domain_free(d2.unwrap()).map_err(|x| e(&x)),
            Op::Attach => u
                .attach_with(DEV2, None, d1.unwrap(), ATS)
                .map_err(|x| e(&x)),
            Op::AttachNewBus => u
                .attach_with(DEV3, None, d1.unwrap(), ATS)
                .map_err(|x| e(&x)),
            Op::Replace => u
                .attach_with(DEV, None, d2.unwrap(), ATS)
                .map_err(|x| e(&x)),
            Op::ReplaceWithoutAts => u.attach(DEV, None, d2.unwrap()).map_err(|x| e(&x)),
            Op::Detach => u.detach(DEV, None).map_err(|x| e(&x)),
            Op::PasidAttach => u.attach(DEV, pasid(7), d2.unwrap()).map_err(|x| e(&x)),
            Op::PasidDetach => u.detach(DEV, pasid(5)).map_err(|x| e(&x)),
            Op::Map => u
                .map(
                    d1.unwrap(),
                    Iova::new(NEW_IOVA),
                    PhysAddr::new(PA_C),
                    2 * K4,
                    RW,
                )
                .map_err(|x| e(&x)),
            Op::UnmapAndFlush => {
                // A caller that gives up on a failed gather and retries the whole thing.
                let mut g = Gather::new();
                u.unmap(d1.unwrap(), Iova::new(0), K4, &mut g)
                    .map_err(|x| e(&x))?;
                u.flush(d1.unwrap(), &mut g).map_err(|x| e(&x))
            }
            Op::Flush => u.flush(d1.unwrap(), &mut self.gather).map_err(|x| e(&x)),
            Op::DirtyReadAndClear => {
                let mut g = Gather::new();
                let seen = &mut self.dirty_seen;
                let mut sink = |iova: Iova, _: u32| seen.push(iova.get());
                u.read_and_clear_dirty(d1.unwrap(), Iova::new(0), 1 << 30, &mut sink, &mut g)
                    .map_err(|x| e(&x))?;
                u.flush(d1.unwrap(), &mut g).map_err(|x| e(&x))
            }
            Op::DirtyOn => u.set_dirty_tracking(d1.unwrap(), true).map_err(|x| e(&x)),
            Op::DirtyOff => u.set_dirty_tracking(d1.unwrap(), false).map_err(|x| e(&x)),
            Op::Disable => u.disable().map_err(|x| e(&x)),
            Op::DrainFaults => {
                let summary = u.drain_faults(|_, _| {});
                let fsts = self.m.read32(regs::FSTS);
                if summary.still_pending || fsts & (regs::FSTS_PFO | regs::FSTS_PPF) != 0 {
                    return Err(format!("{summary:?}, FSTS {fsts:#x}"));
                }
                Ok(())
            }
            Op::Release => {
                let unit = self.u.take().ok_or("no unit")?;
                match unit.release() {
                    Ok(r) if r.leaked.is_none() => Ok(()),
                    Ok(r) => Err(format!("released, leaking: {:?}", r.leaked)),
                    Err((unit, x)) => {
                        self.u = Some(unit);
                        Err(e(&x))
                    }
                }
            }
        }
    }

    /// What `op` must have done when it returned `Ok`.
    fn effect(&self, op: Op) -> Result<(), String> {
        let m = self.m;
        let tr = |dev: DeviceId, p: Option<u32>, iova: u64| {
            m.translate(sid(dev), p, iova, Access::READ).map(|t| t.pa)
        };
        let want = |what: &str, ok: bool| if ok { Ok(()) } else { Err(what.to_string()) };
        match op {
            Op::Enable | Op::Takeover => {
                want("translation on", self.unit().is_enabled())?;
                want("DEV blocked", tr(DEV, None, 0).is_err())
            }
            Op::DomainAlloc => want(
                "new domain",
                self.domains
                    .last()
                    .is_some_and(|&d| self.unit().domain_id(d).is_some()),
            ),
            Op::DomainFree => want("d2 gone", self.unit().domain_id(self.d2.unwrap()).is_none()),
            Op::Attach => want("DEV2 -> d1", tr(DEV2, None, 0) == Ok(PA_A)),
            Op::AttachNewBus => want("DEV3 -> d1", tr(DEV3, None, 0) == Ok(PA_A)),
            Op::Replace => want("DEV -> d2", tr(DEV, None, 0) == Ok(PA_B)),
            Op::ReplaceWithoutAts => {
                want("DEV -> d2", tr(DEV, None, 0) == Ok(PA_B))?;
                want("DEV's ATC empty of d1", !m.atc_holds(sid(DEV), None, 0))
            }
            Op::Detach => {
                want("DEV blocked", tr(DEV, None, 0).is_err())?;
                want("DEV's ATC empty", !m.atc_holds(sid(DEV), None, 0))
            }
            Op::PasidAttach => want("DEV PASID 7 -> d2", tr(DEV, Some(7), 0) == Ok(PA_B)),
            Op::PasidDetach => {
                want("PASID 5 blocked", tr(DEV, Some(5), 0).is_err())?;
                want("PASID 5 ATC empty", !m.atc_holds(sid(DEV), Some(5), 0))
            }
            Op::Map => {
                want("mapped", tr(DEV, None, NEW_IOVA + K4) == Ok(PA_C + K4))?;
                want("first page", tr(DEV, None, NEW_IOVA) == Ok(PA_C))
            }
            Op::UnmapAndFlush | Op::Flush => {
                want(
                    "unmapped",
                    self.unit().query(self.d1.unwrap(), Iova::new(0)).is_none(),
                )?;
                want("IOTLB invalidated", tr(DEV, None, 0).is_err())?;
                want("ATC invalidated", !m.atc_holds(sid(DEV), None, 0))?;
                want("gather released", self.gather.is_empty())
            }
            Op::DirtyReadAndClear => {
                want("still mapped", tr(DEV, None, 0) == Ok(PA_A))?;
                want("page 0 reported dirty", self.dirty_seen.contains(&0))?;
                // Cleared, and the IOTLB no longer holds the page as dirty: a new write sets
                // D again and the next call reports it (a lost invalidation would hide it).
                let u = self.unit();
                let mut again = Vec::new();
                let mut g = Gather::new();
                let d1 = self.d1.unwrap();
                let read = |g: &mut Gather, out: &mut Vec<u64>| {
                    u.read_and_clear_dirty(
                        d1,
                        Iova::new(0),
                        1 << 30,
                        &mut |i, _| out.push(i.get()),
                        g,
                    )
                    .map_err(|x| format!("{x:?}"))
                };
                read(&mut g, &mut again)?;
                want("D cleared", again.is_empty())?;
                m.translate(sid(DEV), None, 0, Access::WRITE)
                    .map_err(|x| format!("{x:?}"))?;
                read(&mut g, &mut again)?;
                u.flush(d1, &mut g).map_err(|x| format!("{x:?}"))?;
                want("a write after the clear is seen", again == [0])
            }
            Op::DirtyOn | Op::DirtyOff => self.tracking_is(op == Op::DirtyOn),
            Op::Disable => want("translation off", !self.unit().is_enabled()),
            Op::DrainFaults => want(
                "fault records clear",
                m.fault_records().iter().all(|r| r.hi >> 63 == 0)
                    && m.read32(regs::FSTS) & (regs::FSTS_PFO | regs::FSTS_PPF) == 0,
            ),
            Op::Release => want("released", self.u.is_none()),
        }
    }

    /// After `set_dirty_tracking(d1, on)`: no leaf of d1 is dirty (`on` cleaned it, nothing
    /// wrote since), and a write by `DEV`, without PASID and with PASID 5 (both on d1), through
    /// the IOTLB entries the setup cached, is recorded exactly when tracking is on (a cached
    /// entry without `SSADE`, or with it after `off`, would say otherwise).
    fn tracking_is(&self, on: bool) -> Result<(), String> {
        let (u, d1) = (self.unit(), self.d1.ok_or("no d1")?);
        let dirty = || -> Result<Vec<u64>, String> {
            let mut seen = Vec::new();
            u.read_dirty(
                d1,
                Iova::new(0),
                1 << 30,
                DirtyRead::NoClear,
                &mut |i, _| seen.push(i.get()),
                &mut Gather::new(),
            )
            .map_err(|x| format!("read_dirty: {x:?}"))?;
            Ok(seen)
        };
        if !dirty()?.is_empty() {
            return Err(format!("dirty leaves after the call: {:?}", dirty()?));
        }
        for p in [None, Some(5)] {
            self.m
                .translate(sid(DEV), p, 0, Access::WRITE)
                .map_err(|x| format!("write: {x:?}"))?;
            let recorded = dirty()? == [0];
            if recorded != on {
                return Err(format!(
                    "tracking {on}: a write by DEV (PASID {p:?}) recorded: {recorded}"
                ));
            }
            if recorded {
                // Cleared again for the next write's check.
                let mut g = Gather::new();
                u.read_dirty(
                    d1,
                    Iova::new(0),
                    1 << 30,
                    DirtyRead::Clear,
                    &mut |_, _| {},
                    &mut g,
                )
                .and_then(|()| u.flush(d1, &mut g))
                .map_err(|x| format!("read and clear: {x:?}"))?;
            }
        }
        Ok(())
    }

    /// After a failed move of `DEV` away from d1, before its retry: the caller unmaps d1's page
    /// and flushes d1. If the flush returns `Ok`, `DEV`'s ATC holds nothing at 0.
    fn use_the_domain_left(&mut self) -> Result<(), String> {
        let (u, d1) = (self.unit(), self.d1.ok_or("no d1")?);
        let mut g = Gather::new();
        u.unmap(d1, Iova::new(0), K4, &mut g)
            .map_err(|x| format!("unmap of d1: {x:?}"))?;
        if u.flush(d1, &mut g).is_err() {
            // Owed by d1; the caller keeps the gather's pages (none: a leaf only).
            return Ok(());
        }
        if self.m.atc_holds(sid(DEV), None, 0) {
            return Err("d1 unmapped and flushed, DEV's ATC still holds its page".into());
        }
        Ok(())
    }

    /// The invariants that hold after every call, failed or not.
    fn invariants(&self, op: Op, settled: bool) -> Result<(), String> {
        for pa in self.m.reachable() {
            if self.a.read_u64(pa).is_none() {
                return Err(format!("the unit can reach freed page {pa:#x}"));
            }
        }
        if !self.a.bad_frees().is_empty() {
            return Err(format!("bad frees {:?}", self.a.bad_frees()));
        }
        let Some(u) = &self.u else { return Ok(()) };
        u.audit().map_err(|e| format!("audit: {e}"))?;
        // Before a takeover completed, the previous owner's entries are still cached.
        if op != Op::Takeover || settled {
            let live: BTreeSet<u16> = self
                .domains
                .iter()
                .filter_map(|&d| u.domain_id(d).map(|did| did.get()))
                .collect();
            for did in self.m.cached_domain_ids() {
                let reserved = did == 0
                    && matches!(
                        self.v,
                        Variant::LegacyCachingMode | Variant::ScalableCachingMode
                    );
                if !live.contains(&did) && !reserved {
                    return Err(format!(
                        "cache entries tagged with DID {did}, owned by no domain"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Tears everything down; every page the unit took must come back.
    fn teardown(mut self) -> Result<(), String> {
        if let Some(u) = &self.u {
            for (dev, p) in [
                (DEV, None),
                (DEV, pasid(5)),
                (DEV, pasid(7)),
                (DEV2, None),
                (DEV3, None),
            ] {
                let _ = u.detach(dev, p);
            }
            for &d in &self.domains {
                if u.domain_id(d).is_some() {
                    u.domain_free(d)
                        .map_err(|e| format!("teardown free: {e:?}"))?;
                }
            }
            u.disable()
                .map_err(|e| format!("teardown disable: {e:?}"))?;
            let unit = self.u.take().unwrap();
            let r = unit
                .release()
                .map_err(|(_, e)| format!("teardown release: {e:?}"))?;
            if let Some(e) = r.leaked {
                return Err(format!("release leaked: {e:?}"));
            }
        }
        let live = self.a.stats().live_pages;
        if live != self.foreign_pages {
            return Err(format!(
                "{} page(s) not returned",
                live as i64 - self.foreign_pages as i64
            ));
        }
        if !self.a.bad_frees().is_empty() {
            return Err(format!("bad frees {:?}", self.a.bad_frees()));
        }
        Ok(())
    }
}

/// What a fault-free run of `op` uses: descriptors, device-TLB descriptors, allocations.
fn census(v: Variant, op: Op) -> (u32, u32, u64) {
    let a = arena();
    let m = VtdModel::new(&a, v.model());
    let mut f = Fixture::new(v, &m, &a, op);
    m.reset_stats();
    let allocs = a.stats().allocs;
    f.run(op)
        .unwrap_or_else(|e| panic!("{v:?} {op:?} without a fault: {e}"));
    f.effect(op)
        .unwrap_or_else(|e| panic!("{v:?} {op:?} without a fault: {e}"));
    let log = m.descriptor_log();
    let dev_tlb = log
        .iter()
        .filter(|d| matches!(d[0] & 0xf | (d[0] >> 5) & 0x70, 0x3 | 0x8))
        .count();
    (log.len() as u32, dev_tlb as u32, a.stats().allocs - allocs)
}

fn faults(v: Variant, op: Op) -> Vec<Fault> {
    let (descriptors, dev_tlb, allocs) = census(v, op);
    let mut out = vec![
        Fault::None,
        Fault::Inject(Injection::StallWaits),
        Fault::Inject(Injection::IgnoreGcmd),
        Fault::Inject(Injection::StallWriteBufferFlush),
        Fault::Inject(Injection::StallWaitsUntilQueueOff),
    ];
    if matches!(op, Op::Enable | Op::Takeover) {
        for fsts in [regs::FSTS_IQE, regs::FSTS_ITE, regs::FSTS_ICE] {
            out.push(Fault::StaleQueueErrors(fsts));
        }
    }
    // The last: the first fault recording register's high half (QEMU's CAP.FRO = 0x22).
    for reg in [regs::IQT, regs::IQA, regs::RTADDR, regs::FSTS, 0x228] {
        out.push(Fault::Inject(Injection::IgnoreWrites(reg)));
    }
    // One more than counted: a retry or recovery may fetch more than the fault-free run.
    for n in 1..=descriptors + 1 {
        out.push(Fault::Inject(Injection::QueueErrorAt(n)));
    }
    for n in 1..=dev_tlb {
        out.push(Fault::Inject(Injection::DeviceTlbTimeoutAt(n)));
        out.push(Fault::Inject(Injection::CompletionErrorAt(n)));
    }
    for n in 1..=allocs {
        out.push(Fault::AllocFailure(n));
    }
    out
}

/// What a call may change, read before and after it: what the tables in memory translate
/// (the model's walk with empty caches, so a stale cache cannot hide a change), what the
/// unit's books map, which domains live, what its audit reports (entries, attachments,
/// unsettled ones, domains, domains owing an invalidation and their pages), the pages the
/// allocator has out and whether translation is on.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    translations: Vec<Option<u64>>,
    mapped: Vec<Option<u64>>,
    domains: Vec<DomainHandle>,
    audit: Option<AuditReport>,
    pages: usize,
    enabled: bool,
}

/// The probes: (device, PASID) x IOVA.
const PROBE_DEVICES: [(DeviceId, Option<u32>); 5] = [
    (DEV, None),
    (DEV, Some(5)),
    (DEV, Some(7)),
    (DEV2, None),
    (DEV3, None),
];
const PROBE_IOVAS: [u64; 3] = [0, NEW_IOVA, NEW_IOVA + K4];

impl Snapshot {
    fn take(f: &Fixture<'_>) -> Self {
        let mut translations = Vec::new();
        for (dev, p) in PROBE_DEVICES {
            for iova in PROBE_IOVAS {
                translations.push(f.m.translate_in_memory(sid(dev), p, iova, Access::READ));
            }
        }
        let (mut mapped, mut domains) = (Vec::new(), Vec::new());
        if let Some(u) = &f.u {
            for &d in f.domains.iter().filter(|&&d| u.domain_id(d).is_some()) {
                domains.push(d);
                for iova in PROBE_IOVAS {
                    mapped.push(u.query(d, Iova::new(iova)).map(|m| m.pa.get()));
                }
            }
        }
        Snapshot {
            translations,
            mapped,
            domains,
            audit: f.u.as_ref().and_then(|u| u.audit().ok()),
            pages: f.a.stats().live_pages,
            enabled: f.u.as_ref().is_some_and(|u| u.is_enabled()),
        }
    }

    /// The translations of `dev` (and PASID `p`) at every probed IOVA.
    fn of(&self, dev: DeviceId, p: Option<u32>) -> &[Option<u64>] {
        let i = PROBE_DEVICES
            .iter()
            .position(|&x| x == (dev, p))
            .unwrap_or(0);
        &self.translations[i * PROBE_IOVAS.len()..(i + 1) * PROBE_IOVAS.len()]
    }

    /// The translations of every other (device, PASID).
    fn others(&self, dev: DeviceId, p: Option<u32>) -> Vec<Option<u64>> {
        let mut v = Vec::new();
        for (i, &x) in PROBE_DEVICES.iter().enumerate() {
            if x != (dev, p) {
                v.extend_from_slice(
                    &self.translations[i * PROBE_IOVAS.len()..(i + 1) * PROBE_IOVAS.len()],
                );
            }
        }
        v
    }
}

/// After a failed `op`: no effect (`after == before`), or exactly the partial state the
/// documentation names for it (README, "Errors: what to do"; ARCHITECTURE.md, "Faults and
/// error paths"), which the retry then completes. Returns the name of the state found.
fn partial_state(
    v: Variant,
    op: Op,
    before: &Snapshot,
    after: &Snapshot,
) -> Result<&'static str, String> {
    if after == before {
        return Ok("no effect");
    }
    let fail = |what: &str| {
        Err(format!(
            "neither no effect nor the documented partial state ({what}):\n  before {before:?}\n  after  {after:?}"
        ))
    };
    let (Some(ab), Some(aa)) = (before.audit, after.audit) else {
        return fail("no audit");
    };
    let same_books = before.mapped == after.mapped && before.domains == after.domains;
    let attached = |dev: DeviceId, p: Option<u32>| {
        // The attachment recorded, unsettled; its entry either already points at the new
        // domain or is torn down (the old one's invalidation unconfirmed); nothing else moved;
        // tables the attach built (context table, PASID directory and table) stay.
        let entry = after.of(dev, p);
        let blocked = entry.iter().all(Option::is_none);
        let new = v.mode() == Mode::Scalable && aa.unsettled == ab.unsettled;
        same_books
            && after.others(dev, p) == before.others(dev, p)
            && after.pages >= before.pages
            && after.enabled == before.enabled
            && (aa.unsettled == ab.unsettled + 1 || aa.unsettled == ab.unsettled && new)
            && (blocked || entry != before.of(dev, p))
            && aa.owing == ab.owing
    };
    let state = match op {
        // Stopped at the first register that did not answer: calling again completes it; the
        // root table and the queue it allocated stay for that call.
        Op::Enable | Op::Takeover | Op::Disable | Op::Release
            if same_books && after.pages >= before.pages =>
        {
            "stopped part-way"
        }
        Op::Attach if attached(DEV2, None) => "attachment unsettled",
        Op::AttachNewBus if attached(DEV3, None) => "attachment unsettled",
        Op::Replace | Op::ReplaceWithoutAts if attached(DEV, None) => "attachment unsettled",
        Op::PasidAttach if attached(DEV, Some(7)) => "attachment unsettled",
        // The scalable-mode attach that ran out of memory: the device's context entry is
        // present over an empty PASID directory (blocking like no entry); nothing else moved.
        Op::Attach | Op::AttachNewBus | Op::Replace | Op::ReplaceWithoutAts | Op::PasidAttach
            if v.mode() == Mode::Scalable
                && same_books
                && after.translations == before.translations
                && after.pages > before.pages
                && AuditReport {
                    entries: 0,
                    attachments: 0,
                    ..aa
                } == AuditReport {
                    entries: 0,
                    attachments: 0,
                    ..ab
                } =>
        {
            "context entry over an empty PASID directory"
        }
        // The entry cleared, the attachment recorded unsettled until the invalidation is
        // confirmed.
        Op::Detach | Op::PasidDetach => {
            let (dev, p) = if op == Op::Detach {
                (DEV, None)
            } else {
                (DEV, Some(5))
            };
            let torn = same_books
                && after.of(dev, p).iter().all(Option::is_none)
                && after.others(dev, p) == before.others(dev, p)
                && aa.unsettled == ab.unsettled + 1
                && after.pages == before.pages;
            if !torn {
                return fail("entry cleared, attachment unsettled");
            }
            "entry cleared, attachment unsettled"
        }
        // Nothing mapped: the entries written were cleared again. The tables the map linked
        // stay, empty (at most those the clean run allocates; a retry reuses them, reclaim or
        // domain_free frees them); under caching mode the undo's invalidation, if it failed
        // too, is owed by the domain (no page waits for it); without it nothing is owed.
        Op::Map => {
            let caching = matches!(v, Variant::LegacyCachingMode | Variant::ScalableCachingMode);
            let added = after.pages.checked_sub(before.pages);
            let undone = same_books
                && after.translations == before.translations
                && (aa.owing == ab.owing || caching && aa.owing == ab.owing + 1)
                && aa.owed_pages == ab.owed_pages
                && added.is_some_and(|n| n as u64 <= census(v, op).2);
            if !undone {
                return fail("nothing mapped, empty tables linked, the undo's invalidation owed");
            }
            "nothing mapped, empty tables linked"
        }
        // The entries are gone, their invalidation owed by the domain (the dropped gather's
        // pages with it).
        Op::UnmapAndFlush
            if after.domains == before.domains
                && after.of(DEV, None)[0].is_none()
                && aa.owing == ab.owing + 1
                && after.pages == before.pages =>
        {
            "unmapped, invalidation owed"
        }
        // SSADE written in the present entries (the tracking state is the call's), their
        // invalidation not confirmed: the ranges `on` cleaned are owed by the domain (none
        // for `off`, which cleans nothing); the retry completes it.
        Op::DirtyOn | Op::DirtyOff
            if same_books
                && after.translations == before.translations
                && (aa.owing == ab.owing || op == Op::DirtyOn && aa.owing == ab.owing + 1)
                && after.pages == before.pages =>
        {
            "tracking switched, invalidation owed"
        }
        // The gather keeps its pages and the domain owes its ranges.
        Op::Flush | Op::DirtyReadAndClear
            if same_books
                && after.translations == before.translations
                && aa.owing == ab.owing + 1
                && after.pages == before.pages =>
        {
            "invalidation owed"
        }
        _ => return fail("none documented"),
    };
    Ok(state)
}

/// One cell: `op` under `fault`, the checks, the retry, the checks, the teardown.
fn cell(v: Variant, op: Op, fault: Fault) -> Result<Option<&'static str>, String> {
    let a = arena();
    let m = VtdModel::new(&a, v.model());
    let mut f = Fixture::new(v, &m, &a, op);
    match fault {
        Fault::None => {}
        Fault::Inject(i) => m.inject(i),
        Fault::AllocFailure(n) => a.set_fail_policy(FailPolicy::Nth(n)),
        Fault::StaleQueueErrors(fsts) => m.leave_queue_errors(fsts),
    }
    let before = Snapshot::take(&f);
    let first = f.run(op);
    m.clear_injections();
    a.set_fail_policy(FailPolicy::Never);
    let failed = first.is_err();
    if op == Op::Takeover {
        // Whatever happened, DMA never passes untranslated. A failed takeover may leave the
        // previous owner's translations as they were (DEV 0 -> PA_A, its own mapping); a
        // successful one blocks them (`effect`).
        for (dev, iova) in [(DEV, 0), (DEV, PA_C), (DEV2, PA_C), (DEV2, 0)] {
            if let Ok(t) = m.translate(sid(dev), None, iova, Access::READ) {
                let previous = failed && (dev, iova, t.pa) == (DEV, 0, PA_A);
                if !previous {
                    return Err(format!(
                        "after {first:?}: {dev:?} {iova:#x} translates to {:#x}",
                        t.pa
                    ));
                }
            }
        }
    }
    f.invariants(op, first.is_ok())
        .map_err(|e| format!("after {first:?}: {e}"))?;
    let state = if failed {
        Some(
            partial_state(v, op, &before, &Snapshot::take(&f))
                .map_err(|e| format!("after {first:?}: {e}"))?,
        )
    } else {
        None
    };
    if failed && op == Op::ReplaceWithoutAts {
        f.use_the_domain_left()
            .map_err(|e| format!("after {first:?}: {e}"))?;
    }
    if failed {
        f.run(op)
            .map_err(|e| format!("retry after {first:?}: {e}"))?;
        f.invariants(op, true)
            .map_err(|e| format!("after the retry: {e}"))?;
    }
    f.effect(op).map_err(|e| format!("after {first:?}: {e}"))?;
    f.teardown()?;
    Ok(state)
}

#[test]
fn every_operation_under_every_fault() {
    let mut cells = 0usize;
    let mut failed_calls = 0usize;
    let mut states = std::collections::BTreeMap::<&str, usize>::new();
    let mut broken = Vec::new();
    let variants = [
        Variant::Legacy,
        Variant::LegacyCachingMode,
        Variant::Scalable,
        Variant::ScalableFirstStage,
        Variant::ScalableCachingMode,
    ];
    for v in variants {
        for op in OPS.into_iter().filter(|op| op.applies(v)) {
            for fault in faults(v, op) {
                cells += 1;
                match cell(v, op, fault) {
                    Ok(None) => {}
                    Ok(Some(state)) => {
                        failed_calls += 1;
                        *states.entry(state).or_default() += 1;
                    }
                    Err(e) => broken.push(format!("{v:?} {op:?} {fault:?}: {e}")),
                }
            }
        }
    }
    println!(
        "VT-d fault matrix: {cells} cells ({failed_calls} calls failed and were retried), {} broken",
        broken.len()
    );
    println!("what the failed calls left: {states:?}");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    assert!(
        failed_calls > 0 && cells > 300,
        "the matrix must exercise error paths"
    );
}
