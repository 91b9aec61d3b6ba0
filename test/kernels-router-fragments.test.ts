// CPU check of the operand trick in src/kernels/routing.cu: each lane loads 8 consecutive bf16 of a row (one 16-byte
// load) and hands them to two mma.m16n8k16 steps as if they were the k pairs the PTX fragment layout names. This
// emulates the PTX layout of m16n8k16 (.row.col, bf16) lane by lane and checks that the permuted operands still
// give every dot product exactly: if the kernel's register order (x,y -> step 0; z,w -> step 1) were wrong, a row
// of x would meet the wrong elements of a gate row and the sums below would differ.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../src/util/rng.js';

/** What mma.m16n8k16.row.col does with 32 lanes' registers: unpacks the fragments into A [16x16], B [16x8]. */
function mmaFromFragments(aRegs: number[][][], bRegs: number[][][]): number[][] {
  // aRegs[lane][reg 0..3] = [lo, hi] element pair; bRegs[lane][reg 0..1] = [lo, hi].
  const A = Array.from({ length: 16 }, () => new Array<number>(16).fill(NaN));
  const B = Array.from({ length: 16 }, () => new Array<number>(8).fill(NaN));
  for (let lane = 0; lane < 32; lane++) {
    const g = lane >> 2;
    const t = lane & 3;
    // PTX ISA, "Matrix fragments for mma.m16n8k16" (16-bit types): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..),
    // a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g), b1 (k 2t+8..2t+9, n g).
    const place = (row: number, k: number, pair: number[]) => { A[row][k] = pair[0]; A[row][k + 1] = pair[1]; };
    place(g, 2 * t, aRegs[lane][0]);
    place(g + 8, 2 * t, aRegs[lane][1]);
    place(g, 2 * t + 8, aRegs[lane][2]);
    place(g + 8, 2 * t + 8, aRegs[lane][3]);
    B[2 * t][g] = bRegs[lane][0][0]; B[2 * t + 1][g] = bRegs[lane][0][1];
    B[2 * t + 8][g] = bRegs[lane][1][0]; B[2 * t + 9][g] = bRegs[lane][1][1];
  }
  for (const row of A) assert.ok(row.every((v) => !Number.isNaN(v)), 'every A element is covered exactly once');
  for (const row of B) assert.ok(row.every((v) => !Number.isNaN(v)), 'every B element is covered exactly once');
  const D = Array.from({ length: 16 }, () => new Array<number>(8).fill(0));
  for (let r = 0; r < 16; r++) for (let n = 0; n < 8; n++) for (let k = 0; k < 16; k++) D[r][n] += A[r][k] * B[k][n];
  return D;
}

test('router logits fragments: 16-byte row loads permuted into two m16n8k16 steps give exact dot products', () => {
  const rng = new Rng(11);
  const H = 128; // four 32-wide chunks
  const x = Array.from({ length: 16 }, () => Array.from({ length: H }, () => rng.int(17) - 8));
  const w = Array.from({ length: 8 }, () => Array.from({ length: H }, () => rng.int(17) - 8));
  const acc = Array.from({ length: 16 }, () => new Array<number>(8).fill(0));
  for (let c = 0; c < H / 32; c++) {
    // Per lane, as the kernel loads them: uint4 = 8 bf16 at k = 32c + 8t, of x rows g and g+8 and gate row g.
    const lo: number[][] = []; const hi: number[][] = []; const b: number[][] = [];
    for (let lane = 0; lane < 32; lane++) {
      const g = lane >> 2; const t = lane & 3; const k0 = 32 * c + 8 * t;
      lo.push(x[g].slice(k0, k0 + 8)); hi.push(x[g + 8].slice(k0, k0 + 8)); b.push(w[g].slice(k0, k0 + 8));
    }
    // uint4 component q (.x .y .z .w) holds elements 2q, 2q+1.
    const pair = (v: number[], q: number) => [v[2 * q], v[2 * q + 1]];
    for (const [p, q] of [[0, 1], [2, 3]]) {
      // The kernel's call: a0 = lo.p, a1 = hi.p, a2 = lo.q, a3 = hi.q; b0 = b.p, b1 = b.q.
      const aRegs = lo.map((_, lane) => [pair(lo[lane], p), pair(hi[lane], p), pair(lo[lane], q), pair(hi[lane], q)]);
      const bRegs = b.map((v) => [pair(v, p), pair(v, q)]);
      const D = mmaFromFragments(aRegs, bRegs);
      for (let r = 0; r < 16; r++) for (let n = 0; n < 8; n++) acc[r][n] += D[r][n];
    }
  }
  for (let r = 0; r < 16; r++) {
    for (let n = 0; n < 8; n++) {
      let ref = 0;
      for (let k = 0; k < H; k++) ref += x[r][k] * w[n][k];
      assert.equal(acc[r][n], ref, `logit [${r}, ${n}]`);
    }
  }
});

test('router logits fragments: a swapped register order is caught (the emulation is not vacuous)', () => {
  const rng = new Rng(12);
  const x = Array.from({ length: 16 }, () => Array.from({ length: 32 }, () => rng.int(17) - 8));
  const w = Array.from({ length: 8 }, () => Array.from({ length: 32 }, () => rng.int(17) - 8));
  const pair = (v: number[], q: number) => [v[2 * q], v[2 * q + 1]];
  const acc = Array.from({ length: 16 }, () => new Array<number>(8).fill(0));
  for (const [p, q] of [[0, 1], [2, 3]]) {
    const aRegs: number[][][] = []; const bRegs: number[][][] = [];
    for (let lane = 0; lane < 32; lane++) {
      const g = lane >> 2; const t = lane & 3;
      const lo = x[g].slice(8 * t, 8 * t + 8); const hi = x[g + 8].slice(8 * t, 8 * t + 8);
      const b = w[g].slice(8 * t, 8 * t + 8);
      aRegs.push([pair(lo, p), pair(hi, p), pair(lo, q), pair(hi, q)]);
      bRegs.push([pair(b, q), pair(b, p)]); // wrong: b0/b1 swapped
    }
    const D = mmaFromFragments(aRegs, bRegs);
    for (let r = 0; r < 16; r++) for (let n = 0; n < 8; n++) acc[r][n] += D[r][n];
  }
  let mismatches = 0;
  for (let r = 0; r < 16; r++) for (let n = 0; n < 8; n++) {
    let ref = 0;
    for (let k = 0; k < 32; k++) ref += x[r][k] * w[n][k];
    if (acc[r][n] !== ref) mismatches++;
  }
  assert.ok(mismatches > 0, 'a wrong pairing must change some dot product');
});
