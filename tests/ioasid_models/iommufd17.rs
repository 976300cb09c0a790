//! iommufd behaviours of issue 17 (items 4-6) on both unit models: page-size policy
//! (`IOMMU_OPTION_HUGE_PAGES`), `IOMMU_IOAS_COPY`, `IOMMU_IOAS_IOVA_RANGES` and per-device
//! capabilities declared at bind. Every claim is read back through a model's translation or
//! the unit's own table.

use iommu_engine::ioasid::{
    DeviceLabel, Error, Incompatibility, IoasidCtx, IoasidFlags, BIND_HINTS, SMALL_PAGE_LOG2,
};
use iommu_engine::iommu::{DeviceHints, DomainHandle, Iommu, Missing};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::{IovaRange, Prot};
use iommu_engine::sim::walk::Access;

use crate::rig::*;

const RW: Prot = Prot::READ.union(Prot::WRITE);

/// The sizes (log2) of the leaves every domain of `unit` holds in `[iova, iova + len)`.
fn leaf_sizes(unit: &dyn Iommu, iova: u64, len: u64) -> Vec<u32> {
    let mut sizes = Vec::new();
    for h in 0..64u16 {
        let _ = unit.for_each_mapping(DomainHandle(h), Iova::new(iova), len, &mut |l| {
            sizes.push(l.size_log2)
        });
    }
    sizes
}

/// Both units, each with one device: (the unit, the device's label, a read through the model).
fn on_both_units(f: impl Fn(&Rig<'_, '_>, &dyn Iommu, DeviceLabel, &dyn Fn(u64) -> Option<u64>)) {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        f(r, r.vtd, vtd_dev(RID_A), &|iova| {
            r.vtd_read(RID_A, None, iova).map(|t| t.0)
        });
        f(r, r.smmu, smmu_dev(SID_A), &|iova| {
            r.smmu_read(SID_A, None, iova).map(|t| t.0)
        });
    });
}

/// iommufd `IOMMU_OPTION_HUGE_PAGES` = 0: a 2 MiB-aligned 2 MiB map writes 512 4 KiB leaves
/// in the unit's domain (one 2 MiB block with the option on), whether the option was set
/// before the attach (the domain is built limited, and the earlier mapping copied in small
/// pages) or on an attached IOASID with nothing mapped; DMA still reaches every page. Changing
/// it once the IOASID has both a domain and a mapping is refused, as iommufd does.
#[test]
fn option_huge_pages_off_maps_only_4k() {
    on_both_units(|_r, unit, label, read| {
        let ctx = IoasidCtx::new(_r.reg, _r.arena, 0);
        let dev = ctx.bind(label, false).unwrap();
        let base = 0x4000_0000;
        let pa = 0x8000_0000;
        // On (the default): one block.
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [21]);
        assert_eq!(ctx.set_huge_pages(io, false), Err(Error::Busy));
        assert_eq!(ctx.max_page_log2(io), Ok(None));
        ctx.unmap(io, Iova::new(base), M2).unwrap();
        // Off on an attached IOASID with nothing mapped: 512 pages.
        ctx.set_huge_pages(io, false).unwrap();
        assert_eq!(ctx.max_page_log2(io), Ok(Some(SMALL_PAGE_LOG2)));
        ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [12; 512]);
        for off in [0, 0x1000, M2 - 0x1000] {
            assert_eq!(read(base + off + 8), Some(pa + off + 8));
        }
        ctx.detach(dev).unwrap();
        // Off before the attach: the mapping made with no domain is copied in 4 KiB pages.
        let late = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(late, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        ctx.set_huge_pages(late, false).unwrap();
        ctx.attach(dev, late).unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [12; 512]);
        assert_eq!(read(base + M2 - 8), Some(pa + M2 - 8));
        // And on again (no mapping yet in a new IOASID): blocks again.
        ctx.detach(dev).unwrap();
        ctx.unmap(late, Iova::new(base), M2).unwrap();
        ctx.attach(dev, late).unwrap();
        ctx.set_huge_pages(late, true).unwrap();
        ctx.map(late, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        assert_eq!(leaf_sizes(unit, base, M2), [21]);
        ctx.detach(dev).unwrap();
    });
}

