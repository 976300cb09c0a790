//! Changing a live STE: the sequence of 64-bit writes and sync points between two STEs.
//!
//! Arm IHI 0070 G.b §3.21.3 "Configuration structures and configuration invalidation" and
//! §5.2 (STE): the unit may read an STE at any time, one 64-bit word at a time, in any order,
//! and may cache it until a `CMD_CFGI_STE` completes (a CMD_SYNC after it). A change is safe
//! ("hitless") when at every moment each word the unit could read gives either the old or the new
//! configuration. This module plans such a sequence from the two STEs alone:
//!
//! 1. The *used bits* of an STE are the fields the unit reads under its V/Config (an aborting
//!    STE uses only V and Config; a stage-2 STE uses word 2, word 3 and some of word 1; ...).
//! 2. Bits the target uses and the current STE does not are written first: the unit ignores them.
//! 3. If after that at most one word still differs in the target's used bits, writing that word
//!    switches configuration atomically. Otherwise the STE is made to abort (V = 1, Config =
//!    abort) first, the other words are written, then word 0 (V and Config) last.
//! 4. Bits neither uses are cleaned last, so the table holds exactly the target.
//!
//! Each group of writes is followed by a sync point (CMD_CFGI_STE + CMD_SYNC): the unit may
//! have cached the STE and must see one state before the next group.
//!
//! `tests/loom_ste.rs` model-checks [`apply_update`] (through [`SteWord`], loom's atomics
//! under `--cfg loom`) against a walker that reads the words in any mix between syncs.

use core::sync::atomic::{AtomicU64, Ordering};

use super::ste::{
    Config, Ste, ATTR_OVERRIDES, CONFIG, EATS, MEV, PPAR, S1CDMAX, S1CIR, S1CONTEXTPTR, S1COR,
    S1CSH, S1DSS, S1FMT, S1STALLD, S2FWB, S2TTB, S2VMID, STRW, V, WORD2_STAGE2,
};

/// A 64-bit word of a live STE, as [`apply_update`] writes it: one single-copy-atomic store
/// with release ordering. `core`'s `AtomicU64` (the stream table's memory); under
/// `--cfg loom` loom's too, so that `tests/loom_ste.rs` runs the real update against a walker
/// thread that reads the words as the unit does. Sealed: no other word type exists.
pub trait SteWord: sealed::Sealed {
    /// Stores `value` with release ordering.
    fn store_release(&self, value: u64);
}

mod sealed {
    /// Implemented by the atomic word types only.
    pub trait Sealed {}
    impl Sealed for core::sync::atomic::AtomicU64 {}
    #[cfg(loom)]
    impl Sealed for loom::sync::atomic::AtomicU64 {}
}

impl SteWord for AtomicU64 {
    fn store_release(&self, value: u64) {
        self.store(value, Ordering::Release);
    }
}

#[cfg(loom)]
impl SteWord for loom::sync::atomic::AtomicU64 {
    fn store_release(&self, value: u64) {
        self.store(value, Ordering::Release);
    }
}

/// One step of an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStep {
    /// Store `value` into word `word` (0..=7) with one 64-bit atomic store.
    Write {
        /// Word index.
        word: u8,
        /// The new value.
        value: u64,
    },
    /// Invalidate the unit's copy (CMD_CFGI_STE) and wait for it (CMD_SYNC).
    Sync,
}

/// The most steps a plan can have: three groups of eight writes, three syncs.
pub const MAX_STEPS: usize = 27;

/// A planned STE update: writes and sync points in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpdatePlan {
    steps: [UpdateStep; MAX_STEPS],
    len: usize,
}

impl UpdatePlan {
    const fn empty() -> Self {
        Self {
            steps: [UpdateStep::Sync; MAX_STEPS],
            len: 0,
        }
    }

    fn push(&mut self, step: UpdateStep) {
        // Capacity is proven by construction (at most 8 writes + 1 sync per group, three
        // groups); `get_mut` keeps a logic error from becoming a panic.
        if let Some(slot) = self.steps.get_mut(self.len) {
            *slot = step;
            self.len += 1;
        }
    }

    /// The steps.
    pub fn steps(&self) -> &[UpdateStep] {
        self.steps.get(..self.len).unwrap_or(&[])
    }

