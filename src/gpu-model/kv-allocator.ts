// Host-side bookkeeping of the paged attention caches on the GPU (issue 11, item 2): which cache kinds a model has,
// how many fixed-size blocks of each a memory budget buys, and which blocks each sequence holds. Pure TypeScript (no
// driver), so the sizing and the refusal paths are tested on any machine; kv-cache.ts puts device memory behind it.
//
// Cache kinds (V4-MODEL 4.6 / 4.8), each a pool of blocks of `blockRows` rows; one block holds those rows for EVERY
// layer of its kind, so one block table per sequence and kind serves all layers (as vLLM's block tables do):
//   window        the sliding-window ring, `win` rows per sequence (row = position mod win), all layers + MTP layers;
//                 fixed size, taken in full when the sequence is admitted
//   comp-r<R>     compressed keys of the layers with ratio R, one row per complete block of R tokens (floor(len / R))
//   indexer       the indexer's compressed keys (ratio-4 layers), indexHeadDim wide, floor(len / 4) rows
// Rows are bf16 (the reference's cache dtype). Besides the blocks, each admitted sequence owns a slot: its row of every
// block table and its compressor state (a_t, g_t + ape of the last c * ratio tokens, f32, V4-MODEL 4.8).
//
// Sizing: budget = free bytes * memoryFraction - reserveBytes. Every slot's fixed part (window blocks + compressor
// state + table rows) comes off first; the rest is split across the growing kinds in proportion to their bytes per
// token, so all of them run out at about the same total context. A sequence that needs a block the pool does not
// have is refused (KvCacheCapacityError) before anything changes, with the numbers and what to change.
import type { ModelConfig } from '../model/config.js';

/** The allocator's refusal: nothing was allocated; `fix` says what to change. */
export class KvCacheCapacityError extends Error {
  constructor(message: string, readonly fix: string) {
    super(`${message}; ${fix}`);
    this.name = 'KvCacheCapacityError';
  }
}

export interface CacheKind {
  name: string;
  /** Model layer indices (0..nLayers-1, then nLayers + j for MTP layer j) whose rows live in this kind's blocks. */
  layers: number[];
  /** bf16 elements per row (per layer). */
  rowElems: number;
  /** Tokens per row: 0 for the window ring (fixed `win` rows), else the compression ratio. */
  ratio: number;
}

/** The compressor state of one compressed layer (V4-MODEL 4.8): kv_state and score_state, [slots, width] f32 each. */
export interface CompressorStateLayout {
  layer: number;
  indexer: boolean;
  ratio: number;
  overlap: boolean;
  /** d_c of this compressor */
  dc: number;
  /** c * ratio */
  slots: number;
  /** c * d_c */
  width: number;
  /** f32 offset of kv_state inside one sequence's state; score_state follows at + slots * width */
  offset: number;
}

export interface KvLayout {
  kinds: CacheKind[];
  states: CompressorStateLayout[];
  /** f32 elements of one sequence's whole compressor state */
  stateElemsPerSeq: number;
  windowSize: number;
  maxContext: number;
}

/** The cache kinds and compressor states of a model config (V4-MODEL 0.2: ratio 4 = overlap + indexer). */
export function kvLayout(c: ModelConfig, maxContext = c.maxContext): KvLayout {
  const all = c.compressRatios.length; // main layers then MTP layers
  const kinds: CacheKind[] = [{ name: 'window', layers: Array.from({ length: all }, (_, i) => i), rowElems: c.headDim, ratio: 0 }];
  const ratios = [...new Set(c.compressRatios.filter((r) => r > 0))].sort((a, b) => a - b);
  for (const r of ratios) {
    kinds.push({ name: `comp-r${r}`, layers: c.compressRatios.flatMap((x, i) => (x === r ? [i] : [])), rowElems: c.headDim, ratio: r });
  }
  const idxLayers = c.compressRatios.flatMap((x, i) => (x === 4 ? [i] : []));
  if (idxLayers.length > 0) kinds.push({ name: 'indexer', layers: idxLayers, rowElems: c.indexHeadDim, ratio: 4 });
  const states: CompressorStateLayout[] = [];
  let off = 0;
  for (let i = 0; i < all; i++) {
    const r = c.compressRatios[i];
    if (r <= 0) continue;
    const overlap = r === 4;
    const cw = overlap ? 2 : 1;
    const push = (indexer: boolean, dc: number) => {
      const s: CompressorStateLayout = { layer: i, indexer, ratio: r, overlap, dc, slots: cw * r, width: cw * dc, offset: off };
      off += 2 * s.slots * s.width;
      states.push(s);
    };
    push(false, c.headDim);
    if (r === 4) push(true, c.indexHeadDim);
  }
  return { kinds, states, stateElemsPerSeq: off, windowSize: c.windowSize, maxContext };
}

