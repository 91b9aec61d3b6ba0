// The host-side index math of the unfused expert-parallel baseline (src/backends/unfused-ep.ts), pure TypeScript so
// that it is tested against a plain simulation without a GPU (test/moe-ep-plan.test.ts).
//
// Experts are placed in contiguous equal blocks (placement.ts): rank p owns global ids [p E/N, (p+1) E/N).
// One forward on a world of N ranks, rank s holding T_s tokens:
//   1. source s: every (token, slot) with a routed expert e is one ROW for owner(e) = floor(e / (E/N)). The rows for
//      peer p are grouped together in (token, slot) order: exactly what the existing dispatch kernel does when given
//      the OWNER RANK as the "expert" of each slot (planEpSend runs its CPU twin, simulateDispatch, with N groups, no
//      shared expert, 16-row padding), so the send buffer is filled on the device by that kernel's gather (FP8 row and
//      its f32 scales) and this file only predicts where each row goes.
//   2. counts: rank s sends sendRows[p] rows to p; every rank learns all counts (an all-gather), and receives from
//      source s the rows [recvOffset[s], recvOffset[s] + counts[s][me]) of its receive buffer (packed, source order).
//   3. the owner runs its local experts on the received rows (each row is a one-slot pseudo-token: local expert id,
//      routing weight), producing one bf16 row per received row, in receive order.
//   4. the bf16 rows go back the same way; at the source they land packed by owner rank (peer order, and within a
//      peer in the order they were sent), followed by the source's own T_s shared-expert rows.
//   5. the source combines: for token t, slot k, the row combineSlotRow[t K + k] of that buffer (-1 masked), the
//      shared row at backRows + t: the SPEC 3 f32 sum in slot order, done by the existing combine kernel.
import { simulateDispatch } from '../kernels/moe-dispatch.js';
import { expertRange } from './placement.js';

/** Rows of the send buffer are padded per peer to this (the dispatch kernel's smallest row tile). */
export const EP_SEND_ROW_TILE = 16;

export interface EpSendPlan {
  worldSize: number;
  tokens: number;
  topK: number;
  /** [T*K] the owner rank of each slot as I64 (-1 masked): the rank dispatch's "expert ids". */
  ownerIds: BigInt64Array;
  /** [N] rows for each peer. */
  sendRows: Int32Array;
  /** [N] first row of each peer's rows in the (padded) send buffer. */
  sendRowOffset: Int32Array;
  /** Rows of the padded send buffer (what the rank dispatch's groupOffset ends with). */
  sendRowsPadded: number;
  /** [T*K] row of each slot in the send buffer (-1 masked). */
  sendSlotRow: Int32Array;
  /** [sendRowsPadded] the receiver's LOCAL expert id of each send row (-1 padding): travels with the row. */
  rowLocalExpert: BigInt64Array;
  /** [sendRowsPadded] the routing weight of each send row (0 padding): travels with the row. */
  rowWeight: Float32Array;
  /** Rows coming back (sum of sendRows); the shared expert's rows follow them in the combine buffer. */
  backRows: number;
  /** [N] first row of each owner's returned rows in the combine buffer (packed, peer order). */
  backRowOffset: Int32Array;
  /** [T*K] row of each slot in the combine buffer (-1 masked): the combine kernel's slot_row. */
  combineSlotRow: Int32Array;
}

/** Global expert id -> owner rank, or -1 for a masked / out-of-range slot. */
export function ownerOf(id: number, experts: number, worldSize: number): number {
  if (!(id >= 0 && id < experts)) return -1;
  return Math.floor(id / (experts / worldSize));
}

/**
 * Source-side plan for T tokens of global ids [T, K] (I32 or I64; -1 masked) and weights [T, K]. `hidden` only sizes
 * the dispatch's shape checks (a positive multiple of 128).
 */
export function planEpSend(ids: Int32Array | BigInt64Array, weights: Float32Array, tokens: number, topK: number,
  experts: number, worldSize: number, hidden: number): EpSendPlan {
  expertRange(experts, 0, worldSize); // throws naming the fix when E does not split evenly
  const K = topK;
  const n = tokens * K;
  if (ids.length < n || weights.length < n) throw new RangeError(`planEpSend: ${tokens} tokens x top-${K} need ${n} ids and weights, got ${ids.length}/${weights.length}`);
  const per = experts / worldSize;
  const ownerIds = new BigInt64Array(n);
  for (let s = 0; s < n; s++) ownerIds[s] = BigInt(ownerOf(Number(ids[s]), experts, worldSize));
  const plan = simulateDispatch({ experts: worldSize, topK: K, hidden, shared: false }, ownerIds, weights, tokens, EP_SEND_ROW_TILE);
  const sendRows = Int32Array.from(plan.groupCount);
  const sendRowOffset = Int32Array.from(plan.groupOffset.subarray(0, worldSize));
  const sendRowsPadded = plan.groupOffset[worldSize];
  const rowLocalExpert = new BigInt64Array(sendRowsPadded).fill(-1n);
  const rowWeight = new Float32Array(sendRowsPadded);
  const backRowOffset = new Int32Array(worldSize);
  for (let p = 1; p < worldSize; p++) backRowOffset[p] = backRowOffset[p - 1] + sendRows[p - 1];
  const combineSlotRow = new Int32Array(n).fill(-1);
  for (let s = 0; s < n; s++) {
    const row = plan.slotRow[s];
    if (row < 0) continue;
    const p = Number(ownerIds[s]);
    rowLocalExpert[row] = BigInt(Number(ids[s]) - p * per);
    rowWeight[row] = weights[s];
    combineSlotRow[s] = backRowOffset[p] + (row - sendRowOffset[p]);
  }
  const backRows = sendRows.reduce((a, b) => a + b, 0);
  return {
    worldSize, tokens, topK: K, ownerIds, sendRows, sendRowOffset, sendRowsPadded, sendSlotRow: plan.slotRow,
    rowLocalExpert, rowWeight, backRows, backRowOffset, combineSlotRow,
  };
}

export interface EpReceivePlan {
  /** [N] rows from each source. */
  recvRows: number[];
  /** [N] first row of each source's rows in the receive buffer (packed, source order). */
  recvRowOffset: number[];
  /** Rows received in all. */
  rows: number;
}

/** Receiver-side plan of rank `me` from the all-gathered counts: counts[s * N + p] = rows rank s sends to rank p. */
export function planEpReceive(counts: ArrayLike<number>, worldSize: number, me: number): EpReceivePlan {
  if (counts.length !== worldSize * worldSize) throw new RangeError(`planEpReceive: ${counts.length} counts for a world of ${worldSize} (need ${worldSize * worldSize})`);
  const recvRows = Array.from({ length: worldSize }, (_, s) => counts[s * worldSize + me]);
  for (const [s, c] of recvRows.entries()) {
    if (!Number.isSafeInteger(c) || c < 0) throw new RangeError(`planEpReceive: rank ${s} says it sends ${c} rows to rank ${me}`);
  }
  const recvRowOffset: number[] = [];
  let acc = 0;
  for (const c of recvRows) { recvRowOffset.push(acc); acc += c; }
  return { recvRows, recvRowOffset, rows: acc };
}

/** The most rows one rank can receive: every token of every rank routed entirely to it (skewed routing). */
export function maxReceiveRows(worldSize: number, maxTokensPerRank: number, topK: number): number {
  return worldSize * maxTokensPerRank * topK;
}
