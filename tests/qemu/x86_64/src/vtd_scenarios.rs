//! VT-d DMA scenarios on QEMU's `intel-iommu` (numbers 100-199).
//!
//! Every scenario drives the crate the way a kernel would: create and enable the unit, create a
//! registry and an IOASID context, bind `edu` (its RID resolved through the ACPI DMAR, see
//! `firmware.rs`; 0x20 for 00:04.0), allocate IOASIDs, attach,
//! map, make `edu` DMA, unmap -- and checks what landed where on the CPU side and what QEMU
//! recorded in its fault-recording register. No table bit is written by hand.
//!
//! The same scenario runs on several QEMU configurations (legacy / scalable second-stage /
//! scalable first-stage, `aw-bits`, `caching-mode`, `snoop-control`); the runner's rows say which.
//! The reason codes QEMU reports differ between the second- and first-stage walks; the fault
//! reader picks them from `ECAP` (see `vtd_faults.rs`).

use iommu_engine::ioasid::{
    Error as IoError, Incompatibility, IoasidCtx, IoasidFlags, IoasidId, Registry,
};
use iommu_engine::iommu::{Iommu, Missing};
use iommu_engine::mem::{Iova, PageAllocator, PhysAddr};
use iommu_engine::pgtable::Prot;
use iommu_engine::vtd::cap::{CapFlags, Sllps};
use iommu_engine::vtd::ecap::EcapFlags;
use iommu_engine::vtd::fault::{FaultReason, RequestKind};
use iommu_engine::vtd::unit::DEFAULT_DOMAINS;

use crate::alloc::PageArena;
use crate::dma_check::{self, roundtrip, Buf, GUARD, PAGE};
use crate::edu::Edu;
use crate::ioasid_env::{
    self, handles, with_unit, Driver, Env, OrFail, Refusal, IOVA_2M, IOVA_A, IOVA_B, LEN, PASIDS,
};
use crate::pci::Bdf;
use crate::scenario::{Ctx, Fail, Scenario};
use crate::vtd_faults::{edu_sid, FaultReader, Walk};
use crate::vtd_unit::{self, Unit};
use crate::{bail, ensure, println};

/// The VT-d scenarios; `main.rs` looks numbers 100-199 up here.
pub static VTD_TABLE: &[Scenario] = &[
    Scenario {
        id: 100,
        name: "vtd_dma_4k",
        run: dma_4k,
    },
    Scenario {
        id: 101,
        name: "vtd_dma_2m",
        run: dma_2m,
    },
    Scenario {
        id: 102,
        name: "vtd_dma_1g",
        run: dma_1g,
    },
    Scenario {
        id: 103,
        name: "vtd_fault_unmapped",
        run: fault_unmapped,
    },
    Scenario {
        id: 104,
        name: "vtd_fault_readonly",
        run: fault_readonly,
    },
    Scenario {
        id: 105,
        name: "vtd_unmap_flush",
        run: unmap_flush,
    },
    Scenario {
        id: 106,
        name: "vtd_remap_new_pa",
        run: remap_new_pa,
    },
    Scenario {
        id: 107,
        name: "vtd_snoop_refused",
        run: snoop_refused,
    },
    Scenario {
        id: 108,
        name: "vtd_snoop_enforced",
        run: snoop_enforced,
    },
    Scenario {
        id: 109,
        name: "vtd_detach_faults",
        run: detach_faults,
    },
    Scenario {
        id: 110,
        name: "vtd_reattach_replaces",
        run: reattach_replaces,
    },
    Scenario {
        id: 111,
        name: "vtd_unit_disable",
        run: unit_disable,
    },
    Scenario {
        id: 112,
        name: "vtd_unmap_range",
        run: unmap_range,
    },
    Scenario {
        id: 113,
        name: "vtd_fault_no_root",
        run: fault_no_root,
    },
    Scenario {
        id: 114,
        name: "vtd_map_invalidations",
        run: map_invalidations,
    },
    Scenario {
        id: 115,
        name: "vtd_address_width",
        run: address_width,
    },
    Scenario {
        id: 116,
        name: "vtd_split_2m",
        run: split_2m,
    },
    Scenario {
        id: 117,
        name: "vtd_two_devices",
        run: two_devices,
    },
    Scenario {
        id: 118,
        name: "vtd_pasid_attach",
        run: pasid_attach,
    },
    Scenario {
        id: 119,
        name: "vtd_other_bus",
        run: other_bus,
    },
    Scenario {
        id: 120,
        name: "vtd_takeover",
        run: takeover,
    },
    Scenario {
        id: 125,
        name: "vtd_huge_pages_off",
        run: huge_pages_off,
    },
];

/// What a VT-d scenario holds once the unit is up and `edu` is bound.
type Vtd<'c, 'r, 'a> = Env<'c, 'r, 'a, Unit>;