/// The input width of the first domain `unit` holds.
fn domain_ias(unit: &dyn Iommu) -> u32 {
    (0..64u16)
        .find_map(|h| unit.domain_geometry(DomainHandle(h)).ok())
        .expect("a domain")
        .0
}

/// Devices A and B of one unit: (the unit, A, B, a read by B through the model).
fn two_devices_on_both_units(
    f: impl Fn(&Rig<'_, '_>, &dyn Iommu, DeviceLabel, DeviceLabel, &dyn Fn(u64, bool) -> Option<u64>),
) {
    with_rig(VtdSetup::legacy(true), SmmuSetup::qemu(true), |r| {
        f(r, r.vtd, vtd_dev(RID_A), vtd_dev(RID_B), &|iova, write| {
            let access = if write { Access::WRITE } else { Access::READ };
            r.vm.translate(RID_B as u16, None, iova, access)
                .ok()
                .map(|t| t.pa)
        });
        f(
            r,
            r.smmu,
            smmu_dev(SID_A),
            smmu_dev(SID_B),
            &|iova, write| {
                let access = if write { Access::WRITE } else { Access::READ };
                r.sm.translate(SID_B, None, iova, access).ok().map(|t| t.pa)
            },
        );
    });
}

const SRC: u64 = 0x4000_0000;
const DST: u64 = 0x5000_0000;
const PA_BLOCK: u64 = 0x8000_0000;
const PA_RO: u64 = 0x9000_0000;

/// iommufd `IOMMU_IOAS_COPY`: the destination maps the source's physical pages at its own
/// IOVA, with the source's permissions (a read-only run stays read-only), from the middle of a
/// 2 MiB block on; the device attached to the destination reaches them, the source keeps its
/// mappings.
#[test]
fn ioas_copy_maps_same_pages_in_destination() {
    two_devices_on_both_units(|r, _unit, a, b, read_b| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let (da, db) = (ctx.bind(a, false).unwrap(), ctx.bind(b, false).unwrap());
        let (src, dst) = (
            ctx.alloc(IoasidFlags::empty()).unwrap(),
            ctx.alloc(IoasidFlags::empty()).unwrap(),
        );
        ctx.attach(da, src).unwrap();
        ctx.attach(db, dst).unwrap();
        ctx.map(src, Iova::new(SRC), PhysAddr::new(PA_BLOCK), M2, RW)
            .unwrap();
        ctx.map(
            src,
            Iova::new(SRC + M2),
            PhysAddr::new(PA_RO),
            4 * K4,
            Prot::READ,
        )
        .unwrap();
        let (from, len) = (SRC + K4, M2 - K4 + 4 * K4);
        ctx.copy(src, Iova::new(from), dst, Iova::new(DST + K4), len)
            .unwrap();
        for (off, pa, prot) in [
            (K4, PA_BLOCK + K4, RW),
            (M2 - K4, PA_BLOCK + M2 - K4, RW),
            (M2, PA_RO, Prot::READ),
            (M2 + 3 * K4, PA_RO + 3 * K4, Prot::READ),
        ] {
            let m = ctx.translate(dst, Iova::new(DST + off)).unwrap().unwrap();
            assert_eq!((m.pa.get(), m.prot), (pa, prot), "dst + {off:#x}");
            assert_eq!(read_b(DST + off + 8, false), Some(pa + 8));
            assert_eq!(
                read_b(DST + off, true).is_some(),
                prot.contains(Prot::WRITE)
            );
        }
        // Nothing outside the copied range; the source unchanged.
        assert_eq!(ctx.translate(dst, Iova::new(DST)).unwrap(), None);
        assert_eq!(
            ctx.translate(dst, Iova::new(DST + M2 + 4 * K4)).unwrap(),
            None
        );
        let m = ctx.translate(src, Iova::new(SRC)).unwrap().unwrap();
        assert_eq!((m.pa.get(), m.size_log2), (PA_BLOCK, 21));
        // Same IOASID, another range.
        ctx.copy(src, Iova::new(SRC + M2), src, Iova::new(DST), 4 * K4)
            .unwrap();
        let m = ctx.translate(src, Iova::new(DST + K4)).unwrap().unwrap();
        assert_eq!((m.pa.get(), m.prot), (PA_RO + K4, Prot::READ));
        r.drain();
        drop(ctx);
    });
}

