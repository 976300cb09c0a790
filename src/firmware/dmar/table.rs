//! The DMA Remapping Reporting structure, the ACPI `DMAR` table (Intel VT-d specification rev.
//! 4.1, §8.1), and the remapping structures it holds (§8.2).
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 36 | ACPI table header, signature `DMAR` (ACPI 6.5 §5.2.6) |
//! | 36 | 1 | Host Address Width: HAW - 1, the platform's physical address width |
//! | 37 | 1 | Flags: bit 0 INTR_REMAP, bit 1 X2APIC_OPT_OUT, bit 2 DMA_CTRL_PLATFORM_OPT_IN |
//! | 38 | 10 | Reserved |
//! | 48 | - | Remapping structures, each `Type` (2 bytes), `Length` (2 bytes), body |
//!
//! Remapping structure types (§8.2): 0 DRHD, 1 RMRR, 2 ATSR, 3 RHSA, 4 ANDD, 5 SATC; others
//! are for future use and are skipped, as §8.2 tells software to.

use bitflags::bitflags;

use super::andd::Andd;
use super::atsr::Atsr;
use super::drhd::Drhd;
use super::error::{Error, Structure};
use super::rhsa::Rhsa;
use super::rmrr::Rmrr;
use super::satc::Satc;
use crate::firmware::acpi::{self, read_u16, read_u8, PhysMemory, Sdt, Signature};

/// Offset of the first remapping structure.
const STRUCTURES: usize = 48;
/// Bytes of a remapping structure's `Type` and `Length`.
const STRUCTURE_HEADER: usize = 4;

bitflags! {
    /// `Flags` of the DMAR table (§8.1; bits not named here are kept).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DmarFlags: u8 {
        /// Bit 0: the platform supports interrupt remapping.
        const INTR_REMAP = 1 << 0;
        /// Bit 1: firmware asks the OS not to enable x2APIC mode (it may still use
        /// interrupt remapping).
        const X2APIC_OPT_OUT = 1 << 1;
        /// Bit 2: the platform is ready for the OS to enable DMA remapping while keeping
        /// pre-boot DMA protection (the RMRRs still apply).
        const DMA_CTRL_PLATFORM_OPT_IN = 1 << 2;
    }
}

/// A DMAR table, checked as a whole when it is built: the ACPI header (length, checksum),
/// every remapping structure's length, and every device scope. The iterators then yield every
/// structure the table holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dmar<'a> {
    table: Sdt<'a>,
    host_address_width_field: u8,
    flags: DmarFlags,
}

impl<'a> Dmar<'a> {
    /// Checks a table found through the RSDT/XSDT.
    ///
    /// # Errors
    /// [`Error::Acpi`] with [`acpi::Error::WrongSignature`] for another table;
    /// [`Error::TooShort`] for a table without the 12 DMAR bytes after the header; the
    /// errors of the structures it holds.
    pub fn new(table: Sdt<'a>) -> Result<Self, Error> {
        if table.signature() != Signature::DMAR {
            return Err(acpi::Error::WrongSignature {
                expected: Signature::DMAR,
                found: table.signature(),
            }
            .into());
        }
        let bytes = table.bytes();
        if bytes.len() < STRUCTURES {
            return Err(Error::TooShort {
                structure: Structure::Table,
                offset: 0,
                length: bytes.len(),
                minimum: STRUCTURES,
            });
        }
        let dmar = Self {
            table,
            host_address_width_field: read_u8(bytes, 36)?,
            flags: DmarFlags::from_bits_retain(read_u8(bytes, 37)?),
        };
        let mut at = STRUCTURES;
        while let Some((structure_type, body, len)) = raw_structure(bytes, at)? {
            decode(structure_type, body, at)?;
            at = at.saturating_add(len);
        }
        Ok(dmar)
    }

