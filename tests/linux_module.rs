//! The C ABI linked into a real Linux kernel: builds `capi/linux/` (`iommu_engine_edu.ko`, the
//! crate's static library inside an out-of-tree module) against Debian's kernel headers once,
//! packs an initramfs (busybox, the module, an init script), boots Debian's kernel under QEMU q35
//! with `intel-iommu` and QEMU's `edu` device and `intel_iommu=off` (Linux leaves the unit to
//! the module), and checks the module's result lines in the kernel log. One test per row: legacy
//! and scalable mode, snoop control on and off, caching mode on.
//!
//! Also checks the Rust object the module links (`rust_object_fits_a_kernel`): the deepest
//! stack of every exported function, measured from `-Z emit-stack-sizes` frame sizes along the
//! call graph of its relocations (indirect calls resolved through vtable slots), and that its
//! only undefined symbols are kernel exports.
//!
//! Without the pieces (QEMU, a kernel image with matching headers, gcc, make, busybox, nightly
//! Rust with rust-src) the tests report that they were skipped and pass, unless `CI=true`, where
//! they fail. `.ci/install-linux.sh` installs them.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

#[path = "support/process.rs"]
mod process;

/// The deepest stack any exported function may need, in bytes (kernel stacks are 16 KiB; issue
/// 19 item 4). The test prints each one's deepest chain; `IE_STACK_SKIP=5amdvi,3vtd`, say,
/// leaves out callees whose symbol contains one of the patterns, to show what bounds the
/// remaining driver's path (a diagnostic only). The deepest (1.8-1.9 KiB, ARCHITECTURE.md
/// "Stack") are the attaches, `ie_ctx_copy`, `ie_ctx_unmap` and the detaches: a few small
/// IOASID-layer frames over a unit's map and its own undo (AMD-Vi's `undo_map`, the table's
/// unmap walk), a unit's attach (VT-d's `attach_with`, about 1.4 KiB from the `dyn Iommu`
/// call) or a unit's unmap and flush. Until 2026-12-06 a `STACK_DEBT` list let the
/// functions issue 19 still owed exceed this figure (`ie_ctx_attach` was last, at 2016
/// bytes: a refused map's undo kept its 112-byte gather in its frame over the unit's unmap
/// walk). `ie_ctx_unbind` detaches an attached device first, as iommufd's unbind does (issue
/// 17, item 7). No walk of the engine recurses (`map_level`, `plan_map`, `count_new`,
/// `unmap_level`, `visit`, `reap`, `clear_dirty_level`, `reclaim_level`, `count_tables`: one
/// frame each, whatever the depth), and any recursion fails the check.
const STACK_LIMIT: u64 = 2048;
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
    // `no_timer_check`: under TCG on a loaded host the kernel's IO-APIC timer check can miss
    // the 8254's ticks and panic before init ("IO-APIC + timer doesn't work!", seen once in
    // the legacy no-snoop-control row at a load of 16); the check proves nothing here.
    let append = format!(
        "console=ttyS0 panic=-1 no_timer_check intel_iommu=off intremap=off quiet ie_scalable={} ie_snoop={} ie_cm={}",
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
        "buf_page",
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
    let status = process::wait_bounded(&mut child, timeout, Duration::from_millis(50))?;
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

/// A minimal reader of the ELF64 little-endian relocatable object `ld -r` makes of the static
/// library: sections, symbols, relocations. Enough for the stack and symbol checks.
mod elf {
    pub struct Section {
        pub name: String,
        pub kind: u32,
        pub flags: u64,
        pub offset: usize,
        pub size: usize,
        pub link: u32,
        pub info: u32,
    }

    pub struct Symbol {
        pub name: String,
        pub kind: u8,
        pub global: bool,
        pub shndx: u16,
        pub value: u64,
        pub size: u64,
    }

    pub struct Rela {
        pub offset: u64,
        pub kind: u32,
        pub sym: usize,
        pub addend: i64,
    }

    pub const SHT_SYMTAB: u32 = 2;
    pub const SHT_RELA: u32 = 4;
    pub const SHF_EXECINSTR: u64 = 4;
    pub const STT_FUNC: u8 = 2;
    pub const STT_SECTION: u8 = 3;

    pub struct Elf {
        pub data: Vec<u8>,
        pub sections: Vec<Section>,
        pub symbols: Vec<Symbol>,
    }

    fn u16_at(d: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([d[o], d[o + 1]])
    }
    fn u32_at(d: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(d[o..o + 4].try_into().unwrap())
    }
    fn u64_at(d: &[u8], o: usize) -> u64 {
        u64::from_le_bytes(d[o..o + 8].try_into().unwrap())
    }
    fn cstr(d: &[u8], o: usize) -> String {
        let end = d[o..]
            .iter()
            .position(|&b| b == 0)
            .map_or(d.len(), |n| o + n);
        String::from_utf8_lossy(&d[o..end]).into_owned()
    }

    impl Elf {
        pub fn parse(data: Vec<u8>) -> Result<Elf, String> {
            if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
                return Err("not an ELF64 little-endian file".into());
            }
            let shoff = u64_at(&data, 0x28) as usize;
            let shentsize = u16_at(&data, 0x3a) as usize;
            let shnum = u16_at(&data, 0x3c) as usize;
            let shstrndx = u16_at(&data, 0x3e) as usize;
            let mut raw = Vec::new();
            for i in 0..shnum {
                let o = shoff + i * shentsize;
                raw.push((
                    u32_at(&data, o),
                    u32_at(&data, o + 4),
                    u64_at(&data, o + 8),
                    u64_at(&data, o + 0x18) as usize,
                    u64_at(&data, o + 0x20) as usize,
                    u32_at(&data, o + 0x28),
                    u32_at(&data, o + 0x2c),
                ));
            }
            let names = raw[shstrndx].3;
            let sections: Vec<Section> = raw
                .iter()
                .map(|&(name, kind, flags, offset, size, link, info)| Section {
                    name: cstr(&data, names + name as usize),
                    kind,
                    flags,
                    offset,
                    size,
                    link,
                    info,
                })
                .collect();
            let symtab = sections
                .iter()
                .find(|s| s.kind == SHT_SYMTAB)
                .ok_or("no symbol table")?;
            let strtab = sections[symtab.link as usize].offset;
            let symbols = (0..symtab.size / 24)
                .map(|i| {
                    let o = symtab.offset + i * 24;
                    Symbol {
                        name: cstr(&data, strtab + u32_at(&data, o) as usize),
                        kind: data[o + 4] & 0xf,
                        global: data[o + 4] >> 4 != 0,
                        shndx: u16_at(&data, o + 6),
                        value: u64_at(&data, o + 8),
                        size: u64_at(&data, o + 16),
                    }
                })
                .collect();
            Ok(Elf {
                data,
                sections,
                symbols,
            })
        }

        pub fn relas(&self, s: &Section) -> Vec<Rela> {
            (0..s.size / 24)
                .map(|i| {
                    let o = s.offset + i * 24;
                    let info = u64_at(&self.data, o + 8);
                    Rela {
                        offset: u64_at(&self.data, o),
                        kind: info as u32,
                        sym: (info >> 32) as usize,
                        addend: u64_at(&self.data, o + 16) as i64,
                    }
                })
                .collect()
        }
    }
}

