//! IVRS tests: the table QEMU 10 builds for q35 with `amd-iommu` (tests/data/acpi/README.md says
//! how it was captured), a hand-built table with every entry and block type, and malformed ones.

use std::vec::Vec;

use super::*;
use crate::amdvi::AmdViConfig;
use crate::firmware::acpi;
use crate::firmware::testutil::{fix_checksum, sdt};
use crate::mem::PhysAddr;

/// `qemu-system-x86_64 -M q35 -device amd-iommu,pt=off -device edu,addr=04.0` (QEMU 10.0.2).
const Q35: &[u8] = include_bytes!("../../../tests/data/acpi/q35-amd-iommu.ivrs");

/// The device IDs QEMU lists: the host bridge, the IOMMU's own function (00:01.0), edu
/// (00:04.0) and the ICH9 functions 00:1f.0, 00:1f.2, 00:1f.3.
const Q35_DEVICES: [u16; 6] = [0x0000, 0x0008, 0x0020, 0x00f8, 0x00fa, 0x00fb];

#[test]
fn q35_ivrs_decodes_as_qemu_builds_it() {
    let t = Ivrs::parse(Q35).unwrap();
    let info = t.iv_info();
    assert!(info.efr_sup());
    assert_eq!(
        (info.pa_size(), info.va_size(), info.gva_size()),
        (40, 0, 0)
    );
    // One unit, described twice: a type 10h and a type 11h block; software uses 11h.
    let types: Vec<u8> = t.ivhds().map(|h| h.block_type).collect();
    assert_eq!(types, [0x10, 0x11]);
    assert_eq!(t.ivmds().count(), 0);
    let [unit] = t.units().collect::<Vec<_>>()[..] else {
        panic!("one unit")
    };
    assert_eq!(
        (unit.device_id, unit.capability_offset, unit.segment),
        (0x0008, 0x40, 0)
    );
    assert_eq!(unit.base_address, 0xfed8_0000);
    assert_eq!(
        unit.register_window(),
        Ok((PhysAddr::new(0xfed8_0000), 0x4000))
    );
    // The image of EFR, as the register reads (tests/qemu/README.md: 0x29d3).
    assert_eq!(unit.efr_image, Some(0x29d3));
    assert_eq!(unit.efr2_image, Some(0));
    let legacy = t.ivhds().next().unwrap();
    assert_eq!(legacy.efr_image, None);
    assert_eq!(
        legacy.flags,
        IvhdFlags::HT_TUN_EN | IvhdFlags::IOTLB_SUP | IvhdFlags::PREF_SUP | IvhdFlags::PPR_SUP
    );
    // Both blocks list the same devices: every function on bus 0, then the IOAPIC.
    for h in t.ivhds() {
        let ids: Vec<u16> = h.device_ranges().map(|r| r.first).collect();
        assert_eq!(ids, Q35_DEVICES);
        assert!(h
            .device_ranges()
            .all(|r| r.first == r.last && r.alias.is_none() && r.dte.is_empty()));
        let specials: Vec<_> = h
            .device_entries()
            .filter(|(_, e)| matches!(e, DeviceEntry::Special { .. }))
            .collect();
        assert_eq!(
            specials[..],
            [(
                h.offset + if h.block_type == 0x10 { 48 } else { 64 },
                DeviceEntry::Special {
                    handle: 0,
                    device_id: 0x00a0,
                    variety: SpecialVariety::Ioapic,
                    dte: DteSetting::empty(),
                }
            )]
        );
        assert_eq!(h.last_device_id(), Some(0xfb));
    }
    // edu is translated by the unit under its own ID; an absent function is not.
    let (u, run) = t.unit_for(0, 0x20).unwrap();
    assert_eq!((u.block_type, run.requester(0x20)), (0x11, 0x20));
    assert!(t.unit_for(0, 0x28).is_none());
    assert!(t.unit_for(1, 0x20).is_none());
    let d = AmdViUnitDefaults::of(&t, &unit).unwrap();
    assert_eq!(
        d,
        AmdViUnitDefaults {
            register_base: PhysAddr::new(0xfed8_0000),
            register_len: 0x4000,
            segment: 0,
            device_id: 0x0008,
            device_ids: 0xfc,
            efr_image: Some(0x29d3),
            output_bits: Some(40),
            input_bits: None,
            guest_input_bits: None,
        }
    );
    assert_eq!(d.apply(AmdViConfig::new()).device_ids, 0xfc);
}

/// A hand-built block.
fn block(block_type: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut b = std::vec![block_type, flags];
    b.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_le_bytes());
    b.extend_from_slice(body);
    b
}

/// An IVHD of `block_type` at `base` on `segment` with `entries`, for the IOMMU 00:02.0.
fn ivhd(block_type: u8, segment: u16, base: u64, efr: u64, entries: &[u8]) -> Vec<u8> {
    ivhd_of(0x0010, block_type, segment, base, efr, entries)
}

