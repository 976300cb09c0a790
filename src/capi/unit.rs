//! Units over C: creation of VT-d and SMMUv3 units on the embedder's register window.

use core::ptr::{addr_of_mut, NonNull};

use crate::amdvi::{AmdViConfig, AmdViUnit};
use crate::iommu::{self, Iommu, Source};
use crate::smmuv3::regs::Gerror;
use crate::smmuv3::{
    DeviceFacts, DisabledTraffic, Platform, SmmuConfig, SmmuError, SmmuUnit, StreamId,
    StreamTableLayout, MAX_DECLARATIONS,
};
use crate::vtd::platform::{self, HostAddressWidth};
use crate::vtd::unit::{Mode, VtdConfig, VtdUnit};

use super::env::{CEnv, CRegs, IeEnv, IeRegs};
use super::object::{checked, handle, Obj, Tagged};
use super::status::{code, IeStatus};

/// One IOMMU unit (a VT-d remapping unit, an SMMUv3 or an AMD-Vi unit).
pub struct IeUnit {
    _opaque: [u8; 0],
}

/// The unit behind an [`IeUnit`] handle.
///
/// Each lives alone in a page sized for it, so the difference between variants costs at most
/// one page order, and there is no heap to box the larger one in.
///
/// `repr(u32)` fixes the layout (the Reference, "Primitive representation of enums with
/// fields"): each variant is laid out as the `repr(C)` struct of its discriminant and its unit
/// ([`VtdVariant`], [`SmmuVariant`]), so that a unit can be built straight into the variant.
// The variants are built in place through their layouts, never by naming them.
#[allow(clippy::large_enum_variant, dead_code)]
#[repr(u32)]
pub(super) enum UnitObj {
    Vtd(VtdUnit<CRegs, CEnv>) = VTD,
    Smmu(SmmuUnit<CRegs, CEnv>) = SMMU,
    AmdVi(AmdViUnit<CRegs, CEnv>) = AMDVI,
}

/// Discriminant of [`UnitObj::Vtd`].
const VTD: u32 = 0;
/// Discriminant of [`UnitObj::Smmu`].
const SMMU: u32 = 1;

/// Discriminant of [`UnitObj::AmdVi`].
const AMDVI: u32 = 2;

/// The layout of [`UnitObj::AmdVi`].
#[repr(C)]
struct AmdViVariant {
    tag: u32,
    unit: AmdViUnit<CRegs, CEnv>,
}

/// The layout of [`UnitObj::Vtd`].
#[repr(C)]
struct VtdVariant {
    tag: u32,
    unit: VtdUnit<CRegs, CEnv>,
}

/// The layout of [`UnitObj::Smmu`].
#[repr(C)]
struct SmmuVariant {
    tag: u32,
    unit: SmmuUnit<CRegs, CEnv>,
}

// A unit fits in one page of at most 1 MiB (`IeEnv::alloc_page`'s contract).
const _: () = assert!(super::object::page_log2_for::<Obj<UnitObj>>().is_some());

impl Tagged for UnitObj {
    const TAG: u64 = u64::from_le_bytes(*b"ie-unit\0");
}

impl UnitObj {
    /// The unit as the IOASID layer drives it.
    pub(super) fn iommu(&self) -> &dyn Iommu {
        match self {
            UnitObj::Vtd(u) => u,
            UnitObj::Smmu(u) => u,
            UnitObj::AmdVi(u) => u,
        }
    }
}

fn status<E: Into<iommu::Error>>(e: E) -> IeStatus {
    IeStatus::from(e.into())
}

/// An SMMUv3 creation error: a size the configuration asks for and the unit's ID registers do
/// not offer (`sid_bits` above `IDR1.SIDSIZE`, ...) is a configuration the unit cannot run,
/// `IE_STATUS_UNSUPPORTED` as documented, not a hardware error.
fn smmu_create_status(e: SmmuError) -> IeStatus {
    match e {
        SmmuError::SizeUnsupported { .. } => IeStatus::Unsupported,
        e => status(e),
    }
}

/// How to run a VT-d unit (ie_vtd_config_default() fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeVtdConfig {
    /// Scalable mode (PASID tables, first-stage domains); needs `ECAP.SMTS` and `ECAP.QI`.
    pub scalable: bool,
    /// Register polls before a wait on the hardware fails with `IE_STATUS_TIMEOUT`.
    pub poll_budget: u32,
    /// The invalidation queue is `2^queue_pages_log2` 4 KiB pages (0..=7).
    pub queue_pages_log2: u8,
    /// PASID width offered in scalable mode (capped by `ECAP.PSS`).
    pub pasid_bits: u32,
    /// The platform's host address width in bits (32..=52, at most the unit's `CAP.MGAW`); 0
    /// if unknown: then the narrower of `CAP.MGAW` and 36 bits (physical addresses at or above
    /// 64 GiB are refused). Pass the ACPI DMAR table's `Host Address Width` field plus one.
    pub host_address_width: u32,
    /// `host_address_width` comes from the ACPI DMAR table (reported as a firmware
    /// declaration); false: from the embedder's own knowledge (its CPU's `MAXPHYADDR`).
    pub host_address_width_from_dmar: bool,
}

