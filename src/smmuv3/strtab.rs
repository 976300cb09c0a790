//! The stream table: one STE per StreamID, linear or two-level, and STRTAB_BASE(_CFG).
//!
//! Arm IHI 0070 G.b §3.3 "Data structures and translation procedure": §3.3.1 (linear stream
//! table), §3.3.2 (two-level: an L1 table of L1STDs, each pointing at `2^(SPAN-1)` STEs);
//! §5.1 "Level 1 Stream Table Descriptor" (SPAN bits 4:0, L2Ptr bits 51:6); §6.3.23/§6.3.24
//! (STRTAB_BASE: RA bit 62, ADDR 51:6; STRTAB_BASE_CFG: FMT 17:16, SPLIT 10:6, LOG2SIZE 5:0).
//!
//! Level-2 tables are allocated when a StreamID in their span is first written, filled with
//! aborting STEs (V = 1, Config = abort: no C_BAD_STE event storm from neighbours), made visible,
//! and only then linked by their L1STD.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use super::field::{address_bits, table_page, Field};
use super::regs;
use super::ste::Ste;
use super::ste_update::apply_update;
use super::{SmmuError, StreamId};
use crate::mem::{Page, PageAllocator, PhysAddr, WalkerCoherency, PAGE_SHIFT_4K};
use crate::mmio::RegisterWindow;

/// STRTAB_BASE.ADDR, bits 51:6.
pub const STRTAB_BASE_ADDR: Field = Field::new("STRTAB_BASE.ADDR", 51, 6);
/// STRTAB_BASE.RA, bit 62: read-allocate hint.
pub const STRTAB_BASE_RA: u64 = 1 << 62;
/// STRTAB_BASE_CFG.LOG2SIZE, bits 5:0.
pub const CFG_LOG2SIZE: Field = Field::new("LOG2SIZE", 5, 0);
/// STRTAB_BASE_CFG.SPLIT, bits 10:6.
pub const CFG_SPLIT: Field = Field::new("SPLIT", 10, 6);
/// STRTAB_BASE_CFG.FMT, bits 17:16 (0 linear, 1 two-level).
pub const CFG_FMT: Field = Field::new("FMT", 17, 16);
/// L1STD.SPAN, bits 4:0: the L2 table holds `2^(SPAN-1)` STEs; 0 means invalid.
pub const L1STD_SPAN: Field = Field::new("SPAN", 4, 0);
/// L1STD.L2Ptr, bits 51:6.
pub const L1STD_L2PTR: Field = Field::new("L2Ptr", 51, 6);

const STE_LOG2: u32 = 6;

/// Layout of the stream table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StrtabFormat {
    /// One array of STEs.
    Linear,
    /// L1STDs pointing at L2 tables of `2^split` STEs; the spec allows split 6, 8 or 10
    /// (4, 16 or 64 KiB leaves).
    TwoLevel {
        /// SPLIT.
        split: u32,
    },
}

/// A stream table in allocator memory.
///
/// Crate-private: it frees its memory on `Drop`, which is sound only once the unit no longer
/// uses it (translation or the queue turned off and acknowledged). [`SmmuUnit`](super::SmmuUnit)
/// is the one owner that can know it, and leaks the memory when it cannot (its `Drop`).
pub(crate) struct StreamTable<A: PageAllocator> {
    alloc: A,
    coherency: WalkerCoherency,
    fmt: StrtabFormat,
    log2: u32,
    root: Page,
    root_log2: u32,
    /// `IDR5.OAS`: every page of the table lies below `2^oas`.
    oas: u32,
}

// SAFETY: the raw page pointers are owned by the StreamTable (the table's pages, freed only by its `Drop`);
// moving it to another thread moves that ownership, and the memory is accessed only through
// atomics.
unsafe impl<A: PageAllocator + Send> Send for StreamTable<A> {}

