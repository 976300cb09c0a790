//! SMMUv3 scenarios (numbers 200-299): the crate programs QEMU's `arm-smmuv3` through its public
//! API, as a kernel would, and `edu` DMA shows where translations land.
//!
//! Machines (rows in tests/qemu_scenarios.rs): `virt` (QEMU 10.0 forces `stage=nested`: S1P and
//! S2P), `virt-9.1` (stage 1 only by default) and `virt-9.1` with `-global arm-smmuv3.stage=2`
//! (stage 2 only). QEMU's model: COHACC, no MSI (CMD_SYNC completion by polling CONS), RIL, 16-bit
//! StreamIDs, no SubstreamIDs, OAS 44 bits, 4K/16K/64K granules, no FWB.

use iommu_engine::mmio::{Mmio, RegisterWindow};
use iommu_engine::smmuv3::idr::{Idr, Idr0Flags, Idr3Flags, Idr5Granules, StLevel, Ttf};
use iommu_engine::smmuv3::regs;

use crate::scenario::{Ctx, Fail};
use crate::{ensure, println};

/// Size of the SMMUv3 register window (two 64 KiB pages).
pub const SMMU_WINDOW: usize = 0x2_0000;

/// The SMMU's registers.
pub fn smmu_regs(ctx: &Ctx) -> Result<Mmio, Fail> {
    let Some(base) = core::ptr::NonNull::new(ctx.arch.smmu_base as *mut u8) else {
        crate::bail!("no SMMU base");
    };
    // SAFETY: the SMMU window is identity-mapped Device-nGnRnE (`arch::mmu_enable`), 128 KiB
    // long, and only the crate's driver (or this scenario) touches it during a scenario.
    Ok(unsafe { Mmio::new(base, SMMU_WINDOW) })
}

/// Fails if a global error is active (GERROR != GERRORN): an illegal command, a command queue
/// abort, an event queue that could not be written...
pub fn check_gerror(regs: &impl RegisterWindow, when: &str) -> Result<(), Fail> {
    let (gerror, gerrorn) = (regs.read32(regs::GERROR), regs.read32(regs::GERRORN));
    let active = gerror ^ gerrorn;
    ensure!(
        active == 0,
        "{when}: GERROR {gerror:#x} GERRORN {gerrorn:#x}: active global errors {active:#x} (CMDQ_ERR bit 0, EVENTQ_ABT bit 2); CMDQ_CONS {:#x}",
        regs.read32(regs::CMDQ_CONS)
    );
    Ok(())
}

/// The crate's ID-register decoding agrees with what QEMU 10.0 implements whatever the stage
/// property: AArch64 tables, coherent, 16-bit ASID/VMID, 2-level stream tables, 16-bit
/// StreamIDs, no SubstreamIDs, no MSI, RIL, 44-bit OAS, 4K/16K/64K granules.
pub fn smmu_idr(ctx: &mut Ctx) -> Result<(), Fail> {
    let r = smmu_regs(ctx)?;
    let idr = Idr::read(&r);
    let f0 = idr.idr0.flags();
    println!(
        "IDR0 {:#010x} IDR1 {:#010x} IDR3 {:#010x} IDR5 {:#010x}: S1P {} S2P {} RIL {} FWB {}",
        idr.idr0.0,
        idr.idr1.0,
        idr.idr3.0,
        idr.idr5.0,
        f0.contains(Idr0Flags::S1P),
        f0.contains(Idr0Flags::S2P),
        idr.idr3.flags().contains(Idr3Flags::RIL),
        idr.idr3.flags().contains(Idr3Flags::FWB)
    );
    ensure!(
        f0.intersects(Idr0Flags::S1P | Idr0Flags::S2P),
        "neither stage implemented"
    );
    ensure!(
        f0.contains(Idr0Flags::COHACC | Idr0Flags::ASID16 | Idr0Flags::VMID16),
        "IDR0 flags {f0:?}"
    );
    ensure!(
        !f0.contains(Idr0Flags::MSI),
        "QEMU has no MSI, IDR0 says {f0:?}"
    );
    ensure!(idr.idr0.ttf() == Ttf::AArch64, "TTF {:?}", idr.idr0.ttf());
    ensure!(
        idr.idr0.st_level() == StLevel::TwoLevel,
        "ST_LEVEL {:?}",
        idr.idr0.st_level()
    );
    ensure!(idr.idr1.sidsize() == 16, "SIDSIZE {}", idr.idr1.sidsize());
    ensure!(idr.idr1.ssidsize() == 0, "SSIDSIZE {}", idr.idr1.ssidsize());
    ensure!(
        idr.idr1.cmdqs() == 19 && idr.idr1.eventqs() == 19,
        "CMDQS {} EVENTQS {}",
        idr.idr1.cmdqs(),
        idr.idr1.eventqs()
    );
    ensure!(
        idr.idr3.flags().contains(Idr3Flags::RIL),
        "IDR3 {:?}: no RIL",
        idr.idr3.flags()
    );
    ensure!(
        idr.idr5.oas_bits() == Some(44),
        "OAS {:?}",
        idr.idr5.oas_bits()
    );
    ensure!(
        idr.idr5.granules() == Idr5Granules::all(),
        "granules {:?}",
        idr.idr5.granules()
    );
    check_gerror(&r, "at boot")
}

// -----------------------------------------------------------------------------------------------
// DMA through the crate's IOASID layer.

use iommu_engine::ioasid::{Error as IoError, Incompatibility, IoasidFlags};
use iommu_engine::iommu::Missing;
use iommu_engine::mem::Iova;
use iommu_engine::pgtable::Prot;
use iommu_engine::smmuv3::event::EventType;
use iommu_engine::smmuv3::platform::CANWBS_NOT_DECLARED;

use crate::dma::{load_then_write, pattern, read_iova, roundtrip, write_iova, DmaBuf, GUARD};
use crate::events::Expect;
use crate::smmu_env::{run, Env, StreamTableFormat};

const RO: Prot = Prot::READ;
const RW: Prot = Prot::READ.union(Prot::WRITE);
/// Length of transfers that must fault: short, since QEMU records one event per 4 bytes.
const FAULT_LEN: usize = 16;

/// IOVAs far from any guest physical address (RAM is 0x4000_0000-0x4800_0000), below 2^39 so
/// every stage and start level QEMU accepts can hold them, and in different level-1 and
/// level-2 slots so that several table pages are built.
const IOVA_SRC: u64 = 0x12_3456_0000;
const IOVA_DST: u64 = 0x0_9abc_d000;
const IOVA_BLOCK: u64 = 0x23_4560_0000;
const IOVA_HOLE: u64 = 0x31_0000_0000;

pub(crate) fn iova(v: u64) -> Iova {
    Iova::new(v)
}

pub(crate) fn io<T>(what: &str, r: Result<T, IoError>) -> Result<T, Fail> {
    r.map_err(|e| Fail::new(format_args!("{what}: {e}")))
}

/// A fault the device's StreamID must have caused at `[addr, addr + FAULT_LEN)`.
fn fault(
    env: &Env<'_, '_, '_>,
    what: &'static str,
    kind: EventType,
    addr: u64,
    read: bool,
) -> Expect {
    Expect {
        what,
        kind,
        sid: env.sid,
        addr,
        len: FAULT_LEN as u64,
        read,
        stage2: Some(env.stage2),
        ipa_is_input: true,
    }
}

pub(crate) fn linear(
    ctx: &mut Ctx,
    body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    run(ctx, StreamTableFormat::Linear, body)
}

fn two_level(ctx: &mut Ctx, body: fn(&Env<'_, '_, '_>) -> Result<(), Fail>) -> Result<(), Fail> {
    run(ctx, StreamTableFormat::TwoLevel, body)
}

/// 4 KiB pages, both directions, at IOVA != PA: a transfer crossing an IOVA page boundary
/// whose two pages map to physical pages in the opposite order lands split exactly there; one
/// mapping made before the attach (copied into the new domain), one after; no event.
pub fn smmu_dma_4k(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, dma_4k)
}

/// [`smmu_dma_4k`] with a two-level stream table.
pub fn smmu_dma_4k_2lvl(ctx: &mut Ctx) -> Result<(), Fail> {
    two_level(ctx, dma_4k)
}

fn dma_4k(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (src, dst) = (env.buf(12)?, env.buf(12)?);
    // Two destination pages, mapped in reverse physical order at IOVA_DST and IOVA_DST + 4K.
    let (lo, hi) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io("attach", env.io.attach(env.dev, a))?;
    io("map dst", env.io.map(a, iova(IOVA_DST), hi.pa(0), 4096, RW))?;
    io(
        "map dst+4K",
        env.io.map(a, iova(IOVA_DST + 4096), lo.pa(0), 4096, RW),
    )?;
    io(
        "map dst2",
        env.io.map(a, iova(IOVA_HOLE), dst.pa(0), 4096, RW),
    )?;

    // Inside one page, odd offsets and length.
    roundtrip(
        env.edu,
        &src,
        0x123,
        iova(IOVA_SRC + 0x123),
        &dst,
        0x456,
        iova(IOVA_HOLE + 0x456),
        0x9a7,
        1,
    )?;
    // Across the IOVA page boundary: the first 0x300 bytes land at the end of `hi`, the rest at
    // the start of `lo`.
    let (off, len) = (0xd00usize, 0x800usize);
    src.fill(0, len, 2);
    hi.guard_all();
    lo.guard_all();
    read_iova(env.edu, iova(IOVA_SRC), len)?;
    write_iova(env.edu, iova(IOVA_DST + off as u64), len)?;
    let first = 4096 - off;
    for i in 0..4096 {
        let want_hi = if i >= off { pattern(2, i - off) } else { GUARD };
        let want_lo = if i < len - first {
            pattern(2, first + i)
        } else {
            GUARD
        };
        let (got_hi, got_lo) = (hi.get(i), lo.get(i));
        ensure!(
            got_hi == want_hi && got_lo == want_lo,
            "byte {i:#x}: page at IOVA_DST {got_hi:#04x} (want {want_hi:#04x}), at IOVA_DST+4K {got_lo:#04x} (want {want_lo:#04x})"
        );
    }
    dst.expect(0x456, 0x9a7, 1, true)?;
    env.events("4K transfers")?.expect_none("4K transfers")?;
    Ok(())
}

