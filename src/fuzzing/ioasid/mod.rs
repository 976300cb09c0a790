//! IOASID target: arbitrary sequences of bind / unbind / alloc / free / attach / attach_pasid /
//! detach / detach_pasid / PASID allocation / map / unmap / incoherent-DMA grants / context
//! drops, over two contexts and two units -- a VT-d unit on the VT-d model and an SMMUv3 unit on
//! the SMMUv3 model, in configurations drawn from the input -- with injected allocation
//! failures. A shadow of what each context's owner asked for is kept beside the layer.
//!
//! After every step (the invariants of `DESIGN.md`):
//! - every translation a model performs for a device is one the shadow holds for the IOASID the
//!   device (or its PASID) is attached to: same output address, an access its permissions allow
//!   (invariant 5); a device or PASID attached to nothing translates nothing; and every mapping
//!   the shadow holds translates (unless it is privileged-only);
//! - a translation through an IOASID allocated with `ENFORCE_SNOOP` snoops (VT-d SNP / PGSNP, the
//!   model's `DmaOk::snoop`) or comes out write-back cacheable (SMMUv3 S2FWB,
//!   `DmaOk::cacheable_wb`), and attaching such an IOASID to a unit that cannot enforce snooping
//!   fails (invariant 3);
//! - the results the rules fix are the ones returned (busy IOASIDs, PASIDs and devices, quotas,
//!   grants, reserved regions, overlaps, unmapped byte counts), and a failed operation changed
//!   nothing the models or the layer's record show;
//! - an unmap that removed something completed exactly one wait on each unit with a domain
//!   behind the IOASID (VT-d wait descriptors, SMMUv3 CMD_SYNCs);
//! - an unmap (or `UNMAP_ALL`) that returns `Ok` leaves no leaf of its range in any domain of
//!   the IOASID, walked in the tables; a refused map whose range the record keeps
//!   (`InvalidationPending`) has a domain that really holds a leaf of it (review 19b F2, F4);
//!   a map reaching beyond the narrowest input width of the IOASID's domains is refused with
//!   `BeyondInputWidth` naming it, with no wait completed, and nothing else is (review 20 L3a);
//! - each unit holds exactly one domain per (IOASID, unit) pair that has attachments;
//! - the arena saw no double or unknown free.
//!
//! "No page freed before its flush" (invariant 1) is checked through the models' caches: probes
//! fill the IOTLB / TLB and the paging-structure caches, and the arena poisons a freed page and
//! hands it out again first, so a table page released before the invalidation that covers it
//! makes a later translation disagree with the shadow.
//!
//! At the end both contexts are dropped: every device faults, no domain is left on either unit,
//! and once the units are disabled and released every page is back in the arena.

mod checks;
mod ops;
mod shadow;

use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::ioasid::{
    DeviceHandle, DeviceLabel, Error, IncoherentDmaGrant, Incompatibility, IoasidCtx, IoasidFlags,
    IoasidId, PasidAllocator, Registry, UnitId,
};
use crate::iommu::{Capabilities, DeviceId, DomainHandle, Iommu, Missing, Pasid, Source};
use crate::mem::{Iova, PhysAddr};
use crate::pgtable::Prot;
use crate::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use crate::sim::vtd::{VtdModel, VtdModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig, FailPolicy};
use crate::smmuv3::{DeviceFacts, Platform, SmmuConfig, SmmuUnit};
use crate::vtd::{Mode, VtdConfig, VtdUnit};
use shadow::{CtxShadow, Pages, Pair};

