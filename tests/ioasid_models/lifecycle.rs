//! Teardown: freeing an IOASID with attachments fails; dropping a context detaches everything,
//! leaves every device faulting and returns every page the layer and its domains took.

use iommu_engine::ioasid::{DeviceLabel, Error, IoasidCtx, IoasidFlags};
use iommu_engine::iommu::{DeviceId, DomainConfig, Iommu, Pasid, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const PASID: u32 = 1;

/// Attaches and detaches each (device, PASID) directly on its unit once, so that the units
/// build the configuration structures (context tables, PASID tables, stream-table leaves, CD
/// tables) they keep for a device they have seen. What is live afterwards is what the units
/// hold on their own.
fn warm_up(r: &Rig<'_, '_>, users: &[(&dyn Iommu, u32, Option<u32>)]) -> usize {
    for &(unit, id, pasid) in users {
        let stage = if pasid.is_some() {
            Stage::First
        } else {
            Stage::Any
        };
        let d = unit
            .domain_alloc(&DomainConfig {
                stage,
                ..DomainConfig::default()
            })
            .unwrap();
        let pasid = pasid.and_then(Pasid::new);
        unit.attach(DeviceId(id), pasid, d).unwrap();
        unit.detach(DeviceId(id), pasid).unwrap();
        unit.domain_free(d).unwrap();
    }
    r.live()
}

#[test]
fn freeing_an_attached_ioasid_is_busy_and_changes_nothing() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(4),
        |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 2);
            let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
            let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
            ctx.attach(v, io).unwrap();
            ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x7000), K4, RW)
                .unwrap();
            let live = r.live();
            assert_eq!(ctx.free(io), Err(Error::Busy));
            assert_eq!(r.live(), live);
            assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x7000, true)));
            // Attached only by PASID: still busy.
            let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let p = ctx.alloc_pasid().unwrap();
            let pio = ctx.alloc(IoasidFlags::PASID).unwrap();
            ctx.attach_pasid(s, p, pio).unwrap();
            assert_eq!(ctx.free(pio), Err(Error::Busy));
            ctx.detach_pasid(s, p).unwrap();
            ctx.free(pio).unwrap();
            ctx.detach(v).unwrap();
            ctx.free(io).unwrap();
            assert_eq!(ctx.free(io), Err(Error::NoSuchIoasid(io)));
            assert_eq!(r.vtd_read(RID_A, None, 0x1000), None);
            r.drain();
        },
    );
}

/// Builds a busy context: devices on both units, RID and PASID attachments, several IOASIDs
/// with mappings of several sizes, an IOASID nothing is attached to, a held PASID.
fn busy_context(r: &Rig<'_, '_>) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 4);
    // On SMMUv3 the substreams of a stream share its stage 2: SID_C has only a PASID.
    let labels: [DeviceLabel; 5] = [
        vtd_dev(RID_A),
        vtd_dev(RID_B),
        smmu_dev(SID_A),
        smmu_dev(SID_B),
        smmu_dev(SID_C),
    ];
    let devs: Vec<_> = labels.iter().map(|l| ctx.bind(*l, true).unwrap()).collect();
    let snoop = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    let plain = ctx.alloc(IoasidFlags::empty()).unwrap();
    let pasid_io = ctx.alloc(IoasidFlags::PASID).unwrap();
    let idle = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.attach(devs[0], snoop).unwrap();
    ctx.attach(devs[2], snoop).unwrap();
    ctx.attach(devs[1], plain).unwrap();
    ctx.attach(devs[3], plain).unwrap();
    let p = ctx.alloc_pasid().unwrap();
    assert_eq!(p.get(), PASID);
    ctx.attach_pasid(devs[0], p, pasid_io).unwrap();
    ctx.attach_pasid(devs[4], p, pasid_io).unwrap();
    let _spare = ctx.alloc_pasid().unwrap();
    for io in [snoop, plain, pasid_io, idle] {
        ctx.map(
            io,
            Iova::new(0x20_0000),
            PhysAddr::new(0x4000_0000),
            3 * M2,
            RW,
        )
        .unwrap();
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x9000), 5 * K4, RW)
            .unwrap();
        ctx.map(io, Iova::new(1 << 40), PhysAddr::new(0x9000), K4, RW)
            .unwrap();
    }
    let _grant = ctx.allow_incoherent_dma(devs[1]).unwrap();
    assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x9000, true)));
    assert_eq!(r.vtd_read(RID_B, None, 0x1000), Some((0x9000, false)));
    assert_eq!(
        r.vtd_read(RID_A, Some(PASID), 0x1000),
        Some((0x9000, false))
    );
    assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x9000, true)));
    assert!(r.smmu_read(SID_B, None, 0x20_0000).is_some());
    assert!(r.smmu_read(SID_C, Some(PASID), 0x1000).is_some());
    assert_eq!(ctx.free(snoop), Err(Error::Busy));
    // The grant is dropped first (it borrows the context); then the context goes.
    drop(_grant);
    drop(ctx);
}

