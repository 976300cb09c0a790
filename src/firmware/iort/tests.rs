//! Hand-built tables: every node type, every mapping shape, and malformed tables.

use super::build::{seal, Map, TableBuilder};
use super::memory_access::MemoryAccessFlags;
use super::named_component::NamedComponentFlags;
use super::rmr::RmrAccessAttributes;
use super::root_complex::AtsAttribute;
use super::smmu_v3::{HttuOverride, SmmuV3Flags, SmmuV3Model};
use super::table::REVISION_E_F;
use super::*;
use crate::firmware::acpi;
use crate::iommu::{AtsPermission, DeviceHints, Source};
use crate::mem::Iova;
use crate::pgtable::IovaRange;
use crate::smmuv3::{DeviceFacts, StreamId};

const SMMU_BASE: u64 = 0x2b40_0000;
/// CCA = 1, CPM | DACS | CANWBS.
const COHERENT_CANWBS: builder::Access = (1, 0, 0b111);
/// CCA = 0, no flags.
const INCOHERENT: builder::Access = (0, 0, 0);

mod builder {
    pub use super::super::build::Access;
}

/// ITS group, SMMUv3 (own DeviceID through mapping 1), root complex (two ranges to the SMMU,
/// one straight to the ITS), named component (two single mappings), PMCG, RMR.
struct Platform {
    table: std::vec::Vec<u8>,
    its: NodeRef,
    smmu: NodeRef,
    rc: NodeRef,
    nc: NodeRef,
    pmcg: NodeRef,
    rmr: NodeRef,
}

fn platform() -> Platform {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0, 1]);
    let smmu = b.smmu_v3(
        SMMU_BASE,
        (SmmuV3Flags::COHACC_OVERRIDE | SmmuV3Flags::DEVICE_ID_MAPPING_INDEX_VALID).bits()
            | (2 << 1),
        [0, 0, 0, 0],
        1,
        &[
            // StreamIDs 0..0x10000 -> DeviceIDs 0x10000.. of the ITS group.
            Map::range(0, 0x1_0000, 0x1_0000, its),
            // The SMMU's own DeviceID.
            Map::single(0x7_0000, its),
        ],
    );
    let rc = b.root_complex(
        COHERENT_CANWBS,
        (AtsAttribute::ATS_SUPPORTED | AtsAttribute::PRI_SUPPORTED).bits(),
        0,
        48,
        &[
            // Bus 0: RIDs 0..0x100 -> StreamIDs 0..0x100.
            Map::range(0, 0x100, 0, smmu),
            // Buses 0x80-0x81 -> StreamIDs 0x1000..0x1200.
            Map::range(0x8000, 0x200, 0x1000, smmu),
            // Bus 2: not behind the SMMU, straight to the ITS.
            Map::range(0x200, 0x100, 0x200, its),
        ],
    );
    let nc = b.named_component(
        NamedComponentFlags::STALL_SUPPORTED.bits() | (5 << 1),
        INCOHERENT,
        40,
        b"\\_SB.DMA0",
        &[Map::single(0x4000, smmu), Map::single(0x4001, smmu)],
    );
    let pmcg = b.pmcg(
        0x2b42_0000,
        0,
        smmu,
        0x2b43_0000,
        &[Map::single(0x9_0000, its)],
    );
    let rmr = b.rmr(
        1 | (5 << 2),
        &[(0x8000_0000, 0x10_0000), (0x9000_0000, 0x1_0000)],
        &[Map::range(0, 1, 0x4001, smmu), Map::range(0, 2, 0x10, smmu)],
    );
    Platform {
        table: b.build(),
        its,
        smmu,
        rc,
        nc,
        pmcg,
        rmr,
    }
}

