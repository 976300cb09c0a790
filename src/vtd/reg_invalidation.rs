//! Register-based invalidation: Intel VT-d specification rev. 4.1, §6.5.1 (Register-based
//! Invalidation Interface), §11.4.7 (Context Command Register) and §11.4.8 (IOTLB Registers).
//!
//! Used only when `ECAP.QI = 0` or before queued invalidation is enabled: once `GSTS.QIES` is
//! set, hardware ignores these registers. Each command is written with its busy bit (`ICC`,
//! `IVT`) set, and completion is the hardware clearing it; the wait is bounded. Hardware reports
//! the granularity it actually performed (`CAIG`, `IAIG`); `00b` means it ignored the request.

use super::{DomainId, Error, Field, SourceId, Wait};
use crate::mem::Iova;
use crate::mmio::{poll, RegisterWindow};
use crate::vtd::regs::{iotlb_reg, iva_reg, CCMD_REG};

/// Context-cache invalidation granularity (`CCMD.CIRG`, 62:61).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextInvalidation {
    /// 01b: every context-cache entry.
    Global,
    /// 10b: entries tagged with `did`.
    Domain(DomainId),
    /// 11b: entries of `sid` (with `FM` low source-id bits masked) in `did`.
    Device {
        /// Domain the device is in.
        did: DomainId,
        /// Source id.
        sid: SourceId,
        /// Function Mask (0..=3): how many low bits of `sid` to ignore.
        fm: u8,
    },
}

/// `CCMD` fields (§11.4.7).
pub mod ccmd {
    use super::Field;
    /// 63: Invalidate Context-Cache (busy bit).
    pub const ICC: u64 = 1 << 63;
    /// 62:61 Context Invalidation Request Granularity.
    pub const CIRG: Field = Field::new(62, 61);
    /// 60:59 Context Actual Invalidation Granularity.
    pub const CAIG: Field = Field::new(60, 59);
    /// 33:32 Function Mask.
    pub const FM: Field = Field::new(33, 32);
    /// 31:16 Source-ID.
    pub const SID: Field = Field::new(31, 16);
    /// 15:0 Domain-ID.
    pub const DID: Field = Field::new(15, 0);
}

/// `IOTLB_REG` and `IVA_REG` fields (§11.4.8.1, §11.4.8.2).
pub mod iotlb {
    use super::Field;
    /// 63: Invalidate IOTLB (busy bit).
    pub const IVT: u64 = 1 << 63;
    /// 61:60 IOTLB Invalidation Request Granularity.
    pub const IIRG: Field = Field::new(61, 60);
    /// 58:57 IOTLB Actual Invalidation Granularity.
    pub const IAIG: Field = Field::new(58, 57);
    /// 49: Drain Reads.
    pub const DR: u64 = 1 << 49;
    /// 48: Drain Writes.
    pub const DW: u64 = 1 << 48;
    /// 47:32 Domain-ID.
    pub const DID: Field = Field::new(47, 32);
    /// `IVA_REG` 63:12 Address.
    pub const ADDR: Field = Field::new(63, 12);
    /// `IVA_REG` 6: Invalidation Hint (only leaf entries changed).
    pub const IH: u64 = 1 << 6;
    /// `IVA_REG` 5:0 Address Mask: invalidate `2^AM` pages.
    pub const AM: Field = Field::new(5, 0);
}

impl ContextInvalidation {
    /// The `CCMD` value, `ICC` included.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `fm > 3`.
    pub const fn encode(self) -> Result<u64, Error> {
        let (g, did, sid, fm) = match self {
            Self::Global => (1, 0, 0, 0),
            Self::Domain(did) => (2, did.get(), 0, 0),
            Self::Device { did, sid, fm } => (3, did.get(), sid.get(), fm),
        };
        if fm > 3 {
            return Err(Error::InvalidArgument {
                what: "CCMD.FM (0..=3)",
                value: fm as u64,
            });
        }
        Ok(ccmd::ICC
            | ccmd::CIRG.place(g)
            | ccmd::FM.place(fm as u64)
            | ccmd::SID.place(sid as u64)
            | ccmd::DID.place(did as u64))
    }
}