    /// Checks the DMAR table at the start of `bytes` (its length, checksum and contents).
    ///
    /// # Errors
    /// Those of [`acpi::Sdt::parse_expecting`] and [`new`](Self::new).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        Self::new(Sdt::parse_expecting(bytes, Signature::DMAR)?)
    }

    /// Finds the DMAR through the RSDP at physical `rsdp_address`, mapped through `mem`, and
    /// checks it.
    ///
    /// # Errors
    /// Those of [`acpi::find_table`] (with [`acpi::Error::NotFound`] on a platform without
    /// DMA remapping) and [`new`](Self::new).
    pub fn find<M: PhysMemory<'a> + ?Sized>(mem: &M, rsdp_address: u64) -> Result<Self, Error> {
        Self::new(acpi::find_table(mem, rsdp_address, Signature::DMAR)?)
    }

    /// The checked table.
    pub const fn table(&self) -> &Sdt<'a> {
        &self.table
    }

    /// The `Host Address Width` field: the platform's physical address width minus one.
    pub const fn host_address_width_field(&self) -> u8 {
        self.host_address_width_field
    }

    /// The platform's host address width in bits (`Host Address Width` + 1): the widest
    /// physical address DMA can reach.
    pub const fn host_address_width(&self) -> u32 {
        self.host_address_width_field as u32 + 1
    }

    /// `Flags`.
    pub const fn flags(&self) -> DmarFlags {
        self.flags
    }

    /// Every remapping structure, in table order.
    pub fn structures(&self) -> RemappingStructures<'a> {
        RemappingStructures {
            bytes: self.table.bytes(),
            at: STRUCTURES,
        }
    }

    /// The remapping hardware units (§8.3), in table order.
    pub fn drhds(&self) -> impl Iterator<Item = Drhd<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Drhd(d) => Some(d),
            _ => None,
        })
    }

    /// The reserved memory regions (§8.4).
    pub fn rmrrs(&self) -> impl Iterator<Item = Rmrr<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Rmrr(r) => Some(r),
            _ => None,
        })
    }

    /// The root-port ATS capability reports (§8.5).
    pub fn atsrs(&self) -> impl Iterator<Item = Atsr<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Atsr(a) => Some(a),
            _ => None,
        })
    }

    /// The static affinities of remapping units (§8.6).
    pub fn rhsas(&self) -> impl Iterator<Item = Rhsa> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Rhsa(r) => Some(r),
            _ => None,
        })
    }

    /// The ACPI name-space device declarations (§8.7).
    pub fn andds(&self) -> impl Iterator<Item = Andd<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Andd(a) => Some(a),
            _ => None,
        })
    }

    /// The SoC-integrated address translation cache reports (§8.8).
    pub fn satcs(&self) -> impl Iterator<Item = Satc<'a>> + 'a {
        self.structures().filter_map(|s| match s {
            RemappingStructure::Satc(s) => Some(s),
            _ => None,
        })
    }
}

/// One remapping structure (§8.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RemappingStructure<'a> {
    /// Type 0 (§8.3).
    Drhd(Drhd<'a>),
    /// Type 1 (§8.4).
    Rmrr(Rmrr<'a>),
    /// Type 2 (§8.5).
    Atsr(Atsr<'a>),
    /// Type 3 (§8.6).
    Rhsa(Rhsa),
    /// Type 4 (§8.7).
    Andd(Andd<'a>),
    /// Type 5 (§8.8).
    Satc(Satc<'a>),
    /// A type this parser does not decode (reserved, or newer than rev. 4.1's six).
    Other {
        /// `Type`.
        structure_type: u16,
        /// The whole structure, `Length` bytes.
        bytes: &'a [u8],
        /// Offset of the structure in the DMAR table.
        offset: usize,
    },
}

/// A remapping structure's `Type`, its `Length` bytes, and that length.
type RawStructure<'a> = (u16, &'a [u8], usize);

/// The remapping structure at `at`, or `None` at the end.
fn raw_structure(bytes: &[u8], at: usize) -> Result<Option<RawStructure<'_>>, Error> {
    let rest = bytes.get(at..).unwrap_or(&[]);
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < STRUCTURE_HEADER {
        return Err(Error::TooShort {
            structure: Structure::RemappingHeader,
            offset: at,
            length: rest.len(),
            minimum: STRUCTURE_HEADER,
        });
    }
    let structure_type = read_u16(rest, 0)?;
    let len = usize::from(read_u16(rest, 2)?);
    if len < STRUCTURE_HEADER {
        return Err(Error::TooShort {
            structure: Structure::RemappingHeader,
            offset: at,
            length: len,
            minimum: STRUCTURE_HEADER,
        });
    }
    let body = rest.get(..len).ok_or(Error::Overrun {
        structure: Structure::RemappingHeader,
        offset: at,
        length: len,
        remaining: rest.len(),
    })?;
    Ok(Some((structure_type, body, len)))
}

/// Decodes one remapping structure by its type.
fn decode(
    structure_type: u16,
    bytes: &[u8],
    offset: usize,
) -> Result<RemappingStructure<'_>, Error> {
    Ok(match structure_type {
        0 => RemappingStructure::Drhd(Drhd::parse(bytes, offset)?),
        1 => RemappingStructure::Rmrr(Rmrr::parse(bytes, offset)?),
        2 => RemappingStructure::Atsr(Atsr::parse(bytes, offset)?),
        3 => RemappingStructure::Rhsa(Rhsa::parse(bytes, offset)?),
        4 => RemappingStructure::Andd(Andd::parse(bytes, offset)?),
        5 => RemappingStructure::Satc(Satc::parse(bytes, offset)?),
        _ => RemappingStructure::Other {
            structure_type,
            bytes,
            offset,
        },
    })
}

/// The remapping structures of a checked [`Dmar`], in table order.
#[derive(Clone, Debug)]
pub struct RemappingStructures<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Iterator for RemappingStructures<'a> {
    type Item = RemappingStructure<'a>;

    fn next(&mut self) -> Option<RemappingStructure<'a>> {
        // `Dmar::new` checked every structure: neither step fails on its table.
        let (structure_type, body, len) = raw_structure(self.bytes, self.at).ok().flatten()?;
        let structure = decode(structure_type, body, self.at).ok()?;
        self.at = self.at.saturating_add(len);
        Some(structure)
    }
}
