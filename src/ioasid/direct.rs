//! Direct-mapped reserved regions: memory a device keeps reaching by DMA after the OS takes
//! over, which every domain the device is attached to must map one-to-one (IOVA = physical
//! address). Firmware names them: the VT-d DMAR's RMRR (Intel VT-d specification rev. 4.1,
//! §8.4) and the IORT's RMR node (Arm DEN0049E, §3.1.3.10, "Reserved Memory Range"). Linux
//! calls them `IOMMU_RESV_DIRECT` (and `IOMMU_RESV_DIRECT_RELAXABLE` when firmware permits
//! remapping once the OS owns the device).
//!
//! ## The rule
//! A device is bound with its direct regions ([`IoasidCtx::bind_with_direct`], at most
//! [`MAX_DIRECT_REGIONS`]). When it is attached (without PASID: the regions are reached with
//! the device's requester ID alone) to an IOASID:
//! - if a region collides with a mapping of the IOASID, an IOVA reservation
//!   ([`IoasidCtx::alloc_iova`]), a reserved region of the context or of a unit behind the
//!   IOASID, or overlaps another device's direct region without being equal to it, the attach
//!   is refused with [`Incompatibility::DirectRegionCollides`] carrying both ranges, before
//!   anything is written (iommufd refuses such an attach with `EADDRINUSE` in
//!   `iopt_table_enforce_dev_resv_regions`);
//! - else each region is mapped one-to-one, read/write (plus [`Prot::MMIO`] when the firmware
//!   describes device memory), in the IOASID's record and every domain behind it, *before*
//!   the device's unit switches it to the domain, so the device never runs without it (the
//!   core's `iommu_create_device_direct_mappings` maps before the attach too);
//! - while mapped, the range is reserved in that IOASID: [`IoasidCtx::map`] and
//!   [`IoasidCtx::unmap`] touching it fail with [`Error::Reserved`] carrying the region.
//!
//! Regions are counted per IOASID: two devices sharing an RMRR (one RMRR, several device
//! scopes) hold one mapping with two users. When the last user is detached (or switched to
//! another IOASID), the mapping is removed from every domain with their units' invalidation
//! (an invalidation not confirmed keeps the freed table pages owed, like any unmap) and from
//! the record. A region that is flagged "relaxable" ([`DirectRegion::relaxable`]: an IORT
//! RMR with `Remapping permitted`) is still mapped: this crate never decides that a driver has
//! taken over a device.
//!
//! ## From firmware
//! - [`DirectRegion::from_rmrr`]: a DMAR RMRR (VT-d §8.4) is system memory the BIOS uses:
//!   normal memory, not relaxable (Linux relaxes RMRRs by device class, USB and graphics: a
//!   kernel's policy, the embedder's to apply).
//! - [`DirectRegion::from_rmr`]: one memory range of an IORT RMR node for one StreamID range
//!   (DEN 0049 E.f, "RMR node", `Flags`): access attributes 0x00-0x03 (Device-nGnRnE,
//!   Device-nGnRE, Device-nGRE, Device-GRE) are device memory, mapped [`Prot::MMIO`]; 0x04
//!   (Normal non-cacheable) and 0x05 (Normal write-back) normal memory, mapped with the
//!   domain's memory type; a reserved value is refused (the memory type firmware meant is
//!   unknown). `Remapping permitted` (bit 0) makes it relaxable. `Access privileged` (bit 1)
//!   needs no privileged-only page: an SMMUv3 stage 1 serves privileged requests to ordinary
//!   pages and stage 2 has no privilege levels. Linux maps RMRs the same way
//!   (`IOMMU_MMIO` for attributes up to Device-GRE, `IOMMU_RESV_DIRECT_RELAXABLE` when
//!   remapping is permitted).
//!
//! Copy semantics: a domain built later for the IOASID (another unit) is filled from the
//! record, direct mappings included; [`IoasidFlags`](super::IoasidFlags) apply to them as to
//! every mapping (snoop control, dirty tracking). A direct region does not reach PASID
//! attachments: a device's PASID-tagged requests use the PASID's IOASID.

use super::ctx::{Ioasid, IoasidCtx, State};
use super::{keep_first, DeviceHandle, Error, Incompatibility, IoasidId};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::{IovaRange, Prot};

use super::record::RECORD_IAS;

/// Most direct regions one device can be bound with.
pub const MAX_DIRECT_REGIONS: usize = 4;
/// Most distinct direct regions one IOASID can hold mapped.
pub const MAX_DIRECT_PER_IOASID: usize = 8;

