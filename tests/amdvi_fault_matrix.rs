//! The AMD-Vi fault matrix (as `tests/vtd_fault_matrix.rs` for VT-d): every operation of the
//! unit through the `Iommu` trait against every fault the model injects at every point the
//! operation reaches: an illegal command (ILLEGAL_COMMAND_ERROR) or an unreadable one
//! (COMMAND_HARDWARE_ERROR) at each of its first commands, a COMPLETION_WAIT that never
//! completes at each of its first waits (and every wait after it), run bits that never clear
//! (`CmdBufRun`, `EventLogRun`: enable and disable), an ATS device that does not answer INVALIDATE_IOTLB_PAGES (IOTLB_INV_TIMEOUT:
//! `DEV` is bound with ATS, so every flush of its domain reaches its IOTLB), and allocation
//! failure at each of its first allocations.
//!
//! PASID attach and detach (GCR3 table; the first PASID of a device allocates the table, the
//! last one frees it) and dirty tracking (`set_dirty_tracking` on and off, the dirty
//! read-and-clear with its flush) run on a model whose EFR has `GTSup` and `GIoSup` with
//! 16-bit PASIDs and `HDSup`; the other operations on QEMU's EFR. `DEV3`'s PASIDs are ATS attachments, so
//! their detaches reach its IOTLB.
//!
//! After every cell, and again after the retry of a failed call with the fault cleared:
//! - no page-table page the model can still reach (the latched device table's entries, the
//!   cached entries, the page directory cache, a GCR3 table and the v2 tables its entries
//!   name) is memory the allocator has back;
//! - no cache holds an entry tagged with a domain ID no live domain carries (nor the GCR3
//!   table's `DomainID` once the device's last PASID was detached);
//! - `DEV3`'s PASID DMA is translated by the PASID's domain or refused;
//! - a call during which the unit logged IOTLB_INV_TIMEOUT does not return `Ok`;
//! - `Ok` (of the call or of its retry) means the whole effect, checked by DMA through the
//!   model;
//! - after a failed enable (a takeover of the enabled unit, or from off) or disable, `DEV`'s
//!   DMA is translated by its domain or refused, never passed through untranslated while the
//!   unit reads enabled;
//! - at the end, tearing everything down returns every page, with no bad free.

use std::collections::BTreeSet;

use iommu_engine::amdvi::unit::GCR3_DOMAIN_ID_BASE;
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::iommu::{
    DeviceHints, DeviceId, DomainConfig, DomainHandle, Iommu, Pasid, ReclaimScope,
};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{DirtyRead, Gather, Prot};
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig, Injection};
use iommu_engine::sim::{Arena, FailPolicy};

type Unit<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 8>;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const DEV: DeviceId = DeviceId(0x20);
const DEV2: DeviceId = DeviceId(0x28);
/// The PASID device (ATS): its PASIDs translate through the v2 domain `p`.
const DEV3: DeviceId = DeviceId(0x30);
const PA_A: u64 = 0xA000_0000;
const PA_B: u64 = 0xB000_0000;
/// What `p` maps at 0x1000.
const PA_P: u64 = 0xC000_0000;
/// What `q` (the PASID's new domain of the replace rows) maps at 0x1000.
const PA_Q: u64 = 0xD000_0000;
/// What `c` (the second move's target of `ReplaceAgain`) maps at 0x1000.
const PA_C: u64 = 0xE000_0000;
const NEW_IOVA: u64 = 0x4000_0000;

