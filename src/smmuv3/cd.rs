//! The Context Descriptor and the CD table (linear or two-level).
//!
//! Arm IHI 0070 G.b §5.4 "Context Descriptor" (64 bytes: TCR-like fields, ASID, TTB0, MAIR),
//! §5.4.1 "L1CD" (V bit 0, L2Ptr bits 51:12; unlike the L1 stream table descriptor it has no
//! SPAN: a leaf always holds 64 (S1Fmt = 4K) or 1024 (S1Fmt = 64K) CDs), §3.4.3 (CD table
//! layouts selected by STE.S1Fmt/S1CDMax) and §3.21.3 (a CD is made valid by writing V last and
//! invalid by clearing V first; an invalid L1CD may be cached, so publishing one needs CFGI_CD).

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use super::cmd::Command;
use super::field::{address_bits, table_page, Field};
use super::regs::Shareability;
use super::ste::{Cacheability, S1Fmt};
use super::{Asid, SmmuError, StreamId, SubstreamId};
use crate::mem::{Page, PageAllocator, PhysAddr, WalkerCoherency, PAGE_SHIFT_4K};

/// `CD[5:0]`: 64 - VA bits of TTB0's region.
pub const T0SZ: Field = Field::new("T0SZ", 5, 0);
/// `CD[7:6]`: TTB0 granule.
pub const TG0: Field = Field::new("TG0", 7, 6);
/// `CD[9:8]`: inner cacheability of TTB0 walks.
pub const IR0: Field = Field::new("IR0", 9, 8);
/// `CD[11:10]`: outer cacheability of TTB0 walks.
pub const OR0: Field = Field::new("OR0", 11, 10);
/// `CD[13:12]`: shareability of TTB0 walks.
pub const SH0: Field = Field::new("SH0", 13, 12);
/// `CD[14]`: TTB0 walks disabled.
pub const EPD0: u64 = 1 << 14;
/// `CD[15]`: big-endian walks.
pub const ENDI: u64 = 1 << 15;
/// `CD[30]`: TTB1 walks disabled.
pub const EPD1: u64 = 1 << 30;
/// `CD[31]`: valid.
pub const V: u64 = 1 << 31;
/// `CD[34:32]`: intermediate (output) physical size, OAS encoding.
pub const IPS: Field = Field::new("IPS", 34, 32);
/// `CD[35]`: access flag fault disable.
pub const AFFD: u64 = 1 << 35;
/// `CD[36]`: write implies execute-never.
pub const WXN: u64 = 1 << 36;
/// `CD[37]`: unprivileged write implies privileged execute-never.
pub const UWXN: u64 = 1 << 37;
/// `CD[38]`: top byte ignore for TTB0 addresses.
pub const TBI0: u64 = 1 << 38;
/// `CD[41]`: AArch64 tables.
pub const AA64: u64 = 1 << 41;
/// `CD[42]`: hardware dirty update.
pub const HD: u64 = 1 << 42;
/// `CD[43]`: hardware access flag update.
pub const HA: u64 = 1 << 43;
/// `CD[44]`: stall on faults.
pub const S: u64 = 1 << 44;
/// `CD[45]`: record faults.
pub const R: u64 = 1 << 45;
/// `CD[46]`: abort (terminate) faulting transactions rather than RAZ/WI.
pub const A: u64 = 1 << 46;
/// `CD[47]`: ASID set (1: not shared with broadcast TLBI).
pub const ASET: u64 = 1 << 47;
/// `CD[63:48]`.
pub const ASID: Field = Field::new("ASID", 63, 48);
/// `CD[64]`, word 1 bit 0: TTB0 walks non-secure.
pub const NSCFG0: u64 = 1 << 0;
/// `CD[65]`, word 1 bit 1: hierarchical attribute disable for TTB0 (with `IDR3.HAD`).
pub const HAD0: u64 = 1 << 1;
/// `CD[115:68]`, word 1 bits 51:4.
pub const TTB0: Field = Field::new("TTB0", 51, 4);
/// `CD[223:192]`, word 3 bits 31:0.
pub const MAIR0: Field = Field::new("MAIR0", 31, 0);
/// `CD[255:224]`, word 3 bits 63:32.
pub const MAIR1: Field = Field::new("MAIR1", 63, 32);
/// L1CD bit 0.
pub const L1CD_V: u64 = 1;
/// L1CD bits 51:12.
pub const L1CD_L2PTR: Field = Field::new("L2Ptr", 51, 12);

