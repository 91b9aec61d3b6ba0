// WebAssembly SIMD kernels for the CPU paths (src/model/, moe/experts.ts):
//  - gemm_f32 / gemm_bf16: out[m, n] = sum_k x[m, k] * W[n, k] with f32 weights or bf16 weights widened on the fly
//    (the model's plain fp32 linears, V4-MODEL 8.1; the head 129280 x D is the largest GEMM of a CPU decode step).
//    f32 accumulation in 2 x 4 lanes summed in a fixed order: each output depends only on its own row and K,
//    never on M, so batching changes no bit.
//  - fp8_partials: the exact per-128-block sums of e4m3 x e4m3 products in f64 (FP8 GEMMs, V4-MODEL 8.4 / SPEC 3):
//    exact, so bit-identical to the JS loops whatever the order.
//
// The module is assembled here from bytes (no toolchain, no download): one imported memory, three functions.
// Node >= 16.4 runs WebAssembly SIMD by default; where it cannot, `wasmGemm()` returns undefined and the callers
// use the plain JS loops in ops.ts (f64 accumulation; same results to ~1e-7 relative, not bit for bit).

/** unsigned LEB128 */
function u(n: number): number[] {
  const out: number[] = [];
  do { let b = n & 0x7f; n >>>= 7; if (n !== 0) b |= 0x80; out.push(b); } while (n !== 0);
  return out;
}
/** signed LEB128 (i32) */
function s(n: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = n & 0x7f; n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) { out.push(b); return out; }
    out.push(b | 0x80);
  }
}
const vec = (items: number[][]): number[] => [...u(items.length), ...items.flat()];
const section = (id: number, body: number[]): number[] => [id, ...u(body.length), ...body];
const str = (t: string): number[] => [...u(t.length), ...Array.from(t, (c) => c.charCodeAt(0))];

// opcodes
const LG = (i: number) => [0x20, ...u(i)];
const LS = (i: number) => [0x21, ...u(i)];
const LT = (i: number) => [0x22, ...u(i)];
const I32 = (v: number) => [0x41, ...s(v)];
const ADD = [0x6a]; const MUL = [0x6c]; const LTU = [0x49]; const SHL = [0x74];
const BLOCK = [0x02, 0x40]; const LOOP = [0x03, 0x40]; const END = [0x0b];
const BR_IF = (d: number) => [0x0d, ...u(d)]; const BR = (d: number) => [0x0c, ...u(d)];
const SIMD = (op: number, ...imm: number[]) => [0xfd, ...u(op), ...imm];
const V128_LOAD = SIMD(0x00, 4, 0); // align 16, offset 0
const V128_LOAD_OFF = (off: number) => SIMD(0x00, 4, ...u(off));
const F32X4_SPLAT = SIMD(0x13); const F32X4_ADD = SIMD(0xe4); const F32X4_MUL = SIMD(0xe6);
const F32X4_EXTRACT = (lane: number) => SIMD(0x1f, lane);
const I32X4_EXT_LO_U = SIMD(0xa9); const I32X4_EXT_HI_U = SIMD(0xaa); const I32X4_SHL = SIMD(0xab);
const F32_CONST0 = [0x43, 0, 0, 0, 0];
const F32_ADD = [0x92]; const F32_STORE = [0x38, 2, 0];

/**
 * gemm(x, w, out, M, N, K): params 0..5; K % 8 == 0; byte pointers.
 * locals: 6 n, 7 m, 8 k, 9 wrow, 10 xrow, 11 acc0 (v128), 12 acc1 (v128), 13 kBytes, 14 wStride (bytes per w row)
 * bf16: weights are u16 bf16 bits; each 16-byte load gives 8 weights, widened to two f32x4.
 */
