//! The IOASID layer: address spaces for DMA, devices attached to them, and the snoop policy.
//!
//! In the spirit of the `/dev/ioasid` proposal (what became Linux iommufd): a process or VM
//! holds an [`IoasidCtx`]; devices are bound to it (each device to one context at most, system
//! wide, through the [`Registry`]); IOASIDs are allocated with [`IoasidFlags`] that are fixed for
//! their life; devices and (device, PASID) pairs are attached to IOASIDs; mappings made in an
//! IOASID reach every hardware domain behind it, on every unit.
//!
//! ## Snoop policy
//! [`IoasidFlags::ENFORCE_SNOOP`] ("block no-snoop") is chosen once, at allocation. It fixes the
//! leaf attributes of every hardware domain built for the IOASID (VT-d SNP in every
//! second-stage leaf; SMMUv3: forced write-back with FWB where the unit has it). Attaching a
//! device whose unit cannot honour it fails with [`Error::Incompatible`] naming the missing
//! capability (VT-d `ECAP.SC`) or declaration (SMMUv3: the platform's `CANWBS` for the device,
//! [`Missing::NotDeclared`]), before anything is built; nothing is ever downgraded. Incoherent DMA, which a hypervisor must know about before it lets
//! a guest run WBINVD, is only granted by [`IoasidCtx::allow_incoherent_dma`] for a device bound
//! to the context that declares itself no-snoop capable.
//!
//! ## iommufd semantics
//! Where iommufd (Linux's `include/uapi/linux/iommufd.h`, and the VFIO cdev calls VMMs pair
//! with it) and this layer could differ, this is what the layer does and why (tests named
//! `iommufd_*` in `tests.rs`, C in `tests/c/seed_flow.c`):
//!
//! - **Attach of an attached device replaces** its attachment, in one step, never through
//!   "blocked" (`reattach_switches_domains_and_frees_the_old_one`). iommufd's kernel API splits
//!   attach (refused for an attached device) from `iommufd_device_replace`, but the call VMMs
//!   make, `VFIO_DEVICE_ATTACH_IOMMUFD_PT`, replaces when the device is attached (it returned
//!   `EBUSY` before VFIO gained replacement). A hypervisor switching a device between address
//!   spaces (a guest turning its vIOMMU on or off) needs exactly that, so there is no separate
//!   `replace`. The one refusal kept: while an attach the unit did not confirm is unsettled,
//!   attaching the device elsewhere is [`Error::Busy`].
//! - **Unbinding an attached device detaches it** (its PASIDs, then itself), as iommufd's
//!   unbind does (`iommufd_unbind_of_attached_device_detaches`); a device holding an
//!   incoherent-DMA grant stays [`Error::Busy`], with nothing changed.
//! - **Unmap everything**: `unmap(ioasid, Iova(0), UNMAP_ALL)` (length `u64::MAX`), iommufd's
//!   form, whatever the address width (`iommufd_unmap_all_is_iova_0_length_u64_max`). The
//!   attached devices' direct regions stay mapped (iommufd's reserved regions are not areas
//!   either).
//! - **Unmap of a range holding no mapping returns `Ok(0)`**, not iommufd's `ENOENT`: 0 bytes
//!   already tells it apart, a vIOMMU replays many redundant unmaps (QEMU's iommufd backend
//!   turns `ENOENT` back into success for that reason), and the retry after
//!   [`Error::InvalidationPending`] must be able to return `Ok` with 0 bytes
//!   (`iommufd_unmap_of_nothing_is_0_bytes`).
//! - **Dirty tracking starts on** in an IOASID allocated with [`IoasidFlags::DIRTY_TRACKING`]
//!   (iommufd's starts off until `IOMMU_HWPT_SET_DIRTY_TRACKING`): a hypervisor asks for the
//!   flag to track, and a VMM following iommufd's sequence calls
//!   [`IoasidCtx::set_dirty_tracking`] with `true` before its first read anyway, which cleans
//!   every page either way (`set_dirty_tracking_starts_clean`). Reading while it is off is
//!   refused ([`Error::DirtyTrackingOff`]; Linux's VT-d driver returns `EINVAL`), since the
//!   hardware records nothing meanwhile. A bitmap's bits are set, never cleared, as iommufd's
//!   (`get_dirty_bitmap_no_clear_keeps_bits`).
//!
//! | iommufd object or ioctl | this crate | missing (issue 17) |
//! |---|---|---|
//! | `VFIO_DEVICE_BIND_IOMMUFD`, unbind | [`IoasidCtx::bind`], [`IoasidCtx::bind_with`] (the device's ATS: VT-d device TLB, SMMUv3 `STE.EATS`, and their ATC invalidations; SR-IOV physical function; own PASID width, a PASID attach beyond it refused with [`Incompatibility::DevicePasid`]; PRI), `bind_with_direct`; [`IoasidCtx::unbind`]; C: `ie_ctx_bind_with` (`device_bound_with_ats_gets_atc_invalidations`, `device_without_pasid_refused_pasid_attach`) | PRI is declared and reported (VT-d sets the context entry's `PRE` for it); `stall` (platform devices, SMMUv3 only) is not an iommufd notion |
//! | `IOMMU_IOAS_ALLOC`, `IOMMU_DESTROY` | [`IoasidCtx::alloc`] (an IOAS and the hardware domains behind it in one), [`IoasidCtx::free`] | |
//! | `IOMMU_IOAS_MAP` | [`IoasidCtx::map`]: physical addresses, always at a fixed IOVA ([`IoasidCtx::alloc_iova`] picks one); no pinning of user memory (out of scope) | |
//! | `IOMMU_IOAS_UNMAP` | [`IoasidCtx::unmap`], with [`UNMAP_ALL`] | |
//! | `IOMMU_IOAS_COPY` | [`IoasidCtx::copy`]: the source's physical pages *and permissions* (iommufd takes the destination's from its flags), all or nothing (a failed run undoes the runs before it, with their invalidation); a hole is [`Error::NotMapped`] (`ENOENT`); C: `ie_ctx_copy` (`ioas_copy_maps_same_pages_in_destination`, `ioas_copy_is_all_or_nothing`) | |
//! | `IOMMU_IOAS_IOVA_RANGES` | [`IoasidCtx::iova_ranges`] (caller's buffer; [`Error::BufferTooSmall`] with the count, iommufd's `EMSGSIZE`), [`IoasidCtx::for_each_iova_range`]: the narrowest domain's width less its units' reserved regions, the context's and attached devices' direct regions; C: `ie_ctx_iova_ranges` (`ioas_iova_ranges_excludes_reserved_and_beyond_aw`) | `out_iova_alignment`: always the record's 4 KiB (a unit with a larger granule refuses misaligned mappings at attach) |
//! | `IOMMU_IOAS_ALLOW_IOVAS` | none; [`IoasidCtx::reserve_region`] (C: `ie_ctx_reserve_region`) is the opposite (ranges no IOASID of the context may map) | |
//! | `IOMMU_HWPT_ALLOC` | implicit: [`IoasidCtx::attach`] builds an IOASID's domain on a unit at the first attach of one of its devices | |
//! | `IOMMU_HWPT_ALLOC` nested child (`pt_id` a nest parent, `IOMMU_HWPT_DATA_ARM_SMMUV3` / `_VTD_S1`) | [`IoasidCtx::alloc_nested`] with a [`UserStage1`](crate::iommu::UserStage1): the child's domain on each unit is built over the parent's at the first attach ([`Iommu::domain_alloc_user`](crate::iommu::Iommu::domain_alloc_user)); devices attach with [`IoasidCtx::attach`], PASIDs (VT-d) with [`IoasidCtx::attach_pasid`]; `map`/`unmap` refuse it ([`Error::UserOwned`]). VT-d: `struct iommu_hwpt_vtd_s1` as [`UserStage1::Vtd`](crate::iommu::UserStage1::Vtd) (flags SRE/EAFE/WPE, `pgtbl_addr`, `addr_width` 48/57), checked by the unit (unknown flags, misaligned or out-of-parent table, widths other than 48/57 refused; 5-level without `CAP.FL5LP`, SRE without `ECAP.SRS`, EAFE without `ECAP.EAFS` are `Unsupported`); the PASID entry is nested (PGTT = 011b: the guest's FSPTPTR, the parent's SSPTPTR/AW/PGSNP/SSADE) under a domain ID of the child's own, as Linux's `intel/nested.c`; C: `ie_ctx_alloc_nested` (`hwpt_alloc_nested_over_nest_parent`, `hwpt_alloc_nested_over_nest_parent_vtd`, `hwpt_alloc_nested_children_do_not_share_a_domain_id`, `hwpt_alloc_nested_vtd_refuses_bad_guest_fields`) | |
//! | `IOMMU_HWPT_ALLOC_NEST_PARENT` | [`IoasidFlags::NEST_PARENT`] | |
//! | `IOMMU_VIOMMU_ALLOC`, `IOMMU_VDEVICE_ALLOC` | none as objects: the parent's VMID is the vIOMMU's; [`IoasidCtx::set_virtual_id`] gives a device the ID the guest knows it by (`virt_id`) | |
//! | `IOMMU_HWPT_ALLOC_DIRTY_TRACKING` | [`IoasidFlags::DIRTY_TRACKING`], fixed at allocation; tracking starts on (see above) | |
//! | `IOMMU_HWPT_SET_DIRTY_TRACKING` | [`IoasidCtx::set_dirty_tracking`]: every domain of the IOASID, every page clean when turned on (VT-d `SSADE` in each PASID entry, a nest parent's nested children's entries included, `SSADE` living in the entry that holds `SSPTPTR`: `hwpt_set_dirty_tracking_on_nest_parent_reaches_nested_children`; SMMUv3 leaves written writable-clean, `HD` kept set); [`IoasidCtx::dirty_tracking`] reads the state | |
//! | `IOMMU_HWPT_GET_DIRTY_BITMAP` (`NO_CLEAR` flag) | [`IoasidCtx::get_dirty_bitmap`] (the caller's `u64` words, page size, base IOVA, length; [`DirtyReadFlags::NO_CLEAR`]); [`IoasidCtx::read_dirty`] with a callback, [`IoasidCtx::read_and_clear_dirty`]; refused while tracking is off ([`Error::DirtyTrackingOff`]) | |
//! | `IOMMU_HWPT_INVALIDATE` | SMMUv3 (`IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`): [`IoasidCtx::invalidate_user`], the guest's queue entries (TLBI_NH_VA/VAA/ASID/ALL, ATC_INV, CFGI_CD(_ALL)), all checked, then rewritten with the host's VMID / StreamID and issued with one completion wait. VT-d (`IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`): [`IoasidCtx::invalidate_user_vtd`] with `struct iommu_hwpt_vtd_s1_invalidate` entries ([`VtdS1Invalidate`](crate::iommu::VtdS1Invalidate): `addr`, `npages`, `IOMMU_VTD_INV_FLAGS_LEAF`), each a PASID-based IOTLB invalidation under the child's domain ID per PASID attached to it plus device-TLB invalidations of its ATS devices, one wait. The first refused entry is [`iommu::Error::Refused`] carrying its index, words and reason (VT-d: unknown flags or reserved, misaligned, beyond the 48/57-bit width), with nothing issued (iommufd stops at the first failing entry too, having issued those before it); a child with devices behind several SMMUv3 units has its batch checked by every unit first, each device-scoped command issued to its device's unit, each TLBI to every unit, and a unit's failure after others completed reported as [`Error::UserInvalidationIncomplete`]; C: `ie_ctx_invalidate_user`, `ie_ctx_invalidate_user_vtd` (`hwpt_invalidate_rewrites_vmid_and_refuses_foreign_sid`, `hwpt_invalidate_vtd_is_needed_and_sufficient`, `hwpt_nest_parent_unmap_invalidates_nested_children`) | |
//! | `IOMMU_GET_HW_INFO` | [`IoasidCtx::device_info`]: capabilities and where each claim comes from (the PASID width narrowed to the device's own, iommufd's `max_pasid_log2`; ATS, PRI), not the raw VT-d `CAP`/`ECAP` or SMMUv3 `IDR` registers; C: `ie_ctx_device_info` | |
//! | `IOMMU_OPTION` (`HUGE_PAGES`) | [`IoasidCtx::set_huge_pages`] (off: 4 KiB pages only, or the unit's granule), [`IoasidCtx::set_max_page_log2`] (any largest page), per IOASID; changing it with both a domain and a mapping is [`Error::Busy`] (iommufd `EINVAL`); C: `ie_ctx_set_huge_pages` (`option_huge_pages_off_maps_only_4k`) | no per-map limit |
//! | `IOMMU_OPTION` (`RLIMIT_MODE`) | none: nothing is pinned | out of scope |
//! | `VFIO_DEVICE_ATTACH_IOMMUFD_PT` (attach, replace) | [`IoasidCtx::attach`] (replaces, see above); with a PASID: [`IoasidCtx::attach_pasid`], to an IOASID allocated with [`IoasidFlags::PASID`] (first stage; with `DIRTY_TRACKING` a VT-d second-stage domain, PGTT = second-stage-only) | |
//! | `VFIO_DEVICE_DETACH_IOMMUFD_PT` | [`IoasidCtx::detach`], [`IoasidCtx::detach_pasid`] | |
//! | `IOMMU_FAULT_QUEUE_ALLOC` (I/O page faults), `read()` of the fault fd, `write()` of `struct iommu_hwpt_page_response` | [`IoasidCtx::fault_queue_alloc`] (one queue per context, [`MAX_FAULTS`] records, not per HWPT); the embedder's fault thread calls [`dispatch_page_faults`] per unit (VT-d page requests, SMMUv3 PRI queue and stalled transactions of devices bound with `DeviceHints::stall`, filed by `SmmuUnit::handle_events`, routed to the context whose attached device or PASID asked; anything else answered Invalid); [`IoasidCtx::read_faults`] (a group is readable once its last request arrived; one cookie per group), [`IoasidCtx::respond_fault`] (a second answer, or another context's cookie, is [`Error::Fault`]); detaching a device or PASID (or attaching it elsewhere, whether the unit confirms that or leaves it unsettled) answers its faults, read or not, with Invalid as `iommufd_auto_response_faults` (C: `ie_unit_dispatch_faults`, `ie_ctx_fault_*`) | per-HWPT fault objects; unrecoverable faults stay with the embedder (`ie_unit_read_faults`) |
//!
//! ## Locking
//! [`IoasidCtx`] is `Sync`. Configuration (bind, alloc, attach, detach, free, PASIDs) takes the
//! context's lock for writing and serialises. [`IoasidCtx::map`] and [`IoasidCtx::unmap`] take it
//! for reading: any number may run at once on *disjoint* IOVA ranges of one IOASID. Calls on
//! overlapping ranges of one IOASID (`map`, `unmap`, a `copy`'s reads, runs and undo, the dirty
//! reads) take turns: each holds its range's IOVA stripes (32 of 1 GiB, modulo 32 GiB; a range
//! over 32 GiB takes them all) for its duration, and a call whose stripe another holds spins
//! until it is given back (bounded by that call, which only spins on bounded hardware waits).
//! Waiting calls are served in turn: once one is served, later calls wanting any of its
//! stripes wait behind it, so narrow calls taking and giving back single stripes cannot keep
//! an `UNMAP_ALL` out; a call waits at most for the waiters ahead of it and, once served, the
//! calls then holding its stripes.
//! Disjoint ranges sharing a stripe wait too; the page-table engine's own contract (no
//! overlapping calls at once) is kept whatever the callers do.
//! [`IoasidCtx::translate`], [`IoasidCtx::alloc_iova`], [`IoasidCtx::table_pages`] and
//! [`IoasidCtx::audit`] read the
//! record beyond any range their caller owns, so they take the lock for writing: an unmap frees
//! the record's tables at once. Every
//! [`RECLAIM_BATCH`] unmaps of an IOASID, the unmap that fills its log takes the lock for
//! writing to reclaim the tables unmaps left empty (after a rolled-back map, the map does), so
//! an IOASID's table pages stay within what its mappings need plus [`reclaim_slack`]. No call
//! sleeps; all of them spin at most for bounded hardware waits, so none may be made from a
//! context that must not spin for that long (hard interrupt handlers).

