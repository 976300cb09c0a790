//! The unit's identity: VER, CAP and ECAP (VT-d spec rev 4.1, §11.4.1-§11.4.3), with the QEMU
//! defaults the crate's QEMU scenarios run against and a scalable-mode unit.

use super::regs::*;

/// The unit's identity: VER, CAP and ECAP as software reads them, and the host address width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct VtdModelConfig {
    /// VER register (7:4 major, 3:0 minor).
    pub ver: u32,
    /// CAP register.
    pub cap: u64,
    /// ECAP register.
    pub ecap: u64,
    /// Host address width (the DMAR table's HAW): table-pointer and output bits at or above it
    /// are reserved. Defaults to CAP.MGAW.
    pub haw: u32,
    /// SR-IOV virtual functions and their physical function, `(VF, PF)` requester IDs, as the
    /// model's PCI topology has them: under `ECAP.DIT` a device-TLB invalidation of a VF must
    /// carry the PF's source-id in `PFSID`, of any other device its own.
    pub virtual_functions: [Option<(u16, u16)>; MAX_VIRTUAL_FUNCTIONS],
    /// Whether clearing `FSTS.IQE` resumes fetching at `IQH` (`true`, the default: §6.5.2.10's
    /// hardware), or only the next `IQT` write does (`false`: QEMU 10, whose FSTS write
    /// handler fetches nothing -- a FIXME in `vtd_handle_fsts_write` says so -- and whose
    /// `vtd_handle_iqt_write` fetches when `QIE` is on and `IQE` clear).
    pub iqe_clear_resumes: bool,
    /// Whether a device's page request is taken only when its scalable-mode context entry is
    /// present with `PRE` (Page Request Enable, rev. 4.1 §9.4), as hardware does; otherwise
    /// the unit writes nothing to the page request queue and answers a request with LPIG
    /// itself, "Invalid Request" (see `prq.rs`). `false` (the default) takes requests from
    /// any device, as the model did before: most of the suite raises page requests for
    /// devices it never attached with PRI.
    pub pre_checked: bool,
}

/// Virtual functions a [`VtdModelConfig`] can declare.
pub const MAX_VIRTUAL_FUNCTIONS: usize = 4;

/// QEMU 10 `intel-iommu` CAP with `aw-bits=48` (the default): ND 6 (65536 domains), SAGAW 39 and
/// 48 bit, MGAW 48, FRO 0x22 (fault records at 0x220), SLLPS 2 MiB + 1 GiB, PSI, NFR 0 (one
/// record), MAMV 18, DWD, DRD.
pub const QEMU_CAP: u64 = 0x00d2_008c_222f_0606;
/// QEMU 10 `intel-iommu` ECAP with default properties: QI, PT (the `pt` property defaults to
/// on), IRO 0xf (IOTLB registers at 0xf0); IR off (`intremap` off), SC off, DT off.
pub const QEMU_ECAP: u64 = ECAP_QI | ECAP_PT | 0xf << ECAP_IRO_SHIFT;

impl VtdModelConfig {
    /// QEMU 10 `intel-iommu` defaults: VER 3.0 (QEMU reports 3.0 since scalable mode was
    /// added), [`QEMU_CAP`], [`QEMU_ECAP`], HAW 48.
    pub const fn qemu_default() -> Self {
        Self {
            ver: 0x30,
            cap: QEMU_CAP,
            ecap: QEMU_ECAP,
            haw: 48,
            virtual_functions: [None; MAX_VIRTUAL_FUNCTIONS],
            iqe_clear_resumes: true,
            pre_checked: false,
        }
    }

    /// A scalable-mode unit: [`QEMU_CAP`] plus FS1GP and 5-level SAGAW off; ECAP with C, QI, DT,
    /// PT, SC, IRO 0xf, NEST, ERS, SRS, PSS 19 (20-bit PASIDs), PASID, SMTS, SLADS, SLTS, FLTS.
    /// VER 4.0.
    pub const fn scalable() -> Self {
        Self {
            ver: 0x40,
            cap: QEMU_CAP | CAP_FS1GP,
            ecap: ECAP_C
                | ECAP_QI
                | ECAP_DT
                | ECAP_PT
                | ECAP_SC
                | 0xf << ECAP_IRO_SHIFT
                | ECAP_NEST
                | ECAP_ERS
                | ECAP_SRS
                | 19 << ECAP_PSS_SHIFT
                | ECAP_PASID
                | ECAP_SMTS
                | ECAP_SLADS
                | ECAP_SLTS
                | ECAP_FLTS,
            haw: 48,
            virtual_functions: [None; MAX_VIRTUAL_FUNCTIONS],
            iqe_clear_resumes: true,
            pre_checked: false,
        }
    }

    const fn with_cap_bit(mut self, bit: u64, on: bool) -> Self {
        self.cap = if on { self.cap | bit } else { self.cap & !bit };
        self
    }

    const fn with_ecap_bit(mut self, bit: u64, on: bool) -> Self {
        self.ecap = if on {
            self.ecap | bit
        } else {
            self.ecap & !bit
        };
        self
    }

