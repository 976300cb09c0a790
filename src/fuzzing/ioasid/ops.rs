//! The operations: each calls the layer, checks its result against the rules the shadow
//! implies, and updates the shadow.

use std::collections::BTreeMap;
use std::vec::Vec;

use super::*;
use crate::pgtable::Error as PtError;

impl<'h, 'm> Harness<'h, 'm> {
    // ---------------------------------------------------------------------------------------
    // operations: each calls the layer, checks the result against the rules, updates the shadow

    pub(super) fn bind(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        no_snoop: bool,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let l = usize::from(dev) % LABELS.len();
        let r = ctxs[c].bind(label(l), no_snoop);
        match (r, self.owner[l]) {
            (Err(Error::Busy), Some(_)) => {}
            (Ok(h), None) => {
                self.owner[l] = Some(c);
                let prev = self.shadow[c].devs.insert(h.slot(), (l, no_snoop, None));
                assert!(prev.is_none(), "bind reused live slot {}", h.slot());
            }
            (r, owner) => panic!("bind {l} in {c} (owner {owner:?}): {r:?}"),
        }
        Touched::Nothing
    }

    pub(super) fn unbind(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let s = &self.shadow[c];
        // As iommufd's: unbinding an attached device detaches it (PASIDs too); only a grant
        // keeps it bound.
        let busy = s.grants.get(&k).is_some_and(|&g| g > 0);
        let r = ctxs[c].unbind(h);
        match r {
            Err(Error::NoSuchDevice(_)) if !s.devs.contains_key(&k) => Touched::Nothing,
            Err(Error::Busy) if busy => Touched::Nothing,
            Ok(()) if s.devs.contains_key(&k) && !busy => {
                let s = &mut self.shadow[c];
                s.devs.remove(&k);
                let mut touched = std::vec![(l, None)];
                s.pasid_att.retain(|a, _| {
                    if a.0 == k {
                        touched.push((l, Some(a.1)));
                    }
                    a.0 != k
                });
                self.owner[l] = None;
                Touched::Pairs(touched)
            }
            r => panic!("unbind {l} in {c} (busy {busy}): {r:?}"),
        }
    }

    pub(super) fn alloc(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, flags: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let flags = IoasidFlags::from_bits_truncate(u32::from(flags));
        match ctxs[c].alloc(flags) {
            Ok(id) => {
                assert_eq!(ctxs[c].flags(id), Ok(flags));
                let prev = self.shadow[c]
                    .ios
                    .insert(id.slot(), (flags, BTreeMap::new()));
                assert!(prev.is_none(), "alloc reused live IOASID {}", id.slot());
            }
            Err(Error::Capacity(_)) => {
                assert_eq!(self.shadow[c].ios.len(), crate::ioasid::MAX_IOASIDS)
            }
            Err(e) => assert!(self.fail_armed || self.low_memory(), "alloc: {e:?}"),
        }
        Touched::Nothing
    }

    pub(super) fn free(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, io: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(ctxs, c, io);
        let s = &self.shadow[c];
        let r = ctxs[c].free(id);
        match r {
            Err(Error::NoSuchIoasid(_)) if !s.ios.contains_key(&id.slot()) => {}
            Err(Error::Busy) if s.in_use(id.slot()) => {}
            Ok(()) if s.ios.contains_key(&id.slot()) && !s.in_use(id.slot()) => {
                self.shadow[c].ios.remove(&id.slot());
                assert_eq!(ctxs[c].flags(id), Err(Error::NoSuchIoasid(id)));
            }
            r => panic!("free {} in {c}: {r:?}", id.slot()),
        }
        Touched::Nothing
    }