/// IOTLB invalidation granularity for `IOTLB_REG.IIRG`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IotlbInvalidation {
    /// 01b: everything.
    Global,
    /// 10b: every entry tagged with the domain.
    Domain(DomainId),
    /// 11b: `2^am` pages at `addr` (aligned to `2^(12 + am)`) in the domain; needs `CAP.PSI`
    /// and `am <= CAP.MAMV`.
    Page {
        /// Domain.
        did: DomainId,
        /// First page.
        addr: Iova,
        /// Address mask.
        am: u8,
        /// Invalidation hint: only leaf entries changed, paging-structure caches may stay.
        ih: bool,
    },
}

/// Checks a page-selective range: `am` fits 5:0 and `addr` is aligned to `2^(12 + am)`.
pub(crate) const fn check_page_range(addr: Iova, am: u8) -> Result<(), Error> {
    if am > 63 - 12 {
        return Err(Error::InvalidArgument {
            what: "address mask",
            value: am as u64,
        });
    }
    if !addr.is_aligned(12 + am as u32) {
        return Err(Error::InvalidArgument {
            what: "address not aligned to 2^(12+AM)",
            value: addr.get(),
        });
    }
    Ok(())
}

/// Invalidates the context cache through `CCMD` and waits for `ICC` to clear.
///
/// Returns the granularity the hardware actually performed (`CAIG`: 1 global, 2 domain,
/// 3 device), which may be coarser than requested.
///
/// # Errors
/// [`Error::Timeout`] if `ICC` does not clear in `budget` polls (before or after the command);
/// [`Error::InvalidationRejected`] if `CAIG` reads 0.
pub fn invalidate_context<W: RegisterWindow + ?Sized>(
    regs: &W,
    request: ContextInvalidation,
    budget: u32,
) -> Result<u8, Error> {
    let value = request.encode()?;
    let idle = || {
        poll(budget, || {
            (regs.read64(CCMD_REG) & ccmd::ICC == 0).then_some(())
        })
    };
    // A command still in flight must finish first: CCMD holds one request at a time.
    idle().ok_or(Error::Timeout {
        what: Wait::ContextCommand,
        polls: budget,
    })?;
    regs.write64(CCMD_REG, value);
    idle().ok_or(Error::Timeout {
        what: Wait::ContextCommand,
        polls: budget,
    })?;
    let done = regs.read64(CCMD_REG);
    match ccmd::CAIG.get(done) as u8 {
        0 => Err(Error::InvalidationRejected { register: done }),
        g => Ok(g),
    }
}

