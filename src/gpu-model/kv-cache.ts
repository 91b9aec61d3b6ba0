// The paged attention caches on the GPU (issue 11, item 2): device memory for every block pool of kv-allocator.ts,
// the compressor states, and the block tables, sized from the device's free memory (cuMemGetInfo) and the model.
//
//   using cache = GpuKvCache.create(config, { maxSequences: 64 });     // plans from free memory, allocates once
//   const seq = cache.admit(promptLength);                             // refuses with KvCacheCapacityError
//   cache.ensureLength(seq, seq.length + 1); cache.syncTables(stream); // before a step's launches
//   cache.paged('comp-r4', layer)                                      // what a kernel needs to address rows
//
// Device layout of a kind with L layers, B blocks of R rows of E bf16: [B, L, R, E] (a block's rows of one layer are
// contiguous, so a kernel reading one layer's entry n touches one row). Tables: int32 [maxSequences, maxBlocksPerSeq].
// Compressor states: f32 [maxSequences, stateElemsPerSeq] (kv-allocator.ts CompressorStateLayout gives the offsets).
import { DeviceBuffer, ensureContext, type StreamLike } from '../cuda/index.js';
import type { ModelConfig } from '../model/config.js';
import {
  KvBlockAllocator, kvLayout, planKvPool, type CompressorStateLayout, type KvSequence, type PoolPlan, type PoolPlanOptions,
} from './kv-allocator.js';

export interface GpuKvCacheOptions extends Omit<PoolPlanOptions, 'freeBytes'> {
  /** Plan from this many bytes instead of cuMemGetInfo's free figure (tests). */
  freeBytes?: number;
  /** Longest sequence (default: the config's maxContext). */
  maxContext?: number;
}

/** Everything a kernel needs to address rows of one layer in one kind's pool. */
export interface PagedView {
  base: bigint;
  table: bigint;
  /** int32 entries per table row (maxBlocksPerSeq) */
  tableStride: number;
  blockRows: number;
  layerSlot: number;
  layersPerBlock: number;
  rowElems: number;
}

export class GpuKvCache implements Disposable {
  readonly plan: PoolPlan;
  readonly allocator: KvBlockAllocator;
  readonly pools: DeviceBuffer[];
  readonly tables: DeviceBuffer[];
  readonly state: DeviceBuffer;
  private disposed = false;

  private constructor(plan: PoolPlan) {
    this.plan = plan;
    this.allocator = new KvBlockAllocator(plan);
    const made: DeviceBuffer[] = [];
    const alloc = (bytes: number) => { const b = DeviceBuffer.alloc(bytes); made.push(b); return b; };
    try {
      this.pools = plan.kinds.map((k) => alloc(k.blocks * k.blockBytes));
      this.tables = plan.kinds.map((k) => alloc(plan.maxSequences * k.maxBlocksPerSeq * 4));
      this.state = alloc(plan.maxSequences * plan.stateBytesPerSeq);
    } catch (err) {
      for (const b of made) b.dispose();
      throw err;
    }
    this.syncTables();
  }

  /** Plans from the device's free memory (or options.freeBytes) and allocates the whole pool. */
  static create(config: ModelConfig, options: GpuKvCacheOptions): GpuKvCache {
    const layout = kvLayout(config, options.maxContext ?? config.maxContext);
    const freeBytes = options.freeBytes ?? ensureContext().memoryInfo().freeBytes;
    return new GpuKvCache(planKvPool(layout, { ...options, freeBytes }));
  }

  admit(length = 0): KvSequence { return this.allocator.admit(length); }
  ensureLength(seq: KvSequence, length: number): void { this.allocator.ensureLength(seq, length); }
  release(seq: KvSequence): void { this.allocator.release(seq); }

  /** Uploads the block tables changed since the last sync (ordered on `stream` when given). */
  syncTables(stream?: StreamLike): void {
    const a = this.allocator;
    for (let k = 0; k < this.tables.length; k++) {
      if (a.dirty[k]) this.tables[k].copyFromHost(a.tables[k], { stream });
    }
    // Pageable uploads are staged by the driver before returning, so the host mirror may change right away.
    a.markClean();
  }

