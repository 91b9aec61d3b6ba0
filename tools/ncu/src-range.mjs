// Warp-stall samples (share of the kernel's) and executed warp instructions per range of SASS line indexes (as
// tools/ncu/src-top.mjs prints them) of the first kernel whose name contains KERNEL:
//   node tools/ncu/src-range.mjs src.csv KERNEL 0-3100 3100-3640 ...
import { EXECUTED, num, readSourcePage, SAMPLES } from './source-page.mjs';

const [file, want, ...ranges] = process.argv.slice(2);
const k = readSourcePage(file).find((x) => x.kernel.includes(want));
if (!k) throw new Error(`${file}: no kernel named like "${want}"`);
const S = k.col(SAMPLES), E = k.col(EXECUTED);
const tot = k.rows.reduce((a, r) => a + num(r[S]), 0);
for (const rg of ranges) {
  const [a, b] = rg.split('-').map(Number);
  let s = 0, e = 0;
  for (let i = a; i < Math.min(b, k.rows.length); i++) { s += num(k.rows[i][S]); e += num(k.rows[i][E]); }
  console.log(rg.padEnd(12), `samples ${(100 * s / tot).toFixed(1)}%`, `executed ${e}`);
}
