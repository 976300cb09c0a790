//! Firmware-table parsers under arbitrary bytes (target `firmware_dmar`).
//!
//! The input's first byte picks how the rest is read: as a whole DMAR table (header, length
//! and checksum as given, so those checks are exercised), as the body of a DMAR table whose
//! header this harness completes with a correct length and checksum (so the structure and
//! device-scope checks are reached on nearly every input), or as physical memory holding an
//! RSDP at address 0 (the RSDP / RSDT / XSDT walk). Nothing may panic; a table that parses
//! must be consistent: structures in order inside the table, every scope with a path, every
//! "covering unit" answer justified by the rule it claims, every reserved region a non-empty
//! 4 KiB-aligned range, every ATS answer the one its upstream and the SATCs allow. The bus walk
//! answers "bridge", "not a bridge" and "unknown" (a walk that may not know a function), so the
//! lookups' unresolved-scope errors are reached too.

use std::format;
use std::vec::Vec;

use crate::firmware::acpi::{self, checksum, Rsdp};
use crate::firmware::dmar::satc::SatcFlags;
use crate::firmware::dmar::{
    BridgeAnswer, BusRange, Coverage, Dmar, PciBuses, RemappingStructure, Upstream,
};
use crate::iommu::AtsPermission;
use crate::vtd::SourceId;

/// The body of fuzz target `firmware_dmar`.
pub fn dmar(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 3 {
        0 => dmar_table(rest),
        1 => dmar_table(&table_around(rest)),
        _ => physical_memory(rest),
    }
}

/// A DMAR table whose header has `body`'s length and a correct checksum.
fn table_around(body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(b"DMAR");
    t.extend_from_slice(
        &u32::try_from(36 + body.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    t.extend_from_slice(&[1, 0]);
    t.extend_from_slice(&[b'F'; 26]);
    t.extend_from_slice(body);
    if let Some(sum) = t.get_mut(9) {
        *sum = 0;
    }
    let fix = 0u8.wrapping_sub(checksum(&t));
    if let Some(sum) = t.get_mut(9) {
        *sum = fix;
    }
    t
}

/// `memory` as physical memory from address 0, an RSDP expected at 0.
fn physical_memory(memory: &[u8]) {
    let mem = |address: u64, length: usize| -> Option<&[u8]> {
        let start = usize::try_from(address).ok()?;
        let bytes = memory.get(start..)?;
        (bytes.len() >= length).then_some(bytes)
    };
    if let Some((address, _)) = Rsdp::scan(memory, 0) {
        assert_eq!(address % 16, 0, "RSDP found off a 16-byte boundary");
    }
    match Dmar::find(&mem, 0) {
        Ok(t) => dmar_table(t.table().bytes()),
        Err(e) => drop(format!("{e}")),
    }
    if let Ok(rsdp) = Rsdp::map(&mem, 0) {
        if let Ok(root) = rsdp.root_table(&mem) {
            assert!(root.entries().count() <= memory.len() / 4);
        }
    }
    let _ = acpi::find_table(&mem, 0, acpi::Signature::IORT);
}

/// A bus walk that depends on the requester only: some functions are bridges, with assorted
/// (sometimes empty or inverted) bus ranges, so paths resolve, fail and loop; some it does
/// not know.
struct Walk;

impl PciBuses for Walk {
    fn bridge_buses(&self, segment: u16, bridge: SourceId) -> Option<BusRange> {
        let raw = bridge.get() ^ segment;
        if raw % 3 == 0 {
            return None;
        }
        let secondary = (raw >> 3) as u8 ^ 0x5a;
        Some(BusRange {
            secondary,
            subordinate: secondary.wrapping_add((raw % 5) as u8),
        })
    }

    fn bridge(&self, segment: u16, bridge: SourceId) -> BridgeAnswer {
        if (bridge.get() ^ segment) % 7 == 1 {
            return BridgeAnswer::Unknown;
        }
        match self.bridge_buses(segment, bridge) {
            Some(range) => BridgeAnswer::Bridge(range),
            None => BridgeAnswer::NotABridge,
        }
    }
}

/// Parses `bytes` as a DMAR table and, if it parses, checks that everything it answers is
/// consistent. Shared with the unit tests' truncation and mutation sweep.
pub fn dmar_table(bytes: &[u8]) {
    let t = match Dmar::parse(bytes) {
        Ok(t) => t,
        Err(e) => return drop(format!("{e}")),
    };
    let len = t.table().bytes().len();
    assert!(len <= bytes.len() && len >= 48);
    let mut last = None;
    let mut rids = Vec::new();
    for s in t.structures() {
        // Paths are checked in DRHDs and RMRRs only: an ATSR's or SATC's bad path names nothing.
        let (offset, scopes, checked) = match s {
            RemappingStructure::Drhd(d) => (d.offset, Some(d.device_scopes()), true),
            RemappingStructure::Rmrr(r) => (r.offset, Some(r.device_scopes()), true),
            RemappingStructure::Atsr(a) => (a.offset, Some(a.device_scopes()), false),
            RemappingStructure::Satc(s) => (s.offset, Some(s.device_scopes()), false),
            RemappingStructure::Rhsa(r) => (r.offset, None, false),
            RemappingStructure::Andd(a) => (a.offset, None, false),
            RemappingStructure::Other { offset, bytes, .. } => {
                assert!(bytes.len() >= 4);
                (offset, None, false)
            }
        };
        assert!(
            offset < len && last.map_or(true, |l| l < offset),
            "structures out of order"
        );
        last = Some(offset);
        for scope in scopes.into_iter().flatten() {
            assert!(!scope.path.is_empty() && scope.offset > offset && scope.offset < len);
            assert!(
                !checked
                    || scope
                        .path
                        .entries()
                        .all(|e| e.device < 32 && e.function < 8)
            );
            if let Ok(rid) = scope.requester_id(0, &Walk) {
                rids.push(rid);
            }
        }
    }
    for d in t.drhds() {
        if let Ok(defaults) = t.unit_defaults(&d) {
            assert_eq!(defaults.register_base.get() % 4096, 0);
            assert!(defaults.register_len.is_power_of_two() && defaults.register_len >= 4096);
        }
    }
    rids.extend([SourceId::new(0), SourceId::new(0x20), SourceId::new(0xffff)]);
    for segment in [0u16, 1] {
        for &rid in rids.iter().take(64) {
            check_lookups(&t, segment, rid);
        }
    }
}

/// `unit_for` and `reserved_regions` for one requester, checked against their rules.
fn check_lookups(t: &Dmar<'_>, segment: u16, rid: SourceId) {
    let listed = |d: &crate::firmware::dmar::Drhd<'_>| {
        d.device_scopes()
            .any(|s| s.covers(segment, rid, &Walk) == Ok(true))
    };
    let unresolved = |d: &crate::firmware::dmar::Drhd<'_>| {
        d.device_scopes()
            .any(|s| s.covers(segment, rid, &Walk).is_err())
    };
    match t.unit_for(segment, rid, &Walk) {
        Ok(Some(unit)) => {
            assert_eq!(unit.drhd.segment, segment);
            match unit.coverage {
                Coverage::Scope(scope) => {
                    assert!(!unit.drhd.include_pci_all());
                    assert_eq!(scope.covers(segment, rid, &Walk), Ok(true));
                }
                Coverage::IncludePciAll => {
                    assert!(unit.drhd.include_pci_all());
                    assert!(!t.drhds().any(|d| d.segment == segment
                        && !d.include_pci_all()
                        && (listed(&d) || unresolved(&d))));
                }
            }
        }
        Ok(None) => {
            assert!(!t
                .drhds()
                .any(|d| d.segment == segment
                    && (d.include_pci_all() || listed(&d) || unresolved(&d))))
        }
        // Only when no scope names it and one that might could not be followed.
        Err(e) => {
            assert!(
                matches!(e, crate::firmware::dmar::Error::ScopeUnresolved { requester, .. } if requester == rid)
            );
            assert!(!t
                .drhds()
                .any(|d| d.segment == segment && !d.include_pci_all() && listed(&d)));
            assert!(t
                .drhds()
                .any(|d| d.segment == segment && !d.include_pci_all() && unresolved(&d)));
            drop(format!("{e}"));
        }
    }
    // A VF is looked up as its PF: here `rid` is the PF of a VF on the next bus.
    let vf = SourceId::new(rid.get().wrapping_add(0x100));
    let kind = crate::firmware::dmar::FunctionKind::Virtual {
        physical_function: rid,
        physical_function_ari_extended: false,
    };
    assert_eq!(
        t.unit_for_function(segment, vf, kind, &Walk),
        t.unit_for(segment, rid, &Walk)
    );
    check_ats(t, segment, rid);
    for region in t.reserved_regions(segment, rid, &Walk) {
        match region {
            Ok(r) => {
                assert!(r.start.get() % 4096 == 0 && r.end.get() % 4096 == 0);
                assert!(r.end.get() > r.start.get());
            }
            Err(e) => drop(format!("{e}")),
        }
    }
}

