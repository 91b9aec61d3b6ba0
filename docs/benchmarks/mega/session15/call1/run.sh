#!/usr/bin/env bash
# session 15, call 1: the padding-free combine buffer (392e1f6): fused-kernel GPU tests, EP verify (tiny/flash), the
# model with the fused MoE; bench moe flash for this commit and the base 0b99c14 (.cache/base) in the same call
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
timeout 200 $R node --test --test-concurrency=1 dist/test/gpu-mega-moe.test.js dist/test/gpu-model-mega.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/tests.log
timeout 150 $R node --test --test-concurrency=1 --test-name-pattern='mega_moe --preset (tiny|flash)' dist/test/gpu-ep-verify.test.js > /tmp/keep/ep.log 2>&1; echo "ep rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/ep.log
B="bench moe --preset flash --tokens 1,8,64,512,2048,4096,8192,16384 --backend mega_moe,unfused --no-anchor --no-gemm-alone"
timeout 100 $R node dist/src/cli/main.js $B --commit $C --out /tmp/keep/new > /tmp/keep/new.log 2>&1; echo "new rc $? ($((SECONDS - t0)) s)"
timeout 100 $R node .cache/base/dist/src/cli/main.js $B --commit 0b99c14 --out /tmp/keep/base > /tmp/keep/base.log 2>&1; echo "base rc $? ($((SECONDS - t0)) s)"
grep -E '^\| [0-9]+ \|' /tmp/keep/new/*.md | head -30
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
