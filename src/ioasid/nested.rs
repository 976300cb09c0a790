//! Nested children: IOASIDs whose stage 1 a user (a guest) owns, over a
//! [`NEST_PARENT`](super::IoasidFlags::NEST_PARENT) IOASID's second stage (iommufd
//! `IOMMU_HWPT_ALLOC` with a parent, `IOMMU_VDEVICE_ALLOC`, `IOMMU_HWPT_INVALIDATE`).
//!
//! A child holds no mapping of its own: its [`UserStage1`] names the guest's tables, at guest
//! physical addresses that the parent translates. Its hardware domain on a unit is built over
//! the parent's domain there ([`Iommu::domain_alloc_user`]), so attaching a device to the child
//! builds the parent's domain first. The guest's tables are the guest's memory: the crate never
//! reads, writes or frees them. The guest's cache invalidations name its own IDs for its devices
//! ([`IoasidCtx::set_virtual_id`]); each unit checks them against what the child owns and
//! rewrites them with the host's ([`Iommu::invalidate_user`]). A child may have devices behind
//! several units: every unit checks the whole batch before any issues its part, a command
//! naming a device goes to that device's unit, a TLBI to every unit of the child.

use super::ctx::IoasidCtx;
use super::{Error, IoasidFlags, IoasidId, UnitId, MAX_DEVICES};
use crate::iommu::{DeviceId, Iommu, UserPass, UserStage1, VirtualId, VtdS1Invalidate};
use crate::mem::PageAllocator;

use super::DeviceHandle;

#[cfg(test)]
mod tests;

/// `unit`'s bit in [`Error::UserInvalidationIncomplete`]'s `completed`.
fn unit_bit(unit: UnitId) -> u8 {
    1u8.checked_shl(u32::from(unit.0)).unwrap_or(0)
}

