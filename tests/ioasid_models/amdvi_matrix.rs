//! The IOASID fault matrix on an AMD-Vi unit (`amdvi::AmdViUnit` through its `Iommu` impl,
//! on `sim::amdvi::AmdViModel`), as `fault_matrix.rs` is for VT-d and SMMUv3: every `IoasidCtx`
//! call that reaches the unit, against every fault the model injects at every point the call's
//! clean run reaches (an illegal command, ILLEGAL_COMMAND_ERROR, or an unreadable one,
//! COMMAND_HARDWARE_ERROR, at each command; a COMPLETION_WAIT that never completes, at each
//! wait; an IOTLB invalidation of the ATS device timing out, at each one; the k-th page
//! allocation failing), one fresh rig per cell. Every cell checks that its fault fired
//! (`AmdViModelStats::injections_fired`, the arena's failed allocations).
//!
//! After every cell:
//! - `Ok` means the whole effect, checked by DMA through the model (its caches included, so a
//!   lost invalidation shows as a stale translation);
//! - `Err` means no effect, or exactly the partial state the IOASID layer documents for that
//!   call (ARCHITECTURE.md, "Faults and error paths"), read from a snapshot before and after
//!   (what the device table and page tables in memory translate for each device, with every
//!   cache ignored; what each IOASID's record maps; the attachments; the unit's domains; the
//!   allocator's pages); the same call, retried once the fault is cleared, succeeds with the
//!   whole effect;
//! - no page the unit can reach (latched device table, cached entries, page directory cache)
//!   is back with the allocator, and no cache holds a domain ID no live domain carries (a
//!   domain ID handed out again before its invalidation completed would show here);
//! - `IoasidCtx::audit` holds for every IOASID;
//! - dropping the context leaves no domain and leaks nothing, and no more pages live than the
//!   clean run's teardown left.

use std::cell::Cell as StdCell;

use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::{
    Attachment, DeviceHandle, DeviceLabel, Error, IoasidCtx, IoasidFlags, IoasidId, Leaked,
    PasidAllocator, Registry, UnitId,
};
use iommu_engine::iommu::{DeviceHints, DeviceId, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig, Injection};
use iommu_engine::sim::arena::FailPolicy;
use iommu_engine::sim::{Arena, ArenaConfig};

use crate::rig::{K4, M2};

type Unit<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 16>;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const AMD: UnitId = UnitId(0);
/// Attached to A; ATS, so its unmaps and detaches invalidate its IOTLB
/// (INVALIDATE_IOTLB_PAGES, which the IOTLB time-out meets).
const DEV_A: u32 = 0x20;
/// Bound, attached nowhere: `Op::Attach` attaches it to B.
const DEV_NEW: u32 = 0x28;
/// IOASID A: DEV_A attached.
const A_MAPS: [(u64, u64, u64); 3] = [
    (0x1000, 0x5000_0000, 2 * K4),
    (0x20_0000, 0x5100_0000, K4),
    (0x20_1000, 0x5100_1000, K4),
];
/// Mapped in A by `Op::Map`.
const A_NEW: (u64, u64, u64) = (0x40_0000, 0x5200_0000, 2 * K4);
/// IOASID B (nothing attached): two pages not contiguous, copied into A by `Op::Copy`.
const B_MAP: (u64, u64, u64) = (0x1000, 0x6000_0000, K4);
const B_MAP2: (u64, u64, u64) = (0x2000, 0x6100_0000, K4);
const COPY_TO: u64 = 0x60_0000;
/// What the snapshot reads for each device and record.
const PROBES: [u64; 7] = [
    0x1000,
    0x2000,
    0x20_0000,
    0x20_1000,
    0x40_0000,
    COPY_TO,
    COPY_TO + K4,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Attach,
    Replace,
    Detach,
    Map,
    Unmap,
    Copy,
    Reclaim,
    DropContext,
}

const OPS: [Op; 8] = [
    Op::Attach,
    Op::Replace,
    Op::Detach,
    Op::Map,
    Op::Unmap,
    Op::Copy,
    Op::Reclaim,
    Op::DropContext,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Unit(Injection),
    /// The k-th page allocation fails.
    Alloc(u64),
}

