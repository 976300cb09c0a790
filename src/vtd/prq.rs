//! The Page Request Queue: Intel VT-d specification rev. 4.1, chapter 7 "Address Translation
//! Faults", section "Page Request" (the Page Request Descriptor, overflow and the page group
//! response), and §11.4 "Page Request Queue Head / Tail / Address Registers", "Page Request
//! Status Register" (PQH 0xC0, PQT 0xC8, PQA 0xD0, PRS 0xDC); `ECAP.PRS` (29) says the unit has
//! them.
//!
//! The queue is a ring of 256-bit descriptors in memory the unit writes at `PQT` and software
//! consumes at `PQH` (both byte offsets, bits 18:5). `PQA` holds its base (63:12) and size
//! (`PQS`, 2:0: `2^PQS` 4 KiB pages). `PRS.PPR` (0, RW1C) says a request was queued; `PRS.PRO`
//! (1, RW1C) that one arrived with the queue full: the unit then answered it itself, and sets
//! no further `PRO` until software clears it, which it does only once the queue is empty.
//!
//! A request asking for an answer (`LPIG`: last page in group) is answered with a page group
//! response descriptor on the invalidation queue ([`page_group_response`]).

use core::ptr::NonNull;

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::inv_desc::Descriptor;
use super::{Error, Field};
use crate::iommu::{DeviceId, Pasid};
use crate::iopf::{FaultKind, FaultPerm, PageFault, PageResponse, ResponseCode};
use crate::mem::{Page, PageAllocator, WalkerCoherency};
use crate::mmio::RegisterWindow;

use super::regs::{PQA_REG, PQH_REG, PQT_REG, PRS_REG};

/// PQA 63:12: Page Request Queue Base.
pub const PQA_PQB: Field = Field::new(63, 12);
/// PQA 2:0: Page Request Queue Size, `2^PQS` 4 KiB pages.
pub const PQA_PQS: Field = Field::new(2, 0);
/// PQH / PQT 18:5: the queue offset of the head / tail descriptor, in bytes.
pub const PQ_OFFSET: Field = Field::new(18, 5);
/// PRS 0: Pending Page Request (RW1C).
pub const PRS_PPR: u32 = 1 << 0;
/// PRS 1: Page Request Overflow (RW1C).
pub const PRS_PRO: u32 = 1 << 1;
/// Largest `PQS` this driver programs (8 pages, 1024 requests).
pub const PQS_MAX: u8 = 3;
/// Bytes per page request descriptor.
pub const DESCRIPTOR_BYTES: u64 = 32;

/// One Page Request Descriptor (256 bits).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct PageRequestDescriptor {
    /// Words 0-3 (2 and 3: Private Data, which this driver does not use).
    pub qw: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<PageRequestDescriptor>() == 32);

impl PageRequestDescriptor {
    /// Word 0, 7:0: descriptor type.
    pub const TYPE: Field = Field::new(7, 0);
    /// The Page Request type code.
    pub const PAGE_REQUEST: u64 = 0x1;
    /// Word 0, 8: PASID Present.
    pub const PP: u64 = 1 << 8;
    /// Word 0, 31:16: Requester ID.
    pub const RID: Field = Field::new(31, 16);
    /// Word 0, 51:32: PASID.
    pub const PASID: Field = Field::new(51, 32);
    /// Word 0, 52: Execute Requested.
    pub const ER: u64 = 1 << 52;
    /// Word 0, 53: Privilege Mode Requested.
    pub const PMR: u64 = 1 << 53;
    /// Word 1, 0: Read Requested.
    pub const RDR: u64 = 1 << 0;
    /// Word 1, 1: Write Requested.
    pub const WRR: u64 = 1 << 1;
    /// Word 1, 2: Last Page In Group.
    pub const LPIG: u64 = 1 << 2;
    /// Word 1, 11:3: Page Request Group Index.
    pub const PRGI: Field = Field::new(11, 3);
    /// Word 1, 63:12: the page address.
    pub const ADDR: Field = Field::new(63, 12);

    /// Whether this is a Stop Marker (PCIe PRI "Stop Marker Message", passed on by the unit
    /// as a page request descriptor): with a PASID, `LPIG` set, neither read nor write
    /// requested. It says the device stopped using that PASID; it asks for no page and no
    /// page group response (Linux's VT-d driver drops them likewise).
    pub const fn is_stop_marker(&self) -> bool {
        let [w0, w1, _, _] = self.qw;
        Self::TYPE.get(w0) == Self::PAGE_REQUEST
            && w0 & Self::PP != 0
            && w1 & (Self::LPIG | Self::RDR | Self::WRR) == Self::LPIG
    }

