//! The checks after each step: translations through both models against the shadow, grants,
//! domains per unit, the arena's books.

use std::vec::Vec;

use super::*;

impl Harness<'_, '_> {
    // ---------------------------------------------------------------------------------------
    // checks

    pub(super) fn completions(&self) -> [u64; 2] {
        [self.vm.stats().wait, self.sm.stats().syncs]
    }

    /// The arena is nearly out of pages: `NoMemory` is then a legitimate answer.
    pub(super) fn low_memory(&self) -> bool {
        let s = self.arena.stats();
        s.live_bytes + (64 << 12) > ARENA_BYTES
    }

    pub(super) fn after_step(&mut self, ctxs: &[Ctx<'_, '_>]) {
        self.steps += 1;
        for (c, s) in self.shadow.iter().enumerate() {
            let granted = s.grants.values().any(|&g| g > 0);
            assert_eq!(ctxs[c].incoherent_dma_allowed(), granted, "grants of {c}");
        }
        // One domain per (IOASID, unit) with attachments: after a step that attached or
        // detached something (only those create or free domains), and every
        // [`FULL_CHECK_EVERY`] steps whatever the steps were. Counting asks each unit about 64
        // handles (after every step: 2.3% of the target's cycles in `domain_geometry` alone).
        let full = self.steps % FULL_CHECK_EVERY == 0;
        let count_domains = core::mem::take(&mut self.domains_changed) || full;
        for u in (0..2).filter(|_| count_domains) {
            let want: usize = self
                .shadow
                .iter()
                .map(|s| s.ios.keys().filter(|&&io| s.units_of(io)[u]).count())
                .sum();
            assert_eq!(domains(self.units[u]), want, "unit {u}: domains");
        }
        assert_eq!(self.arena.bad_frees(), [], "bad frees");
        if full {
            let pairs = self.all_pairs();
            let samples = self.all_samples();
            self.probe_pairs(&pairs, &samples);
        }
    }

