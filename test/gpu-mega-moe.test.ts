// The fused MegaMoE backend (one launch per layer) against the CPU reference and the unfused pipeline (SPEC 5:
// calc_diff <= 3e-5 to each, bit-identical across repeated runs), on tiny, flash and pro shapes, T = 0 .. 8192,
// skewed and masked routing, the capacity edge, CUDA graph replay, and a spin deadline turned into an error.
// Skips (with the reason) where no Hopper GPU and driver exist.
//
// Flash / pro: weights generated on the GPU and shared by both pipelines; the reference checks a sample of the
// tokens (the layer is per-token independent), the unfused pipeline every token.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { gpuSkipReason } from '../src/cuda/index.js';
import { MegaMoe, MegaMoeBackend } from '../src/backends/mega-moe.js';
import { ReferenceBackend } from '../src/backends/reference.js';
import { DeviceMoeWeights, layerFromDeviceWeights, UnfusedBackend, UnfusedMoe, type UnfusedShape } from '../src/backends/unfused.js';
import { MegaMoeKernelError } from '../src/kernels/mega-moe.js';
import { MEGA_ROW_TILE, type MegaNormalKernel } from '../src/kernels/mega-moe-layout.js';
import { withEnv } from './support/env.js';
import { simulateDispatch } from '../src/kernels/moe-dispatch.js';
import { GuardError } from '../src/moe/guards.js';
import { makeRandomLayer, moeShape, randomHiddenStates } from '../src/moe/synthetic.js';
import { decodeBF16Array } from '../src/numerics/bf16.js';
import { calcDiff } from '../src/numerics/calc-diff.js';
import { HostTensor } from '../src/tensor/host.js';
import { randomRouting, rowsOf, sampleRows, type Routing } from './moe-sample.js';

const skip = gpuSkipReason();
/** SPEC 5: a GPU backend against the reference, and the two GPU backends against each other. */
const TOL = 3e-5;
const TOKENS = [0, 1, 2, 7, 64, 128, 1000, 2048, 4096, 8192];  // 2048: the 64-token tiles on flash and pro

const diff = (a: HostTensor<'BF16'>, b: HostTensor<'BF16'>) => calcDiff(decodeBF16Array(a.data), decodeBF16Array(b.data));

async function vsReference(ref: ReferenceBackend, x: HostTensor<'BF16'>, r: Routing, y: HostTensor<'BF16'>,
  yRouted: HostTensor<'BF16'>, rows: number[]): Promise<{ y: number; yRouted: number }> {
  const want = await ref.forward(rowsOf(x, rows), rowsOf(r.ids, rows), rowsOf(r.weights, rows));
  return { y: diff(rowsOf(y, rows), want.y), yRouted: diff(rowsOf(yRouted, rows), want.yRouted) };
}

/** Every grouped row's combine place: slot s's row -> s, the shared expert's row of token t (from sharedRow0) -> T K + t, others -1. */
function expectedRowDest(rows: number, slotRow: Int32Array, sharedRow0: number, T: number, K: number): Int32Array {
  const rowDest = new Int32Array(rows).fill(-1);
  slotRow.forEach((row, slot) => { if (row >= 0) rowDest[row] = slot; });
  for (let t = 0; t < T; t++) rowDest[sharedRow0 + t] = T * K + t;
  return rowDest;
}

/**
 * The small-T direct layout (mega_moe.cu dispatch_small_direct): touched experts ascending, one 16-row tile each
 * holding all T tokens, then the shared expert's tile; slot (t, k) -> 16 tile(e) + t. Row r of a routed tile goes to
 * combine row t K + k of its token's slot there (-1 where the token does not route there), the shared tile's to T K + r.
 */
function directDispatch(E: number, K: number, ids: BigInt64Array, T: number): { slotRow: Int32Array; numMTiles: number; rowDest: Int32Array } {
  const valid = (id: bigint) => id >= 0n && id < BigInt(E);
  const touched = [...new Set(Array.from(ids.subarray(0, T * K)).filter(valid).map(Number))].sort((a, b) => a - b);
  const tileOf = new Map(touched.map((e, i) => [e, i]));
  const slotRow = Int32Array.from({ length: T * K }, (_, s) => (valid(ids[s]) ? tileOf.get(Number(ids[s]))! * 16 + Math.floor(s / K) : -1));
  return { slotRow, numMTiles: touched.length + 1, rowDest: expectedRowDest((touched.length + 1) * 16, slotRow, touched.length * 16, T, K) };
}

