//! Primary fault recording: Intel VT-d specification rev. 4.1, §7 (Address Translation Faults,
//! the non-recoverable fault-reason tables), §9.9 Fault Record and the Fault Recording Registers
//! (§11.4, at `CAP.FRO * 16`, `CAP.NFR + 1` registers of 128 bits).
//!
//! Hardware writes a record into the next register and sets its `F` bit (127, write-1-to-clear);
//! `FSTS.PPF` (read-only) is the OR of every `F`, and `FSTS.FRI` names the register of the first
//! pending fault *when hardware set PPF*: it does not move while PPF stays set (§11.4.9.x
//! FSTS_REG). `FSTS.PFO` (write-1-to-clear) is set when a fault found the next register still
//! pending; while it is set no fault is recorded.
//! [`drain_primary_faults`] walks the `NFR + 1` registers once from `FRI`, wrapping, reports and
//! clears those with `F` set, at most `max` of them, and leaves the rest pending: a register
//! cleared by an earlier partial drain is passed over (FRI may still name it), and a register
//! that never clears costs one read per call. The order is the registers', not necessarily the
//! faults' (after a partial drain FRI is frozen and hardware's next index wraps).

use core::fmt;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::cap::Cap;
use super::regs::{clear_fsts, frcd_reg, fsts, Fsts};
use super::{Field, Pasid, SourceId};
use crate::mmio::RegisterWindow;

/// A 128-bit primary fault record (§9.9).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct FaultRecord {
    /// Bits 63:0: `FI` (63:12), the faulting page (for interrupt faults, 63:48 the index).
    pub lo: u64,
    /// Bits 127:64: `SID`, `T2`, `PRIV`, `EXE`, `PP`, `FR`, `PV`, `AT`, `T1`, `F`.
    pub hi: u64,
}

const _: () = assert!(core::mem::size_of::<FaultRecord>() == 16);

/// Whether the faulting request was a write or a read (`T1`, bit 126).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    /// `T1 = 0`: write.
    Write,
    /// `T1 = 1`: read (or AtomicOp; `T2` refines it).
    Read,
}

impl FaultRecord {
    /// 63:12 Fault Info.
    pub const FI: Field = Field::new(63, 12);
    /// 79:64 (word 1, 15:0) Source Identifier.
    pub const SID: Field = Field::new(15, 0);
    /// 92 (word 1, 28): Type bit 2.
    pub const T2: u64 = 1 << 28;
    /// 93 (word 1, 29): Privilege Mode Requested.
    pub const PRIV: u64 = 1 << 29;
    /// 94 (word 1, 30): Execute Permission Requested.
    pub const EXE: u64 = 1 << 30;
    /// 95 (word 1, 31): PASID Present.
    pub const PP: u64 = 1 << 31;
    /// 103:96 (word 1, 39:32) Fault Reason.
    pub const FR: Field = Field::new(39, 32);
    /// 123:104 (word 1, 59:40) PASID Value.
    pub const PV: Field = Field::new(59, 40);
    /// 125:124 (word 1, 61:60) Address Type.
    pub const AT: Field = Field::new(61, 60);
    /// 126 (word 1, 62): Type bit 1.
    pub const T1: u64 = 1 << 62;
    /// 127 (word 1, 63): Fault, write 1 to clear.
    pub const F: u64 = 1 << 63;

