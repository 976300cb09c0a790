//! The C ABI's statuses and out-counts where a unit refuses or fails part of a call (the
//! second review of 2026-12-07): a disable that would let DMA through while a registry holds
//! the unit; a guest invalidation's count after a unit failure; an AMD-Vi event drain that
//! skipped an entry; an unmap's count and status after a failure or refusal.

extern crate std;

use core::ptr::null_mut;

use super::ioasid::{
    ie_ctx_alloc, ie_ctx_attach, ie_ctx_bind, ie_ctx_detach, ie_ctx_free, ie_ctx_map, ie_ctx_unmap,
    IeIoasidFlag,
};
use super::nested::{
    ie_ctx_alloc_nested, ie_ctx_invalidate_user, ie_ctx_invalidate_user_vtd, ie_ctx_set_virtual_id,
    IeUserStage1, IeUserStage1Format, IeVtdS1Invalidate,
};
use super::sim::{vtd_model, IeSimSmmuConfig, IeSimVtdConfig};
use super::status::IeStatus;
use super::tests::{
    arena, destroy_ctx_and_registry, mapped_regs, registry_and_ctx, release_sim_unit, sim_unit,
    smmu_user_stage1, Sim,
};
use super::unit::{ie_unit_disable, ie_unit_enable, unit_obj, IeUnit, UnitObj};
use crate::sim::vtd::Injection as VtdInjection;

const OK: i32 = IeStatus::Ok as i32;
const BUSY: i32 = IeStatus::Busy as i32;

fn enabled(unit: *mut IeUnit) -> bool {
    match &unit_obj(unit).unwrap().value {
        UnitObj::Vtd(u) => u.is_enabled(),
        UnitObj::Smmu(u) => u.is_enabled(),
        UnitObj::AmdVi(u) => u.is_enabled(),
    }
}

/// VT-d (TE clear) and AMD-Vi (IommuEn clear) pass every DMA through untranslated once
/// disabled: refused while a registry (with a context, devices may be attached) holds the
/// unit, and again once both are gone. An SMMUv3 that aborts DMA when disabled may still be
/// turned off (re-initialising PRI takes a disable with the contexts alive); one that
/// bypasses may not.
fn disable_with_registry(sim: Sim, refused: bool) {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator; the handles are this test's alone.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        if refused {
            assert_eq!(ie_unit_disable(unit), BUSY, "disable while in a registry");
            assert!(enabled(unit), "a refused disable leaves translation on");
        } else {
            assert_eq!(ie_unit_disable(unit), OK);
            assert_eq!(ie_unit_enable(unit), OK);
        }
        destroy_ctx_and_registry(registry, ctx);
        // Free of its registry: disabled (by `release_sim_unit`).
        release_sim_unit(arena, model, unit, before);
    }
}

#[test]
fn vtd_disable_is_refused_while_a_registry_holds_the_unit() {
    disable_with_registry(
        Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        }),
        true,
    );
}

#[test]
fn amdvi_disable_is_refused_while_a_registry_holds_the_unit() {
    disable_with_registry(Sim::AmdVi, true);
}

#[test]
fn smmu_disable_that_aborts_dma_is_allowed_with_a_registry() {
    disable_with_registry(
        Sim::Smmu(IeSimSmmuConfig {
            cohacc: true,
            ..IeSimSmmuConfig::default()
        }),
        false,
    );
}

#[test]
fn smmu_disable_that_bypasses_is_refused_while_a_registry_holds_the_unit() {
    disable_with_registry(
        Sim::SmmuBypass(IeSimSmmuConfig {
            cohacc: true,
            ..IeSimSmmuConfig::default()
        }),
        true,
    );
}