  kindIndex(name: string): number {
    const k = this.plan.kinds.findIndex((kp) => kp.kind.name === name);
    if (k < 0) throw new Error(`this cache has no "${name}" kind (it has ${this.plan.kinds.map((kp) => kp.kind.name).join(', ')})`);
    return k;
  }

  /** The kind holding layer `layer`'s compressed keys (comp-r<ratio>) or indexer keys. */
  compressedKind(layer: number, indexer: boolean): string {
    if (indexer) return 'indexer';
    const r = this.plan.layout.kinds.find((k) => k.ratio > 0 && k.layers.includes(layer) && k.name.startsWith('comp-'));
    if (!r) throw new Error(`layer ${layer} has no compressed cache (window-only layer)`);
    return r.name;
  }

  paged(kindName: string, layer: number): PagedView {
    const k = this.kindIndex(kindName);
    const kp = this.plan.kinds[k];
    const slot = kp.kind.layers.indexOf(layer);
    if (slot < 0) throw new Error(`layer ${layer} has no rows in the "${kindName}" cache (its layers: ${kp.kind.layers.join(', ')})`);
    return {
      base: this.pools[k].ptr, table: this.tables[k].ptr, tableStride: kp.maxBlocksPerSeq, blockRows: this.plan.blockRows,
      layerSlot: slot, layersPerBlock: kp.kind.layers.length, rowElems: kp.kind.rowElems,
    };
  }

  stateLayout(layer: number, indexer: boolean): CompressorStateLayout {
    const s = this.plan.layout.states.find((x) => x.layer === layer && x.indexer === indexer);
    if (!s) throw new Error(`layer ${layer} has no ${indexer ? 'indexer ' : ''}compressor state`);
    return s;
  }

  /** Device address of layer's compressor state for slot 0, and the f32 stride between slots. */
  stateView(layer: number, indexer: boolean): { ptr: bigint; slotStride: number; layout: CompressorStateLayout } {
    const s = this.stateLayout(layer, indexer);
    return { ptr: this.state.ptr + BigInt(s.offset * 4), slotStride: this.plan.layout.stateElemsPerSeq, layout: s };
  }

  /** Rows [from, to) of one layer of one sequence, as bf16 bits (tests, debugging; synchronous). */
  readRows(kindName: string, layer: number, seq: KvSequence, from: number, to: number, stream?: StreamLike): Uint16Array {
    const k = this.kindIndex(kindName);
    const v = this.paged(kindName, layer);
    if (stream) stream.synchronize();
    const out = new Uint16Array((to - from) * v.rowElems);
    for (let r = from; r < to; r++) {
      const b = seq.blocks[k][Math.floor(r / v.blockRows)];
      if (b === undefined) throw new RangeError(`readRows: row ${r} of sequence ${seq.id} has no "${kindName}" block`);
      const elem = ((b * v.layersPerBlock + v.layerSlot) * v.blockRows + (r % v.blockRows)) * v.rowElems;
      this.pools[k].copyToHost(out.subarray((r - from) * v.rowElems, (r - from + 1) * v.rowElems), { offset: elem * 2 });
    }
    return out;
  }

  /** Writes rows [from, from + n) of one layer of one sequence from bf16 bits (tests: preset cache contents). */
  writeRows(kindName: string, layer: number, seq: KvSequence, from: number, bits: Uint16Array): void {
    const k = this.kindIndex(kindName);
    const v = this.paged(kindName, layer);
    const n = bits.length / v.rowElems;
    for (let r = from; r < from + n; r++) {
      const b = seq.blocks[k][Math.floor(r / v.blockRows)];
      if (b === undefined) throw new RangeError(`writeRows: row ${r} of sequence ${seq.id} has no "${kindName}" block`);
      const elem = ((b * v.layersPerBlock + v.layerSlot) * v.blockRows + (r % v.blockRows)) * v.rowElems;
      this.pools[k].copyFromHost(bits.subarray((r - from) * v.rowElems, (r - from + 1) * v.rowElems), { offset: elem * 2 });
    }
  }

  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const b of [...this.pools, ...this.tables, this.state]) b.dispose();
  }

  [Symbol.dispose](): void { this.dispose(); }
}
