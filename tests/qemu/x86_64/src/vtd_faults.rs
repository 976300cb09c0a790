//! Reading VT-d primary fault records in the guest, through the crate's `vtd::fault` API.
//!
//! What QEMU 10.0's `intel-iommu` does (hw/i386/intel_iommu.c, read for these facts only):
//! - one fault-recording register (`CAP.NFR = 0`, `CAP.FRO` = 0x220 / 16);
//! - while a record from a source-id is pending (`F` set), further faults from that source-id
//!   are *collapsed* (dropped), so a scenario drains after every faulting DMA;
//! - when the register is full and a fault from another requester arrives, `FSTS.PFO` is set;
//! - `T` (bit 126) is set for reads, clear for writes; `FI` is the faulting page;
//! - in scalable mode a translation fault (found while walking the page table) of a request
//!   without PASID -- the only kind `edu` makes -- has `PP` set and `PV` = the context entry's
//!   `RID_PASID`; faults found earlier (root, context, PASID entries) and legacy-mode faults
//!   have `PP` clear;
//! - reason codes: second-stage walks report the legacy codes in both legacy and scalable mode
//!   (0x5 write / 0x6 read for a not-present or read-only entry -- the permission check comes
//!   before the reserved-bit check -- 0x4 beyond the address width, and 0xC for a reserved bit,
//!   e.g. SNP with `ECAP.SC = 0` in legacy mode); first-stage walks (`x-flts=on`) report 0x71
//!   (entry not present), 0x85 (write to a read-only page), 0x81 (U/S clear), 0x72 (reserved
//!   bit), 0x80 (non-canonical); a not-present root entry is 0x1 and a not-present context
//!   entry 0x2 in both modes; a PASID entry is type-checked before its `P` bit, so a cleared
//!   entry (PGTT 0) gives 0x5B rather than 0x59;
//! - a write through a read-only translation already in its IOTLB is dropped without a record.

use core::ptr::NonNull;

use iommu_engine::mmio::{Mmio, RegisterWindow};
use iommu_engine::vtd::cap::Cap;
use iommu_engine::vtd::ecap::{Ecap, EcapFlags};
use iommu_engine::vtd::fault::{
    drain_primary_faults, DrainSummary, FaultReason, FaultRecord, RequestKind,
};
use iommu_engine::vtd::regs::{CAP_REG, ECAP_REG};

use crate::scenario::Fail;
use crate::{bail, ensure, println};

/// Source-id (requester ID) of the bus-0 `edu` (00:04.0), as the DMAR's device scope for it
/// resolves (`firmware.rs`).
pub fn edu_sid() -> u16 {
    crate::firmware::edu_rid()
}

/// Most records one drain keeps (QEMU has one register; a real unit may have more).
const MAX_RECORDS: usize = 16;

/// The VT-d register window as the fault reader sees it (a second, read-mostly view of the
/// registers the unit drives).
pub struct FaultReader {
    regs: Mmio,
    cap: Cap,
    ecap: Ecap,
}

/// One drain's worth of fault records.
pub struct Faults {
    records: [FaultRecord; MAX_RECORDS],
    count: usize,
    /// The drain's summary (overflow, still pending).
    pub summary: DrainSummary,
}

/// Which translation the unit's walk used, for the reason codes QEMU reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    /// Second stage (legacy mode, or scalable mode with `ECAP.SLTS`).
    Second,
    /// First stage (scalable mode with only `ECAP.FLTS`: QEMU's `x-flts=on`).
    First,
}

impl Walk {
    /// Reason QEMU reports for a read through a not-present leaf.
    pub fn read_unmapped(self) -> FaultReason {
        match self {
            Walk::Second => FaultReason::ReadNotPermitted,
            Walk::First => FaultReason::SmFirstStageNotPresent,
        }
    }
    /// Reason QEMU reports for a write through a not-present leaf.
    pub fn write_unmapped(self) -> FaultReason {
        match self {
            Walk::Second => FaultReason::WriteNotPermitted,
            Walk::First => FaultReason::SmFirstStageNotPresent,
        }
    }
    /// Reason QEMU reports for a write to a read-only leaf.
    pub fn write_readonly(self) -> FaultReason {
        match self {
            Walk::Second => FaultReason::WriteNotPermitted,
            Walk::First => FaultReason::SmWriteDenied,
        }
    }
}

impl FaultReader {
    /// A reader over the VT-d registers at `base`.
    ///
    /// # Safety
    /// `base` is the VT-d register window, mapped uncached for 4 KiB.
    pub unsafe fn new(base: usize) -> Result<Self, Fail> {
        let Some(ptr) = NonNull::new(base as *mut u8) else {
            bail!("VT-d base is null");
        };
        // SAFETY: forwarded from this function's contract; fault registers are only read and
        // their W1C bits written, which the unit's driver does not rely on.
        let regs = unsafe { Mmio::new(ptr, 0x1000) };
        let cap = Cap(regs.read64(CAP_REG));
        let ecap = Ecap(regs.read64(ECAP_REG));
        Ok(Self { regs, cap, ecap })
    }

    /// The capability register.
    pub fn cap(&self) -> Cap {
        self.cap
    }

    /// The extended capability register.
    pub fn ecap(&self) -> Ecap {
        self.ecap
    }

    /// Whether the unit has scalable mode (`ECAP.SMTS`), which the scenarios then use.
    pub fn scalable(&self) -> bool {
        self.ecap.flags().contains(EcapFlags::SMTS)
    }

