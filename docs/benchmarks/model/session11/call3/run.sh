#!/usr/bin/env bash
# session 11, call 3: tests of the hc kernels (tiled v2, _fin entries) and the model; prefill A/B; ncu of the 4096-token call
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --commit $(cat .cache/dev/commit)"
t0=$SECONDS
timeout 200 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-model-mega.test.js dist/test/gpu-model-graphs.test.js dist/test/gpu-model-forward.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 150 env "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run default $B --batches 1,64 --contexts 1k --prefill 4k --runs 5 --prefill-runs 5
run notiled MEGAMOE_HC_TILED=0 $B --batches 1,64 --contexts 1k --prefill 4k --runs 5 --prefill-runs 5
run default-r2 $B --batches 1,64 --contexts 1k --prefill 4k --runs 5 --prefill-runs 5
cp /tmp/b-default/model.md $OUT/default-model.md
timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-prefill.csv $B --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o1 > $OUT/p.log 2>&1; echo "ncu rc $? ($((SECONDS - t0)) s)"
gzip $OUT/*.csv
