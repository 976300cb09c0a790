//! The invalidation queue (§6.5.2): malformed descriptors, recovery, wait status writes,
//! wrap-around and injected faults.

use super::*;

#[test]
fn wait_descriptor_writes_status_and_sets_iwc() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let mut q = Queue::enable(&m, &a, false);
    let status = page(&a);
    // IF (bit 4) and SW, status data 0xabcd at the upper 4 bytes of the word.
    q.submit(
        &m,
        &a,
        &[[wait(status + 4, 0xabcd)[0] | 1 << 4, status + 4]],
    );
    assert_eq!(get(&a, status), 0xabcd << 32);
    assert_eq!(m.read32(R_ICS), 1);
    m.write32(R_ICS, 1);
    assert_eq!(m.read32(R_ICS), 0);
    assert_eq!(m.read64(R_IQH), 16);
    assert_eq!(m.stats().wait, 1);
    assert_eq!(
        m.descriptor_log(),
        std::vec![[0x5 | 1 << 4 | 1 << 5 | 0xabcd << 32, status + 4, 0, 0]]
    );
}

#[test]
fn malformed_descriptor_stops_the_queue_until_software_fixes_it() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let mut q = Queue::enable(&m, &a, false);
    let status = page(&a);
    // An IOTLB descriptor with reserved bit 8 set, then a wait.
    let bad = [iotlb_global()[0] | 1 << 8, 0];
    q.submit(&m, &a, &[iotlb_global(), bad, wait(status, 1)]);
    assert_eq!(m.read32(R_FSTS) & 1 << 4, 1 << 4, "IQE");
    assert_eq!(m.read64(R_IQH), 16, "the head stays on the bad descriptor");
    assert_eq!(m.read64(R_IQERCD) & 0xf, Iqei::ReservedBit as u64);
    assert_eq!(get(&a, status), 0, "nothing after it ran");
    // Recovery as a driver does it: replace the bad descriptor, clear IQE.
    q.write_at(&a, 16, iotlb_domain(DID));
    m.write32(R_FSTS, 1 << 4);
    assert_eq!(m.read32(R_FSTS), 0);
    assert_eq!(get(&a, status), 1, "the queue ran to the tail");
    assert_eq!(m.read64(R_IQH), 48);
    let types: std::vec::Vec<u64> = m.descriptor_log().iter().map(|d| d[0] & 0xf).collect();
    assert_eq!(types, [2, 2, 5]);
}

#[test]
fn unknown_and_unsupported_types_and_bad_tails_raise_iqe() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let mut q = Queue::enable(&m, &a, false);
    let recover = |q: &mut Queue, off: u64| {
        q.write_at(&a, off, iotlb_global());
        m.write32(R_FSTS, 1 << 4);
        assert_eq!(m.read32(R_FSTS), 0);
    };
    // Type 0x9 does not exist; type 0x3 (device-TLB) needs ECAP.DT; PASID-cache (0x7) needs
    // scalable mode and 256-bit descriptors; granularity 00 of an IOTLB descriptor is reserved.
    for (i, d) in [[0x9u64, 0], [0x3, 0], pc_domain(1), [0x2, 0]]
        .iter()
        .enumerate()
    {
        q.submit(&m, &a, &[*d]);
        assert_ne!(m.read32(R_FSTS) & 1 << 4, 0, "descriptor {i}");
        assert_eq!(m.read64(R_IQH), 16 * i as u64);
        recover(&mut q, 16 * i as u64);
    }
    assert_eq!(m.stats().iqe, 4);
    // IQT beyond a one-page queue.
    m.write64(R_IQT, 0x1000);
    assert_eq!(m.read64(R_IQERCD) & 0xf, Iqei::TailBeyondQueue as u64);
    // A 256-bit queue: IQT with bit 4 set is misaligned.
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let _q = Queue::enable(&m, &a, true);
    m.write64(R_IQT, 16);
    assert_eq!(m.read64(R_IQERCD) & 0xf, Iqei::TailMisaligned as u64);
    // A scalable unit with a 128-bit queue: PASID-based descriptors need the 256-bit form.
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let mut q = Queue::enable(&m, &a, false);
    q.submit(&m, &a, &[piotlb_pasid(1, 1)]);
    assert_eq!(m.read64(R_IQERCD) & 0xf, Iqei::InvalidType as u64);
    assert_eq!(m.read64(R_IQH), 0);
}

