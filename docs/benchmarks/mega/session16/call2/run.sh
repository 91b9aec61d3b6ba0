#!/usr/bin/env bash
# session 16, call 2: the L1 gather from the staged tokens (this commit) vs the base 33b5c7d (.cache/base), same call;
# bench flash first (fast signal), then gpu-mega-moe, verify --ep 2 flash, gpu-model-mega, bench pro
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
t0=$SECONDS
mkdir -p /tmp/keep
bench() {  # $1 preset, $2 tag, $3 main.js, $4 commit
  local T=1,8,64,512,2048,4096,8192; [ $1 = flash ] && T=$T,16384
  timeout 75 $R node $3 bench moe --preset $1 --tokens $T --backend mega_moe,unfused --no-anchor --no-gemm-alone --commit $4 --out /tmp/keep/$2-$1 > /tmp/keep/$2-$1.log 2>&1; echo "bench $2 $1 rc $? ($((SECONDS - t0)) s)"
  grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/$2-$1/*.md | awk -F'|' '{print $2, $3, $4}' | paste -sd' ' | sed 's/  */ /g'
}
bench flash new dist/src/cli/main.js $C
grep -E "calc_diff" /tmp/keep/new-flash.log | grep -v "= 0.00e+0" | head -5; grep -ciE "error" /tmp/keep/new-flash.log
bench flash base .cache/base/dist/src/cli/main.js 33b5c7d
timeout 300 $R node --test --test-concurrency=1 dist/test/gpu-mega-moe.test.js > /tmp/keep/tests.log 2>&1; echo "gpu-mega-moe rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok|^ok' /tmp/keep/tests.log | head
timeout 50 $R node dist/src/cli/main.js verify --ep 2 --backend mega_moe --preset flash > /tmp/keep/verify-ep2-flash.log 2>&1; echo "verify ep2 flash rc $? ($((SECONDS - t0)) s)"; tail -1 /tmp/keep/verify-ep2-flash.log
bench pro new dist/src/cli/main.js $C
bench pro base .cache/base/dist/src/cli/main.js 33b5c7d
timeout 80 $R node --test dist/test/gpu-model-mega.test.js > /tmp/keep/model.log 2>&1; echo "gpu-model-mega rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' /tmp/keep/model.log | head -4
tar czf $OUT/keep.tgz -C /tmp/keep .
echo "done ($((SECONDS - t0)) s)"
