//! Caller pointers that are not NULL but misaligned for their type: a Rust reference (or a
//! typed read or write) made from one is undefined behaviour even if never used. Every entry
//! point below took such a pointer with only a NULL check: an input struct (a unit's
//! configuration, the environment), an input array (a registry's units, the contexts a
//! dispatch hands faults to, a DMAR table's outputs), a required output scalar or struct, an
//! optional output, an in/out count and a handle. Each is refused with
//! `IE_STATUS_INVALID_ARGUMENT` before anything changes: the buffer keeps its bytes and the
//! state the call would have changed is as it was.

extern crate std;

use core::ptr::null_mut;

use super::fault::{ie_ctx_faults_overflowed, ie_ctx_read_faults, ie_registry_dispatch_faults};
use super::ioas::{ie_ctx_iova_ranges, ie_ctx_max_page_log2, IeIovaRange};
use super::ioasid::{
    ie_ctx_alloc, ie_ctx_alloc_pasid, ie_ctx_attach, ie_ctx_bind, ie_ctx_create, ie_ctx_free,
    ie_ctx_map, ie_ctx_retired_slots, ie_ctx_translate, ie_ctx_unbind, ie_ctx_unmap,
    ie_registry_create, ie_registry_destroy, IeCtx, IeRegistry,
};
use super::nested::{ie_ctx_invalidate_user, IeRefusedRequest};
use super::sim::{ie_sim_arena_live_pages, IeSimVtdConfig};
use super::status::IeStatus;
use super::tests::{arena, destroy_ctx_and_registry, registry_and_ctx, release_sim_unit};
use super::tests::{sim_unit, Sim};
use super::unit::{
    ie_unit_drain_faults, ie_unit_read_faults, ie_vtd_config_default, ie_vtd_create, IeFault,
    IeUnit, IeVtdConfig,
};

const OK: i32 = IeStatus::Ok as i32;
const INVALID: i32 = IeStatus::InvalidArgument as i32;

/// What an untouched buffer holds.
const FILL: u8 = 0xa5;

/// Bytes aligned to 16: one byte in is misaligned for every type the C ABI takes but `u8`.
#[repr(C, align(16))]
struct Buf([u8; 256]);

impl Buf {
    fn new() -> Self {
        Self([FILL; 256])
    }

    /// One byte in: misaligned for any `T` aligned to more than a byte.
    fn at<T>(&mut self) -> *mut T {
        self.0.as_mut_ptr().wrapping_add(1).cast()
    }

    /// [`Buf::at`], holding `v` (written unaligned): what a caller's misaligned struct holds.
    fn holding<T>(&mut self, v: T) -> *mut T {
        let p = self.at::<T>();
        // SAFETY: `p` is inside the buffer, with `size_of::<T>()` bytes after it (the types
        // passed are far smaller than 255 bytes).
        unsafe { p.write_unaligned(v) };
        p
    }

    /// Nothing was written.
    fn untouched(&self) -> bool {
        self.0.iter().all(|b| *b == FILL)
    }
}

/// Unit creation and registry creation: a misaligned input struct (the configuration, the
/// environment), a misaligned array of unit handles and a misaligned output handle are
/// refused, no page taken, no unit claimed (the aligned calls after them succeed).
#[test]
fn misaligned_creation_arguments_are_refused() {
    let (arena, env) = arena();
    // SAFETY: a live arena and its allocator, then live handles; every misaligned pointer is
    // inside a buffer with room for its type after it, every aligned one readable or writable.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let mut b = Buf::new();
        assert_eq!(ie_vtd_config_default(b.at()), INVALID, "output struct");
        assert!(b.untouched());

        // The unit's configuration and register window are the model's; only the pointer
        // under test is misaligned.
        let mut cfg = core::mem::MaybeUninit::<IeVtdConfig>::uninit();
        assert_eq!(ie_vtd_config_default(cfg.as_mut_ptr()), OK);
        let cfg = cfg.assume_init();
        let mut regs = core::mem::MaybeUninit::uninit();
        assert_eq!(super::sim::ie_sim_model_regs(model, regs.as_mut_ptr()), OK);
        let regs = regs.assume_init();
        let pages = ie_sim_arena_live_pages(arena);
        let mut u: *mut IeUnit = null_mut();
        let mut cb = Buf::new();
        let st = ie_vtd_create(&env, &regs, cb.holding(cfg), &mut u);
        assert_eq!((st, u), (INVALID, null_mut()), "input struct");
        let mut eb = Buf::new();
        let st = ie_vtd_create(eb.holding(env), &regs, &cfg, &mut u);
        assert_eq!((st, u), (INVALID, null_mut()), "input environment");
        let mut ob = Buf::new();
        let st = ie_vtd_create(&env, &regs, &cfg, ob.at());
        assert_eq!(st, INVALID, "output handle");
        assert!(ob.untouched());
        assert_eq!(ie_sim_arena_live_pages(arena), pages, "no page taken");

        let mut r: *mut IeRegistry = null_mut();
        let mut ub = Buf::new();
        let st = ie_registry_create(&env, ub.holding(unit), 1, 20, &mut r);
        assert_eq!((st, r), (INVALID, null_mut()), "input array");
        let mut rb = Buf::new();
        let units = [unit];
        let st = ie_registry_create(&env, units.as_ptr(), 1, 20, rb.at());
        assert_eq!(st, INVALID, "output handle");
        assert!(rb.untouched());
        assert_eq!(ie_sim_arena_live_pages(arena), pages, "no page taken");
        // The unit was not claimed by a registry that was refused.
        assert_eq!(ie_registry_create(&env, units.as_ptr(), 1, 20, &mut r), OK);
        let mut c: *mut IeCtx = null_mut();
        let mut xb = Buf::new();
        assert_eq!(ie_ctx_create(r, 4, xb.at()), INVALID, "output handle");
        assert!(xb.untouched());
        assert_eq!(ie_registry_destroy(r), OK, "no context holds the registry");
        assert_eq!(ie_registry_create(&env, units.as_ptr(), 1, 20, &mut r), OK);
        assert_eq!(ie_ctx_create(r, 4, &mut c), OK);
        destroy_ctx_and_registry(r, c);
        release_sim_unit(arena, model, unit, before);
    }
}

