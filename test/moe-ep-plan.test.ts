// The unfused EP baseline's index math (src/moe/ep-plan.ts) against a plain simulation of the whole round trip: N
// ranks, random routing with masked slots (and skewed: everything to one rank), rows tagged with (source, token,
// slot); the send buffer filled as the dispatch kernel's gather would (simulateDispatch), an all-to-all in JS, the
// owner's "experts" as a function of (local expert, tag), the way back, and the source's combine through
// combineSlotRow. Every slot's result must be its own expert's output for its own token, in slot order.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { maxReceiveRows, ownerOf, planEpReceive, planEpSend, EP_SEND_ROW_TILE } from '../src/moe/ep-plan.js';
import { Rng } from '../src/util/rng.js';

function routing(seed: number, T: number, E: number, K: number, N: number, skewTo?: number) {
  const rng = new Rng(seed);
  const ids = new BigInt64Array(T * K);
  const w = new Float32Array(T * K);
  const per = E / N;
  const lo = skewTo === undefined ? 0 : skewTo * per;
  const span = skewTo === undefined ? E : per;
  for (let t = 0; t < T; t++) {
    const used = new Set<number>();
    for (let k = 0; k < K; k++) {
      let e: number;
      do { e = lo + rng.int(span); } while (used.has(e));
      used.add(e);
      ids[t * K + k] = rng.uniform() < 0.05 ? -1n : BigInt(e);
      w[t * K + k] = Math.fround(rng.uniform());
    }
  }
  return { ids, w };
}

/** What an expert "computes" for a row: a tag that says which expert saw which (source, token, slot). */
const expertOut = (globalExpert: number, src: number, t: number, k: number) => `e${globalExpert}:${src}.${t}.${k}`;

function roundTrip(N: number, E: number, K: number, tokens: number[], skewTo?: number) {
  const per = E / N;
  const ranks = tokens.map((T, s) => {
    const r = routing(1000 + s * 7 + N, T, E, K, N, skewTo);
    return { T, ...r, plan: planEpSend(r.ids, r.w, T, K, E, N, 256) };
  });
  // The send buffers as the rank dispatch's gather fills them: row sendSlotRow[t K + k] holds (s, t, k).
  const sendBufs = ranks.map((x, s) => {
    const buf: Array<{ s: number; t: number; k: number } | null> = new Array(x.plan.sendRowsPadded).fill(null);
    for (let i = 0; i < x.T * K; i++) {
      const row = x.plan.sendSlotRow[i];
      if (row >= 0) buf[row] = { s, t: Math.floor(i / K), k: i % K };
    }
    return buf;
  });
  const counts = new Array<number>(N * N);
  ranks.forEach((x, s) => x.plan.sendRows.forEach((c, p) => { counts[s * N + p] = c; }));
  // Forward all-to-all (rows and their metadata), expert compute on the owner, all-to-all back.
  const back = ranks.map((x) => new Array<string>(x.plan.backRows));
  for (let p = 0; p < N; p++) {
    const rp = planEpReceive(counts, N, p);
    const recv: Array<{ tag: { s: number; t: number; k: number }; local: number; w: number }> = new Array(rp.rows);
    for (let s = 0; s < N; s++) {
      const x = ranks[s];
      for (let j = 0; j < rp.recvRows[s]; j++) {
        const row = x.plan.sendRowOffset[p] + j;
        const tag = sendBufs[s][row];
        assert.ok(tag, `rank ${s} row ${row} for peer ${p} is a real row, not padding`);
        recv[rp.recvRowOffset[s] + j] = { tag, local: Number(x.plan.rowLocalExpert[row]), w: x.plan.rowWeight[row] };
      }
    }
    for (const r of recv) {
      assert.ok(r.local >= 0 && r.local < per, 'local expert ids are in [0, E/N)');
      const g = p * per + r.local;
      assert.equal(BigInt(g), ranks[r.tag.s].ids[r.tag.t * K + r.tag.k], 'the owner holds the slot\'s global expert');
      assert.equal(r.w, ranks[r.tag.s].w[r.tag.t * K + r.tag.k], 'the routing weight travels with the row');
    }
    // The owner's output rows are in receive order; source s gets [recvRowOffset[s], + recvRows[s]) back at backRowOffset[p].
    for (let s = 0; s < N; s++) {
      for (let j = 0; j < rp.recvRows[s]; j++) {
        const r = recv[rp.recvRowOffset[s] + j];
        back[s][ranks[s].plan.backRowOffset[p] + j] = expertOut(p * per + r.local, r.tag.s, r.tag.t, r.tag.k);
      }
    }
  }
  // The source's combine reads combineSlotRow: each slot must find its own expert's output for itself.
  ranks.forEach((x, s) => {
    for (let i = 0; i < x.T * K; i++) {
      const id = Number(x.ids[i]);
      const row = x.plan.combineSlotRow[i];
      if (id < 0) { assert.equal(row, -1, 'masked slots read nothing'); continue; }
      assert.ok(row >= 0 && row < x.plan.backRows);
      assert.equal(back[s][row], expertOut(id, s, Math.floor(i / K), i % K), `rank ${s} slot ${i}`);
    }
    assert.ok(back[s].every((v) => typeof v === 'string'), 'every returned row is used exactly once');
  });
  return { ranks, counts };
}