/// Most operations one input runs.
const MAX_OPS: usize = 64;
/// Bytes of table memory for everything (units, records, domains).
const ARENA_BYTES: u64 = 2 << 20;
/// Contexts alive at once.
const CONTEXTS: usize = 2;
/// PASID width of the registry: small, so that quotas and reuse are reached.
const PASID_BITS: u32 = 4;
const K4: u64 = 1 << 12;
/// Pages in each IOVA region the fuzzer maps in.
const WINDOW: u64 = 1024;
/// Region starts, picked by an op's `region` byte modulo their number: low memory; around the
/// VT-d interrupt window 0xFEE0_0000; high; above the SMMUv3 model's 44-bit stage-2 input
/// size (VT-d takes it, SMMUv3 stage 2 refuses it). Four, as when the crash inputs of
/// `fuzz/corpus/ioasid` were saved: they decode as they did (`tests/ioasid_fuzz_seeds.rs`).
const REGIONS: [u64; 4] = [0, 0xfec0_0000, 1 << 40, 1 << 45];
/// An op's `region` byte that picks `STRADDLE` rather than a region of `REGIONS` (no
/// saved crash input has it: review 20 L3b, a fifth entry in `REGIONS` decoded them
/// differently).
pub const STRADDLE_REGION: u8 = 0xfe;
/// Where the region an op's `region` byte picks starts (`REGIONS`, `STRADDLE`).
pub fn region_base(region: u8) -> u64 {
    if region == STRADDLE_REGION {
        STRADDLE
    } else {
        REGIONS[usize::from(region) % REGIONS.len()]
    }
}

/// A region straddling the SMMUv3 model's stage-2 input size (2 MiB below 2^44: an IOASID
/// with an SMMUv3 domain refuses a range across it, review 19b F2).
const STRADDLE: u64 = (1 << 44) - (2 << 20);
/// The SMMUv3 model's stage-2 input size, in bits.
const SMMU_IAS: u32 = 44;
/// An [`Op::Unmap`] with this `region` is `unmap(0, UNMAP_ALL)`.
pub const UNMAP_ALL_REGION: u8 = u8::MAX;
/// The VT-d interrupt address range, reserved on every VT-d domain.
const MSI: (u64, u64) = (0xfee0_0000, 0xfef0_0000);
/// Every this many steps every device is probed, attached or not.
const FULL_CHECK_EVERY: usize = 8;
/// Most pages probed per device per step.
const PROBES: usize = 16;

/// The devices the fuzzer binds: (unit, RID / StreamID). Unit 0 is VT-d, unit 1 SMMUv3.
const LABELS: [(u8, u32); 6] = [
    (0, 0x0020),
    (0, 0x0028),
    (0, 0x0100),
    (1, 0x0020),
    (1, 0x0300),
    (1, 0x0400),
];

/// Target `ioasid`.
pub fn ioasid(data: &[u8]) {
    if let Some((setup, ops)) = decode(data) {
        run(&setup, &ops);
    }
}

/// How the target decodes `data`: the setup, `None` if there is not enough for it, and the
/// operations.
fn decode(data: &[u8]) -> Option<(Setup, Vec<Op>)> {
    let mut u = Unstructured::new(data);
    let setup = Setup::arbitrary(&mut u).ok()?;
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    Some((setup, ops))
}

/// The setup's `vtd` byte and the operations the target decodes from `data` (for
/// `tests/ioasid_fuzz_seeds.rs`: saved inputs must decode as when they were saved).
pub fn decode_ops(data: &[u8]) -> Option<(u8, Vec<Op>)> {
    decode(data).map(|(s, ops)| (s.vtd, ops))
}

/// The units' configurations and the contexts' PASID quotas.
#[derive(Arbitrary, Debug)]
struct Setup {
    /// Bits 1:0, the VT-d unit: 0: QEMU legacy without SC; 1: with SC; 2: scalable (SC,
    /// PASIDs, both stages); 3: legacy with SC and caching mode (not-present entries cached).
    /// Bits 3:2, the SMMUv3 granule: 2: 16 KiB, 3: 64 KiB, else 4 KiB (the record's 4 KiB
    /// pages then meet a coarser domain: maps and unmaps of part of a granule refused, with
    /// nothing written, review 19b).
    vtd: u8,
    /// SMMUv3 with `IDR3.FWB`, on a platform that declares every device `CANWBS`.
    fwb: bool,
    cohacc_off: bool,
    ssids: bool,
    ril: bool,
    quotas: [u8; CONTEXTS],
    /// A head start, run as ordinary steps before the input's operations: bit `i` binds
    /// device `i` to context 0 (no-snoop capable when bit `i` of `no_snoop` is set) ...
    bind: u8,
    no_snoop: u8,
    /// ... and attaches each to one IOASID allocated with these flags (if non-zero).
    flags: u8,
}

