//! The IOASID fault matrix (issue 14, "what must be true" 2): every public `IoasidCtx`
//! operation over both unit models against every fault the models can inject, one fresh rig
//! per cell. Unit 0 is a scalable-mode VT-d unit, unit 1 an SMMUv3; one IOASID spans both.
//!
//! After every cell:
//! - `Ok` means the whole effect happened, checked through the models' translations (which use
//!   their caches, so a lost invalidation shows as a stale translation);
//! - `Err` means no effect, or exactly the partial state the documentation names for that call
//!   (`partial_state`: a snapshot of what the tables in memory translate for each device, the
//!   records, IOASIDs, devices and PASIDs, the units' audit counts and domains, and the
//!   allocator's pages, before and after); the same call, retried once the fault is cleared,
//!   succeeds and has the whole effect;
//! - no page went back to the allocator while a unit can still reach it (the models' walks of
//!   their registers, tables and caches find only live pages);
//! - every IOASID's record agrees with every domain behind it (`IoasidCtx::audit` walks both),
//!   and each unit's books agree with its tables (`VtdUnit::audit`, `SmmuUnit::audit`); once
//!   the call succeeded, nothing is left half-way or owed;
//! - tearing the context down afterwards leaves no domain, leaks nothing and returns at least
//!   every page the same operation's clean run returned.
//!
//! `Op::AttachDirect` attaches a device bound with a direct region (RMRR-like) to the IOASID
//! both units serve: its region is mapped one-to-one in both domains before the unit attach,
//! and undone on every failure (a failed undo of a caching-mode map left two empty table pages
//! until the reclaim after a failed attach was added).
//!
//! `Op::DetachDirect` detaches a device whose direct region is mapped in that IOASID: the
//! region is unmapped from both domains and the record once the unit blocked the device; when
//! a unit does not confirm that unmap's invalidation (or the reclaim's after it), the device
//! is detached, the invalidation owed, and the detach retried settles it (before, the retry
//! failed with `NotAttached` and a failed reclaim was reported as success).
//!
//! I/O page faults (issue 17 item 8): `Op::RespondFault` / `Op::DispatchFaults` answer and
//! dispatch the VT-d page request queue's; `Op::RespondFaultSmmu` (SID_A's PRI group,
//! `CMD_PRI_RESP`), `Op::RespondStall` (SID_STALL's stalled write, `CMD_RESUME`) and
//! `Op::DispatchFaultsSmmu` (both queued, SID_B's group answered Invalid) do it on an SMMUv3
//! with a PRI queue and the stall model. A failed answer whose command was queued (every
//! injection here meets one) leaves the group gone from the context (the retry is
//! `NotOutstanding`, nothing unexpected reaches the device; one never queued stays owed:
//! `iopf_smmu.rs`); a stall whose
//! `CMD_RESUME` never ran stays held until its stream's detach terminates it: no cell may end
//! with a transaction still stalled after the teardown.
//!
//! RID_A and SID_A have ATS: every unmap, detach and replace of theirs invalidates the VT-d
//! device TLB (device-TLB descriptors, so ITE and ICE meet them) and the SMMUv3 ATC
//! (CMD_ATC_INV, whose CMD_SYNC CERROR_ATC_INV_SYNC meets). The VT-d model keeps a device TLB
//! (warmed in setup): an `Ok` must leave it without the translations the call removed. The
//! SMMUv3 model keeps none, so an `Ok` must have had a CMD_ATC_INV for SID_A consumed during
//! its last attempt (a retry reissues what the failed attempt lost).
//!
//! Faults: none; VT-d wait stall, IQE, ITE, ICE, ignored GCMD; SMMUv3 CERROR_ILL, CERROR_ABT
//! and CERROR_ATC_INV_SYNC at the first commands, sync stall, completion-MSI abort, service
//! failure, other GERROR bits, CR0ACK and GBPA stuck; the k-th page allocation failing, for
//! every k up to the number the operation's clean run makes; VT-d fault records and the
//! SMMUv3 event queue overflowed by faulting DMAs before the call (the drain after it must
//! report the overflow and acknowledge it, and the next fault be recorded and seen).
//!
//! A fault is run only where the operation's clean run reaches what it acts on (`reaches`, from
//! the census), and every cell checks that its fault met the call: the models count each
//! injection that took effect (`injections_fired`), the arena each failed allocation. A cell
//! whose fault never fires fails.

use std::cell::Cell as StdCell;
use std::fmt::Write as _;

use iommu_engine::ioasid::{
    dispatch_page_faults, Attachment, DeviceHandle, DeviceLabel, DirectRegion, DirtyReadFlags,
    Error, IoasidCtx, IoasidFlags, IoasidId, Leaked,
};
use iommu_engine::iommu::{DeviceHints, Iommu, Pasid};
use iommu_engine::iopf::{FaultError, FaultKind, QueuedFault, ResponseCode};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::{IovaRange, Prot};
use iommu_engine::sim::arena::FailPolicy;
use iommu_engine::sim::smmuv3::priq::{PriOutcome, PriRequest};
use iommu_engine::sim::smmuv3::Injection as SmmuFault;
use iommu_engine::sim::vtd::prq::{PageRequest, PageRequestOutcome};
use iommu_engine::sim::vtd::Injection as VtdFault;
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::Arena;
use iommu_engine::smmuv3::AuditReport as SmmuAudit;
use iommu_engine::vtd::AuditReport as VtdAudit;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
/// A VT-d device on a bus no other device uses: attaching it builds context structures.
const RID_NEW_BUS: u32 = 0x300;
/// Bound by `Op::Bind`.
const RID_BIND: u32 = 0x48;
/// An SMMUv3 device attached to IOASID D (dirty tracking).
const SID_DIRTY: u32 = 0x500;
/// A VT-d device attached to IOASID D (dirty tracking: SSADE, the model sets D).
const RID_DIRTY: u32 = 0x50;
/// IOASID D's mapping.
const D_MAP: (u64, u64, u64) = (0x1000, 0x5800_0000, 2 * K4);
/// IOASID A (snoop; RID_A and SID_A attached): three regions.
const A_MAPS: [(u64, u64, u64); 3] = [
    (0x1000, 0x5000_0000, 2 * K4),
    (0x20_0000, 0x5100_0000, K4),
    (0x20_1000, 0x5100_1000, K4),
];
/// Mapped in A by `Op::Map`.
const A_NEW: (u64, u64, u64) = (0x40_0000, 0x5200_0000, 2 * K4);
/// IOASID B (nothing attached).
const B_MAP: (u64, u64, u64) = (0x1000, 0x6000_0000, K4);
/// B's second page, not contiguous with B_MAP: `Op::Copy` copies both into A in two runs.
const B_MAP2: (u64, u64, u64) = (0x2000, 0x6100_0000, K4);
/// Where `Op::Copy` maps B's two pages in A.
const COPY_TO: u64 = 0x60_0000;
/// The page request group `Op::RespondFault` answers (RID_A's, queued at setup) and the one
/// `Op::DispatchFaults` finds from RID_NEW_BUS, which is bound but attached nowhere.
const PRG_OWNED: u16 = 3;
const PRG_UNOWNED: u16 = 4;
/// A platform device declared able to stall (`DeviceHints::stall`), attached to A for the
/// SMMUv3 fault rows: its write to FAULT_PAGE stalls (`Op::RespondStall` answers it,
/// `Op::DispatchFaultsSmmu` queues it).
const SID_STALL: u32 = 0x700;
/// Bound with a direct region (RMRR-like), attached to A by `Op::AttachDirect`.
const RID_DIRECT: u32 = 0x58;
/// Its direct region: mapped one-to-one in A (both units) by the attach.
const DIRECT: (u64, u64) = (0x80_0000, 2 * K4);
/// Bound with the direct region DIRECT2 (and, for `Op::DetachDirect`, attached to A at
/// setup); `Op::DetachDirect` detaches it.
const RID_DIRECT2: u32 = 0x60;
/// RID_DIRECT2's direct region: mapped one-to-one in A (both units) by its setup attach.
const DIRECT2: (u64, u64) = (0x90_0000, 2 * K4);
/// IOASID P (PASID; RID_A's PASID 1 attached).
const P_MAP: (u64, u64, u64) = (0x1000, 0x7000_0000, K4);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Bind,
    Unbind,
    AllocIoasid,
    FreeIoasid,
    AllocPasid,
    FreePasid,
    AttachVtd,
    AttachSmmu,
    Replace,
    DetachVtd,
    DetachSmmu,
    AttachPasidVtd,
    AttachPasidSmmu,
    DetachPasid,
    Map,
    Unmap,
    ReadClearDirty,
    AllocIova,
    FreeIova,
    AllowIncoherentDma,
    AttachDirect,
    DetachDirect,
    Reclaim,
    DropContext,
    ReplaceSmmu,
    Copy,
    SetDirtyTracking,
    SetDirtyTrackingOff,
    GetDirtyBitmap,
    ReadDirtyNoClear,
    SetHugePages,
    RespondFault,
    DispatchFaults,
    AttachNested,
    InvalidateUser,
    AttachNestedVtd,
    InvalidateUserVtd,
    /// `respond_fault` to SID_A's PRI group on the SMMUv3 (`CMD_PRI_RESP`).
    RespondFaultSmmu,
    /// `respond_fault` to SID_STALL's stalled write (`CMD_RESUME`).
    RespondStall,
    /// `dispatch_page_faults` on the SMMUv3: SID_A's PRI group and SID_STALL's stall are
    /// queued, SID_B's group (bound, attached nowhere) is answered Invalid.
    DispatchFaultsSmmu,
    /// `detach` of SID_STALL with its write stalled (filed by the unit, not dispatched): the
    /// STE aborts, then `CMD_STALL_TERM` ends the write.
    DetachStall,
}

/// The SMMUv3 I/O page fault rows (PRI queue and stalls: the rig's SMMUv3 has them).
const SMMU_FAULT_OPS: [Op; 4] = [
    Op::RespondFaultSmmu,
    Op::RespondStall,
    Op::DispatchFaultsSmmu,
    Op::DetachStall,
];

const OPS: [Op; 41] = [
    Op::Bind,
    Op::Unbind,
    Op::AllocIoasid,
    Op::FreeIoasid,
    Op::AllocPasid,
    Op::FreePasid,
    Op::AttachVtd,
    Op::AttachSmmu,
    Op::Replace,
    Op::DetachVtd,
    Op::DetachSmmu,
    Op::AttachPasidVtd,
    Op::AttachPasidSmmu,
    Op::DetachPasid,
    Op::Map,
    Op::Unmap,
    Op::ReadClearDirty,
    Op::AllocIova,
    Op::FreeIova,
    Op::AllowIncoherentDma,
    Op::AttachDirect,
    Op::DetachDirect,
    Op::Reclaim,
    Op::DropContext,
    Op::ReplaceSmmu,
    Op::Copy,
    Op::SetDirtyTracking,
    Op::SetDirtyTrackingOff,
    Op::GetDirtyBitmap,
    Op::ReadDirtyNoClear,
    Op::SetHugePages,
    Op::RespondFault,
    Op::DispatchFaults,
    Op::AttachNested,
    Op::InvalidateUser,
    Op::AttachNestedVtd,
    Op::InvalidateUserVtd,
    Op::RespondFaultSmmu,
    Op::RespondStall,
    Op::DispatchFaultsSmmu,
    Op::DetachStall,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    Vtd(VtdFault),
    Smmu(SmmuFault),
    /// The k-th page allocation fails.
    Alloc(u64),
    /// Before the call, more faulting DMAs than the VT-d unit has fault recording registers
    /// (`FSTS.PFO`): the drain after the call must report the overflow and clear it, and the
    /// next fault must be recorded and seen.
    VtdFaultOverflow,
    /// Before the call, more faulting DMAs than the SMMUv3 event queue holds: as above, with
    /// the event queue's overflow flag acknowledged.
    SmmuEventOverflow,
}

/// The faults that do not depend on where the operation is: stalls, ignored register writes,
/// global errors.
fn fixed_faults() -> Vec<Fault> {
    let mut v = vec![Fault::None];
    v.extend(
        [
            VtdFault::StallWaits,
            VtdFault::IgnoreGcmd,
            VtdFault::StallWriteBufferFlush,
            // A dropped write of the queue tail (IQT), the root table address, the fault status.
            VtdFault::IgnoreWrites(iommu_engine::sim::vtd::regs::IQT),
            VtdFault::IgnoreWrites(iommu_engine::sim::vtd::regs::RTADDR),
            VtdFault::IgnoreWrites(iommu_engine::sim::vtd::regs::FSTS),
        ]
        .map(Fault::Vtd),
    );
    v.extend(
        [
            SmmuFault::SyncStall,
            SmmuFault::SyncMsiAbort,
            SmmuFault::ServiceFailure,
            // EVENTQ_ABT_ERR, MSI_GERROR_ABT_ERR.
            SmmuFault::GlobalError(1 << 2),
            SmmuFault::GlobalError(1 << 7),
            SmmuFault::Cr0AckStuck,
            SmmuFault::GbpaUpdateStuck,
        ]
        .map(Fault::Smmu),
    );
    v.extend([Fault::VtdFaultOverflow, Fault::SmmuEventOverflow]);
    v
}