impl<A: PageAllocator> StreamTable<A> {
    /// A table for StreamIDs below `2^log2` (`log2` ≤ `IDR1.SIDSIZE` ≤ 32). A linear table is
    /// filled with aborting STEs.
    ///
    /// # Errors
    ///
    /// [`SmmuError::SizeUnsupported`] for `log2 > 32`, a split other than 6/8/10 or above
    /// `log2`; [`SmmuError::NoMemory`]; [`SmmuError::TableOutOfRange`] for a page at or
    /// above `2^oas`, here or when a level-2 table is added.
    pub fn new(
        alloc: A,
        fmt: StrtabFormat,
        log2: u32,
        coherency: WalkerCoherency,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        if log2 > 32 {
            return Err(SmmuError::SizeUnsupported {
                what: "stream table",
                log2,
                max_log2: 32,
            });
        }
        let root_bytes_log2 = match fmt {
            StrtabFormat::Linear => log2 + STE_LOG2,
            StrtabFormat::TwoLevel { split } => {
                if !matches!(split, 6 | 8 | 10) || split > log2 {
                    return Err(SmmuError::SizeUnsupported {
                        what: "SPLIT",
                        log2: split,
                        max_log2: log2.min(10),
                    });
                }
                log2 - split + 3
            }
        };
        let root_log2 = root_bytes_log2.max(PAGE_SHIFT_4K);
        let root = table_page(&alloc, root_log2, oas, "stream table")?;
        let table = Self {
            alloc,
            coherency,
            fmt,
            log2,
            root,
            root_log2,
            oas,
        };
        address_bits(STRTAB_BASE_ADDR, root.pa.get())?;
        if fmt == StrtabFormat::Linear {
            fill_abort(root.va, 1 << log2);
        }
        // Aborting STEs, or invalid L1 descriptors, reach memory before STRTAB_BASE is written.
        coherency.sync(
            &table.alloc,
            root.va,
            1 << root_bytes_log2.max(PAGE_SHIFT_4K),
        );
        Ok(table)
    }

    /// The STRTAB_BASE value.
    pub fn base_register(&self) -> u64 {
        STRTAB_BASE_RA | self.root.pa.get()
    }

    /// The STRTAB_BASE_CFG value.
    pub fn base_cfg_register(&self) -> u32 {
        let (fmt, split) = match self.fmt {
            StrtabFormat::Linear => (0, 0),
            StrtabFormat::TwoLevel { split } => (1, split),
        };
        let w = CFG_LOG2SIZE.set_masked(0, self.log2 as u64);
        let w = CFG_SPLIT.set_masked(w, split as u64);
        CFG_FMT.set_masked(w, fmt) as u32
    }

    /// Writes STRTAB_BASE and STRTAB_BASE_CFG. Only while `CR0.SMMUEN = 0` (§6.3.23).
    pub fn program<W: RegisterWindow + ?Sized>(&self, regs: &W) {
        regs.write64(regs::STRTAB_BASE, self.base_register());
        regs.write32(regs::STRTAB_BASE_CFG, self.base_cfg_register());
    }

    /// Reads STRTAB_BASE and STRTAB_BASE_CFG back: a write the unit ignored would leave it
    /// walking another table (the previous owner's, after a takeover) once enabled.
    ///
    /// # Errors
    /// [`SmmuError::RegisterIgnored`] naming the register that reads otherwise.
    pub fn check_programmed<W: RegisterWindow + ?Sized>(&self, regs: &W) -> Result<(), SmmuError> {
        // Only the fields the unit must hold are compared: RA is a hint an implementation may
        // ignore, and SPLIT is IGNORED with the linear format (§6.3.23, §6.3.24).
        let found = regs.read64(regs::STRTAB_BASE);
        let addr = STRTAB_BASE_ADDR.mask();
        if found & addr != self.base_register() & addr {
            return Err(SmmuError::RegisterIgnored {
                register: "STRTAB_BASE",
                wanted: self.base_register(),
                found,
            });
        }
        let cfg = regs.read32(regs::STRTAB_BASE_CFG);
        let mut held = CFG_FMT.mask() | CFG_LOG2SIZE.mask();
        if matches!(self.fmt, StrtabFormat::TwoLevel { .. }) {
            held |= CFG_SPLIT.mask();
        }
        if u64::from(cfg) & held != u64::from(self.base_cfg_register()) & held {
            return Err(SmmuError::RegisterIgnored {
                register: "STRTAB_BASE_CFG",
                wanted: self.base_cfg_register().into(),
                found: cfg.into(),
            });
        }
        Ok(())
    }

    fn check(&self, sid: StreamId) -> Result<u32, SmmuError> {
        if self.log2 < 32 && sid.0 >> self.log2 != 0 {
            return Err(SmmuError::StreamIdOutOfRange {
                sid: sid.0,
                log2: self.log2,
            });
        }
        Ok(sid.0)
    }

