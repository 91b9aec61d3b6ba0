#!/usr/bin/env bash
# Builds the CPU emulator of libcuda (README.md) with the plain-CUDA kernels compiled in:
#   tools/cuda-emulator/build.sh [OUT_DIR]      -> OUT_DIR/libcuda-emu.so (default: tools/cuda-emulator/build)
# Each kernel source is copied with its dynamic shared memory declaration turned into the emulator's buffer, and an
# EMU_KERNEL registration appended for every extern "C" __global__ function.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$here/build}"
mkdir -p "$out/gen"
sources=(attention.cu compressor.cu indexer.cu)
gen=()
for s in "${sources[@]}"; do
  g="$out/gen/${s%.cu}.cpp"
  {
    echo '#include "emu_shim.h"'
    echo '#include "emu_registry.h"'
    sed -E 's/extern __shared__ __align__\([0-9]+\) unsigned char smem\[\];/unsigned char* smem = emu::dyn_smem();/' "$root/src/kernels/$s"
    # entry names: each kernel definition starts a line with its attn_ name (the line after extern "C" __global__)
    grep -oE '^attn_[a-z_0-9]+\(' "$root/src/kernels/$s" | tr -d '(' | sed -E 's/.*/EMU_KERNEL(&)/'
  } > "$g"
  gen+=("$g")
done
g++ -std=c++20 -O2 -g -ffp-contract=off -fno-fast-math -fPIC -shared -I "$here" -I "$root/src/kernels" \
  -o "$out/libcuda-emu.so" "$here/fake_cuda.cpp" "${gen[@]}"
echo "$out/libcuda-emu.so"
