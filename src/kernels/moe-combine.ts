// Launcher of the MoE combine (moe_combine.cu): per token, the f32 sum of its K bf16 expert rows rounded once to
// bf16 (y_routed), plus the shared expert's row (y). Reads the L2 GEMM's output through the dispatch's slot_row.
import { arg, loadKernel, registerKernel, type Defines, type Kernel, type StreamLike } from '../cuda/index.js';
import { MOE_PRESET_SHAPES } from './presets.js';

const THREADS = 128;

export interface CombineShape {
  hidden: number;
  topK: number;
  experts: number;
  shared: boolean;
}

export function combineDefines(shape: CombineShape): Defines {
  return {
    COMBINE_HIDDEN: shape.hidden,
    COMBINE_TOPK: shape.topK,
    COMBINE_EXPERTS: shape.experts,
    COMBINE_SHARED: shape.shared ? 1 : 0,
  };
}

registerKernel({
  name: 'moe_combine',
  source: 'moe_combine.cu',
  entry: 'megamoe_combine',
  variants: [
    ...MOE_PRESET_SHAPES.map((p) => ({ label: p.label, defines: combineDefines({ ...p, shared: true }) })),
    // The unfused EP baseline at EP2: the owner's one-slot pack (top-k 1, no shared) and the source's combine (E/2 groups).
    ...MOE_PRESET_SHAPES.map((p) => ({ label: `${p.label} ep2 owner`, defines: combineDefines({ hidden: p.hidden, topK: 1, experts: p.experts / 2, shared: false }) })),
    ...MOE_PRESET_SHAPES.map((p) => ({ label: `${p.label} ep2 source`, defines: combineDefines({ hidden: p.hidden, topK: p.topK, experts: p.experts / 2, shared: true }) })),
  ],
});

export interface CombineArgs {
  /** bf16 [maxRows, H]: the L2 GEMM's output */
  expertOut: bigint | { readonly ptr: bigint };
  /** int [T, K] (DispatchBuffers.slotRow) */
  slotRow: bigint | { readonly ptr: bigint };
  /** int [groups + 1] (DispatchBuffers.groupOffset) */
  groupOffset: bigint | { readonly ptr: bigint };
  /** bf16 [>= T, H] */
  yRouted: bigint | { readonly ptr: bigint };
  /** bf16 [>= T, H]; ignored without a shared expert */
  y: bigint | { readonly ptr: bigint };
}

export class MoeCombine {
  readonly shape: CombineShape;
  private constructor(shape: CombineShape, private readonly kernel: Kernel) {
    this.shape = shape;
  }

  static async create(shape: CombineShape): Promise<MoeCombine> {
    if (!(Number.isInteger(shape.hidden) && shape.hidden > 0 && shape.hidden % 128 === 0)) {
      throw new RangeError(`moe combine: hidden size ${shape.hidden} is not a positive multiple of 128`);
    }
    if (!(Number.isInteger(shape.topK) && shape.topK >= 1 && shape.topK <= 32)) {
      throw new RangeError(`moe combine: top-k ${shape.topK} is outside [1, 32]`);
    }
    return new MoeCombine(shape, await loadKernel({ source: 'moe_combine.cu', defines: combineDefines(shape), entry: 'megamoe_combine' }));
  }

  /** Queues the combine of `tokens` (>= 1) tokens on `stream`. */
  launch(stream: StreamLike, a: CombineArgs, tokens: number): void {
    if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= 65535)) {
      throw new RangeError(`moe combine: ${tokens} tokens is outside [1, 65535] (one grid row per token)`);
    }
    const vecs = this.shape.hidden / 8;
    this.kernel.launch({ grid: [Math.ceil(vecs / THREADS), tokens], block: THREADS, stream }, [
      a.expertOut, a.slotRow, a.groupOffset, arg.i32(tokens), a.yRouted, a.y,
    ]);
  }

}
