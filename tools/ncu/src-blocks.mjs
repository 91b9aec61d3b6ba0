// Warp-stall samples per basic block (runs of SASS lines with one execution count) of the first kernel whose name
// contains KERNEL, from an ncu source page (as src-top.mjs), with each block's opcode mix: where a kernel's phases are.
//   node tools/ncu/src-blocks.mjs src.csv KERNEL [min share in % = 1]
// (docs/GPU-MODEL.md "Session 14")
import { EXECUTED, num, readSourcePage, SAMPLES } from './source-page.mjs';
const [file, want, minPct = '1'] = process.argv.slice(2);
const k = readSourcePage(file).find((x) => x.kernel.includes(want));
const S = k.col(SAMPLES), E = k.col(EXECUTED), src = k.col('Source');
const tot = k.rows.reduce((a, r) => a + num(r[S]), 0);
// basic blocks: split at lines whose executed count changes
let start = 0, s = 0, ex = num(k.rows[0][E]);
const out = [];
for (let i = 0; i <= k.rows.length; i++) {
  const e = i < k.rows.length ? num(k.rows[i][E]) : -1;
  if (e !== ex) { out.push({ start, end: i, ex, s }); start = i; s = 0; ex = e; }
  if (i < k.rows.length) s += num(k.rows[i][S]);
}
for (const b of out) if (100 * b.s / tot >= +minPct) {
  const ops = {}; for (let i = b.start; i < b.end; i++) { const o = k.rows[i][src].trim().split(/\s+/).filter((w) => !w.startsWith('@'))[0]?.split('.')[0]; ops[o] = (ops[o] ?? 0) + 1; }
  console.log(`${b.start}-${b.end}`.padEnd(12), `x${b.ex}`.padEnd(10), `${(100 * b.s / tot).toFixed(1)}%`.padStart(6), Object.entries(ops).sort((a, c) => c[1] - a[1]).slice(0, 6).map(([o, n]) => `${o}:${n}`).join(' '));
}
