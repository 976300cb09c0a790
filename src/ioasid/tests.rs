//! Rules of the IOASID layer against a unit built on the engine with configurable capabilities.
//! The same flows run against the VT-d and SMMUv3 models in `tests/ioasid_*.rs`.

extern crate std;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::vec::Vec;

use super::*;
use crate::iommu::{
    Capabilities, DeviceId, DomainConfig, DomainHandle, DomainPages, Error as IommuError, Iommu,
    ReclaimScope, Source, Sources, Stage,
};
use crate::iopf::FaultCookie;
use crate::mem::{Iova, PhysAddr, WalkerCoherency};
use crate::pgtable::testutil::{test_alloc, TestAlloc, G1, K4, M2, RW, VTD_SS_48};
use crate::pgtable::vtd_ss::{VtdSs, VtdSsConfig};
use crate::pgtable::{Gather, InvalidationComplete, Leaf, Mapping, PageTable, Prot};

type Table<'a> = PageTable<VtdSs, &'a TestAlloc>;

struct FakeUnit<'a> {
    alloc: &'a TestAlloc,
    caps: Capabilities,
    reserved: Vec<IovaRange>,
    domains: Mutex<Vec<Option<(Table<'a>, DomainConfig)>>>,
    attached: Mutex<Vec<(DeviceId, Option<Pasid>, DomainHandle)>>,
    flushes: Mutex<u32>,
    fail_map_at: Mutex<Option<u64>>,
    /// Every map at or above this IOVA is refused.
    fail_maps_from: Mutex<Option<u64>>,
    /// A map at this IOVA writes its entries, then fails (a unit whose step after writing the
    /// entries fails, and that leaves them: what `Iommu::map` forbids, and the layer survives).
    fail_after_map_at: Mutex<Option<u64>>,
    fail_unmap_at: Mutex<Option<u64>>,
    /// A flush whose gather records this IOVA fails (keeping its pages), as a unit whose
    /// invalidation wait timed out.
    fail_flush_at: Mutex<Option<u64>>,
    /// An unmap whose range reaches past this IOVA unmaps what lies before it, then fails
    /// with `EntryUnstable` there (as the table does when hardware keeps rewriting an entry).
    unstable_at: Mutex<Option<u64>>,
    /// Overrides what `domain_geometry` reports (input bits, page sizes).
    geometry: Option<(u32, u64)>,
    /// Every attach, detach and domain free, in order.
    events: Mutex<Vec<Event>>,
    /// The first map at this IOVA stops before writing: it meets the test at the first
    /// barrier, and goes on once the test passes the second.
    pause_map_at: Mutex<Option<(u64, Arc<Pause>)>>,
    /// A map at this IOVA panics before touching anything (a hosted embedder's unit whose
    /// call unwinds).
    panic_map_at: Mutex<Option<u64>>,
    /// Every page response the unit sent to a device, in order.
    responses: Mutex<Vec<crate::iopf::PageResponse>>,
    /// Every answer the layer gave up (`Iommu::page_response_abandon`), in order.
    abandoned: Mutex<Vec<crate::iopf::PageResponse>>,
    /// The next attach fails with a unit fault (`Timeout`) before changing anything: the
    /// layer keeps the attachment unsettled.
    fail_next_attach: AtomicBool,
    /// The next attach is refused (`Unsupported`, not a unit fault) before changing anything.
    refuse_next_attach: AtomicBool,
}

/// Where a paused call meets the test (`.0`) and waits for it to go on (`.1`).
type Pause = (Barrier, Barrier);

std::thread_local! {
    /// A pause the next `copy` (or `detach`) on this thread makes at a named point where it
    /// holds no lock of the context (`ioas.rs`: "between runs", "undo"; `attach.rs`: "detach
    /// looked"): another thread's calls run there.
    static COPY_PAUSE: core::cell::RefCell<Option<(&'static str, Arc<Pause>)>> =
        const { core::cell::RefCell::new(None) };
}

std::thread_local! {
    /// How deep this thread is in [`FakeUnit::with`] (holding its domains' lock, which a real
    /// unit's walk does not hold against other calls): [`HookAlloc`] does not run its hook there.
    static IN_FAKE_UNIT: core::cell::Cell<u32> = const { core::cell::Cell::new(0) };
}

/// Called by `copy` at `point`: meets the test there, if its pause is set for that point.
pub(super) fn copy_pause(point: &'static str) {
    let pause = COPY_PAUSE.with(|c| {
        let mut c = c.borrow_mut();
        match c.as_ref() {
            Some((at, _)) if *at == point => c.take().map(|(_, p)| p),
            _ => None,
        }
    });
    if let Some(p) = pause {
        p.0.wait();
        p.1.wait();
    }
}

/// What the fake unit was asked to do to its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Attach(DeviceId, Option<Pasid>, DomainHandle),
    Detach(DeviceId, Option<Pasid>),
    Free(DomainHandle),
}

impl<'a> FakeUnit<'a> {
    fn new(alloc: &'a TestAlloc, snoop: bool) -> Self {
        Self {
            alloc,
            caps: Capabilities {
                ias: 48,
                oas: 46,
                page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
                pasid_bits: 20,
                enforce_snoop: snoop,
                dirty_tracking: false,
                nesting: false,
                coherent_walk: true,
                coherent_dma: true,
                supervisor: false,
                sources: Sources::all(Source::Register("fake")),
            },
            reserved: std::vec![IovaRange {
                start: Iova::new(0xfee0_0000),
                end: Iova::new(0xfef0_0000)
            }],
            domains: Mutex::new(Vec::new()),
            attached: Mutex::new(Vec::new()),
            flushes: Mutex::new(0),
            fail_map_at: Mutex::new(None),
            fail_maps_from: Mutex::new(None),
            fail_after_map_at: Mutex::new(None),
            fail_unmap_at: Mutex::new(None),
            fail_flush_at: Mutex::new(None),
            unstable_at: Mutex::new(None),
            geometry: None,
            events: Mutex::new(Vec::new()),
            pause_map_at: Mutex::new(None),
            panic_map_at: Mutex::new(None),
            responses: Mutex::new(Vec::new()),
            abandoned: Mutex::new(Vec::new()),
            fail_next_attach: AtomicBool::new(false),
            refuse_next_attach: AtomicBool::new(false),
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn with<R>(&self, d: DomainHandle, f: impl FnOnce(&Table<'a>) -> R) -> Result<R, IommuError> {
        let doms = self.domains.lock().unwrap();
        let (t, _) = doms
            .get(usize::from(d.0))
            .and_then(Option::as_ref)
            .ok_or(IommuError::InvalidDomain(d))?;
        // A call of the layer's from inside (a walk's callback) runs with the lock held.
        IN_FAKE_UNIT.with(|c| c.set(c.get() + 1));
        let r = f(t);
        IN_FAKE_UNIT.with(|c| c.set(c.get() - 1));
        Ok(r)
    }

    /// [`Self::with`] with the table mutable (the calls that take it exclusively).
    fn with_mut<R>(
        &self,
        d: DomainHandle,
        f: impl FnOnce(&mut Table<'a>) -> R,
    ) -> Result<R, IommuError> {
        let mut doms = self.domains.lock().unwrap();
        let (t, _) = doms
            .get_mut(usize::from(d.0))
            .and_then(Option::as_mut)
            .ok_or(IommuError::InvalidDomain(d))?;
        IN_FAKE_UNIT.with(|c| c.set(c.get() + 1));
        let r = f(t);
        IN_FAKE_UNIT.with(|c| c.set(c.get() - 1));
        Ok(r)
    }

    fn live_domains(&self) -> usize {
        self.domains.lock().unwrap().iter().flatten().count()
    }

    fn domain_of(&self, dev: DeviceId) -> Option<DomainHandle> {
        self.attached
            .lock()
            .unwrap()
            .iter()
            .find(|a| a.0 == dev && a.1.is_none())
            .map(|a| a.2)
    }

    /// Refuses a range beyond the input width `geometry` overrides (the table itself has 48
    /// bits), as a unit of that width refuses it: nothing written.
    fn within_width(&self, iova: Iova, len: u64) -> Result<(), IommuError> {
        let Some((ias, _)) = self.geometry.filter(|&(ias, _)| ias < 64) else {
            return Ok(());
        };
        let last = iova.get().saturating_add(len.saturating_sub(1));
        if last >> ias != 0 {
            let last = Iova::new(last);
            return Err(crate::pgtable::Error::IovaOutOfRange { last, ias }.into());
        }
        Ok(())
    }

    fn snoop_of(&self, d: DomainHandle) -> bool {
        self.domains.lock().unwrap()[usize::from(d.0)]
            .as_ref()
            .unwrap()
            .1
            .enforce_snoop
    }
}

impl Iommu for FakeUnit<'_> {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }
    fn reserved_regions(&self) -> &[IovaRange] {
        &self.reserved
    }
    fn domain_alloc(&self, cfg: &DomainConfig) -> Result<DomainHandle, IommuError> {
        if cfg.enforce_snoop && !self.caps.enforce_snoop {
            return Err(IommuError::Unsupported(Missing::SnoopControl));
        }
        if cfg.dirty_tracking && !self.caps.dirty_tracking {
            return Err(IommuError::Unsupported(Missing::DirtyTracking));
        }
        if cfg.nest_parent && !self.caps.nesting {
            return Err(IommuError::Unsupported(Missing::Nesting));
        }
        if cfg.min_ias > self.caps.ias {
            return Err(IommuError::Unsupported(Missing::AddressWidth {
                need: cfg.min_ias,
                have: self.caps.ias,
            }));
        }
        let _ = Stage::Any;
        let f = VtdSs::new(VtdSsConfig {
            snoop: cfg.enforce_snoop,
            ..VTD_SS_48
        })?;
        let t = PageTable::new(f, self.alloc, WalkerCoherency::Coherent)?;
        let mut doms = self.domains.lock().unwrap();
        let i = doms.iter().position(Option::is_none).unwrap_or(doms.len());
        if i == doms.len() {
            doms.push(None);
        }
        doms[i] = Some((t, *cfg));
        Ok(DomainHandle(i as u16))
    }
    fn domain_geometry(&self, d: DomainHandle) -> Result<(u32, u64), IommuError> {
        let real = self.with(d, |t| (t.geometry().ias, t.geometry().page_sizes))?;
        Ok(self.geometry.unwrap_or(real))
    }
    fn domain_free(&self, d: DomainHandle) -> Result<(), IommuError> {
        if self.attached.lock().unwrap().iter().any(|a| a.2 == d) {
            return Err(IommuError::Busy);
        }
        let (t, _) = self.domains.lock().unwrap()[usize::from(d.0)]
            .take()
            .ok_or(IommuError::InvalidDomain(d))?;
        let mut g = Gather::new();
        t.destroy(&mut g)?;
        self.events.lock().unwrap().push(Event::Free(d));
        self.flush(d, &mut g)
    }
    fn map(
        &self,
        d: DomainHandle,
        iova: Iova,
        pa: PhysAddr,
        len: u64,
        prot: Prot,
    ) -> Result<(), IommuError> {
        let panics = *self.panic_map_at.lock().unwrap() == Some(iova.get());
        assert!(!panics, "the test's unit panics in its map at {iova:?}");
        if *self.fail_map_at.lock().unwrap() == Some(iova.get())
            || self
                .fail_maps_from
                .lock()
                .unwrap()
                .is_some_and(|from| iova.get() >= from)
        {
            return Err(IommuError::NoMemory);
        }
        let pause = {
            let mut at = self.pause_map_at.lock().unwrap();
            match at.as_ref() {
                Some((i, _)) if *i == iova.get() => at.take().map(|(_, p)| p),
                _ => None,
            }
        };
        if let Some(p) = pause {
            p.0.wait();
            p.1.wait();
        }
        self.within_width(iova, len)?;
        self.with(d, |t| t.map(iova, pa, len, prot))??;
        if *self.fail_after_map_at.lock().unwrap() == Some(iova.get()) {
            return Err(IommuError::Timeout { what: "test" });
        }
        Ok(())
    }
    fn unmap(
        &self,
        d: DomainHandle,
        iova: Iova,
        len: u64,
        g: &mut Gather,
    ) -> Result<u64, IommuError> {
        if *self.fail_unmap_at.lock().unwrap() == Some(iova.get()) {
            return Err(IommuError::Timeout { what: "test" });
        }
        self.within_width(iova, len)?;
        let unstable = *self.unstable_at.lock().unwrap();
        if let Some(at) = unstable.filter(|&at| iova.get() < at && at - iova.get() < len) {
            self.with(d, |t| t.unmap(iova, at - iova.get(), g))??;
            let iova = Iova::new(at);
            return Err(crate::pgtable::Error::EntryUnstable { iova }.into());
        }
        self.with(d, |t| t.unmap(iova, len, g))?.map_err(Into::into)
    }
    fn flush(&self, _d: DomainHandle, g: &mut Gather) -> Result<(), IommuError> {
        *self.flushes.lock().unwrap() += 1;
        if let Some(at) = *self.fail_flush_at.lock().unwrap() {
            if g.ranges()
                .iter()
                .any(|r| r.start.get() <= at && at < r.end.get())
            {
                return Err(IommuError::Timeout { what: "flush" });
            }
        }
        // SAFETY: nothing walks the fake unit's tables.
        g.release(self.alloc, unsafe { InvalidationComplete::assume() })
            .map_err(Into::into)
    }
    fn reclaim(&self, d: DomainHandle, scope: ReclaimScope<'_>) -> Result<usize, IommuError> {
        let mut g = Gather::new();
        {
            let mut doms = self.domains.lock().unwrap();
            let (t, _) = doms
                .get_mut(usize::from(d.0))
                .and_then(Option::as_mut)
                .ok_or(IommuError::InvalidDomain(d))?;
            scope.reclaim(t, &mut g)?;
        }
        let n = g.freed_pages();
        if n != 0 {
            self.flush(d, &mut g)?;
        }
        Ok(n)
    }
    fn table_pages(&self, d: DomainHandle) -> Result<DomainPages, IommuError> {
        Ok(DomainPages {
            tables: self.with_mut(d, |t| t.table_pages())??,
            unflushed: 0,
        })
    }
    fn query(&self, d: DomainHandle, iova: Iova) -> Option<Mapping> {
        self.with(d, |t| t.query(iova)).ok().flatten()
    }
    fn for_each_mapping(
        &self,
        d: DomainHandle,
        iova: Iova,
        len: u64,
        f: &mut dyn FnMut(Leaf),
    ) -> Result<(), IommuError> {
        self.with(d, |t| t.for_each_mapping(iova, len, f))?
            .map_err(Into::into)
    }
    fn read_dirty(
        &self,
        d: DomainHandle,
        iova: Iova,
        len: u64,
        how: crate::pgtable::DirtyRead,
        sink: &mut dyn FnMut(Iova, u32),
        g: &mut Gather,
    ) -> Result<(), IommuError> {
        self.with(d, |t| t.read_dirty(iova, len, how, sink, g))?
            .map_err(Into::into)
    }
    fn set_dirty_tracking(&self, d: DomainHandle, on: bool) -> Result<(), IommuError> {
        let mut g = Gather::new();
        self.with_mut(d, |t| t.set_dirty_tracking(on, &mut g))?
            .map_err(Into::into)
    }
    fn attach(
        &self,
        dev: DeviceId,
        pasid: Option<Pasid>,
        d: DomainHandle,
    ) -> Result<(), IommuError> {
        if self.fail_next_attach.swap(false, Ordering::SeqCst) {
            return Err(IommuError::Timeout { what: "attach" });
        }
        if self.refuse_next_attach.swap(false, Ordering::SeqCst) {
            return Err(IommuError::Unsupported(Missing::Pasid { bits: 0 }));
        }
        self.with(d, |_| ())?;
        let mut at = self.attached.lock().unwrap();
        at.retain(|a| !(a.0 == dev && a.1 == pasid));
        at.push((dev, pasid, d));
        self.events
            .lock()
            .unwrap()
            .push(Event::Attach(dev, pasid, d));
        Ok(())
    }
    fn detach(&self, dev: DeviceId, pasid: Option<Pasid>) -> Result<(), IommuError> {
        let mut at = self.attached.lock().unwrap();
        let n = at.len();
        at.retain(|a| !(a.0 == dev && a.1 == pasid));
        if at.len() == n {
            return Err(IommuError::NotAttached(dev));
        }
        self.events.lock().unwrap().push(Event::Detach(dev, pasid));
        Ok(())
    }
    fn page_response(&self, response: &crate::iopf::PageResponse) -> Result<(), IommuError> {
        self.responses.lock().unwrap().push(*response);
        Ok(())
    }
    fn page_response_abandon(&self, response: &crate::iopf::PageResponse) {
        self.abandoned.lock().unwrap().push(*response);
    }
}

fn label(unit: u8, id: u32) -> DeviceLabel {
    DeviceLabel {
        unit: UnitId(unit),
        id: DeviceId(id),
    }
}

/// Two fake units (snoop control) in one registry, a context, and an IOASID with device 1 of
/// each unit attached: `f` gets the context, the IOASID and the units.
fn with_two_attached_units(
    f: impl for<'a> FnOnce(&IoasidCtx<'_, 'a, TestAlloc>, IoasidId, &FakeUnit<'a>, &FakeUnit<'a>),
) {
    let alloc = test_alloc();
    let (u0, u1) = (FakeUnit::new(&alloc, true), FakeUnit::new(&alloc, true));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u0, &u1], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    ctx.attach(ctx.bind(label(1, 1), false).unwrap(), io)
        .unwrap();
    f(&ctx, io, &u0, &u1);
}

/// `f(ctx, io, wide)` on a context over two units, `wide` (48 bits) and a narrow one (39
/// bits, unit 1), with a device of `wide`'s attached to `io`: the narrow unit's device
/// (`label(1, 1)`) is the test's to bind and attach.
fn with_wide_and_narrow(
    f: impl for<'a> FnOnce(&IoasidCtx<'_, 'a, TestAlloc>, IoasidId, &FakeUnit<'a>),
) {
    let alloc = test_alloc();
    let wide = FakeUnit::new(&alloc, true);
    let mut narrow = FakeUnit::new(&alloc, true);
    narrow.geometry = Some((39, K4 | M2 | G1));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&wide, &narrow], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    f(&ctx, io, &wide);
}

