// `megamoe verify --ep N` for real (GPU host): the unfused EP baseline over the IPC transport and the fused kernel
// across ranks (--backend mega_moe, over CUDA IPC symmetric memory), N rank processes (all on device 0 on a one-GPU
// machine), tiny, flash and pro shapes, T per rank = 0, 1, 7, 128, 1000, uniform (with masked slots) and skewed
// routing (every token to the last rank's experts). Each run checks every rank's output against EP1
// (the unfused backend on the whole batch) and the CPU reference on sampled tokens, and must exit 0 with PASS.
// Also --ep 1 over NCCL (a world of one: the NCCL transport's path through the EP pipeline) where NCCL is installed.
// Skipped without a Hopper GPU.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { deviceCount, gpuSkipReason, NcclUnavailableError, tryLoadNccl } from '../src/cuda/index.js';
import { MEGAMOE_MAIN, runMegamoe } from './support/cli.js';

const skip = gpuSkipReason();
const TOKENS = '0,1,7,128,1000';

const verify = (args: string[], timeoutMs: number) => runMegamoe(['verify', ...args], timeoutMs);

function assertPass(r: { code: number | null; out: string; err: string }, N: number): void {
  const where = `\n--- stdout\n${r.out}\n--- stderr\n${r.err}`;
  assert.equal(r.code, 0, `verify exited ${r.code}${where}`);
  assert.match(r.out, /verify: PASS: /, where);
  if (N > 1 && !skip && deviceCount() < N) assert.match(r.out, /timings in this mode mean nothing/);
  // One table row per rank and batch, each 'ok'.
  const rows = r.out.split('\n').filter((l) => /^\d+\s+\d+\s+\d+\s/.test(l));
  assert.equal(rows.length, N * TOKENS.split(',').length, where);
  assert.ok(rows.every((l) => /\sok$/.test(l)), where);
}

for (const backend of ['unfused', 'mega_moe']) {
  for (const preset of ['tiny', 'flash', 'pro']) {
    // Flash / pro: one reference token per rank and batch (each costs ~0.3 s of CPU and 6 expert downloads); the check
    // pools every rank's sampled tokens of a batch.
    const ref = preset === 'tiny' ? '16' : '1';
    for (const N of [2, 4]) {
      for (const routing of ['uniform', 'skewed']) {
        const over = backend === 'unfused' ? 'over ipc' : 'over symmetric memory';
        test(`verify --ep ${N} --backend ${backend} --preset ${preset} --routing ${routing} ${over}, T = ${TOKENS}`, { skip, timeout: 300_000 }, async () => {
          const r = await verify(['--ep', String(N), '--backend', backend, '--preset', preset, '--routing', routing, '--transport', 'ipc',
            '--tokens', TOKENS, '--reference-tokens', ref], 280_000);
          assertPass(r, N);
          // The fused kernel and EP1 take the same GEMM path (the same rows per expert): the same rounding.
          if (backend === 'mega_moe') assert.match(r.out, /every row bit-identical to EP1/);
        });
      }
    }
  }
}

const nccl = tryLoadNccl();
test('verify --ep 1 --preset tiny over nccl (a world of one)', { skip: skip ?? (nccl instanceof NcclUnavailableError ? nccl.message : undefined), timeout: 300_000 }, async () => {
  assertPass(await verify(['--ep', '1', '--preset', 'tiny', '--transport', 'nccl', '--tokens', TOKENS], 280_000), 1);
});

test('verify --ep 2 --transport nccl on one GPU: exit 2, the message names --transport ipc',
  { skip: skip ?? (!skip && deviceCount() >= 2 ? 'this machine has 2+ GPUs: NCCL can run 2 ranks' : undefined) }, async () => {
    const r = await verify(['--ep', '2', '--transport', 'nccl'], 60_000);
    assert.equal(r.code, 2);
    assert.match(r.err, /use --transport ipc/);
  });

// The fused kernel's ranks wait for each other inside the kernel: the dead rank's peers must still go at once (the
// supervisor ends their processes; their kernels' cross-rank deadline is not what ends them).
for (const backend of ['unfused', 'mega_moe']) test(`verify --ep 4 --backend ${backend} --preset flash: a rank SIGKILLed mid-run ends every rank within 10 s, naming the rank and the phase`, { skip, timeout: 120_000 }, async () => {
  const child = spawn(process.execPath, [MEGAMOE_MAIN, 'verify', '--ep', '4', '--backend', backend, '--preset', 'flash', '--tokens',
    // 30 batches (each also makes its 4M-value input on the host): the run is surely mid-way when the kill comes.
    Array.from({ length: 30 }, (_, i) => 1000 - i).join(','),
    '--reference-tokens', '0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const pids = new Map<number, number>();
  child.stderr.on('data', (c: Buffer) => { err += c.toString(); });
  const exited = new Promise<number | null>((res) => child.on('exit', (code) => res(code)));
  const alive = (pid: number) => { try { process.kill(pid, 0); return true; } catch { return false; } };
  try {
    await new Promise<void>((res, rej) => {
      const timer = setTimeout(() => rej(new Error(`verify never got ready:\n${out}\n${err}`)), 100_000);
      child.on('exit', () => { clearTimeout(timer); rej(new Error(`verify exited before it was ready:\n${out}\n${err}`)); });
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        for (const m of out.matchAll(/rank (\d+) started: pid (\d+)/g)) pids.set(Number(m[1]), Number(m[2]));
        if (/all 4 ranks ready/.test(out)) { clearTimeout(timer); res(); }
      });
    });
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    process.kill(pids.get(2)!, 'SIGKILL');
    const code = await Promise.race([exited, new Promise<'late'>((r) => setTimeout(() => r('late'), 10_000))]);
    assert.notEqual(code, 'late', `verify ended within 10 s:\n${out}\n${err}`);
    assert.equal(code, 1);
    assert.ok(Date.now() - t0 < 10_000);
    assert.match(err, /megamoe verify: rank 2 died \(killed by SIGKILL\) in phase '(forward:T\d+|teardown)'/);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual([...pids.values()].filter(alive), [], 'no rank survives');
  } finally {
    for (const pid of pids.values()) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    child.kill('SIGKILL');
  }
});
