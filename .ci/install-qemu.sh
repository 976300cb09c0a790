#!/usr/bin/env bash
# Installs QEMU 10 (qemu-system-x86_64, qemu-system-aarch64) from Debian bookworm-backports and the
# two bare-metal Rust targets used by tests/qemu. Idempotent and non-interactive.
#
# The backports stanza is derived from the Debian mirror already configured in
# /etc/apt/sources.list.d/debian.sources, so no host name is hard-coded here.
set -euo pipefail

SOURCES=/etc/apt/sources.list.d/debian.sources
BACKPORTS=/etc/apt/sources.list.d/bookworm-backports.sources
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

qemu_ok() {
    local bin="$1" major
    command -v "$bin" >/dev/null 2>&1 || return 1
    major=$("$bin" --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p')
    [ -n "$major" ] && [ "$major" -ge 10 ]
}

if qemu_ok qemu-system-x86_64 && qemu_ok qemu-system-aarch64; then
    echo "install-qemu: QEMU >= 10 already installed"
else
    if [ ! -f "$BACKPORTS" ]; then
        [ -f "$SOURCES" ] || { echo "install-qemu: $SOURCES not found" >&2; exit 1; }
        # The first stanza whose Suites list contains plain "bookworm": keep its Types, URIs,
        # Components and Signed-By, replace Suites, drop comments.
        stanza=$(awk '
            BEGIN { RS = ""; FS = "\n" }
            {
                if ($0 ~ /(^|\n)Suites:[^\n]*[ \t]bookworm([ \t]|$|\n)/ || $0 ~ /(^|\n)Suites:[ \t]*bookworm([ \t]|$|\n)/) {
                    for (i = 1; i <= NF; i++) {
                        if ($i ~ /^#/) continue
                        if ($i ~ /^Suites:/) print "Suites: bookworm-backports"
                        else print $i
                    }
                    exit
                }
            }' "$SOURCES")
        [ -n "$stanza" ] || { echo "install-qemu: no bookworm stanza in $SOURCES" >&2; exit 1; }
        printf '%s\n' "$stanza" | $SUDO tee "$BACKPORTS" >/dev/null
        echo "install-qemu: wrote $BACKPORTS:"
        cat "$BACKPORTS"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q -t bookworm-backports --no-install-recommends \
        qemu-system-x86 qemu-system-arm
fi

qemu-system-x86_64 --version | head -n1
qemu-system-aarch64 --version | head -n1

if command -v rustup >/dev/null 2>&1; then
    rustup target add x86_64-unknown-none aarch64-unknown-none
else
    echo "install-qemu: rustup not found; add targets x86_64-unknown-none and aarch64-unknown-none" >&2
    exit 1
fi
