//! ACPI table discovery (ACPI specification 6.5, §5.2.5 Root System Description Pointer,
//! §5.2.6 System Description Table Header, §5.2.7 RSDT, §5.2.8 XSDT).
//!
//! Everything here decodes borrowed bytes: the embedder maps physical memory through
//! [`PhysMemory`] and gets back tables ([`Sdt`]) that borrow from its mapping. Every length is
//! checked against the bytes actually mapped and every checksum is verified before a table is
//! handed out; no input makes any function here panic.
//!
//! The little-endian readers ([`read_u8`] .. [`read_u64`]) are shared by the table parsers
//! of DMAR and IORT: they read at any offset (ACPI structures are packed, often
//! unaligned) and report the offset that ran past the end.

use core::fmt;

/// A four-byte ACPI table signature (`"DMAR"`, `"IORT"`, `"XSDT"`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 4]);

impl Signature {
    /// `"RSDT"`, the Root System Description Table (§5.2.7).
    pub const RSDT: Self = Self(*b"RSDT");
    /// `"XSDT"`, the Extended System Description Table (§5.2.8).
    pub const XSDT: Self = Self(*b"XSDT");
    /// `"DMAR"`, the DMA Remapping Reporting table (Intel VT-d specification, chapter 8).
    pub const DMAR: Self = Self(*b"DMAR");
    /// `"IORT"`, the IO Remapping Table (Arm DEN 0049).
    pub const IORT: Self = Self(*b"IORT");
    /// `"IVRS"`, the I/O Virtualization Reporting Structure (AMD IOMMU specification 48882,
    /// §5.2).
    pub const IVRS: Self = Self(*b"IVRS");
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature(\"{self}\")")
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in &self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// An error decoding ACPI tables. Every variant carries the value that was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// A read of `width` bytes at `offset` ran past the `length` bytes available (a table or
    /// structure shorter than its fields, or than its own length field claims).
    Truncated {
        /// Offset of the read, from the start of the table or structure being decoded.
        offset: usize,
        /// Bytes the read needed.
        width: usize,
        /// Bytes available.
        length: usize,
    },
    /// A table's `Length` field is smaller than the 36-byte header (§5.2.6).
    LengthTooSmall {
        /// The table's signature.
        signature: Signature,
        /// Its `Length` field.
        length: u32,
    },
    /// A table's `Length` field is larger than the bytes the embedder mapped or passed.
    LengthBeyondData {
        /// The table's signature.
        signature: Signature,
        /// Its `Length` field.
        length: u32,
        /// Bytes available.
        available: usize,
    },
    /// The bytes of a table do not sum to zero (mod 256); `sum` is what they sum to.
    Checksum {
        /// The table's signature.
        signature: Signature,
        /// The sum of all `Length` bytes.
        sum: u8,
    },
    /// A table has another signature than the one asked for.
    WrongSignature {
        /// The signature expected.
        expected: Signature,
        /// The signature found.
        found: Signature,
    },
    /// The RSDP does not start with `"RSD PTR "`; `found` holds the eight bytes it starts with.
    RsdpSignature {
        /// The first eight bytes.
        found: [u8; 8],
    },
    /// The first 20 bytes of the RSDP (the ACPI 1.0 structure) do not sum to zero.
    RsdpChecksum {
        /// What they sum to.
        sum: u8,
    },
    /// An ACPI 2.0+ RSDP whose `Length` is below 36 or beyond the bytes available.
    RsdpLength {
        /// Its `Length` field.
        length: u32,
        /// Bytes available.
        available: usize,
    },
    /// The whole ACPI 2.0+ RSDP (`Length` bytes) does not sum to zero (extended checksum).
    RsdpExtendedChecksum {
        /// What they sum to.
        sum: u8,
    },
    /// The embedder's [`PhysMemory::map`] could not map `length` bytes at `address`.
    Unmapped {
        /// Physical address asked for.
        address: u64,
        /// Bytes asked for.
        length: usize,
    },
    /// The RSDT/XSDT lists no table with this signature.
    NotFound {
        /// The signature looked for.
        signature: Signature,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Truncated { offset, width, length } => write!(
                f,
                "a {width}-byte read at offset {offset:#x} runs past the {length:#x} bytes available"
            ),
            Error::LengthTooSmall { signature, length } => write!(
                f,
                "table {signature}: Length {length:#x} is smaller than the 36-byte header"
            ),
            Error::LengthBeyondData { signature, length, available } => write!(
                f,
                "table {signature}: Length {length:#x} is beyond the {available:#x} bytes available"
            ),
            Error::Checksum { signature, sum } => {
                write!(f, "table {signature}: bytes sum to {sum:#04x}, not 0")
            }
            Error::WrongSignature { expected, found } => {
                write!(f, "table signature {found}, expected {expected}")
            }
            Error::RsdpSignature { found } => write!(f, "RSDP signature {found:02x?}, not \"RSD PTR \""),
            Error::RsdpChecksum { sum } => write!(f, "RSDP checksum: first 20 bytes sum to {sum:#04x}"),
            Error::RsdpLength { length, available } => write!(
                f,
                "RSDP Length {length:#x} is below 36 or beyond the {available:#x} bytes available"
            ),
            Error::RsdpExtendedChecksum { sum } => {
                write!(f, "RSDP extended checksum: bytes sum to {sum:#04x}")
            }
            Error::Unmapped { address, length } => {
                write!(f, "could not map {length:#x} bytes at physical address {address:#x}")
            }
            Error::NotFound { signature } => write!(f, "no {signature} table in the RSDT/XSDT"),
        }
    }
}

