//! Checking the unit's books against its real tables: Intel VT-d specification rev. 4.1, §9.1 -
//! §9.6 (the root, context, PASID-directory and PASID-table entries walked) and §11.4 (the
//! `GSTS`, `RTADDR` and `IQA` registers read).
//!
//! [`VtdUnit::audit`] walks every present root, context and PASID entry the hardware would walk
//! and compares each with the attachment the unit recorded for it, then compares the registers
//! with the unit's state. It is what the fault-matrix test runs after every injected error, and
//! what an embedder can run after an error it does not trust, or from a debug command.

use core::fmt;

use super::attach::read_pasid_entry;
use super::{Attachment, ConfigState, Mode, VtdUnit, MAX_ATTACHMENTS, RID_PASID};
use crate::mem::{PageAllocator, PhysAddr};
use crate::mmio::RegisterWindow;
use crate::vtd::context_entry::{ContextEntry, ScalableContextEntry, TranslationType};
use crate::vtd::domain::with_table;
use crate::vtd::invalidation::Invalidator;
use crate::vtd::pasid_entry::Pgtt;
use crate::vtd::pasid_table::PasidDirectory;
use crate::vtd::regs::{self, Gsts, RootTableAddress};
use crate::vtd::root_table::{resolve, RootSlot};
use crate::vtd::{Error, Pasid, SourceId};

/// What [`VtdUnit::audit`] found, when the books and the tables agree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Present context entries (legacy) or PASID entries (scalable) found in the tables.
    pub entries: usize,
    /// Attachments recorded.
    pub attachments: usize,
    /// Attachments an attach or detach left half-way (entry cleared or not yet confirmed).
    pub unsettled: usize,
    /// Domains allocated.
    pub domains: usize,
    /// Domains owing an invalidation a failed flush or reclaim did not complete (their next
    /// flush, reclaim or free issues it).
    pub owing: usize,
    /// Table pages that wait for those invalidations (unlinked, still allocated).
    pub owed_pages: usize,
}

/// Where the books and the hardware disagree. Each variant names the entry and the values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuditError {
    /// A present entry that no attachment records: the hardware translates for a device the
    /// unit does not know is attached.
    UnrecordedEntry {
        /// Requester ID.
        sid: u16,
        /// PASID (`None`: requests without PASID).
        pasid: Option<u32>,
        /// The entry's word 0.
        word0: u64,
    },
    /// A settled attachment whose entry is not present.
    MissingEntry {
        /// Requester ID.
        sid: u16,
        /// PASID.
        pasid: Option<u32>,
    },
    /// An entry that points at another table or domain-ID than its attachment's domain.
    WrongDomain {
        /// Requester ID.
        sid: u16,
        /// PASID.
        pasid: Option<u32>,
        /// The domain-ID recorded (0 if the attachment names no live domain).
        expected_did: u16,
        /// The domain-ID in the entry.
        found_did: u16,
        /// The table pointer in the entry.
        found_table: u64,
    },
    /// A domain whose domain-ID is not the one its slot stands for.
    WrongDomainId {
        /// The domain's slot (its handle).
        domain: u16,
        /// Its domain-ID.
        did: u16,
    },
    /// A register disagrees with the unit's state.
    Register {
        /// Which register, and what was expected.
        register: &'static str,
        /// Its value.
        value: u64,
    },
    /// A table could not be walked (an entry points at memory the allocator does not know).
    Table(Error),
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pasid = |p: &Option<u32>| p.map_or(-1, i64::from);
        match self {
            Self::UnrecordedEntry {
                sid,
                pasid: p,
                word0,
            } => write!(
                f,
                "entry of {sid:#06x} PASID {} present ({word0:#x}) but not recorded",
                pasid(p)
            ),
            Self::MissingEntry { sid, pasid: p } => {
                write!(
                    f,
                    "attachment of {sid:#06x} PASID {} has no entry",
                    pasid(p)
                )
            }
            Self::WrongDomain {
                sid,
                pasid: p,
                expected_did,
                found_did,
                found_table,
            } => write!(
                f,
                "entry of {sid:#06x} PASID {} holds DID {found_did} table {found_table:#x}, \
                 expected DID {expected_did}",
                pasid(p)
            ),
            Self::WrongDomainId { domain, did } => {
                write!(f, "domain {domain} carries DID {did}")
            }
            Self::Register { register, value } => write!(f, "{register}: {value:#x}"),
            Self::Table(e) => write!(f, "table walk: {e}"),
        }
    }
}

impl From<Error> for AuditError {
    fn from(e: Error) -> Self {
        Self::Table(e)
    }
}

