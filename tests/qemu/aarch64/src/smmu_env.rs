//! What every SMMUv3 scenario starts from, built the way a kernel would: the unit over the
//! register window and the page allocator (`SmmuUnit::new`, `enable`), a `Registry` holding it,
//! an `IoasidCtx`, and `edu` bound to the context under its StreamID (its PCI requester ID).
//!
//! Scenarios get an [`Env`]; when they return, the context is dropped (devices detached,
//! IOASIDs and domains freed), the unit is disabled, and the scenario fails if a global error
//! is pending, if events were left unread, or if page frames other than the unit's own tables
//! and queues were not given back.

use iommu_engine::ioasid::{
    DeviceHandle, DeviceLabel, IoasidCtx, PasidAllocator, Registry, UnitId,
};
use iommu_engine::iommu::{DeviceId, Iommu, Source};
use iommu_engine::mmio::{Mmio, RegisterWindow};
use iommu_engine::smmuv3::idr::Idr0Flags;
use iommu_engine::smmuv3::idr::Idr3Flags;
use iommu_engine::smmuv3::regs;
use iommu_engine::smmuv3::{
    DeviceFacts, DisabledTraffic, Platform, SmmuConfig, SmmuUnit, StreamId, StreamTableLayout,
};

use crate::alloc::PageArena;
use crate::dma::DmaBuf;
use crate::edu::Edu;
use crate::events::EventLog;
use crate::scenario::{Ctx, Fail};
use crate::smmu_scenarios::{check_gerror, smmu_regs};
use crate::{bail, ensure, println};

/// The system's one PASID space (in .bss: its bitmap is 128 KiB).
static PASIDS: PasidAllocator = PasidAllocator::new(20);

/// The unit type the scenarios drive.
pub type Unit = SmmuUnit<Mmio, &'static PageArena>;

/// The stream table layout a scenario asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamTableFormat {
    /// 256 StreamIDs in one array (16 KiB).
    Linear,
    /// 2^16 StreamIDs: a 256-entry level-1 table, 256-STE leaves allocated on attach.
    TwoLevel,
    /// 2^16 StreamIDs: a 1024-entry level-1 table, 64-STE leaves (4 KiB) allocated on attach;
    /// `spans` leaves are expected to exist at the end.
    TwoLevelSplit6 {
        /// Level-1 spans the scenario attaches devices in.
        spans: usize,
    },
    /// `SmmuConfig::default()`, what a kernel gets without choosing: on QEMU (16-bit
    /// StreamIDs, ST_LEVEL = 1) a two-level table with 256-STE leaves.
    Default,
    /// [`StreamTableFormat::Linear`] with `DisabledTraffic::Bypass`: DMA passes untranslated
    /// while the unit is disabled.
    LinearBypass,
    /// [`StreamTableFormat::Linear`] on a platform that declares `CANWBS` for every device:
    /// true of QEMU, whose emulated DMA is coherent (it models no caches), and what a guest's
    /// stage 1 needs on its SMMUv3 (no `IDR3.FWB`).
    LinearCanwbs,
}

impl StreamTableFormat {
    fn split(self) -> Option<u32> {
        match self {
            StreamTableFormat::Linear
            | StreamTableFormat::LinearBypass
            | StreamTableFormat::LinearCanwbs => None,
            StreamTableFormat::TwoLevel | StreamTableFormat::Default => Some(8),
            StreamTableFormat::TwoLevelSplit6 { .. } => Some(6),
        }
    }

    /// Page frames of level-2 stream tables the unit keeps once devices were attached.
    fn kept_frames(self) -> usize {
        match self {
            StreamTableFormat::Linear
            | StreamTableFormat::LinearBypass
            | StreamTableFormat::LinearCanwbs => 0,
            StreamTableFormat::TwoLevel | StreamTableFormat::Default => (256 * 64) >> 12,
            // 64 STEs of 64 bytes: one 4 KiB page per span.
            StreamTableFormat::TwoLevelSplit6 { spans } => spans,
        }
    }
}