/// A region a device must reach one-to-one (IOVA = physical address) in every domain it is
/// attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DirectRegion {
    range: IovaRange,
    mmio: bool,
    relaxable: bool,
}

impl DirectRegion {
    /// The region `[start, end)`, mapped as device memory ([`Prot::MMIO`]) if `mmio`.
    ///
    /// # Errors
    /// [`Error::BadDirectRegion`] if it is empty, not 4 KiB aligned at both ends, or beyond
    /// the 57 bits an IOASID can address.
    pub fn new(range: IovaRange, mmio: bool) -> Result<Self, Error> {
        let (start, end) = (range.start.get(), range.end.get());
        let aligned = start & 0xfff == 0 && end & 0xfff == 0;
        if !aligned || end <= start || end > 1 << RECORD_IAS {
            return Err(Error::BadDirectRegion(range));
        }
        Ok(Self {
            range,
            mmio,
            relaxable: false,
        })
    }

    /// The region marked relaxable: firmware lets the OS remap it once a driver owns the
    /// device (Linux `IOMMU_RESV_DIRECT_RELAXABLE`). It is mapped all the same.
    #[must_use]
    pub const fn relaxed(mut self) -> Self {
        self.relaxable = true;
        self
    }

    /// One memory range of an IORT RMR node, for the StreamIDs the region names (see the
    /// module documentation for its memory type and flags). Find a device's with
    /// [`Iort::reserved_for_device`](crate::firmware::iort::Iort::reserved_for_device) or
    /// [`Iort::reserved_for`](crate::firmware::iort::Iort::reserved_for).
    ///
    /// # Errors
    /// [`Error::BadDirectRegion`] with the range (its end wrapped if it wraps) if it wraps, is
    /// empty, is not 4 KiB aligned (DEN 0049 asks 64 KiB; Linux warns and maps it, so does
    /// this crate), or has a reserved access-attributes value.
    pub fn from_rmr(rmr: &crate::firmware::iort::platform::ReservedRegion) -> Result<Self, Error> {
        use crate::firmware::iort::rmr::{RmrAccessAttributes as A, RmrFlags};
        let m = &rmr.range;
        let asked = IovaRange {
            start: Iova::new(m.base),
            end: Iova::new(m.base.wrapping_add(m.length)),
        };
        let range = m.identity().map_err(|_| Error::BadDirectRegion(asked))?;
        let mmio = match rmr.flags.access_attributes() {
            A::DeviceNGnRnE | A::DeviceNGnRE | A::DeviceNGRE | A::DeviceGRE => true,
            A::NormalNonCacheable | A::NormalWriteBack => false,
            A::Reserved(_) => return Err(Error::BadDirectRegion(range)),
        };
        let region = Self::new(range, mmio)?;
        Ok(if rmr.flags.contains(RmrFlags::REMAPPING_PERMITTED) {
            region.relaxed()
        } else {
            region
        })
    }

    /// The region an RMRR names (normal memory: RMRRs describe system memory the BIOS uses).
    ///
    /// # Errors
    /// [`Error::BadDirectRegion`] if its base or limit is malformed (see
    /// [`Rmrr::identity_range`](crate::firmware::dmar::Rmrr::identity_range)).
    pub fn from_rmrr(rmrr: &crate::firmware::dmar::Rmrr<'_>) -> Result<Self, Error> {
        let range = rmrr.identity_range().map_err(|_| {
            Error::BadDirectRegion(IovaRange {
                start: Iova::new(rmrr.base),
                end: Iova::new(rmrr.limit.wrapping_add(1)),
            })
        })?;
        Self::new(range, false)
    }

    /// The IOVA range, which is also the physical range.
    pub const fn range(&self) -> IovaRange {
        self.range
    }

    /// Whether it is device memory.
    pub const fn mmio(&self) -> bool {
        self.mmio
    }

    /// Whether firmware lets the OS remap it once a driver owns the device (it is mapped
    /// one-to-one all the same).
    pub const fn relaxable(&self) -> bool {
        self.relaxable
    }

    /// What it is mapped with: read/write, and [`Prot::MMIO`] for device memory.
    pub fn prot(&self) -> Prot {
        let rw = Prot::READ | Prot::WRITE;
        if self.mmio {
            rw | Prot::MMIO
        } else {
            rw
        }
    }

    fn len(&self) -> u64 {
        self.range.end.get() - self.range.start.get()
    }
}

/// A direct region mapped in an IOASID, with the attached devices that need it.
#[derive(Clone, Copy, Debug)]
pub(super) struct DirectMapping {
    pub(super) region: DirectRegion,
    pub(super) users: u32,
}