/// A 2 MiB mapping (a block where the domain allows it): transfers at its start, middle and
/// end land at the block's physical address plus the offset; unmapping one 4 KiB page inside
/// it (after a transfer there filled QEMU's TLB with the block) splits the block: the hole
/// faults with a translation event, its neighbours still land.
pub fn smmu_dma_2m(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, dma_2m)
}

fn dma_2m(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    const BLOCK: u64 = 1 << 21;
    let big = env.buf(21)?;
    let src = env.buf(12)?;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map block",
        env.io.map(a, iova(IOVA_BLOCK), big.pa(0), BLOCK, RW),
    )?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    match io(
        "translate",
        env.io.translate(a, iova(IOVA_BLOCK + 0x12_3456)),
    )? {
        Some(m) if m.size_log2 == 21 && m.pa == big.pa(0x12_3456) => {}
        other => crate::bail!("IOASID says {other:x?} for the block"),
    }
    big.guard_all();
    let hole = 0x10_0000usize;
    let spots: [(usize, usize, u8); 4] = [
        (0, 0x100, 10),
        (hole + 0x800, 0x400, 11),
        (0x1f_ff00 - 0x40, 0x140, 12), // up to the block's last byte
        (0x0f_fe00, 0x400, 13),        // across a 4K boundary inside the block
    ];
    for &(off, len, seed) in &spots {
        load_then_write(
            env.edu,
            &src,
            0,
            iova(IOVA_SRC),
            iova(IOVA_BLOCK + off as u64),
            len,
            seed,
        )?;
    }
    for &(off, len, seed) in &spots {
        big.expect(off, len, seed, false)?;
    }
    env.events("block transfers")?
        .expect_none("block transfers")?;

    // Punch a 4K hole in the middle of the block.
    let n = io(
        "unmap 4K in block",
        env.io.unmap(a, iova(IOVA_BLOCK + hole as u64), 4096),
    )?;
    ensure!(
        n == 4096,
        "unmap of one page inside the block removed {n:#x} bytes"
    );
    big.guard_all();
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_BLOCK + hole as u64 + 0x40),
        FAULT_LEN,
        14,
    )?;
    let ev = env.events("write into the hole")?;
    ev.expect_faults(&fault(
        env,
        "write into the hole",
        EventType::FTranslation,
        IOVA_BLOCK + hole as u64 + 0x40,
        false,
    ))?;
    big.expect_untouched()?;
    // Both neighbours of the hole still translate.
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_BLOCK + hole as u64 - 0x80),
        0x80,
        15,
    )?;
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_BLOCK + hole as u64 + 0x1000),
        0x80,
        16,
    )?;
    big.expect(hole - 0x80, 0x80, 15, false)?;
    big.expect(hole + 0x1000, 0x80, 16, false)?;
    for i in hole..hole + 0x1000 {
        ensure!(big.get(i) == GUARD, "byte {i:#x} of the hole was written");
    }
    env.events("around the hole")?
        .expect_none("around the hole")?;
    Ok(())
}

/// A write and a read at IOVAs nothing maps produce translation-fault records naming edu's
/// StreamID, the faulting input address, the direction, and the stage the unit uses.
pub fn smmu_fault_unmapped(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, fault_unmapped)
}

fn fault_unmapped(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let src = env.buf(12)?;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io("attach", env.io.attach(env.dev, a))?;
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_HOLE + 0x80),
        FAULT_LEN,
        3,
    )?;
    let ev = env.events("write to unmapped IOVA")?;
    ev.print("write to unmapped IOVA");
    ev.expect_faults(&fault(
        env,
        "write to unmapped IOVA",
        EventType::FTranslation,
        IOVA_HOLE + 0x80,
        false,
    ))?;
    // The page right after a mapped one.
    read_iova(env.edu, iova(IOVA_SRC + 0x1000), FAULT_LEN)?;
    let ev = env.events("read from unmapped IOVA")?;
    ev.print("read from unmapped IOVA");
    ev.expect_faults(&fault(
        env,
        "read from unmapped IOVA",
        EventType::FTranslation,
        IOVA_SRC + 0x1000,
        true,
    ))?;
    Ok(())
}

/// A read-only mapping: a write to it produces a permission-fault record (edu's StreamID, the
/// address, RnW = 0, the stage in use) and leaves the page unchanged; a read works; a second
/// write, now that QEMU has the read-only translation in its TLB, is still refused.
///
/// QEMU 10.0 bug: a write hitting a *cached* read-only stage-2-only translation is reported as a
/// stage-1 fault and therefore recorded only if `CD.R` were set (there is no CD): no record. So
/// the second write's record is required only for stage 1; its data must never land either way.
pub fn smmu_fault_readonly(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, fault_readonly)
}

fn fault_readonly(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (ro, dst) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io("map ro", env.io.map(a, iova(IOVA_SRC), ro.pa(0), 4096, RO))?;
    io(
        "map dst",
        env.io.map(a, iova(IOVA_DST), dst.pa(0), 4096, RW),
    )?;
    // Put known bytes in edu's buffer, then try to write them to the read-only page.
    dst.fill(0, 4096, 8);
    read_iova(env.edu, iova(IOVA_DST), FAULT_LEN)?;
    ro.guard_all();
    write_iova(env.edu, iova(IOVA_SRC + 0x100), FAULT_LEN)?;
    let ev = env.events("write to read-only page")?;
    ev.print("write to read-only page");
    ev.expect_faults(&fault(
        env,
        "write to read-only page",
        EventType::FPermission,
        IOVA_SRC + 0x100,
        false,
    ))?;
    ro.expect_untouched()?;
    // Readable (this also puts the read-only translation in QEMU's TLB).
    roundtrip(
        env.edu,
        &ro,
        0x40,
        iova(IOVA_SRC + 0x40),
        &dst,
        0x40,
        iova(IOVA_DST + 0x40),
        0x200,
        4,
    )?;
    env.events("read of read-only page")?
        .expect_none("read of read-only page")?;
    // Written again through the cached translation.
    ro.guard_all();
    write_iova(env.edu, iova(IOVA_SRC + 0x200), FAULT_LEN)?;
    ro.expect_untouched()?;
    let ev = env.events("write to cached read-only page")?;
    ev.print("write to cached read-only page");
    if env.stage2 && ev.count() == 0 {
        println!("no record for the cached stage-2 permission fault (QEMU 10.0 attributes it to stage 1)");
    } else {
        ev.expect_faults(&fault(
            env,
            "write to cached read-only page",
            EventType::FPermission,
            IOVA_SRC + 0x200,
            false,
        ))?;
    }
    Ok(())
}

/// After unmap (which flushes), a transfer to the IOVA faults even though QEMU had the
/// translation in its TLB; after remapping the same IOVA to another page, transfers in both
/// directions use the new page and never the old one.
pub fn smmu_unmap_remap(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, unmap_remap)
}

/// [`smmu_unmap_remap`] with a two-level stream table.
pub fn smmu_unmap_remap_2lvl(ctx: &mut Ctx) -> Result<(), Fail> {
    two_level(ctx, unmap_remap)
}

fn unmap_remap(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (src1, src2, dst1, dst2) = (env.buf(12)?, env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src1",
        env.io.map(a, iova(IOVA_SRC), src1.pa(0), 4096, RO),
    )?;
    io(
        "map dst1",
        env.io.map(a, iova(IOVA_DST), dst1.pa(0), 4096, RW),
    )?;
    roundtrip(
        env.edu,
        &src1,
        0,
        iova(IOVA_SRC),
        &dst1,
        0x10,
        iova(IOVA_DST + 0x10),
        0x100,
        5,
    )?;

    // Unmap the destination: the write must fault, not use QEMU's cached translation.
    let n = io("unmap dst1", env.io.unmap(a, iova(IOVA_DST), 4096))?;
    ensure!(n == 4096, "unmap removed {n:#x} bytes");
    dst1.guard_all();
    write_iova(env.edu, iova(IOVA_DST + 0x10), FAULT_LEN)?;
    let ev = env.events("write after unmap")?;
    ev.expect_faults(&fault(
        env,
        "write after unmap",
        EventType::FTranslation,
        IOVA_DST + 0x10,
        false,
    ))?;
    dst1.expect_untouched()?;

    // Remap both IOVAs to other pages; the old translations must be gone.
    io("unmap src1", env.io.unmap(a, iova(IOVA_SRC), 4096))?;
    io(
        "map src2",
        env.io.map(a, iova(IOVA_SRC), src2.pa(0), 4096, RO),
    )?;
    io(
        "map dst2",
        env.io.map(a, iova(IOVA_DST), dst2.pa(0), 4096, RW),
    )?;
    src1.fill(0, 4096, 0x55); // what a stale read would fetch
    dst1.guard_all();
    roundtrip(
        env.edu,
        &src2,
        0,
        iova(IOVA_SRC),
        &dst2,
        0x10,
        iova(IOVA_DST + 0x10),
        0x100,
        6,
    )?;
    dst1.expect_untouched()?;
    env.events("after remap")?.expect_none("after remap")?;
    Ok(())
}

/// Range invalidation: 16 pages are mapped and all of them used (QEMU caches each), then one
/// unmap removes all 16 with one flush (range TLBI when the unit has RIL, which QEMU
/// advertises); the first, a middle and the last page all fault afterwards.
pub fn smmu_range_inval(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, range_inval)
}

