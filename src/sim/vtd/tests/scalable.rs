//! Scalable-mode translation (§3.4.3, §9.2, §9.4-§9.6), PASID-cache and PASID-based IOTLB
//! invalidation, nested translation.

use super::*;
use crate::sim::vtd::fault::*;

const SNP: u64 = 1 << 11;
/// First-stage entry bits: P, R/W, U/S, PS.
const P: u64 = 1;
const RW: u64 = 2;
const US: u64 = 4;
const PS: u64 = 1 << 7;
/// The first-stage domain and the pass-through one.
const FS_DID: u16 = 6;
const PT_DID: u16 = 9;
/// PGTT values (PASID entry bits 8:6).
const PGTT_FS: u64 = 1 << 6;
const PGTT_SS: u64 = 2 << 6;
const PGTT_NESTED: u64 = 3 << 6;
const PGTT_PT: u64 = 4 << 6;

/// Scalable tables for SID 00:01.0: PASIDE, PDTS 0 (128 directory entries), RID_PASID 0.
/// - PASID 0: second stage, 4-level, DID `DID`: 0x1000 -> 0x1234_5000 R/W, 0x2000 -> 0x5000_0000
///   read-only, 0x20_0000 -> 0x4000_0000 (2 MiB, SNP).
/// - PASID 1: first stage, 4-level, DID `FS_DID`, PGSNP: 0x1000 -> 0x3456_7000 user R/W,
///   0x2000 -> 0x3457_0000 supervisor-only.
/// - PASID 2: pass-through, DID `PT_DID`.
/// - PASID 4: nested, first stage of PASID 1 over a second stage that maps the arena 1:1 with
///   2 MiB pages and GPA 0x3440_0000 (2 MiB) to 0x1_0000_0000.
struct Scalable {
    arena: Arena,
    root: u64,
    ctx: u64,
    dir: u64,
    table: u64,
    pt: u64,
    fs_pd: u64,
    fs_pt: u64,
}

fn pasid_entry(arena: &Arena, table: u64, pasid: u64, q: [u64; 3]) {
    for (i, v) in q.iter().enumerate() {
        put(arena, table + pasid * 64 + 8 * i as u64, *v);
    }
}

fn scalable() -> Scalable {
    let a = arena();
    let [root, ctx, dir, table] = [(); 4].map(|_| page(&a));
    let [pml4, pdpt, pd, pt] = [(); 4].map(|_| page(&a));
    let [fs_pml4, fs_pdpt, fs_pd, fs_pt] = [(); 4].map(|_| page(&a));
    let [n_pml4, n_pdpt, n_pd0, n_pd2] = [(); 4].map(|_| page(&a));
    put(&a, root, ctx | 1);
    put(&a, ctx + 8 * 32, dir | 1 << 3 | 1);
    put(&a, dir, table | 1);
    // Second stage.
    put(&a, pml4, pdpt | 3);
    put(&a, pdpt, pd | 3);
    put(&a, pd, pt | 3);
    put(&a, pd + 8, 0x4000_0000 | PS | SNP | 3);
    put(&a, pt + 8, 0x1234_5000 | 3);
    put(&a, pt + 16, 0x5000_0000 | 1);
    // First stage.
    put(&a, fs_pml4, fs_pdpt | P | RW | US);
    put(&a, fs_pdpt, fs_pd | P | RW | US);
    put(&a, fs_pd, fs_pt | P | RW | US);
    put(&a, fs_pt + 8, 0x3456_7000 | P | RW | US);
    put(&a, fs_pt + 16, 0x3457_0000 | P | RW);
    // Nesting second stage: the arena (2 GiB + 16 MiB) 1:1, and GPA 0x3440_0000.
    put(&a, n_pml4, n_pdpt | 3);
    put(&a, n_pdpt, n_pd0 | 3);
    put(&a, n_pdpt + 2 * 8, n_pd2 | 3);
    for i in 0..8 {
        put(&a, n_pd2 + 8 * i, (0x8000_0000 + (i << 21)) | PS | 3);
    }
    put(&a, n_pd0 + 0x1a2 * 8, 0x1_0000_0000 | PS | 3);
    pasid_entry(
        &a,
        table,
        0,
        [pml4 | PGTT_SS | 2 << 2 | 1, u64::from(DID), 0],
    );
    let fs_q1 = u64::from(FS_DID) | 1 << 24;
    pasid_entry(&a, table, 1, [PGTT_FS | 1, fs_q1, fs_pml4]);
    pasid_entry(&a, table, 2, [PGTT_PT | 1, u64::from(PT_DID), 0]);
    pasid_entry(
        &a,
        table,
        4,
        [n_pml4 | PGTT_NESTED | 2 << 2 | 1, fs_q1, fs_pml4],
    );
    Scalable {
        arena: a,
        root,
        ctx,
        dir,
        table,
        pt,
        fs_pd,
        fs_pt,
    }
}

