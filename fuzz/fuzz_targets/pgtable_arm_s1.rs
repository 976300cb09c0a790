//! libFuzzer target `pgtable_arm_s1`: the body is `iommu_engine::fuzzing::pgtable::arm_s1`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/pgtable_arm_s1/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::pgtable::arm_s1(data));