/// Invalidates the IOTLB through the IOTLB registers at `iotlb_register_offset`
/// (`ECAP.IRO * 16`) and waits for `IVT` to clear. `drain_reads` sets `DR` and `drain_writes`
/// `DW` (use them as `CAP.DRD` and `CAP.DWD` allow, each on its own).
///
/// Returns the actual granularity (`IAIG`: 1 global, 2 domain, 3 page).
///
/// # Errors
/// [`Error::InvalidArgument`] for a misaligned page range; [`Error::Timeout`] if `IVT` does not
/// clear in `budget` polls; [`Error::InvalidationRejected`] if `IAIG` reads 0.
pub fn invalidate_iotlb<W: RegisterWindow + ?Sized>(
    regs: &W,
    iotlb_register_offset: usize,
    request: IotlbInvalidation,
    drain_reads: bool,
    drain_writes: bool,
    budget: u32,
) -> Result<u8, Error> {
    let (g, did) = match request {
        IotlbInvalidation::Global => (1, 0),
        IotlbInvalidation::Domain(did) => (2, did.get()),
        IotlbInvalidation::Page { did, .. } => (3, did.get()),
    };
    let reg = iotlb_reg(iotlb_register_offset);
    let idle = || {
        poll(budget, || {
            (regs.read64(reg) & iotlb::IVT == 0).then_some(())
        })
    };
    idle().ok_or(Error::Timeout {
        what: Wait::IotlbInvalidate,
        polls: budget,
    })?;
    if let IotlbInvalidation::Page { addr, am, ih, .. } = request {
        check_page_range(addr, am)?;
        let ih = if ih { iotlb::IH } else { 0 };
        // IVA_REG must hold the range before IVT is set (§11.4.8.2).
        regs.write64(
            iva_reg(iotlb_register_offset),
            addr.get() | ih | iotlb::AM.place(am as u64),
        );
    }
    let drain = if drain_reads { iotlb::DR } else { 0 } | if drain_writes { iotlb::DW } else { 0 };
    regs.write64(
        reg,
        iotlb::IVT | iotlb::IIRG.place(g) | drain | iotlb::DID.place(did as u64),
    );
    idle().ok_or(Error::Timeout {
        what: Wait::IotlbInvalidate,
        polls: budget,
    })?;
    let done = regs.read64(reg);
    match iotlb::IAIG.get(done) as u8 {
        0 => Err(Error::InvalidationRejected { register: done }),
        g => Ok(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vtd::test_support::{Model, MODEL_IRO};

    #[test]
    fn ccmd_encodings() {
        // Device-selective: ICC (1<<63) | CIRG 11b<<61 (0x6000..) | FM 2<<32 | SID 0x00f8<<16 |
        // DID 0x0042 = 0x8000_0000_0000_0000 + 0x6000_0000_0000_0000 + 0x2_0000_0000
        //            + 0x00f8_0000 + 0x42 = 0xe000_0002_00f8_0042
        let d = ContextInvalidation::Device {
            did: DomainId::new(0x42),
            sid: SourceId::new(0xf8),
            fm: 2,
        };
        assert_eq!(d.encode(), Ok(0xe000_0002_00f8_0042));
        // Global: ICC | 01b<<61 = 0xa000_0000_0000_0000
        assert_eq!(
            ContextInvalidation::Global.encode(),
            Ok(0xa000_0000_0000_0000)
        );
        let bad = ContextInvalidation::Device {
            did: DomainId::new(1),
            sid: SourceId::new(1),
            fm: 4,
        };
        assert!(bad.encode().is_err());
    }

    #[test]
    fn context_invalidation_completes_and_times_out() {
        let m = Model::new();
        assert_eq!(
            invalidate_context(&m, ContextInvalidation::Domain(DomainId::new(5)), 10),
            Ok(2)
        );
        m.freeze_commands(true);
        assert_eq!(
            invalidate_context(&m, ContextInvalidation::Global, 5),
            Err(Error::Timeout {
                what: Wait::ContextCommand,
                polls: 5
            })
        );
    }

    #[test]
    fn page_selective_iotlb() {
        let m = Model::new();
        let req = IotlbInvalidation::Page {
            did: DomainId::new(3),
            addr: Iova::new(0x20_0000),
            am: 9,
            ih: true,
        };
        assert_eq!(
            invalidate_iotlb(&m, MODEL_IRO, req, false, false, 10),
            Ok(3)
        );
        // IVA: 0x20_0000 | IH (0x40) | AM 9 = 0x20_0049
        assert_eq!(m.read64(MODEL_IRO), 0x20_0049);
        // IOTLB_REG after completion: IIRG 11b<<60 | IAIG 11b<<57 | DID 3<<32
        //   = 0x3000_0000_0000_0000 | 0x0600_0000_0000_0000 | 0x3_0000_0000
        assert_eq!(m.read64(MODEL_IRO + 8), 0x3600_0003_0000_0000);
        let misaligned = IotlbInvalidation::Page {
            did: DomainId::new(3),
            addr: Iova::new(0x1000),
            am: 1,
            ih: false,
        };
        assert!(matches!(
            invalidate_iotlb(&m, MODEL_IRO, misaligned, false, false, 10),
            Err(Error::InvalidArgument { .. })
        ));
        m.freeze_commands(true);
        assert!(matches!(
            invalidate_iotlb(&m, MODEL_IRO, IotlbInvalidation::Global, true, true, 4),
            Err(Error::Timeout {
                what: Wait::IotlbInvalidate,
                polls: 4
            })
        ));
    }
}