    /// ECAP.SC: snoop control.
    pub const fn with_sc(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_SC, on)
    }
    /// CAP.PLMR and CAP.PHMR: protected low- and high-memory regions (`PMEN_REG` and the
    /// region registers, which firmware programs through the register window).
    pub const fn with_protected_memory(self, on: bool) -> Self {
        self.with_cap_bit(CAP_PLMR, on).with_cap_bit(CAP_PHMR, on)
    }
    /// CAP.CM: caching mode (not-present entries may be cached).
    pub const fn with_caching_mode(self, on: bool) -> Self {
        self.with_cap_bit(CAP_CM, on)
    }
    /// ECAP.C: page-walk coherency.
    pub const fn with_coherent(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_C, on)
    }
    /// ECAP.QI: queued invalidation.
    pub const fn with_qi(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_QI, on)
    }
    /// ECAP.DT: device-TLB support.
    pub const fn with_dt(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_DT, on)
    }
    /// ECAP.PRS: page requests (the page request queue, page group responses).
    pub const fn with_prs(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_PRS, on)
    }
    /// ECAP.PT: pass-through.
    pub const fn with_pt(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_PT, on)
    }
    /// ECAP.IR: interrupt remapping (enables interrupt-entry-cache descriptors).
    pub const fn with_ir(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_IR, on)
    }
    /// ECAP.NEST: nested translation.
    pub const fn with_nest(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_NEST, on)
    }
    /// ECAP.SRS: supervisor requests (the PASID entry's SRE).
    pub const fn with_srs(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_SRS, on)
    }
    /// CAP.FS5LP: 5-level first-stage paging.
    pub const fn with_fs5lp(self, on: bool) -> Self {
        self.with_cap_bit(CAP_FS5LP, on)
    }
    /// CAP.RWBF: write-buffer flushing required.
    pub const fn with_rwbf(self, on: bool) -> Self {
        self.with_cap_bit(CAP_RWBF, on)
    }
    /// CAP.PSI: page-selective IOTLB invalidation.
    pub const fn with_psi(self, on: bool) -> Self {
        self.with_cap_bit(CAP_PSI, on)
    }
    /// CAP.NFR: number of fault recording registers minus one.
    pub const fn with_nfr(mut self, nfr: u8) -> Self {
        self.cap = self.cap & !(0xff << CAP_NFR_SHIFT) | (nfr as u64) << CAP_NFR_SHIFT;
        self
    }
    /// CAP.MAMV: largest address mask of a page-selective invalidation (6 bits).
    pub const fn with_mamv(mut self, mamv: u8) -> Self {
        self.cap = self.cap & !(0x3f << CAP_MAMV_SHIFT) | ((mamv & 0x3f) as u64) << CAP_MAMV_SHIFT;
        self
    }
    /// CAP.SAGAW (5 bits: bit 1 = 39-bit, bit 2 = 48-bit, bit 3 = 57-bit).
    pub const fn with_sagaw(mut self, sagaw: u8) -> Self {
        self.cap =
            self.cap & !(0x1f << CAP_SAGAW_SHIFT) | ((sagaw & 0x1f) as u64) << CAP_SAGAW_SHIFT;
        self
    }
    /// ECAP.DIT: device-TLB invalidation throttling (`PFSID` checked).
    pub const fn with_dit(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_DIT, on)
    }
    /// ECAP.PDS: page-request drain (the model writes each request to the page request queue
    /// at once, so a drain has nothing in flight to wait for; it is accepted and counted).
    pub const fn with_pds(self, on: bool) -> Self {
        self.with_ecap_bit(ECAP_PDS, on)
    }
    /// Declares requester ID `vf` an SR-IOV virtual function of physical function `pf` (the
    /// first free of `MAX_VIRTUAL_FUNCTIONS` (4) slots; further ones are ignored).
    pub const fn with_virtual_function(mut self, vf: u16, pf: u16) -> Self {
        let mut i = 0;
        while i < MAX_VIRTUAL_FUNCTIONS {
            if self.virtual_functions[i].is_none() {
                self.virtual_functions[i] = Some((vf, pf));
                break;
            }
            i += 1;
        }
        self
    }
    /// The physical function of requester ID `sid`: its declared PF, else itself.
    pub const fn physical_function(&self, sid: u16) -> u16 {
        let mut i = 0;
        while i < MAX_VIRTUAL_FUNCTIONS {
            if let Some((vf, pf)) = self.virtual_functions[i] {
                if vf == sid {
                    return pf;
                }
            }
            i += 1;
        }
        sid
    }
    /// See [`pre_checked`](Self::pre_checked).
    pub const fn with_pre_checked(mut self, on: bool) -> Self {
        self.pre_checked = on;
        self
    }
    /// See [`iqe_clear_resumes`](Self::iqe_clear_resumes): `false` models QEMU, whose queue
    /// stays stopped after `IQE` is cleared until software writes `IQT`.
    pub const fn with_iqe_clear_resumes(mut self, on: bool) -> Self {
        self.iqe_clear_resumes = on;
        self
    }
    /// The host address width (32..=52).
    pub const fn with_haw(mut self, haw: u32) -> Self {
        self.haw = haw;
        self
    }
}