function gemmBody(bf16: boolean): number[] {
  const wElem = bf16 ? 2 : 4;
  const inner: number[] = bf16
    ? [
      // v = load(wrow + k * 2) ; lo = shl(ext_lo(v), 16) ; hi = shl(ext_hi(v), 16)
      ...LG(9), ...LG(8), ...I32(1), ...SHL, ...ADD, ...V128_LOAD, ...LT(15),
      ...I32X4_EXT_LO_U, ...I32(16), ...I32X4_SHL,
      ...LG(10), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD, ...F32X4_MUL, ...LG(11), ...F32X4_ADD, ...LS(11),
      ...LG(15), ...I32X4_EXT_HI_U, ...I32(16), ...I32X4_SHL,
      ...LG(10), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD_OFF(16), ...F32X4_MUL, ...LG(12), ...F32X4_ADD, ...LS(12),
    ]
    : [
      ...LG(9), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD,
      ...LG(10), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD, ...F32X4_MUL, ...LG(11), ...F32X4_ADD, ...LS(11),
      ...LG(9), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD_OFF(16),
      ...LG(10), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD_OFF(16), ...F32X4_MUL, ...LG(12), ...F32X4_ADD, ...LS(12),
    ];
  const hsum = (acc: number) => [
    ...LG(acc), ...F32X4_EXTRACT(0), ...LG(acc), ...F32X4_EXTRACT(1), ...F32_ADD,
    ...LG(acc), ...F32X4_EXTRACT(2), ...LG(acc), ...F32X4_EXTRACT(3), ...F32_ADD, ...F32_ADD,
  ];
  const body = [
    ...I32(0), ...LS(6),
    ...BLOCK, ...LOOP, // n loop
    ...LG(6), ...LG(4), ...LTU, [0x45], ...BR_IF(1),
    ...LG(1), ...LG(6), ...LG(5), ...MUL, ...I32(wElem), ...MUL, ...ADD, ...LS(9),
    ...I32(0), ...LS(7),
    ...BLOCK, ...LOOP, // m loop
    ...LG(7), ...LG(3), ...LTU, [0x45], ...BR_IF(1),
    ...LG(0), ...LG(7), ...LG(5), ...MUL, ...I32(4), ...MUL, ...ADD, ...LS(10),
    ...F32_CONST0, ...F32X4_SPLAT, ...LS(11), ...F32_CONST0, ...F32X4_SPLAT, ...LS(12),
    ...I32(0), ...LS(8),
    ...BLOCK, ...LOOP, // k loop, 8 at a time
    ...LG(8), ...LG(5), ...LTU, [0x45], ...BR_IF(1),
    ...inner,
    ...LG(8), ...I32(8), ...ADD, ...LS(8), ...BR(0),
    ...END, ...END,
    // out[(m * N + n)] = (hsum(acc0) + hsum(acc1))
    ...LG(2), ...LG(7), ...LG(4), ...MUL, ...LG(6), ...ADD, ...I32(2), ...SHL, ...ADD,
    ...hsum(11), ...hsum(12), ...F32_ADD, ...F32_STORE,
    ...LG(7), ...I32(1), ...ADD, ...LS(7), ...BR(0),
    ...END, ...END,
    ...LG(6), ...I32(1), ...ADD, ...LS(6), ...BR(0),
    ...END, ...END,
  ].flat();
  // locals: 5 x i32 (6..10), 2 x v128 (11, 12), 3 x i32 (13..15; 15 holds a v128 in the bf16 body -> declare v128)
  const locals = vec([[5, 0x7f], [2, 0x7b], [2, 0x7f], [1, 0x7b]]);
  const fn = [...locals, ...body, ...END];
  return [...u(fn.length), ...fn];
}

// f64x2 ops for the exact FP8 block sums
const V128_LOAD64_ZERO = (off: number) => SIMD(0x5d, 3, ...u(off));
const F64X2_PROMOTE_LO = SIMD(0x5f); const F64X2_ADD = SIMD(0xf0); const F64X2_MUL = SIMD(0xf2);
const F64X2_EXTRACT = (lane: number) => SIMD(0x21, lane);
const F64X2_ZERO = [0xfd, ...u(0x0c), ...new Array(16).fill(0)]; // v128.const 0
const F64_ADD = [0xa0]; const F64_STORE = [0x39, 3, 0];
const SHR_U = [0x76];

