//! Defects of the C ABI found by a read-only review of `src/capi` (2026-12-07, the third):
//! a guest's invalidation batch read more than once, so that a buffer the guest shares
//! changes between the check and the use; a PASID width clamped without a word; a destroy
//! that leaked reported as a clean one; device and IOASID handles that a stale copy (a C
//! caller's use after destroy) reuses to reach the object created since in the same slot.
//! And of the dirty-tracking review (2026-12-07): caller buffers made a slice or read as a
//! struct without checking their alignment.

extern crate std;

use core::ptr::{null, null_mut};

use super::ioasid::{IeDeviceHints, IeDeviceHintsSize};
use super::nested::{
    ie_ctx_invalidate_user, ie_ctx_invalidate_user_vtd, IeUserStage1, IeUserStage1Format,
    IeVtdS1Invalidate,
};
use super::review_tests::with_nested_device;
use super::sim::{smmu_model, vtd_model, IeSimSmmuConfig, IeSimVtdConfig};
use super::status::IeStatus;
use super::tests::{arena, release_sim_unit, sim_unit, smmu_user_stage1, Sim};
use crate::sim::smmuv3::op;

const OK: i32 = IeStatus::Ok as i32;

/// A guest's SMMUv3 batch whose buffer changes after it was checked (the guest's CPU writing
/// its queue meanwhile): what is issued is what was checked. A CFGI_CD of the guest's
/// StreamID 7 (device 0x20) becomes one of StreamID 9 (no device of the guest) after the
/// check; the CFGI_CD of 0x20 is issued (it was not: the issue pass read the buffer again and
/// refused the batch its check had accepted, `IE_STATUS_NOT_PERMITTED`).
#[test]
#[cfg_attr(miri, ignore = "as capi_hwpt_alloc_nested_and_invalidate: too slow")]
fn smmu_user_invalidation_reads_the_guests_buffer_once() {
    let (arena, env) = arena();
    let stage1 = smmu_user_stage1();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs throughout; the hook writes the test's own buffer, on this thread.
    unsafe {
        let sim = Sim::Smmu(IeSimSmmuConfig {
            cohacc: true,
            fwb: true,
            ..IeSimSmmuConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let m = smmu_model(model);
        with_nested_device(&env, unit, &stage1, false, |ctx, child| {
            let cfgi_cd = |vsid: u64| [u64::from(op::CFGI_CD) | vsid << 32, 1];
            let mut batch = std::boxed::Box::new(cfgi_cd(7));
            let shared: *mut [u64; 2] = &mut *batch;
            crate::test_hooks::set_after_user_check(move || {
                // The test's buffer, alive until the call returns (the unsafe block above).
                shared.write_volatile(cfgi_cd(9));
            });
            m.reset_stats();
            let mut issued = usize::MAX;
            let st = ie_ctx_invalidate_user(
                ctx,
                child,
                shared.cast::<u64>(),
                1,
                &mut issued,
                null_mut(),
            );
            let log: std::vec::Vec<(u8, u64)> = m
                .command_log()
                .iter()
                .map(|c| (c[0] as u8, c[0] >> 32))
                .collect();
            assert_eq!((st, issued), (OK, 1));
            assert_eq!(
                log,
                [(op::CFGI_CD, 0x20), (op::CMD_SYNC, 0)],
                "the checked request is the issued one"
            );
            drop(batch);
        });
        release_sim_unit(arena, model, unit, before);
    }
}

/// A VT-d guest's batch whose buffer changes after it was checked: the PASID-based IOTLB
/// invalidation issued is the checked entry's (address 0x1234_5000), not the new one's
/// (0x5678_9000; it was: the issue loop read the buffer again).
#[test]
#[cfg_attr(miri, ignore = "as capi_hwpt_alloc_nested_and_invalidate: too slow")]
fn vtd_user_invalidation_reads_the_guests_buffer_once() {
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
        let m = vtd_model(model);
        with_nested_device(&env, unit, &stage1, true, |ctx, child| {
            let entry = |addr: u64| IeVtdS1Invalidate {
                addr,
                npages: 1,
                flags: 1,
                reserved: 0,
            };
            let mut batch = std::boxed::Box::new(entry(0x1234_5000));
            let shared: *mut IeVtdS1Invalidate = &mut *batch;
            crate::test_hooks::set_after_user_check(move || {
                // The test's buffer, alive until the call returns (the unsafe block above).
                shared.write_volatile(entry(0x5678_9000));
            });
            m.reset_stats();
            let mut processed = usize::MAX;
            let st = ie_ctx_invalidate_user_vtd(ctx, child, shared, 1, &mut processed, null_mut());
            assert_eq!((st, processed), (OK, 1));
            // PASID-based IOTLB invalidations (type 6) and their addresses (QW1 63:12).
            let addrs: std::vec::Vec<u64> = m
                .descriptor_log()
                .iter()
                .filter(|d| d[0] & 0xf == 6)
                .map(|d| d[1] & !0xfff)
                .collect();
            assert_eq!(addrs, [0x1234_5000], "the checked entry is the issued one");
            drop(batch);
        });
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_registry_create` with a PASID width beyond 20 bits is refused, nothing created and the
/// unit left free (it was clamped to 20 without a word); 0 bits is a system without PASIDs,
/// whose contexts get none (it was clamped to 1: PASID 1 was handed out).
#[test]
fn registry_pasid_width_is_checked_not_clamped() {
    use super::ioasid::{ie_ctx_alloc_pasid, ie_registry_create, IeRegistry};
    use super::tests::destroy_ctx_and_registry;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let units = [unit];
        let mut registry: *mut IeRegistry = null_mut();
        assert_eq!(
            ie_registry_create(&env, units.as_ptr(), 1, 21, &mut registry),
            IeStatus::InvalidArgument as i32,
            "a 21-bit PASID space"
        );
        assert!(registry.is_null(), "nothing created");
        assert_eq!(
            ie_registry_create(&env, units.as_ptr(), 1, 0, &mut registry),
            OK
        );
        let mut ctx = null_mut();
        assert_eq!(super::ioasid::ie_ctx_create(registry, 4, &mut ctx), OK);
        let mut pasid = u32::MAX;
        assert_eq!(
            ie_ctx_alloc_pasid(ctx, &mut pasid),
            IeStatus::NoSpace as i32,
            "no PASID in a 0-bit space (got PASID {pasid})"
        );
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_ctx_destroy` of a context whose device's detach never completes (the unit's waits
/// stall): the context is destroyed, but its device stays stranded and its domain allocated,
/// and the call says so with `IE_STATUS_LEAKED` (it returned `IE_STATUS_OK`).
#[test]
fn a_destroy_that_leaks_says_so() {
    use super::ioasid::{
        ie_ctx_alloc, ie_ctx_attach, ie_ctx_bind, ie_ctx_destroy, ie_ctx_map, ie_registry_destroy,
        ie_registry_leaked,
    };
    use super::sim::{ie_sim_model_destroy, vtd_model};
    use super::tests::registry_and_ctx;
    use super::unit::{ie_unit_destroy, ie_unit_disable};
    use crate::sim::vtd::Injection;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, _) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let (mut io, mut dev) = (0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, &mut dev), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, io, null_mut()), OK);
        assert_eq!(ie_ctx_map(ctx, io, 0x10_0000, 0x4000_0000, 0x2000, 3), OK);
        vtd_model(model).inject(Injection::StallWaits);
        assert_eq!(
            ie_ctx_destroy(ctx),
            IeStatus::Leaked as i32,
            "the detach never completed"
        );
        vtd_model(model).clear_injections();
        let (mut devices, mut domains, mut pages) = (0u64, 0u64, 0u64);
        assert_eq!(
            ie_registry_leaked(registry, &mut devices, &mut domains, &mut pages),
            OK
        );
        assert!(devices + domains + pages > 0, "{devices} {domains} {pages}");
        assert_eq!(ie_registry_destroy(registry), OK);
        assert_eq!(ie_unit_disable(unit), OK);
        let st = ie_unit_destroy(unit);
        assert!(
            st == OK || st == IeStatus::Leaked as i32,
            "unit destroy: {st}"
        );
        assert_eq!(ie_sim_model_destroy(model), OK);
    }
}

