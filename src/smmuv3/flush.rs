//! From a [`Gather`] to TLB invalidation commands: the fewest the unit allows.
//!
//! Arm IHI 0070 G.b §4.4 "TLB invalidation": `CMD_TLBI_NH_VA` (stage 1, tagged by VMID and
//! ASID), `CMD_TLBI_S2_IPA` (stage 2, tagged by VMID), `CMD_TLBI_NH_ASID`, `CMD_TLBI_NH_ALL` and
//! `CMD_TLBI_S12_VMALL` (everything of a tag); §4.4.1 the range form with `IDR3.RIL` (TG,
//! SCALE, NUM: `(NUM + 1) * 2^SCALE` pages of granule TG from the address; TTL the level of the
//! leaves, 0 when unknown); the Leaf bit (set: only last-level entries changed, walk caches may
//! be kept). §4.5 `CMD_ATC_INV` for devices with an ATS translation cache.
//!
//! The plan depends only on the gather and the unit's features, so tests count it exactly:
//! - with RIL: per recorded range, one command per 5 bits of the page count (an aligned run of
//!   up to 32 pages, or any power of two, is one command);
//! - without RIL: one command per page of the smallest leaf size the gather saw (a 2 MiB block
//!   is one command), or per level-2 span when no leaf was touched;
//! - past [`DEFAULT_FLUSH_THRESHOLD`] commands (configurable), one command for the whole tag.
//!
//! A stage-2 domain that is a nest parent also gets `CMD_TLBI_NH_ALL` for its VMID: combined
//! stage 1+2 entries are not removed by `TLBI_S2_IPA` (§4.4.4).

use super::cmd::{Command, RangeGranule, TlbiRange};
use super::{Asid, SmmuError, StreamId, SubstreamId, Vmid};
use crate::mem::Iova;
use crate::pgtable::{Gather, IovaRange};

/// Invalidation commands a flush may issue for its ranges before it invalidates the whole tag
/// instead: about what 64 single-page commands cost against refilling a TLB.
pub const DEFAULT_FLUSH_THRESHOLD: u32 = 64;

/// The TLB tag of a domain: what its entries are cached under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlbTag {
    /// A stage-2 domain: its VMID; `nest_parent` when stage-1 domains nest on it.
    Stage2 {
        /// The VMID.
        vmid: Vmid,
        /// Combined entries may exist: also `TLBI_NH_ALL`.
        nest_parent: bool,
    },
    /// A stage-1 domain: its ASID, under the VMID of its stage 2 (0 without one).
    Stage1 {
        /// The VMID (the nest parent's, or 0).
        vmid: Vmid,
        /// The ASID.
        asid: Asid,
    },
}

/// What the unit offers for invalidation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushPolicy {
    /// `IDR3.RIL`: range invalidation.
    pub ril: bool,
    /// Log2 of the domain's granule (12, 14 or 16).
    pub granule_log2: u32,
    /// Most range commands before the whole tag is invalidated instead.
    pub threshold: u32,
}

/// The whole-tag invalidation.
pub const fn invalidate_all(tag: TlbTag) -> Command {
    match tag {
        TlbTag::Stage2 { vmid, .. } => Command::tlbi_s12_vmall(vmid),
        TlbTag::Stage1 { vmid, asid } => Command::tlbi_nh_asid(vmid, asid),
    }
}

/// TTL (the Arm lookup level of the leaves) when every changed leaf had one size, else 0.
fn ttl(gather: &Gather, granule_log2: u32) -> u8 {
    let sizes = gather.page_sizes();
    if !gather.leaf_only() || sizes.count_ones() != 1 {
        return 0;
    }
    let size_log2 = sizes.trailing_zeros();
    let bits = granule_log2 - 3;
    // The crate's level 0 is Arm's lookup level 3.
    match size_log2.checked_sub(granule_log2).map(|d| d / bits) {
        Some(level @ 0..=2) => (3 - level) as u8,
        _ => 0,
    }
}

/// Log2 of the stride of single-page commands: the smallest leaf changed, or the span of a
/// last-level table when only tables changed.
fn stride_log2(gather: &Gather, granule_log2: u32) -> u32 {
    match gather.page_sizes() {
        0 => granule_log2 + (granule_log2 - 3),
        sizes => sizes.trailing_zeros().max(granule_log2),
    }
}

