//! The page-size policy of an IOASID: iommufd's `IOMMU_OPTION` with `IOMMU_OPTION_HUGE_PAGES`
//! (Linux `include/uapi/linux/iommufd.h`, `struct iommu_option`), generalised to a largest
//! page size.
//!
//! By default every domain behind an IOASID maps with the largest pages that alignment, length
//! and the unit's page sizes allow. With a limit, every domain built for the IOASID, and every
//! domain it already has, writes translations of at most that size
//! ([`Iommu::set_max_page_log2`](crate::iommu::Iommu::set_max_page_log2),
//! [`PageTable::set_max_leaf_log2`](crate::pgtable::PageTable::set_max_leaf_log2)): huge pages
//! off is a limit of 4 KiB (a unit with a larger granule then maps its granule). A hypervisor
//! wants it where a guest unmaps at 4 KiB granularity (no split on unmap, so no allocation
//! and no failure there) or to measure IOTLB behaviour.
//!
//! As iommufd's `iopt_disable_large_pages` refuses the change (`EINVAL`) once the IOAS has
//! both domains and areas, the change is refused ([`Error::Busy`]) when the IOASID has both
//! hardware domains and mappings: then every leaf of every domain is within the limit as long
//! as it is set. With no domain yet, the mappings are copied into each domain built later
//! under the limit.

use super::ctx::IoasidCtx;
use super::record::RECORD_IAS;
use super::{Error, IoasidId};
use crate::mem::PageAllocator;

/// Log2 of the page size iommufd's `IOMMU_OPTION_HUGE_PAGES` = 0 limits an IOAS to (the
/// kernel's `PAGE_SIZE` on x86 and 4 KiB-page arm64).
pub const SMALL_PAGE_LOG2: u32 = 12;

impl<A: PageAllocator> IoasidCtx<'_, '_, A> {
    /// iommufd `IOMMU_OPTION_HUGE_PAGES`: `false` limits every domain of the IOASID to 4 KiB
    /// pages ([`SMALL_PAGE_LOG2`]; a unit whose granule is larger uses its granule), `true`
    /// (the default) lifts the limit. See [`set_max_page_log2`](Self::set_max_page_log2).
    ///
    /// # Errors
    /// As [`set_max_page_log2`](Self::set_max_page_log2).
    pub fn set_huge_pages(&self, ioasid: IoasidId, enabled: bool) -> Result<(), Error> {
        self.set_max_page_log2(ioasid, (!enabled).then_some(SMALL_PAGE_LOG2))
    }

    /// Limits the pages (and Arm contiguous-hint runs) that maps write into every hardware
    /// domain of the IOASID to `2^max` bytes each, or lifts the limit (`None`). Domains built
    /// later get the limit before the IOASID's mappings are copied into them.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::Busy`] if the IOASID has both a hardware domain and a
    /// mapping (as iommufd); a unit that cannot limit its pages
    /// ([`Iommu::set_max_page_log2`](crate::iommu::Iommu::set_max_page_log2)): its error, and the domains already changed get their
    /// previous limit back. Nothing changed after any of them.
    pub fn set_max_page_log2(&self, ioasid: IoasidId, max: Option<u32>) -> Result<(), Error> {
        let mut st = self.state.write();
        let io = st.ioasid(ioasid)?;
        if io.max_page_log2 == max {
            return Ok(());
        }
        let has_domain = io.domains.iter().any(Option::is_some);
        if has_domain && io.first_mapping_in(0, 1 << RECORD_IAS)?.is_some() {
            return Err(Error::Busy);
        }
        let previous = io.max_page_log2;
        for (k, d) in io.domains.iter().flatten().enumerate() {
            let r = self
                .unit(d.unit)
                .and_then(|u| Ok(u.set_max_page_log2(d.handle, max)?));
            if let Err(e) = r {
                for d in io.domains.iter().flatten().take(k) {
                    if let Ok(u) = self.unit(d.unit) {
                        let _ = u.set_max_page_log2(d.handle, previous);
                    }
                }
                return Err(e);
            }
        }
        st.ioasid_mut(ioasid)?.max_page_log2 = max;
        Ok(())
    }

    /// The IOASID's page-size limit: log2 of the largest page a map writes, `None` for none.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn max_page_log2(&self, ioasid: IoasidId) -> Result<Option<u32>, Error> {
        Ok(self.state.read().ioasid(ioasid)?.max_page_log2)
    }
}
