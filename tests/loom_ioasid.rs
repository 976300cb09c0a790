//! Model checking of the IOASID layer's calls that run beside one another with [`loom`]: the
//! copy protocol ([`IoasidCtx::copy`]: the hold on both IOASIDs, `Ioasid::copying`,
//! `source_run`'s check), attach and detach (a domain joining or leaving an IOASID), the
//! context's reserved regions and `alloc_iova`.
//!
//! Built only with `--cfg loom`, which makes the context's locks and the IOASID layer's own
//! atomics (`Pending`'s mask, `ReclaimLog`, the registry's counters) loom's (`src/sync.rs`) and
//! the record's table memory loom's atomics (`src/pgtable/sync.rs`):
//!
//! ```sh
//! RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=2 \
//!   cargo test --release --test loom_ioasid -- --test-threads=1 --nocapture
//! ```
//!
//! Each scenario runs two or three threads calling the context on the same IOASIDs: a copy of
//! two runs (two source pages whose physical addresses are not contiguous) beside `free` and
//! `alloc` in the copy's source's and destination's places, `map` / `unmap` / `UNMAP_ALL` into
//! the destination range, a second copy reading that range, an attach or a detach of the one
//! device, a reservation of part of the destination range, `alloc_iova`; maps and unmaps beside
//! an attach or a detach; an attach of the device elsewhere beside a copy; two `alloc_iova`s;
//! an unmap whose flush the unit fails beside a map, and, retried until it returns `Ok` before
//! its page goes back, beside a copy into or out of its IOASID, a detach then an attach back,
//! an attach elsewhere then a free of the IOASID; an unmap whose flushes fail in the domains
//! of two units beside an attach that builds the second, and beside the detaches and the free
//! of an IOASID with a domain on each unit (one owing); a free of another IOASID holding a
//! domain on the same unit; an `UNMAP_ALL` waiting in turn (IOVA stripes) beside narrow calls.
//! Each thread records what it called, with the arguments it used (an IOASID number `alloc`
//! returned, an IOVA `alloc_iova` returned), what came back, and when it started and returned
//! (`ModelUnit::clock`). In every interleaving loom explores:
//! - every call's answer and the final state must be those of *some* order of the calls one at
//!   a time, each whole (`check_serial`): a small model of the calls (`Model`) replays every
//!   order of the threads' histories that keeps each thread's own order. `Busy` passes as a
//!   call that changed nothing only for the calls whose docs give it beside a copy in flight
//!   (`free`, `map`, `unmap`, `copy`), and only when another thread copies: calls one at a
//!   time never meet a copy in flight (`busy_beside_a_copy`); `attach`, `detach`,
//!   `reserve_region`, `alloc_iova` and `alloc` must answer as the model does. `alloc_iova`
//!   may answer any aligned range nothing maps or reserves at its place in the order (it
//!   passes over a copy's destination range), and fails only where the model says it must
//!   (the IOASID gone, its reservations full). The model refuses a map into a reserved region
//!   and a reservation over a mapping or an IOVA reservation, fills an attached IOASID's new
//!   domain with its pages (the unit may refuse them), and an attach of a device attached
//!   elsewhere switches it (`attach`'s docs); a domain whose last user left while it owed an
//!   invalidation is kept (`free_domain`), takes the IOASID's maps and unmaps, is used again
//!   by an attach, and is freed by `free` once settled (`InvalidationPending` while not); a
//!   copy answering `InvalidationPending` is tried with and without one more flush of its
//!   destination's domains (its undo's, when its first run went in before the owed
//!   invalidation: `Model::undo_flush`). The
//!   final state compared is, for each IOASID slot, whether it exists and what its record maps
//!   at each page of the window, where the context attaches the device
//!   (`IoasidCtx::attachment`), and which IOASIDs hold a domain (`IoasidCtx::table_pages`);
//! - a reservation or an `alloc_iova` that started and returned while a copy certainly held
//!   its destination range (between its first run reaching the unit and the unit's next write
//!   in the range: the clock orders them) neither reserves nor returns any of that range
//!   (`check_copy_hold`): the calls one at a time cannot tell, as they may order the call
//!   before the copy;
//! - every domain maps exactly what its IOASID's record maps at the end (`IoasidCtx::audit`,
//!   the unit's domains walked page by page), the unit's live domains are exactly those the
//!   context holds, and the device is attached on the unit to its IOASID's domain if the
//!   context attaches it, else to none (`World::audit`);
//! - each scenario names outcomes some interleaving must reach (`outcomes`, `run`'s
//!   `required`: "attach ok filling 1" is an attach between a copy's runs), so that a change
//!   that makes the race unreachable fails instead of passing;
//! - at every step, the unit is never asked to map into, unmap from, flush, walk or attach a
//!   device to a domain it freed (a detach's last user frees it), nor to free one twice, while
//!   a device is attached to it or while it owes an invalidation, nor to map a page whose
//!   invalidation it owes (unmapped, no flush of the domain completed since), and the record's
//!   tables are only reached in pages the allocator handed out and did not take back;
//! - a physical page the caller gives back (`Thread::reuse`: after an unmap of it returned
//!   `Ok`, or a free of its IOASID did, `Thread::free_and_reuse`) is mapped by no domain and
//!   owed by none (a stale IOTLB entry a device could still use).
//!
//! The unit is a model (`ModelUnit`): each domain a map from page to translation under one
//! loom mutex, so the scenarios explore the context's interleavings (its `state` lock, the
//! copy's runs, the record's table walks, an IOASID's IOVA reservations) without the engine's
//! own, which `tests/loom.rs` covers. It can refuse every map touching one IOVA (as a unit out
//! of memory), which makes a copy fail in its second run and undo the first, and an attach's
//! fill fail, and fail the flushes owing a page a number of times (`Setup::failing_flushes`),
//! which the model replays (`InvalidationPending`). It notes every write, and every domain it
//! builds or frees, with the clock's tick (`ModelUnit::events`). With `Setup::second_unit` the
//! registry holds it twice, as units 0 and 1, each with a device of the context.
#![cfg(loom)]

use std::collections::{BTreeMap, BTreeSet};
use std::ptr::NonNull;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Instant;

use iommu_engine::ioasid::{
    DeviceHandle, DeviceLabel, Error, IoasidCtx, IoasidFlags, IoasidId, PasidAllocator, Registry,
    UnitId, MAX_IOVA_RESERVATIONS, UNMAP_ALL,
};
use iommu_engine::iommu::{
    Capabilities, DeviceId, DomainConfig, DomainHandle, DomainPages, Error as IommuError, Iommu,
    Pasid, ReclaimScope, Source, Sources,
};
use iommu_engine::iopf::{
    FaultDrain, FaultKind, FaultPerm, FaultSequence, PageFault, PageResponse, QueuedFault,
    ResponseCode,
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
/// The final state as the check sees it: each IOASID slot, the IOASID slot each device (unit
/// 0's, unit 1's) is attached to (`None`: detached), and the (IOASID slot, unit) pairs that
/// hold a domain (a device's, and one its last user left while it owed an invalidation:
/// `free_domain` keeps it, without users, until it is settled and freed with the IOASID or
/// used again).
type Seen = (Vec<Slot>, [Option<usize>; 2], BTreeSet<(usize, usize)>);
/// The pages whose translation the final check compares.
const WINDOW: [u64; 7] = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000, 0x7000];
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
    /// Per domain, the pages unmapped since its last completed flush, with the physical page
    /// each translated to: their invalidation is owed (a device may still reach that physical
    /// page through a stale IOTLB entry), and no map may land on them meanwhile.
    owing: BTreeMap<u16, BTreeMap<u64, u64>>,
    /// Per page, how many more flushes owing it fail (`Setup::failing_flushes`).
    failing: BTreeMap<u64, u32>,
    /// Per domain, the unit it is on: 1 if built for the second device (`DeviceId(2)`).
    unit_of: Vec<usize>,
    /// `Setup::failing_on_unit1`: unit 1's domains' failing flushes, if counted apart.
    failing1: Option<BTreeMap<u64, u32>>,
    /// Page requests raised and not drained yet, oldest first.
    faults: std::collections::VecDeque<PageFault>,
    /// Page requests drained so far (the last one's sequence).
    consumed: u64,
    /// Every page response sent, in order.
    responses: Vec<PageResponse>,
    /// Each drain hands out at most one fault, so that two dispatchers may each take one.
    drain_one: bool,
}

struct ModelUnit {
    state: loom::sync::Mutex<UnitState>,
    /// Every map whose range holds this IOVA is refused, nothing written.
    refuse_map_at: Option<u64>,
    alloc: &'static Alloc,
    /// The order of the interleaving's events: calls starting and returning (`Thread::run`)
    /// and the unit's writes (`events`). Not loom's: it adds no interleavings, and loom runs
    /// one thread at a time, so it orders what happened in real time.
    clock: std::sync::atomic::AtomicUsize,
    /// Every map the unit made and every unmap it was asked for, with its tick.
    events: StdMutex<Vec<(usize, UnitEvent)>>,
}

/// A write of the unit into a domain, or a domain built or freed, as `ModelUnit::events`
/// keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitEvent {
    Map { iova: u64, pa: u64 },
    Unmap { iova: u64 },
    Alloc,
    Free,
}

