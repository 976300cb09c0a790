//! The circular queue mechanics shared by the command and event queues.
//!
//! Arm IHI 0070 G.b §3.5 "Command and Event queues": a queue of `2^LOG2SIZE` entries has PROD and
//! CONS registers holding an index in bits `[LOG2SIZE-1:0]` and a wrap flag in bit `LOG2SIZE`; the
//! queue is empty when index and wrap are equal, full when the indexes are equal and the wraps
//! differ. §6.3.26 / §6.3.29 give the `*_BASE` layout: RA/WA bit 62, ADDR `51:5`, LOG2SIZE `4:0`.

use core::marker::PhantomData;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

/// A 64-bit word of queue memory: `core`'s atomic, or under `--cfg loom`
/// (`tests/loom_queues.rs`) loom's, so that a thread standing in for the unit reads the command
/// queue while the real producer fills it (the test's pages are arrays of loom atomics, reached
/// by word index).
#[cfg(not(loom))]
pub(crate) type QueueWord = core::sync::atomic::AtomicU64;
/// A 64-bit word of queue memory (see the normal build's).
#[cfg(loom)]
pub(crate) type QueueWord = loom::sync::atomic::AtomicU64;

use super::field::{address_bits, table_page, Field};
use super::SmmuError;
use crate::mem::{Page, PageAllocator, WalkerCoherency, PAGE_SHIFT_4K};
use crate::mmio::{dma_consumed_barrier, dma_read_barrier, RegisterWindow};

/// `*_BASE.ADDR`, bits 51:5.
pub const Q_BASE_ADDR: Field = Field::new("Q_BASE.ADDR", 51, 5);
/// `*_BASE.LOG2SIZE`, bits 4:0.
pub const Q_BASE_LOG2SIZE: Field = Field::new("LOG2SIZE", 4, 0);
/// `*_BASE.RA` / `WA`, bit 62: read- or write-allocate hint.
pub const Q_BASE_ALLOCATE: u64 = 1 << 62;

/// A producer or consumer position: index plus wrap flag, for a queue of `2^log2` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueuePointer {
    log2: u32,
    /// `wrap << log2 | index`; never more than `log2 + 1` bits.
    value: u32,
}

impl QueuePointer {
    /// The largest queue the architecture allows, log2 entries (`CMDQS`/`EVENTQS` ≤ 19).
    pub const MAX_LOG2: u32 = 19;

    /// Position zero of a `2^log2`-entry queue; `log2` is clamped to [`Self::MAX_LOG2`].
    pub const fn zero(log2: u32) -> Self {
        Self {
            log2: Self::clamp(log2),
            value: 0,
        }
    }

    const fn clamp(log2: u32) -> u32 {
        if log2 > Self::MAX_LOG2 {
            Self::MAX_LOG2
        } else {
            log2
        }
    }

    /// The position held in a PROD/CONS register; other bits (ERR, OVFLG) are dropped.
    pub const fn from_register(log2: u32, raw: u32) -> Self {
        let log2 = Self::clamp(log2);
        Self {
            log2,
            value: raw & Self::wrap_mask(log2),
        }
    }

    const fn wrap_mask(log2: u32) -> u32 {
        (2u32 << log2) - 1
    }

    /// The index bits.
    pub const fn index(self) -> u32 {
        self.value & ((1 << self.log2) - 1)
    }

    /// The wrap flag.
    pub const fn wrap(self) -> bool {
        self.value >> self.log2 & 1 == 1
    }

    /// The register encoding (index and wrap).
    pub const fn register(self) -> u32 {
        self.value
    }

    /// Moves `n` entries forward, flipping the wrap flag each time the index wraps.
    pub const fn advance(self, n: u32) -> Self {
        Self {
            log2: self.log2,
            value: self.value.wrapping_add(n) & Self::wrap_mask(self.log2),
        }
    }

    /// Entries between `cons` and `self` (as producer): 0 when empty, `2^log2` when full.
    pub const fn used_since(self, cons: Self) -> u32 {
        self.value.wrapping_sub(cons.value) & Self::wrap_mask(self.log2)
    }

