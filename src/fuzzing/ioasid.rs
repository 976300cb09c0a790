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

use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

use arbitrary::{Arbitrary, Unstructured};

use crate::ioasid::{
    DeviceHandle, DeviceLabel, Error, IncoherentDmaGrant, Incompatibility, IoasidCtx, IoasidFlags,
    IoasidId, Registry, UnitId,
};
use crate::iommu::{Capabilities, DeviceId, DomainHandle, Iommu, Missing, Pasid};
use crate::mem::{Iova, PhysAddr};
use crate::pgtable::Prot;
use crate::sim::smmuv3::{SmmuModel, SmmuModelConfig};
use crate::sim::vtd::{VtdModel, VtdModelConfig};
use crate::sim::walk::Access;
use crate::sim::{Arena, ArenaConfig, FailPolicy};
use crate::smmuv3::{SmmuConfig, SmmuUnit};
use crate::vtd::{Mode, VtdConfig, VtdUnit};

/// Most operations one input runs.
const MAX_OPS: usize = 64;
/// Contexts alive at once.
const CONTEXTS: usize = 2;
/// PASID width of the registry: small, so that quotas and reuse are reached.
const PASID_BITS: u32 = 4;
const K4: u64 = 1 << 12;
/// Pages in each IOVA region the fuzzer maps in.
const WINDOW: u64 = 1024;
/// Region starts: low memory; around the VT-d interrupt window 0xFEE0_0000; high; above the
/// SMMUv3 model's 44-bit stage-2 input size (VT-d takes it, SMMUv3 stage 2 refuses it).
const REGIONS: [u64; 4] = [0, 0xfec0_0000, 1 << 40, 1 << 45];
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
    let mut u = Unstructured::new(data);
    let Ok(setup) = Setup::arbitrary(&mut u) else {
        return;
    };
    let mut ops = Vec::new();
    while ops.len() < MAX_OPS && !u.is_empty() {
        match Op::arbitrary(&mut u) {
            Ok(op) => ops.push(op),
            Err(_) => break,
        }
    }
    run(&setup, &ops);
}