fn one(tag: TlbTag, addr: u64, leaf: bool, range: Option<TlbiRange>) -> Result<Command, SmmuError> {
    match tag {
        TlbTag::Stage2 { vmid, .. } => Command::tlbi_s2_ipa(vmid, Iova::new(addr), leaf, range),
        TlbTag::Stage1 { vmid, asid } => {
            Command::tlbi_nh_va(vmid, asid, Iova::new(addr), leaf, range)
        }
    }
}

fn range_granule(granule_log2: u32) -> RangeGranule {
    match granule_log2 {
        14 => RangeGranule::Size16K,
        16 => RangeGranule::Size64K,
        _ => RangeGranule::Size4K,
    }
}

/// Where a [`TlbiCommands`] is.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// The per-range commands: the next is at `cursor` in range `next_range - 1` (see
    /// [`TlbiCommands::start`]); range `next_range` is started when `cursor` is `None`.
    Ranges {
        next_range: usize,
        cursor: Option<(u64, u64)>,
    },
    /// The whole-tag command.
    Whole,
    /// `CMD_TLBI_NH_ALL` of a nest parent's VMID.
    NestAll,
    Done,
}

/// The TLB invalidation commands of a flush, one at a time: what [`plan_tlbi`] hands its
/// caller, as an iterator (made by [`tlbi_commands`]; it ends after an error). The caller
/// issues each command from its own frame, so the planning's locals are not on the stack
/// under the command queue.
#[derive(Clone, Debug)]
pub struct TlbiCommands<'g> {
    tag: TlbTag,
    gather: &'g Gather,
    policy: FlushPolicy,
    phase: Phase,
}

impl<'g> TlbiCommands<'g> {
    /// The per-range commands of `gather`, then (for a nest parent) `CMD_TLBI_NH_ALL`.
    fn ranges(tag: TlbTag, gather: &'g Gather, policy: &FlushPolicy) -> Self {
        Self {
            tag,
            gather,
            policy: *policy,
            phase: Phase::Ranges {
                next_range: 0,
                cursor: None,
            },
        }
    }

    /// The first cursor of range `r`, `None` if it needs no command: its first address, and
    /// the pages left (range form) or the end of the range (one command per stride).
    fn start(&self, r: &IovaRange) -> Option<(u64, u64)> {
        let g = self.policy.granule_log2;
        if self.policy.ril {
            // With a TTL naming a block level the range must start on a block boundary, or
            // the range invalidated is UNPREDICTABLE (§4.4.1). A non-zero TTL means every
            // changed leaf had that one size, and the engine records a leaf from its aligned
            // start for its whole size, so `r` starts and ends on block boundaries; every
            // chunk is then a multiple of the block's page count (SCALE is the lowest set bit
            // of what is left) and keeps the address aligned.
            let addr = r.start.get() & !((1u64 << g) - 1);
            let mut pages = r.end.get().saturating_sub(addr).div_ceil(1 << g);
            // NUM = 0 and SCALE = 0 with TTL = 0 is a single page at an unknown level, which
            // the architecture does not define for range invalidation: round up to two pages.
            if ttl(self.gather, g) == 0 && pages & 31 == 1 {
                pages += 1;
            }
            (pages > 0).then_some((addr, pages))
        } else {
            let stride = stride_log2(self.gather, g);
            let addr = r.start.get() & !((1u64 << stride) - 1);
            (addr < r.end.get()).then_some((addr, r.end.get()))
        }
    }

    /// The command at `(addr, rest)` and the cursor after it (`None`: the range is done).
    fn step(&self, (addr, rest): (u64, u64)) -> Result<(Command, Option<(u64, u64)>), SmmuError> {
        let g = self.policy.granule_log2;
        let leaf = self.gather.leaf_only();
        if self.policy.ril {
            // One range-form command per 5 bits of the page count.
            let pages = rest;
            let scale = pages.trailing_zeros().min(31);
            let num = match (pages >> scale) & 31 {
                0 => 32,
                n => n,
            };
            let range = TlbiRange {
                tg: range_granule(g),
                scale: scale as u8,
                num: (num - 1) as u8,
                ttl: ttl(self.gather, g),
            };
            let c = one(self.tag, addr, leaf, Some(range))?;
            let left = pages - (num << scale);
            let next = (left > 0).then(|| (addr.saturating_add(num << (scale + g)), left));
            Ok((c, next))
        } else {
            let stride = stride_log2(self.gather, g);
            let c = one(self.tag, addr, leaf, None)?;
            let next = addr
                .checked_add(1 << stride)
                .filter(|&n| n < rest)
                .map(|n| (n, rest));
            Ok((c, next))
        }
    }

