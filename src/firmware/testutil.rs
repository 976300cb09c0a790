//! Builders of hand-made ACPI tables for the firmware parsers' tests.

use std::vec::Vec;

use super::acpi::checksum;

/// A table with the given signature, revision and body; `Length` and `Checksum` filled in.
pub fn sdt(signature: [u8; 4], revision: u8, body: &[u8]) -> Vec<u8> {
    let mut t = Vec::with_capacity(36 + body.len());
    t.extend_from_slice(&signature);
    t.extend_from_slice(&u32::try_from(36 + body.len()).unwrap().to_le_bytes());
    t.push(revision);
    t.push(0);
    t.extend_from_slice(b"IOMMUE");
    t.extend_from_slice(b"TESTTBL ");
    t.extend_from_slice(&0x1234_5678u32.to_le_bytes());
    t.extend_from_slice(b"IEST");
    t.extend_from_slice(&0x9abc_def0u32.to_le_bytes());
    t.extend_from_slice(body);
    t[9] = 0u8.wrapping_sub(checksum(&t));
    t
}

/// An ACPI 1.0 RSDP (20 bytes).
pub fn rsdp_v1(rsdt: u32) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(b"RSD PTR ");
    r.push(0);
    r.extend_from_slice(b"IOMMUE");
    r.push(0);
    r.extend_from_slice(&rsdt.to_le_bytes());
    r[8] = 0u8.wrapping_sub(checksum(&r));
    r
}

/// An ACPI 2.0 RSDP (36 bytes).
pub fn rsdp_v2(rsdt: u32, xsdt: u64) -> Vec<u8> {
    let mut r = rsdp_v1(rsdt);
    r[15] = 2;
    r[8] = 0;
    r[8] = 0u8.wrapping_sub(checksum(&r));
    r.extend_from_slice(&36u32.to_le_bytes());
    r.extend_from_slice(&xsdt.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r[32] = 0u8.wrapping_sub(checksum(&r));
    r
}

/// A sparse physical memory image: byte runs placed at physical addresses.
#[derive(Default)]
pub struct PhysImage {
    regions: Vec<(u64, Vec<u8>)>,
}

impl PhysImage {
    /// An empty image.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `bytes` at `address`.
    pub fn place(&mut self, address: u64, bytes: &[u8]) {
        self.regions.push((address, bytes.to_vec()));
    }

    /// Overwrites the byte at `address` (inside a placed run).
    pub fn poke(&mut self, address: u64, value: u8) {
        for (base, bytes) in &mut self.regions {
            if let Some(b) = address
                .checked_sub(*base)
                .and_then(|o| bytes.get_mut(o as usize))
            {
                *b = value;
                return;
            }
        }
        panic!("poke outside the image at {address:#x}");
    }

    /// The image as the embedder's mapping callback: a run containing the whole range, from
    /// `address` to the end of the run.
    pub fn mem<'a>(&'a self) -> impl Fn(u64, usize) -> Option<&'a [u8]> + 'a {
        move |address, length| {
            self.regions.iter().find_map(|(base, bytes)| {
                let offset = usize::try_from(address.checked_sub(*base)?).ok()?;
                let rest = bytes.get(offset..)?;
                (rest.len() >= length).then_some(rest)
            })
        }
    }
}

/// A device scope (VT-d §8.3.1): type, flags, enumeration ID, start bus, path.
pub fn scope(
    scope_type: u8,
    flags: u8,
    enumeration_id: u8,
    start_bus: u8,
    path: &[(u8, u8)],
) -> Vec<u8> {
    let mut s = std::vec![
        scope_type,
        u8::try_from(6 + 2 * path.len()).unwrap(),
        flags,
        0,
        enumeration_id,
        start_bus
    ];
    for &(device, function) in path {
        s.extend_from_slice(&[device, function]);
    }
    s
}

/// A remapping structure (VT-d §8.2): `Type`, `Length`, then `body`.
pub fn remapping(structure_type: u16, body: &[u8]) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&structure_type.to_le_bytes());
    s.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_le_bytes());
    s.extend_from_slice(body);
    s
}

/// A DRHD (VT-d §8.3).
pub fn drhd(flags: u8, size: u8, segment: u16, base: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut b = std::vec![flags, size];
    b.extend_from_slice(&segment.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    scopes.iter().for_each(|s| b.extend_from_slice(s));
    remapping(0, &b)
}

/// An RMRR (VT-d §8.4).
pub fn rmrr(segment: u16, base: u64, limit: u64, scopes: &[Vec<u8>]) -> Vec<u8> {
    let mut b = std::vec![0, 0];
    b.extend_from_slice(&segment.to_le_bytes());
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&limit.to_le_bytes());
    scopes.iter().for_each(|s| b.extend_from_slice(s));
    remapping(1, &b)
}

/// An ATSR (type 2, VT-d §8.5) or a SATC (type 5, §8.8): flags, segment, scopes.
pub fn flags_segment_scopes(
    structure_type: u16,
    flags: u8,
    segment: u16,
    scopes: &[Vec<u8>],
) -> Vec<u8> {
    let mut b = std::vec![flags, 0];
    b.extend_from_slice(&segment.to_le_bytes());
    scopes.iter().for_each(|s| b.extend_from_slice(s));
    remapping(structure_type, &b)
}

/// An RHSA (VT-d §8.6).
pub fn rhsa(base: u64, proximity_domain: u32) -> Vec<u8> {
    let mut b = std::vec![0; 4];
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&proximity_domain.to_le_bytes());
    remapping(3, &b)
}

/// An ANDD (VT-d §8.7); `name` gets its NUL.
pub fn andd(device_number: u8, name: &[u8]) -> Vec<u8> {
    let mut b = std::vec![0, 0, 0, device_number];
    b.extend_from_slice(name);
    b.push(0);
    remapping(4, &b)
}

/// A DMAR table (VT-d §8.1) with checksum.
pub fn dmar(host_address_width_field: u8, flags: u8, structures: &[Vec<u8>]) -> Vec<u8> {
    let mut body = std::vec![host_address_width_field, flags];
    body.extend_from_slice(&[0; 10]);
    structures.iter().for_each(|s| body.extend_from_slice(s));
    sdt(*b"DMAR", 1, &body)
}

/// Recomputes the checksum of the table in `t` (after an edit).
pub fn fix_checksum(t: &mut [u8]) {
    t[9] = 0;
    t[9] = 0u8.wrapping_sub(checksum(t));
}
