//! The register file: offsets and fields of Arm IHI 0070 G.b §6.2 (register map) and §6.3
//! (register descriptions): CR0/CR0ACK, CR1, CR2, GBPA, IRQ_CTRL/ACK, GERROR/GERRORN,
//! STRTAB_BASE/_CFG, CMDQ_BASE/PROD/CONS, EVENTQ_BASE/PROD/CONS and PRIQ_BASE/PROD/CONS (page 1).
//!
//! The model answers page 0 (offset 0x0) and page 1 (offset 0x10000). SMMU_EVENTQ_PROD/CONS
//! live in page 1 (0x100A8/0x100AC); the model also answers them at their page-0 offsets
//! 0xA8/0xAC, as implementations with page-0-only register maps do.

pub(crate) const IDR0: usize = 0x00;
pub(crate) const IDR5: usize = 0x14;
pub(crate) const IIDR: usize = 0x18;
pub(crate) const AIDR: usize = 0x1c;
pub(crate) const CR0: usize = 0x20;
pub(crate) const CR0ACK: usize = 0x24;
pub(crate) const CR1: usize = 0x28;
pub(crate) const CR2: usize = 0x2c;
pub(crate) const STATUSR: usize = 0x40;
pub(crate) const GBPA: usize = 0x44;
pub(crate) const IRQ_CTRL: usize = 0x50;
pub(crate) const IRQ_CTRLACK: usize = 0x54;
pub(crate) const GERROR: usize = 0x60;
pub(crate) const GERRORN: usize = 0x64;
pub(crate) const GERROR_IRQ_CFG0: usize = 0x68;
pub(crate) const GERROR_IRQ_CFG1: usize = 0x70;
pub(crate) const GERROR_IRQ_CFG2: usize = 0x74;
pub(crate) const STRTAB_BASE: usize = 0x80;
pub(crate) const STRTAB_BASE_CFG: usize = 0x88;
pub(crate) const CMDQ_BASE: usize = 0x90;
pub(crate) const CMDQ_PROD: usize = 0x98;
pub(crate) const CMDQ_CONS: usize = 0x9c;
pub(crate) const EVENTQ_BASE: usize = 0xa0;
pub(crate) const EVENTQ_PROD_PAGE0: usize = 0xa8;
pub(crate) const EVENTQ_CONS_PAGE0: usize = 0xac;
pub(crate) const EVENTQ_IRQ_CFG0: usize = 0xb0;
pub(crate) const EVENTQ_IRQ_CFG1: usize = 0xb8;
pub(crate) const EVENTQ_IRQ_CFG2: usize = 0xbc;
pub(crate) const PRIQ_BASE: usize = 0xc0;
pub(crate) const PRIQ_IRQ_CFG0: usize = 0xd0;
pub(crate) const PAGE1: usize = 0x1_0000;
pub(crate) const EVENTQ_PROD: usize = PAGE1 + 0xa8;
pub(crate) const EVENTQ_CONS: usize = PAGE1 + 0xac;
pub(crate) const PRIQ_PROD: usize = PAGE1 + 0xc8;
pub(crate) const PRIQ_CONS: usize = PAGE1 + 0xcc;
/// The window: two 64 KiB pages.
pub(crate) const WINDOW_LEN: usize = 2 * PAGE1;

/// SMMU_CR0 fields (§6.3.9).
pub(crate) mod cr0 {
    pub const SMMUEN: u32 = 1 << 0;
    pub const PRIQEN: u32 = 1 << 1;
    pub const EVENTQEN: u32 = 1 << 2;
    pub const CMDQEN: u32 = 1 << 3;
    pub const ATSCHK: u32 = 1 << 4;
    /// VMW[8:6].
    pub const VMW: u32 = 0x7 << 6;
    pub const ALL: u32 = SMMUEN | PRIQEN | EVENTQEN | CMDQEN | ATSCHK | VMW;
}

