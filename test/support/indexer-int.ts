// The rule by which attn_indexer_scores (src/kernels/indexer.cu) puts a q . k product on its exact integer path, in
// exact double arithmetic: a vector of bf16 values is accepted when every value is an integer multiple n of 2^U with
// U = floor(log2(amax)) - 6 (so |n| <= 127) and amax is zero or in [2^-121, 2^23); a pair when both vectors are and
// -126 <= Uq + Uk <= 105. Used by the tests to say which path a case exercises, and by the CPU proof test.

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

export interface IntClass {
  /** on the integer grid (the kernel's fast path) */
  exact: boolean;
  /** the unit exponent (0 for a zero vector; meaningless when !exact) */
  U: number;
  /** the integers n (valid when exact) */
  n: Int32Array;
}

export function indexerIntClass(v: ArrayLike<number>): IntClass {
  let amax = 0;
  let nan = false;
  for (let i = 0; i < v.length; i++) { const a = Math.abs(v[i]); if (Number.isNaN(a)) nan = true; else if (a > amax) amax = a; }
  const n = new Int32Array(v.length);
  if (nan) return { exact: false, U: 0, n };
  if (amax === 0) return { exact: true, U: 0, n };
  f32[0] = amax;
  const ef = u32[0] >>> 23;
  if (ef < 6 || ef > 149) return { exact: false, U: 0, n };
  const U = ef - 133;
  for (let i = 0; i < v.length; i++) {
    const x = v[i] * 2 ** -U; // exact in double
    if (!Number.isInteger(x) || Math.abs(x) > 127) return { exact: false, U, n };
    n[i] = x;
  }
  return { exact: true, U, n };
}

/** The integer path's q . k as the kernel forms it: f32((sum nq nk) * 2^(Uq + Uk)); undefined off that path. */
export function indexerIntDot(q: IntClass, k: IntClass): number | undefined {
  const F = q.U + k.U;
  if (!q.exact || !k.exact || F < -126 || F > 105) return undefined;
  let s = 0;
  for (let i = 0; i < q.n.length; i++) s += q.n[i] * k.n[i];
  if (Math.abs(s) >= 2 ** 22) throw new Error(`integer dot ${s} out of the kernel's exact range`);
  return Math.fround(s * 2 ** F);
}