/// Reads `N` bytes at `offset`, or reports the read that ran past the end.
fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> Result<[u8; N], Error> {
    let truncated = Error::Truncated {
        offset,
        width: N,
        length: bytes.len(),
    };
    let end = offset.checked_add(N).ok_or(truncated)?;
    let slice = bytes.get(offset..end).ok_or(truncated)?;
    let mut out = [0u8; N];
    out.copy_from_slice(slice);
    Ok(out)
}

/// The byte at `offset`.
///
/// # Errors
/// [`Error::Truncated`] if `offset` is outside `bytes`.
pub fn read_u8(bytes: &[u8], offset: usize) -> Result<u8, Error> {
    read_array::<1>(bytes, offset).map(|[b]| b)
}

/// The little-endian `u16` at `offset` (any alignment).
///
/// # Errors
/// [`Error::Truncated`] if the two bytes are not all inside `bytes`.
pub fn read_u16(bytes: &[u8], offset: usize) -> Result<u16, Error> {
    read_array(bytes, offset).map(u16::from_le_bytes)
}

/// The little-endian `u32` at `offset` (any alignment).
///
/// # Errors
/// [`Error::Truncated`] if the four bytes are not all inside `bytes`.
pub fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, Error> {
    read_array(bytes, offset).map(u32::from_le_bytes)
}

/// The little-endian `u64` at `offset` (any alignment).
///
/// # Errors
/// [`Error::Truncated`] if the eight bytes are not all inside `bytes`.
pub fn read_u64(bytes: &[u8], offset: usize) -> Result<u64, Error> {
    read_array(bytes, offset).map(u64::from_le_bytes)
}

/// `len` bytes at `offset`.
///
/// # Errors
/// [`Error::Truncated`] if they are not all inside `bytes`.
pub fn read_bytes(bytes: &[u8], offset: usize, len: usize) -> Result<&[u8], Error> {
    let truncated = Error::Truncated {
        offset,
        width: len,
        length: bytes.len(),
    };
    let end = offset.checked_add(len).ok_or(truncated)?;
    bytes.get(offset..end).ok_or(truncated)
}

/// The sum of `bytes` modulo 256: zero for a table with a correct checksum.
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, &b| sum.wrapping_add(b))
}

