// node ncu-sum.mjs file.csv[.gz] [startKernel=mo_embed]: the kernels from the last launch of startKernel on, summed by name
import fs from 'node:fs'; import zlib from 'node:zlib';
const [file, start = 'mo_embed'] = process.argv.slice(2);
let text = fs.readFileSync(file); if (file.endsWith('.gz')) text = zlib.gunzipSync(text); text = text.toString();
const lines = text.split('\n').filter((l) => l.startsWith('"'));
const parse = (l) => { const out = []; let cur = ''; let q = false; for (const ch of l) { if (ch === '"') q = !q; else if (ch === ',' && !q) { out.push(cur); cur = ''; } else cur += ch; } out.push(cur); return out; };
const head = parse(lines[0]); const ix = (n) => head.indexOf(n);
const rows = lines.slice(1).map(parse).filter((r) => r[ix('Metric Name')] === 'gpu__time_duration.sum');
const scale = { ns: 1e-3, usecond: 1, us: 1, msecond: 1e3, ms: 1e3, nsecond: 1e-3, second: 1e6 };
let s0 = 0; rows.forEach((r, i) => { if (r[ix('Kernel Name')].startsWith(start)) s0 = i; });
const sel = rows.slice(s0);
const by = new Map(); let total = 0;
for (const r of sel) { const name = r[ix('Kernel Name')].replace(/\(.*$/, '').replace(/<.*$/, ''); const us = Number(r[ix('Metric Value')].replace(/,/g, '')) * (scale[r[ix('Metric Unit')]] ?? NaN); total += us; const e = by.get(name) ?? { n: 0, us: 0 }; e.n++; e.us += us; by.set(name, e); }
console.log(`${sel.length} kernels, ${total.toFixed(0)} us`);
for (const [k, v] of [...by].sort((a, b) => b[1].us - a[1].us)) console.log(`${v.us.toFixed(1).padStart(10)} us ${String(v.n).padStart(4)}x  ${k}`);