impl ModelUnit {
    fn tick(&self) -> usize {
        self.clock
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn note(&self, e: UnitEvent) {
        let t = self.tick();
        // Poisoned by a check's panic that printed the events: the context's drop (which frees
        // domains) notes on, rather than panicking in a destructor and aborting.
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events.push((t, e));
    }

    fn domain<R>(&self, d: DomainHandle, what: &str, f: impl FnOnce(&mut Pages) -> R) -> R {
        self.domain_owing(d, what, |dom, _, _| f(dom))
    }

    /// As [`Self::domain`], with the pages whose invalidation the domain owes and the
    /// flushes still to fail, under the same lock (one scheduling point per call of the unit).
    fn domain_owing<R>(
        &self,
        d: DomainHandle,
        what: &str,
        f: impl FnOnce(&mut Pages, &mut BTreeMap<u64, u64>, &mut BTreeMap<u64, u32>) -> R,
    ) -> R {
        let mut st = self.state.lock().unwrap();
        let UnitState {
            domains,
            owing,
            failing,
            unit_of,
            failing1,
            ..
        } = &mut *st;
        let failing = match failing1 {
            Some(f1) if unit_of.get(usize::from(d.0)) == Some(&1) => f1,
            _ => failing,
        };
        let dom = domains.get_mut(usize::from(d.0)).and_then(Option::as_mut);
        // The context reads its domains' handles under its lock and frees them under the
        // write lock: a call on a freed domain is a defect, not a unit error.
        let dom = dom.unwrap_or_else(|| panic!("{what} of domain {d:?}, which the unit freed"));
        f(dom, owing.entry(d.0).or_default(), failing)
    }
}

impl ModelUnit {
    /// How a device could still reach physical page `pa`: a live domain mapping it, or a
    /// domain owing the invalidation of a translation to it (a stale IOTLB entry); `None` if
    /// nothing does, and the page may go back to its owner's allocator.
    fn reaches(&self, pa: u64) -> Option<String> {
        let st = self.state.lock().unwrap();
        for (d, dom) in st.domains.iter().enumerate() {
            let Some(dom) = dom else { continue };
            if let Some((iova, _)) = dom.iter().find(|(_, &(p, _))| p == pa) {
                return Some(format!("domain {d} maps it at {iova:#x}"));
            }
        }
        (st.owing.iter())
            .find_map(|(d, o)| o.iter().find(|(_, &p)| p == pa).map(|(iova, _)| (d, iova)))
            .map(|(d, iova)| {
                format!("domain {d} owes the invalidation of its translation at {iova:#x}")
            })
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
    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, IommuError> {
        let mut st = self.state.lock().unwrap();
        st.domains.push(Some(BTreeMap::new()));
        st.unit_of
            .push(usize::from(cfg.device == Some(DeviceId(2))));
        self.note(UnitEvent::Alloc);
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
        // `pending.rs`: a domain that owes an invalidation is never freed (its tag and the
        // table pages its owed gather holds would be reused while a device may still cache
        // translations through them).
        if let Some(owed) = st.owing.get(&d.0).filter(|o| !o.is_empty()).cloned() {
            // Released first: see `World::audit`.
            drop(st);
            panic!("freed {d:?}, which still owes the invalidation of {owed:x?}");
        }
        let dom = &mut st.domains[usize::from(d.0)];
        assert!(dom.is_some(), "{d:?} freed twice");
        *dom = None;
        self.note(UnitEvent::Free);
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
        self.domain_owing(d, "map", |dom, owing, _| {
            if let Some(p) = owing.keys().find(|&&p| iova <= p && p - iova < len) {
                // `pending.rs`: a new mapping never lands where a stale translation may be.
                panic!("map of {d:?} at {p:#x}, whose invalidation the unit still owes");
            }
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
            self.note(UnitEvent::Map { iova, pa });
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
        let n = self.domain_owing(d, "unmap", |dom, owing, _| {
            let gone: Vec<(u64, u64)> = dom
                .range(iova.get()..end)
                .map(|(&p, &(pa, _))| (p, pa))
                .collect();
            for (p, _) in &gone {
                dom.remove(p);
            }
            let n = gone.len() as u64 * K4;
            owing.extend(gone);
            n
        });
        self.note(UnitEvent::Unmap { iova: iova.get() });
        Ok(n)
    }
    fn flush(&self, d: DomainHandle, g: &mut Gather) -> Result<(), IommuError> {
        // Every invalidation the domain owes is reissued; it fails while one of its pages is
        // to fail again.
        let failed = self.domain_owing(d, "flush", |_, owed, failing| {
            let mut failed = false;
            for p in owed.keys() {
                if let Some(n) = failing.get_mut(p).filter(|n| **n > 0) {
                    *n -= 1;
                    failed = true;
                }
            }
            if !failed {
                owed.clear();
            }
            failed
        });
        if failed {
            return Err(IommuError::Timeout {
                what: "the model's invalidation",
            });
        }
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
        assert!(
            st.domains
                .get(usize::from(d.0))
                .is_some_and(Option::is_some),
            "attach of {dev:?} to {d:?}, which the unit freed"
        );
        st.attached.retain(|a| a.0 != dev);
        st.attached.push((dev, d));
        Ok(())
    }
    fn drain_page_faults(&self, out: &mut [PageFault]) -> Result<FaultDrain, IommuError> {
        let mut st = self.state.lock().unwrap();
        let mut d = FaultDrain::default();
        let most = if st.drain_one { 1 } else { out.len() };
        while d.reported < most.min(out.len()) {
            let Some(f) = st.faults.pop_front() else {
                break;
            };
            st.consumed += 1;
            out[d.reported] = PageFault {
                sequence: st.consumed,
                ..f
            };
            d.reported += 1;
        }
        d.more = !st.faults.is_empty();
        d.reached = FaultSequence {
            page_requests: st.consumed,
            stalls: 0,
        };
        Ok(d)
    }
    fn page_fault_fence(&self) -> Result<Option<FaultSequence>, IommuError> {
        let st = self.state.lock().unwrap();
        Ok(Some(FaultSequence {
            page_requests: st.consumed + st.faults.len() as u64,
            stalls: 0,
        }))
    }
    fn page_response(&self, response: &PageResponse) -> Result<(), IommuError> {
        self.state.lock().unwrap().responses.push(*response);
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
    /// The device on unit 0, bound to the context (attached to B with `Setup::device_on_b`).
    dev: DeviceHandle,
    /// The device on unit 1 (`Setup::second_unit`), bound to the context.
    dev2: Option<DeviceHandle>,
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
    /// B maps `B_SOURCE` before the threads start: the source of a copy out of B.
    b_source: bool,
    /// The registry holds the unit twice (unit 1 is the same model: its domains are numbered
    /// with unit 0's), and a second device, on unit 1, is bound to the context
    /// (`Call::AttachSecond`): an IOASID then has a domain on each unit.
    second_unit: bool,
    /// The second device (`Setup::second_unit`) attached to B too: B has a domain on each
    /// unit (unit 0's first, in `Ioasid::domains` position 0).
    second_on_b: bool,
    /// C maps `C_PAGE` before the threads start (with `Setup::c`).
    c_page: bool,
    /// Per page, how many flushes of a domain on unit 1 owing its invalidation fail, counted
    /// apart from unit 0's (`failing_flushes` then counts unit 0's only; the model unit knows
    /// a domain's unit by the device it was built for). `None`: one count for both units.
    failing_on_unit1: Option<&'static [(u64, u32)]>,
    /// Per page, how many flushes of a domain owing its invalidation fail (`Timeout`) before
    /// one completes.
    failing_flushes: &'static [(u64, u32)],
}

impl Setup {
    /// Nothing but A and B: no device, no page, no failure (each scenario sets what it needs).
    const NONE: Setup = Setup {
        device_on_b: false,
        refuse_map_at: None,
        c: false,
        b_page: false,
        b_source: false,
        second_unit: false,
        second_on_b: false,
        c_page: false,
        failing_on_unit1: None,
        failing_flushes: &[],
    };
}

/// What B maps when `Setup::b_source` is set: (IOVA, PA) of two pages whose physical addresses
/// are not contiguous (a copy of both is two runs).
const B_SOURCE: [(u64, u64); 2] = [(0x4000, 0xa0_0000), (0x5000, 0xc0_0000)];

/// What B maps when `Setup::b_page` is set: (IOVA, PA).
const B_PAGE: (u64, u64) = (0x2000, 0x90_0000);

/// What C maps when `Setup::c_page` is set: (IOVA, PA).
const C_PAGE: (u64, u64) = (0x3000, 0xb0_0000);

/// The IOASID slots the model follows: A, B, C and the IOASIDs the tests allocate after them.
const SLOTS: usize = 6;

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
            state: loom::sync::Mutex::new(UnitState {
                failing: s.failing_flushes.iter().copied().collect(),
                failing1: (s.failing_on_unit1).map(|f| f.iter().copied().collect()),
                ..UnitState::default()
            }),
            refuse_map_at: s.refuse_map_at,
            alloc: a,
            clock: std::sync::atomic::AtomicUsize::new(0),
            events: StdMutex::new(Vec::new()),
        });
        // SAFETY: as for the allocator: dropped after the registry and the context.
        let u: &'static ModelUnit = unsafe { &*(&*unit as *const ModelUnit) };
        let units: &[&dyn Iommu] = if s.second_unit { &[u, u] } else { &[u] };
        let registry = Box::new(Registry::new(units, &PASIDS).unwrap());
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
        if s.c_page {
            let (iova, pa) = C_PAGE;
            ctx.map(C, Iova::new(iova), PhysAddr::new(pa), K4, RW)
                .unwrap();
        }
        for (iova, pa) in B_SOURCE.iter().filter(|_| s.b_source) {
            ctx.map(B, Iova::new(*iova), PhysAddr::new(*pa), K4, RW)
                .unwrap();
        }
        let label = DeviceLabel {
            unit: UnitId(0),
            id: DeviceId(1),
        };
        let dev = ctx.bind(label, false).unwrap();
        if s.device_on_b {
            ctx.attach(dev, B).unwrap();
        }
        let label2 = DeviceLabel {
            unit: UnitId(1),
            id: DeviceId(2),
        };
        let dev2 = s.second_unit.then(|| ctx.bind(label2, false).unwrap());
        if let Some(dev2) = dev2.filter(|_| s.second_on_b) {
            ctx.attach(dev2, B).unwrap();
        }
        World {
            ctx,
            dev,
            dev2,
            _registry: registry,
            unit,
            _alloc: alloc,
        }
    }

