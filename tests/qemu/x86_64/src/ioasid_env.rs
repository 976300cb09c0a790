//! What the VT-d (100-199) and AMD-Vi (300-399) scenarios share: one unit behind a `Registry`
//! and an `IoasidCtx` with `edu` bound, torn down with every page checked back
//! ([`with_unit`]); the IOASID-layer calls a scenario makes ([`Env`]); and the scenario bodies
//! that are the same over the `Iommu` trait and the IOASID layer (`dma_4k`, `dma_2m`, `dma_1g`,
//! `detach`, `reattach_replaces`, `disable`, `two_devices`). Each row passes its own pattern
//! numbers; what differs between the units (how a refused DMA shows, what tag a domain has,
//! what the walked table holds) comes from its [`Driver`].

use core::fmt::Display;

use iommu_engine::ioasid::{
    DeviceHandle, DeviceLabel, IoasidCtx, IoasidFlags, IoasidId, PasidAllocator, Registry, UnitId,
};
use iommu_engine::iommu::{DeviceId, DomainHandle, Iommu};
use iommu_engine::mem::{Iova, PhysAddr};
use iommu_engine::pgtable::Prot;

use crate::alloc::PageArena;
use crate::dma_check::{roundtrip, Buf, GUARD};
use crate::edu::Edu;
use crate::pci::Bdf;
use crate::scenario::{Ctx, Fail};
use crate::{bail, ensure, println};

/// The system's one PASID space (in .bss: its bitmap is 128 KiB).
pub static PASIDS: PasidAllocator = PasidAllocator::new(20);

/// Low IOVAs (below 4 GiB, far from any guest PA, outside the interrupt window).
pub const IOVA_A: u64 = 0x7654_3000;
pub const IOVA_B: u64 = 0x7655_8000;
/// 2 MiB-aligned IOVA for the large-page scenarios.
pub const IOVA_2M: u64 = 0x4060_0000;
/// 1 GiB-aligned IOVA for the huge-page scenarios (above 4 GiB: the 3-4 GiB gigabyte holds the
/// reserved interrupt window).
pub const IOVA_1G: u64 = 1 << 32;
/// Length of a round trip (inside one page, not page-aligned on purpose).
pub const LEN: usize = 3000;

/// Turns any displayable error into a scenario failure, saying what was being done.
pub trait OrFail<T> {
    fn or_fail(self, what: &str) -> Result<T, Fail>;
}

impl<T, E: Display> OrFail<T> for Result<T, E> {
    fn or_fail(self, what: &str) -> Result<T, Fail> {
        self.map_err(|e| Fail::new(format_args!("{what}: {e}")))
    }
}

/// Why a DMA is refused, as a shared scenario expects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Nothing maps the IOVA in the device's domain.
    Unmapped,
    /// The device was detached: it has no translation at all.
    Detached,
}

/// What a shared scenario needs of one kind of unit.
pub trait Driver: Iommu + Sized {
    /// What the scenarios watch for refused DMA besides the data (VT-d: the fault-recording
    /// registers; AMD-Vi: nothing, the event log is read through the unit).
    type Watch;
    /// Domain handles a unit with the default configuration can give out.
    const DOMAINS: u16;
    /// The IOASID context's PASID quota.
    const PASID_QUOTA: u32;
    /// The status bit that says translation is on.
    const ENABLED_BIT: &'static str;

    /// Opens the watch before the unit is created (and checks that nothing is pending).
    fn watch(g: &Ctx) -> Result<Self::Watch, Fail>;
    /// Creates and enables the unit at the platform's base.
    fn create(g: &Ctx) -> Result<Self, Fail>;
    /// Turns translation off and releases the unit.
    fn destroy(self) -> Result<(), Fail>;
    /// The ID the unit knows the bound `edu` by.
    fn edu_id(g: &Ctx, edu: &Edu) -> Result<u16, Fail>;
    /// The ID the unit knows the PCI function at `bdf` by (VT-d RID, AMD-Vi device ID), as the
    /// firmware says; it must be under the unit the scenarios drive.
    fn device_id(g: &Ctx, bdf: Bdf) -> Result<u16, Fail>;
    /// Translation off / on, and whether the hardware says it is on.
    fn disable(&self) -> Result<(), Fail>;
    fn enable(&self) -> Result<(), Fail>;
    fn translating(&self) -> bool;