#[derive(Clone, Copy, Debug)]
enum Op {
    Map,
    UnmapFlush,
    UnmapTablesFlush,
    Attach,
    Replace,
    /// `DEV` (ATS, its ATC warm) moved to `b` with the plain `attach`: no ATS hint, so its
    /// entry's `I` goes off. After a failure (before the retry) `a`'s page is unmapped and `a`
    /// flushed; after the retry or an `Ok`, `DEV`'s ATC must hold nothing of `a`.
    ReplaceWithoutAts,
    /// A second failed move: `DEV`'s move to `b` failed (IOTLB_INV_TIMEOUT: its ATC kept `a`'s
    /// page) and was not retried; now `DEV` moves on to `c`. After a failure (before the
    /// retry) `a`'s and `b`'s pages are unmapped and both flushed: `DEV` must reach neither.
    ReplaceAgain,
    /// As `Replace`; after a failure (before the retry) `a` is freed. A move whose
    /// INVALIDATE_DEVTAB_ENTRY failed leaves `DEV`'s cached entry naming `a`'s root: the free
    /// must invalidate it before `a`'s tables go.
    ReplaceFreeOld,
    /// As `ReplaceAgain` on a model whose IOTLB is looked up by device ID (as QEMU's), the
    /// first move having lost its INVALIDATE_IOMMU_PAGES of `a`'s ID (IllegalCommandAt(2)):
    /// after the second move returns `Ok`, `DEV` must not reach `a`'s page through an IOTLB
    /// entry cached for it under `a`.
    ReplaceAgainPerDevice,
    Detach,
    DomainFree,
    Reclaim,
    DomainAlloc,
    /// `enable` of the enabled unit: the takeover path (a unit found enabled, its command
    /// buffer and event log running).
    Takeover,
    /// `enable` after `disable` (the buffer and log allocated again).
    Enable,
    Disable,
    /// The first PASID (7) of `DEV3`: a GCR3 table allocated, the device's entry made `GV`.
    PasidAttachFirst,
    /// PASID 7 of `DEV3` beside its PASID 5: the GCR3 entry and the device's entry rewritten.
    PasidAttach,
    /// PASID 7 of `DEV3`, its PASID 5 staying.
    PasidDetach,
    /// `DEV3`'s only PASID (5): the entry blocking, the GCR3 table freed after the wait.
    PasidDetachLast,
    /// PASID 5 of `DEV3` moved from `p` to `q`; after a failure (before the retry) `p`'s
    /// page is unmapped and `p` flushed.
    PasidReplace,
    /// As `PasidReplace`; after a failure `p` is freed.
    PasidReplaceFreeOld,
    /// As `PasidReplace`, but a failure is followed by the PASID's detach instead of a
    /// retry: nothing of `p` or `q` is left for the PASID, every page comes back.
    PasidReplaceThenDetach,
    /// As `PasidAttachFirst`, a failure followed by the PASID's detach instead of a retry:
    /// the device's entry blocking, its GCR3 table freed, every page back.
    PasidAttachFirstThenDetach,
    /// `set_dirty_tracking(a, true)` (`DEV`'s entry gets `HAD`), after a write under an
    /// earlier tracking period left a leaf dirty.
    DirtyOn,
    /// `set_dirty_tracking(a, false)`.
    DirtyOff,
    /// `read_dirty` (`Clear`) of `a` after `DEV` wrote 0x1000, then the flush of its gather.
    DirtyReadAndClear,
}

impl Op {
    /// `DEV3`'s PASIDs when the call starts.
    fn pasids_before(self) -> &'static [u32] {
        match self {
            Op::PasidAttach
            | Op::PasidDetachLast
            | Op::PasidReplace
            | Op::PasidReplaceFreeOld
            | Op::PasidReplaceThenDetach => &[5],
            Op::PasidDetach => &[5, 7],
            _ => &[],
        }
    }

    fn is_pasid(self) -> bool {
        matches!(
            self,
            Op::PasidAttachFirst
                | Op::PasidAttach
                | Op::PasidDetach
                | Op::PasidDetachLast
                | Op::PasidReplace
                | Op::PasidReplaceFreeOld
                | Op::PasidReplaceThenDetach
                | Op::PasidAttachFirstThenDetach
        )
    }

    /// A failure is followed by a detach of what the call attached, not by its retry.
    fn detach_instead_of_retry(self) -> bool {
        matches!(
            self,
            Op::PasidReplaceThenDetach | Op::PasidAttachFirstThenDetach
        )
    }

    fn is_dirty(self) -> bool {
        matches!(self, Op::DirtyOn | Op::DirtyOff | Op::DirtyReadAndClear)
    }

    /// The model: QEMU's EFR, with `GTSup`, `GIoSup`, 16-bit PASIDs and `HDSup` for the PASID
    /// and dirty-tracking rows.
    fn model_config(self) -> AmdViModelConfig {
        if matches!(self, Op::ReplaceAgainPerDevice) {
            AmdViModelConfig::qemu_default().with_iotlb_by_device()
        } else if self.is_pasid() || self.is_dirty() {
            AmdViModelConfig::qemu_default()
                .with_pasids(16)
                .with_dirty_tracking()
        } else {
            AmdViModelConfig::qemu_default()
        }
    }
}

fn pasid(p: u32) -> Option<Pasid> {
    Pasid::new(p)
}

