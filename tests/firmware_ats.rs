//! Firmware's ATS facts reach the attach: a device whose firmware forbids PCIe ATS (an IORT
//! root complex without `ATS Attribute` bit 0, as QEMU's `virt` machine declares its own) must
//! not end up with translated requests enabled, whatever the embedder read from the device's
//! configuration space. Translated requests bypass the IOMMU's translation (the device claims
//! the address is already translated): isolation then rests on the device.

use iommu_engine::firmware::fdt::Fdt;
use iommu_engine::firmware::iort::{platform, Iort, StreamTarget};
use iommu_engine::iommu::{AtsPermission, DeviceId, DomainConfig, Error, Iommu, Stage};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::arena::Arena;
use iommu_engine::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::smmuv3::{SmmuConfig, SmmuUnit};

const SMMUV3: &[u8] = include_bytes!("data/acpi/iort/qemu-virt-smmuv3.iort");
/// The same machine's device tree (`-M virt,iommu=smmuv3,dumpdtb=`): its host bridge has no
/// `ats-supported`.
const SMMUV3_DTB: &[u8] = include_bytes!("data/fdt/qemu-virt-smmuv3.dtb");

/// edu at 00:04.0, as the QEMU scenarios place it.
const EDU: u32 = 0x20;
/// A page the domain does not map: only a translated request could reach it.
const UNMAPPED: u64 = 0x7000_0000;

/// QEMU's IORT (ATS Attribute 0), the SMMU able to do ATS (`IDR0.ATS`), and an embedder that
/// follows the firmware path: the root complex's hints, then `ats` from the device's own ATS
/// capability. The attach must not let a translated request through.
#[test]
fn a_root_complex_without_ats_gets_no_translated_requests() {
    let iort = Iort::parse(SMMUV3).unwrap();
    let rc = iort.root_complex(0).unwrap().unwrap();
    let StreamTarget::Smmu { stream_id, .. } =
        iort.stream_target(rc.node.reference(), EDU).unwrap()
    else {
        panic!("edu is behind the SMMU");
    };
    let mut hints = platform::device_hints(rc.node).unwrap();
    // The device's PCIe ATS capability is present: the embedder turns it on.
    hints.ats = true;

    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let cfg = SmmuConfig {
        poll_budget: 1000,
        ..SmmuConfig::default()
    };
    let u = SmmuUnit::new(&model, &mem, cfg).unwrap();
    u.enable().unwrap();
    let d = u
        .domain_alloc(&DomainConfig {
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    u.map(
        d,
        Iova::new(0x1000),
        PhysAddr::new(0x4000_0000),
        0x1000,
        Prot::READ,
    )
    .unwrap();
    assert_eq!(hints.ats_permission, AtsPermission::Forbidden);
    let r = u.attach_device(DeviceId(stream_id), None, d, &hints);
    if r.is_ok() {
        assert!(
            model
                .translated_transaction(stream_id, UNMAPPED, Access::READ)
                .is_err(),
            "firmware forbids ATS below this root complex, yet a translated request passed"
        );
    }
    assert_eq!(r, Err(Error::AtsForbidden(DeviceId(stream_id))));
    // Refused before anything was written: the stream still aborts, the attach without ATS
    // works.
    assert!(model
        .translate(stream_id, None, 0x1000, Access::READ)
        .is_err());
    hints.ats = false;
    u.attach_device(DeviceId(stream_id), None, d, &hints)
        .unwrap();
    assert_eq!(
        model
            .translate(stream_id, None, 0x1000, Access::READ)
            .unwrap()
            .pa,
        0x4000_0000
    );
    assert!(model
        .translated_transaction(stream_id, UNMAPPED, Access::READ)
        .is_err());
}

/// The device-tree path of the same machine: the host bridge without `ats-supported` forbids
/// its devices ATS (Linux enables none there), and the attach with `ats` is refused.
#[test]
fn a_host_bridge_without_ats_supported_gets_no_translated_requests() {
    let fdt = Fdt::parse(SMMUV3_DTB).unwrap();
    let pcie = fdt.node_by_path(b"/pcie@10000000").unwrap().unwrap();
    let (_, stream_id) = fdt.map_rid(&pcie, EDU).unwrap().unwrap();
    let mut hints = fdt.device_hints(&pcie).unwrap();
    // The device's PCIe ATS capability is present: the embedder turns it on.
    hints.ats = true;

    let mem = Arena::with_defaults().unwrap();
    let model = SmmuModel::new(&mem, SmmuModelConfig::qemu_like().with_ats(true));
    let cfg = SmmuConfig {
        poll_budget: 1000,
        ..SmmuConfig::default()
    };
    let u = SmmuUnit::new(&model, &mem, cfg).unwrap();
    u.enable().unwrap();
    let d = u
        .domain_alloc(&DomainConfig {
            stage: Stage::Second,
            ..DomainConfig::default()
        })
        .unwrap();
    let r = u.attach_device(DeviceId(stream_id), None, d, &hints);
    if r.is_ok() {
        assert!(
            model
                .translated_transaction(stream_id, UNMAPPED, Access::READ)
                .is_err(),
            "the host bridge has no ats-supported, yet a translated request passed"
        );
    }
    assert_eq!(r, Err(Error::AtsForbidden(DeviceId(stream_id))));
    assert_eq!(hints.ats_permission, AtsPermission::Forbidden);
    hints.ats = false;
    u.attach_device(DeviceId(stream_id), None, d, &hints)
        .unwrap();
    assert!(model
        .translated_transaction(stream_id, UNMAPPED, Access::READ)
        .is_err());
    // Nor can the unit's own switch give it ATS afterwards.
    u.detach(DeviceId(stream_id), None).unwrap();
    assert_eq!(
        u.set_ats(DeviceId(stream_id), true),
        Err(Error::AtsForbidden(DeviceId(stream_id)))
    );
}
