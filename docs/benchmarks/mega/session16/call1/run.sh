#!/usr/bin/env bash
# session 16, call 1: HEAD (33b5c7d) verification: gpu-mega-moe (tiny/flash/pro) + gpu-model-mega, verify --ep 2/4 mega_moe, bench moe flash+pro
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv > /tmp/keep/gpu.txt
timeout 290 $R node --test --test-concurrency=1 dist/test/gpu-mega-moe.test.js dist/test/gpu-model-mega.test.js > /tmp/keep/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail|todo|skip)|^not ok' /tmp/keep/tests.log | head
for ep in 2 4; do for p in tiny flash; do
  timeout 80 $R node dist/src/cli/main.js verify --ep $ep --backend mega_moe --preset $p > /tmp/keep/verify-ep$ep-$p.log 2>&1; echo "verify ep$ep $p rc $? ($((SECONDS - t0)) s)"; tail -3 /tmp/keep/verify-ep$ep-$p.log
done; done
for p in flash pro; do
  T=1,8,64,512,2048,4096,8192; [ $p = flash ] && T=$T,16384
  timeout 60 $R node dist/src/cli/main.js bench moe --preset $p --tokens $T --backend mega_moe,unfused --no-anchor --no-gemm-alone --commit $C --out /tmp/keep/new-$p > /tmp/keep/new-$p.log 2>&1; echo "bench $p rc $? ($((SECONDS - t0)) s)"
  grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/new-$p/*.md | awk -F'|' '{print $2, $3, $4}'
done
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
