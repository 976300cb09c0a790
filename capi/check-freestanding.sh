#!/usr/bin/env bash
# Links every non-sim function of include/iommu_engine.h from the x86_64-unknown-none static
# library into a freestanding program (no libc, no start files): proves that the library needs no
# symbol from its embedder beyond the IeEnv / IeRegs function pointers.
# The same for aarch64-unknown-none without a cross compiler: the toolchain's own rust-lld links
# the library with every header function required (EXTERN + ASSERT(DEFINED) in a linker script);
# an undefined reference anywhere in what they pull in fails the link.
# Usage: capi/check-freestanding.sh (from the repository root, after
#   cargo build --release --manifest-path capi/Cargo.toml --target x86_64-unknown-none
#   and the same with --target aarch64-unknown-none).
set -euo pipefail
lib=capi/target/x86_64-unknown-none/release/libiommu_engine.a
out=target/freestanding
mkdir -p "$out"
fns=$(awk '/#if defined\(IOMMU_ENGINE_SIM\)/{sim=1} /#endif/{sim=0}
           !sim && /^[a-z].* ie_[a-z_0-9]+\(/{match($0,/ie_[a-z_0-9]+\(/); print substr($0,RSTART,RLENGTH-1)}' \
      include/iommu_engine.h | sort -u)
[ -n "$fns" ] || { echo "no functions found in the header" >&2; exit 1; }
{
  echo '#include "iommu_engine.h"'
  echo 'void *const ie_every_function[] = {'
  for f in $fns; do echo "  (void *)$f,"; done
  echo '};'
  echo 'void _start(void) { for (;;) { __asm__ volatile("" : : "r"(ie_every_function)); } }'
} > "$out/every_function.c"
gcc -std=gnu11 -Wall -Werror -ffreestanding -nostdlib -static -fno-pie -no-pie \
    -Iinclude -o "$out/every_function.elf" "$out/every_function.c" "$lib"
echo "freestanding link of $(echo "$fns" | wc -l) functions: OK ($(stat -c %s "$out/every_function.elf") bytes)"

a64=capi/target/aarch64-unknown-none/release/libiommu_engine.a
lld="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | sed -n 's/^host: //p')/bin/rust-lld"
[ -f "$a64" ] || { echo "$a64 is missing: build capi/ for aarch64-unknown-none first" >&2; exit 1; }
[ -x "$lld" ] || { echo "rust-lld not found at $lld" >&2; exit 1; }
{
  for f in $fns; do echo "EXTERN($f)"; done
  for f in $fns; do echo "ASSERT(DEFINED($f), \"$f is not defined\")"; done
} > "$out/every_function.aarch64.ld"
"$lld" -flavor gnu -m aarch64elf -static -nostdlib --entry=ie_status_errno \
    -T "$out/every_function.aarch64.ld" -o "$out/every_function.aarch64.elf" "$a64"
echo "aarch64 freestanding link of $(echo "$fns" | wc -l) functions: OK ($(stat -c %s "$out/every_function.aarch64.elf") bytes)"