    /// How many sync points the plan has.
    pub fn sync_count(&self) -> usize {
        self.steps()
            .iter()
            .filter(|s| matches!(s, UpdateStep::Sync))
            .count()
    }

    /// Performs the plan on a live STE: each write is one atomic store with release ordering
    /// (earlier words are visible first); at each sync point `sync` is called, and must clean
    /// the entry for a non-coherent unit and issue CFGI_STE + CMD_SYNC.
    ///
    /// # Errors
    ///
    /// The first error `sync` returns; the entry is then left in a state the plan passed
    /// through, which the unit interprets as either the old or the new configuration (or abort).
    pub fn apply<E>(
        &self,
        entry: &[AtomicU64; 8],
        mut sync: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        for step in self.steps() {
            match *step {
                UpdateStep::Write { word, value } => {
                    if let Some(w) = entry.get(word as usize) {
                        w.store(value, Ordering::Release);
                    }
                }
                UpdateStep::Sync => sync()?,
            }
        }
        Ok(())
    }
}

/// The bits of `ste` the unit reads, given its V and Config (IHI 0070 G.b §5.2, the field
/// descriptions' "ignored when" clauses).
pub fn used_bits(ste: &[u64; 8]) -> [u64; 8] {
    let mut used = [0u64; 8];
    used[0] = V;
    if ste[0] & V == 0 {
        return used;
    }
    used[0] |= CONFIG.mask();
    let config = CONFIG.get(ste[0]) as u8;
    if config & 0b100 == 0 {
        // Every 0b0xx encoding aborts.
        return used;
    }
    let stage1 = config & 0b001 != 0;
    let stage2 = config & 0b010 != 0;
    if config == Config::Bypass as u8 {
        used[1] |= ATTR_OVERRIDES;
    }
    if stage1 {
        used[0] |= S1FMT.mask() | S1CONTEXTPTR.mask() | S1CDMAX.mask();
        used[1] |= S1DSS.mask() | S1CIR.mask() | S1COR.mask() | S1CSH.mask() | S1STALLD;
        used[1] |= EATS.mask() | STRW.mask() | MEV | PPAR;
        if S1DSS.get(ste[1]) == 1 {
            used[1] |= ATTR_OVERRIDES;
        }
        // Without stage 2, an NS-EL1 stream still tags its TLB entries with S2VMID.
        if !stage2 && STRW.get(ste[1]) == 0 {
            used[2] |= S2VMID.mask();
        }
    }
    if stage2 {
        used[1] |= EATS.mask() | STRW.mask() | MEV | PPAR | S2FWB | ATTR_OVERRIDES;
        used[2] |= WORD2_STAGE2;
        used[3] |= S2TTB.mask();
    }
    used
}

/// Plans the change of a live STE from `current` to `target`.
pub fn plan_update(current: &Ste, target: &Ste) -> UpdatePlan {
    let mut plan = UpdatePlan::empty();
    plan_steps(current, target, |step| plan.push(step));
    plan
}

/// Performs the update of [`plan_update`] on the live STE `entry` (whose words are `current`)
/// as it is planned, without keeping the plan: as [`UpdatePlan::apply`] (one release store per
/// write, `sync` at each sync point, stopping at its first error). Returns the number of syncs.
///
/// `sync` is called from this frame, not from the planner's: each group of writes (the steps
/// up to a sync point) is planned and stored by `write_group` in a frame of its own, which
/// has returned before the sync runs, so the planner's locals are not on the stack under the
/// command queue (this runs under the unit's locks on a kernel stack).
///
/// # Errors
///
/// The first error `sync` returns, as [`UpdatePlan::apply`].
pub fn apply_update<W: SteWord, E>(
    current: &Ste,
    target: &Ste,
    entry: &[W; 8],
    mut sync: impl FnMut() -> Result<(), E>,
) -> Result<usize, E> {
    let mut syncs = 0;
    // Each group that writes anything ends with a sync point: group `syncs` exists while the
    // previous ones did.
    while write_group(current, target, entry, syncs) {
        sync()?;
        syncs += 1;
    }
    Ok(syncs)
}

