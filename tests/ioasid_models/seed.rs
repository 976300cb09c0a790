//! The seed flow end to end on each model, and the attach that must fail without snoop control.

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags};
use iommu_engine::iommu::{Missing, Source};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::smmuv3::SmmuModelConfig;
use iommu_engine::smmuv3::platform::CANWBS_NOT_DECLARED;
use iommu_engine::smmuv3::{DeviceFacts, StreamId};

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

#[test]
fn seed_flow_on_vtd_sets_snp_and_unmap_flushes_the_iotlb() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx.bind(vtd_dev(RID_A), true).unwrap();
        let info = ctx.device_info(dev).unwrap();
        let c = info.capabilities;
        assert_eq!(info.label, vtd_dev(RID_A));
        assert!(info.no_snoop_capable);
        // QEMU's unit: 48-bit AGAW and HAW, 4K/2M/1G, no PASIDs in legacy mode, SC as
        // configured, no dirty tracking nor nesting, a walker that does not snoop (ECAP.C = 0).
        assert_eq!(
            (c.ias, c.oas, c.page_sizes),
            (48, 48, 1 << 12 | 1 << 21 | 1 << 30)
        );
        assert_eq!(c.pasid_bits, 0);
        assert!(c.enforce_snoop && !c.dirty_tracking && !c.nesting && !c.coherent_walk);
        // The output width is the platform's (DMAR), the input width the unit's.
        assert_eq!(
            (c.sources.oas, c.sources.ias),
            (
                iommu_engine::vtd::platform::DMAR_HAW,
                Source::Register("CAP.SAGAW")
            )
        );

        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        assert_eq!(ctx.flags(io).unwrap(), IoasidFlags::ENFORCE_SNOOP);
        ctx.attach(dev, io).unwrap();
        assert_eq!(r.vtd_domains(), 1);
        ctx.map(
            io,
            Iova::new(0x40_0000),
            PhysAddr::new(0x7000_0000),
            M2 + K4,
            RW,
        )
        .unwrap();
        // Both the 2 MiB page and the 4 KiB page after it force snooping (SNP).
        assert_eq!(
            r.vtd_read(RID_A, None, 0x40_1234),
            Some((0x7000_1234, true))
        );
        assert_eq!(
            r.vtd_read(RID_A, None, 0x60_0010),
            Some((0x7020_0010, true))
        );
        assert!(r.vtd_cached(RID_A, 0x40_1234) && r.vtd_cached(RID_A, 0x60_0010));

        let before = r.completions();
        assert_eq!(ctx.unmap(io, Iova::new(0x40_0000), M2 + K4), Ok(M2 + K4));
        assert_eq!(r.completions().0, before.0 + 1, "one wait for one unmap");
        // The IOTLB held both entries: the fault proves they were invalidated.
        assert_eq!(r.vtd_read(RID_A, None, 0x40_1234), None);
        assert_eq!(r.vtd_read(RID_A, None, 0x60_0010), None);
        r.drain();
    });
}

#[test]
fn seed_flow_on_smmuv3_with_canwbs_snoops_and_unmap_flushes_the_tlb() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let info = ctx.device_info(dev).unwrap();
        let c = info.capabilities;
        assert!(!info.no_snoop_capable);
        // QEMU-like: OAS 44, stage 2 input 44 bits, 4K granule with blocks, no substreams,
        // CANWBS declared so snooping can be enforced, both stages (nesting), no HTTU.
        assert_eq!(
            (c.ias, c.oas, c.page_sizes),
            (44, 44, 1 << 12 | 1 << 21 | 1 << 30)
        );
        assert_eq!(c.pasid_bits, 0);
        assert!(c.enforce_snoop && c.nesting && c.coherent_walk && !c.dirty_tracking);
        assert_eq!(
            c.sources.enforce_snoop,
            Source::Firmware("IORT root complex (test rig)")
        );
        assert_eq!(c.sources.oas, Source::Register("IDR5.OAS"));

        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(
            io,
            Iova::new(0x40_0000),
            PhysAddr::new(0x7000_0000),
            M2 + K4,
            RW,
        )
        .unwrap();
        // A No-Snoop transaction snoops (the platform's CANWBS).
        assert_eq!(
            r.smmu_read(SID_A, None, 0x40_1234),
            Some((0x7000_1234, true))
        );
        assert_eq!(
            r.smmu_read(SID_A, None, 0x60_0010),
            Some((0x7020_0010, true))
        );
        assert!(r.smmu_cached(SID_A, 0x40_1234) && r.smmu_cached(SID_A, 0x60_0010));

        let before = r.completions();
        assert_eq!(ctx.unmap(io, Iova::new(0x40_0000), M2 + K4), Ok(M2 + K4));
        assert_eq!(
            r.completions().1,
            before.1 + 1,
            "one CMD_SYNC for one unmap"
        );
        assert_eq!(r.smmu_read(SID_A, None, 0x40_1234), None);
        assert_eq!(r.smmu_read(SID_A, None, 0x60_0010), None);
        r.drain();
    });
}

