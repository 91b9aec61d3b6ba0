// The DeepSeek-V4 forward on the GPU (docs/GPU-MODEL.md): the whole step (GpuModel), one decoder layer, row ops (embedding,
// RMSNorm + act_quant, RoPE, hyper-connections with Sinkhorn), dense block-FP8 projections on the grouped GEMM, the
// bf16 logits GEMM, and sampling. Each launcher checks its arguments and names the fix (GpuModelArgumentError).
export { GpuModelArgumentError } from './errors.js';
export { GpuRowOps, allocFp8Activations, uploadHcParams, type Fp8Activations, type DeviceHcParams, type HcOptions } from './row-ops.js';
export { DenseFp8Linear, BoundDenseFp8, uploadFp8Weight, uploadFp8Linear, checkDenseBinding, DENSE_DECODE_MAX_ROWS, type DenseFp8Spec, type DeviceFp8Weight } from './dense-fp8.js';
export { GpuLogits } from './logits.js';
export { GpuSampler, samplingMode, GPU_SAMPLER_MAX_TOP_K, SAMPLE_STATUS, type SamplingMode } from './sampler.js';
export { GpuDecoderLayer, GpuLayerContext, bf16WeightBits, type GpuLayerContextOptions } from './layer.js';
export { denseProjectionShapes, type DenseShapeSource } from '../kernels/model-ops.js';
export { GpuModel, GpuSequence, estimateLayerBytes, type GpuModelOptions, type GpuForwardOptions } from './model.js';