impl Setup {
    /// The head start as operations.
    fn prelude(&self) -> Vec<Op> {
        let mut ops = Vec::new();
        let devs = (0..LABELS.len() as u8).filter(|i| self.bind & 1 << i != 0);
        for dev in devs.clone() {
            let no_snoop = self.no_snoop & 1 << dev != 0;
            ops.push(Op::Bind {
                ctx: 0,
                dev,
                no_snoop,
            });
        }
        if self.flags != 0 {
            ops.push(Op::Alloc {
                ctx: 0,
                flags: self.flags,
            });
            ops.extend(devs.map(|dev| Op::Attach { ctx: 0, dev, io: 0 }));
        }
        ops
    }
}

/// One step. Contexts, devices, IOASIDs and PASIDs are picked by index, modulo what exists
/// (one past the end names something that does not exist). Public so that the seed test
/// (`tests/ioasid_fuzz_seeds.rs`) writes its inputs with the very same operations.
#[derive(Arbitrary, Debug, Clone, Copy)]
#[allow(missing_docs)] // The fields are the indices named above; the variants say what they do.
pub enum Op {
    Bind {
        ctx: u8,
        dev: u8,
        no_snoop: bool,
    },
    Unbind {
        ctx: u8,
        dev: u8,
    },
    Alloc {
        ctx: u8,
        flags: u8,
    },
    Free {
        ctx: u8,
        io: u8,
    },
    Attach {
        ctx: u8,
        dev: u8,
        io: u8,
    },
    AttachPasid {
        ctx: u8,
        dev: u8,
        pasid: u8,
        io: u8,
    },
    Detach {
        ctx: u8,
        dev: u8,
    },
    DetachPasid {
        ctx: u8,
        dev: u8,
        pasid: u8,
    },
    AllocPasid {
        ctx: u8,
    },
    FreePasid {
        ctx: u8,
        pasid: u8,
    },
    Map {
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
        pa: u16,
        prot: u8,
    },
    Unmap {
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
    },
    /// Grant incoherent DMA and hold the grant over the next `hold % 8` operations.
    Grant {
        ctx: u8,
        dev: u8,
        hold: u8,
    },
    /// Drop a context (detaching everything) and put a new one with `quota` in its place.
    DropCtx {
        ctx: u8,
        quota: u8,
    },
    /// The `n`-th page allocation of the next operation fails.
    FailAlloc {
        n: u8,
    },
}

type Ctx<'r, 'a> = IoasidCtx<'r, 'a, Arena>;
type Vtd<'m> = VtdUnit<&'m VtdModel<'m>, &'m Arena>;
type Smmu<'m> = SmmuUnit<&'m SmmuModel<'m>, &'m Arena>;

fn run(setup: &Setup, ops: &[Op]) {
    let config = ArenaConfig {
        base_pa: 0x1_0000_0000,
        // Small, so that running out is reachable: a legitimate `NoMemory` (see `low_memory`).
        capacity: ARENA_BYTES as usize,
    };
    super::with_arena(config, |arena| run_on(arena, setup, ops));
}