mod attach;
mod audit;
mod ctx;
mod direct;
mod dirty;
mod fault;
mod ioas;
mod map;
mod nested;
mod page_size;
mod pasid;
mod pending;
mod quarantine;
mod reclaim;
mod record;
mod registry;
mod slots;
mod stripes;

#[cfg(test)]
pub(crate) mod tests;

pub use ctx::{
    DeviceInfo, IncoherentDmaGrant, IoasidCtx, RetiredSlots, BIND_HINTS, NO_HINTS,
    NO_SNOOP_DECLARED,
};
pub use direct::{DirectRegion, MAX_DIRECT_PER_IOASID, MAX_DIRECT_REGIONS};
pub use dirty::{DirtyReadFlags, DIRTY_BITMAP_MIN_PAGE_LOG2};
pub use fault::{dispatch_page_faults, dispatch_page_faults_with, Dispatched, MAX_FAULTS};
pub use page_size::SMALL_PAGE_LOG2;
pub use pasid::PasidAllocator;
pub use quarantine::MAX_QUARANTINES;
pub use reclaim::{reclaim_slack, IoasidPages, UnitPages, RECLAIM_BATCH};
pub use record::{Record, RECORD_IAS};
pub use registry::{DeviceLabel, Leaked, Registry, UnitId};

