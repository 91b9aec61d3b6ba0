// The GPU attention tests' CPU side (test/support/attn-reference.ts) against the CPU model itself: a small written
// checkpoint runs through DeepSeekV4Model with taps on its linears (the projections' outputs: q, kv, the compressor
// and indexer inputs, and the attention output where wo_a reads it); the reference, fed the same projections from an
// empty state, must give the model's attention output bit for bit on every layer kind over prefill, chunked prefill,
// decode and a mixed batch. So the GPU tests compare against the CPU model's computation, not a re-derivation of it.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { makeModelCheckpointSync } from '../src/model/checkpoint-writer.js';
import type { BlockWeights } from '../src/model/loader.js';
import { DeepSeekV4Model, type V4Sequence } from '../src/model/model.js';
import type { Fp8Linear } from '../src/model/ops.js';
import { RopeTable, ropeFrequencies } from '../src/model/rope.js';
import { RefCompressor, refAttendRow, refIndexerPicks, refIndexerPrepare, refKvSim, refStoreWindow } from './support/attn-reference.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-attnref-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));
const VOCAB = 512;
let model: DeepSeekV4Model;

interface Capture { q?: Float32Array; kv?: Float32Array; qI?: Float32Array; wI?: Float32Array; a?: Float32Array; g?: Float32Array; aI?: Float32Array; gI?: Float32Array; o?: Float32Array }
const caps = new Map<number, Capture>();

before(async () => {
  const dir = path.join(tmp, 'small');
  // window 8, ratios 0 / 4 (indexer, top-2 so it selects) / 8, as the model tests
  makeModelCheckpointSync({ preset: 'tiny', layers: 3, expertDtype: 'fp8', seed: 7, out: dir,
    overrides: { vocab_size: VOCAB, sliding_window: 8, compress_ratios: [0, 4, 8, 0], index_topk: 2 } });
  model = await DeepSeekV4Model.load(dir);
  const blocks = model.weights.layers;
  const cap = (bw: BlockWeights) => { let c = caps.get(bw.index); if (!c) { c = {}; caps.set(bw.index, c); } return c; };
  // Taps: own properties shadow the (TypeScript-private) methods; each calls the original, then records.
  const m = model as unknown as { lin: (...a: unknown[]) => void; fp8: (...a: unknown[]) => void };
  const lin = m.lin.bind(model); const fp8 = m.fp8.bind(model);
  m.fp8 = (...args: unknown[]) => {
    fp8(...args);
    const [, , w, out] = args as [Float32Array, number, Fp8Linear, Float32Array];
    for (const bw of blocks) {
      const A = bw.attn;
      if (w === A.wqB) cap(bw).q = out; // renormed and rotated in place afterwards: read after the forward
      if (w === A.wkv) cap(bw).kv = out; // normed, rotated, FP8-simulated in place afterwards
      if (A.indexer && w === A.indexer.wqB) cap(bw).qI = out.slice();
    }
  };
  m.lin = (...args: unknown[]) => {
    lin(...args);
    const [W, , , x, , out] = args as [Float32Array, number, number, Float32Array, number, Float32Array];
    for (const bw of blocks) {
      const A = bw.attn; const c = cap(bw);
      if (A.compressor && W === A.compressor.wkv) c.a = out.slice();
      if (A.compressor && W === A.compressor.wgate) c.g = out.slice();
      if (A.indexer && W === A.indexer.compressor.wkv) c.aI = out.slice();
      if (A.indexer && W === A.indexer.compressor.wgate) c.gI = out.slice();
      if (A.indexer && W === A.indexer.weightsProj) c.wI = out.slice();
      if (W === A.woA && !c.o) c.o = x.slice(); // the G group calls all read the same o
    }
  };
});
after(() => model?.dispose());

