//! The double-fault matrix: IOASID calls over two real unit models whose second unit fails
//! (the first fault: the k-th page allocation of the call, for every k of its clean run) and
//! whose undo then meets a second fault at each command it issues (`census`: the undo's unmap
//! flushes and the reclaim after them, counted from the models' logs and counters in a run
//! with the first fault only). The pairs, in both orders (which domain is the IOASID's
//! first): a scalable-mode VT-d unit and an SMMUv3 (`VTD_SMMU`), and an AMD-Vi unit with
//! either (`WITH_AMD`; the rig's unit 2, `NpCache` clear so that its maps issue no command).
//! Each unit's device (RID_A, SID_A, DEV_AMD) has ATS, so each flush also meets device-TLB
//! descriptors / CMD_ATC_INV / INVALIDATE_IOTLB_PAGES.
//!
//! Each second fault is armed alone, then, where both units' undos issue commands, in both
//! units at once (`double_faults`: a diagonal of the product, as many cells as the longer
//! list, each of its faults met once and the shorter list's repeating, so each of those meets
//! several of the other's; for `copy` also the diagonal with the second list reversed),
//! checked against the two cells of its faults alone: each unit's undo meets only its own
//! fault, so the call must name the first unit in domain order whose undo left an
//! invalidation pending alone, with every unit that owed alone still owing (`owed_by`), or
//! refuse with each unit owing what it owed alone (`Outcome::both`).
//!
//! After each cell (ARCHITECTURE.md, "IOASID layer", `map`):
//! - the call fails: with the first fault's refusal only if nothing is left mapped in any
//!   unit's tables in memory and each faulted unit completed a wait after its undo's
//!   invalidation, else with `InvalidationPending` naming a faulted unit, carrying an
//!   invalidation's failure (the undo's unmap never fails here);
//! - every page still mapped in a unit's tables in memory is named by the IOASID's record
//!   (a later unmap or `UNMAP_ALL` reaches it);
//! - no page is back in the allocator while a unit can still reach it, through its registers,
//!   tables or caches (the models' reachability walks), no page was freed twice, the SMMUv3
//!   TLB holds no tag and the VT-d and AMD-Vi caches no domain ID the unit gave back;
//! - with every fault cleared, `UNMAP_ALL` succeeds, after which nothing translates in either
//!   unit (through the caches and the AMD-Vi device's ATC), the audits hold, the same call
//!   succeeds and reaches both units, and dropping the context leaves no domain, no bad free,
//!   nothing in `Registry::leaked` and as many live pages as the clean run's teardown.
//!
//! `reclaim_after_an_undo_frees_no_cached_table` runs the map whose last allocation fails set
//! up warm (WARM: the tables above TARGET's leaf tables walked by the devices and left empty
//! in the walk caches), in all six orders: the reclaim after the undo then unlinks cached
//! tables in both units, so a page freed before that invalidation completed is reachable.
//!
//! Every second fault is checked to have fired (`injections_fired`), and the first to have
//! failed exactly one allocation. The census also asserts that the undo allocates nothing
//! (the failed allocation is the call's last attempt), so a second allocation failure has
//! no place in an undo; that a unit outside the pair issued nothing; and that the failing
//! second unit of a map issued no command (everything the call issues is the undo's).

use iommu_engine::amdvi::AmdViConfig;
use iommu_engine::ioasid::{
    DeviceHandle, DeviceLabel, DirectRegion, Error, IoasidCtx, IoasidFlags, IoasidId, Leaked,
    UnitId, UNMAP_ALL,
};
use iommu_engine::iommu::{self, DeviceHints, DeviceId, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{self, IovaRange, Prot};
use iommu_engine::sim::amdvi::{AmdViModelConfig, Injection as AmdFault};
use iommu_engine::sim::arena::FailPolicy;
use iommu_engine::sim::smmuv3::op;
use iommu_engine::sim::smmuv3::Injection as SmmuFault;
use iommu_engine::sim::vtd::Injection as VtdFault;
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::Arena;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
/// Mapped at setup: the tables of the first 512 GiB exist in both domains and the record.
const BASE: (u64, u64, u64) = (0x1000, 0x5000_0000, K4);
/// Where the call maps: a fresh 512 GiB region, so each of the record and both domains needs
/// new table pages (the second domain's last one is the first fault).
const TARGET: (u64, u64, u64) = (2 << 39, 0x5200_0000, 2 * K4);
/// Bound with the direct region DIRECT, attached by `Call::AttachDirect`: behind the VT-d
/// unit, or the AMD-Vi unit for the pairs without VT-d.
const RID_DIRECT: u32 = 0x58;
const DIRECT: (u64, u64) = (3 << 39, 2 * K4);
/// The ATS device behind the AMD-Vi unit.
const DEV_AMD: u32 = 0x20;
/// IOASID B's two pages (not contiguous in PA: two runs), copied into A at COPY_TO.
const B_MAPS: [(u64, u64, u64); 2] = [(0x1000, 0x6000_0000, K4), (0x2000, 0x6100_0000, K4)];
/// The copy's second run lands in the next 2 MiB: its own leaf tables to allocate, so a
/// failed allocation there undoes the first run in both domains.
const COPY_TO: u64 = (4 << 39) + M2 - K4;
/// With a warm setup (`reclaim_after_an_undo_frees_no_cached_table`), a page in TARGET's GiB
/// (another 2 MiB), mapped, read through both units and unmapped before the call: the tables
/// above TARGET's leaf table then exist, empty and in the units' walk caches (an unmap of
/// leaves keeps them there), so the map allocates only leaf tables and the reclaim after its
/// undo unlinks cached tables, whose pages must not go back to the allocator before that
/// reclaim's invalidation completed (the reachability walks read the caches).
const WARM: (u64, u64) = (TARGET.0 + 4 * M2, 0x5300_0000);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Vtd,
    Smmu,
    Amd,
}

