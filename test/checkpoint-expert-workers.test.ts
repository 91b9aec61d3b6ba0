// Routed experts loaded on worker threads == loaded on the main thread (fp8 and fp4 checkpoints).
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadExpertsParallel } from '../src/checkpoint/expert-workers.js';
import { loadMoeLayer } from '../src/checkpoint/moe-layer.js';
import { makeCheckpointSync } from '../src/checkpoint/synthetic.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-workers-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

for (const dtype of ['fp4', 'fp8'] as const) {
  test(`${dtype}: parallel expert loading gives the same bytes and conversion report as serial`, async () => {
    const dir = path.join(tmp, dtype);
    makeCheckpointSync({ preset: 'tiny', layers: 2, expertDtype: dtype, seed: 4, out: dir, shardSize: 500_000 });
    const par = loadMoeLayer(dir, { layer: 1, epRank: 1, epSize: 2 });
    const ser = loadMoeLayer(dir, { layer: 1, epRank: 1, epSize: 2 });
    try {
      par.experts.get(9); // one already loaded: the workers skip it
      const r = await loadExpertsParallel(dir, par, { threads: 2 });
      assert.deepEqual(r, { threads: 2, experts: 7 });
      assert.equal(par.experts.loadedCount, 8);
      for (const id of ser.experts.ids) {
        const a = par.experts.get(id); const b = ser.experts.get(id);
        for (const p of ['w1', 'w2', 'w3'] as const) {
          assert.deepEqual(a[p].q, b[p].q, `expert ${id} ${p} codes`);
          assert.deepEqual(a[p].s, b[p].s, `expert ${id} ${p} scales`);
          assert.equal(a[p].n, b[p].n);
        }
      }
      assert.deepEqual(par.experts.conversion(), ser.experts.conversion());
    } finally { par.close(); ser.close(); }
  });
}

test('a worker error is reported', async () => {
  const dir = path.join(tmp, 'broken');
  makeCheckpointSync({ preset: 'tiny', layers: 1, expertDtype: 'fp8', seed: 4, out: dir });
  const layer = loadMoeLayer(dir, { layer: 0 });
  try {
    fs.rmSync(path.join(dir, 'config.json'));
    await assert.rejects(loadExpertsParallel(dir, layer, { threads: 1 }), /config\.json/);
  } finally { layer.close(); }
});