/**
 * fp8_partials(x, w, out, M, N, K): out[(m * N + n) * (K/128) + b] = sum over the 128 columns c of block b of
 * w[n, c] * x[m, c], with w f32 (e4m3 values) and x f64 (e4m3 values): every product and partial sum is exact
 * in f64, so the result equals the correctly rounded block sum (V4-MODEL 8.4), in any order.
 * locals: 6 n, 7 m, 8 c, 9 wrow, 10 xrow, 11 acc0, 12 acc1, 13 b, 14 optr, 15 cend
 */
function fp8PartialsBody(): number[] {
  const step = (acc: number, wOff: number, xOff: number) => [
    ...LG(9), ...LG(8), ...I32(2), ...SHL, ...ADD, ...V128_LOAD64_ZERO(wOff), ...F64X2_PROMOTE_LO,
    ...LG(10), ...LG(8), ...I32(3), ...SHL, ...ADD, ...V128_LOAD_OFF(xOff), ...F64X2_MUL, ...LG(acc), ...F64X2_ADD, ...LS(acc),
  ];
  const body = [
    ...I32(0), ...LS(6),
    ...BLOCK, ...LOOP, // n
    ...LG(6), ...LG(4), ...LTU, [0x45], ...BR_IF(1),
    ...LG(1), ...LG(6), ...LG(5), ...MUL, ...I32(4), ...MUL, ...ADD, ...LS(9),
    ...I32(0), ...LS(7),
    ...BLOCK, ...LOOP, // m
    ...LG(7), ...LG(3), ...LTU, [0x45], ...BR_IF(1),
    ...LG(0), ...LG(7), ...LG(5), ...MUL, ...I32(8), ...MUL, ...ADD, ...LS(10),
    // optr = out + (m * N + n) * (K >> 7) * 8
    ...LG(2), ...LG(7), ...LG(4), ...MUL, ...LG(6), ...ADD, ...LG(5), ...I32(7), ...SHR_U, ...MUL, ...I32(3), ...SHL, ...ADD, ...LS(14),
    ...I32(0), ...LS(8),
    ...BLOCK, ...LOOP, // blocks: c = 0, 128, ...
    ...LG(8), ...LG(5), ...LTU, [0x45], ...BR_IF(1),
    ...F64X2_ZERO, ...LS(11), ...F64X2_ZERO, ...LS(12),
    ...LG(8), ...I32(128), ...ADD, ...LS(15),
    ...BLOCK, ...LOOP, // 4 columns per step
    ...LG(8), ...LG(15), ...LTU, [0x45], ...BR_IF(1),
    ...step(11, 0, 0), ...step(12, 8, 16),
    ...LG(8), ...I32(4), ...ADD, ...LS(8), ...BR(0),
    ...END, ...END,
    // store the block sum at optr; optr += 8
    ...LG(14),
    ...LG(11), ...F64X2_EXTRACT(0), ...LG(11), ...F64X2_EXTRACT(1), ...F64_ADD,
    ...LG(12), ...F64X2_EXTRACT(0), ...LG(12), ...F64X2_EXTRACT(1), ...F64_ADD, ...F64_ADD, ...F64_STORE,
    ...LG(14), ...I32(8), ...ADD, ...LS(14),
    ...BR(0),
    ...END, ...END,
    ...LG(7), ...I32(1), ...ADD, ...LS(7), ...BR(0),
    ...END, ...END,
    ...LG(6), ...I32(1), ...ADD, ...LS(6), ...BR(0),
    ...END, ...END,
  ].flat();
  const locals = vec([[5, 0x7f], [2, 0x7b], [3, 0x7f]]);
  const fn = [...locals, ...body, ...END];
  return [...u(fn.length), ...fn];
}