/// The retpoline calls of `objdump -d -r` output, by (section, relocation offset): the vtable
/// slot (displacement) of the `mov disp(%reg),%r11` that loaded the target, when the last
/// write to `%r11` before the call was one.
fn indirect_sites(disasm: &str) -> BTreeMap<(String, u64), Option<u64>> {
    let mut out = BTreeMap::new();
    let mut section = String::new();
    let mut r11: Option<u64> = None;
    let mut call_pending = false;
    for line in disasm.lines() {
        if let Some(name) = line.strip_prefix("Disassembly of section ") {
            section = name.trim_end_matches(':').to_owned();
            r11 = None;
            continue;
        }
        let t = line.trim_start();
        let Some((off, rest)) = t.split_once(':') else {
            continue;
        };
        let Ok(off) = u64::from_str_radix(off, 16) else {
            continue;
        };
        let rest = rest.trim();
        if let Some(reloc) = rest.strip_prefix("R_X86_64_") {
            if reloc.contains("__x86_indirect_thunk_r11") {
                out.insert((section.clone(), off), r11);
            }
            continue;
        }
        // A call clobbers %r11; its relocation line (above) comes after it.
        if call_pending {
            r11 = None;
            call_pending = false;
        }
        let mut words = rest.split_whitespace();
        let op = words.next().unwrap_or("");
        let args = words.collect::<Vec<_>>().join(" ");
        if op == "mov" && args.ends_with(",%r11") {
            let src = args.trim_end_matches(",%r11");
            r11 = match src.split_once('(') {
                Some((disp, base))
                    if base.starts_with('%')
                        && !base.contains(',')
                        && !base.starts_with("%rip")
                        && !base.starts_with("%rsp") =>
                {
                    if disp.is_empty() {
                        Some(0)
                    } else {
                        disp.strip_prefix("0x")
                            .and_then(|d| u64::from_str_radix(d, 16).ok())
                    }
                }
                _ => None,
            };
        } else if op.starts_with("call") {
            call_pending = true;
        } else if args.ends_with("%r11") || args.ends_with("%r11d") {
            r11 = None;
        }
    }
    out
}

