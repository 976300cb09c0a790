//! PASIDs (quotas, attach by PASID on the scalable VT-d model and on SMMUv3 substreams, busy
//! PASIDs) and incoherent-DMA grants, on the hardware models.

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags};
use iommu_engine::iommu::Missing;
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

#[test]
fn pasid_quotas_are_per_context_over_one_space() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(10),
        |r| {
            let a = IoasidCtx::new(r.reg, r.arena, 2);
            let b = IoasidCtx::new(r.reg, r.arena, 1);
            let (p1, p2) = (a.alloc_pasid().unwrap(), a.alloc_pasid().unwrap());
            assert_eq!(a.alloc_pasid(), Err(Error::Quota(2)));
            let q = b.alloc_pasid().unwrap();
            assert_eq!(b.alloc_pasid(), Err(Error::Quota(1)));
            assert!(p1 != p2 && q != p1 && q != p2 && p1.get() != 0);
            // A context cannot free (nor attach) another's PASID.
            assert_eq!(b.free_pasid(p1), Err(Error::PasidNotOwned(p1)));
            let dev = b.bind(vtd_dev(RID_A), false).unwrap();
            let io = b.alloc(IoasidFlags::PASID).unwrap();
            assert_eq!(b.attach_pasid(dev, p1, io), Err(Error::PasidNotOwned(p1)));
            a.free_pasid(p2).unwrap();
            a.alloc_pasid().unwrap();
        },
    );
}

#[test]
fn attach_pasid_on_both_models_and_busy_pasids() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(10),
        |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 4);
            let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
            let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let info = (ctx.device_info(v).unwrap(), ctx.device_info(s).unwrap());
            assert_eq!(
                (
                    info.0.capabilities.pasid_bits,
                    info.1.capabilities.pasid_bits
                ),
                (15, 10)
            );
            let p = ctx.alloc_pasid().unwrap();
            let pu = p.get();

            // VT-d: a first-stage domain behind the PASID, PGSNP set by ENFORCE_SNOOP.
            let snoop = ctx
                .alloc(IoasidFlags::PASID | IoasidFlags::ENFORCE_SNOOP)
                .unwrap();
            ctx.attach_pasid(v, p, snoop).unwrap();
            ctx.map(snoop, Iova::new(0x4000), PhysAddr::new(0x2000_0000), K4, RW)
                .unwrap();
            assert_eq!(
                r.vtd_read(RID_A, Some(pu), 0x4000),
                Some((0x2000_0000, true))
            );
            // The RID itself stays blocked, and other PASIDs fault.
            assert_eq!(r.vtd_read(RID_A, None, 0x4000), None);
            assert_eq!(r.vtd_read(RID_A, Some(pu + 1), 0x4000), None);

            // SMMUv3: a stage-1 domain behind the substream, snooping because the platform
            // declares the device CANWBS (no stage-1 attribute could force it).
            ctx.attach_pasid(s, p, snoop).unwrap();
            assert_eq!(r.smmu_domains(), 1);
            assert_eq!(
                r.smmu_read(SID_A, Some(pu), 0x4000),
                Some((0x2000_0000, true))
            );
            // An IOASID without the PASID flag is not for PASIDs.
            let plain = ctx.alloc(IoasidFlags::empty()).unwrap();
            assert_eq!(
                ctx.attach_pasid(s, p, plain),
                Err(Error::Incompatible {
                    device: s,
                    reason: Incompatibility::NotPasidCapable
                })
            );

            // A PASID IOASID without snoop enforcement goes on both units' substreams.
            let shared = ctx.alloc(IoasidFlags::PASID).unwrap();
            ctx.map(
                shared,
                Iova::new(0x4000),
                PhysAddr::new(0x3000_0000),
                K4,
                RW,
            )
            .unwrap();
            ctx.attach_pasid(s, p, shared).unwrap();
            assert_eq!(
                r.smmu_read(SID_A, Some(pu), 0x4000).map(|t| t.0),
                Some(0x3000_0000)
            );
            assert_eq!(r.smmu_read(SID_A, None, 0x4000), None);
            // Replacing VT-d's PASID domain: seen at once (the PASID cache is invalidated).
            ctx.attach_pasid(v, p, shared).unwrap();
            assert_eq!(
                r.vtd_read(RID_A, Some(pu), 0x4000),
                Some((0x3000_0000, false))
            );
            ctx.free(snoop).unwrap();

            // A PASID in use cannot be freed, nor the IOASID.
            assert_eq!(ctx.free_pasid(p), Err(Error::Busy));
            assert_eq!(ctx.free(shared), Err(Error::Busy));
            ctx.detach_pasid(v, p).unwrap();
            assert_eq!(
                ctx.free_pasid(p),
                Err(Error::Busy),
                "still attached on SMMUv3"
            );
            assert_eq!(r.vtd_read(RID_A, Some(pu), 0x4000), None);
            ctx.detach_pasid(s, p).unwrap();
            assert_eq!(r.smmu_read(SID_A, Some(pu), 0x4000), None);
            assert_eq!(ctx.detach_pasid(s, p), Err(Error::NotAttached(s)));
            ctx.free_pasid(p).unwrap();
            assert!(!r.reg.pasids().is_allocated(p));
            ctx.free(shared).unwrap();
            assert_eq!((r.vtd_domains(), r.smmu_domains()), (0, 0));
            r.drain();
        },
    );
}