fn range_inval(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    const PAGES: usize = 16;
    let big = env.buf(16)?; // 64 KiB
    let src = env.buf(12)?;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io(
        "map 16 pages",
        env.io
            .map(a, iova(IOVA_DST), big.pa(0), (PAGES * 4096) as u64, RW),
    )?;
    big.guard_all();
    src.fill(0, 4096, 7);
    read_iova(env.edu, iova(IOVA_SRC), 4096)?;
    // Each 4K write at +2K spans two pages: 8 writes touch all 16.
    for i in 0..PAGES / 2 {
        write_iova(env.edu, iova(IOVA_DST + (i * 0x2000 + 0x800) as u64), 4096)?;
    }
    for i in 0..PAGES / 2 {
        big.expect(i * 0x2000 + 0x800, 4096, 7, false)?;
    }
    env.events("16 pages")?.expect_none("16 pages")?;
    let prod = env.cmdq_prod();
    let n = io(
        "unmap 16 pages",
        env.io.unmap(a, iova(IOVA_DST), (PAGES * 4096) as u64),
    )?;
    ensure!(n == (PAGES * 4096) as u64, "unmap removed {n:#x} bytes");
    let commands = env.commands_between(prod, env.cmdq_prod());
    println!(
        "unmap of {PAGES} pages issued {commands} command(s) (RIL {})",
        env.ril
    );
    big.guard_all();
    for page in [0usize, 7, 15] {
        let at = IOVA_DST + (page * 4096 + 0x20) as u64;
        write_iova(env.edu, iova(at), FAULT_LEN)?;
        let ev = env.events("write after range unmap")?;
        ev.expect_faults(&fault(
            env,
            "write after range unmap",
            EventType::FTranslation,
            at,
            false,
        ))?;
    }
    big.expect_untouched()?;
    // With RIL one range TLBI covers the 16 pages (plus CMD_SYNC); without, one per page.
    let most = if env.ril { 2 } else { PAGES as u32 + 1 };
    ensure!(
        (2..=most).contains(&commands),
        "unmap of {PAGES} pages issued {commands} command(s), expected 2..={most} (RIL {})",
        env.ril
    );
    Ok(())
}

/// The driver's STE changes reach the device: detached, its DMA is blocked; attached to
/// another IOASID (same IOVA, other page), it lands there; switched straight back (no detach in
/// between), it lands in the first page again; and after the second IOASID's domain was freed,
/// a third IOASID (whose domain may reuse its tag) never sees its stale translations.
pub fn smmu_detach_reattach(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, detach_reattach)
}

/// [`smmu_detach_reattach`] with a two-level stream table.
pub fn smmu_detach_reattach_2lvl(ctx: &mut Ctx) -> Result<(), Fail> {
    two_level(ctx, detach_reattach)
}

fn detach_reattach(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let src = env.buf(12)?;
    let (d1, d2, d3) = (env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let all = [&d1, &d2, &d3];
    let a = io("alloc a", env.io.alloc(IoasidFlags::empty()))?;
    let b = io("alloc b", env.io.alloc(IoasidFlags::empty()))?;
    for (id, d) in [(a, &d1), (b, &d2)] {
        io(
            "map src",
            env.io.map(id, iova(IOVA_SRC), src.pa(0), 4096, RO),
        )?;
        io("map dst", env.io.map(id, iova(IOVA_DST), d.pa(0), 4096, RW))?;
    }
    let write = |seed: u8| -> Result<(), Fail> {
        for d in all {
            d.guard_all();
        }
        load_then_write(
            env.edu,
            &src,
            0,
            iova(IOVA_SRC),
            iova(IOVA_DST + 0x30),
            0x80,
            seed,
        )
    };
    let landed_in = |which: usize, seed: u8| -> Result<(), Fail> {
        for (k, d) in all.iter().enumerate() {
            if k == which {
                d.expect(0x30, 0x80, seed, true)?;
            } else {
                d.expect_untouched()?;
            }
        }
        Ok(())
    };

    io("attach a", env.io.attach(env.dev, a))?;
    write(20)?;
    landed_in(0, 20)?;

    io("detach", env.io.detach(env.dev))?;
    for d in all {
        d.guard_all();
    }
    write_iova(env.edu, iova(IOVA_DST + 0x30), FAULT_LEN)?;
    for d in all {
        d.expect_untouched()?;
    }
    let ev = env.events("DMA while detached")?;
    ev.print("DMA while detached");
    // A blocking STE aborts silently (Config = abort) or names the stream (C_BAD_STE).
    for e in ev.iter() {
        ensure!(
            e.event_type == Ok(EventType::CBadSte) && e.stream_id == env.sid,
            "detached: unexpected event {:?} sid {:#x}",
            e.event_type,
            e.stream_id.0
        );
    }

    io("attach b", env.io.attach(env.dev, b))?;
    write(21)?;
    landed_in(1, 21)?;
    io("switch to a", env.io.attach(env.dev, a))?;
    write(22)?;
    landed_in(0, 22)?;
    // b's domain was freed when its last device left; c's domain may reuse its tag.
    io("free b", env.io.free(b))?;
    let c = io("alloc c", env.io.alloc(IoasidFlags::empty()))?;
    io(
        "map c src",
        env.io.map(c, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io(
        "map c dst",
        env.io.map(c, iova(IOVA_DST), d3.pa(0), 4096, RW),
    )?;
    io("attach c", env.io.attach(env.dev, c))?;
    write(23)?;
    landed_in(2, 23)?;
    env.events("re-attached")?.expect_none("re-attached")?;
    Ok(())
}

/// `ENFORCE_SNOOP`: QEMU's `virt` declares no `CANWBS` in its IORT, and the unit is configured
/// with no platform declaration, so attaching to an enforce-snoop IOASID is refused with
/// `Incompatible` / `Missing::NotDeclared` (CANWBS), whatever `IDR3.FWB` says, and nothing
/// changes: the device stays attached where it was and its DMA still lands there. If the unit
/// says it can enforce snooping, the attach must work.
pub fn smmu_enforce_snoop(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, enforce_snoop)
}

fn enforce_snoop(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let src = env.buf(12)?;
    let (d1, d2) = (env.buf(12)?, env.buf(12)?);
    let caps = io("device_info", env.io.device_info(env.dev))?.capabilities;
    println!("capabilities: {caps:?}");
    let a = io("alloc a", env.io.alloc(IoasidFlags::empty()))?;
    let s = io("alloc snoop", env.io.alloc(IoasidFlags::ENFORCE_SNOOP))?;
    for (id, d) in [(a, &d1), (s, &d2)] {
        io(
            "map src",
            env.io.map(id, iova(IOVA_SRC), src.pa(0), 4096, RO),
        )?;
        io("map dst", env.io.map(id, iova(IOVA_DST), d.pa(0), 4096, RW))?;
    }
    io("attach a", env.io.attach(env.dev, a))?;
    let frames = env.alloc.live_frames();
    let r = env.io.attach(env.dev, s);
    let target = if caps.enforce_snoop {
        io("attach enforce-snoop", r)?;
        &d2
    } else {
        match r {
            Err(IoError::Incompatible {
                device,
                reason:
                    Incompatibility::Missing(Missing::NotDeclared {
                        what: CANWBS_NOT_DECLARED,
                    }),
            }) if device == env.dev => {}
            other => crate::bail!(
                "attach to an ENFORCE_SNOOP IOASID without CANWBS: {other:?}, expected Incompatible(NotDeclared)"
            ),
        }
        ensure!(
            env.alloc.live_frames() == frames,
            "refused attach left {} page frame(s) allocated",
            env.alloc.live_frames() as isize - frames as isize
        );
        &d1
    };
    d1.guard_all();
    d2.guard_all();
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_DST + 0x8),
        0x40,
        30,
    )?;
    target.expect(0x8, 0x40, 30, true)?;
    let other = if caps.enforce_snoop { &d1 } else { &d2 };
    other.expect_untouched()?;
    env.events("after enforce-snoop attach")?
        .expect_none("after enforce-snoop attach")?;
    Ok(())
}

// -----------------------------------------------------------------------------------------------
// Nested translation: below the IOASID layer, through the unit's `Iommu` trait and
// `SmmuUnit::domain_alloc_nested` (a stage 1 the crate builds; the IOASID layer's nested children
// hold a guest's stage 1 instead: `smmu_nested_user` below).

use iommu_engine::iommu::{DeviceId, DomainConfig, DomainHandle, Error as UnitError, Iommu, Stage};
use iommu_engine::mem::PhysAddr;
use iommu_engine::pgtable::Gather;

/// Intermediate physical addresses the stage-1 domain outputs: far from RAM, so only the
/// parent's stage 2 can make them reach it.
const IPA_SRC: u64 = 0x7_1000_0000;
const IPA_DST: u64 = 0x7_2000_0000;
const IPA_NOWHERE: u64 = 0x7_3000_0000;

pub(crate) fn unit_op<T>(what: &str, r: Result<T, UnitError>) -> Result<T, Fail> {
    r.map_err(|e| Fail::new(format_args!("{what}: {e}")))
}

pub(crate) fn unmap_flush(
    unit: &dyn Iommu,
    d: DomainHandle,
    at: u64,
    len: u64,
) -> Result<u64, Fail> {
    let mut g = Gather::new();
    let r = unit.unmap(d, iova(at), len, &mut g);
    unit_op("flush", unit.flush(d, &mut g))?;
    unit_op("unmap", r)
}

/// Nested translation (QEMU `virt`: stage=nested): a stage-1 domain over a nest-parent stage-2
/// domain. IOVA -> IPA (stage 1) -> PA (stage 2, which also maps the page allocator's arena at
/// IPA = PA so the unit can walk the CD and stage-1 tables). Transfers land at the end of both
/// translations; a stage-1 hole and a stage-2 hole fault with the S2 flag telling which; an
/// unmap in the parent (after QEMU cached the combined translation) faults, and remapping the
/// parent's IPA moves the device's transfers to the new page. On a unit without both stages a
/// nest parent is refused with `Missing::Nesting`.
pub fn smmu_nested(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, nested)
}