function buildModule(): Uint8Array {
  const i32 = 0x7f;
  const type = section(1, vec([[0x60, ...vec([[i32], [i32], [i32], [i32], [i32], [i32]]), ...vec([])]]));
  const imports = section(2, vec([[...str('env'), ...str('mem'), 0x02, 0x00, ...u(1)]]));
  const funcs = section(3, vec([[0], [0], [0]]));
  const exports = section(7, vec([[...str('gemm_f32'), 0x00, 0], [...str('gemm_bf16'), 0x00, 1], [...str('fp8_partials'), 0x00, 2]]));
  const code = section(10, [...u(3), ...gemmBody(false), ...gemmBody(true), ...fp8PartialsBody()]);
  return Uint8Array.from([0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, ...type, ...imports, ...funcs, ...exports, ...code]);
}

// The WebAssembly global, typed here (the project compiles without the DOM lib, and @types/node does not declare it).
interface WasmMemory { readonly buffer: ArrayBuffer; grow(pages: number): number }
interface WasmApi {
  Memory: new (d: { initial: number }) => WasmMemory;
  Module: new (bytes: Uint8Array) => object;
  Instance: new (m: object, imports: object) => { exports: Record<string, unknown> };
}
const WA = (globalThis as unknown as { WebAssembly: WasmApi }).WebAssembly;

type GemmFn = (x: number, w: number, out: number, M: number, N: number, K: number) => void;

/** A weight matrix placed in the kernels' memory. */
export class WasmMatrix {
  constructor(private readonly g: WasmGemm, readonly ptr: number, readonly n: number, readonly k: number, readonly bf16: boolean) {}

  /**
   * out[outOff + m * outStride + j] = sum_k x[xOff + m * xStride + k] * W[rowOff + j, k] for j < nRows, f32;
   * rounded to bf16 when `toBF16`.
   */
  apply(x: Float32Array, rows: number, out: Float32Array, toBF16: boolean, xOff = 0, xStride = this.k, outOff = 0,
    outStride = this.n, rowOff = 0, nRows = this.n - rowOff): void {
    this.g.run(this, x, rows, out, toBF16, xOff, xStride, outOff, outStride, rowOff, nRows);
  }

  /** Exact FP8 block partials against this matrix (WasmGemm.fp8Partials). */
  fp8Partials(x: Float32Array | Float64Array, rows: number): Float64Array {
    return this.g.fp8Partials(this, x, rows);
  }
}

export class WasmGemm {
  private readonly memory: WasmMemory;
  private readonly f32: GemmFn;
  private readonly b16: GemmFn;
  private readonly p8: GemmFn;
  private top = 64;
  private scratch = 0;
  private scratchBytes = 0;

  constructor() {
    this.memory = new WA.Memory({ initial: 1 });
    const mod = new WA.Module(buildModule());
    const inst = new WA.Instance(mod, { env: { mem: this.memory } });
    this.f32 = inst.exports.gemm_f32 as GemmFn;
    this.b16 = inst.exports.gemm_bf16 as GemmFn;
    this.p8 = inst.exports.fp8_partials as GemmFn;
  }

  private alloc(bytes: number): number {
    const p = (this.top + 15) & ~15;
    const end = p + bytes;
    const have = this.memory.buffer.byteLength;
    if (end > 0xffff0000) throw new RangeError(`WasmGemm: ${end} bytes exceed the 4 GB of a wasm32 memory`);
    if (end > have) this.memory.grow(Math.ceil((end - have) / 65536)); // throws RangeError when the engine refuses
    this.top = end;
    return p;
  }

