//! Hardware domains of an SMMUv3 and the VMID/ASID allocators.
//!
//! A domain is an Arm VMSAv8-64 translation table and the tag its TLB entries carry:
//! - stage 2 (Arm ARM D8 stage 2; IHI 0070 G.b §5.2 STE.S2*): an [`ArmS2`] table tagged by a
//!   VMID, pointed at by `STE.S2TTB`;
//! - stage 1 (IHI 0070 G.b §5.4 CD): an [`ArmS1`] table tagged by an ASID, pointed at by
//!   `CD.TTB0`, under VMID 0, or under its nest parent's VMID when nested (`STE.Config` = 0b111).
//!
//! Tags come from small bitmaps: at most [`MAX_DOMAINS`] domains live, so tags below 256 always
//! suffice and fit the 8-bit VMID/ASID of units without `IDR0.VMID16`/`ASID16`. VMID 0 is kept
//! for stage-1 domains without a parent and ASID 0 is never used, so a stale entry of tag 0
//! cannot alias a domain. A tag returns to its bitmap only after the TLBI covering it completed.

use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use super::cd::{Cd, Stage1Context, Tg0};
use super::flush::TlbTag;
use super::idr::bits_to_oas;
use super::regs::Shareability;
use super::ste::{Cacheability, S2Tg, Stage2};
use super::{Asid, SmmuError, Vmid};
use crate::iommu::{DomainConfig, DomainHandle, DomainPages, Error, ReclaimScope};
use crate::mem::{Iova, PageAllocator, PhysAddr, WalkerCoherency};
use crate::pgtable::arm_s1::{ArmS1, ArmS1Config, MAIR};
use crate::pgtable::arm_s2::{ArmS2, ArmS2Config, S2Attributes};
use crate::pgtable::{DirtyRead, Gather, Geometry, Leaf, Mapping, PageTable, Prot};

/// Most domains one unit holds at a time (the unit keeps them in a fixed array).
pub const MAX_DOMAINS: usize = 64;

/// A bitmap of tags 1..=255. Tag 0 is marked used from the start and never freed (see the
/// module documentation): VMID 0 tags parentless stage-1 domains, ASID 0 is never used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagAllocator {
    used: [u64; 4],
}

impl Default for TagAllocator {
    /// [`TagAllocator::new`]: tag 0 reserved. (A derived `Default`, all zeroes, handed out
    /// tag 0 first.)
    fn default() -> Self {
        Self::new()
    }
}

impl TagAllocator {
    /// No tag in use; tag 0 reserved.
    pub const fn new() -> Self {
        Self { used: [1, 0, 0, 0] }
    }

    /// The smallest free tag, now in use.
    pub fn alloc(&mut self) -> Option<u16> {
        for (i, word) in self.used.iter_mut().enumerate() {
            if *word != u64::MAX {
                let bit = (!*word).trailing_zeros();
                *word |= 1 << bit;
                return Some((i as u32 * 64 + bit) as u16);
            }
        }
        None
    }

    /// Whether `tag` is in use (0 always is: it is never handed out).
    pub fn is_used(&self, tag: u16) -> bool {
        self.used
            .get(usize::from(tag / 64))
            .is_some_and(|w| w & (1 << (tag % 64)) != 0)
    }

    /// How many tags are in use, not counting 0.
    pub fn in_use(&self) -> u32 {
        let reserved = (self.used[0] & 1) as u32;
        self.used.iter().map(|w| w.count_ones()).sum::<u32>() - reserved
    }

    /// Returns `tag`; only after every TLB entry it tagged was invalidated.
    pub fn free(&mut self, tag: u16) {
        if let Some(word) = self.used.get_mut(usize::from(tag / 64)) {
            if tag != 0 {
                *word &= !(1 << (tag % 64));
            }
        }
    }
}

/// The page table of a domain, in one of the two Arm formats.
pub(crate) enum DomainTable<A: PageAllocator> {
    /// Stage 2.
    Stage2(PageTable<ArmS2, A>),
    /// Stage 1.
    Stage1(PageTable<ArmS1, A>),
}

