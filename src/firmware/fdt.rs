//! The flattened device tree (DTB) as far as IOMMUs need it: Devicetree Specification v0.4,
//! chapter 5 "Flattened Devicetree (DTB) Format" (§5.2 header, §5.4 structure block, §5.5
//! strings block), and the bindings that place devices behind an IOMMU: `iommus` with the
//! IOMMU's `#iommu-cells` (Linux `Documentation/devicetree/bindings/iommu/iommu.txt`), a PCI
//! host bridge's `iommu-map` / `iommu-map-mask` (`.../pci/pci-iommu.txt`) and `ats-supported`
//! (`.../pci/host-generic-pci.yaml`: its root complex handles PCIe ATS), and `dma-coherent` /
//! `dma-noncoherent` (§2.3 standard properties; inherited from the nearest ancestor that says).
//!
//! The blob is borrowed; nothing is allocated. Every token, name, property and cell array is
//! checked against the block that holds it, nodes nest at most [`MAX_DEPTH`] deep, and a
//! malformed blob gives an [`Error`] carrying the offset and the offending value.

use core::fmt;

/// `magic` of a DTB (§5.2).
pub const FDT_MAGIC: u32 = 0xd00d_feed;
/// Deepest node nesting walked.
pub const MAX_DEPTH: usize = 32;

const FDT_BEGIN_NODE: u32 = 1;
const FDT_END_NODE: u32 = 2;
const FDT_PROP: u32 = 3;
const FDT_NOP: u32 = 4;
const FDT_END: u32 = 9;

/// An error decoding a device tree. Every variant carries the value that was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The blob is shorter than the 40-byte header, or than its `totalsize`.
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
    /// `magic` is not `0xd00dfeed`.
    Magic(u32),
    /// `version` below 17 (no `size_dt_struct`).
    Version(u32),
    /// The structure or strings block lies outside `totalsize`.
    Block {
        /// `"structure"` or `"strings"`.
        which: &'static str,
        /// Its offset.
        offset: u32,
        /// Its size.
        size: u32,
    },
    /// A token, name or property value at `offset` of the structure block runs past it.
    StructTruncated {
        /// Offset in the structure block.
        offset: usize,
    },
    /// An unknown token, or a token where it cannot be (a property after a child node, an
    /// `FDT_END_NODE` without a node, the walk ending inside a node).
    Token {
        /// Offset in the structure block.
        offset: usize,
        /// The token.
        token: u32,
    },
    /// A property name offset outside the strings block, or a name without its NUL.
    Name {
        /// The offset into the strings block.
        nameoff: u32,
    },
    /// Nodes nest deeper than [`MAX_DEPTH`].
    TooDeep {
        /// Offset of the node that went too deep.
        offset: usize,
    },
    /// A property whose length is not the whole number of cells its binding needs.
    Cells {
        /// The node.
        node: usize,
        /// The property.
        property: &'static str,
        /// Its length in bytes.
        length: usize,
    },
    /// A phandle no node carries.
    NoPhandle {
        /// The phandle.
        phandle: u32,
    },
    /// An IOMMU node's `#iommu-cells` is missing, or above 2 (or not 1 for `iommu-map`).
    IommuCells {
        /// The IOMMU node.
        node: usize,
        /// Its value (`u32::MAX` when missing).
        cells: u32,
    },
    /// `iommu-map` exists but no entry covers the (masked) requester ID.
    NoMapping {
        /// The host bridge node.
        node: usize,
        /// The requester ID after `iommu-map-mask`.
        rid: u32,
    },
    /// An `iommu-map` entry whose range wraps past `u32::MAX`.
    RangeOverflow {
        /// The host bridge node.
        node: usize,
        /// The entry's `rid-base`.
        rid_base: u32,
        /// Its `length`.
        length: u32,
    },
    /// An `iommu-map` entry whose `rid-base` has bits `iommu-map-mask` clears: no masked
    /// requester ID can start its range, so the map was not written for this mask.
    MaskIgnoresRidBase {
        /// The host bridge node.
        node: usize,
        /// The entry's `rid-base`.
        rid_base: u32,
        /// The `iommu-map-mask`.
        mask: u32,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { needed, available } => {
                write!(f, "DTB: {needed:#x} bytes needed, {available:#x} given")
            }
            Error::Magic(m) => write!(f, "DTB magic {m:#x}, not {FDT_MAGIC:#x}"),
            Error::Version(v) => write!(f, "DTB version {v}, 17 or later needed"),
            Error::Block {
                which,
                offset,
                size,
            } => write!(
                f,
                "DTB {which} block {offset:#x}+{size:#x} lies outside the blob"
            ),
            Error::StructTruncated { offset } => {
                write!(f, "DTB structure block truncated at {offset:#x}")
            }
            Error::Token { offset, token } => {
                write!(f, "DTB token {token:#x} at {offset:#x} is out of place")
            }
            Error::Name { nameoff } => write!(f, "DTB property name offset {nameoff:#x} is bad"),
            Error::TooDeep { offset } => {
                write!(f, "DTB node at {offset:#x} nests deeper than {MAX_DEPTH}")
            }
            Error::Cells {
                node,
                property,
                length,
            } => write!(
                f,
                "DTB node at {node:#x}: {property} is {length} bytes, not whole entries"
            ),
            Error::NoPhandle { phandle } => write!(f, "DTB: no node has phandle {phandle:#x}"),
            Error::IommuCells { node, cells } => {
                write!(
                    f,
                    "DTB IOMMU node at {node:#x}: #iommu-cells {cells:#x} unsupported"
                )
            }
            Error::NoMapping { node, rid } => {
                write!(
                    f,
                    "DTB node at {node:#x}: no iommu-map entry covers RID {rid:#x}"
                )
            }
            Error::RangeOverflow {
                node,
                rid_base,
                length,
            } => write!(
                f,
                "DTB node at {node:#x}: iommu-map entry {rid_base:#x}+{length:#x} wraps"
            ),
            Error::MaskIgnoresRidBase {
                node,
                rid_base,
                mask,
            } => write!(
                f,
                "DTB node at {node:#x}: iommu-map-mask {mask:#x} ignores rid-base {rid_base:#x}"
            ),
        }
    }
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// A checked device tree blob.
#[derive(Clone, Copy, Debug)]
pub struct Fdt<'a> {
    structs: &'a [u8],
    strings: &'a [u8],
}

