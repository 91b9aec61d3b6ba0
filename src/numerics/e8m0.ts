// e8m0 ("ue8m0"): an unsigned power-of-two scale, value 2^(b - 127); 0xFF is NaN (SPEC 1).

export function decodeE8M0(b: number): number {
  const code = b & 0xff;
  return code === 0xff ? NaN : 2 ** (code - 127);
}

/** The e8m0 code of a power of two 2^e (e in [-127, 127]); anything else is refused. */
export function encodeE8M0(value: number): number {
  if (!(value > 0) || !Number.isFinite(value)) throw new Error(`e8m0 cannot hold ${value}: only positive powers of two`);
  const e = Math.log2(value);
  if (!Number.isInteger(e) || e < -127 || e > 127) throw new Error(`e8m0 cannot hold ${value}: not 2^e with -127 <= e <= 127`);
  return e + 127;
}

export const E8M0_DECODE: Float64Array = (() => {
  const t = new Float64Array(256);
  for (let b = 0; b < 256; b++) t[b] = decodeE8M0(b);
  return t;
})();