/// [`with_unit`] on the VT-d unit.
fn with_vtd(g: &mut Ctx, f: impl FnOnce(&Vtd<'_, '_, '_>) -> Result<(), Fail>) -> Result<(), Fail> {
    with_unit::<Unit>(g, f)
}

impl Driver for Unit {
    type Watch = FaultReader;
    const DOMAINS: u16 = DEFAULT_DOMAINS as u16;
    const PASID_QUOTA: u32 = 4;
    const ENABLED_BIT: &'static str = "GSTS.TES";

    fn watch(g: &Ctx) -> Result<FaultReader, Fail> {
        // SAFETY: the VT-d window is identity-mapped uncached by boot.rs.
        let faults = unsafe { FaultReader::new(g.arch.vtd_base) }?;
        println!(
            "VT-d CAP {:#018x} ECAP {:#018x}: {:?} walk, NFR+1 = {}",
            faults.cap().0,
            faults.ecap().0,
            faults.walk(),
            faults.cap().fault_recording_count()
        );
        faults.expect_none("before enable")?;
        Ok(faults)
    }

    fn create(g: &Ctx) -> Result<Self, Fail> {
        vtd_unit::create(g)
    }

    fn destroy(self) -> Result<(), Fail> {
        vtd_unit::destroy(self)
    }

    fn edu_id(_: &Ctx, _: &Edu) -> Result<u16, Fail> {
        Ok(edu_sid())
    }

    fn device_id(g: &Ctx, bdf: Bdf) -> Result<u16, Fail> {
        let (sid, unit) = crate::firmware::covering_unit(bdf)?;
        ensure!(
            unit.register_base.get() == g.arch.vtd_base as u64,
            "{bdf:?} is under another unit ({:#x})",
            unit.register_base.get()
        );
        Ok(sid)
    }

    fn disable(&self) -> Result<(), Fail> {
        vtd_unit::disable(self)
    }

    fn enable(&self) -> Result<(), Fail> {
        vtd_unit::enable(self)
    }

    fn translating(&self) -> bool {
        vtd_unit::translating(self)
    }

    fn expect_quiet(v: &Vtd<'_, '_, '_>, when: &str) -> Result<(), Fail> {
        v.watch.expect_none(when)
    }

    fn write_refused(
        v: &Vtd<'_, '_, '_>,
        edu: &Edu,
        id: u16,
        when: &str,
        iova: u64,
        why: Refusal,
        victim: &Buf,
    ) -> Result<(), Fail> {
        let unmapped = [v.walk().write_unmapped()];
        let reasons: &[FaultReason] = match why {
            Refusal::Unmapped => &unmapped,
            Refusal::Detached => BLOCKED,
        };
        v.write_faults_from(edu, id, when, iova, reasons, victim)
    }

    /// An IOVA near the top of what the unit's domains take, to exercise the top-level index:
    /// bit `ias - 1` set on second stage (39 -> 3 levels, 48 -> 4 levels), bit 46 on first
    /// stage (IOVAs stay canonical).
    fn high_iova(v: &Vtd<'_, '_, '_>) -> Result<u64, Fail> {
        let ias = v
            .ctx
            .device_info(v.dev)
            .or_fail("device_info")?
            .capabilities
            .ias;
        let top = match v.walk() {
            Walk::Second => ias.saturating_sub(1),
            Walk::First => ias.min(47).saturating_sub(1),
        };
        ensure!((32..64).contains(&top), "unit input width {ias} bits");
        Ok((1u64 << top) | 0x1234_5000)
    }

    fn edu_tag(v: &Vtd<'_, '_, '_>) -> Result<Option<u32>, Fail> {
        let (h, _) = v.only_domain()?;
        let did = v.unit.domain_id(h).map(|d| u32::from(d.get()));
        println!("domain {}, DID {did:?}", h.0);
        Ok(did)
    }

    fn check_one_domain(_: &Vtd<'_, '_, '_>, _: [u16; 2]) -> Result<(), Fail> {
        // `only_domain` found the one domain; which device uses which DID is not readable
        // through the crate's API.
        Ok(())
    }

    fn check_two_domains(v: &Vtd<'_, '_, '_>, _: [u16; 2]) -> Result<(), Fail> {
        let mut dids = [None; 3];
        for (slot, did) in dids
            .iter_mut()
            .zip(handles::<Unit>().filter_map(|h| v.unit.domain_id(h)))
        {
            *slot = Some(did.get());
        }
        println!("two live domains, DIDs {dids:?}");
        ensure!(
            dids[0].is_some() && dids[1].is_some() && dids[2].is_none() && dids[0] != dids[1],
            "two IOASIDs attached at once should have two DIDs: {dids:?}"
        );
        Ok(())
    }

    fn largest_leaf(v: &Vtd<'_, '_, '_>) -> u32 {
        // What the hardware offers decides, not what the unit says about its domain.
        let cap = v.watch.cap();
        let has_1g = match v.walk() {
            Walk::Second => cap.sllps().contains(Sllps::SIZE_1G),
            Walk::First => cap.flags().contains(CapFlags::FL1GP),
        };
        let want = if has_1g { 30 } else { 21 };
        println!("1 GiB pages in CAP: {has_1g}: expecting 2^{want} leaves");
        want
    }

    fn check_walked_leaf(_: &Vtd<'_, '_, '_>, _: u64, _: u32) -> Result<(), Fail> {
        // The unit's `query` is the check: the guest does not read VT-d tables itself.
        Ok(())
    }
}

impl Vtd<'_, '_, '_> {
    fn walk(&self) -> Walk {
        self.watch.walk()
    }

    /// A read DMA from `iova` must fault with `reason`.
    fn read_faults(&self, when: &str, iova: u64, reason: FaultReason) -> Result<(), Fail> {
        dma_check::to_device(self.edu, iova, 64)?;
        self.watch
            .expect_one(when, reason, iova, RequestKind::Read)?;
        Ok(())
    }

    /// A write DMA to `iova` must fault with one of `reasons` and leave `victim` (where it
    /// would have landed) untouched.
    fn write_faults(
        &self,
        when: &str,
        iova: u64,
        reasons: &[FaultReason],
        victim: &Buf,
    ) -> Result<(), Fail> {
        victim.fill(GUARD);
        dma_check::from_device(self.edu, iova, 64)?;
        self.watch
            .expect_one_of(when, reasons, iova, RequestKind::Write)?;
        victim.check_all(when, GUARD)
    }
    /// A write DMA by `edu` (RID `sid`) to `iova` must fault with one of `reasons` and leave
    /// `victim` untouched.
    fn write_faults_from(
        &self,
        edu: &Edu,
        sid: u16,
        when: &str,
        iova: u64,
        reasons: &[FaultReason],
        victim: &Buf,
    ) -> Result<(), Fail> {
        victim.fill(GUARD);
        dma_check::from_device(edu, iova, 64)?;
        self.watch
            .expect_from(sid, when, reasons, iova, RequestKind::Write)?;
        victim.check_all(when, GUARD)
    }
}

