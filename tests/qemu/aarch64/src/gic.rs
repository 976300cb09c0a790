//! A minimal GICv3 + ITS driver for the MSI scenarios (Arm GIC Architecture Specification,
//! IHI 0069: §12.9 GICD_CTLR, §12.11 GICR_CTLR/TYPER/WAKER/PROPBASER/PENDBASER (LPIs, §5.1),
//! §12.19 GITS_CTLR/TYPER/CBASER/CWRITER/CREADR/BASER<n>/TRANSLATER, §5.3 ITS commands, §12.2
//! the ICC_* CPU interface system registers).
//!
//! On QEMU `virt` with `gic-version=3,its=on` (10.0, measured with `info mtree`): distributor at
//! 0x0800_0000, ITS at 0x0808_0000 (control frame, then the translation frame at +0x1_0000 with
//! GITS_TRANSLATER at +0x40), redistributor of CPU 0 at 0x080A_0000. The machine has no EL3, so
//! the GIC has a single security state (GICD_CTLR.DS = 1) and LPIs are Group 1.
//!
//! What QEMU's ITS does (hw/intc/arm_gicv3_its.c, 10.0): a write to GITS_TRANSLATER takes the
//! DeviceID from the write's requester ID (for PCI, the RID the transaction carries) and the
//! EventID from the data; GITS_TYPER.PTA = 0, so a collection's target is the processor number;
//! GITS_BASER0 is the device table and GITS_BASER1 the collection table (type and entry size
//! read-only, page size 64 KiB at reset but writable); commands run synchronously when
//! GITS_CWRITER is written. The ITS and redistributors read their tables with physical
//! addresses (they are not behind the SMMU).
//!
//! The driver programs one redistributor (CPU 0), one collection (ICID 0 -> CPU 0) and one
//! device's interrupt translation table. Interrupts stay masked at the CPU (PSTATE.I): the
//! scenarios poll `ICC_IAR1_EL1`, which acknowledges the highest-priority pending Group 1
//! interrupt whatever PSTATE says, or returns 1023 when there is none.

use core::arch::asm;
use core::ptr::NonNull;

use iommu_engine::mmio::{self, Mmio, RegisterWindow};

use crate::scenario::Fail;
use crate::{bail, ensure};

/// Distributor base.
pub const GICD_BASE: usize = 0x0800_0000;
/// ITS control frame base.
pub const GITS_BASE: usize = 0x0808_0000;
/// Redistributor (RD_base frame) of CPU 0.
pub const GICR_BASE: usize = 0x080A_0000;
/// Physical address of GITS_TRANSLATER: the ITS translation frame (ITS base + 64 KiB) + 0x40.
pub const GITS_TRANSLATER_PA: u64 = (GITS_BASE + 0x1_0040) as u64;

/// First LPI INTID.
pub const LPI_BASE: u32 = 8192;
/// INTID the ICC_IAR1_EL1 read returns when nothing is pending.
pub const SPURIOUS: u32 = 1023;
/// LPI ID bits programmed in GICR_PROPBASER.IDbits + 1: INTIDs below 2^14.
const LPI_ID_BITS: u32 = 14;

// Distributor.
const GICD_CTLR: usize = 0x0;
const GICD_CTLR_ENABLE_GRP1: u32 = 1 << 1; // EnableGrp1 (DS = 1) / EnableGrp1NS
const GICD_CTLR_ARE: u32 = 1 << 4; // ARE (DS = 1) / ARE_NS

// Redistributor, RD_base frame.
const GICR_CTLR: usize = 0x0;
const GICR_CTLR_ENABLE_LPIS: u32 = 1 << 0;
const GICR_TYPER: usize = 0x8;
const GICR_TYPER_PLPIS: u64 = 1 << 0;
const GICR_WAKER: usize = 0x14;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
const GICR_PROPBASER: usize = 0x70;
const GICR_PENDBASER: usize = 0x78;

