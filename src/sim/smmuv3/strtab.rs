//! Finding an STE in the stream table and a CD in a CD table: Arm IHI 0070 G.b §3.3.1 (linear
//! and 2-level stream tables, SMMU_STRTAB_BASE_CFG.FMT/SPLIT/LOG2SIZE), §5.1 (level-1 stream
//! table descriptor: Span[4:0], L2Ptr[51:6]), §3.3.2 and §5.3 (CD tables: linear, 2-level with
//! 4 KiB or 64 KiB leaf tables; level-1 CD descriptor: V[0], L2Ptr[51:12]).

use core::cell::Cell;

use super::config::SmmuModelConfig;
use super::event::{C_BAD_STREAMID, C_BAD_SUBSTREAMID, F_STE_FETCH};
use super::regs::{strtab_cfg, Regs, STRTAB_ADDR_MASK};
use super::ste::S1Context;
use crate::sim::arena::PhysMem;

/// Memory for a level-1 descriptor read: the descriptor cache (`cached`) answers first; a
/// read that misses it is remembered in `fetched` so the caller can cache it.
pub(crate) struct L1Mem<'a> {
    pub cached: &'a dyn Fn(u64) -> Option<u64>,
    pub inner: &'a dyn PhysMem,
    pub fetched: Cell<Option<(u64, u64)>>,
}

impl PhysMem for L1Mem<'_> {
    fn read_u64(&self, pa: u64) -> Option<u64> {
        if let Some(v) = (self.cached)(pa) {
            return Some(v);
        }
        let v = self.inner.read_u64(pa)?;
        self.fetched.set(Some((pa, v)));
        Some(v)
    }
}

/// SPLIT of a 2-level stream table: StreamIDs one level-1 descriptor covers are 2^SPLIT.
pub(crate) fn strtab_split(regs: &Regs) -> u32 {
    (regs.strtab_base_cfg >> strtab_cfg::SPLIT_SHIFT) & strtab_cfg::SPLIT_MASK
}

/// SubstreamIDs one level-1 CD descriptor covers (log2), for S1Fmt.
pub(crate) fn cd_split(fmt: u8) -> u32 {
    if fmt == 1 {
        6
    } else {
        10
    }
}

const STE_BYTES: u64 = 64;
const CD_BYTES: u64 = 64;
const L1STD_L2PTR: u64 = ((1 << 52) - 1) & !0x3f;
const L1CD_L2PTR: u64 = ((1 << 52) - 1) & !0xfff;

/// Why a structure could not be found: the event type and the address being fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Miss {
    pub event: u8,
    pub fetch_addr: u64,
}

fn miss(event: u8, fetch_addr: u64) -> Miss {
    Miss { event, fetch_addr }
}

fn read8(mem: &impl PhysMem, addr: u64, abort: u8) -> Result<[u64; 8], Miss> {
    let mut words = [0u64; 8];
    for (i, w) in words.iter_mut().enumerate() {
        let a = addr.checked_add(8 * i as u64).ok_or(miss(abort, addr))?;
        *w = mem.read_u64(a).ok_or(miss(abort, a))?;
    }
    Ok(words)
}

/// The address of StreamID `sid`'s STE.
///
/// C_BAD_STREAMID: `sid` beyond LOG2SIZE or IDR1.SIDSIZE, a 2-level format the unit lacks or a
/// reserved SPLIT, an L1 descriptor with Span = 0 or a Span that does not reach `sid`.
/// F_STE_FETCH: the L1 descriptor cannot be read.
pub(crate) fn ste_address(
    cfg: &SmmuModelConfig,
    regs: &Regs,
    mem: &impl PhysMem,
    sid: u32,
) -> Result<u64, Miss> {
    let base = regs.strtab_base & STRTAB_ADDR_MASK;
    let log2size = (regs.strtab_base_cfg & strtab_cfg::LOG2SIZE_MASK).min(cfg.sid_bits());
    if u64::from(sid) >> log2size != 0 {
        return Err(miss(C_BAD_STREAMID, 0));
    }
    let fmt = (regs.strtab_base_cfg >> strtab_cfg::FMT_SHIFT) & strtab_cfg::FMT_MASK;
    match fmt {
        0 => Ok(base + u64::from(sid) * STE_BYTES),
        1 if cfg.two_level_strtab() => {
            let split = strtab_split(regs);
            if !matches!(split, 6 | 8 | 10) {
                return Err(miss(C_BAD_STREAMID, 0));
            }
            let l1 = base + u64::from(sid >> split) * 8;
            let desc = mem.read_u64(l1).ok_or(miss(F_STE_FETCH, l1))?;
            let span = (desc & 0x1f) as u32;
            let index = u64::from(sid) & ((1 << split) - 1);
            // Span = n covers 2^(n-1) STEs; 0 is invalid and values above SPLIT + 1 reserved.
            if span == 0 || span > split + 1 || index >> (span - 1) != 0 {
                return Err(miss(C_BAD_STREAMID, 0));
            }
            Ok((desc & L1STD_L2PTR) + index * STE_BYTES)
        }
        _ => Err(miss(C_BAD_STREAMID, 0)),
    }
}

/// Fetches the eight words of the STE at `addr` (F_STE_FETCH when unreadable).
pub(crate) fn fetch_ste(mem: &impl PhysMem, addr: u64) -> Result<[u64; 8], Miss> {
    read8(mem, addr, F_STE_FETCH)
}

/// The address of CD `index` of the table `s1` describes, reading a level-1 CD descriptor
/// through `mem` (IPAs when nested). C_BAD_SUBSTREAMID for an L1CD with V = 0; `abort` is the
/// event for an unreadable descriptor.
pub(crate) fn cd_address(
    s1: &S1Context,
    mem: &impl PhysMem,
    index: u32,
    abort: u8,
) -> Result<u64, Miss> {
    let index = u64::from(index);
    if s1.fmt == 0 {
        return Ok(s1.ptr + index * CD_BYTES);
    }
    let split = cd_split(s1.fmt);
    let l1 = s1.ptr + (index >> split) * 8;
    let desc = mem.read_u64(l1).ok_or(miss(abort, l1))?;
    if desc & 1 == 0 {
        return Err(miss(C_BAD_SUBSTREAMID, 0));
    }
    Ok((desc & L1CD_L2PTR) + (index & ((1 << split) - 1)) * CD_BYTES)
}

/// Fetches the eight words of the CD at `addr` through `mem`.
pub(crate) fn fetch_cd(mem: &impl PhysMem, addr: u64, abort: u8) -> Result<[u64; 8], Miss> {
    read8(mem, addr, abort)
}
