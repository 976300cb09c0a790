//! Status codes of the C ABI and their errno mapping.
//!
//! Every `ie_*` function returns an [`IeStatus`] as `int32_t`: 0 on success, a positive code
//! otherwise. ie_status_errno() turns a code into the negative errno a Linux module would
//! return for the same failure, so a C embedder can hand it straight to its callers.

use crate::ioasid;
use crate::iommu::{self, Missing};
use crate::iopf::FaultError;
use crate::pgtable;

/// The result of a C ABI call.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeStatus {
    /// Success.
    Ok = 0,
    /// An argument is invalid: a null pointer, a length of zero, a misaligned or overflowing
    /// range, an unknown flag, a PASID wider than 20 bits, or a value the unit's structures
    /// cannot express (a page from `IeEnv` misaligned or above the unit's output size, a queue
    /// size the unit lacks) (`-EINVAL`). A bug in the call: nothing changed, a retry fails
    /// the same way.
    InvalidArgument = 1,
    /// The device's unit cannot honour the IOASID's flags, or a mapping does not fit it
    /// (`-EINVAL`, what Linux returns for an incompatible domain attach).
    Incompatible = 2,
    /// The object is in use (`-EBUSY`).
    Busy = 3,
    /// The embedder's page allocator had no page (`-ENOMEM`).
    NoMemory = 4,
    /// No such device, IOASID or unit (`-ENOENT`).
    NotFound = 5,
    /// The device or PASID is not attached (`-ENOENT`).
    NotAttached = 6,
    /// The IOVA range is already mapped (`-EEXIST`).
    Exists = 7,
    /// The IOVA or physical range is outside what the address space covers (for an IOASID: a
    /// map or copy reaching beyond the input width of one of its hardware domains, refused
    /// with nothing changed, or an attach whose device's direct region does), or the
    /// allocator gave a table page the unit cannot address (above its output or host address
    /// width) (`-ERANGE`).
    OutOfRange = 8,
    /// The range overlaps a reserved IOVA region (`-EADDRINUSE`).
    Reserved = 9,
    /// A quota, a fixed-size table or the IOVA / PASID / domain-ID space is exhausted
    /// (`-ENOSPC`).
    NoSpace = 10,
    /// The caller lacks the proof an operation needs, e.g. a device that is not no-snoop
    /// capable asking for incoherent DMA, or a guest's invalidation names something the guest
    /// does not own; or an unmap would split a page a domain is configured never to split
    /// (`-EPERM`).
    NotPermitted = 11,
    /// The unit lacks a capability the operation needs (`-EOPNOTSUPP`).
    Unsupported = 12,
    /// A bounded wait on the hardware ran out (`-ETIMEDOUT`).
    Timeout = 13,
    /// The unit reported a condition of its own: service failure mode, an aborted completion
    /// MSI, a register write it did not take (`-EIO`). Retry; reset the unit if it persists.
    Hardware = 14,
    /// Fault records were lost before they could be read: the unit's fault recording
    /// registers or event queue were full (VT-d `FSTS.PFO`, SMMUv3 event queue overflow or
    /// `GERROR.EVENTQ_ABT_ERR`). The records the call reported are valid; the overflow is
    /// acknowledged, so the unit records again (`-EOVERFLOW`).
    FaultsLost = 15,
    /// The unit stopped at a command: VT-d IQE / ITE / ICE, SMMUv3 `CERROR_ILL` / `CERROR_ABT`
    /// / `CERROR_ATC_INV_SYNC` (`-EIO`). A condition of the unit, its queue or an ATS device,
    /// not of the call: retry (the call kept every page the command covers); if it persists,
    /// reset the unit or turn the device's ATS off.
    CommandError = 16,
    /// The caller's buffer is too small for the result; the call wrote how many entries it
    /// needs (`-EMSGSIZE`, as iommufd's `IOMMU_IOAS_IOVA_RANGES`).
    BufferTooSmall = 17,
    /// The object was destroyed (its handle is gone: never use or destroy it again), but
    /// something it held was given up rather than freed, because a unit did not complete the
    /// invalidation or tear-down that would make freeing it safe: a context's devices left
    /// attached (stranded), hardware domains left allocated, table pages held for
    /// invalidations never confirmed (ie_registry_leaked() counts them); a VT-d unit's table
    /// pointing at memory its allocator did not hand out. The memory is gone until reboot:
    /// keep what those objects mapped, and reset the unit (`-EIO`).
    Leaked = 18,
    /// A struct the caller passed with its size (`IeDeviceHints.size`) is larger than this
    /// library's and sets bytes beyond it: fields of a newer header that this library does
    /// not know and cannot honour, or a size above 4096 (`-E2BIG`, as Linux's extensible
    /// structs). Nothing changed; build against this library's header.
    TooBig = 19,
}

