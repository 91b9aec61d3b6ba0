// Reads the source page of an ncu report (`ncu -i x.ncu-rep --page source --csv --print-source sass > src.csv`):
// one entry per profiled kernel, named 'name#index' in report order, with its column header and SASS rows.
import fs from 'node:fs';

/** One CSV line into its fields ("" inside a quoted field is a quote). */
function parseLine(l) {
  const out = []; let cur = ''; let q = false;
  for (let i = 0; i < l.length; i++) {
    const ch = l[i];
    if (q) { if (ch === '"') { if (l[i + 1] === '"') { cur += '"'; i++; } else q = false; } else cur += ch; }
    else if (ch === '"') q = true;
    else if (ch === ',') { out.push(cur); cur = ''; }
    else cur += ch;
  }
  out.push(cur);
  return out;
}

/** [{ kernel, hdr, col, rows }]: col(name) is a header's column index. */
export function readSourcePage(file) {
  const kernels = [];
  let k = null;
  for (const l of fs.readFileSync(file, 'utf8').split('\n')) {
    if (l.startsWith('"Kernel Name"')) { k = { kernel: `${parseLine(l)[1]}#${kernels.length}`, hdr: null, rows: [] }; kernels.push(k); continue; }
    if (!k || !l) continue;
    const c = parseLine(l);
    if (!k.hdr) k.hdr = c; else k.rows.push(c);
  }
  for (const x of kernels) { const H = Object.fromEntries((x.hdr ?? []).map((h, i) => [h, i])); x.col = (name) => H[name]; }
  return kernels;
}

/** A metric cell as a number (thousands separators dropped; empty = 0). */
export const num = (x) => Number(String(x).replace(/,/g, '')) || 0;
export const SAMPLES = 'Warp Stall Sampling (All Samples)';
export const EXECUTED = 'Instructions Executed';
