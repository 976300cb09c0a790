//! The double-fault matrix: IOASID calls over two real unit models whose second unit fails
//! (the first fault: the last page allocation of the call, which belongs to the second
//! domain's table) and whose undo in the first unit then meets a second fault at each
//! command it issues (`census`: the undo's unmap flush and the reclaim after it, counted from
//! the models' logs in a run with the first fault only), in both orders (the VT-d domain first
//! or the SMMUv3 domain first). Unit 0 is a scalable-mode VT-d unit, unit 1 an SMMUv3; RID_A
//! and SID_A have ATS, so each flush also meets device-TLB descriptors / CMD_ATC_INV.
//!
//! After each pair (ARCHITECTURE.md, "IOASID layer", `map`):
//! - the call fails: with the first fault's refusal only if nothing is left mapped in any
//!   unit's tables in memory and nothing is owed, else with `InvalidationPending` naming the
//!   unit whose undo did not complete;
//! - every page still mapped in a unit's tables in memory is named by the IOASID's record
//!   (a later unmap or `UNMAP_ALL` reaches it);
//! - no page is back in the allocator while a unit can still reach it, through its registers,
//!   tables or caches (the models' reachability walks), no page was freed twice, the SMMUv3
//!   TLB holds no tag and the VT-d caches no DID the unit gave back;
//! - with both faults cleared, `UNMAP_ALL` succeeds, after which nothing translates in either
//!   unit (through the caches), the audits hold, the same call succeeds and reaches both
//!   units, and dropping the context leaves no domain and no bad free.
//!
//! Every second fault is checked to have fired (`injections_fired`), and the first to have
//! failed exactly one allocation. The census also asserts that the undo allocates nothing
//! (the failed allocation is the call's last attempt), so a second allocation failure has
//! no place in an undo; and that the failing second unit issued no command (everything the
//! call issues is the undo's).

use iommu_engine::ioasid::{
    DeviceHandle, DirectRegion, Error, IoasidCtx, IoasidFlags, IoasidId, UnitId, UNMAP_ALL,
};
use iommu_engine::iommu::{self, DeviceHints};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{self, IovaRange, Prot};
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
/// Bound with the direct region DIRECT, attached by `Call::AttachDirect`.
const RID_DIRECT: u32 = 0x58;
const DIRECT: (u64, u64) = (3 << 39, 2 * K4);
/// IOASID B's two pages (not contiguous in PA: two runs), copied into A at COPY_TO.
const B_MAPS: [(u64, u64, u64); 2] = [(0x1000, 0x6000_0000, K4), (0x2000, 0x6100_0000, K4)];
/// The copy's second run lands in the next 2 MiB: its own leaf tables to allocate, so a
/// failed allocation there undoes the first run in both domains.
const COPY_TO: u64 = (4 << 39) + M2 - K4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    VtdFirst,
    SmmuFirst,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    /// `map(TARGET)`.
    Map,
    /// `attach` of RID_DIRECT, whose direct region DIRECT is mapped into both domains.
    AttachDirect,
    /// `copy` of B's two pages (two runs) to COPY_TO.
    Copy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Second {
    None,
    Vtd(VtdFault),
    Smmu(SmmuFault),
}

/// What the first-fault run of a cell issued.
#[derive(Debug, Default)]
struct Census {
    /// VT-d descriptors, of which device-TLB ones, and wait descriptors.
    vtd_desc: u32,
    vtd_devtlb: u32,
    /// SMMUv3 commands, of which CMD_SYNCs.
    smmu_cmds: u32,
    smmu_syncs: u32,
    /// Page allocations the call attempted (the last one fails).
    allocs: u64,
}

struct Setup<'a> {
    ctx: IoasidCtx<'a, 'a, Arena>,
    io: IoasidId,
    b: IoasidId,
    direct: DeviceHandle,
}

fn setups() -> (VtdSetup, SmmuSetup) {
    let mut s = SmmuSetup::qemu(true);
    // 2^11 StreamIDs: the reachability walk reads every STE after every step.
    s.model = s.model.with_sid_bits(11).with_ats(true);
    s.unit.sid_bits = Some(11);
    let mut v = VtdSetup::scalable();
    v.model = v.model.with_dt(true);
    (v, s)
}

