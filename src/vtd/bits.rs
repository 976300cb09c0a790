//! Multi-bit fields written `hi:lo` as the VT-d specification (rev. 4.1) writes them.

/// A field occupying bits `hi:lo` (inclusive) of a 64-bit register or descriptor word.
///
/// Built only from constants in this crate; a malformed field (`lo > hi` or `hi > 63`) has an
/// empty mask, so no accessor can panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Highest bit of the field.
    pub hi: u32,
    /// Lowest bit of the field.
    pub lo: u32,
}

impl Field {
    /// The field `hi:lo`.
    pub(crate) const fn new(hi: u32, lo: u32) -> Self {
        Self { hi, lo }
    }

    /// The field's bits in place.
    pub const fn mask(self) -> u64 {
        if self.lo > self.hi || self.hi > 63 {
            return 0;
        }
        let width = self.hi - self.lo + 1;
        let ones = if width == 64 {
            u64::MAX
        } else {
            (1u64 << width) - 1
        };
        ones << self.lo
    }

    /// The field's value, shifted down.
    pub const fn get(self, word: u64) -> u64 {
        if self.lo > 63 {
            return 0;
        }
        (word & self.mask()) >> self.lo
    }

    /// Whether `value` fits in the field.
    pub const fn fits(self, value: u64) -> bool {
        let mask = self.mask();
        mask != 0 && value <= mask >> self.lo
    }

    /// `word` with the field replaced by `value`, or `None` if `value` does not fit.
    pub const fn set(self, word: u64, value: u64) -> Option<u64> {
        if !self.fits(value) {
            return None;
        }
        Some((word & !self.mask()) | (value << self.lo))
    }

    /// `value` placed in the field, for values the caller's type already bounds (extra bits are
    /// dropped, never shifted into a neighbouring field).
    pub(crate) const fn place(self, value: u64) -> u64 {
        if self.lo > 63 {
            return 0;
        }
        (value << self.lo) & self.mask()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_values() {
        let f = Field::new(17, 8);
        assert_eq!(f.mask(), 0x3_ff00);
        assert_eq!(f.get(0x0f00), 0xf);
        assert_eq!(f.set(0, 0x3ff), Some(0x3_ff00));
        assert_eq!(f.set(0, 0x400), None);
        assert_eq!(Field::new(63, 0).mask(), u64::MAX);
        assert_eq!(Field::new(3, 4).mask(), 0);
        assert_eq!(Field::new(64, 1).get(u64::MAX), 0);
        assert_eq!(Field::new(63, 63).place(3), 1 << 63);
    }
}
