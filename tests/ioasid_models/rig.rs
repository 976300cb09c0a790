//! The rig every test runs on: one arena, a VT-d model and an SMMUv3 model over it, a driver
//! unit on each (unit 0 is the VT-d unit, unit 1 the SMMUv3 unit) and a registry over both;
//! with [`with_rig_amd`], an AMD-Vi model and unit too (unit 2).

use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::{DeviceLabel, PasidAllocator, Registry, UnitId};
use iommu_engine::iommu::Source;
use iommu_engine::iommu::{DeviceId, DomainHandle, Iommu};
use iommu_engine::iopf::{FaultCookie, PageFault, QueuedFault};
use iommu_engine::sim::amdvi::{AmdViModel, AmdViModelConfig};
use iommu_engine::sim::smmuv3::{Reach, SmmuModel, SmmuModelConfig};
use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig};
use iommu_engine::sim::walk::Access;
use iommu_engine::sim::{Arena, ArenaConfig};
use iommu_engine::smmuv3::{DeviceFacts, Platform, SmmuConfig, SmmuUnit};
use iommu_engine::vtd::{Mode, VtdConfig, VtdUnit};

pub const K4: u64 = 1 << 12;
pub const M2: u64 = 1 << 21;

/// The VT-d unit's place in the registry.
pub const VTD: UnitId = UnitId(0);
/// The SMMUv3 unit's place in the registry.
pub const SMMU: UnitId = UnitId(1);
/// The AMD-Vi unit's place in the registry ([`with_rig_amd`] only).
pub const AMD: UnitId = UnitId(2);

/// 00:04.0 and 00:05.0 behind the VT-d unit.
pub const RID_A: u32 = 0x20;
pub const RID_B: u32 = 0x28;
/// Three StreamIDs behind the SMMUv3 unit.
pub const SID_A: u32 = 0x20;
pub const SID_B: u32 = 0x300;
pub const SID_C: u32 = 0x400;

pub type Vtd<'a> = VtdUnit<&'a VtdModel<'a>, &'a Arena>;
pub type Smmu<'a> = SmmuUnit<&'a SmmuModel<'a>, &'a Arena>;
pub type Amd<'a> = AmdViUnit<&'a AmdViModel<'a>, &'a Arena, 16>;

/// How the VT-d side is built.
#[derive(Clone, Copy)]
pub struct VtdSetup {
    pub model: VtdModelConfig,
    pub mode: Mode,
}

impl VtdSetup {
    /// QEMU's legacy-mode unit, with or without snoop control.
    pub const fn legacy(sc: bool) -> Self {
        Self {
            model: VtdModelConfig::qemu_default().with_sc(sc),
            mode: Mode::Legacy,
        }
    }

    /// A scalable-mode unit (SC, 20-bit PASIDs, first and second stage).
    pub const fn scalable() -> Self {
        Self {
            model: VtdModelConfig::scalable(),
            mode: Mode::Scalable,
        }
    }
}

/// How the SMMUv3 side is built.
#[derive(Clone, Copy)]
pub struct SmmuSetup {
    pub model: SmmuModelConfig,
    pub unit: SmmuConfig,
}

impl SmmuSetup {
    /// QEMU-like (coherent walks), on a platform that declares every device `CANWBS` (IORT)
    /// and with FWB, or on one that declares nothing and without FWB.
    pub fn qemu(canwbs: bool) -> Self {
        let mut model = SmmuModelConfig::qemu_like().with_fwb(canwbs);
        if canwbs {
            model = model.with_canwbs(0, u32::MAX);
        }
        Self {
            model,
            unit: SmmuConfig {
                poll_budget: 10_000,
                platform: Platform::new(DeviceFacts {
                    canwbs,
                    coherent_dma: None,
                    source: Source::Firmware("IORT root complex (test rig)"),
                }),
                ..SmmuConfig::default()
            },
        }
    }

    /// With `IDR3.FWB` (nest parents force write-back, so a guest's stage 1 needs no
    /// `CANWBS`).
    pub fn with_fwb(mut self) -> Self {
        self.model = self.model.with_fwb(true);
        self
    }

    /// With `2^bits` SubstreamIDs per stream.
    pub fn with_ssid_bits(mut self, bits: u8) -> Self {
        self.model = self.model.with_ssid_bits(bits);
        self.unit.ssid_bits = Some(u32::from(bits));
        self
    }
}

