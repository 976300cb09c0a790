//! Domains of a unit: Intel VT-d specification rev. 4.1, §3.6 (first-stage translation), §3.7
//! (second-stage translation), §11.4.2/§11.4.3 (the `CAP`/`ECAP` fields that decide a domain's
//! format, snoop control included) and §9.3/§9.6 (`DID`).
//!
//! A domain is a page table of one format plus the domain-ID the hardware tags its cached
//! translations with. [`choose`] turns a [`DomainConfig`] and the unit's capabilities into a
//! format configuration, or names the capability that is missing: snoop enforcement needs
//! `ECAP.SC` (SNP in second-stage leaves, PGSNP in scalable-mode PASID entries), first-stage
//! tables need scalable mode and `ECAP.FLTS`, supervisor requests a first-stage table and
//! `ECAP.SRS` (the PASID entry's `SRE`, §9.6; §3.6.1 first-stage access rights), dirty tracking `ECAP.SLADS` (scalable mode, second
//! stage), nesting `ECAP.NEST`.
//!
//! Domain IDs are the domain's slot plus one when `CAP.CM` reserves DID 0 (Caching Mode, §6: with caching
//! mode, hardware tags cached not-present entries with DID 0), and must stay below the
//! `CAP.ND` count.

use super::cap::{CapFlags, Sagaw, Sllps};
use super::ecap::EcapFlags;
use super::pasid_entry::FirstStagePagingMode;
use super::unit::UnitInfo;
use super::DomainId;
use crate::iommu::{DomainConfig, Error, Missing, Stage};
use crate::mem::{PageAllocator, WalkerCoherency};
use crate::pgtable::vtd_fs::{VtdFs, VtdFsConfig};
use crate::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use crate::pgtable::{Gather, Geometry, PageTable};

/// Input width of a 4-level first-stage table (canonical lower half, x86-64 4-level paging).
const FIRST_STAGE_4LEVEL_BITS: u32 = 47;
/// Input width of a 5-level first-stage table.
const FIRST_STAGE_5LEVEL_BITS: u32 = 56;
/// Width a second-stage domain gets when nothing larger is asked: 4 levels (48 bits), which
/// covers every physical address a device on today's platforms can be given.
const SECOND_STAGE_DEFAULT_BITS: u32 = 48;

/// The format a domain will use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choice {
    /// Second-stage table (legacy context entries, or PGTT = second stage).
    Second(VtdSsConfig),
    /// First-stage table (PGTT = first stage, scalable mode only).
    First(VtdFsConfig),
}

/// Decides the format of a domain for `cfg` on the unit described by `info`.
///
/// # Errors
/// [`Error::Unsupported`] naming the capability the configuration needs and the unit lacks.
pub fn choose(info: &UnitInfo, cfg: &DomainConfig) -> Result<Choice, Error> {
    let ecap = info.ecap.flags();
    if let Some(g) = cfg.granule_log2.filter(|&g| g != 12) {
        // Both VT-d formats have the 4 KiB granule only.
        return Err(Error::Unsupported(Missing::PageSize { size_log2: g }));
    }
    if cfg.enforce_snoop && !ecap.contains(EcapFlags::SC) {
        return Err(Error::Unsupported(Missing::SnoopControl));
    }
    if cfg.nest_parent && !ecap.contains(EcapFlags::NEST) {
        return Err(Error::Unsupported(Missing::Nesting));
    }
    if cfg.supervisor {
        check_supervisor(info, cfg.stage)?;
    }
    let first = match cfg.stage {
        Stage::First => {
            check_first_stage(info)?;
            true
        }
        Stage::Second => {
            check_second_stage(info)?;
            false
        }
        // Only the first stage has privilege levels.
        Stage::Any if cfg.supervisor => true,
        // A PASID domain needs scalable mode; it is second stage only for dirty tracking
        // (PGTT = second-stage-only), first stage otherwise, like a PASID IOASID without it.
        Stage::Any if cfg.pasid && cfg.dirty_tracking => {
            check_scalable(info)?;
            false
        }
        Stage::Any if cfg.pasid => {
            check_first_stage(info)?;
            true
        }
        // Second stage when there is one: it is the only stage legacy mode has, and the one
        // that can enforce snooping per leaf.
        Stage::Any => check_second_stage(info).is_err() && check_first_stage(info).is_ok(),
    };
    if first {
        if cfg.nest_parent {
            return Err(Error::Unsupported(Missing::Mode {
                what: "a nest parent must be a second-stage table",
            }));
        }
        if cfg.dirty_tracking {
            return Err(Error::Unsupported(Missing::DirtyTracking));
        }
        return first_stage(info, cfg).map(Choice::First);
    }
    check_second_stage(info)?;
    if cfg.dirty_tracking && !second_stage_dirty_tracking(info) {
        return Err(Error::Unsupported(Missing::DirtyTracking));
    }
    second_stage(info, cfg).map(Choice::Second)
}