/// One token of the structure block.
#[derive(Clone, Copy)]
enum Token<'a> {
    Begin(&'a [u8]),
    End,
    Prop(&'a [u8], &'a [u8]),
    Nop,
    Finish,
}

impl<'a> Fdt<'a> {
    /// Checks the header (§5.2) of the blob at the start of `blob` and finds its blocks.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::Magic`], [`Error::Version`], [`Error::Block`].
    pub fn parse(blob: &'a [u8]) -> Result<Self, Error> {
        let field = |i: usize| {
            be32(blob, i * 4).ok_or(Error::Truncated {
                needed: 40,
                available: blob.len(),
            })
        };
        let magic = field(0)?;
        if magic != FDT_MAGIC {
            return Err(Error::Magic(magic));
        }
        let total = field(1)? as usize;
        let (off_struct, off_strings, version) = (field(2)?, field(3)?, field(5)?);
        let (size_strings, size_struct) = (field(8)?, field(9)?);
        if version < 17 {
            return Err(Error::Version(version));
        }
        let blob = blob.get(..total).ok_or(Error::Truncated {
            needed: total,
            available: blob.len(),
        })?;
        let block = |which, offset: u32, size: u32| {
            let start = offset as usize;
            start
                .checked_add(size as usize)
                .and_then(|end| blob.get(start..end))
                .ok_or(Error::Block {
                    which,
                    offset,
                    size,
                })
        };
        Ok(Self {
            structs: block("structure", off_struct, size_struct)?,
            strings: block("strings", off_strings, size_strings)?,
        })
    }

