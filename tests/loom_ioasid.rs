//! Model checking of the IOASID layer's copy protocol ([`IoasidCtx::copy`]: the hold on both
//! IOASIDs, `Ioasid::copying`, `source_run`'s check) with [`loom`].
//!
//! Built only with `--cfg loom`, which makes the context's locks loom's (`src/sync.rs`) and the
//! record's table memory loom's atomics (`src/pgtable/sync.rs`):
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release --test loom_ioasid -- --test-threads=1 --nocapture
//! ```
//!
//! Each scenario runs a copy of two runs (two source pages whose physical addresses are not
//! contiguous) on one thread and one or two other threads calling the context on the same
//! IOASIDs: `free` and `alloc` in the copy's source's and destination's places, `map` /
//! `unmap` / `UNMAP_ALL` into the destination range, a second copy reading that range. Each
//! thread records what it called, with the arguments it used (an IOASID number `alloc`
//! returned) and what came back. In every interleaving loom explores:
//! - every call's answer and the final state must be those of *some* order of the calls one at
//!   a time, each whole (`check_serial`): a small model of the calls (`Model`) replays every
//!   order of the threads' histories that keeps each thread's own order (no real-time order:
//!   loom has no clock). `Busy` passes anywhere as a call that changed nothing: a call
//!   overlapping a copy in flight gets it, which calls one at a time never meet. The final
//!   state compared is, for each IOASID slot, whether it exists and what its record maps at
//!   each page of the window;
//! - every domain maps exactly what its IOASID's record maps at the end (`IoasidCtx::audit`,
//!   the unit's domains walked page by page);
//! - at every step, the unit is never asked to map into or unmap from a domain it freed, and
//!   the record's tables are only reached in pages the allocator handed out and did not take
//!   back.
//!
//! The unit is a model (`ModelUnit`): each domain a map from page to translation under one
//! loom mutex, so the scenarios explore the context's interleavings (its `state` lock, the
//! copy's runs, the record's table walks) without the engine's own, which `tests/loom.rs`
//! covers. It can refuse every map touching one IOVA (as a unit out of memory), which makes a
//! copy fail in its second run and undo the first.
#![cfg(loom)]

use std::collections::BTreeMap;
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use iommu_engine::ioasid::{
    DeviceLabel, Error, IoasidCtx, IoasidFlags, IoasidId, PasidAllocator, Registry, UnitId,
    UNMAP_ALL,
};
use iommu_engine::iommu::{
    Capabilities, DeviceId, DomainConfig, DomainHandle, DomainPages, Error as IommuError, Iommu,
    Pasid, ReclaimScope, Source, Sources,
};
use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr};
use iommu_engine::pgtable::{
    DirtyRead, Gather, InvalidationComplete, IovaRange, Leaf, Mapping, Prot,
};
use loom::sync::atomic::AtomicU64;

const K4: u64 = 0x1000;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// Pages of an IOASID or a domain: IOVA -> (PA, permissions).
type Pages = BTreeMap<u64, (u64, Prot)>;
/// An IOASID slot as the final check sees it: `None` if it holds no IOASID, else the
/// record's translation of each page of `WINDOW`.
type Slot = Option<Vec<Option<(u64, Prot)>>>;
/// The pages whose translation the final check compares.
const WINDOW: [u64; 3] = [0x1000, 0x2000, 0x3000];
/// The copy's source: two pages, two runs (their physical addresses are not contiguous).
const SRC: [(u64, u64); 2] = [(0x1000, 0x10_0000), (0x2000, 0x30_0000)];
/// Where the record's table pages seem to be.
const TABLE_BASE: u64 = 0x4000_0000;

/// The PASID allocator the registry borrows: no scenario allocates a PASID.
static PASIDS: PasidAllocator = PasidAllocator::new(20);

// ------------------------------------------------------------------------------------------
// the allocator of the records' tables: pages that are arrays of loom atomics