#[test]
fn every_node_type_decodes_with_its_fields() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    assert_eq!(iort.revision(), REVISION_E_F);
    let types: std::vec::Vec<_> = iort.nodes().map(|n| n.unwrap().node_type()).collect();
    assert_eq!(
        types,
        [
            NodeType::ItsGroup,
            NodeType::SmmuV3,
            NodeType::RootComplex,
            NodeType::NamedComponent,
            NodeType::Pmcg,
            NodeType::Rmr
        ]
    );
    for (i, n) in iort.nodes().enumerate() {
        assert_eq!(n.unwrap().identifier(), i as u32);
    }

    let NodeKind::ItsGroup(its) = iort.node(p.its).unwrap().kind().unwrap() else {
        panic!()
    };
    assert_eq!(its.identifiers().collect::<std::vec::Vec<_>>(), [0, 1]);

    let NodeKind::SmmuV3(smmu) = iort.node(p.smmu).unwrap().kind().unwrap() else {
        panic!()
    };
    assert_eq!(smmu.base, SMMU_BASE);
    assert!(smmu.coherent_access());
    assert_eq!(smmu.flags.httu_override(), HttuOverride::AccessFlagAndDirty);
    assert_eq!(smmu.model, SmmuV3Model::Generic);
    assert_eq!(smmu.event_gsiv, None);
    assert_eq!(smmu.proximity_domain, None);
    assert_eq!(smmu.device_id_mapping_index(), Some(1));
    assert_eq!(
        smmu.device_id_mapping().unwrap().unwrap().output_base,
        0x7_0000
    );

    let NodeKind::RootComplex(rc) = iort.node(p.rc).unwrap().kind().unwrap() else {
        panic!()
    };
    assert_eq!(rc.memory_access.cca, 1);
    assert_eq!(
        rc.memory_access.flags,
        MemoryAccessFlags::CPM | MemoryAccessFlags::DACS | MemoryAccessFlags::CANWBS
    );
    assert!(rc.memory_access.coherent() && rc.memory_access.canwbs());
    assert!(rc
        .ats
        .contains(AtsAttribute::ATS_SUPPORTED | AtsAttribute::PRI_SUPPORTED));
    assert_eq!(rc.segment, 0);
    assert_eq!(rc.address_size_limit, Some(48));
    assert_eq!(rc.max_pasid_width, Some(20));
    assert_eq!(rc.node.id_mappings().unwrap().len(), 3);

    let NodeKind::NamedComponent(nc) = iort.node(p.nc).unwrap().kind().unwrap() else {
        panic!()
    };
    assert_eq!(nc.name, b"\\_SB.DMA0");
    assert!(nc.flags.contains(NamedComponentFlags::STALL_SUPPORTED));
    assert_eq!(nc.flags.substream_width(), 5);
    assert_eq!(nc.address_size_limit, Some(40));
    assert!(!nc.memory_access.coherent() && !nc.memory_access.canwbs());

    let NodeKind::Pmcg(pmcg) = iort.node(p.pmcg).unwrap().kind().unwrap() else {
        panic!()
    };
    assert_eq!(pmcg.page0_base, 0x2b42_0000);
    assert_eq!(pmcg.page1_base, Some(0x2b43_0000));
    assert_eq!(pmcg.overflow_gsiv, None);
    assert_eq!(pmcg.node_reference, Some(p.smmu));

    let NodeKind::Rmr(rmr) = iort.node(p.rmr).unwrap().kind().unwrap() else {
        panic!()
    };
    assert!(rmr.flags.contains(rmr::RmrFlags::REMAPPING_PERMITTED));
    assert_eq!(
        rmr.flags.access_attributes(),
        RmrAccessAttributes::NormalWriteBack
    );
    assert_eq!(rmr.ranges().len(), 2);
    assert!(rmr.ranges().all(|r| r.aligned()));
}

#[test]
fn requester_ids_resolve_through_every_mapping_shape() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    let smmu = |sid| StreamTarget::Smmu {
        smmu: p.smmu,
        stream_id: sid,
    };
    // Range mappings, both ends of each.
    assert_eq!(iort.stream_target(p.rc, 0x0000).unwrap(), smmu(0));
    assert_eq!(iort.stream_target(p.rc, 0x0020).unwrap(), smmu(0x20));
    assert_eq!(iort.stream_target(p.rc, 0x00ff).unwrap(), smmu(0xff));
    assert_eq!(iort.stream_target(p.rc, 0x8000).unwrap(), smmu(0x1000));
    assert_eq!(iort.stream_target(p.rc, 0x81ff).unwrap(), smmu(0x11ff));
    // Not behind the SMMU.
    assert_eq!(
        iort.stream_target(p.rc, 0x0210).unwrap(),
        StreamTarget::Untranslated {
            its_group: p.its,
            device_id: 0x210
        }
    );
    // Just outside every range.
    for rid in [0x0100, 0x7fff, 0x8200, 0x0300, 0xffff] {
        assert_eq!(
            iort.stream_target(p.rc, rid),
            Err(Error::NoMapping {
                node: p.rc,
                id: rid
            })
        );
    }
    // A single mapping gives the named component's StreamID whatever the input.
    assert_eq!(iort.stream_target(p.nc, 0).unwrap(), smmu(0x4000));
    assert_eq!(iort.stream_target(p.nc, 12345).unwrap(), smmu(0x4000));
    let streams: std::vec::Vec<_> = iort
        .device_streams(iort.node(p.nc).unwrap())
        .unwrap()
        .map(|r| r.unwrap())
        .map(|r| (r.smmu, r.first.0, r.last.0))
        .collect();
    assert_eq!(
        streams,
        [(p.smmu, 0x4000, 0x4000), (p.smmu, 0x4001, 0x4001)]
    );

    // MSIs: RC -> SMMU -> ITS group, skipping the SMMU's own single mapping.
    assert_eq!(
        iort.msi_target(p.rc, 0x0020).unwrap(),
        MsiTarget {
            its_group: p.its,
            device_id: 0x1_0020
        }
    );
    assert_eq!(
        iort.msi_target(p.nc, 0).unwrap(),
        MsiTarget {
            its_group: p.its,
            device_id: 0x1_4000
        }
    );
    assert_eq!(
        iort.msi_target(p.rc, 0x0210).unwrap(),
        MsiTarget {
            its_group: p.its,
            device_id: 0x210
        }
    );
    // A StreamID straight from the SMMU.
    assert_eq!(iort.msi_target(p.smmu, 5).unwrap().device_id, 0x1_0005);
    // The SMMU's and the PMCG's own DeviceIDs.
    assert_eq!(
        iort.own_msi_target(p.smmu).unwrap(),
        Some(MsiTarget {
            its_group: p.its,
            device_id: 0x7_0000
        })
    );
    assert_eq!(
        iort.own_msi_target(p.pmcg).unwrap().unwrap().device_id,
        0x9_0000
    );
    assert_eq!(iort.own_msi_target(p.rc).unwrap(), None);
}

