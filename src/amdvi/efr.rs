//! IOMMU Extended Feature Register (EFR, MMIO 0x0030) and Extended Feature 2 Register (EFR2,
//! MMIO 0x01A0): AMD I/O Virtualization Technology (IOMMU) Specification, document 48882,
//! revision 3.x, §3.4 "IOMMU MMIO Registers", "IOMMU Extended Feature Register".
//!
//! Bit positions checked against Linux `amd_iommu_types.h` (`FEATURE_*`) and QEMU
//! `amd_iommu.h` (`AMDVI_EXT_FEATURES`), facts only.

use bitflags::bitflags;

bitflags! {
    /// The one-bit features of EFR this driver uses or reports.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct EfrFlags: u64 {
        /// `PreFSup`: PREFETCH_IOMMU_PAGES.
        const PREF_SUP = 1 << 0;
        /// `PPRSup`: peripheral page requests.
        const PPR_SUP = 1 << 1;
        /// `XTSup`: x2APIC.
        const XT_SUP = 1 << 2;
        /// `NXSup`: no-execute in v2 tables.
        const NX_SUP = 1 << 3;
        /// `GTSup`: guest (v2) translation, GCR3 tables.
        const GT_SUP = 1 << 4;
        /// `IASup`: INVALIDATE_IOMMU_ALL.
        const IA_SUP = 1 << 6;
        /// `GASup`: guest virtual APIC.
        const GA_SUP = 1 << 7;
        /// `HESup`: hardware error registers.
        const HE_SUP = 1 << 8;
        /// `PCSup`: performance counters.
        const PC_SUP = 1 << 9;
        /// `GIoSup`: guest I/O protection (`GIoV`).
        const GIO_SUP = 1 << 48;
        /// `HASup`: host access (A) bit updates.
        const HA_SUP = 1 << 49;
        /// `EPHSup`.
        const EPH_SUP = 1 << 50;
        /// `HDSup`: host dirty (D) bit updates (dirty tracking in v1 tables).
        const HD_SUP = 1 << 52;
        /// `SNPSup`.
        const SNP_SUP = 1 << 63;
        /// Bits not interpreted here.
        const _ = !0;
    }
}

/// The Extended Feature Register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Efr(pub u64);

impl Efr {
    /// The one-bit features.
    pub const fn flags(self) -> EfrFlags {
        EfrFlags::from_bits_retain(self.0)
    }

    /// `HATS`, bits 11:10: most levels of a v1 (host) table, 4 + HATS (0: 4, 1: 5, 2: 6);
    /// encoding 3 is reserved (`None`). A unit that reports 0 (QEMU's) is given 4-level tables
    /// at most: 48-bit domains.
    pub const fn host_levels(self) -> Option<u32> {
        match (self.0 >> 10) & 3 {
            3 => None,
            hats => Some(4 + hats as u32),
        }
    }

    /// `GATS`, bits 13:12: levels of a v2 (guest) table, 4 (0) or 5 (1); others reserved.
    pub const fn guest_levels(self) -> Option<u32> {
        match (self.0 >> 12) & 3 {
            0 => Some(4),
            1 => Some(5),
            _ => None,
        }
    }

    /// `GLXSup`, bits 15:14: GCR3 table levels beyond one the unit walks (0: one level only).
    pub const fn glx_sup(self) -> u32 {
        ((self.0 >> 14) & 3) as u32
    }

    /// `PASmax`, bits 36:32: PASIDs have `PASmax + 1` bits (meaningful with `GTSup`).
    pub const fn pasid_bits(self) -> u32 {
        if self.flags().contains(EfrFlags::GT_SUP) {
            ((self.0 >> 32) & 0x1F) as u32 + 1
        } else {
            0
        }
    }
}

/// The Extended Feature 2 Register: reported, not interpreted (its fields concern SNP, vAPIC and
/// interrupt remapping, which this driver leaves off).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Efr2(pub u64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        // GTSup, IASup, HATS = 1, GATS = 1, GLXSup = 1, PASmax = 15.
        let e = Efr(1 << 4 | 1 << 6 | 1 << 10 | 1 << 12 | 1 << 14 | 15 << 32);
        assert_eq!(e.host_levels(), Some(5));
        assert_eq!(e.guest_levels(), Some(5));
        assert_eq!(e.glx_sup(), 1);
        assert_eq!(e.pasid_bits(), 16);
        assert!(e.flags().contains(EfrFlags::IA_SUP));
        assert_eq!(Efr(3 << 10).host_levels(), None);
        assert_eq!(
            Efr(15 << 32).pasid_bits(),
            0,
            "PASmax means nothing without GTSup"
        );
    }
}
