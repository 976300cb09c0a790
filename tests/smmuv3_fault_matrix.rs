//! The SMMUv3 fault matrix (issue 14, "what must be true" 2): every public operation of a unit
//! against every fault the model can inject, one fresh unit per cell.
//!
//! After every cell:
//! - `Ok` means the whole effect happened (checked through the model's translations, which use
//!   its caches, so a lost invalidation shows as a stale translation);
//! - `Err` means no effect, or exactly the partial state the documentation names for that call
//!   (`partial_state`: a snapshot of what the structures in memory translate, what the books
//!   map, the live domains, the audit's counts and the allocator's pages, before and after);
//!   the same call, retried once the fault is cleared, completes it (and issues every
//!   invalidation the failed call lost);
//! - no page went back to the allocator while the SMMU can still reach it: a walk of the
//!   model's memory and caches (stream table, STEs, CD tables, CDs, translation tables,
//!   queues) only finds live pages;
//! - no VMID or ASID the unit considers free is still held by an entry of the model's TLB;
//! - `SmmuUnit::audit` finds the books equal to the tables (an unsettled stream only while a
//!   call that failed has not been retried).
//!
//! The test prints the matrix size and fails if any cell does not hold, listing every one.

use std::cell::Cell as StdCell;
use std::fmt::Write as _;

use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Error, Iommu, Pasid, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{DirtyRead, Gather, Prot};
use iommu_engine::sim::arena::{Arena, ArenaConfig, FailPolicy};
use iommu_engine::sim::smmuv3::{op, Injection, SmmuModel, SmmuModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::smmuv3::cmdq::SyncMode;
use iommu_engine::smmuv3::{AuditReport, SmmuConfig, SmmuUnit, StreamTableLayout};

const K4: u64 = 1 << 12;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// A stage-2 domain with ATS.
const SID_S2: u32 = 0x10;
/// A stage-1 RID domain and a PASID domain.
const SID_S1: u32 = 0x11;
/// Used and left by the domain that `DomainFree` frees.
const SID_SPARE: u32 = 0x12;
/// Unmapped in SID_S1's domain: DMAs there fault (F_TRANSLATION), filling the event queue.
const IOVA_FAULT: u64 = 0x1000_0000;
/// First attached by `AttachNew`, in a level-2 stream table of its own (split 6).
const SID_NEW: u32 = 0x50;
/// ATS on, nothing attached: first attached by `AttachAts` (its STE turns EATS on).
const SID_ATS: u32 = 0x13;
const IOVA: u64 = 0x40_0000;
const IOVA2: u64 = 0x80_0000;
const PA_D2: u64 = 0x4000_0000;
const PA_D2B: u64 = 0x4100_0000;
const PA_D1: u64 = 0x4200_0000;
const PA_P1: u64 = 0x4300_0000;
const PA_P2: u64 = 0x4400_0000;

type Unit<'a> = SmmuUnit<&'a SmmuModel<'a>, &'a Arena>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Enable,
    Takeover,
    DomainAlloc,
    DomainFree,
    Attach,
    AttachNew,
    /// The first attach of a stream with ATS: the STE turns EATS on, then the stream's whole
    /// ATC is invalidated.
    AttachAts,
    Detach,
    AttachPasid,
    DetachPasid,
    Map,
    Unmap,
    Flush,
    DirtyReadClear,
    /// `set_dirty_tracking(d2, true)`, after a write under an earlier period of tracking left
    /// a leaf dirty (and the TLB holds it writable-dirty) and tracking went off.
    DirtyOn,
    /// `set_dirty_tracking(d2, false)`.
    DirtyOff,
    Disable,
    Release,
}

const OPS: [Op; 18] = [
    Op::Enable,
    Op::Takeover,
    Op::DomainAlloc,
    Op::DomainFree,
    Op::Attach,
    Op::AttachNew,
    Op::AttachAts,
    Op::Detach,
    Op::AttachPasid,
    Op::DetachPasid,
    Op::Map,
    Op::Unmap,
    Op::Flush,
    Op::DirtyReadClear,
    Op::DirtyOn,
    Op::DirtyOff,
    Op::Disable,
    Op::Release,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// CMD_SYNCs never complete.
    SyncStall,
    /// The same, with a two-entry queue: submissions find no room.
    QueueFull,
    /// CERROR_ILL at the n-th command.
    Illegal(u32),
    /// CERROR_ABT at the n-th command, transient (once) or persistent.
    Abort(u32, bool),
    /// CERROR_ATC_INV_SYNC at the n-th CMD_SYNC, transient or persistent.
    AtcSync(u32, bool),
    /// GERROR.MSI_CMDQ_ABT_ERR: every completion MSI aborts (the unit completes by MSI).
    MsiAbort,
    /// GERROR.SFM_ERR: service failure mode.
    ServiceFailure,
    /// Another GERROR bit, raised as the hardware would.
    Gerror(u32),
    /// More events than the event queue holds.
    EventOverflow,
    /// The n-th page allocation fails.
    Alloc(u64),
    /// CR0ACK never follows CR0 (a register write the unit ignores).
    Cr0AckStuck,
    /// GBPA.UPDATE never clears.
    GbpaStuck,
    /// Writes to this register are dropped (CMDQ_PROD, GERRORN, STRTAB_BASE, IRQ_CTRL).
    IgnoreWrites(usize),
}