/// What the clean run used: commands, COMPLETION_WAITs and IOTLB invalidations among them,
/// page allocations.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    commands: u64,
    waits: u64,
    iotlb: u64,
    allocations: u64,
}

fn commands(m: &AmdViModel<'_>) -> (u64, u64, u64) {
    let s = m.stats();
    let all = s.completion_waits
        + s.invalidate_devtab
        + s.invalidate_pages_page
        + s.invalidate_pages_range
        + s.invalidate_pages_all
        + s.invalidate_iotlb
        + s.invalidate_interrupt_table
        + s.invalidate_all;
    (all, s.completion_waits, s.invalidate_iotlb)
}

/// Every fault at every point the clean run reached.
fn faults(c: Census) -> Vec<Fault> {
    let mut v = Vec::new();
    for n in 1..=c.commands as u32 {
        v.push(Fault::Unit(Injection::IllegalCommandAt(n)));
        v.push(Fault::Unit(Injection::CommandHardwareErrorAt(n)));
    }
    // A COMPLETION_WAIT that never completes at each wait of the clean run (and every wait
    // after it until the fault is cleared).
    for n in 1..=c.waits as u32 {
        v.push(Fault::Unit(Injection::StallWaitAt(n)));
    }
    if c.iotlb > 0 {
        v.push(Fault::Unit(Injection::IotlbTimeout));
    }
    v.extend((1..=c.allocations).map(Fault::Alloc));
    v
}

struct Rig<'a> {
    arena: &'a Arena,
    model: &'a AmdViModel<'a>,
    unit: &'a Unit<'a>,
    reg: &'a Registry<'a>,
}

fn with_rig<R>(f: impl FnOnce(&Rig<'_>) -> R) -> R {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 16 << 20,
    })
    .expect("arena");
    let model = AmdViModel::new(&arena, AmdViModelConfig::qemu_default());
    let unit: Unit<'_> = AmdViUnit::new(
        &model,
        &arena,
        AmdViConfig {
            poll_budget: 2_000,
            ..AmdViConfig::new()
        },
    )
    .expect("AMD-Vi unit");
    unit.enable().expect("enable");
    let pasids = PasidAllocator::new(20);
    let units: [&dyn Iommu; 1] = [&unit];
    let reg = Registry::new(&units, &pasids).expect("registry");
    let r = f(&Rig {
        arena: &arena,
        model: &model,
        unit: &unit,
        reg: &reg,
    });
    assert_eq!(
        arena.bad_frees(),
        [],
        "a page freed twice or never allocated"
    );
    r
}

fn dev(id: u32) -> DeviceLabel {
    DeviceLabel {
        unit: AMD,
        id: DeviceId(id),
    }
}

struct Cell<'r> {
    ctx: Option<IoasidCtx<'r, 'r, Arena>>,
    v: DeviceHandle,
    vnew: DeviceHandle,
    a: IoasidId,
    b: IoasidId,
    /// Attached to nothing, mapping nothing.
    c: IoasidId,
    /// Stranded devices the drop left.
    stranded: Vec<DeviceLabel>,
}

impl<'r> Cell<'r> {
    fn new(r: &Rig<'r>) -> Self {
        let ctx = IoasidCtx::new(r.reg, r.arena, 4);
        let ats = DeviceHints {
            ats: true,
            ..DeviceHints::default()
        };
        let v = ctx.bind_with(dev(DEV_A), true, ats).expect("setup bind");
        let vnew = ctx.bind(dev(DEV_NEW), true).expect("setup bind");
        let a = ctx.alloc(IoasidFlags::empty()).expect("setup alloc");
        let b = ctx.alloc(IoasidFlags::empty()).expect("setup alloc");
        let c = ctx.alloc(IoasidFlags::empty()).expect("setup alloc");
        for m in A_MAPS {
            ctx.map(a, Iova::new(m.0), PhysAddr::new(m.1), m.2, RW)
                .expect("setup map");
        }
        for m in [B_MAP, B_MAP2] {
            ctx.map(b, Iova::new(m.0), PhysAddr::new(m.1), m.2, RW)
                .expect("setup map");
        }
        ctx.attach(v, a).expect("setup attach");
        // Warm the caches: a lost invalidation then shows as a stale translation.
        for m in A_MAPS {
            r.model.dma(DEV_A as u16, m.0, false).expect("setup DMA");
        }
        Self {
            ctx: Some(ctx),
            v,
            vnew,
            a,
            b,
            c,
            stranded: Vec::new(),
        }
    }

