// Launcher of the fused MegaMoE kernel (mega_moe.cu): specialisation per (shape, path), the tensor maps over the
// symmetric buffer and the weights, the parameter struct, the grid (one CTA per SM) and the control block's error
// report. The plan (buffer layout, shared memory, parameter packing) is mega-moe-layout.ts.
import {
  arg, compileKernel, ensureContext, loadKernel, registerKernel, tensorMap2D, type Kernel, type KernelArgLike, type StreamLike,
  type TensorMap,
} from '../cuda/index.js';
import {
  decodeMegaCtl, describeMegaCtlError, MEGA_CTL_BYTES, MEGA_FAULT_SKIP_PUBLISH, MEGA_ROW_TILE, megaDefines, megaMulticastWanted,
  megaNormalPolicy, megaSmemBytes, megaThreads, normalKernelFor, packMegaParams, type MegaBufferLayout, type MegaCtlState,
  type MegaMoePath, type MegaMoeShape, type MegaNormalKernel, type MegaNormalPolicy, type MegaParamPointer,
} from './mega-moe-layout.js';
import { MOE_PRESET_SHAPES } from './presets.js';
import { WEIGHT_TILE, type WeightLayout } from './weight-layout.js';

export const MEGA_MOE_SOURCE = 'mega_moe.cu';
export const MEGA_MOE_ENTRY = 'mega_moe_fused';

/** The variants MegaMoeKernel.create may load for a shape: the normal path's three kernels and the decode paths (16-, 32- and 64-token tiles). */
const MEGA_VARIANTS: ReadonlyArray<{ label: string; path: MegaMoePath; normal?: MegaNormalKernel }> = [
  { label: 'normal-tiled-mcast', path: 'normal', normal: 'clustered' },
  { label: 'normal-tiled', path: 'normal', normal: 'round-robin' },
  { label: 'normal-tiled-dynamic', path: 'normal', normal: 'dynamic' },
  { label: 'decode-tiled', path: 'decode' },
  { label: 'decode32-tiled', path: 'decode32' },
  { label: 'decode64-tiled', path: 'decode64' },
];

/**
 * The variants a process builds: the clustered one where the multicast is wanted, round robin unless the dynamic
 * kernel takes every row count, the dynamic one where it takes any.
 */
function wantedVariants(shape: MegaMoeShape) {
  const { dynamicMaxRows } = megaNormalPolicy(shape.inter);
  return MEGA_VARIANTS.filter((v) => v.normal === 'clustered' ? megaMulticastWanted()
    : v.normal === 'round-robin' ? dynamicMaxRows !== Infinity
      : v.normal === 'dynamic' ? dynamicMaxRows > 0 : true);
}

/** Expert-parallel sizes whose per-rank shapes (E / N local experts) CI compiles for the flash and pro presets. */
const CI_EP_SIZES = [2, 4, 8];

registerKernel({
  name: 'mega_moe',
  source: MEGA_MOE_SOURCE,
  entry: MEGA_MOE_ENTRY,
  variants: MOE_PRESET_SHAPES.flatMap((p) => {
    const sizes = p.label === 'tiny' ? [1] : [1, ...CI_EP_SIZES];
    return sizes.flatMap((n) => {
      const shape = { hidden: p.hidden, inter: p.inter, experts: p.experts / n, topK: p.topK };
      const label = n === 1 ? p.label : `${p.label}-ep${n}`;
      return MEGA_VARIANTS.map((v) => ({ label: `${label}-${v.label}`, defines: megaDefines(shape, v.path, 'tiled', v.normal) }));
    });
  }),
});

/** A launch gave up on a spin (a bug, a dead peer, or co-residency lost): the control block's account. */
export class MegaMoeKernelError extends Error {
  readonly state: MegaCtlState;
  constructor(message: string, state: MegaCtlState) {
    super(message);
    this.name = 'MegaMoeKernelError';
    this.state = state;
  }
}

/**
 * Default deadline of every spin in the kernel (MEGAMOE_SPIN_TIMEOUT_MS overrides): far above any layer's time; with
 * several ranks 30 s, since a cross-rank wait also covers the host-side skew between the ranks' launches (and ranks
 * sharing one GPU take turns on it).
 */
