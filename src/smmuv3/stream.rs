//! What the unit has attached to one StreamID, and the STE that follows from it.
//!
//! Arm IHI 0070 G.b §5.2 "Stream Table Entry" (Config, S1DSS, S1ContextPtr/S1Fmt/S1CDMax,
//! S2*, EATS) and §3.3.2 (SubstreamIDs through a CD table). One stream may have:
//! - a domain for traffic without a SubstreamID (the RID domain), stage 1 or stage 2;
//! - stage-1 domains for SubstreamIDs (PASIDs), through a CD table that belongs to the stream.
//!
//! The STE is computed from that state alone:
//!
//! | RID domain | PASID domains | Config   | S1DSS      | CD 0          |
//! |------------|---------------|----------|------------|---------------|
//! | none       | none          | abort    | -          | -             |
//! | stage 2    | none          | stage 2  | -          | -             |
//! | stage 1    | any           | stage 1 (nested with a parent) | SUBSTREAM0 | the RID domain |
//! | stage 2 P  | nested on P   | nested   | BYPASS     | -             |
//! | none       | some          | stage 1 (nested with a parent) | TERMINATE  | -             |
//! | user (guest's vSTE) over P | none | the guest's: nested with the guest's S1 fields, P's stage 2 (bypass: stage 2; abort) | the guest's | the guest's |
//!
//! Every stage-1 domain of one stream shares one stage 2 (none, or the same parent), because
//! the STE has one. SubstreamID 0 is the RID domain's CD (S1DSS = SUBSTREAM0), so PASID 0
//! cannot be attached separately.

use super::cd::CdTable;
use super::nested::GuestConfig;
use super::regs::Shareability;
use super::ste::{Cacheability, Eats, S1Dss, Stage1, Stage2, Ste, SteBuilder};
use super::{SmmuError, StreamId, SubstreamId};
use crate::iommu::DomainHandle;
use crate::mem::{PageAllocator, WalkerCoherency};

/// Most streams with something attached at a time.
pub const MAX_STREAMS: usize = 64;
/// Most SubstreamIDs attached per stream at a time.
pub const MAX_PASIDS: usize = 8;

/// The attachments of one stream.
pub(crate) struct StreamState<A: PageAllocator> {
    pub(crate) sid: StreamId,
    pub(crate) rid: Option<DomainHandle>,
    pub(crate) pasids: [Option<(SubstreamId, DomainHandle)>; MAX_PASIDS],
    pub(crate) cd: Option<CdTable<A>>,
    pub(crate) ats: bool,
    /// The device may stall (`DeviceHints::stall`): its CDs get `S`, its STE `S1STALLD` = 0
    /// and `S2S`. Set while the stream is idle, cleared when its last attachment leaves.
    pub(crate) stall: bool,
    /// Its last attachment left while it could stall and `CMD_STALL_TERM` (§4.7.2) is not
    /// known to have completed: transactions of its last owner may still be held, and its
    /// filed stalls are still in the book. The next attach or detach sends it first.
    pub(crate) stalls_owed: bool,
    /// The device's PRI responses need a PASID (`DeviceHints::pri_pasid_required`): its STE
    /// gets `PPAR`. Set while the stream is idle, as `stall`.
    pub(crate) ppar: bool,
    /// The last attach or detach stopped part-way (a command wait failed after the books
    /// changed): the STE and CDs in memory, and what the unit caches, may differ from the
    /// attachments. The next attach or detach of the stream settles it first.
    pub(crate) unsettled: bool,
    /// A domain the stream used until that call: it keeps its user (and ATS user), and its
    /// tag's TLB entries and the stream's ATC entries of it are not known to be gone, until
    /// the stream is settled; meanwhile flushes of it invalidate the stream's ATC whole.
    pub(crate) retiring: Option<Retiring>,
    /// An STE write turned `EATS` on (the live STE did not allow ATS, the new one does) and
    /// the whole-ATC invalidation that must follow it (CMD_ATC_INV without SubstreamID, Size
    /// 52, then a CMD_SYNC) has not completed: the device's ATC may still hold translations
    /// from before (boot firmware, a previous kernel, a previous owner), which its translated
    /// requests may now use. Set before that STE write, cleared when the invalidation
    /// completed or an STE write turned `EATS` off again; while set, the stream is unsettled.
    pub(crate) atc_owed: bool,
    /// Firmware forbids the device ATS: the `DeviceHints::ats_permission` of its last
    /// `attach_device` was `Forbidden`. `set_ats(true)` is then refused
    /// (`Error::AtsForbidden`), and the record is kept after the last detach (until its room
    /// is needed, see `SmmuUnit::stream_index`), so that ATS cannot come back through
    /// `set_ats` and a later `attach` without hints.
    pub(crate) ats_forbidden: bool,
}

