// The unfused expert-parallel baseline (issue 12, deliverable 5): what the fused kernel's EP mode is compared against.
// Each rank holds E/N experts (contiguous block, placement.ts) plus the shared expert; one forward is
//
//   source (every rank, its own T tokens)
//     staging + the shared expert      the unfused pipeline (UnfusedMoe) run with every routed slot masked: it stages
//                                      x (e4m3 + f32 scales) and computes the shared expert's T rows, nothing else
//     rank dispatch                    the dispatch kernel with the OWNER RANK as each slot's "expert" (N groups, no
//                                      shared group, 16-row padding, scales k-major = row-major): the send buffer,
//                                      one FP8 row + its scales per (token, slot), grouped by owner rank
//   all-gather of the send counts; all-to-all of rows, scales, local expert ids, routing weights
//   owner (every rank, the rows it received)
//     dispatch (one slot per row)      the same kernels specialised on top-k 1, no shared expert
//     L1 / L2 grouped GEMMs            the same bound GEMMs over this rank's experts
//     combine (one slot per row)       bf16(+0 + o) = o: the L2 output packed back into receive order
//   all-to-all of the bf16 rows back to their sources
//   source
//     combine                          the same combine kernel (top-k K, shared): for each token the f32 sum of its K
//                                      returned rows in slot order, rounded once, plus its shared row (SPEC 3)
//
// No device code of its own: every launch is a kernel of the unfused pipeline; the host predicts every index with
// src/moe/ep-plan.ts (tested against a simulation). The host needs the routing (it plans from it) and syncs once per
// forward for the counts (the NCCL baseline of the field does the same count exchange).
//
// Numerics (SPEC 5, "EP changes nothing numerically"): every GEMM row is its token's staged row times its expert's
// weights, as at EP1, and the source sums the same bf16 rows in the same slot order, so the result equals EP1's bit
// for bit WHEN the GEMMs take the same path (decode vs 128-row tiles) for those rows. The path is picked from rows per
// expert, which differ between the two layouts (the owner sees R rows over E/N experts); a different path may change
// the in-block accumulation order of the tensor cores, so the contract is: bit-identical or within calc_diff 3e-5.
// `megamoe verify --ep N --row-tile normal` pins one path on both sides to separate the two. (-0 rows come back as
// +0 from the owner's combine; the source's f32 sum starts from +0, so the result is the same.)
import {
  copyDeviceToDeviceRaw, copyDeviceToHostRaw, DeviceBuffer, ensureContext, type Stream,
} from '../cuda/index.js';
import { MoeCombine } from '../kernels/moe-combine.js';
import { DispatchBuffers, dispatchCapacity, MoeDispatch, simulateDispatch, type DispatchShape } from '../kernels/moe-dispatch.js';
import { planEpReceive, planEpSend, maxReceiveRows, EP_SEND_ROW_TILE, type EpReceivePlan, type EpSendPlan } from '../moe/ep-plan.js';
import { checkTokenCapacity, GuardError } from '../moe/guards.js';
import type { MoeForwardResult } from '../moe/backend.js';
import { QUANT_BLOCK } from '../numerics/quant.js';
import type { HostTensor } from '../tensor/host.js';
import type { DeviceRegion, Transport } from '../dist/transport.js';
import { RECEIVE_ALIGN } from '../dist/ipc-transport.js';
import { chooseRowTile, createExpertGemms, type ExpertGemms, type RowTilePolicy } from './unfused-gemm.js';
import { DeviceMoeWeights, UnfusedMoe, type UnfusedShape } from './unfused.js';

/** The combine kernel takes one grid row per token: the owner's one-slot combine is bounded by it. */
const COMBINE_MAX_TOKENS = 65535;

export interface UnfusedEpOptions {
  /** Tokens per rank per forward (every rank the same). */
  maxTokens: number;
  rowTilePolicy?: RowTilePolicy;
}

