#!/usr/bin/env bash
# session 14, call 1: programmatic dependent launch. GPU tests with it on (the default); bench model A/B
# MEGAMOE_PDL=1 / 0 alternating, same process build.
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,8,64 --contexts 1k --runs 9 --prefill 4k --prefill-runs 3"
t0=$SECONDS
timeout 230 $R node --test --test-concurrency=1 dist/test/gpu-cuda-launch.test.js dist/test/gpu-model-row-ops.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-model-graphs.test.js dist/test/gpu-model-layer.test.js dist/test/gpu-serve.test.js dist/test/gpu-attn-layer.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 100 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run pdl1a env MEGAMOE_PDL=1 $R node dist/src/cli/main.js bench model $A --commit $C
run pdl0a env MEGAMOE_PDL=0 $R node dist/src/cli/main.js bench model $A --commit $C
run pdl1b env MEGAMOE_PDL=1 $R node dist/src/cli/main.js bench model $A --commit $C
run pdl0b env MEGAMOE_PDL=0 $R node dist/src/cli/main.js bench model $A --commit $C
cp /tmp/b-pdl1a/model.md $OUT/pdl1a-model.md 2>/dev/null
gzip $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
