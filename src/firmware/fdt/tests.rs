//! Hand-built device trees: every binding shape and malformed blobs.

use std::vec::Vec;

use super::*;

/// A DTB builder: `begin(name)`, `prop(name, value)`, `end()`, then `build()`.
#[derive(Default)]
pub(crate) struct Dtb {
    structs: Vec<u8>,
    strings: Vec<u8>,
}

impl Dtb {
    pub(crate) fn begin(&mut self, name: &str) -> &mut Self {
        self.structs
            .extend_from_slice(&FDT_BEGIN_NODE.to_be_bytes());
        self.structs.extend_from_slice(name.as_bytes());
        self.structs.push(0);
        self.pad();
        self
    }

    pub(crate) fn prop(&mut self, name: &str, value: &[u8]) -> &mut Self {
        let nameoff = self.strings.len() as u32;
        self.strings.extend_from_slice(name.as_bytes());
        self.strings.push(0);
        self.structs.extend_from_slice(&FDT_PROP.to_be_bytes());
        self.structs
            .extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.structs.extend_from_slice(&nameoff.to_be_bytes());
        self.structs.extend_from_slice(value);
        self.pad();
        self
    }

    pub(crate) fn cells(&mut self, name: &str, cells: &[u32]) -> &mut Self {
        let v: Vec<u8> = cells.iter().flat_map(|c| c.to_be_bytes()).collect();
        self.prop(name, &v)
    }

    pub(crate) fn end(&mut self) -> &mut Self {
        self.structs.extend_from_slice(&FDT_END_NODE.to_be_bytes());
        self
    }

    fn pad(&mut self) {
        while self.structs.len() % 4 != 0 {
            self.structs.push(0);
        }
    }

