// Loads one DeepSeek-V4 MoE layer for one expert-parallel rank: router, shared expert, and a lazy store of the
// rank's routed experts. Rank r of s owns experts [r*E/s, (r+1)*E/s); nothing of other ranks' experts is read.
//
// Routed experts come from either kind of checkpoint (SPEC 1):
//   "fp8" (Flash-Base): weight F8_E4M3 [N, K] + scale F32 [ceil(N/128), ceil(K/128)] -> used as is;
//   "fp4" (Flash):      weight I8 [N, K/2] (two e2m1 a byte) + scale F8_E8M0 [N, K/32] -> converted at load to
//                       e4m3 with 128x128 f32 scales (mxfp4.ts), with a ConversionReport.
// The kind is read off the stored dtype of the first owned expert; a config that declares expert_dtype must
// agree with it (an absent key defaults to "fp8" in config.ts, but the tensors decide, see there).
// Every owned expert's six tensors are checked (name, dtype, shape; header only, no data) at load time, so a
// broken checkpoint fails here, by file and tensor name, and not in the middle of a forward pass. Every tensor's
// VALUES are checked when it is read (finite-check.ts: e4m3 NaN codes, non-finite or negative scales, gate.bias,
// repeated tid2eid experts), so a damaged byte is refused by tensor name, index and value.
import * as path from 'node:path';
import type { ConversionReport, ExpertStore, ExpertWeights, MoeLayerWeights, MoeShape } from '../moe/types.js';
import { expertRange as placementRange, type ExpertRange } from '../moe/placement.js';
import { decodeBF16Array } from '../numerics/bf16.js';
import { E8M0_DECODE } from '../numerics/e8m0.js';
import { QUANT_BLOCK, type QuantizedWeight } from '../numerics/quant.js';
import { HostTensor } from '../tensor/host.js';
import type { DType } from '../tensor/host.js';
import { createProgress } from '../util/progress.js';
import { Checkpoint } from './checkpoint.js';
import { loadDeepSeekV4Config, moeShapeFromConfig } from './config.js';
import type { DeepSeekV4Config, ExpertDtype } from './config.js';
import { CheckpointError } from './errors.js';
import { checkBlockScales, checkE4m3Codes, checkFiniteBF16, checkGateBias, checkTid2eid } from './finite-check.js';
import { convertMxfp4ToE4m3, emptyConversionReport, mergeConversionReports } from './mxfp4.js';
import type { Mxfp4ScaleRule } from './mxfp4.js';
import { detectPrefix, moeLayerNames, PROJECTIONS } from './names.js';
import type { MoeLayerNames, Projection, WeightAndScale } from './names.js';

export type { ExpertRange };

/** The experts rank `epRank` of `epSize` owns (moe/placement.ts), refusals as CheckpointErrors naming `where`. */
export function expertRange(nExperts: number, epRank: number, epSize: number, where = 'expert parallelism'): ExpertRange {
  try {
    return placementRange(nExperts, epRank, epSize);
  } catch (err) {
    throw new CheckpointError({ file: where }, err instanceof Error ? err.message : String(err));
  }
}

export interface LoadMoeLayerOptions {
  /** Layer index, 0 <= layer < num_hidden_layers, or num_hidden_layers + j for the MTP block `mtp.{j}.`. */
  layer: number;
  epRank?: number;
  epSize?: number;
  /** Parsed config; by default read from config.json next to the checkpoint. */
  config?: DeepSeekV4Config;
  /** How MXFP4 blocks pick their f32 scale (mxfp4.ts); default "tight". */
  scaleRule?: Mxfp4ScaleRule;
}

export interface LoadAllOptions {
  /** Show a progress bar on stderr (default: when stderr is a terminal). */
  progress?: boolean;
}

/** What loadMoeLayer returns: the layer weights moe/ consumes, plus what else the checkpoint said. */
export interface LoadedMoeLayer extends MoeLayerWeights {
  experts: CheckpointExpertStore;
  expertDtype: ExpertDtype;
  /** layers.{i}.ffn_norm.weight [H] bf16, when the checkpoint has it (the RMSNorm in front of the block). */
  ffnNormWeight?: HostTensor<'BF16'>;
  /** '' or 'model.' */
  prefix: string;
  config: DeepSeekV4Config;
  /** Closes the checkpoint files if loadMoeLayer opened them (experts not yet loaded can then no longer load). */
  close(): void;
}

