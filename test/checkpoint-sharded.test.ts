// Multi-file checkpoints: the sharded writer (size limit, index.json), and the reader over an index, a folder
// of files, a lone file; missing shards and index/header disagreements are refused by file and tensor.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint, INDEX_FILE, planShards, writeCheckpoint } from '../src/checkpoint/checkpoint.js';
import { CheckpointError } from '../src/checkpoint/errors.js';
import { writeSafetensors } from '../src/checkpoint/safetensors.js';
import { HostTensor } from '../src/tensor/host.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-shard-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const dir = () => path.join(tmp, `ckpt-${counter++}`);

function u8(n: number, fill: number): HostTensor<'U8'> {
  return new HostTensor('U8', [n], new Uint8Array(n).fill(fill));
}

function tensors(): [string, HostTensor][] {
  // 100 + 100 + 100 + 250 + 10 bytes
  return [['a', u8(100, 1)], ['b', u8(100, 2)], ['c', new HostTensor('F32', [25], new Float32Array(25).fill(3.5))], ['big', u8(250, 4)], ['z', u8(10, 5)]];
}

function rejects(fn: () => unknown, file: string, tensor: string | undefined, problem: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CheckpointError, String(err));
    assert.ok(err.message.includes(file), `"${err.message}" names ${file}`);
    if (tensor !== undefined) assert.equal(err.tensor, tensor);
    assert.match(err.message, problem);
    return true;
  });
}

describe('sharded checkpoints', () => {
  test('planShards starts a new shard past the limit; an oversized tensor gets its own', () => {
    const specs = tensors().map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
    const plan = planShards(specs, 220);
    assert.deepEqual(plan.map((s) => s.specs.map((x) => x.name)), [['a', 'b'], ['c'], ['big'], ['z']]);
    assert.deepEqual(plan.map((s) => s.file), ['model-00001-of-00004.safetensors', 'model-00002-of-00004.safetensors', 'model-00003-of-00004.safetensors', 'model-00004-of-00004.safetensors']);
    assert.deepEqual(planShards(specs).map((s) => s.file), ['model.safetensors']);
  });

  test('write sharded, read back every tensor through the index', () => {
    const d = dir();
    const files = writeCheckpoint(d, tensors(), { maxShardBytes: 220, metadata: { format: 'pt' } });
    assert.equal(files.length, 5);
    const index = JSON.parse(fs.readFileSync(path.join(d, INDEX_FILE), 'utf8'));
    assert.equal(index.metadata.total_size, 560);
    assert.equal(index.weight_map.big, 'model-00003-of-00004.safetensors');
    const ckpt = Checkpoint.open(d);
    assert.equal(ckpt.indexFile, path.join(d, INDEX_FILE));
    assert.equal(ckpt.files.length, 4);
    assert.deepEqual(ckpt.names().sort(), ['a', 'b', 'big', 'c', 'z']);
    for (const [name, t] of tensors()) {
      const r = ckpt.read(name);
      assert.deepEqual(Buffer.from(r.bytes()), Buffer.from(t.bytes()), name);
      assert.equal(ckpt.info(name).file, path.join(d, index.weight_map[name]));
    }
    assert.deepEqual(ckpt.metadataOf('z'), { format: 'pt' });
    ckpt.close();
  });

  test('one shard: model.safetensors, no index; opening the file itself works too', () => {
    const d = dir();
    writeCheckpoint(d, tensors());
    assert.deepEqual(fs.readdirSync(d), ['model.safetensors']);
    for (const p of [d, path.join(d, 'model.safetensors')]) {
      const ckpt = Checkpoint.open(p);
      assert.equal(ckpt.indexFile, undefined);
      assert.equal((ckpt.read('c').data as Float32Array)[24], 3.5);
      ckpt.close();
    }
  });

  test('a folder of files without an index is read as one checkpoint; repeated tensors are refused', () => {
    const d = dir();
    fs.mkdirSync(d);
    writeSafetensors(path.join(d, 'part1.safetensors'), { x: u8(3, 1) });
    writeSafetensors(path.join(d, 'part2.safetensors'), { y: u8(3, 2) });
    const ckpt = Checkpoint.open(d);
    assert.deepEqual(ckpt.names().sort(), ['x', 'y']);
    assert.equal((ckpt.read('y').data as Uint8Array)[0], 2);
    ckpt.close();
    writeSafetensors(path.join(d, 'part3.safetensors'), { x: u8(3, 9) });
    rejects(() => Checkpoint.open(d), 'part3.safetensors', 'x', /also present in .*part1\.safetensors/);
  });

  test('missing shard is named with a tensor it should hold', () => {
    const d = dir();
    writeCheckpoint(d, tensors(), { maxShardBytes: 220 });
    fs.rmSync(path.join(d, 'model-00003-of-00004.safetensors'));
    rejects(() => Checkpoint.open(d), 'model-00003-of-00004.safetensors', 'big', /missing shard/);
  });

  test('index that places a tensor in a shard whose header lacks it', () => {
    const d = dir();
    writeCheckpoint(d, tensors(), { maxShardBytes: 220 });
    const p = path.join(d, INDEX_FILE);
    const index = JSON.parse(fs.readFileSync(p, 'utf8'));
    index.weight_map.z = 'model-00001-of-00004.safetensors';
    fs.writeFileSync(p, JSON.stringify(index));
    const ckpt = Checkpoint.open(d);
    rejects(() => ckpt.read('z'), 'model-00001-of-00004.safetensors', 'z', /places this tensor in this shard, but its header does not hold it/);
    ckpt.close();
  });

  test('tensor not found, broken index, empty folder, missing path', () => {
    const d = dir();
    writeCheckpoint(d, tensors(), { maxShardBytes: 220 });
    const ckpt = Checkpoint.open(d);
    rejects(() => ckpt.read('layers.0.ffn.gate.weight'), INDEX_FILE, 'layers.0.ffn.gate.weight', /tensor not found in the checkpoint/);
    rejects(() => ckpt.read('a', { dtype: 'BF16' }), 'model-00001-of-00004.safetensors', 'a', /dtype mismatch/);
    ckpt.close();
    fs.writeFileSync(path.join(d, INDEX_FILE), '{"weight_map": ');
    rejects(() => Checkpoint.open(d), INDEX_FILE, undefined, /cannot read index/);
    fs.writeFileSync(path.join(d, INDEX_FILE), '{"metadata": {}}');
    rejects(() => Checkpoint.open(d), INDEX_FILE, undefined, /no "weight_map"/);
    fs.writeFileSync(path.join(d, INDEX_FILE), '{"weight_map": {"a": 7}}');
    rejects(() => Checkpoint.open(d), INDEX_FILE, 'a', /expected a shard file name/);
    const empty = dir();
    fs.mkdirSync(empty);
    rejects(() => Checkpoint.open(empty), empty, undefined, /no model\.safetensors\.index\.json and no \*\.safetensors files/);
    rejects(() => Checkpoint.open(path.join(tmp, 'absent')), 'absent', undefined, /no such file or directory/);
  });

  test('the writer refuses a tensor declared twice', () => {
    const d = dir();
    assert.throws(() => writeCheckpoint(d, [['a', u8(1, 1)], ['a', u8(1, 1)]]), /declared twice/);
  });
});
