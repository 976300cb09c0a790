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

use core::ptr::NonNull;

use iommu_engine::amdvi::cmd::{Command, InvalidationRange};
use iommu_engine::amdvi::dte::{self, DeviceTableEntry};
use iommu_engine::amdvi::efr::EfrFlags;
use iommu_engine::amdvi::event::{Event, EventCode};
use iommu_engine::amdvi::{AmdViConfig, AmdViUnit};
use iommu_engine::ioasid::IoasidFlags;
use iommu_engine::iommu::Iommu;
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::mmio::Mmio;
use iommu_engine::pgtable::{Gather, Prot};

use crate::alloc::PageArena;
use crate::dma_check::{self, roundtrip, Buf, GUARD};
use crate::edu::Edu;
use crate::ioasid_env::{self, with_unit, Driver, Env, OrFail, Refusal, IOVA_A, IOVA_B, LEN};
use crate::pci::Bdf;
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

/// FC (force coherent), bit 60 of a v1 PTE (48882 §2.2.3, Figure "I/O Page Table Entry").
const PTE_FC: u64 = 1 << 60;

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
    unit.regs()
        .read64(iommu_engine::amdvi::regs::EVENT_LOG_TAIL)
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
        Ok(None) => Ok(()),
        Ok(Some(e)) => bail!("AmdViUnit::release leaked: {e}"),
        Err((_unit, e)) => bail!("AmdViUnit::release: {e}"),
    }
}

/// What an AMD-Vi scenario holds once the unit is up and `edu` is bound.
type Amd<'c, 'r, 'a> = Env<'c, 'r, 'a, Unit>;

/// [`with_unit`] on the AMD-Vi unit: no event may be left unread at the end.
fn with_amd(g: &mut Ctx, f: impl FnOnce(&Amd<'_, '_, '_>) -> Result<(), Fail>) -> Result<(), Fail> {
    with_unit::<Unit>(g, f)
}

impl Driver for Unit {
    type Watch = ();
    const DOMAINS: u16 = iommu_engine::amdvi::unit::DEFAULT_DOMAINS as u16;
    const PASID_QUOTA: u32 = 0;
    const ENABLED_BIT: &'static str = "IommuEn";

    fn watch(_: &Ctx) -> Result<(), Fail> {
        Ok(())
    }

    fn create(g: &Ctx) -> Result<Self, Fail> {
        create(g)
    }

    fn destroy(self) -> Result<(), Fail> {
        destroy(self)
    }

    fn edu_id(g: &Ctx, edu: &Edu) -> Result<u16, Fail> {
        device_id(g, edu.bdf)
    }

    fn device_id(g: &Ctx, bdf: Bdf) -> Result<u16, Fail> {
        device_id(g, bdf)
    }

    fn disable(&self) -> Result<(), Fail> {
        AmdViUnit::disable(self).or_fail("disable")
    }

    fn enable(&self) -> Result<(), Fail> {
        AmdViUnit::enable(self).or_fail("enable")?;
        ensure!(
            self.info().efr.flags().contains(EfrFlags::IA_SUP),
            "QEMU's EFR without IASup"
        );
        Ok(())
    }

    fn translating(&self) -> bool {
        self.is_enabled()
    }

    fn expect_quiet(v: &Amd<'_, '_, '_>, _: &str) -> Result<(), Fail> {
        let left = drain(v.unit)?;
        ensure!(left.n == 0, "{} event(s) nobody expected", left.n);
        Ok(())
    }

    /// QEMU 10.0 logs no event for a refused DMA (see the module): nothing may land and no
    /// event be drained; a detached device's DTE must be the blocking one.
    fn write_refused(
        v: &Amd<'_, '_, '_>,
        edu: &Edu,
        id: u16,
        when: &str,
        iova: u64,
        why: Refusal,
        victim: &Buf,
    ) -> Result<(), Fail> {
        if why == Refusal::Detached {
            let e = v.dte(id)?;
            ensure!(
                e == DeviceTableEntry::BLOCKED,
                "{when}: device {id:#06x}'s DTE {:#018x?} is not the blocking one",
                e.0
            );
        }
        v.write_blocked(edu, when, iova, victim)
    }

    fn high_iova(v: &Amd<'_, '_, '_>) -> Result<u64, Fail> {
        let ias = v
            .ctx
            .device_info(v.dev)
            .or_fail("device_info")?
            .capabilities
            .ias;
        println!("unit input width {ias} bits");
        ensure!(ias >= 48, "unit input width {ias}");
        Ok((1u64 << 47) | 0x1234_5000)
    }

    fn edu_tag(v: &Amd<'_, '_, '_>) -> Result<Option<u32>, Fail> {
        Ok(Some(u32::from(v.dte(v.edu_id)?.domain_id())))
    }

    fn check_one_domain(v: &Amd<'_, '_, '_>, [one, two]: [u16; 2]) -> Result<(), Fail> {
        let (d1, d2) = (v.dte(one)?, v.dte(two)?);
        ensure!(
            d1.domain_id() == d2.domain_id() && d1.root() == d2.root(),
            "shared domain: DTEs {:#018x?} / {:#018x?}",
            d1.0,
            d2.0
        );
        Ok(())
    }

    fn check_two_domains(v: &Amd<'_, '_, '_>, [one, two]: [u16; 2]) -> Result<(), Fail> {
        let (d1, d2) = (v.dte(one)?, v.dte(two)?);
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
        Ok(())
    }

    fn largest_leaf(_: &Amd<'_, '_, '_>) -> u32 {
        // Every AMD-Vi v1 table takes 1 GiB leaves (48882 §2.2.3: Next Level 0 at level 3).
        30
    }

    /// The leaf QEMU's walk reaches through edu's DTE is at the level of `size_log2`.
    fn check_walked_leaf(v: &Amd<'_, '_, '_>, iova: u64, size_log2: u32) -> Result<(), Fail> {
        let (pte, level) = walk_leaf(&v.dte(v.edu_id)?, iova)?;
        println!("leaf PTE {pte:#018x} at level {level}");
        let want = (size_log2 - 12) / 9;
        ensure!(
            level == want,
            "the walk ends at level {level}, want {want} (2^{size_log2} bytes)"
        );
        Ok(())
    }
}

impl Amd<'_, '_, '_> {
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
        ensure!(
            pte & 1 != 0,
            "PTE {pte:#018x} at level {levels} not present"
        );
        if next == 0 || next == 7 || levels == 0 {
            return Ok((pte, levels));
        }
        table = pte & dte::ROOT_MASK;
    }
}

