//! A nested child with devices behind two SMMUv3 units (models): the guest's batch is checked
//! against every unit before any is given its part, each device-scoped command goes to the
//! unit of the device its virtual StreamID names, each TLBI to every unit.

extern crate std;

use std::vec::Vec;

use super::super::{DeviceLabel, Error, IoasidCtx, IoasidFlags, PasidAllocator, Registry, UnitId};
use crate::iommu::{self, DeviceId, Iommu, Refusal, UserStage1};
use crate::sim::smmuv3::{op, Injection, SmmuModel, SmmuModelConfig};
use crate::sim::{Arena, ArenaConfig};
use crate::smmuv3::{SmmuConfig, SmmuUnit};

/// Device A behind unit 0 and device B behind unit 1, with the guest's IDs for them.
const SID_A: u32 = 0x20;
const SID_B: u32 = 0x300;
const VSID_A: u64 = 1;
const VSID_B: u64 = 2;

/// The guest's STE words 0 and 1: V, Config = stage-1 translate, its CD table at IPA 0x8_0000.
const GUEST_STE: UserStage1 = UserStage1::SmmuV3 {
    ste: [1 | 0b101 << 1 | 0x8_0000, 0],
};

/// CFGI_CD of the guest's StreamID `vsid`, SubstreamID 0, leaf.
fn cfgi_cd(vsid: u64) -> [u64; 2] {
    [u64::from(op::CFGI_CD) | vsid << 32, 1]
}

/// ATC_INV of the guest's StreamID `vsid`: everything (size 52).
fn atc_inv(vsid: u64) -> [u64; 2] {
    [u64::from(op::ATC_INV) | vsid << 32, 52]
}

/// TLBI_NH_ASID of the guest's ASID 5 (VMID field 0: the unit writes the parent's).
const TLBI_ASID5: [u64; 2] = [op::TLBI_NH_ASID as u64 | 5 << 48, 0];

/// The opcode and StreamID field of each command a model consumed since its counters were
/// cleared (the StreamID field means nothing for a TLBI).
fn log(m: &SmmuModel<'_>) -> Vec<(u8, u64)> {
    m.command_log()
        .iter()
        .map(|c| (c[0] as u8, c[0] >> 32))
        .collect()
}

