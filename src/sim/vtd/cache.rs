//! The translation caches of the model (VT-d spec rev 4.1, chapter 6 "Caching Translation
//! Information": §6.2 the context-cache, PASID-cache, IOTLB and paging-structure caches; §6.5
//! their invalidation).
//!
//! Entries stay until an invalidation covers them, so a driver that forgets an invalidation,
//! or issues one that is too narrow (wrong DID, wrong PASID, an address mask that misses the
//! page), keeps translating through the stale entry -- which is what a test must catch.
//!
//! - Context-cache: keyed by source-id, tagged with the domain-id of the entry (legacy mode).
//!   With CAP.CM a not-present context entry is cached too, tagged with domain-id 0 (§6.2:
//!   entries cached for not-present context entries use domain-id 0 in caching mode). In
//!   scalable mode the context entry carries no domain-id and the descriptors' DID is ignored.
//! - PASID-cache: keyed by (source-id, PASID), tagged with the PASID entry's DID; it holds
//!   present entries only.
//! - IOTLB: keyed by (DID, PASID tag, page size, page number). Entries remember which kind of
//!   translation built them: the IOTLB invalidate descriptor (type 2) removes second-stage,
//!   nested and pass-through entries; the PASID-based IOTLB descriptor (type 6) removes
//!   first-stage and nested ones; a global invalidation removes everything. With CAP.CM a
//!   not-present result is cached as a negative 4 KiB entry.
//!
//! - Paging-structure cache: every non-leaf entry a successful second-stage or first-stage walk
//!   read is kept, keyed by (DID, PASID tag, address of the entry), with the input range it
//!   maps. Later walks of that domain use the cached value instead of memory, as hardware does,
//!   so a table freed or replaced without an invalidation that covers it is walked stale (and a
//!   freed table reads nothing: an access-error fault). Page-selective invalidations remove the
//!   overlapping entries unless IH is set; domain-selective, PASID-selective and global ones
//!   remove them all.
//! - Nested walks: their first-stage entries are not cached; the non-leaf entries of each
//!   successful second-stage walk they make (to read a first-stage table, or to translate the
//!   output) are, keyed by (DID, no PASID tag, address of the entry) with the guest-physical
//!   range each maps, as second-stage entries: second-stage caching is tagged with the
//!   domain-ID, not the PASID (§6.2). An IOTLB invalidation (type 2) of the DID removes them
//!   (page-selective: those over the guest-physical range, unless IH), a global one too; a
//!   PASID-based IOTLB invalidation (type 6) does not (§6.5.2.4, Table 21: it invalidates first-stage
//!   and nested mappings of the PASID and first-stage paging-structure caching; software
//!   invalidates second-stage caching with the IOTLB descriptor, §6.5.2.3 and Table 25
//!   "Guidance to Software for Invalidations"). Only scalable mode nests, so these keys never
//!   meet a legacy walk's.
//!
//! - ATC: what ATS devices cached ([`VtdModel::ats_translate`](super::VtdModel::ats_translate)),
//!   keyed by (source-id, PASID, page base) with the page size; removed by completed device-TLB
//!   invalidations of an overlapping range.

use std::collections::BTreeMap;

use super::walk::Perms;

/// What a context-cache entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CachedContext {
    /// Legacy context entry.
    Legacy(LegacyContext),
    /// Scalable-mode context entry.
    Scalable(ScalableContext),
    /// A not-present entry cached under CAP.CM (tagged with DID 0).
    NotPresent {
        /// FPD of the entry.
        fpd: bool,
        /// The fault to report again.
        reason: u8,
    },
}

impl CachedContext {
    /// The domain-id the entry is tagged with.
    pub(crate) fn did(&self) -> u16 {
        match self {
            Self::Legacy(c) => c.did,
            Self::Scalable(_) | Self::NotPresent { .. } => 0,
        }
    }
}

/// A decoded legacy context entry (§9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LegacyContext {
    pub fpd: bool,
    pub tt: u8,
    pub levels: u8,
    pub slptptr: u64,
    pub did: u16,
}

/// A decoded scalable-mode context entry (§9.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ScalableContext {
    pub fpd: bool,
    pub paside: bool,
    /// Page Request Enable.
    pub pre: bool,
    pub pasid_dir: u64,
    pub pdts: u8,
    pub rid_pasid: u32,
}

/// PGTT of a PASID entry (§9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pgtt {
    FirstStage,
    SecondStage,
    Nested,
    PassThrough,
}

