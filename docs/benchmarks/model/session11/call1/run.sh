#!/usr/bin/env bash
# session 11, call 1: prefill A/Bs (hc tiled, auto MoE, chunk), then the GPU tests of the changed code
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
B="$R node dist/src/cli/main.js bench model --preset flash --layers 4 --batches 1 --contexts 1k --prefill 4k --profile-runs 0 --runs 5 --prefill-runs 5 --commit $(cat .cache/dev/commit)"
nvidia-smi --query-gpu=name,clocks.sm,power.draw --format=csv > $OUT/gpu.txt
t0=$SECONDS
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 200 env "$@" --out $OUT/$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E '^\| (1|4K) ' $OUT/$name/model.md 2>/dev/null | cut -c1-80; }
run unfused-notiled MEGAMOE_HC_TILED=0 $B --moe-backend unfused
run unfused $B --moe-backend unfused
run auto $B --moe-backend auto
run auto-4096 $B --moe-backend auto --prefill-chunk 4096
run unfused-4096 $B --moe-backend unfused --prefill-chunk 4096
echo "== tests ($((SECONDS - t0)) s)"
timeout 240 $R node --test --test-concurrency=1 dist/test/gpu-model-row-ops.test.js dist/test/gpu-model-mega.test.js > $OUT/tests.log 2>&1; echo "tests rc $?"
grep -E '^# (pass|fail|skipped)|^not ok' $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