/// `TG0`: stage-1 granule (the TCR_EL1.TG0 encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tg0 {
    /// 4 KiB.
    Size4K = 0,
    /// 64 KiB.
    Size64K = 1,
    /// 16 KiB.
    Size16K = 2,
}

/// A Context Descriptor as eight little-endian words.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C, align(64))]
pub struct Cd {
    /// The words, in table order.
    pub words: [u64; 8],
}

const _: () = assert!(core::mem::size_of::<Cd>() == 64);

/// The fields of a stage-1 context; [`Stage1Context::encode`] checks and packs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage1Context {
    /// T0SZ (16..=39 for 4 KiB with 4 levels; up to 48 with `IDR3.STT`).
    pub t0sz: u8,
    /// TG0.
    pub tg0: Tg0,
    /// IR0.
    pub ir0: Cacheability,
    /// OR0.
    pub or0: Cacheability,
    /// SH0.
    pub sh0: Shareability,
    /// ENDI.
    pub endi: bool,
    /// IPS, in the OAS encoding.
    pub ips: u8,
    /// AFFD.
    pub affd: bool,
    /// WXN.
    pub wxn: bool,
    /// UWXN.
    pub uwxn: bool,
    /// TBI0.
    pub tbi0: bool,
    /// HD.
    pub hd: bool,
    /// HA.
    pub ha: bool,
    /// S: stall faults (only where the STE and IDR0.STALL_MODEL allow).
    pub s: bool,
    /// R: record faults.
    pub r: bool,
    /// A: abort faulting transactions.
    pub a: bool,
    /// ASET.
    pub aset: bool,
    /// ASID.
    pub asid: Asid,
    /// NSCFG0.
    pub nscfg0: bool,
    /// HAD0.
    pub had0: bool,
    /// TTB0: the stage-1 table.
    pub ttb0: PhysAddr,
    /// MAIR_EL1-style attributes: MAIR0 in bits 31:0, MAIR1 in bits 63:32.
    pub mair: u64,
}

impl Stage1Context {
    /// The CD, valid, AArch64, with TTB1 walks disabled (EPD1).
    ///
    /// # Errors
    ///
    /// A field error for T0SZ > 63, IPS > 6 or a misaligned or too wide TTB0.
    pub fn encode(&self) -> Result<Cd, SmmuError> {
        if self.ips > 6 {
            return Err(SmmuError::FieldOutOfRange {
                field: "IPS",
                value: self.ips as u64,
            });
        }
        let mut w0 = T0SZ.set(0, self.t0sz as u64)?;
        w0 = TG0.set_masked(w0, self.tg0 as u64);
        w0 = IR0.set_masked(w0, self.ir0 as u64);
        w0 = OR0.set_masked(w0, self.or0 as u64);
        w0 = SH0.set_masked(w0, self.sh0 as u64);
        w0 = IPS.set_masked(w0, self.ips as u64);
        w0 = ASID.set_masked(w0, self.asid.0 as u64);
        w0 |= EPD1 | V | AA64;
        for (on, bit) in [
            (self.endi, ENDI),
            (self.affd, AFFD),
            (self.wxn, WXN),
            (self.uwxn, UWXN),
            (self.tbi0, TBI0),
            (self.hd, HD),
            (self.ha, HA),
            (self.s, S),
            (self.r, R),
            (self.a, A),
            (self.aset, ASET),
        ] {
            if on {
                w0 |= bit;
            }
        }
        let mut w1 = address_bits(TTB0, self.ttb0.get())?;
        if self.nscfg0 {
            w1 |= NSCFG0;
        }
        if self.had0 {
            w1 |= HAD0;
        }
        Ok(Cd {
            words: [w0, w1, 0, self.mair, 0, 0, 0, 0],
        })
    }
}

