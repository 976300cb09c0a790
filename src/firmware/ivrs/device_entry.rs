//! IVHD device entries: AMD I/O Virtualization Technology (IOMMU) Specification, document
//! 48882, revision 3.10, §5.2.2.3 "IVHD Device Entries": which device IDs an IOMMU translates,
//! the DTE settings firmware asks for, aliases, and the special devices (IOAPIC, HPET) and ACPI
//! devices behind it.
//!
//! An entry's length follows from its type: bits 7:6 encode it (00b 4 bytes, 01b 8, 10b 16, 11b
//! 32), except for the variable-length ACPI HID entry F0h (22 bytes plus its UID). The
//! specification defines no entry of types 80h-EFh: they are skipped by the length their type
//! gives, as reserved entries of the other sizes are, and the entries after them apply. Types
//! F1h-FFh are variable-length like F0h, of no known length: the entries after one cannot be
//! found, and the IVHD is refused.
//!
//! A range start (03h, 43h, 47h) is closed by the next End of Range (04h); an End below its
//! start closes an empty range, which names no device (Linux walks it zero times). Entries that name
//! no PCI device (pads and reserved types, which are ignored; special devices 48h; ACPI
//! devices F0h) may sit between them, as Linux and FreeBSD read the list (they keep the start
//! across any entry); an entry that names PCI devices itself (01h, 02h, 42h, 46h, another start)
//! there is refused, since which start an end closes would be a guess. Type facts checked against Linux `drivers/iommu/amd/init.c`
//! (`IVHD_DEV_*`; `ivhd_entry_length` takes `4 << (type >> 6)` below 80h and, before F0h was
//! defined, for every type; facts only).
//!
//! | type | entry | bytes |
//! |---|---|---|
//! | 00h | Reserved (pad) | 4 |
//! | 01h | All: every device ID | `Type`, reserved (2), `DTE Setting` |
//! | 02h | Select: one device ID | `Type`, `DeviceID` (2), `DTE Setting` |
//! | 03h / 04h | Start / End of range | `Type`, `DeviceID` (2), `DTE Setting` (start only) |
//! | 42h | Alias select | 4 bytes as 02h, reserved, source `DeviceID` (2 at 5), reserved |
//! | 43h | Alias start of range | as 42h, closed by 04h |
//! | 46h / 47h | Extended select / start of range | 4 bytes as 02h, `Extended DTE Setting` (4) |
//! | 48h | Special device | 4 bytes as 01h, `Handle` (4), `DeviceID` (2 at 5), `Variety` (7): 1 IOAPIC, 2 HPET |
//! | F0h | ACPI HID device | as 02h, `HID` (8 at 4), `CID` (8 at 12), `UID Format` (20), `UID Length` (21), `UID` |

use bitflags::bitflags;

use super::error::{Error, Structure};
use crate::firmware::acpi::{read_bytes, read_u16, read_u32, read_u8};

/// `Extended DTE Setting` bit 31 of an extended entry (46h, 47h): ATS disabled for the
/// devices it names ([`Ivrs::ats_permission`](super::Ivrs::ats_permission)).
pub const EXT_ATS_DISABLED: u32 = 1 << 31;

bitflags! {
    /// `DTE Setting` of a device entry: what firmware asks the OS to set in the DTE (the
    /// interrupt pass-through bits, `SysMgt`); bits not named here are kept.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DteSetting: u8 {
        /// Bit 0: `INITPass`.
        const INIT_PASS = 1 << 0;
        /// Bit 1: `EIntPass`.
        const EINT_PASS = 1 << 1;
        /// Bit 2: `NMIPass`.
        const NMI_PASS = 1 << 2;
        /// Bits 5:4: `SysMgt`.
        const SYS_MGT = 0b11 << 4;
        /// Bit 6: `Lint0Pass`.
        const LINT0_PASS = 1 << 6;
        /// Bit 7: `Lint1Pass`.
        const LINT1_PASS = 1 << 7;
    }
}

/// What a special device entry (48h) names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpecialVariety {
    /// 1: an IOAPIC (`Handle` = its APIC ID).
    Ioapic,
    /// 2: an HPET (`Handle` = its number).
    Hpet,
    /// Another value.
    Other(u8),
}

