//! The command consumer: Arm IHI 0070 G.b §3.5 (queues, PROD/CONS and wrap), §4 (commands:
//! §4.2 prefetch, §4.3 configuration invalidation, §4.4 TLB invalidation, §4.5 ATC_INV, §4.7
//! CMD_SYNC) and §7.1 (command errors: CERROR_ILL, CERROR_ABT; consumption stops at the bad
//! command, CMDQ_CONS.ERR, GERROR.CMDQ_ERR, resumption when GERRORN acknowledges it).
//!
//! A command is 16 bytes: `dw0[7:0]` is the opcode. Every field the model does not list for an
//! opcode is reserved: a set reserved bit (including SSec on the Non-secure queue, VMID/ASID
//! bits above 8 without VMID16/ASID16, and TG/NUM/SCALE/TTL without IDR3.RIL) is CERROR_ILL.

use super::config::{idr0, idr3, SmmuModelConfig};
use super::regs::{cr0, gerror, QueueShape, CMDQ_CONS_ERR_MASK, CMDQ_CONS_ERR_SHIFT};
use super::tlb::{AddrRange, Invalidation, Scope};
use super::{translate, State};
use crate::sim::arena::{Arena, PhysMem};

/// Command opcodes (§4.1.2).
pub mod op {
    /// PREFETCH_CONFIG.
    pub const PREFETCH_CONFIG: u8 = 0x01;
    /// PREFETCH_ADDR.
    pub const PREFETCH_ADDR: u8 = 0x02;
    /// CFGI_STE.
    pub const CFGI_STE: u8 = 0x03;
    /// CFGI_STE_RANGE (CFGI_ALL is this opcode with Range = 31).
    pub const CFGI_STE_RANGE: u8 = 0x04;
    /// CFGI_CD.
    pub const CFGI_CD: u8 = 0x05;
    /// CFGI_CD_ALL.
    pub const CFGI_CD_ALL: u8 = 0x06;
    /// TLBI_NH_ALL.
    pub const TLBI_NH_ALL: u8 = 0x10;
    /// TLBI_NH_ASID.
    pub const TLBI_NH_ASID: u8 = 0x11;
    /// TLBI_NH_VA.
    pub const TLBI_NH_VA: u8 = 0x12;
    /// TLBI_NH_VAA.
    pub const TLBI_NH_VAA: u8 = 0x13;
    /// TLBI_EL2_ALL.
    pub const TLBI_EL2_ALL: u8 = 0x20;
    /// TLBI_S12_VMALL.
    pub const TLBI_S12_VMALL: u8 = 0x28;
    /// TLBI_S2_IPA.
    pub const TLBI_S2_IPA: u8 = 0x2a;
    /// TLBI_NSNH_ALL.
    pub const TLBI_NSNH_ALL: u8 = 0x30;
    /// ATC_INV.
    pub const ATC_INV: u8 = 0x40;
    /// PRI_RESP.
    pub const PRI_RESP: u8 = 0x41;
    /// RESUME.
    pub const RESUME: u8 = 0x44;
    /// STALL_TERM.
    pub const STALL_TERM: u8 = 0x45;
    /// CMD_SYNC.
    pub const CMD_SYNC: u8 = 0x46;
}

/// CMDQ_CONS.ERR codes (§7.1).
pub mod cerror {
    /// No error.
    pub const NONE: u8 = 0;
    /// Illegal command.
    pub const ILL: u8 = 1;
    /// Abort on command fetch.
    pub const ABT: u8 = 2;
    /// ATC invalidation completion timeout reported at a CMD_SYNC.
    pub const ATC_INV_SYNC: u8 = 3;
}

const fn bits(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
}