// -----------------------------------------------------------------------------------------------
// Scenarios

/// 4 KiB pages, both directions, one low IOVA and one at the top of the input range, and one
/// the IOASID layer picks.
fn dma_4k(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::dma_4k(v, [1, 2, 28], |_| Ok(())))
}

/// A 2 MiB-aligned IOVA range mapped onto the 2 MiB-aligned PA range holding the buffers: the
/// unit's table must hold 2 MiB leaves, and DMA through them lands at the right offset.
fn dma_2m(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::dma_2m(v, [3, 4]))
}

/// iommufd `IOMMU_OPTION_HUGE_PAGES` off (`IoasidCtx::set_huge_pages(false)`, issue 17 item
/// 6): the 2 MiB-aligned 2 MiB range that `vtd_dma_2m` maps as one leaf is written as 512
/// 4 KiB leaves in the unit's domain, and DMA through it still lands at the right offset.
fn huge_pages_off(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.ctx.set_huge_pages(io, false).or_fail("HUGE_PAGES off")?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        const M2: u64 = 1 << 21;
        let base = dst.pa() & !(M2 - 1);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_2M, base, M2, Prot::READ | Prot::WRITE)?;
        let (handle, _) = v.only_domain()?;
        let (mut leaves, mut large) = (0u32, 0u32);
        v.unit
            .for_each_mapping(handle, Iova::new(IOVA_2M), M2, &mut |l| {
                leaves += 1;
                large += u32::from(l.size_log2 != 12);
            })
            .or_fail("walk the domain")?;
        println!("2 MiB with huge pages off: {leaves} leaves, {large} larger than 4 KiB");
        ensure!(
            leaves == 512 && large == 0,
            "{leaves} leaves, {large} larger than 4 KiB (want 512 of 4 KiB)"
        );
        let d = IOVA_2M + (dst.pa() - base);
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, d + 0x100, 0x100, LEN, 40)?;
        v.unmap(io, IOVA_2M, M2)?;
        v.unmap(io, IOVA_A, 4096)?;
        Ok(())
    })
}

/// A 1 GiB IOVA range mapped onto guest-physical 0-1 GiB (which holds all of the guest's RAM):
/// the unit's table must hold one 1 GiB leaf when the domain has 1 GiB pages (`CAP.SLLPS`, or
/// `CAP.FS1GP` for first stage -- QEMU's `fs1gp=off` clears it) and 2 MiB leaves otherwise;
/// DMA through it lands at the right offset either way.
fn dma_1g(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::dma_1g(v, [5, 6]))
}

/// A read from and a write to an IOVA nothing maps: each produces one fault record with the
/// walk's reason, edu's source-id and the page address; the write lands nowhere. Mapped DMA
/// keeps working afterwards.
fn fault_unmapped(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let (io, src, dst) = v.attached_pair()?;
        // The identity address of the destination: if the unit let it through untranslated, the
        // write would land in `dst`.
        v.read_faults(
            "read of an unmapped IOVA",
            IOVA_A + 0x1000,
            v.walk().read_unmapped(),
        )?;
        v.write_faults(
            "write to an unmapped IOVA",
            dst.pa(),
            &[v.walk().write_unmapped()],
            &dst,
        )?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B + 0x10, 0x10, LEN, 7)?;
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, IOVA_B, 4096)?;
        Ok(())
    })
}

/// A read-only mapping: a write through it faults with the walk's write reason and leaves the
/// page untouched; reads through it work; a write once the translation is cached is still
/// blocked (QEMU 10.0 then drops it without a record: an IOTLB hit skips its permission-fault
/// reporting, so only the first, walked, write is checked for its record).
fn fault_readonly(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (ro, out) = (v.buf()?, v.buf()?);
        v.map(io, IOVA_A, ro.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_B, out.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.write_faults(
            "write to a read-only IOVA",
            IOVA_A + 0x200,
            &[v.walk().write_readonly()],
            &ro,
        )?;
        roundtrip(v.edu, &ro, IOVA_A + 0x100, 0x100, &out, IOVA_B, 0, LEN, 8)?;
        ro.fill(GUARD);
        dma_check::from_device(v.edu, IOVA_A, 64)?;
        let f = v.watch.drain();
        println!("cached read-only write: {} record(s)", f.count());
        ro.check_all("write to a cached read-only IOVA", GUARD)?;
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, IOVA_B, 4096)?;
        Ok(())
    })
}

/// DMA through two mappings (QEMU now caches both translations in its IOTLB), unmap them one by
/// one: each unmap's invalidation must reach the IOTLB, or the next DMA would still get through.
fn unmap_flush(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let (io, src, dst) = v.attached_pair()?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 9)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 10)?;
        v.unmap(io, IOVA_B, 4096)?;
        v.write_faults(
            "write after unmap",
            IOVA_B,
            &[v.walk().write_unmapped()],
            &dst,
        )?;
        v.unmap(io, IOVA_A, 4096)?;
        v.read_faults("read after unmap", IOVA_A, v.walk().read_unmapped())?;
        Ok(())
    })
}

