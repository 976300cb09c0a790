//! The C ABI linked into a real Linux kernel: builds `capi/linux/` (`iommu_engine_edu.ko`, the
//! crate's static library inside an out-of-tree module) against Debian's kernel headers once,
//! packs an initramfs (busybox, the module, an init script), boots Debian's kernel under QEMU q35
//! with `intel-iommu` and QEMU's `edu` device and `intel_iommu=off` (Linux leaves the unit to
//! the module), and checks the module's result lines in the kernel log. One test per row: legacy
//! and scalable mode, snoop control on and off, caching mode on.
//!
//! Without the pieces (QEMU, a kernel image with matching headers, gcc, make, busybox, nightly
//! Rust with rust-src) the tests report that they were skipped and pass, unless `CI=true`, where
//! they fail. `.ci/install-linux.sh` installs them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

/// Wall-clock limit for one boot (about 6 s under TCG on an idle machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(150);

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

fn notice(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What the module's build and boot need.
struct Pieces {
    kernel: PathBuf,
    kdir: PathBuf,
    busybox: PathBuf,
}

fn tool_runs(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Debian kernel image with headers of the same release, and the tools.
fn find_pieces(need_qemu: bool) -> Result<Pieces, String> {
    for (prog, arg) in [
        ("gcc", "--version"),
        ("make", "--version"),
        ("ld", "--version"),
    ] {
        if !tool_runs(prog, arg) {
            return Err(format!("{prog} not found"));
        }
    }
    if !tool_runs("cargo", "+nightly") && !tool_runs("rustc", "+nightly") {
        return Err("no nightly Rust toolchain (-Zbuild-std)".into());
    }
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .map_err(|e| format!("rustc +nightly: {e}"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        return Err("nightly has no rust-src component".into());
    }
    if need_qemu && !tool_runs("qemu-system-x86_64", "--version") {
        return Err("qemu-system-x86_64 not found".into());
    }
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        return Err("/bin/busybox not found (busybox-static)".into());
    }
    let mut releases: Vec<String> = std::fs::read_dir("/boot")
        .map_err(|e| format!("/boot: {e}"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("vmlinuz-"))
                .map(str::to_owned)
        })
        .filter(|r| Path::new(&format!("/usr/src/linux-headers-{r}/Makefile")).is_file())
        .collect();
    releases.sort();
    let release = releases.pop().ok_or(
        "no /boot/vmlinuz-R with /usr/src/linux-headers-R (linux-image-amd64, linux-headers-amd64)",
    )?;
    Ok(Pieces {
        kernel: PathBuf::from(format!("/boot/vmlinuz-{release}")),
        kdir: PathBuf::from(format!("/usr/src/linux-headers-{release}")),
        busybox,
    })
}

/// Where the module build puts its outputs.
fn out_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-module")
}

/// Builds the module once (`capi/linux/build.sh`); its log on failure.
fn build(kdir: &Path) -> Result<PathBuf, String> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let start = Instant::now();
            let out = Command::new("bash")
                .arg(root().join("capi/linux/build.sh"))
                .arg(kdir)
                .current_dir(root())
                .env("OUT", out_dir())
                // The outer cargo's flags and toolchain are not the module's.
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("CARGO_BUILD_TARGET")
                .env_remove("RUSTUP_TOOLCHAIN")
                .env_remove("CARGO")
                .env_remove("RUSTC")
                .output()
                .map_err(|e| format!("cannot run capi/linux/build.sh: {e}"))?;
            let log = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            if !out.status.success() {
                return Err(format!(
                    "capi/linux/build.sh failed ({}):\n{log}",
                    out.status
                ));
            }
            notice(&format!(
                "linux module built in {:.0} s:\n{log}",
                start.elapsed().as_secs_f64()
            ));
            Ok(out_dir().join("module/iommu_engine_edu.ko"))
        })
        .clone()
}

