//! Tests of the RSDP, RSDT/XSDT walk and table header checks on hand-built tables.

use std::vec::Vec;

use super::*;
use crate::firmware::testutil::{rsdp_v1, rsdp_v2, sdt, PhysImage};

#[test]
fn header_decodes_every_field() {
    let t = sdt(*b"DMAR", 1, &[1, 2, 3]);
    let table = Sdt::parse(&t).unwrap();
    let h = table.header();
    assert_eq!(h.signature, Signature::DMAR);
    assert_eq!(h.length, 39);
    assert_eq!(h.revision, 1);
    assert_eq!(&h.oem_id, b"IOMMUE");
    assert_eq!(&h.oem_table_id, b"TESTTBL ");
    assert_eq!(h.oem_revision, 0x1234_5678);
    assert_eq!(&h.creator_id, b"IEST");
    assert_eq!(h.creator_revision, 0x9abc_def0);
    assert_eq!(table.body(), &[1, 2, 3]);
    assert_eq!(table.bytes().len(), 39);
}

#[test]
fn bytes_beyond_length_are_ignored() {
    let mut t = sdt(*b"DMAR", 1, &[7; 4]);
    t.extend_from_slice(&[0xff; 9]);
    let table = Sdt::parse(&t).unwrap();
    assert_eq!(table.bytes().len(), 40);
    assert_eq!(table.body(), &[7; 4]);
}

#[test]
fn bad_headers_are_refused_with_the_offending_value() {
    let t = sdt(*b"DMAR", 1, &[0; 8]);
    assert_eq!(
        Sdt::parse(&t[..35]),
        Err(Error::Truncated {
            offset: 0,
            width: 36,
            length: 35
        })
    );
    let mut short = t.clone();
    short[4..8].copy_from_slice(&35u32.to_le_bytes());
    assert_eq!(
        Sdt::parse(&short),
        Err(Error::LengthTooSmall {
            signature: Signature::DMAR,
            length: 35
        })
    );
    let mut long = t.clone();
    long[4..8].copy_from_slice(&45u32.to_le_bytes());
    assert_eq!(
        Sdt::parse(&long),
        Err(Error::LengthBeyondData {
            signature: Signature::DMAR,
            length: 45,
            available: 44
        })
    );
    let mut bad_sum = t.clone();
    bad_sum[40] = bad_sum[40].wrapping_add(3);
    assert_eq!(
        Sdt::parse(&bad_sum),
        Err(Error::Checksum {
            signature: Signature::DMAR,
            sum: 3
        })
    );
    assert_eq!(
        Sdt::parse_expecting(&t, Signature::IORT),
        Err(Error::WrongSignature {
            expected: Signature::IORT,
            found: Signature::DMAR
        })
    );
    assert!(Sdt::parse_expecting(&t, Signature::DMAR).is_ok());
}

#[test]
fn readers_report_the_read_that_ran_past_the_end() {
    let b = [1u8, 2, 3, 4, 5];
    assert_eq!(read_u8(&b, 4), Ok(5));
    assert_eq!(read_u16(&b, 3), Ok(0x0504));
    assert_eq!(read_u32(&b, 1), Ok(0x0504_0302));
    assert_eq!(
        read_u16(&b, 4),
        Err(Error::Truncated {
            offset: 4,
            width: 2,
            length: 5
        })
    );
    assert_eq!(
        read_u64(&b, 0),
        Err(Error::Truncated {
            offset: 0,
            width: 8,
            length: 5
        })
    );
    assert_eq!(
        read_u32(&b, usize::MAX),
        Err(Error::Truncated {
            offset: usize::MAX,
            width: 4,
            length: 5
        })
    );
    assert_eq!(
        read_bytes(&b, 2, usize::MAX),
        Err(Error::Truncated {
            offset: 2,
            width: usize::MAX,
            length: 5
        })
    );
}

/// An image with an RSDP at 0xe0010, a root table at 0x1000 and two tables after it.
fn image(rsdp: Vec<u8>, root: Vec<u8>) -> PhysImage {
    let mut img = PhysImage::new();
    img.place(0xe0010, &rsdp);
    img.place(0x1000, &root);
    img.place(0x2000, &sdt(*b"APIC", 3, &[0; 8]));
    img.place(0x3000, &sdt(*b"DMAR", 1, &[0x26; 12]));
    img
}

fn xsdt(entries: &[u64]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(*b"XSDT", 1, &body)
}

fn rsdt(entries: &[u32]) -> Vec<u8> {
    let body: Vec<u8> = entries.iter().flat_map(|e| e.to_le_bytes()).collect();
    sdt(*b"RSDT", 1, &body)
}

#[test]
fn rsdp_v1_leads_through_the_rsdt() {
    let img = image(rsdp_v1(0x1000), rsdt(&[0, 0x2000, 0x3000]));
    let mem = img.mem();
    let rsdp = Rsdp::map(&mem, 0xe0010).unwrap();
    assert_eq!(rsdp.revision, 0);
    assert_eq!(rsdp.xsdt_address, None);
    let root = rsdp.root_table(&mem).unwrap();
    assert_eq!(root.entries().collect::<Vec<_>>(), [0, 0x2000, 0x3000]);
    let dmar = find_table(&mem, 0xe0010, Signature::DMAR).unwrap();
    assert_eq!(dmar.body(), &[0x26; 12]);
    assert_eq!(
        find_table(&mem, 0xe0010, Signature::IORT),
        Err(Error::NotFound {
            signature: Signature::IORT
        })
    );
}

