// calc_diff (SPEC 5): 1 - 2*sum(x*y) / sum(x*x + y*y), in f64. 0 means identical; two all-zero inputs give 0.

export function calcDiff(x: ArrayLike<number>, y: ArrayLike<number>): number {
  if (x.length !== y.length) throw new Error(`calcDiff: lengths differ (${x.length} vs ${y.length})`);
  let dot = 0;
  let norms = 0;
  for (let i = 0; i < x.length; i++) {
    const a = x[i]; const b = y[i];
    dot += a * b;
    norms += a * a + b * b;
  }
  if (norms === 0) return 0;
  return 1 - (2 * dot) / norms;
}
