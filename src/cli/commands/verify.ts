// `megamoe verify --ep N`: the expert-parallel correctness harness (issue 12, deliverable 6). Starts N rank processes
// through the supervisor (src/dist/supervisor.ts; one process per rank, all on device 0 when the machine has fewer
// GPUs than N), each runs the unfused EP pipeline (or, --backend mega_moe, the fused kernel over CUDA IPC symmetric
// memory) on its share of a seeded batch for every --tokens value; then this
// process checks every rank's output against EP1 (the unfused backend on the whole world's batch, one GPU, the same
// seeded weights: SPEC 5 asks bit-identical, or calc_diff <= 3e-5 where the split changes a K order) and against the
// CPU reference backend on a sample of each rank's tokens (SPEC 5: calc_diff <= 3e-5), prints a per-rank table and
// exits 1 on any mismatch.
//
// Exit codes: 0 pass; 1 a mismatch or a failed run (a rank that died, hung past a deadline or threw: the supervisor's
// one message names the rank and the phase, and every rank is gone within seconds); 2 a request this build cannot
// serve (--transport nccl with several ranks on one GPU).
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { intArg, oneOf } from '../args.js';
import { MOE_PRESET_SHAPES, type MoePresetLayer } from '../../kernels/presets.js';
import { EP_ROUTING_MODES, epInputs, type EpRoutingMode } from '../../moe/ep-inputs.js';
import { ROW_TILE_POLICIES, type RowTilePolicy } from '../../backends/unfused-gemm.js';
import { TRANSPORT_NAMES, transportRefusal } from '../../dist/transports.js';
import type { TransportName } from '../../dist/transport.js';
import { RankFailureError, runRanks } from '../../dist/supervisor.js';
import { MAX_WORLD_SIZE } from '../../dist/rank.js';
import type { VerifyRankArgs, VerifyRankSummary } from '../verify-rank.js';
import { calcDiff, decodeBF16Array } from '../../numerics/index.js';
import { HostTensor } from '../../tensor/host.js';
import { rowsOf, sampleRows } from '../../tensor/rows.js';

/** SPEC 5: EP=N against EP=1 (when not bit-identical) and a GPU backend against the CPU reference. */
export const VERIFY_TOLERANCE = 3e-5;
/** Exit code of a request this build cannot serve (not a mismatch). */
export const EXIT_UNSUPPORTED = 2;

export interface VerifyOptions {
  ep: number;
  backend: 'unfused' | 'mega_moe';
  preset: string;
  tokens: number[];
  routing: EpRoutingMode;
  transport: TransportName;
  seed: number;
  rowTile: RowTilePolicy;
  referenceTokens: number;
  timeout: number;
  barrierTimeout: number;
}

/** "0,1,7,128,1000" -> [0, 1, 7, 128, 1000]: non-negative integers, no duplicates. */
export function parseTokenList(text: string): number[] {
  const parts = text.split(',').map((s) => s.trim());
  const out: number[] = [];
  for (const p of parts) {
    if (!/^[0-9]+$/.test(p) || !Number.isSafeInteger(Number(p))) throw new InvalidArgumentError(`--tokens must be a comma-separated list of non-negative integers, got "${text}"`);
    const v = Number(p);
    if (out.includes(v)) throw new InvalidArgumentError(`--tokens lists ${v} twice ("${text}")`);
    out.push(v);
  }
  return out;
}