impl From<IeVtdConfig> for VtdConfig {
    fn from(c: IeVtdConfig) -> Self {
        VtdConfig {
            mode: if c.scalable {
                Mode::Scalable
            } else {
                Mode::Legacy
            },
            poll_budget: c.poll_budget,
            // Not in the C configuration (yet): the default, never below `poll_budget`.
            device_tlb_poll_budget: VtdConfig::legacy()
                .device_tlb_poll_budget
                .max(c.poll_budget),
            queue_pages_log2: c.queue_pages_log2,
            pasid_bits: c.pasid_bits,
            host_address_width: (c.host_address_width != 0).then_some(HostAddressWidth {
                bits: c.host_address_width,
                source: if c.host_address_width_from_dmar {
                    platform::DMAR_HAW
                } else {
                    platform::EMBEDDER_HAW
                },
            }),
        }
    }
}

/// Fills `*out` with the default VT-d configuration (legacy mode).
///
/// # Safety
/// `out` is NULL, misaligned (both refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_vtd_config_default(out: *mut IeVtdConfig) -> i32 {
    let d = VtdConfig::legacy();
    // SAFETY: the C contract: `out` is NULL, misaligned (both refused) or writable.
    match unsafe { super::output(out) } {
        Ok(out) => {
            *out = IeVtdConfig {
                scalable: false,
                poll_budget: d.poll_budget,
                queue_pages_log2: d.queue_pages_log2,
                pasid_bits: d.pasid_bits,
                host_address_width: 0,
                host_address_width_from_dmar: false,
            };
            IeStatus::Ok as i32
        }
        Err(e) => e as i32,
    }
}

/// The stream table layout of an SMMUv3 unit.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeStreamTable {
    /// Two-level when the unit supports it and more than 256 StreamIDs are covered.
    Auto = 0,
    /// One array of STEs.
    Linear = 1,
    /// Two-level with 256-STE leaves allocated on demand.
    TwoLevel = 2,
}

/// How to run an SMMUv3 (ie_smmu_config_default() fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeSmmuConfig {
    /// Stream table layout: an `IeStreamTable` value. A `uint32_t` rather than the enum type
    /// so that any value a C caller stores is a valid Rust value; others are refused with
    /// `IE_STATUS_INVALID_ARGUMENT`.
    pub stream_table: u32,
    /// StreamIDs covered: `2^sid_bits`; 0 for the default (`min(IDR1.SIDSIZE, 16)`).
    pub sid_bits: u32,
    /// Register polls before a wait on the unit fails with `IE_STATUS_TIMEOUT`.
    pub poll_budget: u32,
    /// While translation is off (and after `ie_unit_disable`), let DMA through untranslated
    /// instead of aborting it.
    pub bypass_when_disabled: bool,
    /// Every device of the unit is declared `CANWBS` (ACPI IORT memory access flags, bit 2, of
    /// the root complex or named component nodes behind the SMMU): its accesses stay coherent
    /// whatever their attributes, PCIe No-Snoop included. Without it (for the device's
    /// StreamID) no IOASID that enforces snooping can be attached.
    pub canwbs: bool,
    /// DMA coherency of every device (IORT `CCA`, device tree `dma-coherent`): an
    /// `IeCoherentDma` value. Decides the memory type of stage-1 leaves.
    pub coherent_dma: u32,
    /// The facts above and in `declarations` come from firmware tables rather than from the
    /// embedder's own knowledge: ie_ctx_device_info() reports them so.
    pub from_firmware: bool,
    /// How many entries of `declarations` are used.
    pub n_declarations: u32,
    /// Facts for StreamID ranges, overriding `canwbs` and `coherent_dma` there (the first
    /// range covering a StreamID decides).
    pub declarations: [IeDeclaration; 8],
    /// Granule of the unit's domains, log2 bytes (12, 14 or 16: the kernel's page size, one
    /// the unit's `IDR5` offers); 0 for the default (4 KiB when the unit has it).
    pub granule_log2: u32,
    /// Take part in the CPUs' broadcast TLB maintenance (`CR2.PTM` = 0; needs `IDR0.BTM`).
    /// Off by default: the unit's VMIDs and ASIDs are its own.
    pub broadcast_tlb: bool,
    /// The SMMU's own access coherency (table walks, queues, MSIs) as firmware declares it
    /// (ACPI IORT SMMUv3 node `COHACC Override`, device tree `dma-coherent` on the SMMU node):
    /// an `IeCoherentDma` value, `IE_COHERENT_DMA_FROM_WALKER` (the default) to follow
    /// `IDR0.COHACC`. A declaration wins over the register either way: it decides whether the
    /// unit walks cacheable tables, whether table writes are cleaned, and whether MSI
    /// completion may be used. Reported as firmware's when `from_firmware` is set.
    pub coherent_access: u32,
}

/// DMA coherency of a device, as firmware declares it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IeCoherentDma {
    /// Not declared: as coherent as the SMMU's table walker (`IDR0.COHACC`).
    FromWalker = 0,
    /// Coherent (IORT `CCA` = 1, DT `dma-coherent`): stage-1 leaves are Write-Back Shareable.
    Coherent = 1,
    /// Not coherent: stage-1 leaves are Non-cacheable.
    NonCoherent = 2,
}