/// Stores the writes of group `g` of the plan from `current` to `target` (the steps after its
/// `g`-th sync point, up to the next) into `entry`; whether the plan has such a group. The
/// plan is made again for each group: it depends on `current` and `target` only.
#[inline(never)]
fn write_group<W: SteWord>(current: &Ste, target: &Ste, entry: &[W; 8], g: usize) -> bool {
    let mut seen = 0;
    let mut exists = false;
    plan_steps(current, target, |step| {
        if seen != g {
            if step == UpdateStep::Sync {
                seen += 1;
            }
            return;
        }
        match step {
            UpdateStep::Write { word, value } => {
                exists = true;
                if let Some(w) = entry.get(word as usize) {
                    w.store_release(value);
                }
            }
            UpdateStep::Sync => seen += 1,
        }
    });
    exists
}

/// Hands the steps of the change from `current` to `target` to `step`, in order. Each
/// group's target words are computed word by word from the state so far (no array per
/// group: this runs under the unit's locks on a kernel stack).
fn plan_steps(current: &Ste, target: &Ste, mut step: impl FnMut(UpdateStep)) {
    let tgt = &target.words;
    let cur_used = used_bits(&current.words);
    let tgt_used = used_bits(tgt);
    let mut state = current.words;

    // Step 1: bits only the target uses; the unit ignores them under the current Config.
    let prepared = |i: usize, now: u64| {
        let only_target = tgt_used[i] & !cur_used[i];
        (now & !only_target) | (tgt[i] & only_target)
    };
    let critical = (0..8)
        .filter(|&i| (prepared(i, state[i]) ^ tgt[i]) & tgt_used[i] != 0)
        .count();

    if critical <= 1 && !new_cd_table(current, target) {
        group(&mut state, &mut step, prepared);
        // The one word still different in used bits switches the configuration atomically.
        group(&mut state, &mut step, |i, now| {
            if (now ^ tgt[i]) & tgt_used[i] != 0 {
                tgt[i]
            } else {
                now
            }
        });
    } else {
        // Break: abort first, so no transaction sees a mix of the two configurations.
        group(&mut state, &mut step, |i, now| {
            if i == 0 {
                Ste::ABORT.words[0]
            } else {
                now
            }
        });
        // The body; word 0 stays aborting.
        group(
            &mut state,
            &mut step,
            |i, now| if i == 0 { now } else { tgt[i] },
        );
    }
    // Last: word 0 if still pending, and bits neither configuration uses.
    group(&mut state, &mut step, |i, _| tgt[i]);
}

/// Whether both STEs use CDs (valid, Config 0b1x1) from different CD tables: another
/// S1ContextPtr or S1Fmt, or another Config (a nested STE's pointer is an IPA, a stage-1
/// STE's a PA: the same bits name different tables). Such a change
/// breaks (goes through abort): the CMD_CFGI_STE of the aborting STE drops the CDs cached
/// through the StreamID (§4.3.1) before the new STE is live. Switched in one store, the new
/// STE could be read while the old table's CDs are still cached, and a CD cache may be
/// indexed by StreamID and SubstreamID alone (§4.3.3): a guest's CD under a host stage-1 STE
/// has its TTB0 read as a physical address.
fn new_cd_table(current: &Ste, target: &Ste) -> bool {
    let uses_cds = |w: u64| w & V != 0 && CONFIG.get(w) & 0b101 == 0b101;
    let (cur, tgt) = (current.words[0], target.words[0]);
    let table = S1CONTEXTPTR.mask() | S1FMT.mask() | CONFIG.mask();
    uses_cds(cur) && uses_cds(tgt) && (cur ^ tgt) & table != 0
}