fn model(f: &Scalable) -> VtdModel<'_> {
    let m = VtdModel::new(&f.arena, VtdModelConfig::scalable().with_nfr(15));
    enable(&m, f.root | 1 << 10);
    m
}

fn reason(r: Result<DmaOk, DmaFault>) -> u8 {
    r.expect_err("expected a fault").reason
}

#[test]
fn second_stage_through_rid_pasid_and_pass_through() {
    let f = scalable();
    let m = model(&f);
    let t = m.translate(SID, None, 0x1abc, Access::WRITE).unwrap();
    assert_eq!((t.pa, t.did, t.snoop), (0x1234_5abc, DID, false));
    let t = m.translate(SID, Some(0), 0x20_0008, Access::READ).unwrap();
    assert_eq!((t.pa, t.page_size_log2, t.snoop), (0x4000_0008, 21, true));
    let t = m
        .translate(SID, Some(2), 0x7_7777_7000, Access::WRITE)
        .unwrap();
    assert_eq!((t.pa, t.did), (0x7_7777_7000, PT_DID));
}

#[test]
fn first_stage_rights_privilege_and_pgsnp() {
    let f = scalable();
    let m = model(&f);
    let t = m.translate(SID, Some(1), 0x1010, Access::WRITE).unwrap();
    assert_eq!((t.pa, t.did, t.snoop), (0x3456_7010, FS_DID, true));
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x2000, Access::READ)),
        SM_FS_USER_SUPERVISOR
    );
    let sup = Access::READ.privileged();
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x2000, sup)),
        SM_PASID_ENTRY_SRE_CLEAR
    );
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x3000, Access::READ)),
        SM_FS_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(m.translate(SID, Some(1), 1 << 47, Access::READ)),
        SM_FS_NON_CANONICAL
    );
    // SRE set (bit 128): the supervisor page is reachable.
    let q2 = get(&f.arena, f.table + 64 + 16);
    put(&f.arena, f.table + 64 + 16, q2 | 1);
    let m = model(&f);
    assert_eq!(
        m.translate(SID, Some(1), 0x2000, sup).unwrap().pa,
        0x3457_0000
    );
}

#[test]
fn nested_translation_composes_both_stages() {
    let f = scalable();
    let m = model(&f);
    let t = m.translate(SID, Some(4), 0x1008, Access::READ).unwrap();
    assert_eq!((t.pa, t.page_size_log2), (0x1_0016_7008, 12));
    // The output of PASID 1's second page (0x3457_0000) is mapped too; a user read faults.
    assert_eq!(
        reason(m.translate(SID, Some(4), 0x2000, Access::READ)),
        SM_FS_USER_SUPERVISOR
    );
}

