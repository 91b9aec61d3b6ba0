#!/usr/bin/env bash
# session 14, call 5: hardware bf16 rounding in the row and attention kernels, q renorm in registers. GPU tests;
# bench model of this commit and of the base 6362f31 (.cache/base) in one call; ncu kernel durations (4K prefill)
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k,32k --runs 7 --prefill 4k,32k --prefill-runs 3"
t0=$SECONDS
timeout 230 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-attn-layer.test.js dist/test/gpu-indexer-scores.test.js dist/test/gpu-bf16-skinny.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js dist/test/gpu-model-layer.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 110 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run new $R node dist/src/cli/main.js bench model $A --commit $C
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 6362f31
mkdir -p /tmp/keep; cp /tmp/b-new/model.md /tmp/keep/new-model.md; cp /tmp/b-new/model.json /tmp/keep/new-model.json; cp /tmp/b-new/model.svg /tmp/keep/new-model.svg 2>/dev/null
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 80 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/keep/ncu-new.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > /tmp/keep/ncu.log 2>&1; echo "rc $?"
cp $OUT/tests.log /tmp/keep/; tar czf $OUT/keep.tgz -C /tmp/keep .; rm $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
