//! Stage 1 owned by a guest, nested over a host stage-2 domain (iommufd's nested HWPT on
//! SMMUv3), and the guest's invalidation commands, checked and rewritten.
//!
//! Arm IHI 0070 G.b §5.2 "Stream Table Entry" (Config, S1Fmt, S1ContextPtr, S1CDMax, S1DSS,
//! S1CIR, S1COR, S1CSH), §3.3.2 (CD tables), §3.4 (stage 1 under the stage 2's VMID: nested
//! TLB entries are tagged by VMID and ASID), §4.3 (CFGI_CD, CFGI_CD_ALL), §4.4 (TLBI_NH_ALL,
//! TLBI_NH_ASID, TLBI_NH_VA, TLBI_NH_VAA), §4.5 (ATC_INV).
//!
//! A *user domain* is the guest's vSTE stage-1 half: its STE points at the guest's CD table by
//! IPA (S1ContextPtr), with the parent's stage 2 under it (Config = 0b111), so the unit walks
//! the CD table and the guest's stage-1 tables through the parent. The host never reads,
//! writes or frees that memory: a garbage guest table makes the unit report C_BAD_CD,
//! F_TRANSLATION, F_WALK_EABT..., and its walks reach only what the parent's stage 2 maps.
//!
//! The guest's commands name its own StreamIDs (a vSID, iommufd vDEVICE `virt_id`) and no
//! VMID: each is checked (opcode among those a stage-1 owner may issue, no reserved bit, VMID
//! field 0, the StreamID one of the guest's devices attached to the domain) and rewritten with
//! the parent's VMID and the real StreamID. The guest's domain may span units (its devices
//! behind several): a command naming a device behind another unit is that unit's, skipped
//! here; a TLBI is every unit's. TLBI_NSNH_ALL (a Linux guest's reset issues it) becomes
//! TLBI_NH_ALL under the parent's VMID, as Linux's iommufd does. Stage-2 and other global
//! commands (TLBI_S2_IPA, TLBI_S12_VMALL, CFGI_STE, CFGI_ALL...), prefetches and CMD_SYNC
//! are refused: the host adds its own CMD_SYNC.
//!
//! ASIDs under the parent's VMID belong to the guest: a parent with user domains takes no
//! crate-built stage-1 child (`SmmuUnit::domain_alloc_nested`) and the other way round, or a
//! guest ASID could alias a host one in the TLB.

use super::cmd::{
    Command, Opcode, ADDRESS_63_12, ATC_GLOBAL, ATC_SIZE, LEAF, OPCODE, SSV, STREAM_ID,
    SUBSTREAM_ID, TLBI_ASID, TLBI_NUM, TLBI_SCALE, TLBI_TG, TLBI_TTL, TLBI_VA, TLBI_VMID,
};
use super::ste::{
    Cacheability, S1Dss, S1Fmt, Stage1, CONFIG, S1CDMAX, S1CIR, S1CONTEXTPTR, S1COR, S1CSH, S1DSS,
    S1FMT, V,
};
use core::sync::atomic::Ordering;

use super::attach::Batch;
use super::features::Features;
use super::flush::TlbTag;
use super::idr::Idr5Granules;
use super::platform::USER_STAGE1_NOT_COHERENT;
use super::regs::Shareability;
use super::unit::SmmuUnit;
use super::{StreamId, Vmid};
use crate::iommu::{
    DeviceId, DomainHandle, Error, Missing, Refusal, UserPass, UserStage1, VirtualId,
};
use crate::mem::{PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;

/// Most user domains a unit holds at a time.
pub const MAX_USER_DOMAINS: usize = 16;
/// User domain `i` has handle `USER_DOMAIN_BASE + i`: outside the table-backed domains'
/// handles, which is why map, unmap, flush and query refuse it.
pub const USER_DOMAIN_BASE: u16 = 0x4000;

/// What the guest's STE asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GuestConfig {
    /// V = 0 or Config = abort: the device's DMA is blocked.
    Abort,
    /// Config = bypass: the guest's stage 1 is off, the parent's stage 2 translates.
    Bypass,
    /// Config = stage-1 translate: nested.
    Translate(Stage1),
}

/// A user domain.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UserDomain {
    /// The nest parent.
    pub(crate) parent: DomainHandle,
    /// The parent's VMID, which the guest's commands get.
    pub(crate) vmid: Vmid,
    pub(crate) config: GuestConfig,
    /// Streams attached (retiring ones included).
    pub(crate) users: u32,
}

/// Word 0 bits a guest may set: V, Config, S1Fmt, S1ContextPtr, S1CDMax.
const WORD0_ALLOWED: u64 = V | CONFIG.mask() | S1FMT.mask() | S1CONTEXTPTR.mask() | S1CDMAX.mask();
/// Word 1 bits a guest may set: S1DSS, S1CIR, S1COR, S1CSH.
const WORD1_ALLOWED: u64 = S1DSS.mask() | S1CIR.mask() | S1COR.mask() | S1CSH.mask();

