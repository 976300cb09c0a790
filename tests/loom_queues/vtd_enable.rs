//! VT-d `enable` beside a flush (`VtdUnit::enable`, `Iommu::flush`; Intel VT-d specification
//! rev. 4.1, §6.5.2 Queued Invalidation, §10.4.4-§10.4.5 `GCMD`/`GSTS`, §11.4.6 `RTADDR`)
//! under loom: the whole driver, two CPUs' calls on two loom threads, against a unit model
//! that answers its registers in the caller's thread.
//!
//! The model: `GSTS` follows each `GCMD` write at once (`TE`, `QIE`, `SRTP`), the queue
//! registers are plain values, and an `IQT` write runs the queue from `IQH` to the new tail
//! then and there (the descriptors read from the ring's loom atomics): an IOTLB invalidation
//! (global, domain or page) removes what it covers from the model's IOTLB, a wait with `SW`
//! stores its status data (release). So the unit is never late here: what is explored is
//! the two CPUs' calls, their locks and the invalidator's state, which `enable` replaces
//! (`Invalidator::Off` to a new queue) while a flush may come before, after or while it
//! runs. The register accesses are `std` atomics (no loom branch point); the ring, the status
//! word, the unit's locks and `mmio::poll`'s yields are loom's.
//!
//! Before the threads start: a second-stage domain with one 4 KiB page mapped at `IOVA` and
//! unmapped (the gather holds its range), and the model's IOTLB holding that page's
//! translation under the domain's DID, cached while the unit translated earlier (turned off
//! since: `disable` invalidates nothing) or, in a takeover, cached by the previous owner.
//! Then CPU E calls `enable` and CPU F `flush`es the gather. What must hold (`enable`'s and
//! `Invalidator`'s docs): `enable` returns `Ok`; the flush returns `Ok`, dropped while the
//! unit is off (`enable`'s global invalidation comes later) or queued on the running queue,
//! or, in a takeover before `enable` pointed the unit at this driver's tables,
//! `UnexpectedState` (`GSTS.TES` with no invalidation interface), its gather kept, and then a
//! retry returns `Ok`; at the end the IOTLB no longer holds the page (no invalidation lost),
//! and the gather is empty. Loom fails a deadlock, and every wait is bounded by the budget.

use super::*;
use iommu_engine::iommu::{DomainConfig, Iommu};
use iommu_engine::mem::Iova;
use iommu_engine::pgtable::{Gather, Prot};
use iommu_engine::vtd::regs::{CAP_REG, ECAP_REG, RTADDR_REG, VER_REG};
use iommu_engine::vtd::{VtdConfig, VtdUnit};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed as StdRelaxed;

/// QEMU's `CAP` (`RWBF` and `CM` clear, no PSI needed for this test) and an `ECAP` with `QI`.
const CAP: u64 = 0x00d2_008c_222f_0606;
const ECAP: u64 = 0x00f0_0f5e;
/// The page unmapped before the threads start.
const IOVA: u64 = 0x10_0000;
/// `GSTS` bits that follow their `GCMD` bits (persistent commands).
const PERSISTENT: u32 = 1 << 31 | 1 << 28 | 1 << 26 | 1 << 25 | 1 << 23;
const TES: u32 = 1 << 31;
const SRTP: u32 = 1 << 30;
const QIES: u32 = 1 << 26;

/// The unit model's registers and IOTLB (see the module).
#[derive(Default)]
struct EnableRegs {
    gsts: StdU32,
    rtaddr: StdU64,
    iqa: StdU64,
    iqh: StdU64,
    iqt: StdU64,
    /// (DID, 4 KiB page) translations cached.
    iotlb: Mutex<BTreeSet<(u16, u64)>>,
    /// Descriptors run, by type code (bits 3:0).
    ran: Mutex<Vec<u64>>,
}

#[derive(Clone)]
struct EnableWindow {
    regs: Arc<EnableRegs>,
    pages: Arc<Pages>,
}

impl EnableWindow {
    /// Word `index` of the page at `pa` (a page of the allocator).
    fn word(&self, pa: u64, index: usize) -> &AtomicU64 {
        let page = ((pa - PAGE_BASE) >> 16) as usize;
        self.pages.word(page, index + ((pa & 0xfff) / 8) as usize)
    }

