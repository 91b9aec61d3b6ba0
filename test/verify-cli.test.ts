// `megamoe verify` without a GPU: argument errors (exit 1 with the option named, or 2 for what this build cannot
// serve: NCCL with two ranks on one GPU), the missing-GPU message, and, with the fake ranks
// (MEGAMOE_VERIFY_FAKE=1: the real supervisor, rank processes and control channel, no CUDA), a full run and a rank
// killed mid-run: every rank must be gone within 10 s and the one message must name the rank and the phase.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseTokenList, verifyRefusal, type VerifyOptions } from '../src/cli/commands/verify.js';
import { sampleRows } from '../src/tensor/rows.js';
import { epInputs } from '../src/moe/ep-inputs.js';

const MAIN = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const noGpu = { ...process.env, MEGAMOE_DISABLE_CUDA: '1' };
const fakeEnv = { ...process.env, MEGAMOE_VERIFY_FAKE: '1' };

function run(args: string[], env: NodeJS.ProcessEnv = noGpu) {
  const r = spawnSync(process.execPath, [MAIN, 'verify', ...args], { env, encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('verify: argument errors name the option and the fix', () => {
  const cases: Array<[string[], RegExp]> = [
    [[], /required option '--ep <N>' not specified/],
    [['--ep', '0'], /--ep must be an integer in \[1, 128\], got "0"/],
    [['--ep', '2', '--tokens', '1,x'], /--tokens must be a comma-separated list of non-negative integers, got "1,x"/],
    [['--ep', '2', '--tokens', '7,7'], /--tokens lists 7 twice/],
    [['--ep', '2', '--preset', 'huge'], /--preset must be one of tiny, flash, pro, got "huge"/],
    [['--ep', '2', '--routing', 'zipf'], /--routing must be one of uniform, skewed, got "zipf"/],
    [['--ep', '2', '--transport', 'tcp'], /--transport must be one of ipc, nccl, got "tcp"/],
    [['--ep', '3'], /--ep 3 does not divide the 16 experts of preset tiny; use one of 1, 2, 4, 8, 16/],
    [['--ep', '8', '--routing', 'skewed'], /--routing skewed puts 4 distinct experts of one rank on every token, but at --ep 8 a rank holds 2 experts/],
    [['--ep', '4', '--tokens', '5000'], /use at most 4095 tokens per rank at --ep 4/],
    [['--ep', '2'], /verify: needs a Hopper GPU \(sm_90\) and its driver/],
  ];
  for (const [args, re] of cases) {
    const r = run(args);
    assert.equal(r.code, 1, `${args.join(' ')}: ${r.err}`);
    assert.match(r.err, re, args.join(' '));
  }
});

test('verify: what this build cannot serve exits 2 with an honest message', () => {
  let r = run(['--ep', '2', '--transport', 'nccl'], fakeEnv);
  assert.equal(r.code, 2);
  assert.match(r.err, /ranks 0 and 1 are both on device 0 \(NCCL refuses this as "duplicate GPU"\); with several ranks on one GPU use --transport ipc/);
});

test('verify: --backend mega_moe goes over symmetric memory, whatever --transport says', () => {
  const r = run(['--ep', '2', '--backend', 'mega_moe', '--transport', 'nccl', '--tokens', '1'], fakeEnv);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /EP 2 over CUDA IPC symmetric memory \(the fused kernel moves the rows; --transport is the unfused baseline's\), backend mega_moe/);
});

test('verify: a fake world of 4 runs through the supervisor, says where the ranks are, exits 0', () => {
  const r = run(['--ep', '4', '--tokens', '0,3'], fakeEnv);
  assert.equal(r.code, 0, r.err);
  assert.match(r.out, /rank 3 started: pid \d+, device 0/);
  assert.match(r.out, /all 4 ranks ready/);
  assert.match(r.out, /rank 2: 2 fake batches/);
});

function alive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch (err) { return (err as NodeJS.ErrnoException).code === 'EPERM'; }
}

test('verify: a rank killed mid-run ends every rank within 10 s with one message naming the rank and the phase', async () => {
  const child = spawn(process.execPath, [MAIN, 'verify', '--ep', '4', '--tokens', '7'], {
    env: { ...fakeEnv, MEGAMOE_VERIFY_FAKE_STEP_MS: '60000' }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  const pids = new Map<number, number>();
  child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  try {
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`verify never got ready: ${out} ${err}`)), 20_000);
      child.on('exit', () => { clearTimeout(timer); rej(new Error(`verify exited before it was ready: ${out} ${err}`)); });
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        for (const m of out.matchAll(/rank (\d+) started: pid (\d+)/g)) pids.set(Number(m[1]), Number(m[2]));
        if (/all 4 ranks ready/.test(out)) { clearTimeout(timer); res(); }
      });
    });
    await new Promise((r) => setTimeout(r, 300)); // every rank is in its forward now
    const t0 = Date.now();
    process.kill(pids.get(1)!, 'SIGKILL');
    const code = await Promise.race([exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 10_000))]);
    assert.notEqual(code, 'late', 'verify ended within 10 s');
    assert.equal(code, 1);
    assert.ok(Date.now() - t0 < 10_000);
    assert.match(err, /megamoe verify: rank 1 died \(killed by SIGKILL\) in phase 'forward:T7'/);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual([...pids.values()].filter(alive), [], 'no rank survives');
  } finally {
    for (const pid of pids.values()) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    child.kill('SIGKILL');
  }
});

test('verify helpers: token lists, refusals, samples, inputs reproducible per (seed, rank, T)', () => {
  assert.deepEqual(parseTokenList('0,1, 7,128,1000'), [0, 1, 7, 128, 1000]);
  const base: VerifyOptions = {
    ep: 2, backend: 'unfused', preset: 'flash', tokens: [1000], routing: 'skewed', transport: 'ipc', seed: 1, rowTile: 'auto',
    referenceTokens: 4, timeout: 10, barrierTimeout: 10,
  };
  assert.equal(verifyRefusal(base), null);
  assert.equal(verifyRefusal({ ...base, ep: 4 }), null);
  assert.deepEqual(sampleRows(3, 5, 8), [0, 1, 2, 3, 4]);
  const s = sampleRows(3, 1000, 4);
  assert.equal(s.length, 4);
  assert.ok(s.includes(0) && s.includes(999));
  const shape = { hidden: 256, experts: 16, topK: 4 };
  const a = epInputs(5, 1, 7, shape, 4, 'skewed');
  const b = epInputs(5, 1, 7, shape, 4, 'skewed');
  assert.deepEqual(a.x.data, b.x.data);
  assert.deepEqual(a.ids.data, b.ids.data);
  assert.ok([...a.ids.data].every((id) => id >= 12n && id < 16n), 'skewed: every slot on the last rank\'s experts');
  const u = epInputs(5, 0, 500, shape, 4, 'uniform');
  const masked = [...u.ids.data].filter((id) => id < 0n).length;
  assert.ok(masked > 0 && masked < 0.1 * u.ids.numel, 'uniform: a few masked slots');
  for (let t = 0; t < 500; t++) {
    const row = [...u.ids.data.subarray(t * 4, t * 4 + 4)].filter((id) => id >= 0n);
    assert.equal(new Set(row).size, row.length, 'distinct experts per token');
  }
  assert.notDeepEqual(epInputs(5, 2, 7, shape, 4, 'uniform').x.data, epInputs(5, 3, 7, shape, 4, 'uniform').x.data);
});
