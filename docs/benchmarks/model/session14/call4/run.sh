#!/usr/bin/env bash
# session 14, call 4: ncu source-level profiles at prefill 4K of the row kernels (mo_hc_pre_fin, mo_hc_post,
# mo_q_renorm) and of the changed sparse attention (attn_sparse_mma2s, attn_sparse_mma4)
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --enforce-eager --kv-cache-gib 8 --commit $(cat .cache/dev/commit)"
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"
t0=$SECONDS
timeout 200 ncu --clock-control none $S --import-source yes -k regex:'mo_q_renorm|mo_hc_post|mo_hc_pre_fin|attn_sparse_mma' -c 6 -o /tmp/pre4k $B --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o2 > $OUT/ncu-pre.log 2>&1; echo "ncu pre rc $? ($((SECONDS - t0)) s)"
mkdir -p /tmp/rep
ncu -i /tmp/pre4k.ncu-rep --page details --csv > /tmp/rep/pre4k-details.csv 2>&1
ncu -i /tmp/pre4k.ncu-rep --page source --csv --print-source sass > /tmp/rep/pre4k-sass.csv 2>&1
ls -la /tmp/rep
tar czf $OUT/rep.tgz -C /tmp/rep .
tail -n 3 $OUT/ncu-pre.log
echo "done ($((SECONDS - t0)) s)"