/**
 * The fused kernel's dispatch (slot rows, group offsets) equals the CPU simulation of the same index math, and every
 * row's place in the padding-free combine buffer is its (token, slot): slot s's row -> s, the shared expert's row of
 * token t -> T K + t, padding -> -1.
 */
function assertDispatch(moe: MegaMoe, r: Routing, T: number): void {
  const s = moe.shape;
  const got0 = moe.debugDispatch(T);
  if (got0.direct) {
    const d = directDispatch(s.experts, s.topK, r.ids.data, T);
    assert.deepEqual(got0.slotRow, d.slotRow, 'slot_row (small-T direct layout)');
    assert.equal(got0.numMTiles, d.numMTiles, 'num_m_tiles (small-T direct layout)');
    assert.deepEqual(got0.rowDest, d.rowDest, 'row_dest (small-T direct layout)');
    return;
  }
  const want = simulateDispatch({ experts: s.experts, topK: s.topK, hidden: s.hidden, shared: true }, r.ids.data, r.weights.data, T,
    MEGA_ROW_TILE[moe.path(T)]);
  const got = moe.debugDispatch(T);
  assert.deepEqual(got.slotRow, want.slotRow, 'slot_row');
  assert.deepEqual(got.groupOffset, want.groupOffset, 'group offsets');
  assert.equal(got.numMTiles, want.numMTiles, 'num_m_tiles');
  assert.deepEqual(got.rowDest, expectedRowDest(got.rowDest.length, want.slotRow, want.groupOffset[s.experts], T, s.topK), 'row_dest');
}

