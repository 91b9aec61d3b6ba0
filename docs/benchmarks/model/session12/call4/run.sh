#!/usr/bin/env bash
# session 12, call 4: GPU tests of the attention-side changes, bench model, ncu kernel durations (decode b64/32K, prefill 4K)
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --profile-runs 0 --commit $C"
t0=$SECONDS
timeout 240 $R node --test --test-concurrency=1 dist/test/gpu-indexer-scores.test.js dist/test/gpu-attn-mma.test.js dist/test/gpu-attn-layer.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 150 env "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run default $B --batches 1,64 --contexts 1k,32k --prefill 4k --runs 5 --prefill-runs 5
run prepblock MEGAMOE_INDEXER_PREP=block $B --batches 64 --contexts 32k --prefill 4k --runs 5 --prefill-runs 3
cp /tmp/b-default/model.md $OUT/default-model.md
pkill -9 -f gpuhost-node; sleep 1
timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-dec64.csv $B --enforce-eager --kv-cache-gib 8 --batches 64 --contexts 32k --prefill none --warmup 1 --runs 1 --out /tmp/o1 > $OUT/p1.log 2>&1; echo "ncu dec rc $? ($((SECONDS - t0)) s)"
pkill -9 -f gpuhost-node; sleep 1
timeout 100 ncu --clock-control none --metrics gpu__time_duration.sum --csv --log-file $OUT/ncu-prefill.csv $B --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0 --out /tmp/o2 > $OUT/p2.log 2>&1; echo "ncu pre rc $? ($((SECONDS - t0)) s)"
gzip $OUT/*.csv
tar czf $OUT/logs.tgz -C $OUT tests.log default.log prepblock.log p1.log p2.log && rm $OUT/tests.log $OUT/default.log $OUT/prepblock.log $OUT/p1.log $OUT/p2.log
echo "done ($((SECONDS - t0)) s)"