/// A CD table change the unit must be told about: issue [`CdSync::command`] for every StreamID
/// whose STE points at the table, then a CMD_SYNC, before relying on the change.
#[must_use = "the unit may keep using the old CD until CFGI_CD and CMD_SYNC complete"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CdSync {
    /// The SubstreamID changed.
    pub ssid: SubstreamId,
    /// Whether only the CD changed (false when an L1CD was published too).
    pub leaf: bool,
}

impl CdSync {
    /// The CFGI_CD for `sid`.
    pub const fn command(&self, sid: StreamId) -> Command {
        Command::cfgi_cd(sid, self.ssid, self.leaf)
    }
}

/// A CD table in allocator memory: `2^S1CDMax` CDs, linear or two-level.
///
/// Crate-private: it frees its memory on `Drop`, which is sound only once the unit no longer
/// uses it (translation or the queue turned off and acknowledged). [`SmmuUnit`](super::SmmuUnit)
/// is the one owner that can know it, and leaks the memory when it cannot (its `Drop`).
pub(crate) struct CdTable<A: PageAllocator> {
    alloc: A,
    coherency: WalkerCoherency,
    fmt: S1Fmt,
    cdmax: u32,
    root: Page,
    root_log2: u32,
    /// `IDR5.OAS`: every page of the table lies below `2^oas`.
    oas: u32,
}

const CD_LOG2: u32 = 6;

// SAFETY: the raw page pointers are owned by the CdTable (the table's pages, freed only by its `Drop`);
// moving it to another thread moves that ownership, and the memory is accessed only through
// atomics.
unsafe impl<A: PageAllocator + Send> Send for CdTable<A> {}

impl<A: PageAllocator> CdTable<A> {
    /// Allocates an empty table for `2^cdmax` SubstreamIDs (`cdmax` ≤ `IDR1.SSIDSIZE` ≤ 20).
    /// A two-level format with `cdmax` not above its leaf size is built linear.
    ///
    /// # Errors
    ///
    /// [`SmmuError::SizeUnsupported`] for `cdmax > 20`, [`SmmuError::NoMemory`];
    /// [`SmmuError::TableOutOfRange`] for a page at or above `2^oas`, here or when a leaf is
    /// added.
    pub fn new(
        alloc: A,
        fmt: S1Fmt,
        cdmax: u32,
        coherency: WalkerCoherency,
        oas: u32,
    ) -> Result<Self, SmmuError> {
        if cdmax > 20 {
            return Err(SmmuError::SizeUnsupported {
                what: "CD table",
                log2: cdmax,
                max_log2: 20,
            });
        }
        let fmt = if cdmax <= split(fmt) {
            S1Fmt::Linear
        } else {
            fmt
        };
        let entries_log2 = match fmt {
            S1Fmt::Linear => cdmax + CD_LOG2,
            _ => cdmax - split(fmt) + 3,
        };
        let root_log2 = entries_log2.max(PAGE_SHIFT_4K);
        let root = table_page(&alloc, root_log2, oas, "CD table")?;
        let table = Self {
            alloc,
            coherency,
            fmt,
            cdmax,
            root,
            root_log2,
            oas,
        };
        address_bits(super::ste::S1CONTEXTPTR, root.pa.get())?;
        // The zeroed table (every CD or L1CD invalid) must reach memory before an STE points
        // at it: a non-coherent unit would otherwise read whatever memory held.
        coherency.sync(&table.alloc, root.va, 1 << root_log2);
        Ok(table)
    }

    /// STE.S1ContextPtr.
    pub fn context_ptr(&self) -> PhysAddr {
        self.root.pa
    }
    /// STE.S1Fmt.
    pub fn fmt(&self) -> S1Fmt {
        self.fmt
    }
    /// STE.S1CDMax.
    pub fn cdmax(&self) -> u8 {
        self.cdmax as u8
    }

    fn words_at(&self, va: NonNull<u8>, index: usize, stride: usize) -> &[AtomicU64] {
        // SAFETY: callers pass an index inside a live table page of this object whose entries
        // are `stride` words; the memory is 8-byte aligned and accessed only atomically.
        unsafe {
            core::slice::from_raw_parts(va.as_ptr().cast::<AtomicU64>().add(index * stride), stride)
        }
    }

