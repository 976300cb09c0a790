//! AMD-Vi `enable` beside a flush (`AmdViUnit::enable`, `Iommu::flush`; AMD IOMMU
//! specification 48882 rev. 3.10, §2.4 Commands, §3.4 Control and Status registers) under
//! loom: the whole driver, two CPUs' calls on two loom threads, against a unit model that
//! answers its registers in the caller's thread, as `vtd_enable` does for VT-d.
//!
//! The model: `Status.CmdBufRun` / `EventLogRun` follow `Control.CmdBufEn` / `EventLogEn` at
//! once; a tail write while `CmdBufEn` is set runs the buffer from the head to the new tail
//! then and there (the commands read from the ring's loom atomics): INVALIDATE_IOMMU_PAGES
//! removes the pages it covers from the model's IOTLB (by `DomainID`), INVALIDATE_IOMMU_ALL
//! (`EFR.IASup` set) everything, a COMPLETION_WAIT with `S` stores its data (release); the
//! head follows. The device table and the event log are plain memory here (the crate writes
//! them with `core`'s atomics; the model reads neither: no event is logged).
//!
//! Before the threads start: a v1 domain with one 4 KiB page mapped at `IOVA` and unmapped
//! (the gather holds its range; `np_cache` off, so the map itself invalidates nothing), and
//! the model's IOTLB holding the page's translation under the domain's `DomainID`, cached
//! while the unit translated earlier. Then CPU E calls `enable` and CPU F `flush`es the
//! gather. What must hold (`enable`'s and `run`'s docs): `enable` returns `Ok`; the flush
//! returns `Ok` after its INVALIDATE_IOMMU_PAGES and COMPLETION_WAIT ran, or, before `enable`
//! made a command buffer, `UnexpectedState` (`Control.CmdBufEn`: the unit is not enabled),
//! its gather kept, and then a retry returns `Ok`; a flush that returned `Ok` left nothing of
//! the page cached (no invalidation lost); no deadlock (loom), every wait bounded.

use super::enable_model::{
    enable_beside_a_flush, enable_unit, on_a_thread, run_ring, unmapped_page, ModelCaches, Refusal,
    Shared,
};
use super::*;
use iommu_engine::amdvi::cmd::InvalidationRange;
use iommu_engine::amdvi::regs::{
    DEV_TAB_BASE, EVENT_LOG_BASE, EVENT_LOG_HEAD, EVENT_LOG_TAIL, EXCLUSION_BASE, EXCLUSION_LIMIT,
    EXT_FEATURE, EXT_FEATURE2,
};
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use std::sync::atomic::Ordering::Relaxed as StdRelaxed;

const CMD_BUF_BASE: usize = iommu_engine::amdvi::regs::CMD_BUF_BASE;
const CMD_BUF_HEAD: usize = iommu_engine::amdvi::regs::CMD_BUF_HEAD;
const CMD_BUF_TAIL: usize = iommu_engine::amdvi::regs::CMD_BUF_TAIL;
const CONTROL: usize = iommu_engine::amdvi::regs::CONTROL;
const STATUS: usize = iommu_engine::amdvi::regs::STATUS;
/// `EFR.IASup` (INVALIDATE_IOMMU_ALL), `HATS` 0 (four levels).
const EFR: u64 = 1 << 6;
/// `Control`: `CmdBufEn` (12), `EventLogEn` (2); `Status`: `CmdBufRun` (4), `EventLogRun` (3).
const CMD_BUF_EN: u64 = 1 << 12;
const EVENT_LOG_EN: u64 = 1 << 2;
const CMD_BUF_RUN: u64 = 1 << 4;
const EVENT_LOG_RUN: u64 = 1 << 3;
/// The first domain slot's `DomainID` (slot + 1).
const DOMAIN_ID: u16 = 1;

#[derive(Default)]
struct AmdRegs {
    control: StdU64,
    status: StdU64,
    cmd_base: StdU64,
    cmd_head: StdU64,
    cmd_tail: StdU64,
    other: Mutex<BTreeMap<usize, u64>>,
    /// Translations cached (by DomainID), commands run (by opcode).
    caches: ModelCaches,
}

#[derive(Clone)]
struct AmdWindow {
    regs: Arc<AmdRegs>,
    pages: Arc<MixedPages>,
}