struct PageRec {
    words: Box<[AtomicU64]>,
    live: bool,
}

/// Table memory is reached only as loom `AtomicU64`s under loom (`src/pgtable/sync.rs`): each
/// page is an array of them, at `TABLE_BASE` + 4 KiB times its number.
struct Alloc {
    pages: StdMutex<Vec<PageRec>>,
}

impl Alloc {
    fn rec(pa: u64) -> Option<(usize, usize)> {
        let off = pa.checked_sub(TABLE_BASE)?;
        Some(((off / K4) as usize, ((off % K4) / 8) as usize))
    }
}

// SAFETY: each page is 512 zeroed `AtomicU64`s kept alive (freed pages too) until the
// allocator is dropped, after the context; `phys_to_virt` maps the address of each word of a
// live page to that word.
unsafe impl PageAllocator for Alloc {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        assert_eq!(
            size_log2, 12,
            "the record asked for a page of 2^{size_log2} bytes"
        );
        let words: Box<[AtomicU64]> = (0..512).map(|_| AtomicU64::new(0)).collect();
        let va = NonNull::from(&words[0]).cast::<u8>();
        let mut pages = self.pages.lock().unwrap();
        let pa = TABLE_BASE + pages.len() as u64 * K4;
        pages.push(PageRec { words, live: true });
        Some(Page {
            pa: PhysAddr::new(pa),
            va,
        })
    }

    unsafe fn free(&self, page: Page, _size_log2: u32) {
        let mut pages = self.pages.lock().unwrap();
        let (i, w) = Alloc::rec(page.pa.get()).expect("freed page outside the allocator");
        assert_eq!(w, 0, "freed {:#x}: not a page address", page.pa.get());
        assert!(pages[i].live, "page {:#x} freed twice", page.pa.get());
        pages[i].live = false;
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let pages = self.pages.lock().unwrap();
        let (i, w) = Alloc::rec(pa.get())?;
        let rec = pages.get(i)?;
        assert!(
            rec.live,
            "a table walk reached {:#x}, a freed page",
            pa.get()
        );
        rec.words.get(w).map(|a| NonNull::from(a).cast::<u8>())
    }
}

// ------------------------------------------------------------------------------------------
// the unit: domains as maps from page to translation

#[derive(Default)]
struct UnitState {
    /// Each domain's pages: IOVA -> (PA, permissions). `None`: freed.
    domains: Vec<Option<Pages>>,
    attached: Vec<(DeviceId, DomainHandle)>,
}

struct ModelUnit {
    state: loom::sync::Mutex<UnitState>,
    /// Every map whose range holds this IOVA is refused, nothing written.
    refuse_map_at: Option<u64>,
    alloc: &'static Alloc,
}

impl ModelUnit {
    fn domain<R>(&self, d: DomainHandle, what: &str, f: impl FnOnce(&mut Pages) -> R) -> R {
        let mut st = self.state.lock().unwrap();
        let dom = st
            .domains
            .get_mut(usize::from(d.0))
            .and_then(Option::as_mut);
        // The context reads its domains' handles under its lock and frees them under the
        // write lock: a call on a freed domain is a defect, not a unit error.
        f(dom.unwrap_or_else(|| panic!("{what} of domain {d:?}, which the unit freed")))
    }
}

fn pages(iova: u64, len: u64) -> impl Iterator<Item = u64> {
    (iova & !(K4 - 1)..iova.saturating_add(len)).step_by(K4 as usize)
}

