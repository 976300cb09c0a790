//! AMD-Vi DMA scenarios on QEMU's `amd-iommu` (numbers 300-399).
//!
//! Every scenario drives the crate as a kernel would: the unit found where the platform says
//! (ACPI IVRS, `firmware.rs`; QEMU's 0xFED8_0000, its device table sized by the IVRS), an
//! [`AmdViUnit`] created and enabled, a `Registry` and an `IoasidCtx`, `edu` bound by the
//! device ID its IVRS entry gives (00:04.0 = 0x20),
//! IOASIDs allocated, attached, mapped, DMA made, unmapped; at the end the context is dropped,
//! the unit disabled and released, and every page must be back in the allocator. Events are
//! read with the crate's own event-log drain ([`AmdViUnit::drain_events`]).
//!
//! What QEMU 10.0's model does (read from `hw/i386/amd_iommu.c`, measured here; see
//! tests/qemu/README.md): it translates only with `pt=off` (with the default `pt=on` every
//! device's DMA passes untranslated whatever its DTE); it writes **no event** to the log (its
//! `amdvi_test_mask` ORs instead of ANDs, so the overflow test always stops the logging:
//! fixed after 10.0), so a refused DMA is seen only as data that did not move; a DMA through a
//! zero PTE, a read-only leaf or a blocking DTE is refused; its IOTLB is keyed by device ID and
//! 4 KiB page, looked up before the DTE, and emptied per domain ID by INVALIDATE_IOMMU_PAGES
//! (whatever the range) or wholly by INVALIDATE_IOMMU_ALL; INVALIDATE_DEVTAB_ENTRY does nothing
//! (no DTE cache).

use core::fmt::Display;
use core::ptr::NonNull;

use iommu_engine::amdvi::cmd::{Command, InvalidationRange};
use iommu_engine::amdvi::dte::{self, DeviceTableEntry};
use iommu_engine::amdvi::efr::EfrFlags;
use iommu_engine::amdvi::event::{Event, EventCode};
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::{
    DeviceHandle, DeviceLabel, IoasidCtx, IoasidFlags, IoasidId, Registry, UnitId,
};
use iommu_engine::iommu::{DeviceId, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::mmio::Mmio;
use iommu_engine::pgtable::{Gather, Prot};

use crate::alloc::PageArena;
use crate::dma_check::{self, roundtrip, Buf, GUARD};
use crate::edu::Edu;
use crate::scenario::{Ctx, Fail, Scenario};
use crate::{bail, ensure, println};

/// The unit type the scenarios use.
pub type Unit = AmdViUnit<Mmio, &'static PageArena>;

/// The AMD-Vi scenarios; `main.rs` looks numbers 300-399 up here.
pub static AMDVI_TABLE: &[Scenario] = &[
    Scenario {
        id: 300,
        name: "amdvi_dma_4k",
        run: dma_4k,
    },
    Scenario {
        id: 301,
        name: "amdvi_dma_2m",
        run: dma_2m,
    },
    Scenario {
        id: 302,
        name: "amdvi_dma_1g",
        run: dma_1g,
    },
    Scenario {
        id: 303,
        name: "amdvi_fault_events",
        run: fault_events,
    },
    Scenario {
        id: 304,
        name: "amdvi_unmap_flush",
        run: unmap_flush,
    },
    Scenario {
        id: 305,
        name: "amdvi_force_coherent",
        run: force_coherent,
    },
    Scenario {
        id: 306,
        name: "amdvi_two_devices",
        run: two_devices,
    },
    Scenario {
        id: 307,
        name: "amdvi_detach",
        run: detach,
    },
    Scenario {
        id: 308,
        name: "amdvi_disable",
        run: disable,
    },
    Scenario {
        id: 309,
        name: "amdvi_reattach_replaces",
        run: reattach_replaces,
    },
];

/// Low IOVAs (below 4 GiB, far from any guest PA, outside the interrupt window).
const IOVA_A: u64 = 0x7654_3000;
const IOVA_B: u64 = 0x7655_8000;
/// 2 MiB-aligned IOVA for the large-page scenario.
const IOVA_2M: u64 = 0x4060_0000;
/// 1 GiB-aligned IOVA (above 4 GiB: the 3-4 GiB gigabyte holds the interrupt window).
const IOVA_1G: u64 = 1 << 32;
/// Length of a round trip (inside one page, not page-aligned on purpose).
const LEN: usize = 3000;
/// FC (force coherent), bit 60 of a v1 PTE (48882 §2.2.3, Figure "I/O Page Table Entry").
const PTE_FC: u64 = 1 << 60;

/// Turns any displayable error into a scenario failure, saying what was being done.
trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, Fail>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail::new(format_args!("{what}: {e}")))
    }
}

