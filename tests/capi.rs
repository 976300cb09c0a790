//! The C ABI from C: builds the host static library (`capi/`, features `sim`), compiles the C
//! programs in `tests/c/` against `include/iommu_engine.h` with `gcc -Wall -Wextra -Werror`,
//! runs them and requires exit status 0 and their `N passed, 0 failed` line.
//!
//! Without gcc the test reports that it was skipped and why, unless `CI=true`, where it fails.
//! `.ci/run` also checks that the checked-in header is what cbindgen generates.

use std::path::{Path, PathBuf};
use std::process::Command;

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Builds `libiommu_engine.a` for the host with the models.
fn build_staticlib() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let target_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("capi");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .args(["build", "--quiet", "--features", "sim", "--manifest-path"])
        .arg(root.join("capi/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Host-only flags (coverage, -D warnings) stay out of this separate build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .expect("run cargo");
    assert!(
        out.status.success(),
        "building capi/ failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    target_dir.join("debug/libiommu_engine.a")
}

fn run_c_program(name: &str) {
    if Command::new("gcc").arg("--version").output().is_err() {
        assert!(!in_ci(), "gcc is missing under CI=true");
        eprintln!("SKIPPED: C test {name}: gcc not found (apt-get install gcc)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = build_staticlib();
    let exe = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let out = Command::new("gcc")
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-O1",
            "-DIOMMU_ENGINE_SIM",
            "-I",
        ])
        .arg(root.join("include"))
        .arg(root.join("tests/c").join(format!("{name}.c")))
        .arg(&lib)
        .args(["-lpthread", "-ldl", "-lm", "-o"])
        .arg(&exe)
        .output()
        .expect("run gcc");
    assert!(
        out.status.success(),
        "gcc failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = Command::new(&exe).output().expect("run the C program");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}{stderr}");
    assert!(
        run.status.success(),
        "{name} failed ({}):\n{stdout}{stderr}",
        run.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.ends_with(" 0 failed") && !last.starts_with("0 passed"),
        "{name}: unexpected summary {last:?}"
    );
}

#[test]
fn c_seed_flow() {
    run_c_program("seed_flow");
}

#[test]
fn c_error_paths() {
    run_c_program("error_paths");
}

#[test]
fn c_iommufd17() {
    run_c_program("iommufd17");
}
