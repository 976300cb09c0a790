//! Attaching and detaching StreamIDs and (StreamID, SubstreamID) pairs.
//!
//! Arm IHI 0070 G.b §3.21.3 "Configuration structures and configuration invalidation": a live
//! STE changes through [`ste_update`](super::ste_update) (hitless where the two STEs allow, each
//! step followed by CMD_CFGI_STE and CMD_SYNC); a CD is made valid with its V bit last and
//! invalid with it first, then CMD_CFGI_CD and CMD_SYNC (§5.4). After a detach the unit may
//! still hold TLB entries tagged by the old domain's VMID or ASID: they are invalidated
//! (CMD_TLBI_S12_VMALL / CMD_TLBI_NH_ASID, and CMD_ATC_INV for ATS streams) only after the
//! configuration invalidation that stops new fills has completed (its own CMD_SYNC, since
//! commands between syncs may complete in any order), and that sync too completes before the
//! call returns, so the tag is clean before it can be reused.
//!
//! Refusals (an STE that cannot express the combination, no memory for a CD table) change
//! nothing. A failure once the unit's memory is being changed (a CMD_SYNC that times out, a
//! command error) leaves the books describing the new state and the stream *unsettled*, with the
//! domain it took off (the previous one of an attach, the detached one) *retiring*: that domain
//! keeps its user, so it cannot be freed while a cached STE or CD may still reach it, and its
//! tag cannot be reused. The next attach or detach of the stream -- the retry of the failed
//! call, typically -- first settles it: every CD and the STE are made to match the books, the
//! stream's configuration caches and the retiring domain's tag (and ATC) are invalidated, and
//! only then is that domain released. Until then, flushes and reclaims of the retiring domain
//! invalidate the stream's whole ATC too (`ops::AtcCommands`). The retry of a failed attach
//! then finds the attachment made and returns `Ok`; the retry of a failed detach finds it gone
//! and returns `Ok`.
//! [`SmmuUnit::audit`](super::SmmuUnit::audit) counts unsettled streams.
//!
//! The STE write that turns `EATS` on (§5.2, §3.9.1) is followed by CMD_ATC_INV of the
//! stream's whole ATC (§4.5.1: no SubstreamID, Size 52 from 0) and a CMD_SYNC before the call
//! returns: the device's ATC may hold translations from before this unit let it use ATS.

use core::sync::atomic::Ordering;

use super::cd::CdTable;
use super::cmd::Command;
use super::cmdq::CommandQueue;
use super::flush::invalidate_all;
use super::platform::{CANWBS_NOT_DECLARED, USER_STAGE1_NOT_COHERENT};
use super::ste::Ste;
use super::stream::{DomainShape, Retiring, StreamState, MAX_PASIDS};
use super::strtab::StreamTable;
use super::unit::{ConfigState, SmmuUnit};
use super::{SmmuError, StreamId, SubstreamId};
use crate::iommu::{AtsPermission, DeviceId, DomainHandle, Error, Missing, Pasid};
use crate::mem::{Iova, PageAllocator};
use crate::mmio::RegisterWindow;

/// Commands a [`Batch`] buffers before one CMDQ_PROD write.
const BATCH_COMMANDS: usize = 16;

/// Where a [`Batch`] buffers its commands: owned by the unit (256 bytes that a kernel stack
/// should not carry along every invalidation), behind its own lock, which only
/// [`Batch::new`] takes, and only with the command queue borrowed exclusively: it is never
/// contended. A batch starts from an empty buffer whatever the previous one left.
#[derive(Debug)]
pub(crate) struct CommandStaging {
    buf: [Command; BATCH_COMMANDS],
}

impl CommandStaging {
    /// An empty buffer.
    pub(crate) const fn new() -> Self {
        Self {
            buf: [Command::plain_sync(); BATCH_COMMANDS],
        }
    }
}

/// Up to [`BATCH_COMMANDS`] commands per CMDQ_PROD write.
pub(crate) struct Batch<'q, W: RegisterWindow, A: PageAllocator> {
    q: &'q mut CommandQueue<A>,
    regs: &'q W,
    /// The unit's buffer; the first `len` commands are pending.
    staging: crate::sync::MutexGuard<'q, CommandStaging>,
    len: usize,
}

impl<'q, W: RegisterWindow, A: PageAllocator> Batch<'q, W, A> {
    /// An empty batch on `q`, buffering in `staging` (the unit's `cmd_staging`).
    pub(crate) fn new(
        q: &'q mut CommandQueue<A>,
        regs: &'q W,
        staging: &'q crate::sync::Mutex<CommandStaging>,
    ) -> Self {
        Self {
            q,
            regs,
            staging: staging.lock(),
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, c: Command) -> Result<(), SmmuError> {
        if self.len == BATCH_COMMANDS {
            self.submit()?;
        }
        if let Some(slot) = self.staging.buf.get_mut(self.len) {
            *slot = c;
            self.len += 1;
        }
        Ok(())
    }

    fn submit(&mut self) -> Result<(), SmmuError> {
        let cmds = self.staging.buf.get(..self.len).unwrap_or(&[]);
        self.len = 0;
        self.q.submit(self.regs, cmds)
    }

    /// Submits what is buffered and waits for one CMD_SYNC.
    pub(crate) fn sync(mut self) -> Result<(), SmmuError> {
        self.submit()?;
        self.q.sync(self.regs)
    }
}

/// What [`SmmuUnit::attach_locked`] prepared and the unit's memory does not show yet: the new
/// attachment (its SubstreamID, domain, stage, whether an L1CD was published) and the
/// domain it replaces, for `apply_attach`.
struct Change {
    target: (Option<SubstreamId>, DomainHandle, bool, bool),
    previous: Option<DomainHandle>,
}

const NOT_ENABLED: Error = Error::Unsupported(Missing::Mode {
    what: "the SMMU is not enabled",
});

impl<W: RegisterWindow, A: PageAllocator + Clone> SmmuUnit<W, A> {
    /// What an STE needs to know about domain `d`.
    pub(crate) fn shape(&self, d: DomainHandle) -> Result<DomainShape, SmmuError> {
        let missing = SmmuError::InvalidConfig {
            reason: "attached domain vanished",
        };
        if let Some(u) = self.user_domain(d) {
            let ps = self.slot(u.parent).map_err(|_| missing)?.read();
            let s2 = ps.as_ref().ok_or(missing)?.stage2_fields()?;
            return Ok(DomainShape::User(u.config, s2));
        }
        let slot = self.slot(d).map_err(|_| missing)?.read();
        let dom = slot.as_ref().ok_or(missing)?;
        if dom.is_stage2() {
            return Ok(DomainShape::Stage2(dom.stage2_fields()?));
        }
        let parent = match dom.parent {
            Some(p) => {
                let ps = self.slot(p).map_err(|_| missing)?.read();
                Some(ps.as_ref().ok_or(missing)?.stage2_fields()?)
            }
            None => None,
        };
        Ok(DomainShape::Stage1(parent))
    }