test('mega_moe vs reference and unfused, tiny layer (host weights through the backend interface)', { skip }, async (t) => {
  const shape = moeShape({ hidden: 256, inter: 128, experts: 16, topk: 4 });
  const layer = makeRandomLayer({ seed: 11, shape });
  const mega = new MegaMoeBackend();
  const unfused = new UnfusedBackend();
  const ref = new ReferenceBackend();
  await mega.prepare(layer, { maxTokens: 8192, enableExpertParallel: true });
  await unfused.prepare(layer, { maxTokens: 8192 });
  ref.prepare(layer);
  const check = async (label: string, x: HostTensor<'BF16'>, r: Routing, T: number, refRows = 512) => {
    const out = await mega.forward(x, r.ids, r.weights);
    assert.deepEqual(out.y.shape, [T, 256]);
    if (T === 0) return;
    assertDispatch(mega.pipeline!, r, T);
    const again = await mega.forward(x, r.ids, r.weights);
    assert.deepEqual(again.y.data, out.y.data, 'bit-identical across runs (y)');
    assert.deepEqual(again.yRouted.data, out.yRouted.data, 'bit-identical across runs (y_routed)');
    const u = await unfused.forward(x, r.ids, r.weights);
    const du = diff(out.y, u.y);
    const d = await vsReference(ref, x, r, out.y, out.yRouted, sampleRows(300 + T, T, refRows));
    t.diagnostic(`tiny ${label} (${mega.pipeline!.path(T)}): calc_diff vs reference y ${d.y.toExponential(2)}, y_routed ${d.yRouted.toExponential(2)}; vs unfused ${du.toExponential(2)}`);
    assert.ok(d.y <= TOL && d.yRouted <= TOL, `vs reference: y ${d.y}, y_routed ${d.yRouted}`);
    assert.ok(du <= TOL, `vs unfused: ${du}`);
  };
  try {
    for (const T of TOKENS) {
      await t.test(`T = ${T}`, async () => check(`T=${T}`, randomHiddenStates(100 + T, T, 256), randomRouting(200 + T, T, 16, 4, 0.05), T));
    }
    await t.test('skewed: every token to one expert (other slots masked)', async () => {
      const T = 1000;
      const ids = new BigInt64Array(T * 4).fill(-1n);
      const w = new Float32Array(T * 4);
      for (let i = 0; i < T; i++) { ids[i * 4] = 3n; w[i * 4] = 1.5; }
      await check('one expert', randomHiddenStates(7, T, 256), { ids: new HostTensor('I64', [T, 4], ids), weights: new HostTensor('F32', [T, 4], w) }, T, 256);
    });
    await t.test('skewed: most experts empty; hash-layer style routing (a token table with repeated rows)', async () => {
      const T = 300;
      const table = [[3, 5, 7, 9], [9, 7, 5, 3], [5, 3, 9, 7]];
      const ids = new BigInt64Array(T * 4);
      const w = new Float32Array(T * 4).fill(0.375);
      for (let i = 0; i < T; i++) table[(i * 7) % 3].forEach((e, k) => { ids[i * 4 + k] = BigInt(e); });
      await check('4 experts', randomHiddenStates(8, T, 256), { ids: new HostTensor('I64', [T, 4], ids), weights: new HostTensor('F32', [T, 4], w) }, T);
    });
    await t.test('masked slots: 60% of the slots are -1, some tokens fully masked', async () => {
      for (const T of [5, 128]) {
        const r = randomRouting(9 + T, T, 16, 4, 0.6);
        for (let k = 0; k < 4; k++) r.ids.data[2 * 4 + k] = -1n; // token 2: only the shared expert
        const x = randomHiddenStates(9, T, 256);
        await check(`masked T=${T}`, x, r, T);
        const out = await mega.forward(x, r.ids, r.weights);
        assert.ok(decodeBF16Array(out.yRouted.data.subarray(2 * 256, 3 * 256)).every((v) => v === 0), 'a fully masked token has y_routed = 0');
      }
    });
    await t.test('CUDA graph replay equals the eager launch, bit for bit, replay after replay', async () => {
      const moe = mega.pipeline!;
      for (const T of [1, 1000]) {
        const x = randomHiddenStates(40 + T, T, 256);
        const r = randomRouting(41 + T, T, 16, 4);
        const eager = await mega.forward(x, r.ids, r.weights);
        const graph = moe.captureGraph(T);
        try {
          for (let i = 0; i < 3; i++) {
            graph.launch(moe.stream);
            const out = moe.downloadOutputs(T);
            assert.deepEqual(out.y.data, eager.y.data, `replay ${i} (T = ${T})`);
          }
        } finally {
          graph.dispose();
        }
      }
    });
    await t.test('capacity edge: exactly maxTokens runs (above), one more is a GuardError before the GPU', async () => {
      const x = randomHiddenStates(1, 8193, 256);
      const r = randomRouting(1, 8193, 16, 4);
      await assert.rejects(mega.forward(x, r.ids, r.weights), (e: unknown) => e instanceof GuardError && e.code === 'TOKEN_CAPACITY');
    });
    await t.test('guard: --enable-expert-parallel missing', async () => {
      const b = new MegaMoeBackend();
      await assert.rejects(b.prepare(layer, { maxTokens: 16 }), (e: unknown) => e instanceof GuardError && e.code === 'EXPERT_PARALLEL_DISABLED' && /--enable-expert-parallel/.test(e.message));
      b.dispose();
    });
  } finally {
    mega.dispose();
    unfused.dispose();
    ref.dispose();
  }
});

