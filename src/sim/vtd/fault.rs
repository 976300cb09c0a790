//! Fault reasons and primary fault recording (VT-d spec rev 4.1, chapter 7 "Address Translation
//! Faults": the non-recoverable fault conditions and reason-code tables, and primary fault
//! logging; the Fault Recording Registers in §11.4).
//!
//! # Reason codes
//!
//! The model reports the spec's non-recoverable fault reason codes. Legacy mode (TTM = 00) uses
//! 0x1-0xD; scalable mode (TTM = 01) uses the 0x30-0x90 range, grouped as the spec groups its
//! conditions: root table (SRT*), root entry (SRE*), context entry (SCT*), PASID directory
//! (SPD*), PASID table (SPT*), first stage (SFS*), second stage (SSS*) and general (SGN*).
//! The codes were checked against the reason-code tables of two independent decoders of these
//! records (Linux `dmar.c`, QEMU `intel_iommu_internal.h`) -- the values only.
//!
//! | code | constant | condition |
//! |---|---|---|
//! | 0x1 | [`ROOT_ENTRY_NOT_PRESENT`] | root entry P clear |
//! | 0x2 | [`CONTEXT_ENTRY_NOT_PRESENT`] | context entry P clear |
//! | 0x3 | [`CONTEXT_ENTRY_INVALID`] | invalid programming of a context entry (TT, AW) |
//! | 0x4 | [`ADDRESS_BEYOND_MGAW`] | input address above the AGAW / MGAW |
//! | 0x5 | [`WRITE_NOT_ALLOWED`] | write to a not-present or read-only page |
//! | 0x6 | [`READ_NOT_ALLOWED`] | read from a not-present or write-only page |
//! | 0x7 | [`PAGING_ENTRY_ACCESS_ERROR`] | error reading a second-stage paging entry |
//! | 0x8 | [`ROOT_TABLE_ACCESS_ERROR`] | root table address invalid or unreadable |
//! | 0x9 | [`CONTEXT_TABLE_ACCESS_ERROR`] | context table unreadable |
//! | 0xA | [`ROOT_ENTRY_RESERVED`] | reserved bit set in a root entry |
//! | 0xB | [`CONTEXT_ENTRY_RESERVED`] | reserved bit set in a context entry |
//! | 0xC | [`PAGING_ENTRY_RESERVED`] | reserved bit set in a paging entry |
//! | 0xD | [`TRANSLATION_REQUEST_BLOCKED`] | translation request to a context with TT = 00 |
//! | 0x30 | [`SM_ROOT_TABLE_INVALID`] | invalid root table address / TTM |
//! | 0x31 | [`SM_TTM0_REQUEST_WITH_PASID`] | request with PASID while TTM = 00 (legacy) |
//! | 0x38 | [`SM_ROOT_ENTRY_ACCESS_ERROR`] | scalable root entry unreadable |
//! | 0x39 | [`SM_ROOT_ENTRY_NOT_PRESENT`] | LP / UP clear |
//! | 0x3A | [`SM_ROOT_ENTRY_RESERVED`] | reserved bit in scalable root entry |
//! | 0x40 | [`SM_CONTEXT_ENTRY_ACCESS_ERROR`] | scalable context entry unreadable |
//! | 0x41 | [`SM_CONTEXT_ENTRY_NOT_PRESENT`] | context P clear |
//! | 0x42 | [`SM_CONTEXT_ENTRY_RESERVED`] | reserved bit in context entry |
//! | 0x43 | [`SM_CONTEXT_ENTRY_INVALID`] | invalid programming of the context entry |
//! | 0x44 | [`SM_CONTEXT_DTE_CLEAR`] | translation request with DTE clear |
//! | 0x45 | [`SM_CONTEXT_PASIDE_CLEAR`] | request with PASID, PASIDE clear |
//! | 0x46 | [`SM_PASID_TOO_LARGE`] | PASID beyond the directory size (PDTS) |
//! | 0x50 | [`SM_PASID_DIR_ACCESS_ERROR`] | PASID directory entry unreadable |
//! | 0x51 | [`SM_PASID_DIR_NOT_PRESENT`] | PASID directory entry P clear |
//! | 0x52 | [`SM_PASID_DIR_RESERVED`] | reserved bit in PASID directory entry |
//! | 0x58 | [`SM_PASID_ENTRY_ACCESS_ERROR`] | PASID table entry unreadable |
//! | 0x59 | [`SM_PASID_ENTRY_NOT_PRESENT`] | PASID entry P clear |
//! | 0x5A | [`SM_PASID_ENTRY_RESERVED`] | reserved bit in PASID entry |
//! | 0x5B | [`SM_PASID_ENTRY_INVALID`] | invalid PGTT / unsupported programming |
//! | 0x5C | [`SM_PASID_ENTRY_ERE_CLEAR`] | execute request, ERE clear |
//! | 0x5D | [`SM_PASID_ENTRY_SRE_CLEAR`] | supervisor request, SRE clear |
//! | 0x70 | [`SM_FS_ENTRY_ACCESS_ERROR`] | first-stage entry unreadable |
//! | 0x71 | [`SM_FS_ENTRY_NOT_PRESENT`] | first-stage entry P clear |
//! | 0x72 | [`SM_FS_ENTRY_RESERVED`] | reserved bit in first-stage entry |
//! | 0x73 | [`SM_FSPTPTR_INVALID`] | invalid FSPTPTR in the PASID entry |
//! | 0x78 | [`SM_SS_ENTRY_ACCESS_ERROR`] | second-stage entry unreadable |
//! | 0x79 | [`SM_SS_ENTRY_NOT_PRESENT`] | second-stage entry with R = W = 0 |
//! | 0x7A | [`SM_SS_ENTRY_RESERVED`] | reserved bit in second-stage entry |
//! | 0x7B | [`SM_SSPTPTR_INVALID`] | invalid SSPTPTR in the PASID entry |
//! | 0x80 | [`SM_FS_NON_CANONICAL`] | first-stage input address not canonical |
//! | 0x81 | [`SM_FS_USER_SUPERVISOR`] | user request to a supervisor page |
//! | 0x82 | [`SM_NO_EXECUTE`] | execute request without execute permission |
//! | 0x83 | [`SM_ADDRESS_BEYOND_AW`] | input address beyond the address width |
//! | 0x85 | [`SM_WRITE_NOT_ALLOWED`] | write without write permission |
//! | 0x86 | [`SM_READ_NOT_ALLOWED`] | read without read permission |