/// What the clean run of an operation used: VT-d descriptors and device-TLB descriptors among
/// them, SMMUv3 commands and CMD_SYNCs among them, page allocations; and what the faults with
/// no position can meet: VT-d wait descriptors, GCMD writes, write-buffer flushes and writes
/// of the registers [`VTD_IGNORED`] names; SMMUv3 completion MSIs, GERROR reads, CR0 and GBPA
/// writes.
#[derive(Clone, Copy, Debug, Default)]
struct Census {
    descriptors: u32,
    device_tlb: u32,
    commands: u32,
    syncs: u32,
    /// Bit `i`: the `i`-th CMD_SYNC (of the first 128) waits on a CMD_ATC_INV issued since
    /// the previous one, so CERROR_ATC_INV_SYNC can be reported there (and only there).
    atc_syncs: u128,
    allocations: u64,
    vtd_waits: u64,
    vtd_gcmd: u64,
    vtd_wbf: u64,
    vtd_writes: [u64; 3],
    smmu_msi: u64,
    smmu_gerror_reads: u64,
    smmu_cr0: u64,
    smmu_gbpa: u64,
}

/// The VT-d registers whose dropped write the matrix injects: the queue tail (IQT), the root
/// table address, the fault status.
const VTD_IGNORED: [usize; 3] = [
    iommu_engine::sim::vtd::regs::IQT,
    iommu_engine::sim::vtd::regs::RTADDR,
    iommu_engine::sim::vtd::regs::FSTS,
];
/// VT-d GCMD (§11.4.4).
const VTD_GCMD: usize = 0x18;
/// SMMU_CR0 and SMMU_GBPA (IHI 0070 §6.3.9, §6.3.14).
const SMMU_CR0: usize = 0x20;
const SMMU_GBPA: usize = 0x44;

/// What the models, registers and allocator count, to take a census or see a fault fire.
#[derive(Clone, Copy)]
struct Counters {
    vtd_waits: u64,
    vtd_gcmd: u64,
    vtd_wbf: u64,
    vtd_writes: [u64; 3],
    smmu_msi: u64,
    smmu_gerror_reads: u64,
    smmu_cr0: u64,
    smmu_gbpa: u64,
    /// Injections that took effect in either model, and allocations that failed.
    fired: u64,
}

impl Counters {
    fn take(r: &Rig<'_, '_>) -> Self {
        let (v, s) = (r.vm.stats(), r.sm.stats());
        Self {
            vtd_waits: v.wait,
            vtd_gcmd: r.vm.register_writes(VTD_GCMD),
            vtd_wbf: v.write_buffer_flushes,
            vtd_writes: VTD_IGNORED.map(|o| r.vm.register_writes(o)),
            smmu_msi: s.sync_msi_writes,
            smmu_gerror_reads: s.gerror_reads,
            smmu_cr0: s.register_writes(SMMU_CR0),
            smmu_gbpa: s.register_writes(SMMU_GBPA),
            fired: v.injections_fired + s.injections_fired + r.arena.stats().failed_allocs,
        }
    }
}

/// Whether the clean run reached what `fault` acts on: only then is the cell run, and then the
/// fault must fire. The positional faults are built from the census, so they always do.
fn reaches(c: &Census, fault: Fault) -> bool {
    let writes = |o: usize| {
        VTD_IGNORED
            .iter()
            .position(|&x| x == o)
            .map_or(0, |i| c.vtd_writes[i])
    };
    match fault {
        Fault::None | Fault::Alloc(_) => true,
        Fault::Vtd(VtdFault::StallWaits) => c.vtd_waits > 0,
        Fault::Vtd(VtdFault::IgnoreGcmd) => c.vtd_gcmd > 0,
        Fault::Vtd(VtdFault::StallWriteBufferFlush) => c.vtd_wbf > 0,
        Fault::Vtd(VtdFault::IgnoreWrites(o)) => writes(o) > 0,
        Fault::Vtd(_) => true,
        Fault::Smmu(SmmuFault::SyncStall) => c.syncs > 0,
        Fault::Smmu(SmmuFault::SyncMsiAbort) => c.smmu_msi > 0,
        Fault::Smmu(SmmuFault::ServiceFailure | SmmuFault::GlobalError(_)) => {
            c.smmu_gerror_reads > 0
        }
        Fault::Smmu(SmmuFault::Cr0AckStuck) => c.smmu_cr0 > 0,
        Fault::Smmu(SmmuFault::GbpaUpdateStuck) => c.smmu_gbpa > 0,
        Fault::Smmu(_) => true,
        // The call must reach the unit whose records overflowed for the cell to say anything.
        Fault::VtdFaultOverflow => c.descriptors > 0,
        Fault::SmmuEventOverflow => c.commands > 0,
    }
}

/// Every fault at every point the clean run reached: IQE at each descriptor, ITE and ICE at
/// each device-TLB descriptor, CERROR_ILL and CERROR_ABT (transient and persistent) at each
/// command, CERROR_ATC_INV_SYNC at each CMD_SYNC that waits on a CMD_ATC_INV (the model
/// reports it nowhere else; before it did, and 44 cells injected it at CMD_SYNCs of
/// configuration or TLB invalidations, an ATC timeout no unit can report: they now never
/// fire), the k-th allocation failing. (Before the
/// matrix checked that each fault fired, it also ran IQE one descriptor past the clean run's
/// last and each fault at the first position of a call that reaches none: 160 cells whose
/// fault never met the call.)
fn positional_faults(c: Census) -> Vec<Fault> {
    let mut v = Vec::new();
    for n in 1..=c.descriptors {
        v.push(Fault::Vtd(VtdFault::QueueErrorAt(n)));
    }
    for n in 1..=c.device_tlb {
        v.push(Fault::Vtd(VtdFault::DeviceTlbTimeoutAt(n)));
        v.push(Fault::Vtd(VtdFault::CompletionErrorAt(n)));
    }
    for at in 0..c.commands {
        v.push(Fault::Smmu(SmmuFault::CommandIllegalAt { at }));
        for times in [1, u32::MAX] {
            v.push(Fault::Smmu(SmmuFault::CommandAbortAt { at, times }));
        }
    }
    for at in (0..c.syncs.min(128)).filter(|&i| c.atc_syncs >> i & 1 != 0) {
        for times in [1, u32::MAX] {
            v.push(Fault::Smmu(SmmuFault::AtcInvSyncAt { at, times }));
        }
    }
    v.extend((1..=c.allocations).map(Fault::Alloc));
    v
}

/// A fault the unit recovers from by running the command again: it must not fail the call.
/// Not an ATC invalidation timeout, even once: the CMD_SYNC run again completes without the
/// invalidation, so the call fails (`smmuv3/cmdq.rs`).
fn transient(fault: Fault) -> bool {
    matches!(
        fault,
        Fault::Smmu(SmmuFault::CommandAbortAt { times: 1, .. })
    )
}

/// The rig: scalable VT-d (under caching mode or not), SMMUv3 with 16 SubstreamIDs and
/// hardware dirty tracking (and, for `op` among [`SMMU_FAULT_OPS`], a PRI queue and the stall
/// model, `IDR0.STALL_MODEL` = 0b00).
fn setups(caching_mode: bool, op: Op) -> (VtdSetup, SmmuSetup) {
    let mut s = SmmuSetup::qemu(true).with_ssid_bits(4);
    // 2^11 StreamIDs (the highest used is SID_DIRTY): the reachability walk and the audit read
    // every STE after every step, 32 times fewer than with QEMU's 2^16. ATS (SID_A uses it).
    s.model = s
        .model
        .with_httu(true, true)
        .with_sid_bits(11)
        .with_ats(true);
    s.unit.sid_bits = Some(11);
    if SMMU_FAULT_OPS.contains(&op) {
        s.model = s.model.with_pri(true, 19).with_stall_model(0);
        s.unit.priq_log2 = Some(4);
    }
    let mut v = VtdSetup::scalable();
    // ECAP.DT: RID_A has ATS, so its unit invalidates its device TLB (the model keeps one).
    v.model = v.model.with_caching_mode(caching_mode).with_dt(true);
    // ECAP.SMPWCS (bit 48): snooped page walks, which VT-d dirty tracking needs. Page
    // requests (ECAP.PRS), turned on only for the calls that answer them.
    v.model.ecap |= 1 << 48;
    v.model = v.model.with_prs(true);
    (v, s)
}

/// The context of one cell and the names of what it holds.
struct Cell<'r> {
    ctx: Option<IoasidCtx<'r, 'r, Arena>>,
    /// RID_A, SID_A: attached to A. RID_A's PASID `p` attached to P.
    v: DeviceHandle,
    s: DeviceHandle,
    /// RID_NEW_BUS, SID_B, SID_C: bound, not attached.
    v2: DeviceHandle,
    s2: DeviceHandle,
    s3: DeviceHandle,
    /// RID_DIRECT, bound with the region DIRECT, not attached.
    vdirect: DeviceHandle,
    /// RID_DIRECT2, bound with the region DIRECT2, attached to A for `Op::DetachDirect`.
    vdirect2: DeviceHandle,
    a: IoasidId,
    b: IoasidId,
    /// Dirty tracking, SID_DIRTY attached.
    d: IoasidId,
    /// A PASID IOASID.
    pio: IoasidId,
    /// Nothing attached, nothing mapped: `Op::FreeIoasid` frees it.
    c: IoasidId,
    /// Attached (RID_A, p) to P; `q` held, unused.
    p: Pasid,
    q: Pasid,
    /// An IOVA reservation of A, for `Op::FreeIova`.
    reserved: Iova,
    /// What the operation made: an IOASID, a PASID, a device, an IOVA.
    made_ioasid: StdCell<Option<IoasidId>>,
    made_pasid: StdCell<Option<Pasid>>,
    made_device: StdCell<Option<DeviceHandle>>,
    made_iova: StdCell<Option<Iova>>,
    dirty_seen: StdCell<u32>,
    /// The first word of `Op::GetDirtyBitmap`'s bitmap, over every attempt.
    dirty_bits: StdCell<u64>,
    granted: StdCell<bool>,
    /// RID_A's page request group, read from the context's queue at setup
    /// (`Op::RespondFault`).
    cookie: Option<iommu_engine::iopf::FaultCookie>,
    /// SID_STALL's stalled write, read from the context's queue at setup (`Op::RespondStall`).
    stag: Option<u16>,
    /// SID_STALL, for the SMMUv3 fault rows.
    stall_device: Option<DeviceHandle>,
    /// What `Op::DispatchFaults` returned.
    dispatched: StdCell<Option<iommu_engine::ioasid::Dispatched>>,
    /// The nested child (`Op::AttachNested` attaches SID_B to it; SID_C is attached to it for
    /// `Op::InvalidateUser`) and its guest's memory.
    child: Option<IoasidId>,
    guest: Option<Guest>,
    issued: StdCell<usize>,
    /// A nested child was built (its guest's IPAs may stay in the SMMUv3's CD cache).
    nested: bool,
    /// Where the SMMUv3 command log stood when the last attempt of the call began: the ATC
    /// invalidations an `Ok` must have issued are looked for from there (a retry reissues
    /// what the failed attempt lost).
    attempt_commands: StdCell<usize>,
    /// Stranded devices the drop left, released once recovered.
    stranded: Vec<DeviceLabel>,
}

/// A nested child's guest (SMMUv3): its IOVA, the IPAs of its pages (IPA_BASE + 4 KiB * n:
/// page 0 its CD table, 1-3 its stage-1 tables, 4 and 5 data), its ASID and the virtual
/// StreamID it knows SID_C by.
const GIOVA: u64 = 0x1234_5000;
const IPA_BASE: u64 = 0x1000_0000;
const GUEST_ASID: u64 = 5;
const VSID_C: u32 = 0x7;

/// The guest's memory: arena pages the NEST_PARENT IOASID maps at IPA_BASE + 4 KiB * n,
/// given back after the context (`Cell::guest`).
struct Guest {
    pages: Vec<iommu_engine::mem::Page>,
}