/// Everything a scenario uses.
pub struct Env<'e, 'r, 'a> {
    /// The IOASID context edu is bound to.
    pub io: &'e IoasidCtx<'r, 'a, PageArena>,
    /// edu in that context.
    pub dev: DeviceHandle,
    /// The device.
    pub edu: &'e Edu,
    /// A second edu (at 00:08.0), for the scenarios that start one; not bound.
    pub edu2: Option<&'e Edu>,
    /// edu's StreamID (its RID: 00:04.0 = 0x20).
    pub sid: StreamId,
    /// The unit translates `Stage::Any` domains with stage 2 (`IDR0.S2P`).
    pub stage2: bool,
    /// Both stages: nesting is possible.
    pub nested: bool,
    /// The unit has range invalidation (`IDR3.RIL`).
    pub ril: bool,
    /// The page allocator.
    pub alloc: &'static PageArena,
    /// The unit (for what the IOASID layer does not reach: nesting).
    pub unit: &'a Unit,
    /// Granule of the unit's domains (log2 bytes), as given to `SmmuConfig::granule_log2`
    /// (12 when the scenario left the default).
    pub granule_log2: u32,
}

impl Env<'_, '_, '_> {
    /// A zeroed DMA buffer of `1 << log2` bytes.
    pub fn buf(&self, log2: u32) -> Result<DmaBuf<'static>, Fail> {
        DmaBuf::new(self.alloc, log2)
    }

    /// Drains the event queue and fails on a global error (a command error included).
    pub fn events(&self, what: &str) -> Result<EventLog, Fail> {
        drain(self.unit, what)
    }

    /// The command queue's producer index (with its wrap bit), to count what an operation
    /// issued.
    pub fn cmdq_prod(&self) -> u32 {
        self.unit.registers().read32(regs::CMDQ_PROD)
    }

    /// Commands issued between two [`Env::cmdq_prod`] readings.
    pub fn commands_between(&self, before: u32, after: u32) -> u32 {
        let log2 = (self.unit.registers().read64(regs::CMDQ_BASE) & 0x1f) as u32;
        let mask = (2u32 << log2) - 1; // index bits and the wrap bit
        after.wrapping_sub(before) & mask
    }
}

/// Drains the unit's event queue into a log; a pending global error or a recovered command
/// error fails the scenario.
pub fn drain(unit: &Unit, what: &str) -> Result<EventLog, Fail> {
    let mut log = EventLog::new();
    loop {
        let r = unit.handle_events(64, |e| log.push(e));
        log.overflowed |= r.events.overflowed;
        ensure!(
            r.gerror.is_empty() && r.command_error.is_none(),
            "{what}: global errors {:?}, command error {:?}",
            r.gerror,
            r.command_error
        );
        if !r.events.more {
            break;
        }
    }
    Ok(log)
}

/// edu's StreamID: bus << 8 | device << 3 | function.
pub fn edu_sid(edu: &Edu) -> StreamId {
    let (b, d, f) = edu.bdf;
    StreamId(u32::from(b) << 8 | u32::from(d) << 3 | u32::from(f))
}

/// Builds and enables a unit with the given stream table layout.
pub fn new_unit(ctx: &Ctx, format: StreamTableFormat) -> Result<Unit, Fail> {
    new_unit_granule(ctx, format, None)
}

/// [`new_unit`] with the embedder's granule choice (`SmmuConfig::granule_log2`).
pub fn new_unit_granule(
    ctx: &Ctx,
    format: StreamTableFormat,
    granule_log2: Option<u32>,
) -> Result<Unit, Fail> {
    let mut cfg = match format {
        StreamTableFormat::Default => SmmuConfig::default(),
        _ => SmmuConfig {
            stream_table: match format.split() {
                None => StreamTableLayout::Linear,
                Some(split) => StreamTableLayout::TwoLevel { split },
            },
            sid_bits: Some(if format.split().is_some() { 16 } else { 8 }),
            when_disabled: if format == StreamTableFormat::LinearBypass {
                DisabledTraffic::Bypass
            } else {
                DisabledTraffic::Abort
            },
            platform: if format == StreamTableFormat::LinearCanwbs {
                Platform::new(DeviceFacts {
                    canwbs: true,
                    coherent_dma: None,
                    source: Source::Firmware("QEMU virt: coherent emulated DMA"),
                })
            } else {
                Platform::default()
            },
            ..SmmuConfig::default()
        },
    };
    cfg.granule_log2 = granule_log2;
    let unit = Unit::new(smmu_regs(ctx)?, ctx.alloc, cfg)
        .map_err(|e| Fail::new(format_args!("SmmuUnit::new: {e}")))?;
    unit.enable()
        .map_err(|e| Fail::new(format_args!("SmmuUnit::enable: {e}")))?;
    Ok(unit)
}