/// Root entry P clear (legacy).
pub const ROOT_ENTRY_NOT_PRESENT: u8 = 0x1;
/// Not a fault reason (0 is none): the model's [`DmaFault::reason`](super::DmaFault::reason) for a
/// request a protected memory region blocked, which is never recorded (`pmr.rs`).
pub const BLOCKED_BY_PMR: u8 = 0x0;
/// Context entry P clear (legacy).
pub const CONTEXT_ENTRY_NOT_PRESENT: u8 = 0x2;
/// Invalid programming of a context entry: reserved TT, unsupported AW (legacy).
pub const CONTEXT_ENTRY_INVALID: u8 = 0x3;
/// Input address beyond the AGAW of the context or the MGAW (legacy).
pub const ADDRESS_BEYOND_MGAW: u8 = 0x4;
/// Write request to a page (or through a table entry) without W (legacy).
pub const WRITE_NOT_ALLOWED: u8 = 0x5;
/// Read request to a page (or through a table entry) without R (legacy).
pub const READ_NOT_ALLOWED: u8 = 0x6;
/// Error reading a second-stage paging entry ("next page table pointer invalid", legacy).
pub const PAGING_ENTRY_ACCESS_ERROR: u8 = 0x7;
/// Root table address invalid: no root table latched, or unreadable (legacy).
pub const ROOT_TABLE_ACCESS_ERROR: u8 = 0x8;
/// Context table pointer invalid: the context table is unreadable (legacy).
pub const CONTEXT_TABLE_ACCESS_ERROR: u8 = 0x9;
/// Non-zero reserved field in a root entry (legacy).
pub const ROOT_ENTRY_RESERVED: u8 = 0xA;
/// Non-zero reserved field in a context entry (legacy).
pub const CONTEXT_ENTRY_RESERVED: u8 = 0xB;
/// Non-zero reserved field in a second-stage paging entry (legacy).
pub const PAGING_ENTRY_RESERVED: u8 = 0xC;
/// Translation request (ATS) to a context that blocks them (legacy).
pub const TRANSLATION_REQUEST_BLOCKED: u8 = 0xD;