/// Context calls: a misaligned required output (a device handle, an IOASID, a PASID, an
/// address, a counter), optional output (an attach's reason, an unmap's count, a user
/// invalidation's count), in/out count, output array and handle are refused before the call
/// changes anything: nothing bound, allocated, attached or unmapped.
#[test]
fn misaligned_context_arguments_are_refused() {
    let (arena, env) = arena();
    // SAFETY: as in `misaligned_creation_arguments_are_refused`.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let (registry, ctx) = registry_and_ctx(&env, unit);
        let mut b = Buf::new();
        // A handle one byte into the context's page.
        let shifted = ctx.cast::<u8>().wrapping_add(1).cast::<IeCtx>();
        let mut io = u32::MAX;
        assert_eq!(ie_ctx_alloc(shifted, 0, &mut io), INVALID, "handle");
        assert_eq!(ie_ctx_alloc(ctx, 0, b.at()), INVALID, "output scalar");
        assert!(b.untouched());
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        let mut retired = [u32::MAX; 2];
        let st = ie_ctx_retired_slots(ctx, &mut retired[0], b.at());
        assert_eq!((st, retired[0]), (INVALID, u32::MAX), "optional output");
        assert!(b.untouched());

        // Nothing bound: the same device binds after.
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, b.at()), INVALID);
        assert!(b.untouched());
        let mut dev = u32::MAX;
        assert_eq!(ie_ctx_bind(ctx, 0, 0x20, false, &mut dev), OK);
        let mut other = u32::MAX;
        assert_ne!(
            ie_ctx_bind(ctx, 0, 0x20, false, &mut other),
            OK,
            "bound once"
        );

        // Nothing attached: the IOASID frees (an attached one is busy).
        assert_eq!(
            ie_ctx_attach(ctx, dev, io, b.at()),
            INVALID,
            "optional output"
        );
        assert!(b.untouched());
        assert_eq!(ie_ctx_free(ctx, io), OK, "nothing attached");
        assert_eq!(ie_ctx_alloc(ctx, 0, &mut io), OK);
        assert_eq!(ie_ctx_attach(ctx, dev, io, null_mut()), OK);

        // Nothing unmapped: the page still translates.
        assert_eq!(ie_ctx_map(ctx, io, 0x10_0000, 0x4000_0000, 0x1000, 3), OK);
        let st = ie_ctx_unmap(ctx, io, 0x10_0000, 0x1000, b.at());
        assert_eq!(st, INVALID, "optional output");
        assert!(b.untouched());
        let mut pa = 0u64;
        assert_eq!(ie_ctx_translate(ctx, io, 0x10_0000, &mut pa), OK);
        assert_eq!(pa, 0x4000_0000, "still mapped");
        assert_eq!(ie_ctx_translate(ctx, io, 0x10_0000, b.at()), INVALID);
        assert!(b.untouched());
        let st = ie_ctx_max_page_log2(ctx, io, b.at());
        assert_eq!(st, INVALID, "output scalar");
        assert!(b.untouched());
        assert_eq!(ie_ctx_faults_overflowed(ctx, b.at()), INVALID);
        assert!(b.untouched());
        assert_eq!(ie_ctx_alloc_pasid(ctx, b.at()), INVALID);
        assert!(b.untouched());

        // An in/out count and an output array.
        let mut num = 4u32;
        let st = ie_ctx_iova_ranges(ctx, io, b.at::<IeIovaRange>(), &mut num);
        assert_eq!((st, num), (INVALID, 4), "output array");
        assert!(b.untouched());
        let mut ranges = [IeIovaRange::default(); 4];
        let st = ie_ctx_iova_ranges(ctx, io, ranges.as_mut_ptr(), b.holding(4u32));
        assert_eq!(st, INVALID, "in/out count");
        let mut rb = Buf::new();
        let (mut n, mut count) = (0usize, u32::MAX);
        let st = ie_ctx_read_faults(ctx, rb.at(), 1, &mut count);
        assert_eq!((st, count), (INVALID, u32::MAX), "output array");
        assert!(rb.untouched());
        assert_eq!(ie_ctx_read_faults(ctx, null_mut(), 0, rb.at()), INVALID);
        assert!(rb.untouched());

        // Optional outputs of a guest invalidation: refused before the batch is looked at.
        let mut what = IeRefusedRequest {
            index: u32::MAX,
            why: u32::MAX,
            request: [0; 2],
        };
        let st = ie_ctx_invalidate_user(ctx, io, core::ptr::null(), 0, rb.at(), &mut what);
        assert_eq!((st, what.index), (INVALID, u32::MAX), "optional output");
        assert!(rb.untouched());
        let st = ie_ctx_invalidate_user(ctx, io, core::ptr::null(), 0, &mut n, rb.at());
        assert_eq!((st, n), (INVALID, 0), "optional output");
        assert!(rb.untouched());

        // A unit's fault records: an output array and an optional count.
        let mut fb = Buf::new();
        let st = ie_unit_read_faults(unit, fb.at::<IeFault>(), 1, &mut count);
        assert_eq!((st, count), (INVALID, u32::MAX), "output array");
        assert!(fb.untouched());
        assert_eq!(ie_unit_drain_faults(unit, 0, fb.at()), INVALID);
        assert!(fb.untouched());

        // The contexts a dispatch hands faults to: an input array of handles.
        let mut cb = Buf::new();
        let st = ie_registry_dispatch_faults(registry, 0, cb.holding(ctx), 1, &mut count);
        assert_eq!((st, count), (INVALID, u32::MAX), "input array");

        let mut unmapped = 0u64;
        assert_eq!(ie_ctx_unmap(ctx, io, 0x10_0000, 0x1000, &mut unmapped), OK);
        assert_eq!(unmapped, 0x1000);
        assert_eq!(super::ioasid::ie_ctx_detach(ctx, dev), OK);
        assert_eq!(ie_ctx_unbind(ctx, dev), OK);
        assert_eq!(ie_ctx_free(ctx, io), OK);
        destroy_ctx_and_registry(registry, ctx);
        release_sim_unit(arena, model, unit, before);
    }
}

