// Loads a whole DeepSeek-V4 checkpoint (V4-MODEL 9) for one expert-parallel rank: every non-expert tensor of
// params.ts (read by offset from whichever shard holds it, dtype and shape checked, widened to the model dtype
// of V4-MODEL 8.1), and per layer the MoE block through checkpoint/moe-layer.ts (router, shared expert, and the
// rank's routed experts, loaded lazily). Nothing of other ranks' experts is read.
import * as path from 'node:path';
import { Checkpoint } from '../checkpoint/checkpoint.js';
import { loadDeepSeekV4Config, type DeepSeekV4Config } from '../checkpoint/config.js';
import { CheckpointError } from '../checkpoint/errors.js';
import { loadMoeLayer, type LoadedMoeLayer } from '../checkpoint/moe-layer.js';
import { E4M3_DECODE } from '../numerics/e4m3.js';
import type { HostTensor } from '../tensor/host.js';
import { layerKind, modelConfigFrom, type ModelConfig } from './config.js';
import { bf16ToF32, roundBF16, type Fp8Linear } from './ops.js';
import { fp8Scale, globalParams, layerParams, mtpParams, type ParamSpec } from './params.js';

export interface HcParams {
  /** [(2+hc)*hc, hc*D] (or [hc, hc*D] for a head) */
  fn: Float32Array;
  base: Float32Array;
  scale: Float32Array;
}

export interface CompressorWeights {
  ratio: number;
  overlap: boolean;
  /** d_c: 512 (main, = head_dim) or 128 (indexer, = index_head_dim) */
  dc: number;
  /** [c*dc, D] fp32 */
  wkv: Float32Array;
  wgate: Float32Array;
  /** [ratio, c*dc] */
  ape: Float32Array;
  norm: Float32Array;
}

export interface AttentionWeights {
  sink: Float32Array;
  wqA: Fp8Linear;
  qNorm: Float32Array;
  wqB: Fp8Linear;
  wkv: Fp8Linear;
  kvNorm: Float32Array;
  /** bf16 values [G * o_lora, H*d/G] */
  woA: Float32Array;
  woB: Fp8Linear;
  compressor?: CompressorWeights;
  indexer?: { wqB: Fp8Linear; weightsProj: Float32Array; compressor: CompressorWeights };
}

export interface BlockWeights {
  /** 0..L-1 main layers, L + j for MTP layer j */
  index: number;
  ratio: number;
  attnNorm: Float32Array;
  ffnNorm: Float32Array;
  hcAttn: HcParams;
  hcFfn: HcParams;
  attn: AttentionWeights;
  moe: LoadedMoeLayer;
}

export interface HeadWeights {
  norm: Float32Array;
  hc: HcParams;
}

export interface MtpWeights {
  block: BlockWeights;
  eProj: Fp8Linear;
  hProj: Fp8Linear;
  enorm: Float32Array;
  hnorm: Float32Array;
  head: HeadWeights;
}

export interface ModelWeights {
  config: ModelConfig;
  dir: string;
  /** bf16 bits [V, D] */
  embed: Uint16Array;
  /**
   * head.weight [V, D]: the model computes in fp32 (V4-MODEL 8.1); a bf16 checkpoint's values are kept as bf16 bits
   * (exactly the same values, half the memory: 1 GB instead of 2 for Flash), an F32 one as f32.
   */
  head: Float32Array | Uint16Array;
  finalHead: HeadWeights;
  layers: BlockWeights[];
  mtp: MtpWeights[];
  /**
   * Load time, ms: non-expert tensors, MoE layers (router + shared expert; experts are lazy), and per block
   * (main layers then MTP layers: its attention, norms, hc parameters and MoE router + shared expert).
   */
  timings: { tensorsMs: number; moeMs: number; blockMs: number[] };
  close(): void;
}

export interface LoadModelOptions {
  epRank?: number;
  epSize?: number;
  /** Load the MTP layers (default true when the config declares them). */
  mtp?: boolean;
  /** Read and keep every owned routed expert now (default: lazily on first use). */
  eagerExperts?: boolean;
}

class TensorReader {
  constructor(readonly ckpt: Checkpoint, readonly prefix: string) {}

  private read(name: string, dtypes: readonly string[], shape: readonly number[]): HostTensor {
    const full = this.prefix + name;
    if (!this.ckpt.has(full)) {
      throw new CheckpointError({ file: this.ckpt.indexFile ?? this.ckpt.root, tensor: full }, 'tensor not found; a whole-model checkpoint needs every tensor of V4-MODEL 9 (is this a MoE-only checkpoint? write a whole model with make-checkpoint --whole-model)');
    }
    return this.ckpt.read(full, { dtype: dtypes as never, shape });
  }

