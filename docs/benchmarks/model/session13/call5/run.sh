#!/usr/bin/env bash
# session 13, call 5 (final kernels): GPU tests of the row ops (the tiled hc kernel, shared-space pointers, weights
# through the cp.async ring) and the model; bench model (decode b1 / b64 at 1K / 32K, prefill 4K and 32K) of this
# commit and of the base 0c3cc40 in one call (base first); ncu kernel durations of this commit's 4K prefill
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k,32k --runs 7 --prefill 4k,32k --prefill-runs 5"
t0=$SECONDS
timeout 150 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 100 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 0c3cc40
run new $R node dist/src/cli/main.js bench model $A --commit $C
cp /tmp/b-new/model.md $OUT/new-model.md; cp /tmp/b-new/model.json $OUT/new-model.json; cp /tmp/b-new/model.svg $OUT/new-model.svg 2>/dev/null
cp /tmp/b-base/model.json $OUT/base-model.json
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-prefill.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > $OUT/ncu.log 2>&1; echo "rc $?"
gzip $OUT/*.csv $OUT/tests.log $OUT/ncu.log
echo "done ($((SECONDS - t0)) s)"
