//! SMMUv3 register offsets, control registers and their update handshakes.
//!
//! Arm IHI 0070 G.b, chapter 6 "Memory map and registers": §6.2 (register map, page 0 at offset
//! 0, page 1 at offset 0x10000), §6.3.9-6.3.12 (CR0, CR0ACK, CR1, CR2), §6.3.14 (GBPA),
//! §6.3.16-6.3.19 (IRQ_CTRL, GERROR, GERRORN), §6.3.23-6.3.25 (STRTAB_BASE, STRTAB_BASE_CFG),
//! §6.3.26-6.3.28 (CMDQ_*), §6.3.29-6.3.31 (EVENTQ_*).
//!
//! CR0 changes take effect when CR0ACK reads back the same value (§6.3.10); GBPA changes when the
//! unit clears GBPA.UPDATE (§6.3.14). Both waits are bounded by a poll budget.

use bitflags::bitflags;

use super::field::Field;
use super::SmmuError;
use crate::mmio::{poll, RegisterWindow};

/// Offset of register page 1, which holds the event and PRI queue PROD/CONS registers.
pub const PAGE1: usize = 0x1_0000;

/// `SMMU_IDR0` .. `SMMU_IDR5`: identification registers (§6.3.1-6.3.6).
pub const IDR0: usize = 0x00;
/// `SMMU_IDR1`.
pub const IDR1: usize = 0x04;
/// `SMMU_IDR2`.
pub const IDR2: usize = 0x08;
/// `SMMU_IDR3`.
pub const IDR3: usize = 0x0c;
/// `SMMU_IDR4` (implementation defined).
pub const IDR4: usize = 0x10;
/// `SMMU_IDR5`.
pub const IDR5: usize = 0x14;
/// `SMMU_IIDR`: implementer, product, variant, revision.
pub const IIDR: usize = 0x18;
/// `SMMU_AIDR`: architecture revision (minor in bits 3:0, major in 7:4).
pub const AIDR: usize = 0x1c;
/// `SMMU_CR0`: enables.
pub const CR0: usize = 0x20;
/// `SMMU_CR0ACK`: CR0 as the unit has applied it.
pub const CR0ACK: usize = 0x24;
/// `SMMU_CR1`: table and queue memory attributes.
pub const CR1: usize = 0x28;
/// `SMMU_CR2`.
pub const CR2: usize = 0x2c;
/// `SMMU_STATUSR`.
pub const STATUSR: usize = 0x40;
/// `SMMU_GBPA`: global bypass attributes (what happens to traffic while SMMUEN = 0).
pub const GBPA: usize = 0x44;
/// `SMMU_AGBPA`.
pub const AGBPA: usize = 0x48;
/// `SMMU_IRQ_CTRL`.
pub const IRQ_CTRL: usize = 0x50;
/// `SMMU_IRQ_CTRLACK`.
pub const IRQ_CTRLACK: usize = 0x54;
/// `SMMU_GERROR`: global errors, each bit toggled by the unit when raised.
pub const GERROR: usize = 0x60;
/// `SMMU_GERRORN`: software toggles a bit to match GERROR to acknowledge it.
pub const GERRORN: usize = 0x64;
/// `SMMU_GERROR_IRQ_CFG0` (64-bit MSI address).
pub const GERROR_IRQ_CFG0: usize = 0x68;
/// `SMMU_GERROR_IRQ_CFG1` (MSI data).
pub const GERROR_IRQ_CFG1: usize = 0x70;
/// `SMMU_GERROR_IRQ_CFG2` (MSI attributes).
pub const GERROR_IRQ_CFG2: usize = 0x74;
/// `SMMU_STRTAB_BASE` (64-bit).
pub const STRTAB_BASE: usize = 0x80;
/// `SMMU_STRTAB_BASE_CFG`.
pub const STRTAB_BASE_CFG: usize = 0x88;
/// `SMMU_CMDQ_BASE` (64-bit).
pub const CMDQ_BASE: usize = 0x90;
/// `SMMU_CMDQ_PROD`.
pub const CMDQ_PROD: usize = 0x98;
/// `SMMU_CMDQ_CONS`.
pub const CMDQ_CONS: usize = 0x9c;
/// `SMMU_EVENTQ_BASE` (64-bit).
pub const EVENTQ_BASE: usize = 0xa0;
/// `SMMU_EVENTQ_PROD`, in page 1.
pub const EVENTQ_PROD: usize = PAGE1 + 0xa8;
/// `SMMU_EVENTQ_CONS`, in page 1.
pub const EVENTQ_CONS: usize = PAGE1 + 0xac;
/// `SMMU_EVENTQ_IRQ_CFG0` (64-bit MSI address).
pub const EVENTQ_IRQ_CFG0: usize = 0xb0;
/// `SMMU_EVENTQ_IRQ_CFG1`.
pub const EVENTQ_IRQ_CFG1: usize = 0xb8;
/// `SMMU_EVENTQ_IRQ_CFG2`.
pub const EVENTQ_IRQ_CFG2: usize = 0xbc;
/// `SMMU_PRIQ_BASE` (64-bit).
pub const PRIQ_BASE: usize = 0xc0;
/// `SMMU_PRIQ_IRQ_CFG0` (64-bit MSI address, with `IDR0.PRI`).
pub const PRIQ_IRQ_CFG0: usize = 0xd0;
/// `SMMU_PRIQ_PROD`, in page 1.
pub const PRIQ_PROD: usize = PAGE1 + 0xc8;
/// `SMMU_PRIQ_CONS`, in page 1.
pub const PRIQ_CONS: usize = PAGE1 + 0xcc;

