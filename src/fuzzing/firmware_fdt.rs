//! Fuzz target `firmware_fdt`: the device-tree decoders ([`crate::firmware::fdt`]) on
//! arbitrary bytes. Never a panic; every node the walk returns is found again by its path's
//! last step and its depth is bounded; `iommus` and `iommu-map` answers name nodes with a
//! usable `#iommu-cells`.

use crate::firmware::fdt::{Fdt, MAX_DEPTH};

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
    }
}
