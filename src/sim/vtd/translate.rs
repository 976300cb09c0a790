//! Request translation, legacy mode, and what both modes share (VT-d spec rev 4.1, chapter 3
//! "DMA Remapping": §3.4.2-§3.4.3 root and context tables in legacy mode, §3.6-§3.7 first- and
//! second-stage translation; §9.1 root entry, §9.3 context entry).
//!
//! Legacy root entry (128-bit, indexed by bus): 0 P, 11:1 reserved, 63:12 CTP; bits 127:64
//! reserved. Legacy context entry (128-bit, indexed by devfn): 0 P, 1 FPD, 3:2 TT (00 untranslated
//! requests through the second-stage table, 01 also ATS (needs ECAP.DT), 10 pass-through (needs
//! ECAP.PT), 11 reserved), 11:4 reserved, 63:12 SLPTPTR; 66:64 AW (1: 39-bit 3-level, 2: 48-bit
//! 4-level, 3: 57-bit 5-level, allowed only if set in CAP.SAGAW), 70:67 ignored, 71 reserved,
//! 87:72 DID (bits beyond CAP.ND reserved), 127:88 reserved. Address bits at or above the host
//! address width (HAW) are reserved everywhere.
//!
//! FPD (fault processing disable) in the context entry is honoured even when P is clear; it
//! applies to every fault found from the context entry on (the "qualified" faults); faults at
//! the root table or root entry are always recorded.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::vec::Vec;

use super::arena::{Arena, PhysMem};
use super::cache::{CachedContext, EntryKind, IotlbEntry, LegacyContext, PscEntry, PscKey};
use super::fault::*;
use super::regs::*;
use super::walk::{vtd_ss, Access, AccessKind, Fault, Perms};
use super::{bits, DmaOk, RootMode, State};
use crate::mem::{Iova, PhysAddr};

/// A fault found by a translation, before recording.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fail {
    pub reason: u8,
    /// FPD applies: the fault is not recorded.
    pub fpd: bool,
    /// The fault is a not-present one that CAP.CM lets the IOTLB cache.
    pub not_present: bool,
}

impl Fail {
    pub(crate) fn new(reason: u8, fpd: bool) -> Self {
        Self {
            reason,
            fpd,
            not_present: false,
        }
    }
}

/// Fault reason codes for the translation-stage faults of one mode.
#[derive(Clone, Copy)]
pub(crate) struct Codes {
    pub beyond: u8,
    pub not_present_read: u8,
    pub not_present_write: u8,
    pub reserved: u8,
    pub access_error: u8,
    pub bad_pointer: u8,
    pub no_read: u8,
    pub no_write: u8,
    pub no_exec: u8,
    pub user_supervisor: u8,
    pub non_canonical: u8,
}

/// Legacy mode (chapter 7 reason table, 0x1-0xD).
pub(crate) const LEGACY: Codes = Codes {
    beyond: ADDRESS_BEYOND_MGAW,
    not_present_read: READ_NOT_ALLOWED,
    not_present_write: WRITE_NOT_ALLOWED,
    reserved: PAGING_ENTRY_RESERVED,
    access_error: PAGING_ENTRY_ACCESS_ERROR,
    bad_pointer: CONTEXT_ENTRY_RESERVED,
    no_read: READ_NOT_ALLOWED,
    no_write: WRITE_NOT_ALLOWED,
    no_exec: READ_NOT_ALLOWED,
    user_supervisor: READ_NOT_ALLOWED,
    non_canonical: ADDRESS_BEYOND_MGAW,
};

/// Scalable mode, second stage.
pub(crate) const SCALABLE_SS: Codes = Codes {
    beyond: SM_ADDRESS_BEYOND_AW,
    not_present_read: SM_SS_ENTRY_NOT_PRESENT,
    not_present_write: SM_SS_ENTRY_NOT_PRESENT,
    reserved: SM_SS_ENTRY_RESERVED,
    access_error: SM_SS_ENTRY_ACCESS_ERROR,
    bad_pointer: SM_SSPTPTR_INVALID,
    no_read: SM_READ_NOT_ALLOWED,
    no_write: SM_WRITE_NOT_ALLOWED,
    no_exec: SM_NO_EXECUTE,
    user_supervisor: SM_FS_USER_SUPERVISOR,
    non_canonical: SM_ADDRESS_BEYOND_AW,
};