fn faults() -> Vec<Fault> {
    let mut v = vec![Fault::SyncStall, Fault::QueueFull];
    v.extend((0..14).map(Fault::Illegal));
    for persistent in [false, true] {
        v.extend((0..14).map(|n| Fault::Abort(n, persistent)));
        v.extend((0..6).map(|n| Fault::AtcSync(n, persistent)));
    }
    v.push(Fault::MsiAbort);
    v.push(Fault::ServiceFailure);
    // EVENTQ_ABT_ERR, PRIQ_ABT_ERR, MSI_EVENTQ_ABT_ERR, MSI_PRIQ_ABT_ERR, MSI_GERROR_ABT_ERR.
    v.extend([2, 3, 5, 6, 7].map(|b| Fault::Gerror(1 << b)));
    v.push(Fault::EventOverflow);
    v.extend((1..=14).map(Fault::Alloc));
    v.push(Fault::Cr0AckStuck);
    v.push(Fault::GbpaStuck);
    // CMDQ_PROD, GERRORN, STRTAB_BASE, IRQ_CTRL.
    v.extend([0x98, 0x64, 0x80, 0x50].map(Fault::IgnoreWrites));
    v
}

fn s2(dirty: bool) -> DomainConfig {
    DomainConfig {
        stage: Stage::Second,
        dirty_tracking: dirty,
        ..DomainConfig::default()
    }
}

fn s1() -> DomainConfig {
    DomainConfig {
        stage: Stage::First,
        ..DomainConfig::default()
    }
}

/// The state a cell starts from.
struct Rig<'a> {
    mem: &'a Arena,
    model: &'a SmmuModel<'a>,
    unit: Option<Unit<'a>>,
    /// The previous owner, for `Takeover`.
    previous: Option<Unit<'a>>,
    d2: Option<DomainHandle>,
    d2b: Option<DomainHandle>,
    p2: Option<DomainHandle>,
    spare: Option<DomainHandle>,
    /// For `Flush` and `DirtyReadClear` (kept across the retry) and `Unmap`.
    gather: Gather,
    dirty_seen: StdCell<u32>,
    /// The domain `DomainAlloc` made.
    allocated: Option<DomainHandle>,
    /// Pages out before `Release`.
    release_pages: StdCell<usize>,
}

fn unit_config(fault: Fault) -> SmmuConfig {
    SmmuConfig {
        poll_budget: 200,
        sid_bits: Some(8),
        ssid_bits: Some(4),
        cmdq_log2: Some(if fault == Fault::QueueFull { 1 } else { 5 }),
        eventq_log2: Some(2),
        stream_table: StreamTableLayout::TwoLevel { split: 6 },
        sync: if fault == Fault::MsiAbort {
            SyncMode::Msi
        } else {
            SyncMode::PollCons
        },
        ..SmmuConfig::default()
    }
}

fn pa(model: &SmmuModel<'_>, sid: u32, ssid: Option<u32>, iova: u64) -> Option<u64> {
    model
        .translate(sid, ssid, iova, Access::READ)
        .ok()
        .map(|t| t.pa)
}

