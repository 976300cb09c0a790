//! The IOASID fault matrix on an AMD-Vi unit (`amdvi::AmdViUnit` through its `Iommu` impl,
//! on `sim::amdvi::AmdViModel`), as `fault_matrix.rs` is for VT-d and SMMUv3: every `IoasidCtx`
//! call that reaches the unit, against every fault the model injects at every point the call's
//! clean run reaches (an illegal command, ILLEGAL_COMMAND_ERROR, or an unreadable one,
//! COMMAND_HARDWARE_ERROR, at each command; a COMPLETION_WAIT that never completes, at each
//! wait; an IOTLB invalidation of the ATS device timing out, at each one; the k-th page
//! allocation failing), one fresh rig per cell. Every cell checks that its fault fired
//! (`AmdViModelStats::injections_fired`, the arena's failed allocations).
//!
//! The PASID rows (`attach_pasid` of a device's first PASID, which builds its GCR3 table, and
//! of a second; `detach_pasid` of one of two and of the last, which frees the table) and the
//! dirty-tracking rows (`set_dirty_tracking` on and off, `read_and_clear_dirty`) run on a
//! model whose EFR has `GTSup` and `GIoSup` with 16-bit PASIDs and `HDSup`; their devices have ATS.
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

use iommu_engine::amdvi::unit::GCR3_DOMAIN_ID_BASE;
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::{
    Attachment, DeviceHandle, DeviceLabel, Error, IoasidCtx, IoasidFlags, IoasidId, Leaked,
    PasidAllocator, Registry, UnitId,
};
use iommu_engine::iommu::{DeviceHints, DeviceId, DomainHandle, Iommu, Pasid};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{DirtyRead, Gather, Prot};
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
/// The PASID device (ATS): its PASIDs translate IOASID P.
const DEV_PASID: u32 = 0x30;
/// IOASID P (`IoasidFlags::PASID`): what the PASIDs of DEV_PASID translate.
const P_MAP: (u64, u64, u64) = (0x1000, 0x5900_0000, K4);
/// IOASID P2 (`IoasidFlags::PASID`), where `Op::ReplacePasid` moves P1: the same IOVA, another
/// page.
const P2_MAP: (u64, u64, u64) = (0x1000, 0x5A00_0000, K4);
/// The dirty-tracking device (ATS), attached to IOASID D.
const DEV_DIRTY: u32 = 0x38;
/// IOASID D (`IoasidFlags::DIRTY_TRACKING`).
const D_MAP: (u64, u64, u64) = (0x1000, 0x5800_0000, 2 * K4);
/// What the dirty reads cover.
const DIRTY_LEN: u64 = 1 << 30;
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
    /// The first PASID of DEV_PASID: its GCR3 table built.
    AttachPasidFirst,
    /// A second PASID of DEV_PASID.
    AttachPasid,
    /// One of DEV_PASID's two PASIDs.
    DetachPasid,
    /// DEV_PASID's only PASID: its entry blocking, its GCR3 table freed.
    DetachPasidLast,
    /// DEV_PASID's PASID P1 moved from IOASID P to P2.
    ReplacePasid,
    /// On, after an earlier period of tracking left a page dirty.
    SetDirtyTracking,
    SetDirtyTrackingOff,
    /// After DEV_DIRTY wrote D's first page.
    ReadClearDirty,
}

const OPS: [Op; 16] = [
    Op::Attach,
    Op::Replace,
    Op::Detach,
    Op::Map,
    Op::Unmap,
    Op::Copy,
    Op::Reclaim,
    Op::DropContext,
    Op::AttachPasidFirst,
    Op::AttachPasid,
    Op::DetachPasid,
    Op::DetachPasidLast,
    Op::ReplacePasid,
    Op::SetDirtyTracking,
    Op::SetDirtyTrackingOff,
    Op::ReadClearDirty,
];

