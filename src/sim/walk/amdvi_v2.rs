//! Reference walker for AMD-Vi v2 (guest) I/O page tables.
//!
//! AMD I/O Virtualization Technology (IOMMU) Specification, document 48882, rev. 3.10: §2.2.6
//! "I/O Page Tables for Guest Translations": the guest tables are the AMD64 long-mode format
//! (AMD64 APM vol. 2, 24593, §5.3 "Long-Mode Page Translation", §5.4 "Page-Translation-Table
//! Entry Fields"), 4 or 5 levels by the DTE's `GuestPagingMode` (quadword 2 bits 55:54), the root from the GCR3 table entry of the
//! request's PASID.
//!
//! That format is the one the VT-d first-stage walker ([`super::vtd_fs`]) reads from the Intel
//! SDM (vol. 3A §4.5): the same entry bits, reserved bits and permission rules (R/W and U/S the
//! AND over the walk, NX the OR). So this walker is that reading, configured as an AMD IOMMU
//! walks it: 1 GiB pages always allowed, NX honoured when `EFER.NXE`-equivalent is set
//! ([`AmdV2Config::no_execute`]), supervisor writes checked against R/W (the IOMMU behaves as
//! with `CR0.WP` = 1), no SMEP. A request without a PASID's privilege is a user request.
//!
//! Input addresses here are canonical (sign-extended from bit 47 or 56), as the processor's; the
//! engine's v2 tables use the lower half only.

use std::vec::Vec;

use super::vtd_fs::{self, VtdFsConfig};
use super::{Access, Fault, Translation, WalkError};
use crate::mem::{Iova, PhysAddr};
use crate::sim::arena::PhysMem;

/// Attributes of a v2 leaf: user and supervisor rights, A, D, G and the PAT index.
pub type AmdV2Attrs = vtd_fs::VtdFsAttrs;

/// What the walker needs to know about the DTE, the GCR3 table entry and the system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdV2Config {
    /// The guest CR3 of the PASID (GCR3 table entry, bits 51:12), 4 KiB aligned.
    pub root: PhysAddr,
    /// 4 or 5 levels (DTE `GuestPagingMode` 00b / 01b).
    pub levels: u8,
    /// Output address size in bits (at most 52): address bits at or above it are reserved.
    pub oas: u32,
    /// Bit 63 is NX (execute-disable); when false it is reserved.
    pub no_execute: bool,
}

fn as_x86(cfg: &AmdV2Config) -> VtdFsConfig {
    VtdFsConfig {
        root: cfg.root,
        levels: cfg.levels,
        haw: cfg.oas,
        large_1g: true,
        execute_disable: cfg.no_execute,
        write_protect: true,
        smep: false,
    }
}

/// Translates `iova` for `access` as the IOMMU would.
///
/// # Errors
///
/// As the x86-64 walk: [`Fault::InputRange`] for a non-canonical address,
/// [`Fault::Translation`], [`Fault::ReservedBit`], [`Fault::Permission`],
/// [`Fault::ExternalAbort`], [`Fault::BadConfig`].
pub fn translate(
    mem: &impl PhysMem,
    cfg: &AmdV2Config,
    iova: Iova,
    access: Access,
) -> Result<Translation<AmdV2Attrs>, Fault> {
    vtd_fs::translate(mem, &as_x86(cfg), iova, access)
}

/// Every leaf, by ascending index, as (canonical leaf base IOVA, translation of the leaf base
/// with user rights).
///
/// # Errors
///
/// [`WalkError::Fault`] at the first entry that faults, [`WalkError::TableReachedTwice`].
pub fn walk_all(
    mem: &impl PhysMem,
    cfg: &AmdV2Config,
) -> Result<Vec<(Iova, Translation<AmdV2Attrs>)>, WalkError> {
    vtd_fs::walk_all(mem, &as_x86(cfg))
}

/// The base of every table reachable from the root, the root first.
///
/// # Errors
///
/// As [`walk_all`].
pub fn table_pages(mem: &impl PhysMem, cfg: &AmdV2Config) -> Result<Vec<PhysAddr>, WalkError> {
    vtd_fs::table_pages(mem, &as_x86(cfg))
}
