//! # iommu-engine
//!
//! A `no_std` engine for the in-memory structures of Intel VT-d and Arm SMMUv3 IOMMUs: page
//! tables, configuration tables and queues, plus the IOASID allocation and attach logic a kernel
//! or hypervisor builds DMA isolation on. See `DESIGN.md`-style overview in the README.

#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ioasid;
pub mod iommu;
pub mod mem;
pub mod mmio;
pub mod pgtable;
#[cfg(feature = "sim")]
pub mod sim;
pub mod smmuv3;
pub mod vtd;