export function spinTimeoutNs(ranks = 1): bigint {
  const env = process.env.MEGAMOE_SPIN_TIMEOUT_MS;
  const ms = env !== undefined && env !== '' ? Number(env) : ranks > 1 ? 30000 : 2000;
  if (!(Number.isFinite(ms) && ms > 0)) throw new RangeError(`MEGAMOE_SPIN_TIMEOUT_MS=${env} is not a positive number of milliseconds`);
  return BigInt(Math.round(ms * 1e6));
}

type Ptr = bigint | { readonly ptr: bigint };
const addr = (p: Ptr): bigint => (typeof p === 'bigint' ? p : p.ptr);

/** Device memory one bound layer reads and writes. */
export interface MegaMoeBindings {
  layout: MegaBufferLayout;
  /** base address of this rank's symmetric buffer */
  base: Ptr;
  /** layer io (capacity-sized): x bf16 [cap, H], ids I64 [cap, K], weights f32 [cap, K], yRouted / y bf16 [cap, H] */
  x: Ptr; ids: Ptr; weights: Ptr; yRouted: Ptr; y: Ptr;
  /** expert weights, groups = experts + 1 (the shared expert last), in `weightLayout` */
  w13: Ptr; s13: Ptr; w2: Ptr; s2: Ptr;
  weightLayout: WeightLayout;
  swigluLimit: number;
  /** expert parallelism: this rank of layout.ranks (default 0); its buffer's rankTable holds every rank's base, as mapped here */
  rank?: number;
}

/** MEGAMOE_FAULT=skip-publish: the kernel's test-only fault injection (an L2 wait that must time out). */
function faultFromEnv(): number {
  const v = process.env.MEGAMOE_FAULT;
  if (v === undefined || v === '' || v === 'none') return 0;
  if (v === 'skip-publish') return MEGA_FAULT_SKIP_PUBLISH;
  throw new RangeError(`MEGAMOE_FAULT=${v}: expected none or skip-publish (fault injection for tests)`);
}

/**
 * Compiles (into the disk cache) every variant MegaMoeKernel.create loads for `shape`, without a GPU buffer: under
 * expert parallelism rank 0 compiles first and the others then load from the cache (no N copies of nvcc at once).
 */
export async function compileMegaMoeKernels(shape: MegaMoeShape): Promise<void> {
  await Promise.all(wantedVariants(shape).map((v) =>
    compileKernel({ source: MEGA_MOE_SOURCE, entry: MEGA_MOE_ENTRY, defines: megaDefines(shape, v.path, 'tiled', v.normal) })));
}

class PathKernel {
  constructor(readonly path: MegaMoePath, readonly kernel: Kernel, readonly maps: readonly TensorMap[]) {}
}
type PathKernels = Readonly<Record<Exclude<MegaMoePath, 'normal'>, PathKernel> & { normal: Readonly<Partial<Record<MegaNormalKernel, PathKernel>>> }>;

/** The fused layer for one shape, bound to its buffers: launch(stream, tokens) queues one whole MoE layer. */
export class MegaMoeKernel {
  private constructor(readonly shape: MegaMoeShape, private readonly b: MegaMoeBindings,
    private readonly paths: PathKernels, readonly grid: number,
    private readonly timeoutNs: bigint, private readonly fault: number,
    private readonly policy: MegaNormalPolicy) {}

  /** Whether the normal path can run as 2-CTA clusters with weight multicast (false where the GPU cannot keep them all resident). */
  get multicast(): boolean { return this.paths.normal.clustered !== undefined; }

  /** Rows per expert from which the clustered kernel runs, and up to which the dynamic one runs below it. */
  get normalPolicy(): MegaNormalPolicy { return this.policy; }

  /** The normal path's kernel for T tokens (normalKernelFor over this layer's knobs and whether its clusters are resident). */
  normalKernel(tokens: number): MegaNormalKernel {
    return normalKernelFor((tokens * this.shape.topK) / this.shape.experts, { ...this.policy, clustered: this.multicast });
  }

  private kernelFor(tokens: number, path: MegaMoePath): PathKernel {
    // (wantedVariants builds every unclustered kernel normalKernelFor can pick under the same knobs)
    return path === 'normal' ? this.paths.normal[this.normalKernel(tokens)]! : this.paths[path];
  }

