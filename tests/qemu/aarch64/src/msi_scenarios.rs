//! MSIs through the SMMU (numbers 250-259): `edu` raises an MSI whose address is an IOVA; the
//! SMMUv3 domain maps that IOVA's page to the GICv3 ITS translation frame as Device memory
//! (`Prot::MMIO`), the ITS turns the write into an LPI and the CPU interface shows it.
//!
//! QEMU facts these rely on (10.0, read from its source and measured): a PCI device's MSI is a
//! 4-byte write of the message data to the message address through the device's bus-master
//! address space, tagged with its requester ID (`pci_msi_trigger`, hw/pci/pci.c); on `virt`
//! with `iommu=smmuv3` that address space is the SMMU's IOMMU region for the device (`info
//! mtree`: edu's "bus master container"), so MSIs are translated like any DMA write, with the
//! device's StreamID, and fault like one when the IOVA is not mapped (one event: one 4-byte
//! access). The translated write keeps its requester ID, which the ITS uses as DeviceID (`virt`
//! maps RID -> StreamID and RID -> DeviceID one to one). QEMU's SMMU ignores memory attributes,
//! so that the leaf is Device memory is checked on the unit's own table (`Iommu::query` decodes
//! stage-1 AttrIndx / stage-2 MemAttr), not by QEMU.

use iommu_engine::ioasid::IoasidFlags;
use iommu_engine::iommu::{DomainConfig, Iommu};
use iommu_engine::mem::PhysAddr;
use iommu_engine::pgtable::Prot;
use iommu_engine::smmuv3::event::EventType;

use crate::events::Expect;
use crate::gic::{Gic, GITS_TRANSLATER_PA, LPI_BASE};
use crate::pci;
use crate::scenario::{Ctx, Fail};
use crate::smmu_env::{run_granule, Env, StreamTableFormat};
use crate::smmu_scenarios::{io, iova, linear, unit_op, unmap_flush};
use crate::{ensure, println, Ecam};

/// The IOVA page edu's MSI goes to (64 KiB aligned): far from the ITS's physical address and
/// from every device and RAM, so only the SMMU's translation can make the write reach the ITS.
const IOVA_DOORBELL: u64 = 0x33_0000_0000;
/// The ITS translation frame (64 KiB, 64 KiB aligned): its first page, whatever the granule,
/// holds GITS_TRANSLATER.
const DOORBELL_PAGE: u64 = GITS_TRANSLATER_PA & !0xffff;
/// The MSI address edu is given: GITS_TRANSLATER's offset inside the IOVA page.
const MSI_ADDRESS: u64 = IOVA_DOORBELL + (GITS_TRANSLATER_PA - DOORBELL_PAGE);
/// The MSI data: the ITS EventID (not 0, so a lost data word would not look right).
const EVENT: u32 = 5;
/// EventID bits of edu's interrupt translation table.
const EVENT_BITS: u32 = 3;
/// The LPI the event is mapped to.
const LPI: u32 = LPI_BASE + 42;
/// edu's interrupt status bit the scenario raises.
const EDU_IRQ: u32 = 1;

/// MSIs through an SMMUv3 domain, on whichever stage the unit uses:
/// - the GIC path alone (an ITS `INT` command for edu's DeviceID/EventID) delivers the LPI once;
/// - a `Prot::MMIO` leaf in the unit's own table decodes as Device memory;
/// - with the doorbell IOVA not mapped, edu's MSI faults: one F_TRANSLATION event (edu's
///   StreamID, the MSI address, a write) and no LPI;
/// - mapped read-only, the MSI (a write) faults with one F_PERMISSION event and no LPI;
/// - mapped as Device memory (write-only on stage 2, read/write on stage 1, which has no
///   write-only), each MSI delivers the LPI exactly once, also through QEMU's cached
///   translation, and no event;
/// - unmapped again (the unmap's invalidation reaching QEMU's TLB), the MSI faults as before.
pub fn smmu_msi(ctx: &mut Ctx) -> Result<(), Fail> {
    linear(ctx, msi)
}

/// [`smmu_msi`] on a unit whose domains use the 64 KiB granule (a kernel with 64 KiB pages): the
/// doorbell mapping is the whole 64 KiB ITS translation frame, one leaf.
pub fn smmu_msi_64k(ctx: &mut Ctx) -> Result<(), Fail> {
    run_granule(ctx, StreamTableFormat::Linear, 16, msi)
}

/// Bytes of the doorbell mapping: one page of the domain's granule.
fn page(env: &Env<'_, '_, '_>) -> u64 {
    1 << env.granule_log2
}

fn doorbell_prot(env: &Env<'_, '_, '_>) -> Prot {
    if env.stage2 {
        Prot::WRITE | Prot::MMIO
    } else {
        Prot::READ | Prot::WRITE | Prot::MMIO
    }
}