export interface PoolPlanOptions {
  /** Free device bytes (cuMemGetInfo), or a budget to plan from. */
  freeBytes: number;
  /** Share of freeBytes the caches may take (default 0.9). */
  memoryFraction?: number;
  /** Bytes kept back for activations, weights loaded later, workspaces (default 0). */
  reserveBytes?: number;
  /** Concurrent sequences (slots). */
  maxSequences: number;
  /** Rows per block (default 64). */
  blockRows?: number;
  /** Cap on any kind's blocks (tests); default none. */
  maxBlocksPerKind?: number;
}

export interface KindPlan {
  kind: CacheKind;
  blocks: number;
  /** bytes of one block (all layers of the kind) */
  blockBytes: number;
  /** blocks one sequence of maxContext tokens needs */
  maxBlocksPerSeq: number;
}

export interface PoolPlan {
  layout: KvLayout;
  blockRows: number;
  maxSequences: number;
  kinds: KindPlan[];
  /** f32 state bytes per slot */
  stateBytesPerSeq: number;
  /** device bytes of blocks + states + tables */
  totalBytes: number;
  budgetBytes: number;
  /** tokens (summed over sequences) the growing kinds hold when full; Infinity for a window-only model */
  tokenCapacity: number;
}

const BF16 = 2;

/** Rows a sequence of `length` tokens needs in a kind (the window ring: all `win` rows from admission). */
export function rowsNeeded(kind: CacheKind, length: number, windowSize: number): number {
  return kind.ratio === 0 ? windowSize : Math.floor(length / kind.ratio);
}

