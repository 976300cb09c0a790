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

use super::enable_model::{
    enable_beside_a_flush, enable_unit, on_a_thread, run_ring, unmapped_page, ModelCaches, Refusal,
    Shared,
};
use super::*;
use iommu_engine::vtd::regs::{CAP_REG, ECAP_REG, RTADDR_REG, VER_REG};
use iommu_engine::vtd::{VtdConfig, VtdUnit};
use std::sync::atomic::Ordering::Relaxed as StdRelaxed;

/// QEMU's `CAP` (`RWBF` and `CM` clear, no PSI needed for this test) and an `ECAP` with `QI`.
const CAP: u64 = 0x00d2_008c_222f_0606;
const ECAP: u64 = 0x00f0_0f5e;
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
    /// Translations cached (by DID), descriptors run (by type code).
    caches: ModelCaches,
}

#[derive(Clone)]
struct EnableWindow {
    regs: Arc<EnableRegs>,
    pages: Arc<Pages>,
}

impl EnableWindow {
    /// Runs the queue from `IQH` to `tail` (an `IQT` value), as §6.5.2 says, all at once.
    fn run_queue(&self, tail: u64) {
        let ring = self.regs.iqa.load(StdRelaxed) & !0xfff;
        let size = u64::from(ENTRIES) << SHIFT;
        run_ring(&self.pages, ring, size, &self.regs.iqh, tail, |w0, w1| {
            self.execute(w0, w1)
        });
    }

    fn execute(&self, w0: u64, w1: u64) {
        self.regs.caches.ran.lock().unwrap().push(w0 & 0xf);
        match w0 & 0xf {
            // IOTLB invalidation (§6.5.2.4): granularity 5:4, DID 31:16, ADDR 63:12, AM 5:0.
            0x2 => {
                let did = (w0 >> 16) as u16;
                let (addr, am) = (w1 & !0xfff, w1 & 0x3f);
                let mut tlb = self.regs.caches.iotlb.lock().unwrap();
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
                self.pages.at(w1 & !3).store(w0 >> 32, Ordering::Release);
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
                    self.run_queue(value >> SHIFT << SHIFT);
                }
            }
            _ => panic!("write64 of register {offset:#x}"),
        }
    }
}

/// The scenario; `takeover`: the unit translates for a previous owner (`GSTS.TES` and `RTPS`
/// set, `RTADDR` at another legacy root table, no queue) when the threads start.
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
    let unit = Arc::new(VtdUnit::new(window, Shared(pages), config).unwrap());
    let unmapped = unmapped_page(&*unit);
    let did = unit.domain_id(unmapped.0).unwrap().get();
    regs.caches.ran.lock().unwrap().clear();
    let refusal = Refusal {
        state: "GSTS.TES",
        when: "a takeover enable",
    };
    // Where the flush went: dropped while off (nothing queued before enable's batch), on the
    // queue after enable (a domain or page invalidation after enable's global one).
    enable_beside_a_flush(
        t,
        unit,
        unmapped,
        &regs.caches,
        did,
        refusal,
        |flushed, ran| match flushed {
            Ok(()) if ran.len() == 3 => "flush dropped before enable",
            Ok(()) => {
                assert_eq!(ran.len(), 5, "enable's batch and the flush's: {ran:x?}");
                "flush queued after enable"
            }
            Err(e) => {
                assert!(takeover, "the flush failed beside a first enable: {e:?}");
                "flush refused before the takeover"
            }
        },
    );
}

enable_unit!(VtdUnit<EnableWindow, Shared<Pages>>, iommu_engine::vtd::Error);

/// A first `enable` (the unit off, translation off) beside a flush of a domain: the flush is
/// dropped (translation off; `enable` invalidates every cache globally after it) or queued
/// after `enable`, and returns `Ok` either way.
#[test]
fn vtd_enable_beside_a_flush() {
    let outcomes = ["flush dropped before enable", "flush queued after enable"];
    run("vtd_enable_beside_a_flush", &outcomes, |t| {
        on_a_thread(t, |t| enable_beside_a_flush_on(t, false))
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
        on_a_thread(t, |t| enable_beside_a_flush_on(t, true))
    });
}
