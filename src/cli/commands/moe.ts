// `megamoe moe`: runs one MoE layer of a checkpoint on seeded random hidden states with a chosen backend and
// prints the routing, the time of each part and the accuracy against the f64 evaluation (SPEC 5).
// With no --model it uses the embedded default tiny checkpoint, so `npm start` works on a fresh machine.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { InvalidArgumentError, type Command } from 'commander';
import { createBackend } from '../../backends/index.js';
import { intArg, resolveModelDir } from '../args.js';
import { loadDeepSeekV4Config, moeShapeFromConfig } from '../../checkpoint/config.js';
import { loadMoeLayer, type LoadedMoeLayer } from '../../checkpoint/moe-layer.js';
import { writeSafetensors } from '../../checkpoint/safetensors.js';
import { ensureDefaultModel } from '../../model/checkpoint-writer.js';
import { evalMoeF64 } from '../../moe/f64-eval.js';
import { expertDtypePath } from '../../moe/guards.js';
import { runExpertsReference } from '../../moe/experts.js';
import { checkForwardOutput } from '../../moe/output-check.js';
import { checkHostTokens } from '../../moe/host-memory.js';
import { writeFilesAtomically } from '../../util/atomic-write.js';
import { createProgress } from '../../util/progress.js';
import { checkCreatableDir } from '../../util/writable-dir.js';
import { idsToI64, routeLayer, type RoutingResult } from '../../moe/router.js';
import { randomTokenIds } from '../../moe/synthetic.js';
import { calcDiff, decodeBF16Array, encodeBF16 } from '../../numerics/index.js';
import { HostTensor } from '../../tensor/host.js';
import { Rng } from '../../util/rng.js';

interface MoeOptions {
  model?: string;
  layer?: number;
  tokens: number;
  seed: number;
  backend: string;
  dump?: string;
  epRank: number;
  epSize: number;
  enableExpertParallel: boolean;
  f64: boolean;
  show: number;
}

/** The first score-routed layer when there is one (the common case in a real model), else the last layer. */
export function defaultLayer(numHiddenLayers: number, numHashLayers: number): { layer: number; why: string } {
  if (numHashLayers < numHiddenLayers) {
    const hashed = numHashLayers === 0 ? 'no layer is hash-routed' : numHashLayers === 1 ? 'layer 0 is hash-routed' : `layers 0..${numHashLayers - 1} are hash-routed`;
    return { layer: numHashLayers, why: `default: the first score-routed layer; ${hashed}` };
  }
  return { layer: numHiddenLayers - 1, why: 'default: the last layer; every layer is hash-routed' };
}

/**
 * Hidden states as the MoE block sees them: RMS-normalised (so ~N(0, 1) per element), times the layer's
 * ffn_norm weight when the checkpoint has it, rounded to bf16. Seeded: same seed, same x.
 */
export function makeHiddenStates(seed: number, T: number, H: number, normWeight?: HostTensor<'BF16'>): HostTensor<'BF16'> {
  const rng = new Rng(seed);
  const g = normWeight ? decodeBF16Array(normWeight.data) : undefined;
  const x = new Uint16Array(T * H);
  for (let i = 0; i < x.length; i++) x[i] = encodeBF16(rng.normal() * (g ? g[i % H] : 1));
  return new HostTensor('BF16', [T, H], x);
}

/** "t3 [tok 812]: 5:0.412 9:0.388 ..." per token, the first `show` tokens. */
export function formatRouting(r: RoutingResult, tokenIds: ArrayLike<number>, show: number): string[] {
  const [T, K] = r.topkIds.shape;
  const lines: string[] = [];
  const width = String(T - 1).length;
  for (let t = 0; t < Math.min(T, show); t++) {
    const slots: string[] = [];
    for (let j = 0; j < K; j++) {
      const id = r.topkIds.data[t * K + j];
      slots.push(id < 0 ? '-:-' : `${id}:${r.topkWeights.data[t * K + j].toFixed(4)}`);
    }
    lines.push(`  t${String(t).padStart(width)} [tok ${tokenIds[t]}]  ${slots.join('  ')}`);
  }
  if (T > show) lines.push(`  ... ${T - show} more tokens (--show N to see more)`);
  return lines;
}

const ms = (a: number, b: number) => `${(b - a).toFixed(1)} ms`;

/** The dump folder, checked before any compute: creatable/writable, and input/output.safetensors not folders. */
export function checkDumpTarget(dump: string, modelDir?: string): string {
  const dir = checkCreatableDir(dump, '--dump', 'dump folder');
  if (modelDir !== undefined && path.resolve(modelDir) === dir) {
    // A checkpoint folder without an index reads every *.safetensors in it: the dump would become part of the model.
    throw new InvalidArgumentError(`--dump ${dir} is the checkpoint folder itself; its *.safetensors files would become part of the checkpoint: choose another --dump folder`);
  }
  for (const f of DUMP_FILES) {
    const p = path.join(dir, f);
    if (fs.existsSync(p) && !fs.statSync(p).isFile()) throw new InvalidArgumentError(`--dump ${dir}: ${f} exists there and is not a file; remove it or choose another --dump folder`);
  }
  return dir;
}
const DUMP_FILES = ['input.safetensors', 'output.safetensors'];

