//! What the `vtd_enable` and `amdvi_enable` scenarios share: `enable` beside a flush of one
//! unmapped page (`Iommu::flush`), against a unit model whose queue (VT-d rev. 4.1 §6.5.2,
//! `IQH`/`IQT`; AMD-Vi 48882 rev. 3.10 §2.4, `CmdBufHead`/`CmdBufTail`) runs at once, in the
//! caller's thread, when the tail is written. Each module brings its unit's registers and
//! commands, and says which outcomes its driver may have; the race, the IOTLB the model keeps
//! and the checks every outcome must pass are here, in one place.

use super::*;
use iommu_engine::iommu::{DomainConfig, DomainHandle, Iommu};
use iommu_engine::mem::Iova;
use iommu_engine::pgtable::{Gather, Prot};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed as StdRelaxed;

/// The page mapped and unmapped before the threads start.
pub(super) const IOVA: u64 = 0x10_0000;

/// Stack for the scenario's loom threads: the unit and its calls' frames outgrow loom's default.
const STACK: usize = 4 << 20;

/// Spawns `f` on a loom thread with [`STACK`] bytes of stack.
fn spawn<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap()
}

/// Runs the scenario `body` (setup and race) on a loom thread of its own: the model's main
/// thread has loom's default stack.
pub(super) fn on_a_thread(t: &Tally, body: impl FnOnce(&Tally) + Send + 'static) {
    let t = t.clone();
    spawn(move || body(&t)).join().unwrap();
}

impl Pages {
    /// The word at `pa`, in a page of the allocator.
    pub(super) fn at(&self, pa: u64) -> &AtomicU64 {
        let page = ((pa - PAGE_BASE) >> 16) as usize;
        self.word(page, ((pa & 0xfff) / 8) as usize)
    }
}

/// Runs a ring of 16-byte entries, `size` bytes at `ring` in `pages`, from the byte offset in
/// the `head` register to `tail`, all at once: `execute` gets each entry's two words, and
/// `head` follows it.
pub(super) fn run_ring(
    pages: &Pages,
    ring: u64,
    size: u64,
    head: &StdU64,
    tail: u64,
    mut execute: impl FnMut(u64, u64),
) {
    let mut at = head.load(StdRelaxed);
    // The doorbell's release barrier published the entries.
    fence(Ordering::Acquire);
    while at != tail {
        let w0 = pages.at(ring + at).load(Ordering::Relaxed);
        let w1 = pages.at(ring + at + 8).load(Ordering::Relaxed);
        execute(w0, w1);
        at = (at + 16) % size;
        head.store(at, StdRelaxed);
    }
}

/// What the unit model caches and what it ran.
#[derive(Default)]
pub(super) struct ModelCaches {
    /// (domain tag: DID, DomainID; 4 KiB page) translations cached.
    pub(super) iotlb: Mutex<BTreeSet<(u16, u64)>>,
    /// Commands run, by opcode (AMD-Vi) or type code (VT-d, bits 3:0).
    pub(super) ran: Mutex<Vec<u64>>,
}

impl ModelCaches {
    fn holds(&self, tag: u16, page: u64) -> bool {
        self.iotlb.lock().unwrap().contains(&(tag, page))
    }
}

/// The shared allocator of a unit and its window (which reads the queue's pages).
pub(super) struct Shared<A>(pub(super) Arc<A>);

impl<A> Clone for Shared<A> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

// SAFETY: forwards to `A`, whose pages live as long as any `Arc` to it.
unsafe impl<A: PageAllocator> PageAllocator for Shared<A> {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        self.0.alloc(size_log2)
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        // SAFETY: per the caller.
        unsafe { self.0.free(page, size_log2) }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        self.0.phys_to_virt(pa)
    }
}

/// A driver's unit, as the enable scenarios call it.
pub(super) trait EnableUnit: Iommu + Send + Sync + 'static {
    type Error: std::fmt::Debug + PartialEq + Send + 'static;
    /// The driver's `enable`.
    fn enable(&self) -> Result<(), Self::Error>;
    /// The driver's `is_enabled`.
    fn is_enabled(&self) -> bool;
}