    pub(crate) fn build(&self) -> Vec<u8> {
        let mut structs = self.structs.clone();
        structs.extend_from_slice(&FDT_END.to_be_bytes());
        let off_struct = 40 + 16; // header, empty memory reservation map
        let off_strings = off_struct + structs.len();
        let total = off_strings + self.strings.len();
        let mut b = Vec::new();
        for f in [
            FDT_MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            40,
            17,
            16,
            0,
            self.strings.len() as u32,
            structs.len() as u32,
        ] {
            b.extend_from_slice(&f.to_be_bytes());
        }
        b.extend_from_slice(&[0; 16]);
        b.extend_from_slice(&structs);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// An SMMU (phandle 1, one cell), an SMMUv2-style IOMMU (phandle 2, two cells), a host bridge
/// with `iommu-map` and a mask, a device with `iommus` on both, a coherent bus with a
/// non-coherent child.
fn tree() -> Vec<u8> {
    let mut d = Dtb::default();
    d.begin("")
        .begin("smmu@2b400000")
        .cells("#iommu-cells", &[1])
        .cells("phandle", &[1])
        .end()
        .begin("smmu@2b500000")
        .cells("#iommu-cells", &[2])
        .cells("linux,phandle", &[2])
        .end()
        .begin("pcie@40000000")
        .prop("dma-coherent", &[])
        // RIDs 0-0xff -> SIDs 0x100.., 0x8000-0x81ff -> 0x1000..
        .cells("iommu-map", &[0, 1, 0x100, 0x100, 0x8000, 1, 0x1000, 0x200])
        .cells("iommu-map-mask", &[0xfff8]) // functions share a StreamID
        .end()
        .begin("soc")
        .prop("dma-coherent", &[])
        .begin("dma@1000")
        .cells("iommus", &[1, 0x42, 2, 0x7, 0xff00])
        .prop("dma-can-stall", &[])
        .end()
        .begin("gpu@2000")
        .prop("dma-noncoherent", &[])
        .begin("sub")
        .end()
        .end()
        .end()
        .begin("plain")
        .end()
        .end();
    d.build()
}

#[test]
fn nodes_paths_and_phandles() {
    let t = tree();
    let fdt = Fdt::parse(&t).unwrap();
    let names: Vec<_> = fdt
        .nodes()
        .map(|n| n.unwrap())
        .map(|n| (n.name, n.depth))
        .collect();
    assert_eq!(names.len(), 9);
    assert_eq!(names[0], (&b""[..], 0));
    assert_eq!(names[6], (&b"gpu@2000"[..], 2));
    assert_eq!(names[7], (&b"sub"[..], 3));
    let dma = fdt.node_by_path(b"/soc/dma@1000").unwrap().unwrap();
    assert_eq!(dma.name, b"dma@1000");
    assert!(fdt.node_by_path(b"/soc/dma").unwrap().is_none());
    assert!(fdt.node_by_path(b"/dma@1000").unwrap().is_none());
    assert_eq!(fdt.node_by_path(b"/").unwrap().unwrap().depth, 0);
    assert_eq!(fdt.node_by_phandle(2).unwrap().name, b"smmu@2b500000");
    assert_eq!(
        fdt.node_by_phandle(9).map(|n| n.offset()),
        Err(Error::NoPhandle { phandle: 9 })
    );
}

#[test]
fn iommus_take_the_iommus_cells() {
    let t = tree();
    let fdt = Fdt::parse(&t).unwrap();
    let dma = fdt.node_by_path(b"/soc/dma@1000").unwrap().unwrap();
    let specs: Vec<_> = fdt.iommus(&dma).unwrap().map(|s| s.unwrap()).collect();
    assert_eq!(specs.len(), 2);
    assert_eq!(specs[0].iommu.name, b"smmu@2b400000");
    assert_eq!(specs[0].stream_id(), Some(0x42));
    assert_eq!(specs[1].iommu.name, b"smmu@2b500000");
    assert_eq!(specs[1].cells, &[0, 0, 0, 7, 0, 0, 0xff, 0]);
    let plain = fdt.node_by_path(b"/plain").unwrap().unwrap();
    assert_eq!(fdt.iommus(&plain).unwrap().count(), 0);
}

#[test]
fn iommu_map_with_mask() {
    let t = tree();
    let fdt = Fdt::parse(&t).unwrap();
    let pcie = fdt.node_by_path(b"/pcie@40000000").unwrap().unwrap();
    let sid = |rid| fdt.map_rid(&pcie, rid).map(|r| r.map(|(n, s)| (n.name, s)));
    assert_eq!(sid(0x20), Ok(Some((&b"smmu@2b400000"[..], 0x120))));
    // Function 3 of the same device: masked to function 0.
    assert_eq!(sid(0x23), Ok(Some((&b"smmu@2b400000"[..], 0x120))));
    assert_eq!(sid(0xff), Ok(Some((&b"smmu@2b400000"[..], 0x1f8))));
    assert_eq!(sid(0x8108), Ok(Some((&b"smmu@2b400000"[..], 0x1108))));
    assert_eq!(
        sid(0x100),
        Err(Error::NoMapping {
            node: pcie.offset(),
            rid: 0x100
        })
    );
    // A bridge without iommu-map: not behind an IOMMU.
    let plain = fdt.node_by_path(b"/plain").unwrap().unwrap();
    assert_eq!(fdt.map_rid(&plain, 0).map(|r| r.is_none()), Ok(true));
}

#[test]
fn dma_coherent_is_inherited_from_the_nearest_ancestor_that_says() {
    let t = tree();
    let fdt = Fdt::parse(&t).unwrap();
    let at = |p: &[u8]| {
        fdt.dma_coherent(&fdt.node_by_path(p).unwrap().unwrap())
            .unwrap()
    };
    assert!(at(b"/pcie@40000000"));
    assert!(at(b"/soc/dma@1000"));
    assert!(!at(b"/soc/gpu@2000"));
    assert!(!at(b"/soc/gpu@2000/sub"));
    assert!(!at(b"/plain"));
    assert!(!at(b"/smmu@2b400000"));
}

#[test]
fn dma_can_stall_is_the_stall_hint() {
    let t = tree();
    let fdt = Fdt::parse(&t).unwrap();
    let stall = |p: &[u8]| {
        fdt.device_hints(&fdt.node_by_path(p).unwrap().unwrap())
            .unwrap()
            .stall
    };
    assert!(stall(b"/soc/dma@1000"));
    // Not inherited, and absent elsewhere.
    assert!(!stall(b"/soc"));
    assert!(!stall(b"/soc/gpu@2000"));
    assert!(!stall(b"/pcie@40000000"));
}

/// Two host bridges behind one SMMU, one with `ats-supported`: only its devices may use ATS
/// (Linux gives none to a device below a bridge without it); a platform device's permission
/// is not the tree's to say.
fn ats_tree() -> Vec<u8> {
    let mut d = root_with_smmu();
    d.begin("pcie@10000000")
        .prop("ats-supported", &[])
        .cells("iommu-map", &[0, 1, 0, 0x10000])
        .end()
        .begin("pcie@20000000")
        .cells("iommu-map", &[0, 1, 0x10000, 0x10000])
        .end()
        .begin("dma@1000")
        .prop("dma-can-stall", &[])
        .cells("iommus", &[1, 5])
        .end()
        .end();
    d.build()
}

#[test]
fn a_host_bridge_without_ats_supported_forbids_its_devices_ats() {
    use crate::iommu::AtsPermission;
    let t = ats_tree();
    let fdt = Fdt::parse(&t).unwrap();
    let hints = |p: &[u8]| {
        fdt.device_hints(&fdt.node_by_path(p).unwrap().unwrap())
            .unwrap()
    };
    assert_eq!(
        hints(b"/pcie@20000000").ats_permission,
        AtsPermission::Forbidden
    );
    let allowed = hints(b"/pcie@10000000");
    assert_eq!(allowed.ats_permission, AtsPermission::Allowed);
    assert!(!allowed.stall);
    let dma = hints(b"/dma@1000");
    assert_eq!(dma.ats_permission, AtsPermission::Undeclared);
    assert!(dma.stall);
}

#[test]
fn root_complex_ats_is_the_ats_supported_property() {
    use crate::iommu::AtsPermission;
    let t = ats_tree();
    let fdt = Fdt::parse(&t).unwrap();
    let ats = |p: &[u8]| fdt.root_complex_ats(&fdt.node_by_path(p).unwrap().unwrap());
    assert_eq!(ats(b"/pcie@10000000"), Ok(AtsPermission::Allowed));
    assert_eq!(ats(b"/pcie@20000000"), Ok(AtsPermission::Forbidden));
    // QEMU 10.0.2's `virt` declares no ATS for its host bridge (nor does its IORT).
    let blob = include_bytes!("../../../tests/data/fdt/qemu-virt-smmuv3.dtb");
    let fdt = Fdt::parse(blob).unwrap();
    let pcie = fdt.node_by_path(b"/pcie@10000000").unwrap().unwrap();
    assert_eq!(fdt.root_complex_ats(&pcie), Ok(AtsPermission::Forbidden));
}

#[test]
fn malformed_bindings_are_errors() {
    let mut d = Dtb::default();
    d.begin("")
        .begin("smmu")
        .cells("phandle", &[1])
        .end() // no #iommu-cells
        .begin("wide")
        .cells("phandle", &[2])
        .cells("#iommu-cells", &[3])
        .end()
        .begin("two")
        .cells("phandle", &[3])
        .cells("#iommu-cells", &[2])
        .end()
        .begin("a")
        .cells("iommus", &[1, 5])
        .end()
        .begin("b")
        .cells("iommus", &[2, 1, 2, 3])
        .end()
        .begin("c")
        .cells("iommus", &[3, 1]) // ends inside the specifier
        .end()
        .begin("pci")
        .cells("iommu-map", &[0, 3, 0, 0x100]) // map to a two-cell IOMMU
        .end()
        .begin("pci2")
        .cells("iommu-map", &[0, 3, 0]) // not whole entries
        .end()
        .begin("pci3")
        .cells("iommu-map", &[0xffff_ff00, 3, 0, 0x200]) // wraps
        .end()
        .end();
    let t = d.build();
    let fdt = Fdt::parse(&t).unwrap();
    let node = |p: &[u8]| fdt.node_by_path(p).unwrap().unwrap();
    let first = |p: &[u8]| {
        fdt.iommus(&node(p))
            .unwrap()
            .next()
            .unwrap()
            .map(|s| s.cells.len())
    };
    assert!(matches!(
        first(b"/a"),
        Err(Error::IommuCells {
            cells: u32::MAX,
            ..
        })
    ));
    assert!(matches!(
        first(b"/b"),
        Err(Error::IommuCells { cells: 3, .. })
    ));
    assert!(matches!(
        first(b"/c"),
        Err(Error::Cells {
            property: "iommus",
            ..
        })
    ));
    assert!(matches!(
        fdt.map_rid(&node(b"/pci"), 0).map(|_| ()),
        Err(Error::IommuCells { cells: 2, .. })
    ));
    assert!(matches!(
        fdt.map_rid(&node(b"/pci2"), 0).map(|_| ()),
        Err(Error::Cells {
            property: "iommu-map",
            length: 12,
            ..
        })
    ));
    assert!(matches!(
        fdt.map_rid(&node(b"/pci3"), 0).map(|_| ()),
        Err(Error::RangeOverflow {
            rid_base: 0xffff_ff00,
            ..
        })
    ));
}

#[test]
fn malformed_blobs_are_errors() {
    let good = tree();
    assert!(Fdt::parse(&good).is_ok());
    assert!(matches!(
        Fdt::parse(&good[..20]),
        Err(Error::Truncated { .. })
    ));
    assert!(matches!(
        Fdt::parse(&good[..good.len() - 1]),
        Err(Error::Truncated { .. })
    ));
    let mut t = good.clone();
    t[0] = 0;
    assert!(matches!(Fdt::parse(&t), Err(Error::Magic(_))));
    let mut t = good.clone();
    t[20..24].copy_from_slice(&16u32.to_be_bytes());
    assert_eq!(Fdt::parse(&t).map(|_| ()), Err(Error::Version(16)));
    let mut t = good.clone();
    t[36..40].copy_from_slice(&0x10_0000u32.to_be_bytes());
    assert!(matches!(
        Fdt::parse(&t),
        Err(Error::Block {
            which: "structure",
            ..
        })
    ));
    // An unknown token: the walk yields the error and stops.
    let mut t = good.clone();
    t[56..60].copy_from_slice(&7u32.to_be_bytes());
    let nodes: Vec<_> = Fdt::parse(&t).unwrap().nodes().collect();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].as_ref().map(|n| n.offset()),
        Err(&Error::Token {
            offset: 0,
            token: 7
        })
    );
    // Unbalanced: FDT_END inside a node.
    let mut d = Dtb::default();
    d.begin("").begin("x");
    let t = d.build();
    let last = Fdt::parse(&t).unwrap().nodes().last().unwrap();
    assert!(matches!(last, Err(Error::Token { token: FDT_END, .. })));
    // Too deep.
    let mut d = Dtb::default();
    for _ in 0..=MAX_DEPTH + 1 {
        d.begin("n");
    }
    let t = d.build();
    assert!(Fdt::parse(&t)
        .unwrap()
        .nodes()
        .any(|n| matches!(n, Err(Error::TooDeep { .. }))));
    // A property name offset outside the strings block.
    let mut d = Dtb::default();
    d.begin("").prop("x", &[1]).end();
    let mut t = d.build();
    let nameoff_at = 56 + 8 + 8; // root BEGIN (8 bytes with the empty name), PROP token, len
    t[nameoff_at..nameoff_at + 4].copy_from_slice(&0x100u32.to_be_bytes());
    let fdt = Fdt::parse(&t).unwrap();
    let root = fdt.nodes().next().unwrap().unwrap();
    assert_eq!(root.property(b"x"), Err(Error::Name { nameoff: 0x100 }));
    // A property length past the block.
    let mut t = d.build();
    t[56 + 12..56 + 16].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    let fdt = Fdt::parse(&t).unwrap();
    let root = fdt.nodes().next().unwrap().unwrap();
    assert!(matches!(
        root.property(b"x"),
        Err(Error::StructTruncated { .. })
    ));
}