/// Every kind, indexed by `Kind as usize`.
const ALL_KINDS: [Kind; 3] = [Kind::Vtd, Kind::Smmu, Kind::Amd];

impl Kind {
    fn unit(self) -> UnitId {
        match self {
            Kind::Vtd => VTD,
            Kind::Smmu => SMMU,
            Kind::Amd => AMD,
        }
    }
}

/// The units of the IOASID's domains, in the order they were attached (the order of its
/// domains: the first is undone first).
type Order = [Kind; 2];

/// The pairs of the first matrix (VT-d and SMMUv3) and of the AMD-Vi one.
const VTD_SMMU: [Order; 2] = [[Kind::Vtd, Kind::Smmu], [Kind::Smmu, Kind::Vtd]];
const WITH_AMD: [Order; 4] = [
    [Kind::Amd, Kind::Vtd],
    [Kind::Vtd, Kind::Amd],
    [Kind::Amd, Kind::Smmu],
    [Kind::Smmu, Kind::Amd],
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `map(TARGET)`.
    Map,
    /// `attach` of RID_DIRECT, whose direct region DIRECT is mapped into both domains.
    AttachDirect,
    /// `copy` of B's two pages (two runs) to COPY_TO.
    Copy,
}

const CALLS: [Call; 3] = [Call::Map, Call::AttachDirect, Call::Copy];

/// A second fault, armed in one unit's model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    Vtd(VtdFault),
    Smmu(SmmuFault),
    Amd(AmdFault),
}

impl Fault {
    fn kind(self) -> Kind {
        match self {
            Fault::Vtd(_) => Kind::Vtd,
            Fault::Smmu(_) => Kind::Smmu,
            Fault::Amd(_) => Kind::Amd,
        }
    }
}

/// The indices of the CMD_SYNCs of `log` that follow a CMD_ATC_INV issued since the previous
/// CMD_SYNC: the only ones at which the model reports CERROR_ATC_INV_SYNC.
fn atc_syncs(log: &[[u64; 2]]) -> Vec<u32> {
    let (mut v, mut i, mut atc) = (Vec::new(), 0u32, false);
    for c in log {
        if c[0] as u8 == op::ATC_INV {
            atc = true;
        } else if c[0] as u8 == op::CMD_SYNC {
            if atc {
                v.push(i);
            }
            (i, atc) = (i + 1, false);
        }
    }
    v
}

/// What the first-fault run of a cell issued.
#[derive(Debug, Default)]
struct Census {
    /// VT-d descriptors, of which device-TLB ones.
    vtd_desc: u32,
    vtd_devtlb: u32,
    /// SMMUv3 commands, of which CMD_SYNCs.
    smmu_cmds: u32,
    smmu_syncs: u32,
    /// The indices of the CMD_SYNCs that wait on a CMD_ATC_INV issued since the previous one:
    /// where CERROR_ATC_INV_SYNC can be reported.
    smmu_atc_syncs: Vec<u32>,
    /// AMD-Vi commands, of which COMPLETION_WAITs and INVALIDATE_IOTLB_PAGES.
    amd_cmds: u32,
    amd_waits: u32,
    amd_iotlb: u32,
    /// Page allocations the call attempted (the last one fails).
    allocs: u64,
    /// The pages live after the clean run's teardown (`clean`).
    clean_live: usize,
    /// Set up warm (WARM mapped, read and unmapped first).
    warm: bool,
}

impl Census {
    /// Commands the unit of `kind` issued.
    fn issued(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Vtd => self.vtd_desc,
            Kind::Smmu => self.smmu_cmds,
            Kind::Amd => self.amd_cmds,
        }
    }
}

struct Setup<'a> {
    ctx: IoasidCtx<'a, 'a, Arena>,
    io: IoasidId,
    b: IoasidId,
    direct: DeviceHandle,
}