#[test]
fn without_enforce_snoop_the_models_let_no_snoop_through() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(false), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let v = ctx.bind(vtd_dev(RID_A), true).unwrap();
        let s = ctx.bind(smmu_dev(SID_A), true).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(v, io).unwrap();
        ctx.attach(s, io).unwrap();
        ctx.map(io, Iova::new(0x1000), PhysAddr::new(0x9000), K4, RW)
            .unwrap();
        assert_eq!(r.vtd_read(RID_A, None, 0x1000), Some((0x9000, false)));
        assert_eq!(r.smmu_read(SID_A, None, 0x1000), Some((0x9000, false)));
    });
}

/// Attaches a device of a unit that cannot enforce snooping to an ENFORCE_SNOOP IOASID that
/// already has a mapping, and checks that the refusal names the capability (VT-d) or the
/// missing declaration (SMMUv3) and changes nothing.
fn refused_without_snoop_control(r: &Rig<'_, '_>, on_vtd: bool) {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let (label, id) = if on_vtd {
        (vtd_dev(RID_A), RID_A)
    } else {
        (smmu_dev(SID_A), SID_A)
    };
    let dev = ctx.bind(label, true).unwrap();
    assert!(!ctx.device_info(dev).unwrap().capabilities.enforce_snoop);
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0x5000_0000), K4, RW)
        .unwrap();
    let (live, domains) = (r.live(), (r.vtd_domains(), r.smmu_domains()));
    let stats = (r.vm.stats(), r.sm.stats());
    let missing = if on_vtd {
        Missing::SnoopControl
    } else {
        Missing::NotDeclared {
            what: CANWBS_NOT_DECLARED,
        }
    };
    assert_eq!(
        ctx.attach(dev, io),
        Err(Error::Incompatible {
            device: dev,
            reason: Incompatibility::Missing(missing)
        })
    );
    // Nothing allocated, nothing written, no command issued, and the device still faults.
    assert_eq!(r.live(), live);
    assert_eq!((r.vtd_domains(), r.smmu_domains()), domains);
    assert_eq!((r.vm.stats(), r.sm.stats()), stats);
    let faults = if on_vtd {
        r.vtd_read(id, None, 0x10_0000)
    } else {
        r.smmu_read(id, None, 0x10_0000)
    };
    assert_eq!(faults, None);
    // The IOASID is intact: the mapping is still recorded and nothing is attached.
    assert_eq!(
        ctx.translate(io, Iova::new(0x10_0000))
            .unwrap()
            .map(|m| m.pa),
        Some(PhysAddr::new(0x5000_0000))
    );
    assert_eq!(ctx.detach(dev), Err(Error::NotAttached(dev)));
    ctx.free(io).unwrap();
    r.drain();
}

#[test]
fn vtd_without_sc_refuses_an_enforce_snoop_attach_and_changes_nothing() {
    with_rig(VtdSetup::legacy(false), SmmuSetup::qemu(true), |r| {
        refused_without_snoop_control(r, true)
    });
}

#[test]
fn smmuv3_without_canwbs_refuses_an_enforce_snoop_attach_and_changes_nothing() {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(false), |r| {
        refused_without_snoop_control(r, false)
    });
}

/// FWB and COHACC are everything a register can say, and still not enough: a No-Snoop
/// transaction may bypass the caches before the SMMU's attributes apply.
#[test]
fn smmuv3_with_fwb_and_cohacc_but_no_canwbs_refuses_too() {
    let s = SmmuSetup {
        model: SmmuModelConfig::qemu_like()
            .with_fwb(true)
            .with_cohacc(true),
        ..SmmuSetup::qemu(false)
    };
    with_rig(VtdSetup::legacy(true), s, |r| {
        refused_without_snoop_control(r, false)
    });
}

/// One StreamID behind a root complex without CANWBS: the unit's other devices enforce
/// snooping, this one is refused before anything is built.
#[test]
fn smmuv3_refuses_the_one_device_the_platform_does_not_declare() {
    let mut s = SmmuSetup::qemu(true);
    s.unit.platform = s
        .unit
        .platform
        .declare(
            StreamId(SID_A),
            StreamId(SID_A),
            DeviceFacts {
                canwbs: false,
                ..s.unit.platform.unit
            },
        )
        .unwrap();
    with_rig(VtdSetup::legacy(true), s, |r| {
        refused_without_snoop_control(r, false)
    });
}
