//! Replays the fuzz corpus on stable: every file under `fuzz/corpus/<target>/` (seeds and every
//! crash the fuzzers ever found, kept as regression cases) runs through the same function the
//! libFuzzer target calls, plus a fixed set of pseudo-random inputs per target so that the
//! test has teeth even where the corpus is small.

use std::fs;
use std::path::Path;

use iommu_engine::fuzzing::TARGETS;

/// Pseudo-random inputs per target (a fixed xorshift stream: the same inputs on every run).
const GENERATED: usize = 48;

fn corpus_files(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_corpus() {
    for (name, _) in TARGETS {
        assert!(
            !corpus_files(name).is_empty(),
            "fuzz/corpus/{name} is empty: check in seeds"
        );
    }
}

#[test]
fn corpus_replays_without_findings() {
    let mut runs = 0;
    for (name, body) in TARGETS {
        for path in corpus_files(name) {
            let data = fs::read(&path).expect("read corpus file");
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{name}: {} fails", path.display());
            runs += 1;
        }
    }
    assert!(runs >= TARGETS.len());
}

#[test]
fn generated_inputs_run_clean() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (name, body) in TARGETS {
        for i in 0..GENERATED {
            let len = 16 + i * 13;
            let data: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let r = std::panic::catch_unwind(|| body(&data));
            assert!(r.is_ok(), "{name}: generated input {i} fails: {data:02x?}");
        }
    }
}