/** Checks the combination of options; returns the problem as [exit code, message] or null. */
export function verifyRefusal(o: VerifyOptions): [number, string] | null {
  const preset = MOE_PRESET_SHAPES.find((p) => p.label === o.preset);
  if (!preset) return [1, `--preset must be one of ${MOE_PRESET_SHAPES.map((p) => p.label).join(', ')}, got "${o.preset}"`];
  if (preset.experts % o.ep !== 0) {
    const ok = [1, 2, 4, 8, 16].filter((n) => preset.experts % n === 0).join(', ');
    return [1, `--ep ${o.ep} does not divide the ${preset.experts} experts of preset ${preset.label}; use one of ${ok}`];
  }
  if (o.routing === 'skewed' && preset.experts / o.ep < preset.topK) {
    return [1, `--routing skewed puts ${preset.topK} distinct experts of one rank on every token, but at --ep ${o.ep} a rank holds ` +
      `${preset.experts / o.ep} experts of preset ${preset.label}: use a smaller --ep`];
  }
  const maxT = Math.max(0, ...o.tokens);
  const limit = Math.floor(65535 / (o.ep * preset.topK));
  if (o.backend === 'unfused' && maxT > limit) {
    return [1, `--tokens ${maxT} per rank: a rank may receive ${o.ep} x ${maxT} x top-${preset.topK} rows, above the combine's 65535; ` +
      `use at most ${limit} tokens per rank at --ep ${o.ep}`];
  }
  return null;
}

interface RowCheck { rows: number; identical: number; y: number; yRouted: number }

function compareBf16(a: Uint16Array, b: Uint16Array, H: number): RowCheck {
  const rows = a.length / H;
  let identical = 0;
  for (let r = 0; r < rows; r++) {
    let same = true;
    for (let c = 0; c < H; c++) if (a[r * H + c] !== b[r * H + c]) { same = false; break; }
    if (same) identical++;
  }
  return { rows, identical, y: rows === 0 ? 0 : calcDiff(decodeBF16Array(a), decodeBF16Array(b)), yRouted: 0 };
}

/** Where a rank's y first differs from EP1's, for the report of a mismatch. */
function describeMismatch(rank: number, T: number, got: Uint16Array, want: Uint16Array, H: number, sample: number[], refDiff: number): string {
  const a = decodeBF16Array(got);
  const b = decodeBF16Array(want);
  let first = -1;
  let worst = 0;
  let worstAt = -1;
  for (let i = 0; i < a.length; i++) {
    if (got[i] !== want[i] && first < 0) first = i;
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) { worst = d; worstAt = i; }
  }
  const at = (i: number) => (i < 0 ? 'none' : `token ${Math.floor(i / H)} column ${i % H}`);
  return `mismatch: rank ${rank}, T = ${T}: first difference from EP1 at ${at(first)}; largest |EP - EP1| = ${worst} at ${at(worstAt)}` +
    `${worstAt >= 0 ? ` (EP ${a[worstAt]}, EP1 ${b[worstAt]})` : ''}; CPU reference calc_diff ${fmt(refDiff)} on tokens ${sample.join(',') || 'none'}`;
}

const fmt = (v: number) => (v === 0 ? '0' : v.toExponential(1));