/// How the AMD-Vi side is built ([`with_rig_amd`]).
#[derive(Clone, Copy)]
pub struct AmdSetup {
    pub model: AmdViModelConfig,
    pub unit: AmdViConfig,
}

/// Everything a test needs, borrowed from [`with_rig`]'s frame.
pub struct Rig<'a, 'm> {
    pub arena: &'m Arena,
    pub vm: &'m VtdModel<'m>,
    pub sm: &'m SmmuModel<'m>,
    pub vtd: &'a Vtd<'m>,
    pub smmu: &'a Smmu<'m>,
    /// The AMD-Vi model and unit ([`with_rig_amd`] only).
    pub am: Option<&'m AmdViModel<'m>>,
    pub amd: Option<&'a Amd<'m>>,
    pub reg: &'a Registry<'a>,
}

/// Builds the rig, enables both units, clears the models' counters and runs `f`.
pub fn with_rig<R>(v: VtdSetup, s: SmmuSetup, f: impl FnOnce(&Rig<'_, '_>) -> R) -> R {
    with_units(v, s, None, f)
}

/// As [`with_rig`], with an AMD-Vi unit on its model as unit 2 ([`AMD`]).
pub fn with_rig_amd<R>(
    v: VtdSetup,
    s: SmmuSetup,
    a: AmdSetup,
    f: impl FnOnce(&Rig<'_, '_>) -> R,
) -> R {
    with_units(v, s, Some(a), f)
}

fn with_units<R>(
    v: VtdSetup,
    s: SmmuSetup,
    a: Option<AmdSetup>,
    f: impl FnOnce(&Rig<'_, '_>) -> R,
) -> R {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 64 << 20,
    })
    .expect("arena");
    // Declared before the units: every one of them borrows the models for as long.
    let am = a.map(|a| AmdViModel::new(&arena, a.model));
    let vm = VtdModel::new(&arena, v.model);
    let sm = SmmuModel::new(&arena, s.model);
    let vcfg = VtdConfig {
        mode: v.mode,
        poll_budget: 10_000,
        // The default (about 100 s of polls, for real ATS devices) would make every stalled
        // device-TLB wait spin for minutes; the models answer at once or never.
        device_tlb_poll_budget: 20_000,
        ..VtdConfig::legacy()
    }
    // What the model's DMAR would declare (QEMU reports HAW = aw-bits).
    .with_dmar_host_address_width((v.model.haw - 1) as u8);
    let vtd = VtdUnit::new(&vm, &arena, vcfg).expect("VT-d unit");
    vtd.enable().expect("VT-d enable");
    let smmu = SmmuUnit::new(&sm, &arena, s.unit).expect("SMMUv3 unit");
    smmu.enable().expect("SMMUv3 enable");
    let amd = a.zip(am.as_ref()).map(|(a, m)| {
        let u: Amd<'_> = AmdViUnit::new(m, &arena, a.unit).expect("AMD-Vi unit");
        u.enable().expect("AMD-Vi enable");
        u
    });
    vm.reset_stats();
    sm.reset_stats();
    let pasids = PasidAllocator::new(20);
    let mut units: Vec<&dyn Iommu> = vec![&vtd, &smmu];
    units.extend(amd.as_ref().map(|u| u as &dyn Iommu));
    let reg = Registry::new(&units, &pasids).expect("registry");
    let rig = Rig {
        arena: &arena,
        vm: &vm,
        sm: &sm,
        vtd: &vtd,
        smmu: &smmu,
        am: am.as_ref(),
        amd: amd.as_ref(),
        reg: &reg,
    };
    let r = f(&rig);
    assert_eq!(
        arena.bad_frees(),
        [],
        "a page was freed twice or never allocated"
    );
    r
}

pub fn vtd_dev(rid: u32) -> DeviceLabel {
    DeviceLabel {
        unit: VTD,
        id: DeviceId(rid),
    }
}

pub fn smmu_dev(sid: u32) -> DeviceLabel {
    DeviceLabel {
        unit: SMMU,
        id: DeviceId(sid),
    }
}