/// What makes an IOASID a nested child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Nested {
    /// The NEST_PARENT IOASID whose second stage translates the guest's addresses.
    pub(super) parent: IoasidId,
    /// The guest's stage 1.
    pub(super) stage1: UserStage1,
}

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// Allocates a nested child of `parent`, an IOASID allocated with
    /// [`IoasidFlags::NEST_PARENT`], holding the guest's stage 1 (iommufd `IOMMU_HWPT_ALLOC`
    /// with `pt_id` = the parent and `data_type` VT-d S1 or ARM SMMUv3). Devices and (on VT-d)
    /// PASIDs attach to it as to any IOASID; `map`, `unmap`, `alloc_iova` and
    /// `read_and_clear_dirty` refuse it ([`Error::UserOwned`]): the guest maps by writing its
    /// own tables and tells the units through [`IoasidCtx::invalidate_user`]. Its flags are
    /// empty. The parent cannot be freed while the child exists.
    ///
    /// The stage 1 is checked by each unit when a device is attached (a field the guest may
    /// not set, a format that is not the unit's: [`Error::Incompatible`] or the unit's
    /// `InvalidArgument`).
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`]; [`Error::NotNestParent`] for a parent without
    /// `NEST_PARENT` (or itself a child); [`Error::Capacity`]; [`Error::PageTable`].
    pub fn alloc_nested(&self, parent: IoasidId, stage1: UserStage1) -> Result<IoasidId, Error> {
        let mut st = self.state.write();
        let p = st.ioasid(parent)?;
        if !p.flags.contains(IoasidFlags::NEST_PARENT) || p.nested.is_some() {
            return Err(Error::NotNestParent(parent));
        }
        let id = self.alloc_locked(&mut st, IoasidFlags::empty())?;
        st.ioasid_mut(id)?.nested = Some(Nested { parent, stage1 });
        Ok(id)
    }

    /// The parent of a nested child, `None` for any other IOASID.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn nest_parent(&self, ioasid: IoasidId) -> Result<Option<IoasidId>, Error> {
        Ok(self.state.read().ioasid(ioasid)?.nested.map(|n| n.parent))
    }

    /// Declares the ID the guest's vIOMMU knows `device` by (iommufd `IOMMU_VDEVICE_ALLOC`'s
    /// `virt_id`: a virtual StreamID on SMMUv3, a virtual requester ID on VT-d), or withdraws
    /// it (`None`). The guest's invalidations name devices by it; a request naming an ID no
    /// device declared, or a device not attached to the child, is refused.
    ///
    /// # Errors
    /// [`Error::NoSuchDevice`]; [`Error::Busy`] if another device of the context behind the
    /// same unit already has that ID.
    pub fn set_virtual_id(&self, device: DeviceHandle, virt: Option<u32>) -> Result<(), Error> {
        let mut st = self.state.write();
        let unit = st.device(device)?.label.unit;
        if let Some(v) = virt {
            let me = usize::from(device.slot());
            let taken = st.devices.iter().enumerate().any(|(i, d)| {
                i != me
                    && d.as_ref()
                        .is_some_and(|d| d.label.unit == unit && d.virtual_id == Some(v))
            });
            if taken {
                return Err(Error::Busy);
            }
        }
        st.device_mut(device)?.virtual_id = virt;
        Ok(())
    }

    /// Passes the guest's SMMUv3 cache invalidations for a nested child to the units the child
    /// has a domain on (iommufd `IOMMU_HWPT_INVALIDATE` with
    /// `IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`): TLBI_NH_VA, TLBI_NH_VAA, TLBI_NH_ASID,
    /// TLBI_NH_ALL, ATC_INV, CFGI_CD, CFGI_CD_ALL, two 64-bit words each, as the guest's
    /// vIOMMU queue held them. A command naming a device (ATC_INV, CFGI_CD, CFGI_CD_ALL: by its
    /// virtual ID, [`IoasidCtx::set_virtual_id`]) goes to the unit of the device attached to
    /// the child under that ID (to each such unit, if devices behind two units share it); a
    /// TLBI (the guest's ASIDs, under the parent's VMID) goes to every unit the child is on,
    /// as each unit's TLB may hold them. Every unit checks the whole batch against what the
    /// child owns before any unit is given its part; then each rewrites its part with the
    /// host's tags and IDs, issues it and waits for its completion, one unit after another.
    /// Returns how many of the guest's requests were consumed: all of them (0 while no device
    /// is attached: nothing can be cached then). A VT-d child takes
    /// [`invalidate_user_vtd`](Self::invalidate_user_vtd).
    ///
    /// # Errors
    /// [`Error::Iommu`] with [`crate::iommu::Error::Refused`] carrying the index and words of
    /// the first request refused (a virtual ID no device attached to the child has, a VMID, a
    /// stage-2 or other command the guest may not issue, reserved bits): nothing of the batch
    /// was issued on any unit. [`Error::UserInvalidationIncomplete`]: the batch was accepted,
    /// then a unit failed (a timeout, a command error): it names that unit, the units whose
    /// part had completed and how many leading requests are complete; pass the batch again.
    /// [`Error::Iommu`] with another error from a unit's check (a unit that cannot be used):
    /// nothing issued. [`Error::NotNested`] for an IOASID that is not a child.
    pub fn invalidate_user(&self, ioasid: IoasidId, requests: &[[u64; 2]]) -> Result<usize, Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_none() {
            return Err(Error::NotNested(ioasid));
        }
        // The guest's devices in the child, on every unit, and the unit of each.
        let mut ids = [VirtualId {
            virt: 0,
            device: DeviceId(0),
            local: false,
        }; MAX_DEVICES];
        let mut units = [UnitId(0); MAX_DEVICES];
        let mut n = 0;
        for dev in st.devices.iter().flatten() {
            let in_child = dev.attached == Some(ioasid) || dev.unsettled == Some(Some(ioasid));
            if let (Some(virt), true) = (dev.virtual_id, in_child) {
                if let (Some(id), Some(unit)) = (ids.get_mut(n), units.get_mut(n)) {
                    *id = VirtualId {
                        virt,
                        device: dev.label.id,
                        local: false,
                    };
                    *unit = dev.label.unit;
                    n += 1;
                }
            }
        }
        let ids = ids.get_mut(..n).unwrap_or_default();
        let units = units.get(..n).unwrap_or(&[]);
        // Every unit checks the whole batch before any unit issues a part of it: a refusal
        // leaves every unit untouched.
        let mut any = false;
        for d in io.domains.iter().flatten() {
            let unit = self.unit_for_user(d.unit, ids, units)?;
            unit.invalidate_user(d.handle, requests, ids, UserPass::Check)?;
            any = true;
        }
        if !any {
            return Ok(0);
        }
        #[cfg(test)]
        crate::test_hooks::after_user_check();
        let mut completed = 0u8;
        for d in io.domains.iter().flatten() {
            let unit = self.unit_for_user(d.unit, ids, units)?;
            if let Err(error) = unit.invalidate_user(d.handle, requests, ids, UserPass::Issue) {
                if completed == 0 && !error.is_unit_fault() {
                    // Refused before anything was issued (the unit's books changed since
                    // its check): nothing of the batch reached any unit.
                    return Err(error.into());
                }
                return Err(
                    self.user_incomplete(io, requests, ids, units, d.unit, completed, error)
                );
            }
            completed |= unit_bit(d.unit);
        }
        Ok(requests.len())
    }

    /// The unit `unit`, with `ids` marked local where `units` puts them behind it.
    fn unit_for_user(
        &self,
        unit: UnitId,
        ids: &mut [VirtualId],
        units: &[UnitId],
    ) -> Result<&dyn Iommu, Error> {
        for (id, u) in ids.iter_mut().zip(units) {
            id.local = *u == unit;
        }
        self.unit(unit)
    }

    /// [`Error::UserInvalidationIncomplete`] for `failed`, after the units in `completed`
    /// (bit per unit) completed their part: `done` counts the leading requests no other unit
    /// of the child takes. A failure's path, asking each unit request by request.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn user_incomplete(
        &self,
        io: &super::ctx::Ioasid<'a, A>,
        requests: &[[u64; 2]],
        ids: &mut [VirtualId],
        units: &[UnitId],
        failed: UnitId,
        completed: u8,
        error: crate::iommu::Error,
    ) -> Error {
        let mut done = 0;
        'requests: for r in requests.chunks(1) {
            for d in io.domains.iter().flatten() {
                if completed & unit_bit(d.unit) != 0 {
                    continue;
                }
                // A unit that cannot answer may take it.
                let answer = self
                    .unit_for_user(d.unit, ids, units)
                    .and_then(|u| Ok(u.invalidate_user(d.handle, r, ids, UserPass::Check)?));
                let takes = !matches!(answer, Ok(0));
                if takes {
                    break 'requests;
                }
            }
            done += 1;
        }
        Error::UserInvalidationIncomplete {
            unit: failed,
            completed,
            done,
            error,
        }
    }

    /// Passes the guest's VT-d cache invalidations for a nested child (iommufd
    /// `IOMMU_HWPT_INVALIDATE` with `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`, an array of
    /// `struct iommu_hwpt_vtd_s1_invalidate`) to every unit the child has a domain on. An
    /// entry names a range of the guest's first-stage input (or everything) and no device,
    /// PASID or domain ID: each unit checks every entry, then issues PASID-based IOTLB
    /// invalidations under the child's domain ID for each PASID attached to the child and
    /// device-TLB invalidations for its ATS devices, and waits once. Returns how many entries
    /// were processed.
    ///
    /// # Errors
    /// [`Error::Iommu`] with [`crate::iommu::Error::Refused`] carrying the index of the first
    /// entry refused, its `[addr, npages]` and why (flags or reserved bits,
    /// [`Refusal::Misaligned`](crate::iommu::Refusal::Misaligned),
    /// [`Refusal::OutOfWidth`](crate::iommu::Refusal::OutOfWidth)): nothing of the batch was
    /// issued on that unit. [`Error::NotNested`] for an IOASID that is not a child. Unit
    /// errors (timeouts): retry.
    pub fn invalidate_user_vtd(
        &self,
        ioasid: IoasidId,
        requests: &[VtdS1Invalidate],
    ) -> Result<usize, Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        if io.nested.is_none() {
            return Err(Error::NotNested(ioasid));
        }
        let mut done = 0;
        for d in io.domains.iter().flatten() {
            let unit: &dyn Iommu = self.unit(d.unit)?;
            done = unit.invalidate_user_vtd(d.handle, requests)?;
        }
        Ok(done)
    }
}
