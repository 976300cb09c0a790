//! `IoasidCtx`: what a process or VM holds. Devices, IOASIDs, PASIDs and grants.

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};
use core::sync::atomic::{AtomicU32, Ordering};

use super::attach::FillRuns;
use super::direct::{
    device_regions, DeviceRegions, DirectMapping, DirectRegion, MAX_DIRECT_PER_IOASID,
};
use super::pending::Pending;
use super::reclaim::ReclaimLog;
use super::record::Record;
use super::registry::{DeviceLabel, Leaked, Registry, UnitId};
use super::slots::Generations;
use super::MAX_FAULTS;
use super::{
    DeviceHandle, Error, InUse, IoasidFlags, IoasidId, MAX_DEVICES, MAX_IOASIDS,
    MAX_IOVA_RESERVATIONS, MAX_PASID_ATTACHMENTS, MAX_RESERVED, MAX_UNITS,
};
use crate::iommu::{Capabilities, DeviceHints, DomainHandle, Iommu, Pasid, Source};
use crate::iopf::FaultQueue;
use crate::mem::{Iova, PageAllocator};
use crate::pgtable::{Gather, InvalidationComplete, IovaRange, PageTable};

/// What [`IoasidCtx::retired_slots`] reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetiredSlots {
    /// Device slots retired.
    pub devices: u32,
    /// IOASID slots retired.
    pub ioasids: u32,
}

/// What [`IoasidCtx::device_info`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device's label.
    pub label: DeviceLabel,
    /// What the device's unit can do for it: address widths, page sizes, PASID width, snoop
    /// control, dirty tracking, nesting -- with the platform's declarations about the device
    /// (SMMUv3 `CANWBS`) -- and where each claim comes from
    /// ([`Capabilities::sources`]).
    pub capabilities: Capabilities,
    /// The device declares it may issue no-snoop transactions.
    pub no_snoop_capable: bool,
    /// Where [`no_snoop_capable`](Self::no_snoop_capable) comes from: [`NO_SNOOP_DECLARED`].
    pub no_snoop_source: Source,
    /// What the embedder declared at bind (ATS, SR-IOV physical function), handed to every
    /// attach of the device.
    pub hints: DeviceHints,
    /// Where [`hints`](Self::hints) come from: [`BIND_HINTS`] or [`NO_HINTS`].
    pub hints_source: Source,
}

/// The [`Source`] of [`DeviceInfo::no_snoop_capable`]: the embedder's declaration at bind.
pub const NO_SNOOP_DECLARED: Source =
    Source::Embedder("IoasidCtx::bind: the device's no-snoop declaration");
/// The [`Source`] of hints given to [`IoasidCtx::bind_with`].
pub const BIND_HINTS: Source = Source::Embedder("IoasidCtx::bind_with (PCI enumeration)");
/// The [`Source`] of the hints of a device bound with [`IoasidCtx::bind`]: none declared.
pub const NO_HINTS: Source = Source::Embedder("IoasidCtx::bind: nothing declared");

pub(super) struct Device {
    pub(super) label: DeviceLabel,
    pub(super) no_snoop_capable: bool,
    pub(super) hints: DeviceHints,
    pub(super) hints_source: Source,
    pub(super) attached: Option<IoasidId>,
    /// `Some(previous)` while the unit has not confirmed the attach to `attached` (a wait ran
    /// out or it reported an error, [`crate::iommu::Error::is_unit_fault`]): the device may reach
    /// `attached`'s domain through its present entry, or `previous`'s through cached ones, so
    /// both IOASIDs keep their domain's user and the device's direct regions until a retry of
    /// the attach or a detach settles it (`attach.rs`).
    pub(super) unsettled: Option<Option<IoasidId>>,
    /// What the device must reach one-to-one wherever it is attached (`direct.rs`).
    pub(super) direct: DeviceRegions,
    /// The IOASIDs a detach of the device left something owed in after the unit blocked the
    /// device: an invalidation of its direct regions' unmap (or of the reclaim after it) not
    /// confirmed, or a region it could not unmap. `detach` retried settles them (`attach.rs`).
    pub(super) left_owing: [Option<IoasidId>; 2],
    /// A detach left something owed in more IOASIDs than `left_owing` holds (a device attached
    /// and detached again while the unit kept failing): none is forgotten, `detach` retried
    /// settles every IOASID of the context and clears this once all of them owe nothing.
    pub(super) left_more: bool,
    /// The ID the guest knows the device by (`nested.rs`).
    pub(super) virtual_id: Option<u32>,
}

/// A hardware domain behind an IOASID on one unit, with the attachments that use it.
#[derive(Clone, Copy)]
pub(super) struct UnitDomain {
    pub(super) unit: UnitId,
    pub(super) handle: DomainHandle,
    pub(super) users: u32,
    /// The domain's input address width, in bits (`Iommu::domain_geometry`, read once when
    /// it joins the IOASID): no mapping of the IOASID reaches beyond it (`map.rs`,
    /// `beyond_width`). 64 for a nested child's user domain, which maps nothing.
    pub(super) ias: u32,
}