    /// For each IOASID slot: `None` if it holds no IOASID, else its record's translation of
    /// each page of the window; where the context's books attach the device (confirmed:
    /// the model unit never faults, so no attach is left unsettled); the slots holding a
    /// domain.
    fn observe(&self) -> Seen {
        let slots = (0..SLOTS as u16)
            .map(|slot| {
                let id = self.ctx.ioasid_in_slot(slot);
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
            .collect();
        let with_domain = (self.held().into_iter())
            .map(|(slot, unit, _)| (slot, unit))
            .collect();
        (slots, self.attached(), with_domain)
    }

    /// The domains the context holds: (IOASID slot, unit, domain) (`IoasidCtx::table_pages`).
    fn held(&self) -> Vec<(usize, usize, usize)> {
        let mut held = Vec::new();
        for slot in 0..SLOTS as u16 {
            match self.ctx.table_pages(self.ctx.ioasid_in_slot(slot)) {
                Err(Error::NoSuchIoasid(_)) => {}
                Err(e) => panic!("table_pages({slot}): {e:?}"),
                Ok(p) => held.extend((p.domains.iter().flatten()).map(|u| {
                    (
                        usize::from(slot),
                        usize::from(u.unit.0),
                        usize::from(u.domain.0),
                    )
                })),
            }
        }
        held
    }

    /// The IOASID slot the context's books attach each device to (unit 0's, unit 1's).
    fn attached(&self) -> [Option<usize>; 2] {
        [Some(self.dev), self.dev2].map(|dev| {
            let at = self.ctx.attachment(dev?, None).unwrap();
            assert!(
                !at.is_some_and(|a| a.unsettled.is_some()),
                "attachment {at:?} unsettled: the model unit confirms every attach"
            );
            at.map(|a| usize::from(a.ioasid.slot()))
        })
    }

    /// Every domain maps what its IOASID's record maps (the context's own audit); the unit's
    /// live domains are exactly those the context holds (none leaked, none freed while held),
    /// and the device is attached on the unit to the domain of the IOASID the books attach it
    /// to, else to none (a detach, or an attach elsewhere, frees the domain it left unless
    /// that domain owes an invalidation: `Seen` says which IOASIDs hold one).
    fn audit(&self, histories: &[History]) {
        for slot in 0..SLOTS as u16 {
            match self.ctx.audit(self.ctx.ioasid_in_slot(slot)) {
                Ok(()) | Err(Error::NoSuchIoasid(_)) => {}
                Err(e) => panic!(
                    "audit of IOASID {slot}: {e:?}\ncalls per thread: {histories:x?}\n\
                     unit's writes: {:x?}",
                    self.unit.events.lock().unwrap()
                ),
            }
        }
        let attached = self.attached();
        let held = self.held();
        let mut held_domains: Vec<usize> = held.iter().map(|&(_, _, d)| d).collect();
        held_domains.sort_unstable();
        // Device i (id i + 1) on unit i: attached to its IOASID's domain on that unit.
        let mut device_domain: Vec<(u32, usize)> = (held.iter())
            .filter(|&&(slot, unit, _)| attached.get(unit) == Some(&Some(slot)))
            .map(|&(_, unit, d)| (unit as u32 + 1, d))
            .collect();
        device_domain.sort_unstable();
        let devices = attached.iter().flatten().count();
        // Read, then the unit's lock released before asserting: a panic holding it would
        // poison it, and the context's drop (which detaches) would panic again and abort.
        let (live, on_unit) = {
            let st = self.unit.state.lock().unwrap();
            let live: Vec<usize> = (st.domains.iter().enumerate())
                .filter_map(|(d, dom)| dom.as_ref().map(|_| d))
                .collect();
            let mut on_unit: Vec<(u32, usize)> = (st.attached.iter())
                .map(|a| (a.0 .0, usize::from(a.1 .0)))
                .collect();
            on_unit.sort_unstable();
            (live, on_unit)
        };
        assert!(
            live == held_domains && on_unit == device_domain && device_domain.len() == devices,
            "the books attach the device to {attached:?} and hold domains {held:?} (IOASID \
             slot, unit, domain), the unit has live domains {live:?} and the devices attached \
             to \
             {on_unit:?}\ncalls per thread: {histories:x?}"
        );
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
    /// The world's device (on unit 0) attached to the IOASID.
    Attach(IoasidId),
    /// The second device (on unit 1, `Setup::second_unit`) attached to the IOASID.
    AttachSecond(IoasidId),
    /// The world's device detached.
    Detach,
    /// The second device (`Setup::second_unit`) detached.
    DetachSecond,
    /// `reserve_region` of `[start, end)`.
    Reserve(u64, u64),
    /// `alloc_iova` of this many bytes, 4 KiB aligned.
    AllocIova(IoasidId, u64),
}

/// A call's answer, as the model can predict it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    /// `Ok`, with the IOASID `alloc` returned, the bytes `unmap` did or the IOVA `alloc_iova`
    /// returned.
    Ok(u64),
    Busy,
    NoSuchIoasid,
    NotMapped,
    /// `InvalidationPending`: a unit did not confirm an invalidation.
    Pending,
    /// Any other refusal (a range already mapped or reserved, a unit's refusal, a device not
    /// attached).
    Refused,
}

fn answer<T>(r: Result<T, Error>, ok: impl FnOnce(T) -> u64) -> Answer {
    match r {
        Ok(v) => Answer::Ok(ok(v)),
        Err(Error::Busy) => Answer::Busy,
        Err(Error::NoSuchIoasid(_)) => Answer::NoSuchIoasid,
        Err(Error::NotMapped(_)) => Answer::NotMapped,
        Err(Error::InvalidationPending { .. }) => Answer::Pending,
        Err(_) => Answer::Refused,
    }
}

impl Call {
    fn run(self, w: &World) -> Answer {
        let ctx = &w.ctx;
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
            Call::Attach(id) => answer(ctx.attach(w.dev, id), |()| 0),
            Call::AttachSecond(id) => {
                let dev = w
                    .dev2
                    .expect("a second device without `Setup::second_unit`");
                answer(ctx.attach(dev, id), |()| 0)
            }
            Call::Detach => answer(ctx.detach(w.dev), |()| 0),
            Call::DetachSecond => {
                let dev = w
                    .dev2
                    .expect("a second device without `Setup::second_unit`");
                answer(ctx.detach(dev), |()| 0)
            }
            Call::Reserve(start, end) => answer(
                ctx.reserve_region(IovaRange {
                    start: Iova::new(start),
                    end: Iova::new(end),
                }),
                |()| 0,
            ),
            Call::AllocIova(id, size) => answer(ctx.alloc_iova(id, size, K4), |v| v.get()),
        }
    }
}

/// One call a thread made: what it called, what it heard, and the ticks (`ModelUnit::clock`)
/// at which it started and returned.
#[derive(Clone, Copy, Debug)]
struct Step {
    call: Call,
    heard: Answer,
    ticks: (usize, usize),
}

/// What a thread called and heard, in its order.
type History = Vec<Step>;

/// A thread's calls as it makes them: `run` makes one and records it.
struct Thread<'w> {
    world: &'w World,
    history: History,
}

impl Thread<'_> {
    fn run(&mut self, call: Call) -> Answer {
        let begin = self.world.unit.tick();
        let heard = call.run(self.world);
        let end = self.world.unit.tick();
        self.history.push(Step {
            call,
            heard,
            ticks: (begin, end),
        });
        heard
    }
}

impl Thread<'_> {
    /// The caller gives physical page `pa` back to its allocator (anything may then be put
    /// there): no device may reach it any more, through a domain that maps it or one that owes
    /// the invalidation of a translation to it (`ModelUnit::reaches`). Not a call of the
    /// context: the serial check does not see it.
    fn reuse(&self, pa: u64) {
        if let Some(how) = self.world.unit.reaches(pa) {
            panic!(
                "page {pa:#x} reused after {:x?}, but {how}\ncalls: {:x?}",
                self.history.last(),
                self.history
            );
        }
    }

    /// Unmaps `B_PAGE` from B until the unmap returns `Ok` (at most four times: each
    /// `InvalidationPending` of a retry is a flush that failed, and no scenario fails more
    /// than three), then gives its page back: the rule after `InvalidationPending` (`unmap`'s
    /// docs: do not reuse the pages until a retry returns `Ok`). A retry answering
    /// `NoSuchIoasid` means another thread freed B, and `free` returns `Ok` only once every
    /// invalidation B owed completed (`free_domains` settles before it frees a domain), so the
    /// page is the caller's then too.
    /// Frees `id`; if that returns `Ok`, gives physical page `pa`, which `id` mapped or
    /// unmapped with an invalidation owed, back: `free` settles everything the IOASID's units
    /// owe before it frees any domain and returns `Ok` only once each is freed (`unmap`'s
    /// docs: a free's `Ok`, like a retried unmap's, lets the pages be reused).
    fn free_and_reuse(&mut self, id: IoasidId, pa: u64) {
        if let Answer::Ok(_) = self.run(Call::Free(id)) {
            self.reuse(pa);
        }
    }

    fn unmap_b_page_until_ok(&mut self) {
        for _ in 0..4 {
            match self.run(Call::Unmap(B, B_PAGE.0, K4)) {
                Answer::Pending => {}
                Answer::Ok(_) | Answer::NoSuchIoasid => return self.reuse(B_PAGE.1),
                _ => return,
            }
        }
    }
}

/// An IOASID one call at a time: its pages and its IOVA reservations (`alloc_iova`).
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct ModelIoasid {
    pages: Pages,
    iovas: Vec<(u64, u64)>,
}

/// An IOASID's domain on a unit, one call at a time.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
struct ModelDomain {
    /// The unit it is on (0, or 1 with `Setup::second_unit`).
    unit: usize,
    /// The pages the domain owes an invalidation of, as the unit keeps them.
    owing: BTreeSet<u64>,
    /// The context's books: an invalidation is owed (`Pending`'s mask).
    owes: bool,
}

/// The IOASIDs one call at a time, where the device is attached, the IOASIDs' domains and
/// the context's reserved regions.
#[derive(Clone, PartialEq, Eq, Debug)]
struct Model {
    /// The first [`SLOTS`] IOASID slots, then one never filled: where an ID of an earlier
    /// generation (`Model::at`) points.
    slots: Vec<Option<ModelIoasid>>,
    /// Each slot's generation: how many times its IOASID was freed (`IoasidId`).
    gens: [u32; SLOTS],
    /// The slot after the one allocated last: an alloc takes the first free slot from there
    /// (`IoasidCtx::alloc`, round the table: no test allocates often enough to go round).
    next: usize,
    /// The slot each device (unit 0's, unit 1's) is attached to.
    attached: [Option<usize>; 2],
    /// The IOASIDs' domains by (IOASID slot, position in `Ioasid::domains`, the order every
    /// call goes through them): an attached device's, and one its last user left while it
    /// owed an invalidation (kept without users, `free_domain`). Every domain of an IOASID
    /// takes its maps and unmaps.
    domains: BTreeMap<(usize, usize), ModelDomain>,
    reserved: Vec<(u64, u64)>,
    refuse_map_at: Option<u64>,
    /// Per page, how many more flushes owing it fail.
    failing: BTreeMap<u64, u32>,
    /// Per page, how many more flushes of a domain on unit 1 owing it fail, if counted apart
    /// (`Setup::failing_on_unit1`).
    failing1: Option<BTreeMap<u64, u32>>,
}

fn overlap((s, e): (u64, u64), start: u64, end: u64) -> bool {
    s < end && start < e
}

impl Model {
    /// The slot `id` names: its own if of the slot's current generation, else the one that
    /// never holds an IOASID.
    fn at(&self, id: IoasidId) -> usize {
        let slot = usize::from(id.slot());
        if self.gens.get(slot) == Some(&id.generation()) {
            slot
        } else {
            SLOTS
        }
    }

    fn new(s: Setup) -> Self {
        let a: Pages = SRC.iter().map(|&(i, p)| (i, (p, RW))).collect();
        let mut slots = vec![None; SLOTS + 1];
        slots[0] = Some(ModelIoasid {
            pages: a,
            iovas: Vec::new(),
        });
        let mut b = if s.b_page {
            BTreeMap::from([(B_PAGE.0, (B_PAGE.1, RW))])
        } else {
            BTreeMap::new()
        };
        b.extend((B_SOURCE.iter().filter(|_| s.b_source)).map(|&(i, p)| (i, (p, RW))));
        slots[1] = Some(ModelIoasid {
            pages: b,
            iovas: Vec::new(),
        });
        if s.c {
            let c = (s.c_page.then_some((C_PAGE.0, (C_PAGE.1, RW)))).into_iter();
            slots[2] = Some(ModelIoasid {
                pages: c.collect(),
                iovas: Vec::new(),
            });
        }
        let on_unit1 = ModelDomain {
            unit: 1,
            ..ModelDomain::default()
        };
        Model {
            next: if s.c { 3 } else { 2 },
            slots,
            gens: [0; SLOTS],
            attached: [s.device_on_b.then_some(1), s.second_on_b.then_some(1)],
            domains: (s.device_on_b.then_some(((1, 0), ModelDomain::default())))
                .into_iter()
                .chain(s.second_on_b.then_some(((1, 1), on_unit1)))
                .collect(),
            reserved: Vec::new(),
            refuse_map_at: s.refuse_map_at,
            failing: s.failing_flushes.iter().copied().collect(),
            failing1: (s.failing_on_unit1).map(|f| f.iter().copied().collect()),
        }
    }

    /// The keys of `slot`'s domains, in the order the calls go through them.
    fn domains_of(&self, slot: usize) -> Vec<(usize, usize)> {
        (self.domains.range((slot, 0)..(slot + 1, 0)))
            .map(|(&k, _)| k)
            .collect()
    }

    /// The key of `slot`'s domain on `unit`.
    fn domain_on(&self, slot: usize, unit: usize) -> Option<(usize, usize)> {
        (self.domains.range((slot, 0)..(slot + 1, 0)))
            .find(|(_, d)| d.unit == unit)
            .map(|(&k, _)| k)
    }

    /// The flush of domain `key`, as `ModelUnit::flush` answers it: every owed page
    /// reissued, failing while one of them is to fail again.
    fn flush(&mut self, key: (usize, usize)) -> bool {
        let Some(d) = self.domains.get_mut(&key) else {
            return true;
        };
        let mut failed = false;
        let failing = match &mut self.failing1 {
            Some(f1) if d.unit == 1 => f1,
            _ => &mut self.failing,
        };
        for p in &d.owing {
            if let Some(n) = failing.get_mut(p).filter(|n| **n > 0) {
                *n -= 1;
                failed = true;
            }
        }
        if !failed {
            d.owing.clear();
        }
        !failed
    }

