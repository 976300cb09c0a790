//! The record: a software-only page table holding an IOASID's mappings.
//!
//! An IOASID has mappings before any device is attached, and a unit's domain built later is
//! filled by copying them. They are kept in a table of this format, which no hardware walks,
//! so it needs no invalidation and its pages can be freed at once. It reuses the engine: 4 KiB
//! granule, 57 input bits (5 levels), 2 MiB and 1 GiB leaves, every [`Prot`] bit representable.
//! Entry: bit 0 present, bit 1 table, bits 5:2 the `Prot` bits READ..PRIV and bit 7 `MMIO`
//! (leaves), bit 6 a table made by a split, bits 63:12 the address.

use crate::mem::PhysAddr;
use crate::pgtable::{Error, Format, Geometry, Prot};

const PRESENT: u64 = 1 << 0;
const TABLE: u64 = 1 << 1;
const PROT_SHIFT: u32 = 2;
/// Table entries only: made by a split (see `Format::split_table_bit`).
const SPLIT: u64 = 1 << 6;
/// Leaves only: [`Prot::MMIO`].
const MMIO: u64 = 1 << 7;
const ADDR: u64 = !0xfff;

/// Input width of the record, in bits (the widest VT-d address width).
pub const RECORD_IAS: u32 = 57;

/// The record format.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    geometry: Geometry,
}

impl Record {
    /// The record format: 57-bit IOVAs, 64-bit physical addresses, 4K/2M/1G leaves.
    pub fn new() -> Self {
        let geometry = Geometry {
            granule_log2: 12,
            levels: 5,
            top_bits: 9,
            ias: RECORD_IAS,
            oas: 64,
            page_sizes: 1 << 12 | 1 << 21 | 1 << 30,
        };
        Self { geometry }
    }
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: the geometry is a constant checked by a test, never changed. Table entries carry TABLE
// (bit 1), leaves never do; SPLIT (bit 6) lies outside the address; nothing but the engine
// writes the record. PRESENT (bit 0) clear is not present.
unsafe impl Format for Record {
    fn geometry(&self) -> &Geometry {
        &self.geometry
    }
    fn is_present(&self, raw: u64) -> bool {
        raw & PRESENT != 0
    }
    fn is_table(&self, level: u32, raw: u64) -> bool {
        level > 0 && raw & TABLE != 0
    }
    fn table_address(&self, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR)
    }
    fn encode_table(&self, _level: u32, table: PhysAddr) -> u64 {
        table.get() | PRESENT | TABLE
    }
    fn split_table_bit(&self) -> u64 {
        SPLIT
    }
    fn check_prot(&self, prot: Prot) -> Result<(), Error> {
        if prot.intersects(Prot::READ | Prot::WRITE) {
            Ok(())
        } else {
            Err(Error::UnsupportedProt { prot })
        }
    }
    fn encode_leaf(&self, _level: u32, pa: PhysAddr, prot: Prot) -> u64 {
        let low = u64::from(prot.bits() & 0xf) << PROT_SHIFT;
        let mmio = if prot.contains(Prot::MMIO) { MMIO } else { 0 };
        pa.get() | PRESENT | low | mmio
    }
    fn leaf_address(&self, level: u32, raw: u64) -> PhysAddr {
        PhysAddr::new(raw & ADDR & !((1u64 << self.geometry.level_shift(level)) - 1))
    }
    fn leaf_prot(&self, _level: u32, raw: u64) -> Prot {
        let p = Prot::from_bits_truncate((raw >> PROT_SHIFT & 0xf) as u8);
        if raw & MMIO != 0 {
            p | Prot::MMIO
        } else {
            p
        }
    }
    fn relevel_leaf(&self, raw: u64, _from: u32, _to: u32, pa: PhysAddr) -> u64 {
        (raw & !ADDR) | pa.get()
    }
}