    fn words<'t>(va: NonNull<u8>, index: usize, stride: usize) -> &'t [AtomicU64] {
        // SAFETY: callers pass an index inside a live table page owned by the table, whose
        // entries are `stride` words; 8-byte aligned, accessed only atomically.
        unsafe {
            core::slice::from_raw_parts(va.as_ptr().cast::<AtomicU64>().add(index * stride), stride)
        }
    }

    /// The live STE words of `sid`, allocating its L2 table if `create`.
    // Not inlined: a new level-2 table's locals are not on the stack under an STE update.
    #[inline(never)]
    fn entry(&self, sid: StreamId, create: bool) -> Result<Option<&[AtomicU64; 8]>, SmmuError> {
        let index = self.check(sid)?;
        let (va, local) = match self.fmt {
            StrtabFormat::Linear => (self.root.va, index as usize),
            StrtabFormat::TwoLevel { split } => {
                let l1 = &Self::words(self.root.va, (index >> split) as usize, 1)[0];
                let mut desc = l1.load(Ordering::Acquire);
                if L1STD_SPAN.get(desc) == 0 {
                    if !create {
                        return Ok(None);
                    }
                    desc = self.new_leaf(split)?;
                    // The filled leaf is visible before the descriptor that links it.
                    l1.store(desc, Ordering::Release);
                    self.coherency
                        .sync(&self.alloc, NonNull::from(l1).cast(), 8);
                }
                let pa = PhysAddr::new(L1STD_L2PTR.get(desc) << 6);
                let va = self
                    .alloc
                    .phys_to_virt(pa)
                    .ok_or(SmmuError::NotMapped { address: pa.get() })?;
                (va, (index & ((1 << split) - 1)) as usize)
            }
        };
        Ok(Self::words(va, local, 8).try_into().ok())
    }

    fn new_leaf(&self, split: u32) -> Result<u64, SmmuError> {
        let leaf_log2 = (split + STE_LOG2).max(PAGE_SHIFT_4K);
        let leaf = table_page(&self.alloc, leaf_log2, self.oas, "level-2 stream table")?;
        let l2ptr = match address_bits(L1STD_L2PTR, leaf.pa.get()) {
            Ok(l2ptr) => l2ptr,
            Err(e) => {
                // SAFETY: the page came from `alloc(leaf_log2)` just now and was never linked.
                unsafe { self.alloc.free(leaf, leaf_log2) };
                return Err(e);
            }
        };
        fill_abort(leaf.va, 1 << split);
        self.coherency
            .sync(&self.alloc, leaf.va, 1 << (split + STE_LOG2));
        Ok(l2ptr | L1STD_SPAN.set_masked(0, (split + 1) as u64))
    }

    /// Allocates the level-2 table holding the STE of `sid` if there is none yet (its STEs
    /// abort, as a missing one does), so that a later [`write`](Self::write) needs no memory.
    ///
    /// # Errors
    ///
    /// [`SmmuError::StreamIdOutOfRange`], [`SmmuError::NoMemory`].
    pub fn prepare(&mut self, sid: StreamId) -> Result<(), SmmuError> {
        self.entry(sid, true).map(|_| ())
    }

    /// The STE of `sid` as it is in memory (abort if its L2 table does not exist).
    ///
    /// # Errors
    ///
    /// [`SmmuError::StreamIdOutOfRange`], [`SmmuError::NotMapped`].
    pub fn read(&self, sid: StreamId) -> Result<Ste, SmmuError> {
        Ok(match self.entry(sid, false)? {
            Some(e) => Ste {
                words: core::array::from_fn(|i| e[i].load(Ordering::Acquire)),
            },
            None => Ste::ABORT,
        })
    }

    /// Calls `f` with every StreamID whose STE exists in memory (a linear table has them all;
    /// a two-level one those of its present level-2 tables) and that STE.
    ///
    /// # Errors
    ///
    /// [`SmmuError::NotMapped`] for a level-2 table the allocator cannot translate.
    pub fn for_each_ste(&self, mut f: impl FnMut(StreamId, Ste)) -> Result<(), SmmuError> {
        let (spans, split) = match self.fmt {
            StrtabFormat::Linear => (1u64, self.log2),
            StrtabFormat::TwoLevel { split } => (1u64 << (self.log2 - split), split),
        };
        for span in 0..spans {
            let first = span << split;
            let Ok(first) = u32::try_from(first) else {
                break;
            };
            if self.entry(StreamId(first), false)?.is_none() {
                continue;
            }
            for i in 0..1u64 << split {
                let Ok(sid) = u32::try_from(u64::from(first) + i) else {
                    break;
                };
                f(StreamId(sid), self.read(StreamId(sid))?);
            }
        }
        Ok(())
    }

