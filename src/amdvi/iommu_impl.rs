//! [`Iommu`] for [`AmdViUnit`]: AMD I/O Virtualization Technology (IOMMU) Specification,
//! document 48882, revision 3.10, §2.2.2 (device table entries), §2.2.3 (v1 tables), §2.4
//! (INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES, INVALIDATE_IOTLB_PAGES, COMPLETION_WAIT).
//!
//! **Flush.** Each range a gather (or what an earlier failed flush owes) holds becomes the one
//! naturally aligned block that covers it, encoded with the `S` bit (one command is the
//! fewest for a range; over-invalidation is correct); then the blocks are made the fewest
//! whose union is the union `U` of those blocks ([`fewest_blocks`]: a block inside another is
//! dropped, two halves of one aligned block become that block). That is the minimum over every
//! set of commands that invalidates nothing outside `U`; one command of everything would be
//! fewer still, and is not used: it drops every other translation of the domain (except for a
//! range that reaches 2^51, which the command cannot name: the unit reads address bits 63:52
//! as copies of bit 51, so such a range is everything; see [`super::cmd`]). At most
//! [`crate::pgtable::GATHER_RANGES`] INVALIDATE_IOMMU_PAGES per tag, `PDE` set unless only
//! leaves changed; the same blocks as INVALIDATE_IOTLB_PAGES for every attached device with
//! ATS; then one COMPLETION_WAIT, and only after it the gathered pages go back to the
//! allocator. On error nothing is freed and the domain owes the ranges: its next flush issues
//! them again, whatever that flush's gather holds.
//!
//! **Attach** writes the device's DTE in the order of [`dte`](super::dte) (a device moved
//! from another domain passes through blocking), then INVALIDATE_DEVTAB_ENTRY (and, for an ATS
//! device, INVALIDATE_IOTLB_PAGES of everything: its cache holds the old domain's
//! translations, or, at its first ATS attachment, whatever a previous owner left) and one
//! wait. The attachment is recorded before the write and settled after
//! the wait; until then the domain cannot be freed. **Detach** writes the blocking entry the
//! same way.
//!
//! **Order of a teardown.** §2.4 orders commands only through COMPLETION_WAIT (it completes
//! once every earlier command has completed), and the unit translates while it runs them. An
//! INVALIDATE_DEVTAB_ENTRY may so take effect after a later INVALIDATE_IOMMU_PAGES or
//! INVALIDATE_IOTLB_PAGES of the same run, and a request in between, translated through the
//! entry still cached, refills what they emptied. So where the entry replaced translated
//! through a domain (a move, a detach; `domain_free` of a domain an unsettled move left; the
//! takeover in `enable`), the entry's invalidation and a wait come first, then the IOTLB
//! invalidations and a second wait ([`After::Waited`]): Linux's detach likewise waits for
//! the DTE flush (`dev_update_dte`) before it flushes the domain. An entry that was blocking,
//! and a PASID's (whose GCR3 entry is written before the run), keep one run ([`After`]).
//!
//! **PASIDs** (§2.2.6, EFR `GTSup` and `GIoSup`: without `GIoSup` the unit ignores `GIoV` and
//! the entry below would pass requests without PASID untranslated, so no PASID is offered):
//! v2 domains, reached through each device's one-level GCR3
//! table ([`gcr3`](super::gcr3)); the device's entry then has `Mode` 0, `GV` and `GIoV` and a
//! `DomainID` of its own, which with the PASID tags the guest translations: a v2 domain's flush
//! issues INVALIDATE_IOMMU_PAGES with `GN` per (device, PASID) attachment. A PASID beside a v1
//! domain on one device is refused (`GV` with a host table nests). ATS (DTE `I`) is the
//! device's: its first PASID sets it, every later PASID must ask the same (else
//! `InvalidArgument`), so that every PASID the device's IOTLB may hold gets the
//! INVALIDATE_IOTLB_PAGES of its flushes and detach. An attach decides everything that can
//! refuse (the GCR3 page, the entry naming it) before it writes anything. See
//! ARCHITECTURE.md, "Platform facts".

use super::cmd::{self, fewest_blocks, Command, InvalidationRange};
use super::domain::{self, on_table, Domain, Table};
use super::dte::{self, DeviceTableEntry};
use super::efr::EfrFlags;
use super::gcr3::{self, Gcr3Table};
use super::regs::{self, Control};
use super::unit::{
    domain_id_of, After, Attachment, ConfigState, GCR3_DOMAIN_ID_BASE, MAX_ATTACHMENTS,
    MAX_GCR3_TABLES,
};
use super::AmdViUnit;
use crate::iommu::{
    Capabilities, DeviceHints, DeviceId, DomainConfig, DomainHandle, DomainPages, Error, Iommu,
    Missing, Pasid, ReclaimScope, Source, Sources,
};
use crate::mem::{Iova, PageAllocator, PhysAddr, PAGE_SHIFT_4K};
use crate::mmio::RegisterWindow;
use crate::pgtable::{
    self, Gather, InvalidationComplete, IovaRange, Leaf, Mapping, Prot, GATHER_RANGES,
};
use core::sync::atomic::Ordering;

/// The interrupt address range (MSI writes are interrupt requests) and the HyperTransport
/// reserved range 0xFD_0000_0000-0xFF_FFFF_FFFF that AMD platforms decode themselves (Linux
/// reserves both for its AMD domains).
static RESERVED: [IovaRange; 2] = [
    IovaRange {
        start: Iova::new(0xFEE0_0000),
        end: Iova::new(0xFEF0_0000),
    },
    IovaRange {
        start: Iova::new(0xFD_0000_0000),
        end: Iova::new(0x100_0000_0000),
    },
];

/// Where the claims no AMD-Vi register makes come from.
const X86: Source = Source::Embedder("x86: table walks and DMA snoop CPU caches (No-Snoop aside)");
const V1_FC: Source = Source::Embedder("AMD-Vi v1 PTE FC (every unit)");

/// Most INVALIDATE_IOMMU_PAGES one flush issues per tag: one per range of the merged gather,
/// which keeps at most [`GATHER_RANGES`].
const MAX_BLOCKS: usize = GATHER_RANGES;