/// Device and IOASID handles carry their slot's generation: a handle kept after its IOASID
/// was freed (or its device unbound) is refused with `IE_STATUS_NOT_FOUND` once the slot
/// holds a new one, rather than reaching it (it did: a handle was its slot number, so the
/// stale IOASID handle mapped into the new IOASID and the stale device handle attached the
/// new device).
#[test]
fn stale_handles_are_refused_after_their_slot_is_reused() {
    use super::ioasid::{
        ie_ctx_alloc, ie_ctx_allow_incoherent_dma, ie_ctx_attach, ie_ctx_bind, ie_ctx_detach,
        ie_ctx_free, ie_ctx_map, ie_ctx_revoke_incoherent_dma, ie_ctx_translate, ie_ctx_unbind,
        ie_ctx_unmap,
    };
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    let not_found = IeStatus::NotFound as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let (mut old_io, mut new_io, mut old_dev, mut new_dev) = (0u32, 0u32, 0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut old_io), OK);
        assert_eq!(ie_ctx_free(ctx, old_io), OK);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut new_io), OK);
        assert_eq!(
            ie_ctx_map(ctx, old_io, 0x10_0000, 0x4000_0000, 0x1000, 3),
            not_found,
            "a freed IOASID's handle ({old_io:#x}) maps into its slot's new IOASID ({new_io:#x})"
        );
        let mut pa = 0u64;
        assert_eq!(ie_ctx_translate(ctx, new_io, 0x10_0000, &mut pa), not_found);
        assert_eq!(ie_ctx_free(ctx, old_io), not_found);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, true, &mut old_dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, old_dev), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x28, true, &mut new_dev), OK);
        assert_eq!(
            ie_ctx_attach(ctx, old_dev, new_io, null_mut()),
            not_found,
            "an unbound device's handle ({old_dev:#x}) attaches its slot's new device ({new_dev:#x})"
        );
        assert_eq!(ie_ctx_allow_incoherent_dma(ctx, new_dev), OK);
        assert_eq!(ie_ctx_allow_incoherent_dma(ctx, old_dev), not_found);
        assert_eq!(ie_ctx_revoke_incoherent_dma(ctx, old_dev), not_found);
        assert_eq!(ie_ctx_revoke_incoherent_dma(ctx, new_dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, old_dev), not_found);
        // The live handles work as ever.
        assert_eq!(ie_ctx_attach(ctx, new_dev, new_io, null_mut()), OK);
        assert_eq!(
            ie_ctx_map(ctx, new_io, 0x10_0000, 0x4000_0000, 0x1000, 3),
            OK
        );
        assert_eq!(ie_ctx_unmap(ctx, new_io, 0x10_0000, 0x1000, null_mut()), OK);
        assert_eq!(ie_ctx_detach(ctx, new_dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, new_dev), OK);
        assert_eq!(ie_ctx_free(ctx, new_io), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A VMM that cycles short-lived IOASIDs and devices: after 65,536 frees of one slot, a
/// handle kept from the first cycle is refused, never the name of the slot's new object (it
/// was its name: slots were handed out lowest-free-first, so every cycle reused slot 0, and
/// its 16-bit generation wrapped back to the stale handle's 0).
#[test]
#[cfg_attr(miri, ignore = "65,536 cycles")]
fn stale_handles_stay_refused_past_a_generation_wrap() {
    use super::ioasid::{
        ie_ctx_alloc, ie_ctx_attach, ie_ctx_bind, ie_ctx_free, ie_ctx_map, ie_ctx_unbind,
    };
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    const CYCLES: u32 = 1 << 16;
    let not_found = IeStatus::NotFound as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let (mut old_io, mut io, mut old_dev, mut dev) = (0u32, 0u32, 0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut old_io), OK);
        assert_eq!(ie_ctx_free(ctx, old_io), OK);
        for _ in 1..CYCLES {
            assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
            assert_eq!(ie_ctx_free(ctx, io), OK);
        }
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        assert_eq!(
            ie_ctx_map(ctx, old_io, 0x10_0000, 0x4000_0000, 0x1000, 3),
            not_found,
            "the first cycle's IOASID ({old_io:#x}) maps into the new one ({io:#x})"
        );
        assert_eq!(ie_ctx_free(ctx, old_io), not_found);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, true, &mut old_dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, old_dev), OK);
        for _ in 1..CYCLES {
            assert_eq!(ie_ctx_bind(ctx, 0, 0x20, true, &mut dev), OK);
            assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        }
        assert_eq!(ie_ctx_bind(ctx, 0, 0x28, true, &mut dev), OK);
        assert_eq!(
            ie_ctx_attach(ctx, old_dev, io, null_mut()),
            not_found,
            "the first cycle's device ({old_dev:#x}) attaches the new one ({dev:#x})"
        );
        assert_eq!(ie_ctx_unbind(ctx, old_dev), not_found);
        // The live handles work as ever.
        assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        assert_eq!(ie_ctx_free(ctx, io), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A slot emptied under its last generation is retired: never handed out again, counted by
/// `ie_ctx_retired_slots`, and its last handles stay refused (the generation does not start
/// over at 0, where they would name the slot's next objects).
#[test]
fn a_slot_at_its_last_generation_is_retired() {
    use super::ioasid::{
        ctx_obj, ie_ctx_alloc, ie_ctx_bind, ie_ctx_free, ie_ctx_map, ie_ctx_retired_slots,
        ie_ctx_unbind,
    };
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    use crate::ioasid::{MAX_GENERATION, MAX_IOASIDS};
    let not_found = IeStatus::NotFound as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        ctx_obj(ctx).unwrap().value.ctx.age_slots(MAX_GENERATION);
        let (mut last_io, mut last_dev) = (0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut last_io), OK);
        assert_eq!(ie_ctx_free(ctx, last_io), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, true, &mut last_dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, last_dev), OK);
        let (mut devices, mut ioasids) = (u32::MAX, u32::MAX);
        assert_eq!(ie_ctx_retired_slots(ctx, &mut devices, &mut ioasids), OK);
        assert_eq!((devices, ioasids), (1, 1));
        // Every other slot is handed out; the retired one is not.
        let mut ios = [0u32; MAX_IOASIDS];
        for io in &mut ios[1..] {
            assert_eq!(ie_ctx_alloc(ctx, 0, io), OK);
            assert_ne!(*io & 31, last_io & 31, "the retired slot");
        }
        let mut more = 0u32;
        assert_eq!(
            ie_ctx_alloc(ctx, 0, &mut more),
            IeStatus::NoSpace as i32,
            "the retired slot handed out as {more:#x}"
        );
        assert_eq!(
            ie_ctx_map(ctx, last_io, 0x10_0000, 0x4000_0000, 0x1000, 3),
            not_found
        );
        assert_eq!(ie_ctx_unbind(ctx, last_dev), not_found);
        for io in &ios[1..] {
            assert_eq!(ie_ctx_free(ctx, *io), OK);
        }
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A module built against an older header passes a shorter `IeDeviceHints`: the library
/// reads no more than its `size` says, and takes the fields beyond as their defaults (it read
/// `ats_queue_depth` from whatever followed the caller's struct: the struct had no size).
#[test]
fn device_hints_of_an_older_header_are_read_to_their_size() {
    use super::ioasid::{ctx_obj, ie_ctx_bind_direct, ie_ctx_bind_with, ie_ctx_unbind};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    /// The old struct (`IE_DEVICE_HINTS_SIZE_V1`, before `ats_queue_depth`) and what follows
    /// it in the caller's frame.
    #[repr(C)]
    struct Frame {
        size: u32,
        ats: bool,
        has_physical_function: bool,
        physical_function: u32,
        has_pasid_bits: bool,
        pasid_bits: u32,
        pri: bool,
        stall: bool,
        pri_pasid_required: bool,
        next: u32,
    }
    assert_eq!(
        core::mem::offset_of!(Frame, next),
        IeDeviceHintsSize::V1 as usize
    );
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let frame = Frame {
            size: IeDeviceHintsSize::V1 as u32,
            ats: true,
            has_physical_function: false,
            physical_function: 0,
            has_pasid_bits: true,
            pasid_bits: 8,
            pri: true,
            stall: false,
            pri_pasid_required: false,
            next: 0xaaaa_aaaa,
        };
        let old = core::ptr::addr_of!(frame).cast::<IeDeviceHints>();
        let c = &ctx_obj(ctx).unwrap().value.ctx;
        for direct in [false, true] {
            let mut dev = 0u32;
            let st = if direct {
                ie_ctx_bind_direct(ctx, 0, 0x20, false, old, null(), 0, &mut dev)
            } else {
                ie_ctx_bind_with(ctx, 0, 0x20, false, old, &mut dev)
            };
            assert_eq!(st, OK);
            let hints = c.device_info(c.device_handle(dev)).unwrap().hints;
            assert_eq!(
                (hints.ats, hints.pasid_bits, hints.pri),
                (true, Some(8), true)
            );
            assert_eq!(
                hints.ats_queue_depth, 0,
                "read beyond the caller's struct (its next word is {:#x})",
                frame.next
            );
            assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        }
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// `IeDeviceHints.size` below the first versioned struct's is `IE_STATUS_INVALID_ARGUMENT`
/// (0 included: a caller that never set it); one above the library's is accepted while the
/// bytes beyond the library's struct are zero, else `IE_STATUS_TOO_BIG` (a newer header's
/// field this library cannot honour), as is a size above 4096. Nothing is bound after a
/// refusal.
#[test]
fn device_hints_of_a_wrong_size_are_refused() {
    use super::ioasid::{ctx_obj, ie_ctx_bind_direct, ie_ctx_bind_with, ie_ctx_unbind};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    /// A newer header's struct: the library's and one more field.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Newer {
        hints: IeDeviceHints,
        more: u32,
    }
    let current = IeDeviceHintsSize::V3 as u32;
    let invalid = IeStatus::InvalidArgument as i32;
    let too_big = IeStatus::TooBig as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs (each
    // struct at least as long as its `size`, but the one above 4096, which is refused
    // unread) and writable outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let c = &ctx_obj(ctx).unwrap().value.ctx;
        let mut newer = Newer {
            hints: IeDeviceHints {
                ats: true,
                ats_queue_depth: 4,
                ..IeDeviceHints::default()
            },
            more: 0,
        };
        let p = core::ptr::addr_of!(newer).cast::<IeDeviceHints>();
        let bind = |newer: &mut Newer, size: u32, more: u32| {
            newer.hints.size = size;
            newer.more = more;
            let (mut a, mut b) = (u32::MAX, u32::MAX);
            let with = ie_ctx_bind_with(ctx, 0, 0x20, false, p, &mut a);
            let direct = ie_ctx_bind_direct(ctx, 0, 0x28, false, p, null(), 0, &mut b);
            (with, direct, a, b)
        };
        let v1 = IeDeviceHintsSize::V1 as u32;
        for size in [0, 4, v1 - 4, v1 - 1] {
            let (with, direct, ..) = bind(&mut newer, size, 0);
            assert_eq!((with, direct), (invalid, invalid), "size {size}");
        }
        for (size, more) in [(current + 4, 1), (current + 1, 0xff), (4097, 0)] {
            let (with, direct, ..) = bind(&mut newer, size, more);
            assert_eq!((with, direct), (too_big, too_big), "size {size}");
        }
        // Nothing was bound: both devices bind now, a newer struct's zero tail accepted.
        let (with, direct, a, b) = bind(&mut newer, current + 4, 0);
        assert_eq!((with, direct), (OK, OK));
        for dev in [a, b] {
            let hints = c.device_info(c.device_handle(dev)).unwrap().hints;
            assert_eq!((hints.ats, hints.ats_queue_depth), (true, 4));
            assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        }
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_unit_destroy` of an SMMUv3 unit whose CR0ACK never acknowledges the queues' disable:
/// the unit may still read its queues and stream table, so it keeps (leaks) their pages, and
/// the call says so with `IE_STATUS_LEAKED`, the unit destroyed all the same (it returned
/// `IE_STATUS_OK`, the pages gone without a word).
#[test]
fn an_smmu_unit_destroy_that_leaks_says_so() {
    use super::sim::{ie_sim_arena_live_pages, ie_sim_model_destroy};
    use super::unit::{ie_unit_destroy, ie_unit_disable};
    use crate::sim::smmuv3::Injection;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles.
    unsafe {
        let sim = Sim::Smmu(IeSimSmmuConfig {
            cohacc: true,
            ..IeSimSmmuConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        assert_eq!(ie_unit_disable(unit), OK);
        smmu_model(model).inject(Injection::Cr0AckStuck);
        assert_eq!(
            ie_unit_destroy(unit),
            IeStatus::Leaked as i32,
            "CR0ACK never acknowledged the queues' disable"
        );
        assert!(
            ie_sim_arena_live_pages(arena) > before,
            "the queues and stream table are kept"
        );
        smmu_model(model).clear_injections();
        assert_eq!(ie_sim_model_destroy(model), OK);
    }
}

/// `ie_unit_destroy` of an SMMUv3 unit that still holds a domain (a context destroy whose
/// detach never completed left it allocated): a drop frees no domain's page tables, and the
/// call says so with `IE_STATUS_LEAKED` (it returned `IE_STATUS_OK`).
#[test]
fn an_smmu_unit_destroy_that_keeps_a_domain_says_so() {
    use super::ioasid::{
        ie_ctx_alloc, ie_ctx_attach, ie_ctx_bind, ie_ctx_destroy, ie_ctx_map, ie_registry_destroy,
    };
    use super::sim::ie_sim_model_destroy;
    use super::tests::registry_and_ctx;
    use super::unit::{ie_unit_destroy, ie_unit_disable};
    use crate::sim::smmuv3::Injection;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles and writable outputs.
    unsafe {
        let sim = Sim::Smmu(IeSimSmmuConfig {
            cohacc: true,
            ..IeSimSmmuConfig::default()
        });
        let (model, unit, _) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let (mut io, mut dev) = (0u32, 0u32);
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, &mut dev), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, io, null_mut()), OK);
        assert_eq!(ie_ctx_map(ctx, io, 0x10_0000, 0x4000_0000, 0x2000, 3), OK);
        smmu_model(model).inject(Injection::SyncStall);
        assert_eq!(ie_ctx_destroy(ctx), IeStatus::Leaked as i32);
        smmu_model(model).clear_injections();
        assert_eq!(ie_registry_destroy(registry), OK);
        assert_eq!(ie_unit_disable(unit), OK);
        assert_eq!(
            ie_unit_destroy(unit),
            IeStatus::Leaked as i32,
            "the unit held the context's domain"
        );
        assert_eq!(ie_sim_model_destroy(model), OK);
    }
}

/// `IeDeviceHints.ats_permission`: firmware's `IE_ATS_PERMISSION_FORBIDDEN` with `ats` makes
/// the attach `IE_STATUS_NOT_PERMITTED` (nothing attached); without `ats` the device attaches;
/// a value that is no `IeAtsPermission` is refused at bind.
#[test]
fn device_hints_ats_forbidden_by_firmware_refuse_the_attach() {
    use super::firmware::IeAtsPermission;
    use super::ioasid::{ctx_obj, ie_ctx_alloc, ie_ctx_attach, ie_ctx_bind_with, ie_ctx_unbind};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    use crate::iommu::AtsPermission;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs.
    unsafe {
        let sim = Sim::Vtd(IeSimVtdConfig {
            snoop_control: true,
            ..IeSimVtdConfig::default()
        });
        let (model, unit, before) = sim_unit(arena, &env, sim);
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let mut io = 0u32;
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        let mut hints = IeDeviceHints {
            size: IeDeviceHintsSize::V3 as u32,
            ats: true,
            ats_permission: IeAtsPermission::Forbidden as u32,
            ..IeDeviceHints::default()
        };
        let mut dev = 0u32;
        assert_eq!(ie_ctx_bind_with(ctx, 0, 0x20, false, &hints, &mut dev), OK);
        assert_eq!(
            ie_ctx_attach(ctx, dev, io, null_mut()),
            IeStatus::NotPermitted as i32
        );
        let c = &ctx_obj(ctx).unwrap().value.ctx;
        let info = c.device_info(c.device_handle(dev)).unwrap();
        assert_eq!(info.hints.ats_permission, AtsPermission::Forbidden);
        assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        hints.ats = false;
        assert_eq!(ie_ctx_bind_with(ctx, 0, 0x20, false, &hints, &mut dev), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, io, null_mut()), OK);
        assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        hints.ats_permission = 4;
        assert_eq!(
            ie_ctx_bind_with(ctx, 0, 0x28, false, &hints, &mut dev),
            IeStatus::InvalidArgument as i32
        );
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// A dirty bitmap that is not 8-byte aligned cannot be made a `&mut [u64]`: building the
/// slice was undefined behaviour (a debug build's precondition check aborted the process from
/// inside `extern "C"`). Refused with `INVALID_ARGUMENT`, nothing written; the same call with
/// the aligned bitmap succeeds.
#[test]
fn a_misaligned_dirty_bitmap_is_refused() {
    use super::dirty::ie_ctx_get_dirty_bitmap;
    use super::ioasid::{ie_ctx_alloc, ie_ctx_free, IeIoasidFlag};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    const INVALID: i32 = IeStatus::InvalidArgument as i32;
    const PAGE: u64 = 0x1000;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles; every pointer passed is
    // readable and writable for what the call may touch (one word past a misaligned start
    // stays inside `words`).
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let mut io = 0u32;
        let dirty = IeIoasidFlag::DirtyTracking as u32;
        assert_eq!(ie_ctx_alloc(ctx, dirty, &mut io), OK);
        let mut words = [0u64; 2];
        for misalign in [4usize, 2, 1] {
            let bitmap = words
                .as_mut_ptr()
                .cast::<u8>()
                .wrapping_add(misalign)
                .cast::<u64>();
            let st = ie_ctx_get_dirty_bitmap(ctx, io, 0, 64 * PAGE, PAGE, bitmap, 1, 0);
            assert_eq!(st, INVALID, "bitmap misaligned by {misalign}");
        }
        assert_eq!(words, [0; 2]);
        let aligned = words.as_mut_ptr();
        let st = ie_ctx_get_dirty_bitmap(ctx, io, 0, 64 * PAGE, PAGE, aligned, 1, 0);
        assert_eq!(st, OK);
        assert_eq!(ie_ctx_free(ctx, io), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// Device hints that are not 4-byte aligned cannot be read as an `IeDeviceHints` (reading
/// its `size` was undefined behaviour; a debug build's precondition check aborted from inside
/// `extern "C"`). `ie_ctx_bind_with` and `ie_ctx_bind_direct` refuse them with
/// `INVALID_ARGUMENT`, nothing bound; the same bytes aligned bind.
#[test]
fn misaligned_device_hints_are_refused() {
    use super::ioasid::{ie_ctx_bind_direct, ie_ctx_bind_with, ie_ctx_unbind};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    const INVALID: i32 = IeStatus::InvalidArgument as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles; each hints pointer is
    // readable for its `size` bytes (inside `buf`), the outputs writable.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let hints = IeDeviceHints {
            size: IeDeviceHintsSize::V2 as u32,
            ats: true,
            ats_queue_depth: 4,
            ..IeDeviceHints::default()
        };
        let mut buf = [0u64; 1 + size_of::<IeDeviceHints>() / 8 + 1];
        for misalign in [1usize, 2, 3] {
            let p = buf.as_mut_ptr().cast::<u8>().wrapping_add(misalign);
            p.cast::<IeDeviceHints>().write_unaligned(hints);
            let p = p.cast::<IeDeviceHints>().cast_const();
            let (mut a, mut b) = (u32::MAX, u32::MAX);
            let with = ie_ctx_bind_with(ctx, 0, 0x20, false, p, &mut a);
            let direct = ie_ctx_bind_direct(ctx, 0, 0x28, false, p, null(), 0, &mut b);
            assert_eq!(
                (with, direct),
                (INVALID, INVALID),
                "misaligned by {misalign}"
            );
            assert_eq!((a, b), (u32::MAX, u32::MAX), "nothing bound");
        }
        let mut a = u32::MAX;
        assert_eq!(ie_ctx_bind_with(ctx, 0, 0x20, false, &hints, &mut a), OK);
        assert_eq!(ie_ctx_unbind(ctx, a), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// Direct regions that are not 8-byte aligned cannot be made a `&[IeDirectRegion]`
/// (undefined behaviour; a debug build's precondition check aborted from inside
/// `extern "C"`). `ie_ctx_bind_direct` refuses them with `INVALID_ARGUMENT`, nothing bound;
/// the same region aligned binds.
#[test]
fn misaligned_direct_regions_are_refused() {
    use super::ioasid::{ie_ctx_bind_direct, ie_ctx_unbind, IeDirectRegion};
    use super::tests::{destroy_ctx_and_registry, registry_and_ctx};
    const INVALID: i32 = IeStatus::InvalidArgument as i32;
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles; each regions pointer is
    // readable for one region (inside `buf`), the outputs writable.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let region = IeDirectRegion {
            start: 0x10_0000,
            length: 0x1000,
            ..IeDirectRegion::default()
        };
        let mut buf = [0u64; 1 + size_of::<IeDirectRegion>() / 8 + 1];
        for misalign in [4usize, 2, 1] {
            let p = buf.as_mut_ptr().cast::<u8>().wrapping_add(misalign);
            p.cast::<IeDirectRegion>().write_unaligned(region);
            let p = p.cast::<IeDirectRegion>().cast_const();
            let mut b = u32::MAX;
            let st = ie_ctx_bind_direct(ctx, 0, 0x28, false, null(), p, 1, &mut b);
            assert_eq!((st, b), (INVALID, u32::MAX), "misaligned by {misalign}");
        }
        let mut b = u32::MAX;
        assert_eq!(
            ie_ctx_bind_direct(ctx, 0, 0x28, false, null(), &region, 1, &mut b),
            OK
        );
        assert_eq!(ie_ctx_unbind(ctx, b), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}