fn ats() -> DeviceHints {
    DeviceHints {
        ats: true,
        ..DeviceHints::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    None,
    Command(Injection),
    Alloc(u64),
}

struct Rig<'a> {
    mem: &'a Arena,
    model: &'a AmdViModel<'a>,
    unit: Unit<'a>,
    a: DomainHandle,
    b: Option<DomainHandle>,
    /// The second move's target (`ReplaceAgain`).
    c: Option<DomainHandle>,
    extra: Option<DomainHandle>,
    /// The gather of the unmaps: kept across a failed flush and its retry, as a caller must
    /// (dropping it would leak its pages on purpose).
    gather: Gather,
    /// The v2 domain of `DEV3`'s PASIDs (PASID rows).
    p: Option<DomainHandle>,
    /// The v2 domain PASID 5 moves to (PASID rows).
    q: Option<DomainHandle>,
    /// Whether the unit may still hold `DEV3`'s GCR3 table, and so its `DomainID`: from its
    /// first PASID attach (tried) until the detach of its last PASID returned `Ok`.
    gcr3_held: bool,
    /// The IOVAs `read_dirty` reported, over every attempt.
    dirty_seen: Vec<u64>,
    /// The failed call was followed by a detach, not retried.
    detached_after_failure: bool,
    /// `a` was freed (`ReplaceFreeOld` after its failure).
    a_freed: bool,
}

impl<'a> Rig<'a> {
    fn new(mem: &'a Arena, model: &'a AmdViModel<'a>, op: Op) -> Self {
        let unit = AmdViUnit::new(
            model,
            mem,
            AmdViConfig {
                poll_budget: 2_000,
                ..AmdViConfig::new()
            },
        )
        .expect("unit");
        unit.enable().expect("enable");
        let a = unit
            .domain_alloc(&DomainConfig {
                dirty_tracking: op.is_dirty(),
                ..DomainConfig::default()
            })
            .unwrap();
        let b = unit.domain_alloc(&DomainConfig::default()).unwrap();
        unit.map(a, Iova::new(0x1000), PhysAddr::new(PA_A), 0x1000, RW)
            .unwrap();
        unit.map(b, Iova::new(0x1000), PhysAddr::new(PA_B), 0x1000, RW)
            .unwrap();
        unit.attach_device(DEV, None, a, &ats()).unwrap();
        // Warm the caches: DTE, IOTLB, page directory entries.
        model.dma(DEV.0 as u16, 0x1000, false).unwrap();
        if matches!(op, Op::Enable) {
            unit.disable().expect("disable");
        }
        if matches!(
            op,
            Op::Replace
                | Op::ReplaceWithoutAts
                | Op::ReplaceAgain
                | Op::ReplaceFreeOld
                | Op::ReplaceAgainPerDevice
        ) {
            // DEV's ATC holds a's page: the move must invalidate it, or a's flush must.
            model
                .ats_translate(DEV.0 as u16, None, 0x1000, false)
                .unwrap();
        }
        let mut c = None;
        if matches!(op, Op::ReplaceAgainPerDevice) {
            let d = unit.domain_alloc(&DomainConfig::default()).unwrap();
            unit.map(d, Iova::new(0x1000), PhysAddr::new(PA_C), 0x1000, RW)
                .unwrap();
            c = Some(d);
            // The first move loses a's INVALIDATE_IOMMU_PAGES and is not retried: the entry
            // cached for DEV under a stays.
            model.inject(Injection::IllegalCommandAt(2));
            unit.attach_device(DEV, None, b, &ats()).unwrap_err();
            model.clear_injections();
        }
        if matches!(op, Op::ReplaceAgain) {
            let d = unit.domain_alloc(&DomainConfig::default()).unwrap();
            unit.map(d, Iova::new(0x1000), PhysAddr::new(PA_C), 0x1000, RW)
                .unwrap();
            c = Some(d);
            // The first move fails at its ATC invalidation and is not retried: DEV is
            // unsettled under b, its ATC still holding a's page; b's page gets in too.
            model.inject(Injection::IotlbTimeout);
            unit.attach_device(DEV, None, b, &ats()).unwrap_err();
            model.clear_injections();
            model.dma(DEV.0 as u16, 0x1000, false).unwrap();
            model
                .ats_translate(DEV.0 as u16, None, 0x1000, false)
                .unwrap();
            assert_eq!(
                model.atc_translation(DEV.0 as u16, None, 0x1000),
                Some(PA_B),
                "setup: DEV's ATC holds b's page (and a's under it)"
            );
        }
        let (mut p, mut q) = (None, None);
        if op.is_pasid() {
            let v2 = DomainConfig {
                pasid: true,
                ..DomainConfig::default()
            };
            let d = unit.domain_alloc(&v2).unwrap();
            unit.map(d, Iova::new(0x1000), PhysAddr::new(PA_P), 0x1000, RW)
                .unwrap();
            let e = unit.domain_alloc(&v2).unwrap();
            unit.map(e, Iova::new(0x1000), PhysAddr::new(PA_Q), 0x1000, RW)
                .unwrap();
            q = Some(e);
            for &n in op.pasids_before() {
                unit.attach_device(DEV3, pasid(n), d, &ats()).unwrap();
                // Warm the IOTLB (tagged with the GCR3 table's DomainID and the PASID) and
                // the device's ATC.
                model.dma_pasid(DEV3.0 as u16, n, 0x1000, false).unwrap();
                model
                    .ats_translate(DEV3.0 as u16, Some(n), 0x1000, false)
                    .unwrap();
            }
            p = Some(d);
        }
        match op {
            Op::DirtyOn => {
                // A leaf left dirty by an earlier period of tracking: `on` must clean it.
                unit.set_dirty_tracking(a, true).unwrap();
                model.dma(DEV.0 as u16, 0x1000, true).unwrap();
                unit.set_dirty_tracking(a, false).unwrap();
                model.dma(DEV.0 as u16, 0x1000, false).unwrap();
            }
            Op::DirtyOff => {
                unit.set_dirty_tracking(a, true).unwrap();
                model.dma(DEV.0 as u16, 0x1000, false).unwrap();
            }
            Op::DirtyReadAndClear => {
                unit.set_dirty_tracking(a, true).unwrap();
                // Sets D; the IOTLB caches the entry dirty.
                model.dma(DEV.0 as u16, 0x1000, true).unwrap();
            }
            _ => {}
        }
        Self {
            mem,
            model,
            unit,
            a,
            b: Some(b),
            c,
            extra: None,
            gather: Gather::new(),
            p,
            q,
            gcr3_held: !op.pasids_before().is_empty(),
            dirty_seen: Vec::new(),
            detached_after_failure: false,
            a_freed: false,
        }
    }

