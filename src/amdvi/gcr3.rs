//! GCR3 table: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.2.6 "I/O Page Tables for Guest Translations" (the GCR3 table a device's
//! DTE names with `GV`, `GLX` and the GCR3 Table Root Pointer; its entry for a PASID holds the
//! guest CR3: the root of the v2 table that translates the PASID's requests) and §2.2.2.1
//! "Device Table Entry Format".
//!
//! One level (`GLX` = 0): one 4 KiB table of 512 64-bit entries, PASIDs 0..=511. An entry is
//! the v2 table's root (bits 51:12) with bit 0 (valid) set, or zero; entry 0 stays zero, so
//! that requests without a PASID (translated through it: the DTE sets `GIoV`, honoured with EFR
//! `GIoSup`, which the driver requires for PASIDs) fault. Entry
//! layout checked against Linux `drivers/iommu/amd/` (`GCR3_VALID`, 512 eight-byte entries
//! per level), facts only.
//!
//! An entry is written with one 64-bit atomic store (release: the table it names is complete
//! before the unit can walk it); INVALIDATE_IOMMU_PAGES with `GN` and the PASID (all pages,
//! `PDE`) then makes the unit forget what it cached through the old entry.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::mem::{Page, PhysAddr};

/// Entry bit 0: the entry is valid.
pub const GCR3_V: u64 = 1 << 0;
/// The guest CR3 bits of an entry, 51:12.
pub const GCR3_ROOT_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// PASIDs one level translates: 512 (9 bits).
pub const PASID_BITS: u32 = 9;

/// A device's GCR3 table: its page and the domain ID its DTE tags the PASIDs' translations with.
#[derive(Debug)]
pub struct Gcr3Table {
    /// The device whose DTE names the table.
    pub device: u16,
    /// The table's page (4 KiB, zeroed when allocated).
    pub page: Page,
    /// The DTE's `DomainID`: with `GV`, guest translations are tagged with it and the PASID.
    pub domain_id: u16,
}

// SAFETY: the page is owned by the table (the unit's configuration lock serialises its
// writers); moving it between threads moves that ownership.
unsafe impl Send for Gcr3Table {}

impl Gcr3Table {
    fn entry(&self, pasid: u32) -> Option<&AtomicU64> {
        if pasid >= 1 << PASID_BITS {
            return None;
        }
        let p = self.page.va.as_ptr().cast::<AtomicU64>();
        // SAFETY: the page is live, 4 KiB and 8-byte aligned; `pasid` < 512 indexes one of its
        // words, which the crate accesses only atomically.
        Some(unsafe { &*p.add(pasid as usize) })
    }

    /// Points `pasid`'s entry at the v2 table `root`, or clears it (`None`). Returns whether
    /// `pasid` is in the table's range.
    pub fn set(&self, pasid: u32, root: Option<PhysAddr>) -> bool {
        match self.entry(pasid) {
            Some(e) => {
                let v = root.map_or(0, |r| (r.get() & GCR3_ROOT_MASK) | GCR3_V);
                e.store(v, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// The entry of `pasid`.
    pub fn get(&self, pasid: u32) -> u64 {
        self.entry(pasid).map_or(0, |e| e.load(Ordering::Relaxed))
    }
}