/// Bytes in the System Description Table Header (§5.2.6).
pub const SDT_HEADER_LEN: usize = 36;

/// Offsets of the header fields (§5.2.6, Table 5.4).
mod header {
    pub const SIGNATURE: usize = 0;
    pub const LENGTH: usize = 4;
    pub const REVISION: usize = 8;
    pub const OEM_ID: usize = 10;
    pub const OEM_TABLE_ID: usize = 16;
    pub const OEM_REVISION: usize = 24;
    pub const CREATOR_ID: usize = 28;
    pub const CREATOR_REVISION: usize = 32;
}

/// The System Description Table Header fields (§5.2.6, Table 5.4), decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SdtHeader {
    /// `Signature`.
    pub signature: Signature,
    /// `Length`: bytes in the whole table, header included.
    pub length: u32,
    /// `Revision` of the table's own specification.
    pub revision: u8,
    /// `OEMID`.
    pub oem_id: [u8; 6],
    /// `OEM Table ID`.
    pub oem_table_id: [u8; 8],
    /// `OEM Revision`.
    pub oem_revision: u32,
    /// `Creator ID`.
    pub creator_id: [u8; 4],
    /// `Creator Revision`.
    pub creator_revision: u32,
}

impl SdtHeader {
    /// Decodes the 36 header bytes at the start of `bytes` (no length or checksum check:
    /// [`Sdt::parse`] does those).
    ///
    /// # Errors
    /// [`Error::Truncated`] if `bytes` is shorter than 36 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        read_bytes(bytes, 0, SDT_HEADER_LEN)?;
        Ok(Self {
            signature: Signature(read_array(bytes, header::SIGNATURE)?),
            length: read_u32(bytes, header::LENGTH)?,
            revision: read_u8(bytes, header::REVISION)?,
            oem_id: read_array(bytes, header::OEM_ID)?,
            oem_table_id: read_array(bytes, header::OEM_TABLE_ID)?,
            oem_revision: read_u32(bytes, header::OEM_REVISION)?,
            creator_id: read_array(bytes, header::CREATOR_ID)?,
            creator_revision: read_u32(bytes, header::CREATOR_REVISION)?,
        })
    }
}

/// A System Description Table whose length and checksum were checked: `bytes()` is exactly
/// `Length` bytes and sums to zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sdt<'a> {
    header: SdtHeader,
    bytes: &'a [u8],
}

impl<'a> Sdt<'a> {
    /// Checks and decodes the table at the start of `bytes`: the header, `Length` (at least the
    /// header, at most `bytes.len()`; bytes beyond it are ignored) and the checksum.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::LengthTooSmall`], [`Error::LengthBeyondData`],
    /// [`Error::Checksum`].
    pub fn parse(bytes: &'a [u8]) -> Result<Self, Error> {
        let header = SdtHeader::decode(bytes)?;
        let signature = header.signature;
        let length = header.length;
        let len = usize::try_from(length).map_err(|_| Error::LengthBeyondData {
            signature,
            length,
            available: bytes.len(),
        })?;
        if len < SDT_HEADER_LEN {
            return Err(Error::LengthTooSmall { signature, length });
        }
        let bytes = bytes.get(..len).ok_or(Error::LengthBeyondData {
            signature,
            length,
            available: bytes.len(),
        })?;
        match checksum(bytes) {
            0 => Ok(Self { header, bytes }),
            sum => Err(Error::Checksum { signature, sum }),
        }
    }

    /// [`parse`](Self::parse), and the signature must be `expected`.
    ///
    /// # Errors
    /// Those of [`parse`](Self::parse); [`Error::WrongSignature`] (checked first).
    pub fn parse_expecting(bytes: &'a [u8], expected: Signature) -> Result<Self, Error> {
        let found = Signature(read_array(bytes, header::SIGNATURE)?);
        if found != expected {
            return Err(Error::WrongSignature { expected, found });
        }
        Self::parse(bytes)
    }

