//! The MMIO registers a driver programs: AMD I/O Virtualization Technology (IOMMU)
//! Specification, document 48882, revision 3.x, §3.4 "IOMMU MMIO Registers": Device Table Base
//! Address (0x0000), Command Buffer Base Address (0x0008), Event Log Base Address (0x0010),
//! IOMMU Control (0x0018), Exclusion Base / Range Limit (0x0020 / 0x0028), Extended Feature
//! (EFR, 0x0030; EFR2, 0x01A0), Command Buffer Head / Tail (0x2000 / 0x2008), Event Log Head /
//! Tail (0x2010 / 0x2018) and IOMMU Status (0x2020).
//!
//! Offsets checked against Linux `drivers/iommu/amd/amd_iommu_types.h` and QEMU
//! `hw/i386/amd_iommu.h` (facts only).

use bitflags::bitflags;

use super::Error;
use crate::mem::{PhysAddr, PAGE_SHIFT_4K};
use crate::mmio::{poll, RegisterWindow};

/// Device Table Base Address Register: `DevTabBase` 51:12, `Size` 8:0 (4 KiB pages - 1).
pub const DEV_TAB_BASE: usize = 0x0000;
/// Command Buffer Base Address Register: `ComBase` 51:12, `ComLen` 59:56.
pub const CMD_BUF_BASE: usize = 0x0008;
/// Event Log Base Address Register: `EventBase` 51:12, `EventLen` 59:56.
pub const EVENT_LOG_BASE: usize = 0x0010;
/// IOMMU Control Register.
pub const CONTROL: usize = 0x0018;
/// IOMMU Exclusion Base Register: `ExBase` 51:12, `Allow` bit 1, `ExEn` bit 0.
pub const EXCLUSION_BASE: usize = 0x0020;
/// IOMMU Exclusion Range Limit Register.
pub const EXCLUSION_LIMIT: usize = 0x0028;
/// IOMMU Extended Feature Register (EFR).
pub const EXT_FEATURE: usize = 0x0030;
/// IOMMU Extended Feature 2 Register (EFR2).
pub const EXT_FEATURE2: usize = 0x01A0;
/// Command Buffer Head Pointer Register: byte offset, bits 18:4.
pub const CMD_BUF_HEAD: usize = 0x2000;
/// Command Buffer Tail Pointer Register: byte offset, bits 18:4.
pub const CMD_BUF_TAIL: usize = 0x2008;
/// Event Log Head Pointer Register: byte offset, bits 18:4.
pub const EVENT_LOG_HEAD: usize = 0x2010;
/// Event Log Tail Pointer Register: byte offset, bits 18:4.
pub const EVENT_LOG_TAIL: usize = 0x2018;
/// IOMMU Status Register.
pub const STATUS: usize = 0x2020;
/// Size of the register window a unit needs (the registers above; performance counters at
/// 0x4000 and up are not used).
pub const WINDOW_LEN: usize = 0x4000;

/// Head and tail pointers: the byte offset of an entry, bits 18:4.
pub const POINTER_MASK: u64 = 0x7_FFF0;
/// `ComLen` / `EventLen`, bits 59:56: log2 of the number of 16-byte entries, 8..=15.
pub const RING_LEN_SHIFT: u32 = 56;
/// Smallest `ComLen` / `EventLen` (256 entries, one 4 KiB page).
pub const RING_LEN_MIN: u32 = 8;
/// Largest `ComLen` / `EventLen` (32768 entries, 512 KiB).
pub const RING_LEN_MAX: u32 = 15;
/// Base address fields, bits 51:12.
pub const BASE_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// Device Table `Size`, bits 8:0.
pub const DEV_TAB_SIZE_MASK: u64 = 0x1FF;

