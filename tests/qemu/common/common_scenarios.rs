//! Scenarios that need no IOMMU programming; both guests list them in their tables.

use iommu_engine::mem::{PageAllocator, PhysAddr};

use crate::edu::EDU_ID;
use crate::scenario::{Ctx, Fail};
use crate::{ensure, println};

/// The guest booted, printed, read its mailbox and can exit with a status.
pub fn boot_ok(ctx: &mut Ctx) -> Result<(), Fail> {
    println!(
        "arch {}: arena {:#x}+{:#x}, edu {}",
        crate::arch::NAME,
        ctx.alloc.base(),
        ctx.alloc.size(),
        if ctx.edu.is_ok() { "present" } else { "absent" }
    );
    Ok(())
}

/// The allocator behind the crate's `PageAllocator` trait: sizes, alignment, zeroing, reuse,
/// `phys_to_virt`, exhaustion.
pub fn page_alloc(ctx: &mut Ctx) -> Result<(), Fail> {
    let a = ctx.alloc;
    let start = a.live_frames();
    for log2 in [12u32, 13, 16, 20] {
        let Some(p) = a.alloc(log2) else {
            crate::bail!("alloc(2^{log2}) failed");
        };
        ensure!(p.pa.is_aligned(log2), "2^{log2} page {:?} misaligned", p.pa);
        ensure!(
            p.va.as_ptr() as u64 == p.pa.get(),
            "PA != VA for {:?}",
            p.pa
        );
        let len = 1usize << log2;
        // SAFETY: the page is ours, `len` bytes long, and nothing else references it.
        let bytes = unsafe { core::slice::from_raw_parts_mut(p.va.as_ptr(), len) };
        ensure!(bytes.iter().all(|&b| b == 0), "2^{log2} page not zeroed");
        bytes.fill(0xA5);
        let last = p.pa.checked_add(len as u64 - 1).unwrap_or(p.pa);
        ensure!(
            a.phys_to_virt(last).is_some(),
            "phys_to_virt(last byte) failed"
        );
        // SAFETY: `p` came from `alloc(log2)` and no device can reach it.
        unsafe { a.free(p, log2) };
        ensure!(
            a.phys_to_virt(p.pa).is_none(),
            "phys_to_virt answers for a freed page"
        );
        // The same place comes back zeroed.
        let Some(q) = a.alloc(log2) else {
            crate::bail!("re-alloc(2^{log2}) failed");
        };
        // SAFETY: as above, for `q`.
        let bytes = unsafe { core::slice::from_raw_parts(q.va.as_ptr(), len) };
        ensure!(
            bytes.iter().all(|&b| b == 0),
            "re-allocated 2^{log2} page not zeroed"
        );
        // SAFETY: `q` came from `alloc(log2)`.
        unsafe { a.free(q, log2) };
    }
    ensure!(
        a.phys_to_virt(PhysAddr::new(0x1000)).is_none(),
        "phys_to_virt answers outside the arena"
    );
    // Exhaustion: 4 MiB arena, 1 MiB pages.
    let mut pages = [None; 8];
    let mut n = 0;
    for slot in pages.iter_mut() {
        *slot = a.alloc(20);
        n += slot.is_some() as usize;
    }
    ensure!(
        n >= 1 && n < pages.len(),
        "got {n} 1 MiB pages from a 4 MiB arena"
    );
    ensure!(a.alloc(30).is_none(), "a 1 GiB page was handed out");
    for p in pages.iter().flatten() {
        // SAFETY: each came from `alloc(20)` and is freed once.
        unsafe { a.free(*p, 20) };
    }
    ensure!(
        a.live_frames() == start,
        "{} frames live after freeing everything (expected {start})",
        a.live_frames()
    );
    println!("allocated and freed {n} 1 MiB pages; sizes 4K/8K/64K/1M checked");
    Ok(())
}

/// DMA RAM -> edu buffer -> RAM with no IOMMU translating (absent, or present but disabled):
/// device addresses are physical addresses. Checks the bytes and that nothing around the
/// destination range was touched.
pub fn edu_dma_identity(ctx: &mut Ctx) -> Result<(), Fail> {
    let edu = ctx.edu()?;
    let id = edu.id();
    ensure!(
        id == EDU_ID,
        "edu id register {id:#x}, expected {EDU_ID:#x}"
    );
    ensure!(
        edu.alive(0x1234_5678),
        "edu liveness register did not invert"
    );
    let (Some(src), Some(dst)) = (ctx.alloc.alloc(12), ctx.alloc.alloc(12)) else {
        crate::bail!("out of pages");
    };
    const LEN: usize = 3000;
    const BUF_OFF: u64 = 0x100;
    const DST_OFF: usize = 0x80;
    const GUARD: u8 = 0xEE;
    // SAFETY: the page is ours, 4 KiB, and the device only reads it.
    let s = unsafe { core::slice::from_raw_parts_mut(src.va.as_ptr(), 4096) };
    for (i, b) in s.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add((i >> 8) as u8) ^ 0x5a;
    }
    // The destination is written by the device: only raw pointers and volatile accesses.
    let d = dst.va.as_ptr();
    // SAFETY: `d` is a live 4 KiB page of ours.
    unsafe { core::ptr::write_bytes(d, GUARD, 4096) };
    let p1 = edu
        .dma_to_device(src.pa.get(), BUF_OFF, LEN as u64)
        .map_err(|e| Fail::new(format_args!("RAM->edu: {e}")))?;
    let p2 = edu
        .dma_from_device(BUF_OFF, dst.pa.get() + DST_OFF as u64, LEN as u64)
        .map_err(|e| Fail::new(format_args!("edu->RAM: {e}")))?;
    println!(
        "edu bar0 {:#x}: {LEN} bytes {:#x} -> edu+{BUF_OFF:#x} -> {:#x} ({p1}/{p2} polls)",
        edu.bar0(),
        src.pa.get(),
        dst.pa.get() + DST_OFF as u64
    );
    // Volatile loads: the device wrote this memory behind the compiler's back.
    // SAFETY: `i < 4096`, inside the destination page.
    let rd = |i: usize| unsafe { core::ptr::read_volatile(d.add(i)) };
    for i in 0..4096 {
        let want = if (DST_OFF..DST_OFF + LEN).contains(&i) {
            s[i - DST_OFF]
        } else {
            GUARD
        };
        let got = rd(i);
        ensure!(
            got == want,
            "dst byte {i:#x}: got {got:#04x}, want {want:#04x}"
        );
    }
    // SAFETY: both came from `alloc(12)`; the DMAs completed, so the device no longer uses them.
    unsafe {
        ctx.alloc.free(src, 12);
        ctx.alloc.free(dst, 12);
    }
    Ok(())
}