    /// The request as a [`PageFault`], or `None` for a descriptor of another type or a
    /// [Stop Marker](Self::is_stop_marker) (no fault: nothing to answer).
    pub fn decode(&self) -> Option<PageFault> {
        let [w0, w1, _, _] = self.qw;
        if Self::TYPE.get(w0) != Self::PAGE_REQUEST || self.is_stop_marker() {
            return None;
        }
        let pasid = if w0 & Self::PP != 0 {
            Pasid::new(Self::PASID.get(w0) as u32)
        } else {
            None
        };
        let mut perm = FaultPerm::empty();
        perm.set(FaultPerm::READ, w1 & Self::RDR != 0);
        perm.set(FaultPerm::WRITE, w1 & Self::WRR != 0);
        perm.set(FaultPerm::EXEC, w0 & Self::ER != 0);
        perm.set(FaultPerm::PRIV, w0 & Self::PMR != 0);
        Some(PageFault {
            device: DeviceId(Self::RID.get(w0) as u32),
            pasid,
            addr: w1 & Self::ADDR.mask(),
            perm,
            kind: FaultKind::PageRequest {
                group: Self::PRGI.get(w1) as u16,
                last: w1 & Self::LPIG != 0,
            },
            generation: 0,
            sequence: 0,
        })
    }
}

/// Page group response descriptor type (bits 3:0; 11:9 zero).
pub const PAGE_GROUP_RESPONSE: u64 = 0x9;
/// Page group response, word 0, 4: PASID Present.
pub const PGRP_PP: u64 = 1 << 4;
/// Page group response, word 0, 15:12: Response Code.
pub const PGRP_RESPONSE_CODE: Field = Field::new(15, 12);
/// Page group response, word 0, 31:16: Requester ID.
pub const PGRP_RID: Field = Field::new(31, 16);
/// Page group response, word 0, 51:32: PASID.
pub const PGRP_PASID: Field = Field::new(51, 32);
/// Page group response, word 1, 11:3: Page Request Group Index.
pub const PGRP_PRGI: Field = Field::new(11, 3);

/// The response code of a page group response: Success 0h, Invalid Request 1h, Response
/// Failure Fh.
pub const fn response_code(code: ResponseCode) -> u64 {
    match code {
        ResponseCode::Success => 0x0,
        ResponseCode::Invalid => 0x1,
        ResponseCode::Failure => 0xf,
    }
}

/// The page group response descriptor answering `response`.
///
/// # Errors
/// [`Error::InvalidArgument`] for a stall (VT-d has none), a requester ID above 16 bits or a
/// group index above 9 bits.
pub fn page_group_response(response: &PageResponse) -> Result<Descriptor, Error> {
    let FaultKind::PageRequest { group, .. } = response.kind else {
        return Err(Error::InvalidArgument {
            what: "page response to a stall (VT-d has no stall model)",
            value: 0,
        });
    };
    let rid = u64::from(response.device.0);
    let invalid = |what, value| Error::InvalidArgument { what, value };
    let mut w0 = PGRP_RID
        .set(PAGE_GROUP_RESPONSE, rid)
        .ok_or(invalid("page group response RID (16 bits)", rid))?;
    w0 = PGRP_RESPONSE_CODE
        .set(w0, response_code(response.code))
        .unwrap_or(w0);
    if let Some(p) = response.pasid {
        let v = u64::from(p.get());
        w0 = PGRP_PASID
            .set(w0 | PGRP_PP, v)
            .ok_or(invalid("page group response PASID (20 bits)", v))?;
    }
    let w1 = PGRP_PRGI.set(0, u64::from(group)).ok_or(invalid(
        "page group response PRGI (9 bits)",
        u64::from(group),
    ))?;
    Ok(Descriptor { qw: [w0, w1, 0, 0] })
}

/// What one [`PageRequestQueue::drain`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrqDrain {
    /// Requests written to `out`.
    pub reported: usize,
    /// Descriptors of another type, skipped.
    pub skipped: usize,
    /// Stop Markers consumed (not reported: they ask for no response).
    pub stop_markers: usize,
    /// Requests remain (`out` was full).
    pub more: bool,
    /// `PRS.PRO` was set (cleared if the ring is empty now).
    pub overflow: bool,
    /// Descriptors consumed since the queue was programmed, this drain's included: the
    /// sequence of the last one ([`PageFault::sequence`]).
    pub consumed: u64,
}