/// The same IOVA mapped, used, unmapped and mapped again to another page: the DMA lands at the
/// new page, the old one stays untouched.
fn remap_new_pa(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, old, new) = (v.buf()?, v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_B, old.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &old, IOVA_B, 0, LEN, 11)?;
        v.unmap(io, IOVA_B, 4096)?;
        v.map(io, IOVA_B, new.pa(), 4096, Prot::READ | Prot::WRITE)?;
        old.fill(GUARD);
        roundtrip(v.edu, &src, IOVA_A, 0, &new, IOVA_B + 0x40, 0x40, LEN, 12)?;
        old.check_all("old page after remap", GUARD)?;
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, IOVA_B, 4096)?;
        Ok(())
    })
}

/// Reasons QEMU gives for a device with no translation programmed (root, context or PASID entry
/// not present; QEMU 10.0 type-checks a PASID entry before its `P` bit, so a cleared entry
/// reports "invalid PASID entry").
const BLOCKED: &[FaultReason] = &[
    FaultReason::SmPasidEntryInvalid,
    FaultReason::RootEntryNotPresent,
    FaultReason::ContextEntryNotPresent,
    FaultReason::SmPasidDirectoryNotPresent,
    FaultReason::SmPasidEntryNotPresent,
];

/// Without `ECAP.SC`, an `ENFORCE_SNOOP` IOASID cannot be attached: `Incompatible` naming
/// `Missing::SnoopControl`, and nothing changed (edu's DMA is still blocked; a plain IOASID
/// attaches and works afterwards).
fn snoop_refused(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let info = v.ctx.device_info(v.dev).or_fail("device_info")?;
        ensure!(
            !info.capabilities.enforce_snoop,
            "unit claims snoop control without ECAP.SC"
        );
        let snoop = v.alloc(IoasidFlags::ENFORCE_SNOOP)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        v.map(snoop, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(snoop, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        match v.ctx.attach(v.dev, snoop) {
            Err(IoError::Incompatible {
                device,
                reason: Incompatibility::Missing(Missing::SnoopControl),
            }) if device == v.dev => println!("attach refused: snoop control missing"),
            Err(e) => bail!("attach of an ENFORCE_SNOOP IOASID failed with {e}, expected Incompatible(SnoopControl)"),
            Ok(()) => bail!("an ENFORCE_SNOOP IOASID was attached to a unit without ECAP.SC"),
        }
        v.write_faults("write after refused attach", IOVA_B, BLOCKED, &dst)?;
        let plain = v.alloc(IoasidFlags::empty())?;
        v.map(plain, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.map(plain, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(plain)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 13)?;
        Ok(())
    })
}

/// With `ECAP.SC` (`snoop-control=on`), an `ENFORCE_SNOOP` IOASID attaches and DMA works with
/// SNP set in every leaf (in legacy mode without SC, QEMU would fault SNP as a reserved bit).
fn snoop_enforced(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let info = v.ctx.device_info(v.dev).or_fail("device_info")?;
        ensure!(
            info.capabilities.enforce_snoop,
            "unit does not report snoop control with ECAP.SC"
        );
        let io = v.alloc(IoasidFlags::ENFORCE_SNOOP)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(io)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 14)?;
        Ok(())
    })
}

/// Detach blocks the device at once (QEMU caches the context entry and the IOTLB, so both must
/// be invalidated); attaching again rebuilds the domain from the IOASID's mappings.
fn detach_faults(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::detach(v, [15, 16]))
}

/// Two IOASIDs map the same IOVA to different pages. Attaching edu to one, then the other (no
/// detach in between), then back: each DMA lands in the page of the IOASID attached at the
/// time, never in the other (stale context or IOTLB entries of the old domain ID would), and
/// each domain has a DID of its own.
fn reattach_replaces(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::reattach_replaces(v, 17))
}

/// Disabling the unit turns translation off: DMA addresses are physical again; enabled again,
/// the physical address faults.
fn unit_disable(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::disable(v, [20, 21, 22]))
}

/// Sixteen pages mapped as one 64 KiB range and all used (cached); unmapping the middle 32 KiB
/// must invalidate exactly those: DMA into them faults, DMA around them still lands.
fn unmap_range(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let Some(block) = v.g.alloc.alloc(16) else {
            bail!("no 64 KiB block");
        };
        let src = v.buf()?;
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        const RANGE: u64 = 0x1_0000;
        let base = 0x9000_0000u64;
        v.map(io, base, block.pa.get(), RANGE, Prot::READ | Prot::WRITE)?;
        let page_byte = |p: u64, i: usize| {
            // SAFETY: `p < 16`, `i < PAGE`: inside the 64 KiB block we own.
            unsafe { core::ptr::read_volatile(block.va.as_ptr().add(p as usize * PAGE + i)) }
        };
        src.fill_pattern(23);
        dma_check::to_device(v.edu, IOVA_A, 256)?;
        for p in 0..16 {
            dma_check::from_device(v.edu, base + p * 4096 + 8, 256)?;
        }
        for p in 0..16 {
            ensure!(
                (0..256).all(|i| page_byte(p, i + 8) == dma_check::pattern(i, 23)),
                "page {p} of the block did not get the DMA"
            );
        }
        v.unmap(io, base + 0x4000, 0x8000)?;
        // SAFETY: the block is ours; fill it with the guard byte.
        unsafe { core::ptr::write_bytes(block.va.as_ptr(), GUARD, RANGE as usize) };
        for p in 0..16 {
            let iova = base + p * 4096;
            dma_check::from_device(v.edu, iova, 256)?;
            let hit = page_byte(p, 0) != GUARD;
            if (4..12).contains(&p) {
                v.watch.expect_one(
                    "write into the unmapped middle",
                    v.walk().write_unmapped(),
                    iova,
                    RequestKind::Write,
                )?;
                ensure!(!hit, "page {p} written after its unmap");
            } else {
                v.watch.expect_none("write around the unmapped middle")?;
                ensure!(hit, "page {p} (still mapped) not written");
            }
        }
        v.unmap(io, base, 0x4000)?;
        v.unmap(io, base + 0xC000, 0x4000)?;
        v.unmap(io, IOVA_A, 4096)?;
        // SAFETY: `block` came from `alloc(16)`; its IOVAs are unmapped and flushed.
        unsafe { v.g.alloc.free(block, 16) };
        Ok(())
    })
}