/// An IVHD of `block_type` for the IOMMU whose own PCI function is `iommu`.
fn ivhd_of(
    iommu: u16,
    block_type: u8,
    segment: u16,
    base: u64,
    efr: u64,
    entries: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&iommu.to_le_bytes()); // IOMMU DeviceID
    body.extend_from_slice(&0x40u16.to_le_bytes());
    body.extend_from_slice(&base.to_le_bytes());
    body.extend_from_slice(&segment.to_le_bytes());
    body.extend_from_slice(&0x0305u16.to_le_bytes()); // UnitID 3, MSI 5
    body.extend_from_slice(&0u32.to_le_bytes());
    if block_type != 0x10 {
        body.extend_from_slice(&efr.to_le_bytes());
        body.extend_from_slice(&7u64.to_le_bytes());
    }
    body.extend_from_slice(entries);
    block(block_type, 0, &body)
}

fn ivrs(iv_info: u32, blocks: &[Vec<u8>]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&iv_info.to_le_bytes());
    body.extend_from_slice(&[0; 8]);
    for b in blocks {
        body.extend_from_slice(b);
    }
    sdt(*b"IVRS", 2, &body)
}

fn entry4(t: u8, id: u16, dte: u8) -> [u8; 4] {
    let [lo, hi] = id.to_le_bytes();
    [t, lo, hi, dte]
}

fn entry8(t: u8, id: u16, dte: u8, tail: [u8; 4]) -> [u8; 8] {
    let [lo, hi] = id.to_le_bytes();
    [t, lo, hi, dte, tail[0], tail[1], tail[2], tail[3]]
}

/// Every entry type: select, range, alias, alias range, extended, special, ACPI HID with a
/// UID, padding and a reserved 8-byte type.
fn every_entry() -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x00, 0, 0));
    e.extend_from_slice(&entry4(0x02, 0x0100, 0x01));
    e.extend_from_slice(&entry4(0x03, 0x0200, 0x40));
    e.extend_from_slice(&entry4(0x04, 0x02ff, 0));
    e.extend_from_slice(&entry8(0x42, 0x0300, 0, [0, 0x10, 0x03, 0]));
    e.extend_from_slice(&entry8(0x43, 0x0400, 0, [0, 0x00, 0x04, 0]));
    e.extend_from_slice(&entry4(0x04, 0x04ff, 0));
    e.extend_from_slice(&entry8(0x46, 0x0500, 0, 0x8000_0000u32.to_le_bytes()));
    e.extend_from_slice(&entry8(0x47, 0x0600, 0, 0x8000_0000u32.to_le_bytes()));
    e.extend_from_slice(&entry4(0x04, 0x0610, 0));
    e.extend_from_slice(&entry8(0x48, 0, 0xd7, [0x21, 0xa0, 0x00, 0x01]));
    e.extend_from_slice(&entry8(0x48, 0, 0, [0x00, 0xa8, 0x00, 0x02]));
    e.extend_from_slice(&entry8(0x7f, 0, 0, [0; 4]));
    // ACPI HID "AMDI0020", no CID, a 3-byte string UID.
    e.extend_from_slice(&entry4(0xf0, 0x00a5, 0));
    e.extend_from_slice(b"AMDI0020");
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&[2, 3]);
    e.extend_from_slice(b"ID0");
    e
}

