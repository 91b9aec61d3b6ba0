// Expert-parallel placement: which routed experts a rank owns. One rule for the whole project (the checkpoint
// loader, synthetic layers, backends): contiguous equal blocks, as DeepEP/vLLM place experts by default.

export interface ExpertRange {
  /** First owned global expert id. */
  first: number;
  /** One past the last owned id. */
  end: number;
}

/** The experts rank `epRank` of `epSize` owns; throws a RangeError naming the fix for uneven splits and bad ranks. */
export function expertRange(nExperts: number, epRank: number, epSize: number): ExpertRange {
  if (!Number.isSafeInteger(epSize) || epSize < 1) throw new RangeError(`expert-parallel size must be a positive integer, got ${epSize}`);
  if (!Number.isSafeInteger(epRank) || epRank < 0 || epRank >= epSize) throw new RangeError(`expert-parallel rank must be in [0, ${epSize}), got ${epRank}`);
  if (nExperts % epSize !== 0) {
    throw new RangeError(`${nExperts} experts cannot be split evenly over ${epSize} expert-parallel ranks; use a size that divides ${nExperts}`);
  }
  const per = nExperts / epSize;
  return { first: epRank * per, end: (epRank + 1) * per };
}