    /// Rewrites the live STE of `stream` to match its attachments; returns the syncs used.
    /// Not inlined (nor are the other steps of an attach or settle): each step's locals are
    /// on the stack only while it runs, not all along the update's deepest path.
    ///
    /// A write that turns `EATS` on (the live STE does not allow ATS, the new one does) makes
    /// the stream owe the invalidation of its whole ATC (`StreamState::atc_owed`, set before
    /// the write so that a write that fails part-way leaves it owed), which the caller issues
    /// and waits for once the STE's CFGI_STE completed ([`settle_atc`](Self::settle_atc)):
    /// the device's ATC may hold translations from before (boot firmware, a previous kernel,
    /// a previous owner) that its translated requests could use from now on. Linux's order
    /// (`arm_smmu_enable_ats`): the STE with EATS, then the ATC invalidation, then ATS enabled
    /// in the device's capability, which the embedder does once the attach returned. A call
    /// that fails before it completed leaves the stream unsettled, and the settle of the
    /// next attach or detach issues it again.
    #[inline(never)]
    fn write_ste(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
    ) -> Result<usize, SmmuError> {
        let mut ste = Ste::ABORT;
        self.target_ste(stream, &mut ste)?;
        let sid = stream.sid;
        let allows_ats = ste.allows_ats();
        if allows_ats && !strtab.read(sid)?.allows_ats() {
            stream.atc_owed = true;
        }
        let syncs = strtab.write(sid, &ste, || {
            self.with_cmdq(|q, r| q.submit_and_sync(r, &[Command::cfgi_ste(sid, false)]))
        })?;
        // With EATS off (and CR0.ATSCHK) the ATC's entries are unusable; turning it on again
        // owes the invalidation again.
        if !allows_ats {
            stream.atc_owed = false;
        }
        Ok(syncs)
    }

    /// The whole-ATC invalidation `stream` owes since an STE write turned `EATS` on
    /// (`StreamState::atc_owed`), once that STE's CFGI_STE completed: nothing if none is owed.
    fn settle_atc(&self, stream: &mut StreamState<A>) -> Result<(), SmmuError> {
        if stream.atc_owed {
            self.invalidate_whole_atc(stream.sid)?;
            stream.atc_owed = false;
        }
        Ok(())
    }

    /// CMD_ATC_INV of `sid`'s whole ATC (no SubstreamID: every entry, with a PASID or
    /// without; G = 0, ignored without SSV, §4.5.1; Size 52 from address 0), then a
    /// CMD_SYNC, which completes only once the device answered (a timeout is
    /// CERROR_ATC_INV_SYNC at that CMD_SYNC).
    #[inline(never)]
    fn invalidate_whole_atc(&self, sid: StreamId) -> Result<(), SmmuError> {
        // Ignored while SMMUEN = 0 (§6.3.9.6): still owed, the call fails.
        self.atc_reachable(sid)?;
        let inv = Command::atc_inv(sid, None, Iova::ZERO, 52, false)?;
        self.with_cmdq(|q, r| q.submit_and_sync(r, &[inv]))
    }

    /// Writes into `out` the STE `stream` needs now. Not inlined: the domains' shapes it
    /// reads (and the result it unpacks) are not on the stack under the STE update's syncs.
    #[inline(never)]
    fn target_ste(&self, stream: &StreamState<A>, out: &mut Ste) -> Result<(), SmmuError> {
        *out = stream.ste(self.features.coherency(), self.features.stall, |d| {
            self.shape(d)
        })?;
        Ok(())
    }

    fn check_sid(&self, device: DeviceId) -> Result<StreamId, Error> {
        if self.cfg.sid_bits < 32 && device.0 >> self.cfg.sid_bits != 0 {
            return Err(Error::InvalidDevice(device));
        }
        Ok(StreamId(device.0))
    }

    fn check_ssid(&self, pasid: Pasid) -> Result<SubstreamId, Error> {
        if self.cfg.ssid_bits == 0 {
            return Err(Error::Unsupported(Missing::Pasid { bits: 0 }));
        }
        // SubstreamID 0 is the CD of the RID domain (S1DSS = SUBSTREAM0).
        if pasid.get() == 0 || pasid.get() >> self.cfg.ssid_bits != 0 {
            return Err(Error::InvalidPasid(pasid));
        }
        SubstreamId::new(pasid.get()).map_err(|_| Error::InvalidPasid(pasid))
    }