    /// Every (device, PASID) the fuzzer may have used, with a dummy IOASID.
    pub(super) fn all_pairs(&self) -> Vec<(Pair, u16)> {
        let mut v = Vec::new();
        for l in 0..LABELS.len() {
            v.push(((l, None), 0));
            for p in 1..=3 {
                v.push(((l, Some(p)), 0));
            }
        }
        for s in &self.shadow {
            for ((l, p), _) in s.pairs() {
                if let Some(p) = p {
                    v.push(((l, Some(p)), 0));
                }
            }
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Up to [`PROBES`] pages drawn from every IOASID's mappings, plus a few fixed ones.
    ///
    /// Each draw picks an IOASID in proportion to its mapped pages, then the first mapped page
    /// at or after a random point of a random region (wrapping), without listing every mapped
    /// page (which, at every attach and every full check, cost more than the probes).
    pub(super) fn all_samples(&mut self) -> Vec<u64> {
        let total: usize = self
            .shadow
            .iter()
            .flat_map(|s| s.ios.values().map(|(_, m)| m.len()))
            .sum();
        let draws: Vec<(u64, u64)> = (0..PROBES.min(total))
            .map(|_| (self.rand(), self.rand()))
            .collect();
        let maps: Vec<&Pages> = self
            .shadow
            .iter()
            .flat_map(|s| s.ios.values().map(|(_, m)| m))
            .filter(|m| !m.is_empty())
            .collect();
        let mut v = std::vec![REGIONS[0], REGIONS[2] + 0x20_0000];
        for (r, point) in draws {
            let mut i = (r % total as u64) as usize;
            let Some(m) = maps.iter().find(|m| {
                let here = i < m.len();
                i = i.saturating_sub(m.len());
                here
            }) else {
                continue;
            };
            let bases = [REGIONS[0], REGIONS[1], REGIONS[2], REGIONS[3], STRADDLE];
            let region = bases[(point % bases.len() as u64) as usize];
            let at = region + (point >> 32) % WINDOW * K4;
            let page = m.range(at..).next().or_else(|| m.iter().next());
            v.extend(page.map(|(&iova, _)| iova));
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Probes every device of IOASID `io` of context `c` over a range (sampled), and the
    /// record there.
    pub(super) fn probe_range(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        c: usize,
        io: u16,
        start: u64,
        pages: u64,
    ) {
        let mut at = std::vec![start.saturating_sub(K4), start + pages * K4];
        let step = (pages / PROBES as u64).max(1);
        at.extend((0..pages).step_by(step as usize).map(|i| start + i * K4));
        at.push(start + (pages - 1) * K4);
        let pairs: Vec<_> = self.shadow[c]
            .pairs()
            .into_iter()
            .filter(|&(_, i)| i == io)
            .collect();
        self.probe_pairs(&pairs, &at);
        if let Some((_, map)) = self.shadow[c].ios.get(&io) {
            for &a in &at {
                let got = ctxs[c]
                    .translate(ctxs[c].ioasid_in_slot(io), Iova::new(a))
                    .expect("IOASID exists");
                let want = map.get(&a).map(|&(pa, prot)| (pa, prot));
                assert_eq!(
                    got.map(|m| (m.pa.get(), m.prot)),
                    want,
                    "record of {io} at {a:#x}"
                );
            }
        }
    }

    /// What a (device, PASID) pair is attached to: (context, IOASID).
    pub(super) fn attachment(&self, pair: Pair) -> Option<(usize, u16)> {
        let (l, p) = pair;
        let c = self.owner[l]?;
        let s = &self.shadow[c];
        let h = s.handle_of(l)?;
        let io = match p {
            None => s.devs.get(&h)?.2?,
            Some(p) => *s.pasid_att.get(&(h, p))?,
        };
        Some((c, io))
    }

    /// Probes each pair at each address (faults only fill the models' fault records and
    /// event queue, which overflow harmlessly).
    pub(super) fn probe_pairs(&self, pairs: &[(Pair, u16)], at: &[u64]) {
        for &(pair, _) in pairs {
            let att = self.attachment(pair);
            for &a in at {
                self.probe(pair, att, a);
            }
        }
    }

    /// One device access at `iova`, checked against the shadow.
    pub(super) fn probe(&self, (l, pasid): Pair, att: Option<(usize, u16)>, iova: u64) {
        let want = att.and_then(|(c, io)| {
            let (flags, map) = self.shadow[c].ios.get(&io)?;
            let &(pa, prot) = map.get(&iova)?;
            Some((pa, prot, flags.contains(IoasidFlags::ENFORCE_SNOOP)))
        });
        let (unit, id) = LABELS[l];
        for access in [Access::READ, Access::WRITE] {
            let got = if unit == 0 {
                self.vm
                    .translate(id as u16, pasid, iova, access)
                    .ok()
                    .map(|t| (t.pa, t.snoop))
            } else {
                self.sm
                    .translate(id, pasid, iova, access)
                    .ok()
                    .map(|t| (t.pa, t.coherent))
            };
            let needed = if access.write {
                Prot::WRITE
            } else {
                Prot::READ
            };
            let what = || {
                std::format!("unit {unit} device {id:#x} PASID {pasid:?} {access:?} at {iova:#x}")
            };
            match (got, want) {
                (Some((pa, snooped)), Some((want_pa, prot, enforce))) => {
                    assert_eq!(pa, want_pa, "{}: wrong page", what());
                    assert!(prot.contains(needed), "{}: allowed beyond {prot:?}", what());
                    assert!(
                        !prot.contains(Prot::PRIV),
                        "{}: user access to a privileged page",
                        what()
                    );
                    assert!(snooped || !enforce, "{}: snoop downgraded", what());
                }
                (Some((pa, _)), None) => {
                    panic!(
                        "{}: translates to {pa:#x}, nothing asked for (attached {att:?})",
                        what()
                    )
                }
                (None, Some((_, prot, _))) => assert!(
                    !prot.contains(needed)
                        || prot.contains(Prot::PRIV)
                        || att.is_some_and(|(c, io)| self.loose.contains(&(c, io, iova))),
                    "{}: mapped {prot:?} but faults",
                    what()
                ),
                (None, None) => {}
            }
        }
    }

    /// The first leaf each domain of IOASID `io` of context `c` holds in `[start, end)`, as
    /// (unit, IOVA), walked in the domain's tables (not through the models' caches): the range
    /// widened to the domain's granule (every leaf of the widened range covers part of the
    /// range) and cut at its input width (beyond it no leaf can be, and the walk refuses).
    pub(super) fn domain_leaves(
        &self,
        ctxs: &[Ctx<'_, '_>],
        c: usize,
        io: u16,
        start: u64,
        end: u64,
    ) -> Vec<(u8, u64)> {
        let domains = ctxs[c]
            .domains_of(ctxs[c].ioasid_in_slot(io))
            .expect("IOASID exists");
        let mut found = Vec::new();
        for &(unit, handle) in domains.iter().flatten() {
            let u = self.units[usize::from(unit.0)];
            let (ias, sizes) = u.domain_geometry(handle).expect("a live domain");
            let granule = sizes & sizes.wrapping_neg();
            let limit = 1u64.checked_shl(ias).unwrap_or(u64::MAX);
            let from = start & !(granule - 1);
            let to = end.saturating_add(granule - 1) & !(granule - 1);
            let to = to.min(limit);
            if from >= to {
                continue;
            }
            let mut first = None;
            u.for_each_mapping(handle, Iova::new(from), to - from, &mut |l| {
                first = first.or(Some(l.iova.get()));
            })
            .expect("walk of a domain");
            found.extend(first.map(|f| (unit.0, f)));
        }
        found
    }

    pub(super) fn final_check(&mut self, ctxs: &[Ctx<'_, '_>]) {
        let pairs = self.all_pairs();
        for (pair, _) in pairs {
            let Some((c, io)) = self.attachment(pair) else {
                continue;
            };
            let pages: Vec<u64> = self.shadow[c].ios[&io].1.keys().copied().collect();
            let step = (pages.len() / 64).max(1);
            for &a in pages.iter().step_by(step) {
                self.probe(pair, Some((c, io)), a);
            }
        }
        let _ = ctxs;
    }
}