/// What one flush invalidates: the fewest blocks that cover the gathered and owed ranges
/// inside the union of each range's own covering block ([`fewest_blocks`]); `pde` unless only
/// leaves changed.
struct FlushPlan {
    blocks: [InvalidationRange; MAX_BLOCKS],
    n: usize,
    pde: bool,
}

impl FlushPlan {
    /// The plan for `gather` and `owed` merged (as one gather merges its ranges). Not
    /// inlined: the merged gather lives only in this frame, not under the commands' submit.
    #[inline(never)]
    fn new(gather: &Gather, owed: &Gather) -> Self {
        let mut all = Gather::new();
        all.add_ranges_of(gather);
        all.add_ranges_of(owed);
        let mut plan = FlushPlan {
            blocks: [InvalidationRange::All; MAX_BLOCKS],
            n: 0,
            pde: !all.leaf_only(),
        };
        let ranges = all.ranges().iter().filter(|r| !r.is_empty());
        for r in ranges {
            let Some(slot) = plan.blocks.get_mut(plan.n) else {
                // Not reached (a gather keeps at most `MAX_BLOCKS` ranges); never fewer.
                plan.blocks[0] = InvalidationRange::All;
                plan.n = 1;
                return plan;
            };
            *slot = InvalidationRange::covering(r.start.get(), r.end.get());
            plan.n += 1;
        }
        plan.n = fewest_blocks(plan.blocks.get_mut(..plan.n).unwrap_or(&mut []));
        plan
    }

    fn blocks(&self) -> &[InvalidationRange] {
        self.blocks.get(..self.n).unwrap_or(&[])
    }
}

/// The commands of one flush, made one at a time as the command buffer takes them (no copy of
/// them on the stack, and a small state where a chain of iterator adapters took hundreds of
/// bytes in the frames of the flush and of the submit):
/// - a v1 domain: INVALIDATE_IOMMU_PAGES of each block under its domain ID; it looks at no
///   attachment slot for PASIDs (issue 18);
/// - a v2 domain: its translations are tagged with each device's GCR3 domain ID and the PASID
///   (`GN`): INVALIDATE_IOMMU_PAGES of each block per (device, PASID) attachment;
/// - then INVALIDATE_IOTLB_PAGES of each block per ATS device attached (for its PASID, if any);
///   no slot is looked at when no device has ATS.
///
/// An unsettled attachment of any domain counts as attached ([`Attachment::flushed_with`]).
struct FlushCommands<'a> {
    cfg: &'a ConfigState,
    blocks: &'a [InvalidationRange],
    slot: usize,
    pde: bool,
    phase: FlushPhase,
    /// The next attachment slot to look at (`Guest`, `Iotlb`).
    next_slot: usize,
    /// The next block of the current target.
    block: usize,
    /// The current target: a v1 domain's ID, a (device's GCR3 domain ID, PASID) or an ATS
    /// device and its PASID; `None`: find the next one.
    /// The last: `Maxpend` of an ATS device's INVALIDATE_IOTLB_PAGES.
    target: Option<(u16, Option<Pasid>, u8)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FlushPhase {
    Host,
    Guest,
    Iotlb,
}

impl<'a> FlushCommands<'a> {
    fn new<A: PageAllocator>(
        cfg: &'a ConfigState,
        slot: usize,
        dom: &Domain<A>,
        plan: &'a FlushPlan,
    ) -> Self {
        let v2 = dom.is_v2();
        FlushCommands {
            cfg,
            blocks: plan.blocks(),
            slot,
            pde: plan.pde,
            phase: if v2 {
                FlushPhase::Guest
            } else {
                FlushPhase::Host
            },
            next_slot: 0,
            block: 0,
            target: (!v2).then_some((dom.domain_id, None, 0)),
        }
    }

    /// The next target of `phase` from `next_slot` on.
    fn next_target(&mut self) -> Option<(u16, Option<Pasid>, u8)> {
        let cfg = self.cfg;
        let candidates = match self.phase {
            FlushPhase::Host => return None,
            FlushPhase::Guest => cfg.recorded(),
            FlushPhase::Iotlb => cfg.ats_candidates(),
        };
        while let Some(a) = candidates.get(self.next_slot) {
            self.next_slot += 1;
            if self.phase == FlushPhase::Iotlb {
                cfg.count_flush_read();
            }
            let Some(a) = a.as_ref().filter(|a| a.flushed_with(self.slot)) else {
                continue;
            };
            if self.phase == FlushPhase::Guest {
                if let (Some(pasid), Some(tag)) = (a.pasid, cfg.gcr3_tag(a.device)) {
                    return Some((tag, Some(pasid), 0));
                }
            } else if a.ats {
                return Some((a.device, a.pasid, a.maxpend));
            }
        }
        None
    }
}

impl Iterator for FlushCommands<'_> {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        loop {
            if let Some((tag, pasid, maxpend)) = self.target {
                if let Some(&b) = self.blocks.get(self.block) {
                    self.block += 1;
                    return Some(match self.phase {
                        FlushPhase::Iotlb => {
                            Command::invalidate_iotlb_pages(tag, maxpend, pasid, b)
                        }
                        _ => Command::invalidate_iommu_pages(tag, pasid, b, self.pde),
                    });
                }
                self.block = 0;
                self.target = self.next_target();
                if self.target.is_some() {
                    continue;
                }
            } else if let Some(t) = self.next_target() {
                self.target = Some(t);
                continue;
            }
            match self.phase {
                FlushPhase::Host | FlushPhase::Guest => {
                    self.phase = FlushPhase::Iotlb;
                    self.next_slot = 0;
                }
                FlushPhase::Iotlb => {
                    #[cfg(test)]
                    crate::test_hooks::after_ats_read();
                    return None;
                }
            }
        }
    }
}

/// `Maxpend` for an attach with `hints` (see [`cmd::maxpend`]): refused for an ATS device
/// whose queue depth the 5-bit field cannot hold; a device without ATS gets no
/// INVALIDATE_IOTLB_PAGES of its own (32, unused).
fn maxpend_of(hints: &DeviceHints) -> Result<u8, Error> {
    match cmd::maxpend(hints.ats_queue_depth) {
        Some(m) => Ok(m),
        None if !hints.ats => Ok(32),
        None => Err(Error::InvalidArgument {
            what: cmd::ATS_QUEUE_DEPTH,
            value: u64::from(hints.ats_queue_depth),
        }),
    }
}