/** The receive regions one rank needs, in allocation order (bytes, before alignment). */
function receiveSizes(shape: UnfusedShape, worldSize: number, maxTokens: number): {
  counts: number; x: number; sf: number; ids: number; w: number; combine: number;
} {
  const { hidden: H, topK: K } = shape;
  const R = maxReceiveRows(worldSize, maxTokens, K);
  return {
    counts: worldSize * worldSize * 4,
    x: R * H,
    sf: R * (H / QUANT_BLOCK) * 4,
    ids: R * 8,
    w: R * 4,
    combine: maxTokens * (K + 1) * H * 2,
  };
}

/** A sub-buffer list shaped for logs: bytes of each receive region and the total. */
export function unfusedEpReceiveBytes(shape: UnfusedShape, worldSize: number, maxTokens: number): number {
  const s = receiveSizes(shape, worldSize, maxTokens);
  return Object.values(s).reduce((a, b) => a + Math.ceil(b / RECEIVE_ALIGN) * RECEIVE_ALIGN, 0);
}

/** One rank of the unfused EP layer. Every rank creates it with the same shape and options, collectively. */
export class UnfusedEpRank {
  readonly rank: number;
  readonly worldSize: number;
  /** Routed experts of the whole layer (E). */
  readonly experts: number;
  readonly shape: UnfusedShape;
  readonly maxTokens: number;
  readonly transport: Transport;
  /** The last forward's plans (tests, verify's report). */
  lastSend: EpSendPlan | undefined;
  lastReceive: EpReceivePlan | undefined;
  private readonly local: UnfusedMoe;
  private readonly rankDispatch: MoeDispatch;
  private readonly rankBufs: DispatchBuffers;
  private readonly expDispatch: MoeDispatch;
  private readonly expBufs: DispatchBuffers;
  private readonly expGemms: ExpertGemms;
  private readonly expCombine: MoeCombine;
  private readonly srcCombine: MoeCombine;
  readonly dev: {
    ownerIds: DeviceBuffer; metaIds: DeviceBuffer; metaW: DeviceBuffer; counts: DeviceBuffer; act: DeviceBuffer;
    actSf: DeviceBuffer; expOut: DeviceBuffer; back: DeviceBuffer; slotRow: DeviceBuffer; groupOffset: DeviceBuffer;
  };
  readonly recv: { counts: DeviceRegion; x: DeviceRegion; sf: DeviceRegion; ids: DeviceRegion; w: DeviceRegion; combine: DeviceRegion };
  private readonly owned: Array<{ dispose(): void }>;
  private readonly policy: RowTilePolicy;
  /** The host tensors of the last upload (enqueue's reuseUpload check). */
  private lastUpload: { x: HostTensor<'BF16'>; weights: HostTensor<'F32'> } | undefined;

  private constructor(p: {
    transport: Transport; shape: UnfusedShape; maxTokens: number; local: UnfusedMoe; rankDispatch: MoeDispatch;
    rankBufs: DispatchBuffers; expDispatch: MoeDispatch; expBufs: DispatchBuffers; expGemms: ExpertGemms; expCombine: MoeCombine;
    srcCombine: MoeCombine; dev: UnfusedEpRank['dev']; recv: UnfusedEpRank['recv']; owned: Array<{ dispose(): void }>;
    policy: RowTilePolicy;
  }) {
    this.transport = p.transport; this.rank = p.transport.rank; this.worldSize = p.transport.worldSize;
    this.shape = p.shape; this.experts = p.shape.experts * p.transport.worldSize; this.maxTokens = p.maxTokens;
    this.local = p.local; this.rankDispatch = p.rankDispatch; this.rankBufs = p.rankBufs; this.expDispatch = p.expDispatch;
    this.expBufs = p.expBufs; this.expGemms = p.expGemms; this.expCombine = p.expCombine; this.srcCombine = p.srcCombine;
    this.dev = p.dev; this.recv = p.recv; this.owned = p.owned; this.policy = p.policy;
  }

  /**
   * Bytes of symmetric receive memory the IPC transport must be created with for this layer
   * (IpcTransport.create(ctx, { receiveBytes })).
   */
  static receiveBytes(localShape: UnfusedShape, worldSize: number, maxTokens: number): number {
    return unfusedEpReceiveBytes(localShape, worldSize, maxTokens);
  }