#[test]
fn qemu_virt_dtb_puts_the_root_complex_behind_the_smmu() {
    // QEMU 10.0.2 `-M virt,iommu=smmuv3,dumpdtb=...` (tests/data/fdt/README.md).
    let blob = include_bytes!("../../../tests/data/fdt/qemu-virt-smmuv3.dtb");
    let fdt = Fdt::parse(blob).unwrap();
    let smmu = fdt
        .node_by_path(b"/smmuv3@9050000")
        .unwrap()
        .expect("SMMUv3 node");
    assert!(fdt.dma_coherent(&smmu).unwrap());
    let pcie = fdt
        .node_by_path(b"/pcie@10000000")
        .unwrap()
        .expect("PCIe host bridge");
    assert!(fdt.dma_coherent(&pcie).unwrap());
    // iommu-map = <0x0 &smmu 0x0 0x10000>: StreamID = requester ID, edu at 00:04.0.
    for rid in [0, 0x20, 0xffff] {
        let (iommu, sid) = fdt.map_rid(&pcie, rid).unwrap().unwrap();
        assert_eq!(iommu.offset(), smmu.offset());
        assert_eq!(sid, rid);
    }
    assert!(matches!(
        fdt.map_rid(&pcie, 0x1_0000),
        Err(Error::NoMapping { .. })
    ));
}