/** Flash / pro: GPU-generated weights shared by both pipelines, sampled tokens for the reference. */
async function largeShape(t: { test: (name: string, fn: () => Promise<void>) => Promise<void>; diagnostic: (s: string) => void },
  label: string, shape: UnfusedShape, sample: number): Promise<void> {
  const weights = await DeviceMoeWeights.random(shape, 5);
  const maxT = TOKENS[TOKENS.length - 1];
  const mega = await MegaMoe.create(weights, maxT);
  const unfused = await UnfusedMoe.create(weights, maxT);
  const ref = new ReferenceBackend();
  ref.prepare(layerFromDeviceWeights(weights, 4));
  t.diagnostic(`${label}: symmetric buffer for ${maxT} tokens = ${(mega.layout.totalBytes / 1e9).toFixed(2)} GB`);
  try {
    for (const T of TOKENS) {
      await t.test(`${label} T = ${T}`, async () => {
        const x = randomHiddenStates(500 + T, T, shape.hidden);
        const r = randomRouting(600 + T, T, shape.experts, shape.topK, 0.02);
        mega.uploadInputs(x, r.ids.data, r.weights.data);
        mega.enqueue(T);
        const out = mega.downloadOutputs(T);
        if (T === 0) { assert.equal(out.y.numel, 0); return; }
        assertDispatch(mega, r, T);
        mega.enqueue(T);
        const again = mega.downloadOutputs(T);
        assert.deepEqual(again.y.data, out.y.data, 'bit-identical across runs');
        unfused.uploadInputs(x, r.ids.data, r.weights.data);
        unfused.enqueue(T);
        const u = unfused.downloadOutputs(T);
        const du = diff(out.y, u.y);
        const rows = sampleRows(700 + T, T, sample);
        const d = await vsReference(ref, x, r, out.y, out.yRouted, rows);
        t.diagnostic(`${label} T=${T} (${mega.path(T)}): vs reference (${rows.length} rows) y ${d.y.toExponential(2)}, y_routed ${d.yRouted.toExponential(2)}; vs unfused (all rows) ${du.toExponential(2)}`);
        assert.ok(d.y <= TOL && d.yRouted <= TOL, `vs reference: y ${d.y}, y_routed ${d.yRouted}`);
        assert.ok(du <= TOL, `vs unfused: ${du}`);
        assert.ok(decodeBF16Array(out.y.data).every(Number.isFinite), 'y is finite');
      });
    }
    // The normal path's three kernels (clustered, round robin, dynamic with the padding skip and announced units), the
    // dynamic one without the skip or the announcements, the clustered one with each fitted-pairs rule, each forced by its knobs where the default runs another: each must equal the default bit for
    // bit. (The skip needs all-padding halves: flash T = 3072 has ~72 rows per expert, 8192 ~192; pro 4096 ~64, 8192 ~128.)
    const knobCases: ReadonlyArray<readonly [Record<string, string>, number, MegaNormalKernel]> = label === 'flash'
      ? [[{ MEGAMOE_MCAST_MIN_ROWS: '0' }, 3072, 'clustered'], [{ MEGAMOE_DYNAMIC_MAX_ROWS: '-1' }, 3072, 'round-robin'],
        [{ MEGAMOE_SKIP_PADDING: '0' }, 3072, 'dynamic'], [{ MEGAMOE_MCAST: '0', MEGAMOE_DYNAMIC_MAX_ROWS: '1e9' }, 8192, 'dynamic'],
        [{ MEGAMOE_FIT_PAIRS: '1' }, 8192, 'clustered'], [{ MEGAMOE_FIT_PAIRS: '2' }, 8192, 'clustered'],
        [{ MEGAMOE_ANNOUNCE: '0' }, 3072, 'dynamic']]
      : [[{ MEGAMOE_MCAST_MIN_ROWS: '0' }, 4096, 'clustered'], [{ MEGAMOE_SKIP_PADDING: '0' }, 4096, 'dynamic'],
        [{ MEGAMOE_SKIP_PADDING: '0' }, 8192, 'dynamic'], [{ MEGAMOE_MCAST_MIN_ROWS: '0' }, 8192, 'clustered'],
        [{ MEGAMOE_MCAST_MIN_ROWS: '0', MEGAMOE_FIT_PAIRS: '1' }, 8192, 'clustered'], [{ MEGAMOE_ANNOUNCE: '0' }, 4096, 'dynamic']];
    for (const [knobs, T, kernel] of knobCases) {
      const name = Object.entries(knobs).map(([k, v]) => `${k}=${v}`).join(' ');
      await t.test(`${label}: ${name} at T = ${T} (the ${kernel} kernel) equals the default kernel, bit for bit`, async () => {
        const alt = await withEnv(knobs, () => MegaMoe.create(weights, T));
        try {
          assert.equal(alt.path(T), 'normal');
          if (alt.normalKernel(T) !== kernel) {
            assert.equal(kernel, 'clustered', `the knobs select the ${kernel} kernel`);
            t.diagnostic(`${label}: 2-CTA clusters not all resident on this GPU: not run`);
            return;
          }
          const x = randomHiddenStates(800 + T, T, shape.hidden);
          const r = randomRouting(900 + T, T, shape.experts, shape.topK, 0.02);
          for (const p of [alt, mega]) { p.uploadInputs(x, r.ids.data, r.weights.data); p.enqueue(T); }
          const got = alt.downloadOutputs(T);
          const want = mega.downloadOutputs(T);
          assert.deepEqual(got.y.data, want.y.data, 'y');
          assert.deepEqual(got.yRouted.data, want.yRouted.data, 'y_routed');
          alt.enqueue(T);
          assert.deepEqual(alt.downloadOutputs(T).y.data, got.y.data, 'bit-identical across runs');
          t.diagnostic(`${label} T=${T}: ${name} (the ${kernel} kernel) bit-identical to the default (the ${mega.normalKernel(T)} kernel)`);
        } finally {
          alt.dispose();
        }
      });
    }
    if (label === 'flash') {
      await t.test('an L2 wait past its deadline becomes a MegaMoeKernelError naming the flag, and the next launch is clean', async () => {
        const saved = { timeout: process.env.MEGAMOE_SPIN_TIMEOUT_MS, fault: process.env.MEGAMOE_FAULT };
        process.env.MEGAMOE_SPIN_TIMEOUT_MS = '50';
        process.env.MEGAMOE_FAULT = 'skip-publish'; // L1 never publishes (row tile 0, block 0)
        let faulty: MegaMoe | undefined;
        try {
          faulty = await MegaMoe.create(weights, 4096);
        } finally {
          for (const [k, v] of [['MEGAMOE_SPIN_TIMEOUT_MS', saved.timeout], ['MEGAMOE_FAULT', saved.fault]] as const) {
            if (v === undefined) delete process.env[k]; else process.env[k] = v;
          }
        }
        try {
          for (const T of [1, 4096]) { // decode and normal paths
            const x = randomHiddenStates(1, T, shape.hidden);
            const r = randomRouting(2, T, shape.experts, shape.topK);
            faulty.uploadInputs(x, r.ids.data, r.weights.data);
            const t0 = Date.now();
            faulty.enqueue(T);
            assert.throws(() => faulty!.downloadOutputs(T), (e: unknown) => e instanceof MegaMoeKernelError
              && /activation flag timed out in phase "L2 waiting for an L1 block"/.test(e.message) && /row tile 0, activation block 0/.test(e.message));
            assert.ok(Date.now() - t0 < 5000, 'the launch ended soon after the deadline');
            faulty.checkErrors(); // the block was reset: nothing left to report
          }
        } finally {
          faulty.dispose();
        }
        // The healthy pipeline is untouched.
        const x = randomHiddenStates(3, 7, shape.hidden);
        const r = randomRouting(4, 7, shape.experts, shape.topK);
        mega.uploadInputs(x, r.ids.data, r.weights.data);
        mega.enqueue(7);
        unfused.uploadInputs(x, r.ids.data, r.weights.data);
        unfused.enqueue(7);
        assert.ok(diff(mega.downloadOutputs(7).y, unfused.downloadOutputs(7).y) <= TOL);
      });
    }
  } finally {
    ref.dispose();
    unfused.dispose();
    mega.dispose();
    weights.dispose();
  }
}

test('mega_moe vs reference and unfused, flash shape (H 4096, I 2048, 256 experts, top-6)', { skip }, async (t) => {
  await largeShape(t, 'flash', { hidden: 4096, inter: 2048, experts: 256, topK: 6, swigluLimit: 10 }, 4);
});

test('mega_moe vs reference and unfused, pro shape (H 7168, I 3072, 384 experts, top-6)', { skip }, async (t) => {
  await largeShape(t, 'pro', { hidden: 7168, inter: 3072, experts: 384, topK: 6, swigluLimit: 10 }, 2);
});