/** Decodes a scale tensor (F32 as is, F8_E8M0 as 2^(b-127)) to f32; NaN codes are refused. */
function scaleToF32(t: HostTensor, file: string, name: string): Float32Array {
  if (t.dtype === 'F32') return t.data as Float32Array;
  const codes = t.data as Uint8Array;
  const out = new Float32Array(codes.length);
  for (let i = 0; i < codes.length; i++) {
    if (codes[i] === 0xff) throw new CheckpointError({ file, tensor: name }, `e8m0 scale at element ${i} is NaN (0xFF); the checkpoint is corrupt`);
    out[i] = E8M0_DECODE[codes[i]];
  }
  return out;
}

/** Shapes [N, K] of the three projections of an FFN with intermediate size `inter`. */
function projectionShape(proj: Projection, hidden: number, inter: number): [number, number] {
  return proj === 'w2' ? [hidden, inter] : [inter, hidden];
}

/** Reads one FP8 (e4m3 + 128x128 block scale) weight, checking dtype and shape. */
function readFp8Weight(ckpt: Checkpoint, names: WeightAndScale, n: number, k: number,
  scaleDtypes: readonly DType[]): QuantizedWeight {
  const w = ckpt.read(names.weight, { dtype: 'F8_E4M3', shape: [n, k] });
  checkE4m3Codes(ckpt.info(names.weight).file, names.weight, w.data as Uint8Array, w.shape);
  const scaleInfo = ckpt.info(names.scale);
  const st = ckpt.read(names.scale, { dtype: scaleDtypes, shape: [Math.ceil(n / QUANT_BLOCK), Math.ceil(k / QUANT_BLOCK)] });
  const s = scaleToF32(st, scaleInfo.file, names.scale);
  checkBlockScales(scaleInfo.file, names.scale, s, st.shape);
  return { q: w.data as Uint8Array, s, n, k };
}

/** The routed experts of one rank, read (and for fp4 converted) on first use and kept. */
export class CheckpointExpertStore implements ExpertStore {
  readonly ids: readonly number[];
  readonly expertDtype: ExpertDtype;
  private readonly cache = new Map<number, ExpertWeights>();
  private report: ConversionReport = emptyConversionReport();

  constructor(private readonly ckpt: Checkpoint, private readonly names: MoeLayerNames, private readonly shape: MoeShape,
    range: ExpertRange, expertDtype: ExpertDtype, private readonly scaleRule: Mxfp4ScaleRule) {
    this.ids = Object.freeze(Array.from({ length: range.end - range.first }, (_, i) => range.first + i));
    this.expertDtype = expertDtype;
  }

  has(globalId: number): boolean {
    return Number.isInteger(globalId) && globalId >= this.ids[0] && globalId <= this.ids[this.ids.length - 1];
  }

  /** How many experts are loaded (cached) now. */
  get loadedCount(): number { return this.cache.size; }

  get(globalId: number): ExpertWeights {
    const hit = this.cache.get(globalId);
    if (hit) return hit;
    if (!this.has(globalId)) {
      const where = this.ckpt.indexFile ?? this.ckpt.root;
      throw new CheckpointError({ file: where, tensor: this.names.expert(globalId, 'w1').weight },
        `expert ${globalId} is not owned by this rank (it owns experts ${this.ids[0]}..${this.ids[this.ids.length - 1]})`);
    }
    const weights = {} as Record<Projection, QuantizedWeight>;
    const { hiddenSize: H, moeIntermediateSize: I } = this.shape;
    for (const proj of PROJECTIONS) {
      const [n, k] = projectionShape(proj, H, I);
      weights[proj] = this.expertDtype === 'fp8'
        ? readFp8Weight(this.ckpt, this.names.expert(globalId, proj), n, k, ['F32', 'F8_E8M0'])
        : this.readFp4Weight(this.names.expert(globalId, proj), n, k);
    }
    const expert: ExpertWeights = { w1: weights.w1, w3: weights.w3, w2: weights.w2 };
    this.cache.set(globalId, expert);
    return expert;
  }

  /** Drops a loaded expert from the cache (it reloads on the next get). */
  release(globalId: number): void { this.cache.delete(globalId); }

  /**
   * Takes an expert loaded elsewhere (expert-workers.ts: read and converted in a worker thread) into the cache;
   * get() then returns it without touching the checkpoint.
   */
  adopt(globalId: number, weights: ExpertWeights): void {
    if (!this.has(globalId)) throw new Error(`adopt: expert ${globalId} is not owned by this rank`);
    if (!this.cache.has(globalId)) this.cache.set(globalId, weights);
  }

  /** Adds the conversion statistics of experts adopted from elsewhere. */
  adoptReport(report: ConversionReport): void {
    this.report = mergeConversionReports(this.report, report);
  }

  /** Whether expert `globalId` is loaded (cached) now. */
  isLoaded(globalId: number): boolean { return this.cache.has(globalId); }