#[test]
fn lookups_by_segment_name_and_base() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    assert_eq!(
        iort.root_complex(0).unwrap().unwrap().node.reference(),
        p.rc
    );
    assert!(iort.root_complex(1).unwrap().is_none());
    assert_eq!(
        iort.named_component(b"\\_SB.DMA0")
            .unwrap()
            .unwrap()
            .node
            .reference(),
        p.nc
    );
    assert!(iort.named_component(b"\\_SB.DMA").unwrap().is_none());
    assert_eq!(
        iort.smmu_v3(SMMU_BASE).unwrap().unwrap().node.reference(),
        p.smmu
    );
    assert!(iort.smmu_v3(0).unwrap().is_none());
    assert_eq!(iort.nodes_of(NodeType::SmmuV3).count(), 1);
}

#[test]
fn named_component_stall_flag_is_the_stall_hint() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    let hints = |n| platform::device_hints(iort.node(n).unwrap());
    // The platform's DMA engine declares STALL_SUPPORTED (and a substream width of 5).
    assert!(hints(p.nc).unwrap().stall);
    // The root complex declares ATS_SUPPORTED.
    assert_eq!(
        hints(p.rc),
        Ok(DeviceHints {
            ats_permission: AtsPermission::Allowed,
            ..DeviceHints::default()
        }),
        "PCIe never stalls"
    );
    assert!(matches!(hints(p.smmu), Err(Error::WrongNodeType { .. })));
    let mut b = TableBuilder::new(REVISION_E_F);
    let plain = b.named_component(5 << 1, INCOHERENT, 32, b"X", &[]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(
        platform::device_hints(iort.node(plain).unwrap()),
        Ok(DeviceHints {
            ats_permission: AtsPermission::Forbidden,
            ..DeviceHints::default()
        }),
        "a named component without the flag, and without ATS (no PCIe device)"
    );
}

/// A root complex's `ATS Attribute` bit 0 is the ATS permission of its devices; the other
/// bits (PRI, PASID forwarding) do not allow ATS.
#[test]
fn root_complex_ats_attribute_is_the_ats_permission() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let with = b.root_complex(
        COHERENT_CANWBS,
        AtsAttribute::ATS_SUPPORTED.bits(),
        0,
        48,
        &[],
    );
    let without = b.root_complex(
        COHERENT_CANWBS,
        (AtsAttribute::PRI_SUPPORTED | AtsAttribute::PASID_FORWARDING_SUPPORTED).bits(),
        1,
        48,
        &[],
    );
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    let permission = |n| {
        platform::device_hints(iort.node(n).unwrap())
            .unwrap()
            .ats_permission
    };
    assert_eq!(permission(with), AtsPermission::Allowed);
    assert_eq!(permission(without), AtsPermission::Forbidden);
}

#[test]
fn platform_facts_name_the_iort_fields() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    let rc_facts = platform::device_facts(iort.node(p.rc).unwrap()).unwrap();
    assert_eq!(
        rc_facts,
        DeviceFacts {
            canwbs: true,
            coherent_dma: Some(true),
            source: platform::SOURCE_ROOT_COMPLEX,
        }
    );
    let nc_facts = platform::device_facts(iort.node(p.nc).unwrap()).unwrap();
    assert!(!nc_facts.canwbs);
    assert_eq!(nc_facts.coherent_dma, Some(false));
    assert!(matches!(nc_facts.source, Source::Firmware(s) if s.contains("named component")));
    assert!(matches!(
        platform::device_facts(iort.node(p.smmu).unwrap()),
        Err(Error::WrongNodeType { .. })
    ));

    let unit = platform::unit_facts(&iort.smmu_v3(SMMU_BASE).unwrap().unwrap());
    assert!(unit.coherent_access);
    assert_eq!(unit.source, platform::SOURCE_COHACC_OVERRIDE);
    assert_eq!(
        unit.coherent_access_config(),
        Some((true, platform::SOURCE_COHACC_OVERRIDE))
    );

    // The unit's Platform: two RC ranges, the two NC StreamIDs merged into one range.
    let plat = iort.smmu_platform(p.smmu).unwrap();
    assert_eq!(plat.streams.iter().flatten().count(), 3);
    assert_eq!(plat.facts(StreamId(0x20)), rc_facts);
    assert_eq!(plat.facts(StreamId(0x11ff)), rc_facts);
    assert_eq!(plat.facts(StreamId(0x4000)), nc_facts);
    assert_eq!(plat.facts(StreamId(0x4001)), nc_facts);
    assert_eq!(plat.facts(StreamId(0x4002)), DeviceFacts::UNDECLARED);
    assert_eq!(plat.facts(StreamId(0x100)), DeviceFacts::UNDECLARED);
    assert!(plat.any_canwbs());
}