// -----------------------------------------------------------------------------------------------
// Scenarios

/// 4 KiB pages, both directions, a low IOVA and one with bit 47 set (the top of a 4-level
/// domain: its level-4 index), and an IOVA the IOASID layer picks; edu's DTE has Mode 4, IR
/// and IW.
fn dma_4k(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| {
        ioasid_env::dma_4k(v, [1, 2, 3], |v| {
            let e = v.dte(v.edu_id)?;
            println!("edu's DTE {:#018x?}", e.0);
            ensure!(
                e.mode() == 4 && e.0[0] & (dte::IR | dte::IW) == dte::IR | dte::IW,
                "edu's DTE {:#018x?}: want Mode 4 (48-bit domain), IR and IW",
                e.0
            );
            Ok(())
        })
    })
}

/// A 2 MiB-aligned IOVA range on the 2 MiB-aligned PA range holding the buffers: a 2 MiB leaf
/// (Next Level 0 at level 2, the unit's `query` and the table QEMU walks say so) and DMA at the
/// right offsets.
fn dma_2m(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::dma_2m(v, [4, 5]))
}

/// IOVA 4 GiB -> PA 0-1 GiB (all of the guest's RAM) as one 1 GiB leaf (the unit's `query` and
/// the table QEMU walks say so); DMA lands at the right offsets through it.
fn dma_1g(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::dma_1g(v, [6, 7]))
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
        let (io, src, dst) = v.attached_pair()?;
        let ro = v.buf()?;
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
            (
                "write through a DTE without IW",
                dte::IW,
                true,
                IOVA_B + 0x80,
            ),
            (
                "read through a DTE without IR",
                dte::IR,
                false,
                IOVA_A + 0x40,
            ),
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
        let (io, src, dst) = v.attached_pair()?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 10)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 11)?;

        // One layer down (the `Iommu` trait): clear the PTE, do not invalidate yet.
        let (h, _) = v.only_domain()?;
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
            .map(
                h,
                Iova::new(IOVA_B),
                PhysAddr::new(dst.pa()),
                4096,
                Prot::READ | Prot::WRITE,
            )
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
        for (round, (io, want)) in [(fc, true), (plain, false), (fc, true)]
            .into_iter()
            .enumerate()
        {
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
            roundtrip(
                v.edu,
                &src,
                IOVA_A,
                0,
                &dst,
                IOVA_B,
                0,
                LEN,
                13 + round as u8,
            )?;
        }
        Ok(())
    })
}

/// A second `edu` (00:05.0, device ID 0x28): a shared domain, then one domain each (two domain
/// IDs); an unmap in one blocks only its device; detaching the second blocks it only (its DTE
/// the blocking one).
fn two_devices(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::two_devices(v, 20))
}

/// Detach blocks the device at once (its DTE the blocking one), also for translations QEMU
/// cached (its IOTLB is looked up by device before the DTE is read); attaching again rebuilds
/// the domain.
fn detach(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::detach(v, [30, 31]))
}

/// Disabling the unit turns translation off (QEMU: DMA addresses are physical); enabling it
/// again (EFR still with IASup) translates through the same DTEs and tables.
fn disable(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::disable(v, [40, 41, 42]))
}

/// Two IOASIDs map the same IOVA to different pages; edu attached to one, then the other (no
/// detach), then back: each DMA lands in the page of the IOASID attached at the time (QEMU's
/// IOTLB, keyed by device, would keep the old domain's translation unless invalidated), each
/// under a domain ID of its own.
fn reattach_replaces(g: &mut Ctx) -> Result<(), Fail> {
    with_amd(g, |v| ioasid_env::reattach_replaces(v, 50))
}