    /// Whether the record holds a fault.
    pub const fn fault(&self) -> bool {
        self.hi & Self::F != 0
    }
    /// The faulting page address (`FI`).
    pub const fn fault_info(&self) -> u64 {
        self.lo & Self::FI.mask()
    }
    /// The requester.
    pub const fn source_id(&self) -> SourceId {
        SourceId::new(Self::SID.get(self.hi) as u16)
    }
    /// The request's PASID, if `PP`.
    pub fn pasid(&self) -> Option<Pasid> {
        if self.hi & Self::PP == 0 {
            return None;
        }
        Pasid::new(Self::PV.get(self.hi) as u32).ok()
    }
    /// `T1`: write or read.
    pub const fn request_kind(&self) -> RequestKind {
        if self.hi & Self::T1 != 0 {
            RequestKind::Read
        } else {
            RequestKind::Write
        }
    }
    /// `T2`, raw.
    pub const fn t2(&self) -> bool {
        self.hi & Self::T2 != 0
    }
    /// `AT`, raw (00b untranslated, 01b translation request, 10b translated).
    pub const fn address_type(&self) -> u8 {
        Self::AT.get(self.hi) as u8
    }
    /// `FR`, raw.
    pub const fn reason_code(&self) -> u8 {
        Self::FR.get(self.hi) as u8
    }
    /// `FR` decoded; an unknown code comes back raw in `Err`.
    pub fn reason(&self) -> Result<FaultReason, u8> {
        FaultReason::try_from(self.reason_code())
    }
}

