#!/usr/bin/env bash
# session 12, call 6: attention GPU tests at 10e1ce7; decode A/B of 10e1ce7 / b7a6e5d / 000a53c (base) in one call, then prefill of 10e1ce7
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k,32k --runs 7"
t0=$SECONDS
timeout 100 $R node --test --test-concurrency=1 dist/test/gpu-attn-mma.test.js dist/test/gpu-attn-layer.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 100 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run new $R node dist/src/cli/main.js bench model $A --prefill 4k --prefill-runs 5 --commit $C
run b7 $R node .cache/b7/dist/src/cli/main.js bench model $A --prefill none --commit b7a6e5d
run base $R node .cache/base/dist/src/cli/main.js bench model $A --prefill none --commit 000a53c
cp /tmp/b-new/model.md $OUT/new-model.md; cp /tmp/b-new/model.json $OUT/new-model.json
gzip $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