impl Iommu for ModelUnit {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            ias: 48,
            oas: 46,
            page_sizes: K4,
            pasid_bits: 0,
            enforce_snoop: false,
            dirty_tracking: false,
            nesting: false,
            coherent_walk: true,
            coherent_dma: true,
            supervisor: false,
            sources: Sources::all(Source::Register("model")),
        }
    }
    fn reserved_regions(&self) -> &[IovaRange] {
        &[]
    }
    fn domain_alloc(&self, _cfg: &DomainConfig) -> Result<DomainHandle, IommuError> {
        let mut st = self.state.lock().unwrap();
        st.domains.push(Some(BTreeMap::new()));
        Ok(DomainHandle(st.domains.len() as u16 - 1))
    }
    fn domain_geometry(&self, _d: DomainHandle) -> Result<(u32, u64), IommuError> {
        Ok((48, K4))
    }
    fn domain_free(&self, d: DomainHandle) -> Result<(), IommuError> {
        let mut st = self.state.lock().unwrap();
        assert!(
            !st.attached.iter().any(|a| a.1 == d),
            "freed attached {d:?}"
        );
        st.domains[usize::from(d.0)] = None;
        Ok(())
    }
    fn map(
        &self,
        d: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), IommuError> {
        let (iova, pa) = (iova.get(), pa.get());
        self.domain(d, "map", |dom| {
            if self
                .refuse_map_at
                .is_some_and(|at| iova <= at && at - iova < len)
            {
                return Err(IommuError::NoMemory);
            }
            if let Some(at) = pages(iova, len).find(|p| dom.contains_key(p)) {
                let iova = Iova::new(at);
                return Err(iommu_engine::pgtable::Error::Overlap { iova }.into());
            }
            for p in pages(iova, len) {
                dom.insert(p, (pa + (p - iova), prot));
            }
            Ok(())
        })
    }
    fn unmap(
        &self,
        d: DomainHandle,
        iova: Iova,
        len: u64,
        _g: &mut Gather,
    ) -> Result<u64, IommuError> {
        let end = iova.get().saturating_add(len);
        self.domain(d, "unmap", |dom| {
            let gone: Vec<u64> = dom.range(iova.get()..end).map(|(&p, _)| p).collect();
            for p in &gone {
                dom.remove(p);
            }
            Ok(gone.len() as u64 * K4)
        })
    }
    fn flush(&self, _d: DomainHandle, g: &mut Gather) -> Result<(), IommuError> {
        // SAFETY: nothing caches the model's translations.
        g.release(self.alloc, unsafe { InvalidationComplete::assume() })
            .map_err(Into::into)
    }
    fn reclaim(&self, _d: DomainHandle, _scope: ReclaimScope<'_>) -> Result<usize, IommuError> {
        Ok(0)
    }
    fn table_pages(&self, _d: DomainHandle) -> Result<DomainPages, IommuError> {
        Ok(DomainPages::default())
    }
    fn query(&self, d: DomainHandle, iova: Iova) -> Option<Mapping> {
        let page = iova.get() & !(K4 - 1);
        self.domain(d, "query", |dom| dom.get(&page).copied())
            .map(|(pa, prot)| Mapping {
                pa: PhysAddr::new(pa + (iova.get() - page)),
                prot,
                size_log2: 12,
            })
    }
    fn for_each_mapping(
        &self,
        d: DomainHandle,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), IommuError> {
        let start = iova.get() & !(K4 - 1);
        let end = iova.get().saturating_add(len);
        let leaves: Vec<Leaf> = self.domain(d, "walk", |dom| {
            dom.range(start..end)
                .map(|(&p, &(pa, prot))| Leaf {
                    iova: Iova::new(p),
                    pa: PhysAddr::new(pa),
                    prot,
                    size_log2: 12,
                })
                .collect()
        });
        leaves.into_iter().for_each(f);
        Ok(())
    }
    fn read_dirty(
        &self,
        _d: DomainHandle,
        _iova: Iova,
        _len: u64,
        _how: DirtyRead,
        _sink: &mut dyn FnMut(Iova, u32),
        _g: &mut Gather,
    ) -> Result<(), IommuError> {
        Ok(())
    }
    fn set_dirty_tracking(&self, _d: DomainHandle, _on: bool) -> Result<(), IommuError> {
        Ok(())
    }
    fn attach(
        &self,
        dev: DeviceId,
        _pasid: Option<Pasid>,
        d: DomainHandle,
    ) -> Result<(), IommuError> {
        let mut st = self.state.lock().unwrap();
        st.attached.retain(|a| a.0 != dev);
        st.attached.push((dev, d));
        Ok(())
    }
    fn detach(&self, dev: DeviceId, _pasid: Option<Pasid>) -> Result<(), IommuError> {
        let mut st = self.state.lock().unwrap();
        let n = st.attached.len();
        st.attached.retain(|a| a.0 != dev);
        if st.attached.len() == n {
            return Err(IommuError::NotAttached(dev));
        }
        Ok(())
    }
}

