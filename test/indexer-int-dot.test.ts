// The claim behind attn_indexer_scores' integer path (src/kernels/indexer.cu), checked on the CPU over many random
// vectors: for every q . k pair the kernel's rule accepts (test/support/indexer-int.ts), f32((sum nq nk) 2^(Uq+Uk))
// equals f32 of the CPU's in-order f64 dot product (model.ts indexerTopk), bit for bit; and FP4-simulated vectors as
// the indexer makes them (Hadamard then FP4) are accepted, so the exact path is the common one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16, fp4SimInPlace, hadamardInPlace } from '../src/model/ops.js';
import { Rng } from '../src/util/rng.js';
import { indexerIntClass, indexerIntDot } from './support/indexer-int.js';

function fp4Vec(rng: Rng, di: number, scale: number, hadamard: boolean, tmp: Float64Array): Float32Array {
  const x = new Float32Array(di);
  for (let i = 0; i < di; i++) x[i] = bf16(rng.normal() * scale * (hadamard ? 1 : 2 ** Math.floor(rng.uniform() * 3)));
  if (hadamard) hadamardInPlace(x, 0, di, tmp);
  fp4SimInPlace(x, 0, di, 32);
  return x;
}

test('indexer integer q . k: exact wherever the kernel takes it, and taken for FP4-simulated vectors', () => {
  const rng = new Rng(42);
  for (const di of [32, 64, 128]) {
    const tmp = new Float64Array(di);
    let fast = 0; let total = 0; let nonzero = 0;
    for (let trial = 0; trial < 4000; trial++) {
      const sq = 2 ** (Math.floor(rng.uniform() * 40) - 20); const sk = 2 ** (Math.floor(rng.uniform() * 40) - 20);
      const hadamard = trial % 4 !== 0;
      const q = fp4Vec(rng, di, sq, hadamard, tmp); const k = fp4Vec(rng, di, sk, hadamard, tmp);
      if (trial % 50 === 7) k.fill(0, 0, di / 2); // half-zero and zero blocks
      if (trial % 97 === 3) q.fill(0);
      let dot = 0;
      for (let i = 0; i < di; i++) dot += q[i] * k[i];
      const want = Math.fround(dot);
      const got = indexerIntDot(indexerIntClass(q), indexerIntClass(k));
      total++;
      if (got === undefined) continue;
      fast++;
      if (want !== 0) nonzero++;
      assert.ok(Object.is(got, want) || (got === 0 && want === 0), `di ${di} trial ${trial}: integer path ${got} vs f64 dot ${want}`);
    }
    assert.ok(fast >= 0.95 * total, `di ${di}: the integer path took ${fast} of ${total} FP4 pairs`);
    assert.ok(nonzero > 0.9 * fast);
  }
});

test('indexer integer rule: refuses vectors off the grid, out of range, or with NaN', () => {
  const di = 64;
  const rng = new Rng(1);
  const raw = Float32Array.from({ length: di }, () => bf16(rng.normal()));
  assert.equal(indexerIntClass(raw).exact, false, 'plain bf16 gaussians have more than 7 bits below amax');
  const grid = Float32Array.from({ length: di }, (_, i) => ((i % 13) - 6) * 0.25);
  const c = indexerIntClass(grid);
  assert.equal(c.exact, true); assert.equal(c.U, -6); // amax 1.5: 2^(0 - 6); the values are multiples of 2^-2
  assert.deepEqual(Array.from(c.n.subarray(0, 3)), [-96, -80, -64]);
  const one = (x: number, y = 0) => { const v = new Float32Array(di); v[0] = x; v[1] = y; return indexerIntClass(v); };
  assert.equal(one(1, 2 ** -6).exact, true);
  assert.equal(one(1, 2 ** -7).exact, false, 'a value 2^-7 below a unit amax is off the 7-bit grid');
  assert.equal(one(2 ** 22).exact, true); assert.equal(one(2 ** 23).exact, false, 'amax 2^23 and up: refused');
  assert.equal(one(2 ** -121).exact, true); assert.equal(one(2 ** -122).exact, false, 'amax below 2^-121: refused');
  assert.equal(one(0).exact, true); assert.equal(one(Number.NaN).exact, false);
  assert.equal(indexerIntDot(one(2 ** -100), one(2 ** -100)), undefined, 'a product unit below 2^-126 takes the double path');
});