impl IeStatus {
    /// The negative errno for this status (0 for `IE_STATUS_OK`).
    pub const fn errno(self) -> i32 {
        // Linux errno values (asm-generic/errno-base.h, errno.h).
        -match self {
            IeStatus::Ok => 0,
            IeStatus::InvalidArgument | IeStatus::Incompatible => 22, // EINVAL
            IeStatus::Busy => 16,                                     // EBUSY
            IeStatus::NoMemory => 12,                                 // ENOMEM
            IeStatus::NotFound | IeStatus::NotAttached => 2,          // ENOENT
            IeStatus::Exists => 17,                                   // EEXIST
            IeStatus::OutOfRange => 34,                               // ERANGE
            IeStatus::Reserved => 98,                                 // EADDRINUSE
            IeStatus::NoSpace => 28,                                  // ENOSPC
            IeStatus::NotPermitted => 1,                              // EPERM
            IeStatus::Unsupported => 95,                              // EOPNOTSUPP
            IeStatus::Timeout => 110,                                 // ETIMEDOUT
            IeStatus::Hardware | IeStatus::CommandError | IeStatus::Leaked => 5, // EIO
            IeStatus::FaultsLost => 75,                               // EOVERFLOW
            IeStatus::BufferTooSmall => 90,                           // EMSGSIZE
            IeStatus::TooBig => 7,                                    // E2BIG
        }
    }
}

/// Which capability an `IE_STATUS_INCOMPATIBLE` attach lacked (`reason` out-parameters).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeMissing {
    /// Nothing is missing (the call did not fail with `Incompatible`).
    None = 0,
    /// The unit cannot enforce snooping (VT-d `ECAP.SC`).
    SnoopControl = 1,
    /// The unit has no dirty tracking.
    DirtyTracking = 2,
    /// The unit has no nested translation.
    Nesting = 3,
    /// The unit has no PASID support or its PASIDs are too narrow.
    Pasid = 4,
    /// Existing mappings need more address bits than the unit offers.
    AddressWidth = 5,
    /// A page size in use is not supported by the unit.
    PageSize = 6,
    /// A translation mode the unit was not set up for.
    Mode = 7,
    /// An existing mapping lies in a region the unit reserves.
    ReservedRegion = 8,
    /// An existing mapping is not aligned to the unit's smallest page.
    Alignment = 9,
    /// Only an IOASID allocated with the PASID flag may be attached to a PASID.
    NotPasidCapable = 10,
    /// The platform did not declare a fact the attach relies on: for an SMMUv3 device and an
    /// IOASID that enforces snooping, ACPI IORT `CANWBS` (`IeSmmuConfig.canwbs` or a
    /// declaration covering the StreamID).
    NotDeclared = 11,
    /// An existing mapping has permissions the unit's table format cannot express.
    Permissions = 12,
    /// An existing mapping reaches beyond the unit's output address width.
    OutputAddress = 13,
    /// The unit cannot honour supervisor requests (VT-d `ECAP.SRS`, scalable mode and a first
    /// stage; SMMUv3 stage 1) for an IOASID allocated with `IE_IOASID_FLAG_SUPERVISOR`.
    SupervisorRequests = 14,
    /// A direct region the device was bound with (RMRR, RMR) collides with a mapping, an IOVA
    /// reservation, a reserved region or another device's direct region in the IOASID.
    DirectRegion = 15,
    /// The device's DMA coherency (IORT `CCA`, DT `dma-coherent`, else `IDR0.COHACC`) is not
    /// the one the IOASID's SMMUv3 stage-1 domain was built for: its leaves' memory type would
    /// be wrong for the device. `ie_ctx_device_info` reports the device's coherency and its
    /// source (`IeDeviceInfo.coherent_dma`, `sources.coherent_dma`).
    DmaCoherency = 16,
    /// The device's own PASID width, declared at bind (`IeDeviceHints.pasid_bits`), does not
    /// hold the PASID; 0 bits: the device is not PASID-capable.
    DevicePasid = 17,
}