  /**
   * Builds the rank's pipeline over its local weights (E/N experts + the shared expert as the last group) and carves
   * its receive buffers from the transport (collective with the other ranks only through the transport's setup).
   */
  static async create(transport: Transport, weights: DeviceMoeWeights, options: UnfusedEpOptions): Promise<UnfusedEpRank> {
    const shape = weights.shape;
    const N = transport.worldSize;
    const { hidden: H, inter: I, topK: K, experts: El } = shape;
    const T = options.maxTokens;
    if (!(Number.isInteger(T) && T >= 1)) throw new GuardError('BAD_INPUT', `unfused EP: max tokens ${T} is not a positive integer`, 'pass maxTokens >= 1');
    const R = maxReceiveRows(N, T, K);
    if (R > COMBINE_MAX_TOKENS) {
      throw new GuardError('TOKEN_CAPACITY', `unfused EP: a rank may receive ${R} rows (${N} ranks x ${T} tokens x top-${K}), above the combine's ` +
        `${COMBINE_MAX_TOKENS}`, `lower the tokens per rank to at most ${Math.floor(COMBINE_MAX_TOKENS / (N * K))}`);
    }
    const owned: Array<{ dispose(): void }> = [];
    const keep = <X extends { dispose(): void }>(o: X): X => { owned.push(o); return o; };
    try {
      const local = keep(await UnfusedMoe.create(weights, T));
      const rankShape: DispatchShape = { experts: N, topK: K, hidden: H, shared: false };
      const expShape: DispatchShape = { experts: El, topK: 1, hidden: H, shared: false };
      const [rankDispatch, expDispatch, expCombine, srcCombine] = await Promise.all([
        MoeDispatch.create(rankShape),
        MoeDispatch.create(expShape),
        MoeCombine.create({ hidden: H, topK: 1, experts: El, shared: false }),
        MoeCombine.create({ hidden: H, topK: K, experts: El, shared: true }),
      ]);
      // Send rows: k-major scales, i.e. row-major [rows, H/128], the layout the owner's dispatch reads as x_sf.
      const rankBufs = keep(new DispatchBuffers(rankShape, dispatchCapacity(rankShape, T), 'k-major'));
      const expCap = dispatchCapacity(expShape, R);
      const expBufs = keep(new DispatchBuffers(expShape, expCap));
      const alloc = (bytes: number) => keep(DeviceBuffer.alloc(bytes));
      const dev = {
        ownerIds: alloc(T * K * 8),
        metaIds: alloc(rankBufs.capacity.maxRows * 8),
        metaW: alloc(rankBufs.capacity.maxRows * 4),
        counts: alloc(N * 4),
        act: alloc(expCap.maxRows * I),
        actSf: alloc((I / QUANT_BLOCK) * expCap.maxRows * 4),
        expOut: alloc(expCap.maxRows * H * 2),
        back: alloc(R * H * 2),
        slotRow: alloc(T * K * 4),
        groupOffset: alloc((El + 2) * 4),
      };
      dev.act.memset8(0); dev.actSf.memset32(0); dev.expOut.memset8(0);
      const expGemms = keep(await createExpertGemms({
        shape, maxRows: expCap.maxRows, weights, a: expBufs.a, sfa: expBufs.sfa, tileGroup: expBufs.tileGroup,
        numMTiles: expBufs.numMTiles, rowWeight: expBufs.rowWeight, act: dev.act, actSf: dev.actSf, out: dev.expOut,
      }));
      const sizes = receiveSizes(shape, N, T);
      const recv = {
        counts: transport.allocateReceive(sizes.counts), x: transport.allocateReceive(sizes.x), sf: transport.allocateReceive(sizes.sf),
        ids: transport.allocateReceive(sizes.ids), w: transport.allocateReceive(sizes.w), combine: transport.allocateReceive(sizes.combine),
      };
      local.rowTilePolicy = options.rowTilePolicy ?? 'auto';
      // The memsets above ran on the legacy stream; the pipeline's stream is non-blocking and would not wait for them.
      ensureContext().synchronize();
      return new UnfusedEpRank({
        transport, shape, maxTokens: T, local, rankDispatch, rankBufs, expDispatch, expBufs, expGemms, expCombine, srcCombine,
        dev, recv, owned, policy: options.rowTilePolicy ?? 'auto',
      });
    } catch (err) {
      for (const o of owned.reverse()) o.dispose();
      throw err;
    }
  }

