//! The format-agnostic radix page-table engine.
//!
//! One walker, written once (`table.rs`) and monomorphised per [`Format`]: map, unmap, query,
//! dirty read-and-clear and enumeration over whole IOVA ranges. Each hardware format lives in
//! one file ([`vtd_ss`], [`vtd_fs`], [`arm_s2`], [`arm_s1`], [`amdvi_v1`], [`amdvi_v2`]) as a
//! handful of small primitives.
//!
//! ## Level numbering
//! Level 0 is the leaf-most level, whose entries map one granule (4 KiB, 16 KiB or 64 KiB); the
//! root is level `levels - 1`. Each format file maps these numbers to its spec's names (VT-d's
//! SL-PTE is level 0 and its PML4E level 3; Arm's lookup level 3 is level 0; AMD-Vi's level 1
//! is level 0).
//!
//! ## Concurrency
//! [`PageTable::map`], [`PageTable::unmap`], [`PageTable::query`] and
//! [`PageTable::read_and_clear_dirty`] take `&self`: tables are installed with compare-and-swap
//! and live entries are written with 64-bit atomic stores. Callers must not run operations on
//! *overlapping* IOVA ranges at the same time; operations on disjoint ranges may run concurrently
//! from any number of threads, even inside one larger page. The rules that make this safe (a
//! split that loses its compare-and-swap looks again; every map cleans its whole path; an unmap
//! under a split table invalidates the larger page) are in `ARCHITECTURE.md`, "Concurrency".
//!
//! ## Freeing tables
//! A table is unlinked and given to the [`Gather`] when an unmap covers its whole span. A table
//! emptied by smaller unmaps stays linked (all its entries are non-present, so it translates
//! nothing): freeing it would race with a concurrent map into the rest of its span, which the
//! concurrency contract allows (and a concurrent map or query may still hold a pointer to it).
//! It is reused by later maps and freed by a later covering unmap, by
//! [`PageTable::unmap_exclusive`] (an unmap that also unlinks every table it left empty) or
//! [`PageTable::reclaim_empty`] (and [`PageTable::reclaim_at`], the same around one IOVA), all
//! of which take `&mut self` so that no other operation can be in flight, or by
//! [`PageTable::destroy`]. Unlinked tables always go into the gather; the engine never frees a
//! table page itself. [`PageTable::table_pages`] counts the tables linked and the tables the
//! leaves need.

mod audit;
mod contiguous;
mod error;
mod format;
mod gather;
mod reclaim;
mod spares;
mod sync;
mod table;

pub mod amdvi_v1;
pub mod amdvi_v2;
pub mod arm_s1;
pub mod arm_s2;
mod arm_vmsa;
pub mod vtd_fs;
pub mod vtd_ss;
mod x86_paging;

pub use audit::TablePages;
pub use error::Error;
pub use format::{Format, Geometry};
pub use gather::{Gather, InvalidationComplete, IovaRange, GATHER_RANGES};
pub use table::{DirtyRead, PageTable, SplitPolicy};

use crate::mem::PhysAddr;

bitflags::bitflags! {
    /// Access permissions of a mapping, as the owner asks for them, and whether its target is
    /// device memory.
    ///
    /// Other memory attributes (snooping, cacheability of Normal memory) are not here: they
    /// are fixed per table by its format configuration, so that one IOASID's policy applies to
    /// every mapping in it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Prot: u8 {
        /// Device reads (DMA from memory).
        const READ = 1 << 0;
        /// Device writes (DMA to memory).
        const WRITE = 1 << 1;
        /// Instruction fetch (execute requests); without it formats that can say so set XN/XD.
        const EXEC = 1 << 2;
        /// Privileged (supervisor) access only; first-stage and stage-1 formats only.
        const PRIV = 1 << 3;
        /// The target is device memory, not Normal memory: MMIO such as a peer device's BAR or
        /// an MSI doorbell (the GICv3 ITS `GITS_TRANSLATER` page). Arm stage 1: Device-nGnRE
        /// (`AttrIndx` 2 of the `MAIR` the CD carries); Arm stage 2: Device-nGnRE (`MemAttr`
        /// 0b0001, Device under FWB too, whatever the domain's Normal attributes). VT-d first
        /// stage: UC (PCD and PWT). VT-d second stage: the leaf is as for memory (its `EMT` is
        /// used only with the PASID entry's `EMTE`, which this crate never sets; the platform's
        /// address decoding gives an MMIO target its type), the mark kept in an ignored bit.
        const MMIO = 1 << 4;
    }
}

/// What [`PageTable::query`] finds at an IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// The physical address the queried IOVA translates to.
    pub pa: PhysAddr,
    /// The leaf's permissions.
    pub prot: Prot,
    /// Log2 of the leaf's size (12 for 4 KiB, 21 for 2 MiB, ...).
    pub size_log2: u32,
}

/// A leaf found by [`PageTable::for_each_mapping`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leaf {
    /// First IOVA the leaf maps.
    pub iova: crate::mem::Iova,
    /// Physical address of the leaf's first byte.
    pub pa: PhysAddr,
    /// The leaf's permissions.
    pub prot: Prot,
    /// Log2 of the leaf's size.
    pub size_log2: u32,
}

#[cfg(test)]
mod race_tests;
#[cfg(test)]
mod run_break_tests;
#[cfg(test)]
mod run_size_tests;
#[cfg(test)]
mod stress_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;