impl Rig<'_, '_> {
    /// No page a unit reaches (VT-d's structures, the SMMUv3's but those `foreign` names, the
    /// AMD-Vi's tables if the rig has one) is back in the arena, and the arena saw no bad free. Returns what the SMMUv3 reaches, for
    /// the callers' own checks of its cached tags.
    pub fn nothing_freed_is_reached(&self, foreign: impl Fn(u64) -> bool) -> Result<Reach, String> {
        let live = self.arena.live_pages();
        let is_live = |addr: u64| {
            live.iter()
                .any(|&(p, log2)| addr >= p.get() && addr - p.get() < 1 << log2)
        };
        if let Some(addr) = self.vm.reachable().into_iter().find(|&a| !is_live(a)) {
            return Err(format!("{addr:#x} reachable by the VT-d unit but freed"));
        }
        if let Some(addr) = self
            .am
            .and_then(|m| m.reachable_tables().into_iter().find(|&a| !is_live(a)))
        {
            return Err(format!("{addr:#x} reachable by the AMD-Vi unit but freed"));
        }
        let reach = self.sm.reachable();
        if let Some((addr, what)) = reach
            .structures
            .iter()
            .find(|(a, _)| !is_live(*a) && !foreign(*a))
        {
            return Err(format!(
                "{what} at {addr:#x} reachable by the SMMUv3 but freed"
            ));
        }
        let bad = self.arena.bad_frees();
        if !bad.is_empty() {
            return Err(format!("bad frees: {bad:?}"));
        }
        Ok(reach)
    }

    /// Pages the arena has handed out and not taken back.
    pub fn live(&self) -> usize {
        self.arena.live_pages().len()
    }

    /// How many domains a unit holds (handles are small indices; probe the first 64, and the
    /// nested children's user domains from 0x4000, `vtd::USER_DOMAIN_BASE` and
    /// `smmuv3::nested::USER_DOMAIN_BASE`).
    pub fn domains(&self, unit: &dyn Iommu) -> usize {
        (0..64u16)
            .chain(0x4000..0x4010)
            .filter(|&h| unit.domain_geometry(DomainHandle(h)).is_ok())
            .count()
    }

    pub fn vtd_domains(&self) -> usize {
        self.domains(self.vtd)
    }

    pub fn smmu_domains(&self) -> usize {
        self.domains(self.smmu)
    }

    /// What the VT-d model does with a read from `rid` at `iova`: `Some((pa, snoop))` or
    /// `None` for a fault.
    pub fn vtd_read(&self, rid: u32, pasid: Option<u32>, iova: u64) -> Option<(u64, bool)> {
        self.vm
            .translate(rid as u16, pasid, iova, Access::READ)
            .ok()
            .map(|t| (t.pa, t.snoop))
    }

    /// What the SMMUv3 model does with a No-Snoop read from `sid` at `iova`: `Some((pa,
    /// snooped))` or `None` for a fault.
    pub fn smmu_read(&self, sid: u32, ssid: Option<u32>, iova: u64) -> Option<(u64, bool)> {
        self.sm
            .translate(sid, ssid, iova, Access::READ)
            .ok()
            .map(|t| (t.pa, t.coherent))
    }

    /// Whether a read through the IOTLB / TLB would be served from a cache (to prove that an
    /// unmap's fault comes after a flush and not from an empty cache).
    pub fn vtd_cached(&self, rid: u32, iova: u64) -> bool {
        self.vm
            .translate(rid as u16, None, iova, Access::READ)
            .is_ok_and(|t| t.from_iotlb)
    }

    pub fn smmu_cached(&self, sid: u32, iova: u64) -> bool {
        self.sm
            .translate(sid, None, iova, Access::READ)
            .is_ok_and(|t| t.tlb_hit)
    }

    /// Wait descriptors the VT-d model completed and CMD_SYNCs the SMMUv3 model completed.
    pub fn completions(&self) -> (u64, u64) {
        (self.vm.stats().wait, self.sm.stats().syncs)
    }

    /// Drains both units' fault / event records (faults the tests provoke on purpose).
    pub fn drain(&self) {
        let _ = self.vtd.drain_faults(|_, _| {});
        let _ = self.smmu.handle_events(usize::MAX, |_| {});
        if let Some(amd) = self.amd {
            let _ = amd.drain_events(|_| {});
        }
    }
}

/// `N` placeholder faults, a buffer for `IoasidCtx::read_faults` to fill.
pub fn no_faults<const N: usize>() -> [QueuedFault; N] {
    [QueuedFault {
        unit: 0,
        fault: PageFault::EMPTY,
        cookie: FaultCookie(0),
    }; N]
}