impl AmdWindow {
    /// Runs the buffer from the head to `tail` (a byte offset), all at once (§2.4).
    fn run_buffer(&self, tail: u64) {
        let ring = self.regs.cmd_base.load(StdRelaxed) & 0x000f_ffff_ffff_f000;
        let size = 16u64 << ((self.regs.cmd_base.load(StdRelaxed) >> 56) & 0xf);
        let head = &self.regs.cmd_head;
        run_ring(&self.pages.loom, ring, size, head, tail, |w0, w1| {
            self.execute(w0, w1)
        });
    }

    fn execute(&self, w0: u64, w1: u64) {
        self.regs.caches.ran.lock().unwrap().push(w0 >> 60);
        match w0 >> 60 {
            0x1 => {
                assert_ne!(w0 & 1, 0, "a COMPLETION_WAIT of the buffer's without S");
                let store = w0 & 0x000f_ffff_ffff_fff8;
                self.pages.loom.at(store).store(w1, Ordering::Release);
            }
            0x3 => {
                let did = (w0 >> 32) as u16;
                let (base, size_log2) = InvalidationRange::decode(w1, w1 & 1 != 0);
                let mut tlb = self.regs.caches.iotlb.lock().unwrap();
                tlb.retain(|&(d, p)| {
                    d != did || (size_log2 < 64 && (p >> size_log2) != (base >> size_log2))
                });
            }
            0x8 => self.regs.caches.iotlb.lock().unwrap().clear(),
            // INVALIDATE_DEVTAB_ENTRY, INVALIDATE_INTERRUPT_TABLE: the model caches neither.
            0x2 | 0x5 => {}
            op => panic!("command of opcode {op:#x} ({w0:#x}, {w1:#x})"),
        }
    }
}

impl RegisterWindow for AmdWindow {
    fn read32(&self, offset: usize) -> u32 {
        panic!("read32 of register {offset:#x}")
    }

    fn write32(&self, offset: usize, _value: u32) {
        panic!("write32 of register {offset:#x}")
    }

    fn read64(&self, offset: usize) -> u64 {
        match offset {
            EXT_FEATURE => EFR,
            EXT_FEATURE2 => 0,
            CONTROL => self.regs.control.load(StdRelaxed),
            STATUS => self.regs.status.load(StdRelaxed),
            CMD_BUF_BASE => self.regs.cmd_base.load(StdRelaxed),
            CMD_BUF_HEAD => self.regs.cmd_head.load(StdRelaxed),
            CMD_BUF_TAIL => self.regs.cmd_tail.load(StdRelaxed),
            DEV_TAB_BASE | EVENT_LOG_BASE | EVENT_LOG_HEAD | EVENT_LOG_TAIL => {
                *self.regs.other.lock().unwrap().get(&offset).unwrap_or(&0)
            }
            _ => panic!("read64 of register {offset:#x}"),
        }
    }

    fn write64(&self, offset: usize, value: u64) {
        match offset {
            CONTROL => {
                self.regs.control.store(value, StdRelaxed);
                let mut run = 0;
                if value & CMD_BUF_EN != 0 {
                    run |= CMD_BUF_RUN;
                }
                if value & EVENT_LOG_EN != 0 {
                    run |= EVENT_LOG_RUN;
                }
                let status = self.regs.status.load(StdRelaxed);
                let status = (status & !(CMD_BUF_RUN | EVENT_LOG_RUN)) | run;
                self.regs.status.store(status, StdRelaxed);
            }
            // Write 1 to clear; the run bits are read-only.
            STATUS => {
                let status = self.regs.status.load(StdRelaxed);
                let w1c = value & !(CMD_BUF_RUN | EVENT_LOG_RUN);
                self.regs.status.store(status & !w1c, StdRelaxed);
            }
            CMD_BUF_BASE => self.regs.cmd_base.store(value, StdRelaxed),
            CMD_BUF_HEAD => self.regs.cmd_head.store(value, StdRelaxed),
            CMD_BUF_TAIL => {
                self.regs.cmd_tail.store(value, StdRelaxed);
                if self.regs.control.load(StdRelaxed) & CMD_BUF_EN != 0 {
                    self.run_buffer(value);
                }
            }
            DEV_TAB_BASE | EVENT_LOG_BASE | EVENT_LOG_HEAD | EVENT_LOG_TAIL | EXCLUSION_BASE
            | EXCLUSION_LIMIT => {
                self.regs.other.lock().unwrap().insert(offset, value);
            }
            _ => panic!("write64 of register {offset:#x}"),
        }
    }
}

/// Pages of loom atomics (the command buffer's ring and completion page, the domain's
/// tables), except the allocations `plain` names (by their order), which are plain zeroed
/// memory of any size: the device table and the event log, which the crate writes with
/// `core`'s atomics.
pub(super) struct MixedPages {
    loom: Arc<Pages>,
    plain: Mutex<Vec<usize>>,
    /// Allocations made, and the plain pages' memory.
    state: Mutex<(usize, Vec<Box<[u64]>>)>,
}