/// Scalable mode, first stage.
pub(crate) const SCALABLE_FS: Codes = Codes {
    beyond: SM_ADDRESS_BEYOND_AW,
    not_present_read: SM_FS_ENTRY_NOT_PRESENT,
    not_present_write: SM_FS_ENTRY_NOT_PRESENT,
    reserved: SM_FS_ENTRY_RESERVED,
    access_error: SM_FS_ENTRY_ACCESS_ERROR,
    bad_pointer: SM_FSPTPTR_INVALID,
    no_read: SM_READ_NOT_ALLOWED,
    no_write: SM_WRITE_NOT_ALLOWED,
    no_exec: SM_NO_EXECUTE,
    user_supervisor: SM_FS_USER_SUPERVISOR,
    non_canonical: SM_FS_NON_CANONICAL,
};

/// Turns a walker fault into the mode's reason code.
pub(crate) fn walk_fail(fault: Fault, access: Access, codes: &Codes, fpd: bool) -> Fail {
    let mut not_present = false;
    let reason = match fault {
        Fault::InputRange { .. } => codes.non_canonical,
        Fault::Translation { .. } => {
            not_present = true;
            if access.write && !access.read {
                codes.not_present_write
            } else {
                codes.not_present_read
            }
        }
        Fault::ReservedBit { .. } => codes.reserved,
        Fault::BadConfig(_) => codes.bad_pointer,
        Fault::Permission { denied, .. } => match denied {
            AccessKind::Read => codes.no_read,
            AccessKind::Write => codes.no_write,
            AccessKind::Exec => codes.no_exec,
        },
        _ => codes.access_error,
    };
    Fail {
        reason,
        fpd,
        not_present,
    }
}

/// Where a translation is cached and how its faults are reported.
#[derive(Clone, Copy)]
pub(crate) struct Lookup {
    pub did: u16,
    pub tag: Option<u32>,
    pub fpd: bool,
    pub codes: Codes,
    /// The accessed and dirty flags a walk sets, if any.
    pub ad: Option<AdFlags>,
}

/// The accessed and dirty flags of a paging entry.
#[derive(Clone, Copy)]
pub(crate) struct AdFlags {
    pub accessed: u64,
    pub dirty: u64,
}

/// First-stage entries (§3.6.2, as x86 paging): A 5 in every entry a walk uses, D 6 in the leaf
/// on a write. Always set: first-stage translation has no enable for them.
pub(crate) const FS_AD: AdFlags = AdFlags {
    accessed: 1 << 5,
    dirty: 1 << 6,
};

/// Second-stage entries (§3.7.2, §9.8): A 8 in every entry a walk uses, D 9 in the leaf on a
/// write; only when the scalable-mode PASID entry's SSADE is set (never in legacy mode).
pub(crate) const SS_AD: AdFlags = AdFlags {
    accessed: 1 << 8,
    dirty: 1 << 9,
};

/// The permission check of a request against a translation.
pub(crate) fn check_rights(e: &IotlbEntry, access: Access, codes: &Codes) -> Option<u8> {
    let p = if access.privileged {
        e.supervisor
    } else {
        e.user
    };
    let denied =
        |p: Perms| access.read && !p.read || access.write && !p.write || access.exec && !p.exec;
    if !denied(p) {
        return None;
    }
    if !access.privileged && !denied(e.supervisor) {
        return Some(codes.user_supervisor);
    }
    Some(if access.read && !p.read {
        codes.no_read
    } else if access.write && !p.write {
        codes.no_write
    } else {
        codes.no_exec
    })
}