impl Guest {
    fn ipa(n: usize) -> u64 {
        IPA_BASE + K4 * n as u64
    }
    fn pa(&self, n: usize) -> u64 {
        self.pages[n].pa.get()
    }
    fn write(&self, arena: &Arena, n: usize, offset: u64, value: u64) {
        assert!(arena.write_u64(self.pa(n) + offset, value), "guest write");
    }
    /// The guest's CD (T0SZ 32, 4 KiB granule, write-back inner shareable walks, EPD1, valid,
    /// 40-bit IPS, AArch64, ASID) and stage-1 tables from level 1, hand-encoded from IHI 0070
    /// G.b §5.4 and the Arm ARM D8, as `nested.rs` has them; GIOVA points at page 4.
    fn tables(&self, arena: &Arena) {
        let dw0 = 32
            | 1 << 8
            | 1 << 10
            | 3 << 12
            | 1 << 30
            | 1 << 31
            | 2 << 32
            | 1 << 41
            | 1 << 45
            | 1 << 46
            | GUEST_ASID << 48;
        self.write(arena, 0, 8, Self::ipa(1));
        self.write(arena, 0, 24, 0xff);
        self.write(arena, 0, 0, dw0);
        self.write(arena, 1, ((GIOVA >> 30) & 0x1ff) * 8, Self::ipa(2) | 3);
        self.write(arena, 2, ((GIOVA >> 21) & 0x1ff) * 8, Self::ipa(3) | 3);
        self.leaf(arena, 4);
    }
    /// The guest points GIOVA at its page `n` (AP EL0 RW, inner shareable, AF, nG).
    fn leaf(&self, arena: &Arena, n: usize) {
        let s1_rw = 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11;
        self.write(
            arena,
            3,
            ((GIOVA >> 12) & 0x1ff) * 8,
            Self::ipa(n) | s1_rw | 3,
        );
    }
    /// The guest's 4-level VT-d first-stage tables at pages 0-3 (PML4, PDPT, PD, PT: P, R/W,
    /// U/S, A), GIOVA pointing at page 4 (VT-d §9.7), as `nested_vtd.rs` has them.
    fn vtd_tables(&self, arena: &Arena) {
        let idx = |shift: u32| ((GIOVA >> shift) & 0x1ff) * 8;
        self.write(arena, 0, idx(39), Self::ipa(1) | 0x27);
        self.write(arena, 1, idx(30), Self::ipa(2) | 0x27);
        self.write(arena, 2, idx(21), Self::ipa(3) | 0x27);
        self.vtd_leaf(arena, 4);
    }
    /// The guest points GIOVA at its page `n` (P, R/W, U/S, A, D).
    fn vtd_leaf(&self, arena: &Arena, n: usize) {
        self.write(arena, 3, ((GIOVA >> 12) & 0x1ff) * 8, Self::ipa(n) | 0x67);
    }
    /// The guest's VT-d first stage (iommufd `struct iommu_hwpt_vtd_s1`).
    fn vtd_s1() -> iommu_engine::iommu::UserStage1 {
        iommu_engine::iommu::UserStage1::Vtd {
            flags: 0,
            pgtbl_addr: Self::ipa(0),
            addr_width: 48,
        }
    }
    /// The guest's STE words: stage-1 translate, its one CD at IPA page 0.
    fn ste() -> iommu_engine::iommu::UserStage1 {
        iommu_engine::iommu::UserStage1::SmmuV3 {
            ste: [1 | 0b101 << 1 | Self::ipa(0), 2 | 1 << 2 | 1 << 4 | 3 << 6],
        }
    }
}

/// The range dirty reads cover, and the bitmap words it needs at 4 KiB.
const DIRTY_LEN: u64 = 1 << 24;
const DIRTY_WORDS: usize = (DIRTY_LEN >> 12 >> 6) as usize;
/// The page every page request asks for.
const FAULT_PAGE: u64 = 0x5000;

/// A device's last page request of group `group` for FAULT_PAGE (write).
fn page_request(rid: u32, group: u16) -> PageRequest {
    PageRequest {
        sid: rid as u16,
        pasid: None,
        addr: FAULT_PAGE,
        access: Access::WRITE,
        group,
        last: true,
    }
}

/// The SMMUv3 device `sid`'s last PRI request of group `group` for FAULT_PAGE (write).
fn smmu_page_request(sid: u32, group: u16) -> PriRequest {
    PriRequest {
        sid,
        ssid: None,
        addr: FAULT_PAGE,
        access: Access::WRITE,
        group,
        last: true,
    }
}

fn map(ctx: &IoasidCtx<'_, '_, Arena>, io: IoasidId, m: (u64, u64, u64)) {
    ctx.map(io, Iova::new(m.0), PhysAddr::new(m.1), m.2, RW)
        .expect("setup map");
}

impl<'r> Cell<'r> {
    fn new(r: &Rig<'r, '_>, op: Op) -> Self {
        let ctx = IoasidCtx::new(r.reg, r.arena, 4);
        let bind = |l| ctx.bind(l, true).expect("setup bind");
        // RID_A and SID_A have ATS: their device TLB / ATC is invalidated with their domain.
        let ats = DeviceHints {
            ats: true,
            ..DeviceHints::default()
        };
        let v = ctx
            .bind_with(vtd_dev(RID_A), true, ats)
            .expect("setup bind");
        let s = ctx
            .bind_with(smmu_dev(SID_A), true, ats)
            .expect("setup bind");
        let (v2, s2, s3) = (
            bind(vtd_dev(RID_NEW_BUS)),
            bind(smmu_dev(SID_B)),
            bind(smmu_dev(SID_C)),
        );
        let region = IovaRange {
            start: Iova::new(DIRECT.0),
            end: Iova::new(DIRECT.0 + DIRECT.1),
        };
        let region = DirectRegion::new(region, false).expect("setup region");
        let vdirect = ctx
            .bind_with_direct(vtd_dev(RID_DIRECT), true, None, &[region])
            .expect("setup bind");
        let region2 = IovaRange {
            start: Iova::new(DIRECT2.0),
            end: Iova::new(DIRECT2.0 + DIRECT2.1),
        };
        let region2 = DirectRegion::new(region2, false).expect("setup region");
        let vdirect2 = ctx
            .bind_with_direct(vtd_dev(RID_DIRECT2), true, None, &[region2])
            .expect("setup bind");
        let alloc = |f| ctx.alloc(f).expect("setup alloc");
        let a = alloc(IoasidFlags::ENFORCE_SNOOP);
        let d = alloc(IoasidFlags::DIRTY_TRACKING);
        let b = alloc(IoasidFlags::empty());
        let pio = alloc(IoasidFlags::PASID);
        let c = alloc(IoasidFlags::ENFORCE_SNOOP);
        ctx.attach(v, a).expect("setup attach");
        ctx.attach(s, a).expect("setup attach");
        // Only for the operation that detaches it: every other cell keeps its setup (a
        // dropped context unmapping DIRECT2 would leave a leaked SMMUv3 domain owing).
        if op == Op::DetachDirect {
            ctx.attach(vdirect2, a).expect("setup attach");
        }
        // Dirty tracking: the VT-d model sets D (SSADE), the SMMUv3 clears AP[2] (HTTU).
        let sd = bind(smmu_dev(SID_DIRTY));
        ctx.attach(sd, d).expect("setup attach");
        let vd = bind(vtd_dev(RID_DIRTY));
        ctx.attach(vd, d).expect("setup attach");
        map(&ctx, d, D_MAP);
        for m in A_MAPS {
            map(&ctx, a, m);
        }
        map(&ctx, b, B_MAP);
        map(&ctx, b, B_MAP2);
        map(&ctx, pio, P_MAP);
        let p = ctx.alloc_pasid().expect("setup PASID");
        let q = ctx.alloc_pasid().expect("setup PASID");
        ctx.attach_pasid(v, p, pio).expect("setup attach_pasid");
        let reserved = ctx.alloc_iova(a, K4, K4).expect("setup alloc_iova");
        // Warm the caches, the device TLB included: a lost invalidation then shows as a stale
        // translation.
        for m in A_MAPS {
            r.vtd_read(RID_A, None, m.0).expect("setup VT-d read");
            r.smmu_read(SID_A, None, m.0).expect("setup SMMUv3 read");
            r.vm.ats_translate(RID_A as u16, None, m.0, Access::READ)
                .expect("setup ATS translation");
        }
        r.vtd_read(RID_A, Some(p.get()), P_MAP.0)
            .expect("setup PASID read");
        r.vm.ats_translate(RID_A as u16, Some(p.get()), P_MAP.0, Access::READ)
            .expect("setup ATS translation");
        // A device write: the SMMUv3 marks the page dirty (HTTU).
        r.sm.translate(SID_DIRTY, None, D_MAP.0, Access::WRITE)
            .expect("setup SMMUv3 write");
        r.vm.translate(RID_DIRTY as u16, None, D_MAP.0 + K4, Access::WRITE)
            .expect("setup VT-d write");
        // I/O page faults (VT-d page request queue): for the calls that answer them only.
        let mut cookie = None;
        if matches!(op, Op::RespondFault | Op::DispatchFaults) {
            r.vtd.enable_page_requests(0).expect("setup page requests");
            ctx.fault_queue_alloc();
            let queued = r.vm.page_request(page_request(RID_A, PRG_OWNED));
            assert_eq!(queued, PageRequestOutcome::Queued, "setup page request");
        }
        if op == Op::RespondFault {
            let d = dispatch_page_faults(VTD, r.vtd, &[&ctx]).expect("setup dispatch");
            assert_eq!(d.queued, 1, "setup dispatch");
            let mut out: [QueuedFault; 2] = no_faults();
            assert_eq!(ctx.read_faults(&mut out), 1, "setup read_faults");
            cookie = Some(out[0].cookie);
        }
        if op == Op::DispatchFaults {
            let queued = r.vm.page_request(page_request(RID_NEW_BUS, PRG_UNOWNED));
            assert_eq!(queued, PageRequestOutcome::Queued, "setup page request");
        }
        // I/O page faults on the SMMUv3: SID_A's PRI group, SID_STALL's stalled write.
        let (mut stag, mut stall_device) = (None, None);
        if SMMU_FAULT_OPS.contains(&op) {
            ctx.fault_queue_alloc();
            let stall = DeviceHints {
                stall: true,
                ..DeviceHints::default()
            };
            let st = ctx
                .bind_with(smmu_dev(SID_STALL), true, stall)
                .expect("setup bind");
            ctx.attach(st, a).expect("setup attach");
            stall_device = Some(st);
            let queued = r.sm.page_request(smmu_page_request(SID_A, PRG_OWNED));
            assert_eq!(queued, PriOutcome::Queued, "setup page request");
            let f =
                r.sm.translate(SID_STALL, None, FAULT_PAGE, Access::WRITE)
                    .expect_err("setup stall");
            stag = Some(f.stag.expect("setup: the write stalls"));
            r.drain();
        }
        if matches!(op, Op::RespondFaultSmmu | Op::RespondStall) {
            let d = dispatch_page_faults(SMMU, r.smmu, &[&ctx]).expect("setup dispatch");
            assert_eq!(d.queued, 2, "setup dispatch");
            let mut out: [QueuedFault; 2] = no_faults();
            assert_eq!(ctx.read_faults(&mut out), 2, "setup read_faults");
            let stalled = op == Op::RespondStall;
            let f = out
                .iter()
                .find(|q| matches!(q.fault.kind, FaultKind::Stall { .. }) == stalled)
                .expect("setup fault");
            cookie = Some(f.cookie);
        }
        if op == Op::DispatchFaultsSmmu {
            let queued = r.sm.page_request(smmu_page_request(SID_B, PRG_UNOWNED));
            assert_eq!(queued, PriOutcome::Queued, "setup page request");
        }
        // A nested child over a NEST_PARENT IOASID mapping the guest's memory.
        let (mut child, mut guest) = (None, None);
        let vtd_nested = matches!(op, Op::AttachNestedVtd | Op::InvalidateUserVtd);
        if matches!(op, Op::AttachNested | Op::InvalidateUser) || vtd_nested {
            let g = Guest {
                pages: (0..6)
                    .map(|_| {
                        iommu_engine::mem::PageAllocator::alloc(r.arena, 12).expect("guest page")
                    })
                    .collect(),
            };
            let np = alloc(IoasidFlags::NEST_PARENT);
            for n in 0..6 {
                map(&ctx, np, (Guest::ipa(n), g.pa(n), K4));
            }
            let s1 = if vtd_nested {
                g.vtd_tables(r.arena);
                Guest::vtd_s1()
            } else {
                g.tables(r.arena);
                Guest::ste()
            };
            let c = ctx.alloc_nested(np, s1).expect("setup alloc_nested");
            if op == Op::InvalidateUserVtd {
                ctx.attach(v2, c).expect("setup attach nested");
                assert_eq!(
                    r.vtd_read(RID_NEW_BUS, None, GIOVA).map(|t| t.0),
                    Some(g.pa(4)),
                    "setup nested DMA"
                );
                g.vtd_leaf(r.arena, 5);
            }
            if op == Op::InvalidateUser {
                ctx.set_virtual_id(s3, Some(VSID_C))
                    .expect("setup virtual ID");
                ctx.attach(s3, c).expect("setup attach nested");
                assert_eq!(
                    r.smmu_read(SID_C, None, GIOVA).map(|t| t.0),
                    Some(g.pa(4)),
                    "setup nested DMA"
                );
                // The guest moves GIOVA to its page 5; the TLB still holds page 4 until the
                // guest's invalidation passes.
                g.leaf(r.arena, 5);
            }
            child = Some(c);
            guest = Some(g);
        }
        Self {
            ctx: Some(ctx),
            v,
            s,
            v2,
            s2,
            s3,
            vdirect,
            vdirect2,
            a,
            b,
            d,
            pio,
            c,
            p,
            q,
            reserved,
            made_ioasid: StdCell::new(None),
            made_pasid: StdCell::new(None),
            made_device: StdCell::new(None),
            made_iova: StdCell::new(None),
            dirty_seen: StdCell::new(0),
            dirty_bits: StdCell::new(0),
            granted: StdCell::new(false),
            cookie,
            stag,
            stall_device,
            dispatched: StdCell::new(None),
            nested: child.is_some(),
            child,
            guest,
            issued: StdCell::new(0),
            attempt_commands: StdCell::new(0),
            stranded: Vec::new(),
        }
    }

