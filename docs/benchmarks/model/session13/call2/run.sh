#!/usr/bin/env bash
# session 13, call 2: GPU tests (row ops with the new tiled hc kernel, routing after the cp.async header move, model
# forward / graphs with 512-row indexer passes, indexer scores); prefill 4K A/B of this commit against the session's
# base 0c3cc40 (.cache/base) in one call, twice each; ncu kernel durations of this commit's 4K prefill
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches none --contexts none --prefill 4k --prefill-runs 5"
t0=$SECONDS
timeout 200 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-routing.test.js dist/test/gpu-indexer-scores.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 80 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run new $R node dist/src/cli/main.js bench model $A --commit $C
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 0c3cc40
run new-r2 $R node dist/src/cli/main.js bench model $A --commit $C
run base-r2 $R node .cache/base/dist/src/cli/main.js bench model $A --commit 0c3cc40
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active --csv --log-file $OUT/ncu-prefill.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > $OUT/ncu.log 2>&1; echo "rc $?"
gzip $OUT/*.csv $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