    fn ctx(&self) -> &IoasidCtx<'r, 'r, Arena> {
        self.ctx.as_ref().expect("the context")
    }

    fn run(&mut self, r: &Rig<'_>, op: Op) -> Result<(), Error> {
        if op == Op::DropContext {
            drop(self.ctx.take());
            r.reg.stranded(|l| self.stranded.push(l));
            return Ok(());
        }
        let ctx = self.ctx();
        match op {
            Op::Attach => ctx.attach(self.vnew, self.b)?,
            Op::Replace => ctx.attach(self.v, self.b)?,
            Op::Detach => ctx.detach(self.v)?,
            Op::Map => ctx.map(
                self.a,
                Iova::new(A_NEW.0),
                PhysAddr::new(A_NEW.1),
                A_NEW.2,
                RW,
            )?,
            Op::Unmap => {
                ctx.unmap(self.a, Iova::new(0x20_0000), M2)?;
            }
            Op::Copy => ctx.copy(
                self.b,
                Iova::new(B_MAP.0),
                self.a,
                Iova::new(COPY_TO),
                2 * K4,
            )?,
            Op::Reclaim => {
                ctx.reclaim(self.a)?;
            }
            Op::DropContext => unreachable!(),
        }
        Ok(())
    }

    fn effect(&self, r: &Rig<'_>, op: Op) -> Result<(), String> {
        let dma = |d: u32, iova: u64| r.model.dma(d as u16, iova, false).ok().map(|t| t.pa);
        let want = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(format!("{op:?} succeeded but {what}"))
            }
        };
        if op == Op::DropContext {
            // A device whose detach the unit refused stays stranded, attached (documented).
            return want(
                "the device still translates",
                self.stranded.contains(&dev(DEV_A))
                    || A_MAPS.iter().all(|m| dma(DEV_A, m.0).is_none()),
            );
        }
        let ctx = self.ctx();
        match op {
            Op::Attach => want(
                "the device does not translate B",
                dma(DEV_NEW, B_MAP.0) == Some(B_MAP.1) && dma(DEV_NEW, B_MAP2.0) == Some(B_MAP2.1),
            ),
            Op::Replace => want(
                "the device does not translate B, or still translates A",
                dma(DEV_A, B_MAP.0) == Some(B_MAP.1) && dma(DEV_A, A_MAPS[1].0).is_none(),
            ),
            Op::Detach => want(
                "the device still translates",
                A_MAPS.iter().all(|m| dma(DEV_A, m.0).is_none()),
            ),
            Op::Map => want(
                "the device does not translate the new mapping",
                (0..A_NEW.2 / K4).all(|i| dma(DEV_A, A_NEW.0 + i * K4) == Some(A_NEW.1 + i * K4)),
            ),
            Op::Unmap => want(
                "the device still translates the unmapped range",
                A_MAPS[1..].iter().all(|m| {
                    dma(DEV_A, m.0).is_none() && ctx.translate(self.a, Iova::new(m.0)) == Ok(None)
                }) && dma(DEV_A, A_MAPS[0].0) == Some(A_MAPS[0].1),
            ),
            Op::Copy => want(
                "the device does not translate the copy",
                dma(DEV_A, COPY_TO) == Some(B_MAP.1) && dma(DEV_A, COPY_TO + K4) == Some(B_MAP2.1),
            ),
            Op::Reclaim => {
                r.model.clear_injections();
                let again = ctx.reclaim(self.a).map_err(|e| format!("{e:?}"))?;
                want("an empty table left behind", again == 0)
            }
            Op::DropContext => unreachable!(),
        }
    }

    fn invariants(&self, r: &Rig<'_>) -> Result<(), String> {
        let live = r.arena.live_pages();
        let is_live = |addr: u64| {
            live.iter()
                .any(|&(p, log2)| addr >= p.get() && addr - p.get() < 1 << log2)
        };
        if let Some(t) = r
            .model
            .reachable_tables()
            .into_iter()
            .find(|&a| !is_live(a))
        {
            return Err(format!("table {t:#x} reachable by the unit but freed"));
        }
        let bad = r.arena.bad_frees();
        if !bad.is_empty() {
            return Err(format!("bad frees: {bad:?}"));
        }
        // Domain IDs are the slot + 1 (`amdvi::unit`, ID 0 left to blocking entries).
        let live_ids: std::collections::BTreeSet<u16> =
            live_domains(r.unit).into_iter().map(|h| h.0 + 1).collect();
        if let Some(id) = r
            .model
            .cached_domain_ids()
            .into_iter()
            .find(|id| !live_ids.contains(id))
        {
            return Err(format!(
                "the caches hold domain ID {id}, owned by no domain"
            ));
        }
        if let Some(ctx) = self.ctx.as_ref() {
            for io in [self.a, self.b, self.c] {
                match ctx.audit(io) {
                    Ok(()) | Err(Error::NoSuchIoasid(_)) => {}
                    Err(e) => return Err(format!("IOASID {}: {e}", io.0)),
                }
            }
        }
        Ok(())
    }
}

