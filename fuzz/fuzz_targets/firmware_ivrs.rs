//! libFuzzer target `firmware_ivrs`: the body is `iommu_engine::fuzzing::firmware_ivrs::ivrs`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/firmware_ivrs/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::firmware_ivrs::ivrs(data));
