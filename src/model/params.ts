// Every non-expert parameter of DeepSeek-V4 (V4-MODEL 9) with its name, shape, on-disk dtype(s) and the dtype the
// model holds it in. One table for the writer (checkpoint-writer.ts) and the loader (loader.ts), so what is
// written is exactly what is read. The MoE tensors of each layer (ffn.gate.*, ffn.experts.*, ffn.shared_experts.*,
// ffn_norm) are named by checkpoint/names.ts and loaded by checkpoint/moe-layer.ts.
import type { DType } from '../tensor/host.js';
import { layerKind, type ModelConfig } from './config.js';

/**
 * fp8: an FP8 linear: `<m>.weight` F8_E4M3 [out, in] + `<m>.scale` (F8_E8M0 or F32) [ceil(out/128), ceil(in/128)].
 * fp8-or-bf16: wo_a, FP8 + scale in HF checkpoints, bf16 without scale after convert.py (V4-MODEL 9.4).
 * bf16 / f32: one tensor, on disk in that dtype (bf16 norms and compressor weights are widened at load).
 */
export type ParamKind = 'fp8' | 'fp8-or-bf16' | 'bf16' | 'f32';

export interface ParamSpec {
  /** Module name for fp8 kinds (`.weight` / `.scale` are appended), the full tensor name otherwise. */
  name: string;
  kind: ParamKind;
  shape: readonly number[];
  /** Dtypes accepted on disk for the (weight) tensor. */
  diskDtypes: readonly DType[];
  /** How the writer fills it (checkpoint-writer.ts); the loader ignores it. */
  init: ParamInit;
}

export type ParamInit =
  | { type: 'normal'; sigma: number; mean?: number }
  | { type: 'linear' }
  /** hc_*_base: pre/post entries small, comb entries biased towards the identity (streams mostly keep to themselves). */
  | { type: 'hc-base'; hc: number }
  | { type: 'const'; value: number };

export const fp8Scale = (shape: readonly number[]): number[] => [Math.ceil(shape[0] / 128), Math.ceil(shape[1] / 128)];

function block(c: ModelConfig, prefix: string, layerIndex: number): ParamSpec[] {
  const D = c.dim; const hc = c.hcMult; const mix = (2 + hc) * hc;
  const out: ParamSpec[] = [];
  const bf16 = (name: string, shape: number[], init: ParamInit = { type: 'normal', mean: 1, sigma: 0.05 }) => out.push({ name, kind: 'bf16', shape, diskDtypes: ['BF16'], init });
  const f32 = (name: string, shape: number[], init: ParamInit) => out.push({ name, kind: 'f32', shape, diskDtypes: ['F32'], init });
  const fp8 = (name: string, shape: number[]) => out.push({ name, kind: 'fp8', shape, diskDtypes: ['F8_E4M3'], init: { type: 'linear' } });
  const linF32 = (name: string, shape: number[]) => out.push({ name, kind: 'bf16', shape, diskDtypes: ['BF16', 'F32'], init: { type: 'normal', sigma: 1 / Math.sqrt(shape[1]) } });

  bf16(`${prefix}attn_norm.weight`, [D]);
  for (const sub of ['attn', 'ffn']) {
    f32(`${prefix}hc_${sub}_fn`, [mix, hc * D], { type: 'normal', sigma: 0.5 / Math.sqrt(hc * D) });
    f32(`${prefix}hc_${sub}_base`, [mix], { type: 'hc-base', hc });
    f32(`${prefix}hc_${sub}_scale`, [3], { type: 'normal', mean: 1, sigma: 0.1 });
  }
  const a = `${prefix}attn.`;
  f32(`${a}attn_sink`, [c.nHeads], { type: 'normal', sigma: 1 });
  fp8(`${a}wq_a`, [c.qLoraRank, D]);
  bf16(`${a}q_norm.weight`, [c.qLoraRank]);
  fp8(`${a}wq_b`, [c.nHeads * c.headDim, c.qLoraRank]);
  fp8(`${a}wkv`, [c.headDim, D]);
  bf16(`${a}kv_norm.weight`, [c.headDim]);
  out.push({ name: `${a}wo_a`, kind: 'fp8-or-bf16', shape: [c.oGroups * c.oLoraRank, (c.nHeads * c.headDim) / c.oGroups], diskDtypes: ['F8_E4M3', 'BF16'], init: { type: 'linear' } });
  fp8(`${a}wo_b`, [D, c.oGroups * c.oLoraRank]);
  const kind = layerKind(c, layerIndex);
  if (kind.ratio > 0) {
    const cw = kind.overlap ? 2 : 1;
    linF32(`${a}compressor.wkv.weight`, [cw * c.headDim, D]);
    linF32(`${a}compressor.wgate.weight`, [cw * c.headDim, D]);
    f32(`${a}compressor.ape`, [kind.ratio, cw * c.headDim], { type: 'normal', sigma: 0.1 });
    bf16(`${a}compressor.norm.weight`, [c.headDim]);
  }
  if (kind.indexer) {
    fp8(`${a}indexer.wq_b`, [c.indexNHeads * c.indexHeadDim, c.qLoraRank]);
    out.push({ name: `${a}indexer.weights_proj.weight`, kind: 'bf16', shape: [c.indexNHeads, D], diskDtypes: ['BF16'], init: { type: 'normal', sigma: 1 / Math.sqrt(D) } });
    linF32(`${a}indexer.compressor.wkv.weight`, [2 * c.indexHeadDim, D]);
    linF32(`${a}indexer.compressor.wgate.weight`, [2 * c.indexHeadDim, D]);
    f32(`${a}indexer.compressor.ape`, [4, 2 * c.indexHeadDim], { type: 'normal', sigma: 0.1 });
    bf16(`${a}indexer.compressor.norm.weight`, [c.indexHeadDim]);
  }
  return out;
}