const fn bad(what: &'static str, value: u64) -> Error {
    Error::InvalidArgument { what, value }
}

/// Checks the guest's STE words 0 and 1 and reads its stage-1 half. `cd2l`: the unit has
/// two-level CD tables (`IDR0.CD2L`); `ssid_bits`: the unit's SubstreamID width.
///
/// # Errors
/// [`Error::InvalidArgument`] naming the field.
pub(crate) fn parse_vste(ste: [u64; 2], cd2l: bool, ssid_bits: u32) -> Result<GuestConfig, Error> {
    let [w0, w1] = ste;
    if w0 & !WORD0_ALLOWED != 0 {
        return Err(bad(
            "guest STE word 0 (bits beyond V/Config/S1Fmt/S1ContextPtr/S1CDMax)",
            w0,
        ));
    }
    if w1 & !WORD1_ALLOWED != 0 {
        return Err(bad(
            "guest STE word 1 (bits beyond S1DSS/S1CIR/S1COR/S1CSH)",
            w1,
        ));
    }
    if w0 & V == 0 {
        return Ok(GuestConfig::Abort);
    }
    let config = CONFIG.get(w0);
    match config {
        0b000 => return Ok(GuestConfig::Abort),
        0b100 => return Ok(GuestConfig::Bypass),
        0b101 => {}
        // Stage-2 configurations are the host's.
        _ => return Err(bad("guest STE Config", config)),
    }
    let fmt = match S1FMT.get(w0) {
        0 => S1Fmt::Linear,
        1 if cd2l => S1Fmt::TwoLevel4K,
        2 if cd2l => S1Fmt::TwoLevel64K,
        f => return Err(bad("guest STE S1Fmt", f)),
    };
    let cdmax = S1CDMAX.get(w0);
    if cdmax > u64::from(ssid_bits) {
        return Err(bad("guest STE S1CDMax", cdmax));
    }
    let dss = match S1DSS.get(w1) {
        0 => S1Dss::Terminate,
        1 => S1Dss::Bypass,
        2 => S1Dss::Substream0,
        d => return Err(bad("guest STE S1DSS", d)),
    };
    let csh = match S1CSH.get(w1) {
        0 => Shareability::NonShareable,
        2 => Shareability::Outer,
        3 => Shareability::Inner,
        s => return Err(bad("guest STE S1CSH", s)),
    };
    Ok(GuestConfig::Translate(Stage1 {
        context_ptr: PhysAddr::new(w0 & S1CONTEXTPTR.mask()),
        fmt,
        cdmax: cdmax as u8,
        dss,
        cir: cacheability(S1CIR.get(w1)),
        cor: cacheability(S1COR.get(w1)),
        csh,
    }))
}

const fn cacheability(v: u64) -> Cacheability {
    match v {
        1 => Cacheability::WriteBackAllocate,
        2 => Cacheability::WriteThrough,
        3 => Cacheability::WriteBack,
        _ => Cacheability::NonCacheable,
    }
}

/// Fields of word 0 a guest may set, per opcode (the rest is reserved or the host's).
const W0_TLBI_NH_ALL: u64 = OPCODE.mask();
const W0_TLBI_NH_ASID: u64 = OPCODE.mask() | TLBI_ASID.mask();
const W0_TLBI_NH_VA: u64 = W0_TLBI_NH_ASID | TLBI_NUM.mask() | TLBI_SCALE.mask();
const W0_TLBI_NH_VAA: u64 = OPCODE.mask() | TLBI_NUM.mask() | TLBI_SCALE.mask();
/// Word 1 of TLBI_NH_VA/VAA: Leaf (bit 0), TTL, TG, Address.
const W1_TLBI_VA: u64 = LEAF | TLBI_TTL.mask() | TLBI_TG.mask() | TLBI_VA.mask();
const W0_ATC_INV: u64 = OPCODE.mask() | SSV | ATC_GLOBAL | SUBSTREAM_ID.mask() | STREAM_ID.mask();
const W1_ATC_INV: u64 = ATC_SIZE.mask() | ADDRESS_63_12.mask();
const W0_CFGI_CD: u64 = OPCODE.mask() | SUBSTREAM_ID.mask() | STREAM_ID.mask();
const W0_CFGI_CD_ALL: u64 = OPCODE.mask() | STREAM_ID.mask();