/// Runs `$body` with `$t` bound to the table whatever its format.
macro_rules! with_table {
    ($table:expr, $t:ident => $body:expr) => {
        match $table {
            DomainTable::Stage2($t) => $body,
            DomainTable::Stage1($t) => $body,
        }
    };
}

/// One hardware domain.
pub(crate) struct Domain<A: PageAllocator> {
    pub(crate) table: DomainTable<A>,
    pub(crate) tag: TlbTag,
    /// The stage-2 domain this stage-1 domain nests on.
    pub(crate) parent: Option<DomainHandle>,
    /// Attachments (StreamIDs and (StreamID, SubstreamID) pairs) using the domain.
    pub(crate) users: AtomicU32,
    /// Attachments with ATS enabled, and ATS streams still retiring the domain: flushes also
    /// invalidate their ATCs.
    pub(crate) ats_users: AtomicU32,
    /// Stage-1 domains nested on this one.
    pub(crate) children: AtomicU32,
    /// What failed flushes and reclaims of the domain did not invalidate (see [`Owed`]).
    pub(crate) owed: Owed,
    /// Built for an IOASID that enforces snooping (or nested on such a parent): only devices
    /// the platform declares `CANWBS` may be attached.
    pub(crate) enforce_snoop: bool,
    /// Stage 1: whether the leaves are Normal Write-Back Inner Shareable (for devices whose DMA
    /// is coherent) rather than Non-cacheable. `None` for stage 2, which leaves the device's
    /// own attributes in charge.
    pub(crate) coherent_dma: Option<bool>,
    /// Built for supervisor requests (`DomainConfig::supervisor`, stage 1 only): only then are
    /// privileged-only leaves (`Prot::PRIV`, `AP[1]` clear) mapped.
    pub(crate) supervisor: bool,
    coherency: WalkerCoherency,
}

/// The invalidation a domain owes after a flush or a reclaim of it failed, and the table
/// pages that wait for it.
///
/// One rule for both: the failed call's ranges are not kept (a caller may drop a flush's
/// gather and retry with a new one), so what is owed is, conservatively, the whole tag
/// (`CMD_TLBI_NH_ASID` / `CMD_TLBI_S12_VMALL`, which covers the walk caches too) and the whole
/// range of every ATS user's ATC. The next flush (whatever its gather holds, even nothing),
/// reclaim or `domain_free` of the domain issues it; the pages a failed reclaim unlinked are
/// kept here and go back to the allocator only once that invalidation completed. A failed
/// flush's own pages stay in its caller's gather (`Iommu::flush`).
pub(crate) struct Owed {
    /// Whether a whole-tag invalidation is owed: read without the lock by every flush.
    whole_tag: AtomicBool,
    /// Unlinked tables that wait for it. Changed only together with `whole_tag`, under the
    /// lock.
    pages: crate::sync::Mutex<Gather>,
}

impl Owed {
    const fn new() -> Self {
        Self {
            whole_tag: AtomicBool::new(false),
            pages: crate::sync::Mutex::new(Gather::new()),
        }
    }

    /// Whether a whole-tag invalidation is owed.
    pub(crate) fn is_owed(&self) -> bool {
        self.whole_tag.load(Ordering::Acquire)
    }

    /// Table pages waiting for the owed invalidation.
    pub(crate) fn pages(&self) -> usize {
        self.pages.lock().freed_pages()
    }

    /// Takes what is owed, for a caller about to issue the whole-tag invalidation: `None`
    /// if nothing is, else the pages that wait for it (free them once it completed, or
    /// [`put_back`](Self::put_back) them if it failed).
    pub(crate) fn take(&self) -> Option<Gather> {
        if !self.is_owed() {
            return None;
        }
        let mut pages = self.pages.lock();
        self.whole_tag
            .swap(false, Ordering::AcqRel)
            .then(|| core::mem::take(&mut *pages))
    }

    /// As [`take`](Self::take), moving the pages into `into` (an empty gather) rather than
    /// returning them: whether a whole-tag invalidation was owed.
    pub(crate) fn take_into(&self, into: &mut Gather) -> bool {
        if !self.is_owed() {
            return false;
        }
        let mut pages = self.pages.lock();
        let owed = self.whole_tag.swap(false, Ordering::AcqRel);
        if owed {
            core::mem::swap(&mut *pages, into);
        }
        owed
    }

