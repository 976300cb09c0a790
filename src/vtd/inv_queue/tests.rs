//! Invalidation queue against the register-file model of `test_support`.

extern crate std;

use super::*;
use crate::mem::Iova;
use crate::vtd::inv_desc::{ContextCacheScope, IotlbScope};
use crate::vtd::test_support::{Model, TestAlloc};
use crate::vtd::{DomainId, SourceId};
use std::vec::Vec;

fn config(qs: u8, width: DescriptorWidth) -> QueueConfig {
    QueueConfig {
        qs,
        width,
        poll_budget: 10_000,
        haw: 52,
    }
}

fn iotlb_page(i: u64) -> Descriptor {
    let scope = IotlbScope::Page {
        did: DomainId::new(1),
        addr: Iova::new((i % 4096) << 12),
        am: 0,
        ih: false,
    };
    Descriptor::iotlb(scope, false, false).unwrap()
}

fn poison() -> Descriptor {
    // Type 0xF does not exist: the model raises IQE on it.
    Descriptor::from_words([0xF, 0, 0, 0])
}

#[test]
fn enable_programs_iqa_and_turns_qi_on() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let q = InvalidationQueue::enable(&m, &a, config(1, DescriptorWidth::Bits256)).unwrap();
    // 2 pages of 256-bit descriptors: 2^(1+8-1) = 256 entries.
    assert_eq!(q.entries(), 256);
    let iqa = m.read64(regs::IQA_REG);
    assert_eq!(iqa & 0xfff, IQA_DW | 1);
    assert_eq!(iqa & !0xfff, q.core.ring.pa.get());
    assert!(regs::gsts(&m).contains(Gsts::QIES));
    assert_eq!(a.live_pages(), 2);
}

#[test]
fn thousands_of_batches_wrap_around() {
    for width in [DescriptorWidth::Bits128, DescriptorWidth::Bits256] {
        let (m, a) = (Model::new(), TestAlloc::default());
        m.set_rate(3);
        let mut q = InvalidationQueue::enable(&m, &a, config(0, width)).unwrap();
        let mut expected = 0u64;
        for i in 0..5000u64 {
            let batch: Vec<_> = (0..(i % 7)).map(|j| iotlb_page(i + j)).collect();
            q.submit_and_wait(&batch).unwrap();
            expected += batch.len() as u64 + 1;
        }
        assert_eq!(m.consumed(), expected);
        assert_eq!(q.tail() as u64, expected % q.entries() as u64);
        assert!(expected > 10 * q.entries() as u64, "wrapped many times");
    }
}

#[test]
fn submit_without_wait_then_one_wait() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    for i in 0..1000 {
        q.submit(&[iotlb_page(i), iotlb_page(i + 1)]).unwrap();
    }
    q.wait().unwrap();
    assert_eq!(m.consumed(), 2001);
}

#[test]
fn never_overwrites_unconsumed_descriptors() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    q.core.config.poll_budget = 50;
    m.stall(true);
    // 255 usable slots: fill 254 with page invalidations (127 batches of 2) and one more.
    for i in 0..127 {
        q.submit(&[iotlb_page(2 * i), iotlb_page(2 * i + 1)])
            .unwrap();
    }
    q.submit(&[iotlb_page(9999)]).unwrap();
    // SAFETY: the ring holds 256 16-byte slots, read while the model is stalled.
    let snapshot: Vec<u64> = (0..512)
        .map(|i| unsafe { q.core.ring.va.cast::<u64>().as_ptr().add(i).read() })
        .collect();
    assert_eq!(
        q.submit(&[iotlb_page(1)]),
        Err(Error::Timeout {
            what: Wait::QueueSpace { needed: 1 },
            polls: 50
        })
    );
    assert_eq!(
        q.wait(),
        Err(Error::Timeout {
            what: Wait::QueueSpace { needed: 1 },
            polls: 50
        })
    );
    // SAFETY: as above.
    let after: Vec<u64> = (0..512)
        .map(|i| unsafe { q.core.ring.va.cast::<u64>().as_ptr().add(i).read() })
        .collect();
    assert_eq!(snapshot, after);
    m.stall(false);
    q.core.config.poll_budget = 10_000;
    q.wait().unwrap();
    assert_eq!(m.consumed(), 256);
}