fn check_scalable(info: &UnitInfo) -> Result<(), Error> {
    if !info.scalable() {
        return Err(Error::Unsupported(Missing::Mode {
            what: "PASIDs need scalable mode",
        }));
    }
    Ok(())
}

fn check_first_stage(info: &UnitInfo) -> Result<(), Error> {
    if !info.scalable() {
        return Err(Error::Unsupported(Missing::Mode {
            what: "first-stage translation needs scalable mode",
        }));
    }
    if !info.ecap.flags().contains(EcapFlags::FLTS) {
        return Err(Error::Unsupported(Missing::Mode {
            what: "first-stage translation (ECAP.FLTS)",
        }));
    }
    Ok(())
}

/// Whether the unit can honour supervisor requests: the PASID entry's `SRE` needs `ECAP.SRS`,
/// and only first-stage tables carry U/S (§3.6.1, §9.6).
pub fn supervisor_capable(info: &UnitInfo) -> bool {
    check_first_stage(info).is_ok() && info.ecap.flags().contains(EcapFlags::SRS)
}

fn check_supervisor(info: &UnitInfo, stage: Stage) -> Result<(), Error> {
    if stage == Stage::Second || !supervisor_capable(info) {
        return Err(Error::Unsupported(Missing::SupervisorRequests));
    }
    Ok(())
}

fn check_second_stage(info: &UnitInfo) -> Result<(), Error> {
    if info.scalable() && !info.ecap.flags().contains(EcapFlags::SLTS) {
        return Err(Error::Unsupported(Missing::Mode {
            what: "second-stage translation (ECAP.SLTS)",
        }));
    }
    Ok(())
}

/// Whether second-stage domains can track dirty pages: scalable mode with `ECAP.SLADS` (and
/// `ECAP.SLTS`), and page walks that snoop (`ECAP.SMPWCS`, `PWSNP`): hardware refuses to set
/// A/D bits through a non-snooped walk (fault reason 0x7C, "A/D bit update needed in
/// second-stage entry when set up in no snoop"), so without it every DMA write would fault.
pub fn second_stage_dirty_tracking(info: &UnitInfo) -> bool {
    info.scalable()
        && info
            .ecap
            .flags()
            .contains(EcapFlags::SLADS | EcapFlags::SLTS)
        && info.page_walk_coherency == WalkerCoherency::Coherent
}

/// The AGAWs `CAP.SAGAW` offers, in bits, ascending.
fn agaws(info: &UnitInfo) -> impl Iterator<Item = u32> {
    let sagaw = info.cap.sagaw();
    [
        (Sagaw::AGAW39, 39),
        (Sagaw::AGAW48, 48),
        (Sagaw::AGAW57, 57),
    ]
    .into_iter()
    .filter(move |(f, _)| sagaw.contains(*f))
    .map(|(_, bits)| bits)
}

/// Largest input width a second-stage domain can have: the largest AGAW, capped by MGAW.
pub fn second_stage_max_bits(info: &UnitInfo) -> u32 {
    agaws(info).max().unwrap_or(0).min(info.mgaw)
}