    /// Why attaching label `l` of context `c` to `io` must fail, if the rules say it must.
    pub(super) fn must_refuse(&self, c: usize, l: usize, io: u16) -> Option<&'static str> {
        let (flags, map) = self.shadow[c].ios.get(&io)?;
        let unit = usize::from(LABELS[l].0);
        if flags.contains(IoasidFlags::ENFORCE_SNOOP) && !self.caps[unit].enforce_snoop {
            return Some("ENFORCE_SNOOP on a unit without snoop control");
        }
        if flags.contains(IoasidFlags::SUPERVISOR) && !self.caps[unit].supervisor {
            return Some("SUPERVISOR on a unit that cannot honour supervisor requests");
        }
        if unit == 0 && map.range(MSI.0..MSI.1).next().is_some() {
            return Some("a mapping in the VT-d interrupt window");
        }
        None
    }

    pub(super) fn attach(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8, io: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let id = self.ioasid(ctxs, c, io);
        let r = ctxs[c].attach(h, id);
        let s = &self.shadow[c];
        let Some(&(_, _, old)) = s.devs.get(&k) else {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
            return Touched::Nothing;
        };
        if !s.ios.contains_key(&id.slot()) {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        }
        let refuse = (old != Some(id.slot()))
            .then(|| self.must_refuse(c, l, id.slot()))
            .flatten();
        match r {
            Ok(()) => {
                assert!(
                    refuse.is_none(),
                    "attach of {l} succeeded despite {refuse:?}"
                );
                if let Some(d) = self.shadow[c].devs.get_mut(&k) {
                    d.2 = Some(id.slot());
                }
            }
            Err(e) => {
                assert_ne!(old, Some(id.slot()), "attach to the same IOASID: {e:?}");
                // Refused for the rules' reason, or for another the unit meets first (a
                // capability it lacks, a recorded mapping whose permissions its format cannot
                // express, an allocation that failed).
                if refuse.is_some() {
                    let named = matches!(e, Error::Incompatible { device, .. } if device == h)
                        || matches!(e, Error::PageTable(PtError::UnsupportedProt { .. }))
                        || self.fail_armed
                        || self.low_memory();
                    assert!(named, "attach of {l} refused with {e:?} for {refuse:?}");
                }
            }
        }
        Touched::Pairs(std::vec![(l, None)])
    }

    pub(super) fn attach_pasid(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        pasid: u8,
        io: u8,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let id = self.ioasid(ctxs, c, io);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].attach_pasid(h, p, id);
        let s = &self.shadow[c];
        let old = s.pasid_att.get(&(k, p.get())).copied();
        if !s.pasids.contains(&p.get()) {
            assert_eq!(r, Err(Error::PasidNotOwned(p)));
            return Touched::Nothing;
        }
        if !s.devs.contains_key(&k) {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
            return Touched::Nothing;
        }
        let Some((flags, _)) = s.ios.get(&id.slot()) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let unit = usize::from(LABELS[l].0);
        let refuse = if !flags.contains(IoasidFlags::PASID) {
            Some(Incompatibility::NotPasidCapable)
        } else if self.caps[unit].pasid_bits == 0 {
            Some(Incompatibility::Missing(Missing::Pasid { bits: 0 }))
        } else {
            None
        };
        if let Some(reason) = refuse {
            assert_eq!(r, Err(Error::Incompatible { device: h, reason }));
            return Touched::Nothing;
        }
        let must = (old != Some(id.slot()))
            .then(|| self.must_refuse(c, l, id.slot()))
            .flatten();
        match r {
            Ok(()) => {
                assert!(
                    must.is_none(),
                    "attach_pasid of {l} succeeded despite {must:?}"
                );
                self.shadow[c].pasid_att.insert((k, p.get()), id.slot());
            }
            Err(e) => assert_ne!(
                old,
                Some(id.slot()),
                "attach_pasid to the same IOASID: {e:?}"
            ),
        }
        Touched::Pairs(std::vec![(l, Some(p.get()))])
    }

    pub(super) fn detach(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, dev: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let r = ctxs[c].detach(h);
        match self.shadow[c].devs.get_mut(&k) {
            None => assert_eq!(r, Err(Error::NoSuchDevice(h))),
            Some(d) if d.2.is_none() => assert_eq!(r, Err(Error::NotAttached(h))),
            Some(d) => {
                assert_eq!(r, Ok(()), "detach {l}");
                d.2 = None;
            }
        }
        Touched::Pairs(std::vec![(l, None)])
    }

    pub(super) fn detach_pasid(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        pasid: u8,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].detach_pasid(h, p);
        let s = &mut self.shadow[c];
        if !s.devs.contains_key(&k) {
            assert_eq!(r, Err(Error::NoSuchDevice(h)));
        } else if s.pasid_att.remove(&(k, p.get())).is_some() {
            assert_eq!(r, Ok(()), "detach_pasid {l} {p}");
        } else {
            assert_eq!(r, Err(Error::NotAttached(h)));
        }
        Touched::Pairs(std::vec![(l, Some(p.get()))])
    }

    pub(super) fn alloc_pasid(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let r = ctxs[c].alloc_pasid();
        let held = self.shadow[c].pasids.len() as u32;
        let quota = self.shadow[c].quota;
        match r {
            Err(Error::Quota(q)) if held >= quota && q == quota => {}
            Ok(p) if held < quota => {
                let taken = self.shadow.iter().any(|s| s.pasids.contains(&p.get()));
                assert!(!taken && p.get() != 0, "PASID {p} handed out twice");
                self.shadow[c].pasids.insert(p.get());
            }
            Err(Error::PasidExhausted) => {
                let all: usize = self.shadow.iter().map(|s| s.pasids.len()).sum();
                assert_eq!(all, (1 << PASID_BITS) - 1, "exhausted early");
            }
            r => panic!("alloc_pasid in {c} ({held} of {quota}): {r:?}"),
        }
        Touched::Nothing
    }

    pub(super) fn free_pasid(&mut self, ctxs: &[Ctx<'_, '_>], ctx: u8, pasid: u8) -> Touched {
        let c = Self::ctx_index(ctx);
        let p = self.pasid(c, pasid);
        let r = ctxs[c].free_pasid(p);
        let s = &mut self.shadow[c];
        if !s.pasids.contains(&p.get()) {
            assert_eq!(r, Err(Error::PasidNotOwned(p)));
        } else if s.pasid_att.keys().any(|k| k.1 == p.get()) {
            assert_eq!(r, Err(Error::Busy));
        } else {
            assert_eq!(r, Ok(()));
            s.pasids.remove(&p.get());
        }
        Touched::Nothing
    }

    /// (first IOVA, pages) of a range inside a region.
    pub(super) fn range(region: u8, first: u16, count: u16) -> (u64, u64) {
        let base = region_base(region);
        let first = u64::from(first) % WINDOW;
        let pages = 1 + u64::from(count) % (WINDOW - first);
        (base + first * K4, pages)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn map(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
        pa: u16,
        prot: u8,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(ctxs, c, io);
        let (start, pages) = Self::range(region, first, count);
        // Bit 15: beyond the SMMUv3 model's 44-bit output size; bit 14: the same offset in a
        // 2 MiB page as the IOVA, so that 2 MiB leaves are possible.
        let page = if pa & 0x4000 != 0 {
            u64::from(pa & 0x3f) << 9 | ((start / K4) & 0x1ff)
        } else {
            u64::from(pa & 0x3fff)
        };
        let pa_start = if pa & 0x8000 != 0 {
            1 << 45
        } else {
            0x2_0000_0000
        } + page * K4;
        let prot = if prot & 0x30 == 0 {
            Prot::READ | Prot::WRITE
        } else {
            Prot::from_bits_truncate(prot)
        };
        let before = self.completions();
        let r = ctxs[c].map(
            id,
            Iova::new(start),
            PhysAddr::new(pa_start),
            pages * K4,
            prot,
        );
        let Some(&(flags, ref map)) = self.shadow[c].ios.get(&id.slot()) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let end = start + pages * K4;
        let overlap = map.range(start..end).next().is_some();
        let units = self.shadow[c].units_of(id.slot());
        let reserved = units[0] && start < MSI.1 && MSI.0 < end;
        // The narrowest input width of the IOASID's domains, if the range reaches beyond it:
        // every such map is refused for it, naming it, before anything is touched (review 20
        // L3a: a map across 2^44 refused by SMMUv3's table after VT-d was written and rolled
        // back would pass the catch-all arm below).
        let beyond = self
            .narrowest_width(ctxs, c, id)
            .filter(|&ias| (end - 1) >> ias != 0);
        match r {
            Ok(()) => {
                assert_eq!(
                    beyond, None,
                    "map at {start:#x}..{end:#x} beyond a domain's width"
                );
                assert!(!overlap, "map over an existing mapping at {start:#x}");
                assert!(
                    !reserved,
                    "map into the VT-d interrupt window at {start:#x}"
                );
                assert!(
                    prot.intersects(Prot::READ | Prot::WRITE),
                    "map with {prot:?}"
                );
                assert!(
                    !prot.contains(Prot::PRIV) || flags.contains(IoasidFlags::SUPERVISOR),
                    "PRIV mapped outside a SUPERVISOR IOASID"
                );
                let map = &mut self.shadow[c].ios.get_mut(&id.slot()).expect("IOASID").1;
                for i in 0..pages {
                    map.insert(start + i * K4, (pa_start + i * K4, prot));
                    self.loose.remove(&(c, id.slot(), start + i * K4));
                }
            }
            Err(e) if prot.contains(Prot::PRIV) && !flags.contains(IoasidFlags::SUPERVISOR) => {
                assert_eq!(
                    e,
                    Error::PageTable(PtError::UnsupportedProt { prot }),
                    "PRIV outside a SUPERVISOR IOASID"
                );
            }
            Err(e) if reserved => assert!(matches!(e, Error::Reserved(_)), "{e:?}"),
            Err(Error::BeyondInputWidth { last, ias, unit }) => {
                // Named truly: that unit's domain of the IOASID is the narrowest, and the range
                // reaches beyond it; nothing was touched (no wait completed; the probes after
                // the step).
                assert_eq!(beyond, Some(ias), "BeyondInputWidth names {ias} bits");
                assert_eq!(
                    self.completions(),
                    before,
                    "a width refusal waited on a unit"
                );
                assert_eq!(last.get(), end - 1, "BeyondInputWidth names {last}");
                assert!((end - 1) >> ias != 0, "{end:#x} is below {ias} bits");
                let domains = ctxs[c].domains_of(id).expect("IOASID exists");
                let (u, h) = domains
                    .iter()
                    .flatten()
                    .find(|d| d.0 == unit)
                    .copied()
                    .expect("the named unit has a domain of the IOASID");
                let width = self.units[usize::from(u.0)].domain_geometry(h).map(|g| g.0);
                assert_eq!(width, Ok(ias), "BeyondInputWidth of unit {}", u.0);
            }
            Err(e) => {
                assert_eq!(
                    beyond, None,
                    "map at {start:#x}..{end:#x} beyond a domain's width refused with {e:?}"
                );
                // An undo that left a domain mapping some of the range (`undo_left`) keeps the
                // whole range in the record, as mapped, until an unmap of it; any other
                // failure leaves the record as it was. All or nothing, and only with
                // `InvalidationPending`.
                let kept = !overlap
                    && ctxs[c]
                        .translate(id, Iova::new(start))
                        .expect("IOASID exists")
                        .is_some();
                if kept {
                    assert!(
                        matches!(e, Error::InvalidationPending { .. }),
                        "record kept after {e:?}"
                    );
                    // Kept only because a domain still maps some of it (`undo_left`): a
                    // range kept with nothing behind it could never be told from a mapping
                    // (review 19b F4; 19b's granule refusal was one).
                    let held = self.domain_leaves(ctxs, c, id.slot(), start, end);
                    assert!(
                        !held.is_empty(),
                        "map at {start:#x} kept in the record after {e:?}, no domain holds it"
                    );
                    let map = &mut self.shadow[c].ios.get_mut(&id.slot()).expect("IOASID").1;
                    for i in 0..pages {
                        map.insert(start + i * K4, (pa_start + i * K4, prot));
                        self.loose.insert((c, id.slot(), start + i * K4));
                    }
                }
                // A domain that mapped before another refused got the range back out, with
                // one flush, and the tables the map built were reclaimed, with one more.
                let after = self.completions();
                for u in 0..2 {
                    let waits = after[u] - before[u];
                    let cm = u == 0 && self.caching_mode;
                    assert!(
                        cm || waits <= 2 * u64::from(units[u]),
                        "map rollback: {waits} waits"
                    );
                }
            }
        }
        Touched::Range {
            c,
            io: id.slot(),
            start,
            pages,
        }
    }

    /// The narrowest input width of the domains of IOASID `id` of context `c`, if it has any.
    fn narrowest_width(&self, ctxs: &[Ctx<'_, '_>], c: usize, id: IoasidId) -> Option<u32> {
        let domains = ctxs[c].domains_of(id).ok()?;
        domains
            .iter()
            .flatten()
            .map(|&(u, h)| {
                let width = self.units[usize::from(u.0)].domain_geometry(h);
                width.expect("a domain of the IOASID has a geometry").0
            })
            .min()
    }

    pub(super) fn unmap(
        &mut self,
        ctxs: &[Ctx<'_, '_>],
        ctx: u8,
        io: u8,
        region: u8,
        first: u16,
        count: u16,
    ) -> Touched {
        let c = Self::ctx_index(ctx);
        let id = self.ioasid(ctxs, c, io);
        let all = region == UNMAP_ALL_REGION;
        let (start, pages) = if all {
            (0, 0)
        } else {
            Self::range(region, first, count)
        };
        let end = if all { u64::MAX } else { start + pages * K4 };
        let before = self.completions();
        let r = if all {
            ctxs[c].unmap(id, Iova::ZERO, crate::ioasid::UNMAP_ALL)
        } else {
            ctxs[c].unmap(id, Iova::new(start), pages * K4)
        };
        let after = self.completions();
        let Some((_, map)) = self.shadow[c].ios.get(&id.slot()) else {
            assert_eq!(r, Err(Error::NoSuchIoasid(id)));
            return Touched::Nothing;
        };
        let mapped = map.range(start..end).count() as u64;
        let units = self.shadow[c].units_of(id.slot());
        match r {
            Ok(bytes) => {
                assert_eq!(
                    bytes,
                    mapped * K4,
                    "unmap at {start:#x} returned {bytes:#x}"
                );
                for u in 0..2 {
                    let waits = after[u] - before[u];
                    // One for the unmap; one more if it filled the IOASID's reclaim log and
                    // a table was unlinked.
                    if units[u] && mapped > 0 {
                        assert!((1..=2).contains(&waits), "unit {u}: {waits} for one unmap");
                    } else {
                        assert!(waits <= 2 * u64::from(units[u]), "unit {u}: {waits} waits");
                    }
                }
                // `Ok` only once no domain of the IOASID maps anything in the range asked,
                // walked in the tables (review 19b F2: `UNMAP_ALL` returned `Ok` with a page
                // beyond the narrowest width still mapped in a wider domain).
                let left = self.domain_leaves(ctxs, c, id.slot(), start, end);
                assert!(
                    left.is_empty(),
                    "unmap of {start:#x}..{end:#x} returned Ok, domains still map {left:x?}"
                );
                let map = &mut self.shadow[c].ios.get_mut(&id.slot()).expect("IOASID").1;
                let gone: Vec<u64> = map.range(start..end).map(|(&k, _)| k).collect();
                for k in &gone {
                    map.remove(k);
                    self.loose.remove(&(c, id.slot(), *k));
                }
                if all {
                    // Probe a sample of what went, from each device of the IOASID.
                    let step = (gone.len() / PROBES).max(1);
                    let at: Vec<u64> = gone.iter().step_by(step).copied().collect();
                    let pairs: Vec<_> = self.shadow[c]
                        .pairs()
                        .into_iter()
                        .filter(|&(_, i)| i == id.slot())
                        .collect();
                    self.probe_pairs(&pairs, &at);
                }
            }
            // A split that needed a page the arena refused, a range beyond the input size of
            // a domain (the SMMUv3's 44 bits), or part of a coarser SMMUv3 granule: every
            // domain got the range back.
            Err(e) => {
                let g = self.smmu_granule;
                let part = start % g != 0 || end % g != 0;
                assert!(
                    self.fail_armed
                        || self.low_memory()
                        || (units[1] && !all && (end > 1 << SMMU_IAS || part)),
                    "unmap of {start:#x}..{end:#x}: {e:?}"
                );
            }
        }
        if all {
            return Touched::Nothing;
        }
        Touched::Range {
            c,
            io: id.slot(),
            start,
            pages,
        }
    }

    /// Grants incoherent DMA and runs the next `hold % 8` operations with the grant held.
    pub(super) fn grant<'c>(
        &mut self,
        ctxs: &'c [Ctx<'_, '_>],
        ctx: u8,
        dev: u8,
        hold: u8,
        it: &mut core::slice::Iter<'_, Op>,
    ) {
        let c = Self::ctx_index(ctx);
        let (l, h, k) = self.handle(ctxs, c, dev);
        let r: Result<IncoherentDmaGrant<'c>, Error> = ctxs[c].allow_incoherent_dma(h);
        let g = match (r, self.shadow[c].devs.get(&k)) {
            (Err(Error::NoSuchDevice(_)), None) => return,
            (Err(Error::NotNoSnoopCapable(_)), Some(d)) if !d.1 => return,
            (Ok(g), Some(d)) if d.1 => g,
            (r, d) => panic!("grant for {l} in {c} ({d:?}): {r:?}"),
        };
        assert_eq!(g.device(), h);
        *self.shadow[c].grants.entry(k).or_default() += 1;
        self.after_step(ctxs);
        for _ in 0..hold % 8 {
            let Some(op) = it.next() else { break };
            match *op {
                // The grant borrows its context: dropping one is what the types forbid here.
                Op::DropCtx { .. } => {}
                Op::Grant { ctx, dev, hold } => self.grant(ctxs, ctx, dev, hold, it),
                _ => self.step(ctxs, op),
            }
            self.after_step(ctxs);
        }
        drop(g);
        *self.shadow[c].grants.entry(k).or_default() -= 1;
    }

    /// The shadow side of dropping context `c` (the caller replaced it).
    pub(super) fn context_dropped(&mut self, c: usize, quota: u32) {
        for o in self.owner.iter_mut() {
            if *o == Some(c) {
                *o = None;
            }
        }
        self.shadow[c] = CtxShadow::new(quota);
        self.domains_changed = true;
    }
}
