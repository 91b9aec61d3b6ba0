// The MoeBackend half that both GPU backends (unfused, mega_moe) share: the lifecycle (prepare uploads the layer into
// a device pipeline, forward is host in / host out through it, dispose), the global -> local expert id map, and the
// guards every GPU backend runs. Each backend adds its own guards and builds its own pipeline.
import { cudaStatus } from '../cuda/index.js';
import type { MoeBackend, MoeForwardResult, PrepareOptions } from '../moe/backend.js';
import { checkForwardInputs, checkTokenCapacity, GuardError, type TopkIdsTensor } from '../moe/guards.js';
import type { MoeLayerWeights } from '../moe/types.js';
import type { HostTensor } from '../tensor/host.js';

/** Tokens a prepared layer holds when PrepareOptions.maxTokens is not given. */
export const DEFAULT_MAX_TOKENS = 4096;

/** Global expert id -> local group (or -1), for layers holding a subset of experts (expert parallelism). */
export function localIdMap(localIds: readonly number[], experts: number): Int32Array {
  const map = new Int32Array(experts).fill(-1);
  localIds.forEach((id, g) => { map[id] = g; });
  return map;
}

/** Host ids (I32/I64, global) -> local I64 ids; experts this GPU does not hold become -1 (contribute nothing). */
export function toLocalIds(ids: TopkIdsTensor, map: Int32Array): BigInt64Array {
  const out = new BigInt64Array(ids.numel);
  const src = ids.data as Int32Array | BigInt64Array;
  for (let i = 0; i < out.length; i++) {
    const id = Number(src[i]);
    out[i] = BigInt(id >= 0 && id < map.length ? map[id] : -1);
  }
  return out;
}

/** What a GPU backend's device pipeline offers its forward(). */
export interface DeviceMoePipeline {
  readonly maxTokens: number;
  uploadInputs(x: HostTensor<'BF16'>, ids: BigInt64Array, weights: Float32Array): void;
  enqueue(tokens: number): void;
  downloadOutputs(tokens: number): MoeForwardResult;
  dispose(): void;
}

/** The Hopper device a GPU backend runs on, as its guards see it. */
export interface GuardDevice {
  major: number;
  minor: number;
  name: string;
}

export abstract class DeviceMoeBackend<P extends DeviceMoePipeline> implements MoeBackend {
  abstract readonly name: string;
  private layer: MoeLayerWeights | undefined;
  private moe: P | undefined;
  private idMap: Int32Array | undefined;
  private disposed = false;

  /** Guards that need no GPU (run first, so a bad layer is refused anywhere). */
  protected checkHost(_layer: MoeLayerWeights): void {}
  /** The backend's guards on the device it found. */
  protected abstract checkDevice(layer: MoeLayerWeights, opts: PrepareOptions, device: GuardDevice): void;
  /** Uploads `localIds`' experts (+ the shared expert) of the layer and builds the pipeline for maxTokens. */
  protected abstract createPipeline(layer: MoeLayerWeights, localIds: number[], maxTokens: number): Promise<P>;

  async prepare(layer: MoeLayerWeights, opts: PrepareOptions = {}): Promise<void> {
    if (this.disposed) throw new GuardError('BAD_INPUT', `the ${this.name} backend was disposed`, 'create a new backend');
    this.checkHost(layer);
    const st = cudaStatus();
    if (!st.available) throw new GuardError('NOT_SM90', `backend ${this.name} needs a Hopper GPU: ${st.reason}`, 'run on an H100/H200 or choose --backend reference');
    const dev = st.devices[0];
    this.checkDevice(layer, opts, { major: dev.computeCapability.major, minor: dev.computeCapability.minor, name: dev.name });
    this.moe?.dispose();
    this.moe = undefined;
    const localIds = [...layer.experts.ids];
    this.moe = await this.createPipeline(layer, localIds, opts.maxTokens ?? DEFAULT_MAX_TOKENS);
    this.idMap = localIdMap(localIds, layer.shape.nRoutedExperts);
    this.layer = layer;
  }

  async forward(x: HostTensor<'BF16'>, topkIds: TopkIdsTensor, topkWeights: HostTensor<'F32'>): Promise<MoeForwardResult> {
    if (!this.layer || !this.moe || !this.idMap) throw new GuardError('BAD_INPUT', `${this.name} backend: forward() before prepare()`, 'call prepare(layer) first');
    const T = checkForwardInputs(this.layer.shape, x, topkIds, topkWeights);
    checkTokenCapacity(T, this.moe.maxTokens, `the ${this.name} backend`);
    const moe = this.moe;
    moe.uploadInputs(x, toLocalIds(topkIds, this.idMap), topkWeights.data);
    moe.enqueue(T);
    return moe.downloadOutputs(T);
  }

  /** The device pipeline (benchmarks, graph capture); undefined before prepare(). */
  get pipeline(): P | undefined { return this.moe; }

  dispose(): void {
    this.moe?.dispose();
    this.moe = undefined;
    this.layer = undefined;
    this.disposed = true;
  }
}
