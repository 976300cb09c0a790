//! The `Iommu` trait: what the IOASID layer asks of one hardware unit, whatever its architecture.
//!
//! A unit (a VT-d remapping unit, an SMMUv3) owns hardware domains: a page table of a format the
//! unit chooses from a [`DomainConfig`], plus the tag the hardware caches translations under
//! (VT-d domain ID, SMMUv3 VMID/ASID). Devices are named by [`DeviceId`] (the PCI requester ID on
//! VT-d, the StreamID on SMMUv3) and optionally a [`Pasid`] (a SubstreamID on SMMUv3).
//!
//! The trait is object safe so that one IOASID can span units of different architectures.

use core::fmt;

use crate::iopf::{FaultDrain, FaultSequence, PageFault, PageResponse};
use crate::mem::{Iova, PageAllocator, PhysAddr};
use crate::pgtable::{
    self, DirtyRead, Format, Gather, IovaRange, Leaf, Mapping, PageTable, Prot, TablePages,
};

/// A device on a unit: PCI requester ID (bus << 8 | devfn) on VT-d, StreamID on SMMUv3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(pub u32);

/// A PCIe process address space ID (20 bits); an SMMUv3 SubstreamID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pasid(u32);

impl Pasid {
    /// Largest PASID width, in bits (PCIe).
    pub const BITS: u32 = 20;

    /// A PASID, or `None` if it does not fit in 20 bits.
    pub const fn new(raw: u32) -> Option<Self> {
        if raw >> Self::BITS == 0 {
            Some(Self(raw))
        } else {
            None
        }
    }

    /// The raw value.
    pub const fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Pasid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// A hardware domain of one unit, as the unit numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DomainHandle(pub u16);

/// Where a claim of [`Capabilities`] comes from: the unit's registers, a firmware declaration
/// the embedder passed on, or the embedder's own configuration. The name says which field,
/// table entry or setting, as its specification or this crate spells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// A register of the unit (`"IDR5.OAS"`, `"ECAP.SC"`).
    Register(&'static str),
    /// A firmware declaration (ACPI IORT or DMAR, device tree) handed over by the embedder
    /// (`"IORT CANWBS"`).
    Firmware(&'static str),
    /// The embedder's configuration of the unit (`"SmmuConfig::granule_log2"`).
    Embedder(&'static str),
}

impl Source {
    /// The field, declaration or setting.
    pub const fn name(self) -> &'static str {
        match self {
            Source::Register(n) | Source::Firmware(n) | Source::Embedder(n) => n,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Register(n) => write!(f, "register {n}"),
            Source::Firmware(n) => write!(f, "firmware {n}"),
            Source::Embedder(n) => write!(f, "embedder {n}"),
        }
    }
}

/// Where each claim of a [`Capabilities`] comes from, field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sources {
    /// Of [`Capabilities::ias`].
    pub ias: Source,
    /// Of [`Capabilities::oas`].
    pub oas: Source,
    /// Of [`Capabilities::page_sizes`].
    pub page_sizes: Source,
    /// Of [`Capabilities::pasid_bits`].
    pub pasid_bits: Source,
    /// Of [`Capabilities::enforce_snoop`].
    pub enforce_snoop: Source,
    /// Of [`Capabilities::dirty_tracking`].
    pub dirty_tracking: Source,
    /// Of [`Capabilities::nesting`].
    pub nesting: Source,
    /// Of [`Capabilities::coherent_walk`].
    pub coherent_walk: Source,
    /// Of [`Capabilities::coherent_dma`].
    pub coherent_dma: Source,
    /// Of [`Capabilities::supervisor`].
    pub supervisor: Source,
}

impl Sources {
    /// Every claim from the same source (for test doubles and models).
    pub const fn all(source: Source) -> Self {
        Self {
            ias: source,
            oas: source,
            page_sizes: source,
            pasid_bits: source,
            enforce_snoop: source,
            dirty_tracking: source,
            nesting: source,
            coherent_walk: source,
            coherent_dma: source,
            supervisor: source,
        }
    }
}

/// What a unit can do. Reported by [`Iommu::capabilities`] for the unit, and by
/// [`Iommu::device_capabilities`] for one of its devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Largest input (IOVA) width, in bits, a domain can have.
    pub ias: u32,
    /// Output (physical) address width, in bits.
    pub oas: u32,
    /// Bit `n` set: pages of `1 << n` bytes.
    pub page_sizes: u64,
    /// PASID width in bits (0: no PASID support).
    pub pasid_bits: u32,
    /// Every DMA of a domain can be made to snoop CPU caches, PCIe No-Snoop included (VT-d
    /// `ECAP.SC`; SMMUv3: only where the platform declares the device's accesses coherent
    /// whatever their attributes, ACPI IORT `CANWBS` -- no SMMU register can say so).
    pub enforce_snoop: bool,
    /// Hardware dirty tracking (VT-d `ECAP.SLADS`; SMMUv3 `IDR0.HTTU` = 2).
    pub dirty_tracking: bool,
    /// Nested translation (VT-d `ECAP.NEST`; SMMUv3 `IDR0.S1P` and `S2P`).
    pub nesting: bool,
    /// The table walker snoops CPU caches (VT-d `ECAP.C`, in scalable mode `ECAP.SMPWCS`;
    /// SMMUv3 `IDR0.COHACC`).
    pub coherent_walk: bool,
    /// The device's DMA is coherent with CPU caches (No-Snoop aside). SMMUv3: decides the
    /// memory type of stage-1 leaves (Normal Write-Back when coherent, Non-cacheable when not);
    /// declared by the platform (ACPI IORT `CCA`, device-tree `dma-coherent`, the embedder),
    /// else assumed from `IDR0.COHACC`. VT-d: always (x86 DMA snoops unless No-Snoop).
    pub coherent_dma: bool,
    /// Domains that honour supervisor (privileged) requests and map privileged-only pages
    /// ([`Prot::PRIV`]) can be built: VT-d first stage with the PASID entry's `SRE`
    /// (scalable mode, `ECAP.FLTS` and `ECAP.SRS`); SMMUv3 stage 1 (`IDR0.S1P`), whose
    /// `AP[1]` makes a page privileged-only. See [`DomainConfig::supervisor`].
    pub supervisor: bool,
    /// Where each of the claims above comes from.
    pub sources: Sources,
}