/// The units' configurations and the contexts' PASID quotas.
#[derive(Arbitrary, Debug)]
struct Setup {
    /// 0: QEMU legacy without SC; 1: with SC; 2: scalable (SC, PASIDs, both stages);
    /// 3: legacy with SC and caching mode (not-present entries cached).
    vtd: u8,
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
/// (one past the end names something that does not exist).
#[derive(Arbitrary, Debug)]
enum Op {
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
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 16 << 20,
    })
    .expect("arena");
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
    let scfg = SmmuModelConfig::qemu_like()
        .with_fwb(setup.fwb)
        .with_cohacc(!setup.cohacc_off)
        .with_ril(setup.ril)
        .with_ssid_bits(if setup.ssids { PASID_BITS as u8 } else { 0 });
    let vm = VtdModel::new(&arena, vcfg);
    let sm = SmmuModel::new(&arena, scfg);
    let vtd: Vtd<'_> = VtdUnit::new(
        &vm,
        &arena,
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
        &arena,
        SmmuConfig {
            sid_bits: Some(11),
            ssid_bits: Some(if setup.ssids { PASID_BITS } else { 0 }),
            poll_budget: 1000,
            ..SmmuConfig::default()
        },
    )
    .expect("SMMUv3 unit");
    smmu.enable().expect("SMMUv3 enable");
    {
        let units: [&dyn Iommu; 2] = [&vtd, &smmu];
        let reg = Registry::new(&units, PASID_BITS).expect("registry");
        let mut h = Harness {
            arena: &arena,
            vm: &vm,
            sm: &sm,
            units,
            caps: [vtd.capabilities(), smmu.capabilities()],
            shadow: core::array::from_fn(|i| CtxShadow::new(quota(setup.quotas[i]))),
            owner: [None; LABELS.len()],
            fail_armed: false,
            steps: 0,
            seed: 0x9e37_79b9_7f4a_7c15,
        };
        let mut ctxs: Vec<Ctx<'_, '_>> = (0..CONTEXTS)
            .map(|i| IoasidCtx::new(&reg, &arena, quota(setup.quotas[i])))
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
                    ctxs[c] = IoasidCtx::new(&reg, &arena, quota(q));
                    h.context_dropped(c, quota(q));
                    let samples = h.all_samples();
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

/// What the owner asked for, per context.
#[derive(Default)]
struct CtxShadow {
    quota: u32,
    /// Bound devices: handle -> (label index, no-snoop capable, attached IOASID).
    devs: BTreeMap<u16, (usize, bool, Option<u16>)>,
    /// IOASIDs: id -> (flags, page IOVA -> (page PA, prot)).
    ios: BTreeMap<u16, (IoasidFlags, BTreeMap<u64, (u64, Prot)>)>,
    pasids: BTreeSet<u32>,
    /// (device handle, PASID) -> IOASID.
    pasid_att: BTreeMap<(u16, u32), u16>,
    /// Outstanding grants per device handle.
    grants: BTreeMap<u16, u32>,
}

/// A device as the hardware sees it: (label index, PASID).
type Pair = (usize, Option<u32>);

impl CtxShadow {
    fn new(quota: u32) -> Self {
        Self {
            quota,
            ..Self::default()
        }
    }

    fn handle_of(&self, label: usize) -> Option<u16> {
        self.devs
            .iter()
            .find(|(_, d)| d.0 == label)
            .map(|(&h, _)| h)
    }

    fn in_use(&self, io: u16) -> bool {
        self.devs.values().any(|d| d.2 == Some(io)) || self.pasid_att.values().any(|&i| i == io)
    }

    /// Every (device, PASID) of this context that is attached, with its IOASID.
    fn pairs(&self) -> Vec<(Pair, u16)> {
        let mut v: Vec<_> = self
            .devs
            .values()
            .filter_map(|d| d.2.map(|io| ((d.0, None), io)))
            .collect();
        for (&(h, p), &io) in &self.pasid_att {
            if let Some(d) = self.devs.get(&h) {
                v.push(((d.0, Some(p)), io));
            }
        }
        v
    }

    /// Units the IOASID has a domain on (something attached through that unit).
    fn units_of(&self, io: u16) -> [bool; 2] {
        let mut u = [false; 2];
        for ((l, _), i) in self.pairs() {
            if i == io {
                u[usize::from(LABELS[l].0)] = true;
            }
        }
        u
    }
}

struct Harness<'h, 'm> {
    arena: &'m Arena,
    vm: &'m VtdModel<'m>,
    sm: &'m SmmuModel<'m>,
    units: [&'h dyn Iommu; 2],
    caps: [Capabilities; 2],
    shadow: [CtxShadow; CONTEXTS],
    /// Label index -> owning context.
    owner: [Option<usize>; LABELS.len()],
    fail_armed: bool,
    steps: usize,
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

impl<'h, 'm> Harness<'h, 'm> {
    fn rand(&mut self) -> u64 {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        self.seed
    }

    fn ctx_index(ctx: u8) -> usize {
        usize::from(ctx) % CONTEXTS
    }

    /// The handle of the context's device bound with label index `dev % LABELS`, or one that
    /// names no device.
    fn handle(&self, c: usize, dev: u8) -> (usize, DeviceHandle) {
        let l = usize::from(dev) % LABELS.len();
        let h = self.shadow[c].handle_of(l).unwrap_or(31);
        (l, DeviceHandle(h))
    }

    /// The context's `io % (n + 1)`-th IOASID, or one that does not exist.
    fn ioasid(&self, c: usize, io: u8) -> IoasidId {
        let ids: Vec<u16> = self.shadow[c].ios.keys().copied().collect();
        let i = usize::from(io) % (ids.len() + 1);
        IoasidId(ids.get(i).copied().unwrap_or(31))
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
                let samples = self.all_samples();
                let pairs: Vec<_> = pairs.into_iter().map(|p| (p, 0)).collect();
                self.probe_pairs(&pairs, &samples);
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // operations: each calls the layer, checks the result against the rules, updates the shadow

    fn bind(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8, no_snoop: bool) -> Touched {
        let c = Self::ctx_index(ctx);
        let l = usize::from(dev) % LABELS.len();
        let r = ctxs[c].bind(label(l), no_snoop);
        match (r, self.owner[l]) {
            (Err(Error::Busy), Some(_)) => {}
            (Ok(h), None) => {
                self.owner[l] = Some(c);
                let prev = self.shadow[c].devs.insert(h.0, (l, no_snoop, None));
                assert!(prev.is_none(), "bind reused live handle {}", h.0);
            }
            (r, owner) => panic!("bind {l} in {c} (owner {owner:?}): {r:?}"),
        }
        Touched::Nothing
    }

    fn unbind(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let s = &self.shadow[c];
        let busy = s.devs.get(&h.0).is_some_and(|d| d.2.is_some())
            || s.pasid_att.keys().any(|k| k.0 == h.0)
            || s.grants.get(&h.0).is_some_and(|&g| g > 0);
        let r = ctxs[c].unbind(h);
        match r {
            Err(Error::NoSuchDevice(_)) if !s.devs.contains_key(&h.0) => {}
            Err(Error::Busy) if busy => {}
            Ok(()) if s.devs.contains_key(&h.0) && !busy => {
                self.shadow[c].devs.remove(&h.0);
                self.owner[l] = None;
            }
            r => panic!("unbind {l} in {c} (busy {busy}): {r:?}"),
        }
        Touched::Nothing
    }

    fn alloc(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, flags: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let flags = IoasidFlags::from_bits_truncate(u32::from(flags));
        match ctxs[c].alloc(flags) {
            Ok(id) => {
                assert_eq!(ctxs[c].flags(id), Ok(flags));
                let prev = self.shadow[c].ios.insert(id.0, (flags, BTreeMap::new()));
                assert!(prev.is_none(), "alloc reused live IOASID {}", id.0);
            }
            Err(Error::Capacity(_)) => {
                assert_eq!(self.shadow[c].ios.len(), crate::ioasid::MAX_IOASIDS)
            }
            Err(e) => assert!(self.fail_armed || self.low_memory(), "alloc: {e:?}"),
        }
        Touched::Nothing
    }

    fn free(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, io: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(c, io);
        let s = &self.shadow[c];
        let r = ctxs[c].free(id);
        match r {
            Err(Error::NoSuchIoasid(_)) if !s.ios.contains_key(&id.0) => {}
            Err(Error::Busy) if s.in_use(id.0) => {}
            Ok(()) if s.ios.contains_key(&id.0) && !s.in_use(id.0) => {
                self.shadow[c].ios.remove(&id.0);
                assert_eq!(ctxs[c].flags(id), Err(Error::NoSuchIoasid(id)));
            }
            r => panic!("free {} in {c}: {r:?}", id.0),
        }
        Touched::Nothing
    }

    /// Why attaching label `l` of context `c` to `io` must fail, if the rules say it must.
    fn must_refuse(&self, c: usize, l: usize, io: u16) -> Option<&'static str> {
        let (flags, map) = self.shadow[c].ios.get(&io)?;
        let unit = usize::from(LABELS[l].0);
        if flags.contains(IoasidFlags::ENFORCE_SNOOP) && !self.caps[unit].enforce_snoop {
            return Some("ENFORCE_SNOOP on a unit without snoop control");
        }
        if unit == 0 && map.range(MSI.0..MSI.1).next().is_some() {
            return Some("a mapping in the VT-d interrupt window");
        }
        None
    }

    fn attach(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8, io: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let id = self.ioasid(c, io);
        let r = ctxs[c].attach(h, id);
        let s = &self.shadow[c];
        let Some(&(_, _, old)) = s.devs.get(&h.0) else {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
            return Touched::Nothing;
        };
        if !s.ios.contains_key(&id.0) {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        }
        let refuse = (old != Some(id.0))
            .then(|| self.must_refuse(c, l, id.0))
            .flatten();
        match r {
            Ok(()) => {
                assert!(
                    refuse.is_none(),
                    "attach of {l} succeeded despite {refuse:?}"
                );
                if let Some(d) = self.shadow[c].devs.get_mut(&h.0) {
                    d.2 = Some(id.0);
                }
            }
            Err(e) => {
                assert_ne!(old, Some(id.0), "attach to the same IOASID: {e:?}");
                // Refused for the rules' reason (or another capability the unit lacks first).
                if refuse.is_some() {
                    assert!(
                        matches!(e, Error::Incompatible { device, .. } if device == h),
                        "attach of {l} refused with {e:?} for {refuse:?}"
                    );
                }
            }
        }
        Touched::Pairs(std::vec![(l, None)])
    }

    fn attach_pasid(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        pasid: u8,
        io: u8,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let id = self.ioasid(c, io);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].attach_pasid(h, p, id);
        let s = &self.shadow[c];
        let old = s.pasid_att.get(&(h.0, p.get())).copied();
        if !s.pasids.contains(&p.get()) {
            assert_eq!(r, Err(Error::PasidNotOwned(p)));
            return Touched::Nothing;
        }
        if !s.devs.contains_key(&h.0) {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
            return Touched::Nothing;
        }
        let Some((flags, _)) = s.ios.get(&id.0) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let unit = usize::from(LABELS[l].0);
        let refuse = if !flags.contains(IoasidFlags::PASID) {
            Some(Incompatibility::NotPasidCapable)
        } else if self.caps[unit].pasid_bits == 0 {
            Some(Incompatibility::Missing(Missing::Pasid { bits: 0 }))
        } else {
            None
        };
        if let Some(reason) = refuse {
            assert_eq!(r, Err(Error::Incompatible { device: h, reason }));
            return Touched::Nothing;
        }
        let must = (old != Some(id.0))
            .then(|| self.must_refuse(c, l, id.0))
            .flatten();
        match r {
            Ok(()) => {
                assert!(
                    must.is_none(),
                    "attach_pasid of {l} succeeded despite {must:?}"
                );
                self.shadow[c].pasid_att.insert((h.0, p.get()), id.0);
            }
            Err(e) => assert_ne!(old, Some(id.0), "attach_pasid to the same IOASID: {e:?}"),
        }
        Touched::Pairs(std::vec![(l, Some(p.get()))])
    }

    fn detach(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let r = ctxs[c].detach(h);
        match self.shadow[c].devs.get_mut(&h.0) {
            None => assert_eq!(r, Err(Error::NoSuchDevice(h))),
            Some(d) if d.2.is_none() => assert_eq!(r, Err(Error::NotAttached(h))),
            Some(d) => {
                assert_eq!(r, Ok(()), "detach {l}");
                d.2 = None;
            }
        }
        Touched::Pairs(std::vec![(l, None)])
    }

    fn detach_pasid(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8, pasid: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].detach_pasid(h, p);
        let s = &mut self.shadow[c];
        if !s.devs.contains_key(&h.0) {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
        } else if s.pasid_att.remove(&(h.0, p.get())).is_some() {
            assert_eq!(r, Ok(()), "detach_pasid {l} {p}");
        } else {
            assert_eq!(r, Err(Error::NotAttached(h)));
        }
        Touched::Pairs(std::vec![(l, Some(p.get()))])
    }

    fn alloc_pasid(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let r = ctxs[c].alloc_pasid();
        let held = self.shadow[c].pasids.len() as u32;
        let quota = self.shadow[c].quota;
        match r {
            Err(Error::Quota(q)) if held >= quota && q == quota => {}
            Ok(p) if held < quota => {
                let taken = self.shadow.iter().any(|s| s.pasids.contains(&p.get()));
                assert!(!taken && p.get() != 0, "PASID {p} handed out twice");
                self.shadow[c].pasids.insert(p.get());
            }
            Err(Error::PasidExhausted) => {
                let all: usize = self.shadow.iter().map(|s| s.pasids.len()).sum();
                assert_eq!(all, (1 << PASID_BITS) - 1, "exhausted early");
            }
            r => panic!("alloc_pasid in {c} ({held} of {quota}): {r:?}"),
        }
        Touched::Nothing
    }

    fn free_pasid(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, pasid: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].free_pasid(p);
        let s = &mut self.shadow[c];
        if !s.pasids.contains(&p.get()) {
            assert_eq!(r, Err(Error::PasidNotOwned(p)));
        } else if s.pasid_att.keys().any(|k| k.1 == p.get()) {
            assert_eq!(r, Err(Error::Busy));
        } else {
            assert_eq!(r, Ok(()));
            s.pasids.remove(&p.get());
        }
        Touched::Nothing
    }

    /// (first IOVA, pages) of a range inside a region.
    fn range(region: u8, first: u16, count: u16) -> (u64, u64) {
        let base = REGIONS[usize::from(region) % REGIONS.len()];
        let first = u64::from(first) % WINDOW;
        let pages = 1 + u64::from(count) % (WINDOW - first);
        (base + first * K4, pages)
    }

    #[allow(clippy::too_many_arguments)]
    fn map(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
        pa: u16,
        prot: u8,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(c, io);
        let (start, pages) = Self::range(region, first, count);
        // Bit 15: beyond the SMMUv3 model's 44-bit output size; bit 14: the same offset in a
        // 2 MiB page as the IOVA, so that 2 MiB leaves are possible.
        let page = if pa & 0x4000 != 0 {
            u64::from(pa & 0x3f) << 9 | (start / K4 & 0x1ff)
        } else {
            u64::from(pa & 0x3fff)
        };
        let pa_start = if pa & 0x8000 != 0 {
            1 << 45
        } else {
            0x2_0000_0000
        } + page * K4;
        let prot = if prot & 0x30 == 0 {
            Prot::READ | Prot::WRITE
        } else {
            Prot::from_bits_truncate(prot)
        };
        let before = self.completions();
        let r = ctxs[c].map(
            id,
            Iova::new(start),
            PhysAddr::new(pa_start),
            pages * K4,
            prot,
        );
        let Some((_, map)) = self.shadow[c].ios.get(&id.0) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let end = start + pages * K4;
        let overlap = map.range(start..end).next().is_some();
        let units = self.shadow[c].units_of(id.0);
        let reserved = units[0] && start < MSI.1 && MSI.0 < end;
        match r {
            Ok(()) => {
                assert!(!overlap, "map over an existing mapping at {start:#x}");
                assert!(
                    !reserved,
                    "map into the VT-d interrupt window at {start:#x}"
                );
                assert!(
                    prot.intersects(Prot::READ | Prot::WRITE),
                    "map with {prot:?}"
                );
                let map = &mut self.shadow[c].ios.get_mut(&id.0).expect("IOASID").1;
                for i in 0..pages {
                    map.insert(start + i * K4, (pa_start + i * K4, prot));
                }
            }
            Err(e) if reserved => assert!(matches!(e, Error::Reserved(_)), "{e:?}"),
            Err(_) => {
                // A domain that mapped before another refused got the range back out, with
                // one flush; nothing else waits.
                let after = self.completions();
                for u in 0..2 {
                    assert!(
                        after[u] - before[u] <= u64::from(units[u]),
                        "map rollback flushes"
                    );
                }
            }
        }
        Touched::Range {
            c,
            io: id.0,
            start,
            pages,
        }
    }

    fn unmap(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(c, io);
        let (start, pages) = Self::range(region, first, count);
        let end = start + pages * K4;
        let before = self.completions();
        let r = ctxs[c].unmap(id, Iova::new(start), pages * K4);
        let after = self.completions();
        let Some((_, map)) = self.shadow[c].ios.get(&id.0) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let mapped = map.range(start..end).count() as u64;
        let units = self.shadow[c].units_of(id.0);
        match r {
            Ok(bytes) => {
                assert_eq!(
                    bytes,
                    mapped * K4,
                    "unmap at {start:#x} returned {bytes:#x}"
                );
                for u in 0..2 {
                    let waits = after[u] - before[u];
                    if units[u] && mapped > 0 {
                        assert_eq!(waits, 1, "unit {u}: completions for one unmap");
                    } else {
                        assert!(waits <= u64::from(units[u]), "unit {u}: {waits} waits");
                    }
                }
                let map = &mut self.shadow[c].ios.get_mut(&id.0).expect("IOASID").1;
                let gone: Vec<u64> = map.range(start..end).map(|(&k, _)| k).collect();
                for k in gone {
                    map.remove(&k);
                }
            }
            // A split that needed a page the arena refused, or a range beyond the input size
            // of a domain (the SMMUv3's 44 bits): every domain got the range back.
            Err(e) => assert!(
                self.fail_armed || self.low_memory() || (units[1] && end > 1 << 44),
                "unmap: {e:?}"
            ),
        }
        Touched::Range {
            c,
            io: id.0,
            start,
            pages,
        }
    }

    /// Grants incoherent DMA and runs the next `hold % 8` operations with the grant held.
    fn grant<'c>(
        &mut self,
        ctxs: &'c [Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        hold: u8,
        it: &mut core::slice::Iter<'_, Op>,
    ) {
        let c = Self::ctx_index(ctx);
        let (l, h) = self.handle(c, dev);
        let r: Result<IncoherentDmaGrant<'c>, Error> = ctxs[c].allow_incoherent_dma(h);
        let g = match (r, self.shadow[c].devs.get(&h.0)) {
            (Err(Error::NoSuchDevice(_)), None) => return,
            (Err(Error::NotNoSnoopCapable(_)), Some(d)) if !d.1 => return,
            (Ok(g), Some(d)) if d.1 => g,
            (r, d) => panic!("grant for {l} in {c} ({d:?}): {r:?}"),
        };
        assert_eq!(g.device(), h);
        *self.shadow[c].grants.entry(h.0).or_default() += 1;
        self.after_step(ctxs);
        for _ in 0..hold % 8 {
            let Some(op) = it.next() else { break };
            match *op {
                // The grant borrows its context: dropping one is what the types forbid here.
                Op::DropCtx { .. } => {}
                Op::Grant { ctx, dev, hold } => self.grant(ctxs, ctx, dev, hold, it),
                _ => self.step(ctxs, op),
            }
            self.after_step(ctxs);
        }
        drop(g);
        *self.shadow[c].grants.entry(h.0).or_default() -= 1;
    }

    /// The shadow side of dropping context `c` (the caller replaced it).
    fn context_dropped(&mut self, c: usize, quota: u32) {
        for o in self.owner.iter_mut() {
            if *o == Some(c) {
                *o = None;
            }
        }
        self.shadow[c] = CtxShadow::new(quota);
    }

    // ---------------------------------------------------------------------------------------
    // checks

    fn completions(&self) -> [u64; 2] {
        [self.vm.stats().wait, self.sm.stats().syncs]
    }

    /// The arena is nearly out of pages: `NoMemory` is then a legitimate answer.
    fn low_memory(&self) -> bool {
        let s = self.arena.stats();
        s.live_bytes + (256 << 12) > 16 << 20
    }

    fn after_step(&mut self, ctxs: &[Ctx<'_, '_>]) {
        self.steps += 1;
        for (c, s) in self.shadow.iter().enumerate() {
            let granted = s.grants.values().any(|&g| g > 0);
            assert_eq!(ctxs[c].incoherent_dma_allowed(), granted, "grants of {c}");
        }
        // One domain per (IOASID, unit) with attachments.
        for u in 0..2 {
            let want: usize = self
                .shadow
                .iter()
                .map(|s| s.ios.keys().filter(|&&io| s.units_of(io)[u]).count())
                .sum();
            assert_eq!(domains(self.units[u]), want, "unit {u}: domains");
        }
        assert_eq!(self.arena.bad_frees(), [], "bad frees");
        if self.steps % FULL_CHECK_EVERY == 0 {
            let pairs = self.all_pairs();
            let samples = self.all_samples();
            self.probe_pairs(&pairs, &samples);
        }
    }

    /// Every (device, PASID) the fuzzer may have used, with a dummy IOASID.
    fn all_pairs(&self) -> Vec<(Pair, u16)> {
        let mut v = Vec::new();
        for l in 0..LABELS.len() {
            v.push(((l, None), 0));
            for p in 1..=3 {
                v.push(((l, Some(p)), 0));
            }
        }
        for s in &self.shadow {
            for ((l, p), _) in s.pairs() {
                if let Some(p) = p {
                    v.push(((l, Some(p)), 0));
                }
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Up to [`PROBES`] pages drawn from every IOASID's mappings, plus a few fixed ones.
    fn all_samples(&mut self) -> Vec<u64> {
        let mapped: Vec<u64> = self
            .shadow
            .iter()
            .flat_map(|s| s.ios.values().flat_map(|(_, m)| m.keys().copied()))
            .collect();
        let mut v = std::vec![REGIONS[0], REGIONS[2] + 0x20_0000];
        for _ in 0..PROBES.min(mapped.len()) {
            let i = (self.rand() % mapped.len() as u64) as usize;
            v.push(mapped[i]);
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Probes every device of IOASID `io` of context `c` over a range (sampled), and the
    /// record there.
    fn probe_range(&mut self, ctxs: &[Ctx<'_, '_>], c: usize, io: u16, start: u64, pages: u64) {
        let mut at = std::vec![start.saturating_sub(K4), start + pages * K4];
        let step = (pages / PROBES as u64).max(1);
        at.extend((0..pages).step_by(step as usize).map(|i| start + i * K4));
        at.push(start + (pages - 1) * K4);
        let pairs: Vec<_> = self.shadow[c]
            .pairs()
            .into_iter()
            .filter(|&(_, i)| i == io)
            .collect();
        self.probe_pairs(&pairs, &at);
        if let Some((_, map)) = self.shadow[c].ios.get(&io) {
            for &a in &at {
                let got = ctxs[c]
                    .translate(IoasidId(io), Iova::new(a))
                    .expect("IOASID exists");
                let want = map.get(&a).map(|&(pa, prot)| (pa, prot));
                assert_eq!(
                    got.map(|m| (m.pa.get(), m.prot)),
                    want,
                    "record of {io} at {a:#x}"
                );
            }
        }
    }

    /// What a (device, PASID) pair is attached to: (context, IOASID).
    fn attachment(&self, pair: Pair) -> Option<(usize, u16)> {
        let (l, p) = pair;
        let c = self.owner[l]?;
        let s = &self.shadow[c];
        let h = s.handle_of(l)?;
        let io = match p {
            None => s.devs.get(&h)?.2?,
            Some(p) => *s.pasid_att.get(&(h, p))?,
        };
        Some((c, io))
    }

    /// Probes each pair at each address (faults only fill the models' fault records and
    /// event queue, which overflow harmlessly).
    fn probe_pairs(&self, pairs: &[(Pair, u16)], at: &[u64]) {
        for &(pair, _) in pairs {
            let att = self.attachment(pair);
            for &a in at {
                self.probe(pair, att, a);
            }
        }
    }

    /// One device access at `iova`, checked against the shadow.
    fn probe(&self, (l, pasid): Pair, att: Option<(usize, u16)>, iova: u64) {
        let want = att.and_then(|(c, io)| {
            let (flags, map) = self.shadow[c].ios.get(&io)?;
            let &(pa, prot) = map.get(&iova)?;
            Some((pa, prot, flags.contains(IoasidFlags::ENFORCE_SNOOP)))
        });
        let (unit, id) = LABELS[l];
        for access in [Access::READ, Access::WRITE] {
            let got = if unit == 0 {
                self.vm
                    .translate(id as u16, pasid, iova, access)
                    .ok()
                    .map(|t| (t.pa, t.snoop))
            } else {
                self.sm
                    .translate(id, pasid, iova, access)
                    .ok()
                    .map(|t| (t.pa, t.cacheable_wb))
            };
            let needed = if access.write {
                Prot::WRITE
            } else {
                Prot::READ
            };
            let what = || {
                std::format!("unit {unit} device {id:#x} PASID {pasid:?} {access:?} at {iova:#x}")
            };
            match (got, want) {
                (Some((pa, snooped)), Some((want_pa, prot, enforce))) => {
                    assert_eq!(pa, want_pa, "{}: wrong page", what());
                    assert!(prot.contains(needed), "{}: allowed beyond {prot:?}", what());
                    assert!(
                        !prot.contains(Prot::PRIV),
                        "{}: user access to a privileged page",
                        what()
                    );
                    assert!(snooped || !enforce, "{}: snoop downgraded", what());
                }
                (Some((pa, _)), None) => {
                    panic!(
                        "{}: translates to {pa:#x}, nothing asked for (attached {att:?})",
                        what()
                    )
                }
                (None, Some((_, prot, _))) => assert!(
                    !prot.contains(needed) || prot.contains(Prot::PRIV),
                    "{}: mapped {prot:?} but faults",
                    what()
                ),
                (None, None) => {}
            }
        }
    }

    fn final_check(&mut self, ctxs: &[Ctx<'_, '_>]) {
        let pairs = self.all_pairs();
        for (pair, _) in pairs {
            let Some((c, io)) = self.attachment(pair) else {
                continue;
            };
            let pages: Vec<u64> = self.shadow[c].ios[&io].1.keys().copied().collect();
            let step = (pages.len() / 64).max(1);
            for &a in pages.iter().step_by(step) {
                self.probe(pair, Some((c, io)), a);
            }
        }
        let _ = ctxs;
    }
}
