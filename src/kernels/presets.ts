// The MoE layer shapes the kernels are specialised on ahead of time: DeepSeek-V4 Flash and Pro (SPEC 1) and a tiny
// one for fast tests. The one table behind every launcher's CI variants (`megamoe kernels --check`), the benchmark
// presets and the GPU tests' shapes. A real layer's shape always comes from its config.json, never from here.

export interface MoePresetShape {
  label: string;
  /** H */
  hidden: number;
  /** I */
  inter: number;
  /** routed experts E */
  experts: number;
  /** K */
  topK: number;
}

/** A preset shape with its layer's swiglu_limit: what a rank process needs to build that layer. */
export interface MoePresetLayer extends MoePresetShape {
  swigluLimit: number;
}

export const MOE_PRESET_SHAPES: ReadonlyArray<Readonly<MoePresetShape>> = Object.freeze([
  { label: 'tiny', hidden: 256, inter: 128, experts: 16, topK: 4 },
  { label: 'flash', hidden: 4096, inter: 2048, experts: 256, topK: 6 },
  { label: 'pro', hidden: 7168, inter: 3072, experts: 384, topK: 6 },
]);
