//! The AMD-Vi fault matrix (as `tests/vtd_fault_matrix.rs` for VT-d): every operation of the
//! unit through the `Iommu` trait against every fault the model injects at every point the
//! operation reaches: an illegal command (ILLEGAL_COMMAND_ERROR) or an unreadable one
//! (COMMAND_HARDWARE_ERROR) at each of its first commands, a COMPLETION_WAIT that never
//! completes at each of its first waits (and every wait after it), run bits that never clear
//! (`CmdBufRun`, `EventLogRun`: enable and disable), an ATS device that does not answer INVALIDATE_IOTLB_PAGES (IOTLB_INV_TIMEOUT:
//! `DEV` is bound with ATS, so every flush of its domain reaches its IOTLB), and allocation
//! failure at each of its first allocations.
//!
//! After every cell, and again after the retry of a failed call with the fault cleared:
//! - no page-table page the model can still reach (the latched device table's entries, the
//!   cached entries, the page directory cache) is memory the allocator has back;
//! - no cache holds an entry tagged with a domain ID no live domain carries;
//! - a call during which the unit logged IOTLB_INV_TIMEOUT does not return `Ok`;
//! - `Ok` (of the call or of its retry) means the whole effect, checked by DMA through the
//!   model;
//! - after a failed enable (a takeover of the enabled unit, or from off) or disable, `DEV`'s
//!   DMA is translated by its domain or refused, never passed through untranslated while the
//!   unit reads enabled;
//! - at the end, tearing everything down returns every page, with no bad free.

use std::collections::BTreeSet;

use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::iommu::{DeviceHints, DeviceId, DomainConfig, DomainHandle, Iommu, ReclaimScope};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig, Injection};
use iommu_engine::sim::{Arena, FailPolicy};

type Unit<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 8>;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const DEV: DeviceId = DeviceId(0x20);
const DEV2: DeviceId = DeviceId(0x28);
const PA_A: u64 = 0xA000_0000;
const PA_B: u64 = 0xB000_0000;
const NEW_IOVA: u64 = 0x4000_0000;

#[derive(Clone, Copy, Debug)]
enum Op {
    Map,
    UnmapFlush,
    UnmapTablesFlush,
    Attach,
    Replace,
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
    extra: Option<DomainHandle>,
    /// The gather of the unmaps: kept across a failed flush and its retry, as a caller must
    /// (dropping it would leak its pages on purpose).
    gather: Gather,
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
        let a = unit.domain_alloc(&DomainConfig::default()).unwrap();
        let b = unit.domain_alloc(&DomainConfig::default()).unwrap();
        unit.map(a, Iova::new(0x1000), PhysAddr::new(PA_A), 0x1000, RW)
            .unwrap();
        unit.map(b, Iova::new(0x1000), PhysAddr::new(PA_B), 0x1000, RW)
            .unwrap();
        let ats = DeviceHints {
            ats: true,
            ..DeviceHints::default()
        };
        unit.attach_device(DEV, None, a, &ats).unwrap();
        // Warm the caches: DTE, IOTLB, page directory entries.
        model.dma(DEV.0 as u16, 0x1000, false).unwrap();
        if matches!(op, Op::Enable) {
            unit.disable().expect("disable");
        }
        Self {
            mem,
            model,
            unit,
            a,
            b: Some(b),
            extra: None,
            gather: Gather::new(),
        }
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
            Op::Replace => u.attach(DEV, None, self.b.expect("b")),
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
        let ids: BTreeSet<u16> = [Some(self.a), self.b, self.extra]
            .into_iter()
            .flatten()
            .map(|d| d.0 + 1)
            .collect();
        for id in self.model.cached_domain_ids() {
            if !ids.contains(&id) {
                return Err(format!("cached entries of domain ID {id}, no live domain"));
            }
        }
        if self.unit.is_enabled() {
            match self.model.dma(DEV.0 as u16, 0x1000, false) {
                Ok(o) if o.pa != PA_A && o.pa != PA_B => {
                    return Err(format!("DEV's DMA reached {:#x} with the unit on", o.pa));
                }
                _ => {}
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
            Op::Replace => dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_B),
            Op::Detach => dma(DEV, 0x1000).is_err(),
            Op::DomainFree => self.b.is_none(),
            Op::DomainAlloc => self.extra.is_some(),
            Op::Takeover | Op::Enable => {
                self.unit.is_enabled() && dma(DEV, 0x1000).map(|o| o.pa) == Ok(PA_A)
            }
            // Off: untranslated.
            Op::Disable => !self.unit.is_enabled() && dma(DEV, 0x1000).map(|o| o.pa) == Ok(0x1000),
        };
        let owes = self
            .unit
            .table_pages(self.a)
            .map_err(|e| e.to_string())?
            .unflushed;
        match (ok, owes) {
            (true, 0) => Ok(()),
            (false, _) => Err(format!("{op:?} returned Ok without its effect")),
            (true, n) => Err(format!(
                "{op:?} returned Ok still holding {n} unflushed pages"
            )),
        }
    }

    fn teardown(self) -> Result<(), String> {
        let u = &self.unit;
        if !u.is_enabled() {
            u.enable().map_err(|e| format!("teardown enable: {e}"))?;
        }
        for dev in [DEV, DEV2] {
            let _ = u.detach(dev, None);
        }
        for d in [Some(self.a), self.b, self.extra].into_iter().flatten() {
            u.domain_free(d)
                .map_err(|e| format!("teardown free: {e}"))?;
        }
        u.disable().map_err(|e| format!("disable: {e}"))?;
        self.unit
            .release()
            .map_err(|(_, e)| format!("release: {e}"))?;
        Ok(())
    }
}

fn cell(op: Op, fault: Fault) -> Result<&'static str, String> {
    let mem = Arena::with_defaults().unwrap();
    let base = mem.live_pages().len();
    let model = AmdViModel::new(&mem, AmdViModelConfig::qemu_default());
    let mut rig = Rig::new(&mem, &model, op);
    match fault {
        Fault::None => {}
        Fault::Command(i) => model.inject(i),
        Fault::Alloc(n) => mem.set_fail_policy(FailPolicy::Nth(n)),
    }
    let timeouts = model.stats().iotlb_timeouts;
    let first = rig.run(op);
    if first.is_ok() && model.stats().iotlb_timeouts != timeouts {
        return Err(format!(
            "{op:?} returned Ok though the ATS device did not complete its invalidation"
        ));
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
            rig.run(op).map_err(|e| format!("retry failed: {e}"))?;
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
        Op::Detach,
        Op::DomainFree,
        Op::Reclaim,
        Op::DomainAlloc,
        Op::Takeover,
        Op::Enable,
        Op::Disable,
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
        let mut reached = 0;
        for &fault in &faults {
            cells += 1;
            match cell(op, fault) {
                Ok("err") => {
                    errs += 1;
                    reached += 1;
                }
                Ok(_) => {}
                Err(e) => failures.push(format!("{op:?} x {fault:?}: {e}")),
            }
        }
        if reached == 0 {
            failures.push(format!("{op:?}: no fault reached it"));
        }
    }
    println!("AMD-Vi fault matrix: {cells} cells, {errs} failed calls retried");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
