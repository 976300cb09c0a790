//! The C ABI keeps the promises of its header where a C caller breaks the rules (the review
//! of 2026-12-07): a unit in two registries, a misaligned register window, a context of
//! another registry, a PASID quota above the limit, an answer to a fault the unit no longer
//! holds, sim handles destroyed twice or while in use.

extern crate std;

use core::mem::MaybeUninit;
use core::ptr::null_mut;

use super::fault::ie_registry_dispatch_faults;
use super::ioasid::{ie_ctx_create, ie_ctx_destroy, ie_registry_create, ie_registry_destroy};
use super::sim::{
    ie_sim_arena_destroy, ie_sim_model_destroy, ie_sim_vtd_model_create, IeSimModel, IeSimVtdConfig,
};
use super::status::IeStatus;
use super::tests::{arena, mapped_regs, release_sim_unit, sim_unit, Sim};
use super::unit::{ie_unit_destroy, ie_unit_disable, ie_vtd_config_default, ie_vtd_create};

const OK: i32 = IeStatus::Ok as i32;
const BUSY: i32 = IeStatus::Busy as i32;
const INVALID: i32 = IeStatus::InvalidArgument as i32;

fn vtd() -> Sim {
    Sim::Vtd(IeSimVtdConfig {
        snoop_control: true,
        ..IeSimVtdConfig::default()
    })
}

/// A unit listed twice in one registry, or in two live registries, would have each of its
/// devices owned twice: the second owner's attach replaces the first one's context entry.
/// Refused: the duplicate `INVALID_ARGUMENT`, the second registry `BUSY` until the first is
/// destroyed; a refused creation leaves no unit claimed.
#[test]
fn a_unit_is_in_one_registry_once() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator; the handles are this test's alone.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, vtd());
        let (model2, unit2, _) = sim_unit(arena, &env, vtd());
        let mut r = null_mut();
        let twice = [unit, unit];
        assert_eq!(
            ie_registry_create(&env, twice.as_ptr(), 2, 20, &mut r),
            INVALID
        );
        assert!(r.is_null());
        let once = [unit];
        let mut a = null_mut();
        assert_eq!(ie_registry_create(&env, once.as_ptr(), 1, 20, &mut a), OK);
        let mut b = null_mut();
        assert_eq!(ie_registry_create(&env, once.as_ptr(), 1, 20, &mut b), BUSY);
        assert!(b.is_null());
        // `unit2` is free, `unit` is not: refused, and `unit2` not left claimed.
        let both = [unit2, unit];
        assert_eq!(ie_registry_create(&env, both.as_ptr(), 2, 20, &mut b), BUSY);
        let second = [unit2];
        assert_eq!(ie_registry_create(&env, second.as_ptr(), 1, 20, &mut b), OK);
        assert_eq!(ie_registry_destroy(b), OK);
        assert_eq!(ie_registry_destroy(a), OK);
        // Free again once its registry is gone.
        assert_eq!(ie_registry_create(&env, once.as_ptr(), 1, 20, &mut b), OK);
        assert_eq!(ie_registry_destroy(b), OK);
        assert_eq!(ie_unit_disable(unit2), OK);
        assert_eq!(ie_unit_destroy(unit2), OK);
        assert_eq!(ie_sim_model_destroy(model2), OK);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A mapped window whose base is not 8-byte aligned would make every 64-bit register access
/// misaligned (undefined behaviour; an alignment fault on Arm device memory): refused before
/// any register is read.
#[test]
fn a_misaligned_register_window_is_refused() {
    let (arena, env) = arena();
    // Zeroed memory standing for registers: never read once the base is refused.
    let mut window = std::vec![0u64; 0x1000 / 8 + 1];
    let mut cfg = MaybeUninit::uninit();
    // SAFETY: writable.
    assert_eq!(unsafe { ie_vtd_config_default(cfg.as_mut_ptr()) }, OK);
    for misalign in [4usize, 2, 1] {
        let base = window.as_mut_ptr().cast::<u8>().wrapping_add(misalign);
        let regs = mapped_regs(base.cast(), 0x1000);
        let mut unit = null_mut();
        // SAFETY: the window is readable memory of `len` bytes past `base`; `cfg` initialised.
        let st = unsafe { ie_vtd_create(&env, &regs, cfg.as_ptr(), &mut unit) };
        assert_eq!(st, INVALID, "base misaligned by {misalign}");
        assert!(unit.is_null());
    }
    // SAFETY: no model uses the arena.
    assert_eq!(unsafe { ie_sim_arena_destroy(arena) }, OK);
}

