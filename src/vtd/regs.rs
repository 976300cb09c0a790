//! Remapping-hardware registers: Intel VT-d specification rev. 4.1, §11.4 Register Descriptions.
//!
//! Offsets (the register address map of §11), the Global Command /
//! Global Status handshake (§11.4.4, §11.4.5), the Root Table Address Register (§11.4.6) and the
//! fault / invalidation status bits (§11.4: Fault Status, Invalidation Completion Status and
//! Event Control registers).
//!
//! `GCMD_REG` is write-only and its one-shot command bits (SRTP, SFL, WBF, SIRTP) must not be
//! re-issued by accident, so §11.4.4 prescribes: read `GSTS_REG`, clear the one-shot bits with
//! the mask `0x96FF_FFFF`, set or clear the one command bit, write `GCMD_REG`, and wait for
//! `GSTS_REG` to reflect it. [`set_persistent`] and the one-shot helpers do exactly that, with a
//! bounded wait.

use bitflags::bitflags;

use super::{Error, Field, Wait};
use crate::mem::PhysAddr;
use crate::mmio::{poll, RegisterWindow};

/// Version Register (32-bit): 7:4 major, 3:0 minor.
pub const VER_REG: usize = 0x00;
/// Capability Register (64-bit), see [`super::cap`].
pub const CAP_REG: usize = 0x08;
/// Extended Capability Register (64-bit), see [`super::ecap`].
pub const ECAP_REG: usize = 0x10;
/// Global Command Register (32-bit, write-only).
pub const GCMD_REG: usize = 0x18;
/// Global Status Register (32-bit).
pub const GSTS_REG: usize = 0x1C;
/// Root Table Address Register (64-bit).
pub const RTADDR_REG: usize = 0x20;
/// Context Command Register (64-bit).
pub const CCMD_REG: usize = 0x28;
/// Fault Status Register (32-bit).
pub const FSTS_REG: usize = 0x34;
/// Fault Event Control Register (32-bit).
pub const FECTL_REG: usize = 0x38;
/// Fault Event Data Register (32-bit).
pub const FEDATA_REG: usize = 0x3C;
/// Fault Event Address Register (32-bit).
pub const FEADDR_REG: usize = 0x40;
/// Fault Event Upper Address Register (32-bit).
pub const FEUADDR_REG: usize = 0x44;
/// Advanced Fault Log Register (64-bit, deprecated).
pub const AFLOG_REG: usize = 0x58;
/// Protected Memory Enable Register (32-bit).
pub const PMEN_REG: usize = 0x64;
/// `PMEN_REG` 31 `EPM`: Enable Protected Memory (the other bits but `PRS` are reserved).
pub const PMEN_EPM: u32 = 1 << 31;
/// `PMEN_REG` 0 `PRS`: Protected Region Status.
pub const PMEN_PRS: u32 = 1 << 0;
/// Protected Low-Memory Base Register (32-bit).
pub const PLMBASE_REG: usize = 0x68;
/// Protected Low-Memory Limit Register (32-bit).
pub const PLMLIMIT_REG: usize = 0x6C;
/// Protected High-Memory Base Register (64-bit).
pub const PHMBASE_REG: usize = 0x70;
/// Protected High-Memory Limit Register (64-bit).
pub const PHMLIMIT_REG: usize = 0x78;
/// Invalidation Queue Head Register (64-bit).
pub const IQH_REG: usize = 0x80;
/// Invalidation Queue Tail Register (64-bit).
pub const IQT_REG: usize = 0x88;
/// Invalidation Queue Address Register (64-bit).
pub const IQA_REG: usize = 0x90;
/// Invalidation Completion Status Register (32-bit).
pub const ICS_REG: usize = 0x9C;
/// Invalidation Event Control Register (32-bit).
pub const IECTL_REG: usize = 0xA0;
/// Invalidation Event Data Register (32-bit).
pub const IEDATA_REG: usize = 0xA4;
/// Invalidation Event Address Register (32-bit).
pub const IEADDR_REG: usize = 0xA8;
/// Invalidation Event Upper Address Register (32-bit).
pub const IEUADDR_REG: usize = 0xAC;
/// Invalidation Queue Error Record Register (64-bit).
pub const IQERCD_REG: usize = 0xB0;
/// Interrupt Remapping Table Address Register (64-bit).
pub const IRTA_REG: usize = 0xB8;
/// Page Request Queue Head Register (64-bit).
pub const PQH_REG: usize = 0xC0;
/// Page Request Queue Tail Register (64-bit).
pub const PQT_REG: usize = 0xC8;
/// Page Request Queue Address Register (64-bit).
pub const PQA_REG: usize = 0xD0;
/// Page Request Status Register (32-bit).
pub const PRS_REG: usize = 0xDC;
/// Page Request Event Control Register (32-bit).
pub const PECTL_REG: usize = 0xE0;
/// MTRR Capability Register (64-bit).
pub const MTRRCAP_REG: usize = 0x100;
/// MTRR Default Type Register (64-bit).
pub const MTRRDEF_REG: usize = 0x108;

