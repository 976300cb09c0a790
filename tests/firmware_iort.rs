//! The IORT parser on tables QEMU 10.0 generated for its `virt` machine
//! (`tests/data/acpi/iort/README.md` says how they were captured): nobody here wrote them.

use iommu_engine::firmware::iort::smmu_v3::HttuOverride;
use iommu_engine::firmware::iort::{
    platform, Iort, MsiTarget, NodeKind, NodeRef, NodeType, StreamTarget,
};
use iommu_engine::smmuv3::{DeviceFacts, StreamId};

const SMMUV3: &[u8] = include_bytes!("data/acpi/iort/qemu-virt-smmuv3.iort");
const SMMUV3_PXB: &[u8] = include_bytes!("data/acpi/iort/qemu-virt-smmuv3-pxb.iort");
const NO_IOMMU: &[u8] = include_bytes!("data/acpi/iort/qemu-virt.iort");

/// QEMU's `virt` SMMUv3 register base (hw/arm/virt.c memory map, VIRT_SMMU).
const QEMU_SMMU_BASE: u64 = 0x0905_0000;

#[test]
fn qemu_virt_smmuv3_nodes() {
    let iort = Iort::parse(SMMUV3).unwrap();
    assert_eq!(iort.revision(), 3, "QEMU 10.0 writes issue E.b");
    let types: Vec<_> = iort.nodes().map(|n| n.unwrap().node_type()).collect();
    assert_eq!(
        types,
        [NodeType::ItsGroup, NodeType::SmmuV3, NodeType::RootComplex]
    );
    for node in iort.nodes() {
        node.unwrap().kind().unwrap();
    }

    let smmu = iort
        .smmu_v3(QEMU_SMMU_BASE)
        .unwrap()
        .expect("the SMMUv3 node");
    assert_eq!(smmu.base, 0x0905_0000);
    // QEMU declares the SMMU coherent and wires its four interrupts (SPIs 74-77 on virt).
    assert!(smmu.coherent_access());
    assert_eq!(smmu.flags.httu_override(), HttuOverride::None);
    assert_eq!(
        [
            smmu.event_gsiv,
            smmu.pri_gsiv,
            smmu.gerr_gsiv,
            smmu.sync_gsiv
        ],
        [Some(0x6a), Some(0x6b), Some(0x6d), Some(0x6c)]
    );
    assert_eq!(smmu.device_id_mapping_index(), None);
    let unit = platform::unit_facts(&smmu);
    assert!(unit.coherent_access);

    let rc = iort
        .root_complex(0)
        .unwrap()
        .expect("the PCIe root complex");
    assert_eq!(rc.segment, 0);
    assert_eq!(rc.memory_access.cca, 1);
    assert!(rc.memory_access.coherent());
    assert!(!rc.memory_access.canwbs());
    assert_eq!(rc.address_size_limit, Some(64));
    assert_eq!(
        platform::device_facts(rc.node).unwrap(),
        DeviceFacts {
            canwbs: false,
            coherent_dma: Some(true),
            source: platform::SOURCE_ROOT_COMPLEX,
        }
    );

    let NodeKind::ItsGroup(its) = iort
        .nodes_of(NodeType::ItsGroup)
        .next()
        .unwrap()
        .kind()
        .unwrap()
    else {
        panic!("ITS group")
    };
    assert_eq!(its.identifiers().collect::<Vec<_>>(), [0]);
    assert_eq!(iort.reserved_regions().count(), 0);
}