use core::fmt;

use crate::iommu::{self, Missing, Pasid};
use crate::pgtable::{self, IovaRange};

/// Most devices one context can hold.
pub const MAX_DEVICES: usize = 32;
/// Most IOASIDs one context can hold.
pub const MAX_IOASIDS: usize = 32;
/// The low bits of a device handle or IOASID number ([`DeviceHandle::raw`], [`IoasidId`])
/// that hold its slot: as few as [`MAX_DEVICES`] and [`MAX_IOASIDS`] need, so that the
/// generation above them, which names a slot's objects apart, has every other bit.
pub const HANDLE_SLOT_BITS: u32 = slot_bits(if MAX_DEVICES > MAX_IOASIDS {
    MAX_DEVICES
} else {
    MAX_IOASIDS
});
// `slot()` answers a `u16`.
const _: () = assert!(HANDLE_SLOT_BITS <= u16::BITS);
/// The last generation of a slot: a slot emptied under it is retired (never handed out
/// again, [`IoasidCtx::retired_slots`]) rather than starting over at 0, where handles of its
/// first objects would name its next ones.
pub const MAX_GENERATION: u32 = u32::MAX >> HANDLE_SLOT_BITS;
const SLOT_MASK: u32 = (1 << HANDLE_SLOT_BITS) - 1;