fn setup<'a>(r: &Rig<'a, '_>, order: Order) -> Setup<'a> {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let v = ctx.bind_with(vtd_dev(RID_A), true, ats).unwrap();
    let s = ctx.bind_with(smmu_dev(SID_A), true, ats).unwrap();
    let region = IovaRange {
        start: Iova::new(DIRECT.0),
        end: Iova::new(DIRECT.0 + DIRECT.1),
    };
    let region = DirectRegion::new(region, false).unwrap();
    let direct = ctx
        .bind_with_direct(vtd_dev(RID_DIRECT), true, None, &[region])
        .unwrap();
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    let attach = match order {
        Order::VtdFirst => [v, s],
        Order::SmmuFirst => [s, v],
    };
    for d in attach {
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
    // Warm both units' caches over the base mapping.
    assert!(r.vtd_read(RID_A, None, iova).is_some());
    assert!(r.smmu_read(SID_A, None, iova).is_some());
    r.vm.reset_stats();
    r.sm.reset_stats();
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
fn left_in_memory(r: &Rig<'_, '_>, (iova, len): (u64, u64)) -> Vec<(UnitId, u64)> {
    let mut left = Vec::new();
    for p in (iova..iova + len).step_by(K4 as usize) {
        if r.vm
            .translate_in_memory(RID_A as u16, None, p, Access::READ)
            .is_some()
        {
            left.push((VTD, p));
        }
        if r.sm
            .translate_in_memory(SID_A, None, p, Access::READ)
            .is_some()
        {
            left.push((SMMU, p));
        }
    }
    left
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
    Ok(())
}

fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Iommu(iommu::Error::NoMemory) | Error::PageTable(pgtable::Error::NoMemory)
    )
}

/// The page allocations `call`'s clean run makes.
fn allocations(order: Order, call: Call) -> u64 {
    let (v, s) = setups();
    with_rig(v, s, |r| {
        let s = setup(r, order);
        let a0 = r.arena.stats().allocs;
        run(&s, call).unwrap();
        r.drain();
        r.arena.stats().allocs - a0
    })
}

/// The run whose `allocs`-th allocation fails: what it issued, and that it holds the
/// documented state.
fn census(order: Order, call: Call, allocs: u64) -> Census {
    let (v, s) = setups();
    with_rig(v, s, |r| {
        let s = setup(r, order);
        r.vm.reset_stats();
        r.sm.reset_stats();
        r.arena.set_fail_policy(FailPolicy::Nth(allocs));
        let e = run(&s, call);
        r.arena.set_fail_policy(FailPolicy::Never);
        let e = e.expect_err("the first fault fails the call");
        assert!(is_refusal(&e), "{order:?} {call:?}: {e:?}");
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
            allocs,
        };
        // The map's second unit failed at its last allocation before issuing anything: what
        // the call issued is the first unit's undo.
        if call == Call::Map && allocs == allocations(order, call) {
            match order {
                Order::VtdFirst => assert_eq!(c.smmu_cmds, 0, "{order:?} {call:?}"),
                Order::SmmuFirst => assert_eq!(c.vtd_desc, 0, "{order:?} {call:?}"),
            }
        }
        assert_eq!(r.arena.stats().failed_allocs, 1);
        assert_eq!(left_in_memory(r, range(call)), []);
        assert_eq!(invariants(r), Ok(()));
        r.drain();
        c
    })
}

/// Every second fault the undo meets, from its census.
fn second_faults(c: &Census) -> Vec<Second> {
    let mut f = vec![Second::None];
    f.extend((1..=c.vtd_desc).map(|k| Second::Vtd(VtdFault::QueueErrorAt(k))));
    for k in 1..=c.vtd_devtlb {
        f.push(Second::Vtd(VtdFault::DeviceTlbTimeoutAt(k)));
        f.push(Second::Vtd(VtdFault::CompletionErrorAt(k)));
    }
    if c.vtd_desc > 0 {
        f.push(Second::Vtd(VtdFault::StallWaits));
    }
    for at in 0..c.smmu_cmds {
        f.push(Second::Smmu(SmmuFault::CommandIllegalAt { at }));
        for times in [1, u32::MAX] {
            f.push(Second::Smmu(SmmuFault::CommandAbortAt { at, times }));
        }
    }
    for at in 0..c.smmu_syncs {
        for times in [1, u32::MAX] {
            f.push(Second::Smmu(SmmuFault::AtcInvSyncAt { at, times }));
        }
    }
    if c.smmu_syncs > 0 {
        f.push(Second::Smmu(SmmuFault::SyncStall));
    }
    f
}

