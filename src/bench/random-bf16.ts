// Random bf16 bit patterns fast enough for 10^8 values (benchmark inputs, large GPU test batches), where
// Rng.normal() per element would dominate the run. Not for numerics tests: the distribution is only "plausible".
import type { Rng } from '../util/rng.js';

/**
 * n random bf16 bit patterns: sign random, exponent field uniform in [expLo, expHi], mantissa random, so the
 * magnitudes lie in [2^(expLo-127), 2^(expHi-126)).
 */
export function randomBf16(rng: Rng, n: number, expLo: number, expHi: number): Uint16Array {
  const out = new Uint16Array(n);
  const span = expHi - expLo + 1;
  for (let i = 0; i < n; i++) {
    const r = rng.nextU32();
    out[i] = ((r >>> 31) << 15) | ((expLo + ((r >>> 7) % span)) << 7) | (r & 0x7f);
  }
  return out;
}

/**
 * [rows, cols] random bf16 rows, fast at 10^8 values: each row is a window of a 4M-value random pool at a random
 * offset (rows overlap in content but not in alignment, which is all a routing or bandwidth figure needs).
 */
export function randomBf16Rows(rng: Rng, rows: number, cols: number, expLo: number, expHi: number): Uint16Array {
  const n = rows * cols;
  if (n <= 1 << 22) return randomBf16(rng, n, expLo, expHi);
  const pool = randomBf16(rng, (1 << 22) + cols, expLo, expHi);
  const out = new Uint16Array(n);
  for (let r = 0; r < rows; r++) {
    const at = rng.int(1 << 22);
    out.set(pool.subarray(at, at + cols), r * cols);
  }
  return out;
}