// ITS control frame.
const GITS_CTLR: usize = 0x0;
const GITS_CTLR_ENABLED: u32 = 1 << 0;
const GITS_TYPER: usize = 0x8;
const GITS_CBASER: usize = 0x80;
const GITS_CWRITER: usize = 0x88;
const GITS_CREADR: usize = 0x90;
const GITS_CREADR_STALLED: u64 = 1 << 0;
const GITS_BASER: usize = 0x100;
const BASER_VALID: u64 = 1 << 63;
const BASER_TYPE_DEVICE: u64 = 1;
const BASER_TYPE_COLLECTION: u64 = 4;

/// Attributes shared by every GIC table register: Inner Shareable (11:10 = 0b01), inner
/// cacheability read/write-allocate write-back (0b111, at bits 9:7 of GICR_*BASER and
/// 61:59 of GITS_*BASER).
const SH_INNER: u64 = 1 << 10;
const GICR_INNER_WB: u64 = 7 << 7;
const GITS_INNER_WB: u64 = 7 << 59;

// ITS commands (§5.3): the command number in DW0 bits 7:0.
const CMD_INT: u64 = 0x03;
const CMD_SYNC: u64 = 0x05;
const CMD_MAPD: u64 = 0x08;
const CMD_MAPC: u64 = 0x09;
const CMD_MAPTI: u64 = 0x0a;
const CMD_INV: u64 = 0x0c;

/// Bound on polls of a register the model updates synchronously (GICR_WAKER, GITS_CREADR,
/// ICC_IAR1_EL1).
const POLL_LIMIT: u32 = 10_000;

const FRAME: usize = 1 << 16;
/// Size of the ITS command queue (one 4 KiB page: 128 commands).
const CMDQ_BYTES: usize = 4096;

/// Memory the GIC reads and writes: 64 KiB aligned, so that a table register with 64 KiB
/// pages accepts every table. In .bss (zeroed by boot.rs).
#[repr(C, align(65536))]
struct GicMemory {
    /// LPI configuration table: one byte per LPI (priority 7:2, enable bit 0).
    prop: [u8; FRAME],
    /// LPI pending table: one bit per INTID (the first 1 KiB covers the SGI/PPI/SPI range).
    pend: [u8; FRAME],
    /// ITS device table.
    devices: [u8; FRAME],
    /// ITS collection table.
    collections: [u8; FRAME],
    /// ITS command queue.
    cmdq: [u8; CMDQ_BYTES],
    /// The one device's interrupt translation table (256-byte aligned).
    itt: [u8; CMDQ_BYTES],
}

static mut GIC_MEMORY: GicMemory = GicMemory {
    prop: [0; FRAME],
    pend: [0; FRAME],
    devices: [0; FRAME],
    collections: [0; FRAME],
    cmdq: [0; CMDQ_BYTES],
    itt: [0; CMDQ_BYTES],
};

fn mem() -> *mut GicMemory {
    core::ptr::addr_of_mut!(GIC_MEMORY)
}

/// Physical (= virtual) addresses of the tables in [`GicMemory`].
struct TablePas {
    prop: u64,
    pend: u64,
    devices: u64,
    collections: u64,
    cmdq: u64,
    itt: u64,
}

fn table_pas() -> TablePas {
    let m = mem();
    let pa = |p: *mut [u8; FRAME]| p as usize as u64;
    // SAFETY: `m` points to the static GIC memory; only field addresses are taken, no
    // reference is created and nothing is read or written.
    unsafe {
        TablePas {
            prop: pa(core::ptr::addr_of_mut!((*m).prop)),
            pend: pa(core::ptr::addr_of_mut!((*m).pend)),
            devices: pa(core::ptr::addr_of_mut!((*m).devices)),
            collections: pa(core::ptr::addr_of_mut!((*m).collections)),
            cmdq: core::ptr::addr_of_mut!((*m).cmdq) as usize as u64,
            itt: core::ptr::addr_of_mut!((*m).itt) as usize as u64,
        }
    }
}

fn window(base: usize, len: usize) -> Result<Mmio, Fail> {
    let Some(p) = NonNull::new(base as *mut u8) else {
        bail!("GIC frame at 0");
    };
    // SAFETY: the GIC frames are below 1 GiB, identity-mapped Device-nGnRnE by
    // `arch::mmu_enable`; only this driver touches them, and only in the MSI scenarios.
    Ok(unsafe { Mmio::new(p, len) })
}

