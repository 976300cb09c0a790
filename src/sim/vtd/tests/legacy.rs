//! Legacy-mode translation (§3.4.2, §9.1, §9.3), the IOTLB and context-cache keeping stale
//! entries until the right invalidation, caching mode, and fault recording.

use super::*;
use crate::sim::vtd::fault::*;

/// Legacy tables for SID 00:01.0 in domain `DID`, 4-level (AW = 2):
/// - IOVA 0x1000 -> 0x1234_5000, R/W; IOVA 0x2000 -> 0x5000_0000 read-only;
/// - IOVA 0x20_0000 -> 0x4000_0000, a 2 MiB R/W page with SNP.
struct Legacy {
    arena: Arena,
    root: u64,
    ctx: u64,
    pml4: u64,
    pd: u64,
    pt: u64,
}

const SNP: u64 = 1 << 11;

fn legacy() -> Legacy {
    let arena = arena();
    let [root, ctx, pml4, pdpt, pd, pt] = [(); 6].map(|_| page(&arena));
    put(&arena, root, ctx | 1);
    put(&arena, ctx + 16 * 8, pml4 | 1);
    put(&arena, ctx + 16 * 8 + 8, 2 | u64::from(DID) << 8);
    put(&arena, pml4, pdpt | 3);
    put(&arena, pdpt, pd | 3);
    put(&arena, pd, pt | 3);
    put(&arena, pd + 8, 0x4000_0000 | 1 << 7 | SNP | 3);
    put(&arena, pt + 8, 0x1234_5000 | 3);
    put(&arena, pt + 16, 0x5000_0000 | 1);
    Legacy {
        arena,
        root,
        ctx,
        pml4,
        pd,
        pt,
    }
}

fn model(f: &Legacy, cfg: VtdModelConfig) -> VtdModel<'_> {
    let m = VtdModel::new(&f.arena, cfg);
    enable(&m, f.root);
    m
}

fn qemu() -> VtdModelConfig {
    VtdModelConfig::qemu_default()
}

fn reason(r: Result<DmaOk, DmaFault>) -> u8 {
    r.expect_err("expected a fault").reason
}

#[test]
fn translates_4k_and_2m_pages() {
    let f = legacy();
    let m = model(&f, qemu().with_sc(true));
    let t = m.translate(SID, None, 0x1abc, Access::WRITE).unwrap();
    assert_eq!(
        (t.pa, t.page_size_log2, t.did, t.snoop),
        (0x1234_5abc, 12, DID, false)
    );
    assert!(!t.from_iotlb);
    let t = m.translate(SID, None, 0x1008, Access::READ).unwrap();
    assert!(t.from_iotlb, "the second access hits the IOTLB");
    let t = m.translate(SID, None, 0x2f_0010, Access::READ).unwrap();
    assert_eq!((t.pa, t.page_size_log2, t.snoop), (0x400f_0010, 21, true));
    assert_eq!(m.stats().iotlb_misses, 2);
    assert_eq!(m.stats().iotlb_hits, 1);
}

#[test]
fn translation_disabled_passes_requests_through() {
    let f = legacy();
    let m = VtdModel::new(&f.arena, qemu());
    let t = m.translate(SID, None, 0xdead_b000, Access::READ).unwrap();
    assert_eq!(t.pa, 0xdead_b000);
}

#[test]
fn snp_without_snoop_control_is_a_reserved_bit() {
    let f = legacy();
    let m = model(&f, qemu());
    assert_eq!(
        reason(m.translate(SID, None, 0x20_0000, Access::READ)),
        PAGING_ENTRY_RESERVED
    );
}