fn live_domains(unit: &dyn Iommu) -> Vec<DomainHandle> {
    (0..16u16)
        .map(DomainHandle)
        .filter(|&h| unit.domain_geometry(h).is_ok())
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    /// What each device translates at each probe from memory alone.
    hw: Vec<Option<u64>>,
    /// What each IOASID's record maps at each probe.
    record: Vec<Option<u64>>,
    attachments: Vec<Option<Attachment>>,
    ioasids: Vec<bool>,
    domains: usize,
    pages: usize,
}

impl Snapshot {
    fn take(cell: &Cell<'_>, r: &Rig<'_>) -> Self {
        let mut hw = Vec::new();
        for d in [DEV_A, DEV_NEW] {
            for iova in PROBES {
                hw.push(r.model.translate_in_memory(d as u16, iova));
            }
        }
        let (mut record, mut attachments, mut ioasids) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(ctx) = cell.ctx.as_ref() {
            for io in [cell.a, cell.b, cell.c] {
                ioasids.push(ctx.flags(io).is_ok());
                for iova in PROBES {
                    let m = ctx.translate(io, Iova::new(iova));
                    record.push(m.ok().flatten().map(|m| m.pa.get()));
                }
            }
            for d in [cell.v, cell.vnew] {
                attachments.push(ctx.attachment(d, None).ok().flatten());
            }
        }
        Snapshot {
            hw,
            record,
            attachments,
            ioasids,
            domains: live_domains(r.unit).len(),
            pages: r.arena.live_pages().len(),
        }
    }
}

