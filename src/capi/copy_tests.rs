//! The IOASID layer's refusals while an ie_ctx_copy() runs (`IoasidCtx::copy`), through the C
//! ABI: the status codes a C caller gets, and that the refused calls changed nothing. The copy
//! runs on a thread of its own, paused between its runs or before its undo, where it holds no
//! lock of the context (`ioasid::tests::copy_paused_at`: a pause compiled into test builds
//! only, so the C programs of `tests/c/` cannot reach these states; these tests call the C
//! ABI's functions from Rust instead).

extern crate std;

use core::ptr::null_mut;

use super::ioas::{ie_ctx_copy, ie_ctx_reserve_region};
use super::ioasid::{
    ie_ctx_alloc, ie_ctx_create, ie_ctx_destroy, ie_ctx_free, ie_ctx_map, ie_ctx_translate,
    ie_ctx_unmap, ie_registry_create, ie_registry_destroy, IeCtx, IeProt, IeRegistry,
};
use super::sim::IeSimVtdConfig;
use super::status::IeStatus;
use super::tests::{arena, release_sim_unit, sim_unit, Sim};
use crate::ioasid::tests::copy_paused_at;

const OK: i32 = IeStatus::Ok as i32;
const BUSY: i32 = IeStatus::Busy as i32;
const K4: u64 = 1 << 12;
const M2: u64 = 1 << 21;
/// The source range: two pages of two runs (their output addresses are not contiguous).
const SRC: u64 = 0x10_0000;
/// Where the copies go in `dst`.
const DST: u64 = M2;
const RW: u32 = IeProt::Read as u32 | IeProt::Write as u32;

/// The context handle for the copy's thread.
#[derive(Clone, Copy)]
struct Ctx(*mut IeCtx);
// SAFETY: a context handle may be used from any thread (`ie_ctx_copy`'s and the other calls'
// contract: the context takes its own lock).
unsafe impl Send for Ctx {}
// SAFETY: as above.
unsafe impl Sync for Ctx {}

impl Ctx {
    /// The handle (a method, so that a closure takes the whole `Ctx`, not its pointer field).
    fn get(self) -> *mut IeCtx {
        self.0
    }
}

/// A VT-d model's unit, a registry and a context over it, `src` mapping `SRC` (4 KiB to
/// `4 * M2`) and `SRC + 4 KiB` (to `8 * M2`), an empty `dst` and an empty `other`; `f` gets
/// the context and the three IOASIDs, and must leave them free to be freed. Then everything is
/// released, each call checked.
fn with_copy_ioasids(f: impl FnOnce(Ctx, u32, u32, u32)) {
    let (arena, env) = arena();
    let mut registry: *mut IeRegistry = null_mut();
    let mut ctx: *mut IeCtx = null_mut();
    let [mut src, mut dst, mut other] = [0u32; 3];
    // SAFETY: a live arena and its allocator, then live handles, readable inputs and writable
    // outputs throughout.
    unsafe {
        let (model, unit, before) = sim_unit(arena, &env, Sim::Vtd(IeSimVtdConfig::default()));
        let units = [unit];
        assert_eq!(
            ie_registry_create(&env, units.as_ptr(), 1, 20, &mut registry),
            OK
        );
        assert_eq!(ie_ctx_create(registry, 4, &mut ctx), OK);
        for id in [&mut src, &mut dst, &mut other] {
            assert_eq!(ie_ctx_alloc(ctx, 0, id), OK);
        }
        assert_eq!(ie_ctx_map(ctx, src, SRC, 4 * M2, K4, RW), OK);
        assert_eq!(ie_ctx_map(ctx, src, SRC + K4, 8 * M2, K4, RW), OK);
        f(Ctx(ctx), src, dst, other);
        for id in [src, dst, other] {
            assert_eq!(ie_ctx_free(ctx, id), OK);
        }
        assert_eq!(ie_ctx_destroy(ctx), OK);
        assert_eq!(ie_registry_destroy(registry), OK);
        release_sim_unit(arena, model, unit, before);
    }
}

/// `ie_ctx_translate` of `iova` in `ioasid`: the output address, or the status.
fn translate(ctx: Ctx, ioasid: u32, iova: u64) -> Result<u64, i32> {
    let mut pa = u64::MAX;
    // SAFETY: a live context handle; `pa` is writable.
    match unsafe { ie_ctx_translate(ctx.get(), ioasid, iova, &mut pa) } {
        OK => Ok(pa),
        st => Err(st),
    }
}

