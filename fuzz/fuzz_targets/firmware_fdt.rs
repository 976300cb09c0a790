//! libFuzzer target `firmware_fdt`: the body is `iommu_engine::fuzzing::firmware_fdt::fdt`,
//! which `tests/fuzz_corpus.rs` also runs over `fuzz/corpus/firmware_fdt/` on stable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| iommu_engine::fuzzing::firmware_fdt::fdt(data));