/// The CPU interface's Group 1 acknowledge register (ICC_IAR1_EL1): the INTID of the
/// highest-priority pending Group 1 interrupt, now active, or [`SPURIOUS`].
fn icc_iar1() -> u32 {
    let v: u64;
    // SAFETY: reads ICC_IAR1_EL1 (S3_0_C12_C12_0); with ICC_SRE_EL1.SRE set it is accessible at
    // EL1. Its side effect (acknowledging an interrupt) is what the caller wants.
    unsafe { asm!("isb", "mrs {}, S3_0_C12_C12_0", out(reg) v, options(nostack)) };
    v as u32
}

/// Ends the handling of `intid` (ICC_EOIR1_EL1; EOImode = 0: priority drop and deactivation).
fn icc_eoir1(intid: u32) {
    // SAFETY: writes ICC_EOIR1_EL1 (S3_0_C12_C12_1) with an INTID just acknowledged.
    unsafe { asm!("msr S3_0_C12_C12_1, {}", "isb", in(reg) u64::from(intid), options(nostack)) };
}

/// The GIC as the MSI scenarios set it up: distributor, CPU 0's redistributor with LPIs on,
/// the CPU interface, the ITS with one collection for CPU 0.
pub struct Gic {
    its: Mmio,
    /// Byte offset of the next command in the queue.
    cwriter: usize,
    /// GICR_TYPER.Processor_Number of CPU 0: the collection target (GITS_TYPER.PTA = 0).
    procnum: u64,
    /// GITS_TYPER, for reports.
    pub gits_typer: u64,
}