/// Runs `f` on a rig with the units `order` needs (the AMD-Vi one only if it names it: the
/// rig's unit IDs do not change).
fn with_order<R>(order: Order, f: impl FnOnce(&Rig<'_, '_>) -> R) -> R {
    let mut s = SmmuSetup::qemu(true);
    // 2^11 StreamIDs: the reachability walk reads every STE after every step.
    s.model = s.model.with_sid_bits(11).with_ats(true);
    s.unit.sid_bits = Some(11);
    let mut v = VtdSetup::scalable();
    v.model = v.model.with_dt(true);
    if !order.contains(&Kind::Amd) {
        return with_rig(v, s, f);
    }
    // NpCache clear (real parts; QEMU sets it): no map of the unit issues a command, so
    // every command the call issues is its undo's, as on the other two units.
    let a = AmdSetup {
        model: AmdViModelConfig::qemu_default(),
        unit: AmdViConfig {
            poll_budget: 2_000,
            np_cache: false,
            ..AmdViConfig::new()
        },
    };
    with_rig_amd(v, s, a, f)
}

fn dev(kind: Kind, id: u32) -> DeviceLabel {
    DeviceLabel {
        unit: kind.unit(),
        id: DeviceId(id),
    }
}

/// The ATS device of each unit.
fn ats_dev(kind: Kind) -> DeviceLabel {
    match kind {
        Kind::Vtd => vtd_dev(RID_A),
        Kind::Smmu => smmu_dev(SID_A),
        Kind::Amd => dev(Kind::Amd, DEV_AMD),
    }
}

/// The unit RID_DIRECT is behind.
fn direct_kind(order: Order) -> Kind {
    if order.contains(&Kind::Vtd) {
        Kind::Vtd
    } else {
        Kind::Amd
    }
}

/// What a read by `kind`'s ATS device at `iova` reaches, through the unit's caches (and the
/// AMD-Vi device's ATC).
fn reaches(r: &Rig<'_, '_>, kind: Kind, iova: u64) -> bool {
    match kind {
        Kind::Vtd => r.vtd_read(RID_A, None, iova).is_some(),
        Kind::Smmu => r.smmu_read(SID_A, None, iova).is_some(),
        Kind::Amd => {
            let m = r.am.expect("AMD-Vi rig");
            m.atc_translation(DEV_AMD as u16, None, iova).is_some()
                || m.dma(DEV_AMD as u16, iova, false).is_ok()
        }
    }
}

/// What `kind`'s tables in memory translate at `iova` for its ATS device, caches ignored.
fn in_memory(r: &Rig<'_, '_>, kind: Kind, iova: u64) -> bool {
    match kind {
        Kind::Vtd => {
            r.vm.translate_in_memory(RID_A as u16, None, iova, Access::READ)
                .is_some()
        }
        Kind::Smmu => {
            r.sm.translate_in_memory(SID_A, None, iova, Access::READ)
                .is_some()
        }
        Kind::Amd => {
            r.am.expect("AMD-Vi rig")
                .translate_in_memory(DEV_AMD as u16, iova)
                .is_some()
        }
    }
}

fn reset_stats(r: &Rig<'_, '_>) {
    r.vm.reset_stats();
    r.sm.reset_stats();
}

fn setup<'a>(r: &Rig<'a, '_>, order: Order, warm: bool) -> Setup<'a> {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let devs = order.map(|k| ctx.bind_with(ats_dev(k), true, ats).unwrap());
    let region = IovaRange {
        start: Iova::new(DIRECT.0),
        end: Iova::new(DIRECT.0 + DIRECT.1),
    };
    let region = DirectRegion::new(region, false).unwrap();
    let direct = ctx
        .bind_with_direct(dev(direct_kind(order), RID_DIRECT), true, None, &[region])
        .unwrap();
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    for d in devs {
        ctx.attach(d, io).unwrap();
    }
    let (iova, pa, len) = BASE;
    ctx.map(io, Iova::new(iova), PhysAddr::new(pa), len, RW)
        .unwrap();
    let b = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    for (iova, pa, len) in B_MAPS {
        ctx.map(b, Iova::new(iova), PhysAddr::new(pa), len, RW)
            .unwrap();
    }
    if warm {
        let (w, pa) = WARM;
        ctx.map(io, Iova::new(w), PhysAddr::new(pa), K4, RW)
            .unwrap();
        for k in order {
            assert!(reaches(r, k, w), "{k:?}");
        }
        ctx.unmap(io, Iova::new(w), K4).unwrap();
    }
    // Warm both units' caches over the base mapping (and the AMD-Vi device's ATC).
    for k in order {
        assert!(reaches(r, k, iova), "{k:?}");
        if k == Kind::Amd {
            r.am.unwrap()
                .ats_translate(DEV_AMD as u16, None, iova, false)
                .unwrap();
        }
    }
    reset_stats(r);
    Setup { ctx, io, b, direct }
}