/// A decoded scalable-mode PASID table entry (§9.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PasidEntry {
    pub fpd: bool,
    pub pgtt: Pgtt,
    pub did: u16,
    pub ss_levels: u8,
    pub ssptptr: u64,
    pub pgsnp: bool,
    pub sre: bool,
    pub ere: bool,
    pub fs_levels: u8,
    pub wpe: bool,
    pub nxe: bool,
    pub smep: bool,
    pub fsptptr: u64,
    /// Word 0, 9: SSADE, second-stage accessed/dirty flags (§3.7.2).
    pub ssade: bool,
}

/// Which translation built an IOTLB entry, for the invalidation forms that cover it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EntryKind {
    /// Legacy mode or scalable second-stage-only or pass-through.
    SecondStage,
    /// Scalable first-stage-only.
    FirstStage,
    /// Scalable nested.
    Nested,
}

/// One IOTLB entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct IotlbEntry {
    pub kind: EntryKind,
    /// Output address of the page base.
    pub pa: u64,
    /// Rights of an unprivileged request.
    pub user: Perms,
    /// Rights of a privileged request.
    pub supervisor: Perms,
    pub snoop: bool,
    /// `Some(reason)`: a cached not-present result (CAP.CM).
    pub negative: Option<u8>,
    /// The leaf entry whose dirty flag the first write through this entry sets, and that flag:
    /// `None` where flags are not tracked or the leaf was dirty when cached. A hit with `None`
    /// writes nothing, which is why software that clears a dirty flag must invalidate.
    pub dirty_at: Option<(u64, u64)>,
}

/// IOTLB key: (DID, PASID tag, page size log2, page number).
type IotlbKey = (u16, Option<u32>, u32, u64);

/// Page sizes an IOTLB entry can have.
const PAGE_SIZES: [u32; 3] = [12, 21, 30];

/// A cached non-leaf paging entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PscEntry {
    pub kind: EntryKind,
    /// The entry as read.
    pub value: u64,
    /// Lowest input address the entry maps.
    pub base: u64,
    /// Log2 of the input range it maps.
    pub span: u32,
}

/// Paging-structure cache key: (DID, PASID tag, physical address of the entry).
pub(crate) type PscKey = (u16, Option<u32>, u64);

/// All caches of the unit.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    pub context: BTreeMap<u16, CachedContext>,
    pub pasid: BTreeMap<(u16, u32), PasidEntry>,
    pub iotlb: BTreeMap<IotlbKey, IotlbEntry>,
    pub psc: BTreeMap<PscKey, PscEntry>,
    /// (source-id, PASID, input page base) -> (page size log2, output page base).
    pub atc: BTreeMap<(u16, Option<u32>, u64), (u32, u64)>,
}

/// Function-mask: which low bits of the source-id a device-selective context invalidation
/// ignores (CCMD.FM / descriptor FM: 00 none, 01 bit 2, 10 bits 2:1, 11 bits 2:0).
fn fm_mask(fm: u8) -> u16 {
    match fm & 3 {
        0 => 0,
        1 => 0b100,
        2 => 0b110,
        _ => 0b111,
    }
}

impl Caches {
    /// Whether an ATC entry of (`sid`, `pasid`) covers `iova`.
    pub(crate) fn atc_covers(&self, sid: u16, pasid: Option<u32>, iova: u64) -> bool {
        self.atc.iter().any(|(&(s, p, base), &(size, _))| {
            s == sid && p == pasid && iova >> size == base >> size
        })
    }

    /// A device-TLB invalidation of `2^size_log2` bytes at `addr` for `sid`: `pasid` `None`
    /// (the non-PASID form) removes the entries of requests without PASID, `Some(p)` those of
    /// PASID `p`; `global` (the PASID form's G bit, PCIe ATS "Global Invalidate") those of
    /// every PASID, never those of requests without PASID (only the non-PASID form reaches
    /// them).
    pub(crate) fn invalidate_atc(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        global: bool,
        addr: u64,
        size_log2: u32,
    ) {
        let end = addr.saturating_add(
            1u64.checked_shl(size_log2)
                .unwrap_or(u64::MAX)
                .saturating_sub(1),
        );
        self.atc.retain(|&(s, p, base), &mut (size, _)| {
            let last = base.saturating_add((1u64 << size) - 1);
            let tagged = p == pasid || (global && p.is_some());
            let hit = s == sid && tagged && base <= end && addr <= last;
            !hit
        });
    }

    /// Looks up the IOTLB entry covering `iova` for (DID, PASID tag); returns its size too.
    pub(crate) fn iotlb_lookup(
        &self,
        did: u16,
        tag: Option<u32>,
        iova: u64,
    ) -> Option<(u32, IotlbEntry)> {
        PAGE_SIZES.iter().find_map(|&size| {
            self.iotlb
                .get(&(did, tag, size, iova >> size))
                .map(|e| (size, *e))
        })
    }