/// How many bits number `n` slots.
const fn slot_bits(n: usize) -> u32 {
    usize::BITS - n.saturating_sub(1).leading_zeros()
}
/// Most units a registry can hold (and so hardware domains behind one IOASID).
pub const MAX_UNITS: usize = 8;
// `Error::UserInvalidationIncomplete::completed` holds one bit per unit.
const _: () = assert!(MAX_UNITS <= u8::BITS as usize);
/// Most (device, PASID) attachments one context can hold.
pub const MAX_PASID_ATTACHMENTS: usize = 64;
/// Most reserved IOVA regions the embedder can declare per context.
pub const MAX_RESERVED: usize = 8;
/// Most outstanding [`IoasidCtx::alloc_iova`] reservations per IOASID.
pub const MAX_IOVA_RESERVATIONS: usize = 32;
/// Most devices bound across all contexts of a registry.
pub const MAX_BOUND: usize = 256;
/// The length that, with IOVA 0, makes [`IoasidCtx::unmap`] unmap everything the owner mapped,
/// whatever the address width (iommufd `IOMMU_IOAS_UNMAP` with iova 0, length `U64_MAX`).
pub const UNMAP_ALL: u64 = u64::MAX;

bitflags::bitflags! {
    /// Properties of an IOASID, fixed when it is allocated.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct IoasidFlags: u32 {
        /// Block no-snoop: every DMA through the IOASID snoops CPU caches.
        const ENFORCE_SNOOP = 1 << 0;
        /// The IOASID is the parent (second stage) of nested translation.
        const NEST_PARENT = 1 << 1;
        /// Hardware dirty tracking on every domain behind the IOASID.
        const DIRTY_TRACKING = 1 << 2;
        /// A PASID-granular address space: may be attached to (device, PASID). Its domains are
        /// first stage (VT-d PGTT = first-stage, SMMUv3 stage 1), except with
        /// [`DIRTY_TRACKING`](Self::DIRTY_TRACKING) on VT-d, which tracks dirty state only in
        /// second-stage tables: there the PASID entry is second-stage-only (PGTT = 010b, with
        /// `SSADE`), as Linux attaches dirty-tracked domains to PASIDs.
        const PASID = 1 << 3;
        /// Supervisor (privileged) requests are honoured, and only such an IOASID maps
        /// privileged-only pages ([`Prot::PRIV`](crate::pgtable::Prot::PRIV)); elsewhere a
        /// `PRIV` map is refused (`pgtable::Error::UnsupportedProt`). Its domains are first
        /// stage: VT-d with `SRE` (and `WPE`) in their PASID entries, which needs `ECAP.SRS`;
        /// SMMUv3 stage 1. A unit that cannot is refused at attach
        /// ([`Missing::SupervisorRequests`]).
        const SUPERVISOR = 1 << 4;
    }
}