#[test]
fn queue_wraps_around_over_thousands_of_submissions() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default());
    let mut q = Queue::enable(&m, &a, false);
    let status = page(&a);
    for i in 1..=3000u32 {
        q.submit(&m, &a, &[iotlb_domain(DID), wait(status, i)]);
        assert_eq!(get(&a, status), u64::from(i));
        assert_eq!(m.read64(R_IQH), q.tail);
    }
    let s = m.stats();
    assert_eq!((s.iotlb_domain, s.wait, s.iqe), (3000, 3000, 0));
}

#[test]
fn wide_queue_executes_256_bit_descriptors() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::scalable());
    let mut q = Queue::enable(&m, &a, true);
    let status = page(&a);
    q.submit(
        &m,
        &a,
        &[
            pc_pasid(3, 7),
            piotlb_pasid(3, 7),
            piotlb_page(3, 7, 0x4000, 2),
            wait(status, 9),
        ],
    );
    assert_eq!(get(&a, status), 9);
    assert_eq!(m.read64(R_IQH), 128);
    let s = m.stats();
    assert_eq!(
        (s.pasid_cache, s.piotlb_pasid, s.piotlb_page, s.wait),
        (1, 1, 1, 1)
    );
    // A reserved bit in the upper half of a 256-bit descriptor.
    q.write_at(&a, 128, iotlb_global());
    put(&a, q.base + 128 + 24, 1);
    m.write32(R_IQT, 160);
    assert_ne!(m.read32(R_FSTS) & 1 << 4, 0);
}

#[test]
fn injected_queue_error_timeout_completion_error_and_stall() {
    let a = arena();
    let m = VtdModel::new(&a, VtdModelConfig::qemu_default().with_dt(true));
    let mut q = Queue::enable(&m, &a, false);
    let status = page(&a);
    // IQE on a good descriptor.
    m.inject(Injection::QueueError);
    q.submit(&m, &a, &[iotlb_global()]);
    assert_ne!(m.read32(R_FSTS) & 1 << 4, 0);
    m.write32(R_FSTS, 1 << 4);
    assert_eq!(
        m.read64(R_IQH),
        16,
        "the same descriptor succeeds once IQE is cleared"
    );
    // ITE: device-TLB (type 3, SID 0x0008), then a wait that is aborted.
    let devtlb = [0x3 | u64::from(SID) << 32, 0x1000];
    m.inject(Injection::DeviceTlbTimeout);
    q.submit(&m, &a, &[devtlb, wait(status, 1), wait(status, 2)]);
    assert_ne!(m.read32(R_FSTS) & 1 << 6, 0, "ITE");
    assert_eq!(m.read64(R_IQERCD) >> 32 & 0xffff, u64::from(SID));
    assert_eq!(get(&a, status), 0, "the wait after the time-out is aborted");
    assert_eq!(
        m.read64(R_IQH),
        48,
        "head past the device-TLB and the aborted wait"
    );
    m.write32(R_FSTS, 1 << 6);
    assert_eq!(get(&a, status), 2, "the queue resumes after ITE is cleared");
    // ICE: recorded, processing goes on.
    m.inject(Injection::CompletionError);
    q.submit(&m, &a, &[devtlb, wait(status, 3)]);
    assert_ne!(m.read32(R_FSTS) & 1 << 5, 0, "ICE");
    assert_eq!(get(&a, status), 3);
    // Stalled waits: the head stays on the wait until the injection is cleared.
    m.inject(Injection::StallWaits);
    q.submit(&m, &a, &[wait(status, 4)]);
    assert_eq!(get(&a, status), 3);
    assert_eq!(m.read64(R_IQH), q.tail - 16);
    m.clear_injections();
    assert_eq!(get(&a, status), 4);
    let s = m.stats();
    assert_eq!(
        (s.iqe, s.ite, s.ice, s.device_tlb, s.aborted_descriptors),
        (1, 1, 1, 2, 1)
    );
}