fn run_on(arena: &Arena, setup: &Setup, ops: &[Op]) {
    let (vcfg, mode) = match setup.vtd % 4 {
        0 => (VtdModelConfig::qemu_default(), Mode::Legacy),
        1 => (VtdModelConfig::qemu_default().with_sc(true), Mode::Legacy),
        2 => (VtdModelConfig::scalable(), Mode::Scalable),
        _ => (
            VtdModelConfig::qemu_default()
                .with_sc(true)
                .with_caching_mode(true),
            Mode::Legacy,
        ),
    };
    let granule_log2 = match setup.vtd >> 2 & 3 {
        2 => 14,
        3 => 16,
        _ => 12,
    };
    let mut scfg = SmmuModelConfig::qemu_like()
        .with_fwb(setup.fwb)
        .with_cohacc(!setup.cohacc_off)
        .with_ril(setup.ril)
        .with_ssid_bits(if setup.ssids { PASID_BITS as u8 } else { 0 });
    if setup.fwb {
        scfg = scfg.with_canwbs(0, u32::MAX);
    }
    let vm = VtdModel::new(arena, vcfg);
    let sm = SmmuModel::new(arena, scfg);
    let vtd: Vtd<'_> = VtdUnit::new(
        &vm,
        arena,
        VtdConfig {
            mode,
            poll_budget: 1000,
            ..VtdConfig::legacy()
        },
    )
    .expect("VT-d unit");
    vtd.enable().expect("VT-d enable");
    let smmu: Smmu<'_> = SmmuUnit::new(
        &sm,
        arena,
        SmmuConfig {
            sid_bits: Some(11),
            ssid_bits: Some(if setup.ssids { PASID_BITS } else { 0 }),
            granule_log2: (granule_log2 != 12).then_some(granule_log2),
            poll_budget: 1000,
            platform: Platform::new(DeviceFacts {
                canwbs: setup.fwb,
                coherent_dma: None,
                source: Source::Firmware("IORT (fuzzing harness)"),
            }),
            ..SmmuConfig::default()
        },
    )
    .expect("SMMUv3 unit");
    smmu.enable().expect("SMMUv3 enable");
    {
        let units: [&dyn Iommu; 2] = [&vtd, &smmu];
        let pasids = PasidAllocator::new(PASID_BITS);
        let reg = Registry::new(&units, &pasids).expect("registry");
        let mut h = Harness {
            arena,
            vm: &vm,
            sm: &sm,
            units,
            caps: [vtd.capabilities(), smmu.capabilities()],
            caching_mode: setup.vtd % 4 == 3,
            smmu_granule: 1 << granule_log2,
            shadow: core::array::from_fn(|i| CtxShadow::new(quota(setup.quotas[i]))),
            owner: [None; LABELS.len()],
            fail_armed: false,
            loose: std::collections::BTreeSet::new(),
            steps: 0,
            domains_changed: true,
            seed: 0x9e37_79b9_7f4a_7c15,
        };
        let mut ctxs: Vec<Ctx<'_, '_>> = (0..CONTEXTS)
            .map(|i| IoasidCtx::new(&reg, arena, quota(setup.quotas[i])))
            .collect();
        for op in &setup.prelude() {
            h.step(&ctxs, op);
            h.after_step(&ctxs);
        }
        let mut it = ops.iter();
        while let Some(op) = it.next() {
            match *op {
                Op::DropCtx { ctx, quota: q } => {
                    let c = usize::from(ctx) % CONTEXTS;
                    let before = h.shadow[c].pairs();
                    // Drawn before the drop, so that the context's own pages are among them.
                    let samples = h.all_samples();
                    ctxs[c] = IoasidCtx::new(&reg, arena, quota(q));
                    h.context_dropped(c, quota(q));
                    h.probe_pairs(&before, &samples);
                }
                Op::Grant { ctx, dev, hold } => h.grant(&ctxs, ctx, dev, hold, &mut it),
                _ => h.step(&ctxs, op),
            }
            h.after_step(&ctxs);
        }
        h.final_check(&ctxs);
        let everything = h.all_pairs();
        let samples = h.all_samples();
        for c in 0..CONTEXTS {
            h.context_dropped(c, 0);
        }
        drop(ctxs);
        h.probe_pairs(&everything, &samples);
        for (u, name) in [(0, "VT-d"), (1, "SMMUv3")] {
            assert_eq!(domains(h.units[u]), 0, "{name}: domains left behind");
        }
        for p in 1..1 << PASID_BITS {
            let p = Pasid::new(p).expect("small PASID");
            assert!(!reg.pasids().is_allocated(p), "PASID {p} still allocated");
        }
        let _ = vtd.drain_faults(|_, _| {});
        let _ = smmu.handle_events(usize::MAX, |_| {});
    }
    arena.set_fail_policy(FailPolicy::Never);
    smmu.disable().expect("SMMUv3 disable");
    drop(smmu);
    vtd.disable().expect("VT-d disable");
    let released = vtd.release().map_err(|(_, e)| e).expect("VT-d release");
    assert_eq!(released.leaked, None, "VT-d release leaked");
    assert_eq!(arena.live_pages(), [], "pages leaked");
    assert_eq!(arena.bad_frees(), [], "bad frees");
}