/// The fault path on its own, through the crate's register layer (no unit): an empty legacy
/// root table is installed and translation enabled, so every `edu` DMA faults with "root entry
/// not present". Checks the reader (reason, source-id, address, read/write) and QEMU's
/// collapsing of a second fault from the same requester while the first is pending.
fn fault_no_root(g: &mut Ctx) -> Result<(), Fail> {
    use iommu_engine::vtd::regs::{
        gsts, set_persistent, write_root_table, Gsts, PersistentCommand, RootTableAddress,
        TranslationTableMode,
    };
    const BUDGET: u32 = 1_000_000;
    let edu = g.edu()?;
    // SAFETY: the VT-d window is identity-mapped uncached by boot.rs.
    let faults = unsafe { FaultReader::new(g.arch.vtd_base) }?;
    let regs = vtd_unit::regs(g)?;
    faults.expect_none("before enable")?;
    let root = Buf::new(g)?;
    root.fill(0);
    let rta = RootTableAddress::new(PhysAddr::new(root.pa()), TranslationTableMode::Legacy)
        .or_fail("RTADDR")?;
    write_root_table(&regs, rta, BUDGET).or_fail("SRTP")?;
    set_persistent(&regs, PersistentCommand::TranslationEnable, true, BUDGET).or_fail("TE on")?;
    ensure!(gsts(&regs).contains(Gsts::TES), "TES clear after TE");
    let victim = Buf::new(g)?;
    dma_check::to_device(edu, IOVA_A + 0x10, 64)?;
    faults.expect_one(
        "read, no root entry",
        FaultReason::RootEntryNotPresent,
        IOVA_A,
        RequestKind::Read,
    )?;
    victim.fill(GUARD);
    dma_check::from_device(edu, victim.pa(), 64)?;
    // A second fault from edu while the first is pending is collapsed: one record, no overflow.
    dma_check::from_device(edu, victim.pa() + 0x1000, 64)?;
    faults.expect_one(
        "write, no root entry",
        FaultReason::RootEntryNotPresent,
        victim.pa(),
        RequestKind::Write,
    )?;
    victim.check_all("write with no root entry", GUARD)?;
    set_persistent(&regs, PersistentCommand::TranslationEnable, false, BUDGET).or_fail("TE off")?;
    dma_check::from_device(edu, victim.pa(), 64)?;
    ensure!(
        victim.byte(0) != GUARD,
        "DMA with translation off did not land at its physical address"
    );
    faults.expect_none("translation off")?;
    Ok(())
}

/// Invalidations a map costs: none on a unit without caching mode (a not-present entry is
/// never cached, and QEMU has no `CAP.RWBF`); at least one (with its wait) under `CAP.CM`,
/// where not-present entries may be cached. QEMU does not model that caching, so the unit's
/// own counters are what is checked; the DMA afterwards shows the map is usable either way.
fn map_invalidations(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        let before = v.unit.stats();
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_B, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        let after = v.unit.stats();
        let (descs, waits) = (
            after.descriptors - before.descriptors + after.register_commands
                - before.register_commands,
            after.waits - before.waits,
        );
        println!("two maps: {descs} invalidation(s), {waits} wait(s)");
        if v.watch.cap().flags().contains(CapFlags::CM) {
            ensure!(
                descs >= 2 && waits >= 2,
                "caching mode: two maps issued {descs} invalidations and {waits} waits"
            );
        } else {
            ensure!(
                descs == 0 && waits == 0,
                "no caching mode: two maps issued {descs} invalidations and {waits} waits"
            );
        }
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, IOVA_B, 0, LEN, 24)?;
        // One unmap: one flush with one wait, whatever the mode.
        let before = v.unit.stats();
        v.unmap(io, IOVA_B, 4096)?;
        let waits = v.unit.stats().waits - before.waits;
        ensure!(waits == 1, "one unmap waited {waits} times");
        v.unmap(io, IOVA_A, 4096)?;
        Ok(())
    })
}

