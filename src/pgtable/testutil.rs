//! The allocator of the engine's and the IOASID layer's unit tests: the `sim` arena, so that
//! every test counts pages, catches double frees and records cache maintenance the same way as
//! the conformance suite does; the configurations and tables the engine's unit tests share;
//! and the hook that lets a test play hardware rewriting an entry.

extern crate std;

use super::amdvi_v1::{AmdV1, AmdV1Config};
use super::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use super::sync::{AtomicU64, Ordering};
use super::vtd_ss::{VtdSs, VtdSsConfig};
use super::{Format, InvalidationComplete, PageTable, Prot};
use crate::mem::WalkerCoherency;
use core::cell::{Cell, RefCell};
use std::vec::Vec;

pub(crate) use crate::sim::arena::Arena as TestAlloc;
use crate::sim::arena::ArenaConfig;

pub(crate) const K4: u64 = 1 << 12;
pub(crate) const M2: u64 = 1 << 21;
pub(crate) const G1: u64 = 1 << 30;
pub(crate) const RW: Prot = Prot::READ.union(Prot::WRITE);

/// What a gather's release asks for: no hardware walks the test tables.
pub(crate) fn done() -> InvalidationComplete {
    // SAFETY: no hardware walks the test tables.
    unsafe { InvalidationComplete::assume() }
}

/// VT-d second stage with 4 levels (AGAW 48) over 46 address bits, 2 MiB and 1 GiB pages,
/// no snoop control, no dirty tracking: the tests change a field with `..VTD_SS_48`.
pub(crate) const VTD_SS_48: VtdSsConfig = VtdSsConfig {
    agaw: 48,
    haw: 46,
    page_2m: true,
    page_1g: true,
    snoop: false,
    dirty_tracking: false,
};

/// Arm stage 2, 4 KiB granule, 40 bits in and out (start level 1: two concatenated tables),
/// blocks, write-back, FEAT_BBM level 2 (hitless splits and run breaks), no dirty tracking.
pub(crate) const ARM_S2_4K: ArmS2Config = ArmS2Config {
    granule_log2: 12,
    ias: 40,
    oas: 40,
    blocks: true,
    attributes: S2Attributes::WriteBack,
    dirty_tracking: false,
    bbml2: true,
};

/// AMD-Vi v1 with 48 bits in and out (4 levels), large pages (Next Level 7 runs), `FC`, no
/// dirty tracking.
pub(crate) const AMD_V1_48: AmdV1Config = AmdV1Config {
    ias: 48,
    oas: 48,
    large_pages: true,
    force_coherent: true,
    dirty_tracking: false,
};

/// A table of format `f` in a [`test_alloc`] arena of its own, walked coherently.
pub(crate) fn new_table<F: Format>(f: F) -> PageTable<F, TestAlloc> {
    PageTable::new(f, test_alloc(), WalkerCoherency::Coherent).unwrap()
}

/// [`VTD_SS_48`], with dirty tracking if `dirty`.
pub(crate) fn vtd_ss(dirty: bool) -> PageTable<VtdSs, TestAlloc> {
    let cfg = VtdSsConfig {
        dirty_tracking: dirty,
        ..VTD_SS_48
    };
    new_table(VtdSs::new(cfg).unwrap())
}

/// [`ARM_S2_4K`], with dirty tracking if `dirty`.
pub(crate) fn arm_s2_4k(dirty: bool) -> PageTable<ArmS2, TestAlloc> {
    let cfg = ArmS2Config {
        dirty_tracking: dirty,
        ..ARM_S2_4K
    };
    new_table(ArmS2::new(cfg).unwrap())
}

/// [`AMD_V1_48`].
pub(crate) fn amd_v1() -> PageTable<AmdV1, TestAlloc> {
    new_table(AmdV1::new(AMD_V1_48).unwrap())
}