/// A DTB opened at its root with an SMMU in it (phandle 1, one `#iommu-cells`): the caller adds
/// the nodes that map through it, then closes the root.
fn root_with_smmu() -> Dtb {
    let mut d = Dtb::default();
    d.begin("")
        .begin("smmu")
        .cells("phandle", &[1])
        .cells("#iommu-cells", &[1])
        .end();
    d
}

/// An `iommu-map` entry may end exactly at 2^32 (the last RID or StreamID 0xffff_ffff, inclusive):
/// found by review, both were refused as `RangeOverflow`.
#[test]
fn iommu_map_entries_may_end_at_the_top_of_the_id_space() {
    let mut d = root_with_smmu();
    d.begin("pci")
        .cells(
            "iommu-map",
            &[0, 1, 0xffff_ff00, 0x100, 0xffff_ff00, 1, 0x100, 0x100],
        )
        .end()
        .end();
    let t = d.build();
    let fdt = Fdt::parse(&t).unwrap();
    let pci = fdt.node_by_path(b"/pci").unwrap().unwrap();
    let sid = |rid| fdt.map_rid(&pci, rid).map(|r| r.map(|(_, s)| s));
    assert_eq!(sid(0), Ok(Some(0xffff_ff00)));
    assert_eq!(sid(0xff), Ok(Some(0xffff_ffff)));
    assert_eq!(sid(0xffff_ff00), Ok(Some(0x100)));
    assert_eq!(sid(0xffff_ffff), Ok(Some(0x1ff)));
    assert_eq!(
        sid(0x100),
        Err(Error::NoMapping {
            node: pci.offset(),
            rid: 0x100
        })
    );
}