    /// The token at `offset` and the offset after it.
    fn token(&self, offset: usize) -> Result<(Token<'a>, usize), Error> {
        let truncated = Error::StructTruncated { offset };
        let token = be32(self.structs, offset).ok_or(truncated)?;
        let body = offset.checked_add(4).ok_or(truncated)?;
        let align = |x: usize| x.checked_add(3).map(|x| x & !3).ok_or(truncated);
        match token {
            FDT_BEGIN_NODE => {
                let rest = self.structs.get(body..).ok_or(truncated)?;
                let nul = rest.iter().position(|&b| b == 0).ok_or(truncated)?;
                let name = rest.get(..nul).ok_or(truncated)?;
                let next = body.checked_add(nul).and_then(|x| x.checked_add(1));
                Ok((Token::Begin(name), align(next.ok_or(truncated)?)?))
            }
            FDT_END_NODE => Ok((Token::End, body)),
            FDT_PROP => {
                let len = be32(self.structs, body).ok_or(truncated)? as usize;
                let nameoff = body
                    .checked_add(4)
                    .and_then(|at| be32(self.structs, at))
                    .ok_or(truncated)?;
                let start = body.checked_add(8).ok_or(truncated)?;
                let end = start.checked_add(len).ok_or(truncated)?;
                let value = self.structs.get(start..end).ok_or(truncated)?;
                Ok((Token::Prop(self.string(nameoff)?, value), align(end)?))
            }
            FDT_NOP => Ok((Token::Nop, body)),
            FDT_END => Ok((Token::Finish, body)),
            token => Err(Error::Token { offset, token }),
        }
    }