/** Plans the block pool from a memory budget; refuses (KvCacheCapacityError) when not even the slots' fixed part fits. */
export function planKvPool(layout: KvLayout, o: PoolPlanOptions): PoolPlan {
  const fraction = o.memoryFraction ?? 0.9;
  const reserve = o.reserveBytes ?? 0;
  const blockRows = o.blockRows ?? 64;
  const S = o.maxSequences;
  if (!(Number.isInteger(S) && S >= 1)) throw new RangeError(`planKvPool: maxSequences ${S} must be a positive integer`);
  if (!(Number.isInteger(blockRows) && blockRows >= 1)) throw new RangeError(`planKvPool: blockRows ${blockRows} must be a positive integer`);
  if (!(fraction > 0 && fraction <= 1)) throw new RangeError(`planKvPool: memoryFraction ${fraction} must be in (0, 1]`);
  if (!(Number.isFinite(o.freeBytes) && o.freeBytes >= 0)) throw new RangeError(`planKvPool: freeBytes ${o.freeBytes} must be a non-negative number`);
  const budget = Math.floor(o.freeBytes * fraction) - reserve;
  const per = layout.kinds.map((kind) => {
    const blockBytes = kind.layers.length * blockRows * kind.rowElems * BF16;
    const maxBlocksPerSeq = Math.max(1, Math.ceil(rowsNeeded(kind, layout.maxContext, layout.windowSize) / blockRows));
    return { kind, blockBytes, maxBlocksPerSeq };
  });
  const stateBytesPerSeq = layout.stateElemsPerSeq * 4;
  const tableBytesPerSeq = per.reduce((s, k) => s + k.maxBlocksPerSeq * 4, 0);
  const win = per.find((k) => k.kind.ratio === 0);
  const fixedPerSeq = stateBytesPerSeq + tableBytesPerSeq + (win ? win.maxBlocksPerSeq * win.blockBytes : 0);
  const growing = per.filter((k) => k.kind.ratio > 0);
  // Every sequence may hold one partly filled block of each growing kind: the pool must have at least that much.
  const minGrowing = growing.reduce((s, k) => s + k.blockBytes, 0) * S;
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  if (budget < fixedPerSeq * S + minGrowing) {
    throw new KvCacheCapacityError(
      `the attention caches need ${mib(fixedPerSeq * S + minGrowing)} for ${S} sequences (window ring, compressor state and one block of each compressed cache each), `
      + `but the budget is ${mib(Math.max(0, budget))} (${mib(o.freeBytes)} free x ${fraction} - ${mib(reserve)} reserved)`,
      'lower maxSequences, raise memoryFraction, lower reserveBytes, or free GPU memory');
  }
  const rest = budget - fixedPerSeq * S;
  // bytes per token of each growing kind (one row per `ratio` tokens)
  const perToken = growing.map((k) => (k.kind.layers.length * k.kind.rowElems * BF16) / k.kind.ratio);
  const perTokenSum = perToken.reduce((a, b) => a + b, 0);
  const kinds: KindPlan[] = per.map((k) => {
    let blocks: number;
    if (k.kind.ratio === 0) blocks = k.maxBlocksPerSeq * S;
    else {
      const share = perToken[growing.indexOf(k)] / perTokenSum;
      blocks = Math.max(S, Math.floor((rest * share) / k.blockBytes));
    }
    if (o.maxBlocksPerKind !== undefined && k.kind.ratio > 0) blocks = Math.min(blocks, Math.max(S, o.maxBlocksPerKind));
    // block ids are int32 in the device tables
    blocks = Math.min(blocks, 0x7fffffff);
    return { ...k, blocks };
  });
  const totalBytes = kinds.reduce((s, k) => s + k.blocks * k.blockBytes, 0) + (stateBytesPerSeq + tableBytesPerSeq) * S;
  const tokenCapacity = growing.length === 0 ? Infinity
    : Math.min(...kinds.filter((k) => k.kind.ratio > 0).map((k) => (k.blocks - S) * blockRows * k.kind.ratio + S * (k.kind.ratio - 1)));
  return { layout, blockRows, maxSequences: S, kinds, stateBytesPerSeq, totalBytes, budgetBytes: budget, tokenCapacity };
}

/** One admitted sequence: its slot and the blocks it holds per kind (in row order). */
export interface KvSequence {
  readonly id: number;
  readonly slot: number;
  /** tokens the blocks cover (ensureLength's high-water mark) */
  length: number;
  readonly blocks: number[][];
  released: boolean;
}

/**
 * The block allocator: free lists per kind, one slot per sequence, block tables mirrored in Int32Arrays
 * ([maxSequences, maxBlocksPerSeq] per kind, -1 = no block) that kv-cache.ts uploads. Every change is checked in full
 * before anything moves, so a refusal leaves the allocator as it was.
 */
export class KvBlockAllocator {
  readonly plan: PoolPlan;
  /** per kind: Int32Array [maxSequences * maxBlocksPerSeq] */
  readonly tables: Int32Array[];
  /** per kind: whether a table row changed since the last markClean() */
  readonly dirty: boolean[];
  private readonly free: number[][];
  private readonly freeSlots: number[];
  private readonly live = new Map<number, KvSequence>();
  private nextId = 1;

  constructor(plan: PoolPlan) {
    this.plan = plan;
    this.tables = plan.kinds.map((k) => new Int32Array(plan.maxSequences * k.maxBlocksPerSeq).fill(-1));
    this.dirty = plan.kinds.map(() => true);
    // pop() hands out low ids first
    this.free = plan.kinds.map((k) => Array.from({ length: k.blocks }, (_, i) => k.blocks - 1 - i));
    this.freeSlots = Array.from({ length: plan.maxSequences }, (_, i) => plan.maxSequences - 1 - i);
  }

  get liveSequences(): number { return this.live.size; }
  freeBlocks(kind: number): number { return this.free[kind].length; }

  /** Blocks a sequence of `length` tokens holds in kind k. */
  blocksFor(k: number, length: number): number {
    const kp = this.plan.kinds[k];
    return Math.ceil(rowsNeeded(kp.kind, length, this.plan.layout.windowSize) / this.plan.blockRows);
  }

