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
//! | 11:9 | `Mode`: levels of the host (v1) table, 1-6; 0 = no translation (IR/IW still apply) |
//! | 51:12 | `Host Page Table Root Pointer` |
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
//! **Changing a live entry** ([`write_live`]): each quadword is written with one 64-bit atomic
//! store. The unit may read the four quadwords at different times, so every state between the
//! old and the new entry must be safe. When only quadword 0 changes (the root, the mode or the
//! permissions of the same domain), that one store is the whole, hitless, change. Otherwise
//! quadword 0 is first made blocking (no translation, no permission: whatever the other
//! quadwords then hold, nothing is translated and nothing cached under their `DomainID`), then
//! quadwords 3, 2 and 1 are written, and quadword 0 last, which publishes the entry. A device
//! moved between domains so passes through blocking (its DMA faults meanwhile), never through
//! a state that would translate one domain's table under the other's `DomainID`.

use core::sync::atomic::{AtomicU64, Ordering};

use super::Error;
use crate::mem::PhysAddr;

/// `V`.
pub const V: u64 = 1 << 0;
/// `TV`.
pub const TV: u64 = 1 << 1;
/// `Mode`, quadword 0 bits 11:9.
pub const MODE_SHIFT: u32 = 9;
/// `Mode` mask.
pub const MODE_MASK: u64 = 0x7 << MODE_SHIFT;
/// `Host Page Table Root Pointer`, quadword 0 bits 51:12.
pub const ROOT_MASK: u64 = 0x000F_FFFF_FFFF_F000;
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

/// Changes the live entry `slot` to `new` in the order of the module documentation, calling
/// `store(index, value)` after each 64-bit store (the caller cleans it for a non-coherent unit,
/// tests record it). Returns the number of stores.
pub fn write_live(
    slot: &[AtomicU64; 4],
    new: &DeviceTableEntry,
    mut store: impl FnMut(usize, u64),
) -> usize {
    let old: [u64; 4] = core::array::from_fn(|i| slot[i].load(Ordering::Relaxed));
    let mut n = 0;
    let mut put = |i: usize, v: u64| {
        slot[i].store(v, Ordering::Release);
        store(i, v);
        n += 1;
    };
    if old[1..] != new.0[1..] {
        if !DeviceTableEntry(old).blocks_dma() {
            put(0, DeviceTableEntry::BLOCKED.0[0]);
        }
        for i in [3, 2, 1] {
            if old[i] != new.0[i] {
                put(i, new.0[i]);
            }
        }
    }
    if slot[0].load(Ordering::Relaxed) != new.0[0] {
        put(0, new.0[0]);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(e: DeviceTableEntry) -> [AtomicU64; 4] {
        e.0.map(AtomicU64::new)
    }

    /// Every state a reader can see between `old` and `new` (each quadword read at any time
    /// after its last store) is safe: old, new, or blocking.
    fn check_order(old: DeviceTableEntry, new: DeviceTableEntry) -> usize {
        let s = slot(old);
        let mut states = std::vec![old.0];
        let n = write_live(&s, &new, |i, v| {
            let mut cur = *states.last().unwrap();
            cur[i] = v;
            states.push(cur);
        });
        for st in &states {
            let e = DeviceTableEntry(*st);
            assert!(
                *st == old.0 || *st == new.0 || e.blocks_dma(),
                "unsafe intermediate {st:x?} between {old:x?} and {new:x?}"
            );
        }
        assert_eq!(s.each_ref().map(|w| w.load(Ordering::Relaxed)), new.0);
        n
    }

    #[test]
    fn live_updates_pass_only_through_safe_states() {
        let a = DeviceTableEntry::translated(1, PhysAddr::new(0x10_0000), 4, false).unwrap();
        let b = DeviceTableEntry::translated(2, PhysAddr::new(0x20_0000), 3, true).unwrap();
        let a2 = DeviceTableEntry::translated(1, PhysAddr::new(0x30_0000), 4, false).unwrap();
        let g = b.with_gcr3(PhysAddr::new(0x1234_5000), 0).unwrap();
        // blocked -> a: quadword 1 first (blocking all along), then the publishing store.
        assert_eq!(check_order(DeviceTableEntry::BLOCKED, a), 2);
        // a -> b (another domain): block, then quadword 1, then publish.
        assert_eq!(check_order(a, b), 3);
        // a -> a2 (same domain, new root): one hitless store.
        assert_eq!(check_order(a, a2), 1);
        // b -> b with a GCR3 table; and back to blocking.
        check_order(b, g);
        check_order(g, DeviceTableEntry::BLOCKED);
        assert_eq!(check_order(a, a), 0);
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