    /// The dirty IOVAs of `a`'s first 1 GiB, `D` kept.
    fn dirty(&self) -> Result<Vec<u64>, String> {
        let mut seen = Vec::new();
        self.unit
            .read_dirty(
                self.a,
                Iova::new(0),
                1 << 30,
                DirtyRead::NoClear,
                &mut |i, _| seen.push(i.get()),
                &mut Gather::new(),
            )
            .map_err(|e| format!("read_dirty: {e}"))?;
        Ok(seen)
    }

    fn run(&mut self, op: Op) -> Result<(), iommu_engine::iommu::Error> {
        let u = &self.unit;
        match op {
            Op::Map => u.map(
                self.a,
                Iova::new(NEW_IOVA),
                PhysAddr::new(PA_A + 0x10_0000),
                0x1000,
                RW,
            ),
            Op::UnmapFlush => {
                u.unmap(self.a, Iova::new(0x1000), 0x1000, &mut self.gather)?;
                u.flush(self.a, &mut self.gather)
            }
            Op::UnmapTablesFlush => {
                u.unmap(self.a, Iova::new(0), 1 << 30, &mut self.gather)?;
                u.flush(self.a, &mut self.gather)
            }
            Op::Attach => u.attach(DEV2, None, self.a),
            // With the device's hints, as the IOASID layer attaches (its ATS stays on).
            Op::Replace | Op::ReplaceFreeOld => {
                u.attach_device(DEV, None, self.b.expect("b"), &ats())
            }
            // The unit-level call without hints: DEV's ATS is dropped by the move.
            Op::ReplaceWithoutAts => u.attach(DEV, None, self.b.expect("b")),
            Op::ReplaceAgain | Op::ReplaceAgainPerDevice => {
                u.attach_device(DEV, None, self.c.expect("c"), &ats())
            }
            Op::Detach => u.detach(DEV, None),
            Op::DomainFree => {
                u.domain_free(self.b.expect("b"))?;
                self.b = None;
                Ok(())
            }
            Op::Reclaim => {
                // Leaves the 1 GiB's lower tables empty but linked (an unmap inside them).
                u.unmap(self.a, Iova::new(0x1000), 0x1000, &mut self.gather)?;
                u.flush(self.a, &mut self.gather)?;
                u.reclaim(self.a, ReclaimScope::All).map(|_| ())
            }
            Op::DomainAlloc => {
                let d = u.domain_alloc(&DomainConfig::default())?;
                self.extra = Some(d);
                Ok(())
            }
            Op::Takeover | Op::Enable => Ok(u.enable()?),
            Op::Disable => Ok(u.disable()?),
            Op::PasidAttachFirst | Op::PasidAttach | Op::PasidAttachFirstThenDetach => {
                self.gcr3_held = true;
                u.attach_device(DEV3, pasid(7), self.p.expect("p"), &ats())
            }
            Op::PasidDetach => u.detach(DEV3, pasid(7)),
            Op::PasidDetachLast => {
                u.detach(DEV3, pasid(5))?;
                self.gcr3_held = false;
                Ok(())
            }
            Op::PasidReplace | Op::PasidReplaceFreeOld | Op::PasidReplaceThenDetach => {
                u.attach_device(DEV3, pasid(5), self.q.expect("q"), &ats())
            }
            Op::DirtyOn => u.set_dirty_tracking(self.a, true),
            Op::DirtyOff => u.set_dirty_tracking(self.a, false),
            Op::DirtyReadAndClear => {
                let seen = &mut self.dirty_seen;
                u.read_dirty(
                    self.a,
                    Iova::new(0),
                    1 << 30,
                    DirtyRead::Clear,
                    &mut |i, _| seen.push(i.get()),
                    &mut self.gather,
                )?;
                u.flush(self.a, &mut self.gather)
            }
        }
    }

