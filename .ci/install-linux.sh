#!/usr/bin/env bash
# Installs what tests/linux_module.rs needs to build capi/linux/ (the crate's C ABI in an
# out-of-tree Linux module) and boot it under QEMU (.ci/install-qemu.sh installs QEMU):
# Debian's kernel image and the headers of the same release, gcc, make, binutils, a static
# busybox for the initramfs, and nightly Rust with rust-src (-Zbuild-std=core with the kernel's
# codegen flags). Idempotent and non-interactive. About a minute on a fresh machine.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1 && ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1 \
   && [ -x /bin/busybox ] && command -v gcc >/dev/null && command -v make >/dev/null; then
    echo "install-linux: kernel, headers, gcc, make and busybox already installed"
else
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends \
        linux-image-amd64 linux-headers-amd64 gcc make binutils busybox-static
fi
ls /boot/vmlinuz-*-amd64 | tail -n1
ls -d /usr/src/linux-headers-*-amd64 | tail -n1

if command -v rustup >/dev/null 2>&1; then
    rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
    rustup +nightly component add rust-src
else
    echo "install-linux: rustup not found; install nightly with rust-src" >&2
    exit 1
fi