/// A capability a unit lacks, named when an operation needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// Cannot enforce snooping.
    SnoopControl,
    /// No dirty tracking.
    DirtyTracking,
    /// No nested translation.
    Nesting,
    /// No PASID support, or the PASID does not fit the unit's width.
    Pasid {
        /// PASID width of the unit, in bits.
        bits: u32,
    },
    /// The address space needs more input bits than the unit's domains have.
    AddressWidth {
        /// Bits needed.
        need: u32,
        /// Bits the unit offers.
        have: u32,
    },
    /// A page size in use is not supported by the unit.
    PageSize {
        /// Log2 of the page size.
        size_log2: u32,
    },
    /// A translation mode the unit was not set up for (for example first-stage only).
    Mode {
        /// Which mode.
        what: &'static str,
    },
    /// The platform did not declare a fact the operation relies on, one that no register of
    /// the unit reports (for SMMUv3 enforced snooping: ACPI IORT `CANWBS` for the device).
    NotDeclared {
        /// The declaration that is missing.
        what: &'static str,
    },
    /// The device's DMA coherency is not the one the domain was built for: an SMMUv3 stage-1
    /// domain gives its leaves the memory type of the device it was built for (Normal
    /// Write-Back Inner Shareable for coherent DMA, Normal Non-cacheable otherwise), and a
    /// device of the other kind cannot share it; a stage 2 forcing write-back (`STE.S2FWB`),
    /// and every domain nested on it, is for coherent DMA.
    DmaCoherency {
        /// Whether the domain's leaves are for coherent DMA.
        domain: bool,
        /// Whether the device's DMA is coherent.
        device: bool,
        /// Where the device's coherency comes from: the platform's declaration (IORT `CCA`, DT
        /// `dma-coherent`, the embedder) or, undeclared, `IDR0.COHACC`.
        source: Source,
    },
    /// Supervisor (privileged) requests cannot be honoured: VT-d without `ECAP.SRS`, scalable
    /// mode or a first stage (`ECAP.FLTS`); SMMUv3 without stage 1; or a second-stage domain
    /// was asked for (no stage-2 format has privilege levels).
    SupervisorRequests,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Missing::SnoopControl => write!(f, "the unit cannot enforce snooping"),
            Missing::DirtyTracking => write!(f, "the unit has no dirty tracking"),
            Missing::Nesting => write!(f, "the unit has no nested translation"),
            Missing::Pasid { bits } => write!(f, "the unit supports {bits}-bit PASIDs"),
            Missing::AddressWidth { need, have } => {
                write!(f, "{need} address bits needed, the unit offers {have}")
            }
            Missing::PageSize { size_log2 } => {
                write!(f, "2^{size_log2}-byte pages not supported")
            }
            Missing::Mode { what } => write!(f, "translation mode not available: {what}"),
            Missing::NotDeclared { what } => write!(f, "the platform did not declare {what}"),
            Missing::DmaCoherency {
                domain,
                device,
                source,
            } => {
                let kind = |c| if c { "coherent" } else { "non-coherent" };
                write!(
                    f,
                    "a domain for {} DMA cannot serve a device whose DMA is {} ({source})",
                    kind(domain),
                    kind(device)
                )
            }
            Missing::SupervisorRequests => {
                write!(f, "the unit cannot honour supervisor (privileged) requests")
            }
        }
    }
}

/// Errors of an [`Iommu`] operation. Each variant carries the offending value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The page-table engine refused.
    PageTable(pgtable::Error),
    /// The unit lacks a capability the operation needs.
    Unsupported(Missing),
    /// No memory for a table, queue or configuration page.
    NoMemory,
    /// The object is in use (a domain with devices attached, a present PASID entry, ...).
    Busy,
    /// Every domain ID / VMID / ASID is in use.
    NoDomainIds,
    /// No such domain.
    InvalidDomain(DomainHandle),
    /// The allocator gave a page for a structure the unit reads (VT-d root, context and PASID
    /// tables, invalidation queue; SMMUv3 stream and CD tables, queues) that does not lie
    /// below `2^width`, the widest address the unit can be given (VT-d: the host address width;
    /// SMMUv3: `IDR5.OAS`): a unit that ignores the address bits above would read another page.
    /// The page was given back and nothing changed: give the unit memory below `2^width`.
    /// (Page-table pages are refused the same way as
    /// [`pgtable::Error::TableOutOfRange`] inside [`Error::PageTable`].)
    TableOutOfRange {
        /// Which structure, in the spec's name.
        table: &'static str,
        /// Physical address of the page the allocator gave.
        pa: PhysAddr,
        /// The width the unit can address, in bits.
        width: u32,
    },
    /// The device ID is outside what the unit's tables cover.
    InvalidDevice(DeviceId),
    /// The PASID is outside what the unit or the device supports.
    InvalidPasid(Pasid),
    /// The device (and PASID) is not attached.
    NotAttached(DeviceId),
    /// Waiting on the hardware timed out (a register handshake, a queue that stopped, an
    /// invalidation not confirmed within the poll budget).
    ///
    /// What to do: the call stopped in a state the unit keeps safe (no page it may reach was
    /// freed, no tag reused) and that the driver's error documentation names (README, "Errors:
    /// what to do"): call it again, which completes it and issues every invalidation it lost.
    /// Do not reuse a page the call was to unmap until a retry returns `Ok`. If it persists,
    /// reset the unit, and leak on purpose whatever the unit may still reach.
    Timeout {
        /// What was waited for.
        what: &'static str,
    },
    /// The unit reported a condition of its own: an SMMUv3 CMD_SYNC whose completion MSI
    /// aborted, SMMUv3 service failure mode, a control or configuration register that did not
    /// take the value written, a VT-d register-based invalidation ignored, a unit in a state
    /// the call cannot work from.
    ///
    /// What to do: as for [`Error::Timeout`], retry (the partial state is documented and the
    /// retry completes it); if `what` names service failure mode, reset the unit, then enable it
    /// again; if it persists, reset the unit and leak what it may still reach.
    Hardware {
        /// What failed.
        what: &'static str,
        /// The raw error code or register value.
        code: u64,
    },
    /// The unit stopped at a command it was given and the driver's recovery did not get it
    /// through: VT-d `FSTS.IQE` (a descriptor rejected), `ITE` (a device-TLB invalidation the
    /// ATS device did not complete in time), `ICE` (one it completed wrongly); SMMUv3
    /// `CMDQ_CONS.ERR` (`CERROR_ILL` rejected, `CERROR_ABT` a fetch abort run again for the
    /// whole poll budget, `CERROR_ATC_INV_SYNC` an ATS invalidation before the call's CMD_SYNC
    /// timing out, even once); AMD-Vi ILLEGAL_COMMAND_ERROR / COMMAND_HARDWARE_ERROR (the command replaced)
    /// and IOTLB_INV_TIMEOUT (an ATS device did not complete INVALIDATE_IOTLB_PAGES). A condition of the unit, its queue or an ATS device, not of the call.
    ///
    /// What to do: as for [`Error::Timeout`]: retry (the call kept every page and tag the
    /// command covers, and the retry issues it again); if it persists, reset the unit, or turn
    /// the ATS device's ATS off (ITE, ICE, `CERROR_ATC_INV_SYNC`, IOTLB_INV_TIMEOUT), and leak what it may still
    /// reach. A persistent IQE / `CERROR_ILL` on a unit that works otherwise is a driver bug:
    /// report it.
    CommandError {
        /// What the unit reported.
        what: &'static str,
        /// VT-d: the invalidation queue's head (the offending descriptor's index); SMMUv3:
        /// `index << 16 | opcode << 8 | CERROR` of the offending command; AMD-Vi:
        /// `head << 8 | opcode` of the command the buffer stopped on, or for
        /// IOTLB_INV_TIMEOUT the ATS device's ID (`u32::MAX` when the log overflowed).
        code: u64,
    },
    /// A value the caller, or the embedder's page allocator, handed over that the unit's
    /// structures cannot express: a field out of range, a page misaligned or above the unit's
    /// output size, a queue or table size the unit does not support, a page the allocator
    /// cannot translate back, an invalidation batch larger than the queue.
    ///
    /// What to do: nothing changed, and a retry fails the same way: a bug in the call (or in
    /// the embedder's allocator or configuration), not a fault of the unit: do not reset it.
    InvalidArgument {
        /// The field or quantity, as the spec names it.
        what: &'static str,
        /// The offending value.
        value: u64,
    },
    /// An answer ([`Iommu::page_response`]) names no fault the unit handed out by
    /// [`Iommu::drain_page_faults`] and nobody answered yet: another stream or PASID, a STAG
    /// or page request group not outstanding, or one answered already. Nothing was sent (a
    /// stale `CMD_RESUME` could resume another transaction of the stream, a stray PRI response
    /// answer a group still in flight).
    NotOutstanding {
        /// The device the answer named.
        device: DeviceId,
        /// Its PASID.
        pasid: Option<Pasid>,
        /// The group or stall tag it named.
        kind: crate::iopf::FaultKind,
    },
    /// [`DeviceHints::ats`] for a device whose firmware forbids PCIe ATS
    /// ([`DeviceHints::ats_permission`] is [`AtsPermission::Forbidden`]: no DMAR ATSR or SATC
    /// allows it, its IORT root complex lacks the ATS attribute, its IVRS entry disables it).
    /// A translated request bypasses the unit's translation, so the attach is refused before
    /// anything is written (as Linux enables ATS only where firmware allows it).
    AtsForbidden(DeviceId),
    /// A user's (guest's) invalidation request ([`Iommu::invalidate_user`]) names something
    /// the user does not own or may not ask for: nothing of the batch was issued.
    Refused {
        /// Its index in the batch.
        index: u32,
        /// The request, as the user gave it.
        request: [u64; 2],
        /// Why.
        why: Refusal,
    },
}