/// The device ID the unit sees for the `edu` at `bdf`, from the IVRS entry that names it; it
/// must be under the unit the scenarios drive.
fn device_id(g: &Ctx, bdf: (u8, u8, u8)) -> Result<u16, Fail> {
    let (id, unit) = crate::firmware::amdvi_unit(bdf)?;
    ensure!(
        unit.register_base.get() == g.arch.amdvi_base as u64,
        "{bdf:?} is under the unit at {:#x}",
        unit.register_base.get()
    );
    Ok(id)
}

/// Every handle a unit with the default number of domains can give out.
fn handles() -> impl Iterator<Item = DomainHandle> {
    (0..iommu_engine::amdvi::unit::DEFAULT_DOMAINS as u16).map(DomainHandle)
}

/// The events a drain returned (at most 16 kept; the rest only counted).
struct Events {
    list: [Option<Event>; 16],
    n: usize,
}

impl Events {
    fn iter(&self) -> impl Iterator<Item = &Event> {
        self.list.iter().flatten()
    }
}

/// Consumes every logged event.
fn drain(unit: &Unit) -> Result<Events, Fail> {
    let mut ev = Events {
        list: [None; 16],
        n: 0,
    };
    let summary = unit
        .drain_events(|e| {
            if let Some(slot) = ev.list.get_mut(ev.n) {
                *slot = Some(e);
            }
            ev.n += 1;
        })
        .or_fail("drain the event log")?;
    for e in ev.iter() {
        println!(
            "event {:?} device {:#06x} flags {:#05x} domain/pasid {:#x} address {:#x} raw {:#018x} {:#018x}",
            e.code, e.device_id, e.flags.bits(), e.domain_or_pasid, e.address, e.raw[0], e.raw[1]
        );
    }
    if summary.overflow {
        println!("event log overflowed: {summary:?}");
    }
    Ok(ev)
}

/// `EventLogTail` as the unit reports it.
fn event_log_tail(unit: &Unit) -> u64 {
    use iommu_engine::mmio::RegisterWindow;
    unit.regs().read64(iommu_engine::amdvi::regs::EVENT_LOG_TAIL)
}

/// The unit's register window.
pub fn regs(base: usize) -> Result<Mmio, Fail> {
    let Some(p) = NonNull::new(base as *mut u8) else {
        bail!("no AMD-Vi unit (base 0)");
    };
    // SAFETY: the AMD-Vi window (found through the IVRS, 16 KiB) lies in 2-4 GiB, which boot.rs
    // maps uncached; the unit is the only driver of its registers.
    Ok(unsafe { Mmio::new(p, iommu_engine::amdvi::regs::WINDOW_LEN) })
}

/// Creates the unit at the platform's base, its device table sized by the IVRS, and enables
/// it.
pub fn create(g: &Ctx) -> Result<Unit, Fail> {
    let regs = regs(g.arch.amdvi_base)?;
    let defaults = crate::firmware::amdvi_defaults(g.arch.amdvi_base)?;
    let config = defaults.apply(AmdViConfig::new());
    let unit = match Unit::new(regs, g.alloc, config) {
        Ok(u) => u,
        Err(e) => bail!("AmdViUnit::new ({config:?}): {e}"),
    };
    println!(
        "AMD-Vi at {:#x}: EFR {:#018x} ({:?}), {} host levels, {} device IDs",
        g.arch.amdvi_base,
        unit.info().efr.0,
        unit.info().efr.flags(),
        unit.info().host_levels,
        unit.device_ids()
    );
    if let Some(image) = defaults.efr_image {
        ensure!(
            image == unit.info().efr.0,
            "the IVRS's EFR image {image:#x} is not the register's {:#x}",
            unit.info().efr.0
        );
    }
    unit.enable().or_fail("AmdViUnit::enable")?;
    Ok(unit)
}

