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
    /// `IVinfo.PAsize`: the physical address width, the output limit of every domain.
    pub output_bits: Option<u32>,
    /// `IVinfo.VAsize`: the widest IOVA the unit translates, the limit of a domain's width.
    pub input_bits: Option<u32>,
    /// `IVinfo.GVAsize`: the widest guest virtual address of a v2 (guest) table, in bits.
    pub guest_input_bits: Option<u32>,
}

impl AmdViUnitDefaults {
    /// The defaults of `ivhd`, a unit of `ivrs`.
    ///
    /// # Errors
    /// [`Error::RegisterBase`]; [`Error::AddressSize`] for an `IVinfo` width no unit can have.
    pub fn of(ivrs: &Ivrs<'_>, ivhd: &Ivhd<'_>) -> Result<Self, Error> {
        let (register_base, register_len) = ivhd.register_window()?;
        let info = ivrs.iv_info();
        let width = |field, bits, valid: core::ops::RangeInclusive<u32>| match bits {
            0 => Ok(None),
            b if valid.contains(&b) => Ok(Some(b)),
            bits => Err(Error::AddressSize { field, bits }),
        };
        let guest_input_bits = match info.gva_size() {
            0 => None,
            2 => Some(48),
            3 => Some(57),
            bits => {
                return Err(Error::AddressSize {
                    field: "GVAsize",
                    bits,
                })
            }
        };
        Ok(Self {
            register_base,
            register_len,
            segment: ivhd.segment,
            device_id: ivhd.device_id,
            device_ids: ivhd.last_device_id().map_or(1, |d| u32::from(d) + 1),
            efr_image: ivhd.efr_image.filter(|_| ivrs.iv_info().efr_sup()),
            output_bits: width("PAsize", info.pa_size(), 32..=52)?,
            input_bits: width("VAsize", info.va_size(), 32..=64)?,
            guest_input_bits,
        })
    }

    /// `config` with the device table sized for this unit's devices, its output width at most
    /// `PAsize` (the embedder's `output_bits` is the CPU's: the lower of the two bounds) and its
    /// input width at most `VAsize`. `GVAsize` (48 or 57 bits) bounds nothing the unit builds:
    /// its v2 tables are 4-level, 48 bits.
    pub const fn apply(&self, config: AmdViConfig) -> AmdViConfig {
        let mut config = config.with_device_ids(self.device_ids);
        if let Some(bits) = self.output_bits {
            if bits < config.output_bits {
                config.output_bits = bits;
            }
        }
        if let Some(bits) = self.input_bits {
            if bits < config.input_bits {
                config.input_bits = bits;
            }
        }
        config
    }
}