    /// The next per-range command; `None` once the ranges are done (the phase is then
    /// [`Phase::NestAll`]) or outside them.
    fn next_in_ranges(&mut self) -> Option<Result<Command, SmmuError>> {
        loop {
            let Phase::Ranges { next_range, cursor } = self.phase else {
                return None;
            };
            let Some(at) = cursor else {
                self.phase = match self.gather.ranges().get(next_range) {
                    Some(r) => Phase::Ranges {
                        next_range: next_range + 1,
                        cursor: self.start(r),
                    },
                    None => Phase::NestAll,
                };
                continue;
            };
            return Some(match self.step(at) {
                Ok((c, next)) => {
                    self.phase = Phase::Ranges {
                        next_range,
                        cursor: next,
                    };
                    Ok(c)
                }
                Err(e) => {
                    self.phase = Phase::Done;
                    Err(e)
                }
            });
        }
    }
}

impl Iterator for TlbiCommands<'_> {
    type Item = Result<Command, SmmuError>;

    /// Not inlined: its frame is gone before the caller issues the command.
    #[inline(never)]
    fn next(&mut self) -> Option<Self::Item> {
        if let Some(c) = self.next_in_ranges() {
            return Some(c);
        }
        match self.phase {
            Phase::Whole => {
                self.phase = Phase::NestAll;
                Some(Ok(invalidate_all(self.tag)))
            }
            Phase::NestAll => {
                self.phase = Phase::Done;
                match self.tag {
                    TlbTag::Stage2 {
                        vmid,
                        nest_parent: true,
                    } => Some(Ok(Command::tlbi_nh_all(vmid))),
                    _ => None,
                }
            }
            Phase::Ranges { .. } | Phase::Done => None,
        }
    }
}

/// The TLB invalidation commands for `gather` (no CMD_SYNC), as [`plan_tlbi`] emits them:
/// per-range commands, or the whole-tag command once they would exceed the policy's
/// threshold (a dry run counts them first, stopping as soon as the threshold is passed),
/// then a nest parent's `CMD_TLBI_NH_ALL`.
///
/// # Errors
///
/// A field error if an address does not fit its command (met in the dry run);
/// [`SmmuError::FieldOutOfRange`] for a `policy.granule_log2` other than 12, 14 or 16 (the
/// planner's shifts assume one of them).
pub fn tlbi_commands<'g>(
    tag: TlbTag,
    gather: &'g Gather,
    policy: &FlushPolicy,
) -> Result<TlbiCommands<'g>, SmmuError> {
    if !matches!(policy.granule_log2, 12 | 14 | 16) {
        return Err(SmmuError::FieldOutOfRange {
            field: "FlushPolicy::granule_log2 (12, 14 or 16)",
            value: policy.granule_log2 as u64,
        });
    }
    let mut count = 0u32;
    let mut dry = TlbiCommands::ranges(tag, gather, policy);
    while let Some(c) = dry.next_in_ranges() {
        c?;
        count += 1;
        if count > policy.threshold {
            return Ok(TlbiCommands {
                phase: Phase::Whole,
                ..dry
            });
        }
    }
    Ok(TlbiCommands::ranges(tag, gather, policy))
}

/// Hands `emit` the TLB invalidation commands for `gather` (no CMD_SYNC): per-range commands,
/// or the whole-tag command once they would exceed the policy's threshold. Returns how many
/// commands were emitted.
///
/// # Errors
///
/// The first error of `emit`; a field error if an address does not fit its command, or for a
/// granule other than 12, 14 or 16 (see [`tlbi_commands`]).
pub fn plan_tlbi(
    tag: TlbTag,
    gather: &Gather,
    policy: &FlushPolicy,
    mut emit: impl FnMut(Command) -> Result<(), SmmuError>,
) -> Result<u32, SmmuError> {
    let mut emitted = 0u32;
    for c in tlbi_commands(tag, gather, policy)? {
        emit(c?)?;
        emitted += 1;
    }
    Ok(emitted)
}