    /// The CD slot of `ssid`, allocating its leaf table if `create`; with whether an L1CD was
    /// published.
    fn slot(
        &self,
        ssid: SubstreamId,
        create: bool,
    ) -> Result<Option<(&[AtomicU64], bool)>, SmmuError> {
        let index = ssid.get();
        if index >> self.cdmax != 0 {
            return Err(SmmuError::SubstreamIdOutOfRange {
                ssid: index,
                log2: self.cdmax,
            });
        }
        if self.fmt == S1Fmt::Linear {
            return Ok(Some((
                self.words_at(self.root.va, index as usize, 8),
                false,
            )));
        }
        let split = split(self.fmt);
        let l1 = &self.words_at(self.root.va, (index >> split) as usize, 1)[0];
        let mut published = false;
        let mut desc = l1.load(Ordering::Acquire);
        if desc & L1CD_V == 0 {
            if !create {
                return Ok(None);
            }
            let leaf_log2 = (split + CD_LOG2).max(PAGE_SHIFT_4K);
            let leaf = table_page(&self.alloc, leaf_log2, self.oas, "level-2 CD table")?;
            desc = match address_bits(L1CD_L2PTR, leaf.pa.get()) {
                Ok(l2ptr) => l2ptr | L1CD_V,
                Err(e) => {
                    // SAFETY: the page came from `alloc(leaf_log2)` just now, never linked.
                    unsafe { self.alloc.free(leaf, leaf_log2) };
                    return Err(e);
                }
            };
            self.coherency.sync(&self.alloc, leaf.va, 1 << leaf_log2);
            // The zeroed leaf is visible before the descriptor that links it.
            l1.store(desc, Ordering::Release);
            self.coherency
                .sync(&self.alloc, NonNull::from(l1).cast(), 8);
            published = true;
        }
        let leaf_pa = PhysAddr::new(L1CD_L2PTR.get(desc) << 12);
        let va = self
            .alloc
            .phys_to_virt(leaf_pa)
            .ok_or(SmmuError::NotMapped {
                address: leaf_pa.get(),
            })?;
        let local = (index & ((1 << split) - 1)) as usize;
        Ok(Some((self.words_at(va, local, 8), published)))
    }

    /// Allocates the leaf table that will hold the CD of `ssid` if there is none yet, so that a
    /// later [`install`](Self::install) or [`install_live`](Self::install_live) needs no memory.
    /// Returns whether an L1CD was published (the first CFGI_CD after that install must then
    /// not be leaf-only).
    ///
    /// # Errors
    ///
    /// [`SmmuError::SubstreamIdOutOfRange`], [`SmmuError::NoMemory`].
    pub fn prepare(&mut self, ssid: SubstreamId) -> Result<bool, SmmuError> {
        Ok(self
            .slot(ssid, true)?
            .is_some_and(|(_, published)| published))
    }

    /// Installs `cd` for `ssid` in a table no STE points at yet: words 1-7 first, then word 0
    /// (which holds V). The unit cannot have fetched the slot, so nothing it caches is torn;
    /// for a table the unit may be reading, use [`install_live`](Self::install_live).
    ///
    /// # Errors
    ///
    /// [`SmmuError::DescriptorLive`] if a valid CD is there (remove it first),
    /// [`SmmuError::SubstreamIdOutOfRange`], [`SmmuError::NoMemory`].
    pub fn install(&mut self, ssid: SubstreamId, cd: &Cd) -> Result<CdSync, SmmuError> {
        let (slot, published) = self.fill(ssid, cd)?;
        if let Some(w0) = slot.first() {
            w0.store(cd.words[0], Ordering::Release);
        }
        self.flush(slot);
        Ok(CdSync {
            ssid,
            leaf: !published,
        })
    }