/// What a new DTE for `device`, attached as `previous` and now going to domain slot `slot`
/// (`usize::MAX`: detached), needs besides INVALIDATE_DEVTAB_ENTRY: when it leaves a domain,
/// INVALIDATE_IOMMU_PAGES of everything tagged with the old domain ID (PDE set); when it was
/// attached with ATS, or is now attached with ATS (`ats_now`) for the first time,
/// INVALIDATE_IOTLB_PAGES of everything in its own cache: a device's first ATS attachment may
/// find its IOTLB filled by a previous owner that left ATS enabled, and the command, behind
/// the new DTE and its INVALIDATE_DEVTAB_ENTRY, leaves only what the new entry answers
/// (`Maxpend` the new attachment's, `maxpend`, or with ATS only before, the previous one's).
///
/// The specification tags IOMMU TLB entries with the domain ID, so a new DTE would miss the
/// old domain's; but an IOMMU may cache translations per device as well: QEMU 10.0's
/// `amd-iommu` keys its IOTLB by device ID and looks it up before the DTE (QEMU row
/// `x86_64_amdvi_two_devices` failed without this: the second `edu`, moved to another domain,
/// kept writing through the old domain's translation); Xen flushes the IOMMU TLB with every
/// DTE flush since stale DMA mappings were seen on AMD hardware (its 2023 change "iommu/amd-vi:
/// flush IOMMU TLB when flushing the DTE"), and Linux's detach flushes the whole domain after
/// clearing the DTE (`amd_iommu_domain_flush_all`).
///
/// An unsettled `previous` also names the domain its own move left (`Attachment::left`): that
/// move's invalidation of it was not confirmed, so it goes again (a per-device IOTLB may still
/// hold its translations for `device`, whatever domain the entry names now).
fn leave_commands(
    device: u16,
    previous: Option<Attachment>,
    slot: usize,
    ats_now: bool,
    maxpend: u8,
) -> ([Command; 3], usize) {
    let ids = |p: Attachment| [Some(p.slot), p.left].into_iter().flatten();
    let old_domains = previous
        .into_iter()
        .flat_map(ids)
        .filter(move |&s| s != slot)
        .map(|s| {
            Command::invalidate_iommu_pages(domain_id_of(s), None, InvalidationRange::All, true)
        });
    let maxpend = match previous {
        Some(p) if p.ats && !ats_now => p.maxpend,
        _ => maxpend,
    };
    let ats = (ats_now || previous.is_some_and(|p| p.ats))
        .then(|| Command::invalidate_iotlb_pages(device, maxpend, None, InvalidationRange::All));
    let mut cmds = [Command::invalidate_iommu_all(); 3];
    let n = cmds
        .iter_mut()
        .zip(old_domains.chain(ats))
        .map(|(slot, cmd)| *slot = cmd)
        .count();
    (cmds, n)
}

/// `device` has an entry in the device table, or [`Error::InvalidDevice`].
fn in_device_table(cfg: &ConfigState, device: u16) -> Result<(), Error> {
    if u32::from(device) < cfg.devtab.device_ids() {
        Ok(())
    } else {
        Err(Error::InvalidDevice(DeviceId(device.into())))
    }
}

/// `scope`'s reclaim of `table`. Not inlined: the walks of both formats stay out of the frame
/// that holds the gather under the flush.
#[inline(never)]
fn reclaim_table<A: PageAllocator>(
    table: &mut Table<A>,
    scope: ReclaimScope<'_>,
    gather: &mut Gather,
) -> Result<usize, pgtable::Error> {
    on_table!(table, t => scope.reclaim(t, gather))
}

/// What a PASID attach whose ATS differs from the device's other PASIDs' is refused with
/// ([`Error::InvalidArgument`], the hint as 0 or 1): DTE `I` is the device's.
pub const ATS_UNLIKE_THE_DEVICE: &str =
    "DeviceHints::ats unlike the device's other PASIDs' (DTE I is the device's)";

impl<W: RegisterWindow, A: PageAllocator + Clone, const DOMAINS: usize> AmdViUnit<W, A, DOMAINS> {
    fn slot(&self, domain: DomainHandle) -> Result<usize, Error> {
        let slot = usize::from(domain.0);
        if slot < DOMAINS {
            Ok(slot)
        } else {
            Err(Error::InvalidDomain(domain))
        }
    }

    fn with_domain<R>(
        &self,
        domain: DomainHandle,
        f: impl FnOnce(&Domain<A>) -> R,
    ) -> Result<R, Error> {
        let slot = self.slot(domain)?;
        let guard = self.domains[slot].read();
        let d = guard.as_ref().ok_or(Error::InvalidDomain(domain))?;
        Ok(f(d))
    }

    /// Invalidates `gather` and what the domain owes, waits once, then frees both's pages.
    fn flush_locked(
        &self,
        cfg: &ConfigState,
        slot: usize,
        dom: &Domain<A>,
        gather: &mut Gather,
    ) -> Result<(), Error> {
        let mut owed = dom.owed.lock();
        if gather.is_empty() && owed.is_empty() {
            return Ok(());
        }
        let plan = FlushPlan::new(gather, &owed);
        let result = self.run_iter(FlushCommands::new(cfg, slot, dom, &plan));
        if let Err(e) = result {
            owed.add_ranges_of(gather);
            return Err(e.into());
        }
        // SAFETY: the commands above invalidated every gathered and owed range (PDE unless
        // only leaves changed) in the only unit walking this table, and the COMPLETION_WAIT
        // behind them completed.
        let done = unsafe { InvalidationComplete::assume() };
        owed.release(&self.alloc, done)?;
        drop(owed);
        // SAFETY: as above, for the caller's gather.
        let done = unsafe { InvalidationComplete::assume() };
        gather.release(&self.alloc, done)?;
        Ok(())
    }