/// A 16 MiB arena (4 MiB under Miri, which interprets every byte it zeroes) whose physical
/// addresses start at 1 GiB, so that PA != VA.
pub(crate) fn test_alloc() -> TestAlloc {
    TestAlloc::new(ArenaConfig {
        base_pa: 0x4000_0000,
        capacity: if cfg!(miri) { 4 << 20 } else { 16 << 20 },
    })
    .expect("host memory for the test arena")
}

std::thread_local! {
    /// The entry `keep_rewriting` names (its address; 0: none) and the bits it flips.
    static REWRITE: Cell<(usize, u64)> = const { Cell::new((0, 0)) };
}

/// Until `stop_rewriting`, every time this thread is about to compare-and-swap `slot`
/// (`table::race_window`), `bits` of it flip first: an entry that another agent keeps
/// rewriting (hardware toggling accessed state), so that the call's compare-and-swap keeps
/// failing and it gives up with `EntryUnstable` after `HW_UPDATE_RETRIES` attempts.
pub(crate) fn keep_rewriting(slot: &AtomicU64, bits: u64) {
    REWRITE.with(|r| r.set((core::ptr::from_ref(slot) as usize, bits)));
}

/// Ends [`keep_rewriting`].
pub(crate) fn stop_rewriting() {
    REWRITE.with(|r| r.set((0, 0)));
}

/// `table::race_window`'s hook: flips the bits `keep_rewriting` asked for if `slot` is its
/// entry.
pub(super) fn rewrite_if_asked(slot: &AtomicU64) {
    let (at, bits) = REWRITE.with(Cell::get);
    if at == core::ptr::from_ref(slot) as usize {
        slot.fetch_xor(bits, Ordering::AcqRel);
    }
}

/// What `with_other_cpu_at` asked for: the entry (its address; 0: none), the stores, as
/// (entry, value), and whether they were made.
#[derive(Default)]
struct OtherCpu {
    at: usize,
    stores: Vec<(*const AtomicU64, u64)>,
    made: bool,
}

std::thread_local! {
    static OTHER_CPU: RefCell<OtherCpu> = const {
        RefCell::new(OtherCpu {
            at: 0,
            stores: Vec::new(),
            made: false,
        })
    };
}

/// Runs `f`; the first time this thread is about to break the run over the entry at `slot`
/// or to compare-and-swap it during `f` (`table::race_window`), another CPU is taken to have
/// just made its `stores` first (each a release store of the value into the entry): a break of a run that another unmap of it completes between this call's two
/// looks. Returns what `f` returned and whether the stores were made.
///
/// # Safety
///
/// Each entry in `stores` is one of a table that stays live while `f` runs.
pub(crate) unsafe fn with_other_cpu_at<R>(
    slot: usize,
    stores: &[(*const AtomicU64, u64)],
    f: impl FnOnce() -> R,
) -> (R, bool) {
    OTHER_CPU.with(|o| {
        *o.borrow_mut() = OtherCpu {
            at: slot,
            stores: stores.to_vec(),
            made: false,
        }
    });
    let r = f();
    let made = OTHER_CPU.with(|o| core::mem::take(&mut *o.borrow_mut()).made);
    (r, made)
}

/// `table::race_window`'s second hook: makes the stores `with_other_cpu_at` asked for, once,
/// if `slot` is its entry.
pub(super) fn other_cpu_if_asked(slot: &AtomicU64) {
    let stores = OTHER_CPU.with(|o| {
        let mut o = o.borrow_mut();
        if o.at == 0 || o.at != core::ptr::from_ref(slot) as usize || o.made {
            return Vec::new();
        }
        o.made = true;
        core::mem::take(&mut o.stores)
    });
    for (entry, value) in stores {
        // SAFETY: the entries stay live while `with_other_cpu_at`'s `f` runs (its contract),
        // and only then does this hook find them (it empties the list when `f` returns).
        unsafe { &*entry }.store(value, Ordering::Release);
    }
}