/// One cell: the first fault, the second, the documented state, recovery.
fn cell(order: Order, call: Call, c: &Census, second: Second) -> Result<String, String> {
    let (v, s) = setups();
    with_rig(v, s, |r| {
        let s = setup(r, order);
        r.arena.set_fail_policy(FailPolicy::Nth(c.allocs));
        match second {
            Second::None => {}
            Second::Vtd(f) => r.vm.inject(f),
            Second::Smmu(f) => r.sm.inject(f),
        }
        let e = run(&s, call);
        r.arena.set_fail_policy(FailPolicy::Never);
        let fired = r.vm.stats().injections_fired + r.sm.stats().injections_fired;
        if second != Second::None && fired == 0 {
            return Err("the second fault never fired".into());
        }
        if r.arena.stats().failed_allocs != 1 {
            return Err("the first fault did not fail one allocation".into());
        }
        let Err(e) = e else {
            return Err("the call succeeded".into());
        };
        let left = left_in_memory(r, range(call));
        let outcome = match &e {
            e if is_refusal(e) => {
                if !left.is_empty() {
                    return Err(format!("refusal {e:?} with {left:x?} still mapped"));
                }
                // The undo's flush completed on the unit the second fault met: it issued
                // the range's invalidation first, so a completion came after it.
                let completed = match second {
                    Second::None => 1,
                    Second::Vtd(_) => r.vm.stats().wait,
                    Second::Smmu(_) => r.sm.stats().syncs,
                };
                if completed == 0 {
                    return Err(format!("refusal {e:?}, but no flush of the undo completed"));
                }
                "refusal"
            }
            Error::InvalidationPending { unit, .. } => {
                let faulted = match second {
                    Second::Vtd(_) => Some(VTD),
                    Second::Smmu(_) => Some(SMMU),
                    Second::None => None,
                };
                if Some(*unit) != faulted {
                    return Err(format!("{e:?}: the second fault was {second:?}"));
                }
                "pending"
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
        let owing = [
            r.vtd
                .audit()
                .map_or((usize::MAX, 0), |a| (a.owing, a.owed_pages)),
            r.smmu
                .audit()
                .map_or((usize::MAX, 0), |a| (a.owing, a.owed_pages)),
        ];
        let outcome = match (outcome, owing) {
            ("refusal", [(0, _), (0, _)]) => "refusal",
            ("refusal", o) if o.iter().all(|&(n, pages)| n == 0 || pages > 0) => {
                "refusal, the reclaim's invalidation owed"
            }
            ("refusal", o) => {
                return Err(format!(
                    "refusal {e:?} with an invalidation owed, no table page: {o:?}"
                ))
            }
            (o, _) => o,
        };
        // Clear both faults: UNMAP_ALL reaches everything.
        r.vm.clear_injections();
        r.sm.clear_injections();
        s.ctx
            .unmap(s.io, Iova::ZERO, UNMAP_ALL)
            .map_err(|u| format!("{e:?}, then UNMAP_ALL: {u:?}"))?;
        let (iova, len) = range(call);
        for p in (iova..iova + len).step_by(K4 as usize).chain([BASE.0]) {
            if r.vtd_read(RID_A, None, p).is_some() || r.smmu_read(SID_A, None, p).is_some() {
                return Err(format!("{e:?}: {p:#x} translates after UNMAP_ALL"));
            }
        }
        s.ctx
            .audit(s.io)
            .map_err(|a| format!("{e:?}: audit after UNMAP_ALL {a:?}"))?;
        invariants(r).map_err(|m| format!("{e:?}, UNMAP_ALL: {m}"))?;
        // The call itself now succeeds.
        run(&s, call).map_err(|x| format!("{e:?}, retry: {x:?}"))?;
        if r.vtd_read(RID_A, None, iova).is_none() || r.smmu_read(SID_A, None, iova).is_none() {
            return Err(format!("{e:?}: the retry does not reach both units"));
        }
        s.ctx
            .audit(s.io)
            .map_err(|a| format!("{e:?}: audit {a:?}"))?;
        drop(s);
        r.drain();
        if (r.vtd_domains(), r.smmu_domains()) != (0, 0) {
            return Err(format!("{e:?}: domains left after the drop"));
        }
        invariants(r).map_err(|m| format!("{e:?}, drop: {m}"))?;
        Ok(outcome.to_string())
    })
}

#[test]
fn double_faults_in_undo_leave_the_documented_state() {
    let mut failures = Vec::new();
    let mut cells = 0;
    let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
    for call in [Call::Map, Call::AttachDirect, Call::Copy] {
        for order in [Order::VtdFirst, Order::SmmuFirst] {
            for k in 1..=allocations(order, call) {
                let c = census(order, call, k);
                for second in second_faults(&c) {
                    cells += 1;
                    match cell(order, call, &c, second) {
                        Ok(o) => *outcomes.entry(format!("{call:?} {o}")).or_default() += 1,
                        Err(m) => {
                            failures.push(format!("{call:?} {order:?} alloc {k} {second:?}: {m}"))
                        }
                    }
                }
            }
        }
    }
    println!("{cells} cells: {outcomes:#?}");
    assert!(
        failures.is_empty(),
        "{} of {cells} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
