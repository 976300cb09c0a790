//! The PRI queue: PCIe page requests (PPRs) the SMMU writes for software, and their overflow.
//!
//! Arm IHI 0070 (H.a) chapter 8 "Page request queue" (the 16-byte entry), §8.1 "PRI queue
//! overflow" and §8.1.1 "Recovery procedure", §8.2 (automatic responses, `PRIQ_ABT_ERR`);
//! §6.3 `SMMU_PRIQ_BASE` (0xC0: ADDR 51:5, LOG2SIZE 4:0), `SMMU_PRIQ_PROD` / `SMMU_PRIQ_CONS`
//! (page 1, 0xC8 / 0xCC: index and wrap, `OVFLG` / `OVACKFLG` in bit 31), `CR0.PRIQEN`;
//! `IDR0.PRI` says the unit has it, `IDR1.PRIQS` bounds its size.
//!
//! Entry: `dw0` StreamID 31:0, SubstreamID 51:32, Priv 58, X 59, R 60, W 61, Last 62, SSV 63;
//! `dw1` PRGIndex 8:0, page address 63:12. A request with a PASID and `LWR` = 0b100 is a Stop
//! PASID marker, which asks for no answer and is skipped.
//!
//! Overflow (§8.1): while `PROD.OVFLG` differs from `CONS.OVACKFLG` the SMMU writes nothing
//! more, answers every discarded request with Last = 1 itself (Success) and drops the others,
//! so the queue may hold groups whose last request was lost (and answered). Software reads
//! the whole queue, then moves `CONS` past it and acknowledges the overflow in one write;
//! `PriQueue::drain` reports the overflow with that write, and the caller drops the groups
//! that did not complete (`FaultQueue::discard_partial`).

use super::field::Field;
use super::queue::{QueueMemory, QueueReader, QueueRegisters};
use super::regs;
use super::SmmuError;
use crate::iommu::{DeviceId, Pasid};
use crate::iopf::{FaultKind, FaultPerm, PageFault};
use crate::mem::{PageAllocator, WalkerCoherency};
use crate::mmio::RegisterWindow;

const ENTRY_LOG2: u32 = 4;

/// `dw0` bits 31:0.
pub const STREAM_ID: Field = Field::new("StreamID", 31, 0);
/// `dw0` bits 51:32.
pub const SUBSTREAM_ID: Field = Field::new("SubstreamID", 51, 32);
/// `dw0` bit 58: Privileged.
pub const PRIV: u64 = 1 << 58;
/// `dw0` bit 59: eXecute.
pub const EXEC: u64 = 1 << 59;
/// `dw0` bit 60: Read.
pub const READ: u64 = 1 << 60;
/// `dw0` bit 61: Write.
pub const WRITE: u64 = 1 << 61;
/// `dw0` bit 62: Last request of its group.
pub const LAST: u64 = 1 << 62;
/// `dw0` bit 63: SubstreamID valid.
pub const SSV: u64 = 1 << 63;
/// `dw1` bits 8:0.
pub const PRG_INDEX: Field = Field::new("PRGIndex", 8, 0);
/// `dw1` bits 63:12.
pub const PAGE_ADDRESS: Field = Field::new("Page address", 63, 12);

/// Decodes a PRI queue entry; `None` for a Stop PASID marker (SSV, `LWR` = 0b100).
pub fn decode(dw0: u64, dw1: u64) -> Option<PageFault> {
    let ssv = dw0 & SSV != 0;
    let lwr = dw0 & (LAST | WRITE | READ);
    if ssv && lwr == LAST {
        return None;
    }
    let mut perm = FaultPerm::empty();
    perm.set(FaultPerm::READ, dw0 & READ != 0);
    perm.set(FaultPerm::WRITE, dw0 & WRITE != 0);
    // X and Priv are 0 without a PASID (chapter 8).
    perm.set(FaultPerm::EXEC, ssv && dw0 & EXEC != 0);
    perm.set(FaultPerm::PRIV, ssv && dw0 & PRIV != 0);
    Some(PageFault {
        device: DeviceId(STREAM_ID.get(dw0) as u32),
        pasid: if ssv {
            Pasid::new(SUBSTREAM_ID.get(dw0) as u32)
        } else {
            None
        },
        addr: dw1 & PAGE_ADDRESS.mask(),
        perm,
        kind: FaultKind::PageRequest {
            group: PRG_INDEX.get(dw1) as u16,
            last: dw0 & LAST != 0,
        },
        // Given when the request is handed out (`drain_page_faults`).
        generation: 0,
        sequence: 0,
    })
}