    fn flush_gather(&self, domain: DomainHandle, gather: &mut Gather) -> Result<(), Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        let guard = self.domains[slot].read();
        let dom = guard.as_ref().ok_or(Error::InvalidDomain(domain))?;
        if !gather.flushable_by(dom.gather_owner()) {
            return Err(Error::InvalidDomain(domain));
        }
        self.flush_locked(&cfg, slot, dom, gather)
    }

    /// The invalidation a map needs on a unit that caches non-present entries (`NpCache`).
    /// Not inlined: its gather is on the stack only while it runs, not in the frame of every
    /// map nor under the undo of a map whose invalidation failed.
    #[inline(never)]
    fn flush_map(&self, domain: DomainHandle, iova: Iova, len: u64) -> Result<(), Error> {
        let mut gather = Gather::new();
        gather.add_table_change(iova.get(), len);
        self.flush_gather(domain, &mut gather)
    }

    /// Clears what a map wrote whose publication failed; its invalidation, if it fails too, is
    /// owed by the domain. Not inlined: a path taken only after a failure.
    #[inline(never)]
    fn undo_map(&self, domain: DomainHandle, iova: Iova, len: u64) {
        // The unit's gather, not the stack's (it would be under the table's unmap and the
        // flush): locked first, only here, so undos serialize; empty whenever it is unlocked.
        let mut gather = self.undo_gather.lock();
        let gather = &mut *gather;
        let _ = self.with_domain(
            domain,
            |d| on_table!(&d.table, t => t.unmap(iova, len, &mut *gather)),
        );
        if self.flush_gather(domain, gather).is_err() {
            let _ = self.with_domain(domain, |d| keep_owed(&mut d.owed.lock(), gather));
            if !gather.is_empty() {
                // A domain freed meanwhile: its pages are leaked (as a dropped gather's
                // were), never left for the next undo to free.
                *gather = Gather::new();
            }
        }
    }

    /// Not inlined: its frame lies beside a PASID attach's (`attach_pasid_impl`), not in the
    /// `attach_device` frame above both.
    #[inline(never)]
    fn attach_impl(&self, device: u16, slot: usize, ats: bool, maxpend: u8) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        in_device_table(&cfg, device)?;
        let guard = self.domains[slot].read();
        let dom = guard
            .as_ref()
            .ok_or(Error::InvalidDomain(DomainHandle(slot as u16)))?;
        let Table::V1(table) = &dom.table else {
            return Err(Error::Unsupported(Missing::Mode {
                what: "AMD-Vi v2 domain for requests without PASID",
            }));
        };
        if cfg.has_pasids(device) {
            // With GV set and a host table, the unit translates the PASIDs' guest outputs
            // again through the host table (nesting): the device's PASIDs go first.
            return Err(Error::Unsupported(Missing::Mode {
                what: "AMD-Vi v1 domain beside PASIDs (GV with a host table nests)",
            }));
        }
        let entry = DeviceTableEntry::translated(dom.domain_id, table.root(), dom.mode(), ats)?
            .with_had(dom.dirty && dom.tracking.load(Ordering::Acquire));
        let old = cfg.find(device);
        let index =
            match old {
                Some(i) => i,
                None => cfg.attachments.iter().position(Option::is_none).ok_or(
                    Error::InvalidArgument {
                        what: "attachments (MAX_ATTACHMENTS)",
                        value: MAX_ATTACHMENTS as u64,
                    },
                )?,
            };
        let previous = old.and_then(|i| cfg.attachments[i]);
        // Counted as attached to the new domain from the first store on; the old domain, if
        // any, keeps nothing the device can reach once the entry is replaced and invalidated.
        // A device that had ATS stays an ATS attachment until that is confirmed, whatever the
        // new entry's `I`: its ATC may hold the old domain's translations until the move's
        // INVALIDATE_IOTLB_PAGES completed, and only an ATS attachment gets that invalidation
        // from the flushes, the `domain_free`s and the retry (`Attachment::flushed_with`).
        // The domain this move leaves stays named until the move settles (a second move
        // invalidates it again); when the device does not change domain, what an unsettled
        // earlier move left.
        let left = previous.and_then(|p| if p.slot != slot { Some(p.slot) } else { p.left });
        let mut attachment = Attachment {
            device,
            pasid: None,
            slot,
            ats: ats || previous.is_some_and(|p| p.ats),
            maxpend: match previous {
                Some(p) if p.ats && !ats => p.maxpend,
                _ => maxpend,
            },
            settled: false,
            left,
        };
        cfg.set(index, Some(attachment));
        let (extra, n) = leave_commands(device, previous, slot, ats, maxpend);
        let extra = extra.get(..n).unwrap_or(&[]);
        // The entry replaced translated through a domain (or may still be cached so, when
        // unsettled): the old domain's IOTLB entries and the device's ATC are emptied only
        // once nothing can refill them through it. Without a previous attachment the entry
        // replaced is blocking, every earlier change of it confirmed.
        let after = if previous.is_some() {
            After::Waited(extra)
        } else {
            After::Batched(extra)
        };
        let (now, later) = after.split();
        self.publish_attachment(&mut cfg, index, device, &entry, now)?;
        // Not settled until the old domain's invalidations (`later`) completed too.
        cfg.set(index, Some(attachment));
        self.run_after(later)?;
        attachment.ats = ats;
        attachment.maxpend = maxpend;
        attachment.settled = true;
        attachment.left = None;
        cfg.set(index, Some(attachment));
        Ok(())
    }

    /// Writes `device`'s new entry and runs its invalidations and `extra` in one run (an
    /// entry replaced that reaches nothing they cover: [`After::Batched`]), and marks the
    /// attachment recorded at `index` settled once they completed.
    fn publish_attachment(
        &self,
        cfg: &mut ConfigState,
        index: usize,
        device: u16,
        entry: &DeviceTableEntry,
        extra: &[Command],
    ) -> Result<(), Error> {
        self.set_device_entry_locked(&cfg.devtab, device.into(), entry, extra)?;
        if let Some(a) = cfg.attachments.get_mut(index).and_then(Option::as_mut) {
            a.settled = true;
            a.left = None;
        }
        Ok(())
    }

    /// Points `pasid` of `device` at the v2 domain in `slot` through the device's GCR3 table
    /// (allocated at its first PASID). Everything that can refuse is decided first (the
    /// device's ATS, the slots, the GCR3 page and the device entry that names it): a refusal
    /// changes nothing and gives a new GCR3 page back. Then, in the order the unit may see
    /// them: the table becomes the device's, the attachment is recorded (unsettled), the
    /// table's entry, then, if the device's entry does not name the table yet, the DTE's
    /// lower half (one 128-bit store, see [`dte`](super::dte)); then INVALIDATE_DEVTAB_ENTRY,
    /// INVALIDATE_IOMMU_PAGES of the PASID (`GN`, everything, `PDE`: what the unit cached
    /// through the entry's old table), the ATS device's IOTLB for the PASID, and one wait.
    ///
    /// ATS is the device's (DTE `I`): with `I` set the device may cache the translations of
    /// every PASID, so every PASID of a device has the ATS of the device's others, and a flush
    /// invalidates the device's IOTLB for each. An attach asking otherwise is refused
    /// ([`ATS_UNLIKE_THE_DEVICE`], the hint's value); detaching every PASID lets the next
    /// first one choose again.
    fn attach_pasid_impl(
        &self,
        device: u16,
        pasid: Pasid,
        slot: usize,
        ats: bool,
        maxpend: u8,
    ) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        in_device_table(&cfg, device)?;
        if pasid.get() == 0 || pasid.get() >= 1 << self.pasid_bits() {
            return Err(Error::InvalidPasid(pasid));
        }
        // A unit with `GTEn` clear may ignore `GV`: the entry (`Mode` 0, `IR`, `IW`) would
        // then pass the device's requests without PASID untranslated.
        if !regs::control(&self.regs).contains(Control::GT_EN) {
            return Err(Error::Unsupported(Missing::Mode {
                what: "AMD-Vi PASID without Control.GTEn (guest translation off)",
            }));
        }
        let guard = self.domains[slot].read();
        let dom = guard
            .as_ref()
            .ok_or(Error::InvalidDomain(DomainHandle(slot as u16)))?;
        let Table::V2(table) = &dom.table else {
            return Err(Error::Unsupported(Missing::Mode {
                what: "AMD-Vi v1 domain for a PASID (PASIDs take v2 domains)",
            }));
        };
        if cfg.find(device).is_some() {
            return Err(Error::Unsupported(Missing::Mode {
                what: "AMD-Vi PASID beside a v1 domain (GV with a host table nests)",
            }));
        }
        let device_ats = cfg
            .recorded()
            .iter()
            .flatten()
            .find(|a| a.device == device && a.pasid.is_some())
            .map(|a| a.ats);
        if device_ats.is_some_and(|d| d != ats) {
            return Err(Error::InvalidArgument {
                what: ATS_UNLIKE_THE_DEVICE,
                value: u64::from(ats),
            });
        }
        let index =
            match cfg.find_pasid(device, Some(pasid)) {
                Some(i) => i,
                None => cfg.attachments.iter().position(Option::is_none).ok_or(
                    Error::InvalidArgument {
                        what: "attachments (MAX_ATTACHMENTS)",
                        value: MAX_ATTACHMENTS as u64,
                    },
                )?,
            };
        let (gi, fresh) =
            match cfg.gcr3_of(device) {
                Some(i) => (i, None),
                None => {
                    let i = cfg.gcr3.iter().position(Option::is_none).ok_or(
                        Error::InvalidArgument {
                            what: "devices with PASIDs (MAX_GCR3_TABLES)",
                            value: MAX_GCR3_TABLES as u64,
                        },
                    )?;
                    let page = self.alloc.alloc(PAGE_SHIFT_4K).ok_or(Error::NoMemory)?;
                    (i, Some(page))
                }
            };
        let (tag, root) = match (fresh, cfg.gcr3.get(gi).and_then(Option::as_ref)) {
            (Some(page), _) => (GCR3_DOMAIN_ID_BASE + gi as u16, page.pa),
            (None, Some(g)) => (g.domain_id, g.page.pa),
            (None, None) => return Err(Error::NoMemory),
        };
        let entry = match DeviceTableEntry::guest(tag, root, ats) {
            Ok(entry) => entry,
            Err(e) => {
                if let Some(page) = fresh {
                    // SAFETY: from `self.alloc` just now; nothing names it.
                    unsafe { self.alloc.free(page, PAGE_SHIFT_4K) };
                }
                return Err(match e {
                    // The GCR3 root pointer is bits 51:12: a page above cannot be named.
                    super::Error::InvalidArgument { .. } if root.get() >> 52 != 0 => {
                        Error::TableOutOfRange {
                            table: "GCR3 table",
                            pa: root,
                            width: 52,
                        }
                    }
                    e => e.into(),
                });
            }
        };
        // A tag first given out on a unit without `IASup`: an earlier owner's guest
        // translations under it, of any PASID the table may name (and PASID 0, which `GIoV`
        // sends requests without PASID to), go first (see `enable`).
        let bit = 1u64.checked_shl(gi as u32).unwrap_or(0);
        if fresh.is_some() && cfg.gcr3_tags_clean & bit == 0 {
            let all = (0..1u32 << self.pasid_bits())
                .filter_map(Pasid::new)
                .map(|p| {
                    Command::invalidate_iommu_pages(tag, Some(p), InvalidationRange::All, true)
                });
            if let Err(e) = self.run_iter(all) {
                if let Some(page) = fresh {
                    // SAFETY: from `self.alloc` just now; nothing names it.
                    unsafe { self.alloc.free(page, PAGE_SHIFT_4K) };
                }
                return Err(e.into());
            }
            cfg.gcr3_tags_clean |= bit;
        }
        // Nothing refuses from here on.
        if let (Some(page), Some(free)) = (fresh, cfg.gcr3.get_mut(gi)) {
            *free = Some(Gcr3Table {
                device,
                page,
                domain_id: tag,
            });
        }
        cfg.set(
            index,
            Some(Attachment {
                device,
                pasid: Some(pasid),
                slot,
                ats,
                maxpend,
                settled: false,
                left: None,
            }),
        );
        if let Some(g) = cfg.gcr3.get(gi).and_then(Option::as_ref) {
            g.set(pasid.get(), Some(table.root()));
        }
        let extra = [
            Command::invalidate_iommu_pages(tag, Some(pasid), InvalidationRange::All, true),
            Command::invalidate_iotlb_pages(device, maxpend, Some(pasid), InvalidationRange::All),
        ];
        let n = if ats { 2 } else { 1 };
        // One run: the GCR3 entry is written before it, so a walk through the device's old
        // entry reads the new one (or, at the first PASID, the old entry blocks).
        self.publish_attachment(
            &mut cfg,
            index,
            device,
            &entry,
            extra.get(..n).unwrap_or(&[]),
        )
    }

    /// Clears `pasid`'s GCR3 entry; after the device's last PASID the device's entry becomes
    /// blocking and, once the invalidations (INVALIDATE_DEVTAB_ENTRY, INVALIDATE_IOMMU_PAGES
    /// of the PASID with `GN`, the ATS device's IOTLB) completed, the GCR3 table's page goes
    /// back and its domain ID may be given to another device.
    fn detach_pasid_impl(&self, device: u16, pasid: Pasid) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        let index = cfg
            .find_pasid(device, Some(pasid))
            .ok_or(Error::NotAttached(DeviceId(device.into())))?;
        let Some(a) = cfg.attachments[index] else {
            return Err(Error::NotAttached(DeviceId(device.into())));
        };
        if let Some(a) = cfg.attachments[index].as_mut() {
            a.settled = false;
        }
        let gi = cfg
            .gcr3_of(device)
            .ok_or(Error::NotAttached(DeviceId(device.into())))?;
        let Some(g) = cfg.gcr3[gi].as_ref() else {
            return Err(Error::NotAttached(DeviceId(device.into())));
        };
        g.set(pasid.get(), None);
        let tag = g.domain_id;
        let extra = [
            Command::invalidate_iommu_pages(tag, Some(pasid), InvalidationRange::All, true),
            Command::invalidate_iotlb_pages(device, a.maxpend, Some(pasid), InvalidationRange::All),
        ];
        let extra = &extra[..if a.ats { 2 } else { 1 }];
        let last = !cfg
            .recorded()
            .iter()
            .flatten()
            .any(|o| o.device == device && o.pasid.is_some() && o.pasid != Some(pasid));
        if last {
            // One run: the PASID's GCR3 entry is cleared above (and every other PASID's by
            // its own detach), so a walk through the device's old entry, still cached while
            // the run goes on, finds no table: nothing refills what the run empties.
            self.set_device_entry_locked(
                &cfg.devtab,
                device.into(),
                &DeviceTableEntry::BLOCKED,
                extra,
            )?;
        } else {
            self.run(&[extra])?;
        }
        cfg.set(index, None);
        if last {
            if let Some(g) = cfg.gcr3[gi].take() {
                // SAFETY: from `self.alloc`; the device's entry no longer names the table and
                // the INVALIDATE_DEVTAB_ENTRY and INVALIDATE_IOMMU_PAGES (`GN`, `PDE`) behind
                // it completed: the unit holds nothing read from it.
                unsafe { self.alloc.free(g.page, PAGE_SHIFT_4K) };
            }
        }
        Ok(())
    }

    /// [`Iommu::set_dirty_tracking`]: the table first (turning on cleans every leaf), then
    /// `HAD` in the entry of every device attached to the domain (each one 128-bit store of the
    /// lower half), then one run: INVALIDATE_DEVTAB_ENTRY per device, INVALIDATE_IOMMU_PAGES of
    /// the whole domain (IOTLB entries filled while `HAD` was clear, or of leaves just cleaned,
    /// would let writes through unrecorded), the ATS devices' IOTLBs, one wait.
    fn set_dirty_tracking_impl(&self, domain: DomainHandle, on: bool) -> Result<(), Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        // The write lock: the walk writes into tables a concurrent unmap could free.
        let mut guard = self.domains[slot].write();
        let dom = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        let Table::V1(table) = &mut dom.table else {
            return Err(Error::Unsupported(Missing::DirtyTracking));
        };
        if !dom.dirty {
            return Err(Error::Unsupported(Missing::DirtyTracking));
        }
        let mut cleaned = Gather::new();
        if let Err(e) = table.set_dirty_tracking(on, &mut cleaned) {
            return Err(self.tracking_failed(&cfg, slot, dom, &mut cleaned, e.into()));
        }
        self.publish_tracking(&cfg, slot, dom, on, &mut cleaned)
    }

    /// A table walk that failed partway (`EntryUnstable`) has cleaned a prefix of the leaves,
    /// which an IOTLB entry may still hold dirty (taking writes without setting `D`): their
    /// ranges are invalidated, or owed by the domain if that fails (`flush_locked` keeps
    /// them); `HAD` is left as it was. Returns the walk's error. A failure's path, not
    /// inlined.
    #[cold]
    #[inline(never)]
    fn tracking_failed(
        &self,
        cfg: &ConfigState,
        slot: usize,
        dom: &Domain<A>,
        cleaned: &mut Gather,
        error: Error,
    ) -> Error {
        // No page in it (cleaning unlinks no table): only ranges, which a failed flush keeps.
        let _ = self.flush_locked(cfg, slot, dom, cleaned);
        error
    }

    /// The part of [`Self::set_dirty_tracking_impl`] after the table's walk: `HAD` in the
    /// entries of the domain's devices, then their invalidations and those of the cleaned
    /// leaves (owed by the domain if they fail). Not inlined: its commands are not in the
    /// frame above the walk (`clear_dirty_level`, once per table level).
    #[inline(never)]
    fn publish_tracking(
        &self,
        cfg: &ConfigState,
        slot: usize,
        dom: &Domain<A>,
        on: bool,
        cleaned: &mut Gather,
    ) -> Result<(), Error> {
        dom.tracking.store(on, Ordering::Release);
        for a in cfg.of_domain(slot) {
            if let Some(entry) = cfg.devtab.entry(a.device.into()) {
                let new = entry.load().with_had(on);
                // Only the lower half changes: one store, no forget needed.
                dte::write_live(self.cx16, entry, &new, |_| {}, || Ok::<(), Error>(()))?;
            }
        }
        let devtab = cfg
            .of_domain(slot)
            .map(|a| Command::invalidate_devtab_entry(a.device));
        let pages = [Command::invalidate_iommu_pages(
            dom.domain_id,
            None,
            InvalidationRange::All,
            false,
        )];
        let iotlb = cfg.ats_of_domain(slot).map(|a| {
            Command::invalidate_iotlb_pages(a.device, a.maxpend, None, InvalidationRange::All)
        });
        if let Err(e) = self.run_iter(devtab.chain(pages).chain(iotlb)) {
            // The next flush of the domain reissues the cleaned ranges' invalidation.
            dom.owed.lock().absorb(core::mem::take(cleaned));
            return Err(e.into());
        }
        cleaned.clear_ranges();
        // SAFETY: cleaning dirty state unlinks no table, so the gather holds no page; the
        // invalidation of the whole domain above completed anyway.
        let done = unsafe { InvalidationComplete::assume() };
        cleaned.release(&self.alloc, done)?;
        Ok(())
    }

    /// PASID width of attachments: EFR `PASmax + 1` with `GTSup` and `GIoSup`
    /// ([`domain::guest_tables`]), at most what one GCR3 level indexes; 0 otherwise.
    fn pasid_bits(&self) -> u32 {
        if domain::guest_tables(&self.info) {
            self.info.pasid_bits.min(gcr3::PASID_BITS)
        } else {
            0
        }
    }

    fn detach_impl(&self, device: u16) -> Result<(), Error> {
        let mut cfg = self.config.lock();
        let index = cfg
            .find(device)
            .ok_or(Error::NotAttached(DeviceId(device.into())))?;
        let Some(a) = cfg.attachments[index] else {
            return Err(Error::NotAttached(DeviceId(device.into())));
        };
        if let Some(a) = cfg.attachments[index].as_mut() {
            a.settled = false;
        }
        let (extra, n) = leave_commands(device, Some(a), usize::MAX, false, a.maxpend);
        // The domain's IOTLB entries and the device's ATC are emptied once the blocking entry
        // is confirmed: in the entry's run a request through the old entry, still cached,
        // could refill them after their invalidation (see `After`).
        self.set_device_entry_locked(&cfg.devtab, device.into(), &DeviceTableEntry::BLOCKED, &[])?;
        self.run_after(extra.get(..n).unwrap_or(&[]))?;
        cfg.set(index, None);
        Ok(())
    }
}