    /// What an IOASID's domains owe is flushed again before a map or an unmap goes on, and
    /// before a domain is freed (`pending.rs`: every owing domain, in order, each failure
    /// kept owed); `false` if one failed.
    fn settle(&mut self, slot: usize) -> bool {
        let mut settled = true;
        for key in self.domains_of(slot) {
            if !self.domains[&key].owes {
                continue;
            }
            let flushed = self.flush(key);
            if let Some(d) = self.domains.get_mut(&key) {
                d.owes = !flushed;
            }
            settled &= flushed;
        }
        settled
    }

    /// A failed copy's undo of its earlier runs: each domain of `slot` unmaps them and is
    /// flushed, a failure owed (`owe_undo`); a flush that completes leaves the books owing
    /// until the next settle (the run's failed settle kept the slot owed).
    fn undo_flush(&mut self, slot: usize) {
        for key in self.domains_of(slot) {
            if !self.flush(key) {
                if let Some(d) = self.domains.get_mut(&key) {
                    d.owes = true;
                }
            }
        }
    }

    /// `free_domain` of domain `key`: freed once its IOASID's settle left it owing nothing,
    /// else kept without users; `true` if freed.
    fn free_domain(&mut self, key: (usize, usize)) -> bool {
        self.settle(key.0);
        let freed = !self.domains[&key].owes;
        if freed {
            self.domains.remove(&key);
        }
        freed
    }

    /// The last use of `slot`'s domain on `unit` is gone (`release_domain`): `free_domain`;
    /// the caller's answer does not change either way.
    fn release(&mut self, slot: usize, unit: usize) {
        if let Some(key) = self.domain_on(slot, unit) {
            self.free_domain(key);
        }
    }

    /// Whether the unit refuses a domain's map of `pages`.
    fn unit_refuses(&self, pages: &Pages) -> bool {
        self.refuse_map_at.is_some_and(|at| pages.contains_key(&at))
    }

    /// Maps `pages` (IOVA -> translation) into `id` whole, or answers why not: a reserved
    /// range, then the record's refusal (a page mapped), then what is owed (settled once the
    /// record took the range: `map_domains`), then the unit's refusal. (A copy's later run
    /// meets the record's refusal after its first run settled: no scenario copies over a
    /// mapped page while an invalidation is owed.)
    fn map_pages(&mut self, id: IoasidId, pages: &Pages) -> Answer {
        let slot = self.at(id);
        let refused = !self.domains_of(slot).is_empty() && self.unit_refuses(pages);
        let reserved = pages
            .keys()
            .any(|&p| self.reserved.iter().any(|&r| overlap(r, p, p + K4)));
        let Some(io) = self.slots[slot].as_ref() else {
            return Answer::NoSuchIoasid;
        };
        if reserved || pages.keys().any(|p| io.pages.contains_key(p)) {
            return Answer::Refused;
        }
        if !self.settle(slot) {
            return Answer::Pending;
        }
        if refused {
            return Answer::Refused;
        }
        if let Some(io) = self.slots[slot].as_mut() {
            io.pages.extend(pages);
        }
        Answer::Ok(0)
    }

    /// Whether the call, made now, could answer `heard`; if so, its effect is applied.
    fn apply(&mut self, call: Call, heard: Answer) -> bool {
        match (call, heard) {
            (Call::AllocIova(id, size), Answer::Ok(at)) => self.reserve_iova(id, at, size),
            (Call::AllocIova(id, _), heard) => self.alloc_iova_refusal(id) == Some(heard),
            _ => self.apply_one(call) == heard,
        }
    }

    /// Why `alloc_iova` of a page of `id` fails now, `None` if it cannot: the IOASID is gone,
    /// or holds `MAX_IOVA_RESERVATIONS` reservations (`Capacity`). It never runs out of space
    /// (`NoIovaSpace`): the scenarios map and reserve a few pages of a 48-bit space.
    fn alloc_iova_refusal(&self, id: IoasidId) -> Option<Answer> {
        match &self.slots[self.at(id)] {
            None => Some(Answer::NoSuchIoasid),
            Some(io) if io.iovas.len() >= MAX_IOVA_RESERVATIONS => Some(Answer::Refused),
            Some(_) => None,
        }
    }

    /// `alloc_iova` answered `at`: it may have picked any aligned range above page 0 that
    /// nothing maps or reserves now (it passes over a copy's destination range, which the
    /// calls one at a time never meet); the range is then reserved.
    fn reserve_iova(&mut self, id: IoasidId, at: u64, size: u64) -> bool {
        let end = at + size;
        let reserved = self.reserved.iter().any(|&r| overlap(r, at, end));
        let slot = self.at(id);
        let Some(io) = self.slots[slot].as_mut() else {
            return false;
        };
        let free = at >= K4
            && at % K4 == 0
            && !reserved
            && !io.iovas.iter().any(|&r| overlap(r, at, end))
            && io.pages.range(at..end).next().is_none();
        if free {
            io.iovas.push((at, end));
        }
        free
    }