/// After a failed `op`: no effect, or the partial state the IOASID layer documents for it.
fn partial_state(
    cell: &Cell<'_>,
    op: Op,
    e: &Error,
    before: &Snapshot,
    after: &Snapshot,
) -> Result<&'static str, String> {
    if after == before {
        return Ok("no effect");
    }
    let unit_fault = matches!(e, Error::Iommu(i) if i.is_unit_fault());
    let pending = matches!(e, Error::InvalidationPending { .. });
    let n = PROBES.len();
    // DEV_A's probes and A's record probes.
    let hw_same_but = |skip: &dyn Fn(usize) -> bool| {
        after
            .hw
            .iter()
            .zip(&before.hw)
            .enumerate()
            .all(|(i, (x, y))| skip(i) || x == y)
    };
    let books_same = after.record == before.record
        && after.ioasids == before.ioasids
        && after.attachments == before.attachments;
    let state =
        match op {
            // The unit may have written the entry: the books say attached, unsettled, holding the
            // new IOASID (its domain built) and the old one.
            Op::Attach | Op::Replace
                if unit_fault
                    && after.record == before.record
                    && after.ioasids == before.ioasids
                    && {
                        let (k, old) = if op == Op::Attach {
                            (1, None)
                        } else {
                            (0, Some(cell.a))
                        };
                        after.attachments[k]
                            == Some(Attachment {
                                ioasid: cell.b,
                                unsettled: Some(old),
                            })
                            && after.attachments[1 - k] == before.attachments[1 - k]
                    }
                    && after.domains <= before.domains + 1
                    && after.pages >= before.pages =>
            {
                "attached, unit unsettled"
            }
            // A failed attach's new domain that could not be freed either: parked in the context.
            Op::Attach | Op::Replace
                if books_same
                    && after.hw == before.hw
                    && after.domains == before.domains + 1
                    && after.pages > before.pages =>
            {
                "failed attach's domain parked"
            }
            // A detach whose unit failed: the books unchanged; the device's entry may be blocked
            // already (its retry completes the detach).
            Op::Detach
                if unit_fault
                    && books_same
                    && hw_same_but(&|i| i < n)
                    && after.hw[..n]
                        .iter()
                        .all(|t| t.is_none() || before.hw.contains(t))
                    && after.domains == before.domains
                    && after.pages >= before.pages =>
            {
                "unit detach unsettled"
            }
            // Unmapped from the domain and the record; the invalidation owed, its pages kept.
            Op::Unmap
                if pending
                    && after.ioasids == before.ioasids
                    && after.attachments == before.attachments
                    && hw_same_but(&|i| i == 2 || i == 3)
                    && after.hw[2].is_none()
                    && after.hw[3].is_none()
                    && after.record.iter().zip(&before.record).enumerate().all(
                        |(i, (x, y))| {
                            if i == 2 || i == 3 {
                                x.is_none()
                            } else {
                                x == y
                            }
                        },
                    )
                    && after.domains == before.domains
                    && after.pages <= before.pages =>
            {
                "unmapped, invalidation pending"
            }
            // Nothing mapped (rolled back), the rollback's invalidation owed or not; the tables the
            // map linked stay, empty.
            Op::Map | Op::Copy
                if (pending || op == Op::Copy)
                    && books_same
                    && after.hw == before.hw
                    && after.domains == before.domains
                    && after.pages >= before.pages =>
            {
                if pending {
                    "nothing mapped, invalidation pending"
                } else {
                    "nothing copied, empty tables linked"
                }
            }
            // The empty tables unlinked; the unit keeps their pages until the invalidation.
            Op::Reclaim
                if books_same
                    && after.hw == before.hw
                    && after.domains == before.domains
                    && after.pages <= before.pages =>
            {
                "empty tables unlinked, invalidation owed"
            }
            _ => {
                return Err(format!(
                    "neither no effect nor a documented partial state:\n  before {before:?}\n  \
                 after  {after:?}"
                ))
            }
        };
    Ok(state)
}

struct Outcome {
    retried: Option<&'static str>,
    census: Census,
    live_after: usize,
}

