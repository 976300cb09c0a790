//! Embedding iommu-engine in a kernel: the two things an embedder writes.
//!
//! 1. A [`PageAllocator`]: here `BootPool`, a kernel-style allocator that carves table pages out
//!    of a region reserved at boot (as a kernel would from memblock or an e820 range), with a
//!    bitmap under a spin lock, a direct map from physical to virtual addresses, and the cache
//!    maintenance a non-coherent walker needs.
//! 2. A [`RegisterWindow`]: on hardware, [`iommu_engine::mmio::Mmio`] over the unit's
//!    `ioremap`ped registers is all it takes. A hypervisor that traps accesses, or a kernel that
//!    traces them, wraps it; `TracedWindow` does that here around the crate's VT-d model, which
//!    stands in for the hardware so the example runs on any host.
//!
//! Then the calls a kernel makes: create and enable the unit, build a registry and a context,
//! bind a device, allocate an IOASID, attach, map, let "the device" DMA, unmap.
//!
//! Run with `cargo run --example embedding`.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use iommu_engine::ioasid::{DeviceLabel, IoasidCtx, IoasidFlags, PasidAllocator, Registry, UnitId};
use iommu_engine::iommu::{DeviceId, Iommu};
use iommu_engine::mem::{Iova, Page, PageAllocator, PhysAddr};
use iommu_engine::mmio::RegisterWindow;
use iommu_engine::pgtable::Prot;
use iommu_engine::sim::vtd::{VtdModel, VtdModelConfig};
use iommu_engine::sim::{walk, Arena};
use iommu_engine::vtd::unit::{VtdConfig, VtdUnit};

/// 4 KiB frames in the pool: 2 MiB reserved for IOMMU tables.
const POOL_FRAMES: usize = 512;
const FRAME_LOG2: u32 = 12;

/// Table pages carved from a region reserved at boot.
struct BootPool {
    /// Physical address of the region (size-aligned to 2 MiB).
    phys: u64,
    /// Where the kernel's direct map puts it.
    virt: NonNull<u8>,
    /// One bit per 4 KiB frame.
    used: spin::Mutex<[u64; POOL_FRAMES / 64]>,
    /// Cache lines cleaned for the walker, for the account at the end.
    cleaned_lines: AtomicU64,
}

// SAFETY: the region is owned by the pool; the bitmap is behind a lock.
unsafe impl Send for BootPool {}
// SAFETY: as above.
unsafe impl Sync for BootPool {}

impl BootPool {
    /// # Safety
    /// `virt` maps `POOL_FRAMES` frames at physical `phys`, reserved for the pool alone.
    unsafe fn new(phys: u64, virt: NonNull<u8>) -> Self {
        Self {
            phys,
            virt,
            used: spin::Mutex::new([0; POOL_FRAMES / 64]),
            cleaned_lines: AtomicU64::new(0),
        }
    }

    fn frames_in_use(&self) -> u32 {
        self.used.lock().iter().map(|w| w.count_ones()).sum()
    }

    fn is_used(map: &[u64], frame: usize) -> bool {
        map[frame / 64] & (1 << (frame % 64)) != 0
    }

    fn set(map: &mut [u64], frames: core::ops::Range<usize>, used: bool) {
        for f in frames {
            if used {
                map[f / 64] |= 1 << (f % 64);
            } else {
                map[f / 64] &= !(1 << (f % 64));
            }
        }
    }
}

// SAFETY: pages are size-aligned runs of free frames, zeroed before they are handed out, marked
// used until freed; `phys_to_virt` answers only inside used frames.
unsafe impl PageAllocator for BootPool {
    fn alloc(&self, size_log2: u32) -> Option<Page> {
        let n = 1usize.checked_shl(size_log2.checked_sub(FRAME_LOG2)?)?;
        let mut map = self.used.lock();
        // Natural alignment: try only runs that start on a multiple of their own size.
        let first = (0..POOL_FRAMES)
            .step_by(n)
            .find(|&f| f + n <= POOL_FRAMES && (f..f + n).all(|g| !Self::is_used(&*map, g)))?;
        Self::set(&mut *map, first..first + n, true);
        let offset = first << FRAME_LOG2;
        // SAFETY: inside the pool's mapping.
        let va = unsafe { NonNull::new_unchecked(self.virt.as_ptr().add(offset)) };
        // SAFETY: the frames are ours now; the walker cannot reach them yet.
        unsafe { core::ptr::write_bytes(va.as_ptr(), 0, n << FRAME_LOG2) };
        Some(Page {
            pa: PhysAddr::new(self.phys + offset as u64),
            va,
        })
    }

    unsafe fn free(&self, page: Page, size_log2: u32) {
        let first = ((page.pa.get() - self.phys) >> FRAME_LOG2) as usize;
        let n = 1usize << (size_log2 - FRAME_LOG2);
        Self::set(&mut *self.used.lock(), first..first + n, false);
    }

    fn phys_to_virt(&self, pa: PhysAddr) -> Option<NonNull<u8>> {
        let offset = pa.get().checked_sub(self.phys)?;
        let frame = usize::try_from(offset >> FRAME_LOG2).ok()?;
        if frame >= POOL_FRAMES || !Self::is_used(&*self.used.lock(), frame) {
            return None;
        }
        // SAFETY: inside the pool's mapping.
        NonNull::new(unsafe { self.virt.as_ptr().add(offset as usize) })
    }

