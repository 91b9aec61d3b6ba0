// Loads a MoE layer's routed experts on several threads (worker_threads): each worker opens the checkpoint itself,
// reads (and for "fp4" converts to e4m3, mxfp4.ts) its share of the experts through the same loader
// (moe-layer.ts), and hands the buffers back without copying (transferred ArrayBuffers); the main thread adopts
// them into the layer's store. A flash FP4 layer is ~28 s of conversion on one core of this machine; the GPU host
// has 16. Same bytes as loading on the main thread (the same code runs), in any thread count.
import * as os from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ConversionReport, ExpertWeights } from '../moe/types.js';
import type { QuantizedWeight } from '../numerics/quant.js';
import type { LoadedMoeLayer } from './moe-layer.js';
import type { Mxfp4ScaleRule } from './mxfp4.js';

export interface ParallelLoadOptions {
  /** Worker threads (default: available parallelism, at most the number of experts to load). */
  threads?: number;
  scaleRule?: Mxfp4ScaleRule;
}

interface Job { dir: string; layer: number; epRank: number; epSize: number; ids: number[]; scaleRule: Mxfp4ScaleRule }
interface Done { id: number; w: Record<'w1' | 'w2' | 'w3', QuantizedWeight> }
type Msg = { kind: 'expert'; done: Done } | { kind: 'end'; report?: ConversionReport } | { kind: 'error'; message: string };

/** The worker's body, as source: it imports the compiled loader next to this module. */
function workerSource(loaderUrl: string): string {
  return `
    const { parentPort, workerData } = await import('node:worker_threads');
    const { loadMoeLayer } = await import(${JSON.stringify(loaderUrl)});
    const job = workerData;
    let layer;
    try {
      layer = loadMoeLayer(job.dir, { layer: job.layer, epRank: job.epRank, epSize: job.epSize, scaleRule: job.scaleRule });
      for (const id of job.ids) {
        const e = layer.experts.get(id);
        const w = { w1: e.w1, w2: e.w2, w3: e.w3 };
        const transfer = [];
        for (const p of ['w1', 'w2', 'w3']) { transfer.push(w[p].q.buffer, w[p].s.buffer); }
        parentPort.postMessage({ kind: 'expert', done: { id, w } }, transfer);
        layer.experts.release(id);
      }
      parentPort.postMessage({ kind: 'end', report: layer.experts.conversion() });
    } catch (err) {
      parentPort.postMessage({ kind: 'error', message: err && err.message ? err.message : String(err) });
    } finally {
      layer?.close();
    }
  `;
}

/**
 * Reads every owned, not yet loaded routed expert of `layer` (loaded from checkpoint directory `dir`) on worker
 * threads and adopts them into `layer.experts`. Resolves when all are in; rejects with the first worker's error.
 */
export async function loadExpertsParallel(dir: string, layer: LoadedMoeLayer, options: ParallelLoadOptions = {}): Promise<{ threads: number; experts: number }> {
  const todo = layer.experts.ids.filter((id) => !layer.experts.isLoaded(id));
  const threads = Math.max(1, Math.min(options.threads ?? os.availableParallelism(), todo.length));
  if (todo.length === 0) return { threads: 0, experts: 0 };
  const loaderUrl = new URL('./moe-layer.js', import.meta.url).href;
  const src = workerSource(loaderUrl);
  // Interleaved shares: neighbouring experts sit next to each other in a shard, so every worker reads forward.
  const shares = Array.from({ length: threads }, (_, t) => todo.filter((_, i) => i % threads === t));
  const runs = shares.map((ids) => new Promise<void>((resolve, reject) => {
    const job: Job = { dir, layer: layer.layer, epRank: layer.epRank, epSize: layer.epSize, ids, scaleRule: options.scaleRule ?? 'tight' };
    const w = new Worker(src, { eval: true, workerData: job });
    let ended = false;
    w.on('message', (m: Msg) => {
      if (m.kind === 'expert') {
        const { id, w: ws } = m.done;
        const weights: ExpertWeights = { w1: ws.w1, w2: ws.w2, w3: ws.w3 };
        layer.experts.adopt(id, weights);
      } else if (m.kind === 'end') {
        ended = true;
        if (m.report) layer.experts.adoptReport(m.report);
      } else {
        ended = true;
        reject(new Error(m.message));
      }
    });
    w.on('error', reject);
    w.on('exit', (code) => (ended && code === 0 ? resolve() : reject(new Error(`expert loader thread exited with code ${code} before finishing`))));
  }));
  await Promise.all(runs);
  return { threads, experts: todo.length };
}
