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