/// The range the call maps in both domains.
fn range(call: Call) -> (u64, u64) {
    match call {
        Call::Map => (TARGET.0, TARGET.2),
        Call::AttachDirect => DIRECT,
        Call::Copy => (COPY_TO, 2 * K4),
    }
}

fn run(s: &Setup<'_>, call: Call) -> Result<(), Error> {
    match call {
        Call::Map => {
            let (iova, pa, len) = TARGET;
            s.ctx.map(s.io, Iova::new(iova), PhysAddr::new(pa), len, RW)
        }
        Call::AttachDirect => s.ctx.attach(s.direct, s.io),
        Call::Copy => s.ctx.copy(
            s.b,
            Iova::new(B_MAPS[0].0),
            s.io,
            Iova::new(COPY_TO),
            2 * K4,
        ),
    }
}

/// The pages of `range` the units' tables in memory still translate (with caches ignored).
fn left_in_memory(r: &Rig<'_, '_>, order: Order, (iova, len): (u64, u64)) -> Vec<(UnitId, u64)> {
    let mut left = Vec::new();
    for p in (iova..iova + len).step_by(K4 as usize) {
        for k in order {
            if in_memory(r, k, p) {
                left.push((k.unit(), p));
            }
        }
    }
    left
}

/// The live domains of a unit (handles are small indices).
fn live_domains(unit: &dyn Iommu) -> impl Iterator<Item = DomainHandle> + '_ {
    (0..64u16)
        .map(DomainHandle)
        .filter(|&h| unit.domain_geometry(h).is_ok())
}

/// No page back in the allocator while a unit reaches it, no bad free, no tag the units gave
/// back still cached.
fn invariants(r: &Rig<'_, '_>) -> Result<(), String> {
    let reach = r.nothing_freed_is_reached(|_| false)?;
    let (vmids, _) = r.smmu.tags_in_use();
    for &(vmid, _) in &reach.tags {
        if !vmids.is_used(vmid) {
            return Err(format!(
                "the SMMUv3 TLB holds VMID {vmid}, free in the unit"
            ));
        }
    }
    let dids: std::collections::BTreeSet<u16> = (0..64u16)
        .filter_map(|h| r.vtd.domain_id(iommu::DomainHandle(h)))
        .map(|did| did.get())
        .collect();
    if let Some(did) =
        r.vm.cached_domain_ids()
            .into_iter()
            .find(|d| !dids.contains(d))
    {
        return Err(format!("VT-d caches hold DID {did}, owned by no domain"));
    }
    if let (Some(m), Some(u)) = (r.am, r.amd) {
        // Domain IDs are the slot + 1 (`amdvi::unit`).
        let ids: std::collections::BTreeSet<u16> = live_domains(u).map(|h| h.0 + 1).collect();
        if let Some(id) = m.cached_domain_ids().into_iter().find(|d| !ids.contains(d)) {
            return Err(format!(
                "AMD-Vi caches hold domain ID {id}, owned by no domain"
            ));
        }
    }
    Ok(())
}

fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Iommu(iommu::Error::NoMemory) | Error::PageTable(pgtable::Error::NoMemory)
    )
}

/// What `call`'s clean run does: the page allocations it makes, and the pages live once it,
/// an `UNMAP_ALL`, the call again and the context's drop are done (the unit structures the
/// devices keep: what every cell must end with).
fn clean(order: Order, call: Call, warm: bool) -> (u64, usize) {
    with_order(order, |r| {
        let s = setup(r, order, warm);
        let a0 = r.arena.stats().allocs;
        run(&s, call).unwrap();
        let allocs = r.arena.stats().allocs - a0;
        s.ctx.unmap(s.io, Iova::ZERO, UNMAP_ALL).unwrap();
        run(&s, call).unwrap();
        drop(s);
        r.drain();
        (allocs, r.live())
    })
}

/// AMD-Vi commands, COMPLETION_WAITs and INVALIDATE_IOTLB_PAGES the model executed.
fn amd_commands(r: &Rig<'_, '_>) -> (u32, u32, u32) {
    let Some(m) = r.am else {
        return (0, 0, 0);
    };
    let s = m.stats();
    (
        s.total_commands() as u32,
        s.completion_waits as u32,
        s.invalidate_iotlb as u32,
    )
}