  /** bf16 or f32 on disk -> f32 values. */
  f32(p: ParamSpec): Float32Array {
    const t = this.read(p.name, p.diskDtypes, p.shape);
    if (t.dtype === 'F32') return t.data as Float32Array;
    return bf16ToF32(t.data as Uint16Array);
  }

  bf16Bits(p: ParamSpec): Uint16Array {
    return this.read(p.name, ['BF16'], p.shape).data as Uint16Array;
  }

  scale(name: string, shape: readonly number[]): Float32Array {
    const t = this.read(name, ['F8_E8M0', 'F32'], shape);
    if (t.dtype === 'F32') return t.data as Float32Array;
    const codes = t.data as Uint8Array;
    const out = new Float32Array(codes.length);
    for (let i = 0; i < codes.length; i++) {
      const b = codes[i];
      if (b === 0xff) throw new CheckpointError({ file: this.ckpt.info(this.prefix + name).file, tensor: this.prefix + name }, `e8m0 scale at element ${i} is NaN (0xFF)`);
      out[i] = 2 ** (b - 127);
    }
    return out;
  }

  fp8(p: ParamSpec): Fp8Linear {
    const codes = this.read(`${p.name}.weight`, ['F8_E4M3'], p.shape).data as Uint8Array;
    const w = new Float32Array(codes.length);
    for (let i = 0; i < codes.length; i++) w[i] = E4M3_DECODE[codes[i]];
    const s = this.scale(`${p.name}.scale`, fp8Scale(p.shape));
    if (p.shape[1] % 128 !== 0) throw new CheckpointError({ file: this.ckpt.root, tensor: this.prefix + p.name + '.weight' }, `in_features ${p.shape[1]} is not a multiple of 128`);
    return { w, s, out: p.shape[0], in: p.shape[1] };
  }

  /** wo_a: bf16 as converted, or FP8 + scale dequantised per 128x128 block to bf16 as convert.py does (V4-MODEL 9.4). */
  fp8OrBf16(p: ParamSpec): Float32Array {
    const wName = `${p.name}.weight`;
    const info = this.ckpt.info(this.prefix + wName);
    if (info.dtype === 'BF16') return bf16ToF32(this.read(wName, ['BF16'], p.shape).data as Uint16Array);
    const lin = this.fp8(p);
    const [n, k] = p.shape; const kb = Math.ceil(k / 128);
    const out = new Float32Array(n * k);
    for (let r = 0; r < n; r++) {
      const so = (r >> 7) * kb;
      for (let c = 0; c < k; c++) out[r * k + c] = lin.w[r * k + c] * lin.s[so + (c >> 7)];
    }
    return roundBF16(out);
  }
}

function byName(specs: ParamSpec[]): Map<string, ParamSpec> {
  return new Map(specs.map((s) => [s.name, s]));
}

function loadBlock(r: TensorReader, c: ModelConfig, index: number, moe: LoadedMoeLayer): BlockWeights {
  const isMtp = index >= c.nLayers;
  const prefix = isMtp ? `mtp.${index - c.nLayers}.` : `layers.${index}.`;
  const specs = byName(isMtp ? mtpParams(c, index - c.nLayers) : layerParams(c, index));
  const S = (n: string): ParamSpec => {
    const s = specs.get(prefix + n);
    if (!s) throw new Error(`internal: no parameter spec ${prefix + n}`);
    return s;
  };
  const hc = (sub: string): HcParams => ({ fn: r.f32(S(`hc_${sub}_fn`)), base: r.f32(S(`hc_${sub}_base`)), scale: r.f32(S(`hc_${sub}_scale`)) });
  const kind = layerKind(c, index);
  const comp = (p: string, dc: number, ratio: number, overlap: boolean): CompressorWeights => ({
    ratio, overlap, dc, wkv: r.f32(S(`${p}.wkv.weight`)), wgate: r.f32(S(`${p}.wgate.weight`)), ape: r.f32(S(`${p}.ape`)), norm: r.f32(S(`${p}.norm.weight`)),
  });
  const attn: AttentionWeights = {
    sink: r.f32(S('attn.attn_sink')),
    wqA: r.fp8(S('attn.wq_a')), qNorm: r.f32(S('attn.q_norm.weight')), wqB: r.fp8(S('attn.wq_b')),
    wkv: r.fp8(S('attn.wkv')), kvNorm: r.f32(S('attn.kv_norm.weight')),
    woA: r.fp8OrBf16(S('attn.wo_a')), woB: r.fp8(S('attn.wo_b')),
  };
  if (kind.ratio > 0) attn.compressor = comp('attn.compressor', c.headDim, kind.ratio, kind.overlap);
  if (kind.indexer) {
    attn.indexer = {
      wqB: r.fp8(S('attn.indexer.wq_b')),
      weightsProj: r.f32(S('attn.indexer.weights_proj.weight')),
      compressor: comp('attn.indexer.compressor', c.indexHeadDim, 4, true),
    };
  }
  if (!moe.ffnNormWeight) {
    throw new CheckpointError({ file: r.ckpt.root, tensor: `${prefix}ffn_norm.weight` }, 'tensor not found; the model needs the norm in front of the MoE block');
  }
  return {
    index, ratio: kind.ratio, attnNorm: r.f32(S('attn_norm.weight')), ffnNorm: bf16ToF32(moe.ffnNormWeight.data),
    hcAttn: hc('attn'), hcFfn: hc('ffn'), attn, moe,
  };
}