impl From<Missing> for IeMissing {
    fn from(m: Missing) -> Self {
        match m {
            Missing::SnoopControl => IeMissing::SnoopControl,
            Missing::DirtyTracking => IeMissing::DirtyTracking,
            Missing::Nesting => IeMissing::Nesting,
            Missing::Pasid { .. } => IeMissing::Pasid,
            Missing::AddressWidth { .. } => IeMissing::AddressWidth,
            Missing::PageSize { .. } => IeMissing::PageSize,
            Missing::Mode { .. } => IeMissing::Mode,
            Missing::NotDeclared { .. } => IeMissing::NotDeclared,
            Missing::DmaCoherency { .. } => IeMissing::DmaCoherency,
            Missing::SupervisorRequests => IeMissing::SupervisorRequests,
        }
    }
}

impl From<ioasid::Incompatibility> for IeMissing {
    fn from(i: ioasid::Incompatibility) -> Self {
        match i {
            ioasid::Incompatibility::Missing(m) => m.into(),
            ioasid::Incompatibility::ReservedRegionMapped(_) => IeMissing::ReservedRegion,
            ioasid::Incompatibility::Alignment { .. } => IeMissing::Alignment,
            ioasid::Incompatibility::NotPasidCapable => IeMissing::NotPasidCapable,
            ioasid::Incompatibility::DevicePasid { .. } => IeMissing::DevicePasid,
            ioasid::Incompatibility::DirectRegionCollides { .. } => IeMissing::DirectRegion,
            ioasid::Incompatibility::Permissions { .. } => IeMissing::Permissions,
            ioasid::Incompatibility::OutputAddress { .. } => IeMissing::OutputAddress,
        }
    }
}

impl From<pgtable::Error> for IeStatus {
    fn from(e: pgtable::Error) -> Self {
        use pgtable::Error as E;
        match e {
            E::NoMemory => IeStatus::NoMemory,
            E::Overlap { .. } => IeStatus::Exists,
            E::IovaOutOfRange { .. } | E::PaOutOfRange { .. } | E::TableOutOfRange { .. } => {
                IeStatus::OutOfRange
            }
            E::NoDirtyTracking | E::SplitUnsupported { .. } | E::UnsupportedProt { .. } => {
                IeStatus::Unsupported
            }
            // Not BUSY (which says "retry"): the same call is refused again.
            E::SplitRefused { .. } => IeStatus::NotPermitted,
            E::UnknownTable { .. } | E::EntryUnstable { .. } => IeStatus::Hardware,
            _ => IeStatus::InvalidArgument,
        }
    }
}

impl From<iommu::Error> for IeStatus {
    fn from(e: iommu::Error) -> Self {
        use iommu::Error as E;
        match e {
            E::PageTable(p) => p.into(),
            E::Unsupported(_) => IeStatus::Unsupported,
            E::NoMemory => IeStatus::NoMemory,
            E::Busy => IeStatus::Busy,
            E::NoDomainIds => IeStatus::NoSpace,
            E::InvalidDomain(_) => IeStatus::NotFound,
            E::TableOutOfRange { .. } => IeStatus::OutOfRange,
            E::InvalidDevice(_) | E::InvalidPasid(_) => IeStatus::InvalidArgument,
            E::NotAttached(_) => IeStatus::NotAttached,
            E::Timeout { .. } => IeStatus::Timeout,
            E::Hardware { .. } => IeStatus::Hardware,
            E::CommandError { .. } => IeStatus::CommandError,
            // A value the unit cannot express: a bug in the call, as a bad argument is.
            E::InvalidArgument { .. } => IeStatus::InvalidArgument,
            // A guest's invalidation naming what it does not own (the request is in
            // `ie_ctx_invalidate_user`'s out-parameters).
            E::Refused { .. } => IeStatus::NotPermitted,
            // ATS the platform's firmware forbids for the device (IeDeviceHints.ats_permission).
            E::AtsForbidden(_) => IeStatus::NotPermitted,
            // An answer for a fault the unit does not have outstanding (a stall it
            // terminated): "no such group" to ie_ctx_respond_fault's caller, as one the
            // context's queue does not hold (iommufd's -EINVAL).
            E::NotOutstanding { .. } => IeStatus::InvalidArgument,
        }
    }
}