// ------------------------------------------------------------------------------------------
// the world of one interleaving

/// The allocator, the unit, the registry and the context of one interleaving, shared by its
/// threads. The references between them are `'static` for loom's threads: each box stays put
/// until the world is dropped, in field order (the context, which borrows the rest, first).
struct World {
    ctx: Box<IoasidCtx<'static, 'static, Alloc>>,
    _registry: Box<Registry<'static>>,
    unit: Box<ModelUnit>,
    _alloc: Box<Alloc>,
}

/// How a scenario's world starts.
#[derive(Clone, Copy)]
struct Setup {
    /// A device attached to B (IOASID 1), so that B has a domain on the unit.
    device_on_b: bool,
    /// The unit refuses every map holding this IOVA.
    refuse_map_at: Option<u64>,
    /// IOASID C (2) allocated too.
    c: bool,
    /// B maps `B_PAGE` before the threads start: a copy into B's `[0x1000, 0x3000)` fails in
    /// its second run and undoes its first.
    b_page: bool,
}

/// What B maps when `Setup::b_page` is set: (IOVA, PA).
const B_PAGE: (u64, u64) = (0x2000, 0x90_0000);

const A: IoasidId = IoasidId(0);
const B: IoasidId = IoasidId(1);
const C: IoasidId = IoasidId(2);

