// CUDA graphs by stream capture: record a sequence of launches and copies once, replay it with one cuGraphLaunch.
// This is how a decode step's many small launches cost one host call.
import { getDriver, throwCuda } from './driver.js';
import { Stream, streamHandle, type StreamLike } from './stream.js';

export type CaptureMode = 'global' | 'thread_local' | 'relaxed';
const MODE: Readonly<Record<CaptureMode, number>> = { global: 0, thread_local: 1, relaxed: 2 };

/** An instantiated graph (CUgraphExec), plus its template (CUgraph) until dispose. */
export class CudaGraph {
  readonly graph: bigint;
  readonly exec: bigint;
  private destroyed = false;

  private constructor(graph: bigint, exec: bigint) {
    this.graph = graph;
    this.exec = exec;
  }

  /**
   * Captures everything `record` queues on `stream` (a created Stream, not the legacy default one) and
   * instantiates it. Work queued during capture does not run; replay it with launch(). Pageable-memory copies and
   * synchronous allocations are not capturable (CUDA_ERROR_STREAM_CAPTURE_*): use device buffers / pinned memory.
   */
  static capture(stream: Stream, record: () => void, mode: CaptureMode = 'global'): CudaGraph {
    if (!stream || stream.handle === 0n) {
      throw new Error('CudaGraph.capture needs a stream from Stream.create(): the legacy default stream cannot be captured');
    }
    const d = getDriver();
    const h = streamHandle(stream);
    let rc = d.fn.cuStreamBeginCapture_v2(h, MODE[mode]);
    if (rc !== 0) throwCuda('cuStreamBeginCapture_v2', rc);
    let recordError: unknown = null;
    try {
      record();
    } catch (err) {
      recordError = err;
    }
    // Always end the capture, even when record() threw, so the stream is usable again.
    rc = d.fn.cuStreamEndCapture(h, d.scratch.address);
    const graph = rc === 0 ? d.scratch.view.getBigUint64(0, true) : 0n;
    if (recordError !== null) {
      if (graph !== 0n) d.fn.cuGraphDestroy(graph);
      throw recordError;
    }
    if (rc !== 0) throwCuda('cuStreamEndCapture', rc, 'a call inside the capture was not capturable');
    rc = d.fn.cuGraphInstantiateWithFlags(d.scratch.address, graph, 0);
    if (rc !== 0) {
      d.fn.cuGraphDestroy(graph);
      throwCuda('cuGraphInstantiateWithFlags', rc);
    }
    return new CudaGraph(graph, d.scratch.view.getBigUint64(0, true));
  }

  get disposed(): boolean { return this.destroyed; }

  /** Replays the graph on `stream` (default: legacy default stream). */
  launch(stream?: StreamLike): void {
    if (this.destroyed) throw new Error('this CudaGraph was disposed');
    const rc = getDriver().fn.cuGraphLaunch(this.exec, streamHandle(stream));
    if (rc !== 0) throwCuda('cuGraphLaunch', rc);
  }

  dispose(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    const d = getDriver();
    const rcExec = d.fn.cuGraphExecDestroy(this.exec);
    const rcGraph = d.fn.cuGraphDestroy(this.graph);
    if (rcExec !== 0) throwCuda('cuGraphExecDestroy', rcExec);
    if (rcGraph !== 0) throwCuda('cuGraphDestroy', rcGraph);
  }

  [Symbol.dispose](): void { this.dispose(); }
}
