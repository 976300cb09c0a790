//! Fuzz target `firmware_fdt`: the device-tree decoders ([`crate::firmware::fdt`]) on
//! arbitrary bytes. Never a panic; every node the walk returns is found again by its path's
//! last step and its depth is bounded; `iommus` and `iommu-map` answers name nodes with a
//! usable `#iommu-cells`; a host bridge's ATS permission is `ats-supported`'s, and the hints of
//! a node with `iommu-map` carry it (no stall), those of any other node `Undeclared`.

use crate::firmware::fdt::{Fdt, FdtNode, MAX_DEPTH};
use crate::iommu::AtsPermission;

/// Nodes looked at closely (`dma_coherent` walks the tree again for each).
const MAX_NODES: usize = 64;

/// The target's body.
pub fn fdt(data: &[u8]) {
    let Ok(fdt) = Fdt::parse(data) else {
        return;
    };
    for node in fdt.nodes().take(MAX_NODES) {
        let Ok(node) = node else { break };
        assert!(node.depth <= MAX_DEPTH);
        let _ = node.property(b"compatible");
        let _ = fdt.dma_coherent(&node);
        if let Ok(iommus) = fdt.iommus(&node) {
            for spec in iommus.take(8) {
                let Ok(spec) = spec else { break };
                assert!(spec.cells.len() <= 8);
                assert!(spec
                    .iommu
                    .property(b"#iommu-cells")
                    .ok()
                    .flatten()
                    .is_some());
            }
        }
        for rid in [0, 0x20, 0xffff, u32::MAX] {
            if let Ok(Some((iommu, _))) = fdt.map_rid(&node, rid) {
                assert!(iommu.property(b"#iommu-cells").ok().flatten().is_some());
            }
        }
        check_ats(&fdt, &node);
    }
}

/// `root_complex_ats` is `ats-supported`'s presence; `device_hints` carries it for a node with
/// `iommu-map` (and no stall there), `Undeclared` for any other.
fn check_ats(fdt: &Fdt<'_>, node: &FdtNode<'_>) {
    let has = |name: &[u8]| node.property(name).map(|v| v.is_some());
    let Ok(permission) = fdt.root_complex_ats(node) else {
        return;
    };
    let supported = has(b"ats-supported").expect("a property read once reads again");
    assert_eq!(
        permission,
        if supported {
            AtsPermission::Allowed
        } else {
            AtsPermission::Forbidden
        }
    );
    let (Ok(hints), Ok(bridge)) = (fdt.device_hints(node), has(b"iommu-map")) else {
        return;
    };
    if bridge {
        assert_eq!(hints.ats_permission, permission);
        assert!(!hints.stall, "a PCIe host bridge's devices never stall");
    } else {
        assert_eq!(hints.ats_permission, AtsPermission::Undeclared);
    }
}
