// How many tokens the CPU path can take in host memory (issue 9, `--tokens`): the reference expert math (and the f64
// evaluation) keep several [T, H] arrays alive, so a batch is refused up front, with the largest batch that fits,
// instead of dying of an allocation failure (or swapping for half an hour) after the work has started.
//
// Peak bytes per token, from the arrays each step keeps alive (moe/experts.ts, moe/f64-eval.ts, the CLI):
//   reference:  x 2H, staged x 8H (f64), slot outputs 2KH (bf16), y_routed/y_shared/y 6H, their f32 copies 8H,
//               logits 4E, ids/weights 8K, token ids 8                              = 24H + 2KH + 4E + 8K + 8
//   f64 evaluation, on top of what the CLI keeps (x, y, y_routed, routing: 6H + 4E + 8K + 8):
//               x, y_routed, y_shared, y 32H (f64), the shared expert over all tokens 16H + 24 Is (Is = I x n_shared)
// Measured (tiny preset, T = 65536, `megamoe moe`, /usr/bin/time): 16.8 KB a token with the f64 evaluation, model
// 17.0 KB; i.e. ~18 GB at T = 1,048,576.
import * as buffer from 'node:buffer';
import * as os from 'node:os';
import { GuardError } from './guards.js';
import type { MoeShape } from './types.js';

export interface HostRunPlan {
  /** The f64 evaluation runs too (CLI default). */
  f64: boolean;
  /** Extra [T, H] bf16 outputs kept besides the reference's own (a GPU backend's y and y_routed): 4H a token. */
  otherBackend?: boolean;
}

/** Bytes a token, and the element count of the largest single typed array, per token. */
export function hostBytesPerToken(shape: MoeShape, plan: HostRunPlan): { bytes: number; largestElements: number } {
  const H = shape.hiddenSize; const K = shape.numExpertsPerTok; const E = shape.nRoutedExperts;
  const Is = shape.moeIntermediateSize * Math.max(1, shape.nSharedExperts);
  const other = plan.otherBackend ? 4 * H : 0;
  const ref = 24 * H + 2 * K * H + 4 * E + 8 * K + 8 + other;
  const kept = 6 * H + 4 * E + 8 * K + 8 + other;
  const f64 = plan.f64 ? kept + 48 * H + 24 * Is : 0;
  return { bytes: Math.max(ref, f64), largestElements: Math.max(K * H, plan.f64 ? Is : 0) };
}

/** Memory this process may use: MemAvailable (os.freemem) capped by a cgroup limit when there is one. */
export function availableHostBytes(): number {
  const constrained = (os as { constrainedMemory?: () => number | undefined }).constrainedMemory?.();
  const free = os.freemem();
  return constrained && constrained > 0 ? Math.min(free, constrained) : free;
}

const GB = (n: number) => `${(n / 1e9).toFixed(n >= 1e10 ? 0 : 1)} GB`;

/**
 * Refuses (GuardError TOKEN_CAPACITY, naming `flag`) a batch the CPU path cannot hold: more bytes than 90% of
 * `available`, or one array longer than this Node's typed-array limit. Returns the largest T that fits.
 */
export function checkHostTokens(T: number, shape: MoeShape, plan: HostRunPlan, options: { available?: number; maxArrayElements?: number; flag?: string } = {}): number {
  const { bytes, largestElements } = hostBytesPerToken(shape, plan);
  const available = options.available ?? availableHostBytes();
  const maxElements = options.maxArrayElements ?? buffer.constants.MAX_LENGTH;
  const flag = options.flag ?? '--tokens';
  const base = 128e6; // the process, the layer's weights and scratch, roughly
  const byMemory = Math.max(0, Math.floor((available * 0.9 - base) / bytes));
  const byArray = Math.floor(maxElements / largestElements);
  const maxT = Math.min(byMemory, byArray);
  if (T > maxT) {
    const why = T > byArray
      ? `one of its arrays would hold ${T * largestElements} elements, above this Node's typed-array limit of ${maxElements}`
      : `the CPU reference${plan.f64 ? ' and the f64 evaluation need' : ' needs'} about ${GB(T * bytes + base)} of host memory (${(bytes / 1e3).toFixed(1)} KB a token at H ${shape.hiddenSize}), ${GB(available)} is available here`;
    throw new GuardError('TOKEN_CAPACITY', `${flag} ${T} is more than this machine can run on the CPU: ${why}`,
      `use ${flag} <= ${maxT}${plan.f64 && T <= byArray ? ', or --no-f64 to skip the f64 evaluation' : ''}`);
  }
  return maxT;
}
