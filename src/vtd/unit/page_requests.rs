//! Page requests on a unit: Intel VT-d specification rev. 4.1, chapter 7, "Page Request"
//! (the queue the unit writes, its overflow, and the page group response software sends on the
//! invalidation queue). The queue's format is [`crate::vtd::prq`].

use super::VtdUnit;
use crate::iopf::{FaultDrain, FaultSequence, PageFault, PageResponse};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;
use crate::vtd::ecap::EcapFlags;
use crate::vtd::invalidation::Invalidator;
use crate::vtd::prq::{page_group_response, PageRequestQueue, PQS_MAX};
use crate::vtd::root_table::table_page;
use crate::vtd::Error;

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// Gives the unit a page request queue of `2^pqs` 4 KiB pages (32 requests a KiB) and
    /// programs it (`PQH`, `PQT`, `PQA`). Devices' page requests then reach
    /// [`drain_page_requests`](Self::drain_page_requests). Calling it again keeps the queue.
    ///
    /// # Errors
    /// [`Error::Unsupported`] without `ECAP.PRS`; [`Error::InvalidArgument`] for `pqs` above
    /// [`PQS_MAX`]; [`Error::NoMemory`], [`Error::TableOutOfRange`].
    pub fn enable_page_requests(&self, pqs: u8) -> Result<(), Error> {
        let ecap = self.info.ecap;
        if !ecap.flags().contains(EcapFlags::PRS) {
            return Err(Error::Unsupported {
                what: "ECAP.PRS (page requests)",
                value: ecap.0,
            });
        }
        if pqs > PQS_MAX {
            return Err(Error::InvalidArgument {
                what: "PQA.PQS (0..=3 here)",
                value: u64::from(pqs),
            });
        }
        let mut prq = self.prq.lock();
        if prq.is_some() {
            return Ok(());
        }
        let page = table_page(
            &self.alloc,
            12 + u32::from(pqs),
            self.info.haw,
            "page request queue",
        )?;
        *prq = Some(PageRequestQueue::program(
            &self.regs,
            page,
            pqs,
            self.info.coherency,
        ));
        Ok(())
    }

    /// Moves the page requests the unit queued into `out` (at most `out.len()`), moves `PQH`
    /// past them and acknowledges `PRS` (`PRO` once the queue is empty).
    ///
    /// # Errors
    /// [`Error::Unsupported`] before [`enable_page_requests`](Self::enable_page_requests).
    pub fn drain_page_requests(&self, out: &mut [PageFault]) -> Result<FaultDrain, Error> {
        let mut prq = self.prq.lock();
        let Some(q) = prq.as_mut() else {
            return Err(Error::Unsupported {
                what: "page request queue (enable_page_requests first)",
                value: 0,
            });
        };
        let d = q.drain(&self.regs, &self.alloc, out);
        Ok(FaultDrain {
            reported: d.reported,
            more: d.more,
            overflow: d.overflow,
            reached: FaultSequence {
                page_requests: d.consumed,
                stalls: 0,
            },
        })
    }

    /// The fence of a detach ([`Iommu::page_fault_fence`](crate::iommu::Iommu::page_fault_fence)):
    /// with `ECAP.PDS`, an invalidation wait with Page-request Drain first (every request the
    /// unit received is then in the queue), then the sequence the last request between `PQH`
    /// and `PQT` will have. Without `ECAP.PDS` the fence covers what the unit has written to
    /// the queue by then. `None` before [`enable_page_requests`](Self::enable_page_requests)
    /// (no request is queued or handed out).
    ///
    /// # Errors
    /// The drain wait's ([`Error::Timeout`], [`Error::QueueError`]).
    pub fn page_request_fence(&self) -> Result<Option<FaultSequence>, Error> {
        if self.prq.lock().is_none() {
            return Ok(None);
        }
        if self.info.ecap.flags().contains(EcapFlags::PDS) {
            // Not under the page request queue's lock: a drain's sink may answer (through
            // `inval`) while holding it.
            // Without the invalidation queue (translation off) nothing can be asked, nor is
            // a request translated or answered meanwhile.
            if let Invalidator::Queue(q) = &mut *self.inval.lock() {
                q.wait_draining_page_requests(&self.regs, self.info.poll_budget)?;
            }
        }
        let prq = self.prq.lock();
        Ok(prq.as_ref().map(|q| FaultSequence {
            page_requests: q.fence(&self.regs),
            stalls: 0,
        }))
    }

    /// Sends the page group response answering `response` on the invalidation queue and waits
    /// for it to be consumed (an invalidation wait behind it).
    ///
    /// The answer is taken once, and only once, its descriptor is in the invalidation queue:
    /// until then the unit still owes it
    /// ([`page_response_owed`](Self::page_response_owed) says so), and the IOASID layer keeps
    /// the group in its context to be answered again.
    ///
    /// # Errors
    /// What is true after each:
    /// - nothing was queued: [`Error::Unsupported`] without `ECAP.PRS` or an invalidation
    ///   queue (the unit not enabled, or with register-based invalidation);
    ///   [`Error::InvalidArgument`] (a stall, or a field too wide); no room in the queue within
    ///   the poll budget ([`Error::Timeout`], `Wait::QueueSpace`); a queue error (IQE, ITE,
    ///   ICE) of an earlier batch met while looking for room ([`Error::QueueError`], cleared):
    ///   the answer is still owed and may be sent again (before, it was lost: the IOASID
    ///   layer dropped the group, its retry was `NotOutstanding`, and the device waited for
    ///   ever);
    /// - the descriptor was queued and its wait failed ([`Error::Timeout`]
    ///   `Wait::InvalidationWait`, a queue error): the answer is taken (not owed): the unit
    ///   runs it once the queue moves, or, for a descriptor it rejected (IQE, neutralised),
    ///   the device waits for its own PRI time-out.
    pub fn page_group_response(&self, response: &PageResponse) -> Result<(), Error> {
        let mut inv = self.inval.lock();
        let (r, queued) = self.page_group_response_locked(&mut inv, response);
        // Under `inval` (lock order: `inval`, then `unqueued`, a leaf), so that the record
        // agrees with the queue for any answer that follows.
        let mut unqueued = self.unqueued.lock();
        if queued {
            unqueued.forget(response);
        } else if r.is_err() {
            unqueued.note(response);
        }
        r
    }

    /// Whether the answer `response` gives is still owed after
    /// [`page_group_response`](Self::page_group_response) failed: its descriptor never
    /// reached the invalidation queue (see there).
    pub fn page_response_owed(&self, response: &PageResponse) -> bool {
        self.unqueued.lock().owes(response)
    }

    /// The response, and whether its descriptor was queued.
    fn page_group_response_locked(
        &self,
        inv: &mut Invalidator,
        response: &PageResponse,
    ) -> (Result<(), Error>, bool) {
        if !self.info.ecap.flags().contains(EcapFlags::PRS) {
            let e = Error::Unsupported {
                what: "ECAP.PRS (page requests)",
                value: self.info.ecap.0,
            };
            return (Err(e), false);
        }
        let d = match page_group_response(response) {
            Ok(d) => d,
            Err(e) => return (Err(e), false),
        };
        match inv {
            Invalidator::Queue(q) => {
                match q.submit_and_wait_noting(&self.regs, &[d], self.info.poll_budget) {
                    Ok(()) => (Ok(()), true),
                    Err((e, queued)) => (Err(e), queued),
                }
            }
            Invalidator::Registers | Invalidator::Off => {
                let e = Error::Unsupported {
                    what: "queued invalidation (page group responses go on the queue)",
                    value: 0,
                };
                (Err(e), false)
            }
        }
    }
}