impl<'a> Rig<'a> {
    fn unit(&self) -> &Unit<'a> {
        self.unit.as_ref().expect("unit")
    }

    /// Builds the starting state of `op`: a unit enabled with a stage-2 domain (ATS, dirty
    /// tracking) on `SID_S2`, a stage-1 RID domain and a PASID domain on `SID_S1`, their
    /// translations cached by the model.
    fn new(mem: &'a Arena, model: &'a SmmuModel<'a>, op: Op, fault: Fault) -> Result<Self, String> {
        let e = |what: &'static str| move |err: Error| format!("setup {what}: {err:?}");
        let mut rig = Rig {
            mem,
            model,
            unit: None,
            previous: None,
            d2: None,
            d2b: None,
            p2: None,
            spare: None,
            gather: Gather::new(),
            dirty_seen: StdCell::new(0),
            allocated: None,
            release_pages: StdCell::new(0),
        };
        let cfg = unit_config(fault);
        let build = || SmmuUnit::new(model, mem, cfg).map_err(|x| format!("new: {x:?}"));
        if op == Op::Enable {
            rig.unit = Some(build()?);
            return Ok(rig);
        }
        let u = build()?;
        u.enable().map_err(|x| format!("enable: {x:?}"))?;
        u.set_ats(DeviceId(SID_S2), true).map_err(e("ats"))?;
        let d2 = u.domain_alloc(&s2(true)).map_err(e("d2"))?;
        u.map(d2, Iova::new(IOVA), PhysAddr::new(PA_D2), 4 * K4, RW)
            .map_err(e("map d2"))?;
        u.attach(DeviceId(SID_S2), None, d2)
            .map_err(e("attach d2"))?;
        let d1 = u.domain_alloc(&s1()).map_err(e("d1"))?;
        u.map(d1, Iova::new(IOVA), PhysAddr::new(PA_D1), K4, RW)
            .map_err(e("map d1"))?;
        u.attach(DeviceId(SID_S1), None, d1)
            .map_err(e("attach d1"))?;
        let p1 = u.domain_alloc(&s1()).map_err(e("p1"))?;
        u.map(p1, Iova::new(IOVA), PhysAddr::new(PA_P1), K4, RW)
            .map_err(e("map p1"))?;
        u.attach(DeviceId(SID_S1), Pasid::new(1), p1)
            .map_err(e("attach p1"))?;
        // A domain used and left, so that its tag may be in the TLB when it is freed.
        let spare = u.domain_alloc(&s2(false)).map_err(e("spare"))?;
        u.map(spare, Iova::new(IOVA), PhysAddr::new(PA_D2B), K4, RW)
            .map_err(e("map spare"))?;
        u.attach(DeviceId(SID_SPARE), None, spare)
            .map_err(e("attach spare"))?;
        for (sid, ssid) in [
            (SID_S2, None),
            (SID_S1, None),
            (SID_S1, Some(1)),
            (SID_SPARE, None),
        ] {
            if pa(model, sid, ssid, IOVA).is_none() {
                return Err(format!("setup: {sid:#x}/{ssid:?} does not translate"));
            }
        }
        u.detach(DeviceId(SID_SPARE), None)
            .map_err(e("detach spare"))?;
        rig.d2 = Some(d2);
        rig.spare = Some(spare);
        match op {
            Op::Attach | Op::AttachAts => {
                if op == Op::AttachAts {
                    u.set_ats(DeviceId(SID_ATS), true).map_err(e("ats"))?;
                }
                let d2b = u.domain_alloc(&s2(false)).map_err(e("d2b"))?;
                u.map(d2b, Iova::new(IOVA), PhysAddr::new(PA_D2B), K4, RW)
                    .map_err(e("map d2b"))?;
                rig.d2b = Some(d2b);
            }
            Op::AttachNew => {
                // A stage-1 domain: the attach allocates a level-2 stream table and a CD table.
                let p2 = u.domain_alloc(&s1()).map_err(e("p2"))?;
                u.map(p2, Iova::new(IOVA), PhysAddr::new(PA_P2), K4, RW)
                    .map_err(e("map p2"))?;
                rig.p2 = Some(p2);
            }
            Op::AttachPasid => {
                let p2 = u.domain_alloc(&s1()).map_err(e("p2"))?;
                u.map(p2, Iova::new(IOVA), PhysAddr::new(PA_P2), K4, RW)
                    .map_err(e("map p2"))?;
                rig.p2 = Some(p2);
            }
            Op::Flush => {
                // The whole 2 MiB: the leaf table goes into the gather too.
                u.unmap(d2, Iova::new(IOVA), 1 << 21, &mut rig.gather)
                    .map_err(e("unmap"))?;
            }
            Op::DirtyReadClear => {
                model
                    .translate(SID_S2, None, IOVA + K4, Access::WRITE)
                    .map_err(|f| format!("setup DMA write: {f:?}"))?;
            }
            Op::DirtyOn => {
                // d2 tracks from its allocation: the write marks the leaf dirty and the TLB
                // caches it writable-dirty; `on` must clean it and drop that TLB entry.
                model
                    .translate(SID_S2, None, IOVA + K4, Access::WRITE)
                    .map_err(|f| format!("setup DMA write: {f:?}"))?;
                u.set_dirty_tracking(d2, false)
                    .map_err(e("dirty tracking off"))?;
            }
            _ => {}
        }
        if op == Op::Takeover {
            // The previous owner's state is whole before it is abandoned.
            rig.unit = Some(u);
            rig.invariants(true)
                .map_err(|x| format!("previous owner: {x}"))?;
            rig.previous = rig.unit.take();
            rig.unit = Some(build()?);
        } else {
            rig.unit = Some(u);
        }
        model.reset_stats();
        Ok(rig)
    }

    /// Runs `op` once.
    fn run(&mut self, op: Op) -> Result<(), Error> {
        let d2 = self.d2.unwrap_or(DomainHandle(0));
        match op {
            Op::Enable | Op::Takeover => self.unit().enable().map_err(Error::from),
            Op::DomainAlloc => {
                let d = self.unit().domain_alloc(&s2(false))?;
                self.allocated = Some(d);
                Ok(())
            }
            Op::DomainFree => self.unit().domain_free(self.spare.unwrap_or(d2)),
            Op::Attach => self
                .unit()
                .attach(DeviceId(SID_S2), None, self.d2b.unwrap_or(d2)),
            Op::AttachNew => self
                .unit()
                .attach(DeviceId(SID_NEW), None, self.p2.unwrap_or(d2)),
            Op::AttachAts => self
                .unit()
                .attach(DeviceId(SID_ATS), None, self.d2b.unwrap_or(d2)),
            Op::Detach => self.unit().detach(DeviceId(SID_S2), None),
            Op::AttachPasid => {
                self.unit()
                    .attach(DeviceId(SID_S1), Pasid::new(2), self.p2.unwrap_or(d2))
            }
            Op::DetachPasid => self.unit().detach(DeviceId(SID_S1), Pasid::new(1)),
            Op::Map => self.unit().map(
                d2,
                Iova::new(IOVA2),
                PhysAddr::new(PA_D2 + 0x20_0000),
                2 * K4,
                RW,
            ),
            Op::Unmap => {
                let mut g = std::mem::take(&mut self.gather);
                let r = self.unit().unmap(d2, Iova::new(IOVA), 4 * K4, &mut g);
                self.gather = g;
                r.map(|_| ())
            }
            Op::Flush => {
                let mut g = std::mem::take(&mut self.gather);
                let r = self.unit().flush(d2, &mut g);
                self.gather = g;
                r
            }
            Op::DirtyReadClear => {
                let mut g = std::mem::take(&mut self.gather);
                let seen = &self.dirty_seen;
                let r = self
                    .unit()
                    .read_and_clear_dirty(
                        d2,
                        Iova::new(IOVA),
                        4 * K4,
                        &mut |iova, _| {
                            if iova.get() == IOVA + K4 {
                                seen.set(seen.get() + 1);
                            }
                        },
                        &mut g,
                    )
                    .and_then(|()| self.unit().flush(d2, &mut g));
                self.gather = g;
                r
            }
            Op::DirtyOn => self.unit().set_dirty_tracking(d2, true),
            Op::DirtyOff => self.unit().set_dirty_tracking(d2, false),
            Op::Disable => self.unit().disable().map_err(Error::from),
            Op::Release => {
                self.release_pages.set(self.mem.stats().live_pages);
                let r = self.unit().disable().map_err(Error::from);
                self.unit = None;
                r
            }
        }
    }

    /// The whole effect of a successful `op`.
    fn effect(&self, op: Op) -> Result<(), String> {
        let m = self.model;
        let want = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(format!("Ok without its effect: {what}"))
            }
        };
        match op {
            Op::Enable => want("enabled", self.unit().is_enabled()),
            Op::Takeover => {
                want("enabled", self.unit().is_enabled())?;
                want(
                    "the previous owner's streams abort",
                    pa(m, SID_S2, None, IOVA).is_none(),
                )
            }
            Op::DomainAlloc => want(
                "a usable domain",
                self.allocated
                    .is_some_and(|d| self.unit().domain_geometry(d).is_ok()),
            ),
            Op::DomainFree => want(
                "the handle is gone",
                self.spare
                    .is_some_and(|d| self.unit().domain_geometry(d).is_err()),
            ),
            Op::Attach => want(
                "the stream translates through the new domain",
                pa(m, SID_S2, None, IOVA) == Some(PA_D2B),
            ),
            Op::AttachNew => want(
                "the new stream translates",
                pa(m, SID_NEW, None, IOVA) == Some(PA_P2),
            ),
            Op::AttachAts => {
                want(
                    "the stream translates through the domain",
                    pa(m, SID_ATS, None, IOVA) == Some(PA_D2B),
                )?;
                want(
                    "the stream's whole ATC invalidated after its STE, and synced",
                    whole_atc_invalidated_after_the_ste(&m.command_log(), SID_ATS),
                )
            }
            Op::Detach => want("the stream aborts", pa(m, SID_S2, None, IOVA).is_none()),
            Op::AttachPasid => want(
                "the PASID translates",
                pa(m, SID_S1, Some(2), IOVA) == Some(PA_P2),
            ),
            Op::DetachPasid => {
                want("the PASID aborts", pa(m, SID_S1, Some(1), IOVA).is_none())?;
                want(
                    "the RID domain still translates",
                    pa(m, SID_S1, None, IOVA) == Some(PA_D1),
                )
            }
            Op::Map => {
                let d2 = self.d2.ok_or("no d2")?;
                want(
                    "the new range is in the table",
                    self.unit().query(d2, Iova::new(IOVA2 + K4)).is_some(),
                )?;
                // A unit in service failure mode translates nothing (map does not read
                // GERROR; the next command wait or event handler finds the failure).
                want(
                    "the new range translates",
                    m.in_service_failure()
                        || pa(m, SID_S2, None, IOVA2 + K4) == Some(PA_D2 + 0x20_0000 + K4),
                )
            }
            Op::Unmap => want(
                "the range is gone from the table",
                self.d2
                    .is_some_and(|d| self.unit().query(d, Iova::new(IOVA)).is_none()),
            ),
            Op::Flush => {
                want("the gather released", self.gather.freed_pages() == 0)?;
                want("no stale translation", pa(m, SID_S2, None, IOVA).is_none())
            }
            Op::DirtyReadClear => {
                want("the dirty page reported", self.dirty_seen.get() >= 1)?;
                want("the gather released", self.gather.is_empty())
            }
            Op::DirtyOn => {
                want("no leaf dirty after on", self.dirty_of_d2()?.is_empty())?;
                // Through the TLB entry the setup cached writable-dirty: recorded only if
                // the call's invalidation dropped it.
                m.translate(SID_S2, None, IOVA + K4, Access::WRITE)
                    .map_err(|f| format!("DMA write: {f:?}"))?;
                want(
                    "a write after on recorded",
                    self.dirty_of_d2()? == [IOVA + K4],
                )
            }
            // Off keeps HD (`Domain::set_dirty_tracking`): a write to a clean leaf is still
            // taken (no fault), and a leaf mapped from now on is written writable-dirty.
            // The new leaf goes into the table IOVA's are in: no allocation, whatever fault
            // is still armed. A unit in service failure mode (raised after the call, which
            // issued no command) translates and maps nothing until reset: nothing to check.
            Op::DirtyOff if m.in_service_failure() => Ok(()),
            Op::DirtyOff => {
                m.translate(SID_S2, None, IOVA, Access::WRITE)
                    .map_err(|f| format!("DMA write after off: {f:?}"))?;
                let (d2, new) = (self.d2.ok_or("no d2")?, IOVA + 8 * K4);
                self.unit()
                    .map(d2, Iova::new(new), PhysAddr::new(PA_D2B), K4, RW)
                    .map_err(|x| format!("map after off: {x:?}"))?;
                want(
                    "a leaf mapped after off is writable-dirty",
                    self.dirty_of_d2()?.contains(&new),
                )
            }
            Op::Disable => want("disabled", !self.unit().is_enabled()),
            // Disabled and dropped: translation off with GBPA.ABORT (the default
            // `DisabledTraffic::Abort`), so every stream aborts, none passes untranslated. The
            // drop gives back the stream table, CD tables and queues (domain page tables stay:
            // `SmmuUnit`'s `Drop` documents that the domains are to be freed first).
            Op::Release => {
                want(
                    "a stream still translates or passes through",
                    [(SID_S2, IOVA), (SID_S1, IOVA), (SID_S2, PA_D2)]
                        .iter()
                        .all(|&(sid, iova)| pa(self.model, sid, None, iova).is_none()),
                )?;
                let (before, after) = (self.release_pages.get(), self.mem.stats().live_pages);
                want("structures not returned", after < before)
            }
        }
    }

    /// The dirty IOVAs of d2 in `[IOVA, IOVA2 + K4)`, `D` kept.
    fn dirty_of_d2(&self) -> Result<Vec<u64>, String> {
        let d2 = self.d2.ok_or("no d2")?;
        let mut seen = Vec::new();
        self.unit()
            .read_dirty(
                d2,
                Iova::new(IOVA),
                IOVA2 + K4 - IOVA,
                DirtyRead::NoClear,
                &mut |i, _| seen.push(i.get()),
                &mut Gather::new(),
            )
            .map_err(|x| format!("read_dirty: {x:?}"))?;
        Ok(seen)
    }

    /// The invariants that hold after every call, whatever it returned.
    fn invariants(&self, settled: bool) -> Result<(), String> {
        let reach = self.model.reachable();
        let live = self.mem.live_pages();
        for &(addr, what) in &reach.structures {
            let in_live = live
                .iter()
                .any(|&(p, log2)| addr >= p.get() && addr - p.get() < 1 << log2);
            if !in_live {
                return Err(format!(
                    "{what} at {addr:#x} reachable by the SMMU but freed"
                ));
            }
        }
        let bad = self.mem.bad_frees();
        if !bad.is_empty() {
            return Err(format!("bad frees: {bad:?}"));
        }
        let Some(u) = self.unit.as_ref() else {
            return Ok(());
        };
        // Tags matter once this unit translates: before its enable sets SMMUEN, it invalidates
        // every TLB entry (a previous owner's included).
        let (vmids, asids) = u.tags_in_use();
        for &(vmid, asid) in reach.tags.iter().filter(|_| u.is_enabled()) {
            let ok = match asid {
                None => vmids.is_used(vmid),
                Some(a) => asids.is_used(a) && (vmid == 0 || vmids.is_used(vmid)),
            };
            if !ok {
                return Err(format!(
                    "the TLB holds entries of VMID {vmid} / ASID {asid:?}, free in the unit"
                ));
            }
        }
        let report = u.audit().map_err(|e| format!("audit: {e}"))?;
        if settled && (report.unsettled, report.owing) != (0, 0) {
            return Err(format!(
                "after success {} stream(s) unsettled, {} domain(s) owing an invalidation",
                report.unsettled, report.owing
            ));
        }
        Ok(())
    }
}