/// The top page of the domain's input range maps and works; one page above is refused by the
/// unit and the IOASID keeps nothing of it; a DMA there faults the way QEMU reports an address
/// beyond the width (0x4 on second stage, 0x80 non-canonical on first stage). So the width the
/// unit claims is the width the hardware walks.
fn address_width(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (_, bits) = v.only_domain()?;
        println!("domain input width {bits} bits");
        let (src, dst) = (v.buf()?, v.buf()?);
        let top = (1u64 << bits) - 4096;
        let beyond = 1u64 << bits;
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, top, dst.pa(), 4096, Prot::READ | Prot::WRITE)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, top + 0x80, 0x80, LEN, 25)?;
        match v.ctx.map(
            io,
            Iova::new(beyond),
            PhysAddr::new(dst.pa()),
            4096,
            Prot::READ | Prot::WRITE,
        ) {
            // Nothing can be mapped beyond the width: a plain refusal, not pages reported
            // reachable (the undo's walk of a range beyond the width is no leaf left).
            Err(e @ IoError::InvalidationPending { .. }) => {
                bail!("map at {beyond:#x} beyond the width reported reachable: {e}")
            }
            Err(e) => println!("map at {beyond:#x} refused: {e}"),
            Ok(()) => bail!("map at {beyond:#x}, beyond the domain's {bits} bits, succeeded"),
        }
        // The interrupt window is reserved on VT-d: the IOASID layer refuses to map it.
        match v.ctx.map(
            io,
            Iova::new(0xFEE0_0000),
            PhysAddr::new(dst.pa()),
            4096,
            Prot::READ | Prot::WRITE,
        ) {
            Err(IoError::Reserved(r)) => println!("interrupt window refused: {r:?}"),
            Err(e) => bail!("map of 0xfee00000 failed with {e}, expected Reserved"),
            Ok(()) => bail!("the interrupt window 0xfee00000 was mapped"),
        }
        let kept = v
            .ctx
            .translate(io, Iova::new(beyond))
            .or_fail("translate")?;
        ensure!(
            kept.is_none(),
            "the refused map left {kept:?} in the IOASID"
        );
        let reason = match v.walk() {
            Walk::Second => FaultReason::AddressBeyondMgaw,
            Walk::First => FaultReason::SmNonCanonicalAddress,
        };
        v.write_faults("write beyond the input width", beyond, &[reason], &dst)?;
        v.unmap(io, IOVA_A, 4096)?;
        v.unmap(io, top, 4096)?;
        output_width_and_privilege(v, io)
    })
}

/// The output side of 115 (issue 15, items 9 and 10): the unit's output width is the DMAR's
/// host address width (QEMU reports `aw-bits`), reported as a firmware declaration; a physical
/// address at its top is mapped, one at `2^HAW` refused naming it. QEMU advertises no
/// `ECAP.SRS` in any mode, so supervisor requests are not offered: a `SUPERVISOR` IOASID is
/// refused at attach and a privileged-only page anywhere else at map.
fn output_width_and_privilege(v: &Vtd<'_, '_, '_>, io: IoasidId) -> Result<(), Fail> {
    let haw =
        u32::from(crate::firmware::unit_defaults(v.g.arch.vtd_base)?.host_address_width_field) + 1;
    let caps = v.unit.capabilities();
    println!(
        "output width {} ({}), DMAR HAW {haw}; supervisor {} ({})",
        caps.oas, caps.sources.oas, caps.supervisor, caps.sources.supervisor
    );
    ensure!(
        caps.oas == haw && caps.sources.oas == iommu_engine::vtd::platform::DMAR_HAW,
        "output width {} from {}, the DMAR says {haw}",
        caps.oas,
        caps.sources.oas
    );
    let rw = Prot::READ | Prot::WRITE;
    let top_pa = (1u64 << haw) - 4096;
    v.map(io, IOVA_B, top_pa, 4096, rw)?;
    v.unmap(io, IOVA_B, 4096)?;
    let want = IoError::PageTable(iommu_engine::pgtable::Error::PaOutOfRange {
        last: PhysAddr::new((1u64 << haw) + 4095),
        oas: haw,
    });
    match v
        .ctx
        .map(io, Iova::new(IOVA_B), PhysAddr::new(1 << haw), 4096, rw)
    {
        Err(e) if e == want => println!("PA {:#x} refused: {e}", 1u64 << haw),
        r => bail!("map of PA 2^{haw}: {r:?}, expected {want:?}"),
    }
    ensure!(
        !caps.supervisor,
        "QEMU offers no ECAP.SRS, the unit says {caps:?}"
    );
    let priv_rw = rw | Prot::PRIV;
    let refused =
        IoError::PageTable(iommu_engine::pgtable::Error::UnsupportedProt { prot: priv_rw });
    match v
        .ctx
        .map(io, Iova::new(IOVA_B), PhysAddr::new(top_pa), 4096, priv_rw)
    {
        Err(e) if e == refused => {}
        r => bail!("a PRIV map outside a SUPERVISOR IOASID: {r:?}"),
    }
    let sup = v.alloc(IoasidFlags::SUPERVISOR)?;
    match v.ctx.attach(v.dev, sup) {
        Err(IoError::Incompatible {
            reason: Incompatibility::Missing(Missing::SupervisorRequests),
            ..
        }) => println!("SUPERVISOR IOASID refused"),
        r => bail!("attach of a SUPERVISOR IOASID: {r:?}"),
    }
    v.ctx.free(sup).or_fail("free the SUPERVISOR IOASID")
}

/// A 2 MiB leaf, used (QEMU caches the 2 MiB translation), then one 4 KiB page unmapped from
/// its middle: the unit splits the leaf into a table and invalidates the cached 2 MiB entry, so
/// DMA to that page faults while DMA to its neighbours still lands.
fn split_2m(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let io = v.alloc(IoasidFlags::empty())?;
        v.attach(io)?;
        let (src, dst) = (v.buf()?, v.buf()?);
        const M2: u64 = 1 << 21;
        let base = dst.pa() & !(M2 - 1);
        let d = IOVA_2M + (dst.pa() - base);
        v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(io, IOVA_2M, base, M2, Prot::READ | Prot::WRITE)?;
        ensure!(
            v.leaf_size(IOVA_2M) == Some(21),
            "leaf at {IOVA_2M:#x}: {:?} (want 2 MiB)",
            v.leaf_size(IOVA_2M)
        );
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, d + 0x100, 0x100, LEN, 26)?;
        // The page after `dst` (inside the same 2 MiB unless dst is its last page).
        let hole = if d + 4096 < IOVA_2M + M2 {
            d + 4096
        } else {
            d - 4096
        };
        v.unmap(io, hole, 4096)?;
        ensure!(
            v.leaf_size(d) == Some(12),
            "after the split the leaf at {d:#x} is {:?} (want 4 KiB)",
            v.leaf_size(d)
        );
        let hole_pa = base + (hole - IOVA_2M);
        println!("hole at iova {hole:#x} (pa {hole_pa:#x})");
        dma_check::from_device(v.edu, hole, 64)?;
        v.watch.expect_one(
            "write into the page unmapped from a 2 MiB leaf",
            v.walk().write_unmapped(),
            hole,
            RequestKind::Write,
        )?;
        roundtrip(v.edu, &src, IOVA_A, 0, &dst, d + 0x200, 0x200, LEN, 27)?;
        v.unmap(io, IOVA_2M, hole - IOVA_2M)?;
        v.unmap(io, hole + 4096, IOVA_2M + M2 - hole - 4096)?;
        v.unmap(io, IOVA_A, 4096)?;
        Ok(())
    })
}

