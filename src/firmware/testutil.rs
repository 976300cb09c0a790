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