fn msi(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let mut gic = Gic::init()?;
    // On virt the ITS DeviceID of a PCI function is its RID, which is also its StreamID.
    let devid = env.sid.0;
    println!(
        "GICv3 ITS: GITS_TYPER {:#x}; DeviceID {devid:#x} EventID {EVENT} -> LPI {LPI}; MSI address {MSI_ADDRESS:#x} -> {GITS_TRANSLATER_PA:#x}",
        gic.gits_typer
    );
    gic.map_event(devid, EVENT, LPI, EVENT_BITS)?;
    let (stray, other) = gic.take(LPI);
    ensure!(
        stray == 0 && other.is_none(),
        "interrupts pending before any was raised: LPI {LPI} x{stray}, other {other:?}"
    );
    gic.int(devid, EVENT)?;
    expect_lpi(&gic, "ITS INT command")?;

    mmio_leaf(env)?;

    let bdf = env.edu.bdf;
    let Some(cap) = pci::find_capability(&Ecam, bdf, pci::CAP_ID_MSI) else {
        crate::bail!("edu has no MSI capability");
    };
    let a = io("alloc", env.io.alloc(IoasidFlags::empty()))?;
    io("attach", env.io.attach(env.dev, a))?;
    pci::msi_configure(&Ecam, bdf, cap, MSI_ADDRESS, EVENT as u16, true)?;

    msi_faults(
        env,
        &gic,
        "MSI, doorbell not mapped",
        EventType::FTranslation,
    )?;

    let map = |prot: Prot| {
        io(
            "map doorbell",
            env.io.map(
                a,
                iova(IOVA_DOORBELL),
                PhysAddr::new(DOORBELL_PAGE),
                page(env),
                prot,
            ),
        )
    };
    let unmap = || -> Result<(), Fail> {
        let n = io(
            "unmap doorbell",
            env.io.unmap(a, iova(IOVA_DOORBELL), page(env)),
        )?;
        ensure!(n == page(env), "unmap of the doorbell removed {n:#x} bytes");
        Ok(())
    };
    // Read-only: the MSI is a write.
    map(Prot::READ | Prot::MMIO)?;
    msi_faults(env, &gic, "MSI, doorbell read-only", EventType::FPermission)?;
    unmap()?;

    map(doorbell_prot(env))?;
    match io("translate doorbell", env.io.translate(a, iova(MSI_ADDRESS)))? {
        Some(m) if m.pa == PhysAddr::new(GITS_TRANSLATER_PA) && m.prot.contains(Prot::MMIO) => {}
        other => crate::bail!("IOASID says {other:x?} for the doorbell"),
    }
    // The first MSI fills QEMU's TLB, the second uses the cached translation.
    for what in [
        "MSI through the doorbell",
        "MSI through the cached doorbell",
    ] {
        raise(env)?;
        expect_lpi(&gic, what)?;
        env.events(what)?.expect_none(what)?;
    }

    unmap()?;
    msi_faults(env, &gic, "MSI, doorbell unmapped", EventType::FTranslation)?;

    pci::msi_configure(&Ecam, bdf, cap, 0, 0, false)?;
    Ok(())
}

/// Makes edu send its MSI (raise, then acknowledge at the device).
fn raise(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    env.edu.raise_irq(EDU_IRQ);
    let status = env.edu.irq_status();
    env.edu.ack_irq(EDU_IRQ);
    ensure!(
        status & EDU_IRQ != 0,
        "edu interrupt status {status:#x} after raising {EDU_IRQ:#x}"
    );
    Ok(())
}

/// Exactly one `LPI` was delivered, and nothing else; it is no longer pending.
fn expect_lpi(gic: &Gic, what: &str) -> Result<(), Fail> {
    let (hits, other) = gic.take(LPI);
    ensure!(
        hits == 1 && other.is_none(),
        "{what}: LPI {LPI} acknowledged {hits} time(s), expected once; other INTID {other:?}"
    );
    ensure!(
        !gic.lpi_pending(LPI),
        "{what}: LPI {LPI} still pending after it was acknowledged"
    );
    Ok(())
}

/// edu's MSI faults in the SMMU (one `kind` event for the 4-byte write at the MSI address,
/// under edu's StreamID) and no interrupt arrives.
fn msi_faults(
    env: &Env<'_, '_, '_>,
    gic: &Gic,
    what: &'static str,
    kind: EventType,
) -> Result<(), Fail> {
    raise(env)?;
    let ev = env.events(what)?;
    ev.print(what);
    let n = ev.expect_faults(&Expect {
        what,
        kind,
        sid: env.sid,
        addr: MSI_ADDRESS,
        len: 4,
        read: false,
        stage2: Some(env.stage2),
        ipa_is_input: true,
    })?;
    ensure!(n == 1, "{what}: {n} events, expected 1 (one 4-byte write)");
    let (hits, other) = gic.take(LPI);
    ensure!(
        hits == 0 && other.is_none() && !gic.lpi_pending(LPI),
        "{what}: an interrupt arrived (LPI {LPI} x{hits}, other {other:?})"
    );
    Ok(())
}

/// In the unit's own table (below the IOASID layer), a `Prot::MMIO` leaf reads back as Device
/// memory at the doorbell's physical address.
fn mmio_leaf(env: &Env<'_, '_, '_>) -> Result<(), Fail> {
    let unit: &dyn Iommu = env.unit;
    let d = unit_op("domain", unit.domain_alloc(&DomainConfig::default()))?;
    let r = (|| {
        let prot = doorbell_prot(env);
        unit_op(
            "map doorbell",
            unit.map(
                d,
                iova(IOVA_DOORBELL),
                PhysAddr::new(DOORBELL_PAGE),
                page(env),
                prot,
            ),
        )?;
        match unit.query(d, iova(MSI_ADDRESS)) {
            Some(m)
                if m.pa == PhysAddr::new(GITS_TRANSLATER_PA)
                    && m.prot.contains(prot)
                    && m.size_log2 == env.granule_log2 => {}
            other => crate::bail!("the unit's domain says {other:x?} for a {prot:?} page"),
        }
        unmap_flush(unit, d, IOVA_DOORBELL, page(env))?;
        Ok(())
    })();
    let free = unit_op("free", unit.domain_free(d));
    r.and(free)
}