fn nested(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let unit: &dyn Iommu = env.unit;
    let parent_cfg = DomainConfig {
        min_ias: 36,
        nest_parent: true,
        stage: Stage::Second,
        ..DomainConfig::default()
    };
    if !env.nested {
        match unit.domain_alloc(&parent_cfg) {
            Err(UnitError::Unsupported(Missing::Nesting | Missing::Mode { .. })) => {}
            other => crate::bail!("nest parent on a single-stage unit: {other:?}"),
        }
        ensure!(
            !unit.capabilities().nesting,
            "single-stage unit reports nesting"
        );
        return Ok(());
    }
    ensure!(unit.capabilities().nesting, "S1P+S2P unit without nesting");
    let (src, d1, d2) = (env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let parent = unit_op("parent", unit.domain_alloc(&parent_cfg))?;
    // IPA = PA for the whole arena: CD and stage-1 table pages come from it.
    let arena = PhysAddr::new(env.alloc.base() as u64);
    unit_op(
        "identity-map the arena",
        unit.map(
            parent,
            iova(arena.get()),
            arena,
            env.alloc.size() as u64,
            RW,
        ),
    )?;
    unit_op(
        "map IPA_SRC",
        unit.map(parent, iova(IPA_SRC), src.pa(0), 4096, RO),
    )?;
    unit_op(
        "map IPA_DST",
        unit.map(parent, iova(IPA_DST), d1.pa(0), 4096, RW),
    )?;
    let child = unit_op(
        "nested stage-1 domain",
        env.unit
            .domain_alloc_nested(&DomainConfig::default(), parent),
    )?;
    let ipa = |v: u64| PhysAddr::new(v);
    unit_op(
        "S1 src",
        unit.map(child, iova(IOVA_SRC), ipa(IPA_SRC), 4096, RO),
    )?;
    unit_op(
        "S1 dst",
        unit.map(child, iova(IOVA_DST), ipa(IPA_DST), 4096, RW),
    )?;
    unit_op(
        "S1 to nowhere",
        unit.map(child, iova(IOVA_HOLE), ipa(IPA_NOWHERE), 4096, RW),
    )?;
    let sid = DeviceId(env.sid.0);
    unit_op("attach nested", unit.attach(sid, None, child))?;
    let result = nested_dma(env, unit, parent, child, &src, &d1, &d2);
    // Tear down below the IOASID layer ourselves: it does not know about these domains.
    let detach = unit_op("detach", unit.detach(sid, None));
    let free_child = unit_op("free child", unit.domain_free(child));
    let free_parent = unit_op("free parent", unit.domain_free(parent));
    result.and(detach).and(free_child).and(free_parent)
}

#[allow(clippy::too_many_arguments)]
fn nested_dma(
    env: &Env<'_, '_, '_>,
    unit: &dyn Iommu,
    parent: DomainHandle,
    child: DomainHandle,
    src: &DmaBuf<'_>,
    d1: &DmaBuf<'_>,
    d2: &DmaBuf<'_>,
) -> Result<(), Fail> {
    roundtrip(
        env.edu,
        src,
        0x20,
        iova(IOVA_SRC + 0x20),
        d1,
        0x40,
        iova(IOVA_DST + 0x40),
        0x300,
        40,
    )?;
    env.events("nested transfers")?
        .expect_none("nested transfers")?;

    // Stage-1 hole: S2 = 0.
    write_iova(env.edu, iova(IOVA_SRC + 0x1000), FAULT_LEN)?;
    let ev = env.events("stage-1 hole")?;
    ev.print("stage-1 hole");
    let mut want = fault(
        env,
        "stage-1 hole",
        EventType::FTranslation,
        IOVA_SRC + 0x1000,
        false,
    );
    want.stage2 = Some(false);
    ev.expect_faults(&want)?;
    // Stage-2 hole: stage 1 translates to an IPA nothing maps. S2 = 1, IPA named.
    d1.guard_all();
    write_iova(env.edu, iova(IOVA_HOLE + 0x10), FAULT_LEN)?;
    let ev = env.events("stage-2 hole")?;
    ev.print("stage-2 hole");
    let mut want = fault(
        env,
        "stage-2 hole",
        EventType::FTranslation,
        IOVA_HOLE + 0x10,
        false,
    );
    want.stage2 = Some(true);
    want.ipa_is_input = false;
    ev.expect_faults(&want)?;
    for e in ev.iter() {
        ensure!(
            e.ipa == Some(IPA_NOWHERE),
            "stage-2 hole: event IPA {:x?}, expected {IPA_NOWHERE:#x}",
            e.ipa
        );
    }

    // Unmap the destination in the parent: the combined translation QEMU cached must go.
    let n = unmap_flush(unit, parent, IPA_DST, 4096)?;
    ensure!(n == 4096, "parent unmap removed {n:#x} bytes");
    d1.guard_all();
    write_iova(env.edu, iova(IOVA_DST + 0x40), FAULT_LEN)?;
    d1.expect_untouched()?;
    let ev = env.events("after parent unmap")?;
    let mut want = fault(
        env,
        "after parent unmap",
        EventType::FTranslation,
        IOVA_DST + 0x40,
        false,
    );
    want.stage2 = Some(true);
    want.ipa_is_input = false;
    ev.expect_faults(&want)?;
    // The parent maps the IPA to another page: the device follows.
    unit_op(
        "remap IPA_DST",
        unit.map(parent, iova(IPA_DST), d2.pa(0), 4096, RW),
    )?;
    d1.guard_all();
    roundtrip(
        env.edu,
        src,
        0,
        iova(IOVA_SRC),
        d2,
        0x80,
        iova(IOVA_DST + 0x80),
        0x100,
        41,
    )?;
    d1.expect_untouched()?;

    // Unmap in the child: a stage-1 fault.
    let n = unmap_flush(unit, child, IOVA_DST, 4096)?;
    ensure!(n == 4096, "child unmap removed {n:#x} bytes");
    d2.guard_all();
    write_iova(env.edu, iova(IOVA_DST + 0x80), FAULT_LEN)?;
    d2.expect_untouched()?;
    let ev = env.events("after child unmap")?;
    let mut want = fault(
        env,
        "after child unmap",
        EventType::FTranslation,
        IOVA_DST + 0x80,
        false,
    );
    want.stage2 = Some(false);
    ev.expect_faults(&want)?;
    Ok(())
}

// -----------------------------------------------------------------------------------------------
// A 1 GiB block, two devices, an event flood.

/// 1 GiB-aligned IOVA for the 1 GiB block.
const IOVA_GIG: u64 = 0x40_0000_0000;
/// The block's output: guest RAM starts here (virt), so every arena page is inside it.
const RAM_BASE: u64 = 0x4000_0000;

/// A 1 GiB mapping (a level-1 block) of all guest RAM at `IOVA_GIG`: transfers to the IOVA of
/// an arena buffer land in it. Unmapping one 4 KiB page of it (after QEMU cached the 1 GiB
/// entry) splits the block twice (1G -> 2M -> 4K): that page faults, the next one still lands.
pub fn smmu_dma_1g(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, dma_1g)
}

fn dma_1g(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    const GIG: u64 = 1 << 30;
    let src = env.buf(12)?;
    let dst = env.buf(13)?; // two pages: the first is unmapped later, the second stays
    let at = |b: &DmaBuf<'_>, off: usize| iova(IOVA_GIG + (b.pa(off).get() - RAM_BASE));
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map 1 GiB",
        env.io
            .map(a, iova(IOVA_GIG), PhysAddr::new(RAM_BASE), GIG, RW),
    )?;
    match io("translate", env.io.translate(a, at(&dst, 0x10)))? {
        Some(m) if m.size_log2 == 30 && m.pa == dst.pa(0x10) => {}
        other => crate::bail!("IOASID says {other:x?} for the 1 GiB block"),
    }
    // Across the two destination pages.
    roundtrip(
        env.edu,
        &src,
        0x10,
        at(&src, 0x10),
        &dst,
        0xf00,
        at(&dst, 0xf00),
        0x400,
        50,
    )?;
    env.events("1 GiB block")?.expect_none("1 GiB block")?;

    let n = io(
        "unmap 4K of the 1 GiB block",
        env.io.unmap(a, at(&dst, 0), 4096),
    )?;
    ensure!(
        n == 4096,
        "unmap of one page inside the 1 GiB block removed {n:#x}"
    );
    match io("translate split", env.io.translate(a, at(&dst, 0x1010)))? {
        Some(m) if m.size_log2 == 12 && m.pa == dst.pa(0x1010) => {}
        other => crate::bail!("after the split the IOASID says {other:x?}"),
    }
    dst.guard_all();
    let hole = at(&dst, 0x80).get();
    write_iova(env.edu, iova(hole), FAULT_LEN)?;
    let ev = env.events("write into the hole")?;
    ev.expect_faults(&fault(
        env,
        "write into the hole",
        EventType::FTranslation,
        hole,
        false,
    ))?;
    dst.expect_untouched()?;
    load_then_write(env.edu, &src, 0, at(&src, 0), at(&dst, 0x1080), 0x100, 51)?;
    dst.expect(0x1080, 0x100, 51, true)?;
    env.events("after the split")?
        .expect_none("after the split")?;
    Ok(())
}

/// `edu`'s second instance, at 00:08.0 (StreamID 0x40): BAR0 placed after the first one's.
fn second_edu() -> Result<crate::edu::Edu, Fail> {
    use crate::pci::{self, ConfigSpace};
    struct Ecam;
    impl ConfigSpace for Ecam {
        fn read32(&self, (b, d, f): pci::Bdf, off: u8) -> u32 {
            crate::arch::pci_read32(b, d, f, off)
        }
        fn write32(&self, (b, d, f): pci::Bdf, off: u8, v: u32) {
            crate::arch::pci_write32(b, d, f, off, v)
        }
    }
    let bdf = (0, 8, 0);
    let want = u32::from(pci::EDU_DEVICE) << 16 | u32::from(pci::EDU_VENDOR);
    ensure!(
        Ecam.read32(bdf, 0) == want,
        "no second edu at 00:08.0 (row needs -device edu,addr=08.0)"
    );
    pci::disable_decode(&Ecam, bdf);
    let size = u64::from(pci::bar0_size32(&Ecam, bdf)?);
    let bar = (crate::arch::PCI_MMIO32.start + (1 << 20)).next_multiple_of(size);
    pci::set_bar0_32(&Ecam, bdf, bar as u32);
    pci::enable_mem_and_master(&Ecam, bdf);
    let Some(base) = core::ptr::NonNull::new(bar as usize as *mut u8) else {
        crate::bail!("second edu BAR0 is zero");
    };
    // SAFETY: BAR0 is in the 32-bit PCI window (identity-mapped Device-nGnRnE), after the first
    // edu's 1 MiB BAR; decoding is enabled and only this scenario drives the device.
    Ok(unsafe { crate::edu::Edu::new(base, bdf) })
}

