// A / B of two builds of the package on `megamoe bench model`, in ABBA order: within one call the run that goes second
// has read 2-10% faster (docs/GPU-MODEL.md "Session 13" and "Session 14"), as much as most changes gain, so each build
// runs first as often as second and the table shows every run beside its median. On a GPU host, carrying .gpuhost,
// dist and the base build (e.g. .cache/base, built from `git archive <base> src tsconfig.json package.json`):
//   .gpuhost/run node tools/model/ab-builds.mjs --rounds 2 new=dist/src/cli/main.js base=.cache/base/dist/src/cli/main.js \
//     -- --preset flash --layers 4 --profile-runs 0 --batches 1,64 --contexts 1k --prefill 4k
// Each run is `node <entry> bench model <args> --out <tmp dir>`; its "bench model: prefill ..." and "decode batch ..."
// lines are the figures. `--json FILE` also writes them. Exits 1 when a run fails (its output is printed).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Parses argv: [--rounds N] [--json FILE] label=entry label=entry -- bench args... */
function parseArgs(argv) {
  const dash = argv.indexOf('--');
  const own = dash < 0 ? argv : argv.slice(0, dash);
  const bench = dash < 0 ? [] : argv.slice(dash + 1);
  let rounds = 2, json = null;
  const builds = [];
  for (let i = 0; i < own.length; i++) {
    const a = own[i];
    if (a === '--rounds') rounds = Number(own[++i]);
    else if (a === '--json') json = own[++i];
    else if (/^[\w.-]+=.+/.test(a)) { const at = a.indexOf('='); builds.push({ label: a.slice(0, at), entry: a.slice(at + 1) }); }
    else throw new Error(`ab-builds: unknown argument "${a}" (usage: [--rounds N] [--json FILE] A=entry.js B=entry.js -- bench model args)`);
  }
  if (builds.length !== 2) throw new Error(`ab-builds: give exactly two builds as label=path/to/cli/main.js (got ${builds.length})`);
  if (!(Number.isInteger(rounds) && rounds >= 1)) throw new Error(`ab-builds: --rounds must be a positive integer`);
  if (bench.includes('--out')) throw new Error('ab-builds: leave --out to the tool (each run gets its own directory)');
  return { rounds, json, builds, bench };
}

/** Run order: round r takes A then B when r is even, B then A when odd (ABBA ...). */
function runOrder(rounds) {
  const order = [];
  for (let r = 0; r < rounds; r++) order.push(...(r % 2 === 0 ? [0, 1] : [1, 0]));
  return order;
}

/** The figures of one run's output: { 'prefill 4096': ms, 'decode b1 1024': ms, ... }. */
function parseFigures(text) {
  const out = {};
  for (const line of text.split('\n')) {
    let m = /^bench model: prefill (\d+): ([\d.]+) ms/.exec(line);
    if (m) { out[`prefill ${m[1]}`] = Number(m[2]); continue; }
    m = /^bench model: decode batch (\d+) context (\d+): ([\d.]+) ms/.exec(line);
    if (m) out[`decode b${m[1]} ctx ${m[2]}`] = Number(m[3]);
  }
  return out;
}

const median = (v) => { const s = [...v].sort((a, b) => a - b); const n = s.length; return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2; };

/** The table: per figure, each build's runs in run order (first-run positions marked *) and median, B / A. */
function table(builds, runs) {
  const rows = [...new Set(runs.flatMap((r) => Object.keys(r.figures)))];
  const lines = [`| figure (ms) | ${builds[0].label} runs | median | ${builds[1].label} runs | median | ${builds[1].label} / ${builds[0].label} |`, '| --- | --- | ---: | --- | ---: | ---: |'];
  for (const row of rows) {
    const cells = [];
    const med = [];
    for (let b = 0; b < 2; b++) {
      const mine = runs.filter((r) => r.build === b && r.figures[row] !== undefined);
      cells.push(mine.map((r) => `${r.figures[row]}${r.position === 0 ? '*' : ''}`).join(' / '));
      med.push(mine.length ? median(mine.map((r) => r.figures[row])) : NaN);
      cells.push(Number.isFinite(med[b]) ? String(med[b]) : '');
    }
    lines.push(`| ${row} | ${cells.join(' | ')} | ${(med[1] / med[0]).toFixed(3)} |`);
  }
  lines.push('', '(* = the build ran first in its round)');
  return lines.join('\n');
}

function main() {
  let parsed;
  try {
    parsed = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(e.message);
    process.exit(2);
  }
  const { rounds, json, builds, bench } = parsed;
  const runs = [];
  const order = runOrder(rounds);
  order.forEach((b, i) => {
    const out = mkdtempSync(join(tmpdir(), `ab-${builds[b].label}-`));
    const args = [builds[b].entry, 'bench', 'model', ...bench, '--out', out];
    const t0 = Date.now();
    const r = spawnSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 64 << 20 });
    const text = `${r.stdout ?? ''}${r.stderr ?? ''}`;
    if (r.status !== 0) {
      console.error(text);
      console.error(`ab-builds: run ${i + 1} (${builds[b].label}) failed with status ${r.status}`);
      process.exit(1);
    }
    const figures = parseFigures(text);
    runs.push({ build: b, label: builds[b].label, round: Math.floor(i / 2), position: i % 2, figures, out });
    console.log(`run ${i + 1}/${order.length} ${builds[b].label} (${((Date.now() - t0) / 1000).toFixed(0)} s): ${JSON.stringify(figures)}`);
  });
  console.log(`\n${table(builds, runs)}`);
  if (json) writeFileSync(json, JSON.stringify({ builds, bench, rounds, runs }, null, 2));
}

main();