#[test]
fn every_entry_and_block_type() {
    let mem_unity = {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0100u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&0x000f_0000u64.to_le_bytes());
        b.extend_from_slice(&0x1_0000u64.to_le_bytes());
        b
    };
    let mem_range = {
        let mut b = Vec::new();
        b.extend_from_slice(&0x0200u16.to_le_bytes());
        b.extend_from_slice(&0x02ffu16.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&0x1000u64.to_le_bytes());
        b.extend_from_slice(&0x2000u64.to_le_bytes());
        b
    };
    let t = ivrs(
        0x0018_2800 | 1,
        &[
            ivhd(0x10, 0, 0xfeb8_0000, 0, &every_entry()[..4 * 4]),
            ivhd(0x40, 0, 0xfeb8_0000, 0x1234, &every_entry()),
            ivhd(0x40, 1, 0xfec0_0000, 0x1234, &entry4(0x01, 0, 0)),
            block(0x21, 0x07, &mem_unity),
            block(0x22, 0x08, &mem_range),
            block(0x30, 0, &[1, 2, 3, 4]),
        ],
    );
    let t = Ivrs::parse(&t).unwrap();
    assert_eq!((t.iv_info().pa_size(), t.iv_info().va_size()), (40, 48));
    assert_eq!(t.blocks().count(), 6);
    assert!(matches!(
        t.blocks().last(),
        Some(Block::Other {
            block_type: 0x30,
            ..
        })
    ));
    let units: Vec<_> = t.units().collect();
    assert_eq!(units.len(), 2);
    assert!(units.iter().all(|u| u.block_type == 0x40));
    let u = units[0];
    assert_eq!((u.msi_number(), u.unit_id(), u.efr2_image), (5, 3, Some(7)));
    let runs: Vec<_> = u.device_ranges().collect();
    assert_eq!(
        runs.iter()
            .map(|r| (r.first, r.last, r.alias, r.extended))
            .collect::<Vec<_>>(),
        [
            (0x0100, 0x0100, None, None),
            (0x0200, 0x02ff, None, None),
            (0x0300, 0x0300, Some(0x0310), None),
            (0x0400, 0x04ff, Some(0x0400), None),
            (0x0500, 0x0500, None, Some(0x8000_0000)),
            (0x0600, 0x0610, None, Some(0x8000_0000)),
        ]
    );
    assert_eq!(runs[0].dte, DteSetting::INIT_PASS);
    assert_eq!(runs[1].dte, DteSetting::LINT0_PASS);
    assert_eq!(runs[2].requester(0x0300), 0x0310);
    let entries: Vec<_> = u.device_entries().map(|(_, e)| e).collect();
    assert!(entries.contains(&DeviceEntry::Special {
        handle: 0x21,
        device_id: 0x00a0,
        variety: SpecialVariety::Ioapic,
        dte: DteSetting::from_bits_retain(0xd7),
    }));
    assert!(entries.contains(&DeviceEntry::Special {
        handle: 0,
        device_id: 0x00a8,
        variety: SpecialVariety::Hpet,
        dte: DteSetting::empty(),
    }));
    assert!(entries.contains(&DeviceEntry::Reserved { entry_type: 0x7f }));
    assert!(entries.contains(&DeviceEntry::AcpiHid {
        device_id: 0x00a5,
        dte: DteSetting::empty(),
        hid: *b"AMDI0020",
        cid: [0; 8],
        uid_format: 2,
        uid: b"ID0",
    }));
    assert_eq!(u.last_device_id(), Some(0x0610));
    // Lookups: the unit of the segment that names the device; segment 1's unit takes
    // every device ID of its segment.
    assert_eq!(
        t.unit_for(0, 0x0250).map(|(h, r)| (h.offset, r.first)),
        Some((u.offset, 0x0200))
    );
    assert!(t.unit_for(0, 0x0700).is_none());
    let (s1, all) = t.unit_for(1, 0x0700).unwrap();
    assert_eq!((s1.segment, all.first, all.last), (1, 0, 0xffff));
    assert_eq!(AmdViUnitDefaults::of(&t, &s1).unwrap().device_ids, 0x1_0000);
    // Memory definitions.
    let m: Vec<_> = t.memory_for(0, 0x0100).collect();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].flags, IvmdFlags::UNITY | IvmdFlags::IR | IvmdFlags::IW);
    assert_eq!(m[0].range(), Ok((PhysAddr::new(0xf_0000), 0x1_0000)));
    let r: Vec<_> = t.memory_for(0, 0x0280).collect();
    assert_eq!(r.len(), 1);
    assert_eq!(
        (r[0].devices, r[0].flags),
        (
            IvmdDevices::Range {
                first: 0x200,
                last: 0x2ff
            },
            IvmdFlags::EXCLUSION_RANGE
        )
    );
    assert_eq!(t.memory_for(0, 0x0300).count(), 0);
}

