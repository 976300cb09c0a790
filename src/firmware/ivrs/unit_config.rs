//! What an IVHD tells [`crate::amdvi::AmdViConfig`]: AMD I/O Virtualization Technology (IOMMU)
//! Specification, document 48882, revision 3.10, §5.2.2 (IVHD) and §3.4 (the registers).

use super::error::Error;
use super::ivhd::Ivhd;
use super::table::Ivrs;
use crate::amdvi::AmdViConfig;
use crate::mem::PhysAddr;

/// The platform facts of one AMD-Vi unit, as its IVHD (of the type software uses) gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdViUnitDefaults {
    /// `IOMMU Base Address`: where to map the registers.
    pub register_base: PhysAddr,
    /// Bytes of the register window to map (16 KiB).
    pub register_len: u64,
    /// `PCI Segment Group`.
    pub segment: u16,
    /// The unit's own PCI function (`IOMMU DeviceID`).
    pub device_id: u16,
    /// Device IDs `0..device_ids` its device table must cover: one past the highest device ID
    /// its entries name (at least 1).
    pub device_ids: u32,
    /// `EFR Register Image` (types 11h/40h, when `IVinfo.EFRSup`), for checking the register
    /// or deciding before the window is mapped.
    pub efr_image: Option<u64>,
}

impl AmdViUnitDefaults {
    /// The defaults of `ivhd`, a unit of `ivrs`.
    ///
    /// # Errors
    /// [`Error::RegisterBase`].
    pub fn of(ivrs: &Ivrs<'_>, ivhd: &Ivhd<'_>) -> Result<Self, Error> {
        let (register_base, register_len) = ivhd.register_window()?;
        Ok(Self {
            register_base,
            register_len,
            segment: ivhd.segment,
            device_id: ivhd.device_id,
            device_ids: ivhd.last_device_id().map_or(1, |d| u32::from(d) + 1),
            efr_image: ivhd.efr_image.filter(|_| ivrs.iv_info().efr_sup()),
        })
    }

    /// `config` with the device table sized for this unit's devices.
    pub const fn apply(&self, config: AmdViConfig) -> AmdViConfig {
        config.with_device_ids(self.device_ids)
    }
}