/// `f(at)` on four threads at once, thread `t` taking the `per_thread` pages `at = (4i + t)`
/// 4 KiB: the threads' pages interleave, so that they share every table.
fn on_four_threads(per_thread: u64, f: impl Fn(u64) + Sync) {
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let f = &f;
            s.spawn(move || {
                for i in 0..per_thread {
                    f((i * 4 + t) * K4);
                }
            });
        }
    });
}

#[test]
fn seed_flow_enforce_snoop() {
    let alloc = test_alloc();
    let snoopy = FakeUnit::new(&alloc, true);
    let plain = FakeUnit::new(&alloc, false);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&snoopy, &plain], &pasids).unwrap();
    {
        let ctx = IoasidCtx::new(&reg, &alloc, 4);
        let dev = ctx.bind(label(0, 0x20), false).unwrap();
        let info = ctx.device_info(dev).unwrap();
        assert!(info.capabilities.enforce_snoop);
        let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0x8000_0000), M2, RW)
            .unwrap();
        let d = snoopy.domain_of(DeviceId(0x20)).unwrap();
        assert!(snoopy.snoop_of(d));
        assert_eq!(
            snoopy.query(d, Iova::new(0x10_0000)).unwrap().pa,
            PhysAddr::new(0x8000_0000)
        );

        // A device behind a unit without snoop control cannot join: nothing changes.
        let other = ctx.bind(label(1, 0x30), true).unwrap();
        let live = alloc.stats().live_pages;
        let e = ctx.attach(other, io).unwrap_err();
        assert_eq!(
            e,
            Error::Incompatible {
                device: other,
                reason: Incompatibility::Missing(Missing::SnoopControl)
            }
        );
        assert_eq!(plain.live_domains(), 0);
        assert_eq!(alloc.stats().live_pages, live);

        // Freeing an attached IOASID fails; the context's drop cleans everything.
        assert_eq!(ctx.free(io), Err(Error::Busy));
    }
    assert_eq!(snoopy.live_domains(), 0);
    assert_eq!(alloc.stats().live_pages, 0);
}

#[test]
fn one_device_one_context() {
    let alloc = test_alloc();
    let unit = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let a = IoasidCtx::new(&reg, &alloc, 0);
    let b = IoasidCtx::new(&reg, &alloc, 0);
    a.bind(label(0, 1), false).unwrap();
    assert_eq!(b.bind(label(0, 1), false), Err(Error::Busy));
    assert_eq!(a.bind(label(0, 1), false), Err(Error::Busy));
    drop(a);
    b.bind(label(0, 1), false).unwrap();
    assert_eq!(
        b.bind(label(3, 1), false),
        Err(Error::NoSuchUnit(UnitId(3)))
    );
}

#[test]
fn mappings_reach_every_unit_and_late_domains_get_copies() {
    let alloc = test_alloc();
    let (u0, u1) = (FakeUnit::new(&alloc, true), FakeUnit::new(&alloc, true));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u0, &u1], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let (d0, d1) = (
        ctx.bind(label(0, 1), false).unwrap(),
        ctx.bind(label(1, 1), false).unwrap(),
    );
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    // Mapped before any attach: the record holds it.
    ctx.map(
        io,
        Iova::new(0x40_0000),
        PhysAddr::new(0x1_0000_0000),
        3 * M2 + K4,
        RW,
    )
    .unwrap();
    ctx.attach(d0, io).unwrap();
    ctx.map(
        io,
        Iova::new(0x100_0000),
        PhysAddr::new(0x2000),
        K4,
        Prot::READ,
    )
    .unwrap();
    ctx.attach(d1, io).unwrap();
    for u in [&u0, &u1] {
        let d = u.domain_of(DeviceId(1)).unwrap();
        assert_eq!(
            u.query(d, Iova::new(0x40_0000 + 3 * M2)).unwrap().pa,
            PhysAddr::new(0x1_0000_0000 + 3 * M2)
        );
        assert_eq!(u.query(d, Iova::new(0x100_0000)).unwrap().prot, Prot::READ);
    }
    // One unmap: one flush per unit.
    let before = (*u0.flushes.lock().unwrap(), *u1.flushes.lock().unwrap());
    assert_eq!(
        ctx.unmap(io, Iova::new(0), 1 << 32).unwrap(),
        3 * M2 + 2 * K4
    );
    assert_eq!(*u0.flushes.lock().unwrap(), before.0 + 1);
    assert_eq!(*u1.flushes.lock().unwrap(), before.1 + 1);
    assert_eq!(ctx.translate(io, Iova::new(0x40_0000)).unwrap(), None);
}

#[test]
fn failed_map_rolls_back_everywhere() {
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_map_at.lock().unwrap() = Some(0x10_0000);
        assert!(ctx
            .map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
            .is_err());
        assert_eq!(ctx.translate(io, Iova::new(0x10_0000)).unwrap(), None);
        assert_eq!(
            u0.query(u0.domain_of(DeviceId(1)).unwrap(), Iova::new(0x10_0000)),
            None
        );
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
            .unwrap();
    });
}

/// Maps refused at once on several threads: each undo (under the context's read lock) gathers
/// in the context's `unmap_gather` in turn, and leaves nothing mapped anywhere.
#[test]
fn concurrent_refused_maps_are_each_undone() {
    const PER_THREAD: u64 = if cfg!(miri) { 3 } else { 32 };
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_maps_from.lock().unwrap() = Some(M2);
        on_four_threads(PER_THREAD, |at| {
            let r = ctx.map(io, Iova::new(at + M2), PhysAddr::new(at), K4, RW);
            assert_eq!(r, Err(Error::Iommu(IommuError::NoMemory)));
        });
        for p in 0..4 * PER_THREAD {
            let at = Iova::new(M2 + p * K4);
            assert_eq!(ctx.translate(io, at).unwrap(), None);
            for u in [u0, u1] {
                assert_eq!(u.query(u.domain_of(DeviceId(1)).unwrap(), at), None);
            }
        }
        ctx.audit(io).unwrap();
        assert!(ctx.unmap_gather.lock().is_empty());
        *u1.fail_maps_from.lock().unwrap() = None;
        ctx.map(io, Iova::new(M2), PhysAddr::new(0), K4, RW)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// An attach whose second direct region a domain refuses: that region's map is undone under
/// the state's write lock (in the context's `unmap_gather`), then the first region's (which
/// locks the gather again), and the attach changes nothing; without the refusal it completes.
#[test]
fn an_attach_whose_direct_region_a_domain_refuses_takes_nothing() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let regions = [
            DirectRegion::new(range(M2, M2 + 2 * K4), false).unwrap(),
            DirectRegion::new(range(2 * M2, 2 * M2 + K4), false).unwrap(),
        ];
        let dev = ctx
            .bind_with_direct(label(0, 2), false, None, &regions)
            .unwrap();
        *u1.fail_map_at.lock().unwrap() = Some(2 * M2);
        assert_eq!(ctx.attach(dev, io), Err(Error::Iommu(IommuError::NoMemory)));
        assert_eq!(ctx.attachment(dev, None).unwrap(), None);
        assert!(ctx.direct_mappings(io).unwrap().iter().all(Option::is_none));
        for at in [M2, M2 + K4, 2 * M2] {
            assert_eq!(ctx.translate(io, Iova::new(at)).unwrap(), None);
            for u in [u0, u1] {
                let d = u.domain_of(DeviceId(1)).unwrap();
                assert_eq!(u.query(d, Iova::new(at)), None, "{at:#x} left mapped");
            }
        }
        ctx.audit(io).unwrap();
        assert!(ctx.unmap_gather.lock().is_empty());
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.attach(dev, io).unwrap();
        for at in [M2, M2 + K4, 2 * M2] {
            let m = ctx.translate(io, Iova::new(at)).unwrap().unwrap();
            assert_eq!(m.pa, PhysAddr::new(at));
        }
        ctx.audit(io).unwrap();
    });
}

#[test]
fn a_map_that_fails_with_its_entries_written_is_undone_in_that_unit_too() {
    with_two_attached_units(|ctx, io, u0, u1| {
        for unit in [u0, u1] {
            *unit.fail_after_map_at.lock().unwrap() = Some(0x10_0000);
            let e = ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW);
            assert_eq!(e, Err(Error::Iommu(IommuError::Timeout { what: "test" })));
            *unit.fail_after_map_at.lock().unwrap() = None;
            assert_eq!(ctx.translate(io, Iova::new(0x10_0000)).unwrap(), None);
            for u in [u0, u1] {
                let d = u.domain_of(DeviceId(1)).unwrap();
                assert_eq!(u.query(d, Iova::new(0x10_0000)), None, "left mapped");
            }
            ctx.audit(io).unwrap();
        }
        ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

#[test]
fn reserved_regions_are_refused() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    // Before any attach the unit's MSI window is not yet known to the IOASID...
    ctx.map(io, Iova::new(0xfee0_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    // ...and attaching a device of that unit is then incompatible.
    let d = ctx.bind(label(0, 1), false).unwrap();
    assert!(matches!(
        ctx.attach(d, io),
        Err(Error::Incompatible {
            reason: Incompatibility::ReservedRegionMapped(_),
            ..
        })
    ));
    ctx.unmap(io, Iova::new(0xfee0_0000), K4).unwrap();
    ctx.attach(d, io).unwrap();
    assert!(matches!(
        ctx.map(io, Iova::new(0xfeef_f000), PhysAddr::new(0), K4, RW),
        Err(Error::Reserved(_))
    ));
    let r = IovaRange {
        start: Iova::new(0x1000_0000),
        end: Iova::new(0x2000_0000),
    };
    ctx.reserve_region(r).unwrap();
    assert_eq!(
        ctx.map(io, Iova::new(0x1800_0000), PhysAddr::new(0), K4, RW),
        Err(Error::Reserved(r))
    );
}

#[test]
fn iova_allocation_skips_mappings_and_reservations() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.map(io, Iova::new(0x1000), PhysAddr::new(0), 0x3000, RW)
        .unwrap();
    let a = ctx.alloc_iova(io, 0x2000, 0x1000).unwrap();
    assert_eq!(a, Iova::new(0x4000));
    let b = ctx.alloc_iova(io, M2, M2).unwrap();
    assert_eq!(b, Iova::new(M2));
    let c = ctx.alloc_iova(io, 0x1000, 0x1000).unwrap();
    assert_eq!(c, Iova::new(0x6000));
    assert!(ctx.free_iova(io, a).unwrap());
    assert_eq!(
        ctx.alloc_iova(io, 0x1000, 0x1000).unwrap(),
        Iova::new(0x4000)
    );
    assert_eq!(
        ctx.alloc_iova(io, 1 << 60, 0x1000),
        Err(Error::NoIovaSpace { size: 1 << 60 })
    );
}

#[test]
fn pasids_quota_and_attachment() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 2);
    let p1 = ctx.alloc_pasid().unwrap();
    let p2 = ctx.alloc_pasid().unwrap();
    assert_ne!(p1, p2);
    assert_ne!(p1.get(), 0);
    assert_eq!(ctx.alloc_pasid(), Err(Error::Quota(2)));
    let dev = ctx.bind(label(0, 1), false).unwrap();
    let plain = ctx.alloc(IoasidFlags::empty()).unwrap();
    assert_eq!(
        ctx.attach_pasid(dev, p1, plain),
        Err(Error::Incompatible {
            device: dev,
            reason: Incompatibility::NotPasidCapable
        })
    );
    let io = ctx.alloc(IoasidFlags::PASID).unwrap();
    ctx.attach_pasid(dev, p1, io).unwrap();
    assert_eq!(ctx.free_pasid(p1), Err(Error::Busy));
    assert_eq!(ctx.free(io), Err(Error::Busy));
    ctx.detach_pasid(dev, p1).unwrap();
    ctx.free_pasid(p1).unwrap();
    ctx.free(io).unwrap();
    assert!(reg.pasids().is_allocated(p2));
    let other = IoasidCtx::new(&reg, &alloc, 1);
    assert_eq!(other.free_pasid(p2), Err(Error::PasidNotOwned(p2)));
    drop(ctx);
    assert!(!reg.pasids().is_allocated(p2));
}

#[test]
fn incoherent_dma_needs_proof() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, false);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let other = IoasidCtx::new(&reg, &alloc, 0);
    let coherent = ctx.bind(label(0, 1), false).unwrap();
    let nosnoop = ctx.bind(label(0, 2), true).unwrap();
    let foreign = other.bind(label(0, 3), true).unwrap();
    assert_eq!(
        ctx.allow_incoherent_dma(coherent).unwrap_err(),
        Error::NotNoSnoopCapable(coherent)
    );
    // A handle of another context names no device here, even one whose slot is taken.
    assert_eq!(foreign.slot(), coherent.slot());
    assert_eq!(
        ctx.allow_incoherent_dma(foreign).unwrap_err(),
        Error::NoSuchDevice(foreign)
    );
    let _grant_elsewhere = other.allow_incoherent_dma(foreign).unwrap();
    assert!(!ctx.incoherent_dma_allowed());
    let g = ctx.allow_incoherent_dma(nosnoop).unwrap();
    assert_eq!(g.device(), nosnoop);
    assert!(ctx.incoherent_dma_allowed());
    assert_eq!(ctx.unbind(nosnoop), Err(Error::Busy));
    drop(g);
    assert!(!ctx.incoherent_dma_allowed());
    ctx.unbind(nosnoop).unwrap();
}

#[test]
fn reattach_switches_domains_and_frees_the_old_one() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let dev = ctx.bind(label(0, 7), false).unwrap();
    let a = ctx.alloc(IoasidFlags::empty()).unwrap();
    let b = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    ctx.attach(dev, a).unwrap();
    let da = u.domain_of(DeviceId(7)).unwrap();
    ctx.attach(dev, b).unwrap();
    let db = u.domain_of(DeviceId(7)).unwrap();
    assert_ne!(da, db);
    assert!(u.snoop_of(db));
    assert_eq!(u.live_domains(), 1);
    // The device went from one domain to the other in one attach, never through "blocked";
    // the old domain was freed only once nothing pointed at it.
    assert_eq!(
        u.events(),
        [
            Event::Attach(DeviceId(7), None, da),
            Event::Attach(DeviceId(7), None, db),
            Event::Free(da),
        ]
    );
    ctx.free(a).unwrap();
    assert_eq!(ctx.free(b), Err(Error::Busy));
    ctx.detach(dev).unwrap();
    assert_eq!(u.live_domains(), 0);
    assert_eq!(ctx.detach(dev), Err(Error::NotAttached(dev)));
    ctx.free(b).unwrap();
}

#[test]
fn concurrent_maps_of_disjoint_ranges() {
    // Fewer under Miri, which interleaves the threads at every atomic access.
    const PER_THREAD: u64 = if cfg!(miri) { 6 } else { 64 };
    with_two_attached_units(|ctx, io, u0, u1| {
        on_four_threads(PER_THREAD, |at| {
            ctx.map(io, Iova::new(at + M2), PhysAddr::new(at), K4, RW)
                .unwrap();
        });
        for u in [u0, u1] {
            let d = u.domain_of(DeviceId(1)).unwrap();
            for p in 0..4 * PER_THREAD {
                assert_eq!(
                    u.query(d, Iova::new(M2 + p * K4)).unwrap().pa,
                    PhysAddr::new(p * K4)
                );
            }
        }
    });
}