#[test]
fn malformed_tables_are_refused_with_the_offending_value() {
    // A range start not closed.
    let t = ivrs(0, &[ivhd(0x11, 0, 0xfed8_0000, 0, &entry4(0x03, 0x10, 0))]);
    assert_eq!(
        Ivrs::parse(&t),
        Err(Error::Range {
            offset: 48 + 40,
            start: 0x10,
            end: 0x10
        })
    );
    // An end below its start is an empty range, kept:
    // `review_an_empty_range_does_not_refuse_the_whole_ivrs`.
    // An end without a start.
    let t = ivrs(0, &[ivhd(0x10, 0, 0xfed8_0000, 0, &entry4(0x04, 0x10, 0))]);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::Range { offset: 72, .. })
    ));
    // A variable-length entry of unknown length.
    let t = ivrs(0, &[ivhd(0x10, 0, 0xfed8_0000, 0, &entry4(0xff, 0, 0))]);
    assert_eq!(
        Ivrs::parse(&t),
        Err(Error::UnknownEntry {
            offset: 72,
            entry_type: 0xff
        })
    );
    // An 8-byte entry cut by the block's end.
    let t = ivrs(0, &[ivhd(0x10, 0, 0xfed8_0000, 0, &entry4(0x42, 0, 0))]);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::Overrun {
            structure: Structure::DeviceEntry,
            offset: 72,
            length: 8,
            remaining: 4
        })
    ));
    // An ACPI HID entry whose UID runs past the block.
    let mut hid = entry4(0xf0, 1, 0).to_vec();
    hid.extend_from_slice(&[0; 16]);
    hid.extend_from_slice(&[2, 9, b'x']);
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfed8_0000, 0, &hid)]);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::Overrun { length: 31, .. })
    ));
    // A type 11h block too short for its EFR image.
    let mut short = ivhd(0x10, 0, 0xfed8_0000, 0, &[]);
    short[0] = 0x11;
    let t = ivrs(0, &[short]);
    assert_eq!(
        Ivrs::parse(&t),
        Err(Error::TooShort {
            structure: Structure::Ivhd,
            offset: 48,
            length: 24,
            minimum: 40
        })
    );
    // A block longer than the table.
    let mut t = ivrs(0, &[ivhd(0x10, 0, 0xfed8_0000, 0, &[])]);
    t[48 + 2] = 0x40;
    fix_checksum(&mut t);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::Overrun {
            structure: Structure::BlockHeader,
            ..
        })
    ));
    // A block length below its header.
    let mut t = ivrs(0, &[block(0x30, 0, &[])]);
    t[48 + 2] = 2;
    fix_checksum(&mut t);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::TooShort { length: 2, .. })
    ));
    // An IVMD shorter than 32 bytes.
    let t = ivrs(0, &[block(0x21, 0, &[0; 8])]);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::TooShort {
            structure: Structure::Ivmd,
            ..
        })
    ));
    // A table too short for IVinfo, the wrong signature, a bad checksum.
    assert!(matches!(
        Ivrs::parse(&sdt(*b"IVRS", 2, &[0; 4])),
        Err(Error::TooShort {
            structure: Structure::Table,
            ..
        })
    ));
    assert!(matches!(
        Ivrs::parse(&sdt(*b"DMAR", 2, &[0; 12])),
        Err(Error::Acpi(acpi::Error::WrongSignature { .. }))
    ));
    let mut bad = Q35.to_vec();
    bad[40] ^= 1;
    assert!(matches!(Ivrs::parse(&bad), Err(Error::Acpi(_))));
    // Register bases and memory ranges checked where used.
    let t = ivrs(0, &[ivhd(0x11, 0, 0xfed8_1000, 0, &[])]);
    let t = Ivrs::parse(&t).unwrap();
    let u = t.units().next().unwrap();
    assert_eq!(
        u.register_window(),
        Err(Error::RegisterBase { base: 0xfed8_1000 })
    );
    assert_eq!(
        AmdViUnitDefaults::of(&t, &u),
        Err(Error::RegisterBase { base: 0xfed8_1000 })
    );
    let m = Ivmd {
        devices: IvmdDevices::All,
        segment: 0,
        flags: IvmdFlags::UNITY,
        start: !0xfff_u64,
        length: 0x2000,
        offset: 0,
    };
    assert_eq!(
        m.range(),
        Err(Error::MemoryRange {
            start: !0xfff_u64,
            length: 0x2000
        })
    );
}

#[test]
fn every_prefix_and_byte_flip_of_the_capture_fails_cleanly() {
    // No input panics: truncations (re-checksummed) and single-byte changes.
    for len in 36..Q35.len() {
        let mut t = Q35[..len].to_vec();
        t[4..8].copy_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
        fix_checksum(&mut t);
        if let Ok(ivrs) = Ivrs::parse(&t) {
            for u in ivrs.units() {
                let _ = u.device_ranges().count();
                let _ = AmdViUnitDefaults::of(&ivrs, &u);
            }
        }
    }
    let step = if cfg!(miri) { 37 } else { 1 };
    for at in (36..Q35.len()).step_by(step) {
        for bit in 0..8 {
            let mut t = Q35.to_vec();
            t[at] ^= 1 << bit;
            fix_checksum(&mut t);
            if let Ok(ivrs) = Ivrs::parse(&t) {
                for u in ivrs.units() {
                    let _ = u.device_entries().count();
                    let _ = u.last_device_id();
                }
                let _ = ivrs.unit_for(0, 0x20);
            }
        }
    }
}

/// Within one IVHD an alias entry after an "All" entry gives the alias for the devices it
/// names, and the DTE index the unit sees is the alias's (Linux's IVHD walk writes a device's
/// alias only from alias entries, whatever comes before or after them:
/// `review_an_alias_survives_a_later_select_of_the_same_device`).
#[test]
fn a_later_device_entry_overrides_an_earlier_one() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x01, 0, 0));
    e.extend_from_slice(&entry8(0x42, 0x0300, 0, [0, 0x10, 0x03, 0]));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    let (_, run) = t.unit_for(0, 0x0300).unwrap();
    assert_eq!(run.requester(0x0300), 0x0310);
    let (_, run) = t.unit_for(0, 0x0200).unwrap();
    assert_eq!(run.requester(0x0200), 0x0200);
}

