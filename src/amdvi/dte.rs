//! Device Table Entry: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.2.2.1 "Device Table Entry Format" (256 bits), and the order in which a
//! live entry is changed (§2.2.2 "Device Table": the unit may read an entry at any time, in
//! parts; software changes it, then issues INVALIDATE_DEVTAB_ENTRY and waits).
//!
//! Fields (bit numbers within the 256-bit entry; checked against Linux `amd_iommu_types.h`
//! `DEV_ENTRY_*`/`DTE_*` and QEMU `amd_iommu.h`, facts only):
//!
//! | bits | field |
//! |---|---|
//! | 0 | `V`: the entry is valid (clear: the unit does not translate the device's DMA) |
//! | 1 | `TV`: the translation fields are valid |
//! | 8:7 | `HAD`: the unit sets A and D in host (v1) leaves (11b; needs EFR `HASup`/`HDSup`) |
//! | 11:9 | `Mode`: levels of the host (v1) table, 1-6; 0 = no translation (IR/IW still apply) |
//! | 51:12 | `Host Page Table Root Pointer` |
//! | 54 | `GIoV`: requests without a PASID are translated as PASID 0's (through the GCR3 table) |
//! | 55 | `GV`: PASID-tagged requests are translated through the GCR3 table |
//! | 57:56 | `GLX`: GCR3 table levels - 1 |
//! | 60:58, 95:80, 127:107 | `GCR3 Table Root Pointer` bits 14:12, 30:15, 51:31 |
//! | 61, 62 | `IR`, `IW`: read and write permission of the device's DMA |
//! | 79:64 | `DomainID`: the tag of the device's cached translations |
//! | 96 | `I`: the device's IOTLB (ATS) may cache translations |
//! | 128 | `IV`: interrupt map valid |
//! | 189:188 | `IntCtl`: 00b fixed and arbitrated interrupts are target aborted |
//! | 184-186, 190, 191 | `InitPass`, `EIntPass`, `NMIPass`, `Lint0Pass`, `Lint1Pass` |
//!
//! Interrupt remapping is not in scope: every entry has `IV` set, `IntCtl` = 00b and no pass
//! bit, so that the device's interrupts are target aborted (with `IV` clear they would pass
//! unremapped).
//!
//! **Blocking.** `V` = 1, `TV` = 1, `Mode` = 0, `IR` = `IW` = 0: no translation and no
//! permission, every DMA is refused (an entry with `V` clear would let DMA through untranslated).
//!
//! **Changing a live entry** ([`write_live`]). The unit reads the whole 256-bit entry in one
//! transaction (so Linux's `update_dte256` comment, 2024; the spec's own sentence was not
//! checked here), while the processor stores at most 128 bits at once: software writes each
//! half (quadwords 0-1 and 2-3) with one 128-bit store, and a read between the two stores sees
//! one half old and the other new. The order below is safe whether the unit reads the entry
//! whole or as two halves at times of its own. A half is stored with `CMPXCHG16B` (x86-64;
//! [`Store128`] is the proof that the processor has it), never as two 64-bit stores: with
//! those, a read between them would pair one domain's root with another's `DomainID`
//! unless a blocking state came first. Everything the crate translates with lives in the
//! lower half (`V`, `TV`, `Mode`, root, `IR`/`IW`, `GV`/`GLX`/GCR3 root, `DomainID`, `I`);
//! the upper half holds only the interrupt fields, which stay blocking. So:
//! - only the lower half changes (attach, detach, replace between domains, a new root): one
//!   store, hitless -- the unit sees the old entry or the new one, never a blend;
//! - the upper half changes too (only an entry written through the raw
//!   [`set_device_entry`](super::AmdViUnit::set_device_entry) can have another upper half):
//!   the lower half is first made blocking (unless it is) and the unit made to forget the old
//!   entry (INVALIDATE_DEVTAB_ENTRY and a completion wait: no read of the old lower half is in
//!   flight after it), then the upper half is stored and the unit made to forget again (no
//!   read of the old upper half in flight), then the new lower half. A read pairing halves
//!   of two different entries so always has a blocking lower half. If that second forget
//!   fails, the old upper half is put back before the error is returned: a retry would
//!   otherwise find the new upper half in place and publish the lower half behind no
//!   confirmed forget.
//!
//! Each change is followed by INVALIDATE_DEVTAB_ENTRY and a completion wait (the unit caches
//! entries), which the caller issues.

