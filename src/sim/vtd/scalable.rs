//! Scalable-mode translation (VT-d spec rev 4.1, §3.4.3 "Scalable-Mode Address Translation";
//! §9.2 scalable-mode root entry, §9.4 scalable-mode context entry, §9.5 PASID directory
//! entry, §9.6 PASID table entry; §3.8 nested translation).
//!
//! - Scalable root entry (128-bit, by bus): 0 LP, 11:1 reserved, 63:12 LCTP (devfn 0-127);
//!   64 UP, 75:65 reserved, 127:76 UCTP (devfn 128-255).
//! - Scalable context entry (256-bit, by devfn & 0x7f): 0 P, 1 FPD, 2 DTE, 3 PASIDE, 4 PRE,
//!   8:5 reserved, 11:9 PDTS (directory of 2^(PDTS + 7) entries), 63:12 PASIDDIRPTR; 83:64
//!   RID_PASID, 84 RID_PRIV, 127:85 reserved; 255:128 reserved.
//! - PASID directory entry (64-bit, by PASID[19:6]): 0 P, 1 FPD, 11:2 reserved, 63:12 SMPTBLPTR.
//! - PASID table entry (512-bit, by PASID[5:0]): 0 P, 1 FPD, 4:2 AW, 8:6 PGTT (001 first stage,
//!   010 second stage, 011 nested, 100 pass-through), 9 SSADE, 63:12 SSPTPTR; 79:64 DID,
//!   86:80 reserved, 87 PWSNP, 88 PGSNP; 128 SRE, 129 ERE, 131:130 FSPM (00 4-level, 01
//!   5-level), 132 WPE, 133 NXE, 134 SMEP, 135 EAFE, 139:136 reserved, 191:140 FSPTPTR.
//!   Qwords 3-7 are not checked by the model.
//!
//! Requests without PASID use the context entry's RID_PASID. IOTLB and PASID-cache entries are
//! tagged with the PASID used. FPD of the context, PASID directory and PASID entries each
//! suppress recording of the faults found below them, except errors reading a table (those
//! are not qualified faults: the FPD that would apply is in the entry that could not be read).
//!
//! Nested: the first-stage walk reads its tables, and its output, through the second stage; a
//! second-stage fault while reading a first-stage table is reported as a first-stage access
//! error (0x70), one on the final output address with the second-stage codes. The non-leaf
//! entries of each successful second-stage walk a nested walk makes are cached, tagged with
//! the DID alone (no PASID: second-stage caching is per domain, §6.2), keyed as the
//! paging-structure cache keys a legacy walk's (`cache.rs`): an IOTLB invalidation (type 2) of
//! the DID drops them, a PASID-based one (type 6) does not.

use super::arena::PhysMem;
use super::cache::{
    CachedContext, EntryKind, IotlbEntry, PasidEntry, Pgtt, PscEntry, PscKey, ScalableContext,
};
use super::fault::*;
use super::regs::*;
use super::translate::{walk_fail, Fail, Lookup, FS_AD, SCALABLE_FS, SCALABLE_SS, SS_AD};
use super::walk::{vtd_fs, vtd_ss, Access, Perms};
use super::{bits, DmaOk, RootMode, State};
use crate::mem::{Iova, PhysAddr};
use crate::sim::walk::Translation;
use std::collections::BTreeMap;
use std::vec::Vec;

/// Memory as a nested first-stage walk sees it: guest-physical addresses translated by the
/// second stage.
struct NestedMem<'a, M: PhysMem> {
    ss: &'a NestedSs<'a, M>,
}

/// The second stage of a nested walk: the nest parent's tables as the walk sees them (entries
/// the paging-structure cache holds for the DID first, then memory), each successful walk's
/// reads logged, by guest-physical input, for that cache.
struct NestedSs<'a, M: PhysMem> {
    mem: &'a M,
    psc: &'a BTreeMap<PscKey, PscEntry>,
    did: u16,
    cfg: vtd_ss::VtdSsConfig,
    walks: &'a core::cell::RefCell<Vec<SsWalk>>,
}

/// A successful second-stage walk of a nested walk: its input, the words it read (leaf last).
type SsWalk = (u64, Vec<(u64, u64)>);

/// A second-stage translation and the words its walk read (leaf last).
type SsTranslation = (Translation<vtd_ss::VtdSsAttrs>, Vec<(u64, u64)>);

/// Table memory of one second-stage walk: cached entries of the DID first, reads recorded.
struct SsRead<'a, M: PhysMem> {
    mem: &'a M,
    psc: &'a BTreeMap<PscKey, PscEntry>,
    did: u16,
    reads: core::cell::RefCell<Vec<(u64, u64)>>,
}

