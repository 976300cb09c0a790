//! Arena pages on both sides of an address width, for the tests that check a unit refuses a
//! page it cannot address (issue 15). Included with `#[path]`.
//!
//! The arena hands out freed 4 KiB pages first (oldest first), then fresh ones in address
//! order. A test takes every page below the width, gives back the few a step may place below,
//! and the step's next page lies at or above the width, at an address known in advance.

use iommu_engine::mem::{Page, PageAllocator, PhysAddr};
use iommu_engine::sim::{Arena, ArenaConfig};

const K4: u64 = 1 << 12;

/// An arena straddling `2^bits`: 1 MiB below it, 1 MiB above.
pub fn arena_across(bits: u32) -> Arena {
    Arena::new(ArenaConfig {
        base_pa: (1u64 << bits) - (1 << 20),
        capacity: 2 << 20,
    })
    .expect("arena")
}

/// The pages the test holds: `low` ones are given back before the next step, `high` ones (at
/// or above the width) until the end.
#[derive(Default)]
pub struct Held {
    pub low: Vec<Page>,
    pub high: Vec<Page>,
}

impl Held {
    /// Takes every free 4 KiB page of `a` below `2^bits` but `below` of them (the low pages
    /// held before are given back first), so that `a` hands out those `below` pages next, then
    /// fresh ones from the returned address on. Returns the live page count and that address.
    pub fn next_high(&mut self, a: &Arena, bits: u32, below: usize) -> (usize, PhysAddr) {
        give_back(a, self.low.drain(..));
        loop {
            let p = a.alloc(12).expect("arena page");
            if p.pa.fits_in(bits) {
                self.low.push(p);
                continue;
            }
            let back = self.low.len().checked_sub(below).expect("enough low pages");
            give_back(a, self.low.drain(back..));
            self.high.push(p);
            return (a.stats().live_pages, PhysAddr::new(p.pa.get() + K4));
        }
    }

    /// Checks that the refused page at `pa` went back: it is the next one `a` hands out (held
    /// from now on).
    pub fn went_back(&mut self, a: &Arena, pa: PhysAddr) {
        let page = a.alloc(12).expect("arena page");
        assert_eq!(page.pa, pa, "the refused page was not given back");
        self.high.push(page);
    }

    /// How many pages the test holds.
    pub fn len(&self) -> usize {
        self.low.len() + self.high.len()
    }
}

fn give_back(a: &Arena, pages: impl IntoIterator<Item = Page>) {
    for p in pages {
        // SAFETY: every page came from `a.alloc(12)` here and was never handed to a unit.
        unsafe { a.free(p, 12) };
    }
}
