//! Regression tests from the adversarial review of the page-table engine against the VT-d and
//! Arm specifications: hardware-facing invariants that the format-by-configuration conformance
//! suite (`pgtable_conformance.rs`) does not reach.

use core::ptr::NonNull;

use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr, WalkerCoherency};
use iommu_engine::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use iommu_engine::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use iommu_engine::pgtable::{Error, Format, PageTable, Prot};
use iommu_engine::sim::arena::{Arena, ArenaConfig, PhysMem};
use iommu_engine::sim::walk::{self, Access};

const K4: u64 = 1 << 12;
const RW: Prot = Prot::READ.union(Prot::WRITE);

/// An allocator whose first `low_pages` pages come from below the output size and every later
/// one from `high_base`, above it: memory the embedder has but the IOMMU cannot address.
struct Split {
    low: Arena,
    high: Arena,
    low_pages: core::cell::Cell<usize>,
}

impl Split {
    fn new(high_base: u64, low_pages: usize) -> Self {
        let arena = |base_pa| {
            Arena::new(ArenaConfig {
                base_pa,
                capacity: 4 << 20,
            })
            .unwrap()
        };
        Self {
            low: arena(0x8000_0000),
            high: arena(high_base),
            low_pages: core::cell::Cell::new(low_pages),
        }
    }
}

// SAFETY: forwards to two arenas with disjoint physical ranges; each page is freed to the arena
// that owns its address.
unsafe impl PageAllocator for Split {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        match self.low_pages.get() {
            0 => self.high.alloc(size_log2),
            n => {
                self.low_pages.set(n - 1);
                self.low.alloc(size_log2)
            }
        }
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let arena = if page.pa.get() >= self.high.base_pa() {
            &self.high
        } else {
            &self.low
        };
        // SAFETY: the caller upholds `free`'s contract; the page came from `arena`.
        unsafe { arena.free(page, size_log2) }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        self.low
            .phys_to_virt(pa)
            .or_else(|| self.high.phys_to_virt(pa))
    }
}

impl PhysMem for Split {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        self.low.read_u64(pa).or_else(|| self.high.read_u64(pa))
    }
}

fn arm_s2_4k() -> ArmS2 {
    ArmS2::new(ArmS2Config {
        granule_log2: 12,
        ias: 40,
        oas: 40,
        blocks: true,
        attributes: S2Attributes::WriteBack,
        dirty_tracking: false,
        bbml2: false,
    })
    .unwrap()
}

fn vtd_ss_39() -> VtdSs {
    VtdSs::new(VtdSsConfig {
        agaw: 48,
        haw: 39,
        page_2m: true,
        page_1g: true,
        snoop: false,
        dirty_tracking: false,
    })
    .unwrap()
}

/// Before the fix the engine linked table pages at or above `1 << oas`: an Arm walker takes an
/// address size fault on them, a VT-d walker a reserved-bit fault, and the Arm 4K/16K encoders
/// drop bits 51:48 so the hardware walks some other page.
fn refuses_table_pages_beyond_oas<F: Format>(format: F, high_base: u64) {
    let oas = format.geometry().oas;
    assert!(high_base >> oas != 0);
    let alloc = Split::new(high_base, 1);
    let t = PageTable::new(format, &alloc, WalkerCoherency::Coherent).unwrap();
    let root = t.root();
    // IOVA 0 needs a new table at every level below the root, all of them from `high`.
    assert_eq!(
        t.map(Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW),
        Err(Error::TableOutOfRange {
            pa: PhysAddr::new(high_base),
            oas
        })
    );
    assert_eq!(t.query(Iova::new(0)), None);
    assert_eq!(
        alloc.high.stats().live_pages,
        0,
        "out-of-range pages returned"
    );
    assert!(alloc.high.bad_frees().is_empty());
    // The root (below the output size) is untouched: every entry still zero.
    for i in 0..512 {
        assert_eq!(alloc.low.read_u64(root.get() + i * 8), Some(0));
    }
}

#[test]
fn arm_s2_refuses_table_pages_beyond_oas() {
    // 2^48: inside the 4 KiB address field's bits 47:12 only by luck of the mask, outside OAS 40.
    refuses_table_pages_beyond_oas(arm_s2_4k(), 1 << 48);
    refuses_table_pages_beyond_oas(arm_s2_4k(), 1 << 40);
}

#[test]
fn vtd_ss_refuses_table_pages_beyond_haw() {
    refuses_table_pages_beyond_oas(vtd_ss_39(), 1 << 39);
    refuses_table_pages_beyond_oas(vtd_ss_39(), 1 << 52);
}

#[test]
fn root_beyond_oas_is_refused() {
    let alloc = Split::new(1 << 40, 0);
    let r = PageTable::new(arm_s2_4k(), &alloc, WalkerCoherency::Coherent);
    assert_eq!(
        r.err(),
        Some(Error::TableOutOfRange {
            pa: PhysAddr::new(1 << 40),
            oas: 40
        })
    );
    assert_eq!(alloc.high.stats().live_pages, 0);
}