#[test]
fn rsdp_v2_prefers_the_xsdt() {
    // The RSDT lists only the APIC table: a DMAR found proves the XSDT was read.
    let mut img = image(rsdp_v2(0x4000, 0x1000), xsdt(&[0x2000, 0x3000]));
    img.place(0x4000, &rsdt(&[0x2000]));
    let mem = img.mem();
    let rsdp = Rsdp::map(&mem, 0xe0010).unwrap();
    assert_eq!(
        (rsdp.revision, rsdp.rsdt_address, rsdp.xsdt_address),
        (2, 0x4000, Some(0x1000))
    );
    assert_eq!(
        find_table(&mem, 0xe0010, Signature::DMAR).unwrap().body(),
        &[0x26; 12]
    );
    // A revision-2 RSDP whose XsdtAddress is 0 falls back to the RSDT.
    let mut img = image(rsdp_v2(0x4000, 0), xsdt(&[0x2000, 0x3000]));
    img.place(0x4000, &rsdt(&[0x2000]));
    assert_eq!(
        find_table(&img.mem(), 0xe0010, Signature::DMAR),
        Err(Error::NotFound {
            signature: Signature::DMAR
        })
    );
}

#[test]
fn bad_rsdps_are_refused() {
    let good = rsdp_v2(0x4000, 0x1000);
    let mut sig = good.clone();
    sig[0] = b'X';
    assert_eq!(
        Rsdp::parse(&sig),
        Err(Error::RsdpSignature {
            found: *b"XSD PTR "
        })
    );
    let mut sum = good.clone();
    sum[16] ^= 1;
    assert!(matches!(Rsdp::parse(&sum), Err(Error::RsdpChecksum { .. })));
    let mut ext = good.clone();
    ext[30] = 1;
    assert_eq!(
        Rsdp::parse(&ext),
        Err(Error::RsdpExtendedChecksum { sum: 1 })
    );
    assert_eq!(
        Rsdp::parse(&good[..30]),
        Err(Error::RsdpLength {
            length: 36,
            available: 30
        })
    );
    // A revision-2 RSDP mapped at an address where its tail cannot be mapped.
    let mut img = PhysImage::new();
    img.place(0xffff0, &good[..20]);
    assert_eq!(
        Rsdp::map(&img.mem(), 0xffff0),
        Err(Error::Unmapped {
            address: 0xffff0,
            length: 36
        })
    );
}

#[test]
fn scan_finds_the_rsdp_on_a_16_byte_boundary_and_skips_bad_ones() {
    let mut area = std::vec![0u8; 0x200];
    // Misaligned: not a candidate.
    area[0x38..0x38 + 20].copy_from_slice(&rsdp_v1(0x1111));
    // Aligned, bad checksum: skipped.
    let mut bad = rsdp_v1(0x2222);
    bad[19] ^= 0x80;
    area[0x80..0x80 + 20].copy_from_slice(&bad);
    area[0x100..0x100 + 36].copy_from_slice(&rsdp_v2(0x3333, 0x4444));
    let (address, rsdp) = Rsdp::scan(&area, 0xe0000).unwrap();
    assert_eq!(address, 0xe0100);
    assert_eq!(rsdp.xsdt_address, Some(0x4444));
    // A base that is not 16-byte aligned shifts the candidates.
    assert_eq!(
        Rsdp::scan(&area[8..], 0xe0008).map(|(a, _)| a),
        Some(0xe0100)
    );
    assert_eq!(Rsdp::scan(&area[..0x100], 0xe0000), None);
}

#[test]
fn unmappable_and_corrupt_tables_stop_the_walk() {
    let img = image(rsdp_v1(0x1000), rsdt(&[0x9000, 0x3000]));
    assert_eq!(
        find_table(&img.mem(), 0xe0010, Signature::DMAR),
        Err(Error::Unmapped {
            address: 0x9000,
            length: 36
        })
    );
    let mut img = image(rsdp_v1(0x1000), rsdt(&[0x2000, 0x3000]));
    img.poke(0x3000 + 40, 0x27);
    assert_eq!(
        find_table(&img.mem(), 0xe0010, Signature::DMAR),
        Err(Error::Checksum {
            signature: Signature::DMAR,
            sum: 1
        })
    );
    // A root table that is something else.
    let img = image(rsdp_v1(0x2000), rsdt(&[]));
    assert_eq!(
        find_table(&img.mem(), 0xe0010, Signature::DMAR),
        Err(Error::WrongSignature {
            expected: Signature::RSDT,
            found: Signature(*b"APIC")
        })
    );
}

#[test]
fn errors_display_their_values() {
    let e = Error::Checksum {
        signature: Signature::DMAR,
        sum: 3,
    };
    assert_eq!(std::format!("{e}"), "table DMAR: bytes sum to 0x03, not 0");
    assert_eq!(std::format!("{}", Signature(*b"A\0BC")), "A\\x00BC");
}