    /// Free entries for a producer at `self` with the consumer at `cons`.
    pub const fn free_before(self, cons: Self) -> u32 {
        (1u32 << self.log2).saturating_sub(self.used_since(cons))
    }

    /// Whether a producer at `self` has filled the queue up to `cons`.
    pub const fn is_full(self, cons: Self) -> bool {
        self.index() == cons.index() && self.wrap() != cons.wrap()
    }
}

/// Queue memory from the allocator: `2^log2` entries of `2^entry_log2` bytes, aligned to its size.
pub(crate) struct QueueMemory<A: PageAllocator> {
    pub(crate) alloc: A,
    pub(crate) page: Page,
    pub(crate) size_log2: u32,
    pub(crate) log2: u32,
    pub(crate) entry_log2: u32,
    pub(crate) coherency: WalkerCoherency,
}

impl<A: PageAllocator> QueueMemory<A> {
    /// Allocates a zeroed queue below `2^oas` (`IDR5.OAS`); `max_log2` is the unit's limit
    /// (`IDR1.CMDQS`/`EVENTQS`).
    pub(crate) fn new(
        alloc: A,
        what: &'static str,
        log2: u32,
        max_log2: u32,
        entry_log2: u32,
        coherency: WalkerCoherency,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        // LOG2SIZE is a 5-bit field and the architecture caps queues at 2^19 entries.
        let max = max_log2.min(QueuePointer::MAX_LOG2);
        if log2 > max {
            return Err(SmmuError::SizeUnsupported {
                what,
                log2,
                max_log2: max,
            });
        }
        // The base must be aligned to the queue size (at least 32 bytes); a 4K page is the
        // allocator's smallest unit and satisfies that for small queues.
        let size_log2 = (log2 + entry_log2).max(PAGE_SHIFT_4K);
        let page = table_page(&alloc, size_log2, oas, what)?;
        let queue = Self {
            alloc,
            page,
            size_log2,
            log2,
            entry_log2,
            coherency,
        };
        address_bits(Q_BASE_ADDR, page.pa.get())?;
        // Clean the zeroed page once: a dirty line evicted later would overwrite what a
        // non-coherent unit wrote (event records) or show it stale data.
        coherency.sync(&queue.alloc, page.va, 1 << size_log2);
        Ok(queue)
    }

    /// The `*_BASE` register value, with the allocate hint set.
    pub(crate) fn base_register(&self) -> u64 {
        Q_BASE_ALLOCATE | self.page.pa.get() | self.log2 as u64
    }

    /// The 64-bit words of entry `index` (taken modulo the queue size).
    pub(crate) fn entry(&self, index: u32) -> &[QueueWord] {
        let words = 1usize << (self.entry_log2 - 3);
        let index = (index & ((1 << self.log2) - 1)) as usize;
        let base = self.page.va.as_ptr().cast::<QueueWord>();
        // SAFETY: the page holds 2^(log2 + entry_log2) bytes, so entry `index` (masked below
        // 2^log2) lies inside it; the page is 8-byte aligned, live until `drop`, and only
        // accessed through atomics. (Under loom: an array of loom atomics at least as long as
        // the queue's words, the test allocator's promise.)
        unsafe { core::slice::from_raw_parts(base.add(index * words), words) }
    }

    /// Cleans entry `index` to memory for a non-coherent unit.
    pub(crate) fn sync_entry(&self, index: u32) {
        let entry = self.entry(index);
        let len = entry.len() * 8;
        if let Some(first) = entry.first() {
            self.coherency
                .sync(&self.alloc, NonNull::from(first).cast(), len);
        }
    }
}

impl<A: PageAllocator> Drop for QueueMemory<A> {
    fn drop(&mut self) {
        // SAFETY: the page came from `alloc(size_log2)` in `new` and is freed once. The owner
        // must have disabled the queue (CR0.CMDQEN/EVENTQEN = 0) before dropping it; the queue
        // types document that requirement.
        unsafe { self.alloc.free(self.page, self.size_log2) }
    }
}

