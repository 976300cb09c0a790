//! The unit's books against its real tables: [`SmmuUnit::audit`].
//!
//! Arm IHI 0070 G.b §5.2 (STE), §5.4 (CD), §3.3 (stream table and CD table layouts), §6.3.23
//! -§6.3.31 (the base registers). The books are what the unit believes: the streams and their
//! attachments, the domains with their user counts, the VMID and ASID allocators. The tables are
//! what the hardware reads: every STE and CD in memory, and the base registers. After any call,
//! whatever it returned, the two agree, except on a stream whose last attach or detach failed
//! part-way (it is *unsettled* until that call is retried): its STE and CDs may be anywhere
//! between the old and the new state, and the domain it retired keeps a user until then.

use core::fmt;
use core::sync::atomic::Ordering;

use super::cd::V as CD_V;
use super::flush::TlbTag;
use super::regs;
use super::stream::MAX_PASIDS;
use super::unit::SmmuUnit;
use super::{SmmuError, StreamId, SubstreamId, MAX_DOMAINS};
use crate::mem::PageAllocator;
use crate::mmio::RegisterWindow;

/// What [`SmmuUnit::audit`] walked, all of it consistent with the books.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Streams the unit tracks (something attached, ATS on, or unsettled).
    pub streams: usize,
    /// Streams whose last attach or detach failed part-way: the retry of that call completes
    /// them. Their STE and CDs were not compared.
    pub unsettled: usize,
    /// STEs in memory that do not abort.
    pub live_stes: usize,
    /// Valid CDs in the streams' CD tables.
    pub live_cds: usize,
    /// Domains allocated.
    pub domains: usize,
    /// Domains owing an invalidation a failed flush or reclaim did not complete (their next
    /// flush, reclaim or free issues it; until then a device may use stale TLB or ATC entries
    /// of theirs).
    pub owing: usize,
    /// Table pages a failed reclaim unlinked that wait for that invalidation (allocated,
    /// reachable by no table, freed once it completed).
    pub owed_pages: usize,
}

/// A disagreement between the unit's books and its tables: a bug (in this crate, or memory
/// the embedder changed underneath it). Each variant names the place to look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// The STE of a settled stream is not the one its attachments make.
    SteMismatch {
        /// The StreamID.
        sid: u32,
    },
    /// An STE that does not abort, for a StreamID the unit tracks no attachment for.
    StraySte {
        /// The StreamID.
        sid: u32,
    },
    /// The CD of a stage-1 attachment is not its domain's.
    CdMismatch {
        /// The StreamID.
        sid: u32,
        /// The SubstreamID (0 for the RID domain).
        ssid: u32,
    },
    /// A valid CD that no attachment explains.
    StrayCd {
        /// The StreamID.
        sid: u32,
        /// The SubstreamID.
        ssid: u32,
    },
    /// An attachment names a domain that does not exist.
    MissingDomain {
        /// The StreamID.
        sid: u32,
        /// The handle.
        domain: u16,
    },
    /// A domain's count of users (or ATS users, or nested children) differs from the
    /// attachments (and unfinished retirements) that name it.
    Users {
        /// The domain.
        domain: u16,
        /// Which count: "users", "ATS users" or "children".
        what: &'static str,
        /// The count the domain holds.
        books: u32,
        /// The count the attachments give.
        found: u32,
    },
    /// A domain's VMID or ASID is free in its allocator: it could be handed out again.
    TagFree {
        /// The domain.
        domain: u16,
    },
    /// Tags in use that no domain holds (a tag leaked), or two domains holding one tag.
    TagCount {
        /// "VMID" or "ASID".
        what: &'static str,
        /// Tags the allocator has in use.
        in_use: u32,
        /// Tags the domains hold.
        held: u32,
    },
    /// A base register does not point at the unit's structure while the unit is on.
    Register {
        /// The register.
        name: &'static str,
        /// What the unit's structure needs.
        expected: u64,
        /// What the register holds.
        found: u64,
    },
    /// A table could not be read (an allocator that no longer translates its address).
    Table(SmmuError),
}

impl From<SmmuError> for AuditError {
    fn from(e: SmmuError) -> Self {
        Self::Table(e)
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::SteMismatch { sid } => write!(f, "STE {sid:#x} differs from its attachments"),
            Self::StraySte { sid } => write!(f, "STE {sid:#x} is live with nothing attached"),
            Self::CdMismatch { sid, ssid } => {
                write!(f, "CD {ssid:#x} of stream {sid:#x} is not its domain's")
            }
            Self::StrayCd { sid, ssid } => {
                write!(
                    f,
                    "CD {ssid:#x} of stream {sid:#x} is valid with nothing attached"
                )
            }
            Self::MissingDomain { sid, domain } => {
                write!(f, "stream {sid:#x} names missing domain {domain}")
            }
            Self::Users {
                domain,
                what,
                books,
                found,
            } => write!(
                f,
                "domain {domain} counts {books} {what}, the attachments give {found}"
            ),
            Self::TagFree { domain } => write!(f, "the tag of domain {domain} is free"),
            Self::TagCount { what, in_use, held } => {
                write!(f, "{in_use} {what}s in use, {held} held by domains")
            }
            Self::Register {
                name,
                expected,
                found,
            } => write!(f, "{name} is {found:#x}, expected {expected:#x}"),
            Self::Table(e) => write!(f, "table unreadable: {e}"),
        }
    }
}

