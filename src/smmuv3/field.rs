//! Bit fields of SMMUv3 registers and in-memory structures, in the spec's `hi:lo` notation.
//!
//! Arm IHI 0070 G.b, chapter 5 (data structures) and chapter 6 (registers) give every field as an
//! inclusive bit range of a 32- or 64-bit word; [`Field`] carries that range so a declaration
//! reads like the spec's table and the encoders cannot silently truncate a value.

use super::SmmuError;
use crate::mem::{alloc_below, Page, PageAllocator, Unplaced};

/// An inclusive bit range `hi:lo` of one 64-bit word, with the spec's name for error reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// The spec's name of the field.
    pub name: &'static str,
    /// Highest bit, inclusive.
    pub hi: u32,
    /// Lowest bit.
    pub lo: u32,
}

impl Field {
    /// Declares field `hi:lo`. `hi` must be at least `lo` and below 64 (checked at compile time
    /// when used in a `const`).
    pub const fn new(name: &'static str, hi: u32, lo: u32) -> Self {
        assert!(hi < 64 && lo <= hi);
        Self { name, hi, lo }
    }

    /// Width in bits.
    pub const fn width(self) -> u32 {
        self.hi - self.lo + 1
    }

    /// The largest value the field holds.
    pub const fn max(self) -> u64 {
        u64::MAX >> (64 - self.width())
    }

    /// The mask of the field's bits in place.
    pub const fn mask(self) -> u64 {
        self.max() << self.lo
    }

    /// The field's value in `word`.
    pub const fn get(self, word: u64) -> u64 {
        (word >> self.lo) & self.max()
    }

    /// `word` with the field replaced by `value`, or the field and value if it does not fit.
    ///
    /// # Errors
    ///
    /// [`SmmuError::FieldOutOfRange`] when `value` exceeds [`Field::max`].
    pub const fn set(self, word: u64, value: u64) -> Result<u64, SmmuError> {
        if value > self.max() {
            return Err(SmmuError::FieldOutOfRange {
                field: self.name,
                value,
            });
        }
        Ok((word & !self.mask()) | (value << self.lo))
    }

    /// `word` with the field replaced by the low bits of `value`; for values whose range the
    /// caller's type already guarantees (enum discriminants, `u16` into a 16-bit field).
    pub const fn set_masked(self, word: u64, value: u64) -> u64 {
        (word & !self.mask()) | ((value & self.max()) << self.lo)
    }
}

/// The bits `hi:lo` of a physical address, for address fields that hold the address in place
/// (`S2TTB`, `TTB0`, `L2Ptr`, queue and table bases).
///
/// # Errors
///
/// [`SmmuError::AddressMisaligned`] if bits below `lo` are set, [`SmmuError::AddressTooWide`]
/// if bits above `hi` are set.
pub const fn address_bits(field: Field, pa: u64) -> Result<u64, SmmuError> {
    let low = (1u64 << field.lo) - 1;
    if pa & low != 0 {
        return Err(SmmuError::AddressMisaligned {
            field: field.name,
            address: pa,
            align_log2: field.lo,
        });
    }
    if field.hi < 63 && pa >> (field.hi + 1) != 0 {
        return Err(SmmuError::AddressTooWide {
            field: field.name,
            address: pa,
            bits: field.hi + 1,
        });
    }
    Ok(pa)
}

/// A zeroed page of `2^size_log2` bytes for `table`, a structure the unit reads through an
/// address field whose bits at and above `oas` (`IDR5.OAS`) it may drop.
///
/// # Errors
///
/// [`SmmuError::NoMemory`]; [`SmmuError::TableOutOfRange`] (the page was given back).
pub(crate) fn table_page<A: PageAllocator + ?Sized>(
    alloc: &A,
    size_log2: u32,
    oas: u32,
    table: &'static str,
) -> Result<Page, SmmuError> {
    alloc_below(alloc, size_log2, oas).map_err(|e| match e {
        Unplaced::NoMemory => SmmuError::NoMemory { size_log2 },
        Unplaced::Beyond(pa) => SmmuError::TableOutOfRange { table, pa, oas },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_and_range() {
        let f = Field::new("X", 37, 32);
        assert_eq!(f.mask(), 0x3f << 32);
        assert_eq!(f.set(0, 0x19), Ok(0x19 << 32));
        assert_eq!(f.get(0x19 << 32), 0x19);
        assert_eq!(
            f.set(0, 0x40),
            Err(SmmuError::FieldOutOfRange {
                field: "X",
                value: 0x40
            })
        );
        let full = Field::new("Y", 63, 0);
        assert_eq!(full.max(), u64::MAX);
        assert_eq!(full.set(0, u64::MAX), Ok(u64::MAX));
    }

    #[test]
    fn address_checks() {
        let f = Field::new("TTB", 51, 4);
        assert_eq!(address_bits(f, 0x8000_1000), Ok(0x8000_1000));
        assert!(matches!(
            address_bits(f, 0x8000_1008),
            Err(SmmuError::AddressMisaligned { .. })
        ));
        assert!(matches!(
            address_bits(f, 1 << 52),
            Err(SmmuError::AddressTooWide { .. })
        ));
    }
}
