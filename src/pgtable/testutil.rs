//! The allocator of the engine's and the IOASID layer's unit tests: the `sim` arena, so that
//! every test counts pages, catches double frees and records cache maintenance the same way as
//! the conformance suite does.

pub(crate) use crate::sim::arena::Arena as TestAlloc;
use crate::sim::arena::ArenaConfig;

/// A 16 MiB arena (4 MiB under Miri, which interprets every byte it zeroes) whose physical
/// addresses start at 1 GiB, so that PA != VA.
pub(crate) fn test_alloc() -> TestAlloc {
    TestAlloc::new(ArenaConfig {
        base_pa: 0x4000_0000,
        capacity: if cfg!(miri) { 4 << 20 } else { 16 << 20 },
    })
    .expect("host memory for the test arena")
}
