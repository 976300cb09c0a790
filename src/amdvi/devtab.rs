//! The device table: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.2.2 "Device Table" (one 256-bit entry per DeviceID, contiguous, its size
//! in 4 KiB pages in the Device Table Base Address Register's `Size`, up to 2 MiB for the
//! 65536 IDs of a segment).
//!
//! The table covers the device IDs `0..device_ids` the embedder asks for (from the ACPI IVRS
//! table's device range, or the buses it knows): one power-of-two block of pages, every entry
//! blocking ([`DeviceTableEntry::BLOCKED`]) before the unit is given the table, so that a
//! device the driver never attached has its DMA and interrupts refused.

use core::sync::atomic::Ordering;

use super::dte::{DeviceTableEntry, DteSlot};
use super::{regs, Error};
use crate::mem::{Page, PageAllocator, PhysAddr, WalkerCoherency, PAGE_SHIFT_4K};

/// Bytes per entry.
pub const ENTRY_BYTES: u64 = 32;
/// Device IDs of one PCI segment.
pub const MAX_DEVICE_IDS: u32 = 1 << 16;

/// The table's memory.
#[derive(Debug)]
pub struct DeviceTable {
    page: Page,
    size_log2: u32,
    device_ids: u32,
}

impl DeviceTable {
    /// A table that owns nothing, overwritten before use (for building a unit in place).
    pub(crate) const PLACEHOLDER: Self = Self {
        page: Page {
            pa: PhysAddr::ZERO,
            va: core::ptr::NonNull::dangling(),
        },
        size_log2: PAGE_SHIFT_4K,
        device_ids: 0,
    };

    /// Allocates a table covering device IDs `0..device_ids` (1..=65536), every entry blocking.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a count out of range; [`Error::NoMemory`];
    /// [`Error::TableOutOfRange`] for a page above 2^52 (given back).
    pub fn new<A: PageAllocator + ?Sized>(
        alloc: &A,
        device_ids: u32,
        coherency: WalkerCoherency,
    ) -> Result<Self, Error> {
        if !(1..=MAX_DEVICE_IDS).contains(&device_ids) {
            return Err(Error::InvalidArgument {
                what: "device IDs the device table covers (1..=65536)",
                value: u64::from(device_ids),
            });
        }
        let bytes = (u64::from(device_ids) * ENTRY_BYTES).next_power_of_two();
        let size_log2 = bytes.trailing_zeros().max(PAGE_SHIFT_4K);
        let page = alloc.alloc(size_log2).ok_or(Error::NoMemory)?;
        let table = Self {
            page,
            size_log2,
            device_ids: ((1u64 << size_log2) / ENTRY_BYTES).min(u64::from(MAX_DEVICE_IDS)) as u32,
        };
        if let Err(e) = table.base_register() {
            // SAFETY: the page came from `alloc` just now; no unit was given it.
            unsafe { alloc.free(page, size_log2) };
            return Err(e);
        }
        for id in 0..table.device_ids {
            if let Some(slot) = table.entry(id) {
                // The unit does not use the table yet: plain atomic stores will do.
                for (w, v) in slot.0.iter().zip(DeviceTableEntry::BLOCKED.0) {
                    w.store(v, Ordering::Relaxed);
                }
            }
        }
        coherency.sync(alloc, page.va, 1 << size_log2);
        Ok(table)
    }

    /// The Device Table Base Address Register's value.
    ///
    /// # Errors
    /// [`Error::TableOutOfRange`] for a table above 2^52.
    pub fn base_register(&self) -> Result<u64, Error> {
        regs::dev_tab_base(self.page.pa, 1 << (self.size_log2 - PAGE_SHIFT_4K))
    }

    /// Device IDs covered (the table may hold more than asked: it is a power of two of pages).
    pub const fn device_ids(&self) -> u32 {
        self.device_ids
    }

    /// Physical address of the table.
    pub const fn pa(&self) -> PhysAddr {
        self.page.pa
    }

    /// The live entry of `device_id`, if the table covers it.
    pub fn entry(&self, device_id: u32) -> Option<&DteSlot> {
        if device_id >= self.device_ids {
            return None;
        }
        let p = self
            .page
            .va
            .as_ptr()
            .wrapping_add(device_id as usize * ENTRY_BYTES as usize)
            .cast::<DteSlot>();
        // SAFETY: the entry lies inside the live table page (checked above), is 32-byte
        // aligned, and the crate accesses the table only atomically.
        Some(unsafe { &*p })
    }

    /// The entry of `device_id` as it is now.
    pub fn read(&self, device_id: u32) -> Option<DeviceTableEntry> {
        self.entry(device_id).map(DteSlot::load)
    }

    /// Gives the table back.
    ///
    /// # Safety
    /// The page came from `alloc`, and the unit no longer reads the table (translation off, or
    /// another table latched).
    pub unsafe fn release<A: PageAllocator + ?Sized>(self, alloc: &A) {
        // SAFETY: per the caller.
        unsafe { alloc.free(self.page, self.size_log2) };
    }
}

// SAFETY: the page is owned by the table; its entries are only accessed through atomics.
unsafe impl Send for DeviceTable {}
// SAFETY: as above: shared access goes through 64-bit atomics.
unsafe impl Sync for DeviceTable {}