const OPCODE: u64 = bits(7, 0);
const SSV: u64 = 1 << 11;
const SSID: u64 = bits(31, 12);
const SID: u64 = bits(63, 32);
const VMID: u64 = bits(47, 32);
const ASID: u64 = bits(63, 48);
const NUM: u64 = bits(16, 12);
const SCALE: u64 = bits(24, 20);
const LEAF: u64 = 1;
const TTL: u64 = bits(9, 8);
const TG: u64 = bits(11, 10);
const VA: u64 = bits(63, 12);
const IPA: u64 = bits(51, 12);
const ATC_GLOBAL: u64 = 1 << 9;
const ATC_SIZE: u64 = bits(5, 0);
const SYNC_CS_SHIFT: u32 = 12;
const SYNC_DW0: u64 = bits(13, 12) | bits(23, 22) | bits(27, 24) | bits(63, 32);
const SYNC_MSIADDR: u64 = bits(51, 2);
const CS_SIG_IRQ: u64 = 1;
const CS_SIG_SEV: u64 = 2;

/// What executing one command did.
enum Outcome {
    Done,
    /// CMD_SYNC that does not complete (injected): CONS stays on it.
    Stalled,
}

/// Consumes commands from CONS to PROD while the queue is enabled and no error is pending.
pub(crate) fn consume(state: &mut State, mem: &Arena, cfg: &SmmuModelConfig) {
    loop {
        let regs = &state.regs;
        if !regs.enabled(cr0::CMDQEN)
            || regs.cmdq_error_pending()
            || state.sync_stalled
            || state.service_failure
        {
            return;
        }
        let q = QueueShape::from_base(regs.cmdq_base, cfg.cmdq_max_log2());
        let (prod, cons) = (regs.cmdq_prod, regs.cmdq_cons);
        if q.empty(prod, cons) {
            return;
        }
        let cmd = q
            .slot(cons, 16)
            .and_then(|a| Some([mem.read_u64(a)?, mem.read_u64(a.checked_add(8)?)?]));
        let opcode = cmd.map(|c| c[0] as u8);
        let result = match (cmd, state.command_fault(opcode)) {
            (None, _) => Err(cerror::ABT),
            (Some(_), Some(code)) => Err(code),
            (Some(cmd), None) => {
                state.log.push(cmd);
                execute(state, mem, cfg, cmd)
            }
        };
        match result {
            Ok(Outcome::Done) => {
                state.command_consumed(opcode.unwrap_or(0));
                let regs = &mut state.regs;
                regs.cmdq_cons = regs.cmdq_cons & CMDQ_CONS_ERR_MASK | q.next(cons);
            }
            Ok(Outcome::Stalled) => {
                state.sync_stalled = true;
                return;
            }
            Err(code) => {
                let regs = &mut state.regs;
                regs.cmdq_cons =
                    regs.cmdq_cons & !CMDQ_CONS_ERR_MASK | u32::from(code) << CMDQ_CONS_ERR_SHIFT;
                regs.raise_gerror(gerror::CMDQ_ERR);
                state.stats.cerrors += 1;
                return;
            }
        }
    }
}

/// Checks that only `allowed` bits of each word are set.
fn only(cmd: [u64; 2], allowed: [u64; 2]) -> Result<(), u8> {
    if cmd[0] & !(allowed[0] | OPCODE) != 0 || cmd[1] & !allowed[1] != 0 {
        return Err(cerror::ILL);
    }
    Ok(())
}

