//! Nested translation from the IOASID layer (issue 17, item 1): a child IOASID holding a
//! guest's stage 1 over a NEST_PARENT IOASID, devices attached to it, DMA through both stages
//! on the models, and the guest's invalidations passed through, rewritten with the host's tags
//! and IDs or refused. Named after the iommufd behaviour each matches.

use iommu_engine::ioasid::{Error, IoasidCtx, IoasidFlags};
use iommu_engine::iommu::{Refusal, UserStage1};
use iommu_engine::mem::{Iova, PhysAddr};

use crate::guest::*;
use crate::rig::*;

/// The guest's StreamID for SID_A (iommufd vDEVICE virt_id).
const VSID_A: u32 = 0x7;
const ASID: u64 = 5;

/// The guest's tables, hand-encoded from IHI 0070 G.b §5.4 (CD) and Arm ARM D8 (stage 1,
/// 4 KiB granule, start level 1): page 0 CD table (one CD), 1-3 levels 1-3, 4 and 5 data.
fn guest_smmu_tables(g: &GuestRam<'_>) {
    // CD: T0SZ 32, TG0 4K, IR0/OR0 WB, SH0 inner, EPD1 (bit 30), V, IPS 40 bits, AA64, R,
    // A, ASID.
    let dw0 = 32
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | 2 << 32
        | 1 << 41
        | 1 << 45
        | 1 << 46
        | ASID << 48;
    g.write(0, 8, g.ipa(1));
    g.write(0, 24, 0xff);
    g.write(0, 0, dw0);
    g.write(1, ((IOVA >> 30) & 0x1ff) * 8, g.ipa(2) | 3);
    g.write(2, ((IOVA >> 21) & 0x1ff) * 8, g.ipa(3) | 3);
    guest_leaf(g, 4);
}

/// The guest points IOVA at its data page `n`: AP EL0 RW, SH inner, AF, nG.
fn guest_leaf(g: &GuestRam<'_>, n: usize) {
    let s1_rw = 1 << 6 | 3 << 8 | 1 << 10 | 1 << 11;
    g.write(3, ((IOVA >> 12) & 0x1ff) * 8, g.ipa(n) | s1_rw | 3);
}

/// QEMU-like with `IDR3.FWB`: the nest parent forces write-back, so the guest's stage 1
/// needs no `CANWBS`.
fn fwb() -> SmmuSetup {
    SmmuSetup::qemu(false).with_fwb()
}

/// The guest's STE words 0 and 1: V, Config = stage-1 translate, its CD table at IPA page 0
/// (one CD), S1DSS = SUBSTREAM0, CD fetches write-back inner shareable.
fn guest_ste(g: &GuestRam<'_>) -> UserStage1 {
    UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | g.ipa(0), 2 | 1 << 2 | 1 << 4 | 3 << 6],
    }
}

fn tlbi_nh_va(vmid: u64, va: u64) -> [u64; 2] {
    [0x12 | vmid << 32 | ASID << 48, va | 1]
}

#[test]
fn hwpt_alloc_nested_over_nest_parent() {
    with_rig(VtdSetup::scalable(), fwb(), |r| {
        let g = GuestRam::new(r.arena, 6);
        {
            let ctx = IoasidCtx::new(r.reg, r.arena, 0);
            let plain = ctx.alloc(IoasidFlags::empty()).unwrap();
            assert_eq!(
                ctx.alloc_nested(plain, guest_ste(&g)),
                Err(Error::NotNestParent(plain))
            );
            guest_smmu_tables(&g);
            let (parent, child) = parent_and_child(&ctx, &g, guest_ste(&g));
            assert_eq!(ctx.nest_parent(child), Ok(Some(parent)));
            // The guest maps by writing its tables, never through the child.
            assert_eq!(
                ctx.map(child, Iova::new(IOVA), PhysAddr::new(g.pa(4)), K4, RW),
                Err(Error::UserOwned(child))
            );
            assert_eq!(ctx.free(parent), Err(Error::Busy));
            let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
            ctx.attach(dev, child).unwrap();
            // DMA through both stages: IOVA -> guest stage 1 -> IPA page 4 -> parent -> PA.
            assert_eq!(
                r.smmu_read(SID_A, None, IOVA + 0x18),
                Some((g.pa(4) + 0x18, false))
            );
            // The parent's own stage 2 alone, as before, for a device attached to it.
            let other = ctx.bind(smmu_dev(SID_B), false).unwrap();
            ctx.attach(other, parent).unwrap();
            assert_eq!(r.smmu_read(SID_B, None, g.ipa(4)), Some((g.pa(4), false)));
            // An IOVA the guest did not map faults (stage 1), one the parent did not map
            // through the guest's table faults too (stage 2): no host memory beyond it.
            assert_eq!(r.smmu_read(SID_A, None, IOVA + 0x20_0000), None);
            g.write(3, ((IOVA >> 12) & 0x1ff) * 8 + 8, 0x7000_0000 | 0x703);
            assert_eq!(r.smmu_read(SID_A, None, IOVA + 0x1000), None);
            ctx.detach(dev).unwrap();
            assert_eq!(r.smmu_read(SID_A, None, IOVA), None);
            ctx.detach(other).unwrap();
            ctx.free(child).unwrap();
            ctx.free(parent).unwrap();
            assert_eq!(r.smmu.audit().map(|a| a.domains), Ok(0));
        }
        assert_eq!(r.smmu_domains(), 0);
    });
}