bitflags! {
    /// `SMMU_CR0` / `SMMU_CR0ACK` one-bit enables (§6.3.9). `VMW` (bits 8:6) is [`CR0_VMW`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cr0: u32 {
        /// Translation enable; 0 means every transaction follows GBPA.
        const SMMUEN = 1 << 0;
        /// PRI queue enable.
        const PRIQEN = 1 << 1;
        /// Event queue enable.
        const EVENTQEN = 1 << 2;
        /// Command queue enable.
        const CMDQEN = 1 << 3;
        /// ATS check: translated transactions from devices with bypass STEs are checked.
        const ATSCHK = 1 << 4;
    }
}

/// `CR0.VMW`, bits 8:6: VMID wildcard for TLB invalidation (with `IDR0.VMW`).
pub const CR0_VMW: Field = Field::new("VMW", 8, 6);

/// Cacheability of table or queue accesses in CR1 (§6.3.11; not the TCR encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Cr1Cache {
    /// Non-cacheable.
    NonCacheable = 0,
    /// Write-back cacheable.
    WriteBack = 1,
    /// Write-through cacheable.
    WriteThrough = 2,
}

/// Shareability in CR1 (and elsewhere): `0b00` non-, `0b10` outer, `0b11` inner shareable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Shareability {
    /// Non-shareable.
    NonShareable = 0,
    /// Outer shareable.
    Outer = 2,
    /// Inner shareable.
    Inner = 3,
}

/// `CR1.QUEUE_IC`, bits 1:0.
pub const CR1_QUEUE_IC: Field = Field::new("QUEUE_IC", 1, 0);
/// `CR1.QUEUE_OC`, bits 3:2.
pub const CR1_QUEUE_OC: Field = Field::new("QUEUE_OC", 3, 2);
/// `CR1.QUEUE_SH`, bits 5:4.
pub const CR1_QUEUE_SH: Field = Field::new("QUEUE_SH", 5, 4);
/// `CR1.TABLE_IC`, bits 7:6.
pub const CR1_TABLE_IC: Field = Field::new("TABLE_IC", 7, 6);
/// `CR1.TABLE_OC`, bits 9:8.
pub const CR1_TABLE_OC: Field = Field::new("TABLE_OC", 9, 8);
/// `CR1.TABLE_SH`, bits 11:10.
pub const CR1_TABLE_SH: Field = Field::new("TABLE_SH", 11, 10);

/// Memory attributes the unit uses for its own accesses (CR1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cr1 {
    /// Inner cacheability of queue accesses.
    pub queue_ic: Cr1Cache,
    /// Outer cacheability of queue accesses.
    pub queue_oc: Cr1Cache,
    /// Shareability of queue accesses.
    pub queue_sh: Shareability,
    /// Inner cacheability of table walks (STE, CD).
    pub table_ic: Cr1Cache,
    /// Outer cacheability of table walks.
    pub table_oc: Cr1Cache,
    /// Shareability of table walks.
    pub table_sh: Shareability,
}

impl Cr1 {
    /// Write-back, inner shareable: for a unit that is coherent (`IDR0.COHACC = 1`).
    pub const COHERENT: Self = Self {
        queue_ic: Cr1Cache::WriteBack,
        queue_oc: Cr1Cache::WriteBack,
        queue_sh: Shareability::Inner,
        table_ic: Cr1Cache::WriteBack,
        table_oc: Cr1Cache::WriteBack,
        table_sh: Shareability::Inner,
    };

    /// Non-cacheable: for a unit that does not snoop (`IDR0.COHACC = 0`). Shareability of
    /// non-cacheable accesses is treated as outer shareable by the architecture.
    pub const NON_COHERENT: Self = Self {
        queue_ic: Cr1Cache::NonCacheable,
        queue_oc: Cr1Cache::NonCacheable,
        queue_sh: Shareability::Outer,
        table_ic: Cr1Cache::NonCacheable,
        table_oc: Cr1Cache::NonCacheable,
        table_sh: Shareability::Outer,
    };

