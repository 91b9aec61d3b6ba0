// safetensors single-file reader/writer: round trips of every dtype, the header format, streaming writes,
// and every malformed input refused with an error naming the file and the tensor.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { CheckpointError } from '../src/checkpoint/errors.js';
import { SafetensorsFile, SafetensorsWriter, writeSafetensors } from '../src/checkpoint/safetensors.js';
import { allocStorage, HostTensor } from '../src/tensor/host.js';
import type { DType } from '../src/tensor/host.js';
import { Rng } from '../src/util/rng.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-st-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
let counter = 0;
const file = (name = 'f') => path.join(tmp, `${name}-${counter++}.safetensors`);

/** A tensor of `dtype` filled with varied bytes (every bit pattern kind, incl. NaN codes and negative ints). */
function randomTensor(dtype: DType, shape: number[], seed: number): HostTensor {
  const rng = new Rng(seed);
  const t = new HostTensor(dtype, shape, allocStorage(dtype, shape.reduce((a, b) => a * b, 1)));
  const bytes = t.bytes();
  for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
  return t;
}

/** Writes a raw safetensors file: 8-byte length, header text, data bytes. */
function rawFile(header: string | object, data: Uint8Array = new Uint8Array(0), lengthOverride?: bigint): string {
  const p = file('raw');
  const text = typeof header === 'string' ? header : JSON.stringify(header);
  const h = new TextEncoder().encode(text);
  const len = new Uint8Array(8);
  new DataView(len.buffer).setBigUint64(0, lengthOverride ?? BigInt(h.length), true);
  fs.writeFileSync(p, Buffer.concat([len, h, data]));
  return p;
}

function expectCheckpointError(fn: () => unknown, fileName: string, tensor: string | undefined, problem: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof CheckpointError, `expected CheckpointError, got ${String(err)}`);
    assert.ok(err.message.includes(fileName), `message "${err.message}" should name the file ${fileName}`);
    if (tensor !== undefined) {
      assert.equal(err.tensor, tensor);
      assert.ok(err.message.includes(`"${tensor}"`), `message "${err.message}" should name tensor ${tensor}`);
    }
    assert.match(err.message, problem);
    return true;
  });
}

describe('safetensors round trips', () => {
  const dtypes: DType[] = ['F64', 'F32', 'BF16', 'F8_E4M3', 'F8_E8M0', 'I8', 'U8', 'I32', 'I64'];

  test('every dtype survives write + read bit for bit, with metadata', () => {
    const p = file();
    const tensors = dtypes.map((d, i) => [`t.${d}`, randomTensor(d, [3, 5 + i], 100 + i)] as const);
    writeSafetensors(p, tensors, { metadata: { format: 'pt', note: 'round trip' } });
    const f = SafetensorsFile.open(p);
    try {
      assert.deepEqual(f.metadata, { format: 'pt', note: 'round trip' });
      assert.deepEqual(f.names().sort(), tensors.map(([n]) => n).sort());
      for (const [name, t] of tensors) {
        const r = f.read(name);
        assert.equal(r.dtype, t.dtype);
        assert.deepEqual(r.shape, t.shape);
        assert.equal(r.data.constructor, t.data.constructor, `${name} storage kind`);
        assert.deepEqual(Buffer.from(r.bytes()), Buffer.from(t.bytes()), `${name} bytes`);
      }
    } finally {
      f.close();
    }
  });

  test('the header is padded with spaces so the data section starts 8-byte aligned', () => {
    const p = file();
    writeSafetensors(p, { a: randomTensor('U8', [3], 1) });
    const buf = fs.readFileSync(p);
    const n = Number(buf.readBigUInt64LE(0));
    assert.equal((8 + n) % 8, 0);
    const header = buf.subarray(8, 8 + n).toString('utf8');
    assert.match(header, /^\{.*\} *$/);
    assert.equal(buf.length, 8 + n + 3);
  });

  test('scalars and empty tensors round trip', () => {
    const p = file();
    writeSafetensors(p, [['scalar', new HostTensor('F32', [], Float32Array.of(2.5))], ['empty', new HostTensor('I64', [0, 4])], ['after', randomTensor('BF16', [2], 3)]]);
    const f = SafetensorsFile.open(p);
    assert.equal((f.read('scalar').data as Float32Array)[0], 2.5);
    assert.deepEqual(f.read('empty').shape, [0, 4]);
    assert.equal(f.read('empty').numel, 0);
    assert.equal(f.read('after').numel, 2);
    f.close();
  });

  test('streamed writes: a tensor may come in pieces, sync or async; readBytes reads into a given buffer', async () => {
    const p = file();
    const big = randomTensor('F32', [64, 33], 7);
    const w = SafetensorsWriter.create(p, [{ name: 'big', dtype: 'F32', shape: [64, 33] }, { name: 'tail', dtype: 'U8', shape: [5] }]);
    const bytes = big.bytes();
    w.write('big', bytes.subarray(0, 1000));
    await w.writeAsync('big', bytes.subarray(1000, 5000));
    w.write('big', bytes.subarray(5000));
    assert.equal(w.pending, 'tail');
    await w.writeAsync('tail', Uint8Array.of(1, 2, 3, 4, 5));
    w.close();
    assert.ok(!fs.existsSync(`${p}.partial`), 'the partial file is renamed into place');
    const f = SafetensorsFile.open(p);
    const dst = new Uint8Array(bytes.length);
    f.readBytes('big', dst);
    assert.deepEqual(Buffer.from(dst), Buffer.from(bytes));
    assert.deepEqual([...f.readBytes('tail')], [1, 2, 3, 4, 5]);
    f.close();
  });

  test('the writer refuses out-of-order tensors, too many bytes and an early close (and leaves no file)', () => {
    const p = file();
    const w = SafetensorsWriter.create(p, [{ name: 'a', dtype: 'U8', shape: [2] }, { name: 'b', dtype: 'U8', shape: [2] }]);
    expectCheckpointError(() => w.write('b', Uint8Array.of(1, 2)), p, 'b', /out of order: tensor "a" is due next/);
    expectCheckpointError(() => w.write('a', Uint8Array.of(1, 2, 3)), p, 'a', /got 3 bytes, but U8\[2\] has 2/);
    w.write('a', Uint8Array.of(1, 2));
    expectCheckpointError(() => w.close(), p, 'b', /closed before all tensors were written/);
    assert.ok(!fs.existsSync(p) && !fs.existsSync(`${p}.partial`));
    expectCheckpointError(() => SafetensorsWriter.create(file(), [{ name: 'x', dtype: 'U8', shape: [1] }, { name: 'x', dtype: 'U8', shape: [1] }]), '', 'x', /declared twice/);
  });
});