/// Software's side of a queue the unit produces into: the event queue (§7) and the PRI queue
/// (chapter 8). Both are read the same way (§3.5): PROD first, then the entries before it
/// (each invalidated from the CPU caches on a non-coherent unit, read with acquire loads),
/// then CONS written back with `OVACKFLG` (bit 31) in the same write. When an overflow is
/// acknowledged is each queue's own rule, so `overflow_ack` is theirs to set: the event queue
/// acknowledges with every CONS write, the PRI queue only with the write that reaches the PROD
/// the overflow was seen with (§8.1).
pub(crate) struct QueueReader<A: PageAllocator, R: QueueRegisters> {
    pub(crate) mem: QueueMemory<A>,
    /// CONS as software last published it.
    pub(crate) cons: QueuePointer,
    /// `OVACKFLG` as software last wrote it.
    pub(crate) overflow_ack: u32,
    registers: PhantomData<R>,
}

/// The `*_BASE`, `*_PROD` and `*_CONS` register offsets of a queue software consumes (types,
/// not fields: nothing is added to the queue the unit keeps on its enable path's stack).
pub(crate) trait QueueRegisters {
    const BASE: usize;
    const PROD: usize;
    const CONS: usize;
}

/// `*_PROD.OVFLG` / `*_CONS.OVACKFLG`.
pub(crate) const OVERFLOW_FLAG: u32 = 1 << 31;

impl<A: PageAllocator, R: QueueRegisters> QueueReader<A, R> {
    /// A reader of `mem` through `R`'s registers.
    pub(crate) fn new(mem: QueueMemory<A>) -> Self {
        Self {
            cons: QueuePointer::zero(mem.log2),
            mem,
            overflow_ack: 0,
            registers: PhantomData,
        }
    }