/// The ring a unit writes page requests into, and where software reads next.
pub struct PageRequestQueue {
    page: Page,
    pqs: u8,
    coherency: WalkerCoherency,
    /// Descriptors consumed (moved past by `PQH`) since the queue was programmed: the n-th
    /// has sequence n. 2^64 descriptors do not happen.
    consumed: u64,
}

// SAFETY: the ring is memory the queue owns; every access to it goes through `&mut self`.
unsafe impl Send for PageRequestQueue {}
// SAFETY: `&self` methods only read plain fields.
unsafe impl Sync for PageRequestQueue {}

impl PageRequestQueue {
    /// Programs a ring of `2^pqs` pages (from `page`, zeroed, `2^(12 + pqs)`-aligned, below the
    /// host address width): `PQH = PQT = 0`, then `PQA`, and acknowledges stale status.
    pub fn program<W: RegisterWindow + ?Sized>(
        regs: &W,
        page: Page,
        pqs: u8,
        coherency: WalkerCoherency,
    ) -> Self {
        regs.write64(PQH_REG, 0);
        regs.write64(PQT_REG, 0);
        regs.write64(PQA_REG, page.pa.get() | u64::from(pqs));
        regs.write32(PRS_REG, PRS_PPR | PRS_PRO);
        Self {
            page,
            pqs,
            coherency,
            consumed: 0,
        }
    }

    /// Size of the ring's pages, log2.
    pub const fn size_log2(&self) -> u32 {
        12 + self.pqs as u32
    }

    /// The ring's bytes.
    const fn bytes(&self) -> u64 {
        1 << self.size_log2()
    }

    /// Stops the unit writing the ring (`PQA`, `PQH`, `PQT` = 0) and gives its page back.
    pub fn unprogram<W: RegisterWindow + ?Sized>(regs: &W) {
        regs.write64(PQA_REG, 0);
        regs.write64(PQH_REG, 0);
        regs.write64(PQT_REG, 0);
    }

    /// The ring's page, for freeing once the unit no longer points at it.
    pub const fn page(&self) -> Page {
        self.page
    }

    /// Moves the requests between `PQH` and `PQT` into `out` (at most `out.len()`, and at most
    /// one ring's worth), moves `PQH` past them, and acknowledges `PPR` (before reading, so
    /// that a request queued meanwhile raises it again) and, once the ring is empty, `PRO`.
    /// Descriptors of another type are skipped, Stop Markers consumed and counted.
    pub fn drain<W: RegisterWindow + ?Sized, A: PageAllocator + ?Sized>(
        &mut self,
        regs: &W,
        alloc: &A,
        out: &mut [PageFault],
    ) -> PrqDrain {
        regs.write32(PRS_REG, PRS_PPR);
        let size = self.bytes();
        // A tail beyond the ring (a unit misbehaving) is taken modulo its size, so the loop
        // still ends within one ring.
        let tail = (regs.read64(PQT_REG) & PQ_OFFSET.mask()) % size;
        let mut head = (regs.read64(PQH_REG) & PQ_OFFSET.mask()) % size;
        let mut d = PrqDrain::default();
        for _ in 0..size / DESCRIPTOR_BYTES {
            if head == tail {
                break;
            }
            let slot = out.get_mut(d.reported);
            if slot.is_none() {
                break;
            }
            let desc = self.read(alloc, head);
            self.consumed = self.consumed.wrapping_add(1);
            match (desc.decode(), slot) {
                (Some(fault), Some(slot)) => {
                    *slot = PageFault {
                        sequence: self.consumed,
                        ..fault
                    };
                    d.reported += 1;
                }
                _ if desc.is_stop_marker() => d.stop_markers += 1,
                _ => d.skipped += 1,
            }
            head = (head + DESCRIPTOR_BYTES) % size;
        }
        regs.write64(PQH_REG, head);
        d.consumed = self.consumed;
        d.more = head != tail;
        d.overflow = regs.read32(PRS_REG) & PRS_PRO != 0;
        if d.overflow && head == regs.read64(PQT_REG) & PQ_OFFSET.mask() {
            regs.write32(PRS_REG, PRS_PRO);
        }
        d
    }

