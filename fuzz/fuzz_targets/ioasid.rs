//! libFuzzer target `ioasid`: the body is `iommu_engine::fuzzing::ioasid::ioasid`, which
//! `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/ioasid/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::ioasid::ioasid(data));