test('attn-reference.ts == model.ts attention, bit for bit: layers 0 / 4 / 8, prefill, chunk, decode, mixed batch', async () => {
  const c = model.config;
  const d = c.headDim; const H = c.nHeads; const rd = c.ropeHeadDim; const win = c.windowSize;
  const Hi = c.indexNHeads; const di = c.indexHeadDim;
  const ropeC = new RopeTable(rd, ropeFrequencies(rd, c.compressRopeTheta, c.yarn));
  const ropeP = new RopeTable(rd, ropeFrequencies(rd, c.ropeTheta));
  const seqs = [model.createSequence(), model.createSequence()];
  // per (layer, sequence) reference state
  const ref = model.weights.layers.map((bw) => seqs.map(() => ({
    ring: new Float32Array(win * d),
    main: bw.attn.compressor ? new RefCompressor(bw.ratio, bw.ratio === 4, d, rd, bw.attn.compressor.ape, bw.attn.compressor.norm, c.normEps, bw.ratio > 0 ? ropeC : ropeP, false) : undefined,
    idx: bw.attn.indexer ? new RefCompressor(4, true, di, rd, bw.attn.indexer.compressor.ape, bw.attn.indexer.compressor.norm, c.normEps, ropeC, true) : undefined,
  })));
  const tok = (n: number, s: number) => Array.from({ length: n }, (_, i) => (s * 31 + i * 17) % VOCAB);
  const calls: Array<Array<{ seq: number; len: number }>> = [
    [{ seq: 0, len: 13 }], [{ seq: 0, len: 6 }], ...Array.from({ length: 5 }, () => [{ seq: 0, len: 1 }]),
    [{ seq: 1, len: 3 }, { seq: 0, len: 1 }], [{ seq: 0, len: 1 }, { seq: 1, len: 9 }],
  ];
  let checked = 0;
  for (const [ci, call] of calls.entries()) {
    caps.clear();
    const pos = call.map((it) => (seqs[it.seq] as V4Sequence).length);
    await model.forward(call.map((it, i) => ({ seq: seqs[it.seq], tokens: tok(it.len, ci * 3 + i) })));
    const rows = call.reduce((s, it) => s + it.len, 0);
    const row0: number[] = []; let r0 = 0;
    for (const it of call) { row0.push(r0); r0 += it.len; }
    const positions = Int32Array.from(call.flatMap((it, i) => Array.from({ length: it.len }, (_, j) => pos[i] + j)));
    for (const bw of model.weights.layers) {
      const cp = caps.get(bw.index)!;
      const rope = bw.ratio > 0 ? ropeC : ropeP;
      const kv = cp.kv!.slice();
      refKvSim(kv, rows, d, rd); // idempotent on the model's already simulated kv: this also checks that
      assert.deepEqual(kv, cp.kv, `layer ${bw.index}: kv FP8 sim idempotent`);
      const st = call.map((it) => ref[bw.index][it.seq]);
      call.forEach((it, i) => { st[i].main?.push(cp.a!, cp.g!, row0[i], pos[i], it.len); st[i].idx?.push(cp.aI!, cp.gI!, row0[i], pos[i], it.len); });
      const qI = cp.qI?.slice(); const wI = cp.wI?.slice();
      if (qI && wI) refIndexerPrepare(qI, wI, rows, positions, Hi, di, rd, rope);
      const o = new Float32Array(rows * H * d);
      for (let r = 0; r < rows; r++) {
        const i = call.findIndex((_, j) => r >= row0[j] && r < row0[j] + call[j].len);
        const T = positions[r];
        const picks = qI && wI ? refIndexerPicks(qI, wI, r, Hi, di, st[i].idx!.flat(), Math.floor((T + 1) / 4), c.indexTopk) : undefined;
        refAttendRow(cp.q!, kv, r, { T, P: pos[i], row0: row0[i], ring: st[i].ring, comp: st[i].main?.flat(), picks }, H, d, rd, win, bw.ratio, bw.attn.sink, rope, o);
      }
      call.forEach((it, i) => refStoreWindow(st[i].ring, kv, pos[i], it.len, row0[i], win, d));
      let diff = 0;
      for (let j = 0; j < o.length; j++) if (o[j] !== cp.o![j]) diff++;
      assert.equal(diff, 0, `call ${ci} layer ${bw.index} (ratio ${bw.ratio}): ${diff} of ${o.length} attention outputs differ from model.ts`);
      checked++;
    }
  }
  assert.equal(checked, calls.length * model.weights.layers.length);
});