    fn string(&self, nameoff: u32) -> Result<&'a [u8], Error> {
        let rest = self
            .strings
            .get(nameoff as usize..)
            .ok_or(Error::Name { nameoff })?;
        rest.iter()
            .position(|&b| b == 0)
            .and_then(|nul| rest.get(..nul))
            .ok_or(Error::Name { nameoff })
    }

    /// Every node in document order (the root first). The iterator yields the first error
    /// and stops.
    pub fn nodes(&self) -> Nodes<'a> {
        Nodes {
            fdt: *self,
            offset: 0,
            depth: 0,
            done: false,
        }
    }

    /// The node whose `phandle` (or `linux,phandle`) is `phandle`.
    ///
    /// # Errors
    /// [`Error::NoPhandle`]; the errors of the walk.
    pub fn node_by_phandle(&self, phandle: u32) -> Result<FdtNode<'a>, Error> {
        for node in self.nodes() {
            let node = node?;
            for name in [&b"phandle"[..], b"linux,phandle"] {
                if node.property(name)?.and_then(|v| be32(v, 0)) == Some(phandle) {
                    return Ok(node);
                }
            }
        }
        Err(Error::NoPhandle { phandle })
    }

    /// The node at `path` (`b"/pcie@10000000"`; `b"/"` is the root). Unit addresses must be
    /// given as the tree spells them.
    ///
    /// # Errors
    /// The errors of the walk.
    pub fn node_by_path(&self, path: &[u8]) -> Result<Option<FdtNode<'a>>, Error> {
        let mut parts = path.split(|&b| b == b'/').filter(|p| !p.is_empty());
        let mut want = parts.next();
        let mut matched = 0; // depth of the deepest node on the path found so far
        for node in self.nodes() {
            let node = node?;
            if node.depth == 0 {
                if want.is_none() {
                    return Ok(Some(node));
                }
                continue;
            }
            if node.depth <= matched {
                return Ok(None); // left the subtree of the last matched node
            }
            if node.depth == matched + 1 && Some(node.name) == want {
                matched += 1;
                want = parts.next();
                if want.is_none() {
                    return Ok(Some(node));
                }
            }
        }
        Ok(None)
    }

    /// Whether DMA of `node` is coherent: `dma-coherent` (true) or `dma-noncoherent` (false)
    /// on the node or its nearest ancestor that has either; false if none does.
    ///
    /// # Errors
    /// The errors of the walk.
    pub fn dma_coherent(&self, node: &FdtNode<'a>) -> Result<bool, Error> {
        let mut path = [0usize; MAX_DEPTH + 1];
        let mut found = None;
        for n in self.nodes() {
            let n = n?;
            // `nodes` refuses a tree deeper than MAX_DEPTH: every depth has its slot.
            if let Some(slot) = path.get_mut(n.depth) {
                *slot = n.offset;
            }
            if n.offset == node.offset {
                found = Some(n.depth);
                break;
            }
        }
        let Some(depth) = found else { return Ok(false) };
        for &offset in path.iter().take(depth.saturating_add(1)).rev() {
            let n = self.node_at(offset)?;
            if n.property(b"dma-coherent")?.is_some() {
                return Ok(true);
            }
            if n.property(b"dma-noncoherent")?.is_some() {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// The [`DeviceHints`](crate::iommu::DeviceHints) the tree declares for the device at
    /// `node`: `dma-can-stall` on the node itself (the SMMUv3 binding: the device tolerates
    /// stalled transactions; not inherited) is [`DeviceHints::stall`]. For a PCI host bridge
    /// behind an IOMMU (a node with `iommu-map`, as [`map_rid`](Self::map_rid) reads it), the
    /// hints of the PCIe devices below it, as `iort::platform::device_hints` gives those of a
    /// root complex: no stall (PCIe never stalls, IHI 0070 §3.12.1), and
    /// [`DeviceHints::ats_permission`] from [`root_complex_ats`](Self::root_complex_ats). Any
    /// other node's ATS permission is left `Undeclared` (the tree has no ATS binding for it).
    /// Whether ATS is on, PRI and the PASID width of a PCIe device are its own capabilities,
    /// not in the tree: unset.
    ///
    /// [`DeviceHints::stall`]: crate::iommu::DeviceHints::stall
    /// [`DeviceHints::ats_permission`]: crate::iommu::DeviceHints::ats_permission
    ///
    /// # Errors
    /// The errors of reading the node's properties.
    pub fn device_hints(&self, node: &FdtNode<'a>) -> Result<crate::iommu::DeviceHints, Error> {
        if node.property(b"iommu-map")?.is_some() {
            return Ok(crate::iommu::DeviceHints {
                ats_permission: self.root_complex_ats(node)?,
                ..crate::iommu::DeviceHints::default()
            });
        }
        Ok(crate::iommu::DeviceHints {
            stall: node.property(b"dma-can-stall")?.is_some(),
            ..crate::iommu::DeviceHints::default()
        })
    }

    /// What the PCI host bridge `bridge` (the node whose `iommu-map` places its devices, see
    /// [`map_rid`](Self::map_rid)) says of its devices' PCIe ATS: the boolean `ats-supported`
    /// (Linux `bindings/pci/host-generic-pci.yaml`, 2024: the root complex handles
    /// Translation Requests and translated Memory Requests) allows it, its absence forbids
    /// it: a root complex that ignores the Address Type would forward a translated request as
    /// an untranslated one. As Linux, which gives ATS to no device below a host bridge
    /// without the property (`IOMMU_FWSPEC_PCI_RC_ATS`, checked by the SMMUv3 driver), and as
    /// `iort::platform::root_complex_ats` reads an IORT root complex's `ATS Attribute`. A
    /// property with a value counts as present (as Linux's `of_property_read_bool`).
    ///
    /// # Errors
    /// The errors of reading the node's properties.
    pub fn root_complex_ats(
        &self,
        bridge: &FdtNode<'a>,
    ) -> Result<crate::iommu::AtsPermission, Error> {
        Ok(if bridge.property(b"ats-supported")?.is_some() {
            crate::iommu::AtsPermission::Allowed
        } else {
            crate::iommu::AtsPermission::Forbidden
        })
    }

    fn node_at(&self, offset: usize) -> Result<FdtNode<'a>, Error> {
        match self.token(offset)? {
            (Token::Begin(name), body) => Ok(FdtNode {
                fdt: *self,
                offset,
                body,
                name,
                depth: 0,
            }),
            _ => Err(Error::Token {
                offset,
                token: be32(self.structs, offset).unwrap_or(0),
            }),
        }
    }

    /// The IOMMUs of a device node: its `iommus` property, one specifier per IOMMU, each the
    /// IOMMU's phandle followed by `#iommu-cells` cells (0 to 2).
    ///
    /// # Errors
    /// [`Error::NoPhandle`], [`Error::IommuCells`], [`Error::Cells`] for a property that ends
    /// inside a specifier; the errors of the walk.
    pub fn iommus(&self, node: &FdtNode<'a>) -> Result<Iommus<'a>, Error> {
        Ok(Iommus {
            fdt: *self,
            node: node.offset,
            value: node.property(b"iommus")?.unwrap_or(&[]),
        })
    }

    /// The IOMMU and StreamID of requester ID `rid` below the PCI host bridge `bridge`: its
    /// `iommu-map` entries (`rid-base`, IOMMU phandle, `iommu-base`, `length`; the IOMMU must
    /// have `#iommu-cells = 1`) after masking `rid` with `iommu-map-mask`. `None` if the
    /// bridge has no `iommu-map` (its devices are not behind an IOMMU).
    ///
    /// # Errors
    /// [`Error::NoMapping`] if the map exists and covers no such RID; [`Error::Cells`];
    /// [`Error::RangeOverflow`] or [`Error::MaskIgnoresRidBase`] if any entry of the map is
    /// malformed (whichever RID is asked); [`Error::NoPhandle`], [`Error::IommuCells`].
    pub fn map_rid(
        &self,
        bridge: &FdtNode<'a>,
        rid: u32,
    ) -> Result<Option<(FdtNode<'a>, u32)>, Error> {
        let Some(map) = bridge.property(b"iommu-map")? else {
            return Ok(None);
        };
        if map.len() % 16 != 0 {
            return Err(Error::Cells {
                node: bridge.offset,
                property: "iommu-map",
                length: map.len(),
            });
        }
        let mask = match bridge.property(b"iommu-map-mask")? {
            None => u32::MAX,
            Some(v) if v.len() == 4 => be32(v, 0).unwrap_or(u32::MAX),
            Some(v) => {
                return Err(Error::Cells {
                    node: bridge.offset,
                    property: "iommu-map-mask",
                    length: v.len(),
                })
            }
        };
        // Every entry is checked before any is matched, so the answer for one RID never
        // depends on where in the map a malformed entry sits.
        for entry in map.chunks_exact(16) {
            MapEntry::decode(entry).check(bridge.offset, mask)?;
        }
        let masked = rid & mask;
        for entry in map.chunks_exact(16).map(MapEntry::decode) {
            let Some(sid) = entry.translate(masked) else {
                continue;
            };
            let iommu = self.node_by_phandle(entry.phandle)?;
            let cells = iommu_cells(&iommu)?;
            if cells != 1 {
                return Err(Error::IommuCells {
                    node: iommu.offset,
                    cells,
                });
            }
            return Ok(Some((iommu, sid)));
        }
        Err(Error::NoMapping {
            node: bridge.offset,
            rid: masked,
        })
    }
}

/// One `iommu-map` entry (pci-iommu.txt): RIDs `[rid_base, rid_base + length)` go to the IOMMU
/// `phandle` as `rid - rid_base + out_base`.
#[derive(Clone, Copy)]
struct MapEntry {
    rid_base: u32,
    phandle: u32,
    out_base: u32,
    length: u32,
}

impl MapEntry {
    fn decode(entry: &[u8]) -> Self {
        let cell = |i: usize| be32(entry, 4 * i).unwrap_or(0);
        MapEntry {
            rid_base: cell(0),
            phandle: cell(1),
            out_base: cell(2),
            length: cell(3),
        }
    }

    /// Refuses an entry whose input or output range wraps (it may end exactly at 2^32, its
    /// last ID 0xffff_ffff), and one whose `rid-base` has bits the mask clears: the mask is
    /// applied before the lookup, so no masked RID can start that range (Linux `of_map_id`
    /// refuses it too).
    fn check(&self, node: usize, mask: u32) -> Result<(), Error> {
        let top = 1u64 << 32;
        let len = u64::from(self.length);
        if u64::from(self.rid_base) + len > top || u64::from(self.out_base) + len > top {
            return Err(Error::RangeOverflow {
                node,
                rid_base: self.rid_base,
                length: self.length,
            });
        }
        if self.rid_base & !mask != 0 {
            return Err(Error::MaskIgnoresRidBase {
                node,
                rid_base: self.rid_base,
                mask,
            });
        }
        Ok(())
    }

    /// The output ID of (masked) `rid` if this entry covers it. Only for checked entries:
    /// then `rid - rid_base < length` and `out_base + length <= 2^32`.
    fn translate(&self, rid: u32) -> Option<u32> {
        let offset = rid.checked_sub(self.rid_base)?;
        if offset >= self.length {
            return None;
        }
        self.out_base.checked_add(offset)
    }
}

fn iommu_cells(iommu: &FdtNode<'_>) -> Result<u32, Error> {
    let cells = iommu
        .property(b"#iommu-cells")?
        .and_then(|v| (v.len() == 4).then(|| be32(v, 0)).flatten())
        .unwrap_or(u32::MAX);
    if cells > 2 {
        return Err(Error::IommuCells {
            node: iommu.offset,
            cells,
        });
    }
    Ok(cells)
}

/// A node of the tree.
#[derive(Clone, Copy, Debug)]
pub struct FdtNode<'a> {
    fdt: Fdt<'a>,
    offset: usize,
    body: usize,
    /// The node's name with its unit address (`b"smmuv3@9050000"`; empty for the root).
    pub name: &'a [u8],
    /// Depth (0 for the root; only as found by [`Fdt::nodes`]).
    pub depth: usize,
}

impl<'a> FdtNode<'a> {
    /// Offset of the node's `FDT_BEGIN_NODE` token in the structure block: its identity.
    pub const fn offset(&self) -> usize {
        self.offset
    }

    /// The value of property `name`, if the node has it.
    ///
    /// # Errors
    /// The errors of the node's tokens.
    pub fn property(&self, name: &[u8]) -> Result<Option<&'a [u8]>, Error> {
        let mut at = self.body;
        loop {
            match self.fdt.token(at)? {
                (Token::Prop(n, value), next) => {
                    if n == name {
                        return Ok(Some(value));
                    }
                    at = next;
                }
                (Token::Nop, next) => at = next,
                _ => return Ok(None),
            }
        }
    }
}

