//! The model's caches: a TLB, a walk cache (table descriptors), and the configuration caches
//! (STEs by StreamID, CDs by StreamID and SubstreamID). Arm IHI 0070 G.b §3.17 (TLB tagging,
//! VMID and ASID), §3.21 (configuration and TLB caching, what each invalidation must remove),
//! §4.4 (TLB invalidation commands, Leaf, and the range calculation of §4.4.1.1).
//!
//! Entries stay until a command removes them (no capacity limit, no eviction), so a missing or
//! too narrow invalidation always shows as a stale translation. Invalid or illegal STEs and CDs
//! are not cached.

use std::collections::BTreeMap;
use std::vec::Vec;

/// The translation regime a TLB or walk-cache entry belongs to (its tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Regime {
    /// Stage 1 only (Non-secure EL1&0), tagged VMID and ASID (the ASID is ignored for global
    /// entries).
    S1 { vmid: u16, asid: u16 },
    /// Stage 2 only, tagged VMID.
    S2 { vmid: u16 },
    /// Combined stage 1 + stage 2 (nested).
    Nested { vmid: u16, asid: u16 },
}

impl Regime {
    fn vmid(&self) -> u16 {
        match *self {
            Regime::S1 { vmid, .. } | Regime::S2 { vmid } | Regime::Nested { vmid, .. } => vmid,
        }
    }

    /// Stage-1 (or combined) entries: what TLBI_NH_* remove.
    fn is_nh(&self) -> bool {
        !matches!(self, Regime::S2 { .. })
    }

    fn asid(&self) -> Option<u16> {
        match *self {
            Regime::S1 { asid, .. } | Regime::Nested { asid, .. } => Some(asid),
            Regime::S2 { .. } => None,
        }
    }

    /// Whether an entry tagged `self` (global or not) is looked up by a request in `want`.
    fn serves(&self, global: bool, want: &Regime) -> bool {
        match (*self, *want) {
            (Regime::S1 { vmid, asid }, Regime::S1 { vmid: v, asid: a })
            | (Regime::Nested { vmid, asid }, Regime::Nested { vmid: v, asid: a }) => {
                vmid == v && (global || asid == a)
            }
            (Regime::S2 { vmid }, Regime::S2 { vmid: v }) => vmid == v,
            _ => false,
        }
    }
}

/// A cached translation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TlbEntry {
    pub regime: Regime,
    /// nG = 0 at stage 1: the entry serves every ASID.
    pub global: bool,
    /// Filled by a privileged request (permissions differ per privilege).
    pub privileged: bool,
    /// Input address of the first byte the entry maps, aligned to its size.
    pub base: u64,
    pub size_log2: u32,
    /// The span a TLBI by address matches: the stage-1 leaf of a combined entry (a stage-1 block
    /// splintered by smaller stage-2 pages goes with the whole block), else `base`/`size_log2`.
    pub leaf_base: u64,
    pub leaf_size_log2: u32,
    /// Lookup level of the leaf (stage 1 for combined entries), for TTL.
    pub level: u32,
    pub granule_log2: u32,
    /// Output address of `base`.
    pub out: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// Stage-2 permissions of a combined entry (a stage-2 permission fault reports S2 = 1).
    pub s2_perms: Option<[bool; 3]>,
    /// Memory type: of the stage's own leaf, or the combined one for a nested entry.
    pub mem: Mt,
    pub s2_memattr: Option<u8>,
    /// Dirty-state updates the entry still owes its stage-1 and stage-2 leaves: made on the
    /// first write through the entry, then forgotten (the entry is dirty from then on).
    pub dirty: [Option<DirtyUpdate>; 2],
}

/// A hardware update of a leaf descriptor (HTTU): set `set` and clear `clear` at `pa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DirtyUpdate {
    pub pa: u64,
    pub set: u64,
    pub clear: u64,
}

/// A memory type reduced to what the model reports, weakest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Mt {
    /// Device memory (or a reserved encoding, treated as the weakest).
    Device,
    /// Normal Non-cacheable.
    NonCacheable,
    /// Normal Write-Through.
    WriteThrough,
    /// Normal Write-Back (inner and outer).
    WriteBack,
    /// Stage 2 with FWB and MemAttr = 0b111: the stage-1 (or incoming) type passes through.
    PassThrough,
}

impl TlbEntry {
    fn covers(&self, addr: u64) -> bool {
        addr.checked_sub(self.base)
            .is_some_and(|off| off >> self.size_log2.min(63) == 0)
    }
}

/// A cached table descriptor: the word at `entry_pa` (an IPA for a nested stage-1 walk), read
/// while translating addresses in `base .. base + 2^size_log2`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WalkEntry {
    pub regime: Regime,
    pub entry_pa: u64,
    pub value: u64,
    pub base: u64,
    pub size_log2: u32,
}

/// What a TLBI command selects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Invalidation {
    /// Which entries: by regime kind and tag.
    pub scope: Scope,
    /// Address selection: `None` = all addresses.
    pub range: Option<AddrRange>,
    /// Leaf only: walk-cache entries stay.
    pub leaf: bool,
}

/// Tag selection of an invalidation.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    /// Stage-1 and combined entries of a VMID (TLBI_NH_ALL, TLBI_NH_VAA).
    NhVmid(u16),
    /// Stage-1 and combined entries of a VMID and ASID, plus global ones when by address
    /// (TLBI_NH_ASID, TLBI_NH_VA).
    NhAsid { vmid: u16, asid: u16, by_addr: bool },
    /// Stage-2-only entries of a VMID (TLBI_S2_IPA).
    S2(u16),
    /// Every entry of a VMID (TLBI_S12_VMALL).
    Vmid(u16),
    /// Every Non-secure non-hypervisor entry (TLBI_NSNH_ALL).
    All,
}