#[test]
fn each_legacy_fault_has_its_reason_and_a_record() {
    let f = legacy();
    let m = model(&f, qemu().with_nfr(7));
    // Write to a read-only page, read of a not-present page, above the 48-bit AGAW.
    assert_eq!(
        reason(m.translate(SID, None, 0x2000, Access::WRITE)),
        WRITE_NOT_ALLOWED
    );
    assert_eq!(
        reason(m.translate(SID, None, 0x3000, Access::READ)),
        READ_NOT_ALLOWED
    );
    assert_eq!(
        reason(m.translate(SID, None, 0x3000, Access::WRITE)),
        WRITE_NOT_ALLOWED
    );
    assert_eq!(
        reason(m.translate(SID, None, 1 << 48, Access::READ)),
        ADDRESS_BEYOND_MGAW
    );
    // Root entry of bus 1 not present; context entry of 00:02.0 not present.
    assert_eq!(
        reason(m.translate(0x0100, None, 0, Access::READ)),
        ROOT_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(m.translate(0x0010, None, 0, Access::READ)),
        CONTEXT_ENTRY_NOT_PRESENT
    );
    // A request with PASID in legacy mode.
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x1000, Access::READ)),
        SM_TTM0_REQUEST_WITH_PASID
    );
    assert_eq!(m.stats().faults_recorded, 7);
    // Record 0: SID, reason 5, write (T = 0), page 0x2000, F.
    let r = m.fault_records()[0];
    assert_eq!(r.lo, 0x2000);
    assert_eq!(r.hi, 1 << 63 | 0x5 << 32 | u64::from(SID));
    // Record 1: a read: T (bit 126) set.
    assert_eq!(
        m.fault_records()[1].hi,
        1 << 63 | 1 << 62 | 0x6 << 32 | u64::from(SID)
    );
    // Through the registers: FSTS.PPF with FRI 0, the record's high qword at FRO + 8.
    assert_eq!(m.read32(R_FSTS) & 0xff02, 0x0002);
    assert_eq!(m.read64(R_FRCD + 8) >> 32 & 0xff, 0x5);
    assert_eq!(m.read32(R_FRCD + 12) >> 31, 1);
    // Clear every record (RW1C on F, a 32-bit write to the top dword).
    for i in 0..8 {
        m.write32(R_FRCD + 16 * i + 12, 1 << 31);
    }
    assert_eq!(m.read32(R_FSTS) & 2, 0, "PPF clear once every F is");
}

#[test]
fn reserved_and_invalid_context_and_root_entries() {
    let f = legacy();
    let cfg = qemu().with_nfr(3);
    // Reserved bit 7 of the context entry's upper qword.
    put(
        &f.arena,
        f.ctx + 16 * 8 + 8,
        2 | 1 << 7 | u64::from(DID) << 8,
    );
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_ENTRY_RESERVED
    );
    // AW 3 (57-bit) is not in QEMU's SAGAW.
    put(&f.arena, f.ctx + 16 * 8 + 8, 3 | u64::from(DID) << 8);
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_ENTRY_INVALID
    );
    // TT = 11 is reserved; TT = 01 needs ECAP.DT.
    put(&f.arena, f.ctx + 16 * 8 + 8, 2 | u64::from(DID) << 8);
    let lo = get(&f.arena, f.ctx + 16 * 8);
    put(&f.arena, f.ctx + 16 * 8, lo | 3 << 2);
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_ENTRY_INVALID
    );
    put(&f.arena, f.ctx + 16 * 8, lo | 1 << 2);
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_ENTRY_INVALID
    );
    assert!(model(&f, cfg.with_dt(true))
        .translate(SID, None, 0x1000, Access::READ)
        .is_ok());
    // TT = 10: pass-through (ECAP.PT is on in QEMU's defaults).
    put(&f.arena, f.ctx + 16 * 8, lo | 2 << 2);
    let t = model(&f, cfg)
        .translate(SID, None, 0x7777_7000, Access::WRITE)
        .unwrap();
    assert_eq!(t.pa, 0x7777_7000);
    assert_eq!(
        reason(model(&f, cfg.with_pt(false)).translate(SID, None, 0, Access::READ)),
        CONTEXT_ENTRY_INVALID
    );
    put(&f.arena, f.ctx + 16 * 8, lo);
    // Root entry: reserved bit 1.
    put(&f.arena, f.root, f.ctx | 3);
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        ROOT_ENTRY_RESERVED
    );
    // Root entry pointing outside memory: the context table is unreadable.
    put(&f.arena, f.root, 0x10_0000_0000 | 1);
    assert_eq!(
        reason(model(&f, cfg).translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_TABLE_ACCESS_ERROR
    );
    // A page-directory entry pointing outside memory: the walk cannot read the table.
    put(&f.arena, f.root, f.ctx | 1);
    put(&f.arena, f.pd + 16, 0x10_0000_0000 | 3);
    let m = model(&f, cfg);
    assert_eq!(
        reason(m.translate(SID, None, 0x40_0000, Access::READ)),
        PAGING_ENTRY_ACCESS_ERROR
    );
    // Translation enabled without a root table latched.
    let m = VtdModel::new(&f.arena, cfg);
    m.write32(R_GCMD, TE);
    assert_eq!(
        reason(m.translate(SID, None, 0x1000, Access::READ)),
        ROOT_TABLE_ACCESS_ERROR
    );
}