/** A progress bar (terminal only) for CPU expert work that takes more than a second or two. */
function progressFor(label: string, T: number, s: { hiddenSize: number; moeIntermediateSize: number; numExpertsPerTok: number }) {
  const work = T * s.hiddenSize * s.moeIntermediateSize * (s.numExpertsPerTok + 1);
  if (work < 5e8) return undefined; // ~3e8 of these a second on one core: bars for runs past ~2 s
  let bar: ReturnType<typeof createProgress> | undefined;
  return {
    /** rows of expert work done of total (the bar is made on the first call, when the total is known). */
    update(done: number, total: number) { bar ??= createProgress({ label: `${label}, rows`, total, unit: 'items' }); bar.update(done); },
    stop() { bar?.stop(); },
  };
}

async function run(opts: MoeOptions): Promise<void> {
  const started = performance.now();
  // The embedded default is the tiny whole V4 model (src/model/checkpoint-writer.ts); its MoE layers read as any.
  const dir = opts.model ? resolveModelDir(opts.model) : ensureDefaultModel();
  // --dump is checked before any work: a folder that cannot be written fails now, not after the compute.
  const dumpDir = opts.dump ? checkDumpTarget(opts.dump, dir) : undefined;
  const cfg = loadDeepSeekV4Config(dir);
  const chosen = opts.layer === undefined ? defaultLayer(cfg.numHiddenLayers, cfg.numHashLayers) : { layer: opts.layer, why: 'from --layer' };
  const T = opts.tokens;
  // Pick the backend first: an unavailable one fails before any work is done.
  const { backend, name, note } = await createBackend(opts.backend);
  // The CPU path holds several [T, H] arrays: refuse a batch that cannot fit in host memory before loading anything.
  try {
    checkHostTokens(T, moeShapeFromConfig(cfg), { f64: opts.f64, otherBackend: name !== 'reference' });
  } catch (err) {
    backend.dispose();
    throw err;
  }

  const tLoad0 = performance.now();
  let layer: LoadedMoeLayer | undefined;
  try {
    layer = loadMoeLayer(dir, { layer: chosen.layer, epRank: opts.epRank, epSize: opts.epSize, config: cfg });
    const tLoad1 = performance.now();
    const s = layer.shape;
    const local = layer.experts.ids;
    console.log(`model    ${opts.model ? dir : `${dir} (embedded default)`}`);
    console.log(`         H ${s.hiddenSize}, I ${s.moeIntermediateSize}, ${s.nRoutedExperts} experts, top-${s.numExpertsPerTok}, ${layer.expertDtype} experts`);
    console.log(`layer    ${chosen.layer} (${layer.isHashLayer ? 'hash-routed' : 'score-routed'}; ${chosen.why})`);
    console.log(`batch    ${T} tokens, seed ${opts.seed}${layer.ffnNormWeight ? ', x = N(0,1) * ffn_norm.weight in bf16' : ', x = N(0,1) in bf16'}`);
    if (opts.epSize > 1) {
      console.log(`EP       rank ${opts.epRank} of ${opts.epSize}: experts ${local[0]}..${local[local.length - 1]}; y_routed holds only this rank's experts`);
    }

    const x = makeHiddenStates(opts.seed, T, s.hiddenSize, layer.ffnNormWeight);
    const tokenIds = randomTokenIds(opts.seed, T, s.vocabSize);

    const tr0 = performance.now();
    const routing = routeLayer(layer, x, tokenIds);
    const tr1 = performance.now();
    console.log('routing  (expert:weight per token)');
    for (const line of formatRouting(routing, tokenIds, opts.show)) console.log(line);

    // Read (and for fp4 convert) the routed experts this batch uses before timing the experts themselves.
    const te0 = performance.now();
    const used = new Set<number>();
    for (const id of routing.topkIds.data) if (id >= 0 && layer.experts.has(id)) used.add(id);
    for (const id of used) layer.experts.get(id);
    const te1 = performance.now();
    const conv = layer.experts.conversion();
    if (conv) {
      console.log(`experts  ${expertDtypePath(layer.expertDtype).note}; ${conv.blocks} blocks so far, ${conv.inexactBlocks} inexact`
        + (conv.inexactBlocks > 0 ? ` (worst abs error ${conv.worstAbsError.toExponential(2)}, rel ${conv.worstRelError.toExponential(2)})` : ''));
    }

    if (note) console.log(`backend  ${note}`);
    const tp0 = performance.now();
    const bar = progressFor(`experts (${name})`, T, s);
    await backend.prepare(layer, { maxTokens: T, enableExpertParallel: opts.enableExpertParallel, onProgress: bar && ((d, t) => bar.update(d, t)) });
    const tp1 = performance.now();
    let out;
    try {
      out = await backend.forward(x, routing.topkIds, routing.topkWeights);
    } finally {
      bar?.stop();
    }
    const tf1 = performance.now();
    checkForwardOutput(out, name); // outside the timed region: a host pass over y and y_routed

    console.log(`time     load layer ${ms(tLoad0, tLoad1)}, read ${used.size} experts ${ms(te0, te1)}, routing ${ms(tr0, tr1)}, `
      + `prepare ${ms(tp0, tp1)}, experts (${name}) ${ms(tp1, tf1)}, routing + experts ${((tr1 - tr0) + (tf1 - tp1)).toFixed(1)} ms`);

    const y = decodeBF16Array(out.y.data);
    const yRouted = decodeBF16Array(out.yRouted.data);
    if (name !== 'reference') {
      const refBar = progressFor('experts (reference check)', T, s);
      const ref = runExpertsReference(layer, x, routing.topkIds, routing.topkWeights, { onProgress: refBar && ((d, t) => refBar.update(d, t)) });
      refBar?.stop();
      console.log(`check    calc_diff vs reference: y ${calcDiff(y, decodeBF16Array(ref.y.data)).toExponential(3)}, `
        + `y_routed ${calcDiff(yRouted, decodeBF16Array(ref.yRouted.data)).toExponential(3)} (SPEC 5 asks <= 1e-5; Hopper's FP8 tensor cores land 1e-6..2e-5: docs/BENCHMARKS.md)`);
    }
    if (opts.f64) {
      const t0 = performance.now();
      const f64Bar = progressFor('f64 evaluation', T, s);
      const f = evalMoeF64(layer, x, routing.topkIds, routing.topkWeights, { onProgress: f64Bar && ((d, t) => f64Bar.update(d, t)) });
      f64Bar?.stop();
      const t1 = performance.now();
      console.log(`accuracy calc_diff vs f64 evaluation: y ${calcDiff(y, f.y).toExponential(3)}, y_routed ${calcDiff(yRouted, f.yRouted).toExponential(3)} `
        + `(f64 evaluation ${ms(t0, t1)}; SPEC 5 asks <= 1e-3, and the two e4m3 activation roundings alone give ~1e-3: README)`);
    }

    if (dumpDir) {
      const out1 = dumpDir;
      const meta = { megamoe_layer: String(chosen.layer), megamoe_seed: String(opts.seed), megamoe_backend: name };
      // Both files or neither: written under temp names, renamed into place once both are complete.
      writeFilesAtomically(out1, [
        { name: 'input.safetensors', write: (p) => writeSafetensors(p, { x, token_ids: new HostTensor('I64', [T], BigInt64Array.from(tokenIds, BigInt)) }, { metadata: meta }) },
        { name: 'output.safetensors', write: (p) => writeSafetensors(p, { topk_ids: idsToI64(routing.topkIds), topk_weights: routing.topkWeights, y_routed: out.yRouted, y: out.y }, { metadata: meta }) },
      ]);
      console.log(`dump     ${path.join(out1, 'input.safetensors')} (x, token_ids), ${path.join(out1, 'output.safetensors')} (topk_ids, topk_weights, y_routed, y)`);
    }
    console.log(`total    ${ms(started, performance.now())}`);
  } finally {
    backend.dispose();
    layer?.close();
  }
}

