// The read floor of a MoE layer (SPEC 6, issue 7's performance bar): what this GPU needs at all to read the touched
// experts' weights once. Which bytes: the regions of DeviceMoeWeights' four buffers (w13, s13, w2, s2; each holds
// its experts contiguously, group g at g * stride, the shared expert is group E) that belong to the experts this
// run's routing touched, plus the shared expert. Pure: the segments are computed here, read by
// megamoe_bench_read (src/bench/bench-kernels.ts) in src/bench/moe.ts.

/** Bytes per expert group of each of DeviceMoeWeights' buffers (codes e4m3, scales f32 per 128 x 128 block). */
export interface ExpertStrides {
  w13: number;
  s13: number;
  w2: number;
  s2: number;
}

export const WEIGHT_BUFFERS = ['w13', 's13', 'w2', 's2'] as const;
export type WeightBufferName = (typeof WEIGHT_BUFFERS)[number];

/** DeviceMoeWeights' per-group strides for hidden H and intermediate I (both multiples of 128). */
export function expertStrides(hidden: number, inter: number): ExpertStrides {
  const hb = Math.ceil(hidden / 128);
  const ib = Math.ceil(inter / 128);
  return { w13: 2 * inter * hidden, s13: 2 * ib * hb * 4, w2: hidden * inter, s2: hb * ib * 4 };
}

/** The groups one forward reads: distinct routed experts of `ids` (ascending; -1 slots skipped) and the shared group E. */
export function touchedGroups(ids: ArrayLike<bigint | number>, experts: number): number[] {
  const seen = new Uint8Array(experts + 1);
  for (let i = 0; i < ids.length; i++) {
    const e = Number(ids[i]);
    if (e < 0) continue;
    if (!(Number.isInteger(e) && e < experts)) throw new RangeError(`expert id ${e} is outside [0, ${experts})`);
    seen[e] = 1;
  }
  seen[experts] = 1; // the shared expert
  const out: number[] = [];
  seen.forEach((s, g) => { if (s) out.push(g); });
  return out;
}

/** One byte range of one buffer: [offset, offset + bytes). */
export interface ReadSegment {
  buffer: WeightBufferName;
  offset: number;
  bytes: number;
}

/**
 * The byte ranges that hold `groups` (ascending, distinct) in each buffer, consecutive groups merged into one range.
 * `exactBytes` is what those experts hold; the segments themselves are widened to 16-byte boundaries (the kernel
 * reads 16 bytes per load; a buffer's base is 256-byte aligned, so widening never leaves it and adds < 32 bytes per
 * range), `readBytes` counts what is actually read.
 */
export function readFloorSegments(groups: readonly number[], strides: ExpertStrides, totalGroups: number):
  { segments: ReadSegment[]; exactBytes: number; readBytes: number } {
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    if (!(Number.isInteger(g) && g >= 0 && g < totalGroups)) throw new RangeError(`group ${g} is outside [0, ${totalGroups})`);
    if (i > 0 && g <= groups[i - 1]) throw new RangeError('groups must be ascending and distinct');
  }
  const runs: Array<[number, number]> = []; // [first group, count]
  for (const g of groups) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === g) last[1]++;
    else runs.push([g, 1]);
  }
  const segments: ReadSegment[] = [];
  let exactBytes = 0;
  let readBytes = 0;
  for (const buffer of WEIGHT_BUFFERS) {
    const stride = strides[buffer];
    const size = stride * totalGroups;
    for (const [first, count] of runs) {
      const lo = first * stride;
      const hi = lo + count * stride;
      exactBytes += hi - lo;
      const alo = Math.floor(lo / 16) * 16;
      const ahi = Math.min(Math.ceil(hi / 16) * 16, Math.ceil(size / 16) * 16);
      segments.push({ buffer, offset: alo, bytes: ahi - alo });
      readBytes += ahi - alo;
    }
  }
  return { segments, exactBytes, readBytes };
}

/** The segments as the kernel reads them: { u64 address, u64 bytes } pairs, little-endian. */
export function packReadSegments(segments: readonly ReadSegment[], base: Readonly<Record<WeightBufferName, bigint>>): BigUint64Array {
  const out = new BigUint64Array(2 * segments.length);
  segments.forEach((s, i) => {
    out[2 * i] = base[s.buffer] + BigInt(s.offset);
    out[2 * i + 1] = BigInt(s.bytes);
  });
  return out;
}
