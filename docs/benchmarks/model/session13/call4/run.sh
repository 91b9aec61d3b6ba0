#!/usr/bin/env bash
# session 13, call 4: decode b1 A/B (base first this time: base, new, base, new); ncu source-level profile of one launch
# each of mo_hc_pre_mix_tiled and attn_sparse_mma2s in the 4K prefill
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,8 --contexts 1k --runs 15 --prefill none"
t0=$SECONDS
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 80 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 0c3cc40
run new $R node dist/src/cli/main.js bench model $A --commit $C
run base-r2 $R node .cache/base/dist/src/cli/main.js bench model $A --commit 0c3cc40
run new-r2 $R node dist/src/cli/main.js bench model $A --commit $C
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 150 ncu --clock-control none --kernel-name regex:'mo_hc_pre_mix_tiled|attn_sparse_mma2s' --launch-count 2 --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats --section SchedulerStats --section SourceCounters --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --import-source yes -o /tmp/prof $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > $OUT/ncu.log 2>&1; echo "rc $?"
ncu -i /tmp/prof.ncu-rep --page details --csv > $OUT/details.csv 2>/dev/null
ncu -i /tmp/prof.ncu-rep --page source --csv --print-source sass > $OUT/src.csv 2>/dev/null
gzip $OUT/*.csv $OUT/ncu.log
echo "done ($((SECONDS - t0)) s)"