/// Two requesters (a second `edu` at 00:05.0, RID 0x28 as the DMAR resolves it): first sharing
/// one IOASID (one domain), then on two IOASIDs at once (two live domains, two DIDs). Each DMA
/// lands in the page of its own device's IOASID; an unmap in one domain blocks only that
/// device; detaching one device blocks it (its fault record names its RID) and leaves the
/// other working.
fn two_devices(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| ioasid_env::two_devices(v, 29))
}

/// A PASID attachment next to the device's RID attachment. Where the unit cannot take it
/// (legacy mode; no PASID support, QEMU's `x-pasid-mode=off`; no first stage for a PASID
/// IOASID) the attach is refused as `Incompatible`; where it can (`x-flts=on,x-pasid-mode=on`)
/// it is made and undone. Either way requests without PASID (all `edu` makes) keep landing in
/// the RID's IOASID: the PASID entry written beside `RID_PASID`'s must not disturb it.
fn pasid_attach(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let (src, in_rid, in_pasid) = (v.buf()?, v.buf()?, v.buf()?);
        let rid = v.alloc(IoasidFlags::empty())?;
        v.map(rid, IOVA_A, src.pa(), 4096, Prot::READ)?;
        v.map(rid, IOVA_B, in_rid.pa(), 4096, Prot::READ | Prot::WRITE)?;
        v.attach(rid)?;
        roundtrip(v.edu, &src, IOVA_A, 0, &in_rid, IOVA_B, 0, LEN, 37)?;

        let caps = v
            .ctx
            .device_info(v.dev)
            .or_fail("device_info")?
            .capabilities;
        let first_stage = v.watch.ecap().flags().contains(EcapFlags::FLTS);
        let expect_ok = caps.pasid_bits > 0 && first_stage;
        println!(
            "unit PASID bits {}, first stage {first_stage}: attach expected to {}",
            caps.pasid_bits,
            if expect_ok { "work" } else { "be refused" }
        );
        let pasid = v.ctx.alloc_pasid().or_fail("alloc_pasid")?;
        let pio = v.alloc(IoasidFlags::PASID)?;
        v.map(pio, IOVA_B, in_pasid.pa(), 4096, Prot::READ | Prot::WRITE)?;
        let r = v.ctx.attach_pasid(v.dev, pasid, pio);
        match (&r, expect_ok) {
            (Ok(()), true) => println!("PASID {} attached", pasid.get()),
            (Err(IoError::Incompatible { device, reason }), false) if *device == v.dev => {
                println!("PASID {} refused: {reason}", pasid.get())
            }
            (r, _) => bail!("attach_pasid({}) gave {r:?}", pasid.get()),
        }
        for round in 0..2u8 {
            in_pasid.fill(GUARD);
            roundtrip(v.edu, &src, IOVA_A, 0, &in_rid, IOVA_B, 0, LEN, 38 + round)?;
            in_pasid.check_all("the PASID IOASID's page", GUARD)?;
            if r.is_ok() && round == 0 {
                v.ctx.detach_pasid(v.dev, pasid).or_fail("detach_pasid")?;
            }
        }
        v.ctx.free_pasid(pasid).or_fail("free_pasid")?;
        Ok(())
    })
}