#[test]
fn fpd_suppresses_recording_but_not_the_fault() {
    let f = legacy();
    let lo = get(&f.arena, f.ctx + 16 * 8);
    put(&f.arena, f.ctx + 16 * 8, lo | 2);
    let m = model(&f, qemu());
    let e = m.translate(SID, None, 0x3000, Access::READ).unwrap_err();
    assert_eq!(
        (e.reason, e.recorded, e.suppressed_by_fpd),
        (READ_NOT_ALLOWED, false, true)
    );
    assert_eq!(m.read32(R_FSTS), 0);
    // FPD is honoured even when the context entry is not present.
    put(&f.arena, f.ctx + 16 * 8, 2);
    let m = model(&f, qemu());
    let e = m.translate(SID, None, 0x1000, Access::READ).unwrap_err();
    assert_eq!((e.reason, e.recorded), (CONTEXT_ENTRY_NOT_PRESENT, false));
}

#[test]
fn one_record_overflows_into_pfo() {
    let f = legacy();
    let m = model(&f, qemu()); // NFR 0: one record
    assert!(
        m.translate(SID, None, 0x3000, Access::READ)
            .unwrap_err()
            .recorded
    );
    assert!(
        !m.translate(SID, None, 0x4000, Access::READ)
            .unwrap_err()
            .recorded
    );
    assert_eq!(m.read32(R_FSTS) & 3, 3, "PPF and PFO");
    assert_eq!(m.fault_records()[0].lo, 0x3000, "the first fault is kept");
    m.write32(R_FRCD + 12, 1 << 31);
    m.write32(R_FSTS, 1);
    assert_eq!(m.read32(R_FSTS), 0);
    assert!(
        m.translate(SID, None, 0x5000, Access::READ)
            .unwrap_err()
            .recorded
    );
    assert_eq!(m.stats().faults_dropped, 1);
}

#[test]
fn iotlb_keeps_a_stale_page_until_a_covering_page_invalidation() {
    let f = legacy();
    let m = model(&f, qemu());
    let mut q = Queue::enable(&m, &f.arena, false);
    assert_eq!(
        m.translate(SID, None, 0x1000, Access::READ).unwrap().pa,
        0x1234_5000
    );
    put(&f.arena, f.pt + 8, 0); // unmap IOVA 0x1000
    let t = m.translate(SID, None, 0x1000, Access::READ).unwrap();
    assert!(t.from_iotlb, "stale until invalidated");
    // Too narrow: another page, the wrong domain.
    q.submit(
        &m,
        &f.arena,
        &[iotlb_page(DID, 0x3000, 0), iotlb_page(DID + 1, 0x1000, 0)],
    );
    assert!(m.translate(SID, None, 0x1000, Access::READ).is_ok());
    // AM = 1 covers 0x0000-0x1fff: the stale page goes.
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x0000, 1)]);
    assert_eq!(
        reason(m.translate(SID, None, 0x1000, Access::READ)),
        READ_NOT_ALLOWED
    );
    assert_eq!(m.stats().iotlb_page, 3);
    // A page-selective invalidation of one 4 KiB page inside a 2 MiB page removes the page.
    let m = model(&f, qemu().with_sc(true));
    let mut q = Queue::enable(&m, &f.arena, false);
    assert!(m.translate(SID, None, 0x20_0000, Access::READ).is_ok());
    put(&f.arena, f.pd + 8, 0);
    assert!(
        m.translate(SID, None, 0x2f_f000, Access::READ)
            .unwrap()
            .from_iotlb
    );
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x2f_f000, 0)]);
    assert_eq!(m.cache_sizes().iotlb, 0);
}