impl Error {
    /// Whether the unit failed part-way through the call (a wait ran out, or the unit
    /// reported an error), as opposed to a refusal given before anything the hardware walks
    /// was written. After such an error from [`Iommu::attach`] the device may reach the new
    /// domain (its entry present) or, through cached entries, the old one, until a retry or a
    /// detach settles it: keep both domains, and everything they map, until then.
    pub const fn is_unit_fault(&self) -> bool {
        matches!(
            self,
            Error::Timeout { .. } | Error::Hardware { .. } | Error::CommandError { .. }
        )
    }
}

impl From<pgtable::Error> for Error {
    fn from(e: pgtable::Error) -> Self {
        match e {
            pgtable::Error::NoMemory => Error::NoMemory,
            e => Error::PageTable(e),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::PageTable(e) => write!(f, "page table: {e}"),
            Error::Unsupported(m) => write!(f, "unsupported: {m}"),
            Error::NoMemory => write!(f, "no memory"),
            Error::Busy => write!(f, "busy"),
            Error::NoDomainIds => write!(f, "no free domain ID"),
            Error::InvalidDomain(d) => write!(f, "no domain {}", d.0),
            Error::TableOutOfRange { table, pa, width } => write!(
                f,
                "{table} page at {:#x} is not below the unit's {width}-bit address width",
                pa.get()
            ),
            Error::InvalidDevice(d) => write!(f, "device {:#x} out of range", d.0),
            Error::InvalidPasid(p) => write!(f, "PASID {p} out of range"),
            Error::NotAttached(d) => write!(f, "device {:#x} not attached", d.0),
            Error::Timeout { what } => write!(f, "timed out waiting for {what}"),
            Error::Hardware { what, code } => write!(f, "hardware error: {what} ({code:#x})"),
            Error::CommandError { what, code } => write!(f, "command error: {what} ({code:#x})"),
            Error::InvalidArgument { what, value } => {
                write!(f, "invalid argument: {what} {value:#x}")
            }
            Error::NotOutstanding {
                device,
                pasid,
                kind,
            } => {
                write!(f, "no outstanding fault of device {:#x}", device.0)?;
                if let Some(p) = pasid {
                    write!(f, " PASID {p}")?;
                }
                match kind {
                    crate::iopf::FaultKind::PageRequest { group, .. } => {
                        write!(f, " in page request group {group}")
                    }
                    crate::iopf::FaultKind::Stall { stag } => write!(f, " with STAG {stag:#x}"),
                }
            }
            Error::AtsForbidden(d) => {
                write!(
                    f,
                    "device {:#x}: ATS enabled where firmware forbids it",
                    d.0
                )
            }
            Error::Refused {
                index,
                request: [w0, w1],
                why,
            } => write!(
                f,
                "user invalidation {index} ({w0:#018x} {w1:#018x}) refused: it names {why}"
            ),
        }
    }
}

/// A stage 1 the user (a guest) owns, nested over a parent domain (iommufd
/// `IOMMU_HWPT_ALLOC` with a parent and `data_type`): the unit points the device's
/// configuration at the guest's structures, which live in the guest's memory, at guest
/// physical addresses that the parent's second stage translates. The crate never reads,
/// writes or frees that memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UserStage1 {
    /// SMMUv3 (iommufd `IOMMU_HWPT_DATA_ARM_SMMUV3`): words 0 and 1 of the guest's STE, of
    /// which only V, Config (abort, bypass, stage-1 translate), S1Fmt, S1ContextPtr (an IPA),
    /// S1CDMax, S1DSS, S1CIR, S1COR and S1CSH may be set (Arm IHI 0070 G.b §5.2).
    SmmuV3 {
        /// STE words 0 and 1.
        ste: [u64; 2],
    },
    /// VT-d (iommufd `IOMMU_HWPT_DATA_VTD_S1`, `struct iommu_hwpt_vtd_s1`): the guest's
    /// first-stage table (Intel VT-d 4.1 §9.6 PASID entry: FSPTPTR, FSPM, SRE, WPE, EAFE),
    /// nested over the parent's second stage (PGTT = 011b).
    Vtd {
        /// [`VTD_S1_SRE`], [`VTD_S1_EAFE`], [`VTD_S1_WPE`] (iommufd `IOMMU_VTD_S1_*`); any
        /// other bit is refused.
        flags: u64,
        /// The guest's first-stage root table, a guest physical address (FSPTPTR), 4 KiB
        /// aligned and below the parent's input width.
        pgtbl_addr: u64,
        /// 48 (4-level paging, FSPM 00b) or 57 (5-level, FSPM 01b, needs `CAP.FL5LP`).
        addr_width: u32,
    },
}

/// [`UserStage1::Vtd`] flag: supervisor requests are honoured (PASID entry `SRE`, needs
/// `ECAP.SRS`; iommufd `IOMMU_VTD_S1_SRE`).
pub const VTD_S1_SRE: u64 = 1 << 0;
/// [`UserStage1::Vtd`] flag: extended accessed flag (`EAFE`, needs `ECAP.EAFS`; iommufd
/// `IOMMU_VTD_S1_EAFE`).
pub const VTD_S1_EAFE: u64 = 1 << 1;
/// [`UserStage1::Vtd`] flag: supervisor writes honour read-only pages (`WPE`; iommufd
/// `IOMMU_VTD_S1_WPE`).
pub const VTD_S1_WPE: u64 = 1 << 2;
/// [`VtdS1Invalidate::flags`]: only leaf entries changed, the paging-structure caches may
/// stay (the descriptors' `IH`; iommufd `IOMMU_VTD_INV_FLAGS_LEAF`).
pub const VTD_INV_FLAGS_LEAF: u32 = 1 << 0;