pub(super) struct Ioasid<'a, A: PageAllocator> {
    pub(super) flags: IoasidFlags,
    pub(super) record: PageTable<Record, &'a A>,
    /// Written only through [`Ioasid::set_domain`], which keeps `beyond_ias` with it.
    pub(super) domains: [Option<UnitDomain>; MAX_UNITS],
    /// The IOVA bits some domain of `domains` cannot translate: the OR of `u64::MAX << ias`
    /// over them (0 with none): `beyond_width`'s one test on every map (issue 18, goal 4:
    /// the scan of the slots was about 48 instructions a call).
    pub(super) beyond_ias: u64,
    pub(super) reservations: crate::sync::Mutex<[Option<IovaRange>; MAX_IOVA_RESERVATIONS]>,
    /// Invalidations a unit has not confirmed, per slot of `domains`.
    pub(super) pending: Pending,
    /// Where unmaps may have left tables empty since the last reclaim.
    pub(super) reclaim: ReclaimLog,
    /// Attached devices' direct regions mapped here, reserved against `map` and `unmap`.
    pub(super) direct: [Option<DirectMapping>; MAX_DIRECT_PER_IOASID],
    /// The page-size policy of every domain behind the IOASID (`page_size.rs`): log2 of the
    /// largest page a map may write, `None` for no limit.
    pub(super) max_page_log2: Option<u32>,
    /// Set for a nested child: its parent and the guest's stage 1 (`nested.rs`).
    pub(super) nested: Option<super::nested::Nested>,
    /// [`IoasidCtx::set_dirty_tracking`] turned tracking off (an IOASID allocated with
    /// `DIRTY_TRACKING` starts with it on; false is zeroes, like the rest).
    pub(super) dirty_off: bool,
    /// Copies in flight from or into the IOASID (`ioas.rs`): [`IoasidCtx::free`] is `Busy`
    /// while any is, so that the number a copy holds names this IOASID until its undo is
    /// done. Changed under the state's write lock, read under either lock.
    pub(super) copies: u32,
    /// The destination ranges of the copies in flight into the IOASID (`ioas.rs`): until the
    /// copy ends, no other call maps or unmaps there (`map`, `unmap`, `UNMAP_ALL` are `Busy`,
    /// an attach's direct region collides, `alloc_iova` passes over it, another copy into it
    /// is `Busy`), so that the copy's undo unmaps only what the copy mapped (review 20 L1).
    /// Written under the state's write lock (when the copy starts, with no map or unmap in
    /// flight, and when it ends), read under its read lock.
    pub(super) copying: [Option<IovaRange>; super::ioas::MAX_COPIES_PER_IOASID],
    /// The IOVA stripes the calls in flight on the IOASID hold (`stripes.rs`): overlapping
    /// maps, unmaps, copies' reads, runs and undos and dirty reads take turns.
    pub(super) stripes: super::stripes::Stripes,
}

impl<'a, A: PageAllocator> Ioasid<'a, A> {
    /// A new IOASID with nothing mapped, reserved or attached. All of it but `flags` and
    /// `record` is zeroes, which the compiler writes in place rather than building the 2 KiB
    /// value on the stack first.
    fn new(flags: IoasidFlags, record: PageTable<Record, &'a A>) -> Self {
        Self {
            flags,
            record,
            domains: [None; MAX_UNITS],
            beyond_ias: 0,
            reservations: crate::sync::Mutex::new([None; MAX_IOVA_RESERVATIONS]),
            pending: Pending::new(),
            reclaim: ReclaimLog::new(),
            direct: [None; MAX_DIRECT_PER_IOASID],
            max_page_log2: None,
            nested: None,
            dirty_off: false,
            copies: 0,
            copying: [None; super::ioas::MAX_COPIES_PER_IOASID],
            stripes: super::stripes::Stripes::new(),
        }
    }

    /// Puts `d` in slot `slot` of `domains` (a new domain, or `None` for a freed one) and
    /// works out `beyond_ias` again.
    pub(super) fn set_domain(&mut self, slot: usize, d: Option<UnitDomain>) {
        if let Some(s) = self.domains.get_mut(slot) {
            *s = d;
        }
        self.beyond_ias = self
            .domains
            .iter()
            .flatten()
            .filter(|d| d.ias < 64)
            .fold(0, |m, d| m | u64::MAX << d.ias);
    }

    /// Whether dirty tracking is on: allocated with it and not turned off.
    pub(super) fn tracking(&self) -> bool {
        self.flags.contains(IoasidFlags::DIRTY_TRACKING) && !self.dirty_off
    }