    /// The (device, PASID) pairs whose attachment the snapshot records, in order.
    fn attachment_probes(&self) -> [(DeviceHandle, Option<Pasid>); 10] {
        [
            (self.v, None),
            (self.s, None),
            (self.v2, None),
            (self.s2, None),
            (self.s3, None),
            (self.vdirect, None),
            (self.v, Some(self.p)),
            (self.v2, Some(self.q)),
            (self.s3, Some(self.q)),
            (self.vdirect2, None),
        ]
    }

    /// The device, unit and requester/StreamID (and PASID) of each probe.
    fn hardware_probes(&self) -> [(DeviceHandle, bool, u32, Option<Pasid>); 9] {
        [
            (self.v, true, RID_A, None),
            (self.s, false, SID_A, None),
            (self.v2, true, RID_NEW_BUS, None),
            (self.s2, false, SID_B, None),
            (self.vdirect, true, RID_DIRECT, None),
            (self.vdirect2, true, RID_DIRECT2, None),
            (self.v, true, RID_A, Some(self.p)),
            (self.v2, true, RID_NEW_BUS, Some(self.q)),
            (self.s3, false, SID_C, Some(self.q)),
        ]
    }

    fn ctx(&self) -> &IoasidCtx<'r, 'r, Arena> {
        self.ctx.as_ref().expect("the context")
    }