/// Page group responses a unit holds as still owed, at most: answers that failed before
/// reaching the invalidation queue and were not yet sent again. Past it, the oldest is
/// forgotten (its answer is then lost, as every failed answer was before).
pub(crate) const MAX_UNQUEUED: usize = 16;

/// The answers a unit still owes because their descriptor never reached the invalidation
/// queue: an answer is noted when it fails before the queue, forgotten once queued.
pub(crate) struct Unqueued {
    slots: [Option<PageResponse>; MAX_UNQUEUED],
    /// The slot overwritten next when all are taken.
    next: usize,
}

impl Unqueued {
    pub(crate) const EMPTY: Self = Self {
        slots: [None; MAX_UNQUEUED],
        next: 0,
    };

    /// Whether `a` and `b` answer the same group (whatever their codes).
    fn same(a: &PageResponse, b: &PageResponse) -> bool {
        a.device == b.device && a.pasid == b.pasid && a.kind == b.kind
    }

    fn note(&mut self, r: &PageResponse) {
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.is_some_and(|s| Self::same(&s, r)))
        {
            *s = Some(*r);
            return;
        }
        if let Some(s) = self.slots.iter_mut().find(|s| s.is_none()) {
            *s = Some(*r);
            return;
        }
        if let Some(s) = self.slots.get_mut(self.next) {
            *s = Some(*r);
        }
        self.next = (self.next + 1) % MAX_UNQUEUED;
    }

    fn forget(&mut self, r: &PageResponse) {
        for s in self.slots.iter_mut() {
            if s.is_some_and(|s| Self::same(&s, r)) {
                *s = None;
            }
        }
    }

    fn owes(&self, r: &PageResponse) -> bool {
        self.slots.iter().flatten().any(|s| Self::same(s, r))
    }
}