    /// The first mapping the record holds in `[start, end)`, whole (it may reach outside).
    pub(super) fn first_mapping_in(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Option<IovaRange>, crate::pgtable::Error> {
        let mut mapped = None;
        let len = end.saturating_sub(start);
        self.record.for_each_mapping(Iova::new(start), len, |l| {
            mapped = mapped.or(Some(IovaRange {
                start: l.iova,
                end: Iova::new(l.iova.get().saturating_add(1u64 << l.size_log2)),
            }));
        })?;
        Ok(mapped)
    }

    /// The destination range of a copy in flight into the IOASID overlapping `[start, end)`,
    /// if any (see [`Self::copying`]). Every map and unmap asks, and there is almost never a
    /// copy in flight: a slot of `copying` is only filled while [`Self::copies`] counts its
    /// copy (both changed together under the write lock), so a zero count answers without the
    /// slots (issue 18, goal 4: the IOASID layer's own cost per call).
    #[inline(always)]
    pub(super) fn copy_overlapping(&self, start: u64, end: u64) -> Option<IovaRange> {
        if self.copies == 0 {
            return None;
        }
        self.copy_overlapping_in_slots(start, end)
    }

    /// [`Self::copy_overlapping`]'s search of the slots. Not inlined: its loop is not in the
    /// frames of `map` and `unmap` (with it inlined, `ie_ctx_unmap`'s deepest path grew 1856
    /// -> 1968 bytes: `unmap_unsettled_into` no longer inlined).
    #[inline(never)]
    fn copy_overlapping_in_slots(&self, start: u64, end: u64) -> Option<IovaRange> {
        self.copying
            .iter()
            .flatten()
            .copied()
            .find(|v| super::overlaps(v, start, end))
    }

    /// As [`Self::copy_overlapping`], passing over slot `own` of [`Self::copying`] (the
    /// copy asking, when it copies within one IOASID). Not inlined, as it.
    #[inline(never)]
    pub(super) fn other_copy_overlapping(
        &self,
        start: u64,
        end: u64,
        own: Option<u8>,
    ) -> Option<IovaRange> {
        self.copying
            .iter()
            .enumerate()
            .filter(|&(slot, _)| own.map(usize::from) != Some(slot))
            .find_map(|(_, v)| v.filter(|v| super::overlaps(v, start, end)))
    }

    /// The IOVA reservation overlapping `[start, end)`, if any.
    pub(super) fn reservation_overlapping(&self, start: u64, end: u64) -> Option<IovaRange> {
        self.reservations
            .lock()
            .iter()
            .flatten()
            .copied()
            .find(|v| super::overlaps(v, start, end))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct PasidAttachment {
    pub(super) device: DeviceHandle,
    pub(super) pasid: Pasid,
    pub(super) ioasid: IoasidId,
    /// As [`Device::unsettled`], for the pair.
    pub(super) unsettled: Option<Option<IoasidId>>,
}

pub(super) struct State<'a, A: PageAllocator> {
    /// The context's number: handles carry it, and only its own are accepted.
    pub(super) ctx: u32,
    pub(super) devices: [Option<Device>; MAX_DEVICES],
    pub(super) ioasids: [Option<Ioasid<'a, A>>; MAX_IOASIDS],
    pub(super) pasid_attachments: [Option<PasidAttachment>; MAX_PASID_ATTACHMENTS],
    pub(super) pasids: [Option<Pasid>; MAX_PASID_ATTACHMENTS],
    pub(super) reserved: [Option<IovaRange>; MAX_RESERVED],
    /// Domains built for an attach that failed, whose free failed too (the unit did not
    /// confirm the invalidation of their tag): no IOASID holds them any more, the unit still
    /// does. Freed again before any new domain is built and when the context is dropped
    /// (`attach.rs`, `free_parked`); counted as leaked if the unit never confirms.
    pub(super) parked: [Option<(UnitId, DomainHandle)>; MAX_UNITS],
    /// The runs of an IOASID's record that an attach's fill of a new domain collected and has
    /// yet to map (`attach.rs`): here rather than on the stack, where they would be under the
    /// maps and their flushes. Used only under the write lock.
    pub(super) fill: FillRuns,
    /// Per device slot, how many times it was emptied: a handle of an earlier generation
    /// names a device unbound since, and is refused. Which slot a bind takes.
    pub(super) device_gen: Generations<MAX_DEVICES>,
    /// Per IOASID slot, how many times it was freed: as `device_gen`.
    pub(super) ioasid_gen: Generations<MAX_IOASIDS>,
}

impl<'a, A: PageAllocator> State<'a, A> {
    /// An unlocked, empty state numbered 0: a constant, so that writing it copies from
    /// read-only data rather than from a 30 KiB temporary built on the stack.
    // Each use is a fresh value written once into a new object: no lock is shared.
    #[allow(clippy::declare_interior_mutable_const)]
    const EMPTY: crate::sync::RwLock<Self> = crate::sync::RwLock::new(State {
        ctx: 0,
        devices: [const { None }; MAX_DEVICES],
        ioasids: [const { None }; MAX_IOASIDS],
        pasid_attachments: [None; MAX_PASID_ATTACHMENTS],
        pasids: [None; MAX_PASID_ATTACHMENTS],
        reserved: [None; MAX_RESERVED],
        parked: [None; MAX_UNITS],
        fill: FillRuns::EMPTY,
        device_gen: Generations::NEW,
        ioasid_gen: Generations::NEW,
    });

    /// Whether `d` is of this context and of its slot's current generation.
    fn current_device(&self, d: DeviceHandle) -> bool {
        d.of(self.ctx) && self.device_gen.is_current(d.slot(), d.generation())
    }

    /// Whether `id` is of its slot's current generation.
    pub(super) fn current_ioasid(&self, id: IoasidId) -> bool {
        self.ioasid_gen.is_current(id.slot(), id.generation())
    }

    pub(super) fn device(&self, d: DeviceHandle) -> Result<&Device, Error> {
        let current = self.current_device(d);
        self.devices
            .get(usize::from(d.slot()))
            .filter(|_| current)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchDevice(d))
    }

    pub(super) fn device_mut(&mut self, d: DeviceHandle) -> Result<&mut Device, Error> {
        let current = self.current_device(d);
        self.devices
            .get_mut(usize::from(d.slot()))
            .filter(|_| current)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchDevice(d))
    }

    pub(super) fn ioasid(&self, id: IoasidId) -> Result<&Ioasid<'a, A>, Error> {
        let current = self.current_ioasid(id);
        self.ioasids
            .get(usize::from(id.slot()))
            .filter(|_| current)
            .and_then(Option::as_ref)
            .ok_or(Error::NoSuchIoasid(id))
    }

    pub(super) fn ioasid_mut(&mut self, id: IoasidId) -> Result<&mut Ioasid<'a, A>, Error> {
        let current = self.current_ioasid(id);
        self.ioasids
            .get_mut(usize::from(id.slot()))
            .filter(|_| current)
            .and_then(Option::as_mut)
            .ok_or(Error::NoSuchIoasid(id))
    }

    /// The handle of the device in `slot` (bound or not), of the slot's current generation.
    pub(super) fn device_handle_at(&self, slot: usize) -> DeviceHandle {
        DeviceHandle::new(self.ctx, slot as u16, self.device_gen.of(slot))
    }

    /// The ID of the IOASID in `slot`, of the slot's current generation.
    pub(super) fn ioasid_at(&self, slot: usize) -> IoasidId {
        IoasidId::new(slot as u16, self.ioasid_gen.of(slot))
    }

    /// Whether anything is attached to `id`.
    pub(super) fn in_use(&self, id: IoasidId) -> bool {
        self.devices
            .iter()
            .flatten()
            .any(|d| d.attached == Some(id) || d.unsettled == Some(Some(id)))
            || self
                .pasid_attachments
                .iter()
                .flatten()
                .any(|a| a.ioasid == id || a.unsettled == Some(Some(id)))
    }
}

/// An IOASID context: one per process or VM.
///
/// Borrow-checked lifetimes tie it to the [`Registry`] (`'r`) and to the units and allocator
/// (`'a`). Dropping it detaches every device, frees every hardware domain and IOASID, returns
/// its PASIDs and releases its devices.
pub struct IoasidCtx<'r, 'a, A: PageAllocator> {
    pub(super) registry: &'r Registry<'a>,
    pub(super) alloc: &'a A,
    pub(super) id: u32,
    pub(super) pasid_quota: u32,
    pub(super) state: crate::sync::RwLock<State<'a, A>>,
    grants: [AtomicU32; MAX_DEVICES],
    /// I/O page faults of the context's devices (`fault.rs`), closed until
    /// [`IoasidCtx::fault_queue_alloc`]. Taken after `state`, never before.
    pub(super) faults: crate::sync::Mutex<FaultQueue<MAX_FAULTS>>,
    /// The gather of the unmaps made under the state's write lock (the direct regions a
    /// detach leaves without users, `direct.rs`), and of a refused map's undo
    /// (`roll_back_map`, under either lock): empty whenever it is unlocked. Under the write
    /// lock never contended; undos under the read lock (`map`, `copy`) take turns. Taken
    /// after `state` and before an IOASID's owed invalidations and any unit's lock; nothing
    /// holding it takes it again or takes `state`. Not on the stack, where it would be under
    /// the units' unmaps and flushes (the kernel-stack bound of the C ABI).
    pub(super) unmap_gather: crate::sync::Mutex<Gather>,
}