/// Between the two runs of a copy of `src`'s two pages to `dst[DST]` (the first mapped, the
/// second not yet), the calls that touch the copy's destination range, read its source from
/// it, free an IOASID it holds or reserve its range are refused with the statuses their docs
/// name (`IE_STATUS_BUSY`, `IE_STATUS_RESERVED` for the reservation), and change nothing;
/// calls beside the range go through. Once the copy returns, the refused calls go through.
#[test]
fn calls_into_a_running_copy_s_ranges_are_refused_through_the_c_abi() {
    with_copy_ioasids(|ctx, src, dst, other| {
        let (copied, answers) = copy_paused_at(
            "between runs",
            // SAFETY: a live context handle.
            move || unsafe { ie_ctx_copy(ctx.get(), src, SRC, dst, DST, 2 * K4) },
            // SAFETY: a live context handle; `unmapped` is writable. No assertion here (the
            // copy would be left waiting).
            || unsafe {
                let mut unmapped = [u64::MAX; 3];
                let statuses = [
                    // The copy's second page, not mapped yet.
                    ie_ctx_map(ctx.get(), dst, DST + K4, 12 * M2, K4, RW),
                    // Its first page, mapped by the copy.
                    ie_ctx_unmap(ctx.get(), dst, DST, K4, &mut unmapped[0]),
                    // UNMAP_ALL of `dst`.
                    ie_ctx_unmap(ctx.get(), dst, 0, u64::MAX, &mut unmapped[1]),
                    // Another copy into the copy's range.
                    ie_ctx_copy(ctx.get(), src, SRC + K4, dst, DST + K4, K4),
                    // A copy from the range the copy is filling (its undo may yet remove it).
                    ie_ctx_copy(ctx.get(), dst, DST, other, DST, K4),
                    // The IOASIDs it holds.
                    ie_ctx_free(ctx.get(), src),
                    ie_ctx_free(ctx.get(), dst),
                    // A reserved region over the copy's second page.
                    ie_ctx_reserve_region(ctx.get(), DST + K4, K4),
                    // Beside the copy's range in `dst`: not refused.
                    ie_ctx_map(ctx.get(), dst, DST + 2 * K4, 16 * M2, K4, RW),
                    ie_ctx_unmap(ctx.get(), dst, DST + 2 * K4, K4, &mut unmapped[2]),
                ];
                (statuses, unmapped)
            },
        );
        let (statuses, unmapped) = answers;
        let reserved = IeStatus::Reserved as i32;
        assert_eq!(
            statuses,
            [BUSY, BUSY, BUSY, BUSY, BUSY, BUSY, BUSY, reserved, OK, OK],
            "statuses while the copy ran (map, unmap, UNMAP_ALL, copy into, copy from, free src, \
             free dst, reserve, map beside, unmap beside)"
        );
        // A refused unmap writes 0 bytes (the count is written after every return); the
        // unmap beside the range found the map's page.
        assert_eq!(unmapped, [0, 0, K4]);
        assert_eq!(copied, OK);
        // The copy's pages are where it put them, the refused map's page is not, `other`
        // got nothing, and no region was reserved (`other` maps the range it named).
        assert_eq!(translate(ctx, dst, DST), Ok(4 * M2));
        assert_eq!(translate(ctx, dst, DST + K4), Ok(8 * M2));
        assert_eq!(
            translate(ctx, dst, DST + 2 * K4),
            Err(IeStatus::NotFound as i32)
        );
        assert_eq!(translate(ctx, other, DST), Err(IeStatus::NotFound as i32));
        // SAFETY: a live context handle; `n` is writable.
        unsafe {
            assert_eq!(ie_ctx_map(ctx.get(), other, DST + K4, 12 * M2, K4, RW), OK);
            let mut n = 0;
            assert_eq!(ie_ctx_unmap(ctx.get(), other, 0, u64::MAX, &mut n), OK);
            assert_eq!(n, K4);
            // The copy is over: its range is anybody's again.
            assert_eq!(ie_ctx_copy(ctx.get(), dst, DST, other, DST, 2 * K4), OK);
            assert_eq!(ie_ctx_unmap(ctx.get(), dst, 0, u64::MAX, &mut n), OK);
            assert_eq!(n, 2 * K4);
            assert_eq!(ie_ctx_unmap(ctx.get(), other, 0, u64::MAX, &mut n), OK);
            assert_eq!(n, 2 * K4);
        }
    });
}

/// A copy whose second run `dst` refuses (it maps the page already: `IE_STATUS_EXISTS`) is
/// paused before its undo of the first run: it still holds both IOASIDs and its range, so
/// their frees and a map into the range are refused (`IE_STATUS_BUSY`); afterwards the undo
/// removed only the copy's run.
#[test]
fn calls_into_a_copy_s_undo_are_refused_through_the_c_abi() {
    with_copy_ioasids(|ctx, src, dst, _| {
        // SAFETY: a live context handle.
        let mapped = unsafe { ie_ctx_map(ctx.get(), dst, DST + K4, 12 * M2, K4, RW) };
        assert_eq!(mapped, OK);
        let (copied, statuses) = copy_paused_at(
            "undo",
            // SAFETY: a live context handle.
            move || unsafe { ie_ctx_copy(ctx.get(), src, SRC, dst, DST, 2 * K4) },
            // SAFETY: a live context handle. No assertion here.
            || unsafe {
                [
                    ie_ctx_free(ctx.get(), src),
                    ie_ctx_free(ctx.get(), dst),
                    ie_ctx_unmap(ctx.get(), dst, DST, K4, null_mut()),
                    ie_ctx_map(ctx.get(), dst, DST, 16 * M2, K4, RW),
                ]
            },
        );
        assert_eq!(
            statuses, [BUSY; 4],
            "statuses before the copy's undo (free src, free dst, unmap, map)"
        );
        assert_eq!(copied, IeStatus::Exists as i32);
        assert_eq!(translate(ctx, dst, DST), Err(IeStatus::NotFound as i32));
        assert_eq!(translate(ctx, dst, DST + K4), Ok(12 * M2));
        // SAFETY: a live context handle.
        let unmapped = unsafe { ie_ctx_unmap(ctx.get(), dst, DST + K4, K4, null_mut()) };
        assert_eq!(unmapped, OK);
    });
}
