#!/usr/bin/env bash
# session 15, call 5: the compact pools with the scales kept by grouped row (see the commit): the fused kernel's tiny
# and flash tests, a short bench moe flash
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
timeout 20 $R node dist/src/cli/main.js bench moe --preset flash --tokens 1,64,512,4096,8192 --backend mega_moe,unfused --no-anchor --no-gemm-alone --commit $C --out /tmp/keep/new-flash > /tmp/keep/new-flash.log 2>&1; echo "bench rc $? ($((SECONDS - t0)) s)"
grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/new-flash/*.md | awk -F'|' '{print $2, $3, $4}'
tail -2 /tmp/keep/new-flash.log
tar czf $OUT/keep.tgz -C /tmp/keep .
timeout 110 $R node --test --test-concurrency=1 --test-name-pattern='tiny layer|flash shape' dist/test/gpu-mega-moe.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/tests.log | head
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
