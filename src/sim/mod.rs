//! Host-side reference models (feature `sim`): the yardstick tests, fuzzers and benches hold the
//! engine against.
//!
//! Nothing here runs on a target. The module imports nothing from the crate except [`crate::mem`]
//! (addresses and the [`PageAllocator`](crate::mem::PageAllocator) trait it implements) and the
//! [`RegisterWindow`](crate::mmio::RegisterWindow) trait the unit models implement; in
//! particular it never calls the page-table encoders. Every walker in [`walk`] decodes raw table
//! memory with its own constants, written from its own reading of the specification, so that an
//! encoder bug cannot hide behind a helper the encoder and the check share.
//!
//! - [`arena`]: [`Arena`], a [`PageAllocator`](crate::mem::PageAllocator) over one host buffer
//!   with fake physical addresses, allocation accounting, double-free detection, failure
//!   injection and a recorder for the cache-maintenance hook.
//! - [`vtd`]: a behavioural model of a VT-d remapping unit (registers, invalidation queue, caches,
//!   translation, fault recording, fault injection).
//! - [`walk`]: one reference walker per table format: VT-d second stage and first stage, Arm
//!   VMSAv8-64 stage 2 and stage 1. Each offers `translate`, `walk_all` and `table_pages`.
//! - [`amdvi`]: a behavioural model of an AMD-Vi unit (registers, command buffer, event log,
//!   device table cache, IOTLB and page-directory cache, v1 walks, fault injection).
//! - [`smmuv3`]: a behavioural model of an Arm SMMUv3 (registers, command consumer, STE/CD
//!   caches, TLB and walk cache, stage 1 / stage 2 / nested translation through the walkers,
//!   event queue, fault injection) that the `smmuv3` driver is tested against.
//!
//! # What the models do not model
//!
//! - Caching: a walker has no TLB, paging-structure cache or walk cache; it reads memory as it is
//!   now. [`vtd::VtdModel`] and [`smmuv3`] put the units' caches on top of the walkers for
//!   tests of invalidation.
//! - Hardware updates: walkers never write. Accessed/dirty bits are reported, and where the
//!   configuration says hardware would manage them (Arm `HA`/`HD`), the walker reports the access
//!   hardware would allow instead of faulting; it does not set the bits.
//! - Memory ordering and tearing: an entry is read with one 64-bit atomic load.
//! - Nested translation: the walkers do not compose stages; table addresses are output addresses
//!   of the walker's own stage. The unit models compose stages themselves (VT-d nested; Arm
//!   stage 1 over stage 2, reading stage-1 tables through stage 2).
//! - Each walker's own `//!` documentation lists the features of its format it leaves out.

pub mod amdvi;
pub mod arena;
pub mod smmuv3;
pub mod vtd;
pub mod walk;

pub use arena::{
    Arena, ArenaConfig, ArenaError, ArenaStats, BadFree, BadFreeKind, FailPolicy, PhysMem, Snapshot,
};