impl<W, A, const DOMAINS: usize> Iommu for AmdViUnit<W, A, DOMAINS>
where
    W: RegisterWindow + Sync,
    A: PageAllocator + Clone + Send + Sync,
{
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ias: domain::max_bits(&self.info),
            oas: self.info.output_bits,
            page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
            pasid_bits: self.pasid_bits(),
            enforce_snoop: true,
            dirty_tracking: self.info.efr.flags().contains(EfrFlags::HD_SUP),
            nesting: false,
            coherent_walk: true,
            coherent_dma: true,
            supervisor: false,
            sources: Sources {
                ias: Source::Register("EFR.HATS, AmdViConfig::input_bits (IVinfo.VAsize)"),
                oas: Source::Embedder("AmdViConfig::output_bits"),
                page_sizes: Source::Embedder("AMD-Vi v1 table (2 MiB, 1 GiB leaves)"),
                pasid_bits: Source::Register(
                    "EFR.GTSup, EFR.GIoSup, EFR.PASmax (one GCR3 level: 9 bits at most)",
                ),
                enforce_snoop: V1_FC,
                dirty_tracking: Source::Register("EFR.HDSup"),
                nesting: Source::Embedder("AMD-Vi driver: no nesting"),
                coherent_walk: X86,
                coherent_dma: X86,
                supervisor: Source::Embedder("AMD-Vi v1 table: no privilege levels"),
            },
        }
    }

    fn reserved_regions(&self) -> &[IovaRange] {
        &RESERVED
    }

    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, Error> {
        let format = domain::choose(&self.info, cfg)?;
        for (slot, lock) in self.domains.iter().enumerate() {
            let Some(mut guard) = lock.try_write() else {
                continue;
            };
            if guard.is_some() {
                continue;
            }
            let handle = DomainHandle(u16::try_from(slot).map_err(|_| Error::NoDomainIds)?);
            Domain::build_into(&mut guard, format, self.alloc.clone(), domain_id_of(slot))?;
            return Ok(handle);
        }
        Err(Error::NoDomainIds)
    }

    fn domain_geometry(&self, domain: DomainHandle) -> Result<(u32, u64), Error> {
        self.with_domain(domain, |d| {
            let g = on_table!(&d.table, t => *t.geometry());
            (g.ias, g.page_sizes)
        })
    }

    fn set_max_page_log2(&self, domain: DomainHandle, max: Option<u32>) -> Result<(), Error> {
        // The write lock waits for maps in flight: each map sees one policy throughout.
        let slot = self.slot(domain)?;
        let mut guard = self.domains[slot].write();
        let d = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        on_table!(&mut d.table, t => t.set_max_leaf_log2(max));
        Ok(())
    }

    fn domain_free(&self, domain: DomainHandle) -> Result<(), Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        if cfg.of_domain(slot).next().is_some() {
            return Err(Error::Busy);
        }
        let mut guard = self.domains[slot].write();
        let id = guard
            .as_ref()
            .ok_or(Error::InvalidDomain(domain))?
            .domain_id;
        // The IOTLB and page directory caches may still hold entries tagged with the ID: they
        // go while the slot (the handle, the ID) stays taken. So do the translations of the
        // domain that an unsettled attachment (a move away whose invalidation failed) may have
        // left in the DTE cache (the entry naming this root and ID: first, so the completion
        // wait covers it), under its PASID or in its ATC (`Attachment::flushed_with`). If that
        // fails nothing changed.
        let own = Command::invalidate_iommu_pages(id, None, InvalidationRange::All, true);
        let unsettled = cfg.recorded().iter().flatten().filter(|a| !a.settled);
        let any_unsettled = unsettled.clone().next().is_some();
        let dte = unsettled
            .clone()
            .map(|a| Command::invalidate_devtab_entry(a.device));
        let guest = unsettled.clone().filter_map(|a| {
            let tag = cfg.gcr3_tag(a.device)?;
            Some(Command::invalidate_iommu_pages(
                tag,
                Some(a.pasid?),
                InvalidationRange::All,
                true,
            ))
        });
        let atc = unsettled.filter(|a| a.ats).map(|a| {
            Command::invalidate_iotlb_pages(a.device, a.maxpend, a.pasid, InvalidationRange::All)
        });
        // The entries first, in a run of their own: with their invalidation in the same run
        // it may take effect last, and a request through an entry still cached would walk
        // the tables again after the domain's invalidation, refilling the IOTLB under the ID
        // and the page directory cache with pages about to be freed (see `After`).
        if any_unsettled {
            self.run_iter(dte)?;
        }
        self.run_iter(core::iter::once(own).chain(guest).chain(atc))?;
        // The slot's write lock is held until it is emptied: whatever takes the configuration
        // lock now (an attach) waits for the slot and then finds no domain.
        drop(cfg);
        destroy_in_slot(&self.alloc, &mut guard, domain)
    }

    fn map(
        &self,
        domain: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error> {
        self.with_domain(domain, |d| {
            if prot.contains(Prot::PRIV) {
                return Err(Error::PageTable(pgtable::Error::UnsupportedProt { prot }));
            }
            on_table!(&d.table, t => t.map(iova, pa, len, prot)).map_err(Error::from)
        })??;
        if self.info.np_cache {
            if let Err(e) = self.flush_map(domain, iova, len) {
                self.undo_map(domain, iova, len);
                return Err(e);
            }
        }
        Ok(())
    }

    fn unmap(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error> {
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            on_table!(&d.table, t => t.unmap(iova, len, gather)).map_err(Error::from)
        })?
    }

    fn flush(&self, domain: DomainHandle, gather: &mut Gather) -> Result<(), Error> {
        self.flush_gather(domain, gather)
    }

    fn reclaim(&self, domain: DomainHandle, scope: ReclaimScope<'_>) -> Result<usize, Error> {
        let slot = self.slot(domain)?;
        let cfg = self.config.lock();
        let mut guard = self.domains[slot].write();
        let dom = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        // The unit's, not the stack's: it is under the flush. Empty when unlocked (a completed
        // flush releases it, a failed one leaves it to the domain).
        let mut gather = self.reclaim_gather.lock();
        let gather = &mut *gather;
        let unlinked = reclaim_table(&mut dom.table, scope, gather);
        let pages = gather.freed_pages() + dom.owed.get_mut().freed_pages();
        if let Err(e) = self.flush_locked(&cfg, slot, dom, gather) {
            keep_owed(dom.owed.get_mut(), gather);
            return Err(e);
        }
        unlinked?;
        Ok(pages)
    }

    fn table_pages(&self, domain: DomainHandle) -> Result<DomainPages, Error> {
        // The write lock: an unmap and its flush (read lock) would free tables the walk reads.
        let slot = self.slot(domain)?;
        let mut guard = self.domains[slot].write();
        let d = guard.as_mut().ok_or(Error::InvalidDomain(domain))?;
        let pages = DomainPages {
            tables: on_table!(&mut d.table, t => t.table_pages())?,
            unflushed: d.owed.lock().freed_pages(),
        };
        Ok(pages)
    }

    fn query(&self, domain: DomainHandle, iova: Iova) -> Option<Mapping> {
        self.with_domain(domain, |d| on_table!(&d.table, t => t.query(iova)))
            .ok()
            .flatten()
    }

    fn for_each_mapping(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), Error> {
        self.with_domain(domain, |d| {
            on_table!(&d.table, t => t.for_each_mapping(iova, len, &mut *f)).map_err(Error::from)
        })?
    }

    fn read_dirty(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        how: pgtable::DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        self.with_domain(domain, |d| {
            if !gather.claim(d.gather_owner()) {
                return Err(Error::InvalidDomain(domain));
            }
            on_table!(&d.table, t => t.read_dirty(iova, len, how, &mut *sink, gather))
                .map_err(Error::from)
        })?
    }

    fn set_dirty_tracking(&self, domain: DomainHandle, on: bool) -> Result<(), Error> {
        self.set_dirty_tracking_impl(domain, on)
    }

    fn attach(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
    ) -> Result<(), Error> {
        self.attach_device(device, pasid, domain, &DeviceHints::default())
    }

    fn attach_device(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
        hints: &DeviceHints,
    ) -> Result<(), Error> {
        hints.check_ats(device)?;
        let slot = self.slot(domain)?;
        // AMD-Vi device IDs are 16 bits (bus, device, function): no device table has more.
        let id = u16::try_from(device.0).map_err(|_| Error::InvalidDevice(device))?;
        match pasid {
            Some(p) if self.pasid_bits() == 0 => {
                let _ = p;
                Err(Error::Unsupported(Missing::Pasid { bits: 0 }))
            }
            Some(p) => self.attach_pasid_impl(id, p, slot, hints.ats, maxpend_of(hints)?),
            None => self.attach_impl(id, slot, hints.ats, maxpend_of(hints)?),
        }
    }

    fn detach(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<(), Error> {
        let id = u16::try_from(device.0).map_err(|_| Error::NotAttached(device))?;
        match pasid {
            Some(p) => self.detach_pasid_impl(id, p),
            None => self.detach_impl(id),
        }
    }
}

