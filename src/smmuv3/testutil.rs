//! Test doubles: a Vec-backed page allocator (PA == CPU address) and a model SMMUv3 register
//! file with a command-queue consumer and an event-queue producer.
//!
//! The model decodes queue memory with its own constants from IHI 0070 G.b (§3.5 queues, §4
//! commands, §6.3 registers), not the driver's helpers, so an encoder bug shows up as a
//! disagreement instead of hiding behind shared code.

extern crate std;

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::vec::Vec;

use core::ptr::NonNull;

use crate::mem::{Page, PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;

/// A `Cell` that is `Sync` (the unit under test is shared across threads).
#[derive(Default, Debug)]
pub struct Cell<T: Copy>(Mutex<T>);

impl<T: Copy> Cell<T> {
    pub fn get(&self) -> T {
        *self.0.lock().unwrap()
    }
    pub fn set(&self, v: T) {
        *self.0.lock().unwrap() = v;
    }
}

/// A `RefCell` that is `Sync`; a nested borrow deadlocks where `RefCell` would panic.
#[derive(Default, Debug)]
pub struct RefCell<T>(Mutex<T>);

impl<T> RefCell<T> {
    pub fn borrow(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
    pub fn borrow_mut(&self) -> MutexGuard<'_, T> {
        self.0.lock().unwrap()
    }
}

/// Heap pages whose physical address is their CPU address.
#[derive(Default)]
pub struct VecAllocator {
    live: RefCell<Vec<(usize, usize)>>,
    pub syncs: Cell<usize>,
    pub fail: Cell<bool>,
    /// Pages handed back, in order.
    pub frees: Cell<usize>,
    /// Every `sync_for_cpu` call, as (address, length), in order.
    pub cpu_syncs: RefCell<Vec<(usize, usize)>>,
    /// A live page `phys_to_virt` pretends not to know (0: none), as an embedder's allocator
    /// that lost track of it would.
    pub unknown: Cell<usize>,
}

impl VecAllocator {
    pub fn live_pages(&self) -> usize {
        self.live.borrow().len()
    }

    /// The address of the page allocated last of those still live.
    pub fn newest_page(&self) -> usize {
        self.live.borrow().last().map_or(0, |&(a, _)| a)
    }
}

// SAFETY: pages are zeroed `alloc_zeroed` blocks aligned to their size, owned until `free`;
// PA == VA so `phys_to_virt` is the identity within live pages.
unsafe impl PageAllocator for VecAllocator {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        if self.fail.get() {
            return None;
        }
        let size = 1usize << size_log2;
        let layout = Layout::from_size_align(size, size).ok()?;
        // SAFETY: the layout has a non-zero size.
        let p = NonNull::new(unsafe { alloc_zeroed(layout) })?;
        self.live.borrow_mut().push((p.as_ptr() as usize, size));
        Some(Page {
            pa: PhysAddr::new(p.as_ptr() as u64),
            va: p,
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let size = 1usize << size_log2;
        let addr = page.va.as_ptr() as usize;
        let mut live = self.live.borrow_mut();
        let pos = live
            .iter()
            .position(|&(a, s)| a == addr && s == size)
            .expect("double free");
        live.swap_remove(pos);
        self.frees.set(self.frees.get() + 1);
        // SAFETY: the block was allocated with this layout and is freed once.
        unsafe {
            dealloc(
                page.va.as_ptr(),
                Layout::from_size_align(size, size).unwrap(),
            )
        }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let a = pa.get() as usize;
        let live = self.live.borrow();
        live.iter()
            .find(|&&(b, s)| a >= b && a < b + s && b != self.unknown.get())
            .and_then(|_| NonNull::new(a as *mut u8))
    }

    fn sync_for_device(&self, _va: NonNull<u8>, _len: usize) {
        self.syncs.set(self.syncs.get() + 1);
    }

    fn sync_for_cpu(&self, va: NonNull<u8>, len: usize) {
        self.cpu_syncs
            .borrow_mut()
            .push((va.as_ptr() as usize, len));
    }
}

// Offsets and fields, from the spec, independent of `regs.rs`.
const CR0: usize = 0x20;
const CR0ACK: usize = 0x24;
const GBPA: usize = 0x44;
const IRQ_CTRL: usize = 0x50;
const IRQ_CTRLACK: usize = 0x54;
const GERROR: usize = 0x60;
const GERRORN: usize = 0x64;
const CMDQ_BASE: usize = 0x90;
const CMDQ_PROD: usize = 0x98;
const CMDQ_CONS: usize = 0x9c;
const EVENTQ_BASE: usize = 0xa0;
const EVENTQ_PROD: usize = 0x100a8;
const EVENTQ_CONS: usize = 0x100ac;

/// A model SMMUv3.
#[derive(Default)]
pub struct ModelSmmu {
    regs32: RefCell<HashMap<usize, u32>>,
    regs64: RefCell<HashMap<usize, u64>>,
    cr0_stuck: Cell<bool>,
    gbpa_stuck: Cell<bool>,
    /// While set the command consumer does nothing.
    pub stalled: Cell<bool>,
    /// Commands consumed per PROD write or CONS read; 0 means all.
    pub consume_batch: Cell<usize>,
    /// Every command consumed and executed, in order.
    pub executed: RefCell<Vec<[u64; 2]>>,
    /// CMD_ATC_INV and CMD_PRI_RESP consumed while CR0.SMMUEN = 0: ignored (IHI 0070 G.b
    /// §6.3.9.6, §4.5), not in `executed`.
    pub ignored: RefCell<Vec<[u64; 2]>>,
    /// CMD_SYNCs that signalled SEV.
    pub sevs: Cell<usize>,
    /// MSI writes performed.
    pub msis: Cell<usize>,
    /// Writes to CMDQ_PROD.
    pub prod_writes: Cell<usize>,
    /// Every register write, in order: (offset, value).
    pub writes: RefCell<Vec<(usize, u64)>>,
}

impl ModelSmmu {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_cr0_stuck(&self, v: bool) {
        self.cr0_stuck.set(v)
    }

    pub fn set_gbpa_stuck(&self, v: bool) {
        self.gbpa_stuck.set(v)
    }

    pub fn set32(&self, off: usize, v: u32) {
        self.regs32.borrow_mut().insert(off, v);
    }

    fn get32(&self, off: usize) -> u32 {
        *self.regs32.borrow().get(&off).unwrap_or(&0)
    }

    fn get64(&self, off: usize) -> u64 {
        *self.regs64.borrow().get(&off).unwrap_or(&0)
    }

    fn cmdq_error_pending(&self) -> bool {
        (self.get32(GERROR) ^ self.get32(GERRORN)) & 1 != 0
    }

    /// Consumes commands between CONS and PROD, as the hardware would.
    fn run_cmdq(&self) {
        let base = self.get64(CMDQ_BASE);
        let log2 = (base & 0x1f) as u32;
        let addr = base & 0x000f_ffff_ffff_ffe0;
        // CR0.CMDQEN (bit 3) gates the consumer, as on hardware.
        if addr == 0 || self.stalled.get() || self.get32(CR0) & (1 << 3) == 0 {
            return;
        }
        let mask = (2u32 << log2) - 1;
        let mut budget = match self.consume_batch.get() {
            0 => usize::MAX,
            n => n,
        };
        while budget > 0 && !self.cmdq_error_pending() {
            let prod = self.get32(CMDQ_PROD) & mask;
            let cons = self.get32(CMDQ_CONS) & mask;
            if prod == cons {
                break;
            }
            let index = cons & ((1 << log2) - 1);
            let p = (addr + 16 * index as u64) as *const u64;
            // SAFETY: PA == VA for VecAllocator pages; the queue lies inside its page.
            let cmd = unsafe { [p.read_volatile(), p.add(1).read_volatile()] };
            if !self.execute(cmd) {
                // CERROR_ILL: CONS stays at the command, ERR = 1, GERROR.CMDQ_ERR toggles.
                self.set32(CMDQ_CONS, cons | (1 << 24));
                self.set32(GERROR, self.get32(GERROR) ^ 1);
                break;
            }
            self.set32(CMDQ_CONS, (cons + 1) & mask);
            budget -= 1;
        }
    }

    fn execute(&self, cmd: [u64; 2]) -> bool {
        let op = (cmd[0] & 0xff) as u8;
        let known = matches!(
            op,
            0x01..=0x06 | 0x10..=0x13 | 0x20 | 0x28 | 0x2a | 0x30 | 0x40 | 0x41 | 0x44..=0x46
        );
        if !known {
            return false;
        }
        if op == 0x46 {
            let cs = (cmd[0] >> 12) & 3;
            let msi = cmd[1] & 0x000f_ffff_ffff_fffc;
            // CS = SIG_IRQ with an address: the MSI write (IHI 0070 G.b §4.7.3).
            if cs == 1 && msi != 0 {
                // SAFETY: the MSI target is a live VecAllocator page (PA == VA).
                unsafe { (msi as *mut u32).write_volatile((cmd[0] >> 32) as u32) };
                self.msis.set(self.msis.get() + 1);
            } else if cs == 2 {
                self.sevs.set(self.sevs.get() + 1);
            }
        }
        // The ATS interface is not operational while SMMUEN (CR0 bit 0) is clear.
        if matches!(op, 0x40 | 0x41) && self.get32(CR0) & 1 == 0 {
            self.ignored.borrow_mut().push(cmd);
            return true;
        }
        self.executed.borrow_mut().push(cmd);
        true
    }

    /// Writes an event record at EVENTQ_PROD, or flags an overflow if the queue is full.
    pub fn push_event(&self, record: [u64; 4]) {
        let base = self.get64(EVENTQ_BASE);
        let log2 = (base & 0x1f) as u32;
        let addr = base & 0x000f_ffff_ffff_ffe0;
        let mask = (2u32 << log2) - 1;
        let prod_raw = self.get32(EVENTQ_PROD);
        let prod = prod_raw & mask;
        let cons = self.get32(EVENTQ_CONS) & mask;
        let full = (prod ^ cons) == 1 << log2;
        if full {
            // OVFLG toggles once per overflow episode: only while it equals CONS.OVACKFLG.
            let acked = (prod_raw ^ self.get32(EVENTQ_CONS)) >> 31 == 0;
            if acked {
                self.set32(EVENTQ_PROD, prod_raw ^ (1 << 31));
            }
            return;
        }
        let index = prod & ((1 << log2) - 1);
        let p = (addr + 32 * index as u64) as *mut u64;
        for (i, w) in record.iter().enumerate() {
            // SAFETY: PA == VA; the record lies inside the queue page.
            unsafe { p.add(i).write_volatile(*w) };
        }
        self.set32(EVENTQ_PROD, (prod_raw & (1 << 31)) | ((prod + 1) & mask));
    }
}

impl RegisterWindow for ModelSmmu {
    fn read32(&self, offset: usize) -> u32 {
        if offset == CMDQ_CONS {
            self.run_cmdq();
        }
        self.get32(offset)
    }

    fn write32(&self, offset: usize, value: u32) {
        self.writes.borrow_mut().push((offset, value.into()));
        match offset {
            CR0 => {
                self.set32(CR0, value);
                if !self.cr0_stuck.get() {
                    self.set32(CR0ACK, value);
                }
            }
            IRQ_CTRL => {
                self.set32(IRQ_CTRL, value);
                self.set32(IRQ_CTRLACK, value);
            }
            GBPA => {
                let v = if self.gbpa_stuck.get() {
                    value
                } else {
                    value & !(1 << 31)
                };
                self.set32(GBPA, v);
            }
            CMDQ_PROD => {
                self.set32(CMDQ_PROD, value);
                self.prod_writes.set(self.prod_writes.get() + 1);
                self.run_cmdq();
            }
            GERRORN => {
                self.set32(GERRORN, value);
                // Acknowledged: the consumer resumes at CONS with ERR cleared.
                if !self.cmdq_error_pending() {
                    self.set32(CMDQ_CONS, self.get32(CMDQ_CONS) & !(0x7f << 24));
                    self.run_cmdq();
                }
            }
            _ => self.set32(offset, value),
        }
    }

    fn read64(&self, offset: usize) -> u64 {
        self.get64(offset)
    }

    fn write64(&self, offset: usize, value: u64) {
        self.writes.borrow_mut().push((offset, value));
        self.regs64.borrow_mut().insert(offset, value);
    }
}
