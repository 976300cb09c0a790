//! An IOASID behind a unit whose granule is larger than the record's 4 KiB pages (issue 15:
//! SMMUv3 with the embedder's 16 KiB or 64 KiB granule): mappings made before the attach are
//! copied in whole granules (each record leaf alone was refused as misaligned), and
//! `translate` reports the granule the device sees (it reported 12).

use iommu_engine::ioasid::{Error, Incompatibility, IoasidCtx, IoasidFlags};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::rig::*;

#[test]
fn translate_reports_the_granule_devices_see() {
    for granule in [14u32, 16] {
        let mut s = SmmuSetup::qemu(true);
        s.unit.granule_log2 = Some(granule);
        with_rig(VtdSetup::legacy(true), s, |r| {
            let ctx = IoasidCtx::new(r.reg, r.arena, 0);
            let dev = ctx.bind(smmu_dev(SID_A), false).unwrap();
            let info = ctx.device_info(dev).unwrap().capabilities;
            assert_eq!(info.page_sizes.trailing_zeros(), granule);
            let io = ctx.alloc(IoasidFlags::empty()).unwrap();
            let g = 1u64 << granule;
            let rw = Prot::READ | Prot::WRITE;
            ctx.map(io, Iova::new(4 * g), PhysAddr::new(0x6000_0000), 2 * g, rw)
                .unwrap();
            // Nothing attached: the record's own pages.
            let m = ctx
                .translate(io, Iova::new(4 * g + 0x1008))
                .unwrap()
                .unwrap();
            assert_eq!((m.pa.get(), m.size_log2), (0x6000_1008, 12));
            ctx.attach(dev, io).unwrap();
            let m = ctx
                .translate(io, Iova::new(5 * g + 0x1008))
                .unwrap()
                .unwrap();
            assert_eq!(
                (m.pa.get(), m.size_log2),
                (0x6000_0000 + g + 0x1008, granule)
            );
            assert_eq!(
                r.smmu_read(SID_A, None, 5 * g + 0x1008).map(|t| t.0),
                Some(m.pa.get())
            );
            ctx.detach(dev).unwrap();
            // Less than a granule is still refused, naming the mapping.
            let small = ctx.alloc(IoasidFlags::empty()).unwrap();
            ctx.map(small, Iova::new(g), PhysAddr::new(0x6100_0000), g / 2, rw)
                .unwrap();
            assert_eq!(
                ctx.attach(dev, small),
                Err(Error::Incompatible {
                    device: dev,
                    reason: Incompatibility::Alignment {
                        iova: Iova::new(g),
                        granule_log2: granule
                    }
                })
            );
        });
    }
}