/// Offset of `IVA_REG` (Invalidate Address Register): `ECAP.IRO * 16`.
pub const fn iva_reg(iotlb_register_offset: usize) -> usize {
    iotlb_register_offset
}

/// Offset of `IOTLB_REG` (IOTLB Invalidate Register): `ECAP.IRO * 16 + 8`.
pub const fn iotlb_reg(iotlb_register_offset: usize) -> usize {
    iotlb_register_offset.saturating_add(8)
}

/// Offset of fault-recording register `index` (128 bits each) at `CAP.FRO * 16`.
pub const fn frcd_reg(fault_recording_offset: usize, index: u16) -> usize {
    fault_recording_offset.saturating_add(index as usize * 16)
}

bitflags! {
    /// Global Command Register bits (§11.4.4).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Gcmd: u32 {
        /// 31: Translation Enable.
        const TE = 1 << 31;
        /// 30: Set Root Table Pointer (one-shot).
        const SRTP = 1 << 30;
        /// 29: Set Fault Log (one-shot, deprecated).
        const SFL = 1 << 29;
        /// 28: Enable Advanced Fault Logging (deprecated).
        const EAFL = 1 << 28;
        /// 27: Write Buffer Flush (one-shot).
        const WBF = 1 << 27;
        /// 26: Queued Invalidation Enable.
        const QIE = 1 << 26;
        /// 25: Interrupt Remapping Enable.
        const IRE = 1 << 25;
        /// 24: Set Interrupt Remap Table Pointer (one-shot).
        const SIRTP = 1 << 24;
        /// 23: Compatibility Format Interrupt.
        const CFI = 1 << 23;
    }
}

bitflags! {
    /// Global Status Register bits (§11.4.5), one per `GCMD` bit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Gsts: u32 {
        /// 31: Translation Enable Status.
        const TES = 1 << 31;
        /// 30: Root Table Pointer Status.
        const RTPS = 1 << 30;
        /// 29: Fault Log Status.
        const FLS = 1 << 29;
        /// 28: Advanced Fault Logging Status.
        const AFLS = 1 << 28;
        /// 27: Write Buffer Flush Status (set while a flush is in progress).
        const WBFS = 1 << 27;
        /// 26: Queued Invalidation Enable Status.
        const QIES = 1 << 26;
        /// 25: Interrupt Remapping Enable Status.
        const IRES = 1 << 25;
        /// 24: Interrupt Remapping Table Pointer Status.
        const IRTPS = 1 << 24;
        /// 23: Compatibility Format Interrupt Status.
        const CFIS = 1 << 23;
    }
}

