// Streams and events. A Stream orders work on the GPU; a CudaEvent marks a point in a stream for waiting and timing.
// Named CudaEvent (not Event) so it never shadows the global DOM-style Event of Node.
import { CudaContext, ensureContext } from './device.js';
import { check, getDriver, throwCuda } from './driver.js';

const CU_STREAM_NON_BLOCKING = 0x1;
const CU_EVENT_BLOCKING_SYNC = 0x1;
const CU_EVENT_DISABLE_TIMING = 0x2;
const CUDA_ERROR_NOT_READY = 600;

/** Anything that names a stream: a Stream, or null/undefined for the legacy default stream (handle 0). */
export type StreamLike = Stream | null | undefined;

/** The raw CUstream handle of a StreamLike (0 = legacy default stream). */
export function streamHandle(s: StreamLike): bigint {
  if (!s) return 0n;
  if (s.disposed) throw new Error('this Stream was disposed; create a new one');
  return s.handle;
}

export class Stream {
  /** The CUstream handle (0n for the legacy default stream). */
  readonly handle: bigint;
  readonly context: CudaContext | null;
  private destroyed = false;

  private constructor(handle: bigint, context: CudaContext | null) {
    this.handle = handle;
    this.context = context;
  }

  /**
   * Creates a stream in the current context. nonBlocking (default true) means it does not synchronise with the
   * legacy default stream, which is what graph capture and overlap want.
   */
  static create(options: { nonBlocking?: boolean } = {}): Stream {
    const ctx = ensureContext();
    const d = getDriver();
    const flags = options.nonBlocking === false ? 0 : CU_STREAM_NON_BLOCKING;
    check('cuStreamCreate', d.fn.cuStreamCreate(d.scratch.address, flags));
    return new Stream(d.scratch.view.getBigUint64(0, true), ctx);
  }

  /** The legacy default stream (handle 0): synchronous with every blocking stream; cannot be captured. */
  static readonly legacyDefault: Stream = new Stream(0n, null);

  get disposed(): boolean { return this.destroyed; }

  /** Blocks the host until all work queued on this stream is done. */
  synchronize(): void {
    check('cuStreamSynchronize', getDriver().fn.cuStreamSynchronize(streamHandle(this)));
  }

  /** True when all queued work is done, false while some is pending. */
  query(): boolean {
    const rc = getDriver().fn.cuStreamQuery(streamHandle(this));
    if (rc === CUDA_ERROR_NOT_READY) return false;
    if (rc !== 0) throwCuda('cuStreamQuery', rc);
    return true;
  }

  /** Makes later work on this stream wait for `event` (recorded on any stream). */
  waitEvent(event: CudaEvent): void {
    check('cuStreamWaitEvent', getDriver().fn.cuStreamWaitEvent(streamHandle(this), event.handle, 0));
  }

  dispose(): void {
    if (this.destroyed || this.handle === 0n) return;
    this.destroyed = true;
    check('cuStreamDestroy_v2', getDriver().fn.cuStreamDestroy_v2(this.handle));
  }

  [Symbol.dispose](): void { this.dispose(); }
}

export class CudaEvent {
  readonly handle: bigint;
  readonly timing: boolean;
  private destroyed = false;

  private constructor(handle: bigint, timing: boolean) {
    this.handle = handle;
    this.timing = timing;
  }

  /**
   * timing (default true): the event records a timestamp for elapsedMs. blockingSync: synchronize() sleeps instead
   * of spinning (less CPU, a little more latency).
   */
  static create(options: { timing?: boolean; blockingSync?: boolean } = {}): CudaEvent {
    ensureContext();
    const d = getDriver();
    const timing = options.timing !== false;
    const flags = (timing ? 0 : CU_EVENT_DISABLE_TIMING) | (options.blockingSync ? CU_EVENT_BLOCKING_SYNC : 0);
    check('cuEventCreate', d.fn.cuEventCreate(d.scratch.address, flags));
    return new CudaEvent(d.scratch.view.getBigUint64(0, true), timing);
  }

  get disposed(): boolean { return this.destroyed; }

  /** Records the event at the current end of `stream` (default: legacy default stream). */
  record(stream?: StreamLike): this {
    if (this.destroyed) throw new Error('this CudaEvent was disposed; create a new one');
    check('cuEventRecord', getDriver().fn.cuEventRecord(this.handle, streamHandle(stream)));
    return this;
  }

  synchronize(): void {
    check('cuEventSynchronize', getDriver().fn.cuEventSynchronize(this.handle));
  }

  /** True when the work before the event's record is done. */
  query(): boolean {
    const rc = getDriver().fn.cuEventQuery(this.handle);
    if (rc === CUDA_ERROR_NOT_READY) return false;
    if (rc !== 0) throwCuda('cuEventQuery', rc);
    return true;
  }

  /** Milliseconds from `start` to this event (both recorded and complete; synchronize first). */
  elapsedMsSince(start: CudaEvent): number {
    return elapsedMs(start, this);
  }

  dispose(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    check('cuEventDestroy_v2', getDriver().fn.cuEventDestroy_v2(this.handle));
  }

  [Symbol.dispose](): void { this.dispose(); }
}

/** Milliseconds between two recorded, completed timing events (cuEventElapsedTime, ~0.5 us resolution). */
export function elapsedMs(start: CudaEvent, end: CudaEvent): number {
  if (!start.timing || !end.timing) throw new Error('elapsedMs needs events created with { timing: true }');
  const d = getDriver();
  check('cuEventElapsedTime', d.fn.cuEventElapsedTime(d.scratch.address, start.handle, end.handle));
  return d.scratch.view.getFloat32(0, true);
}
