//! Register layout of the model (VT-d spec rev 4.1, chapter 11 "Register Descriptions", §11.4).
//!
//! Offsets and field positions are written here from the spec's register tables, independently
//! of the driver's `vtd::regs`. Fields are given in the spec's `hi:lo` notation.

use super::bits;

// --- Offsets (§11.4, Table "Address Mapping for Remapping Hardware Registers") ---

/// Version register (32-bit): 7:4 MAX, 3:0 MIN.
pub const VER: usize = 0x00;
/// Capability register (64-bit, read-only).
pub const CAP: usize = 0x08;
/// Extended capability register (64-bit, read-only).
pub const ECAP: usize = 0x10;
/// Global command register (32-bit, write-only: reads return 0).
pub const GCMD: usize = 0x18;
/// Global status register (32-bit, read-only).
pub const GSTS: usize = 0x1C;
/// Root table address register (64-bit).
pub const RTADDR: usize = 0x20;
/// Context command register (64-bit).
pub const CCMD: usize = 0x28;
/// Fault status register (32-bit).
pub const FSTS: usize = 0x34;
/// Fault event control register (32-bit).
pub const FECTL: usize = 0x38;
/// Fault event data register (32-bit).
pub const FEDATA: usize = 0x3C;
/// Fault event address register (32-bit).
pub const FEADDR: usize = 0x40;
/// Fault event upper address register (32-bit).
pub const FEUADDR: usize = 0x44;
/// Protected memory enable register (32-bit): 31 EPM, 0 PRS.
pub const PMEN: usize = 0x64;
/// Protected low-memory base register (32-bit).
pub const PLMBASE: usize = 0x68;
/// Protected low-memory limit register (32-bit).
pub const PLMLIMIT: usize = 0x6C;
/// Protected high-memory base register (64-bit).
pub const PHMBASE: usize = 0x70;
/// Protected high-memory limit register (64-bit).
pub const PHMLIMIT: usize = 0x78;
/// Invalidation queue head register (64-bit, read-only).
pub const IQH: usize = 0x80;
/// Invalidation queue tail register (64-bit).
pub const IQT: usize = 0x88;
/// Invalidation queue address register (64-bit).
pub const IQA: usize = 0x90;
/// Invalidation completion status register (32-bit).
pub const ICS: usize = 0x9C;
/// Invalidation event control register (32-bit).
pub const IECTL: usize = 0xA0;
/// Invalidation event data register (32-bit).
pub const IEDATA: usize = 0xA4;
/// Invalidation event address register (32-bit).
pub const IEADDR: usize = 0xA8;
/// Invalidation event upper address register (32-bit).
pub const IEUADDR: usize = 0xAC;
/// Invalidation queue error record register (64-bit, read-only).
pub const IQERCD: usize = 0xB0;
/// Interrupt remapping table address register (64-bit).
pub const IRTA: usize = 0xB8;
/// Page request queue head register (64-bit, with ECAP.PRS).
pub const PQH: usize = 0xC0;
/// Page request queue tail register (64-bit).
pub const PQT: usize = 0xC8;
/// Page request queue address register (64-bit).
pub const PQA: usize = 0xD0;
/// Page request status register (32-bit).
pub const PRS: usize = 0xDC;
/// Page request event control register (32-bit).
pub const PECTL: usize = 0xE0;
/// Size of the register window the model answers; beyond it reads return all ones.
pub const WINDOW: usize = 0x1000;

// --- CAP (§11.4.2) ---

/// CAP 2:0 ND: number of domains supported, 2^(4 + 2 * ND).
pub const CAP_ND: u64 = bits(2, 0);
/// CAP 4 RWBF: software must flush the write buffer (GCMD.WBF).
pub const CAP_RWBF: u64 = 1 << 4;
/// CAP 5 PLMR: protected low-memory region supported.
pub const CAP_PLMR: u64 = 1 << 5;
/// CAP 6 PHMR: protected high-memory region supported.
pub const CAP_PHMR: u64 = 1 << 6;
/// PMEN 31 EPM: enable protected memory.
pub const PMEN_EPM: u32 = 1 << 31;
/// PMEN 0 PRS: protected region status.
pub const PMEN_PRS: u32 = 1 << 0;
/// CAP 7 CM: caching mode, not-present and erroneous entries may be cached.
pub const CAP_CM: u64 = 1 << 7;
/// CAP 12:8 SAGAW: bit n set = AW value n supported (1: 39-bit, 2: 48-bit, 3: 57-bit).
pub const CAP_SAGAW_SHIFT: u32 = 8;
/// CAP 21:16 MGAW: maximum guest address width minus one.
pub const CAP_MGAW_SHIFT: u32 = 16;
/// CAP 33:24 FRO: fault recording register offset, in 16-byte units.
pub const CAP_FRO_SHIFT: u32 = 24;
/// CAP 37:34 SLLPS: bit 0 = 2 MiB, bit 1 = 1 GiB second-stage pages.
pub const CAP_SLLPS_SHIFT: u32 = 34;
/// CAP 39 PSI: page-selective IOTLB invalidation supported.
pub const CAP_PSI: u64 = 1 << 39;
/// CAP 47:40 NFR: number of fault recording registers minus one.
pub const CAP_NFR_SHIFT: u32 = 40;
/// CAP 53:48 MAMV: maximum address mask value for page-selective invalidation.
pub const CAP_MAMV_SHIFT: u32 = 48;
/// CAP 56 FS1GP (FL1GP): 1 GiB first-stage pages.
pub const CAP_FS1GP: u64 = 1 << 56;
/// CAP 60 FS5LP (FL5LP): 5-level first-stage paging.
pub const CAP_FS5LP: u64 = 1 << 60;