    /// Runs `op` once.
    fn run(&mut self, r: &Rig<'_, '_>, op: Op) -> Result<(), Error> {
        if op == Op::DropContext {
            drop(self.ctx.take());
            r.reg.stranded(|l| self.stranded.push(l));
            return Ok(());
        }
        let ctx = self.ctx();
        match op {
            Op::Bind => {
                let d = ctx.bind(vtd_dev(RID_BIND), false)?;
                self.made_device.set(Some(d));
            }
            Op::Unbind => ctx.unbind(self.v2)?,
            Op::AllocIoasid => {
                let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP)?;
                self.made_ioasid.set(Some(io));
            }
            Op::FreeIoasid => ctx.free(self.c)?,
            Op::AllocPasid => {
                let p = ctx.alloc_pasid()?;
                self.made_pasid.set(Some(p));
            }
            Op::FreePasid => ctx.free_pasid(self.q)?,
            Op::AttachVtd => ctx.attach(self.v2, self.b)?,
            Op::AttachSmmu => ctx.attach(self.s2, self.b)?,
            Op::Replace => ctx.attach(self.v, self.b)?,
            Op::DetachVtd => ctx.detach(self.v)?,
            Op::DetachSmmu => ctx.detach(self.s)?,
            Op::AttachPasidVtd => ctx.attach_pasid(self.v2, self.q, self.pio)?,
            Op::AttachPasidSmmu => ctx.attach_pasid(self.s3, self.q, self.pio)?,
            Op::DetachPasid => ctx.detach_pasid(self.v, self.p)?,
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
            Op::ReadClearDirty => {
                let seen = &self.dirty_seen;
                ctx.read_and_clear_dirty(self.d, Iova::ZERO, 1 << 31, &mut |_, _| {
                    seen.set(seen.get() + 1)
                })?;
            }
            Op::AllocIova => {
                let at = ctx.alloc_iova(self.a, 2 * K4, K4)?;
                self.made_iova.set(Some(at));
            }
            Op::FreeIova => {
                // `false` (nothing to free) after a first call that freed it.
                ctx.free_iova(self.a, self.reserved)?;
            }
            Op::AllowIncoherentDma => {
                let grant = ctx.allow_incoherent_dma(self.v)?;
                self.granted.set(ctx.incoherent_dma_allowed());
                drop(grant);
            }
            Op::AttachDirect => ctx.attach(self.vdirect, self.a)?,
            Op::DetachDirect => ctx.detach(self.vdirect2)?,
            Op::Reclaim => {
                ctx.reclaim(self.a)?;
            }
            Op::ReplaceSmmu => ctx.attach(self.s, self.b)?,
            Op::Copy => ctx.copy(
                self.b,
                Iova::new(B_MAP.0),
                self.a,
                Iova::new(COPY_TO),
                2 * K4,
            )?,
            Op::SetDirtyTracking => ctx.set_dirty_tracking(self.d, true)?,
            Op::SetDirtyTrackingOff => ctx.set_dirty_tracking(self.d, false)?,
            Op::GetDirtyBitmap => {
                let mut bitmap = [0u64; DIRTY_WORDS];
                let r = ctx.get_dirty_bitmap(
                    self.d,
                    Iova::ZERO,
                    DIRTY_LEN,
                    12,
                    &mut bitmap,
                    DirtyReadFlags::empty(),
                );
                self.dirty_bits.set(self.dirty_bits.get() | bitmap[0]);
                r?;
            }
            Op::ReadDirtyNoClear => {
                let seen = &self.dirty_seen;
                ctx.read_dirty(
                    self.d,
                    Iova::ZERO,
                    DIRTY_LEN,
                    DirtyReadFlags::NO_CLEAR,
                    &mut |_, _| seen.set(seen.get() + 1),
                )?;
            }
            Op::SetHugePages => ctx.set_huge_pages(self.c, false)?,
            Op::RespondFault => {
                let cookie = self.cookie.expect("a cookie from the setup");
                ctx.respond_fault(cookie, ResponseCode::Success)?;
            }
            Op::DispatchFaults => {
                let d = dispatch_page_faults(VTD, r.vtd, &[ctx])?;
                self.dispatched.set(Some(d));
            }
            Op::RespondFaultSmmu | Op::RespondStall => {
                let cookie = self.cookie.expect("a cookie from the setup");
                ctx.respond_fault(cookie, ResponseCode::Success)?;
            }
            Op::DispatchFaultsSmmu => {
                let d = dispatch_page_faults(SMMU, r.smmu, &[ctx])?;
                self.dispatched.set(Some(d));
            }
            Op::DetachStall => ctx.detach(self.stall_device.expect("SID_STALL"))?,
            Op::AttachNested => ctx.attach(self.s2, self.child.expect("child"))?,
            Op::AttachNestedVtd => ctx.attach(self.v2, self.child.expect("child"))?,
            Op::InvalidateUserVtd => {
                // The guest's invalidation of GIOVA's leaf.
                let inv = iommu_engine::iommu::VtdS1Invalidate {
                    addr: GIOVA,
                    npages: 1,
                    flags: iommu_engine::iommu::VTD_INV_FLAGS_LEAF,
                    reserved: 0,
                };
                let n = ctx.invalidate_user_vtd(self.child.expect("child"), &[inv])?;
                self.issued.set(n);
            }
            Op::InvalidateUser => {
                // The guest's TLBI_NH_VA of GIOVA (its VMID field 0: the unit writes the
                // parent's).
                let tlbi = [0x12 | GUEST_ASID << 48, GIOVA | 1];
                let n = ctx.invalidate_user(self.child.expect("child"), &[tlbi])?;
                self.issued.set(n);
            }
            Op::DropContext => unreachable!(),
        }
        Ok(())
    }

    /// Whether the whole effect of `op` is there.
    fn effect(&self, r: &Rig<'_, '_>, op: Op) -> Result<(), String> {
        let want = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(format!("{op:?} succeeded but {what}"))
            }
        };
        let vtd = |rid, pasid: Option<Pasid>, iova| r.vtd_read(rid, pasid.map(Pasid::get), iova);
        // RID_A's device TLB holds no translation of `iova` any more.
        let atc_clean =
            |pasid: Option<Pasid>, iova| !r.vm.atc_holds(RID_A as u16, pasid.map(Pasid::get), iova);
        // A CMD_ATC_INV for SID_A was consumed during the last attempt of the call.
        let atc_invalidated = || {
            r.sm.command_log()
                .get(self.attempt_commands.get()..)
                .unwrap_or(&[])
                .iter()
                .any(|c| c[0] & 0xff == 0x40 && c[0] >> 32 == u64::from(SID_A))
        };
        let smmu = |sid, iova| r.smmu_read(sid, None, iova);
        if op == Op::DropContext {
            for (l, sid) in [(RID_A, None), (RID_NEW_BUS, None)] {
                if !self.stranded.contains(&vtd_dev(l)) {
                    want(
                        "a VT-d device still translates",
                        vtd(l, sid, 0x1000).is_none(),
                    )?;
                }
            }
            if !self.stranded.contains(&smmu_dev(SID_A)) {
                want(
                    "an SMMUv3 device still translates",
                    smmu(SID_A, 0x1000).is_none(),
                )?;
                want("SID_A's ATC not invalidated", atc_invalidated())?;
            }
            if !self.stranded.contains(&vtd_dev(RID_A)) {
                want(
                    "RID_A's device TLB still translates",
                    A_MAPS.iter().all(|m| atc_clean(None, m.0)) && atc_clean(Some(self.p), P_MAP.0),
                )?;
            }
            return Ok(());
        }
        let ctx = self.ctx();
        let pa = |m: (u64, u64, u64)| Some((m.1, true));
        let pa_plain = |m: (u64, u64, u64)| Some((m.1, false));
        match op {
            Op::Bind => want(
                "the device is not bound",
                self.made_device
                    .get()
                    .is_some_and(|d| ctx.device_info(d).is_ok()),
            ),
            Op::Unbind => want(
                "the device is still bound",
                ctx.device_info(self.v2).is_err(),
            ),
            Op::AllocIoasid => want(
                "no IOASID",
                self.made_ioasid
                    .get()
                    .is_some_and(|io| ctx.flags(io).is_ok()),
            ),
            Op::FreeIoasid => want("the IOASID is still there", ctx.flags(self.c).is_err()),
            Op::AllocPasid => want("no PASID", self.made_pasid.get().is_some()),
            Op::FreePasid => want(
                "the PASID is still held",
                ctx.free_pasid(self.q) == Err(Error::PasidNotOwned(self.q)),
            ),
            Op::AttachVtd => want(
                "the device does not translate B",
                vtd(RID_NEW_BUS, None, B_MAP.0) == pa_plain(B_MAP),
            ),
            Op::AttachSmmu => want(
                "the device does not translate B",
                smmu(SID_B, B_MAP.0).is_some_and(|t| t.0 == B_MAP.1),
            ),
            Op::Replace => want(
                "the device does not translate B, or its device TLB still holds A",
                vtd(RID_A, None, B_MAP.0) == pa_plain(B_MAP)
                    && vtd(RID_A, None, A_MAPS[1].0).is_none()
                    && A_MAPS[1..].iter().all(|m| atc_clean(None, m.0)),
            ),
            Op::DetachVtd => want(
                "the device or its device TLB still translates",
                vtd(RID_A, None, A_MAPS[0].0).is_none()
                    && A_MAPS.iter().all(|m| atc_clean(None, m.0)),
            ),
            Op::DetachSmmu => want(
                "the device still translates, or its ATC was not invalidated",
                smmu(SID_A, A_MAPS[0].0).is_none() && atc_invalidated(),
            ),
            Op::AttachPasidVtd => want(
                "the PASID does not translate P",
                vtd(RID_NEW_BUS, Some(self.q), P_MAP.0).is_some_and(|t| t.0 == P_MAP.1),
            ),
            Op::AttachPasidSmmu => want(
                "the PASID does not translate P",
                r.smmu_read(SID_C, Some(self.q.get()), P_MAP.0)
                    .is_some_and(|t| t.0 == P_MAP.1),
            ),
            Op::DetachPasid => want(
                "the PASID or its device TLB entry still translates",
                vtd(RID_A, Some(self.p), P_MAP.0).is_none() && atc_clean(Some(self.p), P_MAP.0),
            ),
            Op::Map => want(
                "a device does not translate the new mapping",
                (0..A_NEW.2 / K4).all(|i| {
                    let (iova, pa) = (A_NEW.0 + i * K4, Some((A_NEW.1 + i * K4, true)));
                    vtd(RID_A, None, iova) == pa && smmu(SID_A, iova) == pa
                }),
            ),
            Op::Unmap => {
                want(
                    "a device still translates the unmapped range",
                    A_MAPS[1..].iter().all(|m| {
                        vtd(RID_A, None, m.0).is_none()
                            && smmu(SID_A, m.0).is_none()
                            && ctx.translate(self.a, Iova::new(m.0)) == Ok(None)
                    }) && vtd(RID_A, None, A_MAPS[0].0) == pa(A_MAPS[0]),
                )?;
                want(
                    "RID_A's device TLB still translates the unmapped range",
                    A_MAPS[1..].iter().all(|m| atc_clean(None, m.0)),
                )?;
                want("no CMD_ATC_INV for SID_A", atc_invalidated())
            }
            Op::ReadClearDirty => {
                // Both pages (one dirtied through each unit) reported over the attempts.
                want("a dirty page not reported", self.dirty_seen.get() >= 2)?;
                // Cleared, and the VT-d IOTLB no longer holds the page dirty: a new write sets
                // D again and is reported (a lost invalidation would hide it). These checking
                // calls run with no fault armed.
                r.vm.clear_injections();
                r.sm.clear_injections();
                let seen = StdCell::new(0u32);
                let mut count = |_: Iova, _: u32| seen.set(seen.get() + 1);
                ctx.read_and_clear_dirty(self.d, Iova::ZERO, 1 << 31, &mut count)
                    .map_err(|e| format!("{e:?}"))?;
                want("dirty state not cleared", seen.get() == 0)?;
                r.vm.translate(RID_DIRTY as u16, None, D_MAP.0 + K4, Access::WRITE)
                    .map_err(|e| format!("VT-d write: {e:?}"))?;
                ctx.read_and_clear_dirty(self.d, Iova::ZERO, 1 << 31, &mut count)
                    .map_err(|e| format!("{e:?}"))?;
                want("a VT-d write after the clear not seen", seen.get() == 1)
            }
            Op::AllocIova => want(
                "the IOVA is mapped",
                self.made_iova
                    .get()
                    .is_some_and(|at| ctx.translate(self.a, at) == Ok(None) && at != self.reserved),
            ),
            Op::FreeIova => want(
                "the reservation is still there",
                ctx.free_iova(self.a, self.reserved) == Ok(false),
            ),
            Op::AllowIncoherentDma => want(
                "the grant was not seen, or outlived its value",
                self.granted.get() && !ctx.incoherent_dma_allowed(),
            ),
            Op::AttachDirect => want(
                "a device does not translate the direct region one-to-one",
                (0..DIRECT.1 / K4).all(|i| {
                    let iova = DIRECT.0 + i * K4;
                    vtd(RID_DIRECT, None, iova).is_some_and(|t| t.0 == iova)
                        && smmu(SID_A, iova).is_some_and(|t| t.0 == iova)
                        && vtd(RID_A, None, iova).is_some_and(|t| t.0 == iova)
                }) && ctx.map(
                    self.a,
                    Iova::new(DIRECT.0),
                    PhysAddr::new(0x5300_0000),
                    K4,
                    RW,
                ) == Err(Error::Reserved(IovaRange {
                    start: Iova::new(DIRECT.0),
                    end: Iova::new(DIRECT.0 + DIRECT.1),
                })),
            ),
            Op::DetachDirect => want(
                "the direct region is still mapped, or the device still translates",
                (0..DIRECT2.1 / K4).all(|i| {
                    let iova = DIRECT2.0 + i * K4;
                    vtd(RID_DIRECT2, None, iova).is_none()
                        && vtd(RID_DIRECT2, None, A_MAPS[0].0).is_none()
                        && smmu(SID_A, iova).is_none()
                        && vtd(RID_A, None, iova).is_none()
                        && ctx.translate(self.a, Iova::new(iova)) == Ok(None)
                }) && ctx.attachment(self.vdirect2, None) == Ok(None)
                    && ctx.direct_mappings(self.a).is_ok_and(|m| {
                        m.iter()
                            .flatten()
                            .all(|(d, _)| d.range().start.get() != DIRECT2.0)
                    }),
            ),
            Op::ReplaceSmmu => want(
                "the device does not translate B, still translates A, or its ATC was not \
                 invalidated",
                smmu(SID_A, B_MAP.0).is_some_and(|t| t.0 == B_MAP.1)
                    && smmu(SID_A, A_MAPS[1].0).is_none()
                    && atc_invalidated(),
            ),
            Op::Copy => want(
                "a device does not translate the copy",
                [(COPY_TO, B_MAP.1), (COPY_TO + K4, B_MAP2.1)]
                    .iter()
                    .all(|&(iova, pa)| {
                        vtd(RID_A, None, iova) == Some((pa, true))
                            && smmu(SID_A, iova) == Some((pa, true))
                            && ctx
                                .translate(self.a, Iova::new(iova))
                                .is_ok_and(|m| m.is_some_and(|m| m.pa.get() == pa))
                    }),
            ),
            Op::SetDirtyTracking => {
                want("tracking is off", ctx.dirty_tracking(self.d) == Ok(true))?;
                // Every page clean, and a write after the call reported (through each unit).
                self.cleared_then_seen(r, op, 0)
            }
            Op::SetDirtyTrackingOff => want(
                "tracking is on, or a read is not refused",
                ctx.dirty_tracking(self.d) == Ok(false)
                    && ctx.read_and_clear_dirty(self.d, Iova::ZERO, K4, &mut |_, _| {})
                        == Err(Error::DirtyTrackingOff(self.d)),
            ),
            Op::GetDirtyBitmap => {
                // Pages 1 (the SMMUv3 write) and 2 (the VT-d write), over the attempts.
                want(
                    "a dirty page not in the bitmap",
                    self.dirty_bits.get() & 0b110 == 0b110,
                )?;
                self.cleared_then_seen(r, op, 0)
            }
            Op::ReadDirtyNoClear => {
                want("a dirty page not reported", self.dirty_seen.get() >= 2)?;
                // Not cleaned: reported again.
                let seen = StdCell::new(0u32);
                ctx.read_dirty(
                    self.d,
                    Iova::ZERO,
                    DIRTY_LEN,
                    DirtyReadFlags::NO_CLEAR,
                    &mut |_, _| seen.set(seen.get() + 1),
                )
                .map_err(|e| format!("{e:?}"))?;
                want("NO_CLEAR cleaned a page", seen.get() == 2)
            }
            Op::SetHugePages => want("no 4 KiB limit", ctx.max_page_log2(self.c) == Ok(Some(12))),
            Op::RespondFault => want(
                "the device did not get the answer",
                r.vm.page_responses().iter().any(|g| {
                    (g.sid, g.group, g.code, g.expected) == (RID_A as u16, PRG_OWNED, 0, true)
                }) && r.vm.outstanding_page_requests() == 0,
            ),
            Op::RespondFaultSmmu => want(
                "the device did not get the answer",
                r.sm.pri_responses()
                    .iter()
                    .any(|g| (g.sid, g.group, g.code, g.expected) == (SID_A, PRG_OWNED, 0, true))
                    && r.sm.outstanding_page_requests() == 0,
            ),
            Op::DetachStall => want(
                "the stalled write outlived the detach, or the device still translates",
                r.sm.stalled().is_empty() && smmu(SID_STALL, A_MAPS[0].0).is_none(),
            ),
            Op::RespondStall => want(
                "the stalled write was not resumed",
                r.sm.stall_outcomes()
                    .iter()
                    .any(|o| (o.stalled.sid, Some(o.stalled.stag)) == (SID_STALL, self.stag)),
            ),
            Op::DispatchFaultsSmmu => {
                let mut out: [QueuedFault; 4] = no_faults();
                let n = ctx.read_faults(&mut out);
                let took = |dev: u32, stall: bool| {
                    out[..n].iter().any(|q| {
                        q.fault.device.0 == dev
                            && matches!(q.fault.kind, FaultKind::Stall { .. }) == stall
                    })
                };
                want(
                    "SID_A's group and SID_STALL's stall not both queued in the context",
                    n == 2 && took(SID_A, false) && took(SID_STALL, true),
                )?;
                let answered =
                    r.sm.pri_responses().iter().any(|g| {
                        (g.sid, g.group, g.code, g.expected) == (SID_B, PRG_UNOWNED, 1, true)
                    });
                let lost = self.dispatched.get().is_some_and(|d| d.unanswered == 1);
                want(
                    "SID_B's request neither answered nor counted unanswered",
                    answered || lost,
                )
            }
            Op::DispatchFaults => {
                let mut out: [QueuedFault; 2] = no_faults();
                want(
                    "RID_A's request not queued in the context",
                    ctx.read_faults(&mut out) == 1 && out[0].fault.addr == FAULT_PAGE,
                )?;
                // RID_NEW_BUS's request was answered Invalid, or its answer counted lost (the
                // unit did not confirm it: the device may wait for its own timeout).
                let answered = r.vm.page_responses().iter().any(|g| {
                    (g.sid, g.group, g.code, g.expected)
                        == (RID_NEW_BUS as u16, PRG_UNOWNED, 1, true)
                });
                let lost = self.dispatched.get().is_some_and(|d| d.unanswered == 1);
                want(
                    "RID_NEW_BUS's request neither answered nor counted unanswered",
                    answered || lost,
                )
            }
            Op::AttachNested => {
                let g = self.guest.as_ref().expect("guest");
                want(
                    "the device does not translate through the guest's stage 1 and the parent",
                    r.smmu_read(SID_B, None, GIOVA).map(|t| t.0) == Some(g.pa(4)),
                )
            }
            Op::AttachNestedVtd => {
                let g = self.guest.as_ref().expect("guest");
                want(
                    "the device does not translate through the guest's first stage and the parent",
                    vtd(RID_NEW_BUS, None, GIOVA).map(|t| t.0) == Some(g.pa(4)),
                )
            }
            Op::InvalidateUserVtd => {
                let g = self.guest.as_ref().expect("guest");
                want(
                    "the guest's invalidation did not reach the IOTLB",
                    self.issued.get() >= 1
                        && vtd(RID_NEW_BUS, None, GIOVA).map(|t| t.0) == Some(g.pa(5)),
                )
            }
            Op::InvalidateUser => {
                let g = self.guest.as_ref().expect("guest");
                want(
                    "the guest's invalidation did not reach the TLB",
                    self.issued.get() == 1
                        && r.smmu_read(SID_C, None, GIOVA).map(|t| t.0) == Some(g.pa(5)),
                )
            }
            // Nothing empty is left: a second reclaim finds nothing (checked with no fault).
            Op::Reclaim => {
                r.vm.clear_injections();
                r.sm.clear_injections();
                let again = ctx.reclaim(self.a).map_err(|e| format!("{e:?}"))?;
                want("an empty table left behind", again == 0)
            }
            Op::DropContext => unreachable!(),
        }
    }

    /// Dirty tracking of D after a call that cleaned it: a read (with no fault armed) reports
    /// `expect` pages, then a write through each unit is reported by the next read (a lost
    /// invalidation would hide it behind a cached dirty or writable-clean entry).
    fn cleared_then_seen(&self, r: &Rig<'_, '_>, op: Op, expect: u32) -> Result<(), String> {
        let ctx = self.ctx();
        r.vm.clear_injections();
        r.sm.clear_injections();
        let seen = StdCell::new(0u32);
        let mut count = |_: Iova, _: u32| seen.set(seen.get() + 1);
        ctx.read_and_clear_dirty(self.d, Iova::ZERO, DIRTY_LEN, &mut count)
            .map_err(|e| format!("{e:?}"))?;
        if seen.get() != expect {
            return Err(format!("{op:?} left {} page(s) dirty", seen.get()));
        }
        r.vm.translate(RID_DIRTY as u16, None, D_MAP.0 + K4, Access::WRITE)
            .map_err(|e| format!("VT-d write: {e:?}"))?;
        r.sm.translate(SID_DIRTY, None, D_MAP.0, Access::WRITE)
            .map_err(|e| format!("SMMUv3 write: {e:?}"))?;
        seen.set(0);
        ctx.read_and_clear_dirty(self.d, Iova::ZERO, DIRTY_LEN, &mut count)
            .map_err(|e| format!("{e:?}"))?;
        if seen.get() != 2 {
            return Err(format!(
                "{op:?} succeeded but of a write through each unit after it {} reported",
                seen.get()
            ));
        }
        Ok(())
    }

    /// What holds after every call, whatever it returned.
    fn invariants(&self, r: &Rig<'_, '_>, settled: bool) -> Result<(), String> {
        // A nested child's CD table is the guest's, at an IPA the model's walk does not
        // translate: not the crate's memory.
        let guest = |a: u64| self.nested && (IPA_BASE..IPA_BASE + 6 * K4).contains(&a);
        let reach = r.nothing_freed_is_reached(guest)?;
        let (vmids, asids) = r.smmu.tags_in_use();
        for &(vmid, asid) in &reach.tags {
            let held = match asid {
                None => vmids.is_used(vmid),
                // A nested child's entries carry the guest's ASID under the parent's VMID.
                Some(_) if vmid != 0 && self.child.is_some() => vmids.is_used(vmid),
                Some(a) => asids.is_used(a) && (vmid == 0 || vmids.is_used(vmid)),
            };
            if !held {
                return Err(format!(
                    "the SMMUv3 TLB holds VMID {vmid} / ASID {asid:?}, free in the unit"
                ));
            }
        }
        // No VT-d cache entry carries a DID no live domain holds (DID 0 is reserved under
        // caching mode): a DID freed before its invalidation completed would be one.
        let live: std::collections::BTreeSet<u16> = (0..64u16)
            .chain(0x4000..0x4010)
            .filter_map(|h| r.vtd.domain_id(iommu_engine::iommu::DomainHandle(h)))
            .map(|did| did.get())
            .collect();
        for did in r.vm.cached_domain_ids() {
            if did != 0 && !live.contains(&did) {
                return Err(format!("VT-d caches hold DID {did}, owned by no domain"));
            }
        }
        // A device whose entry (in memory) reaches A's domain reaches its direct region there
        // one-to-one: a failed attach must not give the region back while the unit's entry
        // is present (it is kept until the attachment settles or is torn down).
        for (rid, probes) in [(RID_DIRECT, DIRECT_PROBES), (RID_DIRECT2, DIRECT2_PROBES)] {
            if r.vm
                .translate_in_memory(rid as u16, None, A_MAPS[0].0, Access::READ)
                .is_some()
            {
                for iova in probes {
                    let t =
                        r.vm.translate_in_memory(rid as u16, None, iova, Access::READ);
                    if t != Some(iova) {
                        return Err(format!(
                            "{rid:#x}'s entry reaches A but its direct region at {iova:#x} \
                             translates to {t:x?}"
                        ));
                    }
                }
            }
        }
        // A device whose entry (in memory) reaches an IOASID's domain is attached to it in the
        // context's books, settled or not: a failed attach must not forget an entry the unit
        // may have made present (0x1000 maps to a different address in each IOASID).
        if let Some(ctx) = self.ctx.as_ref() {
            for (d, vtd, id, pasid) in self.hardware_probes() {
                let t = if vtd {
                    r.vm.translate_in_memory(id as u16, pasid.map(Pasid::get), 0x1000, Access::READ)
                } else {
                    r.sm.translate_in_memory(id, pasid.map(Pasid::get), 0x1000, Access::READ)
                };
                let io = match t {
                    Some(0x5000_0000) => self.a,
                    Some(0x6000_0000) => self.b,
                    Some(0x5800_0000) => self.d,
                    Some(0x7000_0000) => self.pio,
                    Some(pa) => return Err(format!("{id:#x}/{pasid:?} reaches {pa:#x}")),
                    None => continue,
                };
                let att = ctx.attachment(d, pasid).map_err(|e| format!("{e:?}"))?;
                if !att.is_some_and(|a| a.ioasid == io || a.unsettled == Some(Some(io))) {
                    return Err(format!(
                        "{id:#x}/{pasid:?} reaches IOASID {} in the hardware, the books say \
                         {att:?}",
                        io.0
                    ));
                }
            }
        }
        let report = r.smmu.audit().map_err(|e| format!("SMMUv3 audit: {e}"))?;
        if settled && (report.unsettled, report.owing) != (0, 0) {
            return Err(format!(
                "SMMUv3: {} stream(s) unsettled, {} domain(s) owing an invalidation",
                report.unsettled, report.owing
            ));
        }
        let report = r.vtd.audit().map_err(|e| format!("VT-d audit: {e}"))?;
        if settled && (report.unsettled, report.owing) != (0, 0) {
            return Err(format!(
                "VT-d: {} attachment(s) unsettled, {} domain(s) owing an invalidation",
                report.unsettled, report.owing
            ));
        }
        if let Some(ctx) = self.ctx.as_ref() {
            let made = self.made_ioasid.get();
            for io in [self.a, self.b, self.d, self.pio, self.c]
                .into_iter()
                .chain(made)
            {
                match ctx.audit(io) {
                    Ok(()) | Err(Error::NoSuchIoasid(_)) => {}
                    Err(e) => return Err(format!("IOASID {}: {e}", io.0)),
                }
            }
        }
        Ok(())
    }
}