impl<A: PageAllocator> core::fmt::Debug for IoasidCtx<'_, '_, A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IoasidCtx")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Permission for a device to issue non-snooped DMA, held for as long as the value lives.
///
/// A hypervisor checks [`IoasidCtx::incoherent_dma_allowed`] before it honours a guest's
/// WBINVD; dropping the grant revokes it.
#[derive(Debug)]
#[must_use = "dropping the grant revokes it"]
pub struct IncoherentDmaGrant<'c> {
    counter: &'c AtomicU32,
    device: DeviceHandle,
}

impl IncoherentDmaGrant<'_> {
    /// The device the grant was made for.
    pub fn device(&self) -> DeviceHandle {
        self.device
    }
}

impl Drop for IncoherentDmaGrant<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<'r, 'a, A: PageAllocator> IoasidCtx<'r, 'a, A> {
    /// A new, empty context drawing record pages from `alloc` and at most `pasid_quota` PASIDs
    /// (at most [`MAX_PASID_ATTACHMENTS`]) from the registry.
    ///
    /// A context is about 32 KiB: where stack is short, build it in place with
    /// [`init_in_place`](Self::init_in_place).
    pub fn new(registry: &'r Registry<'a>, alloc: &'a A, pasid_quota: u32) -> Self {
        let mut slot = MaybeUninit::<Self>::uninit();
        // SAFETY: `slot` is ours, aligned and `size_of::<Self>()` bytes; `init_in_place`
        // writes every field.
        unsafe {
            Self::init_in_place(
                NonNull::from(&mut slot).cast(),
                registry,
                alloc,
                pasid_quota,
            );
            slot.assume_init()
        }
    }

    /// As [`IoasidCtx::new`], building the context straight into `slot`. Every field is
    /// written through its own pointer and the grant counters one at a time; the record
    /// tables (devices, IOASIDs, PASIDs, reserved regions: almost all of the context) are
    /// written as one lock-protected value, which the compiler builds at its destination.
    /// Nothing relies on the memory's previous contents. Cannot fail.
    ///
    /// # Safety
    /// `slot` is valid for writes of `size_of::<Self>()` bytes, aligned, and not in use: what
    /// it held is overwritten without being dropped. On return it holds a context the caller
    /// must eventually drop in place (which detaches and releases what it holds).
    pub unsafe fn init_in_place(
        slot: NonNull<Self>,
        registry: &'r Registry<'a>,
        alloc: &'a A,
        pasid_quota: u32,
    ) {
        let id = registry.new_context_id();
        let p = slot.as_ptr();
        // SAFETY: the caller guarantees `slot` is writable and aligned; each field is written
        // exactly once.
        unsafe {
            addr_of_mut!((*p).registry).write(registry);
            addr_of_mut!((*p).alloc).write(alloc);
            addr_of_mut!((*p).id).write(id);
            addr_of_mut!((*p).pasid_quota).write(pasid_quota.min(MAX_PASID_ATTACHMENTS as u32));
            // Copied from a constant (no temporary on the stack), then numbered.
            let state = addr_of_mut!((*p).state);
            state.write(State::EMPTY);
            (*state).get_mut().ctx = id;
            // An array is laid out as `MAX_DEVICES` consecutive elements (the Reference, "Type
            // layout"): each is written in turn.
            let grants = addr_of_mut!((*p).grants).cast::<AtomicU32>();
            for i in 0..MAX_DEVICES {
                grants.add(i).write(AtomicU32::new(0));
            }
            // Copied from a constant (no 4 KiB temporary on the stack), then tagged.
            #[allow(clippy::declare_interior_mutable_const)]
            const NO_FAULTS: crate::sync::Mutex<FaultQueue<MAX_FAULTS>> =
                crate::sync::Mutex::new(FaultQueue::new(0));
            let faults = addr_of_mut!((*p).faults);
            faults.write(NO_FAULTS);
            addr_of_mut!((*p).unmap_gather).write(crate::sync::Mutex::new(Gather::new()));
            (*faults)
                .get_mut()
                .retag(FaultQueue::<MAX_FAULTS>::tag_for(id));
        }
    }

    /// The handle this context gives the device in `slot` ([`DeviceHandle::slot`]), for
    /// callers that carry slots across a boundary (the C ABI). Every call still checks that a
    /// device is bound there.
    pub fn device_handle(&self, raw: u32) -> DeviceHandle {
        let (slot, generation) = DeviceHandle::split(raw);
        DeviceHandle::new(self.id, slot, generation)
    }