/// Where the guest's `vsid` leads: the host StreamID of the guest's device behind this unit
/// that it names, if `attached` says that device is attached to the domain; `None` if it
/// names a device of the guest behind another unit only (that unit's command).
///
/// # Errors
/// [`Refusal::ForeignDevice`]: no device of the guest, or a local one not attached here.
fn host_sid(
    vsid: u32,
    ids: &[VirtualId],
    attached: impl Fn(StreamId) -> bool,
) -> Result<Option<StreamId>, Refusal> {
    let mut named = ids.iter().filter(|v| v.virt == vsid);
    // IDs are unique per unit, not across units: the local device, if any, is this unit's.
    match named.clone().find(|v| v.local) {
        Some(&VirtualId {
            device: DeviceId(sid),
            ..
        }) if attached(StreamId(sid)) => Ok(Some(StreamId(sid))),
        Some(_) => Err(Refusal::ForeignDevice),
        None if named.next().is_some() => Ok(None),
        None => Err(Refusal::ForeignDevice),
    }
}

/// What the unit's ID registers let a guest's command carry. A field the unit lacks is RES0,
/// and a set RES0 field or a reserved value is CERROR_ILL (§7.1) on the host's command queue,
/// shared by every device: consumption stops until recovery and the batch fails on each retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct GuestCmdFeatures {
    /// 16-bit ASIDs (`IDR0.ASID16`); without, TLBI ASID bits 15:8 are RES0.
    pub(crate) asid16: bool,
    /// Range invalidation (`IDR3.RIL`); without, NUM, SCALE, TG and TTL are RES0.
    pub(crate) ril: bool,
    /// ATS (`IDR0.ATS`); without, ATC_INV is no command of the unit.
    pub(crate) ats: bool,
    /// SubstreamID bits (`IDR1.SSIDSIZE`); 0: no substreams, SSV and SubstreamID are RES0.
    pub(crate) ssid_bits: u32,
    /// The granules the unit walks (`IDR5`): a range's TG must name one.
    pub(crate) granules: Idr5Granules,
}

impl GuestCmdFeatures {
    pub(crate) const fn of(f: &Features) -> Self {
        Self {
            asid16: f.asid16,
            ril: f.ril,
            ats: f.ats,
            ssid_bits: f.ssid_bits,
            granules: f.granules,
        }
    }

    /// Whether TG (`0b01` 4 KiB, `0b10` 16 KiB, `0b11` 64 KiB) names a granule of the unit.
    const fn has_tg(self, tg: u64) -> bool {
        let g = match tg {
            1 => Idr5Granules::GRAN4K,
            2 => Idr5Granules::GRAN16K,
            3 => Idr5Granules::GRAN64K,
            _ => return false,
        };
        self.granules.contains(g)
    }
}

/// Largest ATC_INV Size (§4.5.1: 52 covers every address; 53-63 are reserved).
const ATC_SIZE_MAX: u64 = 52;

/// The value checks of TLBI_NH_VA/VAA's range fields (§4.4.1.1). Without `IDR3.RIL` NUM,
/// SCALE, TG and TTL are RES0; with it, TG = 0 (one address) makes NUM, SCALE and TTL RES0,
/// and a TG with NUM = SCALE = TTL = 0 is refused as Linux refuses it
/// (`arm_vsmmu_validate_range`).
fn check_tlbi_range(w0: u64, w1: u64, f: GuestCmdFeatures) -> Result<(), Refusal> {
    let tg = TLBI_TG.get(w1);
    let rest = TLBI_NUM.get(w0) | TLBI_SCALE.get(w0) | TLBI_TTL.get(w1);
    let ok = match (f.ril, tg) {
        (false, _) | (true, 0) => tg | rest == 0,
        (true, tg) => rest != 0 && f.has_tg(tg),
    };
    if ok {
        Ok(())
    } else {
        Err(Refusal::ReservedBits)
    }
}

/// The value checks of the command `op` beyond its bit masks, against the unit's features.
fn check_values(op: u64, w0: u64, w1: u64, f: GuestCmdFeatures) -> Result<(), Refusal> {
    let by_asid = op == Opcode::TlbiNhAsid as u64 || op == Opcode::TlbiNhVa as u64;
    if by_asid && !f.asid16 && TLBI_ASID.get(w0) > 0xff {
        return Err(Refusal::ReservedBits);
    }
    if op == Opcode::TlbiNhVa as u64 || op == Opcode::TlbiNhVaa as u64 {
        check_tlbi_range(w0, w1, f)?;
    }
    if op == Opcode::AtcInv as u64 {
        if !f.ats {
            return Err(Refusal::Type);
        }
        if ATC_SIZE.get(w1) > ATC_SIZE_MAX {
            return Err(Refusal::ReservedBits);
        }
    }
    let has_ssid = op == Opcode::AtcInv as u64 || op == Opcode::CfgiCd as u64;
    // SubstreamID bits the unit lacks, SSV included when it has none.
    if has_ssid && (SUBSTREAM_ID.get(w0) >> f.ssid_bits != 0 || (f.ssid_bits == 0 && w0 & SSV != 0))
    {
        return Err(Refusal::ReservedBits);
    }
    Ok(())
}

