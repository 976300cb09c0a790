//! An IOASID whose domains have different input widths: QEMU's VT-d with 48 bits and the
//! SMMUv3 model's 44-bit stage 2. Every mapping of the IOASID lies below every domain's width
//! (review 19b F2): a map or copy that reaches beyond the narrowest is refused by the IOASID
//! itself, naming that domain, before the record or a domain is touched, and an attach that
//! would bring a domain narrower than a mapping is refused with nothing left behind.

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags, IoasidId, UNMAP_ALL};
use iommu_engine::iommu::Missing;
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{IovaRange, Prot};
use iommu_engine::sim::Arena;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// The SMMUv3 model's stage-2 input width (`SmmuModelConfig::qemu_like`).
const SMMU_IAS: u32 = 44;

/// The rig (VT-d 48 bits, SMMUv3 44 bits), a context and an IOASID of it: `f` gets all three.
fn with_ioasid(f: impl FnOnce(&Rig<'_, '_>, &IoasidCtx<'_, '_, Arena>, IoasidId)) {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        f(r, &ctx, io)
    })
}

/// A map straddling the SMMUv3 domain's width, with both units' devices attached: refused,
/// nothing reaches either device, and the same range below the width maps in both.
#[test]
fn a_map_beyond_the_narrowest_domain_is_refused_before_anything_is_touched() {
    with_ioasid(|r, ctx, io| {
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        let edge = 1u64 << SMMU_IAS;
        let live = r.live();
        let waits = r.completions();
        let e = ctx.map(
            io,
            Iova::new(edge - K4),
            PhysAddr::new(0x6000_0000),
            2 * K4,
            RW,
        );
        assert_eq!(
            e,
            Err(Error::BeyondInputWidth {
                last: Iova::new(edge + K4 - 1),
                ias: SMMU_IAS,
                unit: SMMU
            })
        );
        // Nothing written, nothing invalidated, nothing reachable, nothing recorded.
        assert_eq!(r.live(), live);
        assert_eq!(r.completions(), waits);
        for iova in [edge - K4, edge] {
            assert_eq!(r.vtd_read(RID_A, None, iova), None, "{iova:#x}");
            assert_eq!(ctx.translate(io, Iova::new(iova)).unwrap(), None);
        }
        assert_eq!(r.smmu_read(SID_A, None, edge - K4), None);
        ctx.audit(io).unwrap();
        // The usable ranges end at the narrowest width: what `map` accepts.
        let mut ranges = [IovaRange {
            start: Iova::ZERO,
            end: Iova::ZERO,
        }; 8];
        let n = ctx.iova_ranges(io, &mut ranges).unwrap();
        assert_eq!(ranges[n - 1].end, Iova::new(edge));
        ctx.map(io, Iova::new(edge - K4), PhysAddr::new(0x6000_0000), K4, RW)
            .unwrap();
        assert_eq!(
            r.vtd_read(RID_A, None, edge - K4).map(|t| t.0),
            Some(0x6000_0000)
        );
        assert_eq!(
            r.smmu_read(SID_A, None, edge - K4).map(|t| t.0),
            Some(0x6000_0000)
        );
        assert_eq!(ctx.unmap(io, Iova::ZERO, UNMAP_ALL), Ok(K4));
        assert_eq!(r.vtd_read(RID_A, None, edge - K4), None);
        // Once the SMMUv3 device leaves (its domain freed), the VT-d width is the limit.
        ctx.detach(s).unwrap();
        ctx.map(
            io,
            Iova::new(edge - K4),
            PhysAddr::new(0x6000_0000),
            2 * K4,
            RW,
        )
        .unwrap();
        assert_eq!(
            r.vtd_read(RID_A, None, edge).map(|t| t.0),
            Some(0x6000_1000)
        );
    });
}

/// The IOASID maps a page above the SMMUv3 domain's width (only a VT-d device attached): an
/// SMMUv3 device's attach is refused naming the width, and nothing is left behind: no SMMUv3
/// domain, no page, the device unattached and faulting, the VT-d side as it was. Detached
/// from the VT-d unit too, the IOASID has no domain; the same attach is still refused, as
/// the mapping is.
#[test]
fn an_attach_narrower_than_a_mapping_is_refused_with_nothing_left_behind() {
    with_ioasid(|r, ctx, io| {
        let v = ctx.bind(vtd_dev(RID_A), false).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        ctx.attach(v, io).unwrap();
        let high = (1u64 << SMMU_IAS) + M2;
        ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0x6000_0000), K4, RW)
            .unwrap();
        ctx.map(io, Iova::new(high), PhysAddr::new(0x6100_0000), K4, RW)
            .unwrap();
        let (live, domains) = (r.live(), r.smmu_domains());
        let refused = Err(Error::Incompatible {
            device: s,
            reason: Incompatibility::Missing(Missing::AddressWidth {
                need: SMMU_IAS + 1,
                have: SMMU_IAS,
            }),
        });
        assert_eq!(ctx.attach(s, io), refused);
        assert_eq!(r.live(), live, "pages left behind by the refused attach");
        assert_eq!(r.smmu_domains(), domains);
        assert_eq!(ctx.attachment(s, None).unwrap(), None);
        assert_eq!(r.smmu_read(SID_A, None, 0x10_0000), None);
        assert_eq!(
            r.vtd_read(RID_A, None, high).map(|t| t.0),
            Some(0x6100_0000)
        );
        ctx.audit(io).unwrap();
        ctx.detach(v).unwrap();
        assert_eq!(ctx.attach(s, io), refused);
        assert_eq!(r.smmu_domains(), domains);
        // Without the mapping beyond the width, the attach goes through.
        assert_eq!(ctx.unmap(io, Iova::new(high), K4), Ok(K4));
        ctx.attach(s, io).unwrap();
        assert_eq!(
            r.smmu_read(SID_A, None, 0x10_0000).map(|t| t.0),
            Some(0x6000_0000)
        );
    });
}

/// A VT-d device bound with a direct region above the SMMUv3 domain's width, attached to an
/// IOASID that has an SMMUv3 domain: refused before the region is mapped anywhere.
#[test]
fn a_direct_region_beyond_a_domain_of_the_ioasid_is_refused() {
    with_ioasid(|r, ctx, io| {
        let s = ctx.bind(smmu_dev(SID_A), false).unwrap();
        ctx.attach(s, io).unwrap();
        let at = 1u64 << SMMU_IAS;
        let region = iommu_engine::ioasid::DirectRegion::new(
            IovaRange {
                start: Iova::new(at),
                end: Iova::new(at + K4),
            },
            false,
        )
        .unwrap();
        let v = ctx
            .bind_with_direct(vtd_dev(RID_A), false, None, &[region])
            .unwrap();
        let (live, vtd_domains) = (r.live(), r.vtd_domains());
        assert_eq!(
            ctx.attach(v, io),
            Err(Error::BeyondInputWidth {
                last: Iova::new(at + K4 - 1),
                ias: SMMU_IAS,
                unit: SMMU
            })
        );
        assert_eq!((r.live(), r.vtd_domains()), (live, vtd_domains));
        assert_eq!(ctx.translate(io, Iova::new(at)).unwrap(), None);
        assert_eq!(ctx.attachment(v, None).unwrap(), None);
        ctx.audit(io).unwrap();
    });
}