impl World {
    fn new(s: Setup) -> Self {
        let alloc = Box::new(Alloc {
            pages: StdMutex::new(Vec::new()),
        });
        // SAFETY: the box is dropped last (`World`'s field order), and never moved out.
        let a: &'static Alloc = unsafe { &*(&*alloc as *const Alloc) };
        let unit = Box::new(ModelUnit {
            state: loom::sync::Mutex::new(UnitState::default()),
            refuse_map_at: s.refuse_map_at,
            alloc: a,
        });
        // SAFETY: as for the allocator: dropped after the registry and the context.
        let u: &'static ModelUnit = unsafe { &*(&*unit as *const ModelUnit) };
        let registry = Box::new(Registry::new(&[u as &dyn Iommu], &PASIDS).unwrap());
        // SAFETY: as above: dropped after the context.
        let r: &'static Registry<'static> = unsafe { &*(&*registry as *const Registry<'static>) };
        // The context is ~32 KiB: built in place, not on loom's small thread stack.
        let layout = std::alloc::Layout::new::<IoasidCtx<'static, 'static, Alloc>>();
        // SAFETY: the layout is not zero-sized; `init_in_place` writes every field of the
        // fresh allocation, which the box then owns with the same layout.
        let ctx = unsafe {
            let p = std::alloc::alloc(layout).cast::<IoasidCtx<'static, 'static, Alloc>>();
            let p = NonNull::new(p).expect("no memory for the context");
            IoasidCtx::init_in_place(p, r, a, 0);
            Box::from_raw(p.as_ptr())
        };
        assert_eq!(ctx.alloc(IoasidFlags::empty()).unwrap(), A);
        assert_eq!(ctx.alloc(IoasidFlags::empty()).unwrap(), B);
        if s.c {
            assert_eq!(ctx.alloc(IoasidFlags::empty()).unwrap(), C);
        }
        for (iova, pa) in SRC {
            ctx.map(A, Iova::new(iova), PhysAddr::new(pa), K4, RW)
                .unwrap();
        }
        if s.b_page {
            let (iova, pa) = B_PAGE;
            ctx.map(B, Iova::new(iova), PhysAddr::new(pa), K4, RW)
                .unwrap();
        }
        if s.device_on_b {
            let label = DeviceLabel {
                unit: UnitId(0),
                id: DeviceId(1),
            };
            ctx.attach(ctx.bind(label, false).unwrap(), B).unwrap();
        }
        World {
            ctx,
            _registry: registry,
            unit,
            _alloc: alloc,
        }
    }

    /// For each IOASID slot: `None` if it holds no IOASID, else its record's translation of
    /// each page of the window.
    fn observe(&self) -> Vec<Slot> {
        (0..4)
            .map(|slot| {
                let id = IoasidId(slot);
                let mut pages = Vec::new();
                for p in WINDOW {
                    match self.ctx.translate(id, Iova::new(p)) {
                        Err(Error::NoSuchIoasid(_)) => return None,
                        Err(e) => panic!("translate({id:?}, {p:#x}): {e:?}"),
                        Ok(m) => pages.push(m.map(|m| (m.pa.get(), m.prot))),
                    }
                }
                Some(pages)
            })
            .collect()
    }

    /// Every domain maps what its IOASID's record maps (the context's own audit), and the unit
    /// holds no domain beyond those of B.
    fn audit(&self) {
        for slot in 0..4 {
            match self.ctx.audit(IoasidId(slot)) {
                Ok(()) | Err(Error::NoSuchIoasid(_)) => {}
                Err(e) => panic!("audit of IOASID {slot}: {e:?}"),
            }
        }
        let live = self
            .unit
            .state
            .lock()
            .unwrap()
            .domains
            .iter()
            .flatten()
            .count();
        assert!(live <= 1, "{live} domains live on the unit");
    }
}

// ------------------------------------------------------------------------------------------
// the calls, their answers, and the serial model

#[derive(Clone, Copy, Debug)]
enum Call {
    Alloc,
    Free(IoasidId),
    Map(IoasidId, u64, u64, u64),
    Unmap(IoasidId, u64, u64),
    Copy {
        src: IoasidId,
        src_iova: u64,
        dst: IoasidId,
        dst_iova: u64,
        len: u64,
    },
}

/// A call's answer, as the model can predict it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `Ok`, with the IOASID `alloc` returned or the bytes `unmap` did.
    Ok(u64),
    Busy,
    NoSuchIoasid,
    NotMapped,
    /// Any other refusal (a range already mapped, a unit's refusal).
    Refused,
}

fn answer<T>(r: Result<T, Error>, ok: impl FnOnce(T) -> u64) -> Answer {
    match r {
        Ok(v) => Answer::Ok(ok(v)),
        Err(Error::Busy) => Answer::Busy,
        Err(Error::NoSuchIoasid(_)) => Answer::NoSuchIoasid,
        Err(Error::NotMapped(_)) => Answer::NotMapped,
        Err(_) => Answer::Refused,
    }
}

impl Call {
    fn run(self, ctx: &IoasidCtx<'_, '_, Alloc>) -> Answer {
        match self {
            Call::Alloc => answer(ctx.alloc(IoasidFlags::empty()), |id| u64::from(id.0)),
            Call::Free(id) => answer(ctx.free(id), |()| 0),
            Call::Map(id, iova, pa, len) => answer(
                ctx.map(id, Iova::new(iova), PhysAddr::new(pa), len, RW),
                |()| 0,
            ),
            Call::Unmap(id, iova, len) => answer(ctx.unmap(id, Iova::new(iova), len), |n| n),
            Call::Copy {
                src,
                src_iova,
                dst,
                dst_iova,
                len,
            } => answer(
                ctx.copy(src, Iova::new(src_iova), dst, Iova::new(dst_iova), len),
                |()| 0,
            ),
        }
    }
}

/// What a thread called and heard, in its order.
type History = Vec<(Call, Answer)>;

/// A thread's calls as it makes them: `run` makes one and records it.
struct Thread<'w> {
    world: &'w World,
    history: History,
}

