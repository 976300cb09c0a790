//! In-place construction of the unit (Arm IHI 0070 G.b §6.3.1, ID registers read at
//! construction): built in an uninitialised slot, used, dropped there; a refused configuration
//! leaves the slot uninitialised.

extern crate std;

use core::mem::MaybeUninit;
use core::ptr::NonNull;

use std::boxed::Box;

use super::*;

/// Built in place, enabled, disabled and dropped in place: every page comes back.
#[test]
fn init_in_place_builds_a_working_unit() {
    let m = model(IDR0, 0);
    let a = VecAllocator::default();
    let mut slot = Box::new(MaybeUninit::<Unit<'_>>::uninit());
    let ptr = NonNull::from(&mut *slot).cast::<Unit<'_>>();
    // SAFETY: the slot is ours, aligned, uninitialised and unshared.
    unsafe { SmmuUnit::init_in_place(ptr, &m, &a, &config()) }.unwrap();
    assert_eq!(a.live_pages(), 0, "nothing is allocated before enable");
    {
        // SAFETY: initialised above; the only reference while it lives.
        let u = unsafe { ptr.as_ref() };
        assert!(!u.is_enabled());
        u.enable().unwrap();
        assert!(u.is_enabled());
        assert!(a.live_pages() > 0);
        u.disable().unwrap();
    }
    // SAFETY: initialised and no longer referenced; dropped once.
    unsafe { ptr.as_ptr().drop_in_place() };
    assert_eq!(a.live_pages(), 0);
}

/// A configuration the unit cannot run is refused before anything is written.
#[test]
fn init_in_place_failure_leaves_the_slot_uninitialised() {
    // No AArch64 translation table format (IDR0.TTF 0).
    let m = model(0x3 | 0x10, 0);
    let a = VecAllocator::default();
    let mut slot = Box::new(MaybeUninit::<Unit<'_>>::uninit());
    let ptr = NonNull::from(&mut *slot).cast::<Unit<'_>>();
    // SAFETY: the slot is ours, aligned, uninitialised and unshared.
    let r = unsafe { SmmuUnit::init_in_place(ptr, &m, &a, &config()) };
    assert!(r.is_err());
    assert_eq!(a.live_pages(), 0);
}