/// Scalable mode: invalid root table address or TTM (also: TTM = 01 without ECAP.SMTS).
pub const SM_ROOT_TABLE_INVALID: u8 = 0x30;
/// A request with PASID while the root table is in legacy mode (TTM = 00).
pub const SM_TTM0_REQUEST_WITH_PASID: u8 = 0x31;
/// Scalable root entry unreadable.
pub const SM_ROOT_ENTRY_ACCESS_ERROR: u8 = 0x38;
/// Scalable root entry LP / UP clear.
pub const SM_ROOT_ENTRY_NOT_PRESENT: u8 = 0x39;
/// Reserved bit set in a scalable root entry.
pub const SM_ROOT_ENTRY_RESERVED: u8 = 0x3A;
/// Scalable context entry unreadable.
pub const SM_CONTEXT_ENTRY_ACCESS_ERROR: u8 = 0x40;
/// Scalable context entry P clear.
pub const SM_CONTEXT_ENTRY_NOT_PRESENT: u8 = 0x41;
/// Reserved bit set in a scalable context entry.
pub const SM_CONTEXT_ENTRY_RESERVED: u8 = 0x42;
/// Invalid programming of a scalable context entry.
pub const SM_CONTEXT_ENTRY_INVALID: u8 = 0x43;
/// Translation request while the context entry's DTE is clear.
pub const SM_CONTEXT_DTE_CLEAR: u8 = 0x44;
/// Request with PASID while the context entry's PASIDE is clear.
pub const SM_CONTEXT_PASIDE_CLEAR: u8 = 0x45;
/// PASID beyond the PASID directory size (PDTS).
pub const SM_PASID_TOO_LARGE: u8 = 0x46;
/// PASID directory entry unreadable.
pub const SM_PASID_DIR_ACCESS_ERROR: u8 = 0x50;
/// PASID directory entry P clear.
pub const SM_PASID_DIR_NOT_PRESENT: u8 = 0x51;
/// Reserved bit set in a PASID directory entry.
pub const SM_PASID_DIR_RESERVED: u8 = 0x52;
/// PASID table entry unreadable.
pub const SM_PASID_ENTRY_ACCESS_ERROR: u8 = 0x58;
/// PASID table entry P clear.
pub const SM_PASID_ENTRY_NOT_PRESENT: u8 = 0x59;
/// Reserved bit set in a PASID table entry.
pub const SM_PASID_ENTRY_RESERVED: u8 = 0x5A;
/// Invalid programming of a PASID entry: reserved or unsupported PGTT, AW, FSPM.
pub const SM_PASID_ENTRY_INVALID: u8 = 0x5B;
/// Execute request while the PASID entry's ERE is clear.
pub const SM_PASID_ENTRY_ERE_CLEAR: u8 = 0x5C;
/// Supervisor request while the PASID entry's SRE is clear.
pub const SM_PASID_ENTRY_SRE_CLEAR: u8 = 0x5D;
/// First-stage paging entry unreadable.
pub const SM_FS_ENTRY_ACCESS_ERROR: u8 = 0x70;
/// First-stage paging entry P clear.
pub const SM_FS_ENTRY_NOT_PRESENT: u8 = 0x71;
/// Reserved bit set in a first-stage paging entry.
pub const SM_FS_ENTRY_RESERVED: u8 = 0x72;
/// Invalid FSPTPTR in the PASID entry.
pub const SM_FSPTPTR_INVALID: u8 = 0x73;
/// Second-stage paging entry unreadable.
pub const SM_SS_ENTRY_ACCESS_ERROR: u8 = 0x78;
/// Second-stage paging entry not present (R = W = 0).
pub const SM_SS_ENTRY_NOT_PRESENT: u8 = 0x79;
/// Reserved bit set in a second-stage paging entry.
pub const SM_SS_ENTRY_RESERVED: u8 = 0x7A;
/// Invalid SSPTPTR in the PASID entry.
pub const SM_SSPTPTR_INVALID: u8 = 0x7B;
/// First-stage input address not canonical.
pub const SM_FS_NON_CANONICAL: u8 = 0x80;
/// User request to a supervisor first-stage page (U/S clear).
pub const SM_FS_USER_SUPERVISOR: u8 = 0x81;
/// Execute request without execute permission.
pub const SM_NO_EXECUTE: u8 = 0x82;
/// Input address beyond the address width of the translation.
pub const SM_ADDRESS_BEYOND_AW: u8 = 0x83;
/// Write (or AtomicOp) request without write permission.
pub const SM_WRITE_NOT_ALLOWED: u8 = 0x85;
/// Read (or AtomicOp) request without read permission.
pub const SM_READ_NOT_ALLOWED: u8 = 0x86;

use super::regs::*;
use super::State;