  /** Places W [n, k] (f32 values, or bf16 bits) in the kernels' memory. k % 8 == 0. */
  matrix(w: Float32Array | Uint16Array, n: number, k: number): WasmMatrix {
    if (k % 8 !== 0) throw new Error(`WasmGemm: K = ${k} is not a multiple of 8`);
    if (w.length !== n * k) throw new Error(`WasmGemm: ${w.length} values do not fill [${n}, ${k}]`);
    const bf16 = w instanceof Uint16Array;
    const ptr = this.alloc(w.byteLength);
    if (bf16) new Uint16Array(this.memory.buffer, ptr, w.length).set(w);
    else new Float32Array(this.memory.buffer, ptr, w.length).set(w);
    return new WasmMatrix(this, ptr, n, k, bf16);
  }

  /**
   * Exact FP8 block partials (see fp8PartialsBody) of activation values x [rows, K] (e4m3 values, contiguous) against
   * the matrix (f32 e4m3 values): returns a view [rows, N, K/128] valid until the next call.
   */
  fp8Partials(m: WasmMatrix, x: Float32Array | Float64Array, rows: number): Float64Array {
    const K = m.k; const N = m.n; const kb = K / 128;
    const need = rows * K * 8 + rows * N * kb * 8 + 32;
    if (need > this.scratchBytes) { this.scratch = this.alloc(need); this.scratchBytes = need; }
    const xp = (this.scratch + 15) & ~15; const op = xp + rows * K * 8;
    const xs = new Float64Array(this.memory.buffer, xp, rows * K);
    for (let i = 0; i < rows * K; i++) xs[i] = x[i];
    this.p8(xp, m.ptr, op, rows, N, K);
    return new Float64Array(this.memory.buffer, op, rows * N * kb);
  }

  run(m: WasmMatrix, x: Float32Array, rows: number, out: Float32Array, toBF16: boolean, xOff: number, xStride: number,
    outOff: number, outStride: number, rowOff: number, nRows: number): void {
    const K = m.k;
    const need = rows * K * 4 + rows * nRows * 4 + 32;
    if (need > this.scratchBytes) { this.scratch = this.alloc(need); this.scratchBytes = need; }
    const xp = this.scratch; const op = (xp + rows * K * 4 + 15) & ~15;
    const buf = this.memory.buffer;
    const xs = new Float32Array(buf, xp, rows * K);
    if (xStride === K) xs.set(x.subarray(xOff, xOff + rows * K));
    else for (let r = 0; r < rows; r++) xs.set(x.subarray(xOff + r * xStride, xOff + r * xStride + K), r * K);
    const wp = m.ptr + rowOff * K * (m.bf16 ? 2 : 4);
    (m.bf16 ? this.b16 : this.f32)(xp, wp, op, rows, nRows, K);
    const os = new Float32Array(this.memory.buffer, op, rows * nRows);
    const ou = new Uint32Array(this.memory.buffer, op, rows * nRows);
    if (toBF16) {
      for (let i = 0; i < ou.length; i++) {
        const b = ou[i];
        if ((b & 0x7fffffff) <= 0x7f800000) ou[i] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
      }
    }
    if (outStride === nRows) out.set(os, outOff);
    else for (let r = 0; r < rows; r++) out.set(os.subarray(r * nRows, (r + 1) * nRows), outOff + r * outStride);
  }
}

let shared: WasmGemm | null | undefined;

/** The process's kernels, or undefined where WebAssembly SIMD is unavailable (or MEGAMOE_NO_WASM=1). */
export function wasmGemm(): WasmGemm | undefined {
  if (shared === undefined) {
    try {
      shared = process.env.MEGAMOE_NO_WASM === '1' ? null : new WasmGemm();
    } catch {
      shared = null;
    }
  }
  return shared ?? undefined;
}

/** A separate instance with its own memory (a model's weights: freed with it), or undefined where SIMD fails. */
export function newWasmGemm(): WasmGemm | undefined {
  try { return new WasmGemm(); } catch { return undefined; }
}

/** Turns the kernels off (callers fall back to their JS loops) or back on: tests compare both paths. */
export function setWasmGemmEnabled(on: boolean): void {
  shared = on ? undefined : null;
}

export const _buildModuleForTests = buildModule;
