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
sources=(attention.cu compressor.cu indexer.cu bf16_skinny.cu)
gen=()
for s in "${sources[@]}"; do
  g="$out/gen/${s%.cu}.cpp"
  {
    echo '#include "emu_shim.h"'
    echo '#include "emu_registry.h"'
    sed -E 's/extern __shared__ __align__\([0-9]+\) unsigned char smem\[\];/unsigned char* smem = emu::dyn_smem();/' "$root/src/kernels/$s"
    # entry names: each kernel definition starts a line with its attn_ / bf16_ name (the line after extern "C" __global__)
    grep -oE '^(attn|bf16)_[a-z_0-9]+\(' "$root/src/kernels/$s" | tr -d '(' | sed -E 's/.*/EMU_KERNEL(&)/'
  } > "$g"
  gen+=("$g")
done
# model_ops.cu (the model's row ops) includes common.cuh, whose e4m3 conversion is inline PTX: the generated tree gets
# its own common.cuh with that line turned into emu_e4m3x2 (emu_model_ops.h) and a copy of model/row_ops.cuh, which
# (both quoted includes resolve next to the including file first) then includes that common.cuh.
mkdir -p "$out/gen/model"
sed -E 's/^ *asm\("cvt\.rn\.satfinite\.e4m3x2\.f32.*$/  packed = emu_e4m3x2(lo, hi);/' "$root/src/kernels/common.cuh" > "$out/gen/common.cuh"
grep -q 'emu_e4m3x2' "$out/gen/common.cuh" || { echo "build.sh: common.cuh's e4m3 asm line not found" >&2; exit 1; }
cp "$root/src/kernels/model/row_ops.cuh" "$out/gen/model/row_ops.cuh"
cp "$root/src/kernels/bf16_cvt.cuh" "$out/gen/bf16_cvt.cuh"  # row_ops.cuh includes it as ../bf16_cvt.cuh
g="$out/gen/model_ops.cpp"
{
  echo '#include "emu_shim.h"'
  echo '#include "emu_model_ops.h"'
  echo '#include "emu_registry.h"'
  sed -E 's/extern __shared__ float ([a-z_0-9]+)\[\];/float* \1 = reinterpret_cast<float*>(emu::dyn_smem());/' "$root/src/kernels/model_ops.cu"
  # entry names: `extern "C" __global__ ... mo_x(` on one line, or the name starting the next line
  grep -A1 -E '^extern "C" __global__' "$root/src/kernels/model_ops.cu" | grep -oE '(^| )mo_[a-z_0-9]+\(' | tr -d ' (' | sort -u | sed -E 's/.*/EMU_KERNEL(&)/'
} > "$g"
gen+=("$g")
# sampling.cu (the GPU sampler) includes common.cuh too: it is generated next to the copy above, so it gets the same one.
g="$out/gen/sampling.cpp"
{
  echo '#include "emu_shim.h"'
  echo '#include "emu_model_ops.h"'
  echo '#include "emu_sampling.h"'
  echo '#include "emu_registry.h"'
  cat "$root/src/kernels/sampling.cu"
  grep -A1 -E '^extern "C" __global__' "$root/src/kernels/sampling.cu" | grep -oE '(^| )mo_[a-z_0-9]+\(' | tr -d ' (' | sort -u | sed -E 's/.*/EMU_KERNEL(&)/'
} > "$g"
gen+=("$g")
g++ -std=c++20 -O2 -g -ffp-contract=off -fno-fast-math -fPIC -shared -I "$here" -I "$root/src/kernels" \
  -o "$out/libcuda-emu.so" "$here/fake_cuda.cpp" "${gen[@]}"
echo "$out/libcuda-emu.so"
