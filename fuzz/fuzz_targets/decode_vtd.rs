//! libFuzzer target `decode_vtd`: the body is `iommu_engine::fuzzing::decode::vtd`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/decode_vtd/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::decode::vtd(data));
