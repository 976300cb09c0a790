//! The I/O Virtualization Reporting Structure, the ACPI `IVRS` table: AMD I/O Virtualization
//! Technology (IOMMU) Specification, document 48882, revision 3.10, §5.2.1 "IVRS Header" and
//! §5.2.2 "I/O Virtualization Definition Blocks".
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 36 | ACPI table header, signature `IVRS` (ACPI 6.5 §5.2.6) |
//! | 36 | 4 | IVinfo: bit 0 EFRSup, bit 1 DMA remap support, bits 7:5 GVAsize, 14:8 PAsize, 21:15 VAsize, bit 22 HtAtsResv |
//! | 40 | 8 | Reserved |
//! | 48 | - | I/O virtualization definition blocks, each `Type` (1), `Flags` (1), `Length` (2), body |
//!
//! Block types: 10h, 11h, 40h IVHD ([`Ivhd`]); 20h, 21h, 22h IVMD ([`Ivmd`]); others are
//! skipped (their `Length` is still checked), as Linux skips types above those it knows.
//!
//! **One bad block.** A block whose bytes cannot be walked (a `Length` too short or running
//! past the table, a device entry of unknown length) makes the whole table refused: nothing
//! after it can be found. A block that is well formed but says something impossible is
//! refused alone and the table kept ([`Block::Refused`], [`Ivrs::refused_blocks`]): an IVMD of
//! type 22h whose first device ID is after its last names no device, as Linux reads it (it
//! iterates the empty range). Refusing the whole IVRS for it would let an embedder that takes
//! "no IVRS" for "no IOMMU" run every device untranslated. Its memory is then unity-mapped or
//! excluded for no device, which only narrows what devices reach. The DMAR parser does the
//! same with an RMRR's range and the IVMD's own memory range (refused when asked for,
//! [`Ivmd::range`]).

use super::error::{Error, Structure};
use super::ivhd::{Ivhd, IvhdFlags};
use super::ivmd::Ivmd;
use crate::firmware::acpi::{self, read_u16, read_u32, read_u8, PhysMemory, Sdt, Signature};
use crate::iommu::AtsPermission;

/// Offset of the first definition block.
const BLOCKS: usize = 48;
/// Bytes of a block's `Type`, `Flags` and `Length`.
const BLOCK_HEADER: usize = 4;

/// `IVinfo` (§5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IvInfo(pub u32);

impl IvInfo {
    /// Bit 0 `EFRSup`: the EFR images of IVHD types 11h and 40h are valid.
    pub const fn efr_sup(self) -> bool {
        self.0 & 1 != 0
    }

    /// Bit 1: the platform asks for DMA remapping to stay on from firmware to the OS
    /// ("DMA remap support", the pre-boot DMA protection opt-in).
    pub const fn dma_remap_support(self) -> bool {
        self.0 & 2 != 0
    }

    /// Bits 7:5 `GVAsize`: the guest virtual address width code (2: 48 bits, 3: 57 bits).
    pub const fn gva_size(self) -> u32 {
        (self.0 >> 5) & 0x7
    }

    /// Bits 14:8 `PAsize`: the physical address width the units take, in bits.
    pub const fn pa_size(self) -> u32 {
        (self.0 >> 8) & 0x7f
    }

    /// Bits 21:15 `VAsize`: the virtual (IOVA) width the units take, in bits.
    pub const fn va_size(self) -> u32 {
        (self.0 >> 15) & 0x7f
    }

    /// Bit 22 `HtAtsResv`: the HyperTransport range is reserved for ATS.
    pub const fn ht_ats_resv(self) -> bool {
        self.0 & (1 << 22) != 0
    }
}

/// An IVRS table, checked as a whole when it is built: the ACPI header (length, checksum),
/// every block's length, every IVHD's device entries and every IVMD's length. The iterators
/// then yield every block the table holds; an IVMD that names no device is refused alone
/// (see the module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ivrs<'a> {
    table: Sdt<'a>,
    iv_info: IvInfo,
}

impl<'a> Ivrs<'a> {
    /// Checks a table found through the RSDT/XSDT.
    ///
    /// # Errors
    /// [`Error::Acpi`] with [`acpi::Error::WrongSignature`] for another table;
    /// [`Error::TooShort`] for a table without the 12 IVRS bytes after the header; the errors
    /// of the blocks it holds.
    pub fn new(table: Sdt<'a>) -> Result<Self, Error> {
        if table.signature() != Signature::IVRS {
            return Err(acpi::Error::WrongSignature {
                expected: Signature::IVRS,
                found: table.signature(),
            }
            .into());
        }
        let bytes = table.bytes();
        if bytes.len() < BLOCKS {
            return Err(Error::TooShort {
                structure: Structure::Table,
                offset: 0,
                length: bytes.len(),
                minimum: BLOCKS,
            });
        }
        let ivrs = Self {
            table,
            iv_info: IvInfo(read_u32(bytes, 36)?),
        };
        let mut at = BLOCKS;
        while let Some((block_type, body, len)) = raw_block(bytes, at)? {
            decode(block_type, body, at)?;
            at = at.saturating_add(len);
        }
        Ok(ivrs)
    }