export async function runVerify(o: VerifyOptions, log: (line: string) => void = console.log): Promise<number> {
  const refusal = verifyRefusal(o);
  if (refusal) {
    console.error(`megamoe verify: ${refusal[1]}`);
    return refusal[0];
  }
  const preset = MOE_PRESET_SHAPES.find((p) => p.label === o.preset)!;
  const shape: MoePresetLayer = { ...preset, swigluLimit: 10 };
  const N = o.ep;
  const fake = process.env.MEGAMOE_VERIFY_FAKE === '1';
  let devices: number[];
  let gpuNote: string | null = null;
  if (fake) {
    devices = [0];
    gpuNote = `MEGAMOE_VERIFY_FAKE=1: fake ranks (no GPU, no numbers): a test of the rank layer only`;
  } else {
    const { cudaStatus } = await import('../../cuda/index.js');
    const st = cudaStatus();
    if (!st.available) {
      console.error(`megamoe verify: needs a Hopper GPU (sm_90) and its driver: ${st.reason}`);
      return 1;
    }
    const G = st.devices.length;
    if (G >= N) devices = Array.from({ length: N }, (_, i) => i);
    else {
      devices = [0];
      gpuNote = `all ${N} ranks on device 0 (this machine has ${G} GPU${G === 1 ? '' : 's'}): a correctness run, timings in this mode mean nothing`;
    }
  }
  const refuseNccl = o.backend === 'unfused' ? transportRefusal(o.transport, devices.length === 1 ? new Array<number>(N).fill(devices[0]) : devices) : null;
  if (refuseNccl) {
    console.error(`megamoe verify: ${refuseNccl}`);
    return EXIT_UNSUPPORTED;
  }
  const over = o.backend === 'mega_moe' ? 'CUDA IPC symmetric memory (the fused kernel moves the rows; --transport is the unfused baseline\'s)' : o.transport;
  log(`megamoe verify: EP ${N} over ${over}, backend ${o.backend}, preset ${shape.label} (H ${shape.hidden}, I ${shape.inter}, ` +
    `E ${shape.experts}, K ${shape.topK}), routing ${o.routing}, tokens per rank ${o.tokens.join(',')}, seed ${o.seed}, row tile ${o.rowTile}`);
  if (gpuNote) log(`note: ${gpuNote}`);
  const outDir = fs.mkdtempSync(path.join(os.tmpdir(), 'megamoe-verify-'));
  try {
    const args: VerifyRankArgs = {
      shape, backend: o.backend, seed: o.seed, tokens: o.tokens, routing: o.routing, transport: o.transport, rowTile: o.rowTile, outDir,
      ...(fake ? { fake: { stepMs: Number(process.env.MEGAMOE_VERIFY_FAKE_STEP_MS ?? 50) } } : {}),
    };
    let results: VerifyRankSummary[];
    try {
      const r = await runRanks({
        worldSize: N, program: new URL('../verify-rank.js', import.meta.url), args, devices,
        timeoutMs: o.timeout * 1000, barrierTimeoutMs: o.barrierTimeout * 1000,
        onSpawn: (rank, pid) => log(`rank ${rank} started: pid ${pid}, device ${devices.length === 1 ? devices[0] : devices[rank]}`),
        onBarrier: (name) => { if (name === 'ready') log(`all ${N} ranks ready (weights, transport and kernels loaded)`); },
      });
      results = r.results as VerifyRankSummary[];
    } catch (err) {
      if (err instanceof RankFailureError) {
        console.error(`megamoe verify: ${err.message}`);
        return 1;
      }
      throw err;
    }
    if (fake) {
      for (const r of results) log(`rank ${r.rank}: ${r.steps.length} fake batches`);
      log('verify: FAKE run finished (nothing was checked)');
      return 0;
    }
    return await compareAll(o, shape, results, log);
  } finally {
    fs.rmSync(outDir, { recursive: true, force: true });
  }
}

