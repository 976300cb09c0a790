//! Supervisor requests and privileged-only pages through the IOASID layer (issue 15, item 9):
//! `IoasidFlags::SUPERVISOR` builds first-stage domains that honour them (VT-d: `SRE` and
//! `WPE` in the PASID entry; SMMUv3: stage 1), and only such an IOASID maps `Prot::PRIV`.

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags};
use iommu_engine::iommu::{Missing, Source};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{self, Prot};
use iommu_engine::sim::walk::Access;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);
const SUPERVISOR_READ: Access = Access {
    privileged: true,
    ..Access::READ
};

#[test]
fn privileged_pages_only_in_supervisor_ioasids_and_only_for_supervisors() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(10),
        |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 4);
            let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
            let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let (vi, si) = (ctx.device_info(v).unwrap(), ctx.device_info(s).unwrap());
            assert_eq!(
                (
                    vi.capabilities.supervisor,
                    vi.capabilities.sources.supervisor
                ),
                (true, Source::Register("ECAP.SRS"))
            );
            assert_eq!(
                (
                    si.capabilities.supervisor,
                    si.capabilities.sources.supervisor
                ),
                (true, Source::Register("IDR0.S1P"))
            );

            // Anywhere else PRIV is refused with the value, nothing recorded.
            let plain = ctx.alloc(IoasidFlags::PASID).unwrap();
            let priv_rw = RW | Prot::PRIV;
            assert_eq!(
                ctx.map(
                    plain,
                    Iova::new(0x2000),
                    PhysAddr::new(0x5000_0000),
                    K4,
                    priv_rw
                ),
                Err(Error::PageTable(pgtable::Error::UnsupportedProt {
                    prot: priv_rw
                }))
            );
            assert_eq!(ctx.translate(plain, Iova::new(0x2000)), Ok(None));

            let sup = ctx
                .alloc(IoasidFlags::PASID | IoasidFlags::SUPERVISOR)
                .unwrap();
            ctx.map(sup, Iova::new(0x1000), PhysAddr::new(0x5000_1000), K4, RW)
                .unwrap();
            ctx.map(
                sup,
                Iova::new(0x2000),
                PhysAddr::new(0x5000_2000),
                K4,
                priv_rw,
            )
            .unwrap();
            let p = ctx.alloc_pasid().unwrap();
            ctx.attach_pasid(v, p, sup).unwrap();
            ctx.attach(s, sup).unwrap();
            let pu = Some(p.get());
            let vtd = |iova, access| r.vm.translate(RID_A as u16, pu, iova, access).ok();
            let smmu = |iova, access| r.sm.translate(SID_A, None, iova, access).ok();
            assert_eq!(
                vtd(0x2008, SUPERVISOR_READ).map(|t| t.pa),
                Some(0x5000_2008)
            );
            assert!(vtd(0x2008, Access::READ).is_none());
            assert!(vtd(0x1008, SUPERVISOR_READ).is_some() && vtd(0x1008, Access::READ).is_some());
            assert_eq!(
                smmu(0x2008, SUPERVISOR_READ).map(|t| t.pa),
                Some(0x5000_2008)
            );
            assert!(smmu(0x2008, Access::READ).is_none());
            assert!(smmu(0x1008, Access::READ).is_some());
            ctx.detach_pasid(v, p).unwrap();
            ctx.detach(s).unwrap();
            ctx.audit(sup).unwrap();
        },
    );
}

#[test]
fn a_unit_without_supervisor_requests_is_refused_at_attach() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 4);
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        assert!(!ctx.device_info(v).unwrap().capabilities.supervisor);
        let sup = ctx.alloc(IoasidFlags::SUPERVISOR).unwrap();
        let live = (r.live(), r.vtd_domains());
        assert_eq!(
            ctx.attach(v, sup),
            Err(Error::Incompatible {
                device: v,
                reason: Incompatibility::Missing(Missing::SupervisorRequests)
            })
        );
        assert_eq!((r.live(), r.vtd_domains()), live);
    });
}