/// Largest input width a first-stage domain can have: the lower canonical half of the paging
/// mode, and of the `CAP.MGAW`-bit space. The unit blocks every request at or above
/// `2^MGAW` (§11.4.2), and an implementation narrower than its paging mode checks that first-stage
/// inputs are canonical at its own width (QEMU with `aw-bits=39` faults 2^38 as non-canonical);
/// Linux bounds first-stage domains the same way.
pub fn first_stage_max_bits(info: &UnitInfo) -> u32 {
    let paging = if info.cap.flags().contains(CapFlags::FL5LP) {
        FIRST_STAGE_5LEVEL_BITS
    } else {
        FIRST_STAGE_4LEVEL_BITS
    };
    paging.min(info.mgaw.saturating_sub(1))
}

fn second_stage(info: &UnitInfo, cfg: &DomainConfig) -> Result<VtdSsConfig, Error> {
    let have = second_stage_max_bits(info);
    let too_wide = Error::Unsupported(Missing::AddressWidth {
        need: cfg.min_ias,
        have,
    });
    if cfg.min_ias > info.mgaw {
        return Err(too_wide);
    }
    let want = cfg.min_ias.max(SECOND_STAGE_DEFAULT_BITS.min(info.mgaw));
    // The smallest AGAW that covers what is wanted; else the largest that covers what is needed.
    let agaw = agaws(info)
        .find(|&a| a >= want)
        .or_else(|| agaws(info).filter(|&a| a >= cfg.min_ias).max())
        .ok_or(too_wide)?;
    let sllps = info.cap.sllps();
    Ok(VtdSsConfig {
        agaw,
        haw: info.haw,
        page_2m: sllps.contains(Sllps::SIZE_2M),
        page_1g: sllps.contains(Sllps::SIZE_1G),
        snoop: cfg.enforce_snoop,
        dirty_tracking: cfg.dirty_tracking,
    })
}

fn first_stage(info: &UnitInfo, cfg: &DomainConfig) -> Result<VtdFsConfig, Error> {
    let have = first_stage_max_bits(info);
    if cfg.min_ias > have {
        return Err(Error::Unsupported(Missing::AddressWidth {
            need: cfg.min_ias,
            have,
        }));
    }
    let levels = if cfg.min_ias <= FIRST_STAGE_4LEVEL_BITS {
        4
    } else {
        5
    };
    Ok(VtdFsConfig {
        levels,
        haw: info.haw,
        page_1g: info.cap.flags().contains(CapFlags::FL1GP),
        // Execute requests are refused by the PASID entry (ERE clear), so XD is not needed.
        execute_disable: false,
        dirty_tracking: false,
    })
}

/// A domain's page table.
#[derive(Debug)]
pub enum DomainTable<A: PageAllocator> {
    /// Second-stage table.
    Second(PageTable<VtdSs, A>),
    /// First-stage table.
    First(PageTable<VtdFs, A>),
}

/// Runs `$body` with `$t` bound to the domain's table, whatever its format.
macro_rules! with_table {
    ($table:expr, $t:ident => $body:expr) => {
        match $table {
            $crate::vtd::domain::DomainTable::Second($t) => $body,
            $crate::vtd::domain::DomainTable::First($t) => $body,
        }
    };
}
pub(crate) use with_table;

/// One domain: its table, tag and attributes.
#[derive(Debug)]
pub struct Domain<A: PageAllocator> {
    /// The page table.
    pub table: DomainTable<A>,
    /// Domain-ID.
    pub did: DomainId,
    /// Every access is forced to snoop (SNP leaves; PGSNP in PASID entries).
    pub snoop: bool,
    /// Built for second-stage A/D tracking; whether it is on is the table's
    /// ([`Domain::tracking`]), and decides `SSADE` in PASID entries.
    pub dirty: bool,
    /// Supervisor requests are honoured (SRE and WPE in PASID entries; first stage only), and
    /// only then may leaves be privileged-only ([`Prot::PRIV`](crate::pgtable::Prot::PRIV)).
    pub supervisor: bool,
    /// IOVAs must be below `2^input_bits` (the table's width, capped by MGAW).
    pub input_bits: u32,
    /// Built as the parent (second stage) of nested translation: user domains
    /// ([`crate::iommu::Iommu::domain_alloc_user`]) may nest on it.
    pub nest_parent: bool,
    /// What a failed flush still owes: the ranges whose invalidation did not complete (issued
    /// again with the next flush of the domain) and table pages that wait for it (a map undone
    /// after its invalidation failed). Empty in the normal case.
    pub owed: crate::sync::Mutex<Gather>,
}

