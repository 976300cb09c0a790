//! Context tables: Intel VT-d specification rev. 4.1, §3.4 (legacy: 256 entries of 128 bits,
//! one per devfn, §9.3; scalable mode: 128 entries of 256 bits per half of the devfn space,
//! §9.4).
//!
//! A [`ContextTable`] is a view of a table page the [`super::root_table::RootTable`] owns; it
//! hands out the entry of one device as a [`LiveEntry`] so that every write follows §6.5.3's
//! order (body first, the word with `P` last; `P` cleared first on tear-down).

use core::marker::PhantomData;
use core::ptr::NonNull;

use super::live_entry::LiveEntry;

/// A context table page (legacy, or one scalable-mode half).
#[derive(Clone, Copy, Debug)]
pub struct ContextTable<'t> {
    va: NonNull<u8>,
    scalable: bool,
    _root: PhantomData<&'t ()>,
}

impl<'t> ContextTable<'t> {
    /// A view of the table page at `va` (live while the root table lives).
    pub(crate) const fn new(va: NonNull<u8>, scalable: bool) -> Self {
        Self {
            va,
            scalable,
            _root: PhantomData,
        }
    }

    /// The entry of `devfn`: two words (legacy) or four (scalable mode, `devfn` 7:0 selects the
    /// half's entry by its low 7 bits).
    pub fn entry(&self, devfn: u8) -> LiveEntry<'t> {
        let (offset, words) = if self.scalable {
            (usize::from(devfn & 0x7f) * 32, 4)
        } else {
            (usize::from(devfn) * 16, 2)
        };
        // SAFETY: at most 255 * 16 + 16 or 127 * 32 + 32 bytes: inside the 4 KiB table page,
        // which the root table keeps alive for 't and which is only accessed atomically.
        unsafe { LiveEntry::from_ptr(self.va.add(offset), words) }
    }
}