use core::sync::atomic::{AtomicU64, Ordering};

use super::Error;
use crate::mem::PhysAddr;

/// `V`.
pub const V: u64 = 1 << 0;
/// `TV`.
pub const TV: u64 = 1 << 1;
/// `HAD`, quadword 0 bits 8:7: 11b, host access and dirty updates.
pub const HAD: u64 = 3 << 7;
/// `Mode`, quadword 0 bits 11:9.
pub const MODE_SHIFT: u32 = 9;
/// `Mode` mask.
pub const MODE_MASK: u64 = 0x7 << MODE_SHIFT;
/// `Host Page Table Root Pointer`, quadword 0 bits 51:12.
pub const ROOT_MASK: u64 = 0x000F_FFFF_FFFF_F000;
/// `GIoV`, quadword 0 bit 54.
pub const GIOV: u64 = 1 << 54;
/// `GV`, quadword 0 bit 55.
pub const GV: u64 = 1 << 55;
/// `GLX`, quadword 0 bits 57:56.
pub const GLX_SHIFT: u32 = 56;
/// `GCR3 Table Root Pointer[14:12]`, quadword 0 bits 60:58.
pub const GCR3_A_SHIFT: u32 = 58;
/// `IR`.
pub const IR: u64 = 1 << 61;
/// `IW`.
pub const IW: u64 = 1 << 62;
/// `DomainID`, quadword 1 bits 15:0.
pub const DOMAIN_ID_MASK: u64 = 0xFFFF;
/// `GCR3 Table Root Pointer[30:15]`, quadword 1 bits 31:16.
pub const GCR3_B_SHIFT: u32 = 16;
/// `I` (IOTLB enable), quadword 1 bit 32.
pub const I: u64 = 1 << 32;
/// `GCR3 Table Root Pointer[51:31]`, quadword 1 bits 63:43.
pub const GCR3_C_SHIFT: u32 = 43;
/// `IV`, quadword 2 bit 0.
pub const IV: u64 = 1 << 0;
/// `IntCtl`, quadword 2 bits 61:60.
pub const INT_CTL_MASK: u64 = 0x3 << 60;

/// A 256-bit device table entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceTableEntry(pub [u64; 4]);

impl DeviceTableEntry {
    /// The blocking entry (see the module): DMA refused, interrupts target aborted.
    pub const BLOCKED: Self = Self([V | TV, 0, IV, 0]);

    /// An entry translating through a host (v1) table of `levels` levels (1..=6) at `root`,
    /// tagged `domain_id`, with read and write permission; `ats`: the device's IOTLB may cache
    /// translations (`I`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for levels outside 1..=6 or a root that is not a 4 KiB
    /// aligned address below 2^52.
    pub fn translated(
        domain_id: u16,
        root: PhysAddr,
        levels: u32,
        ats: bool,
    ) -> Result<Self, Error> {
        if !(1..=6).contains(&levels) {
            return Err(Error::InvalidArgument {
                what: "DTE Mode (1..=6 levels)",
                value: u64::from(levels),
            });
        }
        if root.get() & !ROOT_MASK != 0 {
            return Err(Error::InvalidArgument {
                what: "DTE Host Page Table Root Pointer",
                value: root.get(),
            });
        }
        let q0 = V | TV | u64::from(levels) << MODE_SHIFT | root.get() | IR | IW;
        let q1 = u64::from(domain_id) | if ats { I } else { 0 };
        Ok(Self([q0, q1, Self::BLOCKED.0[2], 0]))
    }

