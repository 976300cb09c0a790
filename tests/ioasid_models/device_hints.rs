//! What the embedder declares about a device at bind (`IoasidCtx::bind_with`: ATS, the SR-IOV
//! physical function) reaches every attach through the IOASID layer, and `device_info`
//! reports it with its source (issue 15, item 8 beyond the unit).

use iommu_engine::ioasid::{IoasidCtx, IoasidFlags, BIND_HINTS, NO_HINTS};
use iommu_engine::iommu::{DeviceHints, DeviceId};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::vtd::VtdModelConfig;
use iommu_engine::sim::walk::Access;
use iommu_engine::vtd::Mode;

use crate::rig::*;

const PF: u32 = 0x0180;
const VF: u32 = 0x0182;

/// Binds the VF with `hints`, maps a page, lets the device cache it in its ATC, unmaps it;
/// returns (device-TLB invalidations, PFSID mismatches, whether the ATC still holds it).
fn unmap_through_the_atc(hints: Option<DeviceHints>) -> (u64, u64, bool) {
    let model = VtdModelConfig::qemu_default()
        .with_dt(true)
        .with_dit(true)
        .with_virtual_function(VF as u16, PF as u16);
    let v = VtdSetup {
        model,
        mode: Mode::Legacy,
    };
    with_rig(v, SmmuSetup::qemu(true), |r| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = match hints {
            Some(h) => ctx.bind_with(vtd_dev(VF), false, h).unwrap(),
            None => ctx.bind(vtd_dev(VF), false).unwrap(),
        };
        let info = ctx.device_info(dev).unwrap();
        assert_eq!(info.hints, hints.unwrap_or_default());
        let source = if hints.is_some() {
            BIND_HINTS
        } else {
            NO_HINTS
        };
        assert_eq!(info.hints_source, source);
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        let rw = Prot::READ | Prot::WRITE;
        ctx.map(io, Iova::new(0x3000), PhysAddr::new(0x7000_0000), K4, rw)
            .unwrap();
        let _ = r.vm.ats_translate(VF as u16, None, 0x3000, Access::READ);
        r.vm.reset_stats();
        ctx.unmap(io, Iova::new(0x3000), K4).unwrap();
        let s = r.vm.stats();
        let held = r.vm.atc_holds(VF as u16, None, 0x3000);
        ctx.detach(dev).unwrap();
        (s.device_tlb, s.pfsid_mismatches, held)
    })
}

#[test]
fn ats_and_the_physical_function_declared_at_bind_reach_the_unit() {
    let vf = DeviceHints {
        ats: true,
        physical_function: Some(DeviceId(PF)),
        ..DeviceHints::default()
    };
    // Declared: one device-TLB invalidation naming the PF; the VF's ATC is clean.
    assert_eq!(unmap_through_the_atc(Some(vf)), (1, 0, false));
    // ATS without the PF: the unit names the VF itself, which DIT hardware misroutes (the
    // model leaves the ATC stale and counts it).
    let no_pf = DeviceHints {
        physical_function: None,
        ..vf
    };
    assert_eq!(unmap_through_the_atc(Some(no_pf)), (1, 1, true));
    // Bound without hints: no ATS in the context entry (TT = 00b), so no device-TLB
    // invalidation. (The model's `ats_translate` does not check TT, so its ATC would hold the
    // page: a device without ATS does not ask.)
    assert_eq!(unmap_through_the_atc(None).0, 0);
}