/// `ats_permission` for `rid` below each kind of upstream, checked against its rules: a SATC
/// naming the function decides first (Required only with ATC_REQUIRED); without one, an
/// integrated function is allowed and one behind a conventional bridge forbidden; an error is
/// an unresolved scope naming `rid` as the requester looked up (or its root port).
fn check_ats(t: &Dmar<'_>, segment: u16, rid: SourceId) {
    let satcs = t.satcs().filter(|s| s.segment == segment).count();
    let required = t
        .satcs()
        .any(|s| s.segment == segment && s.flags.contains(SatcFlags::ATC_REQUIRED));
    let port = SourceId::new(rid.get() & 0xff00);
    for up in [
        Upstream::Integrated,
        Upstream::ConventionalBridge(port),
        Upstream::RootPort(port),
    ] {
        match t.ats_permission(segment, rid, up, &Walk) {
            Ok(AtsPermission::Required) => assert!(required),
            Ok(p) if satcs == 0 => match up {
                Upstream::Integrated => assert_eq!(p, AtsPermission::Allowed),
                Upstream::ConventionalBridge(_) => assert_eq!(p, AtsPermission::Forbidden),
                Upstream::RootPort(_) => assert_ne!(p, AtsPermission::Undeclared),
            },
            Ok(p) => assert_ne!(p, AtsPermission::Undeclared),
            Err(e) => {
                assert!(
                    matches!(e, crate::firmware::dmar::Error::ScopeUnresolved { requester, .. } if requester == rid || requester == port),
                    "{e}"
                );
                drop(format!("{e}"));
            }
        }
    }
}