/// Platform facts for the StreamIDs `first_sid..=last_sid` (one IORT ID mapping).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IeDeclaration {
    /// First StreamID covered.
    pub first_sid: u32,
    /// Last StreamID covered (inclusive).
    pub last_sid: u32,
    /// As `IeSmmuConfig.canwbs`.
    pub canwbs: bool,
    /// As `IeSmmuConfig.coherent_dma`.
    pub coherent_dma: u32,
}

// The C array holds as many declarations as the driver takes.
const _: () = assert!(MAX_DECLARATIONS == 8);

fn coherent_dma(v: u32) -> Result<Option<bool>, IeStatus> {
    const FROM_WALKER: u32 = IeCoherentDma::FromWalker as u32;
    const COHERENT: u32 = IeCoherentDma::Coherent as u32;
    const NON_COHERENT: u32 = IeCoherentDma::NonCoherent as u32;
    match v {
        FROM_WALKER => Ok(None),
        COHERENT => Ok(Some(true)),
        NON_COHERENT => Ok(Some(false)),
        _ => Err(IeStatus::InvalidArgument),
    }
}

fn platform(c: &IeSmmuConfig) -> Result<Platform, IeStatus> {
    let source = if c.from_firmware {
        Source::Firmware("IORT / device tree, through IeSmmuConfig")
    } else {
        Source::Embedder("IeSmmuConfig")
    };
    let mut p = Platform::new(DeviceFacts {
        canwbs: c.canwbs,
        coherent_dma: coherent_dma(c.coherent_dma)?,
        source,
    });
    let n = usize::try_from(c.n_declarations).map_err(|_| IeStatus::InvalidArgument)?;
    for d in c.declarations.get(..n).ok_or(IeStatus::InvalidArgument)? {
        let facts = DeviceFacts {
            canwbs: d.canwbs,
            coherent_dma: coherent_dma(d.coherent_dma)?,
            source,
        };
        p = p
            .declare(StreamId(d.first_sid), StreamId(d.last_sid), facts)
            .map_err(|_| IeStatus::InvalidArgument)?;
    }
    Ok(p)
}

pub(crate) fn smmu_config(c: &IeSmmuConfig) -> Result<SmmuConfig, IeStatus> {
    const AUTO: u32 = IeStreamTable::Auto as u32;
    const LINEAR: u32 = IeStreamTable::Linear as u32;
    const TWO_LEVEL: u32 = IeStreamTable::TwoLevel as u32;
    Ok(SmmuConfig {
        stream_table: match c.stream_table {
            AUTO => StreamTableLayout::Auto,
            LINEAR => StreamTableLayout::Linear,
            TWO_LEVEL => StreamTableLayout::TwoLevel { split: 8 },
            _ => return Err(IeStatus::InvalidArgument),
        },
        sid_bits: (c.sid_bits != 0).then_some(c.sid_bits),
        poll_budget: c.poll_budget,
        when_disabled: if c.bypass_when_disabled {
            DisabledTraffic::Bypass
        } else {
            DisabledTraffic::Abort
        },
        platform: platform(c)?,
        granule_log2: (c.granule_log2 != 0).then_some(c.granule_log2),
        broadcast_tlb: c.broadcast_tlb,
        coherent_access: coherent_dma(c.coherent_access)?.map(|on| {
            let source = if c.from_firmware {
                Source::Firmware("IORT COHACC Override / DT dma-coherent, through IeSmmuConfig")
            } else {
                Source::Embedder("IeSmmuConfig::coherent_access")
            };
            (on, source)
        }),
        ..SmmuConfig::default()
    })
}

/// Fills `*out` with the default SMMUv3 configuration.
///
/// # Safety
/// `out` is NULL, misaligned (both refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_smmu_config_default(out: *mut IeSmmuConfig) -> i32 {
    let d = SmmuConfig::default();
    // SAFETY: the C contract: `out` is NULL, misaligned (both refused) or writable.
    match unsafe { super::output(out) } {
        Ok(out) => {
            *out = IeSmmuConfig {
                stream_table: IeStreamTable::Auto as u32,
                sid_bits: 0,
                poll_budget: d.poll_budget,
                bypass_when_disabled: false,
                canwbs: false,
                coherent_dma: IeCoherentDma::FromWalker as u32,
                from_firmware: false,
                n_declarations: 0,
                declarations: [IeDeclaration::default(); MAX_DECLARATIONS],
                granule_log2: 0,
                broadcast_tlb: false,
                coherent_access: IeCoherentDma::FromWalker as u32,
            };
            IeStatus::Ok as i32
        }
        Err(e) => e as i32,
    }
}

/// How to run an AMD-Vi unit (ie_amdvi_config_default() fills in the defaults).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct IeAmdViConfig {
    /// Register and memory polls before a wait fails with `IE_STATUS_TIMEOUT`.
    pub poll_budget: u32,
    /// Device IDs `0..device_ids` the device table covers (1..=65536: the ACPI IVRS device
    /// range; 65536 take 2 MiB of contiguous memory).
    pub device_ids: u32,
    /// The command buffer holds `2^command_len_log2` commands (8..=15).
    pub command_len_log2: u32,
    /// The event log holds `2^event_len_log2` events (8..=15).
    pub event_len_log2: u32,
    /// The system's physical address width, 32..=52 (the CPU's `MAXPHYADDR`).
    pub output_bits: u32,
    /// The unit may cache not-present entries (PCI capability header `NpCache`): every map
    /// invalidates its range.
    pub np_cache: bool,
}