    /// An entry translating only through the one-level GCR3 table at `gcr3` (`GV`, `GLX` 0):
    /// `Mode` 0, so that the guest (v2) tables' outputs are system physical addresses (with a
    /// host table they would be guest physical addresses, translated again: nesting), and
    /// `GIoV`, so that requests without a PASID are translated through PASID 0's entry, which
    /// the driver leaves invalid: they fault instead of passing untranslated (`Mode` 0 with
    /// `IR`/`IW` would let them through). Only on a unit with EFR `GIoSup`: one without it
    /// ignores `GIoV` and passes them untranslated, so the driver builds this entry only when
    /// the unit reports both `GTSup` and `GIoSup`. `DomainID` tags the PASIDs' cached
    /// translations.
    ///
    /// # Errors
    /// As [`with_gcr3`](Self::with_gcr3).
    pub fn guest(domain_id: u16, gcr3: PhysAddr, ats: bool) -> Result<Self, Error> {
        let q0 = V | TV | IR | IW | GIOV;
        let q1 = u64::from(domain_id) | if ats { I } else { 0 };
        Self([q0, q1, Self::BLOCKED.0[2], 0]).with_gcr3(gcr3, 0)
    }

    /// This entry with a GCR3 table at `gcr3` of `glx + 1` levels: requests with a PASID are
    /// translated through the guest table its entry names (`GV`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a misaligned or too high address or `glx` above 2.
    pub fn with_gcr3(mut self, gcr3: PhysAddr, glx: u32) -> Result<Self, Error> {
        if gcr3.get() & !ROOT_MASK != 0 || glx > 2 {
            return Err(Error::InvalidArgument {
                what: "DTE GCR3 Table Root Pointer / GLX",
                value: gcr3.get() | u64::from(glx),
            });
        }
        let p = gcr3.get();
        self.0[0] |= GV | u64::from(glx) << GLX_SHIFT | ((p >> 12) & 0x7) << GCR3_A_SHIFT;
        self.0[1] |= ((p >> 15) & 0xFFFF) << GCR3_B_SHIFT | ((p >> 31) & 0x1F_FFFF) << GCR3_C_SHIFT;
        Ok(self)
    }

    /// This entry with `HAD` 11b (`on`) or 00b: whether the unit sets `D` in the host table's
    /// leaves it writes through.
    pub const fn with_had(mut self, on: bool) -> Self {
        self.0[0] &= !HAD;
        if on {
            self.0[0] |= HAD;
        }
        self
    }

    /// `Mode`.
    pub const fn mode(&self) -> u32 {
        ((self.0[0] & MODE_MASK) >> MODE_SHIFT) as u32
    }

    /// `Host Page Table Root Pointer`.
    pub const fn root(&self) -> PhysAddr {
        PhysAddr::new(self.0[0] & ROOT_MASK)
    }

    /// `DomainID`.
    pub const fn domain_id(&self) -> u16 {
        (self.0[1] & DOMAIN_ID_MASK) as u16
    }

    /// The GCR3 table root, if `GV`.
    pub const fn gcr3(&self) -> Option<PhysAddr> {
        if self.0[0] & GV == 0 {
            return None;
        }
        let a = (self.0[0] >> GCR3_A_SHIFT) & 0x7;
        let b = (self.0[1] >> GCR3_B_SHIFT) & 0xFFFF;
        let c = (self.0[1] >> GCR3_C_SHIFT) & 0x1F_FFFF;
        Some(PhysAddr::new(a << 12 | b << 15 | c << 31))
    }

    /// Whether the entry lets no DMA through and makes the unit walk nothing: valid,
    /// translation valid, `Mode` 0, no permission, no GCR3 table. (An entry with a table but no
    /// permission is not blocking in this sense: the unit may still walk the table and cache
    /// what it finds under the entry's `DomainID`.)
    pub const fn blocks_dma(&self) -> bool {
        let q0 = self.0[0];
        q0 & (V | TV | MODE_MASK | IR | IW | GV) == V | TV
    }
}