#[test]
fn scalable_fault_reasons() {
    let f = scalable();
    let m = model(&f);
    let r = |pasid, iova, acc| reason(m.translate(SID, pasid, iova, acc));
    assert_eq!(r(Some(3), 0, Access::READ), SM_PASID_ENTRY_NOT_PRESENT);
    assert_eq!(r(Some(64), 0, Access::READ), SM_PASID_DIR_NOT_PRESENT);
    assert_eq!(r(Some(1 << 13), 0, Access::READ), SM_PASID_TOO_LARGE);
    assert_eq!(r(None, 0x3000, Access::READ), SM_SS_ENTRY_NOT_PRESENT);
    assert_eq!(r(None, 0x2000, Access::WRITE), SM_WRITE_NOT_ALLOWED);
    assert_eq!(r(None, 1 << 48, Access::READ), SM_ADDRESS_BEYOND_AW);
    assert_eq!(
        reason(m.translate(0x0010, None, 0, Access::READ)),
        SM_CONTEXT_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(m.translate(0x0088, None, 0, Access::READ)),
        SM_ROOT_ENTRY_NOT_PRESENT
    );
    assert_eq!(
        reason(m.translate(0x0100, None, 0, Access::READ)),
        SM_ROOT_ENTRY_NOT_PRESENT
    );
    // Entries programmed wrongly: a fresh model each time, so no cache hides the change.
    let check = |pa: u64, value: u64, pasid: Option<u32>, want: u8| {
        let old = get(&f.arena, pa);
        put(&f.arena, pa, value);
        let got = reason(model(&f).translate(SID, pasid, 0x1000, Access::READ));
        put(&f.arena, pa, old);
        assert_eq!(got, want, "entry at {pa:#x} = {value:#x}");
    };
    let ctx_q0 = get(&f.arena, f.ctx + 8 * 32);
    check(
        f.ctx + 8 * 32,
        ctx_q0 & !(1 << 3),
        Some(1),
        SM_CONTEXT_PASIDE_CLEAR,
    );
    check(f.ctx + 8 * 32 + 8, 1 << 21, None, SM_CONTEXT_ENTRY_RESERVED);
    check(f.root, f.ctx | 1 << 5 | 1, None, SM_ROOT_ENTRY_RESERVED);
    check(f.dir, f.table | 1 << 2 | 1, None, SM_PASID_DIR_RESERVED);
    let pe_q0 = get(&f.arena, f.table);
    check(
        f.table,
        pe_q0 & !(7 << 6) | 5 << 6,
        None,
        SM_PASID_ENTRY_INVALID,
    );
    check(
        f.table,
        pe_q0 & !(7 << 2) | 3 << 2,
        None,
        SM_PASID_ENTRY_INVALID,
    );
    check(
        f.table + 8,
        u64::from(DID) | 1 << 16,
        None,
        SM_PASID_ENTRY_RESERVED,
    );
    check(
        f.pt + 8,
        0x1234_5000 | 1 << 62 | 3,
        None,
        SM_SS_ENTRY_RESERVED,
    );
    check(
        f.fs_pt + 8,
        0x3456_7000 | 1 << 50 | P | US,
        Some(1),
        SM_FS_ENTRY_RESERVED,
    );
    // FPD in the PASID entry: not recorded.
    let before = m.stats().faults_recorded;
    put(&f.arena, f.table + 3 * 64, 2);
    let e = model(&f)
        .translate(SID, Some(3), 0, Access::READ)
        .unwrap_err();
    assert_eq!((e.reason, e.recorded), (SM_PASID_ENTRY_NOT_PRESENT, false));
    assert_eq!(m.stats().faults_recorded, before);
    // The fault record carries the PASID: PP (bit 95) and PV (bits 123:104).
    let rec = m.fault_records()[0];
    assert_eq!(
        rec.hi,
        1 << 63 | 1 << 62 | 3 << 40 | 1 << 31 | 0x59 << 32 | u64::from(SID)
    );
}

