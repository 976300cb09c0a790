//! Fuzz target `firmware_iort`: the IORT decoders ([`crate::firmware::iort`]) on arbitrary
//! bytes. Never a panic; every node the walk returns lies inside the table and is found again
//! by its reference; every resolution ends at a node of the right type; every region and
//! StreamID range is well formed.
//!
//! The first input byte chooses the mode: bit 0 clear, the rest is the table as is (the
//! header and checksum checks see everything); bit 0 set, the rest is the body after a
//! 36-byte ACPI header that is written for it (signature `IORT`, revision from the byte's bits
//! 7:1, `Length`, checksum), so that nearly every input reaches the node decoders.

use std::vec::Vec;

use crate::firmware::acpi::checksum;
use crate::firmware::iort::{platform, Iort, NodeType, StreamTarget};

/// Most IDs tried per device node.
const IDS_PER_NODE: usize = 16;
/// Most reserved regions looked at (a table can multiply mappings by ranges).
const MAX_REGIONS: usize = 4096;

/// The target's body.
pub fn iort(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        exercise(rest);
        return;
    }
    let mut t = Vec::with_capacity(36 + rest.len());
    t.extend_from_slice(b"IORT");
    t.extend_from_slice(
        &u32::try_from(36 + rest.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    t.push(mode >> 1);
    t.push(0);
    t.extend_from_slice(&[0; 26]);
    t.extend_from_slice(rest);
    t[9] = 0u8.wrapping_sub(checksum(&t));
    exercise(&t);
}

/// Every decoder on `table`, checking what the results promise.
pub fn exercise(table: &[u8]) {
    let Ok(iort) = Iort::parse(table) else {
        return;
    };
    let len = iort.bytes().len();
    for node in iort.nodes() {
        let Ok(node) = node else { break };
        let start = node.reference().0 as usize;
        assert!(start + node.length() as usize <= len, "node past the table");
        let again = iort
            .node(node.reference())
            .expect("a node is found by its reference");
        assert_eq!(again.reference(), node.reference());
        let _ = node.kind();
        if let Ok(maps) = node.id_mappings() {
            assert!(maps.len() <= node.length() as usize / 20);
        }
        match node.node_type() {
            NodeType::RootComplex | NodeType::NamedComponent => device(&iort, node),
            NodeType::SmmuV3 | NodeType::Pmcg => {
                if let Ok(Some(t)) = iort.own_msi_target(node.reference()) {
                    its(&iort, t.its_group);
                }
                if node.node_type() == NodeType::SmmuV3 {
                    if let Ok(p) = iort.smmu_platform(node.reference()) {
                        assert!(p.check().is_ok());
                    }
                }
            }
            _ => {}
        }
    }
    for region in iort.reserved_regions().take(MAX_REGIONS) {
        let Ok(r) = region else { break };
        assert!(r.first <= r.last);
        let range = r.range.identity().expect("regions that wrap are errors");
        assert_eq!(range.len(), r.range.length);
        assert!(iort
            .node(r.smmu)
            .expect("region's SMMU")
            .node_type()
            .is_smmu());
    }
}

fn its(iort: &Iort<'_>, group: crate::firmware::iort::NodeRef) {
    assert_eq!(
        iort.node(group).expect("ITS group").node_type(),
        NodeType::ItsGroup
    );
}

fn device(iort: &Iort<'_>, node: crate::firmware::iort::Node<'_>) {
    let _ = platform::device_facts(node);
    let mut ids = [0u32; IDS_PER_NODE];
    let mut n = 2;
    ids[1] = u32::MAX;
    if let Ok(maps) = node.id_mappings() {
        for m in maps.take(IDS_PER_NODE / 2 - 1) {
            ids[n] = m.input_base;
            ids[n + 1] = m.input_base.wrapping_add(m.id_count);
            n += 2;
        }
    }
    if let Ok(streams) = iort.device_streams(node) {
        for s in streams.take(IDS_PER_NODE) {
            let Ok(s) = s else { break };
            assert!(s.first <= s.last);
            assert!(iort.node(s.smmu).expect("SMMU").node_type().is_smmu());
        }
    }
    for &id in &ids[..n] {
        match iort.stream_target(node.reference(), id) {
            Ok(StreamTarget::Smmu { smmu, .. }) => {
                assert!(iort.node(smmu).expect("SMMU").node_type().is_smmu())
            }
            Ok(StreamTarget::Untranslated { its_group, .. }) => its(iort, its_group),
            Err(_) => {}
        }
        if let Ok(t) = iort.msi_target(node.reference(), id) {
            its(iort, t.its_group);
        }
    }
}