bitflags! {
    /// IOMMU Control Register (0x0018), the bits this driver sets or clears.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Control: u64 {
        /// `IommuEn`: translation (and the device table) in use.
        const IOMMU_EN = 1 << 0;
        /// `HtTunEn`: HyperTransport tunnel translation.
        const HT_TUN_EN = 1 << 1;
        /// `EventLogEn`.
        const EVENT_LOG_EN = 1 << 2;
        /// `EventIntEn`: an interrupt when an event is logged.
        const EVENT_INT_EN = 1 << 3;
        /// `ComWaitIntEn`: COMPLETION_WAIT with `I` interrupts.
        const COM_WAIT_INT_EN = 1 << 4;
        /// `PassPW`.
        const PASS_PW = 1 << 8;
        /// `ResPassPW`.
        const RES_PASS_PW = 1 << 9;
        /// `Coherent`: device table reads snoop.
        const COHERENT = 1 << 10;
        /// `Isoc`.
        const ISOC = 1 << 11;
        /// `CmdBufEn`.
        const CMD_BUF_EN = 1 << 12;
        /// `PPRLogEn`.
        const PPR_LOG_EN = 1 << 13;
        /// `PprIntEn`.
        const PPR_INT_EN = 1 << 14;
        /// `PPREn`.
        const PPR_EN = 1 << 15;
        /// `GTEn`: guest (v2) translation, needed for GCR3 tables.
        const GT_EN = 1 << 16;
        /// `GAEn`: guest virtual APIC.
        const GA_EN = 1 << 17;
        /// `SmiFEn`: the SMI filter (its registers say which devices may raise SMIs).
        const SMI_F_EN = 1 << 22;
        /// `SmiFLogEn`: SMIs the filter passes are logged.
        const SMI_F_LOG_EN = 1 << 24;
        /// `GALogEn`: guest virtual APIC log.
        const GA_LOG_EN = 1 << 28;
        /// `GAIntEn`: guest virtual APIC log interrupt.
        const GA_INT_EN = 1 << 29;
        /// `XTEn`: x2APIC interrupts.
        const XT_EN = 1 << 50;
        /// `DevTblSegEn`, bits 36:34: device table segments (IDs outside segment 0 use the
        /// Device Table Base registers at 0x100-0x130); never set by this driver.
        const DEV_TBL_SEG_EN = 0x7 << 34;
        /// Bits not interpreted here.
        const _ = !0;
    }
}

impl Control {
    /// The bits `enable` keeps as it finds them: the four the ACPI IVHD flags define for the
    /// platform (`HtTunEn`, `PassPW`, `ResPassPW`, `Isoc`), which this driver is not given
    /// (clearing `HtTunEn` would stop translating the HyperTransport tunnel's requests; on a
    /// cold boot nobody set them, and they stay clear), and the firmware's SMI filter
    /// (`SmiFEn`, `SmiFLogEn`: a platform control over which devices may raise SMIs, whose
    /// registers this driver does not program). Every other bit starts clear and only what
    /// this driver uses is set.
    pub const KEPT: Self = Self::HT_TUN_EN
        .union(Self::PASS_PW)
        .union(Self::RES_PASS_PW)
        .union(Self::ISOC)
        .union(Self::SMI_F_EN)
        .union(Self::SMI_F_LOG_EN);
}

/// `InvTimeout`, Control bits 7:5: how long the unit waits for an ATS device's invalidation
/// completion before it logs `IOTLB_INV_TIMEOUT`.
pub const INV_TIMEOUT_SHIFT: u32 = 5;
/// `InvTimeout` field mask.
pub const INV_TIMEOUT_MASK: u64 = 0x7 << INV_TIMEOUT_SHIFT;
/// `InvTimeout` = 1 s (encoding 4): the PCIe completion timeout of ATS invalidations is up to
/// 1 minute, but a unit's field stops at 100 s; Linux programs 1 s.
pub const INV_TIMEOUT_1S: u64 = 4;

bitflags! {
    /// IOMMU Status Register (0x2020). `EventOverflow`, `EventLogInt`, `ComWaitInt` and the PPR
    /// bits are write-1-to-clear; the run bits are read-only.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Status: u64 {
        /// `EventOverflow`: the log was full; logging stopped.
        const EVENT_OVERFLOW = 1 << 0;
        /// `EventLogInt`: an event was logged.
        const EVENT_LOG_INT = 1 << 1;
        /// `ComWaitInt`: a COMPLETION_WAIT with `I` completed.
        const COM_WAIT_INT = 1 << 2;
        /// `EventLogRun`.
        const EVENT_LOG_RUN = 1 << 3;
        /// `CmdBufRun`: the unit fetches commands (clear after a command error).
        const CMD_BUF_RUN = 1 << 4;
        /// `PprOverflow`.
        const PPR_OVERFLOW = 1 << 5;
        /// `PprInt`.
        const PPR_INT = 1 << 6;
        /// `PprLogRun`.
        const PPR_LOG_RUN = 1 << 7;
        /// Bits this driver does not interpret.
        const _ = !0;
    }
}