    /// The sequence the last descriptor the unit has written so far will have: those consumed
    /// plus those between `PQH` and `PQT` (the unit moves `PQT` only past a whole descriptor).
    /// Every request in the ring now is numbered at or below it when drained.
    pub fn fence<W: RegisterWindow + ?Sized>(&self, regs: &W) -> u64 {
        let size = self.bytes();
        let tail = (regs.read64(PQT_REG) & PQ_OFFSET.mask()) % size;
        let head = (regs.read64(PQH_REG) & PQ_OFFSET.mask()) % size;
        let waiting = (tail + size - head) % size / DESCRIPTOR_BYTES;
        self.consumed.wrapping_add(waiting)
    }

    fn read<A: PageAllocator + ?Sized>(&self, alloc: &A, offset: u64) -> PageRequestDescriptor {
        // The offset is below the ring's size (the caller keeps it so) and 32-byte aligned.
        let base = self.page.va.as_ptr().wrapping_add(offset as usize);
        if self.coherency == WalkerCoherency::NonCoherent {
            if let Some(va) = NonNull::new(base) {
                alloc.sync_for_cpu(va, DESCRIPTOR_BYTES as usize);
            }
        }
        let mut qw = [0u64; 4];
        for (i, w) in qw.iter_mut().enumerate() {
            // SAFETY: `base` lies inside the ring this queue owns (offset < size, 32-byte
            // aligned), so each of the 4 words is inside it and 8-byte aligned; the unit
            // writes it concurrently only before moving PQT past it, so a volatile read after
            // reading PQT sees the whole descriptor.
            *w = unsafe { core::ptr::read_volatile(base.cast::<u64>().add(i)) };
        }
        PageRequestDescriptor { qw }
    }
}

impl core::fmt::Debug for PageRequestQueue {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PageRequestQueue")
            .field("pa", &self.page.pa)
            .field("pqs", &self.pqs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_request_descriptor_decodes_every_field() {
        let d = PageRequestDescriptor {
            qw: [
                0x1 | PageRequestDescriptor::PP
                    | 0x0020 << 16
                    | 7u64 << 32
                    | PageRequestDescriptor::ER,
                PageRequestDescriptor::WRR | PageRequestDescriptor::LPIG | 0x1ff << 3 | 0x1234_5000,
                0,
                0,
            ],
        };
        let f = d.decode().unwrap();
        assert_eq!(f.device, DeviceId(0x20));
        assert_eq!(f.pasid.map(Pasid::get), Some(7));
        assert_eq!(f.addr, 0x1234_5000);
        assert_eq!(f.perm, FaultPerm::WRITE | FaultPerm::EXEC);
        assert_eq!(
            f.kind,
            FaultKind::PageRequest {
                group: 0x1ff,
                last: true
            }
        );
        let other = PageRequestDescriptor { qw: [0x2, 0, 0, 0] };
        assert_eq!(other.decode(), None);
        // A Stop Marker: PASID, LPIG, no read, no write.
        let stop = PageRequestDescriptor {
            qw: [
                0x1 | PageRequestDescriptor::PP | 7u64 << 32,
                PageRequestDescriptor::LPIG,
                0,
                0,
            ],
        };
        assert!(stop.is_stop_marker());
        assert_eq!(stop.decode(), None);
        // Without a PASID the same bits are a request (answered, never silently dropped).
        let no_pasid = PageRequestDescriptor {
            qw: [0x1, PageRequestDescriptor::LPIG, 0, 0],
        };
        assert!(!no_pasid.is_stop_marker());
        assert!(no_pasid.decode().is_some());
    }

    #[test]
    fn page_group_response_places_rid_pasid_code_and_index() {
        let r = PageResponse {
            device: DeviceId(0x20),
            pasid: Pasid::new(7),
            kind: FaultKind::PageRequest {
                group: 5,
                last: true,
            },
            code: ResponseCode::Failure,
            generation: 0,
        };
        let d = page_group_response(&r).unwrap();
        assert_eq!(d.qw[0], 0x9 | 1 << 4 | 0xf << 12 | 0x20 << 16 | 7 << 32);
        assert_eq!(d.qw[1], 5 << 3);
        let stall = PageResponse {
            kind: FaultKind::Stall { stag: 1 },
            ..r
        };
        assert!(page_group_response(&stall).is_err());
    }
}