/// One VT-d guest invalidation (iommufd `struct iommu_hwpt_vtd_s1_invalidate`,
/// `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`): `npages` 4 KiB pages of the guest's first-stage input
/// at `addr`, for every device and PASID attached to the nested domain; `addr` 0 with
/// `npages` `u64::MAX` is everything. It names no device, PASID or domain ID: the unit puts
/// in the child's domain ID and the attached PASIDs itself.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VtdS1Invalidate {
    /// First address, 4 KiB aligned.
    pub addr: u64,
    /// Number of 4 KiB pages (`u64::MAX` with `addr` 0: everything).
    pub npages: u64,
    /// [`VTD_INV_FLAGS_LEAF`] or 0.
    pub flags: u32,
    /// Must be 0.
    pub reserved: u32,
}

/// Why a user's (a guest's) cache invalidation request was refused: each names what the
/// request asked for that the user does not own or that the format does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A command or descriptor type the user may not issue (SMMUv3: anything but
    /// TLBI_NH_VA/VAA/ASID/ALL, ATC_INV, CFGI_CD/CFGI_CD_ALL, stage-2 commands included), or
    /// one the unit lacks (SMMUv3: ATC_INV without `IDR0.ATS`).
    Type,
    /// A StreamID that names no device of the user attached to the domain.
    ForeignDevice,
    /// SMMUv3: a non-zero VMID (the guest has no stage 2; the host's VMID is put in).
    Vmid,
    /// A PASID not attached to the domain (no request format produces it today: iommufd's
    /// VT-d invalidation, [`VtdS1Invalidate`], names no PASID).
    ForeignPasid,
    /// Bits that are reserved, or that the format lets only the host set; SMMUv3: also a field
    /// value the spec reserves, or a field the unit's features leave RES0 (range fields
    /// without `IDR3.RIL`, ASID bits 15:8 without `IDR0.ASID16`, a SubstreamID beyond
    /// `IDR1.SSIDSIZE`), each CERROR_ILL on the host's shared command queue.
    ReservedBits,
    /// VT-d: an address not 4 KiB aligned, or `npages` `u64::MAX` (everything) with an
    /// address other than 0.
    Misaligned,
    /// VT-d: a range outside both canonical halves of the guest's first-stage input width (48
    /// or 57 bits): not below `2^width`, nor within the upper `2^(width - 1)` bytes.
    OutOfWidth,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Type => "a command type the user may not issue",
            Refusal::ForeignDevice => "a device the user does not own",
            Refusal::Vmid => "a VMID",
            Refusal::ForeignPasid => "a PASID not attached to the domain",
            Refusal::ReservedBits => "reserved bits",
            Refusal::Misaligned => "an address not 4 KiB aligned",
            Refusal::OutOfWidth => "a range beyond the stage-1 input width",
        })
    }
}

/// A user's name for one of its devices (iommufd vDEVICE `virt_id`: the StreamID or requester
/// ID the guest's vIOMMU knows it by), with the device's real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualId {
    /// The guest's ID.
    pub virt: u32,
    /// The device.
    pub device: DeviceId,
    /// The device is behind the unit given the list. A user's domain may have devices on
    /// several units ([`Iommu::invalidate_user`]): a request naming one behind another unit is
    /// that unit's, neither refused nor issued here.
    pub local: bool,
}

/// What [`Iommu::invalidate_user`] does with a batch it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UserPass {
    /// Checks every request and counts those for this unit; nothing reaches the hardware.
    /// The caller checks a batch on every unit before it issues any part of it.
    Check,
    /// Checks every request again, then issues those for this unit and waits for them.
    Issue,
}

/// Which translation a domain performs for its devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Stage {
    /// Let the unit choose (VT-d second stage, SMMUv3 stage 2 when it has one).
    #[default]
    Any,
    /// A VM's IPA/GPA space: VT-d second stage, SMMUv3 stage 2.
    Second,
    /// A process address space: VT-d first stage, SMMUv3 stage 1.
    First,
}

/// What a hardware domain must be: chosen once, from the IOASID's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DomainConfig {
    /// Input bits the domain needs at least (mappings already made reach this high).
    pub min_ias: u32,
    /// Force every DMA through the domain to snoop (VT-d SNP, SMMUv3 FWB write-back).
    pub enforce_snoop: bool,
    /// Hardware dirty tracking.
    pub dirty_tracking: bool,
    /// The domain will be the parent (second stage) of nested translation.
    pub nest_parent: bool,
    /// Which translation stage.
    pub stage: Stage,
    /// The device the domain is built for, when one is: a unit may take the domain's
    /// attributes from what the platform declared about it (SMMUv3: the memory type of
    /// stage-1 leaves follows the device's DMA coherency), and then refuses devices that
    /// differ.
    pub device: Option<DeviceId>,
    /// The domain honours supervisor (privileged) requests, and only such a domain maps
    /// [`Prot::PRIV`] pages: a first-stage (stage-1) table, the only kind with privilege
    /// levels (`Stage::Any` then means first stage). VT-d sets `SRE` (with `WPE`, so that
    /// supervisor writes honour read-only pages) in the domain's PASID entries, and needs
    /// `ECAP.SRS`; without it a supervisor request faults (`SRE` clear) and a `PRIV` map is
    /// refused (`pgtable::Error::UnsupportedProt`). SMMUv3 stage 1 honours the incoming
    /// privilege attribute (PCIe: a PASID TLP prefix with Privileged Mode Requested) whatever
    /// this says, and refuses `PRIV` maps into a domain built without it likewise. Only a PASID
    /// TLP prefix can ask for privileged mode on PCIe: requests without a PASID are user
    /// requests on both (VT-d: the scalable context entry's `RID_PRIV` stays 0).
    pub supervisor: bool,
    /// The domain will serve (device, PASID) attachments. With [`Stage::Any`], SMMUv3 builds
    /// it in stage 1 (a PASID selects a CD); VT-d (scalable mode) in the first stage, or in
    /// the second when `dirty_tracking` asks for it (VT-d tracks dirty state in second-stage
    /// tables only: the PASID entry's `PGTT` is then second-stage-only, §9.6, as Linux
    /// attaches dirty-tracked domains to PASIDs).
    pub pasid: bool,
    /// Granule of the domain's table, log2 bytes, when the caller needs one other than the
    /// unit's default (SMMUv3: 12, 14 or 16 among `IDR5.GRAN*`; VT-d: 12 only). A unit that
    /// cannot build it refuses with [`Missing::PageSize`].
    pub granule_log2: Option<u32>,
}