/// The run whose `allocs`-th allocation fails: what it issued, and that it holds the
/// documented state.
fn census(
    order: Order,
    call: Call,
    allocs: u64,
    (all, clean_live): (u64, usize),
    warm: bool,
) -> Census {
    with_order(order, |r| {
        let s = setup(r, order, warm);
        reset_stats(r);
        let amd0 = amd_commands(r);
        r.arena.set_fail_policy(FailPolicy::Nth(allocs));
        let e = run(&s, call);
        r.arena.set_fail_policy(FailPolicy::Never);
        let e = e.expect_err("the first fault fails the call");
        assert!(is_refusal(&e), "{order:?} {call:?}: {e:?}");
        let amd = amd_commands(r);
        let c = Census {
            vtd_desc: r.vm.descriptor_log().len() as u32,
            vtd_devtlb: r
                .vm
                .descriptor_log()
                .iter()
                .filter(|d| d[0] & 0xf == 3 || d[0] & 0xf == 8)
                .count() as u32,
            smmu_cmds: r.sm.command_log().len() as u32,
            smmu_syncs: r
                .sm
                .command_log()
                .iter()
                .filter(|c| c[0] as u8 == op::CMD_SYNC)
                .count() as u32,
            smmu_atc_syncs: atc_syncs(&r.sm.command_log()),
            amd_cmds: amd.0 - amd0.0,
            amd_waits: amd.1 - amd0.1,
            amd_iotlb: amd.2 - amd0.2,
            allocs,
            clean_live,
            warm,
        };
        // The map's second unit failed at its last allocation before issuing anything: what
        // the call issued is the first unit's undo (set up warm, the second unit reclaims
        // WARM's tables too).
        if call == Call::Map && allocs == all && !warm {
            assert_eq!(c.issued(order[1]), 0, "{order:?} {call:?}");
        }
        // Units outside the IOASID issue nothing.
        for k in [Kind::Vtd, Kind::Smmu, Kind::Amd] {
            if !order.contains(&k) {
                assert_eq!(c.issued(k), 0, "{order:?} {call:?} {k:?}");
            }
        }
        assert_eq!(r.arena.stats().failed_allocs, 1);
        assert_eq!(left_in_memory(r, order, range(call)), []);
        assert_eq!(invariants(r), Ok(()));
        r.drain();
        c
    })
}

/// Every fault the undo meets in the unit of `kind`, from its census.
fn faults_of(kind: Kind, c: &Census) -> Vec<Fault> {
    let mut f = Vec::new();
    match kind {
        Kind::Vtd => {
            f.extend((1..=c.vtd_desc).map(|k| Fault::Vtd(VtdFault::QueueErrorAt(k))));
            for k in 1..=c.vtd_devtlb {
                f.push(Fault::Vtd(VtdFault::DeviceTlbTimeoutAt(k)));
                f.push(Fault::Vtd(VtdFault::CompletionErrorAt(k)));
            }
            if c.vtd_desc > 0 {
                f.push(Fault::Vtd(VtdFault::StallWaits));
            }
        }
        Kind::Smmu => {
            for at in 0..c.smmu_cmds {
                f.push(Fault::Smmu(SmmuFault::CommandIllegalAt { at }));
                for times in [1, u32::MAX] {
                    f.push(Fault::Smmu(SmmuFault::CommandAbortAt { at, times }));
                }
            }
            for &at in &c.smmu_atc_syncs {
                for times in [1, u32::MAX] {
                    f.push(Fault::Smmu(SmmuFault::AtcInvSyncAt { at, times }));
                }
            }
            if c.smmu_syncs > 0 {
                f.push(Fault::Smmu(SmmuFault::SyncStall));
            }
        }
        Kind::Amd => {
            for n in 1..=c.amd_cmds {
                f.push(Fault::Amd(AmdFault::IllegalCommandAt(n)));
                f.push(Fault::Amd(AmdFault::CommandHardwareErrorAt(n)));
            }
            f.extend((1..=c.amd_waits).map(|n| Fault::Amd(AmdFault::StallWaitAt(n))));
            if c.amd_iotlb > 0 {
                f.push(Fault::Amd(AmdFault::IotlbTimeout));
            }
        }
    }
    f
}

/// The cells of one census: no second fault, then each fault of each unit alone.
fn single_faults(order: Order, c: &Census) -> Vec<Vec<Fault>> {
    let mut cells = vec![Vec::new()];
    for k in order {
        cells.extend(faults_of(k, c).into_iter().map(|f| vec![f]));
    }
    cells
}

/// The cells of one census with a fault armed in both units at once, where both undos issue
/// commands: for i up to the longer list's length, the (i mod m)-th fault of the first unit's
/// list (m long) with the (i mod n)-th of the second's (n long), so that every fault of the
/// longer list is met once and the shorter list's faults repeat, each beside several of the
/// other's: a diagonal of the product (max(m, n) cells of its m * n),
/// not all of it. With `reversed` (the copy's), a second diagonal too, the second list read
/// backwards ((n - 1 - i mod n)-th), the cells of the first left out: a fault early in one
/// undo beside one late in the other, where the failed run's undo and the earlier runs' meet.
fn double_faults(order: Order, c: &Census, reversed: bool) -> Vec<Vec<Fault>> {
    let (a, b) = (faults_of(order[0], c), faults_of(order[1], c));
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let (m, n) = (a.len(), b.len());
    let mut cells: Vec<Vec<Fault>> = (0..m.max(n)).map(|i| vec![a[i % m], b[i % n]]).collect();
    if reversed {
        for i in 0..m.max(n) {
            let cell = vec![a[i % m], b[n - 1 - i % n]];
            if !cells.contains(&cell) {
                cells.push(cell);
            }
        }
    }
    cells
}