/// Hands `step` the writes that turn each word `i` of `state` into `to(i, state[i])`, then a
/// sync if anything was written.
fn group(state: &mut [u64; 8], step: &mut impl FnMut(UpdateStep), to: impl Fn(usize, u64) -> u64) {
    let mut wrote = false;
    for (i, word) in state.iter_mut().enumerate() {
        let t = to(i, *word);
        if *word != t {
            step(UpdateStep::Write {
                word: i as u8,
                value: t,
            });
            *word = t;
            wrote = true;
        }
    }
    if wrote {
        step(UpdateStep::Sync);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smmuv3::ste::tests::{s1, s2};
    use crate::smmuv3::ste::{Ste, SteBuilder};

    /// What the unit would see if it read `w` now: the used bits only.
    fn view(w: &[u64; 8]) -> [u64; 8] {
        let u = used_bits(w);
        core::array::from_fn(|i| w[i] & u[i])
    }

    /// Plans, replays write by write and checks that every intermediate state reads as the
    /// old configuration, the new one or abort; returns the number of syncs.
    fn syncs(cur: Ste, tgt: Ste) -> usize {
        let plan = plan_update(&cur, &tgt);
        let mut state = cur.words;
        let allowed = [view(&cur.words), view(&tgt.words), view(&Ste::ABORT.words)];
        for step in plan.steps() {
            if let UpdateStep::Write { word, value } = *step {
                state[word as usize] = value;
                assert!(
                    allowed.contains(&view(&state)),
                    "torn STE {state:x?} in {plan:?}"
                );
            }
        }
        assert_eq!(state, tgt.words);
        // `apply` performs exactly the same writes.
        let live: [AtomicU64; 8] = core::array::from_fn(|i| AtomicU64::new(cur.words[i]));
        let mut n = 0;
        plan.apply(&live, || -> Result<(), ()> {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(live.map(|w| w.into_inner()), tgt.words);
        assert_eq!(n, plan.sync_count());
        // `apply_update` (the plan performed as it is planned, no copy kept) makes the same
        // stores and syncs, and stops where `apply` stops when a sync fails.
        for ok_syncs in 0..=n {
            let fail_after = |k: &mut usize| {
                *k += 1;
                if *k > ok_syncs {
                    Err(*k)
                } else {
                    Ok(())
                }
            };
            let by_plan: [AtomicU64; 8] = core::array::from_fn(|i| AtomicU64::new(cur.words[i]));
            let mut k = 0;
            let r_plan = plan.apply(&by_plan, || fail_after(&mut k));
            let streamed: [AtomicU64; 8] = core::array::from_fn(|i| AtomicU64::new(cur.words[i]));
            let mut k = 0;
            let r_streamed = apply_update(&cur, &tgt, &streamed, || fail_after(&mut k));
            assert_eq!(
                streamed.map(|w| w.into_inner()),
                by_plan.map(|w| w.into_inner())
            );
            match (r_plan, r_streamed) {
                (Ok(()), Ok(syncs)) => assert_eq!(syncs, n),
                (Err(a), Err(b)) => assert_eq!(a, b),
                other => panic!("apply and apply_update differ: {other:?}"),
            }
        }
        n
    }

    #[test]
    fn transition_sync_counts() {
        let abort = SteBuilder::abort().build().unwrap();
        let bypass = SteBuilder::bypass().build().unwrap();
        let s2a = SteBuilder::stage2(s2(0x10_0000, 1)).build().unwrap();
        let s2b = SteBuilder::stage2(s2(0x20_0000, 1)).build().unwrap();
        let s2c = SteBuilder::stage2(s2(0x30_0000, 2)).build().unwrap();
        let st1 = SteBuilder::stage1(s1(0x4_0000)).build().unwrap();
        let nested = SteBuilder::nested(s1(0x4_0000), s2(0x10_0000, 0))
            .build()
            .unwrap();

        // Word 1 (SHCFG) is prepared, then word 0 switches: two syncs.
        assert_eq!(syncs(abort, bypass), 2);
        // Words 1-3 prepared (unused in bypass), then word 0: two syncs.
        assert_eq!(syncs(bypass, s2a), 2);
        // Only S2TTB differs: one write, one sync.
        assert_eq!(syncs(s2a, s2b), 1);
        assert_eq!(plan_update(&s2a, &s2b).steps().len(), 2);
        // New table and new VMID: two words in use change, so abort, write, enable.
        assert_eq!(syncs(s2b, s2c), 3);
        // S2 (VMID 1) -> S1 (S2VMID 0 tags its TLB entries): word 0 and word 2 both change in
        // used bits, so the update breaks.
        assert_eq!(syncs(s2a, st1), 3);
        // S1 -> nested on the same pointer bits: a PA becomes an IPA, another CD table, so
        // the update breaks (`new_cd_table`).
        assert_eq!(syncs(st1, nested), 3);
        // Anything -> abort: word 0 first, then the rest is cleaned.
        for from in [bypass, s2a, st1, nested] {
            let plan = plan_update(&from, &abort);
            assert_eq!(plan.steps()[0], UpdateStep::Write { word: 0, value: V });
            assert!(syncs(from, abort) <= 2);
        }
        assert_eq!(syncs(abort, abort), 0);
        // From an invalid STE everything but word 0 is unused: prepare, then enable.
        assert_eq!(syncs(Ste::INVALID, nested), 2);
    }

    /// `PPAR` is read once the STE translates (the SMMU's own answers to the page requests a
    /// PRI queue overflow discards): written before the Config that makes it live, not in a
    /// clean-up group after (it was not among the used bits).
    #[test]
    fn ppar_is_in_place_when_the_stream_goes_live() {
        let abort = SteBuilder::abort().build().unwrap();
        for target in [
            SteBuilder::stage1(s1(0x4_0000)).ppar(true),
            SteBuilder::nested(s1(0x8_0000), s2(0x10_0000, 1)).ppar(true),
        ] {
            let target = target.build().unwrap();
            let mut state = abort.words;
            for step in plan_update(&abort, &target).steps() {
                if let UpdateStep::Write { word, value } = *step {
                    state[word as usize] = value;
                    if CONFIG.get(state[0]) & 0b100 != 0 {
                        assert_ne!(state[1] & PPAR, 0, "live without PPAR: {state:x?}");
                    }
                }
            }
        }
    }

    /// An STE whose CD table changes (a guest's user domain replaced by a host stage-1
    /// domain, or the other way round, or another table) passes through abort, with a sync,
    /// before the new table's STE is live: that sync's CMD_CFGI_STE drops the old table's
    /// cached CDs. Before, nested -> stage 1 was one store of word 0.
    #[test]
    fn a_new_cd_table_goes_through_abort() {
        let st1 = SteBuilder::stage1(s1(0x4_0000)).build().unwrap();
        let other = SteBuilder::stage1(s1(0x6_0000)).build().unwrap();
        let nested = SteBuilder::nested(s1(0x8_0000), s2(0x10_0000, 1))
            .build()
            .unwrap();
        let same_table = SteBuilder::nested(s1(0x4_0000), s2(0x10_0000, 0))
            .build()
            .unwrap();
        let through_abort = |a: Ste, b: Ste| {
            let mut state = a.words;
            let mut aborted = false;
            for step in plan_update(&a, &b).steps() {
                match *step {
                    UpdateStep::Write { word, value } => state[word as usize] = value,
                    UpdateStep::Sync => aborted |= view(&state) == view(&Ste::ABORT.words),
                }
            }
            aborted
        };
        for (a, b) in [(nested, st1), (st1, nested), (st1, other), (nested, other)] {
            assert!(through_abort(a, b), "{a:x?} -> {b:x?} in one store");
            assert!(syncs(a, b) >= 2);
        }
        // The same bits under another Config: a nested STE's pointer is an IPA (review of
        // 18:00: this was hitless).
        assert!(through_abort(st1, same_table));
        assert!(through_abort(same_table, st1));
        // The same CD table, another word 1: hitless as before.
        let ats = SteBuilder::stage1(s1(0x4_0000))
            .eats(crate::smmuv3::ste::Eats::Translate)
            .build()
            .unwrap();
        assert!(!through_abort(st1, ats));
    }

    #[test]
    fn every_pair_is_safe() {
        let all = [
            Ste::INVALID,
            SteBuilder::abort().build().unwrap(),
            SteBuilder::bypass().build().unwrap(),
            SteBuilder::stage2(s2(0x10_0000, 1)).build().unwrap(),
            SteBuilder::stage2(s2(0x20_0000, 9)).build().unwrap(),
            SteBuilder::stage1(s1(0x4_0000)).build().unwrap(),
            SteBuilder::nested(s1(0x8_0000), s2(0x10_0000, 1))
                .build()
                .unwrap(),
        ];
        for a in all {
            for b in all {
                assert!(syncs(a, b) <= 3);
            }
        }
    }
}
