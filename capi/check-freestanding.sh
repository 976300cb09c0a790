#!/usr/bin/env bash
# Links every non-sim function of include/iommu_engine.h from the x86_64-unknown-none static
# library into a freestanding program (no libc, no start files): proves that the library needs no
# symbol from its embedder beyond the IeEnv / IeRegs function pointers.
# Usage: capi/check-freestanding.sh (from the repository root, after
#   cargo build --release --manifest-path capi/Cargo.toml --target x86_64-unknown-none).
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