/// What a call may change, read before and after it: what the tables in memory translate for
/// each probed device (the models' walks with empty caches, so a stale cache cannot hide a
/// change), what each IOASID's record maps, which IOASIDs, devices and PASIDs exist, each
/// unit's audit counts (attachments, unsettled ones, domains, domains owing an invalidation
/// and their pages), the domains on each unit and the pages the allocator has out.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    vtd: Vec<Option<u64>>,
    smmu: Vec<Option<u64>>,
    record: Vec<Result<Option<u64>, Error>>,
    /// What the devices and A's record translate in the direct region.
    direct: Vec<Option<u64>>,
    /// What A's record translates in DIRECT2.
    direct2: Vec<Option<u64>>,
    /// What RID_DIRECT2 and SID_A (the domains of A) translate in DIRECT2.
    direct2_hw: Vec<Option<u64>>,
    devices: Vec<bool>,
    /// Where each device (`Cell::attached_probes`) is attached in the context's books.
    attachments: Vec<Option<Attachment>>,
    pasids: Vec<bool>,
    /// Whether D tracks dirty state; C's page-size limit.
    dirty: Option<bool>,
    limit: Option<Option<u32>>,
    vtd_audit: Option<VtdAudit>,
    smmu_audit: Option<SmmuAudit>,
    domains: (usize, usize),
    pages: usize,
}

const PROBE_IOVAS: [u64; 6] = [
    0x1000,
    0x20_0000,
    0x20_1000,
    0x40_0000,
    COPY_TO,
    COPY_TO + K4,
];
/// Where `Op::AttachDirect` maps: probed for every device and record too.
const DIRECT_PROBES: [u64; 2] = [DIRECT.0, DIRECT.0 + K4];
/// Where RID_DIRECT2's region is mapped from the setup.
const DIRECT2_PROBES: [u64; 2] = [DIRECT2.0, DIRECT2.0 + K4];

impl Snapshot {
    fn take(cell: &Cell<'_>, r: &Rig<'_, '_>) -> Self {
        let (p, q) = (Some(cell.p.get()), Some(cell.q.get()));
        let mut vtd = Vec::new();
        for (rid, pasid) in [
            (RID_A, None),
            (RID_A, p),
            (RID_NEW_BUS, None),
            (RID_NEW_BUS, q),
        ] {
            for iova in PROBE_IOVAS {
                vtd.push(r.vm.translate_in_memory(rid as u16, pasid, iova, Access::READ));
            }
        }
        // Through a nested child's guest tables.
        vtd.push(r.vm.translate_in_memory(RID_NEW_BUS as u16, None, GIOVA, Access::READ));
        let mut smmu = Vec::new();
        for (sid, ssid) in [(SID_A, None), (SID_B, None), (SID_C, q), (SID_DIRTY, None)] {
            for iova in PROBE_IOVAS {
                smmu.push(r.sm.translate_in_memory(sid, ssid, iova, Access::READ));
            }
        }
        // Through a nested child's guest tables.
        for sid in [SID_B, SID_C] {
            smmu.push(r.sm.translate_in_memory(sid, None, GIOVA, Access::READ));
        }
        let mut direct = Vec::new();
        for iova in DIRECT_PROBES {
            for rid in [RID_A, RID_DIRECT, RID_NEW_BUS] {
                direct.push(r.vm.translate_in_memory(rid as u16, None, iova, Access::READ));
            }
            direct.push(r.sm.translate_in_memory(SID_A, None, iova, Access::READ));
            if let Some(ctx) = cell.ctx.as_ref() {
                let m = ctx.translate(cell.a, Iova::new(iova));
                direct.push(m.ok().flatten().map(|m| m.pa.get()));
            }
        }
        let (mut direct2, mut direct2_hw) = (Vec::new(), Vec::new());
        for iova in DIRECT2_PROBES {
            direct2_hw.push(r.vm.translate_in_memory(RID_DIRECT2 as u16, None, iova, Access::READ));
            direct2_hw.push(r.sm.translate_in_memory(SID_A, None, iova, Access::READ));
            if let Some(ctx) = cell.ctx.as_ref() {
                let m = ctx.translate(cell.a, Iova::new(iova));
                direct2.push(m.ok().flatten().map(|m| m.pa.get()));
            }
        }
        let (mut record, mut devices, mut attachments) = (Vec::new(), Vec::new(), Vec::new());
        if let Some(ctx) = cell.ctx.as_ref() {
            let ioasids = [cell.a, cell.b, cell.d, cell.pio, cell.c];
            for io in ioasids.into_iter().chain(cell.made_ioasid.get()) {
                for iova in PROBE_IOVAS {
                    record.push(
                        ctx.translate(io, Iova::new(iova))
                            .map(|m| m.map(|m| m.pa.get())),
                    );
                }
            }
            let handles = [
                cell.v,
                cell.s,
                cell.v2,
                cell.s2,
                cell.s3,
                cell.vdirect,
                cell.vdirect2,
            ];
            for d in handles.into_iter().chain(cell.made_device.get()) {
                devices.push(ctx.device_info(d).is_ok());
            }
            for (d, pasid) in cell.attachment_probes() {
                attachments.push(ctx.attachment(d, pasid).ok().flatten());
            }
        }
        let pasids = [Some(cell.p), Some(cell.q), cell.made_pasid.get()]
            .into_iter()
            .flatten()
            .map(|p| r.reg.pasids().is_allocated(p))
            .collect();
        let ctx = cell.ctx.as_ref();
        Snapshot {
            dirty: ctx.and_then(|c| c.dirty_tracking(cell.d).ok()),
            limit: ctx.and_then(|c| c.max_page_log2(cell.c).ok()),
            vtd,
            smmu,
            record,
            direct,
            direct2,
            direct2_hw,
            devices,
            attachments,
            pasids,
            vtd_audit: r.vtd.audit().ok(),
            smmu_audit: r.smmu.audit().ok(),
            domains: (r.vtd_domains(), r.smmu_domains()),
            pages: r.live(),
        }
    }

    fn owing(&self) -> usize {
        self.vtd_audit.map_or(0, |a| a.owing) + self.smmu_audit.map_or(0, |a| a.owing)
    }

    fn unsettled(&self) -> usize {
        self.vtd_audit.map_or(0, |a| a.unsettled) + self.smmu_audit.map_or(0, |a| a.unsettled)
    }
}