/// The direct regions of a device, as bound.
pub(super) type DeviceRegions = [Option<DirectRegion>; MAX_DIRECT_REGIONS];

/// Copies `regions` into a device's table.
///
/// # Errors
/// [`Error::Capacity`] beyond [`MAX_DIRECT_REGIONS`].
pub(super) fn device_regions(regions: &[DirectRegion]) -> Result<DeviceRegions, Error> {
    if regions.len() > MAX_DIRECT_REGIONS {
        return Err(Error::Capacity("direct regions per device"));
    }
    for (i, a) in regions.iter().enumerate() {
        let (start, end) = (a.range.start.get(), a.range.end.get());
        if let Some(b) = regions[i + 1..]
            .iter()
            .find(|b| super::overlaps(&b.range, start, end))
        {
            return Err(Error::BadDirectRegion(b.range));
        }
    }
    let mut out = [None; MAX_DIRECT_REGIONS];
    for (o, r) in out.iter_mut().zip(regions) {
        *o = Some(*r);
    }
    Ok(out)
}

/// Counts one user fewer of each region of `regions` mapped in `io`.
fn unuse_direct<A: PageAllocator>(io: &mut Ioasid<'_, A>, regions: &[Option<DirectRegion>]) {
    for r in regions.iter().flatten() {
        if let Some(m) = io.direct.iter_mut().flatten().find(|m| m.region == *r) {
            m.users = m.users.saturating_sub(1);
        }
    }
}

/// [`unuse_direct`] of the first `upto` regions `device` was bound with, in `ioasid`; returns
/// the IOASID, or `None` with the error put into `result` unless an earlier one is there.
/// Not inlined: the copy of the device's table is on the stack only while it runs, not under
/// the unmaps (and their flushes) that follow.
#[inline(never)]
pub(super) fn unuse_device_direct_into<'s, 'a, A: PageAllocator>(
    st: &'s mut State<'a, A>,
    ioasid: IoasidId,
    device: DeviceHandle,
    upto: usize,
    result: &mut Result<(), Error>,
) -> Option<&'s mut Ioasid<'a, A>> {
    let regions = match st.device(device) {
        Ok(d) => d.direct,
        Err(e) => {
            keep_first(result, e);
            return None;
        }
    };
    let io = match st.ioasid_mut(ioasid) {
        Ok(io) => io,
        Err(e) => {
            keep_first(result, e);
            return None;
        }
    };
    unuse_direct(io, regions.get(..upto).unwrap_or(&regions));
    Some(io)
}

/// The direct mapping of `io` that overlaps `[start, end)`, for `map` and `unmap`.
pub(super) fn direct_overlap<A: PageAllocator>(
    io: &Ioasid<'_, A>,
    start: u64,
    end: u64,
) -> Option<IovaRange> {
    io.direct
        .iter()
        .flatten()
        .map(|d| d.region.range)
        .find(|r| super::overlaps(r, start, end))
}