/// §5.2.2.3: a device entry's type gives its length in bits 7:6 (00b 4 bytes, 01b 8, 10b 16,
/// 11b 32), the rule Linux's `ivhd_entry_length` applies to every type below 80h and applied
/// to every type before ACPI HID (F0h, 22 bytes and its UID) was defined. Types 80h-EFh define
/// no entry: software skips them by that length and reads the entries after them.
#[test]
fn reserved_entries_80h_to_efh_are_skipped_by_their_length() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x80, 0x1234, 0xff));
    e.extend_from_slice(&[0xee; 12]);
    e.extend_from_slice(&entry4(0x02, 0x0020, 0));
    e.extend_from_slice(&entry4(0xef, 0x4321, 0xff));
    e.extend_from_slice(&[0xdd; 28]);
    e.extend_from_slice(&entry4(0x02, 0x0030, 0));
    let t = ivrs(0, &[ivhd(0x11, 0, 0xfed8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).expect("reserved entries skipped");
    let unit = t.units().next().unwrap();
    let types: Vec<u8> = unit
        .device_entries()
        .map(|(_, entry)| match entry {
            DeviceEntry::Reserved { entry_type } => entry_type,
            DeviceEntry::Select { device_id, .. } => device_id as u8,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(types, [0x80, 0x20, 0xef, 0x30]);
    assert!(t.unit_for(0, 0x20).is_some());
    assert!(t.unit_for(0, 0x30).is_some());
    assert!(t.unit_for(0, 0x1234).is_none());
    // A reserved 16-byte entry cut by the block's end.
    let t = ivrs(0, &[ivhd(0x11, 0, 0xfed8_0000, 0, &entry4(0x81, 0, 0))]);
    assert!(matches!(
        Ivrs::parse(&t),
        Err(Error::Overrun {
            structure: Structure::DeviceEntry,
            length: 16,
            remaining: 4,
            ..
        })
    ));
    // Variable-length types beside ACPI HID (F1h-FFh) have no known length.
    let t = ivrs(0, &[ivhd(0x10, 0, 0xfed8_0000, 0, &entry4(0xf1, 0, 0))]);
    assert_eq!(
        Ivrs::parse(&t),
        Err(Error::UnknownEntry {
            offset: 72,
            entry_type: 0xf1
        })
    );
}

/// §5.2.2.4: an IVMD of type 22h names device IDs `DeviceID..=Auxiliary Data`; one whose
/// start is after its end names no device. That IVMD alone is refused, naming both (Linux
/// iterates the empty range: it applies to no device): the table, its units and its other
/// IVMDs stay, so that an embedder that takes "no IVRS" for "no IOMMU" does not run its
/// devices untranslated over one bad block.
#[test]
fn an_ivmd_range_whose_start_is_after_its_end_is_refused_alone() {
    let ivmd = |first: u16, last: u16| {
        let mut body = Vec::new();
        body.extend_from_slice(&first.to_le_bytes());
        body.extend_from_slice(&last.to_le_bytes());
        body.extend_from_slice(&[0; 8]);
        body.extend_from_slice(&0x8000_0000u64.to_le_bytes());
        body.extend_from_slice(&0x1000u64.to_le_bytes());
        block(0x22, 0x07, &body)
    };
    let unit = ivhd(0x10, 0, 0xfed8_0000, 0, &entry4(0x02, 0x20, 0));
    let at = 48 + unit.len();
    let t = ivrs(0, &[unit, ivmd(0x40, 0x10), ivmd(0x10, 0x40)]);
    let t = Ivrs::parse(&t).expect("the table stays");
    let refused = Error::IvmdDeviceRange {
        offset: at,
        first: 0x40,
        last: 0x10,
    };
    assert_eq!(t.refused_blocks().collect::<Vec<_>>(), [refused]);
    assert_eq!(t.blocks().nth(1), Some(Block::Refused(refused)));
    // The other IVMD (the same range the right way round) and the unit are there.
    let m: Vec<_> = t.ivmds().collect();
    assert_eq!(m.len(), 1);
    assert_eq!(
        (m[0].devices, m[0].offset),
        (
            IvmdDevices::Range {
                first: 0x10,
                last: 0x40
            },
            at + 32
        )
    );
    assert_eq!(t.memory_for(0, 0x20).count(), 1);
    assert!(t.unit_for(0, 0x20).is_some());
    // The block's own decoder still says why.
    let raw = ivmd(0x40, 0x10);
    assert_eq!(Ivmd::parse(&raw, at), Err(refused));
    // A table of good blocks refuses none.
    let t = ivrs(0, &[ivmd(0x10, 0x40)]);
    assert_eq!(Ivrs::parse(&t).unwrap().refused_blocks().count(), 0);
}

/// §5.2.1 `IVinfo`: `PAsize` and `VAsize` bound every unit's output and input addresses;
/// `GVAsize` the guest (v2) tables' input. The defaults carry them to the unit's
/// configuration; 0 (QEMU 10 reports `VAsize` and `GVAsize` 0) reports nothing.
#[test]
fn iv_info_address_sizes_reach_the_unit_configuration() {
    let iv_info = 2 << 5 | 44 << 8 | 48 << 15;
    let t = ivrs(
        iv_info,
        &[ivhd(0x11, 0, 0xfed8_0000, 0, &entry4(0x01, 0, 0))],
    );
    let t = Ivrs::parse(&t).unwrap();
    let d = AmdViUnitDefaults::of(&t, &t.units().next().unwrap()).unwrap();
    assert_eq!(
        (d.output_bits, d.input_bits, d.guest_input_bits),
        (Some(44), Some(48), Some(48))
    );
    let c = d.apply(AmdViConfig::new());
    assert_eq!((c.output_bits, c.input_bits), (44, 48));
    // QEMU's table: PAsize 40, VAsize and GVAsize 0.
    let q = Ivrs::parse(Q35).unwrap();
    let d = AmdViUnitDefaults::of(&q, &q.units().next().unwrap()).unwrap();
    assert_eq!(
        (d.output_bits, d.input_bits, d.guest_input_bits),
        (Some(40), None, None)
    );
    let c = d.apply(AmdViConfig::new());
    assert_eq!(
        (c.output_bits, c.input_bits),
        (40, AmdViConfig::new().input_bits)
    );
    // A width no unit can have is refused, naming the field and its value.
    for (iv_info, field, bits) in [
        (20 << 8, "PAsize", 20),
        (60 << 8, "PAsize", 60),
        (12 << 15, "VAsize", 12),
        (5 << 5, "GVAsize", 5),
    ] {
        let t = ivrs(
            iv_info,
            &[ivhd(0x11, 0, 0xfed8_0000, 0, &entry4(0x01, 0, 0))],
        );
        let t = Ivrs::parse(&t).unwrap();
        assert_eq!(
            AmdViUnitDefaults::of(&t, &t.units().next().unwrap()),
            Err(Error::AddressSize { field, bits })
        );
    }
}

/// An IVMD of `block_type` on PCI segment `segment` (offset 8) for `device_id` (..=`aux` for
/// 22h): 4 KiB unity-mapped read/write at `start`.
fn ivmd_on(block_type: u8, segment: u16, device_id: u16, aux: u16, start: u64) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&device_id.to_le_bytes());
    b.extend_from_slice(&aux.to_le_bytes());
    b.extend_from_slice(&segment.to_le_bytes());
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&start.to_le_bytes());
    b.extend_from_slice(&0x1000u64.to_le_bytes());
    block(block_type, 0x07, &b)
}