test('EP plan: the round trip delivers every slot to its expert and back to its own combine slot (N = 1, 2, 3, 4, 8)', () => {
  for (const N of [1, 2, 3, 4, 8]) {
    const E = 8 * N * 2;
    for (const tokens of [[0, 0, 0, 0, 0, 0, 0, 0].slice(0, N), Array.from({ length: N }, (_, i) => [1, 7, 128, 0, 33][i % 5])]) {
      roundTrip(N, E, 4, tokens);
    }
  }
});

test('EP plan: skewed routing (every token to one rank\'s experts) fills one receiver up to its bound', () => {
  const N = 4, E = 16, K = 4, T = 50;
  const { counts } = roundTrip(N, E, K, [T, T, T, T], 2);
  for (let s = 0; s < N; s++) for (let p = 0; p < N; p++) if (p !== 2) assert.equal(counts[s * N + p], 0);
  const rows = planEpReceive(counts, N, 2).rows;
  assert.ok(rows > 0.9 * N * T * K && rows <= maxReceiveRows(N, T, K));
});

test('EP plan: send layout is the dispatch\'s padded groups; counts and offsets; errors', () => {
  const ids = BigInt64Array.from([0n, 5n, 2n, -1n, 7n, 4n]); // T = 3, K = 2, E = 8, N = 2: owners 0,1,0,-,1,1
  const w = Float32Array.from([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]);
  const p = planEpSend(ids, w, 3, 2, 8, 2, 128);
  assert.deepEqual([...p.ownerIds], [0n, 1n, 0n, -1n, 1n, 1n]);
  assert.deepEqual([...p.sendRows], [2, 3]);
  assert.deepEqual([...p.sendRowOffset], [0, EP_SEND_ROW_TILE]);
  assert.equal(p.sendRowsPadded, 2 * EP_SEND_ROW_TILE);
  assert.deepEqual([...p.sendSlotRow], [0, 16, 1, -1, 17, 18]);
  assert.deepEqual([...p.rowLocalExpert.subarray(0, 2)], [0n, 2n]);
  assert.deepEqual([...p.rowLocalExpert.subarray(16, 19)], [1n, 3n, 0n]);
  assert.equal(p.rowLocalExpert[2], -1n, 'padding rows carry -1');
  assert.deepEqual([...p.rowWeight.subarray(16, 19)], [w[1], w[4], w[5]]);
  assert.deepEqual([...p.backRowOffset], [0, 2]);
  assert.deepEqual([...p.combineSlotRow], [0, 2, 1, -1, 3, 4]);
  assert.equal(p.backRows, 5);
  assert.deepEqual(planEpReceive([2, 3, 0, 4], 2, 1), { recvRows: [3, 4], recvRowOffset: [0, 3], rows: 7 });
  assert.throws(() => planEpReceive([1, 2, 3], 2, 0), /3 counts for a world of 2/);
  assert.throws(() => planEpSend(ids, w, 3, 2, 9, 2, 128), /9 experts cannot be split evenly over 2/);
  assert.equal(ownerOf(-1, 8, 2), -1);
  assert.equal(ownerOf(8, 8, 2), -1);
  assert.equal(ownerOf(3, 8, 2), 0);
  assert.equal(ownerOf(4, 8, 2), 1);
  assert.equal(maxReceiveRows(4, 1000, 6), 24000);
});

test('unfused EP rank: receive heap size, and the combine bound refused before any GPU work', async () => {
  const { UnfusedEpRank, unfusedEpReceiveBytes } = await import('../src/backends/unfused-ep.js');
  const shape = { hidden: 4096, inter: 2048, experts: 64, topK: 6, swigluLimit: 10 };
  // counts 64 B, x 24000 x 4096, sf 24000 x 32 x 4, ids 24000 x 8, w 24000 x 4, combine 1000 x 7 x 4096 x 2 (each 256-aligned)
  const align = (b: number) => Math.ceil(b / 256) * 256;
  assert.equal(unfusedEpReceiveBytes(shape, 4, 1000),
    align(64) + align(24000 * 4096) + align(24000 * 128) + align(24000 * 8) + align(24000 * 4) + align(1000 * 7 * 4096 * 2));
  assert.equal(UnfusedEpRank.receiveBytes(shape, 4, 1000), unfusedEpReceiveBytes(shape, 4, 1000));
  const transport = { worldSize: 8, rank: 0 } as never;
  const weights = { shape } as never;
  await assert.rejects(UnfusedEpRank.create(transport, weights, { maxTokens: 2000 }),
    /a rank may receive 96000 rows \(8 ranks x 2000 tokens x top-6\), above the combine's 65535.*at most 1365/);
  await assert.rejects(UnfusedEpRank.create(transport, weights, { maxTokens: 0 }), /max tokens 0 is not a positive integer/);
});
