//! PASID directory and PASID tables of one device: Intel VT-d specification rev. 4.1, §3.4
//! (scalable-mode PASID translation), §9.5 (PASID Directory Entry) and §9.6 (PASID Table Entry).
//!
//! The directory has `2^(PDTS + 7)` 64-bit entries, each pointing at a 4 KiB table of 64
//! 512-bit PASID entries. The directory is allocated with the device's scalable-mode context
//! entry; a PASID table is allocated the first time one of its 64 PASIDs is used, and its
//! directory entry published with one store. Like context tables, they live until the unit does.

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::live_entry::LiveEntry;
use super::pasid_entry::{pasid_indices, PasidDirEntry, PASID_TABLE_ENTRIES};
use super::root_table::{resolve, table_page};
use super::{Error, Pasid};
use crate::mem::{Page, PageAllocator, WalkerCoherency, PAGE_SHIFT_4K};

/// Words per PASID-table entry.
const PASID_ENTRY_WORDS: usize = 8;

/// Log2 of the bytes of a directory with `2^(pdts + 7)` entries, at least one 4 KiB page.
pub const fn directory_size_log2(pdts: u8) -> u32 {
    let bytes_log2 = pdts as u32 + 7 + 3;
    if bytes_log2 < PAGE_SHIFT_4K {
        PAGE_SHIFT_4K
    } else {
        bytes_log2
    }
}

/// Allocates a zeroed directory for `pdts`, below `2^haw`.
///
/// # Errors
/// [`Error::NoMemory`], [`Error::TableOutOfRange`].
pub fn alloc_directory<A: PageAllocator + ?Sized>(
    alloc: &A,
    pdts: u8,
    coherency: WalkerCoherency,
    haw: u32,
) -> Result<Page, Error> {
    let size = directory_size_log2(pdts);
    let page = table_page(alloc, size, haw, "PASID directory")?;
    coherency.sync(alloc, page.va, 1 << size);
    Ok(page)
}

/// Gives the PASID directory at `dir` (with `2^(pdts + 7)` entries) and every PASID table it
/// points at back to `alloc`.
///
/// # Errors
/// [`Error::UnexpectedState`] for a pointer to memory `alloc` does not know (the rest leaks).
///
/// # Safety
/// Translation is off: hardware walks none of these tables; they came from `alloc`.
pub unsafe fn release_directory<A: PageAllocator + ?Sized>(
    alloc: &A,
    dir: crate::mem::PhysAddr,
    pdts: u8,
) -> Result<(), Error> {
    let va = resolve(alloc, dir, "scalable-mode context entry")?;
    let entries = 1usize << (u32::from(pdts) + 7);
    for i in 0..entries {
        // SAFETY: `i < entries`: inside the directory allocation, accessed atomically.
        let e = unsafe { LiveEntry::from_ptr(va.add(i * 8), 1) };
        let raw = PasidDirEntry(e.word(0).unwrap_or(0));
        if raw.present() {
            let table = resolve(alloc, raw.table(), "PASID directory entry")?;
            // SAFETY: a 4 KiB PASID table from `alloc` (`PasidDirectory::entry`), unwalked.
            unsafe {
                alloc.free(
                    Page {
                        pa: raw.table(),
                        va: table,
                    },
                    PAGE_SHIFT_4K,
                )
            };
        }
    }
    // SAFETY: the directory came from `alloc_directory` with this size and is unwalked.
    unsafe { alloc.free(Page { pa: dir, va }, directory_size_log2(pdts)) };
    Ok(())
}

/// A view of a device's PASID directory.
#[derive(Clone, Copy, Debug)]
pub struct PasidDirectory<'t> {
    va: NonNull<u8>,
    entries: usize,
    _owner: PhantomData<&'t ()>,
}

impl<'t> PasidDirectory<'t> {
    /// The directory at `va` with `2^(pdts + 7)` entries.
    pub(crate) const fn new(va: NonNull<u8>, pdts: u8) -> Self {
        Self {
            va,
            entries: 1 << (pdts as u32 + 7),
            _owner: PhantomData,
        }
    }

    /// The PASID-table entry of `pasid`; with `create`, a missing PASID table is allocated and
    /// its directory entry published (the table below `2^haw`). `None` when missing and not
    /// created.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `pasid` is beyond the directory; [`Error::NoMemory`],
    /// [`Error::TableOutOfRange`]; [`Error::UnexpectedState`] for a directory entry pointing at
    /// unknown memory.
    pub fn entry<A: PageAllocator + ?Sized>(
        &self,
        pasid: Pasid,
        alloc: &A,
        coherency: WalkerCoherency,
        haw: u32,
        create: bool,
    ) -> Result<Option<LiveEntry<'t>>, Error> {
        let (dir_index, index) = pasid_indices(pasid);
        if dir_index >= self.entries || index >= PASID_TABLE_ENTRIES {
            return Err(Error::InvalidArgument {
                what: "PASID beyond the PASID directory (PDTS)",
                value: u64::from(pasid.get()),
            });
        }
        // SAFETY: `dir_index < entries`: the word lies inside the directory allocation, which
        // lives for 't and is only accessed atomically.
        let dir = unsafe { LiveEntry::from_ptr(self.va.add(dir_index * 8), 1) };
        let raw = PasidDirEntry(dir.word(0).unwrap_or(0));
        let table = if raw.present() {
            resolve(alloc, raw.table(), "PASID directory entry")?
        } else if create {
            let page = table_page(alloc, PAGE_SHIFT_4K, haw, "PASID table")?;
            coherency.sync(alloc, page.va, 1 << PAGE_SHIFT_4K);
            let published = PasidDirEntry::new(page.pa, false)
                .and_then(|e| dir.publish(&[e.0], coherency, alloc));
            if let Err(e) = published {
                // SAFETY: the page came from `alloc` just now and was never published.
                unsafe { alloc.free(page, PAGE_SHIFT_4K) };
                return Err(e);
            }
            page.va
        } else {
            return Ok(None);
        };
        // SAFETY: `index < 64`: the 64-byte entry lies inside the 4 KiB PASID table, alive for
        // 't and only accessed atomically.
        let entry = unsafe { LiveEntry::from_ptr(table.add(index * 64), PASID_ENTRY_WORDS) };
        Ok(Some(entry))
    }
}