fn quota(q: u8) -> u32 {
    u32::from(q % 5)
}

/// Domains a unit holds (handles are small indices).
fn domains(unit: &dyn Iommu) -> usize {
    (0..64u16)
        .filter(|&h| unit.domain_geometry(DomainHandle(h)).is_ok())
        .count()
}

fn label(i: usize) -> DeviceLabel {
    let (unit, id) = LABELS[i];
    DeviceLabel {
        unit: UnitId(unit),
        id: DeviceId(id),
    }
}

struct Harness<'h, 'm> {
    arena: &'m Arena,
    vm: &'m VtdModel<'m>,
    sm: &'m SmmuModel<'m>,
    units: [&'h dyn Iommu; 2],
    caps: [Capabilities; 2],
    /// The VT-d unit caches not-present entries (CAP.CM): a map invalidates and waits too.
    caching_mode: bool,
    /// The SMMUv3 unit's granule, in bytes.
    smmu_granule: u64,
    shadow: [CtxShadow; CONTEXTS],
    /// Label index -> owning context.
    owner: [Option<usize>; LABELS.len()],
    fail_armed: bool,
    /// Pages (context, IOASID, IOVA) a refused map's undo left in a domain: the record keeps
    /// them (as mapped) until an unmap of them, and a device may reach them (the recorded
    /// page) or fault.
    loose: std::collections::BTreeSet<(usize, u16, u64)>,
    steps: usize,
    /// A step since the last count of the units' domains attached or detached something.
    domains_changed: bool,
    seed: u64,
}

/// What one operation touched, for the probes after it.
enum Touched {
    Nothing,
    /// A range of an IOASID of a context: probe its devices there.
    Range {
        c: usize,
        io: u16,
        start: u64,
        pages: u64,
    },
    /// Attachments of these devices changed: probe them everywhere.
    Pairs(Vec<Pair>),
}

/// A slot that none of `live` (a shadow's keys) holds, so that its handle names nothing:
/// slots are handed out round the table, so a fixed one (31) may be live.
fn free_slot<'k>(live: impl Iterator<Item = &'k u16> + Clone) -> u16 {
    (0..crate::ioasid::MAX_IOASIDS.min(crate::ioasid::MAX_DEVICES) as u16)
        .find(|s| !live.clone().any(|l| l == s))
        .unwrap_or(u16::MAX)
}