impl Thread<'_> {
    fn run(&mut self, call: Call) -> Answer {
        let a = call.run(&self.world.ctx);
        self.history.push((call, a));
        a
    }
}

/// The IOASIDs one call at a time: per slot, `None` or (pages, has a device).
#[derive(Clone, PartialEq, Eq, Debug)]
struct Model {
    slots: Vec<Option<(Pages, bool)>>,
    refuse_map_at: Option<u64>,
}

impl Model {
    fn new(s: Setup) -> Self {
        let a: Pages = SRC.iter().map(|&(i, p)| (i, (p, RW))).collect();
        let mut slots = vec![None; 4];
        slots[0] = Some((a, false));
        let b = if s.b_page {
            BTreeMap::from([(B_PAGE.0, (B_PAGE.1, RW))])
        } else {
            BTreeMap::new()
        };
        slots[1] = Some((b, s.device_on_b));
        if s.c {
            slots[2] = Some((BTreeMap::new(), false));
        }
        Model {
            slots,
            refuse_map_at: s.refuse_map_at,
        }
    }

    /// Maps `pages` (IOVA -> translation) into `id` whole, or answers why not.
    fn map_pages(&mut self, id: IoasidId, pages: &Pages) -> Answer {
        let Some((have, device)) = self.slots[usize::from(id.0)].as_mut() else {
            return Answer::NoSuchIoasid;
        };
        let refused = *device && self.refuse_map_at.is_some_and(|at| pages.contains_key(&at));
        if refused || pages.keys().any(|p| have.contains_key(p)) {
            return Answer::Refused;
        }
        have.extend(pages);
        Answer::Ok(0)
    }

    fn apply(&mut self, call: Call) -> Answer {
        match call {
            Call::Alloc => {
                let slot = self.slots.iter().position(Option::is_none).unwrap();
                self.slots[slot] = Some((BTreeMap::new(), false));
                Answer::Ok(slot as u64)
            }
            Call::Free(id) => match &self.slots[usize::from(id.0)] {
                None => Answer::NoSuchIoasid,
                Some((_, true)) => Answer::Busy,
                Some(_) => {
                    self.slots[usize::from(id.0)] = None;
                    Answer::Ok(0)
                }
            },
            Call::Map(id, iova, pa, len) => {
                let pages = pages(iova, len).map(|p| (p, (pa + p - iova, RW))).collect();
                self.map_pages(id, &pages)
            }
            Call::Unmap(id, iova, len) => {
                let Some((have, _)) = self.slots[usize::from(id.0)].as_mut() else {
                    return Answer::NoSuchIoasid;
                };
                let end = iova.saturating_add(len);
                let gone: Vec<u64> = have.range(iova..end).map(|(&p, _)| p).collect();
                for p in &gone {
                    have.remove(p);
                }
                Answer::Ok(gone.len() as u64 * K4)
            }
            Call::Copy {
                src,
                src_iova,
                dst,
                dst_iova,
                len,
            } => {
                if self.slots[usize::from(dst.0)].is_none() {
                    return Answer::NoSuchIoasid;
                }
                let Some((have, _)) = &self.slots[usize::from(src.0)] else {
                    return Answer::NoSuchIoasid;
                };
                let mut pages = BTreeMap::new();
                for p in self::pages(src_iova, len) {
                    let Some(&t) = have.get(&p) else {
                        return Answer::NotMapped;
                    };
                    pages.insert(p - src_iova + dst_iova, t);
                }
                self.map_pages(dst, &pages)
            }
        }
    }