  conversion(): ConversionReport | undefined {
    return this.expertDtype === 'fp4' ? { ...this.report } : undefined;
  }

  /** Loads every owned expert now (with a progress bar on a terminal). */
  loadAll(options: LoadAllOptions = {}): void {
    const bar = createProgress({ label: `experts ${this.ids[0]}..${this.ids[this.ids.length - 1]}`, total: this.ids.length, unit: 'items', enabled: options.progress });
    try {
      for (const id of this.ids) { this.get(id); bar.increment(); }
    } finally {
      bar.stop();
    }
  }

  private readFp4Weight(names: WeightAndScale, n: number, k: number): QuantizedWeight {
    const w = this.ckpt.read(names.weight, { dtype: ['I8', 'U8'], shape: [n, k / 2] });
    const sc = this.ckpt.read(names.scale, { dtype: 'F8_E8M0', shape: [n, k / 32] });
    try {
      const { weight, report } = convertMxfp4ToE4m3(w.data as Int8Array | Uint8Array, sc.data as Uint8Array, n, k, { scaleRule: this.scaleRule });
      this.report = mergeConversionReports(this.report, report);
      return weight;
    } catch (err) {
      throw new CheckpointError({ file: this.ckpt.info(names.weight).file, tensor: names.weight }, (err as Error).message);
    }
  }
}

/** Which expert format the stored tensors have, checked against a declared expert_dtype. */
function resolveExpertDtype(ckpt: Checkpoint, cfg: DeepSeekV4Config, name: string): ExpertDtype {
  const info = ckpt.info(name);
  let stored: ExpertDtype;
  if (info.dtype === 'F8_E4M3') stored = 'fp8';
  else if (info.dtype === 'I8' || info.dtype === 'U8') stored = 'fp4';
  else throw new CheckpointError({ file: info.file, tensor: name }, `routed expert weights must be F8_E4M3 ("fp8") or I8 packed e2m1 ("fp4"), found ${info.dtype}`);
  if (cfg.expertDtypeDeclared && stored !== cfg.expertDtype) {
    throw new CheckpointError({ file: info.file, tensor: name }, `is stored as ${info.dtype} ("${stored}" experts) but ${path.basename(cfg.source)} declares expert_dtype "${cfg.expertDtype}"; fix expert_dtype in the config`);
  }
  return stored;
}

/** Checks that all of an owned expert's tensors exist with the right dtype and shape (headers only). */
function checkExpertTensors(ckpt: Checkpoint, names: MoeLayerNames, shape: MoeShape, e: number, kind: ExpertDtype): void {
  const { hiddenSize: H, moeIntermediateSize: I } = shape;
  for (const proj of PROJECTIONS) {
    const [n, k] = projectionShape(proj, H, I);
    const { weight, scale } = names.expert(e, proj);
    const wi = ckpt.info(weight);
    const si = ckpt.info(scale);
    const expectW = kind === 'fp8' ? { dtype: ['F8_E4M3'], shape: [n, k] } : { dtype: ['I8', 'U8'], shape: [n, k / 2] };
    const expectS = kind === 'fp8'
      ? { dtype: ['F32', 'F8_E8M0'], shape: [Math.ceil(n / QUANT_BLOCK), Math.ceil(k / QUANT_BLOCK)] }
      : { dtype: ['F8_E8M0'], shape: [n, k / 32] };
    for (const [info, ex] of [[wi, expectW], [si, expectS]] as const) {
      if (!ex.dtype.includes(info.dtype)) {
        throw new CheckpointError({ file: info.file, tensor: info.name }, `dtype mismatch: stored as ${info.dtype}, expected ${ex.dtype.join(' or ')} for "${kind}" experts`);
      }
      if (info.shape.length !== ex.shape.length || info.shape.some((d, i) => d !== ex.shape[i])) {
        throw new CheckpointError({ file: info.file, tensor: info.name }, `shape mismatch: stored as [${info.shape.join(', ')}], expected [${ex.shape.join(', ')}] (H ${H}, I ${I} from the config)`);
      }
    }
  }
}

/**
 * Loads MoE layer `options.layer` from a checkpoint directory (or an open Checkpoint) for one expert-parallel
 * rank. Reads the router, shared expert and ffn_norm now; routed experts lazily through `experts.get(e)`.
 */
export function loadMoeLayer(source: string | Checkpoint, options: LoadMoeLayerOptions): LoadedMoeLayer {
  const owned = typeof source === 'string';
  const ckpt = owned ? Checkpoint.open(source) : source;
  try {
    return loadFrom(ckpt, owned, options);
  } catch (err) {
    if (owned) ckpt.close();
    throw err;
  }
}