#[test]
fn oversized_and_wrong_width_batches_are_refused() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    let big = std::vec![iotlb_page(0); 254];
    assert_eq!(
        q.submit_and_wait(&big),
        Err(Error::BatchTooLarge {
            len: 255,
            capacity: 254
        })
    );
    q.submit_and_wait(&big[..253]).unwrap();
    let wide = Descriptor::from_words([0x2, 0, 1, 0]);
    assert!(matches!(
        q.submit(&[wide]),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn invalid_descriptor_is_reported_and_skipped() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits256)).unwrap();
    q.submit_and_wait(&[iotlb_page(0)]).unwrap(); // slots 0, 1
    let cc = Descriptor::context_cache(ContextCacheScope::Global).unwrap();
    assert_eq!(
        q.submit_and_wait(&[cc, poison(), cc]),
        Err(Error::QueueError {
            kind: QueueErrorKind::InvalidQueueEntry,
            head: 3
        })
    );
    assert!(!regs::fsts(&m).0.contains(Fsts::IQE), "IQE cleared");
    // The queue works again; the neutralised slot and the old wait completed too.
    for i in 0..300 {
        q.submit_and_wait(&[iotlb_page(i)]).unwrap();
    }
    assert_eq!(m.consumed(), 2 + 4 + 600);
}

#[test]
fn stuck_hardware_times_out_then_recovers() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    q.core.config.poll_budget = 100;
    m.stall(true);
    assert_eq!(
        q.wait(),
        Err(Error::Timeout {
            what: Wait::InvalidationWait { sequence: 1 },
            polls: 100
        })
    );
    m.stall(false);
    q.wait().unwrap();
    assert_eq!(m.consumed(), 2);
}

#[test]
fn device_tlb_timeout_and_completion_errors() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    m.ite_on_device_tlb(true);
    let dev = Descriptor::device_tlb(SourceId::new(0x10), SourceId::new(0x10), 0, Iova::ZERO, 12)
        .unwrap();
    let e = q.submit_and_wait(&[iotlb_page(0), dev]);
    assert_eq!(
        e,
        Err(Error::QueueError {
            kind: QueueErrorKind::InvalidationTimeout,
            head: 3
        })
    );
    assert!(!regs::fsts(&m).0.contains(Fsts::ITE));
    m.ite_on_device_tlb(false);
    q.submit_and_wait(&[dev]).unwrap();

    m.raise_fsts(Fsts::ICE);
    let head = q.tail();
    assert_eq!(
        q.wait(),
        Err(Error::QueueError {
            kind: QueueErrorKind::InvalidationCompletion,
            head
        })
    );
    q.wait().unwrap();
}

#[test]
fn disable_release_and_no_memory() {
    let (m, a) = (Model::new(), TestAlloc::default());
    let mut q = InvalidationQueue::enable(&m, &a, config(2, DescriptorWidth::Bits128)).unwrap();
    assert_eq!(q.entries(), 1024);
    q.submit(&[iotlb_page(0)]).unwrap();
    // SAFETY: `a` is the allocator the queue came from.
    let Err((mut q, e)) = (unsafe { q.release(&a) }) else {
        panic!("released while enabled")
    };
    assert!(matches!(e, Error::UnexpectedState { .. }));
    q.disable().unwrap();
    assert_eq!(
        m.read64(regs::IQH_REG),
        0,
        "hardware resets IQH when QI is disabled"
    );
    // SAFETY: as above.
    unsafe { q.release(&a) }.map_err(|(_, e)| e).unwrap();
    assert_eq!(a.live_pages(), 0);

    a.fail.set(true);
    assert_eq!(
        InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).err(),
        Some(Error::NoMemory)
    );
    a.fail.set(false);
    assert!(matches!(
        InvalidationQueue::enable(&m, &a, config(8, DescriptorWidth::Bits128)).err(),
        Some(Error::InvalidArgument { .. })
    ));
    // A queue left enabled (by firmware, say) is drained and turned off before reprogramming.
    let mut q = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits128)).unwrap();
    q.submit(&[iotlb_page(0)]).unwrap();
    let q2 = InvalidationQueue::enable(&m, &a, config(0, DescriptorWidth::Bits256)).unwrap();
    assert_eq!(m.read64(regs::IQA_REG) & IQA_DW, IQA_DW);
    assert_eq!(q2.tail(), 0);
}