  /** The stream every launch of this rank is queued on. */
  get stream(): Stream { return this.local.stream; }

  /**
   * One forward of this rank's T tokens: x BF16 [T, H], GLOBAL ids [T, K] (I32/I64, -1 masked), weights F32 [T, K].
   * Collective: every rank calls it once per step (T may be 0 on some). Returns this rank's y_routed and y.
   */
  async forward(x: HostTensor<'BF16'>, ids: HostTensor<'I64'> | HostTensor<'I32'>, weights: HostTensor<'F32'>): Promise<MoeForwardResult> {
    await this.enqueue(x, ids, weights);
    return this.local.downloadOutputs(x.shape[0]);
  }

  /**
   * forward() without the download of y: every launch of the step queued on `stream` (the host still syncs once for
   * the counts, and the IPC transport orders the ranks on the host). `reuseUpload`: skip the host-to-device copy of x
   * and the routing weights because the previous call uploaded these very tensors (the benchmark times the layer,
   * not the copy of host inputs a model never makes: its x is already on the device); refused for other tensors.
   */
  async enqueue(x: HostTensor<'BF16'>, ids: HostTensor<'I64'> | HostTensor<'I32'>, weights: HostTensor<'F32'>,
    options: { reuseUpload?: boolean } = {}): Promise<void> {
    const { hidden: H, topK: K, experts: El } = this.shape;
    const N = this.worldSize;
    const T = x.shape[0];
    checkTokenCapacity(T, this.maxTokens, 'the unfused EP rank');
    if (ids.numel !== T * K || weights.numel !== T * K) {
      throw new GuardError('BAD_INPUT', `unfused EP: ${T} tokens need ${T * K} ids and weights, got ${ids.numel} / ${weights.numel}`, 'pass [T, K] routing');
    }
    const stream = this.local.stream;
    const idData = ids.data as Int32Array | BigInt64Array;
    const send = planEpSend(idData, weights.data, T, K, this.experts, N, H);
    this.lastSend = send;

    // 1. staging + the shared expert (every routed slot masked), 2. the send buffer by owner rank.
    if (T > 0) {
      if (options.reuseUpload) {
        if (this.lastUpload?.x !== x || this.lastUpload.weights !== weights) {
          throw new Error('unfused EP: reuseUpload needs the x and weights tensors of the previous forward (upload them once first)');
        }
      } else {
        this.local.uploadInputs(x, new BigInt64Array(T * K).fill(-1n), weights.data);
        this.lastUpload = { x, weights };
      }
      this.local.enqueue(T, stream);
      this.dev.ownerIds.copyFromHost(send.ownerIds, { stream, bytes: T * K * 8 });
      const st = this.local.staged;
      this.rankDispatch.launch(stream, { xFp8: st.xFp8.ptr, xSf: st.xSf.ptr, ids: this.dev.ownerIds.ptr, weights: this.local.io.weights.ptr },
        this.rankBufs, T, EP_SEND_ROW_TILE);
      this.dev.metaIds.copyFromHost(send.rowLocalExpert, { stream, bytes: send.sendRowsPadded * 8 });
      this.dev.metaW.copyFromHost(send.rowWeight, { stream, bytes: send.sendRowsPadded * 4 });
    }

    // 3. every rank's send counts, on the host (the one sync of the forward).
    this.dev.counts.copyFromHost(send.sendRows, { stream });
    await this.transport.allGather(this.dev.counts.ptr, this.recv.counts.ptr, N, 'int32', stream);
    stream.synchronize();
    const counts = new Int32Array(N * N);
    copyDeviceToHostRaw(this.recv.counts.ptr, counts);
    const rp = planEpReceive(counts, N, this.rank);
    this.lastReceive = rp;
    const maxRecv = maxReceiveRows(N, this.maxTokens, K);
    if (rp.rows > maxRecv) throw new Error(`unfused EP rank ${this.rank}: peers send ${rp.rows} rows, more than the ${maxRecv} it was built for`);

    // 4. rows, scales, local expert ids and weights to their owners.
    const scale = (v: ArrayLike<number>, k: number) => Array.from(v, (c) => c * k);
    const fwd = async (sendPtr: bigint, recvPtr: bigint, dtype: 'uint8' | 'float32' | 'int64', perRow: number) => {
      await this.transport.allToAllV({
        send: sendPtr, recv: recvPtr, dtype,
        sendCounts: scale(send.sendRows, perRow), sendOffsets: scale(send.sendRowOffset, perRow),
        recvCounts: scale(rp.recvRows, perRow), recvOffsets: scale(rp.recvRowOffset, perRow),
      }, stream);
    };
    await fwd(this.rankBufs.a.ptr, this.recv.x.ptr, 'uint8', H);
    await fwd(this.rankBufs.sfa.ptr, this.recv.sf.ptr, 'float32', H / QUANT_BLOCK);
    await fwd(this.dev.metaIds.ptr, this.recv.ids.ptr, 'int64', 1);
    await fwd(this.dev.metaW.ptr, this.recv.w.ptr, 'float32', 1);

    // 5. the owner's experts on the received rows (one slot each), packed back into receive order.
    const R = rp.rows;
    if (R > 0) {
      const tile = chooseRowTile(R, { topK: 1, experts: El }, this.policy);
      this.expDispatch.launch(stream, { xFp8: this.recv.x.ptr, xSf: this.recv.sf.ptr, ids: this.recv.ids.ptr, weights: this.recv.w.ptr },
        this.expBufs, R, tile.rows);
      this.expGemms.l1(tile, stream);
      this.expGemms.l2(tile, stream);
      this.expCombine.launch(stream, {
        expertOut: this.dev.expOut, slotRow: this.expBufs.slotRow, groupOffset: this.expBufs.groupOffset, yRouted: this.dev.back, y: this.dev.back,
      }, R);
    }

    // 6. the bf16 rows back to their sources, packed by owner rank.
    await this.transport.allToAllV({
      send: this.dev.back.ptr, recv: this.recv.combine.ptr, dtype: 'bfloat16',
      sendCounts: scale(rp.recvRows, H), sendOffsets: scale(rp.recvRowOffset, H),
      recvCounts: scale(send.sendRows, H), recvOffsets: scale(send.backRowOffset, H),
    }, stream);

    // 7. the combine at the source: the K returned rows in slot order + the shared row (after the returned rows).
    if (T > 0) {
      const masked = simulateDispatch({ experts: El, topK: K, hidden: H, shared: true }, new BigInt64Array(T * K).fill(-1n),
        weights.data, T, this.local.rowTile(T).rows);
      const sharedFirst = masked.groupOffset[El]; // 0: no routed rows in the masked run; computed, not assumed
      copyDeviceToDeviceRaw(this.recv.combine.ptr + BigInt(send.backRows * H * 2),
        this.local.expertRows.ptr + BigInt(sharedFirst * H * 2), T * H * 2, stream);
      this.dev.slotRow.copyFromHost(send.combineSlotRow, { stream, bytes: T * K * 4 });
      this.dev.groupOffset.copyFromHost(new Int32Array(El + 2).fill(send.backRows), { stream });
      this.srcCombine.launch(stream, {
        expertOut: this.recv.combine.ptr, slotRow: this.dev.slotRow, groupOffset: this.dev.groupOffset,
        yRouted: this.local.io.yRouted, y: this.local.io.y,
      }, T);
    }
  }

  /** Frees this rank's buffers (not the transport, not the weights). Call after a transport barrier on a healthy path. */
  dispose(): void {
    if (this.owned.length === 0) return;
    this.local.stream.synchronize();
    for (const o of this.owned.reverse()) o.dispose();
    this.owned.length = 0;
  }

  [Symbol.dispose](): void { this.dispose(); }
}