/// Turns translation off and releases the unit: every page it took goes back.
pub fn destroy(unit: Unit) -> Result<(), Fail> {
    unit.disable().or_fail("AmdViUnit::disable")?;
    match unit.release() {
        Ok(()) => Ok(()),
        Err((_unit, e)) => bail!("AmdViUnit::release: {e}"),
    }
}

/// What a scenario holds once the unit is up and `edu` is bound.
struct Amd<'c, 'r, 'a> {
    unit: &'a Unit,
    ctx: &'c IoasidCtx<'r, 'a, PageArena>,
    dev: DeviceHandle,
    edu: &'a Edu,
    edu_id: u16,
    g: &'a Ctx,
}

/// Brings the unit up, binds `edu`, runs `f`, tears everything down (context first, then the
/// unit) and checks that every page came back and that no event was left unread.
fn with_amd(g: &mut Ctx, f: impl FnOnce(&Amd<'_, '_, '_>) -> Result<(), Fail>) -> Result<(), Fail> {
    let g: &Ctx = g;
    let edu = g.edu()?;
    let edu_id = device_id(g, edu.bdf)?;
    let live_before = g.alloc.live_frames();
    let unit = create(g)?;
    {
        let units: [&dyn Iommu; 1] = [&unit];
        let registry = Registry::new(&units, &crate::vtd_scenarios::PASIDS).or_fail("registry")?;
        let ctx = IoasidCtx::new(&registry, g.alloc, 0);
        let dev = ctx
            .bind(
                DeviceLabel {
                    unit: UnitId(0),
                    id: DeviceId(u32::from(edu_id)),
                },
                false,
            )
            .or_fail("bind edu")?;
        let v = Amd {
            unit: &unit,
            ctx: &ctx,
            dev,
            edu,
            edu_id,
            g,
        };
        f(&v)?;
        let left = drain(&unit)?;
        ensure!(left.n == 0, "{} event(s) nobody expected", left.n);
    }
    if let Some(h) = handles().find(|&h| unit.domain_geometry(h).is_ok()) {
        bail!(
            "domain {} still allocated after the IOASID context was dropped",
            h.0
        );
    }
    destroy(unit)?;
    let leaked = g.alloc.live_frames().saturating_sub(live_before);
    ensure!(
        leaked == 0,
        "{leaked} page frame(s) not returned after teardown"
    );
    Ok(())
}

impl Amd<'_, '_, '_> {
    fn alloc(&self, flags: IoasidFlags) -> Result<IoasidId, Fail> {
        self.ctx.alloc(flags).or_fail("alloc IOASID")
    }

    fn attach(&self, io: IoasidId) -> Result<(), Fail> {
        self.ctx.attach(self.dev, io).or_fail("attach edu")
    }

    fn map(&self, io: IoasidId, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Fail> {
        println!("map {iova:#x} -> {pa:#x} +{len:#x} {prot:?}");
        self.ctx
            .map(io, Iova::new(iova), PhysAddr::new(pa), len, prot)
            .or_fail("map")
    }

    fn unmap(&self, io: IoasidId, iova: u64, len: u64) -> Result<(), Fail> {
        let n = self.ctx.unmap(io, Iova::new(iova), len).or_fail("unmap")?;
        ensure!(
            n == len,
            "unmap of {len:#x} bytes at {iova:#x} removed {n:#x}"
        );
        Ok(())
    }

    fn buf(&self) -> Result<Buf, Fail> {
        Buf::new(self.g)
    }

    /// A write DMA by `edu` to `iova` must not land in `victim` (QEMU refuses it; with a zero
    /// PTE or a read-only leaf it logs nothing, see the module).
    fn write_blocked(&self, edu: &Edu, when: &str, iova: u64, victim: &Buf) -> Result<(), Fail> {
        victim.fill(GUARD);
        dma_check::from_device(edu, iova, 64)?;
        victim.check_all(when, GUARD)?;
        let ev = drain(self.unit)?;
        ensure!(
            ev.n == 0,
            "{when}: {} event(s) (QEMU 10.0 logs none for a zero PTE or a blocking DTE)",
            ev.n
        );
        Ok(())
    }

    /// The leaf size, in log2 bytes, the unit's table holds at `iova`.
    fn leaf_size(&self, iova: u64) -> Option<u32> {
        handles().find_map(|d| {
            self.unit.domain_geometry(d).ok()?;
            self.unit.query(d, Iova::new(iova)).map(|m| m.size_log2)
        })
    }

    /// The unit's only live domain.
    fn only_domain(&self) -> Result<DomainHandle, Fail> {
        let mut found = None;
        for h in handles() {
            if self.unit.domain_geometry(h).is_ok() {
                ensure!(found.is_none(), "more than one live domain");
                found = Some(h);
            }
        }
        found.ok_or_else(|| Fail::new(format_args!("no live domain")))
    }

    /// The live DTE of `device` as the unit reads it.
    fn dte(&self, device: u16) -> Result<DeviceTableEntry, Fail> {
        self.unit
            .device_entry(u32::from(device))
            .ok_or_else(|| Fail::new(format_args!("no DTE for device {device:#06x}")))
    }
}

/// The leaf PTE QEMU's walk reaches for `iova` from `entry` (a translating DTE), read from the
/// tables in memory as the unit reads them (PA == VA), with its level (0 = 4 KiB).
fn walk_leaf(entry: &DeviceTableEntry, iova: u64) -> Result<(u64, u32), Fail> {
    let mut levels = entry.mode();
    ensure!((1..=6).contains(&levels), "DTE Mode {levels}");
    let mut table = entry.root().get();
    loop {
        levels -= 1;
        let index = (iova >> (12 + 9 * levels)) & 0x1ff;
        // SAFETY: `table` is a page-table page of the unit's domain (PA == VA, in the arena),
        // read with an aligned volatile load while no map or unmap runs.
        let pte = unsafe { core::ptr::read_volatile((table + index * 8) as *const u64) };
        let next = (pte >> 9) & 7;
        ensure!(pte & 1 != 0, "PTE {pte:#018x} at level {levels} not present");
        if next == 0 || next == 7 || levels == 0 {
            return Ok((pte, levels));
        }
        table = pte & dte::ROOT_MASK;
    }
}

// -----------------------------------------------------------------------------------------------
// Scenarios

/// 4 KiB pages, both directions, a low IOVA and one with bit 47 set (the top of a 4-level
/// domain: its level-4 index), and an IOVA the IOASID layer picks.
fn dma_4k(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        let ias = v
            .ctx
            .device_info(v.dev)
            .or_fail("device_info")?
            .capabilities
            .ias;
        let high = (1u64 << 47) | 0x1234_5000;
        println!("unit input width {ias} bits");
        ensure!(ias >= 48, "unit input width {ias}");
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, high, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A + 0x80, 0x80, &dst, high + 0x100, 0x100, LEN, 1)?;
        roundtrip(v.edu, &dst, high + 0x10, 0x10, &src, IOVA_A + 0x400, 0x400, LEN, 2)?;
        let picked = v
            .ctx
            .alloc_iova(io, 0x2000, 0x1000)
            .or_fail("alloc_iova")?
            .get();
        ensure!(
            picked != 0 && picked != src.pa(),
            "alloc_iova gave {picked:#x}"
        );
        v.map(io, picked, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &dst, high, 0, &src, picked + 0x20, 0x20, LEN, 3)?;
        v.unmap(io, picked, 4096)?;
        ensure!(
            v.leaf_size(IOVA_A) == Some(12),
            "leaf at {IOVA_A:#x}: {:?}",
            v.leaf_size(IOVA_A)
        );
        let e = v.dte(v.edu_id)?;
        println!("edu's DTE {:#018x?}", e.0);
        ensure!(
            e.mode() == 4 && e.0[0] & (dte::IR | dte::IW) == dte::IR | dte::IW,
            "edu's DTE {:#018x?}: want Mode 4 (48-bit domain), IR and IW",
            e.0
        );
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, high, 4096)?;
        Ok(())
    })
}