impl From<IeAmdViConfig> for AmdViConfig {
    fn from(c: IeAmdViConfig) -> Self {
        AmdViConfig {
            poll_budget: c.poll_budget,
            device_ids: c.device_ids,
            command_len_log2: c.command_len_log2,
            event_len_log2: c.event_len_log2,
            output_bits: c.output_bits,
            np_cache: c.np_cache,
            // The C configuration has no IVinfo.VAsize limit: EFR.HATS decides.
            ..AmdViConfig::new()
        }
    }
}

/// Fills `*out` with the default AMD-Vi configuration (bus 0's 256 device IDs, 512-entry
/// command buffer and event log, 48-bit output, `np_cache` on).
///
/// # Safety
/// `out` is NULL, misaligned (both refused) or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_amdvi_config_default(out: *mut IeAmdViConfig) -> i32 {
    let d = AmdViConfig::new();
    // SAFETY: the C contract: `out` is NULL, misaligned (both refused) or writable.
    match unsafe { super::output(out) } {
        Ok(out) => {
            *out = IeAmdViConfig {
                poll_budget: d.poll_budget,
                device_ids: d.device_ids,
                command_len_log2: d.command_len_log2,
                event_len_log2: d.event_len_log2,
                output_bits: d.output_bits,
                np_cache: d.np_cache,
            };
            IeStatus::Ok as i32
        }
        Err(e) => e as i32,
    }
}

/// The window of an AMD-Vi unit: the registers up to the Status register's page (AMD IOMMU
/// specification 48882 rev. 3.10, §3.4; the IVHD gives the real size).
const AMDVI_WINDOW: usize = crate::amdvi::regs::WINDOW_LEN;

/// The smallest mapped window of a VT-d unit: one 4 KiB register page (VT-d spec rev. 4.1,
/// §10.4; the DRHD structure gives the real size).
const VTD_MIN_WINDOW: usize = 0x1000;
/// The window of an SMMUv3: register pages 0 and 1 (Arm IHI 0070 G.b, §6.1).
const SMMU_WINDOW: usize = 0x2_0000;

/// Validates the common arguments of unit creation.
///
/// # Safety
/// As for ie_vtd_create().
unsafe fn unit_args<'c, C>(
    env: *const IeEnv,
    regs: *const IeRegs,
    min_window: usize,
    config: *const C,
    out: *mut *mut IeUnit,
) -> Result<(CEnv, CRegs, &'c C, &'c mut *mut IeUnit), IeStatus> {
    // SAFETY: the caller's contract.
    let env = unsafe { CEnv::from_raw(env) }?;
    // SAFETY: the caller's contract.
    let regs = unsafe { CRegs::from_raw(regs) }?;
    // A short mapped window would not fault: accesses beyond it read all-ones and drop writes,
    // and the unit would run on made-up registers (an SMMUv3's event queue is in page 1).
    if matches!(&regs, CRegs::Mmio(m) if m.len() < min_window) {
        return Err(IeStatus::InvalidArgument);
    }
    // Borrowed, not copied: an `IeSmmuConfig` is large, and the caller's stays readable for
    // the call.
    // SAFETY: the caller's contract.
    let config = unsafe { super::input(config) }?;
    // SAFETY: the caller's contract.
    let out = unsafe { super::output(out) }?;
    Ok((env, regs, config, out))
}

/// What an accessor window passes its functions (a sim model's handle, for one), NULL for
/// mapped MMIO: noted with the unit.
fn window_ctx(regs: &CRegs) -> *mut core::ffi::c_void {
    match regs {
        CRegs::Ops { ctx, .. } => *ctx,
        CRegs::Mmio(_) => core::ptr::null_mut(),
    }
}

/// Builds a unit straight into its page with `init` (a unit is 13-18 KiB: not one copy on the
/// stack) and hands it out.
///
/// # Safety
/// `init` is given a writable, aligned, uninitialised `UnitObj` slot and, when it returns
/// `Ok`, has made it a whole `UnitObj`; when it fails it wrote nothing that needs a drop.
unsafe fn publish(
    env: CEnv,
    window: *mut core::ffi::c_void,
    init: impl FnOnce(NonNull<UnitObj>) -> Result<(), IeStatus>,
    out: &mut *mut IeUnit,
) -> Result<(), IeStatus> {
    let obj = Obj::create_with(env, |slot: *mut UnitObj| {
        // SAFETY: `create_with` hands out a slot in its page: never null.
        init(unsafe { NonNull::new_unchecked(slot) })
    })?;
    // A model's window stays in use until the unit is destroyed.
    #[cfg(feature = "sim")]
    super::sim::unit_created(obj.as_ptr() as usize, window);
    #[cfg(not(feature = "sim"))]
    let _ = window;
    *out = obj.as_ptr().cast();
    Ok(())
}