    /// Records that a whole-tag invalidation is owed (as [`put_back`](Self::put_back) with no
    /// pages).
    pub(crate) fn owe_whole_tag(&self) {
        let _held = self.pages.lock();
        self.whole_tag.store(true, Ordering::Release);
    }

    /// Records that a whole-tag invalidation is owed, with the pages `pages` holds (possibly
    /// none; it is left empty) to free once it completed.
    pub(crate) fn put_back(&self, pages: &mut Gather) {
        let pages = core::mem::take(pages);
        let mut held = self.pages.lock();
        held.absorb(pages);
        self.whole_tag.store(true, Ordering::Release);
    }
}

/// A new domain built for dirty tracking starts with it on: its writable leaves are written
/// clean. The table is empty, so there is nothing to clean or invalidate.
fn start_tracking<F: crate::pgtable::Format, A: PageAllocator>(
    table: &mut PageTable<F, A>,
) -> Result<(), Error> {
    match table.set_dirty_tracking(true, &mut Gather::new()) {
        Ok(()) | Err(crate::pgtable::Error::NoDirtyTracking) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl<A: PageAllocator> Domain<A> {
    /// What names the domain to the gathers its calls fill (`Gather::claim`): its root
    /// table's address, the table's for its life, whatever moves the unit (a unit's own
    /// address, or its slot's, changes when the embedder moves the unit between calls).
    pub(crate) fn gather_owner(&self) -> usize {
        with_table!(&self.table, t => t.gather_owner())
    }

    /// The domain [`build_stage1`](Self::build_stage1) or [`build_stage2`](Self::build_stage2)
    /// just built into `slot` starts tracking if its table can (`start_tracking`); on an
    /// error the slot is emptied again. Called after the build returned, and not inlined: the
    /// walk (and its gather) is beside the build's frame, which holds the domain while it is
    /// built, not under it (the kernel-stack bound of the C ABI).
    #[inline(never)]
    pub(crate) fn start_tracking_in(slot: &mut Option<Self>) -> Result<(), Error> {
        let Some(d) = slot.as_mut() else {
            return Ok(());
        };
        let started = with_table!(&mut d.table, t => start_tracking(t));
        if started.is_err() {
            *slot = None;
        }
        started
    }
}

/// Inputs common to both stages.
pub(crate) struct DomainParams {
    pub(crate) granule_log2: u32,
    pub(crate) coherency: WalkerCoherency,
    pub(crate) dirty: bool,
    pub(crate) bbml2: bool,
    /// `IDR3.FWB`.
    pub(crate) fwb: bool,
}

impl<A: PageAllocator> Domain<A> {
    fn with(table: DomainTable<A>, tag: TlbTag, p: &DomainParams, cfg: &DomainConfig) -> Self {
        let coherent_dma = match &table {
            DomainTable::Stage1(t) => Some(t.format().config().coherent),
            DomainTable::Stage2(_) => None,
        };
        Self {
            table,
            tag,
            parent: None,
            users: AtomicU32::new(0),
            ats_users: AtomicU32::new(0),
            children: AtomicU32::new(0),
            owed: Owed::new(),
            enforce_snoop: cfg.enforce_snoop,
            coherent_dma,
            supervisor: cfg.supervisor,
            coherency: p.coherency,
        }
    }

    /// A stage-2 domain of `ias` input bits.
    ///
    /// Leaf attributes: write-back (MemAttr 0b1111), which leaves the device's (or stage 1's)
    /// own attributes in charge, since stage 2 combines with them and keeps the weaker. A
    /// domain that enforces snooping or is a nest parent, on a unit with `IDR3.FWB`, uses
    /// MemAttr 0b0110 with `STE.S2FWB` instead: write-back whatever stage 1 asks, so that a
    /// guest's stage 1 cannot make its memory Non-cacheable (and read stale DRAM under dirty
    /// host lines). Coherency itself is the platform's (`CANWBS`, checked at attach): FWB does
    /// not stop a PCIe No-Snoop transaction from bypassing the caches. Forced write-back makes a
    /// non-coherent device's DMA cacheable: `attach` refuses one under it.
    ///
    /// Built into `slot` (left as it was on error), in place: no copy of the domain passes
    /// through the stack (a kernel host's).
    pub(crate) fn build_stage2(
        slot: &mut Option<Self>,
        alloc: A,
        p: &DomainParams,
        cfg: &DomainConfig,
        ias: u32,
        oas: u32,
        vmid: Vmid,
    ) -> Result<(), Error> {
        let fmt = ArmS2::new(ArmS2Config {
            granule_log2: p.granule_log2,
            ias,
            oas,
            blocks: true,
            attributes: if p.fwb && (cfg.enforce_snoop || cfg.nest_parent) {
                S2Attributes::ForcedWriteBack
            } else {
                S2Attributes::WriteBack
            },
            dirty_tracking: p.dirty && cfg.dirty_tracking,
            bbml2: p.bbml2,
        })?;
        let table = PageTable::new(fmt, alloc, p.coherency)?;
        let tag = TlbTag::Stage2 {
            vmid,
            nest_parent: cfg.nest_parent,
        };
        *slot = Some(Self::with(DomainTable::Stage2(table), tag, p, cfg));
        Ok(())
    }

    /// A stage-1 domain whose output is `oas` bits wide (the parent's IPA size when nested),
    /// with Normal Write-Back Inner Shareable leaves for devices whose DMA is `coherent_dma`,
    /// Normal Non-cacheable Outer Shareable ones otherwise. The walker's coherency
    /// (`IDR0.COHACC`) decides only the CD's walk attributes: a non-coherent TCU says nothing
    /// about the masters behind it.
    /// Built into `slot` as [`build_stage2`](Self::build_stage2); tracking then starts with
    /// [`start_tracking_in`](Self::start_tracking_in).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build_stage1(
        slot: &mut Option<Self>,
        alloc: A,
        p: &DomainParams,
        cfg: &DomainConfig,
        coherent_dma: bool,
        oas: u32,
        vmid: Vmid,
        asid: Asid,
    ) -> Result<(), Error> {
        let fmt = ArmS1::new(ArmS1Config {
            granule_log2: p.granule_log2,
            ias: 48,
            oas,
            blocks: true,
            coherent: coherent_dma,
            dirty_tracking: p.dirty && cfg.dirty_tracking,
            bbml2: p.bbml2,
        })?;
        let table = PageTable::new(fmt, alloc, p.coherency)?;
        *slot = Some(Self::with(
            DomainTable::Stage1(table),
            TlbTag::Stage1 { vmid, asid },
            p,
            cfg,
        ));
        Ok(())
    }

    /// Limits the pages later maps write ([`crate::pgtable::PageTable::set_max_leaf_log2`]).
    pub(crate) fn set_max_leaf_log2(&mut self, max: Option<u32>) {
        with_table!(&mut self.table, t => t.set_max_leaf_log2(max));
    }

    /// The geometry of the table.
    pub(crate) fn geometry(&self) -> &Geometry {
        with_table!(&self.table, t => t.geometry())
    }

    /// Whether the domain is stage 2 with forced write-back (`STE.S2FWB`): no stage 1 over it
    /// can make its memory Non-cacheable.
    pub(crate) fn forces_write_back(&self) -> bool {
        matches!(&self.table, DomainTable::Stage2(t)
            if t.format().config().attributes == S2Attributes::ForcedWriteBack)
    }

    /// Whether the domain is stage 2.
    pub(crate) fn is_stage2(&self) -> bool {
        matches!(self.table, DomainTable::Stage2(_))
    }

    fn walk_attributes(&self) -> (Cacheability, Shareability) {
        match self.coherency {
            WalkerCoherency::Coherent => (Cacheability::WriteBackAllocate, Shareability::Inner),
            WalkerCoherency::NonCoherent => (Cacheability::NonCacheable, Shareability::Outer),
        }
    }

    /// The stage-2 half of an STE for this domain.
    ///
    /// # Errors
    ///
    /// [`SmmuError::InvalidConfig`] for a stage-1 domain; field errors.
    pub(crate) fn stage2_fields(&self) -> Result<Stage2, SmmuError> {
        let (DomainTable::Stage2(t), TlbTag::Stage2 { vmid, .. }) = (&self.table, self.tag) else {
            return Err(SmmuError::InvalidConfig {
                reason: "a stage-1 domain has no stage-2 fields",
            });
        };
        let fmt = t.format();
        let c = fmt.config();
        let (cache, sh) = self.walk_attributes();
        Ok(Stage2 {
            vmid,
            t0sz: fmt.t0sz() as u8,
            sl0: fmt.sl0() as u8,
            ir0: cache,
            or0: cache,
            sh0: sh,
            tg: match c.granule_log2 {
                16 => S2Tg::Size64K,
                14 => S2Tg::Size16K,
                _ => S2Tg::Size4K,
            },
            ps: bits_to_oas(c.oas).ok_or(SmmuError::FieldOutOfRange {
                field: "S2PS",
                value: c.oas.into(),
            })? as u8,
            endi: false,
            affd: false,
            // CD fetches and stage-1 walks (a guest's included) never reach Device pages.
            ptw: true,
            hd: c.dirty_tracking,
            ha: c.dirty_tracking,
            s: false,
            r: true,
            fwb: c.attributes == S2Attributes::ForcedWriteBack,
            ttb: t.root(),
        })
    }

    /// The context descriptor of a stage-1 domain.
    ///
    /// # Errors
    ///
    /// [`SmmuError::InvalidConfig`] for a stage-2 domain; field errors.
    pub(crate) fn context_descriptor(&self) -> Result<Cd, SmmuError> {
        let (DomainTable::Stage1(t), TlbTag::Stage1 { asid, .. }) = (&self.table, self.tag) else {
            return Err(SmmuError::InvalidConfig {
                reason: "a stage-2 domain has no context descriptor",
            });
        };
        let fmt = t.format();
        let c = fmt.config();
        let (cache, sh) = self.walk_attributes();
        Stage1Context {
            t0sz: fmt.t0sz() as u8,
            tg0: match c.granule_log2 {
                16 => Tg0::Size64K,
                14 => Tg0::Size16K,
                _ => Tg0::Size4K,
            },
            ir0: cache,
            or0: cache,
            sh0: sh,
            endi: false,
            ips: bits_to_oas(c.oas).ok_or(SmmuError::FieldOutOfRange {
                field: "IPS",
                value: c.oas.into(),
            })? as u8,
            affd: false,
            wxn: false,
            uwxn: false,
            tbi0: false,
            hd: c.dirty_tracking,
            ha: c.dirty_tracking,
            s: false,
            r: true,
            a: true,
            // Not shared with the CPU's broadcast TLB maintenance: the ASID is the unit's own.
            aset: true,
            asid,
            nscfg0: false,
            had0: false,
            ttb0: t.root(),
            mair: MAIR,
        }
        .encode()
    }

    pub(crate) fn map(&self, iova: Iova, pa: PhysAddr, len: u64, prot: Prot) -> Result<(), Error> {
        // As on VT-d: a privileged-only page only in a domain asked to serve supervisors.
        if prot.contains(Prot::PRIV) && !self.supervisor {
            return Err(Error::PageTable(crate::pgtable::Error::UnsupportedProt {
                prot,
            }));
        }
        Ok(with_table!(&self.table, t => t.map(iova, pa, len, prot))?)
    }

    pub(crate) fn unmap(&self, iova: Iova, len: u64, gather: &mut Gather) -> Result<u64, Error> {
        Ok(with_table!(&self.table, t => t.unmap(iova, len, gather))?)
    }

    pub(crate) fn query(&self, iova: Iova) -> Option<Mapping> {
        with_table!(&self.table, t => t.query(iova))
    }

    pub(crate) fn for_each_mapping(
        &self,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), Error> {
        Ok(with_table!(&self.table, t => t.for_each_mapping(iova, len, f))?)
    }

    pub(crate) fn read_dirty(
        &self,
        iova: Iova,
        len: u64,
        how: DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        Ok(with_table!(&self.table, t => t.read_dirty(iova, len, how, sink, gather))?)
    }

    /// Dirty tracking on or off for the domain's leaves (IHI 0070 G.b §3.13, HTTU; Arm ARM
    /// DDI 0487 K.a D8.4.6, the dirty state of a DBM descriptor): on, every leaf is cleaned
    /// into `gather` and new writable leaves are written writable-clean (DBM set, stage 1
    /// `AP[2]` / stage 2 `S2AP[1]` write-protected) so that the unit's first write marks them;
    /// off, new ones are written writable-dirty. `CD.HD` / `STE.S2HD` stay set for the
    /// domain's life: with them clear the unit would ignore DBM and fault a write to a clean
    /// leaf, so turning them off would need every clean leaf made dirty first and its TLB
    /// entries invalidated -- Linux's SMMUv3 driver likewise leaves HD set and only changes
    /// what a map writes and what a read cleans.
    pub(crate) fn set_dirty_tracking(
        &mut self,
        on: bool,
        gather: &mut Gather,
    ) -> Result<(), Error> {
        if !self.tracks_dirty() {
            return Err(Error::Unsupported(crate::iommu::Missing::DirtyTracking));
        }
        Ok(with_table!(&mut self.table, t => t.set_dirty_tracking(on, gather))?)
    }

    /// Whether the domain was built for dirty tracking (`HD` in its CD or STE).
    pub(crate) fn tracks_dirty(&self) -> bool {
        match &self.table {
            DomainTable::Stage1(t) => t.format().config().dirty_tracking,
            DomainTable::Stage2(t) => t.format().config().dirty_tracking,
        }
    }

    /// Unlinks the empty tables in `scope` into `gather`; how many.
    pub(crate) fn reclaim(
        &mut self,
        scope: ReclaimScope<'_>,
        gather: &mut Gather,
    ) -> Result<usize, Error> {
        Ok(with_table!(&mut self.table, t => scope.reclaim(t, gather))?)
    }

    /// The tables linked, needed and held after a failed invalidation.
    pub(crate) fn table_pages(&mut self) -> Result<DomainPages, Error> {
        Ok(DomainPages {
            tables: with_table!(&mut self.table, t => t.table_pages())?,
            unflushed: self.owed.pages(),
        })
    }

    /// Hands every page of the table to the domain's owed gather, which also holds the tables
    /// a failed reclaim left for an owed whole-tag invalidation, and returns that gather (to
    /// be released once the whole tag is invalidated) with the walk's result. In place: a
    /// domain is not moved onto the stack to be destroyed.
    ///
    /// # Safety
    /// The domain is not used again, except to be dropped.
    pub(crate) unsafe fn destroy_in_place(&mut self) -> (&mut Gather, Result<(), Error>) {
        // Tables a failed reclaim left owed (held only while a whole-tag invalidation is owed:
        // the gather is empty otherwise) go with the rest.
        let gather = self.owed.pages.get_mut();
        // SAFETY: the caller's promise: the table is not used again.
        let destroyed = with_table!(&mut self.table, t => unsafe { t.destroy_in_place(gather) });
        (gather, destroyed.map_err(Error::from))
    }

    /// Whether anything still uses the domain.
    pub(crate) fn busy(&self) -> bool {
        self.users.load(Ordering::Acquire) != 0 || self.children.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_start_at_one_and_are_reused_after_free() {
        let mut t = TagAllocator::new();
        assert_eq!(t.alloc(), Some(1));
        assert_eq!(t.alloc(), Some(2));
        t.free(1);
        assert_eq!(t.alloc(), Some(1));
        for _ in 3..256 {
            assert!(t.alloc().is_some());
        }
        assert_eq!(t.alloc(), None);
        t.free(0);
        assert_eq!(t.alloc(), None);
        t.free(255);
        assert_eq!(t.alloc(), Some(255));
    }

    #[test]
    fn the_default_allocator_never_hands_out_tag_0() {
        assert_eq!(
            TagAllocator::default().alloc(),
            Some(1),
            "tag 0 is reserved"
        );
        assert_eq!(TagAllocator::default().in_use(), 0);
        let t = TagAllocator::default();
        assert_eq!(t, TagAllocator::new());
        assert!(t.is_used(0));
    }
}
