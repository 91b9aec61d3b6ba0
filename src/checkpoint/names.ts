// The DeepSeek-V4 tensor names of one MoE layer, as published (SPEC 1 "Checkpoint layout", V4-MODEL 9.2).
// Published checkpoints use the reference names without a prefix; some re-exports add "model.", which is
// accepted when reading (detectPrefix).

export type Projection = 'w1' | 'w2' | 'w3';
export const PROJECTIONS: readonly Projection[] = ['w1', 'w2', 'w3'];

export interface WeightAndScale {
  weight: string;
  scale: string;
}

export interface MoeLayerNames {
  ffnNorm: string;
  gateWeight: string;
  gateBias: string;
  tid2eid: string;
  expert(e: number, proj: Projection): WeightAndScale;
  shared(proj: Projection): WeightAndScale;
}

/**
 * Layer indexes past the main stack name the multi-token-prediction blocks (V4-MODEL 7): with num_hidden_layers = L,
 * layer L is `mtp.0.`, L + 1 is `mtp.1.`, and so on. Pass numHiddenLayers to enable that mapping.
 */
export function moeLayerNames(layer: number, prefix = '', numHiddenLayers = Infinity): MoeLayerNames {
  const base = layer >= numHiddenLayers ? `${prefix}mtp.${layer - numHiddenLayers}.` : `${prefix}layers.${layer}.`;
  const ffn = `${base}ffn.`;
  const pair = (module: string): WeightAndScale => ({ weight: `${module}.weight`, scale: `${module}.scale` });
  return {
    ffnNorm: `${base}ffn_norm.weight`,
    gateWeight: `${ffn}gate.weight`,
    gateBias: `${ffn}gate.bias`,
    tid2eid: `${ffn}gate.tid2eid`,
    expert: (e, proj) => pair(`${ffn}experts.${e}.${proj}`),
    shared: (proj) => pair(`${ffn}shared_experts.${proj}`),
  };
}

/** Which prefix ('' or 'model.') the checkpoint uses for this layer, judged by its gate weight; undefined if neither. */
export function detectPrefix(has: (name: string) => boolean, layer: number, numHiddenLayers = Infinity): string | undefined {
  for (const prefix of ['', 'model.']) if (has(moeLayerNames(layer, prefix, numHiddenLayers).gateWeight)) return prefix;
  return undefined;
}
