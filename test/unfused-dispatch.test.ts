// CPU checks of the dispatch index math (src/kernels/moe-dispatch.ts simulateDispatch, which the GPU kernels must
// match row for row) and of the capacity bound every unfused buffer is sized by. No GPU needed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dispatchCapacity, simulateDispatch, type DispatchShape } from '../src/kernels/moe-dispatch.js';
import { Rng } from '../src/util/rng.js';

const flash: DispatchShape = { experts: 256, topK: 6, hidden: 4096, shared: true };
const tiny: DispatchShape = { experts: 16, topK: 4, hidden: 256, shared: true };

/** Distinct random experts per token, with a fraction of masked slots. */
function randomIds(rng: Rng, tokens: number, shape: DispatchShape, maskedFraction = 0): Int32Array {
  const ids = new Int32Array(tokens * shape.topK);
  for (let t = 0; t < tokens; t++) {
    const chosen = new Set<number>();
    for (let k = 0; k < shape.topK; k++) {
      let e = rng.int(shape.experts);
      while (chosen.has(e)) e = rng.int(shape.experts);
      chosen.add(e);
      ids[t * shape.topK + k] = rng.uniform() < maskedFraction ? -1 : e;
    }
  }
  return ids;
}

function weightsFor(tokens: number, k: number): Float32Array {
  return Float32Array.from({ length: tokens * k }, (_, i) => 0.25 + (i % 7) / 8);
}

/** Every invariant a correct grouping has, checked independently of how it was computed. */
function checkPlan(shape: DispatchShape, ids: Int32Array, weights: Float32Array, tokens: number, blockM: number): void {
  const plan = simulateDispatch(shape, ids, weights, tokens, blockM);
  const groups = shape.experts + (shape.shared ? 1 : 0);
  const total = plan.groupOffset[groups];
  assert.equal(total % blockM, 0);
  assert.equal(plan.numMTiles, total / blockM);
  const cap = dispatchCapacity(shape, Math.max(tokens, 1), blockM);
  assert.ok(total <= cap.maxRows, `${total} rows exceed the capacity bound ${cap.maxRows}`);
  for (let g = 0; g < groups; g++) {
    const span = plan.groupOffset[g + 1] - plan.groupOffset[g];
    assert.equal(span, Math.ceil(plan.groupCount[g] / blockM) * blockM, `group ${g} padding`);
    for (let tile = plan.groupOffset[g] / blockM; tile < plan.groupOffset[g + 1] / blockM; tile++) assert.equal(plan.tileGroup[tile], g);
  }
  // Empty experts own no tile.
  const tilesPerGroup = new Map<number, number>();
  for (const g of plan.tileGroup) tilesPerGroup.set(g, (tilesPerGroup.get(g) ?? 0) + 1);
  for (let e = 0; e < shape.experts; e++) if (plan.groupCount[e] === 0) assert.equal(tilesPerGroup.get(e), undefined);
  // Every real slot maps to a distinct row of its expert, in (token, slot) order; masked slots to -1.
  const seen = new Set<number>();
  const last = new Int32Array(groups).fill(-1);
  for (let s = 0; s < tokens * shape.topK; s++) {
    const e = ids[s];
    const row = plan.slotRow[s];
    if (e < 0) { assert.equal(row, -1); continue; }
    assert.ok(row >= plan.groupOffset[e] && row < plan.groupOffset[e] + plan.groupCount[e], `slot ${s} row ${row} outside expert ${e}`);
    assert.ok(!seen.has(row), `row ${row} used twice`);
    seen.add(row);
    assert.ok(row > last[e], 'rows of an expert follow slot order');
    last[e] = row;
    assert.equal(plan.rowToken[row], Math.floor(s / shape.topK));
    assert.equal(plan.rowWeight[row], weights[s]);
  }
  if (shape.shared) {
    for (let t = 0; t < tokens; t++) {
      const row = plan.groupOffset[shape.experts] + t;
      assert.equal(plan.rowToken[row], t);
      assert.equal(plan.rowWeight[row], 1);
    }
  }
  // Padding rows: no token, weight 0.
  let padding = 0;
  for (let r = 0; r < total; r++) if (plan.rowToken[r] === -1) { padding++; assert.equal(plan.rowWeight[r], 0); }
  let real = 0;
  for (let g = 0; g < groups; g++) real += plan.groupCount[g];
  assert.equal(padding, total - real);
}