/// An attach copies the record into a new domain in chunks of `FILL_CHUNK` runs, the domain
/// joining the IOASID only once it is full. A map or unmap of the same IOASID that ran while
/// the copy was under way would reach the record and the old domains but not the new one:
/// a map below the walk's position would be missing from it, and an unmap of a page it
/// already copied would leave the device that attach switches a translation to a page its
/// owner unmapped (and may free). The state's write lock, held by the attach from the
/// record's first walk to the switch, keeps them out: here the copy stops in its second
/// chunk (page 20 of 40) while another thread unmaps a copied page and an uncopied one and
/// maps a page below the walk; none of them may return before the attach, and afterwards
/// every domain holds what the record holds.
#[test]
fn maps_and_unmaps_wait_for_an_attach_filling_a_new_domain() {
    const PAGES: u64 = 40;
    let page = |i: u64| Iova::new(G1 + 2 * i * K4);
    let alloc = test_alloc();
    let (u0, u1) = (FakeUnit::new(&alloc, true), FakeUnit::new(&alloc, true));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u0, &u1], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    // Every other page: each leaf a run of its own, 40 runs in three chunks.
    for i in 0..PAGES {
        let pa = PhysAddr::new(0x8000_0000 + i * K4);
        ctx.map(io, page(i), pa, K4, RW).unwrap();
    }
    let late = ctx.bind(label(1, 1), false).unwrap();
    let pause = Arc::new((Barrier::new(2), Barrier::new(2)));
    *u1.pause_map_at.lock().unwrap() = Some((page(20).get(), Arc::clone(&pause)));
    // Below the walk's position (it passed page 5), and two pages it did and did not copy.
    let gap = Iova::new(page(5).get() + K4);
    let returned = AtomicBool::new(false);
    std::thread::scope(|s| {
        let attach = s.spawn(|| ctx.attach(late, io));
        pause.0.wait();
        let other = s.spawn(|| {
            let r = (
                ctx.unmap(io, page(3), K4),
                ctx.unmap(io, page(30), K4),
                ctx.map(io, gap, PhysAddr::new(0x9000_0000), K4, RW),
            );
            returned.store(true, Ordering::SeqCst);
            r
        });
        // Long enough for the other thread's calls to complete if nothing held them.
        for _ in 0..200 {
            if returned.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let overtook = returned.load(Ordering::SeqCst);
        // Resumed before any assertion: a panic here would leave the attach waiting.
        pause.1.wait();
        attach.join().unwrap().unwrap();
        assert!(
            !overtook,
            "a map or unmap of the IOASID returned while an attach was filling its new domain"
        );
        assert_eq!(other.join().unwrap(), (Ok(K4), Ok(K4), Ok(())));
    });
    let d1 = u1.domain_of(DeviceId(1)).unwrap();
    let d0 = u0.domain_of(DeviceId(1)).unwrap();
    let mut want: Vec<(Iova, Option<PhysAddr>)> = (0..PAGES)
        .map(|i| {
            let gone = i == 3 || i == 30;
            (
                page(i),
                (!gone).then(|| PhysAddr::new(0x8000_0000 + i * K4)),
            )
        })
        .collect();
    want.push((gap, Some(PhysAddr::new(0x9000_0000))));
    for (at, pa) in want {
        let recorded = ctx.translate(io, at).unwrap().map(|m| m.pa);
        assert_eq!(recorded, pa, "the record at {at:?}");
        assert_eq!(
            u0.query(d0, at).map(|m| m.pa),
            pa,
            "the old domain at {at:?}"
        );
        assert_eq!(
            u1.query(d1, at).map(|m| m.pa),
            pa,
            "the new domain at {at:?}"
        );
    }
}

#[test]
fn device_info_reports_the_unit_and_the_device() {
    let alloc = test_alloc();
    let mut unit = FakeUnit::new(&alloc, true);
    unit.caps = Capabilities {
        ias: 39,
        oas: 42,
        page_sizes: 1 << 12 | 1 << 21,
        pasid_bits: 16,
        enforce_snoop: true,
        dirty_tracking: true,
        nesting: true,
        coherent_walk: false,
        coherent_dma: false,
        supervisor: true,
        sources: Sources::all(Source::Embedder("test")),
    };
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let dev = ctx.bind(label(0, 0x42), true).unwrap();
    assert_eq!(
        ctx.device_info(dev).unwrap(),
        DeviceInfo {
            label: label(0, 0x42),
            capabilities: unit.caps,
            no_snoop_capable: true,
            no_snoop_source: super::NO_SNOOP_DECLARED,
            hints: crate::iommu::DeviceHints::default(),
            hints_source: super::NO_HINTS,
        }
    );
    let plain = ctx.bind(label(0, 0x43), false).unwrap();
    assert!(!ctx.device_info(plain).unwrap().no_snoop_capable);
}

#[test]
fn device_handles_of_another_context_are_refused() {
    let alloc = test_alloc();
    let unit = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let (a, b) = (
        IoasidCtx::new(&reg, &alloc, 0),
        IoasidCtx::new(&reg, &alloc, 0),
    );
    let (da, db) = (
        a.bind(label(0, 1), false).unwrap(),
        b.bind(label(0, 2), false).unwrap(),
    );
    let ia = a.alloc(IoasidFlags::empty()).unwrap();
    assert_eq!(da.slot(), db.slot());
    assert_eq!(a.device_info(db), Err(Error::NoSuchDevice(db)));
    assert_eq!(a.attach(db, ia), Err(Error::NoSuchDevice(db)));
    assert_eq!(a.unbind(db), Err(Error::NoSuchDevice(db)));
    assert_eq!(
        a.allow_incoherent_dma(db).err(),
        Some(Error::NoSuchDevice(db))
    );
    // The context's own handle for that slot works.
    assert_eq!(a.device_handle(db.raw()), da);
    assert_eq!(
        a.device_info(a.device_handle(db.raw())).unwrap().label,
        label(0, 1)
    );
    assert!(unit.events().is_empty());
}

/// Each capability an IOASID's flags need: a unit without it refuses the attach, naming it, and
/// nothing changes (no domain, no page, no attachment).
#[test]
fn incompatible_attach_names_the_reason_and_changes_nothing() {
    let alloc = test_alloc();
    let plain = FakeUnit::new(&alloc, false);
    let mut narrow = FakeUnit::new(&alloc, true);
    narrow.caps.ias = 39;
    let mut coarse = FakeUnit::new(&alloc, true);
    coarse.geometry = Some((48, 1 << 16));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&plain, &narrow, &coarse], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let on = |unit: u8| ctx.bind(label(unit, 9), false).unwrap();
    let (dp, dn, dc) = (on(0), on(1), on(2));
    let high = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.map(high, Iova::new(1 << 40), PhysAddr::new(0), K4, RW)
        .unwrap();
    let missing = |m| Incompatibility::Missing(m);
    let cases = [
        (
            dp,
            IoasidFlags::ENFORCE_SNOOP,
            missing(Missing::SnoopControl),
        ),
        (
            dp,
            IoasidFlags::DIRTY_TRACKING,
            missing(Missing::DirtyTracking),
        ),
        (dp, IoasidFlags::NEST_PARENT, missing(Missing::Nesting)),
    ];
    let live = alloc.stats().live_pages;
    for (dev, flags, reason) in cases {
        let io = ctx.alloc(flags).unwrap();
        let live = alloc.stats().live_pages;
        let e = ctx.attach(dev, io).unwrap_err();
        assert_eq!(
            e,
            Error::Incompatible {
                device: dev,
                reason
            },
            "{flags:?}"
        );
        assert_eq!(alloc.stats().live_pages, live);
        ctx.free(io).unwrap();
    }
    assert_eq!(alloc.stats().live_pages, live);
    assert_eq!(
        ctx.attach(dn, high),
        Err(Error::Incompatible {
            device: dn,
            reason: missing(Missing::AddressWidth { need: 41, have: 39 })
        })
    );
    assert_eq!(
        ctx.attach(dc, high),
        Err(Error::Incompatible {
            device: dc,
            reason: Incompatibility::Alignment {
                iova: Iova::new(1 << 40),
                granule_log2: 16
            }
        })
    );
    assert_eq!(alloc.stats().live_pages, live);
    for u in [&plain, &narrow, &coarse] {
        assert_eq!(u.live_domains(), 0);
        assert!(u.events().iter().all(|e| matches!(e, Event::Free(_))));
    }
}

#[test]
fn failed_unmap_puts_back_what_was_removed() {
    with_two_attached_units(|ctx, io, u0, u1| {
        ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), M2, RW)
            .unwrap();
        *u1.fail_unmap_at.lock().unwrap() = Some(M2 + K4);
        assert!(ctx.unmap(io, Iova::new(M2 + K4), K4).is_err());
        for u in [u0, u1] {
            let d = u.domain_of(DeviceId(1)).unwrap();
            let m = u.query(d, Iova::new(M2 + K4)).expect("mapped again");
            assert_eq!(m.pa, PhysAddr::new(4 * M2 + K4));
        }
        assert!(ctx.translate(io, Iova::new(M2 + K4)).unwrap().is_some());
        *u1.fail_unmap_at.lock().unwrap() = None;
        assert_eq!(ctx.unmap(io, Iova::new(M2 + K4), K4), Ok(K4));
    });
}

/// An unmap that a unit refuses reports that refusal, even after another unit left the
/// invalidation owed: the refusal puts the range back everywhere; the owed invalidation is
/// settled first by the next calls (which fail while it does).
#[test]
fn a_refused_unmap_is_reported_over_an_owed_invalidation() {
    with_two_attached_units(|ctx, io, u0, u1| {
        ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        *u1.fail_unmap_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.unmap(io, Iova::new(M2), K4),
            Err(Error::Iommu(IommuError::Timeout { what: "test" }))
        );
        assert!(ctx.translate(io, Iova::new(M2)).unwrap().is_some());
        *u1.fail_unmap_at.lock().unwrap() = None;
        assert!(matches!(
            ctx.unmap(io, Iova::new(M2), K4),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                ..
            })
        ));
        *u0.fail_flush_at.lock().unwrap() = None;
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(K4));
    });
}

/// A detach whose unmaps of direct regions fail reports the first failure (a refused unmap
/// of the first region, not the invalidation the second one left owed), notes both for the
/// retry, and the retry completes them.
#[test]
fn a_detach_reports_its_first_failure_and_the_retry_completes_it() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let (a, b) = (0x3000_0000, 0x4000_0000);
    let regions = [
        DirectRegion::new(range(a, a + K4), false).unwrap(),
        DirectRegion::new(range(b, b + K4), false).unwrap(),
    ];
    let dev = ctx
        .bind_with_direct(label(0, 1), false, None, &regions)
        .unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    *u.fail_unmap_at.lock().unwrap() = Some(a);
    *u.fail_flush_at.lock().unwrap() = Some(b);
    assert_eq!(
        ctx.detach(dev),
        Err(Error::Iommu(IommuError::Timeout { what: "test" }))
    );
    assert_eq!(u.domain_of(DeviceId(1)), None);
    *u.fail_unmap_at.lock().unwrap() = None;
    *u.fail_flush_at.lock().unwrap() = None;
    assert_eq!(ctx.detach(dev), Ok(()));
    for iova in [a, b] {
        assert_eq!(ctx.translate(io, Iova::new(iova)), Ok(None), "{iova:#x}");
    }
    assert_eq!(ctx.detach(dev), Err(Error::NotAttached(dev)));
}

/// A device whose detaches leave invalidations owed in three IOASIDs (each detach's unmap of
/// its direct region not confirmed, the unit failing on) forgets none of them: a retry while
/// the unit still fails keeps them all, and the retry once it answers settles every one
/// before it returns `Ok`. Before, `Device::left_owing` held two and a third note overwrote
/// the second: the retry returned `Ok` with that IOASID still owing the invalidation of the
/// region's unmap (stale IOTLB entries for pages the caller may then reuse).
#[test]
fn a_device_leaving_three_ioasids_owing_forgets_none() {
    with_two_attached_units(|ctx, _, u0, _| {
        let region = DirectRegion::new(range(M2, M2 + K4), false).unwrap();
        let dev = ctx
            .bind_with_direct(label(0, 2), false, None, &[region])
            .unwrap();
        let owing = [(); 3].map(|()| ctx.alloc(IoasidFlags::empty()).unwrap());
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        let pending = Err(Error::InvalidationPending {
            unit: UnitId(0),
            error: IommuError::Timeout { what: "flush" },
        });
        for io in owing {
            ctx.attach(dev, io).unwrap();
            assert_eq!(ctx.detach(dev), pending);
        }
        assert_eq!(ctx.detach(dev), pending);
        *u0.fail_flush_at.lock().unwrap() = None;
        assert_eq!(ctx.detach(dev), Ok(()));
        let owes = |io: IoasidId| ctx.state.read().ioasid(io).unwrap().pending.any();
        for io in owing {
            assert!(
                !owes(io),
                "IOASID {} still owes the region's invalidation",
                io.0
            );
        }
        assert_eq!(ctx.detach(dev), Err(Error::NotAttached(dev)));
    });
}

/// An unbind after a detach that left an invalidation owed settles it first (review of
/// 2026-12-07, F2): while the unit still fails, the unbind fails with it and the device stays
/// bound; once the unit answers, the unbind settles and releases. Before, the unbind saw no
/// attachment, skipped the detach, and returned `Ok` with the IOASID still owing the
/// invalidation of the direct region's unmap and the device's retry notes dropped.
#[test]
fn an_unbind_settles_what_a_detach_left_owed() {
    with_two_attached_units(|ctx, _, u0, _| {
        let region = DirectRegion::new(range(M2, M2 + K4), false).unwrap();
        let dev = ctx
            .bind_with_direct(label(0, 2), false, None, &[region])
            .unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        let pending = Err(Error::InvalidationPending {
            unit: UnitId(0),
            error: IommuError::Timeout { what: "flush" },
        });
        assert_eq!(ctx.detach(dev), pending);
        assert_eq!(ctx.unbind(dev), pending);
        let owes = |io: IoasidId| ctx.state.read().ioasid(io).unwrap().pending.any();
        assert!(owes(io), "the failed unbind settled nothing");
        *u0.fail_flush_at.lock().unwrap() = None;
        assert_eq!(ctx.unbind(dev), Ok(()));
        assert!(
            !owes(io),
            "the unbind returned Ok with the invalidation owed"
        );
    });
}

/// A domain whose unmap fails partway (`EntryUnstable` after a prefix went) gets that prefix
/// back too, as the domains before it get the whole range: after the error every domain maps
/// what the record holds.
#[test]
fn an_unmap_that_fails_partway_puts_back_the_failing_domains_prefix() {
    with_two_attached_units(|ctx, io, u0, u1| {
        ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), M2, RW)
            .unwrap();
        // u1's unmap of pages 1-7 clears pages 1-3, then fails at page 4.
        *u1.unstable_at.lock().unwrap() = Some(M2 + 4 * K4);
        let r = ctx.unmap(io, Iova::new(M2 + K4), 7 * K4);
        assert!(r.is_err(), "{r:?}");
        for (n, u) in [u0, u1].into_iter().enumerate() {
            let d = u.domain_of(DeviceId(1)).unwrap();
            for i in 0..512 {
                let m = u.query(d, Iova::new(M2 + i * K4));
                let m = m.unwrap_or_else(|| panic!("unit {n}: page {i} unmapped after the error"));
                assert_eq!(m.pa, PhysAddr::new(4 * M2 + i * K4), "unit {n}, page {i}");
            }
        }
        assert!(ctx.translate(io, Iova::new(M2 + K4)).unwrap().is_some());
        *u1.unstable_at.lock().unwrap() = None;
        assert_eq!(ctx.unmap(io, Iova::new(M2 + K4), 7 * K4), Ok(7 * K4));
    });
}

#[test]
fn iova_sizes_are_rounded_to_pages() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    assert_eq!(
        ctx.alloc_iova(io, 0, K4),
        Err(Error::NoIovaSpace { size: 0 })
    );
    let a = ctx.alloc_iova(io, 100, 1).unwrap();
    let b = ctx.alloc_iova(io, 100, 1).unwrap();
    assert_eq!(b.get() - a.get(), K4);
    assert_eq!(
        ctx.alloc_iova(io, u64::MAX, K4),
        Err(Error::NoIovaSpace { size: u64::MAX })
    );
}

/// Dropping a context detaches every device and PASID before their domains are freed, frees
/// every domain and IOASID, returns every page and PASID, and releases every device.
#[test]
fn dropping_a_context_tears_everything_down_in_order() {
    let alloc = test_alloc();
    let (u0, u1) = (FakeUnit::new(&alloc, true), FakeUnit::new(&alloc, true));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u0, &u1], &pasids).unwrap();
    let empty = alloc.stats().live_pages;
    {
        let ctx = IoasidCtx::new(&reg, &alloc, 4);
        let (d0, d1) = (
            ctx.bind(label(0, 1), false).unwrap(),
            ctx.bind(label(1, 1), true).unwrap(),
        );
        let shared = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
        let pasid_io = ctx.alloc(IoasidFlags::PASID).unwrap();
        let _unused = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(d0, shared).unwrap();
        ctx.attach(d1, shared).unwrap();
        let p = ctx.alloc_pasid().unwrap();
        ctx.attach_pasid(d0, p, pasid_io).unwrap();
        for io in [shared, pasid_io] {
            ctx.map(
                io,
                Iova::new(G1),
                PhysAddr::new(0),
                G1 + 3 * M2 + 5 * K4,
                RW,
            )
            .unwrap();
        }
        assert!(alloc.stats().live_pages > empty);
        assert!(reg.pasids().is_allocated(p));
    }
    assert_eq!(alloc.stats().live_pages, empty, "every page returned");
    assert!(alloc.bad_frees().is_empty());
    for u in [&u0, &u1] {
        assert_eq!(u.live_domains(), 0);
        assert!(u.attached.lock().unwrap().is_empty());
        // No domain is freed while a device or PASID still points at it.
        let events = u.events();
        for (i, e) in events.iter().enumerate() {
            if let Event::Free(d) = e {
                let mut live = Vec::new();
                for e in &events[..i] {
                    match e {
                        Event::Attach(dev, p, dom) => {
                            live.retain(|(x, q, _)| !(x == dev && q == p));
                            live.push((*dev, *p, *dom));
                        }
                        Event::Detach(dev, p) => live.retain(|(x, q, _)| !(x == dev && q == p)),
                        Event::Free(_) => {}
                    }
                }
                assert!(live.iter().all(|(_, _, dom)| dom != d), "{events:?}");
            }
        }
    }
    // The devices are free for another context.
    let again = IoasidCtx::new(&reg, &alloc, 0);
    again.bind(label(0, 1), false).unwrap();
}

/// The context is shared between threads (documented locking in the module docs).
#[test]
fn the_context_is_sync() {
    fn assert_sync<T: Sync>() {}
    assert_sync::<IoasidCtx<'static, 'static, TestAlloc>>();
    assert_sync::<Registry<'static>>();
}

