//! Domains of a unit: AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.10, §2.2.3 "I/O Page Tables for Host Translations" (the v1 table a domain is),
//! §2.2.2.1 "Device Table Entry Format" (`DomainID`, `Mode`) and §3.4 "IOMMU Extended Feature
//! Register" (`HATS`: how many levels the unit walks).
//!
//! A domain is a v1 table plus the domain ID its cached translations are tagged with: the
//! domain's slot plus one (ID 0 is left to blocking entries, which translate nothing). A slot,
//! and so its ID, is handed out again only after `domain_free`'s INVALIDATE_IOMMU_PAGES of
//! everything under the ID completed.
//!
//! A domain for PASIDs ([`Stage::First`], or [`DomainConfig::pasid`]) is a v2 table (§2.2.6
//! "I/O Page Tables for Guest Translations", x86-64 4-level paging) where EFR `GTSup` says the
//! unit walks them and `GIoSup` that it honours `GIoV` (see [`guest_tables`]): devices reach
//! it through their GCR3 table (`gcr3`), and its cached
//! translations are tagged with each device's GCR3 domain ID and the PASID, not with the
//! domain's own ID.

use super::efr::EfrFlags;
use core::sync::atomic::AtomicBool;

use super::unit::UnitInfo;
use crate::iommu::{DomainConfig, Error, Missing, Stage};
use crate::mem::{PageAllocator, WalkerCoherency};
use crate::pgtable::amdvi_v1::{AmdV1, AmdV1Config};
use crate::pgtable::amdvi_v2::{AmdV2, AmdV2Config};
use crate::pgtable::{Gather, PageTable};

/// Width a domain gets when nothing larger is asked: 4 levels, as VT-d's second stage.
const DEFAULT_BITS: u32 = 48;

/// Largest input width of a domain: what `HATS` levels translate (4: 48 bits, 5: 57, 6: 63),
/// at most the platform's `IVinfo.VAsize` ([`AmdViConfig::input_bits`](super::AmdViConfig)).
pub fn max_bits(info: &UnitInfo) -> u32 {
    // The v1 format takes at most 63 bits (its level-6 table resolves bits 62:57 here).
    (12 + 9 * info.host_levels).min(63).min(info.input_bits)
}

/// The format a domain is built in.
#[derive(Clone, Copy, Debug)]
pub enum DomainFormat {
    /// A host (v1) table, for requests without PASID.
    V1(AmdV1Config),
    /// A guest (v2) table, for PASIDs through GCR3 tables.
    V2(AmdV2Config),
}

/// Whether this driver uses guest (v2) tables through GCR3 tables: EFR `GTSup` (the unit
/// walks them) and `GIoSup` (it honours DTE `GIoV`). A PASID attach's entry is `Mode` 0 with
/// `IR`/`IW`: only `GIoV` keeps the device's requests without PASID from passing untranslated,
/// and a unit without `GIoSup` ignores it (QEMU's `amd-iommu` reports `GTSup` alone). Linux
/// requires both too (`amd_iommu_v2_pgtbl_supported`).
pub fn guest_tables(info: &UnitInfo) -> bool {
    info.efr
        .flags()
        .contains(EfrFlags::GT_SUP | EfrFlags::GIO_SUP)
}