/// The memory of one live entry: 32 bytes, 32-byte aligned (a 128-bit store needs 16), read
/// by the unit whole, written by software in two 128-bit halves.
#[repr(C, align(32))]
#[derive(Debug, Default)]
pub struct DteSlot(pub [AtomicU64; 4]);

impl DteSlot {
    /// A slot holding `e` (tests, and the device table's initial fill before the unit sees it).
    pub fn new(e: DeviceTableEntry) -> Self {
        Self(e.0.map(AtomicU64::new))
    }

    /// The entry as it is now.
    pub fn load(&self) -> DeviceTableEntry {
        DeviceTableEntry(core::array::from_fn(|i| self.0[i].load(Ordering::Relaxed)))
    }
}

/// Proof that this processor implements `CMPXCHG16B` (`CPUID.01H:ECX.CX16`), the 128-bit
/// atomic store [`write_live`] needs. Every processor with an AMD IOMMU has it (AMD Family 10h
/// and later); the unit checks once when it is created and refuses to start without it.
#[derive(Clone, Copy, Debug)]
pub struct Store128(Cx16);

#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy, Debug)]
struct Cx16;

/// No 128-bit store on this architecture: the proof cannot be built.
#[cfg(not(target_arch = "x86_64"))]
#[derive(Clone, Copy, Debug)]
enum Cx16 {}

impl Store128 {
    /// The proof, if the processor has `CMPXCHG16B`.
    pub fn detect() -> Option<Self> {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        {
            // SAFETY: CPUID leaf 1 exists on every x86-64 processor; reading it has no effect.
            #[allow(unused_unsafe)]
            let ecx = unsafe { core::arch::x86_64::__cpuid(1) }.ecx;
            (ecx & 1 << 13 != 0).then_some(Self(Cx16))
        }
        // Miri interprets the 128-bit compare-exchange but not CPUID.
        #[cfg(all(target_arch = "x86_64", miri))]
        {
            Some(Self(Cx16))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            None
        }
    }

    /// Stores `[lo, hi]` into quadwords `2 * half` and `2 * half + 1` of `slot` as one 128-bit
    /// atomic store (release: whatever the half points at is written first).
    fn store(self, slot: &DteSlot, half: usize, lo: u64, hi: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let q = &slot.0[2 * half..2 * half + 2];
            let dst = q.as_ptr().cast::<u128>().cast_mut();
            // Only the crate writes entries, under the unit's configuration lock: the current
            // value read here is what the exchange finds, so it succeeds the first time.
            let mut cur = u128::from(q[0].load(Ordering::Relaxed))
                | u128::from(q[1].load(Ordering::Relaxed)) << 64;
            let new = u128::from(lo) | u128::from(hi) << 64;
            loop {
                // SAFETY: `dst` is 16-byte aligned (the slot is 32-byte aligned, `half` is 0 or
                // 1) and valid for 16 bytes of the slot, which is only accessed atomically;
                // `self` proves the processor implements CMPXCHG16B.
                let seen = unsafe { cmpxchg16b(dst, cur, new) };
                if seen == cur {
                    return;
                }
                cur = seen;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (slot, half, lo, hi);
            match self.0 {}
        }
    }
}