/// What an entry found in the tables points at.
#[derive(Clone, Copy)]
struct Found {
    sid: SourceId,
    pasid: Option<Pasid>,
    word0: u64,
    did: u16,
    table: PhysAddr,
    /// Legacy `TT = 01b` (device TLB allowed); `None` where the entry does not say.
    device_tlb: Option<bool>,
}

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> VtdUnit<W, A, DOMAINS> {
    /// Walks the unit's real tables and compares them with its books: every present context
    /// entry (legacy) or PASID entry (scalable) belongs to a recorded attachment and points at
    /// that attachment's domain (table and domain-ID); every settled attachment has its entry;
    /// every domain carries its slot's domain-ID; once the unit runs (after `enable`),
    /// `GSTS.QIES`, `IQA` and `RTADDR` agree with the queue and root table it runs. An attachment an attach or detach left
    /// half-way (*unsettled*) may have its entry present or not, but never pointing elsewhere.
    ///
    /// Takes the configuration lock (and each domain's lock in turn): it sees a consistent
    /// state, and configuration calls wait meanwhile.
    ///
    /// # Errors
    /// The first disagreement, as an [`AuditError`].
    pub fn audit(&self) -> Result<AuditReport, AuditError> {
        let cfg = self.config.lock();
        let mut report = AuditReport::default();
        self.audit_registers(&cfg)?;
        for (slot, lock) in self.domains.iter().enumerate() {
            let guard = lock.read();
            if let Some(d) = guard.as_ref() {
                report.domains += 1;
                let owed = d.owed.lock();
                if !owed.is_empty() {
                    report.owing += 1;
                    report.owed_pages += owed.freed_pages();
                }
                drop(owed);
                if self.info.did_of(slot) != Some(d.did) {
                    return Err(AuditError::WrongDomainId {
                        domain: slot as u16,
                        did: d.did.get(),
                    });
                }
            }
        }
        let mut matched = [false; MAX_ATTACHMENTS];
        let mut check = |found: Found| -> Result<(), AuditError> {
            report.entries += 1;
            self.check_entry(&cfg, &mut matched, found)
        };
        for bus in 0..=255u8 {
            match self.info.mode {
                Mode::Legacy => self.walk_legacy(&cfg, bus, &mut check)?,
                Mode::Scalable => {
                    for half in [RootSlot::ScalableLower, RootSlot::ScalableUpper] {
                        self.walk_scalable(&cfg, bus, half, &mut check)?;
                    }
                }
            }
        }
        for (a, seen) in cfg.recorded().iter().zip(matched) {
            let Some(a) = a else { continue };
            report.attachments += 1;
            if !a.settled {
                report.unsettled += 1;
            } else if !seen {
                return Err(AuditError::MissingEntry {
                    sid: a.sid.get(),
                    pasid: a.pasid.map(Pasid::get),
                });
            }
        }
        Ok(report)
    }

    fn audit_registers(&self, cfg: &ConfigState) -> Result<(), AuditError> {
        let gsts = regs::gsts(&self.regs);
        let inv = self.inval.lock();
        let queue = match &*inv {
            Invalidator::Queue(q) => Some(q.ring_pa()),
            _ => None,
        };
        // Before `enable` (or after a takeover that stopped early) the registers may still
        // hold a previous owner's state: only a unit that runs its own queue is checked.
        if queue.is_some() && !gsts.contains(Gsts::QIES) {
            return Err(AuditError::Register {
                register: "GSTS.QIES (expected set while the unit runs its queue)",
                value: u64::from(gsts.bits()),
            });
        }
        if let Some(ring) = queue {
            let iqa = self.regs.read64(regs::IQA_REG);
            if iqa & !0xfff != ring.get() {
                return Err(AuditError::Register {
                    register: "IQA (expected the unit's queue)",
                    value: iqa,
                });
            }
        }
        if !matches!(*inv, Invalidator::Off) {
            let rtaddr = self.regs.read64(regs::RTADDR_REG);
            if rtaddr & RootTableAddress::RTA.mask() != cfg.root.pa().get() {
                return Err(AuditError::Register {
                    register: "RTADDR (expected the unit's root table)",
                    value: rtaddr,
                });
            }
        }
        Ok(())
    }

    /// Checks one entry found in the tables against the attachment recorded for it.
    fn check_entry(
        &self,
        cfg: &ConfigState,
        matched: &mut [bool; MAX_ATTACHMENTS],
        found: Found,
    ) -> Result<(), AuditError> {
        let (sid, pasid) = (found.sid.get(), found.pasid.map(Pasid::get));
        let Some(index) = cfg.find(found.sid, found.pasid) else {
            return Err(AuditError::UnrecordedEntry {
                sid,
                pasid,
                word0: found.word0,
            });
        };
        if let Some(m) = matched.get_mut(index) {
            *m = true;
        }
        let att: Option<Attachment> = cfg.get(index);
        let expected = att.and_then(|a| {
            if let Some(u) = a.slot.checked_sub(DOMAINS) {
                // A user domain's nested entry: its own DID over the parent's table.
                let parent = cfg.users.get(u).copied().flatten()?.parent;
                let guard = self.domains.get(parent)?.read();
                let root = with_table!(&guard.as_ref()?.table, t => t.root());
                return Some((self.info.did_of(a.slot)?.get(), root, a.ats));
            }
            let guard = self.domains.get(a.slot)?.read();
            let d = guard.as_ref()?;
            let root = with_table!(&d.table, t => t.root());
            Some((d.did.get(), root, a.ats))
        });
        let wrong = AuditError::WrongDomain {
            sid,
            pasid,
            expected_did: expected.map_or(0, |e| e.0),
            found_did: found.did,
            found_table: found.table.get(),
        };
        match expected {
            Some((did, root, ats)) if did == found.did && root == found.table => {
                match found.device_tlb {
                    Some(tt) if att.is_some_and(|a| a.settled) && tt != ats => Err(wrong),
                    _ => Ok(()),
                }
            }
            _ => Err(wrong),
        }
    }

    fn walk_legacy(
        &self,
        cfg: &ConfigState,
        bus: u8,
        check: &mut impl FnMut(Found) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let (co, haw, alloc) = (self.info.coherency, self.info.haw, &self.alloc);
        let Some(table) = cfg
            .root
            .context_table(bus, RootSlot::Legacy, alloc, co, haw, false)?
        else {
            return Ok(());
        };
        for devfn in 0..=255u8 {
            let e = table.entry(devfn);
            let c = ContextEntry {
                lo: e.word(0).unwrap_or(0),
                hi: e.word(1).unwrap_or(0),
            };
            if !c.present() {
                continue;
            }
            check(Found {
                sid: SourceId::new(u16::from(bus) << 8 | u16::from(devfn)),
                pasid: None,
                word0: c.lo,
                did: c.did().get(),
                table: c.slptptr(),
                device_tlb: Some(c.translation_type() == Ok(TranslationType::DeviceTlb)),
            })?;
        }
        Ok(())
    }

    fn walk_scalable(
        &self,
        cfg: &ConfigState,
        bus: u8,
        half: RootSlot,
        check: &mut impl FnMut(Found) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let (co, haw, alloc) = (self.info.coherency, self.info.haw, &self.alloc);
        let Some(table) = cfg.root.context_table(bus, half, alloc, co, haw, false)? else {
            return Ok(());
        };
        let base: u8 = if half == RootSlot::ScalableUpper {
            128
        } else {
            0
        };
        for index in 0..128u8 {
            let devfn = base | index;
            let ctx = table.entry(devfn);
            let w0 = ctx.word(0).unwrap_or(0);
            if w0 & ScalableContextEntry::P == 0 {
                continue;
            }
            let pdts = ScalableContextEntry::PDTS.get(w0) as u8;
            let dir_pa = PhysAddr::new(w0 & ScalableContextEntry::PASIDDIRPTR.mask());
            let dir = PasidDirectory::new(resolve(alloc, dir_pa, "context entry")?, pdts);
            let sid = SourceId::new(u16::from(bus) << 8 | u16::from(devfn));
            let directory_entries = 1u32 << (u32::from(pdts) + 7);
            for dir_index in 0..directory_entries {
                let first = Pasid::new(dir_index * 64).map_err(AuditError::Table)?;
                if dir.entry(first, alloc, co, haw, false)?.is_none() {
                    continue;
                }
                for i in 0..64 {
                    let p = Pasid::new(dir_index * 64 + i).map_err(AuditError::Table)?;
                    let Some(e) = dir.entry(p, alloc, co, haw, false)? else {
                        continue;
                    };
                    let pe = read_pasid_entry(&e);
                    if !pe.present() {
                        continue;
                    }
                    let table = match pe.pgtt() {
                        Ok(Pgtt::FirstStage) => pe.fsptptr(),
                        _ => pe.ssptptr(),
                    };
                    check(Found {
                        sid,
                        pasid: (p != RID_PASID).then_some(p),
                        word0: pe.qw[0],
                        did: pe.did().get(),
                        table,
                        device_tlb: None,
                    })?;
                }
            }
        }
        Ok(())
    }
}