    /// The register value.
    pub const fn encode(self) -> u32 {
        let mut w = CR1_QUEUE_IC.set_masked(0, self.queue_ic as u64);
        w = CR1_QUEUE_OC.set_masked(w, self.queue_oc as u64);
        w = CR1_QUEUE_SH.set_masked(w, self.queue_sh as u64);
        w = CR1_TABLE_IC.set_masked(w, self.table_ic as u64);
        w = CR1_TABLE_OC.set_masked(w, self.table_oc as u64);
        w = CR1_TABLE_SH.set_masked(w, self.table_sh as u64);
        w as u32
    }
}

bitflags! {
    /// `SMMU_CR2` (§6.3.12).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Cr2: u32 {
        /// EL2-E2H translation regime for `STRW = EL2` streams.
        const E2H = 1 << 0;
        /// Record C_BAD_STREAMID events for invalid StreamIDs.
        const RECINVSID = 1 << 1;
        /// Private TLB maintenance: ignore broadcast TLBI (with `IDR0.BTM`).
        const PTM = 1 << 2;
    }
}

bitflags! {
    /// `SMMU_GBPA` one-bit fields (§6.3.14).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Gbpa: u32 {
        /// Memory type override enable (MemAttr applies).
        const MTCFG = 1 << 4;
        /// Abort all incoming transactions while SMMUEN = 0.
        const ABORT = 1 << 20;
        /// Written 1 with the new value; the unit clears it once the value is in effect.
        const UPDATE = 1 << 31;
        /// Other bits (MemAttr, ALLOCCFG, SHCFG, PRIVCFG, INSTCFG) pass through unchanged.
        const _ = !0;
    }
}

/// `GBPA.SHCFG`, bits 13:12 (reset value 0b01, "use incoming").
pub const GBPA_SHCFG: Field = Field::new("SHCFG", 13, 12);

bitflags! {
    /// `SMMU_IRQ_CTRL` / `IRQ_CTRLACK` (§6.3.16).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct IrqCtrl: u32 {
        /// Global error interrupt enable.
        const GERROR_IRQEN = 1 << 0;
        /// PRI queue interrupt enable.
        const PRIQ_IRQEN = 1 << 1;
        /// Event queue interrupt enable.
        const EVENTQ_IRQEN = 1 << 2;
    }
}

bitflags! {
    /// `SMMU_GERROR` / `GERRORN` (§6.3.18): a bit is active while GERROR and GERRORN differ.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Gerror: u32 {
        /// Command queue error; the reason is in `CMDQ_CONS.ERR`.
        const CMDQ_ERR = 1 << 0;
        /// Event queue write aborted.
        const EVENTQ_ABT_ERR = 1 << 2;
        /// PRI queue write aborted.
        const PRIQ_ABT_ERR = 1 << 3;
        /// CMD_SYNC MSI write aborted.
        const MSI_CMDQ_ABT_ERR = 1 << 4;
        /// Event queue MSI write aborted.
        const MSI_EVENTQ_ABT_ERR = 1 << 5;
        /// PRI queue MSI write aborted.
        const MSI_PRIQ_ABT_ERR = 1 << 6;
        /// GERROR MSI write aborted.
        const MSI_GERROR_ABT_ERR = 1 << 7;
        /// Service failure mode: the unit stopped translating.
        const SFM_ERR = 1 << 8;
    }
}

impl Gerror {
    /// The errors active now: bits where GERROR and GERRORN differ.
    pub fn active<W: RegisterWindow + ?Sized>(regs: &W) -> Self {
        Self::from_bits_truncate(regs.read32(GERROR) ^ regs.read32(GERRORN))
    }

    /// Acknowledges `which` by making GERRORN match GERROR in those bits only: a
    /// read-modify-write of GERRORN, which the unit never changes. The caller holds the
    /// unit's command-queue lock, as every GERRORN writer does (`cmdq.rs`): two of these
    /// interleaved would write back each other's bits as read before, undoing an
    /// acknowledgement or toggling an inactive error (CONSTRAINED UNPREDICTABLE, §6.3.18).
    pub fn acknowledge<W: RegisterWindow + ?Sized>(regs: &W, which: Self) {
        let gerror = regs.read32(GERROR);
        let gerrorn = regs.read32(GERRORN);
        let mask = which.bits();
        regs.write32(GERRORN, (gerrorn & !mask) | (gerror & mask));
    }
}

