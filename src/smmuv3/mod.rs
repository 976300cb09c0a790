//! Arm SMMUv3: registers, stream table, context descriptors, command and event queues.
//!
//! Implements Arm System Memory Management Unit Architecture Specification, SMMU architecture
//! version 3 (Arm IHI 0070, issue G.b): chapter 3 (operation: queues, configuration structures),
//! chapter 4 (commands), chapter 5 (STE and CD), chapter 6 (registers), chapter 7 (events and
//! errors). One file per structure, named as the spec names it.
//!
//! [`SmmuUnit`] puts them together and implements [`Iommu`](crate::iommu::Iommu): construct
//! it from a register window, a page allocator and an [`SmmuConfig`], call
//! [`SmmuUnit::enable`], then drive it through the trait.
//!
//! Every structure the unit walks lives in pages from a [`PageAllocator`](crate::mem::PageAllocator)
//! and is changed only with 64-bit atomic stores in the order the spec requires; every register
//! access goes through [`RegisterWindow`](crate::mmio::RegisterWindow); every wait is bounded by a
//! poll budget and ends in a typed [`SmmuError`].

mod error;
pub mod field;

mod attach;
mod audit;
pub mod cd;
pub mod cmd;
pub mod cmdq;
mod domain;
pub mod event;
pub mod eventq;
pub mod features;
pub mod flush;
pub mod idr;
pub mod nested;
mod ops;
pub mod page_faults;
pub mod platform;
pub mod priq;
pub mod queue;
mod reclaim;
pub mod regs;
pub mod ste;
pub mod ste_update;
mod stream;
pub mod strtab;
mod unit;

#[cfg(test)]
mod testutil;

pub use audit::{AuditError, AuditReport};
pub use domain::{TagAllocator, MAX_DOMAINS};
pub use error::{CommandErrorKind, SmmuError};
pub use platform::{Declaration, DeviceFacts, Platform, MAX_DECLARATIONS};
pub use stream::{MAX_PASIDS, MAX_STREAMS};
pub use unit::{DisabledTraffic, EventReport, Kept, SmmuConfig, SmmuUnit, StreamTableLayout};

/// What [`Error::InvalidArgument`](crate::iommu::Error::InvalidArgument) names (its `value`
/// the StreamID) when one stream would be both able to stall and ATS-capable
/// ([`DeviceHints::stall`](crate::iommu::DeviceHints::stall) with
/// [`DeviceHints::ats`](crate::iommu::DeviceHints::ats), or [`SmmuUnit::set_ats`] on a stream
/// declared able to stall): an STE with `S2S` = 1 and `EATS` != 0 is ILLEGAL (IHI 0070 §5.2),
/// so the unit would abort every transaction of the stream (C_BAD_STE); stalls are for
/// platform devices, ATS for PCIe ones, which must not stall (§3.12.1). Neither is dropped:
/// the call is refused before anything is written.
pub const STALL_WITH_ATS: &str =
    "DeviceHints::stall with ATS on one stream (STE.S2S = 1 with STE.EATS != 0 is ILLEGAL)";

/// A StreamID: the 32-bit identifier of a device's transactions (IHI 0070 G.b §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

/// A SubstreamID (PASID): 20 bits at most (IHI 0070 G.b §3.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubstreamId(u32);

impl SubstreamId {
    /// Largest SubstreamID the architecture defines (`SSIDSIZE` ≤ 20).
    pub const MAX: u32 = (1 << 20) - 1;

    /// Checks that `raw` fits 20 bits.
    ///
    /// # Errors
    ///
    /// [`SmmuError::SubstreamIdOutOfRange`] otherwise.
    pub const fn new(raw: u32) -> Result<Self, SmmuError> {
        if raw > Self::MAX {
            return Err(SmmuError::SubstreamIdOutOfRange {
                ssid: raw,
                log2: 20,
            });
        }
        Ok(Self(raw))
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

/// An address space identifier for stage-1 contexts (16 bits with `IDR0.ASID16`, else 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Asid(pub u16);

/// A virtual machine identifier tagging stage-2 translations (16 bits with `IDR0.VMID16`, else 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Vmid(pub u16);

#[cfg(test)]
mod tests;