#[test]
fn too_many_declarations_are_refused_with_the_smmu() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let smmu = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[]);
    let maps: std::vec::Vec<_> = (0..9)
        .map(|i| Map::range(i * 0x100, 1, i * 0x100, smmu))
        .collect();
    b.root_complex(COHERENT_CANWBS, 0, 0, 48, &maps);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(
        iort.smmu_platform(smmu),
        Err(Error::TooManyDeclarations { smmu, max: 8 })
    );
}

#[test]
fn reserved_regions_per_stream() {
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    let all: std::vec::Vec<_> = iort.reserved_regions().map(|r| r.unwrap()).collect();
    // 2 mappings x 2 ranges.
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|r| r.smmu == p.smmu));
    let for_nc: std::vec::Vec<_> = iort
        .reserved_for(p.smmu, StreamId(0x4001))
        .map(|r| r.unwrap().range.identity().unwrap())
        .collect();
    assert_eq!(for_nc.len(), 2);
    assert_eq!(for_nc[0].start.get(), 0x8000_0000);
    assert_eq!(for_nc[0].end.get(), 0x8010_0000);
    assert_eq!(for_nc[1].len(), 0x1_0000);
    assert_eq!(iort.reserved_for(p.smmu, StreamId(0x11)).count(), 2);
    assert_eq!(iort.reserved_for(p.smmu, StreamId(0x12)).count(), 0);
    assert_eq!(iort.reserved_for(p.smmu, StreamId(0x4000)).count(), 0);
    assert_eq!(iort.reserved_for(p.rc, StreamId(0x10)).count(), 0);
}

#[test]
fn rmr_in_a_table_before_e_d_is_an_error_not_silence() {
    let mut b = TableBuilder::new(4);
    let smmu = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[]);
    b.rmr(0, &[(0x1_0000, 0x1_0000)], &[Map::range(0, 1, 0, smmu)]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    let got: std::vec::Vec<_> = iort.reserved_regions().collect();
    assert_eq!(got, [Err(Error::RmrBeforeRevisionEd { table_revision: 4 })]);
}

#[test]
fn rmr_range_that_wraps_and_rmr_to_a_non_smmu_are_errors() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0]);
    let smmu = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[]);
    let wraps = b.rmr(
        0,
        &[(u64::MAX - 0xfff, 0x2000)],
        &[Map::range(0, 1, 0, smmu)],
    );
    let t = b.build();
    let got: std::vec::Vec<_> = Iort::parse(&t).unwrap().reserved_regions().collect();
    assert_eq!(
        got,
        [Err(Error::RangeOverflow {
            node: wraps,
            base: u64::MAX - 0xfff,
            length: 0x2000
        })]
    );

    let mut b = TableBuilder::new(REVISION_E_F);
    let its2 = b.its_group(&[0]);
    assert_eq!(its, its2);
    let rmr = b.rmr(0, &[(0x1_0000, 0x1_0000)], &[Map::range(0, 1, 0, its2)]);
    let t = b.build();
    let got: std::vec::Vec<_> = Iort::parse(&t).unwrap().reserved_regions().collect();
    assert_eq!(
        got,
        [Err(Error::UnexpectedOutput {
            from: rmr,
            to: its2,
            node_type: NodeType::ItsGroup
        })]
    );
}

#[test]
fn cycles_end_in_chain_too_long() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let first = b.next_ref();
    // An SMMU whose mapping leads back to itself.
    let smmu = b.smmu_v3(
        SMMU_BASE,
        0,
        [1, 2, 3, 4],
        0,
        &[Map::range(0, 0x100, 0, first)],
    );
    assert_eq!(smmu, first);
    let rc = b.root_complex(INCOHERENT, 0, 0, 48, &[Map::range(0, 0x100, 0, smmu)]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    // Translation stops at the SMMU; the MSI walk goes round until the bound.
    assert!(iort.stream_target(rc, 5).is_ok());
    assert_eq!(
        iort.msi_target(rc, 5),
        Err(Error::ChainTooLong { start: rc, id: 5 })
    );
}