    /// The handle of the device in `slot`, of the slot's current generation: for the fuzzing
    /// harness, whose shadow numbers devices by slot.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn device_in_slot(&self, slot: u16) -> DeviceHandle {
        self.state.read().device_handle_at(usize::from(slot))
    }

    /// The ID the IOASID in `slot` has, or the one the next IOASID allocated there will have
    /// (the slot's current generation, [`IoasidId`]): for tests and harnesses that look at
    /// the context slot by slot.
    pub fn ioasid_in_slot(&self, slot: u16) -> IoasidId {
        self.state.read().ioasid_at(usize::from(slot))
    }

    /// How many device and IOASID slots the context retired: emptied under
    /// [`MAX_GENERATION`](super::MAX_GENERATION), never handed out again, so that no handle
    /// names two objects. Each takes one place of [`MAX_DEVICES`] or [`MAX_IOASIDS`] for the
    /// context's life.
    pub fn retired_slots(&self) -> RetiredSlots {
        let st = self.state.read();
        RetiredSlots {
            devices: st.device_gen.retired(),
            ioasids: st.ioasid_gen.retired(),
        }
    }

    /// Puts every slot that is not retired at `generation`: for tests of the last one.
    #[cfg(all(test, feature = "capi"))]
    pub(crate) fn age_slots(&self, generation: u32) {
        let mut st = self.state.write();
        st.device_gen.age(generation);
        st.ioasid_gen.age(generation);
    }

    pub(super) fn unit(&self, id: UnitId) -> Result<&'a dyn Iommu, Error> {
        self.registry.unit(id)
    }

    /// The hardware domains behind `ioasid`, by unit: for the fuzzing harness, which walks
    /// them to check what a domain still holds (`fuzzing::ioasid`).
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    #[cfg(feature = "fuzzing")]
    pub(crate) fn domains_of(
        &self,
        ioasid: IoasidId,
    ) -> Result<[Option<(UnitId, DomainHandle)>; MAX_UNITS], Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        Ok(core::array::from_fn(|i| {
            io.domains[i].map(|d| (d.unit, d.handle))
        }))
    }

    // -------------------------------------------------------------------------------------------
    // devices

    /// Binds a device to this context. `no_snoop_capable` is the device's own declaration that it
    /// may issue no-snoop transactions. A device firmware gives direct regions (RMRR, RMR) is
    /// bound with [`IoasidCtx::bind_with_direct`].
    ///
    /// # Errors
    /// [`Error::Busy`] if the device is bound to any context; [`Error::NoSuchUnit`];
    /// [`Error::Capacity`].
    pub fn bind(&self, label: DeviceLabel, no_snoop_capable: bool) -> Result<DeviceHandle, Error> {
        self.bind_device(
            label,
            no_snoop_capable,
            DeviceHints::default(),
            NO_HINTS,
            &[],
        )
    }

    /// As [`bind`](Self::bind), with what the embedder knows of the device from PCI
    /// enumeration ([`DeviceHints`]): ATS enabled (VT-d device TLB, SMMUv3 `STE.EATS`, and
    /// their invalidations), the physical function of an SR-IOV virtual function (VT-d names
    /// it in `PFSID` of device-TLB invalidations under `ECAP.DIT`), the device's own PASID
    /// width (a PASID attach beyond it is refused with
    /// [`Incompatibility::DevicePasid`](super::Incompatibility::DevicePasid)) and PRI. Every
    /// attach of the device hands them to its unit ([`Iommu::attach_device`]); `device_info`
    /// reports them.
    ///
    /// # Errors
    /// As [`bind`](Self::bind).
    pub fn bind_with(
        &self,
        label: DeviceLabel,
        no_snoop_capable: bool,
        hints: DeviceHints,
    ) -> Result<DeviceHandle, Error> {
        self.bind_device(label, no_snoop_capable, hints, BIND_HINTS, &[])
    }

    /// Binds a device with the regions it must reach one-to-one wherever it is attached: from
    /// firmware ([`DirectRegion::from_rmrr`], an IORT RMR) and any the embedder adds, and
    /// optionally the hints of [`bind_with`](Self::bind_with). Each region is mapped in every
    /// IOASID the device is attached to, or the attach is refused (see [`DirectRegion`]).
    ///
    /// # Errors
    /// As [`IoasidCtx::bind`]; [`Error::Capacity`] beyond [`MAX_DIRECT_REGIONS`](super::MAX_DIRECT_REGIONS)
    /// (`"direct regions per device"`); [`Error::BadDirectRegion`] for two overlapping
    /// regions. Nothing is bound after any of them.
    pub fn bind_with_direct(
        &self,
        label: DeviceLabel,
        no_snoop_capable: bool,
        hints: Option<DeviceHints>,
        direct: &[DirectRegion],
    ) -> Result<DeviceHandle, Error> {
        match hints {
            Some(h) => self.bind_device(label, no_snoop_capable, h, BIND_HINTS, direct),
            None => self.bind_device(
                label,
                no_snoop_capable,
                DeviceHints::default(),
                NO_HINTS,
                direct,
            ),
        }
    }

    fn bind_device(
        &self,
        label: DeviceLabel,
        no_snoop_capable: bool,
        hints: DeviceHints,
        hints_source: Source,
        direct: &[DirectRegion],
    ) -> Result<DeviceHandle, Error> {
        let direct = device_regions(direct)?;
        let mut st = self.state.write();
        let slot = (st.device_gen)
            .free_slot(&st.devices)
            .ok_or(Error::Capacity("devices"))?;
        self.registry.claim(label, self.id)?;
        st.device_gen.handed_out(slot);
        st.devices[slot] = Some(Device {
            label,
            no_snoop_capable,
            hints,
            hints_source,
            attached: None,
            unsettled: None,
            left_owing: [None; 2],
            left_more: false,
            virtual_id: None,
            direct,
        });
        Ok(st.device_handle_at(slot))
    }

    /// Releases a device with no outstanding grant, detaching it first from its PASIDs' IOASIDs
    /// and its own ([`IoasidCtx::detach_pasid`], [`IoasidCtx::detach`]), as iommufd's unbind
    /// does. What an earlier detach left owed (its `InvalidationPending`) is settled by that
    /// detach's retry first: the unbind returns `Ok` only once nothing is.
    ///
    /// # Errors
    /// [`Error::Busy`] while it holds a grant (nothing changed), or if another call attached it
    /// again meanwhile. The errors of `detach_pasid` and `detach`: the device stays bound, with
    /// what was not detached yet still attached; a retry goes on.
    pub fn unbind(&self, device: DeviceHandle) -> Result<(), Error> {
        let mut r = Ok(());
        self.unbind_into(device, &mut r);
        r
    }

    /// [`IoasidCtx::unbind`] with its error in `r`, which the caller passes `Ok`: each step's
    /// error goes into the caller's `Result`, none is kept in this frame, over the detaches'
    /// unmaps and flushes (the kernel-stack bound of the C ABI, whose call passes its own).
    pub(crate) fn unbind_into(&self, device: DeviceHandle, r: &mut Result<(), Error>) {
        *r = self.unbind_check(device);
        // One PASID at a time, each under its own lock (bounded: each pass detaches one).
        for _ in 0..=super::MAX_PASID_ATTACHMENTS {
            if r.is_err() {
                return;
            }
            let Some(p) = self.next_pasid_of(device) else {
                break;
            };
            *r = self.detach_pasid(device, p);
        }
        if r.is_ok() && self.attached_for_unbind(device, r) {
            self.detach_into(device, r);
        }
        if r.is_ok() {
            *r = self.release_device(device);
        }
    }

    /// Whether [`IoasidCtx::unbind`] may go on: the device exists and holds no grant.
    #[inline(never)]
    fn unbind_check(&self, device: DeviceHandle) -> Result<(), Error> {
        self.state.read().device(device)?;
        if self.grant_count(device) != 0 {
            return Err(Error::Busy);
        }
        Ok(())
    }

    /// A PASID `device` is attached through, for [`IoasidCtx::unbind`].
    #[inline(never)]
    fn next_pasid_of(&self, device: DeviceHandle) -> Option<Pasid> {
        self.state
            .read()
            .pasid_attachments
            .iter()
            .flatten()
            .find(|a| a.device == device)
            .map(|a| a.pasid)
    }

    /// Whether [`IoasidCtx::unbind`] must detach `device`: it is attached, or an earlier
    /// detach left something owed that the detach's retry settles (dropped with the device,
    /// the notes were lost and the unbind returned `Ok` with an invalidation owed); `false`
    /// with the error in `r` if it is gone.
    #[inline(never)]
    fn attached_for_unbind(&self, device: DeviceHandle, r: &mut Result<(), Error>) -> bool {
        match self.state.read().device(device) {
            Ok(dev) => dev.attached.is_some() || dev.left_owing != [None; 2] || dev.left_more,
            Err(e) => {
                *r = Err(e);
                false
            }
        }
    }

    /// The end of [`IoasidCtx::unbind`], once the device is detached: releases it unless
    /// another call attached it (or granted it) meanwhile. Not inlined (see `unbind`).
    #[inline(never)]
    fn release_device(&self, device: DeviceHandle) -> Result<(), Error> {
        let mut st = self.state.write();
        let dev = st.device(device)?;
        let pasid_attached = st
            .pasid_attachments
            .iter()
            .flatten()
            .any(|a| a.device == device);
        if dev.attached.is_some() || pasid_attached || self.grant_count(device) != 0 {
            return Err(Error::Busy);
        }
        self.registry.release(dev.label, self.id);
        let slot = usize::from(device.slot());
        st.devices[slot] = None;
        // Every handle of the device is stale from here on.
        st.device_gen.emptied(slot);
        Ok(())
    }

    /// What the device's unit can do for it, where each claim comes from, and whether the
    /// device is no-snoop capable (iommufd `IOMMU_GET_HW_INFO`). A PASID width the device
    /// was bound with ([`DeviceHints::pasid_bits`]) narrower than the unit's is the one
    /// reported, its source then [`BIND_HINTS`]; the device's ATS and PRI are in
    /// [`DeviceInfo::hints`].
    ///
    /// # Errors
    /// [`Error::NoSuchDevice`].
    pub fn device_info(&self, device: DeviceHandle) -> Result<DeviceInfo, Error> {
        let st = self.state.read();
        let dev = st.device(device)?;
        let mut info = DeviceInfo {
            label: dev.label,
            capabilities: self.unit(dev.label.unit)?.device_capabilities(dev.label.id),
            no_snoop_capable: dev.no_snoop_capable,
            no_snoop_source: NO_SNOOP_DECLARED,
            hints: dev.hints,
            hints_source: dev.hints_source,
        };
        // A device's own PASID width narrows the unit's (iommufd reports the device's
        // `max_pasid_log2`); changed in place, so that the report is built once (the C call
        // holds it on a kernel stack).
        let c = &mut info.capabilities;
        if let Some(bits) = dev.hints.pasid_bits {
            if bits < c.pasid_bits {
                c.pasid_bits = bits;
                c.sources.pasid_bits = dev.hints_source;
            }
        }
        Ok(info)
    }

    // -------------------------------------------------------------------------------------------
    // IOASIDs

    /// Allocates an IOASID whose flags are fixed for its life.
    ///
    /// # Errors
    /// [`Error::Capacity`]; [`Error::PageTable`] (no memory for its record).
    pub fn alloc(&self, flags: IoasidFlags) -> Result<IoasidId, Error> {
        self.alloc_locked(&mut self.state.write(), flags)
    }

    /// [`IoasidCtx::alloc`] under the context's write lock.
    pub(super) fn alloc_locked(
        &self,
        st: &mut State<'a, A>,
        flags: IoasidFlags,
    ) -> Result<IoasidId, Error> {
        let slot = (st.ioasid_gen)
            .free_slot(&st.ioasids)
            .ok_or(Error::Capacity("IOASIDs"))?;
        let record = PageTable::new(
            Record::new(),
            self.alloc,
            crate::mem::WalkerCoherency::Coherent,
        )?;
        st.ioasid_gen.handed_out(slot);
        st.ioasids[slot] = Some(Ioasid::new(flags, record));
        Ok(st.ioasid_at(slot))
    }

    /// The flags an IOASID was allocated with.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn flags(&self, ioasid: IoasidId) -> Result<IoasidFlags, Error> {
        Ok(self.state.read().ioasid(ioasid)?.flags)
    }

    /// Frees an IOASID with nothing attached, and its mappings.
    ///
    /// # Errors
    /// [`Error::Busy`] while devices or PASIDs are attached, a nested child has it as its
    /// parent, or a [`IoasidCtx::copy`] from or into it is in flight. [`Error::InvalidationPending`] or
    /// a unit error: a domain behind the IOASID could not be freed yet (the invalidation of its
    /// tag or of an earlier unmap was not confirmed); the IOASID stays, with its mappings and
    /// what remains of its domains, and a retry completes the free. An error from the
    /// IOASID's own record ([`Error::PageTable`] with `UnknownTable`: the record's table is
    /// corrupt, or the allocator does not know one of its pages) comes after every domain was
    /// freed: the IOASID is freed all the same (its number may be taken again), and the
    /// record's pages not yet given back stay out of the allocator. No hardware walks the
    /// record.
    pub fn free(&self, ioasid: IoasidId) -> Result<(), Error> {
        let mut st = self.state.write();
        st.ioasid(ioasid)?;
        let has_child = st
            .ioasids
            .iter()
            .flatten()
            .any(|io| io.nested.is_some_and(|n| n.parent == ioasid));
        // A copy in flight holds the number: freed, another IOASID could take it and lose
        // mappings to the copy's undo, or get its later runs (review 19 finding 4).
        let copying = st.ioasid(ioasid)?.copies != 0;
        if st.in_use(ioasid) || has_child || copying {
            return Err(Error::Busy);
        }
        self.free_domains(st.ioasid_mut(ioasid)?)?;
        let slot = usize::from(ioasid.slot());
        let r = self.destroy_record(&mut st.ioasids[slot]);
        // The slot is empty whatever `r` says: every ID of the IOASID is stale from here on.
        st.ioasid_gen.emptied(slot);
        r
    }

    /// Frees every unused domain of an IOASID (normally none remain: the last detach frees
    /// each), keeping those that cannot be freed yet.
    ///
    /// # Errors
    /// The first failure (see [`IoasidCtx::free`]).
    pub(super) fn free_domains(&self, io: &mut Ioasid<'a, A>) -> Result<(), Error> {
        let mut result = Ok(());
        for slot in 0..MAX_UNITS {
            result = result.and(self.free_domain(io, slot));
        }
        result
    }

    /// Frees the record of an IOASID whose domains are gone (or given up).
    /// Empties the IOASID slot `slot` and frees its record's pages (in place: an IOASID is
    /// 2 KiB, which is not moved onto the stack).
    /// Not inlined: its gather is not in the frame of a caller that frees domains first.
    #[inline(never)]
    pub(super) fn destroy_record(&self, slot: &mut Option<Ioasid<'a, A>>) -> Result<(), Error> {
        let Some(io) = slot.as_mut() else {
            return Ok(());
        };
        let mut gather = Gather::new();
        // SAFETY: the slot is emptied right below, whatever the result: nothing uses the
        // record's table again.
        let destroyed = unsafe { io.record.destroy_in_place(&mut gather) };
        *slot = None;
        destroyed?;
        // SAFETY: the record is a software table: no hardware ever walks it.
        gather.release(self.alloc, unsafe { InvalidationComplete::assume() })?;
        Ok(())
    }

    /// Declares an IOVA range no IOASID of this context may map (beyond the units' own).
    ///
    /// # Errors
    /// [`Error::ReserveOverlaps`] naming what the range overlaps: a direct region of a bound
    /// device (which could then never be attached), a mapping of an IOASID, an IOVA
    /// reservation (as iommufd refuses a reserved range over an existing area) or the
    /// destination range of a copy in flight (its runs not mapped yet); nothing is
    /// reserved. [`Error::Capacity`].
    pub fn reserve_region(&self, range: IovaRange) -> Result<(), Error> {
        let mut st = self.state.write();
        if let Some(with) = self.in_use(&st, range)? {
            return Err(Error::ReserveOverlaps(with));
        }
        let slot = st
            .reserved
            .iter_mut()
            .find(|r| r.is_none())
            .ok_or(Error::Capacity("reserved regions"))?;
        *slot = Some(range);
        Ok(())
    }

    /// The first use the context makes of `range`: a bound device's direct region, else an
    /// IOASID's mapping, else an IOASID's IOVA reservation.
    fn in_use(&self, st: &State<'a, A>, range: IovaRange) -> Result<Option<InUse>, Error> {
        let (start, end) = (range.start.get(), range.end.get());
        for (slot, d) in st.devices.iter().enumerate() {
            let Some(d) = d else { continue };
            if let Some(r) = d
                .direct
                .iter()
                .flatten()
                .find(|r| super::overlaps(&r.range(), start, end))
            {
                return Ok(Some(InUse::DirectRegion {
                    device: st.device_handle_at(slot),
                    region: r.range(),
                }));
            }
        }
        for (slot, io) in st.ioasids.iter().enumerate() {
            let Some(io) = io else { continue };
            let ioasid = st.ioasid_at(slot);
            if let Some(range) = io.first_mapping_in(start, end)? {
                return Ok(Some(InUse::Mapping { ioasid, range }));
            }
            if let Some(range) = io.reservation_overlapping(start, end) {
                return Ok(Some(InUse::IovaReservation { ioasid, range }));
            }
            // Its runs not mapped yet are the copy's too: a reservation there would refuse
            // them (review 20b finding 2).
            if let Some(range) = io.copy_overlapping(start, end) {
                return Ok(Some(InUse::CopyInFlight { ioasid, range }));
            }
        }
        Ok(None)
    }

    // -------------------------------------------------------------------------------------------
    // PASIDs

    /// Allocates a PASID from the registry, within this context's quota.
    ///
    /// # Errors
    /// [`Error::Quota`], [`Error::PasidExhausted`].
    pub fn alloc_pasid(&self) -> Result<Pasid, Error> {
        let mut st = self.state.write();
        let held = st.pasids.iter().flatten().count() as u32;
        if held >= self.pasid_quota {
            return Err(Error::Quota(self.pasid_quota));
        }
        let slot = st
            .pasids
            .iter()
            .position(Option::is_none)
            .ok_or(Error::Quota(self.pasid_quota))?;
        let pasid = self
            .registry
            .pasids()
            .alloc()
            .ok_or(Error::PasidExhausted)?;
        st.pasids[slot] = Some(pasid);
        Ok(pasid)
    }

    /// Returns a PASID that nothing is attached with.
    ///
    /// # Errors
    /// [`Error::PasidNotOwned`]; [`Error::Busy`] while it is attached.
    pub fn free_pasid(&self, pasid: Pasid) -> Result<(), Error> {
        let mut st = self.state.write();
        let slot = st
            .pasids
            .iter()
            .position(|p| *p == Some(pasid))
            .ok_or(Error::PasidNotOwned(pasid))?;
        if st
            .pasid_attachments
            .iter()
            .flatten()
            .any(|a| a.pasid == pasid)
        {
            return Err(Error::Busy);
        }
        st.pasids[slot] = None;
        self.registry.pasids().free(pasid);
        Ok(())
    }

    // -------------------------------------------------------------------------------------------
    // incoherent DMA

    /// Grants a device of this context the right to issue non-snooped DMA.
    ///
    /// # Errors
    /// [`Error::NoSuchDevice`] if the device is not bound to this context;
    /// [`Error::NotNoSnoopCapable`] if it did not declare itself no-snoop capable.
    pub fn allow_incoherent_dma(
        &self,
        device: DeviceHandle,
    ) -> Result<IncoherentDmaGrant<'_>, Error> {
        let st = self.state.read();
        if !st.device(device)?.no_snoop_capable {
            return Err(Error::NotNoSnoopCapable(device));
        }
        let counter = self
            .grants
            .get(usize::from(device.slot()))
            .ok_or(Error::NoSuchDevice(device))?;
        // A count that wrapped to zero would report no grant while grants exist.
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_add(1))
            .map_err(|_| Error::Capacity("incoherent DMA grants"))?;
        Ok(IncoherentDmaGrant { counter, device })
    }

    /// Whether any grant of incoherent DMA is outstanding (a hypervisor must then honour
    /// WBINVD).
    pub fn incoherent_dma_allowed(&self) -> bool {
        self.grants.iter().any(|g| g.load(Ordering::Acquire) != 0)
    }

    fn grant_count(&self, device: DeviceHandle) -> u32 {
        self.grants
            .get(usize::from(device.slot()))
            .map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// The IOVA reservations of an IOASID and the regions it may never map, for `map`.
    pub(super) fn reserved_overlap(
        &self,
        st: &State<'a, A>,
        io: &Ioasid<'a, A>,
        start: u64,
        end: u64,
    ) -> Option<IovaRange> {
        // Plain loops: every map asks (issue 18, goal 4: an iterator chain over both arrays
        // cost about 80 instructions per map).
        for r in st.reserved.iter().flatten() {
            if super::overlaps(r, start, end) {
                return Some(*r);
            }
        }
        for d in io.domains.iter().flatten() {
            let Ok(unit) = self.unit(d.unit) else {
                continue;
            };
            for r in unit.reserved_regions() {
                if super::overlaps(r, start, end) {
                    return Some(*r);
                }
            }
        }
        None
    }
}