    /// Installs `cd` for `ssid` in a table a live STE points at, by the procedure of §3.21.3.1:
    /// the unit may fetch the slot at any time and its words in any order, so it could pair the
    /// new V = 1 with the slot's old words (a removed domain's TTB0, or zeroes) and fill its TLB
    /// from that. Every word is written with V = 0, then `sync` must issue the given
    /// [`CdSync`] command and a CMD_SYNC and wait (dropping any torn copy), and only then is V
    /// set. The returned [`CdSync`] is for that last write.
    ///
    /// # Errors
    ///
    /// As [`install`](Self::install), or the error of `sync` (the CD is then left invalid).
    pub fn install_live<E: From<SmmuError>>(
        &mut self,
        ssid: SubstreamId,
        cd: &Cd,
        mut sync: impl FnMut(CdSync) -> Result<(), E>,
    ) -> Result<CdSync, E> {
        let (slot, published) = self.fill(ssid, cd)?;
        let Some(w0) = slot.first() else {
            return Err(SmmuError::SubstreamIdOutOfRange {
                ssid: ssid.get(),
                log2: self.cdmax,
            }
            .into());
        };
        w0.store(cd.words[0] & !V, Ordering::Release);
        self.flush(slot);
        sync(CdSync {
            ssid,
            leaf: !published,
        })?;
        w0.store(cd.words[0], Ordering::Release);
        self.flush(slot);
        Ok(CdSync { ssid, leaf: true })
    }

    /// Writes words 1-7 of `cd` into the (invalid) slot of `ssid` and cleans them for a
    /// non-coherent unit; returns the slot and whether an L1CD was published.
    fn fill(&self, ssid: SubstreamId, cd: &Cd) -> Result<(&[AtomicU64], bool), SmmuError> {
        let Some((slot, published)) = self.slot(ssid, true)? else {
            return Err(SmmuError::SubstreamIdOutOfRange {
                ssid: ssid.get(),
                log2: self.cdmax,
            });
        };
        if slot
            .first()
            .is_some_and(|w| w.load(Ordering::Acquire) & V != 0)
        {
            return Err(SmmuError::DescriptorLive {
                what: "CD",
                index: ssid.get(),
            });
        }
        for (w, v) in slot.iter().zip(cd.words.iter()).skip(1) {
            w.store(*v, Ordering::Relaxed);
        }
        self.flush(slot);
        Ok((slot, published))
    }

    /// Makes the CD of `ssid` invalid by clearing V (word 0) first; the other words are left as
    /// they were since the unit ignores them once V = 0 is seen.
    ///
    /// # Errors
    ///
    /// [`SmmuError::SubstreamIdOutOfRange`].
    pub fn remove(&mut self, ssid: SubstreamId) -> Result<CdSync, SmmuError> {
        if let Some((slot, _)) = self.slot(ssid, false)? {
            if let Some(w0) = slot.first() {
                w0.fetch_and(!V, Ordering::Release);
            }
            self.flush(slot);
        }
        Ok(CdSync { ssid, leaf: true })
    }

    /// The CD of `ssid` as it is in memory (zero if its leaf does not exist).
    ///
    /// # Errors
    ///
    /// [`SmmuError::SubstreamIdOutOfRange`].
    pub fn read(&self, ssid: SubstreamId) -> Result<Cd, SmmuError> {
        let mut cd = Cd { words: [0; 8] };
        if let Some((slot, _)) = self.slot(ssid, false)? {
            for (d, w) in cd.words.iter_mut().zip(slot) {
                *d = w.load(Ordering::Acquire);
            }
        }
        Ok(cd)
    }

    fn flush(&self, slot: &[AtomicU64]) {
        if let Some(first) = slot.first() {
            self.coherency
                .sync(&self.alloc, NonNull::from(first).cast(), 64);
        }
    }
}

const fn split(fmt: S1Fmt) -> u32 {
    match fmt {
        S1Fmt::Linear | S1Fmt::TwoLevel64K => 10,
        S1Fmt::TwoLevel4K => 6,
    }
}