    /// Checks the IVRS table at the start of `bytes` (its length, checksum and contents).
    ///
    /// # Errors
    /// Those of [`acpi::Sdt::parse_expecting`] and [`new`](Self::new).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::new(Sdt::parse_expecting(bytes, Signature::IVRS)?)
    }

    /// Finds the IVRS through the RSDP at physical `rsdp_address`, mapped through `mem`, and
    /// checks it.
    ///
    /// # Errors
    /// Those of [`acpi::find_table`] (with [`acpi::Error::NotFound`] on a platform without an
    /// AMD IOMMU) and [`new`](Self::new).
    pub fn find<M: PhysMemory<'a> + ?Sized>(mem: &M, rsdp_address: u64) -> Result<Self, Error> {
        Self::new(acpi::find_table(mem, rsdp_address, Signature::IVRS)?)
    }

    /// The checked table.
    pub const fn table(&self) -> &Sdt<'a> {
        &self.table
    }

    /// `IVinfo`.
    pub const fn iv_info(&self) -> IvInfo {
        self.iv_info
    }

    /// Every definition block, in table order.
    pub fn blocks(&self) -> Blocks<'a> {
        Blocks {
            bytes: self.table.bytes(),
            at: BLOCKS,
        }
    }

    /// Every IVHD, of every type, in table order.
    pub fn ivhds(&self) -> impl Iterator<Item = Ivhd<'a>> + 'a {
        self.blocks().filter_map(|b| match b {
            Block::Ivhd(h) => Some(h),
            _ => None,
        })
    }

    /// Every IVMD, in table order.
    pub fn ivmds(&self) -> impl Iterator<Item = Ivmd> + 'a {
        self.blocks().filter_map(|b| match b {
            Block::Ivmd(m) => Some(m),
            _ => None,
        })
    }

    /// Every block refused alone (the table kept, see the module), in table order: the error
    /// its decoder gave, with its offset.
    pub fn refused_blocks(&self) -> impl Iterator<Item = Error> + 'a {
        self.blocks().filter_map(|b| match b {
            Block::Refused(e) => Some(e),
            _ => None,
        })
    }

    /// One IVHD per IOMMU (an IOMMU is its PCI segment and IOMMU DeviceID), in table order:
    /// of the blocks that describe it, the one of the highest type (10h < 11h < 40h: each type
    /// describes the unit again, the higher ones with more), the last in table order among
    /// blocks of that type. Per IOMMU, as FreeBSD's `ivhd_is_newer`: Linux takes one type for
    /// the whole table (`get_highest_supported_ivhd_type`) and Xen the table's highest, which
    /// agree whenever every IOMMU has the same types, but would drop an IOMMU described only
    /// by a lower type, leaving its devices "behind no unit".
    pub fn units(&self) -> impl Iterator<Item = Ivhd<'a>> + 'a {
        let table = *self;
        self.ivhds()
            .filter(move |h| !table.ivhds().any(|g| supersedes(&g, h)))
    }

    /// The unit that translates PCI `device_id` of `segment` (a device an entry names, or an
    /// alias entry's source), and what its entries say about the device
    /// ([`Ivhd::covering`]: accumulated settings, the last alias; `requester` is the device ID
    /// the unit sees, its DTE's index). When several units name
    /// the device, the last in table order: Linux (`rlookup_table`) and Xen
    /// (`ivrs_mappings[].iommu`) fill their device-to-IOMMU tables block by block, a later
    /// IVHD overwriting an earlier one, and firmware is tested against them.
    pub fn unit_for(&self, segment: u16, device_id: u16) -> Option<(Ivhd<'a>, super::DeviceRange)> {
        self.units()
            .filter(|h| h.segment == segment)
            .filter_map(|h| h.covering(device_id).map(|r| (h, r)))
            .last()
    }

    /// What the IVRS says about PCI `device_id` of `segment` using ATS, for
    /// [`DeviceHints::ats_permission`](crate::iommu::DeviceHints::ats_permission):
    /// [`AtsPermission::Forbidden`] when an extended entry (46h, 47h) naming the device sets
    /// `Extended DTE Setting` bit 31, "ATS disabled" ([`EXT_ATS_DISABLED`](super::EXT_ATS_DISABLED),
    /// AMD 48882 §5.2.2.2 as ACPICA and coreboot read it), or when its unit is described by a
    /// type 10h IVHD whose `IotlbSup` flag is clear (the IOMMU takes no ATS translation
    /// requests; types 11h and 40h report it in the registers, and their flag bit is reserved);
    /// else [`AtsPermission::Allowed`]: the IVRS names no root-port ATS support, so only its
    /// refusals are facts. [`AtsPermission::Undeclared`] when no unit translates the device.
    ///
    /// Linux reads neither (it defines `ACPI_DEVFLAG_ATSDIS` as bit 28 and does not use it,
    /// and gates ATS on every IOMMU's capability-header `IOTLBSup`): where firmware marks a
    /// device's ATS disabled, this keeps it off.
    pub fn ats_permission(&self, segment: u16, device_id: u16) -> AtsPermission {
        let Some((unit, run)) = self.unit_for(segment, device_id) else {
            return AtsPermission::Undeclared;
        };
        let disabled = run
            .extended
            .is_some_and(|e| e & super::EXT_ATS_DISABLED != 0);
        let no_iotlb = unit.block_type == 0x10 && !unit.flags.contains(IvhdFlags::IOTLB_SUP);
        if disabled || no_iotlb {
            AtsPermission::Forbidden
        } else {
            AtsPermission::Allowed
        }
    }

    /// The memory definitions that apply to `device_id` of PCI segment `segment`.
    pub fn memory_for(&self, segment: u16, device_id: u16) -> impl Iterator<Item = Ivmd> + 'a {
        self.ivmds()
            .filter(move |m| m.applies_to(segment, device_id))
    }
}