/// §11.4.4: `GSTS & 0x96FF_FFFF` keeps the persistent enables and drops the one-shot bits
/// (RTPS 30, FLS 29, WBFS 27, IRTPS 24) so that a write to `GCMD` never re-issues them.
pub const GSTS_ONE_SHOT_CLEAR_MASK: u32 = 0x96FF_FFFF;

/// A `GCMD` bit that stays in force until cleared, and the `GSTS` bit that reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PersistentCommand {
    /// `TE` / `TES`: DMA remapping on.
    TranslationEnable,
    /// `QIE` / `QIES`: queued invalidation on.
    QueuedInvalidationEnable,
    /// `IRE` / `IRES`: interrupt remapping on.
    InterruptRemappingEnable,
    /// `CFI` / `CFIS`: compatibility-format interrupts pass through.
    CompatibilityFormatInterrupt,
}

impl PersistentCommand {
    /// The `(GCMD, GSTS)` bit pair.
    pub const fn bits(self) -> (Gcmd, Gsts) {
        match self {
            Self::TranslationEnable => (Gcmd::TE, Gsts::TES),
            Self::QueuedInvalidationEnable => (Gcmd::QIE, Gsts::QIES),
            Self::InterruptRemappingEnable => (Gcmd::IRE, Gsts::IRES),
            Self::CompatibilityFormatInterrupt => (Gcmd::CFI, Gsts::CFIS),
        }
    }
}

/// Reads `GSTS_REG`.
pub fn gsts<W: RegisterWindow + ?Sized>(regs: &W) -> Gsts {
    Gsts::from_bits_retain(regs.read32(GSTS_REG))
}

/// Writes `GCMD` as §11.4.4 requires: the current status with one-shot bits cleared, with
/// `command` set (`on`) or cleared.
fn issue<W: RegisterWindow + ?Sized>(regs: &W, command: Gcmd, on: bool) {
    let current = regs.read32(GSTS_REG) & GSTS_ONE_SHOT_CLEAR_MASK;
    let value = if on {
        current | command.bits()
    } else {
        current & !command.bits()
    };
    regs.write32(GCMD_REG, value);
}

/// Polls `GSTS` until `status` reads as `set`.
fn await_status<W: RegisterWindow + ?Sized>(
    regs: &W,
    status: Gsts,
    set: bool,
    budget: u32,
) -> Result<(), Error> {
    poll(budget, || {
        (gsts(regs).contains(status) == set).then_some(())
    })
    .ok_or(Error::Timeout {
        what: Wait::GlobalStatus {
            status: status.bits(),
            set,
        },
        polls: budget,
    })
}

/// Turns a persistent command on or off and waits (at most `budget` polls) for `GSTS` to agree.
///
/// # Errors
/// [`Error::Timeout`] naming the `GSTS` bit if the hardware does not respond.
pub fn set_persistent<W: RegisterWindow + ?Sized>(
    regs: &W,
    command: PersistentCommand,
    on: bool,
    budget: u32,
) -> Result<(), Error> {
    let (cmd, status) = command.bits();
    issue(regs, cmd, on);
    await_status(regs, status, on, budget)
}

/// Issues `SRTP` (Set Root Table Pointer) and waits for `GSTS.RTPS`: hardware latches
/// `RTADDR_REG`. Software must then globally invalidate the context cache, PASID cache (scalable
/// mode) and IOTLB (§6.5.3.3 / §11.4.4, unless `CAP.ESRTPS`).
///
/// # Errors
/// [`Error::Timeout`] if `RTPS` does not set within `budget` polls.
pub fn set_root_table_pointer<W: RegisterWindow + ?Sized>(
    regs: &W,
    budget: u32,
) -> Result<(), Error> {
    issue(regs, Gcmd::SRTP, true);
    await_status(regs, Gsts::RTPS, true, budget)
}