fn run_cell(op: Op, fault: Fault, clean_live: Option<usize>) -> Result<Outcome, String> {
    with_rig(|r| {
        let mut cell = Cell::new(r);
        if op == Op::Reclaim {
            // The last leaves of A's table at 0x20_0000 go: the table stays linked, empty.
            cell.ctx()
                .unmap(cell.a, Iova::new(0x20_0000), 2 * K4)
                .map_err(|e| format!("setup unmap: {e:?}"))?;
        }
        cell.invariants(r)
            .map_err(|e| format!("after setup: {e}"))?;
        let before = Snapshot::take(&cell, r);
        let (cmds, allocs) = (commands(r.model), r.arena.stats().allocs);
        let fired_before = r.model.stats().injections_fired + r.arena.stats().failed_allocs;
        match fault {
            Fault::None => {}
            Fault::Unit(i) => r.model.inject(i),
            Fault::Alloc(k) => r.arena.set_fail_policy(FailPolicy::Nth(k)),
        }
        let first = cell.run(r, op);
        let fired = r.model.stats().injections_fired + r.arena.stats().failed_allocs > fired_before;
        let now = commands(r.model);
        let census = Census {
            commands: now.0 - cmds.0,
            waits: now.1 - cmds.1,
            iotlb: now.2 - cmds.2,
            allocations: r.arena.stats().allocs - allocs,
        };
        if fault != Fault::None && !fired {
            return Err(format!(
                "the fault never fired (the call returned {first:?})"
            ));
        }
        r.arena.set_fail_policy(FailPolicy::Never);
        let retried = match first {
            Ok(()) => {
                cell.effect(r, op)?;
                cell.invariants(r)?;
                r.model.clear_injections();
                None
            }
            Err(e) => {
                cell.invariants(r)
                    .map_err(|x| format!("after {e:?}: {x}"))?;
                let state = partial_state(&cell, op, &e, &before, &Snapshot::take(&cell, r))
                    .map_err(|x| format!("after {e:?}: {x}"))?;
                r.model.clear_injections();
                cell.run(r, op)
                    .map_err(|x| format!("failed with {e:?}, the retry failed with {x:?}"))?;
                cell.effect(r, op)
                    .map_err(|x| format!("failed with {e:?}, then retried: {x}"))?;
                Some(state)
            }
        };
        // A device the drop stranded: the embedder detaches it on the unit (the documented
        // recovery), then lets it be bound again.
        let stranded_domains = !cell.stranded.is_empty();
        for l in std::mem::take(&mut cell.stranded) {
            let _ = r.unit.detach(l.id, None);
            if !r.reg.release_stranded(l) {
                return Err(format!("{l:?} reported stranded, not releasable"));
            }
        }
        cell.invariants(r)
            .map_err(|x| format!("after recovery: {x}"))?;
        drop(cell.ctx.take());
        let leaked = r.reg.leaked();
        if op != Op::DropContext && leaked != Leaked::default() {
            return Err(format!("the teardown leaked {leaked:?}"));
        }
        if !stranded_domains && leaked.domains == 0 && !live_domains(r.unit).is_empty() {
            return Err(format!(
                "domains left after teardown: {:?}",
                live_domains(r.unit)
            ));
        }
        cell.invariants(r)
            .map_err(|x| format!("after teardown: {x}"))?;
        let live_after = r.arena.live_pages().len();
        if let Some(clean) = clean_live.filter(|_| leaked == Leaked::default()) {
            if live_after > clean {
                return Err(format!(
                    "{} page(s) more than the clean run's teardown left",
                    live_after - clean
                ));
            }
        }
        Ok(Outcome {
            retried,
            census,
            live_after,
        })
    })
}

#[test]
fn ioasid_fault_matrix_amdvi() {
    let (mut cells, mut ok, mut retried, mut failures) = (0, 0, 0, String::new());
    let mut states = std::collections::BTreeMap::<&str, usize>::new();
    let fired_cells = StdCell::new(0usize);
    for op in OPS {
        let mut row = String::new();
        let mut tally = |fault: Fault, r: &Result<Outcome, String>| {
            cells += 1;
            match r {
                Ok(Outcome {
                    retried: Some(s), ..
                }) => {
                    retried += 1;
                    *states.entry(s).or_default() += 1;
                    row.push('R');
                }
                Ok(_) => {
                    ok += 1;
                    row.push('.');
                }
                Err(why) => {
                    row.push('X');
                    failures.push_str(&format!("{op:?} x {fault:?}: {why}\n"));
                }
            }
        };
        let clean = run_cell(op, Fault::None, None);
        tally(Fault::None, &clean);
        let Ok(clean) = clean else { continue };
        for fault in faults(clean.census) {
            let r = run_cell(op, fault, Some(clean.live_after));
            if fault != Fault::None {
                fired_cells.set(fired_cells.get() + 1);
            }
            tally(fault, &r);
        }
        println!("{:>11} {:?} {row}", format!("{op:?}"), clean.census);
    }
    println!(
        "IOASID fault matrix on AMD-Vi: {} operations, {cells} cells; {ok} succeeded, {retried} \
         failed and were retried; {} faults, each fired",
        OPS.len(),
        fired_cells.get()
    );
    println!("what the failed calls left: {states:?}");
    assert!(failures.is_empty(), "cells that do not hold:\n{failures}");
}