/// One device entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceEntry<'a> {
    /// 01h: every device ID of the segment.
    All {
        /// `DTE Setting`.
        dte: DteSetting,
    },
    /// 02h: one device ID.
    Select {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
    },
    /// 03h: the first device ID of a range closed by the next [`End`](Self::End) (entries
    /// that name no PCI device may come between:
    /// [`names_no_pci_device`](Self::names_no_pci_device)).
    RangeStart {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting` (for the whole range).
        dte: DteSetting,
    },
    /// 04h: the last device ID of the range opened by the last range start.
    End {
        /// `DeviceID`.
        device_id: u16,
    },
    /// 42h: one device ID whose requests carry the `source` device ID.
    Alias {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
        /// The device ID the IOMMU sees (and whose DTE it uses).
        source: u16,
    },
    /// 43h: a range (closed by the next [`End`](Self::End)) whose requests carry `source`.
    AliasRangeStart {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
        /// The device ID the IOMMU sees.
        source: u16,
    },
    /// 46h: one device ID with an extended DTE setting.
    ExtendedSelect {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
        /// `Extended DTE Setting` (bit 31, [`EXT_ATS_DISABLED`]: ATS disabled for the device,
        /// as ACPICA's `ACPI_IVHD_ATS_DISABLED` and coreboot's `IVHD_DEV_EXT_ATS_DISABLE`, from
        /// 48882, read it; Linux's `ACPI_DEVFLAG_ATSDIS` names bit 28, 0x1000_0000, instead).
        extended: u32,
    },
    /// 47h: a range (closed by the next [`End`](Self::End)) with an extended DTE setting.
    ExtendedRangeStart {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
        /// `Extended DTE Setting`.
        extended: u32,
    },
    /// 48h: an IOAPIC or HPET and the device ID its interrupt requests carry.
    Special {
        /// `Handle`: the IOAPIC ID or HPET number.
        handle: u8,
        /// `DeviceID`.
        device_id: u16,
        /// `Variety`.
        variety: SpecialVariety,
        /// `DTE Setting`.
        dte: DteSetting,
    },
    /// F0h: a device named by its ACPI `_HID` (and `_CID`, `_UID`).
    AcpiHid {
        /// `DeviceID`.
        device_id: u16,
        /// `DTE Setting`.
        dte: DteSetting,
        /// `HID` (8 bytes: an ACPI or PNP ID).
        hid: [u8; 8],
        /// `CID` (8 bytes; zero when absent).
        cid: [u8; 8],
        /// `UID Format`: 0 none, 1 integer, 2 string.
        uid_format: u8,
        /// `UID`.
        uid: &'a [u8],
    },
    /// A reserved type of 4, 8, 16 or 32 bytes (00h-7Fh undefined, 80h-EFh; 00h is padding):
    /// skipped by the length its type gives.
    Reserved {
        /// `Type`.
        entry_type: u8,
    },
}

/// The length of the entry at the start of `bytes` (at table offset `offset`).
fn entry_len(bytes: &[u8], offset: usize) -> Result<usize, Error> {
    let entry_type = read_u8(bytes, 0)?;
    match entry_type {
        0x00..=0x3F => Ok(4),
        0x40..=0x7F => Ok(8),
        0x80..=0xBF => Ok(16),
        0xC0..=0xEF => Ok(32),
        0xF0 => Ok(22
            + usize::from(read_u8(bytes, 21).map_err(|_| Error::TooShort {
                structure: Structure::DeviceEntry,
                offset,
                length: bytes.len(),
                minimum: 22,
            })?)),
        _ => Err(Error::UnknownEntry { offset, entry_type }),
    }
}

impl DeviceEntry<'_> {
    /// Whether the entry names no PCI device ID of the unit's ranges: a pad or reserved type
    /// (ignored), a special device (IOAPIC, HPET) or an ACPI device. Such an entry may sit
    /// between a range start and its end without closing the range.
    pub const fn names_no_pci_device(&self) -> bool {
        matches!(
            self,
            Self::Reserved { .. } | Self::Special { .. } | Self::AcpiHid { .. }
        )
    }
}

/// Decodes the entry in `e` (exactly its length).
fn decode(e: &[u8]) -> Result<DeviceEntry<'_>, Error> {
    let entry_type = read_u8(e, 0)?;
    let device_id = read_u16(e, 1)?;
    let dte = DteSetting::from_bits_retain(read_u8(e, 3)?);
    Ok(match entry_type {
        0x01 => DeviceEntry::All { dte },
        0x02 => DeviceEntry::Select { device_id, dte },
        0x03 => DeviceEntry::RangeStart { device_id, dte },
        0x04 => DeviceEntry::End { device_id },
        0x42 => DeviceEntry::Alias {
            device_id,
            dte,
            source: read_u16(e, 5)?,
        },
        0x43 => DeviceEntry::AliasRangeStart {
            device_id,
            dte,
            source: read_u16(e, 5)?,
        },
        0x46 => DeviceEntry::ExtendedSelect {
            device_id,
            dte,
            extended: read_u32(e, 4)?,
        },
        0x47 => DeviceEntry::ExtendedRangeStart {
            device_id,
            dte,
            extended: read_u32(e, 4)?,
        },
        0x48 => DeviceEntry::Special {
            handle: read_u8(e, 4)?,
            device_id: read_u16(e, 5)?,
            variety: match read_u8(e, 7)? {
                1 => SpecialVariety::Ioapic,
                2 => SpecialVariety::Hpet,
                v => SpecialVariety::Other(v),
            },
            dte,
        },
        0xF0 => {
            let mut hid = [0; 8];
            hid.copy_from_slice(read_bytes(e, 4, 8)?);
            let mut cid = [0; 8];
            cid.copy_from_slice(read_bytes(e, 12, 8)?);
            let uid_len = usize::from(read_u8(e, 21)?);
            DeviceEntry::AcpiHid {
                device_id,
                dte,
                hid,
                cid,
                uid_format: read_u8(e, 20)?,
                uid: read_bytes(e, 22, uid_len)?,
            }
        }
        entry_type => DeviceEntry::Reserved { entry_type },
    })
}

/// The device entries of an IVHD: `bytes` from the first entry to the IVHD's end, `base` their
/// offset in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct EntryList<'a> {
    bytes: &'a [u8],
    base: usize,
}

impl<'a> EntryList<'a> {
    /// Checks every entry: its length, its fields, and that each range start is followed by
    /// an end, with only entries that name no PCI device in between. An end below its start
    /// closes an empty range (see [`DeviceRange::is_empty`]).
    pub fn parse(bytes: &'a [u8], base: usize) -> Result<Self, Error> {
        let list = Self { bytes, base };
        let mut open: Option<(usize, u16)> = None;
        let mut at = 0;
        while at < bytes.len() {
            let (entry, len) = list.entry_at(at)?;
            let offset = base + at;
            if open.is_some() && entry.names_no_pci_device() {
                // Between a start and its end: the range stays open.
                at += len;
                continue;
            }
            match (open.take(), entry) {
                (Some(_), DeviceEntry::End { .. }) => {}
                (Some((o, start)), _) => {
                    return Err(Error::Range {
                        offset: o,
                        start,
                        end: start,
                    })
                }
                (None, DeviceEntry::End { device_id }) => {
                    return Err(Error::Range {
                        offset,
                        start: device_id,
                        end: device_id,
                    })
                }
                (
                    None,
                    DeviceEntry::RangeStart { device_id, .. }
                    | DeviceEntry::AliasRangeStart { device_id, .. }
                    | DeviceEntry::ExtendedRangeStart { device_id, .. },
                ) => open = Some((offset, device_id)),
                (None, _) => {}
            }
            at += len;
        }
        if let Some((offset, start)) = open {
            return Err(Error::Range {
                offset,
                start,
                end: start,
            });
        }
        Ok(list)
    }

    /// The entry at `at` (from the first entry) and its length.
    fn entry_at(&self, at: usize) -> Result<(DeviceEntry<'a>, usize), Error> {
        let offset = self.base + at;
        let rest = self.bytes.get(at..).unwrap_or(&[]);
        let len = entry_len(rest, offset)?;
        let e = rest.get(..len).ok_or(Error::Overrun {
            structure: Structure::DeviceEntry,
            offset,
            length: len,
            remaining: rest.len(),
        })?;
        Ok((decode(e)?, len))
    }

    pub fn iter(&self) -> DeviceEntries<'a> {
        DeviceEntries { list: *self, at: 0 }
    }
}

/// The device entries of a checked IVHD, in table order, each with its offset in the table.
#[derive(Clone, Debug)]
pub struct DeviceEntries<'a> {
    list: EntryList<'a>,
    at: usize,
}

impl<'a> Iterator for DeviceEntries<'a> {
    type Item = (usize, DeviceEntry<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // `EntryList::parse` checked every entry.
        let (entry, len) = self.list.entry_at(self.at).ok()?;
        let offset = self.list.base + self.at;
        self.at += len;
        Some((offset, entry))
    }
}

/// A run of device IDs an IVHD covers, as its entries resolve (a range start joined with its
/// end; a select is a run of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    /// First device ID.
    pub first: u16,
    /// Last device ID (inclusive).
    pub last: u16,
    /// `DTE Setting` for these devices.
    pub dte: DteSetting,
    /// The device ID their requests carry instead of their own (alias entries).
    pub alias: Option<u16>,
    /// `Extended DTE Setting` (extended entries).
    pub extended: Option<u32>,
}

impl DeviceRange {
    /// Whether the run names no device: a range whose End (04h) is below its start. Linux
    /// walks such a range zero times (and sets no alias for it); refusing the IVHD, and with
    /// it the whole IVRS, would leave an embedder that takes "no IVRS" for "no IOMMU" with
    /// every device untranslated.
    pub const fn is_empty(&self) -> bool {
        self.last < self.first
    }

    /// Whether `device_id` is in the run.
    pub const fn contains(&self, device_id: u16) -> bool {
        self.first <= device_id && device_id <= self.last
    }

    /// The device ID the IOMMU sees for `device_id` of this run (its DTE's index).
    pub fn requester(&self, device_id: u16) -> u16 {
        self.alias.unwrap_or(device_id)
    }
}

/// The device ranges of a checked IVHD (PCI device IDs only: special and ACPI devices are in
/// [`DeviceEntries`]).
#[derive(Clone, Debug)]
pub struct DeviceRanges<'a> {
    pub(super) entries: DeviceEntries<'a>,
}

impl Iterator for DeviceRanges<'_> {
    type Item = DeviceRange;

    fn next(&mut self) -> Option<DeviceRange> {
        loop {
            let (_, entry) = self.entries.next()?;
            let one = |first, dte, alias, extended| DeviceRange {
                first,
                last: first,
                dte,
                alias,
                extended,
            };
            let start = match entry {
                DeviceEntry::All { dte } => {
                    return Some(DeviceRange {
                        first: 0,
                        last: u16::MAX,
                        dte,
                        alias: None,
                        extended: None,
                    })
                }
                DeviceEntry::Select { device_id, dte } => {
                    return Some(one(device_id, dte, None, None))
                }
                DeviceEntry::Alias {
                    device_id,
                    dte,
                    source,
                } => return Some(one(device_id, dte, Some(source), None)),
                DeviceEntry::ExtendedSelect {
                    device_id,
                    dte,
                    extended,
                } => return Some(one(device_id, dte, None, Some(extended))),
                DeviceEntry::RangeStart { device_id, dte } => one(device_id, dte, None, None),
                DeviceEntry::AliasRangeStart {
                    device_id,
                    dte,
                    source,
                } => one(device_id, dte, Some(source), None),
                DeviceEntry::ExtendedRangeStart {
                    device_id,
                    dte,
                    extended,
                } => one(device_id, dte, None, Some(extended)),
                _ => continue,
            };
            // `EntryList::parse` checked that an end follows every start, past entries that
            // name no PCI device only.
            let device_id = loop {
                match self.entries.next()? {
                    (_, DeviceEntry::End { device_id }) => break device_id,
                    (_, e) if e.names_no_pci_device() => {}
                    _ => return None,
                }
            };
            return Some(DeviceRange {
                last: device_id,
                ..start
            });
        }
    }
}
