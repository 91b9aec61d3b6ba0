// Warp-stall samples (share of the kernel's) and executed warp instructions per range of SASS line indexes (as
// tools/ncu/src-top.mjs prints them) of the first kernel whose name contains KERNEL:
//   node tools/ncu/src-range.mjs src.csv KERNEL 0-3100 3100-3640 ...
import fs from 'node:fs';
const [file, want, ...ranges] = process.argv.slice(2);
const parse = (l) => { const out = []; let cur = '', q = false; for (let i = 0; i < l.length; i++) { const ch = l[i]; if (q) { if (ch === '"') { if (l[i + 1] === '"') { cur += '"'; i++; } else q = false; } else cur += ch; } else if (ch === '"') q = true; else if (ch === ',') { out.push(cur); cur = ''; } else cur += ch; } out.push(cur); return out; };
let on = false, hdr = null, rows = [], seen = 0;
for (const l of fs.readFileSync(file, 'utf8').split('\n')) {
  if (l.startsWith('"Kernel Name"')) { if (on && rows.length) break; on = parse(l)[1].includes(want); hdr = null; continue; }
  if (!on || !l) continue; const c = parse(l); if (!hdr) { hdr = c; continue; } rows.push(c);
}
const H = Object.fromEntries(hdr.map((h, i) => [h, i])); const num = (x) => Number(String(x).replace(/,/g, '')) || 0;
const S = H['Warp Stall Sampling (All Samples)'], E = H['Instructions Executed'];
const tot = rows.reduce((a, r) => a + num(r[S]), 0);
for (const rg of ranges) { const [a, b] = rg.split('-').map(Number); let s = 0, e = 0; for (let i = a; i < Math.min(b, rows.length); i++) { s += num(rows[i][S]); e += num(rows[i][E]); } console.log(rg.padEnd(12), `samples ${(100 * s / tot).toFixed(1)}%`, `executed ${e}`); }