/// An `iommu-map` entry whose `rid-base` has bits `iommu-map-mask` clears (pci-iommu.txt: the
/// mask is applied to the RID *before* it is looked up) can never be the start of a masked RID
/// range: the map was written without the mask in mind, so its offsets are wrong too. Linux's
/// `of_map_id` refuses the lookup (`-EFAULT`, "mask ignores id-base"). Found by review: the
/// entry below (base 0x101 under mask 0xfff8) matched masked RID 0x108 and gave StreamID
/// 0x207, an ID no entry meant for it.
#[test]
fn iommu_map_entry_with_rid_base_outside_the_mask_is_refused() {
    let mut d = root_with_smmu();
    d.begin("pci")
        .cells("iommu-map", &[0x101, 1, 0x200, 0x100])
        .cells("iommu-map-mask", &[0xfff8])
        .end()
        // The bad entry after one that matches: refused all the same, so the answer for a RID
        // does not depend on where the bad entry sits.
        .begin("pci2")
        .cells("iommu-map", &[0, 1, 0, 0x100, 0x8001, 1, 0x1000, 0x100])
        .cells("iommu-map-mask", &[0xfff8])
        .end()
        // Without a mask every rid-base is inside it.
        .begin("pci3")
        .cells("iommu-map", &[0x101, 1, 0x200, 0x100])
        .end()
        .end();
    let t = d.build();
    let fdt = Fdt::parse(&t).unwrap();
    let node = |p: &[u8]| fdt.node_by_path(p).unwrap().unwrap();
    let sid = |p: &[u8], rid| fdt.map_rid(&node(p), rid).map(|r| r.map(|(_, s)| s));
    let refused = |p: &[u8], rid_base| {
        Err(Error::MaskIgnoresRidBase {
            node: node(p).offset(),
            rid_base,
            mask: 0xfff8,
        })
    };
    assert_eq!(sid(b"/pci", 0x108), refused(b"/pci", 0x101));
    assert_eq!(sid(b"/pci", 0x10f), refused(b"/pci", 0x101));
    assert_eq!(sid(b"/pci2", 0x20), refused(b"/pci2", 0x8001));
    assert_eq!(sid(b"/pci3", 0x108), Ok(Some(0x207)));
}