/// Two devices (StreamIDs 0x20 and 0x40, in different level-1 spans of a two-level stream
/// table with 64-STE leaves): each lands in its own IOASID at the same IOVA; moved into the
/// other's IOASID (a domain shared by two STEs) it lands there; detaching one leaves the other
/// working; an unmap in the shared IOASID makes the remaining device fault under its own
/// StreamID.
pub fn smmu_two_devices(ctx: &mut Ctx) -> Result<(), Fail> {
    let edu2 = second_edu()?;
    crate::smmu_env::run_with(
        ctx,
        StreamTableFormat::TwoLevelSplit6 { spans: 2 },
        Some(&edu2),
        two_devices,
    )
}

fn two_devices(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    use iommu_engine::ioasid::{DeviceLabel, UnitId};
    let Some(edu2) = env.edu2 else {
        crate::bail!("no second edu");
    };
    let sid2 = crate::smmu_env::edu_sid(edu2);
    ensure!(sid2.0 == 0x40, "second edu has StreamID {:#x}", sid2.0);
    let label = DeviceLabel {
        unit: UnitId(0),
        id: DeviceId(sid2.0),
    };
    let dev2 = io("bind edu2", env.io.bind(label, false))?;
    let src = env.buf(12)?;
    let (d1, d2) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc a", env.io.alloc(IoasidFlags::empty()))?;
    let b = io("alloc b", env.io.alloc(IoasidFlags::empty()))?;
    for (id, d) in [(a, &d1), (b, &d2)] {
        io(
            "map src",
            env.io.map(id, iova(IOVA_SRC), src.pa(0), 4096, RO),
        )?;
        io("map dst", env.io.map(id, iova(IOVA_DST), d.pa(0), 4096, RW))?;
    }
    let write = |edu: &crate::edu::Edu, seed: u8| -> Result<(), Fail> {
        d1.guard_all();
        d2.guard_all();
        load_then_write(
            edu,
            &src,
            0,
            iova(IOVA_SRC),
            iova(IOVA_DST + 0x100),
            0x80,
            seed,
        )
    };
    io("attach edu a", env.io.attach(env.dev, a))?;
    io("attach edu2 b", env.io.attach(dev2, b))?;
    write(env.edu, 60)?;
    d1.expect(0x100, 0x80, 60, true)?;
    d2.expect_untouched()?;
    write(edu2, 61)?;
    d2.expect(0x100, 0x80, 61, true)?;
    d1.expect_untouched()?;
    // Both in a: one domain behind two STEs.
    io("attach edu2 a", env.io.attach(dev2, a))?;
    write(edu2, 62)?;
    d1.expect(0x100, 0x80, 62, true)?;
    d2.expect_untouched()?;
    io("detach edu", env.io.detach(env.dev))?;
    write(edu2, 63)?;
    d1.expect(0x100, 0x80, 63, true)?;
    d1.guard_all();
    write_iova(env.edu, iova(IOVA_DST + 0x100), FAULT_LEN)?;
    d1.expect_untouched()?;
    env.events("two devices")?.expect_none("two devices")?;
    // An unmap in the shared IOASID: the device still attached faults, under its StreamID.
    io("unmap dst", env.io.unmap(a, iova(IOVA_DST), 4096))?;
    write_iova(edu2, iova(IOVA_DST + 0x100), FAULT_LEN)?;
    d1.expect_untouched()?;
    let ev = env.events("edu2 after unmap")?;
    let mut want = fault(
        env,
        "edu2 after unmap",
        EventType::FTranslation,
        IOVA_DST + 0x100,
        false,
    );
    want.sid = sid2;
    ev.expect_faults(&want)?;
    io("detach edu2", env.io.detach(dev2))?;
    io("unbind edu2", env.io.unbind(dev2))?;
    Ok(())
}

/// A fault storm: one 4 KiB transfer to an unmapped IOVA makes QEMU try 1024 records into a
/// 128-entry queue. The unit's event handling reports the loss (QEMU signals a full queue as
/// GERROR.EVENTQ_ABT_ERR, the architecture as EVENTQ_PROD.OVFLG), acknowledges it, and the
/// next fault is recorded normally, exactly once per access.
pub fn smmu_event_flood(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, event_flood)
}

fn event_flood(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    use iommu_engine::smmuv3::regs::Gerror;
    let src = env.buf(12)?;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io("attach", env.io.attach(env.dev, a))?;
    load_then_write(env.edu, &src, 0, iova(IOVA_SRC), iova(IOVA_HOLE), 4096, 70)?;
    let (mut consumed, mut lost, mut wrong) = (0usize, false, 0usize);
    for _ in 0..64 {
        let r = env.unit.handle_events(64, |e| {
            if e.event_type != Ok(EventType::FTranslation) || e.stream_id != env.sid {
                wrong += 1;
            }
        });
        consumed += r.events.consumed;
        lost |= r.events.overflowed || r.gerror.contains(Gerror::EVENTQ_ABT_ERR);
        ensure!(
            (r.gerror - Gerror::EVENTQ_ABT_ERR).is_empty() && r.command_error.is_none(),
            "flood: global errors {:?}, command error {:?}",
            r.gerror,
            r.command_error
        );
        if !r.events.more {
            break;
        }
    }
    println!("flood: {consumed} record(s) read, loss reported: {lost}");
    ensure!(wrong == 0, "flood: {wrong} record(s) of another kind");
    ensure!(
        (120..=128).contains(&consumed),
        "flood: {consumed} records read from a 128-entry queue"
    );
    ensure!(
        lost,
        "flood: 1024 faults into 128 entries, but no loss reported"
    );
    check_gerror(env.unit.registers(), "after the flood")?;
    // Recovered: the next fault is recorded, once per 4-byte access.
    write_iova(env.edu, iova(IOVA_HOLE + 0x40), FAULT_LEN)?;
    let ev = env.events("after the flood")?;
    let n = ev.expect_faults(&fault(
        env,
        "after the flood",
        EventType::FTranslation,
        IOVA_HOLE + 0x40,
        false,
    ))?;
    ensure!(
        n == FAULT_LEN / 4,
        "after the flood: {n} records for {FAULT_LEN} bytes"
    );
    Ok(())
}

/// Translation off and on again: after `SmmuUnit::disable` (GBPA aborts) a transfer does not
/// land and records nothing; an unmap made meanwhile is still invalidated (the command queue
/// stays on); after `enable` the attached device's STE is used again: mapped IOVAs land, the
/// IOVA unmapped while disabled faults.
pub fn smmu_disable_enable(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, disable_enable)
}

fn disable_enable(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (src, d1, d2) = (env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io("map d1", env.io.map(a, iova(IOVA_DST), d1.pa(0), 4096, RW))?;
    io("map d2", env.io.map(a, iova(IOVA_HOLE), d2.pa(0), 4096, RW))?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &d1,
        0,
        iova(IOVA_DST),
        0x100,
        80,
    )?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &d2,
        0,
        iova(IOVA_HOLE),
        0x100,
        81,
    )?;
    env.unit
        .disable()
        .map_err(|e| Fail::new(format_args!("disable: {e}")))?;
    ensure!(!env.unit.is_enabled(), "unit still enabled after disable");
    d1.guard_all();
    write_iova(env.edu, iova(IOVA_DST), FAULT_LEN)?;
    // With SMMUEN = 0 and GBPA.ABORT the untranslated address (an IOVA) must not be used either.
    d1.expect_untouched()?;
    env.events("while disabled")?
        .expect_none("while disabled")?;
    io(
        "unmap d2 while disabled",
        env.io.unmap(a, iova(IOVA_HOLE), 4096),
    )?;
    env.unit
        .enable()
        .map_err(|e| Fail::new(format_args!("re-enable: {e}")))?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &d1,
        0x20,
        iova(IOVA_DST + 0x20),
        0x100,
        82,
    )?;
    d2.guard_all();
    write_iova(env.edu, iova(IOVA_HOLE + 0x20), FAULT_LEN)?;
    d2.expect_untouched()?;
    let ev = env.events("unmapped while disabled")?;
    ev.expect_faults(&fault(
        env,
        "unmapped while disabled",
        EventType::FTranslation,
        IOVA_HOLE + 0x20,
        false,
    ))?;
    Ok(())
}

/// Write-only mappings: stage 2 can express them (S2AP = 0b10): the device's read is a
/// permission fault (RnW = 1), its write lands. Stage 1 cannot (AP has no write-only encoding): the
/// map is refused and nothing is mapped, in the IOASID either.
pub fn smmu_write_only(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, write_only)
}

fn write_only(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (src, wo) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    let r = env.io.map(a, iova(IOVA_DST), wo.pa(0), 4096, Prot::WRITE);
    if !env.stage2 {
        ensure!(r.is_err(), "write-only map accepted by a stage-1 domain");
        println!("stage 1 refuses write-only: {:?}", r);
        ensure!(
            io("translate", env.io.translate(a, iova(IOVA_DST)))?.is_none(),
            "refused write-only map left a mapping in the IOASID"
        );
        return Ok(());
    }
    io("map write-only", r)?;
    // Read first: once QEMU 10.0 caches the write-only translation it no longer checks reads
    // against it (its TLB hit path checks write permission only).
    read_iova(env.edu, iova(IOVA_DST + 0x300), FAULT_LEN)?;
    let ev = env.events("read of write-only page")?;
    ev.expect_faults(&fault(
        env,
        "read of write-only page",
        EventType::FPermission,
        IOVA_DST + 0x300,
        true,
    ))?;
    wo.guard_all();
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        iova(IOVA_DST + 0x300),
        0x100,
        90,
    )?;
    wo.expect(0x300, 0x100, 90, true)?;
    env.events("write to write-only page")?
        .expect_none("write to write-only page")?;
    Ok(())
}