    /// What `World::observe` reads in this state.
    fn observe(&self) -> Vec<Slot> {
        self.slots
            .iter()
            .map(|s| {
                s.as_ref()
                    .map(|(have, _)| WINDOW.iter().map(|p| have.get(p).copied()).collect())
            })
            .collect()
    }
}

/// Whether some order of the histories' calls (each thread's kept) gives every answer heard
/// and the final state seen, one call at a time (`Busy`: a call that changed nothing).
fn serial(model: &Model, histories: &[History], next: &mut [usize], seen: &[Slot]) -> bool {
    if next.iter().zip(histories).all(|(&n, h)| n == h.len()) {
        return model.observe() == seen;
    }
    for t in 0..histories.len() {
        let Some(&(call, heard)) = histories[t].get(next[t]) else {
            continue;
        };
        let mut m = model.clone();
        let fits = match heard {
            Answer::Busy => !matches!(call, Call::Alloc),
            _ => m.apply(call) == heard,
        };
        if fits {
            next[t] += 1;
            let ok = serial(&m, histories, next, seen);
            next[t] -= 1;
            if ok {
                return true;
            }
        }
    }
    false
}

fn check_serial(s: Setup, histories: &[History], seen: &[Slot]) {
    let mut next = vec![0; histories.len()];
    assert!(
        serial(&Model::new(s), histories, &mut next, seen),
        "no order of the calls one at a time gives what they answered and left:\n\
         calls and answers per thread: {histories:x?}\n\
         IOASID slots at the end (pages {WINDOW:x?}): {seen:x?}"
    );
}

// ------------------------------------------------------------------------------------------
// running a scenario

type Body = fn(&mut Thread<'_>);

fn model_builder() -> loom::model::Builder {
    let mut b = loom::model::Builder::new();
    if b.preemption_bound.is_none() {
        b.preemption_bound = Some(2);
    }
    b.max_branches = b.max_branches.max(200_000);
    b
}

fn run(name: &str, setup: Setup, threads: &'static [Body]) {
    let iterations = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let it = iterations.clone();
    let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        model_builder().check(move || {
            it.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let world = Arc::new(World::new(setup));
            let handles: Vec<_> = threads
                .iter()
                .map(|&body| {
                    let w = world.clone();
                    loom::thread::Builder::new()
                        .stack_size(1 << 20)
                        .spawn(move || {
                            let mut t = Thread {
                                world: &w,
                                history: Vec::new(),
                            };
                            body(&mut t);
                            t.history
                        })
                        .unwrap()
                })
                .collect();
            let histories: Vec<History> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            world.audit();
            check_serial(setup, &histories, &world.observe());
        })
    }));
    println!(
        "loom scenario {name}: {} after {} interleavings in {:.1} s (preemption bound {:?})",
        if checked.is_ok() { "passed" } else { "FAILED" },
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        model_builder().preemption_bound
    );
    if let Err(p) = checked {
        std::panic::resume_unwind(p);
    }
}

/// The copy of both source pages (two runs) from A into `dst` at the same IOVAs.
fn copy_a_to(dst: IoasidId) -> Call {
    Call::Copy {
        src: A,
        src_iova: 0x1000,
        dst,
        dst_iova: 0x1000,
        len: 2 * K4,
    }
}

// ------------------------------------------------------------------------------------------
// the scenarios

/// (a) A copy from A into B, while another thread frees A and allocates an IOASID (which takes
/// A's number when it is free) mapping other pages at the copy's source range, and a third
/// frees B and allocates one (taking B's number, or A's). Each free is `Busy` while the copy
/// holds the IOASID, or comes whole before or after it: the copy never reads its second run
/// from an IOASID allocated in A's place (B would then map pages of two IOASIDs), never maps a
/// run into one allocated in B's place (it would map half of the copy), never undoes there.
#[test]
fn copy_vs_free_and_reuse_of_source_and_destination() {
    run(
        "copy_vs_free_and_reuse_of_source_and_destination",
        Setup {
            device_on_b: false,
            refuse_map_at: None,
            c: false,
            b_page: false,
        },
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                if t.run(Call::Free(A)) == Answer::Ok(0) {
                    if let Answer::Ok(id) = t.run(Call::Alloc) {
                        t.run(Call::Map(IoasidId(id as u16), 0x1000, 0x50_0000, 2 * K4));
                    }
                }
            },
            |t| {
                if t.run(Call::Free(B)) == Answer::Ok(0) {
                    t.run(Call::Alloc);
                }
            },
        ],
    );
}

