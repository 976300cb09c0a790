//! Fuzz target `firmware_ivrs`: the IVRS decoders ([`crate::firmware::ivrs`]) on arbitrary
//! bytes. Never a panic; every block and device entry lies inside the table, in order; every
//! device range is well formed and found again by the lookup; every unit's register window is
//! 16 KiB aligned when it is accepted; every memory range accepted is aligned and non-empty;
//! a block refused alone (the table kept) is an IVMD whose device range is reversed, and no
//! IVMD the table yields is one. `Ivrs::ats_permission`, for device IDs taken from the input
//! and for those the units name, is `Undeclared` exactly where no unit translates the device,
//! and `Forbidden` for every device of a type 10h unit without `IotlbSup`.
//!
//! The first input byte chooses the mode: bit 0 clear, the rest is the table as is (the
//! header and checksum checks see everything); bit 0 set, the rest is the body after a
//! 36-byte ACPI header written for it (signature `IVRS`, `Length`, checksum), so that nearly
//! every input reaches the block decoders.

use std::vec::Vec;

use crate::amdvi::AmdViConfig;
use crate::firmware::acpi::checksum;
use crate::firmware::ivrs::{
    AmdViUnitDefaults, Block, DeviceEntry, Error, Ivhd, IvhdFlags, IvmdDevices, Ivrs,
};
use crate::iommu::AtsPermission;

/// Most device IDs looked up per unit.
const LOOKUPS_PER_UNIT: usize = 64;

/// Device IDs taken from the input for the ATS lookups.
const ATS_LOOKUPS: usize = 32;

/// The target's body.
pub fn ivrs(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        exercise(rest);
        return;
    }
    let mut t = Vec::with_capacity(36 + rest.len());
    t.extend_from_slice(b"IVRS");
    t.extend_from_slice(
        &u32::try_from(36 + rest.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    t.push(2);
    t.push(0);
    t.extend_from_slice(&[0; 26]);
    t.extend_from_slice(rest);
    t[9] = 0u8.wrapping_sub(checksum(&t));
    exercise(&t);
}

/// Every decoder on `table`, checking what the results promise.
pub fn exercise(table: &[u8]) {
    let ivrs = match Ivrs::parse(table) {
        Ok(t) => t,
        Err(e) => return drop(std::format!("{e}")),
    };
    let len = ivrs.table().bytes().len();
    let mut last = 0;
    for block in ivrs.blocks() {
        let offset = match block {
            Block::Ivhd(h) => h.offset,
            Block::Ivmd(m) => {
                if let Ok((start, length)) = m.range() {
                    assert!(start.get() % 4096 == 0 && length % 4096 == 0 && length != 0);
                }
                if let IvmdDevices::Range { first, last } = m.devices {
                    assert!(first <= last, "reversed IVMD device range");
                }
                // Device IDs are per segment: never another segment's.
                assert!((0..=u16::MAX)
                    .step_by(257)
                    .all(|d| !m.applies_to(m.segment.wrapping_add(1), d)));
                m.offset
            }
            Block::Refused(e) => match e {
                Error::IvmdDeviceRange {
                    offset,
                    first,
                    last,
                } => {
                    assert!(first > last, "refused IVMD with a range in order");
                    assert!(ivrs.ivmds().all(|m| m.offset != offset));
                    offset
                }
                other => panic!("a block refused alone for {other}"),
            },
            Block::Other { offset, bytes, .. } => {
                assert!(offset + bytes.len() <= len);
                offset
            }
        };
        assert!(
            offset >= 48 && offset < len && offset >= last,
            "blocks out of order"
        );
        last = offset;
    }
    for unit in ivrs.units() {
        // One block per IOMMU, of the highest type that describes it.
        assert!(ivrs.units().filter(|u| same_iommu(u, &unit)).count() == 1);
        assert!(ivrs
            .ivhds()
            .all(|h| !same_iommu(&h, &unit) || h.block_type <= unit.block_type));
        let mut at = unit.offset;
        for (offset, entry) in unit.device_entries() {
            assert!(
                offset > at && offset < len,
                "entry out of order or outside the table"
            );
            at = offset;
            if let DeviceEntry::AcpiHid { uid, .. } = entry {
                assert!(offset + 22 + uid.len() <= len);
            }
        }
        // One run per entry that opens one: a range is never lost to an entry between its
        // start and its end.
        let opening = unit
            .device_entries()
            .filter(|(_, e)| !e.names_no_pci_device() && !matches!(e, DeviceEntry::End { .. }))
            .count();
        assert_eq!(unit.device_ranges().count(), opening);
        let last_id = unit.last_device_id();
        for range in unit.device_ranges().take(LOOKUPS_PER_UNIT) {
            if range.is_empty() {
                // An End below its start: a range of no device, kept (as Linux).
                continue;
            }
            assert!(last_id.is_some_and(|l| l >= range.last));
            for id in [range.first, range.last] {
                let (found, run) = ivrs
                    .unit_for(unit.segment, id)
                    .expect("a device a unit names is found");
                assert!(run.contains(id) && found.segment == unit.segment);
                check_ats(&ivrs, unit.segment, id);
            }
        }
        if let Ok(d) = AmdViUnitDefaults::of(&ivrs, &unit) {
            assert!(d.register_base.get() % 0x4000 == 0 && d.register_base.get() != 0);
            assert!((1..=0x1_0000).contains(&d.device_ids));
            let c = d.apply(AmdViConfig::new());
            assert!((32..=52).contains(&c.output_bits) && (32..=64).contains(&c.input_bits));
        }
    }
    // Device IDs (and segments) from the input's own bytes, read as little-endian pairs:
    // devices no unit names, and, for small tables, devices some do.
    let segments: Vec<u16> = ivrs.units().map(|u| u.segment).take(4).collect();
    let ids = table
        .chunks_exact(2)
        .take(ATS_LOOKUPS)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    for id in ids {
        check_ats(&ivrs, id, id);
        for &segment in &segments {
            check_ats(&ivrs, segment, id);
        }
    }
}

/// `Ivrs::ats_permission` for `device_id` of `segment`: `Undeclared` exactly where no unit
/// translates the device; `Forbidden` where its unit is a type 10h IVHD without `IotlbSup`.
fn check_ats(ivrs: &Ivrs<'_>, segment: u16, device_id: u16) {
    let answer = ivrs.ats_permission(segment, device_id);
    match ivrs.unit_for(segment, device_id) {
        None => assert_eq!(answer, AtsPermission::Undeclared, "no unit, yet an answer"),
        Some((unit, _)) => {
            assert_ne!(answer, AtsPermission::Undeclared, "a unit, yet no answer");
            assert_ne!(
                answer,
                AtsPermission::Required,
                "the IVRS never requires ATS"
            );
            if unit.block_type == 0x10 && !unit.flags.contains(IvhdFlags::IOTLB_SUP) {
                assert_eq!(answer, AtsPermission::Forbidden, "ATS without IotlbSup");
            }
        }
    }
}

fn same_iommu(a: &Ivhd<'_>, b: &Ivhd<'_>) -> bool {
    (a.segment, a.device_id) == (b.segment, b.device_id)
}