/// The direct calls that the assembler resolved itself and that therefore carry no
/// relocation, by (section, offset of the call, offset of its target in that section): calls
/// to a function of the same section, which with one section per function is a function's
/// call to itself (a recursive walk). The relocations alone miss them.
fn resolved_calls(disasm: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut section = String::new();
    // The last call seen (its offset and target), until the line after it shows whether a
    // relocation (at the call's operand, within the instruction) fills it in.
    let mut pending: Option<(u64, u64)> = None;
    for line in disasm.lines() {
        if let Some(name) = line.strip_prefix("Disassembly of section ") {
            if let Some((at, to)) = pending.take() {
                out.push((section.clone(), at, to));
            }
            section = name.trim_end_matches(':').to_owned();
            continue;
        }
        let t = line.trim_start();
        let Some((off, rest)) = t.split_once(':') else {
            continue;
        };
        let Ok(off) = u64::from_str_radix(off, 16) else {
            continue;
        };
        let rest = rest.trim();
        if rest.starts_with("R_X86_64_") {
            if pending.is_some_and(|(at, _)| off > at && off < at + 16) {
                pending = None;
            }
            continue;
        }
        if let Some((at, to)) = pending.take() {
            out.push((section.clone(), at, to));
        }
        let mut words = rest.split_whitespace();
        if words.next().is_some_and(|op| op.starts_with("call")) {
            if let Some(Ok(to)) = words.next().map(|a| u64::from_str_radix(a, 16)) {
                pending = Some((off, to));
            }
        }
    }
    if let Some((at, to)) = pending {
        out.push((section, at, to));
    }
    out
}

