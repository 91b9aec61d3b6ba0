// A virtual synthetic checkpoint (checkpoint-writer.ts virtualModelCheckpoint: tensors generated on read) holds the
// same bytes as the files makeModelCheckpointSync writes with the same options, and the real loader reads it
// (loadModelWeightsFrom). `bench model` builds its flash / pro models this way without writing 6 GB a layer.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { test } from 'node:test';
import { Checkpoint } from '../src/checkpoint/checkpoint.js';
import { makeModelCheckpointSync, virtualModelCheckpoint } from '../src/model/checkpoint-writer.js';
import { loadModelWeights, loadModelWeightsFrom } from '../src/model/loader.js';

const OPTS = { preset: 'tiny' as const, layers: 3, mtpLayers: 0, expertDtype: 'fp8' as const, seed: 5, overrides: { vocab_size: 512 } };

test('virtual checkpoint == the written one, byte for byte, and loads like it', () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-virtual-'));
  try {
    const dir = path.join(tmp, 'ckpt');
    makeModelCheckpointSync({ ...OPTS, out: dir, tokenizerFiles: () => {} });
    const disk = Checkpoint.open(dir);
    const { checkpoint: virt, config } = virtualModelCheckpoint(OPTS);
    try {
      assert.deepEqual(virt.names().sort(), disk.names().sort());
      for (const name of disk.names()) {
        const a = disk.info(name); const b = virt.info(name);
        assert.equal(b.dtype, a.dtype, name);
        assert.deepEqual(b.shape, a.shape, name);
        assert.ok(Buffer.from(virt.readBytes(name)).equals(Buffer.from(disk.readBytes(name))), `${name}: bytes differ`);
      }
      assert.equal(config.numHiddenLayers, 3);
      assert.throws(() => virt.readBytes(disk.names()[0], new Uint8Array(1)), /destination holds 1 bytes/);
    } finally {
      disk.close();
    }
    const fromDisk = loadModelWeights(dir, { mtp: false });
    const fromVirtual = loadModelWeightsFrom(virt, config, { mtp: false });
    try {
      assert.deepEqual(fromVirtual.embed, fromDisk.embed);
      assert.deepEqual(fromVirtual.layers[1].attn.wqB.w, fromDisk.layers[1].attn.wqB.w);
      assert.deepEqual(fromVirtual.layers[1].attn.indexer?.weightsProj, fromDisk.layers[1].attn.indexer?.weightsProj);
      assert.deepEqual(fromVirtual.layers[2].moe.experts.get(3).w2.q, fromDisk.layers[2].moe.experts.get(3).w2.q);
      assert.equal(fromVirtual.layers.length, 3);
    } finally {
      fromDisk.close(); fromVirtual.close();
    }
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('virtual checkpoint refuses a repeated tensor name', () => {
  const t = { name: 'a', dtype: 'F32' as const, shape: [2], fill: () => {} };
  assert.throws(() => Checkpoint.virtual('(test)', [t, t]), /appears twice/);
});