#[test]
fn an_ivmd_applies_to_its_own_pci_segment_only() {
    let t = ivrs(
        0,
        &[
            ivhd(0x40, 0, 0xfeb8_0000, 0, &entry4(0x01, 0, 0)),
            ivhd(0x40, 1, 0xfec0_0000, 0, &entry4(0x01, 0, 0)),
            ivmd_on(0x21, 1, 0x0100, 0, 0x10_0000),
            ivmd_on(0x20, 1, 0, 0, 0x20_0000),
            ivmd_on(0x22, 1, 0x0080, 0x01ff, 0x30_0000),
            ivmd_on(0x21, 0, 0x0100, 0, 0x40_0000),
        ],
    );
    let t = Ivrs::parse(&t).unwrap();
    let starts = |segment, device_id| -> Vec<u64> {
        t.memory_for(segment, device_id).map(|m| m.start).collect()
    };
    assert_eq!(
        t.ivmds().map(|m| m.segment).collect::<Vec<_>>(),
        [1, 1, 1, 0]
    );
    // Segment 0's device 0x0100 gets only segment 0's IVMD: not segment 1's one-device,
    // all-devices or range IVMD of the same device ID.
    assert_eq!(starts(0, 0x0100), [0x40_0000]);
    assert_eq!(starts(1, 0x0100), [0x10_0000, 0x20_0000, 0x30_0000]);
    assert_eq!(starts(0, 0x0300), []);
    assert_eq!(
        starts(1, 0x0300),
        [0x20_0000],
        "20h: every device of segment 1"
    );
}

#[test]
fn entries_naming_no_pci_device_may_sit_between_a_range_start_and_its_end() {
    // 03h .. 00h pad .. 04h; 47h .. 48h special (an IOAPIC) .. 04h; 43h .. reserved 8-byte
    // 7Fh .. 04h: each IVHD is kept, each range is whole, and the entry in between is still
    // listed. Before, each refused the whole IVRS.
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x03, 0x0100, 0x01));
    e.extend_from_slice(&entry4(0x00, 0, 0));
    e.extend_from_slice(&entry4(0x04, 0x01ff, 0));
    e.extend_from_slice(&entry8(0x47, 0x0200, 0, 0x8000_0000u32.to_le_bytes()));
    e.extend_from_slice(&entry8(0x48, 0, 0xd7, [0x21, 0xa0, 0x00, 0x01]));
    e.extend_from_slice(&entry4(0x04, 0x02ff, 0));
    e.extend_from_slice(&entry8(0x43, 0x0300, 0, [0, 0x10, 0x03, 0]));
    e.extend_from_slice(&entry8(0x7f, 0, 0, [0; 4]));
    e.extend_from_slice(&entry4(0x04, 0x03ff, 0));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).expect("the IVRS is kept");
    let u = t.units().next().unwrap();
    let runs: Vec<_> = u
        .device_ranges()
        .map(|r| (r.first, r.last, r.alias, r.extended))
        .collect();
    assert_eq!(
        runs,
        [
            (0x0100, 0x01ff, None, None),
            (0x0200, 0x02ff, None, Some(0x8000_0000)),
            (0x0300, 0x03ff, Some(0x0310), None),
        ]
    );
    assert_eq!(
        t.unit_for(0, 0x0250).map(|(_, r)| (r.first, r.last)),
        Some((0x0200, 0x02ff))
    );
    assert!(u.device_entries().any(|(_, e)| matches!(
        e,
        DeviceEntry::Special {
            variety: SpecialVariety::Ioapic,
            ..
        }
    )));
    // An entry that names PCI devices itself between a start and its end stays an error:
    // which entry the end closes would be a guess.
    for between in [entry4(0x02, 0x0150, 0), entry4(0x03, 0x0150, 0)] {
        let mut e = entry4(0x03, 0x0100, 0).to_vec();
        e.extend_from_slice(&between);
        e.extend_from_slice(&entry4(0x04, 0x01ff, 0));
        let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
        assert!(
            matches!(Ivrs::parse(&t), Err(Error::Range { start: 0x0100, .. })),
            "{between:?}"
        );
    }
}