/// A domain an unfinished attach or detach took off a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Retiring {
    /// The domain.
    pub(crate) domain: DomainHandle,
    /// The SubstreamID it was attached for (`None`: the RID domain).
    pub(crate) ssid: Option<SubstreamId>,
    /// It was counted in the domain's ATS users.
    pub(crate) ats: bool,
}

/// What the STE needs to know about a domain.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DomainShape {
    /// A stage-2 domain with its STE half.
    Stage2(Stage2),
    /// A stage-1 domain, and the stage-2 half of its nest parent if it has one.
    Stage1(Option<Stage2>),
    /// A user domain (`nested.rs`): the guest's STE stage-1 half, and its parent's stage 2.
    User(GuestConfig, Stage2),
}

impl<A: PageAllocator> StreamState<A> {
    pub(crate) fn new(sid: StreamId) -> Self {
        Self {
            sid,
            rid: None,
            pasids: [None; MAX_PASIDS],
            cd: None,
            ats: false,
            stall: false,
            stalls_owed: false,
            ppar: false,
            unsettled: false,
            retiring: None,
            atc_owed: false,
            ats_forbidden: false,
        }
    }

    /// Whether the record holds nothing the unit needs: nothing attached or owed, no ATS, no
    /// CD table. It may still remember `ats_forbidden`.
    pub(crate) fn is_spare(&self) -> bool {
        self.is_idle() && !self.ats && self.cd.is_none()
    }

    /// Whether the record may be dropped now: spare, and remembering nothing.
    pub(crate) fn is_forgettable(&self) -> bool {
        self.is_spare() && !self.ats_forbidden
    }

    /// Whether nothing is attached.
    pub(crate) fn is_empty(&self) -> bool {
        self.rid.is_none() && self.pasids.iter().all(Option::is_none)
    }

    /// Whether nothing is attached and nothing is owed to the unit: the stream may be
    /// forgotten (once its CD table is gone and ATS is off).
    pub(crate) fn is_idle(&self) -> bool {
        self.is_empty() && !self.unsettled && self.retiring.is_none() && !self.stalls_owed
    }

    /// The domain attached for `ssid`.
    pub(crate) fn pasid_domain(&self, ssid: SubstreamId) -> Option<DomainHandle> {
        self.pasids
            .iter()
            .flatten()
            .find(|(s, _)| *s == ssid)
            .map(|(_, d)| *d)
    }

