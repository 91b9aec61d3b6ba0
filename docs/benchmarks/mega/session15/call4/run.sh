#!/usr/bin/env bash
# session 15, call 4: the pools without padding (d3deeab): fused-kernel GPU tests, bench moe (this commit only: the
# base's figures of call 3 are the reference), verify --ep 2 tiny / flash
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
timeout 255 $R node --test --test-concurrency=1 dist/test/gpu-mega-moe.test.js dist/test/gpu-model-mega.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/tests.log | head
tar czf $OUT/keep.tgz -C /tmp/keep .
timeout 20 $R node dist/src/cli/main.js bench moe --preset flash --tokens 1,64,512,4096,8192 --backend mega_moe,unfused --no-anchor --no-gemm-alone --commit $C --out /tmp/keep/new-flash > /tmp/keep/new-flash.log 2>&1; echo "bench rc $? ($((SECONDS - t0)) s)"
grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/new-flash/*.md | awk -F'|' '{print $2, $3, $4}'
tar czf $OUT/keep.tgz -C /tmp/keep .
timeout 50 $R node --test --test-concurrency=1 --test-name-pattern='ep 2 --backend mega_moe --preset (tiny|flash)' dist/test/gpu-ep-verify.test.js > /tmp/keep/ep.log 2>&1; echo "ep rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/ep.log
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