/// Two SMMUv3 models and units in one registry, a context, a NEST_PARENT IOASID and a child of
/// it with A (unit 0) and B (unit 1) attached under VSID_A and VSID_B; `f` runs with the
/// models' counters cleared.
fn with_child_on_two_units(
    f: impl FnOnce(&IoasidCtx<'_, '_, Arena>, super::IoasidId, [&SmmuModel<'_>; 2]),
) {
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let models = [
        SmmuModel::new(
            &arena,
            SmmuModelConfig::qemu_like().with_fwb(true).with_ats(true),
        ),
        SmmuModel::new(
            &arena,
            SmmuModelConfig::qemu_like().with_fwb(true).with_ats(true),
        ),
    ];
    let cfg = SmmuConfig {
        poll_budget: 10_000,
        ..SmmuConfig::default()
    };
    let u0 = SmmuUnit::new(&models[0], &arena, cfg).unwrap();
    let u1 = SmmuUnit::new(&models[1], &arena, cfg).unwrap();
    u0.enable().unwrap();
    u1.enable().unwrap();
    let pasids = PasidAllocator::new(20);
    let units: [&dyn Iommu; 2] = [&u0, &u1];
    let reg = Registry::new(&units, &pasids).unwrap();
    {
        let ctx = IoasidCtx::new(&reg, &arena, 0);
        let parent = ctx.alloc(IoasidFlags::NEST_PARENT).unwrap();
        let child = ctx.alloc_nested(parent, GUEST_STE).unwrap();
        let label = |unit, sid| DeviceLabel {
            unit: UnitId(unit),
            id: DeviceId(sid),
        };
        let a = ctx.bind(label(0, SID_A), false).unwrap();
        let b = ctx.bind(label(1, SID_B), false).unwrap();
        ctx.set_virtual_id(a, Some(VSID_A as u32)).unwrap();
        ctx.set_virtual_id(b, Some(VSID_B as u32)).unwrap();
        ctx.attach(a, child).unwrap();
        ctx.attach(b, child).unwrap();
        models[0].reset_stats();
        models[1].reset_stats();
        f(&ctx, child, [&models[0], &models[1]]);
        models[0].clear_injections();
        models[1].clear_injections();
        ctx.detach(a).unwrap();
        ctx.detach(b).unwrap();
        ctx.free(child).unwrap();
        ctx.free(parent).unwrap();
    }
    assert_eq!(arena.bad_frees(), []);
}

const SYNC: (u8, u64) = (op::CMD_SYNC, 0);

/// The review's case: a CFGI_CD of A's virtual StreamID, A behind unit 0, while the child also
/// has B behind unit 1. Unit 1 refused it as FOREIGN_DEVICE after unit 0 had issued it.
#[test]
fn a_device_scoped_command_goes_to_its_device_s_unit_alone() {
    with_child_on_two_units(|ctx, child, [m0, m1]| {
        assert_eq!(ctx.invalidate_user(child, &[cfgi_cd(VSID_A)]), Ok(1));
        assert_eq!(log(m0), [(op::CFGI_CD, u64::from(SID_A)), SYNC]);
        assert_eq!(log(m1), []);
        assert_eq!(ctx.invalidate_user(child, &[atc_inv(VSID_B)]), Ok(1));
        assert_eq!(log(m1), [(op::ATC_INV, u64::from(SID_B)), SYNC]);
    });
}

/// A batch naming both devices and a TLBI: each device's commands to its unit, the TLBI (the
/// ASID is the guest's, under the parent's VMID on each unit) to both; `issued` counts the
/// guest's requests.
#[test]
fn a_batch_over_both_units_is_split_by_device_and_tlbis_reach_both() {
    with_child_on_two_units(|ctx, child, [m0, m1]| {
        let batch = [
            cfgi_cd(VSID_A),
            cfgi_cd(VSID_B),
            TLBI_ASID5,
            atc_inv(VSID_A),
        ];
        assert_eq!(ctx.invalidate_user(child, &batch), Ok(4));
        let tlbi = |m: &SmmuModel<'_>| {
            let c = m.command_log()[1];
            assert_ne!(c[0] >> 32 & 0xffff, 0, "the parent's VMID put in");
            (op::TLBI_NH_ASID, c[0] >> 32)
        };
        assert_eq!(
            log(m0),
            [
                (op::CFGI_CD, u64::from(SID_A)),
                tlbi(m0),
                (op::ATC_INV, u64::from(SID_A)),
                SYNC
            ]
        );
        assert_eq!(log(m1), [(op::CFGI_CD, u64::from(SID_B)), tlbi(m1), SYNC]);
    });
}

/// A batch naming a virtual StreamID no device of the child has is refused whole, with
/// nothing issued on either unit, whichever unit the good requests were for.
#[test]
fn a_batch_naming_a_foreign_virtual_id_is_refused_with_nothing_issued_anywhere() {
    with_child_on_two_units(|ctx, child, [m0, m1]| {
        for batch in [
            [cfgi_cd(VSID_A), cfgi_cd(3)],
            [cfgi_cd(VSID_B), cfgi_cd(3)],
            [TLBI_ASID5, atc_inv(3)],
        ] {
            assert_eq!(
                ctx.invalidate_user(child, &batch),
                Err(Error::Iommu(iommu::Error::Refused {
                    index: 1,
                    request: batch[1],
                    why: Refusal::ForeignDevice,
                }))
            );
        }
        // A refusal by the second unit only (a type no unit takes, after a request for B).
        let s12 = [u64::from(op::TLBI_S12_VMALL), 0];
        assert_eq!(
            ctx.invalidate_user(child, &[cfgi_cd(VSID_B), s12]),
            Err(Error::Iommu(iommu::Error::Refused {
                index: 1,
                request: s12,
                why: Refusal::Type,
            }))
        );
        assert_eq!((log(m0), log(m1)), (Vec::new(), Vec::new()));
    });
}

/// Unit 0 completes its part, unit 1's CMD_SYNC never completes: a unit fault, not a refusal,
/// naming the unit that failed, the units whose part completed, and how many leading requests
/// completed on every unit they were for.
#[test]
fn a_unit_failing_after_another_completed_says_what_was_issued() {
    with_child_on_two_units(|ctx, child, [m0, m1]| {
        m1.inject(Injection::SyncStall);
        let batch = [cfgi_cd(VSID_A), TLBI_ASID5, cfgi_cd(VSID_B)];
        let e = ctx.invalidate_user(child, &batch).unwrap_err();
        let Error::UserInvalidationIncomplete {
            unit,
            completed,
            done,
            error,
        } = e
        else {
            panic!("not a partial invalidation: {e:?}");
        };
        assert_eq!((unit, completed, done), (UnitId(1), 0b01, 1));
        assert!(error.is_unit_fault(), "{error:?}");
        assert_eq!(
            log(m0).len(),
            3,
            "CFGI_CD, TLBI, CMD_SYNC completed on unit 0"
        );
        // Unit 1 was given its part (the TLBI, B's CFGI_CD) and stalled on its CMD_SYNC.
        let l1 = log(m1);
        assert_eq!(l1[0].0, op::TLBI_NH_ASID);
        assert_eq!(l1[1..], [(op::CFGI_CD, u64::from(SID_B)), SYNC]);
        // The retry, once the unit answers, completes everything.
        m1.clear_injections();
        m0.reset_stats();
        assert_eq!(ctx.invalidate_user(child, &batch), Ok(3));
        assert_eq!(log(m0).len(), 3);
    });
}

/// A replace of a device's nested child by a host IOASID that the unit refuses (the new CD
/// table cannot be allocated) changes nothing: the books still name the child, and the unit
/// still gives the device the guest's nested STE. (9e4d142 took the device off the guest's
/// domain first: the STE aborted while the books named the child; review of 17:58.)
#[test]
fn a_refused_replace_of_a_nested_child_keeps_books_and_unit_agreeing() {
    use crate::mem::PageAllocator;
    let arena = Arena::new(ArenaConfig {
        base_pa: 0x1_0000_0000,
        capacity: 32 << 20,
    })
    .unwrap();
    let m = SmmuModel::new(&arena, SmmuModelConfig::qemu_like().with_fwb(true));
    let cfg = SmmuConfig {
        poll_budget: 10_000,
        ..SmmuConfig::default()
    };
    let u0 = SmmuUnit::new(&m, &arena, cfg).unwrap();
    u0.enable().unwrap();
    let pasids = PasidAllocator::new(20);
    let units: [&dyn Iommu; 1] = [&u0];
    let reg = Registry::new(&units, &pasids).unwrap();
    let ctx = IoasidCtx::new(&reg, &arena, 0);
    let parent = ctx.alloc(IoasidFlags::NEST_PARENT).unwrap();
    let child = ctx.alloc_nested(parent, GUEST_STE).unwrap();
    let host = ctx.alloc(IoasidFlags::PASID).unwrap();
    let label = |sid| DeviceLabel {
        unit: UnitId(0),
        id: DeviceId(sid),
    };
    let a = ctx.bind(label(SID_A), false).unwrap();
    let other = ctx.bind(label(0x40), false).unwrap();
    ctx.attach(a, child).unwrap();
    // The host IOASID's domain is built (another device uses it).
    ctx.attach(other, host).unwrap();
    let live = |sid: u32| {
        let c = u0.config.lock();
        c.strtab
            .as_ref()
            .unwrap()
            .read(crate::smmuv3::StreamId(sid))
            .unwrap()
    };
    assert!(
        live(SID_A).valid() && live(SID_A).config_raw() == 0b111,
        "nested"
    );
    let mut hog = Vec::new();
    while let Some(p) = arena.alloc(12) {
        hog.push(p);
    }
    let r = ctx.attach(a, host);
    assert!(r.is_err(), "{r:?}: STE {:#b}", live(SID_A).config_raw());
    // The books did not move (a refusal): the device is still the child's...
    ctx.attach(a, child).unwrap();
    // ...so the unit must still give it the guest's nested STE.
    assert_eq!(
        live(SID_A).config_raw(),
        0b111,
        "books say child, the STE says {:#b} (refused replace: {r:?})",
        live(SID_A).config_raw()
    );
}