/// A 2 MiB-aligned IOVA range on the 2 MiB-aligned PA range holding the buffers: a 2 MiB leaf
/// (Next Level 0 at level 2, the unit's `query` and the table QEMU walks say so) and DMA at the
/// right offsets.
fn dma_2m(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        const M2: u64 = 1 << 21;
        let base = src.pa().min(dst.pa()) & !(M2 - 1);
        let end = (src.pa().max(dst.pa()) + M2) & !(M2 - 1);
        v.map(io, IOVA_2M, base, end - base, Prot::READ | Prot::WRITE)?;
        ensure!(
            v.leaf_size(IOVA_2M) == Some(21),
            "leaf at {IOVA_2M:#x}: {:?} (want 2 MiB)",
            v.leaf_size(IOVA_2M)
        );
        let (pte, level) = walk_leaf(&v.dte(v.edu_id)?, IOVA_2M)?;
        println!("leaf PTE {pte:#018x} at level {level}");
        ensure!(level == 1, "the walk ends at level {level}, want 1 (2 MiB)");
        let (s, d) = (IOVA_2M + (src.pa() - base), IOVA_2M + (dst.pa() - base));
        roundtrip(v.edu, &src, s + 0x20, 0x20, &dst, d + 0x200, 0x200, LEN, 4)?;
        roundtrip(v.edu, &dst, d, 0, &src, s + 0x300, 0x300, LEN, 5)?;
        v.unmap(io, IOVA_2M, end - base)?;
        Ok(())
    })
}