/// One guest command, checked (its bits, their values and the unit's features `feat`) and
/// rewritten: the parent's `vmid` in TLBI_NH_*, the host StreamID in ATC_INV and
/// CFGI_CD(_ALL). `None`: a command for a device behind another unit (see [`host_sid`]).
///
/// # Errors
/// The [`Refusal`].
pub(crate) fn rewrite(
    cmd: [u64; 2],
    vmid: Vmid,
    feat: GuestCmdFeatures,
    ids: &[VirtualId],
    attached: impl Fn(StreamId) -> bool,
) -> Result<Option<Command>, Refusal> {
    let [w0, w1] = cmd;
    let op = OPCODE.get(w0);
    let allowed = |m0: u64, m1: u64| {
        if w0 & !m0 != 0 || w1 & !m1 != 0 {
            Err(Refusal::ReservedBits)
        } else {
            check_values(op, w0, w1, feat)
        }
    };
    let tlbi = |m0: u64, m1: u64| -> Result<Option<Command>, Refusal> {
        // The guest has no stage 2 and so no VMID: a non-zero one is not its to name.
        if TLBI_VMID.get(w0) != 0 {
            return Err(Refusal::Vmid);
        }
        allowed(m0, m1)?;
        // Under the parent's VMID on every unit the domain is on: each unit's TLB may hold
        // entries of the guest's ASIDs.
        Ok(Some(Command {
            words: [TLBI_VMID.set_masked(w0, u64::from(vmid.0)), w1],
        }))
    };
    // A command naming a device: to that device's unit alone.
    let device = |m0: u64, m1: u64| -> Result<Option<Command>, Refusal> {
        allowed(m0, m1)?;
        let s = host_sid(STREAM_ID.get(w0) as u32, ids, &attached)?;
        Ok(s.map(|s| Command {
            words: [STREAM_ID.set_masked(w0, u64::from(s.0)), w1],
        }))
    };
    match op {
        x if x == Opcode::TlbiNhAll as u64 => tlbi(W0_TLBI_NH_ALL, 0),
        // A guest's whole non-hypervisor TLB is its stage 1 under the parent's VMID: never
        // the unit-wide command, which would drop every other tenant's entries too.
        x if x == Opcode::TlbiNsnhAll as u64 => {
            allowed(OPCODE.mask(), 0)?;
            Ok(Some(Command::tlbi_nh_all(vmid)))
        }
        x if x == Opcode::TlbiNhAsid as u64 => tlbi(W0_TLBI_NH_ASID, 0),
        x if x == Opcode::TlbiNhVa as u64 => tlbi(W0_TLBI_NH_VA, W1_TLBI_VA),
        x if x == Opcode::TlbiNhVaa as u64 => tlbi(W0_TLBI_NH_VAA, W1_TLBI_VA),
        x if x == Opcode::AtcInv as u64 => device(W0_ATC_INV, W1_ATC_INV),
        x if x == Opcode::CfgiCd as u64 => device(W0_CFGI_CD, LEAF),
        x if x == Opcode::CfgiCdAll as u64 => device(W0_CFGI_CD_ALL, 0),
        _ => Err(Refusal::Type),
    }
}

