//! libFuzzer target `pgtable_arm_s2_4k`: the body is `iommu_engine::fuzzing::pgtable::arm_s2_4k`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/pgtable_arm_s2_4k/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::pgtable::arm_s2_4k(data));