/// Per-domain counts found by walking the attachments.
#[derive(Clone, Copy, Default)]
struct Counts {
    users: u32,
    ats: u32,
    children: u32,
}

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// Checks that the unit's books equal what a walk of its real tables finds: every STE in
    /// the stream table and every CD of every stream's CD table is the one the attachments
    /// make (and none is live without one), every domain counts exactly the attachments that
    /// use it, every domain's VMID/ASID is marked in use and no other is, and while the unit
    /// is on, STRTAB_BASE, CMDQ_BASE and EVENTQ_BASE point at its structures.
    ///
    /// For an embedder: after an error it answers "is the unit still consistent, or only
    /// waiting for a retry?" ([`AuditReport::unsettled`], [`AuditReport::owing`]); in a
    /// debug build it can run after
    /// every call. It takes the configuration lock and reads every STE (`2^sid_bits` of a
    /// linear table, those of present level-2 tables otherwise) and every CD: not for a hot
    /// path.
    ///
    /// # Errors
    ///
    /// The first disagreement found, as an [`AuditError`].
    pub fn audit(&self) -> Result<AuditReport, AuditError> {
        let config = self.config.lock();
        let mut report = AuditReport::default();
        let mut counts = [Counts::default(); MAX_DOMAINS];
        let mut user_counts = [0u32; super::nested::MAX_USER_DOMAINS];
        let coherency = self.features.coherency();
        let ssid0 = SubstreamId::new(0)?;
        for stream in config.streams.iter().flatten() {
            report.streams += 1;
            let sid = stream.sid.0;
            let named = stream
                .attachments()
                .map(|(_, d)| (d, stream.ats))
                .chain(stream.retiring.map(|r| (r.domain, r.ats)));
            for (d, ats) in named {
                if let Some(i) = super::nested::user_index(d) {
                    if let Some(n) = user_counts.get_mut(i) {
                        *n += 1;
                    }
                    continue;
                }
                let c = counts
                    .get_mut(usize::from(d.0))
                    .ok_or(AuditError::MissingDomain { sid, domain: d.0 })?;
                c.users += 1;
                c.ats += u32::from(ats);
            }
            if stream.unsettled || stream.retiring.is_some() {
                report.unsettled += 1;
                continue;
            }
            if let Some(strtab) = config.strtab.as_ref() {
                let want = stream
                    .ste(coherency, self.features.stall, |d| self.shape(d))
                    .map_err(|_| AuditError::SteMismatch { sid })?;
                if strtab.read(stream.sid)? != want {
                    return Err(AuditError::SteMismatch { sid });
                }
            }
            let Some(table) = stream.cd.as_ref() else {
                continue;
            };
            // The stage-1 attachments and the CD each needs.
            let mut expected = [None; MAX_PASIDS + 1];
            for (slot, (ssid, d)) in expected.iter_mut().zip(stream.attachments()) {
                let guard = self
                    .slot(d)
                    .map_err(|_| AuditError::MissingDomain { sid, domain: d.0 })?;
                let guard = guard.read();
                let dom = guard
                    .as_ref()
                    .ok_or(AuditError::MissingDomain { sid, domain: d.0 })?;
                if !dom.is_stage2() {
                    *slot = Some((ssid.unwrap_or(ssid0), dom.context_descriptor()?));
                }
            }
            for raw in 0..1u32 << table.cdmax() {
                let ssid = SubstreamId::new(raw)?;
                let cd = table.read(ssid)?;
                let want = expected.iter().flatten().find(|(s, _)| *s == ssid);
                match want {
                    Some((_, w)) if *w != cd => {
                        return Err(AuditError::CdMismatch { sid, ssid: raw })
                    }
                    Some(_) => report.live_cds += 1,
                    None if cd.words[0] & CD_V != 0 => {
                        return Err(AuditError::StrayCd { sid, ssid: raw })
                    }
                    None => {}
                }
            }
        }
        if let Some(strtab) = config.strtab.as_ref() {
            let mut stray = None;
            strtab.for_each_ste(|sid, ste| {
                if !ste.valid() || ste.config_raw() == 0 {
                    return;
                }
                report.live_stes += 1;
                let tracked = config.streams.iter().flatten().any(|s| s.sid == sid);
                if !tracked {
                    stray.get_or_insert(sid);
                }
            })?;
            if let Some(StreamId(sid)) = stray {
                return Err(AuditError::StraySte { sid });
            }
        }
        for (i, u) in self.user_domains.read().iter().enumerate() {
            let found = user_counts.get(i).copied().unwrap_or(0);
            let domain = super::nested::USER_DOMAIN_BASE + i as u16;
            match u {
                None if found != 0 => {
                    return Err(AuditError::MissingDomain {
                        sid: u32::MAX,
                        domain,
                    })
                }
                Some(u) if u.users != found => {
                    return Err(AuditError::Users {
                        domain,
                        what: "users",
                        books: u.users,
                        found,
                    })
                }
                Some(u) => {
                    report.domains += 1;
                    if let Some(c) = counts.get_mut(usize::from(u.parent.0)) {
                        c.children += 1;
                    }
                }
                None => {}
            }
        }
        self.audit_domains(&config.vmids, &config.asids, &mut counts, &mut report)?;
        drop(config);
        self.audit_registers()?;
        Ok(report)
    }

    /// The VMIDs and ASIDs in use now (copies of the allocators). A tag outside them may be
    /// handed to the next domain, so nothing the unit caches may still carry it: with a model
    /// of the hardware, compare them with the tags its TLB holds.
    pub fn tags_in_use(&self) -> (super::TagAllocator, super::TagAllocator) {
        let config = self.config.lock();
        (config.vmids, config.asids)
    }

    fn audit_domains(
        &self,
        vmids: &super::TagAllocator,
        asids: &super::TagAllocator,
        counts: &mut [Counts; MAX_DOMAINS],
        report: &mut AuditReport,
    ) -> Result<(), AuditError> {
        for slot in self.domains.iter().take(self.cfg.max_domains) {
            if let Some(dom) = slot.read().as_ref() {
                if let Some(c) = dom.parent.and_then(|p| counts.get_mut(usize::from(p.0))) {
                    c.children += 1;
                }
            }
        }
        let (mut vmids_held, mut asids_held) = (0u32, 0u32);
        for (i, slot) in self.domains.iter().enumerate().take(self.cfg.max_domains) {
            let guard = slot.read();
            let found = counts.get(i).copied().unwrap_or_default();
            let Some(dom) = guard.as_ref() else {
                if found.users != 0 {
                    return Err(AuditError::MissingDomain {
                        sid: u32::MAX,
                        domain: i as u16,
                    });
                }
                continue;
            };
            report.domains += 1;
            if dom.owed.is_owed() {
                report.owing += 1;
                report.owed_pages += dom.owed.pages();
            }
            let domain = i as u16;
            for (what, books, found) in [
                ("users", dom.users.load(Ordering::Acquire), found.users),
                (
                    "ATS users",
                    dom.ats_users.load(Ordering::Acquire),
                    found.ats,
                ),
                (
                    "children",
                    dom.children.load(Ordering::Acquire),
                    found.children,
                ),
            ] {
                if books != found {
                    return Err(AuditError::Users {
                        domain,
                        what,
                        books,
                        found,
                    });
                }
            }
            let free = match dom.tag {
                TlbTag::Stage2 { vmid, .. } => {
                    vmids_held += 1;
                    !vmids.is_used(vmid.0)
                }
                TlbTag::Stage1 { asid, .. } => {
                    asids_held += 1;
                    !asids.is_used(asid.0)
                }
            };
            if free {
                return Err(AuditError::TagFree { domain });
            }
        }
        for (what, in_use, held) in [
            ("VMID", vmids.in_use(), vmids_held),
            ("ASID", asids.in_use(), asids_held),
        ] {
            if in_use != held {
                return Err(AuditError::TagCount { what, in_use, held });
            }
        }
        Ok(())
    }

    fn audit_registers(&self) -> Result<(), AuditError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let check = |name, offset, expected: u64| {
            let found = self.regs.read64(offset);
            if found != expected {
                return Err(AuditError::Register {
                    name,
                    expected,
                    found,
                });
            }
            Ok(())
        };
        if let Some(strtab) = self.config.lock().strtab.as_ref() {
            check("STRTAB_BASE", regs::STRTAB_BASE, strtab.base_register())?;
        }
        if let Some(q) = self.cmdq.lock().as_ref() {
            check("CMDQ_BASE", regs::CMDQ_BASE, q.base_register())?;
        }
        if let Some(q) = self.eventq.lock().as_ref() {
            check("EVENTQ_BASE", regs::EVENTQ_BASE, q.base_register())?;
        }
        Ok(())
    }
}