#[test]
fn mappings_to_nodes_that_take_no_ids_are_refused() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let nc = b.named_component(0, INCOHERENT, 32, b"X", &[]);
    let rc = b.root_complex(INCOHERENT, 0, 0, 48, &[Map::range(0, 0x100, 0, nc)]);
    // A reference into the middle of a node.
    let rc2 = b.root_complex(
        INCOHERENT,
        0,
        1,
        48,
        &[Map::range(0, 0x100, 0, NodeRef(nc.0 + 4))],
    );
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(
        iort.stream_target(rc, 1),
        Err(Error::UnexpectedOutput {
            from: rc,
            to: nc,
            node_type: NodeType::NamedComponent
        })
    );
    assert_eq!(
        iort.stream_target(rc2, 1),
        Err(Error::NoNodeAt {
            reference: NodeRef(nc.0 + 4)
        })
    );
    assert_eq!(
        iort.node(NodeRef(0)).map(|n| n.reference()),
        Err(Error::NoNodeAt {
            reference: NodeRef(0)
        })
    );
}

#[test]
fn single_mappings_apply_on_the_first_step_only() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0]);
    // No DeviceID-valid flag, wired GSIVs: the single mapping is not the SMMU's own by
    // index, but a single mapping is never a path for a device's StreamID either.
    let smmu = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[Map::single(0x55, its)]);
    let rc = b.root_complex(INCOHERENT, 0, 0, 48, &[Map::single(0x42, smmu)]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(
        iort.stream_target(rc, 0x1234).unwrap(),
        StreamTarget::Smmu {
            smmu,
            stream_id: 0x42
        }
    );
    assert_eq!(
        iort.msi_target(rc, 0x1234),
        Err(Error::NoMapping {
            node: smmu,
            id: 0x42
        })
    );
}

#[test]
fn device_id_index_before_e_e_follows_the_gsivs() {
    // Revision-3 SMMUv3 node (pre-E.e): index valid when a GSIV is 0.
    for (gsivs, valid) in [([1, 2, 3, 4], false), ([0, 2, 3, 4], true)] {
        let mut b = TableBuilder::new(3);
        let its = b.its_group(&[0]);
        let smmu = b.smmu_v3(SMMU_BASE, 0, gsivs, 0, &[Map::single(0x77, its)]);
        let mut t = b.build();
        t[smmu.0 as usize + 3] = 3;
        seal(&mut t);
        let iort = Iort::parse(&t).unwrap();
        let s = iort.smmu_v3(SMMU_BASE).unwrap().unwrap();
        assert_eq!(s.device_id_mapping_index().is_some(), valid, "{gsivs:?}");
    }
}

/// An SMMUv3 node of `revision` with `Flags` bit 4 (DeviceID mapping index valid) set, its four
/// interrupts wired, index 0, and one range mapping (StreamIDs 0..0x100 to DeviceIDs 0x1000..
/// of the ITS group): the table, the SMMU and a root complex sending RIDs to it.
fn smmu_with_index_flag(revision: u8) -> (std::vec::Vec<u8>, NodeRef, NodeRef) {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0]);
    let flags = SmmuV3Flags::DEVICE_ID_MAPPING_INDEX_VALID.bits();
    let smmu = b.smmu_v3(
        SMMU_BASE,
        flags,
        [1, 2, 3, 4],
        0,
        &[Map::range(0, 0x100, 0x1000, its)],
    );
    let rc = b.root_complex(INCOHERENT, 0, 0, 48, &[Map::range(0, 0x100, 0, smmu)]);
    let mut t = b.build();
    t[smmu.0 as usize + 3] = revision;
    seal(&mut t);
    (t, smmu, rc)
}

#[test]
fn device_id_index_valid_flag_is_reserved_before_revision_5() {
    // E.e (node revision 5) added Flags bit 4; below it the bit is reserved: at revision 0 (no
    // index field) and at revision 3 with every interrupt wired, no mapping is the SMMU's own.
    for revision in [0, 3] {
        let (t, smmu, rc) = smmu_with_index_flag(revision);
        let iort = Iort::parse(&t).unwrap();
        let s = iort.smmu_v3(SMMU_BASE).unwrap().unwrap();
        assert_eq!(s.device_id_mapping_index(), None, "revision {revision}");
        // So a device's MSIs go through mapping 0, which is not skipped.
        assert_eq!(
            iort.msi_target(rc, 0x12),
            Ok(MsiTarget {
                its_group: iort.nodes().next().unwrap().unwrap().reference(),
                device_id: 0x1012
            }),
            "revision {revision}"
        );
        assert_eq!(
            iort.smmu_v3(SMMU_BASE).unwrap().unwrap().node.reference(),
            smmu
        );
    }
    // From revision 5 the flag decides.
    let (t, _, _) = smmu_with_index_flag(5);
    let iort = Iort::parse(&t).unwrap();
    let s = iort.smmu_v3(SMMU_BASE).unwrap().unwrap();
    assert_eq!(s.device_id_mapping_index(), Some(0));
}