/** EP1 on the whole world's batch + the CPU reference on samples, against every rank's files. */
async function compareAll(o: VerifyOptions, shape: MoePresetLayer, results: VerifyRankSummary[], log: (line: string) => void): Promise<number> {
  const { useDevice } = await import('../../cuda/index.js');
  const { DeviceMoeWeights, UnfusedMoe, layerFromDeviceWeights } = await import('../../backends/unfused.js');
  const { ReferenceBackend } = await import('../../backends/reference.js');
  const N = o.ep;
  const { hidden: H, topK: K, experts: E } = shape;
  useDevice(0);
  const ids = Array.from({ length: E }, (_, i) => i);
  const full = await DeviceMoeWeights.randomExperts({ hidden: H, inter: shape.inter, experts: E, topK: K, swigluLimit: shape.swigluLimit }, o.seed, ids, E);
  const maxT = Math.max(1, ...o.tokens);
  const ep1 = await UnfusedMoe.create(full, N * maxT);
  ep1.rowTilePolicy = o.rowTile;
  const ref = new ReferenceBackend();
  ref.prepare(layerFromDeviceWeights(full));
  const header = ['rank', 'dev', 'T', 'sent', 'recv', 'EP1 same rows', 'EP1 calc_diff y/y_routed', 'ref rows', 'ref calc_diff y', 'ms*', 'status'];
  const table: string[][] = [];
  let failures = 0;
  let notIdentical = 0;
  const details: string[] = [];
  const refLines: string[] = [];
  try {
    for (const T of o.tokens) {
      // The CPU reference check pools every rank's sampled tokens of this batch: calc_diff over a handful of rows of
      // a tiny layer is too noisy for SPEC 5's whole-output tolerance (measured: 7.9e-5 on 4 tokens of H = 256 for
      // an output bit-identical to EP1's).
      const pooledMine: Float32Array[] = [];
      const pooledRef: Float32Array[] = [];
      const inputs = Array.from({ length: N }, (_, r) => epInputs(o.seed, r, T, shape, N, o.routing));
      // EP1: the whole world's batch in one forward (global ids are the full layer's local ids).
      const WT = N * T;
      const x = new HostTensor('BF16', [WT, H], new Uint16Array(WT * H));
      const gid = new BigInt64Array(WT * K);
      const gw = new Float32Array(WT * K);
      inputs.forEach((inp, r) => {
        x.data.set(inp.x.data, r * T * H);
        gid.set(inp.ids.data, r * T * K);
        gw.set(inp.weights.data, r * T * K);
      });
      ep1.uploadInputs(x, gid, gw);
      ep1.enqueue(WT);
      const want = ep1.downloadOutputs(WT);
      for (const res of results) {
        const r = res.rank;
        const step = res.steps.find((s) => s.tokens === T);
        if (!step) throw new Error(`rank ${r} returned no batch of ${T} tokens`);
        const bytes = fs.readFileSync(step.file);
        if (bytes.byteLength !== T * H * 4) throw new Error(`rank ${r}'s output for T = ${T} has ${bytes.byteLength} bytes, expected ${T * H * 4}`);
        const u16 = new Uint16Array(bytes.buffer, bytes.byteOffset, T * H * 2);
        const y = u16.subarray(0, T * H);
        const yRouted = u16.subarray(T * H);
        const c = compareBf16(y, want.y.data.subarray(r * T * H, (r + 1) * T * H), H);
        const cr = compareBf16(yRouted, want.yRouted.data.subarray(r * T * H, (r + 1) * T * H), H);
        // The CPU reference on a sample of this rank's tokens.
        const sample = sampleRows(o.seed * 31 + r * 7 + T, T, o.referenceTokens);
        let refDiff = 0;
        if (sample.length > 0) {
          const inp = inputs[r];
          const got = await ref.forward(rowsOf(inp.x, sample), rowsOf(inp.ids, sample), rowsOf(inp.weights, sample));
          const mine = rowsOf(new HostTensor('BF16', [T, H], Uint16Array.from(y)), sample);
          const m = decodeBF16Array(mine.data);
          const g = decodeBF16Array(got.y.data);
          pooledMine.push(m);
          pooledRef.push(g);
          refDiff = calcDiff(m, g);
        }
        const ok = c.y <= VERIFY_TOLERANCE && cr.y <= VERIFY_TOLERANCE && Number.isFinite(c.y + cr.y + refDiff);
        if (!ok) {
          failures++;
          details.push(describeMismatch(r, T, y, want.y.data.subarray(r * T * H, (r + 1) * T * H), H, sample, refDiff));
        }
        if (c.identical !== c.rows) notIdentical++;
        table.push([String(r), String(res.device), String(T), String(step.rowsSent), String(step.rowsReceived),
          `${c.identical}/${c.rows}`, `${fmt(c.y)} / ${fmt(cr.y)}`, String(sample.length), fmt(refDiff), step.ms.toFixed(1), ok ? 'ok' : 'MISMATCH']);
      }
      const rows = pooledMine.reduce((n, a) => n + a.length / H, 0);
      if (rows > 0) {
        const pooled = calcDiff(concatF32(pooledMine), concatF32(pooledRef));
        const refOk = pooled <= VERIFY_TOLERANCE && Number.isFinite(pooled);
        refLines.push(`T = ${T}: CPU reference on ${rows} sampled tokens of all ranks: calc_diff ${fmt(pooled)} ${refOk ? 'ok' : 'MISMATCH'}`);
        if (!refOk) {
          failures++;
          details.push(`mismatch: T = ${T}: the ranks' outputs differ from the CPU reference by calc_diff ${fmt(pooled)} over ${rows} sampled tokens`);
        }
      }
    }
  } finally {
    ep1.dispose();
    full.dispose();
  }
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd();
  log(line(header));
  for (const row of table) log(line(row));
  log('(* ms: wall time of the forward on the rank, host syncs included; meaningless when ranks share a GPU)');
  for (const l of refLines) log(l);
  const checks = table.length + refLines.length;
  for (const d of details) log(d);
  if (failures > 0) {
    log(`verify: FAIL: ${failures} of ${checks} checks (rank x batch vs EP1, batch vs the CPU reference) outside SPEC 5 (EP vs EP1 and vs the CPU reference: calc_diff <= ${VERIFY_TOLERANCE})`);
    return 1;
  }
  log(`verify: PASS: ${checks} checks (rank x batch vs EP1, batch vs the CPU reference) within SPEC 5 (calc_diff <= ${VERIFY_TOLERANCE} vs EP1 and vs the CPU reference); ` +
    (notIdentical === 0 ? 'every row bit-identical to EP1' : `${notIdentical} of them not bit-identical to EP1 (within tolerance)`));
  return 0;
}