/// What a call may change, read before and after it: what the structures in memory translate
/// (the model's walk with empty caches, so a stale TLB entry cannot hide a change), what the
/// books map in every domain, which domains live, the audit's counts (streams, unsettled ones,
/// live STEs and CDs, domains, domains owing an invalidation and their pages), the pages the
/// allocator has out, whether the unit is on and whether it failed.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    translations: Vec<Option<u64>>,
    mapped: Vec<Option<u64>>,
    domains: Vec<DomainHandle>,
    audit: Option<AuditReport>,
    pages: usize,
    enabled: bool,
    failed: bool,
}

/// The probes: (StreamID, SubstreamID) x IOVA.
const PROBE_STREAMS: [(u32, Option<u32>); 7] = [
    (SID_S2, None),
    (SID_S1, None),
    (SID_S1, Some(1)),
    (SID_S1, Some(2)),
    (SID_SPARE, None),
    (SID_NEW, None),
    (SID_ATS, None),
];
const PROBE_IOVAS: [u64; 3] = [IOVA, IOVA + K4, IOVA2 + K4];

impl Snapshot {
    fn take(rig: &Rig<'_>) -> Self {
        let mut translations = Vec::new();
        for (sid, ssid) in PROBE_STREAMS {
            for iova in PROBE_IOVAS {
                translations.push(rig.model.translate_in_memory(sid, ssid, iova, Access::READ));
            }
        }
        let (mut mapped, mut domains) = (Vec::new(), Vec::new());
        if let Some(u) = rig.unit.as_ref() {
            let all = [rig.d2, rig.d2b, rig.p2, rig.spare, rig.allocated];
            for d in all.into_iter().flatten() {
                if u.domain_geometry(d).is_ok() {
                    domains.push(d);
                    for iova in PROBE_IOVAS {
                        mapped.push(u.query(d, Iova::new(iova)).map(|m| m.pa.get()));
                    }
                }
            }
        }
        Snapshot {
            translations,
            mapped,
            domains,
            audit: rig.unit.as_ref().and_then(|u| u.audit().ok()),
            pages: rig.mem.stats().live_pages,
            enabled: rig.unit.as_ref().is_some_and(|u| u.is_enabled()),
            failed: rig.unit.as_ref().is_some_and(|u| u.has_failed()),
        }
    }