#[test]
fn dropping_a_context_detaches_everything_and_returns_every_page() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(4),
        |r| {
            let baseline = warm_up(
                r,
                &[
                    (r.vtd, RID_A, None),
                    (r.vtd, RID_B, None),
                    (r.vtd, RID_A, Some(PASID)),
                    (r.smmu, SID_A, None),
                    (r.smmu, SID_B, None),
                    (r.smmu, SID_C, Some(PASID)),
                ],
            );
            for round in 0..2 {
                busy_context(r);
                assert_eq!(r.live(), baseline, "round {round}: pages not returned");
                assert_eq!((r.vtd_domains(), r.smmu_domains()), (0, 0));
                for (rid, pasid) in [(RID_A, None), (RID_B, None), (RID_A, Some(PASID))] {
                    assert_eq!(r.vtd_read(rid, pasid, 0x1000), None, "{rid:#x} {pasid:?}");
                }
                for (sid, ssid) in [(SID_A, None), (SID_B, None), (SID_C, Some(PASID))] {
                    assert_eq!(r.smmu_read(sid, ssid, 0x1000), None, "{sid:#x} {ssid:?}");
                }
                // The devices and PASIDs were released: another context can take them.
                let next = IoasidCtx::new(r.reg, r.arena, 1);
                next.bind(vtd_dev(RID_A), false).unwrap();
                assert_eq!(next.alloc_pasid().map(|p| p.get()), Ok(PASID));
                drop(next);
                r.drain();
            }
        },
    );
}

#[test]
fn an_attach_refused_for_memory_leaves_nothing_behind() {
    use iommu_engine::sim::arena::FailPolicy;
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(4),
        |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 1);
            let p = ctx.alloc_pasid().unwrap();
            let rid_io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
            let pasid_io = ctx.alloc(IoasidFlags::PASID).unwrap();
            ctx.map(rid_io, Iova::new(0x1000), PhysAddr::new(0x7000), K4, RW)
                .unwrap();
            ctx.map(pasid_io, Iova::new(0x1000), PhysAddr::new(0x8000), K4, RW)
                .unwrap();
            // Each device is new to its unit (a new bus, a new stream-table leaf): the attach
            // allocates a domain, its tables and configuration pages. Fail each allocation in
            // turn: every refusal leaves no domain, no page and no translation behind.
            for (k, (label, by_pasid)) in [
                (vtd_dev(0x300), false),
                (vtd_dev(0x400), true),
                (smmu_dev(0x1000), false),
                (smmu_dev(0x2000), true),
            ]
            .into_iter()
            .enumerate()
            {
                let dev = ctx.bind(label, false).unwrap();
                let attach = || match by_pasid {
                    false => ctx.attach(dev, rid_io),
                    true => ctx.attach_pasid(dev, p, pasid_io),
                };
                let mut n = 1;
                loop {
                    let (live, domains) = (r.live(), (r.vtd_domains(), r.smmu_domains()));
                    r.arena.set_fail_policy(FailPolicy::Nth(n));
                    let res = attach();
                    r.arena.set_fail_policy(FailPolicy::Never);
                    if res.is_ok() {
                        break;
                    }
                    assert_eq!(
                        (r.vtd_domains(), r.smmu_domains()),
                        domains,
                        "device {k}: allocation {n} failed, a domain stayed"
                    );
                    assert!(r.live() >= live, "device {k}: freed more than it took");
                    n += 1;
                    assert!(n < 16, "device {k}: never attached");
                }
                assert!(n > 1, "device {k}: the attach allocated nothing");
                let id = label.id.0;
                let pasid = by_pasid.then_some(p.get());
                let got = if label.unit == VTD {
                    r.vtd_read(id, pasid, 0x1000)
                } else {
                    r.smmu_read(id, pasid, 0x1000)
                };
                let want = if by_pasid { 0x8000 } else { 0x7000 };
                assert_eq!(got.map(|t| t.0), Some(want), "device {k}");
            }
            r.drain();
        },
    );
}
