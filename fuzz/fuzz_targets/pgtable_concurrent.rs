//! libFuzzer target `pgtable_concurrent`: the body is `iommu_engine::fuzzing::pgtable::concurrent`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/pgtable_concurrent/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::pgtable::concurrent(data));