/// A range ending at the top of the 64-bit physical space maps and unmaps without overflow.
#[test]
fn mapping_the_last_physical_page() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    let top = PhysAddr::new(u64::MAX - (2 * K4 - 1));
    ctx.map(io, Iova::new(M2), top, 2 * K4, RW).unwrap();
    assert_eq!(
        ctx.translate(io, Iova::new(M2 + K4 + 8))
            .unwrap()
            .unwrap()
            .pa,
        PhysAddr::new(u64::MAX - K4 + 9)
    );
    assert_eq!(ctx.unmap(io, Iova::new(M2), 2 * K4), Ok(2 * K4));
    assert!(matches!(
        ctx.map(
            io,
            Iova::new(M2),
            PhysAddr::new(u64::MAX - K4 + 1),
            2 * K4,
            RW
        ),
        Err(Error::PageTable(crate::pgtable::Error::Overflow { .. }))
    ));
}

/// Two devices of one unit attached to one IOASID share its domain there; the domain goes with
/// the last of them.
#[test]
fn devices_of_one_unit_share_the_domain() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).unwrap();
    let (a, b) = (
        ctx.bind(label(0, 1), false).unwrap(),
        ctx.bind(label(0, 2), false).unwrap(),
    );
    ctx.attach(a, io).unwrap();
    ctx.attach(b, io).unwrap();
    assert_eq!(u.live_domains(), 1);
    assert_eq!(u.domain_of(DeviceId(1)), u.domain_of(DeviceId(2)));
    ctx.detach(a).unwrap();
    assert_eq!(u.live_domains(), 1);
    ctx.detach(b).unwrap();
    assert_eq!(u.live_domains(), 0);
}

#[test]
fn the_record_geometry_is_valid() {
    use crate::pgtable::Format;
    let r = super::record::Record::new();
    assert_eq!(r.geometry().validate(), Ok(()));
    assert_eq!(r.geometry().ias, RECORD_IAS);
}

/// The registry is what every embedder builds first, often on a kernel stack: it must stay
/// small (the PASID bitmap lives outside it, in a static).
#[test]
fn the_registry_fits_a_kernel_stack() {
    assert!(
        core::mem::size_of::<Registry<'static>>() <= 8 << 10,
        "Registry is {} bytes",
        core::mem::size_of::<Registry<'static>>()
    );
}

/// A context built in place in an uninitialised slot works like one from `new`, its quota is
/// capped the same way, and dropping it in place returns every page and frees its devices.
#[test]
fn init_in_place_builds_a_working_context() {
    let alloc = test_alloc();
    let unit = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let empty = alloc.stats().live_pages;
    let mut slot =
        std::boxed::Box::new(core::mem::MaybeUninit::<IoasidCtx<'_, '_, TestAlloc>>::uninit());
    let ptr = core::ptr::NonNull::from(&mut *slot).cast::<IoasidCtx<'_, '_, TestAlloc>>();
    // SAFETY: the slot is ours, aligned, uninitialised and unshared.
    unsafe { IoasidCtx::init_in_place(ptr, &reg, &alloc, u32::MAX) };
    {
        // SAFETY: initialised above; the only reference while it lives.
        let ctx = unsafe { ptr.as_ref() };
        assert_eq!(ctx.pasid_quota, MAX_PASID_ATTACHMENTS as u32);
        let dev = ctx.bind(label(0, 1), false).unwrap();
        let io = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(io, Iova::new(0), PhysAddr::new(0), K4, RW).unwrap();
        assert!(alloc.stats().live_pages > empty);
        // Every grant counter starts at 0.
        assert!(!ctx.incoherent_dma_allowed());
    }
    // SAFETY: initialised, no longer referenced; dropped once.
    unsafe { ptr.as_ptr().drop_in_place() };
    assert_eq!(alloc.stats().live_pages, empty);
    assert_eq!(unit.live_domains(), 0);
    let again = IoasidCtx::new(&reg, &alloc, 0);
    again.bind(label(0, 1), false).unwrap();
}

/// Issue 13, item 1 through the IOASID layer: threads unmapping disjoint 4 KiB pages of one
/// 2 MiB mapping split the domain's leaf and the record's once each; no translation the owner
/// did not ask for appears in either (a later attach copies the record), no table leaks.
#[test]
fn concurrent_unmaps_inside_one_superpage() {
    const THREADS: u64 = 4;
    const ROUNDS: usize = if cfg!(miri) { 2 } else { 200 };
    let alloc = test_alloc();
    let unit = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    let d = unit.domain_of(DeviceId(1)).unwrap();
    let (base, pa) = (G1, 4 * G1);
    let page = |i: u64| base + (i * 97 + 5) * K4;
    ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
        .unwrap();
    ctx.unmap(io, Iova::new(base), M2).unwrap();
    // Reclaim runs every few unmaps: compare with no empty table left.
    ctx.reclaim(io).unwrap();
    let live = alloc.stats().live_pages;
    for round in 0..ROUNDS {
        ctx.map(io, Iova::new(base), PhysAddr::new(pa), M2, RW)
            .unwrap();
        let start = std::sync::Barrier::new(THREADS as usize);
        std::thread::scope(|s| {
            for i in 0..THREADS {
                let (ctx, start) = (&ctx, &start);
                s.spawn(move || {
                    start.wait();
                    assert_eq!(ctx.unmap(io, Iova::new(page(i)), K4), Ok(K4));
                });
            }
        });
        for p in (0..512).map(|p| base + p * K4) {
            let unmapped = (0..THREADS).any(|i| page(i) == p);
            let want = (!unmapped).then_some((PhysAddr::new(pa + (p - base)), 12));
            let record = ctx.translate(io, Iova::new(p)).unwrap();
            let domain = unit.query(d, Iova::new(p));
            assert_eq!(record.map(|m| (m.pa, m.size_log2)), want, "round {round}");
            assert_eq!(domain.map(|m| (m.pa, m.size_log2)), want, "round {round}");
        }
        ctx.unmap(io, Iova::new(base), M2).unwrap();
        ctx.reclaim(io).unwrap();
        assert_eq!(
            alloc.stats().live_pages,
            live,
            "round {round}: a table leaked"
        );
    }
}

/// Found by review: `reserve_region` took a range over an existing mapping, an IOVA
/// reservation or a bound device's direct region (making that device unattachable).
#[test]
fn reserve_region_refuses_what_the_context_uses() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    let range = |start: u64, end: u64| IovaRange {
        start: Iova::new(start),
        end: Iova::new(end),
    };
    ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    let r = range(0, 0x20_0000);
    assert_eq!(
        ctx.reserve_region(r),
        Err(Error::ReserveOverlaps(InUse::Mapping {
            ioasid: io,
            range: range(0x10_0000, 0x10_1000)
        }))
    );
    let v = ctx.alloc_iova(io, K4, K4).unwrap();
    let r = range(v.get(), v.get() + K4);
    assert_eq!(
        ctx.reserve_region(r),
        Err(Error::ReserveOverlaps(InUse::IovaReservation {
            ioasid: io,
            range: r
        }))
    );
    let region = DirectRegion::new(range(0x3000_0000, 0x3000_2000), false).unwrap();
    let d = ctx
        .bind_with_direct(label(0, 1), false, None, &[region])
        .unwrap();
    let r = range(0x3000_1000, 0x4000_0000);
    assert_eq!(
        ctx.reserve_region(r),
        Err(Error::ReserveOverlaps(InUse::DirectRegion {
            device: d,
            region: region.range()
        }))
    );
    // Nothing was reserved: the device still attaches and the ranges still map.
    ctx.attach(d, io).unwrap();
    ctx.map(io, Iova::new(0x1f_f000), PhysAddr::new(0), K4, RW)
        .unwrap();
    let free = range(0x5000_0000, 0x6000_0000);
    ctx.reserve_region(free).unwrap();
    assert_eq!(
        ctx.map(io, Iova::new(0x5000_0000), PhysAddr::new(0), K4, RW),
        Err(Error::Reserved(free))
    );
    let shown = std::format!(
        "{}",
        Error::ReserveOverlaps(InUse::DirectRegion {
            device: d,
            region: region.range()
        })
    );
    assert!(shown.contains("direct region"), "{shown}");
}

/// iommufd `IOMMU_IOAS_UNMAP` with iova 0 and length `u64::MAX` unmaps every area of the
/// IOAS, whatever the address width: so does [`IoasidCtx::unmap`] with [`UNMAP_ALL`]. Attached
/// devices' direct regions stay mapped (they are not the owner's mappings; iommufd's reserved
/// regions are not areas either).
#[test]
fn iommufd_unmap_all_is_iova_0_length_u64_max() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let region = DirectRegion::new(range(0x3000_0000, 0x3000_2000), false).unwrap();
    let dev = ctx
        .bind_with_direct(label(0, 1), false, None, &[region])
        .unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    let top = (1u64 << 48) - K4;
    for (iova, len) in [
        (0x10_0000, K4),
        (0x20_0000, M2),
        (0x3000_2000, K4),
        (top, K4),
    ] {
        ctx.map(io, Iova::new(iova), PhysAddr::new(0x8000_0000), len, RW)
            .unwrap();
    }
    assert_eq!(ctx.unmap(io, Iova::new(0), UNMAP_ALL), Ok(3 * K4 + M2));
    let d = u.domain_of(DeviceId(1)).unwrap();
    for iova in [0x10_0000, 0x20_0000, 0x3000_2000, top] {
        assert_eq!(ctx.translate(io, Iova::new(iova)), Ok(None), "{iova:#x}");
        assert!(u.query(d, Iova::new(iova)).is_none(), "{iova:#x}");
    }
    // The direct region is still there, in the record and in the domain.
    for iova in [0x3000_0000, 0x3000_1000] {
        assert!(ctx.translate(io, Iova::new(iova)).unwrap().is_some());
        assert!(u.query(d, Iova::new(iova)).is_some());
    }
    // Nothing left: 0 bytes, as iommufd (which also says ENOENT; see the module docs).
    assert_eq!(ctx.unmap(io, Iova::new(0), UNMAP_ALL), Ok(0));
    // Without an attached device, unmap-all also takes what lay where the direct region was.
    ctx.detach(dev).unwrap();
    ctx.map(io, Iova::new(0x3000_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    assert_eq!(ctx.unmap(io, Iova::new(0), UNMAP_ALL), Ok(K4));
    // Any other length keeps its meaning: a range beyond the address space is refused.
    assert!(ctx.unmap(io, Iova::new(K4), u64::MAX).is_err());
}

/// iommufd: unbinding an attached device (`iommufd_device_unbind`, closing the VFIO device
/// file) detaches it first; so does [`IoasidCtx::unbind`], PASID attachments included.
#[test]
fn iommufd_unbind_of_attached_device_detaches() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 1);
    let dev = ctx.bind(label(0, 1), false).unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    let pio = ctx.alloc(IoasidFlags::PASID).unwrap();
    let p = ctx.alloc_pasid().unwrap();
    ctx.attach(dev, io).unwrap();
    ctx.attach_pasid(dev, p, pio).unwrap();
    ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    ctx.unbind(dev).unwrap();
    let ev = u.events();
    assert!(ev.contains(&Event::Detach(DeviceId(1), None)), "{ev:?}");
    assert!(ev.contains(&Event::Detach(DeviceId(1), Some(p))), "{ev:?}");
    assert_eq!(u.live_domains(), 0);
    assert_eq!(ctx.device_info(dev), Err(Error::NoSuchDevice(dev)));
    // The IOASIDs are free of users; the device may be bound again, here or elsewhere.
    ctx.free(pio).unwrap();
    assert!(ctx.translate(io, Iova::new(0x10_0000)).unwrap().is_some());
    ctx.free(io).unwrap();
    let other = IoasidCtx::new(&reg, &alloc, 0);
    other.bind(label(0, 1), false).unwrap();
}

fn range(start: u64, end: u64) -> IovaRange {
    IovaRange {
        start: Iova::new(start),
        end: Iova::new(end),
    }
}

/// iommufd returns `ENOENT` (and 0 bytes) for an unmap of a range holding no mapping; this
/// layer returns `Ok(0)` (module docs: a vIOMMU replays redundant unmaps, QEMU turns the
/// `ENOENT` back into success, and a retry after `InvalidationPending` must reach `Ok`).
#[test]
fn iommufd_unmap_of_nothing_is_0_bytes() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.map(io, Iova::new(0x10_0000), PhysAddr::new(0), K4, RW)
        .unwrap();
    assert_eq!(ctx.unmap(io, Iova::new(0x20_0000), M2), Ok(0));
    assert_eq!(ctx.unmap(io, Iova::new(0x10_0000), K4), Ok(K4));
    assert_eq!(ctx.unmap(io, Iova::new(0x10_0000), K4), Ok(0));
}

/// Two units without snoop control in one registry, the second mapping 64 KiB granules
/// (`fine`, `coarse`), a context and an IOASID with no device attached: `f` gets the
/// allocator, the context, the IOASID and the units.
fn with_fine_and_coarse_units(
    f: impl for<'a> FnOnce(
        &'a TestAlloc,
        &IoasidCtx<'_, 'a, TestAlloc>,
        IoasidId,
        &FakeUnit<'a>,
        &FakeUnit<'a>,
    ),
) {
    let alloc = test_alloc();
    let fine = FakeUnit::new(&alloc, false);
    let mut coarse = FakeUnit::new(&alloc, false);
    coarse.geometry = Some((48, 1 << 16));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&fine, &coarse], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    f(&alloc, &ctx, io, &fine, &coarse);
}

/// A new domain is filled from the record `attach::FILL_CHUNK` runs at a time (each walk of
/// the record resumes where the last one stopped): more runs than three chunks hold, with a
/// 2 MiB leaf among them and 64 KiB runs of sixteen 4 KiB leaves, all reach the domain.
#[test]
fn a_fill_copies_more_runs_than_a_chunk_holds() {
    with_fine_and_coarse_units(|_, ctx, io, fine, coarse| {
        let runs = 3 * attach::FILL_CHUNK + 5;
        // 64 KiB runs, 128 KiB apart, each its own PA range (not contiguous with the next).
        let at = |i: usize| (i as u64) * (1 << 17);
        for i in 0..runs {
            ctx.map(
                io,
                Iova::new(at(i)),
                PhysAddr::new(G1 + at(i) * 3),
                1 << 16,
                RW,
            )
            .unwrap();
        }
        ctx.map(io, Iova::new(2 * G1), PhysAddr::new(4 * G1), M2, RW)
            .unwrap();
        for (n, u) in [fine, coarse].into_iter().enumerate() {
            let dev = ctx.bind(label(n as u8, 1), false).unwrap();
            ctx.attach(dev, io).unwrap();
            let d = u.domain_of(DeviceId(1)).unwrap();
            for i in 0..runs {
                for page in [0, 15] {
                    let iova = at(i) + page * K4;
                    let m = u.query(d, Iova::new(iova)).expect("copied");
                    assert_eq!(m.pa, PhysAddr::new(G1 + at(i) * 3 + page * K4), "{iova:#x}");
                }
                assert!(u.query(d, Iova::new(at(i) + (1 << 16))).is_none());
            }
            let m = u
                .query(d, Iova::new(2 * G1 + M2 - K4))
                .expect("2 MiB copied");
            assert_eq!(m.pa, PhysAddr::new(4 * G1 + M2 - K4));
            let mut leaves = 0;
            u.for_each_mapping(d, Iova::ZERO, 1 << 40, &mut |_| leaves += 1)
                .unwrap();
            // The unit's table holds 4 KiB leaves for each 64 KiB run, and the 2 MiB leaf.
            assert_eq!(leaves, runs * 16 + 1);
        }
    });
}

/// A run the unit refuses in the fill's second chunk: the attach fails with nothing left of
/// the new domain (its maps of the first chunk go with it), the device stays where it was, and
/// the same attach succeeds once the unit takes the run. A run that makes no whole granule in
/// the second chunk is refused, named by its IOVA, the same way.
#[test]
fn a_fill_that_fails_in_its_second_chunk_is_undone() {
    with_fine_and_coarse_units(|alloc, ctx, io, fine, coarse| {
        let pages = 3 * attach::FILL_CHUNK;
        // 4 KiB pages 8 KiB apart: one run each.
        let at = |i: usize| (i as u64) * 2 * K4;
        for i in 0..pages {
            ctx.map(io, Iova::new(at(i)), PhysAddr::new(G1 + at(i)), K4, RW)
                .unwrap();
        }
        let dev = ctx.bind(label(0, 1), false).unwrap();
        let before = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, before).unwrap();
        let live = alloc.stats().live_pages;
        let failing = at(attach::FILL_CHUNK + 2);
        *fine.fail_map_at.lock().unwrap() = Some(failing);
        assert!(ctx.attach(dev, io).is_err());
        assert_eq!(alloc.stats().live_pages, live);
        assert_eq!(fine.live_domains(), 1, "only the first IOASID's domain");
        assert_eq!(
            ctx.attachment(dev, None).unwrap().map(|a| a.ioasid),
            Some(before)
        );
        assert!(fine.events().iter().any(|e| matches!(e, Event::Free(_))));
        *fine.fail_map_at.lock().unwrap() = None;
        ctx.attach(dev, io).unwrap();
        let d = fine.domain_of(DeviceId(1)).unwrap();
        for i in 0..pages {
            let m = fine.query(d, Iova::new(at(i))).expect("copied");
            assert_eq!(m.pa, PhysAddr::new(G1 + at(i)));
        }
        // On a 64 KiB unit every one of these runs is short: the first is refused.
        let coarse_dev = ctx.bind(label(1, 1), false).unwrap();
        let short = ctx.alloc(IoasidFlags::empty()).unwrap();
        // Whole granules in the first chunk and beyond, then a short run in the second chunk.
        let whole = attach::FILL_CHUNK + 3;
        for i in 0..whole {
            let iova = (i as u64) << 17;
            ctx.map(
                short,
                Iova::new(iova),
                PhysAddr::new(G1 + iova),
                1 << 16,
                RW,
            )
            .unwrap();
        }
        let tail = (whole as u64) << 17;
        ctx.map(short, Iova::new(tail), PhysAddr::new(G1 + tail), K4, RW)
            .unwrap();
        let live = alloc.stats().live_pages;
        assert_eq!(
            ctx.attach(coarse_dev, short),
            Err(Error::Incompatible {
                device: coarse_dev,
                reason: Incompatibility::Alignment {
                    iova: Iova::new(tail),
                    granule_log2: 16
                }
            })
        );
        assert_eq!(alloc.stats().live_pages, live);
        assert_eq!(coarse.live_domains(), 0);
    });
}

