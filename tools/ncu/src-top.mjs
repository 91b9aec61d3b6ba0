// The top SASS lines of each kernel by warp-stall samples, with its stall reasons and opcode mix, from the source page of
// an ncu report taken with the SourceCounters section:
//   ncu -i x.ncu-rep --page source --csv --print-source sass > src.csv
//   node tools/ncu/src-top.mjs src.csv [kernel-name-substring (matches 'name#index')] [top N = 40]
// (used in docs/GPU-MODEL.md "Session 12"; the lines are printed in program order with their SASS index, which
// tools/ncu/src-range.mjs takes to sum the samples of a phase)
import { EXECUTED, num, readSourcePage, SAMPLES } from './source-page.mjs';

const [file, kernelWant, topN = '40'] = process.argv.slice(2);
for (const k of readSourcePage(file)) {
  if (kernelWant && !k.kernel.includes(kernelWant)) continue;
  const S = k.col(SAMPLES), E = k.col(EXECUTED), src = k.col('Source');
  const stallCols = k.hdr.map((h, i) => [h, i]).filter(([h]) => h.startsWith('stall_') && !h.includes('Not Issued'));
  const total = k.rows.reduce((a, r) => a + num(r[S]), 0), tins = k.rows.reduce((a, r) => a + num(r[E]), 0);
  console.log(`== ${k.kernel}: ${k.rows.length} SASS lines, ${total} samples, ${tins} warp instructions executed`);
  const agg = {}; for (const [h, i] of stallCols) agg[h] = k.rows.reduce((a, r) => a + num(r[i]), 0);
  console.log('stalls:', Object.entries(agg).sort((a, b) => b[1] - a[1]).slice(0, 8).map(([h, v]) => `${h.replace('stall_', '')} ${(100 * v / total).toFixed(1)}%`).join(', '));
  const op = {}; for (const r of k.rows) { const o = r[src].trim().split(/\s+/).filter((w) => !w.startsWith('@'))[0]?.split('.')[0] ?? '?'; op[o] = op[o] ?? [0, 0]; op[o][0] += num(r[E]); op[o][1] += num(r[S]); }
  console.log('opcodes (executed, samples):', Object.entries(op).sort((a, b) => b[1][0] - a[1][0]).slice(0, 16).map(([o, [e, s]]) => `${o} ${e} ${s}`).join(' | '));
  const top = k.rows.map((r, idx) => ({ idx, r, s: num(r[S]) })).sort((a, b) => b.s - a.s).slice(0, Number(topN));
  for (const { idx, r, s } of top.sort((a, b) => a.idx - b.idx)) {
    const why = stallCols.map(([h, i]) => [h.replace('stall_', ''), num(r[i])]).filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1]).slice(0, 2).map(([h, v]) => `${h}:${v}`).join(' ');
    console.log(String(idx).padStart(5), String(s).padStart(6), String(num(r[E])).padStart(9), r[src].slice(0, 70).padEnd(70), why);
  }
}
