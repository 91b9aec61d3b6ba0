#!/usr/bin/env bash
# session 13, call 1: GPU tests (padded decode graphs, the two-pass sparse attention entries, the 128-dim-head case);
# prefill 4K A/B in one call: default, MEGAMOE_ATTN_QPASS=0 (the old entries), MEGAMOE_INDEXER_CHUNK_ROWS=512; ncu of the sparse kernels
export MEGAMOE_CACHE_DIR=/tmp/mmcache
R=.gpuhost/run
C=$(cat .cache/dev/commit)
A="--preset flash --layers 4 --profile-runs 0 --batches none --contexts none --prefill 4k --prefill-runs 5"
t0=$SECONDS
timeout 230 $R node --test --test-concurrency=1 dist/test/gpu-attn-layer.test.js dist/test/gpu-model-graphs.test.js dist/test/gpu-model-forward.test.js dist/test/gpu-serve.test.js > $OUT/tests.log 2>&1; echo "tests rc $? ($((SECONDS - t0)) s)"
grep -E '^# (pass|fail)|^not ok' $OUT/tests.log
run() { local name=$1; shift; echo "== $name ($((SECONDS - t0)) s)"; timeout 80 "$@" --out /tmp/b-$name > $OUT/$name.log 2>&1; echo "rc $?"; grep -E 'prefill [0-9]+:|decode batch' $OUT/$name.log; }
run new $R node dist/src/cli/main.js bench model $A --commit $C
run qpass0 env MEGAMOE_ATTN_QPASS=0 $R node dist/src/cli/main.js bench model $A --commit $C
run chunk512 env MEGAMOE_INDEXER_CHUNK_ROWS=512 $R node dist/src/cli/main.js bench model $A --commit $C
run new-r2 $R node dist/src/cli/main.js bench model $A --commit $C
pkill -9 -f gpuhost-node; sleep 1
P="--preset flash --layers 4 --profile-runs 0 --kv-cache-gib 8 --batches none --contexts none --prefill 4k --prefill-runs 1 --warmup 0"
for q in 1 0; do
  echo "== ncu qpass $q ($((SECONDS - t0)) s)"
  MEGAMOE_ATTN_QPASS=$q timeout 70 ncu --clock-control none --kernel-name regex:attn_sparse --metrics gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,lts__t_bytes.sum --csv --log-file $OUT/ncu-q$q.csv $R node dist/src/cli/main.js bench model $P --out /tmp/o$q > /dev/null 2>&1; echo "rc $?"
  pkill -9 -f gpuhost-node; sleep 1
done
gzip $OUT/*.csv $OUT/tests.log
echo "done ($((SECONDS - t0)) s)"
