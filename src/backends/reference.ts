// The CPU reference backend: the exact SPEC 3 rounding points on the host (moe/experts.ts). Runs anywhere,
// needs no GPU, and is what every GPU backend is checked against.
import type { MoeBackend, MoeForwardResult, PrepareOptions } from '../moe/backend.js';
import { runExpertsReference } from '../moe/experts.js';
import { checkLayer, checkTokenCapacity, GuardError, type TopkIdsTensor } from '../moe/guards.js';
import { checkForwardOutput } from '../moe/output-check.js';
import type { MoeLayerWeights } from '../moe/types.js';
import type { HostTensor } from '../tensor/host.js';

export class ReferenceBackend implements MoeBackend {
  readonly name = 'reference';
  private layer: MoeLayerWeights | undefined;
  private maxTokens: number | undefined;
  private onProgress: ((done: number, total: number) => void) | undefined;
  private disposed = false;

  prepare(layer: MoeLayerWeights, opts: PrepareOptions = {}): void {
    if (this.disposed) throw new GuardError('BAD_INPUT', 'the reference backend was disposed', 'create a new backend');
    checkLayer(layer);
    this.layer = layer;
    this.maxTokens = opts.maxTokens;
    this.onProgress = opts.onProgress;
  }

  async forward(x: HostTensor<'BF16'>, topkIds: TopkIdsTensor, topkWeights: HostTensor<'F32'>): Promise<MoeForwardResult> {
    if (!this.layer) throw new GuardError('BAD_INPUT', 'reference backend: forward() before prepare()', 'call prepare(layer) first');
    if (x.shape.length === 2) checkTokenCapacity(x.shape[0], this.maxTokens, 'the reference backend');
    const { yRouted, y } = runExpertsReference(this.layer, x, topkIds, topkWeights, { onProgress: this.onProgress });
    return checkForwardOutput({ yRouted, y }, this.name);
  }

  dispose(): void {
    this.layer = undefined;
    this.disposed = true;
  }
}