/// A bound device, as its context numbers it. It names the device only to the context that
/// returned it: any other context refuses it with [`Error::NoSuchDevice`], so that one context
/// cannot reach (or grant incoherent DMA to) another's device. Invalid after
/// [`IoasidCtx::unbind`]: its slot may be reused, but the slot's generation changes with each
/// unbind, and a handle of an earlier generation is refused ([`Error::NoSuchDevice`]) rather
/// than naming the slot's new device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceHandle {
    ctx: u32,
    slot: u16,
    generation: u32,
}

impl DeviceHandle {
    pub(crate) const fn new(ctx: u32, slot: u16, generation: u32) -> Self {
        Self {
            ctx,
            slot,
            generation,
        }
    }

    /// The device's slot in its context.
    pub const fn slot(self) -> u16 {
        self.slot
    }

    /// How many times the slot had been emptied when the device was bound (at most
    /// [`MAX_GENERATION`]).
    pub const fn generation(self) -> u32 {
        self.generation
    }

    /// The handle as one number: the generation above the slot's [`HANDLE_SLOT_BITS`] (the C
    /// ABI's device handle; [`IoasidCtx::device_handle`] reads it back).
    pub const fn raw(self) -> u32 {
        self.generation << HANDLE_SLOT_BITS | self.slot as u32
    }

    /// The slot and generation of a raw handle ([`DeviceHandle::raw`]).
    pub(crate) const fn split(raw: u32) -> (u16, u32) {
        ((raw & SLOT_MASK) as u16, raw >> HANDLE_SLOT_BITS)
    }

    /// Whether the handle was made by context `ctx`.
    pub(crate) const fn of(self, ctx: u32) -> bool {
        self.ctx == ctx
    }
}

/// Where a device, or a (device, PASID) pair, is attached: [`IoasidCtx::attachment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The IOASID it is attached to.
    pub ioasid: IoasidId,
    /// `None` once the unit confirmed the attachment. `Some(previous)` after an attach the
    /// unit did not confirm (a wait ran out, or it reported an error): the device may reach
    /// `ioasid`'s domain, or through cached entries that of `previous` (the IOASID it was
    /// attached to, if any); both keep their domain and the device's direct regions until the
    /// same attach, retried, or a detach settles it.
    pub unsettled: Option<Option<IoasidId>>,
}

/// An IOASID, as its context numbers it: like a file descriptor, it names an IOASID of the
/// context it is used with. The low [`HANDLE_SLOT_BITS`] bits are its slot, the bits above
/// them the slot's generation: how many times the slot had been freed when the IOASID was
/// allocated. Invalid after [`IoasidCtx::free`]: the slot may be reused, under the next
/// generation, and an ID of an earlier one is refused ([`Error::NoSuchIoasid`]) rather than
/// naming the new IOASID; a slot freed under [`MAX_GENERATION`] is retired, so no ID ever
/// names two IOASIDs. The first IOASID of a slot has generation 0, so its ID is its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IoasidId(pub u32);

impl IoasidId {
    /// The ID of the IOASID in `slot` allocated under `generation` (bits of either beyond
    /// their fields are dropped).
    pub const fn new(slot: u16, generation: u32) -> Self {
        Self(generation << HANDLE_SLOT_BITS | (slot as u32 & SLOT_MASK))
    }

    /// The IOASID's slot in its context.
    pub const fn slot(self) -> u16 {
        (self.0 & SLOT_MASK) as u16
    }

    /// The slot's generation the IOASID was allocated under.
    pub const fn generation(self) -> u32 {
        self.0 >> HANDLE_SLOT_BITS
    }
}

/// Why a device cannot be attached to an IOASID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Incompatibility {
    /// The device's unit lacks a capability the IOASID's flags need.
    Missing(Missing),
    /// An existing mapping lies in a region the device's unit reserves.
    ReservedRegionMapped(IovaRange),
    /// An existing mapping is not aligned to the unit's smallest page.
    Alignment {
        /// The mapping's IOVA.
        iova: crate::mem::Iova,
        /// Log2 of the unit's smallest page.
        granule_log2: u32,
    },
    /// Only an IOASID allocated with [`IoasidFlags::PASID`] may be attached to a PASID.
    NotPasidCapable,
    /// The device's own PASID width, declared at bind ([`DeviceHints::pasid_bits`](crate::iommu::DeviceHints::pasid_bits)),
    /// does not hold the PASID: `bits` 0 for a device that is not PASID-capable.
    DevicePasid {
        /// The device's PASID width, in bits.
        bits: u32,
    },
    /// An existing mapping has permissions the unit's table format cannot express (execute on
    /// a VT-d second stage, privileged-only on an Arm stage 2, write-only on x86 paging).
    Permissions {
        /// The mapping's IOVA.
        iova: crate::mem::Iova,
        /// Its permissions.
        prot: crate::pgtable::Prot,
    },
    /// A direct region of the device (`DirectRegion`: RMRR, RMR) collides with `with`: a
    /// mapping of the IOASID, an IOVA reservation, a reserved region, or another device's
    /// direct region that overlaps it without being equal to it.
    DirectRegionCollides {
        /// The device's region.
        region: IovaRange,
        /// What it collides with.
        with: IovaRange,
    },
    /// An existing mapping's physical range reaches beyond the unit's output address width.
    OutputAddress {
        /// The mapping's IOVA.
        iova: crate::mem::Iova,
        /// The mapping's last physical address.
        last: crate::mem::PhysAddr,
        /// The unit's output address width, in bits.
        oas: u32,
    },
}