fn execute(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    cmd: [u64; 2],
) -> Result<Outcome, u8> {
    let [dw0, dw1] = cmd;
    let opcode = dw0 as u8;
    let sid = (dw0 >> 32) as u32;
    let ssid = ((dw0 & SSID) >> 12) as u32;
    let vmid = vmid_field(cfg, dw0)?;
    let asid = asid_field(cfg, dw0)?;
    let (s1, s2) = (cfg.has0(idr0::S1P), cfg.has0(idr0::S2P));
    let outcome = match opcode {
        op::PREFETCH_CONFIG => {
            only(cmd, [SSV | SSID | SID, 0])?;
            translate::prefetch_config(state, mem, cfg, sid);
            Outcome::Done
        }
        op::PREFETCH_ADDR => {
            only(cmd, [SSV | SSID | SID, bits(9, 0) | VA])?;
            Outcome::Done
        }
        op::CFGI_STE => {
            only(cmd, [SID, LEAF])?;
            state.stats.ste_invalidated += usize::from(state.caches.ste.remove(&sid).is_some());
            if dw1 & LEAF == 0 {
                // Leaf = 0: the level-1 descriptor locating the STE goes too.
                drop_l1std(state, u64::from(sid), 1);
            }
            drop_cds(state, u64::from(sid), 1);
            Outcome::Done
        }
        op::CFGI_STE_RANGE => {
            only(cmd, [SID, bits(4, 0)])?;
            let range = (dw1 & 0x1f) as u32;
            let span = 2u64 << range;
            let first = u64::from(sid) & !(span - 1);
            let before = state.caches.ste.len();
            state
                .caches
                .ste
                .retain(|&s, _| !(first..first.saturating_add(span)).contains(&u64::from(s)));
            state.stats.ste_invalidated += before - state.caches.ste.len();
            drop_l1std(state, first, span);
            // CFGI_ALL (Range = 31) covers every StreamID: every CD too.
            drop_cds(state, first, span);
            Outcome::Done
        }
        op::CFGI_CD => {
            if !s1 {
                return Err(cerror::ILL);
            }
            only(cmd, [SSID | SID, LEAF])?;
            state.stats.cd_invalidated +=
                usize::from(state.caches.cd.remove(&(sid, ssid)).is_some());
            if dw1 & LEAF == 0 {
                // Leaf = 0: the level-1 CD descriptor locating the CD goes too.
                let before = state.caches.l1cd.len();
                let ssid = u64::from(ssid);
                state
                    .caches
                    .l1cd
                    .retain(|&(s, _), e| !(s == sid && e.overlaps(ssid, 1)));
                state.stats.l1_invalidated += before - state.caches.l1cd.len();
            }
            Outcome::Done
        }
        op::CFGI_CD_ALL => {
            if !s1 {
                return Err(cerror::ILL);
            }
            only(cmd, [SID, 0])?;
            let before = state.caches.cd.len();
            state.caches.cd.retain(|&(s, _), _| s != sid);
            state.stats.cd_invalidated += before - state.caches.cd.len();
            let before = state.caches.l1cd.len();
            state.caches.l1cd.retain(|&(s, _), _| s != sid);
            state.stats.l1_invalidated += before - state.caches.l1cd.len();
            Outcome::Done
        }
        op::TLBI_NH_ALL if s1 => {
            only(cmd, [VMID, 0])?;
            tlbi(state, Scope::NhVmid(vmid), None, false)
        }
        op::TLBI_NH_ASID if s1 => {
            only(cmd, [VMID | ASID, 0])?;
            let scope = Scope::NhAsid {
                vmid,
                asid,
                by_addr: false,
            };
            tlbi(state, scope, None, false)
        }
        op::TLBI_NH_VA if s1 => {
            only(cmd, [NUM | SCALE | VMID | ASID, LEAF | TTL | TG | VA])?;
            let range = tlbi_range(cfg, dw0, dw1, VA)?;
            let scope = Scope::NhAsid {
                vmid,
                asid,
                by_addr: true,
            };
            tlbi(state, scope, Some(range), dw1 & LEAF != 0)
        }
        op::TLBI_NH_VAA if s1 => {
            only(cmd, [NUM | SCALE | VMID, LEAF | TTL | TG | VA])?;
            let range = tlbi_range(cfg, dw0, dw1, VA)?;
            tlbi(state, Scope::NhVmid(vmid), Some(range), dw1 & LEAF != 0)
        }
        op::TLBI_S2_IPA if s2 => {
            only(cmd, [NUM | SCALE | VMID, LEAF | TTL | TG | IPA])?;
            let range = tlbi_range(cfg, dw0, dw1, IPA)?;
            tlbi(state, Scope::S2(vmid), Some(range), dw1 & LEAF != 0)
        }
        op::TLBI_S12_VMALL if s2 => {
            only(cmd, [VMID, 0])?;
            tlbi(state, Scope::Vmid(vmid), None, false)
        }
        op::TLBI_NSNH_ALL => {
            only(cmd, [0, 0])?;
            tlbi(state, Scope::All, None, false)
        }
        op::TLBI_EL2_ALL if cfg.has0(idr0::HYP) => {
            // The model builds no EL2 entries (STE.STRW = EL2 is refused without HYP).
            only(cmd, [0, 0])?;
            Outcome::Done
        }
        op::ATC_INV => {
            only(cmd, [SSV | SSID | ATC_GLOBAL | SID, ATC_SIZE | VA])?;
            if !state.regs.enabled(cr0::SMMUEN) {
                return Ok(ignored(state));
            }
            *state.stats.atc_invalidations.entry(sid).or_insert(0) += 1;
            Outcome::Done
        }
        op::PRI_RESP if cfg.has0(idr0::PRI) => {
            only(cmd, [SSV | SSID | SID, bits(8, 0) | bits(13, 12)])?;
            if !state.regs.enabled(cr0::SMMUEN) {
                return Ok(ignored(state));
            }
            super::priq::respond(state, mem, cfg, cmd).map_err(|()| cerror::ILL)?;
            Outcome::Done
        }
        op::RESUME if cfg.stall_supported() => {
            // SSec (10) is reserved on the Non-secure queue; Ac (12), Ab (13); STAG.
            only(cmd, [bits(13, 12) | SID, bits(15, 0)])?;
            super::stall::resume(state, mem, cfg, sid, dw1 as u16, dw0 >> 12 & 3);
            Outcome::Done
        }
        op::STALL_TERM if cfg.stall_supported() => {
            only(cmd, [SID, 0])?;
            super::stall::terminate(state, sid);
            Outcome::Done
        }
        op::CMD_SYNC => sync(state, mem, cfg, cmd)?,
        _ => return Err(cerror::ILL),
    };
    *state.stats.commands.entry(opcode).or_insert(0) += 1;
    Ok(outcome)
}