/// One entry of a `newc` cpio archive (the initramfs format the kernel unpacks).
fn cpio_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let header = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
        0,
        0,
        1,
        0,
        data.len(),
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() + 1,
        0
    );
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(data);
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

/// The init script: load the module with the row's parameters (from the kernel command line,
/// which the kernel hands to init as environment variables), print its lines, power off.
const INIT: &str = "#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox insmod /iommu_engine_edu.ko scalable=$ie_scalable expect_snoop=$ie_snoop expect_cm=$ie_cm
echo \"insmod exit status $?\"
/bin/busybox dmesg | /bin/busybox grep -E 'ie_edu|iommu_engine|DMAR|BUG|Oops|WARNING|Call Trace|RIP:'
/bin/busybox poweroff -f
";

/// The initramfs, built once next to the module.
fn initramfs(ko: &Path, busybox: &Path) -> Result<PathBuf, String> {
    static PACKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PACKED
        .get_or_init(|| {
            let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
            let mut cpio = Vec::new();
            cpio_entry(&mut cpio, 1, "bin", 0o040755, (0, 0), &[]);
            cpio_entry(&mut cpio, 2, "dev", 0o040755, (0, 0), &[]);
            cpio_entry(&mut cpio, 3, "proc", 0o040755, (0, 0), &[]);
            cpio_entry(&mut cpio, 4, "dev/console", 0o020600, (5, 1), &[]);
            cpio_entry(
                &mut cpio,
                5,
                "bin/busybox",
                0o100755,
                (0, 0),
                &read(busybox)?,
            );
            cpio_entry(&mut cpio, 6, "init", 0o100755, (0, 0), INIT.as_bytes());
            cpio_entry(
                &mut cpio,
                7,
                "iommu_engine_edu.ko",
                0o100644,
                (0, 0),
                &read(ko)?,
            );
            cpio_entry(&mut cpio, 8, "TRAILER!!!", 0, (0, 0), &[]);
            let path = out_dir().join("initramfs.cpio");
            std::fs::write(&path, cpio).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(path)
        })
        .clone()
}

/// Pieces present and the module built, or the test is skipped (fails under CI).
fn ready(test: &str, need_qemu: bool) -> Option<(Pieces, PathBuf)> {
    let pieces = match find_pieces(need_qemu) {
        Ok(p) => p,
        Err(why) => {
            assert!(!in_ci(), "{test}: cannot run under CI=true: {why}");
            notice(&format!(
                "SKIPPED {test}: {why} (run .ci/install-linux.sh to install)"
            ));
            return None;
        }
    };
    let ko = build(&pieces.kdir).unwrap_or_else(|log| panic!("{test}: {log}"));
    Some((pieces, ko))
}

/// TCG, unless `IE_LINUX_ACCEL=kvm`: on this project's machines `/dev/kvm` opens but a guest
/// under it never printed a line (nested virtualisation), so KVM is opt-in.
fn accel() -> String {
    std::env::var("IE_LINUX_ACCEL").unwrap_or_else(|_| "tcg".into())
}