export function register(program: Command): void {
  program
    .command('verify')
    .description('expert-parallel correctness: N rank processes run the EP pipeline on a seeded batch; outputs checked against EP1 and the CPU reference')
    .requiredOption('--ep <N>', `ranks (expert-parallel size), 1..${MAX_WORLD_SIZE}`, intArg('--ep', 1, MAX_WORLD_SIZE))
    .option('--backend <name>', 'unfused (the EP baseline over --transport) | mega_moe (the fused kernel across ranks)', oneOf('--backend', ['unfused', 'mega_moe'] as const), 'unfused')
    .option('--preset <name>', `layer shape: ${MOE_PRESET_SHAPES.map((p) => p.label).join(' | ')}`, oneOf('--preset', MOE_PRESET_SHAPES.map((p) => p.label)), 'tiny')
    .option('--tokens <list>', 'tokens per rank, comma-separated (each a separate batch)', parseTokenList, [0, 1, 7, 128, 1000])
    .option('--routing <mode>', 'uniform (2% masked slots) | skewed (every token to one rank\'s experts)', oneOf('--routing', EP_ROUTING_MODES), 'uniform')
    .option('--transport <name>', 'ipc (CUDA IPC peer copies, one host, several ranks per GPU ok) | nccl (one GPU per rank)', oneOf('--transport', TRANSPORT_NAMES), 'ipc')
    .option('--seed <S>', 'seed of the weights and inputs', intArg('--seed', 0, 2 ** 31 - 1), 1)
    .option('--row-tile <policy>', 'GEMM path on both EP and EP1: auto | decode | normal', oneOf('--row-tile', ROW_TILE_POLICIES), 'auto')
    .option('--reference-tokens <N>', 'tokens per rank and batch checked against the CPU reference', intArg('--reference-tokens', 0, 1 << 20), 4)
    .option('--timeout <S>', 'deadline of the whole rank run, seconds', intArg('--timeout', 1, 86400), 900)
    .option('--barrier-timeout <S>', 'deadline of each barrier / exchange after the first rank arrives, seconds', intArg('--barrier-timeout', 1, 86400), 300)
    .action(async (opts: VerifyOptions) => {
      process.exitCode = await runVerify(opts);
    });
}

function concatF32(parts: readonly Float32Array[]): Float32Array {
  const out = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
  let at = 0;
  for (const a of parts) {
    out.set(a, at);
    at += a.length;
  }
  return out;
}