impl Op {
    fn is_pasid(self) -> bool {
        matches!(
            self,
            Op::AttachPasidFirst
                | Op::AttachPasid
                | Op::DetachPasid
                | Op::DetachPasidLast
                | Op::ReplacePasid
        )
    }

    fn is_dirty(self) -> bool {
        matches!(
            self,
            Op::SetDirtyTracking | Op::SetDirtyTrackingOff | Op::ReadClearDirty
        )
    }

    /// How many of DEV_PASID's PASIDs (P1, then P2) are attached when the call starts.
    fn pasids_before(self) -> usize {
        match self {
            Op::AttachPasid | Op::DetachPasidLast | Op::ReplacePasid => 1,
            Op::DetachPasid => 2,
            _ => 0,
        }
    }
}

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
    (s.total_commands(), s.completion_waits, s.invalidate_iotlb)
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

fn with_rig<R>(op: Op, f: impl FnOnce(&Rig<'_>) -> R) -> R {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 16 << 20,
    })
    .expect("arena");
    let cfg = if op.is_pasid() || op.is_dirty() {
        AmdViModelConfig::qemu_default()
            .with_pasids(16)
            .with_dirty_tracking()
    } else {
        AmdViModelConfig::qemu_default()
    };
    let model = AmdViModel::new(&arena, cfg);
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
    /// The PASID rows: DEV_PASID, IOASID P, the PASIDs P1 and P2.
    pasid: Option<(DeviceHandle, IoasidId, Pasid, Pasid)>,
    /// IOASID P2 (PASID rows).
    pio2: Option<IoasidId>,
    /// The dirty rows: DEV_DIRTY and IOASID D.
    dirty: Option<(DeviceHandle, IoasidId)>,
    /// The pages `read_and_clear_dirty` reported, over every attempt.
    dirty_seen: StdCell<u32>,
}

impl<'r> Cell<'r> {
    fn new(r: &Rig<'r>, op: Op) -> Self {
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
        let (mut pasid, mut pio2s) = (None, None);
        if op.is_pasid() {
            let vp = ctx
                .bind_with(dev(DEV_PASID), true, ats)
                .expect("setup bind");
            let pio = ctx.alloc(IoasidFlags::PASID).expect("setup alloc");
            ctx.map(pio, Iova::new(P_MAP.0), PhysAddr::new(P_MAP.1), P_MAP.2, RW)
                .expect("setup map");
            let pio2 = ctx.alloc(IoasidFlags::PASID).expect("setup alloc");
            ctx.map(
                pio2,
                Iova::new(P2_MAP.0),
                PhysAddr::new(P2_MAP.1),
                P2_MAP.2,
                RW,
            )
            .expect("setup map");
            pio2s = Some(pio2);
            let p1 = ctx.alloc_pasid().expect("setup PASID");
            let p2 = ctx.alloc_pasid().expect("setup PASID");
            for p in [p1, p2].into_iter().take(op.pasids_before()) {
                ctx.attach_pasid(vp, p, pio).expect("setup attach_pasid");
                // The IOTLB (tagged with the GCR3 table's DomainID and the PASID) and the ATC.
                r.model
                    .dma_pasid(DEV_PASID as u16, p.get(), P_MAP.0, false)
                    .expect("setup PASID DMA");
                r.model
                    .ats_translate(DEV_PASID as u16, Some(p.get()), P_MAP.0, false)
                    .expect("setup ATS translation");
            }
            pasid = Some((vp, pio, p1, p2));
        }
        let mut dirty = None;
        if op.is_dirty() {
            let vd = ctx
                .bind_with(dev(DEV_DIRTY), true, ats)
                .expect("setup bind");
            let d = ctx.alloc(IoasidFlags::DIRTY_TRACKING).expect("setup alloc");
            ctx.map(d, Iova::new(D_MAP.0), PhysAddr::new(D_MAP.1), D_MAP.2, RW)
                .expect("setup map");
            ctx.attach(vd, d).expect("setup attach");
            let write = |iova| {
                r.model
                    .dma(DEV_DIRTY as u16, iova, true)
                    .expect("setup write");
            };
            ctx.set_dirty_tracking(d, true).expect("setup tracking on");
            match op {
                Op::SetDirtyTracking => {
                    // A page left dirty by an earlier period: turning on cleans it. The read
                    // after `off` caches the entry without `HAD`.
                    write(D_MAP.0);
                    ctx.set_dirty_tracking(d, false)
                        .expect("setup tracking off");
                    r.model
                        .dma(DEV_DIRTY as u16, D_MAP.0, false)
                        .expect("setup read");
                }
                Op::SetDirtyTrackingOff => {
                    r.model
                        .dma(DEV_DIRTY as u16, D_MAP.0, false)
                        .expect("setup read");
                }
                // D set, the IOTLB entry cached dirty.
                _ => write(D_MAP.0),
            }
            dirty = Some((vd, d));
        }
        Self {
            ctx: Some(ctx),
            v,
            vnew,
            a,
            b,
            c,
            stranded: Vec::new(),
            pasid,
            pio2: pio2s,
            dirty,
            dirty_seen: StdCell::new(0),
        }
    }