/// A CMD_ATC_INV or CMD_PRI_RESP consumed while SMMUEN = 0: the ATS interface is not
/// operational, the command is ignored (§6.3.9.6, §4.5): consumed, counted apart, no effect.
fn ignored(state: &mut State) -> Outcome {
    state.stats.ignored_commands += 1;
    Outcome::Done
}

/// VMID[47:32]: bits above 7 are reserved without IDR0.VMID16.
fn vmid_field(cfg: &SmmuModelConfig, dw0: u64) -> Result<u16, u8> {
    let vmid = ((dw0 & VMID) >> 32) as u16;
    let opcode = dw0 as u8;
    let has_vmid = matches!(
        opcode,
        op::TLBI_NH_ALL
            | op::TLBI_NH_ASID
            | op::TLBI_NH_VA
            | op::TLBI_NH_VAA
            | op::TLBI_S2_IPA
            | op::TLBI_S12_VMALL
    );
    if has_vmid && !cfg.has0(idr0::VMID16) && vmid > 0xff {
        return Err(cerror::ILL);
    }
    Ok(vmid)
}

/// ASID[63:48]: bits above 7 are reserved without IDR0.ASID16.
fn asid_field(cfg: &SmmuModelConfig, dw0: u64) -> Result<u16, u8> {
    let asid = (dw0 >> 48) as u16;
    let opcode = dw0 as u8;
    if matches!(opcode, op::TLBI_NH_ASID | op::TLBI_NH_VA) && !cfg.has0(idr0::ASID16) && asid > 0xff
    {
        return Err(cerror::ILL);
    }
    Ok(asid)
}

/// The addresses of a TLBI by address: one address (TG = 0), or with IDR3.RIL the range
/// `Address .. Address + (NUM + 1) * 2^SCALE * granule` of §4.4.1.1, with the TTL level hint.
fn tlbi_range(cfg: &SmmuModelConfig, dw0: u64, dw1: u64, mask: u64) -> Result<AddrRange, u8> {
    let tg = (dw1 & TG) >> 10;
    let ttl = ((dw1 & TTL) >> 8) as u32;
    let num = (dw0 & NUM) >> 12;
    let scale = ((dw0 & SCALE) >> 20) as u32;
    let start = dw1 & mask;
    let single = AddrRange {
        start,
        len: None,
        granule_log2: None,
        ttl_level: None,
    };
    if !cfg.has3(idr3::RIL) || tg == 0 {
        // Without RIL these fields are reserved; with it, TG = 0 names one address and the
        // model requires NUM, SCALE and TTL to be zero too.
        return if tg | u64::from(ttl) | num | u64::from(scale) != 0 {
            Err(cerror::ILL)
        } else {
            Ok(single)
        };
    }
    let granule_log2 = match tg {
        1 => 12,
        2 => 14,
        _ => 16,
    };
    if !cfg.granule_ok(granule_log2) {
        return Err(cerror::ILL);
    }
    let pages = (num + 1) << scale;
    let len = pages.checked_shl(granule_log2).ok_or(cerror::ILL)?;
    Ok(AddrRange {
        start,
        len: Some(len),
        granule_log2: Some(granule_log2),
        ttl_level: (ttl != 0).then_some(ttl),
    })
}