    /// The translations of every stream but `sid`.
    fn others(&self, sid: u32) -> Vec<Option<u64>> {
        let n = PROBE_IOVAS.len();
        let mut v = Vec::new();
        for (i, &(s, _)) in PROBE_STREAMS.iter().enumerate() {
            if s != sid {
                v.extend_from_slice(&self.translations[i * n..(i + 1) * n]);
            }
        }
        v
    }
}

/// After a failed `op`: no effect (`after == before`), or exactly the partial state the
/// documentation names for it (README, "Errors: what to do"; ARCHITECTURE.md, "Faults and
/// error paths"), which the retry then completes. Returns the name of the state found.
fn partial_state(op: Op, before: &Snapshot, after: &Snapshot) -> Result<&'static str, String> {
    if after == before {
        return Ok("no effect");
    }
    let fail = |what: &str| {
        Err(format!(
            "neither no effect nor the documented partial state ({what}):\n  before \
             {before:?}\n  after  {after:?}"
        ))
    };
    let same_books = after.mapped == before.mapped && after.domains == before.domains;
    // Service failure mode: the unit turned itself off and refuses every call until it is
    // reset; nothing translates; the books are as the failed command left them (a stream
    // may be unsettled), which `enable` after the reset reprograms.
    if after.failed && !before.failed {
        let off = same_books
            && !after.enabled
            && after.translations.iter().all(Option::is_none)
            && after.pages >= before.pages;
        return if off {
            Ok("service failure: unit off")
        } else {
            fail("service failure")
        };
    }
    // A unit dropped while CR0ACK does not say it stopped: every page it may still walk
    // (tables, queues, domains) is leaked on purpose, so what memory translates is unchanged.
    if op == Op::Release && after.audit.is_none() {
        let leaked = after.translations == before.translations && after.pages == before.pages;
        return if leaked {
            Ok("dropped while on: all leaked")
        } else {
            fail("all leaked")
        };
    }
    let (Some(ab), Some(aa)) = (before.audit, after.audit) else {
        // `enable` on a unit that had no queues yet, `release`: the audit needs the unit.
        return if same_books && after.pages >= before.pages {
            Ok("stopped part-way")
        } else {
            fail("stopped part-way")
        };
    };
    // A stream whose attach or detach failed after the books changed: unsettled, its STE
    // and CDs anywhere between the old and the new state; no other stream moved; the
    // structures it allocated (level-2 stream table, CD table) stay.
    let unsettled = |sid: u32| {
        same_books
            && after.others(sid) == before.others(sid)
            && aa.unsettled == ab.unsettled + 1
            && aa.owing == ab.owing
            && after.pages >= before.pages
            && after.enabled == before.enabled
    };
    let state = match op {
        // Stopped at a control register that did not answer: the unit is left off with its
        // tables; `enable` again completes it.
        Op::Enable | Op::Takeover | Op::Disable | Op::Release
            if same_books && after.pages >= before.pages =>
        {
            "stopped part-way"
        }
        Op::Attach | Op::Detach if unsettled(SID_S2) => "stream unsettled",
        Op::AttachNew if unsettled(SID_NEW) => "stream unsettled",
        // The STE may allow ATS already; the whole-ATC invalidation is owed (the retry, or
        // the next detach, issues it).
        Op::AttachAts if unsettled(SID_ATS) => "stream unsettled",
        Op::AttachPasid | Op::DetachPasid if unsettled(SID_S1) => "stream unsettled",
        // The gather keeps its pages; the domain owes a whole-tag invalidation.
        Op::Flush | Op::DirtyReadClear | Op::DirtyOn
            if same_books
                && after.translations == before.translations
                && aa.owing == ab.owing + 1
                && aa.owed_pages == ab.owed_pages
                && after.pages == before.pages =>
        {
            "whole-tag invalidation owed"
        }
        _ => return fail("none documented"),
    };
    Ok(state)
}

