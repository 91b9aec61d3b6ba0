// The expert-compute interface every backend implements (reference, unfused, mega_moe). Routing is NOT part of
// it: router.ts computes ids and weights once on the host and every backend consumes the same ones, so
// backends are compared on expert math alone.
import type { HostTensor } from '../tensor/host.js';
import type { TopkIdsTensor } from './guards.js';
import type { MoeLayerWeights } from './types.js';

export interface PrepareOptions {
  /** Largest batch forward() will be given; a bigger one is refused by checkTokenCapacity. */
  maxTokens?: number;
  /** vLLM's --enable-expert-parallel; the fused backend refuses to run without it. */
  enableExpertParallel?: boolean;
  /** Progress of long forwards (rows of expert work done of total); backends that are fast may ignore it. */
  onProgress?: (done: number, total: number) => void;
}

export interface MoeForwardResult {
  /** bf16 [T, H]: the combined routed experts (those this rank owns) */
  yRouted: HostTensor<'BF16'>;
  /** bf16 [T, H]: bf16(f32(y_routed) + f32(y_shared)) */
  y: HostTensor<'BF16'>;
}

export interface MoeBackend {
  readonly name: string;
  /** Once per layer: checks (guards.ts), weight transform, upload, buffers sized for maxTokens. */
  prepare(layer: MoeLayerWeights, opts?: PrepareOptions): Promise<void> | void;
  /** x BF16 [T, H]; topkIds I32/I64 [T, K] (-1 = masked); topkWeights F32 [T, K]. */
  forward(x: HostTensor<'BF16'>, topkIds: TopkIdsTensor, topkWeights: HostTensor<'F32'>): Promise<MoeForwardResult>;
  /** Frees device memory and host buffers; the backend is unusable afterwards. */
  dispose(): void;
}