    fn apply_one(&mut self, call: Call) -> Answer {
        match call {
            Call::Alloc => {
                let slot = (self.next..SLOTS)
                    .find(|&i| self.slots[i].is_none())
                    .expect("the model's slots, round the table");
                self.next = slot + 1;
                self.slots[slot] = Some(ModelIoasid::default());
                Answer::Ok(u64::from(IoasidId::new(slot as u16, self.gens[slot]).0))
            }
            Call::Free(id) => {
                let slot = self.at(id);
                if self.slots[slot].is_none() {
                    return Answer::NoSuchIoasid;
                }
                if self.attached.contains(&Some(slot)) {
                    return Answer::Busy;
                }
                // A domain left owing is freed first, once settled (`free_domains`: each
                // domain's free settles again); one still owing keeps the IOASID.
                let mut freed = true;
                for key in self.domains_of(slot) {
                    freed &= self.free_domain(key);
                }
                if !freed {
                    return Answer::Pending;
                }
                self.slots[slot] = None;
                self.gens[slot] += 1;
                Answer::Ok(0)
            }
            Call::Map(id, iova, pa, len) => {
                let pages = pages(iova, len).map(|p| (p, (pa + p - iova, RW))).collect();
                self.map_pages(id, &pages)
            }
            Call::Unmap(id, iova, len) => {
                let slot = self.at(id);
                if self.slots[slot].is_none() {
                    return Answer::NoSuchIoasid;
                }
                if !self.settle(slot) {
                    return Answer::Pending;
                }
                let Some(io) = self.slots[slot].as_mut() else {
                    return Answer::NoSuchIoasid;
                };
                let end = iova.saturating_add(len);
                let gone: Vec<u64> = io.pages.range(iova..end).map(|(&p, _)| p).collect();
                for p in &gone {
                    io.pages.remove(p);
                }
                // Each domain's unmap and its flush, whose failure is owed (the entries are
                // gone: the other domains and the record are unmapped too).
                let mut owed = false;
                for key in self.domains_of(slot) {
                    if let Some(d) = self.domains.get_mut(&key) {
                        d.owing.extend(&gone);
                    }
                    if !self.flush(key) {
                        if let Some(d) = self.domains.get_mut(&key) {
                            d.owes = true;
                        }
                        owed = true;
                    }
                }
                if owed {
                    return Answer::Pending;
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
                if self.slots[self.at(dst)].is_none() {
                    return Answer::NoSuchIoasid;
                }
                let Some(io) = &self.slots[self.at(src)] else {
                    return Answer::NoSuchIoasid;
                };
                let mut pages = BTreeMap::new();
                for p in self::pages(src_iova, len) {
                    let Some(&t) = io.pages.get(&p) else {
                        return Answer::NotMapped;
                    };
                    pages.insert(p - src_iova + dst_iova, t);
                }
                self.map_pages(dst, &pages)
            }
            Call::Attach(id) => self.attach(0, id),
            Call::AttachSecond(id) => self.attach(1, id),
            Call::Detach | Call::DetachSecond => {
                let unit = usize::from(matches!(call, Call::DetachSecond));
                match self.attached[unit].take() {
                    Some(old) => {
                        self.release(old, unit);
                        Answer::Ok(0)
                    }
                    None => Answer::Refused,
                }
            }
            Call::Reserve(start, end) => {
                let used = self.slots.iter().flatten().any(|io| {
                    io.pages.range(start..end).next().is_some()
                        || io.iovas.iter().any(|&r| overlap(r, start, end))
                });
                if used {
                    return Answer::Refused;
                }
                self.reserved.push((start, end));
                Answer::Ok(0)
            }
            Call::AllocIova(id, _) => {
                unreachable!("alloc_iova of {id:?} is `apply`'s: its answer is not one value")
            }
        }
    }

    /// The device on `unit` attached to `id`. A new domain on the unit is filled with what
    /// the record maps, which the unit may refuse (the device stays where it was), and takes
    /// the first free position; a domain the IOASID kept there (left owing) is used as it is.
    /// Attached elsewhere, the device switches (`attach`'s docs: an attach replaces), and the
    /// domain it left is released.
    fn attach(&mut self, unit: usize, id: IoasidId) -> Answer {
        let slot = self.at(id);
        let Some(io) = &self.slots[slot] else {
            return Answer::NoSuchIoasid;
        };
        if self.attached[unit] == Some(slot) {
            return Answer::Ok(0);
        }
        if self.domain_on(slot, unit).is_none() {
            if self.unit_refuses(&io.pages) {
                return Answer::Refused;
            }
            let free = (0..).find(|&p| !self.domains.contains_key(&(slot, p)));
            let domain = ModelDomain {
                unit,
                ..ModelDomain::default()
            };
            self.domains.insert((slot, free.unwrap_or(0)), domain);
        }
        if let Some(old) = self.attached[unit].replace(slot) {
            self.release(old, unit);
        }
        Answer::Ok(0)
    }

    /// What `World::observe` reads in this state.
    fn observe(&self) -> Seen {
        let slots = self
            .slots
            .iter()
            .take(SLOTS)
            .map(|s| {
                s.as_ref()
                    .map(|io| WINDOW.iter().map(|p| io.pages.get(p).copied()).collect())
            })
            .collect();
        let domains = (self.domains.iter())
            .map(|(&(slot, _), d)| (slot, d.unit))
            .collect();
        (slots, self.attached, domains)
    }
}

/// Whether `call` may answer `Busy` because a copy is in flight: the calls whose docs say so
/// (`free` of either IOASID of a copy, `map` / `unmap` touching its destination range, a copy
/// overlapping another's). `attach` is `Busy` only while an attach is unsettled (a unit's
/// fault, which the model unit never makes); `detach`, `reserve_region`, `alloc_iova` and
/// `alloc` never are.
fn busy_beside_a_copy(call: Call) -> bool {
    matches!(
        call,
        Call::Free(_) | Call::Map(..) | Call::Unmap(..) | Call::Copy { .. }
    )
}

/// Whether some order of the histories' calls (each thread's kept) gives every answer heard
/// and the final state seen, one call at a time (`Busy` beside a copy: a call that changed
/// nothing).
fn serial(model: &Model, histories: &[History], next: &mut [usize], seen: &Seen) -> bool {
    if next.iter().zip(histories).all(|(&n, h)| n == h.len()) {
        return model.observe() == *seen;
    }
    for t in 0..histories.len() {
        let Some(step) = histories[t].get(next[t]) else {
            continue;
        };
        let mut m = model.clone();
        // Another thread's copy may be in flight (this thread's own are over when it calls).
        let copy_elsewhere = (histories.iter().enumerate())
            .any(|(u, h)| u != t && h.iter().any(|s| matches!(s.call, Call::Copy { .. })));
        let fits = match step.heard {
            Answer::Busy if copy_elsewhere && busy_beside_a_copy(step.call) => true,
            heard => m.apply(step.call, heard),
        };
        // A copy answering `InvalidationPending` may have mapped its first run before the
        // invalidation came to be owed and failed to settle at a later run: it then undid the
        // first run with a flush of every domain of its destination (`roll_back_map`, which
        // does not settle first), one more flush than the copy one at a time makes, which the
        // unit may fail too. Calls one at a time cannot split the copy around the unmap that
        // parked: both are tried.
        let undone = match (step.call, step.heard) {
            (Call::Copy { dst, .. }, Answer::Pending) if fits => {
                let mut u = m.clone();
                u.undo_flush(dst.slot().into());
                Some(u)
            }
            _ => None,
        };
        for m in [fits.then_some(m), undone].into_iter().flatten() {
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

fn check_serial(s: Setup, histories: &[History], seen: &Seen) {
    let mut next = vec![0; histories.len()];
    assert!(
        serial(&Model::new(s), histories, &mut next, seen),
        "no order of the calls one at a time gives what they answered and left:\n\
         calls and answers per thread: {histories:x?}\n\
         IOASID slots at the end (pages {WINDOW:x?}), the device's IOASID: {seen:x?}"
    );
}

/// The ticks between which a copy into `[dst, dst + 2 pages)` certainly held that range: its
/// first run reaching a domain (the first map of `SRC[0]`'s page at `dst`) and the next thing
/// the unit did in the range (the second run, or the undo of the first). `None` if the first
/// run never reached a domain.
fn copy_hold(events: &[(usize, UnitEvent)], dst: u64) -> Option<(usize, usize)> {
    let first = UnitEvent::Map {
        iova: dst,
        pa: SRC[0].1,
    };
    let at = events.iter().position(|&(_, e)| e == first)?;
    let next = events[at + 1..].iter().find(|&&(_, e)| match e {
        UnitEvent::Map { iova, .. } | UnitEvent::Unmap { iova } => {
            (dst..dst + 2 * K4).contains(&iova)
        }
        UnitEvent::Alloc | UnitEvent::Free => false,
    })?;
    Some((events[at].0, next.0))
}

/// A call made while a copy of both source pages held its destination range (from start to
/// return within [`copy_hold`]'s ticks): a reservation over that range must be refused and
/// `alloc_iova` must pass over it (`ioas.rs`: what a copy's hold refuses). The calls one at a
/// time cannot tell: they may order such a call before the copy.
fn check_copy_hold(histories: &[History], events: &[(usize, UnitEvent)]) {
    for copy in histories.iter().flatten() {
        let Call::Copy { dst_iova, len, .. } = copy.call else {
            continue;
        };
        let Some((held, until)) = copy_hold(events, dst_iova) else {
            continue;
        };
        let range = (dst_iova, dst_iova + len);
        let during = histories
            .iter()
            .flatten()
            .filter(|s| held < s.ticks.0 && s.ticks.1 < until);
        for s in during {
            let bad = match (s.call, s.heard) {
                (Call::Reserve(start, end), Answer::Ok(_)) => overlap(range, start, end),
                (Call::AllocIova(_, size), Answer::Ok(at)) => overlap(range, at, at + size),
                _ => false,
            };
            assert!(
                !bad,
                "{:x?} answered {:x?} while a copy held {range:x?} (ticks {held}..{until}):\n\
                 calls per thread: {histories:x?}\nunit's writes: {events:x?}",
                s.call, s.heard
            );
        }
    }
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

/// The outcomes of one interleaving's calls, as a scenario names those it must reach: each
/// call's kind and answer (`"attach ok"`); that again with `" during a copy's hold"` for a call
/// that started and returned within a copy's hold of its destination range ([`copy_hold`]);
/// for an attach that answered `Ok`, how many pages the unit mapped meanwhile (its fill:
/// `"attach ok filling 1"`); for a copy, how many maps the unit made while it ran (its runs
/// reaching a domain, and any other thread's maps meanwhile: `"copy ok mapping 1"`); for an
/// attach, a detach or a free that answered `Ok`, or a free that answered
/// `InvalidationPending`, how many domains the unit freed meanwhile (`"detach ok freeing 0"`:
/// the domain kept, as it owed an invalidation; `"free pending freeing 1"`: one domain of
/// two freed, the other kept owing), and for an attach
/// how many it built (`"attach ok building 0"`: into a domain the IOASID kept); for an unmap,
/// how many domains the unit was asked to unmap from meanwhile (`"unmap pending unmapping 2"`:
/// both units' domains of B).
fn outcomes(histories: &[History], events: &[(usize, UnitEvent)]) -> BTreeSet<String> {
    let holds: Vec<(usize, usize)> = (histories.iter().flatten())
        .filter_map(|s| match s.call {
            Call::Copy { dst_iova, .. } => copy_hold(events, dst_iova),
            _ => None,
        })
        .collect();
    let mut seen = BTreeSet::new();
    for s in histories.iter().flatten() {
        let kind = match s.call {
            Call::Alloc => "alloc",
            Call::Free(_) => "free",
            Call::Map(..) => "map",
            Call::Unmap(..) => "unmap",
            Call::Copy { .. } => "copy",
            Call::Attach(_) | Call::AttachSecond(_) => "attach",
            Call::Detach | Call::DetachSecond => "detach",
            Call::Reserve(..) => "reserve",
            Call::AllocIova(..) => "alloc_iova",
        };
        let heard = match s.heard {
            Answer::Ok(_) => "ok",
            Answer::Busy => "busy",
            Answer::NoSuchIoasid => "no such ioasid",
            Answer::NotMapped => "not mapped",
            Answer::Pending => "pending",
            Answer::Refused => "refused",
        };
        seen.insert(format!("{kind} {heard}"));
        if holds
            .iter()
            .any(|&(held, until)| held < s.ticks.0 && s.ticks.1 < until)
        {
            seen.insert(format!("{kind} {heard} during a copy's hold"));
        }
        let during = |what: fn(&UnitEvent) -> bool| {
            (events.iter())
                .filter(|&&(t, ref e)| s.ticks.0 < t && t < s.ticks.1 && what(e))
                .count()
        };
        let mapped = during(|e| matches!(e, UnitEvent::Map { .. }));
        let freed = during(|e| matches!(e, UnitEvent::Free));
        let unmapped = during(|e| matches!(e, UnitEvent::Unmap { .. }));
        let built = during(|e| matches!(e, UnitEvent::Alloc));
        match (s.call, s.heard) {
            (Call::Attach(_) | Call::AttachSecond(_), Answer::Ok(_)) => {
                seen.insert(format!("attach ok filling {mapped}"));
                seen.insert(format!("attach ok building {built}"));
                seen.insert(format!("attach ok freeing {freed}"))
            }
            (Call::Detach | Call::DetachSecond | Call::Free(_), Answer::Ok(_)) => {
                seen.insert(format!("{kind} ok freeing {freed}"))
            }
            (Call::Free(_), Answer::Pending) => {
                seen.insert(format!("free pending freeing {freed}"))
            }
            (Call::Copy { .. }, _) => seen.insert(format!("{kind} {heard} mapping {mapped}")),
            (Call::Unmap(..), _) => seen.insert(format!("{kind} {heard} unmapping {unmapped}")),
            _ => false,
        };
    }
    seen
}

/// Runs a scenario under loom, printing the interleavings explored, the time taken and the
/// outcomes reached ([`outcomes`]); fails if one of `required` never came up (the scenario
/// would not test what it is for).
fn run(name: &str, setup: Setup, required: &[&str], threads: &'static [Body]) {
    let iterations = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(StdMutex::new(BTreeMap::<String, usize>::new()));
    let start = Instant::now();
    let (it, tl) = (iterations.clone(), tally.clone());
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
            world.audit(&histories);
            check_serial(setup, &histories, &world.observe());
            let events = world.unit.events.lock().unwrap();
            check_copy_hold(&histories, &events);
            let mut tally = tl.lock().unwrap();
            for o in outcomes(&histories, &events) {
                *tally.entry(o).or_default() += 1;
            }
        })
    }));
    let seen = tally.lock().unwrap().clone();
    println!(
        "loom scenario {name}: {} after {} interleavings in {:.1} s (preemption bound {:?}); \
         outcomes {seen:?}",
        if checked.is_ok() { "passed" } else { "FAILED" },
        iterations.load(std::sync::atomic::Ordering::Relaxed),
        start.elapsed().as_secs_f64(),
        model_builder().preemption_bound
    );
    if let Err(p) = checked {
        std::panic::resume_unwind(p);
    }
    for o in required {
        assert!(
            seen.contains_key(*o),
            "{name}: no interleaving reached {o:?}"
        );
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
        Setup::NONE,
        &["copy ok", "copy no such ioasid", "free busy", "free ok"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                if t.run(Call::Free(A)) == Answer::Ok(0) {
                    if let Answer::Ok(id) = t.run(Call::Alloc) {
                        t.run(Call::Map(IoasidId(id as u32), 0x1000, 0x50_0000, 2 * K4));
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
            b_page: true,
            ..Setup::NONE
        },
        &["copy refused", "free busy", "free ok", "map ok"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                if t.run(Call::Free(B)) == Answer::Ok(0) {
                    if let Answer::Ok(id) = t.run(Call::Alloc) {
                        t.run(Call::Map(IoasidId(id as u32), 0x1000, 0x70_0000, K4));
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
            ..Setup::NONE
        },
        &[
            "map busy during a copy's hold",
            "unmap busy during a copy's hold",
            "map ok",
        ],
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
            ..Setup::NONE
        },
        &["copy ok", "unmap busy during a copy's hold", "unmap ok"],
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
            ..Setup::NONE
        },
        &["copy busy during a copy's hold", "copy not mapped"],
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

// ------------------------------------------------------------------------------------------
// attach and detach beside maps and copies

/// (d) A copy from A into B (no device yet: B has no domain) while another thread attaches a
/// device to B, which builds B's domain and fills it from B's record. The fill takes the runs
/// the record holds, whole, under the write lock, and the copy's later runs go into every
/// domain B has then: B's domain ends mapping both pages whatever the order (`audit`).
#[test]
fn attach_between_a_copy_s_runs() {
    run(
        "attach_between_a_copy_s_runs",
        Setup::NONE,
        &[
            "attach ok filling 1",
            "attach ok filling 0",
            "attach ok filling 2",
        ],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Attach(B));
            },
        ],
    );
}

/// (d') As (d), the unit refusing every map of the second page: a copy whose second run
/// reaches B's new domain fails there and undoes its first run from every domain B has then,
/// the one the attach built and filled with it too; an attach after the copy is refused (its
/// fill meets the second page). No domain keeps a page its record does not map (`audit`).
#[test]
fn attach_between_the_runs_of_a_copy_that_fails() {
    run(
        "attach_between_the_runs_of_a_copy_that_fails",
        Setup {
            refuse_map_at: Some(0x2000),
            ..Setup::NONE
        },
        &["attach ok filling 1", "attach refused", "copy ok"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Attach(B));
            },
        ],
    );
}