// --- ECAP (§11.4.3) ---

/// ECAP 0 C: page-walk coherency.
pub const ECAP_C: u64 = 1 << 0;
/// ECAP 1 QI: queued invalidation.
pub const ECAP_QI: u64 = 1 << 1;
/// ECAP 2 DT: device-TLB (ATS) support.
pub const ECAP_DT: u64 = 1 << 2;
/// ECAP 3 IR: interrupt remapping.
pub const ECAP_IR: u64 = 1 << 3;
/// ECAP 6 PT: pass-through.
pub const ECAP_PT: u64 = 1 << 6;
/// ECAP 7 SC: snoop control (SNP in second-stage leaves).
pub const ECAP_SC: u64 = 1 << 7;
/// ECAP 17:8 IRO: IOTLB register offset, in 16-byte units.
pub const ECAP_IRO_SHIFT: u32 = 8;
/// ECAP 26 NEST: nested translation.
pub const ECAP_NEST: u64 = 1 << 26;
/// ECAP 29 PRS: page requests.
pub const ECAP_PRS: u64 = 1 << 29;
/// ECAP 30 ERS: execute requests.
pub const ECAP_ERS: u64 = 1 << 30;
/// ECAP 31 SRS: supervisor requests.
pub const ECAP_SRS: u64 = 1 << 31;
/// ECAP 39:35 PSS: PASID size supported minus one.
pub const ECAP_PSS_SHIFT: u32 = 35;
/// ECAP 40 PASID.
pub const ECAP_PASID: u64 = 1 << 40;
/// ECAP 41 DIT: device-TLB invalidation throttle (`PFSID` in device-TLB invalidations).
pub const ECAP_DIT: u64 = 1 << 41;
/// ECAP 42 PDS: page-request drain (the `PD` flag of an invalidation wait).
pub const ECAP_PDS: u64 = 1 << 42;
/// ECAP 43 SMTS: scalable-mode translation.
pub const ECAP_SMTS: u64 = 1 << 43;
/// ECAP 45 SLADS (SSADS): second-stage accessed/dirty.
pub const ECAP_SLADS: u64 = 1 << 45;
/// ECAP 46 SLTS (SSTS): second-stage translation in scalable mode.
pub const ECAP_SLTS: u64 = 1 << 46;
/// ECAP 47 FLTS (FSTS): first-stage translation in scalable mode.
pub const ECAP_FLTS: u64 = 1 << 47;

// --- GCMD / GSTS (§11.4.4, §11.4.5): the same bit positions in both ---

/// TE / TES: translation enable.
pub const G_TE: u32 = 1 << 31;
/// SRTP / RTPS: set root table pointer (one-shot) / root table pointer status.
pub const G_SRTP: u32 = 1 << 30;
/// SFL / FLS: set fault log (one-shot, only with CAP.AFL; not modelled).
pub const G_SFL: u32 = 1 << 29;
/// EAFL / AFLS: enable advanced fault logging (not modelled).
pub const G_EAFL: u32 = 1 << 28;
/// WBF / WBFS: write buffer flush (one-shot, only with CAP.RWBF).
pub const G_WBF: u32 = 1 << 27;
/// QIE / QIES: queued invalidation enable.
pub const G_QIE: u32 = 1 << 26;
/// IRE / IRES: interrupt remapping enable.
pub const G_IRE: u32 = 1 << 25;
/// SIRTP / IRTPS: set interrupt remap table pointer (one-shot).
pub const G_SIRTP: u32 = 1 << 24;
/// CFI / CFIS: compatibility format interrupts.
pub const G_CFI: u32 = 1 << 23;

// --- RTADDR (§11.4.6) ---

/// RTADDR 63:12 RTA.
pub const RTADDR_RTA: u64 = bits(63, 12);
/// RTADDR 11:10 TTM: 00 legacy, 01 scalable, others reserved.
pub const RTADDR_TTM_SHIFT: u32 = 10;

// --- CCMD (§11.4.7) ---

/// CCMD 63 ICC: invalidate context cache (cleared by hardware on completion).
pub const CCMD_ICC: u64 = 1 << 63;
/// CCMD 62:61 CIRG: requested granularity.
pub const CCMD_CIRG_SHIFT: u32 = 61;
/// CCMD 60:59 CAIG: actual granularity.
pub const CCMD_CAIG_SHIFT: u32 = 59;
/// CCMD 33:32 FM: function mask.
pub const CCMD_FM_SHIFT: u32 = 32;
/// CCMD 31:16 SID.
pub const CCMD_SID_SHIFT: u32 = 16;