impl State<'_> {
    /// MGAW from CAP.
    pub(crate) fn mgaw(&self) -> u32 {
        ((self.cfg.cap >> CAP_MGAW_SHIFT) & 0x3f) as u32 + 1
    }

    /// Address bits at or above the host address width: reserved in every table pointer.
    pub(crate) fn above_haw(&self) -> u64 {
        bits(63, self.cfg.haw.clamp(32, 52))
    }

    /// Levels for an AW value if CAP.SAGAW lists it.
    pub(crate) fn levels_for_aw(&self, aw: u64) -> Option<u8> {
        let sagaw = (self.cfg.cap >> CAP_SAGAW_SHIFT) & 0x1f;
        ((1..=3).contains(&aw) && sagaw & 1 << aw != 0).then_some(aw as u8 + 2)
    }

    /// Reads the 64-bit word at `pa` of table memory. Callers compute `pa` with wrapping
    /// arithmetic: an address that wraps reads nothing and becomes an access-error fault.
    pub(crate) fn read(&self, pa: u64) -> Option<u64> {
        self.mem.read_u64(pa)
    }

    /// Translation of one request, without recording.
    pub(crate) fn translate_inner(
        &mut self,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<DmaOk, Fail> {
        if self.gsts & G_TE == 0 {
            // Translation disabled: requests go through untranslated.
            return Ok(DmaOk::untranslated(iova));
        }
        let Some(root) = self.root else {
            return Err(Fail::new(ROOT_TABLE_ACCESS_ERROR, false));
        };
        match root.mode {
            RootMode::Legacy => self.legacy(root.addr, sid, pasid, iova, access),
            RootMode::Scalable => self.scalable(root.addr, sid, pasid, iova, access),
            RootMode::Invalid => Err(Fail::new(SM_ROOT_TABLE_INVALID, false)),
        }
    }

    fn legacy(
        &mut self,
        root: u64,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<DmaOk, Fail> {
        if pasid.is_some() {
            return Err(Fail::new(SM_TTM0_REQUEST_WITH_PASID, false));
        }
        let ctx = self.legacy_context(root, sid)?;
        if iova.checked_shr(self.mgaw()).unwrap_or(0) != 0 {
            return Err(Fail::new(ADDRESS_BEYOND_MGAW, ctx.fpd));
        }
        let look = Lookup {
            did: ctx.did,
            tag: None,
            fpd: ctx.fpd,
            codes: LEGACY,
            ad: None,
        };
        if ctx.tt == 2 {
            return self.pass_through(look, iova, access, false);
        }
        self.second_stage(look, ctx.slptptr, ctx.levels, iova, access, false)
    }

    /// The legacy context entry for `sid`, from the context-cache or the tables.
    fn legacy_context(&mut self, root: u64, sid: u16) -> Result<LegacyContext, Fail> {
        match self.caches.context.get(&sid) {
            Some(CachedContext::Legacy(c)) => return Ok(*c),
            Some(CachedContext::NotPresent { fpd, reason }) => {
                return Err(Fail::new(*reason, *fpd))
            }
            _ => {}
        }
        let (bus, devfn) = (u64::from(sid >> 8), u64::from(sid & 0xff));
        let entry = root.wrapping_add(bus * 16);
        let root_fail = |r| Fail::new(r, false);
        let (Some(lo), Some(hi)) = (self.read(entry), self.read(entry.wrapping_add(8))) else {
            return Err(root_fail(ROOT_TABLE_ACCESS_ERROR));
        };
        if lo & 1 == 0 {
            return Err(root_fail(ROOT_ENTRY_NOT_PRESENT));
        }
        if lo & (bits(11, 1) | self.above_haw()) != 0 || hi != 0 {
            return Err(root_fail(ROOT_ENTRY_RESERVED));
        }
        let entry = (lo & bits(63, 12)).wrapping_add(devfn * 16);
        let (Some(lo), Some(hi)) = (self.read(entry), self.read(entry.wrapping_add(8))) else {
            return Err(root_fail(CONTEXT_TABLE_ACCESS_ERROR));
        };
        let fpd = lo & 2 != 0;
        if lo & 1 == 0 {
            if self.caching_mode() {
                let reason = CONTEXT_ENTRY_NOT_PRESENT;
                self.caches
                    .context
                    .insert(sid, CachedContext::NotPresent { fpd, reason });
            }
            return Err(Fail::new(CONTEXT_ENTRY_NOT_PRESENT, fpd));
        }
        let did = ((hi >> 8) & 0xffff) as u16;
        let reserved_lo = bits(11, 4) | self.above_haw();
        let reserved_hi = 1 << 7 | bits(63, 24);
        if lo & reserved_lo != 0 || hi & reserved_hi != 0 || u32::from(did) >= self.domains() {
            return Err(Fail::new(CONTEXT_ENTRY_RESERVED, fpd));
        }
        let tt = ((lo >> 2) & 3) as u8;
        let ecap = self.cfg.ecap;
        let tt_ok = tt == 0 || tt == 1 && ecap & ECAP_DT != 0 || tt == 2 && ecap & ECAP_PT != 0;
        // Pass-through ignores AW and SLPTPTR; the other types walk an AW-sized table.
        let levels = if tt == 2 {
            Some(0)
        } else {
            self.levels_for_aw(hi & 7)
        };
        let Some(levels) = levels.filter(|_| tt_ok) else {
            return Err(Fail::new(CONTEXT_ENTRY_INVALID, fpd));
        };
        let ctx = LegacyContext {
            fpd,
            tt,
            levels,
            slptptr: lo & bits(63, 12),
            did,
        };
        self.caches.context.insert(sid, CachedContext::Legacy(ctx));
        Ok(ctx)
    }

    /// Number of domain-ids CAP.ND allows: 2^(4 + 2 * ND) (ND = 7 is reserved; treated as 6).
    fn domains(&self) -> u32 {
        let nd = (self.cfg.cap & CAP_ND).min(6) as u32;
        1 << (4 + 2 * nd)
    }

    pub(crate) fn caching_mode(&self) -> bool {
        self.cfg.cap & CAP_CM != 0
    }

    /// A pass-through translation: output = input, cached like any other.
    pub(crate) fn pass_through(
        &mut self,
        look: Lookup,
        iova: u64,
        access: Access,
        snoop: bool,
    ) -> Result<DmaOk, Fail> {
        let haw = self.cfg.haw.clamp(32, 52);
        self.through_iotlb(look, iova, access, (EntryKind::SecondStage, 0), |_, _| {
            if iova >> haw != 0 {
                return Err(Fail::new(look.codes.beyond, look.fpd));
            }
            let all = Perms {
                read: true,
                write: true,
                exec: false,
            };
            let entry = IotlbEntry {
                kind: EntryKind::SecondStage,
                pa: iova & !0xfff,
                user: all,
                supervisor: all,
                snoop,
                negative: None,
                dirty_at: None,
            };
            Ok((12, entry))
        })
    }

    /// The walker configuration of a second-stage table.
    pub(crate) fn ss_config(&self, root: u64, levels: u8) -> vtd_ss::VtdSsConfig {
        let sllps = (self.cfg.cap >> CAP_SLLPS_SHIFT) & 0xf;
        vtd_ss::VtdSsConfig {
            root: PhysAddr::new(root),
            levels,
            haw: self.cfg.haw.clamp(32, 52),
            large_2m: sllps & 1 != 0,
            large_1g: sllps & 2 != 0,
            snoop_control: self.cfg.ecap & ECAP_SC != 0,
        }
    }

    /// A second-stage translation through the IOTLB. `pgsnp`: the PASID entry forces snooping.
    pub(crate) fn second_stage(
        &mut self,
        look: Lookup,
        root: u64,
        levels: u8,
        iova: u64,
        access: Access,
        pgsnp: bool,
    ) -> Result<DmaOk, Fail> {
        let cfg = self.ss_config(root, levels);
        let kind = (EntryKind::SecondStage, levels);
        self.through_iotlb(look, iova, access, kind, |_, mem| {
            let t = vtd_ss::translate(mem, &cfg, Iova::new(iova), Access::default())
                .map_err(|f| walk_fail(f, access, &look.codes, look.fpd))?;
            let rights = Perms {
                read: t.read,
                write: t.write,
                exec: false,
            };
            let size = t.page_size_log2;
            let entry = IotlbEntry {
                kind: EntryKind::SecondStage,
                pa: t.pa.get() & !((1u64 << size) - 1),
                user: rights,
                supervisor: rights,
                snoop: t.attrs.snoop || pgsnp,
                negative: None,
                dirty_at: None,
            };
            Ok((size, entry))
        })
    }

    /// Looks `iova` up in the IOTLB; on a miss runs `walk` and caches its result (and, with
    /// CAP.CM, a not-present result). Then checks the request's rights.
    ///
    /// `levels` is the level of the root table the walk starts at (0: no table walk, or one the
    /// paging-structure cache does not hold); the non-leaf entries a successful walk read are
    /// cached with the input range each maps.
    pub(crate) fn through_iotlb(
        &mut self,
        look: Lookup,
        iova: u64,
        access: Access,
        (kind, levels): (EntryKind, u8),
        walk: impl FnOnce(&Self, &WalkMem<'_>) -> Result<(u32, IotlbEntry), Fail>,
    ) -> Result<DmaOk, Fail> {
        let (size, entry, hit) = match self.caches.iotlb_lookup(look.did, look.tag, iova) {
            Some((size, entry)) => {
                self.stats.iotlb_hits += 1;
                (size, entry, true)
            }
            None => {
                self.stats.iotlb_misses += 1;
                let mem = WalkMem {
                    mem: self.mem,
                    psc: &self.caches.psc,
                    did: look.did,
                    tag: look.tag,
                    reads: RefCell::new(Vec::new()),
                };
                let result = walk(self, &mem);
                let reads = mem.reads.into_inner();
                match result {
                    Ok((size, mut entry)) => {
                        // A nested walk sets its second-stage flags itself (`scalable.rs`).
                        entry.dirty_at = self.set_accessed(look, &reads).or(entry.dirty_at);
                        self.cache_walk(look, iova, kind, levels, &reads);
                        self.caches
                            .iotlb_insert(look.did, look.tag, iova, size, entry);
                        (size, entry, false)
                    }
                    Err(fail) => {
                        if fail.not_present && self.caching_mode() {
                            let negative = IotlbEntry {
                                kind,
                                pa: 0,
                                user: Perms::default(),
                                supervisor: Perms::default(),
                                snoop: false,
                                negative: Some(fail.reason),
                                dirty_at: None,
                            };
                            self.caches
                                .iotlb_insert(look.did, look.tag, iova, 12, negative);
                        }
                        return Err(fail);
                    }
                }
            }
        };
        if let Some(reason) = entry.negative {
            return Err(Fail::new(reason, look.fpd));
        }
        if let Some(reason) = check_rights(&entry, access, &look.codes) {
            return Err(Fail::new(reason, look.fpd));
        }
        if let Some((leaf, dirty)) = entry.dirty_at.filter(|_| access.write && !self.probing) {
            self.set_flag(leaf, dirty);
            let clean = IotlbEntry {
                dirty_at: None,
                ..entry
            };
            self.caches
                .iotlb_insert(look.did, look.tag, iova, size, clean);
        }
        self.done(look, entry, size, iova, hit, access)
    }

    /// Sets the accessed flag in every entry a successful walk used (`reads`, the leaf last),
    /// as an atomic read-modify-write. Returns where the first write must set the dirty flag:
    /// the leaf, unless it is dirty already or flags are not tracked.
    fn set_accessed(&self, look: Lookup, reads: &[(u64, u64)]) -> Option<(u64, u64)> {
        self.set_flags(look.ad, reads)
    }

    /// [`Self::set_accessed`] with the flags `ad` (none: nothing tracked).
    pub(crate) fn set_flags(
        &self,
        ad: Option<AdFlags>,
        reads: &[(u64, u64)],
    ) -> Option<(u64, u64)> {
        let ad = ad.filter(|_| !self.probing)?;
        for &(pa, _) in reads {
            self.set_flag(pa, ad.accessed);
        }
        let &(leaf, value) = reads.last()?;
        (value & ad.dirty == 0).then_some((leaf, ad.dirty))
    }

    /// Sets `flag` in the entry at `pa` with compare-and-exchange, as the hardware's locked
    /// update does (a concurrent update by software is never lost).
    fn set_flag(&self, pa: u64, flag: u64) {
        loop {
            let Some(value) = self.mem.read_u64(pa) else {
                return;
            };
            if value & flag != 0 {
                return;
            }
            match self.mem.compare_exchange_u64(pa, value, value | flag) {
                Some(Err(_)) => continue,
                _ => return,
            }
        }
    }

    /// Keeps the non-leaf entries of a successful walk (all reads but the last).
    pub(super) fn cache_walk(
        &mut self,
        look: Lookup,
        iova: u64,
        kind: EntryKind,
        levels: u8,
        reads: &[(u64, u64)],
    ) {
        if levels == 0 {
            return;
        }
        let non_leaf = reads.len().saturating_sub(1);
        for (i, &(pa, value)) in reads.iter().enumerate().take(non_leaf) {
            let Some(level) = u32::from(levels).checked_sub(i as u32).filter(|&l| l >= 2) else {
                return;
            };
            let span = PAGE_SHIFT + 9 * (level - 1);
            let base = iova & !((1u64 << span) - 1);
            let entry = PscEntry {
                kind,
                value,
                base,
                span,
            };
            self.caches.psc.insert((look.did, look.tag, pa), entry);
        }
    }

    fn done(
        &self,
        look: Lookup,
        entry: IotlbEntry,
        size: u32,
        iova: u64,
        hit: bool,
        access: Access,
    ) -> Result<DmaOk, Fail> {
        let rights = if access.privileged {
            entry.supervisor
        } else {
            entry.user
        };
        Ok(DmaOk {
            pa: entry.pa | (iova & ((1u64 << size) - 1)),
            snoop: entry.snoop,
            page_size_log2: size,
            did: look.did,
            from_iotlb: hit,
            read: rights.read,
            write: rights.write,
        })
    }
}

const PAGE_SHIFT: u32 = 12;

/// Table memory as a walk sees it: cached non-leaf entries of the walk's domain first, then
/// memory; every word read is recorded, in order, for the paging-structure cache.
pub(crate) struct WalkMem<'a> {
    mem: &'a Arena,
    psc: &'a BTreeMap<PscKey, PscEntry>,
    did: u16,
    tag: Option<u32>,
    reads: RefCell<Vec<(u64, u64)>>,
}

impl PhysMem for WalkMem<'_> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let value = match self.psc.get(&(self.did, self.tag, pa)) {
            Some(e) => e.value,
            None => self.mem.read_u64(pa)?,
        };
        self.reads.borrow_mut().push((pa, value));
        Some(value)
    }
}