impl From<ioasid::Error> for IeStatus {
    fn from(e: ioasid::Error) -> Self {
        use ioasid::Error as E;
        match e {
            E::Incompatible { .. } => IeStatus::Incompatible,
            E::Busy => IeStatus::Busy,
            E::NoSuchDevice(_) | E::NoSuchIoasid(_) | E::NoSuchUnit(_) => IeStatus::NotFound,
            E::NotAttached(_) => IeStatus::NotAttached,
            E::NotNoSnoopCapable(_) => IeStatus::NotPermitted,
            E::Reserved(_) | E::ReserveOverlaps(_) => IeStatus::Reserved,
            // Reading dirty state while tracking is off: Linux's VT-d driver answers -EINVAL too.
            E::BadDirectRegion(_)
            | E::DirtyTrackingOff(_)
            | E::DirtyBitmapRange { .. }
            | E::DirtyBitmapTooSmall { .. } => IeStatus::InvalidArgument,
            E::Capacity(_) | E::Quota(_) | E::PasidExhausted | E::NoIovaSpace { .. } => {
                IeStatus::NoSpace
            }
            E::PasidNotOwned(_) | E::NotMapped(_) => IeStatus::NotFound,
            // Nothing changed: the range is beyond a domain's width (`ie_ctx_iova_ranges`).
            E::BeyondInputWidth { .. } => IeStatus::OutOfRange,
            E::BufferTooSmall { .. } => IeStatus::BufferTooSmall,
            E::PageTable(p) => p.into(),
            E::Iommu(i) => i.into(),
            // The pages stay reachable: a C caller must be able to tell this from a refusal
            // that left nothing mapped. A failed flush is a timeout, a hardware or a command
            // error already; an undo's unmap that failed (`undo_left`) may carry any error, and
            // reads as the unit's fault.
            E::InvalidationPending { error: i, .. }
            | E::UserInvalidationIncomplete { error: i, .. } => match IeStatus::from(i) {
                s @ (IeStatus::Timeout | IeStatus::Hardware | IeStatus::CommandError) => s,
                _ => IeStatus::Hardware,
            },
            E::Mismatch { .. } => IeStatus::Hardware,
            E::UserOwned(_) | E::NotNestParent(_) | E::NotNested(_) => IeStatus::InvalidArgument,
            // iommufd answers a response to no outstanding group with -EINVAL.
            E::Fault(FaultError::NotOutstanding(_)) => IeStatus::InvalidArgument,
            E::Fault(FaultError::NotOwned(_)) => IeStatus::NotPermitted,
            E::Fault(FaultError::NoQueue) => IeStatus::NotFound,
            E::Fault(FaultError::QueueFull) => IeStatus::NoSpace,
            E::Fault(FaultError::NotRouted { .. }) => IeStatus::NotAttached,
        }
    }
}

/// The negative errno a Linux module would return for `status` (0 for success; `-EINVAL` for
/// a value that is no status).
#[no_mangle]
pub extern "C" fn ie_status_errno(status: i32) -> i32 {
    IeStatus::from_raw(status).map_or(-22 /* EINVAL */, IeStatus::errno)
}