/// The table part of [`Iommu::domain_free`], once everything tagged with the domain's ID is
/// invalidated: the domain in `slot` is destroyed where it lies (not moved out of its slot
/// onto the stack, about 450 bytes in the frame above the table's walk), its pages and those
/// it owed go back to `alloc`, and the slot is emptied whatever the result.
#[inline(never)]
fn destroy_in_slot<A: PageAllocator>(
    alloc: &A,
    slot: &mut Option<Domain<A>>,
    domain: DomainHandle,
) -> Result<(), Error> {
    let Some(dom) = slot.as_mut() else {
        return Err(Error::InvalidDomain(domain));
    };
    let gather = dom.owed.get_mut();
    // SAFETY: the slot is emptied below, whatever the result: the table is only dropped.
    let destroyed = on_table!(&mut dom.table, t => unsafe { t.destroy_in_place(gather) });
    // SAFETY: no entry points at the table (no attachment; each detach or replace
    // invalidated the device's entry) and everything tagged with its ID was invalidated
    // before this call, the wait completed.
    let done = unsafe { InvalidationComplete::assume() };
    let released = gather.release(alloc, done);
    *slot = None;
    released?;
    destroyed?;
    Ok(())
}

/// Keeps what a failed reclaim's (or a map's undo's) flush left in `gather` as owed by the
/// domain. A failure's path, not inlined: the gather it moves is not a copy in the caller's
/// frame.
#[cold]
#[inline(never)]
fn keep_owed(owed: &mut Gather, gather: &mut Gather) {
    owed.absorb(core::mem::take(gather));
}
