//! Walker tests. Every table here is written by hand, one raw descriptor at a time, with the bits
//! computed from the spec in the test itself: nothing comes from the crate's encoders.

mod amdvi_v1;
mod amdvi_v2;
mod arm_s1;
mod arm_s2;
mod vtd_fs;
mod vtd_ss;

use super::{bits, first_set};
use crate::mem::PageAllocator;
use crate::sim::arena::{Arena, ArenaConfig};

/// An arena whose physical addresses start at `base`.
fn arena_at(base: u64) -> Arena {
    Arena::new(ArenaConfig {
        base_pa: base,
        capacity: 16 << 20,
    })
    .expect("arena")
}

/// A zeroed table of `1 << size_log2` bytes; returns its physical address.
fn table(arena: &Arena, size_log2: u32) -> u64 {
    arena.alloc(size_log2).expect("table page").pa.get()
}

/// Writes descriptor `value` at `index` of the table at `table`.
fn put(arena: &Arena, table: u64, index: u64, value: u64) {
    assert!(
        arena.write_u64(table + 8 * index, value),
        "descriptor outside a live page"
    );
}

#[test]
fn field_masks() {
    assert_eq!(bits(51, 12), 0x000f_ffff_ffff_f000);
    assert_eq!(bits(63, 63), 1 << 63);
    assert_eq!(bits(0, 0), 1);
    assert_eq!(first_set(0x880, bits(11, 7)), Some(7));
    assert_eq!(first_set(0x880, bits(6, 0)), None);
}
