//! The registry: the system's units, which context owns each device, and the PASID space.

use core::mem::MaybeUninit;
use core::ptr::{addr_of_mut, NonNull};

use super::pasid::PasidAllocator;
use super::quarantine::{DispatchTicket, Quarantines};
use super::{Error, MAX_BOUND, MAX_UNITS};
use crate::iommu::{DeviceId, Iommu, Pasid};
use crate::iopf::{FaultSequence, PageFault};
use crate::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A unit, as the registry numbers it (its position in the slice given to [`Registry::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnitId(pub u8);

/// What names a device to the hardware: the unit that translates it and its RID / StreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceLabel {
    /// The unit.
    pub unit: UnitId,
    /// PCI requester ID (VT-d) or StreamID (SMMUv3).
    pub id: DeviceId,
}

/// The context number that marks a stranded device (contexts are numbered from 1).
const STRANDED: u32 = 0;

/// What dropped contexts gave up because a unit would not undo it (see [`Registry::leaked`]).
/// Nothing here was freed: the hardware may still reach it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leaked {
    /// Devices left attached, stranded in the registry ([`Registry::stranded`]).
    pub devices: u64,
    /// Hardware domains left allocated on their units (attached, or their free failed).
    pub domains: u64,
    /// Table pages held for invalidations a unit never confirmed.
    pub table_pages: u64,
}

/// The system-wide state every context shares: one per kernel or hypervisor.
///
/// Small enough to build on a kernel stack: the PASID space's bitmap (128 KiB for 20 bits) is
/// not inside it but borrowed, typically from a `static` (see [`PasidAllocator::new`]).
pub struct Registry<'a> {
    units: [Option<&'a dyn Iommu>; MAX_UNITS],
    owners: crate::sync::Mutex<[Option<(DeviceLabel, u32)>; MAX_BOUND]>,
    pasids: &'a PasidAllocator,
    next_ctx: AtomicU32,
    leaked: [AtomicU64; 3],
    /// The faults of attachments that are gone, shared by every context (`quarantine.rs`).
    /// A leaf lock.
    quarantines: crate::sync::Mutex<Quarantines>,
}

impl core::fmt::Debug for Registry<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let n = self.units.iter().flatten().count();
        f.debug_struct("Registry")
            .field("units", &n)
            .finish_non_exhaustive()
    }
}

impl<'a> Registry<'a> {
    /// A registry over `units` (at most [`MAX_UNITS`]), drawing PASIDs from `pasids` (the
    /// system's one PASID space, sized to the narrowest PASID width of its units and devices).
    ///
    /// The embedder's contract, not checked: each hardware unit appears once, in one live
    /// registry. Device ownership is kept per (unit number, device ID), and a unit's attach
    /// replaces the device's context entry or STE: a unit listed twice, or in two registries,
    /// lets a second context bind and attach a device another context owns, which then DMAs
    /// through the second one's tables. (The C ABI refuses both; the crate's own tests list one
    /// model unit twice to run two units' worth of domains against one model.)
    ///
    /// ```
    /// use iommu_engine::ioasid::{PasidAllocator, Registry};
    /// // In .bss: no stack, no heap.
    /// static PASIDS: PasidAllocator = PasidAllocator::new(20);
    /// let registry = Registry::new(&[], &PASIDS).unwrap();
    /// assert_eq!(registry.pasids().alloc().map(|p| p.get()), Some(1));
    /// ```
    ///
    /// # Errors
    /// [`Error::Capacity`] with more than [`MAX_UNITS`] units.
    pub fn new(units: &[&'a dyn Iommu], pasids: &'a PasidAllocator) -> Result<Self, Error> {
        let mut slot = MaybeUninit::<Self>::uninit();
        // SAFETY: `slot` is ours, aligned and `size_of::<Self>()` bytes; on `Ok`,
        // `init_in_place` wrote every field.
        unsafe {
            Self::init_in_place(NonNull::from(&mut slot).cast(), units, pasids)?;
            Ok(slot.assume_init())
        }
    }

    /// As [`Registry::new`], building the registry straight into `slot`: the device-owner
    /// table (6 KiB) is copied from a constant into place, never built on the stack and moved
    /// (which cost a C caller 13 KiB of stack). Nothing relies on the memory's previous
    /// contents.
    ///
    /// # Errors
    /// [`Error::Capacity`] with more than [`MAX_UNITS`] units; `slot` is then left untouched.
    ///
    /// # Safety
    /// `slot` is valid for writes of `size_of::<Self>()` bytes, aligned, and not in use: what
    /// it held is overwritten without being dropped.
    pub unsafe fn init_in_place(
        slot: NonNull<Self>,
        units: &[&'a dyn Iommu],
        pasids: &'a PasidAllocator,
    ) -> Result<(), Error> {
        if units.len() > MAX_UNITS {
            return Err(Error::Capacity("units"));
        }
        let mut slots = [None; MAX_UNITS];
        for (slot, unit) in slots.iter_mut().zip(units) {
            *slot = Some(*unit);
        }
        /// No device bound. Only ever copied into a new registry, never used in place: the
        /// interior mutability is the copy's.
        #[allow(clippy::declare_interior_mutable_const)]
        const NO_OWNERS: crate::sync::Mutex<[Option<(DeviceLabel, u32)>; MAX_BOUND]> =
            crate::sync::Mutex::new([None; MAX_BOUND]);
        /// No quarantine; copied into place as `NO_OWNERS`.
        #[allow(clippy::declare_interior_mutable_const)]
        const NO_QUARANTINES: crate::sync::Mutex<Quarantines> =
            crate::sync::Mutex::new(Quarantines::EMPTY);
        let p = slot.as_ptr();
        // SAFETY: the caller guarantees `slot` is writable and aligned; each field is written
        // exactly once.
        unsafe {
            addr_of_mut!((*p).units).write(slots);
            addr_of_mut!((*p).owners).write(NO_OWNERS);
            addr_of_mut!((*p).pasids).write(pasids);
            addr_of_mut!((*p).next_ctx).write(AtomicU32::new(1));
            addr_of_mut!((*p).quarantines).write(NO_QUARANTINES);
            #[cfg(not(loom))]
            addr_of_mut!((*p).leaked).write([const { AtomicU64::new(0) }; 3]);
            // loom's atomics have no `const` `new` (`sync.rs`).
            #[cfg(loom)]
            addr_of_mut!((*p).leaked).write(core::array::from_fn(|_| AtomicU64::new(0)));
        }
        Ok(())
    }

    /// The unit numbered `id`.
    ///
    /// # Errors
    /// [`Error::NoSuchUnit`].
    pub fn unit(&self, id: UnitId) -> Result<&'a dyn Iommu, Error> {
        self.units
            .get(usize::from(id.0))
            .copied()
            .flatten()
            .ok_or(Error::NoSuchUnit(id))
    }

    /// The PASID allocator.
    pub fn pasids(&self) -> &'a PasidAllocator {
        self.pasids
    }

    pub(super) fn new_context_id(&self) -> u32 {
        self.next_ctx.fetch_add(1, Ordering::Relaxed)
    }

    /// Records that context `ctx` owns `label`.
    pub(super) fn claim(&self, label: DeviceLabel, ctx: u32) -> Result<(), Error> {
        self.unit(label.unit)?;
        let mut owners = self.owners.lock();
        if owners.iter().flatten().any(|(l, _)| *l == label) {
            return Err(Error::Busy);
        }
        let free = owners
            .iter_mut()
            .find(|o| o.is_none())
            .ok_or(Error::Capacity("bound devices"))?;
        *free = Some((label, ctx));
        Ok(())
    }

    pub(super) fn release(&self, label: DeviceLabel, ctx: u32) {
        for o in self.owners.lock().iter_mut() {
            if *o == Some((label, ctx)) {
                *o = None;
            }
        }
    }

    /// Marks `label`, owned by context `ctx` that is going away, as stranded: it stays
    /// claimed, so that no context can bind it while the hardware may still translate it
    /// through what the dead context built.
    pub(super) fn strand(&self, label: DeviceLabel, ctx: u32) {
        for o in self.owners.lock().iter_mut() {
            if *o == Some((label, ctx)) {
                *o = Some((label, STRANDED));
            }
        }
    }

    /// Calls `f` with every stranded device: a context was dropped while the device's unit
    /// refused to detach it (a queue that stalls, a wait that times out). Its DMA may still
    /// reach memory the context's owner mapped: keep that memory, reset the unit (or detach
    /// the device on the unit directly), then [`release_stranded`](Self::release_stranded).
    /// `f` runs under the registry's lock and must not call the registry.
    pub fn stranded(&self, mut f: impl FnMut(DeviceLabel)) {
        for &(label, ctx) in self.owners.lock().iter().flatten() {
            if ctx == STRANDED {
                f(label);
            }
        }
    }

    /// Whether `label` is stranded.
    pub fn is_stranded(&self, label: DeviceLabel) -> bool {
        self.owners
            .lock()
            .iter()
            .flatten()
            .any(|&(l, ctx)| l == label && ctx == STRANDED)
    }

    /// Makes a stranded device bindable again. Call it only once its DMA is blocked by other
    /// means (the unit was reset or disabled, or `Iommu::detach` succeeded on the unit, for
    /// the device and each PASID the dead context had attached): `false` if the device was
    /// not stranded.
    ///
    /// The faults the device raised before now (page requests or stalls still in the unit's
    /// queue, or in a dispatcher's batch) were raised for the dead context's attachments:
    /// they are quarantined first, whatever their PASID, up to the unit's fence taken now
    /// (`quarantine.rs`; bounded wait; if it fails, every fault of the device until a
    /// dispatch gets one), so that none reaches the device's next owner.
    pub fn release_stranded(&self, label: DeviceLabel) -> bool {
        if !self.is_stranded(label) {
            return false;
        }
        // Before the release: no context can bind the device, and route its faults, until
        // the quarantine holds them. The fence waits for the unit only, not under the lock.
        if let Ok(unit) = self.unit(label.unit) {
            match unit.page_fault_fence() {
                Ok(None) => {}
                Ok(Some(fence)) => self.quarantines.lock().add_device(label, Some(fence)),
                Err(_) => self.quarantines.lock().add_device(label, None),
            }
        }
        let mut released = false;
        for o in self.owners.lock().iter_mut() {
            if *o == Some((label, STRANDED)) {
                *o = None;
                released = true;
            }
        }
        released
    }

    /// Quarantines the faults `label` (with `pasid`) raised up to `fence` (`None`: the unit
    /// gave none; every fault of the pair until one is known): its attachment is gone.
    pub(super) fn quarantine(
        &self,
        label: DeviceLabel,
        pasid: Option<Pasid>,
        fence: Option<FaultSequence>,
    ) {
        self.quarantines.lock().add(label, pasid, fence);
    }

    /// Whether `fault`, from `unit`, was raised for an attachment that is gone: no context
    /// may take it.
    pub fn quarantined(&self, unit: UnitId, fault: &PageFault) -> bool {
        self.quarantines.lock().holds(unit, fault)
    }

    /// Quarantines held: (device, PASID) pairs detached whose faults from before the detach
    /// a dispatch has not drained yet (at most `MAX_QUARANTINES`, then one per unit).
    pub fn quarantines(&self) -> usize {
        self.quarantines.lock().len()
    }

    /// A dispatch of `unit` starts: its ticket, and `true` if a quarantine of it waits for a
    /// fence. These four are not inlined: their frames then sit beside the dispatch's drains,
    /// not under them (the C ABI's stack bound, `tests/linux_module.rs`).
    #[inline(never)]
    pub(super) fn dispatch_enter(&self, unit: UnitId) -> (DispatchTicket, bool) {
        let mut q = self.quarantines.lock();
        let ticket = q.enter(unit);
        (ticket, q.fence_unknown(unit))
    }

    /// Gives `unit`'s quarantines without a fence, added before the dispatch of `ticket`
    /// entered, the fence `fence` it took since.
    #[inline(never)]
    pub(super) fn dispatch_fence(
        &self,
        unit: UnitId,
        fence: FaultSequence,
        ticket: DispatchTicket,
    ) {
        self.quarantines.lock().know_fence(unit, fence, ticket);
    }

    /// A dispatch of `unit` routed everything up to `reached`.
    #[inline(never)]
    pub(super) fn dispatch_passed(&self, unit: UnitId, reached: FaultSequence) {
        self.quarantines.lock().passed(unit, reached);
    }

    /// A dispatch of `unit` ends.
    #[inline(never)]
    pub(super) fn dispatch_leave(&self, unit: UnitId, ticket: DispatchTicket) {
        self.quarantines.lock().leave(unit, ticket);
    }

    pub(super) fn count_leaked(&self, l: Leaked) {
        for (counter, n) in self
            .leaked
            .iter()
            .zip([l.devices, l.domains, l.table_pages])
        {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// What dropped contexts have given up so far, because a unit would not undo it. Never
    /// freed: a kernel reports it and, to recover the memory, resets the unit.
    pub fn leaked(&self) -> Leaked {
        let [devices, domains, table_pages] = &self.leaked;
        Leaked {
            devices: devices.load(Ordering::Relaxed),
            domains: domains.load(Ordering::Relaxed),
            table_pages: table_pages.load(Ordering::Relaxed),
        }
    }
}