/// Writes `value` to CR0 and waits, at most `budget` polls, for CR0ACK to read it back.
///
/// # Errors
///
/// [`SmmuError::Cr0AckTimeout`] with the last CR0ACK value.
pub fn write_cr0<W: RegisterWindow + ?Sized>(
    regs: &W,
    value: u32,
    budget: u32,
) -> Result<(), SmmuError> {
    // The write can enable queues whose memory we just filled: order those stores first.
    regs.doorbell32(CR0, value);
    let mut last = 0;
    poll(budget, || {
        last = regs.read32(CR0ACK);
        (last == value).then_some(())
    })
    .ok_or(SmmuError::Cr0AckTimeout {
        wanted: value,
        last,
    })
}

/// Writes `value` to IRQ_CTRL and waits, at most `budget` polls, for IRQ_CTRLACK to match.
///
/// # Errors
///
/// [`SmmuError::IrqCtrlAckTimeout`] with the last IRQ_CTRLACK value.
pub fn write_irq_ctrl<W: RegisterWindow + ?Sized>(
    regs: &W,
    value: IrqCtrl,
    budget: u32,
) -> Result<(), SmmuError> {
    let wanted = value.bits();
    regs.write32(IRQ_CTRL, wanted);
    let mut last = 0;
    poll(budget, || {
        last = regs.read32(IRQ_CTRLACK);
        (last == wanted).then_some(())
    })
    .ok_or(SmmuError::IrqCtrlAckTimeout { wanted, last })
}

/// Changes GBPA with the §6.3.14 handshake: wait for UPDATE = 0, write the value with UPDATE = 1,
/// wait for UPDATE = 0 again. Each wait is at most `budget` polls.
///
/// # Errors
///
/// [`SmmuError::GbpaUpdateTimeout`] with the last GBPA value.
pub fn update_gbpa<W: RegisterWindow + ?Sized>(
    regs: &W,
    value: Gbpa,
    budget: u32,
) -> Result<(), SmmuError> {
    wait_gbpa_idle(regs, budget)?;
    regs.write32(GBPA, (value | Gbpa::UPDATE).bits());
    wait_gbpa_idle(regs, budget)
}

/// Waits for `GBPA.UPDATE = 0`.
fn wait_gbpa_idle<W: RegisterWindow + ?Sized>(regs: &W, budget: u32) -> Result<(), SmmuError> {
    let mut last = 0;
    poll(budget, || {
        last = regs.read32(GBPA);
        (last & Gbpa::UPDATE.bits() == 0).then_some(())
    })
    .ok_or(SmmuError::GbpaUpdateTimeout { last })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::testutil::ModelSmmu;

    #[test]
    fn offsets_match_the_register_map() {
        // §6.2: page 1 holds EVENTQ_PROD at 0x100A8 and EVENTQ_CONS at 0x100AC.
        assert_eq!(EVENTQ_PROD, 0x100a8);
        assert_eq!(EVENTQ_CONS, 0x100ac);
        assert_eq!(PRIQ_PROD, 0x100c8);
        assert_eq!((CMDQ_BASE, CMDQ_PROD, CMDQ_CONS), (0x90, 0x98, 0x9c));
        assert_eq!((STRTAB_BASE, STRTAB_BASE_CFG), (0x80, 0x88));
    }

    #[test]
    fn cr1_encodings() {
        // WB=1 in IC/OC, ISH=3: 0b11_01_01_11_01_01 = 0xd75.
        assert_eq!(Cr1::COHERENT.encode(), 0xd75);
        // NC=0, OSH=2: 0b10_00_00_10_00_00 = 0x820.
        assert_eq!(Cr1::NON_COHERENT.encode(), 0x820);
    }

    #[test]
    fn cr0_handshake_and_timeout() {
        let m = ModelSmmu::new();
        let v = (Cr0::SMMUEN | Cr0::CMDQEN).bits();
        assert_eq!(write_cr0(&m, v, 10), Ok(()));
        assert_eq!(m.read32(CR0ACK), v);
        m.set_cr0_stuck(true);
        assert_eq!(
            write_cr0(&m, 0, 10),
            Err(SmmuError::Cr0AckTimeout { wanted: 0, last: v })
        );
    }

    #[test]
    fn gbpa_handshake_and_timeout() {
        let m = ModelSmmu::new();
        assert_eq!(update_gbpa(&m, Gbpa::ABORT, 10), Ok(()));
        assert_eq!(m.read32(GBPA), Gbpa::ABORT.bits());
        m.set_gbpa_stuck(true);
        assert!(matches!(
            update_gbpa(&m, Gbpa::empty(), 10),
            Err(SmmuError::GbpaUpdateTimeout { .. })
        ));
    }

    #[test]
    fn irq_ctrl_handshake() {
        let m = ModelSmmu::new();
        let v = IrqCtrl::GERROR_IRQEN | IrqCtrl::EVENTQ_IRQEN;
        assert_eq!(write_irq_ctrl(&m, v, 10), Ok(()));
    }
}