/// Issues `SIRTP` (Set Interrupt Remap Table Pointer) and waits for `GSTS.IRTPS`.
///
/// # Errors
/// [`Error::Timeout`] if `IRTPS` does not set within `budget` polls.
pub fn set_interrupt_remap_table_pointer<W: RegisterWindow + ?Sized>(
    regs: &W,
    budget: u32,
) -> Result<(), Error> {
    issue(regs, Gcmd::SIRTP, true);
    await_status(regs, Gsts::IRTPS, true, budget)
}

/// Issues `WBF` (Write Buffer Flush, needed only when `CAP.RWBF`) and waits for `GSTS.WBFS` to
/// clear, which hardware does when the flush completes.
///
/// # Errors
/// [`Error::Timeout`] if `WBFS` stays set for `budget` polls.
pub fn write_buffer_flush<W: RegisterWindow + ?Sized>(regs: &W, budget: u32) -> Result<(), Error> {
    issue(regs, Gcmd::WBF, true);
    await_status(regs, Gsts::WBFS, false, budget)
}

/// Turns off the protected memory regions firmware (or a measured launch) left on (`PMEN_REG`;
/// §10.4.16 in rev 3): with `PRS` clear and `EPM` clear there is nothing to do; a transition to
/// on still in progress (`EPM` set, `PRS` clear) is awaited first, since `EPM` must not change
/// before `PRS` reflects the last write; then `EPM` is written 0 (every other bit is reserved
/// or read-only) and `PRS` awaited clear. Only for a unit whose `CAP.PLMR` or `CAP.PHMR` is set
/// (else the register is read-only 0), and only once translation is on: until then the regions
/// are all that keeps DMA off them.
///
/// # Errors
/// [`Error::Timeout`] ([`Wait::ProtectedMemoryStatus`]) if `PRS` does not follow.
pub fn disable_protected_memory<W: RegisterWindow + ?Sized>(
    regs: &W,
    budget: u32,
) -> Result<(), Error> {
    let pmen = regs.read32(PMEN_REG);
    if pmen & (PMEN_EPM | PMEN_PRS) == 0 {
        return Ok(());
    }
    if pmen & PMEN_EPM != 0 && pmen & PMEN_PRS == 0 {
        await_pmen_status(regs, true, budget)?;
    }
    regs.write32(PMEN_REG, 0);
    await_pmen_status(regs, false, budget)
}

/// Polls `PMEN_REG.PRS` until it reads `set`.
fn await_pmen_status<W: RegisterWindow + ?Sized>(
    regs: &W,
    set: bool,
    budget: u32,
) -> Result<(), Error> {
    poll(budget, || {
        ((regs.read32(PMEN_REG) & PMEN_PRS != 0) == set).then_some(())
    })
    .ok_or(Error::Timeout {
        what: Wait::ProtectedMemoryStatus { set },
        polls: budget,
    })
}

/// `RTADDR_REG.TTM` (11:10): the translation table mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TranslationTableMode {
    /// 00b: legacy mode, root and context entries of §9.1 / §9.3.
    Legacy = 0,
    /// 01b: scalable mode, §9.2 / §9.4 (needs `ECAP.SMTS`).
    Scalable = 1,
    /// 11b: abort-DMA mode: every request is blocked (needs `ECAP.ADMS`).
    AbortDma = 3,
}

impl TryFrom<u64> for TranslationTableMode {
    type Error = Error;
    fn try_from(raw: u64) -> Result<Self, Error> {
        match raw {
            0 => Ok(Self::Legacy),
            1 => Ok(Self::Scalable),
            3 => Ok(Self::AbortDma),
            _ => Err(Error::InvalidArgument {
                what: "RTADDR.TTM",
                value: raw,
            }),
        }
    }
}

/// Root Table Address Register value (§11.4.6): `RTA` (63:12) and `TTM` (11:10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootTableAddress(u64);

impl RootTableAddress {
    /// 63:12 Root Table Address.
    pub const RTA: Field = Field::new(63, 12);
    /// 11:10 Translation Table Mode.
    pub const TTM: Field = Field::new(11, 10);