impl<A: PageAllocator> Drop for CdTable<A> {
    /// Frees the leaves and the root. The owner must have made every STE pointing here
    /// invalid (or pointing elsewhere) and synced before dropping the table.
    fn drop(&mut self) {
        if self.fmt != S1Fmt::Linear {
            let split = split(self.fmt);
            let leaf_log2 = (split + CD_LOG2).max(PAGE_SHIFT_4K);
            for i in 0..(1usize << (self.cdmax - split)) {
                let desc = self.words_at(self.root.va, i, 1)[0].load(Ordering::Acquire);
                let pa = PhysAddr::new(L1CD_L2PTR.get(desc) << 12);
                if desc & L1CD_V == 0 {
                    continue;
                }
                if let Some(va) = self.alloc.phys_to_virt(pa) {
                    // SAFETY: the leaf was allocated by `slot` with `leaf_log2`, linked only here,
                    // and the drop contract says the unit no longer walks this table.
                    unsafe { self.alloc.free(Page { pa, va }, leaf_log2) };
                }
            }
        }
        // SAFETY: as above, for the root allocated in `new`.
        unsafe { self.alloc.free(self.root, self.root_log2) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::testutil::VecAllocator;

    fn ctx() -> Stage1Context {
        Stage1Context {
            t0sz: 16,
            tg0: Tg0::Size4K,
            ir0: Cacheability::WriteBackAllocate,
            or0: Cacheability::WriteBackAllocate,
            sh0: Shareability::Inner,
            endi: false,
            ips: 5,
            affd: false,
            wxn: false,
            uwxn: false,
            tbi0: false,
            hd: false,
            ha: true,
            s: false,
            r: true,
            a: true,
            aset: true,
            asid: Asid(0x42),
            nscfg0: false,
            had0: false,
            ttb0: PhysAddr::new(0x8_1234_5000),
            mair: 0x0000_0000_0044_ff04,
        }
    }

    #[test]
    fn cd_words() {
        let cd = ctx().encode().unwrap();
        // T0SZ 16 (0x10); IR0/OR0 1 (0x100 | 0x400); SH0 3 (0x3000); EPD1 (0x4000_0000);
        // V (0x8000_0000); IPS 5 (0x5_0000_0000); AA64 (1 << 41 = 0x200_0000_0000); HA (1 << 43
        // = 0x800_0000_0000); R (1 << 45 = 0x2000_0000_0000); A (1 << 46 = 0x4000_0000_0000);
        // ASET (1 << 47 = 0x8000_0000_0000); ASID 0x42 << 48.
        // Sum: 0x0042_ea05_c000_3510.
        assert_eq!(cd.words[0], 0x0042_ea05_c000_3510);
        assert_eq!(cd.words[1], 0x8_1234_5000);
        assert_eq!(cd.words[3], 0x44_ff04);
        assert!(Stage1Context { ips: 7, ..ctx() }.encode().is_err());
        assert!(Stage1Context {
            ttb0: PhysAddr::new(0x1008),
            ..ctx()
        }
        .encode()
        .is_err());
    }

    #[test]
    fn linear_install_and_remove() {
        let alloc = VecAllocator::default();
        let mut t =
            CdTable::new(&alloc, S1Fmt::Linear, 4, WalkerCoherency::NonCoherent, 52).unwrap();
        assert_eq!(t.fmt(), S1Fmt::Linear);
        let cd = ctx().encode().unwrap();
        let ssid = SubstreamId::new(3).unwrap();
        let s = t.install(ssid, &cd).unwrap();
        assert_eq!(s, CdSync { ssid, leaf: true });
        assert_eq!(
            s.command(StreamId(9)),
            Command::cfgi_cd(StreamId(9), ssid, true)
        );
        assert_eq!(t.read(ssid).unwrap(), cd);
        assert!(alloc.syncs.get() >= 2);
        assert_eq!(
            t.install(ssid, &cd),
            Err(SmmuError::DescriptorLive {
                what: "CD",
                index: 3
            })
        );
        let _ = t.remove(ssid).unwrap();
        assert_eq!(t.read(ssid).unwrap().words[0] & V, 0);
        let _ = t.install(ssid, &cd).unwrap();
        assert!(matches!(
            t.install(SubstreamId::new(16).unwrap(), &cd),
            Err(SmmuError::SubstreamIdOutOfRange { ssid: 16, log2: 4 })
        ));
    }

    #[test]
    fn two_level_allocates_leaves_on_demand() {
        let alloc = VecAllocator::default();
        {
            let mut t =
                CdTable::new(&alloc, S1Fmt::TwoLevel4K, 12, WalkerCoherency::Coherent, 52).unwrap();
            assert_eq!(alloc.live_pages(), 1);
            let cd = ctx().encode().unwrap();
            let a = SubstreamId::new(0x41).unwrap();
            let s = t.install(a, &cd).unwrap();
            // A new L1CD was published: the invalidation must not be leaf-only.
            assert!(!s.leaf);
            assert_eq!(alloc.live_pages(), 2);
            let b = SubstreamId::new(0x42).unwrap();
            assert!(t.install(b, &cd).unwrap().leaf);
            assert_eq!(alloc.live_pages(), 2);
            assert_eq!(t.read(b).unwrap(), cd);
            // L1CD 1 (SSIDs 64..127): V | L2Ptr.
            let l1 = t.words_at(t.root.va, 1, 1)[0].load(Ordering::Relaxed);
            assert_eq!(l1 & L1CD_V, 1);
            assert_eq!(
                t.read(SubstreamId::new(0xfff).unwrap()).unwrap().words[0],
                0
            );
            let _ = t.remove(SubstreamId::new(0x800).unwrap()).unwrap();
            assert_eq!(alloc.live_pages(), 2);
        }
        assert_eq!(alloc.live_pages(), 0);
        alloc.fail.set(true);
        assert!(matches!(
            CdTable::new(&alloc, S1Fmt::Linear, 0, WalkerCoherency::Coherent, 52),
            Err(SmmuError::NoMemory { .. })
        ));
    }

    #[test]
    fn live_install_syncs_with_v_clear_then_sets_v() {
        let alloc = VecAllocator::default();
        let mut t =
            CdTable::new(&alloc, S1Fmt::TwoLevel4K, 12, WalkerCoherency::Coherent, 52).unwrap();
        let cd = ctx().encode().unwrap();
        let ssid = SubstreamId::new(0x81).unwrap();
        // The slot holds an old CD's words (V clear), as after `remove`.
        let old = Stage1Context {
            ttb0: PhysAddr::new(0x7_0000_0000),
            asid: Asid(9),
            ..ctx()
        };
        let _ = t.install(ssid, &old.encode().unwrap()).unwrap();
        let _ = t.remove(ssid).unwrap();
        let mut seen = [None; 2];
        let mut n = 0;
        let done = t
            .install_live(ssid, &cd, |s| -> Result<(), SmmuError> {
                seen[n] = Some(s);
                n += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(done, CdSync { ssid, leaf: true });
        // One sync point, before V: the leaf existed already, so leaf-only.
        assert_eq!(seen, [Some(CdSync { ssid, leaf: true }), None]);
        assert_eq!(t.read(ssid).unwrap(), cd);
        // What the unit could read at the sync point: every new word, V clear.
        let _ = t.remove(ssid).unwrap();
        let _ = t.install(ssid, &old.encode().unwrap()).unwrap();
        let _ = t.remove(ssid).unwrap();
        let words = t.slot(ssid, false).unwrap().unwrap().0.as_ptr();
        let mut at_sync = [0u64; 8];
        let _ = t
            .install_live(ssid, &cd, |_| -> Result<(), SmmuError> {
                for (i, w) in at_sync.iter_mut().enumerate() {
                    // SAFETY: `words` points at the slot's eight words, in a leaf the table
                    // keeps alive; only atomics touch it.
                    *w = unsafe { (*words.add(i)).load(Ordering::Acquire) };
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(at_sync[0], cd.words[0] & !V);
        assert_eq!(at_sync[1..], cd.words[1..]);
        // A failing sync leaves the CD invalid, with the new words.
        let _ = t.remove(ssid).unwrap();
        let err = t.install_live(ssid, &cd, |_| {
            Err(SmmuError::SyncTimeout { prod: 0, cons: 0 })
        });
        assert!(err.is_err());
        let now = t.read(ssid).unwrap();
        assert_eq!(now.words[0], cd.words[0] & !V);
        assert_eq!(now.words[1..], cd.words[1..]);
        // A new leaf publishes an L1CD: the first sync must not be leaf-only.
        let fresh = SubstreamId::new(0x100).unwrap();
        let mut first = None;
        let _ = t
            .install_live(fresh, &cd, |s| -> Result<(), SmmuError> {
                first.get_or_insert(s);
                Ok(())
            })
            .unwrap();
        assert_eq!(
            first,
            Some(CdSync {
                ssid: fresh,
                leaf: false
            })
        );
    }
}