/// IOVA 4 GiB -> PA 0-1 GiB (all of the guest's RAM) as one 1 GiB leaf; DMA lands at the right
/// offsets through it.
fn dma_1g(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        const G1: u64 = 1 << 30;
        ensure!(dst.pa() < G1 && src.pa() < G1, "buffers above 1 GiB");
        v.map(io, IOVA_1G, 0, G1, Prot::READ | Prot::WRITE)?;
        for probe in [IOVA_1G, IOVA_1G + src.pa(), IOVA_1G + G1 - 4096] {
            ensure!(
                v.leaf_size(probe) == Some(30),
                "leaf at {probe:#x}: {:?} (want 1 GiB)",
                v.leaf_size(probe)
            );
        }
        let (pte, level) = walk_leaf(&v.dte(v.edu_id)?, IOVA_1G + src.pa())?;
        println!("leaf PTE {pte:#018x} at level {level}");
        ensure!(level == 2, "the walk ends at level {level}, want 2 (1 GiB)");
        let (s, d) = (IOVA_1G + src.pa(), IOVA_1G + dst.pa());
        roundtrip(v.edu, &src, s + 0x40, 0x40, &dst, d + 0x800, 0x800, LEN / 2, 6)?;
        roundtrip(v.edu, &dst, d + 0x800, 0x800, &src, s, 0, LEN / 2, 7)?;
        v.unmap(io, IOVA_1G, G1)?;
        Ok(())
    })
}

/// Refused DMA and its events. An unmapped IOVA (zero PTE) and a write through a read-only
/// leaf are refused. A DTE without the access's permission (`IW` or `IR` clear, written through
/// the unit's raw `set_device_entry`) is refused too: QEMU's walk reports an IO_PAGE_FAULT
/// there (its trace shows one per 4-byte access) but QEMU 10.0 writes no event to the log
/// (see the module), so the row checks that nothing landed and that `EventLogTail` did not
/// move; on a QEMU that logs, every event drained must be IO_PAGE_FAULT with edu's device ID
/// and the DMA's page. The decoding of every event type is tested on the model
/// (`tests/amdvi_fault_matrix.rs`).
fn fault_events(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst, ro) = (v.buf()?, v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, IOVA_B + 0x1000, ro.pa(), 4096, Prot::READ)?;
        // Unmapped: refused, no event; the identity address would land in `dst`.
        v.write_blocked(v.edu, "write to an unmapped IOVA", dst.pa(), &dst)?;
        // Read-only leaf: refused, no event.
        v.write_blocked(v.edu, "write to a read-only IOVA", IOVA_B + 0x1000, &ro)?;
        roundtrip(v.edu, &ro, IOVA_B + 0x1000, 0, &dst, IOVA_B, 0, LEN, 8)?;

        // The DTE without IW, then without IR: QEMU checks the DTE's permission first.
        let orig = v.dte(v.edu_id)?;
        let domain_id = orig.domain_id();
        // QEMU's IOTLB (keyed by device) holds the pages used above: forget the domain's.
        let forget = [Command::invalidate_iommu_pages(
            domain_id,
            None,
            InvalidationRange::All,
            true,
        )];
        for (what, clear, write, iova) in [
            ("write through a DTE without IW", dte::IW, true, IOVA_B + 0x80),
            ("read through a DTE without IR", dte::IR, false, IOVA_A + 0x40),
        ] {
            let mut e = orig;
            e.0[0] &= !clear;
            v.unit
                .set_device_entry(u32::from(v.edu_id), &e, &forget)
                .or_fail("set_device_entry")?;
            dst.fill(GUARD);
            if write {
                dma_check::from_device(v.edu, iova, 64)?;
                dst.check_all(what, GUARD)?;
            } else {
                dma_check::to_device(v.edu, iova, 64)?;
            }
            let ev = drain(v.unit)?;
            if ev.n == 0 {
                // QEMU 10.0 logs nothing (see the module); a later one does.
                ensure!(
                    event_log_tail(v.unit) == 0,
                    "{what}: no event drained, but the tail moved"
                );
                println!("{what}: refused, no event logged (QEMU 10.0)");
                continue;
            }
            for e in ev.iter() {
                ensure!(
                    e.code == EventCode::IoPageFault,
                    "{what}: event {:?}",
                    e.code
                );
                ensure!(
                    e.device_id == v.edu_id,
                    "{what}: device {:#06x}, edu is {:#06x}",
                    e.device_id,
                    v.edu_id
                );
                ensure!(
                    e.address & !0xfff == iova & !0xfff,
                    "{what}: address {:#x}, DMA at {iova:#x}",
                    e.address
                );
            }
            println!("{what}: {} IO_PAGE_FAULT event(s)", ev.n);
        }
        v.unit
            .set_device_entry(u32::from(v.edu_id), &orig, &forget)
            .or_fail("restore the DTE")?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B + 0x10, 0x10, LEN, 9)?;
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, IOVA_B, 0x2000)?;
        Ok(())
    })
}

