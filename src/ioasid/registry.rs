//! The registry: the system's units, which context owns each device, and the PASID space.

use core::sync::atomic::{AtomicU32, Ordering};

use super::pasid::PasidAllocator;
use super::{Error, MAX_BOUND, MAX_UNITS};
use crate::iommu::{DeviceId, Iommu};

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

/// The system-wide state every context shares: one per kernel or hypervisor.
///
/// Small enough to build on a kernel stack: the PASID space's bitmap (128 KiB for 20 bits) is
/// not inside it but borrowed, typically from a `static` (see [`PasidAllocator::new`]).
pub struct Registry<'a> {
    units: [Option<&'a dyn Iommu>; MAX_UNITS],
    owners: spin::Mutex<[Option<(DeviceLabel, u32)>; MAX_BOUND]>,
    pasids: &'a PasidAllocator,
    next_ctx: AtomicU32,
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
        if units.len() > MAX_UNITS {
            return Err(Error::Capacity("units"));
        }
        let mut slots = [None; MAX_UNITS];
        for (slot, unit) in slots.iter_mut().zip(units) {
            *slot = Some(*unit);
        }
        Ok(Self {
            units: slots,
            owners: spin::Mutex::new([None; MAX_BOUND]),
            pasids,
            next_ctx: AtomicU32::new(1),
        })
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
}