    /// Runs the queue from `IQH` to `tail` (an index), as §6.5.2 says, all at once.
    fn run_queue(&self, tail: u64) {
        let ring = self.regs.iqa.load(StdRelaxed) & !0xfff;
        let mut head = self.regs.iqh.load(StdRelaxed) >> SHIFT;
        // The doorbell's release barrier published the descriptors.
        fence(Ordering::Acquire);
        while head != tail {
            let w0 = self.word(ring, head as usize * 2).load(Ordering::Relaxed);
            let w1 = self
                .word(ring, head as usize * 2 + 1)
                .load(Ordering::Relaxed);
            self.execute(w0, w1);
            head = (head + 1) % u64::from(ENTRIES);
            self.regs.iqh.store(head << SHIFT, StdRelaxed);
        }
    }

    fn execute(&self, w0: u64, w1: u64) {
        self.regs.ran.lock().unwrap().push(w0 & 0xf);
        match w0 & 0xf {
            // IOTLB invalidation (§6.5.2.4): granularity 5:4, DID 31:16, ADDR 63:12, AM 5:0.
            0x2 => {
                let did = (w0 >> 16) as u16;
                let (addr, am) = (w1 & !0xfff, w1 & 0x3f);
                let mut tlb = self.regs.iotlb.lock().unwrap();
                match (w0 >> 4) & 3 {
                    1 => tlb.clear(),
                    2 => tlb.retain(|&(d, _)| d != did),
                    3 => tlb.retain(|&(d, p)| d != did || (p >> (12 + am)) != (addr >> (12 + am))),
                    g => panic!("IOTLB invalidation of reserved granularity {g}"),
                }
            }
            // Context-cache invalidation: the model caches no context entries.
            0x1 => {}
            0x5 => {
                assert_ne!(w0 & 1 << 5, 0, "a wait of the queue's without SW");
                // The status word is the low half of the status page's word 0.
                self.word(w1 & !3, 0).store(w0 >> 32, Ordering::Release);
            }
            t => panic!("descriptor of type {t:#x} ({w0:#x}, {w1:#x})"),
        }
    }
}

impl RegisterWindow for EnableWindow {
    fn read32(&self, offset: usize) -> u32 {
        match offset {
            GSTS_REG => self.regs.gsts.load(StdRelaxed),
            FSTS_REG => 0,
            VER_REG => 0x10,
            _ => panic!("read32 of register {offset:#x}"),
        }
    }