/// Tables inside the output size still work, up to its last page, and the reference walker
/// reads them.
#[test]
fn table_pages_just_below_oas_are_used() {
    let alloc = Split::new((1 << 39) - (4 << 20), 1);
    let t = PageTable::new(vtd_ss_39(), &alloc, WalkerCoherency::Coherent).unwrap();
    t.map(Iova::new(0), PhysAddr::new(0x4000_0000), K4, RW)
        .unwrap();
    let cfg = walk::vtd_ss::VtdSsConfig {
        root: t.root(),
        levels: 4,
        haw: 39,
        large_2m: true,
        large_1g: true,
        snoop_control: false,
    };
    let seen = walk::vtd_ss::translate(&alloc, &cfg, Iova::new(0x10), Access::READ).unwrap();
    assert_eq!(seen.pa, PhysAddr::new(0x4000_0010));
}

/// Every stage-2 granule x IAS: the start level and concatenation the format picks are the ones
/// the reference walker derives from the S2SL0 / S2T0SZ it reports, the walk is as short as 16
/// concatenated tables allow, and the start level is one the Arm ARM's `S2InvalidSL` accepts for
/// a unit whose PAMax is at least the IAS (4 KiB level 0 and 64 KiB level 1 need PAMax >= 44,
/// 16 KiB level 1 needs PAMax >= 42).
#[test]
fn arm_s2_start_level_and_concatenation_for_every_ias() {
    use walk::arm::Granule;
    for (granule_log2, granule, max_ias) in [
        (12, Granule::K4, 48),
        (14, Granule::K16, 48),
        (16, Granule::K64, 52),
    ] {
        let stride = granule_log2 - 3;
        for ias in 32..=max_ias {
            let f = ArmS2::new(ArmS2Config {
                granule_log2,
                ias,
                oas: if max_ias == 52 { 52 } else { 48 },
                ..*arm_s2_4k().config()
            })
            .unwrap();
            let cfg = walk::arm_s2::ArmS2Config {
                ttb: PhysAddr::new(0),
                granule,
                t0sz: f.t0sz() as u8,
                sl0: f.sl0() as u8,
                oas: f.config().oas,
                fwb: false,
                xnx: false,
                hardware_access_flag: false,
                hardware_dirty: false,
                strict_res0: true,
            };
            let shape = walk::arm_s2::root_shape(&cfg);
            assert_eq!(
                shape,
                Ok((f.start_level(), f.concatenated())),
                "granule 2^{granule_log2}, IAS {ias}"
            );
            // Shortest walk: one level deeper would need more than 16 tables.
            let deeper = f.start_level() + 1;
            assert!(
                deeper > 3 || ias - (granule_log2 + (3 - deeper) * stride) > stride + 4,
                "granule 2^{granule_log2}, IAS {ias}: start level {} is not the deepest",
                f.start_level()
            );
            let pamax_needed = match (granule_log2, f.start_level()) {
                (12, 0) | (16, 1) => 44,
                (14, 1) => 42,
                (14, 0) => u32::MAX, // needs FEAT_LPA2
                _ => 0,
            };
            // A stage-2 IPA cannot exceed PAMax (S2MinTxSZ), and PAMax is a PS encoding.
            let least_pamax = [32, 36, 40, 42, 44, 48, 52]
                .into_iter()
                .find(|&ps| ps >= ias)
                .unwrap();
            assert!(
                least_pamax >= pamax_needed,
                "granule 2^{granule_log2}, IAS {ias}: start level {} needs PAMax {pamax_needed}",
                f.start_level()
            );
        }
    }
}

/// `Geometry`'s fields are public and its helpers are public `const fn`s: on values `validate`
/// would refuse they answer nonsense, but they must not panic (before the fix: subtraction and
/// shift overflows).
#[test]
fn geometry_helpers_never_panic() {
    use iommu_engine::pgtable::Geometry;
    for granule_log2 in [0, 2, 3, 12, 63, 64, u32::MAX] {
        for levels in [0, 1, 6, u32::MAX] {
            for top_bits in [0, 9, 64, u32::MAX] {
                let g = Geometry {
                    granule_log2,
                    levels,
                    top_bits,
                    ias: 48,
                    oas: 48,
                    page_sizes: u64::MAX,
                };
                assert!(g.validate().is_err());
                for level in [0, 1, 5, 63, 64, u32::MAX] {
                    let _ = (g.level_shift(level), g.level_bits(level));
                    let _ = (g.index(level, u64::MAX), g.leaf_allowed(level));
                }
                let _ = (g.root_size_log2(), g.top_level());
            }
        }
    }
}
