//! From a DRHD (Intel VT-d specification rev. 4.1, §8.3) and the DMAR's host address width
//! (§8.1) to the defaults of the crate's VT-d unit configuration: where its registers are and
//! how wide the platform's physical addresses are.

use super::drhd::Drhd;
use super::error::Error;
use super::table::Dmar;
use crate::mem::PhysAddr;
use crate::vtd::unit::VtdConfig;

/// What the DMAR says about one remapping unit, ready for [`VtdConfig`] and for mapping its
/// register window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdUnitDefaults {
    /// The register window's base (4 KiB aligned).
    pub register_base: PhysAddr,
    /// The register window's length in bytes (`2^Size` 4 KiB pages): what to map.
    pub register_len: u64,
    /// The PCI segment of the unit's devices.
    pub segment: u16,
    /// The DMAR's `Host Address Width` field (HAW - 1).
    pub host_address_width_field: u8,
    /// Whether the unit covers every otherwise unlisted device of its segment.
    pub include_pci_all: bool,
}

impl VtdUnitDefaults {
    /// `config` with the platform's host address width from the DMAR, through
    /// [`VtdConfig::with_dmar_host_address_width`] (its source is then
    /// [`DMAR_HAW`](crate::vtd::platform::DMAR_HAW)).
    pub const fn apply(&self, config: VtdConfig) -> VtdConfig {
        config.with_dmar_host_address_width(self.host_address_width_field)
    }
}

impl Dmar<'_> {
    /// The configuration defaults of the unit `drhd` describes.
    ///
    /// # Errors
    /// [`Error::RegisterBase`] if its register window is not 4 KiB aligned or overflows.
    pub fn unit_defaults(&self, drhd: &Drhd<'_>) -> Result<VtdUnitDefaults, Error> {
        let (register_base, register_len) = drhd.register_window()?;
        Ok(VtdUnitDefaults {
            register_base,
            register_len,
            segment: drhd.segment,
            host_address_width_field: self.host_address_width_field(),
            include_pci_all: drhd.include_pci_all(),
        })
    }
}