/// What unit `u`'s domain for device 1 maps at `at`.
fn unit_maps(u: &FakeUnit<'_>, at: u64) -> Option<Mapping> {
    u.query(u.domain_of(DeviceId(1)).unwrap(), Iova::new(at))
}

/// A map that u1 refuses, whose undo cannot unmap the page from u0 (which took it): the error
/// says the page is still reachable through u0 (not u1's refusal, which would tell the caller
/// nothing is mapped), `audit` names u0 where it differs, and an unmap of the range finishes
/// the undo.
#[test]
fn a_refused_map_whose_undo_cannot_unmap_reports_the_page_reachable() {
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_map_at.lock().unwrap() = Some(M2);
        *u0.fail_unmap_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "test" }
            })
        );
        assert_eq!(unit_maps(u0, M2).map(|m| m.pa), Some(PhysAddr::new(4 * M2)));
        assert_eq!(unit_maps(u1, M2), None);
        // The record keeps the range (u0 still maps it): `audit` names u1, which does not.
        assert_eq!(
            ctx.translate(io, Iova::new(M2)).unwrap().map(|m| m.pa),
            Some(PhysAddr::new(4 * M2))
        );
        assert_eq!(
            ctx.audit(io),
            Err(Error::Mismatch {
                unit: UnitId(1),
                iova: Iova::new(M2)
            })
        );
        *u0.fail_unmap_at.lock().unwrap() = None;
        // A retry is refused by the record, before any domain is touched.
        assert!(matches!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::PageTable(crate::pgtable::Error::Overlap { .. }))
        ));
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(K4));
        assert_eq!(unit_maps(u0, M2), None);
        ctx.audit(io).unwrap();
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// A map that u1 refuses, whose undo unmaps the page from u0 but whose flush there fails:
/// `InvalidationPending` naming u0 (the page may be reached through a stale IOTLB entry), and
/// the next call reissues the invalidation first.
#[test]
fn a_refused_map_whose_undo_flush_fails_reports_the_invalidation_pending() {
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_map_at.lock().unwrap() = Some(M2);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "flush" }
            })
        );
        assert_eq!(unit_maps(u0, M2), None);
        ctx.audit(io).unwrap();
        *u1.fail_map_at.lock().unwrap() = None;
        // Still owed: the next map reissues it first, and fails while it does.
        assert!(matches!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                ..
            })
        ));
        *u0.fail_flush_at.lock().unwrap() = None;
        ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// A refused map whose undo leaves both meanings of `InvalidationPending` at once: u1 writes
/// the page then fails, u0's undo flush fails (owed: the error names u0), and u1's undo
/// unmap fails with the page still mapped there (the record keeps the range). The error names
/// only u0, so a caller that took it for the flush-only case, and reused `pa` once a later
/// call returned `Ok`, would free a page u1's devices still reach (review of the undo matrix).
/// The one rule the docs state for both (do not reuse `pa` until an unmap of the range
/// returns `Ok`) holds: that unmap settles u0's owed flush and removes u1's leaf.
#[test]
fn a_refused_map_whose_undo_owes_one_unit_and_leaves_another_is_settled_by_an_unmap() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let pa = PhysAddr::new(4 * M2);
        *u1.fail_after_map_at.lock().unwrap() = Some(M2);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        *u1.fail_unmap_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.map(io, Iova::new(M2), pa, K4, RW),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "flush" }
            })
        );
        assert_eq!(unit_maps(u1, M2).map(|m| m.pa), Some(pa));
        *u1.fail_after_map_at.lock().unwrap() = None;
        *u0.fail_flush_at.lock().unwrap() = None;
        *u1.fail_unmap_at.lock().unwrap() = None;
        // A later call elsewhere settles u0's owed flush and returns `Ok`...
        ctx.map(io, Iova::new(8 * M2), PhysAddr::new(16 * M2), K4, RW)
            .unwrap();
        // ...while u1 still maps `pa`: what the docs promised for the flush-only case before
        // (reuse `pa` once "any later call on the IOASID returns `Ok`") failed here.
        assert_eq!(unit_maps(u1, M2).map(|m| m.pa), Some(pa));
        assert!(matches!(
            ctx.map(io, Iova::new(M2), pa, K4, RW),
            Err(Error::PageTable(crate::pgtable::Error::Overlap { .. }))
        ));
        // The rule the docs state for every `InvalidationPending` of a refused map.
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(K4));
        assert_eq!(unit_maps(u0, M2), None);
        assert_eq!(unit_maps(u1, M2), None);
        assert_eq!(ctx.translate(io, Iova::new(M2)).unwrap(), None);
        ctx.audit(io).unwrap();
    });
}

/// The rule's other case: a refused map whose undo only left u0's flush owed (the record maps
/// nothing of the range): an unmap of the range settles the owed flush first, and fails while
/// it cannot, so its `Ok` (0 bytes) is the point after which `pa` may be reused.
#[test]
fn a_refused_map_whose_undo_flush_fails_is_settled_by_an_unmap_of_the_range() {
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_map_at.lock().unwrap() = Some(M2);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        assert!(matches!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                ..
            })
        ));
        assert!(matches!(
            ctx.unmap(io, Iova::new(M2), K4),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                ..
            })
        ));
        let flushes = *u0.flushes.lock().unwrap();
        *u0.fail_flush_at.lock().unwrap() = None;
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(0));
        assert!(
            *u0.flushes.lock().unwrap() > flushes,
            "the owed flush reissued"
        );
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(0));
        *u1.fail_map_at.lock().unwrap() = None;
    });
}

/// The source of the copy tests: two 4 KiB runs at `SRC` (physical pages apart), in an IOASID
/// with no device.
const SRC: u64 = 0x10_0000;

fn two_runs(ctx: &IoasidCtx<'_, '_, TestAlloc>) -> IoasidId {
    let src = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.map(src, Iova::new(SRC), PhysAddr::new(4 * M2), K4, RW)
        .unwrap();
    ctx.map(src, Iova::new(SRC + K4), PhysAddr::new(8 * M2), K4, RW)
        .unwrap();
    src
}

/// One fake unit, a context, `two_runs` as the source and an empty destination IOASID: `f`
/// gets the context, the source and the destination.
fn with_copy_src_and_dst(f: impl FnOnce(&IoasidCtx<'_, '_, TestAlloc>, IoasidId, IoasidId)) {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let src = two_runs(&ctx);
    let dst = ctx.alloc(IoasidFlags::empty()).unwrap();
    f(&ctx, src, dst);
}

/// Runs `copy` on a thread of its own, paused at `point` (`copy_pause`: it holds no lock of the
/// context there), runs `meanwhile` on this thread, lets the copy go on and returns both
/// answers. `meanwhile` must not panic (no assertion): the copy would be left waiting.
pub(crate) fn copy_paused_at<R: Send, T>(
    point: &'static str,
    copy: impl FnOnce() -> R + Send,
    meanwhile: impl FnOnce() -> T,
) -> (R, T) {
    let pause = Arc::new((Barrier::new(2), Barrier::new(2)));
    std::thread::scope(|s| {
        let copying = s.spawn(|| {
            COPY_PAUSE.with(|c| *c.borrow_mut() = Some((point, Arc::clone(&pause))));
            copy()
        });
        pause.0.wait();
        let answers = meanwhile();
        pause.1.wait();
        (copying.join().unwrap(), answers)
    })
}

/// A copy whose second run u1 refuses, and whose undo of the first run cannot unmap it from u0:
/// the error says the page is still reachable through u0, and an unmap of the range finishes
/// the undo.
#[test]
fn a_failed_copy_whose_undo_cannot_unmap_reports_the_page_reachable() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let src = two_runs(ctx);
        *u1.fail_map_at.lock().unwrap() = Some(M2 + K4);
        *u0.fail_unmap_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "test" }
            })
        );
        assert_eq!(unit_maps(u0, M2).map(|m| m.pa), Some(PhysAddr::new(4 * M2)));
        assert_eq!(unit_maps(u0, M2 + K4), None);
        *u0.fail_unmap_at.lock().unwrap() = None;
        *u1.fail_map_at.lock().unwrap() = None;
        assert!(ctx.unmap(io, Iova::new(M2), 2 * K4).is_ok());
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2), None);
        }
        ctx.audit(io).unwrap();
        ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// A copy whose second run u1 refuses, and whose undo of the first run unmaps it from u0 but
/// cannot flush: `InvalidationPending` naming u0.
#[test]
fn a_failed_copy_whose_undo_flush_fails_reports_the_invalidation_pending() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let src = two_runs(ctx);
        *u1.fail_map_at.lock().unwrap() = Some(M2 + K4);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "flush" }
            })
        );
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2), None);
            assert_eq!(unit_maps(u, M2 + K4), None);
        }
        ctx.audit(io).unwrap();
        *u0.fail_flush_at.lock().unwrap() = None;
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// Which unit a failed copy names when two owe: the first whose undo left something in the
/// order the undo ran, the failed run's own undo (domain order) before the earlier runs'
/// (domain order), not the first in domain order. u1 writes run 2 then fails (as a unit whose
/// map publishes with an invalidation can), and its flush of run 2's undo fails: owed, named;
/// u0's flush of the earlier run's undo fails too, and u0 comes first in domain order. Only a
/// unit that wrote before failing owes in its own run's undo, so with two units whose maps
/// issue no command (the undo matrix's) the two orders name the same unit. An unmap of the
/// range settles both.
#[test]
fn a_failed_copy_names_its_failed_runs_undo_before_the_earlier_runs() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let src = two_runs(ctx);
        *u1.fail_after_map_at.lock().unwrap() = Some(M2 + K4);
        *u1.fail_flush_at.lock().unwrap() = Some(M2 + K4);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4),
            Err(Error::InvalidationPending {
                unit: UnitId(1),
                error: IommuError::Timeout { what: "flush" }
            })
        );
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2), None);
            assert_eq!(unit_maps(u, M2 + K4), None);
        }
        // Both owe: an unmap of the range fails while either's flush does.
        *u1.fail_flush_at.lock().unwrap() = None;
        assert!(matches!(
            ctx.unmap(io, Iova::new(M2), 2 * K4),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                ..
            })
        ));
        *u0.fail_flush_at.lock().unwrap() = None;
        assert_eq!(ctx.unmap(io, Iova::new(M2), 2 * K4), Ok(0));
        *u1.fail_after_map_at.lock().unwrap() = None;
        ctx.audit(io).unwrap();
        ctx.copy(src, Iova::new(SRC), io, Iova::new(M2), 2 * K4)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// In [`with_two_attached_units`]' context: a device of u0 bound with two direct regions (at
/// 2 MiB and 4 MiB), not attached; u1 refuses the second region's map.
fn refused_attach_setup(ctx: &IoasidCtx<'_, '_, TestAlloc>, u1: &FakeUnit<'_>) -> DeviceHandle {
    let regions = [
        DirectRegion::new(range(M2, M2 + K4), false).unwrap(),
        DirectRegion::new(range(2 * M2, 2 * M2 + K4), false).unwrap(),
    ];
    let dev = ctx
        .bind_with_direct(label(0, 2), false, None, &regions)
        .unwrap();
    *u1.fail_map_at.lock().unwrap() = Some(2 * M2);
    dev
}

/// An attach whose second direct region u1 refuses, and whose undo of that region cannot
/// unmap it from u0: the attach says the region is still reachable through u0 (not u1's
/// refusal), and an unmap of the range finishes the undo.
#[test]
fn a_refused_attach_whose_undo_cannot_unmap_reports_the_region_reachable() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let dev = refused_attach_setup(ctx, u1);
        *u0.fail_unmap_at.lock().unwrap() = Some(2 * M2);
        assert_eq!(
            ctx.attach(dev, io),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "test" }
            })
        );
        assert_eq!(ctx.attachment(dev, None).unwrap(), None);
        assert!(unit_maps(u0, 2 * M2).is_some());
        assert_eq!(unit_maps(u0, M2), None);
        *u0.fail_unmap_at.lock().unwrap() = None;
        // The record kept the region's range (u0 still maps it): the unmap frees it.
        assert_eq!(ctx.unmap(io, Iova::new(2 * M2), K4), Ok(K4));
        ctx.audit(io).unwrap();
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.attach(dev, io).unwrap();
        ctx.audit(io).unwrap();
    });
}

/// An attach whose second direct region u1 refuses, and whose undo of the first region
/// unmaps it from u0 but cannot flush: `InvalidationPending` naming u0 (not u1's refusal).
#[test]
fn a_refused_attach_whose_undo_flush_fails_reports_the_invalidation_pending() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let dev = refused_attach_setup(ctx, u1);
        *u0.fail_flush_at.lock().unwrap() = Some(M2);
        assert_eq!(
            ctx.attach(dev, io),
            Err(Error::InvalidationPending {
                unit: UnitId(0),
                error: IommuError::Timeout { what: "flush" }
            })
        );
        assert_eq!(ctx.attachment(dev, None).unwrap(), None);
        assert!(ctx.direct_mappings(io).unwrap().iter().all(Option::is_none));
        for at in [M2, 2 * M2] {
            for u in [u0, u1] {
                assert_eq!(unit_maps(u, at), None, "{at:#x}");
            }
        }
        ctx.audit(io).unwrap();
        *u0.fail_flush_at.lock().unwrap() = None;
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.attach(dev, io).unwrap();
        ctx.audit(io).unwrap();
    });
}

/// An attach whose second direct region u1 refuses, and whose undo of the first region u0
/// refuses to unmap (no real unit can: see `undo_left`): that region stays a direct mapping
/// without users, in the record and both domains (`audit` holds), reserved against `map` and
/// `unmap`; the attach retried takes it again.
#[test]
fn a_refused_attach_whose_first_region_cannot_be_unmapped_keeps_it_reserved() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let dev = refused_attach_setup(ctx, u1);
        *u0.fail_unmap_at.lock().unwrap() = Some(M2);
        assert_eq!(ctx.attach(dev, io), Err(Error::Iommu(IommuError::NoMemory)));
        assert_eq!(ctx.attachment(dev, None).unwrap(), None);
        let kept: Vec<_> = ctx
            .direct_mappings(io)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].0.range().start, kept[0].1), (Iova::new(M2), 0));
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2).map(|m| m.pa), Some(PhysAddr::new(M2)));
            assert_eq!(unit_maps(u, 2 * M2), None);
        }
        ctx.audit(io).unwrap();
        assert!(matches!(
            ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::Reserved(_))
        ));
        assert!(matches!(
            ctx.unmap(io, Iova::new(M2), K4),
            Err(Error::Reserved(_))
        ));
        *u0.fail_unmap_at.lock().unwrap() = None;
        *u1.fail_map_at.lock().unwrap() = None;
        ctx.attach(dev, io).unwrap();
        let users: Vec<_> = ctx
            .direct_mappings(io)
            .unwrap()
            .into_iter()
            .flatten()
            .map(|(_, users)| users)
            .collect();
        assert_eq!(users, [1, 1]);
        ctx.audit(io).unwrap();
    });
}

/// An attach whose second direct region u1 refuses, and whose undo of that region cannot flush
/// u0 (and u0 keeps failing): the undo of the first region settles what is owed first, which
/// fails again, so the region is never unmapped. It stays a direct mapping of the IOASID
/// (without users, reserved, removed by a later detach or the free), never a mapping that is
/// in the record and both domains but no longer reserved (found by review 19).
#[test]
fn an_attach_undo_that_cannot_settle_keeps_its_first_direct_region() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let dev = refused_attach_setup(ctx, u1);
        // u0 keeps failing the flush covering the second region's undo (a unit timing out).
        *u0.fail_flush_at.lock().unwrap() = Some(2 * M2);
        let r = ctx.attach(dev, io);
        assert!(
            matches!(
                r,
                Err(Error::InvalidationPending {
                    unit: UnitId(0),
                    ..
                })
            ),
            "{r:?}"
        );
        let direct: Vec<_> = ctx
            .direct_mappings(io)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let recorded = ctx.translate(io, Iova::new(M2)).unwrap();
        let in_u0 = unit_maps(u0, M2);
        assert!(
        direct.len() == 1 || (recorded.is_none() && in_u0.is_none()),
        "the first direct region (M2 -> M2) is still mapped (record {recorded:?}, u0 {in_u0:?}) \
         but is no longer a direct mapping of the IOASID"
    );
        assert_eq!(direct[0].1, 0, "{direct:?}");
        assert_eq!(ctx.attachment(dev, None).unwrap(), None);
        // Reserved against the owner's map and unmap.
        assert!(matches!(
            ctx.unmap(io, Iova::new(M2), K4),
            Err(Error::Reserved(_) | Error::InvalidationPending { .. })
        ));
    });
}

