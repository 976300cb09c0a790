//! libFuzzer target `queue_amdvi`: the body is `iommu_engine::fuzzing::queue_amdvi::amdvi`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/queue_amdvi/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::queue_amdvi::amdvi(data));