/// One IVHD per IOMMU, of the highest type that describes it: an IOMMU the table describes
/// only by a type 10h block is a unit as well, beside one described by 10h and 11h (FreeBSD
/// `ivhd_is_newer` keeps the newest block per IOMMU DeviceID; Linux and Xen agree whenever
/// every IOMMU has the same types). Found by review: the table-wide highest type (11h) hid the
/// 10h-only IOMMU, so its devices were "behind no unit".
#[test]
fn each_iommu_is_a_unit_of_its_own_highest_type() {
    let t = ivrs(
        0,
        &[
            ivhd_of(0x0010, 0x10, 0, 0xfeb8_0000, 0, &entry4(0x02, 0x0100, 0)),
            ivhd_of(0x0018, 0x10, 0, 0xfeb9_0000, 0, &entry4(0x02, 0x0200, 0)),
            ivhd_of(
                0x0018,
                0x11,
                0,
                0xfeb9_0000,
                0x1234,
                &entry4(0x02, 0x0200, 0),
            ),
            // The same DeviceID on another segment is another IOMMU.
            ivhd_of(0x0010, 0x40, 1, 0xfeba_0000, 0x1234, &entry4(0x01, 0, 0)),
        ],
    );
    let t = Ivrs::parse(&t).unwrap();
    let units: Vec<_> = t
        .units()
        .map(|h| (h.segment, h.device_id, h.block_type))
        .collect();
    assert_eq!(
        units,
        [(0, 0x0010, 0x10), (0, 0x0018, 0x11), (1, 0x0010, 0x40)]
    );
    let found = |segment, id| {
        t.unit_for(segment, id)
            .map(|(h, _)| (h.device_id, h.block_type))
    };
    assert_eq!(found(0, 0x0100), Some((0x0010, 0x10)));
    assert_eq!(found(0, 0x0200), Some((0x0018, 0x11)));
    assert_eq!(found(1, 0x0100), Some((0x0010, 0x40)));
}

/// A device two units name is the last one's, in table order: Linux (`rlookup_table`) and Xen
/// (`ivrs_mappings[].iommu`) fill their device-to-IOMMU tables block by block, a later IVHD
/// overwriting an earlier one. Found by review: the first unit was answered.
#[test]
fn a_device_two_units_name_is_the_last_ones() {
    let mut range = Vec::new();
    range.extend_from_slice(&entry4(0x03, 0x0100, 0));
    range.extend_from_slice(&entry4(0x04, 0x01ff, 0));
    let t = ivrs(
        0,
        &[
            ivhd_of(0x0010, 0x11, 0, 0xfeb8_0000, 0, &range),
            ivhd_of(0x0018, 0x11, 0, 0xfeb9_0000, 0, &entry4(0x02, 0x0150, 0x01)),
        ],
    );
    let t = Ivrs::parse(&t).unwrap();
    let found = |id| {
        t.unit_for(0, id)
            .map(|(h, r)| (h.device_id, r.first, r.dte))
    };
    assert_eq!(found(0x0150), Some((0x0018, 0x0150, DteSetting::INIT_PASS)));
    assert_eq!(found(0x0151), Some((0x0010, 0x0100, DteSetting::empty())));
}

// ---- Review findings (branch fwrev): each test states what Linux's IVHD walk does. ----

/// Linux `init_iommu_from_acpi`: only alias entries (42h, 43h..04h) write
/// `pci_seg->alias_table[devid]`; a later Select/Range/All for the same device sets its DTE
/// bits but leaves the alias in place (the alias is a hardware fact: the bridge rewrites the
/// requester ID). Here the crate's `covering` takes the later Select as "the" run and forgets
/// the alias, so the DTE index the unit really uses (0x0310) is not the one reported.
#[test]
fn review_an_alias_survives_a_later_select_of_the_same_device() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry8(0x42, 0x0300, 0, [0, 0x10, 0x03, 0]));
    e.extend_from_slice(&entry4(0x02, 0x0300, 0));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    let (_, run) = t.unit_for(0, 0x0300).unwrap();
    assert_eq!(run.requester(0x0300), 0x0310, "alias lost");
}

/// The same with an alias range followed by a plain range over the same devices.
#[test]
fn review_an_alias_range_survives_a_later_range_over_the_same_devices() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry8(0x43, 0x0300, 0, [0, 0x10, 0x03, 0]));
    e.extend_from_slice(&entry4(0x04, 0x03ff, 0));
    e.extend_from_slice(&entry4(0x03, 0x0000, 0));
    e.extend_from_slice(&entry4(0x04, 0xffff, 0));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    let (_, run) = t.unit_for(0, 0x0305).unwrap();
    assert_eq!(run.requester(0x0305), 0x0310, "alias lost");
}

