//! Driver for QEMU's `edu` teaching device (PCI 1234:11e8): identification, liveness and DMA.
//!
//! Register facts (QEMU `docs/specs/edu.rst`): BAR0 is 1 MiB of MMIO; 0x00 identification
//! (0x010000ed), 0x04 liveness (reads back the bitwise inverse of what was written), DMA source
//! 0x80, destination 0x88, count 0x90, command 0x98 (bit 0 start/busy, bit 1 direction: 0 = RAM
//! to device buffer, 1 = device buffer to RAM). The device buffer is 4 KiB at device address
//! 0x40000. A transfer completes 100 ms of virtual time after it starts, then bit 0 clears. The
//! model does not bounds-check the buffer side of a transfer, so this driver does.
//!
//! Interrupts (hw/misc/edu.c): 0x24 interrupt status, 0x60 raise (ORs the value into the
//! status), 0x64 acknowledge (clears those bits); all 32-bit. With MSI enabled in its MSI
//! capability (one vector, 64-bit addresses), every write to 0x60 sends the MSI at once, as a
//! 4-byte memory write with the message data through the device's bus-master address space
//! (the IOMMU's, when there is one), tagged with the device's requester ID.

use core::fmt;
use core::ptr::NonNull;

use iommu_engine::mmio::{self, Mmio, RegisterWindow};

/// Device address of edu's internal buffer.
pub const EDU_BUF: u64 = 0x40000;
/// Size of edu's internal buffer.
pub const EDU_BUF_LEN: u64 = 4096;
/// Identification register value (version 1.0, "ed").
pub const EDU_ID: u32 = 0x0100_00ed;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_IRQ_STATUS: usize = 0x24;
const REG_IRQ_RAISE: usize = 0x60;
const REG_IRQ_ACK: usize = 0x64;
const REG_DMA_SRC: usize = 0x80;
const REG_DMA_DST: usize = 0x88;
const REG_DMA_COUNT: usize = 0x90;
const REG_DMA_CMD: usize = 0x98;
const CMD_START: u64 = 1 << 0;
const CMD_TO_RAM: u64 = 1 << 1;

/// How many times a DMA completion is polled before giving up. One DMA takes 100 ms of virtual
/// time, about 100k instructions at `-icount shift=10` (some 20k polls); without icount each poll
/// is an MMIO exit of at least tens of nanoseconds, so the bound is several seconds either way.
pub const DMA_POLL_LIMIT: u32 = 50_000_000;

/// Why a DMA did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmaError {
    /// The device buffer range or the length is not inside edu's 4 KiB buffer.
    OutOfRange,
    /// A transfer was already running.
    Busy,
    /// Bit 0 of the command register did not clear within [`DMA_POLL_LIMIT`] polls.
    Timeout,
}

impl fmt::Display for DmaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DmaError::OutOfRange => f.write_str("edu DMA range outside the device buffer"),
            DmaError::Busy => f.write_str("edu DMA already running"),
            DmaError::Timeout => f.write_str("edu DMA did not complete (poll bound reached)"),
        }
    }
}

/// An `edu` device whose BAR0 is mapped (uncached) at `base`, PA == VA. Registers are reached
/// through the crate's own [`Mmio`] window, so the bare-metal build exercises it.
pub struct Edu {
    regs: Mmio,
    base: usize,
    /// PCI bus/device/function, for reports and, later, source IDs / stream IDs.
    pub bdf: (u8, u8, u8),
}

impl Edu {
    /// # Safety
    ///
    /// `base` is the address of edu's BAR0, decoded by the device (memory space enabled) and
    /// mapped as device memory / uncached for 1 MiB, and nothing else drives the device.
    pub unsafe fn new(base: NonNull<u8>, bdf: (u8, u8, u8)) -> Self {
        Self {
            // SAFETY: forwarded from this function's contract.
            regs: unsafe { Mmio::new(base, 1 << 20) },
            base: base.as_ptr() as usize,
            bdf,
        }
    }

    /// BAR0's address.
    pub fn bar0(&self) -> usize {
        self.base
    }

    /// The identification register.
    pub fn id(&self) -> u32 {
        self.regs.read32(REG_ID)
    }

    /// Writes `v` to the liveness register and says whether it reads back inverted.
    pub fn alive(&self, v: u32) -> bool {
        self.regs.write32(REG_LIVENESS, v);
        self.regs.read32(REG_LIVENESS) == !v
    }

    /// Raises the interrupt bits `bits` (an MSI when MSI is enabled: one per call).
    pub fn raise_irq(&self, bits: u32) {
        self.regs.doorbell32(REG_IRQ_RAISE, bits);
    }

    /// Clears the interrupt bits `bits`.
    pub fn ack_irq(&self, bits: u32) {
        self.regs.write32(REG_IRQ_ACK, bits);
    }

    /// The interrupt status register.
    pub fn irq_status(&self) -> u32 {
        self.regs.read32(REG_IRQ_STATUS)
    }

    /// Copies `len` bytes from device address `src` (an IOVA, or a PA when nothing translates)
    /// into edu's buffer at offset `buf_off`. Returns the number of polls it took.
    pub fn dma_to_device(&self, src: u64, buf_off: u64, len: u64) -> Result<u32, DmaError> {
        let dst = Self::buf_addr(buf_off, len)?;
        self.run(src, dst, len, 0)
    }

    /// Copies `len` bytes from edu's buffer at offset `buf_off` to device address `dst`.
    pub fn dma_from_device(&self, buf_off: u64, dst: u64, len: u64) -> Result<u32, DmaError> {
        let src = Self::buf_addr(buf_off, len)?;
        self.run(src, dst, len, CMD_TO_RAM)
    }

    fn buf_addr(off: u64, len: u64) -> Result<u64, DmaError> {
        match off.checked_add(len) {
            Some(end) if len > 0 && end <= EDU_BUF_LEN => Ok(EDU_BUF + off),
            _ => Err(DmaError::OutOfRange),
        }
    }

    fn run(&self, src: u64, dst: u64, len: u64, dir: u64) -> Result<u32, DmaError> {
        if self.regs.read64(REG_DMA_CMD) & CMD_START != 0 {
            return Err(DmaError::Busy);
        }
        self.regs.write64(REG_DMA_SRC, src);
        self.regs.write64(REG_DMA_DST, dst);
        self.regs.write64(REG_DMA_COUNT, len);
        // The doorbell orders the CPU's writes to the source buffer before the start command.
        self.regs.doorbell64(REG_DMA_CMD, CMD_START | dir);
        let mut polls = 0u32;
        let done = mmio::poll(DMA_POLL_LIMIT, || {
            polls += 1;
            (self.regs.read64(REG_DMA_CMD) & CMD_START == 0).then_some(())
        });
        match done {
            Some(()) => {
                // Order the completion read before the CPU reads what the device wrote.
                mmio::dma_read_barrier();
                Ok(polls)
            }
            None => Err(DmaError::Timeout),
        }
    }
}