#[test]
fn iotlb_domain_and_global_invalidation() {
    let f = legacy();
    let m = model(&f, qemu());
    let mut q = Queue::enable(&m, &f.arena, false);
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    m.translate(SID, None, 0x2000, Access::READ).unwrap();
    put(&f.arena, f.pt + 8, 0);
    put(&f.arena, f.pt + 16, 0);
    q.submit(&m, &f.arena, &[iotlb_domain(DID + 1)]);
    assert!(
        m.translate(SID, None, 0x2000, Access::READ)
            .unwrap()
            .from_iotlb
    );
    q.submit(&m, &f.arena, &[iotlb_domain(DID)]);
    assert!(m.translate(SID, None, 0x2000, Access::READ).is_err());
    assert_eq!(m.cache_sizes().iotlb, 0);
    put(&f.arena, f.pt + 8, 0x1234_5000 | 3);
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    q.submit(&m, &f.arena, &[iotlb_global()]);
    assert_eq!(m.cache_sizes().iotlb, 0);
    assert_eq!((m.stats().iotlb_domain, m.stats().iotlb_global), (2, 1));
}

#[test]
fn context_cache_keeps_a_stale_entry_until_the_right_invalidation() {
    let f = legacy();
    let m = model(&f, qemu());
    let mut q = Queue::enable(&m, &f.arena, false);
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    // Detach: clear the context entry (P first).
    put(&f.arena, f.ctx + 16 * 8, 0);
    put(&f.arena, f.ctx + 16 * 8 + 8, 0);
    q.submit(&m, &f.arena, &[iotlb_domain(DID)]);
    assert!(
        m.translate(SID, None, 0x1000, Access::READ).is_ok(),
        "context cached"
    );
    // Device-selective with the wrong DID, then another function: still cached.
    q.submit(
        &m,
        &f.arena,
        &[cc_device(DID + 1, SID, 0), cc_device(DID, SID + 1, 0)],
    );
    assert!(m.translate(SID, None, 0x1000, Access::READ).is_ok());
    // FM = 11 masks the function number: 00:01.7 covers 00:01.0.
    q.submit(
        &m,
        &f.arena,
        &[cc_device(DID, SID | 7, 3), iotlb_domain(DID)],
    );
    assert_eq!(
        reason(m.translate(SID, None, 0x1000, Access::READ)),
        CONTEXT_ENTRY_NOT_PRESENT
    );
    assert_eq!(m.cache_sizes().context, 0);
    // Domain-selective: only the entries tagged with that DID.
    let m = model(&f, qemu());
    let mut q = Queue::enable(&m, &f.arena, false);
    put(&f.arena, f.ctx + 16 * 8, f.pml4 | 1);
    put(&f.arena, f.ctx + 16 * 8 + 8, 2 | u64::from(DID) << 8);
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    q.submit(&m, &f.arena, &[cc_domain(DID + 1)]);
    assert_eq!(m.cache_sizes().context, 1);
    q.submit(&m, &f.arena, &[cc_domain(DID)]);
    assert_eq!(m.cache_sizes().context, 0);
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    q.submit(&m, &f.arena, &[cc_global()]);
    assert_eq!(m.cache_sizes().context, 0);
    assert_eq!(m.stats().context_cache_descs, 3);
}

#[test]
fn caching_mode_caches_not_present_entries() {
    let f = legacy();
    let m = model(&f, qemu().with_caching_mode(true));
    let mut q = Queue::enable(&m, &f.arena, false);
    assert!(m.translate(SID, None, 0x3000, Access::READ).is_err());
    put(&f.arena, f.pt + 24, 0x7000_0000 | 3); // map 0x3000
    assert!(
        m.translate(SID, None, 0x3000, Access::READ).is_err(),
        "negative entry cached"
    );
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x3000, 0)]);
    assert_eq!(
        m.translate(SID, None, 0x3000, Access::READ).unwrap().pa,
        0x7000_0000
    );
    // Without CM the new mapping is seen at once.
    let m = model(&f, qemu());
    put(&f.arena, f.pt + 32, 0);
    assert!(m.translate(SID, None, 0x4000, Access::READ).is_err());
    put(&f.arena, f.pt + 32, 0x7100_0000 | 3);
    assert!(m.translate(SID, None, 0x4000, Access::READ).is_ok());
    // CM: a not-present context entry is cached under DID 0.
    let m = model(&f, qemu().with_caching_mode(true));
    let mut q = Queue::enable(&m, &f.arena, false);
    assert!(m.translate(0x0010, None, 0, Access::READ).is_err());
    put(&f.arena, f.ctx + 16 * 16, get(&f.arena, f.ctx + 16 * 8));
    put(
        &f.arena,
        f.ctx + 16 * 16 + 8,
        get(&f.arena, f.ctx + 16 * 8 + 8),
    );
    assert!(
        m.translate(0x0010, None, 0x1000, Access::READ).is_err(),
        "negative context"
    );
    q.submit(&m, &f.arena, &[cc_device(DID, 0x0010, 0)]);
    assert!(
        m.translate(0x0010, None, 0x1000, Access::READ).is_err(),
        "tagged with DID 0"
    );
    q.submit(&m, &f.arena, &[cc_device(0, 0x0010, 0)]);
    assert!(m.translate(0x0010, None, 0x1000, Access::READ).is_ok());
}