/// Linux `init_iommu_from_acpi` calls `set_dev_entry_from_acpi(iommu, devid_to, ...)` for an
/// alias's source ID too, which sets `rlookup_table[devid_to] = iommu`: the alias source is
/// behind the unit. The crate answers "no unit" for it.
#[test]
fn review_an_alias_source_is_behind_the_unit() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry8(0x42, 0x0300, 0, [0, 0x10, 0x03, 0]));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    assert!(
        t.unit_for(0, 0x0310).is_some(),
        "alias source behind no unit"
    );
}

/// DTE settings accumulate over the entries naming a device (Linux's IVHD walk only sets DTE
/// bits), and the run reported is the devices every entry treats alike: an "All" with
/// `NMIPass`, then a Select of 0x0300 with `INITPass`, gives 0x0300 both, alone in its run.
#[test]
fn device_entry_settings_accumulate_and_the_run_is_what_they_share() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x01, 0, DteSetting::NMI_PASS.bits()));
    e.extend_from_slice(&entry4(0x02, 0x0300, DteSetting::INIT_PASS.bits()));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    let (_, run) = t.unit_for(0, 0x0300).unwrap();
    assert_eq!(
        (run.first, run.last, run.dte),
        (0x0300, 0x0300, DteSetting::NMI_PASS | DteSetting::INIT_PASS)
    );
    let (_, run) = t.unit_for(0, 0x0301).unwrap();
    assert_eq!(
        (run.first, run.last, run.dte),
        (0x0301, u16::MAX, DteSetting::NMI_PASS)
    );
}

/// A range whose End (04h) is below its Start (03h) names no device in Linux (its END loop
/// `for (dev_i = devid_start; dev_i <= devid; ++dev_i)` runs zero times) and the rest of the
/// IVHD, and every other IVHD, still apply. The crate refuses the whole IVRS, which this
/// module's own doc calls the dangerous outcome for an IVMD ("an embedder that takes 'no
/// IVRS' for 'no IOMMU' run[s] every device untranslated").
#[test]
fn review_an_empty_range_does_not_refuse_the_whole_ivrs() {
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x01, 0, 0));
    e.extend_from_slice(&entry4(0x03, 0x0200, 0));
    e.extend_from_slice(&entry4(0x04, 0x01ff, 0));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t);
    assert!(t.is_ok(), "{t:?}");
}

/// ATS permission: an extended entry with `Extended DTE Setting` bit 31 (ATS disabled)
/// forbids the device it names and no other; a type 10h IVHD without `IotlbSup` forbids
/// every device of its unit, with it allows; bit 28 (Linux's unused define) is no refusal;
/// a device no unit translates is undeclared.
#[test]
fn ats_permission_follows_the_extended_entries_and_iotlb_sup() {
    use crate::iommu::AtsPermission::{Allowed, Forbidden, Undeclared};
    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x03, 0x0100, 0));
    e.extend_from_slice(&entry4(0x04, 0x01ff, 0));
    e.extend_from_slice(&entry8(0x46, 0x0200, 0, EXT_ATS_DISABLED.to_le_bytes()));
    e.extend_from_slice(&entry8(0x46, 0x0208, 0, (1u32 << 28).to_le_bytes()));
    let t = ivrs(0, &[ivhd(0x40, 0, 0xfeb8_0000, 0, &e)]);
    let t = Ivrs::parse(&t).unwrap();
    assert_eq!(t.ats_permission(0, 0x0200), Forbidden);
    assert_eq!(t.ats_permission(0, 0x0208), Allowed);
    assert_eq!(t.ats_permission(0, 0x0100), Allowed);
    assert_eq!(
        t.ats_permission(0, 0x0300),
        Undeclared,
        "no unit translates it"
    );
    assert_eq!(t.ats_permission(1, 0x0100), Undeclared);

    let mut e = Vec::new();
    e.extend_from_slice(&entry4(0x01, 0, 0));
    let mut without = ivhd(0x10, 0, 0xfeb8_0000, 0, &e);
    without[1] = IvhdFlags::COHERENT.bits();
    let t = ivrs(0, &[without.clone()]);
    let t = Ivrs::parse(&t).unwrap();
    assert_eq!(
        t.ats_permission(0, 0x0100),
        Forbidden,
        "10h without IotlbSup"
    );
    let mut with = without;
    with[1] |= IvhdFlags::IOTLB_SUP.bits();
    let t = ivrs(0, &[with]);
    let t = Ivrs::parse(&t).unwrap();
    assert_eq!(t.ats_permission(0, 0x0100), Allowed, "10h with IotlbSup");
    // QEMU's q35: edu (00:04.0) behind the 11h unit, no extended entry.
    let q35 = Ivrs::parse(Q35).unwrap();
    assert_eq!(q35.ats_permission(0, 0x0020), Allowed);
}