impl<A: PageAllocator> Domain<A> {
    /// What names the domain to the gathers its calls fill (`Gather::claim`): its root
    /// table's address, the table's for its life, whatever moves the unit (a unit's own
    /// address, or its slot's, changes when the embedder moves the unit between calls).
    pub(crate) fn gather_owner(&self) -> usize {
        with_table!(&self.table, t => t.gather_owner())
    }

    /// Builds the table `choice` describes into `slot` (left as it was on error): in place,
    /// so that no copy of the domain passes through the stack (a kernel host's). A domain
    /// built for dirty tracking then starts it with [`Self::start_tracking`].
    ///
    /// # Errors
    /// [`Error::NoMemory`], [`Error::PageTable`] for a configuration the engine refuses.
    pub fn build_into(
        slot: &mut Option<Self>,
        choice: Choice,
        alloc: A,
        did: DomainId,
        info: &UnitInfo,
        cfg: &DomainConfig,
    ) -> Result<(), Error> {
        let with = |table, input_bits| Self {
            table,
            did,
            snoop: cfg.enforce_snoop,
            dirty: cfg.dirty_tracking,
            supervisor: cfg.supervisor,
            input_bits,
            nest_parent: cfg.nest_parent,
            owed: crate::sync::Mutex::new(Gather::new()),
        };
        match choice {
            Choice::Second(c) => {
                let t = PageTable::new(VtdSs::new(c)?, alloc, info.page_walk_coherency)?;
                *slot = Some(with(DomainTable::Second(t), c.agaw.min(info.mgaw)));
            }
            Choice::First(c) => {
                let t = PageTable::new(VtdFs::new(c)?, alloc, info.page_walk_coherency)?;
                let bits = t.geometry().ias.min(first_stage_max_bits(info));
                *slot = Some(with(DomainTable::First(t), bits));
            }
        }
        Ok(())
    }

    /// A domain [`Self::build_into`] built for dirty tracking starts tracking (`SSADE` set in
    /// its PASID entries); its table is empty, so there is nothing to clean or invalidate. On
    /// an error the slot is emptied again. Called after `build_into` returned, and not
    /// inlined: the walk (and its gather) is beside `build_into`'s frame, which holds the
    /// domain while it is built, not under it (the kernel-stack bound of the C ABI).
    ///
    /// # Errors
    /// Those of [`PageTable::set_dirty_tracking`].
    #[inline(never)]
    pub fn start_tracking(slot: &mut Option<Self>) -> Result<(), Error> {
        if let Some(Self {
            table: DomainTable::Second(t),
            dirty: true,
            ..
        }) = slot
        {
            if let Err(e) = t.set_dirty_tracking(true, &mut Gather::new()) {
                *slot = None;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Whether dirty tracking is on (`SSADE` in the domain's PASID entries).
    pub fn tracking(&self) -> bool {
        match &self.table {
            DomainTable::Second(t) => self.dirty && t.dirty_tracking_on(),
            DomainTable::First(_) => false,
        }
    }

    /// Whether the table is first stage.
    pub const fn is_first_stage(&self) -> bool {
        matches!(self.table, DomainTable::First(_))
    }

    /// The table's geometry.
    pub fn geometry(&self) -> &Geometry {
        with_table!(&self.table, t => t.geometry())
    }

    /// The first-stage paging mode, or `None` for a second-stage table.
    pub fn first_stage_mode(&self) -> Option<FirstStagePagingMode> {
        match &self.table {
            DomainTable::First(t) if t.geometry().levels == 5 => Some(FirstStagePagingMode::Level5),
            DomainTable::First(_) => Some(FirstStagePagingMode::Level4),
            DomainTable::Second(_) => None,
        }
    }
}
