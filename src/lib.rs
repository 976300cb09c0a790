//! # iommu-engine
//!
//! A `no_std` engine for the in-memory structures of Intel VT-d and Arm SMMUv3 IOMMUs: page
//! tables, configuration tables and queues, plus the IOASID allocation and attach logic a
//! kernel or hypervisor builds DMA isolation on. The crate owns no memory and touches no
//! hardware by itself: the embedder lends it pages ([`mem::PageAllocator`]) and register windows
//! ([`mmio::RegisterWindow`]).
//!
//! ## Layers
//! Imports point down only.
//!
//! | layer | what |
//! |---|---|
//! | [`ioasid`] | contexts, IOASIDs, devices, attach/detach, PASIDs, snoop policy, incoherent-DMA grants |
//! | [`vtd`], [`smmuv3`] | one driver per architecture: registers, configuration tables, queues; each implements [`iommu::Iommu`] |
//! | [`pgtable`] | the format-agnostic radix engine (map, unmap, query, dirty) and the [`pgtable::Gather`] |
//! | [`mem`], [`mmio`], [`iommu`] | addresses, page allocation, cache maintenance, register access, the unit trait |
//!
//! `sim` (feature `sim`, host only) holds reference models: an arena allocator with fake
//! physical addresses, an independent reference walker per table format, and models of the
//! VT-d and SMMUv3 units. `capi` (feature `capi`) is the C ABI.
//!
//! ## The embedder's obligations
//! - **Memory.** [`mem::PageAllocator`] hands out zeroed, size-aligned pages and translates
//!   physical addresses back to CPU pointers. The crate returns a table page only after the
//!   invalidation that removed the hardware's last path to it has completed
//!   ([`pgtable::Gather::release`] demands the proof).
//! - **Cache maintenance.** For a walker that does not snoop CPU caches (VT-d `ECAP.C = 0`,
//!   SMMUv3 `IDR0.COHACC = 0`) the crate calls [`mem::PageAllocator::sync_for_device`] on every
//!   range of walked memory it wrote, before it makes the hardware look (publishing entry or
//!   doorbell), and [`mem::PageAllocator::sync_for_cpu`] before it reads what the device wrote.
//! - **Memory ordering.** Live entries are written with 64-bit atomic stores, multi-word entries
//!   (context, PASID, STE, CD) in the order the specifications require; a new table (zeroed, or
//!   filled by a split) is published with one compare-and-swap of the entry that links it,
//!   preceded by the barrier that orders the table's contents before that entry for the walker:
//!   `DMB OSHST` on aarch64 (the walker observes in the Outer Shareable domain; a `Release`
//!   compare-and-swap orders only for other CPUs), a compiler fence on x86-64 (stores reach a
//!   snooping walker in program order). For a walker that does not snoop, the table was cleaned
//!   with [`mem::PageAllocator::sync_for_device`] before it is linked, and that hook must not
//!   return before the clean is complete (Arm `DC CVAC` + `DSB`, x86 `CLFLUSHOPT` + `SFENCE`).
//!   Register writes that make the hardware read memory (queue tails,
//!   producer indices) go through [`mmio::RegisterWindow::doorbell32`] /
//!   [`mmio::RegisterWindow::doorbell64`], which order earlier memory writes before them.
//!   A register window must perform each access as one uncached access of the register's width
//!   ([`mmio::Mmio`] does).
//! - **Locking.** Every unit and every [`ioasid::IoasidCtx`] is `Sync` and takes `&self`.
//!   Map, unmap, query and dirty read-and-clear ([`pgtable::PageTable`], the units'
//!   [`iommu::Iommu`] methods, [`ioasid::IoasidCtx::map`] / `unmap` / `read_and_clear_dirty`)
//!   on *disjoint* IOVA ranges of one address space may run concurrently from any number of
//!   CPUs, also when the ranges share tables or lie in one larger page (each unmap then splits
//!   it or descends into the table another one's split installed, and invalidates the larger
//!   page itself). Operations on *overlapping* ranges must not run at the same time; a mapping
//!   is overlapping with every call that names any byte of it. The hardware walker may read the
//!   tables at any moment: it sees each entry either old or new, never a table that is not
//!   zeroed or complete, never a translation nobody asked for, and every map that returned.
//!   [`pgtable::PageTable::reclaim_empty`], `unmap_exclusive` and `destroy` take `&mut self` /
//!   `self`: nothing else runs on that table. Configuration (domain allocation, attach,
//!   detach, free) serialises inside the unit or context.
//! - **Interrupt context.** No call sleeps or allocates from anything but the embedder's
//!   [`mem::PageAllocator`]. Calls that wait on hardware (invalidation, attach, flush) spin for a
//!   bounded number of register polls and then fail with a timeout error, so they belong in
//!   process or softirq context, not in a hard interrupt handler or NMI. Draining fault records
//!   or events takes no lock a mapping holds and may run in a (threaded) interrupt handler.
//! - **Errors.** No public function panics on any input; every failure is a typed error that
//!   carries the offending value.
//!
//! - **Where objects live.** Nothing allocates: every object is a plain value the embedder places.
//!   Sizes on x86-64 today: [`ioasid::Registry`] about 4 KiB, [`ioasid::IoasidCtx`] about 32 KiB,
//!   a VT-d unit about 13 KiB, an SMMUv3 unit about 18 KiB, and the system's one
//!   [`ioasid::PasidAllocator`] 128 KiB (its bitmap; make it a `static`, or build it in zeroed
//!   memory with [`ioasid::PasidAllocator::init_zeroed`]). Put contexts and units in statics or
//!   in memory the kernel allocated, not on a small kernel stack. The by-value constructors
//!   (`new`) are for hosted users; a kernel builds in place with
//!   [`vtd::unit::VtdUnit::init_in_place`], [`smmuv3::SmmuUnit::init_in_place`],
//!   [`amdvi::AmdViUnit::init_in_place`] and
//!   [`ioasid::IoasidCtx::init_in_place`] (any memory: nothing relies on it being zeroed), and
//!   frees a disabled VT-d unit's pages with [`vtd::unit::VtdUnit::release_in_place`]. The C
//!   ABI does so in pages from the embedder's allocator: in an x86_64 release build the deepest
//!   stack of `ie_vtd_create` is about 0.5 KiB, `ie_smmu_create` 0.6 KiB, `ie_ctx_create`
//!   0.6 KiB, `ie_unit_destroy` 1.1 KiB (53, 56, 31 and 63 KiB when built by value); the
//!   largest left are `ie_registry_create` (13 KiB) and `ie_ctx_destroy` (3 KiB).
//!
//! ## Example
//! A VT-d second-stage table over the host-side arena, read back by the independent reference
//! walker, the way the hardware would walk it:
//!
//! ```
//! # #[cfg(feature = "sim")] {
//! use iommu_engine::mem::{Iova, PhysAddr, WalkerCoherency};
//! use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
//! use iommu_engine::pgtable::{Gather, InvalidationComplete, PageTable, Prot};
//! use iommu_engine::sim::{walk, Arena};
//!
//! let arena = Arena::with_defaults().unwrap();
//! let format = VtdSs::new(VtdSsConfig {
//!     agaw: 48, haw: 46, page_2m: true, page_1g: true, snoop: true, dirty_tracking: false,
//! })
//! .unwrap();
//! let table = PageTable::new(format, &arena, WalkerCoherency::Coherent).unwrap();
//!
//! // 2 MiB + 4 KiB in one call: one 2 MiB leaf and one 4 KiB leaf, SNP set in both.
//! let (iova, pa) = (Iova::new(0x4000_0000), PhysAddr::new(0x1_0000_0000));
//! table.map(iova, pa, (2 << 20) + 4096, Prot::READ | Prot::WRITE).unwrap();
//!
//! let cfg = walk::vtd_ss::VtdSsConfig {
//!     root: table.root(), levels: 4, haw: 46, large_2m: true, large_1g: true,
//!     snoop_control: true,
//! };
//! let t = walk::vtd_ss::translate(&arena, &cfg, Iova::new(0x4020_0010), walk::Access::WRITE).unwrap();
//! assert_eq!(t.pa, PhysAddr::new(0x1_0020_0010));
//! assert!(t.attrs.snoop);
//!
//! // Unmap records what the IOTLB must forget; pages come back only with proof of that.
//! let mut gather = Gather::new();
//! assert_eq!(table.unmap(iova, (2 << 20) + 4096, &mut gather).unwrap(), (2 << 20) + 4096);
//! assert!(walk::vtd_ss::translate(&arena, &cfg, Iova::new(0x4020_0010), walk::Access::READ).is_err());
//! // A driver's flush issues the invalidation and waits for it before this release; here no
//! // hardware ever saw the table.
//! // SAFETY: no hardware was ever given this table.
//! gather.release(&arena, unsafe { InvalidationComplete::assume() }).unwrap();
//! # }
//! ```

#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

mod aligned_blocks;
pub mod amdvi;
mod barrier;
#[cfg(feature = "capi")]
pub mod capi;
pub mod firmware;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod ioasid;
pub mod iommu;
pub mod iopf;
pub mod mem;
pub mod mmio;
pub mod pgtable;
#[cfg(feature = "sim")]
pub mod sim;
pub mod smmuv3;
mod sync;
#[cfg(test)]
mod test_hooks;
/// The crate's writer-first `RwLock` (`sync/rwlock.rs`) over loom's atomics, for
/// `tests/loom_lock.rs` only: under `--cfg loom` every other lock of the crate is loom's own,
/// so only there is this lock's algorithm model-checked. No API: `--cfg loom` builds only.
#[cfg(loom)]
#[doc(hidden)]
pub mod loom_rwlock {
    pub use crate::sync::rwlock::{
        RwLock, RwLockReadGuard, RwLockUpgradableGuard, RwLockWriteGuard,
    };
}
pub mod vtd;