/// The smallest `CMD_ATC_INV` covering `span`: `2^size` 4 KiB pages at an address aligned to
/// that size (§4.5: Size is log2 of the number of pages; the address must be aligned to it).
///
/// # Errors
///
/// A field error from the command encoder (never for spans below 2^64).
pub fn atc_inv_for(
    sid: StreamId,
    ssid: Option<SubstreamId>,
    span: IovaRange,
) -> Result<Command, SmmuError> {
    let first = span.start.get() >> 12;
    let last = span.end.get().saturating_sub(1).max(span.start.get()) >> 12;
    // The number of low page-number bits in which first and last differ.
    let size = (64 - (first ^ last).leading_zeros()).min(52);
    let base = if size >= 52 {
        0
    } else {
        (first >> size) << (size + 12)
    };
    Command::atc_inv(sid, ssid, Iova::new(base), size as u8, false)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    const K4: u64 = 1 << 12;

    /// Builds a gather the way unmap does.
    fn gather(leaves: &[(u64, u64, u32)], tables: &[(u64, u64)]) -> Gather {
        let mut g = Gather::new();
        for &(start, len, size) in leaves {
            g.add_leaves(start, len, size);
        }
        for &(start, len) in tables {
            g.add_table_change(start, len);
        }
        g
    }

    fn plan(g: &Gather, ril: bool, tag: TlbTag) -> Vec<Command> {
        let mut out = Vec::new();
        let policy = FlushPolicy {
            ril,
            granule_log2: 12,
            threshold: DEFAULT_FLUSH_THRESHOLD,
        };
        let n = plan_tlbi(tag, g, &policy, |c| {
            out.push(c);
            Ok(())
        })
        .unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    const S2: TlbTag = TlbTag::Stage2 {
        vmid: Vmid(3),
        nest_parent: false,
    };
    const S1: TlbTag = TlbTag::Stage1 {
        vmid: Vmid(0),
        asid: Asid(7),
    };

    #[test]
    fn a_policy_granule_the_architecture_lacks_is_an_error() {
        let g = gather(&[(0x10_0000, 16 * K4, 12)], &[]);
        for granule_log2 in [64, 3, 2, 13, u32::MAX] {
            for ril in [false, true] {
                let policy = FlushPolicy {
                    ril,
                    granule_log2,
                    threshold: DEFAULT_FLUSH_THRESHOLD,
                };
                assert_eq!(
                    plan_tlbi(S2, &g, &policy, |_| Ok(())),
                    Err(SmmuError::FieldOutOfRange {
                        field: "FlushPolicy::granule_log2 (12, 14 or 16)",
                        value: u64::from(granule_log2),
                    })
                );
            }
        }
    }

    #[test]
    fn unmap_patterns_without_ril() {
        // 16 aligned 4K pages: 16 TLBI_S2_IPA with Leaf, one per page.
        let c = plan(&gather(&[(0x10_0000, 16 * K4, 12)], &[]), false, S2);
        assert_eq!(c.len(), 16);
        assert_eq!(
            c[0],
            Command::tlbi_s2_ipa(Vmid(3), Iova::new(0x10_0000), true, None).unwrap()
        );
        assert_eq!(c[15].words[1], 0x10_f000 | 1);
        // 3 pages at an odd address: 3.
        assert_eq!(
            plan(&gather(&[(0x3000, 3 * K4, 12)], &[]), false, S2).len(),
            3
        );
        // One 2 MiB block: one command.
        let c = plan(&gather(&[(0x20_0000, 1 << 21, 21)], &[]), false, S1);
        assert_eq!(
            c,
            [Command::tlbi_nh_va(Vmid(0), Asid(7), Iova::new(0x20_0000), true, None).unwrap()]
        );
        // A table freed with its 4 pages: Leaf clear; one command per 4K page of the range.
        let g = gather(&[(0x40_0000, 4 * K4, 12)], &[(0x40_0000, 4 * K4)]);
        let c = plan(&g, false, S2);
        assert_eq!(c.len(), 4);
        assert!(c.iter().all(|c| c.words[1] & 1 == 0));
        // 65 pages: past the threshold, one TLBI_S12_VMALL (stage 2) / TLBI_NH_ASID (stage 1).
        let g = gather(&[(0, 65 * K4, 12)], &[]);
        assert_eq!(plan(&g, false, S2), [Command::tlbi_s12_vmall(Vmid(3))]);
        assert_eq!(
            plan(&g, false, S1),
            [Command::tlbi_nh_asid(Vmid(0), Asid(7))]
        );
        // Exactly the threshold still goes page by page.
        assert_eq!(plan(&gather(&[(0, 64 * K4, 12)], &[]), false, S2).len(), 64);
    }

    #[test]
    fn unmap_patterns_with_ril() {
        // 16 aligned pages: one range command, SCALE 4 NUM 0, TTL 3, TG 4K.
        let c = plan(&gather(&[(0x10_0000, 16 * K4, 12)], &[]), true, S2);
        let r = TlbiRange {
            tg: RangeGranule::Size4K,
            scale: 4,
            num: 0,
            ttl: 3,
        };
        assert_eq!(
            c,
            [Command::tlbi_s2_ipa(Vmid(3), Iova::new(0x10_0000), true, Some(r)).unwrap()]
        );
        // 3 pages: SCALE 0 NUM 2, one command.
        let c = plan(&gather(&[(0x3000, 3 * K4, 12)], &[]), true, S2);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].words[0] >> 12) & 0x1f, 2);
        // 33 pages: 1 page then 32 pages, two commands.
        let c = plan(&gather(&[(0x1000, 33 * K4, 12)], &[]), true, S1);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].words[1] & !0xfff, 0x2000);
        // A 2 MiB block: 512 pages of 4K = SCALE 9 NUM 0, TTL 2.
        let c = plan(&gather(&[(0x20_0000, 1 << 21, 21)], &[]), true, S2);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].words[0] >> 20) & 0x1f, 9);
        assert_eq!((c[0].words[1] >> 8) & 3, 2);
        // Tables freed: Leaf clear and TTL 0; one page rounds up to two.
        let g = gather(&[(0x40_0000, K4, 12)], &[(0x40_0000, K4)]);
        let c = plan(&g, true, S2);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].words[1] & 0x301, 0);
        // Two pages: NUM 0, SCALE 1.
        assert_eq!((c[0].words[0] >> 12) & 0x1f, 0);
        assert_eq!((c[0].words[0] >> 20) & 0x1f, 1);
        // A whole 1 GiB of pages is still one command; 65 scattered ranges widen into one.
        assert_eq!(
            plan(&gather(&[(1 << 30, 1 << 30, 12)], &[]), true, S2).len(),
            1
        );
        let mut g = Gather::new();
        for i in 0..65 {
            g.add_leaves(i * 0x2_0000, K4, 12);
        }
        assert!(plan(&g, true, S2).len() <= 8);
    }

    #[test]
    fn nest_parent_also_drops_combined_entries() {
        let tag = TlbTag::Stage2 {
            vmid: Vmid(5),
            nest_parent: true,
        };
        let c = plan(&gather(&[(0, K4, 12)], &[]), false, tag);
        assert_eq!(c.len(), 2);
        assert_eq!(c[1], Command::tlbi_nh_all(Vmid(5)));
    }

    #[test]
    fn atc_span() {
        let span = |s: u64, e: u64| IovaRange {
            start: Iova::new(s),
            end: Iova::new(e),
        };
        let c = atc_inv_for(StreamId(1), None, span(0x1000, 0x2000)).unwrap();
        assert_eq!(c.words[1], 0x1000);
        // 0x3000..0x5000 crosses a 16K boundary: Size 3 (32 KiB) at 0.
        let c = atc_inv_for(StreamId(1), None, span(0x3000, 0x5000)).unwrap();
        assert_eq!(c.words[1], 3);
        let c = atc_inv_for(StreamId(1), None, span(0, u64::MAX)).unwrap();
        assert_eq!(c.words[1], 52);
    }

    /// Decodes a range-form TLBI into (start, bytes, ttl, leaf), checking TG against `g`.
    fn decode_range(c: &Command, g: u32) -> (u64, u64, u64, bool) {
        let [w0, w1] = c.words;
        let tg = (w1 >> 10) & 3;
        assert_eq!(tg, u64::from((g - 10) / 2), "TG for granule 2^{g}");
        let (num, scale) = ((w0 >> 12) & 0x1f, (w0 >> 20) & 0x1f);
        let ttl = (w1 >> 8) & 3;
        // NUM = SCALE = 0 with TTL = 0 is not defined for the range form.
        assert!(num | scale | ttl != 0, "{c:x?}");
        (
            (w1 & !0xfff) & ((1 << 52) - 1),
            (num + 1) << scale << g,
            ttl,
            w1 & 1 == 1,
        )
    }

    /// Table of edge cases for the range form: unaligned to any SCALE, huge, at the top of
    /// the input space, every granule. The commands must tile `[start rounded down to the
    /// granule, end)` without gaps, overshooting by at most the one page added to avoid the
    /// undefined NUM = SCALE = TTL = 0 encoding, and stay within five bits of the page count.
    #[test]
    fn range_form_tiles_every_edge_case() {
        // (granule, start, len, leaf size log2 or None for a table-only change, TTL expected)
        let cases: &[(u32, u64, u64, Option<u32>, u64)] = &[
            (12, 0x1000, 33 * K4, Some(12), 3),
            (12, 0x3000, 31 * K4, Some(12), 3),
            (12, 0x1000, ((1 << 15) - 1) * K4, Some(12), 3),
            (12, 0x1800, 0x1000, Some(12), 3),
            (12, 0, 1 << 48, Some(12), 3),
            (12, (1 << 48) - 0x5000, 0x5000, Some(12), 3),
            (12, 0x4000_0000, 1 << 30, Some(30), 1),
            (12, 0x40_0000, K4, None, 0),
            (12, 0x40_1000, 3 * K4, None, 0),
            (14, 3 << 14, 97 << 14, Some(14), 3),
            (14, 1 << 25, 1 << 25, Some(25), 2),
            (14, (1 << 48) - (1 << 14), 1 << 14, None, 0),
            (16, (1 << 52) - (3 << 16), 3 << 16, Some(16), 3),
            (16, 0, 1 << 52, Some(16), 3),
            (16, 1 << 29, 1 << 29, Some(29), 2),
            (16, 5 << 16, 1 << 16, None, 0),
        ];
        for &(g, start, len, leaf, want_ttl) in cases {
            let mut gather = Gather::new();
            match leaf {
                Some(size) => gather.add_leaves(start, len, size),
                None => gather.add_table_change(start, len),
            }
            let policy = FlushPolicy {
                ril: true,
                granule_log2: g,
                threshold: DEFAULT_FLUSH_THRESHOLD,
            };
            let mut cmds = Vec::new();
            plan_tlbi(S2, &gather, &policy, |c| {
                cmds.push(c);
                Ok(())
            })
            .unwrap();
            let first = start & !((1 << g) - 1);
            let end = (start + len).div_ceil(1 << g) << g;
            let mut at = first;
            for c in &cmds {
                let (addr, bytes, ttl, leaf_bit) = decode_range(c, g);
                assert_eq!(addr, at, "gap or overlap in {cmds:x?}");
                assert_eq!(ttl, want_ttl, "TTL in {cmds:x?}");
                assert_eq!(leaf_bit, leaf.is_some());
                at += bytes;
            }
            assert!(at >= end, "{start:#x}+{len:#x} not covered: {cmds:x?}");
            let slack = if want_ttl == 0 { 1u64 << g } else { 0 };
            assert!(
                at - end <= slack,
                "{start:#x}+{len:#x} overshoots: {cmds:x?}"
            );
            // One command per 5-bit group of the page count, at most.
            let pages = (end - first).div_ceil(1 << g) + (slack >> g);
            let groups = (64 - pages.leading_zeros()).div_ceil(5) as usize + 1;
            assert!(cmds.len() <= groups, "{} > {groups}: {cmds:x?}", cmds.len());
        }
    }

    /// Without RIL: one command per page of the smallest leaf, aligned, up to the threshold.
    #[test]
    fn per_granule_fallback_for_every_granule() {
        for g in [12u32, 14, 16] {
            let policy = |threshold| FlushPolicy {
                ril: false,
                granule_log2: g,
                threshold,
            };
            let mut gather = Gather::new();
            // Starts half-way into a page: the page holding the start is included.
            gather.add_leaves((3 << g) + 0x800, 5 << g, g);
            let mut cmds = Vec::new();
            plan_tlbi(S1, &gather, &policy(6), |c| {
                cmds.push(c);
                Ok(())
            })
            .unwrap();
            let addrs: Vec<u64> = cmds.iter().map(|c| c.words[1] & !0xfff).collect();
            let want: Vec<u64> = (3..9).map(|p| p << g).collect();
            assert_eq!(addrs, want, "granule 2^{g}");
            assert!(cmds.iter().all(|c| c.words[1] & 0xf01 == 1));
            // One past the threshold: TLBI_NH_ASID instead.
            let mut cmds = Vec::new();
            plan_tlbi(S1, &gather, &policy(5), |c| {
                cmds.push(c);
                Ok(())
            })
            .unwrap();
            assert_eq!(cmds, [Command::tlbi_nh_asid(Vmid(0), Asid(7))]);
        }
        // The top page of a 52-bit IPA space is still encodable.
        let mut gather = Gather::new();
        gather.add_leaves((1 << 52) - (1 << 16), 1 << 16, 16);
        let policy = FlushPolicy {
            ril: false,
            granule_log2: 16,
            threshold: 1,
        };
        let mut n = 0;
        plan_tlbi(S2, &gather, &policy, |c| {
            assert_eq!(c.words[1], ((1 << 52) - (1 << 16)) | 1);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }
}
