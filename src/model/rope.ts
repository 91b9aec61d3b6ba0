// RoPE with YaRN (V4-MODEL 3): interleaved pairs in the LAST rd dims of a vector, fp32 tables exp(i * T * f_i),
// no attention temperature (mscale). Tables grow on demand, so any position up to the context limit works.
import type { YarnConfig } from './config.js';
import { bf16 } from './ops.js';

const fr = Math.fround;

/** f_i (V4-MODEL 3.1), fp32; YaRN blend when `yarn` is given with originalSeqLen > 0. */
export function ropeFrequencies(rd: number, base: number, yarn?: YarnConfig): Float32Array {
  const half = rd / 2;
  const f = new Float32Array(half);
  for (let i = 0; i < half; i++) f[i] = fr(1 / fr(base ** fr((2 * i) / rd)));
  if (yarn && yarn.originalSeqLen > 0) {
    const cd = (r: number) => (rd * Math.log(yarn.originalSeqLen / (2 * Math.PI * r))) / (2 * Math.log(base));
    const low = Math.max(Math.floor(cd(yarn.betaFast)), 0);
    let high = Math.min(Math.ceil(cd(yarn.betaSlow)), rd - 1);
    if (low === high) high += 0.001;
    for (let i = 0; i < half; i++) {
      const ramp = Math.min(1, Math.max(0, fr((i - low) / (high - low))));
      f[i] = fr(fr(fr(f[i] / yarn.factor) * ramp) + fr(f[i] * fr(1 - ramp)));
    }
  }
  return f;
}

export class RopeTable {
  readonly half: number;
  private cos = new Float32Array(0);
  private sin = new Float32Array(0);
  private positions = 0;

  constructor(readonly rd: number, readonly freqs: Float32Array) {
    this.half = rd / 2;
  }

  private grow(upTo: number): void {
    let n = Math.max(1024, this.positions);
    while (n <= upTo) n *= 2;
    const cos = new Float32Array(n * this.half); const sin = new Float32Array(n * this.half);
    cos.set(this.cos); sin.set(this.sin);
    for (let t = this.positions; t < n; t++) {
      for (let i = 0; i < this.half; i++) {
        const ang = fr(t * this.freqs[i]); // torch.outer in fp32, then polar in fp32
        cos[t * this.half + i] = fr(Math.cos(ang));
        sin[t * this.half + i] = fr(Math.sin(ang));
      }
    }
    this.cos = cos; this.sin = sin; this.positions = n;
  }

  /**
   * Rotates x[off, off + rd) (one vector's rope part) by position t; `inverse` multiplies by the conjugate
   * (the attention output, V4-MODEL 4.7). fp32 inside, bf16 out.
   */
  apply(x: Float32Array, off: number, t: number, inverse = false): void {
    if (t >= this.positions) this.grow(t);
    const h = this.half; const base = t * h;
    const cs = this.cos; const sn = this.sin;
    for (let i = 0; i < h; i++) {
      const c = cs[base + i]; const s = inverse ? -sn[base + i] : sn[base + i];
      const a = x[off + 2 * i]; const b = x[off + 2 * i + 1];
      x[off + 2 * i] = bf16(fr(fr(a * c) - fr(b * s)));
      x[off + 2 * i + 1] = bf16(fr(fr(a * s) + fr(b * c)));
    }
  }
}