    /// Writes `*_BASE` and zeroes PROD and CONS. Only while the queue is disabled in `CR0`.
    pub(crate) fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) {
        regs.write64(R::BASE, self.mem.base_register());
        regs.write32(R::PROD, 0);
        regs.write32(R::CONS, 0);
        self.cons = QueuePointer::zero(self.mem.log2);
        self.overflow_ack = 0;
    }

    /// PROD and its `OVFLG`; the entries the unit wrote before it are visible to the reads
    /// that follow.
    pub(crate) fn read_prod<W: RegisterWindow + ?Sized>(&self, regs: &W) -> (QueuePointer, u32) {
        let raw = regs.read32(R::PROD);
        // Entries the unit wrote before updating PROD are read after reading PROD.
        dma_read_barrier();
        (
            QueuePointer::from_register(self.mem.log2, raw),
            raw & OVERFLOW_FLAG,
        )
    }

    /// The first `N` words of the entry at CONS, CONS moved past it (not yet published);
    /// `None` once CONS is at `prod`.
    pub(crate) fn pop<const N: usize>(&mut self, prod: QueuePointer) -> Option<[u64; N]> {
        if self.cons == prod {
            return None;
        }
        let entry = self.mem.entry(self.cons.index());
        if let (WalkerCoherency::NonCoherent, Some(first)) = (self.mem.coherency, entry.first()) {
            // The unit wrote the entry to memory behind the CPU caches.
            let len = entry.len() * 8;
            self.mem
                .alloc
                .sync_for_cpu(NonNull::from(first).cast(), len);
        }
        let mut raw = [0u64; N];
        for (r, w) in raw.iter_mut().zip(entry) {
            *r = w.load(Ordering::Acquire);
        }
        self.cons = self.cons.advance(1);
        Some(raw)
    }

    /// Publishes CONS with `overflow_ack` as `OVACKFLG`, so the unit can reuse the entries.
    pub(crate) fn publish<W: RegisterWindow + ?Sized>(&self, regs: &W) {
        // The entries before CONS are read before the unit may reuse them.
        dma_consumed_barrier();
        regs.write32(R::CONS, self.cons.register() | self.overflow_ack);
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::smmuv3::regs;
    use crate::smmuv3::testutil::{ModelSmmu, VecAllocator};
    use std::vec;
    use std::vec::Vec;

    struct Priq;
    impl QueueRegisters for Priq {
        const BASE: usize = regs::PRIQ_BASE;
        const PROD: usize = regs::PRIQ_PROD;
        const CONS: usize = regs::PRIQ_CONS;
    }

    /// A 4-entry queue of `2^entry_log2`-byte entries, entry `i` holding words `i << 8 | w`
    /// written as the unit would (behind the CPU), PROD at 3 with OVFLG set.
    fn reader_with_three<'a>(
        alloc: &'a VecAllocator,
        m: &ModelSmmu,
        entry_log2: u32,
        coherency: WalkerCoherency,
    ) -> QueueReader<&'a VecAllocator, Priq> {
        let mem = QueueMemory::new(alloc, "test", 2, 19, entry_log2, coherency, 52).unwrap();
        let mut q = QueueReader::<_, Priq>::new(mem);
        q.program(m);
        for i in 0..3u32 {
            for (w, word) in q.mem.entry(i).iter().enumerate() {
                word.store(u64::from(i) << 8 | w as u64, Ordering::Relaxed);
            }
        }
        m.set32(regs::PRIQ_PROD, 3 | OVERFLOW_FLAG);
        q
    }

    /// The reader both the event queue and the PRI queue use: PROD with its OVFLG, then each
    /// entry invalidated from the CPU caches (its whole size, at its own address) before it is
    /// read on a non-coherent unit and never on a coherent one, then CONS with the OVACKFLG the
    /// owner chose.
    #[test]
    fn reader_invalidates_each_entry_of_a_non_coherent_unit_before_reading_it() {
        for (entry_log2, coherency) in [
            (4, WalkerCoherency::NonCoherent),
            (5, WalkerCoherency::NonCoherent),
            (4, WalkerCoherency::Coherent),
        ] {
            let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
            let mut q = reader_with_three(&alloc, &m, entry_log2, coherency);
            alloc.cpu_syncs.borrow_mut().clear();
            let (prod, flag) = q.read_prod(&m);
            assert_eq!((prod.index(), flag), (3, OVERFLOW_FLAG));
            // PRI queue entries are 2 words (16 bytes), event records 4 (32 bytes).
            assert_eq!(q.pop::<2>(prod), Some([0, 1]));
            assert_eq!(q.pop::<2>(prod), Some([1 << 8, 1 << 8 | 1]));
            let base = q.mem.page.va.as_ptr() as usize;
            let size = 1usize << entry_log2;
            let want: Vec<(usize, usize)> = match coherency {
                WalkerCoherency::NonCoherent => vec![(base, size), (base + size, size)],
                WalkerCoherency::Coherent => vec![],
            };
            assert_eq!(*alloc.cpu_syncs.borrow(), want);
            // Nothing published until the owner says so, and then OVACKFLG as it chose.
            assert_eq!(m.read32(regs::PRIQ_CONS), 0);
            q.publish(&m);
            assert_eq!(m.read32(regs::PRIQ_CONS), 2);
            q.overflow_ack = flag;
            assert_eq!(q.pop::<2>(prod), Some([2 << 8, 2 << 8 | 1]));
            assert_eq!(q.pop::<2>(prod), None, "CONS reached PROD");
            q.publish(&m);
            assert_eq!(m.read32(regs::PRIQ_CONS), 3 | OVERFLOW_FLAG);
        }
    }

    #[test]
    fn wrap_semantics() {
        let log2 = 2; // 4 entries
        let cons = QueuePointer::zero(log2);
        let prod = cons.advance(4);
        assert_eq!((prod.index(), prod.wrap()), (0, true));
        assert!(prod.is_full(cons));
        assert_eq!(prod.used_since(cons), 4);
        assert_eq!(prod.free_before(cons), 0);
        let cons = cons.advance(3);
        assert_eq!(prod.used_since(cons), 1);
        assert_eq!(prod.free_before(cons), 3);
        // Two full laps bring the wrap flag back.
        assert_eq!(
            QueuePointer::zero(log2).advance(8),
            QueuePointer::zero(log2)
        );
        // ERR / OVFLG bits are not part of the position.
        let r = QueuePointer::from_register(log2, 0x8000_0005 | (1 << 24));
        assert_eq!((r.index(), r.wrap()), (1, true));
    }
}