/// QEMU caches translations: a DMA through a page whose PTE was cleared still lands while its
/// IOTLB entry lives (shown through the `Iommu` trait: unmap without flush), and stops after
/// the unit's flush (one INVALIDATE_IOMMU_PAGES and one COMPLETION_WAIT). The IOASID layer's
/// unmap must do the same at once: if its invalidation were skipped, the write after it would
/// land in the old page.
fn unmap_flush(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 10)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 11)?;

        // One layer down (the `Iommu` trait): clear the PTE, do not invalidate yet.
        let h = v.only_domain()?;
        let mut gather = Gather::new();
        let n = v
            .unit
            .unmap(h, Iova::new(IOVA_B), 4096, &mut gather)
            .or_fail("Iommu::unmap")?;
        ensure!(n == 4096, "unmapped {n:#x}");
        dst.fill(GUARD);
        dma_check::from_device(v.edu, IOVA_B + 0x40, 64)?;
        let landed = dst.byte(0x40) != GUARD;
        println!("write through a cleared, not yet invalidated PTE: landed {landed}");
        ensure!(
            landed,
            "QEMU did not use its cached translation: this scenario could not see a missing invalidation"
        );
        let before = v.unit.command_stats();
        v.unit.flush(h, &mut gather).or_fail("Iommu::flush")?;
        let after = v.unit.command_stats();
        ensure!(
            after.commands - before.commands == 2 && after.waits - before.waits == 1,
            "flush of one page: {} command(s), {} wait(s) (want INVALIDATE_IOMMU_PAGES + COMPLETION_WAIT)",
            after.commands - before.commands,
            after.waits - before.waits
        );
        v.write_blocked(v.edu, "write after the flush", IOVA_B, &dst)?;
        // Put it back where the IOASID's record still has it, cache it again, then the IOASID
        // layer's own unmap.
        v.unit
            .map(h, Iova::new(IOVA_B), PhysAddr::new(dst.pa()), 4096, Prot::READ | Prot::WRITE)
            .or_fail("Iommu::map")?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 12)?;
        let before = v.unit.command_stats();
        v.unmap(io, IOVA_B, 4096)?;
        let after = v.unit.command_stats();
        println!(
            "IoasidCtx::unmap: {} command(s), {} wait(s)",
            after.commands - before.commands,
            after.waits - before.waits
        );
        ensure!(
            after.waits - before.waits == 1,
            "unmap waited {} time(s)",
            after.waits - before.waits
        );
        v.write_blocked(v.edu, "write after unmap", IOVA_B, &dst)?;
        v.unmap(io, IOVA_A, 4096)?;
        src.fill(0x11);
        dma_check::to_device(v.edu, IOVA_A, 64)?;
        ensure!(drain(v.unit)?.n == 0, "events after a refused read");
        Ok(())
    })
}