/// A registry and context over `unit` with a NEST_PARENT IOASID, a nested child of it made
/// from `stage1`, and device 0x20 bound, named 7 by the guest and attached to the child;
/// `f` runs with the context and the child; then everything but the unit is taken down.
///
/// # Safety
/// `env` is the arena's allocator, `unit` a live, enabled unit of it.
pub(super) unsafe fn with_nested_device(
    env: &super::IeEnv,
    unit: *mut IeUnit,
    stage1: &IeUserStage1,
    parent_map: bool,
    f: impl FnOnce(*mut super::IeCtx, u32),
) {
    let (mut parent, mut child, mut dev) = (0u32, 0u32, 0u32);
    // SAFETY: live handles, readable inputs and writable outputs (the caller's contract).
    unsafe {
        let (registry, ctx) = registry_and_ctx(env, unit);
        let nest = IeIoasidFlag::NestParent as u32;
        assert_eq!(ie_ctx_alloc(ctx, nest, &mut parent), OK);
        if parent_map {
            // The guest's first-stage table at GPA 0x10_0000.
            assert_eq!(
                ie_ctx_map(ctx, parent, 0x10_0000, 0x4000_0000, 0x1000, 3),
                OK
            );
        }
        assert_eq!(ie_ctx_alloc_nested(ctx, parent, stage1, &mut child), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, &mut dev), OK);
        assert_eq!(ie_ctx_set_virtual_id(ctx, dev, true, 7), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, child, null_mut()), OK);
        f(ctx, child);
        assert_eq!(ie_ctx_detach(ctx, dev), OK);
        assert_eq!(ie_ctx_free(ctx, child), OK);
        assert_eq!(ie_ctx_free(ctx, parent), OK);
        destroy_ctx_and_registry(registry, ctx);
    }
}