/// Whether `log` holds, after the last CFGI_STE of `sid`, a CMD_ATC_INV of `sid`'s whole ATC
/// (no SubstreamID, Size 52 from 0) and then a CMD_SYNC.
fn whole_atc_invalidated_after_the_ste(log: &[[u64; 2]], sid: u32) -> bool {
    let is = |w: &[u64; 2], o: u8| w[0] & 0xff == u64::from(o);
    let of = |w: &[u64; 2], o: u8| is(w, o) && w[0] >> 32 == u64::from(sid);
    let Some(ste) = log.iter().rposition(|w| of(w, op::CFGI_STE)) else {
        return false;
    };
    let whole = |w: &[u64; 2]| of(w, op::ATC_INV) && w[0] & 1 << 11 == 0 && w[1] == 52;
    log[ste..]
        .iter()
        .position(whole)
        .is_some_and(|i| log[ste + i..].iter().any(|w| is(w, op::CMD_SYNC)))
}

fn inject(rig: &Rig<'_>, fault: Fault) {
    let m = rig.model;
    match fault {
        Fault::SyncStall | Fault::QueueFull => m.inject(Injection::SyncStall),
        Fault::Illegal(at) => m.inject(Injection::CommandIllegalAt { at }),
        Fault::Abort(at, persistent) => m.inject(Injection::CommandAbortAt {
            at,
            times: if persistent { u32::MAX } else { 1 },
        }),
        Fault::AtcSync(at, persistent) => m.inject(Injection::AtcInvSyncAt {
            at,
            times: if persistent { u32::MAX } else { 1 },
        }),
        Fault::MsiAbort => m.inject(Injection::SyncMsiAbort),
        Fault::ServiceFailure => m.inject(Injection::ServiceFailure),
        Fault::Gerror(bits) => m.inject(Injection::GlobalError(bits)),
        Fault::EventOverflow => {
            // Faulting DMAs from an attached stream: more events than the queue's 4 entries.
            for i in 0..16 {
                let _ = m.translate(SID_S1, None, IOVA_FAULT + i * K4, Access::READ);
            }
        }
        Fault::Alloc(n) => rig.mem.set_fail_policy(FailPolicy::Nth(n)),
        Fault::Cr0AckStuck => m.inject(Injection::Cr0AckStuck),
        Fault::GbpaStuck => m.inject(Injection::GbpaUpdateStuck),
        Fault::IgnoreWrites(offset) => m.inject(Injection::IgnoreWrites(offset)),
    }
}