/// What one `PriQueue::drain` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriDrain {
    /// Requests written to the caller's slice.
    pub reported: usize,
    /// Entries remain (the slice was full).
    pub more: bool,
    /// An overflow condition was acknowledged with this drain: requests were lost before it.
    pub overflow: bool,
    /// Entries consumed since the queue was made, this drain's included: the sequence of the
    /// last one ([`PageFault::sequence`]).
    pub consumed: u64,
}

/// The PRI queue of one unit. Crate-private for the reason [`EventQueue`](super::eventq) is:
/// it frees its memory on `Drop`, which only the unit can know to be safe (`CR0.PRIQEN` off).
pub(crate) struct PriQueue<A: PageAllocator> {
    q: QueueReader<A, PriQueueRegisters>,
    /// Entries consumed since the queue was made (programming it again keeps the count): the
    /// n-th has sequence n.
    consumed: u64,
}

/// PRIQ_BASE, PRIQ_PROD, PRIQ_CONS.
pub(crate) struct PriQueueRegisters;

impl QueueRegisters for PriQueueRegisters {
    const BASE: usize = regs::PRIQ_BASE;
    const PROD: usize = regs::PRIQ_PROD;
    const CONS: usize = regs::PRIQ_CONS;
}

// SAFETY: the queue page is owned by the PriQueue (freed only by its `Drop`); moving it to
// another thread moves that ownership, and the memory is accessed only through atomics.
unsafe impl<A: PageAllocator + Send> Send for PriQueue<A> {}

impl<A: PageAllocator> PriQueue<A> {
    /// Allocates a queue of `2^log2` entries; `max_log2` is `IDR1.PRIQS`.
    ///
    /// # Errors
    /// [`SmmuError::SizeUnsupported`], [`SmmuError::NoMemory`], [`SmmuError::TableOutOfRange`].
    pub fn new(
        alloc: A,
        log2: u32,
        max_log2: u32,
        coherency: WalkerCoherency,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        let mem = QueueMemory::new(
            alloc,
            "PRI queue",
            log2,
            max_log2,
            ENTRY_LOG2,
            coherency,
            oas,
        )?;
        Ok(Self {
            q: QueueReader::new(mem),
            consumed: 0,
        })
    }

    /// Writes PRIQ_BASE and zeroes PROD and CONS. Only while `CR0.PRIQEN = 0`.
    pub fn program<W: RegisterWindow + ?Sized>(&mut self, regs: &W) {
        self.q.program(regs);
    }

    /// Moves up to `out.len()` requests into `out`, oldest first, then publishes CONS. An
    /// overflow is acknowledged (`OVACKFLG` = `OVFLG`) in the CONS write that reaches the PROD
    /// it was seen with, as §8.1 recommends: by then every group whose last request was lost
    /// is in the caller's hands, and new requests may follow.
    pub fn drain<W: RegisterWindow + ?Sized>(
        &mut self,
        regs: &W,
        out: &mut [PageFault],
    ) -> PriDrain {
        let (prod, flag) = self.q.read_prod(regs);
        let mut reported = 0;
        while reported < out.len() {
            let Some([dw0, dw1]) = self.q.pop::<2>(prod) else {
                break;
            };
            self.consumed = self.consumed.wrapping_add(1);
            if let (Some(fault), Some(slot)) = (decode(dw0, dw1), out.get_mut(reported)) {
                *slot = PageFault {
                    sequence: self.consumed,
                    ..fault
                };
                reported += 1;
            }
        }
        // Acknowledged only with the CONS write that reaches the PROD it was seen with (§8.1).
        let drained = self.q.cons == prod;
        let overflow = drained && flag != self.q.overflow_ack;
        if drained {
            self.q.overflow_ack = flag;
        }
        self.q.publish(regs);
        PriDrain {
            reported,
            more: !drained,
            overflow,
            consumed: self.consumed,
        }
    }