/// `IOMMU_IOAS_COPY` is all or nothing: a source with a hole is refused naming the first
/// IOVA that maps nothing, before anything is mapped; a destination that refuses the second
/// run (it is mapped already there) gets the first run unmapped again, with the unit's
/// invalidation, and keeps what it had.
#[test]
fn ioas_copy_is_all_or_nothing() {
    two_devices_on_both_units(|r, _unit, a, b, read_b| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let (da, db) = (ctx.bind(a, false).unwrap(), ctx.bind(b, false).unwrap());
        let (src, dst) = (
            ctx.alloc(IoasidFlags::empty()).unwrap(),
            ctx.alloc(IoasidFlags::empty()).unwrap(),
        );
        ctx.attach(da, src).unwrap();
        ctx.attach(db, dst).unwrap();
        ctx.map(src, Iova::new(SRC), PhysAddr::new(PA_BLOCK), 4 * K4, RW)
            .unwrap();
        ctx.map(
            src,
            Iova::new(SRC + 4 * K4),
            PhysAddr::new(PA_RO),
            4 * K4,
            Prot::READ,
        )
        .unwrap();
        // A hole at SRC + 8 pages.
        let before = r.completions();
        assert_eq!(
            ctx.copy(src, Iova::new(SRC), dst, Iova::new(DST), 12 * K4),
            Err(Error::NotMapped(Iova::new(SRC + 8 * K4)))
        );
        assert_eq!(ctx.translate(dst, Iova::new(DST)).unwrap(), None);
        assert_eq!(
            r.completions(),
            before,
            "nothing mapped, nothing to invalidate"
        );
        // The destination holds a page where the second run would go.
        ctx.map(
            dst,
            Iova::new(DST + 6 * K4),
            PhysAddr::new(0xa000_0000),
            K4,
            RW,
        )
        .unwrap();
        let before = r.completions();
        let e = ctx.copy(src, Iova::new(SRC), dst, Iova::new(DST), 8 * K4);
        assert!(matches!(e, Err(Error::PageTable(_))), "{e:?}");
        for off in [0, 3 * K4, 4 * K4, 7 * K4] {
            assert_eq!(ctx.translate(dst, Iova::new(DST + off)).unwrap(), None);
            assert_eq!(read_b(DST + off, false), None);
        }
        assert_eq!(read_b(DST + 6 * K4, false), Some(0xa000_0000));
        let after = r.completions();
        assert!(
            after.0 + after.1 > before.0 + before.1,
            "the first run's unmap was invalidated: {before:?} -> {after:?}"
        );
        r.drain();
        drop(ctx);
    });
}

/// iommufd `IOMMU_IOAS_IOVA_RANGES`: the ranges `map` accepts -- the narrowest domain's
/// width less the unit's reserved regions (VT-d's interrupt window) and the context's -- in
/// the caller's buffer; a buffer too small is refused with the count needed.
#[test]
fn ioas_iova_ranges_excludes_reserved_and_beyond_aw() {
    on_both_units(|r, unit, label, _read| {
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        let dev = ctx.bind(label, false).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        let hole = IovaRange {
            start: Iova::new(0x1000_0000),
            end: Iova::new(0x1010_0000),
        };
        ctx.reserve_region(hole).unwrap();
        let range = |s: u64, e: u64| IovaRange {
            start: Iova::new(s),
            end: Iova::new(e),
        };
        let mut out = [range(0, 0); 8];
        // No domain yet: the record's 57 bits, less the context's region.
        let n = ctx.iova_ranges(io, &mut out).unwrap();
        assert_eq!(
            out[..n],
            [range(0, 0x1000_0000), range(0x1010_0000, 1 << 57)]
        );
        ctx.attach(dev, io).unwrap();
        let top = 1u64 << domain_ias(unit);
        let mut want = vec![range(0, 0x1000_0000)];
        let mut at = 0x1010_0000;
        for reserved in unit.reserved_regions() {
            want.push(range(at, reserved.start.get()));
            at = reserved.end.get();
        }
        want.push(range(at, top));
        let n = ctx.iova_ranges(io, &mut out).unwrap();
        assert_eq!(out[..n], want[..]);
        // Every range is mappable at both ends; just past the top is not.
        for r in &want {
            let rw = Prot::READ;
            ctx.map(io, r.start, PhysAddr::new(0x7000_0000), K4, rw)
                .unwrap();
            let last = Iova::new(r.end.get() - K4);
            ctx.map(io, last, PhysAddr::new(0x7000_0000), K4, rw)
                .unwrap();
        }
        assert!(ctx
            .map(
                io,
                Iova::new(top),
                PhysAddr::new(0x7000_0000),
                K4,
                Prot::READ
            )
            .is_err());
        let mut small = [range(0, 0); 1];
        assert_eq!(
            ctx.iova_ranges(io, &mut small),
            Err(Error::BufferTooSmall { needed: want.len() })
        );
        assert_eq!(small[0], want[0]);
        drop(ctx);
    });
}