impl IeStatus {
    /// The status with raw value `raw`.
    pub const fn from_raw(raw: i32) -> Option<Self> {
        const ALL: [IeStatus; 20] = [
            IeStatus::Ok,
            IeStatus::InvalidArgument,
            IeStatus::Incompatible,
            IeStatus::Busy,
            IeStatus::NoMemory,
            IeStatus::NotFound,
            IeStatus::NotAttached,
            IeStatus::Exists,
            IeStatus::OutOfRange,
            IeStatus::Reserved,
            IeStatus::NoSpace,
            IeStatus::NotPermitted,
            IeStatus::Unsupported,
            IeStatus::Timeout,
            IeStatus::Hardware,
            IeStatus::FaultsLost,
            IeStatus::CommandError,
            IeStatus::BufferTooSmall,
            IeStatus::Leaked,
            IeStatus::TooBig,
        ];
        if raw < 0 {
            return None;
        }
        let mut i = 0;
        while i < ALL.len() {
            if ALL[i] as i32 == raw {
                return Some(ALL[i]);
            }
            i += 1;
        }
        None
    }
}

/// `Result<(), IeStatus>` as the C ABI returns it.
pub(super) fn code(r: Result<(), IeStatus>) -> i32 {
    match r {
        Ok(()) => IeStatus::Ok as i32,
        Err(s) => s as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::{CommandErrorKind, SmmuError};

    /// A unit's command error and a value the unit cannot express reach the embedder as
    /// different statuses: "retry / reset the unit" against "a bug in the call" (issue 14).
    #[test]
    fn command_errors_and_caller_bugs_are_told_apart() {
        let cerror = iommu::Error::from(SmmuError::CommandError {
            index: 5,
            opcode: 0x46,
            kind: CommandErrorKind::AtcInvalidationSync,
        });
        assert!(
            matches!(cerror, iommu::Error::CommandError { code, .. } if code == 5 << 16 | 0x46 << 8 | 3)
        );
        assert!(cerror.is_unit_fault());
        let bug = iommu::Error::from(SmmuError::AddressTooWide {
            field: "STE.S2TTB",
            address: 1 << 50,
            bits: 48,
        });
        assert_eq!(
            bug,
            iommu::Error::InvalidArgument {
                what: "STE.S2TTB",
                value: 1 << 50
            }
        );
        assert!(!bug.is_unit_fault());
        let iqe = iommu::Error::from(crate::vtd::Error::QueueError {
            kind: crate::vtd::QueueErrorKind::InvalidQueueEntry,
            head: 7,
        });
        assert!(matches!(iqe, iommu::Error::CommandError { code: 7, .. }));
        let vtd_bug = iommu::Error::from(crate::vtd::Error::InvalidArgument {
            what: "address width",
            value: 9,
        });
        assert!(matches!(
            vtd_bug,
            iommu::Error::InvalidArgument { value: 9, .. }
        ));
        assert_eq!(IeStatus::from(cerror), IeStatus::CommandError);
        assert_eq!(IeStatus::from(iqe), IeStatus::CommandError);
        assert_eq!(IeStatus::from(bug), IeStatus::InvalidArgument);
        let sfm = iommu::Error::from(SmmuError::ServiceFailure { gerror: 1 << 8 });
        assert_eq!(IeStatus::from(sfm), IeStatus::Hardware);
        assert_eq!(IeStatus::CommandError.errno(), -5);
        assert_eq!(IeStatus::from_raw(16), Some(IeStatus::CommandError));
        assert_eq!(IeStatus::from_raw(17), Some(IeStatus::BufferTooSmall));
        assert_eq!(IeStatus::from_raw(18), Some(IeStatus::Leaked));
        assert_eq!(IeStatus::from_raw(19), Some(IeStatus::TooBig));
        assert_eq!(IeStatus::TooBig.errno(), -7);
        assert_eq!(IeStatus::from_raw(20), None);
    }

    /// A map beyond a domain's width (nothing changed) is OUT_OF_RANGE, not a unit fault
    /// that would tell C the pages may be reachable.
    #[test]
    fn a_map_beyond_a_domains_width_is_out_of_range() {
        let e = ioasid::Error::BeyondInputWidth {
            last: crate::mem::Iova::new(1 << 44),
            ias: 44,
            unit: ioasid::UnitId(1),
        };
        assert_eq!(IeStatus::from(e), IeStatus::OutOfRange);
        assert_eq!(IeStatus::OutOfRange.errno(), -34);
    }
}