    /// Entries consumed since the queue was made.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The sequence the last entry the unit has written so far (PROD read now) will have:
    /// every request in the queue now is numbered at or below it when drained.
    pub fn fence<W: RegisterWindow + ?Sized>(&self, regs: &W) -> u64 {
        let (prod, _) = self.q.read_prod(regs);
        self.consumed
            .wrapping_add(u64::from(prod.used_since(self.q.cons)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_requests_and_skips_stop_markers() {
        // SID 0x42, SSID 5, R | W | Last | SSV | Priv | X; PRGIndex 0x1ff, page 0xdead_b000.
        let dw0 = 0x42 | 5 << 32 | PRIV | EXEC | READ | WRITE | LAST | SSV;
        let f = decode(dw0, 0xdead_b000 | 0x1ff).unwrap();
        assert_eq!(f.device, DeviceId(0x42));
        assert_eq!(f.pasid, Pasid::new(5));
        assert_eq!(f.addr, 0xdead_b000);
        assert_eq!(f.perm, FaultPerm::all());
        assert_eq!(
            f.kind,
            FaultKind::PageRequest {
                group: 0x1ff,
                last: true
            }
        );
        // Without SSV: no PASID, X and Priv read as 0.
        let f = decode(0x42 | PRIV | EXEC | READ, 0x1000).unwrap();
        assert_eq!((f.pasid, f.perm), (None, FaultPerm::READ));
        // A Stop PASID marker (SSV, L = 1, W = R = 0) asks for nothing.
        assert_eq!(decode(0x42 | LAST | SSV, 0), None);
        // Without a PASID the same bits are a page request.
        assert!(decode(0x42 | LAST, 0).is_some());
    }

    /// The PRI queue's own overflow rule on the reader it shares with the event queue: an
    /// overflow is neither acknowledged nor reported by a drain that stops short of the PROD it
    /// was seen with, only by the one that reaches it (then once).
    #[test]
    fn overflow_acknowledged_only_by_the_drain_that_reaches_prod() {
        use crate::smmuv3::testutil::{ModelSmmu, VecAllocator};
        let (alloc, m) = (VecAllocator::default(), ModelSmmu::new());
        let mut q = PriQueue::new(&alloc, 2, 19, WalkerCoherency::Coherent, 52).unwrap();
        q.program(&m);
        for i in 0..3u64 {
            let entry = q.q.mem.entry(i as u32);
            entry[0].store(0x42 | LAST, core::sync::atomic::Ordering::Relaxed);
            entry[1].store((0x1000 * i) | i, core::sync::atomic::Ordering::Relaxed);
        }
        m.set32(regs::PRIQ_PROD, 3 | 1 << 31);
        let mut out = [PageFault::EMPTY; 2];
        let d = q.drain(&m, &mut out);
        assert_eq!((d.reported, d.more, d.overflow), (2, true, false));
        assert_eq!(m.read32(regs::PRIQ_CONS), 2, "OVACKFLG still 0");
        let d = q.drain(&m, &mut out);
        assert_eq!((d.reported, d.more, d.overflow), (1, false, true));
        assert_eq!(out[0].addr, 0x2000);
        assert_eq!(m.read32(regs::PRIQ_CONS), 3 | 1 << 31);
        let d = q.drain(&m, &mut out);
        assert_eq!((d.reported, d.more, d.overflow), (0, false, false));
    }
}