/// Binds `label` with `hints`, attaches it to a new IOASID, maps a page, lets the device use it
/// through its ATC (a translated transaction on SMMUv3, a translation request on VT-d), unmaps
/// it. Returns (whether the translated access passed, ATC invalidations the unmap issued).
fn ats_round_trip(
    r: &Rig<'_, '_>,
    label: DeviceLabel,
    hints: DeviceHints,
) -> Result<(bool, u64), Error> {
    let ctx = IoasidCtx::new(r.reg, r.arena, 0);
    let dev = ctx.bind_with(label, false, hints)?;
    assert_eq!(ctx.device_info(dev)?.hints, hints);
    let io = ctx.alloc(IoasidFlags::empty())?;
    ctx.attach(dev, io)?;
    ctx.map(io, Iova::new(0x3000), PhysAddr::new(0x7000_0000), K4, RW)?;
    let id = label.id.0;
    let (passed, inv) = if label.unit == SMMU {
        let ok =
            r.sm.translated_transaction(id, 0x7000_0000, Access::READ)
                .is_ok();
        r.drain();
        r.sm.reset_stats();
        ctx.unmap(io, Iova::new(0x3000), K4)?;
        (ok, r.sm.stats().commands.get(&0x40).copied().unwrap_or(0))
    } else {
        let ok =
            r.vm.ats_translate(id as u16, None, 0x3000, Access::READ)
                .is_ok();
        r.vm.reset_stats();
        ctx.unmap(io, Iova::new(0x3000), K4)?;
        (ok, r.vm.stats().device_tlb)
    };
    ctx.detach(dev)?;
    ctx.unbind(dev)?;
    Ok((passed, inv))
}

/// A device bound with ATS (`VFIO_DEVICE_BIND_IOMMUFD` of a device whose ATS capability is
/// enabled): both units let it use translated requests (VT-d: the context entry allows the
/// device TLB; SMMUv3: `STE.EATS`) and invalidate its ATC behind every unmap (VT-d device-TLB
/// invalidation, SMMUv3 CMD_ATC_INV). Bound without ATS, SMMUv3 forbids translated
/// transactions and issues no ATC invalidation; a unit without ATS refuses the attach.
#[test]
fn device_bound_with_ats_gets_atc_invalidations() {
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let v = VtdSetup {
        model: iommu_engine::sim::vtd::VtdModelConfig::qemu_default().with_dt(true),
        mode: iommu_engine::vtd::Mode::Legacy,
    };
    let mut s = SmmuSetup::qemu(true);
    s.model = s.model.with_ats(true);
    with_rig(v, s, |r| {
        assert_eq!(ats_round_trip(r, vtd_dev(RID_A), ats), Ok((true, 1)));
        assert_eq!(ats_round_trip(r, smmu_dev(SID_A), ats), Ok((true, 1)));
        let plain = DeviceHints::default();
        assert_eq!(ats_round_trip(r, smmu_dev(SID_B), plain), Ok((false, 0)));
        assert_eq!(ats_round_trip(r, vtd_dev(RID_B), plain).map(|x| x.1), Ok(0));
    });
    // Units without ATS (VT-d without ECAP.DT, SMMUv3 without IDR0.ATS): refused, named.
    let v = VtdSetup {
        model: iommu_engine::sim::vtd::VtdModelConfig::qemu_default().with_dt(false),
        mode: iommu_engine::vtd::Mode::Legacy,
    };
    with_rig(v, SmmuSetup::qemu(true), |r| {
        for label in [vtd_dev(RID_A), smmu_dev(SID_A)] {
            let e = ats_round_trip(r, label, ats);
            assert!(
                matches!(
                    e,
                    Err(Error::Incompatible {
                        reason: Incompatibility::Missing(Missing::Mode { .. }),
                        ..
                    })
                ),
                "{e:?}"
            );
        }
    });
}

