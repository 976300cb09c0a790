//! The IOASID layer's rules (issue 5) over the real drivers on the behavioural models: a
//! `VtdUnit` on a `sim::vtd::VtdModel` and an `SmmuUnit` on a `sim::smmuv3::SmmuModel`, with
//! the `sim::Arena` as the page allocator. Where `src/ioasid/tests.rs` checks the layer's
//! bookkeeping against a fake unit, these check what a device would see: every claim is read
//! back through a model's translation, caches included, and every page through the arena.

mod guest;
mod rig;

mod amdvi_matrix;
mod concurrency;
mod device_hints;
mod direct;
mod dirty;
mod fault_matrix;
mod faults;
mod granule;
mod iommufd17;
mod iopf;
mod iopf_smmu;
mod lifecycle;
mod nested;
mod nested_vtd;
mod pasid_grant;
mod reclaim;
mod seed;
mod supervisor;
mod two_units;
mod undo_matrix;
mod width;