impl Gic {
    /// Brings up the distributor, CPU 0's redistributor (LPIs, tables in [`GicMemory`]), the CPU
    /// interface and the ITS (device and collection tables, command queue), and maps
    /// collection 0 to CPU 0. Fails when the machine has no GICv3 ITS.
    pub fn init() -> Result<Gic, Fail> {
        let pas = table_pas();
        let gicd = window(GICD_BASE, FRAME)?;
        let gicr = window(GICR_BASE, 2 * FRAME)?;
        let its = window(GITS_BASE, FRAME)?;
        // SAFETY: masks every exception class at the CPU; interrupts are polled (module docs).
        unsafe { asm!("msr daifset, #0xf", options(nomem, nostack)) };

        let gits_typer = its.read64(GITS_TYPER);
        ensure!(
            gits_typer & 1 != 0,
            "no GICv3 ITS at {GITS_BASE:#x} (GITS_TYPER {gits_typer:#x}): run with gic-version=3,its=on"
        );
        let gicr_typer = gicr.read64(GICR_TYPER);
        ensure!(
            gicr_typer & GICR_TYPER_PLPIS != 0,
            "redistributor without physical LPIs (GICR_TYPER {gicr_typer:#x})"
        );
        let procnum = (gicr_typer >> 8) & 0xffff;

        // Distributor: affinity routing, Group 1 on.
        gicd.write32(GICD_CTLR, GICD_CTLR_ARE);
        gicd.write32(GICD_CTLR, GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1);
        let ctlr = gicd.read32(GICD_CTLR);
        ensure!(
            ctlr & (GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1) == GICD_CTLR_ARE | GICD_CTLR_ENABLE_GRP1,
            "GICD_CTLR reads {ctlr:#x} after enabling ARE and Group 1"
        );

        // Redistributor: awake, LPI tables, LPIs on.
        gicr.write32(
            GICR_WAKER,
            gicr.read32(GICR_WAKER) & !GICR_WAKER_PROCESSOR_SLEEP,
        );
        ensure!(
            mmio::poll(POLL_LIMIT, || {
                (gicr.read32(GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP == 0).then_some(())
            })
            .is_some(),
            "GICR_WAKER.ChildrenAsleep stays set"
        );
        let (prop, pend) = (pas.prop, pas.pend);
        gicr.write64(
            GICR_PROPBASER,
            prop | SH_INNER | GICR_INNER_WB | u64::from(LPI_ID_BITS - 1),
        );
        gicr.write64(GICR_PENDBASER, pend | SH_INNER | GICR_INNER_WB);
        gicr.doorbell32(GICR_CTLR, GICR_CTLR_ENABLE_LPIS);
        ensure!(
            gicr.read32(GICR_CTLR) & GICR_CTLR_ENABLE_LPIS != 0,
            "GICR_CTLR.EnableLPIs does not stick"
        );

        // CPU interface: system registers, all priorities, Group 1 on.
        // SAFETY: ICC_SRE_EL1 (S3_0_C12_C12_5) |= SRE, ICC_PMR_EL1 (S3_0_C4_C6_0) = 0xff,
        // ICC_BPR1_EL1 (S3_0_C12_C12_3) = 0, ICC_IGRPEN1_EL1 (S3_0_C12_C12_7) = 1: the GICv3
        // CPU interface of this CPU; interrupts stay masked in PSTATE.
        unsafe {
            asm!(
                "mrs {t}, S3_0_C12_C12_5",
                "orr {t}, {t}, #1",
                "msr S3_0_C12_C12_5, {t}",
                "isb",
                "mov {t}, #0xff",
                "msr S3_0_C4_C6_0, {t}",
                "msr S3_0_C12_C12_3, xzr",
                "mov {t}, #1",
                "msr S3_0_C12_C12_7, {t}",
                "isb",
                t = out(reg) _,
                options(nostack),
            );
        }

        // ITS: device and collection tables, command queue, enable.
        let mut found = [false; 2];
        for n in 0..8usize {
            let off = GITS_BASER + 8 * n;
            let b = its.read64(off);
            let kind = (b >> 56) & 7;
            let table = match kind {
                BASER_TYPE_DEVICE => pas.devices,
                BASER_TYPE_COLLECTION => pas.collections,
                _ => continue,
            };
            let page = match (b >> 8) & 3 {
                0 => 1 << 12,
                1 => 1 << 14,
                _ => 1 << 16,
            };
            let pages = (FRAME / page) as u64;
            // Type and Entry_Size are read-only: keep them, and the page size the ITS reports.
            let v = BASER_VALID
                | GITS_INNER_WB
                | (b & (0x7 << 56 | 0x1f << 48 | 0x3 << 8))
                | table
                | SH_INNER
                | (pages - 1);
            its.write64(off, v);
            let back = its.read64(off);
            ensure!(
                back & BASER_VALID != 0 && back & 0x0000_ffff_ffff_0000 == table,
                "GITS_BASER{n} reads {back:#x} after writing {v:#x}"
            );
            found[if kind == BASER_TYPE_DEVICE { 0 } else { 1 }] = true;
        }
        ensure!(
            found == [true, true],
            "the ITS has no device or no collection table register (found {found:?})"
        );
        let cmdq = pas.cmdq;
        its.write64(GITS_CBASER, BASER_VALID | GITS_INNER_WB | cmdq | SH_INNER);
        its.write64(GITS_CWRITER, 0);
        its.doorbell32(GITS_CTLR, GITS_CTLR_ENABLED);
        ensure!(
            its.read32(GITS_CTLR) & GITS_CTLR_ENABLED != 0,
            "GITS_CTLR.Enabled does not stick"
        );

        let mut gic = Gic {
            its,
            cwriter: 0,
            procnum,
            gits_typer,
        };
        // MAPC ICID 0 -> this CPU's redistributor, then SYNC.
        gic.command([CMD_MAPC, 0, 1 << 63 | procnum << 16, 0])?;
        gic.sync()?;
        Ok(gic)
    }

    /// Queues one 32-byte command, moves GITS_CWRITER past it and waits until GITS_CREADR
    /// reaches it (the model runs commands synchronously).
    fn command(&mut self, cmd: [u64; 4]) -> Result<(), Fail> {
        let slot = self.cwriter;
        // SAFETY: `slot` is a 32-byte aligned offset below CMDQ_BYTES; the ITS reads the queue
        // only up to GITS_CWRITER, which still excludes this slot.
        unsafe {
            let base = core::ptr::addr_of_mut!((*mem()).cmdq) as *mut u64;
            for (i, dw) in cmd.iter().enumerate() {
                core::ptr::write_volatile(base.add(slot / 8 + i), *dw);
            }
        }
        self.cwriter = (slot + 32) % CMDQ_BYTES;
        let want = self.cwriter as u64;
        // The doorbell orders the queue writes before the register write.
        self.its.doorbell64(GITS_CWRITER, want);
        let mut last = 0;
        let done = mmio::poll(POLL_LIMIT, || {
            last = self.its.read64(GITS_CREADR);
            (last & GITS_CREADR_STALLED != 0 || last & 0xf_ffe0 == want).then_some(())
        });
        ensure!(
            done.is_some() && last & GITS_CREADR_STALLED == 0,
            "ITS command {:#x} not consumed: GITS_CREADR {last:#x}, GITS_CWRITER {want:#x}",
            cmd[0] & 0xff
        );
        Ok(())
    }

    fn sync(&mut self) -> Result<(), Fail> {
        self.command([CMD_SYNC, 0, self.procnum << 16, 0])
    }

    /// Gives `devid` an interrupt translation table of `2^event_bits` events and maps
    /// `eventid` to LPI `intid` on collection 0, with the LPI enabled at priority 0xa0.
    pub fn map_event(
        &mut self,
        devid: u32,
        eventid: u32,
        intid: u32,
        event_bits: u32,
    ) -> Result<(), Fail> {
        ensure!(
            (LPI_BASE..1 << LPI_ID_BITS).contains(&intid) && eventid < 1 << event_bits,
            "LPI {intid} / event {eventid} out of range"
        );
        // SAFETY: the configuration table byte of `intid` is inside `prop` (checked above); a
        // volatile byte write of memory only the redistributor reads.
        unsafe {
            core::ptr::write_volatile(
                core::ptr::addr_of_mut!((*mem()).prop[(intid - LPI_BASE) as usize]),
                0xa0 | 1,
            );
        }
        let itt = table_pas().itt;
        let dev = u64::from(devid) << 32;
        self.command([CMD_MAPD | dev, u64::from(event_bits - 1), 1 << 63 | itt, 0])?;
        self.command([
            CMD_MAPTI | dev,
            u64::from(intid) << 32 | u64::from(eventid),
            0,
            0,
        ])?;
        // The configuration byte was written before the mapping: make the redistributor read it.
        self.command([CMD_INV | dev, u64::from(eventid), 0, 0])?;
        self.sync()
    }

    /// Makes the ITS itself raise (`devid`, `eventid`) with an INT command: the GIC path without
    /// the device and the SMMU.
    pub fn int(&mut self, devid: u32, eventid: u32) -> Result<(), Fail> {
        self.command([CMD_INT | u64::from(devid) << 32, u64::from(eventid), 0, 0])?;
        self.sync()
    }

    /// Acknowledges every pending Group 1 interrupt (ends each) and returns how many were
    /// `intid` and the first other INTID seen, if any. The model delivers synchronously, so
    /// after the write that raised an LPI it is already pending.
    pub fn take(&self, intid: u32) -> (u32, Option<u32>) {
        let (mut hits, mut other) = (0, None);
        for _ in 0..POLL_LIMIT {
            let got = icc_iar1() & 0xff_ffff;
            if got == SPURIOUS {
                break;
            }
            icc_eoir1(got);
            if got == intid {
                hits += 1;
            } else if other.is_none() {
                other = Some(got);
            }
        }
        (hits, other)
    }

    /// Whether `intid`'s bit is set in the LPI pending table.
    pub fn lpi_pending(&self, intid: u32) -> bool {
        // SAFETY: `intid / 8` is inside the 64 KiB pending table for any LPI below 2^14; a
        // volatile byte read of memory the redistributor writes.
        let byte = unsafe {
            core::ptr::read_volatile(core::ptr::addr_of!((*mem()).pend[(intid / 8) as usize]))
        };
        byte & (1 << (intid % 8)) != 0
    }
}