/// `Status`.
pub fn status<W: RegisterWindow + ?Sized>(regs: &W) -> Status {
    Status::from_bits_retain(regs.read64(STATUS))
}

/// `Control`.
pub fn control<W: RegisterWindow + ?Sized>(regs: &W) -> Control {
    Control::from_bits_retain(regs.read64(CONTROL))
}

/// Sets (`on`) or clears `bits` of `Control` and, for `CmdBufEn` / `EventLogEn`, waits (bounded)
/// until `Status` follows (`CmdBufRun` / `EventLogRun`).
///
/// # Errors
/// [`Error::Timeout`] naming the status bit.
pub fn set_control<W: RegisterWindow + ?Sized>(
    regs: &W,
    bits: Control,
    on: bool,
    budget: u32,
) -> Result<(), Error> {
    let mut c = control(regs);
    c.set(bits, on);
    regs.doorbell64(CONTROL, c.bits());
    let mut run = Status::empty();
    if bits.contains(Control::CMD_BUF_EN) {
        run |= Status::CMD_BUF_RUN;
    }
    if bits.contains(Control::EVENT_LOG_EN) {
        run |= Status::EVENT_LOG_RUN;
    }
    // Only the way to "stopped" is awaited: a unit may clear CmdBufRun again at once when it
    // meets an illegal command, so a wait for "running" could miss it. A unit slow to show
    // CmdBufRun is the command buffer's to tell from a stopped one (`cmdbuf`, "Starting").
    if run.is_empty() || on {
        return Ok(());
    }
    poll(budget, || (!status(regs).intersects(run)).then_some(())).ok_or(Error::Timeout {
        what: super::Wait::Run {
            status: run.bits(),
            set: false,
        },
        polls: budget,
    })
}

/// The value of a ring's base register: `pa` (4 KiB aligned, below 2^52) and `len_log2` entries.
///
/// # Errors
/// [`Error::InvalidArgument`] for a length outside 8..=15 or a misaligned address;
/// [`Error::TableOutOfRange`] for a page above 2^52.
pub fn ring_base(table: &'static str, pa: PhysAddr, len_log2: u32) -> Result<u64, Error> {
    if !(RING_LEN_MIN..=RING_LEN_MAX).contains(&len_log2) {
        return Err(Error::InvalidArgument {
            what: "ComLen/EventLen (8..=15)",
            value: u64::from(len_log2),
        });
    }
    base_field(table, pa).map(|b| b | u64::from(len_log2) << RING_LEN_SHIFT)
}

/// `pa` as a 51:12 base address field.
///
/// # Errors
/// As [`ring_base`].
pub fn base_field(table: &'static str, pa: PhysAddr) -> Result<u64, Error> {
    if !pa.is_aligned(PAGE_SHIFT_4K) {
        return Err(Error::InvalidArgument {
            what: "base address (4 KiB aligned)",
            value: pa.get(),
        });
    }
    if pa.get() & !BASE_MASK != 0 {
        return Err(Error::TableOutOfRange { table, pa });
    }
    Ok(pa.get())
}

/// The Device Table Base Address Register's value: `pages` 4 KiB pages (1..=512) at `pa`.
///
/// # Errors
/// As [`ring_base`]; [`Error::InvalidArgument`] for a size outside 1..=512 pages.
pub fn dev_tab_base(pa: PhysAddr, pages: u64) -> Result<u64, Error> {
    if !(1..=DEV_TAB_SIZE_MASK + 1).contains(&pages) {
        return Err(Error::InvalidArgument {
            what: "device table size (1..=512 pages)",
            value: pages,
        });
    }
    base_field("device table", pa).map(|b| b | (pages - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_encodings() {
        let pa = PhysAddr::new(0x1234_5000);
        assert_eq!(ring_base("c", pa, 8), Ok(0x0800_0000_1234_5000));
        assert_eq!(dev_tab_base(pa, 2), Ok(0x1234_5001));
        assert!(matches!(
            ring_base("c", pa, 16),
            Err(Error::InvalidArgument { value: 16, .. })
        ));
        assert!(matches!(
            dev_tab_base(pa, 513),
            Err(Error::InvalidArgument { value: 513, .. })
        ));
        assert!(matches!(
            base_field("c", PhysAddr::new(1 << 52)),
            Err(Error::TableOutOfRange { .. })
        ));
        assert!(matches!(
            base_field("c", PhysAddr::new(0x1008)),
            Err(Error::InvalidArgument { value: 0x1008, .. })
        ));
    }
}
