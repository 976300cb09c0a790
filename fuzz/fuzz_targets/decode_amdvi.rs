//! libFuzzer target `decode_amdvi`: the body is `iommu_engine::fuzzing::decode_amdvi::amdvi`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/decode_amdvi/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::decode_amdvi::amdvi(data));