/// A device bound with ATS, unbound, then bound again without it (iommufd: a new
/// `VFIO_DEVICE_BIND_IOMMUFD` whose ATS capability is off): its translated requests are
/// refused again and no ATC invalidation is issued for it. A translated request bypasses the
/// unit's tables, so ATS left on from the earlier bind would let the device reach any address.
/// SMMUv3 only: the VT-d model answers translation requests whatever the context entry's `TT`
/// / `DTE` say (a model gap), so it cannot tell; VT-d rewrites `TT` at every attach.
#[test]
fn rebind_without_ats_refuses_translated_requests() {
    let ats = DeviceHints {
        ats: true,
        ..DeviceHints::default()
    };
    let v = VtdSetup {
        model: iommu_engine::sim::vtd::VtdModelConfig::qemu_default().with_dt(true),
        mode: iommu_engine::vtd::Mode::Legacy,
    };
    let mut s = SmmuSetup::qemu(true);
    s.model = s.model.with_ats(true);
    with_rig(v, s, |r| {
        let plain = DeviceHints::default();
        let label = smmu_dev(SID_A);
        assert_eq!(ats_round_trip(r, label, ats), Ok((true, 1)));
        let again = ats_round_trip(r, label, plain);
        assert_eq!(again, Ok((false, 0)), "rebound without ATS");
    });
}

/// A device that is not PASID-capable (its PASID width declared 0 at bind) behind a unit that
/// is: `attach_pasid` is refused naming the device's width, before the unit is asked, and
/// `device_info` (iommufd `IOMMU_GET_HW_INFO`) reports the device's width with the bind as its
/// source; a device declaring 20 bits, or nothing, attaches the same PASID.
#[test]
fn device_without_pasid_refused_pasid_attach() {
    with_rig(
        VtdSetup::scalable(),
        SmmuSetup::qemu(true).with_ssid_bits(8),
        |r| {
            for (label, other) in [
                (vtd_dev(RID_A), vtd_dev(RID_B)),
                (smmu_dev(SID_A), smmu_dev(SID_B)),
            ] {
                let ctx = IoasidCtx::new(r.reg, r.arena, 4);
                let none = DeviceHints {
                    pasid_bits: Some(0),
                    pri: true,
                    ..DeviceHints::default()
                };
                let dev = ctx.bind_with(label, false, none).unwrap();
                let info = ctx.device_info(dev).unwrap();
                assert_eq!(info.capabilities.pasid_bits, 0);
                assert_eq!(info.capabilities.sources.pasid_bits, BIND_HINTS);
                assert!(info.hints.pri);
                let io = ctx.alloc(IoasidFlags::PASID).unwrap();
                let pasid = ctx.alloc_pasid().unwrap();
                assert_eq!(
                    ctx.attach_pasid(dev, pasid, io),
                    Err(Error::Incompatible {
                        device: dev,
                        reason: Incompatibility::DevicePasid { bits: 0 }
                    })
                );
                assert_eq!(ctx.attachment(dev, Some(pasid)), Ok(None));
                assert_eq!(
                    r.domains(if label.unit == SMMU { r.smmu } else { r.vtd }),
                    0
                );
                let wide = DeviceHints {
                    pasid_bits: Some(20),
                    ..DeviceHints::default()
                };
                let ok = ctx.bind_with(other, false, wide).unwrap();
                let unit_bits = ctx.device_info(ok).unwrap().capabilities.pasid_bits;
                assert!(unit_bits > 0 && unit_bits <= 20);
                ctx.attach_pasid(ok, pasid, io).unwrap();
                ctx.detach_pasid(ok, pasid).unwrap();
                ctx.unbind(dev).unwrap();
                ctx.unbind(ok).unwrap();
            }
        },
    );
}