/// The deepest stack each function of the object can reach, in bytes, from `-Z
/// emit-stack-sizes` frame sizes (each plus the 8-byte return address) along the call graph the
/// relocations and the calls the assembler resolved (`resolved_calls`) give. An indirect call
/// (a retpoline thunk) may reach any function whose address the object's data holds
/// (vtables): the bound takes the deepest of them. Calls out of the object (the embedder's
/// IeEnv / IeRegs callbacks) are not counted. Recursion is an error.
/// Symbol names as `c++filt` (binutils) demangles them (Rust v0), crate hashes left out; the
/// names as they are where it cannot run.
fn demangle(names: &[&str]) -> Vec<String> {
    let out = Command::new("c++filt")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            if let Some(mut stdin) = child.stdin.take() {
                stdin.write_all(names.join("\n").as_bytes())?;
            }
            child.wait_with_output()
        });
    let Some(lines) = out
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map(|s| s.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| l.len() == names.len())
    else {
        return names.iter().map(|&n| n.to_owned()).collect();
    };
    lines
        .into_iter()
        .map(|l| {
            // `iommu_engine[b5fa090af1a39cdb]::` -> `iommu_engine::`
            let mut out = String::new();
            let mut rest = l.as_str();
            while let Some(i) = rest.find('[') {
                let hash = rest[i + 1..].split_once(']').map(|(h, _)| h);
                out.push_str(&rest[..i]);
                match hash {
                    Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        rest = &rest[i + h.len() + 2..];
                    }
                    _ => {
                        out.push('[');
                        rest = &rest[i + 1..];
                    }
                }
            }
            out.push_str(rest);
            out
        })
        .collect()
}

/// One function on the deepest chain of an exported function.
struct Link {
    /// The symbol.
    name: String,
    /// Its frame, return address included.
    frame: u64,
    /// Reached through an indirect call (a vtable slot) rather than a direct one.
    via_dyn: bool,
}

/// The deepest chain of an exported function, outermost first.
type Chain = Vec<Link>;