    fn write32(&self, offset: usize, value: u32) {
        match offset {
            GCMD_REG => {
                let old = self.regs.gsts.load(StdRelaxed);
                let mut new = (old & !PERSISTENT) | (value & PERSISTENT);
                if value & SRTP != 0 {
                    new |= SRTP;
                }
                if old & QIES != 0 && new & QIES == 0 {
                    self.regs.iqh.store(0, StdRelaxed);
                }
                self.regs.gsts.store(new, StdRelaxed);
            }
            FSTS_REG => {}
            _ => panic!("write32 of register {offset:#x}"),
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        match offset {
            CAP_REG => CAP,
            ECAP_REG => ECAP,
            RTADDR_REG => self.regs.rtaddr.load(StdRelaxed),
            IQH_REG => self.regs.iqh.load(StdRelaxed),
            IQT_REG => self.regs.iqt.load(StdRelaxed),
            IQA_REG => self.regs.iqa.load(StdRelaxed),
            _ => panic!("read64 of register {offset:#x}"),
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        match offset {
            RTADDR_REG => self.regs.rtaddr.store(value, StdRelaxed),
            IQA_REG => self.regs.iqa.store(value, StdRelaxed),
            IQT_REG => {
                self.regs.iqt.store(value, StdRelaxed);
                if self.regs.gsts.load(StdRelaxed) & QIES != 0 {
                    self.run_queue(value >> SHIFT);
                }
            }
            _ => panic!("write64 of register {offset:#x}"),
        }
    }
}

/// Stack for the scenario's loom threads: the unit and its calls' frames outgrow loom's default.
const STACK: usize = 4 << 20;

/// Spawns `f` on a loom thread with [`STACK`] bytes of stack.
pub(super) fn spawn<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> loom::thread::JoinHandle<T> {
    loom::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .unwrap()
}

/// The scenario; `takeover`: the unit translates for a previous owner (`GSTS.TES` and `RTPS`
/// set, `RTADDR` at another legacy root table, no queue) when the threads start.
fn enable_beside_a_flush(t: &Tally, takeover: bool) {
    let t = t.clone();
    // The setup too runs on a thread of its own: the model's main thread has loom's default stack.
    spawn(move || enable_beside_a_flush_on(&t, takeover))
        .join()
        .unwrap();
}

fn enable_beside_a_flush_on(t: &Tally, takeover: bool) {
    let pages = Arc::new(Pages::default());
    let regs = Arc::new(EnableRegs::default());
    if takeover {
        regs.gsts.store(TES | SRTP, StdRelaxed);
        regs.rtaddr.store(0x7fff_f000, StdRelaxed);
    }
    let window = EnableWindow {
        regs: regs.clone(),
        pages: pages.clone(),
    };
    let mut config = VtdConfig::legacy();
    config.poll_budget = 4;
    let unit = Arc::new(VtdUnit::new(window, PagesRef(pages), config).unwrap());
    let d = unit.domain_alloc(&DomainConfig::default()).unwrap();
    let rw = Prot::READ | Prot::WRITE;
    unit.map(d, Iova::new(IOVA), PhysAddr::new(0x8000_0000), 4096, rw)
        .unwrap();
    let mut gather = Gather::new();
    assert_eq!(unit.unmap(d, Iova::new(IOVA), 4096, &mut gather), Ok(4096));
    let did = unit.domain_id(d).unwrap().get();
    regs.iotlb.lock().unwrap().insert((did, IOVA));
    regs.ran.lock().unwrap().clear();

    let u = unit.clone();
    let enabler = spawn(move || u.enable());
    let u = unit.clone();
    let flusher = spawn(move || {
        let r = u.flush(d, &mut gather);
        (r, gather)
    });
    let enabled = enabler.join().unwrap();
    let (flushed, mut gather) = flusher.join().unwrap();
    assert_eq!(enabled, Ok(()), "enable beside a flush");
    assert!(unit.is_enabled());
    // Where the flush went: dropped while off (nothing queued before enable's batch), on the
    // queue after enable (a domain or page invalidation after enable's global one).
    let ran = regs.ran.lock().unwrap().clone();
    let cached = regs.iotlb.lock().unwrap().contains(&(did, IOVA));
    assert!(
        !cached || flushed.is_err(),
        "the translation cached before is still cached after enable and the flush returned \
         Ok (descriptors run, by type: {ran:x?})"
    );
    match flushed {
        Ok(()) if ran.len() == 3 => t.note("flush dropped before enable"),
        Ok(()) => {
            assert_eq!(ran.len(), 5, "enable's batch and the flush's: {ran:x?}");
            t.note("flush queued after enable");
        }
        Err(e) => {
            assert!(takeover, "the flush failed beside a first enable: {e:?}");
            assert!(
                matches!(
                    e,
                    iommu_engine::iommu::Error::Hardware { what, .. } if what.starts_with("GSTS.TES")
                ),
                "the flush's error before a takeover enable: {e:?}"
            );
            assert!(!gather.is_empty(), "a failed flush keeps its gather");
            t.note("flush refused before the takeover");
            unit.flush(d, &mut gather)
                .expect("the flush retried after enable");
            let cached = regs.iotlb.lock().unwrap().contains(&(did, IOVA));
            assert!(!cached, "the translation cached before, after the retry");
        }
    }
    assert!(gather.is_empty(), "the flush's gather after Ok");
}

/// The allocator shared with the window (which reads the ring and status pages).
#[derive(Clone)]
struct PagesRef(Arc<Pages>);

// SAFETY: forwards to `Pages`, whose pages live as long as any `Arc` to it.
unsafe impl PageAllocator for PagesRef {
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

/// A first `enable` (the unit off, translation off) beside a flush of a domain: the flush is
/// dropped (translation off; `enable` invalidates every cache globally after it) or queued
/// after `enable`, and returns `Ok` either way.
#[test]
fn vtd_enable_beside_a_flush() {
    let outcomes = ["flush dropped before enable", "flush queued after enable"];
    run("vtd_enable_beside_a_flush", &outcomes, |t| {
        enable_beside_a_flush(t, false)
    });
}

/// A takeover `enable` (the unit translating for a previous owner) beside a flush: before
/// `enable` the flush is refused (`UnexpectedState`: translation on, no invalidation interface
/// of this driver's), its gather kept for the retry, which completes.
#[test]
fn vtd_takeover_enable_beside_a_flush() {
    let outcomes = [
        "flush refused before the takeover",
        "flush queued after enable",
    ];
    run("vtd_takeover_enable_beside_a_flush", &outcomes, |t| {
        enable_beside_a_flush(t, true)
    });
}
