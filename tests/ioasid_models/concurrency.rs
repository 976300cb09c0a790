//! Several threads mapping and unmapping disjoint ranges of one IOASID behind both units at
//! once; the result is read back through both models.

use iommu_engine::ioasid::{IoasidCtx, IoasidFlags};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const THREADS: u64 = 4;
const ROUNDS: u64 = 24;

/// Thread `t`'s page `i`: interleaved with the other threads' pages in the same leaf tables.
fn iova(t: u64, i: u64) -> u64 {
    0x4000_0000 + (i * THREADS + t) * K4
}

fn pa(t: u64, i: u64) -> u64 {
    0x1_8000_0000 + (t << 24) + i * K4
}

#[test]
fn threads_map_and_unmap_disjoint_ranges_of_one_ioasid_on_both_units() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        let before = r.completions();
        std::thread::scope(|sc| {
            for t in 0..THREADS {
                let ctx = &ctx;
                sc.spawn(move || {
                    for i in 0..ROUNDS {
                        let at = Iova::new(iova(t, i));
                        ctx.map(io, at, PhysAddr::new(pa(t, i)), K4, RW).unwrap();
                        assert_eq!(r.vtd_read(RID_A, None, at.get()), Some((pa(t, i), true)));
                        assert_eq!(r.smmu_read(SID_A, None, at.get()), Some((pa(t, i), true)));
                        // Every third page goes again, flushed out of both caches at once.
                        if i % 3 == 0 {
                            assert_eq!(ctx.unmap(io, at, K4), Ok(K4));
                            assert_eq!(r.vtd_read(RID_A, None, at.get()), None);
                            assert_eq!(r.smmu_read(SID_A, None, at.get()), None);
                        }
                    }
                });
            }
        });
        // One completion per unit per unmap, whatever the interleaving.
        let unmaps = THREADS * ROUNDS.div_ceil(3);
        assert_eq!(r.completions(), (before.0 + unmaps, before.1 + unmaps));
        for t in 0..THREADS {
            for i in 0..ROUNDS {
                let want = (i % 3 != 0).then_some((pa(t, i), true));
                assert_eq!(r.vtd_read(RID_A, None, iova(t, i)), want, "VT-d {t} {i}");
                assert_eq!(r.smmu_read(SID_A, None, iova(t, i)), want, "SMMUv3 {t} {i}");
                let recorded = ctx.translate(io, Iova::new(iova(t, i))).unwrap();
                assert_eq!(recorded.map(|m| m.pa.get()), want.map(|w| w.0));
            }
        }
        r.drain();
    });
}
