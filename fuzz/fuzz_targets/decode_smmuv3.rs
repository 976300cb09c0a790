//! libFuzzer target `decode_smmuv3`: the body is `iommu_engine::fuzzing::decode::smmuv3`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/decode_smmuv3/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::decode::smmuv3(data));