#[test]
fn register_based_invalidation() {
    let f = legacy();
    let m = model(&f, qemu());
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    put(&f.arena, f.pt + 8, 0);
    // Page-selective through IVA / IOTLB registers: IIRG 11, DID; IVT clears, IAIG = 11.
    m.write64(R_IVA, 0x1000);
    m.write64(R_IOTLB, 1 << 63 | 3 << 60 | u64::from(DID) << 32);
    let v = m.read64(R_IOTLB);
    assert_eq!((v >> 63, v >> 57 & 3), (0, 3));
    assert!(m.translate(SID, None, 0x1000, Access::READ).is_err());
    // Context-cache global through CCMD: ICC clears, CAIG = 01.
    put(&f.arena, f.ctx + 16 * 8, 0);
    assert!(m.translate(SID, None, 0x2000, Access::READ).is_ok());
    m.write64(R_CCMD, 1 << 63 | 1 << 61);
    let v = m.read64(R_CCMD);
    assert_eq!((v >> 63, v >> 59 & 3), (0, 1));
    m.write64(R_IOTLB, 1 << 63 | 1 << 60);
    assert!(m.translate(SID, None, 0x2000, Access::READ).is_err());
    let s = m.stats();
    assert_eq!(
        (
            s.register_iotlb_invalidations,
            s.register_context_invalidations
        ),
        (2, 1)
    );
    // Refused while queued invalidation is on: IAIG 00, nothing invalidated.
    Queue::enable(&m, &f.arena, false);
    m.write64(R_IOTLB, 1 << 63 | 1 << 60);
    assert_eq!(m.read64(R_IOTLB) >> 57 & 3, 0);
    assert_eq!(m.stats().register_invalidations_refused, 1);
}

#[test]
fn paging_structure_cache_survives_ih_and_catches_a_freed_table() {
    use crate::mem::{Page, PhysAddr};
    let f = legacy();
    let m = model(&f, qemu());
    let mut q = Queue::enable(&m, &f.arena, false);
    assert_eq!(
        m.translate(SID, None, 0x1000, Access::READ).unwrap().pa,
        0x1234_5000
    );
    assert_eq!(m.cache_sizes().paging_structure, 3, "PML4E, PDPE, PDE");
    // Replace the page table under the PDE and free the old one, as an unmap + remap might.
    let pt2 = page(&f.arena);
    put(&f.arena, pt2 + 8, 0x9999_9000 | 3);
    put(&f.arena, f.pd, pt2 | 3);
    let va = f.arena.phys_to_virt(PhysAddr::new(f.pt)).expect("live");
    // SAFETY: the old page table was allocated from this arena and nothing uses it any more.
    unsafe {
        f.arena.free(
            Page {
                pa: PhysAddr::new(f.pt),
                va,
            },
            12,
        )
    };
    // IH = 1 claims only leaves changed: the cached PDE still points at the freed table.
    q.submit(
        &m,
        &f.arena,
        &[[iotlb_page(DID, 0x1000, 0)[0], 0x1000 | 1 << 6]],
    );
    let e = m.translate(SID, None, 0x1000, Access::READ).unwrap_err();
    assert_eq!(e.reason, PAGING_ENTRY_ACCESS_ERROR);
    // IH = 0 drops the paging-structure entries over the page: the new table is walked.
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x1000, 0)]);
    assert_eq!(
        m.translate(SID, None, 0x1000, Access::READ).unwrap().pa,
        0x9999_9000
    );
    // A domain-selective invalidation empties it for the domain.
    q.submit(&m, &f.arena, &[iotlb_domain(DID)]);
    assert_eq!(m.cache_sizes().paging_structure, 0);
}