#[test]
fn a_device_id_index_past_the_mappings_is_ignored_and_hides_no_later_smmu() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0]);
    let flags = SmmuV3Flags::DEVICE_ID_MAPPING_INDEX_VALID.bits();
    let bad = b.smmu_v3(SMMU_BASE, flags, [0; 4], 3, &[Map::single(0x77, its)]);
    let later = SMMU_BASE + 0x10_0000;
    let good = b.smmu_v3(later, 0, [1, 2, 3, 4], 0, &[]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    // A firmware bug (Linux ignores the index): no own DeviceID, the node decodes...
    let s = iort.smmu_v3(SMMU_BASE).unwrap().unwrap();
    assert_eq!(s.device_id_mapping_index(), None);
    assert_eq!(s.device_id_mapping(), Ok(None));
    assert!(iort.node(bad).unwrap().kind().is_ok());
    // ...and the SMMU after it is still found.
    assert_eq!(
        iort.smmu_v3(later).unwrap().map(|s| s.node.reference()),
        Some(good)
    );
    // The bad index is still there to report, with its values.
    assert_eq!(
        s.device_id_mapping_index_check(),
        Err(Error::DeviceIdMappingIndex {
            node: bad,
            index: 3,
            count: 1
        })
    );
}

#[test]
fn id_ranges_that_wrap_are_errors() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let smmu = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[]);
    let rc = b.root_complex(
        INCOHERENT,
        0,
        0,
        48,
        &[Map {
            input_base: 0,
            id_count: 0xffff,
            output_base: 0xffff_ff00,
            output: smmu,
            flags: 0,
        }],
    );
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(
        iort.stream_target(rc, 0),
        Err(Error::IdRangeOverflow { node: rc, index: 0 })
    );
}

/// Offsets in the builder's first node (at 48).
const FIRST: usize = 48;

#[test]
fn malformed_tables_are_refused_with_the_offending_value() {
    let good = platform().table;
    assert!(Iort::parse(&good).is_ok());

    // Checksum.
    let mut t = good.clone();
    t[100] ^= 1;
    assert!(matches!(
        Iort::parse(&t),
        Err(Error::Acpi(acpi::Error::Checksum { .. }))
    ));
    // Signature.
    let mut t = good.clone();
    t[0] = b'X';
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t),
        Err(Error::Acpi(acpi::Error::WrongSignature { .. }))
    ));
    // Length beyond the bytes.
    assert!(matches!(
        Iort::parse(&good[..good.len() - 1]),
        Err(Error::Acpi(acpi::Error::LengthBeyondData { .. }))
    ));
    // A table too short for the IORT header.
    let mut t = good[..44].to_vec();
    t[4..8].copy_from_slice(&44u32.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t),
        Err(Error::Acpi(acpi::Error::Truncated { .. }))
    ));
    // Node array inside the IORT header.
    let mut t = good.clone();
    t[40..44].copy_from_slice(&12u32.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t),
        Err(Error::NodeLength { offset: 12, .. })
    ));

    // A node length below the node header: the iterator yields the error and stops.
    let mut t = good.clone();
    t[FIRST + 1..FIRST + 3].copy_from_slice(&8u16.to_le_bytes());
    seal(&mut t);
    let nodes: std::vec::Vec<_> = Iort::parse(&t).unwrap().nodes().collect();
    assert_eq!(nodes.len(), 1);
    assert!(matches!(
        nodes[0],
        Err(Error::NodeLength {
            offset: 48,
            length: 8,
            ..
        })
    ));
    // A node reaching past the table.
    let mut t = good.clone();
    t[FIRST + 1..FIRST + 3].copy_from_slice(&0xfff0u16.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t).unwrap().nodes().next(),
        Some(Err(Error::NodeLength { length: 0xfff0, .. }))
    ));
    // More nodes declared than there are: the walk ends at the table's end with an error.
    let mut t = good.clone();
    t[36..40].copy_from_slice(&1000u32.to_le_bytes());
    seal(&mut t);
    let iort = Iort::parse(&t).unwrap();
    assert_eq!(iort.nodes().filter(Result::is_ok).count(), 6);
    assert!(iort.nodes().last().unwrap().is_err());
    assert!(iort.nodes().count() <= 7);
}