#[test]
fn pasid_based_iotlb_invalidation_covers_first_stage_entries() {
    let f = scalable();
    let m = model(&f);
    let mut q = Queue::enable(&m, &f.arena, true);
    m.translate(SID, Some(1), 0x1000, Access::READ).unwrap();
    put(&f.arena, f.fs_pt + 8, 0);
    // The IOTLB descriptor (type 2) does not cover first-stage entries; nor does another PASID.
    q.submit(
        &m,
        &f.arena,
        &[iotlb_domain(FS_DID), piotlb_pasid(FS_DID, 2)],
    );
    assert!(
        m.translate(SID, Some(1), 0x1000, Access::READ)
            .unwrap()
            .from_iotlb
    );
    // Page-selective within PASID 1, AM 0, another page: still there; the right page: gone.
    q.submit(&m, &f.arena, &[piotlb_page(FS_DID, 1, 0x2000, 0)]);
    assert!(m.translate(SID, Some(1), 0x1000, Access::READ).is_ok());
    q.submit(&m, &f.arena, &[piotlb_page(FS_DID, 1, 0x1000, 0)]);
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x1000, Access::READ)),
        SM_FS_ENTRY_NOT_PRESENT
    );
    // Second-stage entries of PASID 0 go with the type-2 descriptor.
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    put(&f.arena, f.pt + 8, 0);
    q.submit(&m, &f.arena, &[piotlb_pasid(DID, 0)]);
    assert!(
        m.translate(SID, None, 0x1000, Access::READ).is_ok(),
        "type 6 spares SS"
    );
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x1000, 0)]);
    assert!(m.translate(SID, None, 0x1000, Access::READ).is_err());
}

#[test]
fn pasid_cache_keeps_an_entry_until_invalidated() {
    let f = scalable();
    let m = model(&f);
    let mut q = Queue::enable(&m, &f.arena, true);
    m.translate(SID, Some(1), 0x1000, Access::READ).unwrap();
    // Tear down PASID 1: clear P, then PASID-cache, IOTLB invalidation.
    put(&f.arena, f.table + 64, 0);
    q.submit(&m, &f.arena, &[piotlb_pasid(FS_DID, 1)]);
    assert!(
        m.translate(SID, Some(1), 0x1000, Access::READ).is_ok(),
        "PASID entry cached"
    );
    q.submit(&m, &f.arena, &[pc_pasid(DID, 1), pc_pasid(FS_DID, 2)]);
    assert!(
        m.translate(SID, Some(1), 0x1000, Access::READ).is_ok(),
        "wrong DID / PASID"
    );
    q.submit(
        &m,
        &f.arena,
        &[pc_pasid(FS_DID, 1), piotlb_pasid(FS_DID, 1)],
    );
    assert_eq!(
        reason(m.translate(SID, Some(1), 0x1000, Access::READ)),
        SM_PASID_ENTRY_NOT_PRESENT
    );
    // Domain-selective form.
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    assert_eq!(m.cache_sizes().pasid, 1);
    q.submit(&m, &f.arena, &[pc_domain(DID)]);
    assert_eq!(m.cache_sizes().pasid, 0);
    // In scalable mode the context-cache descriptor's DID is ignored.
    assert_eq!(m.cache_sizes().context, 1);
    q.submit(&m, &f.arena, &[cc_device(123, SID, 0)]);
    assert_eq!(m.cache_sizes().context, 0);
}

#[test]
fn first_stage_paging_structure_cache_and_ih() {
    let f = scalable();
    let m = model(&f);
    let mut q = Queue::enable(&m, &f.arena, true);
    assert_eq!(
        m.translate(SID, Some(1), 0x1000, Access::READ).unwrap().pa,
        0x3456_7000
    );
    let pt2 = page(&f.arena);
    put(&f.arena, pt2 + 8, 0x7777_7000 | P | RW | US);
    put(&f.arena, f.fs_pd, pt2 | P | RW | US);
    let [lo, hi] = piotlb_page(FS_DID, 1, 0x1000, 0);
    q.submit(&m, &f.arena, &[[lo, hi | 1 << 6]]);
    let t = m.translate(SID, Some(1), 0x1000, Access::READ).unwrap();
    assert_eq!(
        (t.pa, t.from_iotlb),
        (0x3456_7000, false),
        "walked through the cached PDE"
    );
    q.submit(&m, &f.arena, &[[lo, hi]]);
    assert_eq!(
        m.translate(SID, Some(1), 0x1000, Access::READ).unwrap().pa,
        0x7777_7000
    );
}