    /// Changes the live STE of `sid` to `target` following
    /// [`plan_update`](super::ste_update::plan_update) (performed as it is planned, with no
    /// copy of the plan on the stack); at each sync point the entry is cleaned for a
    /// non-coherent unit and `sync` is called, which must issue `CMD_CFGI_STE(sid, Leaf = 0)`
    /// and a CMD_SYNC and wait for it. Returns the number of sync points performed.
    ///
    /// # Errors
    ///
    /// [`SmmuError::StreamIdOutOfRange`], [`SmmuError::NoMemory`], or the first error of `sync`.
    pub fn write(
        &mut self,
        sid: StreamId,
        target: &Ste,
        mut sync: impl FnMut() -> Result<(), SmmuError>,
    ) -> Result<usize, SmmuError> {
        let entry = self
            .entry(sid, true)?
            .ok_or(SmmuError::StreamIdOutOfRange {
                sid: sid.0,
                log2: self.log2,
            })?;
        let current = Ste {
            words: core::array::from_fn(|i| entry[i].load(Ordering::Acquire)),
        };
        let (alloc, coherency) = (&self.alloc, self.coherency);
        apply_update(&current, target, entry, || {
            coherency.sync(alloc, NonNull::from(entry).cast(), 64);
            sync()
        })
    }
}

fn fill_abort(va: NonNull<u8>, count: usize) {
    let base = va.as_ptr().cast::<AtomicU64>();
    for i in 0..count {
        // SAFETY: `va` is a fresh page of at least `count` STEs that no walker sees yet.
        unsafe { (*base.add(i * 8)).store(Ste::ABORT.words[0], Ordering::Relaxed) };
    }
}