    /// Nothing was reported that nobody expected (`when`: where the scenario is).
    fn expect_quiet(v: &Env<'_, '_, '_, Self>, when: &str) -> Result<(), Fail>;
    /// A write DMA by `edu` (known to the unit as `id`) to `iova` must not land in `victim`
    /// (where it would have landed) and must be reported as the unit reports `why`.
    fn write_refused(
        v: &Env<'_, '_, '_, Self>,
        edu: &Edu,
        id: u16,
        when: &str,
        iova: u64,
        why: Refusal,
        victim: &Buf,
    ) -> Result<(), Fail>;
    /// An IOVA near the top of what the unit's domains take (to exercise the top-level index).
    fn high_iova(v: &Env<'_, '_, '_, Self>) -> Result<u64, Fail>;
    /// The tag (VT-d DID, AMD-Vi domain ID) of the domain `edu` is attached to now.
    fn edu_tag(v: &Env<'_, '_, '_, Self>) -> Result<Option<u32>, Fail>;
    /// Devices `ids` are attached to one domain (the unit's only live one).
    fn check_one_domain(v: &Env<'_, '_, '_, Self>, ids: [u16; 2]) -> Result<(), Fail>;
    /// Devices `ids` are attached to two domains, with two tags.
    fn check_two_domains(v: &Env<'_, '_, '_, Self>, ids: [u16; 2]) -> Result<(), Fail>;
    /// The leaf size (log2 bytes) the unit's domain takes for a 1 GiB-aligned gigabyte: 30
    /// where the hardware offers 1 GiB leaves, else 21.
    fn largest_leaf(v: &Env<'_, '_, '_, Self>) -> u32;
    /// The table the hardware walks for `edu` ends at `iova` in a leaf of `size_log2` bytes
    /// (where the scenario can read it).
    fn check_walked_leaf(v: &Env<'_, '_, '_, Self>, iova: u64, size_log2: u32) -> Result<(), Fail>;
}

/// Every handle a unit of type `U` with the default number of domains can give out.
pub fn handles<U: Driver>() -> impl Iterator<Item = DomainHandle> {
    (0..U::DOMAINS).map(DomainHandle)
}

/// What a scenario holds once the unit is up and `edu` is bound.
pub struct Env<'c, 'r, 'a, U: Driver> {
    pub unit: &'a U,
    pub ctx: &'c IoasidCtx<'r, 'a, PageArena>,
    pub dev: DeviceHandle,
    pub edu: &'a Edu,
    /// `edu`'s ID on the unit (RID / device ID).
    pub edu_id: u16,
    pub watch: &'a U::Watch,
    pub g: &'a Ctx,
}

/// Binds the device the unit (the registry's unit 0) knows as `id`, without PASIDs.
pub fn bind(ctx: &IoasidCtx<'_, '_, PageArena>, id: u16, what: &str) -> Result<DeviceHandle, Fail> {
    ctx.bind(
        DeviceLabel {
            unit: UnitId(0),
            id: DeviceId(u32::from(id)),
        },
        false,
    )
    .or_fail(what)
}

/// Brings the unit up, builds the registry and an IOASID context, binds `edu`, runs `f`, then
/// checks that nothing unexpected was reported, tears everything down (context first, then the
/// unit) and checks that every page the crate took came back.
pub fn with_unit<U: Driver>(
    g: &mut Ctx,
    f: impl FnOnce(&Env<'_, '_, '_, U>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let g: &Ctx = g;
    let watch = U::watch(g)?;
    let edu = g.edu()?;
    let edu_id = U::edu_id(g, edu)?;
    let live_before = g.alloc.live_frames();
    let unit = U::create(g)?;
    {
        let units: [&dyn Iommu; 1] = [&unit];
        let registry = Registry::new(&units, &PASIDS).or_fail("registry")?;
        let ctx = IoasidCtx::new(&registry, g.alloc, U::PASID_QUOTA);
        let dev = bind(&ctx, edu_id, "bind edu")?;
        let v = Env {
            unit: &unit,
            ctx: &ctx,
            dev,
            edu,
            edu_id,
            watch: &watch,
            g,
        };
        f(&v)?;
        U::expect_quiet(&v, "end of scenario")?;
    }
    // Dropping the context detached edu and freed every domain it built.
    if let Some(h) = handles::<U>().find(|&h| unit.domain_geometry(h).is_ok()) {
        bail!(
            "domain {} still allocated after the IOASID context was dropped",
            h.0
        );
    }
    unit.destroy()?;
    let leaked = g.alloc.live_frames().saturating_sub(live_before);
    ensure!(
        leaked == 0,
        "{leaked} page frame(s) not returned after teardown"
    );
    Ok(())
}

impl<U: Driver> Env<'_, '_, '_, U> {
    pub fn alloc(&self, flags: IoasidFlags) -> Result<IoasidId, Fail> {
        self.ctx.alloc(flags).or_fail("alloc IOASID")
    }

    pub fn attach(&self, io: IoasidId) -> Result<(), Fail> {
        self.ctx.attach(self.dev, io).or_fail("attach edu")
    }

    pub fn map(&self, io: IoasidId, iova: u64, pa: u64, len: u64, prot: Prot) -> Result<(), Fail> {
        println!("map {iova:#x} -> {pa:#x} +{len:#x} {prot:?}");
        self.ctx
            .map(io, Iova::new(iova), PhysAddr::new(pa), len, prot)
            .or_fail("map")
    }

    pub fn unmap(&self, io: IoasidId, iova: u64, len: u64) -> Result<(), Fail> {
        let n = self.ctx.unmap(io, Iova::new(iova), len).or_fail("unmap")?;
        ensure!(
            n == len,
            "unmap of {len:#x} bytes at {iova:#x} removed {n:#x}"
        );
        Ok(())
    }

    pub fn buf(&self) -> Result<Buf, Fail> {
        Buf::new(self.g)
    }

    /// A new IOASID with `edu` attached, two buffers (source, destination) and both mapped
    /// read-write at [`IOVA_A`] and [`IOVA_B`].
    pub fn attached_pair(&self) -> Result<(IoasidId, Buf, Buf), Fail> {
        let io = self.alloc(IoasidFlags::empty())?;
        self.attach(io)?;
        let (src, dst) = (self.buf()?, self.buf()?);
        self.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        self.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        Ok((io, src, dst))
    }

    /// A write DMA by the bound `edu` to `iova` must be refused for `why`, leaving `victim`
    /// untouched.
    pub fn write_refused(
        &self,
        when: &str,
        iova: u64,
        why: Refusal,
        victim: &Buf,
    ) -> Result<(), Fail> {
        U::write_refused(self, self.edu, self.edu_id, when, iova, why, victim)
    }

    /// The leaf size, in log2 bytes, the unit's table holds at `iova` (found through the
    /// `Iommu` trait on every domain handle the unit knows).
    pub fn leaf_size(&self, iova: u64) -> Option<u32> {
        handles::<U>().find_map(|d| {
            self.unit.domain_geometry(d).ok()?;
            self.unit.query(d, Iova::new(iova)).map(|m| m.size_log2)
        })
    }

    /// The unit's only live domain (the one behind the attached IOASID) and its input width.
    pub fn only_domain(&self) -> Result<(DomainHandle, u32), Fail> {
        let mut found = None;
        for h in handles::<U>() {
            if let Ok((bits, _)) = self.unit.domain_geometry(h) {
                ensure!(found.is_none(), "more than one live domain");
                found = Some((h, bits));
            }
        }
        found.ok_or_else(|| Fail::new(format_args!("no live domain")))
    }
}

// -----------------------------------------------------------------------------------------------
// Scenario bodies shared by the VT-d and AMD-Vi rows

/// 4 KiB pages, both directions, one low IOVA and one at the top of the input range
/// ([`Driver::high_iova`]), and an IOVA the IOASID layer picks (as a DMA API would), freed
/// again; every leaf 4 KiB; then `check` (what the unit's own tables show). `p0`..: the
/// row's patterns.
pub fn dma_4k<U: Driver>(
    v: &Env<'_, '_, '_, U>,
    [p0, p1, p2]: [u8; 3],
    check: impl FnOnce(&Env<'_, '_, '_, U>) -> Result<(), Fail>,
) -> Result<(), Fail> {
    let io = v.alloc(IoasidFlags::empty())?;
    v.attach(io)?;
    let (src, dst) = (v.buf()?, v.buf()?);
    let high = U::high_iova(v)?;
    v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
    v.map(io, high, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
    roundtrip(
        v.edu,
        &src,
        IOVA_A + 0x80,
        0x80,
        &dst,
        high + 0x100,
        0x100,
        LEN,
        p0,
    )?;
    // And the other way round: the high IOVA is read, the low one written.
    roundtrip(
        v.edu,
        &dst,
        high + 0x10,
        0x10,
        &src,
        IOVA_A + 0x400,
        0x400,
        LEN,
        p1,
    )?;
    // An IOVA the IOASID layer picks, below every domain's limit and outside the reserved
    // interrupt window.
    let picked = v
        .ctx
        .alloc_iova(io, 0x2000, 0x1000)
        .or_fail("alloc_iova")?
        .get();
    ensure!(
        picked != 0 && picked != src.pa(),
        "alloc_iova gave {picked:#x}"
    );
    v.map(
        io,
        picked + 0x1000,
        src.pa(),
        4096,
        Prot::READ | Prot::WRITE,
    )?;
    roundtrip(
        v.edu,
        &dst,
        high,
        0,
        &src,
        picked + 0x1000 + 0x20,
        0x20,
        LEN,
        p2,
    )?;
    v.unmap(io, picked + 0x1000, 4096)?;
    ensure!(
        v.ctx
            .free_iova(io, Iova::new(picked))
            .or_fail("free_iova")?,
        "free_iova did not find the reservation at {picked:#x}"
    );
    ensure!(
        v.leaf_size(IOVA_A) == Some(12),
        "leaf at {IOVA_A:#x}: {:?}",
        v.leaf_size(IOVA_A)
    );
    check(v)?;
    v.unmap(io, IOVA_A, 4096)?;
    v.unmap(io, high, 4096)?;
    Ok(())
}

/// Maps `(iova, pa, len)` read-write into `io`: the unit's table must hold leaves of
/// `2^size_log2` bytes at each of `probes`, and the table the hardware walks one at `walked`.
fn map_in_leaves<U: Driver>(
    v: &Env<'_, '_, '_, U>,
    io: IoasidId,
    (iova, pa, len): (u64, u64, u64),
    size_log2: u32,
    probes: &[u64],
    walked: u64,
) -> Result<(), Fail> {
    v.map(io, iova, pa, len, Prot::READ | Prot::WRITE)?;
    for &probe in probes {
        ensure!(
            v.leaf_size(probe) == Some(size_log2),
            "leaf at {probe:#x}: {:?} (want 2^{size_log2})",
            v.leaf_size(probe)
        );
    }
    U::check_walked_leaf(v, walked, size_log2)
}

/// A 2 MiB-aligned IOVA range mapped onto the 2 MiB-aligned PA range holding the buffers: the
/// unit's table must hold 2 MiB leaves (and the table the hardware walks, where the scenario
/// can read it), and DMA through them lands at the right offset. `p0`..: the row's patterns.
pub fn dma_2m<U: Driver>(v: &Env<'_, '_, '_, U>, [p0, p1]: [u8; 2]) -> Result<(), Fail> {
    let io = v.alloc(IoasidFlags::empty())?;
    v.attach(io)?;
    let (src, dst) = (v.buf()?, v.buf()?);
    const M2: u64 = 1 << 21;
    let base = src.pa().min(dst.pa()) & !(M2 - 1);
    let end = (src.pa().max(dst.pa()) + M2) & !(M2 - 1);
    map_in_leaves(v, io, (IOVA_2M, base, end - base), 21, &[IOVA_2M], IOVA_2M)?;
    let (s, d) = (IOVA_2M + (src.pa() - base), IOVA_2M + (dst.pa() - base));
    roundtrip(v.edu, &src, s + 0x20, 0x20, &dst, d + 0x200, 0x200, LEN, p0)?;
    roundtrip(v.edu, &dst, d, 0, &src, s + 0x300, 0x300, LEN, p1)?;
    v.unmap(io, IOVA_2M, end - base)?;
    Ok(())
}

/// A 1 GiB IOVA range mapped onto guest-physical 0-1 GiB (which holds all of the guest's RAM):
/// the unit's table must hold the largest leaves the hardware offers for it
/// ([`Driver::largest_leaf`]: 1 GiB, or 2 MiB), the walked table too, and DMA through it lands
/// at the right offset. `p0`..: the row's patterns.
pub fn dma_1g<U: Driver>(v: &Env<'_, '_, '_, U>, [p0, p1]: [u8; 2]) -> Result<(), Fail> {
    let io = v.alloc(IoasidFlags::empty())?;
    v.attach(io)?;
    let (src, dst) = (v.buf()?, v.buf()?);
    const G1: u64 = 1 << 30;
    ensure!(dst.pa() < G1 && src.pa() < G1, "buffers above 1 GiB");
    let want = U::largest_leaf(v);
    let probes = [IOVA_1G, IOVA_1G + src.pa(), IOVA_1G + G1 - 4096];
    map_in_leaves(v, io, (IOVA_1G, 0, G1), want, &probes, probes[1])?;
    let (s, d) = (IOVA_1G + src.pa(), IOVA_1G + dst.pa());
    roundtrip(
        v.edu,
        &src,
        s + 0x40,
        0x40,
        &dst,
        d + 0x800,
        0x800,
        LEN / 2,
        p0,
    )?;
    roundtrip(v.edu, &dst, d + 0x800, 0x800, &src, s, 0, LEN / 2, p1)?;
    v.unmap(io, IOVA_1G, G1)?;
    Ok(())
}

/// An IOASID mapping a source buffer at [`IOVA_A`] and a destination buffer at [`IOVA_B`]
/// (read-write), attached to `edu` afterwards, and a round trip through both with pattern `p`.
fn attached_pair<U: Driver>(v: &Env<'_, '_, '_, U>, p: u8) -> Result<(IoasidId, Buf, Buf), Fail> {
    let io = v.alloc(IoasidFlags::empty())?;
    let (src, dst) = (v.buf()?, v.buf()?);
    v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
    v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
    v.attach(io)?;
    roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, p)?;
    Ok((io, src, dst))
}

/// Detach blocks the device at once, also for translations the hardware cached; attaching
/// again rebuilds the domain from the IOASID's mappings. `p0`..: the row's patterns.
pub fn detach<U: Driver>(v: &Env<'_, '_, '_, U>, [p0, p1]: [u8; 2]) -> Result<(), Fail> {
    let (io, src, dst) = attached_pair(v, p0)?;
    v.ctx.detach(v.dev).or_fail("detach")?;
    v.write_refused("write after detach", IOVA_B, Refusal::Detached, &dst)?;
    v.attach(io)?;
    roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, p1)?;
    Ok(())
}

/// Two IOASIDs map the same IOVA to different pages. Attaching edu to one, then the other (no
/// detach in between), then back: each DMA lands in the page of the IOASID attached at the
/// time, never in the other (stale cached entries of the old domain would), and each new
/// domain has a tag of its own. Patterns `p`, +1, +2.
pub fn reattach_replaces<U: Driver>(v: &Env<'_, '_, '_, U>, p: u8) -> Result<(), Fail> {
    let (a, b) = (
        v.alloc(IoasidFlags::empty())?,
        v.alloc(IoasidFlags::empty())?,
    );
    let (src, in_a, in_b) = (v.buf()?, v.buf()?, v.buf()?);
    for (io, dst) in [(a, &in_a), (b, &in_b)] {
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
    }
    let mut last = None;
    for (round, (io, dst, other)) in [(a, &in_a, &in_b), (b, &in_b, &in_a), (a, &in_a, &in_b)]
        .into_iter()
        .enumerate()
    {
        v.attach(io)?;
        let tag = U::edu_tag(v)?;
        println!("attached to IOASID {} (domain tag {tag:?})", io.0);
        ensure!(
            tag.is_some() && tag != last,
            "the new domain reuses tag {tag:?}"
        );
        last = tag;
        other.fill(GUARD);
        roundtrip(v.edu, &src, IOVA_A, 0, dst, IOVA_B, 0, LEN, p + round as u8)?;
        other.check_all("the other IOASID's page", GUARD)?;
    }
    Ok(())
}

/// Disabling the unit turns translation off: DMA addresses are physical again; enabling it
/// again translates through the same tables, and the physical address is refused again.
/// `p0`..: the row's patterns.
pub fn disable<U: Driver>(v: &Env<'_, '_, '_, U>, [p0, p1, p2]: [u8; 3]) -> Result<(), Fail> {
    let (_, src, dst) = attached_pair(v, p0)?;
    v.unit.disable()?;
    ensure!(
        !v.unit.translating(),
        "{} still set after disable",
        U::ENABLED_BIT
    );
    roundtrip(
        v.edu,
        &src,
        src.pa(),
        0,
        &dst,
        dst.pa() + 0x20,
        0x20,
        LEN,
        p1,
    )?;
    v.unit.enable()?;
    ensure!(
        v.unit.translating(),
        "{} clear after enable",
        U::ENABLED_BIT
    );
    roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B + 0x30, 0x30, LEN, p2)?;
    v.write_refused(
        "physical address after enable",
        dst.pa(),
        Refusal::Unmapped,
        &dst,
    )?;
    Ok(())
}

/// Two requesters (a second `edu` at 00:05.0, ID 0x28 as the firmware names it): first sharing
/// one IOASID (one domain), then on two IOASIDs at once (two live domains, two tags). Each DMA
/// lands in the page of its own device's IOASID; an unmap in one domain blocks only that
/// device; detaching one device blocks it (reported under its own ID) and leaves the other
/// working. Patterns `p` +0, +1, +2..3, +4..5, +6, +7.
pub fn two_devices<U: Driver>(v: &Env<'_, '_, '_, U>, p: u8) -> Result<(), Fail> {
    let edu2 = crate::second_edu()?;
    let edu2_id = U::device_id(v.g, edu2.bdf)?;
    ensure!(edu2_id == 0x28, "second edu's ID {edu2_id:#x}");
    let dev2 = bind(v.ctx, edu2_id, "bind the second edu")?;
    let ids = [v.edu_id, edu2_id];
    let (src, in_a, in_b) = (v.buf()?, v.buf()?, v.buf()?);
    let a = v.alloc(IoasidFlags::empty())?;
    v.map(a, IOVA_A, src.pa(), 4096, Prot::READ)?;
    v.map(a, IOVA_B, in_a.pa(), 4096, Prot::READ | Prot::WRITE)?;
    v.attach(a)?;
    v.ctx.attach(dev2, a).or_fail("attach the second edu")?;
    v.only_domain()?;
    U::check_one_domain(v, ids)?;
    roundtrip(v.edu, &src, IOVA_A, 0, &in_a, IOVA_B, 0, LEN, p)?;
    roundtrip(
        &edu2,
        &src,
        IOVA_A,
        0,
        &in_a,
        IOVA_B + 0x10,
        0x10,
        LEN,
        p + 1,
    )?;

    let b = v.alloc(IoasidFlags::empty())?;
    v.map(b, IOVA_A, src.pa(), 4096, Prot::READ)?;
    v.map(b, IOVA_B, in_b.pa(), 4096, Prot::READ | Prot::WRITE)?;
    v.ctx.attach(dev2, b).or_fail("move the second edu")?;
    U::check_two_domains(v, ids)?;
    for round in 0..2u8 {
        in_b.fill(GUARD);
        roundtrip(v.edu, &src, IOVA_A, 0, &in_a, IOVA_B, 0, LEN, p + 2 + round)?;
        in_b.check_all("B's page after edu 1's DMA", GUARD)?;
        in_a.fill(GUARD);
        roundtrip(&edu2, &src, IOVA_A, 0, &in_b, IOVA_B, 0, LEN, p + 4 + round)?;
        in_a.check_all("A's page after edu 2's DMA", GUARD)?;
    }

    // An unmap in A blocks edu 1 only.
    v.unmap(a, IOVA_B, 4096)?;
    v.write_refused("edu 1 after A's unmap", IOVA_B, Refusal::Unmapped, &in_a)?;
    roundtrip(
        &edu2,
        &src,
        IOVA_A,
        0,
        &in_b,
        IOVA_B + 0x20,
        0x20,
        LEN,
        p + 6,
    )?;

    // Detaching edu 2 blocks it, reported under its own ID; edu 1 keeps working.
    v.ctx.detach(dev2).or_fail("detach the second edu")?;
    U::write_refused(
        v,
        &edu2,
        edu2_id,
        "edu 2 after detach",
        IOVA_B,
        Refusal::Detached,
        &in_b,
    )?;
    v.map(a, IOVA_B, in_a.pa(), 4096, Prot::READ | Prot::WRITE)?;
    roundtrip(
        v.edu,
        &src,
        IOVA_A,
        0,
        &in_a,
        IOVA_B + 0x30,
        0x30,
        LEN,
        p + 7,
    )?;
    v.ctx.unbind(dev2).or_fail("unbind the second edu")?;
    Ok(())
}