/// One 128-bit primary fault recording register, as software reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultRecord {
    /// Bits 63:0: FI (the faulting page) in 63:12.
    pub lo: u64,
    /// Bits 127:64: SID, PP, FR, PV, T, F.
    pub hi: u64,
}

/// What a fault records: the request and the reason.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FaultInfo {
    pub sid: u16,
    pub pasid: Option<u32>,
    pub addr: u64,
    pub read: bool,
    pub reason: u8,
}

impl State<'_> {
    /// Number of fault recording registers: CAP.NFR + 1.
    pub(crate) fn fault_record_count(&self) -> usize {
        ((self.cfg.cap >> CAP_NFR_SHIFT) & 0xff) as usize + 1
    }

    /// Byte offset of the first fault recording register: CAP.FRO * 16.
    pub(crate) fn fault_record_base(&self) -> usize {
        ((self.cfg.cap >> CAP_FRO_SHIFT) & 0x3ff) as usize * 16
    }

    /// PPF: set while any record holds a fault.
    pub(crate) fn ppf(&self) -> bool {
        self.records.iter().any(|r| r.hi & FRCD_HI_F != 0)
    }

    /// Records a fault as primary fault logging (chapter 7) describes; returns whether a record was written.
    ///
    /// A fault is dropped while PFO is set, and sets PFO when the next record to write still
    /// holds an unread fault. The first fault recorded while PPF was clear sets FRI.
    pub(crate) fn record_fault(&mut self, info: FaultInfo) -> bool {
        if self.fsts & FSTS_PFO != 0 {
            self.stats.faults_dropped += 1;
            return false;
        }
        let count = self.records.len();
        let index = self.next_record % count.max(1);
        let Some(slot) = self.records.get(index).copied() else {
            return false;
        };
        if slot.hi & FRCD_HI_F != 0 {
            self.fsts |= FSTS_PFO;
            self.stats.faults_dropped += 1;
            return false;
        }
        let was_pending = self.ppf();
        let mut hi = u64::from(info.sid) & FRCD_HI_SID
            | u64::from(info.reason) << FRCD_HI_FR_SHIFT
            | FRCD_HI_F;
        if let Some(pasid) = info.pasid {
            hi |= FRCD_HI_PP | (u64::from(pasid) & 0xf_ffff) << FRCD_HI_PV_SHIFT;
        }
        if info.read {
            hi |= FRCD_HI_T;
        }
        if let Some(r) = self.records.get_mut(index) {
            *r = FaultRecord {
                lo: info.addr & FRCD_FI,
                hi,
            };
        }
        self.next_record = (index + 1) % count;
        if !was_pending {
            self.fri = index as u8;
            self.raise_fault_event();
        }
        self.stats.faults_recorded += 1;
        true
    }

    /// A fault event: delivered at once when FECTL.IM is clear, else left pending in FECTL.IP.
    pub(crate) fn raise_fault_event(&mut self) {
        if self.fectl & EVENT_IM != 0 {
            self.fectl |= EVENT_IP;
        } else {
            self.stats.fault_interrupts += 1;
        }
    }

    /// Software writes FECTL: unmasking delivers a pending event.
    pub(crate) fn write_fectl(&mut self, value: u32) {
        self.fectl = (self.fectl & EVENT_IP) | (value & EVENT_IM);
        if self.fectl & EVENT_IM == 0 && self.fectl & EVENT_IP != 0 {
            self.fectl &= !EVENT_IP;
            self.stats.fault_interrupts += 1;
        }
    }

    /// FSTS as software reads it.
    pub(crate) fn read_fsts(&self) -> u32 {
        let mut v = self.fsts;
        if self.ppf() {
            v |= FSTS_PPF | u32::from(self.fri) << FSTS_FRI_SHIFT;
        }
        v
    }

    /// Reads 64 bits of the fault recording registers at `offset` (relative to the first one).
    pub(crate) fn read_frcd(&self, offset: usize) -> Option<u64> {
        let r = self.records.get(offset / 16)?;
        Some(if offset % 16 == 0 { r.lo } else { r.hi })
    }

    /// Writes 64 bits of the fault recording registers: only F (bit 127) is writable, RW1C.
    pub(crate) fn write_frcd(&mut self, offset: usize, value: u64) {
        if offset % 16 == 8 && value & FRCD_HI_F != 0 {
            if let Some(r) = self.records.get_mut(offset / 16) {
                r.hi &= !FRCD_HI_F;
            }
        }
    }
}