/// Implements [`EnableUnit`] for a driver's unit type `$unit` with its own `enable` and
/// `is_enabled`, whose error is `$error`.
macro_rules! enable_unit {
    ($unit:ty, $error:ty) => {
        impl super::enable_model::EnableUnit for $unit {
            type Error = $error;
            fn enable(&self) -> Result<(), $error> {
                <$unit>::enable(self)
            }
            fn is_enabled(&self) -> bool {
                <$unit>::is_enabled(self)
            }
        }
    };
}
pub(super) use enable_unit;

/// The state before the threads start: a domain of `unit` with one 4 KiB page mapped at
/// `IOVA` and unmapped; returns the domain and the gather holding the page's range.
pub(super) fn unmapped_page(unit: &impl Iommu) -> (DomainHandle, Gather) {
    let d = unit.domain_alloc(&DomainConfig::default()).unwrap();
    let rw = Prot::READ | Prot::WRITE;
    unit.map(d, Iova::new(IOVA), PhysAddr::new(0x8000_0000), 4096, rw)
        .unwrap();
    let mut gather = Gather::new();
    assert_eq!(unit.unmap(d, Iova::new(IOVA), 4096, &mut gather), Ok(4096));
    (d, gather)
}

/// How a flush beside `enable` may be refused: with a `Hardware` error naming `state`, before
/// `when` (both the scenario's words).
pub(super) struct Refusal {
    pub(super) state: &'static str,
    pub(super) when: &'static str,
}

/// The race: the model's IOTLB holds `IOVA` under `tag` (the domain's DID or DomainID); CPU E
/// calls `enable`, CPU F flushes `gather` (`unmapped_page`'s). `outcome` checks the flush's
/// result and the commands run in its unit's terms and names the outcome. Checked for every
/// outcome: `enable` returns `Ok`; a flush that returned `Ok` left nothing of the page
/// cached and emptied its gather; a refused one (`refusal`) kept its gather, and its retry
/// returns `Ok` and leaves nothing cached.
pub(super) fn enable_beside_a_flush<U: EnableUnit>(
    t: &Tally,
    unit: Arc<U>,
    (d, gather): (DomainHandle, Gather),
    caches: &ModelCaches,
    tag: u16,
    refusal: Refusal,
    outcome: impl FnOnce(Result<(), &iommu_engine::iommu::Error>, &[u64]) -> &'static str,
) {
    caches.iotlb.lock().unwrap().insert((tag, IOVA));
    let u = unit.clone();
    let enabler = spawn(move || u.enable());
    let u = unit.clone();
    let flusher = spawn(move || {
        let mut gather = gather;
        let r = u.flush(d, &mut gather);
        (r, gather)
    });
    let enabled = enabler.join().unwrap();
    let (flushed, mut gather) = flusher.join().unwrap();
    assert_eq!(enabled, Ok(()), "enable beside a flush");
    assert!(unit.is_enabled());
    let ran = caches.ran.lock().unwrap().clone();
    assert!(
        !caches.holds(tag, IOVA) || flushed.is_err(),
        "the translation cached before is still cached after enable and the flush returned \
         Ok (commands run, by opcode or type: {ran:x?})"
    );
    t.note(outcome(flushed.as_ref().map(|_| ()), &ran));
    if let Err(e) = flushed {
        assert!(
            matches!(
                e,
                iommu_engine::iommu::Error::Hardware { what, .. } if what.starts_with(refusal.state)
            ),
            "the flush's error before {}: {e:?}",
            refusal.when
        );
        assert!(!gather.is_empty(), "a failed flush keeps its gather");
        unit.flush(d, &mut gather)
            .expect("the flush retried after enable");
        assert!(
            !caches.holds(tag, IOVA),
            "the translation cached before, after the retry"
        );
    }
    assert!(gather.is_empty(), "the flush's gather after Ok");
}