test('random routing, flash shape, T = 1, 7, 128, 1000 with BLOCK_M 128 and 64', () => {
  const rng = new Rng(7);
  for (const tokens of [1, 7, 128, 1000]) {
    for (const blockM of [128, 64]) {
      const ids = randomIds(rng, tokens, flash, 0.1);
      checkPlan(flash, ids, weightsFor(tokens, flash.topK), tokens, blockM);
    }
  }
});

test('every token to one expert: one group holds all rows, all other experts are empty', () => {
  const tokens = 300;
  const shape: DispatchShape = { experts: 16, topK: 1, hidden: 256, shared: true };
  const ids = new Int32Array(tokens).fill(5);
  const plan = simulateDispatch(shape, ids, weightsFor(tokens, 1), tokens);
  assert.equal(plan.groupCount[5], 300);
  assert.deepEqual([...plan.tileGroup], [5, 5, 5, 16, 16, 16]);
  checkPlan(shape, ids, weightsFor(tokens, 1), tokens, 128);
});

test('all slots masked: only the shared expert has rows', () => {
  const tokens = 9;
  const ids = new Int32Array(tokens * tiny.topK).fill(-1);
  const plan = simulateDispatch(tiny, ids, weightsFor(tokens, tiny.topK), tokens);
  assert.deepEqual([...plan.tileGroup], [16]);
  assert.ok(plan.slotRow.every((r) => r === -1));
  checkPlan(tiny, ids, weightsFor(tokens, tiny.topK), tokens, 128);
});

test('no shared expert: group E does not exist; out-of-range ids act as masked', () => {
  const shape: DispatchShape = { ...tiny, shared: false };
  const ids = Int32Array.from([0, 1, 2, 99, 3, 2, 1, 0]);
  const plan = simulateDispatch(shape, ids, weightsFor(2, 4), 2);
  assert.equal(plan.groupOffset.length, 17);
  assert.equal(plan.slotRow[3], -1);
  assert.equal(plan.numMTiles, 4); // experts 0..3 each one padded tile
});

test('I64 ids give the same plan as I32 ids', () => {
  const rng = new Rng(3);
  const ids = randomIds(rng, 50, tiny, 0.2);
  const a = simulateDispatch(tiny, ids, weightsFor(50, 4), 50);
  const b = simulateDispatch(tiny, BigInt64Array.from(ids, (v) => BigInt(v)), weightsFor(50, 4), 50);
  assert.deepEqual(a, b);
});

test('capacity bound is reached by the worst case and never exceeded', () => {
  // Worst case: as many non-empty experts as possible, each with one row (maximal padding).
  const shape: DispatchShape = { experts: 256, topK: 6, hidden: 4096, shared: true };
  const tokens = 40; // 240 slots over 240 distinct experts
  const ids = Int32Array.from({ length: tokens * 6 }, (_, i) => i);
  const plan = simulateDispatch(shape, ids, weightsFor(tokens, 6), tokens);
  const cap = dispatchCapacity(shape, tokens);
  assert.equal(plan.groupOffset[257], 241 * 128);
  assert.ok(plan.groupOffset[257] <= cap.maxRows);
  assert.equal(cap.maxTiles, cap.maxRows / 16);
  // T = 0 still gives valid (non-zero) buffer sizes.
  const zero = dispatchCapacity(shape, 0);
  assert.ok(zero.maxRows >= 128 && zero.maxChunks >= 1);
  assert.throws(() => dispatchCapacity({ ...shape, experts: 1024 }, 1), /scan thread/);
  assert.throws(() => dispatchCapacity({ ...shape, hidden: 100 }, 1), /multiple of 128/);
});