fn stack_depths(obj: &elf::Elf, disasm: &str) -> Result<BTreeMap<String, (u64, Chain)>, String> {
    use elf::*;
    // Functions by (section, offset).
    let mut funcs: BTreeMap<(usize, u64), usize> = BTreeMap::new();
    for (i, s) in obj.symbols.iter().enumerate() {
        if s.kind == STT_FUNC && s.shndx != 0 && (s.shndx as usize) < obj.sections.len() {
            funcs.insert((s.shndx as usize, s.value), i);
        }
    }
    // A function is known by the symbol `funcs` holds at its address: rustc merges identical
    // functions into aliases (one body, several symbols, e.g. a walk shared by two formats),
    // and a call, a frame size or a self-call may name any of them. Keyed by the symbol a
    // relocation names, an alias had no frame, no callees and no self-call: its whole chain
    // counted 8 bytes (found by stack19a's review).
    let resolve = |r: &Rela, pc_relative: bool| -> Option<usize> {
        let s = obj.symbols.get(r.sym)?;
        match s.kind {
            STT_FUNC if s.shndx != 0 => Some(
                funcs
                    .get(&(s.shndx as usize, s.value))
                    .copied()
                    .unwrap_or(r.sym),
            ),
            STT_SECTION => {
                let off = if pc_relative { r.addend + 4 } else { r.addend };
                funcs.get(&(s.shndx as usize, off as u64)).copied()
            }
            _ => None,
        }
    };
    // Frame sizes.
    let mut frame: BTreeMap<usize, u64> = BTreeMap::new();
    for (idx, sec) in obj.sections.iter().enumerate() {
        if sec.name != ".stack_sizes" {
            continue;
        }
        let Some(rela) = obj
            .sections
            .iter()
            .find(|r| r.kind == SHT_RELA && r.info as usize == idx)
        else {
            continue;
        };
        let relas = obj.relas(rela);
        let bytes = &obj.data[sec.offset..sec.offset + sec.size];
        let mut o = 0usize;
        while o + 8 < bytes.len() {
            let r = relas
                .iter()
                .find(|r| r.offset == o as u64)
                .ok_or_else(|| format!(".stack_sizes entry at {o:#x} has no relocation"))?;
            let f = resolve(r, false)
                .ok_or_else(|| format!(".stack_sizes entry at {o:#x}: no function"))?;
            o += 8;
            let (mut size, mut shift) = (0u64, 0);
            loop {
                let b = bytes[o];
                o += 1;
                size |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            frame.insert(f, size + 8);
        }
    }
    // Edges, indirect calls, address-taken functions.
    let mut edges: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    // Indirect call sites per function: the vtable slot the target was loaded from, if known.
    let mut indirect: BTreeMap<usize, Vec<Option<u64>>> = BTreeMap::new();
    let mut taken: BTreeSet<usize> = BTreeSet::new();
    // Functions by the offset at which a read-only data section (a vtable) holds them.
    let mut slots: BTreeMap<u64, BTreeSet<usize>> = BTreeMap::new();
    let sites = indirect_sites(disasm);
    for sec in obj.sections.iter().filter(|s| s.kind == SHT_RELA) {
        let target = &obj.sections[sec.info as usize];
        if target.name.starts_with(".debug")
            || target.name.starts_with(".eh_frame")
            || target.name == ".stack_sizes"
        {
            continue;
        }
        let code = target.flags & SHF_EXECINSTR != 0;
        for r in obj.relas(sec) {
            // R_X86_64_PC32 = 2, R_X86_64_PLT32 = 4.
            let pc_relative = r.kind == 2 || r.kind == 4;
            if !code {
                if let Some(f) = resolve(&r, pc_relative) {
                    slots.entry(r.offset).or_default().insert(f);
                    // A vtable's drop slot: never called, as nothing drops a `dyn` value in a
                    // crate without an allocator (no `Box<dyn _>`).
                    if !obj.symbols[f].name.contains("4core3ptr9drop_glue") {
                        taken.insert(f);
                    }
                }
                continue;
            }
            let Some((_, &from)) = funcs.range(..=(sec.info as usize, r.offset)).next_back() else {
                continue;
            };
            let fsym = &obj.symbols[from];
            if fsym.shndx as usize != sec.info as usize || r.offset >= fsym.value + fsym.size.max(1)
            {
                continue;
            }
            let name = &obj.symbols[r.sym].name;
            if name.starts_with("__x86_indirect_thunk_") {
                let slot = sites
                    .get(&(target.name.clone(), r.offset))
                    .copied()
                    .flatten();
                indirect.entry(from).or_default().push(slot);
            } else if let Some(to) = resolve(&r, pc_relative) {
                // R_X86_64_PLT32: a call or tail call (-Z plt=yes makes every call one);
                // anything else takes the function's address (`lea`), e.g. for a vtable or a
                // `fmt::Arguments` that only formatting would call.
                if r.kind == 4 {
                    edges.entry(from).or_default().insert(to);
                } else if !obj.symbols[to].name.contains("4core3ptr9drop_glue") {
                    taken.insert(to);
                }
            }
        }
    }
    // Calls the assembler resolved (no relocation): a function's call to itself.
    let section_of: BTreeMap<&str, usize> = obj
        .sections
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for (section, at, to) in resolved_calls(disasm) {
        let Some(&sec) = section_of.get(section.as_str()) else {
            continue;
        };
        let Some((_, &from)) = funcs.range(..=(sec, at)).next_back() else {
            continue;
        };
        let fsym = &obj.symbols[from];
        if fsym.shndx as usize != sec || at >= fsym.value + fsym.size.max(1) {
            continue;
        }
        if let Some(&callee) = funcs.get(&(sec, to)) {
            edges.entry(from).or_default().insert(callee);
        }
    }
    let mut depth: BTreeMap<usize, u64> = BTreeMap::new();
    // Depth-first with an explicit path for cycle reports.
    // The graph's tables, passed down the recursion; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    fn visit(
        f: usize,
        obj: &elf::Elf,
        frame: &BTreeMap<usize, u64>,
        edges: &BTreeMap<usize, BTreeSet<usize>>,
        indirect: &BTreeMap<usize, Vec<Option<u64>>>,
        slots: &BTreeMap<u64, BTreeSet<usize>>,
        taken: &BTreeSet<usize>,
        depth: &mut BTreeMap<usize, u64>,
        deepest_callee: &mut BTreeMap<usize, (usize, bool)>,
        path: &mut Vec<usize>,
    ) -> Result<u64, String> {
        if let Some(&d) = depth.get(&f) {
            return Ok(d);
        }
        if path.contains(&f) {
            let names: Vec<&str> = path
                .iter()
                .chain([&f])
                .map(|&i| obj.symbols[i].name.as_str())
                .collect();
            return Err(format!("recursion: {}", names.join(" -> ")));
        }
        path.push(f);
        // Callees, each with whether it is reached through an indirect call.
        let mut callees: Vec<(usize, bool)> = edges
            .get(&f)
            .into_iter()
            .flatten()
            .map(|&c| (c, false))
            .collect();
        for slot in indirect.get(&f).into_iter().flatten() {
            // Inside the units, the page-table engine, register and memory access and the
            // firmware parsers, indirect calls are the embedder's callbacks (IeEnv, IeRegs,
            // the DMAR bridge lookup: out of the object) and `&mut dyn FnMut` visitors;
            // elsewhere (the IOASID layer, the C ABI) also `dyn Iommu` methods.
            let name = &obj.symbols[f].name;
            let unit_internal = [
                "3vtd",
                "6smmuv3",
                "5amdvi",
                "7pgtable",
                "4mmio",
                "4capi3env",
                "8firmware",
            ]
            .iter()
            .any(|m| name.contains(&format!("12iommu_engine{m}")));
            // A call through a known vtable slot reaches what some vtable holds there.
            let candidates: Vec<usize> = match slot {
                Some(s) => slots
                    .get(s)
                    .into_iter()
                    .flatten()
                    .copied()
                    .filter(|t| taken.contains(t))
                    .collect(),
                // Unknown: whatever a vtable holds (code's own `lea`s of functions feed
                // `fmt::Arguments`, which nothing formats: the panic handler spins).
                None => slots
                    .values()
                    .flatten()
                    .copied()
                    .filter(|t| taken.contains(t))
                    .collect(),
            };
            callees.extend(
                candidates
                    .into_iter()
                    .filter(|&t| {
                        let n = &obj.symbols[t].name;
                        !unit_internal || n.contains("5FnMut") || n.contains("6FnOnce")
                    })
                    .map(|t| (t, true)),
            );
        }
        let mut deepest = 0;
        let skip = std::env::var("IE_STACK_SKIP").unwrap_or_default();
        for (c, via_dyn) in callees {
            if !skip.is_empty() && skip.split(',').any(|p| obj.symbols[c].name.contains(p)) {
                continue;
            }
            // A call to itself (or back up the path) is recursion: an error.
            let d = visit(
                c,
                obj,
                frame,
                edges,
                indirect,
                slots,
                taken,
                depth,
                deepest_callee,
                path,
            )?;
            if d > deepest {
                deepest = d;
                deepest_callee.insert(f, (c, via_dyn));
            }
        }
        path.pop();
        let d = frame.get(&f).copied().unwrap_or(8) + deepest;
        depth.insert(f, d);
        Ok(d)
    }
    let mut deepest_callee: BTreeMap<usize, (usize, bool)> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (i, s) in obj.symbols.iter().enumerate() {
        if s.kind == STT_FUNC && s.global && s.name.starts_with("ie_") && s.shndx != 0 {
            let i = funcs
                .get(&(s.shndx as usize, s.value))
                .copied()
                .unwrap_or(i);
            let mut path = Vec::new();
            let d = visit(
                i,
                obj,
                &frame,
                &edges,
                &indirect,
                &slots,
                &taken,
                &mut depth,
                &mut deepest_callee,
                &mut path,
            )?;
            // The chain that sets the bound: each function's own frame along it.
            let mut chain = Vec::new();
            let mut at = Some((i, false));
            while let Some((f, via_dyn)) = at {
                chain.push(Link {
                    name: obj.symbols[f].name.clone(),
                    frame: frame.get(&f).copied().unwrap_or(8),
                    via_dyn,
                });
                at = deepest_callee.get(&f).copied();
            }
            out.insert(s.name.clone(), (d, chain));
        }
    }
    Ok(out)
}

