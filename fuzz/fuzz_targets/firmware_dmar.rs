//! libFuzzer target `firmware_dmar`: the body is `iommu_engine::fuzzing::firmware::dmar`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/firmware_dmar/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::firmware::dmar(data));