impl<M: PhysMem> PhysMem for SsRead<'_, M> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        let value = match self.psc.get(&(self.did, None, pa)) {
            Some(e) => e.value,
            None => self.mem.read_u64(pa)?,
        };
        self.reads.borrow_mut().push((pa, value));
        Some(value)
    }
}

impl<M: PhysMem> NestedSs<'_, M> {
    /// Translates guest-physical `gpa`; returns the translation and the words the walk read.
    fn translate(&self, gpa: u64) -> Result<SsTranslation, crate::sim::walk::Fault> {
        let mem = SsRead {
            mem: self.mem,
            psc: self.psc,
            did: self.did,
            reads: core::cell::RefCell::new(Vec::new()),
        };
        let t = vtd_ss::translate(&mem, &self.cfg, Iova::new(gpa), Access::default())?;
        let reads = mem.reads.into_inner();
        self.walks.borrow_mut().push((gpa, reads.clone()));
        Ok((t, reads))
    }
}

impl<M: PhysMem> PhysMem for NestedMem<'_, M> {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        let (t, _) = self.ss.translate(gpa).ok()?;
        if !t.read {
            return None;
        }
        self.ss.mem.read_u64(t.pa.get())
    }
}

impl State<'_> {
    /// Whether the latched root table is a scalable-mode one.
    pub(crate) fn scalable_mode(&self) -> bool {
        self.root.is_some_and(|r| r.mode == RootMode::Scalable)
    }

    pub(crate) fn scalable(
        &mut self,
        root: u64,
        sid: u16,
        pasid: Option<u32>,
        iova: u64,
        access: Access,
    ) -> Result<DmaOk, Fail> {
        let ctx = self.scalable_context(root, sid)?;
        let pasid = match pasid {
            Some(_) if !ctx.paside => return Err(Fail::new(SM_CONTEXT_PASIDE_CLEAR, ctx.fpd)),
            Some(p) => p,
            None => ctx.rid_pasid,
        };
        let pe = self.pasid_entry(sid, &ctx, pasid)?;
        let fpd = ctx.fpd || pe.fpd;
        if access.privileged && !pe.sre {
            return Err(Fail::new(SM_PASID_ENTRY_SRE_CLEAR, fpd));
        }
        if access.exec && !pe.ere {
            return Err(Fail::new(SM_PASID_ENTRY_ERE_CLEAR, fpd));
        }
        let look = |codes, ad| Lookup {
            did: pe.did,
            tag: Some(pasid),
            fpd,
            codes,
            ad,
        };
        match pe.pgtt {
            Pgtt::PassThrough => self.pass_through(look(SCALABLE_SS, None), iova, access, pe.pgsnp),
            Pgtt::SecondStage => {
                let l = look(SCALABLE_SS, pe.ssade.then_some(SS_AD));
                self.second_stage(l, pe.ssptptr, pe.ss_levels, iova, access, pe.pgsnp)
            }
            // Nested walks read the first stage through the second: its flags are not modelled;
            // with SSADE the second-stage flags of the output are (`first_stage`).
            Pgtt::FirstStage => self.first_stage(look(SCALABLE_FS, Some(FS_AD)), &pe, iova, access),
            Pgtt::Nested => self.first_stage(look(SCALABLE_FS, None), &pe, iova, access),
        }
    }

    pub(crate) fn scalable_context(
        &mut self,
        root: u64,
        sid: u16,
    ) -> Result<ScalableContext, Fail> {
        match self.caches.context.get(&sid) {
            Some(CachedContext::Scalable(c)) => return Ok(*c),
            Some(CachedContext::NotPresent { fpd, reason }) => {
                return Err(Fail::new(*reason, *fpd))
            }
            _ => {}
        }
        let (bus, devfn) = (u64::from(sid >> 8), u64::from(sid & 0xff));
        let entry = root.wrapping_add(bus * 16 + if devfn < 128 { 0 } else { 8 });
        let Some(half) = self.read(entry) else {
            return Err(Fail::new(SM_ROOT_ENTRY_ACCESS_ERROR, false));
        };
        if half & 1 == 0 {
            return Err(Fail::new(SM_ROOT_ENTRY_NOT_PRESENT, false));
        }
        if half & (bits(11, 1) | self.above_haw()) != 0 {
            return Err(Fail::new(SM_ROOT_ENTRY_RESERVED, false));
        }
        let entry = (half & bits(63, 12)).wrapping_add((devfn & 0x7f) * 32);
        let mut q = [0u64; 4];
        for (i, w) in q.iter_mut().enumerate() {
            *w = self
                .read(entry.wrapping_add(8 * i as u64))
                .ok_or(Fail::new(SM_CONTEXT_ENTRY_ACCESS_ERROR, false))?;
        }
        let fpd = q[0] & 2 != 0;
        if q[0] & 1 == 0 {
            if self.caching_mode() {
                let reason = SM_CONTEXT_ENTRY_NOT_PRESENT;
                self.caches
                    .context
                    .insert(sid, CachedContext::NotPresent { fpd, reason });
            }
            return Err(Fail::new(SM_CONTEXT_ENTRY_NOT_PRESENT, fpd));
        }
        let reserved = q[0] & (bits(8, 5) | self.above_haw()) != 0
            || q[1] & bits(63, 21) != 0
            || q[2] != 0
            || q[3] != 0;
        if reserved {
            return Err(Fail::new(SM_CONTEXT_ENTRY_RESERVED, fpd));
        }
        let (dte, paside) = (q[0] & 4 != 0, q[0] & 8 != 0);
        let ecap = self.cfg.ecap;
        if dte && ecap & ECAP_DT == 0 || paside && ecap & ECAP_PASID == 0 {
            return Err(Fail::new(SM_CONTEXT_ENTRY_INVALID, fpd));
        }
        let ctx = ScalableContext {
            fpd,
            paside,
            pre: q[0] & 0x10 != 0,
            pasid_dir: q[0] & bits(63, 12),
            pdts: ((q[0] >> 9) & 7) as u8,
            rid_pasid: (q[1] & bits(19, 0)) as u32,
        };
        self.caches
            .context
            .insert(sid, CachedContext::Scalable(ctx));
        Ok(ctx)
    }

    fn pasid_entry(
        &mut self,
        sid: u16,
        ctx: &ScalableContext,
        pasid: u32,
    ) -> Result<PasidEntry, Fail> {
        let pss = ((self.cfg.ecap >> ECAP_PSS_SHIFT) & 0x1f) as u32 + 1;
        let dir_index = u64::from(pasid >> 6);
        if dir_index >= 1u64 << (u32::from(ctx.pdts) + 7) || u64::from(pasid) >> pss != 0 {
            return Err(Fail::new(SM_PASID_TOO_LARGE, ctx.fpd));
        }
        if let Some(pe) = self.caches.pasid.get(&(sid, pasid)) {
            return Ok(*pe);
        }
        let dir = self
            .read(ctx.pasid_dir.wrapping_add(dir_index * 8))
            .ok_or(Fail::new(SM_PASID_DIR_ACCESS_ERROR, false))?;
        let fpd = ctx.fpd || dir & 2 != 0;
        if dir & 1 == 0 {
            return Err(Fail::new(SM_PASID_DIR_NOT_PRESENT, fpd));
        }
        if dir & (bits(11, 2) | self.above_haw()) != 0 {
            return Err(Fail::new(SM_PASID_DIR_RESERVED, fpd));
        }
        let entry = (dir & bits(63, 12)).wrapping_add(u64::from(pasid & 0x3f) * 64);
        let mut q = [0u64; 8];
        for (i, w) in q.iter_mut().enumerate() {
            *w = self
                .read(entry.wrapping_add(8 * i as u64))
                .ok_or(Fail::new(SM_PASID_ENTRY_ACCESS_ERROR, false))?;
        }
        let fpd = fpd || q[0] & 2 != 0;
        if q[0] & 1 == 0 {
            return Err(Fail::new(SM_PASID_ENTRY_NOT_PRESENT, fpd));
        }
        if q[1] & bits(22, 16) != 0 || q[2] & bits(11, 8) != 0 {
            return Err(Fail::new(SM_PASID_ENTRY_RESERVED, fpd));
        }
        let pe = self
            .decode_pasid_entry(q, fpd)
            .ok_or(Fail::new(SM_PASID_ENTRY_INVALID, fpd))?;
        self.caches.pasid.insert((sid, pasid), pe);
        Ok(pe)
    }

    /// The PASID entry's programming, or `None` where it is invalid for this unit.
    fn decode_pasid_entry(&self, q: [u64; 8], fpd: bool) -> Option<PasidEntry> {
        let ecap = self.cfg.ecap;
        let pgtt = match (q[0] >> 6) & 7 {
            1 if ecap & ECAP_FLTS != 0 => Pgtt::FirstStage,
            2 if ecap & ECAP_SLTS != 0 => Pgtt::SecondStage,
            3 if ecap & (ECAP_NEST | ECAP_FLTS | ECAP_SLTS)
                == ECAP_NEST | ECAP_FLTS | ECAP_SLTS =>
            {
                Pgtt::Nested
            }
            4 if ecap & ECAP_PT != 0 => Pgtt::PassThrough,
            _ => return None,
        };
        let ss_levels = match pgtt {
            Pgtt::SecondStage | Pgtt::Nested => self.levels_for_aw((q[0] >> 2) & 7)?,
            _ => 0,
        };
        let fs_levels = match ((q[2] >> 2) & 3, pgtt) {
            (_, Pgtt::SecondStage | Pgtt::PassThrough) => 0,
            (0, _) => 4,
            (1, _) if self.cfg.cap & CAP_FS5LP != 0 => 5,
            _ => return None,
        };
        Some(PasidEntry {
            fpd,
            pgtt,
            did: (q[1] & 0xffff) as u16,
            ss_levels,
            ssptptr: q[0] & bits(63, 12),
            pgsnp: q[1] & 1 << 24 != 0,
            sre: q[2] & 1 != 0,
            ere: q[2] & 2 != 0,
            fs_levels,
            wpe: q[2] & 1 << 4 != 0,
            nxe: q[2] & 1 << 5 != 0,
            smep: q[2] & 1 << 6 != 0,
            fsptptr: q[2] & bits(63, 12),
            ssade: q[0] & 1 << 9 != 0,
        })
    }

    fn first_stage(
        &mut self,
        look: Lookup,
        pe: &PasidEntry,
        iova: u64,
        access: Access,
    ) -> Result<DmaOk, Fail> {
        let cfg = vtd_fs::VtdFsConfig {
            root: PhysAddr::new(pe.fsptptr),
            levels: pe.fs_levels,
            haw: self.cfg.haw.clamp(32, 52),
            large_1g: self.cfg.cap & CAP_FS1GP != 0,
            execute_disable: pe.nxe,
            write_protect: pe.wpe,
            smep: pe.smep,
        };
        let nested = (pe.pgtt == Pgtt::Nested).then(|| self.ss_config(pe.ssptptr, pe.ss_levels));
        let kind = if nested.is_some() {
            EntryKind::Nested
        } else {
            EntryKind::FirstStage
        };
        let pgsnp = pe.pgsnp;
        let ss_ad = (nested.is_some() && pe.ssade).then_some(SS_AD);
        // The first-stage entries of a nested walk are not cached (only its second-stage
        // walks' entries are, below).
        let levels = if nested.is_some() { 0 } else { pe.fs_levels };
        let walks = core::cell::RefCell::new(Vec::new());
        let r = self.through_iotlb(look, iova, access, (kind, levels), |st, mem| {
            let ss = nested.map(|cfg| NestedSs {
                mem: &st.mem,
                psc: &st.caches.psc,
                did: look.did,
                cfg,
                walks: &walks,
            });
            let fs_fail = |f| walk_fail(f, access, &SCALABLE_FS, look.fpd);
            let input = Iova::new(iova);
            let t = match &ss {
                None => vtd_fs::translate(mem, &cfg, input, Access::default()),
                Some(ss) => vtd_fs::translate(&NestedMem { ss }, &cfg, input, Access::default()),
            }
            .map_err(fs_fail)?;
            let mut size = t.page_size_log2;
            let (mut user, mut supervisor) = (t.attrs.user, t.attrs.supervisor);
            let (mut pa, mut snoop) = (t.pa.get(), pgsnp);
            let mut dirty_at = None;
            if let Some(ss) = &ss {
                let (s, reads) = ss
                    .translate(pa)
                    .map_err(|f| walk_fail(f, access, &SCALABLE_SS, look.fpd))?;
                // SSADE: the second-stage walk of the output sets A, and the first write D
                // in its leaf (§3.8 with §3.7.2; the flags of the walks of the first-stage
                // tables themselves are not modelled).
                dirty_at = st.set_flags(ss_ad, &reads);
                size = size.min(s.page_size_log2);
                pa = s.pa.get();
                snoop |= s.attrs.snoop;
                let and = |p: Perms| Perms {
                    read: p.read && s.read,
                    write: p.write && s.write,
                    exec: p.exec && s.read,
                };
                user = and(user);
                supervisor = and(supervisor);
            }
            let entry = IotlbEntry {
                kind,
                pa: pa & !((1u64 << size) - 1),
                user,
                supervisor,
                snoop,
                negative: None,
                dirty_at,
            };
            Ok((size, entry))
        });
        // Whatever the nested walk's outcome, its successful second-stage walks are cached.
        let ss_look = Lookup { tag: None, ..look };
        for (gpa, reads) in walks.into_inner() {
            self.cache_walk(ss_look, gpa, EntryKind::SecondStage, pe.ss_levels, &reads);
        }
        r
    }
}