    fn pasids(&self) -> (DeviceHandle, IoasidId, Pasid, Pasid) {
        self.pasid.expect("a PASID row")
    }

    fn dirty_ioasid(&self) -> IoasidId {
        self.dirty.expect("a dirty-tracking row").1
    }

    /// The dirty pages of D (a read with no fault armed, `clear` or not).
    fn dirty_pages(&self, r: &Rig<'_>) -> Result<u32, String> {
        r.model.clear_injections();
        let seen = StdCell::new(0u32);
        self.ctx()
            .read_and_clear_dirty(self.dirty_ioasid(), Iova::ZERO, DIRTY_LEN, &mut |_, _| {
                seen.set(seen.get() + 1)
            })
            .map_err(|e| format!("read_and_clear_dirty: {e:?}"))?;
        Ok(seen.get())
    }

    /// After a call that left tracking on and every page clean: nothing is dirty, and a write
    /// of DEV_DIRTY through the IOTLB entry the setup cached is reported (an entry cached
    /// without `HAD`, or cached dirty, would hide it).
    fn cleared_then_seen(&self, r: &Rig<'_>, op: Op) -> Result<(), String> {
        let n = self.dirty_pages(r)?;
        if n != 0 {
            return Err(format!("{op:?} left {n} page(s) dirty"));
        }
        r.model
            .dma(DEV_DIRTY as u16, D_MAP.0, true)
            .map_err(|e| format!("write: {e:?}"))?;
        match self.dirty_pages(r)? {
            1 => Ok(()),
            n => Err(format!(
                "{op:?} succeeded but a write after it reported {n} page(s)"
            )),
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
            Op::AttachPasidFirst => {
                let (vp, pio, p1, _) = self.pasids();
                ctx.attach_pasid(vp, p1, pio)?;
            }
            Op::AttachPasid => {
                let (vp, pio, _, p2) = self.pasids();
                ctx.attach_pasid(vp, p2, pio)?;
            }
            Op::DetachPasid => {
                let (vp, _, _, p2) = self.pasids();
                ctx.detach_pasid(vp, p2)?;
            }
            Op::DetachPasidLast => {
                let (vp, _, p1, _) = self.pasids();
                ctx.detach_pasid(vp, p1)?;
            }
            Op::ReplacePasid => {
                let (vp, _, p1, _) = self.pasids();
                ctx.attach_pasid(vp, p1, self.pio2.expect("P2"))?;
            }
            Op::SetDirtyTracking => ctx.set_dirty_tracking(self.dirty_ioasid(), true)?,
            Op::SetDirtyTrackingOff => ctx.set_dirty_tracking(self.dirty_ioasid(), false)?,
            Op::ReadClearDirty => {
                let seen = &self.dirty_seen;
                ctx.read_and_clear_dirty(
                    self.dirty_ioasid(),
                    Iova::ZERO,
                    DIRTY_LEN,
                    &mut |_, _| seen.set(seen.get() + 1),
                )?;
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
            Op::AttachPasidFirst | Op::AttachPasid => {
                let (_, _, p1, p2) = self.pasids();
                let attached = if op == Op::AttachPasid { 2 } else { 1 };
                want(
                    "a PASID does not translate P",
                    [p1, p2]
                        .iter()
                        .take(attached)
                        .all(|p| self.pasid_dma(r, *p) == Some(P_MAP.1)),
                )
            }
            Op::DetachPasid => {
                let (_, _, p1, p2) = self.pasids();
                want(
                    "the PASID or its ATC entry still translates, or the other does not",
                    self.pasid_gone(r, p2) && self.pasid_dma(r, p1) == Some(P_MAP.1),
                )
            }
            Op::ReplacePasid => {
                let (_, _, p1, _) = self.pasids();
                want(
                    "the PASID does not translate P2",
                    self.pasid_dma(r, p1) == Some(P2_MAP.1),
                )
            }
            Op::DetachPasidLast => {
                let (_, _, p1, _) = self.pasids();
                want(
                    "the PASID or its ATC entry still translates",
                    self.pasid_gone(r, p1) && dma(DEV_PASID, P_MAP.0).is_none(),
                )
            }
            Op::SetDirtyTracking => {
                want(
                    "tracking is off",
                    ctx.dirty_tracking(self.dirty_ioasid()) == Ok(true),
                )?;
                self.cleared_then_seen(r, op)
            }
            Op::SetDirtyTrackingOff => {
                let d = self.dirty_ioasid();
                want(
                    "tracking is on, or a read is not refused",
                    ctx.dirty_tracking(d) == Ok(false)
                        && ctx.read_and_clear_dirty(d, Iova::ZERO, K4, &mut |_, _| {})
                            == Err(Error::DirtyTrackingOff(d)),
                )?;
                // Off on the unit: a write sets nothing (seen once tracking is on again,
                // which cleans first: read the leaves through the unit instead).
                r.model
                    .dma(DEV_DIRTY as u16, D_MAP.0, true)
                    .map_err(|e| format!("write: {e:?}"))?;
                want(
                    "a write with tracking off set D",
                    !r.unit
                        .device_entry(DEV_DIRTY)
                        .is_some_and(|e| e.0[0] & (3 << 7) != 0)
                        && self.unit_dirty(r)? == 0,
                )
            }
            Op::ReadClearDirty => {
                want("the dirty page not reported", self.dirty_seen.get() >= 1)?;
                self.cleared_then_seen(r, op)
            }
            Op::DropContext => unreachable!(),
        }
    }

    /// After a failed PASID move, before its retry: the caller unmaps the page of the IOASID
    /// the PASID left. When that returns `Ok`, the PASID reaches nothing of the page, through
    /// the unit or the device's ATC (an unsettled attachment is covered by every flush).
    fn after_failure(&self, r: &Rig<'_>, op: Op) -> Result<(), String> {
        if op != Op::ReplacePasid {
            return Ok(());
        }
        let (_, pio, p1, _) = self.pasids();
        if self.ctx().unmap(pio, Iova::new(P_MAP.0), P_MAP.2).is_err() {
            return Ok(());
        }
        self.invariants(r)?;
        if self.pasid_dma(r, p1) == Some(P_MAP.1)
            || r.model
                .atc_translation(DEV_PASID as u16, Some(p1.get()), P_MAP.0)
                == Some(P_MAP.1)
        {
            return Err("the PASID still reaches the page unmapped from the IOASID it left".into());
        }
        Ok(())
    }

    /// What DEV_PASID's PASID `p` reads at P_MAP through the unit.
    fn pasid_dma(&self, r: &Rig<'_>, p: Pasid) -> Option<u64> {
        r.model
            .dma_pasid(DEV_PASID as u16, p.get(), P_MAP.0, false)
            .ok()
            .map(|t| t.pa)
    }

    /// PASID `p` translates nothing, through the unit or the device's ATC.
    fn pasid_gone(&self, r: &Rig<'_>, p: Pasid) -> bool {
        self.pasid_dma(r, p).is_none()
            && r.model
                .atc_translation(DEV_PASID as u16, Some(p.get()), P_MAP.0)
                .is_none()
    }

    /// D's dirty leaves in the unit's domain, read without cleaning (the IOASID layer refuses
    /// reads while tracking is off).
    fn unit_dirty(&self, r: &Rig<'_>) -> Result<usize, String> {
        let mut n = 0;
        for h in live_domains(r.unit) {
            let mut here = 0;
            // Domains built without dirty tracking refuse: they count nothing.
            if r.unit
                .read_dirty(
                    h,
                    Iova::ZERO,
                    DIRTY_LEN,
                    DirtyRead::NoClear,
                    &mut |_, _| here += 1,
                    &mut Gather::new(),
                )
                .is_ok()
            {
                n += here;
            }
        }
        Ok(n)
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
        // Domain IDs are the slot + 1 (`amdvi::unit`, ID 0 left to blocking entries); a
        // device's GCR3 table has its own (`GCR3_DOMAIN_ID_BASE` + the table's index: DEV_PASID's
        // is the first), the unit's until the detach of its last PASID completed, which the
        // context's books follow (a failed detach keeps the attachment).
        let mut live_ids: std::collections::BTreeSet<u16> =
            live_domains(r.unit).into_iter().map(|h| h.0 + 1).collect();
        if let (Some(ctx), Some((vp, _, p1, p2))) = (self.ctx.as_ref(), self.pasid) {
            if [p1, p2]
                .iter()
                .any(|&p| ctx.attachment(vp, Some(p)).ok().flatten().is_some())
            {
                live_ids.insert(GCR3_DOMAIN_ID_BASE);
            }
        }
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
            for io in self.ioasids() {
                match ctx.audit(io) {
                    Ok(()) | Err(Error::NoSuchIoasid(_)) => {}
                    Err(e) => return Err(format!("IOASID {}: {e}", io.0)),
                }
            }
        }
        Ok(())
    }
}

