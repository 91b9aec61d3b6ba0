#!/usr/bin/env bash
# session 14, call 6 (the final device code): GPU tests; ncu kernel durations of the 4K prefill for this commit and
# for the base 6362f31 (.cache/base); bench model of this commit
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
timeout 150 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-attn-layer.test.js dist/test/gpu-indexer-scores.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/tests.log
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
echo "== ncu ($((SECONDS - t0)) s)"
timeout 45 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/keep/ncu-new.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o2 > /tmp/keep/ncu.log 2>&1; echo "rc $?"
pkill -9 -f gpuhost-node; sleep 1
timeout 45 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file /tmp/keep/ncu-base.csv $R node .cache/base/dist/src/cli/main.js bench model $P --out /tmp/o3 > /tmp/keep/ncu-b.log 2>&1; echo "rc $?"
pkill -9 -f gpuhost-node; sleep 1
echo "== bench ($((SECONDS - t0)) s)"
timeout 60 $R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k --runs 7 --prefill 4k,32k --prefill-runs 3 --commit $C --out /tmp/b-new > /tmp/keep/new.log 2>&1; echo "rc $?"
grep -E 'prefill [0-9]+:|decode batch' /tmp/keep/new.log
cp /tmp/b-new/model.md /tmp/b-new/model.json /tmp/b-new/model.svg /tmp/keep/ 2>/dev/null
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
