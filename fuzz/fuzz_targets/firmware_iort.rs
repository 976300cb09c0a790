//! libFuzzer target `firmware_iort`: the body is `iommu_engine::fuzzing::firmware_iort::iort`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/firmware_iort/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::firmware_iort::iort(data));