describe('safetensors malformed input', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = new Uint8Array(8);

  test('missing file', () => {
    const p = path.join(tmp, 'nope.safetensors');
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /no such file/);
  });

  test('file shorter than the length field', () => {
    const p = file('short');
    fs.writeFileSync(p, Buffer.from([1, 2, 3]));
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /shorter than the 8-byte header length/);
  });

  test('bad header length: absurdly large, zero, or past the end of the file', () => {
    let p = rawFile(ok, eight, 1n << 60n);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /bad header length/);
    p = rawFile(ok, eight, 0n);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /bad header length 0/);
    p = rawFile(ok, eight, 5000n);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /runs past the end/);
  });

  test('header that is not JSON, not an object, or not UTF-8', () => {
    let p = rawFile('{"a": {"dtype": "F32",', eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /not valid JSON/);
    p = rawFile('[1, 2]', eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /does not start with "\{"/);
    const bad = file('utf');
    const h = Buffer.from([0x7b, 0xff, 0xfe, 0x7d]);
    const len = Buffer.alloc(8); len.writeBigUInt64LE(BigInt(h.length));
    fs.writeFileSync(bad, Buffer.concat([len, h]));
    expectCheckpointError(() => SafetensorsFile.open(bad), bad, undefined, /not valid UTF-8/);
  });

  test('entries with missing or ill-typed fields name the tensor', () => {
    let p = rawFile({ w: { shape: [2], data_offsets: [0, 8] } }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'w', /no string "dtype"/);
    p = rawFile({ w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'w', /"shape" must be an array of non-negative integers/);
    p = rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'w', /"data_offsets" must be \[begin, end\]/);
    p = rawFile({ __metadata__: { n: 3 }, ...ok }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, undefined, /"__metadata__" must be an object of string values/);
  });

  test('unknown dtype', () => {
    const p = rawFile({ 'layers.0.w': { dtype: 'F7', shape: [2], data_offsets: [0, 8] } }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'layers.0.w', /unknown dtype "F7"/);
  });

  test('a valid safetensors dtype without host storage is refused at read time only', () => {
    const p = rawFile({ half: { dtype: 'F16', shape: [4], data_offsets: [0, 8] }, ...{ b: { dtype: 'U8', shape: [1], data_offsets: [8, 9] } } }, new Uint8Array(9));
    const f = SafetensorsFile.open(p);
    assert.equal(f.read('b').numel, 1);
    expectCheckpointError(() => f.read('half'), p, 'half', /F16 is a valid safetensors dtype but megamoe has no host storage/);
    f.close();
  });

  test('size mismatch between shape and data_offsets', () => {
    const p = rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'w', /size mismatch: F32\[3\] needs 12 bytes but data_offsets \[0, 8\] span 8/);
  });

  test('offsets out of range (truncated file)', () => {
    const p = rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [4], data_offsets: [8, 24] } }, new Uint8Array(20));
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'b', /run past the end of the data section \(20 bytes; truncated file\?\)/);
  });

  test('a real file cut short is reported as truncated, naming the tensor', () => {
    const p = file('cut');
    writeSafetensors(p, [['first', randomTensor('F32', [16], 1)], ['second', randomTensor('F32', [16], 2)]]);
    fs.truncateSync(p, fs.statSync(p).size - 10);
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'second', /truncated file/);
  });

  test('overlapping tensors', () => {
    const p = rawFile({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, new Uint8Array(12));
    expectCheckpointError(() => SafetensorsFile.open(p), p, 'b', /overlap tensor "a"/);
  });

  test('tensor not found, dtype mismatch, shape mismatch', () => {
    const p = rawFile(ok, eight);
    const f = SafetensorsFile.open(p);
    expectCheckpointError(() => f.read('missing.weight'), p, 'missing.weight', /tensor not found/);
    expectCheckpointError(() => f.read('a', { dtype: ['BF16', 'F8_E4M3'] }), p, 'a', /dtype mismatch: stored as F32, expected BF16 or F8_E4M3/);
    expectCheckpointError(() => f.read('a', { shape: [1, 2] }), p, 'a', /shape mismatch: stored as \[2\], expected \[1, 2\]/);
    assert.equal(f.read('a', { dtype: 'F32', shape: [2] }).numel, 2);
    f.close();
    expectCheckpointError(() => f.read('a'), p, 'a', /already closed/);
  });
});