/// Same state, then the unit recovers: the attach retried takes the kept region again and
/// succeeds (it was refused with `DirectRegionCollides` while the region was forgotten).
#[test]
fn an_attach_retried_after_its_undo_could_not_settle_succeeds() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let dev = refused_attach_setup(ctx, u1);
        *u0.fail_flush_at.lock().unwrap() = Some(2 * M2);
        let _ = ctx.attach(dev, io);
        *u0.fail_flush_at.lock().unwrap() = None;
        *u1.fail_map_at.lock().unwrap() = None;
        let r = ctx.attach(dev, io);
        assert_eq!(r, Ok(()), "the attach retried after the unit recovered");
        ctx.audit(io).unwrap();
        let users: Vec<_> = ctx
            .direct_mappings(io)
            .unwrap()
            .into_iter()
            .flatten()
            .map(|(_, n)| n)
            .collect();
        assert_eq!(users, [1, 1]);
    });
}

/// A map refused by u1 whose undo cannot unmap u0: the record keeps the range, so
/// `alloc_iova` never hands it out again (A gave its reservation back), B's map at the IOVA it
/// got succeeds, and A's unmap of its range erases nothing of B's, then frees the range.
#[test]
fn alloc_iova_never_hands_out_a_range_a_domain_still_maps() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let x = ctx.alloc_iova(io, K4, K4).unwrap();
        *u1.fail_map_at.lock().unwrap() = Some(x.get());
        *u0.fail_unmap_at.lock().unwrap() = Some(x.get());
        let r = ctx.map(io, x, PhysAddr::new(4 * M2), K4, RW);
        assert!(matches!(r, Err(Error::InvalidationPending { .. })), "{r:?}");
        *u1.fail_map_at.lock().unwrap() = None;
        *u0.fail_unmap_at.lock().unwrap() = None;
        // Caller A gives its IOVA back.
        assert!(ctx.free_iova(io, x).unwrap());
        // Caller B.
        let y = ctx.alloc_iova(io, K4, K4).unwrap();
        assert_ne!(y, x);
        let rb = ctx.map(io, y, PhysAddr::new(8 * M2), K4, RW);
        assert_eq!(
            rb,
            Ok(()),
            "B's map at {y:?}, which alloc_iova just reserved for it"
        );
        // A's way out: an unmap of its range, which leaves B's mapping alone.
        assert_eq!(ctx.unmap(io, x, K4), Ok(K4));
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, x.get()), None);
            assert_eq!(
                unit_maps(u, y.get()).map(|m| m.pa),
                Some(PhysAddr::new(8 * M2))
            );
        }
        ctx.audit(io).unwrap();
        assert_eq!(ctx.alloc_iova(io, K4, K4), Ok(x));
    });
}

/// After A's map of R got `InvalidationPending` (u0 still maps R), B's map of R is refused by
/// the record (`Overlap`) before any domain is touched, so B's undo never clears A's leftover
/// and B never holds R; A's retry is refused the same way; A's unmap of R (the documented way
/// out) unmaps it everywhere, and B's map of R then succeeds and stays.
#[test]
fn a_map_over_a_range_a_domain_still_maps_is_refused_until_the_owner_unmaps_it() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let (pa_a, pa_b) = (PhysAddr::new(4 * M2), PhysAddr::new(8 * M2));
        *u1.fail_map_at.lock().unwrap() = Some(M2);
        *u0.fail_unmap_at.lock().unwrap() = Some(M2);
        let r = ctx.map(io, Iova::new(M2), pa_a, K4, RW);
        assert!(matches!(r, Err(Error::InvalidationPending { .. })), "{r:?}");
        *u1.fail_map_at.lock().unwrap() = None;
        *u0.fail_unmap_at.lock().unwrap() = None;
        // B, between A's failure and A's recovery: refused by the record, twice.
        for _ in 0..2 {
            let b = ctx.map(io, Iova::new(M2), pa_b, K4, RW);
            assert!(
                matches!(
                    b,
                    Err(Error::PageTable(crate::pgtable::Error::Overlap { .. }))
                ),
                "{b:?}"
            );
            assert_eq!(unit_maps(u0, M2).map(|m| m.pa), Some(pa_a));
        }
        // A's retry: refused the same way.
        let a2 = ctx.map(io, Iova::new(M2), pa_a, K4, RW);
        assert!(
            matches!(
                a2,
                Err(Error::PageTable(crate::pgtable::Error::Overlap { .. }))
            ),
            "{a2:?}"
        );
        // A's way out: erases nothing of B's (B holds nothing), frees the range.
        assert_eq!(ctx.unmap(io, Iova::new(M2), K4), Ok(K4));
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2), None);
        }
        ctx.audit(io).unwrap();
        ctx.map(io, Iova::new(M2), pa_b, K4, RW).unwrap();
        assert_eq!(
            ctx.translate(io, Iova::new(M2)).unwrap().map(|m| m.pa),
            Some(pa_b),
            "B's mapping, made with Ok, was erased by A's documented recovery"
        );
        ctx.audit(io).unwrap();
    });
}

/// A detach while the IOASID owes an invalidation (an earlier unmap's flush failed) and the
/// unit keeps failing: the unmap of the device's direct region is never made (the settle
/// before it fails), and the region stays a direct mapping without users; once the unit
/// recovers, the detach retried unmaps it everywhere.
#[test]
fn a_detach_that_cannot_settle_keeps_the_direct_region_until_it_is_retried() {
    with_two_attached_units(|ctx, io, u0, u1| {
        let regions = [DirectRegion::new(range(M2, M2 + K4), false).unwrap()];
        let dev = ctx
            .bind_with_direct(label(0, 2), false, None, &regions)
            .unwrap();
        ctx.attach(dev, io).unwrap();
        ctx.map(io, Iova::new(3 * M2), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        *u0.fail_flush_at.lock().unwrap() = Some(3 * M2);
        let r = ctx.unmap(io, Iova::new(3 * M2), K4);
        assert!(matches!(r, Err(Error::InvalidationPending { .. })), "{r:?}");
        let d = ctx.detach(dev);
        assert!(matches!(d, Err(Error::InvalidationPending { .. })), "{d:?}");
        let direct: Vec<_> = ctx
            .direct_mappings(io)
            .unwrap()
            .into_iter()
            .flatten()
            .collect();
        let recorded = ctx.translate(io, Iova::new(M2)).unwrap();
        assert!(
            direct.len() == 1 || (recorded.is_none() && unit_maps(u0, M2).is_none()),
            "the detached device's direct region is still mapped but no longer a direct mapping"
        );
        assert_eq!(direct[0].1, 0, "{direct:?}");
        *u0.fail_flush_at.lock().unwrap() = None;
        // The documented way out: detach again settles and returns Ok once nothing is owed.
        assert_eq!(ctx.detach(dev), Ok(()));
        assert_eq!(ctx.translate(io, Iova::new(M2)).unwrap(), None);
        for u in [u0, u1] {
            assert_eq!(unit_maps(u, M2), None);
        }
        assert!(ctx.direct_mappings(io).unwrap().iter().all(Option::is_none));
        ctx.audit(io).unwrap();
    });
}

/// A map inside another call's leftover (here a 2 MiB leaf u0 still maps after a refused map's
/// undo) is refused by the record before any domain is touched, so no undo splits the
/// leftover (what `undo_left` relies on).
#[test]
fn a_map_inside_a_leftover_is_refused_before_any_domain_is_touched() {
    with_two_attached_units(|ctx, io, u0, u1| {
        *u1.fail_map_at.lock().unwrap() = Some(M2);
        *u0.fail_unmap_at.lock().unwrap() = Some(M2);
        let r = ctx.map(io, Iova::new(M2), PhysAddr::new(4 * M2), M2, RW);
        assert!(matches!(r, Err(Error::InvalidationPending { .. })), "{r:?}");
        assert_eq!(unit_maps(u0, M2).map(|m| m.size_log2), Some(21));
        *u1.fail_map_at.lock().unwrap() = None;
        *u0.fail_unmap_at.lock().unwrap() = None;
        let b = ctx.map(io, Iova::new(M2 + K4), PhysAddr::new(8 * M2), K4, RW);
        assert!(
            matches!(
                b,
                Err(Error::PageTable(crate::pgtable::Error::Overlap { .. }))
            ),
            "{b:?}"
        );
        assert_eq!(
            unit_maps(u0, M2).map(|m| m.size_log2),
            Some(21),
            "B's undo split A's 2 MiB leftover in u0 (undo_left says an undo splits nothing)"
        );
    });
}

/// Review 19b F2: a map that straddles the narrowest domain's input width (u1: 39 bits), taken
/// by the wider u0 and refused by u1, whose undo cannot unmap it from u0. Before the IOASID
/// refused such a range itself, the record kept it (`InvalidationPending`), and
/// `unmap(0, UNMAP_ALL)`, cut at the narrowest width, returned `Ok` with u0 still mapping the
/// page above 2^39: the caller freed a page a device behind u0 could reach.
#[test]
fn unmap_all_leaves_nothing_of_a_map_straddling_the_narrowest_width() {
    with_wide_and_narrow(|ctx, io, wide| {
        ctx.attach(ctx.bind(label(1, 1), false).unwrap(), io)
            .unwrap();
        let edge = 1u64 << 39;
        let below = edge - K4;
        *wide.fail_unmap_at.lock().unwrap() = Some(below);
        let mapped = ctx.map(io, Iova::new(below), PhysAddr::new(4 * M2), 2 * K4, RW);
        *wide.fail_unmap_at.lock().unwrap() = None;
        let all = ctx.unmap(io, Iova::ZERO, UNMAP_ALL);
        let beyond = unit_maps(wide, edge).map(|m| m.pa);
        assert!(
            all.is_err() || beyond.is_none(),
            "UNMAP_ALL returned {all:?} with the wide domain still mapping {beyond:?} at 2^39 \
         (the map returned {mapped:?})"
        );
        assert_eq!(ctx.translate(io, Iova::new(edge)).unwrap(), None);
        // Refused by the IOASID itself, naming the narrow domain, before anything was touched.
        assert_eq!(
            mapped,
            Err(Error::BeyondInputWidth {
                last: Iova::new(edge + K4 - 1),
                ias: 39,
                unit: UnitId(1)
            })
        );
        assert_eq!(all, Ok(0));
        assert_eq!(unit_maps(wide, below), None);
        ctx.audit(io).unwrap();
        // So is a copy that would straddle it, before any run is mapped; and below the width
        // both go through.
        let src = two_runs(ctx);
        assert_eq!(
            ctx.copy(src, Iova::new(SRC), io, Iova::new(below), 2 * K4),
            Err(Error::BeyondInputWidth {
                last: Iova::new(edge + K4 - 1),
                ias: 39,
                unit: UnitId(1)
            })
        );
        assert_eq!(unit_maps(wide, below), None);
        ctx.copy(src, Iova::new(SRC), io, Iova::new(below - K4), 2 * K4)
            .unwrap();
        ctx.map(io, Iova::new(edge - 4 * K4), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        ctx.audit(io).unwrap();
    });
}

/// The width test follows the domains: a narrow domain refuses a map above its width while it
/// is behind the IOASID, and once its last device left (the domain freed) the map goes
/// through (`Ioasid::beyond_ias`, kept by `set_domain`).
#[test]
fn the_width_test_follows_the_domains_behind_the_ioasid() {
    with_wide_and_narrow(|ctx, io, wide| {
        let edge = 1u64 << 39;
        let dev = ctx.bind(label(1, 1), false).unwrap();
        ctx.attach(dev, io).unwrap();
        assert_eq!(
            ctx.map(io, Iova::new(edge), PhysAddr::new(4 * M2), K4, RW),
            Err(Error::BeyondInputWidth {
                last: Iova::new(edge + K4 - 1),
                ias: 39,
                unit: UnitId(1)
            })
        );
        ctx.detach(dev).unwrap();
        ctx.map(io, Iova::new(edge), PhysAddr::new(4 * M2), K4, RW)
            .unwrap();
        assert!(unit_maps(wide, edge).is_some());
        ctx.audit(io).unwrap();
    });
}

/// Review 19 finding 4: a copy releases the context's lock between its runs and before its
/// undo, and an `IoasidId` is a slot number. Here the copy's second run is refused (`dst`'s
/// record already maps it) and, before its undo, another thread frees `dst`, allocates an
/// IOASID (which takes `dst`'s number when the free went through) and maps at the copy's
/// first page. The undo must never unmap that IOASID's page: before the copy held its
/// IOASIDs, it did (the other caller's mapping lost, its device faulting).
#[test]
fn a_copy_undo_never_unmaps_an_ioasid_allocated_in_its_place() {
    with_copy_src_and_dst(|ctx, src, dst| {
        ctx.map(dst, Iova::new(M2 + K4), PhysAddr::new(12 * M2), K4, RW)
            .unwrap();
        let (copied, (freed, other, mapped)) = copy_paused_at(
            "undo",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || {
                let freed = ctx.free(dst);
                let other = ctx.alloc(IoasidFlags::empty());
                let mapped =
                    other.map(|o| ctx.map(o, Iova::new(M2), PhysAddr::new(16 * M2), K4, RW));
                (freed, other, mapped)
            },
        );
        assert_eq!(mapped, Ok(Ok(())));
        let other = other.unwrap();
        assert_eq!(
            ctx.translate(other, Iova::new(M2)).unwrap().map(|m| m.pa),
            Some(PhysAddr::new(16 * M2)),
            "the copy's undo unmapped IOASID {other:?}'s page (the free of {dst:?} returned \
             {freed:?}, the copy {copied:?})"
        );
        // `dst` was held by the copy: the free was refused, and the undo took only its run.
        assert_eq!(freed, Err(Error::Busy));
        assert_ne!(other, dst);
        assert_eq!(
            copied,
            Err(Error::PageTable(crate::pgtable::Error::Overlap {
                iova: Iova::new(M2 + K4)
            }))
        );
        assert_eq!(ctx.translate(dst, Iova::new(M2)).unwrap(), None);
        assert!(ctx.translate(dst, Iova::new(M2 + K4)).unwrap().is_some());
        ctx.free(dst).unwrap();
    });
}

/// The same between a copy's two runs: an IOASID allocated in `dst`'s place must not get the
/// copy's second run (a mapping its owner never asked for).
#[test]
fn a_copy_never_maps_into_an_ioasid_allocated_in_its_place() {
    with_copy_src_and_dst(|ctx, src, dst| {
        let (copied, (freed, other)) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || (ctx.free(dst), ctx.alloc(IoasidFlags::empty())),
        );
        let other = other.unwrap();
        assert_eq!(
            ctx.translate(other, Iova::new(M2 + K4)).unwrap(),
            None,
            "IOASID {other:?} got the copy's second run (the free of {dst:?} returned {freed:?}, \
             the copy {copied:?})"
        );
        // The copy went into `dst`, which it held: the free was refused meanwhile.
        assert_eq!(freed, Err(Error::Busy));
        assert_eq!(copied, Ok(()));
        assert_ne!(other, dst);
        for (at, pa) in [(M2, 4 * M2), (M2 + K4, 8 * M2)] {
            let m = ctx.translate(dst, Iova::new(at)).unwrap();
            assert_eq!(m.map(|m| m.pa), Some(PhysAddr::new(pa)));
        }
        // Held no longer: the free goes through.
        ctx.free(dst).unwrap();
        ctx.free(src).unwrap();
    });
}

/// Review 20 E1: the copy holds its source too. Between the copy's two runs another thread
/// frees `src`, allocates an IOASID (which takes `src`'s number when the free went through)
/// and maps at the source's second page: the copy's second run must not map that IOASID's
/// page into `dst` (a page its owner never gave `dst`'s devices).
#[test]
fn a_copy_never_reads_an_ioasid_allocated_in_its_source_s_place() {
    with_copy_src_and_dst(|ctx, src, dst| {
        let (copied, (freed, other, mapped)) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || {
                let freed = ctx.free(src);
                let other = ctx.alloc(IoasidFlags::empty());
                let mapped =
                    other.map(|o| ctx.map(o, Iova::new(SRC + K4), PhysAddr::new(20 * M2), K4, RW));
                (freed, other, mapped)
            },
        );
        assert_eq!(mapped, Ok(Ok(())));
        let other = other.unwrap();
        assert_ne!(
            ctx.translate(dst, Iova::new(M2 + K4))
                .unwrap()
                .map(|m| m.pa),
            Some(PhysAddr::new(20 * M2)),
            "the copy mapped IOASID {other:?}'s page into {dst:?} (the free of {src:?} returned \
             {freed:?}, the copy {copied:?})"
        );
        // `src` was held by the copy: the free was refused, and the copy read only `src`.
        assert_eq!(freed, Err(Error::Busy));
        assert_ne!(other, src);
        assert_eq!(copied, Ok(()));
        for (at, pa) in [(M2, 4 * M2), (M2 + K4, 8 * M2)] {
            let m = ctx.translate(dst, Iova::new(at)).unwrap();
            assert_eq!(m.map(|m| m.pa), Some(PhysAddr::new(pa)));
        }
        ctx.free(src).unwrap();
        ctx.free(dst).unwrap();
    });
}

