//! libFuzzer target `queue_vtd`: the body is `iommu_engine::fuzzing::queue::vtd`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/queue_vtd/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::queue::vtd(data));