/// The register window a VT-d unit needs, from its CAP and ECAP (in the first page): the
/// fault recording registers (`CAP.FRO * 16`, `CAP.NFR + 1` of 16 bytes) and the IOTLB
/// registers (`ECAP.IRO * 16`, two of 8 bytes) may lie beyond it. Beyond a mapped window
/// reads are all-ones and writes dropped: fault records would never clear, IOTLB
/// invalidations never complete.
fn vtd_window_len(regs: &CRegs) -> usize {
    use crate::mmio::RegisterWindow;
    use crate::vtd::regs::{CAP_REG, ECAP_REG};
    let cap = crate::vtd::cap::Cap(regs.read64(CAP_REG));
    let ecap = crate::vtd::ecap::Ecap(regs.read64(ECAP_REG));
    let faults = cap.fault_recording_offset() + usize::from(cap.fault_recording_count()) * 16;
    let iotlb = ecap.iotlb_register_offset() + 16;
    VTD_MIN_WINDOW.max(faults).max(iotlb)
}

/// Creates a VT-d unit on `regs` (not yet enabled: see ie_unit_enable()). Reads CAP/ECAP
/// and refuses a configuration the unit cannot run (`IE_STATUS_UNSUPPORTED`), or a mapped
/// window shorter than 4 KiB, shorter than the registers CAP/ECAP place beyond the first page
/// (the fault recording registers at `CAP.FRO`, `CAP.NFR + 1` of them, the IOTLB registers at
/// `ECAP.IRO`: the DRHD's register set size covers them), or whose base is not 8-byte
/// aligned (`IE_STATUS_INVALID_ARGUMENT`).
///
/// # Safety
/// `env` is a valid `IeEnv`; `regs` a valid `IeRegs` whose window stays mapped while the unit
/// lives; `config` readable; `out` writable.
#[no_mangle]
pub unsafe extern "C" fn ie_vtd_create(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const IeVtdConfig,
    out: *mut *mut IeUnit,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let (env, regs, config, out) =
            unsafe { unit_args(env, regs, VTD_MIN_WINDOW, config, out) }?;
        if matches!(&regs, CRegs::Mmio(m) if m.len() < vtd_window_len(&regs)) {
            return Err(IeStatus::InvalidArgument);
        }
        let window = window_ctx(&regs);
        let init = |slot: NonNull<UnitObj>| {
            let slot = slot.cast::<VtdVariant>().as_ptr();
            // SAFETY: `slot` is a writable, aligned `UnitObj`, laid out as `VtdVariant` for
            // the `Vtd` variant (`repr(u32)`); the unit is built first and the discriminant
            // written only once it is whole, so a failure leaves nothing behind.
            unsafe {
                let unit = NonNull::new_unchecked(addr_of_mut!((*slot).unit));
                VtdUnit::init_in_place(unit, regs, env, (*config).into()).map_err(status)?;
                addr_of_mut!((*slot).tag).write(VTD);
            }
            Ok(())
        };
        // SAFETY: `init` keeps `publish`'s contract.
        unsafe { publish(env, window, init, out) }
    })())
}

/// Creates an SMMUv3 unit on `regs` (a 128 KiB window; not yet enabled: see
/// ie_unit_enable()). Reads the ID registers and refuses a configuration the unit cannot run
/// (`IE_STATUS_UNSUPPORTED`, e.g. `sid_bits` above `IDR1.SIDSIZE`) or an invalid one, or a
/// mapped window shorter than 128 KiB or misaligned (`IE_STATUS_INVALID_ARGUMENT`).
///
/// # Safety
/// As for ie_vtd_create().
#[no_mangle]
pub unsafe extern "C" fn ie_smmu_create(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const IeSmmuConfig,
    out: *mut *mut IeUnit,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let (env, regs, config, out) = unsafe { unit_args(env, regs, SMMU_WINDOW, config, out) }?;
        let window = window_ctx(&regs);
        let config = smmu_config(config)?;
        let config = &config;
        let init = |slot: NonNull<UnitObj>| {
            let slot = slot.cast::<SmmuVariant>().as_ptr();
            // SAFETY: as in ie_vtd_create(), for the `Smmu` variant.
            unsafe {
                let unit = NonNull::new_unchecked(addr_of_mut!((*slot).unit));
                SmmuUnit::init_in_place(unit, regs, env, config).map_err(smmu_create_status)?;
                addr_of_mut!((*slot).tag).write(SMMU);
            }
            Ok(())
        };
        // SAFETY: `init` keeps `publish`'s contract.
        unsafe { publish(env, window, init, out) }
    })())
}

/// Creates an AMD-Vi unit on `regs` (a 16 KiB window; not yet enabled: see
/// ie_unit_enable()). Reads EFR and refuses a configuration the unit cannot run or an invalid
/// one (`IE_STATUS_INVALID_ARGUMENT`, `IE_STATUS_UNSUPPORTED`), or a shorter or misaligned
/// mapped window.
///
/// # Safety
/// As for ie_vtd_create().
#[no_mangle]
pub unsafe extern "C" fn ie_amdvi_create(
    env: *const IeEnv,
    regs: *const IeRegs,
    config: *const IeAmdViConfig,
    out: *mut *mut IeUnit,
) -> i32 {
    code((|| {
        // SAFETY: the caller's contract.
        let (env, regs, config, out) = unsafe { unit_args(env, regs, AMDVI_WINDOW, config, out) }?;
        let window = window_ctx(&regs);
        let init = |slot: NonNull<UnitObj>| {
            let slot = slot.cast::<AmdViVariant>().as_ptr();
            // SAFETY: as in ie_vtd_create(), for the `AmdVi` variant.
            unsafe {
                let unit = NonNull::new_unchecked(addr_of_mut!((*slot).unit));
                AmdViUnit::init_in_place(unit, regs, env, (*config).into()).map_err(status)?;
                addr_of_mut!((*slot).tag).write(AMDVI);
            }
            Ok(())
        };
        // SAFETY: `init` keeps `publish`'s contract.
        unsafe { publish(env, window, init, out) }
    })())
}