    /// Encodes a 4 KiB-aligned root table at `root` in mode `ttm`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `root` is not 4 KiB aligned.
    pub const fn new(root: PhysAddr, ttm: TranslationTableMode) -> Result<Self, Error> {
        if !root.is_aligned(12) {
            return Err(Error::InvalidArgument {
                what: "root table address (4 KiB aligned)",
                value: root.get(),
            });
        }
        Ok(Self(root.get() | Self::TTM.place(ttm as u64)))
    }
    /// The raw register value.
    pub const fn get(self) -> u64 {
        self.0
    }
    /// The root table's address.
    pub const fn root(self) -> PhysAddr {
        PhysAddr::new(self.0 & Self::RTA.mask())
    }
}

/// Programs `RTADDR_REG` and issues `SRTP` (§11.4.6: the address takes effect only through
/// `SRTP`).
///
/// # Errors
/// [`Error::Timeout`] if `GSTS.RTPS` does not set within `budget` polls;
/// [`Error::UnexpectedState`] if `RTADDR` does not read back as written.
pub fn write_root_table<W: RegisterWindow + ?Sized>(
    regs: &W,
    rta: RootTableAddress,
    budget: u32,
) -> Result<(), Error> {
    regs.write64(RTADDR_REG, rta.get());
    // A write the unit dropped would let SRTP latch whatever RTADDR held before.
    let back = regs.read64(RTADDR_REG);
    if back != rta.get() {
        return Err(Error::UnexpectedState {
            register: "RTADDR (the write did not take)",
            value: back,
        });
    }
    set_root_table_pointer(regs, budget)
}

bitflags! {
    /// Fault Status Register bits (§11.4, Fault Status Register). All but `PPF` and `FRI` are write-1-to-clear.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Fsts: u32 {
        /// 0: Primary Fault Overflow (RW1C).
        const PFO = 1 << 0;
        /// 1: Primary Pending Fault (RO: set while any fault record has `F` set).
        const PPF = 1 << 1;
        /// 4: Invalidation Queue Error (RW1C).
        const IQE = 1 << 4;
        /// 5: Invalidation Completion Error (RW1C).
        const ICE = 1 << 5;
        /// 6: Invalidation Time-out Error (RW1C).
        const ITE = 1 << 6;
    }
}

impl Fsts {
    /// 15:8 Fault Record Index: the first fault-recording register with `F` set.
    pub const FRI: Field = Field::new(15, 8);
}

/// Reads `FSTS_REG`.
pub fn fsts<W: RegisterWindow + ?Sized>(regs: &W) -> (Fsts, u8) {
    let raw = regs.read32(FSTS_REG);
    (Fsts::from_bits_retain(raw), Fsts::FRI.get(raw as u64) as u8)
}

/// Clears write-1-to-clear `FSTS` bits; only the given bits are written, so other pending
/// conditions are left for their handlers.
pub fn clear_fsts<W: RegisterWindow + ?Sized>(regs: &W, bits: Fsts) {
    regs.write32(FSTS_REG, (bits - Fsts::PPF).bits());
}

/// Invalidation Completion Status Register bit 0, `IWC` (RW1C): an invalidation wait descriptor
/// with `IF` set completed.
pub const ICS_IWC: u32 = 1;