  /** Where traced launches write their per-CTA phase stamps (u64 [grid, MEGA_TRACE_SLOTS]); undefined = off. */
  trace: bigint | undefined;

  static async create(shape: MegaMoeShape, b: MegaMoeBindings): Promise<MegaMoeKernel> {
    if (b.weightLayout !== 'tiled') throw new RangeError('mega_moe: the fused kernel is built for the tiled weight layout (DeviceMoeWeights with weightLayout "tiled")');
    const ctx = ensureContext();
    const grid = ctx.properties().smCount;
    const build = async (path: MegaMoePath, normal?: MegaNormalKernel): Promise<PathKernel> => {
      const kernel = await loadKernel({ source: MEGA_MOE_SOURCE, entry: MEGA_MOE_ENTRY, defines: megaDefines(shape, path, b.weightLayout, normal) });
      kernel.setMaxDynamicSharedMemory(megaSmemBytes(path));
      return new PathKernel(path, kernel, MegaMoeKernel.maps(shape, b, path));
    };
    const wanted = new Set(wantedVariants(shape).map((v) => v.normal));
    const clusters = grid % 2 === 0;
    const [clustered, roundRobin, dynamic, decode, decode32, decode64] = await Promise.all([
      wanted.has('clustered') && clusters ? build('normal', 'clustered') : undefined,
      wanted.has('round-robin') ? build('normal', 'round-robin') : undefined,
      wanted.has('dynamic') ? build('normal', 'dynamic') : undefined,
      build('decode'), build('decode32'), build('decode64'),
    ]);
    // The grid barriers need every CTA resident: 2-CTA clusters only where all grid / 2 of them fit at once (a GPC
    // with an odd number of free SMs leaves one idle); else the kernels without clusters everywhere.
    const resident = clustered !== undefined &&
      clustered.kernel.maxActiveClusters({ grid, block: megaThreads('normal'), sharedMemBytes: megaSmemBytes('normal') }) >= grid / 2;
    return new MegaMoeKernel(shape, b, {
      normal: { clustered: resident ? clustered : undefined, 'round-robin': roundRobin, dynamic }, decode, decode32, decode64,
    }, grid, spinTimeoutNs(b.layout.ranks), faultFromEnv(), megaNormalPolicy(shape.inter));
  }

  /** The six tensor maps of a path: L1 A / W13 / sfa, L2 A / W2 / sfa (L2 stores its rows itself: row_dest). */
  private static maps(shape: MegaMoeShape, b: MegaMoeBindings, path: MegaMoePath): TensorMap[] {
    const { hidden: H, inter: I, experts } = shape;
    const G = experts + 1;
    const r = b.layout.regions;
    const base = addr(b.base);
    const at = (region: { offset: number }) => base + BigInt(region.offset);
    const M = b.layout.capacity.maxRows;
    const rt = MEGA_ROW_TILE[path];
    const act = (p: bigint, k: number) => tensorMap2D({ dataType: 'uint8', globalAddress: p, rows: b.layout.poolRows, cols: k, boxRows: rt, boxCols: 128, swizzle: '128B', l2Promotion: '256B' });
    const sf = (p: bigint, k: number) => tensorMap2D({ dataType: 'f32', globalAddress: p, rows: k / 128, cols: M, boxRows: 1, boxCols: rt, swizzle: 'none', l2Promotion: '256B' });
    // Tiled weights: each 128-row x 128-byte tile is 128 consecutive 128-byte rows, so a box is one contiguous run:
    // 128 rows (16 KB) for every unit but the decode path's 64-row L2 units.
    const w = (p: Ptr, n: number, k: number, boxRows: number) => tensorMap2D({ dataType: 'uint8', globalAddress: p, rows: G * n * (k / WEIGHT_TILE), cols: WEIGHT_TILE, boxRows, boxCols: 128, swizzle: '128B', l2Promotion: '256B' });
    if (G * 2 * I * (H / WEIGHT_TILE) >= 2 ** 31 || G * H * (I / WEIGHT_TILE) >= 2 ** 31) {
      throw new RangeError(`mega_moe: ${G} groups of tiled weights exceed the 2^31 rows a TMA coordinate reaches`);
    }
    return [
      act(at(r.a), H), w(b.w13, 2 * I, H, 128), sf(at(r.sfa), H),
      act(at(r.act), I), w(b.w2, H, I, 128), sf(at(r.actSf), I),
    ];
  }