/// After a failed `op`: no effect (`after == before`), or exactly the partial state the
/// documentation names for it (README, "Errors: what to do"; ARCHITECTURE.md, "Faults and
/// error paths"), which the retry then completes. Returns the name of the state found.
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
    let fail = |what: &str| {
        let b = format!("{before:?}");
        let a = format!("{after:?}");
        // The fields that differ, by name.
        let fields = |s: &str| s.split(", ").map(str::to_owned).collect::<Vec<_>>();
        let diff: Vec<String> = fields(&b)
            .into_iter()
            .zip(fields(&a))
            .filter(|(x, y)| x != y)
            .map(|(x, y)| format!("{x} -> {y}"))
            .take(6)
            .collect();
        Err(format!(
            "neither no effect nor the documented partial state ({what}): {diff:?}\n  before \
             {before:?}\n  after  {after:?}"
        ))
    };
    // The layer's books: records, IOASIDs, devices, PASIDs.
    let same_books = after.record == before.record
        && after.dirty == before.dirty
        && after.limit == before.limit
        && after.direct == before.direct
        && after.direct2 == before.direct2
        && after.devices == before.devices
        && after.attachments == before.attachments
        && after.pasids == before.pasids;
    // An attach's probe (`Cell::attachment_probes`) and the IOASID it attaches to.
    let attaching = match op {
        Op::AttachVtd => Some((2, cell.b)),
        Op::AttachSmmu => Some((3, cell.b)),
        Op::Replace => Some((0, cell.b)),
        Op::ReplaceSmmu => Some((1, cell.b)),
        Op::AttachNested => cell.child.map(|c| (3, c)),
        Op::AttachNestedVtd => cell.child.map(|c| (2, c)),
        Op::AttachDirect => Some((5, cell.a)),
        Op::AttachPasidVtd => Some((7, cell.pio)),
        Op::AttachPasidSmmu => Some((8, cell.pio)),
        _ => None,
    };
    // The attach's books say: attached, unsettled, still holding what it was attached to.
    let attached_unsettled = attaching.is_some_and(|(i, ioasid)| {
        after.attachments.iter().enumerate().all(|(k, a)| {
            if k == i {
                *a == Some(Attachment {
                    ioasid,
                    unsettled: Some(before.attachments[k].map(|b| b.ioasid)),
                })
            } else {
                *a == before.attachments[k]
            }
        })
    });
    // The direct region, unchanged or mapped one-to-one (in A's domains and record; RID_DIRECT
    // reaches it if its entry was made present, RID_NEW_BUS is not attached to A).
    let direct_kept = after.direct == before.direct
        || (op == Op::AttachDirect
            && after.direct.chunks(5).zip(DIRECT_PROBES).all(|(v, iova)| {
                v[0] == Some(iova)
                    && (v[1] == Some(iova) || v[1].is_none())
                    && v[2].is_none()
                    && v[3] == Some(iova)
                    && v[4] == Some(iova)
            }));
    let pending = matches!(e, Error::InvalidationPending { .. });
    // SMMUv3 service failure mode: that unit translates nothing until it is reset.
    let smmu_failed = |a: &Snapshot| a.smmu.iter().all(Option::is_none);
    let smmu_same = after.smmu == before.smmu || smmu_failed(after);
    let state = match op {
        // `unmap` removed the range from every domain and from the record; the unit that
        // did not confirm the invalidation owes it (its gather is kept, its pages with it).
        Op::Unmap if pending => {
            let n = PROBE_IOVAS.len();
            let gone = |v: &[Option<u64>], b: &[Option<u64>]| {
                v.iter().zip(b).enumerate().all(|(i, (x, y))| {
                    let unmapped = i % n != 0 && i < n; // RID_A / SID_A at 0x20_0000, 0x20_1000
                    if unmapped {
                        x.is_none()
                    } else {
                        x == y
                    }
                })
            };
            let record_gone =
                after
                    .record
                    .iter()
                    .zip(&before.record)
                    .enumerate()
                    .all(|(i, (x, y))| {
                        if i == 1 || i == 2 {
                            *x == Ok(None)
                        } else {
                            x == y
                        }
                    });
            // The unit that confirmed freed the tables the unmap emptied; the one that did
            // not keeps them with the gather.
            let ok = gone(&after.vtd, &before.vtd)
                && (gone(&after.smmu, &before.smmu) || smmu_failed(after))
                && record_gone
                && after.devices == before.devices
                && after.pasids == before.pasids
                && after.owing() == before.owing() + 1
                && after.domains == before.domains
                && after.pages <= before.pages;
            if !ok {
                return fail("range unmapped everywhere, invalidation pending");
            }
            "unmapped, invalidation pending"
        }
        // A nested child's attach refused (no memory) after the parent's domain was built on
        // the unit for it: the child's domain is freed, the parent keeps its domain (as after
        // the child's detach), freed with the parent; nothing translates differently.
        Op::AttachNested | Op::AttachNestedVtd
            if same_books
                && after.vtd == before.vtd
                && after.smmu == before.smmu
                && after.unsettled() == before.unsettled()
                && after.owing() == before.owing()
                && after.domains.0 + after.domains.1 == before.domains.0 + before.domains.1 + 1
                && after.pages > before.pages =>
        {
            "nest parent's domain kept"
        }
        // The guest's invalidation, or an answer to a page fault, met a unit in service
        // failure: nothing else moved (the stalled write is terminated with everything else).
        Op::InvalidateUser | Op::RespondFaultSmmu | Op::RespondStall
            if smmu_failed(after)
                && same_books
                && after.vtd == before.vtd
                && after.unsettled() == before.unsettled()
                && after.domains == before.domains
                && after.pages == before.pages =>
        {
            "SMMUv3 in service failure"
        }
        // `read_and_clear_dirty` cleaned the dirty state; the invalidation is owed.
        Op::ReadClearDirty | Op::GetDirtyBitmap
            if pending
                && same_books
                && after.vtd == before.vtd
                && smmu_same
                && after.owing() == before.owing() + 1
                && after.domains == before.domains
                && after.pages == before.pages =>
        {
            "dirty state cleaned, invalidation pending"
        }
        // An attach whose unit failed part-way (a wait ran out, the unit reported an error):
        // the unit may have made the entry present, so the layer's books say attached,
        // unsettled, holding the new IOASID (its domain, built if needed, and the device's
        // direct regions mapped there) and the old one; the unit may count one attachment
        // unsettled (not when it failed before writing anything: SMMUv3 service failure).
        Op::AttachVtd
        | Op::AttachSmmu
        | Op::Replace
        | Op::ReplaceSmmu
        | Op::AttachDirect
        | Op::AttachPasidVtd
        | Op::AttachPasidSmmu
        | Op::AttachNested
        | Op::AttachNestedVtd
            if matches!(e, Error::Iommu(i) if i.is_unit_fault())
                && attached_unsettled
                && after.record == before.record
                && direct_kept
                && after.devices == before.devices
                && after.pasids == before.pasids
                && after.unsettled() <= before.unsettled() + 1
                && after.owing() == before.owing()
                // A nested child's domain is built over its parent's: two.
                && after.domains.0 + after.domains.1
                    <= before.domains.0
                        + before.domains.1
                        + 1
                        + usize::from(matches!(op, Op::AttachNested | Op::AttachNestedVtd))
                && after.domains.0 >= before.domains.0
                && after.domains.1 >= before.domains.1
                && after.pages >= before.pages =>
        {
            "attached, unit unsettled"
        }
        // A stall stream's detach whose CMD_STALL_TERM (or its sync) failed: on the unit the
        // attachment is gone (the STE aborts, synced) and the termination owed, the stall
        // kept in the unit's book; the layer still holds the device attached, so the retry
        // reaches the unit, which sends CMD_STALL_TERM again; nothing else moved.
        Op::DetachStall
            if same_books
                && after.vtd == before.vtd
                && smmu_same
                && after.unsettled() == before.unsettled()
                && after.owing() == before.owing()
                && after.domains == before.domains =>
        {
            "stall termination owed"
        }
        // A detach or free whose unit failed: the layer's books unchanged; on the unit, one
        // attachment left unsettled (its entry torn down; its retry completes it).
        Op::DetachVtd
        | Op::DetachSmmu
        | Op::DetachStall
        | Op::DetachPasid
        | Op::FreeIoasid
        | Op::DetachDirect
            if same_books
                && after.unsettled() == before.unsettled() + 1
                && after.owing() == before.owing()
                && after.domains.0 + after.domains.1 <= before.domains.0 + before.domains.1 + 1
                && after.domains.0 >= before.domains.0
                && after.domains.1 >= before.domains.1
                && after.pages >= before.pages =>
        {
            "unit attachment unsettled"
        }
        // A scalable-mode VT-d attach out of memory: the device's context entry (and its
        // context table) stay present over an empty PASID directory, blocking like no entry;
        // nothing translates differently, the domain the attach built is freed again.
        Op::AttachVtd | Op::AttachPasidVtd | Op::AttachDirect
            if *e == Error::Iommu(iommu_engine::iommu::Error::NoMemory)
                && same_books
                && after.vtd == before.vtd
                && after.smmu == before.smmu
                && after.unsettled() == before.unsettled()
                && after.owing() == before.owing()
                && after.domains == before.domains
                && after.pages > before.pages =>
        {
            "VT-d context entry over an empty PASID directory"
        }
        // An attach whose new domain could be neither filled nor freed (caching mode: the
        // fill's map and the free's invalidation both wait on the queue): the domain is parked
        // in the context, owing the undo's invalidation, and freed by the next attach (the
        // retry) or the context's drop; nothing else moved.
        Op::AttachVtd | Op::Replace | Op::AttachPasidVtd | Op::AttachDirect
            if same_books
                && after.vtd == before.vtd
                && after.smmu == before.smmu
                && after.unsettled() == before.unsettled()
                && after.domains == (before.domains.0 + 1, before.domains.1)
                && after.owing() <= before.owing() + 1
                && after.pages > before.pages =>
        {
            "failed attach's domain parked"
        }
        // An attach that mapped the device's direct regions, then failed: they are unmapped
        // again from every domain and the record, but a unit did not confirm that unmap's
        // invalidation and owes it (as after a failed `map`).
        Op::AttachDirect
            if pending
                && same_books
                && after.vtd == before.vtd
                && smmu_same
                && after.unsettled() <= before.unsettled() + 1
                && after.owing() == before.owing() + 1
                && after.domains == before.domains
                && after.pages >= before.pages =>
        {
            "direct regions unmapped again, invalidation pending"
        }
        // A detach of a device with a direct region that the unit confirmed: the device is
        // detached in the books and blocked on the unit, its region unmapped from every domain
        // and the record, but a unit did not confirm that unmap's invalidation and owes it (as
        // after a failed `unmap`); the detach retried settles it.
        Op::DetachDirect
            if pending
                && after.record == before.record
                && after.direct == before.direct
                && after.direct2.iter().all(Option::is_none)
                && after.direct2_hw.iter().all(Option::is_none)
                && after.devices == before.devices
                && after.pasids == before.pasids
                && after.attachments.iter().enumerate().all(|(k, a)| {
                    if k == 9 {
                        a.is_none()
                    } else {
                        *a == before.attachments[k]
                    }
                })
                && after.vtd == before.vtd
                && smmu_same
                && after.unsettled() <= before.unsettled()
                && after.owing() <= before.owing() + 1
                && after.domains == before.domains
                && after.pages <= before.pages =>
        {
            "detached, direct regions unmapped, invalidation pending"
        }
        // A reclaim whose unit did not confirm the invalidation: the empty tables are unlinked
        // (nothing translates differently), the unit keeps their pages and owes the
        // invalidation; the retry issues it and frees them.
        Op::Reclaim
            if same_books
                && after.vtd == before.vtd
                && smmu_same
                && after.unsettled() == before.unsettled()
                && after.owing() > before.owing()
                && after.domains == before.domains
                && after.pages <= before.pages =>
        {
            "empty tables unlinked, invalidation owed"
        }
        // A unit did not confirm the switch of dirty tracking: it counts as off (reads are
        // refused) until a retry; some domains may have switched, nothing else moved (their
        // invalidation may be owed).
        Op::SetDirtyTracking | Op::SetDirtyTrackingOff
            if after.dirty == Some(false)
                && after.record == before.record
                && after.limit == before.limit
                && after.devices == before.devices
                && after.attachments == before.attachments
                && after.pasids == before.pasids
                && after.vtd == before.vtd
                && smmu_same
                && after.unsettled() == before.unsettled()
                && after.owing() <= before.owing() + 1
                && after.domains == before.domains
                && after.pages == before.pages =>
        {
            "dirty tracking off until retried"
        }
        // A copy whose later run failed after an earlier one was mapped: the earlier run is
        // unmapped again (nothing mapped), the tables its map linked stay, empty.
        Op::Copy
            if !pending
                && same_books
                && after.vtd == before.vtd
                && after.smmu == before.smmu
                && after.owing() == before.owing()
                && after.domains == before.domains
                && after.pages > before.pages =>
        {
            "nothing copied, empty tables linked"
        }
        // `map` mapped nothing (rolled back everywhere), but the unit that did not confirm the
        // rollback's invalidation owes it, with the tables the rollback unlinked.
        Op::Map | Op::Copy
            if pending
                && same_books
                && after.vtd == before.vtd
                && after.smmu == before.smmu
                && after.owing() == before.owing() + 1
                && after.domains == before.domains
                && after.pages >= before.pages =>
        {
            "nothing mapped, invalidation pending"
        }
        _ => return fail("none documented"),
    };
    Ok(state)
}

fn inject(r: &Rig<'_, '_>, fault: Fault) {
    match fault {
        Fault::None => {}
        Fault::Vtd(f) => r.vm.inject(f),
        Fault::Smmu(f) => r.sm.inject(f),
        Fault::Alloc(k) => r.arena.set_fail_policy(FailPolicy::Nth(k)),
        Fault::VtdFaultOverflow => {
            let records = r.vm.fault_records().len() as u64;
            for i in 0..records + 2 {
                let _ =
                    r.vm.translate(RID_A as u16, None, FAULT_IOVA + i * K4, Access::READ);
            }
        }
        Fault::SmmuEventOverflow => {
            for i in 0..SMMU_EVENTS + 2 {
                let _ =
                    r.sm.translate(FAULT_SID, None, FAULT_IOVA + i * K4, Access::READ);
            }
        }
    }
}

/// Where the overflow faults' DMAs go: mapped in no IOASID.
const FAULT_IOVA: u64 = 0x3000_0000;
/// A StreamID no device uses (its STE invalid): every DMA of it is recorded (C_BAD_STE),
/// whatever the call attached or detached.
const FAULT_SID: u32 = 0x600;
/// The SMMUv3 event queue's entries (the driver's default, 2^7).
const SMMU_EVENTS: u64 = 1 << 7;

/// After an overflow fault: the drain reports the overflow and acknowledges it, then a new
/// fault is recorded and the next drain sees exactly it, without overflow.
fn overflow_drained(r: &Rig<'_, '_>, fault: Fault) -> Result<(), String> {
    match fault {
        Fault::VtdFaultOverflow => {
            let first = r.vtd.drain_faults(|_, _| {});
            let _ = r.vm.translate(RID_A as u16, None, FAULT_IOVA, Access::READ);
            let again = r.vtd.drain_faults(|_, _| {});
            if !first.overflowed || first.still_pending || again.overflowed || again.records != 1 {
                return Err(format!(
                    "VT-d fault records overflowed: drained {first:?}, then {again:?}"
                ));
            }
        }
        Fault::SmmuEventOverflow => {
            let first = r.smmu.handle_events(usize::MAX, |_| {}).events;
            let _ = r.sm.translate(FAULT_SID, None, FAULT_IOVA, Access::READ);
            let again = r.smmu.handle_events(usize::MAX, |_| {}).events;
            if !first.overflowed || again.overflowed || again.consumed != 1 {
                return Err(format!(
                    "SMMUv3 event queue overflowed: drained {first:?}, then {again:?}"
                ));
            }
        }
        _ => return Ok(()),
    }
    OVERFLOWS.with(|n| n.set(n.get() + 1));
    Ok(())
}

thread_local! {
    /// Cells whose overflow the drain reported and acknowledged.
    static OVERFLOWS: StdCell<u32> = const { StdCell::new(0) };
}

/// Clears the fault and lets the units recover as an embedder would: interrupt handlers run;
/// an SMMU in service failure mode is reset and enabled again.
fn recover(r: &Rig<'_, '_>) -> Result<(), String> {
    r.arena.set_fail_policy(FailPolicy::Never);
    r.vm.clear_injections();
    r.sm.clear_injections();
    if r.sm.in_service_failure() {
        r.sm.reset();
    }
    r.drain();
    if r.smmu.has_failed() {
        r.smmu
            .enable()
            .map_err(|e| format!("SMMUv3 enable after reset: {e:?}"))?;
    }
    Ok(())
}

/// What a cell ended as, and the pages live after its teardown.
struct Outcome {
    /// The state the failed call left (its retry completed it), or `None`: it succeeded.
    retried: Option<&'static str>,
    census: Census,
    live_after: usize,
}

/// Device-TLB and PASID-based device-TLB invalidation descriptors (types 3 and 8).
fn is_device_tlb(d: &[u64; 4]) -> bool {
    matches!(d[0] & 0xf | (d[0] >> 5) & 0x70, 0x3 | 0x8)
}

/// CMD_SYNC (opcode 0x46).
fn is_sync(c: &[u64; 2]) -> bool {
    c[0] & 0xff == 0x46
}

