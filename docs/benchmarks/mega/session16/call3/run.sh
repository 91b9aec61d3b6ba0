#!/usr/bin/env bash
# session 16, call 3: why the L1 gather (d3c0dca) was ~2x slower: d3c0dca without the consumers' proxy fence (.cache/nf, an
# experiment, not a correct kernel) vs d3c0dca's kernel as measured in call 2; bench flash at normal-path T only
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
t0=$SECONDS
mkdir -p /tmp/keep

timeout 60 $R node .cache/nf/dist/src/cli/main.js bench moe --preset flash --tokens 512,2048,4096,8192 --backend mega_moe,unfused --no-anchor --no-gemm-alone --commit d3c0dca-nofence --out /tmp/keep/nofence-flash > /tmp/keep/nofence-flash.log 2>&1; echo "bench nofence rc $? ($((SECONDS - t0)) s)"
grep -E '^\| [0-9]+ \| (mega_moe|unfused)\+graph' /tmp/keep/nofence-flash/*.md | awk -F'|' '{print $2, $3, $4}'
grep -E "calc_diff" /tmp/keep/nofence-flash.log | head -4
tar czf $OUT/keep.tgz -C /tmp/keep .