  private checkLength(length: number, what: string): void {
    const max = this.plan.layout.maxContext;
    if (!(Number.isInteger(length) && length >= 0)) throw new RangeError(`${what}: length ${length} must be a non-negative integer`);
    if (length > max) {
      throw new KvCacheCapacityError(`${what}: ${length} tokens exceed the cache's maximum context of ${max}`,
        'shorten the prompt or max_tokens, or build the cache with a larger maxContext');
    }
  }

  /** What ensureLength would take per kind, or the refusal it would throw. */
  private shortfall(seq: KvSequence | undefined, length: number, what: string): number[] {
    const need = this.plan.kinds.map((_, k) => Math.max(0, this.blocksFor(k, length) - (seq ? seq.blocks[k].length : 0)));
    for (let k = 0; k < need.length; k++) {
      if (need[k] > this.free[k].length) {
        const kp = this.plan.kinds[k];
        const heldTokens = kp.kind.ratio === 0 ? `${this.plan.maxSequences} sequences' windows` : `about ${kp.blocks * this.plan.blockRows * kp.kind.ratio} tokens over all sequences`;
        throw new KvCacheCapacityError(
          `${what}: ${length} tokens need ${need[k]} more "${kp.kind.name}" cache blocks but only ${this.free[k].length} of ${kp.blocks} are free `
          + `(${this.live.size} sequences live; the pool holds ${heldTokens})`,
          'wait for or release other sequences, lower the sequence\'s max_tokens, or give the cache more memory (memoryFraction, reserveBytes, fewer maxSequences)');
      }
    }
    return need;
  }

  /** Admits a sequence with blocks for `length` tokens (its window ring in full). Refuses when no slot or block is free. */
  admit(length = 0): KvSequence {
    this.checkLength(length, 'admit');
    if (this.freeSlots.length === 0) {
      throw new KvCacheCapacityError(`admit: all ${this.plan.maxSequences} sequence slots of the attention cache are in use`,
        'wait for or release a sequence, or build the cache with a larger maxSequences');
    }
    const need = this.shortfall(undefined, length, 'admit');
    const slot = this.freeSlots.pop()!;
    const seq: KvSequence = { id: this.nextId++, slot, length, blocks: this.plan.kinds.map(() => []), released: false };
    this.take(seq, need);
    this.live.set(seq.id, seq);
    return seq;
  }

  /** Grows a sequence's blocks to cover `length` tokens (no-op when they already do). Refuses atomically. */
  ensureLength(seq: KvSequence, length: number): void {
    this.checkSeq(seq, 'ensureLength');
    this.checkLength(length, `ensureLength (sequence ${seq.id})`);
    if (length <= seq.length) return;
    const need = this.shortfall(seq, length, `ensureLength (sequence ${seq.id})`);
    this.take(seq, need);
    seq.length = length;
  }

  /** Returns the sequence's blocks and slot. Releasing twice is a no-op. */
  release(seq: KvSequence): void {
    if (seq.released) return;
    this.checkSeq(seq, 'release');
    for (let k = 0; k < seq.blocks.length; k++) {
      const kp = this.plan.kinds[k];
      const t = this.tables[k];
      for (let j = 0; j < seq.blocks[k].length; j++) t[seq.slot * kp.maxBlocksPerSeq + j] = -1;
      // freed blocks go back so that the lowest ids are handed out first again
      this.free[k].push(...seq.blocks[k].reverse());
      seq.blocks[k].length = 0;
      this.dirty[k] = true;
    }
    this.freeSlots.push(seq.slot);
    seq.released = true;
    this.live.delete(seq.id);
  }

  markClean(): void { this.dirty.fill(false); }

  private checkSeq(seq: KvSequence, what: string): void {
    if (seq.released || this.live.get(seq.id) !== seq) throw new Error(`${what}: sequence ${seq.id} is not live in this cache (released, or from another cache)`);
  }

  private take(seq: KvSequence, need: number[]): void {
    for (let k = 0; k < need.length; k++) {
      const kp = this.plan.kinds[k];
      for (let j = 0; j < need[k]; j++) {
        const b = this.free[k].pop()!;
        this.tables[k][seq.slot * kp.maxBlocksPerSeq + seq.blocks[k].length] = b;
        seq.blocks[k].push(b);
      }
      if (need[k] > 0) this.dirty[k] = true;
    }
  }
}