impl fmt::Display for Incompatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incompatibility::Missing(m) => write!(f, "{m}"),
            Incompatibility::ReservedRegionMapped(r) => {
                write!(f, "mapping inside reserved region {}..{}", r.start, r.end)
            }
            Incompatibility::Alignment { iova, granule_log2 } => {
                write!(
                    f,
                    "mapping at {iova} not aligned to the unit's 2^{granule_log2} page"
                )
            }
            Incompatibility::NotPasidCapable => write!(f, "IOASID not allocated with PASID"),
            Incompatibility::DevicePasid { bits: 0 } => write!(f, "the device has no PASID"),
            Incompatibility::DevicePasid { bits } => {
                write!(f, "the device supports {bits}-bit PASIDs")
            }
            Incompatibility::DirectRegionCollides { region, with } => write!(
                f,
                "direct region {}..{} collides with {}..{}",
                region.start, region.end, with.start, with.end
            ),
            Incompatibility::Permissions { iova, prot } => {
                write!(f, "mapping at {iova}: the unit cannot express {prot:?}")
            }
            Incompatibility::OutputAddress { iova, last, oas } => write!(
                f,
                "mapping at {iova} reaches {last}, beyond the unit's {oas}-bit output"
            ),
        }
    }
}

/// What a range [`IoasidCtx::reserve_region`] was asked to reserve is already used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InUse {
    /// A direct region (RMRR, RMR) a bound device must reach one-to-one.
    DirectRegion {
        /// The device.
        device: DeviceHandle,
        /// Its region.
        region: IovaRange,
    },
    /// A mapping of an IOASID (its first page or block inside the range).
    Mapping {
        /// The IOASID.
        ioasid: IoasidId,
        /// The page or block.
        range: IovaRange,
    },
    /// An IOVA reservation of an IOASID ([`IoasidCtx::alloc_iova`]).
    IovaReservation {
        /// The IOASID.
        ioasid: IoasidId,
        /// The reservation.
        range: IovaRange,
    },
    /// The destination range of a copy in flight into an IOASID ([`IoasidCtx::copy`]): its
    /// runs not mapped yet are the copy's too.
    CopyInFlight {
        /// The destination IOASID.
        ioasid: IoasidId,
        /// The copy's destination range.
        range: IovaRange,
    },
}

impl fmt::Display for InUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InUse::DirectRegion { device, region } => write!(
                f,
                "device {}'s direct region {}..{}",
                device.slot, region.start, region.end
            ),
            InUse::Mapping { ioasid, range } => write!(
                f,
                "IOASID {}'s mapping {}..{}",
                ioasid.0, range.start, range.end
            ),
            InUse::IovaReservation { ioasid, range } => write!(
                f,
                "IOASID {}'s IOVA reservation {}..{}",
                ioasid.0, range.start, range.end
            ),
            InUse::CopyInFlight { ioasid, range } => write!(
                f,
                "the range {}..{} of a copy in flight into IOASID {}",
                range.start, range.end, ioasid.0
            ),
        }
    }
}