#[test]
fn a_unit_without_pasids_refuses_attach_pasid() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 1);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let p = ctx.alloc_pasid().unwrap();
        let io = ctx.alloc(IoasidFlags::PASID).unwrap();
        let live = r.live();
        for d in [v, s] {
            assert_eq!(
                ctx.attach_pasid(d, p, io),
                Err(Error::Incompatible {
                    device: d,
                    reason: Incompatibility::Missing(Missing::Pasid { bits: 0 })
                })
            );
        }
        assert_eq!(r.live(), live);
        ctx.free_pasid(p).unwrap();
    });
}

#[test]
fn incoherent_dma_grants_need_a_bound_no_snoop_capable_device() {
    // A VT-d unit without snoop control: no-snoop DMA really bypasses the caches there.
    with_rig(VtdSetup::legacy(false), SmmuSetup::qemu(false), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let other = IoasidCtx::new(r.reg, r.arena, 0);
        let coherent = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let nosnoop = ctx.bind(vtd_dev(RID_B), true).unwrap();
        let foreign: Vec<_> = [SID_A, SID_B]
            .map(|sid| other.bind(smmu_dev(sid), true).unwrap())
            .to_vec();
        assert_eq!(
            ctx.allow_incoherent_dma(coherent).unwrap_err(),
            Error::NotNoSnoopCapable(coherent)
        );
        // The other context's no-snoop devices (in the same slots as this context's) are
        // not this context's to grant.
        for f in foreign {
            assert_eq!(
                ctx.allow_incoherent_dma(f).unwrap_err(),
                Error::NoSuchDevice(f)
            );
        }
        assert!(!ctx.incoherent_dma_allowed());

        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(nosnoop, io).unwrap();
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x8000), K4, RW)
            .unwrap();
        // What the grant is about: the model lets this device's DMA skip snooping.
        assert_eq!(r.vtd_read(RID_B, None, 0x1000), Some((0x8000, false)));
        let g = ctx.allow_incoherent_dma(nosnoop).unwrap();
        let g2 = ctx.allow_incoherent_dma(nosnoop).unwrap();
        assert_eq!(g.device(), nosnoop);
        assert!(ctx.incoherent_dma_allowed());
        assert!(!other.incoherent_dma_allowed());
        ctx.detach(nosnoop).unwrap();
        assert_eq!(
            ctx.unbind(nosnoop),
            Err(Error::Busy),
            "a grant is outstanding"
        );
        drop(g);
        assert!(
            ctx.incoherent_dma_allowed(),
            "the second grant still stands"
        );
        drop(g2);
        assert!(!ctx.incoherent_dma_allowed());
        ctx.unbind(nosnoop).unwrap();
        assert_eq!(
            ctx.allow_incoherent_dma(nosnoop).unwrap_err(),
            Error::NoSuchDevice(nosnoop)
        );
        r.drain();
    });
}

#[test]
fn a_substream_behind_a_stream_with_another_stage_2_is_incompatible() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(4),
        |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 1);
            let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let rid = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.attach(s, rid).unwrap();
            let p = ctx.alloc_pasid().unwrap();
            let io = ctx.alloc(IoasidFlags::PASID).unwrap();
            let live = r.live();
            // The stream's substreams would need stage 1 nested on its stage 2: the unit refuses,
            // and the layer reports it as an incompatibility naming the mode, with nothing changed.
            assert!(matches!(
                ctx.attach_pasid(s, p, io),
                Err(Error::Incompatible {
                    reason: Incompatibility::Missing(Missing::Mode { .. }),
                    ..
                })
            ));
            assert_eq!((r.live(), r.smmu_domains()), (live, 1));
            assert_eq!(r.smmu_read(SID_A, Some(p.get()), 0), None);
            r.drain();
        },
    );
}