macro_rules! fault_reasons {
    ($( $(#[$doc:meta])* $name:ident = $code:literal, )*) => {
        /// Non-recoverable fault reasons (§7 fault-reason tables; legacy 0x1-0xD, interrupt
        /// remapping 0x20-0x26, scalable mode 0x30-0x90).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        #[non_exhaustive]
        pub enum FaultReason {
            $( $(#[$doc])* $name = $code, )*
        }

        impl TryFrom<u8> for FaultReason {
            type Error = u8;
            fn try_from(code: u8) -> Result<Self, u8> {
                match code {
                    $( $code => Ok(Self::$name), )*
                    other => Err(other),
                }
            }
        }
    };
}

fault_reasons! {
    /// 0x1: root-entry `P` clear (legacy).
    RootEntryNotPresent = 0x1,
    /// 0x2: context-entry `P` clear (legacy).
    ContextEntryNotPresent = 0x2,
    /// 0x3: invalid programming of a context entry (legacy).
    ContextEntryInvalid = 0x3,
    /// 0x4: input address above `2^MGAW - 1` / the domain's AGAW.
    AddressBeyondMgaw = 0x4,
    /// 0x5: write to a page without write permission.
    WriteNotPermitted = 0x5,
    /// 0x6: read to a page without read permission.
    ReadNotPermitted = 0x6,
    /// 0x7: error accessing a second-stage paging entry.
    PagingEntryAccess = 0x7,
    /// 0x8: error accessing the root entry (bad `RTADDR`).
    RootTableAccess = 0x8,
    /// 0x9: error accessing the context entry.
    ContextTableAccess = 0x9,
    /// 0xA: non-zero reserved field in a present root entry.
    RootEntryReserved = 0xA,
    /// 0xB: non-zero reserved field in a present context entry.
    ContextEntryReserved = 0xB,
    /// 0xC: non-zero reserved field in a second-stage paging entry.
    PagingEntryReserved = 0xC,
    /// 0xD: request blocked by the context entry's `TT`.
    TranslationTypeBlocked = 0xD,
    /// 0x20: reserved field set in an interrupt request.
    InterruptRequestReserved = 0x20,
    /// 0x21: interrupt index beyond the remapping table.
    InterruptIndexOverflow = 0x21,
    /// 0x22: IRTE `P` clear.
    IrteNotPresent = 0x22,
    /// 0x23: error accessing the interrupt remapping table.
    InterruptTableAccess = 0x23,
    /// 0x24: reserved field set in a present IRTE.
    IrteReserved = 0x24,
    /// 0x25: compatibility-format interrupt blocked.
    CompatibilityInterruptBlocked = 0x25,
    /// 0x26: interrupt blocked by source-id validation.
    InterruptSourceIdInvalid = 0x26,
    /// 0x30: invalid scalable-mode root table address.
    SmRootTableAddressInvalid = 0x30,
    /// 0x31: request with PASID while `RTADDR.TTM` is legacy.
    SmPasidRequestInLegacyMode = 0x31,
    /// 0x32: page request while `RTADDR.TTM` is legacy.
    SmPageRequestInLegacyMode = 0x32,
    /// 0x38: error accessing a scalable-mode root entry.
    SmRootEntryAccess = 0x38,
    /// 0x39: scalable-mode root entry (half) not present.
    SmRootEntryNotPresent = 0x39,
    /// 0x3A: reserved field set in a scalable-mode root entry.
    SmRootEntryReserved = 0x3A,
    /// 0x40: error accessing a scalable-mode context entry.
    SmContextEntryAccess = 0x40,
    /// 0x41: scalable-mode context entry not present.
    SmContextEntryNotPresent = 0x41,
    /// 0x42: reserved field set in a scalable-mode context entry.
    SmContextEntryReserved = 0x42,
    /// 0x43: invalid scalable-mode context entry.
    SmContextEntryInvalid = 0x43,
    /// 0x44: translation request or translated request with `DTE` clear.
    SmDeviceTlbDisabled = 0x44,
    /// 0x45: request with PASID while `PASIDE` is clear.
    SmPasidDisabled = 0x45,
    /// 0x46: PASID beyond the directory size (`PDTS`).
    SmPasidBeyondDirectory = 0x46,
    /// 0x47: page request while `PRE` is clear.
    SmPageRequestDisabled = 0x47,
    /// 0x48: `RID_PASID` error.
    SmRidPasidError = 0x48,
    /// 0x50: error accessing a PASID directory entry.
    SmPasidDirectoryAccess = 0x50,
    /// 0x51: PASID directory entry not present.
    SmPasidDirectoryNotPresent = 0x51,
    /// 0x52: reserved field set in a PASID directory entry.
    SmPasidDirectoryReserved = 0x52,
    /// 0x58: error accessing a PASID-table entry.
    SmPasidEntryAccess = 0x58,
    /// 0x59: PASID-table entry not present.
    SmPasidEntryNotPresent = 0x59,
    /// 0x5A: reserved field set in a PASID-table entry.
    SmPasidEntryReserved = 0x5A,
    /// 0x5B: invalid PASID-table entry programming.
    SmPasidEntryInvalid = 0x5B,
    /// 0x5C: execute request while `ERE` is clear.
    SmExecuteDisabled = 0x5C,
    /// 0x5D: supervisor request while `SRE` is clear.
    SmSupervisorDisabled = 0x5D,
    /// 0x70: error accessing a first-stage paging entry.
    SmFirstStageAccess = 0x70,
    /// 0x71: first-stage paging entry not present.
    SmFirstStageNotPresent = 0x71,
    /// 0x72: reserved field set in a first-stage paging entry.
    SmFirstStageReserved = 0x72,
    /// 0x73: error accessing the first-stage root (PML4/PML5) entry.
    SmFirstStageRootAccess = 0x73,
    /// 0x74: nested: first-stage entry address beyond the second stage's width.
    SmNestedAddressBeyondWidth = 0x74,
    /// 0x75: nested: second stage denies read of the first-stage root entry.
    SmNestedRootReadDenied = 0x75,
    /// 0x76: nested: second stage denies read of a first-stage entry.
    SmNestedEntryReadDenied = 0x76,
    /// 0x77: nested: second stage denies the A/D write of a first-stage entry.
    SmNestedEntryWriteDenied = 0x77,
    /// 0x78: error accessing a second-stage paging entry.
    SmSecondStageAccess = 0x78,
    /// 0x79: second-stage entry lacks read/write permission.
    SmSecondStagePermission = 0x79,
    /// 0x7A: reserved field set in a second-stage paging entry.
    SmSecondStageReserved = 0x7A,
    /// 0x7B: invalid second-stage page-table pointer.
    SmSecondStagePointerInvalid = 0x7B,
    /// 0x7C: second-stage A/D update needed on a no-snoop walk.
    SmSecondStageAdNoSnoop = 0x7C,
    /// 0x80: non-canonical address for first-stage translation.
    SmNonCanonicalAddress = 0x80,
    /// 0x81: user request to a supervisor page (first stage `U/S` clear).
    SmUserAccessDenied = 0x81,
    /// 0x82: execute request to a non-executable page.
    SmExecuteDenied = 0x82,
    /// 0x83: address beyond the hardware's maximum.
    SmAddressBeyondMaximum = 0x83,
    /// 0x84: second-stage output address beyond the maximum.
    SmSecondStageAddressBeyondMaximum = 0x84,
    /// 0x85: write or AtomicOp without write permission.
    SmWriteDenied = 0x85,
    /// 0x86: read or AtomicOp without read permission.
    SmReadDenied = 0x86,
    /// 0x87: address in the interrupt range.
    SmInterruptAddressRange = 0x87,
    /// 0x90: first-stage A/D update needed on a no-snoop walk.
    SmFirstStageAdNoSnoop = 0x90,
}

impl fmt::Display for FaultReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?} ({:#04x})", *self as u8)
    }
}

/// What [`drain_primary_faults`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DrainSummary {
    /// Records reported.
    pub records: u16,
    /// `FSTS.PFO` was set: faults were lost because every register was full.
    pub overflowed: bool,
    /// `FSTS.PPF` was still set afterwards (a register did not clear, or new faults arrived).
    pub still_pending: bool,
}

/// Reports at most `max` pending primary faults to `report` and clears them (only those: the
/// others stay pending, `still_pending` says so, for the next call).
///
/// Starts at `FSTS.FRI` and looks at each of the `CAP.NFR + 1` registers once, wrapping,
/// passing over those without `F` (FRI keeps naming the first record of a batch that an
/// earlier call cleared part of). Clears each record it reports by writing `F`
/// (write-1-to-clear) to its top dword, then `FSTS.PFO`, whatever is left: hardware records
/// again into the registers freed, and pending ones make the next fault overflow again rather
/// than overwrite them. `FSTS.PPF` is read-only and drops by itself once no `F` is set.
///
/// Records come in register order from `FRI`, which is fault order only for a full drain:
/// after a partial one `FRI` stays frozen while `PPF` stays set, and hardware records new
/// faults into the freed registers at its own next index (wrapping), so a newer fault may be
/// reported before an older one. Sort by the record's content if order matters.
///
/// Two calls on one unit must not overlap (one could read a record's top half, the other clear
/// it, hardware record a new fault there, and the first read the new bottom half): callers
/// that may drain from two CPUs serialise the calls, as [`VtdUnit`](super::VtdUnit)'s drains
/// do under its fault lock.
pub fn drain_primary_faults<W: RegisterWindow + ?Sized>(
    regs: &W,
    cap: Cap,
    max: usize,
    mut report: impl FnMut(u16, FaultRecord),
) -> DrainSummary {
    let (status, fri) = fsts(regs);
    let mut summary = DrainSummary {
        overflowed: status.contains(Fsts::PFO),
        ..DrainSummary::default()
    };
    let count = cap.fault_recording_count();
    let base = cap.fault_recording_offset();
    if status.contains(Fsts::PPF) {
        let mut index = fri as u16 % count;
        let mut reported = 0usize;
        for _ in 0..count {
            if reported >= max {
                break;
            }
            let offset = frcd_reg(base, index);
            let hi = regs.read64(offset + 8);
            if hi & FaultRecord::F != 0 {
                let record = FaultRecord {
                    lo: regs.read64(offset),
                    hi,
                };
                // F is bit 31 of the top dword; the other bits there are read-only.
                regs.write32(offset + 12, 1 << 31);
                report(index, record);
                summary.records += 1;
                reported += 1;
            }
            index = (index + 1) % count;
        }
    }
    if summary.overflowed {
        clear_fsts(regs, Fsts::PFO);
    }
    summary.still_pending = fsts(regs).0.contains(Fsts::PPF);
    summary
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::mmio::RegisterWindow;
    use crate::vtd::regs::CAP_REG;
    use crate::vtd::test_support::Model;
    use std::vec::Vec;

    /// hi = F | T1 (read) | PV 0x12345<<40 | FR 0x06<<32 | PP (1<<31) | SID 0x0010
    ///    = 0x8000.. | 0x4000.. | 0x0123_4500_0000_0000 | 0x6_0000_0000 | 0x8000_0000 | 0x10
    ///    = 0xc123_4506_8000_0010
    const HI: u64 = 0xc123_4506_8000_0010;

    #[test]
    fn record_fields() {
        let r = FaultRecord {
            lo: 0xdead_b123,
            hi: HI,
        };
        assert!(r.fault());
        assert_eq!(r.fault_info(), 0xdead_b000);
        assert_eq!(r.source_id(), SourceId::new(0x10));
        assert_eq!(r.pasid(), Some(Pasid::new(0x12345).unwrap()));
        assert_eq!(r.request_kind(), RequestKind::Read);
        assert_eq!(r.reason(), Ok(FaultReason::ReadNotPermitted));
        assert!(!r.t2());
        assert_eq!(r.address_type(), 0);
        let unknown = FaultRecord {
            lo: 0,
            hi: 0xEE << 32,
        };
        assert_eq!(unknown.reason(), Err(0xEE));
        assert_eq!(unknown.pasid(), None);
        assert_eq!(unknown.request_kind(), RequestKind::Write);
    }

    #[test]
    fn every_named_reason_round_trips() {
        let known = (0..=255u8)
            .filter_map(|c| FaultReason::try_from(c).ok())
            .collect::<Vec<_>>();
        assert_eq!(known.len(), 13 + 7 + 3 + 3 + 9 + 3 + 6 + 13 + 8 + 1);
        for r in known {
            assert_eq!(FaultReason::try_from(r as u8), Ok(r));
        }
        assert_eq!(FaultReason::try_from(0), Err(0));
        assert_eq!(FaultReason::try_from(0x5E), Err(0x5E));
    }

    #[test]
    fn drains_from_fri_and_wraps() {
        let m = Model::with_nfr(3);
        let cap = Cap(m.read64(CAP_REG));
        m.inject_fault(2, 0x1000, HI);
        m.inject_fault(3, 0x2000, 0x5 << 32);
        m.inject_fault(0, 0x3000, 0x1 << 32);
        // FRI is the first pending index, 0: record 0, register 1 (no F) passed over, then
        // 2 and 3, at most 2 of them: 0 and 2.
        let mut seen = Vec::new();
        let s = drain_primary_faults(&m, cap, 2, |i, r| seen.push((i, r.lo)));
        assert_eq!(seen, [(0, 0x3000), (2, 0x1000)]);
        assert!(s.still_pending);
        // Now FRI = 3: 3, wrap to 0 (already clear), 1, 2 (clear).
        seen.clear();
        let s = drain_primary_faults(&m, cap, usize::MAX, |i, r| seen.push((i, r.lo)));
        assert_eq!(seen, [(3, 0x2000)]);
        assert_eq!(
            s,
            DrainSummary {
                records: 1,
                overflowed: false,
                still_pending: false
            }
        );
    }

    #[test]
    fn stuck_register_is_bounded_and_overflow_cleared() {
        let m = Model::with_nfr(1);
        let cap = Cap(m.read64(CAP_REG));
        m.stuck_faults(true);
        m.inject_fault(0, 0x1000, HI);
        m.inject_fault(1, 0x2000, HI);
        m.raise_fsts(Fsts::PFO);
        let mut n = 0;
        let s = drain_primary_faults(&m, cap, usize::MAX, |_, _| n += 1);
        assert_eq!(n, 2, "at most NFR + 1 registers per drain");
        assert!(s.overflowed && s.still_pending);
        assert!(!fsts(&m).0.contains(Fsts::PFO));
    }
}