pub(super) fn unit_obj<'h>(u: *mut IeUnit) -> Result<&'h Obj<UnitObj>, IeStatus> {
    // SAFETY: the C contract: NULL or a live unit handle.
    unsafe { handle(u.cast::<Obj<UnitObj>>()) }
}

/// Turns translation on: tables, queues, global invalidation, then the enable bit, in the
/// order the specification requires. SMMUv3: it clears SMMUEN first, which forgets every
/// outstanding page request group and stall (a late ie_ctx_respond_fault() to one is
/// refused, nothing sent); re-initialise the endpoints' PRI (PCIe Page Request Control:
/// Reset, then Enable) before calling it, as SMMUv3 §6.3.9.6 requires.
///
/// # Safety
/// `unit` is a live unit handle.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_enable(unit: *mut IeUnit) -> i32 {
    code((|| match &unit_obj(unit)?.value {
        UnitObj::Vtd(u) => u.enable().map_err(status),
        UnitObj::Smmu(u) => u.enable().map_err(status),
        UnitObj::AmdVi(u) => u.enable().map_err(status),
    })())
}

/// Turns translation off. What DMA meets then depends on the unit:
/// - VT-d (`GCMD.TE` cleared) and AMD-Vi (`Control.IommuEn` cleared): nothing is translated
///   or checked any more; every device's DMA reaches the physical address it names (VT-d:
///   except the protected memory regions, if the platform set them). The invalidation queue
///   (command buffer, event log) is stopped and its pages returned; tables, domains and
///   attachments stay for ie_unit_enable().
/// - SMMUv3 (`CR0.SMMUEN` cleared): DMA aborts (`GBPA.ABORT`), or with
///   `IeSmmuConfig::bypass_when_disabled` passes untranslated. Clearing SMMUEN forgets every
///   outstanding page request group and stall (a late ie_ctx_respond_fault() to one is
///   refused, nothing sent; the next dispatch drops the contexts' partial groups of the
///   unit); re-initialise the endpoints' PRI (PCIe Page Request Control: Reset, then Enable)
///   before ie_unit_enable(), as SMMUv3 §6.3.9.6 requires.
///
/// `IE_STATUS_BUSY`, nothing changed, where disabling would let DMA through untranslated
/// (VT-d, AMD-Vi, SMMUv3 with `bypass_when_disabled`) while a registry holds the unit (or an
/// ie_registry_create() naming it, or another ie_unit_disable() of it, is running): the
/// registry's devices would reach all of memory. Destroy the contexts and the registry first
/// (a context that fails to be destroyed may still have devices attached: leave the unit
/// enabled). ie_registry_create() returns `IE_STATUS_BUSY` while such a disable runs.
///
/// # Safety
/// `unit` is a live unit handle.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_disable(unit: *mut IeUnit) -> i32 {
    code((|| {
        let obj = unit_obj(unit)?;
        let opens = match &obj.value {
            UnitObj::Vtd(_) | UnitObj::AmdVi(_) => true,
            UnitObj::Smmu(u) => matches!(u.cfg.when_disabled, DisabledTraffic::Bypass),
        };
        // The sole user for the call: no registry holds the unit, and none takes it meanwhile.
        if opens && !obj.acquire_sole() {
            return Err(IeStatus::Busy);
        }
        let r = match &obj.value {
            UnitObj::Vtd(u) => u.disable().map_err(status),
            UnitObj::Smmu(u) => u.disable().map_err(status),
            UnitObj::AmdVi(u) => u.disable().map_err(status),
        };
        if opens {
            obj.release();
        }
        r
    })())
}