/// Iterator over the nodes of an [`Fdt`].
#[derive(Clone, Debug)]
pub struct Nodes<'a> {
    fdt: Fdt<'a>,
    offset: usize,
    depth: usize,
    done: bool,
}

impl<'a> Nodes<'a> {
    fn advance(&mut self) -> Result<Option<FdtNode<'a>>, Error> {
        loop {
            let at = self.offset;
            let (token, next) = self.fdt.token(at)?;
            self.offset = next;
            match token {
                Token::Begin(name) => {
                    if self.depth > MAX_DEPTH {
                        return Err(Error::TooDeep { offset: at });
                    }
                    let node = FdtNode {
                        fdt: self.fdt,
                        offset: at,
                        body: next,
                        name,
                        depth: self.depth,
                    };
                    self.depth += 1;
                    return Ok(Some(node));
                }
                Token::End if self.depth > 0 => self.depth -= 1,
                Token::Prop(..) if self.depth > 0 => {}
                Token::Nop => {}
                Token::Finish if self.depth == 0 => return Ok(None),
                Token::End | Token::Prop(..) | Token::Finish => {
                    return Err(Error::Token {
                        offset: at,
                        token: be32(self.fdt.structs, at).unwrap_or(0),
                    })
                }
            }
        }
    }
}