/// Clears the fault and lets the unit recover as an embedder would: the interrupt handler
/// runs; a unit in service failure mode is reset, then enabled again.
fn recover(rig: &Rig<'_>) -> Result<(), String> {
    rig.mem.set_fail_policy(FailPolicy::Never);
    rig.model.clear_injections();
    if rig.model.in_service_failure() {
        rig.model.reset();
    }
    let Some(u) = rig.unit.as_ref() else {
        return Ok(());
    };
    u.handle_events(usize::MAX, |_| {});
    if u.has_failed() {
        u.enable()
            .map_err(|e| format!("enable after reset: {e:?}"))?;
    }
    Ok(())
}

/// After the queue overflowed: the drain reported it and acknowledged it (the next drain
/// reports no overflow), and events are recorded again.
fn event_overflow(
    model: &SmmuModel<'_>,
    u: &Unit<'_>,
    first: iommu_engine::smmuv3::eventq::DrainReport,
) -> Result<(), String> {
    if !first.overflowed {
        return Err(format!(
            "the event queue overflowed; the drain says {first:?}"
        ));
    }
    let before = model.stats().events_written;
    let _ = model.translate(SID_S1, None, IOVA_FAULT, Access::READ);
    let mut seen = 0;
    let again = u.handle_events(usize::MAX, |_| seen += 1).events;
    let written = model.stats().events_written - before;
    if again.overflowed || seen != written || written > 1 {
        return Err(format!(
            "after the acknowledged overflow: {again:?}, {seen} seen, {written} written"
        ));
    }
    OVERFLOWS.with(|n| n.set(n.get() + 1));
    Ok(())
}

thread_local! {
    /// Cells whose event queue overflowed and whose drain reported it.
    static OVERFLOWS: StdCell<u32> = const { StdCell::new(0) };
}