    /// The decoded header.
    pub const fn header(&self) -> &SdtHeader {
        &self.header
    }

    /// The table's signature.
    pub const fn signature(&self) -> Signature {
        self.header.signature
    }

    /// The whole table, header included: exactly `Length` bytes.
    pub const fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The bytes after the 36-byte header.
    pub fn body(&self) -> &'a [u8] {
        // `parse` checked that the table is at least the header long.
        self.bytes.get(SDT_HEADER_LEN..).unwrap_or(&[])
    }
}

/// The embedder's access to physical memory, used to follow the RSDP, RSDT/XSDT and table
/// addresses firmware hands over.
///
/// A kernel with a direct map returns a slice of it; a bootloader running identity-mapped
/// returns the address itself. Any `Fn(u64, usize) -> Option<&'a [u8]>` closure is one.
pub trait PhysMemory<'a> {
    /// `length` bytes of memory at physical `address`, readable for `'a`, or `None` if they
    /// cannot be mapped. Returning more than `length` bytes is allowed (the decoders look only
    /// at what the tables' lengths cover); fewer is treated as a failure to map.
    fn map(&self, address: u64, length: usize) -> Option<&'a [u8]>;
}

impl<'a, F> PhysMemory<'a> for F
where
    F: Fn(u64, usize) -> Option<&'a [u8]>,
{
    fn map(&self, address: u64, length: usize) -> Option<&'a [u8]> {
        self(address, length)
    }
}

/// Maps exactly `length` bytes or fails with [`Error::Unmapped`].
fn map_exact<'a, M: PhysMemory<'a> + ?Sized>(
    mem: &M,
    address: u64,
    length: usize,
) -> Result<&'a [u8], Error> {
    mem.map(address, length)
        .and_then(|bytes| bytes.get(..length))
        .ok_or(Error::Unmapped { address, length })
}

/// Maps the table at physical `address`: first its header, then `Length` bytes, then checks
/// it ([`Sdt::parse`]).
///
/// # Errors
/// [`Error::Unmapped`] and those of [`Sdt::parse`].
pub fn map_table<'a, M: PhysMemory<'a> + ?Sized>(mem: &M, address: u64) -> Result<Sdt<'a>, Error> {
    let header = SdtHeader::decode(map_exact(mem, address, SDT_HEADER_LEN)?)?;
    let length = usize::try_from(header.length).map_err(|_| Error::Unmapped {
        address,
        length: usize::MAX,
    })?;
    if length < SDT_HEADER_LEN {
        return Err(Error::LengthTooSmall {
            signature: header.signature,
            length: header.length,
        });
    }
    Sdt::parse(map_exact(mem, address, length)?)
}

/// The bytes of the ACPI 1.0 RSDP (§5.2.5.3), covered by `Checksum`.
pub const RSDP_V1_LEN: usize = 20;
/// The bytes of the ACPI 2.0+ RSDP (§5.2.5.3).
pub const RSDP_V2_LEN: usize = 36;
/// The RSDP's signature.
pub const RSDP_SIGNATURE: [u8; 8] = *b"RSD PTR ";

/// The Root System Description Pointer (§5.2.5.3), checked and decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rsdp {
    /// `Revision`: 0 for ACPI 1.0 (RSDT only), 2 for ACPI 2.0 and later (XSDT).
    pub revision: u8,
    /// `OEMID`.
    pub oem_id: [u8; 6],
    /// `RsdtAddress`: the RSDT's 32-bit physical address.
    pub rsdt_address: u32,
    /// `XsdtAddress` of a revision-2 RSDP (`None` for revision 0).
    pub xsdt_address: Option<u64>,
}