#[test]
fn node_arrays_outside_their_node_are_refused() {
    let p = platform();
    let rc = p.rc.0 as usize;
    // ID mappings past the node's end.
    let mut t = p.table.clone();
    t[rc + 8..rc + 12].copy_from_slice(&4u32.to_le_bytes());
    seal(&mut t);
    let iort = Iort::parse(&t).unwrap();
    assert!(matches!(
        iort.stream_target(p.rc, 0),
        Err(Error::MappingsOutsideNode { count: 4, .. })
    ));
    // A huge count (the multiplication must not wrap).
    let mut t = p.table.clone();
    t[rc + 8..rc + 12].copy_from_slice(&u32::MAX.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t).unwrap().node(p.rc).unwrap().id_mappings(),
        Err(Error::MappingsOutsideNode { .. })
    ));
    // ID mappings overlapping the node header.
    let mut t = p.table.clone();
    t[rc + 12..rc + 16].copy_from_slice(&8u32.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t).unwrap().node(p.rc).unwrap().id_mappings(),
        Err(Error::MappingsOutsideNode { offset: 8, .. })
    ));
    // ITS identifiers past the node.
    let its = p.its.0 as usize;
    let mut t = p.table.clone();
    t[its + 16..its + 20].copy_from_slice(&3u32.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t).unwrap().node(p.its).unwrap().kind(),
        Err(Error::ArrayOutsideNode { count: 3, .. })
    ));
    // RMR descriptors past the node.
    let rmr = p.rmr.0 as usize;
    let mut t = p.table.clone();
    t[rmr + 20..rmr + 24].copy_from_slice(&3u32.to_le_bytes());
    seal(&mut t);
    assert!(matches!(
        Iort::parse(&t).unwrap().reserved_regions().next(),
        Some(Err(Error::ArrayOutsideNode { count: 3, .. }))
    ));
    // A named component whose name runs into its mappings (no NUL before them).
    let nc = p.nc.0 as usize;
    let mut t = p.table.clone();
    let map_off = u32::from_le_bytes(t[nc + 12..nc + 16].try_into().unwrap()) as usize;
    for b in &mut t[nc + 29..nc + map_off] {
        *b = b'A';
    }
    seal(&mut t);
    assert_eq!(
        Iort::parse(&t).unwrap().named_component(b"x").map(|_| ()),
        Err(Error::NameNotTerminated { node: p.nc })
    );
    // A node too short for its type's fields.
    let mut b = TableBuilder::new(REVISION_E_F);
    let short = b.node(4, 5, 0, &[0; 20], &[], &[]).0;
    let t = b.build();
    assert!(matches!(
        Iort::parse(&t).unwrap().node(short).unwrap().kind(),
        Err(Error::NodeTooShort {
            node_type: NodeType::SmmuV3,
            needed: 68,
            ..
        })
    ));
}

#[test]
fn unknown_node_types_are_skipped_not_refused() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let its = b.its_group(&[0]);
    let other = b.node(7, 1, 9, &[0; 16], &[], &[]).0;
    let rc = b.root_complex(INCOHERENT, 0, 0, 48, &[Map::range(0, 0x100, 0, its)]);
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    assert!(matches!(
        iort.node(other).unwrap().kind().unwrap(),
        NodeKind::Other(n) if n.node_type() == NodeType::Other(7)
    ));
    assert!(iort.stream_target(rc, 3).is_ok());
    let nodes: std::vec::Vec<_> = iort.nodes().map(|n| n.unwrap().node_type()).collect();
    assert_eq!(nodes.len(), 3);
}

#[test]
fn errors_display_their_values() {
    use std::string::ToString;
    let e = Error::NoMapping {
        node: NodeRef(0xa0),
        id: 0x1234,
    };
    let s = e.to_string();
    assert!(s.contains("0xa0") && s.contains("0x1234"), "{s}");
}

/// A device's RMR ranges from its requester ID, as `Dmar::reserved_regions` gives a PCI
/// requester's RMRRs, and each range as the IOASID layer's direct region.
#[test]
fn reserved_regions_of_a_device_and_their_direct_regions() {
    use crate::ioasid::DirectRegion;
    let p = platform();
    let iort = Iort::parse(&p.table).unwrap();
    let of = |node, id| -> std::vec::Vec<_> {
        iort.reserved_for_device(node, id)
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    };
    // RID 0x10 is StreamID 0x10, one of the RMR's two mappings: both its ranges.
    let regions = of(p.rc, 0x10);
    assert_eq!(regions.len(), 2);
    assert!(regions
        .iter()
        .all(|r| r.smmu == p.smmu && r.covers(p.smmu, StreamId(0x10))));
    assert_eq!(of(p.rc, 0x12), []);
    // Bus 2 reaches the ITS group directly: nothing is translated, nothing to map.
    assert_eq!(of(p.rc, 0x200), []);
    assert!(matches!(
        iort.reserved_for_device(p.rc, 0x300).map(|_| ()),
        Err(Error::NoMapping { .. })
    ));
    // Flags: remapping permitted, Normal write-back.
    let d = DirectRegion::from_rmr(&regions[0]).unwrap();
    assert_eq!(
        (
            d.range().start.get(),
            d.range().end.get(),
            d.mmio(),
            d.relaxable()
        ),
        (0x8000_0000, 0x8010_0000, false, true)
    );

    // Every access-attributes value, with and without remapping permitted.
    let with_flags = |flags: u32| {
        let mut b = TableBuilder::new(REVISION_E_F);
        let smmu = b.smmu_v3(SMMU_BASE, 0, [0; 4], 0, &[]);
        let rc = b.root_complex(COHERENT_CANWBS, 0, 0, 48, &[Map::range(0, 0x100, 0, smmu)]);
        b.rmr(
            flags,
            &[(0x1000_0000, 0x1_0000)],
            &[Map::range(0, 1, 0x20, smmu)],
        );
        let t = b.build();
        let iort = Iort::parse(&t).unwrap();
        let r = iort
            .reserved_for_device(rc, 0x20)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(iort.reserved_for_device(rc, 0x21).unwrap().count(), 0);
        DirectRegion::from_rmr(&r).map(|d| (d.mmio(), d.relaxable()))
    };
    for (attributes, mmio) in [
        (0, true),
        (1, true),
        (2, true),
        (3, true),
        (4, false),
        (5, false),
    ] {
        assert_eq!(
            with_flags(attributes << 2),
            Ok((mmio, false)),
            "{attributes}"
        );
        assert_eq!(
            with_flags(1 | attributes << 2),
            Ok((mmio, true)),
            "{attributes}"
        );
    }
    // The privileged-access flag changes nothing (see ioasid::direct).
    assert_eq!(with_flags(2 | 1 << 2), Ok((true, false)));
    let range = IovaRange {
        start: Iova::new(0x1000_0000),
        end: Iova::new(0x1001_0000),
    };
    assert_eq!(
        with_flags(6 << 2),
        Err(crate::ioasid::Error::BadDirectRegion(range)),
        "a reserved memory type is refused, not guessed"
    );
}