impl Cell<'_> {
    /// A, B, C, then P and D where the row has them.
    fn ioasids(&self) -> Vec<IoasidId> {
        let mut v = vec![self.a, self.b, self.c];
        v.extend(self.pasid.map(|p| p.1));
        v.extend(self.pio2);
        v.extend(self.dirty.map(|d| d.1));
        v
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
    /// What DEV_PASID's PASIDs P1 and P2 translate at P_MAP from memory alone.
    pasid_hw: Vec<Option<u64>>,
    /// The attachments of P1 and P2.
    pasid_attachments: Vec<Option<Attachment>>,
    /// D's dirty tracking.
    dirty: Option<bool>,
    /// `HAD` in DEV_DIRTY's device table entry (the unit's side of tracking).
    had: Option<bool>,
    domains: usize,
    pages: usize,
}

impl Snapshot {
    fn take(cell: &Cell<'_>, r: &Rig<'_>) -> Self {
        let mut hw = Vec::new();
        for d in [DEV_A, DEV_NEW, DEV_DIRTY, DEV_PASID] {
            for iova in PROBES {
                hw.push(r.model.translate_in_memory(d as u16, iova));
            }
        }
        let (mut pasid_hw, mut pasid_attachments, mut dirty) = (Vec::new(), Vec::new(), None);
        if let Some((vp, _, p1, p2)) = cell.pasid {
            for p in [p1, p2] {
                pasid_hw.push(r.model.translate_in_memory_pasid(
                    DEV_PASID as u16,
                    Some(p.get()),
                    P_MAP.0,
                ));
                if let Some(ctx) = cell.ctx.as_ref() {
                    pasid_attachments.push(ctx.attachment(vp, Some(p)).ok().flatten());
                }
            }
        }
        let (mut record, mut attachments, mut ioasids) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(ctx) = cell.ctx.as_ref() {
            if let Some((_, d)) = cell.dirty {
                dirty = ctx.dirty_tracking(d).ok();
            }
            for io in cell.ioasids() {
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
            pasid_hw,
            pasid_attachments,
            dirty,
            had: cell
                .dirty
                .and_then(|_| r.unit.device_entry(DEV_DIRTY))
                .map(|e| e.0[0] & (3 << 7) == 3 << 7),
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
        && after.attachments == before.attachments
        && after.pasid_attachments == before.pasid_attachments
        && after.dirty == before.dirty;
    // The PASID a PASID row attaches or detaches (its index in `pasid_attachments`).
    let pasid_k = match op {
        Op::AttachPasidFirst | Op::DetachPasidLast | Op::ReplacePasid => 0,
        _ => 1,
    };
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
            Op::Attach | Op::Replace | Op::AttachPasidFirst | Op::ReplacePasid
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
            // The unit may have written the GCR3 entry and the device's entry: the books say the
            // PASID attached, unsettled (from nothing, or from P), the IOASID's domain built if
            // needed.
            Op::AttachPasidFirst | Op::AttachPasid | Op::ReplacePasid
                if unit_fault
                    && after.record == before.record
                    && after.ioasids == before.ioasids
                    && after.attachments == before.attachments
                    && after.dirty == before.dirty
                    && after.hw == before.hw
                    && after.pasid_attachments.iter().enumerate().all(|(k, a)| {
                        if k == pasid_k {
                            *a == Some(if op == Op::ReplacePasid {
                                Attachment {
                                    ioasid: cell.pio2.expect("P2"),
                                    unsettled: Some(Some(cell.pasids().1)),
                                }
                            } else {
                                Attachment {
                                    ioasid: cell.pasids().1,
                                    unsettled: Some(None),
                                }
                            })
                        } else {
                            *a == before.pasid_attachments[k]
                        }
                    })
                    && after.domains <= before.domains + 1
                    && after.pages >= before.pages =>
            {
                "PASID attached, unit unsettled"
            }
            // A PASID detach whose unit failed: the books unchanged (the retry completes it);
            // the GCR3 entry may be cleared and the device's entry blocking already; the
            // GCR3 table kept.
            Op::DetachPasid | Op::DetachPasidLast
                if unit_fault
                    && books_same
                    && after.hw == before.hw
                    && after.pasid_hw.iter().enumerate().all(|(k, t)| {
                        *t == before.pasid_hw[k] || (k == pasid_k && t.is_none())
                    })
                    && after.domains == before.domains
                    && after.pages == before.pages =>
            {
                "unit PASID detach unsettled"
            }
            // A unit did not confirm the switch: tracking counts as off (reads refused) until
            // the retry; nothing else moved (the cleaned leaves' invalidation owed).
            Op::SetDirtyTracking | Op::SetDirtyTrackingOff
                if unit_fault
                    && after.dirty == Some(false)
                    && after.record == before.record
                    && after.ioasids == before.ioasids
                    && after.attachments == before.attachments
                    && after.pasid_attachments == before.pasid_attachments
                    && after.hw == before.hw
                    && after.domains == before.domains
                    && after.pages == before.pages =>
            {
                "dirty tracking off until retried"
            }
            // The dirty state read and cleaned; its invalidation owed.
            Op::ReadClearDirty
                if pending
                    && books_same
                    && after.hw == before.hw
                    && after.domains == before.domains
                    && after.pages == before.pages =>
            {
                "dirty state cleaned, invalidation pending"
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
    with_rig(op, |r| {
        let mut cell = Cell::new(r, op);
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
                cell.after_failure(r, op)
                    .map_err(|x| format!("after {e:?}: {x}"))?;
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
