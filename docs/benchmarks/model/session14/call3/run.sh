#!/usr/bin/env bash
# session 14, call 3: the sparse attention's S phase / softmax / bf16 conversions. GPU tests; bench model of this
# commit and of the base 6362f31 (.cache/base) in one call; ncu kernel durations of both for the 4K prefill
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k,32k --runs 7 --prefill 4k,32k --prefill-runs 3"
t0=$SECONDS
timeout 200 $R node --test --test-concurrency=1 dist/test/gpu-attn-layer.test.js dist/test/gpu-attn-mma.test.js dist/test/gpu-indexer-scores.test.js dist/test/gpu-bf16-skinny.test.js dist/test/gpu-attn-cache.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
grep -E 'attention out' $OUT/tests.log | head -20
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 110 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 6362f31
run new $R node dist/src/cli/main.js bench model $A --commit $C
cp /tmp/b-new/model.md $OUT/new-model.md; cp /tmp/b-new/model.json $OUT/new-model.json
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-new.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > $OUT/ncu.log 2>&1; echo "rc $?"
pkill -9 -f gpuhost-node; sleep 1
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-base.csv $R node .cache/base/dist/src/cli/main.js bench model $P --out /tmp/o3 > $OUT/ncu-b.log 2>&1; echo "rc $?"
gzip $OUT/*.csv $OUT/tests.log $OUT/ncu.log $OUT/ncu-b.log
echo "done ($((SECONDS - t0)) s)"
