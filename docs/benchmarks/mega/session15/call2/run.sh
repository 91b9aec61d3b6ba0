#!/usr/bin/env bash
# session 15, call 2: L1 row gathers from the staged tokens (0ee6ce6): fused-kernel GPU tests, EP verify (tiny/flash),
# the model with the fused MoE; bench moe flash + pro for this commit and the base 0b99c14 (.cache/base), same call
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
timeout 270 $R node --test --test-concurrency=1 dist/test/gpu-mega-moe.test.js dist/test/gpu-model-mega.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/tests.log | head
timeout 110 $R node --test --test-concurrency=1 --test-name-pattern='mega_moe --preset (tiny|flash)' dist/test/gpu-ep-verify.test.js > /tmp/keep/ep.log 2>&1; echo "ep rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/ep.log
for p in flash pro; do
  T=1,8,64,512,2048,4096,8192; [ $p = flash ] && T=$T,16384
  B="bench moe --preset $p --tokens $T --backend mega_moe,unfused --no-anchor --no-gemm-alone"
  timeout 60 $R node dist/src/cli/main.js $B --commit $C --out /tmp/keep/new-$p > /tmp/keep/new-$p.log 2>&1; echo "new $p rc $? ($((SECONDS - t0)) s)"
  timeout 60 $R node .cache/base/dist/src/cli/main.js $B --commit 0b99c14 --out /tmp/keep/base-$p > /tmp/keep/base-$p.log 2>&1; echo "base $p rc $? ($((SECONDS - t0)) s)"
  grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/new-$p/*.md | awk -F'|' '{print $2, $3, $4}'
done
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