function loadHead(r: TensorReader, specs: Map<string, ParamSpec>, prefix: string): HeadWeights {
  const S = (n: string) => specs.get(prefix + n)!;
  return { norm: r.f32(S('norm.weight')), hc: { fn: r.f32(S('hc_head_fn')), base: r.f32(S('hc_head_base')), scale: r.f32(S('hc_head_scale')) } };
}

/** Loads a whole model from a checkpoint directory. */
export function loadModelWeights(dir: string, options: LoadModelOptions = {}): ModelWeights {
  const root = path.resolve(dir);
  const base = loadDeepSeekV4Config(root);
  return loadModelWeightsFrom(Checkpoint.open(root), base, options);
}

/**
 * Loads a whole model from an open checkpoint and its parsed config (a virtual one: checkpoint-writer.ts
 * virtualModelCheckpoint). The returned weights own the checkpoint (close() closes it; so does a failed load).
 */
export function loadModelWeightsFrom(ckpt: Checkpoint, base: DeepSeekV4Config, options: LoadModelOptions = {}): ModelWeights {
  const root = ckpt.root;
  const moes: LoadedMoeLayer[] = [];
  try {
    const cfg = modelConfigFrom(base);
    const t0 = performance.now();
    const prefix = ckpt.has('embed.weight') ? '' : ckpt.has('model.embed.weight') ? 'model.' : '';
    const r = new TensorReader(ckpt, prefix);
    const g = byName(globalParams(cfg));
    const embed = r.bf16Bits(g.get('embed.weight')!);
    const headSpec = g.get('head.weight')!;
    const head = ckpt.info(prefix + 'head.weight').dtype === 'BF16' ? r.bf16Bits(headSpec) : r.f32(headSpec);
    const finalHead = loadHead(r, g, '');
    let moeMs = 0;
    const moeOf = (layer: number): LoadedMoeLayer => {
      const m0 = performance.now();
      const m = loadMoeLayer(ckpt, { layer, epRank: options.epRank, epSize: options.epSize, config: base });
      if (options.eagerExperts) m.experts.loadAll({ progress: false });
      moes.push(m);
      moeMs += performance.now() - m0;
      return m;
    };
    const blockMs: number[] = [];
    const timed = <T>(f: () => T): T => { const b0 = performance.now(); const v = f(); blockMs.push(performance.now() - b0); return v; };
    const layers: BlockWeights[] = [];
    for (let i = 0; i < cfg.nLayers; i++) layers.push(timed(() => loadBlock(r, cfg, i, moeOf(i))));
    const mtp: MtpWeights[] = [];
    const nMtp = options.mtp === false ? 0 : cfg.nMtpLayers;
    for (let j = 0; j < nMtp; j++) {
      const specs = byName(mtpParams(cfg, j));
      const p = `mtp.${j}.`;
      mtp.push({
        block: timed(() => loadBlock(r, cfg, cfg.nLayers + j, moeOf(cfg.nLayers + j))),
        eProj: r.fp8(specs.get(`${p}e_proj`)!), hProj: r.fp8(specs.get(`${p}h_proj`)!),
        enorm: r.f32(specs.get(`${p}enorm.weight`)!), hnorm: r.f32(specs.get(`${p}hnorm.weight`)!),
        head: loadHead(r, specs, p),
      });
    }
    const tensorsMs = performance.now() - t0 - moeMs;
    return {
      config: cfg, dir: root, embed, head, finalHead, layers, mtp, timings: { tensorsMs, moeMs, blockMs },
      close: () => ckpt.close(),
    };
  } catch (err) {
    ckpt.close();
    throw err;
  }
}