/// Reports and clears at most `max` pending fault records (VT-d: fault recording registers,
/// SMMUv3 and AMD-Vi: events), the rest left pending for the next call, and writes how many
/// were seen to `*count` (if not NULL). For
/// the embedder's fault handling: a threaded interrupt handler, a bottom half or a poll loop,
/// not a hard interrupt handler that may interrupt another call into the library.
///
/// The status says in what state the records are (`*count` is written in every case but a
/// bad argument; the records counted are cleared or consumed):
/// - `IE_STATUS_OK`: every pending record was seen (SMMUv3, AMD-Vi: or `max` of them; call
///   again while `*count` is `max`).
/// - `IE_STATUS_FAULTS_LOST`: faults were lost before this call (VT-d `FSTS.PFO`: every
///   fault recording register was full; SMMUv3: the event queue overflowed, or
///   `GERROR.EVENTQ_ABT_ERR`: the unit could not write a record; AMD-Vi: the event log
///   overflowed, `Status.EventOverflow`). The overflow is
///   acknowledged and the unit records again; what was lost cannot be read back.
/// - `IE_STATUS_TIMEOUT` (AMD-Vi): the event log overflowed (faults were lost) and its restart
///   did not see `EventLogRun` clear; the records counted were consumed. Call again: the next
///   call retries the restart while the overflow is pending.
/// - `IE_STATUS_BUSY` (VT-d): records are still pending after the drain (`FSTS.PPF`: more
///   than `max`, faults arrived during it, or a record did not clear): call again. The unit
///   raises no new fault event while records are pending.
/// - `IE_STATUS_HARDWARE` (SMMUv3): the unit is in service failure mode (`GERROR.SFM_ERR`):
///   it translates nothing until reset and re-enabled; the records counted were read before.
///
/// # Safety
/// `unit` is a live unit handle; `count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_drain_faults(unit: *mut IeUnit, max: u32, count: *mut u32) -> i32 {
    code((|| {
        // SAFETY: the C contract: NULL, misaligned (refused) or writable.
        let count = unsafe { super::optional_output(count) }?;
        let mut n = 0u32;
        let state = read_records(unit_obj(unit)?, max, |_| n = n.saturating_add(1));
        if let Some(c) = count {
            *c = n;
        }
        state
    })())
}

/// Drains at most `max` of `unit`'s fault records or events into `report`, and
/// turns what the drain saw into the status ie_unit_drain_faults() documents.
fn read_records(
    unit: &Obj<UnitObj>,
    max: u32,
    mut report: impl FnMut(IeFault),
) -> Result<(), IeStatus> {
    match &unit.value {
        UnitObj::Vtd(u) => {
            let summary = u.drain_faults_at_most(max as usize, |_, r| report(IeFault::vtd(&r)));
            if summary.overflowed {
                Err(IeStatus::FaultsLost)
            } else if summary.still_pending {
                Err(IeStatus::Busy)
            } else {
                Ok(())
            }
        }
        UnitObj::Smmu(u) => {
            let r = u.handle_events(max as usize, |e| report(IeFault::smmu(&e)));
            if r.gerror.contains(Gerror::SFM_ERR) {
                Err(IeStatus::Hardware)
            } else if r.events.overflowed || r.gerror.contains(Gerror::EVENTQ_ABT_ERR) {
                Err(IeStatus::FaultsLost)
            } else {
                Ok(())
            }
        }
        UnitObj::AmdVi(u) => {
            let summary = u
                .drain_events_at_most(max as usize, |e| report(IeFault::amdvi(&e)))
                .map_err(status)?;
            // An entry skipped unwritten is not lost: a later drain reports it when its
            // write lands (`DrainSummary::late`).
            if summary.overflow {
                Err(IeStatus::FaultsLost)
            } else {
                Ok(())
            }
        }
    }
}

/// One decoded fault, as ie_unit_read_faults() reports it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IeFault {
    /// The requester: PCI RID (VT-d `SID`), StreamID (SMMUv3) or DeviceID (AMD-Vi).
    pub device_id: u32,
    /// VT-d: the fault reason (`FR`, VT-d 4.1 §7 tables); SMMUv3: the event type (§7.3);
    /// AMD-Vi: the event code (document 48882 §2.5: 2 IO_PAGE_FAULT, 8
    /// INVALID_DEVICE_REQUEST, ...).
    pub reason: u32,
    /// VT-d: the faulting page (`FI`, 4 KiB aligned); SMMUv3: the input address (0 when the
    /// event has none); AMD-Vi: the event's address (the command's for the command errors and
    /// IOTLB_INV_TIMEOUT).
    pub address: u64,
    /// The faulting request was a write (VT-d `T1` = 0; SMMUv3 `RnW` = 0; AMD-Vi `RW`).
    pub write: bool,
    /// `pasid` is valid (VT-d `PP`; SMMUv3 `SSV`; AMD-Vi `GN`).
    pub pasid_valid: bool,
    /// The request's PASID / SubstreamID.
    pub pasid: u32,
}

impl IeFault {
    fn vtd(r: &crate::vtd::fault::FaultRecord) -> Self {
        Self {
            device_id: u32::from(r.source_id().get()),
            reason: u32::from(r.reason_code()),
            address: r.fault_info(),
            write: r.request_kind() == crate::vtd::fault::RequestKind::Write,
            pasid_valid: r.pasid().is_some(),
            pasid: r.pasid().map_or(0, |p| p.get()),
        }
    }

    fn amdvi(e: &crate::amdvi::event::Event) -> Self {
        let gn = e.flags.contains(crate::amdvi::event::FaultFlags::GN);
        Self {
            device_id: u32::from(e.device_id),
            reason: u32::from(e.code.code()),
            address: e.address,
            write: e.is_write(),
            pasid_valid: gn,
            pasid: if gn { e.domain_or_pasid } else { 0 },
        }
    }

    fn smmu(e: &crate::smmuv3::event::Event) -> Self {
        Self {
            device_id: e.stream_id.0,
            reason: u32::from(match e.event_type {
                Ok(t) => t as u8,
                Err(raw) => raw,
            }),
            address: e.input_address.unwrap_or(0),
            write: !e.flags.contains(crate::smmuv3::event::EventFlags::RNW),
            pasid_valid: e.substream_id.is_some(),
            pasid: e.substream_id.unwrap_or(0),
        }
    }
}