impl<A: PageAllocator> Drop for IoasidCtx<'_, '_, A> {
    /// Detaches everything, frees every domain, IOASID and PASID, releases every device. What
    /// a unit refuses to undo is never freed: a device whose detach failed stays bound in the
    /// registry as stranded (no context can bind it; see [`Registry::stranded`]), its domain
    /// and PASIDs stay allocated, and invalidations never confirmed keep their table pages;
    /// the registry counts what was given up ([`Registry::leaked`]).
    fn drop(&mut self) {
        // Errors cannot be reported from drop: each step is still attempted. What was given
        // up is counted in the registry; `tear_down` also returns it.
        self.tear_down();
    }
}

impl<A: PageAllocator> IoasidCtx<'_, '_, A> {
    /// What the drop does, returning what this context gave up (also counted in
    /// [`Registry::leaked`]); the context is left empty, and its drop then gives up nothing
    /// more. For the C ABI, whose destroy reports it. Each step in a frame of its own (the
    /// kernel-stack bound of the C ABI): the detaches' locals are not under the frees, nor
    /// the frees' under the detaches.
    pub(crate) fn tear_down(&mut self) -> Leaked {
        self.detach_all();
        self.release_all()
    }

    /// The start of the context's drop: detaches every (device, PASID) pair and every device,
    /// whatever fails. Slot by slot, each read under a short lock, rather than from snapshots
    /// of the tables (1.5 KiB of stack): a detach clears only its own slot and binds nothing.
    #[inline(never)]
    fn detach_all(&self) {
        for i in 0..MAX_PASID_ATTACHMENTS {
            let pair = self.state.read().pasid_attachments[i].map(|a| (a.device, a.pasid));
            if let Some((d, p)) = pair {
                let _ = self.detach_pasid(d, p);
            }
        }
        for i in 0..MAX_DEVICES {
            let bound = {
                let st = self.state.read();
                st.devices[i].is_some().then(|| st.device_handle_at(i))
            };
            if let Some(handle) = bound {
                // Into a `Result` of this frame, not one of `detach` over it.
                let mut ignored = Ok(());
                self.detach_into(handle, &mut ignored);
            }
        }
    }