impl Rsdp {
    /// Checks and decodes the RSDP at the start of `bytes`: signature, the ACPI 1.0 checksum,
    /// and for `Revision >= 2` `Length` and the extended checksum.
    ///
    /// # Errors
    /// [`Error::Truncated`], [`Error::RsdpSignature`], [`Error::RsdpChecksum`],
    /// [`Error::RsdpLength`], [`Error::RsdpExtendedChecksum`].
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let found: [u8; 8] = read_array(bytes, 0)?;
        if found != RSDP_SIGNATURE {
            return Err(Error::RsdpSignature { found });
        }
        match checksum(read_bytes(bytes, 0, RSDP_V1_LEN)?) {
            0 => {}
            sum => return Err(Error::RsdpChecksum { sum }),
        }
        let revision = read_u8(bytes, 15)?;
        let mut rsdp = Self {
            revision,
            oem_id: read_array(bytes, 9)?,
            rsdt_address: read_u32(bytes, 16)?,
            xsdt_address: None,
        };
        if revision >= 2 {
            let length = read_u32(bytes, 20)?;
            let bad_length = Error::RsdpLength {
                length,
                available: bytes.len(),
            };
            let len = usize::try_from(length).map_err(|_| bad_length)?;
            if len < RSDP_V2_LEN {
                return Err(bad_length);
            }
            let whole = bytes.get(..len).ok_or(bad_length)?;
            match checksum(whole) {
                0 => {}
                sum => return Err(Error::RsdpExtendedChecksum { sum }),
            }
            rsdp.xsdt_address = Some(read_u64(bytes, 24)?);
        }
        Ok(rsdp)
    }

    /// Maps and decodes the RSDP at physical `address` (what a boot protocol hands over:
    /// the PVH start info's `rsdp_paddr`, the multiboot2 ACPI tag's copy, the UEFI
    /// configuration table).
    ///
    /// # Errors
    /// [`Error::Unmapped`] and those of [`parse`](Self::parse).
    pub fn map<'a, M: PhysMemory<'a> + ?Sized>(mem: &M, address: u64) -> Result<Self, Error> {
        let v1 = map_exact(mem, address, RSDP_V1_LEN)?;
        // The ACPI 1.0 part is checked before its revision is trusted to ask for more bytes;
        // only a revision-2 RSDP runs past those 20 bytes.
        match Self::parse(v1) {
            Err(Error::Truncated { .. }) => {}
            result => return result,
        }
        let length = read_u32(map_exact(mem, address, RSDP_V2_LEN)?, 20)?;
        let len = usize::try_from(length)
            .ok()
            .filter(|&len| len >= RSDP_V2_LEN)
            .ok_or(Error::RsdpLength {
                length,
                available: RSDP_V2_LEN,
            })?;
        Self::parse(map_exact(mem, address, len)?)
    }

    /// Finds the RSDP in `area` the way the ACPI specification tells BIOS-booted software to
    /// (§5.2.5.1): a valid RSDP on a 16-byte boundary. `area` is the memory at physical
    /// `base` (the BIOS read-only area `0xE0000..0x100000`, or the first KiB of the EBDA).
    /// Returns the RSDP's physical address and the RSDP; candidates whose checksums fail are
    /// skipped, as the specification's search does.
    pub fn scan(area: &[u8], base: u64) -> Option<(u64, Self)> {
        let misalignment = usize::try_from(base % 16).ok()?;
        let first = (16 - misalignment) % 16;
        let candidates = area.get(first..)?;
        let mut offset = first;
        for chunk in candidates.chunks(16) {
            if chunk.starts_with(&RSDP_SIGNATURE) {
                if let Some(Ok(rsdp)) = area.get(offset..).map(Self::parse) {
                    let address = base.checked_add(u64::try_from(offset).ok()?)?;
                    return Some((address, rsdp));
                }
            }
            offset = offset.checked_add(16)?;
        }
        None
    }

    /// The root table this RSDP points to: the XSDT when there is one (revision 2 with a
    /// non-zero `XsdtAddress`, as the specification requires OSes to prefer), else the RSDT.
    ///
    /// # Errors
    /// Those of [`map_table`]; [`Error::WrongSignature`] if the table is not an RSDT/XSDT.
    pub fn root_table<'a, M: PhysMemory<'a> + ?Sized>(
        &self,
        mem: &M,
    ) -> Result<RootTable<'a>, Error> {
        let (address, expected) = match self.xsdt_address {
            Some(x) if x != 0 => (x, Signature::XSDT),
            _ => (u64::from(self.rsdt_address), Signature::RSDT),
        };
        let table = map_table(mem, address)?;
        match table.signature() {
            found if found == expected => Ok(RootTable { table }),
            found => Err(Error::WrongSignature { expected, found }),
        }
    }
}

