#!/usr/bin/env bash
# session 12, call 5: GPU tests at the final attention code; bench model A/B against 000a53c (the session's base, built into .cache/base) in one call; ncu kernel durations of the prefill
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k,32k --prefill 4k --runs 5 --prefill-runs 5"
t0=$SECONDS
timeout 200 $R node --test --test-concurrency=1 dist/test/gpu-indexer-scores.test.js dist/test/gpu-attn-mma.test.js dist/test/gpu-attn-layer.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 120 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run new $R node dist/src/cli/main.js bench model $A --commit $C
run base $R node .cache/base/dist/src/cli/main.js bench model $A --commit 000a53c
run new-r2 $R node dist/src/cli/main.js bench model $A --commit $C
cp /tmp/b-new/model.md $OUT/new-model.md; cp /tmp/b-new/model.json $OUT/new-model.json
pkill -9 -f gpuhost-node; sleep 1
timeout 90 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-prefill.csv $R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o2 > $OUT/p2.log 2>&1; echo "ncu pre rc $? ($((SECONDS - t0)) s)"
gzip $OUT/*.csv $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
