#!/usr/bin/env bash
# Build + check + time the grouped FP8 GEMM on the GPU host, in one call (device time is scarce):
#   [NCU=1] [LT=1] bash tools/gemm-harness/run.sh
# Logs go to $OUT (the run tool brings that folder back) or /tmp/gemm-out.
set -o pipefail
cd "$(dirname "$0")"
OUT=${OUT:-/tmp/gemm-out}
mkdir -p "$OUT"
NVCC=/usr/local/cuda/bin/nvcc
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv | tee "$OUT/gpu.txt"
t0=$(date +%s)
$NVCC -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -Xptxas -v -o /tmp/gemm harness.cu 2> "$OUT/ptxas.txt" \
  || { tail -40 "$OUT/ptxas.txt"; exit 1; }
echo "harness built in $(( $(date +%s) - t0 )) s"
grep -E "registers|spill" "$OUT/ptxas.txt" | sort | uniq -c | head -20
echo "QGMMA instructions in the SASS: $(cuobjdump -sass /tmp/gemm | grep -c QGMMA)"
cuobjdump -sass /tmp/gemm | grep -m2 QGMMA
if [ "$LT" = "1" ] && [ -f /usr/local/cuda/include/cublasLt.h ]; then
  ($NVCC -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a -o /tmp/lt cublaslt_anchor.cu -lcublasLt 2>&1 | tail -5) &
fi
timeout 200 /tmp/gemm --check 2>&1 | tee "$OUT/check.log"
rc=$?
timeout 300 /tmp/gemm --bench 2>&1 | tee "$OUT/bench.log"
[ $? -ne 0 ] && rc=1
wait
if [ -x /tmp/lt ]; then timeout 60 /tmp/lt 2>&1 | tee "$OUT/cublaslt.log"; fi
if [ "$NCU" = "1" ]; then
  timeout 240 /usr/local/cuda/bin/ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
    --section ComputeWorkloadAnalysis --section Occupancy -k regex:gg_normal /tmp/gemm --ncu > "$OUT/ncu.txt" 2>&1
  grep -E "gg_normal|ncu launch|Duration|Throughput|Busy|Bandwidth|Hit Rate|Max Bandwidth" "$OUT/ncu.txt" | head -80
fi
exit $rc