impl<'a> Iterator for Nodes<'a> {
    type Item = Result<FdtNode<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let r = self.advance();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r.transpose()
    }
}

impl core::iter::FusedIterator for Nodes<'_> {}

/// One entry of a node's `iommus`.
#[derive(Clone, Copy, Debug)]
pub struct IommuSpecifier<'a> {
    /// The IOMMU node.
    pub iommu: FdtNode<'a>,
    /// The specifier cells (`#iommu-cells` of them, big-endian).
    pub cells: &'a [u8],
}

impl IommuSpecifier<'_> {
    /// The first cell: the StreamID on an SMMU (`#iommu-cells = 1`; with 2, the second is a
    /// mask, SMMUv1/v2 only). `None` with `#iommu-cells = 0`.
    pub fn stream_id(&self) -> Option<u32> {
        be32(self.cells, 0)
    }
}

/// Iterator over a node's `iommus` (see [`Fdt::iommus`]); stops after the first error.
#[derive(Clone, Debug)]
pub struct Iommus<'a> {
    fdt: Fdt<'a>,
    node: usize,
    value: &'a [u8],
}

impl<'a> Iommus<'a> {
    fn advance(&mut self) -> Result<Option<IommuSpecifier<'a>>, Error> {
        if self.value.is_empty() {
            return Ok(None);
        }
        let cells_error = Error::Cells {
            node: self.node,
            property: "iommus",
            length: self.value.len(),
        };
        let phandle = be32(self.value, 0).ok_or(cells_error)?;
        let iommu = self.fdt.node_by_phandle(phandle)?;
        let n = iommu_cells(&iommu)? as usize * 4;
        let cells = self.value.get(4..4 + n).ok_or(cells_error)?;
        self.value = self.value.get(4 + n..).unwrap_or(&[]);
        Ok(Some(IommuSpecifier { iommu, cells }))
    }
}

impl<'a> Iterator for Iommus<'a> {
    type Item = Result<IommuSpecifier<'a>, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        let r = self.advance();
        if !matches!(r, Ok(Some(_))) {
            self.value = &[];
        }
        r.transpose()
    }
}

impl core::iter::FusedIterator for Iommus<'_> {}

#[cfg(test)]
mod tests;