/// One `LOCK CMPXCHG16B`: the value found at `dst` (the store happened iff it equals `old`).
/// Inline assembly, not `core::arch::x86_64::cmpxchg16b`: that one becomes a call to
/// libatomic's `__atomic_compare_exchange_16` wherever it is not inlined into code compiled
/// with the feature, and neither a kernel nor firmware links libatomic.
///
/// # Safety
/// `dst` is 16-byte aligned and valid for reads and writes of 16 bytes, accessed only
/// atomically, and the processor implements `CMPXCHG16B`.
#[cfg(all(target_arch = "x86_64", not(miri)))]
unsafe fn cmpxchg16b(dst: *mut u128, old: u128, new: u128) -> u128 {
    let (lo, hi): (u64, u64);
    // SAFETY: the caller's contract; RBX is reserved by the compiler, so the new value's low
    // half is swapped into it around the instruction and RBX restored. A locked instruction
    // is a full barrier (at least the release the caller needs).
    unsafe {
        core::arch::asm!(
            "xchg {new_lo}, rbx",
            "lock cmpxchg16b xmmword ptr [{dst}]",
            "mov rbx, {new_lo}",
            dst = in(reg) dst,
            new_lo = inout(reg) new as u64 => _,
            in("rcx") (new >> 64) as u64,
            inout("rax") old as u64 => lo,
            inout("rdx") (old >> 64) as u64 => hi,
            options(nostack),
        );
    }
    u128::from(lo) | u128::from(hi) << 64
}

/// Miri: the intrinsic, which it interprets (no inline assembly there).
///
/// # Safety
/// As the native version.
#[cfg(all(target_arch = "x86_64", miri))]
unsafe fn cmpxchg16b(dst: *mut u128, old: u128, new: u128) -> u128 {
    // SAFETY: the caller's contract is the intrinsic's.
    unsafe { core::arch::x86_64::cmpxchg16b(dst, old, new, Ordering::AcqRel, Ordering::Acquire) }
}