/// The configuration of a domain for `cfg`, or the capability that is missing.
///
/// # Errors
/// [`Error::Unsupported`].
pub fn choose(info: &UnitInfo, cfg: &DomainConfig) -> Result<DomainFormat, Error> {
    if let Some(g) = cfg.granule_log2.filter(|&g| g != 12) {
        return Err(Error::Unsupported(Missing::PageSize { size_log2: g }));
    }
    let v2 = cfg.stage == Stage::First || (cfg.pasid && cfg.stage == Stage::Any);
    if v2 {
        return choose_v2(info, cfg);
    }
    if cfg.supervisor {
        return Err(Error::Unsupported(Missing::SupervisorRequests));
    }
    if cfg.dirty_tracking && !info.efr.flags().contains(EfrFlags::HD_SUP) {
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
    Ok(DomainFormat::V1(AmdV1Config {
        ias: cfg.min_ias.max(DEFAULT_BITS.min(have)).max(13),
        oas: info.output_bits,
        large_pages: true,
        force_coherent: cfg.enforce_snoop,
        dirty_tracking: cfg.dirty_tracking,
    }))
}

/// A v2 domain: 4 levels (47-bit canonical lower half; `GuestPagingMode` 00b, the DTE's
/// default), NX honoured where EFR `NXSup` says so.
fn choose_v2(info: &UnitInfo, cfg: &DomainConfig) -> Result<DomainFormat, Error> {
    if !guest_tables(info) {
        return Err(Error::Unsupported(Missing::Pasid { bits: 0 }));
    }
    if cfg.enforce_snoop {
        // v2 leaves have no FC bit (pgtable::amdvi_v2).
        return Err(Error::Unsupported(Missing::SnoopControl));
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
    const V2_BITS: u32 = 47;
    if cfg.min_ias > V2_BITS {
        return Err(Error::Unsupported(Missing::AddressWidth {
            need: cfg.min_ias,
            have: V2_BITS,
        }));
    }
    Ok(DomainFormat::V2(AmdV2Config {
        levels: 4,
        oas: info.output_bits,
        execute_disable: info.efr.flags().contains(EfrFlags::NX_SUP),
        dirty_tracking: false,
    }))
}

/// A domain's table, in either format.
#[derive(Debug)]
pub enum Table<A: PageAllocator> {
    /// Host (v1).
    V1(PageTable<AmdV1, A>),
    /// Guest (v2).
    V2(PageTable<AmdV2, A>),
}

/// Evaluates `$e` with `$t` bound to the table, whatever its format.
macro_rules! on_table {
    ($table:expr, $t:ident => $e:expr) => {
        match $table {
            $crate::amdvi::domain::Table::V1($t) => $e,
            $crate::amdvi::domain::Table::V2($t) => $e,
        }
    };
}
pub(crate) use on_table;

/// One domain.
#[derive(Debug)]
pub struct Domain<A: PageAllocator> {
    /// The table.
    pub table: Table<A>,
    /// `DomainID`.
    pub domain_id: u16,
    /// What a failed flush still owes (ranges and the pages waiting for them).
    pub owed: crate::sync::Mutex<Gather>,
    /// Built with dirty tracking (a v1 table whose leaves take `D`, EFR `HDSup`).
    pub dirty: bool,
    /// Dirty tracking is on: the entries of the domain's devices have `HAD` 11b.
    pub tracking: AtomicBool,
}

impl<A: PageAllocator> Domain<A> {
    /// What names the domain to the gathers its calls fill (`Gather::claim`): its root
    /// table's address, the table's for its life, whatever moves the unit (a unit's own
    /// address, or its slot's, changes when the embedder moves the unit between calls).
    pub(crate) fn gather_owner(&self) -> usize {
        on_table!(&self.table, t => t.gather_owner())
    }

    /// Builds the domain into `slot` (left as it was on error): no `Result` of a domain, nor
    /// a second copy of it, in the allocating frame (a kernel host's stack).
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::PageTable`].
    pub fn build_into(
        slot: &mut Option<Self>,
        cfg: DomainFormat,
        alloc: A,
        domain_id: u16,
    ) -> Result<(), Error> {
        let dirty = matches!(cfg, DomainFormat::V1(c) if c.dirty_tracking);
        let table = match cfg {
            DomainFormat::V1(c) => Table::V1(PageTable::new(
                AmdV1::new(c)?,
                alloc,
                WalkerCoherency::Coherent,
            )?),
            DomainFormat::V2(c) => Table::V2(PageTable::new(
                AmdV2::new(c)?,
                alloc,
                WalkerCoherency::Coherent,
            )?),
        };
        *slot = Some(Self {
            table,
            domain_id,
            owed: crate::sync::Mutex::new(Gather::new()),
            dirty,
            tracking: AtomicBool::new(dirty),
        });
        Ok(())
    }

    /// The DTE `Mode`: the table's levels.
    pub fn mode(&self) -> u32 {
        on_table!(&self.table, t => t.geometry().levels)
    }

    /// Whether this is a guest (v2) domain, reached through GCR3 tables.
    pub fn is_v2(&self) -> bool {
        matches!(self.table, Table::V2(_))
    }
}
