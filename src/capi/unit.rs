//! Units over C: creation of VT-d and SMMUv3 units on the embedder's register window.

use crate::iommu::Iommu;

/// One IOMMU unit (a VT-d remapping unit or an SMMUv3).
pub struct IeUnit {
    _opaque: [u8; 0],
}

/// The unit behind an [`IeUnit`] handle.
pub(super) enum UnitObj {}

impl UnitObj {
    /// The unit as the IOASID layer drives it.
    pub(super) fn iommu(&self) -> &dyn Iommu {
        match *self {}
    }
}