/// Boots one row and checks the module's lines.
fn boot(test: &str, scalable: bool, snoop: bool, caching_mode: bool) {
    let Some((pieces, ko)) = ready(test, true) else {
        return;
    };
    let initrd = initramfs(&ko, &pieces.busybox).unwrap_or_else(|e| panic!("{test}: {e}"));
    let accel = accel();
    let on = |b: bool| if b { "on" } else { "off" };
    let iommu = format!(
        "intel-iommu,intremap=off,x-scalable-mode={},snoop-control={},caching-mode={}",
        on(scalable),
        on(snoop),
        on(caching_mode)
    );
    let append = format!(
        "console=ttyS0 panic=-1 intel_iommu=off intremap=off quiet ie_scalable={} ie_snoop={} ie_cm={}",
        u8::from(scalable),
        u8::from(snoop),
        u8::from(caching_mode)
    );
    let args: Vec<String> = [
        "-M",
        "q35",
        "-accel",
        &accel,
        "-m",
        "512M",
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
        "-kernel",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([pieces.kernel.display().to_string(), "-initrd".into()])
    .chain([initrd.display().to_string(), "-append".into(), append])
    .chain([
        "-device".into(),
        iommu,
        "-device".into(),
        "edu,addr=04.0".into(),
    ])
    .collect();
    let cmdline = format!("qemu-system-x86_64 {}", args.join(" "));
    let start = Instant::now();
    let (status, serial) = run_with_timeout("qemu-system-x86_64", &args, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{test}: cannot run QEMU: {e}\n{cmdline}"));
    println!(
        "{test}: {:.1} s ({}): {cmdline}",
        start.elapsed().as_secs_f64(),
        accel
    );
    let serial = serial.replace('\r', "");
    let report = |problem: &str| {
        format!("{test}: {problem}\ncommand: {cmdline}\n--- serial ---\n{serial}---")
    };
    let Some(status) = status else {
        panic!("{}", report(&format!("timed out after {BOOT_TIMEOUT:?}")));
    };
    let lines: Vec<&str> = serial
        .lines()
        .filter_map(|l| l.split_once("ie_edu: ").map(|(_, rest)| rest))
        .collect();
    let mut steps = vec![
        "dmar",
        "config",
        "create",
        "enable",
        "registry",
        "context",
        "bind",
        "device_info",
        "alloc_enforce_snoop",
        "attach_enforce_snoop",
        "map",
        "dma",
        "unmap",
        "dma_blocked",
        "fault",
        "fault_drained",
        "incoherent_grant",
        "teardown_order",
        "detach_free",
        "ctx_destroy",
        "registry_destroy",
        "disable",
        "pages_back",
    ];
    if !snoop {
        steps.insert(10, "attach_plain");
    }
    let mut problems = Vec::new();
    if let Some(bad) = serial.lines().find(|l| {
        ["BUG", "Oops", "WARNING", "Call Trace", "RIP:"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        problems.push(format!("the kernel complained: {bad}"));
    }
    for l in &lines {
        if l.contains(": FAIL") {
            problems.push(format!("module reported: {l}"));
        }
    }
    for s in &steps {
        let want = format!("step {s}: ok");
        if !lines.iter().any(|l| l.starts_with(&want)) {
            problems.push(format!("no `{want}` line"));
        }
    }
    let result = format!("result: {} passed, 0 failed", steps.len());
    if !lines.contains(&result.as_str()) {
        problems.push(format!("no `{result}` line"));
    }
    if !serial.contains("insmod exit status 0") {
        problems.push("insmod failed".into());
    }
    if !status.success() {
        problems.push(format!("QEMU exited with {status}"));
    }
    if !problems.is_empty() {
        panic!("{}", report(&problems.join("\n")));
    }
}

/// Runs `prog args` with its stdout collected; `None` status on timeout (QEMU killed).
fn run_with_timeout(
    prog: &str,
    args: &[String],
    timeout: Duration,
) -> std::io::Result<(Option<std::process::ExitStatus>, String)> {
    let mut child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stdout.read_to_end(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let mut text = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let err = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    if !err.is_empty() {
        text.push_str("--- QEMU stderr ---\n");
        text.push_str(&err);
    }
    Ok((status, text))
}

#[test]
fn linux_legacy_snoop_control() {
    boot("linux_legacy_snoop_control", false, true, false);
}

#[test]
fn linux_legacy_no_snoop_control() {
    boot("linux_legacy_no_snoop_control", false, false, false);
}

#[test]
fn linux_scalable_snoop_control() {
    boot("linux_scalable_snoop_control", true, true, false);
}

#[test]
fn linux_legacy_caching_mode() {
    boot("linux_legacy_caching_mode", false, true, true);
}

#[test]
fn linux_scalable_caching_mode_no_snoop_control() {
    boot(
        "linux_scalable_caching_mode_no_snoop_control",
        true,
        false,
        true,
    );
}