/// Bit `i` set: the `i`-th CMD_SYNC of `log` (of the first 128) follows a CMD_ATC_INV issued
/// since the previous CMD_SYNC.
fn atc_syncs(log: &[[u64; 2]]) -> u128 {
    let (mut mask, mut i, mut atc) = (0u128, 0u32, false);
    for c in log {
        if c[0] & 0xff == 0x40 {
            atc = true;
        } else if is_sync(c) {
            if atc && i < 128 {
                mask |= 1 << i;
            }
            (i, atc) = (i + 1, false);
        }
    }
    mask
}

fn run_cell(
    op: Op,
    fault: Fault,
    clean_live: Option<usize>,
    caching_mode: bool,
) -> Result<Outcome, String> {
    let (v, s) = setups(caching_mode, op);
    with_rig(v, s, |r| {
        let mut cell = Cell::new(r, op);
        cell.invariants(r, true)
            .map_err(|e| format!("after setup: {e}"))?;
        if op == Op::Reclaim {
            // The last leaves of A's 2 MiB table at 0x20_0000 go: the table stays linked,
            // empty, in the record and both domains (reclaim runs every few unmaps only).
            cell.ctx()
                .unmap(cell.a, Iova::new(0x20_0000), 2 * K4)
                .map_err(|e| format!("setup unmap: {e:?}"))?;
            r.drain();
        }
        let before = Snapshot::take(&cell, r);
        // The census counts from here: what the call (and the fault's own DMAs) did.
        let allocs = r.arena.stats().allocs;
        let (descriptors, commands) = (r.vm.descriptor_log().len(), r.sm.command_log().len());
        let counters = Counters::take(r);
        inject(r, fault);
        let overflowing = matches!(fault, Fault::VtdFaultOverflow | Fault::SmmuEventOverflow);
        if fault == Fault::VtdFaultOverflow
            && r.vm.read32(iommu_engine::sim::vtd::regs::FSTS)
                & iommu_engine::sim::vtd::regs::FSTS_PFO
                == 0
        {
            return Err("the faulting DMAs did not overflow the VT-d fault records".into());
        }
        if fault == Fault::SmmuEventOverflow && r.sm.stats().events_lost == 0 {
            return Err("the faulting DMAs did not overflow the SMMUv3 event queue".into());
        }
        cell.attempt_commands.set(r.sm.command_log().len());
        let fired_before = Counters::take(r).fired;
        let first = cell.run(r, op);
        let after = Counters::take(r);
        // Every cell's fault must have met the call (an overflow meets it before the call and
        // is checked by the drain below): a fault that never fires proves nothing.
        let fired = after.fired > fired_before;
        if !matches!(
            fault,
            Fault::None | Fault::VtdFaultOverflow | Fault::SmmuEventOverflow
        ) && !fired
        {
            return Err(format!(
                "the fault never fired (the call returned {first:?})"
            ));
        }
        if fault == Fault::None && fired {
            return Err("a fault fired in the clean run".into());
        }
        let vtd_log = &r.vm.descriptor_log()[descriptors..];
        let smmu_log = &r.sm.command_log()[commands..];
        let count = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let census = Census {
            descriptors: count(vtd_log.len()),
            device_tlb: count(vtd_log.iter().filter(|d| is_device_tlb(d)).count()),
            commands: count(smmu_log.len()),
            syncs: count(smmu_log.iter().filter(|c| is_sync(c)).count()),
            atc_syncs: atc_syncs(smmu_log),
            allocations: r.arena.stats().allocs - allocs,
            vtd_waits: after.vtd_waits - counters.vtd_waits,
            vtd_gcmd: after.vtd_gcmd - counters.vtd_gcmd,
            vtd_wbf: after.vtd_wbf - counters.vtd_wbf,
            vtd_writes: [0, 1, 2].map(|i| after.vtd_writes[i] - counters.vtd_writes[i]),
            smmu_msi: after.smmu_msi - counters.smmu_msi,
            smmu_gerror_reads: after.smmu_gerror_reads - counters.smmu_gerror_reads,
            smmu_cr0: after.smmu_cr0 - counters.smmu_cr0,
            smmu_gbpa: after.smmu_gbpa - counters.smmu_gbpa,
        };
        r.arena.set_fail_policy(FailPolicy::Never);
        // The embedder's interrupt handler drains the faults the call's DMAs raised.
        if overflowing {
            overflow_drained(r, fault)?;
        }
        r.drain();
        let retried = match first {
            Ok(()) => {
                // Service failure mode terminates every transaction until the SMMU is reset:
                // the effect can only be seen after recovery.
                let dead = r.sm.in_service_failure();
                if !dead {
                    cell.effect(r, op)?;
                }
                cell.invariants(r, op != Op::DropContext)?;
                recover(r)?;
                if dead {
                    cell.effect(r, op)?;
                }
                None
            }
            Err(e) if transient(fault) => {
                return Err(format!(
                    "a transient fault failed the call ({e:?}): the command is to be run again"
                ))
            }
            Err(e) => {
                cell.invariants(r, false)
                    .map_err(|x| format!("after {e:?}: {x}"))?;
                let state = partial_state(&cell, op, &e, &before, &Snapshot::take(&cell, r))
                    .map_err(|x| format!("after {e:?}: {x}"))?;
                recover(r)?;
                // An SMMUv3 fault may have lost the ATC invalidation: the retry must issue it
                // (a VT-d fault leaves the SMMUv3's, confirmed in the first attempt, standing).
                if matches!(fault, Fault::Smmu(_)) {
                    cell.attempt_commands.set(r.sm.command_log().len());
                }
                if matches!(
                    op,
                    Op::RespondFault | Op::RespondFaultSmmu | Op::RespondStall
                ) {
                    // The group left the queue with the failed answer (the device waits for its
                    // own timeout): a retry is refused, nothing is sent twice.
                    let cookie = cell.cookie.expect("cookie");
                    let again = cell.run(r, op);
                    let refused = Err(Error::Fault(FaultError::NotOutstanding(cookie)));
                    if again != refused {
                        return Err(format!("failed with {e:?}, the retry returned {again:?}"));
                    }
                    if r.vm.page_responses().iter().any(|g| !g.expected)
                        || r.sm.pri_responses().iter().any(|g| !g.expected)
                    {
                        return Err(format!("failed with {e:?}: an unexpected answer was sent"));
                    }
                    let held =
                        r.sm.stalled()
                            .iter()
                            .any(|t| (t.sid, Some(t.stag)) == (SID_STALL, cell.stag));
                    if held {
                        // CMD_RESUME never ran: the write stays stalled until its stream's
                        // detach terminates it (checked after the teardown).
                        Some("answer lost, stall held until the detach")
                    } else {
                        Some("answer lost, group gone")
                    }
                } else {
                    cell.run(r, op)
                        .map_err(|x| format!("failed with {e:?}, the retry failed with {x:?}"))?;
                    cell.effect(r, op)
                        .map_err(|x| format!("failed with {e:?}, then retried: {x}"))?;
                    Some(state)
                }
            }
        };
        // A device the drop stranded: the embedder detaches it on its unit (the documented
        // recovery), then lets it be bound again.
        for l in std::mem::take(&mut cell.stranded) {
            let unit: &dyn Iommu = if l.unit == VTD { r.vtd } else { r.smmu };
            for pasid in [None, Pasid::new(1)] {
                let _ = unit.detach(l.id, pasid);
            }
            if !r.reg.release_stranded(l) {
                return Err(format!("{l:?} reported stranded, not releasable"));
            }
        }
        cell.invariants(r, true)
            .map_err(|x| format!("after recovery: {x}"))?;
        // Tear down: nothing may stay behind.
        drop(cell.ctx.take());
        r.drain();
        if let Some(g) = cell.guest.take() {
            for p in g.pages {
                // SAFETY: the context that mapped them is gone, and no unit was pointed at
                // them by anything else.
                unsafe { iommu_engine::mem::PageAllocator::free(r.arena, p, 12) };
            }
        }
        if let Some(t) = r.sm.stalled().first() {
            return Err(format!("{t:?} still stalled after its stream's detach"));
        }
        let leaked = r.reg.leaked();
        if op != Op::DropContext && leaked != Leaked::default() {
            return Err(format!("the clean teardown leaked {leaked:?}"));
        }
        if (r.vtd_domains(), r.smmu_domains()) != (0, 0) && leaked.domains == 0 {
            return Err(format!(
                "domains left after teardown: VT-d {}, SMMUv3 {}",
                r.vtd_domains(),
                r.smmu_domains()
            ));
        }
        cell.invariants(r, true)
            .map_err(|x| format!("after teardown: {x}"))?;
        let live_after = r.live();
        if let Some(clean) = clean_live.filter(|_| leaked == Leaked::default()) {
            if live_after > clean {
                return Err(format!(
                    "{} page(s) more than the clean run's teardown left",
                    live_after - clean
                ));
            }
        }
        for (label, id) in [(vtd_dev(RID_A), RID_A), (vtd_dev(RID_NEW_BUS), RID_NEW_BUS)] {
            if r.vm
                .translate(id as u16, None, 0x1000, Access::READ)
                .is_ok()
            {
                return Err(format!("{label:?} translates after teardown"));
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
fn ioasid_fault_matrix() {
    let fixed = fixed_faults();
    let (mut cells, mut ok, mut retried, mut failures) = (0, 0, 0, String::new());
    let mut states = std::collections::BTreeMap::<&str, usize>::new();
    // Faults the operation's clean run never reaches (no wait, register or GERROR read for
    // them): not run, counted.
    let mut unreached = 0usize;
    let mut overflow_cells = 0usize;
    let mut row = String::new();
    let mut tally = |op: Op, fault: Fault, r: &Result<Outcome, String>, row: &mut String| {
        cells += 1;
        let cm = if row.starts_with('c') {
            " (caching mode)"
        } else {
            ""
        };
        match r {
            Ok(Outcome {
                retried: Some(state),
                ..
            }) => {
                retried += 1;
                *states.entry(state).or_default() += 1;
                row.push('R');
            }
            Ok(_) => {
                ok += 1;
                row.push('.');
            }
            Err(why) => {
                row.push('X');
                let _ = writeln!(failures, "{op:?}{cm} x {fault:?}: {why}");
            }
        }
    };
    // The scalable VT-d unit, then the same under caching mode (maps invalidate, so a map, an
    // attach's fill and its undo can fail on the queue) for the calls that reach the VT-d
    // unit, against the VT-d faults only.
    let on_vtd = [
        Op::Copy,
        Op::SetDirtyTracking,
        Op::GetDirtyBitmap,
        Op::RespondFault,
        Op::DispatchFaults,
        Op::AttachVtd,
        Op::Replace,
        Op::AttachDirect,
        Op::DetachVtd,
        Op::DetachDirect,
        Op::AttachPasidVtd,
        Op::DetachPasid,
        Op::Map,
        Op::Unmap,
        Op::Reclaim,
        Op::FreeIoasid,
        Op::DropContext,
    ];
    // `IE_MATRIX_OPS=DetachDirect,Map` runs only those rows (while working on them).
    let only = std::env::var("IE_MATRIX_OPS").ok();
    let runs = OPS
        .iter()
        .map(|&op| (op, false))
        .chain(on_vtd.iter().map(|&op| (op, true)))
        .filter(|(op, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|n| n == format!("{op:?}")))
        });
    for (op, caching_mode) in runs {
        row.clear();
        if caching_mode {
            row.push_str("cm ");
        }
        // The clean run counts what the operation uses and what its teardown leaves.
        let clean = run_cell(op, Fault::None, None, caching_mode);
        tally(op, Fault::None, &clean, &mut row);
        let Ok(clean) = clean else { continue };
        let positional = positional_faults(clean.census);
        let faults = fixed[1..]
            .iter()
            .copied()
            .chain(positional)
            .filter(|f| !caching_mode || !matches!(f, Fault::Smmu(_) | Fault::SmmuEventOverflow))
            .filter(|&f| {
                let reached = reaches(&clean.census, f);
                if !reached {
                    unreached += 1;
                }
                reached
            });
        for fault in faults {
            if matches!(fault, Fault::VtdFaultOverflow | Fault::SmmuEventOverflow) {
                overflow_cells += 1;
            }
            let r = run_cell(op, fault, Some(clean.live_after), caching_mode);
            tally(op, fault, &r, &mut row);
        }
        // One line per operation: `.` Ok, `R` failed then retried, `X` broken.
        println!("{:>18} {:?} {row}", format!("{op:?}"), clean.census);
    }
    println!(
        "IOASID fault matrix: {} operations x ({} fixed faults + every fault at every \
         descriptor, command, CMD_SYNC and allocation of the operation), then {} of them on a \
         VT-d unit under caching mode x its faults = {cells} cells; {ok} succeeded, {retried} \
         failed and were retried",
        OPS.len(),
        fixed.len(),
        on_vtd.len()
    );
    println!("what the failed calls left: {states:?}");
    let overflows = OVERFLOWS.with(StdCell::get);
    println!("fault record / event queue overflows reported and acknowledged: {overflows}");
    println!("faults the clean runs never reach (not run): {unreached}");
    assert!(failures.is_empty(), "cells that do not hold:\n{failures}");
    assert_eq!(
        overflows as usize, overflow_cells,
        "{overflows} overflows checked in {overflow_cells} cells"
    );
}