  /** Queues the layer for `tokens` (1..maxTokens) tokens on `stream` along `path`. No host synchronisation. */
  launch(stream: StreamLike, tokens: number, path: MegaMoePath): void {
    const L = this.b.layout;
    if (!(Number.isInteger(tokens) && tokens >= 1 && tokens <= L.maxTokens)) {
      throw new RangeError(`mega_moe: ${tokens} tokens is outside [1, ${L.maxTokens}] (the symmetric buffer's capacity)`);
    }
    const pk = this.kernelFor(tokens, path);
    const base = addr(this.b.base);
    const r = L.regions;
    const at = (region: { offset: number }) => base + BigInt(region.offset);
    const pointers: Record<MegaParamPointer, bigint> = {
      x: addr(this.b.x), ids: addr(this.b.ids), weights: addr(this.b.weights), yRouted: addr(this.b.yRouted), y: addr(this.b.y),
      xFp8: at(r.xFp8), xSf: at(r.xSf), idsStaged: at(r.ids), wStaged: at(r.weights),
      chunkCounts: at(r.chunkCounts), groupOffset: at(r.groupOffset), groupCount: at(r.groupCount), groupCompact: at(r.groupCompact), tileGroup: at(r.tileGroup),
      numMTiles: at(r.numMTiles), rowWeight: at(r.rowWeight), rowDest: at(r.rowDest), slotRow: at(r.slotRow),
      a: at(r.a), sfa: at(r.sfa), act: at(r.act), actSf: at(r.actSf), out: at(r.out),
      s13: addr(this.b.s13), s2: addr(this.b.s2), flags: at(r.flags), ctl: at(r.ctl), rankTable: at(r.rankTable),
      rankFlags: at(r.rankFlags), trace: this.trace ?? 0n,
    };
    const maxTiles = Math.min(L.capacity.maxTiles, L.capacity.maxRows / MEGA_ROW_TILE[path]);
    const params = packMegaParams({
      pointers, timeoutNs: this.timeoutNs, numTokens: tokens, mCap: L.capacity.maxRows, maxTiles, swigluLimit: this.b.swigluLimit,
      fault: this.fault, rank: this.b.rank ?? 0, ranks: L.ranks,
    });
    const args: KernelArgLike[] = [...pk.maps, arg.bytes(params, 8)];
    pk.kernel.launch({ grid: this.grid, block: megaThreads(path), sharedMemBytes: megaSmemBytes(path), stream }, args);
  }

  /**
   * Reads the control block (after the stream has finished the launches to check): throws MegaMoeKernelError with
   * the kernel's account when a spin gave up, after resetting the block so the next launch starts clean.
   */
  checkErrors(ctlBuffer: { copyToHost(dst: Uint8Array, o?: { offset?: number; bytes?: number }): void; copyFromHost(src: Uint8Array, o?: { offset?: number; bytes?: number }): void }): MegaCtlState {
    const off = this.b.layout.regions.ctl.offset;
    const bytes = new Uint8Array(MEGA_CTL_BYTES);
    ctlBuffer.copyToHost(bytes, { offset: off, bytes: MEGA_CTL_BYTES });
    const state = decodeMegaCtl(bytes);
    const msg = describeMegaCtlError(state, this.shape.inter / 128);
    if (msg) {
      // Keep the epoch (flags of earlier launches must stay stale); clear the barrier, abort and error words.
      const clean = new Uint8Array(MEGA_CTL_BYTES);
      new DataView(clean.buffer).setUint32(0, state.epoch, true);
      ctlBuffer.copyFromHost(clean, { offset: off, bytes: MEGA_CTL_BYTES });
      throw new MegaMoeKernelError(`mega_moe kernel: ${msg}. The layer's output is invalid; the control block was reset. ` +
        'If this repeats, another kernel may be sharing the GPU (the fused kernel needs every SM: one CTA each), or raise MEGAMOE_SPIN_TIMEOUT_MS.', state);
    }
    return state;
  }
}
