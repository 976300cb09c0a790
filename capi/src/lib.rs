//! `libiommu_engine.a`: iommu-engine's C ABI as a static library (declarations in
//! `include/iommu_engine.h`). Every `ie_*` symbol comes from `iommu_engine::capi`.
//!
//! Built with `panic = "abort"`. For bare-metal targets the library carries its own panic
//! handler (a spin loop: the crate's code has no reachable panic, so this is a backstop, and a
//! kernel that links a second Rust static library must keep only one). The hosted build (feature
//! `std`, implied by `sim`) uses std's.

#![no_std]

#[cfg(feature = "std")]
extern crate std;

pub use iommu_engine::capi::*;

#[cfg(not(feature = "std"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