impl Harness<'_, '_> {
    fn rand(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn ctx_index(ctx: u8) -> usize {
        usize::from(ctx) % CONTEXTS
    }

    /// A handle for device `dev % LABELS` as context `c` would be given it: its own handle if
    /// the device is bound to `c`, the other context's if bound there (which `c` must refuse),
    /// else one that names nothing. With the shadow key of the device in `c` (`u16::MAX` for
    /// none).
    fn handle(&self, ctxs: &[Ctx<'_, '_>], c: usize, dev: u8) -> (usize, DeviceHandle, u16) {
        let l = usize::from(dev) % LABELS.len();
        if let Some(slot) = self.shadow[c].handle_of(l) {
            return (l, ctxs[c].device_in_slot(slot), slot);
        }
        let foreign = self.owner[l].and_then(|o| Some((o, self.shadow[o].handle_of(l)?)));
        let h = match foreign {
            Some((o, slot)) => ctxs[o].device_in_slot(slot),
            None => ctxs[c].device_in_slot(free_slot(self.shadow[c].devs.keys())),
        };
        (l, h, u16::MAX)
    }

    /// The context's `io % (n + 1)`-th IOASID, or one that does not exist.
    fn ioasid(&self, ctxs: &[Ctx<'_, '_>], c: usize, io: u8) -> IoasidId {
        let ids: Vec<u16> = self.shadow[c].ios.keys().copied().collect();
        let i = usize::from(io) % (ids.len() + 1);
        let nothing = || free_slot(self.shadow[c].ios.keys());
        ctxs[c].ioasid_in_slot(ids.get(i).copied().unwrap_or_else(nothing))
    }

    /// The context's `p % (n + 1)`-th PASID, or one it does not hold.
    fn pasid(&self, c: usize, p: u8) -> Pasid {
        let held: Vec<u32> = self.shadow[c].pasids.iter().copied().collect();
        let i = usize::from(p) % (held.len() + 1);
        let raw = held
            .get(i)
            .copied()
            .unwrap_or(1 + u32::from(p) % ((1 << PASID_BITS) - 1));
        Pasid::new(raw).expect("small PASID")
    }

    fn step(&mut self, ctxs: &[Ctx<'_, '_>], op: &Op) {
        let armed = self.fail_armed;
        let touched = match *op {
            Op::Bind { ctx, dev, no_snoop } => self.bind(ctxs, ctx, dev, no_snoop),
            Op::Unbind { ctx, dev } => self.unbind(ctxs, ctx, dev),
            Op::Alloc { ctx, flags } => self.alloc(ctxs, ctx, flags),
            Op::Free { ctx, io } => self.free(ctxs, ctx, io),
            Op::Attach { ctx, dev, io } => self.attach(ctxs, ctx, dev, io),
            Op::AttachPasid {
                ctx,
                dev,
                pasid,
                io,
            } => self.attach_pasid(ctxs, ctx, dev, pasid, io),
            Op::Detach { ctx, dev } => self.detach(ctxs, ctx, dev),
            Op::DetachPasid { ctx, dev, pasid } => self.detach_pasid(ctxs, ctx, dev, pasid),
            Op::AllocPasid { ctx } => self.alloc_pasid(ctxs, ctx),
            Op::FreePasid { ctx, pasid } => self.free_pasid(ctxs, ctx, pasid),
            Op::Map {
                ctx,
                io,
                region,
                first,
                count,
                pa,
                prot,
            } => self.map(ctxs, ctx, io, region, first, count, pa, prot),
            Op::Unmap {
                ctx,
                io,
                region,
                first,
                count,
            } => self.unmap(ctxs, ctx, io, region, first, count),
            Op::FailAlloc { n } => {
                self.arena
                    .set_fail_policy(FailPolicy::Nth(u64::from(n % 8) + 1));
                self.fail_armed = true;
                Touched::Nothing
            }
            // Handled by the caller (they need the contexts mutably, or hold a borrow).
            Op::Grant { .. } | Op::DropCtx { .. } => Touched::Nothing,
        };
        if armed {
            self.arena.set_fail_policy(FailPolicy::Never);
            self.fail_armed = false;
        }
        match touched {
            Touched::Nothing => {}
            Touched::Range {
                c,
                io,
                start,
                pages,
            } => self.probe_range(ctxs, c, io, start, pages),
            Touched::Pairs(pairs) => {
                self.domains_changed = true;
                let samples = self.all_samples();
                let pairs: Vec<_> = pairs.into_iter().map(|p| (p, 0)).collect();
                self.probe_pairs(&pairs, &samples);
            }
        }
    }
}