/// Fault Event Control / Invalidation Event Control bit 31, `IM`: interrupt mask.
pub const EVENT_CONTROL_IM: u32 = 1 << 31;
/// Fault Event Control / Invalidation Event Control bit 30, `IP`: interrupt pending.
pub const EVENT_CONTROL_IP: u32 = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::test_support::Model;

    #[test]
    fn one_shot_mask_keeps_enables_only() {
        // 0x96FF_FFFF = 1001_0110_1111_..: bits 31 (TES), 28 (AFLS), 26 (QIES), 25 (IRES),
        // 23:0 kept; 30 (RTPS), 29 (FLS), 27 (WBFS), 24 (IRTPS) dropped.
        let kept = Gsts::from_bits_truncate(GSTS_ONE_SHOT_CLEAR_MASK);
        assert_eq!(
            kept,
            Gsts::TES | Gsts::AFLS | Gsts::QIES | Gsts::IRES | Gsts::CFIS
        );
    }

    #[test]
    fn enable_translation_writes_status_without_one_shots() {
        let m = Model::new();
        // RTPS is set from an earlier SRTP; it must not be echoed back into GCMD.
        m.set_gsts(Gsts::RTPS | Gsts::QIES);
        set_persistent(&m, PersistentCommand::TranslationEnable, true, 10).unwrap();
        assert_eq!(m.last_gcmd(), Some((Gcmd::TE | Gcmd::QIE).bits()));
        assert!(gsts(&m).contains(Gsts::TES | Gsts::QIES));
        set_persistent(&m, PersistentCommand::TranslationEnable, false, 10).unwrap();
        assert_eq!(m.last_gcmd(), Some(Gcmd::QIE.bits()));
    }

    #[test]
    fn root_table_pointer_and_timeouts() {
        let m = Model::new();
        let rta = RootTableAddress::new(PhysAddr::new(0x1234_5000), TranslationTableMode::Scalable)
            .unwrap();
        assert_eq!(rta.get(), 0x1234_5400); // TTM 01b at 11:10 = 0x400
        write_root_table(&m, rta, 10).unwrap();
        assert_eq!(m.read64(RTADDR_REG), 0x1234_5400);
        assert_eq!(m.last_gcmd(), Some(Gcmd::SRTP.bits()));
        m.freeze_gcmd(true);
        assert_eq!(
            set_persistent(&m, PersistentCommand::QueuedInvalidationEnable, true, 7),
            Err(Error::Timeout {
                what: Wait::GlobalStatus {
                    status: Gsts::QIES.bits(),
                    set: true
                },
                polls: 7
            })
        );
        m.set_gsts(Gsts::WBFS);
        assert!(matches!(
            write_buffer_flush(&m, 3),
            Err(Error::Timeout { polls: 3, .. })
        ));
        assert!(
            RootTableAddress::new(PhysAddr::new(0x1001), TranslationTableMode::Legacy).is_err()
        );
        assert_eq!(
            TranslationTableMode::try_from(2),
            Err(Error::InvalidArgument {
                what: "RTADDR.TTM",
                value: 2
            })
        );
    }

    #[test]
    fn protected_memory_regions_turned_off() {
        let m = Model::new();
        disable_protected_memory(&m, 5).unwrap();
        assert_eq!(m.read32(PMEN_REG), 0);
        // On (EPM, PRS): EPM written 0, PRS awaited clear.
        m.write32(PMEN_REG, PMEN_EPM | PMEN_PRS);
        disable_protected_memory(&m, 5).unwrap();
        assert_eq!(m.read32(PMEN_REG), 0);
        // Turning on still in progress (EPM, PRS clear): PRS awaited set before EPM changes.
        m.write32(PMEN_REG, PMEN_EPM);
        assert_eq!(
            disable_protected_memory(&m, 5),
            Err(Error::Timeout {
                what: Wait::ProtectedMemoryStatus { set: true },
                polls: 5
            })
        );
        assert_eq!(
            m.read32(PMEN_REG),
            PMEN_EPM,
            "EPM changed before PRS followed it"
        );
    }

    #[test]
    fn fsts_clear_writes_only_rw1c_bits() {
        let m = Model::new();
        m.raise_fsts(Fsts::IQE | Fsts::ITE);
        clear_fsts(&m, Fsts::IQE | Fsts::PPF);
        assert_eq!(fsts(&m).0, Fsts::ITE);
    }
}