    /// Every domain attached, with its SubstreamID (`None` for the RID domain).
    pub(crate) fn attachments(
        &self,
    ) -> impl Iterator<Item = (Option<SubstreamId>, DomainHandle)> + '_ {
        self.rid
            .map(|d| (None, d))
            .into_iter()
            .chain(self.pasids.iter().flatten().map(|(s, d)| (Some(*s), *d)))
    }

    /// The STE for the current attachments; `shape` describes a domain.
    ///
    /// # Errors
    ///
    /// [`SmmuError::InvalidConfig`] if stage-1 domains disagree on their stage 2 or a stage-1
    /// attachment has no CD table; field errors.
    pub(crate) fn ste(
        &self,
        coherency: WalkerCoherency,
        stall_model: bool,
        mut shape: impl FnMut(DomainHandle) -> Result<DomainShape, SmmuError>,
    ) -> Result<Ste, SmmuError> {
        const MIXED: SmmuError = SmmuError::InvalidConfig {
            reason: "stage-1 domains of one stream need the same stage 2",
        };
        let mut rid_stage2: Option<Stage2> = None;
        // The stage 2 every stage-1 domain sits on (`Some(None)`: none of them has one).
        let mut parent: Option<Option<Stage2>> = None;
        let mut dss = S1Dss::Terminate;
        if let Some(d) = self.rid {
            if let DomainShape::User(guest, s2) = shape(d)? {
                return self.user_ste(guest, s2, stall_model);
            }
        }
        for (ssid, d) in self.attachments() {
            match (shape(d)?, ssid) {
                (DomainShape::User(..), _) => {
                    return Err(SmmuError::InvalidConfig {
                        reason: "a user domain is for traffic without a SubstreamID",
                    })
                }
                (DomainShape::Stage2(s2), None) => {
                    rid_stage2 = Some(s2);
                    dss = S1Dss::Bypass;
                }
                (DomainShape::Stage2(_), Some(_)) => {
                    return Err(SmmuError::InvalidConfig {
                        reason: "a SubstreamID needs a stage-1 domain",
                    })
                }
                (DomainShape::Stage1(p), ssid) => {
                    if ssid.is_none() {
                        dss = S1Dss::Substream0;
                    }
                    match parent {
                        Some(q) if q != p => return Err(MIXED),
                        _ => parent = Some(p),
                    }
                }
            }
        }
        let stage1 = parent.is_some();
        let stage2 = match (rid_stage2, parent) {
            (s2, None) => s2,
            (None, Some(p)) => p,
            (Some(s2), Some(Some(p))) if s2 == p => Some(s2),
            (Some(_), Some(_)) => return Err(MIXED),
        };
        // A stream that may stall stalls its stage-2 faults too (S2S); S2R records them.
        let stage2 = stage2.map(|s2| Stage2 {
            s: self.stall,
            r: s2.r || self.stall,
            ..s2
        });
        let builder = match (stage1, stage2) {
            (false, None) => return Ok(Ste::ABORT),
            (false, Some(s2)) => SteBuilder::stage2(s2),
            (true, s2) => {
                let cd = self.cd.as_ref().ok_or(SmmuError::InvalidConfig {
                    reason: "stage 1 without a CD table",
                })?;
                let s1 = stage1_fields(cd, dss, coherency);
                match s2 {
                    Some(s2) => SteBuilder::nested(s1, s2),
                    None => SteBuilder::stage1(s1),
                }
            }
        };
        let builder = if self.ats {
            builder.eats(Eats::Translate)
        } else {
            builder
        };
        builder
            .s1_stall_disabled(stall_model && !self.stall)
            .ppar(self.ppar)
            .build()
    }
}

impl<A: PageAllocator> StreamState<A> {
    /// The STE of a stream whose RID domain is a user domain: the guest's CD table owns every
    /// SubstreamID, so the crate attaches none.
    fn user_ste(
        &self,
        guest: GuestConfig,
        s2: Stage2,
        stall_model: bool,
    ) -> Result<Ste, SmmuError> {
        if self.pasids.iter().any(Option::is_some) {
            return Err(SmmuError::InvalidConfig {
                reason: "the guest's CD table holds the SubstreamIDs of a user domain's stream",
            });
        }
        let builder = match guest {
            GuestConfig::Abort => return Ok(Ste::ABORT),
            GuestConfig::Bypass => SteBuilder::stage2(s2),
            // MEV: a guest CD table that faults on every access must not flood the host's
            // event queue (Linux sets it in nested STEs too, "for DoS mitigations").
            GuestConfig::Translate(s1) => SteBuilder::nested(s1, s2).mev(true),
        };
        // A guest's CD with S = 1 must not make a stream stall that the platform does not
        // declare able to.
        let builder = builder
            .s1_stall_disabled(stall_model && !self.stall)
            .ppar(self.ppar);
        if self.ats {
            builder.eats(Eats::Translate).build()
        } else {
            builder.build()
        }
    }
}

fn stage1_fields<A: PageAllocator>(
    cd: &CdTable<A>,
    dss: S1Dss,
    coherency: WalkerCoherency,
) -> Stage1 {
    let (cache, sh) = match coherency {
        WalkerCoherency::Coherent => (Cacheability::WriteBackAllocate, Shareability::Inner),
        WalkerCoherency::NonCoherent => (Cacheability::NonCacheable, Shareability::Outer),
    };
    Stage1 {
        context_ptr: cd.context_ptr(),
        fmt: cd.fmt(),
        cdmax: cd.cdmax(),
        dss,
        cir: cache,
        cor: cache,
        csh: sh,
    }
}