/// The ACPI DMAR calls: a misaligned output struct, output array, count and scalar are
/// refused, nothing written.
#[test]
fn misaligned_dmar_outputs_are_refused() {
    use super::firmware::{ie_dmar_ats_permission, ie_dmar_reserved_regions, ie_dmar_unit_for};
    use super::ioasid::IeDirectRegion;
    use crate::firmware::testutil::{dmar, drhd, rmrr, scope};
    let t = dmar(
        47,
        0,
        &[
            drhd(1, 0, 0, 0xfed9_0000, &[]),
            rmrr(0, 0x7a00_0000, 0x7a0f_ffff, &[scope(1, 0, 0, 0, &[(2, 0)])]),
        ],
    );
    let (table, len, none) = (t.as_ptr(), t.len(), null_mut());
    let mut b = Buf::new();
    // SAFETY: `t` is readable; every misaligned pointer is inside `b` with room for its type
    // after it; the aligned ones are writable.
    unsafe {
        assert_eq!(
            ie_dmar_unit_for(table, len, 0, 0x10, None, none, b.at()),
            INVALID
        );
        assert!(b.untouched());
        let mut count = u32::MAX;
        let out = b.at::<IeDirectRegion>();
        let st = ie_dmar_reserved_regions(table, len, 0, 0x10, None, none, out, 1, &mut count);
        assert_eq!((st, count), (INVALID, u32::MAX), "output array");
        assert!(b.untouched());
        let st = ie_dmar_reserved_regions(table, len, 0, 0x10, None, none, null_mut(), 0, b.at());
        assert_eq!(st, INVALID, "output count");
        assert!(b.untouched());
        let st = ie_dmar_ats_permission(table, len, 0, 0x10, 0, 0, None, none, b.at());
        assert_eq!(st, INVALID, "output scalar");
        assert!(b.untouched());
        let mut regions = [IeDirectRegion::default(); 1];
        let st = ie_dmar_reserved_regions(
            table,
            len,
            0,
            0x10,
            None,
            none,
            regions.as_mut_ptr(),
            1,
            &mut count,
        );
        assert_eq!((st, count, regions[0].start), (OK, 1, 0x7a00_0000));
    }
}