    /// Which walk the model uses for requests without PASID, from `ECAP`: QEMU's `x-flts=on`
    /// advertises first-stage only (`FLTS` without `SLTS`).
    pub fn walk(&self) -> Walk {
        let f = self.ecap.flags();
        if f.contains(EcapFlags::SMTS)
            && f.contains(EcapFlags::FLTS)
            && !f.contains(EcapFlags::SLTS)
        {
            Walk::First
        } else {
            Walk::Second
        }
    }

    /// Reports and clears every pending record.
    pub fn drain(&self) -> Faults {
        let mut f = Faults {
            records: [FaultRecord::default(); MAX_RECORDS],
            count: 0,
            summary: DrainSummary::default(),
        };
        f.summary = drain_primary_faults(&self.regs, self.cap, usize::MAX, |index, r| {
            print_record(index, &r);
            if let Some(slot) = f.records.get_mut(f.count) {
                *slot = r;
                f.count += 1;
            }
        });
        f
    }

    /// Fails if any fault is pending (clearing it).
    pub fn expect_none(&self, when: &str) -> Result<(), Fail> {
        let f = self.drain();
        ensure!(
            f.count == 0 && !f.summary.overflowed,
            "{when}: {} unexpected fault record(s) (overflow {}), first reason {:#04x}",
            f.count,
            f.summary.overflowed,
            f.first().map_or(0, |r| r.reason_code())
        );
        Ok(())
    }

    /// Drains and requires exactly one record: `reason`, from `edu`, for the page of `iova`,
    /// of `kind`, without PASID.
    pub fn expect_one(
        &self,
        when: &str,
        reason: FaultReason,
        iova: u64,
        kind: RequestKind,
    ) -> Result<FaultRecord, Fail> {
        self.expect_one_of(when, &[reason], iova, kind)
    }

    /// As [`FaultReader::expect_one`], with any of `reasons` accepted.
    pub fn expect_one_of(
        &self,
        when: &str,
        reasons: &[FaultReason],
        iova: u64,
        kind: RequestKind,
    ) -> Result<FaultRecord, Fail> {
        self.expect_from(edu_sid(), when, reasons, iova, kind)
    }

    /// As [`FaultReader::expect_one_of`], for the requester `sid`.
    pub fn expect_from(
        &self,
        sid: u16,
        when: &str,
        reasons: &[FaultReason],
        iova: u64,
        kind: RequestKind,
    ) -> Result<FaultRecord, Fail> {
        let f = self.drain();
        let Some(r) = f.first() else {
            bail!(
                "{when}: no fault recorded (expected {:?} at {iova:#x})",
                reasons
            );
        };
        ensure!(
            f.count == 1 && !f.summary.overflowed && !f.summary.still_pending,
            "{when}: {} records (overflow {}, still pending {})",
            f.count,
            f.summary.overflowed,
            f.summary.still_pending
        );
        let reason = r.reason();
        ensure!(
            reasons.iter().any(|want| reason == Ok(*want)),
            "{when}: fault reason {:#04x} ({:?}), expected {:?}",
            r.reason_code(),
            reason,
            reasons
        );
        ensure!(
            r.source_id().get() == sid,
            "{when}: fault source-id {:#06x}, expected {sid:#06x}",
            r.source_id().get()
        );
        ensure!(
            r.fault_info() == iova & !0xfff,
            "{when}: fault address {:#x}, expected {:#x}",
            r.fault_info(),
            iova & !0xfff
        );
        ensure!(
            r.request_kind() == kind,
            "{when}: fault request kind {:?}, expected {kind:?}",
            r.request_kind()
        );
        // QEMU records a translation fault of a request without PASID in scalable mode with PP
        // set and the context entry's RID_PASID (0) as PV; faults found before the PASID entry
        // was read (root, context, PASID-table entries) and every legacy-mode fault without.
        let pasid = r.pasid().map(|p| p.get());
        let config_fault = matches!(
            reason,
            Ok(FaultReason::RootEntryNotPresent
                | FaultReason::ContextEntryNotPresent
                | FaultReason::SmPasidDirectoryNotPresent
                | FaultReason::SmPasidEntryNotPresent
                | FaultReason::SmPasidEntryInvalid)
        );
        let want = (self.scalable() && !config_fault).then_some(0);
        ensure!(
            pasid == want,
            "{when}: fault PASID {pasid:?}, expected {want:?}"
        );
        Ok(*r)
    }
}

impl Faults {
    /// The first record drained.
    pub fn first(&self) -> Option<&FaultRecord> {
        self.records.get(..self.count).and_then(<[_]>::first)
    }

    /// Number of records drained.
    pub fn count(&self) -> usize {
        self.count
    }
}

fn print_record(index: u16, r: &FaultRecord) {
    match r.reason() {
        Ok(reason) => println!(
            "fault[{index}]: {reason} sid {:#06x} addr {:#x} {:?} pasid {:?} hi {:#018x}",
            r.source_id().get(),
            r.fault_info(),
            r.request_kind(),
            r.pasid(),
            r.hi
        ),
        Err(code) => println!(
            "fault[{index}]: unknown reason {code:#04x} sid {:#06x} addr {:#x} {:?} hi {:#018x}",
            r.source_id().get(),
            r.fault_info(),
            r.request_kind(),
            r.hi
        ),
    }
}
