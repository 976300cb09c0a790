//! The ACPI I/O Virtualization Reporting Structure, IVRS (AMD I/O Virtualization Technology
//! (IOMMU) Specification, document 48882, revision 3.10, §5.2 "IVRS"): where the AMD-Vi units
//! are, which device IDs each translates, and which memory devices must keep reaching.
//!
//! One file per structure: [`table`] (§5.2.1 the table and `IVinfo`, §5.2.2 the definition
//! blocks), [`ivhd`] (§5.2.2.1-5.2.2.2, types 10h, 11h, 40h), [`device_entry`] (§5.2.2.3),
//! [`ivmd`] (§5.2.2.4, types 20h-22h); [`Ivrs::ats_permission`] answers whether a device may
//! use ATS; [`unit_config`] turns an IVHD into
//! [`crate::amdvi::AmdViConfig`] settings. Facts checked against Linux
//! `drivers/iommu/amd/init.c` and QEMU `hw/i386/acpi-build.c` (`build_amd_iommu`), facts only.
//!
//! ```
//! use iommu_engine::firmware::ivrs::{AmdViUnitDefaults, Ivrs};
//! # fn demo(ivrs_bytes: &[u8]) -> Result<(), iommu_engine::firmware::ivrs::Error> {
//! let ivrs = Ivrs::parse(ivrs_bytes)?; // or Ivrs::find(&map_physical, rsdp_address)
//! // edu at 00:04.0 on segment 0: device ID 0x20.
//! if let Some((unit, run)) = ivrs.unit_for(0, 0x20) {
//!     let defaults = AmdViUnitDefaults::of(&ivrs, &unit)?;
//!     // map defaults.register_base for defaults.register_len bytes, then
//!     // AmdViUnit::new(window, pages, defaults.apply(AmdViConfig::new())),
//!     // and bind the device as run.requester(0x20)
//!     let _ = (defaults, run.requester(0x20));
//! }
//! # Ok(()) }
//! ```

pub mod device_entry;
mod error;
pub mod ivhd;
pub mod ivmd;
pub mod table;
pub mod unit_config;

pub use device_entry::{
    DeviceEntries, DeviceEntry, DeviceRange, DeviceRanges, DteSetting, SpecialVariety,
    EXT_ATS_DISABLED,
};
pub use error::{Error, Structure};
pub use ivhd::{Ivhd, IvhdFlags};
pub use ivmd::{Ivmd, IvmdDevices, IvmdFlags};
pub use table::{Block, Blocks, IvInfo, Ivrs};
pub use unit_config::AmdViUnitDefaults;

#[cfg(test)]
mod tests;