/// (e) A copy from A into B (attached, the unit refusing the second page) while another
/// thread detaches B's only device, which frees B's domain. Detached first, the copy
/// succeeds (no domain refuses); detached after, the copy failed and undid its first run from
/// the domain; detached between the runs, the second run and the record are all that is left
/// and the copy succeeds. The unit is never asked to map into, unmap from or flush a domain
/// it freed (`ModelUnit` panics).
#[test]
fn detach_between_a_copy_s_runs() {
    run(
        "detach_between_a_copy_s_runs",
        Setup {
            device_on_b: true,
            refuse_map_at: Some(0x2000),
            ..Setup::NONE
        },
        &["copy ok mapping 1", "copy refused", "detach ok"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Detach);
            },
        ],
    );
}

/// (f) Two maps into B while another thread attaches a device to B: each map goes into the
/// record and B's domain whole, before or after the attach's fill of that domain, never between
/// the fill and the domain joining B (`audit`).
#[test]
fn attach_vs_maps() {
    run(
        "attach_vs_maps",
        Setup::NONE,
        &["attach ok filling 1"],
        &[
            |t| {
                t.run(Call::Map(B, 0x1000, 0x70_0000, K4));
                t.run(Call::Map(B, 0x3000, 0x80_0000, K4));
            },
            |t| {
                t.run(Call::Attach(B));
            },
        ],
    );
}

/// (g) A map and an unmap in B (attached) while another thread detaches B's only device: the
/// domain is freed with the detach, and no later map or unmap of B reaches it (`ModelUnit`
/// panics on a freed domain).
#[test]
fn detach_vs_map_and_unmap() {
    run(
        "detach_vs_map_and_unmap",
        Setup {
            device_on_b: true,
            ..Setup::NONE
        },
        &["detach ok", "map ok", "unmap ok"],
        &[
            |t| {
                t.run(Call::Map(B, 0x1000, 0x70_0000, K4));
                t.run(Call::Unmap(B, 0x1000, K4));
            },
            |t| {
                t.run(Call::Detach);
            },
        ],
    );
}

/// (g') A copy from A into B (attached, the unit refusing the second page) while another
/// thread attaches the device to C: the attach replaces B's attachment (`attach`'s docs), and
/// B's domain, its last user gone, is freed, as with a detach in (e). Switched first, the copy
/// succeeds (no domain refuses); switched after, the copy failed and undid its first run;
/// switched between the runs, the copy succeeds. The unit is never asked to map into, unmap
/// from or flush the domain B left (`ModelUnit` panics), and it ends with C's domain alone,
/// the device attached to it (`World::audit`).
#[test]
fn attach_elsewhere_between_a_copy_s_runs() {
    run(
        "attach_elsewhere_between_a_copy_s_runs",
        Setup {
            device_on_b: true,
            refuse_map_at: Some(0x2000),
            c: true,
            ..Setup::NONE
        },
        &["attach ok", "copy ok mapping 1", "copy refused"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                t.run(Call::Attach(C));
            },
        ],
    );
}

// ------------------------------------------------------------------------------------------
// reserved regions and IOVA allocation beside maps and copies

/// (h) A copy from A into B (attached) at `[0x4000, 0x6000)` while another thread reserves
/// the second page of that range, `[0x5000, 0x6000)`, for the context: the reservation is
/// refused while the copy holds the range (its runs not mapped yet are the copy's), or comes
/// whole before the copy (which is then refused) or after it (refused: mapped). A reserved
/// range never ends up mapped (`check_serial`: the model refuses maps into a reserved region),
/// and a reservation made while the copy held the range is a defect (`check_copy_hold`).
#[test]
fn reserve_region_vs_copy_into_it() {
    run(
        "reserve_region_vs_copy_into_it",
        Setup {
            device_on_b: true,
            ..Setup::NONE
        },
        &[
            "reserve ok",
            "reserve refused during a copy's hold",
            "copy refused",
        ],
        &[
            |t| {
                t.run(Call::Copy {
                    src: A,
                    src_iova: 0x1000,
                    dst: B,
                    dst_iova: 0x4000,
                    len: 2 * K4,
                });
            },
            |t| {
                t.run(Call::Reserve(0x5000, 0x6000));
            },
        ],
    );
}

/// (i) A copy from A into B (attached) while another thread asks `alloc_iova` for a page of B
/// and maps it. `alloc_iova` never returns a range mapped or reserved (`check_serial`), nor
/// one the copy holds while it runs (`check_copy_hold`); the map into the page it got is
/// explained by the calls one at a time (handed a page before the copy took it, it is `Busy`
/// or refused by the copy's run).
#[test]
fn alloc_iova_vs_copy() {
    run(
        "alloc_iova_vs_copy",
        Setup {
            device_on_b: true,
            ..Setup::NONE
        },
        &["alloc_iova ok during a copy's hold", "map busy", "copy ok"],
        &[
            |t| {
                t.run(copy_a_to(B));
            },
            |t| {
                if let Answer::Ok(at) = t.run(Call::AllocIova(B, K4)) {
                    t.run(Call::Map(B, at, 0x70_0000, K4));
                }
            },
        ],
    );
}

/// (j) Two threads each ask `alloc_iova` for a page of B, beside a map of B's first page:
/// neither is handed a page mapped or reserved (the other's) at the time (`check_serial`).
#[test]
fn alloc_iova_vs_alloc_iova_and_map() {
    run(
        "alloc_iova_vs_alloc_iova_and_map",
        Setup::NONE,
        &["alloc_iova ok"],
        &[
            |t| {
                t.run(Call::Map(B, 0x1000, 0x70_0000, K4));
                t.run(Call::AllocIova(B, K4));
            },
            |t| {
                t.run(Call::AllocIova(B, K4));
            },
        ],
    );
}

// ------------------------------------------------------------------------------------------
// invalidations a unit did not confirm

/// (k) An unmap of B's page `B_PAGE` (B attached) whose flush the unit fails (`Timeout`), and
/// a map of another page there, while another thread maps a third page of B. The unit fails
/// the first two flushes owing `B_PAGE`'s invalidation: the unmap answers `InvalidationPending`
/// (the page unmapped, the invalidation owed in B's `Pending`), and whichever call settles
/// first fails again. A map never lands on a page whose invalidation the unit still owes
/// (`ModelUnit` panics): every map and unmap of B reissues what is owed first, and whichever
/// fails keeps it owed, `Pending`'s mask included.
#[test]
fn unmap_with_failing_flushes_vs_maps() {
    run(
        "unmap_with_failing_flushes_vs_maps",
        Setup {
            device_on_b: true,
            b_page: true,
            failing_flushes: &[(B_PAGE.0, 2)],
            ..Setup::NONE
        },
        &["unmap pending", "map pending", "map ok"],
        &[
            |t| {
                t.run(Call::Unmap(B, B_PAGE.0, K4));
                t.run(Call::Map(B, B_PAGE.0, 0x70_0000, K4));
            },
            |t| {
                t.run(Call::Map(B, 0x3000, 0x80_0000, K4));
            },
        ],
    );
}

/// (k') An unmap of B's page `B_PAGE` (B attached) whose flush the unit fails, while another
/// thread maps `B_PAGE` again: the owed invalidation must reach the other thread. The map is
/// refused if it comes before the unmap took the page (`Overlap`); after, it maps only once it
/// reissued the owed invalidation, and if that fails too it answers `InvalidationPending` with
/// the record left without the page: a map never lands on a page whose invalidation the unit
/// still owes (`ModelUnit` panics). Unlike (k), the thread that meets the owed state is not the
/// one that parked it: the map must settle after its record took the range (settled before,
/// the unmap could park and let the range go in between: found by this scenario on 994999e).
/// The two calls overlap, which the layer's contract forbids (module docs, "Locking"): the
/// rule is kept even for such a caller (ARCHITECTURE.md, "Overlapping calls").
fn unmap_with_failing_flushes_vs_a_map_of_its_page(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            refuse_map_at: None,
            c: false,
            b_page: true,
            b_source: false,
            second_unit: false,
            second_on_b: false,
            c_page: false,
            failing_on_unit1: None,
            failing_flushes: if failures == 1 {
                &[(B_PAGE.0, 1)]
            } else {
                &[(B_PAGE.0, 2)]
            },
        },
        required,
        &[
            |t| {
                t.run(Call::Unmap(B, B_PAGE.0, K4));
            },
            |t| {
                t.run(Call::Map(B, B_PAGE.0, 0x80_0000, K4));
            },
        ],
    );
}

/// (k') with one failing flush: the map, after the unmap, settles and maps.
#[test]
fn unmap_with_a_failing_flush_vs_a_map_of_its_page() {
    unmap_with_failing_flushes_vs_a_map_of_its_page(
        "unmap_with_a_failing_flush_vs_a_map_of_its_page",
        1,
        &["unmap pending", "map ok", "map refused"],
    );
}

/// (k') with two: the map, after the unmap, cannot settle and lets the record's range go.
#[test]
fn unmap_with_two_failing_flushes_vs_a_map_of_its_page() {
    unmap_with_failing_flushes_vs_a_map_of_its_page(
        "unmap_with_two_failing_flushes_vs_a_map_of_its_page",
        2,
        &["unmap pending", "map pending", "map refused"],
    );
}

// ------------------------------------------------------------------------------------------
// invalidations a unit did not confirm, beside copies, attaches, detaches and frees
//
// In each, one thread unmaps B's page `B_PAGE` (B attached: its domain on the unit) while the
// unit fails the flushes owing that page's invalidation a number of times, retries the unmap
// until it returns `Ok` and then gives the page back (`Thread::unmap_b_page_until_ok`); the
// other thread makes calls the contract lets run beside it on other ranges, or configuration
// calls. In every interleaving: no page whose invalidation the unit still owes is mapped again
// (`ModelUnit::map` panics) and no domain that owes one is freed (`ModelUnit::domain_free`
// panics); when the caller gives the page back, no domain maps it and none owes the
// invalidation of a translation to it (`Thread::reuse`); the answers and the final state,
// which IOASIDs hold a domain included (one left owing by its last user is kept), are those
// of some order of the calls one at a time (`check_serial`: the model replays the failing
// flushes, and `InvalidationPending` only where a flush failed); the unit holds exactly the
// domains the context holds (`World::audit`).

/// The failing flushes of a scenario: `B_PAGE`'s, `n` times.
fn b_page_failing(n: u32) -> &'static [(u64, u32)] {
    match n {
        1 => &[(B_PAGE.0, 1)],
        2 => &[(B_PAGE.0, 2)],
        _ => &[(B_PAGE.0, 3)],
    }
}

/// (l) Beside a copy from A into B at `[0x4000, 0x6000)` (two runs, each mapped into B's
/// domain, each settling what B owes once the record took it): a run that meets the owed
/// invalidation settles it or, failing again, answers `InvalidationPending` and the copy
/// undoes its earlier run with their flush (`roll_back_map`, which does not settle first):
/// the copy answers `Ok` (before the unmap, or after it with the invalidation settled) or
/// `InvalidationPending` with nothing of it left in B; no run lands while the page's
/// invalidation is owed.
fn unmap_with_failing_flushes_vs_a_copy_into_its_ioasid(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            b_page: true,
            failing_flushes: b_page_failing(failures),
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Copy {
                    src: A,
                    src_iova: 0x1000,
                    dst: B,
                    dst_iova: 0x4000,
                    len: 2 * K4,
                });
            },
        ],
    );
}