/// (a') A copy from A into B that fails in its second run (B maps that page already) and
/// undoes its first, while another thread frees B, allocates an IOASID (which takes B's
/// number) and maps a page of its own where the copy's first run went. The free is `Busy`
/// until the copy's undo is done: the copy never maps its first run into B and its second
/// into the new IOASID, and its undo never unmaps the new IOASID's page (review 19 finding 4,
/// which the test `a_copy_undo_never_unmaps_an_ioasid_allocated_in_its_place` pins at one
/// pause point).
#[test]
fn copy_undo_vs_free_and_reuse_of_its_destination() {
    run(
        "copy_undo_vs_free_and_reuse_of_its_destination",
        Setup {
            device_on_b: false,
            refuse_map_at: None,
            c: false,
            b_page: true,
        },
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                if t.run(Call::Free(B)) == Answer::Ok(0) {
                    if let Answer::Ok(id) = t.run(Call::Alloc) {
                        t.run(Call::Map(IoasidId(id as u16), 0x1000, 0x70_0000, K4));
                    }
                }
            },
        ],
    );
}

/// (b) A copy from A into B (B attached: its domain takes each run) whose second run the unit
/// refuses, so the copy undoes its first, while another thread unmaps the first page and maps
/// its own page there. The unmap and the map are `Busy` while the copy holds the range, or
/// come whole before or after it: the undo never erases the other thread's mapping (a map
/// that returned `Ok`, lost), and never leaves a page in B's domain its record does not name.
#[test]
fn copy_undo_vs_unmap_and_map_in_its_range() {
    run(
        "copy_undo_vs_unmap_and_map_in_its_range",
        Setup {
            device_on_b: true,
            refuse_map_at: Some(0x2000),
            c: false,
            b_page: false,
        },
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Unmap(B, 0x1000, K4));
                t.run(Call::Map(B, 0x1000, 0x70_0000, K4));
            },
        ],
    );
}

/// (b') A copy from A into B (attached) while another thread unmaps all of B
/// (`UNMAP_ALL`): `Busy` while the copy holds its range, or whole before or after it. B never
/// ends with half of the copy (the unmap taking the first run between the runs, the copy
/// mapping the second and returning `Ok`).
#[test]
fn copy_vs_unmap_all_of_its_destination() {
    run(
        "copy_vs_unmap_all_of_its_destination",
        Setup {
            device_on_b: true,
            refuse_map_at: None,
            c: false,
            b_page: false,
        },
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Unmap(B, 0, UNMAP_ALL));
            },
        ],
    );
}

/// (c) A copy from A into B (attached) whose second run the unit refuses (so it undoes its
/// first), while another copy reads B's first page into C. The second copy is `Busy` while
/// the first holds the range, or finds nothing (`NotMapped`) before or after it: C never maps
/// a page of a copy that failed (a page no successful call mapped, which the first copy's
/// undo does not reach).
#[test]
fn copy_from_a_range_another_copy_fills_and_undoes() {
    run(
        "copy_from_a_range_another_copy_fills_and_undoes",
        Setup {
            device_on_b: true,
            refuse_map_at: Some(0x2000),
            c: true,
            b_page: false,
        },
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Copy {
                    src: B,
                    src_iova: 0x1000,
                    dst: C,
                    dst_iova: 0x1000,
                    len: K4,
                });
            },
        ],
    );
}