// --- IOTLB registers (§11.4.8) ---

/// IOTLB_REG 63 IVT: invalidate IOTLB (cleared by hardware on completion).
pub const IOTLB_IVT: u64 = 1 << 63;
/// IOTLB_REG 61:60 IIRG: requested granularity (01 global, 10 domain, 11 page).
pub const IOTLB_IIRG_SHIFT: u32 = 60;
/// IOTLB_REG 58:57 IAIG: actual granularity (00 = request rejected).
pub const IOTLB_IAIG_SHIFT: u32 = 57;
/// IOTLB_REG 47:32 DID.
pub const IOTLB_DID_SHIFT: u32 = 32;
/// IVA_REG 63:12 ADDR.
pub const IVA_ADDR: u64 = bits(63, 12);
/// IVA_REG 6 IH: invalidation hint.
pub const IVA_IH: u64 = 1 << 6;
/// IVA_REG 5:0 AM: address mask.
pub const IVA_AM: u64 = bits(5, 0);

// --- FSTS, FECTL, IECTL (§11.4: Fault Status, Fault Event Control, Invalidation Event Control) ---

/// FSTS 0 PFO: primary fault overflow (RW1C).
pub const FSTS_PFO: u32 = 1 << 0;
/// FSTS 1 PPF: primary pending fault (read-only, OR of the F bits).
pub const FSTS_PPF: u32 = 1 << 1;
/// FSTS 4 IQE: invalidation queue error (RW1C).
pub const FSTS_IQE: u32 = 1 << 4;
/// FSTS 5 ICE: invalidation completion error (RW1C).
pub const FSTS_ICE: u32 = 1 << 5;
/// FSTS 6 ITE: invalidation time-out error (RW1C).
pub const FSTS_ITE: u32 = 1 << 6;
/// FSTS bits software clears by writing 1 (AFO and APF, bits 2 and 3, included).
pub const FSTS_RW1C: u32 = FSTS_PFO | 1 << 2 | 1 << 3 | FSTS_IQE | FSTS_ICE | FSTS_ITE;
/// FSTS 15:8 FRI: fault record index.
pub const FSTS_FRI_SHIFT: u32 = 8;
/// FECTL / IECTL 31 IM: interrupt mask.
pub const EVENT_IM: u32 = 1 << 31;
/// FECTL / IECTL 30 IP: interrupt pending (read-only).
pub const EVENT_IP: u32 = 1 << 30;

// --- Invalidation queue registers (§11.4: IQH, IQT, IQA, ICS, IQERCD) ---

/// IQH / IQT 18:4: offset of the next descriptor, in bytes (128-bit aligned).
pub const IQ_OFFSET: u64 = bits(18, 4);
/// IQA 63:12 IQA: queue base.
pub const IQA_BASE: u64 = bits(63, 12);
/// IQA 11 DW: descriptor width, 1 = 256-bit.
pub const IQA_DW: u64 = 1 << 11;
/// IQA 2:0 QS: queue size, 2^QS 4 KiB pages.
pub const IQA_QS: u64 = bits(2, 0);
/// ICS 0 IWC: invalidation wait descriptor complete (RW1C).
pub const ICS_IWC: u32 = 1 << 0;
/// IQERCD 3:0 IQEI: what the invalidation queue error was (see [`Iqei`](super::Iqei)).
pub const IQERCD_IQEI: u64 = bits(3, 0);
/// IQERCD 47:32 ITESID: source-id of the device-TLB invalidation that timed out.
pub const IQERCD_ITESID_SHIFT: u32 = 32;
/// IQERCD 63:48 ICESID: source-id of the device-TLB invalidation with a completion error.
pub const IQERCD_ICESID_SHIFT: u32 = 48;

// --- Fault Recording Registers (§11.4, at CAP.FRO * 16, 128 bits each) ---

/// FRCD bits 63:12 FI: the faulting page address (low qword).
pub const FRCD_FI: u64 = bits(63, 12);
/// FRCD 79:64 SID (high qword 15:0).
pub const FRCD_HI_SID: u64 = bits(15, 0);
/// FRCD 95 PP: PASID present (high qword 31).
pub const FRCD_HI_PP: u64 = 1 << 31;
/// FRCD 103:96 FR: fault reason (high qword 39:32).
pub const FRCD_HI_FR_SHIFT: u32 = 32;
/// FRCD 123:104 PV: PASID value (high qword 59:40).
pub const FRCD_HI_PV_SHIFT: u32 = 40;
/// FRCD 126 T: request type, 1 = read (or AtomicOp), 0 = write (high qword 62).
pub const FRCD_HI_T: u64 = 1 << 62;
/// FRCD 127 F: fault (RW1C; high qword 63).
pub const FRCD_HI_F: u64 = 1 << 63;