/// Drops the CDs and L1CDs cached through StreamIDs `first..first + count`: CMD_CFGI_STE and
/// CMD_CFGI_STE_RANGE invalidate them, whatever Leaf says (§4.3.1, §4.3.2: "all Context
/// Descriptors (including L1CD) that were cached using the given StreamID").
fn drop_cds(state: &mut State, first: u64, count: u64) {
    let through = |s: u32| (first..first.saturating_add(count)).contains(&u64::from(s));
    let before = state.caches.cd.len();
    state.caches.cd.retain(|&(s, _), _| !through(s));
    state.stats.cd_invalidated += before - state.caches.cd.len();
    let before = state.caches.l1cd.len();
    state.caches.l1cd.retain(|&(s, _), _| !through(s));
    state.stats.l1_invalidated += before - state.caches.l1cd.len();
}

/// Drops the cached level-1 stream table descriptors locating any of `first .. first + count`.
fn drop_l1std(state: &mut State, first: u64, count: u64) {
    let before = state.caches.l1std.len();
    state.caches.l1std.retain(|_, e| !e.overlaps(first, count));
    state.stats.l1_invalidated += before - state.caches.l1std.len();
}

fn tlbi(state: &mut State, scope: Scope, range: Option<AddrRange>, leaf: bool) -> Outcome {
    let (tlb, walk) = state
        .caches
        .invalidate(&Invalidation { scope, range, leaf });
    state.stats.tlb_entries_invalidated += tlb;
    state.stats.walk_entries_invalidated += walk;
    Outcome::Done
}

/// CMD_SYNC (§4.7.3): every earlier command has completed (the model executes in order), so
/// it completes at once unless a stall is injected: by CONS moving past it, plus an MSI write
/// of MSIData to MSIAddress (CS = SIG_IRQ with IDR0.MSI and a non-zero address) or an SEV.
fn sync(
    state: &mut State,
    mem: &Arena,
    cfg: &SmmuModelConfig,
    cmd: [u64; 2],
) -> Result<Outcome, u8> {
    only(cmd, [SYNC_DW0, SYNC_MSIADDR])?;
    let [dw0, dw1] = cmd;
    let cs = (dw0 >> SYNC_CS_SHIFT) & 3;
    if cs == 3 {
        return Err(cerror::ILL);
    }
    if state.injections.sync_stall {
        state.stats.injections_fired += 1;
        return Ok(Outcome::Stalled);
    }
    state.stats.syncs += 1;
    let msi_addr = dw1 & SYNC_MSIADDR;
    if cs == CS_SIG_IRQ && cfg.has0(idr0::MSI) && msi_addr != 0 {
        if !state.injections.msi_abort && write_u32(mem, msi_addr, (dw0 >> 32) as u32) {
            state.stats.sync_msi_writes += 1;
        } else {
            if state.injections.msi_abort {
                state.stats.injections_fired += 1;
            }
            state.regs.raise_gerror(gerror::MSI_CMDQ_ABT_ERR);
        }
    } else if cs == CS_SIG_SEV && cfg.has0(idr0::SEV) {
        state.stats.sync_sevs += 1;
    }
    Ok(Outcome::Done)
}

/// A 32-bit write into the arena, which stores 64-bit words: read, merge, write back.
fn write_u32(mem: &Arena, addr: u64, value: u32) -> bool {
    let word = addr & !7;
    let shift = (addr & 4) * 8;
    let Some(old) = mem.read_u64(word) else {
        return false;
    };
    let new = old & !(0xffff_ffffu64 << shift) | u64::from(value) << shift;
    mem.write_u64(word, new)
}