/// How a cell ended: `"ok"`, or the state a failed call left (its retry completed it).
fn run_cell(op: Op, fault: Fault) -> Result<&'static str, String> {
    let mem = Arena::new(ArenaConfig {
        capacity: 8 << 20,
        ..ArenaConfig::default()
    })
    .map_err(|e| format!("arena: {e:?}"))?;
    let model = SmmuModel::new(
        &mem,
        SmmuModelConfig::qemu_like()
            .with_ats(true)
            .with_msi(true)
            .with_httu(true, true)
            .with_ssid_bits(4)
            .with_two_level_strtab(true),
    );
    let mut rig = Rig::new(&mem, &model, op, fault)?;
    if op != Op::Takeover {
        rig.invariants(true)
            .map_err(|e| format!("after setup: {e}"))?;
    }
    let before = Snapshot::take(&rig);
    inject(&rig, fault);
    let lost = model.stats().events_lost;
    let fired_before = model.stats().injections_fired;
    let first = rig.run(op);
    let fired = model.stats().injections_fired > fired_before;
    // An embedder's interrupt handler sees the global errors.
    if let Some(u) = rig.unit.as_ref() {
        let report = u.handle_events(usize::MAX, |_| {});
        // After a takeover the queue is the new owner's: the previous one's overflow is not.
        if fault == Fault::EventOverflow && lost > 0 && op != Op::Takeover {
            event_overflow(&model, u, report.events)?;
        }
    }
    // A transient fetch abort: the command is fetched again. Not an ATC invalidation timeout,
    // even once: the CMD_SYNC run again completes without the invalidation (cmdq.rs).
    let transient = matches!(fault, Fault::Abort(_, false));
    let outcome = match first {
        Err(e) if transient => {
            return Err(format!(
                "a transient fault failed the call ({e:?}): the command is to be run again"
            ))
        }
        // An ATC invalidation timeout at one of the call's CMD_SYNCs, even once, fails it:
        // the CMD_SYNC run again completes without the invalidation.
        Ok(()) if fired && matches!(fault, Fault::AtcSync(_, false)) => {
            return Err("a CMD_SYNC that met CERROR_ATC_INV_SYNC was reported complete".into())
        }
        Ok(()) => {
            rig.effect(op)?;
            rig.invariants(true)?;
            recover(&rig)?;
            "ok"
        }
        Err(e) => {
            rig.invariants(false)
                .map_err(|x| format!("after {e:?}: {x}"))?;
            rig.mem.set_fail_policy(FailPolicy::Never);
            let state = partial_state(op, &before, &Snapshot::take(&rig))
                .map_err(|x| format!("after {e:?}: {x}"))?;
            recover(&rig)?;
            if op == Op::Release {
                return Ok(state);
            }
            rig.run(op)
                .map_err(|x| format!("failed with {e:?}, the retry failed with {x:?}"))?;
            rig.effect(op)
                .map_err(|x| format!("failed with {e:?}, then retried: {x}"))?;
            state
        }
    };
    rig.invariants(true)
        .map_err(|x| format!("after recovery: {x}"))?;
    // What an unmap left for a flush, flushed now: the stale translations go.
    if op == Op::Unmap {
        let d2 = rig.d2.ok_or("no d2")?;
        let mut g = std::mem::take(&mut rig.gather);
        rig.unit()
            .flush(d2, &mut g)
            .map_err(|e| format!("flush after unmap: {e:?}"))?;
        if pa(&model, SID_S2, None, IOVA).is_some() {
            return Err("stale translation after the unmap's flush".into());
        }
        rig.invariants(true)?;
    }
    drop(rig);
    if !mem.bad_frees().is_empty() {
        return Err(format!("bad frees at release: {:?}", mem.bad_frees()));
    }
    Ok(outcome)
}

#[test]
fn smmuv3_fault_matrix() {
    let faults = faults();
    let (mut ok, mut err, mut failures) = (0, 0, String::new());
    let mut states = std::collections::BTreeMap::<&str, usize>::new();
    for op in OPS {
        let mut row = String::new();
        for &fault in &faults {
            match run_cell(op, fault) {
                Ok("ok") => {
                    ok += 1;
                    row.push('.');
                }
                Ok(state) => {
                    err += 1;
                    *states.entry(state).or_default() += 1;
                    row.push('R');
                }
                Err(why) => {
                    row.push('X');
                    let _ = writeln!(failures, "{op:?} x {fault:?}: {why}");
                }
            }
        }
        // One line per operation: `.` Ok, `R` failed then retried (or released), `X` broken.
        println!("{:>15} {row}", format!("{op:?}"));
    }
    let cells = OPS.len() * faults.len();
    println!(
        "SMMUv3 fault matrix: {} operations x {} faults = {cells} cells; {ok} succeeded, {err} \
         failed and were retried or released",
        OPS.len(),
        faults.len()
    );
    println!("what the failed calls left: {states:?}");
    let overflows = OVERFLOWS.with(StdCell::get);
    println!("event queue overflows reported and acknowledged: {overflows}");
    assert!(failures.is_empty(), "cells that do not hold:\n{failures}");
    // Every operation that starts on an enabled unit and keeps it (all but Enable, Takeover
    // and Release).
    assert!(
        overflows as usize >= OPS.len() - 3,
        "{overflows} overflows checked"
    );
}