/// Whether IVHD `g` is used instead of `h` for the same IOMMU: a higher type, or the same
/// type later in the table.
fn supersedes(g: &Ivhd<'_>, h: &Ivhd<'_>) -> bool {
    (g.segment, g.device_id) == (h.segment, h.device_id)
        && (g.block_type > h.block_type || (g.block_type == h.block_type && g.offset > h.offset))
}

/// One I/O virtualization definition block (§5.2.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Block<'a> {
    /// Types 10h, 11h, 40h.
    Ivhd(Ivhd<'a>),
    /// Types 20h, 21h, 22h.
    Ivmd(Ivmd),
    /// A well-formed block that says something impossible, refused alone (see the module):
    /// [`Error::IvmdDeviceRange`].
    Refused(Error),
    /// A type this parser does not decode.
    Other {
        /// `Type`.
        block_type: u8,
        /// The whole block, `Length` bytes.
        bytes: &'a [u8],
        /// Offset of the block in the IVRS table.
        offset: usize,
    },
}

/// A block's `Type`, its `Length` bytes, and that length.
type RawBlock<'a> = (u8, &'a [u8], usize);

/// The block at `at`, or `None` at the end.
fn raw_block(bytes: &[u8], at: usize) -> Result<Option<RawBlock<'_>>, Error> {
    let rest = bytes.get(at..).unwrap_or(&[]);
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < BLOCK_HEADER {
        return Err(Error::TooShort {
            structure: Structure::BlockHeader,
            offset: at,
            length: rest.len(),
            minimum: BLOCK_HEADER,
        });
    }
    let block_type = read_u8(rest, 0)?;
    let len = usize::from(read_u16(rest, 2)?);
    if len < BLOCK_HEADER {
        return Err(Error::TooShort {
            structure: Structure::BlockHeader,
            offset: at,
            length: len,
            minimum: BLOCK_HEADER,
        });
    }
    let body = rest.get(..len).ok_or(Error::Overrun {
        structure: Structure::BlockHeader,
        offset: at,
        length: len,
        remaining: rest.len(),
    })?;
    Ok(Some((block_type, body, len)))
}

/// Decodes one block by its type.
fn decode(block_type: u8, bytes: &[u8], offset: usize) -> Result<Block<'_>, Error> {
    Ok(match block_type {
        0x10 | 0x11 | 0x40 => Block::Ivhd(Ivhd::parse(bytes, offset)?),
        0x20..=0x22 => match Ivmd::parse(bytes, offset) {
            Ok(m) => Block::Ivmd(m),
            Err(e @ Error::IvmdDeviceRange { .. }) => Block::Refused(e),
            Err(e) => return Err(e),
        },
        _ => Block::Other {
            block_type,
            bytes,
            offset,
        },
    })
}

/// The blocks of a checked [`Ivrs`], in table order.
#[derive(Clone, Debug)]
pub struct Blocks<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Blocks<'a> {
    type Item = Block<'a>;

    fn next(&mut self) -> Option<Block<'a>> {
        // `Ivrs::new` checked every block: neither step fails on its table.
        let (block_type, body, len) = raw_block(self.bytes, self.at).ok().flatten()?;
        let block = decode(block_type, body, self.at).ok()?;
        self.at = self.at.saturating_add(len);
        Some(block)
    }
}