#[test]
fn hwpt_invalidate_rewrites_vmid_and_refuses_foreign_sid() {
    with_rig(VtdSetup::scalable(), fwb(), |r| {
        let g = GuestRam::new(r.arena, 6);
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        guest_smmu_tables(&g);
        let (parent, child) = parent_and_child(&ctx, &g, guest_ste(&g));
        let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
        let foreign = ctx.bind(smmu_dev(SID_B), false).unwrap();
        ctx.set_virtual_id(dev, Some(VSID_A)).unwrap();
        ctx.set_virtual_id(foreign, Some(VSID_A + 1)).unwrap();
        assert_eq!(ctx.set_virtual_id(foreign, Some(VSID_A)), Err(Error::Busy));
        ctx.attach(dev, child).unwrap();
        assert_eq!(r.smmu_read(SID_A, None, IOVA), Some((g.pa(4), false)));
        // The guest moves IOVA to its page 5; the unit still translates from its TLB.
        guest_leaf(&g, 5);
        assert_eq!(r.smmu_read(SID_A, None, IOVA), Some((g.pa(4), false)));

        // Refused, each naming what the guest does not own, and nothing of the batch issued.
        r.sm.reset_stats();
        let good = tlbi_nh_va(0, IOVA);
        let with_vmid = tlbi_nh_va(3, IOVA);
        assert_eq!(
            ctx.invalidate_user(child, &[good, with_vmid]),
            refused(1, with_vmid, Refusal::Vmid)
        );
        let s12 = [0x28, 0];
        assert_eq!(
            ctx.invalidate_user(child, &[s12]),
            refused(0, s12, Refusal::Type)
        );
        // SID_B is the guest's too, but not attached to the child; 0x20 is a host StreamID.
        for vsid in [VSID_A + 1, SID_A] {
            let cfgi = [0x06 | u64::from(vsid) << 32, 0];
            assert_eq!(
                ctx.invalidate_user(child, &[good, cfgi]),
                refused(1, cfgi, Refusal::ForeignDevice)
            );
        }
        assert_eq!(r.sm.stats().total_commands(), 0);
        assert_eq!(r.smmu_read(SID_A, None, IOVA), Some((g.pa(4), false)));

        // Passed through: the TLBI with the parent's VMID, the CFGI_CD_ALL with SID_A.
        let cfgi_all = [0x06 | u64::from(VSID_A) << 32, 0];
        assert_eq!(ctx.invalidate_user(child, &[good, cfgi_all]), Ok(2));
        let log = r.sm.command_log();
        let vmid = log[0][0] >> 32 & 0xffff;
        assert_ne!(vmid, 0);
        assert_eq!(log[0], [0x12 | vmid << 32 | ASID << 48, IOVA | 1]);
        assert_eq!(log[1], [0x06 | u64::from(SID_A) << 32, 0]);
        assert_eq!(r.sm.stats().syncs, 1);
        assert_eq!(r.smmu_read(SID_A, None, IOVA), Some((g.pa(5), false)));
        // Not a child.
        assert_eq!(
            ctx.invalidate_user(parent, &[good]),
            Err(Error::NotNested(parent))
        );
        drop(ctx);
        assert_eq!(r.smmu_domains(), 0);
    });
}

/// Review 20 D4: a device with direct regions (RMRR, RMR) cannot be attached to a nested
/// child: the child maps nothing (its user domains take no maps), so its regions went into
/// the child's record alone, reaching no table (the device's DMA to them faulted, the attach
/// returned `Ok`); with a user domain already there the region's map was refused
/// (`InvalidDomain`), reported `InvalidationPending`, and the range stayed in the child's
/// record, where no unmap can reach it (`UserOwned`). Refused now, nothing changed. Nothing of
/// such a region was ever mapped in a table, the parent's stage 2 included (this region lies
/// beyond its 44 bits).
#[test]
fn a_device_with_direct_regions_is_not_attached_to_a_nested_child() {
    use iommu_engine::ioasid::DirectRegion;
    use iommu_engine::pgtable::IovaRange;
    with_rig(VtdSetup::scalable(), fwb(), |r| {
        let g = GuestRam::new(r.arena, 6);
        let ctx = IoasidCtx::new(r.reg, r.arena, 0);
        guest_smmu_tables(&g);
        let (parent, child) = parent_and_child(&ctx, &g, guest_ste(&g));
        let region = |start: u64| {
            let range = IovaRange {
                start: Iova::new(start),
                end: Iova::new(start + K4),
            };
            DirectRegion::new(range, false).unwrap()
        };
        let (beyond, low) = (1u64 << 45, 0x40_0000);
        let dev = ctx
            .bind_with_direct(smmu_dev(SID_A), false, None, &[region(beyond)])
            .unwrap();
        // First with no domain on the unit yet, then with the child's user domain there.
        assert_eq!(ctx.attach(dev, child), Err(Error::UserOwned(child)));
        let plain = ctx.bind(smmu_dev(SID_B), false).unwrap();
        ctx.attach(plain, child).unwrap();
        let other = ctx
            .bind_with_direct(smmu_dev(0x400), false, None, &[region(low)])
            .unwrap();
        assert_eq!(ctx.attach(other, child), Err(Error::UserOwned(child)));
        for at in [beyond, low] {
            assert_eq!(ctx.translate(child, Iova::new(at)), Ok(None));
            assert_eq!(ctx.translate(parent, Iova::new(at)), Ok(None));
            assert_eq!(r.smmu_read(SID_A, None, at), None);
        }
        assert_eq!(
            ctx.attachment(dev, None).map(|a| a.map(|a| a.ioasid)),
            Ok(None)
        );
        ctx.audit(child).unwrap();
        // The parent takes them as any IOASID does.
        ctx.attach(other, parent).unwrap();
        assert_eq!(r.smmu_read(0x400, None, low), Some((low, false)));
        ctx.detach(other).unwrap();
        ctx.detach(plain).unwrap();
        ctx.free(child).unwrap();
        ctx.free(parent).unwrap();
    });
}