/// `ENFORCE_SNOOP` on AMD-Vi is FC (force coherent) in every PTE: the IOASID attaches (every
/// AMD-Vi unit has FC), the leaf QEMU walks for edu has FC set (read from the tables through
/// the DTE QEMU uses) and DMA lands through it; a plain IOASID's leaf has FC clear. QEMU does
/// not model snooping (it ignores FC and the device's No Snoop attribute: every access is
/// coherent), so what FC *does* is checked on the model only (`tests/amdvi_model.rs`); here
/// QEMU shows the bit is where its walk reads leaves and that it does not refuse it.
fn force_coherent(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let info = v.ctx.device_info(v.dev).or_fail("device_info")?;
        ensure!(
            info.capabilities.enforce_snoop,
            "the AMD-Vi unit does not offer ENFORCE_SNOOP"
        );
        let (src, dst) = (v.buf()?, v.buf()?);
        let fc = v.alloc(IoasidFlags::ENFORCE_SNOOP)?;
        let plain = v.alloc(IoasidFlags::empty())?;
        for io in [fc, plain] {
            v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
            v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        }
        for (round, (io, want)) in [(fc, true), (plain, false), (fc, true)].into_iter().enumerate() {
            v.attach(io)?;
            let e = v.dte(v.edu_id)?;
            for iova in [IOVA_A, IOVA_B] {
                let (pte, level) = walk_leaf(&e, iova)?;
                println!("IOASID {}: leaf {pte:#018x} at level {level}", io.0);
                ensure!(
                    (pte & PTE_FC != 0) == want,
                    "IOASID {} (ENFORCE_SNOOP {want}): leaf {pte:#018x} for {iova:#x} has FC {}",
                    io.0,
                    pte & PTE_FC != 0
                );
            }
            roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 13 + round as u8)?;
        }
        Ok(())
    })
}

/// A second `edu` (00:05.0, device ID 0x28): a shared domain, then one domain each (two domain
/// IDs); an unmap in one blocks only its device; detaching the second blocks it only.
fn two_devices(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let edu2 = crate::second_edu()?;
        let edu2_id = device_id(v.g, edu2.bdf)?;
        ensure!(edu2_id == 0x28, "second edu's device ID {edu2_id:#x}");
        let dev2 = v
            .ctx
            .bind(
                DeviceLabel {
                    unit: UnitId(0),
                    id: DeviceId(u32::from(edu2_id)),
                },
                false,
            )
            .or_fail("bind the second edu")?;
        let (src, in_a, in_b) = (v.buf()?, v.buf()?, v.buf()?);
        let a = v.alloc(IoasidFlags::empty())?;
        v.map(a, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(a, IOVA_B, in_a.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(a)?;
        v.ctx.attach(dev2, a).or_fail("attach the second edu")?;
        v.only_domain()?;
        let (d1, d2) = (v.dte(v.edu_id)?, v.dte(edu2_id)?);
        ensure!(
            d1.domain_id() == d2.domain_id() && d1.root() == d2.root(),
            "shared domain: DTEs {:#018x?} / {:#018x?}",
            d1.0,
            d2.0
        );
        roundtrip(v.edu, &src, IOVA_A, 0, &in_a, IOVA_B, 0, LEN, 20)?;
        roundtrip(&edu2, &src, IOVA_A, 0, &in_a, IOVA_B + 0x10, 0x10, LEN, 21)?;

        let b = v.alloc(IoasidFlags::empty())?;
        v.map(b, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(b, IOVA_B, in_b.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.ctx.attach(dev2, b).or_fail("move the second edu")?;
        let (d1, d2) = (v.dte(v.edu_id)?, v.dte(edu2_id)?);
        println!(
            "domain IDs: edu 1 {}, edu 2 {}",
            d1.domain_id(),
            d2.domain_id()
        );
        ensure!(
            d1.domain_id() != d2.domain_id() && d1.domain_id() != 0 && d2.domain_id() != 0,
            "two IOASIDs attached at once share domain ID {}",
            d1.domain_id()
        );
        for round in 0..2u8 {
            in_b.fill(GUARD);
            roundtrip(v.edu, &src, IOVA_A, 0, &in_a, IOVA_B, 0, LEN, 22 + round)?;
            in_b.check_all("B's page after edu 1's DMA", GUARD)?;
            in_a.fill(GUARD);
            roundtrip(&edu2, &src, IOVA_A, 0, &in_b, IOVA_B, 0, LEN, 24 + round)?;
            in_a.check_all("A's page after edu 2's DMA", GUARD)?;
        }
        // An unmap in A blocks edu 1 only.
        v.unmap(a, IOVA_B, 4096)?;
        v.write_blocked(v.edu, "edu 1 after A's unmap", IOVA_B, &in_a)?;
        roundtrip(&edu2, &src, IOVA_A, 0, &in_b, IOVA_B + 0x20, 0x20, LEN, 26)?;
        // Detaching edu 2 blocks it; edu 1 keeps working.
        v.ctx.detach(dev2).or_fail("detach the second edu")?;
        ensure!(
            v.dte(edu2_id)? == DeviceTableEntry::BLOCKED,
            "edu 2's DTE after detach: {:#018x?}",
            v.dte(edu2_id)?.0
        );
        v.write_blocked(&edu2, "edu 2 after detach", IOVA_B, &in_b)?;
        v.map(a, IOVA_B, in_a.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &in_a, IOVA_B + 0x30, 0x30, LEN, 27)?;
        v.ctx.unbind(dev2).or_fail("unbind the second edu")?;
        Ok(())
    })
}

/// Detach blocks the device at once, also for translations QEMU cached (its IOTLB is looked
/// up by device before the DTE is read); attaching again rebuilds the domain.
fn detach(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        let (src, dst) = (v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(io)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 30)?;
        v.ctx.detach(v.dev).or_fail("detach")?;
        ensure!(
            v.dte(v.edu_id)? == DeviceTableEntry::BLOCKED,
            "edu's DTE after detach: {:#018x?}",
            v.dte(v.edu_id)?.0
        );
        v.write_blocked(v.edu, "write after detach", IOVA_B, &dst)?;
        v.attach(io)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 31)?;
        Ok(())
    })
}

