//! The ACPI DMA Remapping Reporting table, DMAR (Intel VT-d specification rev. 4.1, chapter 8
//! "BIOS Considerations"): where the VT-d units are, which devices each one translates, and
//! which memory devices must keep reaching.
//!
//! One file per structure: [`table`] (§8.1 the table, §8.2 structure types), [`drhd`] (§8.3),
//! [`device_scope`] (§8.3.1), [`rmrr`] (§8.4), [`atsr`] (§8.5), [`rhsa`] (§8.6), [`andd`]
//! (§8.7), [`satc`] (§8.8); [`lookup`] answers "which unit covers this requester" and "which
//! regions must it reach", [`ats`] "may it use ATS" (ATSR, SATC), [`unit_config`] turns a
//! DRHD into [`crate::vtd::unit::VtdConfig`] defaults.
//!
//! ```
//! use iommu_engine::firmware::dmar::{BusRange, Dmar};
//! use iommu_engine::vtd::SourceId;
//! # fn demo(dmar_bytes: &[u8]) -> Result<(), iommu_engine::firmware::dmar::Error> {
//! let dmar = Dmar::parse(dmar_bytes)?; // or Dmar::find(&map_physical, rsdp_address)
//! // The embedder reads a bridge's secondary/subordinate bus from configuration space.
//! let buses = |_segment: u16, _bridge: SourceId| -> Option<BusRange> { None };
//! let edu = SourceId::from_bdf(0, 4, 0).unwrap();
//! // An error if a scope that might name edu cannot be followed through `buses`.
//! if let Some(unit) = dmar.unit_for(0, edu, &buses)? {
//!     let defaults = dmar.unit_defaults(&unit.drhd)?;
//!     // map defaults.register_base for defaults.register_len bytes, then
//!     // VtdUnit::new(window, pages, defaults.apply(VtdConfig::legacy()))
//!     for region in dmar.reserved_regions(0, edu, &buses) {
//!         let _identity = region?; // to map one-to-one in edu's domains
//!     }
//! }
//! # Ok(()) }
//! ```

pub mod andd;
pub mod ats;
pub mod atsr;
pub mod device_scope;
pub mod drhd;
mod error;
pub mod lookup;
pub mod rhsa;
pub mod rmrr;
pub mod satc;
pub mod table;
pub mod unit_config;

pub use andd::Andd;
pub use ats::Upstream;
pub use atsr::{Atsr, AtsrFlags};
pub use device_scope::{
    BridgeAnswer, BusRange, DeviceScope, DeviceScopes, NoBusWalk, PathEntry, PciBuses, PciPath,
    ScopeFlags, ScopeType,
};
pub use drhd::{Drhd, DrhdFlags};
pub use error::{Error, Structure};
pub use lookup::{Coverage, CoveringUnit, FunctionKind};
pub use rhsa::Rhsa;
pub use rmrr::Rmrr;
pub use satc::{Satc, SatcFlags};
pub use table::{Dmar, DmarFlags, RemappingStructure, RemappingStructures};
pub use unit_config::VtdUnitDefaults;

#[cfg(test)]
mod tests;
