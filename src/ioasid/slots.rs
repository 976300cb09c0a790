//! Which slot of a context's fixed table (devices, IOASIDs) the next object takes, and each
//! slot's generation, which its handles carry (`DeviceHandle::raw`, `IoasidId`) so that a
//! handle kept after its object went never names the slot's next object.
//!
//! Two rules keep a stale handle from aliasing: a slot emptied is taken again as late as the
//! table allows (the free slot after the last one handed out, round the table: a caller
//! that cycles one short-lived object moves through every free slot, and each generation
//! lasts a table's worth of cycles), and a slot emptied under [`MAX_GENERATION`] is retired
//! rather than starting over at generation 0. No allocator: one array and a cursor.

use super::MAX_GENERATION;

/// The generation of a retired slot: above every generation a handle carries, so that no
/// handle matches it.
const RETIRED: u32 = u32::MAX;
const _: () = assert!(MAX_GENERATION < RETIRED);

/// The generations of a table of `N` slots and where the search for a free one starts.
#[derive(Clone, Copy)]
pub(super) struct Generations<const N: usize> {
    /// Per slot, how many times it was emptied, or [`RETIRED`].
    generation: [u32; N],
    /// The slot after the one handed out last: the search for a free slot starts there.
    next: usize,
}

impl<const N: usize> Generations<N> {
    /// Every slot at generation 0, the search starting at slot 0.
    pub(super) const NEW: Self = Self {
        generation: [0; N],
        next: 0,
    };

    /// Whether `generation` is `slot`'s current one (never for a retired slot).
    pub(super) fn is_current(&self, slot: u16, generation: u32) -> bool {
        self.generation.get(usize::from(slot)) == Some(&generation)
    }

    /// `slot`'s current generation: the one its object has, or its next object will have
    /// (a retired slot's matches no handle).
    pub(super) fn of(&self, slot: usize) -> u32 {
        self.generation.get(slot).copied().unwrap_or(RETIRED)
    }

    /// The slot the next object takes: the first of `objects` that is free and not retired,
    /// from the one after the slot handed out last, round the table; `None` if none is.
    pub(super) fn free_slot<T>(&self, objects: &[Option<T>; N]) -> Option<usize> {
        (0..N).map(|i| (self.next + i) % N).find(|&slot| {
            objects.get(slot).is_some_and(Option::is_none)
                && self.generation.get(slot).is_some_and(|&g| g != RETIRED)
        })
    }

    /// `slot` (from [`Generations::free_slot`]) was handed out: the next search starts after it.
    pub(super) fn handed_out(&mut self, slot: usize) {
        self.next = slot.wrapping_add(1).checked_rem(N).unwrap_or(0);
    }

    /// `slot` was emptied: every handle of its object is stale from here on. A slot whose
    /// generation would pass [`MAX_GENERATION`] is retired instead.
    pub(super) fn emptied(&mut self, slot: usize) {
        if let Some(g) = self.generation.get_mut(slot) {
            *g = if *g >= MAX_GENERATION {
                RETIRED
            } else {
                *g + 1
            };
        }
    }

    /// How many slots are retired.
    pub(super) fn retired(&self) -> u32 {
        self.generation.iter().filter(|&&g| g == RETIRED).count() as u32
    }

    /// Puts every slot that is not retired at `generation`, as if emptied that many times:
    /// for tests of what happens at [`MAX_GENERATION`].
    #[cfg(all(test, feature = "capi"))]
    pub(super) fn age(&mut self, generation: u32) {
        for g in self.generation.iter_mut().filter(|g| **g != RETIRED) {
            *g = generation.min(MAX_GENERATION);
        }
    }
}