    fn sync_for_device(&self, va: NonNull<u8>, len: usize) {
        // A walker that does not snoop (VT-d ECAP.C = 0, SMMUv3 IDR0.COHACC = 0) reads memory:
        // write the lines back. x86: CLFLUSH each line, then a fence; Arm: DC CVAC + DSB.
        let lines = (len as u64).div_ceil(64);
        #[cfg(target_arch = "x86_64")]
        for i in 0..lines as usize {
            // SAFETY: the line lies in a live page of ours; CLFLUSH only writes back.
            unsafe { core::arch::x86_64::_mm_clflush(va.as_ptr().add(i * 64)) };
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a fence has no memory-safety preconditions.
        unsafe {
            core::arch::x86_64::_mm_sfence()
        };
        let _ = va;
        self.cleaned_lines.fetch_add(lines, Ordering::Relaxed);
    }
}

/// A register window that counts every access on its way to the real one (`Mmio` on
/// hardware; the model here).
struct TracedWindow<W> {
    inner: W,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl<W: RegisterWindow> RegisterWindow for TracedWindow<W> {
    fn read32(&self, offset: usize) -> u32 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read32(offset)
    }
    fn write32(&self, offset: usize, value: u32) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write32(offset, value)
    }
    fn read64(&self, offset: usize) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read64(offset)
    }
    fn write64(&self, offset: usize, value: u64) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.inner.write64(offset, value)
    }
}

fn main() {
    // "Physical memory": the arena stands in for RAM; 2 MiB of it is reserved for the pool.
    let ram = Arena::with_defaults().expect("host arena");
    let region = [ram.alloc(20).expect("1 MiB"), ram.alloc(20).expect("1 MiB")];
    assert_eq!(
        region[1].pa.get(),
        region[0].pa.get() + (1 << 20),
        "contiguous region"
    );
    // SAFETY: the two contiguous 1 MiB pages are reserved for the pool from here on.
    let pool = unsafe { BootPool::new(region[0].pa.get(), region[0].va) };

    // The unit: CAP/ECAP of QEMU's intel-iommu with snoop control, behind a traced window.
    let hw = VtdModel::new(&ram, VtdModelConfig::qemu_default().with_sc(true));
    let regs = TracedWindow {
        inner: &hw,
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
    };
    let unit = VtdUnit::new(&regs, &pool, VtdConfig::legacy()).expect("VT-d unit");
    unit.enable().expect("translation on");
    let caps = unit.capabilities();
    println!(
        "VT-d unit: {}-bit IOVAs, {}-bit PAs, snoop control {}, coherent walker {}",
        caps.ias, caps.oas, caps.enforce_snoop, caps.coherent_walk
    );

    // The IOASID layer over it: one registry per system, one context per VM.
    let units: [&dyn Iommu; 1] = [&unit];
    static PASIDS: PasidAllocator = PasidAllocator::new(20);
    let registry = Registry::new(&units, &PASIDS).expect("registry");
    let ctx = IoasidCtx::new(&registry, &pool, 4);
    let nic = ctx
        .bind(
            DeviceLabel {
                unit: UnitId(0),
                id: DeviceId(0x0300), // 03:00.0
            },
            false,
        )
        .expect("bind");
    let ioasid = ctx.alloc(IoasidFlags::ENFORCE_SNOOP).expect("alloc");
    ctx.attach(nic, ioasid).expect("attach");

    // A 64 KiB receive ring at IOVA 1 MiB, backed by guest memory at 0x2_0000_0000.
    let (iova, pa, len) = (0x10_0000u64, 0x2_0000_0000u64, 0x1_0000u64);
    ctx.map(
        ioasid,
        Iova::new(iova),
        PhysAddr::new(pa),
        len,
        Prot::READ | Prot::WRITE,
    )
    .expect("map");
    let dma = hw
        .translate(0x0300, None, iova + 0x1040, walk::Access::WRITE)
        .expect("the device's write translates");
    println!(
        "device 03:00.0 writes IOVA {:#x} -> PA {:#x} (snoop {})",
        iova + 0x1040,
        dma.pa,
        dma.snoop
    );
    assert_eq!(dma.pa, pa + 0x1040);
    assert!(dma.snoop);

    let unmapped = ctx.unmap(ioasid, Iova::new(iova), len).expect("unmap");
    let after = hw.translate(0x0300, None, iova + 0x1040, walk::Access::WRITE);
    println!(
        "unmapped {unmapped:#x} bytes; the same write now faults: {}",
        after.is_err()
    );
    assert!(after.is_err());

    ctx.detach(nic).expect("detach");
    ctx.free(ioasid).expect("free");
    drop(ctx);
    println!(
        "pool frames in use: {} (root table, context table, queue, status page); \
         register reads {}, writes {}; lines cleaned {}",
        pool.frames_in_use(),
        regs.reads.load(Ordering::Relaxed),
        regs.writes.load(Ordering::Relaxed),
        pool.cleaned_lines.load(Ordering::Relaxed)
    );
    unit.disable().expect("translation off");
}