/// SMMU_GBPA fields (§6.3.14).
pub(crate) mod gbpa {
    pub const UPDATE: u32 = 1 << 31;
    pub const ABORT: u32 = 1 << 20;
    /// Every writable field: ABORT, INSTCFG, PRIVCFG, SHCFG, ALLOCFG, MTCFG, MemAttr.
    pub const FIELDS: u32 = ABORT | 0x3 << 18 | 0x3 << 16 | 0x3 << 12 | 0xf << 8 | 1 << 4 | 0xf;
    /// Reset value: SHCFG = 0b01 (use incoming), everything else 0.
    pub const RESET: u32 = 1 << 12;
}

/// SMMU_GERROR / GERRORN bits (§6.3.17).
pub(crate) mod gerror {
    pub const CMDQ_ERR: u32 = 1 << 0;
    pub const EVENTQ_ABT_ERR: u32 = 1 << 2;
    pub const PRIQ_ABT_ERR: u32 = 1 << 3;
    pub const MSI_CMDQ_ABT_ERR: u32 = 1 << 4;
    /// Service failure mode entered (§12.3); acknowledging it does not leave the mode.
    pub const SFM_ERR: u32 = 1 << 8;
    pub const ALL: u32 = 0x1fd;
}

/// SMMU_STRTAB_BASE_CFG fields (§6.3.24).
pub(crate) mod strtab_cfg {
    pub const LOG2SIZE_MASK: u32 = 0x3f;
    pub const SPLIT_SHIFT: u32 = 6;
    pub const SPLIT_MASK: u32 = 0x1f;
    pub const FMT_SHIFT: u32 = 16;
    pub const FMT_MASK: u32 = 0x3;
}

/// Queue base registers: ADDR[51:5], LOG2SIZE[4:0] (§6.3.25, §6.3.28).
pub(crate) mod qbase {
    pub const ADDR_MASK: u64 = ((1 << 52) - 1) & !0x1f;
    pub const LOG2SIZE_MASK: u64 = 0x1f;
}

/// SMMU_STRTAB_BASE.ADDR[51:6].
pub(crate) const STRTAB_ADDR_MASK: u64 = ((1 << 52) - 1) & !0x3f;

/// SMMU_CMDQ_CONS.ERR[30:24] (§6.3.27).
pub(crate) const CMDQ_CONS_ERR_SHIFT: u32 = 24;
pub(crate) const CMDQ_CONS_ERR_MASK: u32 = 0x7f << CMDQ_CONS_ERR_SHIFT;
/// SMMU_EVENTQ_PROD.OVFLG and SMMU_EVENTQ_CONS.OVACKFLG (bit 31).
pub(crate) const EVENTQ_OVFLG: u32 = 1 << 31;
/// SMMU_PRIQ_PROD.OVFLG and SMMU_PRIQ_CONS.OVACKFLG (bit 31).
pub(crate) const PRIQ_OVFLG: u32 = 1 << 31;

/// The registers software writes, as they read back.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Regs {
    pub cr0: u32,
    pub cr0ack: u32,
    pub cr1: u32,
    pub cr2: u32,
    pub gbpa: u32,
    pub irq_ctrl: u32,
    pub irq_ctrlack: u32,
    pub gerror: u32,
    pub gerrorn: u32,
    pub gerror_irq_cfg0: u64,
    pub gerror_irq_cfg1: u32,
    pub gerror_irq_cfg2: u32,
    pub strtab_base: u64,
    pub strtab_base_cfg: u32,
    pub cmdq_base: u64,
    pub cmdq_prod: u32,
    pub cmdq_cons: u32,
    pub eventq_base: u64,
    pub eventq_prod: u32,
    pub eventq_cons: u32,
    pub eventq_irq_cfg0: u64,
    pub eventq_irq_cfg1: u32,
    pub eventq_irq_cfg2: u32,
    pub priq_base: u64,
    pub priq_prod: u32,
    pub priq_cons: u32,
    pub priq_irq_cfg0: u64,
}

impl Regs {
    /// The reset state.
    pub fn reset() -> Self {
        Self {
            gbpa: gbpa::RESET,
            ..Self::default()
        }
    }

    /// The 64-bit registers, by offset.
    pub fn reg64(&mut self, offset: usize) -> Option<&mut u64> {
        Some(match offset {
            GERROR_IRQ_CFG0 => &mut self.gerror_irq_cfg0,
            STRTAB_BASE => &mut self.strtab_base,
            CMDQ_BASE => &mut self.cmdq_base,
            EVENTQ_BASE => &mut self.eventq_base,
            EVENTQ_IRQ_CFG0 => &mut self.eventq_irq_cfg0,
            PRIQ_BASE => &mut self.priq_base,
            PRIQ_IRQ_CFG0 => &mut self.priq_irq_cfg0,
            _ => return None,
        })
    }

