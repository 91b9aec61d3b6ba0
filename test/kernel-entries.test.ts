// Every kernel entry of src/kernels starts with MM_GRID_DEPENDENCY() (src/kernels/grid_dep.cuh): the launcher lets
// the project's kernels launch programmatically (src/cuda/programmatic-launch.ts), and a kernel without that wait
// would read its inputs before the previous kernel has written them. No GPU needed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { kernelsDir } from '../src/cuda/compile.js';

/** The index just past the parenthesised group opening at `open`. */
function closeParen(s: string, open: number): number {
  let depth = 0;
  for (let i = open; i < s.length; i++) {
    if (s[i] === '(') depth++;
    else if (s[i] === ')' && --depth === 0) return i + 1;
  }
  throw new Error(`unbalanced parenthesis at ${open}`);
}

/** [kernel name, first statement of its body] for each __global__ definition of a source. */
function kernelEntries(source: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  for (const m of source.matchAll(/__global__/g)) {
    let at = m.index + m[0].length;
    let name = '';
    for (;;) {
      const open = source.indexOf('(', at);
      name = /(\w+)\s*$/.exec(source.slice(at, open))?.[1] ?? '';
      at = closeParen(source, open);
      if (name !== '__launch_bounds__' && name !== '__cluster_dims__') break;
    }
    const body = source.indexOf('{', at);
    if (source.slice(at, body).includes(';')) continue; // a declaration, not a definition
    const first = source.slice(body + 1).replace(/^(\s|\\|\/\/[^\n]*)*/, '');
    out.push([name, first.slice(0, first.indexOf(';') + 1)]);
  }
  return out;
}

test('every __global__ of src/kernels begins with MM_GRID_DEPENDENCY()', () => {
  const files = readdirSync(kernelsDir()).filter((f) => f.endsWith('.cu') || f.endsWith('.cuh'));
  let kernels = 0;
  const missing: string[] = [];
  for (const f of files) {
    for (const [name, first] of kernelEntries(readFileSync(join(kernelsDir(), f), 'utf8'))) {
      kernels++;
      if (first !== 'MM_GRID_DEPENDENCY();') missing.push(`${f}: ${name} starts with "${first}"`);
    }
  }
  assert.ok(kernels >= 40, `found only ${kernels} kernels: the scan is broken`);
  assert.deepEqual(missing, [], 'add MM_GRID_DEPENDENCY(); as the first statement of each of these kernels');
});

test('the entry scan finds a kernel that lacks the wait', () => {
  const src = `extern "C" __global__ void __launch_bounds__(128, 1) a(int* x) {  // note
  MM_GRID_DEPENDENCY();
  x[0] = 1;
}
extern "C" __global__ void b(int* x);
__global__ void __cluster_dims__(2, 1, 1) c(int* x) { x[0] = 2; }`;
  assert.deepEqual(kernelEntries(src), [['a', 'MM_GRID_DEPENDENCY();'], ['c', 'x[0] = 2;']]);
});