/// The Rust object the module links, checked for a kernel host: no recursion, every exported
/// function's deepest stack within [`STACK_LIMIT`], and no
/// undefined symbol but the kernel exports the codegen flags ask for (retpoline and return
/// thunks).
#[test]
fn rust_object_fits_a_kernel() {
    let test = "rust_object_fits_a_kernel";
    let Some(_) = ready(test, false) else {
        return;
    };
    let path = out_dir().join("rust-full.o");
    let obj =
        elf::Elf::parse(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let disasm = Command::new("objdump")
        .args(["-d", "-r", "--no-show-raw-insn"])
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("{test}: objdump: {e}"));
    assert!(disasm.status.success(), "{test}: objdump failed");
    let disasm = String::from_utf8_lossy(&disasm.stdout);
    let exports: Vec<String> = std::fs::read_to_string(out_dir().join("exports.txt"))
        .expect("exports.txt")
        .lines()
        .map(str::to_owned)
        .collect();
    let depths = stack_depths(&obj, &disasm).unwrap_or_else(|e| panic!("{test}: {e}"));
    let mut over = Vec::new();
    for name in &exports {
        let (d, chain) = depths
            .get(name)
            .unwrap_or_else(|| panic!("{test}: {name} is not in the object"));
        let d = *d;
        println!("stack {d:6} (limit {STACK_LIMIT:5}) {name}");
        // The chain down to the deepest leaf: frames of 256 bytes or more, and the calls
        // through a vtable (IE_STACK_CHAIN=all: every frame).
        let all = std::env::var("IE_STACK_CHAIN").is_ok_and(|v| v == "all");
        let shown: Vec<&Link> = chain
            .iter()
            .filter(|l| all || l.frame >= 256 || l.via_dyn)
            .collect();
        let names: Vec<&str> = shown.iter().map(|l| l.name.as_str()).collect();
        for (l, f) in shown.iter().zip(demangle(&names)) {
            let how = if l.via_dyn { "dyn " } else { "" };
            println!("    {:6} {how}{f}", l.frame);
        }
        if d > STACK_LIMIT {
            over.push(format!("{name}: {d} bytes, limit {STACK_LIMIT}"));
        }
    }
    let undefined: BTreeSet<&str> = obj
        .symbols
        .iter()
        .filter(|s| s.shndx == 0 && !s.name.is_empty())
        .map(|s| s.name.as_str())
        .collect();
    let unexpected: Vec<&&str> = undefined
        .iter()
        .filter(|n| !n.starts_with("__x86_indirect_thunk_") && **n != "__x86_return_thunk")
        .collect();
    assert!(
        unexpected.is_empty(),
        "{test}: undefined symbols the kernel may not export: {unexpected:?}"
    );
    assert!(over.is_empty(), "{test}: stack over the limit: {over:?}");
}

/// A function's call to itself is resolved by the assembler (no relocation): it must still be
/// an edge of the call graph, or a recursive walk goes uncounted (as `map_level` and
/// `unmap_level` did until 2026-12-06). A relocated call is left to the relocations.
#[test]
fn calls_without_a_relocation_are_found() {
    let disasm = "\
Disassembly of section .text.walk:

0000000000000000 <walk>:
       0:\tpush   %rbx
       1:\tcall   6 <walk+0x6>
\t\t\t2: R_X86_64_PLT32\tleaf-0x4
       6:\tcall   *%rax
       8:\tcall   0 <walk>
       d:\tjmp    0 <walk>
      12:\tcall   20 <walk+0x20>
      17:\tret

Disassembly of section .text.other:

0000000000000000 <other>:
       0:\tcall   0 <other>
";
    assert_eq!(
        resolved_calls(disasm),
        vec![
            (".text.walk".to_owned(), 0x8, 0x0),
            (".text.walk".to_owned(), 0x12, 0x20),
            (".text.other".to_owned(), 0x0, 0x0),
        ]
    );
}