impl MixedPages {
    fn new(plain: Vec<usize>) -> Self {
        Self {
            loom: Arc::new(Pages::default()),
            plain: Mutex::new(plain),
            state: Mutex::new((0, Vec::new())),
        }
    }
}

/// Plain pages are placed above the loom ones, 64 KiB apart too.
const PLAIN_BASE: u64 = 0x6000_0000;

// SAFETY: loom pages as `Pages`; plain pages are zeroed boxes of the size asked (at most
// 64 KiB), 64 KiB apart in the physical space, live until the scenario ends (no `free`).
unsafe impl PageAllocator for MixedPages {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        let mut state = self.state.lock().unwrap();
        let index = state.0;
        state.0 += 1;
        if !self.plain.lock().unwrap().contains(&index) {
            drop(state);
            return self.loom.alloc(size_log2);
        }
        assert!(size_log2 <= 16, "a plain page of 2^{size_log2} bytes");
        let mut words = vec![0u64; 1 << (size_log2 - 3)].into_boxed_slice();
        let va = NonNull::from(&mut words[0]).cast::<u8>();
        let pa = PLAIN_BASE + ((state.1.len() as u64) << 16);
        state.1.push(words);
        Some(Page {
            pa: PhysAddr::new(pa),
            va,
        })
    }

    unsafe fn free(&self, page: Page, _size_log2: u32) {
        panic!("page {:#x} freed during an enable scenario", page.pa.get());
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        if pa.get() < PLAIN_BASE {
            return self.loom.phys_to_virt(pa);
        }
        let mut state = self.state.lock().unwrap();
        let i = usize::try_from((pa.get() - PLAIN_BASE) >> 16).ok()?;
        let offset = (pa.get() & 0xffff) as usize;
        state
            .1
            .get_mut(i)
            .map(|w| NonNull::from(&mut w[0]).cast::<u8>())
            .map(|p| {
                // SAFETY: inside the page (the caller's address is).
                unsafe { p.add(offset) }
            })
    }
}

fn amd_enable_beside_a_flush_on(t: &Tally) {
    // Allocations: 0 the device table (plain); the domain's tables; in `enable`, the ring,
    // the completion page and the event log (plain, named below once the setup is done).
    let pages = Arc::new(MixedPages::new(vec![0]));
    let regs = Arc::new(AmdRegs::default());
    let window = AmdWindow {
        regs: regs.clone(),
        pages: pages.clone(),
    };
    let mut config = AmdViConfig::new();
    config.poll_budget = 4;
    config.command_len_log2 = 8;
    config.event_len_log2 = 8;
    config.np_cache = false;
    let unit: AmdViUnit<_, _> = AmdViUnit::new(window, Shared(pages.clone()), config).unwrap();
    let unit = Arc::new(unit);
    let unmapped = unmapped_page(&*unit);
    let made = pages.state.lock().unwrap().0;
    pages.plain.lock().unwrap().push(made + 2);
    let refusal = Refusal {
        state: "Control.CmdBufEn",
        when: "enable",
    };
    let caches = &regs.caches;
    enable_beside_a_flush(
        t,
        unit,
        unmapped,
        caches,
        DOMAIN_ID,
        refusal,
        |flushed, ran| {
            match flushed {
                Ok(()) => {
                    // INVALIDATE_IOMMU_ALL and a COMPLETION_WAIT, then the flush's two.
                    assert_eq!(ran, [0x8, 0x1, 0x3, 0x1], "commands run");
                    "flush after enable"
                }
                Err(_) => {
                    assert_eq!(ran, [0x8, 0x1], "commands run: enable's alone");
                    "flush refused before enable"
                }
            }
        },
    );
}

enable_unit!(AmdViUnit<AmdWindow, Shared<MixedPages>>, iommu_engine::amdvi::Error);

/// A first `enable` beside a flush of a domain: the flush is refused before `enable` made the
/// command buffer (`UnexpectedState`, its gather kept, the retry completes), or runs after
/// `enable`'s INVALIDATE_IOMMU_ALL and completes.
#[test]
fn amdvi_enable_beside_a_flush() {
    let outcomes = ["flush refused before enable", "flush after enable"];
    run("amdvi_enable_beside_a_flush", &outcomes, |t| {
        on_a_thread(t, amd_enable_beside_a_flush_on)
    });
}