/// Switching a live stream between a stage-1 and a stage-2 domain (QEMU `virt`, both stages),
/// through the unit's `Iommu` trait: STE Config 0b101 <-> 0b110 with no detach in between. Each
/// switch takes effect at once (QEMU caches the STE per StreamID and the old domain's
/// translations), each domain's unmap + flush reaches QEMU's TLB under that domain's tag (a
/// stage-1 domain on a unit with stage 2 is tagged by ASID and VMID 0).
pub fn smmu_switch_stages(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, switch_stages)
}

fn switch_stages(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let unit: &dyn Iommu = env.unit;
    if !env.nested {
        return Ok(());
    }
    let (src, d1, d2) = (env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let s1 = unit_op(
        "stage-1 domain",
        unit.domain_alloc(&DomainConfig {
            stage: Stage::First,
            ..DomainConfig::default()
        }),
    )?;
    let s2 = unit_op(
        "stage-2 domain",
        unit.domain_alloc(&DomainConfig {
            stage: Stage::Second,
            min_ias: 40,
            ..DomainConfig::default()
        }),
    )?;
    for (d, buf) in [(s1, &d1), (s2, &d2)] {
        unit_op("map src", unit.map(d, iova(IOVA_SRC), src.pa(0), 4096, RO))?;
        unit_op("map dst", unit.map(d, iova(IOVA_DST), buf.pa(0), 4096, RW))?;
    }
    let sid = DeviceId(env.sid.0);
    let result = (|| {
        let write = |seed: u8| -> Result<(), Fail> {
            d1.guard_all();
            d2.guard_all();
            load_then_write(
                env.edu,
                &src,
                0,
                iova(IOVA_SRC),
                iova(IOVA_DST + 0x10),
                0x40,
                seed,
            )
        };
        unit_op("attach s1", unit.attach(sid, None, s1))?;
        write(100)?;
        d1.expect(0x10, 0x40, 100, true)?;
        d2.expect_untouched()?;
        unit_op("switch to s2", unit.attach(sid, None, s2))?;
        write(101)?;
        d2.expect(0x10, 0x40, 101, true)?;
        d1.expect_untouched()?;
        unit_op("switch to s1", unit.attach(sid, None, s1))?;
        write(102)?;
        d1.expect(0x10, 0x40, 102, true)?;
        d2.expect_untouched()?;
        env.events("switching stages")?
            .expect_none("switching stages")?;
        // The stage-1 domain's unmap reaches QEMU's TLB (entries tagged ASID + VMID 0).
        let n = unmap_flush(unit, s1, IOVA_DST, 4096)?;
        ensure!(n == 4096, "unmap removed {n:#x}");
        d1.guard_all();
        write_iova(env.edu, iova(IOVA_DST + 0x10), FAULT_LEN)?;
        d1.expect_untouched()?;
        let ev = env.events("stage-1 unmap")?;
        let mut want = fault(
            env,
            "stage-1 unmap",
            EventType::FTranslation,
            IOVA_DST + 0x10,
            false,
        );
        want.stage2 = Some(false);
        ev.expect_faults(&want)?;
        // And the stage-2 domain's, after switching back to it.
        unit_op("switch to s2 again", unit.attach(sid, None, s2))?;
        write(103)?;
        d2.expect(0x10, 0x40, 103, true)?;
        let n = unmap_flush(unit, s2, IOVA_DST, 4096)?;
        ensure!(n == 4096, "unmap removed {n:#x}");
        d2.guard_all();
        write_iova(env.edu, iova(IOVA_DST + 0x10), FAULT_LEN)?;
        d2.expect_untouched()?;
        let ev = env.events("stage-2 unmap")?;
        let mut want = fault(
            env,
            "stage-2 unmap",
            EventType::FTranslation,
            IOVA_DST + 0x10,
            false,
        );
        want.stage2 = Some(true);
        ev.expect_faults(&want)?;
        Ok(())
    })();
    let detach = unit_op("detach", unit.detach(sid, None));
    let f1 = unit_op("free s1", unit.domain_free(s1));
    let f2 = unit_op("free s2", unit.domain_free(s2));
    result.and(detach).and(f1).and(f2)
}

/// The edges of the input range: IOVA 0 and the last page below the domain's input size
/// (44 bits at stage 2 on QEMU, whose OAS is 44: a 4-level walk from level 0; 48 bits at stage
/// 1: T0SZ = 16) both translate; mapping at the input size itself is refused and a transfer
/// there does not land.
pub fn smmu_ias_edges(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, ias_edges)
}

fn ias_edges(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let caps = io("device_info", env.io.device_info(env.dev))?.capabilities;
    let ias = caps.ias;
    let want = if env.stage2 { 44 } else { 48 };
    ensure!(ias == want, "domain input size {ias}, expected {want}");
    let (src, top, low) = (env.buf(12)?, env.buf(12)?, env.buf(12)?);
    let top_iova = (1u64 << ias) - 4096;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io(
        "map top",
        env.io.map(a, iova(top_iova), top.pa(0), 4096, RW),
    )?;
    io("map 0", env.io.map(a, iova(0), low.pa(0), 4096, RW))?;
    ensure!(
        env.io
            .map(a, iova(1u64 << ias), src.pa(0), 4096, RW)
            .is_err(),
        "a map at 2^{ias} was accepted"
    );
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &top,
        0xf00,
        iova(top_iova + 0xf00),
        0x100,
        110,
    )?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &low,
        0,
        iova(0),
        0x100,
        111,
    )?;
    env.events("edges")?.expect_none("edges")?;
    top.guard_all();
    low.guard_all();
    write_iova(env.edu, iova(1u64 << ias), FAULT_LEN)?;
    top.expect_untouched()?;
    low.expect_untouched()?;
    // Stage 1 records a translation fault (outside T0SZ); stage 2 alone an address size
    // fault of stage 1, which QEMU records only with CD.R, so maybe nothing.
    let ev = env.events("beyond the input size")?;
    ev.print("beyond the input size");
    if !env.stage2 {
        ev.expect_faults(&fault(
            env,
            "beyond the input size",
            EventType::FTranslation,
            1u64 << ias,
            false,
        ))?;
    }
    Ok(())
}

/// What QEMU's SMMUv3 lacks is refused at attach with `Incompatible` naming it, and a refusal
/// changes nothing (no page frame kept, the device still attached where it was, its DMA still
/// landing there): `DIRTY_TRACKING` (no `IDR0.HTTU`), and `NEST_PARENT` on a single-stage unit.
pub fn smmu_refusals(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, refusals)
}

fn refusals(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let caps = io("device_info", env.io.device_info(env.dev))?.capabilities;
    ensure!(!caps.dirty_tracking, "QEMU has no HTTU, unit says {caps:?}");
    ensure!(
        caps.pasid_bits == 0,
        "QEMU has no SubstreamIDs, unit says {caps:?}"
    );
    ensure!(
        caps.nesting == env.nested,
        "nesting {} on this machine",
        caps.nesting
    );
    let (src, d1) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc a", env.io.alloc(IoasidFlags::empty()))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io("map dst", env.io.map(a, iova(IOVA_DST), d1.pa(0), 4096, RW))?;
    io("attach a", env.io.attach(env.dev, a))?;
    let mut cases: [(IoasidFlags, Option<Missing>); 2] = [
        (IoasidFlags::DIRTY_TRACKING, Some(Missing::DirtyTracking)),
        (IoasidFlags::NEST_PARENT, None),
    ];
    if !env.nested {
        cases[1].1 = Some(Missing::Nesting);
    }
    for (flags, missing) in cases {
        let Some(missing) = missing else { continue };
        let x = io("alloc", env.io.alloc(flags))?;
        io("map x", env.io.map(x, iova(IOVA_DST), src.pa(0), 4096, RW))?;
        let frames = env.alloc.live_frames();
        match env.io.attach(env.dev, x) {
            Err(IoError::Incompatible {
                device,
                reason: Incompatibility::Missing(m),
            }) if device == env.dev && m == missing => {}
            other => crate::bail!("attach to a {flags:?} IOASID: {other:?}, expected {missing:?}"),
        }
        ensure!(
            env.alloc.live_frames() == frames,
            "refused {flags:?} attach kept page frames"
        );
        d1.guard_all();
        load_then_write(
            env.edu,
            &src,
            0,
            iova(IOVA_SRC),
            iova(IOVA_DST + 0x20),
            0x40,
            120,
        )?;
        d1.expect(0x20, 0x40, 120, true)?;
        io("free x", env.io.free(x))?;
    }
    env.events("refusals")?.expect_none("refusals")?;
    Ok(())
}

/// [`smmu_dma_4k`] with `SmmuConfig::default()`: the configuration a kernel gets without
/// choosing (two-level stream table, default queue sizes).
pub fn smmu_dma_4k_default(ctx: &mut Ctx) -> Result<(), Fail> {
    run(ctx, StreamTableFormat::Default, dma_4k)
}

/// `DisabledTraffic::Bypass`: while the unit is disabled a transfer uses its address as a
/// physical address (GBPA.ABORT = 0, written with GBPA.UPDATE); enabled again, the IOVA
/// translates and the physical address no longer does.
pub fn smmu_bypass_when_disabled(ctx: &mut Ctx) -> Result<(), Fail> {
    run(ctx, StreamTableFormat::LinearBypass, bypass_when_disabled)
}