impl<'a, A: PageAllocator> IoasidCtx<'_, 'a, A> {
    /// [`Self::check_direct`] with its error in `out` (passed `Ok`); `false` if refused. Not
    /// inlined: the `Result` is in this frame, not in the attach's over the maps.
    #[inline(never)]
    pub(super) fn check_direct_into(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        out: &mut Result<(), Error>,
    ) -> bool {
        match self.check_direct(st, device, ioasid) {
            Ok(()) => true,
            Err(e) => super::refuse_into(out, e),
        }
    }

    /// Refuses an attach of `device` to `ioasid` whose direct regions cannot be mapped there
    /// (see the module documentation), before anything is written. Not inlined: its locals
    /// are not in the frame of the attach that goes on to call the unit (the kernel-stack
    /// bound of the C ABI).
    #[inline(never)]
    pub(super) fn check_direct(
        &self,
        st: &State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
    ) -> Result<(), Error> {
        let dev = st.device(device)?;
        let io = st.ioasid(ioasid)?;
        // A nested child maps nothing (its user domains take no maps): its record would hold
        // the regions alone, reaching no table, and, once a user domain is there, keep a
        // refused region no unmap can reach (review 20 D4).
        if io.nested.is_some() && dev.direct.iter().flatten().next().is_some() {
            return Err(Error::UserOwned(ioasid));
        }
        let collides = |region: IovaRange, with: IovaRange| Error::Incompatible {
            device,
            reason: Incompatibility::DirectRegionCollides { region, with },
        };
        let mut new = 0;
        for r in dev.direct.iter().flatten() {
            let (start, end) = (r.range.start.get(), r.range.end.get());
            if let Some(m) = io
                .direct
                .iter()
                .flatten()
                .find(|m| super::overlaps(&m.region.range, start, end))
            {
                if m.region != *r {
                    return Err(collides(r.range, m.region.range));
                }
                continue;
            }
            new += 1;
            // No domain of the IOASID may hold a page another cannot (`map.rs`, `beyond_width`).
            if let Some((last, ias, unit)) = super::map::beyond_width(io, start, end - start) {
                return Err(Error::BeyondInputWidth { last, ias, unit });
            }
            let mapped = io.first_mapping_in(start, end)?;
            let reservation = io.reservation_overlapping(start, end);
            let unit_reserved = self
                .unit(dev.label.unit)?
                .reserved_regions()
                .iter()
                .copied()
                .find(|v| super::overlaps(v, start, end));
            let with = mapped
                .or(reservation)
                .or(unit_reserved)
                .or_else(|| self.reserved_overlap(st, io, start, end))
                // A copy's destination range is the copy's until it ends (`ioas.rs`).
                .or_else(|| io.copy_overlapping(start, end));
            if let Some(with) = with {
                return Err(collides(r.range, with));
            }
        }
        if io.direct.iter().filter(|d| d.is_none()).count() < new {
            return Err(Error::Capacity("direct regions per IOASID"));
        }
        Ok(())
    }

    /// Maps the device's direct regions in `ioasid` (checked by `check_direct`), or counts one
    /// more user of those already mapped. All or nothing: on an error, what was done is undone,
    /// the error put into `out` (which the caller passes `Ok`), and `false`. Not inlined, nor
    /// is what it calls: the attach's frame stays small above the maps and the undo's unmaps,
    /// and no `Result` of this layer is in the frames over the units' maps (the kernel-stack
    /// bound of the C ABI).
    #[inline(never)]
    pub(super) fn take_direct_into(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        out: &mut Result<(), Error>,
    ) -> bool {
        // One region at a time from the device's table: no copy of the table stays on the
        // stack under the maps (and their flushes).
        for k in 0..MAX_DIRECT_REGIONS {
            if !self.take_one(st, (device, k), ioasid, out) {
                self.untake_direct(st, device, ioasid, k, out);
                return false;
            }
        }
        true
    }

    /// Maps the device's `k`-th direct region in `ioasid`, or counts one more user of it; the
    /// error in `out`, `false` if it failed.
    #[inline(never)]
    fn take_one(
        &self,
        st: &mut State<'a, A>,
        (device, k): (DeviceHandle, usize),
        ioasid: IoasidId,
        out: &mut Result<(), Error>,
    ) -> bool {
        // The refusals are built in `refuse_by`'s frame, not in this one over the maps.
        let Ok(dev) = st.device(device) else {
            return super::refuse_by(out, || Error::NoSuchDevice(device));
        };
        let Some(r) = dev.direct.get(k).copied().flatten() else {
            return true;
        };
        let Ok(io) = st.ioasid_mut(ioasid) else {
            return super::refuse_by(out, || Error::NoSuchIoasid(ioasid));
        };
        if let Some(m) = io.direct.iter_mut().flatten().find(|m| m.region == r) {
            m.users = m.users.saturating_add(1);
            return true;
        }
        let Some(slot) = io.direct.iter().position(Option::is_none) else {
            return super::refuse_by(out, || Error::Capacity("direct regions per IOASID"));
        };
        let start = r.range.start;
        if !self.map_in_into(
            io,
            start,
            PhysAddr::new(start.get()),
            r.len(),
            r.prot(),
            out,
        ) {
            return false;
        }
        io.direct[slot] = Some(DirectMapping {
            region: r,
            users: 1,
        });
        true
    }

    /// Undoes what [`Self::take_direct_into`] did for the device's first `k` regions after
    /// the `k`-th failed; the error to report is left in `out`: the attach's, or the
    /// invalidation the undo left owed in its place (as `give_back_direct`). A region whose
    /// unmap is refused (see `undo_left` in `map.rs` for why a unit cannot refuse it), or
    /// whose unmap never starts because what the IOASID owed cannot be settled first, stays
    /// a direct mapping without users, in the record and every domain, reserved against `map`
    /// and `unmap`, until the next detach from the IOASID or its free removes it (or the
    /// attach retried takes it again). In a frame of its own, beside the maps.
    #[cold]
    #[inline(never)]
    fn untake_direct(
        &self,
        st: &mut State<'a, A>,
        device: DeviceHandle,
        ioasid: IoasidId,
        k: usize,
        out: &mut Result<(), Error>,
    ) {
        if let Err(p @ Error::InvalidationPending { .. }) =
            self.drop_device_direct(st, ioasid, device, k)
        {
            if !matches!(out, Err(Error::InvalidationPending { .. })) {
                *out = Err(p);
            }
        }
    }

    /// Counts one user fewer, in `ioasid`, of each of the first `upto` regions `device` was
    /// bound with (read from its binding rather than from a copy the caller keeps on the
    /// stack); a region left without users is unmapped from every domain (with the
    /// invalidation) and from the record. Mappings left without users by an earlier failure
    /// are retried.
    ///
    /// # Errors
    /// The first failure to unmap: that region stays mapped and reserved, without users, until
    /// the next detach from the IOASID retries it or the IOASID is freed.
    /// [`Error::InvalidationPending`]: unmapped, the invalidation owed by the IOASID; or, when
    /// what the IOASID already owed could not be settled first (the unit failed again), not
    /// unmapped at all: the region stays as after any other failure (mapped, reserved, without
    /// users), never forgotten while mapped (found by review 19).
    pub(super) fn drop_device_direct(
        &self,
        st: &mut State<'a, A>,
        ioasid: IoasidId,
        device: DeviceHandle,
        upto: usize,
    ) -> Result<(), Error> {
        let mut result = Ok(());
        if let Some(io) = unuse_device_direct_into(st, ioasid, device, upto, &mut result) {
            self.drop_unused_direct_into(io, &mut result);
        }
        result
    }

    /// Unmaps the direct mappings of `io` left without users (see
    /// [`Self::drop_device_direct`]), its first error put into `result` unless an earlier one
    /// is there; `true` if a mapping failed to go (or its invalidation is owed). A mapping
    /// leaves its slot only once unmapped everywhere: a settle that fails before its unmap
    /// keeps it (without users, reserved). The
    /// errors go straight into `result` and into one `Result` per mapping here: no other
    /// `Result` of this layer is in this frame, over the units' unmaps and flushes (the
    /// kernel-stack bound of the C ABI).
    pub(super) fn drop_unused_direct_into(
        &self,
        io: &mut Ioasid<'a, A>,
        result: &mut Result<(), Error>,
    ) -> bool {
        // The context's gather, not the stack's (it would be under the units' unmaps and
        // flushes): `io` is borrowed from the state's write lock, so the lock is never contended.
        let mut gather = self.unmap_gather.lock();
        let mut failed = false;
        for slot in 0..io.direct.len() {
            let Some(m) = io.direct[slot].filter(|m| m.users == 0) else {
                continue;
            };
            let (start, len) = (m.region.range.start, m.region.len());
            // The tables the mapping used may be left empty: the caller reclaims.
            io.reclaim.note_rollback(start, len);
            // `unmap_in`, its error in `r`.
            let mut r = self.settle(io);
            // Unless what was owed is settled first, the region is not unmapped: its
            // `InvalidationPending` then keeps the slot (without users), for a later detach
            // or the free to remove it.
            let settled = r.is_ok();
            if settled {
                self.unmap_unsettled_into(io, start, len, &mut gather, &mut r);
            }
            match r {
                Ok(()) => io.direct[slot] = None,
                Err(e @ Error::InvalidationPending { .. }) if settled => {
                    io.direct[slot] = None;
                    failed = true;
                    keep_first(result, e);
                }
                Err(e) => {
                    failed = true;
                    keep_first(result, e);
                }
            }
        }
        failed
    }

    /// The direct regions `device` was bound with.
    ///
    /// # Errors
    /// [`Error::NoSuchDevice`].
    pub fn direct_regions(
        &self,
        device: DeviceHandle,
    ) -> Result<[Option<DirectRegion>; MAX_DIRECT_REGIONS], Error> {
        Ok(self.state.read().device(device)?.direct)
    }

    /// The direct regions mapped in `ioasid`, each with the number of attached devices that
    /// need it.
    ///
    /// # Errors
    /// [`Error::NoSuchIoasid`].
    pub fn direct_mappings(
        &self,
        ioasid: IoasidId,
    ) -> Result<[Option<(DirectRegion, u32)>; MAX_DIRECT_PER_IOASID], Error> {
        let st = self.state.read();
        let io = st.ioasid(ioasid)?;
        Ok(core::array::from_fn(|i| {
            io.direct[i].map(|m| (m.region, m.users))
        }))
    }
}