/// Disabling the unit turns translation off (QEMU: DMA addresses are physical); enabling it
/// again translates through the same DTEs and tables.
fn disable(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        let (src, dst) = (v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(io)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 40)?;
        v.unit.disable().or_fail("disable")?;
        ensure!(!v.unit.is_enabled(), "IommuEn still set after disable");
        roundtrip(v.edu, &src, src.pa(), 0, &dst, dst.pa() + 0x20, 0x20, LEN, 41)?;
        v.unit.enable().or_fail("enable")?;
        ensure!(v.unit.is_enabled(), "IommuEn clear after enable");
        ensure!(
            v.unit.info().efr.flags().contains(EfrFlags::IA_SUP),
            "QEMU's EFR without IASup"
        );
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B + 0x30, 0x30, LEN, 42)?;
        v.write_blocked(v.edu, "physical address after enable", dst.pa(), &dst)?;
        Ok(())
    })
}

/// Two IOASIDs map the same IOVA to different pages; edu attached to one, then the other (no
/// detach), then back: each DMA lands in the page of the IOASID attached at the time (QEMU's
/// IOTLB, keyed by device, would keep the old domain's translation unless invalidated).
fn reattach_replaces(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        let (a, b) = (
            v.alloc(IoasidFlags::empty())?,
            v.alloc(IoasidFlags::empty())?,
        );
        let (src, in_a, in_b) = (v.buf()?, v.buf()?, v.buf()?);
        for (io, dst) in [(a, &in_a), (b, &in_b)] {
            v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
            v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        }
        let mut last = None;
        for (round, (io, dst, other)) in [(a, &in_a, &in_b), (b, &in_b, &in_a), (a, &in_a, &in_b)]
            .into_iter()
            .enumerate()
        {
            v.attach(io)?;
            let id = v.dte(v.edu_id)?.domain_id();
            println!("attached to IOASID {} (domain ID {id})", io.0);
            ensure!(Some(id) != last, "the new domain reuses domain ID {id}");
            last = Some(id);
            other.fill(GUARD);
            roundtrip(v.edu, &src, IOVA_A, 0, dst, IOVA_B, 0, LEN, 50 + round as u8)?;
            other.check_all("the other IOASID's page", GUARD)?;
        }
        Ok(())
    })
}