#[test]
fn qemu_virt_smmuv3_requester_ids_to_stream_ids() {
    let iort = Iort::parse(SMMUV3).unwrap();
    let smmu = iort
        .smmu_v3(QEMU_SMMU_BASE)
        .unwrap()
        .unwrap()
        .node
        .reference();
    let rc = iort.root_complex(0).unwrap().unwrap().node.reference();
    let its = iort
        .nodes_of(NodeType::ItsGroup)
        .next()
        .unwrap()
        .reference();
    // Bus 0 is behind the SMMU, StreamID = requester ID: edu at 00:04.0 (RID 0x20) as the
    // QEMU scenarios place it.
    for rid in [0x00, 0x08, 0x20, 0xff] {
        assert_eq!(
            iort.stream_target(rc, rid).unwrap(),
            StreamTarget::Smmu {
                smmu,
                stream_id: rid
            }
        );
        // MSIs: through the SMMU to the ITS, DeviceID = StreamID.
        assert_eq!(
            iort.msi_target(rc, rid).unwrap(),
            MsiTarget {
                its_group: its,
                device_id: rid
            }
        );
    }
    // QEMU maps the other buses (no device behind the SMMU there) straight to the ITS.
    assert_eq!(
        iort.stream_target(rc, 0x100).unwrap(),
        StreamTarget::Untranslated {
            its_group: its,
            device_id: 0x100
        }
    );
    assert_eq!(iort.own_msi_target(smmu).unwrap(), None);

    // The unit's platform: bus 0's StreamIDs coherent, no CANWBS.
    let plat = iort.smmu_platform(smmu).unwrap();
    assert_eq!(plat.streams.iter().flatten().count(), 1);
    assert_eq!(plat.facts(StreamId(0x20)).coherent_dma, Some(true));
    assert_eq!(plat.facts(StreamId(0x100)), DeviceFacts::UNDECLARED);
    assert!(!plat.any_canwbs());
}

#[test]
fn qemu_virt_smmuv3_with_an_expander_bridge_splits_the_ranges() {
    // `-device pxb-pcie,bus_nr=128`: buses 0x80-0x81 behind the SMMU too, the rest direct.
    let iort = Iort::parse(SMMUV3_PXB).unwrap();
    let smmu = iort
        .smmu_v3(QEMU_SMMU_BASE)
        .unwrap()
        .unwrap()
        .node
        .reference();
    let rc = iort.root_complex(0).unwrap().unwrap();
    assert_eq!(rc.node.id_mappings().unwrap().len(), 4);
    let behind = |rid| matches!(iort.stream_target(rc.node.reference(), rid), Ok(StreamTarget::Smmu { smmu: s, stream_id }) if s == smmu && stream_id == rid);
    assert!(behind(0x0020) && behind(0x8000) && behind(0x8108) && behind(0x81ff));
    for rid in [0x0100, 0x7fff, 0x8200, 0xffff] {
        assert!(
            matches!(
                iort.stream_target(rc.node.reference(), rid),
                Ok(StreamTarget::Untranslated { device_id, .. }) if device_id == rid
            ),
            "{rid:#x}"
        );
    }
    let ranges: Vec<_> = iort
        .device_streams(rc.node)
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.first.0, r.last.0))
        .collect();
    assert_eq!(ranges, [(0, 0xff), (0x8000, 0x81ff)]);
    let plat = iort.smmu_platform(smmu).unwrap();
    assert_eq!(plat.streams.iter().flatten().count(), 2);
}

#[test]
fn qemu_virt_without_iommu_maps_every_requester_to_the_its() {
    let iort = Iort::parse(NO_IOMMU).unwrap();
    assert_eq!(iort.nodes_of(NodeType::SmmuV3).count(), 0);
    let rc = iort.root_complex(0).unwrap().unwrap().node.reference();
    let its = iort
        .nodes_of(NodeType::ItsGroup)
        .next()
        .unwrap()
        .reference();
    assert_eq!(
        iort.stream_target(rc, 0x20).unwrap(),
        StreamTarget::Untranslated {
            its_group: its,
            device_id: 0x20
        }
    );
    assert_eq!(
        iort.node(NodeRef(0x30)).unwrap().node_type(),
        NodeType::ItsGroup
    );
}

#[test]
fn every_truncation_and_bit_flip_of_qemu_tables_is_an_error_or_a_table() {
    // Every prefix and every single-bit change of QEMU's tables: never a panic (a changed
    // byte breaks the checksum, so also re-seal it to reach the node decoders).
    for table in [SMMUV3, SMMUV3_PXB, NO_IOMMU] {
        for len in 0..table.len() {
            assert!(Iort::parse(&table[..len]).is_err());
        }
        for byte in 36..table.len() {
            for bit in 0..8 {
                let mut t = table.to_vec();
                t[byte] ^= 1 << bit;
                t[9] = 0;
                t[9] = 0u8.wrapping_sub(t.iter().fold(0u8, |s, &b| s.wrapping_add(b)));
                iommu_engine::fuzzing::firmware_iort::exercise(&t);
            }
        }
    }
}