    /// Inserts an entry for the page of `1 << size` bytes containing `iova`.
    pub(crate) fn iotlb_insert(
        &mut self,
        did: u16,
        tag: Option<u32>,
        iova: u64,
        size: u32,
        entry: IotlbEntry,
    ) {
        self.iotlb.insert((did, tag, size, iova >> size), entry);
    }

    /// Context-cache invalidation. `scalable`: the DID is ignored (the entries carry none).
    pub(crate) fn invalidate_context(&mut self, g: ContextGranularity, scalable: bool) {
        match g {
            ContextGranularity::Global => self.context.clear(),
            ContextGranularity::Domain(did) => {
                self.context.retain(|_, c| !scalable && c.did() != did)
            }
            ContextGranularity::Device { did, sid, fm } => {
                let mask = !fm_mask(fm);
                self.context
                    .retain(|&s, c| s & mask != sid & mask || !scalable && c.did() != did);
            }
        }
    }

    /// IOTLB invalidation through the type-2 descriptor or the IOTLB registers.
    pub(crate) fn invalidate_iotlb(&mut self, g: IotlbGranularity) {
        let second_stage = |k: EntryKind| k != EntryKind::FirstStage;
        match g {
            IotlbGranularity::Global => {
                self.iotlb.clear();
                self.psc.clear();
            }
            IotlbGranularity::Domain(did) => {
                self.iotlb
                    .retain(|k, e| !(k.0 == did && second_stage(e.kind)));
                self.psc
                    .retain(|k, e| !(k.0 == did && second_stage(e.kind)));
            }
            IotlbGranularity::Page { did, addr, am, ih } => {
                self.iotlb.retain(|k, e| {
                    let start = k.3 << k.2;
                    !(k.0 == did && second_stage(e.kind) && overlaps(start, k.2, addr, am))
                });
                if !ih {
                    self.psc.retain(|k, e| {
                        let hit = overlaps(e.base, e.span, addr, am);
                        !(k.0 == did && second_stage(e.kind) && hit)
                    });
                }
            }
        }
    }

    /// PASID-based IOTLB invalidation (type 6): first-stage and nested entries of (DID, PASID).
    /// `range`: `None` for PASID-selective, `Some((addr, am, ih))` for
    /// page-selective-within-PASID.
    pub(crate) fn invalidate_piotlb(
        &mut self,
        did: u16,
        pasid: u32,
        range: Option<(u64, u8, bool)>,
    ) {
        let ours = |did_k: u16, tag: Option<u32>, kind: EntryKind| {
            did_k == did && tag == Some(pasid) && kind != EntryKind::SecondStage
        };
        self.iotlb.retain(|k, e| {
            let in_range = range.map_or(true, |(addr, am, _)| overlaps(k.3 << k.2, k.2, addr, am));
            !(ours(k.0, k.1, e.kind) && in_range)
        });
        self.psc.retain(|k, e| {
            let in_range = range.map_or(true, |(addr, am, ih)| {
                !ih && overlaps(e.base, e.span, addr, am)
            });
            !(ours(k.0, k.1, e.kind) && in_range)
        });
    }

    /// PASID-cache invalidation (type 7).
    pub(crate) fn invalidate_pasid_cache(&mut self, g: PasidCacheGranularity) {
        match g {
            PasidCacheGranularity::Global => self.pasid.clear(),
            PasidCacheGranularity::Domain(did) => self.pasid.retain(|_, e| e.did != did),
            PasidCacheGranularity::Pasid { did, pasid } => self
                .pasid
                .retain(|&(_, p), e| !(e.did == did && p == pasid)),
        }
    }
}

/// Whether the `1 << size` bytes at `entry_start` overlap the 2^AM pages at `addr` (naturally
/// aligned: the low AM bits of the page number are ignored, as hardware ignores them).
fn overlaps(entry_start: u64, size: u32, addr: u64, am: u8) -> bool {
    let span = 12 + u32::from(am);
    let entry_end =
        entry_start.saturating_add(1u64.checked_shl(size).unwrap_or(u64::MAX).wrapping_sub(1));
    let start = addr
        .checked_shr(span)
        .unwrap_or(0)
        .checked_shl(span)
        .unwrap_or(0);
    let end = start.saturating_add(1u64.checked_shl(span).unwrap_or(u64::MAX).wrapping_sub(1));
    entry_start <= end && start <= entry_end
}

/// Context-cache invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ContextGranularity {
    Global,
    Domain(u16),
    Device { did: u16, sid: u16, fm: u8 },
}

/// IOTLB invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IotlbGranularity {
    Global,
    Domain(u16),
    Page {
        did: u16,
        addr: u64,
        am: u8,
        ih: bool,
    },
}

/// PASID-cache invalidation granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PasidCacheGranularity {
    Global,
    Domain(u16),
    Pasid { did: u16, pasid: u32 },
}
