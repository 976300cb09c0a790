//! Several threads mapping and unmapping disjoint ranges of one IOASID behind both units at
//! once, and two contexts sharing one unit while one of them attaches; the result is read back
//! through the models.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Barrier;

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

/// A device of the VT-d unit behind neither `RID_A` nor `RID_B` (00:06.0).
const RID_C: u32 = 0x30;

/// `ctx`'s page `i` in round `round` (`ctx` 0 or 1): a new page each round, so that a
/// translation cached in an earlier round (under a domain-ID freed and taken again) would
/// read the wrong page.
fn round_pa(ctx: u64, round: u64, i: u64) -> u64 {
    0x2_0000_0000 + (ctx << 32) + (round << 24) + i * K4
}

/// Four rounds of: 40 pages mapped into `io` (no domain yet), `dev` (`rid`) attached (a
/// domain built and filled run by run) and every page read through it, detached (the domain
/// freed), everything unmapped.
fn attach_rounds(
    r: &Rig<'_, '_>,
    (ctx, n): (&IoasidCtx<'_, '_, iommu_engine::sim::Arena>, u64),
    (dev, rid): (iommu_engine::ioasid::DeviceHandle, u32),
    io: iommu_engine::ioasid::IoasidId,
) {
    const PAGES: u64 = 40;
    let page = |i: u64| 0x4000_0000 + 2 * i * K4;
    for round in 0..4 {
        for i in 0..PAGES {
            let pa = PhysAddr::new(round_pa(n, round, i));
            ctx.map(io, Iova::new(page(i)), pa, K4, RW).unwrap();
        }
        ctx.attach(dev, io).unwrap();
        for i in 0..PAGES {
            let want = Some((round_pa(n, round, i), true));
            let seen = r.vtd_read(rid, None, page(i));
            assert_eq!(seen, want, "context {n} round {round} page {i}");
        }
        ctx.detach(dev).unwrap();
        assert_eq!(ctx.unmap(io, Iova::new(0), u64::MAX), Ok(PAGES * K4));
    }
}

/// Three contexts share one VT-d unit in caching mode (`CAP.CM`: the unit caches not-present
/// results, so every map is followed by an invalidation, gathered in the unit's one
/// `map_gather`). Contexts A and C attach and detach a device each, four times
/// (`attach_rounds`: each attach builds a domain and copies 40 pages into it run by run, in
/// chunks, a caching-mode invalidation per run; each detach frees the domain), while context
/// B's thread reads a page of its own IOASID (caching the not-present result), maps it,
/// reads it, unmaps it and reads it again, until A and C are done (64 times at least). Every
/// read must see what its owner's last call left: B's caching-mode invalidation is never lost
/// to, or issued for, another domain however the flushes meet in the gather, and no device
/// reads a page of an earlier round or of another context.
#[test]
fn attaches_filling_domains_and_another_context_s_maps_share_the_caching_mode_gather() {
    let vtd = VtdSetup {
        model: VtdSetup::legacy(true).model.with_caching_mode(true),
        mode: VtdSetup::legacy(true).mode,
    };
    with_rig(vtd, SmmuSetup::qemu(true), |r| {
        // One by one: a context is about 32 KiB, and the test thread's stack is 2 MiB.
        let a = IoasidCtx::new(r.reg, r.arena, 0);
        let b = IoasidCtx::new(r.reg, r.arena, 0);
        let c = IoasidCtx::new(r.reg, r.arena, 0);
        let (da, db, dc) = (
            a.bind(vtd_dev(RID_A), false).unwrap(),
            b.bind(vtd_dev(RID_B), false).unwrap(),
            c.bind(vtd_dev(RID_C), false).unwrap(),
        );
        let (ia, ib, ic) = (
            a.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap(),
            b.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap(),
            c.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap(),
        );
        b.attach(db, ib).unwrap();
        let attaching = AtomicU32::new(2);
        let start = Barrier::new(3);
        let b_rounds = std::thread::scope(|s| {
            let other = s.spawn(|| {
                start.wait();
                // Until A and C are done: at least 64 rounds, at most 100,000.
                let mut i = 0;
                while i < 100_000 && (i < 64 || attaching.load(Ordering::Acquire) != 0) {
                    let at = Iova::new(0x8000_0000 + (i % 64) * K4);
                    let pa = 0x3_0000_0000 + i * K4;
                    assert_eq!(r.vtd_read(RID_B, None, at.get()), None, "B {i} before");
                    b.map(ib, at, PhysAddr::new(pa), K4, RW).unwrap();
                    assert_eq!(
                        r.vtd_read(RID_B, None, at.get()),
                        Some((pa, true)),
                        "B {i}: a map that returned is not seen"
                    );
                    assert_eq!(b.unmap(ib, at, K4), Ok(K4));
                    assert_eq!(r.vtd_read(RID_B, None, at.get()), None, "B {i} after");
                    i += 1;
                }
                i
            });
            s.spawn(|| {
                start.wait();
                attach_rounds(r, (&c, 1), (dc, RID_C), ic);
                attaching.fetch_sub(1, Ordering::AcqRel);
            });
            start.wait();
            attach_rounds(r, (&a, 0), (da, RID_A), ia);
            attaching.fetch_sub(1, Ordering::AcqRel);
            other.join().unwrap()
        });
        assert!(b_rounds >= 64);
        // Every domain A and C built was freed: B's is the only one left.
        assert_eq!(r.vtd_domains(), 1);
        r.drain();
    });
}