/// ie_registry_dispatch_faults() queues a unit's faults only in contexts of its registry: a
/// context of another registry (or a handle of another type) is refused before anything is
/// drained.
#[test]
fn dispatch_refuses_a_context_of_another_registry() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator; the handles are this test's alone.
    unsafe {
        let prq = || {
            Sim::Vtd(IeSimVtdConfig {
                scalable: true,
                page_requests: true,
                ..IeSimVtdConfig::default()
            })
        };
        let (model, unit, before) = sim_unit(arena, &env, prq());
        let (model2, unit2, _) = sim_unit(arena, &env, prq());
        assert_eq!(super::fault::ie_unit_enable_page_requests(unit, 0), OK);
        let (mut ra, mut rb) = (null_mut(), null_mut());
        assert_eq!(
            ie_registry_create(&env, [unit].as_ptr(), 1, 20, &mut ra),
            OK
        );
        assert_eq!(
            ie_registry_create(&env, [unit2].as_ptr(), 1, 20, &mut rb),
            OK
        );
        let (mut ca, mut cb) = (null_mut(), null_mut());
        assert_eq!(ie_ctx_create(ra, 4, &mut ca), OK);
        assert_eq!(ie_ctx_create(rb, 4, &mut cb), OK);
        let mut queued = u32::MAX;
        let own = [ca, null_mut()];
        assert_eq!(
            ie_registry_dispatch_faults(ra, 0, own.as_ptr(), 2, &mut queued),
            OK
        );
        assert_eq!(queued, 0);
        let foreign = [ca, cb];
        assert_eq!(
            ie_registry_dispatch_faults(ra, 0, foreign.as_ptr(), 2, &mut queued),
            INVALID
        );
        let wrong_type = [ra.cast()];
        assert_eq!(
            ie_registry_dispatch_faults(ra, 0, wrong_type.as_ptr(), 1, &mut queued),
            INVALID
        );
        assert_eq!(ie_ctx_destroy(ca), OK);
        assert_eq!(ie_ctx_destroy(cb), OK);
        assert_eq!(ie_registry_destroy(ra), OK);
        assert_eq!(ie_registry_destroy(rb), OK);
        assert_eq!(ie_unit_disable(unit2), OK);
        assert_eq!(ie_unit_destroy(unit2), OK);
        assert_eq!(ie_sim_model_destroy(model2), OK);
        release_sim_unit(arena, model, unit, before);
    }
}

/// The header allows a PASID quota of at most 64: above, refused rather than capped.
#[test]
fn a_pasid_quota_above_64_is_refused() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator; the handles are this test's alone.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, vtd());
        let mut r = null_mut();
        assert_eq!(ie_registry_create(&env, [unit].as_ptr(), 1, 20, &mut r), OK);
        let mut c = null_mut();
        assert_eq!(ie_ctx_create(r, 65, &mut c), INVALID);
        assert!(c.is_null());
        assert_eq!(ie_ctx_create(r, u32::MAX, &mut c), INVALID);
        assert_eq!(ie_ctx_create(r, 64, &mut c), OK);
        assert_eq!(ie_ctx_destroy(c), OK);
        assert_eq!(ie_registry_destroy(r), OK);
        release_sim_unit(arena, model, unit, before);
    }
}

/// An answer to a group the unit no longer has outstanding (a stall it terminated) reads as
/// the header's "no such group": `INVALID_ARGUMENT`, as one the context's queue does not hold.
#[test]
fn an_answer_the_unit_does_not_expect_is_invalid() {
    use crate::iommu::{DeviceId, Error};
    use crate::iopf::FaultKind;
    let e = Error::NotOutstanding {
        device: DeviceId(0x40),
        pasid: None,
        kind: FaultKind::Stall { stag: 3 },
    };
    assert_eq!(
        IeStatus::from(crate::ioasid::Error::Iommu(e)),
        IeStatus::InvalidArgument
    );
}

/// A model is the register window of the unit created on it: destroying it first is refused
/// (`BUSY`); sim handles destroyed twice or passed as the other type are refused
/// (`INVALID_ARGUMENT`), not freed again or reinterpreted.
#[test]
fn sim_handles_are_checked_and_counted() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator; the handles are this test's alone.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, vtd());
        assert_eq!(ie_sim_model_destroy(model), BUSY);
        assert_eq!(ie_sim_arena_destroy(arena), BUSY);
        assert_eq!(ie_sim_arena_destroy(model.cast()), INVALID);
        assert_eq!(ie_sim_model_destroy(arena.cast()), INVALID);
        assert_eq!(ie_unit_disable(unit), OK);
        assert_eq!(ie_unit_destroy(unit), OK);
        assert_eq!(super::sim::ie_sim_arena_live_pages(arena), before);
        assert_eq!(ie_sim_model_destroy(model), OK);
        assert_eq!(ie_sim_model_destroy(model), INVALID);
        assert_eq!(ie_sim_arena_destroy(arena), OK);
        assert_eq!(ie_sim_arena_destroy(arena), INVALID);
        let mut m: *mut IeSimModel = null_mut();
        let cfg = IeSimVtdConfig::default();
        assert_eq!(ie_sim_vtd_model_create(arena, &cfg, &mut m), INVALID);
    }
}