/// A requester on another bus (an `edu` behind a PCIe root port, RID bus:00.0): its DMA goes
/// through the root entry of its own bus. It works once attached, faults with its own RID in
/// the record, and the bus-0 `edu` on another IOASID is not affected by either.
fn other_bus(g: &mut Ctx) -> Result<(), Fail> {
    with_vtd(g, |v| {
        let far = crate::edu_behind_root_port()?;
        // The DMAR names the root port (a PCI sub-hierarchy scope); the far edu is covered
        // because the port's secondary..subordinate buses, read back, hold its bus (under the
        // unit the scenarios drive).
        let sid = Unit::device_id(v.g, far.bdf)?;
        let dev_far = ioasid_env::bind(v.ctx, sid, "bind the edu behind the root port")?;
        let (src, near_page, far_page) = (v.buf()?, v.buf()?, v.buf()?);
        let (near, far_io) = (
            v.alloc(IoasidFlags::empty())?,
            v.alloc(IoasidFlags::empty())?,
        );
        for (io, page) in [(near, &near_page), (far_io, &far_page)] {
            v.map(io, IOVA_A, src.pa(), 4096, Prot::READ)?;
            v.map(io, IOVA_B, page.pa(), 4096, Prot::READ | Prot::WRITE)?;
        }
        // Not attached yet: blocked, and the record names the far RID.
        far_page.fill(GUARD);
        dma_check::from_device(&far, IOVA_B, 64)?;
        v.watch.expect_from(
            sid,
            "far edu before attach",
            BLOCKED,
            IOVA_B,
            RequestKind::Write,
        )?;
        far_page.check_all("far edu's write before attach", GUARD)?;
        v.attach(near)?;
        v.ctx
            .attach(dev_far, far_io)
            .or_fail("attach the far edu")?;
        println!("far edu RID {sid:#06x} attached");
        for round in 0..2u8 {
            near_page.fill(GUARD);
            roundtrip(&far, &src, IOVA_A, 0, &far_page, IOVA_B, 0, LEN, 40 + round)?;
            near_page.check_all("the near edu's page", GUARD)?;
            far_page.fill(GUARD);
            roundtrip(
                v.edu,
                &src,
                IOVA_A,
                0,
                &near_page,
                IOVA_B,
                0,
                LEN,
                42 + round,
            )?;
            far_page.check_all("the far edu's page", GUARD)?;
        }
        v.unmap(far_io, IOVA_B, 4096)?;
        v.write_faults_from(
            &far,
            sid,
            "far edu after unmap",
            IOVA_B,
            &[v.walk().write_unmapped()],
            &far_page,
        )?;
        v.ctx.detach(dev_far).or_fail("detach the far edu")?;
        v.write_faults_from(
            &far,
            sid,
            "far edu after detach",
            IOVA_B,
            BLOCKED,
            &far_page,
        )?;
        roundtrip(
            v.edu,
            &src,
            IOVA_A,
            0,
            &near_page,
            IOVA_B + 0x40,
            0x40,
            LEN,
            44,
        )?;
        v.ctx.unbind(dev_far).or_fail("unbind the far edu")?;
        Ok(())
    })
}

/// A unit left running by a previous owner (firmware, or a kernel before kexec): translation
/// on, queued invalidation on, edu attached and its translations cached. A new `VtdUnit` over
/// the same registers must take over without ever turning translation off: install its own
/// (blocking) root table with SRTP while TE stays set, drain and turn off the old queue (QEMU
/// refuses to turn it off unless the last descriptor was a wait), install its own queue and
/// invalidate globally. Then edu is blocked until the new owner attaches it, and its DMA lands
/// where the new owner maps.
fn takeover(g: &mut Ctx) -> Result<(), Fail> {
    let g: &Ctx = g;
    // SAFETY: the VT-d window is identity-mapped uncached by boot.rs.
    let faults = unsafe { FaultReader::new(g.arch.vtd_base) }?;
    let edu = g.edu()?;
    let (src, old_page, new_page) = (Buf::new(g)?, Buf::new(g)?, Buf::new(g)?);
    let map = |ctx: &IoasidCtx<'_, '_, PageArena>, io, iova: u64, pa: u64, prot| {
        ctx.map(io, Iova::new(iova), PhysAddr::new(pa), 4096, prot)
            .or_fail("map")
    };
    // The previous owner.
    let old = vtd_unit::create(g)?;
    {
        let units: [&dyn Iommu; 1] = [&old];
        let registry = Registry::new(&units, &PASIDS).or_fail("registry")?;
        let ctx = IoasidCtx::new(&registry, g.alloc, 0);
        let dev = ioasid_env::bind(&ctx, edu_sid(), "bind edu")?;
        let io = ctx.alloc(IoasidFlags::empty()).or_fail("alloc")?;
        map(&ctx, io, IOVA_A, src.pa(), Prot::READ)?;
        map(&ctx, io, IOVA_B, old_page.pa(), Prot::READ | Prot::WRITE)?;
        ctx.attach(dev, io).or_fail("attach")?;
        roundtrip(edu, &src, IOVA_A, 0, &old_page, IOVA_B, 0, LEN, 45)?;
        // Gone without a word: nothing is torn down, its pages stay where the hardware
        // points.
        core::mem::forget(ctx);
    }
    ensure!(
        vtd_unit::translating(&old),
        "the old unit is not translating"
    );
    core::mem::forget(old);
    println!("previous owner gone with translation and queued invalidation on");

    let live_before = g.alloc.live_frames();
    let unit = vtd_unit::create(g)?;
    {
        let units: [&dyn Iommu; 1] = [&unit];
        let registry = Registry::new(&units, &PASIDS).or_fail("registry")?;
        let ctx = IoasidCtx::new(&registry, g.alloc, 0);
        // Nothing attached on the new unit: blocked, the old translation is not used.
        old_page.fill(GUARD);
        dma_check::from_device(edu, IOVA_B, 64)?;
        faults.expect_one_of(
            "write before the new owner attaches",
            BLOCKED,
            IOVA_B,
            RequestKind::Write,
        )?;
        old_page.check_all("the old owner's page", GUARD)?;
        let dev = ioasid_env::bind(&ctx, edu_sid(), "bind edu")?;
        let io = ctx.alloc(IoasidFlags::empty()).or_fail("alloc")?;
        map(&ctx, io, IOVA_A, src.pa(), Prot::READ)?;
        map(&ctx, io, IOVA_B, new_page.pa(), Prot::READ | Prot::WRITE)?;
        ctx.attach(dev, io).or_fail("attach")?;
        for round in 0..2u8 {
            roundtrip(edu, &src, IOVA_A, 0, &new_page, IOVA_B, 0, LEN, 46 + round)?;
            old_page.check_all("the old owner's page", GUARD)?;
        }
        faults.expect_none("after takeover")?;
    }
    vtd_unit::destroy(unit)?;
    let leaked = g.alloc.live_frames().saturating_sub(live_before);
    ensure!(
        leaked == 0,
        "{leaked} page frame(s) of the new unit not returned"
    );
    Ok(())
}
