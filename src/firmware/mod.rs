//! Firmware tables: where the IOMMUs are, which devices sit behind which unit under which
//! requester ID, and which memory a device must keep reaching, decoded from the tables the
//! platform firmware publishes.
//!
//! - [`acpi`]: the RSDP, the RSDT/XSDT walk and the checked System Description Table header
//!   (ACPI 6.5 §5.2), shared by every ACPI table parser. The embedder maps physical memory
//!   through [`acpi::PhysMemory`]; tables are borrowed, never copied.
//! - [`dmar`]: the Intel VT-d DMAR table (VT-d rev. 4.1 chapter 8): units, device scopes
//!   resolved to requester IDs, reserved memory regions, and the unit configuration defaults.
//! - [`iort`]: the Arm IO Remapping Table (DEN 0049 E.f): requester IDs to (SMMU, StreamID)
//!   and ITS DeviceIDs, the SMMUv3 platform facts, reserved memory ranges per StreamID.
//! - [`ivrs`]: the AMD I/O Virtualization Reporting Structure (AMD IOMMU specification 48882,
//!   §5.2): AMD-Vi units, the device IDs each translates, memory definitions, and the unit
//!   configuration defaults.
//! - [`fdt`]: a flattened device tree's `iommus`, `iommu-map`/`iommu-map-mask` and
//!   `dma-coherent`.
//!
//! Like the rest of the crate this module allocates nothing and never panics: every parser
//! checks every length against the bytes it was given and returns a typed error carrying the
//! offending value; structures are walked with iterators over the borrowed bytes.

pub mod acpi;
pub mod dmar;
pub mod fdt;
pub mod iort;
pub mod ivrs;

#[cfg(test)]
pub(crate) mod testutil;