/// What the embedder knows about a device from PCI enumeration, declared when the device is
/// bound ([`crate::ioasid::IoasidCtx::bind_with`]) and handed to every attach of it
/// ([`Iommu::attach_device`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceHints {
    /// ATS is enabled on the device (its ATC caches translations): VT-d lets its context entry
    /// allow the device TLB (legacy `TT` = 01b, scalable `DTE`) and invalidates it on every
    /// flush (needs `ECAP.DT`); SMMUv3 sets `STE.EATS` for its stream at its first attach and
    /// issues `CMD_ATC_INV` on every flush of its domains (needs `IDR0.ATS`). Without the
    /// capability the attach is refused ([`Error::Unsupported`]). Set it only where firmware
    /// allows ATS, and pass the firmware's answer in
    /// [`ats_permission`](Self::ats_permission): only `Forbidden` refuses, and the default,
    /// `Undeclared`, refuses nothing (a translated request bypasses translation).
    pub ats: bool,
    /// The device's ATS Invalidate Queue Depth as its PCIe ATS Capability register reports
    /// it (bits 4:0: the invalidate requests it accepts before back-pressure; 0 means 32).
    /// Default 0: 32, the most the field can say. AMD-Vi programs the depth into `Maxpend`
    /// of every INVALIDATE_IOTLB_PAGES to the device (the invalidations the unit may keep
    /// outstanding at it); an ATS attach with a value above 31 (not the 5-bit field) is
    /// refused ([`Error::InvalidArgument`]). VT-d and SMMUv3 ignore it.
    pub ats_queue_depth: u8,
    /// The requester ID of the device's SR-IOV physical function when the device is a
    /// virtual function (the PF's SR-IOV capability): VT-d with `ECAP.DIT` names it in
    /// `PFSID` of every device-TLB invalidation. `None`: the device is its own PF.
    pub physical_function: Option<DeviceId>,
    /// The device's own PASID width (its PCIe PASID capability, Max PASID Width): `Some(0)`
    /// for a device that is not PASID-capable (or whose PASID capability is disabled),
    /// `None` when the embedder does not say (the unit's width is the only limit). A PASID
    /// attach beyond it is refused before the unit is asked.
    pub pasid_bits: Option<u32>,
    /// PRI (PCIe Page Request Interface) is enabled on the device: it may send page
    /// requests for translations that fault. VT-d sets the scalable-mode context entry's
    /// `PRE` for it (with `ECAP.PRS`); reported by `device_info`.
    pub pri: bool,
    /// The device's PRI capability has "PRG Response PASID Required" set (its PCIe PRI Status
    /// register): it expects the PASID on the answer to a page request that carried one.
    /// SMMUv3 (with `IDR0.PRI` and SubstreamIDs) sets `STE.PPAR` for its stream, so that the
    /// SMMU's own answers to the requests it discards in a PRI queue overflow carry the PASID
    /// when `IDR3.PPS` = 0 (IHI 0070 §5.2, §8.1, which expects PPAR to equal this flag); the
    /// stream must be idle to change it, as for `stall`. VT-d and AMD-Vi ignore it.
    pub pri_pasid_required: bool,
    /// The device tolerates stalled transactions: a platform fact, from firmware (ACPI IORT
    /// named component "DMA stall supported" / device tree `dma-can-stall`), never true of a
    /// PCIe device (IHI 0070 §3.12.1: PCIe streams must not stall). SMMUv3 then configures
    /// its stream to stall stage-1 faults (`CD.S` = 1, `STE.S1STALLD` = 0; stage 2:
    /// `STE.S2S`) and reports each stalled transaction as an I/O page fault answered by
    /// `CMD_RESUME`; every other stream has `STE.S1STALLD` = 1 (a guest's CD cannot make it
    /// stall). Refused ([`Error::Unsupported`]) on an SMMUv3 whose `IDR0.STALL_MODEL` is
    /// not 0b00, and with `ats` ([`Error::InvalidArgument`],
    /// [`smmuv3::STALL_WITH_ATS`](crate::smmuv3::STALL_WITH_ATS): `STE.S2S` with `STE.EATS`
    /// is ILLEGAL); VT-d and AMD-Vi have no stall model and ignore it.
    pub stall: bool,
    /// What platform firmware says about the device's use of ATS, from the firmware lookups
    /// (`Dmar::ats_permission`, `iort::platform::device_hints`, `Ivrs::ats_permission`). An
    /// attach with `ats` where it is [`AtsPermission::Forbidden`] is refused
    /// ([`Error::AtsForbidden`]): a translated request bypasses the unit's translation.
    /// Default [`AtsPermission::Undeclared`]: the embedder consulted no table.
    pub ats_permission: AtsPermission,
}

impl DeviceHints {
    /// Refuses [`ats`](Self::ats) where firmware forbids it
    /// ([`ats_permission`](Self::ats_permission)); every unit's
    /// [`Iommu::attach_device`] checks it first.
    ///
    /// # Errors
    /// [`Error::AtsForbidden`] carrying `device`.
    pub const fn check_ats(&self, device: DeviceId) -> Result<(), Error> {
        if self.ats && matches!(self.ats_permission, AtsPermission::Forbidden) {
            Err(Error::AtsForbidden(device))
        } else {
            Ok(())
        }
    }
}

/// What platform firmware says about a PCIe device's use of ATS (Address Translation
/// Services): whether the device may send translated requests, which the IOMMU lets through
/// untranslated. Each firmware table answers per device: the DMAR's ATSR and SATC (VT-d 4.1
/// §8.5, §8.8), the IORT root complex's `ATS Attribute` (DEN 0049 E.f), the IVRS's
/// extended device entries (AMD 48882 §5.2.2.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum AtsPermission {
    /// No table was consulted (the default): the embedder decides alone.
    #[default]
    Undeclared,
    /// Firmware allows ATS for the device (its root port is in an ATSR, or the segment's
    /// ATSR has ALL_PORTS; an integrated device; a root complex with the ATS attribute; an
    /// IVRS that does not disable it).
    Allowed,
    /// Firmware forbids it: the device must not use ATS.
    Forbidden,
    /// A DMAR SATC with ATC_REQUIRED names the device (VT-d 4.1 §8.8): it needs its ATC
    /// enabled to work (allowed, and expected). Linux enables ATS for it only in scalable
    /// mode: in legacy mode the hardware enables it, and the OS leaves the device's ATS off.
    Required,
}

impl AtsPermission {
    /// Whether firmware lets the device use ATS (not [`Forbidden`](Self::Forbidden)).
    pub const fn permits(self) -> bool {
        !matches!(self, Self::Forbidden)
    }
}

/// Which tables [`Iommu::reclaim`] looks at for being empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReclaimScope<'s> {
    /// Every table of the domain.
    All,
    /// The tables whose span contains one of these IOVAs. An unmap of `[start, end)` leaves
    /// tables empty only around `start` and `end - 1` (see
    /// [`PageTable::reclaim_at`]): naming those two IOVAs for every range unmapped since
    /// the last reclaim finds every table they emptied, one table per level each.
    Around(&'s [Iova]),
}