#[test]
fn rmr_ranges_that_are_no_direct_region_are_refused() {
    use crate::ioasid::{DirectRegion, Error as IoasidError};
    let region = |base: u64, length: u64| platform::ReservedRegion {
        smmu: NodeRef(0x30),
        first: StreamId(0),
        last: StreamId(0),
        range: rmr::MemoryRange {
            node: NodeRef(0x100),
            base,
            length,
        },
        flags: rmr::RmrFlags::empty(),
    };
    let bad = |start: u64, end: u64| {
        Err(IoasidError::BadDirectRegion(IovaRange {
            start: Iova::new(start),
            end: Iova::new(end),
        }))
    };
    assert_eq!(
        DirectRegion::from_rmr(&region(0x1000, 0)),
        bad(0x1000, 0x1000)
    );
    assert_eq!(
        DirectRegion::from_rmr(&region(0x1800, 0x1000)),
        bad(0x1800, 0x2800)
    );
    assert_eq!(
        DirectRegion::from_rmr(&region(u64::MAX - 0xfff, 0x2000)),
        bad(u64::MAX - 0xfff, 0x1000)
    );
    // 4 KiB aligned but not 64 KiB: mapped (Linux warns and maps it).
    assert!(DirectRegion::from_rmr(&region(0x1000, 0x1000))
        .unwrap()
        .mmio());
}

/// Shipped firmware (QEMU's virt IORT before 2024, among others) wrote `Number of IDs` as the
/// count, not the count minus one: each range then claims one ID more, the first ID of the
/// next range. Linux (`iort_id_map`) takes a match on the last ID of a range as provisional:
/// a later mapping that *starts* at that ID supersedes it; one that merely covers it does not.
/// Found by review: RID 0x100 went to SMMU A as StreamID 0x100 where firmware meant SMMU B's
/// StreamID 0, so the device's real stream would be left as SMMU B had it.
#[test]
fn a_range_that_ends_on_the_next_ranges_first_id_yields_it_to_that_range() {
    let mut b = TableBuilder::new(REVISION_E_F);
    let a = b.smmu_v3(SMMU_BASE, 0, [1, 2, 3, 4], 0, &[]);
    let smmu_b = b.smmu_v3(SMMU_BASE + 0x2_0000, 0, [5, 6, 7, 8], 0, &[]);
    let one_more = |input_base, count, output_base, output| Map {
        input_base,
        id_count: count, // the count, where the field wants count - 1
        output_base,
        output,
        flags: 0,
    };
    let rc = b.root_complex(
        INCOHERENT,
        0,
        0,
        48,
        &[
            one_more(0, 0x100, 0, a),
            one_more(0x100, 0x100, 0, smmu_b),
            // A range that covers 0x1ff but does not start there: a real conflict, the
            // earlier match stands.
            one_more(0x1f0, 0x20, 0x800, a),
        ],
    );
    let t = b.build();
    let iort = Iort::parse(&t).unwrap();
    let target = |id| iort.stream_target(rc, id);
    let on = |smmu, stream_id| Ok(StreamTarget::Smmu { smmu, stream_id });
    assert_eq!(target(0xff), on(a, 0xff));
    assert_eq!(target(0x100), on(smmu_b, 0));
    assert_eq!(target(0x101), on(smmu_b, 1));
    // 0x200 is the last ID of B's range (as written) and starts no later range: B's.
    assert_eq!(target(0x200), on(smmu_b, 0x100));
    // 0x1ff: inside B's range, not its last ID: B's, the third mapping never consulted.
    assert_eq!(target(0x1ff), on(smmu_b, 0xff));
}