/// `ie_ctx_invalidate_user` when the unit fails the batch's check (an ATC_INV for a device
/// of a disabled SMMUv3, which would ignore it): nothing was issued, and `*issued` says so
/// (it was left unwritten, though the header says unit failures write it).
#[test]
fn smmu_user_invalidation_failing_its_check_writes_issued() {
    let (arena, env) = arena();
    let stage1 = smmu_user_stage1();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs throughout.
    unsafe {
        // FWB: a guest's stage 1 is refused over a parent that cannot force write-back on a
        // unit without CANWBS.
        // ATS: else a guest's ATC_INV is refused before the unit's state is looked at.
        let sim = Sim::Smmu(IeSimSmmuConfig {
            cohacc: true,
            fwb: true,
            ats: true,
            ..IeSimSmmuConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        with_nested_device(&env, unit, &stage1, false, |ctx, child| {
            // CMD_ATC_INV of the guest's StreamID 7, whole ATC (Size 52 at address 0).
            let atc_inv = [0x40 | 7 << 32, 52];
            assert_eq!(ie_unit_disable(unit), OK);
            let mut issued = usize::MAX;
            let st =
                ie_ctx_invalidate_user(ctx, child, atc_inv.as_ptr(), 1, &mut issued, null_mut());
            assert_ne!(st, OK);
            assert_ne!(st, IeStatus::NotPermitted as i32);
            assert_eq!(issued, 0, "status {st}: *issued written, nothing issued");
            assert_eq!(ie_unit_enable(unit), OK);
        });
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_ctx_invalidate_user_vtd` whose wait times out: `*processed` is written (0: none known
/// complete) rather than left as it was.
#[test]
fn vtd_user_invalidation_timing_out_writes_processed() {
    let (arena, env) = arena();
    let stage1 = IeUserStage1 {
        format: IeUserStage1Format::Vtd as u32,
        smmuv3_ste: [0, 0],
        vtd_flags: 0,
        vtd_pgtbl_addr: 0x10_0000,
        vtd_addr_width: 48,
    };
    // SAFETY: as above.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            scalable: true,
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        with_nested_device(&env, unit, &stage1, true, |ctx, child| {
            let inv = IeVtdS1Invalidate {
                addr: 0x1234_5000,
                npages: 1,
                flags: 1,
                reserved: 0,
            };
            vtd_model(model).inject(VtdInjection::StallWaits);
            let mut processed = usize::MAX;
            let st = ie_ctx_invalidate_user_vtd(ctx, child, &inv, 1, &mut processed, null_mut());
            vtd_model(model).clear_injections();
            assert_eq!(st, IeStatus::Timeout as i32);
            assert_eq!(processed, 0, "*processed written, none known complete");
        });
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_ctx_unmap` whose invalidation times out after the range was unmapped: `*unmapped`
/// says how much went (it was left unwritten on every error); the retry reissues the
/// invalidation and reports 0.
#[test]
fn vtd_unmap_timing_out_writes_what_it_unmapped() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs throughout.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let (mut io, mut dev) = (0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, &mut dev), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, io, null_mut()), OK);
        assert_eq!(ie_ctx_map(ctx, io, 0x10_0000, 0x4000_0000, 0x2000, 3), OK);
        vtd_model(model).inject(VtdInjection::StallWaits);
        let mut unmapped = u64::MAX;
        let st = ie_ctx_unmap(ctx, io, 0x10_0000, 0x2000, &mut unmapped);
        vtd_model(model).clear_injections();
        assert_eq!(st, IeStatus::Timeout as i32);
        assert_eq!(unmapped, 0x2000, "the range went from the IOASID");
        let st = ie_ctx_unmap(ctx, io, 0x10_0000, 0x2000, &mut unmapped);
        assert_eq!((st, unmapped), (OK, 0));
        // A refusal writes 0.
        unmapped = u64::MAX;
        let st = ie_ctx_unmap(ctx, io + 1000, 0x10_0000, 0x2000, &mut unmapped);
        assert_ne!(st, OK);
        assert_eq!(unmapped, 0);
        assert_eq!(ie_ctx_detach(ctx, dev), OK);
        assert_eq!(ie_ctx_free(ctx, io), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A split the table refuses is not `IE_STATUS_BUSY`, which ie_ctx_unmap() documents as "a
/// copy in flight, retry": a caller would retry for ever. The same call is refused again.
#[test]
fn a_refused_split_is_not_busy() {
    use crate::mem::Iova;
    use crate::pgtable::Error as E;
    let iova = Iova::new(0x20_1000);
    assert_eq!(
        IeStatus::from(E::SplitRefused { iova }),
        IeStatus::NotPermitted
    );
    assert_eq!(
        IeStatus::from(E::SplitUnsupported { iova }),
        IeStatus::Unsupported
    );
}

/// A VT-d window that covers the first register page but not the fault recording registers
/// CAP.FRO places at 0x1000: refused (it was accepted, and its fault records would then read
/// all-ones and never clear); the same window twice as long is accepted.
#[test]
fn vtd_window_shorter_than_its_fault_registers_is_refused() {
    use super::unit::{ie_unit_destroy, ie_vtd_config_default, ie_vtd_create};
    use core::mem::MaybeUninit;
    /// QEMU's CAP with FRO = 0x100 (offset 0x1000), NFR 0 (one record); IRO 0xf.
    const CAP: u64 = 0x00d2_008c_002f_0606 | 0x100 << 24;
    const ECAP: u64 = 0x00f0_0f5e;
    let (arena, env) = arena();
    let mut window = std::vec![0u64; 0x2000 / 8];
    window[1] = CAP;
    window[2] = ECAP;
    let mut cfg = MaybeUninit::uninit();
    // SAFETY: writable.
    assert_eq!(unsafe { ie_vtd_config_default(cfg.as_mut_ptr()) }, OK);
    for (len, want) in [(0x1000, IeStatus::InvalidArgument as i32), (0x2000, OK)] {
        let regs = mapped_regs(window.as_mut_ptr().cast(), len);
        let mut unit = null_mut();
        // SAFETY: the window is readable and writable memory of `len` bytes; `cfg` initialised.
        let st = unsafe { ie_vtd_create(&env, &regs, cfg.as_ptr(), &mut unit) };
        assert_eq!(st, want, "window of {len:#x} bytes");
        if st == OK {
            // SAFETY: a live unit, never enabled.
            assert_eq!(unsafe { ie_unit_destroy(unit) }, OK);
        } else {
            assert!(unit.is_null());
        }
    }
    // SAFETY: no model uses the arena.
    assert_eq!(unsafe { super::sim::ie_sim_arena_destroy(arena) }, OK);
}