/// Errors of the IOASID layer. Every variant carries the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The device cannot be attached to the IOASID.
    Incompatible {
        /// The device.
        device: DeviceHandle,
        /// Why.
        reason: Incompatibility,
    },
    /// The object is in use: a device bound elsewhere, an IOASID with attachments (or a
    /// [`IoasidCtx::copy`] from or into it in flight on another thread), a range of an IOASID
    /// that a copy in flight is mapping into (map, unmap, another copy), a device
    /// attached or holding a grant, a PASID attached, or a device (or PASID) whose attach the
    /// unit did not confirm being attached to another IOASID than that attach's
    /// ([`Attachment::unsettled`]: retry that attach, or detach, first).
    Busy,
    /// No such device in this context.
    NoSuchDevice(DeviceHandle),
    /// No such IOASID in this context.
    NoSuchIoasid(IoasidId),
    /// No such unit in the registry.
    NoSuchUnit(UnitId),
    /// The device (or PASID) is not attached.
    NotAttached(DeviceHandle),
    /// The device does not declare itself no-snoop capable.
    NotNoSnoopCapable(DeviceHandle),
    /// The range overlaps a reserved IOVA region, or a direct region mapped for an attached
    /// device (map and unmap refuse to touch it).
    Reserved(IovaRange),
    /// A direct region that is empty, not 4 KiB aligned, beyond 57 bits, or overlapping
    /// another region of the same device.
    BadDirectRegion(IovaRange),
    /// [`IoasidCtx::reserve_region`] was asked for a range the context already uses: what it
    /// overlaps (as iommufd refuses a reserved range over an existing area with
    /// `EADDRINUSE`). The range asked for is the caller's; not carried, to keep every
    /// `Result` of the layer (and the kernel stack) small.
    ReserveOverlaps(InUse),
    /// A fixed-capacity table is full.
    Capacity(&'static str),
    /// [`IoasidCtx::copy`]: the source range maps nothing at this IOVA (iommufd's `ENOENT`).
    NotMapped(crate::mem::Iova),
    /// [`IoasidCtx::iova_ranges`]: the caller's buffer holds fewer ranges than there are
    /// (iommufd's `EMSGSIZE`).
    BufferTooSmall {
        /// How many ranges there are.
        needed: usize,
    },
    /// The context's PASID quota is used up.
    Quota(u32),
    /// Every PASID is in use.
    PasidExhausted,
    /// The PASID is not held by this context.
    PasidNotOwned(Pasid),
    /// No free IOVA range of this size and alignment.
    NoIovaSpace {
        /// Size asked for.
        size: u64,
    },
    /// The page-table engine refused.
    PageTable(pgtable::Error),
    /// A unit refused.
    Iommu(iommu::Error),
    /// A unit did not confirm an invalidation: its flush failed with `error` (a wait that
    /// timed out, a queue error). Entries were removed from its domain but devices behind it
    /// may still reach the old pages through stale caches; what the call did is documented
    /// with each call. The invalidation is kept and reissued by the next call on the IOASID
    /// (map, unmap, read_and_clear_dirty, detach, free). The caller must not reuse the pages
    /// involved until an unmap of the range returns `Ok` (for an unmap: the unmap retried;
    /// for a detach or a free: the call retried), or a free of the IOASID returns `Ok` (it
    /// settles everything owed before it frees any domain; an unmap retried after it answers
    /// `NoSuchIoasid`, or reaches an IOASID allocated since under the same number); if the
    /// unit keeps failing, reset it.
    ///
    /// Also the undo of a refused map (or copy, or an attach's direct region) whose unmap in
    /// this unit failed with `error` and left some of the range mapped in its domain (the
    /// record keeps the range; [`IoasidCtx::audit`]: [`Error::Mismatch`] naming a unit that
    /// no longer maps it). Both can come from one undo on different units, and the error names
    /// only the first: so after a refused map, copy or attach the one safe rule is the first
    /// one's, an unmap of the range returning `Ok`; another call's `Ok` is not enough.
    InvalidationPending {
        /// The unit that owes the invalidation.
        unit: UnitId,
        /// How its flush failed.
        error: iommu::Error,
    },
    /// [`IoasidCtx::invalidate_user`]: the guest's batch was checked against every unit of the
    /// nested child and accepted whole, then unit `unit` failed to complete its part with
    /// `error` (a wait that timed out, a queue error): a unit fault, not a refusal. The units
    /// in `completed` had completed their part before; `unit` may have issued any of its part
    /// and none of it is known complete; the child's other units were given nothing. `done` is
    /// how many leading requests of the batch completed on every unit they were for (what
    /// iommufd reports in `entry_num` after a failure). Invalidations may be issued again: pass
    /// the batch again (or its requests from `done` on) once the unit answers; if it keeps
    /// failing, reset it.
    UserInvalidationIncomplete {
        /// The unit whose part failed.
        unit: UnitId,
        /// The units whose part completed: bit `n` for `UnitId(n)`.
        completed: u8,
        /// Leading requests of the batch complete on every unit they were for.
        done: u32,
        /// How the unit failed.
        error: iommu::Error,
    },
    /// [`IoasidCtx::map`], [`IoasidCtx::copy`]: the range reaches beyond the input address
    /// width of a hardware domain behind the IOASID (the narrowest such domain is named);
    /// [`IoasidCtx::attach`]: a direct region of the device does (`last` is the region's
    /// last IOVA).
    /// Refused before the record or any domain is touched: every mapping of an IOASID lies
    /// below every one of its domains' widths, so that no domain holds a page another cannot
    /// (which `unmap(0, UNMAP_ALL)`, cut at the narrowest width, would leave mapped: review
    /// 19b). iommufd refuses such a map too (the domain's aperture is reserved in the IOAS
    /// while the domain is in it). [`IoasidCtx::iova_ranges`] reports what may be mapped.
    BeyondInputWidth {
        /// The range's last IOVA.
        last: crate::mem::Iova,
        /// The domain's input address width, in bits.
        ias: u32,
        /// The domain's unit.
        unit: UnitId,
    },
    /// The IOASID is a nested child ([`IoasidCtx::alloc_nested`]): the guest owns its stage 1,
    /// it has no mappings of its own to map, unmap, reserve or read dirty state from, nor
    /// takes an attached device's direct regions.
    UserOwned(IoasidId),
    /// [`IoasidCtx::alloc_nested`] was given a parent not allocated with
    /// [`IoasidFlags::NEST_PARENT`] (or a nested child).
    NotNestParent(IoasidId),
    /// [`IoasidCtx::invalidate_user`] was given an IOASID that is not a nested child.
    NotNested(IoasidId),
    /// Dirty state was asked of an IOASID whose tracking is off
    /// ([`IoasidCtx::set_dirty_tracking`]): the hardware records nothing meanwhile.
    DirtyTrackingOff(IoasidId),
    /// A dirty bitmap's page size (log2) is below [`DIRTY_BITMAP_MIN_PAGE_LOG2`] or not below
    /// 64, or its range is empty, overflows or is not aligned to the page size.
    DirtyBitmapRange {
        /// Start of the range.
        iova: crate::mem::Iova,
        /// Its length.
        len: u64,
        /// Log2 of the page size.
        page_log2: u32,
    },
    /// A dirty bitmap has fewer words than its range needs.
    DirtyBitmapTooSmall {
        /// The words given.
        words: usize,
        /// The words needed.
        need: u64,
    },
    /// [`IoasidCtx::audit`] found a domain that does not translate what the record holds: a
    /// defect of this crate or of a unit. Report it; detach the IOASID's devices.
    Mismatch {
        /// The domain's unit.
        unit: UnitId,
        /// An IOVA where they differ.
        iova: crate::mem::Iova,
    },
    /// An I/O page fault could not be taken or answered (`fault.rs`): no queue, queue full,
    /// a device not attached here, or a cookie that is not outstanding or not this context's.
    Fault(crate::iopf::FaultError),
}