function head(c: ModelConfig, prefix: string): ParamSpec[] {
  const D = c.dim; const hc = c.hcMult;
  return [
    { name: `${prefix}norm.weight`, kind: 'bf16', shape: [D], diskDtypes: ['BF16'], init: { type: 'normal', mean: 1, sigma: 0.05 } },
    { name: `${prefix}hc_head_fn`, kind: 'f32', shape: [hc, hc * D], diskDtypes: ['F32'], init: { type: 'normal', sigma: 0.5 / Math.sqrt(hc * D) } },
    { name: `${prefix}hc_head_base`, kind: 'f32', shape: [hc], diskDtypes: ['F32'], init: { type: 'normal', sigma: 0.1 } },
    { name: `${prefix}hc_head_scale`, kind: 'f32', shape: [1], diskDtypes: ['F32'], init: { type: 'normal', mean: 1, sigma: 0.1 } },
  ];
}

/** Global tensors: embedding, head, final norm, hc_head (V4-MODEL 9.1). */
export function globalParams(c: ModelConfig): ParamSpec[] {
  return [
    { name: 'embed.weight', kind: 'bf16', shape: [c.vocabSize, c.dim], diskDtypes: ['BF16'], init: { type: 'normal', sigma: 1 } },
    { name: 'head.weight', kind: 'bf16', shape: [c.vocabSize, c.dim], diskDtypes: ['BF16', 'F32'], init: { type: 'normal', sigma: 1 / Math.sqrt(c.dim) } },
    ...head(c, ''),
  ];
}

/** Non-MoE tensors of main layer i (V4-MODEL 9.2); the MoE tensors (and ffn_norm) come from checkpoint/names.ts. */
export function layerParams(c: ModelConfig, i: number): ParamSpec[] {
  return block(c, `layers.${i}.`, i);
}

/** Non-MoE tensors of MTP layer j (V4-MODEL 9.3). */
export function mtpParams(c: ModelConfig, j: number): ParamSpec[] {
  const p = `mtp.${j}.`; const D = c.dim;
  return [
    ...block(c, p, c.nLayers + j),
    { name: `${p}e_proj`, kind: 'fp8', shape: [D, D], diskDtypes: ['F8_E4M3'], init: { type: 'linear' } },
    { name: `${p}h_proj`, kind: 'fp8', shape: [D, D], diskDtypes: ['F8_E4M3'], init: { type: 'linear' } },
    { name: `${p}enorm.weight`, kind: 'bf16', shape: [D], diskDtypes: ['BF16'], init: { type: 'normal', mean: 1, sigma: 0.05 } },
    { name: `${p}hnorm.weight`, kind: 'bf16', shape: [D], diskDtypes: ['BF16'], init: { type: 'normal', mean: 1, sigma: 0.05 } },
    ...head(c, p),
  ];
}

/** Every non-MoE parameter of the model, in checkpoint order. */
export function allParams(c: ModelConfig): ParamSpec[] {
  const out = globalParams(c);
  for (let i = 0; i < c.nLayers; i++) out.push(...layerParams(c, i));
  for (let j = 0; j < c.nMtpLayers; j++) out.push(...mtpParams(c, j));
  return out;
}