/// Review 20 L1: a copy's undo removes only what the copy mapped. `dst` already maps the
/// copy's second page, so its second run is refused (`Overlap`) and the first undone; between
/// the runs another caller unmaps the first run's page and maps its own there. Whatever those
/// two calls return must hold afterwards in the record and in every domain: before the fix both
/// returned `Ok` and the undo then erased the second caller's mapping (its device faulting).
#[test]
fn a_copy_undo_never_unmaps_another_caller_s_mapping_in_its_range() {
    with_two_attached_units(|ctx, dst, u0, u1| {
        let src = two_runs(ctx);
        ctx.map(dst, Iova::new(M2 + K4), PhysAddr::new(12 * M2), K4, RW)
            .unwrap();
        let (copied, (unmapped, mapped)) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || {
                let unmapped = ctx.unmap(dst, Iova::new(M2), K4);
                let mapped = ctx.map(dst, Iova::new(M2), PhysAddr::new(24 * M2), K4, RW);
                (unmapped, mapped)
            },
        );
        let now = ctx.translate(dst, Iova::new(M2)).unwrap().map(|m| m.pa);
        let says = std::format!(
            "(the unmap returned {unmapped:?}, the map {mapped:?}, the copy {copied:?})"
        );
        if mapped.is_ok() {
            assert_eq!(
                now,
                Some(PhysAddr::new(24 * M2)),
                "the map's page is gone {says}"
            );
        }
        for u in [u0, u1] {
            assert_eq!(
                unit_maps(u, M2).map(|m| m.pa),
                now,
                "a domain differs {says}"
            );
        }
        ctx.audit(dst).unwrap();
        // The copy's range is its own until it ends: both calls were refused, nothing touched,
        // and the undo took the first run away again.
        assert_eq!(unmapped, Err(Error::Busy), "{says}");
        assert_eq!(mapped, Err(Error::Busy), "{says}");
        assert_eq!(now, None);
        assert_eq!(
            copied,
            Err(Error::PageTable(crate::pgtable::Error::Overlap {
                iova: Iova::new(M2 + K4)
            }))
        );
        // Ended: the range is the caller's again.
        ctx.map(dst, Iova::new(M2), PhysAddr::new(24 * M2), K4, RW)
            .unwrap();
        assert_eq!(ctx.unmap(dst, Iova::new(M2), 2 * K4), Ok(2 * K4));
    });
}

/// Review 20 L2: a copy's hold is released when a unit's call panics and unwinds (a hosted
/// embedder): before it was a drop guard, the counts and the destination range stayed, and
/// `free` of either IOASID, a map or unmap of the range, were `Busy` for ever.
#[test]
fn a_copy_unwinding_from_a_unit_s_panic_lets_its_ioasids_and_range_go() {
    with_two_attached_units(|ctx, dst, _, u1| {
        let src = two_runs(ctx);
        *u1.panic_map_at.lock().unwrap() = Some(M2 + K4);
        let copied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4)
        }));
        assert!(copied.is_err(), "the unit did not panic: {copied:?}");
        *u1.panic_map_at.lock().unwrap() = None;
        // No undo ran: the first run stays, and the second in the record and u0, which took
        // it before u1 panicked. The range is the caller's again to unmap.
        assert_eq!(ctx.unmap(dst, Iova::new(M2), 2 * K4), Ok(2 * K4));
        ctx.audit(dst).unwrap();
        ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4)
            .unwrap();
        ctx.free(src).unwrap();
    });
}

/// Review 20 L1: while a copy runs, its destination range (here `[M2 - 4K, M2 + 4K)`, paused
/// after its first run) is refused to every other call on `dst` that would map or unmap
/// there: a map or unmap touching it, `UNMAP_ALL` and another copy into it are `Busy`,
/// `alloc_iova` passes over it, and a device's direct region in it collides with it; nothing
/// is changed by any of them. Once the copy ended the range is the caller's again.
#[test]
fn a_copy_s_destination_range_is_refused_to_other_calls_while_it_runs() {
    with_two_attached_units(|ctx, dst, u0, _| {
        let src = two_runs(ctx);
        let at = M2 - K4;
        let copying = range(at, at + 2 * K4);
        let regions = [DirectRegion::new(range(M2, M2 + K4), false).unwrap()];
        let dev = ctx
            .bind_with_direct(label(0, 2), false, None, &regions)
            .unwrap();
        let (copied, answers) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(at), 2 * K4),
            || {
                (
                    ctx.map(dst, Iova::new(M2), PhysAddr::new(24 * M2), K4, RW),
                    ctx.unmap(dst, Iova::new(at), K4),
                    ctx.unmap(dst, Iova::new(0), UNMAP_ALL),
                    ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), K4),
                    ctx.alloc_iova(dst, K4, M2),
                    ctx.attach(dev, dst),
                )
            },
        );
        let (mapped, unmapped, unmapped_all, other_copy, iova, attached) = answers;
        assert_eq!(mapped, Err(Error::Busy));
        assert_eq!(unmapped, Err(Error::Busy));
        assert_eq!(unmapped_all, Err(Error::Busy));
        assert_eq!(other_copy, Err(Error::Busy));
        // Not M2: the copy's second page, which it had yet to map.
        assert_eq!(iova, Ok(Iova::new(2 * M2)));
        assert_eq!(
            attached,
            Err(Error::Incompatible {
                device: dev,
                reason: Incompatibility::DirectRegionCollides {
                    region: range(M2, M2 + K4),
                    with: copying
                }
            })
        );
        assert_eq!(copied, Ok(()));
        for (iova, pa) in [(at, 4 * M2), (M2, 8 * M2)] {
            assert_eq!(unit_maps(u0, iova).map(|m| m.pa), Some(PhysAddr::new(pa)));
        }
        ctx.audit(dst).unwrap();
        assert_eq!(ctx.unmap(dst, Iova::new(0), UNMAP_ALL), Ok(2 * K4));
        ctx.attach(dev, dst).unwrap();
    });
}

/// Review 20b finding 1: a copy from a range another copy is still filling is refused. The
/// first copy maps `dst[M2]` and pauses; its second run is refused (`dst` maps `M2 + 4K`) and
/// the first undone, so no successful call ever mapped `dst[M2]`. A copy from `dst[M2]` into
/// a third IOASID meanwhile must be `Busy` and leave it empty: before the fix it returned `Ok`
/// and the third IOASID's devices reached the page.
#[test]
fn a_copy_from_a_range_another_copy_is_filling_is_busy() {
    with_two_attached_units(|ctx, dst, _, _| {
        let src = two_runs(ctx);
        let third = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(dst, Iova::new(M2 + K4), PhysAddr::new(12 * M2), K4, RW)
            .unwrap();
        let (copied, (from_filling, self_copy)) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || {
                let from_filling = ctx.copy(dst, Iova::new(M2), third, Iova::new(M2), K4);
                // From the range being filled into `dst` itself, outside the copy's range.
                let self_copy = ctx.copy(dst, Iova::new(M2), dst, Iova::new(4 * M2), K4);
                (from_filling, self_copy)
            },
        );
        assert_eq!(from_filling, Err(Error::Busy));
        assert_eq!(self_copy, Err(Error::Busy));
        assert_eq!(ctx.translate(third, Iova::new(M2)).unwrap(), None);
        assert_eq!(ctx.translate(dst, Iova::new(4 * M2)).unwrap(), None);
        assert_eq!(
            copied,
            Err(Error::PageTable(crate::pgtable::Error::Overlap {
                iova: Iova::new(M2 + K4)
            }))
        );
        ctx.audit(dst).unwrap();
        ctx.audit(third).unwrap();
        // Ended: a copy from `dst`'s mapped page goes through again.
        ctx.copy(dst, Iova::new(M2 + K4), third, Iova::new(M2), K4)
            .unwrap();
    });
}

/// Review 20b finding 1, the per-run check: a copy `C` from `dst[M2, M2 + 8K)` maps its first
/// run into `third` and pauses; another caller unmaps `dst[M2 + 4K]` and a copy `A` from `src`
/// fills it, paused after its first run (its second refused: `dst` maps `M2 + 8K`, so it is
/// undone). `C`'s second run reads a page only `A` mapped: `Busy`, and `C` undoes its first
/// run. Without the check `C` copied `A`'s page into `third`.
#[test]
fn a_copy_s_later_run_from_a_range_another_copy_is_filling_is_busy() {
    with_two_attached_units(|ctx, dst, _, _| {
        let src = two_runs(ctx);
        let third = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.map(dst, Iova::new(M2), PhysAddr::new(12 * M2), K4, RW)
            .unwrap();
        // Not contiguous with M2's page: a run of its own.
        ctx.map(dst, Iova::new(M2 + K4), PhysAddr::new(16 * M2), K4, RW)
            .unwrap();
        ctx.map(dst, Iova::new(M2 + 2 * K4), PhysAddr::new(20 * M2), K4, RW)
            .unwrap();
        let (pc, pa) = (
            Arc::new((Barrier::new(2), Barrier::new(2))),
            Arc::new((Barrier::new(2), Barrier::new(2))),
        );
        let (c, a) = std::thread::scope(|s| {
            let c = s.spawn(|| {
                COPY_PAUSE.with(|p| *p.borrow_mut() = Some(("between runs", Arc::clone(&pc))));
                ctx.copy(dst, Iova::new(M2), third, Iova::new(M2), 2 * K4)
            });
            pc.0.wait();
            assert_eq!(ctx.unmap(dst, Iova::new(M2 + K4), K4), Ok(K4));
            let a = s.spawn(|| {
                COPY_PAUSE.with(|p| *p.borrow_mut() = Some(("between runs", Arc::clone(&pa))));
                ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2 + K4), 2 * K4)
            });
            pa.0.wait();
            // `A` holds `dst[M2 + 4K]`, mapped to its first page: `C` goes on from there.
            pc.1.wait();
            let c = c.join().unwrap();
            pa.1.wait();
            (c, a.join().unwrap())
        });
        assert_eq!(c, Err(Error::Busy));
        assert_eq!(
            a,
            Err(Error::PageTable(crate::pgtable::Error::Overlap {
                iova: Iova::new(M2 + 2 * K4)
            }))
        );
        for iova in [M2, M2 + K4] {
            assert_eq!(ctx.translate(third, Iova::new(iova)).unwrap(), None);
        }
        ctx.audit(dst).unwrap();
        ctx.audit(third).unwrap();
    });
}

/// Review 20b finding 2: a reservation over the part of a copy's destination range it has not
/// mapped yet is refused, naming the copy's range, as one over its mapped part is (a
/// mapping): before, it succeeded between the runs and the copy's next run was refused.
#[test]
fn a_reservation_over_a_copy_s_destination_range_is_refused_while_it_runs() {
    with_two_attached_units(|ctx, dst, _, _| {
        let src = two_runs(ctx);
        let (copied, reserved) = copy_paused_at(
            "between runs",
            || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
            || ctx.reserve_region(range(M2 + K4, M2 + 2 * K4)),
        );
        assert_eq!(
            reserved,
            Err(Error::ReserveOverlaps(InUse::CopyInFlight {
                ioasid: dst,
                range: range(M2, M2 + 2 * K4)
            }))
        );
        assert_eq!(copied, Ok(()));
        ctx.audit(dst).unwrap();
    });
}

/// A fifth copy in flight into one IOASID is refused with `Capacity`, holding nothing: its
/// range can be mapped, and the source freed, once the four others ended.
#[test]
fn a_fifth_copy_in_flight_into_an_ioasid_is_refused_holding_nothing() {
    with_two_attached_units(|ctx, dst, _, _| {
        let src = two_runs(ctx);
        let pauses: [Arc<Pause>; super::ioas::MAX_COPIES_PER_IOASID] =
            core::array::from_fn(|_| Arc::new((Barrier::new(2), Barrier::new(2))));
        let (copied, fifth) = std::thread::scope(|s| {
            let copies: Vec<_> = pauses
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let copy = s.spawn(move || {
                        COPY_PAUSE
                            .with(|c| *c.borrow_mut() = Some(("between runs", Arc::clone(p))));
                        ctx.copy(
                            src,
                            Iova::new(SRC),
                            dst,
                            Iova::new((i as u64 + 1) * M2),
                            2 * K4,
                        )
                    });
                    p.0.wait();
                    copy
                })
                .collect();
            let fifth = ctx.copy(src, Iova::new(SRC), dst, Iova::new(8 * M2), 2 * K4);
            for p in &pauses {
                p.1.wait();
            }
            let copied: Vec<_> = copies.into_iter().map(|c| c.join().unwrap()).collect();
            (copied, fifth)
        });
        assert_eq!(
            fifth,
            Err(Error::Capacity("copies in flight into an IOASID"))
        );
        assert!(copied.iter().all(Result::is_ok), "{copied:?}");
        assert_eq!(ctx.translate(dst, Iova::new(8 * M2)).unwrap(), None);
        ctx.map(dst, Iova::new(8 * M2), PhysAddr::new(24 * M2), 2 * K4, RW)
            .unwrap();
        ctx.audit(dst).unwrap();
        assert_eq!(ctx.unmap(dst, Iova::new(0), UNMAP_ALL), Ok(10 * K4));
        // Counted out of `src` as well (`dst` has devices attached: its free is `Busy`).
        ctx.free(src).unwrap();
    });
}

/// A device attached to the destination between a copy's runs, on a unit the IOASID had no
/// domain on: its new domain takes the first run with the IOASID's mappings, and the undo of
/// the failing second run removes it from that domain too (the device must not keep reaching
/// a page the failed copy mapped).
#[test]
fn a_domain_attached_between_a_copy_s_runs_loses_them_with_the_undo() {
    let alloc = test_alloc();
    let (u0, u1) = (FakeUnit::new(&alloc, true), FakeUnit::new(&alloc, true));
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u0, &u1], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let dst = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), dst)
        .unwrap();
    let late = ctx.bind(label(1, 1), false).unwrap();
    let src = two_runs(&ctx);
    ctx.map(dst, Iova::new(M2 + K4), PhysAddr::new(12 * M2), K4, RW)
        .unwrap();
    let (copied, attached) = copy_paused_at(
        "between runs",
        || ctx.copy(src, Iova::new(SRC), dst, Iova::new(M2), 2 * K4),
        || ctx.attach(late, dst),
    );
    assert_eq!(attached, Ok(()));
    assert_eq!(
        copied,
        Err(Error::PageTable(crate::pgtable::Error::Overlap {
            iova: Iova::new(M2 + K4)
        }))
    );
    assert_eq!(unit_maps(&u1, M2), None);
    assert_eq!(unit_maps(&u0, M2), None);
    assert_eq!(
        unit_maps(&u1, M2 + K4).map(|m| m.pa),
        Some(PhysAddr::new(12 * M2))
    );
    ctx.audit(dst).unwrap();
}

/// The context's allocator with a hook: the first `phys_to_virt` on the armed thread (a walk
/// descending into a table) runs the armed call before its answer is used, as another CPU's
/// call running between the walk's read of a table pointer and its reads of the table.
struct HookAlloc {
    inner: TestAlloc,
    armed: Mutex<Option<(std::thread::ThreadId, Hook)>>,
}

/// What [`HookAlloc`] runs.
type Hook = std::boxed::Box<dyn FnOnce() + Send>;

// SAFETY: every call is `inner`'s; the hook only runs other calls of the context.
unsafe impl crate::mem::PageAllocator for HookAlloc {
    fn alloc(&self, size_log2: u32) -> Option<crate::mem::Page> {
        self.inner.alloc(size_log2)
    }

