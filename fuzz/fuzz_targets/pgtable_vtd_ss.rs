//! libFuzzer target `pgtable_vtd_ss`: the body is `iommu_engine::fuzzing::pgtable::vtd_ss`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/pgtable_vtd_ss/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::pgtable::vtd_ss(data));