/// Wait descriptors / CMD_SYNCs / COMPLETION_WAITs the unit of `kind` completed.
fn completions(r: &Rig<'_, '_>, kind: Kind) -> u64 {
    match kind {
        Kind::Vtd => r.vm.stats().wait,
        Kind::Smmu => r.sm.stats().syncs,
        Kind::Amd => r.am.map_or(0, |m| m.stats().completion_waits),
    }
}

fn fired(r: &Rig<'_, '_>, kind: Kind) -> u64 {
    match kind {
        Kind::Vtd => r.vm.stats().injections_fired,
        Kind::Smmu => r.sm.stats().injections_fired,
        Kind::Amd => r.am.map_or(0, |m| m.stats().injections_fired),
    }
}

/// Whether the unit of `kind` owes an invalidation, and if so table pages kept for it: the
/// VT-d and SMMUv3 audits; the AMD-Vi unit has none, only the unflushed pages of its domains'
/// counts (so an AMD-Vi unit owing ranges alone is not seen).
fn owing(r: &Rig<'_, '_>, kind: Kind) -> (usize, usize) {
    match kind {
        Kind::Vtd => r
            .vtd
            .audit()
            .map_or((usize::MAX, 0), |a| (a.owing, a.owed_pages)),
        Kind::Smmu => r
            .smmu
            .audit()
            .map_or((usize::MAX, 0), |a| (a.owing, a.owed_pages)),
        Kind::Amd => {
            let u = r.amd.expect("AMD-Vi rig");
            let pages: usize = live_domains(u)
                .map(|h| u.table_pages(h).map_or(usize::MAX, |p| p.unflushed))
                .sum();
            (usize::from(pages > 0), pages)
        }
    }
}

/// Checks that each unit of `owe` owed an invalidation: a call that unmaps nothing (a page
/// BASE's tables hold, never mapped) settles what the IOASID's units owe first, so each of
/// them completes a wait, and a unit that owes nothing issues nothing for it.
fn owed_by(r: &Rig<'_, '_>, s: &Setup<'_>, owe: &[Kind]) -> Result<(), String> {
    if owe.is_empty() {
        return Ok(());
    }
    let done0 = ALL_KINDS.map(|k| completions(r, k));
    let unmapped = s.ctx.unmap(s.io, Iova::new(BASE.0 + K4), K4);
    if unmapped != Ok(0) {
        return Err(format!("the settling unmap: {unmapped:?}"));
    }
    match owe
        .iter()
        .find(|&&k| completions(r, k) == done0[k as usize])
    {
        Some(k) => Err(format!("{k:?} owed nothing (its cell alone was pending)")),
        None => Ok(()),
    }
}

fn clear_injections(r: &Rig<'_, '_>) {
    r.vm.clear_injections();
    r.sm.clear_injections();
    if let Some(m) = r.am {
        m.clear_injections();
    }
}

/// How a cell's call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// `InvalidationPending` naming this unit.
    Pending(UnitId),
    /// The first fault's refusal; whether each unit of the order owes the invalidation of the
    /// reclaim after the undo.
    Refusal([bool; 2]),
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Pending(_) => "pending",
            Outcome::Refusal([false, false]) => "refusal",
            Outcome::Refusal(_) => "refusal, the reclaim's invalidation owed",
        }
    }

    /// What a cell with `a` (in the first domain's unit) and `b` (in the second's) armed
    /// together must end with, from the cells with each alone: each unit's undo meets its own
    /// fault only (each counts its own unit's commands), so the first unit whose undo left an
    /// invalidation pending is named (`reachable` keeps the first), and with none, each unit
    /// owes what it owed alone. The undo names the first in the order it ran: `map`'s and an
    /// attach's in domain order; a copy's the failed run's own undo (domain order) before the
    /// earlier runs' (domain order). Here that is domain order too: the failed run's refusing
    /// unit wrote nothing, so only a unit before it in domain order can owe in that undo (with
    /// two units, the first) (`a_failed_copy_names_its_failed_runs_undo_before_the_earlier_runs`
    /// in `src/ioasid/tests.rs` plays a unit that wrote before failing, where they differ).
    fn both(a: Self, b: Self) -> Self {
        match (a, b) {
            (Outcome::Pending(u), _) | (Outcome::Refusal(_), Outcome::Pending(u)) => {
                Outcome::Pending(u)
            }
            (Outcome::Refusal([a, _]), Outcome::Refusal([_, b])) => Outcome::Refusal([a, b]),
        }
    }
}

