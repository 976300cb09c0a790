//! Memory access properties of named components and root complexes: Arm DEN 0049 E.f §3.1.1.2
//! "Memory access properties" (8 bytes: `Cache Coherent Attribute` (CCA) u32 at 0, `Allocation
//! Hints` (AH) u8 at 4, reserved u16 at 5, `Memory Access Flags` (MAF) u8 at 7).
//!
//! The combinations the issue allows: CCA = 1 with CPM = 1 is a fully coherent device (its
//! Write-Back Shareable transactions snoop the CPU caches); CCA = 0 with CPM = 1 reaches memory
//! on a coherent path but its transactions are not marked coherent (DACS says whether the
//! device's own attributes are cacheable inner shareable); CCA = 0 with CPM = 0 is not
//! coherent. `CANWBS` (E.f) adds that accesses to Normal memory stay coherent whatever their
//! attributes, PCIe No-Snoop included.

use bitflags::bitflags;

use super::{u32_at, u8_at, Error};

/// Bytes of the memory access properties.
pub const MEMORY_ACCESS_LEN: usize = 8;

bitflags! {
    /// `Allocation Hints` (AH).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct AllocationHints: u8 {
        /// Bit 0, TR: transient.
        const TR = 1 << 0;
        /// Bit 1, WA: write-allocate.
        const WA = 1 << 1;
        /// Bit 2, RA: read-allocate.
        const RA = 1 << 2;
        /// Bit 3, AHO: the hints override the device's own.
        const AHO = 1 << 3;
        const _ = !0;
    }
}

bitflags! {
    /// `Memory Access Flags` (MAF).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MemoryAccessFlags: u8 {
        /// Bit 0, CPM: the device has a coherent path to memory.
        const CPM = 1 << 0;
        /// Bit 1, DACS: the device's own attributes are cacheable and inner shareable.
        const DACS = 1 << 1;
        /// Bit 2, CANWBS (E.f): accesses to Normal memory are coherent even when not marked
        /// inner/outer Write-Back cacheable shareable (PCIe No-Snoop included).
        const CANWBS = 1 << 2;
        const _ = !0;
    }
}

/// The memory access properties of a device node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryAccessProperties {
    /// `Cache Coherent Attribute`: 1 if the device is fully coherent, 0 if not (other values
    /// are reserved and read as not coherent by [`coherent`](Self::coherent)).
    pub cca: u32,
    /// `Allocation Hints`.
    pub allocation_hints: AllocationHints,
    /// `Memory Access Flags`.
    pub flags: MemoryAccessFlags,
}

impl MemoryAccessProperties {
    /// The properties at byte `offset` of a node.
    pub(super) fn decode(node: &[u8], offset: usize) -> Result<Self, Error> {
        Ok(Self {
            cca: u32_at(node, offset)?,
            allocation_hints: AllocationHints::from_bits_retain(u8_at(node, offset + 4)?),
            flags: MemoryAccessFlags::from_bits_retain(u8_at(node, offset + 7)?),
        })
    }

    /// Whether the device's DMA is coherent when marked Write-Back Shareable: CCA = 1 with a
    /// coherent path to memory (CPM). CCA = 1 without CPM is a combination the issue does not
    /// allow; it reads as not coherent, so that the device is given the memory type the
    /// embedder's cache maintenance for a non-coherent device expects.
    pub const fn coherent(&self) -> bool {
        self.cca == 1 && self.flags.contains(MemoryAccessFlags::CPM)
    }

    /// `CANWBS`.
    pub const fn canwbs(&self) -> bool {
        self.flags.contains(MemoryAccessFlags::CANWBS)
    }
}