/// (l) with one failing flush: the copy, after the unmap, settles and maps.
#[test]
fn unmap_with_a_failing_flush_vs_a_copy_into_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_into_its_ioasid(
        "unmap_with_a_failing_flush_vs_a_copy_into_its_ioasid",
        1,
        &["unmap pending", "unmap ok", "copy ok mapping 2"],
    );
}

/// (l) with two: a copy after the unmap fails to settle and is undone.
#[test]
fn unmap_with_two_failing_flushes_vs_a_copy_into_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_into_its_ioasid(
        "unmap_with_two_failing_flushes_vs_a_copy_into_its_ioasid",
        2,
        &[
            "unmap pending",
            "unmap ok",
            "copy pending",
            "copy ok mapping 2",
        ],
    );
}

/// (l) with three: the copy's undo of its first run, which does not settle first, fails its
/// own flush too and leaves that invalidation owed (`owe_undo`), the first run gone from the
/// record and the domain: the unmap's retry settles both.
#[test]
fn unmap_with_three_failing_flushes_vs_a_copy_into_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_into_its_ioasid(
        "unmap_with_three_failing_flushes_vs_a_copy_into_its_ioasid",
        3,
        &["unmap pending", "unmap ok", "copy pending mapping 1"],
    );
}

/// (l') Beside a copy out of B: B's two pages at `B_SOURCE` into B at `[0x6000, 0x8000)`
/// (within one IOASID: the copy's own slot), each run settling what B owes before its
/// domain takes it. The copy reads a range the unmap does not touch; what it maps goes into
/// the domain that owes, never over the owed page.
fn unmap_with_failing_flushes_vs_a_copy_out_of_its_ioasid(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            b_page: true,
            b_source: true,
            failing_flushes: b_page_failing(failures),
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Copy {
                    src: B,
                    src_iova: B_SOURCE[0].0,
                    dst: B,
                    dst_iova: 0x6000,
                    len: 2 * K4,
                });
            },
        ],
    );
}

/// (l') with one failing flush.
#[test]
fn unmap_with_a_failing_flush_vs_a_copy_out_of_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_out_of_its_ioasid(
        "unmap_with_a_failing_flush_vs_a_copy_out_of_its_ioasid",
        1,
        &["unmap pending", "unmap ok", "copy ok mapping 2"],
    );
}

/// (l') with two.
#[test]
fn unmap_with_two_failing_flushes_vs_a_copy_out_of_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_out_of_its_ioasid(
        "unmap_with_two_failing_flushes_vs_a_copy_out_of_its_ioasid",
        2,
        &["unmap pending", "copy pending", "copy ok mapping 2"],
    );
}

/// (m) Beside a detach of B's only device, then its attach to B again. The detach releases
/// B's domain, which is freed only once what B owes is settled (`free_domain`): settled, or
/// kept without users while the flush fails again (the detach still answers `Ok`: the device
/// is blocked). The attach then uses the kept domain as it is (no fill), or builds and fills a
/// new one from B's record. The unmap's retry settles through whichever domain B holds, and
/// the page goes back only then.
fn unmap_with_failing_flushes_vs_detach_and_attach(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            b_page: true,
            failing_flushes: b_page_failing(failures),
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Detach);
                t.run(Call::Attach(B));
            },
        ],
    );
}

/// (m) with one failing flush: the detach after the unmap settles what is owed and frees the
/// domain.
#[test]
fn unmap_with_a_failing_flush_vs_detach_and_attach() {
    unmap_with_failing_flushes_vs_detach_and_attach(
        "unmap_with_a_failing_flush_vs_detach_and_attach",
        1,
        &[
            "unmap pending",
            "detach ok freeing 1",
            "attach ok building 1",
        ],
    );
}

/// (m) with two: the detach's settle fails too, B keeps its domain, and the attach uses it.
#[test]
fn unmap_with_two_failing_flushes_vs_detach_and_attach() {
    unmap_with_failing_flushes_vs_detach_and_attach(
        "unmap_with_two_failing_flushes_vs_detach_and_attach",
        2,
        &[
            "unmap pending",
            "detach ok freeing 0",
            "attach ok building 0",
        ],
    );
}

/// (n) Beside an attach of the device to C (a replace: C's domain built, B's released as a
/// detach releases it) and then a free of B. The free settles what B still owes before it
/// frees the domain B kept (`free_domains`): `InvalidationPending` with B left whole while
/// the flush fails again, `Ok` once settled. After the free, the unmap's retry answers
/// `NoSuchIoasid`, and the page goes back then: nothing may reach it.
fn unmap_with_failing_flushes_vs_attach_elsewhere_and_free(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            c: true,
            b_page: true,
            failing_flushes: b_page_failing(failures),
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Attach(C));
                t.run(Call::Free(B));
            },
        ],
    );
}

/// (n) with two failing flushes: the attach's release keeps B's domain, the free settles and
/// frees it.
#[test]
fn unmap_with_two_failing_flushes_vs_attach_elsewhere_and_free() {
    unmap_with_failing_flushes_vs_attach_elsewhere_and_free(
        "unmap_with_two_failing_flushes_vs_attach_elsewhere_and_free",
        2,
        &[
            "unmap pending",
            "attach ok freeing 0",
            "free ok freeing 1",
            "unmap no such ioasid",
        ],
    );
}

/// (n) with three: the free's settle fails too, and B stays, its domain with it.
#[test]
fn unmap_with_three_failing_flushes_vs_attach_elsewhere_and_free() {
    unmap_with_failing_flushes_vs_attach_elsewhere_and_free(
        "unmap_with_three_failing_flushes_vs_attach_elsewhere_and_free",
        3,
        &[
            "unmap pending",
            "attach ok freeing 0",
            "free pending",
            "free ok freeing 1",
        ],
    );
}

/// (o) An unmap of `B_PAGE` whose flushes fail, then (the same thread, after it returned) a map
/// of another page at `B_PAGE`, beside an attach of a second device, on a second unit, to B
/// (its domain there built and filled from B's record under the write lock: with `B_PAGE`
/// before the unmap, which then unmaps and flushes both domains; without it after), then a map
/// of another page of B. Each domain's failed flush is owed in its own slot of B's `Pending`,
/// and every map settles every domain B has before any takes the range: neither map lands in
/// a domain that still owes `B_PAGE`'s invalidation (`ModelUnit::map` panics), a map whose
/// settle fails again answers `InvalidationPending` with nothing mapped.
fn unmap_with_failing_flushes_vs_an_attach_on_another_unit(
    name: &'static str,
    failures: u32,
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            b_page: true,
            second_unit: true,
            failing_flushes: b_page_failing(failures),
            ..Setup::NONE
        },
        required,
        &[
            |t| {
                t.run(Call::Unmap(B, B_PAGE.0, K4));
                t.run(Call::Map(B, B_PAGE.0, 0x70_0000, K4));
            },
            |t| {
                t.run(Call::AttachSecond(B));
                t.run(Call::Map(B, 0x3000, 0x80_0000, K4));
            },
        ],
    );
}

/// (o) with one failing flush: with both domains owing, the first's flush fails, the
/// second's completes; the next map's settle completes.
#[test]
fn unmap_with_a_failing_flush_vs_an_attach_on_another_unit() {
    unmap_with_failing_flushes_vs_an_attach_on_another_unit(
        "unmap_with_a_failing_flush_vs_an_attach_on_another_unit",
        1,
        &["unmap pending unmapping 2", "attach ok filling 0", "map ok"],
    );
}

/// (o) with two: both domains' flushes fail (each owed in its slot), and the next settle
/// completes both.
#[test]
fn unmap_with_two_failing_flushes_vs_an_attach_on_another_unit() {
    unmap_with_failing_flushes_vs_an_attach_on_another_unit(
        "unmap_with_two_failing_flushes_vs_an_attach_on_another_unit",
        2,
        &[
            "unmap pending unmapping 2",
            "attach ok filling 0",
            "map pending",
        ],
    );
}

// ------------------------------------------------------------------------------------------
// an IOASID with two domains, one owing; a free of another IOASID on the same unit; a copy
// out of B whose undo's flush fails
//
// As above (`Thread::unmap_b_page_until_ok` beside calls the contract lets run with it), and
// a page given back after a `free` of its IOASID returned `Ok` (`Thread::free_and_reuse`) is
// reachable through no domain either: every interleaving must keep the same rules (no page
// the unit still owes an invalidation for mapped again or given back, no domain owing freed,
// the answers and final state serialisable, only documented errors).

/// The failing flushes of a scenario: `B_PAGE`'s, `n` times (up to 5).
fn b_page_failing_up_to_5(n: u32) -> &'static [(u64, u32)] {
    match n {
        0..=3 => b_page_failing(n.max(1)),
        4 => &[(B_PAGE.0, 4)],
        _ => &[(B_PAGE.0, 5)],
    }
}

/// (p) B with a domain on each unit (both devices attached to B), the units failing the
/// flushes owing `B_PAGE` a number of times each (`on_unit0`, `on_unit1`, counted apart),
/// beside the detach of unit 0's device, then of unit 1's, then a free of B that gives
/// `B_PAGE` back if it returns `Ok`. Each detach releases its domain: `free_domain` settles
/// every domain B has, then frees its own only if that one owes nothing (the other may still
/// owe: it is flushed, not freed), else keeps it without users (the detach still `Ok`). The
/// free settles again and frees each domain that owes nothing, keeping B (`InvalidationPending`)
/// while one still owes. In every interleaving no domain is freed while it owes
/// (`ModelUnit::domain_free` panics), in particular not the domain of one slot because another
/// slot's settle completed, and no page goes back while a domain owes it.
fn unmap_with_failing_flushes_vs_detaches_and_free_of_two_domains(
    name: &'static str,
    on_unit0: u32,
    on_unit1: u32,
    required: &[&str],
) {
    let f0: &'static [(u64, u32)] = if on_unit0 == 0 {
        &[]
    } else {
        b_page_failing_up_to_5(on_unit0)
    };
    run(
        name,
        Setup {
            device_on_b: true,
            b_page: true,
            second_unit: true,
            second_on_b: true,
            failing_on_unit1: Some(b_page_failing_up_to_5(on_unit1)),
            failing_flushes: f0,
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Detach);
                t.run(Call::DetachSecond);
                t.free_and_reuse(B, B_PAGE.1);
            },
        ],
    );
}

/// (p) with unit 1's flushes failing twice, unit 0's never: unit 0's domain is freed by its
/// detach while unit 1's owes (that one's settle failing again or not), unit 1's kept by its
/// detach when its settle fails again and freed by the free.
#[test]
fn unmap_with_two_failing_flushes_on_unit_1_vs_detaches_and_free_of_two_domains() {
    unmap_with_failing_flushes_vs_detaches_and_free_of_two_domains(
        "unmap_with_two_failing_flushes_on_unit_1_vs_detaches_and_free_of_two_domains",
        0,
        2,
        &[
            "unmap pending unmapping 2",
            "detach ok freeing 1",
            "detach ok freeing 0",
            "free ok freeing 1",
            "unmap no such ioasid",
        ],
    );
}