/// The slot index of user domain `d`, if `d` is a user domain handle.
pub(crate) fn user_index(d: DomainHandle) -> Option<usize> {
    let i = usize::from(d.0.checked_sub(USER_DOMAIN_BASE)?);
    (i < MAX_USER_DOMAINS).then_some(i)
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// The user domain `d`, if it is one.
    pub(crate) fn user_domain(&self, d: DomainHandle) -> Option<UserDomain> {
        let i = user_index(d)?;
        self.user_domains.read().get(i).copied().flatten()
    }

    /// Changes the user domain `d`'s count of attached streams.
    pub(crate) fn user_domain_users(&self, d: DomainHandle, up: bool) {
        let Some(i) = user_index(d) else { return };
        if let Some(Some(u)) = self.user_domains.write().get_mut(i) {
            u.users = if up {
                u.users + 1
            } else {
                u.users.saturating_sub(1)
            };
        }
    }

    /// Whether a user domain nests on `parent`.
    pub(crate) fn has_user_children(&self, parent: DomainHandle) -> bool {
        self.user_domains
            .read()
            .iter()
            .flatten()
            .any(|u| u.parent == parent)
    }

    /// [`Iommu::domain_alloc_user`](crate::iommu::Iommu::domain_alloc_user).
    pub(crate) fn alloc_user_domain(
        &self,
        parent: DomainHandle,
        stage1: &UserStage1,
    ) -> Result<DomainHandle, Error> {
        self.usable()?;
        let &UserStage1::SmmuV3 { ste } = stage1 else {
            return Err(Error::Unsupported(Missing::Mode {
                what: "a VT-d stage 1 on an SMMUv3",
            }));
        };
        if !(self.features.stage1_usable() && self.features.s2p) {
            return Err(Error::Unsupported(Missing::Nesting));
        }
        let config = parse_vste(ste, self.features.cd2l, self.cfg.ssid_bits)?;
        let _config_lock = self.config.lock();
        let pslot = self.slot(parent)?.read();
        let p = pslot.as_ref().ok_or(Error::InvalidDomain(parent))?;
        let TlbTag::Stage2 {
            vmid,
            nest_parent: true,
        } = p.tag
        else {
            return Err(Error::Unsupported(Missing::Nesting));
        };
        // Without FWB the guest's stage 1 decides the memory type: only CANWBS devices.
        if !p.forces_write_back() && !self.cfg.platform.any_canwbs() {
            return Err(Error::Unsupported(Missing::NotDeclared {
                what: USER_STAGE1_NOT_COHERENT,
            }));
        }
        // The guest owns the ASIDs under the parent's VMID: no crate-built stage 1 beside it.
        if self.children_of(parent) != 0 {
            return Err(Error::Busy);
        }
        let mut users = self.user_domains.write();
        let i = users
            .iter()
            .position(Option::is_none)
            .ok_or(Error::NoDomainIds)?;
        users[i] = Some(UserDomain {
            parent,
            vmid,
            config,
            users: 0,
        });
        p.children.fetch_add(1, Ordering::AcqRel);
        Ok(DomainHandle(USER_DOMAIN_BASE + i as u16))
    }

    /// [`Iommu::domain_free`](crate::iommu::Iommu::domain_free) of a user domain. It has no
    /// table and no tag of its own: the TLB entries its streams made carry the parent's VMID
    /// and were invalidated when each stream left it (TLBI_NH_ALL).
    pub(crate) fn free_user_domain(&self, d: DomainHandle) -> Result<(), Error> {
        self.usable()?;
        let _config_lock = self.config.lock();
        let i = user_index(d).ok_or(Error::InvalidDomain(d))?;
        let mut users = self.user_domains.write();
        let u = users
            .get(i)
            .copied()
            .flatten()
            .ok_or(Error::InvalidDomain(d))?;
        if u.users != 0 {
            return Err(Error::Busy);
        }
        users[i] = None;
        drop(users);
        if let Some(p) = self.slot(u.parent)?.read().as_ref() {
            p.children.fetch_sub(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// [`Iommu::invalidate_user`](crate::iommu::Iommu::invalidate_user): every command checked
    /// and rewritten first, then (for [`UserPass::Issue`]) this unit's issued, with one
    /// CMD_SYNC at the end. Returns how many are this unit's.
    pub(crate) fn invalidate_user_impl(
        &self,
        d: DomainHandle,
        requests: &[[u64; 2]],
        ids: &[VirtualId],
        pass: UserPass,
    ) -> Result<usize, Error> {
        self.usable()?;
        let config = self.config.lock();
        let u = self.user_domain(d).ok_or(Error::InvalidDomain(d))?;
        let attached = |sid: StreamId| {
            config
                .streams
                .iter()
                .flatten()
                .any(|s| s.sid == sid && s.rid == Some(d))
        };
        let feat = GuestCmdFeatures::of(&self.features);
        let mut mine = 0;
        for (index, r) in requests.iter().enumerate() {
            let c = rewrite(*r, u.vmid, feat, ids, attached).map_err(|why| Error::Refused {
                index: index as u32,
                request: *r,
                why,
            })?;
            let Some(c) = c else { continue };
            if c.words[0] & 0xff == Opcode::AtcInv as u64 {
                // Ignored while translation is off (§6.3.9.6): not reported done.
                self.atc_reachable(StreamId((c.words[0] >> 32) as u32))?;
            }
            mine += 1;
        }
        if pass == UserPass::Check || mine == 0 {
            return Ok(mine);
        }
        if !self.has_cmdq() {
            return Ok(0);
        }
        self.with_cmdq(|q, regs| {
            let mut b = Batch::new(q, regs, &self.cmd_staging);
            for r in requests {
                if let Ok(Some(c)) = rewrite(*r, u.vmid, feat, ids, attached) {
                    b.push(c)?;
                }
            }
            b.sync()
        })?;
        Ok(mine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mem::Iova;
    use crate::smmuv3::cmd::{RangeGranule, TlbiRange};
    use crate::smmuv3::{Asid, SubstreamId};

    /// 0x10 and 0x11 behind this unit, 0x12 behind another.
    const IDS: [VirtualId; 3] = [
        VirtualId {
            virt: 0x10,
            device: DeviceId(0x100),
            local: true,
        },
        VirtualId {
            virt: 0x11,
            device: DeviceId(0x200),
            local: true,
        },
        VirtualId {
            virt: 0x12,
            device: DeviceId(0x100),
            local: false,
        },
    ];

    fn attached(s: StreamId) -> bool {
        s.0 == 0x100
    }

    /// A unit with every feature a guest command may use.
    pub(super) const FULL: GuestCmdFeatures = GuestCmdFeatures {
        asid16: true,
        ril: true,
        ats: true,
        ssid_bits: 20,
        granules: Idr5Granules::all(),
    };

    /// The command a unit with `f` issues for `c` (another unit's device: a test bug).
    fn on(f: GuestCmdFeatures, c: Command) -> Result<Command, Refusal> {
        rewrite(c.words, Vmid(7), f, &IDS, attached).map(|c| c.expect("this unit's command"))
    }

    /// The command this unit issues for `c`.
    fn ok(c: Command) -> Result<Command, Refusal> {
        on(FULL, c)
    }

    fn range(num: u8, tg: RangeGranule) -> Option<TlbiRange> {
        Some(TlbiRange {
            num,
            scale: 0,
            tg,
            ttl: 0,
        })
    }

    /// Without `IDR3.RIL` NUM, SCALE, TG and TTL are RES0: a guest's range TLBI is refused
    /// there, accepted on a unit with RIL; with RIL, a TG the unit does not walk is refused.
    #[test]
    fn a_range_tlbi_needs_ril_and_the_granule() {
        let no_ril = GuestCmdFeatures { ril: false, ..FULL };
        let va = |r| Command::tlbi_nh_va(Vmid(0), Asid(3), Iova::new(0x1234_5000), true, r);
        let vaa = Command {
            words: [
                TLBI_NUM.set_masked(Opcode::TlbiNhVaa as u64, 3),
                0x8000 | 1 << 10,
            ],
        };
        for ranged in [va(range(3, RangeGranule::Size4K)).unwrap(), vaa] {
            assert_eq!(on(no_ril, ranged), Err(Refusal::ReservedBits), "{ranged:?}");
            assert!(on(FULL, ranged).is_ok(), "{ranged:?}");
        }
        // One address: no range field, fine without RIL.
        assert!(on(no_ril, va(None).unwrap()).is_ok());
        let no_16k = GuestCmdFeatures {
            granules: Idr5Granules::GRAN4K | Idr5Granules::GRAN64K,
            ..FULL
        };
        let ranged_16k = va(range(3, RangeGranule::Size16K)).unwrap();
        assert_eq!(on(no_16k, ranged_16k), Err(Refusal::ReservedBits));
        assert!(on(FULL, ranged_16k).is_ok());
    }

    /// Without `IDR0.ASID16` ASID bits 15:8 are RES0 in TLBI_NH_ASID and TLBI_NH_VA.
    #[test]
    fn a_16_bit_asid_needs_asid16() {
        let asid8 = GuestCmdFeatures {
            asid16: false,
            ..FULL
        };
        let by_asid = Command::tlbi_nh_asid(Vmid(0), Asid(0x1ff));
        let va = Command::tlbi_nh_va(Vmid(0), Asid(0x100), Iova::new(0x1000), false, None).unwrap();
        for c in [by_asid, va] {
            assert_eq!(on(asid8, c), Err(Refusal::ReservedBits), "{c:?}");
            assert!(on(FULL, c).is_ok(), "{c:?}");
        }
        assert!(on(asid8, Command::tlbi_nh_asid(Vmid(0), Asid(0xff))).is_ok());
    }

    /// Without `IDR0.ATS` ATC_INV is no command of the unit.
    #[test]
    fn atc_inv_needs_ats() {
        let no_ats = GuestCmdFeatures { ats: false, ..FULL };
        let inv = Command::atc_inv(StreamId(0x10), None, Iova::ZERO, 52, false).unwrap();
        assert_eq!(on(no_ats, inv), Err(Refusal::Type));
        assert!(on(FULL, inv).is_ok());
    }

    /// Without substreams (`IDR1.SSIDSIZE` = 0) SSV and SubstreamID are RES0; with them, a
    /// SubstreamID beyond SSIDSIZE is refused.
    #[test]
    fn a_substream_needs_the_units_substreams() {
        let no_ss = GuestCmdFeatures {
            ssid_bits: 0,
            ..FULL
        };
        let ss8 = GuestCmdFeatures {
            ssid_bits: 8,
            ..FULL
        };
        let ssid = |v| SubstreamId::new(v).unwrap();
        let inv = |s| Command::atc_inv(StreamId(0x10), Some(s), Iova::ZERO, 0, false).unwrap();
        let cd = |s| Command::cfgi_cd(StreamId(0x10), s, true);
        for c in [inv(ssid(0)), inv(ssid(1)), cd(ssid(1))] {
            assert_eq!(on(no_ss, c), Err(Refusal::ReservedBits), "{c:?}");
            assert!(on(FULL, c).is_ok(), "{c:?}");
        }
        for c in [inv(ssid(0x100)), cd(ssid(0x100))] {
            assert_eq!(on(ss8, c), Err(Refusal::ReservedBits), "{c:?}");
            assert!(on(FULL, c).is_ok(), "{c:?}");
        }
        // No substream named: fine everywhere.
        let plain = Command::atc_inv(StreamId(0x10), None, Iova::ZERO, 0, false).unwrap();
        assert!(on(no_ss, plain).is_ok());
        assert!(on(no_ss, cd(ssid(0))).is_ok());
    }

    #[test]
    fn tlbi_nh_gets_the_host_vmid() {
        let guest = Command::tlbi_nh_asid(Vmid(0), Asid(5));
        assert_eq!(ok(guest), Ok(Command::tlbi_nh_asid(Vmid(7), Asid(5))));
        let guest = Command::tlbi_nh_all(Vmid(0));
        assert_eq!(ok(guest), Ok(Command::tlbi_nh_all(Vmid(7))));
        let va = Command::tlbi_nh_va(Vmid(0), Asid(3), Iova::new(0x1234_5000), true, None).unwrap();
        let want =
            Command::tlbi_nh_va(Vmid(7), Asid(3), Iova::new(0x1234_5000), true, None).unwrap();
        assert_eq!(ok(va), Ok(want));
        let vaa = Command {
            words: [Opcode::TlbiNhVaa as u64, 0x8000],
        };
        let want = Command {
            words: [TLBI_VMID.set_masked(Opcode::TlbiNhVaa as u64, 7), 0x8000],
        };
        assert_eq!(ok(vaa), Ok(want));
    }

    /// A Linux guest's SMMUv3 driver issues CMD_TLBI_NSNH_ALL at reset. The guest's whole
    /// non-hypervisor TLB is its stage 1 under the parent's VMID: TLBI_NH_ALL under that VMID
    /// (what Linux's iommufd turns it into), never the unit-wide command.
    #[test]
    fn tlbi_nsnh_all_becomes_nh_all_under_the_vmid() {
        assert_eq!(
            ok(Command::tlbi_nsnh_all()),
            Ok(Command::tlbi_nh_all(Vmid(7)))
        );
        let mut c = Command::tlbi_nsnh_all();
        c.words[0] |= TLBI_VMID.set_masked(0, 3);
        assert_eq!(
            ok(c),
            Err(Refusal::ReservedBits),
            "NSNH_ALL has no VMID field"
        );
        let mut c = Command::tlbi_nsnh_all();
        c.words[1] = 1;
        assert_eq!(ok(c), Err(Refusal::ReservedBits));
    }

    #[test]
    fn a_vmid_a_stage2_command_or_reserved_bits_are_refused() {
        assert_eq!(
            ok(Command::tlbi_nh_asid(Vmid(3), Asid(5))),
            Err(Refusal::Vmid)
        );
        assert_eq!(ok(Command::tlbi_s12_vmall(Vmid(0))), Err(Refusal::Type));
        assert_eq!(
            ok(Command::cfgi_ste(StreamId(0x10), false)),
            Err(Refusal::Type)
        );
        assert_eq!(ok(Command::plain_sync()), Err(Refusal::Type));
        let mut c = Command::tlbi_nh_all(Vmid(0));
        c.words[1] = 1;
        assert_eq!(ok(c), Err(Refusal::ReservedBits));
    }

    #[test]
    fn stream_ids_are_the_guests_and_are_rewritten() {
        let ssid = SubstreamId::new(3).unwrap();
        let inv = Command::atc_inv(StreamId(0x10), Some(ssid), Iova::ZERO, 52, false).unwrap();
        let want = Command::atc_inv(StreamId(0x100), Some(ssid), Iova::ZERO, 52, false).unwrap();
        assert_eq!(ok(inv), Ok(want));
        assert_eq!(
            ok(Command::cfgi_cd(StreamId(0x10), ssid, true)),
            Ok(Command::cfgi_cd(StreamId(0x100), ssid, true))
        );
        assert_eq!(
            ok(Command::cfgi_cd_all(StreamId(0x10))),
            Ok(Command::cfgi_cd_all(StreamId(0x100)))
        );
        // 0x11 is the guest's, not attached here; 0x100 is a host StreamID, not a guest's.
        assert_eq!(
            ok(Command::cfgi_cd_all(StreamId(0x11))),
            Err(Refusal::ForeignDevice)
        );
        assert_eq!(
            ok(Command::cfgi_cd_all(StreamId(0x100))),
            Err(Refusal::ForeignDevice)
        );
        // 0x12 names the guest's device behind another unit: that unit's, nothing here.
        let elsewhere = |c: Command| rewrite(c.words, Vmid(7), FULL, &IDS, attached);
        assert_eq!(elsewhere(Command::cfgi_cd_all(StreamId(0x12))), Ok(None));
        assert_eq!(
            elsewhere(Command::cfgi_cd(StreamId(0x12), ssid, true)),
            Ok(None)
        );
        assert_eq!(
            elsewhere(Command::cfgi_cd_all(StreamId(0x13))),
            Err(Refusal::ForeignDevice)
        );
    }

    #[test]
    fn vste_fields() {
        let w0 = V | CONFIG.set_masked(0, 0b101) | 0x8_0000 | S1CDMAX.set_masked(0, 3);
        let w1 = S1DSS.set_masked(0, 2) | S1CIR.set_masked(0, 1) | S1CSH.set_masked(0, 3);
        let GuestConfig::Translate(s1) = parse_vste([w0, w1], false, 8).unwrap() else {
            panic!("not nested");
        };
        assert_eq!(
            (s1.context_ptr, s1.cdmax, s1.dss),
            (PhysAddr::new(0x8_0000), 3, S1Dss::Substream0)
        );
        assert_eq!(parse_vste([0, 0], false, 8), Ok(GuestConfig::Abort));
        assert_eq!(
            parse_vste([V | CONFIG.set_masked(0, 0b100), 0], false, 8),
            Ok(GuestConfig::Bypass)
        );
        // Stage 2 is the host's; S1CDMax beyond SSIDSIZE; EATS and S1STALLD are not the guest's.
        assert!(parse_vste([V | CONFIG.set_masked(0, 0b110), 0], false, 8).is_err());
        assert!(parse_vste([w0 | S1CDMAX.set_masked(0, 9), w1], false, 8).is_err());
        assert!(parse_vste([w0, w1 | 1 << 28], false, 8).is_err());
        assert!(parse_vste([w0, w1 | 1 << 27], false, 8).is_err());
        assert!(parse_vste([w0 | S1FMT.set_masked(0, 1), w1], false, 8).is_err());
    }
}

/// Review (nestrev): guest commands whose field values the spec reserves, or that the crate
/// itself never builds, are accepted and passed to the host's command queue. Linux refuses
/// them in `arm_vsmmu_validate_user_cmd` / `arm_vsmmu_validate_range`
/// (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-iommufd.c) "so a guest cannot wedge the shared
/// queue ... with a CERROR_ILL".
#[cfg(test)]
mod review_tests {
    use super::*;
    use crate::mem::Iova;
    use crate::smmuv3::Asid;

    const IDS: [VirtualId; 1] = [VirtualId {
        virt: 0x10,
        device: DeviceId(0x100),
        local: true,
    }];

    fn check(words: [u64; 2]) -> Result<Option<Command>, Refusal> {
        rewrite(words, Vmid(7), tests::FULL, &IDS, |s: StreamId| {
            s.0 == 0x100
        })
    }

    /// ATC_INV Size > 52: `Command::atc_inv` refuses it for the host's own commands
    /// (FieldOutOfRange), Linux refuses it from a guest ("A Size above 52 (invalidate-all)
    /// may raise a CERROR_ILL"); the guest path passes it through.
    #[test]
    fn guest_atc_inv_size_above_52_is_refused() {
        assert!(Command::atc_inv(StreamId(0x100), None, Iova::ZERO, 63, false).is_err());
        let guest = [u64::from(Opcode::AtcInv as u8) | 0x10 << 32, 63];
        assert!(
            check(guest).is_err(),
            "ATC_INV Size 63 accepted and rewritten: {:?}",
            check(guest)
        );
    }

    /// TLBI_NH_VA with TG = 0 and NUM/SCALE/TTL non-zero: "NUM, SCALE and TTL are RES0 when
    /// TG == 0" (IHI 0070 §4.4.1; Linux `arm_vsmmu_validate_range`). Accepted here.
    #[test]
    fn guest_tlbi_range_fields_without_tg_are_refused() {
        let va = Command::tlbi_nh_va(Vmid(0), Asid(3), Iova::new(0x1234_5000), true, None)
            .unwrap()
            .words;
        let num_without_tg = [TLBI_NUM.set_masked(va[0], 7), va[1]];
        assert!(
            check(num_without_tg).is_err(),
            "TLBI_NH_VA with NUM = 7, TG = 0 accepted: {:?}",
            check(num_without_tg)
        );
        let ttl_without_tg = [va[0], TLBI_TTL.set_masked(va[1], 2)];
        assert!(
            check(ttl_without_tg).is_err(),
            "TLBI_NH_VA with TTL = 2, TG = 0 accepted: {:?}",
            check(ttl_without_tg)
        );
        // TG != 0 with NUM = SCALE = TTL = 0: a reserved combination (Linux: -EIO).
        let tg_alone = [va[0], TLBI_TG.set_masked(va[1], 1)];
        assert!(
            check(tg_alone).is_err(),
            "TLBI_NH_VA with TG = 4K and NUM = SCALE = TTL = 0 accepted: {:?}",
            check(tg_alone)
        );
    }
}
