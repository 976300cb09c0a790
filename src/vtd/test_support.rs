//! Test-only stand-ins: a page allocator over the host heap (physical address == host address)
//! and a small model of a VT-d register file that consumes invalidation descriptors.
//!
//! The model reads descriptors with its own decoding (type in 3:0 and 11:9, SW/IF in 5:4, status
//! address 63:2) rather than through `inv_desc`, so an encoder bug is not hidden by sharing code.

extern crate std;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use crate::mem::{Page, PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::vtd::regs::{self, Fsts, Gcmd, Gsts};

/// A flag shared between threads (`set`/`get` like a `Cell<bool>`).
#[derive(Default)]
pub struct Flag(AtomicBool);

impl Flag {
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Heap-backed allocator; a page's physical address is its host address.
#[derive(Default)]
pub struct TestAlloc {
    live: Mutex<Vec<(usize, usize)>>,
    pub fail: Flag,
    /// `sync_for_device` calls (cache cleans for a non-coherent walker).
    pub synced: AtomicUsize,
}

impl TestAlloc {
    pub fn live_pages(&self) -> usize {
        self.live.lock().unwrap().len()
    }
    /// Whether `pa` lies in a live page.
    pub fn is_live(&self, pa: PhysAddr) -> bool {
        self.phys_to_virt(pa).is_some()
    }
}

// SAFETY: pages come from `alloc_zeroed` with size alignment, are tracked until freed, and
// `phys_to_virt` answers only for tracked ranges.
unsafe impl PageAllocator for TestAlloc {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        if self.fail.get() {
            return None;
        }
        let size = 1usize << size_log2;
        let layout = Layout::from_size_align(size, size).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.live.lock().unwrap().push((p.as_ptr() as usize, size));
        Some(Page {
            pa: PhysAddr::new(p.as_ptr() as u64),
            va: p,
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let size = 1usize << size_log2;
        let addr = page.va.as_ptr() as usize;
        self.live.lock().unwrap().retain(|&(a, _)| a != addr);
        // SAFETY: the caller gives back a page `alloc(size_log2)` returned, with this layout.
        unsafe {
            dealloc(
                page.va.as_ptr(),
                Layout::from_size_align_unchecked(size, size),
            )
        }
    }

    fn sync_for_device(&self, _va: NonNull<u8>, _len: usize) {
        self.synced.fetch_add(1, Ordering::Relaxed);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let a = usize::try_from(pa.get()).ok()?;
        let live = self.live.lock().unwrap();
        live.iter()
            .find(|&&(base, size)| a >= base && a < base + size)?;
        NonNull::new(a as *mut u8)
    }
}

/// Fault-recording register offset the model advertises (QEMU's: FRO = 0x22).
pub const MODEL_FRO: usize = 0x220;
/// IOTLB register offset the model advertises (IRO = 0xf).
pub const MODEL_IRO: usize = 0xf0;

#[derive(Default)]
struct State {
    regs: HashMap<usize, u32>,
    last_gcmd: Option<u32>,
    freeze_gcmd: bool,
    freeze_commands: bool,
    stalled: bool,
    rate: u32,
    ite_on_device_tlb: bool,
    stuck_faults: bool,
    consumed: u64,
    /// Every descriptor consumed, in order.
    log: Vec<[u64; 4]>,
    /// Every register-based invalidation command (CCMD or IOTLB_REG value).
    reg_log: Vec<(usize, u64)>,
    /// Every GCMD write.
    gcmd_log: Vec<u32>,
}

/// A VT-d register file model.
pub struct Model {
    st: Mutex<State>,
}

impl Model {
    /// QEMU-like unit: `CAP` = QEMU's default with `NFR = nfr`, ECAP with QI and IRO = 0xf.
    pub fn with_nfr(nfr: u8) -> Self {
        let m = Model {
            st: Mutex::new(State {
                rate: 4,
                ..State::default()
            }),
        };
        let cap = 0x00d2_008c_222f_0606u64 | (nfr as u64) << 40;
        m.put64(regs::CAP_REG, cap);
        m.put64(regs::ECAP_REG, 0x00f0_0f5e);
        m
    }
    pub fn new() -> Self {
        Self::with_nfr(0)
    }
    /// A unit with the given `CAP` and `ECAP` (IRO and FRO should match `MODEL_IRO`/`MODEL_FRO`).
    pub fn with_caps(cap: u64, ecap: u64) -> Self {
        let m = Self::new();
        m.put64(regs::CAP_REG, cap);
        m.put64(regs::ECAP_REG, ecap);
        m
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Descriptors consumed so far, in order (words 2-3 zero for 128-bit queues).
    pub fn log(&self) -> Vec<[u64; 4]> {
        self.st().log.clone()
    }
    /// Forgets the descriptor, register-command and GCMD logs.
    pub fn clear_logs(&self) {
        let mut s = self.st();
        s.log.clear();
        s.reg_log.clear();
        s.gcmd_log.clear();
    }
    /// Register-based invalidation commands written so far: (register offset, value).
    pub fn reg_log(&self) -> Vec<(usize, u64)> {
        self.st().reg_log.clone()
    }
    /// GCMD values written so far.
    pub fn gcmd_log(&self) -> Vec<u32> {
        self.st().gcmd_log.clone()
    }

    fn get32(&self, off: usize) -> u32 {
        self.st().regs.get(&off).copied().unwrap_or(0)
    }
    fn put32(&self, off: usize, v: u32) {
        self.st().regs.insert(off, v);
    }
    fn get64(&self, off: usize) -> u64 {
        self.get32(off) as u64 | (self.get32(off + 4) as u64) << 32
    }
    fn put64(&self, off: usize, v: u64) {
        self.put32(off, v as u32);
        self.put32(off + 4, (v >> 32) as u32);
    }

    pub fn set_gsts(&self, s: Gsts) {
        self.put32(regs::GSTS_REG, s.bits());
    }
    pub fn last_gcmd(&self) -> Option<u32> {
        self.st().last_gcmd
    }
    /// GCMD writes are recorded but GSTS never follows.
    pub fn freeze_gcmd(&self, on: bool) {
        self.st().freeze_gcmd = on;
    }
    /// CCMD / IOTLB register invalidations never complete.
    pub fn freeze_commands(&self, on: bool) {
        self.st().freeze_commands = on;
    }
    /// The queue stops consuming descriptors.
    pub fn stall(&self, on: bool) {
        self.st().stalled = on;
    }
    /// Descriptors consumed per register read.
    pub fn set_rate(&self, rate: u32) {
        self.st().rate = rate;
    }
    /// A device-TLB descriptor raises ITE (and aborts the pending waits).
    pub fn ite_on_device_tlb(&self, on: bool) {
        self.st().ite_on_device_tlb = on;
    }
    /// Writing `F` to a fault record does not clear it.
    pub fn stuck_faults(&self, on: bool) {
        self.st().stuck_faults = on;
    }
    pub fn consumed(&self) -> u64 {
        self.st().consumed
    }
    pub fn raise_fsts(&self, bits: Fsts) {
        let v = self.get32(regs::FSTS_REG) | bits.bits();
        self.put32(regs::FSTS_REG, v);
    }
    /// Records a primary fault in register `index` and points `FSTS.FRI` at the first pending.
    pub fn inject_fault(&self, index: u16, lo: u64, hi: u64) {
        let off = regs::frcd_reg(MODEL_FRO, index);
        self.put64(off, lo);
        self.put64(off + 8, hi | 1 << 63);
        self.update_ppf();
    }
    fn nfr(&self) -> u16 {
        ((self.get64(regs::CAP_REG) >> 40) & 0xff) as u16
    }
    fn update_ppf(&self) {
        let first =
            (0..=self.nfr()).find(|&i| self.get32(regs::frcd_reg(MODEL_FRO, i) + 12) >> 31 != 0);
        let mut f = self.get32(regs::FSTS_REG) & !(Fsts::PPF.bits() | 0xff00);
        if let Some(i) = first {
            f |= Fsts::PPF.bits() | (i as u32) << 8;
        }
        self.put32(regs::FSTS_REG, f);
    }

    fn on_gcmd(&self, v: u32) {
        self.st().last_gcmd = Some(v);
        self.st().gcmd_log.push(v);
        if self.st().freeze_gcmd {
            return;
        }
        let old = Gsts::from_bits_retain(self.get32(regs::GSTS_REG));
        let persistent = Gcmd::TE | Gcmd::EAFL | Gcmd::QIE | Gcmd::IRE | Gcmd::CFI;
        // Status bits sit at the same positions as their command bits.
        let mut new =
            Gsts::from_bits_retain((old.bits() & !persistent.bits()) | (v & persistent.bits()));
        if v & Gcmd::SRTP.bits() != 0 {
            new |= Gsts::RTPS;
        }
        if v & Gcmd::SIRTP.bits() != 0 {
            new |= Gsts::IRTPS;
        }
        if v & Gcmd::WBF.bits() != 0 {
            new -= Gsts::WBFS;
        }
        if old.contains(Gsts::QIES) && !new.contains(Gsts::QIES) {
            self.put64(regs::IQH_REG, 0);
        }
        self.set_gsts(new);
    }

    fn on_command64(&self, off: usize, v: u64) {
        let frozen = self.st().freeze_commands;
        if v >> 63 != 0 {
            self.st().reg_log.push((off, v));
        }
        if off == regs::CCMD_REG && v >> 63 != 0 && !frozen {
            // Completed at the requested granularity: CAIG (60:59) = CIRG (62:61).
            let caig = (v >> 61) & 3;
            return self.put64(off, (v & !(1 << 63) & !(3 << 59)) | caig << 59);
        }
        if off == regs::iotlb_reg(MODEL_IRO) && v >> 63 != 0 && !frozen {
            let iaig = (v >> 60) & 3;
            return self.put64(off, (v & !(1 << 63) & !(3 << 57)) | iaig << 57);
        }
        self.put64(off, v);
    }

    /// Consumes up to `rate` descriptors, as hardware would between two register reads.
    fn step(&self) {
        let (rate, stalled) = {
            let s = self.st();
            (s.rate, s.stalled)
        };
        let qies = self.get32(regs::GSTS_REG) & Gsts::QIES.bits() != 0;
        let blocked = self.get32(regs::FSTS_REG) & (Fsts::IQE | Fsts::ITE).bits() != 0;
        if !qies || stalled || blocked {
            return;
        }
        for _ in 0..rate {
            if !self.consume_one() {
                break;
            }
        }
    }

    /// Processes the descriptor at IQH; false when there is nothing (more) to do.
    fn consume_one(&self) -> bool {
        let iqa = self.get64(regs::IQA_REG);
        let dw = (iqa >> 11) & 1;
        let entries = 1u64 << ((iqa & 7) + 8 - dw);
        let shift = 4 + dw;
        let head = self.get64(regs::IQH_REG) >> shift;
        let tail_reg = self.get64(regs::IQT_REG);
        if dw == 1 && tail_reg & 0x10 != 0 || (tail_reg >> shift) >= entries {
            self.raise_fsts(Fsts::IQE);
            return false;
        }
        if head == tail_reg >> shift {
            return false;
        }
        let base = (iqa & !0xfff) as usize + (head << shift) as usize;
        let words: [u64; 4] = core::array::from_fn(|i| {
            if i >= 2 && dw == 0 {
                return 0;
            }
            // SAFETY: the queue page comes from `TestAlloc`, whose physical addresses are host
            // addresses; the index is inside the 2^QS pages IQA describes.
            unsafe { core::ptr::read_volatile((base + 8 * i) as *const u64) }
        });
        let ty = (words[0] & 0xf) | ((words[0] >> 9) & 7) << 4;
        let valid_type = (1..=8).contains(&ty);
        let wait_ok = ty != 5 || words[0] & 0x30 != 0;
        if !valid_type || !wait_ok || words[2] != 0 || words[3] != 0 {
            self.raise_fsts(Fsts::IQE);
            return false;
        }
        if (ty == 3 || ty == 8) && self.st().ite_on_device_tlb {
            // Time-out: the waits behind it are aborted (no status writes) and fetching stops.
            self.raise_fsts(Fsts::ITE);
            self.put64(regs::IQH_REG, tail_reg);
            return false;
        }
        if ty == 5 {
            self.complete_wait(words[0], words[1]);
        }
        self.put64(regs::IQH_REG, ((head + 1) % entries) << shift);
        let mut s = self.st();
        s.consumed += 1;
        s.log.push(words);
        true
    }

    fn complete_wait(&self, qw0: u64, qw1: u64) {
        if qw0 & (1 << 5) != 0 {
            let addr = (qw1 & !3) as usize;
            // SAFETY: the status word lives in a `TestAlloc` page (physical == host address)
            // and is 4-byte aligned.
            let word = unsafe { &*(addr as *const AtomicU32) };
            word.store((qw0 >> 32) as u32, Ordering::Release);
        }
        if qw0 & (1 << 4) != 0 {
            let v = self.get32(regs::ICS_REG) | 1;
            self.put32(regs::ICS_REG, v);
        }
    }
}

impl RegisterWindow for Model {
    fn read32(&self, offset: usize) -> u32 {
        self.step();
        self.get32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        match offset {
            regs::GCMD_REG => self.on_gcmd(value),
            regs::FSTS_REG => {
                let rw1c = value & !(Fsts::PPF.bits() | 0xffff_ff00);
                let v = self.get32(offset) & !rw1c;
                self.put32(offset, v);
            }
            regs::ICS_REG => {
                let v = self.get32(offset) & !(value & 1);
                self.put32(offset, v);
            }
            o if (MODEL_FRO..MODEL_FRO + 16 * 256).contains(&o) && o % 16 == 12 => {
                if value >> 31 != 0 && !self.st().stuck_faults {
                    let v = self.get32(o) & !(1 << 31);
                    self.put32(o, v);
                }
                self.update_ppf();
            }
            _ => self.put32(offset, value),
        }
    }
    fn read64(&self, offset: usize) -> u64 {
        self.step();
        self.get64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        match offset {
            regs::CCMD_REG => self.on_command64(offset, value),
            o if o == regs::iotlb_reg(MODEL_IRO) => self.on_command64(offset, value),
            o if (MODEL_FRO..MODEL_FRO + 16 * 256).contains(&o) => {
                self.put32(o, value as u32);
                self.write32(o + 4, (value >> 32) as u32);
            }
            _ => self.put64(offset, value),
        }
    }
}