/// One cell: the first fault, the second ones, the documented state, recovery; each unit of
/// `owe` must owe an invalidation after the call (its cell alone was `InvalidationPending`).
fn cell(
    order: Order,
    call: Call,
    c: &Census,
    second: &[Fault],
    owe: &[Kind],
) -> Result<Outcome, String> {
    with_order(order, |r| {
        let s = setup(r, order, c.warm);
        r.arena.set_fail_policy(FailPolicy::Nth(c.allocs));
        for &f in second {
            match f {
                Fault::Vtd(f) => r.vm.inject(f),
                Fault::Smmu(f) => r.sm.inject(f),
                Fault::Amd(f) => r.am.expect("AMD-Vi rig").inject(f),
            }
        }
        // Completions counted from the call's start: the AMD-Vi model's stats are never reset
        // (counted from the rig's start, its setup's waits passed the check whatever the undo
        // did), and the call issues no command before its fault (`with_order`: no unit's map
        // issues one), so each counted wait is one the undo or its reclaim issued after it.
        let done0 = ALL_KINDS.map(|k| completions(r, k));
        let e = run(&s, call);
        r.arena.set_fail_policy(FailPolicy::Never);
        let done = |k: Kind| completions(r, k) - done0[k as usize];
        for f in second {
            if fired(r, f.kind()) == 0 {
                return Err(format!("{f:?} never fired"));
            }
        }
        if r.arena.stats().failed_allocs != 1 {
            return Err("the first fault did not fail one allocation".into());
        }
        let Err(e) = e else {
            return Err("the call succeeded".into());
        };
        let left = left_in_memory(r, order, range(call));
        let outcome = match &e {
            e if is_refusal(e) => {
                if !left.is_empty() {
                    return Err(format!("refusal {e:?} with {left:x?} still mapped"));
                }
                // The undo's flush completed on each unit a second fault met: it issued the
                // range's invalidation first, so a completion came after it. Set up warm,
                // the second unit (its map refused, nothing to undo) issues only the
                // reclaim's invalidation: failed, it keeps the pages it unlinked.
                let reclaim_only = |k: Kind| c.warm && k == order[1] && owing(r, k).1 > 0;
                if let Some(f) = second
                    .iter()
                    .find(|f| done(f.kind()) == 0 && !reclaim_only(f.kind()))
                {
                    return Err(format!(
                        "refusal {e:?}, but no flush of the undo completed on {:?}",
                        f.kind()
                    ));
                }
                None
            }
            Error::InvalidationPending { unit, error } => {
                if !second.iter().any(|f| f.kind().unit() == *unit) {
                    return Err(format!("{e:?}: the second faults were {second:?}"));
                }
                // A flush's failure: the undo's unmap cannot fail here (`undo_left` unreached,
                // ARCHITECTURE.md "Which errors the undo's unmap can meet").
                if !error.is_unit_fault() {
                    return Err(format!("{e:?}: not an invalidation's failure"));
                }
                Some(*unit)
            }
            e => return Err(format!("unexpected {e:?}")),
        };
        for &(unit, p) in &left {
            if s.ctx.translate(s.io, Iova::new(p)).ok().flatten().is_none() {
                return Err(format!(
                    "{e:?}: {p:#x} still mapped in unit {} and not in the record",
                    unit.0
                ));
            }
        }
        invariants(r).map_err(|m| format!("{e:?}: {m}"))?;
        // A unit that owes an invalidation after a refusal owes the reclaim's, of the tables
        // the undo emptied (their pages kept): the undo's own completed first.
        let owing = order.map(|k| owing(r, k));
        let outcome = match outcome {
            Some(unit) => Outcome::Pending(unit),
            None if owing.iter().all(|&(n, pages)| n == 0 || pages > 0) => {
                Outcome::Refusal(owing.map(|(n, _)| n > 0))
            }
            None => {
                return Err(format!(
                    "refusal {e:?} with an invalidation owed, no table page: {owing:?}"
                ))
            }
        };
        // Clear every fault: UNMAP_ALL reaches everything.
        clear_injections(r);
        owed_by(r, &s, owe).map_err(|m| format!("{e:?}: {m}"))?;
        s.ctx
            .unmap(s.io, Iova::ZERO, UNMAP_ALL)
            .map_err(|u| format!("{e:?}, then UNMAP_ALL: {u:?}"))?;
        let (iova, len) = range(call);
        for p in (iova..iova + len).step_by(K4 as usize).chain([BASE.0]) {
            if let Some(k) = order.iter().find(|&&k| reaches(r, k, p)) {
                return Err(format!("{e:?}: {p:#x} translates in {k:?} after UNMAP_ALL"));
            }
        }
        s.ctx
            .audit(s.io)
            .map_err(|a| format!("{e:?}: audit after UNMAP_ALL {a:?}"))?;
        invariants(r).map_err(|m| format!("{e:?}, UNMAP_ALL: {m}"))?;
        // The call itself now succeeds.
        run(&s, call).map_err(|x| format!("{e:?}, retry: {x:?}"))?;
        if let Some(k) = order.iter().find(|&&k| !reaches(r, k, iova)) {
            return Err(format!("{e:?}: the retry does not reach {k:?}"));
        }
        s.ctx
            .audit(s.io)
            .map_err(|a| format!("{e:?}: audit {a:?}"))?;
        drop(s);
        r.drain();
        let mut units: Vec<&dyn Iommu> = vec![r.vtd, r.smmu];
        units.extend(r.amd.map(|u| u as &dyn Iommu));
        if units.iter().any(|u| live_domains(*u).next().is_some()) {
            return Err(format!("{e:?}: domains left after the drop"));
        }
        invariants(r).map_err(|m| format!("{e:?}, drop: {m}"))?;
        // Everything settled before the drop: nothing given up, nothing kept.
        let leaked = r.reg.leaked();
        if leaked != Leaked::default() {
            return Err(format!("{e:?}: the drop leaked {leaked:?}"));
        }
        if r.live() != c.clean_live {
            return Err(format!(
                "{e:?}: {} pages live after the drop, {} after the clean run's",
                r.live(),
                c.clean_live
            ));
        }
        Ok(outcome)
    })
}