/// (p) with unit 0's flushes failing twice and unit 1's five times: both domains kept by
/// their detaches, the free meets B with two domains, frees unit 0's once settled and keeps
/// unit 1's while it owes (`InvalidationPending`, B whole), or frees both.
#[test]
fn unmap_with_failing_flushes_on_both_units_vs_detaches_and_free_of_two_domains() {
    unmap_with_failing_flushes_vs_detaches_and_free_of_two_domains(
        "unmap_with_failing_flushes_on_both_units_vs_detaches_and_free_of_two_domains",
        2,
        5,
        &[
            "unmap pending unmapping 2",
            "detach ok freeing 0",
            "free pending freeing 1",
            "free ok freeing 2",
        ],
    );
}

/// (q) A free of C, which holds a domain on the same unit as B, beside the unmap of B's page
/// whose flush fails: the device moves from B to C (B's domain released: freed once settled,
/// else kept owing), C's page `C_PAGE` is unmapped with its own flush failing (C's domain
/// owes), the device is detached (C's domain kept while it owes), then C is freed and, if that
/// returns `Ok`, `C_PAGE` goes back without the unmap of C having been retried. The free must
/// settle C's owed invalidation, not B's, before it frees C's domain, and free it; B's owed
/// invalidation stays B's (its unmap's retry settles it).
fn unmap_with_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit(
    name: &'static str,
    failing: &'static [(u64, u32)],
    required: &[&str],
) {
    run(
        name,
        Setup {
            device_on_b: true,
            c: true,
            b_page: true,
            c_page: true,
            failing_flushes: failing,
            ..Setup::NONE
        },
        required,
        &[
            |t| t.unmap_b_page_until_ok(),
            |t| {
                t.run(Call::Attach(C));
                t.run(Call::Unmap(C, C_PAGE.0, K4));
                t.run(Call::Detach);
                t.free_and_reuse(C, C_PAGE.1);
            },
        ],
    );
}

/// (q) with B's flushes failing twice and C's twice: C's unmap and its detach's settle fail,
/// the free settles and frees C's domain, or C's unmap fails and the detach settles.
#[test]
fn unmap_with_two_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit() {
    unmap_with_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit(
        "unmap_with_two_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit",
        &[(B_PAGE.0, 2), (C_PAGE.0, 2)],
        &[
            "unmap pending",
            "attach ok freeing 0",
            "detach ok freeing 0",
            "free ok freeing 1",
            "unmap ok",
        ],
    );
}

/// (q) with C's flushes failing three times: the free's own settle fails too, and C stays
/// (`InvalidationPending`), its domain with it.
#[test]
fn unmap_with_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit_that_fails() {
    unmap_with_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit(
        "unmap_with_failing_flushes_vs_a_free_of_another_ioasid_on_its_unit_that_fails",
        &[(B_PAGE.0, 1), (C_PAGE.0, 3)],
        &["unmap pending", "detach ok freeing 0", "free pending"],
    );
}

/// (l') with three failing flushes: a copy out of B (into B) whose first run went in before
/// the unmap parked, and whose second run's settle fails, undoes the first run with a flush
/// that fails too and is owed (`owe_undo`): the copy answers `InvalidationPending` with
/// nothing of it left in B, and the unmap's retry settles everything before the page goes
/// back.
#[test]
fn unmap_with_three_failing_flushes_vs_a_copy_out_of_its_ioasid() {
    unmap_with_failing_flushes_vs_a_copy_out_of_its_ioasid(
        "unmap_with_three_failing_flushes_vs_a_copy_out_of_its_ioasid",
        3,
        &["unmap pending", "unmap ok", "copy pending mapping 1"],
    );
}

/// (r) Two `UNMAP_ALL`s of B (mapping `B_PAGE`) at once. Both walks read the root entry whose
/// table holds B's page; each clears it and releases the table it led to (a double free into
/// the allocator), and the later walk descends into the table the other released: it failed
/// with `a table walk reached 0x40009000, a freed page` (`Alloc::phys_to_virt`). Overlapping
/// calls on one IOASID now take turns (`stripes.rs`): one unmaps the page, the other finds
/// nothing.
#[test]
fn unmap_all_vs_unmap_all() {
    run(
        "unmap_all_vs_unmap_all",
        Setup {
            b_page: true,
            ..Setup::NONE
        },
        &["unmap ok"],
        &[
            |t| {
                t.run(Call::Unmap(B, 0, UNMAP_ALL));
            },
            |t| {
                t.run(Call::Unmap(B, 0, UNMAP_ALL));
            },
        ],
    );
}

/// (s) A map of a page next to `B_PAGE` (in the same record tables) beside an `UNMAP_ALL` of
/// B: the map descended into a table the unmap unlinked and released, and wrote into the
/// freed page; it failed with `no order of the calls one at a time gives what they answered
/// and left` (the map's page lost). Now one waits for the other: the map's page is unmapped
/// or stays mapped, as the order says.
#[test]
fn map_vs_unmap_all_over_it() {
    run(
        "map_vs_unmap_all_over_it",
        Setup {
            b_page: true,
            ..Setup::NONE
        },
        &["map ok", "unmap ok"],
        &[
            |t| {
                t.run(Call::Map(B, 0x3000, 0x70_0000, K4));
            },
            |t| {
                t.run(Call::Unmap(B, 0, UNMAP_ALL));
            },
        ],
    );
}

/// (t) An `UNMAP_ALL` of B (mapping `B_PAGE`) beside a thread making two narrow calls in its
/// first stripe, a map next to `B_PAGE` then an unmap of it. When the wide call finds the map
/// holding the stripe it waits in turn (`stripes.rs`: served, its stripes in `wanted`), and the
/// unmap coming then does not go in over it but waits in turn behind it; the turns must keep
/// the calls apart as the single compare-and-swap did: every answer and the state left are
/// those of some order of the calls, and no table walk reaches a freed page. (The same with
/// the narrow calls on two threads did not finish within 16 minutes at load 9.)
#[test]
fn unmap_all_waiting_vs_narrow_calls() {
    run(
        "unmap_all_waiting_vs_narrow_calls",
        Setup {
            b_page: true,
            ..Setup::NONE
        },
        &["map ok", "unmap ok"],
        &[
            |t| {
                t.run(Call::Unmap(B, 0, UNMAP_ALL));
            },
            |t| {
                t.run(Call::Map(B, 0x3000, 0x70_0000, K4));
                t.run(Call::Unmap(B, B_PAGE.0, K4));
            },
        ],
    );
}

/// (u) Review finding F1: a page request the device raised while attached to A, drained by
/// the fault thread (`dispatch_page_faults`) beside a detach of the device and its attach to
/// B. Whatever the order, the fault never reaches the context as B's: it is queued for A
/// before the detach (which answers it Invalid) or refused (quarantined or not routed,
/// answered Invalid); either way exactly one Invalid answer reaches the device, and the
/// context's queue is empty at the end. Before the quarantine, the interleaving where the
/// dispatcher drained the request before the detach and routed it after the attach queued
/// it for B, and it stayed readable (`a fault raised for A reached B`).
#[test]
fn dispatch_vs_detach_and_attach_elsewhere() {
    let mut interleavings = 0usize;
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    model_builder().check(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let w = Arc::new(World::new(Setup::NONE));
        w.ctx.fault_queue_alloc();
        w.ctx.attach(w.dev, A).unwrap();
        w.unit
            .state
            .lock()
            .unwrap()
            .faults
            .push_back(page_request(1, 0));
        let w2 = w.clone();
        let dispatcher = loom::thread::spawn(move || {
            let unit: &dyn Iommu = &*w2.unit;
            iommu_engine::ioasid::dispatch_page_faults(UnitId(0), unit, &[&*w2.ctx]).unwrap();
        });
        w.ctx.detach(w.dev).unwrap();
        w.ctx.attach(w.dev, B).unwrap();
        dispatcher.join().unwrap();
        let (n, out) = read_two(&w.ctx);
        assert_eq!(n, 0, "a fault raised for A reached B: {:?}", out[0]);
        let st = w.unit.state.lock().unwrap();
        let codes: Vec<_> = st.responses.iter().map(|r| r.code).collect();
        assert_eq!(codes, [ResponseCode::Invalid], "one Invalid answer");
        drop(st);
        w.ctx.detach(w.dev).unwrap();
    });
    interleavings += counter.load(std::sync::atomic::Ordering::Relaxed);
    println!("dispatch_vs_detach_and_attach_elsewhere: {interleavings} interleavings");
}

/// A last page request of `group` from device 1 (no PASID), the unit's `sequence`-th.
fn page_request(group: u16, sequence: u64) -> PageFault {
    PageFault {
        device: DeviceId(1),
        pasid: None,
        addr: 0x1000 * (u64::from(group) + 1),
        perm: FaultPerm::WRITE,
        kind: FaultKind::PageRequest { group, last: true },
        generation: 0,
        sequence,
    }
}

/// Up to two faults queued for `ctx`'s reader, and how many there were.
fn read_two(ctx: &IoasidCtx<'static, 'static, Alloc>) -> (usize, [QueuedFault; 2]) {
    let mut out = [QueuedFault {
        unit: 0,
        fault: PageFault::EMPTY,
        cookie: iommu_engine::iopf::FaultCookie(0),
    }; 2];
    (ctx.read_faults(&mut out), out)
}

/// Two dispatchers of one unit (two fault threads, as an embedder with one per CPU has) each
/// drain the unit's queue while the device is detached from A and attached to B: the
/// quarantine's two generations per unit must hold whichever dispatcher took which fault and
/// whichever of them overlaps the detach (the unit hands out one request per drain here, so
/// each dispatcher may take one). Both requests were raised for A: neither reaches B, each is
/// answered Invalid exactly once, and the context's queue is empty at the end.
#[test]
fn two_dispatchers_vs_detach_and_attach_elsewhere() {
    let counter = Arc::new(AtomicUsize::new(0));
    let c = counter.clone();
    model_builder().check(move || {
        c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let w = Arc::new(World::new(Setup::NONE));
        w.ctx.fault_queue_alloc();
        w.ctx.attach(w.dev, A).unwrap();
        {
            let mut st = w.unit.state.lock().unwrap();
            st.drain_one = true;
            st.faults.extend([page_request(1, 0), page_request(2, 1)]);
        }
        let dispatchers: Vec<_> = (0..2)
            .map(|_| {
                let w2 = w.clone();
                loom::thread::spawn(move || {
                    let unit: &dyn Iommu = &*w2.unit;
                    iommu_engine::ioasid::dispatch_page_faults(UnitId(0), unit, &[&*w2.ctx])
                        .unwrap();
                })
            })
            .collect();
        w.ctx.detach(w.dev).unwrap();
        w.ctx.attach(w.dev, B).unwrap();
        for d in dispatchers {
            d.join().unwrap();
        }
        let (n, out) = read_two(&w.ctx);
        assert_eq!(n, 0, "a fault raised for A reached B: {:?}", &out[..n]);
        let st = w.unit.state.lock().unwrap();
        let group = |k: FaultKind| match k {
            FaultKind::PageRequest { group, .. } => group,
            _ => u16::MAX,
        };
        let mut groups: Vec<_> = st
            .responses
            .iter()
            .map(|r| (group(r.kind), r.code))
            .collect();
        groups.sort_unstable_by_key(|&(g, _)| g);
        assert_eq!(
            groups,
            [(1, ResponseCode::Invalid), (2, ResponseCode::Invalid)],
            "each request answered Invalid once"
        );
        drop(st);
        w.ctx.detach(w.dev).unwrap();
    });
    let interleavings = counter.load(std::sync::atomic::Ordering::Relaxed);
    println!("two_dispatchers_vs_detach_and_attach_elsewhere: {interleavings} interleavings");
}