    /// The slot of `sid`'s record; with `create`, a new record if it has none: in a free slot,
    /// else in place of a record that only remembers its device's forbidden ATS (which
    /// [`ConfigState::ats_forgotten`] then records: records holding nothing else are dropped
    /// at once). `None` when every slot holds more.
    fn stream_index(config: &mut ConfigState<A>, sid: StreamId, create: bool) -> Option<usize> {
        if let Some(i) = config
            .streams
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.sid == sid))
        {
            return Some(i);
        }
        if !create {
            return None;
        }
        let i = match config.streams.iter().position(Option::is_none) {
            Some(i) => i,
            // Not one that declares a stall or PPAR for an attach under way.
            None => {
                let i = config.streams.iter().position(|s| {
                    s.as_ref()
                        .is_some_and(|s| s.is_spare() && !s.stall && !s.ppar)
                })?;
                config.ats_forgotten = true;
                i
            }
        };
        if let Some(slot) = config.streams.get_mut(i) {
            *slot = Some(StreamState::new(sid));
        }
        Some(i)
    }

    /// Refuses to attach `sid` to `d` where the platform's declarations about the device do
    /// not hold up the domain's promises: enforced snooping needs `CANWBS`; a domain's memory
    /// type must match the device's DMA coherency, and a stage 2 that forces write-back
    /// (`STE.S2FWB`) makes everything under it, nested stage 1 included, coherent DMA.
    fn check_platform(&self, d: DomainHandle, sid: StreamId) -> Result<(), Error> {
        // A user domain's device reaches memory through the parent's stage 2: its promises.
        let user = self.user_domain(d).is_some();
        let d = self.user_domain(d).map_or(d, |u| u.parent);
        let (enforce_snoop, coherent_dma, fwb, parent) = {
            let slot = self.slot(d)?.read();
            let dom = slot.as_ref().ok_or(Error::InvalidDomain(d))?;
            let fwb = dom.forces_write_back();
            (dom.enforce_snoop, dom.coherent_dma, fwb, dom.parent)
        };
        // A crate-built nested stage 1's leaves are combined with its parent's (S2FWB wins).
        let fwb = match parent {
            Some(p) => {
                let slot = self.slot(p)?.read();
                slot.as_ref()
                    .ok_or(Error::InvalidDomain(p))?
                    .forces_write_back()
            }
            None => fwb,
        };
        let facts = self.cfg.platform.facts(sid);
        // Without FWB under it, a guest's stage 1 decides the memory type: CANWBS only.
        if user && !fwb && !facts.canwbs {
            return Err(Error::Unsupported(Missing::NotDeclared {
                what: USER_STAGE1_NOT_COHERENT,
            }));
        }
        if enforce_snoop && !facts.canwbs {
            return Err(Error::Unsupported(Missing::NotDeclared {
                what: CANWBS_NOT_DECLARED,
            }));
        }
        // CANWBS: the stream's accesses are coherent whatever their attributes, so a device
        // with no coherency of its own declared is coherent under forced write-back.
        let device =
            self.dma_coherent(&facts) || (fwb && facts.canwbs && facts.coherent_dma.is_none());
        // Forced write-back is coherent DMA whatever the stage 1 says.
        let coherent_dma = if fwb { Some(true) } else { coherent_dma };
        if let Some(domain) = coherent_dma.filter(|&c| c != device) {
            return Err(Error::Unsupported(Missing::DmaCoherency {
                domain,
                device,
                source: facts.coherent_dma_source(),
            }));
        }
        Ok(())
    }

    /// Whether domain `d` has no CD of this crate's: a stage-2 domain, or a user domain (the
    /// guest's CD table is its).
    fn domain_is_stage2(&self, d: DomainHandle) -> Result<bool, Error> {
        if self.user_domain(d).is_some() {
            return Ok(true);
        }
        let slot = self.slot(d)?.read();
        Ok(slot.as_ref().ok_or(Error::InvalidDomain(d))?.is_stage2())
    }

    fn add_user(&self, d: DomainHandle, ats: bool, delta_up: bool) {
        if self.user_domain(d).is_some() {
            self.user_domain_users(d, delta_up);
            return;
        }
        if let Ok(slot) = self.slot(d) {
            if let Some(dom) = slot.read().as_ref() {
                let step = |c: &core::sync::atomic::AtomicU32| {
                    if delta_up {
                        c.fetch_add(1, Ordering::AcqRel);
                    } else {
                        c.fetch_sub(1, Ordering::AcqRel);
                    }
                };
                step(&dom.users);
                if ats {
                    step(&dom.ats_users);
                }
            }
        }
    }

    /// The commands that remove what `d` may have left in the TLBs and ATC of `sid`.
    ///
    /// Called with the command queue locked, it reads `d`'s slot: against the module's lock
    /// order, but harmless, since callers hold the configuration lock and every slot writer
    /// (domain install and free) takes that lock first, so the read never waits.
    fn forget(
        &self,
        d: DomainHandle,
        sid: StreamId,
        ssid: Option<SubstreamId>,
        ats: bool,
        batch: &mut Batch<'_, W, A>,
    ) -> Result<(), SmmuError> {
        if ats {
            // Before anything is queued: the domain stays retiring until this can complete.
            self.atc_reachable(sid)?;
        }
        if let Some(u) = self.user_domain(d) {
            // The guest's stage-1 entries under the parent's VMID (its ASIDs are its own).
            batch.push(Command::tlbi_nh_all(u.vmid))?;
        } else if let Ok(slot) = self.slot(d) {
            if let Some(dom) = slot.read().as_ref() {
                batch.push(invalidate_all(dom.tag))?;
            }
        }
        if ats {
            // Size 52 from address 0: the whole ATC of the stream (no SubstreamID: entries
            // with a PASID and without) or of the substream.
            batch.push(Command::atc_inv(sid, ssid, Iova::ZERO, 52, false)?)?;
        }
        Ok(())
    }

    /// Invalidates the retired configuration `cfgi` (CFGI_CD, CFGI_CD_ALL), then what domain
    /// `d` left in the TLBs and ATC of `sid`, and waits. Only a CMD_SYNC orders the completion
    /// of earlier commands (§4.7): while the live STE still points at the CD table, a TLBI
    /// queued right behind the CFGI_CD could complete first and a transaction using the cached
    /// CD refill the TLB under the tag being retired, so the CFGI_CD gets a sync of its own.
    /// Not inlined: its batches are not on the stack under a caller's STE update.
    #[inline(never)]
    fn retire(
        &self,
        strtab: &StreamTable<A>,
        sid: StreamId,
        cfgi: [Option<Command>; 2],
        forget: (DomainHandle, Option<SubstreamId>, bool),
    ) -> Result<(), SmmuError> {
        let cd_reachable = self.uses_cd(strtab, sid)?;
        let (d, ssid, ats) = forget;
        self.with_cmdq(|q, r| {
            let mut b = Batch::new(q, r, &self.cmd_staging);
            for c in cfgi.into_iter().flatten() {
                b.push(c)?;
            }
            if cd_reachable && cfgi.iter().any(Option::is_some) {
                b.sync()?;
                b = Batch::new(q, r, &self.cmd_staging);
            }
            self.forget(d, sid, ssid, ats, &mut b)?;
            b.sync()
        })
    }

    /// [`crate::iommu::Iommu::attach`].
    pub(crate) fn attach_impl(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        d: DomainHandle,
    ) -> Result<(), Error> {
        self.usable()?;
        let sid = self.check_sid(device)?;
        let ssid = pasid.map(|p| self.check_ssid(p)).transpose()?;
        let mut guard = self.config.lock();
        let config = &mut *guard;
        // Under the configuration lock: the domain cannot be freed meanwhile.
        let stage2 = self.domain_is_stage2(d)?;
        self.check_platform(d, sid)?;
        if ssid.is_some() && self.user_domain(d).is_some() {
            return Err(Error::Unsupported(Missing::Mode {
                what: "the guest's CD table holds a user domain's SubstreamIDs",
            }));
        }
        if ssid.is_some() && stage2 {
            return Err(Error::Unsupported(Missing::Mode {
                what: "a PASID needs a stage-1 domain",
            }));
        }
        if config.strtab.is_none() {
            return Err(NOT_ENABLED);
        }
        let i = Self::stream_index(config, sid, true).ok_or(Error::Busy)?;
        let (Some(Some(stream)), Some(strtab)) =
            (config.streams.get_mut(i), config.strtab.as_mut())
        else {
            return Err(NOT_ENABLED);
        };
        // What an earlier call left unfinished comes first (for the retry of that very call,
        // it is all there is to do): from this frame, not under `attach_locked`'s.
        // Then the books and allocations, and then the unit's memory: each step from this
        // frame, not one under another (the kernel-stack bound of the C ABI).
        let mut r = self.settle(strtab, stream, false);
        if r.is_ok() {
            r = match self.attach_locked(strtab, stream, ssid, d, stage2) {
                Ok(Some(Change { target, previous })) => self
                    .apply_attach(strtab, stream, target, previous)
                    .map(|()| self.settled(stream)),
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            };
        }
        // A stream that is unsettled, or still holds a CD table, stays: the unit may still
        // reach the table, and the retry needs the record.
        if stream.is_forgettable() {
            if let Some(slot) = config.streams.get_mut(i) {
                *slot = None;
            }
        }
        r
    }

    /// The attach of a settled stream up to the unit's memory: books and allocations (undone
    /// on a refusal). Returns the change for `apply_attach`, or `None` if `d` is attached
    /// there already.
    fn attach_locked(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
        ssid: Option<SubstreamId>,
        d: DomainHandle,
        stage2: bool,
    ) -> Result<Option<Change>, Error> {
        // The stream is settled (`attach_impl`).
        let previous = match ssid {
            None => stream.rid,
            Some(s) => stream.pasid_domain(s),
        };
        if previous == Some(d) {
            return Ok(None);
        }
        // What the refusal below restores: the RID's domain, or the one PASID slot changed
        // (not a copy of the whole table: this frame is under the attach's syncs).
        let saved_rid = stream.rid;
        let mut saved_pasid = None;
        match ssid {
            None => stream.rid = Some(d),
            Some(s) => {
                let i = stream
                    .pasids
                    .iter()
                    .position(|p| p.is_some_and(|(x, _)| x == s))
                    .or_else(|| stream.pasids.iter().position(Option::is_none))
                    .ok_or(Error::Busy)?;
                if let Some(slot) = stream.pasids.get_mut(i) {
                    saved_pasid = Some((i, *slot));
                    *slot = Some((s, d));
                }
            }
        }
        let created_cd = !stage2 && stream.cd.is_none();
        let at = ssid.unwrap_or(SubstreamId::new(0)?);
        let l1cd_published = match self.prepare_attach(strtab, stream, at, stage2) {
            Ok(published) => published,
            Err(e) => {
                stream.rid = saved_rid;
                if let Some((i, old)) = saved_pasid {
                    if let Some(slot) = stream.pasids.get_mut(i) {
                        *slot = old;
                    }
                }
                if created_cd {
                    stream.cd = None;
                }
                return Err(e);
            }
        };
        // From here on the unit's memory changes. A failure (a sync that times out) leaves the
        // books describing the new attachment and the stream unsettled, and the previous domain
        // keeps its user: the STE may reference either, so neither may be freed. The retry
        // settles the stream (see `settle`).
        self.add_user(d, stream.ats, true);
        stream.unsettled = true;
        stream.retiring = previous.map(|p| Retiring {
            domain: p,
            ssid,
            ats: stream.ats,
        });
        // The caller applies it (`apply_attach`), then marks the stream settled.
        Ok(Some(Change {
            target: (ssid, d, stage2, l1cd_published),
            previous,
        }))
    }

    /// Marks `stream` settled after a call completed, releasing the retired domain's user;
    /// it stays unsettled while it owes a whole-ATC invalidation (`settle` with `defer_atc`).
    fn settled(&self, stream: &mut StreamState<A>) {
        stream.unsettled = stream.atc_owed;
        if let Some(r) = stream.retiring.take() {
            self.add_user(r.domain, r.ats, false);
        }
    }

    /// Finishes what a failed attach or detach left: makes every CD and the STE in memory
    /// match the attachments (CDs by the live procedure of §3.21.3.1, the STE by its update
    /// plan), invalidates everything the unit may cache for the stream (CMD_CFGI_STE with
    /// Leaf = 0, CMD_CFGI_CD_ALL) and waits, then invalidates the retiring domain's tag (and
    /// the stream's ATC) and waits, and only then releases that domain. On error the stream
    /// stays unsettled and the call can be retried again.
    ///
    /// With `defer_atc` (a detach, which writes the STE again right after) the whole-ATC
    /// invalidation the stream owes (`StreamState::atc_owed`) is left to the caller's STE
    /// write: an STE that no longer allows ATS makes it unnecessary (`write_ste`; CR0.ATSCHK
    /// refuses translated requests, and the retired domain's whole-stream CMD_ATC_INV follows
    /// in `forget`), one that still does is followed by it (`settle_atc`). Issuing it here
    /// first would let a device that never answers keep the detach from ever turning EATS off.
    fn settle(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
        defer_atc: bool,
    ) -> Result<(), Error> {
        let sid = stream.sid;
        if stream.stalls_owed {
            self.terminate_stalls(sid)?;
            stream.stalls_owed = false;
        }
        if !stream.unsettled && stream.retiring.is_none() && !stream.atc_owed {
            return Ok(());
        }
        self.settle_cds(stream)?;
        self.write_ste(strtab, stream)?;
        self.invalidate_stream(stream)?;
        if !defer_atc {
            self.settle_atc(stream)?;
        }
        self.settled(stream);
        if stream.is_empty() {
            // The STE aborts and the CD caches are clean: the CD table can go.
            stream.cd = None;
        }
        Ok(())
    }

    /// The invalidations of [`Self::settle`] once the stream's CDs and STE match its
    /// attachments: everything the unit may cache for the stream (CMD_CFGI_STE with Leaf = 0,
    /// CMD_CFGI_CD_ALL) and a sync, then the retiring domain's tag (and the stream's ATC) and
    /// a sync. In a frame of its own, as the other steps.
    #[inline(never)]
    fn invalidate_stream(&self, stream: &StreamState<A>) -> Result<(), SmmuError> {
        let sid = stream.sid;
        let has_cd = stream.cd.is_some();
        let retiring = stream.retiring;
        self.with_cmdq(|q, r| {
            let mut b = Batch::new(q, r, &self.cmd_staging);
            b.push(Command::cfgi_ste(sid, false))?;
            if has_cd {
                b.push(Command::cfgi_cd_all(sid))?;
            }
            b.sync()?;
            let Some(x) = retiring else { return Ok(()) };
            let mut b = Batch::new(q, r, &self.cmd_staging);
            self.forget(x.domain, sid, x.ssid, x.ats, &mut b)?;
            b.sync()
        })
    }

    /// The CD part of [`Self::settle`]: makes every CD of `stream` match its attachments,
    /// one CD at a time in a frame of its own ([`settle_cd`](Self::settle_cd)).
    #[inline(never)]
    fn settle_cds(&self, stream: &mut StreamState<A>) -> Result<(), Error> {
        if stream.cd.is_none() {
            return Ok(());
        }
        let ssid0 = SubstreamId::new(0)?;
        // Every domain is checked before any CD changes (a vanished one refuses the settle).
        for (_, d) in stream.attachments() {
            self.domain_is_stage2(d)?;
        }
        for k in 0..=MAX_PASIDS {
            let Some((ssid, d)) = stream.attachments().nth(k) else {
                break;
            };
            if !self.domain_is_stage2(d)? {
                self.settle_cd(stream, ssid.unwrap_or(ssid0), d)?;
            }
        }
        if let Some(r) = stream.retiring {
            let at = r.ssid.unwrap_or(ssid0);
            let mut attached = false;
            for (ssid, d) in stream.attachments() {
                attached |= ssid.unwrap_or(ssid0) == at && !self.domain_is_stage2(d)?;
            }
            let table = stream.cd.as_mut().ok_or(NOT_ENABLED)?;
            if !attached && cd_in_slot(table, at, None)?.1 {
                // Covered by the CMD_CFGI_CD_ALL of `invalidate_stream`.
                let _covered = table.remove(at)?;
            }
        }
        Ok(())
    }

    /// Makes the CD at `at` of `stream` that of stage-1 domain `d` (for
    /// [`settle_cds`](Self::settle_cds)), by the live procedure of §3.21.3.1.
    #[inline(never)]
    fn settle_cd(
        &self,
        stream: &mut StreamState<A>,
        at: SubstreamId,
        d: DomainHandle,
    ) -> Result<(), Error> {
        let sid = stream.sid;
        let mut want = super::cd::Cd { words: [0; 8] };
        self.stream_cd(d, stream.stall, &mut want)?;
        let table = stream.cd.as_mut().ok_or(NOT_ENABLED)?;
        let (same, valid) = cd_in_slot(table, at, Some(&want))?;
        if same {
            return Ok(());
        }
        let cfgi =
            |c: super::cd::CdSync| self.with_cmdq(|q, r| q.submit_and_sync(r, &[c.command(sid)]));
        if valid {
            cfgi(table.remove(at)?)?;
        }
        let installed = table.install_live(at, &want, cfgi)?;
        cfgi(installed)?;
        Ok(())
    }

    /// Allocates what the attach needs (the stream's CD table and the leaf holding its CD, the
    /// level-2 stream table holding its STE) and checks that the STE can express the new
    /// attachments, so that a refusal for memory or shape changes nothing the unit can see.
    /// Returns whether an L1CD was published.
    #[inline(never)]
    fn prepare_attach(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
        at: SubstreamId,
        stage2: bool,
    ) -> Result<bool, Error> {
        if !stage2 && stream.cd.is_none() {
            stream.cd = Some(CdTable::new(
                self.alloc.clone(),
                self.cfg.cd_format,
                self.cfg.ssid_bits,
                self.features.coherency(),
                self.features.oas,
            )?);
        }
        stream.ste(self.features.coherency(), self.features.stall, |x| {
            self.shape(x)
        })?;
        strtab.prepare(stream.sid)?;
        match stream.cd.as_mut() {
            Some(table) if !stage2 => Ok(table.prepare(at)?),
            _ => Ok(false),
        }
    }

    /// Writes the CD (stage 1) and the STE for the attachment `(ssid, d, stage2,
    /// l1cd_published)` and retires `previous`. Each step runs in a frame of its own
    /// ([`install_cd`](Self::install_cd), [`write_ste`](Self::write_ste),
    /// [`retire_previous`](Self::retire_previous)): this one holds no CD or STE under the
    /// STE update's syncs.
    #[inline(never)]
    fn apply_attach(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
        (ssid, d, stage2, l1cd_published): (Option<SubstreamId>, DomainHandle, bool, bool),
        previous: Option<DomainHandle>,
    ) -> Result<(), Error> {
        if !stage2 {
            self.install_cd(strtab, stream, ssid, d, l1cd_published)?;
        }
        self.write_ste(strtab, stream)?;
        self.settle_atc(stream)?;
        let Some(p) = previous else { return Ok(()) };
        self.retire_previous(strtab, stream, ssid, stage2, p)
    }

    /// The CD part of [`apply_attach`](Self::apply_attach): writes stage-1 domain `d`'s CD
    /// into the slot of `ssid` (0 for the RID), by the live procedure of §3.21.3.1 when the
    /// unit may be using the stream's CDs now.
    #[inline(never)]
    fn install_cd(
        &self,
        strtab: &StreamTable<A>,
        stream: &mut StreamState<A>,
        ssid: Option<SubstreamId>,
        d: DomainHandle,
        l1cd_published: bool,
    ) -> Result<(), Error> {
        let sid = stream.sid;
        // Config 0b1x1: the unit may be using (and caching) CDs of this stream now.
        let uses_cd_now = self.uses_cd(strtab, sid)?;
        let at = ssid.unwrap_or(SubstreamId::new(0)?);
        let mut cd = super::cd::Cd { words: [0; 8] };
        self.stream_cd(d, stream.stall, &mut cd)?;
        let table = stream.cd.as_mut().ok_or(NOT_ENABLED)?;
        if cd_in_slot(table, at, None)?.1 {
            // Replacing a stage-1 domain: its CD goes invalid first (not hitless).
            let gone = table.remove(at)?;
            if uses_cd_now {
                self.with_cmdq(|q, r| q.submit_and_sync(r, &[gone.command(sid)]))?;
            }
        }
        if uses_cd_now {
            // The unit may be fetching this slot: words with V = 0, CFGI_CD and sync, then
            // V = 1, CFGI_CD and sync (§3.21.3.1).
            let cfgi = |s: super::cd::CdSync| {
                self.with_cmdq(|q, r| q.submit_and_sync(r, &[s.command(sid)]))
            };
            // The leaf was published by `prepare_attach`: the first CFGI_CD covers the
            // L1CD too.
            let first = |s: super::cd::CdSync| {
                cfgi(super::cd::CdSync {
                    leaf: s.leaf && !l1cd_published,
                    ..s
                })
            };
            let installed = table.install_live(at, &cd, first)?;
            cfgi(installed)?;
        } else {
            // No STE reaches the table yet: the CFGI_STE of the switch covers the CD.
            let _ = table.install(at, &cd)?;
        }
        Ok(())
    }

    /// Whether the live STE of `sid` lets the unit use (and cache) the stream's CDs: valid,
    /// Config 0b1x1.
    #[inline(never)]
    fn uses_cd(&self, strtab: &StreamTable<A>, sid: StreamId) -> Result<bool, SmmuError> {
        let live = strtab.read(sid)?;
        Ok(live.valid() && live.config_raw() & 0b101 == 0b101)
    }

    /// The retirement part of [`apply_attach`](Self::apply_attach): `previous`, replaced by
    /// the attachment of `ssid`, leaves the TLBs and ATC of the stream (and a stage-1 RID
    /// domain replaced by a stage-2 one its CD 0).
    #[inline(never)]
    fn retire_previous(
        &self,
        strtab: &StreamTable<A>,
        stream: &mut StreamState<A>,
        ssid: Option<SubstreamId>,
        stage2: bool,
        previous: DomainHandle,
    ) -> Result<(), Error> {
        let sid = stream.sid;
        let at = ssid.unwrap_or(SubstreamId::new(0)?);
        // A stage-1 RID domain replaced by a stage-2 one: its CD 0 is unused now, retire it.
        let mut retired = None;
        if stage2 && !self.domain_is_stage2(previous).unwrap_or(true) {
            if let Some(table) = stream.cd.as_mut() {
                retired = Some(table.remove(at)?.command(sid));
            }
        }
        let ats = stream.ats;
        self.retire(strtab, sid, [retired, None], (previous, ssid, ats))?;
        Ok(())
    }

    /// The CD of stage-1 domain `d` for a stream: the domain's, with `S` (stall stage-1
    /// faults; `R` records them) for a stream that may stall.
    /// Written into `out`, and not inlined: the CD's construction is not on the stack under
    /// the syncs of its installation.
    #[inline(never)]
    fn stream_cd(
        &self,
        d: DomainHandle,
        stall: bool,
        out: &mut super::cd::Cd,
    ) -> Result<(), Error> {
        let slot = self.slot(d)?.read();
        *out = slot
            .as_ref()
            .ok_or(Error::InvalidDomain(d))?
            .context_descriptor()?;
        if stall {
            out.words[0] |= super::cd::S | super::cd::R;
        }
        Ok(())
    }

    /// The stream's ATS and stall declarations for an attach with `hints`
    /// ([`ats_for_attach`](Self::ats_for_attach) or
    /// [`no_ats_for_attach`](Self::no_ats_for_attach), then
    /// [`declare_for_attach`](Self::declare_for_attach)); whether this call enabled ATS. Not
    /// inlined: its frame is gone before the attach runs.
    #[inline(never)]
    pub(crate) fn hints_for_attach(
        &self,
        device: DeviceId,
        hints: &crate::iommu::DeviceHints,
    ) -> Result<bool, Error> {
        if hints.ats && hints.stall {
            return Err(stall_with_ats(self.check_sid(device)?));
        }
        let enabled = if hints.ats {
            self.ats_for_attach(device)?
        } else {
            self.no_ats_for_attach(device)?;
            false
        };
        self.remember_ats_permission(device, hints)?;
        self.declare_for_attach(device, hints)?;
        Ok(enabled)
    }

    /// Records on `device`'s stream whether firmware forbids it ATS, as `hints` (an
    /// `attach_device`'s) say, for [`set_ats`](Self::set_ats): a device whose firmware forbids
    /// ATS gets a record (kept after its last detach); any other answer clears the mark of a
    /// record it has. After the ATS switch of the attach: `hints` decide it, not the mark of
    /// an earlier attach.
    ///
    /// # Errors
    /// [`Error::Busy`] when every stream slot holds more than such a mark.
    fn remember_ats_permission(
        &self,
        device: DeviceId,
        hints: &crate::iommu::DeviceHints,
    ) -> Result<(), Error> {
        let forbidden = matches!(hints.ats_permission, AtsPermission::Forbidden);
        let sid = self.check_sid(device)?;
        let mut guard = self.config.lock();
        let config = &mut *guard;
        let Some(i) = Self::stream_index(config, sid, forbidden) else {
            return if forbidden { Err(Error::Busy) } else { Ok(()) };
        };
        if let Some(Some(stream)) = config.streams.get_mut(i) {
            stream.ats_forbidden = forbidden;
            if stream.is_forgettable() {
                if let Some(slot) = config.streams.get_mut(i) {
                    *slot = None;
                }
            }
        }
        Ok(())
    }

    /// Disables the ATS an attach refused before anything was written had enabled.
    #[cold]
    #[inline(never)]
    pub(crate) fn undo_ats(&self, device: DeviceId) {
        let _ = self.switch_ats(device, false, true);
    }

    /// Declares what the device's hints say about its stream for an attach: whether it may
    /// stall ([`DeviceHints::stall`]) and whether its PRI responses need a PASID
    /// ([`DeviceHints::pri_pasid_required`]: `STE.PPAR`); nothing if it already says so;
    /// otherwise only while the stream has no attachment.
    ///
    /// [`DeviceHints::stall`]: crate::iommu::DeviceHints::stall
    /// [`DeviceHints::pri_pasid_required`]: crate::iommu::DeviceHints::pri_pasid_required
    ///
    /// # Errors
    /// [`Error::Unsupported`] for a stall on a unit whose `IDR0.STALL_MODEL` is not 0b00;
    /// [`Error::InvalidArgument`] ([`STALL_WITH_ATS`](super::STALL_WITH_ATS)) for a stall on
    /// a stream with ATS;
    /// [`Error::Busy`] for an attached stream declared otherwise before.
    pub(crate) fn declare_for_attach(
        &self,
        device: DeviceId,
        hints: &crate::iommu::DeviceHints,
    ) -> Result<(), Error> {
        let stall = hints.stall;
        // STE.PPAR is RES0 without IDR0.PRI or SubstreamIDs (§5.2).
        let ppar = hints.pri_pasid_required && self.features.pri && self.features.ssid_bits > 0;
        if stall && !self.features.stall {
            return Err(Error::Unsupported(Missing::Mode {
                what: "stalls (IDR0.STALL_MODEL = 0b00)",
            }));
        }
        let sid = self.check_sid(device)?;
        let mut guard = self.config.lock();
        let config = &mut *guard;
        let declared = stall || ppar;
        let Some(i) = Self::stream_index(config, sid, declared) else {
            return if declared { Err(Error::Busy) } else { Ok(()) };
        };
        let Some(Some(stream)) = config.streams.get_mut(i) else {
            return Err(Error::Busy);
        };
        if (stream.stall, stream.ppar) == (stall, ppar) {
            return Ok(());
        }
        if stall && stream.ats {
            return Err(stall_with_ats(sid));
        }
        // A termination still owed is sent by the attach, before the STE is valid again.
        if !stream.is_empty() || stream.unsettled || stream.retiring.is_some() {
            return Err(Error::Busy);
        }
        stream.stall = stall;
        stream.ppar = ppar;
        Ok(())
    }

    /// [`crate::iommu::Iommu::detach`]. A detach that failed part-way leaves the stream
    /// unsettled with the domain retiring; its retry settles the stream and succeeds.
    pub(crate) fn detach_impl(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<(), Error> {
        self.usable()?;
        let sid = self.check_sid(device)?;
        let ssid = pasid.map(|p| self.check_ssid(p)).transpose()?;
        let mut guard = self.config.lock();
        let config = &mut *guard;
        let i = Self::stream_index(config, sid, false).ok_or(Error::NotAttached(device))?;
        let (Some(Some(stream)), Some(strtab)) =
            (config.streams.get_mut(i), config.strtab.as_mut())
        else {
            return Err(Error::NotAttached(device));
        };
        let owed = stream.retiring;
        let stalls_owed = stream.stalls_owed;
        let r = self.detach_locked(strtab, stream, ssid);
        let mut r = match r {
            // The retry of a detach that failed part-way: settling finished it.
            Err(Error::NotAttached(_)) if owed.is_some_and(|o| o.ssid == ssid) => Ok(()),
            // The retry of a detach whose CMD_STALL_TERM failed: settling sent it.
            Err(Error::NotAttached(_)) if stalls_owed && stream.is_empty() => Ok(()),
            Err(Error::NotAttached(_)) => Err(Error::NotAttached(device)),
            r => r,
        };
        if stream.is_empty() && stream.stall && r.is_ok() {
            // Its STE aborts now (synced): what the stream still has stalled is terminated
            // (§4.7.2), and its filed stalls with it. Until that is known to be done, it is
            // owed (the stream is kept, the stalls stay filed) and the detach fails.
            stream.stall = false;
            stream.stalls_owed = true;
            r = self.terminate_stalls(sid);
            stream.stalls_owed = r.is_err();
        }
        if stream.is_forgettable() {
            if let Some(slot) = config.streams.get_mut(i) {
                *slot = None;
            }
        }
        r
    }

    fn detach_locked(
        &self,
        strtab: &mut StreamTable<A>,
        stream: &mut StreamState<A>,
        ssid: Option<SubstreamId>,
    ) -> Result<(), Error> {
        // Settling does not change the attachments: whether this detach reaches its own STE
        // write, which settles an owed whole-ATC invalidation (see `settle`).
        let attached = match ssid {
            None => stream.rid.is_some(),
            Some(s) => stream.pasid_domain(s).is_some(),
        };
        self.settle(strtab, stream, attached)?;
        let sid = stream.sid;
        let d = match ssid {
            None => stream.rid.take(),
            Some(s) => {
                let d = stream.pasid_domain(s);
                for p in stream.pasids.iter_mut() {
                    if p.is_some_and(|(x, _)| x == s) {
                        *p = None;
                    }
                }
                d
            }
        }
        .ok_or(Error::NotAttached(DeviceId(sid.0)))?;
        let ats = stream.ats;
        stream.unsettled = true;
        stream.retiring = Some(Retiring {
            domain: d,
            ssid,
            ats,
        });
        let stage2 = self.domain_is_stage2(d).unwrap_or(true);
        self.write_ste(strtab, stream)?;
        self.settle_atc(stream)?;
        let ssid0 = SubstreamId::new(0)?;
        let mut cfgi = None;
        if !stage2 {
            if let Some(table) = stream.cd.as_mut() {
                cfgi = Some(table.remove(ssid.unwrap_or(ssid0))?.command(sid));
            }
        }
        let empty = stream.is_empty();
        let all = (empty && stream.cd.is_some()).then(|| Command::cfgi_cd_all(sid));
        self.retire(strtab, sid, [cfgi, all], (d, ssid, ats))?;
        self.settled(stream);
        if empty {
            // The STE aborts and the CD caches are clean: the CD table can go.
            stream.cd = None;
        }
        Ok(())
    }

    /// Enables ATS on `device`'s stream for an attach of a device bound with ATS
    /// ([`DeviceHints::ats`](crate::iommu::DeviceHints::ats)): nothing if it has ATS already,
    /// else [`set_ats`](Self::set_ats) (the stream must have no attachment yet: its first
    /// attach). A stream keeps ATS until `set_ats(false)`; an attach without the hint leaves it
    /// as it is. Returns whether this call enabled it (the attach undoes it if it fails).
    ///
    /// # Errors
    /// As [`set_ats`](Self::set_ats): [`Error::Unsupported`] without `IDR0.ATS`,
    /// [`Error::Busy`] for a stream attached without ATS.
    pub(crate) fn ats_for_attach(&self, device: DeviceId) -> Result<bool, Error> {
        let sid = self.check_sid(device)?;
        let has = {
            let config = self.config.lock();
            config
                .streams
                .iter()
                .flatten()
                .any(|s| s.sid == sid && s.ats)
        };
        if has {
            return Ok(false);
        }
        self.switch_ats(device, true, true)?;
        Ok(true)
    }

    /// Disables ATS on `device`'s stream for an attach of a device bound without ATS: a
    /// stream keeps ATS across unbind (see [`ats_for_attach`](Self::ats_for_attach)), and a
    /// translated request bypasses the tables, so a device rebound without ATS must not
    /// inherit `STE.EATS` from an earlier bind. Nothing if the stream has no ATS.
    ///
    /// # Errors
    /// [`Error::Busy`] for a stream with ATS that is attached (the attach is refused: the
    /// device's ATS must not outlive what it was bound with).
    pub(crate) fn no_ats_for_attach(&self, device: DeviceId) -> Result<(), Error> {
        let sid = self.check_sid(device)?;
        let has = {
            let config = self.config.lock();
            config
                .streams
                .iter()
                .flatten()
                .any(|s| s.sid == sid && s.ats)
        };
        if has {
            self.switch_ats(device, false, true)?;
        }
        Ok(())
    }

    /// Lets `device` use PCIe ATS (`STE.EATS` = 1, and CMD_ATC_INV on every flush of its
    /// domains). Only while nothing is attached to it, so the domain accounting stays simple.
    ///
    /// # Errors
    ///
    /// [`Error::Unsupported`] without `IDR0.ATS`; [`Error::InvalidArgument`]
    /// ([`STALL_WITH_ATS`](super::STALL_WITH_ATS)) for a stream declared able to stall;
    /// [`Error::Busy`] while attached or when the
    /// unit tracks [`MAX_STREAMS`](super::MAX_STREAMS) streams already; [`Error::InvalidDevice`];
    /// [`Error::AtsForbidden`] to enable it for a device whose last
    /// [`attach_device`](crate::iommu::Iommu::attach_device) said firmware forbids it ATS
    /// ([`DeviceHints::ats_permission`](crate::iommu::DeviceHints::ats_permission)), attached
    /// or not, and for a device the unit keeps no record of once it had to drop such a mark to
    /// make room for another stream (it can no longer tell).
    pub fn set_ats(&self, device: DeviceId, enabled: bool) -> Result<(), Error> {
        self.switch_ats(device, enabled, false)
    }

    /// [`set_ats`](Self::set_ats); `hinted`: for an `attach_device` whose hints passed
    /// [`check_ats`](crate::iommu::DeviceHints::check_ats) (they decide, not a stream's mark).
    fn switch_ats(&self, device: DeviceId, enabled: bool, hinted: bool) -> Result<(), Error> {
        self.usable()?;
        if !self.features.ats {
            return Err(Error::Unsupported(Missing::Mode {
                what: "ATS (IDR0.ATS)",
            }));
        }
        let sid = self.check_sid(device)?;
        let mut guard = self.config.lock();
        let config = &mut *guard;
        let known = Self::stream_index(config, sid, false);
        if enabled && !hinted && known.is_none() && config.ats_forgotten {
            return Err(Error::AtsForbidden(device));
        }
        let i = match known {
            Some(i) => i,
            None => Self::stream_index(config, sid, enabled).ok_or(if enabled {
                Error::Busy
            } else {
                Error::NotAttached(device)
            })?,
        };
        let Some(Some(stream)) = config.streams.get_mut(i) else {
            return Err(Error::Busy);
        };
        if enabled && !hinted && stream.ats_forbidden {
            return Err(Error::AtsForbidden(device));
        }
        if !stream.is_idle() {
            return Err(Error::Busy);
        }
        if enabled && stream.stall {
            return Err(stall_with_ats(sid));
        }
        stream.ats = enabled;
        // A CD table on an empty stream is one a failed detach left (the unit may still reach
        // it): keep the stream, and the table, until an attach and detach complete.
        if stream.is_forgettable() {
            if let Some(slot) = config.streams.get_mut(i) {
                *slot = None;
            }
        }
        Ok(())
    }
}

/// The refusal of a stream that would both stall and use ATS ([`super::STALL_WITH_ATS`]).
#[cold]
fn stall_with_ats(sid: StreamId) -> Error {
    Error::InvalidArgument {
        what: super::STALL_WITH_ATS,
        value: u64::from(sid.0),
    }
}

/// The CD in `table`'s slot `at`: whether it is `want`, and whether it is valid. Not inlined:
/// the copy it reads is not on its callers' stack under their syncs.
#[inline(never)]
fn cd_in_slot<A: PageAllocator>(
    table: &CdTable<A>,
    at: SubstreamId,
    want: Option<&super::cd::Cd>,
) -> Result<(bool, bool), SmmuError> {
    let have = table.read(at)?;
    Ok((
        want.is_some_and(|w| have == *w),
        have.words[0] & super::cd::V != 0,
    ))
}