impl<A: PageAllocator> Drop for StreamTable<A> {
    /// Frees L2 tables and the root. The owner must have disabled the unit (SMMUEN = 0) or
    /// pointed STRTAB_BASE elsewhere first.
    fn drop(&mut self) {
        if let StrtabFormat::TwoLevel { split } = self.fmt {
            let leaf_log2 = (split + STE_LOG2).max(PAGE_SHIFT_4K);
            for i in 0..(1usize << (self.log2 - split)) {
                let desc = Self::words(self.root.va, i, 1)[0].load(Ordering::Acquire);
                let pa = PhysAddr::new(L1STD_L2PTR.get(desc) << 6);
                if L1STD_SPAN.get(desc) == 0 {
                    continue;
                }
                if let Some(va) = self.alloc.phys_to_virt(pa) {
                    // SAFETY: allocated by `new_leaf` with `leaf_log2`, linked once, unreachable
                    // by the unit per the drop contract.
                    unsafe { self.alloc.free(Page { pa, va }, leaf_log2) };
                }
            }
        }
        // SAFETY: allocated in `new`; unreachable per the drop contract.
        unsafe { self.alloc.free(self.root, self.root_log2) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::ste::tests::s2;
    use crate::smmuv3::ste::SteBuilder;
    use crate::smmuv3::testutil::{ModelSmmu, VecAllocator};

    #[test]
    fn base_cfg_encoding() {
        let alloc = VecAllocator::default();
        let t = StreamTable::new(
            &alloc,
            StrtabFormat::TwoLevel { split: 8 },
            16,
            WalkerCoherency::Coherent,
            52,
        )
        .unwrap();
        // FMT 1 (1 << 16 = 0x1_0000) | SPLIT 8 (8 << 6 = 0x200) | LOG2SIZE 16 (0x10).
        assert_eq!(t.base_cfg_register(), 0x1_0210);
        assert_eq!(t.base_register(), (1 << 62) | t.root.pa.get());
        let m = ModelSmmu::new();
        t.program(&m);
        assert_eq!(m.read32(regs::STRTAB_BASE_CFG), 0x1_0210);
        let l = StreamTable::new(
            &alloc,
            StrtabFormat::Linear,
            5,
            WalkerCoherency::Coherent,
            52,
        )
        .unwrap();
        assert_eq!(l.base_cfg_register(), 5);
        assert!(StreamTable::new(
            &alloc,
            StrtabFormat::TwoLevel { split: 7 },
            16,
            WalkerCoherency::Coherent,
            52
        )
        .is_err());
        assert!(StreamTable::new(
            &alloc,
            StrtabFormat::Linear,
            33,
            WalkerCoherency::Coherent,
            52
        )
        .is_err());
    }

    #[test]
    fn read_back_checks_the_fields_the_unit_must_hold() {
        let alloc = VecAllocator::default();
        let l = StreamTable::new(
            &alloc,
            StrtabFormat::Linear,
            5,
            WalkerCoherency::Coherent,
            52,
        )
        .unwrap();
        let m = ModelSmmu::new();
        l.program(&m);
        assert!(l.check_programmed(&m).is_ok());
        // RA read back as zero, SPLIT (IGNORED when linear) as anything: still the table.
        m.write64(regs::STRTAB_BASE, l.root.pa.get());
        m.write32(regs::STRTAB_BASE_CFG, l.base_cfg_register() | (8 << 6));
        assert!(l.check_programmed(&m).is_ok());
        // Another table's address, or another size: refused with what was found.
        m.write64(regs::STRTAB_BASE, l.base_register() + 0x1000);
        assert!(matches!(
            l.check_programmed(&m),
            Err(SmmuError::RegisterIgnored {
                register: "STRTAB_BASE",
                ..
            })
        ));
        l.program(&m);
        m.write32(regs::STRTAB_BASE_CFG, 4);
        assert!(matches!(
            l.check_programmed(&m),
            Err(SmmuError::RegisterIgnored {
                register: "STRTAB_BASE_CFG",
                found: 4,
                ..
            })
        ));
        // Two-level: SPLIT is held.
        let t = StreamTable::new(
            &alloc,
            StrtabFormat::TwoLevel { split: 8 },
            16,
            WalkerCoherency::Coherent,
            52,
        )
        .unwrap();
        t.program(&m);
        assert!(t.check_programmed(&m).is_ok());
        m.write32(regs::STRTAB_BASE_CFG, t.base_cfg_register() & !(0x1f << 6));
        assert!(t.check_programmed(&m).is_err());
    }

    #[test]
    fn linear_table_starts_aborting() {
        let alloc = VecAllocator::default();
        let mut t = StreamTable::new(
            &alloc,
            StrtabFormat::Linear,
            4,
            WalkerCoherency::NonCoherent,
            52,
        )
        .unwrap();
        assert_eq!(t.read(StreamId(15)).unwrap(), Ste::ABORT);
        assert!(t.read(StreamId(16)).is_err());
        let ste = SteBuilder::bypass().build().unwrap();
        let mut n = 0;
        t.write(StreamId(3), &ste, || {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 2);
        assert_eq!(t.read(StreamId(3)).unwrap(), ste);
    }

    #[test]
    fn two_level_leaves_on_demand() {
        let alloc = VecAllocator::default();
        {
            let mut t = StreamTable::new(
                &alloc,
                StrtabFormat::TwoLevel { split: 6 },
                12,
                WalkerCoherency::Coherent,
                52,
            )
            .unwrap();
            assert_eq!(alloc.live_pages(), 1);
            assert_eq!(t.read(StreamId(0x123)).unwrap(), Ste::ABORT);
            let ste = SteBuilder::stage2(s2(0x20_0000, 4)).build().unwrap();
            t.write(StreamId(0x123), &ste, || Ok(())).unwrap();
            assert_eq!(alloc.live_pages(), 2);
            // L1STD 4 (SIDs 0x100..0x13f): SPAN = 7, L2Ptr = the leaf.
            let desc =
                StreamTable::<&VecAllocator>::words(t.root.va, 4, 1)[0].load(Ordering::Relaxed);
            assert_eq!(desc & 0x1f, 7);
            assert_eq!(t.read(StreamId(0x123)).unwrap(), ste);
            assert_eq!(t.read(StreamId(0x124)).unwrap(), Ste::ABORT);
            let err = t.write(StreamId(0x13f), &ste, || {
                Err(SmmuError::SyncTimeout { prod: 1, cons: 0 })
            });
            assert_eq!(err, Err(SmmuError::SyncTimeout { prod: 1, cons: 0 }));
        }
        assert_eq!(alloc.live_pages(), 0);
    }
}