/// An RSDT (§5.2.7: 32-bit entries) or XSDT (§5.2.8: 64-bit entries): the list of the other
/// tables' physical addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RootTable<'a> {
    table: Sdt<'a>,
}

impl<'a> RootTable<'a> {
    /// Wraps a checked RSDT or XSDT.
    ///
    /// # Errors
    /// [`Error::WrongSignature`] (with `expected` `"XSDT"`) for any other table.
    pub fn new(table: Sdt<'a>) -> Result<Self, Error> {
        match table.signature() {
            Signature::RSDT | Signature::XSDT => Ok(Self { table }),
            found => Err(Error::WrongSignature {
                expected: Signature::XSDT,
                found,
            }),
        }
    }

    /// The table itself.
    pub const fn table(&self) -> &Sdt<'a> {
        &self.table
    }

    /// Bytes per entry: 8 in an XSDT, 4 in an RSDT.
    fn entry_width(&self) -> usize {
        if self.table.signature() == Signature::XSDT {
            8
        } else {
            4
        }
    }

    /// The physical addresses it lists, in order (a trailing partial entry is ignored).
    pub fn entries(&self) -> impl Iterator<Item = u64> + 'a {
        let width = self.entry_width();
        self.table.body().chunks_exact(width).map(move |entry| {
            entry
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
        })
    }

    /// The first listed table with `signature`, mapped and checked. Null entries are skipped;
    /// a listed table that cannot be mapped or fails its checks stops the search with that
    /// error (it may be the one asked for).
    ///
    /// # Errors
    /// [`Error::NotFound`] and those of [`map_table`].
    pub fn find<M: PhysMemory<'a> + ?Sized>(
        &self,
        mem: &M,
        signature: Signature,
    ) -> Result<Sdt<'a>, Error> {
        for address in self.entries().filter(|&a| a != 0) {
            let header = SdtHeader::decode(map_exact(mem, address, SDT_HEADER_LEN)?)?;
            if header.signature == signature {
                return map_table(mem, address);
            }
        }
        Err(Error::NotFound { signature })
    }
}

/// Follows the RSDP at physical `rsdp_address` to its RSDT/XSDT and returns the first table
/// with `signature`, mapped through `mem` and checked (length and checksum).
///
/// # Errors
/// Those of [`Rsdp::map`], [`Rsdp::root_table`] and [`RootTable::find`].
pub fn find_table<'a, M: PhysMemory<'a> + ?Sized>(
    mem: &M,
    rsdp_address: u64,
    signature: Signature,
) -> Result<Sdt<'a>, Error> {
    Rsdp::map(mem, rsdp_address)?
        .root_table(mem)?
        .find(mem, signature)
}

#[cfg(test)]
mod tests;

/// Implements `From<acpi::Error>` for a table parser's error type whose `Acpi` variant carries
/// the ACPI-level error (bad header, length or checksum) so that `?` lifts it.
macro_rules! lift_acpi_error {
    ($error:ty) => {
        impl From<$crate::firmware::acpi::Error> for $error {
            fn from(e: $crate::firmware::acpi::Error) -> Self {
                Self::Acpi(e)
            }
        }
    };
}
pub(crate) use lift_acpi_error;