    /// What must hold whatever the call returned.
    fn invariants(&self) -> Result<(), String> {
        let live: BTreeSet<u64> = self.mem.live_pages().iter().map(|(p, _)| p.get()).collect();
        for t in self.model.reachable_tables() {
            if !live.contains(&t) {
                return Err(format!("table {t:#x} reachable by the unit but freed"));
            }
        }
        let a = (!self.a_freed).then_some(self.a);
        let mut ids: BTreeSet<u16> = [a, self.b, self.c, self.extra, self.p, self.q]
            .into_iter()
            .flatten()
            .map(|d| d.0 + 1)
            .collect();
        if self.gcr3_held {
            // DEV3's GCR3 table is the unit's first.
            ids.insert(GCR3_DOMAIN_ID_BASE);
        }
        for id in self.model.cached_domain_ids() {
            if !ids.contains(&id) {
                return Err(format!("cached entries of domain ID {id}, no live domain"));
            }
        }
        if self.unit.is_enabled() {
            match self.model.dma(DEV.0 as u16, 0x1000, false) {
                Ok(o) if o.pa != PA_A && o.pa != PA_B && o.pa != PA_C => {
                    return Err(format!("DEV's DMA reached {:#x} with the unit on", o.pa));
                }
                _ => {}
            }
            for n in [5, 7] {
                match self.model.dma_pasid(DEV3.0 as u16, n, 0x1000, false) {
                    Ok(o) if o.pa != PA_P && o.pa != PA_Q => {
                        return Err(format!("DEV3 PASID {n}'s DMA reached {:#x}", o.pa));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// The effect of a successful `op`, seen by DMA.
    fn effect(&self, op: Op) -> Result<(), String> {
        let dma = |dev: DeviceId, iova| self.model.dma(dev.0 as u16, iova, false);
        let ok = match op {
            Op::Map => dma(DEV, NEW_IOVA).map(|o| o.pa) == Ok(PA_A + 0x10_0000),
            Op::UnmapFlush | Op::UnmapTablesFlush | Op::Reclaim => dma(DEV, 0x1000).is_err(),
            Op::Attach => dma(DEV2, 0x1000).map(|o| o.pa) == Ok(PA_A),
            Op::Replace | Op::ReplaceFreeOld => dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_B),
            Op::ReplaceWithoutAts => {
                dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_B) && self.atc_free_of(&[PA_A])?
            }
            Op::ReplaceAgain | Op::ReplaceAgainPerDevice => {
                dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_C) && self.atc_free_of(&[PA_A, PA_B])?
            }
            Op::Detach => dma(DEV, 0x1000).is_err(),
            Op::DomainFree => self.b.is_none(),
            Op::DomainAlloc => self.extra.is_some(),
            Op::Takeover | Op::Enable => {
                self.unit.is_enabled() && dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_A)
            }
            // Off: untranslated.
            Op::Disable => !self.unit.is_enabled() && dma(DEV, 0x1000).map(|o| o.pa) == Ok(0x1000),
            Op::PasidReplaceThenDetach if self.detached_after_failure => self.pasid_gone(5),
            Op::PasidReplaceThenDetach => self.pasid_dma(5) == Some(PA_Q),
            // The device's only PASID detached: its entry blocking.
            Op::PasidAttachFirstThenDetach if self.detached_after_failure => {
                self.pasid_gone(7) && dma(DEV3, 0x1000).is_err()
            }
            Op::PasidAttachFirst | Op::PasidAttach | Op::PasidAttachFirstThenDetach => {
                self.pasid_dma(7) == Some(PA_P)
                    && op
                        .pasids_before()
                        .iter()
                        .all(|&n| self.pasid_dma(n) == Some(PA_P))
            }
            Op::PasidDetach => self.pasid_gone(7) && self.pasid_dma(5) == Some(PA_P),
            // The device's entry blocking: no PASID, no request without one.
            Op::PasidDetachLast => self.pasid_gone(5) && dma(DEV3, 0x1000).is_err(),
            Op::PasidReplace | Op::PasidReplaceFreeOld => self.pasid_dma(5) == Some(PA_Q),
            Op::DirtyOn => self.dirty_after(op, true)?,
            Op::DirtyOff => self.dirty_after(op, false)?,
            Op::DirtyReadAndClear => {
                self.dirty_seen.contains(&0x1000) && self.dirty_after(op, true)?
            }
        };
        let owes = if self.a_freed {
            0
        } else {
            self.unit
                .table_pages(self.a)
                .map_err(|e| e.to_string())?
                .unflushed
        };
        match (ok, owes) {
            (true, 0) => Ok(()),
            (false, _) => Err(format!("{op:?} returned Ok without its effect")),
            (true, n) => Err(format!(
                "{op:?} returned Ok still holding {n} unflushed pages"
            )),
        }
    }

    /// After a failed move, before its retry: the caller may go on using the domain the device
    /// left (unmap and flush, or free it). When that returns `Ok`, nothing of the old domain's
    /// page is left for the device, in the unit's caches or in its ATC.
    fn after_failure(&mut self, op: Op) -> Result<(), String> {
        let u = &self.unit;
        if matches!(op, Op::ReplaceAgain | Op::ReplaceAgainPerDevice) {
            return self.after_second_failure();
        }
        let (device, n, old, page) = match op {
            Op::Replace | Op::ReplaceWithoutAts | Op::ReplaceFreeOld => (DEV, None, self.a, PA_A),
            Op::PasidReplace | Op::PasidReplaceFreeOld => (DEV3, Some(5), self.p.expect("p"), PA_P),
            _ => return Ok(()),
        };
        let what = if matches!(op, Op::PasidReplaceFreeOld | Op::ReplaceFreeOld) {
            match u.domain_free(old) {
                Ok(()) if matches!(op, Op::ReplaceFreeOld) => self.a_freed = true,
                Ok(()) => self.p = None,
                Err(_) => return Ok(()),
            }
            "freed"
        } else {
            u.unmap(old, Iova::new(0x1000), 0x1000, &mut self.gather)
                .map_err(|e| format!("unmap of the old domain: {e}"))?;
            if u.flush(old, &mut self.gather).is_err() {
                return Ok(());
            }
            "unmapped and flushed"
        };
        let dma = match n {
            Some(n) => self.model.dma_pasid(device.0 as u16, n, 0x1000, false),
            None => self.model.dma(device.0 as u16, 0x1000, false),
        };
        if dma.is_ok_and(|o| o.pa == page) {
            return Err(format!(
                "the unit still translates to the page of the domain the device left, {what}"
            ));
        }
        if self.model.atc_translation(device.0 as u16, n, 0x1000) == Some(page) {
            return Err(format!(
                "the device's ATC still holds the page of the domain it left, {what}"
            ));
        }
        Ok(())
    }

    /// Instead of a retry: the PASID the failed call attached (or moved) is detached. A
    /// first attach refused before anything was recorded leaves nothing to detach.
    fn detach_after_failure(&mut self, op: Op) -> Result<(), String> {
        let n = if matches!(op, Op::PasidReplaceThenDetach) {
            5
        } else {
            7
        };
        match self.unit.detach(DEV3, pasid(n)) {
            Ok(()) => {}
            Err(iommu_engine::iommu::Error::NotAttached(_))
                if matches!(op, Op::PasidAttachFirstThenDetach) => {}
            Err(e) => return Err(format!("the detach instead of the retry failed: {e}")),
        }
        // The device's last PASID: its GCR3 table is gone.
        self.gcr3_held = false;
        self.detached_after_failure = true;
        Ok(())
    }

    /// `ReplaceAgain` after its failure: both domains `DEV` left (`a`, then `b`) unmapped and
    /// flushed; if both flushes return `Ok`, `DEV` reaches neither page, through the unit or
    /// its ATC.
    fn after_second_failure(&mut self) -> Result<(), String> {
        let u = &self.unit;
        for d in [self.a, self.b.expect("b")] {
            u.unmap(d, Iova::new(0x1000), 0x1000, &mut self.gather)
                .map_err(|e| format!("unmap of a domain DEV left: {e}"))?;
            if u.flush(d, &mut self.gather).is_err() {
                return Ok(());
            }
        }
        let left = [PA_A, PA_B];
        if let Ok(o) = self.model.dma(DEV.0 as u16, 0x1000, false) {
            if left.contains(&o.pa) {
                return Err(format!(
                    "the unit still translates to {:#x}, of a domain DEV left, unmapped and flushed",
                    o.pa
                ));
            }
        }
        if !self.atc_free_of(&left)? {
            return Err(
                "DEV's ATC still holds a page of a domain it left, unmapped and flushed".into(),
            );
        }
        Ok(())
    }

    /// `DEV`'s ATC holds none of `pages` at 0x1000 (an INVALIDATE_IOTLB_PAGES covers an
    /// address whatever the entries under it: the newest stands for all).
    fn atc_free_of(&self, pages: &[u64]) -> Result<bool, String> {
        Ok(!self
            .model
            .atc_translation(DEV.0 as u16, None, 0x1000)
            .is_some_and(|pa| pages.contains(&pa)))
    }

    /// What `DEV3`'s PASID `n` reads at 0x1000.
    fn pasid_dma(&self, n: u32) -> Option<u64> {
        self.model
            .dma_pasid(DEV3.0 as u16, n, 0x1000, false)
            .ok()
            .map(|o| o.pa)
    }

    /// PASID `n` of `DEV3` translates nothing, through the unit or the device's ATC.
    fn pasid_gone(&self, n: u32) -> bool {
        self.pasid_dma(n).is_none()
            && self
                .model
                .atc_translation(DEV3.0 as u16, Some(n), 0x1000)
                .is_none()
    }

    /// After a call that left tracking `on`: no leaf is dirty (the call cleaned or read and
    /// cleared them; the reads use no fault), `DEV`'s entry has `HAD` as asked, and a write
    /// through the IOTLB entry the setup cached is recorded exactly when tracking is on (a
    /// cached entry without `HAD`, or cached dirty, would hide it; a cached entry with `HAD`
    /// after `off` would record it).
    fn dirty_after(&self, op: Op, on: bool) -> Result<bool, String> {
        if !self.dirty()?.is_empty() {
            return Err(format!("{op:?} left dirty leaves: {:?}", self.dirty()?));
        }
        let dte = self.unit.device_entry(DEV.0).ok_or("no entry for DEV")?;
        let had = dte.0[0] & (3 << 7) == 3 << 7;
        self.model
            .dma(DEV.0 as u16, 0x1000, true)
            .map_err(|e| format!("write: {e:?}"))?;
        let recorded = self.dirty()? == [0x1000];
        Ok(had == on && recorded == on)
    }

    fn teardown(self) -> Result<(), String> {
        let u = &self.unit;
        if !u.is_enabled() {
            u.enable().map_err(|e| format!("teardown enable: {e}"))?;
        }
        for dev in [DEV, DEV2] {
            let _ = u.detach(dev, None);
        }
        for n in [5, 7] {
            let _ = u.detach(DEV3, pasid(n));
        }
        let a = (!self.a_freed).then_some(self.a);
        for d in [a, self.b, self.c, self.extra, self.p, self.q]
            .into_iter()
            .flatten()
        {
            u.domain_free(d)
                .map_err(|e| format!("teardown free: {e}"))?;
        }
        u.disable().map_err(|e| format!("disable: {e}"))?;
        match self.unit.release() {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(format!("release leaked: {e}")),
            Err((_, e)) => Err(format!("release: {e}")),
        }
    }
}

fn cell(op: Op, fault: Fault) -> Result<&'static str, String> {
    let mem = Arena::with_defaults().unwrap();
    let base = mem.live_pages().len();
    let model = AmdViModel::new(&mem, op.model_config());
    let mut rig = Rig::new(&mem, &model, op);
    match fault {
        Fault::None => {}
        Fault::Command(i) => model.inject(i),
        Fault::Alloc(n) => mem.set_fail_policy(FailPolicy::Nth(n)),
    }
    let timeouts = model.stats().iotlb_timeouts;
    let fired_before = model.stats().injections_fired + mem.stats().failed_allocs;
    let first = rig.run(op);
    let fired = model.stats().injections_fired + mem.stats().failed_allocs > fired_before;
    if first.is_ok() && model.stats().iotlb_timeouts != timeouts {
        return Err(format!(
            "{op:?} returned Ok though the ATS device did not complete its invalidation"
        ));
    }
    match (&first, fired) {
        (Err(e), false) => return Err(format!("{op:?} failed ({e}) but its fault never fired")),
        (Ok(()), true) => return Err(format!("{op:?} returned Ok though its fault fired")),
        _ => {}
    }
    model.clear_injections();
    mem.set_fail_policy(FailPolicy::Never);
    rig.invariants()
        .map_err(|e| format!("after the call: {e}"))?;
    let outcome = match first {
        Ok(()) => "ok",
        Err(e) => {
            if matches!(fault, Fault::None) {
                return Err(format!("{op:?} failed without a fault: {e}"));
            }
            rig.after_failure(op)
                .map_err(|x| format!("after {e}: {x}"))?;
            rig.invariants()
                .map_err(|e| format!("after the old domain's use: {e}"))?;
            if op.detach_instead_of_retry() {
                rig.detach_after_failure(op)?;
            } else {
                rig.run(op).map_err(|e| format!("retry failed: {e}"))?;
            }
            rig.invariants()
                .map_err(|e| format!("after the retry: {e}"))?;
            "err"
        }
    };
    rig.effect(op)?;
    rig.teardown()?;
    if mem.live_pages().len() != base {
        return Err(format!(
            "{} pages not returned",
            mem.live_pages().len() - base
        ));
    }
    if !mem.bad_frees().is_empty() {
        return Err(format!("bad frees: {:?}", mem.bad_frees()));
    }
    Ok(outcome)
}

