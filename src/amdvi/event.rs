//! Event log entries: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.x, §2.5 "Event Logging": ILLEGAL_DEV_TABLE_ENTRY (1), IO_PAGE_FAULT (2),
//! DEV_TAB_HARDWARE_ERROR (3), PAGE_TAB_HARDWARE_ERROR (4), ILLEGAL_COMMAND_ERROR (5),
//! COMMAND_HARDWARE_ERROR (6), IOTLB_INV_TIMEOUT (7), INVALID_DEVICE_REQUEST (8) and
//! INVALID_PPR_REQUEST (9).
//!
//! Every entry is 128 bits: `DeviceID` in bits 15:0, `EventCode` in bits 63:60, the event's
//! flags in bits 59:48, a PASID or domain ID in bits 51:32 with 19:16 (per event) and the
//! address in the second quadword. Codes and the IO_PAGE_FAULT flag positions checked against
//! Linux `amd_iommu_types.h` (`EVENT_*`) and QEMU `amd_iommu.h` (`AMDVI_EVENT_*`), facts only.

use bitflags::bitflags;

/// The event code, bits 63:60 of the first quadword.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventCode {
    /// `ILLEGAL_DEV_TABLE_ENTRY`: the device's DTE holds a reserved value.
    IllegalDevTableEntry,
    /// `IO_PAGE_FAULT`: a request the tables (or the DTE's IR/IW) refuse.
    IoPageFault,
    /// `DEV_TAB_HARDWARE_ERROR`: reading the device table failed.
    DevTabHardwareError,
    /// `PAGE_TAB_HARDWARE_ERROR`: reading a page table failed.
    PageTabHardwareError,
    /// `ILLEGAL_COMMAND_ERROR`: the command at `address` is illegal; the buffer stopped.
    IllegalCommandError,
    /// `COMMAND_HARDWARE_ERROR`: fetching the command at `address` failed; the buffer stopped.
    CommandHardwareError,
    /// `IOTLB_INV_TIMEOUT`: an ATS device did not complete an invalidation in time.
    IotlbInvTimeout,
    /// `INVALID_DEVICE_REQUEST`: a request the device may not make (ATS translation request
    /// with ATS off, a PASID without GV, ...).
    InvalidDeviceRequest,
    /// `INVALID_PPR_REQUEST`: a peripheral page request the unit refuses.
    InvalidPprRequest,
    /// A code this driver does not decode (RMP events, or a reserved one).
    Other(u8),
}

impl EventCode {
    /// Decodes the 4-bit code.
    pub const fn from_code(code: u8) -> Self {
        match code {
            0x1 => EventCode::IllegalDevTableEntry,
            0x2 => EventCode::IoPageFault,
            0x3 => EventCode::DevTabHardwareError,
            0x4 => EventCode::PageTabHardwareError,
            0x5 => EventCode::IllegalCommandError,
            0x6 => EventCode::CommandHardwareError,
            0x7 => EventCode::IotlbInvTimeout,
            0x8 => EventCode::InvalidDeviceRequest,
            0x9 => EventCode::InvalidPprRequest,
            c => EventCode::Other(c),
        }
    }

    /// The 4-bit code.
    pub const fn code(self) -> u8 {
        match self {
            EventCode::IllegalDevTableEntry => 0x1,
            EventCode::IoPageFault => 0x2,
            EventCode::DevTabHardwareError => 0x3,
            EventCode::PageTabHardwareError => 0x4,
            EventCode::IllegalCommandError => 0x5,
            EventCode::CommandHardwareError => 0x6,
            EventCode::IotlbInvTimeout => 0x7,
            EventCode::InvalidDeviceRequest => 0x8,
            EventCode::InvalidPprRequest => 0x9,
            EventCode::Other(c) => c,
        }
    }
}

bitflags! {
    /// The flags of IO_PAGE_FAULT (and of the events that share its layout: ILLEGAL_DEV_TABLE_ENTRY,
    /// DEV_TAB/PAGE_TAB_HARDWARE_ERROR), bits 59:48 of the first quadword shifted down.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct FaultFlags: u16 {
        /// `GN`: the address is a guest address and the PASID field is valid.
        const GN = 1 << 0;
        /// `NX`: an execute request.
        const NX = 1 << 1;
        /// `US`: a user-mode request.
        const US = 1 << 2;
        /// `I`: an interrupt request (else a memory request).
        const I = 1 << 3;
        /// `PR`: the page (or DTE) was present; a permission fault.
        const PR = 1 << 4;
        /// `RW`: a write.
        const RW = 1 << 5;
        /// `PE`: a permission violation.
        const PE = 1 << 6;
        /// `RZ`: a reserved bit was not zero (or an illegal level).
        const RZ = 1 << 7;
        /// `TR`: a translation request (ATS), not a memory access.
        const TR = 1 << 8;
        /// Bits not interpreted.
        const _ = !0;
    }
}

/// One decoded event log entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub code: EventCode,
    /// `DeviceID` (bits 15:0): the requester, or the device of the command.
    pub device_id: u16,
    /// The event's flags (bits 59:48), for the page-fault layout as [`FaultFlags`].
    pub flags: FaultFlags,
    /// IO_PAGE_FAULT: the domain ID, or the PASID when `GN` (bits 51:32 with 19:16).
    pub domain_or_pasid: u32,
    /// The faulting address; for the command errors, the physical address of the command.
    pub address: u64,
    /// The raw entry.
    pub raw: [u64; 2],
}

impl Event {
    /// Decodes a raw entry.
    pub const fn decode(raw: [u64; 2]) -> Self {
        let q0 = raw[0];
        Self {
            code: EventCode::from_code((q0 >> 60) as u8),
            device_id: q0 as u16,
            flags: FaultFlags::from_bits_retain(((q0 >> 48) & 0xFFF) as u16),
            domain_or_pasid: ((q0 >> 32) & 0xFFFF) as u32 | (q0 as u32 & 0xF_0000),
            address: raw[1],
            raw,
        }
    }

    /// Encodes an event (for models: the inverse of [`decode`](Self::decode)).
    pub const fn encode(
        code: EventCode,
        device_id: u16,
        domain_or_pasid: u32,
        flags: u16,
        address: u64,
    ) -> [u64; 2] {
        [
            (code.code() as u64) << 60
                | ((flags & 0xFFF) as u64) << 48
                | ((domain_or_pasid & 0xFFFF) as u64) << 32
                | (domain_or_pasid & 0xF_0000) as u64
                | device_id as u64,
            address,
        ]
    }

    /// Whether the fault was a write (IO_PAGE_FAULT `RW`).
    pub const fn is_write(&self) -> bool {
        self.flags.contains(FaultFlags::RW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_page_fault() {
        let raw = Event::encode(
            EventCode::IoPageFault,
            0x20,
            0x1_0005,
            (FaultFlags::RW | FaultFlags::PR).bits(),
            0xdead_b000,
        );
        let e = Event::decode(raw);
        assert_eq!(e.code, EventCode::IoPageFault);
        assert_eq!(e.device_id, 0x20);
        assert_eq!(e.domain_or_pasid, 0x1_0005);
        assert!(e.is_write());
        assert!(e.flags.contains(FaultFlags::PR));
        assert_eq!(e.address, 0xdead_b000);
        for c in 0..16u8 {
            assert_eq!(EventCode::from_code(c).code(), c);
        }
    }
}