/// Reports and clears pending faults like ie_unit_drain_faults() and decodes them: the first
/// `max` go to `out[0..max]` (`out` may be NULL with `max` = 0, which reads none), `*count` (if not NULL) gets
/// how many were seen (at most `max` records are cleared or consumed, the rest stay pending,
/// queued or logged for the next call). The status and the state of the
/// records are those of ie_unit_drain_faults() (`IE_STATUS_FAULTS_LOST`, `IE_STATUS_BUSY`,
/// `IE_STATUS_HARDWARE`, `IE_STATUS_TIMEOUT`); `out` and `*count` are written in those cases
/// too. On VT-d the
/// records come in fault recording register order from `FSTS.FRI`, not necessarily in fault
/// order: after a partial read FRI stays frozen while records are pending and the unit records
/// new faults into the freed registers, wrapping (SMMUv3 and AMD-Vi: oldest first).
///
/// # Safety
/// `unit` is a live unit handle; `out` is NULL or points to `max` writable `IeFault`s; `count`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_read_faults(
    unit: *mut IeUnit,
    out: *mut IeFault,
    max: u32,
    count: *mut u32,
) -> i32 {
    code((|| {
        // SAFETY: the C contract: `out` is NULL (with `max` 0), misaligned (refused) or holds
        // `max` writable records; `count` is NULL, misaligned (refused) or writable.
        let (out, count) = unsafe {
            (
                super::output_slice(out, max as usize)?,
                super::optional_output(count)?,
            )
        };
        let mut n = 0u32;
        let put = |f: IeFault| {
            if let Some(slot) = out.get_mut(n as usize) {
                *slot = f;
            }
            n = n.saturating_add(1);
        };
        let state = read_records(unit_obj(unit)?, max, put);
        if let Some(c) = count {
            *c = n;
        }
        state
    })())
}

/// Destroys a disabled unit that no registry uses and returns every page it holds
/// (`IE_STATUS_BUSY` while it is enabled or in a registry: the hardware may still walk its
/// tables). `IE_STATUS_LEAKED`: destroyed, but something could not be given back: a VT-d
/// or AMD-Vi table pointed at memory the allocator did not hand out; an SMMUv3 unit did not
/// acknowledge turning its queues off (CR0ACK), so its stream table, CD tables and queues
/// are kept, or held domains (left by a context destroy that leaked), whose page tables are
/// kept.
///
/// # Safety
/// `unit` is NULL or a live unit handle, not used again after `IE_STATUS_OK` or
/// `IE_STATUS_LEAKED`.
#[no_mangle]
pub unsafe extern "C" fn ie_unit_destroy(unit: *mut IeUnit) -> i32 {
    code((|| {
        // SAFETY: the caller's contract: NULL or a handle.
        let obj = unsafe { checked(unit.cast::<Obj<UnitObj>>()) }?;
        // SAFETY: `checked` saw a live unit.
        let enabled = match &unsafe { obj.as_ref() }.value {
            UnitObj::Vtd(u) => u.is_enabled(),
            UnitObj::Smmu(u) => u.is_enabled(),
            UnitObj::AmdVi(u) => u.is_enabled(),
        };
        if enabled {
            // Refused by reference: moving a unit (13-18 KiB) out and back costs kernel stack.
            return Err(IeStatus::Busy);
        }
        // SAFETY: a live handle (the caller's contract); refused while a registry uses it.
        let r = unsafe { release(obj) };
        #[cfg(feature = "sim")]
        if matches!(r, Ok(()) | Err(IeStatus::Leaked)) {
            super::sim::unit_destroyed(unit as usize);
        }
        r
    })())
}

/// Releases a disabled unit where it lies and returns its page; `Leaked` if it gave
/// something up.
///
/// # Safety
/// `obj` is a live unit handle, not used again after success.
unsafe fn release(obj: NonNull<Obj<UnitObj>>) -> Result<(), IeStatus> {
    let mut leaked = false;
    // SAFETY: the caller's contract; refused while a registry uses it.
    unsafe {
        Obj::destroy_in_place(obj, |mut value| match value.as_mut() {
            // A table that pointed outside the allocator (`leaked`) cannot be given back by
            // anyone: the rest is freed and the handle is gone either way (reported below).
            // The register window and allocator handed back need no drop.
            UnitObj::Vtd(u) => VtdUnit::release_in_place(NonNull::from(u))
                .map(|r| leaked = r.leaked.is_some())
                .map_err(|_| IeStatus::Busy),
            UnitObj::AmdVi(u) => AmdViUnit::release_in_place(NonNull::from(u))
                .map(|r| leaked = r.is_some())
                .map_err(|_| IeStatus::Busy),
            // Its stream table, CD tables and queues return their pages when dropped in
            // place, unless the unit would not turn off (reported below).
            UnitObj::Smmu(u) => {
                leaked = !u.tear_down().is_empty();
                value.as_ptr().drop_in_place();
                Ok(())
            }
        })
    }?;
    if leaked {
        return Err(IeStatus::Leaked);
    }
    Ok(())
}
