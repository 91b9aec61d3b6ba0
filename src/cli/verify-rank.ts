// The rank program of `megamoe verify --ep N` (started by the supervisor, one process per rank): builds this rank's
// share of a seeded random layer (its E/N experts + the shared expert, byte for byte those experts of the whole
// layer) and either the transport and the unfused EP pipeline or the fused kernel over symmetric memory
// (--backend mega_moe), then runs every requested batch and writes its outputs to the verify folder (y then
// y_routed, bf16, raw), returning a small summary. The verifying process compares them.
//
// Phases (named in any failure message): cuda-init, weights, transport (unfused) / build, symmetric-memory (mega_moe),
// then forward:T<n> per batch, teardown.
// Kernels are compiled by rank 0 first (the others wait at a barrier, then load them from the disk cache), so N
// ranks do not run N copies of every nvcc at once.
//
// MEGAMOE_VERIFY_FAKE=1 (tests only, no GPU): the same phases and control-channel traffic with no CUDA at all, each
// forward a sleep of MEGAMOE_VERIFY_FAKE_STEP_MS; it exists so the CPU tests can kill a rank in the middle of a verify.
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { RankContext } from '../dist/rank-channel.js';
import type { TransportName } from '../dist/transport.js';
import type { EpRoutingMode } from '../moe/ep-inputs.js';
import type { RowTilePolicy } from '../backends/unfused-gemm.js';
import type { MoePresetLayer } from '../kernels/presets.js';


export interface VerifyRankArgs {
  shape: MoePresetLayer;
  backend: 'unfused' | 'mega_moe';
  seed: number;
  tokens: number[];
  routing: EpRoutingMode;
  transport: TransportName;
  rowTile: RowTilePolicy;
  outDir: string;
  fake?: { stepMs: number };
}

export interface VerifyStepSummary {
  tokens: number;
  /** Rows this rank sent to other ranks / received from them (its own rows to itself are counted in both). */
  rowsSent: number;
  rowsReceived: number;
  /** Wall time of the forward on this rank (meaningless when several ranks share one GPU). */
  ms: number;
  file: string;
}

export interface VerifyRankSummary {
  rank: number;
  device: number;
  pid: number;
  steps: VerifyStepSummary[];
}

/** Where rank r's outputs of the batch of T tokens are written. */
export function verifyOutputFile(outDir: string, rank: number, tokens: number): string {
  return path.join(outDir, `rank${rank}-t${tokens}.bin`);
}

async function fakeRank(ctx: RankContext, a: VerifyRankArgs): Promise<VerifyRankSummary> {
  ctx.phase('weights');
  await ctx.barrier('built-0');
  ctx.phase('build');
  await ctx.ready();
  const steps: VerifyStepSummary[] = [];
  for (const T of a.tokens) {
    ctx.phase(`forward:T${T}`);
    await ctx.exchange(`fake:${T}`, Uint8Array.of(ctx.rank));
    await new Promise((r) => setTimeout(r, a.fake!.stepMs));
    const file = verifyOutputFile(a.outDir, ctx.rank, T);
    fs.writeFileSync(file, new Uint8Array(T * a.shape.hidden * 4));
    steps.push({ tokens: T, rowsSent: 0, rowsReceived: 0, ms: a.fake!.stepMs, file });
  }
  ctx.phase('teardown');
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, steps };
}

/** Writes y then y_routed (bf16, raw) of one batch to the verify folder; returns the file. */
function writeOutputs(outDir: string, rank: number, T: number, H: number, out: { y: { data: Uint16Array }; yRouted: { data: Uint16Array } }): string {
  const file = verifyOutputFile(outDir, rank, T);
  const bytes = new Uint8Array(T * H * 4);
  bytes.set(new Uint8Array(out.y.data.buffer, out.y.data.byteOffset, out.y.data.byteLength), 0);
  bytes.set(new Uint8Array(out.yRouted.data.buffer, out.yRouted.data.byteOffset, out.yRouted.data.byteLength), T * H * 2);
  fs.writeFileSync(file, bytes);
  return file;
}

/**
 * The fused kernel across ranks: one launch per batch on every rank; it pulls the tokens routed to this rank's
 * experts from their ranks' buffers and each token's rows back from its experts' ranks. "sent" = this rank's routed
 * (unmasked) slots, to any rank; "received" = the routed rows this rank's experts got from all ranks.
 */
async function megaRank(ctx: RankContext, a: VerifyRankArgs): Promise<VerifyRankSummary> {
  const { startMegaMoeEpRank } = await import('../backends/mega-moe-ep-rank.js');
  const { epInputs } = await import('../moe/ep-inputs.js');
  const { shape } = a;
  const { moe, close } = await startMegaMoeEpRank(ctx, a);
  await ctx.ready();
  const steps: VerifyStepSummary[] = [];
  for (const T of a.tokens) {
    ctx.phase(`forward:T${T}`);
    const inp = epInputs(a.seed, ctx.rank, T, shape, ctx.worldSize, a.routing);
    const t0 = performance.now();
    moe.uploadInputs(inp.x, inp.ids.data, inp.weights.data);
    moe.enqueue(T);
    const out = moe.downloadOutputs(T);
    const ms = performance.now() - t0;
    const file = writeOutputs(a.outDir, ctx.rank, T, shape.hidden, out);
    const sent = inp.ids.data.reduce((n, id) => n + (id >= 0n ? 1 : 0), 0);
    steps.push({ tokens: T, rowsSent: sent, rowsReceived: T === 0 ? 0 : moe.routedRows(), ms, file });
  }
  ctx.phase('teardown');
  await close();
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, steps };
}

export default async function verifyRank(ctx: RankContext): Promise<VerifyRankSummary> {
  const a = ctx.args as VerifyRankArgs;
  if (a.fake) return fakeRank(ctx, a);
  if (a.backend === 'mega_moe') return megaRank(ctx, a);
  // Imported here so the fake mode loads no CUDA code at all.
  const { startUnfusedEpRank } = await import('../backends/unfused-ep-rank.js');
  const { epInputs } = await import('../moe/ep-inputs.js');

  const { shape } = a;
  const N = ctx.worldSize;
  const { ep, close } = await startUnfusedEpRank(ctx, a);
  await ctx.ready();
  const steps: VerifyStepSummary[] = [];
  for (const T of a.tokens) {
    ctx.phase(`forward:T${T}`);
    const inp = epInputs(a.seed, ctx.rank, T, shape, N, a.routing);
    const t0 = performance.now();
    const out = await ep.forward(inp.x, inp.ids, inp.weights);
    const ms = performance.now() - t0;
    const file = writeOutputs(a.outDir, ctx.rank, T, shape.hidden, out);
    const sent = ep.lastSend!.sendRows.reduce((x, y) => x + y, 0);
    steps.push({ tokens: T, rowsSent: sent, rowsReceived: ep.lastReceive!.rows, ms, file });
  }
  ctx.phase('teardown');
  await close();
  return { rank: ctx.rank, device: ctx.device, pid: process.pid, steps };
}