/// Runs every cell of `orders` for every call and first fault: each second fault alone, then
/// the pairs of `double_faults`, each checked against the cells of its two faults alone
/// (`Outcome::both`); panics listing the cells that failed.
fn matrix(orders: &[Order], warm: bool) {
    let mut failures = Vec::new();
    let (mut singles, mut doubles) = (0, 0);
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    // Set up warm: the map whose last allocation fails only.
    let calls: &[Call] = if warm { &[Call::Map] } else { &CALLS };
    for &call in calls {
        for &order in orders {
            let clean = clean(order, call, warm);
            let first = if warm { clean.0 } else { 1 };
            for k in first..=clean.0 {
                let c = census(order, call, k, clean, warm);
                let mut alone: Vec<(Vec<Fault>, Outcome)> = Vec::new();
                for second in single_faults(order, &c) {
                    singles += 1;
                    match cell(order, call, &c, &second, &[]) {
                        Ok(o) => {
                            *outcomes
                                .entry(format!("{call:?} {}", o.label()))
                                .or_default() += 1;
                            alone.push((second, o));
                        }
                        Err(m) => {
                            failures.push(format!("{call:?} {order:?} alloc {k} {second:?}: {m}"))
                        }
                    }
                }
                for second in double_faults(order, &c, call == Call::Copy) {
                    doubles += 1;
                    let alone_with = |f: &[Fault]| alone.iter().find(|a| a.0 == f).map(|a| a.1);
                    let (expected, owe) = match (alone_with(&second[..1]), alone_with(&second[1..]))
                    {
                        // Each unit owed alone: both must owe together, not only the named.
                        (Some(a @ Outcome::Pending(_)), Some(b @ Outcome::Pending(_))) => {
                            (Outcome::both(a, b), &order[..])
                        }
                        (Some(a), Some(b)) => (Outcome::both(a, b), &[][..]),
                        // Already reported.
                        _ => continue,
                    };
                    match cell(order, call, &c, &second, owe) {
                        Ok(o) if o == expected => {
                            *outcomes
                                .entry(format!("{call:?} both: {}", o.label()))
                                .or_default() += 1;
                        }
                        Ok(o) => failures.push(format!(
                            "{call:?} {order:?} alloc {k} {second:?}: {o:?}, alone {expected:?}"
                        )),
                        Err(m) => {
                            failures.push(format!("{call:?} {order:?} alloc {k} {second:?}: {m}"))
                        }
                    }
                }
            }
        }
    }
    println!(
        "{orders:?}: {singles} cells with one second fault, {doubles} with two: {outcomes:#?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} cells failed:\n{}",
        failures.len(),
        singles + doubles,
        failures.join("\n")
    );
}

#[test]
fn double_faults_in_undo_leave_the_documented_state() {
    matrix(&VTD_SMMU, false);
}

#[test]
fn double_faults_in_undo_with_amdvi_leave_the_documented_state() {
    matrix(&WITH_AMD, false);
}

/// The map over tables a device walked (WARM), its last allocation failing, each second fault
/// of both units (the first unit's undo and reclaim, the second's reclaim), in all six orders:
/// the reclaim after the undo unlinks tables the units' walk caches hold, so a page freed
/// before its invalidation completed is seen.
#[test]
fn reclaim_after_an_undo_frees_no_cached_table() {
    let orders: Vec<Order> = VTD_SMMU.into_iter().chain(WITH_AMD).collect();
    matrix(&orders, true);
}