fn bypass_when_disabled(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let (src, dst) = (env.buf(12)?, env.buf(12)?);
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_SRC), src.pa(0), 4096, RO),
    )?;
    io(
        "map dst",
        env.io.map(a, iova(IOVA_DST), dst.pa(0), 4096, RW),
    )?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &dst,
        0x10,
        iova(IOVA_DST + 0x10),
        0x80,
        130,
    )?;
    env.unit
        .disable()
        .map_err(|e| Fail::new(format_args!("disable: {e}")))?;
    // Physical addresses now.
    roundtrip(
        env.edu,
        &src,
        0,
        iova(src.pa(0).get()),
        &dst,
        0x20,
        iova(dst.pa(0x20).get()),
        0x80,
        131,
    )?;
    env.events("bypassed")?.expect_none("bypassed")?;
    env.unit
        .enable()
        .map_err(|e| Fail::new(format_args!("re-enable: {e}")))?;
    roundtrip(
        env.edu,
        &src,
        0,
        iova(IOVA_SRC),
        &dst,
        0x30,
        iova(IOVA_DST + 0x30),
        0x80,
        132,
    )?;
    // The physical address is not mapped in the domain: it faults again.
    dst.guard_all();
    write_iova(env.edu, iova(dst.pa(0x40).get()), FAULT_LEN)?;
    dst.expect_untouched()?;
    let ev = env.events("physical address after enable")?;
    ev.expect_faults(&fault(
        env,
        "physical address after enable",
        EventType::FTranslation,
        dst.pa(0x40).get(),
        false,
    ))?;
    Ok(())
}

// -----------------------------------------------------------------------------------------------
// 16 KiB and 64 KiB granules (issue 15, item 6): the embedder's `SmmuConfig::granule_log2`.

use crate::smmu_env::run_granule;

/// Page IOVAs of the granule scenarios (aligned to 64 KiB, below 2^39).
const IOVA_G_PAGES: u64 = 0x12_0000_0000;
/// Block IOVA of the granule scenarios: aligned to 512 MiB (the 64K granule's level-2 block).
const IOVA_G_BLOCK: u64 = 0x24_0000_0000;

/// [`granule_blocks`] on a unit configured with the 16 KiB granule: 16 KiB pages, a 32 MiB
/// level-2 block.
pub fn smmu_granule_16k(ctx: &mut Ctx) -> Result<(), Fail> {
    run_granule(ctx, StreamTableFormat::Linear, 14, granule_blocks)
}

/// [`granule_blocks`] on a unit configured with the 64 KiB granule: 64 KiB pages, a 512 MiB
/// level-2 block (over all of guest RAM: 0x4000_0000-0x6000_0000).
pub fn smmu_granule_64k(ctx: &mut Ctx) -> Result<(), Fail> {
    run_granule(ctx, StreamTableFormat::Linear, 16, granule_blocks)
}

/// Pages and a level-2 block of the unit's granule `G` (16K: 32 MiB, 64K: 512 MiB; one level-3
/// table's worth of pages), on whichever stage the unit uses:
/// - two IOVA pages mapped to physical pages in reverse order: a transfer across the IOVA page
///   boundary at `G - 0x300` lands split exactly there (so the leaves are `G` bytes, not 4 KiB),
///   every byte of both pages checked;
/// - the block covering an arena buffer: the IOASID reports a block leaf, DMA through it lands at
///   the block's physical address plus the offset, byte for byte;
/// - the IOVA right after the block, and the unmapped page between two mapped ones, fault with a
///   translation event (StreamID, address, direction, stage);
/// - unmapping one `G` page of the block after QEMU cached it splits the block: that page
///   faults, the next one still lands.
fn granule_blocks(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let g = env.granule_log2;
    let gran = 1u64 << g;
    let gsz = gran as usize;
    let block_log2 = g + (g - 3);
    let block = 1u64 << block_log2;
    let src = env.buf(g)?;
    let (lo, hi) = (env.buf(g)?, env.buf(g)?);
    let dst = env.buf(g + 1)?; // two pages inside the block: the first is unmapped later
    println!(
        "granule {gran:#x}: pages at {IOVA_G_PAGES:#x}, a {block:#x} block at {IOVA_G_BLOCK:#x}"
    );
    granule_leaves(env, g, block_log2)?;
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    io(
        "map src",
        env.io.map(a, iova(IOVA_G_PAGES), src.pa(0), gran, RO),
    )?;
    // IOVA_G_PAGES + G stays unmapped; + 2G -> hi, + 3G -> lo.
    let dst_iova = IOVA_G_PAGES + 2 * gran;
    io("map dst", env.io.map(a, iova(dst_iova), hi.pa(0), gran, RW))?;
    io(
        "map dst+G",
        env.io.map(a, iova(dst_iova + gran), lo.pa(0), gran, RW),
    )?;
    match io("translate page", env.io.translate(a, iova(dst_iova + 0x10)))? {
        Some(m) if m.pa == hi.pa(0x10) => {}
        other => crate::bail!("IOASID says {other:x?} for a {gran:#x} page"),
    }
    // Inside one page, beyond its first 4 KiB.
    roundtrip(
        env.edu,
        &src,
        gsz - 0xa00,
        iova(IOVA_G_PAGES + gran - 0xa00),
        &hi,
        gsz - 0x1234,
        iova(dst_iova + gran - 0x1234),
        0x9a7,
        60,
    )?;
    // Across the IOVA page boundary.
    let (off, len) = (gsz - 0x300, 0x800usize);
    src.fill(0, len, 61);
    hi.guard_all();
    lo.guard_all();
    read_iova(env.edu, iova(IOVA_G_PAGES), len)?;
    write_iova(env.edu, iova(dst_iova + off as u64), len)?;
    let first = gsz - off;
    for i in 0..gsz {
        let want_hi = if i >= off {
            pattern(61, i - off)
        } else {
            GUARD
        };
        let want_lo = if i < len - first {
            pattern(61, first + i)
        } else {
            GUARD
        };
        let (got_hi, got_lo) = (hi.get(i), lo.get(i));
        ensure!(
            got_hi == want_hi && got_lo == want_lo,
            "byte {i:#x}: page at IOVA {dst_iova:#x} {got_hi:#04x} (want {want_hi:#04x}), at +G {got_lo:#04x} (want {want_lo:#04x})"
        );
    }
    env.events("page transfers")?
        .expect_none("page transfers")?;

    // The block covering `dst`.
    let block_pa = dst.pa(0).get() & !(block - 1);
    ensure!(
        block_pa >= RAM_BASE,
        "block at {block_pa:#x} below guest RAM"
    );
    let at = |b: &DmaBuf<'_>, off: usize| iova(IOVA_G_BLOCK + (b.pa(off).get() - block_pa));
    io(
        "map block",
        env.io
            .map(a, iova(IOVA_G_BLOCK), PhysAddr::new(block_pa), block, RW),
    )?;
    match io("translate block", env.io.translate(a, at(&dst, 0x10)))? {
        Some(m) if m.pa == dst.pa(0x10) => {}
        other => crate::bail!("IOASID says {other:x?} for the {block:#x} block"),
    }
    // Across the two destination pages, through the block.
    roundtrip(
        env.edu,
        &src,
        0x10,
        iova(IOVA_G_PAGES + 0x10),
        &dst,
        gsz - 0x200,
        at(&dst, gsz - 0x200),
        0x400,
        62,
    )?;
    env.events("block transfer")?
        .expect_none("block transfer")?;

    // Unmapped: right after the block (write), the page between src and dst (read).
    let past = IOVA_G_BLOCK + block + 0x40;
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_G_PAGES),
        iova(past),
        FAULT_LEN,
        63,
    )?;
    let ev = env.events("write after the block")?;
    ev.print("write after the block");
    ev.expect_faults(&fault(
        env,
        "write after the block",
        EventType::FTranslation,
        past,
        false,
    ))?;
    let gap = IOVA_G_PAGES + gran + 0x80;
    read_iova(env.edu, iova(gap), FAULT_LEN)?;
    let ev = env.events("read between pages")?;
    ev.expect_faults(&fault(
        env,
        "read between pages",
        EventType::FTranslation,
        gap,
        true,
    ))?;

    // One page of the block unmapped after QEMU cached the block: split to pages.
    let n = io(
        "unmap a page of the block",
        env.io.unmap(a, at(&dst, 0), gran),
    )?;
    ensure!(
        n == gran,
        "unmap of one page inside the block removed {n:#x}"
    );
    match io("translate split", env.io.translate(a, at(&dst, gsz + 0x10)))? {
        Some(m) if m.pa == dst.pa(gsz + 0x10) => {}
        other => crate::bail!("after the split the IOASID says {other:x?}"),
    }
    dst.guard_all();
    let hole = at(&dst, gsz - 0x80).get();
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_G_PAGES),
        iova(hole),
        FAULT_LEN,
        64,
    )?;
    let ev = env.events("write into the hole")?;
    ev.expect_faults(&fault(
        env,
        "write into the hole",
        EventType::FTranslation,
        hole,
        false,
    ))?;
    dst.expect_untouched()?;
    load_then_write(
        env.edu,
        &src,
        0,
        iova(IOVA_G_PAGES),
        at(&dst, gsz + 0x80),
        0x100,
        65,
    )?;
    dst.expect(gsz + 0x80, 0x100, 65, true)?;
    env.events("after the split")?
        .expect_none("after the split")?;
    Ok(())
}