/// Changes the live entry `slot` to `new` in the order of the module documentation, each half
/// with one 128-bit store, calling `stored(half)` after each store (a non-coherent unit's
/// caller cleans the half; tests record the states). `forget` makes the unit drop what it read
/// of the entry (the invalidation and completion wait); it is called only when the upper half
/// changes: after the lower half was made blocking, and after the upper half was stored.
/// Returns the number of stores.
///
/// # Errors
/// `forget`'s error, with the entry blocking (its lower half) and its upper half the old one
/// (so that a call again stores the new upper half and forgets behind it): call again.
pub fn write_live<E>(
    cx16: Store128,
    slot: &DteSlot,
    new: &DeviceTableEntry,
    mut stored: impl FnMut(usize),
    mut forget: impl FnMut() -> Result<(), E>,
) -> Result<usize, E> {
    let old = slot.load().0;
    let mut n = 0;
    let mut put = |half: usize, lo: u64, hi: u64| {
        cx16.store(slot, half, lo, hi);
        stored(half);
        n += 1;
    };
    if old[2..] != new.0[2..] {
        let old_hi = [old[2], old[3]];
        if !DeviceTableEntry(old).blocks_dma() {
            let b = DeviceTableEntry::BLOCKED.0;
            put(0, b[0], b[1]);
        }
        forget()?;
        put(1, new.0[2], new.0[3]);
        if let Err(e) = forget() {
            // Not confirmed: a read of the old upper half may still be under way. A retry
            // would find the new upper half in place and publish the lower half with no
            // forget behind it, so the old upper half goes back (the lower half blocks):
            // the retry stores the new one again and forgets after it.
            put(1, old_hi[0], old_hi[1]);
            return Err(e);
        }
    }
    if slot.load().0[..2] != new.0[..2] {
        put(0, new.0[0], new.0[1]);
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    use core::cell::RefCell;
    use std::vec::Vec;

    fn cx16() -> Store128 {
        Store128::detect().expect("the test host implements CMPXCHG16B")
    }

    /// Writes `new` over `old`; returns the slot's states after each store, in epochs (a
    /// `forget` ends one: the unit reads nothing across it) and the store count.
    fn epochs(old: DeviceTableEntry, new: DeviceTableEntry) -> (Vec<Vec<[u64; 4]>>, usize) {
        let s = DteSlot::new(old);
        let epochs = RefCell::new(std::vec![std::vec![old.0]]);
        let n = write_live(
            cx16(),
            &s,
            &new,
            |_| epochs.borrow_mut().last_mut().unwrap().push(s.load().0),
            || {
                epochs.borrow_mut().push(std::vec![s.load().0]);
                Ok::<(), ()>(())
            },
        )
        .unwrap();
        assert_eq!(s.load(), new);
        (epochs.into_inner(), n)
    }

    /// The states in order, epochs joined.
    fn states(old: DeviceTableEntry, new: DeviceTableEntry) -> Vec<[u64; 4]> {
        epochs(old, new).0.concat()
    }

    /// Every entry the unit can read while `old` becomes `new` -- each 128-bit half taken
    /// whole, the two at any times within one epoch -- is old, new, or blocking. Returns the
    /// store count.
    fn check_order(old: DeviceTableEntry, new: DeviceTableEntry) -> usize {
        let (epochs, n) = epochs(old, new);
        for epoch in &epochs {
            for lo in epoch {
                for hi in epoch {
                    let seen = [lo[0], lo[1], hi[2], hi[3]];
                    assert!(
                        seen == old.0 || seen == new.0 || DeviceTableEntry(seen).blocks_dma(),
                        "unsafe read {seen:x?} between {old:x?} and {new:x?}"
                    );
                }
            }
        }
        n
    }

    #[test]
    fn live_updates_pass_only_through_safe_states() {
        let a = DeviceTableEntry::translated(1, PhysAddr::new(0x10_0000), 4, false).unwrap();
        let b = DeviceTableEntry::translated(2, PhysAddr::new(0x20_0000), 3, true).unwrap();
        let a2 = DeviceTableEntry::translated(1, PhysAddr::new(0x30_0000), 4, false).unwrap();
        let g = b.with_gcr3(PhysAddr::new(0x1234_5000), 0).unwrap();
        // Lower half only: one store each.
        assert_eq!(check_order(DeviceTableEntry::BLOCKED, a), 1);
        assert_eq!(check_order(a, b), 1);
        assert_eq!(check_order(a, a2), 1);
        assert_eq!(check_order(b, g), 1);
        assert_eq!(check_order(g, DeviceTableEntry::BLOCKED), 1);
        assert_eq!(check_order(a, a), 0);
        // PASIDs: the GCR3 form (Mode 0, GV, GIoV) comes and goes in one store.
        let guest = DeviceTableEntry::guest(0xFF00, PhysAddr::new(0x4000), true).unwrap();
        assert!(!guest.blocks_dma());
        assert_eq!(guest.mode(), 0);
        assert_eq!(guest.gcr3(), Some(PhysAddr::new(0x4000)));
        assert_ne!(guest.0[0] & GIOV, 0);
        assert_eq!(check_order(DeviceTableEntry::BLOCKED, guest), 1);
        assert_eq!(check_order(guest, DeviceTableEntry::BLOCKED), 1);
        // An upper half that changes (interrupt fields another owner set): the lower half is
        // blocked first, then the upper, then the new lower half.
        let mut odd = a;
        odd.0[2] = 0;
        assert_eq!(check_order(odd, b), 3);
        assert_eq!(check_order(DeviceTableEntry::BLOCKED, odd), 2);
    }

    /// A change of the upper half whose second forget (behind the new upper half) fails, then
    /// is called again: a forget that failed is not confirmed, so it ends no epoch (the unit
    /// may still be reading). Every pair of halves the unit can read over both calls is the
    /// old entry, the new one, or blocking; the retry forgets after the new upper half before
    /// it publishes the lower half.
    ///
    /// Failed before the fix: the retry found the new upper half in place, skipped both
    /// forgets and stored the lower half, so a read of the old upper half begun before the
    /// failed forget could pair with the new lower half (the new translation with the old
    /// interrupt fields).
    #[test]
    fn a_retry_after_a_failed_forget_behind_the_upper_half_forgets_again() {
        let a = DeviceTableEntry::translated(1, PhysAddr::new(0x10_0000), 4, false).unwrap();
        let b = DeviceTableEntry::translated(2, PhysAddr::new(0x20_0000), 3, true).unwrap();
        let mut odd = a;
        odd.0[2] = 0;
        let s = DteSlot::new(odd);
        let epochs = RefCell::new(std::vec![std::vec![odd.0]]);
        let forgets = RefCell::new(0u32);
        let fail_at = RefCell::new(Some(2u32));
        let call = || {
            write_live(
                cx16(),
                &s,
                &b,
                |_| epochs.borrow_mut().last_mut().unwrap().push(s.load().0),
                || {
                    *forgets.borrow_mut() += 1;
                    let n = *forgets.borrow();
                    if *fail_at.borrow() == Some(n) {
                        *fail_at.borrow_mut() = None;
                        // Not confirmed: the unit may still be reading, no new epoch.
                        return Err(());
                    }
                    epochs.borrow_mut().push(std::vec![s.load().0]);
                    Ok(())
                },
            )
        };
        assert_eq!(call(), Err(()), "the second forget fails");
        assert!(s.load().blocks_dma(), "left blocking");
        assert!(call().is_ok());
        assert_eq!(s.load(), b);
        let epochs = epochs.into_inner();
        for epoch in &epochs {
            for lo in epoch {
                for hi in epoch {
                    let seen = [lo[0], lo[1], hi[2], hi[3]];
                    assert!(
                        seen == odd.0 || seen == b.0 || DeviceTableEntry(seen).blocks_dma(),
                        "unsafe read {seen:x?} across the retry: {epochs:x?}"
                    );
                }
            }
        }
    }

    /// iommufd's replace on AMD: a device moved between two translating domains never passes
    /// through a state that blocks its DMA, and the move is one store (the lower 128 bits).
    #[test]
    fn replace_between_domains_is_hitless() {
        let a = DeviceTableEntry::translated(1, PhysAddr::new(0x10_0000), 4, false).unwrap();
        let b = DeviceTableEntry::translated(2, PhysAddr::new(0x20_0000), 3, true).unwrap();
        let (epochs, n) = epochs(a, b);
        assert!(
            epochs
                .concat()
                .iter()
                .all(|st| !DeviceTableEntry(*st).blocks_dma()),
            "a replace passed through a blocking state: {epochs:x?}"
        );
        assert_eq!((epochs.len(), n), (1, 1));
    }

    /// Each store writes a whole half: no state in which one quadword of a half is new and
    /// the other old.
    #[test]
    fn halves_are_stored_whole() {
        let a = DeviceTableEntry::translated(1, PhysAddr::new(0x10_0000), 4, false).unwrap();
        let mut b = DeviceTableEntry::translated(2, PhysAddr::new(0x20_0000), 3, true).unwrap();
        b.0[2] = 0x55;
        b.0[3] = 0x66;
        for st in states(a, b) {
            for h in [0, 2] {
                let pair = [st[h], st[h + 1]];
                let blocked = [
                    DeviceTableEntry::BLOCKED.0[h],
                    DeviceTableEntry::BLOCKED.0[h + 1],
                ];
                assert!(
                    pair == [a.0[h], a.0[h + 1]] || pair == [b.0[h], b.0[h + 1]] || pair == blocked,
                    "half {h} torn: {st:x?}"
                );
            }
        }
    }

    #[test]
    fn fields_round_trip() {
        let gcr3 = PhysAddr::new(0x000F_EDCB_A987_6000);
        let e = DeviceTableEntry::translated(0xBEEF, PhysAddr::new(0x5000), 6, true)
            .unwrap()
            .with_gcr3(gcr3, 1)
            .unwrap();
        assert_eq!(e.mode(), 6);
        assert_eq!(e.root(), PhysAddr::new(0x5000));
        assert_eq!(e.domain_id(), 0xBEEF);
        assert_eq!(e.gcr3(), Some(gcr3));
        assert!(DeviceTableEntry::BLOCKED.blocks_dma());
        assert!(!e.blocks_dma());
        assert!(matches!(
            DeviceTableEntry::translated(1, PhysAddr::new(0x5000), 7, false),
            Err(Error::InvalidArgument { value: 7, .. })
        ));
    }
}