    /// The end of the context's drop, once every device was detached (or refused to be):
    /// frees what remains, releases the devices, counts what was given up. Not inlined: its
    /// locals are not in the frame that detaches (the kernel-stack bound of the C ABI).
    #[inline(never)]
    fn release_all(&mut self) -> Leaked {
        let mut guard = self.state.write();
        let st = &mut *guard;
        let mut leaked = Leaked::default();
        // Domains of failed attaches that the unit would not free: once more, else leaked.
        let _ = self.free_parked(st);
        // Counted once and given up: a second tear-down (the C ABI's destroy, then the
        // context's drop) must not count them again.
        for p in st.parked.iter_mut() {
            leaked.domains += u64::from(p.take().is_some());
        }
        // Nested children first: a unit keeps a parent's domain while a child's exists.
        for slot in st.ioasids.iter_mut() {
            if let Some(io) = slot.as_mut().filter(|io| io.nested.is_some()) {
                let _ = self.free_domains(io);
            }
        }
        for slot in st.ioasids.iter_mut() {
            if let Some(io) = slot.as_mut() {
                let _ = self.free_domains(io);
                // Still attached, or the unit would not free it: the hardware may reach it.
                leaked.domains += io.domains.iter().flatten().count() as u64;
                leaked.table_pages += io.pending.leak() as u64;
                let _ = self.destroy_record(slot);
            }
        }
        let attachments = &st.pasid_attachments;
        for p in st.pasids.iter_mut() {
            let attached = attachments.iter().flatten().any(|a| Some(a.pasid) == *p);
            if let Some(p) = p.take().filter(|_| !attached) {
                self.registry.pasids().free(p);
            }
        }
        let device_gen = &st.device_gen;
        for (i, d) in st.devices.iter_mut().enumerate() {
            if let Some(d) = d.take() {
                let handle = DeviceHandle::new(self.id, i as u16, device_gen.of(i));
                let attached = d.attached.is_some()
                    || attachments.iter().flatten().any(|a| a.device == handle);
                if attached {
                    self.registry.strand(d.label, self.id);
                    leaked.devices += 1;
                } else {
                    self.registry.release(d.label, self.id);
                }
            }
        }
        self.registry.count_leaked(leaked);
        leaked
    }
}

/// Rounds `v` up to a multiple of `align` (a power of two), or `None` on overflow.
pub(super) fn align_up(v: u64, align: u64) -> Option<u64> {
    Some(v.checked_add(align - 1)? & !(align - 1))
}

/// The IOVA `v`.
pub(super) fn iova(v: u64) -> Iova {
    Iova::new(v)
}
