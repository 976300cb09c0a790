//! Page requests on a unit: Intel VT-d specification rev. 4.1, chapter 7, "Page Request"
//! (the queue the unit writes, its overflow, and the page group response software sends on the
//! invalidation queue). The queue's format is [`crate::vtd::prq`].

use super::VtdUnit;
use crate::iopf::{FaultDrain, PageFault, PageResponse};
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
        })
    }

    /// Sends the page group response answering `response` on the invalidation queue and waits
    /// for it to be consumed (an invalidation wait behind it).
    ///
    /// # Errors
    /// [`Error::Unsupported`] without `ECAP.PRS` or an invalidation queue;
    /// [`Error::InvalidArgument`] (a
    /// stall, or a field too wide); queue errors and time-outs.
    pub fn page_group_response(&self, response: &PageResponse) -> Result<(), Error> {
        if !self.info.ecap.flags().contains(EcapFlags::PRS) {
            return Err(Error::Unsupported {
                what: "ECAP.PRS (page requests)",
                value: self.info.ecap.0,
            });
        }
        let d = page_group_response(response)?;
        let mut inv = self.inval.lock();
        match &mut *inv {
            Invalidator::Queue(q) => {
                q.submit_and_wait_within(&self.regs, &[d], self.info.poll_budget)
            }
            Invalidator::Registers | Invalidator::Off => Err(Error::Unsupported {
                what: "queued invalidation (page group responses go on the queue)",
                value: 0,
            }),
        }
    }
}