impl Scope {
    fn matches(&self, r: &Regime, global: bool) -> bool {
        match *self {
            Scope::NhVmid(vmid) => r.is_nh() && r.vmid() == vmid,
            Scope::NhAsid {
                vmid,
                asid,
                by_addr,
            } => {
                // By address, global entries match every ASID; TLBI_NH_ASID leaves them alone.
                let asid_ok = if global {
                    by_addr
                } else {
                    r.asid() == Some(asid)
                };
                r.is_nh() && r.vmid() == vmid && asid_ok
            }
            Scope::S2(vmid) => matches!(*r, Regime::S2 { vmid: v } if v == vmid),
            Scope::Vmid(vmid) => r.vmid() == vmid,
            Scope::All => true,
        }
    }
}

/// Addresses selected by a TLBI: one address, or a range with the granule and level hints.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AddrRange {
    pub start: u64,
    /// Length in bytes; `None` for a single address (TG = 0).
    pub len: Option<u64>,
    /// TG as a granule log2, when a range.
    pub granule_log2: Option<u32>,
    /// TTL: only leaves at this lookup level (range form only).
    pub ttl_level: Option<u32>,
}

impl AddrRange {
    fn hits(&self, base: u64, size_log2: u32) -> bool {
        let end = if size_log2 >= 64 {
            u64::MAX
        } else {
            base.saturating_add((1u64 << size_log2) - 1)
        };
        match self.len {
            None => (base..=end).contains(&self.start),
            Some(len) => {
                let last = self.start.saturating_add(len.saturating_sub(1));
                base <= last && self.start <= end
            }
        }
    }
}

/// A CD cache key: (StreamID, SubstreamID).
pub(crate) type CdKey = (u32, u32);
/// A cached CD: the S1ContextPtr it was found through, and its words.
pub(crate) type CachedCd = (u64, [u64; 8]);

/// All the model's caches.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    pub tlb: Vec<TlbEntry>,
    pub walk: Vec<WalkEntry>,
    /// STE words by StreamID.
    pub ste: BTreeMap<u32, [u64; 8]>,
    /// CD words by (StreamID, SubstreamID), with the S1ContextPtr they were fetched through
    /// (so an STE pointing at another CD table misses).
    pub cd: BTreeMap<CdKey, CachedCd>,
    /// Valid level-1 stream table descriptors, by address.
    pub l1std: BTreeMap<u64, L1Entry>,
    /// Valid level-1 CD descriptors, by StreamID and address.
    pub l1cd: BTreeMap<(u32, u64), L1Entry>,
}

/// A cached level-1 descriptor and the IDs (StreamIDs or SubstreamIDs) it locates.
#[derive(Clone, Copy, Debug)]
pub(crate) struct L1Entry {
    pub desc: u64,
    pub first: u64,
    pub count: u64,
}

impl L1Entry {
    /// Whether any of `first .. first + count` is located through this descriptor.
    pub fn overlaps(&self, first: u64, count: u64) -> bool {
        first < self.first.saturating_add(self.count) && self.first < first.saturating_add(count)
    }
}

impl Caches {
    /// The cached translation of `addr` in `regime`, for a request of `privileged`.
    pub fn lookup(&self, regime: &Regime, privileged: bool, addr: u64) -> Option<TlbEntry> {
        self.tlb
            .iter()
            .find(|e| {
                e.privileged == privileged && e.regime.serves(e.global, regime) && e.covers(addr)
            })
            .copied()
    }

    /// Forgets the dirty-state updates of the entry serving `addr` (it has made them).
    pub fn dirty_done(&mut self, regime: &Regime, privileged: bool, addr: u64) {
        if let Some(e) = self.tlb.iter_mut().find(|e| {
            e.privileged == privileged && e.regime.serves(e.global, regime) && e.covers(addr)
        }) {
            e.dirty = [None; 2];
        }
    }

    /// A cached table descriptor at `entry_pa` in `regime`.
    pub fn walk_lookup(&self, regime: &Regime, entry_pa: u64) -> Option<u64> {
        self.walk
            .iter()
            .find(|e| e.entry_pa == entry_pa && e.regime == *regime)
            .map(|e| e.value)
    }

    /// Applies a TLBI; returns how many entries it removed (TLB, walk cache).
    pub fn invalidate(&mut self, inv: &Invalidation) -> (usize, usize) {
        let before = (self.tlb.len(), self.walk.len());
        self.tlb.retain(|e| {
            let addr_ok = inv.range.as_ref().map_or(true, |r| {
                r.hits(e.leaf_base, e.leaf_size_log2)
                    && r.granule_log2.map_or(true, |g| g == e.granule_log2)
                    && r.ttl_level.map_or(true, |l| l == e.level)
            });
            !(inv.scope.matches(&e.regime, e.global) && addr_ok)
        });
        if !inv.leaf {
            self.walk.retain(|e| {
                let addr_ok = inv
                    .range
                    .as_ref()
                    .map_or(true, |r| r.hits(e.base, e.size_log2));
                !(inv.scope.matches(&e.regime, false) && addr_ok)
            });
        }
        (before.0 - self.tlb.len(), before.1 - self.walk.len())
    }
}