    /// A 32-bit register that reads back what it holds (no side effects), by offset.
    pub fn read32(&self, offset: usize) -> Option<u32> {
        Some(match offset {
            CR0 => self.cr0,
            CR0ACK => self.cr0ack,
            CR1 => self.cr1,
            CR2 => self.cr2,
            STATUSR => 0,
            GBPA => self.gbpa,
            IRQ_CTRL => self.irq_ctrl,
            IRQ_CTRLACK => self.irq_ctrlack,
            GERROR => self.gerror,
            GERRORN => self.gerrorn,
            GERROR_IRQ_CFG1 => self.gerror_irq_cfg1,
            GERROR_IRQ_CFG2 => self.gerror_irq_cfg2,
            STRTAB_BASE_CFG => self.strtab_base_cfg,
            CMDQ_PROD => self.cmdq_prod,
            CMDQ_CONS => self.cmdq_cons,
            EVENTQ_PROD | EVENTQ_PROD_PAGE0 => self.eventq_prod,
            EVENTQ_CONS | EVENTQ_CONS_PAGE0 => self.eventq_cons,
            EVENTQ_IRQ_CFG1 => self.eventq_irq_cfg1,
            EVENTQ_IRQ_CFG2 => self.eventq_irq_cfg2,
            PRIQ_PROD => self.priq_prod,
            PRIQ_CONS => self.priq_cons,
            _ => return None,
        })
    }

    /// Whether a queue-enable bit has been acknowledged on.
    pub fn enabled(&self, bit: u32) -> bool {
        self.cr0ack & bit != 0
    }

    /// Whether a command-queue error is outstanding (GERROR.CMDQ_ERR != GERRORN.CMDQ_ERR).
    pub fn cmdq_error_pending(&self) -> bool {
        (self.gerror ^ self.gerrorn) & gerror::CMDQ_ERR != 0
    }

    /// Raises a global error: toggles `bit` in GERROR if it is not already active.
    pub fn raise_gerror(&mut self, bit: u32) {
        if (self.gerror ^ self.gerrorn) & bit == 0 {
            self.gerror ^= bit;
        }
    }
}

/// A circular queue's index arithmetic (§3.5.1): `log2` index bits and a wrap bit above them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueShape {
    pub base: u64,
    pub log2: u32,
}

impl QueueShape {
    /// From a queue base register, capped at the implementation's maximum size.
    pub fn from_base(reg: u64, max_log2: u32) -> Self {
        Self {
            base: reg & qbase::ADDR_MASK,
            log2: ((reg & qbase::LOG2SIZE_MASK) as u32).min(max_log2),
        }
    }

    /// Mask of the index and wrap bits.
    pub fn ptr_mask(&self) -> u32 {
        ((2u64 << self.log2) - 1) as u32
    }

    /// The slot a pointer names.
    pub fn index(&self, ptr: u32) -> u64 {
        u64::from(ptr) & ((1u64 << self.log2) - 1)
    }

    /// The pointer one past `ptr`, wrapping and toggling the wrap bit.
    pub fn next(&self, ptr: u32) -> u32 {
        (ptr & self.ptr_mask()).wrapping_add(1) & self.ptr_mask()
    }

    /// Whether the queue between `cons` and `prod` is empty.
    pub fn empty(&self, prod: u32, cons: u32) -> bool {
        prod & self.ptr_mask() == cons & self.ptr_mask()
    }

    /// Whether the queue is full: same index, different wrap bit.
    pub fn full(&self, prod: u32, cons: u32) -> bool {
        (prod ^ cons) & self.ptr_mask() == 1 << self.log2
    }

    /// Address of slot `ptr` for entries of `entry_bytes`.
    pub fn slot(&self, ptr: u32, entry_bytes: u64) -> Option<u64> {
        self.index(ptr)
            .checked_mul(entry_bytes)
            .and_then(|off| self.base.checked_add(off))
    }
}
