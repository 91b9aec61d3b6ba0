// The GPU model with the fused MoE kernel in every layer (GpuModel moeBackend 'mega_moe', `bench model --moe-backend
// mega_moe`) against the same model on the unfused backend, on the GPU host: the tiny whole-model checkpoint of
// gpu-model-forward.test.ts (window + hash-routed MoE, ratio 4 + indexer, ratio 128), one load of the weights, both
// models fed the same calls (a prefill, a chunked prefill mixed with a decode, decode batches). The fused kernel is
// bit-identical to the unfused pipeline (docs/MEGA_MOE.md) and every other kernel of the step is deterministic, so
// the logits must be equal bit for bit. Hidden size 256, not tiny's 128: the fused kernel's tiles take two
// 128-column halves of the hidden dim. Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { gpuSkipReason } from '../src/cuda/index.js';
import { GpuModel, type GpuSequence } from '../src/gpu-model/model.js';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import { DeepSeekV4Model } from '../src/model/model.js';

const skip = gpuSkipReason();
const VOCAB = 1024;
const toks = (seed: number, n: number) => Array.from({ length: n }, (_, i) => (seed * 7919 + i * 104729 + ((i * i) % 13)) % VOCAB);

test('GPU model step: mega_moe in every layer, and auto (fused from 20 rows), == the unfused backend, logits bit for bit (tiny, 3 layers)', { skip, timeout: 900_000 }, async () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-gpu-mega-'));
  const dir = path.join(tmp, 'tiny');
  makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 13, out: dir, overrides: { vocab_size: VOCAB, hidden_size: 256 } });
  const cpu = await DeepSeekV4Model.load(dir);
  const models: GpuModel[] = [];
  try {
    // auto with its threshold at 20 rows: calls 0 and 1 (40 and 25 rows) on the fused kernel, the decodes unfused.
    // Every fused layer of a model shares one symmetric buffer (MegaMoeShared).
    const prevMin = process.env.MEGAMOE_MODEL_MEGA_MIN_ROWS;
    process.env.MEGAMOE_MODEL_MEGA_MIN_ROWS = '20';
    try {
      for (const moeBackend of ['unfused', 'mega_moe', 'auto'] as const) {
        models.push(await GpuModel.create(cpu.weights, {
          maxSequences: 2, maxRows: 64, maxItems: 2, maxLogitRows: 64, maxContext: 256, blockRows: 16,
          cacheBytes: 2 ** 28, memoryFraction: 1, maxBlocksPerKind: 32, moeBackend,
        }));
      }
    } finally {
      if (prevMin === undefined) delete process.env.MEGAMOE_MODEL_MEGA_MIN_ROWS; else process.env.MEGAMOE_MODEL_MEGA_MIN_ROWS = prevMin;
    }
    const seqs = models.map((m) => [m.createSequence(), m.createSequence()] as GpuSequence[]);
    const calls: Array<Array<{ s: number; tokens: number[] }>> = [
      [{ s: 0, tokens: toks(1, 40) }],
      [{ s: 1, tokens: toks(2, 24) }, { s: 0, tokens: toks(3, 1) }],
      [{ s: 0, tokens: toks(4, 1) }, { s: 1, tokens: toks(5, 1) }],
      [{ s: 1, tokens: toks(6, 1) }, { s: 0, tokens: toks(7, 1) }],
    ];
    for (const [c, call] of calls.entries()) {
      const out: Float32Array[][] = [];
      for (const [m, model] of models.entries()) {
        out.push(await model.forward(call.map((it) => ({ seq: seqs[m][it.s], tokens: it.tokens })), { allLogits: true }));
      }
      for (const [m, name] of [[1, 'mega_moe'], [2, 'auto']] as const) {
        for (const [i, a] of out[0].entries()) {
          const b = out[m][i];
          assert.equal(a.length, b.length);
          let differ = 0;
          for (let j = 0; j < a.length; j++) if (!Object.is(a[j], b[j])) differ++;
          assert.equal(differ, 0, `call ${c} item ${i}: ${differ} of ${a.length} logits differ between ${name} and unfused`);
          assert.ok(b.every(Number.isFinite), `call ${c} item ${i}: non-finite logits (${name})`);
        }
      }
    }
  } finally {
    for (const m of models) m.dispose();
    cpu.dispose();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
