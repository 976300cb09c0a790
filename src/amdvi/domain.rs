//! Domains of a unit: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.2.3 "I/O Page Tables for Host Translations" (the v1 table a domain is),
//! §2.2.2.1 "Device Table Entry Format" (`DomainID`, `Mode`) and §3.4 "IOMMU Extended Feature
//! Register" (`HATS`: how many levels the unit walks).
//!
//! A domain is a v1 table plus the domain ID its cached translations are tagged with: the
//! domain's slot plus one (ID 0 is left to blocking entries, which translate nothing). A slot,
//! and so its ID, is handed out again only after `domain_free`'s INVALIDATE_IOMMU_PAGES of
//! everything under the ID completed.

use super::unit::UnitInfo;
use crate::iommu::{DomainConfig, Error, Missing, Stage};
use crate::mem::{PageAllocator, WalkerCoherency};
use crate::pgtable::amdvi_v1::{AmdV1, AmdV1Config};
use crate::pgtable::{Gather, PageTable};

/// Width a domain gets when nothing larger is asked: 4 levels, as VT-d's second stage.
const DEFAULT_BITS: u32 = 48;

/// Largest input width of a domain: what `HATS` levels translate (4: 48 bits, 5: 57, 6: 63).
pub fn max_bits(info: &UnitInfo) -> u32 {
    // The v1 format takes at most 63 bits (its level-6 table resolves bits 62:57 here).
    (12 + 9 * info.host_levels).min(63)
}

/// The v1 configuration of a domain for `cfg`, or the capability that is missing.
///
/// # Errors
/// [`Error::Unsupported`].
pub fn choose(info: &UnitInfo, cfg: &DomainConfig) -> Result<AmdV1Config, Error> {
    if let Some(g) = cfg.granule_log2.filter(|&g| g != 12) {
        return Err(Error::Unsupported(Missing::PageSize { size_log2: g }));
    }
    if cfg.stage == Stage::First {
        return Err(Error::Unsupported(Missing::Mode {
            what: "guest (v2) tables are not built by this driver yet",
        }));
    }
    if cfg.supervisor {
        return Err(Error::Unsupported(Missing::SupervisorRequests));
    }
    if cfg.dirty_tracking {
        return Err(Error::Unsupported(Missing::DirtyTracking));
    }
    if cfg.nest_parent {
        return Err(Error::Unsupported(Missing::Nesting));
    }
    let have = max_bits(info);
    if cfg.min_ias > have {
        return Err(Error::Unsupported(Missing::AddressWidth {
            need: cfg.min_ias,
            have,
        }));
    }
    Ok(AmdV1Config {
        ias: cfg.min_ias.max(DEFAULT_BITS.min(have)).max(13),
        oas: info.output_bits,
        large_pages: true,
        force_coherent: cfg.enforce_snoop,
        dirty_tracking: false,
    })
}

/// One domain.
#[derive(Debug)]
pub struct Domain<A: PageAllocator> {
    /// The v1 table.
    pub table: PageTable<AmdV1, A>,
    /// `DomainID`.
    pub domain_id: u16,
    /// What a failed flush still owes (ranges and the pages waiting for them).
    pub owed: spin::Mutex<Gather>,
}

impl<A: PageAllocator> Domain<A> {
    /// Builds the table.
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::PageTable`].
    pub fn new(cfg: AmdV1Config, alloc: A, domain_id: u16) -> Result<Self, Error> {
        let table = PageTable::new(AmdV1::new(cfg)?, alloc, WalkerCoherency::Coherent)?;
        Ok(Self {
            table,
            domain_id,
            owed: spin::Mutex::new(Gather::new()),
        })
    }

    /// The DTE `Mode`: the table's levels.
    pub fn mode(&self) -> u32 {
        self.table.geometry().levels
    }
}