/// The unit's own domains (below the IOASID layer, whose record keeps its own page size) use
/// the configured granule: a page mapping is one `2^g` leaf, an aligned `2^block_log2` mapping
/// one block leaf, the reported geometry has `2^g` pages.
fn granule_leaves(env: &Env<'_, '_, '_>, g: u32, block_log2: u32) -> Result<(), Fail> {
    let unit: &dyn Iommu = env.unit;
    let d = unit_op("domain", unit.domain_alloc(&DomainConfig::default()))?;
    let r = (|| {
        let (_, pages) = unit_op("geometry", unit.domain_geometry(d))?;
        ensure!(
            pages & (1 << g) != 0 && pages & ((1 << g) - 1) == 0,
            "domain page sizes {pages:#x} for the granule 2^{g}"
        );
        ensure!(
            pages & (1 << block_log2) != 0,
            "domain page sizes {pages:#x} without the 2^{block_log2} block"
        );
        let pa = PhysAddr::new(RAM_BASE);
        unit_op("map page", unit.map(d, iova(IOVA_G_PAGES), pa, 1 << g, RW))?;
        unit_op(
            "map block",
            unit.map(d, iova(IOVA_G_BLOCK), pa, 1 << block_log2, RW),
        )?;
        for (at, want) in [(IOVA_G_PAGES + 0x10, g), (IOVA_G_BLOCK + 0x10, block_log2)] {
            match unit.query(d, iova(at)) {
                Some(m) if m.size_log2 == want && m.pa == PhysAddr::new(RAM_BASE + 0x10) => {}
                other => crate::bail!(
                    "the unit's domain says {other:x?} at {at:#x}, expected a 2^{want} leaf"
                ),
            }
        }
        unmap_flush(unit, d, IOVA_G_PAGES, 1 << g)?;
        unmap_flush(unit, d, IOVA_G_BLOCK, 1 << block_log2)?;
        Ok(())
    })();
    let free = unit_op("free", unit.domain_free(d));
    r.and(free)
}

// -----------------------------------------------------------------------------------------------
// Nested translation from the IOASID layer: a child IOASID holding the guest's stage 1.

use iommu_engine::ioasid::IoasidId;
use iommu_engine::iommu::{Refusal, UserStage1};

/// Guest physical addresses of the guest's pages (its CD table, stage-1 tables, data): far from
/// RAM, so only the parent's stage 2 makes them reach it.
const GPA_BASE: u64 = 0x7_4000_0000;
/// The guest's IOVAs: one level-3 table holds both (T0SZ 25, start level 1).
const GIOVA_SRC: u64 = 0x12_3456_0000;
const GIOVA_DST: u64 = 0x12_3457_0000;
/// The guest's ASID and its StreamID for edu (iommufd vDEVICE virt_id).
const GUEST_ASID: u64 = 9;
const GUEST_SID: u32 = 0x3;

/// The guest writes a 64-bit word of its memory (little-endian, byte by byte: volatile).
fn guest_write(page: &DmaBuf<'_>, offset: u64, value: u64) {
    for (i, b) in value.to_le_bytes().into_iter().enumerate() {
        page.set(offset as usize + i, b);
    }
}

/// The guest's stage-1 leaf for `iova` in its level-3 table: `gpa`, AttrIndx 0 (MAIR
/// write-back), EL0 access, read-only when `ro`, SH inner, AF, nG (Arm ARM D8).
fn guest_leaf(l3: &DmaBuf<'_>, iova: u64, gpa: u64, ro: bool) {
    let ap2 = if ro { 1 << 7 } else { 0 };
    let desc = gpa | 3 | 1 << 6 | ap2 | 3 << 8 | 1 << 10 | 1 << 11;
    guest_write(l3, ((iova >> 12) & 0x1ff) * 8, desc);
}

/// A nested child IOASID on `virt`'s SMMUv3 (stage=nested), through the IOASID layer as a VMM
/// drives iommufd: the guest's CD table, stage-1 tables and data live in guest pages the
/// NEST_PARENT IOASID maps at GPAs; the child holds the guest's STE words (S1ContextPtr = the
/// CD table's GPA). edu's transfers go through both stages; the guest moves a page in its own
/// table and QEMU keeps using its cached translation until the guest's TLBI_NH_VA, passed
/// through `invalidate_user` with the parent's VMID put in, reaches it; commands naming a
/// VMID, another StreamID or stage 2 are refused before anything reaches the queue.
pub fn smmu_nested_user(ctx: &mut Ctx) -> Result<(), Fail> {
    // No IDR3.FWB on QEMU: a guest's stage 1 needs the device's CANWBS.
    run(ctx, StreamTableFormat::LinearCanwbs, nested_user)
}

fn nested_user(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    ensure!(
        env.nested,
        "this row needs both stages (virt, stage=nested)"
    );
    // Guest pages: 0 CD table, 1-3 stage-1 levels 1-3, 4 source, 5 and 6 destinations.
    let pages = [
        env.buf(12)?,
        env.buf(12)?,
        env.buf(12)?,
        env.buf(12)?,
        env.buf(12)?,
        env.buf(12)?,
        env.buf(12)?,
    ];
    let gpa = |n: usize| GPA_BASE + 0x1000 * n as u64;
    let parent = io("NEST_PARENT", env.io.alloc(IoasidFlags::NEST_PARENT))?;
    let r = nested_user_in(env, parent, &pages, gpa);
    let freed = io("free parent", env.io.free(parent));
    r.and(freed)
}

fn nested_user_in(
    env: &Env<'_, '_, '_>,
    parent: IoasidId,
    pages: &[DmaBuf<'static>; 7],
    gpa: impl Fn(usize) -> u64,
) -> Result<(), Fail> {
    let [cd, l1, l2, l3, src, d1, d2] = pages;
    for (n, p) in pages.iter().enumerate() {
        io(
            "map guest RAM",
            env.io.map(parent, iova(gpa(n)), p.pa(0), 4096, RW),
        )?;
    }
    // The guest's tables (IHI 0070 G.b §5.4 CD; Arm ARM D8 stage 1, 4K granule, T0SZ 25).
    guest_write(l1, ((GIOVA_SRC >> 30) & 0x1ff) * 8, gpa(2) | 3);
    guest_write(l2, ((GIOVA_SRC >> 21) & 0x1ff) * 8, gpa(3) | 3);
    guest_leaf(l3, GIOVA_SRC, gpa(4), true);
    guest_leaf(l3, GIOVA_DST, gpa(5), false);
    // CD: T0SZ 25, TG0 4K, IR0/OR0 WB, SH0 inner, EPD1, V, IPS 40 bits, AA64, R, A, ASID.
    let cd0 = 25
        | 1 << 8
        | 1 << 10
        | 3 << 12
        | 1 << 30
        | 1 << 31
        | 2 << 32
        | 1 << 41
        | 1 << 45
        | 1 << 46
        | GUEST_ASID << 48;
    guest_write(cd, 8, gpa(1));
    guest_write(cd, 24, 0xff);
    guest_write(cd, 0, cd0);
    // The guest's STE: V, Config = stage-1 translate, one CD at gpa(0), CD fetches WB inner.
    let stage1 = UserStage1::SmmuV3 {
        ste: [1 | 0b101 << 1 | gpa(0), 1 << 2 | 1 << 4 | 3 << 6],
    };
    let child = io("alloc_nested", env.io.alloc_nested(parent, stage1))?;
    io(
        "virtual id",
        env.io.set_virtual_id(env.dev, Some(GUEST_SID)),
    )?;
    io("attach child", env.io.attach(env.dev, child))?;
    let r = nested_user_dma(env, child, [l3, src, d1, d2], gpa(6));
    let detached = io("detach", env.io.detach(env.dev));
    let freed = io("free child", env.io.free(child));
    r.and(detached).and(freed)
}

fn nested_user_dma(
    env: &Env<'_, '_, '_>,
    child: IoasidId,
    [l3, src, d1, d2]: [&DmaBuf<'static>; 4],
    gpa_d2: u64,
) -> Result<(), Fail> {
    // Through both stages: guest IOVA -> GPA (the guest's table) -> PA (the parent).
    roundtrip(
        env.edu,
        src,
        0x80,
        iova(GIOVA_SRC + 0x80),
        d1,
        0x100,
        iova(GIOVA_DST + 0x100),
        0x200,
        51,
    )?;
    env.events("nested child transfers")?
        .expect_none("nested child transfers")?;
    // The guest moves GIOVA_DST to its page 6; QEMU still translates from its TLB.
    guest_leaf(l3, GIOVA_DST, gpa_d2, false);
    d2.guard_all();
    roundtrip(
        env.edu,
        src,
        0x80,
        iova(GIOVA_SRC + 0x80),
        d1,
        0x100,
        iova(GIOVA_DST + 0x100),
        0x200,
        52,
    )?;
    d2.expect_untouched()?;
    // Refused, each naming what the guest does not own; nothing reaches the queue.
    let tlbi_va = |vmid: u64| [0x12 | vmid << 32 | GUEST_ASID << 48, GIOVA_DST | 1];
    let foreign_cfgi = [0x06 | u64::from(GUEST_SID + 1) << 32, 0];
    let s12_vmall = [0x28, 0];
    let before = env.cmdq_prod();
    for (batch, index, why) in [
        (&[tlbi_va(0), tlbi_va(4)][..], 1, Refusal::Vmid),
        (&[tlbi_va(0), foreign_cfgi][..], 1, Refusal::ForeignDevice),
        (&[s12_vmall][..], 0, Refusal::Type),
    ] {
        match env.io.invalidate_user(child, batch) {
            Err(IoError::Iommu(iommu_engine::iommu::Error::Refused {
                index: i,
                request,
                why: w,
            })) if i == index && request == batch[index as usize] && w == why => {}
            other => crate::bail!("guest batch {batch:x?}: {other:?}, expected {why:?} at {index}"),
        }
    }
    let after = env.cmdq_prod();
    ensure!(
        env.commands_between(before, after) == 0,
        "refused batches issued {} command(s)",
        env.commands_between(before, after)
    );
    // The guest's TLBI_NH_VA (VMID 0, its ASID), with the parent's VMID put in: one command
    // and the host's CMD_SYNC.
    let n = io(
        "invalidate_user",
        env.io.invalidate_user(child, &[tlbi_va(0)]),
    )?;
    let issued = env.commands_between(after, env.cmdq_prod());
    ensure!(
        n == 1 && issued == 2,
        "{n} request(s), {issued} command(s) issued"
    );
    d1.guard_all();
    roundtrip(
        env.edu,
        src,
        0x80,
        iova(GIOVA_SRC + 0x80),
        d2,
        0x100,
        iova(GIOVA_DST + 0x100),
        0x200,
        53,
    )?;
    d1.expect_untouched()?;
    env.events("after the guest's invalidation")?
        .expect_none("after the guest's invalidation")
}