/// Runs `body` with a fresh unit, registry, context and bound edu; tears everything down and
/// checks the unit's state afterwards.
pub fn run(
    ctx: &mut Ctx,
    format: StreamTableFormat,
    body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    run_with(ctx, format, None, body)
}

/// [`run`] on a unit whose domains use the `granule_log2` granule (the embedder's choice).
pub fn run_granule(
    ctx: &mut Ctx,
    format: StreamTableFormat,
    granule_log2: u32,
    body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    run_full(ctx, format, None, Some(granule_log2), body)
}

/// [`run`], with a second edu for the body to bind.
pub fn run_with(
    ctx: &mut Ctx,
    format: StreamTableFormat,
    edu2: Option<&Edu>,
    body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    run_full(ctx, format, edu2, None, body)
}

fn run_full(
    ctx: &mut Ctx,
    format: StreamTableFormat,
    edu2: Option<&Edu>,
    granule_log2: Option<u32>,
    body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let edu = ctx.edu()?;
    let alloc = ctx.alloc;
    let sid = edu_sid(edu);
    let frames_at_start = alloc.live_frames();
    let unit = new_unit_granule(ctx, format, granule_log2)?;
    let frames_unit = alloc.live_frames();
    // The layout asked for is the one programmed: STRTAB_BASE_CFG.FMT (17:16), SPLIT (10:6),
    // LOG2SIZE (5:0).
    let cfg = unit.registers().read32(regs::STRTAB_BASE_CFG);
    let want = match format.split() {
        None => 8,
        Some(split) => 1 << 16 | split << 6 | 16,
    };
    ensure!(
        cfg == want,
        "STRTAB_BASE_CFG {cfg:#x}, expected {want:#x} for {format:?}"
    );
    let idr = *unit.idr();
    let f0 = idr.idr0.flags();
    let stage2 = f0.contains(Idr0Flags::S2P);
    println!(
        "SMMUv3 enabled: {:?} stream table, S1P {} S2P {}, {} page frames for tables and queues",
        format,
        f0.contains(Idr0Flags::S1P),
        stage2,
        frames_unit - frames_at_start
    );
    let result = {
        let units: [&dyn Iommu; 1] = [&unit];
        let registry = Registry::new(&units, &PASIDS)
            .map_err(|e| Fail::new(format_args!("Registry::new: {e}")))?;
        let io = IoasidCtx::new(&registry, alloc, 0);
        let label = DeviceLabel {
            unit: UnitId(0),
            id: DeviceId(sid.0),
        };
        let dev = io
            .bind(label, false)
            .map_err(|e| Fail::new(format_args!("bind edu: {e}")))?;
        let env = Env {
            io: &io,
            dev,
            edu,
            edu2,
            sid,
            stage2,
            nested: f0.contains(Idr0Flags::S1P | Idr0Flags::S2P),
            ril: idr.idr3.flags().contains(Idr3Flags::RIL),
            alloc,
            unit: &unit,
            granule_log2: granule_log2.unwrap_or(12),
        };
        let r = body(&env);
        // Dropping the context detaches edu and frees every IOASID and domain.
        drop(io);
        r
    };
    // Whatever the body did, nothing may be left behind.
    let leftover = drain(&unit, "after the scenario");
    check_gerror(unit.registers(), "after the scenario")?;
    result?;
    let leftover = leftover?;
    if leftover.count() != 0 {
        leftover.print("unread events");
        bail!("{} event(s) left unread at the end", leftover.count());
    }
    // The unit keeps the level-2 stream tables it allocated on attach.
    let kept = format.kept_frames();
    let frames_end = alloc.live_frames();
    ensure!(
        frames_end == frames_unit + kept,
        "{} page frame(s) not given back after the context was dropped (unit: {} + {kept}, now: {})",
        frames_end as isize - (frames_unit + kept) as isize,
        frames_unit - frames_at_start,
        frames_end - frames_at_start
    );
    unit.disable()
        .map_err(|e| Fail::new(format_args!("SmmuUnit::disable: {e}")))?;
    Ok(())
}