/// §3.7.2: with SSADE a second-stage walk sets A (8) in every entry it uses and the first write
/// sets D (9) in the leaf; the IOTLB remembers the leaf is dirty, so after software clears D
/// only an invalidation lets the next write set it again. Without SSADE nothing is written.
/// §3.6.2: a first-stage walk always sets A (5) and, on a write, D (6). A probe walk
/// (`translate_in_memory`) writes nothing.
#[test]
fn walks_set_accessed_and_dirty_flags() {
    const SS_A: u64 = 1 << 8;
    const SS_D: u64 = 1 << 9;
    let f = scalable();
    let m = model(&f);
    let leaf = f.pt + 8;
    m.translate(SID, None, 0x1000, Access::WRITE).unwrap();
    assert_eq!(get(&f.arena, leaf), 0x1234_5000 | 3, "no SSADE: no flags");

    let q0 = get(&f.arena, f.table);
    put(&f.arena, f.table, q0 | 1 << 9);
    let m = model(&f);
    let mut q = Queue::enable(&m, &f.arena, true);
    assert_eq!(
        m.translate_in_memory(SID, None, 0x1000, Access::WRITE),
        Some(0x1234_5000)
    );
    assert_eq!(
        get(&f.arena, leaf) & (SS_A | SS_D),
        0,
        "a probe writes nothing"
    );
    m.translate(SID, None, 0x1000, Access::READ).unwrap();
    assert_eq!(get(&f.arena, leaf) & (SS_A | SS_D), SS_A);
    m.translate(SID, None, 0x1000, Access::WRITE).unwrap();
    assert_eq!(get(&f.arena, leaf) & (SS_A | SS_D), SS_A | SS_D);
    // Software clears D without invalidating: the cached entry is dirty, the write sets nothing.
    put(&f.arena, leaf, get(&f.arena, leaf) & !SS_D);
    assert!(
        m.translate(SID, None, 0x1000, Access::WRITE)
            .unwrap()
            .from_iotlb
    );
    assert_eq!(get(&f.arena, leaf) & SS_D, 0);
    // After the invalidation the next write walks again and sets D.
    q.submit(&m, &f.arena, &[iotlb_page(DID, 0x1000, 0)]);
    m.translate(SID, None, 0x1000, Access::WRITE).unwrap();
    assert_eq!(get(&f.arena, leaf) & SS_D, SS_D);
    // A read-only page: a read sets A; the refused write sets no D.
    let ro = f.pt + 16;
    assert!(m.translate(SID, None, 0x2000, Access::WRITE).is_err());
    m.translate(SID, None, 0x2000, Access::READ).unwrap();
    assert_eq!(get(&f.arena, ro) & (SS_A | SS_D), SS_A);

    // First stage: A in the directory entry and the leaf on a read, D on the first write.
    const FS_A: u64 = 1 << 5;
    const FS_D: u64 = 1 << 6;
    let fs_leaf = f.fs_pt + 8;
    m.translate(SID, Some(1), 0x1000, Access::READ).unwrap();
    assert_eq!(get(&f.arena, fs_leaf) & (FS_A | FS_D), FS_A);
    assert_eq!(get(&f.arena, f.fs_pd) & FS_A, FS_A);
    m.translate(SID, Some(1), 0x1000, Access::WRITE).unwrap();
    assert_eq!(get(&f.arena, fs_leaf) & (FS_A | FS_D), FS_A | FS_D);
}