impl From<pgtable::Error> for Error {
    fn from(e: pgtable::Error) -> Self {
        Error::PageTable(e)
    }
}

impl From<iommu::Error> for Error {
    fn from(e: iommu::Error) -> Self {
        match e {
            iommu::Error::PageTable(p) => Error::PageTable(p),
            e => Error::Iommu(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Incompatible { device, reason } => {
                write!(f, "device {} cannot attach: {reason}", device.slot)
            }
            Error::Busy => write!(f, "busy"),
            Error::NoSuchDevice(d) => write!(f, "no device {}", d.slot),
            Error::NoSuchIoasid(i) => write!(f, "no IOASID {}", i.0),
            Error::NoSuchUnit(u) => write!(f, "no unit {}", u.0),
            Error::NotAttached(d) => write!(f, "device {} not attached", d.slot),
            Error::NotNoSnoopCapable(d) => write!(f, "device {} is not no-snoop capable", d.slot),
            Error::Reserved(r) => write!(f, "range overlaps reserved {}..{}", r.start, r.end),
            Error::BadDirectRegion(r) => write!(f, "bad direct region {}..{}", r.start, r.end),
            Error::ReserveOverlaps(with) => write!(f, "cannot reserve a range over {with}"),
            Error::Capacity(what) => write!(f, "too many {what}"),
            Error::NotMapped(iova) => write!(f, "nothing mapped at {iova}"),
            Error::BufferTooSmall { needed } => write!(f, "{needed} ranges do not fit"),
            Error::Quota(q) => write!(f, "PASID quota of {q} used up"),
            Error::PasidExhausted => write!(f, "no free PASID"),
            Error::PasidNotOwned(p) => write!(f, "PASID {p} not held by this context"),
            Error::NoIovaSpace { size } => write!(f, "no free IOVA range of {size:#x} bytes"),
            Error::PageTable(e) => write!(f, "page table: {e}"),
            Error::Iommu(e) => write!(f, "IOMMU: {e}"),
            Error::BeyondInputWidth { last, ias, unit } => write!(
                f,
                "range up to {last} beyond the {ias}-bit input width of unit {}'s domain",
                unit.0
            ),
            Error::UserOwned(i) => write!(
                f,
                "IOASID {} is a nested child: its stage 1 is the user's",
                i.0
            ),
            Error::NotNestParent(i) => write!(f, "IOASID {} is not a nest parent", i.0),
            Error::NotNested(i) => write!(f, "IOASID {} is not a nested child", i.0),
            Error::DirtyTrackingOff(i) => write!(f, "IOASID {}: dirty tracking is off", i.0),
            Error::DirtyBitmapRange {
                iova,
                len,
                page_log2,
            } => write!(
                f,
                "dirty bitmap of {len:#x} bytes at {iova} in 2^{page_log2}-byte pages: bad range"
            ),
            Error::DirtyBitmapTooSmall { words, need } => {
                write!(f, "dirty bitmap of {words} words, {need} needed")
            }
            Error::Mismatch { unit, iova } => {
                write!(f, "unit {}: domain and record differ at {iova}", unit.0)
            }
            Error::Fault(e) => write!(f, "I/O page fault: {e}"),
            Error::UserInvalidationIncomplete {
                unit,
                completed,
                done,
                error,
            } => write!(
                f,
                "unit {} failed its part of a user invalidation ({error}): units {completed:#b} \
                 completed theirs, the first {done} requests are complete",
                unit.0
            ),
            Error::InvalidationPending { unit, error } => {
                write!(
                    f,
                    "unit {} did not confirm an invalidation: {error}",
                    unit.0
                )
            }
        }
    }
}

/// Whether two half-open ranges intersect.
pub(crate) fn overlaps(a: &IovaRange, start: u64, end: u64) -> bool {
    a.start.get() < end && start < a.end.get()
}

/// Keeps `e` in `result` unless it holds an earlier error: `result.and(Err(e))` in place, with
/// no copy of either on the stack of a caller over the units' unmaps and flushes (the
/// kernel-stack bound of the C ABI).
pub(crate) fn keep_first(result: &mut Result<(), Error>, e: Error) {
    if result.is_ok() {
        *result = Err(e);
    }
}

/// Puts `e` into `result` in place of what it held (where a `?` returned), and `false`. A
/// failure's path, not inlined: the error is built here, not in the frame of a caller over
/// the units' maps and flushes (the kernel-stack bound of the C ABI).
#[cold]
#[inline(never)]
pub(crate) fn refuse_into(result: &mut Result<(), Error>, e: impl Into<Error>) -> bool {
    *result = Err(e.into());
    false
}

/// [`refuse_into`] of the error `e` builds, built in this frame: an error built by the
/// caller for [`refuse_into`] is a temporary in the caller's frame (48 bytes over whatever
/// that frame calls next).
#[cold]
#[inline(never)]
pub(crate) fn refuse_by(result: &mut Result<(), Error>, e: impl FnOnce() -> Error) -> bool {
    *result = Err(e());
    false
}

/// [`refuse_into`] of an error the caller holds in a `Result` of its own frame, read where it
/// lies: an error passed by value is copied into the caller's frame for the call.
#[cold]
#[inline(never)]
pub(crate) fn refuse_with<E: Copy + Into<Error>>(result: &mut Result<(), Error>, e: &E) -> bool {
    *result = Err((*e).into());
    false
}