    unsafe fn free(&self, page: crate::mem::Page, size_log2: u32) {
        // SAFETY: the caller upholds `free`'s contract, for `inner`'s page.
        unsafe { self.inner.free(page, size_log2) }
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<core::ptr::NonNull<u8>> {
        let va = self.inner.phys_to_virt(pa);
        if IN_FAKE_UNIT.with(core::cell::Cell::get) != 0 {
            return va;
        }
        let me = std::thread::current().id();
        let hook = {
            let mut armed = self.armed.lock().unwrap();
            match armed.take() {
                Some((t, f)) if t == me => Some(f),
                other => {
                    *armed = other;
                    None
                }
            }
        };
        if let Some(f) = hook {
            f();
        }
        va
    }
}

/// Runs `walk` on this thread with the hook armed, on an IOASID with a device attached: at its
/// first descent into a record table, another
/// thread unmaps everything the IOASID maps (the record frees its tables at once) and the walk
/// waits for that unmap up to 200 ms before it reads the table it descended to. A walk the
/// unmap cannot overlap (the context's write lock) goes on after the timeout and sees the
/// mapping; one it can overlap reads a freed table. Returns the walk's answer and the unmap's.
fn walk_beside_unmap_all<R: Send>(
    walk: impl FnOnce(&IoasidCtx<'_, '_, HookAlloc>, IoasidId) -> R,
) -> (R, u64) {
    let alloc = HookAlloc {
        inner: test_alloc(),
        armed: Mutex::new(None),
    };
    let u = FakeUnit::new(&alloc.inner, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    // A domain behind the IOASID (its tables are the unit's, not the hooked allocator's).
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    ctx.map(io, Iova::new(0x1000), PhysAddr::new(0), 0x3000, RW)
        .unwrap();
    let (go, done) = (
        std::sync::mpsc::channel::<()>(),
        std::sync::mpsc::channel::<u64>(),
    );
    let (go_tx, done_rx) = (go.0, Mutex::new(done.1));
    std::thread::scope(|s| {
        let ctx = &ctx;
        let done_tx = done.0;
        let unmapper = s.spawn(move || {
            go.1.recv().unwrap();
            let bytes = ctx.unmap(io, Iova::new(0), UNMAP_ALL).unwrap();
            let _ = done_tx.send(bytes);
            bytes
        });
        *alloc.armed.lock().unwrap() = Some((
            std::thread::current().id(),
            std::boxed::Box::new(move || {
                go_tx.send(()).unwrap();
                let _ = done_rx
                    .lock()
                    .unwrap()
                    .recv_timeout(std::time::Duration::from_millis(200));
            }),
        ));
        let r = walk(ctx, io);
        (r, unmapper.join().unwrap())
    })
}

/// `alloc_iova` walks the record for mappings in each candidate range. Under the read lock an
/// unmap beside it freed the tables it was reading (the sim's freed pages hold POISON, which
/// reads as 1 GiB leaves), so it skipped to 1 GiB; it must see the mapping it was searching
/// past, or none at all, never freed memory.
#[test]
fn iova_allocation_never_walks_a_table_an_unmap_frees() {
    let (a, unmapped) = walk_beside_unmap_all(|ctx, io| ctx.alloc_iova(io, 0x1000, 0x1000));
    assert_eq!(unmapped, 0x3000);
    assert_eq!(a, Ok(Iova::new(0x4000)));
}

/// `table_pages` walks the record's tables: the same race as `alloc_iova`'s.
#[test]
fn table_counts_never_walk_a_table_an_unmap_frees() {
    let (pages, unmapped) = walk_beside_unmap_all(|ctx, io| ctx.table_pages(io).map(|p| p.record));
    assert_eq!(unmapped, 0x3000);
    let record = pages.unwrap();
    // The root and one table on each of the four levels below it.
    assert_eq!((record.linked, record.needed), (5, 5), "{record:?}");
}

/// `translate` descends the record to the leaf: the same race as `alloc_iova`'s.
#[test]
fn translate_never_reads_a_table_an_unmap_frees() {
    let (m, unmapped) = walk_beside_unmap_all(|ctx, io| {
        ctx.translate(io, Iova::new(0x2000))
            .map(|m| m.map(|m| m.pa))
    });
    assert_eq!(unmapped, 0x3000);
    assert_eq!(m, Ok(Some(PhysAddr::new(0x1000))));
}

/// A page request of device 1 of unit 0 (no PASID), the last of its group `group`.
fn page_request(group: u16) -> crate::iopf::PageFault {
    crate::iopf::PageFault {
        device: DeviceId(1),
        pasid: None,
        addr: 0x1000,
        perm: crate::iopf::FaultPerm::READ,
        kind: crate::iopf::FaultKind::PageRequest { group, last: true },
        generation: 0,
        sequence: 0,
    }
}

/// One unit with device 1 bound, attached to an IOASID, and the context's fault queue open:
/// `f` gets the context, the device and the unit.
fn with_a_faulting_device(
    f: impl for<'a> FnOnce(&IoasidCtx<'_, 'a, TestAlloc>, DeviceHandle, &FakeUnit<'a>),
) {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 1);
    let dev = ctx.bind(label(0, 1), false).unwrap();
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(dev, io).unwrap();
    ctx.fault_queue_alloc();
    f(&ctx, dev, &u);
}

/// A fault reported while a detach had looked at the device but not yet taken the write lock
/// (the device still attached) is the detach's to answer: before, the detach answered the
/// device's faults first, outside the write lock, and this one stayed queued (the device
/// waiting for its own time-out, the cookie still answerable after the detach).
#[test]
fn a_fault_reported_beside_a_detach_is_answered_by_it() {
    with_a_faulting_device(|ctx, dev, u| {
        let (detached, reported) = copy_paused_at(
            "detach looked",
            || ctx.detach(dev),
            || ctx.report_fault(UnitId(0), page_request(3)),
        );
        assert_eq!(detached, Ok(()));
        let cookie = reported.unwrap();
        let mut out = [crate::iopf::QueuedFault {
            unit: 0,
            fault: crate::iopf::PageFault::EMPTY,
            cookie,
        }; 2];
        assert_eq!(ctx.read_faults(&mut out), 0);
        let invalid = page_request(3).response(crate::iopf::ResponseCode::Invalid);
        assert_eq!(*u.responses.lock().unwrap(), [invalid]);
        assert_eq!(
            ctx.respond_fault(cookie, crate::iopf::ResponseCode::Success),
            Err(Error::Fault(crate::iopf::FaultError::NotOutstanding(
                cookie
            )))
        );
        assert_eq!(u.responses.lock().unwrap().len(), 1);
    });
}

/// A group the queue still holds for a device no longer attached here is not answered to the
/// device (after an unbind the device may be bound in another context, whose faults the unit
/// would take the answer for): refused, `NotRouted`, and dropped, the unit told it will not be
/// sent (`page_response_abandon`: an SMMUv3 record of it would hold a place of the stream's
/// `STREAM_QUOTA` for the unit's life). Before, `respond_fault` looked at the queue only and
/// sent it; then it dropped it without telling the unit.
#[test]
fn respond_fault_refuses_a_group_of_a_device_no_longer_attached() {
    with_a_faulting_device(|ctx, dev, u| {
        ctx.detach(dev).unwrap();
        // The state the race above left: the device detached, its group still outstanding.
        ctx.faults.lock().push(0, page_request(5)).unwrap();
        let mut out = [crate::iopf::QueuedFault {
            unit: 0,
            fault: crate::iopf::PageFault::EMPTY,
            cookie: crate::iopf::FaultCookie(0),
        }; 2];
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(
            ctx.respond_fault(out[0].cookie, crate::iopf::ResponseCode::Success),
            Err(Error::Fault(crate::iopf::FaultError::NotRouted {
                device: DeviceId(1),
                pasid: None
            }))
        );
        assert_eq!(*u.responses.lock().unwrap(), []);
        assert_eq!(ctx.faults.lock().len(), 0);
        let dropped = page_request(5).response(crate::iopf::ResponseCode::Success);
        let abandoned = u.abandoned.lock().unwrap().clone();
        assert_eq!(abandoned, [dropped]);
    });
}

/// An attach that moves the device to another IOASID answers the faults it had while attached
/// to the old one, as iommufd's replace does (`iommufd_auto_response_faults` for the old
/// domain): their answer would have the device retry in an address space its owner no longer
/// resolves them in. Before, they stayed queued and outstanding.
#[test]
fn an_attach_elsewhere_answers_the_device_s_faults() {
    with_a_faulting_device(|ctx, dev, u| {
        let cookie = ctx.report_fault(UnitId(0), page_request(7)).unwrap();
        let mut out = [crate::iopf::QueuedFault {
            unit: 0,
            fault: crate::iopf::PageFault::EMPTY,
            cookie,
        }; 2];
        assert_eq!(ctx.read_faults(&mut out), 1);
        let other = ctx.alloc(IoasidFlags::empty()).unwrap();
        ctx.attach(dev, other).unwrap();
        let invalid = page_request(7).response(crate::iopf::ResponseCode::Invalid);
        assert_eq!(*u.responses.lock().unwrap(), [invalid]);
        assert_eq!(
            ctx.respond_fault(cookie, crate::iopf::ResponseCode::Success),
            Err(Error::Fault(crate::iopf::FaultError::NotOutstanding(
                cookie
            )))
        );
        // Attached again to the same IOASID: nothing to answer, nothing answered.
        let again = ctx.report_fault(UnitId(0), page_request(8)).unwrap();
        ctx.attach(dev, other).unwrap();
        assert_eq!(ctx.read_faults(&mut out), 1);
        assert_eq!(out[0].cookie, again);
    });
}

/// Reports `fault` (of unit 0) and reads it: the cookie of its group, now outstanding.
fn read_one(ctx: &IoasidCtx<'_, '_, TestAlloc>, fault: crate::iopf::PageFault) -> FaultCookie {
    let cookie = ctx.report_fault(UnitId(0), fault).unwrap();
    let mut out = [crate::iopf::QueuedFault {
        unit: 0,
        fault,
        cookie,
    }; 1];
    assert_eq!(ctx.read_faults(&mut out), 1);
    assert_eq!(out[0].cookie, cookie);
    cookie
}

/// `fault`'s group was answered Invalid by the layer (the unit's last response), and its
/// cookie no longer reaches the device.
fn assert_answered_invalid(
    ctx: &IoasidCtx<'_, '_, TestAlloc>,
    u: &FakeUnit<'_>,
    fault: crate::iopf::PageFault,
    cookie: FaultCookie,
) {
    let invalid = fault.response(crate::iopf::ResponseCode::Invalid);
    // Read before asserting: a failed assertion must not poison the lock the drop takes.
    let last = u.responses.lock().unwrap().last().copied();
    assert_eq!(last, Some(invalid));
    assert_eq!(
        ctx.respond_fault(cookie, crate::iopf::ResponseCode::Success),
        Err(Error::Fault(crate::iopf::FaultError::NotOutstanding(
            cookie
        )))
    );
}

/// A replacing attach the unit does not confirm (a unit fault: the device attached to the new
/// IOASID in the books, unsettled) answers the old attachment's faults as a confirmed one
/// does, when the books switch; the retry that settles it answers nothing more. Before, only
/// the confirmed switch answered: after the failed attempt and its settling retry the group
/// was still outstanding, and its cookie reached the device attached elsewhere.
#[test]
fn an_unsettled_attach_elsewhere_answers_the_device_s_faults() {
    with_a_faulting_device(|ctx, dev, u| {
        let old = ctx.attachment(dev, None).unwrap().unwrap().ioasid;
        let cookie = read_one(ctx, page_request(7));
        let other = ctx.alloc(IoasidFlags::empty()).unwrap();
        u.fail_next_attach.store(true, Ordering::SeqCst);
        assert_eq!(
            ctx.attach(dev, other),
            Err(Error::Iommu(IommuError::Timeout { what: "attach" }))
        );
        let unsettled = Attachment {
            ioasid: other,
            unsettled: Some(Some(old)),
        };
        assert_eq!(ctx.attachment(dev, None), Ok(Some(unsettled)));
        assert_answered_invalid(ctx, u, page_request(7), cookie);
        // A fault reported while unsettled is the new attachment's: the settling retry
        // leaves it outstanding.
        let new = read_one(ctx, page_request(8));
        ctx.attach(dev, other).unwrap();
        assert_eq!(u.responses.lock().unwrap().len(), 1);
        assert_eq!(
            ctx.respond_fault(new, crate::iopf::ResponseCode::Success),
            Ok(())
        );
    });
}

/// `attach_pasid` moving a (device, PASID) pair to another IOASID answers the pair's faults
/// (and no other's), confirmed by the unit or not: as `attach` does for the RID. Before, it
/// answered none: the PASID's old cookies stayed answerable after the switch.
#[test]
fn an_attach_pasid_elsewhere_answers_the_pasid_s_faults() {
    with_a_faulting_device(|ctx, dev, u| {
        let p = ctx.alloc_pasid().unwrap();
        let of_pasid = |group| crate::iopf::PageFault {
            pasid: Some(p),
            ..page_request(group)
        };
        let [a, b, c] = [(); 3].map(|()| ctx.alloc(IoasidFlags::PASID).unwrap());
        ctx.attach_pasid(dev, p, a).unwrap();
        let rid = read_one(ctx, page_request(1));
        let first = read_one(ctx, of_pasid(2));
        ctx.attach_pasid(dev, p, b).unwrap();
        assert_answered_invalid(ctx, u, of_pasid(2), first);
        let second = read_one(ctx, of_pasid(3));
        u.fail_next_attach.store(true, Ordering::SeqCst);
        assert_eq!(
            ctx.attach_pasid(dev, p, c),
            Err(Error::Iommu(IommuError::Timeout { what: "attach" }))
        );
        let unsettled = Attachment {
            ioasid: c,
            unsettled: Some(Some(b)),
        };
        assert_eq!(ctx.attachment(dev, Some(p)), Ok(Some(unsettled)));
        assert_answered_invalid(ctx, u, of_pasid(3), second);
        ctx.attach_pasid(dev, p, c).unwrap();
        assert_eq!(u.responses.lock().unwrap().len(), 2);
        // The RID's group is not the PASID's: still outstanding.
        assert_eq!(
            ctx.respond_fault(rid, crate::iopf::ResponseCode::Success),
            Ok(())
        );
    });
}

/// Overlapping calls on one IOASID take turns (`stripes.rs`): a map stopped in its unit (its
/// page in the record, not yet in the domain) holds its range, so an unmap of the 2 MiB
/// around it (a whole record table, which the unmap unlinks and frees) waits for it, while a
/// map 2 GiB away (another stripe) goes on. Before, the unmap ran in the map's middle: it
/// freed the record's table under the map and left the domain mapping a page the record did
/// not (two such unmaps at once freed the table twice: loom `unmap_all_vs_unmap_all`).
#[test]
fn overlapping_calls_on_one_ioasid_take_turns() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let io = ctx.alloc(IoasidFlags::empty()).unwrap();
    ctx.attach(ctx.bind(label(0, 1), false).unwrap(), io)
        .unwrap();
    ctx.map(io, Iova::new(M2), PhysAddr::new(0x8000_0000), K4, RW)
        .unwrap();
    let paused = Iova::new(M2 + K4);
    let pause = Arc::new((Barrier::new(2), Barrier::new(2)));
    *u.pause_map_at.lock().unwrap() = Some((paused.get(), Arc::clone(&pause)));
    let (unmapped, away) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let map = s.spawn(|| ctx.map(io, paused, PhysAddr::new(0x8000_1000), K4, RW));
        pause.0.wait();
        let unmap = s.spawn(|| {
            let r = ctx.unmap(io, Iova::new(M2), M2);
            unmapped.store(true, Ordering::SeqCst);
            r
        });
        let other = s.spawn(|| {
            let r = ctx.map(io, Iova::new(2 * G1), PhysAddr::new(0x9000_0000), K4, RW);
            away.store(true, Ordering::SeqCst);
            r
        });
        // Long enough for the unmap to complete if nothing held it.
        for _ in 0..200 {
            if unmapped.load(Ordering::SeqCst) && away.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let (overtook, went_on) = (unmapped.load(Ordering::SeqCst), away.load(Ordering::SeqCst));
        // Resumed before any assertion: a panic here would leave the map waiting.
        pause.1.wait();
        let (mapped, unmapped, other) = (map.join(), unmap.join(), other.join());
        assert!(
            !overtook,
            "an unmap returned in the middle of an overlapping map"
        );
        assert!(went_on, "a map of another stripe waited for the paused map");
        assert_eq!(mapped.unwrap(), Ok(()));
        assert_eq!(unmapped.unwrap(), Ok(2 * K4));
        assert_eq!(other.unwrap(), Ok(()));
    });
    let d = u.domain_of(DeviceId(1)).unwrap();
    for at in [Iova::new(M2), paused] {
        assert_eq!(ctx.translate(io, at).unwrap(), None, "the record at {at:?}");
        assert_eq!(u.query(d, at), None, "the domain at {at:?}");
    }
    ctx.audit(io).unwrap();
    assert_eq!(alloc.bad_frees(), []);
}

/// `audit` walks the record and every domain: the same race as `alloc_iova`'s (an unmap of
/// everything beside it freed the record table it was reading).
#[test]
fn audits_never_walk_a_table_an_unmap_frees() {
    let (r, unmapped) = walk_beside_unmap_all(|ctx, io| ctx.audit(io));
    assert_eq!(unmapped, 0x3000);
    assert_eq!(r, Ok(()));
}

/// An attach the unit refuses after the layer built a domain for it, on an IOASID tracking
/// dirty pages: the domain goes with the refusal. It never had a device, so it holds no dirty
/// state; kept, it held a domain ID and tables, took one of the IOASID's unit slots, and was
/// used again for the next device on that unit although built for the refused one.
#[test]
fn a_refused_attach_on_a_dirty_tracking_ioasid_keeps_no_domain() {
    let alloc = test_alloc();
    let mut unit = FakeUnit::new(&alloc, true);
    unit.caps.dirty_tracking = true;
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&unit], &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &alloc, 0);
    let dev = ctx.bind(label(0, 0x42), true).unwrap();
    let io = ctx.alloc(IoasidFlags::DIRTY_TRACKING).unwrap();
    let live = alloc.stats().live_pages;
    unit.refuse_next_attach.store(true, Ordering::SeqCst);
    assert!(
        matches!(ctx.attach(dev, io), Err(Error::Incompatible { .. })),
        "refused"
    );
    assert_eq!(
        unit.live_domains(),
        0,
        "the refused attach's domain was kept"
    );
    assert_eq!(alloc.stats().live_pages, live);
}

/// Review of this morning's C ABI landing (5448251): `ie_ctx_destroy` tears the context down,
/// then drops it, and the drop tore it down again, counting the domains the first pass could
/// not free (a unit still owing an invalidation) a second time in `Registry::leaked`. What a
/// context gives up is counted once, however many times its tear-down runs.
#[test]
fn a_torn_down_context_counts_what_it_leaked_once() {
    let alloc = test_alloc();
    let u = FakeUnit::new(&alloc, true);
    let pasids = PasidAllocator::new(20);
    let reg = Registry::new(&[&u], &pasids).unwrap();
    let mut ctx = IoasidCtx::new(&reg, &alloc, 0);
    // A parked domain the unit will not free (a device is still attached to it there).
    let d = u.domain_alloc(&DomainConfig::default()).unwrap();
    u.attach(DeviceId(9), None, d).unwrap();
    ctx.state.write().parked[0] = Some((UnitId(0), d));
    let first = ctx.tear_down();
    assert_eq!(first.domains, 1, "{first:?}");
    drop(ctx);
    assert_eq!(reg.leaked(), first, "the drop counted it again");
}