export function register(program: Command): void {
  program
    .command('moe')
    .description('run one MoE layer on seeded random hidden states: routing, timings, accuracy vs an f64 evaluation')
    .option('--model <dir>', 'checkpoint directory (default: the embedded tiny checkpoint, generated on first use)')
    .option('--layer <n>', 'layer index; num_hidden_layers + j is the MTP block mtp.{j} (default: the first score-routed layer)', intArg('--layer', 0))
    .option('--tokens <T>', 'batch size', intArg('--tokens', 1, 1 << 20), 8)
    .option('--seed <s>', 'seed for hidden states and token ids', intArg('--seed', 0, 0xffffffff), 0)
    .option('--backend <name>', 'reference | unfused | mega_moe (alias deep_gemm_mega_moe) | auto', 'reference')
    .option('--dump <dir>', 'write input.safetensors and output.safetensors there')
    .option('--ep-rank <r>', 'expert-parallel rank of this process', intArg('--ep-rank', 0), 0)
    .option('--ep-size <s>', 'expert-parallel world size', intArg('--ep-size', 1), 1)
    .option('--enable-expert-parallel', 'enable expert parallelism (the mega_moe backend requires it)', false)
    .option('--no-f64', 'skip the f64 evaluation (it costs about as much as the reference)')
    .option('--show <n>', 'how many tokens of routing to print', intArg('--show', 0), 8)
    .action(async (opts: MoeOptions) => {
      if (opts.epRank >= opts.epSize) throw new InvalidArgumentError(`--ep-rank ${opts.epRank} must be below --ep-size ${opts.epSize}`);
      await run(opts);
    });
}