#[test]
fn fault_matrix() {
    let ops = [
        Op::Map,
        Op::UnmapFlush,
        Op::UnmapTablesFlush,
        Op::Attach,
        Op::Replace,
        Op::ReplaceWithoutAts,
        Op::ReplaceAgain,
        Op::ReplaceFreeOld,
        Op::ReplaceAgainPerDevice,
        Op::Detach,
        Op::DomainFree,
        Op::Reclaim,
        Op::DomainAlloc,
        Op::Takeover,
        Op::Enable,
        Op::Disable,
        Op::PasidAttachFirst,
        Op::PasidAttach,
        Op::PasidDetach,
        Op::PasidDetachLast,
        Op::PasidReplace,
        Op::PasidReplaceFreeOld,
        Op::PasidReplaceThenDetach,
        Op::PasidAttachFirstThenDetach,
        Op::DirtyOn,
        Op::DirtyOff,
        Op::DirtyReadAndClear,
    ];
    let mut faults = vec![
        Fault::None,
        Fault::Command(Injection::IotlbTimeout),
        Fault::Command(Injection::StuckRun),
    ];
    for n in 1..=4 {
        faults.push(Fault::Command(Injection::IllegalCommandAt(n)));
        faults.push(Fault::Command(Injection::CommandHardwareErrorAt(n)));
        faults.push(Fault::Alloc(u64::from(n)));
        faults.push(Fault::Command(Injection::StallWaitAt(n)));
    }
    let mut failures = Vec::new();
    let (mut cells, mut errs) = (0, 0);
    for op in ops {
        // One line per operation: `.` Ok, `R` failed then retried, `X` broken.
        let (mut reached, mut row) = (0, String::new());
        for &fault in &faults {
            cells += 1;
            match cell(op, fault) {
                Ok("err") => {
                    errs += 1;
                    reached += 1;
                    row.push('R');
                }
                Ok(_) => row.push('.'),
                Err(e) => {
                    row.push('X');
                    failures.push(format!("{op:?} x {fault:?}: {e}"));
                }
            }
        }
        println!("{:>17} {row}", format!("{op:?}"));
        if reached == 0 {
            failures.push(format!("{op:?}: no fault reached it"));
        }
    }
    println!(
        "AMD-Vi fault matrix: {cells} cells, {errs} faults fired, each failing its call \
         (then retried, or detached)"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
