//! The barrier that publishes a table to a hardware walker.
//!
//! A new table (zeroed by the allocator, or filled with the leaves of a split) becomes
//! reachable with one compare-and-swap of the entry that links it. The walker must never read
//! that entry and then stale contents of the table, so every write to the table has to be
//! observable by the walker before the linking entry is. The walker is not a CPU: it is a
//! device, and which barrier orders CPU stores for a device depends on the architecture.
//!
//! - **aarch64.** Arm ARM (DDI 0487 K.a), B2.3 "Definition of the Arm memory model" and the
//!   description of DMB: a barrier orders accesses only for observers inside the shareability
//!   domain it names. An SMMU's table walks are observers in the Outer Shareable domain (SMMUv3
//!   IHI 0070, 3.16 "Coherency considerations"), while the CPUs share the Inner Shareable one,
//!   and a `Release` compare-and-swap (`CASL`, or `LDAXR`/`STLXR`) is specified for the
//!   ordering seen by other PEs. So [`publish_table`] issues `DMB OSHST`, which orders every
//!   earlier store before every later store for all observers in the Outer Shareable domain:
//!   what Linux calls `dma_wmb()`, and what it issues before installing a table in
//!   `io-pgtable-arm`.
//! - **x86-64.** Intel SDM vol. 3A, 9.2.2 "Memory Ordering in P6 and More Recent Processor
//!   Families": stores to write-back memory are not reordered with other stores and become
//!   visible in program order to every agent, and a VT-d unit with `ECAP.C = 1` snoops them. Only
//!   the compiler must be kept from moving stores past the compare-and-swap (`LOCK CMPXCHG`
//!   is a full barrier anyway).
//! - **Other architectures** (hosted tests, Miri): a `Release` fence.
//!
//! A walker that does not snoop the CPU caches (VT-d `ECAP.C = 0`, SMMUv3 `IDR0.COHACC = 0`)
//! reads memory, not caches: the engine cleans the table with
//! [`crate::mem::PageAllocator::sync_for_device`] before it links it, and the embedder's
//! implementation must not return before the clean is complete and ordered before later stores
//! (Arm `DC CVAC` then `DSB`; x86 `CLFLUSHOPT` then `SFENCE`, or `CLFLUSH`).

#[cfg(all(target_arch = "x86_64", not(miri)))]
use core::sync::atomic::compiler_fence;
#[cfg(all(target_arch = "x86_64", not(miri)))]
use core::sync::atomic::Ordering;
#[cfg(any(miri, not(any(target_arch = "aarch64", target_arch = "x86_64"))))]
use core::sync::atomic::{fence, Ordering as FenceOrdering};

/// Orders every earlier store to table memory before the store or compare-and-swap that
/// follows, for a hardware walker (see the module documentation). Call it immediately before
/// publishing a table.
#[inline(always)]
pub(crate) fn publish_table() {
    #[cfg(all(target_arch = "aarch64", not(miri)))]
    // SAFETY: a barrier instruction: it reads and writes no memory the compiler tracks, uses no
    // stack and leaves the flags alone.
    unsafe {
        core::arch::asm!("dmb oshst", options(nostack, preserves_flags));
    }
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    compiler_fence(Ordering::Release);
    #[cfg(any(miri, not(any(target_arch = "aarch64", target_arch = "x86_64"))))]
    fence(FenceOrdering::Release);
}
