//! libFuzzer target `pgtable_amdvi_v2`: the body is `iommu_engine::fuzzing::pgtable::amdvi_v2`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/pgtable_amdvi_v2/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::pgtable::amdvi_v2(data));