function loadFrom(ckpt: Checkpoint, owned: boolean, options: LoadMoeLayerOptions): LoadedMoeLayer {
  const dir = ckpt.files.length === 1 && ckpt.root === ckpt.files[0] ? path.dirname(ckpt.root) : ckpt.root;
  const cfg = options.config ?? loadDeepSeekV4Config(dir);
  const shape = moeShapeFromConfig(cfg);
  const where = ckpt.indexFile ?? ckpt.root;
  const { layer } = options;
  const mtpLayers = cfg.numNextnPredictLayers;
  if (!Number.isSafeInteger(layer) || layer < 0 || layer >= cfg.numHiddenLayers + mtpLayers) {
    const mtp = mtpLayers > 0 ? ` (+ ${mtpLayers} MTP layer${mtpLayers > 1 ? 's' : ''} from index ${cfg.numHiddenLayers})` : '';
    throw new CheckpointError({ file: cfg.source }, `layer ${layer} does not exist: num_hidden_layers is ${cfg.numHiddenLayers}${mtp}`);
  }
  if (cfg.nSharedExperts < 1) {
    throw new CheckpointError({ file: cfg.source, key: 'n_shared_experts' }, 'is 0; the DeepSeek-V4 MoE block (and megamoe) expects a shared expert');
  }
  const epRank = options.epRank ?? 0;
  const epSize = options.epSize ?? 1;
  const range = expertRange(shape.nRoutedExperts, epRank, epSize, where);

  const prefix = detectPrefix((n) => ckpt.has(n), layer, cfg.numHiddenLayers);
  if (prefix === undefined) {
    throw new CheckpointError({ file: where, tensor: moeLayerNames(layer, '', cfg.numHiddenLayers).gateWeight }, `tensor not found (nor "model."-prefixed); is layer ${layer} in this checkpoint?`);
  }
  const names = moeLayerNames(layer, prefix, cfg.numHiddenLayers);
  const { hiddenSize: H, moeIntermediateSize: I, nRoutedExperts: E, numExpertsPerTok: K } = shape;
  const isHashLayer = layer < shape.numHashLayers;

  const gateWeight = ckpt.read(names.gateWeight, { dtype: 'BF16', shape: [E, H] }) as HostTensor<'BF16'>;
  checkFiniteBF16(ckpt.info(names.gateWeight).file, names.gateWeight, gateWeight.data, gateWeight.shape);

  let gateBias: Float32Array | undefined;
  let tid2eid: Int32Array | undefined;
  if (isHashLayer) {
    const t = ckpt.read(names.tid2eid, { dtype: ['I64', 'I32'], shape: [shape.vocabSize, K] });
    tid2eid = checkTid2eid(ckpt.info(names.tid2eid).file, names.tid2eid, t.data as BigInt64Array | Int32Array, K, E);
  } else if (ckpt.has(names.gateBias) || shape.topkMethod === 'noaux_tc') {
    const t = ckpt.read(names.gateBias, { dtype: ['F32', 'BF16'], shape: [E] });
    gateBias = t.dtype === 'F32' ? t.data as Float32Array : decodeBF16Array(t.data as Uint16Array);
    checkGateBias(ckpt.info(names.gateBias).file, names.gateBias, gateBias);
  }

  const sharedInter = I * shape.nSharedExperts;
  const shared = {} as Record<Projection, QuantizedWeight>;
  for (const proj of PROJECTIONS) {
    const [n, k] = projectionShape(proj, H, sharedInter);
    shared[proj] = readFp8Weight(ckpt, names.shared(proj), n, k, ['F32', 'F8_E8M0']);
  }

  const ffnNormWeight = ckpt.has(names.ffnNorm)
    ? ckpt.read(names.ffnNorm, { dtype: 'BF16', shape: [H] }) as HostTensor<'BF16'>
    : undefined;
  if (ffnNormWeight) checkFiniteBF16(ckpt.info(names.ffnNorm).file, names.ffnNorm, ffnNormWeight.data, ffnNormWeight.shape);

  const expertDtype = resolveExpertDtype(ckpt, cfg, names.expert(range.first, 'w1').weight);
  for (let e = range.first; e < range.end; e++) checkExpertTensors(ckpt, names, shape, e, expertDtype);
  const experts = new CheckpointExpertStore(ckpt, names, shape, range, expertDtype, options.scaleRule ?? 'tight');

  return {
    layer, shape, isHashLayer, gateWeight, gateBias, tid2eid, experts,
    sharedExpert: { w1: shared.w1, w3: shared.w3, w2: shared.w2 },
    epRank, epSize, expertDtype, ffnNormWeight, prefix, config: cfg,
    close: () => { if (owned) ckpt.close(); },
  };
}
