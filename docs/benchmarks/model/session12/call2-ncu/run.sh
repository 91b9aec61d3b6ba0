#!/usr/bin/env bash
# session 12, call 2: ncu (stall sampling, a few sections) of the decode b64/32K attention kernels and the prefill's big non-MoE kernels
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --enforce-eager --kv-cache-gib 8 --commit $(cat .cache/dev/commit)"
S="--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis"
t0=$SECONDS
timeout 150 $B --batches 64 --contexts 32k --prefill none --warmup 1 --runs 2 --out /tmp/b0 > $OUT/warm.log 2>&1; echo "warm rc $? ($((SECONDS - t0)) s)"
timeout 200 ncu --clock-control none $S --import-source yes -k regex:'attn_indexer_scores|attn_sparse_mma|attn_indexer_topk' -c 6 -o /tmp/dec64 $B --batches 64 --contexts 32k --prefill none --warmup 0 --runs 1 --out /tmp/o1 > $OUT/ncu1.log 2>&1; echo "ncu dec rc $? ($((SECONDS - t0)) s)"
pkill -9 -f gpuhost-node; sleep 2
timeout 200 ncu --clock-control none $S --import-source yes -k regex:'mo_hc_pre_mix_tiled|attn_indexer|attn_sparse_mma' -c 9 -o /tmp/pre4k $B --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o2 > $OUT/ncu2.log 2>&1; echo "ncu pre rc $? ($((SECONDS - t0)) s)"
mkdir -p /tmp/rep
for f in dec64 pre4k; do
  ncu -i /tmp/$f.ncu-rep --page details --csv > /tmp/rep/$f-details.csv 2>&1
  ncu -i /tmp/$f.ncu-rep --page source --csv --print-source sass > /tmp/rep/$f-source.csv 2>&1
done
ls -la /tmp/rep /tmp/*.ncu-rep
tar czf $OUT/rep.tgz -C /tmp/rep .
tail -n 4 $OUT/ncu1.log $OUT/ncu2.log
echo "done ($((SECONDS - t0)) s)"