impl ReclaimScope<'_> {
    /// Unlinks the empty tables of `table` in this scope into `gather`; returns how many.
    ///
    /// # Errors
    /// [`pgtable::Error::UnknownTable`] for a corrupt table (what was unlinked before is in
    /// `gather`).
    pub fn reclaim<F: Format, A: PageAllocator>(
        self,
        table: &mut PageTable<F, A>,
        gather: &mut Gather,
    ) -> Result<usize, pgtable::Error> {
        match self {
            ReclaimScope::All => table.reclaim_empty(gather),
            ReclaimScope::Around(iovas) => {
                // IOVAs under one leaf table share their whole path from the root: the walk
                // around the first finds whatever the others would (the tables it left linked
                // are not empty, those it unlinked are gone), so it is made once. Per-page
                // unmaps note up to 2 * RECLAIM_BATCH ends in one leaf table (issue 18).
                let shift = table.geometry().level_shift(1);
                let mut n = 0;
                for (i, &iova) in iovas.iter().enumerate() {
                    let same = |o: &Iova| o.get() >> shift == iova.get() >> shift;
                    if iovas.get(..i).is_some_and(|before| before.iter().any(same)) {
                        continue;
                    }
                    n += table.reclaim_at(iova, gather)?;
                }
                Ok(n)
            }
        }
    }
}

/// A domain's table pages, as [`Iommu::table_pages`] counts them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DomainPages {
    /// The tables linked in the domain's page table, and the tables its leaves need.
    pub tables: TablePages,
    /// Tables a [`Iommu::reclaim`] unlinked whose invalidation failed: the domain keeps them
    /// (they are in use as far as the allocator knows) until a later `flush`, `reclaim` or
    /// `domain_free` of the domain completes an invalidation covering them.
    pub unflushed: usize,
}

/// One IOMMU unit as the IOASID layer drives it.
///
/// Every method takes `&self`: units lock internally. Map and unmap on one domain may run
/// concurrently on disjoint ranges (the page-table engine's contract); configuration changes
/// (domain allocation, attach, detach) serialise inside the unit.
pub trait Iommu: Sync {
    /// What the unit can do.
    fn capabilities(&self) -> Capabilities;

    /// What the unit can do for `device`: the unit's capabilities, narrowed or widened by what
    /// the platform declared about the device (SMMUv3: `CANWBS` and DMA coherency per
    /// StreamID). A device the unit's tables cannot hold gets the unit's capabilities.
    fn device_capabilities(&self, device: DeviceId) -> Capabilities {
        let _ = device;
        self.capabilities()
    }

    /// Why the unit would refuse to attach `device` to a domain built from `cfg`, for reasons
    /// it knows before building anything (SMMUv3: enforced snooping for a device the platform
    /// did not declare `CANWBS`), so that a caller can refuse without side effects. `Ok` does
    /// not promise that the attach succeeds.
    ///
    /// # Errors
    /// The capability or declaration that is missing.
    fn check_device(&self, device: DeviceId, cfg: &DomainConfig) -> Result<(), Missing> {
        let _ = (device, cfg);
        Ok(())
    }

    /// IOVA ranges no domain on this unit may map (VT-d: the interrupt window
    /// 0xFEE0_0000-0xFEEF_FFFF).
    fn reserved_regions(&self) -> &[IovaRange];

    /// Creates a domain: page table, tag, attributes. Fails with [`Error::Unsupported`] naming
    /// the capability the configuration needs and the unit lacks.
    ///
    /// # Errors
    /// [`Error::Unsupported`], [`Error::NoDomainIds`], [`Error::NoMemory`].
    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, Error>;

    /// The input width (bits) and page sizes of a domain.
    ///
    /// # Errors
    /// [`Error::InvalidDomain`].
    fn domain_geometry(&self, domain: DomainHandle) -> Result<(u32, u64), Error>;

    /// Limits the pages later [`map`](Self::map) calls write into `domain` to at most
    /// `2^max` bytes each ([`PageTable::set_max_leaf_log2`]: no larger block, no longer
    /// contiguous-hint run; granule-sized pages whatever `max` is below the granule); `None`
    /// lifts the limit. What is mapped already keeps its pages. iommufd's
    /// `IOMMU_OPTION_HUGE_PAGES` off is `Some(12)`.
    ///
    /// # Errors
    /// [`Error::InvalidDomain`]; this default, for units that cannot limit their pages:
    /// [`Error::Unsupported`] ([`Missing::Mode`] `"page-size limit"`).
    fn set_max_page_log2(&self, domain: DomainHandle, max: Option<u32>) -> Result<(), Error> {
        let _ = (domain, max);
        Err(Error::Unsupported(Missing::Mode {
            what: "page-size limit",
        }))
    }

    /// Destroys a domain with no device attached: its tag is invalidated and freed, its pages
    /// returned after the invalidation completed.
    ///
    /// On a hardware error ([`Error::Timeout`], [`Error::Hardware`]) nothing has changed: the
    /// handle, the tag and the table stay (a new domain never gets a tag whose invalidation
    /// did not complete); retry the free once the unit works again.
    ///
    /// # Errors
    /// [`Error::Busy`] while devices are attached (an attach or detach that failed half-way
    /// counts as attached); [`Error::InvalidDomain`]; hardware errors.
    fn domain_free(&self, domain: DomainHandle) -> Result<(), Error>;

    /// Maps a range in a domain (see [`crate::pgtable::PageTable::map`]), doing what the unit
    /// needs on map (VT-d caching mode, write-buffer flush).
    ///
    /// All or nothing: on `Err` nothing of the range is mapped. If the hardware step after
    /// writing the entries fails, the unit clears them again before returning (tables the map
    /// linked may stay, empty, until a [`reclaim`](Self::reclaim) or `domain_free`); the
    /// invalidation that clearing needs, if it fails too, stays owed by the domain and is
    /// issued by the next [`flush`](Self::flush) of the domain (an empty gather suffices).
    /// Until such a flush succeeds the device may still reach `pa` through a stale cached
    /// entry: after a hardware error, flush the domain before reusing the memory (or leak it).
    ///
    /// # Errors
    /// [`Error::PageTable`], [`Error::NoMemory`], [`Error::InvalidDomain`], hardware errors.
    fn map(
        &self,
        domain: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), Error>;

    /// Unmaps a range in a domain, recording what must be invalidated in `gather`. A gather
    /// is the domain's from its first unmap (or dirty read) until a flush of it empties it:
    /// flush it on this domain, never another.
    ///
    /// # Errors
    /// [`Error::PageTable`], [`Error::InvalidDomain`] (also, with nothing unmapped, for a
    /// `gather` holding what another domain's call put there). A table error met during the walk
    /// (`EntryUnstable`, `UnknownTable`) leaves what was unmapped before it unmapped and
    /// recorded in `gather` (see [`crate::pgtable::PageTable::unmap`]): flush it then too.
    fn unmap(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        gather: &mut Gather,
    ) -> Result<u64, Error>;

    /// Invalidates what `gather` recorded with the fewest commands, waits once for completion,
    /// then returns the gathered pages to the allocator.
    ///
    /// Every invalidation a failed flush of the domain did not complete is owed by the domain
    /// and issued again by its next flush, whatever that flush's gather holds (even nothing):
    /// a caller that retries a failed unmap and flush as a whole, with a new gather, still gets
    /// the lost invalidations. On `Ok` every range recorded in `gather` and every owed range
    /// is invalidated (IOTLB, paging-structure caches, device TLBs).
    ///
    /// # Errors
    /// [`Error::Timeout`], [`Error::Hardware`]; on error the pages stay in the gather (retry
    /// with it, or drop it and leak them: never free them yourself). [`Error::InvalidDomain`]
    /// for a gather another domain's unmap or dirty read filled: nothing is issued or freed
    /// (flush it on its own domain).
    fn flush(&self, domain: DomainHandle, gather: &mut Gather) -> Result<(), Error>;

