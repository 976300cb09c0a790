#!/usr/bin/env bash
# Builds iommu_engine_edu.ko: the crate's C ABI (capi/, libiommu_engine.a) linked into an
# out-of-tree Linux module (capi/linux/ie_edu.c) against the headers in $KDIR.
#
# Usage (from the repository root): [OUT=dir] capi/linux/build.sh [KDIR]
#   KDIR defaults to the newest /usr/src/linux-headers-*-amd64 (Debian's linux-headers-amd64).
# Output (OUT defaults to target/linux-module): $OUT/module/iommu_engine_edu.ko, $OUT/rust-full.o
# (the Rust object with its .stack_sizes section, for the stack check in tests/linux_module.rs).
# Needs: nightly Rust with rust-src (-Zbuild-std), gcc, make, binutils.
#
# Rust flags, and why (README, "Linking from a Linux module"):
#   -C relocation-model=static -C code-model=kernel: the kernel's module loader applies only
#     absolute and PC-relative relocations in the top 2 GiB (6.1 rejects R_X86_64_GOTPCREL).
#   -Z retpoline-external-thunk: indirect calls go through the kernel's __x86_indirect_thunk_*
#     (CONFIG_RETPOLINE), which the kernel patches per CPU.
#   -Z function-return=thunk-extern: returns jump to __x86_return_thunk (CONFIG_RETHUNK).
#   -Z cf-protection=branch: endbr64 at every function entry whose address is taken, for
#     kernels with indirect-branch tracking (CONFIG_X86_KERNEL_IBT).
#   -Z plt=yes: calls to memcpy & co. as direct calls (R_X86_64_PLT32); the target's default
#     (no PLT) makes them indirect through the GOT (R_X86_64_GOTPCREL), which the loader refuses.
#   -Z emit-stack-sizes: per-function frame sizes for the stack check; the section is removed
#     before the object goes into the module.
#   -Z build-std=core: core itself built with the flags above (the prebuilt core is not).
#   x86_64-unknown-none already has soft-float (no SSE/AVX state touched) and no red zone.
set -euo pipefail
cd "$(dirname "$0")/../.."

KDIR=${1:-${KDIR:-}}
if [ -z "$KDIR" ]; then
  KDIR=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1 || true)
fi
[ -n "$KDIR" ] && [ -f "$KDIR/Makefile" ] || { echo "build.sh: no kernel headers (KDIR=$KDIR)" >&2; exit 2; }

out=${OUT:-target/linux-module}
export CARGO_TARGET_DIR=$out
export RUSTFLAGS="-C relocation-model=static -C code-model=kernel -Z cf-protection=branch \
-Z retpoline-external-thunk -Z function-return=thunk-extern -Z emit-stack-sizes -Z plt=yes"
cargo +nightly build --quiet --release --manifest-path capi/Cargo.toml \
  --target x86_64-unknown-none -Zbuild-std=core
lib=$out/x86_64-unknown-none/release/libiommu_engine.a

# Every non-sim function of the header is a root; garbage collection drops the rest (core's
# float formatting among it, whose GOT relocations the module loader would refuse).
fns=$(awk '/#if defined\(IOMMU_ENGINE_SIM\)/{sim=1} /#endif/{sim=0}
           !sim && /^[a-z].* ie_[a-z_0-9]+\(/{match($0,/ie_[a-z_0-9]+\(/); print substr($0,RSTART,RLENGTH-1)}' \
      include/iommu_engine.h | sort -u)
roots=()
for f in $fns; do roots+=(-u "$f"); done
ld -r --gc-sections "${roots[@]}" --whole-archive "$lib" -o "$out/rust-full.o"
printf '%s\n' $fns > "$out/exports.txt"

mod=$out/module
rm -rf "$mod"
mkdir -p "$mod/include"
cp capi/linux/Kbuild capi/linux/ie_edu.c "$mod/"
cp -r capi/linux/shim "$mod/"
cp include/iommu_engine.h "$mod/include/"
# Only the C ABI stays global: core's memcpy & co. must not stand in for the kernel's in ie_edu.o.
objcopy --remove-section=.stack_sizes --keep-global-symbols="$out/exports.txt" "$out/rust-full.o" "$mod/rust.o"
# The x86_64 module loader (6.1, arch/x86/kernel/module.c) applies R_X86_64_64, 32, 32S, PC32,
# PLT32 and PC64 only: anything else (GOT relocations) fails insmod with "Unknown rela relocation".
bad=$(readelf -rW "$mod/rust.o" | awk '$3 ~ /^R_X86_64_/ && $3 !~ /^R_X86_64_(64|32|32S|PC32|PLT32|PC64)$/ {print $3, $5}' | sort | uniq -c)
[ -z "$bad" ] || { echo "build.sh: relocations the module loader refuses:" >&2; echo "$bad" >&2; exit 1; }
# Kbuild treats rust.o as a prebuilt object; modpost reads a .cmd file for every object.
echo "cmd_rust.o := capi/linux/build.sh (ld -r --gc-sections libiommu_engine.a)" > "$mod/.rust.o.cmd"
make -s -C "$KDIR" M="$(cd "$mod" && pwd)" modules 2>&1 | tee "$out/kbuild.log"
[ -f "$mod/iommu_engine_edu.ko" ] || { echo "build.sh: no module built" >&2; exit 1; }
# objtool on rust.o with the arguments Kbuild gave the module's C object (Kbuild runs objtool
# only on objects it compiles): it checks every Rust function as it checks C (stack state,
# retpolines, return thunks, SLS, uaccess) and writes the ORC unwind tables and the
# retpoline/return-site lists the module loader patches. Any warning fails the build. The
# module is then linked again with the annotated object. `--link`: rust.o is the output of
# `ld -r` (objtool would otherwise say that it detected a linked object and force it).
objtool_args=$(sed -n 's|.*objtool/objtool \(.*\) [^ ]*/ie_edu\.o.*|\1|p' "$mod/.ie_edu.o.cmd" | head -n1)
objtool_args="$objtool_args --link"
[ -n "$objtool_args" ] || { echo "build.sh: no objtool command in .ie_edu.o.cmd" >&2; exit 1; }
# shellcheck disable=SC2086 # the arguments are words
objtool_log=$("$KDIR/tools/objtool/objtool" $objtool_args "$mod/rust.o" 2>&1) \
  || { echo "build.sh: objtool failed on rust.o: $objtool_log" >&2; exit 1; }
[ -z "$objtool_log" ] || { echo "build.sh: objtool warns on rust.o:" >&2; echo "$objtool_log" >&2; exit 1; }
# Not `readelf | grep -q`: grep exits at the first match, readelf then dies of SIGPIPE, and
# pipefail fails the build whenever readelf still had sections to print (it did, now and then).
sections=$(readelf -SW "$mod/rust.o")
grep -q '\.orc_unwind_ip' <<<"$sections" \
  || { echo "build.sh: objtool wrote no ORC tables into rust.o" >&2; exit 1; }
echo "build.sh: objtool" $objtool_args "rust.o: no warning, ORC tables written"
make -s -C "$KDIR" M="$(cd "$mod" && pwd)" modules 2>&1 | tee -a "$out/kbuild.log"
echo "build.sh: $mod/iommu_engine_edu.ko ($(stat -c %s "$mod/iommu_engine_edu.ko") bytes)"
echo "build.sh: undefined symbols of the Rust object (all must be kernel exports):"
nm -u "$mod/rust.o" | awk '{print "  " $2}'
