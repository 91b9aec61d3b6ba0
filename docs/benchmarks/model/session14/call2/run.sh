#!/usr/bin/env bash
# session 14, call 2: ncu source-level profiles of the sparse attention at prefill 4K (layer 1: attn_sparse_mma4,
# layer 2: attn_sparse_mma2s) and at decode b64 / 32K (attn_sparse_mma1, attn_indexer_scores)
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --enforce-eager --kv-cache-gib 8 --commit $(cat .cache/dev/commit)"
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section InstructionStats"
t0=$SECONDS
timeout 150 ncu --clock-control none $S --import-source yes -k regex:'attn_sparse_mma' -s 1 -c 2 -o /tmp/pre4k $B --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o2 > $OUT/ncu-pre.log 2>&1; echo "ncu pre rc $? ($((SECONDS - t0)) s)"
pkill -9 -f gpuhost-node; sleep 2
timeout 200 ncu --clock-control none $S --import-source yes -k regex:'attn_indexer_scores|attn_sparse_mma1' -c 2 -o /tmp/dec64 $B --batches 64 --contexts 32k --prefill none --warmup 0 --runs 1 --out /tmp/o1 > $OUT/ncu-dec.log 2>&1; echo "ncu dec rc $? ($((SECONDS - t0)) s)"
mkdir -p /tmp/rep
for f in pre4k dec64; do
  ncu -i /tmp/$f.ncu-rep --page details --csv > /tmp/rep/$f-details.csv 2>&1
  ncu -i /tmp/$f.ncu-rep --page source --csv --print-source sass > /tmp/rep/$f-sass.csv 2>&1
  ncu -i /tmp/$f.ncu-rep --page source --csv --print-source cuda > /tmp/rep/$f-cuda.csv 2>&1
done
ls -la /tmp/rep
tar czf $OUT/rep.tgz -C /tmp/rep .
tail -n 3 $OUT/ncu-pre.log $OUT/ncu-dec.log
echo "done ($((SECONDS - t0)) s)"