    /// Unlinks the domain's tables that map nothing (those in `scope`), invalidates the
    /// unit's caches for their spans with one completion wait, and only then returns their
    /// pages to the allocator. Maps and unmaps of the domain wait for it: none can write into a
    /// table being unlinked, and none returns before the walk caches have forgotten a table
    /// that a new one replaces. Returns how many pages went back to the allocator (tables kept
    /// from an earlier failed invalidation included).
    ///
    /// # Errors
    /// [`Error::InvalidDomain`]; [`Error::PageTable`] for a corrupt table; [`Error::Timeout`],
    /// [`Error::Hardware`] from the invalidation: then the unlinked tables are never freed by
    /// this call; the domain holds them (see [`DomainPages::unflushed`]) and owes their
    /// invalidation as after a failed [`flush`](Self::flush): its next `flush` (even with an
    /// empty gather), `reclaim` or `domain_free` invalidates them again before freeing them.
    fn reclaim(&self, domain: DomainHandle, scope: ReclaimScope<'_>) -> Result<usize, Error>;

    /// Counts the domain's table pages: linked, needed by its leaves, and held after a failed
    /// invalidation.
    ///
    /// # Errors
    /// [`Error::InvalidDomain`]; [`Error::PageTable`] for a corrupt table.
    fn table_pages(&self, domain: DomainHandle) -> Result<DomainPages, Error>;

    /// The translation of `iova` in a domain.
    fn query(&self, domain: DomainHandle, iova: Iova) -> Option<Mapping>;

    /// Calls `f` for every leaf intersecting the range. `f` runs under the domain's lock: it
    /// must not call the unit (as [`read_dirty`](Self::read_dirty)'s sink).
    ///
    /// # Errors
    /// [`Error::PageTable`], [`Error::InvalidDomain`].
    fn for_each_mapping(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), Error>;

    /// Reports and cleans dirty leaves (see
    /// [`crate::pgtable::PageTable::read_and_clear_dirty`]): [`read_dirty`](Self::read_dirty)
    /// with [`DirtyRead::Clear`].
    ///
    /// # Errors
    /// As [`read_dirty`](Self::read_dirty).
    fn read_and_clear_dirty(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        sink: &mut dyn FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error> {
        self.read_dirty(domain, iova, len, DirtyRead::Clear, sink, gather)
    }

    /// Reports the dirty leaves of a range, and cleans those entirely inside it with
    /// [`DirtyRead::Clear`] (the cleaned ranges go into `gather`, to be flushed before the
    /// hardware reliably marks them again; a leaf straddling an edge stays dirty); see
    /// [`crate::pgtable::PageTable::read_dirty`]. `sink` runs under the domain's
    /// lock: it must not call the unit at all (the lock is writer-first: even a second read of
    /// it waits behind a writer, such as [`table_pages`](Self::table_pages) or
    /// [`set_dirty_tracking`](Self::set_dirty_tracking), that waits for this call).
    ///
    /// # Errors
    /// [`Error::PageTable`] (`NoDirtyTracking`, range errors), [`Error::InvalidDomain`] (also
    /// for a `gather` another domain's call filled, as [`unmap`](Self::unmap)).
    fn read_dirty(
        &self,
        domain: DomainHandle,
        iova: Iova,
        len: u64,
        how: DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
        gather: &mut Gather,
    ) -> Result<(), Error>;

    /// Turns hardware dirty tracking of a domain built with [`DomainConfig::dirty_tracking`]
    /// on or off (iommufd `IOMMU_HWPT_SET_DIRTY_TRACKING`); a domain starts with it on. Turning
    /// it on cleans every leaf first, so that only writes after the call are reported, and
    /// invalidates what the unit may have cached of the domain's leaves and of the
    /// configuration that enables the walker's updates; one completion wait. Calling it again
    /// with the same value does the whole work again (the retry after a hardware error).
    ///
    /// VT-d: `SSADE` in the PASID entry of every attachment of the (second-stage) domain,
    /// written in place, then the PASID cache of each, the domain's IOTLB and the device TLBs.
    /// SMMUv3: the table's new writable leaves are written clean (DBM set, write permission
    /// clear) while on and writable-dirty while off; `CD.HD` / `STE.S2HD` stay set for the
    /// domain's life, so that a leaf left clean still takes writes; turning on ends with a
    /// TLB invalidation of the domain's tag.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (`DirtyTracking`) for a domain built without it;
    /// [`Error::InvalidDomain`]; [`Error::PageTable`] (`EntryUnstable`); hardware errors: the
    /// leaves and entries then hold the new state but the unit may still cache the old one
    /// (the cleaned ranges are owed by the domain, as after a failed [`flush`](Self::flush)):
    /// retry.
    fn set_dirty_tracking(&self, domain: DomainHandle, on: bool) -> Result<(), Error>;

    /// Points a device (or a device's PASID) at a domain, replacing what it pointed at in the
    /// way that is hitless where the hardware allows, and invalidates the configuration caches.
    ///
    /// On a hardware error the device may be half-way: its old entry torn down, or the new one
    /// published without its invalidation confirmed. The unit then still counts it as attached
    /// (to the old domain, or to the new one), so that neither domain can be freed under it:
    /// retry the same attach to complete it, or [`detach`](Self::detach) to block the device.
    ///
    /// # Errors
    /// [`Error::InvalidDevice`], [`Error::InvalidPasid`], [`Error::Unsupported`],
    /// [`Error::NoMemory`], hardware errors.
    fn attach(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
    ) -> Result<(), Error>;

    /// As [`attach`](Self::attach), with what the embedder declared about the device. Units
    /// that use none of [`DeviceHints`] keep this default, which ignores them.
    ///
    /// # Errors
    /// As [`attach`](Self::attach); [`Error::AtsForbidden`] for `ats` where firmware forbids
    /// it ([`DeviceHints::check_ats`], every unit); VT-d: [`Error::Unsupported`] for `ats`
    /// without `ECAP.DT`, [`Error::InvalidDevice`] for a physical function that is no
    /// requester ID.
    fn attach_device(
        &self,
        device: DeviceId,
        pasid: Option<Pasid>,
        domain: DomainHandle,
        hints: &DeviceHints,
    ) -> Result<(), Error> {
        hints.check_ats(device)?;
        self.attach(device, pasid, domain)
    }

    /// Blocks a device's (or PASID's) DMA again and invalidates configuration caches and the
    /// IOTLB entries it may have used.
    ///
    /// On a hardware error the entry is already cleared (DMA is blocked) but its invalidation
    /// is not confirmed: the device stays attached in the unit's books until a retry of the
    /// detach completes.
    ///
    /// # Errors
    /// [`Error::NotAttached`], hardware errors.
    fn detach(&self, device: DeviceId, pasid: Option<Pasid>) -> Result<(), Error>;

    /// Creates a domain whose stage 1 the user owns ([`UserStage1`]), nested over `parent`, a
    /// domain allocated with [`DomainConfig::nest_parent`]. It has no table of its own: map,
    /// unmap, flush and query refuse it ([`Error::InvalidDomain`]); devices attach to it as to
    /// any domain, and the user's invalidations reach the unit through
    /// [`invalidate_user`](Self::invalidate_user). `parent` cannot be freed while it exists.
    ///
    /// # Errors
    /// [`Error::Unsupported`] (`Nesting`: the unit cannot nest, or `parent` is not a nest
    /// parent; the format of `stage1` is not the unit's); [`Error::InvalidArgument`] for a
    /// field the user may not set; [`Error::InvalidDomain`]; [`Error::NoDomainIds`].
    fn domain_alloc_user(
        &self,
        parent: DomainHandle,
        stage1: &UserStage1,
    ) -> Result<DomainHandle, Error> {
        let _ = (parent, stage1);
        Err(Error::Unsupported(Missing::Nesting))
    }

    /// Passes a user's cache invalidation requests for a domain of
    /// [`domain_alloc_user`](Self::domain_alloc_user) to the unit, each checked and
    /// rewritten with the host's tags and IDs (SMMUv3 commands: two 64-bit words each), then
    /// waits for their completion ([`UserPass::Issue`]), or only checks them
    /// ([`UserPass::Check`]). `ids` names the user's devices attached to the user's domains on
    /// every unit the batch goes to ([`VirtualId::local`]: behind this one): a request naming
    /// a device (SMMUv3 CFGI_CD(_ALL), ATC_INV) is this unit's if its device is local, another
    /// unit's (skipped here) if it is not, refused if `ids` does not name it; a request naming
    /// no device (SMMUv3 TLBI_NH_*, under the domain's tag) is every unit's. All or nothing:
    /// the first request refused stops the batch before anything is issued. Returns how many
    /// requests are this unit's (issued, or that would be).
    ///
    /// # Errors
    /// [`Error::Refused`] carrying the offending request; [`Error::InvalidDomain`]; hardware
    /// errors (then every request of this unit's may have been issued, none is known
    /// complete: retry).
    fn invalidate_user(
        &self,
        domain: DomainHandle,
        requests: &[[u64; 2]],
        ids: &[VirtualId],
        pass: UserPass,
    ) -> Result<usize, Error> {
        let _ = (domain, requests, ids, pass);
        Err(Error::Unsupported(Missing::Nesting))
    }

    /// Passes a user's VT-d cache invalidations ([`VtdS1Invalidate`], iommufd
    /// `IOMMU_HWPT_INVALIDATE` with `IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`) for a domain of
    /// [`domain_alloc_user`](Self::domain_alloc_user): every entry checked first, then
    /// PASID-based IOTLB invalidations with the domain's ID for each PASID attached to it and
    /// device-TLB invalidations for its ATS devices, and one wait. Returns how many entries
    /// were processed. [`Error::Refused`]'s `request` is the entry's `[addr, npages]`.
    ///
    /// # Errors
    /// [`Error::Refused`] (flags or reserved bits, misaligned, out of width): nothing issued;
    /// [`Error::InvalidDomain`]; hardware errors (then none is known complete: retry).
    fn invalidate_user_vtd(
        &self,
        domain: DomainHandle,
        requests: &[VtdS1Invalidate],
    ) -> Result<usize, Error> {
        let _ = (domain, requests);
        Err(Error::Unsupported(Missing::Nesting))
    }

    /// Moves the I/O page faults the unit queued since the last drain (VT-d page requests,
    /// SMMUv3 PRI queue entries and stall events: [`crate::iopf`]) into `out`, oldest first, at
    /// most `out.len()` and at most one queue's worth per call, and acknowledges an overflow
    /// once the queue is empty. A fault nobody keeps must still be answered
    /// ([`Iommu::page_response`]). (A slice, not a callback: no call in the drain leads back
    /// into the caller while the unit's queue lock is held.)
    ///
    /// # Errors
    /// [`Error::Unsupported`] if page faults were not enabled on the unit.
    fn drain_page_faults(&self, out: &mut [PageFault]) -> Result<FaultDrain, Error> {
        let _ = out;
        Err(Error::Unsupported(Missing::Mode {
            what: "I/O page faults (VT-d ECAP.PRS, SMMUv3 IDR0.PRI or stalls)",
        }))
    }

    /// The fence of a detach (or of a device's move to another domain): a position in the
    /// unit's numbering of its faults ([`PageFault::sequence`]) at or above every fault already
    /// raised, so that a fault the old attachment raised and a drain hands out later is known
    /// for what it is. VT-d: with `ECAP.PDS`, first an invalidation wait with Page-request
    /// Drain (`PD`), so that every page request the unit received before it is in the page
    /// request queue (rev. 4.1 §6.5.2.8); then the count of requests consumed plus those
    /// between `PQH` and `PQT`. SMMUv3: the PRI queue's entries consumed plus those before
    /// its `PROD`, and the event queue's records before its `PROD` (a stall's sequence is its
    /// record's position plus one), nothing waited for. Call it once the device's old
    /// attachment is gone from the unit (its detach, with the device-TLB invalidation that pushes the device's earlier
    /// requests ahead of it, completed). `None`: the unit hands out no faults (none enabled;
    /// AMD-Vi, which drives no PPR log). Bounded: a wait on the unit times out.
    ///
    /// # Errors
    /// Hardware errors of the wait ([`Error::Timeout`], a queue error): no fence is known.
    fn page_fault_fence(&self) -> Result<Option<FaultSequence>, Error> {
        Ok(None)
    }

    /// Sends `response` to the device (VT-d page group response descriptor, SMMUv3
    /// `CMD_PRI_RESP` or `CMD_RESUME`) and waits until the unit took it.
    ///
    /// # Errors
    /// [`Error::Unsupported`] if page faults were not enabled; hardware errors of the queue.
    fn page_response(&self, response: &PageResponse) -> Result<(), Error> {
        let _ = response;
        Err(Error::Unsupported(Missing::Mode {
            what: "I/O page faults (VT-d ECAP.PRS, SMMUv3 IDR0.PRI or stalls)",
        }))
    }

    /// Whether the unit still owes the device the answer `response` gives, after
    /// [`page_response`](Self::page_response) failed: `true` when nothing was sent (SMMUv3:
    /// the command never reached the command queue; VT-d: the page group response never
    /// reached the invalidation queue), so the answer may be sent again; `false` when it was
    /// taken whatever became of it (or was never owed). The default, `false`, is what a unit
    /// that answers no page faults says (AMD-Vi: no PPR log is driven, so no fault is handed
    /// out and none answered).
    fn page_response_owed(&self, response: &PageResponse) -> bool {
        let _ = response;
        false
    }

    /// The caller gives up an answer [`page_response`](Self::page_response) could not send
    /// (the IOASID layer's Invalid answer to a fault no context took, and a detach's answers
    /// to the faults its context still held): the unit stops owing it, so its record no
    /// longer holds a place of the device's share of outstanding faults (SMMUv3:
    /// `STREAM_QUOTA`). The device waits for its own time-out. The default does nothing:
    /// VT-d's record of unqueued answers is bounded and drops its oldest entry, and AMD-Vi
    /// answers no page faults.
    fn page_response_abandon(&self, response: &PageResponse) {
        let _ = response;
    }
}
